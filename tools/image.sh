#!/usr/bin/env bash
# make image: the g8os bootstrap OS as a bootable raw disk (UEFI, GPT).
#
#   tools/image.sh [--pkg PKG] [--ac-ca PEM] [--net-toml FILE] [--no-g8os] [-o OUT]
#
# 1. The root tree: mkosi builds image/mkosi.default (Debian, kernel,
#    systemd, the seed's tools) once; it is cached under $G8OS_IMAGE_CACHE
#    (default /var/cache/g8os-image) by the hash of image/, so only a change
#    of the recipe builds it again (about 5 minutes, downloads ~400 MB).
# 2. The node layer, on an overlay of that tree: the g8os package installed
#    by pacman exactly as on a node (pacman -U --root), g8os.target enabled,
#    and the site's public files: the controllers' trust anchor and net.toml
#    (without them the package's defaults stay: DHCP everywhere). The image
#    holds no secret; each node makes its identity at first boot.
# 3. The disk, made without mounting anything: an EFI system partition
#    (FAT, filled with mtools) holding systemd-boot, the kernel and its
#    initramfs, and an ext4 root filled by mke2fs -d.
# Prints the image's path. --no-g8os leaves step 2's package out (the
# baseline the benchmark boots beside the real image).
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
top=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "image: $*" >&2; exit 1; }

pkg= ca= net= out= with_g8os=1
while [ $# -gt 0 ]; do
	case $1 in
	--pkg) pkg=$2; shift 2 ;;
	--ac-ca) ca=$2; shift 2 ;;
	--net-toml) net=$2; shift 2 ;;
	--no-g8os) with_g8os=0; shift ;;
	-o) out=$2; shift 2 ;;
	-h|--help) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
[ "$(id -u)" = 0 ] || die "run as root (mkosi, overlay mount, pacman --root)"
for t in mkosi mke2fs mkfs.fat mcopy sfdisk pacman; do
	command -v $t >/dev/null || die "$t is missing: make deps"
done
out=${out:-$top/image/out/g8os.raw}
mkdir -p "$(dirname "$out")"

# 1. The cached tree.
cache=${G8OS_IMAGE_CACHE:-/var/cache/g8os-image}
tag=$(cd "$top/image" && cat mkosi.default mkosi.finalize | sha256sum | cut -c1-12)
tree=$cache/tree-$tag
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ ! -e "$tree/.complete" ]; then
	echo "image: building the root tree with mkosi (once per recipe, minutes)" >&2
	rm -rf "$tree.build"
	mkdir -p "$tree.build" "$cache/packages"
	(cd "$top/image" && mkosi --default mkosi.default --output-dir "$tree.build" \
		--cache "$cache/packages" --force build) >"$cache/mkosi.log" 2>&1 ||
		{ tail -30 "$cache/mkosi.log" >&2; die "mkosi failed, see $cache/mkosi.log"; }
	built=$(find "$tree.build" -mindepth 2 -maxdepth 2 -name image -type d | head -1)
	[ -n "$built" ] && [ -e "$built/usr/lib/systemd/systemd" ] || die "mkosi made no tree in $tree.build"
	rm -rf "$tree"
	mv "$built" "$tree"
	rm -rf "$tree.build"
	touch "$tree/.complete"
fi
flock -u 9

# 2. The node layer on an overlay (the cached tree is never written).
work=$(mktemp -d /var/tmp/g8os-image.XXXXXX)
root=$work/root
cleanup() {
	mountpoint -q "$root" && umount "$root"
	rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/upper" "$work/work" "$root"
mount -t overlay overlay -o "lowerdir=$tree,upperdir=$work/upper,workdir=$work/work" "$root"
rm -f "$root/.complete"
if [ "$with_g8os" = 1 ]; then
	if [ -z "$pkg" ]; then
		pkg=$("$top/tools/mkpkg.sh" | tail -1)
	fi
	mkdir -p "$root/var/lib/pacman"
	pacman -U --noconfirm -dd --root "$root" --dbpath "$root/var/lib/pacman" "$pkg" >"$work/pacman.log" 2>&1 ||
		{ cat "$work/pacman.log" >&2; die "pacman -U $pkg failed"; }
	[ -z "$ca" ] || install -m 0644 "$ca" "$root/etc/g8os/ac-ca.pem"
	[ -z "$net" ] || install -m 0644 "$net" "$root/etc/g8os/net.toml"
	systemctl --root="$root" enable g8os.target >/dev/null 2>&1
fi
kver=$(ls "$root/usr/lib/modules" | sort -V | tail -1)
[ -n "$kver" ] && [ -e "$root/boot/initrd.img-$kver" ] || die "no kernel or initramfs in the tree (kernel $kver)"

# 3. The disk. GPT: a 256 MiB ESP, then the root, sized to its content
# plus room for what a node writes (journal, caches, the encrypted config).
esp=$work/esp.img root_img=$work/root.img
mkfs.fat -F 32 -n G8OS-ESP -C "$esp" $((256 * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
mcopy -i "$esp" "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$root/boot/vmlinuz-$kver" ::/vmlinuz
mcopy -i "$esp" "$root/boot/initrd.img-$kver" ::/initrd.img
printf 'timeout 0\ndefault g8os.conf\n' >"$work/loader.conf"
# The console is the first serial port and the screen; the root is found by
# its label, so the same image boots from any disk controller.
printf 'title g8os\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=LABEL=g8os-root rw console=tty0 console=ttyS0,115200 quiet\n' >"$work/g8os.conf"
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$work/g8os.conf" ::/loader/entries/g8os.conf
printf 'LABEL=g8os-root / ext4 rw,relatime 0 1\n' >"$root/etc/fstab"

used=$(du -sm --apparent-size "$root" | cut -f1)
size=$(( (used * 13 / 10 + 1024) ))
mke2fs -q -t ext4 -L g8os-root -d "$root" "$root_img" "${size}M" || die "mke2fs -d failed"

rm -f "$out.tmp"
truncate -s $(( (256 + size + 2) ))M "$out.tmp"
sfdisk -q "$out.tmp" <<EOF
label: gpt
start=1MiB, size=256MiB, type=U, name=esp
start=257MiB, size=${size}MiB, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, name=root
EOF
dd if="$esp" of="$out.tmp" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$root_img" of="$out.tmp" bs=1M seek=257 conv=notrunc,sparse status=none
mv "$out.tmp" "$out"
echo "$out"
