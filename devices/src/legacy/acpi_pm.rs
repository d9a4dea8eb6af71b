//! The ACPI power-management I/O block, in the Intel ICH9 layout QEMU's Q35 uses (the VMM maps it
//! at 0x600): PM1a event and control blocks, the ACPI PM timer and the GPE0 block.
//!
//! What a guest gets:
//! - `PM1_STS` (write 1 to clear) and `PM1_EN`. `TMR_STS` is set whenever bit 23 of the PM timer
//!   toggles; nothing else sets status bits yet.
//! - `PM1_CNT`: `SCI_EN` always reads 1 (there is no SMI_CMD, so the OS never has to switch to
//!   ACPI mode). Writing `SLP_EN` with `SLP_TYP` equal to the S5 value given to [`AcpiPm::new`]
//!   (the DSDT's `_S5` package) requests [`GuestExit::PowerOff`], once. Other sleep states are
//!   not supported: the write is ignored and logged once, and the guest keeps running.
//! - `PM_TMR`: the 24-bit ACPI PM timer at 3.579545 MHz, counted from the device's creation on a
//!   monotonic clock. It wraps at 2^24 (the FADT must not set `TMR_VAL_EXT`).
//! - GPE0: 8 status bytes (write 1 to clear) and 8 enable bytes. No GPE source exists yet.
//!
//! No SCI is raised. Every access is handled byte by byte, so any size at any offset works;
//! reserved offsets read zero and ignore writes.

use std::sync::Arc;
use std::time::Instant;

use crate::bus::BusDevice;
use crate::exit::{ExitSink, GuestExit};
use crate::legacy::Once;

/// Length of the I/O range the PM block claims.
pub const ACPI_PM_BLOCK_LEN: u64 = 0x40;

// Register offsets within the block.
/// PM1a status, 16 bits, write 1 to clear.
const PM1_STS: u64 = 0x00;
/// PM1a enable, 16 bits.
const PM1_EN: u64 = 0x02;
/// PM1a control, 32 bits on ICH9 (bits 16–31 reserved).
const PM1_CNT: u64 = 0x04;
/// PM timer, 32 bits read-only (bits 24–31 read zero).
const PM_TMR: u64 = 0x08;
/// GPE0 status bytes, write 1 to clear.
const GPE0_STS: u64 = 0x20;
/// GPE0 enable bytes.
const GPE0_EN: u64 = 0x28;
/// Bytes in each GPE0 half.
const GPE0_HALF_LEN: usize = 8;

// PM1_STS bits.
/// PM timer bit 23 toggled.
const PM1_STS_TMR: u16 = 1 << 0;
/// Bits a guest can find set in PM1_STS (TMR, BM, GBL, PWRBTN, RTC, PCIEXP_WAKE, WAK).
const PM1_STS_MASK: u16 = 0xc531;

// PM1_EN bits: TMR_EN, GBL_EN, PWRBTN_EN, RTC_EN, PCIEXP_WAKE_DIS.
const PM1_EN_MASK: u16 = 0x4521;

// PM1_CNT bits.
/// SCI enable: the OS owns the hardware. Read-only 1 here.
const PM1_CNT_SCI_EN: u16 = 1 << 0;
/// Bus master reload; stored, no effect.
const PM1_CNT_BM_RLD: u16 = 1 << 1;
/// Sleep type field (bits 10–12).
const PM1_CNT_SLP_TYP_SHIFT: u32 = 10;
/// Width mask of the sleep type field.
const SLP_TYP_MASK: u8 = 0x7;
/// Sleep enable: write-only, reads zero.
const PM1_CNT_SLP_EN: u16 = 1 << 13;
/// Bits of PM1_CNT that keep the value written.
const PM1_CNT_STORED: u16 = PM1_CNT_BM_RLD | ((SLP_TYP_MASK as u16) << PM1_CNT_SLP_TYP_SHIFT);

