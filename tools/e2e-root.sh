#!/usr/bin/env bash
# Builds (once) the Debian root file system the end-to-end tests and the demo
# boot under systemd-nspawn, and prints its path. The root is cached outside
# the repository; a changed package list gets a new directory.
set -euo pipefail
# debootstrap resolves encfs's "fuse" to the old fuse package, which fuse3
# breaks; apt inside the new root resolves it to fuse3 (which provides it).
packages=systemd,systemd-sysv,dbus,iproute2,fuse3
# pacman: operators upgrade a running node with pacman -U (tests/e2e).
later="encfs gocryptfs pacman-package-manager"
cache=${G8OS_E2E_CACHE:-/var/cache/g8os-e2e}
tag=$(printf '%s' "bookworm:$packages:$later:v1" | sha256sum | cut -c1-12)
root=$cache/bookworm-$tag
if [ -e "$root/.g8os-e2e-complete" ]; then echo "$root"; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "e2e-root: needs root (debootstrap)" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -e "$root/.g8os-e2e-complete" ]; then echo "$root"; exit 0; fi
tmp=$root.tmp
rm -rf "$tmp"
echo "e2e-root: debootstrap bookworm into $tmp (about a minute, once)" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$tmp" >"$cache/debootstrap.log" 2>&1 ||
	{ echo "e2e-root: debootstrap failed, see $cache/debootstrap.log" >&2; tail -20 "$cache/debootstrap.log" >&2; exit 1; }
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
DEBIAN_FRONTEND=noninteractive chroot "$tmp" sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends $later" >>"$cache/debootstrap.log" 2>&1 ||
	{ echo "e2e-root: apt-get install $later in the root failed, see $cache/debootstrap.log" >&2; tail -20 "$cache/debootstrap.log" >&2; exit 1; }
rm -f "$tmp/etc/resolv.conf"
# A booted copy gets a fresh machine id; an empty file (not a missing one)
# tells systemd the image is not in first-boot mode.
: >"$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id"
rm -rf "$tmp/var/cache/apt/archives/"*.deb "$tmp/var/lib/apt/lists/"*
echo g8node >"$tmp/etc/hostname"
touch "$tmp/.g8os-e2e-complete"
mv "$tmp" "$root"
echo "$root"
