#!/usr/bin/env bash
# A GPT disk image for the rig's UEFI checks (docs/firmware.md), built without root or loop mounts:
#   partition 1  EFI system partition, FAT, 1 MiB - 33 MiB: EFI/BOOT/BOOTX64.EFI (bootx64.c, built
#                here with Debian's gnu-efi) and, when given, \vmlinuz, \initrd.gz, \cmdline.txt
#   partition 2  "data", 33 MiB to the end: left zero, for the L2 Linux's verified I/O
# Usage: mkdisk.sh OUT.img SIZE_MIB [VMLINUZ INITRD "KERNEL COMMAND LINE"]
# Without a kernel, BOOTX64.EFI prints its line and powers off (the benchmark's disk).
# Needs gcc, binutils, gnu-efi, dosfstools, mtools and util-linux's sfdisk (.ci/run installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1 size=$2
[ "$size" -ge 64 ] || { echo "mkdisk: SIZE_MIB must be at least 64" >&2; exit 1; }
export PATH=$PATH:/sbin:/usr/sbin
w=$(mktemp -d "${TMPDIR:-/tmp}/vfiovm-efi.XXXXXX")
trap 'rm -rf "$w"' EXIT
# gnu-efi: a PIC ELF shared object linked with its crt0 and linker script, then turned into a PE32+
# EFI application (subsystem 10) by objcopy.
gcc -O2 -Wall -Werror -fpic -ffreestanding -fno-stack-protector -fno-stack-check -fshort-wchar \
	-mno-red-zone -maccumulate-outgoing-args -DGNU_EFI_USE_MS_ABI \
	-I/usr/include/efi -I/usr/include/efi/x86_64 -c "$here/bootx64.c" -o "$w/bootx64.o"
ld -shared -Bsymbolic -nostdlib -T /usr/lib/elf_x86_64_efi.lds /usr/lib/crt0-efi-x86_64.o \
	"$w/bootx64.o" -o "$w/bootx64.so" -L/usr/lib -lefi -lgnuefi
objcopy -j .text -j .sdata -j .data -j .rodata -j .dynamic -j .dynsym -j .rel -j .rela -j '.rel.*' \
	-j '.rela.*' -j .reloc --target efi-app-x86_64 --subsystem=10 "$w/bootx64.so" "$w/BOOTX64.EFI"
# The FAT file system of the ESP (32 MiB), filled with mtools, then placed at 1 MiB.
esp_mib=32
mkfs.vfat -n VFIOVM-ESP -C "$w/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$w/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$w/esp.img" "$w/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
if [ $# -ge 5 ]; then
	mcopy -i "$w/esp.img" "$3" ::/vmlinuz
	mcopy -i "$w/esp.img" "$4" ::/initrd.gz
	printf '%s\n' "$5" >"$w/cmdline.txt"
	mcopy -i "$w/esp.img" "$w/cmdline.txt" ::/cmdline.txt
fi
rm -f "$out"
truncate -s "${size}M" "$out"
sfdisk -q "$out" <<EOF
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"
start=$((1 + esp_mib))MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="data"
EOF
dd if="$w/esp.img" of="$out" bs=1M seek=1 conv=notrunc status=none
