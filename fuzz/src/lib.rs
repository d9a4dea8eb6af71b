//! The harness behind vfiovm's fuzz targets (`fuzz_targets/`): input decoding, the layouts of
//! the fake VFIO device, the PCI platform assembled as the VMM does it, the guest operations,
//! and the invariants checked after every operation. The fakes for what the device models ask
//! of the VMM (interrupt routing, guest memory slots, a VFIO device) are the devices crate's
//! public test doubles (feature `test-util`), in strict mode. See `docs/fuzzing.md`.
#![deny(missing_docs)]

pub mod checks;
pub mod input;
pub mod ops;
pub mod rig;
pub mod shape;
pub mod views;
pub mod virtio_model;
pub mod virtq;
