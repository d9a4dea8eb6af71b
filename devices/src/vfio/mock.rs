//! Test doubles for the passthrough device model (feature `test-util`): a fake VFIO device
//! ([`MockDevice`], built with [`MockBuilder`]) with a config space, regions, capabilities and
//! interrupts, which records every `SET_IRQS`, region access and mmap; and a [`MockMapper`], the
//! [`GuestMemoryMapper`] that records the memory slots the model asks for.
//!
//! Both check the requests a correct model never makes and record each as a *violation*
//! ([`MockDevice::violations`], [`MapperState::violations`]), or panic on it in strict mode
//! ([`MockBuilder::strict`], [`MockMapper::strict`], for fuzzing). The fake device refuses:
//!
//! - a region access that is empty or reaches past the region, names a region the device did not
//!   report, or carries region info other than the device reported;
//! - a config write that reaches bytes the model owns: the header except command, status, cache
//!   line size and latency timer (so the BAR and ROM BAR registers), the headers of the
//!   capabilities the lists reach from 0x34 and 0x100, and the bodies of the first MSI and MSI-X
//!   capabilities (the model emulates them) — as far as the capabilities were added with
//!   [`MockBuilder::cap`] and friends;
//! - an mmap of a region without the mmap flag, unaligned, or outside the union of the region's
//!   mmap areas;
//! - `SET_IRQS` with more vectors than the device has for that index, a non-zero start, an
//!   unmask eventfd while INTx is off, or enabling one interrupt type while another is enabled
//!   (the kernel refuses that);
//! - `VFIO_DEVICE_RESET` of a device without reset support.
//!
//! Region contents are a pattern, `offset as u8 ^ (index << 4)`, except the config space and a
//! ROM given with [`MockBuilder::rom`]; writes are kept. The config space's status register
//! behaves as hardware's: read-only but for the error bits a write of 1 clears.
//!
//! ```
//! use std::sync::Arc;
//! use vfiovm_devices::interrupt::fake::FakeInterrupts;
//! use vfiovm_devices::pci::{BarAccess, PciDevice};
//! use vfiovm_devices::vfio::mock::{MockBuilder, MockMapper};
//! use vfiovm_devices::vfio::VfioPciDevice;
//!
//! let mut b = MockBuilder::new(0x8086, 0x1521);
//! b.mem_bar(0, 0x4000, false, false).msix(4, (0, 0x2000), (0, 0x3000));
//! let mock = b.build();
//! let mapper = Arc::new(MockMapper::default().backed_by(&mock));
//! let irq = FakeInterrupts::new();
//! let mut dev =
//!     VfioPciDevice::new("0000:06:0d.0", Box::new(mock.clone()), &irq, mapper.clone(), None)
//!         .unwrap();
//! let mut id = [0u8; 4];
//! dev.config_read(0, &mut id);
//! assert_eq!(u32::from_le_bytes(id), 0x1521_8086);
//! dev.config_write(0x10, &0xe000_0000u32.to_le_bytes()); // BAR 0: stays in the model
//! dev.config_write(0x04, &2u16.to_le_bytes()); // memory decoding on
//! dev.bar_moved(0, None, Some(0xe000_0000));
//! assert!(!mapper.live().is_empty(), "BAR 0's mmappable pages are guest memory");
//! assert!(mock.violations().is_empty());
//! ```

use std::collections::BTreeMap;
use std::os::unix::io::RawFd;
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
/// The MSI capability ID.
const MSI_ID: u8 = 0x05;
/// The MSI-X capability ID.
const MSIX_ID: u8 = 0x11;
/// The power management capability ID.
const PM_ID: u8 = 0x01;
/// The largest region the fake device mmaps (the mapping is real, if untouched).
const MAX_MMAP: u64 = 1 << 32;

