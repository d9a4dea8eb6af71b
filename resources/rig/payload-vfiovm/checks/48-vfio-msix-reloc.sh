# Sourced by ../run. MSI-X relocation (docs/passthrough.md, "The MSI-X page") on QEMU's NVMe
# controller, which keeps its MSI-X table and PBA in BAR 0 after its registers (QEMU's
# msix-exclusive-bar=off, the default since QEMU 9.0 and the only layout of 6.0-8.2; run.sh passes
# it to QEMU 10 explicitly). hw/nvme/ctrl.c, nvme_mbar_size(): registers and doorbells, rounded up
# to 4 KiB; the table (16 bytes a vector); rounded up to 4 KiB; the PBA; the sum rounded up to a
# power of two. With the default 64 I/O queue pairs (65 vectors): table 0x2000-0x2410, PBA
# 0x3000-0x3010, BAR 0 16 KiB. The bytes beside them (0x2410-0x3000, 0x3010-0x4000) are no NVMe
# registers (QEMU leaves them unassigned), but nothing tells a VMM so: they are BAR 0 bytes a guest
# may touch, trapped today because they share the pages of the table and PBA.
# L1's vfio-pci reports VFIO_REGION_INFO_CAP_MSIX_MAPPABLE for BAR 0: vfio_pci_core adds it for the
# MSI-X BAR whenever that BAR may be mmapped at all (vfio_pci_ioctl_get_region_info ->
# msix_mmappable_cap, unconditionally since Linux 4.16); intel-iommu,intremap=on matters to the
# container instead (vfio_iommu_type1 attaches a group only with isolated MSI,
# iommu_group_has_isolated_msi, unless allow_unsafe_interrupts).
#   msix-reloc-off   msix_relocation=off: the guest sees the device's layout, the table's and
#                    PBA's pages trap
#   msix-reloc-auto  msix_relocation=auto: the guest sees BAR 0 doubled (32 KiB), the table and
#                    PBA in its upper half; the device's 16 KiB are guest memory whole
# Both: the L2 Linux's nvme driver binds the controller and programs its MSI-X vectors through the
# table the guest sees (I/O completes only if those vectors reach the guest), writes and reads back
# pattern 4 at 4 MiB (the host checks only patterns 1-3), 2000 4 KiB reads; then it lets go of the
# controller, prints the MSI-X layout it saw and reads BAR 0 at 0x2800 (the table's page) and
# 0x3800 (the PBA's page) 5000 times each through sysfs resource0. Each of those reads is an exit
# with off and none with auto: the MMIO exits of the two runs differ by about 10000.
nvme=$(dev_of 1b36:0010)
# 40-vfio-nvme.sh ends by giving the controller to L1's nvme driver: back to vfio-pci.
to_vfio "$nvme" msix-reloc
msix_reloc_mmio() { # <check-name> -> MMIO exits to userspace from vfiovm's -v summary
	sed -n 's/.*exits to userspace: [0-9]* port I\/O, \([0-9]*\) MMIO, .*/\1/p' "err.$1"
}
msix_reloc_run() { # <check-name> <msix_relocation>
	VFIOVM_TMO=${VFIOVM_TMO:-180} MARK="L2-LINUX: init reached" expect "$1" 0 "L2-LINUX: done fails=0" -- \
		--kernel linux/vmlinuz --initramfs linux/initrd.gz --memory 256M --cpus "${LINUX_CPUS:-1}" \
		--device "$nvme,msix_relocation=$2" -v \
		--cmdline "console=ttyS0 panic=-1 l2.test=nvme l2.write=4@4M l2.reads=2000 l2.peek=0x2800:0x3800@5000"
	grep -q "L2-LINUX: nvme .*driver=nvme" "out.$1" || bad "$1: the guest's nvme driver did not bind the controller"
	grep -q "NVMEIO write seed=4 .*mismatched_words=0" "out.$1" || bad "$1: pattern 4 not read back intact"
	grep -q "L2-LINUX: irq .*nvme0q1 " "out.$1" || bad "$1: no MSI-X vector for the first I/O queue in /proc/interrupts"
	[ "$(grep -c "NVMEIO peek offset=0x[23]800 count=    5000 " "out.$1")" = 2 ] || bad "$1: BAR 0 not read at 0x2800 and 0x3800"
	sed -n "s/.*\(MSI-X .*relocated.*\)/VFIOVM measure $1 vfiovm: \1/p" "err.$1"
	sed -n "s/^\(NVMEIO msix .*\)/VFIOVM measure $1 L2: \1/p; s/^\(NVMEIO peek .*\)/VFIOVM measure $1 L2: \1/p" "out.$1"
}
# msix_reloc_layout <off: vectors tbar toff pbar poff size> <auto: the same>: off is the device's
# layout in BAR 0; auto has BAR 0 doubled, the table at its upper half, the PBA right after it.
msix_reloc_layout() {
	[ $# = 12 ] || return 1
	[ "$2" = 0 ] && [ "$4" = 0 ] && [ $(($3)) -lt $(($6)) ] && [ $(($5)) -lt $(($6)) ] || return 1
	[ "$7" = "$1" ] && [ "$8" = 0 ] && [ "${10}" = 0 ] || return 1
	[ $((${12})) = $((2 * $6)) ] && [ $(($9)) = $(($6)) ] && [ $((${11})) = $(($6 + 16 * $7)) ]
}
if [ -z "$nvme" ]; then
	bad "msix-reloc: no NVMe controller was bound to vfio-pci (rig-test sets RIG_NVME_IMG)"
elif [ ! -f linux/vmlinuz ]; then
	bad "msix-reloc: no kernel in the payload"
else
	msix_reloc_run msix-reloc-off off
	msix_reloc_run msix-reloc-auto auto
	grep -q "MSI-X not relocated (msix_relocation=off)" err.msix-reloc-off ||
		bad "msix-reloc-off: vfiovm -v does not say the table stayed"
	if grep -q "does not report VFIO_REGION_INFO_CAP_MSIX_MAPPABLE" err.msix-reloc-auto; then
		bad "msix-reloc-auto: L1's vfio-pci did not report MSIX_MAPPABLE for the controller's BAR 0"
	elif ! grep -q "MSI-X relocated: " err.msix-reloc-auto; then
		bad "msix-reloc-auto: vfiovm -v does not report the table relocated"
	fi
	# The layouts the guest saw: the device's with off; with auto BAR 0 doubled, the table at its
	# upper half and the PBA right after the table.
	lo=$(sed -n 's/^NVMEIO msix vectors=\([0-9]*\) table=\([0-9]\):\(0x[0-9a-f]*\) pba=\([0-9]\):\(0x[0-9a-f]*\) bar0_size=\(0x[0-9a-f]*\).*$/\1 \2 \3 \4 \5 \6/p' out.msix-reloc-off)
	la=$(sed -n 's/^NVMEIO msix vectors=\([0-9]*\) table=\([0-9]\):\(0x[0-9a-f]*\) pba=\([0-9]\):\(0x[0-9a-f]*\) bar0_size=\(0x[0-9a-f]*\).*$/\1 \2 \3 \4 \5 \6/p' out.msix-reloc-auto)
	# shellcheck disable=SC2086 # six fields each, split on purpose
	if msix_reloc_layout $lo $la; then
		ok "msix-reloc-layout: off $lo; auto $la"
	else
		bad "msix-reloc-layout: off '$lo', auto '$la' (vectors, table BAR, offset, PBA BAR, offset, BAR 0 size)"
	fi
	xo=$(msix_reloc_mmio msix-reloc-off)
	xa=$(msix_reloc_mmio msix-reloc-auto)
	d=$(echo "${xo:-x} ${xa:-x}" | awk 'NF == 2 && $1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ { print $1 - $2 }')
	echo "VFIOVM measure msix-reloc MMIO exits to userspace: off ${xo:-?}, auto ${xa:-?}, difference ${d:-?} (10000 reads of BAR 0 bytes in the table's and PBA's pages)"
	# Boot-to-boot noise is a few tens of exits (40-vfio-nvme.sh allows 100 for 20000 I/Os).
	if [ -n "$d" ] && [ "$d" -ge 9900 ]; then
		ok "msix-reloc-exits: $d fewer MMIO exits with the table relocated"
	else
		bad "msix-reloc-exits: ${d:-?} fewer MMIO exits with the table relocated, want about 10000"
	fi
fi
