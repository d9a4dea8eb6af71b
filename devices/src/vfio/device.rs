//! [`VfioPciDevice`]: a host PCI function passed through to the guest, as a [`PciDevice`] and
//! [`BarAccess`] the platform drives.
//!
//! The device model is in four parts: the config space ([`super::config`]: shadowed header,
//! BARs, ROM and capabilities, the rest passed through), the BARs ([`super::bars`]: mmapped
//! areas become guest memory, the rest traps into region reads and writes), the interrupts
//! ([`super::irqs`]: MSI, MSI-X and INTx wired eventfd → irqfd) and the ROM (the device's, or
//! a file's bytes, served from memory).
//!
//! # Hostile guests
//!
//! Config offsets are bounded by the 4 KiB config space and the config region's size, BAR
//! offsets by the BAR's size and its region's size, MSI-X table accesses by the table, vector
//! counts by what VFIO reports. BAR registers are never written to the device, and the MSI and
//! MSI-X capabilities the guest programs are emulated: the host programs the real ones.
//!
//! BAR memory is taken out of the guest *before* the device stops answering there (memory
//! decoding turned off, power state set to D3hot): vfio-pci faults accesses to a BAR mmap then,
//! and KVM would turn a guest access into a VMM exit. It comes back when the platform maps the
//! BAR again, or when the device returns to D0.
//!
//! # Reset
//!
//! The [`ResetStrategy`] is chosen once, when the model is built ([`super::reset`]), and every
//! reset uses it: [`VfioPciDevice::reset`] (before the guest sees the device, and whenever the
//! VMM resets it), the teardown in `Drop`, and a guest's function-level reset. When the device's PCI Express
//! capability advertises FLR (Device Capabilities bit 28), a guest write of Initiate
//! Function-Level Reset (Device Control bit 15) never reaches the device as a config write: the
//! model quiesces the device's interrupts and resets it as [`VfioPciDevice::reset`] does. The
//! bit always reads 0. A bus hot reset only ever names groups this VMM holds, so a guest cannot
//! reset a function it does not own.

use std::os::unix::io::RawFd;
use std::sync::Arc;

use super::bars::{self, Bar, BarError, GuestMemoryMapper};
use super::config::{ConfigReadError, ErrorLog, VfioConfig};
use super::irqs::{IrqSetupError, Irqs};
use super::msix_reloc;
use super::ops::{DeviceInfo, OpsError, VfioDeviceOps, ROM_REGION};
use super::options::VfioPciOptions;
use super::reset::{self, ResetHost, ResetStrategy};
use crate::interrupt::{InterruptManager, IntxLine};
use crate::pci::bar::{BarKind, BarSpec, DecodedBar, MAX_ROM, MIN_ROM, ROM_BAR};
use crate::pci::config::{ConfigError, CMD_MEMORY_SPACE};
use crate::pci::{BarAccess, PciDevice};

/// Power management capability ID.
const PM_CAP_ID: u16 = 0x01;
/// Power management control/status register offset in the capability.
const PM_CSR: u16 = 4;
/// Its power state field (bits 1:0).
const PM_STATE_MASK: u8 = 0x3;
/// Power state D3hot.
const PM_D3HOT: u8 = 0x3;
/// PCI Express capability ID.
const PCIE_CAP_ID: u16 = 0x10;
/// Device Capabilities register offset in the PCI Express capability.
const PCIE_DEVCAP: u16 = 4;
/// Device Capabilities: Function-Level Reset Capability.
const DEVCAP_FLR: u32 = 1 << 28;
/// Device Control register offset in the PCI Express capability.
const PCIE_DEVCTL: u16 = 8;
/// Device Control bit 15, Initiate Function-Level Reset, as bit 7 of the register's high byte.
const DEVCTL_BCR_FLR_HIGH: u8 = 0x80;

