# Sourced by ../run. QEMU's NVMe controller (1b36:0010, bound to vfio-pci by the rig's init) passed
# to a stock Linux L2 guest, whose own nvme driver binds it (MSI-X, admin and I/O queues in guest RAM
# through the IOMMU) and moves data with O_DIRECT (resources/rig/l2-linux/init, nvmeio.c):
#   nvme-1      writes pattern 1 at 1 MiB, reads it back; 64 MiB sequential throughput
#   nvme-2      second vfiovm on the same controller, guest RAM on hugetlbfs 2 MiB pages reserved in
#               L1: pattern 1 is still there; writes pattern 2
#   nvme-3      as nvme-2 plus 20000 4 KiB reads: its exits minus nvme-2's are the I/Os' exits
#   nvme-panic  writes pattern 3, then the kernel panics (sysrq c, panic=-1): vfiovm ends with the
#               kernel-panic status 6 (never a pass: the console's panic line, then the guest's
#               reset; or pvpanic when the kernel has the driver built in) and the device is
#               released
#   nvme-after-panic  the controller, assigned again, reads pattern 3 back
# The host checks patterns 1-3 in QEMU's backing file after the rig (scripts/rig-test). Last, L1's
# own nvme driver takes the controller back for the same 64 MiB throughput run, for the ratio.
nvme=$(dev_of 1b36:0010)
nvme_run() { # <check-name> <want-status> <needle> <l2 arguments...>
	n=$1 w=$2 nd=$3
	shift 3
	VFIOVM_TMO=${VFIOVM_TMO:-90} MARK="L2-LINUX: init reached" expect "$n" "$w" "$nd" -- --kernel linux/vmlinuz --initramfs linux/initrd.gz \
		--memory "${NVME_MEM:-256M}" --cpus "${LINUX_CPUS:-1}" --device "$nvme" -v \
		--cmdline "console=ttyS0 panic=-1 l2.test=nvme $*"
	grep -q "L2-LINUX: nvme .*driver=nvme" "out.$n" || bad "$n: the guest's nvme driver did not bind the controller"
	grep -q "L2-LINUX: FAIL" "out.$n" && bad "$n: $(grep -m1 'L2-LINUX: FAIL' "out.$n")"
	grep -q "L2-LINUX: irq .*nvme0q1 " "out.$n" || bad "$n: no MSI-X vector for the first I/O queue in /proc/interrupts"
	sed -n "s/^L2-LINUX: irq /VFIOVM measure $n irq /p" "out.$n"
}
exits_of() { # <check-name> -> "pio mmio console" exits to userspace from vfiovm's -v summary
	sed -n 's/.*exits to userspace: \([0-9]*\) port I\/O, \([0-9]*\) MMIO, [0-9]* other; \([0-9]*\) of the port I\/O to the console.*/\1 \2 \3/p' "err.$1"
}
if [ -z "$nvme" ]; then
	bad "vfio-nvme: no NVMe controller was bound to vfio-pci (rig-test sets RIG_NVME_IMG)"
elif [ ! -f linux/vmlinuz ]; then
	bad "vfio-nvme: no kernel in the payload"
