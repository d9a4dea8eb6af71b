# Sourced by ../run. UEFI boots from passed-through devices (docs/firmware.md), in the same boot on
# the fixed L0 as checks/60-uefi.sh (vfiovm.uefi=1):
#   uefi-nvme   Debian's OVMF finds the GPT disk on QEMU's NVMe controller (passed through; the
#               disk is resources/rig/efi/mkdisk.sh's, made by scripts/rig-test) and starts its
#               EFI system partition's EFI/BOOT/BOOTX64.EFI (resources/rig/efi/bootx64.c, built
#               with gnu-efi), which prints its line on the console and starts the L2 kernel's
#               EFI stub from the same partition; the L2 Linux's own nvme driver then writes
#               pattern 5 at 40 MiB (inside the disk's second partition) and reads it back;
#               scripts/rig-test finds it in the disk image afterwards, the partition table intact
#   uefi-ipxe   QEMU's e1000e with its iPXE EFI option ROM (run.sh RIG_E1000E), passed through
#               alone: OVMF starts the ROM's driver, which prints iPXE's banner, opens the NIC and
#               gets an address by DHCP from L0's user network through the passed-through NIC
#               (DMA both ways), then finds nothing to boot; the run is then stopped (SIGTERM,
#               status 143: the firmware would go on trying other boot options)
if ! grep -qw "vfiovm.uefi=1" /proc/cmdline; then
	echo "VFIOVM skip uefi-nvme, uefi-ipxe: not in this boot (scripts/rig-test runs them on the fixed L0 QEMU)"
else
	nvme=$(dev_of 1b36:0010)
	if [ -z "$nvme" ]; then
		bad "uefi-nvme: no NVMe controller bound to vfio-pci (scripts/rig-test sets RIG_NVME_IMG)"
	else
		cp ovmf/OVMF_VARS_4M.fd vars-nvme.fd
		VFIOVM_TMO=${VFIOVM_TMO:-240} MARK="VFIOVM-EFI: BOOTX64.EFI started" expect uefi-nvme 0 "L2-LINUX: done fails=0" -- \
			--firmware ovmf/OVMF_CODE_4M.fd --firmware-vars vars-nvme.fd --memory 512M --cpus 1 -v --device "$nvme"
		grep -q "BdsDxe: starting Boot.*NVMe" out.uefi-nvme || bad "uefi-nvme: the firmware did not boot from the NVMe"
		grep -q "VFIOVM-EFI: BOOTX64.EFI started" out.uefi-nvme || bad "uefi-nvme: no line from BOOTX64.EFI"
		grep -q "EFI stub: Loaded initrd from command line option" out.uefi-nvme ||
			bad "uefi-nvme: the kernel's EFI stub did not load the initrd from the ESP"
		grep -q "L2-LINUX: nvme .*driver=nvme" out.uefi-nvme || bad "uefi-nvme: the L2 kernel's nvme driver did not bind"
		grep -q "NVMEIO write seed=5 .*mismatched_words=0" out.uefi-nvme || bad "uefi-nvme: pattern 5 not read back intact"
	fi
	nic=$(dev_of 8086:10d3)
	if [ -z "$nic" ]; then
		bad "uefi-ipxe: no e1000e bound to vfio-pci (scripts/rig-test sets RIG_E1000E)"
	else
		cp ovmf/OVMF_VARS_4M.fd vars-nic.fd
		t0=$(cut -d' ' -f1 /proc/uptime)
		./vfiovm --firmware ovmf/OVMF_CODE_4M.fd --firmware-vars vars-nic.fd --memory 512M --cpus 1 -v \
			--device "$nic" >out.uefi-ipxe 2>err.uefi-ipxe </dev/null &
		vm=$!
		# until iPXE has given up on its boot (or 180 s)
		i=0
		while [ $i -lt 180 ] && kill -0 $vm 2>/dev/null && ! grep -q "Nothing to boot" out.uefi-ipxe; do
			sleep 1
			i=$((i + 1))
		done
		t1=$(cut -d' ' -f1 /proc/uptime)
		kill -TERM $vm 2>/dev/null
		wait $vm
		rc=$?
		tr -d '\033' <out.uefi-ipxe | tr '\r' '\n' | grep -a -E "iPXE|net0|Configuring|Nothing|BdsDxe" | sed "s/^/  [uefi-ipxe] /"
		sed "s/^/  [uefi-ipxe] stderr: /" err.uefi-ipxe
		echo "VFIOVM measure uefi-ipxe: start->'Nothing to boot' $(awk "BEGIN{printf \"%.2f\", $t1-$t0}") s"
		if [ $rc != 143 ]; then
			bad "uefi-ipxe: exit status $rc, want 143 (stopped while running)"
		elif ! grep -aq "iPXE 1\..* -- Open Source Network Boot Firmware" out.uefi-ipxe; then
			bad "uefi-ipxe: no iPXE banner: the firmware did not start the option ROM's driver"
		elif ! grep -aq "net0: .* using 82574l on " out.uefi-ipxe; then
			bad "uefi-ipxe: iPXE did not open the passed-through e1000e"
		elif ! grep -aq "Configuring (net0 .*ok" out.uefi-ipxe; then
			bad "uefi-ipxe: no DHCP address through the passed-through e1000e"
		else
			ok "uefi-ipxe (the iPXE EFI ROM's driver ran the NIC: banner, net0 on 82574l, DHCP ok)"
		fi
	fi
fi
