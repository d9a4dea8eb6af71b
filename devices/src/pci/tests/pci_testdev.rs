//! QEMU's `pci-testdev` on the assembled platform, driven through the buses as kvm-unit-tests'
//! `lib/pci-testdev.c` and `x86/vmexit.c` drive it, with the fake registrar standing in for KVM.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::ioevent::fake::FakeIoEvents;
use crate::ioevent::{Datamatch, IoEventError, IoEventRegistrar};
use crate::pci::pci_testdev::*;
use crate::pci::{BarAccess, PciDevice};

const SLOT: u8 = 4;
const CMD: u16 = 0x04;

/// Which BAR an access goes through.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Mem,
    Io,
}

struct Ptd {
    r: Rig,
    io: FakeIoEvents,
    dev: Arc<Mutex<PciTestDev>>,
}

impl Ptd {
    fn new() -> Self {
        let io = FakeIoEvents::new();
        Self::with_registrar(io.clone(), Some(Arc::new(io)))
    }

    fn with_registrar(io: FakeIoEvents, registrar: Option<Arc<dyn IoEventRegistrar>>) -> Self {
        let r = Rig::new();
        let dev = Arc::new(Mutex::new(PciTestDev::new(registrar).unwrap()));
        r.platform.add_device(SLOT, dev.clone()).unwrap();
        Ptd { r, io, dev }
    }

    fn mem(&self) -> u64 {
        self.r.bar_addr(SLOT, 0)
    }

    fn port(&self) -> u64 {
        self.r.bar_addr(SLOT, 1) & !3
    }

    fn base(&self, via: Via) -> u64 {
        match via {
            Via::Mem => self.mem(),
            Via::Io => self.port(),
        }
    }

    fn bus(&self, via: Via) -> &Bus {
        match via {
            Via::Mem => &self.r.mmio,
            Via::Io => &self.r.pio,
        }
    }

    fn read(&self, via: Via, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        assert!(self.bus(via).read(self.base(via) + off, &mut b[..len]));
        u64::from_le_bytes(b)
    }

    fn write(&self, via: Via, off: u64, len: usize, v: u64) {
        assert!(self
            .bus(via)
            .write(self.base(via) + off, &v.to_le_bytes()[..len]));
    }

    /// What the guest's write does when KVM has a binding there: the fake plays KVM. Returns
    /// whether the eventfd took it; if not, the write exits to the device as on KVM.
    fn guest_write(&self, via: Via, off: u64, len: usize, v: u64) -> bool {
        let at = self.base(via) + off;
        let taken = match via {
            Via::Mem => self.io.guest_write(at, len, v),
            Via::Io => self.io.guest_out(at as u16, len, v),
        };
        if !taken {
            self.write(via, off, len, v);
        }
        taken
    }

    fn name(&self, via: Via) -> String {
        let mut s = String::new();
        for i in 0..64 {
            match self.read(via, HDR_NAME + i, 1) as u8 {
                0 => break,
                c => s.push(char::from(c)),
            }
        }
        s
    }

    fn hits(&self) -> u64 {
        self.dev.lock().unwrap().eventfd_hits()
    }
}

const NAMES: [&str; 6] = [
    "mmio-no-eventfd",
    "mmio-wildcard-eventfd",
    "mmio-datamatch-eventfd",
    "portio-no-eventfd",
    "portio-wildcard-eventfd",
    "portio-datamatch-eventfd",
];

