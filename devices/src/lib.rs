//! Devices for vfiovm: the port-I/O/MMIO bus, legacy PC devices and PCI devices, including the
//! VFIO passthrough device. This crate does not depend on the VMM: another VMM can use it by
//! implementing the small traits it asks for ([`exit::ExitSink`], the interrupt traits).
#![deny(missing_docs)]

pub mod bus;
pub mod exit;

pub use bus::{Bus, BusDevice, BusError, SharedBusDevice};
pub use exit::{ExitSink, GuestExit};
pub mod interrupt;
pub mod legacy;
pub mod pci;
pub mod vfio;