/// Errors from creating a passthrough device.
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    /// `VFIO_DEVICE_GET_INFO` failed.
    #[error("{name}: reading the device information: {source}")]
    DeviceInfo {
        /// Device.
        name: String,
        /// Why.
        #[source]
        source: OpsError,
    },
    /// The device is not a vfio-pci device.
    #[error("{0} is not a PCI device (VFIO reports another device API)")]
    NotPci(String),
    /// The config space could not be read.
    #[error("{name}: {source}")]
    Config {
        /// Device.
        name: String,
        /// Why.
        #[source]
        source: ConfigReadError,
    },
    /// A BAR cannot be modelled.
    #[error("{name}: {source}")]
    Bar {
        /// Device.
        name: String,
        /// Why.
        #[source]
        source: BarError,
    },
    /// The shadow config space refused a BAR declaration.
    #[error("{name}: declaring BAR {bar}: {source}")]
    Declare {
        /// Device.
        name: String,
        /// BAR.
        bar: usize,
        /// Why.
        #[source]
        source: ConfigError,
    },
    /// Setting up MSI/MSI-X failed (usually: not enough GSIs for the vectors).
    #[error("{name}: {source}")]
    Interrupts {
        /// Device.
        name: String,
        /// Why.
        #[source]
        source: IrqSetupError,
    },
    /// The ROM file is empty or larger than an expansion ROM can be.
    #[error("{name}: a ROM image must be 1 byte to {MAX_ROM} bytes, this one is {len}")]
    RomSize {
        /// Device.
        name: String,
        /// Its length.
        len: usize,
    },
}

/// A host PCI function passed through with VFIO.
pub struct VfioPciDevice {
    name: String,
    info: DeviceInfo,
    config: VfioConfig,
    bars: Vec<Bar>,
    irqs: Irqs,
    rom: Option<Vec<u8>>,
    mapper: Arc<dyn GuestMemoryMapper>,
    /// Power management control/status register, if the device has the capability.
    pm_csr: Option<u16>,
    /// The device is in D3hot: its BAR memory is not mapped into the guest.
    low_power: bool,
    /// How the device is reset (chosen when the model is built).
    strategy: ResetStrategy,
    /// For a bus hot reset: the fd of every group the reset reaches.
    reset_group_fds: Vec<RawFd>,
    /// Offset of the high byte of the PCI Express Device Control register, which holds
    /// Initiate Function-Level Reset, if the guest sees a PCI Express capability.
    devctl_high: Option<u16>,
    /// The device advertises FLR: the guest's Initiate Function-Level Reset resets it.
    guest_flr: bool,
    /// Where BAR memory may be mapped ([`VfioPciDevice::set_bar_windows`]); any address the
    /// device decodes until set.
    windows: Option<crate::pci::PciWindows>,
    errors: ErrorLog,
    ops: Box<dyn VfioDeviceOps>,
}

