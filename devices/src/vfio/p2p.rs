//! Peer-to-peer DMA: a passed-through device's BARs as DMA targets for the other devices in
//! the container.
//!
//! Guest RAM is in the container at IOVA = guest physical address, so a device can DMA to any
//! RAM address the guest gives it. A guest driver may also give a device the guest physical
//! address of *another* device's BAR (an NVMe controller memory buffer, a GPU's memory, a NIC
//! writing into an accelerator): for that DMA to land, the IOMMU needs those addresses too.
//! [`PeerDmaMapper`] wraps the VMM's [`GuestMemoryMapper`]: whenever a mmapped piece of a BAR
//! becomes guest memory at `gpa`, it is also DMA-mapped into the container at IOVA `gpa`,
//! and unmapped before it leaves the guest, so the mapping follows the guest moving the BAR
//! (or turning its decoding off).
//!
//! Only the mmapped pieces can be mapped: the trapped pages (the MSI-X table and PBA, areas
//! the kernel does not let us mmap) are not reachable by peers, as on QEMU. A host that cannot
//! map device memory into its IOMMU (the kernel refuses `VFIO_IOMMU_MAP_DMA` of a `VM_PFNMAP`
//! area on some platforms) gets one warning; the guest's CPU access to the BAR is unaffected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::bars::{GuestMemoryMapper, MapperError, SlotHandle};
use super::container::VfioContainer;

/// A [`GuestMemoryMapper`] that also DMA-maps each mapping into a VFIO container at IOVA =
/// guest physical address (see the module documentation).
pub struct PeerDmaMapper {
    inner: Arc<dyn GuestMemoryMapper>,
    container: Arc<dyn VfioContainer>,
    /// The DMA mapping `(iova, size)` made beside each guest mapping.
    dma: Mutex<HashMap<SlotHandle, (u64, u64)>>,
    warned: AtomicBool,
    announced: AtomicBool,
}

impl std::fmt::Debug for PeerDmaMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDmaMapper")
            .field("dma", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl PeerDmaMapper {
    /// Maps into the guest with `inner` and into `container` for device DMA.
    pub fn new(inner: Arc<dyn GuestMemoryMapper>, container: Arc<dyn VfioContainer>) -> Self {
        PeerDmaMapper {
            inner,
            container,
            dma: Mutex::default(),
            warned: AtomicBool::new(false),
            announced: AtomicBool::new(false),
        }
    }

    /// The DMA mappings made for peers now: `(iova, size)`, sorted.
    pub fn peer_mappings(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<_> = self.lock().values().copied().collect();
        v.sort_unstable();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SlotHandle, (u64, u64)>> {
        self.dma.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GuestMemoryMapper for PeerDmaMapper {
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> Result<SlotHandle, MapperError> {
        // SAFETY: the caller keeps `host..host + size` mapped until `unmap` of this handle
        // succeeds, which is the inner mapper's contract too.
        let slot = unsafe { self.inner.map(gpa, size, host) }?;
        let t0 = std::time::Instant::now();
        // SAFETY: the same promise covers the DMA mapping: `unmap` below removes it before
        // the guest mapping and fails (so the caller keeps the memory mapped) if it cannot. A
        // device reading or writing the BAR at any time is what the guest can make happen
        // through the slot anyway.
        match unsafe { self.container.map_dma(gpa, size, host as u64) } {
            Ok(()) => {
                // The first at info; the guest decides how often its BARs move.
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                if !self.announced.swap(true, Ordering::Relaxed) {
                    log::info!("peer DMA: {size:#x} bytes of device memory at IOVA {gpa:#x} ({ms:.2} ms; later moves at debug)");
                } else {
                    log::debug!(
                        "peer DMA: {size:#x} bytes of device memory at IOVA {gpa:#x} ({ms:.2} ms)"
                    );
                }
                self.lock().insert(slot, (gpa, size));
            }
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "peer-to-peer DMA into device memory at {gpa:#x} is not available: {e}; devices cannot DMA into this BAR (the guest's own access is unaffected; further such failures are logged at debug)"
                    );
                } else {
                    log::debug!("peer DMA at {gpa:#x}: {e}");
                }
            }
        }
        Ok(slot)
    }

    fn unmap(&self, slot: SlotHandle) -> Result<(), MapperError> {
        let dma = self.lock().get(&slot).copied();
        if let Some((iova, size)) = dma {
            // Devices first: once the guest mapping is gone the memory may be unmapped.
            self.container.unmap_dma(iova, size)?;
            self.lock().remove(&slot);
        }
        self.inner.unmap(slot)
    }
}
