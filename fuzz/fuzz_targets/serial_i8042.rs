//! The legacy port devices on a port bus at the layout's addresses: COM1 (the vm-superio
//! 16550A wrapper, with host input offered to its FIFO and a writer that may fail), the i8042
//! controller (in half the inputs with the firmware path's PS/2 keyboard on its port), the RTC/CMOS, the ACPI PM block, the debug-exit port, the runner port,
//! pvpanic and pc-testdev (its data/flush ports and its interrupt lines). Guest port reads and writes of any size at any offset in and around each device,
//! host input, draining the RX-drained event.
//!
//! Invariants (besides no panic, no leak): only a 1, 2 or 4-byte write to the debug-exit port
//! ends the VM with that value (and it always does); only a 1, 2 or 4-byte write of 0–255 to the
//! runner port's status register ends it with that command status (and it always does), and
//! only such a write to its phase register reports a phase; only a write to pvpanic whose first
//! byte has bit 0 set reports a panic (bit 1 alone: crash loaded); the runner port reads its
//! signature at offset 0 and pvpanic its two events; only a write to the i8042 may request a
//! reset; only a write to PM1_CNT's high byte may request a power-off, at most once; the serial
//! port outputs at most one byte per byte written to its data register and nothing otherwise;
//! its receive FIFO never takes more than offered nor holds more than 64 bytes; the i8042
//! never shows its input buffer full; PM1_CNT reads SCI_EN set and SLP_EN clear; the PM timer's
//! top byte reads zero; the debug-exit port reads all ones; pc-testdev's data register (at 0 and
//! at 8) reads what was last written to each of its bytes there (bytes past it read 0), a page
//! flush is asked for exactly by a 4-byte write at offset 4 (of that address's page), and an
//! interrupt line changes exactly for each byte written inside the line range (line = offset of
//! the byte, level = byte != 0).
#![no_main]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use arbitrary::{Result, Unstructured};
use arch::layout::ports;
use devices::exit::{GuestEvent, GuestExit};
use devices::legacy::{
    AcpiPm, Cmos, DebugExit, IrqLevel, PageFlush, PcTestDev, PcTestDevIrq, PvPanic, RunnerPort,
    Serial, ACPI_PM_BLOCK_LEN, CMOS_PORT_LEN, DEBUG_EXIT_PORT_LEN, I8042, I8042_PORT_LEN,
    PC_TESTDEV_IRQ_LEN, PC_TESTDEV_PORT_LEN, PVPANIC_PORT_LEN, RUNNER_PORT_LEN, SERIAL_PORT_LEN,
};
use devices::Bus;
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::{access_len, data, one_in, value, MAX_OPS};
use vfiovm_fuzz::rig::{lock, RecordingExit};

