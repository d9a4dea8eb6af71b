//! The passthrough device on the real PCI platform: placement, INTx wiring and BAR mapping
//! driven by guest config cycles through ECAM.

use std::sync::{Arc, Mutex};

use super::super::mock::{MockBuilder, MockDevice, MockMapper};
use super::super::ops::{SetIrqs, INTX_IRQ};
use super::super::{VfioPciDevice, VfioPciOptions};
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

fn swizzle(slot: u8, pin: u8) -> u32 {
    16 + (u32::from(slot) + u32::from(pin)) % 8
}

/// Buses, interrupts and a platform over them with ECAM mapped.
fn new_platform(intx_gsi: fn(u8, u8) -> u32) -> (Arc<Bus>, Arc<Bus>, FakeInterrupts, PciPlatform) {
    let pio = Arc::new(Bus::new("pio"));
    let mmio = Arc::new(Bus::new("mmio"));
    let irq = FakeInterrupts::new();
    let platform = PciPlatform::new(PciPlatformConfig {
        pio: pio.clone(),
        mmio: mmio.clone(),
        windows: PciWindows {
            mmio32: MMIO32,
            mmio64: Some(MMIO64),
            io: (0x6000, 0xa000),
        },
        irq: Arc::new(irq.clone()),
        intx_gsi: Arc::new(intx_gsi),
        exit: Arc::new(NoExit),
    })
    .unwrap();
    mmio.insert(platform.ecam_device(), ECAM, 0x1000_0000)
        .unwrap();
    (pio, mmio, irq, platform)
}

/// A passthrough device over a fresh mock built from `b`.
fn new_device(
    b: &mut MockBuilder,
    irq: &FakeInterrupts,
    options: VfioPciOptions,
) -> (MockDevice, Arc<MockMapper>, Arc<Mutex<VfioPciDevice>>) {
    let mock = b.build();
    let mapper = Arc::new(MockMapper::default().backed_by(&mock));
    let dev = VfioPciDevice::with_options(
        "0000:06:0d.0",
        Box::new(mock.clone()),
        irq,
        mapper.clone(),
        options,
    )
    .unwrap();
    (mock, mapper, Arc::new(Mutex::new(dev)))
}

/// A platform with one passthrough device in slot 3.
pub(super) struct PlatformRig {
    pub irq: FakeInterrupts,
    pub mmio: Arc<Bus>,
    pub platform: PciPlatform,
    pub mock: MockDevice,
    pub mapper: Arc<MockMapper>,
    pub dev: Arc<Mutex<VfioPciDevice>>,
    pub addr: PciAddress,
}

impl PlatformRig {
    pub fn new(b: &mut MockBuilder) -> Self {
        Self::with_options(b, VfioPciOptions::default())
    }

