# Sourced by ../run. Peer-to-peer DMA (docs/passthrough.md, "Peer-to-peer DMA"): the L2 Linux gets
# QEMU's edu (run.sh widens its dma_mask to 64 bits) and the 64 GiB ivshmem of 50-vfio-bigbar;
# edu copies a 4 KiB pattern from L2 RAM into its buffer, then to the ivshmem BAR's guest address +
# 1 GiB. That lands only where vfiovm DMA-mapped the ivshmem BAR into the container at its guest
# address (p2p=on, the default): read back in L2 through resource2, and scripts/rig-test finds it in
# the host's backing file (seed 14 at 1 GiB). The control: with p2p=off on the ivshmem the same
# copy (seed 15, 1 GiB + 4 KiB) must not land.
bigbar=$(dev_of 1af4:1110)
edu=$(dev_of 1234:11e8)
if [ -z "$bigbar" ] || [ -z "$edu" ]; then
	bad "p2p: want an edu and an ivshmem bound to vfio-pci (scripts/rig-test sets RIG_BIGBAR), have '$edu' and '$bigbar'"
else
	VFIOVM_TMO=${VFIOVM_TMO:-90} expect p2p 0 "L2-LINUX: done fails=0" -- \
		--kernel linux/vmlinuz --initramfs linux/initrd.gz --memory 256M --cpus 1 -v \
		--device "$edu" --device "$bigbar" \
		--cmdline "console=ttyS0 panic=-1 l2.test=p2p l2.p2p_off=1073741824 l2.p2p_seed=14"
	grep -q "NVMEIO edup2p ident=0x10000ed .* dma_to_edu=ok dma_to_bar=ok mismatched_words=0 " out.p2p ||
		bad "p2p: edu's copy into the ivshmem BAR did not land"
	sed -n 's/.*\(NVMEIO edup2p .*\)/VFIOVM measure p2p \1/p' out.p2p
	sed -n 's/.*\(peer DMA: .*\)/VFIOVM measure p2p vfiovm: \1/p' err.p2p
	VFIOVM_TMO=${VFIOVM_TMO:-90} expect p2p-off 0 "L2-LINUX: p2p missed, as expected" -- \
		--kernel linux/vmlinuz --initramfs linux/initrd.gz --memory 256M --cpus 1 -v \
		--device "$edu" --device "$bigbar,p2p=off" \
		--cmdline "console=ttyS0 panic=-1 l2.test=p2p l2.p2p_off=1073745920 l2.p2p_seed=15 l2.p2p_expect=miss"
	! grep -q "peer DMA: .* at IOVA" err.p2p-off || bad "p2p-off: vfiovm DMA-mapped a BAR with p2p=off"
fi
