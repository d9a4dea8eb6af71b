//! The MSI capability emulation (`devices::pci::caps::msi`) driven directly: a capability
//! built with `Msi::new` (any vector count, 32/64-bit, with or without per-vector masking) or
//! parsed from fuzz bytes with `Msi::existing`, then guest config writes and reads of any size
//! at any offset, device-side FIREs, hardware events on the vectors' eventfds and explicit
//! re-applies.
//!
//! Invariants (besides no panic, no leak): every vector is enabled exactly when the guest has
//! MSI enabled, the vector below the enabled count and unmasked, with the route the guest
//! programmed (the data's low bits replaced by the vector number); no pending bit stays set on
//! such a vector; a guest write never sets a pending bit, and a pending bit it clears (by
//! unmasking) is delivered; `fire` answers as the guest programming says; the
//! read-only control bits never change; every vector is released when the capability is
//! dropped.
#![no_main]

use std::os::unix::io::AsRawFd;

use arbitrary::{Result, Unstructured};
use devices::interrupt::fake::FakeInterrupts;
use devices::pci::caps::msi::Msi;
use devices::pci::caps::Delivery;
use devices::pci::config::{ConfigHeader, ConfigSpace};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::{access_len, one_in, value, MAX_OPS};
use vfiovm_fuzz::views::MsiView;

fn build(u: &mut Unstructured, irq: &FakeInterrupts) -> Result<Option<(ConfigSpace, Msi)>> {
    let mut cfg = ConfigSpace::new(&ConfigHeader {
        vendor_id: 0x1234,
        device_id: 0x5678,
        revision_id: 0,
        class_code: 0,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        interrupt_pin: 0,
    });
    let msi = if one_in(u, 3)? {
        // A capability as hardware would present it, parsed by the model.
        let off = 0x40 + 4 * u.int_in_range(0..=0x2e)?;
        let mut raw = [0u8; 24];
        raw[0] = 0x05;
        u.fill_buffer(&mut raw[2..])?;
        // As the passthrough device does before wrapping it: MSI disabled, MME 0.
        raw[2] &= !0x71;
        cfg.set_bytes(off, &raw);
        Some(Msi::existing(&mut cfg, off, irq))
    } else {
        let vectors = if one_in(u, 8)? {
            u.arbitrary()?
        } else {
            1 << u.int_in_range(0..=5)?
        };
        Some(Msi::new(
            &mut cfg,
            vectors,
            one_in(u, 2)?,
            one_in(u, 2)?,
            irq,
        ))
    };
    Ok(msi.and_then(|m| m.ok()).map(|m| (cfg, m)))
}

fn view(cfg: &ConfigSpace, m: &Msi) -> MsiView {
    MsiView::read(&mut |o, b| cfg.read(o, b), m.cap().offset())
}

fn ro_ctrl(cfg: &ConfigSpace, m: &Msi) -> u16 {
    cfg.read_u16(m.cap().offset() + 2) & !0x71
}

fn pending(cfg: &ConfigSpace, m: &Msi) -> Vec<bool> {
    (0..m.cap().max_vectors())
        .map(|v| m.cap().pending(cfg, v))
        .collect()
}

fn check(cfg: &ConfigSpace, m: &Msi, irq: &FakeInterrupts, ro: u16) {
    assert_eq!(ro_ctrl(cfg, m), ro, "read-only control bits changed");
    let view = view(cfg, m);
    assert_eq!(view.max_vectors, m.cap().max_vectors(), "vector count");
    for v in 0..m.cap().max_vectors() {
        let gsi = m.vector(v).expect("vector").gsi();
        let expect = view.expect(v);
        irq.assert_vector(gsi, expect, &format!("MSI vector {v}"));
        assert!(
            expect.is_none() || !m.cap().pending(cfg, v),
            "vector {v} is unmasked with its pending bit set"
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
    let ro = ro_ctrl(&cfg, &m);
    let n = m.cap().max_vectors();
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        irq.take_deliveries();
        match u.int_in_range(0u8..=7)? {
            // Guest config write, mostly into the capability.
            0..=2 => {
                let at = if one_in(u, 4)? {
                    u.int_in_range(0..=0x1000)?
                } else {
                    off + u.int_in_range(0..=24)?
                };
                let len = access_len(u)?;
                let d = if at == off + 2 && one_in(u, 2)? {
                    // Enable with a vector count.
                    let ctrl = (u16::from(one_in(u, 4)?) ^ 1) | (u.int_in_range(0..=7u16)? << 4);
                    ctrl.to_le_bytes()[..len.min(2)].to_vec()
                } else {
                    value(u, len)?
                };
                let before = pending(&cfg, &m);
                cfg.write(at, &d);
                m.config_written(&mut cfg, at, d.len());
                let after = pending(&cfg, &m);
                let deliveries = irq.take_deliveries();
                for v in 0..n as usize {
                    assert!(
                        before[v] || !after[v],
                        "a guest write set vector {v}'s pending bit"
                    );
                    if before[v] && !after[v] {
                        // The pending event is delivered; an event the hardware signalled on
                        // the eventfd meanwhile (not yet folded into the bit) may come with it.
                        let gsi = m.vector(v as u32).expect("vector").gsi();
                        let n = deliveries.iter().filter(|d| d.0 == gsi).count();
                        assert!(
                            (1..=2).contains(&n),
                            "vector {v}'s pending bit cleared with {n} deliveries"
                        );
                    }
                }
            }
            // Guest config read (pending bits first brought up to date, as devices do).
            3 => {
                let at = if one_in(u, 4)? {
                    u.int_in_range(0..=0x1000)?
                } else {
                    off + u.int_in_range(0..=24)?
                };
                let mut d = vec![0u8; access_len(u)?];
                if m.reads_pending(at, d.len()) {
                    m.sync_pending(&mut cfg);
                }
                cfg.read(at, &mut d);
            }
            // The device raises a vector.
            4 | 5 => {
                let v: u32 = if one_in(u, 8)? {
                    u.arbitrary()?
                } else {
                    u.int_in_range(0..=n)?
                };
                let view = view(&cfg, &m);
                let got = m.fire(&mut cfg, v);
                let deliveries = irq.take_deliveries();
                if v >= n {
                    assert_eq!(got, Delivery::InvalidVector, "fire {v}");
                } else if !view.enabled || v >= view.enabled_vectors {
                    assert_eq!(got, Delivery::Disabled, "fire {v}");
                } else if let Some(msg) = view.expect(v) {
                    assert_eq!(got, Delivery::Delivered, "fire {v}");
                    let gsi = m.vector(v).expect("vector").gsi();
                    assert_eq!(deliveries, vec![(gsi, msg)], "fire {v}");
                } else {
                    assert_eq!(got, Delivery::Pending, "fire {v}");
                    assert!(
                        m.cap().pending(&cfg, v),
                        "fire {v}: masked, but no pending bit"
                    );
                }
                if got != Delivery::Delivered {
                    assert!(
                        deliveries.is_empty(),
                        "fire {v} ({got:?}) delivered {deliveries:?}"
                    );
                }
            }
            // Passthrough hardware signals a vector's eventfd.
            6 => {
                let v = u.int_in_range(0..=n - 1)?;
                let fd = m.vector(v).expect("vector").eventfd().as_raw_fd();
                assert!(irq.fire_fd(fd));
            }
            // Re-apply the registers (what a device reset does after changing them).
            _ => m.apply(&mut cfg),
        }
        check(&cfg, &m, &irq, ro);
    }
    drop(m);
    assert_eq!(irq.live(), 0, "vectors outlived the capability");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
