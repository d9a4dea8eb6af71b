# Sourced by ../run. A device whose IOMMU group has a member on a host driver (the rig's
# RIG_SHARED_GROUP=1: a second edu behind a bridge, sharing a group with a virtio-rng bound to
# virtio-pci) must be refused before anything is opened: one line naming the offender, status 2,
# and the device left as it was (still on vfio-pci, assignable once the group is fixed).
for d in /sys/bus/pci/devices/*; do
	[ "$(basename "$(readlink "$d/driver" 2>/dev/null)")" = vfio-pci ] || continue
	g=$(basename "$(readlink "$d/iommu_group")")
	offender=
	for m in /sys/kernel/iommu_groups/"$g"/devices/*; do
		drv=$(basename "$(readlink "$m/driver" 2>/dev/null)")
		case "$drv" in '' | vfio-pci | pci-stub | pcieport) ;; *) offender=$(basename "$m") ;; esac
	done
	[ -n "$offender" ] || continue
	bdf=$(basename "$d")
	expect_error vfio-group-not-viable "not viable: $offender" --kernel guests/hello --memory 64M --device "$bdf"
	./vfiovm doctor "$bdf" >doctor-group.out 2>&1
	rc=$?
	sed "s/^/  [doctor-group] /" doctor-group.out
	[ $rc = 2 ] && grep -q "FAIL: .*not viable" doctor-group.out && ok "doctor reports the non-viable group" ||
		bad "doctor on a non-viable group: status $rc"
	[ "$(basename "$(readlink "$d/driver")")" = vfio-pci ] && ok "$bdf still bound to vfio-pci" ||
		bad "$bdf lost its vfio-pci binding"
	# Fix the group (unbind the offender) and the same device works.
	echo "$offender" >"/sys/bus/pci/devices/$offender/driver/unbind"
	expect vfio-group-fixed 1 "edu_probe: failures=0" -- --kernel guests/edu_probe --memory 64M --device "$bdf" \
		--cmdline "action=exit:0"
	group_checked=1
done
if grep -q "vfiovm.group_test=1" /proc/cmdline && [ -z "${group_checked:-}" ]; then
	bad "vfio-group: no device in a non-viable group was found"
fi
