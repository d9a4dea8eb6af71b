//! The MSI-X capability, table and PBA emulation (`devices::pci::caps::msix`) driven directly:
//! a config space with fuzz-chosen BARs, a capability built with `Msix::new` from a fuzz
//! layout or parsed from fuzz bytes with `Msix::existing`, then guest config writes of any size
//! at any offset, table and PBA accesses of any size and alignment, BAR dispatch with any BAR
//! index and offset, device-side FIREs and hardware events on the vectors' eventfds.
//!
//! Invariants (besides no panic, no leak): every vector is enabled exactly when the guest has
//! MSI-X enabled, the function unmasked and the entry unmasked, with the route the table
//! holds; no pending bit stays set on such a vector; `fire` answers as the guest programming
//! says (invalid, disabled, pending with the bit set, or delivered once with the programmed
//! message); BAR dispatch claims exactly the accesses that start in the table or the PBA; the
//! read-only bits (table size, BIR and offsets, reserved vector control and address bits) never
//! change; every vector is released when the capability is dropped.
#![no_main]

use std::os::unix::io::AsRawFd;

use arbitrary::{Result, Unstructured};
use devices::interrupt::fake::FakeInterrupts;
use devices::pci::bar::BarSpec;
use devices::pci::caps::msix::{Msix, MsixCap};
use devices::pci::caps::Delivery;
use devices::pci::config::{ConfigHeader, ConfigSpace};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::{access_len, data, offset_in, one_in, value, MAX_OPS};
use vfiovm_fuzz::views::{MsixEntry, MsixView};

fn header() -> ConfigHeader {
    ConfigHeader {
        vendor_id: 0x1234,
        device_id: 0x11e8,
        revision_id: 0,
        class_code: 0xff_00_00,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        interrupt_pin: 0,
    }
}

/// Declares fuzz-chosen BARs (refusals are fine).
fn bars(u: &mut Unstructured, cfg: &mut ConfigSpace) -> Result<()> {
    for i in 0..6 {
        let size = 1u64 << u.int_in_range(4..=20)?;
        let spec = match u.int_in_range(0u8..=3)? {
            0 => continue,
            1 => BarSpec::mem32(size),
            2 => BarSpec::mem64(size, one_in(u, 2)?),
            _ => BarSpec::io(size.min(256)),
        };
        let _ = cfg.set_bar(i, spec);
    }
    Ok(())
}

fn build(u: &mut Unstructured, irq: &FakeInterrupts) -> Result<Option<(ConfigSpace, Msix)>> {
    let mut cfg = ConfigSpace::new(&header());
    bars(u, &mut cfg)?;
    let vectors: u16 = if one_in(u, 8)? {
        u.arbitrary()?
    } else {
        u.int_in_range(1..=80)?
    };
    let reg = |u: &mut Unstructured| -> Result<(usize, u32)> {
        Ok(if one_in(u, 8)? {
            (u.int_in_range(0..=7)?, u.arbitrary()?)
        } else {
            (
                u.int_in_range(0..=5)?,
                u.int_in_range(0..=0x2_0000u32)? & !7,
            )
        })
    };
    let (tb, to) = reg(u)?;
    let (pb, po) = reg(u)?;
    let msix = if one_in(u, 3)? {
        // A capability as hardware would present it, parsed by the model.
        let off = 0x40 + 4 * u.int_in_range(0..=0x2c)?;
        let mut raw = [0u8; 12];
        raw[0] = 0x11;
        raw[2..4].copy_from_slice(&vectors.wrapping_sub(1).to_le_bytes());
        raw[4..8].copy_from_slice(&(to | tb as u32).to_le_bytes());
        raw[8..12].copy_from_slice(&(po | pb as u32).to_le_bytes());
        if one_in(u, 4)? {
            u.fill_buffer(&mut raw[2..])?;
        }
        // As the passthrough device does before wrapping it: enable and function mask clear.
        raw[3] &= 0x3f;
        cfg.set_bytes(off, &raw);
        Msix::existing(&mut cfg, off, irq).ok()
    } else {
        MsixCap::new(vectors, tb, to, pb, po)
            .ok()
            .and_then(|cap| Msix::new(&mut cfg, cap, irq).ok())
    };
    Ok(msix.map(|m| (cfg, m)))
}

fn view(cfg: &ConfigSpace, off: u16) -> MsixView {
    MsixView::read(&mut |o, b| cfg.read(o, b), off)
}

fn entry(m: &Msix, v: &MsixView, i: u16) -> MsixEntry {
    let (bar, table, _) = m.cap().table();
    v.entry(i, &mut |b, o, d| {
        assert_eq!(b, bar, "the view reads the table BAR");
        m.read_table(o - table, d);
    })
}

