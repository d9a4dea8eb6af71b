//! The PCI platform under test, assembled as the VMM does it: port and MMIO buses, the type-1
//! ports at 0xCF8 and ECAM at the layout's addresses, the host bridge, test devices and a
//! passthrough device over the fake VFIO device ([`MockDevice`]), with the devices crate's fake
//! interrupt manager and mapper in strict mode (they panic on what no correct model asks).
//!
//! Each PCI function is wrapped in [`Tracked`], which records what the platform told the
//! function about its BAR mappings (`bar_moved`), so the checks can compare the platform's view,
//! the buses and the passthrough device's memory slots.

use std::sync::{Arc, Mutex, MutexGuard};

use arch::layout::{self, ports};
use devices::exit::{ExitSink, GuestEvent, GuestExit};
use devices::interrupt::fake::{FakeInterrupts, IntxLog};
use devices::interrupt::IntxLine;
use devices::pci::bar::NUM_BAR_SLOTS;
use devices::pci::{
    BarAccess, BarSpec, DecodedBar, PciAddress, PciDevice, PciPlatform, PciPlatformConfig,
    PciWindows, TestDevice, PCI_CONFIG_IO_LEN,
};
use devices::vfio::mock::{MockDevice, MockMapper};
use devices::vfio::{MsixRelocation, VfioPciDevice, VfioPciOptions};
use devices::Bus;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::shape::Shape;

/// Guest memory.
pub type Mem = GuestMemoryMmap<()>;

/// Guest RAM size (at address 0): the test devices DMA into it.
pub const RAM_SIZE: u64 = 2 << 20;
/// Physical address bits the 64-bit window is sized for.
pub const PHYS_BITS: u8 = 40;

/// Locks a mutex, ignoring poisoning (a panic fails the run anyway).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A PCI function that records the platform's `bar_moved` calls.
#[derive(Debug)]
pub struct Tracked<D> {
    /// The function.
    pub inner: D,
    /// Where the platform says each BAR is mapped.
    pub mapped: [Option<u64>; NUM_BAR_SLOTS],
}

impl<D> Tracked<D> {
    /// Wraps `inner`, nothing mapped.
    pub fn new(inner: D) -> Self {
        Tracked {
            inner,
            mapped: [None; NUM_BAR_SLOTS],
        }
    }
}

impl<D: PciDevice> PciDevice for Tracked<D> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        assert!(
            matches!(data.len(), 1 | 2 | 4)
                && usize::from(offset) % data.len() == 0
                && usize::from(offset) + data.len() <= 4096,
            "config read of {} bytes at {offset:#x} reached a device (the platform splits those)",
            data.len()
        );
        self.inner.config_read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        assert!(
            matches!(data.len(), 1 | 2 | 4)
                && usize::from(offset) % data.len() == 0
                && usize::from(offset) + data.len() <= 4096,
            "config write of {} bytes at {offset:#x} reached a device (the platform splits those)",
            data.len()
        );
        self.inner.config_write(offset, data);
    }

    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        self.inner.bar_specs()
    }

    fn decoded_bars(&self) -> Vec<DecodedBar> {
        self.inner.decoded_bars()
    }

    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        assert!(bar < NUM_BAR_SLOTS, "bar_moved for BAR {bar}");
        assert_eq!(
            old, self.mapped[bar],
            "the platform reported BAR {bar} moving from a mapping it never reported"
        );
        assert_ne!(
            old, new,
            "the platform reported BAR {bar} moving to where it was"
        );
        self.mapped[bar] = new;
        self.inner.bar_moved(bar, old, new);
    }

    fn attach_intx(&mut self, line: Box<dyn IntxLine>) {
        self.inner.attach_intx(line);
    }
}

impl<D: BarAccess> BarAccess for Tracked<D> {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.inner.bar_read(bar, offset, data);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.inner.bar_write(bar, offset, data);
    }
}

/// An [`ExitSink`] that records requests.
#[derive(Debug, Default)]
pub struct RecordingExit(Mutex<Vec<GuestExit>>, Mutex<Vec<GuestEvent>>);

