//! [`FuzzVfio`]: a fake VFIO device behind [`VfioDeviceOps`] whose shape (config space,
//! capabilities, BAR regions, sparse mmap areas, ROM, interrupt counts, flags) comes from the
//! fuzz input ([`Shape::from_fuzz`]) or is a fixed rich layout ([`Shape::rich`]).
//!
//! It panics on every request a correct model never makes, so libFuzzer reports it:
//!
//! - a region access that is empty or reaches past the region, or names a region the device
//!   did not report;
//! - a config write that reaches bytes the model must own (the header except command, status,
//!   cache line size and latency timer; the BAR and ROM BAR registers; capability headers; the
//!   bodies of the MSI and MSI-X capabilities the model emulates);
//! - an mmap of a region without the mmap flag, unaligned, or outside the union of the region's
//!   mmap areas;
//! - `SET_IRQS` with more vectors than the device has for that index, a non-zero start, or
//!   enabling one interrupt type while another is enabled (the kernel refuses that);
//! - `VFIO_DEVICE_RESET` on a device without reset support.
//!
//! Region reads return a pattern (`offset ^ (region << 4)`); BAR writes are accepted and
//! dropped; config writes land in the device's config bytes (the status register as hardware
//! has it: read-only but for its write-1-to-clear error bits).

use std::collections::BTreeMap;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use arbitrary::{Result, Unstructured};
use devices::vfio::ops::{
    DeviceInfo, IrqInfo, OpsError, RegionInfo, SetIrqs, SparseArea, VfioDeviceOps, CONFIG_REGION,
    INTX_IRQ, MSIX_IRQ, MSI_IRQ, ROM_REGION,
};
use devices::vfio::HOST_PAGE_SIZE;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vm_memory::MmapRegion;

use crate::input::one_in;
use crate::mapper::{MmapLog, MmapRecord};
use crate::views::{MSIX_ID, MSI_ID};

const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
/// Power management capability ID.
pub const PM_ID: u8 = 0x01;
/// Largest region the fake device mmaps (the mapping is real, if untouched).
const MAX_MMAP_REGION: u64 = 1 << 32;

/// The layout of a fake device.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The config region's bytes (its length is the region size).
    pub config: Vec<u8>,
    /// BAR and ROM regions by index.
    pub regions: BTreeMap<u32, RegionInfo>,
    /// Interrupt indexes.
    pub irqs: BTreeMap<u32, IrqInfo>,
    /// `VFIO_DEVICE_GET_INFO`.
    pub info: DeviceInfo,
    /// Config ranges `[start, end)` the model owns: no write may reach the device there.
    pub owned: Vec<(u16, u16)>,
    /// The power management control/status register, if the device has a PM capability.
    pub pm_csr: Option<u16>,
    /// A ROM file's bytes to hand the model instead of the device's ROM.
    pub rom_file: Option<Vec<u8>>,
}

/// Builds a config space with linked capability lists.
struct Builder {
    s: Shape,
    last_cap: Option<usize>,
    next_cap: usize,
    last_ext: Option<usize>,
    next_ext: usize,
    /// The extended capabilities built so far are not reachable from 0x100.
    ext_unlinked: bool,
    seen_msi: bool,
    seen_msix: bool,
}

impl Builder {
    fn new(size: usize) -> Self {
        let mut config = vec![0u8; size];
        // The header rule: everything below 0x40 except command, status, cache line size and
        // latency timer is the model's.
        let owned = vec![(0x00, 0x04), (0x08, 0x0c), (0x0e, 0x40)];
        // Status: capability list present.
        if let Some(b) = config.get_mut(0x06) {
            *b |= 0x10;
        }
        Builder {
            s: Shape {
                config,
                regions: BTreeMap::new(),
                irqs: BTreeMap::new(),
                info: DeviceInfo {
                    flags: VFIO_DEVICE_FLAGS_PCI | VFIO_DEVICE_FLAGS_RESET,
                    num_regions: VFIO_PCI_NUM_REGIONS,
                    num_irqs: VFIO_PCI_NUM_IRQS,
                },
                owned,
                pm_csr: None,
                rom_file: None,
            },
            last_cap: None,
            next_cap: 0x40,
            last_ext: None,
            next_ext: 0x100,
            ext_unlinked: false,
            seen_msi: false,
            seen_msix: false,
        }
    }

