//! Config space: header shadowing, capability lists, hidden capabilities.

use super::super::config::{EXT_CAP_ARI, EXT_CAP_REBAR, EXT_CAP_SRIOV};
use super::super::mock::MockBuilder;
use super::super::ops::MSI_IRQ;
use super::Rig;
use crate::pci::PciDevice;

const AER: u16 = 0x01;
const VSEC: u16 = 0x0b;
const LTR: u16 = 0x18;

/// The standard capability list as a guest walks it.
fn guest_caps(r: &mut Rig) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut ptr = u16::from(r.r8(0x34) & !3);
    while ptr >= 0x40 && out.len() < 48 {
        out.push((ptr, r.r8(ptr)));
        ptr = u16::from(r.r8(ptr + 1) & !3);
    }
    out
}

/// The extended capability list as Linux walks it (ID 0 entries are skipped).
fn guest_ext_caps(r: &mut Rig) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let mut ptr = 0x100;
    for _ in 0..960 {
        let h = r.r32(ptr);
        if h == 0 || h == u32::MAX {
            break;
        }
        if h & 0xffff != 0 {
            out.push((ptr, h as u16));
        }
        ptr = (h >> 20) as u16 & !3;
        if ptr < 0x100 {
            break;
        }
    }
    out
}

fn rebar_body() -> Vec<u8> {
    // One entry: capability dword, control dword with NBAR = 1 in bits 7:5.
    let mut b = vec![0u8; 8];
    b[0..4].copy_from_slice(&0x0000_fff0u32.to_le_bytes());
    b[4] = 1 << 5;
    b
}

