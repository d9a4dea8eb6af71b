//! [`PciPlatform`]: the facade the VMM builds the PCI side of a VM with, BAR placement (what
//! firmware would do) and keeping the buses in step with what the guest programs.
//!
//! # Initial placement
//!
//! [`PciPlatform::add_device`] places every BAR like a PC BIOS does: naturally aligned (memory
//! BARs at least page aligned and page sized, so no two share a page), largest first, from
//! allocators over three windows:
//!
//! - I/O BARs from the I/O window;
//! - 32-bit memory BARs and the ROM from the 32-bit MMIO window;
//! - 64-bit memory BARs that are prefetchable or at least [`HIGH_MMIO_THRESHOLD`] from the
//!   64-bit window (falling back to the 32-bit window), other 64-bit BARs from the 32-bit
//!   window (falling back to the 64-bit one).
//!
//! It then turns on I/O and memory decoding for the kinds the device has (as SeaBIOS does; a
//! guest OS keeps working assignments and reassigns only on conflict), leaves the ROM disabled
//! and bus mastering off (the driver enables those), and writes the interrupt line register with
//! the GSI the interrupt pin is wired to.
//!
//! # Following the guest
//!
//! After every guest config write the platform asks the device which BARs it decodes and
//! reconciles the buses: mappings that changed are removed, then the wanted ones inserted, and
//! [`crate::pci::PciDevice::bar_moved`] is called for every BAR whose mapping changed. A BAR the
//! guest programs outside the windows, or over another mapping, is left unmapped (logged once
//! per BAR, and at most [`MAX_MAPPING_WARNINGS`] times in all; a BAR holding its all-ones sizing
//! pattern, as a guest sizing it with decoding on leaves it for a moment, only at debug level)
//! until it becomes valid; whenever
//! a mapping goes away, unmapped BARs of every device are retried. The buses never hold two
//! devices on one range: the [`crate::Bus`] refuses overlaps and the platform never forces one.
//!
//! # Example
//!
//! An embedder's own device (one memory BAR, no interrupt pin) on a platform it built; the
//! guest's config cycles arrive through the ECAM window on its MMIO bus.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use vfiovm_devices::interrupt::{InterruptError, InterruptManager, IntxLine, MsiVector};
//! use vfiovm_devices::pci::bar::{BarSpec, DecodedBar};
//! use vfiovm_devices::pci::config::{ConfigHeader, ConfigSpace};
//! use vfiovm_devices::pci::{BarAccess, PciDevice, PciPlatform, PciPlatformConfig, PciWindows};
//! use vfiovm_devices::{Bus, ExitSink, GuestExit};
//!
//! struct Regs(ConfigSpace, [u8; 16]);
//! impl PciDevice for Regs {
//!     fn config_read(&mut self, offset: u16, data: &mut [u8]) { self.0.read(offset, data) }
//!     fn config_write(&mut self, offset: u16, data: &[u8]) { self.0.write(offset, data) }
//!     fn bar_specs(&self) -> Vec<(usize, BarSpec)> { self.0.bar_specs() }
//!     fn decoded_bars(&self) -> Vec<DecodedBar> { self.0.decoded_bars() }
//! }
//! impl BarAccess for Regs {
//!     fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
//!         let o = offset as usize;
//!         data.copy_from_slice(&self.1[o..o + data.len()]);
//!     }
//!     fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
//!         let o = offset as usize;
//!         self.1[o..o + data.len()].copy_from_slice(data);
//!     }
//! }
//! struct NoIrqs; // this platform's devices use no interrupts
//! impl InterruptManager for NoIrqs {
//!     fn allocate_msi(&self) -> Result<Box<dyn MsiVector>, InterruptError> {
//!         Err(InterruptError::NoFreeGsi { limit: 0 })
//!     }
//!     fn allocate_intx(&self, gsi: u32) -> Result<Box<dyn IntxLine>, InterruptError> {
//!         Err(InterruptError::InvalidIntxGsi { gsi })
//!     }
//! }
//! struct Ignore;
//! impl ExitSink for Ignore {
//!     fn request_exit(&self, _: GuestExit) {}
//! }
//!
//! let (pio, mmio) = (Arc::new(Bus::new("pio")), Arc::new(Bus::new("mmio")));
//! let platform = PciPlatform::new(PciPlatformConfig {
//!     pio: pio.clone(),
//!     mmio: mmio.clone(),
//!     windows: PciWindows { mmio32: (0xc000_0000, 0x1000_0000), mmio64: None, io: (0x6000, 0xa000) },
//!     irq: Arc::new(NoIrqs),
//!     intx_gsi: Arc::new(|slot, pin| 16 + (u32::from(slot) + u32::from(pin)) % 8),
//!     exit: Arc::new(Ignore),
//! })?;
//! mmio.insert(platform.ecam_device(), 0xb000_0000, 0x1000_0000)?;
//!
//! let mut config = ConfigSpace::new(&ConfigHeader { vendor_id: 0x1af4, device_id: 0x10f0, ..Default::default() });
//! config.set_bar(0, BarSpec::mem32(16))?;
//! let at = platform.add_device(2, Arc::new(Mutex::new(Regs(config, [0; 16]))))?;
//!
//! // Placed like firmware would (page aligned in the 32-bit window), decoding on, mapped.
//! let ecam = |off: u64| 0xb000_0000 + (u64::from(at.device) << 15) + off;
//! let mut bar0 = [0u8; 4];
//! mmio.read(ecam(0x10), &mut bar0);
//! let bar0 = u64::from(u32::from_le_bytes(bar0) & !0xf);
//! assert_eq!(bar0, 0xc000_0000);
//! assert!(mmio.write(bar0 + 4, &[0xab]));
//! let mut b = [0u8];
//! assert!(mmio.read(bar0 + 4, &mut b) && b[0] == 0xab);
//!
//! // Unplugged (or the platform dropped): off the bus, the slot empty.
//! assert_eq!(platform.remove_device(at.device).len(), 1);
//! assert!(!mmio.read(bar0 + 4, &mut b));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use super::bar::{AddressSpace, BarError, BarKind, BarSpec, DecodedBar, NUM_BAR_SLOTS};
use super::config::{
    bar_offset, CMD_IO_SPACE, CMD_MEMORY_SPACE, COMMAND, INTERRUPT_LINE, INTERRUPT_PIN,
};
use super::config_access::{PciConfigIo, PciConfigMmio};
use super::host_bridge::HostBridge;
use super::root::{PciRoot, RootRef, Slot};
use super::{BarAccess, PciAddress, PciDevice, FUNCTIONS_PER_SLOT, SLOTS_PER_BUS};
use crate::bus::{Bus, BusDevice, BusError, SharedBusDevice};
use crate::exit::ExitSink;
use crate::interrupt::{InterruptError, InterruptManager};