/// A byte of a region that holds the pattern: `offset as u8 ^ (index << 4)`.
pub fn pattern(index: u32, offset: u64) -> u8 {
    (offset as u8) ^ ((index as u8) << 4)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One fake region: what `region_info` returns, and its bytes.
#[derive(Debug, Clone)]
pub struct MockRegion {
    /// What `region_info` reports. A test may change it (say, to report a forged size); the
    /// device keeps checking accesses against the size it was built with.
    pub info: RegionInfo,
    size: u64,
    /// The bytes given at build time (config space, ROM); past them, the pattern.
    data: Vec<u8>,
    /// Bytes written past `data`.
    written: BTreeMap<u64, u8>,
}

impl MockRegion {
    fn new(info: RegionInfo, data: Vec<u8>) -> Self {
        MockRegion {
            size: info.size,
            info,
            data,
            written: BTreeMap::new(),
        }
    }

    fn byte(&self, at: u64) -> u8 {
        match (self.written.get(&at), usize::try_from(at).ok()) {
            (Some(&b), _) => b,
            (None, Some(i)) if i < self.data.len() => self.data[i],
            _ => pattern(self.info.index, at),
        }
    }

    /// Reads `buf.len()` bytes from `offset` (inside the region): the given bytes, the pattern
    /// past them, then what was written over either.
    fn read(&self, offset: u64, buf: &mut [u8]) {
        let given = usize::try_from(offset)
            .ok()
            .and_then(|o| self.data.get(o..))
            .unwrap_or(&[]);
        let n = given.len().min(buf.len());
        buf[..n].copy_from_slice(&given[..n]);
        // The pattern repeats every 256 bytes: copy it a row at a time (fuzzed ROMs are large).
        let row: [u8; 256] = std::array::from_fn(|i| pattern(self.info.index, i as u64));
        let mut i = n;
        while i < buf.len() {
            let start = (offset.wrapping_add(i as u64) & 0xff) as usize;
            let k = (256 - start).min(buf.len() - i);
            buf[i..i + k].copy_from_slice(&row[start..start + k]);
            i += k;
        }
        let end = offset + buf.len() as u64;
        for (&at, &v) in self.written.range(offset..end) {
            buf[(at - offset) as usize] = v;
        }
    }

    fn set_byte(&mut self, at: u64, v: u8) {
        match usize::try_from(at).ok().filter(|&i| i < self.data.len()) {
            Some(i) => self.data[i] = v,
            None => {
                self.written.insert(at, v);
            }
        }
    }
}

/// One mmap the device handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockMmap {
    /// VFIO region index (BAR n is region n).
    pub region: u32,
    /// Offset into the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host address of the first byte.
    pub host: usize,
}

/// Everything the fake device holds and records; lock it with [`MockDevice::st`] to inspect it
/// or to change what the device does next.
#[derive(Debug, Default)]
pub struct MockState {
    /// What `device_info` returns.
    pub info: DeviceInfo,
    /// The regions by index, the config space ([`CONFIG_REGION`]) included.
    pub regions: BTreeMap<u32, MockRegion>,
    /// What `irq_info` returns, by interrupt index (an index not here has no vectors).
    pub irqs: BTreeMap<u32, IrqInfo>,
    /// Every `SET_IRQS` request, in order (the failed ones too).
    pub set_irqs: Vec<SetIrqs>,
    /// Every successful region write: (region, offset, bytes).
    pub writes: Vec<(u32, u64, Vec<u8>)>,
    /// Every successful region read: (region, offset, len).
    pub reads: Vec<(u32, u64, usize)>,
    /// Every mmap: (region, offset, size, host address).
    pub mmaps: Vec<(u32, u64, u64, usize)>,
    /// Number of `VFIO_DEVICE_RESET`s.
    pub resets: u32,
    /// Requests the model should never have made (see the module documentation).
    pub violations: Vec<String>,
    /// Make every `SET_IRQS` fail (`EINVAL`) from now on.
    pub fail_set_irqs: bool,
    /// Config ranges `[start, end)` no write may reach.
    owned: Vec<(u16, u16)>,
    /// The power management control/status register.
    pm_csr: Option<u16>,
    /// The interrupt index VFIO has enabled, with its eventfds.
    active: Option<(u32, Vec<RawFd>)>,
    /// The INTx unmask eventfd.
    unmask: Option<RawFd>,
    strict: bool,
}

impl MockState {
    fn violation(&mut self, what: String) {
        if self.strict {
            panic!("fake VFIO device: {what}");
        }
        self.violations.push(what);
    }

    /// Number of vectors of interrupt index `index` (none unless it supports eventfds).
    fn irq_count(&self, index: u32) -> usize {
        if index >= self.info.num_irqs {
            return 0;
        }
        self.irqs
            .get(&index)
            .filter(|i| i.flags & VFIO_IRQ_INFO_EVENTFD != 0)
            .map_or(0, |i| i.count as usize)
    }
}

/// The fake VFIO device; clones share state (keep one to inspect what the model did).
#[derive(Debug, Clone, Default)]
pub struct MockDevice {
    state: Arc<Mutex<MockState>>,
}

