//! Tests of the assembled platform: real `Bus` objects, the type-1 and ECAM mechanisms, the
//! host bridge and test devices, with the in-memory interrupt manager.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::platform::lock;
use super::testdev::TestDevice;
use super::{PciPlatform, PciPlatformConfig, PciWindows, PCI_CONFIG_IO_LEN};
use crate::bus::Bus;
use crate::exit::{ExitSink, GuestExit};
use crate::interrupt::fake::FakeInterrupts;

mod access;
mod devices;
mod garbage;
mod mapping;
mod pci_testdev;

const CF8: u64 = 0xcf8;
const ECAM: u64 = 0xb000_0000;
const ECAM_SIZE: u64 = 0x1000_0000;
const MMIO32: (u64, u64) = (0xc000_0000, 0x3c00_0000);
const MMIO64: (u64, u64) = (1 << 36, 1 << 40);
const IO: (u64, u64) = (0x6000, 0xa000);
const RAM_SIZE: usize = 0x10_0000;

/// The INTx swizzle of the layout (devices cannot depend on arch).
fn swizzle(slot: u8, pin: u8) -> u32 {
    16 + (u32::from(slot) + u32::from(pin)) % 8
}

#[derive(Default)]
struct Exits(Mutex<Vec<GuestExit>>);

impl ExitSink for Exits {
    fn request_exit(&self, why: GuestExit) {
        self.0.lock().unwrap().push(why);
    }
}

type Mem = GuestMemoryMmap<()>;

/// Mapped `(base, len)` ranges.
type Ranges = Vec<(u64, u64)>;

struct Rig {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    irq: FakeInterrupts,
    exits: Arc<Exits>,
    platform: PciPlatform,
    mem: Mem,
}

impl Rig {
    fn new() -> Self {
        Self::with_windows(PciWindows {
            mmio32: MMIO32,
            mmio64: Some(MMIO64),
            io: IO,
        })
    }

    fn with_windows(windows: PciWindows) -> Self {
        let pio = Arc::new(Bus::new("pio"));
        let mmio = Arc::new(Bus::new("mmio"));
        let irq = FakeInterrupts::new();
        let exits = Arc::new(Exits::default());
        let platform = PciPlatform::new(PciPlatformConfig {
            pio: pio.clone(),
            mmio: mmio.clone(),
            windows,
            irq: Arc::new(irq.clone()),
            intx_gsi: Arc::new(swizzle),
            exit: exits.clone(),
        })
        .unwrap();
        pio.insert(platform.config_io_device(), CF8, PCI_CONFIG_IO_LEN)
            .unwrap();
        mmio.insert(platform.ecam_device(), ECAM, ECAM_SIZE)
            .unwrap();
        let mem = Mem::from_ranges(&[(GuestAddress(0), RAM_SIZE)]).unwrap();
        Rig {
            pio,
            mmio,
            irq,
            exits,
            platform,
            mem,
        }
    }

    fn testdev(&self) -> Arc<Mutex<TestDevice<Mem>>> {
        Arc::new(Mutex::new(
            TestDevice::new(self.mem.clone(), &self.irq).unwrap(),
        ))
    }

    /// Adds a test device at `slot` and returns it.
    fn add_testdev(&self, slot: u8) -> Arc<Mutex<TestDevice<Mem>>> {
        let d = self.testdev();
        self.platform.add_device(slot, d.clone()).unwrap();
        d
    }

    fn ecam_addr(dev: u8, func: u8, off: u16) -> u64 {
        ECAM + (u64::from(dev) << 15) + (u64::from(func) << 12) + u64::from(off)
    }

    fn ecam_read(&self, dev: u8, off: u16, len: usize) -> u64 {
        let mut b = [0u8; 8];
        assert!(self.mmio.read(Self::ecam_addr(dev, 0, off), &mut b[..len]));
        u64::from_le_bytes(b)
    }

    fn ecam_write(&self, dev: u8, off: u16, len: usize, v: u64) {
        assert!(self
            .mmio
            .write(Self::ecam_addr(dev, 0, off), &v.to_le_bytes()[..len]));
    }

    fn ecam_read32(&self, dev: u8, off: u16) -> u32 {
        self.ecam_read(dev, off, 4) as u32
    }

    fn ecam_write32(&self, dev: u8, off: u16, v: u32) {
        self.ecam_write(dev, off, 4, v.into());
    }

    fn cf8_address(dev: u8, func: u8, off: u16) -> u32 {
        0x8000_0000 | (u32::from(dev) << 11) | (u32::from(func) << 8) | u32::from(off & 0xfc)
    }

    fn cf8_read(&self, dev: u8, off: u16, len: usize) -> u64 {
        self.pio
            .write(CF8, &Self::cf8_address(dev, 0, off).to_le_bytes());
        let mut b = [0u8; 8];
        assert!(self.pio.read(0xcfc + u64::from(off & 3), &mut b[..len]));
        u64::from_le_bytes(b)
    }

    fn cf8_write(&self, dev: u8, off: u16, len: usize, v: u64) {
        self.pio
            .write(CF8, &Self::cf8_address(dev, 0, off).to_le_bytes());
        assert!(self
            .pio
            .write(0xcfc + u64::from(off & 3), &v.to_le_bytes()[..len]));
    }

    fn mmio_read32(&self, addr: u64) -> u32 {
        let mut b = [0u8; 4];
        self.mmio.read(addr, &mut b);
        u32::from_le_bytes(b)
    }

    fn mmio_write32(&self, addr: u64, v: u32) -> bool {
        self.mmio.write(addr, &v.to_le_bytes())
    }

    /// The address BAR `bar` (32-bit or the low half) of `dev` holds, through ECAM.
    fn bar_addr(&self, dev: u8, bar: u16) -> u64 {
        let low = self.ecam_read32(dev, 0x10 + 4 * bar);
        let mut a = u64::from(low & !0xf);
        if low & 0x7 == 0x4 {
            a |= u64::from(self.ecam_read32(dev, 0x14 + 4 * bar)) << 32;
        }
        a
    }

    /// Mapped ranges on both buses, excluding the config mechanisms.
    fn bar_ranges(&self) -> (Ranges, Ranges) {
        let pio = self.pio.ranges().filter(|&(b, _)| b != CF8).collect();
        let mmio = self.mmio.ranges().filter(|&(b, _)| b != ECAM).collect();
        (pio, mmio)
    }

    fn root_mapped(&self) -> Vec<(u8, super::DecodedBar)> {
        lock(self.platform.root()).mapped()
    }
}
