//! The passthrough function's BARs: their kinds and sizes from the device, the areas of each
//! BAR that are mmapped and handed to the guest as memory, and moving those when the guest
//! moves a BAR.
//!
//! # What is mapped
//!
//! A memory BAR whose VFIO region may be mmapped is mapped in host-page-aligned pieces: the
//! sparse-mmap areas the kernel reports (or the whole region), minus the host pages holding the
//! MSI-X table and PBA (which the model emulates), trimmed inward to page boundaries. Each
//! piece is mmapped once when the device is created and becomes guest memory (a KVM memory
//! slot, through [`GuestMemoryMapper`]) at `BAR address + offset` whenever the platform maps
//! the BAR; it is removed while decoding is off or the BAR is unmapped. Everything else of the
//! BAR (sub-page BARs, the MSI-X pages outside the table and PBA, areas the kernel does not let
//! us mmap, I/O BARs) traps and goes through region reads and writes.

use vm_memory::MmapRegion;

use super::ops::{RegionInfo, SparseArea, VfioDeviceOps, BAR0_REGION};
use crate::pci::bar::{BarKind, BarSpec, BAR_IO, BAR_MEM_64, BAR_MEM_PREFETCH, NUM_BARS};

/// The host page size the mapping granularity follows (x86-64).
pub const HOST_PAGE_SIZE: u64 = 4096;

/// A guest mapping made by a [`GuestMemoryMapper`] (the VMM's KVM memory slot number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotHandle(pub u32);

/// The error a [`GuestMemoryMapper`] returns (whatever the VMM's is).
pub type MapperError = Box<dyn std::error::Error + Send + Sync>;

/// Maps host memory (a BAR's mmap) into the guest physical address space. The VMM implements
/// it with KVM memory slots.
pub trait GuestMemoryMapper: Send + Sync {
    /// Maps `size` bytes at `host` to guest physical address `gpa`. `gpa`, `size` and `host`
    /// are multiples of [`HOST_PAGE_SIZE`], and the range does not overlap guest RAM or another
    /// mapping (the platform only maps BARs inside the PCI windows and without overlaps).
    ///
    /// # Safety
    ///
    /// The caller keeps `host..host + size` mapped until it has called
    /// [`GuestMemoryMapper::unmap`] with the returned handle and that call succeeded.
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> Result<SlotHandle, MapperError>;
    /// Removes a mapping made by [`GuestMemoryMapper::map`].
    fn unmap(&self, slot: SlotHandle) -> Result<(), MapperError>;
}

/// Why a BAR of the device cannot be modelled.
#[derive(Debug, thiserror::Error)]
pub enum BarError {
    /// A 64-bit BAR in the last register.
    #[error("BAR 5 claims to be 64-bit, which needs a sixth register")]
    Bad64Bit,
    /// Size out of what the PCI rules allow for the kind.
    #[error("BAR {bar}: a {kind:?} BAR cannot be {size:#x} bytes")]
    BadSize {
        /// BAR index.
        bar: usize,
        /// Kind.
        kind: BarKind,
        /// Size.
        size: u64,
    },
    /// Reading region information failed.
    #[error("BAR {bar}: {source}")]
    Region {
        /// BAR index.
        bar: usize,
        /// Why.
        #[source]
        source: super::ops::OpsError,
    },
}

/// One mmapped piece of a BAR.
struct Area {
    offset: u64,
    size: u64,
    mmap: MmapRegion,
    slot: Option<SlotHandle>,
}

/// One BAR of the device.
pub(crate) struct Bar {
    /// BAR index.
    pub index: usize,
    /// How the guest sees it.
    pub spec: BarSpec,
    /// Its VFIO region.
    pub region: RegionInfo,
    /// Where the platform has it mapped (decoding on, inside the windows).
    pub at: Option<u64>,
    areas: Vec<Area>,
}

