//! The passthrough function's configuration space: which bytes the model emulates (a shadow
//! [`ConfigSpace`] with its masks) and which go to the device through the VFIO config region.
//!
//! # Who owns which byte
//!
//! | Bytes | Owner |
//! |---|---|
//! | 0x00–0x3F header | shadow (identity from the device, read-only), except: |
//! | 0x04 command | shadow, and the whole register written through to the device after every guest write (I/O, memory, bus master, INTx disable…) |
//! | 0x06 status, 0x0C cache line size, 0x0D latency timer | device |
//! | 0x10–0x27 BARs, 0x30 ROM BAR | shadow: sizes and kinds from the device, placement by the platform; never written to the device |
//! | capability headers (ID and next pointer, standard and extended) | shadow, read-only, relinked to leave hidden capabilities out |
//! | MSI and MSI-X capability bodies | shadow (emulated with [`crate::pci::caps`]) |
//! | hidden extended capabilities (SR-IOV, ARI, Resizable BAR, VF Resizable BAR) | shadow: zeros, read-only |
//! | bytes past the config region (a conventional function's 0x100–0xFFF) | shadow: zeros |
//! | everything else | device (the kernel's vfio-pci filters what it must) |
//!
//! The multi-function bit of the header type is cleared: the guest sees one function.

use super::ops::{OpsError, RegionInfo, VfioDeviceOps, CONFIG_REGION};
use crate::pci::bar::NUM_BARS;
use crate::pci::config::{
    bar_offset, ConfigHeader, ConfigSpace, CACHE_LINE_SIZE, CAPABILITIES_POINTER, COMMAND,
    CONFIG_SPACE_SIZE, DEVICE_ID, EXT_CAP_START, HEADER_TYPE, INTERRUPT_PIN, LATENCY_TIMER,
    LEGACY_CONFIG_SIZE, STATUS, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID, VENDOR_ID,
};

/// Extended capability: SR-IOV (the guest must not create VFs on the host).
pub const EXT_CAP_SRIOV: u16 = 0x10;
/// Extended capability: Alternative Routing-ID Interpretation.
pub const EXT_CAP_ARI: u16 = 0x0e;
/// Extended capability: Resizable BAR (the platform owns BAR sizes).
pub const EXT_CAP_REBAR: u16 = 0x15;
/// Extended capability: VF Resizable BAR.
pub const EXT_CAP_VF_REBAR: u16 = 0x24;
/// The extended capabilities hidden from the guest.
pub const HIDDEN_EXT_CAPS: [u16; 4] = [EXT_CAP_SRIOV, EXT_CAP_ARI, EXT_CAP_REBAR, EXT_CAP_VF_REBAR];

const SRIOV_LEN: usize = 0x40;
const ARI_LEN: usize = 8;
/// Resizable BAR control register of the first entry: bits 7:5 hold the number of entries.
const REBAR_CTRL: usize = 8;
const HEADER_LEN: usize = 0x40;
/// Most errors logged per device; then they are counted silently.
const MAX_LOGGED_ERRORS: u32 = 16;

/// Who serves a config byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// The device, through the config region.
    Device,
    /// The shadow.
    Shadow,
}

/// Rate-limited logging of failed device accesses (a misbehaving device must not flood the
/// log from a guest loop).
#[derive(Debug)]
pub(crate) struct ErrorLog {
    name: String,
    count: u32,
}

impl ErrorLog {
    pub(crate) fn new(name: &str) -> Self {
        ErrorLog {
            name: name.to_string(),
            count: 0,
        }
    }

    pub(crate) fn log(&mut self, what: &str, e: &dyn std::fmt::Display) {
        self.count = self.count.saturating_add(1);
        if self.count <= MAX_LOGGED_ERRORS {
            log::warn!(
                "VFIO {}: {what}: {e}{}",
                self.name,
                if self.count == MAX_LOGGED_ERRORS {
                    " (further errors are not logged)"
                } else {
                    ""
                }
            );
        }
    }

    /// The device's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// How many errors were seen.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u32 {
        self.count
    }
}

