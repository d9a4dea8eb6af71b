//! Test doubles for the passthrough device model (feature `test-util`): a fake VFIO device
//! ([`MockDevice`], built with [`MockBuilder`]) with a config space, regions, capabilities and
//! interrupts, which records every `SET_IRQS`, region access and mmap; and a [`MockMapper`], the
//! [`GuestMemoryMapper`] that records the memory slots the model asks for.
//!
//! Both check the requests a correct model never makes and record each as a *violation*
//! ([`MockDevice::violations`], [`MapperState::violations`]), or panic on it in strict mode
//! ([`MockBuilder::strict`], [`MockMapper::strict`], for fuzzing). The fake device refuses:
//!
//! - a region access that is empty or reaches past the region, names a region the device did not
//!   report, or carries region info other than the device reported;
//! - a config write that reaches bytes the model owns: the header except command, status, cache
//!   line size and latency timer (so the BAR and ROM BAR registers), the headers of the
//!   capabilities the lists reach from 0x34 and 0x100, and the bodies of the first MSI and MSI-X
//!   capabilities (the model emulates them) — as far as the capabilities were added with
//!   [`MockBuilder::cap`] and friends;
//! - an mmap of a region without the mmap flag, unaligned, or outside the union of the region's
//!   mmap areas;
//! - `SET_IRQS` with more vectors than the device has for that index, a non-zero start, an
//!   unmask eventfd while INTx is off, or enabling one interrupt type while another is enabled
//!   (the kernel refuses that);
//! - `VFIO_DEVICE_RESET` of a device without reset support;
//! - `VFIO_DEVICE_PCI_HOT_RESET` of a device whose hot reset info answers an error.
//!
//! `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` answers what [`MockBuilder::hot_reset_info`] gave
//! (`ENODEV` without it); every hot reset's group fds are recorded ([`MockState::hot_resets`]).
//!
//! Region contents are a pattern, `offset as u8 ^ (index << 4)`, except the config space and a
//! ROM given with [`MockBuilder::rom`]; writes are kept. The config space's status register
//! behaves as hardware's: read-only but for the error bits a write of 1 clears.
//!
//! ```
//! use std::sync::Arc;
//! use vfiovm_devices::interrupt::fake::FakeInterrupts;
//! use vfiovm_devices::pci::{BarAccess, PciDevice};
//! use vfiovm_devices::vfio::mock::{MockBuilder, MockMapper};
//! use vfiovm_devices::vfio::VfioPciDevice;
//!
//! let mut b = MockBuilder::new(0x8086, 0x1521);
//! b.mem_bar(0, 0x4000, false, false).msix(4, (0, 0x2000), (0, 0x3000));
//! let mock = b.build();
//! let mapper = Arc::new(MockMapper::default().backed_by(&mock));
//! let irq = FakeInterrupts::new();
//! let mut dev =
//!     VfioPciDevice::new("0000:06:0d.0", Box::new(mock.clone()), &irq, mapper.clone(), None)
//!         .unwrap();
//! let mut id = [0u8; 4];
//! dev.config_read(0, &mut id);
//! assert_eq!(u32::from_le_bytes(id), 0x1521_8086);
//! dev.config_write(0x10, &0xe000_0000u32.to_le_bytes()); // BAR 0: stays in the model
//! dev.config_write(0x04, &2u16.to_le_bytes()); // memory decoding on
//! dev.bar_moved(0, None, Some(0xe000_0000));
//! assert!(!mapper.live().is_empty(), "BAR 0's mmappable pages are guest memory");
//! assert!(mock.violations().is_empty());
//! ```

use std::collections::BTreeMap;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_NUM_IRQS,
    VFIO_PCI_NUM_REGIONS, VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vm_memory::MmapRegion;

use super::bars::{GuestMemoryMapper, MapperError, SlotHandle, HOST_PAGE_SIZE};
use super::ops::{
    DeviceInfo, HotResetDevice, IrqInfo, OpsError, RegionInfo, SetIrqs, SparseArea, VfioDeviceOps,
    CONFIG_REGION, INTX_IRQ, MSIX_IRQ, MSI_IRQ, ROM_REGION,
};

const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
/// The MSI capability ID.
const MSI_ID: u8 = 0x05;
/// The MSI-X capability ID.
const MSIX_ID: u8 = 0x11;
/// The power management capability ID.
const PM_ID: u8 = 0x01;
/// The largest region the fake device mmaps (the mapping is real, if untouched).
const MAX_MMAP: u64 = 1 << 32;

/// A byte of a region that holds the pattern: `offset as u8 ^ (index << 4)`.
pub fn pattern(index: u32, offset: u64) -> u8 {
    (offset as u8) ^ ((index as u8) << 4)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

mod builder;
mod device;
mod mapper;

pub use builder::*;
pub use device::*;
pub use mapper::*;