/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The PM timer counts in 24 bits.
const PM_TMR_MASK: u64 = 0xff_ffff;
/// `TMR_STS` is set each time this timer bit toggles.
const PM_TMR_STS_SHIFT: u32 = 23;

/// Errors from building the PM block.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiPmError {
    /// SLP_TYP is a 3-bit field.
    #[error("S5 sleep type {0} does not fit the 3-bit SLP_TYP field (use the value of the DSDT's _S5 package, 0-7)")]
    InvalidSlpTyp(u8),
}

/// The ACPI PM register block.
pub struct AcpiPm {
    exit: Arc<dyn ExitSink>,
    s5_slp_typ: u8,
    /// A second sleep type that also powers off ([`AcpiPm::with_s5_alias`]).
    s5_alias: Option<u8>,
    start: Instant,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0_sts: [u8; GPE0_HALF_LEN],
    gpe0_en: [u8; GPE0_HALF_LEN],
    /// `timer ticks >> 23` when TMR_STS was last brought up to date.
    tmr_sts_epoch: u64,
    powered_off: bool,
    warned_sleep: Once,
    warned_reserved: Once,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm")
            .field("s5_slp_typ", &self.s5_slp_typ)
            .field("pm1_sts", &self.pm1_sts)
            .field("pm1_en", &self.pm1_en)
            .field("pm1_cnt", &self.pm1_cnt)
            .field("powered_off", &self.powered_off)
            .finish_non_exhaustive()
    }
}

impl AcpiPm {
    /// Back to the power-on state (a system reset): status, enable and control registers and
    /// the GPE block cleared, power-off undone. The PM timer runs on: it is free-running
    /// hardware no reset stops.
    pub fn reset(&mut self) {
        self.pm1_sts = 0;
        self.pm1_en = 0;
        self.pm1_cnt = 0;
        self.gpe0_sts = [0; GPE0_HALF_LEN];
        self.gpe0_en = [0; GPE0_HALF_LEN];
        self.powered_off = false;
    }

    /// A PM block whose S5 sleep type is `s5_slp_typ` (what the DSDT's `_S5` names); power-off
    /// requests go to `exit`. The PM timer starts at zero now.
    pub fn new(exit: Arc<dyn ExitSink>, s5_slp_typ: u8) -> Result<Self, AcpiPmError> {
        if s5_slp_typ > SLP_TYP_MASK {
            return Err(AcpiPmError::InvalidSlpTyp(s5_slp_typ));
        }
        Ok(AcpiPm {
            exit,
            s5_slp_typ,
            s5_alias: None,
            start: Instant::now(),
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: 0,
            gpe0_sts: [0; GPE0_HALF_LEN],
            gpe0_en: [0; GPE0_HALF_LEN],
            tmr_sts_epoch: 0,
            powered_off: false,
            warned_sleep: Once::default(),
            warned_reserved: Once::default(),
        })
    }

