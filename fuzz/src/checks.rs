//! The invariants checked after every operation on a [`Rig`]. Each one panics with what broke.
//!
//! Buses and BARs:
//! - neither bus holds overlapping or wrapping ranges;
//! - the buses hold exactly the fixed ranges (0xCF8, ECAM) plus one range per BAR the platform
//!   reported mapped (`bar_moved`), each inside the PCI windows and decoded by its function at
//!   that address;
//! - a BAR a function decodes inside the windows is mapped unless it overlaps another mapping.
//!
//! Interrupts:
//! - test devices: every MSI and MSI-X vector is enabled exactly when the guest has it enabled
//!   and unmasked, with the route the guest programmed; no pending bit stays set on such a
//!   vector;
//! - the passthrough device: VFIO runs the interrupt type the guest enabled (MSI-X over MSI over
//!   INTx) with as many vectors as the guest enabled; the eventfd of each vector VFIO signals
//!   is enabled exactly when the guest has that vector enabled and unmasked, with the route the
//!   guest programmed; every other enabled vector routes to a message the guest has active;
//! - a test device's FIRE of vector n delivers exactly the guest-programmed message of that
//!   vector when the guest has it enabled and unmasked and bus mastering on, and nothing
//!   otherwise (checked by the operation itself, see [`crate::ops`]).
//!
//! Passthrough memory slots: every slot is a piece of a BAR the platform mapped, at the BAR's
//! address plus the piece's offset, inside the BAR, never covering the MSI-X table or PBA pages,
//! and only while memory decoding is on and the device is not in D3hot.
//!
//! DMA: a test device DMAs only with bus mastering on, and only inside guest RAM.

use devices::interrupt::MsiMessage;
use devices::pci::bar::BarKind;
use devices::pci::testdev::{
    DMA_DONE, REGS_BAR, REG_DMA_ADDR_HI, REG_DMA_ADDR_LO, REG_DMA_COUNT, REG_DMA_STATUS,
};
use devices::pci::{AddressSpace, BarAccess, DecodedBar, PciDevice, TestDevice};
use devices::vfio::ops::{INTX_IRQ, MSIX_IRQ, MSI_IRQ};
use devices::vfio::VfioPciDevice;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::rig::{fixed_mmio, fixed_pio, lock, Mem, Rig, Tracked, VfioSide};
use crate::views::{find_cap, MsiView, MsixView, MSIX_ID, MSI_ID};

/// What a check needs from before an operation.
#[derive(Debug, Clone, Default)]
pub struct Before {
    /// Per test device: (successful DMAs, bus mastering on).
    dma: Vec<(u32, bool)>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

fn reg32<D: BarAccess>(d: &mut D, bar: usize, off: u64) -> u32 {
    let mut b = [0u8; 4];
    d.bar_read(bar, off, &mut b);
    u32::from_le_bytes(b)
}

fn cfg16<D: PciDevice>(d: &mut D, off: u16) -> u16 {
    let mut b = [0u8; 2];
    d.config_read(off, &mut b);
    u16::from_le_bytes(b)
}

impl Rig {
    /// Records what [`Rig::check`] compares against after the next operation.
    pub fn before(&self) -> Before {
        let dma = self
            .testdevs
            .iter()
            .map(|f| {
                let mut d = lock(&f.dev);
                let count = reg32(&mut *d, REGS_BAR, REG_DMA_COUNT);
                (count, cfg16(&mut *d, 4) & 4 != 0)
            })
            .collect();
        Before { dma }
    }

    /// Checks every invariant after an operation. `reset_allowed`: the operation was a byte
    /// write to port 0xCF9 with the reset bit set (the only thing that may request a reset),
    /// followed by the platform's system reset.
    pub fn check(&self, before: &Before, reset_allowed: bool) {
        self.check_buses();
        let mut testdev_gsis = Vec::new();
        for (i, f) in self.testdevs.iter().enumerate() {
            let mut d = lock(&f.dev);
            // A system reset clears the DMA registers: no DMA to compare across it.
            let dma = before.dma.get(i).copied().filter(|_| !reset_allowed);
            testdev_gsis.extend(self.check_testdev(&mut d, dma));
        }
        if let Some(v) = &self.vfio {
            self.check_vfio(v, &testdev_gsis);
        }
        // Deliveries are checked where they are predictable (the test device's FIRE).
        self.irq.take_deliveries();
        let exits = self.exits.take();
        if reset_allowed {
            assert_eq!(
                exits,
                vec![devices::GuestExit::Reset],
                "a reset write to 0xCF9 did not request exactly one reset"
            );
        } else {
            assert!(exits.is_empty(), "exit requested by {exits:?}");
        }
    }

