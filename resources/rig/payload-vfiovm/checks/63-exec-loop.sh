# Sourced by ../run. Passthrough in a loop (docs/ci-runner.md, "A passed-through device, run after
# run"): vfiovm --exec runs the stock Debian kernel (linux-std) with QEMU's NVMe controller passed
# through, back to back, vfiovm.loop=N times (default 50). Each run's command, from L1's root shared
# read-only, first reads the controller's CC register through sysfs before any driver touches it:
# it must be 0, i.e. the run found the controller reset (the previous run's driver left it set up
# and shut down, which does not clear CC). Then it loads the nvme driver, checks that the pattern
# the previous run wrote is on the disk, writes its own, and exits 0. The count of runs that found
# the device reset and working is printed.
nvme=$(dev_of 1b36:0010)
rel=$(ls linux-std/modules 2>/dev/null | head -1)
loops=$(sed -n 's/.*vfiovm\.loop=\([0-9]*\).*/\1/p' /proc/cmdline)
loops=${loops:-50}
if [ -z "$nvme" ] || [ ! -f linux-std/vmlinuz ] || [ -z "$rel" ]; then
	bad "exec-loop: no NVMe controller bound, or no linux-std kernel in the payload"
else
	to_vfio "$nvme" exec-loop
	mkdir -p /lib/modules && ln -sfn "$PWD/linux-std/modules/$rel" "/lib/modules/$rel"
	# What both guest commands below start with ($tag: their output's prefix): find QEMU's NVMe
	# controller, read its CC register through sysfs before any driver touches it (it must be 0:
	# only a reset clears what the previous driver left), then load nvme and wait for the disk.
	cat >"$PWD/nvme-up.sh" <<'EOF'
dev=
for f in /sys/bus/pci/devices/*; do
	[ "$(cat "$f/vendor"):$(cat "$f/device")" = "0x1b36:0x0010" ] && dev=$f
done
[ -n "$dev" ] || { echo "$tag: no NVMe controller in the guest"; exit 10; }
echo 1 >"$dev/enable"
cc=$(/test/nvmeio peek "$dev/resource0" 0x14 1 | sed -n 's/.* first=\(0x[0-9a-f]*\) .*/\1/p')
echo "$tag: cc=$cc"
[ "$cc" = 0x00000000 ] || { echo "$tag: the controller was not reset (CC=$cc)"; exit 11; }
echo 0 >"$dev/enable"
# the CRC algorithms t10-pi asks the crypto API for first: the kernel's own request_module runs
# /sbin/modprobe in the initramfs, which has none
for m in crct10dif_generic crc64_rocksoft_generic nvme; do
	modprobe $m || { echo "$tag: modprobe $m failed"; exit 12; }
done
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/nvme0n1 ] || { echo "$tag: no /dev/nvme0n1"; exit 13; }
EOF
	# The guest's command (busybox sh of L1's root; not under /tmp, which is a tmpfs of the
	# guest's own): $1 = this run, $2 = the previous run (0: none).
	cat >"$PWD/exec-loop.sh" <<'EOF'
run=$1 prev=$2 tag="loop: run $1"
. /test/nvme-up.sh
off=$((64 << 20))
if [ "$prev" != 0 ]; then
	/test/nvmeio check /dev/nvme0n1 $off 64K $((100 + prev)) || exit 14
fi
/test/nvmeio write /dev/nvme0n1 $off 64K $((100 + run)) || exit 15
echo "loop: run $run ok"
EOF
	good=0
	i=1
	t0=$(cut -d' ' -f1 /proc/uptime)
	while [ $i -le "$loops" ]; do
		timeout -s TERM "${VFIOVM_TMO:-120}" ./vfiovm --kernel linux-std/vmlinuz --memory 256M --device "$nvme" \
			--timeout 100 --verdict "/tmp/loop.json" --exec "sh $PWD/exec-loop.sh $i $((i - 1))" \
			>out.exec-loop 2>err.exec-loop </dev/null
		rc=$?
		if [ $rc = 0 ] && grep -q "loop: run $i ok" out.exec-loop; then
			good=$((good + 1))
		else
			echo "VFIOVM measure exec-loop: run $i status $rc"
			sed 's/^/  [exec-loop] /' out.exec-loop
			sed 's/^/  [exec-loop] stderr: /' err.exec-loop
			break
		fi
		i=$((i + 1))
	done
	t1=$(cut -d' ' -f1 /proc/uptime)
	if [ $good = "$loops" ]; then
		ok "exec-loop ($good of $loops runs found the controller reset and working, $(awk "BEGIN{printf \"%.1f\", ($t1-$t0)/$loops}") s each)"
	else
		bad "exec-loop: $good of $loops runs found the controller reset and working"
	fi
fi
# Reboot in place with the NVMe passed through (docs/firmware.md, "Reboot in place"): one vfiovm
# run with --on-reset reboot whose command, on the first boot, writes a pattern to the disk and
# reboots the guest (busybox `reboot -f`: the kernel resets through the FADT's reset register);
# vfiovm restarts the VM in place, the same command runs again in the second boot, finds the
# controller reset by VFIO (CC = 0, though the first boot's driver left it set), finds the
# pattern, does a write and read back, and exits 0 — the status of the whole run.
if [ -n "$nvme" ] && [ -f linux-std/vmlinuz ] && [ -n "$rel" ]; then
	seed=$(($(cut -d. -f1 /proc/uptime) % 100 + 150))
	cat >"$PWD/exec-reboot.sh" <<'EOF'
seed=$1 tag=reboot
. /test/nvme-up.sh
off=$((96 << 20))
if /test/nvmeio check /dev/nvme0n1 $off 64K "$seed" >/dev/null 2>&1; then
	echo "reboot: second boot found the first boot's pattern"
	/test/nvmeio write /dev/nvme0n1 $((off + (1 << 20))) 64K $((seed + 1)) || exit 14
	/test/nvmeio check /dev/nvme0n1 $((off + (1 << 20))) 64K $((seed + 1)) || exit 15
	echo "reboot: second boot ok"
	exit 0
fi
/test/nvmeio write /dev/nvme0n1 $off 64K "$seed" || exit 16
echo "reboot: first boot wrote its pattern; rebooting"
reboot -f
sleep 10
echo "reboot: reboot -f did not reset the guest"
exit 17
EOF
	t0=$(cut -d' ' -f1 /proc/uptime)
	timeout -s TERM "${VFIOVM_TMO:-120}" ./vfiovm --kernel linux-std/vmlinuz --memory 256M --device "$nvme" \
		--on-reset reboot --timeout 100 --exec "sh $PWD/exec-reboot.sh $seed" -v \
		>out.exec-reboot 2>err.exec-reboot </dev/null
	rc=$?
	t1=$(cut -d' ' -f1 /proc/uptime)
	sed 's/^/  [exec-reboot] /' out.exec-reboot
	grep -E 'restarted in place|reset for the guest|stopped:' err.exec-reboot | sed 's/^/  [exec-reboot] stderr: /'
	if [ $rc = 0 ] && grep -q "reboot: first boot wrote its pattern; rebooting" out.exec-reboot &&
		[ "$(grep -c 'reboot: cc=0x00000000' out.exec-reboot)" = 2 ] &&
		grep -q "reboot: second boot ok" out.exec-reboot && grep -q "restarted in place" err.exec-reboot; then
		ok "exec-reboot (the guest rebooted in place, the NVMe reset by VFIO and working after it; $(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s)"
	else
		sed 's/^/  [exec-reboot] stderr: /' err.exec-reboot | tail -30
		bad "exec-reboot: status $rc"
	fi
fi