    pub fn with_options(b: &mut MockBuilder, options: VfioPciOptions) -> Self {
        let (_pio, mmio, irq, platform) = new_platform(swizzle);
        let (mock, mapper, dev) = new_device(b, &irq, options);
        let addr = platform.add_device(3, dev.clone()).unwrap();
        PlatformRig {
            mmio,
            platform,
            mock,
            mapper,
            dev,
            addr,
            irq,
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

    /// The config offset of the MSI-X capability the guest sees.
    pub fn msix_cap(&self) -> u16 {
        let dev = self.dev.lock().unwrap();
        dev.irqs().msix.as_ref().unwrap().cap().offset()
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

/// What an embedder does: builds buses and a platform, adds a device, and later drops the
/// platform while its buses live on (they are part of its VM). The platform owns the device:
/// dropping it unmaps the BARs from the buses and the guest, turns the device's interrupts off
/// and resets it, and nothing else keeps the device alive. Before the platform stopped holding
/// its buses through the devices they hold, this leaked the device (a reference cycle
/// bus → config access → root → BAR mapper → bus) and none of it happened.
#[test]
fn dropping_the_platform_releases_its_devices() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x10_0000, false, false);
    b.io_bar(4, 0x40);
    let PlatformRig {
        mmio,
        platform,
        mock,
        mapper,
        dev,
        addr: _,
        irq: _irq,
    } = PlatformRig::new(&mut b);
    let bar0 = {
        let mut d = [0u8; 4];
        assert!(mmio.read(ECAM + (3 << 15) + 0x10, &mut d));
        u64::from(u32::from_le_bytes(d) & !0xf)
    };
    assert_eq!(mapper.live(), vec![(bar0, 0x10_0000)]);
    assert!(mmio.ranges().any(|(base, _)| base == bar0));
    let weak = Arc::downgrade(&dev);
    drop(dev);
    let resets_before = mock.st().resets;

    drop(platform);

    assert!(weak.upgrade().is_none(), "the device outlived its platform");
    assert!(
        mapper.live().is_empty(),
        "BAR memory still mapped in the guest"
    );
    assert!(
        !mmio.ranges().any(|(base, _)| base == bar0),
        "BAR still on the bus"
    );
    let st = mock.st();
    assert_eq!(st.resets, resets_before + 1, "device not reset");
    assert!(
        matches!(
            st.set_irqs.last(),
            Some(SetIrqs::Disable { index: INTX_IRQ })
        ),
        "INTx not turned off: {:?}",
        st.set_irqs.last()
    );
    drop(st);
    // What is left on the bus (the ECAM window) answers like an empty bus.
    let mut d = [0u8; 4];
    assert!(mmio.read(ECAM + (3 << 15), &mut d));
    assert_eq!(d, [0xff; 4]);
    mmio.write(ECAM + (3 << 15) + 4, &[7, 0]);
}

/// A device whose `add_device` fails, and what it must find afterwards: its registers as
/// given, no interrupt wired, nothing mapped, nothing on the buses, the windows free again.
fn add_fails_and_leaves_nothing(
    intx_gsi: fn(u8, u8) -> u32,
    occupy_mmio32: bool,
    expect: fn(&crate::pci::PlatformError) -> bool,
) {
    let (pio, mmio, irq, platform) = new_platform(intx_gsi);
    struct Squatter;
    impl crate::bus::BusDevice for Squatter {
        fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _: u64, _: u64, _: &[u8]) {}
    }
    if occupy_mmio32 {
        mmio.insert(Arc::new(Mutex::new(Squatter)), MMIO32.0, MMIO32.1)
            .unwrap();
    }
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x10_0000, false, false);
    b.mem_bar(2, 0x20_0000, true, true);
    b.io_bar(4, 0x40);
    let (mock, mapper, dev) = new_device(&mut b, &irq, VfioPciOptions::default());
    let regs = |dev: &Arc<Mutex<VfioPciDevice>>| {
        let mut d = dev.lock().unwrap();
        [0x04u16, 0x10, 0x14, 0x18, 0x1c, 0x20, 0x3c].map(|off| {
            let mut v = [0u8; 4];
            crate::pci::PciDevice::config_read(&mut *d, off, &mut v);
            u32::from_le_bytes(v)
        })
    };
    let before = regs(&dev);
    let pio_before: Vec<_> = pio.ranges().collect();
    let mmio_before: Vec<_> = mmio.ranges().collect();

    let err = platform.add_device(3, dev.clone()).unwrap_err();
    assert!(expect(&err), "unexpected error: {err}");

    assert_eq!(regs(&dev), before, "registers not restored");
    assert!(mock.st().set_irqs.is_empty(), "interrupts were wired");
    assert!(mapper.live().is_empty(), "BAR memory left mapped");
    assert_eq!(pio.ranges().collect::<Vec<_>>(), pio_before);
    assert_eq!(mmio.ranges().collect::<Vec<_>>(), mmio_before);
    assert_eq!(irq.allocated(), 0);
    assert!(mock.st().violations.is_empty());
    // The slot and the window space are free: a device that fits (without an interrupt pin)
    // takes the slot, its BAR where the failed one's largest 32-bit BAR was placed.
    if occupy_mmio32 {
        return;
    }
    let mut b = MockBuilder::new(0x1234, 0x11e9);
    b.mem_bar(0, 0x10_0000, false, false).config(0x3d, &[0]);
    let other = VfioPciDevice::new(
        "0000:06:0e.0",
        Box::new(b.build()),
        &irq,
        mapper.clone(),
        None,
    )
    .unwrap();
    platform
        .add_device(3, Arc::new(Mutex::new(other)))
        .expect("slot 3 free after the failed add");
    assert_eq!(mapper.live(), vec![(MMIO32.0, 0x10_0000)]);
}

