//! QEMU's `pci-testdev` (`devices::pci::pci_testdev`, `--pci-testdev`) on the PCI platform beside
//! a test device, driven as a hostile guest would: config-space writes of any size through ECAM
//! (BAR moves, sizing patterns, decode toggles), port and MMIO accesses of any size in and
//! around both BARs, test selections through either BAR, writes that KVM would complete with the
//! running test's eventfd (played by the fake registrar), and direct BAR handler calls with any
//! BAR index and offset.
//!
//! Invariants, after every operation, against a model of QEMU's device written here from its
//! register map (docs/devices.md): the header the guest reads (every byte of the first 64,
//! through a direct handler read) is the model's, COUNT included; at most one eventfd binding
//! exists, and it is exactly the running eventfd test's, at its BAR's mapping plus OFFSET with
//! that test's datamatch, and only while the BAR is mapped; writes the eventfd takes never
//! count. At the end, dropping everything leaves no binding.
#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::{Result, Unstructured};
use arch::layout;
use devices::ioevent::fake::FakeIoEvents;
use devices::ioevent::{Datamatch, IoEventRegistrar};
use devices::pci::pci_testdev::{
    PciTestDev, DATA_MATCH, DATA_NOMATCH, IO_BAR, IO_BAR_SIZE, IO_TEST_BASE, MEM_BAR, MEM_BAR_SIZE,
    MEM_TEST_BASE,
};
use devices::pci::BarAccess;
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::{access_len, offset_in, one_in, value, MAX_OPS};
use vfiovm_fuzz::rig::{lock, Rig, Tracked};

const SLOT: u8 = 5;
/// How much of a BAR the header check reads.
const HEADER_CHECK: u64 = 64;

/// One of QEMU's six tests, as its register map states it.
#[derive(Debug, Clone, Copy)]
struct Spec {
    bar: usize,
    offset: u64,
    data: u8,
    /// 0: no eventfd, 1: wildcard, 2: datamatch.
    kind: u8,
    name: &'static str,
}

const SPECS: [Spec; 6] = {
    const fn s(i: u8, name: &'static str) -> Spec {
        let kind = i % 3;
        let (bar, base) = if i < 3 {
            (MEM_BAR, MEM_TEST_BASE)
        } else {
            (IO_BAR, IO_TEST_BASE)
        };
        Spec {
            bar,
            offset: base as u64 + i as u64,
            data: if kind == 1 { DATA_NOMATCH } else { DATA_MATCH },
            kind,
            name,
        }
    }
    [
        s(0, "mmio-no-eventfd"),
        s(1, "mmio-wildcard-eventfd"),
        s(2, "mmio-datamatch-eventfd"),
        s(3, "portio-no-eventfd"),
        s(4, "portio-wildcard-eventfd"),
        s(5, "portio-datamatch-eventfd"),
    ]
};

impl Spec {
    fn datamatch(&self) -> Option<Datamatch> {
        match (self.kind, self.bar) {
            (0, _) => None,
            (1, MEM_BAR) => Some(Datamatch::Any),
            (1, _) => Some(Datamatch::AnyOfLen(1)),
            _ => Some(Datamatch::U8(self.data)),
        }
    }

    fn header(&self, index: usize, count: u32) -> Vec<u8> {
        let mut h = vec![index as u8, 1, 0, 0];
        h.extend_from_slice(&(self.offset as u32).to_le_bytes());
        h.extend_from_slice(&[self.data, 0, 0, 0]);
        h.extend_from_slice(&count.to_le_bytes());
        h.extend_from_slice(self.name.as_bytes());
        h.push(0);
        h
    }
}

/// QEMU's device state: the running test and COUNT.
#[derive(Debug, Default)]
struct Model {
    current: Option<usize>,
    count: u32,
}

impl Model {
    /// A write of `data` at `offset` of `bar` that reaches the device (QEMU: the eventfd's own
    /// check first, then byte by byte).
    fn write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some(t) = self.current.map(|c| SPECS[c]) {
            if let Some(d) = t.datamatch() {
                if bar == t.bar && offset == t.offset && data.len() <= 8 {
                    let mut v = [0u8; 8];
                    v[..data.len()].copy_from_slice(data);
                    if d.accepts(data.len(), u64::from_le_bytes(v)) {
                        return;
                    }
                }
            }
        }
        for (i, &b) in data.iter().enumerate() {
            let Some(at) = offset.checked_add(i as u64) else {
                continue;
            };
            if at == 0 {
                self.current = (b < 3).then(|| usize::from(b) + if bar == MEM_BAR { 0 } else { 3 });
                self.count = 0;
                continue;
            }
            let Some(t) = self.current.map(|c| SPECS[c]) else {
                continue;
            };
            if at == t.offset && (t.kind == 1 || b == t.data) {
                self.count = self.count.wrapping_add(1);
            }
        }
    }

    fn header(&self) -> Vec<u8> {
        self.current
            .map(|c| SPECS[c].header(c, self.count))
            .unwrap_or_default()
    }
}

