//! PCI passthrough through Linux VFIO.
//!
//! | Module | What |
//! |---|---|
//! | [`ops`] | [`VfioDeviceOps`]: the syscalls the device model makes on a VFIO device (mockable) |
//! | `sys` | the kernel implementation: [`VfioDeviceFd`] and the ioctl wrappers (the only `unsafe`) |
//! | [`container`] | [`VfioContainer`] and [`LegacyContainer`]: groups, DMA mapping, opening devices |
//! | `device` | [`VfioPciDevice`]: the [`crate::pci::PciDevice`] + [`crate::pci::BarAccess`] model |
//! | `config` | its config space: shadowed registers, passed-through registers, hidden capabilities |
//! | `bars` | its BARs: mmapped areas as guest memory through [`GuestMemoryMapper`], the rest trapped |
//! | `irqs` | its MSI, MSI-X and INTx, wired eventfd → irqfd with `VFIO_DEVICE_SET_IRQS` |
//!
//! # Wiring it up (what the VMM does)
//!
//! ```text
//! let container = LegacyContainer::new()?;                 // /dev/vfio/vfio, type-1 v2
//! for each --device:  container.add_group(group)?;         // /dev/vfio/N, once per group
//! for fd in container.kvm_files(): KVM_DEV_VFIO_FILE_ADD(fd) on the VM's KVM VFIO device
//! for each guest RAM region: unsafe { container.map_dma(gpa, size, host_addr) }?   // IOVA = GPA
//! for each --device:
//!     let fd = container.open_device(&VfioDeviceAddress::new(bdf, group, vf_token)?)?;
//!     let dev = VfioPciDevice::new(bdf, Box::new(fd), &*irq_manager, mapper.clone(), rom)?;
//!     platform.add_device(slot, Arc::new(Mutex::new(dev)))?;
//! teardown: drop the devices (IRQs off, BAR memory unmapped, reset, fd closed), then the
//! container (DMA unmapped, groups detached, container closed) — the container waits for its
//! devices whatever the order.
//! ```
//!
//! `mapper` is the VMM's [`GuestMemoryMapper`] (KVM memory slots for BAR mmaps).

pub mod container;
pub mod host;
pub mod ops;

mod bars;
mod config;
mod device;
mod irqs;
mod sys;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

pub use bars::{BarError, GuestMemoryMapper, MapperError, SlotHandle, HOST_PAGE_SIZE};
pub use config::{ConfigReadError, HIDDEN_EXT_CAPS};
pub use container::{ContainerError, LegacyContainer, VfioContainer, VfioDeviceAddress};
pub use device::{VfioPciDevice, VfioPciError};
pub use irqs::IrqSetupError;
pub use ops::{OpsError, VfioDeviceOps};
pub use sys::VfioDeviceFd;
