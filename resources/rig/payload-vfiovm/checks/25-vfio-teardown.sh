# Sourced by ../run. Teardown under faults with real devices: whatever ends a VM holding passed-
# through devices, the process is gone at once and every device works in the next VM (its group
# and container were released, its DMA mappings unpinned, and it was reset where it can be).
edu=$(dev_of 1234:11e8)
nv=$(dev_of 1b36:0010)
works() { # <check-name>: edu still works in a fresh VM
	expect "$1" 1 "edu_probe: failures=0" -- --kernel guests/edu_probe --memory 64M --device "$edu" \
		--cmdline "action=exit:0"
}
if [ -n "$edu" ]; then
	# SIGINT while the guest runs with the device (SIGTERM is vfio-sigterm-release)
	./vfiovm --kernel guests/pvh_probe --memory 64M --device "$edu" --cmdline action=hang </dev/null >/dev/null 2>err.sigint &
	p=$!
	sleep 1
	kill -INT $p
	wait $p
	s=$?
	[ $s = 130 ] && ok "vfio-sigint (status $s)" || bad "vfio-sigint: status $s, want 130"
	works vfio-edu-after-sigint
	# a guest crash (triple fault) with the device assigned: status 4, device released
	expect vfio-guest-crash 4 "" -- --kernel guests/pvh_probe --memory 64M --device "$edu" --cmdline "action=fault"
	works vfio-edu-after-crash
	# --user: privileges dropped after the devices are open; MSI, DMA, BAR access and teardown
	# (reset, DMA unmap, release) on the already-open fds still work
	expect vfio-edu-user 1 "edu_probe: failures=0" -- --kernel guests/edu_probe --memory 64M --device "$edu" \
		--user 65534:65534 --cmdline "action=exit:0"
	works vfio-edu-after-user
	# setup failing halfway: the first device (nvme, when bound) is opened, reset and on the guest's
	# bus, the groups added to KVM and all guest RAM DMA-mapped, then the kernel refuses to open edu
	# with a VF token (edu is no SR-IOV device); nvme is removed before KVM's VFIO device and the
	# container go (a missing rom= file no longer gets this far: ROM files are read first)
	set -- --device "$edu,vf_token=0b25e4c8-6c9e-4e0c-8e0f-0f8a0b6ac6f1"
	[ -z "$nv" ] || set -- --device "$nv" "$@"
	expect_error vfio-setup-halfway "remove vf_token=" --kernel guests/hello --memory 64M "$@"
	works vfio-edu-after-halfway
	if [ -n "$nv" ] && [ -f linux/vmlinuz ]; then
		# the nvme from the failed setup binds in a Linux guest again (checked by 40-vfio-nvme.sh too)
		./vfiovm --kernel guests/hello --memory 64M --device "$nv" </dev/null >out.nv-after 2>err.nv-after
		s=$?
		[ $s = 0 ] && ok "vfio-nvme-after-halfway" || bad "vfio-nvme-after-halfway: status $s ($(head -1 err.nv-after))"
	fi
fi