/// 64-bit BARs at least this big go to the 64-bit window even if not prefetchable.
pub const HIGH_MMIO_THRESHOLD: u64 = 64 << 20;
/// Memory BARs are placed at least this aligned, and no two share such a page.
pub const MMIO_MIN_ALIGN: u64 = 4096;
/// Most "BAR left unmapped" warnings logged over the platform's life.
pub const MAX_MAPPING_WARNINGS: u32 = 32;

/// Errors from building the platform or adding devices.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A window is empty, wraps, or (for I/O) goes past port 0xFFFF.
    #[error("PCI {name} window {start:#x}+{size:#x} is invalid")]
    InvalidWindow {
        /// Which window.
        name: &'static str,
        /// Start.
        start: u64,
        /// Size.
        size: u64,
    },
    /// Slots are 1..32 (slot 0 is the host bridge).
    #[error("PCI slot {0} is out of range (1..32)")]
    SlotOutOfRange(u8),
    /// The slot already holds a device.
    #[error("PCI slot {0} is already in use")]
    SlotInUse(u8),
    /// The function is taken already.
    #[error("PCI function {0} is already in use")]
    FunctionInUse(PciAddress),
    /// Functions 1–7 need function 0 of their slot first (firmware and OSes scan a slot only
    /// when function 0 answers).
    #[error("PCI function {0} needs function 0 of its slot: add that one first")]
    NoFunctionZero(PciAddress),
    /// Only bus 0 and functions 0–7 exist.
    #[error("PCI function {0} is not on bus 0 or has no valid function number")]
    NoSuchFunction(PciAddress),
    /// The device declares a BAR the PCI rules do not allow.
    #[error("device {address} declares an invalid BAR {bar}: {source}")]
    BadBar {
        /// Device.
        address: PciAddress,
        /// BAR index.
        bar: usize,
        /// Why.
        #[source]
        source: BarError,
    },
    /// No room for a BAR in its windows.
    #[error("no room for BAR {bar} ({size:#x} bytes) of device {address} in the PCI windows; make the 64-bit window larger or use fewer devices")]
    NoSpace {
        /// Device.
        address: PciAddress,
        /// BAR index.
        bar: usize,
        /// BAR size.
        size: u64,
    },
    /// Wiring the device's INTx pin failed.
    #[error("connecting INTx of device {address}: {source}")]
    Interrupt {
        /// Device.
        address: PciAddress,
        /// Why.
        #[source]
        source: InterruptError,
    },
    /// The device does not decode a BAR where the platform programmed it.
    #[error("device {address} decodes BAR {bar} outside the PCI windows after it was placed (the device ignores BAR writes)")]
    Misplaced {
        /// Device.
        address: PciAddress,
        /// BAR index.
        bar: usize,
    },
    /// Mapping a freshly placed BAR failed: something else occupies the PCI window.
    #[error(
        "mapping BAR {bar} of device {address}: {source} (another device occupies the PCI window)"
    )]
    Map {
        /// Device.
        address: PciAddress,
        /// BAR index.
        bar: usize,
        /// The bus's error.
        #[source]
        source: BusError,
    },
}

