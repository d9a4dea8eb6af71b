# Sourced by ../run. UEFI boot on real KVM (docs/firmware.md): Debian's OVMF (CODE read-only, a
# copy of the VARS template as the persistent variable store behind the CFI flash model) boots
# from a virtio-blk disk holding an EFI system partition (ovmf/esp.img, made by scripts/rig-test):
# with no boot entry of its own the firmware starts its shell, which runs startup.nsh. That script
# counts boots in a non-volatile shell variable, i.e. in the VARS file: the first boot sets it and
# resets (EFI ResetSystem through 0xCF9), vfiovm reboots in place (--on-reset reboot, the default
# with --firmware), the second boot sees the variable and runs the L2 kernel through its EFI stub,
# with the L2 initrd loaded by the stub from the same FAT. The guest reaches its init and powers
# off. A second vfiovm run on the same VARS file finds the variable the first run left and shuts
# down (EFI ResetSystem(EfiResetShutdown)).
# With OVMF running as L2, the rig's stock QEMU (L0, 7.2 and 10.0 alike) aborts about a minute
# in ("tcg_handle_interrupt: assertion failed" on the big lock; docs/testing.md), whichever VMM
# runs OVMF; scripts/rig-test therefore runs this check in a boot of its own on a QEMU 7.2 rebuilt
# with that defect fixed (resources/rig/qemu-l0fix.sh), which passes vfiovm.uefi=1 to L1.
if ! grep -qw "vfiovm.uefi=1" /proc/cmdline; then
	echo "VFIOVM skip uefi: not in this boot (scripts/rig-test runs it on the fixed L0 QEMU, docs/testing.md)"
elif [ ! -f ovmf/OVMF_CODE_4M.fd ] || [ ! -f ovmf/esp.img ]; then
	bad "uefi: no OVMF or ESP image in the payload (scripts/rig-test)"
else
	cp ovmf/OVMF_VARS_4M.fd vars.fd
	before=$(md5sum <vars.fd | cut -c1-32)
	VFIOVM_TMO=${VFIOVM_TMO:-240} MARK="L2-LINUX: init reached" expect uefi-linux 0 "L2-LINUX: done fails=0" -- \
		--firmware ovmf/OVMF_CODE_4M.fd --firmware-vars vars.fd --memory 512M --cpus 1 -v \
		--disk path=ovmf/esp.img,readonly=on
	grep -q "EFI stub: Loaded initrd from command line option" out.uefi-linux ||
		bad "uefi-linux: the kernel's EFI stub did not load the initrd from the ESP"
	grep -q "Shell> .*vmlinuz" out.uefi-linux || bad "uefi-linux: the firmware's shell did not run startup.nsh"
	# The Windows-facing platform's defaults with firmware (docs/firmware.md): the Hyper-V leaves
	# are on without asking (L1's KVM offers them), and the WAET reached the guest through OVMF's
	# table loader.
	if grep -q "hyperv: leaves 0x40000000-0x4000000a" err.uefi-linux; then
		ok "uefi-hyperv (on by default with --firmware: $(grep -m1 "Hypervisor detected" out.uefi-linux | sed 's/.*\] //'))"
	else
		bad "uefi-hyperv: --firmware did not turn the Hyper-V enlightenments on by default"
	fi
	grep -q "ACPI: WAET" out.uefi-linux && ok "uefi-waet (installed by OVMF from the table loader)" ||
		bad "uefi-waet: the guest lists no WAET"
	# The reboot in place: the first boot's shell reset, the VM restarted in the same process,
	# and the second boot's shell found the variable the first one set.
	tr -d '\r' <out.uefi-linux | grep -a 'vfiovm-esp:' | sed 's/^/  [uefi-reboot] /'
	grep -a "restarted in place" err.uefi-linux | sed 's/^/  [uefi-reboot] stderr: /'
	if tr -d '\r' <out.uefi-linux | grep -aq "vfiovm-esp: first boot, resetting" &&
		tr -d '\r' <out.uefi-linux | grep -aq 'vfiovm-esp: vfiovm_boot=\[1\]' &&
		grep -q "restarted in place" err.uefi-linux && grep -q "L2-LINUX: done fails=0" out.uefi-linux; then
		ok "uefi-reboot (the firmware reset, the VM restarted in place, the second boot saw the variable the first set and booted Linux)"
	else
		bad "uefi-reboot: the firmware's reset did not bring the VM back to a second boot"
	fi
	VFIOVM_TMO=${VFIOVM_TMO:-240} expect uefi-vars 0 "vfiovm-esp: set by the previous run" -- \
		--firmware ovmf/OVMF_CODE_4M.fd --firmware-vars vars.fd --memory 512M --cpus 1 \
		--disk path=ovmf/esp.img,readonly=on
	after=$(md5sum <vars.fd | cut -c1-32)
	if [ "$before" != "$after" ]; then
		ok "uefi-vars-file (the firmware wrote its variable store: $before -> $after)"
	else
		bad "uefi-vars-file: vars.fd is unchanged after a UEFI boot"
	fi
fi
