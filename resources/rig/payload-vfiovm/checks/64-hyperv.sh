# Sourced by ../run. The Windows-facing platform (docs/firmware.md, "Windows-facing platform") on
# L1's real KVM (kvm_amd), which offers Hyper-V CPUID (KVM_GET_SUPPORTED_HV_CPUID):
# - hv-probe: the tiny guest with --hyperv on reads the Hyper-V leaves (Microsoft Hv, Hv#1) and
#   KVM's at 0x40000100, and uses every enlightenment as a guest does (hypercall page and a
#   hypercall, VP index, reference counter, TSC page, frequency MSRs, SynIC, a direct-mode and a
#   SINT 0 synthetic timer, the flush and IPI hypercalls); the reset MSR, left out of the
#   features, is refused with #GP (KVM_CAP_HYPERV_ENFORCE_CPUID);
# - hv-probe-vendor: hide-kvm and hv-vendor-id=: the vendor as given, nothing at 0x40000100;
# - linux-hyperv: the stock Debian kernel with --hyperv on --cpu hide-kvm takes the Hyper-V path:
#   "Hypervisor detected: Microsoft Hyper-V", its "Hyper-V: privilege flags" line with the
#   features vfiovm gives, and the Hyper-V reference TSC page as its clocksource; no KVM;
# - linux-hyperv-kvm: --hyperv on alone: Linux prefers KVM (it ranks KVM's signature, found at
#   0x40000100, above Hyper-V's), so kvm-clock: the moved KVM leaves are found;
# - linux-hide-kvm: --cpu hide-kvm alone: no hypervisor named, no kvm-clock.
linux_hv() { # <check-name> <vfiovm flags...>
	n=$1
	shift
	VFIOVM_TMO=${VFIOVM_TMO:-90} MARK="L2-LINUX: init reached" expect "$n" 0 "L2-LINUX: done fails=0" -- \
		--kernel linux/vmlinuz --initramfs linux/initrd.gz --memory 256M --cpus 1 -v \
		--cmdline "console=ttyS0 panic=-1" "$@"
	grep -m1 "Hypervisor detected" "out.$n" | sed "s/^/VFIOVM measure $n: /"
	grep "Hyper-V:" "out.$n" | sed "s/^/VFIOVM measure $n: /"
	grep -m1 "L2-LINUX: clocksource=" "out.$n" | sed "s/^/VFIOVM measure $n: /"
}
if ! [ -f guests/hv_probe ]; then
	bad "hyperv: no hv_probe guest in the payload"
else
	expect hv-probe 1 "hv: ok" -- --kernel guests/hv_probe --memory 64M --hyperv on -v --cmdline "test=hv"
	grep -q "cpuid: 0x40000000 eax=0x4000000a .* text=Microsoft Hv" out.hv-probe || bad "hv-probe: 0x40000000 is not Microsoft Hv up to 0x4000000a"
	grep -q "hv: interface=Hv#1" out.hv-probe || bad "hv-probe: 0x40000001 is not Hv#1"
	grep -q "cpuid: 0x40000100 eax=0x40000110 .* text=KVMKVMKVM" out.hv-probe || bad "hv-probe: KVM's leaves are not at 0x40000100"
	grep -q "hv: reset-msr gp" out.hv-probe && ok "hv-enforce (the reset MSR, left out, is refused)" ||
		bad "hv-enforce: the reset MSR is readable although its feature bit is clear"
	grep "^cpuid: 0x4000000[34]\|^hv: " out.hv-probe | sed "s/^/VFIOVM measure hv-probe: /"
	expect hv-probe-vendor 1 "text=VFIOVMVFIOVM" -- --kernel guests/hv_probe --memory 64M --hyperv on \
		--cpu hide-kvm,hv-vendor-id=VFIOVMVFIOVM
	grep -q "cpuid: 0x40000100 eax=0x0 ebx=0x0 ecx=0x0 edx=0x0" out.hv-probe-vendor ||
		bad "hv-probe-vendor: something is at 0x40000100 with hide-kvm"
fi
if [ -f linux/vmlinuz ] && [ -f linux/initrd.gz ]; then
	linux_hv linux-hyperv --hyperv on --cpu hide-kvm
	grep -q "Hypervisor detected: Microsoft Hyper-V" out.linux-hyperv || bad "linux-hyperv: the guest did not detect Hyper-V"
	grep -q "Hyper-V: privilege flags low 0x" out.linux-hyperv || bad "linux-hyperv: no 'Hyper-V: privilege flags' line"
	grep -q "clocksource=hyperv_clocksource_tsc_page" out.linux-hyperv ||
		bad "linux-hyperv: clocksource is not the Hyper-V TSC page"
	grep -q "kvm-clock\|Hypervisor detected: KVM" out.linux-hyperv && bad "linux-hyperv: the guest still sees KVM"
	linux_hv linux-hyperv-kvm --hyperv on
	grep -q "Hypervisor detected: KVM" out.linux-hyperv-kvm || bad "linux-hyperv-kvm: KVM at 0x40000100 was not detected"
	grep -q "clocksource=kvm-clock" out.linux-hyperv-kvm || bad "linux-hyperv-kvm: clocksource is not kvm-clock"
	linux_hv linux-hide-kvm --cpu hide-kvm
	grep -q "Hypervisor detected" out.linux-hide-kvm && bad "linux-hide-kvm: the guest named a hypervisor"
	grep -q "kvm-clock" out.linux-hide-kvm && bad "linux-hide-kvm: kvm-clock with KVM hidden"
else
	bad "linux-hyperv: no kernel in the payload"
fi
