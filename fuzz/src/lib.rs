//! The harness behind vfiovm's fuzz targets (`fuzz_targets/`): input decoding, checking fakes
//! for what the device models ask of the VMM (interrupt routing, guest memory slots, a VFIO
//! device), the PCI platform assembled as the VMM does it, the guest operations, and the
//! invariants checked after every operation. See `docs/fuzzing.md`.
#![deny(missing_docs)]

pub mod checks;
pub mod input;
pub mod irq;
pub mod mapper;
pub mod ops;
pub mod rig;
pub mod vfio_mock;
pub mod views;
