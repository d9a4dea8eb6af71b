//! Tests of the MSI-X capability: registers, table and PBA accesses, delivery and masking.

use super::*;
use crate::interrupt::fake::FakeInterrupts;
use crate::pci::bar::BarSpec;
use crate::pci::config::ConfigHeader;

fn cfg() -> ConfigSpace {
    let mut c = ConfigSpace::new(&ConfigHeader {
        vendor_id: 1,
        device_id: 2,
        revision_id: 0,
        class_code: 0,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        interrupt_pin: 0,
    });
    c.set_bar(2, BarSpec::mem32(0x2000)).unwrap();
    c
}

struct Rig {
    irq: FakeInterrupts,
    c: ConfigSpace,
    m: Msix,
    gsis: Vec<u32>,
}

impl Rig {
    fn new(vectors: u16) -> Self {
        let irq = FakeInterrupts::new();
        let mut c = cfg();
        let cap = MsixCap::new(vectors, 2, 0, 2, 0x1000).unwrap();
        let m = Msix::new(&mut c, cap, &irq).unwrap();
        let gsis = (0..vectors).map(|v| m.vector(v).unwrap().gsi()).collect();
        Rig { irq, c, m, gsis }
    }

    fn ctrl(&mut self, v: u16) {
        let off = self.m.cap().offset() + 2;
        self.c.write(off, &v.to_le_bytes());
        self.m.config_written(&self.c, off, 2);
    }

    fn program(&mut self, v: u64, addr: u64, data: u32, masked: bool) {
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&addr.to_le_bytes());
        e[8..12].copy_from_slice(&data.to_le_bytes());
        e[12..].copy_from_slice(&u32::from(masked).to_le_bytes());
        self.m.write_table(v * 16, &e[..8]);
        self.m.write_table(v * 16 + 8, &e[8..]);
    }

    fn delivered(&self, v: usize) -> usize {
        self.irq.log(self.gsis[v]).delivered.len()
    }
}

#[test]
fn capability_registers() {
    let r = Rig::new(2);
    let off = r.m.cap().offset();
    assert_eq!(r.c.capabilities(), vec![(off, MSIX_CAP_ID)]);
    assert_eq!(r.c.read_u16(off + 2), 1);
    assert_eq!(r.c.read_u32(off + 4), 2);
    assert_eq!(r.c.read_u32(off + 8), 0x1002);
    let mut c = r.c.clone();
    c.write(off + 2, &[0xff, 0xff]);
    assert_eq!(c.read_u16(off + 2), 0xc001);
    c.write(off + 4, &[0xff; 8]);
    assert_eq!(c.read_u32(off + 4), 2);
}

