//! `devices::bus::Bus` against a reference model: inserts (overlapping, empty and wrapping
//! ranges must fail and change nothing), removes, relocations, and reads and writes of any
//! length (0 and more than 8 bytes included) at any address, including devices that relocate or
//! remove themselves from inside their own write handler (the documented lock order; a deadlock
//! shows as a libFuzzer timeout).
//!
//! Invariants: every call returns what the model says (success or the kind of error); the bus
//! lists exactly the model's ranges, sorted and disjoint; an access reaches the one device
//! whose range holds all of it, with the right base and offset and all its bytes, and nothing
//! else is touched; a missed read reads all ones.
#![no_main]

use std::sync::{Arc, Mutex, Weak};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::{access_len, data, one_in, MAX_OPS};
use vfiovm_fuzz::rig::lock;

use devices::bus::{Bus, BusDevice, BusError};

/// One access a device saw: (base, offset, len, written bytes or `None` for a read).
type Access = (u64, u64, usize, Option<Vec<u8>>);

/// A device that records its accesses; reads return `offset ^ id` per byte. An "active" device
/// performs a bus call from inside its write handler, chosen by the first byte written:
/// 1 = relocate itself to the little-endian address in bytes 1..9, 2 = remove itself.
struct Probe {
    id: u8,
    log: Arc<Mutex<Vec<Access>>>,
    bus: Option<Weak<Bus>>,
    /// The result of the last bus call made from the handler.
    last_call: Arc<Mutex<Option<std::result::Result<(), BusError>>>>,
    len: u64,
}

impl BusDevice for Probe {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.log).push((base, offset, data.len(), None));
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset.wrapping_add(i as u64) as u8) ^ self.id;
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        lock(&self.log).push((base, offset, data.len(), Some(data.to_vec())));
        let Some(bus) = self.bus.as_ref().and_then(Weak::upgrade) else {
            return;
        };
        let result = match data.first() {
            Some(1) => {
                let mut to = [0u8; 8];
                for (t, b) in to.iter_mut().zip(data.iter().skip(1)) {
                    *t = *b;
                }
                bus.relocate(base, self.len, u64::from_le_bytes(to))
            }
            Some(2) => bus.remove(base, self.len).map(|_| ()),
            _ => return,
        };
        *lock(&self.last_call) = Some(result);
    }
}

/// The model: `(base, len, device index)`.
#[derive(Default)]
struct Model {
    ranges: Vec<(u64, u64, usize)>,
}

impl Model {
    fn valid(base: u64, len: u64) -> bool {
        len > 0 && base.checked_add(len - 1).is_some()
    }

    fn overlaps(&self, base: u64, len: u64) -> bool {
        let last = base + (len - 1);
        self.ranges
            .iter()
            .any(|&(b, l, _)| b <= last && base <= b + (l - 1))
    }

    fn insert(&mut self, base: u64, len: u64, dev: usize) -> std::result::Result<(), &'static str> {
        if !Self::valid(base, len) {
            return Err("invalid");
        }
        if self.overlaps(base, len) {
            return Err("overlap");
        }
        self.ranges.push((base, len, dev));
        self.ranges.sort_unstable();
        Ok(())
    }

    fn remove(&mut self, base: u64, len: u64) -> Option<usize> {
        let i = self
            .ranges
            .iter()
            .position(|&(b, l, _)| b == base && l == len)?;
        Some(self.ranges.remove(i).2)
    }

    fn relocate(&mut self, old: u64, len: u64, new: u64) -> std::result::Result<(), &'static str> {
        let dev = self.remove(old, len).ok_or("not found")?;
        if let Err(e) = self.insert(new, len, dev) {
            self.insert(old, len, dev).expect("the old range was free");
            return Err(e);
        }
        Ok(())
    }

    /// The range that holds all of `[addr, addr + size)`: the one with the greatest base at
    /// or below `addr`, if the access ends inside it.
    fn lookup(&self, addr: u64, size: usize) -> Option<(u64, u64, usize)> {
        let &(b, l, d) = self.ranges.iter().rev().find(|&&(b, _, _)| b <= addr)?;
        let end = (addr - b).checked_add(size as u64)?;
        (end <= l).then_some((b, l, d))
    }
}

fn kind(r: &std::result::Result<(), BusError>) -> std::result::Result<(), &'static str> {
    match r {
        Ok(()) => Ok(()),
        Err(BusError::InvalidRange { .. }) => Err("invalid"),
        Err(BusError::Overlap { .. }) => Err("overlap"),
        Err(BusError::NotFound { .. }) => Err("not found"),
    }
}

struct Dev {
    log: Arc<Mutex<Vec<Access>>>,
    last_call: Arc<Mutex<Option<std::result::Result<(), BusError>>>>,
    shared: Arc<Mutex<Probe>>,
    id: u8,
    active: bool,
}

/// An address near the existing ranges (their edges) or anywhere.
fn address(u: &mut Unstructured, model: &Model) -> Result<u64> {
    if model.ranges.is_empty() || one_in(u, 4)? {
        return Ok(if one_in(u, 2)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0..=0x1000)?
        });
    }
    let &(b, l, _) = u.choose(&model.ranges)?;
    let delta: i64 = u.int_in_range(-16..=16)?;
    Ok(match u.int_in_range(0u8..=2)? {
        0 => b.wrapping_add_signed(delta),
        1 => b.wrapping_add(l).wrapping_add_signed(delta),
        _ => b.wrapping_add(u.int_in_range(0..=l - 1)?),
    })
}

