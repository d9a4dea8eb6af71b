//! The transport on a real `PciPlatform`, as the VMM wires it: placed like firmware would,
//! notify addresses bound where the platform put the BAR and re-bound when the guest moves it,
//! guest accesses through the MMIO bus and ECAM.

use std::sync::Mutex;

use super::*;
use crate::bus::Bus;
use crate::exit::{ExitSink, GuestExit};
use crate::pci::{PciPlatform, PciPlatformConfig, PciWindows};
use crate::virtio::blk::{Block, BlockConfig};
use crate::virtio::rng::Rng;

const ECAM: u64 = 0xb000_0000;

struct NoExit;
impl ExitSink for NoExit {
    fn request_exit(&self, _: GuestExit) {}
}

#[test]
fn on_the_platform_ioeventfds_follow_the_guest() {
    let mmio = Arc::new(Bus::new("mmio"));
    let irq = FakeInterrupts::new();
    let io = FakeIoEvents::new();
    let platform = PciPlatform::new(PciPlatformConfig {
        pio: Arc::new(Bus::new("pio")),
        mmio: mmio.clone(),
        windows: PciWindows {
            mmio32: (0xc000_0000, 0x1000_0000),
            mmio64: Some((1 << 36, 1 << 36)),
            io: (0x6000, 0xa000),
        },
        irq: Arc::new(irq.clone()),
        intx_gsi: Arc::new(|slot, pin| 16 + (u32::from(slot) + u32::from(pin)) % 8),
        exit: Arc::new(NoExit),
    })
    .unwrap();
    mmio.insert(platform.ecam_device(), ECAM, 0x1000_0000)
        .unwrap();
    let m = mem();
    let registrar: Arc<dyn IoEventRegistrar> = Arc::new(io.clone());
    let rng = VirtioPciDevice::new(
        "virtio-rng",
        Box::new(Rng::new()),
        m.clone(),
        &irq,
        Some(registrar.clone()),
    )
    .unwrap();
    let at = platform.add_device(1, Arc::new(Mutex::new(rng))).unwrap();
    let img = super::blk::TempImage::new("platform", 1 << 20);
    let blk = Block::open(&BlockConfig {
        path: img.0.clone(),
        ..Default::default()
    })
    .unwrap();
    let blk = VirtioPciDevice::new("virtio-blk0", Box::new(blk), m, &irq, Some(registrar)).unwrap();
    platform.add_device(2, Arc::new(Mutex::new(blk))).unwrap();

    let ecam = |slot: u8, off: u64| ECAM + (u64::from(slot) << 15) + off;
    let bar = |slot: u8| {
        let (mut lo, mut hi) = ([0u8; 4], [0u8; 4]);
        assert!(mmio.read(ecam(slot, 0x10), &mut lo));
        assert!(mmio.read(ecam(slot, 0x14), &mut hi));
        u64::from(u32::from_le_bytes(lo) & !0xf) | (u64::from(u32::from_le_bytes(hi)) << 32)
    };
    let (b1, b2) = (bar(at.device), bar(2));
    assert_ne!(b1, 0);
    let mut bound = io.addresses();
    bound.sort();
    let mut want = vec![b1 + NOTIFY_OFFSET, b2 + NOTIFY_OFFSET];
    want.sort();
    assert_eq!(bound, want, "each device's queue 0 notify address is bound");
    // The guest reads num_queues through the MMIO bus.
    let mut nq = [0u8; 2];
    assert!(mmio.read(b1 + common::NUM_QUEUES, &mut nq));
    assert_eq!(u16::from_le_bytes(nq), 1);
    // The guest moves the rng's BAR: the binding follows.
    let new = 0xc800_0000u64;
    assert!(mmio.write(ecam(at.device, 0x10), &(new as u32 | 4).to_le_bytes()));
    assert!(io.addresses().contains(&(new + NOTIFY_OFFSET)));
    assert!(!io.addresses().contains(&(b1 + NOTIFY_OFFSET)));
    // Memory decoding off: unbound.
    assert!(mmio.write(ecam(at.device, 0x04), &[0, 0]));
    assert!(!io.addresses().contains(&(new + NOTIFY_OFFSET)));
    // Unplugged: the other binding goes with its device.
    drop(platform.remove_device(2));
    assert!(io.addresses().is_empty());
}
