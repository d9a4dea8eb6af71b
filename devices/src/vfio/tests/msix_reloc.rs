//! MSI-X relocation (docs/passthrough.md, "The MSI-X page"): with the kernel's
//! `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE` and registers beside the table, the guest sees the table
//! and PBA in the upper half of the doubled BAR and the device's BAR is guest memory whole.
//! "Exits" are counted as KVM makes them: a guest access that no memory slot covers.

use super::super::mock::MockBuilder;
use super::super::{MsixRelocation, VfioPciOptions};
use super::platform::{PlatformRig, MMIO32};
use super::{pattern, Rig};
use crate::pci::caps::msix::{MSIX_CTRL_ENABLE, MSIX_CTRL_FUNCTION_MASK};
use crate::pci::{BarAccess, PciDevice};

const MEM: u16 = 0x2;

/// A NIC-like function: BAR 0 of 16 KiB with registers everywhere, the 4-vector table at 0x800
/// and the PBA at 0xc00, in the first page with registers around them.
fn shared_page(cap: bool) -> (MockBuilder, u16) {
    let mut b = MockBuilder::new(0x8086, 0x10fb);
    b.mem_bar(0, 0x4000, false, false);
    let msix = b.msix(4, (0, 0x800), (0, 0xc00));
    if cap {
        b.msix_mappable(0);
    }
    (b, msix)
}

fn rig(b: &mut MockBuilder, mode: MsixRelocation) -> Rig {
    Rig::with_options(b, VfioPciOptions::default().msix_relocation(mode))
}

fn cap_regs(r: &mut Rig, msix: u16) -> (u32, u32) {
    (r.r32(msix + 4), r.r32(msix + 8))
}