    fn put(&mut self, off: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(c) = self.s.config.get_mut(off + i) {
                *c = b;
            }
        }
    }

    fn irq(&mut self, index: u32, count: u32, flags: u32) {
        self.s.irqs.insert(
            index,
            IrqInfo {
                index,
                flags,
                count,
            },
        );
    }

    fn region(&mut self, index: u32, size: u64, flags: u32, sparse: Option<Vec<SparseArea>>) {
        self.s.regions.insert(
            index,
            RegionInfo {
                index,
                flags,
                size,
                offset: u64::from(index) << 40,
                sparse,
                msix_mappable: false,
            },
        );
    }

    /// A standard capability (`body` follows the 2-byte header); `None` if it does not fit.
    fn cap(&mut self, id: u8, body: &[u8], gap: usize) -> Option<u16> {
        let off = (self.next_cap + gap + 3) & !3;
        let limit = self.s.config.len().min(0x100);
        if off + 2 + body.len() > limit {
            return None;
        }
        self.put(off, &[id, 0]);
        self.put(off + 2, body);
        match self.last_cap {
            Some(p) => self.put(p + 1, &[off as u8]),
            None => self.put(0x34, &[off as u8]),
        }
        self.last_cap = Some(off);
        self.next_cap = off + 2 + body.len();
        self.s.owned.push((off as u16, off as u16 + 2));
        // The model emulates the first MSI and the first MSI-X capability in the list.
        let first = match id {
            MSI_ID => !std::mem::replace(&mut self.seen_msi, true),
            MSIX_ID => !std::mem::replace(&mut self.seen_msix, true),
            _ => false,
        };
        if first {
            self.s
                .owned
                .push((off as u16, (off + 2 + body.len()) as u16));
        }
        if id == PM_ID && self.s.pm_csr.is_none() {
            self.s.pm_csr = Some(off as u16 + 4);
        }
        Some(off as u16)
    }

    /// An extended capability (`body` follows the 4-byte header); `None` if it does not fit.
    ///
    /// The list starts at 0x100 whatever happens. If the first capability lands past 0x100
    /// (a gap), `link_head` puts a null capability (ID 0) at 0x100 that points at it, as some
    /// devices have; without it 0x100 reads zero, so the device has no extended capabilities
    /// and the capabilities built here are bytes nothing links to, which the model passes
    /// through like any device-specific register.
    fn ext_cap(&mut self, id: u16, body: &[u8], gap: usize, link_head: bool) -> Option<u16> {
        let off = (self.next_ext + gap + 3) & !3;
        if self.s.config.len() <= 0x100 || off + 4 + body.len() > self.s.config.len() {
            return None;
        }
        if self.last_ext.is_none() && off != 0x100 {
            if link_head {
                self.put(0x100, &((off as u32) << 20).to_le_bytes());
                self.s.owned.push((0x100, 0x104));
            } else {
                self.ext_unlinked = true;
            }
        }
        // Version 1, so no header reads zero (which would end the list).
        let h = u32::from(id) | (1 << 16);
        self.put(off, &h.to_le_bytes());
        self.put(off + 4, body);
        if let Some(p) = self.last_ext {
            let ph = u32::from_le_bytes(self.s.config[p..p + 4].try_into().unwrap_or([0; 4]));
            let ph = (ph & 0xf_ffff) | ((off as u32) << 20);
            self.put(p, &ph.to_le_bytes());
        }
        self.last_ext = Some(off);
        self.next_ext = off + 4 + body.len();
        if !self.ext_unlinked {
            self.s.owned.push((off as u16, off as u16 + 4));
        }
        Some(off as u16)
    }
}

fn msi_body(ctrl: u16) -> Vec<u8> {
    let len = match (ctrl & (1 << 7) != 0, ctrl & (1 << 8) != 0) {
        (false, false) => 10,
        (true, false) => 14,
        (false, true) => 20,
        (true, true) => 24,
    };
    let mut body = vec![0u8; len - 2];
    body[..2].copy_from_slice(&ctrl.to_le_bytes());
    body
}

