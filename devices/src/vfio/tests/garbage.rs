//! A hostile guest: random config, BAR and MSI-X table traffic, directly and through the
//! platform. Nothing may panic, reach outside a region, program more vectors than the device
//! has, map guest memory unaligned or overlapping, or write what the model owns to the device.

use super::super::config::{EXT_CAP_ARI, EXT_CAP_SRIOV};
use super::super::mock::{MockBuilder, MockDevice};
use super::super::ops::CONFIG_REGION;
use super::platform::{PlatformRig, ECAM};
use super::Rig;
use crate::pci::bar::ROM_BAR;
use crate::pci::{BarAccess, PciDevice};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Offsets of registers the model owns: `(start, len)`.
struct Layout {
    owned: Vec<(u64, u64)>,
}

/// A device with every feature: 32/64-bit, I/O and sub-page BARs, MSI, MSI-X sharing a page
/// with registers, hidden extended capabilities, a ROM. With `msix_mappable` the kernel reports
/// BAR 0 mmappable whole, so the model relocates the table and PBA to BAR 0's upper half.
fn rich_device(msix_mappable: bool) -> (MockBuilder, Layout) {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.mem_bar(0, 0x4000, false, false);
    b.io_bar(1, 0x20);
    b.mem_bar(2, 0x2_0000, true, true);
    b.mem_bar(4, 0x100, false, false);
    b.rom(&[0x55, 0xaa, 4, 0, 1, 2, 3]);
    let pm = b.cap(0x01, &[0; 6]);
    let msi = b.msi(8, true, true);
    let msix = b.msix(5, (0, 0x800), (2, 0x1_f000));
    if msix_mappable {
        b.msix_mappable(0);
    }
    b.cap(0x10, &[0; 0x3a]);
    b.ext_cap(0x01, &[0; 0x44]);
    let sriov = b.ext_cap(EXT_CAP_SRIOV, &[0x22; 0x3c]);
    let ari = b.ext_cap(EXT_CAP_ARI, &[0; 4]);
    let _ = pm;
    let layout = Layout {
        owned: vec![
            (0x10, 0x18),
            (0x30, 4),
            (u64::from(msi) + 2, 22),
            (u64::from(msix) + 2, 10),
            (u64::from(sriov) + 4, 0x3c),
            (u64::from(ari) + 4, 4),
        ],
    };
    (b, layout)
}

fn check(mock: &MockDevice, layout: &Layout, violations: Vec<String>) {
    assert!(violations.is_empty(), "{violations:?}");
    let st = mock.st();
    for (_, off, data) in st.writes.iter().filter(|w| w.0 == CONFIG_REGION) {
        let end = off + data.len() as u64;
        for &(s, l) in &layout.owned {
            assert!(
                end <= s || *off >= s + l,
                "config write at {off:#x}+{} reached model-owned {s:#x}+{l}",
                data.len()
            );
        }
    }
}