impl std::fmt::Debug for VfioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciDevice")
            .field("name", &self.name)
            .field("bars", &self.bars)
            .field("rom", &self.rom.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

fn rom_spec(len: usize) -> BarSpec {
    BarSpec::rom((len as u64).next_power_of_two().max(MIN_ROM))
}

impl VfioPciDevice {
    /// Builds the model of the device behind `device` (an open VFIO device; `name`, usually its
    /// host address, is used in messages). MSI/MSI-X vectors come from `interrupts`, BAR memory
    /// is mapped into the guest with `mapper`, and `rom` (a ROM file's bytes) replaces the
    /// device's own ROM if given.
    ///
    /// The device starts with decoding, bus mastering and interrupts off; add it to the
    /// platform with [`crate::pci::PciPlatform::add_device`].
    ///
    /// The reset strategy is chosen from the device fd alone: `VFIO_DEVICE_RESET` when the
    /// device supports it, else none (no groups are known for a bus hot reset). A VMM that reads
    /// the host's `reset_method` and holds the groups uses [`VfioPciDevice::with_reset`]. The
    /// other options are [`VfioPciOptions`]' defaults (MSI-X relocation `auto`).
    pub fn new(
        name: &str,
        device: Box<dyn VfioDeviceOps>,
        interrupts: &dyn InterruptManager,
        mapper: Arc<dyn GuestMemoryMapper>,
        rom: Option<Vec<u8>>,
    ) -> Result<Self, VfioPciError> {
        let options = VfioPciOptions::default().rom(rom);
        Self::with_options(name, device, interrupts, mapper, options)
    }

    /// [`VfioPciDevice::new`], with the reset strategy chosen from what the host says
    /// (`reset_host`: its `reset_method` and the IOMMU groups this VMM holds with their fds, which
    /// must stay open as long as the device); see [`super::reset`].
    pub fn with_reset(
        name: &str,
        device: Box<dyn VfioDeviceOps>,
        interrupts: &dyn InterruptManager,
        mapper: Arc<dyn GuestMemoryMapper>,
        rom: Option<Vec<u8>>,
        reset_host: &ResetHost,
    ) -> Result<Self, VfioPciError> {
        let options = VfioPciOptions::default()
            .rom(rom)
            .reset_host(reset_host.clone());
        Self::with_options(name, device, interrupts, mapper, options)
    }

    /// [`VfioPciDevice::new`] with every option spelled out ([`VfioPciOptions`]: the ROM, what
    /// the host says about resets, MSI-X relocation).
    pub fn with_options(
        name: &str,
        device: Box<dyn VfioDeviceOps>,
        interrupts: &dyn InterruptManager,
        mapper: Arc<dyn GuestMemoryMapper>,
        options: VfioPciOptions,
    ) -> Result<Self, VfioPciError> {
        let VfioPciOptions {
            rom,
            reset_host,
            msix_relocation,
        } = options;
        let ops = device.as_ref();
        let named = || name.to_string();
        let info = ops
            .device_info()
            .map_err(|source| VfioPciError::DeviceInfo {
                name: named(),
                source,
            })?;
        if !info.is_pci() {
            return Err(VfioPciError::NotPci(named()));
        }
        let mut errors = ErrorLog::new(name);
        let mut config = VfioConfig::new(ops, name).map_err(|source| VfioPciError::Config {
            name: named(),
            source,
        })?;
        let mut bars = bars::discover(ops, &config.device_bar_registers()).map_err(|source| {
            VfioPciError::Bar {
                name: named(),
                source,
            }
        })?;
        let rom = match rom {
            Some(bytes) if bytes.is_empty() || bytes.len() as u64 > MAX_ROM => {
                return Err(VfioPciError::RomSize {
                    name: named(),
                    len: bytes.len(),
                })
            }
            Some(bytes) => Some(bytes),
            None if info.num_regions > ROM_REGION => read_rom(ops, name),
            None => None,
        };
        if let Some(r) = &rom {
            config
                .shadow
                .set_bar(ROM_BAR, rom_spec(r.len()))
                .map_err(|source| VfioPciError::Declare {
                    name: named(),
                    bar: ROM_BAR,
                    source,
                })?;
        }

        let mut irqs = Irqs::setup(
            &mut config,
            ops,
            info.num_irqs,
            &bars,
            interrupts,
            &mut errors,
        )
        .map_err(|source| VfioPciError::Interrupts {
            name: named(),
            source,
        })?;
        if let Some(m) = irqs.msix.as_mut() {
            if let Some(r) = msix_reloc::plan(msix_relocation, m.cap(), &bars, name) {
                match m.relocate(&mut config.shadow, r.bar, r.table_offset, r.pba_offset) {
                    Ok(()) => {
                        if let Some(b) = bars.iter_mut().find(|b| b.index == r.bar) {
                            b.spec.size = r.size;
                        }
                    }
                    Err(e) => log::warn!("VFIO {name}: MSI-X not relocated: {e}"),
                }
            }
        }
        // Declared after MSI-X relocation, which may have grown the table's BAR.
        for b in &bars {
            config
                .shadow
                .set_bar(b.index, b.spec)
                .map_err(|source| VfioPciError::Declare {
                    name: named(),
                    bar: b.index,
                    source,
                })?;
        }
        config.relink();
        let pm_csr = config
            .std_caps()
            .iter()
            .find(|c| c.id == PM_CAP_ID && c.visible)
            .map(|c| c.offset + PM_CSR);
        let pcie = config
            .std_caps()
            .iter()
            .find(|c| c.id == PCIE_CAP_ID && c.visible)
            .map(|c| c.offset);
        let devctl_high = pcie.map(|c| c + PCIE_DEVCTL + 1);
        let guest_flr =
            pcie.is_some_and(|c| config.shadow.read_u32(c + PCIE_DEVCAP) & DEVCAP_FLR != 0);
        let (strategy, reset_group_fds) =
            reset::choose(name, &info, &reset_host, || ops.hot_reset_info());

        let msix = irqs.msix.as_ref().map(|m| (m.cap().table(), m.cap().pba()));
        for b in &mut bars {
            let holes: Vec<(u64, u64)> = msix
                .iter()
                .flat_map(|&(t, p)| [t, p])
                .filter(|&(bar, _, _)| bar == b.index)
                .map(|(_, off, len)| (off, len))
                .collect();
            b.mmap_areas(ops, &holes, name);
        }
        config.write_command(ops);
        log::debug!(
            "VFIO {name}: {} BARs, ROM {:?}, MSI {}, MSI-X {}",
            bars.len(),
            rom.as_ref().map(Vec::len),
            irqs.msi.is_some(),
            irqs.msix.is_some()
        );
        let mut dev = VfioPciDevice {
            name: named(),
            info,
            config,
            bars,
            irqs,
            rom,
            mapper,
            pm_csr,
            strategy,
            reset_group_fds,
            devctl_high,
            guest_flr,
            low_power: false,
            windows: None,
            errors,
            ops: device,
        };
        // A device found in D3hot (vfio-pci brings it to D0 when opened, but a kernel or a
        // mock may not) keeps its BAR memory unmapped until the guest takes it out of D3hot.
        dev.power_state_changed();
        Ok(dev)
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device supports `VFIO_DEVICE_RESET`.
    pub fn supports_reset(&self) -> bool {
        self.info.supports_reset()
    }

    /// How the device is reset (chosen when the model was built).
    pub fn reset_strategy(&self) -> &ResetStrategy {
        &self.strategy
    }

    /// Whether a guest's Initiate Function-Level Reset resets the device (its PCI Express
    /// capability advertises FLR).
    pub fn guest_flr(&self) -> bool {
        self.guest_flr
    }

    /// Quiesces and resets the device: interrupts off and the MSI/MSI-X capabilities disabled,
    /// then the reset of its [`ResetStrategy`] (logged when there is none). BAR placement and
    /// decoding are kept (the platform owns them); INTx is re-armed if wired.
    pub fn reset(&mut self) {
        self.irqs.off(self.ops.as_ref(), &mut self.errors);
        self.irqs.reset_caps(&mut self.config.shadow);
        self.device_reset();
        self.config.write_command(self.ops.as_ref());
        self.power_state_changed();
        self.irqs
            .sync(self.ops.as_ref(), &self.config.shadow, &mut self.errors);
    }

    fn device_reset(&mut self) {
        let result = match &self.strategy {
            ResetStrategy::Flr | ResetStrategy::Pm | ResetStrategy::Kernel { .. } => {
                self.ops.reset()
            }
            ResetStrategy::BusHotReset { .. } => self.ops.hot_reset(&self.reset_group_fds),
            ResetStrategy::None { why } => {
                log::info!("VFIO {}: not reset: {why}", self.name);
                return;
            }
        };
        if let Err(e) = result {
            self.errors.log("reset", &e);
        }
    }

    /// If the write sets Initiate Function-Level Reset: its index in `data`.
    fn flr_bit_written(&self, offset: u16, data: &[u8]) -> Option<usize> {
        let i = usize::from(self.devctl_high?.checked_sub(offset)?);
        data.get(i)
            .is_some_and(|b| b & DEVCTL_BCR_FLR_HIGH != 0)
            .then_some(i)
    }

    /// Why BAR `bar`'s memory must not be mapped at `addr`, whoever asks: the guest is sizing
    /// it (the address, or what its register holds now, has every address bit set: a 32-bit
    /// BAR ending at 4 GiB, a 64-bit one whose high dword is all ones), or it is outside the
    /// windows set with [`PciDevice::set_bar_windows`].
    fn placement_refused(&self, bar: usize, addr: u64) -> Option<&'static str> {
        let spec = self.bar(bar)?.spec;
        let sizing = |a: u64| {
            let end = a.checked_add(spec.size - 1);
            match spec.kind {
                BarKind::Memory64 => end == Some(u64::MAX) || a >> 32 == 0xffff_ffff,
                _ => end == Some(u64::from(u32::MAX)),
            }
        };
        if sizing(addr) || self.config.shadow.bar_address(bar).is_some_and(sizing) {
            return Some("the guest is sizing it (its address bits are all ones)");
        }
        match &self.windows {
            Some(w) if !w.allows(spec.space(), addr, spec.size) => {
                Some("it is outside the PCI windows")
            }
            _ => None,
        }
    }

    fn bar(&self, index: usize) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The BAR's mmapped pieces `(offset, size)` (for tests and diagnostics).
    pub fn bar_mapped_pieces(&self, index: usize) -> Vec<(u64, u64)> {
        self.bar(index).map(Bar::mapped_pieces).unwrap_or_default()
    }

    #[cfg(test)]
    pub(crate) fn bar_ref(&self, index: usize) -> Option<&Bar> {
        self.bar(index)
    }

    #[cfg(test)]
    pub(crate) fn irqs(&self) -> &Irqs {
        &self.irqs
    }

    #[cfg(test)]
    pub(crate) fn config_model(&self) -> &VfioConfig {
        &self.config
    }

    #[cfg(test)]
    pub(crate) fn config_errors(&self) -> u32 {
        self.config.error_count() + self.errors.count()
    }

    /// If the write sets the power state field of the power management control register: the
    /// state written (0 = D0 .. 3 = D3hot).
    fn power_state_written(&self, offset: u16, data: &[u8]) -> Option<u8> {
        let csr = self.pm_csr?;
        let i = usize::from(csr.checked_sub(offset)?);
        data.get(i).map(|b| b & PM_STATE_MASK)
    }

    /// After a power state write: reads back the state the device took and gives the guest
    /// its BAR memory back when it left D3hot.
    fn power_state_changed(&mut self) {
        let Some(csr) = self.pm_csr else { return };
        let mut b = [0u8; 1];
        let state = match self.config.device_read(self.ops.as_ref(), csr, &mut b) {
            Ok(()) => b[0] & PM_STATE_MASK,
            Err(e) => {
                self.errors.log("reading the power state", &e);
                return;
            }
        };
        let low = state == PM_D3HOT;
        if low == self.low_power {
            return;
        }
        self.low_power = low;
        if low {
            self.unmap_memory_bars();
        } else {
            let mapper = self.mapper.clone();
            for b in &mut self.bars {
                if let Some(addr) = b.at {
                    b.map(addr, mapper.as_ref(), &self.name);
                }
            }
        }
    }

    fn unmap_memory_bars(&mut self) {
        for b in &mut self.bars {
            if b.spec.kind != BarKind::Io {
                b.unmap(self.mapper.as_ref(), &self.name);
            }
        }
    }

    /// Reads `data.len()` bytes at `offset` of BAR region `b` through VFIO, the part past the
    /// region reading all ones.
    fn region_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let Some(b) = self.bars.iter().find(|b| b.index == bar) else {
            return;
        };
        let avail = b.region.size.saturating_sub(offset).min(data.len() as u64) as usize;
        if avail == 0 {
            return;
        }
        if let Err(e) = self.ops.region_read(&b.region, offset, &mut data[..avail]) {
            data.fill(0xff);
            self.errors.log(&format!("BAR {bar} read"), &e);
        }
    }

    /// A guest config write, with Initiate Function-Level Reset already taken out.
    fn config_write_through(&mut self, offset: u16, data: &[u8]) {
        let old = self.config.shadow.command();
        // Take BAR memory away from the guest before the device stops answering there (vfio-pci
        // then faults accesses to the mmaps, which KVM would turn into a VMM exit).
        let pm = self.power_state_written(offset, data);
        if pm == Some(PM_D3HOT) {
            self.low_power = true;
            self.unmap_memory_bars();
        }
        if self.config.write(self.ops.as_ref(), offset, data) {
            let new = self.config.shadow.command();
            if old & CMD_MEMORY_SPACE != 0 && new & CMD_MEMORY_SPACE == 0 {
                self.unmap_memory_bars();
            }
            self.config.write_command(self.ops.as_ref());
        }
        if pm.is_some() {
            self.power_state_changed();
        }
        self.irqs
            .config_written(&mut self.config.shadow, offset, data.len());
        self.irqs
            .sync(self.ops.as_ref(), &self.config.shadow, &mut self.errors);
    }

    fn region_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let Some(b) = self.bars.iter().find(|b| b.index == bar) else {
            return;
        };
        let avail = b.region.size.saturating_sub(offset).min(data.len() as u64) as usize;
        if avail == 0 {
            return;
        }
        if let Err(e) = self.ops.region_write(&b.region, offset, &data[..avail]) {
            self.errors.log(&format!("BAR {bar} write"), &e);
        }
    }
}