fn msix_body(ctrl: u16, table: u32, pba: u32) -> Vec<u8> {
    let mut body = ctrl.to_le_bytes().to_vec();
    body.extend_from_slice(&table.to_le_bytes());
    body.extend_from_slice(&pba.to_le_bytes());
    body
}

/// A region size: exact powers of two, odd sizes, tiny and huge ones.
fn region_size(u: &mut Unstructured, mmap: bool) -> Result<u64> {
    let max_shift = if mmap { 32 } else { 40 };
    Ok(match u.int_in_range(0u8..=7)? {
        0 => 0,
        1 => u.int_in_range(1..=0x40)?,
        2 => u.int_in_range(1..=1 << 20)?,
        3 => u.int_in_range(1..=1u64 << max_shift)?,
        _ => 1u64 << u.int_in_range(2..=max_shift)?,
    })
}

fn sparse_areas(u: &mut Unstructured, size: u64) -> Result<Option<Vec<SparseArea>>> {
    if !one_in(u, 3)? {
        return Ok(None);
    }
    let n = u.int_in_range(0..=4)?;
    let mut areas = Vec::new();
    for _ in 0..n {
        let (offset, size) = if one_in(u, 4)? {
            (u.arbitrary()?, u.arbitrary()?)
        } else {
            let page = |v: u64| v & !(HOST_PAGE_SIZE - 1);
            let o = page(u.int_in_range(0..=size)?);
            let s = page(u.int_in_range(0..=size.saturating_sub(o))?);
            (o, s)
        };
        areas.push(SparseArea { offset, size });
    }
    Ok(Some(areas))
}

impl Shape {
    /// A device with every feature the model handles: 32/64-bit, I/O and sub-page BARs, a
    /// power management capability, MSI with 8 vectors, MSI-X with 5 vectors whose table shares
    /// a page with registers in BAR 0 and whose PBA sits at the end of BAR 2, a PCI Express
    /// capability, hidden extended capabilities (SR-IOV, ARI) and a ROM.
    pub fn rich() -> Self {
        let mut b = Builder::new(4096);
        b.put(0, &0x1521_8086u32.to_le_bytes());
        b.put(0x08, &[1, 0, 0, 0x02]);
        b.put(0x3d, &[1]);
        b.put(0x10, &0u32.to_le_bytes());
        b.region(0, 0x4000, RW | VFIO_REGION_INFO_FLAG_MMAP, None);
        b.put(0x14, &1u32.to_le_bytes());
        b.region(1, 0x20, RW, None);
        b.put(0x18, &0xcu32.to_le_bytes());
        b.region(2, 0x2_0000, RW | VFIO_REGION_INFO_FLAG_MMAP, None);
        b.put(0x20, &0u32.to_le_bytes());
        b.region(4, 0x100, RW | VFIO_REGION_INFO_FLAG_MMAP, None);
        b.region(ROM_REGION, 0x800, VFIO_REGION_INFO_FLAG_READ, None);
        b.cap(PM_ID, &[0x03, 0x00, 0, 0, 0, 0], 0);
        b.cap(MSI_ID, &msi_body((3 << 1) | (1 << 7) | (1 << 8)), 0);
        b.cap(MSIX_ID, &msix_body(4, 0x800, 0x1_f000 | 2), 0);
        b.cap(0x10, &[0; 0x3a], 0);
        b.ext_cap(0x01, &[0; 0x44], 0, true);
        b.ext_cap(0x10, &[0x22; 0x3c], 0, true);
        b.ext_cap(0x0e, &[0; 4], 0, true);
        b.irq(INTX_IRQ, 1, VFIO_IRQ_INFO_EVENTFD);
        b.irq(MSI_IRQ, 8, VFIO_IRQ_INFO_EVENTFD);
        b.irq(MSIX_IRQ, 5, VFIO_IRQ_INFO_EVENTFD);
        b.s
    }