struct Ptd {
    rig: Rig,
    io: FakeIoEvents,
    dev: Arc<Mutex<Tracked<PciTestDev>>>,
    model: Model,
}

impl Ptd {
    fn mapped(&self, bar: usize) -> Option<u64> {
        lock(&self.dev).mapped[bar]
    }

    fn ecam(&self, reg: u64) -> u64 {
        layout::PCI_ECAM_START + (u64::from(SLOT) << 15) + (reg & 0xfff)
    }

    /// The model's view of a guest access at `addr` on a bus: the BAR and offset if the whole
    /// access lies inside a mapped BAR of the device (the platform forwards only those).
    fn hit(&self, io: bool, addr: u64, len: usize) -> Option<(usize, u64)> {
        let (bar, size) = if io {
            (IO_BAR, IO_BAR_SIZE)
        } else {
            (MEM_BAR, MEM_BAR_SIZE)
        };
        let base = self.mapped(bar)?;
        let off = addr.checked_sub(base)?;
        (len > 0 && off.checked_add(len as u64)? <= size).then_some((bar, off))
    }

    fn check(&mut self) {
        // The header, byte by byte, through the handler (a read drains nothing the model sees).
        let want = self.model.header();
        for bar in [MEM_BAR, IO_BAR] {
            let mut got = [0u8; HEADER_CHECK as usize];
            lock(&self.dev).inner.bar_read(bar, 0, &mut got);
            for (i, &g) in got.iter().enumerate() {
                let w = want.get(i).copied().unwrap_or(0);
                assert_eq!(g, w, "BAR {bar} header byte {i}: model {:?}", self.model);
            }
        }
        // The binding: exactly the running eventfd test's, while its BAR is mapped.
        let mut want_mem = Vec::new();
        let mut want_io = Vec::new();
        if let Some(c) = self.model.current {
            let t = SPECS[c];
            if let (Some(d), Some(base)) = (t.datamatch(), self.mapped(t.bar)) {
                if t.bar == MEM_BAR {
                    want_mem.push((base + t.offset, d));
                } else {
                    want_io.push(((base + t.offset) as u16, d));
                }
            }
        }
        let got_mem: Vec<_> = self
            .io
            .addresses()
            .into_iter()
            .map(|a| (a, self.io.datamatch_at(a).expect("listed")))
            .collect();
        let got_io: Vec<_> = self
            .io
            .ports()
            .into_iter()
            .map(|p| (p, self.io.at_port(p).expect("listed").1))
            .collect();
        assert_eq!(got_mem, want_mem, "MMIO bindings; model {:?}", self.model);
        assert_eq!(got_io, want_io, "port bindings; model {:?}", self.model);
    }

    fn bus_write(&mut self, io: bool, addr: u64, bytes: &[u8]) {
        let hit = self.hit(io, addr, bytes.len());
        if io {
            self.rig.pio.write(addr, bytes);
        } else {
            self.rig.mmio.write(addr, bytes);
        }
        if let Some((bar, off)) = hit {
            self.model.write(bar, off, bytes);
        }
    }

