//! The host bridge at 00:00.0, identified as QEMU Q35's MCH (8086:29c0, class 0x0600) so that
//! firmware and operating systems that know Q35 recognise the platform. It has no BARs, no
//! capabilities and no interrupt; its registers beyond the standard header read zero.

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
        HostBridge {
            config: ConfigSpace::new(&ConfigHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision_id: 0,
                class_code: HOST_BRIDGE_CLASS,
                subsystem_vendor_id: HOST_BRIDGE_SUBSYSTEM_VENDOR_ID,
                subsystem_id: HOST_BRIDGE_SUBSYSTEM_ID,
                interrupt_pin: 0,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
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