    /// A device shaped by the fuzz input.
    pub fn from_fuzz(u: &mut Unstructured) -> Result<Self> {
        let size = match u.int_in_range(0u8..=7)? {
            0 => u.int_in_range(0..=0x1000)?,
            1..=3 => 0x100,
            _ => 0x1000,
        };
        let mut b = Builder::new(size);
        let mut ident = [0u8; 16];
        u.fill_buffer(&mut ident)?;
        if !one_in(u, 16)? {
            // Not all ones (a device that is not responding), mostly.
            ident[0] &= 0x7f;
        }
        b.put(0, &ident[..4]);
        b.put(0x08, &ident[4..8]);
        b.put(0x2c, &ident[8..12]);
        b.put(0x0e, &[if one_in(u, 16)? { ident[12] } else { 0 }]);
        b.put(0x3d, &[if one_in(u, 4)? { ident[13] } else { 1 }]);

        // BARs: the register's low bits give the kind, the region the size.
        let mut i = 0;
        while i < 6 {
            let kind = u.int_in_range(0u8..=4)?;
            let garbage: u32 = if one_in(u, 8)? { u.arbitrary()? } else { 0 };
            let (reg, step) = match kind {
                0 => (garbage & !0x7, 1),
                1 => ((garbage & !0xf) | if one_in(u, 2)? { 8 } else { 0 }, 1),
                2 => ((garbage & !0xf) | 4 | if one_in(u, 2)? { 8 } else { 0 }, 2),
                3 => ((garbage & !0x3) | 1, 1),
                _ => (0, 1),
            };
            b.put(0x10 + 4 * i, &reg.to_le_bytes());
            if kind < 4 {
                let mmap = kind != 3 && !one_in(u, 4)?;
                let size = region_size(u, mmap)?;
                let mut flags = if one_in(u, 16)? { u.arbitrary()? } else { RW };
                if mmap {
                    flags |= VFIO_REGION_INFO_FLAG_MMAP;
                } else {
                    flags &= !VFIO_REGION_INFO_FLAG_MMAP;
                }
                let sparse = sparse_areas(u, size)?;
                if sparse.is_some() {
                    flags |= VFIO_REGION_INFO_FLAG_CAPS;
                }
                b.region(i as u32, size, flags, sparse);
                if let Some(r) = b.s.regions.get_mut(&(i as u32)) {
                    r.msix_mappable = one_in(u, 4)?;
                }
            }
            i += step;
        }
        if one_in(u, 2)? {
            let size = match u.int_in_range(0u8..=15)? {
                0..=4 => u.int_in_range(0..=0x100)?,
                5..=9 => u.int_in_range(0..=0x1_0000)?,
                10..=14 => 0x800,
                // Up to past the largest ROM the model accepts (16 MiB).
                _ => u.int_in_range(0..=(17 << 20))?,
            };
            let flags = if one_in(u, 8)? {
                0
            } else {
                VFIO_REGION_INFO_FLAG_READ
            };
            b.region(ROM_REGION, size, flags, None);
        }
        if one_in(u, 8)? {
            let len = u.int_in_range(0..=0x2000)?;
            b.s.rom_file = Some(crate::input::data(u, len)?);
        }

        // Standard capabilities.
        for _ in 0..u.int_in_range(0..=6)? {
            let gap = if one_in(u, 4)? {
                u.int_in_range(0..=16)?
            } else {
                0
            };
            let (id, body) = match u.int_in_range(0u8..=6)? {
                0 => {
                    // vfio-pci hands the device over in D0: power state bits 1:0 clear.
                    let mut body = crate::input::data(u, 6)?;
                    body[2] &= !3;
                    (PM_ID, body)
                }
                1 | 2 => (MSI_ID, msi_body(u.arbitrary()?)),
                3 | 4 => {
                    // Mostly small tables; enable and function-mask bits set as garbage.
                    let ctrl: u16 = if one_in(u, 8)? {
                        u.arbitrary()?
                    } else {
                        u.int_in_range(0..=15)? | (u.int_in_range(0..=3u16)? << 14)
                    };
                    let table = msix_region(u)?;
                    let pba = msix_region(u)?;
                    (MSIX_ID, msix_body(ctrl, table, pba))
                }
                5 => (0x10, vec![0; 0x3a]),
                _ => {
                    let id = u.arbitrary()?;
                    let len = u.int_in_range(0..=32)?;
                    (id, crate::input::data(u, len)?)
                }
            };
            if b.cap(id, &body, gap).is_none() {
                break;
            }
        }
        // Extended capabilities.
        for _ in 0..u.int_in_range(0..=5)? {
            let id = *u.choose(&[0x10u16, 0x0e, 0x15, 0x24, 0x01, 0x0b])?;
            let id = if one_in(u, 8)? { u.arbitrary()? } else { id };
            let len = 4 * u.int_in_range(0..=0x14)?;
            let body = crate::input::data(u, len)?;
            let gap = if one_in(u, 4)? {
                u.int_in_range(0..=64)?
            } else {
                0
            };
            // Mostly a null capability at 0x100 in front of a first capability past it.
            let link_head = !(gap > 0 && b.last_ext.is_none() && one_in(u, 4)?);
            if b.ext_cap(id, &body, gap, link_head).is_none() {
                break;
            }
        }

        // Interrupts.
        let flags = |u: &mut Unstructured| -> Result<u32> {
            Ok(if one_in(u, 16)? {
                u.arbitrary()?
            } else {
                VFIO_IRQ_INFO_EVENTFD
            })
        };
        let intx = if one_in(u, 4)? { 0 } else { 1 };
        let f = flags(u)?;
        b.irq(INTX_IRQ, intx, f);
        let msi = match u.int_in_range(0u8..=3)? {
            0 => 0,
            1 => u.int_in_range(0..=64)?,
            _ => 1 << u.int_in_range(0..=5)?,
        };
        let f = flags(u)?;
        b.irq(MSI_IRQ, msi, f);
        let msix = match u.int_in_range(0u8..=3)? {
            0 => 0,
            1 => u.int_in_range(0..=4096)?,
            _ => u.int_in_range(1..=64)?,
        };
        let f = flags(u)?;
        b.irq(MSIX_IRQ, msix, f);
        if one_in(u, 8)? {
            b.s.info.flags = u.arbitrary()?;
            b.s.info.num_regions = u.int_in_range(0..=12)?;
            b.s.info.num_irqs = u.int_in_range(0..=6)?;
        } else if one_in(u, 4)? {
            b.s.info.flags &= !VFIO_DEVICE_FLAGS_RESET;
        }
        Ok(b.s)
    }
}

