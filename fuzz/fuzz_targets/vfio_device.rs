//! The passthrough device model over a fake VFIO device whose layout the input chooses: config
//! size, BAR kinds and region sizes and flags, sparse mmap areas, ROM, standard and extended
//! capabilities (MSI, MSI-X with any table/PBA placement, PM, hidden ones), interrupt counts and
//! flags, injected SET_IRQS and memory-slot failures, a vector limit, MSI-X relocation `auto`
//! (the relocated layout whenever a BAR reports MSIX_MAPPABLE) or `off`. Then guest operations
//! through the platform, direct BAR handler calls and device resets. Invariants: the fake
//! device's and the mapper's (the devices crate's test doubles, strict), and `Rig::check`.
#![no_main]

use arbitrary::Unstructured;
use devices::vfio::MsixRelocation;
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::one_in;
use vfiovm_fuzz::rig::{Rig, VfioSpec};
use vfiovm_fuzz::shape::Shape;

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let shape = Shape::from_fuzz(u)?;
    let vfio = VfioSpec {
        slot: 3,
        shape,
        fail_set_irqs: one_in(u, 16)?,
        fail_map: one_in(u, 16)?,
        msix_relocation: if one_in(u, 4)? {
            MsixRelocation::Off
        } else {
            MsixRelocation::Auto
        },
    };
    let limit = if one_in(u, 8)? {
        u.int_in_range(0..=64)?
    } else {
        u32::MAX
    };
    if let Some(rig) = Rig::new(&[], Some(vfio), limit) {
        // Running out of input ends the run early; that is not a failure.
        let _ = vfiovm_fuzz::ops::run(&rig, u);
        rig.finish();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