    fn check_buses(&self) {
        let mut want_pio = vec![fixed_pio()];
        let mut want_mmio = vec![fixed_mmio()];
        let mut decoded_all = Vec::new();
        let mut collect = |mapped: &[Option<u64>], d: &dyn PciDevice, who: &str| {
            let specs = d.bar_specs();
            let decoded = d.decoded_bars();
            for (bar, addr) in mapped.iter().enumerate() {
                let Some(addr) = *addr else { continue };
                let Some((_, spec)) = specs.iter().find(|(i, _)| *i == bar) else {
                    panic!("{who}: BAR {bar} is mapped but not declared");
                };
                let b = DecodedBar {
                    index: bar,
                    space: spec.space(),
                    addr,
                    size: spec.size,
                };
                assert!(
                    self.windows.allows(b.space, addr, b.size),
                    "{who}: BAR {bar} mapped at {addr:#x}+{:#x}, outside the PCI windows",
                    b.size
                );
                assert!(
                    decoded.contains(&b),
                    "{who}: BAR {bar} mapped at {addr:#x} but the function decodes {decoded:x?}"
                );
                match b.space {
                    AddressSpace::Io => want_pio.push((addr, b.size)),
                    AddressSpace::Memory => want_mmio.push((addr, b.size)),
                }
            }
            decoded_all.extend(
                decoded
                    .into_iter()
                    .filter(|b| mapped.get(b.index).copied().flatten() != Some(b.addr))
                    .map(|b| (who.to_string(), b)),
            );
        };
        for f in &self.testdevs {
            let d = lock(&f.dev);
            collect(&d.mapped, &d.inner, &format!("test device {}", f.slot));
        }
        if let Some(v) = &self.vfio {
            let d = lock(&v.f.dev);
            collect(&d.mapped, &d.inner, "passthrough device");
        }
        for (bus, mut want) in [(&self.pio, want_pio), (&self.mmio, want_mmio)] {
            let ranges: Vec<(u64, u64)> = bus.ranges().collect();
            for r in &ranges {
                assert!(
                    r.1 > 0 && r.0.checked_add(r.1 - 1).is_some(),
                    "{bus:?}: bad range {r:x?}"
                );
            }
            for w in ranges.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "overlapping ranges on {bus:?}");
            }
            want.sort_unstable();
            assert_eq!(
                ranges, want,
                "the bus holds other ranges than the fixed ones and the BARs the platform reported mapped"
            );
        }
        // A decoded BAR left unmapped must be outside the windows or overlap another mapping.
        for (who, b) in decoded_all {
            let bus = match b.space {
                AddressSpace::Io => &self.pio,
                AddressSpace::Memory => &self.mmio,
            };
            let blocked = !self.windows.allows(b.space, b.addr, b.size)
                || bus.ranges().any(|r| overlaps(r, (b.addr, b.size)));
            assert!(
                blocked,
                "{who}: BAR {b:x?} is decoded in a free part of the windows but not mapped"
            );
        }
    }

    /// Checks a test device; returns the GSIs of its vectors.
    fn check_testdev(
        &self,
        d: &mut Tracked<TestDevice<Mem>>,
        before: Option<(u32, bool)>,
    ) -> Vec<u32> {
        let mut gsis = Vec::new();
        let msix_off = d.inner.msix().cap().offset();
        let msi_off = d.inner.msi().cap().offset();
        let mut cfg = |o: u16, b: &mut [u8]| d.config_read(o, b);
        assert_eq!(
            find_cap(&mut cfg, MSIX_ID),
            Some(msix_off),
            "MSI-X capability"
        );
        assert_eq!(find_cap(&mut cfg, MSI_ID), Some(msi_off), "MSI capability");
        let msix = MsixView::read(&mut cfg, msix_off);
        let msi = MsiView::read(&mut cfg, msi_off);
        for v in 0..d.inner.msix().cap().vectors() {
            let gsi = d.inner.msix().vector(v).expect("vector").gsi();
            let entry = msix.entry(v, &mut |bar, off, data| d.inner.bar_read(bar, off, data));
            let expect = msix.expect(&entry);
            self.irq
                .assert_vector(gsi, expect, &format!("test device MSI-X vector {v}"));
            assert!(
                expect.is_none() || !d.inner.msix().pending(v),
                "test device MSI-X vector {v} is unmasked with its pending bit set"
            );
            gsis.push(gsi);
        }
        for v in 0..d.inner.msi().cap().max_vectors() {
            let gsi = d.inner.msi().vector(v).expect("vector").gsi();
            let expect = msi.expect(v);
            self.irq
                .assert_vector(gsi, expect, &format!("test device MSI vector {v}"));
            assert!(
                expect.is_none() || !d.inner.msi().cap().pending(d.inner.config(), v),
                "test device MSI vector {v} is unmasked with its pending bit set"
            );
            gsis.push(gsi);
        }
        if let Some((count_before, master_before)) = before {
            let count = reg32(&mut d.inner, REGS_BAR, REG_DMA_COUNT);
            if count != count_before {
                let master = cfg16(d, 4) & 4 != 0;
                assert!(
                    master_before && master,
                    "test device DMA'd with bus mastering off"
                );
                let status = reg32(&mut d.inner, REGS_BAR, REG_DMA_STATUS);
                let addr = u64::from(reg32(&mut d.inner, REGS_BAR, REG_DMA_ADDR_LO))
                    | (u64::from(reg32(&mut d.inner, REGS_BAR, REG_DMA_ADDR_HI)) << 32);
                assert_eq!(status, DMA_DONE, "DMA count moved but the DMA failed");
                assert!(
                    self.mem.address_in_range(GuestAddress(addr))
                        && addr
                            .checked_add(3)
                            .is_some_and(|last| self.mem.address_in_range(GuestAddress(last))),
                    "test device DMA'd to {addr:#x}, outside guest RAM"
                );
            }
        }
        gsis
    }

    fn check_vfio(&self, v: &VfioSide, testdev_gsis: &[u32]) {
        let mut guard = lock(&v.f.dev);
        let d: &mut Tracked<VfioPciDevice> = &mut guard;
        let (msix, msi, command) = {
            let mut cfg = |o: u16, b: &mut [u8]| d.config_read(o, b);
            let msix = find_cap(&mut cfg, MSIX_ID).map(|o| MsixView::read(&mut cfg, o));
            let msi = find_cap(&mut cfg, MSI_ID).map(|o| MsiView::read(&mut cfg, o));
            let mut b = [0u8; 2];
            cfg(4, &mut b);
            (msix, msi, u16::from_le_bytes(b))
        };
        let entries: Vec<_> = msix
            .iter()
            .flat_map(|m| {
                (0..m.vectors)
                    .map(|i| m.entry(i, &mut |bar, off, data| d.inner.bar_read(bar, off, data)))
                    .collect::<Vec<_>>()
            })
            .collect();

        // The vectors VFIO signals.
        let (active, unmask) = v.mock.active_irqs();
        match &active {
            Some((MSIX_IRQ, fds)) => {
                let m = msix.expect("VFIO runs MSI-X but the guest sees no MSI-X capability");
                for (i, &fd) in fds.iter().enumerate() {
                    let gsi = self.irq.gsi_of_fd(fd).unwrap_or_else(|| {
                        panic!("VFIO MSI-X vector {i} signals fd {fd}, which is no live vector")
                    });
                    let expect = entries.get(i).and_then(|e| m.expect(e));
                    self.irq
                        .assert_vector(gsi, expect, &format!("passthrough MSI-X vector {i}"));
                }
            }
            Some((MSI_IRQ, fds)) => {
                let m = msi.expect("VFIO runs MSI but the guest sees no MSI capability");
                for (i, &fd) in fds.iter().enumerate() {
                    let gsi = self.irq.gsi_of_fd(fd).unwrap_or_else(|| {
                        panic!("VFIO MSI vector {i} signals fd {fd}, which is no live vector")
                    });
                    self.irq.assert_vector(
                        gsi,
                        m.expect(i as u32),
                        &format!("passthrough MSI vector {i}"),
                    );
                }
            }
            Some((INTX_IRQ, fds)) => {
                let line = v.intx.expect("VFIO runs INTx but no line was wired");
                assert_eq!(fds, &vec![line.fd], "VFIO INTx signals another eventfd");
            }
            Some((index, _)) => panic!("VFIO runs interrupt index {index}"),
            None => {}
        }

        // The interrupt type the guest enabled.
        if !v.mock.st().fail_set_irqs {
            let want = match (&msix, &msi) {
                (Some(m), _) if m.enabled => Some((MSIX_IRQ, usize::from(m.vectors))),
                (_, Some(m)) if m.enabled => Some((MSI_IRQ, m.enabled_vectors as usize)),
                _ => v.intx.map(|_| (INTX_IRQ, 1)),
            };
            assert_eq!(
                active.as_ref().map(|(i, f)| (*i, f.len())),
                want,
                "VFIO runs another interrupt type than the guest enabled (MSI-X {msix:?}, MSI {msi:?})"
            );
            if let Some(line) = v.intx {
                let on = want.is_some_and(|w| w.0 == INTX_IRQ);
                if on {
                    assert_eq!(unmask, Some(line.resample_fd), "INTx unmask eventfd");
                }
                let now = self.irq.intx_lines().into_iter().find(|l| l.fd == line.fd);
                assert_eq!(
                    now.map(|l| l.enabled),
                    Some(on),
                    "the INTx line is connected while VFIO does not run INTx, or the other way"
                );
            }
        }

        // Every enabled vector of the device routes to a message the guest has active.
        let mut active_msgs: Vec<MsiMessage> = msi.map(|m| m.active_messages()).unwrap_or_default();
        if let Some(m) = &msix {
            active_msgs.extend(entries.iter().filter_map(|e| m.expect(e)));
        }
        for (gsi, log) in self.irq.vectors() {
            if log.enabled && !testdev_gsis.contains(&gsi) {
                let route = log.route.expect("enabled vector without route");
                assert!(
                    active_msgs.contains(&route),
                    "passthrough GSI {gsi} delivers to {route}, which the guest has not enabled"
                );
            }
        }

        // BAR sizes (not the ROM's, which may come from a file): the device's (its region rounded
        // up to a power of two), or, for the BAR the MSI-X table was relocated to, larger, with
        // the table and PBA the guest sees past the device's part (relocation never puts them
        // over the device's BAR).
        let specs = d.inner.bar_specs();
        for &(bar, spec) in specs.iter().filter(|(_, s)| s.kind != BarKind::Rom) {
            let Ok(index) = u32::try_from(bar) else {
                continue;
            };
            let Some(region) = v.mock.st().regions.get(&index).map(|r| r.info.size) else {
                continue;
            };
            let min = if spec.kind == BarKind::Io { 4 } else { 16 };
            let own = region
                .checked_next_power_of_two()
                .unwrap_or(u64::MAX)
                .max(min);
            if spec.size > own {
                let m = msix
                    .as_ref()
                    .expect("a BAR larger than the device's without MSI-X");
                assert!(
                    m.table_bar == bar
                        && m.pba_bar == bar
                        && m.table_offset >= own
                        && m.pba_offset >= own
                        && spec.size == 2 * m.table_offset,
                    "BAR {bar} is {:#x} bytes, the device's {own:#x}, with MSI-X at {m:x?}",
                    spec.size
                );
            }
        }

        // Memory slots.
        let d3 = v.mock.power_state() == Some(3);
        for slot in v.mapper.slots() {
            // The strict mapper refuses host memory that is no mmap of the device.
            let (Some(mmap), Some(piece)) = (slot.mmap, slot.region_offset()) else {
                panic!("memory slot {slot:x?} maps no mmap of the device");
            };
            let bar = mmap.region as usize;
            assert!(
                command & 2 != 0,
                "memory slot {slot:x?} while memory decoding is off"
            );
            assert!(!d3, "memory slot {slot:x?} while the device is in D3hot");
            let Some(addr) = d.mapped.get(bar).copied().flatten() else {
                panic!("memory slot {slot:x?} of BAR {bar}, which the platform has not mapped");
            };
            assert_eq!(
                Some(slot.gpa),
                addr.checked_add(piece),
                "memory slot {slot:x?} is not at BAR {bar}'s address {addr:#x} plus its offset"
            );
            let size = specs
                .iter()
                .find(|(i, _)| *i == bar)
                .map(|(_, s)| s.size)
                .unwrap_or(0);
            assert!(
                piece + slot.size <= size,
                "memory slot {slot:x?} reaches past BAR {bar} ({size:#x} bytes)"
            );
            if let Some(m) = &msix {
                for (s, e) in m.pages_in_bar(bar) {
                    assert!(
                        !overlaps((piece, slot.size), (s, e - s)),
                        "memory slot {slot:x?} maps the MSI-X table/PBA page {s:#x}..{e:#x} of BAR {bar}"
                    );
                }
            }
        }
    }
}

