//! WAET (Windows ACPI Emulated Devices Table): tells Windows which emulated devices it may trust
//! without the workarounds it uses on real hardware, so it makes fewer exits.
//!
//! One field after the standard header, the Emulated Device Flags (Microsoft's WAET
//! specification, version 1.0):
//!
//! - bit 0, **RTC good**: the RTC needs no acknowledgment (a read of status register C) after an
//!   interrupt. vfiovm's RTC (`devices::legacy::Cmos`) never raises IRQ 8 at all, so there is
//!   never anything to acknowledge, and reading C has no side effect beyond clearing UF.
//! - bit 1, **ACPI PM timer good**: one read of the PM timer returns a correct value, so the
//!   guest need not read it several times to filter glitches. vfiovm's PM timer
//!   (`devices::legacy::AcpiPm`) computes each read from the host's monotonic clock.

use acpi_tables::sdt::Sdt;

use super::{oem_table_id, OEM_ID, OEM_REVISION};

/// Table length: the header and the 4-byte flags.
pub(super) const WAET_LEN: usize = 40;
/// WAET revision.
const WAET_REVISION: u8 = 1;
/// Offset of the Emulated Device Flags.
const FLAGS_OFFSET: usize = 36;
/// The RTC needs no acknowledgment after an interrupt.
pub(super) const RTC_GOOD: u32 = 1 << 0;
/// A single read of the ACPI PM timer is reliable.
pub(super) const PM_TIMER_GOOD: u32 = 1 << 1;

/// Builds the WAET.
pub(super) fn build() -> Vec<u8> {
    let mut waet = Sdt::new(
        *b"WAET",
        WAET_LEN as u32,
        WAET_REVISION,
        OEM_ID,
        oem_table_id(b"WAET"),
        OEM_REVISION,
    );
    waet.write_u32(FLAGS_OFFSET, RTC_GOOD | PM_TIMER_GOOD);
    waet.update_checksum();
    waet.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{check_header, le};
    use super::*;

    #[test]
    fn waet_says_rtc_and_pm_timer_good() {
        let w = build();
        assert_eq!(w.len(), WAET_LEN);
        check_header(&w, b"WAET");
        assert_eq!(w[8], 1, "revision");
        assert_eq!(&w[16..24], b"VFIOWAET");
        assert_eq!(le(&w, 36, 4), 0b11);
    }
}
