#!/usr/bin/env bash
# make pkg: builds the pacman package of this checkout and prints its path.
#   source tarball: git archive of the checkout (tracked files, including
#                   uncommitted changes to them)
#   build user:     makepkg refuses root, so a system user "builder"
#   Go modules:     downloaded here into a cache the build user owns; the
#                   build inside makepkg runs with GOPROXY=off
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
top=$(git rev-parse --show-toplevel)
cd "$top"
work=${G8OS_PKG_WORK:-/var/tmp/g8os-pkg}
out=$top/packaging/out
pkgname=g8os-boot
# Arch VCS version: pacman versions may not contain '-'.
pkgver=0.r$(git rev-list --count HEAD).g$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || pkgver+=.dirty

[ "$(id -u)" = 0 ] || { echo "mkpkg: run as root (it runs makepkg as the build user)" >&2; exit 1; }
id builder >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin builder

mkdir -p "$work"
exec 9>"$work.lock"
flock 9 # one build at a time (make demo and make test may overlap)
rm -rf "$work/build"
mkdir -p "$work/build" "$work/gomod" "$work/gocache" "$out"
tree=$(git stash create || true)
git archive --format=tar.gz --prefix="$pkgname-$pkgver/" -o "$work/build/$pkgname-$pkgver.tar.gz" "${tree:-HEAD}"
sum=$(sha256sum "$work/build/$pkgname-$pkgver.tar.gz" | cut -d' ' -f1)
sed -e "s/^pkgver=.*/pkgver=$pkgver/" -e "s/^sha256sums=.*/sha256sums=('$sum')/" packaging/PKGBUILD >"$work/build/PKGBUILD"
cp packaging/g8os.install "$work/build/"
GOMODCACHE=$work/gomod GOFLAGS=-modcacherw go mod download
chown -R builder: "$work"

cd "$work/build"
runuser -u builder -- env -i PATH="$PATH" HOME="$work" GOMODCACHE="$work/gomod" GOCACHE="$work/gocache" \
	GOPROXY=off GOSUMDB=off PKGDEST="$work/build" \
	makepkg -f --nodeps --noconfirm >"$work/makepkg.log" 2>&1 ||
	{ echo "mkpkg: makepkg failed:" >&2; tail -30 "$work/makepkg.log" >&2; exit 1; }
pkg=$(ls "$work/build/$pkgname-$pkgver-"*.pkg.tar.*)
rm -f "$out/$pkgname-"*.pkg.tar.*
cp "$pkg" "$out/"
echo "$out/$(basename "$pkg")"
