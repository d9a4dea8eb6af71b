//! Interrupts: MSI, MSI-X and INTx wired to VFIO with the model's eventfds.

use std::os::unix::io::AsRawFd;

use super::super::irqs::Mode;
use super::super::mock::MockBuilder;
use super::super::ops::{SetIrqs, INTX_IRQ, MSIX_IRQ, MSI_IRQ};
use super::Rig;
use crate::interrupt::InterruptManager;
use crate::pci::{BarAccess, PciDevice};

fn take_irqs(r: &Rig) -> Vec<SetIrqs> {
    std::mem::take(&mut r.mock.st().set_irqs)
}

fn msi_fds(r: &Rig, n: u32) -> Vec<i32> {
    let m = r.dev.irqs().msi.as_ref().unwrap();
    (0..n)
        .map(|v| m.vector(v).unwrap().eventfd().as_raw_fd())
        .collect()
}

fn msix_fds(r: &Rig, n: u16) -> Vec<i32> {
    let m = r.dev.irqs().msix.as_ref().unwrap();
    (0..n)
        .map(|v| m.vector(v).unwrap().eventfd().as_raw_fd())
        .collect()
}

fn msi_rig() -> (Rig, u16) {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    let off = b.msi(4, true, true);
    (Rig::new(&mut b), off)
}

