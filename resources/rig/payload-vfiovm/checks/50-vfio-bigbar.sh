# Sourced by ../run. A GPU-sized BAR: QEMU's ivshmem-plain with a 64 GiB BAR 2 backed by a sparse
# file on the host (run.sh RIG_BIGBAR), bound to vfio-pci in L1 and passed through to the L2 Linux,
# which writes a 1 MiB pattern at the BAR's start, middle and last MiB through sysfs resource2 and
# reads each back (nvmeio mmapwrite). scripts/rig-test then finds the three patterns in the host
# file, at those offsets. The time vfiovm takes to set the BAR up is in its -v log.
bigbar=$(dev_of 1af4:1110)
if [ -z "$bigbar" ]; then
	bad "bigbar: no ivshmem (1af4:1110) bound to vfio-pci (scripts/rig-test sets RIG_BIGBAR)"
else
	echo "VFIOVM measure bigbar: L1 $bigbar BAR2 $(sed -n 3p "/sys/bus/pci/devices/$bigbar/resource")"
	VFIOVM_TMO=${VFIOVM_TMO:-90} MARK="L2-LINUX: init reached" expect bigbar 0 "L2-LINUX: done fails=0" -- \
		--kernel linux/vmlinuz --initramfs linux/initrd.gz --memory 256M --cpus 1 -v --device "$bigbar" \
		--cmdline "console=ttyS0 panic=-1 l2.test=bar"
	grep -q "L2-LINUX: bar .* size=68719476736 (64 GiB)" out.bigbar || bad "bigbar: the guest does not see a 64 GiB BAR 2"
	n=$(grep -c "NVMEIO mmapwrite seed=1[123] .*mismatched_words=0 " out.bigbar)
	[ "$n" = 3 ] || bad "bigbar: $n of 3 patterns written and read back through resource2"
	sed -n 's/.*\(NVMEIO mmapwrite .*\)/VFIOVM measure bigbar \1/p' out.bigbar
	sed -n 's/.*info: \(.*BAR 2.*\)/VFIOVM measure bigbar vfiovm: \1/p' err.bigbar
fi
