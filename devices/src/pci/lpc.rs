//! The LPC/ISA bridge at 00:1f.0, identified as Q35's ICH9 LPC (8086:2918, class 0x0601), with
//! the two registers UEFI firmware (OVMF) programs: PMBASE, where the ACPI PM I/O block
//! decodes, and ACPI_CNTL, which switches that decoding on. The bridge owns the PM block's place
//! on the port bus and moves it when the guest moves PMBASE.
//!
//! Registers beyond the header: PMBASE (0x40, 32 bits, bits 15–7 writable, bit 0 reads 1),
//! ACPI_CNTL (0x44, bit 7 ACPI_EN writable), PIRQ A–D routes (0x60–0x63), PIRQ E–H (0x68–0x6B)
//! and RCBA (0xF0, 32 bits) stored and otherwise without effect. The command register's I/O
//! and memory bits are writable (the ISA devices behind the bridge need them on). Everything
//! else reads zero and ignores writes.
//!
//! At reset PMBASE is `pm_base | 1` and ACPI_CNTL has ACPI_EN set: the VMM has done what the
//! firmware would (the direct-boot ACPI tables name the block there), and OVMF, which checks
//! ACPI_EN first, keeps it.

use std::sync::Arc;

use super::bar::{BarSpec, DecodedBar};
use super::config::{ConfigHeader, ConfigSpace};
use super::{BarAccess, PciDevice};
use crate::bus::{Bus, SharedBusDevice};

/// Intel's vendor ID.
pub const LPC_VENDOR_ID: u16 = 0x8086;
/// ICH9's LPC interface (ICH9-DO, what QEMU's Q35 shows).
pub const LPC_DEVICE_ID: u16 = 0x2918;
/// Class code: bridge (0x06), ISA bridge (0x01).
pub const LPC_CLASS: u32 = 0x06_01_00;
/// Where Q35 puts it: device 0x1f, function 0.
pub const LPC_SLOT: u8 = 0x1f;

/// PMBASE: the ACPI PM block's I/O base (bits 15–7), bit 0 hard-wired to 1 (I/O space).
pub const PMBASE: u16 = 0x40;
/// ACPI_CNTL: bit 7 enables decoding of the PM block.
pub const ACPI_CNTL: u16 = 0x44;
/// ACPI_CNTL's enable bit.
pub const ACPI_EN: u8 = 1 << 7;
/// PIRQ A–D routing registers.
pub const PIRQA_ROUT: u16 = 0x60;
/// PIRQ E–H routing registers.
pub const PIRQE_ROUT: u16 = 0x68;
/// Root complex base address.
pub const RCBA: u16 = 0xf0;
/// PMBASE's writable bits: a 128-byte aligned I/O address.
const PMBASE_ADDR_MASK: u32 = 0xff80;
/// PMBASE bit 0: I/O space indicator, reads 1.
const PMBASE_IO: u32 = 1;

/// The LPC bridge.
pub struct LpcBridge {
    config: ConfigSpace,
    pio: Arc<Bus>,
    pm: SharedBusDevice,
    pm_len: u64,
    /// Where the PM block is mapped now, if anywhere.
    mapped: Option<u64>,
    /// PMBASE at power-on.
    reset_pm_base: u16,
}

impl std::fmt::Debug for LpcBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LpcBridge")
            .field("pmbase", &format_args!("{:#x}", self.pm_base()))
            .field("mapped", &self.mapped)
            .finish_non_exhaustive()
    }
}

impl LpcBridge {
    /// A bridge whose PM block (`pm`, `pm_len` bytes of ports) decodes at `pm_base` from the
    /// start; maps it there on `pio`.
    pub fn new(
        pio: Arc<Bus>,
        pm: SharedBusDevice,
        pm_len: u64,
        pm_base: u16,
    ) -> Result<Self, crate::bus::BusError> {
        let mut lpc = LpcBridge {
            config: Self::power_on_config(pm_base),
            pio,
            pm,
            pm_len,
            mapped: None,
            reset_pm_base: pm_base,
        };
        lpc.remap()?;
        Ok(lpc)
    }