fn check(cfg: &ConfigSpace, m: &Msix, irq: &FakeInterrupts, ro: &[u8]) {
    let off = m.cap().offset();
    let v = view(cfg, off);
    assert_eq!(v.vectors, m.cap().vectors(), "table size");
    let mut now = [0u8; 10];
    cfg.read(off + 2, &mut now);
    now[1] &= 0x3f;
    assert_eq!(&now[..], ro, "read-only capability bits changed");
    for i in 0..m.cap().vectors() {
        let e = entry(m, &v, i);
        let mut raw = [0u8; 16];
        m.read_table(u64::from(i) * 16, &mut raw);
        assert!(
            raw[0] & 3 == 0 && raw[12] & !1 == 0 && raw[13..] == [0, 0, 0],
            "entry {i}: reserved bits set: {raw:02x?}"
        );
        let gsi = m.vector(i).expect("vector").gsi();
        let expect = v.expect(&e);
        irq.assert_vector(gsi, expect, &format!("MSI-X vector {i}"));
        assert!(
            expect.is_none() || !m.pending(i),
            "vector {i} is unmasked with its pending bit set"
        );
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let irq = FakeInterrupts::new().strict();
    let Some((mut cfg, mut m)) = build(u, &irq)? else {
        assert_eq!(irq.live(), 0, "a refused capability kept vectors");
        return Ok(());
    };
    let off = m.cap().offset();
    let mut ro = [0u8; 10];
    cfg.read(off + 2, &mut ro);
    ro[1] &= 0x3f;
    let n = m.cap().vectors();
    let (tbar, toff, tlen) = m.cap().table();
    let (pbar, poff, plen) = m.cap().pba();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        irq.take_deliveries();
        match u.int_in_range(0u8..=8)? {
            // Guest config write: mostly the capability's control word.
            0 | 1 => {
                let at = match u.int_in_range(0u8..=3)? {
                    0 => u.int_in_range(0..=0x1000)?,
                    1 => off + u.int_in_range(0..=12)?,
                    _ => off + 2,
                };
                let len = access_len(u)?;
                let d = if at == off + 2 && one_in(u, 2)? {
                    let ctrl: u16 = u.int_in_range(0..=3u16)? << 14;
                    ctrl.to_le_bytes()[..len.min(2)].to_vec()
                } else {
                    value(u, len)?
                };
                cfg.write(at, &d);
                m.config_written(&cfg, at, d.len());
            }
            // Table write, any size and alignment.
            2 | 3 => {
                let at = if one_in(u, 2)? {
                    16 * u.int_in_range(0..=u64::from(n))? + 4 * u.int_in_range(0..=3)?
                } else {
                    offset_in(u, tlen + 16)?
                };
                let len = access_len(u)?;
                let d = value(u, len)?;
                m.write_table(at, &d);
            }
            // Table or PBA read.
            4 => {
                let len = access_len(u)?;
                let mut d = vec![0u8; len];
                if one_in(u, 2)? {
                    let at = offset_in(u, tlen + 16)?;
                    m.read_table(at, &mut d);
                } else {
                    let at = offset_in(u, plen + 16)?;
                    m.read_pba(at, &mut d);
                }
            }
            // BAR dispatch with any BAR and offset.
            5 => {
                let bar = u.int_in_range(0..=7)?;
                let at = match u.int_in_range(0u8..=2)? {
                    0 => toff.wrapping_add(offset_in(u, tlen + 8)?),
                    1 => poff.wrapping_add(offset_in(u, plen + 8)?),
                    _ => u.arbitrary()?,
                };
                let len = access_len(u)?;
                let inside = |(b, o, l): (usize, u64, u64)| b == bar && at >= o && at - o < l;
                let claims = inside((tbar, toff, tlen)) || inside((pbar, poff, plen));
                let handled = if one_in(u, 2)? {
                    let mut d = vec![0u8; len];
                    m.bar_read(bar, at, &mut d)
                } else {
                    let d = data(u, len)?;
                    m.bar_write(bar, at, &d)
                };
                assert_eq!(handled, claims, "BAR {bar} offset {at:#x}: dispatch");
            }
            // The device raises a vector.
            6 | 7 => {
                let i: u16 = if one_in(u, 8)? {
                    u.arbitrary()?
                } else {
                    u.int_in_range(0..=n)?
                };
                let v = view(&cfg, off);
                let expect = (i < n).then(|| entry(&m, &v, i));
                let got = m.fire(i);
                let deliveries = irq.take_deliveries();
                match expect {
                    None => assert_eq!(got, Delivery::InvalidVector, "fire {i}"),
                    Some(_) if !v.enabled => assert_eq!(got, Delivery::Disabled, "fire {i}"),
                    Some(e) => match v.expect(&e) {
                        Some(msg) => {
                            assert_eq!(got, Delivery::Delivered, "fire {i}");
                            let gsi = m.vector(i).expect("vector").gsi();
                            assert_eq!(deliveries, vec![(gsi, msg)], "fire {i}");
                        }
                        None => {
                            assert_eq!(got, Delivery::Pending, "fire {i}");
                            assert!(m.pending(i), "fire {i}: masked, but no pending bit");
                        }
                    },
                }
                if got != Delivery::Delivered {
                    assert!(
                        deliveries.is_empty(),
                        "fire {i} ({got:?}) delivered {deliveries:?}"
                    );
                }
            }
            // Passthrough hardware signals a vector's eventfd.
            _ => {
                let i = u.int_in_range(0..=n - 1)?;
                let fd = m.vector(i).expect("vector").eventfd().as_raw_fd();
                assert!(irq.fire_fd(fd));
            }
        }
        check(&cfg, &m, &irq, &ro);
    }
    drop(m);
    assert_eq!(irq.live(), 0, "vectors outlived the capability");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
