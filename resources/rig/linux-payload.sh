#!/usr/bin/env bash
# Adds the L2 Linux guest to a rig payload directory (used by scripts/rig-test and scripts/rig-bench):
#   DIR/linux/vmlinuz    the Debian kernel the rig boots as L1 (bzImage)
#   DIR/linux/vmlinux    the same kernel as an ELF (PVH note), extracted from the bzImage
#   DIR/linux/initrd.gz  busybox + resources/rig/l2-linux/init + nvmeio + the kernel's virtio modules
#   DIR/linux/root.img   an ext4 root file system for l2.root=vda (busybox, nvmeio, the same init)
#   DIR/linux-std/       the standard-flavour Debian kernel (vmlinuz, and vmlinux extracted from it) and the
#                        modules --exec packs
#                        for it (modules/RELEASE), for checks/62-exec.sh
#   DIR/nvmeio           nvmeio for L1 (static)
#   DIR/kvmhold          keeps an idle VM open in L1 during the payload (static; kvmhold.c)
# Usage: linux-payload.sh DIR
# Env:   L2_TOOLS="fio iperf3": also put these host programs (Debian's, installed here with apt-get
#        if missing) into root.img with every shared library they load (ldd) and ld.so, so the
#        guest runs them from its virtio-blk root (scripts/rig-bench-virtio); the image grows to fit.
set -euo pipefail
export PATH=$PATH:/sbin:/usr/sbin # depmod
here=$(cd "$(dirname "$0")" && pwd)
dir=$1
kernel=$("$here/build.sh" | sed -n 's/^kernel=//p')
work=${RIG_WORK:-${TMPDIR:-/tmp}/vfiovm-rig}
ir=$dir/linux/ir
mkdir -p "$ir/bin" "$ir/proc" "$ir/sys" "$ir/dev" "$dir/linux/bb"
dpkg-deb -x "$(ls "$work"/debs/busybox-static_*.deb | head -1)" "$dir/linux/bb"
cp "$dir/linux/bb/bin/busybox" "$ir/bin/busybox"
cp "$here/l2-linux/init" "$ir/init"
gcc -O2 -Wall -Werror -static -o "$dir/nvmeio" "$here/l2-linux/nvmeio.c"
gcc -O2 -Wall -Werror -static -o "$dir/kvmhold" "$here/kvmhold.c"
cp "$dir/nvmeio" "$ir/bin/nvmeio"
# The Debian kernel's own virtio modules, for l2.root=vda (the virtio checks; the cloud kernel
# has them as modules, ext4 built in).
kdeb=$(ls "$work"/debs/linux-image-*.deb | sort -V | tail -1)
kx=$dir/linux/kx
mkdir -p "$ir/mod" "$kx"
dpkg-deb -x "$kdeb" "$kx"
# in load order (each after what it depends on); the L2 init loads them as /mod/order lists them
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk \
	failover net_failover virtio_net virtio_console virtio-rng; do
	f=$(find "$kx/lib/modules" -name "$m.ko" -print -quit)
	[ -n "$f" ] || { echo "linux-payload: no $m.ko in $(basename "$kdeb")" >&2; exit 1; }
	cp "$f" "$ir/mod/"
	echo "$m" >>"$ir/mod/order"
done
rm -rf "$kx"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir/linux/initrd.gz"
# DIR/linux/root.img: the ext4 root file system l2.root=vda switches to (busybox, nvmeio, this
# init, and /hello for the guest to find)
rt=$dir/linux/rootfs
mkdir -p "$rt/bin" "$rt/proc" "$rt/sys" "$rt/dev" "$rt/tmp" "$rt/mnt"
cp "$ir/bin/busybox" "$ir/bin/nvmeio" "$rt/bin/"
cp "$here/l2-linux/init" "$rt/init"
echo "VFIOVM-HOST-FILE put here by linux-payload.sh" >"$rt/hello"
size=32
for t in ${L2_TOOLS:-}; do
	command -v "$t" >/dev/null 2>&1 || {
		echo "linux-payload: installing $t (L2_TOOLS)" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$t" >/dev/null
	}
	p=$(command -v "$t")
	mkdir -p "$rt/usr/bin" "$rt/lib64" "$rt/lib/x86_64-linux-gnu"
	cp -L "$p" "$rt/usr/bin/"
	ldd "$p" | awk '$3 ~ /^\// { print $3 }' | xargs -r -I{} cp -L {} "$rt/lib/x86_64-linux-gnu/"
	cp -L /lib64/ld-linux-x86-64.so.2 "$rt/lib64/"
