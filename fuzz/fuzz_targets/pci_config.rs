//! The PCI platform as a guest sees it: the type-1 ports (0xCF8 address, 0xCF9 reset control,
//! 0xCFC data) and ECAM reaching the host bridge, two test devices and a passthrough device
//! with a rich layout over the fake VFIO device; BAR sizing and moves, decode toggles, MSI and
//! MSI-X programming, MSI-X table and PBA traffic through the BARs, with the table where the
//! device has it or relocated to the upper half of BAR 0. Invariants: `Rig::check`.
#![no_main]

use arbitrary::Unstructured;
use devices::vfio::MsixRelocation;
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::rig::{Rig, VfioSpec};
use vfiovm_fuzz::shape::Shape;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // The rich layout as the device has it, or (the kernel reporting BAR 0 mmappable whole, the
    // MSI-X table sharing its page with registers) relocated to BAR 0's upper half.
    let mut shape = Shape::rich();
    if u.arbitrary::<bool>().unwrap_or(false) {
        shape.device.msix_mappable(0);
    }
    let vfio = VfioSpec {
        slot: 3,
        shape,
        fail_set_irqs: false,
        fail_map: false,
        msix_relocation: MsixRelocation::Auto,
    };
    let rig = Rig::new(&[1, 5], Some(vfio), u32::MAX).expect("the fixed platform builds");
    // Running out of input ends the run early; that is not a failure.
    let _ = vfiovm_fuzz::ops::run(&rig, &mut u);
    rig.finish();
});