#[test]
fn identity_bars_and_no_interrupt_pin() {
    let p = Ptd::new();
    let r = &p.r;
    assert_eq!(r.ecam_read32(SLOT, 0x00), 0x0005_1b36);
    // Revision 0, class 0xff0000.
    assert_eq!(r.ecam_read32(SLOT, 0x08), 0xff00_0000);
    assert_eq!(r.ecam_read32(SLOT, 0x2c), 0x1100_1af4);
    // No interrupt pin (so no line either), no capability list.
    assert_eq!(r.ecam_read(SLOT, 0x3d, 1), 0);
    assert_eq!(r.ecam_read(SLOT, 0x06, 2) & 0x10, 0);
    assert_eq!(r.ecam_read(SLOT, 0x34, 1), 0);
    // BAR 0: 32-bit non-prefetchable memory, BAR 1: I/O; the rest absent.
    let bar0 = r.ecam_read32(SLOT, 0x10);
    let bar1 = r.ecam_read32(SLOT, 0x14);
    assert_eq!(bar0 & 0xf, 0);
    assert_eq!(bar1 & 0x3, 1);
    for off in [0x18, 0x1c, 0x20, 0x24, 0x30] {
        assert_eq!(r.ecam_read32(SLOT, off), 0, "{off:#x}");
    }
    // Sizing: 4 KiB and 256 ports.
    r.ecam_write(SLOT, CMD, 2, 0);
    r.ecam_write32(SLOT, 0x10, u32::MAX);
    r.ecam_write32(SLOT, 0x14, u32::MAX);
    assert_eq!(r.ecam_read32(SLOT, 0x10), !(MEM_BAR_SIZE as u32 - 1));
    assert_eq!(
        r.ecam_read32(SLOT, 0x14) | 0xffff_0000,
        !(IO_BAR_SIZE as u32 - 1) | 1
    );
}

#[test]
fn without_a_test_everything_reads_zero() {
    let p = Ptd::new();
    for via in [Via::Mem, Via::Io] {
        for off in [0, 1, 4, 8, 0xc, 0x10, 0x80, 0x83, 0x800] {
            let size = if via == Via::Mem {
                MEM_BAR_SIZE
            } else {
                IO_BAR_SIZE
            };
            if off + 4 <= size {
                assert_eq!(p.read(via, off, 4), 0, "{via:?} {off:#x}");
            }
        }
        // A write at a test offset without a test does nothing.
        p.write(via, 0x83, 1, u64::from(DATA_MATCH));
        assert_eq!(p.read(via, HDR_COUNT, 4), 0);
    }
    assert!(p.io.addresses().is_empty() && p.io.ports().is_empty());
}

/// kvm-unit-tests' `pci_testdev_one`, for each test of each BAR: select, COUNT 0, WIDTH 1, DATA
/// and OFFSET read as dwords, 16 writes of DATA at OFFSET, COUNT back: 16 for the tests without
/// an eventfd, 0 for those whose writes the eventfd took (in KVM: no exit).
#[test]
fn every_test_as_kvm_unit_tests_runs_it() {
    let p = Ptd::new();
    for (index, name) in NAMES.iter().enumerate() {
        let (via, n) = if index < 3 {
            (Via::Mem, index)
        } else {
            (Via::Io, index - 3)
        };
        p.write(via, HDR_TEST, 1, n as u64);
        assert_eq!(p.read(via, HDR_COUNT, 4), 0, "{name}");
        assert_eq!(p.read(via, HDR_TEST, 1), index as u64, "{name}");
        assert_eq!(p.read(via, HDR_WIDTH, 1), 1, "{name}");
        let data = p.read(via, HDR_DATA, 4);
        let offset = p.read(via, HDR_OFFSET, 4);
        let wildcard = n == 1;
        assert_eq!(
            data,
            u64::from(if wildcard { DATA_NOMATCH } else { DATA_MATCH }),
            "{name}"
        );
        let want_offset = if via == Via::Mem { 0x800 } else { 0x80 } + index as u64;
        assert_eq!(offset, want_offset, "{name}");
        assert_eq!(p.name(via), *name);
        assert_eq!(p.dev.lock().unwrap().current_test(), Some(*name), "{name}");

        let mut taken = 0;
        for _ in 0..16 {
            taken += u64::from(p.guest_write(via, offset, 1, data));
        }
        let count = p.read(via, HDR_COUNT, 4);
        let exited = p.dev.lock().unwrap().exited_eventfd_writes();
        if n == 0 {
            assert_eq!((taken, count, p.hits(), exited), (0, 16, 0, 0), "{name}");
        } else {
            assert_eq!((taken, count, p.hits(), exited), (16, 0, 16, 0), "{name}");
        }
    }
    // Test 3 of a BAR does not exist: the test ends, nothing is bound, the header is gone.
    p.write(Via::Io, HDR_TEST, 1, 3);
    assert_eq!(p.dev.lock().unwrap().current_test(), None);
    assert_eq!(p.read(Via::Io, HDR_WIDTH, 1), 0);
    assert!(p.io.addresses().is_empty() && p.io.ports().is_empty());
}