fn garbage_on_device(seed: u64, rounds: usize, msix_mappable: bool) {
    let (mut b, layout) = rich_device(msix_mappable);
    let mut r = Rig::new(&mut b);
    let line = crate::interrupt::InterruptManager::allocate_intx(&r.irq, 17).unwrap();
    r.dev.attach_intx(line);
    let mut rng = Rng(seed);
    let mut mapped: [Option<u64>; 7] = [None; 7];
    for _ in 0..rounds {
        let len = [1usize, 2, 4, 8, 3][rng.below(5) as usize];
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        match rng.below(8) {
            0..=2 => {
                // Anything, the header, the capabilities, anywhere aligned.
                let off = match rng.below(4) {
                    0 => rng.below(0x1100) as u16,
                    1 => (rng.below(0x40) as u16) & !3,
                    2 => (0x40 + rng.below(0xc0) as u16) & !3,
                    _ => (rng.below(0x1000) as u16) & !3,
                };
                r.dev.config_write(off, &data);
            }
            3 => {
                let off = rng.below(0x1100) as u16;
                r.dev.config_read(off, &mut data);
            }
            4 | 5 => {
                let bar = [0, 1, 2, 4, 5, ROM_BAR, 9][rng.below(7) as usize];
                let off = match rng.below(4) {
                    0 => rng.next(),
                    1 => [0x800, 0x4000][rng.below(2) as usize] + rng.below(0x100),
                    _ => rng.below(0x2_0000),
                };
                if rng.below(2) == 0 {
                    r.dev.bar_write(bar, off, &data);
                } else {
                    r.dev.bar_read(bar, off, &mut data);
                }
            }
            6 => {
                // The platform follows what the guest programmed (one page per BAR slot, so
                // nothing overlaps).
                let decoded = r.dev.decoded_bars();
                for (i, m) in mapped.iter_mut().enumerate() {
                    let want = decoded
                        .iter()
                        .find(|d| d.index == i)
                        .map(|_| 0x1_0000_0000 + (i as u64) * 0x100_0000);
                    if want != *m {
                        r.dev.bar_moved(i, *m, want);
                        *m = want;
                    }
                }
            }
            _ => {
                if rng.below(50) == 0 {
                    r.dev.reset();
                }
            }
        }
    }
    check(&r.mock, &layout, r.violations());
    // The run reached the interesting states.
    let (maps, irqs) = (r.mapper.st().maps, r.mock.st().set_irqs.len());
    assert!(
        maps > 0 && irqs > 2,
        "seed {seed:#x}: {maps} maps, {irqs} SET_IRQS"
    );
    let Rig {
        mock, mapper, dev, ..
    } = r;
    drop(dev);
    assert!(mapper.live().is_empty());
    assert!(mock.st().violations.is_empty());
}

#[test]
fn garbage_on_the_device_model() {
    for seed in 1..=6u64 {
        garbage_on_device(
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            4000,
            seed % 2 == 0,
        );
    }
}

#[test]
fn every_config_offset_and_size() {
    every_config_offset_and_size_of(false);
    every_config_offset_and_size_of(true);
}

fn every_config_offset_and_size_of(msix_mappable: bool) {
    let (mut b, layout) = rich_device(msix_mappable);
    let mut r = Rig::new(&mut b);
    for off in 0..0x1000u16 {
        for len in [1usize, 2, 4] {
            if off as usize % len != 0 {
                continue;
            }
            let mut d = vec![0; len];
            r.dev.config_read(off, &mut d);
            r.dev.config_write(off, &vec![0xff; len]);
            r.dev.config_write(off, &d);
        }
    }
    check(&r.mock, &layout, r.violations());
}

#[test]
fn garbage_through_the_platform() {
    garbage_through_the_platform_of(false);
    garbage_through_the_platform_of(true);
}

fn garbage_through_the_platform_of(msix_mappable: bool) {
    let (mut b, layout) = rich_device(msix_mappable);
    let r = PlatformRig::new(&mut b);
    let mut rng = Rng(0x1234_5678);
    let ecam = ECAM + (3 << 15);
    for _ in 0..6000 {
        let len = [1usize, 2, 4][rng.below(3) as usize];
        let off = rng.below(0x1000) & !(len as u64 - 1);
        let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if rng.below(3) == 0 {
            // Favour the header, where BARs and the command register live.
            let off = rng.below(0x40) & !(len as u64 - 1);
            r.mmio.write(ecam + off, &data);
        } else if rng.below(2) == 0 {
            r.mmio.write(ecam + off, &data);
        } else {
            r.mmio.read(ecam + off, &mut data);
        }
        // And whatever is mapped where the guest put it.
        let addr = [0xc000_0000u64, 0xc000_0800, 0x10_0000_0000][rng.below(3) as usize]
            + rng.below(0x8000);
        if rng.below(4) == 0 {
            r.mmio.write(addr, &data);
        } else {
            r.mmio.read(addr, &mut data);
        }
    }
    check(&r.mock, &layout, {
        let mut v = r.mock.st().violations.clone();
        v.extend(r.mapper.st().violations.clone());
        v
    });
    let PlatformRig {
        mapper,
        dev,
        platform,
        mmio,
        ..
    } = r;
    drop((platform, mmio, dev));
    assert!(mapper.live().is_empty());
}