/// The address windows PCI BARs live in, each `(start, size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciWindows {
    /// The 32-bit MMIO window (below 4 GiB).
    pub mmio32: (u64, u64),
    /// The 64-bit MMIO window (above RAM), if the guest has one.
    pub mmio64: Option<(u64, u64)>,
    /// The I/O port window.
    pub io: (u64, u64),
}

impl PciWindows {
    fn contains(window: (u64, u64), addr: u64, size: u64) -> bool {
        let (start, len) = window;
        addr >= start
            && addr
                .checked_add(size)
                .is_some_and(|end| end <= start.saturating_add(len))
    }

    /// Whether `[addr, addr + size)` lies inside one window of `space`.
    pub fn allows(&self, space: AddressSpace, addr: u64, size: u64) -> bool {
        match space {
            AddressSpace::Io => Self::contains(self.io, addr, size),
            AddressSpace::Memory => {
                Self::contains(self.mmio32, addr, size)
                    || self.mmio64.is_some_and(|w| Self::contains(w, addr, size))
            }
        }
    }
}

/// Maps `(slot, pin)` (pin 0 = INTA#) to the GSI the pin is wired to.
pub type IntxMap = Arc<dyn Fn(u8, u8) -> u32 + Send + Sync>;

/// What the VMM hands the platform.
#[derive(Clone)]
pub struct PciPlatformConfig {
    /// The port-I/O bus (I/O BARs go here; the VMM inserts [`PciPlatform::config_io_device`]).
    pub pio: Arc<Bus>,
    /// The MMIO bus (memory BARs go here; the VMM inserts [`PciPlatform::ecam_device`]).
    pub mmio: Arc<Bus>,
    /// Where BARs may live.
    pub windows: PciWindows,
    /// Interrupt routing for INTx (devices take their MSI vectors from it themselves).
    pub irq: Arc<dyn InterruptManager>,
    /// The GSI that INTx pin `pin` (0 = INTA#) of slot `slot` is wired to
    /// (`arch::layout::pci_intx_gsi`); a closure may carry the embedder's own routing state.
    pub intx_gsi: IntxMap,
    /// Receives the 0xCF9 reset request.
    pub exit: Arc<dyn ExitSink>,
}

impl std::fmt::Debug for PciPlatformConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciPlatformConfig")
            .field("windows", &self.windows)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The PCI platform: bus 0 with the host bridge and the devices, and the two config access
/// devices the VMM maps.
pub struct PciPlatform {
    root: Arc<Mutex<PciRoot>>,
    config_io: Arc<Mutex<PciConfigIo>>,
    config_mmio: Arc<Mutex<PciConfigMmio>>,
    irq: Arc<dyn InterruptManager>,
    intx_gsi: IntxMap,
    windows: PciWindows,
}

impl std::fmt::Debug for PciPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciPlatform").finish_non_exhaustive()
    }
}