#[test]
fn table_reset_state_and_masks() {
    let mut r = Rig::new(2);
    let mut e = [0u8; 16];
    r.m.read_table(0, &mut e);
    assert_eq!(e, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    r.m.write_table(0, &[0xff; 16]);
    r.m.read_table(0, &mut e);
    assert_eq!(
        e,
        [0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]
    );
    // Past the table.
    let mut b = [0u8; 4];
    r.m.read_table(32, &mut b);
    assert_eq!(b, [0xff; 4]);
    r.m.write_table(u64::MAX, &[1, 2, 3]);
}

#[test]
fn writes_of_every_size() {
    let mut r = Rig::new(2);
    // Byte writes.
    for (i, b) in 0xfee0_1000u32.to_le_bytes().iter().enumerate() {
        r.m.write_table(16 + i as u64, &[*b]);
    }
    // Word writes.
    r.m.write_table(16 + 8, &0x0041u16.to_le_bytes());
    r.m.write_table(16 + 10, &0x0000u16.to_le_bytes());
    // Qword write of data + vector control (unmask).
    r.m.write_table(16 + 8, &0x0000_0000_0000_0042u64.to_le_bytes());
    assert_eq!(
        r.m.message(1),
        MsiMessage {
            address: 0xfee0_1000,
            data: 0x42
        }
    );
    assert!(!r.m.vector_masked(1));
    // Unaligned dword straddling address high and data.
    r.m.write_table(16 + 6, &[0xaa, 0xbb, 0x43, 0x00]);
    assert_eq!(
        r.m.message(1),
        MsiMessage {
            address: 0xbbaa_0000_fee0_1000,
            data: 0x43
        }
    );
    let mut q = [0u8; 8];
    r.m.read_table(16 + 8, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x43);
}

#[test]
fn delivery_requires_enable_and_no_masks() {
    let mut r = Rig::new(2);
    r.program(0, 0xfee0_0000, 0x30, false);
    assert_eq!(r.m.fire(0), Delivery::Disabled);
    assert!(!r.irq.log(r.gsis[0]).enabled);
    r.ctrl(MSIX_CTRL_ENABLE);
    assert!(r.irq.log(r.gsis[0]).enabled);
    assert_eq!(r.m.fire(0), Delivery::Delivered);
    assert_eq!(r.delivered(0), 1);
    assert_eq!(
        r.irq.log(r.gsis[0]).delivered[0],
        MsiMessage {
            address: 0xfee0_0000,
            data: 0x30
        }
    );
    // Vector 1 is still masked (reset state).
    assert_eq!(r.m.fire(1), Delivery::Pending);
    assert_eq!(r.m.fire(2), Delivery::InvalidVector);
}

#[test]
fn pending_while_masked_delivered_on_unmask() {
    let mut r = Rig::new(2);
    r.program(1, 0xfee0_0000, 0x31, true);
    r.ctrl(MSIX_CTRL_ENABLE);
    assert_eq!(r.m.fire(1), Delivery::Pending);
    assert_eq!(r.m.fire(1), Delivery::Pending);
    let mut pba = [0u8; 8];
    r.m.read_pba(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 2);
    // PBA is read-only.
    assert!(r.m.bar_write(2, 0x1000, &[0; 8]));
    assert!(r.m.pending(1));
    assert_eq!(r.delivered(1), 0);
    // Unmask with a byte write to the vector control: one delivery, pending cleared.
    r.m.write_table(16 + 12, &[0]);
    assert_eq!(r.delivered(1), 1);
    assert!(!r.m.pending(1));
    r.m.read_pba(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
}

#[test]
fn function_mask() {
    let mut r = Rig::new(2);
    r.program(0, 0xfee0_0000, 0x30, false);
    r.program(1, 0xfee0_0000, 0x31, false);
    r.ctrl(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
    assert!(!r.irq.log(r.gsis[0]).enabled);
    assert_eq!(r.m.fire(0), Delivery::Pending);
    assert_eq!(r.m.fire(1), Delivery::Pending);
    assert_eq!(r.delivered(0) + r.delivered(1), 0);
    r.ctrl(MSIX_CTRL_ENABLE);
    assert_eq!((r.delivered(0), r.delivered(1)), (1, 1));
    assert!(!r.m.pending(0) && !r.m.pending(1));
    // Disabling MSI-X turns delivery off.
    r.ctrl(0);
    assert!(!r.irq.log(r.gsis[0]).enabled);
    assert_eq!(r.m.fire(0), Delivery::Disabled);
}

#[test]
fn route_updates_while_unmasked() {
    let mut r = Rig::new(1);
    r.program(0, 0xfee0_0000, 0x30, false);
    r.ctrl(MSIX_CTRL_ENABLE);
    r.m.write_table(8, &0x55u32.to_le_bytes());
    assert_eq!(r.irq.log(r.gsis[0]).route.unwrap().data, 0x55);
    // Masking and re-writing the same message does not reprogram the route.
    let updates = r.irq.log(r.gsis[0]).route_updates;
    r.m.write_table(12, &[1]);
    r.m.write_table(8, &0x55u32.to_le_bytes());
    r.m.write_table(12, &[0]);
    assert_eq!(r.irq.log(r.gsis[0]).route_updates, updates);
}

#[test]
fn hardware_events_while_masked_show_in_pba() {
    let mut r = Rig::new(70);
    r.program(65, 0xfee0_0000, 0x40, true);
    r.ctrl(MSIX_CTRL_ENABLE);
    r.m.vector(65).unwrap().eventfd().write(1).unwrap();
    let mut pba = [0u8; 16];
    assert!(r.m.bar_read(2, 0x1000, &mut pba));
    assert_eq!(u64::from_le_bytes(pba[8..].try_into().unwrap()), 2);
    r.m.write_table(65 * 16 + 12, &[0]);
    assert_eq!(r.delivered(65), 1);
}

#[test]
fn bar_dispatch() {
    let mut r = Rig::new(2);
    let mut d = [0u8; 4];
    assert!(r.m.bar_read(2, 0x1c, &mut d));
    assert_eq!(d, [1, 0, 0, 0]);
    assert!(!r.m.bar_read(2, 0x20, &mut d));
    assert!(!r.m.bar_read(0, 0x0, &mut d));
    assert!(r.m.bar_write(2, 0x10, &[0; 4]));
    assert!(!r.m.bar_write(2, 0x800, &[0; 4]));
}

#[test]
fn placement_checks() {
    assert!(MsixCap::new(0, 0, 0, 0, 0x800).is_err());
    assert!(MsixCap::new(2049, 0, 0, 0, 0x8000).is_err());
    assert!(MsixCap::new(2, 6, 0, 0, 0x800).is_err());
    assert!(MsixCap::new(2, 0, 4, 0, 0x800).is_err());
    assert!(MsixCap::new(4, 0, 0, 0, 0x20).is_err());
    assert!(MsixCap::new(4, 0, 0, 1, 0x20).is_ok());
    let irq = FakeInterrupts::new();
    let mut c = cfg();
    // BAR 2 is 8 KiB; a table past it does not fit; BAR 0 is not declared.
    let cap = MsixCap::new(2, 2, 0x1ff8, 2, 0).unwrap();
    assert!(Msix::new(&mut c, cap, &irq).is_err());
    let cap = MsixCap::new(2, 0, 0, 2, 0).unwrap();
    assert!(Msix::new(&mut c, cap, &irq).is_err());
    assert_eq!(irq.allocated(), 0);
}

#[test]
fn existing_capability_is_parsed() {
    let r = Rig::new(5);
    let off = r.m.cap().offset();
    let mut c = r.c.clone();
    drop(r.m);
    let m = Msix::existing(&mut c, off, &r.irq).unwrap();
    assert_eq!(m.cap().vectors(), 5);
    assert_eq!(m.cap().table(), (2, 0, 80));
    assert_eq!(m.cap().pba(), (2, 0x1000, 8));
}

#[test]
fn relocation_moves_table_and_pba_keeping_entries() {
    let mut r = Rig::new(4);
    r.program(1, 0xfee0_0000, 0x31, false);
    r.ctrl(MSIX_CTRL_ENABLE);
    let off = r.m.cap().offset();
    // Bad placements are refused and change nothing.
    assert!(r.m.relocate(&mut r.c, 6, 0x1000, 0x1040).is_err());
    assert!(r.m.relocate(&mut r.c, 2, 0x1004, 0x1040).is_err());
    assert!(
        r.m.relocate(&mut r.c, 2, 0x1000, 0x1020).is_err(),
        "PBA inside the table"
    );
    assert_eq!(r.m.cap().table(), (2, 0, 64));
    assert_eq!(r.c.read_u32(off + 4), 2);
    r.m.relocate(&mut r.c, 2, 0x1000, 0x1040).unwrap();
    assert_eq!(r.m.cap().table(), (2, 0x1000, 64));
    assert_eq!(r.m.cap().pba(), (2, 0x1040, 8));
    assert_eq!(r.c.read_u32(off + 4), 0x1002);
    assert_eq!(r.c.read_u32(off + 8), 0x1042);
    // Still read-only to the guest.
    let mut c = r.c.clone();
    c.write(off + 4, &[0; 8]);
    assert_eq!(c.read_u32(off + 4), 0x1002);
    // The old offsets are no longer the table's; the new ones are, with the entry kept.
    let mut d = [0u8; 4];
    assert!(!r.m.bar_read(2, 0x18, &mut d));
    assert!(r.m.bar_read(2, 0x1018, &mut d));
    assert_eq!(u32::from_le_bytes(d), 0x31);
    // A write through the new location reaches the route.
    assert!(r.m.bar_write(2, 0x1018, &0x55u32.to_le_bytes()));
    assert_eq!(r.irq.log(r.gsis[1]).route.unwrap().data, 0x55);
    assert_eq!(r.m.fire(1), Delivery::Delivered);
}
