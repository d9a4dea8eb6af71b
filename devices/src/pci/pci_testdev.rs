//! QEMU's `pci-testdev` (1b36:0005): the PCI device kvm-unit-tests' x86 `vmexit` test writes to
//! measure an MMIO or port write that exits to the VMM, and one that KVM completes in the kernel
//! by signalling an eventfd (with and without a data match). Only with `--pci-testdev`.
//!
//! # Identity
//!
//! Red Hat's vendor ID 0x1b36, device 0x0005, revision 0, class 0xff0000 ("other"), subsystem
//! 1af4:1100 (QEMU's default for devices that set none), no interrupt pin, no capabilities.
//!
//! # BARs
//!
//! | BAR | Kind | Size |
//! |---|---|---|
//! | 0 ([`MEM_BAR`]) | 32-bit memory | 4 KiB |
//! | 1 ([`IO_BAR`]) | I/O | 256 ports |
//!
//! Both BARs show the header of the current test (below) from offset 0, read and written a byte
//! at a time: a wider access is split into bytes at consecutive offsets (a 4-byte read of
//! OFFSET gives the whole dword).
//!
//! # The current test's header (any BAR)
//!
//! | Offset | Width | Name | Meaning |
//! |---|---|---|---|
//! | 0x00 | 1 | TEST | write n: end the current test, start test n of this BAR's kind (n < 3; other values only end it). Reads the test's index 0–5 |
//! | 0x01 | 1 | WIDTH | the width the test writes with: 1 |
//! | 0x04 | 4 | OFFSET | where in its BAR the test writes (below) |
//! | 0x08 | 1 | DATA | the value it writes: 0xFA ([`DATA_MATCH`]), 0xCE ([`DATA_NOMATCH`]) for the wildcard tests |
//! | 0x0C | 4 | COUNT | writes the device counted since the test started |
//! | 0x10 | – | NAME | the test's name, NUL-terminated |
//!
//! Everything else reads zero, as does the whole BAR when no test runs; writes elsewhere are
//! dropped.
//!
//! # The six tests
//!
//! | Index | Name | OFFSET | Write there |
//! |---|---|---|---|
//! | 0 | `mmio-no-eventfd` | BAR 0 + 0x800 | a byte of 0xFA exits to the VMM and counts |
//! | 1 | `mmio-wildcard-eventfd` | BAR 0 + 0x801 | signals an eventfd in KVM: no exit, no count (any length, any value) |
//! | 2 | `mmio-datamatch-eventfd` | BAR 0 + 0x802 | a byte of 0xFA signals an eventfd in KVM |
//! | 3 | `portio-no-eventfd` | BAR 1 + 0x83 | as test 0 |
//! | 4 | `portio-wildcard-eventfd` | BAR 1 + 0x84 | a byte of any value signals an eventfd in KVM |
//! | 5 | `portio-datamatch-eventfd` | BAR 1 + 0x85 | as test 2 |
//!
//! # What counts
//!
//! As in QEMU, COUNT counts the bytes that reach the device at OFFSET (with the data match:
//! of value DATA) — the writes that exited to the VMM. A write KVM completed by signalling the
//! test's eventfd never reaches the device and does not count: a guest that wrote 16 times
//! reads 16 for a no-eventfd test and 0 for an eventfd test (kvm-unit-tests' `pci_testdev()`
//! accepts either, its `vmexit` reads neither). Every read of the header drains the eventfd, as
//! QEMU's does; the drained signals are tallied on the host side only
//! ([`PciTestDev::eventfd_hits`], and a debug log line when the test ends). A write that the
//! eventfd would have taken but that reaches the device anyway (no registrar, or the binding
//! was refused) signals the eventfd from here instead, so it does not count either way; the
//! device tallies those apart ([`PciTestDev::exited_eventfd_writes`], the same log line), which
//! is how a test tells "KVM took the write" from "the write exited".
//!
//! The eventfd is bound (through an [`IoEventRegistrar`]) only while its test runs, at the BAR's
//! current address: moving the BAR or turning decoding off moves or drops the binding.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::bar::{BarSpec, DecodedBar};
use super::config::{ConfigError, ConfigHeader, ConfigSpace};
use super::{BarAccess, PciDevice};
use crate::ioevent::{Datamatch, IoEventRegistrar};

