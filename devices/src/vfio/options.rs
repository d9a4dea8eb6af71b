//! [`VfioPciOptions`]: what a VMM may choose about a passthrough device beyond the device
//! itself, for [`super::VfioPciDevice::with_options`].

use super::msix_reloc::MsixRelocation;
use super::reset::ResetHost;

/// Options of a passthrough device. `Default` is what [`super::VfioPciDevice::new`] uses: the
/// device's own ROM, the reset strategy chosen from the device fd alone, and MSI-X relocation
/// `auto`.
///
/// Built with [`VfioPciOptions::default`] and the setters (the struct may grow):
///
/// ```
/// use vfiovm_devices::vfio::{MsixRelocation, VfioPciOptions};
///
/// let opts = VfioPciOptions::default().msix_relocation(MsixRelocation::Off);
/// assert_eq!(opts.msix_relocation, MsixRelocation::Off);
/// assert!(opts.rom.is_none());
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VfioPciOptions {
    /// A ROM file's bytes, shown to the guest instead of the device's own ROM.
    pub rom: Option<Vec<u8>>,
    /// What the host says about resetting the device ([`super::reset`]); the groups' fds must
    /// stay open as long as the device.
    pub reset_host: ResetHost,
    /// Whether the MSI-X table and PBA the guest sees may be moved off the device's registers
    /// (`msix_relocation=` of `--device`; docs/passthrough.md, "The MSI-X page").
    pub msix_relocation: MsixRelocation,
}

impl VfioPciOptions {
    /// Shows the guest `rom` (a ROM file's bytes) instead of the device's ROM.
    pub fn rom(mut self, rom: Option<Vec<u8>>) -> Self {
        self.rom = rom;
        self
    }

    /// Chooses the reset strategy from `reset_host`.
    pub fn reset_host(mut self, reset_host: ResetHost) -> Self {
        self.reset_host = reset_host;
        self
    }

    /// Sets the MSI-X relocation mode.
    pub fn msix_relocation(mut self, mode: MsixRelocation) -> Self {
        self.msix_relocation = mode;
        self
    }
}
