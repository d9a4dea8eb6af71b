//! An MC146818 RTC with its CMOS RAM, at ports 0x70 (index) and 0x71 (data).
//!
//! Mapping: one range of [`CMOS_PORT_LEN`] (2) bytes; offset 0 is the index register (write-only:
//! reads return all ones; bit 7, the NMI mask, is ignored) and offset 1 the data register. A
//! 16-bit write at offset 0 sets the index and writes the data, like the `outw` idiom on hardware.
//!
//! - Time and date (seconds, minutes, hours, day of week, day of month, month, year, and the
//!   century at 0x32) always show the host's wall clock in UTC, or shifted by a fixed offset
//!   ([`Cmos::with_utc_offset`]: local time for Windows guests, `--rtc base=localtime`), in BCD
//!   or binary per status B's DM bit and in 24- or 12-hour form per its 24/12 bit. Guest writes
//!   to them are ignored (logged once): the guest cannot set the clock.
//! - Status A: the divider and rate bits are stored; UIP reads set only during the last 244 µs of
//!   each host second (while the divider runs normally and B's SET bit is clear), as on a real
//!   part, so it can never stick.
//! - Status B: stored as written (the format bits take effect at once).
//! - Status C: UF is set once per host second and the register clears on read; IRQF follows the
//!   enables in B. Status D: VRT always set.
//! - The memory-size bytes firmware reads, set up as QEMU does from the constructor's RAM sizes:
//!   0x15/0x16 base memory in KiB, 0x17/0x18 and 0x30/0x31 memory above 1 MiB in KiB (capped at
//!   0xFFFF), 0x34/0x35 memory above 16 MiB below 4 GiB in 64 KiB units, 0x5B–0x5D memory above
//!   4 GiB in 64 KiB units. These and all other indices are plain NVRAM (128 bytes).
//!
//! No interrupts: IRQ 8 is never raised (no periodic, alarm or update interrupts), so the ACPI
//! tables should not promise one to the guest's RTC driver.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;
use crate::legacy::Once;

/// Length of the port range: index at offset 0, data at offset 1.
pub const CMOS_PORT_LEN: u64 = 2;

// Port offsets.
/// Index register (port 0x70).
const INDEX: u64 = 0;
/// Data register (port 0x71).
const DATA: u64 = 1;
/// Index bits that select a register; bit 7 is the NMI mask.
const INDEX_MASK: u8 = 0x7f;
/// Bytes of CMOS RAM, registers included.
const NVRAM_LEN: usize = 128;

// Register indices.
const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_DAY_OF_WEEK: u8 = 0x06;
const REG_DAY_OF_MONTH: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
/// Base memory in KiB, low and high byte.
const REG_BASE_MEM: u8 = 0x15;
/// Memory above 1 MiB in KiB, low and high byte.
const REG_EXT_MEM: u8 = 0x17;
/// Copy of [`REG_EXT_MEM`].
const REG_EXT_MEM_COPY: u8 = 0x30;
/// Century (ACPI FADT `CENTURY` should name this index).
const REG_CENTURY: u8 = 0x32;
/// Memory above 16 MiB below 4 GiB in 64 KiB units, low and high byte.
const REG_MEM_ABOVE_16M: u8 = 0x34;
/// Memory above 4 GiB in 64 KiB units, three bytes, low first.
const REG_MEM_ABOVE_4G: u8 = 0x5b;

// Status A.
/// Update in progress.
const A_UIP: u8 = 0x80;
/// Divider bits (6–4).
const A_DV_MASK: u8 = 0x70;
/// Divider: 32.768 kHz time base, clock running.
const A_DV_NORMAL: u8 = 0x20;
/// Rate select: 1024 Hz.
const A_RS_1024HZ: u8 = 0x06;
// Status B.
/// Updates halted while the guest sets the clock.
const B_SET: u8 = 0x80;
/// Interrupt enables (periodic, alarm, update-ended), matching C's flags.
const B_INTERRUPT_ENABLES: u8 = 0x70;
/// Binary (not BCD) data mode.
const B_DM_BINARY: u8 = 0x04;
/// 24-hour mode.
const B_24H: u8 = 0x02;
// Status C.
/// Some enabled flag is set.
const C_IRQF: u8 = 0x80;
/// Update-ended flag.
const C_UF: u8 = 0x10;
// Status D.
/// Valid RAM and time.
const D_VRT: u8 = 0x80;
/// PM bit of the hours register in 12-hour mode.
const HOURS_PM: u8 = 0x80;

