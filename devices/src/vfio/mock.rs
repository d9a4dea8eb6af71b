//! Test doubles: a fake VFIO device ([`MockDevice`], built with [`MockBuilder`]) with a config
//! space, regions, capabilities and interrupts, recording every `SET_IRQS`, region write and
//! mmap and every out-of-range access; and a [`MockMapper`] recording guest mappings.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vm_memory::MmapRegion;

use super::bars::{GuestMemoryMapper, MapperError, SlotHandle, HOST_PAGE_SIZE};
use super::ops::{
    DeviceInfo, IrqInfo, OpsError, RegionInfo, SetIrqs, SparseArea, VfioDeviceOps, CONFIG_REGION,
    INTX_IRQ, MSIX_IRQ, MSI_IRQ, ROM_REGION,
};

const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

/// One fake region: what `region_info` returns and its bytes.
#[derive(Debug, Clone)]
pub(crate) struct MockRegion {
    pub info: RegionInfo,
    pub data: Vec<u8>,
}

/// Everything the fake device holds and records.
#[derive(Debug, Default)]
pub(crate) struct MockState {
    pub info: DeviceInfo,
    pub regions: BTreeMap<u32, MockRegion>,
    pub irqs: BTreeMap<u32, IrqInfo>,
    /// Every SET_IRQS request, in order.
    pub set_irqs: Vec<SetIrqs>,
    /// Every successful region write: (region, offset, bytes).
    pub writes: Vec<(u32, u64, Vec<u8>)>,
    /// Every region read: (region, offset, len).
    pub reads: Vec<(u32, u64, usize)>,
    /// Every mmap: (region, offset, size, host address).
    pub mmaps: Vec<(u32, u64, u64, usize)>,
    pub resets: u32,
    /// Accesses the model should never have made.
    pub violations: Vec<String>,
    /// Make SET_IRQS fail.
    pub fail_set_irqs: bool,
}

/// The fake device; clones share state.
#[derive(Debug, Clone, Default)]
pub(crate) struct MockDevice {
    pub state: Arc<Mutex<MockState>>,
}

impl MockDevice {
    pub fn st(&self) -> MutexGuard<'_, MockState> {
        self.state.lock().unwrap()
    }

    /// The config bytes the device holds now.
    pub fn config_u32(&self, off: usize) -> u32 {
        let st = self.st();
        let d = &st.regions[&CONFIG_REGION].data;
        u32::from_le_bytes(d[off..off + 4].try_into().unwrap())
    }

    /// The config writes the device received at offsets in `range`.
    pub fn config_writes_in(&self, range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        self.st()
            .writes
            .iter()
            .filter(|(r, o, d)| {
                *r == CONFIG_REGION && *o < range.end && o + d.len() as u64 > range.start
            })
            .map(|(_, o, d)| (*o, d.clone()))
            .collect()
    }

    fn check(
        &self,
        st: &mut MockState,
        region: &RegionInfo,
        offset: u64,
        len: usize,
    ) -> Result<(), OpsError> {
        let Some(r) = st.regions.get(&region.index) else {
            st.violations
                .push(format!("access to missing region {}", region.index));
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "access",
            });
        };
        let size = r.data.len() as u64;
        if offset.checked_add(len as u64).is_none_or(|e| e > size) || len == 0 {
            st.violations.push(format!(
                "region {} access {offset:#x}+{len:#x} past {size:#x}",
                region.index
            ));
            return Err(OpsError::OutOfRange {
                index: region.index,
                offset,
                len: len as u64,
                size,
            });
        }
        Ok(())
    }
}