impl std::fmt::Debug for Bar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bar")
            .field("index", &self.index)
            .field("spec", &self.spec)
            .field(
                "areas",
                &self
                    .areas
                    .iter()
                    .map(|a| (a.offset, a.size))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn align_down(v: u64) -> u64 {
    v & !(HOST_PAGE_SIZE - 1)
}

fn align_up(v: u64) -> Option<u64> {
    v.checked_add(HOST_PAGE_SIZE - 1).map(align_down)
}

/// `areas` as `[start, end)` ranges, sorted, with overlapping ones merged. The kernel's list
/// need not be sorted nor disjoint, and overlapping pieces would become overlapping guest
/// mappings. Adjacent areas stay separate (each is one mmap the kernel allows).
fn disjoint_areas(areas: &[SparseArea]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = areas
        .iter()
        .filter_map(|a| Some((a.offset, a.offset.checked_add(a.size)?)))
        .filter(|(s, e)| s < e)
        .collect();
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s < last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The page-aligned pieces of `areas` that avoid the host pages touched by `holes`
/// (`(offset, len)` ranges of the region); sorted and disjoint.
pub(crate) fn mappable_pieces(areas: &[SparseArea], holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let holes: Vec<(u64, u64)> = holes
        .iter()
        .filter(|h| h.1 > 0)
        .map(|&(o, l)| {
            let end = o.checked_add(l).and_then(align_up).unwrap_or(u64::MAX);
            (align_down(o), end)
        })
        .collect();
    let mut out = Vec::new();
    for (start, end) in disjoint_areas(areas) {
        let mut pieces = vec![(start, end)];
        for &(hs, he) in &holes {
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| {
                    if he <= s || hs >= e {
                        vec![(s, e)]
                    } else {
                        vec![(s, hs.max(s)), (he.min(e), e)]
                    }
                })
                .collect();
        }
        for (s, e) in pieces {
            let (Some(s), e) = (align_up(s), align_down(e)) else {
                continue;
            };
            if s < e {
                out.push((s, e - s));
            }
        }
    }
    out
}

/// Reads the BARs of the device: kind from the BAR register the config snapshot holds, size
/// from the region (rounded up to a power of two).
pub(crate) fn discover(
    ops: &dyn VfioDeviceOps,
    bar_regs: &[u32; NUM_BARS],
) -> Result<Vec<Bar>, BarError> {
    let mut bars = Vec::new();
    let mut i = 0;
    while i < NUM_BARS {
        let region = ops
            .region_info(BAR0_REGION + i as u32)
            .map_err(|source| BarError::Region { bar: i, source })?;
        let low = bar_regs[i];
        let kind = if low & BAR_IO != 0 {
            BarKind::Io
        } else if low & 0x6 == BAR_MEM_64 {
            BarKind::Memory64
        } else {
            BarKind::Memory32
        };
        let step = if kind == BarKind::Memory64 { 2 } else { 1 };
        if region.size == 0 {
            i += step;
            continue;
        }
        if kind == BarKind::Memory64 && i + 1 >= NUM_BARS {
            return Err(BarError::Bad64Bit);
        }
        let min = if kind == BarKind::Io { 4 } else { 16 };
        let size = region
            .size
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .max(min);
        let spec = BarSpec {
            kind,
            size,
            prefetchable: kind != BarKind::Io && low & BAR_MEM_PREFETCH != 0,
        };
        if spec.validate(i).is_err() {
            return Err(BarError::BadSize {
                bar: i,
                kind,
                size: region.size,
            });
        }
        bars.push(Bar {
            index: i,
            spec,
            region,
            at: None,
            areas: Vec::new(),
        });
        i += step;
    }
    Ok(bars)
}

impl Bar {
    /// Mmaps the BAR's mappable pieces, leaving out the pages of `holes` (the MSI-X table and
    /// PBA). A piece the kernel refuses to map is logged and left to trap.
    pub(crate) fn mmap_areas(&mut self, ops: &dyn VfioDeviceOps, holes: &[(u64, u64)], name: &str) {
        if self.spec.kind == BarKind::Io {
            return;
        }
        for (offset, size) in mappable_pieces(&self.region.mmap_areas(), holes) {
            let t0 = std::time::Instant::now();
            match ops.mmap_region(&self.region, offset, size) {
                Ok(mmap) => {
                    log::info!(
                        "VFIO {name}: BAR {} offset {offset:#x}: mmapped {size:#x} bytes in {:.2} ms",
                        self.index,
                        t0.elapsed().as_secs_f64() * 1e3
                    );
                    self.areas.push(Area {
                        offset,
                        size,
                        mmap,
                        slot: None,
                    })
                }
                Err(e) => log::warn!(
                    "VFIO {name}: BAR {}: {e}; accesses there will trap (slower)",
                    self.index
                ),
            }
        }
    }

    /// The mmapped pieces: `(offset, size)`.
    pub(crate) fn mapped_pieces(&self) -> Vec<(u64, u64)> {
        self.areas.iter().map(|a| (a.offset, a.size)).collect()
    }

    /// Host address of the piece at `offset` (for tests).
    #[cfg(test)]
    pub(crate) fn host_addr(&self, offset: u64) -> Option<*mut u8> {
        self.areas
            .iter()
            .find(|a| a.offset == offset)
            .map(|a| a.mmap.as_ptr())
    }

    /// Makes the pieces guest memory at `addr + offset`.
    pub(crate) fn map(&mut self, addr: u64, mapper: &dyn GuestMemoryMapper, name: &str) {
        for a in &mut self.areas {
            if a.slot.is_some() {
                continue;
            }
            let Some(gpa) = addr.checked_add(a.offset) else {
                continue;
            };
            let t0 = std::time::Instant::now();
            // SAFETY: `a.mmap` is owned by this BAR and is dropped only by `release`, which
            // removes the slot first and leaks the mapping if that fails.
            match unsafe { mapper.map(gpa, a.size, a.mmap.as_ptr()) } {
                Ok(slot) => {
                    // debug: the guest decides how often BARs move
                    log::debug!(
                        "VFIO {name}: BAR {} offset {:#x}: {:#x} bytes are guest memory at {gpa:#x} ({:.2} ms)",
                        self.index,
                        a.offset,
                        a.size,
                        t0.elapsed().as_secs_f64() * 1e3
                    );
                    a.slot = Some(slot)
                }
                Err(e) => log::warn!(
                    "VFIO {name}: BAR {} offset {:#x}: mapping {:#x} bytes at guest address {gpa:#x}: {e}; accesses there will trap (slower)",
                    self.index, a.offset, a.size
                ),
            }
        }
    }

    /// Removes the pieces from the guest.
    pub(crate) fn unmap(&mut self, mapper: &dyn GuestMemoryMapper, name: &str) {
        for a in &mut self.areas {
            if let Some(slot) = a.slot {
                match mapper.unmap(slot) {
                    Ok(()) => a.slot = None,
                    Err(e) => log::error!(
                        "VFIO {name}: BAR {} offset {:#x}: removing guest mapping {slot:?}: {e}",
                        self.index,
                        a.offset
                    ),
                }
            }
        }
    }

    /// Removes the pieces from the guest and unmaps them from this process. A piece whose
    /// guest mapping cannot be removed stays mapped here (leaked) so the guest never reaches
    /// freed host memory.
    pub(crate) fn release(&mut self, mapper: &dyn GuestMemoryMapper, name: &str) {
        self.unmap(mapper, name);
        for a in self.areas.drain(..) {
            if a.slot.is_some() {
                std::mem::forget(a.mmap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(offset: u64, size: u64) -> SparseArea {
        SparseArea { offset, size }
    }

    #[test]
    fn pieces_avoid_msix_pages() {
        // Table in page 1 of an 16 KiB BAR, PBA in page 3.
        let p = mappable_pieces(&[area(0, 0x4000)], &[(0x1000, 0x100), (0x3800, 8)]);
        assert_eq!(p, vec![(0, 0x1000), (0x2000, 0x1000)]);
        // Table and PBA sharing the first page with registers: only pages 1.. map.
        let p = mappable_pieces(&[area(0, 0x4000)], &[(0x800, 0x20), (0xc00, 8)]);
        assert_eq!(p, vec![(0x1000, 0x3000)]);
        // Sparse areas are trimmed to whole pages.
        let p = mappable_pieces(&[area(0x100, 0x2000), area(0x3000, 0x800)], &[]);
        assert_eq!(p, vec![(0x1000, 0x1000)]);
        // A sub-page BAR maps nothing.
        assert!(mappable_pieces(&[area(0, 0x100)], &[]).is_empty());
        // Overflowing input is dropped, not wrapped.
        assert!(mappable_pieces(&[area(u64::MAX - 0xfff, 0x2000)], &[]).is_empty());
        let p = mappable_pieces(&[area(0, 0x2000)], &[(u64::MAX - 4, 0x10)]);
        assert_eq!(p, vec![(0, 0x2000)]);
    }

    /// Found by the `vfio_device` fuzz target: sparse areas (0x1e7000, 0x17000) and
    /// (0x1e7000, 0x10000) of one region became two overlapping guest mappings at the same
    /// address. Overlapping areas are merged; adjacent ones stay separate mmaps; order does not
    /// matter.
    #[test]
    fn overlapping_sparse_areas_map_once() {
        let p = mappable_pieces(&[area(0x1e7000, 0x17000), area(0x1e7000, 0x10000)], &[]);
        assert_eq!(p, vec![(0x1e7000, 0x17000)]);
        let p = mappable_pieces(
            &[area(0x3000, 0x2000), area(0, 0x1000), area(0x1000, 0x3000)],
            &[(0x2800, 8)],
        );
        assert_eq!(p, vec![(0, 0x1000), (0x1000, 0x1000), (0x3000, 0x2000)]);
    }
}