/// UIP is set for this long before each second's update (the MC146818's 244 µs).
const UIP_NANOS: u32 = 244_000;
/// Days from 0000-03-01 to 1970-01-01 in the proleptic Gregorian calendar.
const DAYS_TO_UNIX_EPOCH: u64 = 719_468;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: u64,
    month: u8,
    day: u8,
    /// 1 = Sunday … 7 = Saturday.
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl DateTime {
    /// The UTC date and time `secs` seconds after the Unix epoch.
    fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // 1970-01-01 was a Thursday (5 with Sunday = 1).
        let weekday = ((days + 4) % 7) as u8 + 1;
        // Civil date from a day count, counting years from March so leap days fall last.
        let z = days + DAYS_TO_UNIX_EPOCH;
        let era = z / 146_097;
        let day_of_era = z % 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_from_march = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8;
        let month = if month_from_march < 10 {
            month_from_march + 3
        } else {
            month_from_march - 9
        } as u8;
        let year = era * 400 + year_of_era + u64::from(month <= 2);
        DateTime {
            year,
            month,
            day,
            weekday,
            hour: (rem / 3_600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }
}

/// The host's wall clock as time since the Unix epoch (zero if the clock is before 1970).
fn host_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The RTC/CMOS device.
pub struct Cmos {
    index: u8,
    nvram: [u8; NVRAM_LEN],
    /// Host seconds at the last read of status C.
    last_c_read: u64,
    /// Seconds added to UTC for the time and date registers.
    utc_offset: i64,
    clock: fn() -> Duration,
    warned_time_write: Once,
}

impl std::fmt::Debug for Cmos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cmos")
            .field("index", &self.index)
            .field("status_a", &self.nvram[usize::from(REG_STATUS_A)])
            .field("status_b", &self.nvram[usize::from(REG_STATUS_B)])
            .finish_non_exhaustive()
    }
}

impl Cmos {
    /// A CMOS whose memory-size bytes describe `mem_below_4g` bytes of RAM from address 0 up to
    /// the 32-bit hole, and `mem_above_4g` bytes from 4 GiB up. Values too large for their
    /// fields are capped.
    pub fn new(mem_below_4g: u64, mem_above_4g: u64) -> Self {
        Self::with_clock(mem_below_4g, mem_above_4g, host_clock)
    }

    fn with_clock(mem_below_4g: u64, mem_above_4g: u64, clock: fn() -> Duration) -> Self {
        const KIB: u64 = 1 << 10;
        const MIB: u64 = 1 << 20;
        let mut nvram = [0u8; NVRAM_LEN];
        nvram[usize::from(REG_STATUS_A)] = A_DV_NORMAL | A_RS_1024HZ;
        nvram[usize::from(REG_STATUS_B)] = B_24H;
        let mut put = |reg: u8, value: u64, bytes: usize, cap: u64| {
            let le = value.min(cap).to_le_bytes();
            let start = usize::from(reg);
            nvram[start..start + bytes].copy_from_slice(&le[..bytes]);
        };
        put(REG_BASE_MEM, mem_below_4g / KIB, 2, 640);
        let ext = mem_below_4g.saturating_sub(MIB) / KIB;
        put(REG_EXT_MEM, ext, 2, 0xffff);
        put(REG_EXT_MEM_COPY, ext, 2, 0xffff);
        let above_16m = mem_below_4g.saturating_sub(16 * MIB) / (64 * KIB);
        put(REG_MEM_ABOVE_16M, above_16m, 2, 0xffff);
        put(REG_MEM_ABOVE_4G, mem_above_4g / (64 * KIB), 3, 0xff_ffff);
        Cmos {
            index: 0,
            nvram,
            last_c_read: clock().as_secs(),
            utc_offset: 0,
            clock,
            warned_time_write: Once::default(),
        }
    }

