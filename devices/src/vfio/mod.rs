//! PCI passthrough through Linux VFIO.
//!
//! | Module | What |
//! |---|---|
//! | [`ops`] | [`VfioDeviceOps`]: the syscalls the device model makes on a VFIO device (mockable) |
//! | `sys` | the kernel implementation: [`VfioDeviceFd`] and the ioctl wrappers (their `unsafe`, each a thin wrapper) |
//! | [`container`] | [`VfioContainer`] and [`LegacyContainer`]: groups, DMA mapping, opening devices |
//! | `device` | [`VfioPciDevice`]: the [`crate::pci::PciDevice`] + [`crate::pci::BarAccess`] model |
//! | `config` | its config space: shadowed registers, passed-through registers, hidden capabilities |
//! | `bars` | its BARs: mmapped areas as guest memory through [`GuestMemoryMapper`], the rest trapped |
//! | `irqs` | its MSI, MSI-X and INTx, wired eventfd → irqfd with `VFIO_DEVICE_SET_IRQS` |
//! | `msix_reloc` | [`MsixRelocation`]: moving the emulated MSI-X table off the device's registers |
//! | `options` | [`VfioPciOptions`]: ROM, reset host, MSI-X relocation, for [`VfioPciDevice::with_options`] |
//! | `p2p` | [`PeerDmaMapper`]: BAR memory DMA-mapped into the container where the guest puts it (peer-to-peer DMA) |
//! | [`reset`] | [`ResetStrategy`]: how the device is reset (FLR, PM, bus hot reset, none), chosen at open |
//!
//! # Wiring it up (what the VMM does)
//!
//! A VMM on KVM takes the trait implementations from the `kvm` module (feature `kvm`) and
//! writes no glue; the whole sequence (the core of `examples/minimal_vmm.rs`, which runs it in
//! the nested rig):
//!
//! ```no_run
//! # #[cfg(feature = "kvm")]
//! # fn wire(
//! #     kvm: &kvm_ioctls::Kvm,
//! #     vm: std::sync::Arc<kvm_ioctls::VmFd>,
//! #     mem: &vm_memory::GuestMemoryMmap,
//! #     pci: &vfiovm_devices::pci::PciPlatform,
//! #     irq: &vfiovm_devices::kvm::KvmInterruptManager,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::{Arc, Mutex};
//! use vfiovm_devices::kvm::{DeviceSlots, KvmVfioDevice};
//! use vfiovm_devices::vfio::host::{self, HostRoot};
//! use vfiovm_devices::vfio::{LegacyContainer, VfioContainer, VfioDeviceAddress, VfioPciDevice};
//!
//! // The host's state first: bound to vfio-pci, group viable (a clear error otherwise).
//! let bdf = host::parse_bdf("0000:01:00.0")?;
//! let report = host::check_device(&HostRoot::default(), &bdf)?;
//! let container = LegacyContainer::new()?; // /dev/vfio/vfio, type-1 v2
//! container.add_group(report.group)?; // /dev/vfio/N, once per group
//! let kvm_vfio = KvmVfioDevice::new(&vm)?; // KVM_DEV_TYPE_VFIO
//! kvm_vfio.add_groups_of(&container)?; // KVM_DEV_VFIO_GROUP_ADD with each group's fd
//! container.map_guest_memory(mem)?; // IOVA = GPA, kept alive by the container
//! let name = bdf.to_string();
//! let fd = container.open_device(&VfioDeviceAddress::new(&name, report.group, None)?)?;
//! // BAR mmaps become KVM memory slots after guest RAM's (here: one RAM region).
//! let slots = Arc::new(DeviceSlots::new(vm.clone(), 1, kvm.get_nr_memslots() as u32));
//! let mut dev = VfioPciDevice::new(&name, Box::new(fd), irq, slots, None)?;
//! dev.reset();
//! pci.add_device(1, Arc::new(Mutex::new(dev)))?; // BARs placed, INTx wired, BARs mapped
//! // Teardown: the platform (its devices: interrupts off, BAR slots gone, reset, closed),
//! // then `kvm_vfio`, then `container` (DMA unmapped, groups released). The container also
//! // waits for its devices whatever the order.
//! # drop((kvm_vfio, container));
//! # Ok(())
//! # }
//! ```

pub mod container;
pub mod host;
pub mod ops;
pub mod reset;

mod bars;
mod config;
mod device;
mod irqs;
mod msix_reloc;
mod options;
mod p2p;
mod sys;

#[cfg(any(test, feature = "test-util"))]
pub mod mock;
#[cfg(test)]
mod tests;

pub use bars::{BarError, GuestMemoryMapper, MapperError, SlotHandle, HOST_PAGE_SIZE};
pub use config::{ConfigReadError, HIDDEN_EXT_CAPS};
pub use container::{ContainerError, LegacyContainer, VfioContainer, VfioDeviceAddress};
pub use device::{VfioPciDevice, VfioPciError};
pub use irqs::IrqSetupError;
pub use msix_reloc::MsixRelocation;
pub use ops::{HotResetDevice, OpsError, VfioDeviceOps};
pub use options::VfioPciOptions;
pub use p2p::PeerDmaMapper;
pub use reset::{HostResetMethods, ResetHost, ResetStrategy};
pub use sys::VfioDeviceFd;
