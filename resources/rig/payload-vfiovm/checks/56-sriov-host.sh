# Sourced by ../run. SR-IOV as on a host that keeps its NIC (docs/passthrough.md, "SR-IOV"): QEMU
# 10's igb (82576) PF on L1's own igb driver, one VF made through sriov_numvfs (its MAC one the
# PF's driver picks at random: busybox's ip cannot set it), bound to vfio-pci and passed by vfiovm
# --exec to the stock Debian kernel, whose own igbvf driver brings it up. The guest pings L1's address on the PF, then reads
# 1 MiB of random bytes from a listener there by TCP (through the 82576's internal switch between
# the VF's and the PF's pools) and prints their md5, which must be the file's. Only in
# scripts/rig-test's third boot (vfiovm.sriov_host=1): a standard-flavour L1 (the cloud flavour has
# no igb) with the PF left unbound.
pfdev=$(grep -l 0x10c9 /sys/bus/pci/devices/*/device 2>/dev/null | head -1)
rel=$(ls linux-std/modules 2>/dev/null | head -1)
if ! grep -q "vfiovm.sriov_host=1" /proc/cmdline; then
	echo "VFIOVM skip sriov-host: needs the standard-flavour L1 with the igb PF unbound (scripts/rig-test's third boot)"
elif [ -z "$pfdev" ] || [ -z "$rel" ]; then
	bad "sriov-host: no igb (8086:10c9) in L1, or no linux-std kernel in the payload"
else
	d=$(dirname "$pfdev")
	pf=$(basename "$d")
	modprobe igb || bad "sriov-host: modprobe igb failed in L1"
	i=0
	while [ -z "$(ls "$d/net" 2>/dev/null)" ] && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	pfif=$(ls "$d/net" 2>/dev/null | head -1)
	echo "VFIOVM measure sriov-host: PF $pf driver=$(basename "$(readlink "$d/driver")") netdev=$pfif"
	if [ -z "$pfif" ] || ! ip addr add 10.0.3.1/24 dev "$pfif" || ! ip link set "$pfif" up; then
		bad "sriov-host: the PF has no network interface on L1's igb driver"
	elif ! echo 1 >"$d/sriov_numvfs"; then
		bad "sriov-host: echo 1 > sriov_numvfs failed for the PF on igb"
	else
		vf=$(basename "$(readlink "$d/virtfn0")")
		vd=/sys/bus/pci/devices/$vf
		[ ! -e "$vd/driver" ] || echo "$vf" >"$vd/driver/unbind"
		echo vfio-pci >"$vd/driver_override" && echo "$vf" >/sys/bus/pci/drivers_probe
		echo "VFIOVM measure sriov-host: VF $vf $(cat "$vd/vendor"):$(cat "$vd/device") driver=$(basename "$(readlink "$vd/driver")") group=$(basename "$(readlink "$vd/iommu_group")")"
		head -c 1048576 /dev/urandom >/test/sriov.blob
		want=$(md5sum </test/sriov.blob | cut -c1-32)
		printf '#!/bin/sh\nexec cat /test/sriov.blob\n' >/test/sriov-send.sh && chmod +x /test/sriov-send.sh
		timeout -s TERM 200 nc -l -p 5000 -e /test/sriov-send.sh </dev/null &
		listener=$!
		ko=$PWD/linux-std/modules/$rel/kernel/drivers/net/ethernet/intel/igbvf/igbvf.ko
		timeout -s TERM 200 ./vfiovm --kernel linux-std/vmlinuz --modules "linux-std/modules/$rel" --memory 256M \
			--device "$vf" --timeout 180 --exec "insmod $ko || exit 20
				i=0; while [ ! -e /sys/class/net/eth0 ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i + 1)); done
				echo \"vf: eth0 \$(cat /sys/class/net/eth0/address) driver=\$(basename \$(readlink /sys/class/net/eth0/device/driver))\"
				ip link set eth0 up && ip addr add 10.0.3.2/24 dev eth0 || exit 21
				i=0; until ping -c 1 -W 1 10.0.3.1 >/dev/null; do i=\$((i + 1)); [ \$i -lt 30 ] || exit 22; done
				ping -c 3 -W 2 10.0.3.1 | grep packets | sed 's/^/vf: ping /'
				echo \"vf: received md5=\$(nc 10.0.3.1 5000 | md5sum | cut -c1-32)\"" \
			>out.sriov-host 2>err.sriov-host </dev/null
		rc=$?
		kill $listener 2>/dev/null
		sed 's/^/  [sriov-host] /' out.sriov-host
		sed 's/^/  [sriov-host] stderr: /' err.sriov-host
		if [ $rc != 0 ]; then
			bad "sriov-host: the guest's command ended with status $rc"
		else
			grep -q "vf: eth0 [0-9a-f:]* driver=igbvf" out.sriov-host && ok "sriov-host-igbvf (the guest's igbvf drives the VF)" ||
				bad "sriov-host: eth0 in the guest is not the VF on igbvf"
			grep -q "vf: ping 3 packets transmitted, 3 packets received" out.sriov-host && ok "sriov-host-ping (3 of 3 to L1 through the PF)" ||
				bad "sriov-host: the guest's pings to L1 through the PF did not all come back"
			grep -q "vf: received md5=$want" out.sriov-host && ok "sriov-host-tcp (1 MiB from L1 over the VF, md5 $want)" ||
				bad "sriov-host: the guest did not receive the 1 MiB with md5 $want"
		fi
		echo 0 >"$d/sriov_numvfs"
	fi
fi