fn run(u: &mut Unstructured) -> Result<()> {
    let bus = Arc::new(Bus::new("fuzz"));
    let mut model = Model::default();
    let mut devs: Vec<Dev> = Vec::new();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        for d in &devs {
            lock(&d.log).clear();
            *lock(&d.last_call) = None;
        }
        match u.int_in_range(0u8..=5)? {
            // Insert a new device.
            0 | 1 => {
                let base = address(u, &model)?;
                let len = match u.int_in_range(0u8..=3)? {
                    0 => u.arbitrary()?,
                    1 => 0,
                    _ => u.int_in_range(1..=0x100)?,
                };
                let id = devs.len() as u8;
                let log = Arc::new(Mutex::new(Vec::new()));
                let last_call = Arc::new(Mutex::new(None));
                let active = one_in(u, 3)?;
                let shared = Arc::new(Mutex::new(Probe {
                    id,
                    log: log.clone(),
                    bus: active.then(|| Arc::downgrade(&bus)),
                    last_call: last_call.clone(),
                    len,
                }));
                let got = bus.insert(shared.clone(), base, len);
                assert_eq!(
                    kind(&got),
                    model.insert(base, len, devs.len()),
                    "insert {base:#x}+{len:#x}"
                );
                devs.push(Dev {
                    log,
                    last_call,
                    shared,
                    id,
                    active,
                });
            }
            // Remove a range (existing or not).
            2 => {
                let (base, len) = match model.ranges.is_empty() || one_in(u, 4)? {
                    true => (address(u, &model)?, u.int_in_range(0..=0x100)?),
                    false => {
                        let &(b, l, _) = u.choose(&model.ranges)?;
                        (b, l)
                    }
                };
                let want = model.remove(base, len);
                match bus.remove(base, len) {
                    Ok(d) => {
                        let i = want.expect("the bus removed a range the model lacks");
                        let mine: Arc<Mutex<dyn BusDevice>> = devs[i].shared.clone();
                        assert!(Arc::ptr_eq(&d, &mine), "remove returned another device");
                    }
                    Err(e) => assert!(
                        want.is_none() && matches!(e, BusError::NotFound { .. }),
                        "remove {base:#x}+{len:#x}: {e}"
                    ),
                }
            }
            // Relocate a range.
            3 => {
                let (old, len) = match model.ranges.is_empty() || one_in(u, 4)? {
                    true => (address(u, &model)?, u.int_in_range(0..=0x100)?),
                    false => {
                        let &(b, l, _) = u.choose(&model.ranges)?;
                        (b, l)
                    }
                };
                let new = address(u, &model)?;
                let got = bus.relocate(old, len, new);
                assert_eq!(
                    kind(&got),
                    model.relocate(old, len, new),
                    "relocate {old:#x}+{len:#x} to {new:#x}"
                );
            }
            // Read or write.
            _ => {
                let addr = address(u, &model)?;
                let len = access_len(u)?;
                let write = one_in(u, 2)?;
                let bytes = data(u, len)?;
                let target = model.lookup(addr, len);
                let mut buf = vec![0u8; len];
                let hit = if write {
                    bus.write(addr, &bytes)
                } else {
                    bus.read(addr, &mut buf)
                };
                assert_eq!(hit, target.is_some(), "access {addr:#x}+{len:#x}");
                for (i, d) in devs.iter().enumerate() {
                    let log = lock(&d.log).clone();
                    match target {
                        Some((b, _, t)) if t == i => {
                            let want = (b, addr - b, len, write.then(|| bytes.clone()));
                            assert_eq!(log, vec![want], "device {i} saw other accesses");
                        }
                        _ => assert!(
                            log.is_empty(),
                            "device {i} was not addressed but saw {log:?}"
                        ),
                    }
                }
                match target {
                    Some((b, l, t)) if write => {
                        // Mirror the bus call an active device makes from its handler.
                        let call = lock(&devs[t].last_call).take();
                        let want = match (devs[t].active, bytes.first()) {
                            (true, Some(1)) => {
                                let mut to = [0u8; 8];
                                for (x, y) in to.iter_mut().zip(bytes.iter().skip(1)) {
                                    *x = *y;
                                }
                                Some(model.relocate(b, l, u64::from_le_bytes(to)))
                            }
                            (true, Some(2)) => {
                                Some(model.remove(b, l).map(|_| ()).ok_or("not found"))
                            }
                            _ => None,
                        };
                        assert_eq!(call.as_ref().map(kind), want, "bus call from the handler");
                    }
                    Some((b, _, t)) => {
                        for (i, byte) in buf.iter().enumerate() {
                            let o = (addr - b).wrapping_add(i as u64);
                            assert_eq!(*byte, (o as u8) ^ devs[t].id, "read data");
                        }
                    }
                    None if !write => assert!(buf.iter().all(|&b| b == 0xff), "missed read"),
                    None => {}
                }
            }
        }
        let ranges: Vec<(u64, u64)> = bus.ranges().collect();
        let want: Vec<(u64, u64)> = model.ranges.iter().map(|&(b, l, _)| (b, l)).collect();
        assert_eq!(ranges, want, "the bus lists other ranges than the model");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