#[test]
fn without_the_capability_auto_keeps_the_devices_layout() {
    let (mut b, msix) = shared_page(false);
    let mut r = rig(&mut b, MsixRelocation::Auto);
    assert_eq!(cap_regs(&mut r, msix), (0x800, 0xc00));
    assert_eq!(r.size_bar(0x10), 0xffff_c000, "16 KiB as the device has it");
    assert_eq!(r.dev.bar_mapped_pieces(0), vec![(0x1000, 0x3000)]);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn off_keeps_the_devices_layout_with_the_capability() {
    let (mut b, msix) = shared_page(true);
    let mut r = rig(&mut b, MsixRelocation::Off);
    assert_eq!(cap_regs(&mut r, msix), (0x800, 0xc00));
    assert_eq!(r.size_bar(0x10), 0xffff_c000);
    assert_eq!(r.dev.bar_mapped_pieces(0), vec![(0x1000, 0x3000)]);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn with_the_capability_auto_relocates_into_the_doubled_bar() {
    let (mut b, msix) = shared_page(true);
    let mut r = rig(&mut b, MsixRelocation::Auto);
    // The table at the start of the upper half, the PBA right after its 4 entries.
    assert_eq!(cap_regs(&mut r, msix), (0x4000, 0x4040));
    assert_eq!(r.size_bar(0x10), 0xffff_8000, "32 KiB: the BAR doubled");
    // The device's whole BAR is one mmap, the relocated half none.
    assert_eq!(r.dev.bar_mapped_pieces(0), vec![(0, 0x4000)]);
    assert_eq!(r.mock.st().mmaps.len(), 1);
    r.w32(0x10, 0xc000_8000);
    r.w16(4, MEM);
    r.dev.bar_moved(0, None, Some(0xc000_8000));
    assert_eq!(r.mapper.live(), vec![(0xc000_8000, 0x4000)]);
    // The old table offsets are the device's now (when they trap, as after a failed map, they
    // reach its region); the new ones are the model's table, never the device.
    assert_eq!(
        r.bar_read(0, 0x80c, 4),
        vec![
            pattern(0, 0x80c),
            pattern(0, 0x80d),
            pattern(0, 0x80e),
            pattern(0, 0x80f)
        ]
    );
    assert_eq!(
        r.bar_read(0, 0x400c, 4),
        vec![1, 0, 0, 0],
        "vector 0 masked at reset"
    );
    r.dev.bar_write(0, 0x4000, &0xfee0_0000u32.to_le_bytes());
    assert_eq!(r.bar_read(0, 0x4000, 4), 0xfee0_0000u32.to_le_bytes());
    assert!(!r.mock.st().writes.iter().any(|w| w.0 == 0 && w.1 >= 0x4000));
    // Past the table and PBA in the upper half: all ones, writes dropped, the device not asked.
    assert_eq!(r.bar_read(0, 0x5000, 4), vec![0xff; 4]);
    r.dev.bar_write(0, 0x7ffc, &[1, 2, 3, 4]);
    assert!(!r.mock.st().writes.iter().any(|w| w.0 == 0));
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn a_table_alone_in_its_pages_is_not_relocated() {
    // 256 vectors fill page 1 of BAR 0; the PBA sits in a 32-byte BAR 2 of its own.
    let mut b = MockBuilder::new(0x8086, 0x10fb);
    b.mem_bar(0, 0x4000, false, false);
    b.mem_bar(2, 0x20, false, false);
    let msix = b.msix(256, (0, 0x1000), (2, 0));
    b.msix_mappable(0);
    let mut r = rig(&mut b, MsixRelocation::Auto);
    assert_eq!(cap_regs(&mut r, msix), (0x1000, 0x2));
    assert_eq!(r.size_bar(0x10), 0xffff_c000);
    assert_eq!(
        r.dev.bar_mapped_pieces(0),
        vec![(0, 0x1000), (0x2000, 0x2000)]
    );
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn a_pba_in_another_bar_moves_along() {
    let mut b = MockBuilder::new(0x15b3, 0x1017);
    b.mem_bar(0, 0x2000, false, false);
    b.mem_bar(2, 0x1_0000, true, false);
    let msix = b.msix(16, (0, 0x100), (2, 0x8000));
    b.msix_mappable(0);
    let mut r = rig(&mut b, MsixRelocation::Auto);
    assert_eq!(cap_regs(&mut r, msix), (0x2000, 0x2100));
    assert_eq!(r.size_bar(0x10), 0xffff_c000);
    assert_eq!(r.dev.bar_mapped_pieces(0), vec![(0, 0x2000)]);
    assert_eq!(
        r.dev.bar_mapped_pieces(2),
        vec![(0, 0x1_0000)],
        "BAR 2 has no hole left"
    );
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn a_bar_too_large_to_double_keeps_the_devices_layout() {
    // 2 GiB is the largest 32-bit BAR: doubled it would not be one.
    let mut b = MockBuilder::new(0x10de, 0x1eb8);
    b.mem_bar(0, 0x8000_0000, false, false);
    b.no_mmap(0);
    let msix = b.msix(4, (0, 0x800), (0, 0xc00));
    b.msix_mappable(0);
    let mut r = rig(&mut b, MsixRelocation::Auto);
    assert_eq!(cap_regs(&mut r, msix), (0x800, 0xc00));
    assert_eq!(r.size_bar(0x10), 0x8000_0000);
    // Without the mmap flag there is nothing to gain either way; the cap alone decides nothing.
    assert!(r.dev.bar_mapped_pieces(0).is_empty());
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

/// Programs and enables MSI-X vector `v` through the table at `table` (a guest address), with
/// plain MMIO writes through the platform's bus.
fn program_vector(p: &PlatformRig, table: u64, v: u64, data: u32) {
    let e = table + 16 * v;
    assert!(p.mmio.write(e, &0xfee0_0000u32.to_le_bytes()));
    assert!(p.mmio.write(e + 4, &0u32.to_le_bytes()));
    assert!(p.mmio.write(e + 8, &data.to_le_bytes()));
    assert!(p.mmio.write(e + 12, &0u32.to_le_bytes()));
}

/// The guest's view: an access inside a live memory slot is memory (no exit; it must be the
/// device's mmap of region 0 at the matching offset), any other goes to the MMIO bus (an exit).
struct Guest<'a> {
    p: &'a PlatformRig,
    bar0: u64,
    exits: u32,
}

impl Guest<'_> {
    fn access(&mut self, gpa: u64, write: bool) {
        let slot = self
            .p
            .mapper
            .slots()
            .into_iter()
            .find(|s| gpa >= s.gpa && gpa + 4 <= s.gpa + s.size);
        match slot {
            Some(s) => {
                // Memory: the device's own register, at the same offset of its BAR.
                let mmap = s.mmap.expect("a slot that maps no device mmap");
                assert_eq!(mmap.region, 0);
                assert_eq!(s.region_offset().unwrap() + (gpa - s.gpa), gpa - self.bar0);
            }
            None => {
                self.exits += 1;
                let mut d = [0u8; 4];
                if write {
                    assert!(self.p.mmio.write(gpa, &d));
                } else {
                    assert!(self.p.mmio.read(gpa, &mut d));
                }
            }
        }
    }
}

/// A driver's steady state on [`shared_page`]'s device, through the platform: 100 rounds of
/// register reads and writes in the table's page (0x10, 0x7fc, 0xa00, 0xffc) and one each in
/// the pages after it; returns the exits and the relocated table's guest address.
fn driver_exits(mode: MsixRelocation) -> (u32, u64, PlatformRig) {
    let (mut b, _) = shared_page(true);
    let p = PlatformRig::with_options(&mut b, VfioPciOptions::default().msix_relocation(mode));
    let bar0 = u64::from(p.read32(0x10) & !0xf);
    assert!(bar0 >= MMIO32.0);
    let table = {
        let t = p.read32(p.msix_cap() + 4);
        bar0 + u64::from(t & !7)
    };
    let mut g = Guest {
        p: &p,
        bar0,
        exits: 0,
    };
    for _ in 0..100 {
        for off in [0x10, 0x7fc, 0xa00, 0xffc, 0x1000, 0x3ffc] {
            g.access(bar0 + off, off == 0x7fc);
        }
    }
    let exits = g.exits;
    (exits, table, p)
}

#[test]
fn exits_before_and_after_relocation() {
    let (off_exits, off_table, off) = driver_exits(MsixRelocation::Off);
    let (auto_exits, auto_table, auto) = driver_exits(MsixRelocation::Auto);
    // Before: every access to the table's page is an exit (4 per round); after: none.
    assert_eq!(off_exits, 400);
    assert_eq!(auto_exits, 0);
    let bar0 = |p: &PlatformRig| u64::from(p.read32(0x10) & !0xf);
    assert_eq!(off_table, bar0(&off) + 0x800);
    assert_eq!(auto_table, bar0(&auto) + 0x4000);
    // The table accesses themselves trap in both, and reach the interrupt routing.
    for (p, table) in [(&off, off_table), (&auto, auto_table)] {
        let msix = p.msix_cap();
        assert!(p
            .mapper
            .slots()
            .iter()
            .all(|s| table < s.gpa || table >= s.gpa + s.size));
        program_vector(p, table, 2, 0x4242);
        let ctrl = p.read32(msix) >> 16;
        p.write32(msix, (ctrl | u32::from(MSIX_CTRL_ENABLE)) << 16);
        let dev = p.dev.lock().unwrap();
        let gsi = dev.irqs().msix.as_ref().unwrap().vector(2).unwrap().gsi();
        drop(dev);
        let log = p.irq.log(gsi);
        assert!(log.enabled);
        assert_eq!(log.route.unwrap().data, 0x4242);
        assert_eq!(log.route.unwrap().address, 0xfee0_0000);
        // The PBA reads through the relocated location too.
        let mut d = [0xffu8; 8];
        assert!(p.mmio.read(
            table + if table == off_table { 0x400 } else { 0x40 },
            &mut d
        ));
        assert_eq!(d, [0; 8]);
        assert!(p.mock.violations().is_empty());
        assert!(p.mapper.st().violations.is_empty());
    }
}

#[test]
fn bar_moves_and_sizing_carry_the_relocated_table() {
    let (mut b, _) = shared_page(true);
    let p = PlatformRig::new(&mut b);
    let msix = p.msix_cap();
    let bar0 = u64::from(p.read32(0x10) & !0xf);
    assert_eq!(bar0 % 0x8000, 0, "the doubled BAR is naturally aligned");
    program_vector(&p, bar0 + 0x4000, 1, 0x31);
    // The guest sizes the BAR (decoding off first, as Linux does), then moves it.
    p.write32(4, 0);
    assert!(p.mapper.live().is_empty());
    p.write32(0x10, u32::MAX);
    assert_eq!(p.read32(0x10), 0xffff_8000);
    let new = MMIO32.0 + 0x10_0000;
    p.write32(0x10, new as u32);
    p.write32(4, u32::from(MEM));
    assert_eq!(p.mapper.live(), vec![(new, 0x4000)]);
    // The entry the guest wrote is at the same offset of the moved BAR, and routes.
    let mut d = [0u8; 4];
    assert!(p.mmio.read(new + 0x4000 + 16 + 8, &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x31);
    assert!(
        !p.mmio.read(bar0 + 0x4000 + 16 + 8, &mut d) || d == [0xff; 4],
        "nothing left at the old address"
    );
    assert!(p.mmio.write(new + 0x4000 + 16 + 8, &0x32u32.to_le_bytes()));
    let ctrl = p.read32(msix) >> 16;
    p.write32(
        msix,
        (ctrl | u32::from(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK)) << 16,
    );
    p.write32(msix, (ctrl | u32::from(MSIX_CTRL_ENABLE)) << 16);
    let gsi = {
        let dev = p.dev.lock().unwrap();
        dev.irqs().msix.as_ref().unwrap().vector(1).unwrap().gsi()
    };
    assert_eq!(p.irq.log(gsi).route.unwrap().data, 0x32);
    assert!(p.mock.violations().is_empty());
    assert!(p.mapper.st().violations.is_empty());
}
