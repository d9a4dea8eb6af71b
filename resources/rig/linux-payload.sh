#!/usr/bin/env bash
# Adds the L2 Linux guest to a rig payload directory (used by scripts/rig-test and scripts/rig-bench):
#   DIR/linux/vmlinuz    the Debian kernel the rig boots as L1 (bzImage)
#   DIR/linux/vmlinux    the same kernel as an ELF (PVH note), extracted from the bzImage
#   DIR/linux/initrd.gz  busybox + resources/rig/l2-linux/init + nvmeio
#   DIR/nvmeio           nvmeio for L1 (static)
#   DIR/kvmhold          keeps an idle VM open in L1 during the payload (static; kvmhold.c)
# Usage: linux-payload.sh DIR
set -euo pipefail
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
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$dir/linux/initrd.gz"
rm -rf "$ir" "$dir/linux/bb"
cp "$kernel" "$dir/linux/vmlinuz"
command -v lz4 >/dev/null 2>&1 || {
	echo "linux-payload: installing lz4 (the Debian kernel's payload is lz4-compressed)" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lz4 >/dev/null
}
python3 "$here/extract-vmlinux.py" "$kernel" "$dir/linux/vmlinux"
