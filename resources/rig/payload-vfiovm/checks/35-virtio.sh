# Sourced by ../run. The stock Debian L2 kernel with its root file system on a virtio-blk disk
# (linux/root.img, ext4; the kernel's own virtio modules from the initrd, then switch_root), a
# virtio-rng, a virtio-net card on a tap in L1, a virtio console (/dev/hvc0, --console virtio; the
# kernel's own console stays on ttyS0), and QEMU's NVMe controller passed through at the
# same time (its driver binds it and a pattern goes through it). The guest writes /from-l2 with a
# mark unique to this run; after vfiovm exits, the mark is in the image file here in L1. Over the
# network the guest pings L1 and sends 1 MiB of random bytes by TCP to a listener here, which
# compares their md5 with the one the guest printed. Before 40-vfio-nvme.sh, which hands the
# controller back to L1's driver at its end.
nvme=$(dev_of 1b36:0010)
tap=vtap0
if [ ! -f linux/root.img ]; then
	bad "virtio-root: no root image in the payload (resources/rig/linux-payload.sh)"
elif [ -z "$nvme" ]; then
	bad "virtio-root: no NVMe controller bound to vfio-pci"
elif ! modprobe tun || ! tunctl -t $tap >/dev/null || ! ip addr add 10.0.2.1/24 dev $tap || ! ip link set $tap up; then
	bad "virtio-net: cannot make tap $tap in L1 (tun module, tunctl, ip)"
else
	mark="VFIOVM-MARK-$(cut -c1-8 /proc/sys/kernel/random/uuid)$(cut -c1-8 /proc/sys/kernel/random/uuid)"
	rm -f net.recv
	# one connection: the guest's stream, until it closes (or the timeout, if none comes). The
	# stream goes to a program (-e) that reads the socket to its end: nc's own copying would stop
	# at the EOF of its stdin, which is /dev/null here, after the first read.
	printf '#!/bin/sh\nexec cat >%s/net.recv\n' "$PWD" >net-recv.sh && chmod +x net-recv.sh
	timeout -s TERM "${VFIOVM_TMO:-120}" nc -l -p 5000 -e "$PWD/net-recv.sh" </dev/null &
	listener=$!
	VFIOVM_TMO=${VFIOVM_TMO:-120} MARK="L2-LINUX: init reached" expect virtio-root 0 "L2-LINUX: done fails=0" -- \
		--kernel linux/vmlinuz --initramfs linux/initrd.gz --memory 256M --cpus "${LINUX_CPUS:-2}" -v \
		--disk path=linux/root.img,serial=l2root --rng --device "$nvme" \
		--net tap=$tap,mac=52:54:00:12:34:56 --console virtio \
		--cmdline "console=ttyS0 panic=-1 l2.root=vda l2.mark=$mark l2.test=nvme l2.write=4@4M l2.ip=10.0.2.15/24,10.0.2.1 l2.send=1048576 l2.hvc=1"
	# the listener ends with the guest's connection (or at its timeout, when none came)
	wait $listener 2>/dev/null
	grep -q "L2-LINUX: root /dev/vda / ext4 rw" out.virtio-root || bad "virtio-root: / is not the ext4 on /dev/vda"
	grep -q "L2-LINUX: root host-file VFIOVM-HOST-FILE" out.virtio-root || bad "virtio-root: the guest did not read the file the host put in the image"
	grep -q "L2-LINUX: rng virtio_rng.0 4096 bytes" out.virtio-root || bad "virtio-root: /dev/hwrng is not virtio_rng, or gave no data"
	grep -q "L2-LINUX: nvme .*driver=nvme" out.virtio-root || bad "virtio-root: the passed-through NVMe was not bound by the guest's driver"
	grep -q "NVMEIO write seed=4 .*mismatched_words=0" out.virtio-root || bad "virtio-root: pattern 4 did not go through the NVMe intact"
	if grep -q "$mark" linux/root.img; then
		ok "virtio-root-image (the guest's /from-l2 with mark $mark is in the image after power-off)"
	else
		bad "virtio-root-image: the mark $mark the guest wrote is not in linux/root.img"
	fi
	# the virtio console: a line the guest wrote to /dev/hvc0 reaches vfiovm's stdout
	grep -q "L2-LINUX: hello through hvc0" out.virtio-root || bad "virtio-console: the guest's line through /dev/hvc0 is not on vfiovm's stdout"
	# the network: the card the guest's virtio_net driver bound, ping, and the stream's checksum
	grep -q "L2-LINUX: eth0 52:54:00:12:34:56 driver=virtio_net" out.virtio-root || bad "virtio-net: the guest's eth0 is not the virtio_net card with the MAC given"
	grep -q "L2-LINUX: ping 3 packets transmitted, 3 packets received" out.virtio-root || bad "virtio-net: the guest's 3 pings to L1 did not all come back"
	want=$(sed -n 's/.*L2-LINUX: send bytes=1048576 md5=\([0-9a-f]*\).*/\1/p' out.virtio-root)
	got=$(md5sum <net.recv 2>/dev/null | cut -c1-32)
	size=$(wc -c <net.recv 2>/dev/null)
	if [ -n "$want" ] && [ "$want" = "$got" ]; then
		ok "virtio-net-tcp (1 MiB from the guest over TCP through the tap, md5 $got)"
	else
		bad "virtio-net-tcp: L1 received ${size:-0} bytes with md5 ${got:-none}; the guest sent 1048576 with md5 ${want:-unknown}"
	fi
	ip link del $tap 2>/dev/null || tunctl -d $tap >/dev/null
fi