impl MockDevice {
    /// Locks the device's state.
    pub fn st(&self) -> MutexGuard<'_, MockState> {
        lock(&self.state)
    }

    /// The little-endian dword at `off` of the config bytes the device holds now.
    pub fn config_u32(&self, off: usize) -> u32 {
        let st = self.st();
        let r = &st.regions[&CONFIG_REGION];
        u32::from_le_bytes(std::array::from_fn(|i| r.byte((off + i) as u64)))
    }

    /// The config writes the device received at offsets in `range`: (offset, bytes).
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

    /// The requests the model should never have made, so far.
    pub fn violations(&self) -> Vec<String> {
        self.st().violations.clone()
    }

    /// The interrupt index VFIO runs now with the eventfds it signals, and the INTx unmask
    /// eventfd.
    pub fn active_irqs(&self) -> (Option<(u32, Vec<RawFd>)>, Option<RawFd>) {
        let st = self.st();
        (st.active.clone(), st.unmask)
    }

    /// The power state (0 = D0 .. 3 = D3hot) in the device's power management control
    /// register, if it has a PM capability.
    pub fn power_state(&self) -> Option<u8> {
        let st = self.st();
        let csr = st.pm_csr?;
        Some(st.regions[&CONFIG_REGION].byte(csr.into()) & 3)
    }

    /// The latest mmap that contains host memory `[host, host + size)`.
    pub fn mmap_containing(&self, host: usize, size: u64) -> Option<MockMmap> {
        self.st()
            .mmaps
            .iter()
            .rev()
            .map(|&(region, offset, size, host)| MockMmap {
                region,
                offset,
                size,
                host,
            })
            .find(|m| {
                host >= m.host
                    && (host as u64).checked_add(size).is_some()
                    && ((host - m.host) as u64).checked_add(size) <= Some(m.size)
            })
    }

    fn check(
        st: &mut MockState,
        region: &RegionInfo,
        offset: u64,
        len: u64,
    ) -> Result<(), OpsError> {
        let Some(r) = st.regions.get(&region.index) else {
            st.violation(format!("access to missing region {}", region.index));
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "access",
            });
        };
        let size = r.size;
        if r.info != *region {
            let reported = r.info.clone();
            st.violation(format!(
                "access with region info the device never reported: {region:x?}, not {reported:x?}"
            ));
        }
        if offset.checked_add(len).is_none_or(|e| e > size) || len == 0 {
            st.violation(format!(
                "region {} access {offset:#x}+{len:#x} past {size:#x}",
                region.index
            ));
            return Err(OpsError::OutOfRange {
                index: region.index,
                offset,
                len,
                size,
            });
        }
        Ok(())
    }
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
        Self::check(&mut st, region, offset, data.len() as u64)?;
        if region.index != CONFIG_REGION && !region.readable() {
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "read",
            });
        }
        st.reads.push((region.index, offset, data.len()));
        st.regions[&region.index].read(offset, data);
        Ok(())
    }

    fn region_write(&self, region: &RegionInfo, offset: u64, data: &[u8]) -> Result<(), OpsError> {
        let mut st = self.st();
        Self::check(&mut st, region, offset, data.len() as u64)?;
        let config = region.index == CONFIG_REGION;
        if config {
            let end = offset + data.len() as u64;
            let owned = st
                .owned
                .iter()
                .find(|&&(s, e)| end > u64::from(s) && offset < u64::from(e))
                .copied();
            if let Some((s, e)) = owned {
                st.violation(format!(
                    "config write {offset:#x}+{} reached model-owned bytes {s:#x}..{e:#x}",
                    data.len()
                ));
            }
        } else if !region.writable() {
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "write",
            });
        }
        if let Some(r) = st.regions.get_mut(&region.index) {
            for (i, &v) in data.iter().enumerate() {
                let at = offset + i as u64;
                let v = match at {
                    // Status: read-only, except the error bits a write of 1 clears (as the
                    // hardware and vfio-pci's virtualization have it).
                    0x06 if config => r.byte(at),
                    0x07 if config => r.byte(at) & !(v & 0xf9),
                    _ => v,
                };
                r.set_byte(at, v);
            }
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
        Self::check(&mut st, region, offset, size)?;
        if !region.mmappable() {
            st.violation(format!(
                "mmap of region {}, which has no mmap flag",
                region.index
            ));
        }
        if offset % HOST_PAGE_SIZE != 0 || size % HOST_PAGE_SIZE != 0 {
            st.violation(format!(
                "unaligned mmap {offset:#x}+{size:#x} of region {}",
                region.index
            ));
        }
        if !covered(&region.mmap_areas(), offset, offset + size) {
            st.violation(format!(
                "mmap {offset:#x}+{size:#x} of region {} outside its mmap areas {:x?}",
                region.index,
                region.mmap_areas()
            ));
        }
        let fail = |source| OpsError::Mmap {
            index: region.index,
            offset,
            size,
            source,
        };
        if size > MAX_MMAP {
            return Err(fail(vm_memory::mmap::MmapRegionError::InvalidPointer));
        }
        let m = MmapRegion::new(size as usize).map_err(fail)?;
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
        match request {
            SetIrqs::Trigger { index, start, fds } => {
                let max = st.irq_count(*index);
                if *start != 0 || fds.len() > max {
                    st.violation(format!(
                        "SET_IRQS trigger of index {index} vectors {start}+{} (device has {max})",
                        fds.len()
                    ));
                }
                if !fds.is_empty() {
                    if let Some((other, _)) = st.active {
                        st.violation(format!(
                            "SET_IRQS enables index {index} while index {other} is enabled"
                        ));
                    }
                    st.active = Some((*index, fds.clone()));
                }
            }
            SetIrqs::UnmaskFd { index, start, fd } => {
                if *index != INTX_IRQ || *start != 0 {
                    st.violation(format!(
                        "SET_IRQS unmask-fd on index {index} vector {start}"
                    ));
                }
                if !matches!(st.active, Some((INTX_IRQ, _))) {
                    st.violation("INTx unmask eventfd set while INTx is not enabled".into());
                }
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

    fn reset(&self) -> Result<(), OpsError> {
        let mut st = self.st();
        if !st.info.supports_reset() {
            st.violation("VFIO_DEVICE_RESET of a device without reset support".into());
        }
        st.resets += 1;
        Ok(())
    }
}

/// Builds a fake device: a type-0 header, BARs, capabilities, ROM and interrupts.
///
/// Capabilities are laid out one after the other from 0x40 (standard, linked from 0x34) and
/// from 0x100 (extended), each dword-aligned; [`MockBuilder::try_cap`] and
/// [`MockBuilder::try_ext_cap`] can leave gaps and refuse what does not fit.
#[derive(Debug, Clone)]
pub struct MockBuilder {
    cfg: Vec<u8>,
    regions: BTreeMap<u32, MockRegion>,
    irqs: BTreeMap<u32, IrqInfo>,
    last_cap: Option<usize>,
    /// The end of the last standard capability (aligned when the next one is placed).
    next_cap: usize,
    last_ext: Option<usize>,
    next_ext: usize,
    /// The extended capabilities built so far are not reachable from 0x100.
    ext_unlinked: bool,
    seen_msi: bool,
    seen_msix: bool,
    /// Model-owned config ranges `[start, end)`, each with the offset of the capability it
    /// belongs to (`None`: the header), kept at build time if the lists still reach it.
    owned: Vec<(Option<u16>, u16, u16)>,
    pm_csr: Option<u16>,
    reset: bool,
    info: Option<DeviceInfo>,
    strict: bool,
    fail_set_irqs: bool,
}

impl MockBuilder {
    /// A PCI Express function (4 KiB config space) with INTA# and one INTx vector.
    pub fn new(vendor: u16, device: u16) -> Self {
        Self::with_config_size(vendor, device, 4096)
    }

    /// A function with a config space of `size` bytes (256: conventional PCI), INTA# and one
    /// INTx vector: vendor and device ID, revision 1, class 0xff and interrupt pin 1 (those
    /// that fit).
    pub fn with_config_size(vendor: u16, device: u16, size: usize) -> Self {
        let mut b = MockBuilder {
            cfg: vec![0u8; size],
            regions: BTreeMap::new(),
            irqs: BTreeMap::new(),
            last_cap: None,
            next_cap: 0x40,
            last_ext: None,
            next_ext: 0x100,
            ext_unlinked: false,
            seen_msi: false,
            seen_msix: false,
            // The header: everything below 0x40 but command, status, cache line size and
            // latency timer is the model's.
            owned: vec![(None, 0x00, 0x04), (None, 0x08, 0x0c), (None, 0x0e, 0x40)],
            pm_csr: None,
            reset: true,
            info: None,
            strict: false,
            fail_set_irqs: false,
        };
        b.config(0, &vendor.to_le_bytes());
        b.config(2, &device.to_le_bytes());
        b.config(0x08, &[1]);
        b.config(0x0b, &[0xff]);
        b.config(0x3d, &[1]);
        b.irq(INTX_IRQ, 1);
        b
    }

    /// The device panics on every violation instead of recording it (for fuzzing).
    pub fn strict(&mut self) -> &mut Self {
        self.strict = true;
        self
    }

    /// Every `SET_IRQS` fails (as [`MockState::fail_set_irqs`]).
    pub fn fail_set_irqs(&mut self) -> &mut Self {
        self.fail_set_irqs = true;
        self
    }

    /// The device does not support `VFIO_DEVICE_RESET`.
    pub fn no_reset(&mut self) -> &mut Self {
        self.reset = false;
        self
    }

    /// What `device_info` reports, instead of a PCI device with `num_regions` and `num_irqs`
    /// of vfio-pci (and reset support unless [`MockBuilder::no_reset`]).
    pub fn device_info(&mut self, info: DeviceInfo) -> &mut Self {
        self.info = Some(info);
        self
    }

    /// Sets config bytes from `off`; bytes past the end of the config space are dropped.
    pub fn config(&mut self, off: usize, bytes: &[u8]) -> &mut Self {
        for (i, &b) in bytes.iter().enumerate() {
            if let Some(c) = off.checked_add(i).and_then(|at| self.cfg.get_mut(at)) {
                *c = b;
            }
        }
        self
    }

    /// Interrupt index `index` with `count` eventfd-capable vectors.
    pub fn irq(&mut self, index: u32, count: u32) -> &mut Self {
        self.irq_with_flags(index, count, VFIO_IRQ_INFO_EVENTFD)
    }

    /// Interrupt index `index` with `count` vectors and `VFIO_IRQ_INFO_*` `flags` (without
    /// `VFIO_IRQ_INFO_EVENTFD` it has no usable vectors).
    pub fn irq_with_flags(&mut self, index: u32, count: u32, flags: u32) -> &mut Self {
        self.irqs.insert(
            index,
            IrqInfo {
                index,
                flags,
                count,
            },
        );
        self
    }

    /// Region `index` of `size` bytes with `VFIO_REGION_INFO_FLAG_*` `flags`, holding the
    /// pattern; the config space's BAR register is left alone.
    pub fn region(&mut self, index: u32, size: u64, flags: u32) -> &mut Self {
        let info = RegionInfo {
            index,
            flags,
            size,
            offset: u64::from(index) << 40,
            sparse: None,
            msix_mappable: false,
        };
        self.regions
            .insert(index, MockRegion::new(info, Vec::new()));
        self
    }

    /// A memory BAR (`is64`: 64-bit, taking two registers), mmappable.
    pub fn mem_bar(&mut self, i: usize, size: u64, is64: bool, prefetch: bool) -> &mut Self {
        let flags = (u32::from(is64) * 4) | (u32::from(prefetch) * 8);
        self.config(0x10 + 4 * i, &flags.to_le_bytes());
        self.region(i as u32, size, RW | VFIO_REGION_INFO_FLAG_MMAP)
    }

    /// An I/O BAR.
    pub fn io_bar(&mut self, i: usize, size: u64) -> &mut Self {
        self.config(0x10 + 4 * i, &1u32.to_le_bytes());
        self.region(i as u32, size, RW)
    }

    /// Restricts BAR `i`'s mmap to `areas`, each `(offset, size)` (the sparse-mmap capability).
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

    /// Marks BAR `i` as one whose MSI-X table may be mmapped (the MSI-X mappable capability).
    pub fn msix_mappable(&mut self, i: usize) -> &mut Self {
        if let Some(r) = self.regions.get_mut(&(i as u32)) {
            r.info.msix_mappable = true;
        }
        self
    }

    /// A read-only ROM region holding `bytes`.
    pub fn rom(&mut self, bytes: &[u8]) -> &mut Self {
        self.region(ROM_REGION, bytes.len() as u64, VFIO_REGION_INFO_FLAG_READ);
        if let Some(r) = self.regions.get_mut(&ROM_REGION) {
            r.data = bytes.to_vec();
        }
        self
    }

    /// A standard capability with `body` after its 2-byte header; returns its offset.
    ///
    /// # Panics
    ///
    /// If it does not fit below 0x100 and in the config space.
    pub fn cap(&mut self, id: u8, body: &[u8]) -> u16 {
        self.try_cap(id, body, 0)
            .unwrap_or_else(|| panic!("capability {id:#x} does not fit"))
    }

    /// A standard capability with `body` after its 2-byte header, at least `gap` bytes after
    /// the previous one; returns its offset, or `None` if it does not fit below 0x100 and in the
    /// config space.
    pub fn try_cap(&mut self, id: u8, body: &[u8], gap: usize) -> Option<u16> {
        let off = (self.next_cap + gap + 3) & !3;
        if off + 2 + body.len() > self.cfg.len().min(0x100) {
            return None;
        }
        self.config(off, &[id, 0]);
        self.config(off + 2, body);
        match self.last_cap {
            Some(p) => self.cfg[p + 1] = off as u8,
            None => {
                self.config(0x34, &[off as u8]);
                if let Some(status) = self.cfg.get_mut(0x06) {
                    *status |= 0x10;
                }
            }
        }
        self.last_cap = Some(off);
        self.next_cap = off + 2 + body.len();
        let at = Some(off as u16);
        self.owned.push((at, off as u16, off as u16 + 2));
        // The model emulates the first MSI and the first MSI-X capability in the list.
        let first = match id {
            MSI_ID => !std::mem::replace(&mut self.seen_msi, true),
            MSIX_ID => !std::mem::replace(&mut self.seen_msix, true),
            _ => false,
        };
        if first {
            self.owned
                .push((at, off as u16, (off + 2 + body.len()) as u16));
        }
        if id == PM_ID && self.pm_csr.is_none() {
            self.pm_csr = Some(off as u16 + 4);
        }
        Some(off as u16)
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
        self.cap(MSI_ID, &body)
    }

    /// An MSI-X capability with a VFIO MSI-X index of `vectors` vectors; `table` and `pba` are
    /// `(BAR, offset)`.
    pub fn msix(&mut self, vectors: u16, table: (usize, u32), pba: (usize, u32)) -> u16 {
        let mut body = vec![0u8; 10];
        body[..2].copy_from_slice(&(vectors - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table.1 | table.0 as u32).to_le_bytes());
        body[6..10].copy_from_slice(&(pba.1 | pba.0 as u32).to_le_bytes());
        self.irq(MSIX_IRQ, vectors.into());
        self.cap(MSIX_ID, &body)
    }

    /// An extended capability with `body` after its 4-byte header; returns its offset.
    ///
    /// # Panics
    ///
    /// If it does not fit in the config space.
    pub fn ext_cap(&mut self, id: u16, body: &[u8]) -> u16 {
        self.try_ext_cap(id, body, 0, true)
            .unwrap_or_else(|| panic!("extended capability {id:#x} does not fit"))
    }

    /// An extended capability (version 1) with `body` after its 4-byte header, at least `gap`
    /// bytes after the previous one; returns its offset, or `None` if it does not fit.
    ///
    /// The list starts at 0x100 whatever happens. If the first capability lands past 0x100,
    /// `null_head` puts a null capability (ID 0) at 0x100 that points at it, as some devices
    /// have; without it 0x100 reads zero, so the device has no extended capabilities and the
    /// ones built here are device-specific bytes nothing links to (none of them model-owned).
    pub fn try_ext_cap(
        &mut self,
        id: u16,
        body: &[u8],
        gap: usize,
        null_head: bool,
    ) -> Option<u16> {
        let off = (self.next_ext + gap + 3) & !3;
        if self.cfg.len() <= 0x100 || off + 4 + body.len() > self.cfg.len() {
            return None;
        }
        if self.last_ext.is_none() && off != 0x100 {
            if null_head {
                self.config(0x100, &((off as u32) << 20).to_le_bytes());
                self.owned.push((Some(0x100), 0x100, 0x104));
            } else {
                self.ext_unlinked = true;
            }
        }
        let h = u32::from(id) | (1 << 16);
        self.config(off, &h.to_le_bytes());
        self.config(off + 4, body);
        if let Some(p) = self.last_ext {
            let ph = u32::from_le_bytes(std::array::from_fn(|i| self.cfg[p + i]));
            let ph = (ph & 0xf_ffff) | ((off as u32) << 20);
            self.config(p, &ph.to_le_bytes());
        }
        self.last_ext = Some(off);
        self.next_ext = off + 4 + body.len();
        if !self.ext_unlinked {
            self.owned
                .push((Some(off as u16), off as u16, off as u16 + 4));
        }
        Some(off as u16)
    }

    /// The config ranges `[start, end)` the model owns: the header's, and those of the
    /// capabilities added here that the lists from 0x34 and 0x100 reach in the config space as
    /// it is now (a test may have rewritten a link with [`MockBuilder::config`]). No write may
    /// reach them.
    pub fn owned_config(&self) -> Vec<(u16, u16)> {
        let reached = self.reachable_caps();
        self.owned
            .iter()
            .filter(|(cap, _, _)| cap.is_none_or(|c| reached.contains(&c)))
            .map(|&(_, s, e)| (s, e))
            .collect()
    }

    /// The offsets of the capabilities the standard list (from 0x34) and the extended list
    /// (from 0x100) reach.
    fn reachable_caps(&self) -> std::collections::BTreeSet<u16> {
        let byte = |at: usize| self.cfg.get(at).copied().unwrap_or(0);
        let mut seen = std::collections::BTreeSet::new();
        let mut at = usize::from(byte(0x34) & !3);
        while at >= 0x40 && at < self.cfg.len() && seen.insert(at as u16) {
            at = usize::from(byte(at + 1) & !3);
        }
        let mut at = 0x100;
        while at + 4 <= self.cfg.len() {
            let h = u32::from_le_bytes(std::array::from_fn(|i| byte(at + i)));
            if h == 0 || !seen.insert(at as u16) {
                break;
            }
            at = (h >> 20) as usize & !3;
            if at < 0x100 {
                break;
            }
        }
        seen
    }

    /// The device (the builder can build more, each with its own state).
    pub fn build(&mut self) -> MockDevice {
        let mut regions = self.regions.clone();
        let info = RegionInfo {
            index: CONFIG_REGION,
            flags: RW,
            size: self.cfg.len() as u64,
            offset: u64::from(CONFIG_REGION) << 40,
            sparse: None,
            msix_mappable: false,
        };
        regions.insert(CONFIG_REGION, MockRegion::new(info, self.cfg.clone()));
        let mut flags = VFIO_DEVICE_FLAGS_PCI;
        if self.reset {
            flags |= VFIO_DEVICE_FLAGS_RESET;
        }
        MockDevice {
            state: Arc::new(Mutex::new(MockState {
                info: self.info.unwrap_or(DeviceInfo {
                    flags,
                    num_regions: VFIO_PCI_NUM_REGIONS,
                    num_irqs: VFIO_PCI_NUM_IRQS,
                }),
                regions,
                irqs: self.irqs.clone(),
                fail_set_irqs: self.fail_set_irqs,
                owned: self.owned_config(),
                pm_csr: self
                    .pm_csr
                    .filter(|&csr| self.reachable_caps().contains(&(csr - 4))),
                strict: self.strict,
                ..Default::default()
            })),
        }
    }
}

/// What the fake mapper holds and records; lock it with [`MockMapper::st`].
#[derive(Debug, Default)]
pub struct MapperState {
    next: u32,
    /// Live mappings: slot -> (gpa, size, host address).
    pub live: BTreeMap<u32, (u64, u64, usize)>,
    /// Number of successful maps.
    pub maps: u32,
    /// Number of unmaps.
    pub unmaps: u32,
    /// Requests the model should never have made.
    pub violations: Vec<String>,
    /// Make every map fail from now on (the VMM ran out of memory slots).
    pub fail_map: bool,
    /// Make every unmap fail from now on.
    pub fail_unmap: bool,
    /// The device mmap behind each live slot (with [`MockMapper::backed_by`]).
    origins: BTreeMap<u32, MockMmap>,
}

/// A live slot of a [`MockMapper`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockSlot {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The host address mapped there.
    pub host: usize,
    /// The device mmap the host memory belongs to (with [`MockMapper::backed_by`]).
    pub mmap: Option<MockMmap>,
}

impl MockSlot {
    /// The offset into its region of the slot's first byte (with [`MockMapper::backed_by`]).
    pub fn region_offset(&self) -> Option<u64> {
        let m = self.mmap?;
        Some(m.offset + (self.host - m.host) as u64)
    }
}

/// A fake [`GuestMemoryMapper`] (the KVM memory slots a passthrough device asks for to put its
/// BAR mmaps into the guest). It refuses empty, unaligned or wrapping slots, a slot overlapping a
/// live one, and unmapping a slot that is not live; optionally a slot overlapping guest RAM
/// ([`MockMapper::guest_ram`]), outside the MMIO windows ([`MockMapper::windows`]) or whose host
/// memory is not a device mmap ([`MockMapper::backed_by`]).
#[derive(Debug, Default)]
pub struct MockMapper {
    state: Mutex<MapperState>,
    ram: Vec<(u64, u64)>,
    windows: Option<Vec<(u64, u64)>>,
    device: Option<MockDevice>,
    strict: bool,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

impl MockMapper {
    /// Panics on every violation instead of recording it (for fuzzing).
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Refuses slots overlapping guest RAM `ram`, each `(start, size)`.
    pub fn guest_ram(mut self, ram: Vec<(u64, u64)>) -> Self {
        self.ram = ram;
        self
    }

    /// Refuses slots outside the MMIO windows `windows`, each `(start, size)`.
    pub fn windows(mut self, windows: Vec<(u64, u64)>) -> Self {
        self.windows = Some(windows);
        self
    }

    /// Refuses slots whose host memory is not inside an mmap `device` handed out, and records
    /// which mmap each slot maps ([`MockSlot::mmap`]).
    pub fn backed_by(mut self, device: &MockDevice) -> Self {
        self.device = Some(device.clone());
        self
    }

    /// Locks the mapper's state.
    pub fn st(&self) -> MutexGuard<'_, MapperState> {
        lock(&self.state)
    }

    /// Live mappings as (gpa, size), sorted.
    pub fn live(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.st().live.values().map(|&(g, s, _)| (g, s)).collect();
        v.sort_unstable();
        v
    }

    /// The live slots.
    pub fn slots(&self) -> Vec<MockSlot> {
        let st = self.st();
        st.live
            .iter()
            .map(|(k, &(gpa, size, host))| MockSlot {
                gpa,
                size,
                host,
                mmap: st.origins.get(k).copied(),
            })
            .collect()
    }

    fn violation(&self, st: &mut MapperState, what: String) {
        if self.strict {
            panic!("fake memory mapper: {what}");
        }
        st.violations.push(what);
    }
}

impl GuestMemoryMapper for MockMapper {
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> Result<SlotHandle, MapperError> {
        let host = host as usize;
        let origin = self.device.as_ref().map(|d| d.mmap_containing(host, size));
        let mut st = self.st();
        if gpa % HOST_PAGE_SIZE != 0
            || size % HOST_PAGE_SIZE != 0
            || host as u64 % HOST_PAGE_SIZE != 0
            || size == 0
        {
            self.violation(
                &mut st,
                format!("unaligned or empty map {gpa:#x}+{size:#x} from {host:#x}"),
            );
        }
        if gpa.checked_add(size).is_none() {
            self.violation(&mut st, format!("map {gpa:#x}+{size:#x} wraps around"));
        }
        if let Some(r) = self.ram.iter().find(|&&r| overlaps((gpa, size), r)) {
            let what = format!(
                "map {gpa:#x}+{size:#x} overlaps guest RAM {:#x}+{:#x}",
                r.0, r.1
            );
            self.violation(&mut st, what);
        }
        if let Some(w) = &self.windows {
            if !w.iter().any(|&(s, l)| gpa >= s && gpa - s + size <= l) {
                let what = format!("map {gpa:#x}+{size:#x} is outside the MMIO windows {w:x?}");
                self.violation(&mut st, what);
            }
        }
        if origin == Some(None) {
            self.violation(
                &mut st,
                format!("map {gpa:#x}+{size:#x} of host {host:#x}, which is no mmap of the device"),
            );
        }
        if let Some(&(g, s, _)) = st
            .live
            .values()
            .find(|&&(g, s, _)| overlaps((gpa, size), (g, s)))
        {
            self.violation(
                &mut st,
                format!("map {gpa:#x}+{size:#x} overlaps the live slot {g:#x}+{s:#x}"),
            );
        }
        if st.fail_map {
            return Err("mapping refused".into());
        }
        st.next += 1;
        let slot = st.next;
        st.live.insert(slot, (gpa, size, host));
        if let Some(Some(m)) = origin {
            st.origins.insert(slot, m);
        }
        st.maps += 1;
        Ok(SlotHandle(slot))
    }

    fn unmap(&self, slot: SlotHandle) -> Result<(), MapperError> {
        let mut st = self.st();
        if st.fail_unmap {
            return Err("unmapping refused".into());
        }
        st.origins.remove(&slot.0);
        if st.live.remove(&slot.0).is_none() {
            self.violation(&mut st, format!("unmap of unknown slot {slot:?}"));
        }
        st.unmaps += 1;
        Ok(())
    }
}