    fn step(&mut self, u: &mut Unstructured) -> Result<()> {
        match u.int_in_range(0u8..=9)? {
            // Select a test through either BAR (mostly a valid one).
            0 | 1 => {
                let io = u.arbitrary()?;
                let bar = if io { IO_BAR } else { MEM_BAR };
                if let Some(base) = self.mapped(bar) {
                    let n = if one_in(u, 4)? {
                        u.arbitrary()?
                    } else {
                        u.int_in_range(0..=2)?
                    };
                    self.bus_write(io, base, &[n]);
                }
            }
            // A write at the running test's OFFSET: as KVM would see it (the fake takes what its
            // binding accepts; anything else exits to the device), of any width and value.
            2 | 3 => {
                let Some(t) = self.model.current.map(|c| SPECS[c]) else {
                    return Ok(());
                };
                let Some(base) = self.mapped(t.bar) else {
                    return Ok(());
                };
                let len = *u.choose(&[1usize, 1, 1, 2, 4, 8])?;
                let len = if t.bar == IO_BAR { len.min(4) } else { len };
                let v = if u.arbitrary()? {
                    u64::from(t.data)
                } else {
                    u.arbitrary::<u64>()? & (u64::MAX >> (64 - 8 * len))
                };
                let at = base + t.offset;
                let taken = if t.bar == MEM_BAR {
                    self.io.guest_write(at, len, v)
                } else {
                    self.io.guest_out(at as u16, len, v)
                };
                if !taken {
                    self.bus_write(t.bar == IO_BAR, at, &v.to_le_bytes()[..len]);
                }
            }
            // Any access in and around a BAR.
            4 | 5 => {
                let io: bool = u.arbitrary()?;
                let (bar, size) = if io {
                    (IO_BAR, IO_BAR_SIZE)
                } else {
                    (MEM_BAR, MEM_BAR_SIZE)
                };
                let Some(base) = self.mapped(bar) else {
                    return Ok(());
                };
                let len = access_len(u)?;
                let addr = base
                    .wrapping_add(offset_in(u, size + 16)?)
                    .wrapping_sub(if one_in(u, 4)? { 8 } else { 0 });
                if u.arbitrary()? {
                    let bytes = value(u, len)?;
                    self.bus_write(io, addr, &bytes);
                } else {
                    let mut b = vec![0u8; len];
                    if io {
                        self.rig.pio.read(addr, &mut b);
                    } else {
                        self.rig.mmio.read(addr, &mut b);
                    }
                }
            }
            // Config space: BAR registers (moves, sizing), the command register, anything.
            6 | 7 => {
                let reg = match u.int_in_range(0u8..=3)? {
                    0 => 0x10,
                    1 => 0x14,
                    2 => 0x04,
                    _ => u.int_in_range(0u64..=0xfff)?,
                };
                let len = access_len(u)?.min(8);
                let bytes = match u.int_in_range(0u8..=3)? {
                    // A BAR a little way off, inside the windows most of the time.
                    0 if reg == 0x10 => ((layout::PCI_MMIO32_START as u32)
                        + u.int_in_range(0u32..=0x40)? * 0x1000)
                        .to_le_bytes()
                        .to_vec(),
                    0 if reg == 0x14 => (u32::from(layout::ports::PCI_IO_START)
                        + u.int_in_range(0u32..=0x40)? * 0x100
                        + 1)
                    .to_le_bytes()
                    .to_vec(),
                    _ => value(u, len)?,
                };
                self.rig.mmio.write(self.ecam(reg), &bytes);
            }
            // Direct handler calls the platform never makes: any BAR index and offset.
            8 => {
                let bar = *u.choose(&[0usize, 1, 2, 5, 6, 7, usize::MAX])?;
                let off: u64 = u.arbitrary()?;
                let len = access_len(u)?;
                let mut b = vec![0u8; len];
                if bar > 1 {
                    let mut d = lock(&self.dev);
                    d.inner.bar_read(bar, off, &mut b);
                    d.inner.bar_write(bar, off, &b);
                }
            }
            // The host reads the eventfd tally (drains; nothing guest-visible changes).
            _ => {
                let _ = lock(&self.dev).inner.eventfd_hits();
            }
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // A test device beside it, so BAR moves can collide.
    let rig = Rig::new(&[1], None, u32::MAX).expect("the fixed platform builds");
    let io = FakeIoEvents::new();
    let registrar: Arc<dyn IoEventRegistrar> = Arc::new(io.clone());
    let dev = PciTestDev::new(Some(registrar)).expect("pci-testdev builds");
    let dev = Arc::new(Mutex::new(Tracked::new(dev)));
    rig.platform
        .add_device(SLOT, dev.clone())
        .expect("pci-testdev fits the windows");
    let mut p = Ptd {
        rig,
        io,
        dev,
        model: Model::default(),
    };
    p.check();
    for _ in 0..MAX_OPS {
        if u.is_empty() || p.step(&mut u).is_err() {
            break;
        }
        p.check();
    }
    let Ptd { rig, io, dev, .. } = p;
    rig.finish();
    drop(dev);
    assert!(
        io.addresses().is_empty() && io.ports().is_empty(),
        "a binding outlived the device"
    );
});