    /// The same RTC showing UTC shifted by `secs` seconds: the host's local time when `secs` is
    /// its UTC offset (east positive, as `tm_gmtoff`). The offset is fixed for the VM's life; a
    /// daylight-saving change during the run is not followed (as QEMU's `-rtc base=localtime`).
    pub fn with_utc_offset(mut self, secs: i64) -> Self {
        self.utc_offset = secs;
        self
    }

    /// The seconds since the epoch the time and date registers show at host time `now`.
    fn shown_secs(&self, now: Duration) -> u64 {
        now.as_secs().saturating_add_signed(self.utc_offset)
    }

    fn status_b(&self) -> u8 {
        self.nvram[usize::from(REG_STATUS_B)]
    }

    /// `value` (0–99) in the data format status B selects.
    fn encode(&self, value: u8) -> u8 {
        if self.status_b() & B_DM_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn encode_hours(&self, hour: u8) -> u8 {
        if self.status_b() & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOURS_PM } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let now = (self.clock)();
        let time = || DateTime::from_unix(self.shown_secs(now));
        match reg {
            REG_SECONDS => self.encode(time().second),
            REG_MINUTES => self.encode(time().minute),
            REG_HOURS => self.encode_hours(time().hour),
            REG_DAY_OF_WEEK => self.encode(time().weekday),
            REG_DAY_OF_MONTH => self.encode(time().day),
            REG_MONTH => self.encode(time().month),
            REG_YEAR => self.encode((time().year % 100) as u8),
            REG_CENTURY => self.encode((time().year / 100 % 100) as u8),
            REG_STATUS_A => {
                let a = self.nvram[usize::from(REG_STATUS_A)];
                let running = a & A_DV_MASK == A_DV_NORMAL && self.status_b() & B_SET == 0;
                if running && now.subsec_nanos() >= 1_000_000_000 - UIP_NANOS {
                    a | A_UIP
                } else {
                    a
                }
            }
            REG_STATUS_C => {
                let secs = now.as_secs();
                let mut c = 0;
                if secs != self.last_c_read {
                    c |= C_UF;
                }
                self.last_c_read = secs;
                if c & self.status_b() & B_INTERRUPT_ENABLES != 0 {
                    c |= C_IRQF;
                }
                c
            }
            REG_STATUS_D => D_VRT,
            _ => self.nvram.get(usize::from(reg)).copied().unwrap_or(0xff),
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_DAY_OF_WEEK | REG_DAY_OF_MONTH
            | REG_MONTH | REG_YEAR | REG_CENTURY => {
                if self.warned_time_write.first() {
                    log::info!(
                        "cmos: guest tried to set the clock (register {reg:#x}); the RTC follows the host clock (further attempts not logged)"
                    );
                }
            }
            REG_STATUS_A => self.nvram[usize::from(REG_STATUS_A)] = value & !A_UIP,
            REG_STATUS_C | REG_STATUS_D => {}
            _ => {
                if let Some(byte) = self.nvram.get_mut(usize::from(reg)) {
                    *byte = value;
                }
            }
        }
    }

