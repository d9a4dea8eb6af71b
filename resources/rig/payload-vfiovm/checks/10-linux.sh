# Sourced by ../run. A stock Debian kernel (bzImage) boots as the L2 guest: both vCPUs from ACPI,
# kvm-clock, no lpj=/no_timer_check crutches; its init powers off (ACPI S5) → status 0.
if [ -f linux/vmlinuz ] && [ -f linux/initrd.gz ]; then
	expect linux-bzimage 0 "L2-LINUX: init reached" -- --kernel linux/vmlinuz --initramfs linux/initrd.gz \
		--memory 256M --cpus "$cpus" -v --cmdline "console=ttyS0 panic=-1"
	grep -q "cpus=$cpus" out.linux-bzimage || bad "linux-bzimage: the guest did not see $cpus CPUs"
	grep -q "clocksource=kvm-clock" out.linux-bzimage || bad "linux-bzimage: clocksource is not kvm-clock"
else
	bad "linux-bzimage: no kernel in the payload"
fi