/// An MSI-X table or PBA register: BAR indicator and 8-byte aligned offset, mostly inside the
/// first pages, sometimes anything.
fn msix_region(u: &mut Unstructured) -> Result<u32> {
    Ok(if one_in(u, 8)? {
        u.arbitrary()?
    } else {
        let bir = u.int_in_range(0..=5)?;
        let off: u32 = u.int_in_range(0..=0x4000)?;
        (off & !7) | bir
    })
}

/// What the fake device holds and records.
#[derive(Debug)]
struct State {
    shape: Shape,
    config: Vec<u8>,
    /// The interrupt index VFIO has enabled, with its eventfds.
    active: Option<(u32, Vec<RawFd>)>,
    /// The INTx unmask eventfd.
    unmask: Option<RawFd>,
    mmaps: Arc<MmapLog>,
    fail_set_irqs: bool,
    resets: u32,
}

/// The fake VFIO device; clones share state.
#[derive(Debug, Clone)]
pub struct FuzzVfio {
    state: Arc<Mutex<State>>,
}

/// Whether `[start, end)` lies inside the union of `areas`.
fn covered(areas: &[SparseArea], start: u64, end: u64) -> bool {
    let mut at = start;
    while at < end {
        let next = areas
            .iter()
            .filter(|a| a.offset <= at && at < a.offset.saturating_add(a.size))
            .map(|a| a.offset.saturating_add(a.size))
            .max();
        match next {
            Some(n) => at = n,
            None => return false,
        }
    }
    true
}

fn pattern(region: u32, offset: u64) -> u8 {
    (offset as u8) ^ ((region as u8) << 4)
}