/// The bindings each test makes: memory wildcard of any length (KVM's fast MMIO), port
/// wildcard of one byte, datamatch of the byte 0xFA; one at a time, gone when the test ends.
#[test]
fn eventfd_bindings_follow_the_running_test() {
    let p = Ptd::new();
    let (mem, port) = (p.mem(), p.port());
    p.write(Via::Mem, HDR_TEST, 1, 0);
    assert!(p.io.addresses().is_empty() && p.io.ports().is_empty());
    p.write(Via::Mem, HDR_TEST, 1, 1);
    assert_eq!(p.io.addresses(), [mem + 0x801]);
    assert_eq!(p.io.datamatch_at(mem + 0x801), Some(Datamatch::Any));
    p.write(Via::Mem, HDR_TEST, 1, 2);
    assert_eq!(p.io.addresses(), [mem + 0x802]);
    assert_eq!(p.io.datamatch_at(mem + 0x802), Some(Datamatch::U8(0xfa)));
    p.write(Via::Io, HDR_TEST, 1, 1);
    assert!(p.io.addresses().is_empty());
    assert_eq!(p.io.ports(), [port as u16 + 0x84]);
    assert_eq!(
        p.io.at_port(port as u16 + 0x84).unwrap().1,
        Datamatch::AnyOfLen(1)
    );
    p.write(Via::Io, HDR_TEST, 1, 2);
    assert_eq!(p.io.ports(), [port as u16 + 0x85]);
    assert_eq!(
        p.io.at_port(port as u16 + 0x85).unwrap().1,
        Datamatch::U8(0xfa)
    );
    // Any value of 3 or more only ends the test.
    p.write(Via::Io, HDR_TEST, 1, 0xff);
    assert!(p.io.ports().is_empty());
    // Removing the device unbinds the running test's eventfd (its BARs go away).
    p.write(Via::Mem, HDR_TEST, 1, 1);
    assert_eq!(p.io.addresses().len(), 1);
    drop(p.r.platform.remove_device(SLOT));
    assert!(p.io.addresses().is_empty());
}

/// Dropping the platform unmaps the BARs, which unbinds; a device dropped while it still
/// believes a BAR mapped (never on a platform, as an embedder might hold it) unbinds itself.
#[test]
fn dropping_unbinds() {
    let p = Ptd::new();
    p.write(Via::Io, HDR_TEST, 1, 2);
    assert_eq!(p.io.ports().len(), 1);
    let Ptd { r, io, dev } = p;
    drop(r);
    assert!(io.ports().is_empty());
    drop(dev);

    let io = FakeIoEvents::new();
    let mut d = PciTestDev::new(Some(Arc::new(io.clone()))).unwrap();
    d.bar_moved(IO_BAR, None, Some(0x7000));
    d.bar_write(IO_BAR, HDR_TEST, &[1]);
    assert_eq!(io.ports(), [0x7084]);
    drop(d);
    assert!(io.ports().is_empty());
}