impl PciPlatform {
    /// A platform with the host bridge at 00:00.0 and nothing else.
    pub fn new(config: PciPlatformConfig) -> Result<Self, PlatformError> {
        let w = config.windows;
        let window = |name, (start, size): (u64, u64), max: u64| {
            let bad = PlatformError::InvalidWindow { name, start, size };
            if size == 0 || start.checked_add(size).is_none_or(|end| end > max) {
                return Err(bad);
            }
            AddressAllocator::new(start, size).map_err(|_| bad)
        };
        let resources = Resources {
            io: window("I/O", w.io, 0x1_0000)?,
            mmio32: window("32-bit MMIO", w.mmio32, 1 << 32)?,
            mmio64: w
                .mmio64
                .map(|m| window("64-bit MMIO", m, u64::MAX))
                .transpose()?,
        };
        let mapper = BarMapper {
            pio: config.pio,
            mmio: config.mmio,
            windows: w,
            warnings: 0,
        };
        let host: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(HostBridge::new()));
        let root = Arc::new(Mutex::new(PciRoot::new(mapper, resources, host)));
        Ok(PciPlatform {
            config_io: Arc::new(Mutex::new(PciConfigIo::new(
                RootRef(Arc::downgrade(&root)),
                config.exit,
            ))),
            config_mmio: Arc::new(Mutex::new(PciConfigMmio::new(RootRef(Arc::downgrade(
                &root,
            ))))),
            root,
            irq: config.irq,
            intx_gsi: config.intx_gsi,
            windows: w,
        })
    }

    /// The type-1 config mechanism; insert it on the port bus at 0xCF8 with length
    /// [`crate::pci::PCI_CONFIG_IO_LEN`] (8).
    pub fn config_io_device(&self) -> SharedBusDevice {
        self.config_io.clone()
    }

    /// The ECAM window; insert it on the MMIO bus at the ECAM base with the ECAM size.
    pub fn ecam_device(&self) -> SharedBusDevice {
        self.config_mmio.clone()
    }

    /// The first free slot, if any.
    pub fn free_slot(&self) -> Option<u8> {
        lock(&self.root).free_slot()
    }

    /// Adds `dev` as function 0 of `slot` on bus 0: places its BARs, wires its interrupt pin,
    /// enables decoding and maps the BARs. On error nothing is left behind.
    pub fn add_device<D>(&self, slot: u8, dev: Arc<Mutex<D>>) -> Result<PciAddress, PlatformError>
    where
        D: PciDevice + BarAccess + 'static,
    {
        let address = PciAddress {
            bus: 0,
            device: slot,
            function: 0,
        };
        self.add_function(address, dev)
    }

    /// Adds `dev` at `address` (bus 0): function 0 as [`PciPlatform::add_device`] does, or
    /// another function of a slot whose function 0 is there already — the functions of one
    /// multi-function device (a GPU and its audio function). Function 0 then reads back with
    /// header type bit 7 set, so firmware and the OS scan the others. INTx pins of every
    /// function are wired through the same slot's mapping. On error nothing is left behind.
    pub fn add_function<D>(
        &self,
        address: PciAddress,
        dev: Arc<Mutex<D>>,
    ) -> Result<PciAddress, PlatformError>
    where
        D: PciDevice + BarAccess + 'static,
    {
        let slot = address.device;
        if slot == 0 || slot >= SLOTS_PER_BUS {
            return Err(PlatformError::SlotOutOfRange(slot));
        }
        if address.bus != 0 || address.function >= FUNCTIONS_PER_SLOT {
            return Err(PlatformError::NoSuchFunction(address));
        }
        let mut root = lock(&self.root);
        if address.function == 0 && root.slot_used(slot) {
            return Err(PlatformError::SlotInUse(slot));
        }
        if root.function_used(address) {
            return Err(PlatformError::FunctionInUse(address));
        }
        if address.function != 0 && !root.slot_used(slot) {
            return Err(PlatformError::NoFunctionZero(address));
        }
        let mut d = lock(&dev);
        let mut specs = d.bar_specs();
        for &(bar, spec) in &specs {
            spec.validate(bar).map_err(|source| PlatformError::BadBar {
                address,
                bar,
                source,
            })?;
        }
        d.set_bar_windows(&self.windows);
        // What this function writes, so a failure can put it back: the device is left as it
        // was given (registers, interrupts, mappings) and the windows as they were.
        let saved = SavedConfig::read(&mut *d, &specs);
        let undo = |d: &mut dyn PciDevice, root: &mut PciRoot, allocations: &[Allocation]| {
            saved.restore(d);
            root.resources.release(allocations);
        };
        // Largest first, as firmware does, to keep the windows unfragmented.
        specs.sort_by_key(|s| std::cmp::Reverse(s.1.size));
        let mut allocations = Vec::new();
        for &(bar, spec) in &specs {
            match root.resources.allocate(&spec) {
                Some(a) => {
                    program_bar(&mut *d, bar, &spec, a.range.start());
                    allocations.push(a);
                }
                None => {
                    undo(&mut *d, &mut root, &allocations);
                    return Err(PlatformError::NoSpace {
                        address,
                        bar,
                        size: spec.size,
                    });
                }
            }
        }

        // The INTx line is allocated now and attached last, once nothing can fail.
        let mut pin = [0u8];
        d.config_read(INTERRUPT_PIN, &mut pin);
        let intx = if (1..=4).contains(&pin[0]) {
            let gsi = (self.intx_gsi)(slot, pin[0] - 1);
            match self.irq.allocate_intx(gsi) {
                Ok(line) => Some((gsi, line)),
                Err(source) => {
                    undo(&mut *d, &mut root, &allocations);
                    return Err(PlatformError::Interrupt { address, source });
                }
            }
        } else {
            None
        };

        let mut cmd = [0u8; 2];
        d.config_read(COMMAND, &mut cmd);
        let mut cmd = u16::from_le_bytes(cmd);
        for (_, spec) in &specs {
            cmd |= match spec.kind {
                BarKind::Io => CMD_IO_SPACE,
                _ => CMD_MEMORY_SPACE,
            };
        }
        d.config_write(COMMAND, &cmd.to_le_bytes());

        let bars_dev: Arc<Mutex<dyn BarAccess>> = dev.clone();
        let mut bars = SlotBars::default();
        for (bar, _) in &specs {
            bars.handlers[*bar] = Some(Arc::new(Mutex::new(BarHandler {
                dev: Arc::downgrade(&bars_dev),
                bar: *bar,
            })));
        }
        let want = d.decoded_bars();
        root.mapper.reconcile(&mut bars, &mut *d, &want);
        if let Some((bar, why)) = std::mem::take(&mut bars.failures).into_iter().next() {
            root.mapper.reconcile(&mut bars, &mut *d, &[]);
            undo(&mut *d, &mut root, &allocations);
            return Err(match why {
                Some(source) => PlatformError::Map {
                    address,
                    bar,
                    source,
                },
                None => PlatformError::Misplaced { address, bar },
            });
        }
        if let Some((gsi, line)) = intx {
            d.config_write(INTERRUPT_LINE, &[gsi as u8]);
            d.attach_intx(line);
        }
        let boot = SavedConfig::read(&mut *d, &specs);
        drop(d);
        let config: Arc<Mutex<dyn PciDevice>> = dev;
        root.insert(
            address,
            Slot {
                dev: config,
                bars,
                allocations,
                boot: Some(boot),
            },
        );
        log::debug!("PCI: added device {address}");
        Ok(address)
    }

    /// Takes every function out of `slot` (hot-unplug, or undoing an `add_device` when a
    /// later step fails): unmaps their BARs from the buses (each device sees its BARs go
    /// through [`PciDevice::bar_moved`]), frees their window space and the slot, and hands the
    /// devices back, function 0 last; each is released (for a passthrough device: interrupts
    /// off, reset, closed) when its last reference drops. Empty for slot 0 (the host bridge)
    /// and empty slots.
    pub fn remove_device(&self, slot: u8) -> Vec<Arc<Mutex<dyn PciDevice>>> {
        if slot == 0 {
            return Vec::new();
        }
        let removed = lock(&self.root).remove(slot);
        if !removed.is_empty() {
            log::debug!("PCI: removed {} function(s) of slot {slot}", removed.len());
        }
        removed
    }

    /// A system reset of bus 0 (the guest rebooted and the VM restarts in place): each
    /// function resets itself ([`PciDevice::system_reset`]: a passed-through one through VFIO)
    /// and its BARs, interrupt line and command register go back to what this platform
    /// programmed when it was added, so the firmware or OS of the next boot finds the bus as
    /// the first boot did. Call with the vCPUs paused.
    pub fn system_reset(&self) {
        self.reset_handle().system_reset();
    }

    /// A handle that runs [`PciPlatform::system_reset`] from any thread: a VMM runs it where its
    /// sandbox allows what a reset does (a passed-through device's config writes and VFIO
    /// resets), e.g. on a paused vCPU's thread.
    pub fn reset_handle(&self) -> PciResetHandle {
        PciResetHandle(self.root.clone())
    }

    #[cfg(test)]
    pub(crate) fn root(&self) -> &Arc<Mutex<PciRoot>> {
        &self.root
    }

    /// A guest-style config read of `address` (for tests and debugging tools).
    pub fn config_read(&self, address: PciAddress, offset: u16, data: &mut [u8]) {
        lock(&self.root).config_read(address, offset, data);
    }

    /// A guest-style config write to `address`.
    pub fn config_write(&self, address: PciAddress, offset: u16, data: &[u8]) {
        lock(&self.root).config_write(address, offset, data);
    }
}

