//! The PCI Express capability (ID 0x10) and the vendor-specific extended capability (0x000B).
//!
//! An OS reads the extended config space (0x100..0x1000) only of functions that carry a PCI
//! Express capability. [`PciExpressCap`] is a version-2 capability without a link (a root
//! complex integrated endpoint, which is what a device on bus 0 of a Q35-like host is): device
//! control RW, device status error bits write-1-to-clear, everything else read-only zero.
//!
//! | Offset | Register | Access |
//! |---|---|---|
//! | 0x02 | PCIe capabilities: version 2, device/port type | RO |
//! | 0x04 | device capabilities: 128-byte max payload, role-based error reporting | RO |
//! | 0x08 | device control | RW (bits 14:0 except 9, 10) |
//! | 0x0A | device status: correctable/non-fatal/fatal/unsupported request detected | W1C (3:0) |
//! | 0x0C–0x3B | link, slot, root and "2" registers | RO zero |

use crate::pci::config::{CapRegs, ConfigError, ConfigSpace};

/// PCI Express capability ID.
pub const PCIE_CAP_ID: u8 = 0x10;
/// Length of a version-2 PCI Express capability (endpoint).
pub const PCIE_CAP_LEN: usize = 0x3c;
/// Device/port type: PCI Express endpoint.
pub const PCIE_TYPE_ENDPOINT: u8 = 0x0;
/// Device/port type: root complex integrated endpoint.
pub const PCIE_TYPE_RC_INTEGRATED: u8 = 0x9;
/// Device control register offset.
pub const PCIE_DEVICE_CONTROL: u16 = 0x08;
/// Device status register offset.
pub const PCIE_DEVICE_STATUS: u16 = 0x0a;
const DEVCAP_ROLE_BASED_ERROR: u32 = 1 << 15;
const DEVCTL_WRITABLE: u32 = 0x79ff;
const DEVSTA_W1C: u32 = 0xf;

/// Vendor-specific extended capability ID.
pub const VSEC_CAP_ID: u16 = 0x000b;

/// A PCI Express capability without a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciExpressCap {
    offset: u16,
}

impl PciExpressCap {
    /// Adds the capability with device/port type `device_type` to `cfg`.
    pub fn add_to(cfg: &mut ConfigSpace, device_type: u8) -> Result<Self, ConfigError> {
        let mut r = CapRegs::new(PCIE_CAP_LEN);
        r.field(0x02, 2, 2 | (u32::from(device_type & 0xf) << 4), 0, 0);
        r.field(0x04, 4, DEVCAP_ROLE_BASED_ERROR, 0, 0);
        r.field(PCIE_DEVICE_CONTROL.into(), 2, 0, DEVCTL_WRITABLE, 0);
        r.field(PCIE_DEVICE_STATUS.into(), 2, 0, 0, DEVSTA_W1C);
        let offset = cfg.add_capability(PCIE_CAP_ID, &r)?;
        Ok(PciExpressCap { offset })
    }

    /// Config offset of the capability.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Records a detected error in the device status register (bit 0 correctable, 1 non-fatal,
    /// 2 fatal, 3 unsupported request), as the device would.
    pub fn report_error(&self, cfg: &mut ConfigSpace, bits: u16) {
        let at = self.offset + PCIE_DEVICE_STATUS;
        let s = cfg.read_u16(at);
        cfg.set_u16(at, s | (bits & DEVSTA_W1C as u16));
    }
}

/// A vendor-specific extended capability: VSEC header (ID, revision, length) followed by a
/// payload of dwords, each read-only or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VendorExtCap {
    offset: u16,
}

impl VendorExtCap {
    /// Adds a VSEC with vendor-defined `vsec_id`/`rev` and payload dwords `(value, writable)`.
    pub fn add_to(
        cfg: &mut ConfigSpace,
        vsec_id: u16,
        rev: u8,
        payload: &[(u32, u32)],
    ) -> Result<Self, ConfigError> {
        let len = 8 + 4 * payload.len();
        let mut r = CapRegs::new(len);
        r.field(
            4,
            4,
            u32::from(vsec_id) | (u32::from(rev & 0xf) << 16) | ((len as u32 & 0xfff) << 20),
            0,
            0,
        );
        for (i, &(value, writable)) in payload.iter().enumerate() {
            r.field(8 + 4 * i, 4, value, writable, 0);
        }
        let offset = cfg.add_ext_capability(VSEC_CAP_ID, 1, &r)?;
        Ok(VendorExtCap { offset })
    }

    /// Config offset of the capability.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Config offset of payload dword `i`.
    pub fn payload_offset(&self, i: u16) -> u16 {
        self.offset + 8 + 4 * i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::ConfigHeader;

    fn cfg() -> ConfigSpace {
        ConfigSpace::new(&ConfigHeader {
            vendor_id: 1,
            device_id: 2,
            revision_id: 0,
            class_code: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: 0,
        })
    }

    #[test]
    fn pcie_capability_masks() {
        let mut c = cfg();
        let cap = PciExpressCap::add_to(&mut c, PCIE_TYPE_RC_INTEGRATED).unwrap();
        let off = cap.offset();
        assert_eq!(c.read_u16(off + 2), 0x92);
        c.write(off + 2, &[0xff; 4]);
        assert_eq!(c.read_u16(off + 2), 0x92);
        c.write(off + 8, &[0xff, 0xff]);
        assert_eq!(c.read_u16(off + 8), 0x79ff);
        cap.report_error(&mut c, 0x5);
        c.write(off + 0xa, &[0x4, 0]);
        assert_eq!(c.read_u16(off + 0xa), 0x1);
        c.write(off + 0xa, &[0xff, 0xff]);
        assert_eq!(c.read_u16(off + 0xa), 0);
        assert_eq!(c.capabilities(), vec![(off, PCIE_CAP_ID)]);
    }

    #[test]
    fn vendor_ext_capability_payload() {
        let mut c = cfg();
        let v =
            VendorExtCap::add_to(&mut c, 0x1234, 1, &[(0xaaaa_5555, 0), (7, u32::MAX)]).unwrap();
        assert_eq!(v.offset(), 0x100);
        assert_eq!(c.ext_capabilities(), vec![(0x100, VSEC_CAP_ID, 1)]);
        assert_eq!(c.read_u32(0x104), 0x1234 | (1 << 16) | (16 << 20));
        c.write(v.payload_offset(0), &[0; 4]);
        c.write(v.payload_offset(1), &[1, 2, 3, 4]);
        assert_eq!(c.read_u32(0x108), 0xaaaa_5555);
        assert_eq!(c.read_u32(0x10c), 0x0403_0201);
    }
}