/// What QEMU counts when a write reaches the device: bytes at OFFSET, of DATA unless the test
/// is a wildcard; a wide write is split into bytes; a write of another value or width than the
/// eventfd takes exits and is judged byte by byte.
#[test]
fn counting_follows_qemu_byte_by_byte() {
    let p = Ptd::new();
    // no-eventfd: 0xCE does not count; a 2-byte 0x00FA counts once (its low byte); a 4-byte
    // write one below OFFSET puts 0xFA at OFFSET+... only its byte at OFFSET counts.
    p.write(Via::Mem, HDR_TEST, 1, 0);
    p.write(Via::Mem, 0x800, 1, 0xce);
    assert_eq!(p.read(Via::Mem, HDR_COUNT, 4), 0);
    p.write(Via::Mem, 0x800, 2, 0xabfa);
    assert_eq!(p.read(Via::Mem, HDR_COUNT, 4), 1);
    p.write(Via::Mem, 0x7fc, 8, 0x0000_00fa_0000_0000);
    assert_eq!(p.read(Via::Mem, HDR_COUNT, 4), 2);
    p.write(Via::Mem, 0x801, 1, 0xfa);
    assert_eq!(p.read(Via::Mem, HDR_COUNT, 4), 2);
    // Restarting a test clears COUNT.
    p.write(Via::Mem, HDR_TEST, 1, 0);
    assert_eq!(p.read(Via::Mem, HDR_COUNT, 4), 0);

    // Port wildcard: one byte of any value goes to the eventfd; a 2-byte write is not the
    // eventfd's (KVM binds one byte) and counts once, its low byte being at OFFSET.
    p.write(Via::Io, HDR_TEST, 1, 1);
    assert!(p.guest_write(Via::Io, 0x84, 1, 0x12));
    assert!(!p.guest_write(Via::Io, 0x84, 2, 0x3456));
    assert_eq!(p.read(Via::Io, HDR_COUNT, 4), 1);
    assert_eq!(p.hits(), 1);

    // Memory wildcard: any length is the eventfd's.
    p.write(Via::Mem, HDR_TEST, 1, 1);
    assert!(p.guest_write(Via::Mem, 0x801, 4, 0x1234_5678));
    assert!(p.guest_write(Via::Mem, 0x801, 1, 0));
    assert_eq!(p.read(Via::Mem, HDR_COUNT, 4), 0);
    assert_eq!(p.hits(), 2);

    // Datamatch: 0xCE exits and does not count; a 2-byte 0x00FA exits and counts once.
    p.write(Via::Io, HDR_TEST, 1, 2);
    assert!(!p.guest_write(Via::Io, 0x85, 1, 0xce));
    assert!(!p.guest_write(Via::Io, 0x85, 2, 0x00fa));
    assert!(p.guest_write(Via::Io, 0x85, 1, 0xfa));
    assert_eq!(p.read(Via::Io, HDR_COUNT, 4), 1);
    assert_eq!(p.hits(), 1);
}

/// The header is the running test's whichever BAR reads it, and a write at OFFSET counts
/// through either BAR when it reaches the device (QEMU keeps one current test for both).
#[test]
fn one_current_test_for_both_bars() {
    let p = Ptd::new();
    p.write(Via::Io, HDR_TEST, 1, 0);
    assert_eq!(p.name(Via::Mem), "portio-no-eventfd");
    assert_eq!(p.read(Via::Mem, HDR_OFFSET, 4), 0x83);
    p.write(Via::Mem, 0x83, 1, 0xfa);
    assert_eq!(p.read(Via::Io, HDR_COUNT, 4), 1);
    // Selecting through the memory BAR picks a memory test.
    p.write(Via::Mem, HDR_TEST, 1, 0);
    assert_eq!(p.name(Via::Io), "mmio-no-eventfd");
}

/// The binding follows the BAR: a move rebinds at the new address, decoding off drops it,
/// decoding on brings it back.
#[test]
fn binding_follows_bar_moves_and_decoding() {
    let p = Ptd::new();
    p.write(Via::Mem, HDR_TEST, 1, 2);
    let old = p.mem();
    assert_eq!(p.io.addresses(), [old + 0x802]);
    let new = old + 0x10_0000;
    p.r.ecam_write32(SLOT, 0x10, new as u32);
    assert_eq!(p.mem(), new);
    assert_eq!(p.io.addresses(), [new + 0x802]);
    assert_eq!(p.read(Via::Mem, HDR_OFFSET, 4), 0x802);
    p.r.ecam_write(SLOT, CMD, 2, 0);
    assert!(p.io.addresses().is_empty());
    p.r.ecam_write(SLOT, CMD, 2, 3);
    assert_eq!(p.io.addresses(), [new + 0x802]);

    p.write(Via::Io, HDR_TEST, 1, 1);
    let port = p.port() as u16;
    assert_eq!(p.io.ports(), [port + 0x84]);
    p.r.ecam_write32(SLOT, 0x14, u32::from(port) + 0x100);
    assert_eq!(p.io.ports(), [port + 0x184]);
    assert!(p.io.addresses().is_empty());
}