/// [`PciPlatform::reset_handle`].
#[derive(Clone)]
pub struct PciResetHandle(Arc<Mutex<PciRoot>>);

impl std::fmt::Debug for PciResetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciResetHandle").finish_non_exhaustive()
    }
}

impl PciResetHandle {
    /// [`PciPlatform::system_reset`].
    pub fn system_reset(&self) {
        lock(&self.0).system_reset();
        log::debug!("PCI: system reset");
    }
}

/// The registers [`PciPlatform::add_device`] writes: as they were before (to undo a failed
/// add) or as it left them (what a system reset puts back).
pub(crate) struct SavedConfig {
    command: [u8; 2],
    interrupt_line: u8,
    bars: Vec<(u16, [u8; 4])>,
}

impl SavedConfig {
    pub(crate) fn read(d: &mut dyn PciDevice, specs: &[(usize, BarSpec)]) -> Self {
        let mut command = [0u8; 2];
        d.config_read(COMMAND, &mut command);
        let mut line = [0u8];
        d.config_read(INTERRUPT_LINE, &mut line);
        let mut bars = Vec::new();
        for &(bar, spec) in specs {
            let dwords = if spec.kind == BarKind::Memory64 { 2 } else { 1 };
            for k in 0..dwords {
                let off = bar_offset(bar) + 4 * k;
                let mut v = [0u8; 4];
                d.config_read(off, &mut v);
                bars.push((off, v));
            }
        }
        SavedConfig {
            command,
            interrupt_line: line[0],
            bars,
        }
    }

