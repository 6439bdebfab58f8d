#!/usr/bin/env bash
# make pkg: builds the pacman packages of this checkout (g8os-ac, then
# g8os-boot) and prints their paths, the node's last.
#   source tarball: git archive of the checkout (tracked files, including
#                   uncommitted changes to them)
#   build user:     makepkg refuses root, so a system user "builder"
#   Go modules:     downloaded here into a cache the build user owns; the
#                   build inside makepkg runs with GOPROXY=off
#   G8OS_PKGVER_SUFFIX: appended to the version (".SUFFIX"), for a rebuild
#                   that upgrades this checkout's own package (an upgrade test)
#   G8OS_PKG_OUT:   where the package goes (default packaging/out, whose
#                   older packages are removed)
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
top=$(git rev-parse --show-toplevel)
cd "$top"
# One work directory per checkout (several checkouts may build at once);
# the Go module and build caches are shared (both are safe for concurrent
# use) so only the first build on a machine compiles everything.
base=${G8OS_PKG_WORK:-/var/tmp/g8os-pkg}
work=$base/$(printf %s "$top" | sha256sum | cut -c1-8)
cache=$base/cache
out=${G8OS_PKG_OUT:-$top/packaging/out}
pkgbase=g8os

[ "$(id -u)" = 0 ] || { echo "mkpkg: run as root (it runs makepkg as the build user)" >&2; exit 1; }
id builder >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin builder

mkdir -p "$work" "$cache/gomod" "$cache/gocache"
exec 9>"$work.lock"
flock 9 # one build per checkout at a time (make demo and make test may overlap)
rm -rf "$work/build"
mkdir -p "$work/build" "$out"
# The commit archived: HEAD, or with uncommitted changes a commit of the
# tree as it is (git stash create: no stash entry is made).
commit=$(git stash create || true)
commit=${commit:-HEAD}
# The version the PKGBUILD's pkgver() reads back from the archive's VERSION
# (git describe of the same commit), so makepkg keeps it; before the first
# tag, Arch's VCS form of the commit count and hash.
pkgver=$(source packaging/PKGBUILD && _pkgver_of "$(git describe --tags --abbrev=7 "$commit" 2>/dev/null)") ||
	pkgver=0.r$(git rev-list --count HEAD).g$(git rev-parse --short=7 HEAD)$([ "$commit" = HEAD ] || echo .dirty)
# A suffixed rebuild is not the archive's own version: pkgver() would read
# VERSION back and drop the suffix (at a tag; before one it keeps pkgver=),
# so the build's PKGBUILD goes without pkgver() and makepkg keeps ours.
drop_pkgver=
[ -z "${G8OS_PKGVER_SUFFIX:-}" ] || { pkgver+=.$G8OS_PKGVER_SUFFIX; drop_pkgver='/^pkgver() {$/,/^}$/d'; }
# Packages already made of this very tree and version (every test package
# of one `go test` run asks for the same one) are handed out again.
made=$work/made/$pkgver-$(git rev-parse "$commit^{tree}")
if [ -n "$(ls "$made"/g8os-boot-*.pkg.tar.* 2>/dev/null)" ]; then
	rm -f "$out/g8os-"*.pkg.tar.*
	for name in g8os-ac g8os-boot; do
		cp "$made/$name-"*.pkg.tar.* "$out/"
		echo "$out/$(basename "$made/$name-"*.pkg.tar.*)"
	done
	exit 0
fi
# The release archive the PKGBUILD's source= names, as GitHub would serve it.
git archive --format=tar.gz --prefix="boot-$pkgver/" -o "$work/build/$pkgbase-$pkgver.tar.gz" "$commit"
sum=$(sha256sum "$work/build/$pkgbase-$pkgver.tar.gz" | cut -d' ' -f1)
sed -e "s/^pkgver=.*/pkgver=$pkgver/" -e "s/^sha256sums=.*/sha256sums=('$sum')/" -e "${drop_pkgver:-}" packaging/PKGBUILD >"$work/build/PKGBUILD"
cp packaging/g8os.install packaging/ac/g8os-ac.install "$work/build/"
GOMODCACHE=$cache/gomod GOFLAGS=-modcacherw go mod download
chown -R builder: "$work" "$cache"

cd "$work/build"
runuser -u builder -- env -i PATH="$PATH" HOME="$work" GOMODCACHE="$cache/gomod" GOCACHE="$cache/gocache" \
	GOPROXY=off GOSUMDB=off PKGDEST="$work/build" \
	makepkg -f --nodeps --noconfirm >"$work/makepkg.log" 2>&1 ||
	{ echo "mkpkg: makepkg failed:" >&2; tail -30 "$work/makepkg.log" >&2; exit 1; }
rm -f "$out/g8os-"*.pkg.tar.*
mkdir -p "$made"
for name in g8os-ac g8os-boot; do
	pkg=$(ls "$work/build/$name-$pkgver-"*.pkg.tar.*)
	cp "$pkg" "$out/"
	cp "$pkg" "$made/"
	echo "$out/$(basename "$pkg")"
done
# Keep the last few trees' packages (a plain and a suffixed build each).
ls -dt "$work/made"/*/ | tail -n +5 | xargs -r rm -rf
