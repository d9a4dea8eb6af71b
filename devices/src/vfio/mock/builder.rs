//! [`MockBuilder`]: lays out a fake device's config space, BARs, capabilities and interrupts.

use super::*;

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
    hot_reset_info: Option<Vec<HotResetDevice>>,
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
            hot_reset_info: None,
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

    /// What `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` answers: the functions a bus reset reaches,
    /// with their groups (without it: `ENODEV`, no bus reset).
    pub fn hot_reset_info(&mut self, devices: Vec<HotResetDevice>) -> &mut Self {
        self.hot_reset_info = Some(devices);
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
                hot_reset_info: self.hot_reset_info.clone(),
                ..Default::default()
            })),
        }
    }
}
