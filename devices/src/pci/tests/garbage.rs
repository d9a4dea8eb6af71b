//! A hostile guest: pseudo-random writes of every size to every config offset of every device
//! (through both mechanisms) and to every mapped BAR. Nothing may panic, and the buses must
//! stay consistent with what the platform thinks is mapped.

use super::*;
use crate::pci::testdev::{REG_DMA_ADDR_LO, REG_DMA_GO, REG_FIRE};
use crate::pci::PciWindows;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const DEVICES: [u8; 5] = [0, 1, 2, 7, 9];

fn check_invariants(r: &Rig, windows: &PciWindows) {
    for bus in [&r.pio, &r.mmio] {
        let ranges: Vec<_> = bus.ranges().collect();
        for w in ranges.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "overlap on {bus:?}");
        }
    }
    let (pio, mmio) = r.bar_ranges();
    let mapped = r.root_mapped();
    assert_eq!(pio.len() + mmio.len(), mapped.len());
    let root = lock(r.platform.root());
    for (slot, b) in &mapped {
        assert!(
            windows.allows(b.space, b.addr, b.size),
            "{b:?} outside windows"
        );
        let list = match b.space {
            crate::pci::AddressSpace::Io => &pio,
            crate::pci::AddressSpace::Memory => &mmio,
        };
        assert!(list.contains(&(b.addr, b.size)));
        let dev = root.device(*slot).unwrap();
        let decoded = lock(&dev).decoded_bars();
        assert!(decoded.contains(b), "mapped {b:?} is not decoded");
    }
}

