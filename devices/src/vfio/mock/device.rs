//! The fake VFIO device: regions, state and the `VfioDeviceOps` it answers.

use super::*;

/// One fake region: what `region_info` returns, and its bytes.
#[derive(Debug, Clone)]
pub struct MockRegion {
    /// What `region_info` reports. A test may change it (say, to report a forged size); the
    /// device keeps checking accesses against the size it was built with.
    pub info: RegionInfo,
    size: u64,
    /// The bytes given at build time (config space, ROM); past them, the pattern.
    pub(super) data: Vec<u8>,
    /// Bytes written past `data`.
    written: BTreeMap<u64, u8>,
}

impl MockRegion {
    pub(super) fn new(info: RegionInfo, data: Vec<u8>) -> Self {
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
    /// What `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` answers (`None`: `ENODEV`).
    pub hot_reset_info: Option<Vec<HotResetDevice>>,
    /// The group fds of every `VFIO_DEVICE_PCI_HOT_RESET`, in order.
    pub hot_resets: Vec<Vec<RawFd>>,
    /// Requests the model should never have made (see the module documentation).
    pub violations: Vec<String>,
    /// Make every `SET_IRQS` fail (`EINVAL`) from now on.
    pub fail_set_irqs: bool,
    /// Config ranges `[start, end)` no write may reach.
    pub(super) owned: Vec<(u16, u16)>,
    /// The power management control/status register.
    pub(super) pm_csr: Option<u16>,
    /// The interrupt index VFIO has enabled, with its eventfds.
    pub(super) active: Option<(u32, Vec<RawFd>)>,
    /// The INTx unmask eventfd.
    pub(super) unmask: Option<RawFd>,
    pub(super) strict: bool,
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
    pub(super) state: Arc<Mutex<MockState>>,
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

    fn hot_reset_info(&self) -> Result<Vec<HotResetDevice>, OpsError> {
        self.st().hot_reset_info.clone().ok_or(OpsError::Ioctl {
            what: "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO".into(),
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    fn hot_reset(&self, group_fds: &[RawFd]) -> Result<(), OpsError> {
        let mut st = self.st();
        if st.hot_reset_info.is_none() {
            st.violation("VFIO_DEVICE_PCI_HOT_RESET of a device without a bus reset".into());
        }
        st.hot_resets.push(group_fds.to_vec());
        Ok(())
    }
}