impl FuzzVfio {
    /// A device of `shape` recording its mmaps in `mmaps`; with `fail_set_irqs` every
    /// `SET_IRQS` fails.
    pub fn new(shape: Shape, mmaps: Arc<MmapLog>, fail_set_irqs: bool) -> Self {
        FuzzVfio {
            state: Arc::new(Mutex::new(State {
                config: shape.config.clone(),
                shape,
                active: None,
                unmask: None,
                mmaps,
                fail_set_irqs,
                resets: 0,
            })),
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's shape.
    pub fn shape(&self) -> Shape {
        self.st().shape.clone()
    }

    /// The interrupt index VFIO has enabled and its eventfds, and the INTx unmask eventfd.
    pub fn active_irqs(&self) -> (Option<(u32, Vec<RawFd>)>, Option<RawFd>) {
        let st = self.st();
        (st.active.clone(), st.unmask)
    }

    /// Whether `SET_IRQS` is made to fail.
    pub fn fails_set_irqs(&self) -> bool {
        self.st().fail_set_irqs
    }

    /// The power state (0 = D0 .. 3 = D3hot) the device's PM control register holds.
    pub fn power_state(&self) -> Option<u8> {
        let st = self.st();
        let csr = usize::from(st.shape.pm_csr?);
        st.config.get(csr).map(|b| b & 3)
    }

    /// Number of `VFIO_DEVICE_RESET`s.
    pub fn resets(&self) -> u32 {
        self.st().resets
    }

    fn region_size(st: &State, region: &RegionInfo) -> u64 {
        if region.index == CONFIG_REGION {
            assert_eq!(
                region.size,
                st.config.len() as u64,
                "config access with a forged region size"
            );
            return region.size;
        }
        match st.shape.regions.get(&region.index) {
            Some(r) => {
                assert_eq!(
                    r, region,
                    "access with region info the device never reported"
                );
                r.size
            }
            None => panic!("access to region {}, which does not exist", region.index),
        }
    }

    fn check_range(st: &State, region: &RegionInfo, offset: u64, len: usize) {
        let size = Self::region_size(st, region);
        assert!(
            len > 0 && offset.checked_add(len as u64).is_some_and(|e| e <= size),
            "region {} access {offset:#x}+{len:#x} outside its {size:#x} bytes",
            region.index
        );
    }

    fn irq_count(st: &State, index: u32) -> usize {
        if index >= st.shape.info.num_irqs {
            return 0;
        }
        st.shape
            .irqs
            .get(&index)
            .filter(|i| i.flags & VFIO_IRQ_INFO_EVENTFD != 0)
            .map_or(0, |i| i.count as usize)
    }
}

impl VfioDeviceOps for FuzzVfio {
    fn device_info(&self) -> std::result::Result<DeviceInfo, OpsError> {
        Ok(self.st().shape.info)
    }

    fn region_info(&self, index: u32) -> std::result::Result<RegionInfo, OpsError> {
        let st = self.st();
        if index == CONFIG_REGION {
            return Ok(RegionInfo {
                index,
                flags: RW,
                size: st.config.len() as u64,
                offset: u64::from(index) << 40,
                sparse: None,
                msix_mappable: false,
            });
        }
        Ok(st.shape.regions.get(&index).cloned().unwrap_or(RegionInfo {
            index,
            ..Default::default()
        }))
    }

    fn irq_info(&self, index: u32) -> std::result::Result<IrqInfo, OpsError> {
        Ok(self
            .st()
            .shape
            .irqs
            .get(&index)
            .copied()
            .unwrap_or(IrqInfo {
                index,
                flags: VFIO_IRQ_INFO_EVENTFD,
                count: 0,
            }))
    }

    fn region_read(
        &self,
        region: &RegionInfo,
        offset: u64,
        data: &mut [u8],
    ) -> std::result::Result<(), OpsError> {
        let st = self.st();
        Self::check_range(&st, region, offset, data.len());
        if region.index == CONFIG_REGION {
            let o = offset as usize;
            data.copy_from_slice(&st.config[o..o + data.len()]);
            return Ok(());
        }
        if !region.readable() {
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "read",
            });
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = pattern(region.index, offset + i as u64);
        }
        Ok(())
    }

