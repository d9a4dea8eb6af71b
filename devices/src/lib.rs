//! Devices for vfiovm: the port-I/O/MMIO bus, legacy PC devices and PCI devices, including the
//! VFIO passthrough device. This crate does not depend on the VMM: another VMM can use it by
//! implementing the small traits it asks for ([`exit::ExitSink`], the interrupt traits and
//! [`vfio::GuestMemoryMapper`], [`ioevent::IoEventRegistrar`]), or, on KVM, by taking this crate's implementations of them from
//! the `kvm` module (feature `kvm`).
//!
//! # Features
//!
//! | Feature | Default | What it adds |
//! |---|---|---|
//! | `legacy` | yes | the PC devices in `legacy` (serial, i8042, RTC, ACPI PM, debug exit) |
//! | `firmware` | yes | `firmware`: fw_cfg (with DMA), the ACPI table-loader writer, the CFI flash OVMF keeps its variables in |
//! | `kvm` | no | `kvm`: GSI routing with irqfds, BAR memory slots, the KVM VFIO device |
//! | `virtio` | yes | `virtio`: the virtio 1.x PCI transport, virtio-rng, virtio-blk, virtio-net, virtio-console and virtio-9p (pulls in rust-vmm `virtio-queue` and `virtio-bindings`, `io-uring`, and the `p9` crate's 9P server) |
//! | `test-util` | no | the test doubles `vfio::mock`, `interrupt::fake` and `ioevent::fake` |
//!
//! # Foreign types
//!
//! Public signatures use types of other crates; they are re-exported here so an embedder uses
//! the same versions: [`vm_memory`] (`MmapRegion`), [`vmm_sys_util`] (`EventFd`),
//! [`vfio_bindings`] (flag constants), and with `kvm` also `kvm_ioctls` and `kvm_bindings`.
#![deny(missing_docs)]

pub mod bus;
pub mod console_tail;
pub mod exit;

pub use bus::{Bus, BusDevice, BusError, SharedBusDevice};
pub use exit::{ExitSink, GuestEvent, GuestExit};
#[cfg(feature = "firmware")]
pub mod firmware;
pub mod interrupt;
pub mod ioevent;
#[cfg(feature = "kvm")]
pub mod kvm;
#[cfg(feature = "legacy")]
pub mod legacy;
pub mod pci;
pub mod vfio;
#[cfg(feature = "virtio")]
pub mod virtio;

#[cfg(feature = "kvm")]
pub use kvm_bindings;
#[cfg(feature = "kvm")]
pub use kvm_ioctls;
pub use vfio_bindings;
pub use vm_memory;
pub use vmm_sys_util;

/// A non-blocking eventfd that is closed on `exec`: every eventfd this crate makes (interrupts,
/// ioeventfds, worker stop and wake signals) comes from here, so none of them leaks into a
/// process the embedding VMM starts.
pub fn new_eventfd() -> std::io::Result<vmm_sys_util::eventfd::EventFd> {
    vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
}