    /// The config space at power-on, with the PM block decoding at `pm_base`.
    fn power_on_config(pm_base: u16) -> ConfigSpace {
        let mut config = ConfigSpace::new(&ConfigHeader {
            vendor_id: LPC_VENDOR_ID,
            device_id: LPC_DEVICE_ID,
            revision_id: 2,
            class_code: LPC_CLASS,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 0,
        });
        config.set_u32(PMBASE, (u32::from(pm_base) & PMBASE_ADDR_MASK) | PMBASE_IO);
        config.set_masks(PMBASE, &PMBASE_ADDR_MASK.to_le_bytes(), &[0; 4]);
        config.set_u8(ACPI_CNTL, ACPI_EN);
        config.set_masks(ACPI_CNTL, &[ACPI_EN], &[0]);
        config.set_masks(PIRQA_ROUT, &[0xff; 4], &[0; 4]);
        config.set_masks(PIRQE_ROUT, &[0xff; 4], &[0; 4]);
        config.set_u32(PIRQA_ROUT, 0x8080_8080);
        config.set_u32(PIRQE_ROUT, 0x8080_8080);
        config.set_masks(RCBA, &[0x01, 0xc0, 0xff, 0xff], &[0; 4]);
        config
    }

    /// The I/O address PMBASE holds.
    pub fn pm_base(&self) -> u16 {
        (self.config.read_u32(PMBASE) & PMBASE_ADDR_MASK) as u16
    }

    /// Whether the PM block decodes.
    pub fn acpi_enabled(&self) -> bool {
        self.config.read_u8(ACPI_CNTL) & ACPI_EN != 0
    }

    /// Where the PM block is mapped on the port bus now.
    pub fn pm_mapped_at(&self) -> Option<u64> {
        self.mapped
    }

    /// Puts the PM block where PMBASE and ACPI_CNTL say.
    fn remap(&mut self) -> Result<(), crate::bus::BusError> {
        let want = self.acpi_enabled().then(|| u64::from(self.pm_base()));
        if want == self.mapped {
            return Ok(());
        }
        if let Some(old) = self.mapped.take() {
            self.pio.remove(old, self.pm_len)?;
        }
        if let Some(new) = want {
            self.pio.insert(self.pm.clone(), new, self.pm_len)?;
            self.mapped = Some(new);
        }
        Ok(())
    }
}

impl PciDevice for LpcBridge {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
        if ConfigSpace::touches(offset, data.len(), PMBASE, 4)
            || ConfigSpace::touches(offset, data.len(), ACPI_CNTL, 1)
        {
            if let Err(e) = self.remap() {
                // Another device claims those ports: the block stays unmapped until the guest
                // picks a free base.
                log::warn!(
                    "LPC: cannot map the ACPI PM block at {:#x}: {e}",
                    self.pm_base()
                );
            }
        }
    }

    /// PMBASE, ACPI_CNTL (the PM block back at its power-on base), the PIRQ routes, RCBA and
    /// the command register to their power-on values.
    fn system_reset(&mut self) {
        self.config = Self::power_on_config(self.reset_pm_base);
        if let Err(e) = self.remap() {
            log::warn!(
                "LPC: cannot map the ACPI PM block at {:#x} after a reset: {e}",
                self.pm_base()
            );
        }
    }

    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        Vec::new()
    }

    fn decoded_bars(&self) -> Vec<DecodedBar> {
        Vec::new()
    }
}

impl BarAccess for LpcBridge {
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use std::sync::Mutex;

