//! Peer-to-peer DMA: the BAR pieces that are guest memory are also in the container at IOVA =
//! guest address, follow the guest moving the BAR or turning decoding off, and never outlive
//! the memory behind them.

use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use super::super::mock::{MockBuilder, MockMapper};
use super::super::p2p::PeerDmaMapper;
use super::super::{ContainerError, VfioContainer, VfioDeviceAddress, VfioDeviceFd, VfioPciDevice};
use super::Rig;
use crate::interrupt::fake::FakeInterrupts;
use crate::pci::PciDevice;

/// A container that records DMA mappings: iova -> (size, host).
#[derive(Default)]
struct DmaRecorder {
    live: Mutex<BTreeMap<u64, (u64, u64)>>,
    fail_map: Mutex<bool>,
    fail_unmap: Mutex<bool>,
}

impl DmaRecorder {
    fn live(&self) -> Vec<(u64, u64, u64)> {
        let l = self.live.lock().unwrap();
        l.iter().map(|(&i, &(s, h))| (i, s, h)).collect()
    }
}

impl VfioContainer for DmaRecorder {
    unsafe fn map_dma(&self, iova: u64, size: u64, host: u64) -> Result<(), ContainerError> {
        if *self.fail_map.lock().unwrap() {
            return Err(ContainerError::NoVfio);
        }
        let mut l = self.live.lock().unwrap();
        assert!(
            !l.iter()
                .any(|(&i, &(s, _))| iova < i + s && i < iova + size),
            "overlapping DMA mapping at {iova:#x}"
        );
        l.insert(iova, (size, host));
        Ok(())
    }
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), ContainerError> {
        if *self.fail_unmap.lock().unwrap() {
            return Err(ContainerError::NoVfio);
        }
        let mut l = self.live.lock().unwrap();
        assert_eq!(
            l.remove(&iova).map(|m| m.0),
            Some(size),
            "unmapping {iova:#x}"
        );
        Ok(())
    }
    fn add_group(&self, _: u32) -> Result<(), ContainerError> {
        Err(ContainerError::NoVfio)
    }
    fn open_device(&self, _: &VfioDeviceAddress) -> Result<VfioDeviceFd, ContainerError> {
        Err(ContainerError::NoVfio)
    }
    fn kvm_files(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

const MEM: u16 = 0x2;

/// A device with a 1 MiB 64-bit BAR 2 and a BAR 0 whose first page holds the MSI-X table,
/// over a peer-DMA mapper.
fn rig() -> (Rig, Arc<DmaRecorder>, Arc<PeerDmaMapper>) {
    let mut b = MockBuilder::new(0x1b36, 0x0010);
    b.mem_bar(0, 0x4000, false, false);
    b.msix(4, (0, 0x0), (0, 0x800));
    b.mem_bar(2, 0x10_0000, true, true);
    let mock = b.build();
    let irq = FakeInterrupts::new();
    let mapper = Arc::new(MockMapper::default());
    let dma = Arc::new(DmaRecorder::default());
    let peer = Arc::new(PeerDmaMapper::new(mapper.clone(), dma.clone()));
    let dev = VfioPciDevice::new(
        "0000:06:0d.0",
        Box::new(mock.clone()),
        &irq,
        peer.clone(),
        None,
    )
    .unwrap();
    (
        Rig {
            mock,
            irq,
            mapper,
            dev,
        },
        dma,
        peer,
    )
}

/// The guest programs BAR 2 at `addr` and turns decoding on; the platform maps it.
fn place_bar2(r: &mut Rig, addr: u64) {
    r.w32(0x18, addr as u32 | 0xc);
    r.w32(0x1c, (addr >> 32) as u32);
    r.w16(4, MEM);
    r.dev.bar_moved(2, None, Some(addr));
}

#[test]
fn bar_memory_is_a_dma_target_where_the_guest_puts_it() {
    let (mut r, dma, peer) = rig();
    let (a0, a2) = (0xc000_0000u64, 0x10_0000_0000u64);
    r.w32(0x10, a0 as u32);
    r.w32(0x18, a2 as u32 | 0xc);
    r.w32(0x1c, (a2 >> 32) as u32);
    r.w16(4, MEM);
    r.dev.bar_moved(0, None, Some(a0));
    r.dev.bar_moved(2, None, Some(a2));
    // Exactly what the guest sees as memory, at the same host addresses: not the MSI-X page.
    let slots: Vec<(u64, u64, u64)> = r
        .mapper
        .st()
        .live
        .values()
        .map(|&(g, s, h)| (g, s, h as u64))
        .collect();
    assert_eq!(dma.live(), slots);
    assert_eq!(
        peer.peer_mappings(),
        vec![(a0 + 0x1000, 0x3000), (a2, 0x10_0000)]
    );
    // The guest moves BAR 2: the DMA mapping moves with it.
    let a2b = 0x20_0000_0000u64;
    r.dev.bar_moved(2, Some(a2), Some(a2b));
    assert_eq!(
        peer.peer_mappings(),
        vec![(a0 + 0x1000, 0x3000), (a2b, 0x10_0000)]
    );
    // Decoding off: gone from the guest and from the container.
    r.w16(4, 0);
    assert!(dma.live().is_empty());
    assert!(r.mapper.live().is_empty());
    r.dev.bar_moved(0, Some(a0), None);
    r.dev.bar_moved(2, Some(a2b), None);
    r.w16(4, MEM);
    r.dev.bar_moved(0, None, Some(a0));
    r.dev.bar_moved(2, None, Some(a2b));
    assert_eq!(dma.live().len(), 2);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
    // Removing the device removes its peer mappings.
    drop(r.dev);
    assert!(dma.live().is_empty());
}

#[test]
fn a_host_that_cannot_map_device_memory_still_gives_the_guest_its_bar() {
    let (mut r, dma, peer) = rig();
    *dma.fail_map.lock().unwrap() = true;
    let a2 = 0x10_0000_0000u64;
    place_bar2(&mut r, a2);
    assert_eq!(r.mapper.live(), vec![(a2, 0x10_0000)]);
    assert!(peer.peer_mappings().is_empty());
    r.w16(4, 0);
    assert!(r.mapper.live().is_empty());
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn a_dma_mapping_that_cannot_be_removed_keeps_the_bar_memory_alive() {
    let (mut r, dma, _peer) = rig();
    let a2 = 0x10_0000_0000u64;
    place_bar2(&mut r, a2);
    *dma.fail_unmap.lock().unwrap() = true;
    drop(r.dev);
    // A device could still DMA there: the guest slot stays, so the BAR's mmap is leaked (bars.rs
    // `release`), never unmapped under the IOMMU mapping.
    assert_eq!(dma.live().len(), 1);
    assert_eq!(r.mapper.live(), vec![(a2, 0x10_0000)]);
}