/// Reads the device's ROM region; a missing or unreadable ROM is logged and left out.
fn read_rom(ops: &dyn VfioDeviceOps, name: &str) -> Option<Vec<u8>> {
    let region = match ops.region_info(ROM_REGION) {
        Ok(r) if r.size > 0 && r.readable() => r,
        Ok(_) => return None,
        Err(e) => {
            log::warn!("VFIO {name}: ROM region: {e}; no ROM shown");
            return None;
        }
    };
    if region.size > MAX_ROM {
        log::warn!(
            "VFIO {name}: the ROM is {:#x} bytes, more than {MAX_ROM:#x}; no ROM shown",
            region.size
        );
        return None;
    }
    let mut rom = vec![0u8; region.size as usize];
    match ops.region_read(&region, 0, &mut rom) {
        Ok(()) => Some(rom),
        Err(e) => {
            log::warn!("VFIO {name}: reading the ROM: {e}; no ROM shown (give one with rom=FILE)");
            None
        }
    }
}

impl PciDevice for VfioPciDevice {
    /// [`VfioPciDevice::reset`]: interrupts off, MSI/MSI-X disabled, the device reset through
    /// VFIO with its reset strategy.
    fn system_reset(&mut self) {
        log::info!("VFIO {}: reset for the guest's reboot", self.name);
        self.reset();
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.irqs
            .before_read(&mut self.config.shadow, offset, data.len());
        self.config.read(self.ops.as_ref(), offset, data);
        // Initiate Function-Level Reset always reads 0.
        if let Some(i) = self
            .devctl_high
            .and_then(|h| h.checked_sub(offset))
            .map(usize::from)
        {
            if let Some(b) = data.get_mut(i) {
                *b &= !DEVCTL_BCR_FLR_HIGH;
            }
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        // Initiate Function-Level Reset never reaches the device as a config write: the rest of
        // the bytes do, then the model resets the device with its strategy.
        let flr = self.flr_bit_written(offset, data);
        let stripped;
        let data = match flr {
            Some(i) => {
                let mut d = data.to_vec();
                d[i] &= !DEVCTL_BCR_FLR_HIGH;
                stripped = d;
                &stripped[..]
            }
            None => data,
        };
        self.config_write_through(offset, data);
        if flr.is_some() {
            if self.guest_flr {
                log::debug!(
                    "VFIO {}: the guest initiated an FLR: {}",
                    self.name,
                    self.strategy
                );
                self.reset();
            } else {
                log::debug!(
                    "VFIO {}: the guest wrote Initiate Function-Level Reset, which the device does not advertise: ignored",
                    self.name
                );
            }
        }
    }

    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        self.config.shadow.bar_specs()
    }