/// Returns how many interrupts reached the (fake) guest, to show the run did something.
fn run(seed: u64, rounds: usize) -> u32 {
    let r = Rig::new();
    let windows = PciWindows {
        mmio32: MMIO32,
        mmio64: Some(MMIO64),
        io: IO,
    };
    let mut caps = (0, 0);
    for slot in [1, 2, 7] {
        let dev = r.add_testdev(slot);
        let d = lock(&dev);
        caps = (
            d.config().find_capability(0x05).unwrap(),
            d.config().find_capability(0x11).unwrap(),
        );
    }
    let mut rng = Rng(seed);
    for round in 0..rounds {
        match rng.below(12) {
            // Config write through ECAM, any offset, any size, any alignment; half of them in
            // the header and standard capabilities.
            0..=3 => {
                let dev = rng.pick(&DEVICES);
                let len = rng.pick(&[1usize, 2, 4, 8]);
                let top = if rng.below(2) == 0 { 0x100 } else { 0x1000 };
                let off = rng.below(top - len as u64 + 1);
                let v = rng.next().to_le_bytes();
                r.mmio.write(
                    Rig::ecam_addr(dev, rng.below(2) as u8 * rng.below(8) as u8, off as u16),
                    &v[..len],
                );
            }
            // A BAR register programmed with a plausible address: another BAR's, or one in a
            // window, to provoke overlaps and moves.
            4 => {
                let dev = rng.pick(&DEVICES);
                let reg = rng.pick(&[0x10u16, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30]);
                let (_, mmio) = r.bar_ranges();
                let v = match (rng.below(3), mmio.is_empty()) {
                    (0, false) => mmio[rng.below(mmio.len() as u64) as usize].0 as u32,
                    (1, _) => ((MMIO32.0 + rng.below(MMIO32.1)) & !0xfff) as u32,
                    _ => (IO.0 + rng.below(IO.1)) as u32 | 1,
                };
                r.ecam_write32(dev, reg, v);
                if rng.below(2) == 0 {
                    r.ecam_write(dev, 0x04, 2, rng.below(8));
                }
            }
            // Type-1: a random address register, then a data access of any size at any port.
            5 => {
                let addr = (rng.next() as u32 & 0x80ff_fffc) | 0x8000_0000;
                let addr = (addr & !0xf800) | (u32::from(rng.pick(&DEVICES)) << 11);
                r.pio.write(CF8, &addr.to_le_bytes());
                let len = rng.pick(&[1usize, 2, 4]);
                let port = 0xcfc + rng.below(5 - len as u64);
                let v = rng.next().to_le_bytes();
                r.pio.write(port, &v[..len]);
                let mut b = [0u8; 4];
                r.pio.read(port, &mut b[..len]);
            }
            // Writes and reads anywhere in a mapped BAR.
            6..=8 => {
                let (pio, mmio) = r.bar_ranges();
                let io = rng.below(4) == 0 && !pio.is_empty();
                let (bus, list) = if io { (&r.pio, &pio) } else { (&r.mmio, &mmio) };
                if list.is_empty() {
                    continue;
                }
                let (base, size) = list[rng.below(list.len() as u64) as usize];
                let len = rng.pick(if io {
                    &[1usize, 2, 4][..]
                } else {
                    &[1usize, 2, 4, 8][..]
                });
                let off = rng.below(size);
                let v = rng.next().to_le_bytes();
                bus.write(base + off, &v[..len]);
                let mut b = [0u8; 8];
                bus.read(base + off, &mut b[..len]);
            }
            // What a driver does: decoding and bus mastering on, MSI-X or MSI on, then FIRE and
            // DMA_GO through the register BAR (wherever it is now).
            9 | 10 => {
                let dev = rng.pick(&[1u8, 2, 7]);
                r.ecam_write(dev, 0x04, 2, 0x7);
                match rng.below(3) {
                    0 => r.ecam_write(dev, caps.1 + 2, 2, 0x8000),
                    1 => r.ecam_write(dev, caps.0 + 2, 2, 0x11),
                    _ => {}
                }
                let regs = r.bar_addr(dev, 0);
                r.mmio_write32(regs + REG_FIRE, rng.below(3) as u32);
                r.mmio_write32(
                    regs + REG_DMA_ADDR_LO,
                    rng.below(2 * RAM_SIZE as u64) as u32,
                );
                r.mmio_write32(regs + REG_DMA_GO, 1);
            }
            // The reset register and the rest of the 0xCF8 range.
            _ => {
                let port = CF8 + rng.below(4);
                let v = rng.next().to_le_bytes();
                r.pio.write(port, &v[..1]);
            }
        }
        if round % 16 == 0 {
            check_invariants(&r, &windows);
        }
    }
    check_invariants(&r, &windows);
    let delivered = r
        .irq
        .state
        .lock()
        .unwrap()
        .gsis
        .values()
        .map(|g| g.delivered.len() as u32 + g.intx_asserts)
        .sum();
    delivered
}

#[test]
fn garbage_never_panics_or_overlaps() {
    let mut delivered = 0;
    for seed in 1..=8u64 {
        delivered += run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 3000);
    }
    assert!(delivered > 0, "the garbage never got an interrupt through");
}

#[test]
fn every_offset_every_size_of_every_device() {
    let r = Rig::new();
    r.add_testdev(1);
    let windows = PciWindows {
        mmio32: MMIO32,
        mmio64: Some(MMIO64),
        io: IO,
    };
    let mut rng = Rng(42);
    for dev in [0u8, 1] {
        for len in [1usize, 2, 4, 8] {
            for off in 0..=(0x1000 - len as u16) {
                let v = rng.next().to_le_bytes();
                r.mmio.write(Rig::ecam_addr(dev, 0, off), &v[..len]);
                let mut b = [0u8; 8];
                r.mmio.read(Rig::ecam_addr(dev, 0, off), &mut b[..len]);
            }
            check_invariants(&r, &windows);
        }
    }
    // The identity registers survived.
    assert_eq!(r.ecam_read32(0, 0), 0x29c0_8086);
    assert_eq!(r.ecam_read32(1, 0), 0x5654_1234);
    assert_eq!(r.ecam_read32(1, 0x08) >> 8, 0xff_00_00);
}