    /// Decoding off first, then the BARs and the interrupt line, then the command as it was.
    pub(crate) fn restore(&self, d: &mut dyn PciDevice) {
        let off = u16::from_le_bytes(self.command) & !(CMD_IO_SPACE | CMD_MEMORY_SPACE);
        d.config_write(COMMAND, &off.to_le_bytes());
        for (off, v) in &self.bars {
            d.config_write(*off, v);
        }
        d.config_write(INTERRUPT_LINE, &[self.interrupt_line]);
        d.config_write(COMMAND, &self.command);
    }
}

/// Writes a placed BAR's address as firmware would (low dword, then high).
fn program_bar(d: &mut dyn PciDevice, bar: usize, spec: &BarSpec, addr: u64) {
    let off = bar_offset(bar);
    d.config_write(off, &((addr as u32) | spec.flags()).to_le_bytes());
    if spec.kind == BarKind::Memory64 {
        d.config_write(off + 4, &((addr >> 32) as u32).to_le_bytes());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    Io,
    Mmio32,
    Mmio64,
}

/// One placed BAR, so it can be released.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allocation {
    pool: Pool,
    range: RangeInclusive,
}

/// The allocators over the three windows.
#[derive(Debug)]
pub(crate) struct Resources {
    io: AddressAllocator,
    mmio32: AddressAllocator,
    mmio64: Option<AddressAllocator>,
}

impl Resources {
    fn pool(&mut self, pool: Pool) -> Option<&mut AddressAllocator> {
        match pool {
            Pool::Io => Some(&mut self.io),
            Pool::Mmio32 => Some(&mut self.mmio32),
            Pool::Mmio64 => self.mmio64.as_mut(),
        }
    }

    fn allocate(&mut self, spec: &BarSpec) -> Option<Allocation> {
        let pools: &[Pool] = match spec.kind {
            BarKind::Io => &[Pool::Io],
            BarKind::Memory32 | BarKind::Rom => &[Pool::Mmio32],
            BarKind::Memory64 if spec.prefetchable || spec.size >= HIGH_MMIO_THRESHOLD => {
                &[Pool::Mmio64, Pool::Mmio32]
            }
            BarKind::Memory64 => &[Pool::Mmio32, Pool::Mmio64],
        };
        let size = match spec.kind {
            BarKind::Io => spec.size,
            _ => spec.size.max(MMIO_MIN_ALIGN),
        };
        pools.iter().find_map(|&pool| {
            let alloc = self.pool(pool)?;
            let range = alloc.allocate(size, size, AllocPolicy::FirstMatch).ok()?;
            // A 32-bit BAR must land below 4 GiB whatever the window says.
            if spec.kind != BarKind::Memory64 && range.end() > u64::from(u32::MAX) {
                let _ = alloc.free(&range);
                return None;
            }
            Some(Allocation { pool, range })
        })
    }

    pub(crate) fn release(&mut self, allocations: &[Allocation]) {
        for a in allocations {
            if let Some(alloc) = self.pool(a.pool) {
                if let Err(e) = alloc.free(&a.range) {
                    log::warn!("PCI: releasing BAR range {:?}: {e}", a.range);
                }
            }
        }
    }
}

/// Forwards bus accesses to one BAR of a device. The bus holds it; it holds the device only
/// weakly (the platform owns the devices), so it keeps nothing alive.
struct BarHandler {
    dev: Weak<Mutex<dyn BarAccess>>,
    bar: usize,
}