else
	nvme_run nvme-1 0 "L2-LINUX: done fails=0" l2.write=1@1M l2.bench=64M@64M l2.reads=0
	grep -q "NVMEIO write seed=1 .*mismatched_words=0" out.nvme-1 || bad "nvme-1: pattern 1 not read back intact"
	# 160 x 2 MiB: the 256 MiB guest and room to spare; L1 gets them back after the run.
	echo 160 >/proc/sys/vm/nr_hugepages
	NVME_MEM=256M,hugepages=2M
	nvme_run nvme-2 0 "L2-LINUX: done fails=0" l2.check=1@1M l2.write=2@2M l2.reads=0
	NVME_MEM=
	echo 0 >/proc/sys/vm/nr_hugepages
	grep -q "NVMEIO check seed=1 .*mismatched_words=0" out.nvme-2 || bad "nvme-2: pattern 1 (from nvme-1) not found"
	grep -q "guest RAM: 256 MiB (hugetlbfs 2 MiB pages)" err.nvme-2 || bad "nvme-2: guest RAM not on 2 MiB huge pages"
	nvme_run nvme-3 0 "L2-LINUX: done fails=0" l2.check=1@1M l2.write=2@2M l2.reads=20000
	x2=$(exits_of nvme-2)
	x3=$(exits_of nvme-3)
	# the console's exits follow what the guest prints, which varies from boot to boot (a line
	# about APIC calibration, say): they are left out
	d=$(echo "$x2 $x3" | awk 'NF == 6 { print ($4 - $6 + $5) - ($1 - $3 + $2) }')
	echo "VFIOVM measure nvme exits to userspace (pio mmio console): 0 reads: $x2; 20000 reads: $x3; difference without the console: ${d:-?}"
	# Target: none on the I/O path (doorbells are mmapped, completions are irqfd MSI-X). A Linux boot
	# is not exactly repeatable (its PM-timer reads during calibration, say), so a few exits of
	# noise are allowed; 1 per 200 I/Os is a failure.
	if [ -n "$d" ] && [ "$d" -lt 100 ]; then
		ok "nvme-exits: $d exits to userspace for 20000 I/Os"
	else
		bad "nvme-exits: ${d:-?} exits to userspace for 20000 I/Os"
	fi
	nvme_run nvme-panic 6 "sysrq triggered crash" l2.write=3@3M l2.panic=1
	grep -q "L2-LINUX: done fails=0" out.nvme-panic || bad "nvme-panic: the guest did not finish before the crash"
	grep -Eq "stopped: (KernelPanic .*Guest\(Reset\)|Guest\(Panicked\))" err.nvme-panic ||
		bad "nvme-panic: vfiovm did not log the panic (the panic line then the reset, or pvpanic)"
	nvme_run nvme-after-panic 0 "L2-LINUX: done fails=0" l2.check=3@3M l2.reads=0
	grep -q "NVMEIO check seed=3 .*mismatched_words=0" out.nvme-after-panic ||
		bad "nvme-after-panic: pattern 3 (written before the crash) not found"
	sed -n 's/^NVMEIO bench/VFIOVM measure nvme L2 bench/p' out.nvme-1

	# L1's own driver on the same controller: the baseline for the throughput ratio.
	d=/sys/bus/pci/devices/$nvme
	echo "$nvme" >"$d/driver/unbind" && echo >"$d/driver_override" && echo "$nvme" >/sys/bus/pci/drivers_probe
	i=0
	blk=
	while [ -z "$blk" ] && [ $i -lt 100 ]; do
		# the namespace's block device: under the controller, or (a shared namespace, as QEMU 10's
		# nvme makes it, with native multipath) under the subsystem; L1 has no other NVMe
		blk=$(ls /sys/block 2>/dev/null | grep -m1 '^nvme[0-9]*n1$')
		[ -n "$blk" ] || sleep 0.1
		i=$((i + 1))
	done
	[ -b "/dev/$blk" ] || { [ -n "$blk" ] && mknod "/dev/$blk" b $(tr ':' ' ' <"/sys/block/$blk/dev"); }
	if [ -n "$blk" ] && ./nvmeio bench "/dev/$blk" 64M 64M >bench.l1; then
		sed 's/^NVMEIO bench/VFIOVM measure nvme L1 bench/' bench.l1
		awk '/NVMEIO bench/ { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[FILENAME, kv[1]] = kv[2] } }
			END { w2 = v["out.nvme-1", "write_MiBps"]; r2 = v["out.nvme-1", "read_MiBps"];
				w1 = v["bench.l1", "write_MiBps"]; r1 = v["bench.l1", "read_MiBps"];
				if (w1 > 0 && r1 > 0) printf "VFIOVM measure nvme L2/L1 throughput: write %.2f, read %.2f\n", w2 / w1, r2 / r1 }' \
			out.nvme-1 bench.l1
		ok "nvme-l1-baseline"
	else
		bad "nvme-l1-baseline: L1's nvme driver did not give a block device or the run failed"
	fi
fi
