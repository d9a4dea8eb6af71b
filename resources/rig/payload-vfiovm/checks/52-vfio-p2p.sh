# Sourced by ../run. Peer-to-peer DMA (docs/passthrough.md, "Peer-to-peer DMA"): the L2 Linux gets
# QEMU's edu (run.sh widens its dma_mask to 64 bits) and a 2 MiB ivshmem (run.sh RIG_P2P, 00:13.0)
# with p2p=on; edu copies a 4 KiB pattern from L2 RAM into its buffer, then to the ivshmem BAR's
# guest address + 1 MiB. That lands only because vfiovm DMA-mapped the ivshmem BAR into the
# container at its guest address: read back in L2 through resource2, and scripts/rig-test finds it
# in the host's backing file (seed 14 at 1 MiB). The control: without p2p=on (the default) the same
# copy (seed 15, 1 MiB + 4 KiB) must not land.
p2p=
_j=0
while [ $_j -lt "${RIG_NDEV:-0}" ]; do
	eval "_id=\${RIG_DEV${_j}_ID-} _b=\${RIG_DEV${_j}_BDF-}"
	case "$_id:$_b" in 1af4:1110:0000:00:13.0) p2p=$_b ;; esac
	_j=$((_j + 1))
done
edu=$(dev_of 1234:11e8)
if [ -z "$p2p" ] || [ -z "$edu" ]; then
	bad "p2p: want an edu and the ivshmem at 00:13.0 bound to vfio-pci (scripts/rig-test sets RIG_P2P), have '$edu' and '$p2p'"
else
	args="--kernel linux/vmlinuz --initramfs linux/initrd.gz --memory 256M --cpus 1 -v --device $edu"
	VFIOVM_TMO=${VFIOVM_TMO:-90} expect p2p 0 "L2-LINUX: done fails=0" -- $args --device "$p2p,p2p=on" \
		--cmdline "console=ttyS0 panic=-1 l2.test=p2p l2.p2p_off=1048576 l2.p2p_seed=14"
	grep -q "NVMEIO edup2p ident=0x10000ed .* dma_to_edu=ok dma_to_bar=ok mismatched_words=0 " out.p2p ||
		bad "p2p: edu's copy into the ivshmem BAR did not land"
	grep -q "peer DMA: 0x200000 bytes of device memory at IOVA" err.p2p || bad "p2p: vfiovm did not DMA-map the ivshmem BAR"
	sed -n 's/.*\(NVMEIO edup2p .*\)/VFIOVM measure p2p \1/p' out.p2p
	sed -n 's/.*\(peer DMA: .*\)/VFIOVM measure p2p vfiovm: \1/p' err.p2p
	VFIOVM_TMO=${VFIOVM_TMO:-90} expect p2p-off 0 "L2-LINUX: p2p missed, as expected" -- $args --device "$p2p" \
		--cmdline "console=ttyS0 panic=-1 l2.test=p2p l2.p2p_off=1052672 l2.p2p_seed=15 l2.p2p_expect=miss"
	! grep -q "peer DMA: " err.p2p-off || bad "p2p-off: vfiovm DMA-mapped a BAR without p2p=on"
fi
