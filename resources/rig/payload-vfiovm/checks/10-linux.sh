# Sourced by ../run. A stock Debian kernel boots as the L2 guest through each boot path vfiovm has
# for it: the bzImage, and the ELF vmlinux extracted from it (which carries a PVH note, so vfiovm
# enters it at its 32-bit PVH entry). Two vCPUs found through ACPI, kvm-clock, no
# lpj=/no_timer_check crutches; its init powers off (ACPI S5) → status 0. Timed from vfiovm's start
# to the guest's init and to vfiovm's exit.
linux_boot() { # <check-name> <kernel file> <expected entry mode in vfiovm's log> <vCPUs>
	lcpus=${LINUX_CPUS:-$4}
	VFIOVM_TMO=${VFIOVM_TMO:-90} MARK="L2-LINUX: init reached" expect "$1" 0 "L2-LINUX: done fails=0" -- --kernel "$2" \
		--initramfs linux/initrd.gz --memory 256M --cpus "$lcpus" -v --cmdline "console=ttyS0 panic=-1"
	grep -q "cpus=$lcpus" "out.$1" || bad "$1: the guest did not see $lcpus CPU(s)"
	grep -q "clocksource=kvm-clock" "out.$1" || bad "$1: clocksource is not kvm-clock"
	grep -q "ACPI: MADT\|ACPI: APIC" "out.$1" || bad "$1: the guest did not read the MADT"
	grep -q ": $3 entry at" "err.$1" || bad "$1: vfiovm did not use the $3 entry"
}
if [ -f linux/vmlinuz ] && [ -f linux/initrd.gz ]; then
	linux_boot linux-bzimage linux/vmlinuz Linux64 2
else
	bad "linux-bzimage: no kernel in the payload"
fi
if [ -f linux/vmlinux ]; then
	linux_boot linux-pvh linux/vmlinux Pvh 2
else
	bad "linux-pvh: no vmlinux in the payload"
fi