#[test]
fn add_device_failing_on_intx_leaves_nothing_behind() {
    // GSI 40 is not an IOAPIC pin: the interrupt manager refuses the INTx line.
    add_fails_and_leaves_nothing(
        |_, _| 40,
        false,
        |e| matches!(e, crate::pci::PlatformError::Interrupt { .. }),
    );
}

#[test]
fn add_device_failing_to_map_leaves_nothing_behind() {
    // Something else holds the whole 32-bit window on the bus: BAR 0 cannot be mapped there.
    add_fails_and_leaves_nothing(
        |slot, pin| 16 + (u32::from(slot) + u32::from(pin)) % 8,
        true,
        |e| matches!(e, crate::pci::PlatformError::Map { .. }),
    );
}

/// Hot-unplug: `remove_device` takes the device off the buses and out of the guest, frees its
/// slot and window space, and the device is released when the caller lets it go; the next
/// device takes the same place.
#[test]
fn remove_device_releases_slot_space_and_device() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x10_0000, false, false);
    let r = PlatformRig::new(&mut b);
    let bar0 = u64::from(r.read32(0x10) & !0xf);
    assert_eq!(r.mapper.live(), vec![(bar0, 0x10_0000)]);
    let resets = r.mock.st().resets;
    assert!(
        r.platform.remove_device(0).is_empty(),
        "the host bridge stays"
    );
    let mut removed = r.platform.remove_device(r.addr.device);
    assert_eq!(removed.len(), 1);
    let removed = removed.pop().unwrap();
    assert!(r.platform.remove_device(r.addr.device).is_empty());
    assert!(r.mapper.live().is_empty());
    assert!(!r.mmio.ranges().any(|(base, _)| base == bar0));
    assert_eq!(r.read32(0), 0xffff_ffff, "the slot reads empty");
    let weak = Arc::downgrade(&removed);
    drop(removed);
    let PlatformRig {
        platform,
        mock,
        mapper,
        dev,
        ..
    } = r;
    drop(dev);
    assert!(weak.upgrade().is_none());
    assert_eq!(mock.st().resets, resets + 1);
    let mut b = MockBuilder::new(0x1234, 0x11e9);
    b.mem_bar(0, 0x10_0000, false, false);
    let irq = FakeInterrupts::new();
    let other = VfioPciDevice::new(
        "0000:06:0e.0",
        Box::new(b.build()),
        &irq,
        mapper.clone(),
        None,
    )
    .unwrap();
    platform.add_device(3, Arc::new(Mutex::new(other))).unwrap();
    assert_eq!(mapper.live(), vec![(bar0, 0x10_0000)]);
}