/// One capability found on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap {
    /// Config offset.
    pub offset: u16,
    /// Capability ID.
    pub id: u16,
    /// Whether the guest sees it.
    pub visible: bool,
}

/// The config space model of a passthrough function.
pub(crate) struct VfioConfig {
    /// The emulated registers.
    pub shadow: ConfigSpace,
    owner: Box<[Owner]>,
    region: RegionInfo,
    std_caps: Vec<Cap>,
    ext_caps: Vec<Cap>,
    device_bars: [u32; NUM_BARS],
    errors: ErrorLog,
}

fn u16_at(raw: &[u8], at: u16) -> u16 {
    let at = usize::from(at);
    match raw.get(at..at + 2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]),
        None => 0,
    }
}

/// Errors from reading the device's config space.
#[derive(Debug, thiserror::Error)]
pub enum ConfigReadError {
    /// The config region is missing or unreadable.
    #[error("reading the device's config space: {0}")]
    Ops(#[from] OpsError),
    /// The config region is too small for a type-0 header.
    #[error("the device's config region is only {0} bytes")]
    TooSmall(u64),
    /// The device answers all ones: gone, or powered off.
    #[error("the device reads vendor ID 0xffff (it is not responding; is it powered on?)")]
    NotResponding,
    /// A bridge or CardBus header.
    #[error("the device has header type {0:#x}; only endpoints (type 0) can be passed through")]
    NotType0(u8),
}

impl VfioConfig {
    /// Reads the device's config space and builds the model: header and capability headers
    /// emulated, everything else passed through. BARs, MSI/MSI-X and hiding are added by the
    /// caller with [`VfioConfig::emulate`] and [`VfioConfig::hide_std_cap`] before
    /// [`VfioConfig::relink`].
    pub(crate) fn new(ops: &dyn VfioDeviceOps, name: &str) -> Result<Self, ConfigReadError> {
        let region = ops.region_info(CONFIG_REGION)?;
        if region.size < HEADER_LEN as u64 {
            return Err(ConfigReadError::TooSmall(region.size));
        }
        let len = region.size.min(CONFIG_SPACE_SIZE as u64) as usize;
        let mut raw = vec![0u8; len];
        ops.region_read(&region, 0, &mut raw)?;
        if u16_at(&raw, VENDOR_ID) == 0xffff {
            return Err(ConfigReadError::NotResponding);
        }
        let header_type = raw[usize::from(HEADER_TYPE)];
        if header_type & 0x7f != 0 {
            return Err(ConfigReadError::NotType0(header_type));
        }
        let class = u32::from_le_bytes([raw[9], raw[10], raw[11], 0]);
        let mut shadow = ConfigSpace::new(&ConfigHeader {
            vendor_id: u16_at(&raw, VENDOR_ID),
            device_id: u16_at(&raw, DEVICE_ID),
            revision_id: raw[8],
            class_code: class,
            subsystem_vendor_id: u16_at(&raw, SUBSYSTEM_VENDOR_ID),
            subsystem_id: u16_at(&raw, SUBSYSTEM_ID),
            interrupt_pin: raw[usize::from(INTERRUPT_PIN)],
        });
        // Everything else as the device has it (masks stay read-only), then the header fixups:
        // BARs and ROM BAR empty until declared, one function, decoding and bus mastering off.
        shadow.set_bytes(0, &raw);
        let device_bars = std::array::from_fn(|i| shadow.read_u32(bar_offset(i)));
        shadow.set_bytes(0x10, &[0; 24]);
        shadow.set_bytes(0x30, &[0; 4]);
        shadow.set_u8(HEADER_TYPE, header_type & 0x7f);
        shadow.set_u8(INTERRUPT_PIN, raw[usize::from(INTERRUPT_PIN)].min(4));
        shadow.set_u16(COMMAND, 0);

        let mut owner = vec![Owner::Device; CONFIG_SPACE_SIZE].into_boxed_slice();
        owner[len..].fill(Owner::Shadow);
        owner[..HEADER_LEN].fill(Owner::Shadow);
        owner[usize::from(STATUS)..usize::from(STATUS) + 2].fill(Owner::Device);
        owner[usize::from(CACHE_LINE_SIZE)] = Owner::Device;
        owner[usize::from(LATENCY_TIMER)] = Owner::Device;

        let mut cfg = VfioConfig {
            shadow,
            owner,
            region,
            std_caps: Vec::new(),
            ext_caps: Vec::new(),
            device_bars,
            errors: ErrorLog::new(name),
        };
        cfg.find_caps(len);
        Ok(cfg)
    }