    fn decoded_bars(&self) -> Vec<DecodedBar> {
        self.config.shadow.decoded_bars()
    }

    fn set_bar_windows(&mut self, windows: &crate::pci::PciWindows) {
        self.windows = Some(*windows);
    }

    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        log::debug!("VFIO {}: BAR {bar} moved {old:#x?} -> {new:#x?}", self.name);
        let new = new.filter(|&addr| match self.placement_refused(bar, addr) {
            None => true,
            Some(why) => {
                log::warn!(
                    "VFIO {}: not mapping BAR {bar} at {addr:#x}: {why}",
                    self.name
                );
                false
            }
        });
        let mapper = self.mapper.clone();
        let low_power = self.low_power;
        let Some(b) = self.bars.iter_mut().find(|b| b.index == bar) else {
            return;
        };
        b.unmap(mapper.as_ref(), &self.name);
        b.at = new;
        if let (Some(addr), false) = (new, low_power) {
            b.map(addr, mapper.as_ref(), &self.name);
        }
    }

    fn attach_intx(&mut self, line: Box<dyn IntxLine>) {
        self.irqs.attach_intx(line);
        self.irqs
            .sync(self.ops.as_ref(), &self.config.shadow, &mut self.errors);
    }
}

impl BarAccess for VfioPciDevice {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == ROM_BAR {
            let rom = self.rom.as_deref().unwrap_or_default();
            for (i, b) in data.iter_mut().enumerate() {
                *b = usize::try_from(offset)
                    .ok()
                    .and_then(|o| o.checked_add(i))
                    .and_then(|at| rom.get(at))
                    .copied()
                    .unwrap_or(0xff);
            }
            return;
        }
        let in_bar = self.bar(bar).is_some_and(|b| {
            offset
                .checked_add(data.len() as u64)
                .is_some_and(|e| e <= b.spec.size)
        });
        if !in_bar {
            data.fill(0xff);
            return;
        }
        if let Some(m) = &mut self.irqs.msix {
            if m.bar_read(bar, offset, data) {
                return;
            }
        }
        self.region_read(bar, offset, data);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let in_bar = self.bar(bar).is_some_and(|b| {
            offset
                .checked_add(data.len() as u64)
                .is_some_and(|e| e <= b.spec.size)
        });
        if !in_bar {
            return;
        }
        if let Some(m) = &mut self.irqs.msix {
            if m.bar_write(bar, offset, data) {
                return;
            }
        }
        self.region_write(bar, offset, data);
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.irqs.off(self.ops.as_ref(), &mut self.errors);
        for b in &mut self.bars {
            b.release(self.mapper.as_ref(), &self.name);
        }
        self.device_reset();
        // The device fd closes when `ops` drops, after the BAR mmaps are gone.
    }
}
