//! The guest-facing PCI platform: one PCI segment with bus 0, reached through the type-1
//! mechanism (ports 0xCF8/0xCFC) and ECAM, a config-space model shared by every device, BAR
//! placement and remapping, MSI/MSI-X/INTx, a test device, and QEMU's `pci-testdev`.
//!
//! # Pieces
//!
//! | Module | What |
//! |---|---|
//! | [`config`] | [`ConfigSpace`]: 4 KiB of registers with read-only / writable / write-1-to-clear masks, BAR declarations, capability lists |
//! | [`bar`] | BAR kinds, flags and size masks |
//! | [`caps`] | one struct per capability: MSI, MSI-X, PCI Express, vendor-specific extended |
//! | [`host_bridge`] | 00:00.0, the Q35 host bridge (8086:29c0) |
//! | [`lpc`] | 00:1f.0, the ICH9 LPC bridge (8086:2918) with PMBASE/ACPI_CNTL, for UEFI firmware |
//! | [`config_access`] | the two ways in: [`PciConfigIo`] (0xCF8–0xCFF, with the 0xCF9 reset register) and [`PciConfigMmio`] (ECAM) |
//! | [`platform`] | [`PciPlatform`]: the facade the VMM uses; assigns BARs, keeps the buses in step with what the guest programs |
//! | [`testdev`] | [`TestDevice`]: a test double that exercises every path (BAR kinds, ROM, MSI, MSI-X, INTx, DMA) |
//! | [`pci_testdev`] | [`PciTestDev`]: QEMU's `pci-testdev` (1b36:0005) for kvm-unit-tests' `vmexit`: MMIO and port writes that exit, and ones an ioeventfd takes |
//!
//! # Two traits per device
//!
//! A PCI function implements [`PciDevice`] (config space, BAR declarations, hooks) and
//! [`BarAccess`] (what its BARs do when the guest touches them). They are separate so that the
//! config side never sees bus traffic and the bus never sees config methods; the platform maps
//! each decoded BAR on the port-I/O or MMIO [`crate::Bus`] with a small adapter that forwards to
//! [`BarAccess`] with the BAR's index.
//!
//! # Locking
//!
//! Config accesses from both mechanisms serialise on the platform's root lock, then take the
//! device's lock, then (when the BARs move) the buses' range-map locks. BAR accesses take only
//! the device's lock. No path takes the root lock while holding a device lock.

use std::fmt;

use crate::interrupt::IntxLine;

pub mod bar;
pub mod caps;
pub mod config;
pub mod config_access;
pub mod host_bridge;
pub mod lpc;
pub mod pci_testdev;
pub mod platform;
mod root;
pub mod testdev;

#[cfg(test)]
mod tests;

pub use bar::{AddressSpace, BarKind, BarSpec, DecodedBar, ROM_BAR};
pub use config::{ConfigHeader, ConfigSpace};
pub use config_access::{PciConfigIo, PciConfigMmio, PCI_CONFIG_IO_LEN};
pub use host_bridge::HostBridge;
pub use lpc::LpcBridge;
pub use pci_testdev::PciTestDev;
pub use platform::{IntxMap, PciPlatform, PciPlatformConfig, PciWindows, PlatformError};
pub use testdev::TestDevice;

/// Number of device slots on a bus.
pub const SLOTS_PER_BUS: u8 = 32;
/// Number of functions per device.
pub const FUNCTIONS_PER_SLOT: u8 = 8;

/// A function's address on segment 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{}",
            self.bus, self.device, self.function
        )
    }
}

/// The config-space side of a PCI function.
///
/// Config accesses reach the device as 1, 2 or 4 bytes, naturally aligned, with
/// `offset + data.len() <= 4096` (the platform splits anything else into byte accesses).
pub trait PciDevice: Send {
    /// A guest config-space read.
    fn config_read(&mut self, offset: u16, data: &mut [u8]);
    /// A guest config-space write. The platform re-reads [`PciDevice::decoded_bars`] afterwards
    /// and moves bus mappings to match.
    fn config_write(&mut self, offset: u16, data: &[u8]);
    /// The BARs (index 0..=5) and ROM ([`ROM_BAR`]) the device implements.
    fn bar_specs(&self) -> Vec<(usize, BarSpec)>;
    /// The BARs the device decodes right now (decoding on, at the programmed addresses).
    fn decoded_bars(&self) -> Vec<DecodedBar>;
    /// BAR `bar` was mapped at `new` (`None`: unmapped) after being mapped at `old`. A
    /// passthrough device moves its KVM memory slot here. Called with the device locked.
    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        let _ = (bar, old, new);
    }
    /// The address windows BARs may be mapped in; the platform tells the device once, when
    /// it is added, so a device that maps BAR memory itself (passthrough) can refuse a mapping
    /// outside them whoever asks for it.
    fn set_bar_windows(&mut self, windows: &platform::PciWindows) {
        let _ = windows;
    }
    /// The platform wired the device's interrupt pin to `line` (called once when the device is
    /// added, if its interrupt pin register is non-zero).
    fn attach_intx(&mut self, line: Box<dyn IntxLine>) {
        drop(line);
    }
    /// A system reset (the guest rebooted and the VM restarts in place): the function returns
    /// to its power-on state — device registers, interrupts (MSI/MSI-X off, entries masked),
    /// a passed-through device reset through VFIO. It need not touch its BARs, interrupt line
    /// or command register: [`platform::PciPlatform::system_reset`] writes those back as the
    /// platform programmed them when the device was added, right after this returns. The
    /// default does nothing (a function without state of its own).
    fn system_reset(&mut self) {}
}

/// The bus side of a PCI function: accesses to its BARs, by BAR index ([`ROM_BAR`] for the ROM)
/// and offset into the BAR. The platform only forwards accesses that fall entirely inside the
/// BAR.
pub trait BarAccess: Send {
    /// A guest read from a BAR.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// A guest write to a BAR.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}

/// Splits an access of `len` bytes at `offset` into naturally aligned pieces of 1, 2 or 4
/// bytes: `(index into the data, length)`. Aligned 1/2/4-byte accesses stay whole, an aligned
/// 8-byte access becomes two dwords, anything else becomes bytes.
pub(crate) fn aligned_pieces(offset: u64, len: usize) -> Vec<(usize, usize)> {
    match len {
        1 | 2 | 4 if offset % len as u64 == 0 => vec![(0, len)],
        8 if offset % 4 == 0 => vec![(0, 4), (4, 4)],
        _ => (0..len).map(|i| (i, 1)).collect(),
    }
}