/// A console writer that records what it got and can be made to fail.
#[derive(Clone, Default)]
struct Console {
    out: Arc<Mutex<Vec<u8>>>,
    broken: bool,
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        lock(&self.out).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const COM1: u64 = ports::COM1 as u64;
const I8042_BASE: u64 = ports::I8042_DATA as u64;
const RTC: u64 = ports::RTC as u64;
const DEBUG_EXIT: u64 = ports::DEBUG_EXIT as u64;
const PM: u64 = ports::PM_BLOCK_START as u64;
const RUNNER: u64 = ports::RUNNER as u64;
const PVPANIC: u64 = ports::PVPANIC as u64;
const TESTDEV: u64 = ports::PC_TESTDEV as u64;
const TESTDEV_IRQ: u64 = ports::PC_TESTDEV_IRQ as u64;

/// pc-testdev's page flushes and line levels, as asked for.
#[derive(Clone, Default)]
struct TestdevLog {
    flushes: Arc<Mutex<Vec<u64>>>,
    levels: Arc<Mutex<Vec<(u32, bool)>>>,
}

impl PageFlush for TestdevLog {
    fn flush(&self, addr: u64) -> std::result::Result<(), String> {
        lock(&self.flushes).push(addr);
        Ok(())
    }
}

impl IrqLevel for TestdevLog {
    fn set_level(&self, gsi: u32, level: bool) -> std::result::Result<(), String> {
        lock(&self.levels).push((gsi, level));
        Ok(())
    }
}

/// The data register's byte index for an access at `off` of pc-testdev's ports, if it is one.
fn testdev_reg(off: u64) -> Option<usize> {
    match off {
        0..4 => Some(off as usize),
        8..12 => Some(off as usize - 8),
        _ => None,
    }
}

/// The devices' ranges: (base, len).
const RANGES: [(u64, u64); 9] = [
    (COM1, SERIAL_PORT_LEN),
    (I8042_BASE, I8042_PORT_LEN),
    (RTC, CMOS_PORT_LEN),
    (DEBUG_EXIT, DEBUG_EXIT_PORT_LEN),
    (PM, ACPI_PM_BLOCK_LEN),
    (RUNNER, RUNNER_PORT_LEN),
    (PVPANIC, PVPANIC_PORT_LEN),
    (TESTDEV, PC_TESTDEV_PORT_LEN),
    (TESTDEV_IRQ, PC_TESTDEV_IRQ_LEN),
];

/// The little-endian value of a 1, 2 or 4-byte access.
fn le(d: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    v[..d.len()].copy_from_slice(d);
    u32::from_le_bytes(v)
}

/// Whether `[addr, addr + len)` lies inside `(base, size)` and covers offset `off` of it.
fn covers(addr: u64, len: usize, (base, size): (u64, u64), off: u64) -> bool {
    let Some(end) = addr.checked_add(len as u64) else {
        return false;
    };
    addr >= base && end <= base + size && addr <= base + off && base + off < end
}

fn inside(addr: u64, len: usize, (base, size): (u64, u64)) -> bool {
    addr >= base
        && addr
            .checked_add(len as u64)
            .is_some_and(|e| e <= base + size)
}

fn run(u: &mut Unstructured) -> Result<()> {
    let exits = Arc::new(RecordingExit::default());
    let console = Console {
        out: Arc::default(),
        broken: one_in(u, 8)?,
    };
    let irq = devices::new_eventfd().expect("eventfd");
    let rx_drained = devices::new_eventfd().expect("eventfd");
    let rx_probe = rx_drained.try_clone().expect("eventfd");
    let serial = Arc::new(Mutex::new(Serial::new(irq, rx_drained, console.clone())));
    let bus = Bus::new("pio");
    bus.insert(serial.clone(), COM1, SERIAL_PORT_LEN)
        .expect("free");
    let i8042 = if one_in(u, 2)? {
        I8042::with_keyboard(exits.clone())
    } else {
        I8042::new(exits.clone())
    };
    bus.insert(Arc::new(Mutex::new(i8042)), I8042_BASE, I8042_PORT_LEN)
        .expect("free");
    let mem: u64 = u.arbitrary()?;
    let high: u64 = if one_in(u, 2)? { u.arbitrary()? } else { 0 };
    bus.insert(
        Arc::new(Mutex::new(Cmos::new(mem, high))),
        RTC,
        CMOS_PORT_LEN,
    )
    .expect("free");
    bus.insert(
        Arc::new(Mutex::new(DebugExit::new(exits.clone()))),
        DEBUG_EXIT,
        DEBUG_EXIT_PORT_LEN,
    )
    .expect("free");
    bus.insert(
        Arc::new(Mutex::new(RunnerPort::new(exits.clone()))),
        RUNNER,
        RUNNER_PORT_LEN,
    )
    .expect("free");
    bus.insert(
        Arc::new(Mutex::new(PvPanic::new(exits.clone()))),
        PVPANIC,
        PVPANIC_PORT_LEN,
    )
    .expect("free");
    let testdev = TestdevLog::default();
    bus.insert(
        Arc::new(Mutex::new(PcTestDev::new(Box::new(testdev.clone())))),
        TESTDEV,
        PC_TESTDEV_PORT_LEN,
    )
    .expect("free");
    bus.insert(
        Arc::new(Mutex::new(PcTestDevIrq::new(Box::new(testdev.clone())))),
        TESTDEV_IRQ,
        PC_TESTDEV_IRQ_LEN,
    )
    .expect("free");
    let mut testdev_data = [0u8; 4];
    let pm = AcpiPm::new(exits.clone(), ports::SLP_TYP_S5).expect("the layout's S5 type");
    bus.insert(Arc::new(Mutex::new(pm)), PM, ACPI_PM_BLOCK_LEN)
        .expect("free");
    assert!(AcpiPm::new(exits.clone(), 8).is_err(), "SLP_TYP is 3 bits");

    let mut powered_off = false;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let out_before = lock(&console.out).len();
        match u.int_in_range(0u8..=9)? {
            // Host input for the guest.
            0 => {
                let len = u.int_in_range(0..=80)?;
                let bytes = data(u, len)?;
                let mut s = lock(&serial);
                let before = s.fifo_capacity();
                let taken = s.enqueue_input(&bytes);
                assert!(taken <= bytes.len(), "took more input than offered");
                assert!(s.fifo_capacity() <= before, "input freed FIFO space");
                assert!(s.fifo_capacity() <= 64, "FIFO larger than 64 bytes");
            }
            // The VMM resets the RX-drained event after seeing it.
            1 => {
                let _ = rx_probe.read();
            }
            // A guest port access.
            _ => {
                let dev = RANGES[u.int_in_range(0..=RANGES.len() - 1)?];
                let addr = if one_in(u, 8)? {
                    u64::from(u.arbitrary::<u16>()?)
                } else {
                    let off: i64 = u.int_in_range(-2..=dev.1 as i64 + 1)?;
                    dev.0.wrapping_add_signed(off)
                };
                let len = access_len(u)?;
                if one_in(u, 2)? {
                    let mut d = vec![0u8; len];
                    bus.read(addr, &mut d);
                    if covers(addr, len, (I8042_BASE, I8042_PORT_LEN), 4) {
                        let status = d[(I8042_BASE + 4 - addr) as usize];
                        assert_eq!(status & 2, 0, "i8042 input buffer shows full");
                    }
                    if covers(addr, len, (PM, ACPI_PM_BLOCK_LEN), 4) {
                        assert_eq!(d[(PM + 4 - addr) as usize] & 1, 1, "SCI_EN reads 0");
                    }
                    if covers(addr, len, (PM, ACPI_PM_BLOCK_LEN), 5) {
                        assert_eq!(d[(PM + 5 - addr) as usize] & 0x20, 0, "SLP_EN reads 1");
                    }
                    if covers(addr, len, (PM, ACPI_PM_BLOCK_LEN), 0xb) {
                        assert_eq!(d[(PM + 0xb - addr) as usize], 0, "PM timer above 24 bits");
                    }
                    if inside(addr, len, (DEBUG_EXIT, DEBUG_EXIT_PORT_LEN)) {
                        assert!(d.iter().all(|&b| b == 0xff), "debug-exit read");
                    }
                    if addr == RUNNER && len == 4 {
                        assert_eq!(&d, b"VFRN", "runner port signature");
                    }
                    if inside(addr, len, (PVPANIC, PVPANIC_PORT_LEN)) {
                        assert!(d.iter().all(|&b| b == 3), "pvpanic events read");
                    }
                    if inside(addr, len, (TESTDEV, PC_TESTDEV_PORT_LEN)) {
                        let want: Vec<u8> = match testdev_reg(addr - TESTDEV) {
                            Some(r) => (0..len)
                                .map(|i| testdev_data.get(r + i).copied().unwrap_or(0))
                                .collect(),
                            None => vec![0xff; len],
                        };
                        assert_eq!(d, want, "pc-testdev read at {addr:#x}");
                    }
                    if inside(addr, len, (TESTDEV_IRQ, PC_TESTDEV_IRQ_LEN)) {
                        assert!(d.iter().all(|&b| b == 0xff), "pc-testdev line read");
                    }
                    assert_eq!(
                        lock(&console.out).len(),
                        out_before,
                        "a read produced output"
                    );
                    assert!(exits.take().is_empty(), "a read requested an exit");
                    assert!(exits.take_events().is_empty(), "a read reported an event");
                    continue;
                }
                let d = value(u, len)?;
                bus.write(addr, &d);
                let mut want_flushes = Vec::new();
                if inside(addr, len, (TESTDEV, PC_TESTDEV_PORT_LEN)) {
                    match testdev_reg(addr - TESTDEV) {
                        Some(r) => {
                            for (i, b) in d.iter().enumerate() {
                                if let Some(slot) = testdev_data.get_mut(r + i) {
                                    *slot = *b;
                                }
                            }
                        }
                        None if addr == TESTDEV + 4 && len == 4 => {
                            want_flushes.push(u64::from(le(&d)) & !0xfff)
                        }
                        None => {}
                    }
                }
                assert_eq!(
                    std::mem::take(&mut *lock(&testdev.flushes)),
                    want_flushes,
                    "page flushes of a {len}-byte write at {addr:#x}"
                );
                let mut want_levels = Vec::new();
                if inside(addr, len, (TESTDEV_IRQ, PC_TESTDEV_IRQ_LEN)) {
                    for (i, b) in d.iter().enumerate() {
                        want_levels.push(((addr - TESTDEV_IRQ) as u32 + i as u32, *b != 0));
                    }
                }
                assert_eq!(
                    std::mem::take(&mut *lock(&testdev.levels)),
                    want_levels,
                    "interrupt lines of a {len}-byte write at {addr:#x}"
                );
                let requests = exits.take();
                let mut want = Vec::new();
                if inside(addr, len, (DEBUG_EXIT, DEBUG_EXIT_PORT_LEN)) && matches!(len, 1 | 2 | 4)
                {
                    let mut v = [0u8; 4];
                    v[..len].copy_from_slice(&d);
                    want.push(GuestExit::DebugExit(u32::from_le_bytes(v)));
                }
                let sized = matches!(len, 1 | 2 | 4);
                if addr == RUNNER + 0xc && sized && le(&d) <= 255 {
                    want.push(GuestExit::CommandExited(le(&d) as u8));
                }
                if addr == RUNNER + 0xc && sized && le(&d) == 0x100 {
                    want.push(GuestExit::InitFailed);
                }
                let pvpanic = inside(addr, len, (PVPANIC, PVPANIC_PORT_LEN)) && len > 0;
                if pvpanic && d[0] & 1 == 1 {
                    want.push(GuestExit::Panicked);
                }
                let mut want_events = Vec::new();
                if addr == RUNNER + 8 && sized {
                    want_events.push(GuestEvent::Phase(le(&d)));
                }
                if pvpanic && d[0] & 3 == 2 {
                    want_events.push(GuestEvent::CrashLoaded);
                }
                assert_eq!(
                    exits.take_events(),
                    want_events,
                    "events of a {len}-byte write at {addr:#x}"
                );
                let i8042 = inside(addr, len, (I8042_BASE, I8042_PORT_LEN));
                let slp = covers(addr, len, (PM, ACPI_PM_BLOCK_LEN), 5);
                for r in &requests {
                    match r {
                        GuestExit::DebugExit(_)
                        | GuestExit::CommandExited(_)
                        | GuestExit::InitFailed
                        | GuestExit::Panicked => {}
                        GuestExit::Reset => {
                            assert!(i8042, "reset requested by a write at {addr:#x}")
                        }
                        GuestExit::PowerOff => {
                            assert!(slp, "power-off requested by a write at {addr:#x}");
                            assert!(!powered_off, "power-off requested twice");
                            powered_off = true;
                        }
                    }
                }
                let guest: Vec<GuestExit> = requests
                    .iter()
                    .copied()
                    .filter(|r| {
                        matches!(
                            r,
                            GuestExit::DebugExit(_)
                                | GuestExit::CommandExited(_)
                                | GuestExit::InitFailed
                                | GuestExit::Panicked
                        )
                    })
                    .collect();
                assert_eq!(guest, want, "guest exit of a {len}-byte write at {addr:#x}");
                let thr_writes = usize::from(covers(addr, len, (COM1, SERIAL_PORT_LEN), 0));
                let out = lock(&console.out).len() - out_before;
                assert!(
                    out <= thr_writes,
                    "{out} bytes of output from a write at {addr:#x}"
                );
            }
        }
        assert!(
            lock(&serial).fifo_capacity() <= 64,
            "FIFO larger than 64 bytes"
        );
        assert!(
            exits.take().is_empty(),
            "an exit was requested outside a guest write"
        );
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