    fn read_byte(&mut self, offset: u64) -> u8 {
        match offset {
            DATA => self.read_register(self.index),
            // The index register is write-only.
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        match offset {
            INDEX => self.index = value & INDEX_MASK,
            DATA => self.write_register(self.index, value),
            _ => {}
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        super::read_bytes(offset, data, 0xff, |o| self.read_byte(o));
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        super::write_bytes(offset, data, |o, v| self.write_byte(o, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::SIZES;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// 2024-02-29 13:45:07 UTC, a Thursday (from `date -u -d '2024-02-29 13:45:07' +%s`).
    const LEAP_DAY_AFTERNOON: u64 = 1_709_214_307;

    fn leap_day_clock() -> Duration {
        Duration::new(LEAP_DAY_AFTERNOON, 500_000_000)
    }

    fn cmos() -> Cmos {
        Cmos::with_clock(256 << 20, 0, leap_day_clock)
    }

    fn read(c: &mut Cmos, reg: u8) -> u8 {
        c.write(0x70, INDEX, &[reg]);
        let mut d = [0u8];
        c.read(0x70, DATA, &mut d);
        d[0]
    }

    fn write(c: &mut Cmos, reg: u8, value: u8) {
        c.write(0x70, INDEX, &[reg]);
        c.write(0x70, DATA, &[value]);
    }

    fn time_regs(c: &mut Cmos) -> [u8; 8] {
        [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_DAY_OF_WEEK,
            REG_DAY_OF_MONTH,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ]
        .map(|r| read(c, r))
    }

    #[test]
    fn civil_dates_match_known_days() {
        // (unix seconds from `date -u -d … +%s`, year, month, day, weekday with Sunday = 1, h, m, s)
        let cases = [
            (0, 1970, 1, 1, 5, 0, 0, 0),
            (951_868_799, 2000, 2, 29, 3, 23, 59, 59),
            (LEAP_DAY_AFTERNOON, 2024, 2, 29, 5, 13, 45, 7),
            (2_147_483_648, 2038, 1, 19, 3, 3, 14, 8),
            (4_102_358_400, 2099, 12, 31, 5, 0, 0, 0),
            (4_107_585_600, 2100, 3, 1, 2, 12, 0, 0),
        ];
        for (secs, year, month, day, weekday, hour, minute, second) in cases {
            assert_eq!(
                DateTime::from_unix(secs),
                DateTime {
                    year,
                    month,
                    day,
                    weekday,
                    hour,
                    minute,
                    second
                },
                "at {secs}"
            );
        }
    }

    #[test]
    fn bcd_by_default() {
        let mut c = cmos();
        assert_eq!(read(&mut c, REG_STATUS_B), B_24H);
        assert_eq!(
            time_regs(&mut c),
            [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
    }

    #[test]
    fn binary_when_dm_set() {
        let mut c = cmos();
        write(&mut c, REG_STATUS_B, B_24H | B_DM_BINARY);
        assert_eq!(read(&mut c, REG_STATUS_B), B_24H | B_DM_BINARY);
        assert_eq!(time_regs(&mut c), [7, 45, 13, 5, 29, 2, 24, 20]);
    }

    #[test]
    fn twelve_hour_mode() {
        let mut c = cmos();
        write(&mut c, REG_STATUS_B, 0);
        assert_eq!(read(&mut c, REG_HOURS), HOURS_PM | 0x01);
        write(&mut c, REG_STATUS_B, B_DM_BINARY);
        assert_eq!(read(&mut c, REG_HOURS), HOURS_PM | 1);
        // Midnight and noon are 12.
        assert_eq!(c.encode_hours(0), 12);
        assert_eq!(c.encode_hours(12), HOURS_PM | 12);
        write(&mut c, REG_STATUS_B, 0);
        assert_eq!(c.encode_hours(0), 0x12);
        assert_eq!(c.encode_hours(23), HOURS_PM | 0x11);
    }

    #[test]
    fn follows_the_host_clock() {
        let mut c = Cmos::new(256 << 20, 0);
        write(&mut c, REG_STATUS_B, B_24H | B_DM_BINARY);
        // Read twice around the host clock; one of the reads lands in the same second.
        for _ in 0..3 {
            let before = host_clock().as_secs();
            let regs = time_regs(&mut c);
            let after = host_clock().as_secs();
            if before != after {
                continue;
            }
            let t = DateTime::from_unix(before);
            let expect = [
                t.second,
                t.minute,
                t.hour,
                t.weekday,
                t.day,
                t.month,
                (t.year % 100) as u8,
                (t.year / 100) as u8,
            ];
            assert_eq!(regs, expect);
            return;
        }
        panic!("host clock ticked during every attempt");
    }

    #[test]
    fn local_time_is_utc_shifted_by_the_offset() {
        // UTC+05:30 (India): 2024-02-29 19:15:07.
        let mut c = cmos().with_utc_offset(5 * 3600 + 1800);
        write(&mut c, REG_STATUS_B, B_24H | B_DM_BINARY);
        assert_eq!(time_regs(&mut c), [7, 15, 19, 5, 29, 2, 24, 20]);
        // UTC-14:00 crosses back to the day before: 2024-02-28 23:45:07, a Wednesday.
        let mut c = cmos().with_utc_offset(-14 * 3600);
        write(&mut c, REG_STATUS_B, B_24H | B_DM_BINARY);
        assert_eq!(time_regs(&mut c), [7, 45, 23, 4, 28, 2, 24, 20]);
        // UTC+11:00 crosses into March, in BCD and 12-hour form: Friday 1 March, 12:45:07 AM.
        let mut c = cmos().with_utc_offset(11 * 3600);
        write(&mut c, REG_STATUS_B, 0);
        assert_eq!(
            time_regs(&mut c),
            [0x07, 0x45, 0x12, 6, 0x01, 0x03, 0x24, 0x20]
        );
        // Offset 0 is UTC; the update flag still follows the host's seconds, not the shift.
        let mut c = cmos().with_utc_offset(0);
        write(&mut c, REG_STATUS_B, B_24H | B_DM_BINARY);
        assert_eq!(time_regs(&mut c), [7, 45, 13, 5, 29, 2, 24, 20]);
        // An offset that would go before 1970 saturates at the epoch instead of panicking.
        let mut c =
            Cmos::with_clock(256 << 20, 0, || Duration::from_secs(10)).with_utc_offset(-3600);
        write(&mut c, REG_STATUS_B, B_24H | B_DM_BINARY);
        assert_eq!(time_regs(&mut c), [0, 0, 0, 5, 1, 1, 70, 19]);
    }

    #[test]
    fn guest_cannot_set_time() {
        let mut c = cmos();
        let before = time_regs(&mut c);
        for reg in [REG_SECONDS, REG_HOURS, REG_YEAR, REG_CENTURY] {
            write(&mut c, reg, 0x11);
        }
        assert_eq!(time_regs(&mut c), before);
    }

    static UIP_CLOCK_NANOS: AtomicU64 = AtomicU64::new(0);

    fn uip_clock() -> Duration {
        Duration::new(1_000, UIP_CLOCK_NANOS.load(Ordering::Relaxed) as u32)
    }

    #[test]
    fn uip_only_just_before_the_update() {
        let mut c = Cmos::with_clock(0, 0, uip_clock);
        assert_eq!(read(&mut c, REG_STATUS_A), A_DV_NORMAL | A_RS_1024HZ);
        for (nanos, uip) in [
            (0, false),
            (500_000_000, false),
            (999_755_999, false),
            (999_756_000, true),
            (999_999_999, true),
        ] {
            UIP_CLOCK_NANOS.store(nanos, Ordering::Relaxed);
            assert_eq!(read(&mut c, REG_STATUS_A) & A_UIP != 0, uip, "at {nanos}");
        }
        // Not while the guest holds SET or the divider is in reset.
        write(&mut c, REG_STATUS_B, B_24H | B_SET);
        assert_eq!(read(&mut c, REG_STATUS_A) & A_UIP, 0);
        write(&mut c, REG_STATUS_B, B_24H);
        write(&mut c, REG_STATUS_A, 0x70 | A_RS_1024HZ);
        assert_eq!(read(&mut c, REG_STATUS_A), 0x70 | A_RS_1024HZ);
        // The guest cannot set UIP itself.
        UIP_CLOCK_NANOS.store(0, Ordering::Relaxed);
        write(&mut c, REG_STATUS_A, 0xff);
        assert_eq!(read(&mut c, REG_STATUS_A), 0x7f);
    }

    static C_CLOCK_SECS: AtomicU64 = AtomicU64::new(100);

    fn c_clock() -> Duration {
        Duration::from_secs(C_CLOCK_SECS.load(Ordering::Relaxed))
    }

    #[test]
    fn status_c_update_flag_and_d_vrt() {
        let mut c = Cmos::with_clock(0, 0, c_clock);
        assert_eq!(read(&mut c, REG_STATUS_C), 0);
        C_CLOCK_SECS.store(101, Ordering::Relaxed);
        assert_eq!(read(&mut c, REG_STATUS_C), C_UF);
        // Cleared by the read.
        assert_eq!(read(&mut c, REG_STATUS_C), 0);
        // IRQF with UIE enabled (no interrupt is raised, but the flag is consistent).
        write(&mut c, REG_STATUS_B, B_24H | 0x10);
        C_CLOCK_SECS.store(102, Ordering::Relaxed);
        assert_eq!(read(&mut c, REG_STATUS_C), C_IRQF | C_UF);
        write(&mut c, REG_STATUS_C, 0xff);
        write(&mut c, REG_STATUS_D, 0);
        assert_eq!(read(&mut c, REG_STATUS_C), 0);
        assert_eq!(read(&mut c, REG_STATUS_D), D_VRT);
    }

    fn mem_bytes(c: &mut Cmos) -> [u8; 11] {
        [
            0x15, 0x16, 0x17, 0x18, 0x30, 0x31, 0x34, 0x35, 0x5b, 0x5c, 0x5d,
        ]
        .map(|r| read(c, r))
    }

    #[test]
    fn memory_size_bytes() {
        // 256 MiB: base 640 KiB = 0x280; extended 255 MiB = 261120 KiB, capped at 0xFFFF;
        // above 16 MiB 240 MiB = 3840 = 0xF00 units of 64 KiB.
        let mut c = cmos();
        assert_eq!(
            mem_bytes(&mut c),
            [0x80, 0x02, 0xff, 0xff, 0xff, 0xff, 0x00, 0x0f, 0, 0, 0]
        );
        // 8 MiB: extended 7 MiB = 7168 = 0x1C00 KiB, nothing above 16 MiB.
        let mut c = Cmos::with_clock(8 << 20, 0, leap_day_clock);
        assert_eq!(
            mem_bytes(&mut c),
            [0x80, 0x02, 0x00, 0x1c, 0x00, 0x1c, 0, 0, 0, 0, 0]
        );
        // 0xB000_0000 below 4 GiB: (2816 - 16) MiB = 44800 = 0xAF00 units; 4 GiB above is
        // 65536 = 0x01_0000 units.
        let mut c = Cmos::with_clock(0xB000_0000, 4 << 30, leap_day_clock);
        assert_eq!(
            mem_bytes(&mut c),
            [0x80, 0x02, 0xff, 0xff, 0xff, 0xff, 0x00, 0xaf, 0x00, 0x00, 0x01]
        );
        // Tiny and huge: base memory below 640 KiB, above-4G capped at 24 bits.
        let mut c = Cmos::with_clock(512 << 10, u64::MAX, leap_day_clock);
        assert_eq!(
            mem_bytes(&mut c),
            [0x00, 0x02, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn nvram_is_plain_storage_and_nmi_bit_ignored() {
        let mut c = cmos();
        for reg in [0x0e, 0x40, 0x7f] {
            write(&mut c, reg, reg ^ 0x5a);
        }
        for reg in [0x0e, 0x40, 0x7f] {
            assert_eq!(read(&mut c, reg), reg ^ 0x5a);
        }
        // Index 0x80 | 0x40 (NMI masked) selects 0x40.
        assert_eq!(read(&mut c, 0xc0), 0x40 ^ 0x5a);
        // Alarm registers are storage too.
        write(&mut c, 0x01, 0x33);
        assert_eq!(read(&mut c, 0x01), 0x33);
    }

    #[test]
    fn index_is_write_only_and_word_write_sets_index_and_data() {
        let mut c = cmos();
        let mut d = [0u8];
        c.read(0x70, INDEX, &mut d);
        assert_eq!(d, [0xff]);
        // outw 0x70 with AX = 0x5a40: index 0x40, data 0x5a.
        c.write(0x70, INDEX, &[0x40, 0x5a]);
        assert_eq!(read(&mut c, 0x40), 0x5a);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let mut c = cmos();
        for offset in (0..CMOS_PORT_LEN + 4).chain([u64::MAX - 1, u64::MAX]) {
            for size in SIZES {
                for value in [0x00u8, 0x0b, 0x0c, 0x7f, 0x80, 0xff] {
                    let mut d = vec![0u8; size];
                    c.read(0x70, offset, &mut d);
                    c.write(0x70, offset, &vec![value; size]);
                }
            }
        }
        for index in 0..=0xffu8 {
            for value in [0x00u8, 0xff] {
                write(&mut c, index, value);
                read(&mut c, index);
            }
        }
    }
}
