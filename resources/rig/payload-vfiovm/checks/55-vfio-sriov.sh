# Sourced by ../run. SR-IOV with the PF owned by a userspace driver (docs/passthrough.md, "SR-IOV"):
# QEMU 10's igb (82576, 8086:10c9; run.sh RIG_IGB=1) behind a root port, bound to vfio-pci in L1
# with vfio-pci's enable_sriov on. One VF is made through sriov_numvfs (vfio-pci binds it, by its
# driver_override). A first vfiovm opens the PF with vf_token=UUID, which sets the VF token, and
# keeps it (its guest halts). Then, for the VF: `vfiovm doctor` says a token is needed; a second
# vfiovm without a token and one with the wrong token are refused with one line each, status 2,
# before any guest code runs; with the PF owner's token the guest finds the VF (8086:10ca) on its
# bus 0. The PF's vfiovm ends on SIGTERM (143) and the VFs are removed.
pf=$(dev_of 8086:10c9)
if [ -z "$pf" ] && ! grep -qx 0x10c9 /sys/bus/pci/devices/*/device; then
	echo "VFIOVM skip sriov: no igb in L1 (RIG_IGB=0, or a QEMU before 8.0: scripts/rig-test adds it on QEMU 10)"
elif [ -z "$pf" ]; then
	bad "sriov: the igb PF (8086:10c9) is not bound to vfio-pci"
else
	d=/sys/bus/pci/devices/$pf
	echo Y >/sys/module/vfio_pci/parameters/enable_sriov 2>/dev/null ||
		bad "sriov: cannot turn on vfio-pci's enable_sriov"
	echo "VFIOVM measure sriov: PF $pf totalvfs=$(cat $d/sriov_totalvfs) offset=$(cat $d/sriov_offset) stride=$(cat $d/sriov_stride) group=$(basename "$(readlink $d/iommu_group)")"
	if ! echo 1 >$d/sriov_numvfs; then
		bad "sriov: echo 1 > sriov_numvfs failed for the vfio-pci PF $pf"
	else
		vf=$(basename "$(readlink $d/virtfn0)")
		i=0
		while [ "$(basename "$(readlink /sys/bus/pci/devices/$vf/driver 2>/dev/null)")" != vfio-pci ] && [ $i -lt 50 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		echo "VFIOVM measure sriov: VF $vf $(cat /sys/bus/pci/devices/$vf/vendor):$(cat /sys/bus/pci/devices/$vf/device) driver=$(basename "$(readlink /sys/bus/pci/devices/$vf/driver)") group=$(basename "$(readlink /sys/bus/pci/devices/$vf/iommu_group)")"
		token=$(cat /proc/sys/kernel/random/uuid)
		wrong=$(cat /proc/sys/kernel/random/uuid)
		# the PF's user: sets the VF token by opening the PF with it, and keeps the PF open
		./vfiovm --kernel guests/pvh_probe --memory 64M --device "$pf,vf_token=$token" -v \
			--cmdline "action=hang" >out.sriov-pf 2>err.sriov-pf </dev/null &
		pfvm=$!
		i=0
		while ! grep -q "action: hang" out.sriov-pf && kill -0 $pfvm 2>/dev/null && [ $i -lt 300 ]; do
			sleep 0.1
			i=$((i + 1))
		done
		if ! grep -q "action: hang" out.sriov-pf; then
			sed "s/^/  [sriov-pf] stderr: /" err.sriov-pf
			bad "sriov-pf: the VM owning the PF with vf_token= did not start"
		else
			ok "sriov-pf (the PF $pf passed through with vf_token=, its guest running)"
			./vfiovm doctor "$vf" >doctor.sriov 2>&1
			sed "s/^/  [doctor-sriov] /" doctor.sriov
			grep -q "vf_token" doctor.sriov && ok "sriov-doctor (names the VF token)" ||
				bad "sriov-doctor: vfiovm doctor $vf does not say a VF token is needed"
			expect_error sriov-no-token "$vf is an SR-IOV VF of $pf, which is bound to vfio-pci" \
				--kernel guests/pci_probe --memory 64M --device "$vf" --cmdline "test=enum action=exit:0"
			expect_error sriov-wrong-token "refused the VF token" \
				--kernel guests/pci_probe --memory 64M --device "$vf,vf_token=$wrong" --cmdline "test=enum action=exit:0"
			for n in sriov-no-token sriov-wrong-token; do
				grep -q "enum:" "out.$n" && bad "$n: the guest ran"
			done
			expect sriov-vf 1 "pci_probe: failures=0" -- --kernel guests/pci_probe --memory 64M \
				--device "$vf,vf_token=$token" -v --cmdline "test=enum action=exit:0"
			grep -Eq "enum: 00:[0-9a-f]{2}\.0 mech=ecam vendor=0x8086 device=0x10ca" out.sriov-vf ||
				bad "sriov-vf: the guest does not see the VF 8086:10ca on its bus 0"
		fi
		kill -TERM $pfvm 2>/dev/null
		wait $pfvm
		rc=$?
		[ $rc = 143 ] && ok "sriov-pf-end (status 143 on SIGTERM)" || bad "sriov-pf-end: status $rc, want 143"
		echo 0 >$d/sriov_numvfs || bad "sriov: removing the VFs failed"
	fi
fi
