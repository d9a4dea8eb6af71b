# Sourced by ../run. Reset strategy (docs/passthrough.md, "Reset"):
#   reset-method        what L1's kernel offers for every bound device (sysfs reset_method, or its
#                       absence), as "VFIOVM measure" lines, and the reset line of `vfiovm doctor`
#   reset-nvme-1        QEMU's NVMe controller (it has FLR): vfiovm -v names flr and uses a
#                       function-level reset; the guest (guests/nvme_reset) sets CC, initiates an FLR
#                       from inside (Device Control bit 15), sees CC cleared and the bit read 0, and
#                       leaves CC set when it exits
#   reset-nvme-2        the next VM on the same controller starts with CC = 0: the state the first VM
#                       left is gone (vfio-pci's own resets at release and open, and vfiovm's at open)
#   reset-required-edu  edu sits on L1's root bus, conventional PCI without FLR or PM: nothing resets
#                       it, so `reset=required` is refused with one line and status 2, before any guest
#                       code runs; doctor fails it the same way; then edu is assigned again as usual
#                       (nothing was left behind)
nvme=$(dev_of 1b36:0010)
edu=$(dev_of 1234:11e8)
# 40-vfio-nvme.sh ends by giving the controller to L1's nvme driver: back to vfio-pci.
to_vfio "$nvme" reset
j=0
while [ $j -lt "${RIG_NDEV:-0}" ]; do
	eval "id=\${RIG_DEV${j}_ID-} b=\${RIG_DEV${j}_BDF-}"
	d=/sys/bus/pci/devices/$b
	if [ -e "$d/reset_method" ]; then
		echo "VFIOVM measure reset_method $id $b: '$(cat "$d/reset_method")'"
	elif [ -e "$d/reset" ]; then
		echo "VFIOVM measure reset_method $id $b: absent (reset present: a kernel before 5.15)"
	else
		echo "VFIOVM measure reset_method $id $b: absent (no reset either: no reset of the function alone)"
	fi
	./vfiovm doctor "$b" 2>&1 | sed -n "s/^\(ok\|note\|FAIL\): $b reset: /VFIOVM measure doctor reset $b (\1): /p"
	j=$((j + 1))
done
ok "reset-method: $j device(s) reported"

if [ -z "$nvme" ]; then
	bad "vfio-reset: no NVMe controller was bound to vfio-pci (rig-test sets RIG_NVME_IMG)"
else
	grep -qw flr "/sys/bus/pci/devices/$nvme/reset_method" 2>/dev/null ||
		bad "reset-nvme: L1's reset_method for $nvme does not offer flr"
	expect reset-nvme-1 1 "nvme_reset: failures=0" -- --kernel guests/nvme_reset --memory 64M \
		--device "$nvme,reset=required" -vv --cmdline "flr=1 leave=1 action=exit:0"
	sed -n "s/.*\($nvme reset: .*\)/VFIOVM measure \1/p" err.reset-nvme-1
	grep -q "$nvme reset: the kernel offers flr.*; vfiovm uses function-level reset (VFIO_DEVICE_RESET); a guest FLR resets it the same way" err.reset-nvme-1 ||
		bad "reset-nvme-1: no -v line naming flr and the function-level reset"
	grep -q "the guest initiated an FLR" err.reset-nvme-1 || bad "reset-nvme-1: vfiovm saw no guest FLR"
	grep -q "nvme_reset: flr devctl=0x[0-7][0-9a-f]\{3\} cc=0x00000000" out.reset-nvme-1 ||
		bad "reset-nvme-1: the guest's FLR did not clear CC (or the bit did not read 0)"
	grep -q "nvme_reset: left cc=0x00460000" out.reset-nvme-1 || bad "reset-nvme-1: CC not left set"
	expect reset-nvme-2 1 "nvme_reset: start cc=0x00000000" -- --kernel guests/nvme_reset --memory 64M \
		--device "$nvme" -v --cmdline "action=exit:0"
fi

if [ -z "$edu" ]; then
	bad "vfio-reset: no edu device was bound to vfio-pci"
else
	expect_error reset-required-edu "$edu: reset=required, but vfiovm cannot reset this device" \
		--kernel guests/edu_probe --memory 64M --device "$edu,reset=required"
	grep -q "guest: edu_probe" out.reset-required-edu && bad "reset-required-edu: the guest ran"
	./vfiovm doctor "$edu,reset=required" >doctor.reset 2>&1
	rc=$?
	sed "s/^/  [doctor-reset] /" doctor.reset
	if [ $rc != 0 ] && grep -q "^FAIL: $edu reset: .*(reset=required refuses it)" doctor.reset; then
		ok "reset-required-edu-doctor"
	else
		bad "reset-required-edu-doctor: status $rc, no failing reset line"
	fi
	expect reset-after-refusal 1 "edu_probe: failures=0" -- --kernel guests/edu_probe --memory 64M \
		--device "$edu" -v --cmdline "action=exit:0"
	sed -n "s/.*\($edu reset: .*\)/VFIOVM measure \1/p" err.reset-after-refusal
	grep -q "$edu reset: .*vfiovm uses none: " err.reset-after-refusal ||
		bad "reset-after-refusal: no -v line saying edu is not reset"
fi