/// A GPU and its audio function: two functions of one slot. Function 0 then reports a
/// multi-function device, both are placed, wired and mapped, a function without function 0 is
/// refused, and unplugging the slot takes both.
#[test]
fn multi_function_device() {
    let mut gpu = MockBuilder::new(0x10de, 0x1eb8);
    gpu.mem_bar(0, 0x100_0000, false, false);
    let r = PlatformRig::new(&mut gpu);
    let mut audio = MockBuilder::new(0x10de, 0x10f8);
    audio.mem_bar(0, 0x4000, false, false);
    let audio_mock = audio.build();
    let irq = FakeInterrupts::new();
    let audio_dev = |mock: &MockDevice| {
        Arc::new(Mutex::new(
            VfioPciDevice::new(
                "0000:06:0d.1",
                Box::new(mock.clone()),
                &irq,
                r.mapper.clone(),
                None,
            )
            .unwrap(),
        ))
    };
    let f1 = PciAddress {
        function: 1,
        ..r.addr
    };
    // Alone, function 0 says it is a single-function device.
    assert_eq!(r.read32(0x0c) >> 16 & 0x80, 0);
    // Function 1 of an empty slot is refused.
    let lonely = PciAddress {
        device: 9,
        function: 1,
        ..r.addr
    };
    assert!(matches!(
        r.platform.add_function(lonely, audio_dev(&audio_mock)),
        Err(crate::pci::PlatformError::NoFunctionZero(_))
    ));
    assert!(audio_mock.st().set_irqs.is_empty());
    assert_eq!(
        r.platform.add_function(f1, audio_dev(&audio_mock)).unwrap(),
        f1
    );
    assert!(matches!(
        r.platform.add_function(f1, audio_dev(&audio_mock)),
        Err(crate::pci::PlatformError::FunctionInUse(_))
    ));
    // Header type bit 7 on function 0, through both config mechanisms and any access width.
    assert_eq!(r.read32(0x0c) >> 16 & 0x80, 0x80);
    let mut b = [0u8; 1];
    r.platform.config_read(r.addr, 0x0e, &mut b);
    assert_eq!(b[0] & 0x80, 0x80);
    let mut d = [0u8; 4];
    assert!(r.mmio.read(ECAM + (3 << 15) + 0x0c, &mut d));
    assert_eq!(d[2] & 0x80, 0x80);
    // Function 1 answers at its own address, its BAR placed and mapped.
    let mut id = [0u8; 4];
    r.platform.config_read(f1, 0, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x10f8_10de);
    let mut bar = [0u8; 4];
    r.platform.config_read(f1, 0x10, &mut bar);
    let audio_bar = u64::from(u32::from_le_bytes(bar) & !0xf);
    assert!(r.mapper.live().contains(&(audio_bar, 0x4000)));
    // INTx of function 1 was wired (the mock records the trigger fd).
    assert!(!audio_mock.st().set_irqs.is_empty());
    // Unplugging the slot takes both functions and their mappings.
    let removed = r.platform.remove_device(r.addr.device);
    assert_eq!(removed.len(), 2);
    assert!(r.mapper.live().is_empty());
    assert_eq!(r.read32(0), 0xffff_ffff);
    r.platform.config_read(f1, 0, &mut id);
    assert_eq!(id, [0xff; 4]);
}

/// A system reset (the guest rebooted in place): the device is reset through VFIO with
/// MSI-X disabled, and its BARs are back where the platform placed them, mapped into the guest
/// again, decoding as the platform left it.
#[test]
fn system_reset_resets_the_device_and_puts_its_bars_back() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x10_0000, false, false);
    b.msix(2, (0, 0x1000), (0, 0x1800));
    let r = PlatformRig::new(&mut b);
    let bar0 = u64::from(r.read32(0x10) & !0xf);
    let placed = r.mapper.live();
    let cmd = r.read32(4) & 0xffff;
    // The guest moves BAR 0, turns on bus mastering and MSI-X.
    r.write32(4, cmd & !2);
    r.write32(0x10, 0xd000_0000);
    r.write32(4, cmd | 4);
    let msix = r.msix_cap();
    r.write32(msix, r.read32(msix) | (1 << 31));
    assert_ne!(r.mapper.live(), placed);
    let resets = r.mock.st().resets;
    r.platform.system_reset();
    assert_eq!(r.mock.st().resets, resets + 1);
    assert_eq!(u64::from(r.read32(0x10) & !0xf), bar0);
    assert_eq!(r.read32(4) & 0xffff, cmd);
    assert_eq!(r.read32(msix) >> 31, 0, "MSI-X is off after the reset");
    assert_eq!(r.mapper.live(), placed);
    assert!(r.mock.st().violations.is_empty());
    assert!(r.mapper.st().violations.is_empty());
}
