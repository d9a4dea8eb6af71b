//! The host bridge at 00:00.0, identified as QEMU Q35's MCH (8086:29c0, class 0x0600) so that
//! firmware and operating systems that know Q35 recognise the platform. It has no BARs, no
//! capabilities and no interrupt; its registers beyond the standard header read zero, except
//! PCIEXBAR (0x60–0x67), which keeps what firmware writes there (OVMF writes 0xB000_0001: ECAM
//! at 0xB000_0000, enabled) without moving anything: the ECAM window stays where the layout and
//! the MCFG put it.

use super::bar::{BarSpec, DecodedBar};
use super::config::{ConfigHeader, ConfigSpace};
use super::{BarAccess, PciDevice};

/// Intel's vendor ID.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
/// The Q35 MCH's device ID.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x29c0;
/// Class code: bridge (0x06), host bridge (0x00).
pub const HOST_BRIDGE_CLASS: u32 = 0x06_00_00;
/// Subsystem vendor QEMU uses.
pub const HOST_BRIDGE_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem ID QEMU uses.
pub const HOST_BRIDGE_SUBSYSTEM_ID: u16 = 0x1100;

/// PCIEXBAR, 64 bits: the ECAM base, its size and an enable bit (stored only).
pub const PCIEXBAR: u16 = 0x60;

/// The host bridge function.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// A host bridge in its reset state.
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(&ConfigHeader {
            vendor_id: HOST_BRIDGE_VENDOR_ID,
            device_id: HOST_BRIDGE_DEVICE_ID,
            revision_id: 0,
            class_code: HOST_BRIDGE_CLASS,
            subsystem_vendor_id: HOST_BRIDGE_SUBSYSTEM_VENDOR_ID,
            subsystem_id: HOST_BRIDGE_SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        config.set_masks(PCIEXBAR, &[0xff; 8], &[0; 8]);
        HostBridge { config }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }

    /// PCIEXBAR and the command register back to zero.
    fn system_reset(&mut self) {
        *self = HostBridge::new();
    }

    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        Vec::new()
    }

    fn decoded_bars(&self) -> Vec<DecodedBar> {
        Vec::new()
    }
}

impl BarAccess for HostBridge {
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OVMF's Q35 setup: PCIEXBAR high = 0, low = 0xB000_0001; both read back. Other registers
    /// past the header stay read-only zero.
    #[test]
    fn pciexbar_keeps_what_firmware_writes() {
        let mut h = HostBridge::new();
        h.config_write(PCIEXBAR + 4, &0u32.to_le_bytes());
        h.config_write(PCIEXBAR, &0xb000_0001u32.to_le_bytes());
        let mut d = [0u8; 4];
        h.config_read(PCIEXBAR, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xb000_0001);
        h.config_write(0x90, &[0x30]);
        h.config_read(0x90, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
