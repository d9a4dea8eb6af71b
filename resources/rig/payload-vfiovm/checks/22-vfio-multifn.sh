# Sourced by ../run. A multi-function device (RIG_MULTIFN=1: edu at 00:11.0 with multifunction=on,
# pci-testdev at 00:11.1, one IOMMU group, both bound to vfio-pci) passed through function by
# function, given in reverse order: the guest sees one multi-function device, function 0 with
# header type bit 7 and function 1 at .1 of the same slot, through both config mechanisms.
f0=0000:00:11.0 f1=0000:00:11.1
if [ ! -e /sys/bus/pci/devices/$f1 ]; then
	echo "VFIOVM skip vfio-multifn: no $f1 (the rig was booted without RIG_MULTIFN=1)"
else
	echo "VFIOVM measure multifn groups: $f0=$(basename "$(readlink /sys/bus/pci/devices/$f0/iommu_group)") $f1=$(basename "$(readlink /sys/bus/pci/devices/$f1/iommu_group)")"
	expect vfio-multifn 1 "pci_probe: failures=0" -- --kernel guests/pci_probe --memory 64M \
		--device "$f1" --device "$f0" -v --cmdline "test=enum action=exit:0"
	for mech in cf8 ecam; do
		grep -Eq "enum: 00:([0-9a-f]{2})\.0 mech=$mech vendor=0x1234 device=0x11e8 class=0x[0-9a-f]+ header=0x80" out.vfio-multifn ||
			bad "vfio-multifn: no edu with header type bit 7 at function 0 ($mech)"
		s0=$(sed -n "s/.*enum: 00:\([0-9a-f]*\)\.0 mech=$mech vendor=0x1234 device=0x11e8.*/\1/p" out.vfio-multifn)
		grep -q "enum: 00:$s0\.1 mech=$mech vendor=0x1b36 device=0x0005" out.vfio-multifn ||
			bad "vfio-multifn: pci-testdev is not function 1 of edu's slot 00:$s0 ($mech)"
	done
	grep -q "$f1 (group .*) is the guest's 0000:00:..\.1" err.vfio-multifn ||
		bad "vfio-multifn: $f1 not placed as function 1"
	# Function 0 alone: the group goes to the VM whole, and vfiovm names the function left out.
	expect vfio-multifn-alone 1 "edu_probe: failures=0" -- --kernel guests/edu_probe --memory 64M \
		--device "$f0" --cmdline "action=exit:0"
	grep -q "with $f1 that is not passed through.*add --device $f1" err.vfio-multifn-alone ||
		bad "vfio-multifn-alone: no warning naming $f1"
fi