    fn region_write(
        &self,
        region: &RegionInfo,
        offset: u64,
        data: &[u8],
    ) -> std::result::Result<(), OpsError> {
        let mut st = self.st();
        Self::check_range(&st, region, offset, data.len());
        if region.index == CONFIG_REGION {
            let end = offset + data.len() as u64;
            for &(s, e) in &st.shape.owned {
                assert!(
                    end <= u64::from(s) || offset >= u64::from(e),
                    "config write {offset:#x}+{} reached model-owned bytes {s:#x}..{e:#x}",
                    data.len()
                );
            }
            let o = offset as usize;
            for (i, &v) in data.iter().enumerate() {
                let at = o + i;
                st.config[at] = match at {
                    // Status: read-only, except the error bits a write of 1 clears (as the
                    // hardware and vfio-pci's virtualization have it).
                    0x06 => st.config[at],
                    0x07 => st.config[at] & !(v & 0xf9),
                    _ => v,
                };
            }
            return Ok(());
        }
        if !region.writable() {
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "write",
            });
        }
        Ok(())
    }

    fn mmap_region(
        &self,
        region: &RegionInfo,
        offset: u64,
        size: u64,
    ) -> std::result::Result<MmapRegion, OpsError> {
        let st = self.st();
        Self::check_range(&st, region, offset, size as usize);
        assert!(
            region.mmappable(),
            "mmap of region {}, which has no mmap flag",
            region.index
        );
        assert!(
            offset % HOST_PAGE_SIZE == 0 && size % HOST_PAGE_SIZE == 0,
            "unaligned mmap {offset:#x}+{size:#x} of region {}",
            region.index
        );
        assert!(
            covered(&region.mmap_areas(), offset, offset + size),
            "mmap {offset:#x}+{size:#x} of region {} outside its mmap areas {:x?}",
            region.index,
            region.mmap_areas()
        );
        let mmaps = st.mmaps.clone();
        drop(st);
        let fail = |source| OpsError::Mmap {
            index: region.index,
            offset,
            size,
            source,
        };
        if size > MAX_MMAP_REGION {
            return Err(fail(vm_memory::mmap::MmapRegionError::InvalidPointer));
        }
        let m = MmapRegion::new(size as usize).map_err(fail)?;
        mmaps.push(MmapRecord {
            region: region.index,
            offset,
            size,
            host: m.as_ptr() as usize,
        });
        Ok(m)
    }

    fn set_irqs(&self, request: &SetIrqs) -> std::result::Result<(), OpsError> {
        let mut st = self.st();
        if st.fail_set_irqs {
            return Err(OpsError::Ioctl {
                what: "SET_IRQS (injected failure)".into(),
                source: std::io::Error::from_raw_os_error(22),
            });
        }
        match request {
            SetIrqs::Trigger { index, start, fds } => {
                let max = Self::irq_count(&st, *index);
                assert!(
                    *start == 0 && fds.len() <= max,
                    "SET_IRQS trigger of index {index} vectors {start}+{} (device has {max})",
                    fds.len()
                );
                if !fds.is_empty() {
                    if let Some((other, _)) = &st.active {
                        panic!("SET_IRQS enables index {index} while index {other} is enabled");
                    }
                    st.active = Some((*index, fds.clone()));
                }
            }
            SetIrqs::UnmaskFd { index, start, fd } => {
                assert!(
                    *index == INTX_IRQ && *start == 0,
                    "SET_IRQS unmask-fd on index {index} vector {start}"
                );
                assert!(
                    matches!(&st.active, Some((INTX_IRQ, _))),
                    "INTx unmask eventfd set while INTx is not enabled"
                );
                st.unmask = Some(*fd);
            }
            SetIrqs::Disable { index } => {
                if st.active.as_ref().is_some_and(|(i, _)| i == index) {
                    st.active = None;
                    st.unmask = None;
                }
            }
        }
        Ok(())
    }

    fn reset(&self) -> std::result::Result<(), OpsError> {
        let mut st = self.st();
        assert!(
            st.shape.info.supports_reset(),
            "VFIO_DEVICE_RESET on a device without reset support"
        );
        st.resets += 1;
        Ok(())
    }
}