impl RecordingExit {
    /// The requests since the last call.
    pub fn take(&self) -> Vec<GuestExit> {
        std::mem::take(&mut *lock(&self.0))
    }

    /// The events (runner phases, pvpanic's crash-loaded) since the last call.
    pub fn take_events(&self) -> Vec<GuestEvent> {
        std::mem::take(&mut *lock(&self.1))
    }
}

impl ExitSink for RecordingExit {
    fn request_exit(&self, why: GuestExit) {
        lock(&self.0).push(why);
    }

    fn guest_event(&self, event: GuestEvent) {
        lock(&self.1).push(event);
    }
}

/// A function on the platform.
#[derive(Debug)]
pub struct Function<D> {
    /// Its slot on bus 0.
    pub slot: u8,
    /// The function.
    pub dev: Arc<Mutex<Tracked<D>>>,
}

impl<D> Function<D> {
    /// Its address.
    pub fn address(&self) -> PciAddress {
        PciAddress {
            bus: 0,
            device: self.slot,
            function: 0,
        }
    }
}

/// The passthrough side of the rig.
#[derive(Debug)]
pub struct VfioSide {
    /// The function.
    pub f: Function<VfioPciDevice>,
    /// Its fake VFIO device.
    pub mock: MockDevice,
    /// Its memory slots.
    pub mapper: Arc<MockMapper>,
    /// The INTx line the platform wired to it.
    pub intx: Option<IntxLog>,
}

/// How to build a passthrough device.
#[derive(Debug, Clone)]
pub struct VfioSpec {
    /// Slot on bus 0.
    pub slot: u8,
    /// The fake device's layout.
    pub shape: Shape,
    /// Make every `SET_IRQS` fail.
    pub fail_set_irqs: bool,
    /// Make every memory slot request fail.
    pub fail_map: bool,
    /// `msix_relocation=` of the device (with the fake device's MSIX_MAPPABLE capability, `auto`
    /// shows the guest the relocated layout).
    pub msix_relocation: MsixRelocation,
}

/// The assembled platform.
#[derive(Debug)]
pub struct Rig {
    /// Port bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// The PCI platform.
    pub platform: PciPlatform,
    /// The interrupt manager.
    pub irq: FakeInterrupts,
    /// Exit requests.
    pub exits: Arc<RecordingExit>,
    /// The windows BARs may live in.
    pub windows: PciWindows,
    /// Guest RAM.
    pub mem: Mem,
    /// Test devices.
    pub testdevs: Vec<Function<TestDevice<Mem>>>,
    /// The passthrough device.
    pub vfio: Option<VfioSide>,
}

/// The fixed port ranges of the rig: `(base, len)`.
pub fn fixed_pio() -> (u64, u64) {
    (u64::from(ports::PCI_CONFIG), PCI_CONFIG_IO_LEN)
}

/// The fixed MMIO ranges of the rig.
pub fn fixed_mmio() -> (u64, u64) {
    (layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE)
}

