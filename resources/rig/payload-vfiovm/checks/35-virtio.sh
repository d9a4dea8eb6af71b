# Sourced by ../run. The stock Debian L2 kernel with its root file system on a virtio-blk disk
# (linux/root.img, ext4; the kernel's own virtio modules from the initrd, then switch_root), a
# virtio-rng, and QEMU's NVMe controller passed through at the same time (its driver binds it and
# a pattern goes through it). The guest writes /from-l2 with a mark unique to this run; after
# vfiovm exits, the mark is in the image file here in L1. Before 40-vfio-nvme.sh, which hands the
# controller back to L1's driver at its end.
nvme=$(dev_of 1b36:0010)
if [ ! -f linux/root.img ]; then
	bad "virtio-root: no root image in the payload (resources/rig/linux-payload.sh)"
elif [ -z "$nvme" ]; then
	bad "virtio-root: no NVMe controller bound to vfio-pci"
else
	mark="VFIOVM-MARK-$(cut -c1-8 /proc/sys/kernel/random/uuid)$(cut -c1-8 /proc/sys/kernel/random/uuid)"
	VFIOVM_TMO=${VFIOVM_TMO:-90} MARK="L2-LINUX: init reached" expect virtio-root 0 "L2-LINUX: done fails=0" -- \
		--kernel linux/vmlinuz --initramfs linux/initrd.gz --memory 256M --cpus "${LINUX_CPUS:-2}" -v \
		--disk path=linux/root.img,serial=l2root --rng --device "$nvme" \
		--cmdline "console=ttyS0 panic=-1 l2.root=vda l2.mark=$mark l2.test=nvme l2.write=4@4M"
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
fi