impl VfioDeviceOps for MockDevice {
    fn device_info(&self) -> Result<DeviceInfo, OpsError> {
        Ok(self.st().info)
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, OpsError> {
        let st = self.st();
        Ok(st
            .regions
            .get(&index)
            .map(|r| r.info.clone())
            .unwrap_or(RegionInfo {
                index,
                ..Default::default()
            }))
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, OpsError> {
        Ok(self.st().irqs.get(&index).copied().unwrap_or(IrqInfo {
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
    ) -> Result<(), OpsError> {
        let mut st = self.st();
        self.check(&mut st, region, offset, data.len())?;
        st.reads.push((region.index, offset, data.len()));
        let r = &st.regions[&region.index];
        let o = offset as usize;
        data.copy_from_slice(&r.data[o..o + data.len()]);
        Ok(())
    }

    fn region_write(&self, region: &RegionInfo, offset: u64, data: &[u8]) -> Result<(), OpsError> {
        let mut st = self.st();
        self.check(&mut st, region, offset, data.len())?;
        let o = offset as usize;
        if let Some(r) = st.regions.get_mut(&region.index) {
            r.data[o..o + data.len()].copy_from_slice(data);
        }
        st.writes.push((region.index, offset, data.to_vec()));
        Ok(())
    }

    fn mmap_region(
        &self,
        region: &RegionInfo,
        offset: u64,
        size: u64,
    ) -> Result<MmapRegion, OpsError> {
        let mut st = self.st();
        self.check(&mut st, region, offset, size as usize)?;
        let allowed = region
            .mmap_areas()
            .iter()
            .any(|a| offset >= a.offset && offset + size <= a.offset + a.size);
        if !allowed || offset % HOST_PAGE_SIZE != 0 || size % HOST_PAGE_SIZE != 0 {
            st.violations.push(format!(
                "mmap of region {} {offset:#x}+{size:#x} not allowed",
                region.index
            ));
        }
        let m = MmapRegion::new(size as usize).map_err(|source| OpsError::Mmap {
            index: region.index,
            offset,
            size,
            source,
        })?;
        st.mmaps
            .push((region.index, offset, size, m.as_ptr() as usize));
        Ok(m)
    }

    fn set_irqs(&self, request: &SetIrqs) -> Result<(), OpsError> {
        let mut st = self.st();
        st.set_irqs.push(request.clone());
        if st.fail_set_irqs {
            return Err(OpsError::Ioctl {
                what: "SET_IRQS".into(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let (index, count) = match request {
            SetIrqs::Trigger { index, start, fds } => (*index, *start as usize + fds.len()),
            SetIrqs::UnmaskFd { index, start, .. } => (*index, *start as usize + 1),
            SetIrqs::Disable { index } => (*index, 0),
        };
        let max = st.irqs.get(&index).map_or(0, |i| i.count as usize);
        if count > max {
            st.violations.push(format!(
                "SET_IRQS on index {index} with {count} vectors (device has {max})"
            ));
        }
        Ok(())
    }

    fn reset(&self) -> Result<(), OpsError> {
        let mut st = self.st();
        st.resets += 1;
        if !st.info.supports_reset() {
            st.violations.push("reset of a device without reset".into());
        }
        Ok(())
    }
}

/// Builds a fake device: a type-0 header, BARs, capabilities, ROM and interrupts.
#[derive(Debug)]
pub(crate) struct MockBuilder {
    cfg: Vec<u8>,
    regions: BTreeMap<u32, MockRegion>,
    irqs: BTreeMap<u32, IrqInfo>,
    last_cap: Option<usize>,
    next_cap: usize,
    last_ext: Option<usize>,
    next_ext: usize,
    reset: bool,
}

impl MockBuilder {
    /// A PCI Express function (4 KiB config space) with INTA# and one INTx vector.
    pub fn new(vendor: u16, device: u16) -> Self {
        Self::with_config_size(vendor, device, 4096)
    }

    pub fn with_config_size(vendor: u16, device: u16, size: usize) -> Self {
        let mut cfg = vec![0u8; size];
        cfg[0..2].copy_from_slice(&vendor.to_le_bytes());
        cfg[2..4].copy_from_slice(&device.to_le_bytes());
        cfg[0x08] = 1;
        cfg[0x0b] = 0xff;
        cfg[0x3d] = 1;
        let mut b = MockBuilder {
            cfg,
            regions: BTreeMap::new(),
            irqs: BTreeMap::new(),
            last_cap: None,
            next_cap: 0x40,
            last_ext: None,
            next_ext: 0x100,
            reset: true,
        };
        b.irq(INTX_IRQ, 1);
        b
    }

    pub fn no_reset(&mut self) -> &mut Self {
        self.reset = false;
        self
    }

    pub fn config(&mut self, off: usize, bytes: &[u8]) -> &mut Self {
        self.cfg[off..off + bytes.len()].copy_from_slice(bytes);
        self
    }

    pub fn irq(&mut self, index: u32, count: u32) -> &mut Self {
        self.irqs.insert(
            index,
            IrqInfo {
                index,
                flags: VFIO_IRQ_INFO_EVENTFD,
                count,
            },
        );
        self
    }

    fn region(&mut self, index: u32, size: u64, flags: u32) {
        self.regions.insert(
            index,
            MockRegion {
                info: RegionInfo {
                    index,
                    flags,
                    size,
                    offset: u64::from(index) << 40,
                    sparse: None,
                    msix_mappable: false,
                },
                data: (0..size).map(|i| (i as u8) ^ (index as u8 * 16)).collect(),
            },
        );
    }

    /// A memory BAR (`is64`: 64-bit, taking two registers), mmappable.
    pub fn mem_bar(&mut self, i: usize, size: u64, is64: bool, prefetch: bool) -> &mut Self {
        let flags = (u32::from(is64) * 4) | (u32::from(prefetch) * 8);
        self.config(0x10 + 4 * i, &flags.to_le_bytes());
        self.region(i as u32, size, RW | VFIO_REGION_INFO_FLAG_MMAP);
        self
    }

    /// An I/O BAR.
    pub fn io_bar(&mut self, i: usize, size: u64) -> &mut Self {
        self.config(0x10 + 4 * i, &1u32.to_le_bytes());
        self.region(i as u32, size, RW);
        self
    }

    /// Restricts BAR `i`'s mmap to `areas` (the sparse-mmap capability).
    pub fn sparse(&mut self, i: usize, areas: &[(u64, u64)]) -> &mut Self {
        if let Some(r) = self.regions.get_mut(&(i as u32)) {
            r.info.flags |= VFIO_REGION_INFO_FLAG_CAPS;
            r.info.sparse = Some(
                areas
                    .iter()
                    .map(|&(offset, size)| SparseArea { offset, size })
                    .collect(),
            );
        }
        self
    }

    /// Takes the mmap flag away from BAR `i`.
    pub fn no_mmap(&mut self, i: usize) -> &mut Self {
        if let Some(r) = self.regions.get_mut(&(i as u32)) {
            r.info.flags &= !VFIO_REGION_INFO_FLAG_MMAP;
        }
        self
    }

    pub fn rom(&mut self, bytes: &[u8]) -> &mut Self {
        self.region(ROM_REGION, bytes.len() as u64, VFIO_REGION_INFO_FLAG_READ);
        if let Some(r) = self.regions.get_mut(&ROM_REGION) {
            r.data = bytes.to_vec();
        }
        self
    }

    /// A standard capability with `body` after its 2-byte header; returns its offset.
    pub fn cap(&mut self, id: u8, body: &[u8]) -> u16 {
        let off = self.next_cap;
        self.cfg[off] = id;
        self.cfg[off + 1] = 0;
        self.cfg[off + 2..off + 2 + body.len()].copy_from_slice(body);
        match self.last_cap {
            Some(p) => self.cfg[p + 1] = off as u8,
            None => {
                self.cfg[0x34] = off as u8;
                self.cfg[0x06] |= 0x10;
            }
        }
        self.last_cap = Some(off);
        self.next_cap = (off + 2 + body.len() + 3) & !3;
        off as u16
    }

    /// An MSI capability (`vectors` a power of two) with a VFIO MSI index of `vectors` vectors.
    pub fn msi(&mut self, vectors: u16, is64: bool, pvm: bool) -> u16 {
        let ctrl =
            (vectors.trailing_zeros() as u16) << 1 | u16::from(is64) << 7 | u16::from(pvm) << 8;
        let len = match (is64, pvm) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        };
        let mut body = vec![0u8; len - 2];
        body[..2].copy_from_slice(&ctrl.to_le_bytes());
        self.irq(MSI_IRQ, vectors.into());
        self.cap(0x05, &body)
    }

    /// An MSI-X capability with a VFIO MSI-X index of `vectors` vectors.
    pub fn msix(&mut self, vectors: u16, table: (usize, u32), pba: (usize, u32)) -> u16 {
        let mut body = vec![0u8; 10];
        body[..2].copy_from_slice(&(vectors - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table.1 | table.0 as u32).to_le_bytes());
        body[6..10].copy_from_slice(&(pba.1 | pba.0 as u32).to_le_bytes());
        self.irq(MSIX_IRQ, vectors.into());
        self.cap(0x11, &body)
    }

    /// An extended capability with `body` after its 4-byte header; returns its offset.
    pub fn ext_cap(&mut self, id: u16, body: &[u8]) -> u16 {
        let off = self.next_ext;
        let h = u32::from(id) | (1 << 16);
        self.cfg[off..off + 4].copy_from_slice(&h.to_le_bytes());
        self.cfg[off + 4..off + 4 + body.len()].copy_from_slice(body);
        if let Some(p) = self.last_ext {
            let ph = u32::from_le_bytes(self.cfg[p..p + 4].try_into().unwrap());
            let ph = (ph & 0xf_ffff) | ((off as u32) << 20);
            self.cfg[p..p + 4].copy_from_slice(&ph.to_le_bytes());
        }
        self.last_ext = Some(off);
        self.next_ext = (off + 4 + body.len() + 3) & !3;
        off as u16
    }

    pub fn build(&mut self) -> MockDevice {
        let mut regions = self.regions.clone();
        let cfg_len = self.cfg.len() as u64;
        regions.insert(
            CONFIG_REGION,
            MockRegion {
                info: RegionInfo {
                    index: CONFIG_REGION,
                    flags: RW,
                    size: cfg_len,
                    offset: u64::from(CONFIG_REGION) << 40,
                    sparse: None,
                    msix_mappable: false,
                },
                data: self.cfg.clone(),
            },
        );
        let mut flags = VFIO_DEVICE_FLAGS_PCI;
        if self.reset {
            flags |= VFIO_DEVICE_FLAGS_RESET;
        }
        MockDevice {
            state: Arc::new(Mutex::new(MockState {
                info: DeviceInfo {
                    flags,
                    num_regions: VFIO_PCI_NUM_REGIONS,
                    num_irqs: VFIO_PCI_NUM_IRQS,
                },
                regions,
                irqs: self.irqs.clone(),
                ..Default::default()
            })),
        }
    }
}

/// What the fake mapper holds.
#[derive(Debug, Default)]
pub(crate) struct MapperState {
    next: u32,
    /// Live mappings: slot -> (gpa, size, host).
    pub live: BTreeMap<u32, (u64, u64, usize)>,
    pub maps: u32,
    pub unmaps: u32,
    pub violations: Vec<String>,
    pub fail_map: bool,
    pub fail_unmap: bool,
}

/// A fake [`GuestMemoryMapper`] that checks alignment and overlaps.
#[derive(Debug, Default)]
pub(crate) struct MockMapper {
    pub state: Mutex<MapperState>,
}

impl MockMapper {
    pub fn st(&self) -> MutexGuard<'_, MapperState> {
        self.state.lock().unwrap()
    }

    /// Live mappings as (gpa, size), sorted.
    pub fn live(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.st().live.values().map(|&(g, s, _)| (g, s)).collect();
        v.sort_unstable();
        v
    }
}

impl GuestMemoryMapper for MockMapper {
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> Result<SlotHandle, MapperError> {
        let mut st = self.st();
        if st.fail_map {
            return Err("mapping refused".into());
        }
        let host = host as usize;
        if gpa % HOST_PAGE_SIZE != 0
            || size % HOST_PAGE_SIZE != 0
            || host as u64 % HOST_PAGE_SIZE != 0
            || size == 0
        {
            st.violations
                .push(format!("unaligned map {gpa:#x}+{size:#x} from {host:#x}"));
        }
        if st
            .live
            .values()
            .any(|&(g, s, _)| gpa < g + s && g < gpa + size)
        {
            st.violations.push(format!("overlapping map at {gpa:#x}"));
        }
        st.next += 1;
        let slot = st.next;
        st.live.insert(slot, (gpa, size, host));
        st.maps += 1;
        Ok(SlotHandle(slot))
    }

    fn unmap(&self, slot: SlotHandle) -> Result<(), MapperError> {
        let mut st = self.st();
        if st.fail_unmap {
            return Err("unmapping refused".into());
        }
        if st.live.remove(&slot.0).is_none() {
            st.violations
                .push(format!("unmap of unknown slot {slot:?}"));
        }
        st.unmaps += 1;
        Ok(())
    }
}