    fn find_caps(&mut self, len: usize) {
        let mut seen = std::collections::BTreeSet::new();
        for (offset, id) in self.shadow.capabilities() {
            if !seen.insert(offset) {
                break;
            }
            self.emulate(offset, 2);
            self.std_caps.push(Cap {
                offset,
                id: id.into(),
                visible: true,
            });
        }
        if len <= LEGACY_CONFIG_SIZE {
            return;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (offset, id, _) in self.shadow.ext_capabilities() {
            if !seen.insert(offset) {
                break;
            }
            self.emulate(offset, 4);
            self.ext_caps.push(Cap {
                offset,
                id,
                visible: !HIDDEN_EXT_CAPS.contains(&id),
            });
        }
        // Hidden capabilities read as zeros and ignore writes.
        let mut starts: Vec<u16> = self.ext_caps.iter().map(|c| c.offset).collect();
        starts.sort_unstable();
        for cap in self.ext_caps.clone().iter().filter(|c| !c.visible) {
            let known = match cap.id {
                EXT_CAP_SRIOV => SRIOV_LEN,
                EXT_CAP_ARI => ARI_LEN,
                _ => {
                    let n = (self.shadow.read_u8(cap.offset + REBAR_CTRL as u16) >> 5) & 7;
                    4 + 8 * usize::from(n.clamp(1, 6))
                }
            };
            let next = starts
                .iter()
                .find(|&&s| s > cap.offset)
                .map_or(CONFIG_SPACE_SIZE, |&s| usize::from(s));
            let end = (usize::from(cap.offset) + known).min(next);
            let body = usize::from(cap.offset)..end;
            self.emulate(cap.offset, body.len());
            self.shadow.set_bytes(cap.offset, &vec![0; body.len()]);
            log::debug!(
                "VFIO {}: hiding extended capability {:#x} at {:#x}",
                self.errors.name,
                cap.id,
                cap.offset
            );
        }
    }

    /// The BAR registers as the device showed them (their flag bits give the BAR kinds).
    pub(crate) fn device_bar_registers(&self) -> [u32; NUM_BARS] {
        self.device_bars
    }

    /// Serves `[offset, offset + len)` from the shadow from now on.
    pub(crate) fn emulate(&mut self, offset: u16, len: usize) {
        let start = usize::from(offset).min(CONFIG_SPACE_SIZE);
        let end = start.saturating_add(len).min(CONFIG_SPACE_SIZE);
        self.owner[start..end].fill(Owner::Shadow);
    }

    /// The standard capabilities: `(offset, id)`, visible or not.
    pub(crate) fn std_caps(&self) -> &[Cap] {
        &self.std_caps
    }

    /// The extended capabilities.
    #[cfg(test)]
    pub(crate) fn ext_caps(&self) -> &[Cap] {
        &self.ext_caps
    }

    /// Hides the standard capability at `offset`: its `len` bytes read as zeros (the header
    /// included), and [`VfioConfig::relink`] leaves it out of the list.
    pub(crate) fn hide_std_cap(&mut self, offset: u16, len: usize) {
        if let Some(c) = self.std_caps.iter_mut().find(|c| c.offset == offset) {
            c.visible = false;
            self.emulate(offset, len);
            self.shadow.set_bytes(offset, &vec![0; len]);
            self.shadow.set_masks(offset, &vec![0; len], &vec![0; len]);
        }
    }

    /// Rewrites the next pointers of both capability lists so they link the visible
    /// capabilities only, in the device's order.
    pub(crate) fn relink(&mut self) {
        let visible: Vec<u16> = self
            .std_caps
            .iter()
            .filter(|c| c.visible)
            .map(|c| c.offset)
            .collect();
        self.shadow.set_u8(
            CAPABILITIES_POINTER,
            visible.first().map_or(0, |&o| o as u8),
        );
        for (i, &o) in visible.iter().enumerate() {
            let next = visible.get(i + 1).map_or(0, |&n| n as u8);
            self.shadow.set_u8(o + 1, next);
        }

        let Some(first) = self.ext_caps.first().copied() else {
            return;
        };
        let visible: Vec<Cap> = self
            .ext_caps
            .iter()
            .filter(|c| c.visible)
            .copied()
            .collect();
        let link = |h: u32, next: u16| (h & 0x000f_ffff) | (u32::from(next) << 20);
        if !first.visible {
            // 0x100 must hold a header: a null capability (ID 0) pointing at the first visible.
            let h = visible.first().map_or(0, |c| link(0, c.offset));
            self.shadow.set_u32(EXT_CAP_START, h);
        }
        for (i, c) in visible.iter().enumerate() {
            let next = visible.get(i + 1).map_or(0, |n| n.offset);
            let h = self.shadow.read_u32(c.offset);
            self.shadow.set_u32(c.offset, link(h, next));
        }
    }

    /// Failed device accesses so far.
    #[cfg(test)]
    pub(crate) fn error_count(&self) -> u32 {
        self.errors.count()
    }

    /// Splits `[offset, offset + len)` (clipped to the config space) into runs of one owner.
    fn runs(&self, offset: u16, len: usize) -> Vec<(usize, usize, Owner)> {
        let start = usize::from(offset);
        let mut out: Vec<(usize, usize, Owner)> = Vec::new();
        for i in 0..len {
            let Some(&o) = self.owner.get(start + i) else {
                break;
            };
            match out.last_mut() {
                Some((_, end, last)) if *last == o => *end = i + 1,
                _ => out.push((i, i + 1, o)),
            }
        }
        out
    }

    /// A guest read: emulated bytes from the shadow, the rest from the device (all ones if the
    /// device read fails). Bytes past the config space read all ones.
    pub(crate) fn read(&mut self, ops: &dyn VfioDeviceOps, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        for (s, e, owner) in self.runs(offset, data.len()) {
            let at = offset + s as u16;
            let piece = &mut data[s..e];
            if owner == Owner::Device {
                if let Err(err) = ops.region_read(&self.region, at.into(), piece) {
                    self.errors.log("config read", &err);
                    piece.fill(0xff);
                }
            } else {
                self.shadow.read(at, piece);
            }
        }
    }

    /// A guest write: emulated bytes through the shadow's masks, the rest to the device.
    /// Returns whether the command register was written (the caller then calls
    /// [`VfioConfig::write_command`], after anything that must happen before the device sees
    /// the new value).
    pub(crate) fn write(&mut self, ops: &dyn VfioDeviceOps, offset: u16, data: &[u8]) -> bool {
        let command = ConfigSpace::touches(offset, data.len(), COMMAND, 2);
        for (s, e, owner) in self.runs(offset, data.len()) {
            let at = offset + s as u16;
            let piece = &data[s..e];
            if owner == Owner::Device {
                if let Err(err) = ops.region_write(&self.region, at.into(), piece) {
                    self.errors.log("config write", &err);
                }
            } else {
                self.shadow.write(at, piece);
            }
        }
        command
    }

    /// Reads device bytes directly (not through the shadow).
    pub(crate) fn device_read(
        &self,
        ops: &dyn VfioDeviceOps,
        offset: u16,
        data: &mut [u8],
    ) -> Result<(), OpsError> {
        ops.region_read(&self.region, offset.into(), data)
    }

    /// Writes the shadow's command register to the device.
    pub(crate) fn write_command(&mut self, ops: &dyn VfioDeviceOps) {
        let cmd = self.shadow.command().to_le_bytes();
        if let Err(err) = ops.region_write(&self.region, COMMAND.into(), &cmd) {
            self.errors.log("command register write", &err);
        }
    }
}