/// Vendor ID: Red Hat.
pub const PCI_TESTDEV_VENDOR_ID: u16 = 0x1b36;
/// Device ID: Red Hat's PCI test device.
pub const PCI_TESTDEV_DEVICE_ID: u16 = 0x0005;
/// Class code: "other" (0xff), no subclass or interface.
pub const PCI_TESTDEV_CLASS: u32 = 0xff_00_00;
/// Subsystem vendor ID (QEMU's default).
pub const PCI_TESTDEV_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem ID (QEMU's default).
pub const PCI_TESTDEV_SUBSYSTEM_ID: u16 = 0x1100;

/// The memory BAR.
pub const MEM_BAR: usize = 0;
/// The memory BAR's size.
pub const MEM_BAR_SIZE: u64 = 0x1000;
/// The I/O BAR.
pub const IO_BAR: usize = 1;
/// The I/O BAR's size.
pub const IO_BAR_SIZE: u64 = 0x100;

/// Header: the test register.
pub const HDR_TEST: u64 = 0x00;
/// Header: the width the test writes with.
pub const HDR_WIDTH: u64 = 0x01;
/// Header: where in its BAR the test writes.
pub const HDR_OFFSET: u64 = 0x04;
/// Header: the value the test writes.
pub const HDR_DATA: u64 = 0x08;
/// Header: writes counted since the test started.
pub const HDR_COUNT: u64 = 0x0c;
/// Header: the test's name, NUL-terminated.
pub const HDR_NAME: u64 = 0x10;

/// DATA of the tests that match the value (no-eventfd, datamatch-eventfd).
pub const DATA_MATCH: u8 = 0xfa;
/// DATA of the wildcard tests.
pub const DATA_NOMATCH: u8 = 0xce;
/// Tests per BAR: no-eventfd, wildcard-eventfd, datamatch-eventfd.
pub const TESTS_PER_BAR: u8 = 3;
/// The width every test writes with.
pub const TEST_WIDTH: u8 = 1;
/// Where the memory tests' write offsets start (test n writes at this + n).
pub const MEM_TEST_BASE: u32 = 0x800;
/// Where the port tests' write offsets start (test n writes at this + n).
pub const IO_TEST_BASE: u32 = 0x80;

/// Which writes a test counts or hands to an eventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Every write exits to the device; bytes of DATA count.
    NoEventfd,
    /// An eventfd takes every write (memory: any length; ports: 1-byte writes).
    Wildcard,
    /// An eventfd takes 1-byte writes of DATA.
    Datamatch,
}

/// One of the six tests.
#[derive(Debug)]
struct Test {
    bar: usize,
    kind: Kind,
    offset: u32,
    data: u8,
    /// The header as the guest reads it, COUNT zero (it is kept in [`PciTestDev::count`]).
    header: Vec<u8>,
    /// The eventfd of an eventfd test.
    eventfd: Option<EventFd>,
}

impl Test {
    fn new(index: u8) -> std::io::Result<Test> {
        let (bar, kind_name, base) = if index < TESTS_PER_BAR {
            (MEM_BAR, "mmio", MEM_TEST_BASE)
        } else {
            (IO_BAR, "portio", IO_TEST_BASE)
        };
        let (kind, test_name) = match index % TESTS_PER_BAR {
            0 => (Kind::NoEventfd, "no-eventfd"),
            1 => (Kind::Wildcard, "wildcard-eventfd"),
            _ => (Kind::Datamatch, "datamatch-eventfd"),
        };
        let offset = base + u32::from(index) * u32::from(TEST_WIDTH);
        let data = if kind == Kind::Wildcard {
            DATA_NOMATCH
        } else {
            DATA_MATCH
        };
        let mut header = vec![0u8; HDR_NAME as usize];
        header[HDR_TEST as usize] = index;
        header[HDR_WIDTH as usize] = TEST_WIDTH;
        header[HDR_OFFSET as usize..HDR_OFFSET as usize + 4].copy_from_slice(&offset.to_le_bytes());
        header[HDR_DATA as usize] = data;
        header.extend_from_slice(format!("{kind_name}-{test_name}").as_bytes());
        header.push(0);
        let eventfd = match kind {
            Kind::NoEventfd => None,
            _ => Some(crate::new_eventfd()?),
        };
        Ok(Test {
            bar,
            kind,
            offset,
            data,
            header,
            eventfd,
        })
    }

    /// The writes the eventfd takes, as KVM is told.
    fn datamatch(&self) -> Datamatch {
        match (self.kind, self.bar) {
            // Any length: KVM's fast MMIO path (QEMU does the same where KVM offers it).
            (Kind::Wildcard, MEM_BAR) => Datamatch::Any,
            (Kind::Wildcard, _) => Datamatch::AnyOfLen(TEST_WIDTH),
            _ => Datamatch::U8(self.data),
        }
    }

    fn name(&self) -> &str {
        let name = &self.header[HDR_NAME as usize..self.header.len() - 1];
        std::str::from_utf8(name).unwrap_or("?")
    }
}

/// The running test and where its eventfd is bound.
#[derive(Debug, Clone, Copy)]
struct Current {
    test: usize,
    /// The guest address (memory) or port (I/O) the eventfd is bound at.
    bound: Option<u64>,
}