impl Rig {
    /// Builds the platform with test devices in `testdev_slots` and optionally a passthrough
    /// device; MSI vectors are limited to `irq_limit`. `None` if a device refuses to be created
    /// or added (a shape the model rejects, too few vectors): a fine outcome for a fuzz input,
    /// once the teardown checks found nothing left behind.
    pub fn new(testdev_slots: &[u8], vfio: Option<VfioSpec>, irq_limit: u32) -> Option<Self> {
        let pio = Arc::new(Bus::new("pio"));
        let mmio = Arc::new(Bus::new("mmio"));
        let irq = FakeInterrupts::with_limit(irq_limit).strict();
        let exits = Arc::new(RecordingExit::default());
        let windows = PciWindows {
            mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            mmio64: layout::mmio64_window(RAM_SIZE, PHYS_BITS),
            io: (
                u64::from(ports::PCI_IO_START),
                u64::from(ports::PCI_IO_SIZE),
            ),
        };
        let platform = PciPlatform::new(PciPlatformConfig {
            pio: pio.clone(),
            mmio: mmio.clone(),
            windows,
            irq: Arc::new(irq.clone()),
            intx_gsi: std::sync::Arc::new(layout::pci_intx_gsi),
            exit: exits.clone(),
        })
        .expect("the layout's PCI windows are valid");
        let (b, l) = fixed_pio();
        pio.insert(platform.config_io_device(), b, l)
            .expect("empty port bus");
        let (b, l) = fixed_mmio();
        mmio.insert(platform.ecam_device(), b, l)
            .expect("empty MMIO bus");
        let mem = Mem::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])
            .expect("a small guest memory");
        let mut rig = Rig {
            pio,
            mmio,
            platform,
            irq,
            exits,
            windows,
            mem,
            testdevs: Vec::new(),
            vfio: None,
        };
        if rig.populate(testdev_slots, vfio) {
            Some(rig)
        } else {
            rig.finish();
            None
        }
    }

    fn populate(&mut self, testdev_slots: &[u8], vfio: Option<VfioSpec>) -> bool {
        for &slot in testdev_slots {
            let Ok(dev) = TestDevice::new(self.mem.clone(), &self.irq) else {
                return false;
            };
            let dev = Arc::new(Mutex::new(Tracked::new(dev)));
            if self.platform.add_device(slot, dev.clone()).is_err() {
                return false;
            }
            self.testdevs.push(Function { slot, dev });
        }
        let Some(spec) = vfio else {
            return true;
        };
        crate::trace!("VFIO shape: {:#x?}", spec.shape);
        let Shape {
            mut device,
            rom_file,
        } = spec.shape;
        if spec.fail_set_irqs {
            device.fail_set_irqs();
        }
        let mock = device.build();
        let mut memory_windows = vec![self.windows.mmio32];
        memory_windows.extend(self.windows.mmio64);
        let mapper = MockMapper::default()
            .strict()
            .guest_ram(layout::ram_regions(RAM_SIZE))
            .windows(memory_windows)
            .backed_by(&mock);
        mapper.st().fail_map = spec.fail_map;
        let mapper = Arc::new(mapper);
        let options = VfioPciOptions::default()
            .rom(rom_file)
            .msix_relocation(spec.msix_relocation);
        let dev = match VfioPciDevice::with_options(
            "0000:06:0d.0",
            Box::new(mock.clone()),
            &self.irq,
            mapper.clone(),
            options,
        ) {
            Ok(dev) => dev,
            Err(_) => {
                assert!(
                    mapper.live().is_empty(),
                    "a passthrough device that failed to build left memory slots"
                );
                return false;
            }
        };
        let before = self.irq.intx_lines();
        let dev = Arc::new(Mutex::new(Tracked::new(dev)));
        let added = self.platform.add_device(spec.slot, dev.clone()).is_ok();
        let intx = self
            .irq
            .intx_lines()
            .into_iter()
            .find(|l| !before.iter().any(|b| b.fd == l.fd));
        self.vfio = Some(VfioSide {
            f: Function {
                slot: spec.slot,
                dev,
            },
            mock,
            mapper,
            intx,
        });
        added
    }

    /// Tears the platform down as the VMM does (emptying the buses breaks the cycle bus →
    /// config device → PCI root → BAR mapper → bus) and checks that every device let go of
    /// what it held: no interrupt vector or line, no memory slot.
    pub fn finish(self) {
        let Rig {
            pio,
            mmio,
            platform,
            irq,
            testdevs,
            vfio,
            ..
        } = self;
        for bus in [&pio, &mmio] {
            for (base, len) in bus.ranges() {
                bus.remove(base, len)
                    .expect("removing a range the bus just listed");
            }
        }
        drop(platform);
        drop(testdevs);
        let mapper = vfio.map(|v| {
            let VfioSide { f, mapper, .. } = v;
            drop(f);
            mapper
        });
        assert_eq!(
            irq.live(),
            0,
            "interrupt vectors or lines outlived their devices: {:?}",
            irq.vectors()
        );
        if let Some(m) = mapper {
            assert!(
                m.live().is_empty(),
                "memory slots outlived the passthrough device: {:x?}",
                m.live()
            );
        }
    }
}