    /// Timer ticks since creation at `now` (not wrapped).
    fn ticks(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        let ticks = nanos * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        // u64 ticks last ~163,000 years; saturate rather than wrap if that ever matters.
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// The 24-bit PM timer value at `now`.
    fn timer_value(&self, now: Instant) -> u32 {
        (self.ticks(now) & PM_TMR_MASK) as u32
    }

    /// Sets TMR_STS if timer bit 23 toggled since the last update.
    fn update_tmr_sts(&mut self, now: Instant) {
        let epoch = self.ticks(now) >> PM_TMR_STS_SHIFT;
        if epoch != self.tmr_sts_epoch {
            self.tmr_sts_epoch = epoch;
            self.pm1_sts |= PM1_STS_TMR;
        }
    }

    fn read_byte(&self, offset: u64, timer: u32) -> u8 {
        match offset {
            o @ (PM1_STS | 0x01) => byte_of(self.pm1_sts, o - PM1_STS),
            o @ (PM1_EN | 0x03) => byte_of(self.pm1_en, o - PM1_EN),
            o @ (PM1_CNT | 0x05) => byte_of(self.pm1_cnt | PM1_CNT_SCI_EN, o - PM1_CNT),
            o @ PM_TMR..=0x0b => timer.to_le_bytes()[(o - PM_TMR) as usize],
            o @ GPE0_STS..=0x27 => self.gpe0_sts[(o - GPE0_STS) as usize],
            o @ GPE0_EN..=0x2f => self.gpe0_en[(o - GPE0_EN) as usize],
            _ => 0,
        }
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        match offset {
            o @ (PM1_STS | 0x01) => {
                self.pm1_sts &= !(shifted(value, o - PM1_STS) & PM1_STS_MASK);
            }
            o @ (PM1_EN | 0x03) => {
                self.pm1_en = merge(self.pm1_en, value, o - PM1_EN) & PM1_EN_MASK;
            }
            o @ (PM1_CNT | 0x05) => {
                let written = merge(self.pm1_cnt, value, o - PM1_CNT);
                self.pm1_cnt = written & PM1_CNT_STORED;
                // SLP_EN and SLP_TYP share the high byte, so a byte write there is complete.
                if o == 0x05 && written & PM1_CNT_SLP_EN != 0 {
                    let slp_typ = (written >> PM1_CNT_SLP_TYP_SHIFT) as u8 & SLP_TYP_MASK;
                    self.sleep(slp_typ);
                }
            }
            o @ GPE0_STS..=0x27 => self.gpe0_sts[(o - GPE0_STS) as usize] &= !value,
            o @ GPE0_EN..=0x2f => self.gpe0_en[(o - GPE0_EN) as usize] = value,
            // PM1_CNT's reserved upper half, the read-only timer, and reserved offsets.
            o => {
                if self.warned_reserved.first() {
                    log::debug!(
                        "acpi-pm: ignoring write of {value:#x} to read-only or reserved offset {o:#x} (further ones not logged)"
                    );
                }
            }
        }
    }

    /// Also powers off on sleep type `slp_typ`: UEFI firmware (OVMF's `ResetShutdown`) writes
    /// QEMU Q35's S5 value 0 whatever the DSDT says, while the OS uses the DSDT's `_S5`.
    pub fn with_s5_alias(mut self, slp_typ: u8) -> Result<Self, AcpiPmError> {
        if slp_typ > SLP_TYP_MASK {
            return Err(AcpiPmError::InvalidSlpTyp(slp_typ));
        }
        self.s5_alias = Some(slp_typ);
        Ok(self)
    }

    fn sleep(&mut self, slp_typ: u8) {
        if slp_typ == self.s5_slp_typ || Some(slp_typ) == self.s5_alias {
            if !self.powered_off {
                self.powered_off = true;
                log::info!("acpi-pm: guest entered S5, powering off");
                self.exit.request_exit(GuestExit::PowerOff);
            }
        } else if self.warned_sleep.first() {
            log::warn!(
                "acpi-pm: guest asked for sleep type {slp_typ}, only S5 (type {}) is supported; ignored (further ones not logged)",
                self.s5_slp_typ
            );
        }
    }

    fn read_at(&mut self, offset: u64, data: &mut [u8], now: Instant) {
        self.update_tmr_sts(now);
        // One timer sample per access, so a 32-bit read is consistent.
        let timer = self.timer_value(now);
        super::read_bytes(offset, data, 0, |o| self.read_byte(o, timer));
    }

    fn write_at(&mut self, offset: u64, data: &[u8], now: Instant) {
        // Bring TMR_STS up to date first, so a guest's clearing write sees the current status.
        self.update_tmr_sts(now);
        super::write_bytes(offset, data, |o, v| self.write_byte(o, v));
    }
}

/// Byte `index` (0 = low) of a 16-bit register.
fn byte_of(reg: u16, index: u64) -> u8 {
    (reg >> (8 * index)) as u8
}

/// `value` moved to byte `index` (0 or 1) of a 16-bit register.
fn shifted(value: u8, index: u64) -> u16 {
    u16::from(value) << (8 * index)
}

/// `reg` with byte `index` replaced by `value`.
fn merge(reg: u16, value: u8, index: u64) -> u16 {
    (reg & !shifted(0xff, index)) | shifted(value, index)
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.read_at(offset, data, Instant::now());
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.write_at(offset, data, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::{RecordingSink, SIZES};
    use std::time::Duration;

    /// The time after the timer's start at which it shows `ticks` (rounded up to whole
    /// nanoseconds).
    fn duration_for_ticks(ticks: u64) -> Duration {
        let nanos = (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(PM_TIMER_HZ));
        Duration::from_nanos(nanos as u64)
    }

    fn device() -> (Arc<RecordingSink>, AcpiPm) {
        let sink = Arc::new(RecordingSink::default());
        let pm = AcpiPm::new(sink.clone(), 5).unwrap();
        (sink, pm)
    }

    fn read16(pm: &mut AcpiPm, offset: u64) -> u16 {
        let mut d = [0u8; 2];
        pm.read(0x600, offset, &mut d);
        u16::from_le_bytes(d)
    }

    fn read_timer(pm: &mut AcpiPm) -> u32 {
        let mut d = [0u8; 4];
        pm.read(0x600, PM_TMR, &mut d);
        u32::from_le_bytes(d)
    }

    fn slp(typ: u16) -> [u8; 2] {
        ((typ << PM1_CNT_SLP_TYP_SHIFT) | PM1_CNT_SLP_EN).to_le_bytes()
    }

    #[test]
    fn rejects_wide_slp_typ() {
        let sink = Arc::new(RecordingSink::default());
        assert_eq!(
            AcpiPm::new(sink, 8).unwrap_err(),
            AcpiPmError::InvalidSlpTyp(8)
        );
    }

    #[test]
    fn s5_powers_off_exactly_once() {
        let (sink, mut pm) = device();
        pm.write(0x600, PM1_CNT, &slp(5));
        pm.write(0x600, PM1_CNT, &slp(5));
        assert_eq!(sink.requests(), vec![GuestExit::PowerOff]);
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        let (sink, mut pm) = device();
        for typ in [0, 1, 2, 3, 4, 6, 7] {
            pm.write(0x600, PM1_CNT, &slp(typ));
        }
        // SLP_TYP = 5 without SLP_EN does nothing either.
        pm.write(
            0x600,
            PM1_CNT,
            &(5u16 << PM1_CNT_SLP_TYP_SHIFT).to_le_bytes(),
        );
        assert!(sink.requests().is_empty());
    }

    #[test]
    fn s5_follows_constructor_value() {
        let sink = Arc::new(RecordingSink::default());
        let mut pm = AcpiPm::new(sink.clone(), 0).unwrap();
        pm.write(0x600, PM1_CNT, &slp(5));
        assert!(sink.requests().is_empty());
        pm.write(0x600, PM1_CNT, &slp(0));
        assert_eq!(sink.requests(), vec![GuestExit::PowerOff]);
    }

    #[test]
    fn s5_alias_powers_off_too() {
        for typ in [5, 0] {
            let sink = Arc::new(RecordingSink::default());
            let mut pm = AcpiPm::new(sink.clone(), 5)
                .unwrap()
                .with_s5_alias(0)
                .unwrap();
            pm.write(0x600, PM1_CNT, &slp(3));
            assert!(sink.requests().is_empty());
            pm.write(0x600, PM1_CNT, &slp(typ));
            assert_eq!(sink.requests(), vec![GuestExit::PowerOff], "SLP_TYP {typ}");
        }
        assert!(AcpiPm::new(Arc::new(RecordingSink::default()), 5)
            .unwrap()
            .with_s5_alias(8)
            .is_err());
    }

    #[test]
    fn s5_by_byte_and_dword_writes() {
        let (sink, mut pm) = device();
        // Only the high byte of PM1_CNT.
        pm.write(0x600, PM1_CNT + 1, &[slp(5)[1]]);
        assert_eq!(sink.requests(), vec![GuestExit::PowerOff]);

        let (sink, mut pm) = device();
        let v = u32::from(u16::from_le_bytes(slp(5)));
        pm.write(0x600, PM1_CNT, &v.to_le_bytes());
        assert_eq!(sink.requests(), vec![GuestExit::PowerOff]);
    }

    #[test]
    fn pm1_cnt_sci_en_reads_one_and_slp_typ_is_kept() {
        let (_, mut pm) = device();
        assert_eq!(read16(&mut pm, PM1_CNT), PM1_CNT_SCI_EN);
        // The guest cannot clear SCI_EN; SLP_EN reads back zero.
        pm.write(0x600, PM1_CNT, &slp(3));
        assert_eq!(
            read16(&mut pm, PM1_CNT),
            PM1_CNT_SCI_EN | (3 << PM1_CNT_SLP_TYP_SHIFT)
        );
    }

    #[test]
    fn pm1_sts_is_write_one_to_clear() {
        let (_, mut pm) = device();
        pm.pm1_sts = 0x8101;
        // Writing zeros changes nothing.
        pm.write(0x600, PM1_STS, &[0, 0]);
        assert_eq!(pm.pm1_sts, 0x8101);
        // Clear PWRBTN_STS (bit 8) only, with a byte write to the high byte.
        pm.write(0x600, PM1_STS + 1, &[0x01]);
        assert_eq!(pm.pm1_sts, 0x8001);
        pm.write(0x600, PM1_STS, &[0xff, 0xff]);
        assert_eq!(pm.pm1_sts & !PM1_STS_TMR, 0);
    }

    #[test]
    fn pm1_en_keeps_defined_bits() {
        let (_, mut pm) = device();
        pm.write(0x600, PM1_EN, &[0xff, 0xff]);
        assert_eq!(read16(&mut pm, PM1_EN), PM1_EN_MASK);
        pm.write(0x600, PM1_EN, &[0x01]);
        assert_eq!(read16(&mut pm, PM1_EN), PM1_EN_MASK & 0xff01);
    }

    #[test]
    fn gpe0_status_w1c_and_enable_rw() {
        let (_, mut pm) = device();
        pm.gpe0_sts = [0xff; GPE0_HALF_LEN];
        pm.write(0x600, GPE0_STS + 2, &[0x0f, 0xf0]);
        let mut sts = [0u8; GPE0_HALF_LEN];
        pm.read(0x600, GPE0_STS, &mut sts);
        assert_eq!(sts, [0xff, 0xff, 0xf0, 0x0f, 0xff, 0xff, 0xff, 0xff]);
        pm.write(0x600, GPE0_EN, &0x1122_3344_5566_7788u64.to_le_bytes());
        let mut en = [0u8; 8];
        pm.read(0x600, GPE0_EN, &mut en);
        assert_eq!(u64::from_le_bytes(en), 0x1122_3344_5566_7788);
    }

    #[test]
    fn timer_is_monotonic() {
        let (_, mut pm) = device();
        let mut last = read_timer(&mut pm);
        for _ in 0..10_000 {
            let v = read_timer(&mut pm);
            assert!(u64::from(v) <= PM_TMR_MASK);
            // Forward modulo 2^24 (the counter wraps every 4.7 s).
            let forward = u64::from(v.wrapping_sub(last)) & PM_TMR_MASK;
            assert!(
                forward < 1 << 23,
                "timer went back from {last:#x} to {v:#x}"
            );
            last = v;
        }
    }

    #[test]
    fn timer_runs_at_pm_timer_rate() {
        let (_, mut pm) = device();
        let before = Instant::now();
        let v0 = read_timer(&mut pm);
        let sleep = Duration::from_millis(100);
        std::thread::sleep(sleep);
        let v1 = read_timer(&mut pm);
        let outer = before.elapsed();
        let delta = u64::from(v1.wrapping_sub(v0)) & PM_TMR_MASK;
        // At least the sleep, at most the time around both reads (one tick of rounding).
        let min = sleep.as_nanos() as u64 * PM_TIMER_HZ / 1_000_000_000;
        let max = outer.as_nanos() as u64 * PM_TIMER_HZ / 1_000_000_000 + 1;
        assert!(
            (min..=max).contains(&delta),
            "{delta} ticks in {outer:?}, expected {min}..={max}"
        );
    }

    #[test]
    fn timer_wraps_at_24_bits() {
        let (_, pm) = device();
        let at = |ticks| pm.start + duration_for_ticks(ticks);
        assert_eq!(pm.timer_value(at(PM_TMR_MASK)), 0xff_ffff);
        assert_eq!(pm.timer_value(at(PM_TMR_MASK + 1)), 0);
        assert_eq!(pm.timer_value(at((1 << 24) + 10)), 10);
        assert_eq!(pm.timer_value(at((5 << 24) + 77)), 77);
    }

    #[test]
    fn timer_reads_as_dword_with_zero_top_byte_and_ignores_writes() {
        let (_, mut pm) = device();
        let now = pm.start + duration_for_ticks(0x12_3456);
        let mut d = [0u8; 4];
        pm.read_at(PM_TMR, &mut d, now);
        assert_eq!(u32::from_le_bytes(d), 0x12_3456);
        pm.write_at(PM_TMR, &[0; 4], now);
        pm.read_at(PM_TMR, &mut d, now);
        assert_eq!(u32::from_le_bytes(d), 0x12_3456);
        // A byte read of the top byte.
        let mut b = [0xaau8];
        pm.read_at(PM_TMR + 3, &mut b, now);
        assert_eq!(b, [0]);
    }

    #[test]
    fn tmr_sts_set_when_bit_23_toggles() {
        let (_, mut pm) = device();
        let mut d = [0u8; 2];
        pm.read_at(
            PM1_STS,
            &mut d,
            pm.start + duration_for_ticks((1 << 23) - 1),
        );
        assert_eq!(u16::from_le_bytes(d) & PM1_STS_TMR, 0);
        let toggled = pm.start + duration_for_ticks(1 << 23);
        pm.read_at(PM1_STS, &mut d, toggled);
        assert_eq!(u16::from_le_bytes(d) & PM1_STS_TMR, PM1_STS_TMR);
        // Cleared by writing 1, stays clear until the next toggle.
        pm.write_at(PM1_STS, &PM1_STS_TMR.to_le_bytes(), toggled);
        pm.read_at(PM1_STS, &mut d, toggled);
        assert_eq!(u16::from_le_bytes(d) & PM1_STS_TMR, 0);
        pm.read_at(PM1_STS, &mut d, pm.start + duration_for_ticks(1 << 24));
        assert_eq!(u16::from_le_bytes(d) & PM1_STS_TMR, PM1_STS_TMR);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (sink, mut pm) = device();
        for offset in (0..ACPI_PM_BLOCK_LEN + 8).chain([u64::MAX - 3, u64::MAX]) {
            for size in SIZES {
                let mut d = vec![0u8; size];
                pm.read(0x600, offset, &mut d);
                // 0x3c in PM1_CNT's high byte is SLP_EN with SLP_TYP 7: must be ignored.
                pm.write(0x600, offset, &vec![0x3c; size]);
            }
        }
        assert!(sink.requests().is_empty());
        // Reserved offsets read zero.
        let mut d = [0xaau8; 4];
        pm.read(0x600, 0x10, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
