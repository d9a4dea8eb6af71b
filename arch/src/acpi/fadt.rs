//! FADT (signature `FACP`): the fixed ACPI hardware of the guest — the ICH9-style PM block at
//! 0x600 that the VMM's PM device emulates, the 0xCF9 reset register — and the pointers to the
//! DSDT and FACS.
//!
//! The platform is not hardware-reduced: the OS drives the PM1 event/control registers, the PM
//! timer and GPE0 directly. `SMI_CMD` is 0, which tells the OS that ACPI mode is always on (the
//! PM device must report `SCI_EN` set in PM1a_CNT). The power button is a fixed-feature button
//! (`PWR_BUTTON` clear), so the VMM can request a clean shutdown by setting `PWRBTN_STS` and
//! raising the SCI; there is no sleep button.

use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::Aml;

use super::{oem_table_id, OEM_ID, OEM_REVISION};
use crate::layout::{irqs, ports};

/// Length of an ACPI 6.5 FADT.
pub(super) const FADT_LEN: usize = 276;

/// PM1 event block length (status + enable, 2 bytes each).
const PM1_EVT_LEN: u8 = 4;
/// PM1 control block length.
const PM1_CNT_LEN: u8 = 2;
/// PM timer block length.
const PM_TMR_LEN: u8 = 4;
/// `P_LVL2_LAT` above 100 and `P_LVL3_LAT` above 1000 mean "C2/C3 not supported".
const C_STATE_UNSUPPORTED_LAT: u16 = 0x0fff;

/// `IAPC_BOOT_ARCH`: the platform has legacy (ISA/LPC) devices.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
/// `IAPC_BOOT_ARCH`: the platform has an i8042 keyboard controller.
const IAPC_8042: u16 = 1 << 1;

/// A System I/O generic address of `len` bytes at `port`, accessed `access` at a time.
fn io_gas(port: u16, len: u8, access: AccessSize) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        len.saturating_mul(8),
        0,
        access,
        u64::from(port),
    )
}

/// CMOS index of the RTC's century register (`devices::legacy::rtc`).
const RTC_CENTURY_INDEX: u8 = 0x32;