#[test]
fn hidden_ext_caps_are_unlinked_and_read_zero() {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    let aer = b.ext_cap(AER, &[0x11; 0x44]);
    let sriov = b.ext_cap(EXT_CAP_SRIOV, &[0x22; 0x3c]);
    let ari = b.ext_cap(EXT_CAP_ARI, &[0x33; 4]);
    let ltr = b.ext_cap(LTR, &[0x44; 4]);
    let rebar = b.ext_cap(EXT_CAP_REBAR, &rebar_body());
    let vsec = b.ext_cap(VSEC, &[0x55; 8]);
    let mut r = Rig::new(&mut b);
    assert_eq!(
        guest_ext_caps(&mut r),
        vec![(aer, AER), (ltr, LTR), (vsec, VSEC)]
    );
    assert_eq!(
        r.dev.config_model().ext_caps().len(),
        6,
        "all six were found on the device"
    );
    // Hidden bodies read zero, whatever the device holds.
    for off in [sriov, sriov + 8, sriov + 0x3c, ari + 4, rebar + 8] {
        assert_eq!(r.r32(off), 0, "offset {off:#x}");
    }
    // A guest write to the SR-IOV control register (VF enable) never reaches the device.
    r.w16(sriov + 8, 0x1);
    r.w32(ari + 4, u32::MAX);
    assert!(r
        .mock
        .config_writes_in(u64::from(sriov)..u64::from(ltr))
        .is_empty());
    assert_eq!(r.mock.config_u32(usize::from(sriov) + 8), 0x2222_2222);
    // Visible capabilities pass through: reads come from the device, writes go to it.
    assert_eq!(r.r32(vsec + 4), 0x5555_5555);
    r.w32(vsec + 4, 0x1234_5678);
    assert_eq!(r.mock.config_u32(usize::from(vsec) + 4), 0x1234_5678);
    // Headers are read-only.
    let h = r.r32(ltr);
    r.w32(ltr, 0);
    assert_eq!(r.r32(ltr), h);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn first_ext_cap_hidden_becomes_a_null_capability() {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.ext_cap(EXT_CAP_SRIOV, &[0x22; 0x3c]);
    let aer = b.ext_cap(AER, &[0x11; 0x10]);
    let mut r = Rig::new(&mut b);
    assert_eq!(r.r32(0x100), u32::from(aer) << 20);
    assert_eq!(guest_ext_caps(&mut r), vec![(aer, AER)]);

    // Nothing visible at all: the list is empty.
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.ext_cap(EXT_CAP_SRIOV, &[0x22; 0x3c]);
    b.ext_cap(EXT_CAP_ARI, &[0x33; 4]);
    let mut r = Rig::new(&mut b);
    assert_eq!(r.r32(0x100), 0);
    assert!(guest_ext_caps(&mut r).is_empty());
}

#[test]
fn null_ext_cap_at_0x100_leads_to_the_list() {
    // A null capability (ID 0) at 0x100 in front of the real ones: the list goes on past it,
    // so the hidden capability behind it is hidden and every header stays the model's.
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.ext_cap(0, &[0x66; 0x3c]);
    let sriov = b.ext_cap(EXT_CAP_SRIOV, &[0x22; 0x3c]);
    let ari = b.ext_cap(EXT_CAP_ARI, &[0x33; 4]);
    let aer = b.ext_cap(AER, &[0x11; 0x10]);
    let mut r = Rig::new(&mut b);
    assert_eq!(r.dev.config_model().ext_caps().len(), 4);
    assert_eq!(r.r32(0x100) >> 20, u32::from(aer));
    assert_eq!(guest_ext_caps(&mut r), vec![(aer, AER)]);
    for off in [0x100, sriov, ari, aer] {
        for at in off..off + 4 {
            r.dev.config_write(at, &[0x55]);
        }
    }
    r.w16(sriov + 8, 0x1);
    assert!(r.mock.config_writes_in(0x100..0x104).is_empty());
    assert!(r
        .mock
        .config_writes_in(u64::from(sriov)..u64::from(aer) + 4)
        .is_empty());
    // The null capability's body is device-specific and passes through.
    r.w32(0x104, 0x1234_5678);
    assert_eq!(r.mock.config_u32(0x104), 0x1234_5678);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn ext_caps_not_reached_from_0x100_are_device_bytes() {
    // 0x100 reads zero, so the function has no extended capabilities, whatever lies past it
    // (the fuzzer's fake once claimed such a chain). Those bytes are device-specific registers
    // and pass through, as vfio-pci itself passes unassigned config bytes through.
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.ext_cap(VSEC, &[0x66; 0x3c]);
    let ltr = b.ext_cap(LTR, &[0x44; 4]);
    b.config(0x100, &[0; 4]);
    let mut r = Rig::new(&mut b);
    assert!(r.dev.config_model().ext_caps().is_empty());
    assert!(guest_ext_caps(&mut r).is_empty());
    let h = u32::from(LTR) | 1 << 16;
    assert_eq!(r.r32(ltr), h, "read from the device");
    r.dev.config_write(ltr + 1, &[0x55]);
    assert_eq!(r.mock.config_u32(usize::from(ltr)), h | 0x55 << 8);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn looped_ext_list_terminates() {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.ext_cap(AER, &[0; 8]);
    // next of 0x100 points back at 0x100.
    b.config(
        0x100,
        &(u32::from(AER) | 1 << 16 | 0x100 << 20).to_le_bytes(),
    );
    let mut r = Rig::new(&mut b);
    assert_eq!(r.dev.config_model().ext_caps().len(), 1);
    assert_eq!(r.r32(0x100) >> 20, 0, "the loop is cut");
}

#[test]
fn header_is_shadowed() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.config(0x0e, &[0x80]); // multi-function
    b.config(0x2c, &0x5678_1af4u32.to_le_bytes());
    b.config(0x06, &0x0010u16.to_le_bytes());
    b.mem_bar(0, 0x10_0000, false, false);
    let mut r = Rig::new(&mut b);
    assert_eq!(r.r32(0), 0x11e8_1234);
    assert_eq!(r.r8(0x0e), 0, "one function only");
    assert_eq!(r.r32(0x2c), 0x5678_1af4);
    // Identity is read-only.
    r.w32(0, 0);
    r.w32(0x2c, 0);
    assert_eq!(r.r32(0), 0x11e8_1234);
    // BAR writes stay in the model.
    r.w32(0x10, 0xc000_0000);
    r.w32(0x14, 0xdead_0000);
    r.w32(0x30, 0xffff_ffff);
    assert!(r.mock.config_writes_in(0x10..0x34).is_empty());
    assert_eq!(r.r32(0x10), 0xc000_0000);
    assert_eq!(r.r32(0x14), 0, "unimplemented BAR");
    // The command register is written through as a whole; status comes from the device.
    let before = r.mock.config_writes_in(4..6).len();
    r.dev.config_write(5, &[0x04]);
    let w = r.mock.config_writes_in(4..6);
    assert_eq!(w.len(), before + 1);
    assert_eq!(w.last().unwrap(), &(4, vec![0x00, 0x04]));
    r.w16(4, 0x0006);
    assert_eq!(r.mock.config_u32(4) & 0xffff, 0x0006);
    assert_eq!(r.r16(6), 0x0010);
    // Latency timer passes through.
    r.dev.config_write(0x0d, &[0x40]);
    assert_eq!(r.mock.config_u32(0x0c) >> 8 & 0xff, 0x40);
    // Interrupt line is the model's.
    r.dev.config_write(0x3c, &[0x0b]);
    assert_eq!(r.r8(0x3c), 0x0b);
    assert!(r.mock.config_writes_in(0x3c..0x3d).is_empty());
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn conventional_function_has_no_extended_space() {
    let mut b = MockBuilder::with_config_size(0x1234, 0x11e8, 256);
    b.cap(0x01, &[0; 6]);
    let mut r = Rig::new(&mut b);
    assert_eq!(r.r32(0x100), 0);
    assert_eq!(r.r32(0xffc), 0);
    r.w32(0x200, u32::MAX);
    assert_eq!(r.r32(0x200), 0);
    assert_eq!(guest_caps(&mut r), vec![(0x40, 0x01)]);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn msi_and_msix_stay_in_the_list_at_their_offsets() {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.mem_bar(0, 0x4000, false, false);
    let pm = b.cap(0x01, &[0x03, 0x00, 0x08, 0x00, 0, 0]);
    let msi = b.msi(4, true, true);
    let msix = b.msix(4, (0, 0x2000), (0, 0x3000));
    let pcie = b.cap(0x10, &[0; 0x3a]);
    let mut r = Rig::new(&mut b);
    assert_eq!(
        guest_caps(&mut r),
        vec![(pm, 0x01), (msi, 0x05), (msix, 0x11), (pcie, 0x10)]
    );
    // MSI: 4 vectors, 64-bit, per-vector mask; control written by the guest stays in the model.
    assert_eq!(r.r16(msi + 2), 2 << 1 | 1 << 7 | 1 << 8);
    r.w32(msi + 4, 0xfee0_0000);
    assert!(r
        .mock
        .config_writes_in(u64::from(msi)..u64::from(msi) + 24)
        .is_empty());
    // MSI-X: table size 4, BIR 0.
    assert_eq!(r.r16(msix + 2), 3);
    assert_eq!(r.r32(msix + 4), 0x2000);
    // Other capabilities pass through (power management control).
    r.w16(pm + 4, 0x0003);
    assert_eq!(r.mock.config_u32(usize::from(pm) + 4) & 0xffff, 0x0003);
}

#[test]
fn vector_counts_are_capped_by_vfio() {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.mem_bar(0, 0x4000, false, false);
    let msi = b.msi(8, false, false);
    let msix = b.msix(64, (0, 0), (0, 0x800));
    b.irq(MSI_IRQ, 2);
    b.irq(super::super::ops::MSIX_IRQ, 5);
    let mut r = Rig::new(&mut b);
    assert_eq!(r.r16(msi + 2) >> 1 & 7, 1, "2 vectors");
    assert_eq!(r.r16(msix + 2) & 0x7ff, 4, "5 vectors");
    assert_eq!(r.irq.allocated(), 2 + 5);
}

#[test]
fn msi_without_vfio_vectors_and_bad_msix_are_hidden() {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.mem_bar(0, 0x1000, false, false);
    let pm = b.cap(0x01, &[0; 6]);
    let msi = b.msi(1, false, false);
    // The table does not fit in BAR 0 (4 KiB).
    let msix = b.msix(4, (0, 0x1000), (0, 0x800));
    let pcie = b.cap(0x10, &[0; 0x3a]);
    b.irq(MSI_IRQ, 0);
    let mut r = Rig::new(&mut b);
    assert_eq!(guest_caps(&mut r), vec![(pm, 0x01), (pcie, 0x10)]);
    assert_eq!(r.r32(msi), 0);
    assert_eq!(r.r32(msix + 4), 0);
    assert!(r.dev.irqs().msi.is_none() && r.dev.irqs().msix.is_none());
    // Writes to the hidden capabilities change nothing anywhere.
    r.w16(msi + 2, 1);
    r.w16(msix + 2, 0x8000);
    assert_eq!(r.r32(msi), 0);
    assert!(r
        .mock
        .st()
        .set_irqs
        .iter()
        .all(|s| !matches!(s, super::super::ops::SetIrqs::Trigger { index: 1 | 2, .. })));
}
