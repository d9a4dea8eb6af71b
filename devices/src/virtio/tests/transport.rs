//! The transport: identity, capabilities, feature negotiation, queue setup, vectors, the
//! status state machine, ioeventfd binding, INTx, the PCI configuration access capability.

use std::sync::Mutex;

use super::*;
use crate::pci::config::{CAPABILITIES_POINTER, STATUS, STATUS_INTERRUPT};
use crate::virtio::irq::VIRTIO_MSI_NO_VECTOR;
use crate::virtio::pci::{
    PCI_CAP_ID_VNDR, VIRTIO_PCI_CAP_COMMON_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG,
    VIRTIO_PCI_CAP_PCI_CFG,
};
use crate::virtio::rng::Rng;
use crate::virtio::{STATUS_NEEDS_RESET, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC};

fn rng() -> Driver {
    Driver::new(Box::new(Rng::new()))
}

#[test]
fn identity_bar_and_capabilities() {
    let mut d = rng();
    assert_eq!(d.cfg_read16(0), 0x1af4);
    assert_eq!(d.cfg_read16(2), 0x1044);
    assert_eq!(d.cfg_read8(8), 1, "modern-only devices have revision 1");
    assert_eq!(d.cfg_read16(0x2c), 0x1af4);
    assert_eq!(d.cfg_read16(0x2e), 0x40);
    assert_eq!(d.cfg_read8(0x3d), 1, "INTA#");
    // BAR 0: 64-bit memory, 32 KiB.
    let bar = d.cfg_read32(0x10);
    assert_eq!(bar & 0xf, 0x4);
    d.cfg_write32(0x10, u32::MAX);
    d.cfg_write32(0x14, u32::MAX);
    assert_eq!(d.cfg_read32(0x10) & !0xf, !0x7fffu32);
    // The vendor capabilities, walked as a driver does: (cfg_type, bar, offset, length).
    let mut found = Vec::new();
    let mut p = u16::from(d.cfg_read8(CAPABILITIES_POINTER));
    while p != 0 {
        if d.cfg_read8(p) == PCI_CAP_ID_VNDR {
            let t = d.cfg_read8(p + 3);
            let entry = (
                t,
                d.cfg_read8(p + 4),
                d.cfg_read32(p + 8),
                d.cfg_read32(p + 12),
            );
            if t == VIRTIO_PCI_CAP_NOTIFY_CFG {
                assert_eq!(d.cfg_read32(p + 16), 4, "notify_off_multiplier");
                assert_eq!(d.cfg_read8(p + 2), 20, "cap_len of the notify capability");
            }
            found.push(entry);
        }
        p = u16::from(d.cfg_read8(p + 1));
    }
    assert_eq!(
        found,
        vec![
            (VIRTIO_PCI_CAP_COMMON_CFG, 0, 0, 0x38),
            (VIRTIO_PCI_CAP_NOTIFY_CFG, 0, 0x3000, 4),
            (VIRTIO_PCI_CAP_ISR_CFG, 0, 0x1000, 1),
            (VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0),
        ],
        "rng has no device configuration, so no type 4"
    );
}

#[test]
fn feature_negotiation() {
    let mut d = rng();
    let offered = d.device_features();
    assert_eq!(
        offered,
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_F_RING_INDIRECT_DESC
    );
    // Not a subset: bit 0 is not offered.
    assert!(!d.negotiate(VIRTIO_F_VERSION_1 | 1));
    // A legacy driver (no VERSION_1) is refused.
    assert!(!d.negotiate(VIRTIO_F_RING_EVENT_IDX));
    // A subset with VERSION_1 is accepted.
    assert!(d.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX));
    assert_eq!(
        d.dev.driver_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX
    );
    // After FEATURES_OK the driver features are frozen.
    d.write_driver_features(offered);
    assert_eq!(
        d.dev.driver_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX
    );
    // Selects beyond 1 read zero.
    d.write32(common::DEVICE_FEATURE_SELECT, 2);
    assert_eq!(d.read32(common::DEVICE_FEATURE), 0);
}