    struct Pm;
    impl BusDevice for Pm {
        fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, _: u64, _: u64, _: &[u8]) {}
    }

    fn lpc() -> (LpcBridge, Arc<Bus>) {
        let pio = Arc::new(Bus::new("pio"));
        let l = LpcBridge::new(pio.clone(), Arc::new(Mutex::new(Pm)), 0x40, 0x600).unwrap();
        (l, pio)
    }

    fn read32(l: &mut LpcBridge, off: u16) -> u32 {
        let mut d = [0u8; 4];
        l.config_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn identity_is_ich9_lpc() {
        let (mut l, _) = lpc();
        assert_eq!(read32(&mut l, 0), 0x2918_8086);
        assert_eq!(read32(&mut l, 8) >> 8, 0x06_01_00);
    }

    #[test]
    fn pm_block_starts_at_0x600_with_acpi_enabled() {
        let (mut l, pio) = lpc();
        assert_eq!(read32(&mut l, PMBASE), 0x601);
        assert!(l.acpi_enabled());
        let mut d = [0u8; 1];
        assert!(pio.read(0x608, &mut d));
        assert_eq!(d, [8]);
    }

    /// OVMF's sequence when ACPI_EN is clear: PMBASE = 0x600, then ACPI_CNTL |= 0x80. And a
    /// move elsewhere, and decoding off.
    #[test]
    fn pmbase_and_acpi_cntl_move_the_block() {
        let (mut l, pio) = lpc();
        l.config_write(ACPI_CNTL, &[0]);
        assert_eq!(l.pm_mapped_at(), None);
        let mut d = [0u8; 1];
        assert!(!pio.read(0x600, &mut d));
        l.config_write(PMBASE, &0x0000_b000u32.to_le_bytes());
        assert_eq!(read32(&mut l, PMBASE), 0xb001, "bit 0 reads 1");
        assert_eq!(l.pm_mapped_at(), None);
        l.config_write(ACPI_CNTL, &[0x80]);
        assert_eq!(l.pm_mapped_at(), Some(0xb000));
        assert!(pio.read(0xb004, &mut d));
        assert_eq!(d, [4]);
        // Unaligned low bits are dropped; the block follows PMBASE.
        l.config_write(PMBASE, &0x0000_067fu32.to_le_bytes());
        assert_eq!(read32(&mut l, PMBASE), 0x601);
        assert_eq!(l.pm_mapped_at(), Some(0x600));
        assert!(!pio.read(0xb004, &mut d));
        assert!(pio.read(0x600, &mut d));
        // Only ACPI_EN of ACPI_CNTL is writable.
        l.config_write(ACPI_CNTL, &[0xff]);
        assert_eq!(read32(&mut l, ACPI_CNTL) & 0xff, 0x80);
    }

    #[test]
    fn command_pirq_and_rcba_are_writable() {
        let (mut l, _) = lpc();
        l.config_write(4, &[0x03, 0]);
        assert_eq!(read32(&mut l, 4) & 0x3, 0x3);
        l.config_write(PIRQA_ROUT, &[0x0a, 0x0b, 0x0a, 0x0b]);
        assert_eq!(read32(&mut l, PIRQA_ROUT), 0x0b0a_0b0a);
        l.config_write(RCBA, &0xfed1_c001u32.to_le_bytes());
        assert_eq!(read32(&mut l, RCBA), 0xfed1_c001);
        // Registers without a model read zero and ignore writes.
        l.config_write(0x50, &[0xff; 4]);
        assert_eq!(read32(&mut l, 0x50), 0);
    }

    /// A system reset puts the PM block back at its power-on base and clears what the
    /// firmware wrote.
    #[test]
    fn system_reset_restores_the_power_on_registers() {
        let (mut l, pio) = lpc();
        l.config_write(4, &[0x03, 0]);
        l.config_write(ACPI_CNTL, &[0]);
        l.config_write(PMBASE, &0x0000_b000u32.to_le_bytes());
        l.config_write(ACPI_CNTL, &[0x80]);
        l.config_write(PIRQA_ROUT, &[0x0a, 0x0b, 0x0a, 0x0b]);
        l.config_write(RCBA, &0xfed1_c001u32.to_le_bytes());
        assert_eq!(l.pm_mapped_at(), Some(0xb000));
        l.system_reset();
        assert_eq!(l.pm_mapped_at(), Some(0x600));
        let mut d = [0u8; 1];
        assert!(!pio.read(0xb004, &mut d));
        assert!(pio.read(0x604, &mut d));
        assert_eq!(read32(&mut l, PMBASE), 0x601);
        assert_eq!(read32(&mut l, ACPI_CNTL) & 0xff, 0x80);
        assert_eq!(read32(&mut l, 4) & 0xffff, 0);
        assert_eq!(read32(&mut l, PIRQA_ROUT), 0x8080_8080);
        assert_eq!(read32(&mut l, RCBA), 0);
    }

    #[test]
    fn a_taken_base_leaves_the_block_unmapped() {
        let (mut l, pio) = lpc();
        pio.insert(Arc::new(Mutex::new(Pm)), 0x700, 0x40).unwrap();
        l.config_write(PMBASE, &0x700u32.to_le_bytes());
        assert_eq!(l.pm_mapped_at(), None);
        l.config_write(PMBASE, &0x600u32.to_le_bytes());
        assert_eq!(l.pm_mapped_at(), Some(0x600));
    }
}
