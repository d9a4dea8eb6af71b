//! The passthrough device on the real PCI platform: placement, INTx wiring and BAR mapping
//! driven by guest config cycles through ECAM.

use std::sync::{Arc, Mutex};

use super::super::mock::{MockBuilder, MockDevice, MockMapper};
use super::super::ops::{SetIrqs, INTX_IRQ};
use super::super::VfioPciDevice;
use crate::bus::Bus;
use crate::exit::{ExitSink, GuestExit};
use crate::interrupt::fake::FakeInterrupts;
use crate::pci::{PciAddress, PciPlatform, PciPlatformConfig, PciWindows};

pub(super) const ECAM: u64 = 0xb000_0000;
pub(super) const MMIO32: (u64, u64) = (0xc000_0000, 0x3c00_0000);
pub(super) const MMIO64: (u64, u64) = (1 << 36, 1 << 36);

struct NoExit;

impl ExitSink for NoExit {
    fn request_exit(&self, _why: GuestExit) {}
}

/// A platform with one passthrough device in slot 3.
pub(super) struct PlatformRig {
    pub mmio: Arc<Bus>,
    pub platform: PciPlatform,
    pub mock: MockDevice,
    pub mapper: Arc<MockMapper>,
    pub dev: Arc<Mutex<VfioPciDevice>>,
    pub addr: PciAddress,
    pub _irq: FakeInterrupts,
}

impl PlatformRig {
    pub fn new(b: &mut MockBuilder) -> Self {
        let pio = Arc::new(Bus::new("pio"));
        let mmio = Arc::new(Bus::new("mmio"));
        let irq = FakeInterrupts::new();
        let platform = PciPlatform::new(PciPlatformConfig {
            pio,
            mmio: mmio.clone(),
            windows: PciWindows {
                mmio32: MMIO32,
                mmio64: Some(MMIO64),
                io: (0x6000, 0xa000),
            },
            irq: Arc::new(irq.clone()),
            intx_gsi: |slot, pin| 16 + (u32::from(slot) + u32::from(pin)) % 8,
            exit: Arc::new(NoExit),
        })
        .unwrap();
        mmio.insert(platform.ecam_device(), ECAM, 0x1000_0000)
            .unwrap();
        let mock = b.build();
        let mapper = Arc::new(MockMapper::default());
        let dev = VfioPciDevice::new(
            "0000:06:0d.0",
            Box::new(mock.clone()),
            &irq,
            mapper.clone(),
            None,
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let addr = platform.add_device(3, dev.clone()).unwrap();
        PlatformRig {
            mmio,
            platform,
            mock,
            mapper,
            dev,
            addr,
            _irq: irq,
        }
    }

    pub fn read32(&self, off: u16) -> u32 {
        let mut b = [0u8; 4];
        self.platform.config_read(self.addr, off, &mut b);
        u32::from_le_bytes(b)
    }

    pub fn write32(&self, off: u16, v: u32) {
        self.platform.config_write(self.addr, off, &v.to_le_bytes());
    }
}

#[test]
fn placed_wired_and_mapped_by_the_platform() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x10_0000, false, false);
    b.mem_bar(2, 0x20_0000, true, true);
    b.io_bar(4, 0x40);
    b.msix(2, (0, 0x1000), (0, 0x1800));
    let r = PlatformRig::new(&mut b);
    // INTx is wired at add time.
    let st = r.mock.st();
    assert!(matches!(
        st.set_irqs[0],
        SetIrqs::Trigger {
            index: INTX_IRQ,
            ..
        }
    ));
    assert!(matches!(
        st.set_irqs[1],
        SetIrqs::UnmaskFd {
            index: INTX_IRQ,
            ..
        }
    ));
    drop(st);
    // Memory decoding was turned on and both memory BARs became guest memory where placed.
    let bar0 = u64::from(r.read32(0x10) & !0xf);
    let bar2 = u64::from(r.read32(0x18) & !0xf) | u64::from(r.read32(0x1c)) << 32;
    assert!(
        bar2 >= MMIO64.0,
        "prefetchable 64-bit BAR in the 64-bit window"
    );
    assert_eq!(
        r.mapper.live(),
        vec![(bar0, 0x1000), (bar0 + 0x2000, 0xf_e000), (bar2, 0x20_0000)]
    );
    // The MSI-X page traps to the device model through the bus.
    let mut d = [0u8; 4];
    assert!(r.mmio.read(bar0 + 0x100c, &mut d));
    assert_eq!(d, [1, 0, 0, 0]);
    // The guest turns memory decoding off and moves BAR 0.
    let cmd = r.read32(4) & 0xffff;
    r.write32(4, cmd & !2);
    assert!(r.mapper.live().is_empty());
    r.write32(0x10, 0xd000_0000);
    r.write32(4, cmd);
    assert_eq!(
        r.mapper.live(),
        vec![
            (0xd000_0000, 0x1000),
            (0xd000_2000, 0xf_e000),
            (bar2, 0x20_0000)
        ]
    );
    assert!(r.mock.st().violations.is_empty());
    assert!(r.mapper.st().violations.is_empty());
}