#[test]
fn queue_setup_registers() {
    let mut d = rng();
    assert_eq!(d.read16(common::NUM_QUEUES), 1);
    d.write16(common::QUEUE_SELECT, 0);
    assert_eq!(
        d.read16(common::QUEUE_SIZE),
        256,
        "reset value is the maximum"
    );
    assert_eq!(d.read16(common::QUEUE_NOTIFY_OFF), 0);
    assert_eq!(d.read16(common::QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    // Sizes that are not powers of two, or above the maximum, are refused.
    d.write16(common::QUEUE_SIZE, 100);
    assert_eq!(d.read16(common::QUEUE_SIZE), 256);
    d.write16(common::QUEUE_SIZE, 512);
    assert_eq!(d.read16(common::QUEUE_SIZE), 256);
    d.write16(common::QUEUE_SIZE, 64);
    assert_eq!(d.read16(common::QUEUE_SIZE), 64);
    // 64-bit addresses written as two dwords, and as one qword.
    d.write64_split(common::QUEUE_DESC, 0x1_2345_6000);
    assert_eq!(d.read32(common::QUEUE_DESC), 0x2345_6000);
    assert_eq!(d.read32(common::QUEUE_DESC + 4), 1);
    d.dev
        .bar_write(0, common::QUEUE_DRIVER, &0x7000u64.to_le_bytes());
    let mut q = [0u8; 8];
    d.dev.bar_read(0, common::QUEUE_DRIVER, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x7000);
    // A queue that does not exist reads size 0 and takes nothing.
    d.write16(common::QUEUE_SELECT, 1);
    assert_eq!(d.read16(common::QUEUE_SIZE), 0);
    d.write16(common::QUEUE_SIZE, 16);
    d.write16(common::QUEUE_ENABLE, 1);
    assert_eq!(d.read16(common::QUEUE_SIZE), 0);
    assert_eq!(d.read16(common::QUEUE_ENABLE), 0);
    // An enabled queue's configuration is frozen.
    d.write16(common::QUEUE_SELECT, 0);
    d.write16(common::QUEUE_ENABLE, 1);
    d.write16(common::QUEUE_SIZE, 32);
    d.write64_split(common::QUEUE_DESC, 0x9000);
    assert_eq!(d.read16(common::QUEUE_SIZE), 64);
    assert_eq!(d.read32(common::QUEUE_DESC), 0x2345_6000);
}

#[test]
fn msix_vectors_per_queue() {
    let mut d = rng();
    // Two vectors: config and queue 0. A vector past the table reads back NO_VECTOR.
    d.write16(common::CONFIG_MSIX_VECTOR, 1);
    assert_eq!(d.read16(common::CONFIG_MSIX_VECTOR), 1);
    d.write16(common::CONFIG_MSIX_VECTOR, 2);
    assert_eq!(d.read16(common::CONFIG_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    d.write16(common::QUEUE_SELECT, 0);
    d.write16(common::QUEUE_MSIX_VECTOR, 7);
    assert_eq!(d.read16(common::QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    d.write16(common::QUEUE_MSIX_VECTOR, 0);
    assert_eq!(d.read16(common::QUEUE_MSIX_VECTOR), 0);
    assert_eq!(d.gsis.len(), 2, "one vector per queue plus config");

    // Queue 0 on vector 1: a completion is delivered with vector 1's message, not vector 0's.
    d.bring_up(0, &[16]);
    let buf = 0x20_0000;
    d.queues[0].add(&d.mem, &[(buf, 16, true)]);
    d.notify(0);
    d.queues[0].wait_used(&d.mem);
    let got = d.wait_deliveries(1);
    assert_eq!(got, vec![(d.gsis[1], Driver::msg(1))]);
}

#[test]
fn status_state_machine() {
    let mut d = rng();
    // DRIVER_OK without FEATURES_OK does nothing.
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
    assert_eq!(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert!(!d.dev.running());
    // Clearing bits without a reset is ignored.
    d.set_status(STATUS_ACKNOWLEDGE);
    assert_eq!(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    // The driver cannot set NEEDS_RESET.
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_NEEDS_RESET);
    assert_eq!(d.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    // DRIVER_OK with no queue enabled: NEEDS_RESET and a configuration interrupt (INTx here).
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert!(!d.dev.running());
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(d.isr(), 2, "configuration change bit");
    // Reset clears everything.
    d.set_status(0);
    assert_eq!(d.status(), 0);
    assert_eq!(d.dev.driver_features(), 0);
}

#[test]
fn reset_mid_operation_stops_the_thread() {
    let name = "virtio-rst-test";
    let mut d = Driver::named(name, Box::new(Rng::new()));
    // The I/O thread is made with the device (by the thread that builds the VM, never by the
    // vCPU that sets DRIVER_OK, which would hand it its seccomp filter) and sleeps until then.
    assert_eq!(
        threads_named(name, 1),
        1,
        "one named I/O thread from creation"
    );
    assert!(!d.dev.running());
    d.bring_up(VIRTIO_F_RING_EVENT_IDX, &[16]);
    assert!(d.dev.running(), "DRIVER_OK starts serving");
    assert_eq!(threads_named(name, 1), 1, "on the same thread");
    // Chains in flight when the driver resets.
    for _ in 0..8 {
        d.queues[0].add(&d.mem, &[(0x20_0000, 4096, true)]);
    }
    d.notify(0);
    d.set_status(0);
    assert!(
        !d.dev.running(),
        "reset stops serving and waits for the thread"
    );
    assert_eq!(
        threads_named(name, 1),
        1,
        "the thread sleeps until the next start"
    );
    assert_eq!(d.status(), 0);
    d.write16(common::QUEUE_SELECT, 0);
    assert_eq!(d.read16(common::QUEUE_ENABLE), 0);
    assert_eq!(d.read16(common::QUEUE_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    assert_eq!(d.read16(common::CONFIG_MSIX_VECTOR), VIRTIO_MSI_NO_VECTOR);
    // A notify after the reset reaches no thread; the device comes up again cleanly.
    let used_before = d.queues[0].used_idx(&d.mem);
    d.notify(0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(d.queues[0].used_idx(&d.mem), used_before);
    // Fresh rings (the old ones still hold the previous chains).
    d.mem
        .write_slice(&[0u8; 0x20000], GuestAddress(0x10000))
        .unwrap();
    d.bring_up(0, &[16]);
    assert_eq!(threads_named(name, 1), 1);
    d.queues[0].add(&d.mem, &[(0x20_0000, 8, true)]);
    d.notify(0);
    assert_eq!(d.queues[0].wait_used(&d.mem).1, 8);
    drop(d);
    assert_eq!(
        threads_named(name, 0),
        0,
        "dropping the device joins the thread"
    );
}

#[test]
fn the_thread_start_hook_runs_first_on_the_io_thread() {
    use std::sync::mpsc;
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let hook: crate::virtio::ThreadStart = Arc::new(move |name: &str| {
        let me = std::thread::current().name().map(str::to_string);
        tx.lock().unwrap().send((name.to_string(), me)).unwrap();
        true
    });
    let mut d = Driver::with_hook("virtio-hook", Box::new(Rng::new()), hook);
    let (name, thread) = rx.recv_timeout(WAIT).expect("the hook ran");
    assert_eq!(name, "virtio-hook");
    assert_eq!(
        thread.as_deref(),
        Some("virtio-hook"),
        "on the I/O thread itself"
    );
    d.bring_up(0, &[16]);
    d.queues[0].add(&d.mem, &[(0x20_0000, 8, true)]);
    d.notify(0);
    assert_eq!(d.queues[0].wait_used(&d.mem).1, 8);
    assert!(rx.try_recv().is_err(), "once, not per start");
}

#[test]
fn a_thread_start_hook_that_fails_leaves_a_device_that_cannot_start() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    let hook: crate::virtio::ThreadStart = Arc::new(move |_: &str| {
        tx.lock().unwrap().send(()).unwrap();
        false
    });
    let mut d = Driver::with_hook("virtio-nohook", Box::new(Rng::new()), hook);
    rx.recv_timeout(WAIT).expect("the hook ran");
    // (the thread carries its name from before the hook runs, so 0 means it has gone)
    assert_eq!(threads_named("virtio-nohook", 0), 0, "the thread ended");
    d.try_bring_up(0, &[16]);
    assert!(!d.dev.running());
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0, "the driver is told");
}

#[test]
fn ioeventfds_follow_the_bar() {
    let mut d = rng();
    let at = BAR_ADDR + NOTIFY_OFFSET;
    assert_eq!(d.io.addresses(), vec![at]);
    let fd = {
        use std::os::unix::io::AsRawFd;
        d.dev.notify_eventfd(0).unwrap().as_raw_fd()
    };
    assert_eq!(d.io.fd_at(at), Some(fd));
    // The guest moves the BAR: the old address is released, the new one bound.
    d.dev.bar_moved(0, Some(BAR_ADDR), Some(0xd000_0000));
    assert_eq!(d.io.addresses(), vec![0xd000_3000]);
    // Decoding off: nothing bound.
    d.dev.bar_moved(0, Some(0xd000_0000), None);
    assert!(d.io.addresses().is_empty());
    d.dev.bar_moved(0, None, Some(BAR_ADDR));
    let io = d.io.clone();
    drop(d);
    assert!(io.addresses().is_empty(), "dropping the device unbinds");
}

#[test]
fn notify_through_the_bar_without_a_registrar() {
    let m = mem();
    let irq = FakeInterrupts::new();
    let mut dev =
        VirtioPciDevice::new("virtio-nofd", Box::new(Rng::new()), m.clone(), &irq, None).unwrap();
    dev.bar_moved(0, None, Some(BAR_ADDR));
    let mut d = Driver {
        dev,
        mem: m,
        io: FakeIoEvents::new(),
        gsis: irq.vectors().iter().map(|(g, _)| *g).collect(),
        irq,
        queues: Vec::new(),
    };
    d.cfg_write16(COMMAND, CMD_MEMORY_SPACE | CMD_BUS_MASTER);
    d.bring_up(0, &[8]);
    d.queues[0].add(&d.mem, &[(0x20_0000, 32, true)]);
    d.notify(0); // no binding: a BAR write
    assert_eq!(d.queues[0].wait_used(&d.mem).1, 32);
}

#[test]
fn intx_fallback_with_isr() {
    let mut d = rng();
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.setup_queue(0, 8, 0x10000, VIRTIO_MSI_NO_VECTOR);
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    d.queues[0].add(&d.mem, &[(0x20_0000, 32, true)]);
    d.notify(0);
    d.queues[0].wait_used(&d.mem);
    let start = Instant::now();
    while d.irq.intx_lines()[0].asserts == 0 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(d.irq.intx_lines()[0].asserts, 1);
    assert!(d.irq.take_deliveries().is_empty(), "no MSI without MSI-X");
    assert_ne!(d.cfg_read16(STATUS) & STATUS_INTERRUPT, 0);
    assert_eq!(d.isr(), 1, "queue bit");
    assert_eq!(d.isr(), 0, "reading cleared it");
    assert_eq!(d.cfg_read16(STATUS) & STATUS_INTERRUPT, 0);
    // An EOI with the ISR clear does not re-assert.
    assert_eq!(d.irq.eoi(5), 1);
    std::thread::sleep(Duration::from_millis(20));
    d.dev.config_read(STATUS, &mut [0; 2]);
    assert_eq!(d.irq.intx_lines()[0].asserts, 1);
    // Level-triggered: a completion the guest EOIs without reading the ISR is asserted again
    // (by the I/O thread, which waits on the resample eventfd), until the ISR is read.
    d.queues[0].add(&d.mem, &[(0x20_0000, 32, true)]);
    d.notify(0);
    d.queues[0].wait_used(&d.mem);
    let wait_asserts = |d: &Driver, n: u64| {
        let start = Instant::now();
        while d.irq.intx_lines()[0].asserts < n && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        d.irq.intx_lines()[0].asserts
    };
    assert_eq!(wait_asserts(&d, 2), 2);
    d.irq.eoi(5);
    assert_eq!(wait_asserts(&d, 3), 3, "EOI with the ISR set re-asserts");
    assert_eq!(d.isr(), 1);
    d.irq.eoi(5);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        d.irq.intx_lines()[0].asserts,
        3,
        "the ISR was read: no more"
    );
    // Without a running session (DRIVER_OK refused: no queue enabled, so NEEDS_RESET and a
    // configuration interrupt) an EOI is noticed at the next status register read.
    d.set_status(0);
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert!(!d.dev.running());
    assert_eq!(d.irq.intx_lines()[0].asserts, 4);
    d.irq.eoi(5);
    d.dev.config_read(STATUS, &mut [0; 2]);
    assert_eq!(
        d.irq.intx_lines()[0].asserts,
        5,
        "re-asserted: the ISR still holds bit 1"
    );
    assert_eq!(d.isr(), 2);
}

#[test]
fn pci_cfg_access_capability_reaches_the_bar() {
    let mut d = rng();
    let cap = d
        .dev
        .config()
        .capabilities()
        .into_iter()
        .map(|(o, _)| o)
        .find(|&o| {
            d.dev.config().read_u8(o) == PCI_CAP_ID_VNDR
                && d.dev.config().read_u8(o + 3) == VIRTIO_PCI_CAP_PCI_CFG
        })
        .unwrap();
    // Read num_queues (2 bytes at 0x12 of the common configuration) through the window.
    d.dev.config_write(cap + 4, &[0]);
    d.cfg_write32(cap + 8, common::NUM_QUEUES as u32);
    d.cfg_write32(cap + 12, 2);
    assert_eq!(d.cfg_read16(cap + 16), 1);
    // Write queue_select 0 / queue_size 32 through it.
    d.cfg_write32(cap + 8, common::QUEUE_SIZE as u32);
    d.cfg_write32(cap + 16, 32);
    assert_eq!(d.read16(common::QUEUE_SIZE), 32);
    // A length other than 1, 2, 4 does nothing.
    d.cfg_write32(cap + 12, 3);
    d.cfg_write32(cap + 16, 64);
    assert_eq!(d.read16(common::QUEUE_SIZE), 32);
}