impl BusDevice for BarHandler {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match self.dev.upgrade() {
            Some(dev) => lock(&dev).bar_read(self.bar, offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some(dev) = self.dev.upgrade() {
            lock(&dev).bar_write(self.bar, offset, data);
        }
    }
}

/// The bus state of one device's BARs.
#[derive(Default)]
pub(crate) struct SlotBars {
    handlers: [Option<SharedBusDevice>; NUM_BAR_SLOTS],
    pub(crate) mapped: [Option<DecodedBar>; NUM_BAR_SLOTS],
    warned: [bool; NUM_BAR_SLOTS],
    /// Some BAR the device decodes is not mapped.
    pub(crate) unmapped: bool,
    /// The BARs the last reconcile could not map, with the bus's refusal (`None`: outside the
    /// windows).
    failures: Vec<(usize, Option<BusError>)>,
}

/// Applies devices' decoded BARs to the buses.
pub(crate) struct BarMapper {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    windows: PciWindows,
    warnings: u32,
}

impl BarMapper {
    fn bus(&self, space: AddressSpace) -> &Arc<Bus> {
        match space {
            AddressSpace::Io => &self.pio,
            AddressSpace::Memory => &self.mmio,
        }
    }

    fn warn(&mut self, bars: &mut SlotBars, w: &DecodedBar, why: &str) {
        if is_sizing_pattern(w) {
            // All address bits set: a guest sizing the BAR with decoding left on
            // (kvm-unit-tests' pci_dev_init does), about to write the address back.
            log::debug!(
                "PCI: BAR {} holds its sizing pattern {:#x} with decoding on; unmapped meanwhile",
                w.index,
                w.addr
            );
            return;
        }
        if bars.warned[w.index] || self.warnings >= MAX_MAPPING_WARNINGS {
            return;
        }
        bars.warned[w.index] = true;
        self.warnings += 1;
        log::warn!(
            "PCI: BAR {} at {:#x}+{:#x} {why}; left unmapped until the guest moves it{}",
            w.index,
            w.addr,
            w.size,
            if self.warnings == MAX_MAPPING_WARNINGS {
                " (further mapping warnings are not logged)"
            } else {
                ""
            }
        );
    }