/// Builds the FADT pointing at the FACS and DSDT (both below 4 GiB, so the 32-bit and 64-bit
/// pointer fields hold the same address).
pub(super) fn build(facs_addr: u64, dsdt_addr: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, oem_table_id(b"FACP"), OEM_REVISION)
        .preferred_pm_profile(PmProfile::Unspecified)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .gpe_info(u32::from(ports::GPE0_BLK), 0, ports::GPE0_BLK_LEN, 0, 0);

    // The builder's address setters zero the other width; set both explicitly. The ACPI area is
    // below 4 GiB (asserted in mod.rs), so the truncations are exact.
    f.firmware_ctrl = (facs_addr as u32).into();
    f.x_firmware_ctrl = facs_addr.into();
    f.dsdt = (dsdt_addr as u32).into();
    f.x_dsdt = dsdt_addr.into();

    f.sci_int = (irqs::SCI as u16).into();
    f.smi_cmd = 0u32.into();

    f.pm1a_evt_blk = u32::from(ports::PM1A_EVT).into();
    f.pm1a_cnt_blk = u32::from(ports::PM1A_CNT).into();
    f.pm_tmr_blk = u32::from(ports::PM_TMR).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.pm_tmr_len = PM_TMR_LEN;
    f.x_pm1a_evt_blk = io_gas(ports::PM1A_EVT, PM1_EVT_LEN, AccessSize::WordAccess);
    f.x_pm1a_cnt_blk = io_gas(ports::PM1A_CNT, PM1_CNT_LEN, AccessSize::WordAccess);
    f.x_pm_tmr_blk = io_gas(ports::PM_TMR, PM_TMR_LEN, AccessSize::DwordAccess);
    f.x_gpe0_blk = io_gas(ports::GPE0_BLK, ports::GPE0_BLK_LEN, AccessSize::ByteAccess);

    f.p_lvl2_lat = C_STATE_UNSUPPORTED_LAT.into();
    f.p_lvl3_lat = C_STATE_UNSUPPORTED_LAT.into();
    f.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042).into();
    // The CMOS device implements the century register.
    f.century = RTC_CENTURY_INDEX;

    f.reset_reg = io_gas(ports::RESET_CF9, 1, AccessSize::ByteAccess);
    f.reset_value = ports::RESET_VALUE;

    let mut bytes = Vec::with_capacity(FADT_LEN);
    f.finalize().to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_util::{check_header, le};

    // Offsets from the ACPI 6.5 specification, table 5.9 (typed in independently of the builder).
    const FIRMWARE_CTRL: usize = 36;
    const DSDT: usize = 40;
    const SCI_INT: usize = 46;
    const SMI_CMD: usize = 48;
    const ACPI_ENABLE: usize = 52;
    const PM1A_EVT_BLK: usize = 56;
    const PM1B_EVT_BLK: usize = 60;
    const PM1A_CNT_BLK: usize = 64;
    const PM_TMR_BLK: usize = 76;
    const GPE0_BLK: usize = 80;
    const GPE1_BLK: usize = 84;
    const PM1_EVT_LEN: usize = 88;
    const PM1_CNT_LEN: usize = 89;
    const PM_TMR_LEN: usize = 91;
    const GPE0_BLK_LEN: usize = 92;
    const IAPC_BOOT_ARCH: usize = 109;
    const CENTURY: usize = 108;
    const FLAGS: usize = 112;
    const RESET_REG: usize = 116;
    const RESET_VALUE: usize = 128;
    const X_FIRMWARE_CTRL: usize = 132;
    const X_DSDT: usize = 140;
    const X_PM1A_EVT_BLK: usize = 148;
    const X_PM1A_CNT_BLK: usize = 172;
    const X_PM_TMR_BLK: usize = 208;
    const X_GPE0_BLK: usize = 220;

    /// (space, bit width, bit offset, access size, address) of the GAS at `off`.
    fn gas(b: &[u8], off: usize) -> (u8, u8, u8, u8, u64) {
        (
            b[off],
            b[off + 1],
            b[off + 2],
            b[off + 3],
            le(b, off + 4, 8),
        )
    }

    #[test]
    fn header_and_pointers() {
        let b = build(0xe_0040, 0xe_1230);
        check_header(&b, b"FACP");
        assert_eq!(b.len(), 276);
        assert_eq!(b[8], 6, "major revision");
        assert_eq!(b[131], 5, "minor revision");
        assert_eq!(le(&b, FIRMWARE_CTRL, 4), 0xe_0040);
        assert_eq!(le(&b, X_FIRMWARE_CTRL, 8), 0xe_0040);
        assert_eq!(le(&b, DSDT, 4), 0xe_1230);
        assert_eq!(le(&b, X_DSDT, 8), 0xe_1230);
    }

    #[test]
    fn pm_block_in_both_forms() {
        let b = build(0xe_0040, 0xe_1000);
        assert_eq!(le(&b, SCI_INT, 2), u64::from(irqs::SCI));
        assert_eq!(le(&b, SMI_CMD, 4), 0);
        assert_eq!(b[ACPI_ENABLE], 0);
        assert_eq!(le(&b, PM1A_EVT_BLK, 4), u64::from(ports::PM1A_EVT));
        assert_eq!(le(&b, PM1B_EVT_BLK, 4), 0);
        assert_eq!(le(&b, PM1A_CNT_BLK, 4), u64::from(ports::PM1A_CNT));
        assert_eq!(le(&b, PM_TMR_BLK, 4), u64::from(ports::PM_TMR));
        assert_eq!(le(&b, GPE0_BLK, 4), u64::from(ports::GPE0_BLK));
        assert_eq!(le(&b, GPE1_BLK, 4), 0);
        assert_eq!(b[PM1_EVT_LEN], 4);
        assert_eq!(b[PM1_CNT_LEN], 2);
        assert_eq!(b[PM_TMR_LEN], 4);
        assert_eq!(b[GPE0_BLK_LEN], ports::GPE0_BLK_LEN);
        // Space 1 = System I/O; access sizes 1/2/3 = byte/word/dword.
        assert_eq!(
            gas(&b, X_PM1A_EVT_BLK),
            (1, 32, 0, 2, u64::from(ports::PM1A_EVT))
        );
        assert_eq!(
            gas(&b, X_PM1A_CNT_BLK),
            (1, 16, 0, 2, u64::from(ports::PM1A_CNT))
        );
        assert_eq!(
            gas(&b, X_PM_TMR_BLK),
            (1, 32, 0, 3, u64::from(ports::PM_TMR))
        );
        assert_eq!(
            gas(&b, X_GPE0_BLK),
            (1, 128, 0, 1, u64::from(ports::GPE0_BLK))
        );
    }

    #[test]
    fn reset_register_and_flags() {
        let b = build(0xe_0040, 0xe_1000);
        assert_eq!(
            gas(&b, RESET_REG),
            (1, 8, 0, 1, u64::from(ports::RESET_CF9))
        );
        assert_eq!(b[RESET_VALUE], ports::RESET_VALUE);
        let flags = le(&b, FLAGS, 4);
        assert_ne!(flags & (1 << 0), 0, "WBINVD");
        assert_ne!(flags & (1 << 2), 0, "PROC_C1");
        assert_eq!(flags & (1 << 4), 0, "PWR_BUTTON is a fixed feature");
        assert_ne!(flags & (1 << 5), 0, "SLP_BUTTON absent");
        assert_eq!(flags & (1 << 8), 0, "TMR_VAL_EXT: 24-bit timer");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
        assert_eq!(le(&b, IAPC_BOOT_ARCH, 2), 0b11, "LEGACY_DEVICES | 8042");
        assert_eq!(b[CENTURY], 0x32, "RTC century register");
    }
}