/// A registrar with no port I/O (the trait's default refuses): the port tests still work, their
/// writes reaching the device, which signals the eventfd itself; COUNT stays as QEMU's.
#[test]
fn refused_binding_falls_back_to_the_device() {
    struct MmioOnly(FakeIoEvents);
    impl IoEventRegistrar for MmioOnly {
        fn register(&self, fd: &EventFd, addr: u64, d: Datamatch) -> Result<(), IoEventError> {
            self.0.register(fd, addr, d)
        }
        fn unregister(&self, fd: &EventFd, addr: u64, d: Datamatch) -> Result<(), IoEventError> {
            self.0.unregister(fd, addr, d)
        }
    }
    let io = FakeIoEvents::new();
    let p = Ptd::with_registrar(io.clone(), Some(Arc::new(MmioOnly(io))));
    p.write(Via::Io, HDR_TEST, 1, 2);
    assert!(p.io.ports().is_empty());
    for _ in 0..16 {
        assert!(!p.guest_write(Via::Io, 0x85, 1, 0xfa));
    }
    assert_eq!(p.read(Via::Io, HDR_COUNT, 4), 0);
    assert_eq!(p.hits(), 16);
    assert_eq!(p.dev.lock().unwrap().exited_eventfd_writes(), 16);
    // And with no registrar at all.
    let p = Ptd::with_registrar(FakeIoEvents::new(), None);
    p.write(Via::Mem, HDR_TEST, 1, 1);
    for _ in 0..16 {
        p.write(Via::Mem, 0x801, 1, 0x00);
    }
    assert_eq!(p.read(Via::Mem, HDR_COUNT, 4), 0);
    assert_eq!(p.hits(), 16);
}

/// Hostile guest: every size at every offset of both BARs, with changing values, interleaved
/// with test selections; nothing panics, reads past the header are zero, and at most one
/// eventfd is bound at any time.
#[test]
fn hostile_accesses_anywhere() {
    let p = Ptd::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for via in [Via::Mem, Via::Io] {
        let size = if via == Via::Mem {
            MEM_BAR_SIZE
        } else {
            IO_BAR_SIZE
        };
        for off in 0..size {
            for len in [1usize, 2, 4, 8] {
                if via == Via::Io && len == 8 {
                    continue;
                }
                if off + len as u64 > size {
                    continue;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly small values at the test register, so tests keep starting.
                let v = if off == 0 { x % 4 } else { x };
                p.write(via, off, len, v);
                let got = p.read(via, off, len);
                if off >= 0x40 {
                    assert_eq!(got, 0, "{via:?} {off:#x}+{len}");
                }
                assert!(p.io.addresses().len() + p.io.ports().len() <= 1);
            }
        }
    }
    // Accesses the platform never forwards (past the BAR, other BARs) still must not panic.
    let mut d = p.dev.lock().unwrap();
    let mut buf = [0u8; 8];
    for bar in [0, 1, 2, 5, 6, 7, usize::MAX] {
        for off in [0, MEM_BAR_SIZE, u64::MAX - 3, u64::MAX] {
            d.bar_read(bar, off, &mut buf);
            d.bar_write(bar, off, &buf);
            d.bar_write(bar, off, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        }
    }
    d.bar_moved(9, None, Some(u64::MAX));
    d.bar_moved(1, None, Some(u64::MAX - 1));
    d.bar_write(1, 0, &[1]);
    d.bar_moved(0, None, Some(u64::MAX - 1));
    d.bar_write(0, 0, &[1]);
}