#[test]
fn msi_enable_programs_the_vector_eventfds() {
    let (mut r, msi) = msi_rig();
    assert!(
        take_irqs(&r).is_empty(),
        "nothing before the guest enables anything"
    );
    r.w32(msi + 4, 0xfee0_1000);
    r.w32(msi + 8, 0);
    r.w16(msi + 12, 0x40);
    assert!(take_irqs(&r).is_empty());
    // Enable with 4 vectors.
    r.w16(msi + 2, 1 | 2 << 4);
    assert_eq!(
        take_irqs(&r),
        vec![SetIrqs::Trigger {
            index: MSI_IRQ,
            start: 0,
            fds: msi_fds(&r, 4)
        }]
    );
    assert_eq!(r.dev.irqs().mode(), Mode::Msi(4));
    let gsi = r.dev.irqs().msi.as_ref().unwrap().vector(3).unwrap().gsi();
    let log = r.irq.log(gsi);
    assert!(log.enabled);
    assert_eq!(log.route.unwrap().address, 0xfee0_1000);
    assert_eq!(log.route.unwrap().data, 0x43);
    // Fewer vectors: re-enabled with the new count.
    r.w16(msi + 2, 1 | 1 << 4);
    assert_eq!(
        take_irqs(&r),
        vec![
            SetIrqs::Disable { index: MSI_IRQ },
            SetIrqs::Trigger {
                index: MSI_IRQ,
                start: 0,
                fds: msi_fds(&r, 2)
            }
        ]
    );
    // Rewriting the same control changes nothing.
    r.w16(msi + 2, 1 | 1 << 4);
    assert!(take_irqs(&r).is_empty());
    r.w16(msi + 2, 0);
    assert_eq!(take_irqs(&r), vec![SetIrqs::Disable { index: MSI_IRQ }]);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn msi_vector_mask_holds_hardware_events_as_pending() {
    let (mut r, msi) = msi_rig();
    r.w32(msi + 4, 0xfee0_0000);
    r.w16(msi + 2, 1);
    take_irqs(&r);
    let gsi = r.dev.irqs().msi.as_ref().unwrap().vector(0).unwrap().gsi();
    // Mask vector 0 (mask register at 0x10 for a 64-bit capability).
    r.w32(msi + 0x10, 1);
    assert!(!r.irq.log(gsi).enabled);
    // The device fires while masked: the event waits in the eventfd.
    let fd = r
        .dev
        .irqs()
        .msi
        .as_ref()
        .unwrap()
        .vector(0)
        .unwrap()
        .eventfd();
    fd.write(1).unwrap();
    assert_eq!(r.r32(msi + 0x14), 1, "pending bit");
    r.w32(msi + 0x10, 0);
    assert_eq!(r.irq.log(gsi).delivered.len(), 1);
    assert_eq!(r.r32(msi + 0x14), 0);
    assert!(take_irqs(&r).is_empty(), "masking never touches the device");
}

#[test]
fn msix_function_and_vector_masks() {
    let mut b = MockBuilder::new(0x8086, 0x10fb);
    b.mem_bar(0, 0x4000, false, false);
    let cap = b.msix(3, (0, 0x2000), (0, 0x3000));
    let mut r = Rig::new(&mut b);
    for v in 0..3u64 {
        r.dev
            .bar_write(0, 0x2000 + 16 * v, &0xfee0_0000u32.to_le_bytes());
        r.dev
            .bar_write(0, 0x2008 + 16 * v, &(0x30 + v as u32).to_le_bytes());
        r.dev.bar_write(0, 0x200c + 16 * v, &0u32.to_le_bytes());
    }
    // Enable with the function masked.
    r.w16(cap + 2, 0xc000 | 2);
    assert_eq!(
        take_irqs(&r),
        vec![SetIrqs::Trigger {
            index: MSIX_IRQ,
            start: 0,
            fds: msix_fds(&r, 3)
        }]
    );
    let gsis: Vec<u32> = (0..3)
        .map(|v| r.dev.irqs().msix.as_ref().unwrap().vector(v).unwrap().gsi())
        .collect();
    assert!(gsis.iter().all(|&g| !r.irq.log(g).enabled));
    // Hardware fires vector 1 while the function is masked: PBA shows it.
    let m = r.dev.irqs().msix.as_ref().unwrap();
    m.vector(1).unwrap().eventfd().write(1).unwrap();
    let mut pba = [0u8; 8];
    r.dev.bar_read(0, 0x3000, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0b010);
    // Unmask the function: vector 1 is delivered once, the others are live.
    r.w16(cap + 2, 0x8000);
    assert_eq!(r.irq.log(gsis[1]).delivered.len(), 1);
    assert!(gsis.iter().all(|&g| r.irq.log(g).enabled));
    // Per-vector mask on vector 2.
    r.dev.bar_write(0, 0x202c, &[1]);
    assert!(!r.irq.log(gsis[2]).enabled);
    r.dev.bar_write(0, 0x202c, &[0]);
    assert!(r.irq.log(gsis[2]).enabled);
    assert!(take_irqs(&r).is_empty(), "masks never touch the device");
    assert_eq!(r.dev.irqs().mode(), Mode::Msix(3));
    // MSI-X off.
    r.w16(cap + 2, 0);
    assert_eq!(take_irqs(&r), vec![SetIrqs::Disable { index: MSIX_IRQ }]);
    // Past the last entry is not the table: the device's own bytes there.
    let mut d = [0u8; 2];
    r.dev.bar_read(0, 0x2000 + 3 * 16, &mut d);
    assert_eq!(d, [super::pattern(0, 0x2030), super::pattern(0, 0x2031)]);
    // Past the BAR: all ones, the device is not asked.
    r.dev.bar_read(0, 0x4000, &mut d);
    assert_eq!(d, [0xff; 2]);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn intx_wiring_and_switching_to_msi_and_back() {
    let (mut r, msi) = msi_rig();
    let line = r.irq.allocate_intx(17).unwrap();
    let (fd, resample) = (
        line.eventfd().as_raw_fd(),
        line.resample_eventfd().as_raw_fd(),
    );
    r.dev.attach_intx(line);
    let intx_on = vec![
        SetIrqs::Trigger {
            index: INTX_IRQ,
            start: 0,
            fds: vec![fd],
        },
        SetIrqs::UnmaskFd {
            index: INTX_IRQ,
            start: 0,
            fd: resample,
        },
    ];
    assert_eq!(take_irqs(&r), intx_on);
    assert_eq!(r.dev.irqs().mode(), Mode::Intx);
    // MSI on: INTx off first.
    r.w16(msi + 2, 1);
    assert_eq!(
        take_irqs(&r),
        vec![
            SetIrqs::Disable { index: INTX_IRQ },
            SetIrqs::Trigger {
                index: MSI_IRQ,
                start: 0,
                fds: msi_fds(&r, 1)
            }
        ]
    );
    // MSI off: INTx back.
    r.w16(msi + 2, 0);
    let mut want = vec![SetIrqs::Disable { index: MSI_IRQ }];
    want.extend(intx_on.clone());
    assert_eq!(take_irqs(&r), want);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn msix_wins_over_msi() {
    let mut b = MockBuilder::new(0x8086, 0x10fb);
    b.mem_bar(0, 0x4000, false, false);
    let msi = b.msi(1, false, false);
    let msix = b.msix(2, (0, 0x2000), (0, 0x3000));
    let mut r = Rig::new(&mut b);
    r.w16(msi + 2, 1);
    r.w16(msix + 2, 0x8000);
    assert_eq!(r.dev.irqs().mode(), Mode::Msix(2));
    let all = take_irqs(&r);
    assert_eq!(all[all.len() - 2], SetIrqs::Disable { index: MSI_IRQ });
}

#[test]
fn failures_leave_interrupts_off_and_retry() {
    let (mut r, msi) = msi_rig();
    r.mock.st().fail_set_irqs = true;
    r.w16(msi + 2, 1);
    assert_eq!(r.dev.irqs().mode(), Mode::Off);
    assert!(r.dev.config_errors() > 0);
    r.mock.st().fail_set_irqs = false;
    take_irqs(&r);
    r.w32(msi + 4, 0xfee0_0000);
    assert_eq!(r.dev.irqs().mode(), Mode::Msi(1));
}

#[test]
fn reset_turns_interrupts_off_and_rearms_intx() {
    let (mut r, msi) = msi_rig();
    let line = r.irq.allocate_intx(17).unwrap();
    r.dev.attach_intx(line);
    r.w16(msi + 2, 1);
    take_irqs(&r);
    r.dev.reset();
    let calls = take_irqs(&r);
    assert_eq!(calls[0], SetIrqs::Disable { index: MSI_IRQ });
    assert!(matches!(
        calls[1],
        SetIrqs::Trigger {
            index: INTX_IRQ,
            ..
        }
    ));
    assert_eq!(r.mock.st().resets, 1);
    assert_eq!(r.r16(msi + 2) & 1, 0, "MSI disabled after reset");
    assert_eq!(r.dev.irqs().mode(), Mode::Intx);
    // Dropping turns INTx off before resetting.
    let Rig { mock, dev, .. } = r;
    drop(dev);
    let st = mock.st();
    assert_eq!(
        st.set_irqs.last(),
        Some(&SetIrqs::Disable { index: INTX_IRQ })
    );
    assert_eq!(st.resets, 2);
}