/// Errors from building the device.
#[derive(Debug, thiserror::Error)]
pub enum PciTestDevError {
    /// Laying out the config space failed.
    #[error("its config space: {0}")]
    Config(#[from] ConfigError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for its tests: {0}")]
    EventFd(#[source] std::io::Error),
}

/// QEMU's `pci-testdev`.
pub struct PciTestDev {
    config: ConfigSpace,
    tests: Vec<Test>,
    current: Option<Current>,
    count: u32,
    /// Eventfd signals drained since the current (or last) test started.
    hits: u64,
    /// Of those, the ones this device gave for writes that exited to it.
    exited_hits: u64,
    /// Where each BAR is mapped (from [`PciDevice::bar_moved`]).
    bases: [Option<u64>; 2],
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
    warned: bool,
}

impl std::fmt::Debug for PciTestDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciTestDev")
            .field("current", &self.current)
            .field("count", &self.count)
            .field("bases", &self.bases)
            .finish_non_exhaustive()
    }
}

impl PciTestDev {
    /// The device with no test running. Its eventfd tests bind their eventfds through
    /// `ioevents`; without one every write reaches the device (and the eventfd tests signal
    /// their eventfds from here).
    pub fn new(ioevents: Option<Arc<dyn IoEventRegistrar>>) -> Result<Self, PciTestDevError> {
        let mut config = ConfigSpace::new(&ConfigHeader {
            vendor_id: PCI_TESTDEV_VENDOR_ID,
            device_id: PCI_TESTDEV_DEVICE_ID,
            revision_id: 0,
            class_code: PCI_TESTDEV_CLASS,
            subsystem_vendor_id: PCI_TESTDEV_SUBSYSTEM_VENDOR_ID,
            subsystem_id: PCI_TESTDEV_SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        config.set_bar(MEM_BAR, BarSpec::mem32(MEM_BAR_SIZE))?;
        config.set_bar(IO_BAR, BarSpec::io(IO_BAR_SIZE))?;
        let tests = (0..2 * TESTS_PER_BAR)
            .map(Test::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(PciTestDevError::EventFd)?;
        Ok(PciTestDev {
            config,
            tests,
            current: None,
            count: 0,
            hits: 0,
            exited_hits: 0,
            bases: [None; 2],
            ioevents,
            warned: false,
        })
    }

    /// The config space (for tests).
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The name of the running test, if one runs.
    pub fn current_test(&self) -> Option<&str> {
        self.current.map(|c| self.tests[c.test].name())
    }

    /// How many times the current (or last) test's eventfd was signalled since it started:
    /// the writes KVM completed without an exit (drains the eventfd first). Host side only;
    /// the guest's COUNT does not include them.
    pub fn eventfd_hits(&mut self) -> u64 {
        self.drain();
        self.hits
    }

    /// How many of [`PciTestDev::eventfd_hits`] this device signalled itself, for writes the
    /// eventfd should have taken in KVM but that exited to the VMM (no binding in place).
    pub fn exited_eventfd_writes(&self) -> u64 {
        self.exited_hits
    }

    /// Adds what the current test's eventfd was signalled since the last drain to `hits`.
    fn drain(&mut self) {
        let Some(c) = self.current else {
            return;
        };
        if let Some(fd) = &self.tests[c.test].eventfd {
            // Non-blocking: nothing signalled reads as WouldBlock.
            if let Ok(n) = fd.read() {
                self.hits = self.hits.saturating_add(n);
            }
        }
    }

    /// Binds the current test's eventfd at its BAR's current address (if mapped).
    fn bind(&mut self) {
        let (Some(c), Some(io)) = (self.current, self.ioevents.clone()) else {
            return;
        };
        let t = &self.tests[c.test];
        let (Some(fd), Some(base)) = (&t.eventfd, self.bases[t.bar]) else {
            return;
        };
        let Some(addr) = base.checked_add(u64::from(t.offset)) else {
            return;
        };
        let r = if t.bar == MEM_BAR {
            io.register(fd, addr, t.datamatch())
        } else {
            match u16::try_from(addr) {
                Ok(port) => io.register_pio(fd, port, t.datamatch()),
                Err(_) => return,
            }
        };
        match r {
            Ok(()) => {
                self.current = Some(Current {
                    bound: Some(addr),
                    ..c
                })
            }
            Err(e) if !self.warned => {
                // The writes then reach bar_write, which signals the same eventfd.
                log::warn!("pci-testdev: {e}; {} writes exit to the VMM", t.name());
                self.warned = true;
            }
            Err(_) => {}
        }
    }

    /// Unbinds the current test's eventfd if it is bound.
    fn unbind(&mut self) {
        let Some(c) = self.current else {
            return;
        };
        let (Some(addr), Some(io)) = (c.bound, &self.ioevents) else {
            return;
        };
        let t = &self.tests[c.test];
        let Some(fd) = &t.eventfd else {
            return;
        };
        let r = if t.bar == MEM_BAR {
            io.unregister(fd, addr, t.datamatch())
        } else {
            io.unregister_pio(fd, addr as u16, t.datamatch())
        };
        if let Err(e) = r {
            log::warn!("pci-testdev: {e}");
        }
        self.current = Some(Current { bound: None, ..c });
    }

    /// Ends the running test, if any.
    fn stop(&mut self) {
        let Some(c) = self.current else {
            return;
        };
        self.unbind();
        self.drain();
        let t = &self.tests[c.test];
        if t.eventfd.is_some() {
            log::debug!(
                "pci-testdev: {} ended: COUNT {}, eventfd signalled {} times, {} of them by \
                 writes that exited to the VMM",
                t.name(),
                self.count,
                self.hits,
                self.exited_hits
            );
        } else {
            log::debug!("pci-testdev: {} ended: COUNT {}", t.name(), self.count);
        }
        self.current = None;
    }

    /// Starts test `index` (0..6).
    fn start(&mut self, index: usize) {
        self.count = 0;
        self.current = Some(Current {
            test: index,
            bound: None,
        });
        self.drain();
        self.hits = 0;
        self.exited_hits = 0;
        self.bind();
    }

    /// A 1-byte write of `value` at `offset` of `bar`.
    fn write_byte(&mut self, bar: usize, offset: u64, value: u8) {
        if offset == HDR_TEST {
            self.stop();
            if value < TESTS_PER_BAR {
                let first = if bar == MEM_BAR { 0 } else { TESTS_PER_BAR };
                self.start(usize::from(first + value));
            }
            return;
        }
        let Some(c) = self.current else {
            return;
        };
        let t = &self.tests[c.test];
        if offset != u64::from(t.offset) {
            return;
        }
        if t.kind != Kind::Wildcard && value != t.data {
            return;
        }
        self.count = self.count.wrapping_add(1);
    }

    /// The header byte at `offset` of the running test (zero past it or with no test).
    fn read_byte(&self, offset: u64) -> u8 {
        let Some(c) = self.current else {
            return 0;
        };
        let Ok(at) = usize::try_from(offset) else {
            return 0;
        };
        match offset.checked_sub(HDR_COUNT) {
            Some(i @ 0..=3) => self.count.to_le_bytes()[i as usize],
            _ => self.tests[c.test].header.get(at).copied().unwrap_or(0),
        }
    }

    /// Whether a write of `data` at `offset` of `bar` is one the running test's eventfd takes;
    /// if so, signals the eventfd (what KVM does when the binding is in place).
    fn eventfd_takes(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        let Some(c) = self.current else {
            return false;
        };
        let t = &self.tests[c.test];
        let Some(fd) = &t.eventfd else {
            return false;
        };
        if bar != t.bar || offset != u64::from(t.offset) || data.len() > 8 {
            return false;
        }
        let mut value = [0u8; 8];
        value[..data.len()].copy_from_slice(data);
        if !t.datamatch().accepts(data.len(), u64::from_le_bytes(value)) {
            return false;
        }
        if let Err(e) = fd.write(1) {
            log::warn!("pci-testdev: signalling the eventfd: {e}");
        }
        self.exited_hits = self.exited_hits.saturating_add(1);
        true
    }
}

impl Drop for PciTestDev {
    fn drop(&mut self) {
        self.unbind();
    }
}

impl PciDevice for PciTestDev {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }

    /// No test in progress, its eventfd unbound from KVM (the test number and count survive,
    /// as QEMU's do).
    fn system_reset(&mut self) {
        self.stop();
    }

    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        self.config.bar_specs()
    }

    fn decoded_bars(&self) -> Vec<DecodedBar> {
        self.config.decoded_bars()
    }

    fn bar_moved(&mut self, bar: usize, _old: Option<u64>, new: Option<u64>) {
        let Some(slot) = self.bases.get_mut(bar) else {
            return;
        };
        *slot = new;
        if self.current.is_some_and(|c| self.tests[c.test].bar == bar) {
            self.unbind();
            self.bind();
        }
    }
}

impl BarAccess for PciTestDev {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != MEM_BAR && bar != IO_BAR {
            data.fill(0xff);
            return;
        }
        if let Some(c) = self.current {
            let len = self.tests[c.test].header.len() as u64;
            if offset < len {
                self.drain();
            }
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .map_or(0, |at| self.read_byte(at));
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != MEM_BAR && bar != IO_BAR {
            return;
        }
        if self.eventfd_takes(bar, offset, data) {
            return;
        }
        for (i, &v) in data.iter().enumerate() {
            if let Some(at) = offset.checked_add(i as u64) {
                self.write_byte(bar, at, v);
            }
        }
    }
}