done
[ -z "${L2_TOOLS:-}" ] || size=$(($(du -sm "$rt" | cut -f1) * 5 / 4 + 32))
mkfs.ext4 -q -F -L l2root -d "$rt" "$dir/linux/root.img" "${size}M" >/dev/null
rm -rf "$rt"
rm -rf "$ir" "$dir/linux/bb"
cp "$kernel" "$dir/linux/vmlinuz"
# DIR/linux-std: the standard-flavour Debian kernel for checks/62-exec.sh (--exec mounts 9p shares;
# the cloud kernel has no 9p) and, under modules/RELEASE, the modules --exec packs for it
# (virtio, virtio-console, 9p and what they need), nvme with its checksum modules
# (checks/63-exec-loop.sh loads them) and igbvf (checks/56-sriov-host.sh), with a modules.dep
# made for just those.
std=${RIG_STD_KPKG:-$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')}
if [ -z "$std" ]; then
	# offline: the newest standard-flavour kernel already cached
	f=$(ls "$work"/debs/linux-image-*-amd64_*.deb 2>/dev/null | grep -v -- '-cloud-amd64_' | sort -V | tail -1 || true)
	f=${f##*/}
	std=${f%%_*}
fi
[ -n "$std" ] || { echo "linux-payload: cannot resolve the standard-flavour kernel package (linux-image-amd64)" >&2; exit 1; }
ls "$work"/debs/"$std"_*.deb >/dev/null 2>&1 ||
	(cd "$work"/debs && apt-get -qq -o APT::Sandbox::User=root download "$std" >&2) ||
	{ echo "linux-payload: apt-get download $std failed" >&2; exit 1; }
sdeb=$(ls "$work"/debs/"$std"_*.deb | sort -V | tail -1)
srel=${std#linux-image-}
sx=$dir/linux-std/x
mkdir -p "$sx"
dpkg-deb --fsys-tarfile "$sdeb" | tar -x -C "$sx" --wildcards "./boot/vmlinuz-$srel" \
	"./lib/modules/$srel/modules.builtin*" "./lib/modules/$srel/modules.order" \
	"./lib/modules/$srel/kernel/drivers/virtio/*" "./lib/modules/$srel/kernel/drivers/char/virtio_console.ko*" \
	"./lib/modules/$srel/kernel/net/9p/*" "./lib/modules/$srel/kernel/fs/9p/*" \
	"./lib/modules/$srel/kernel/fs/netfs/*" "./lib/modules/$srel/kernel/fs/fscache/*" \
	"./lib/modules/$srel/kernel/drivers/nvme/host/*" "./lib/modules/$srel/kernel/block/t10-pi.ko*" \
	"./lib/modules/$srel/kernel/lib/crc-t10dif.ko*" "./lib/modules/$srel/kernel/lib/crc64*" \
	"./lib/modules/$srel/kernel/crypto/crct10dif*" "./lib/modules/$srel/kernel/crypto/crc64_rocksoft*" \
	"./lib/modules/$srel/kernel/drivers/net/ethernet/intel/igbvf/*"
depmod -b "$sx" "$srel"
mkdir -p "$dir/linux-std/modules"
mv "$sx/boot/vmlinuz-$srel" "$dir/linux-std/vmlinuz"
mv "$sx/lib/modules/$srel" "$dir/linux-std/modules/$srel"
rm -rf "$sx"
command -v lz4 >/dev/null 2>&1 || {
	echo "linux-payload: installing lz4 (the Debian kernel's payload is lz4-compressed)" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lz4 >/dev/null
}
python3 "$here/extract-vmlinux.py" "$kernel" "$dir/linux/vmlinux"
# the standard kernel uncompressed beside its bzImage, as in a build tree: --exec boots it (--vmlinux auto)
python3 "$here/extract-vmlinux.py" "$dir/linux-std/vmlinuz" "$dir/linux-std/vmlinux"