    /// Makes the bus mappings of one device match `want` (its decoded BARs) as far as the
    /// windows and the other mappings allow. Returns whether a mapping was removed.
    pub(crate) fn reconcile(
        &mut self,
        bars: &mut SlotBars,
        dev: &mut dyn PciDevice,
        want: &[DecodedBar],
    ) -> bool {
        let mut wanted = [None; NUM_BAR_SLOTS];
        for w in want {
            if w.index < NUM_BAR_SLOTS && bars.handlers[w.index].is_some() {
                wanted[w.index] = Some(*w);
            }
        }
        let before = bars.mapped;
        let mut removed = false;
        for (mapped, want) in bars.mapped.iter_mut().zip(wanted) {
            if let Some(m) = *mapped {
                if want != Some(m) {
                    if let Err(e) = self.bus(m.space).remove(m.addr, m.size) {
                        log::error!("PCI: unmapping BAR {} at {:#x}: {e}", m.index, m.addr);
                    }
                    *mapped = None;
                    removed = true;
                }
            }
        }
        bars.unmapped = false;
        bars.failures.clear();
        for (i, w) in wanted.iter().enumerate() {
            let (Some(w), None) = (w, bars.mapped[i]) else {
                continue;
            };
            let Some(handler) = bars.handlers[i].clone() else {
                continue;
            };
            if !self.windows.allows(w.space, w.addr, w.size) {
                bars.unmapped = true;
                bars.failures.push((i, None));
                self.warn(bars, w, "is outside the PCI windows");
                continue;
            }
            match self.bus(w.space).insert(handler, w.addr, w.size) {
                Ok(()) => {
                    bars.mapped[i] = Some(*w);
                    bars.warned[i] = false;
                }
                Err(e) => {
                    bars.unmapped = true;
                    bars.failures.push((i, Some(e)));
                    self.warn(bars, w, "overlaps another mapping");
                }
            }
        }
        // BARs that left an address first, then BARs that only gained one: a BAR can be
        // mapped where another BAR of the same device was until now (it waited for that range),
        // and the device must release the range (a passthrough BAR's memory slot) before it
        // maps the other BAR there. One config write moves at most one BAR.
        for left in [true, false] {
            for (i, (old, new)) in before.iter().zip(bars.mapped).enumerate() {
                if *old != new && old.is_some() == left {
                    dev.bar_moved(i, old.map(|b| b.addr), new.map(|b| b.addr));
                }
            }
        }
        removed
    }
}

/// Whether `w` holds the value a guest writes to size a BAR (all ones in its address bits): the
/// BAR then ends at 4 GiB (a 32-bit BAR) or at the top of the 64-bit space.
fn is_sizing_pattern(w: &DecodedBar) -> bool {
    let end = w.addr.wrapping_add(w.size);
    end == 0 || end == 1 << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_patterns() {
        let bar = |addr, size| DecodedBar {
            index: 0,
            space: AddressSpace::Memory,
            addr,
            size,
        };
        assert!(is_sizing_pattern(&bar(0xffff_f000, 0x1000)));
        assert!(is_sizing_pattern(&bar(0xffff_ff00, 0x100)));
        assert!(is_sizing_pattern(&bar(u64::MAX - 0xffff, 0x1_0000)));
        assert!(!is_sizing_pattern(&bar(0xffff_e000, 0x1000)));
        assert!(!is_sizing_pattern(&bar(0x1_0000_0000, 0x1000)));
    }

    fn resources() -> Resources {
        Resources {
            io: AddressAllocator::new(0x6000, 0xa000).unwrap(),
            mmio32: AddressAllocator::new(0xc000_0000, 0x3c00_0000).unwrap(),
            mmio64: Some(AddressAllocator::new(1 << 32, 1 << 40).unwrap()),
        }
    }

    #[test]
    fn placement_policy() {
        let mut r = resources();
        let a = r.allocate(&BarSpec::io(0x20)).unwrap();
        assert_eq!(
            (a.pool, a.range.start(), a.range.len()),
            (Pool::Io, 0x6000, 0x20)
        );
        let a = r.allocate(&BarSpec::mem32(0x10)).unwrap();
        assert_eq!(
            (a.pool, a.range.start(), a.range.len()),
            (Pool::Mmio32, 0xc000_0000, 0x1000)
        );
        let a = r.allocate(&BarSpec::mem64(0x4000, false)).unwrap();
        assert_eq!((a.pool, a.range.start()), (Pool::Mmio32, 0xc000_4000));
        let a = r.allocate(&BarSpec::mem64(0x4000, true)).unwrap();
        assert_eq!((a.pool, a.range.start()), (Pool::Mmio64, 1 << 32));
        // A 64 GiB BAR fits in a 1 TiB window, naturally aligned.
        let a = r.allocate(&BarSpec::mem64(64 << 30, false)).unwrap();
        assert_eq!((a.pool, a.range.start()), (Pool::Mmio64, 64 << 30));
        let a = r.allocate(&BarSpec::rom(0x800)).unwrap();
        assert_eq!(a.pool, Pool::Mmio32);
        assert_eq!(a.range.start() % 0x1000, 0);
        // A 2 GiB 32-bit BAR does not fit in a 960 MiB window.
        assert!(r.allocate(&BarSpec::mem32(1 << 31)).is_none());
    }

    #[test]
    fn fallback_and_release() {
        let mut r = Resources {
            io: AddressAllocator::new(0x6000, 0x100).unwrap(),
            mmio32: AddressAllocator::new(0xc000_0000, 0x10_0000).unwrap(),
            mmio64: None,
        };
        // No 64-bit window: prefetchable 64-bit BARs go low.
        let a = r.allocate(&BarSpec::mem64(0x8_0000, true)).unwrap();
        assert_eq!(a.pool, Pool::Mmio32);
        let b = r.allocate(&BarSpec::mem64(0x8_0000, true)).unwrap();
        assert!(r.allocate(&BarSpec::mem32(0x1000)).is_none());
        r.release(&[a, b]);
        assert!(r.allocate(&BarSpec::mem32(0x10_0000)).is_some());
        let io: Vec<_> = (0..4).map(|_| r.allocate(&BarSpec::io(0x40))).collect();
        assert!(io.iter().all(Option::is_some));
        assert!(r.allocate(&BarSpec::io(4)).is_none());
    }

    #[test]
    fn window_checks() {
        let w = PciWindows {
            mmio32: (0xc000_0000, 0x1000_0000),
            mmio64: Some((1 << 32, 1 << 32)),
            io: (0x6000, 0xa000),
        };
        assert!(w.allows(AddressSpace::Memory, 0xc000_0000, 0x1000));
        assert!(w.allows(AddressSpace::Memory, 0xcfff_f000, 0x1000));
        assert!(!w.allows(AddressSpace::Memory, 0xcfff_f000, 0x2000));
        assert!(w.allows(AddressSpace::Memory, 1 << 32, 1 << 32));
        assert!(!w.allows(AddressSpace::Memory, u64::MAX - 0xfff, 0x1000));
        assert!(!w.allows(AddressSpace::Io, 0xc000_0000, 0x10));
        assert!(w.allows(AddressSpace::Io, 0xfff0, 0x10));
        assert!(!w.allows(AddressSpace::Io, 0xfff0, 0x20));
        assert!(!w.allows(AddressSpace::Memory, 0, 0x1000));
    }
}