/// What the test device's FIRE of vector `n` must deliver, from what the guest programmed:
/// `Some((gsi, message))` when MSI-X (or else MSI) is enabled, bus mastering is on and vector
/// `n` exists, is enabled and unmasked; nothing otherwise (INTx, masked: pending, invalid).
pub fn fire_expectation(d: &mut Tracked<TestDevice<Mem>>, n: u32) -> Option<(u32, MsiMessage)> {
    let msix_off = d.inner.msix().cap().offset();
    let msi_off = d.inner.msi().cap().offset();
    let (msix, msi, command) = {
        let mut cfg = |o: u16, b: &mut [u8]| d.config_read(o, b);
        let msix = MsixView::read(&mut cfg, msix_off);
        let msi = MsiView::read(&mut cfg, msi_off);
        let mut b = [0u8; 2];
        cfg(4, &mut b);
        (msix, msi, u16::from_le_bytes(b))
    };
    if command & 4 == 0 {
        return None;
    }
    if msix.enabled {
        let v = u16::try_from(n).ok().filter(|&v| v < msix.vectors)?;
        let entry = msix.entry(v, &mut |bar, off, data| d.inner.bar_read(bar, off, data));
        let msg = msix.expect(&entry)?;
        Some((d.inner.msix().vector(v)?.gsi(), msg))
    } else {
        let msg = msi.expect(n)?;
        Some((d.inner.msi().vector(n)?.gsi(), msg))
    }
}
