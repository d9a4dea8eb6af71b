//! KVM implementations of the traits this crate's devices ask for, so a VMM built on
//! kvm-ioctls passes a device through without glue of its own (feature `kvm`).
//!
//! | Type | Implements | What |
//! |---|---|---|
//! | [`KvmInterruptManager`] | [`crate::interrupt::InterruptManager`] | the VM's GSI routing table, MSI vectors and INTx lines as irqfds |
//! | [`DeviceSlots`] | [`crate::vfio::GuestMemoryMapper`] | KVM memory slots for BAR mmaps, moved when the guest moves a BAR |
//! | [`KvmVfioDevice`] | — | KVM's VFIO pseudo-device, told about every VFIO group |
//! | [`KvmIoEvents`] | [`crate::ioevent::IoEventRegistrar`] | `KVM_IOEVENTFD`: doorbell writes (virtio queue notifies, pci-testdev's eventfd tests) signal an eventfd without an exit |
//!
//! The GSI layout is the PC one KVM's in-kernel irqchip has on x86: [`IOAPIC_PINS`] IOAPIC
//! pins (GSIs 0–23, the PIC behind 0–15), MSI GSIs from [`MSI_GSI_BASE`].

pub mod interrupts;
pub mod ioevent;
pub mod slots;
pub mod vfio;

pub use interrupts::{InterruptsError, KvmInterruptManager};
pub use ioevent::KvmIoEvents;
pub use slots::{DeviceSlots, SlotError};
pub use vfio::{KvmVfioDevice, KvmVfioError};

/// Pins of KVM's in-kernel IOAPIC (`KVM_IOAPIC_NUM_PINS`); INTx lines live on them.
pub const IOAPIC_PINS: u32 = 24;
/// The first GSI handed out for MSI routes, after the IOAPIC's.
pub const MSI_GSI_BASE: u32 = 24;
