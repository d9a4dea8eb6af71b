//! The reset strategy: chosen once from `VFIO_DEVICE_FLAGS_RESET`, the host's `reset_method` and
//! the bus hot reset info, then used by every reset; and a guest's function-level reset.

use std::sync::Arc;

use super::Rig;
use crate::interrupt::fake::FakeInterrupts;
use crate::pci::PciDevice;
use crate::vfio::mock::{MockBuilder, MockMapper};
use crate::vfio::ops::{SetIrqs, MSI_IRQ};
use crate::vfio::{HostResetMethods, HotResetDevice, ResetHost, ResetStrategy, VfioPciDevice};

const NAME: &str = "0000:06:0d.0";

fn rig_with(b: &mut MockBuilder, host: &ResetHost) -> Rig {
    let mock = b.build();
    let irq = FakeInterrupts::new();
    let mapper = Arc::new(MockMapper::default());
    let dev = VfioPciDevice::with_reset(
        NAME,
        Box::new(mock.clone()),
        &irq,
        mapper.clone(),
        None,
        host,
    )
    .unwrap();
    Rig {
        mock,
        irq,
        mapper,
        dev,
    }
}

fn listed(m: &[&str]) -> HostResetMethods {
    HostResetMethods::Listed(m.iter().map(|s| s.to_string()).collect())
}

fn methods(m: HostResetMethods) -> ResetHost {
    ResetHost {
        methods: m,
        groups: Vec::new(),
    }
}

/// 0000:06:0d.f in IOMMU group `group`.
fn dep(function: u8, group: u32) -> HotResetDevice {
    HotResetDevice {
        group,
        segment: 0,
        bus: 6,
        devfn: (0x0d << 3) | function,
    }
}

/// This function (group 26) and its sibling 0000:06:0d.1 (group 27) share a bus; neither can be
/// reset alone.
fn bus_shared() -> MockBuilder {
    let mut b = MockBuilder::new(0x8086, 0x10d3);
    b.no_reset().hot_reset_info(vec![dep(0, 26), dep(1, 27)]);
    b
}

/// A device that `VFIO_DEVICE_RESET` resets takes the kernel's first method: FLR, PM, or
/// another one by name; without `reset_method` the kernel's method is not known. No bus reset
/// is asked about.
#[test]
fn a_device_the_kernel_resets_takes_its_first_method() {
    let cases = [
        (listed(&["flr", "pm", "bus"]), ResetStrategy::Flr),
        (listed(&["af_flr"]), ResetStrategy::Flr),
        (listed(&["pm", "bus"]), ResetStrategy::Pm),
        (
            listed(&["device_specific", "flr"]),
            ResetStrategy::Kernel {
                method: Some("device_specific".into()),
            },
        ),
        (
            listed(&["bus"]),
            ResetStrategy::Kernel {
                method: Some("bus".into()),
            },
        ),
        (
            HostResetMethods::Absent { reset_file: true },
            ResetStrategy::Kernel { method: None },
        ),
        (
            HostResetMethods::Unknown,
            ResetStrategy::Kernel { method: None },
        ),
    ];
    for (m, want) in cases {
        let mut b = MockBuilder::new(0x8086, 0x10d3);
        // A bus reset is there too, but a function reset comes first.
        b.hot_reset_info(vec![dep(0, 26)]);
        let mut r = rig_with(&mut b, &methods(m.clone()));
        assert_eq!(r.dev.reset_strategy(), &want, "{m:?}");
        assert!(r.dev.reset_strategy().usable());
        r.dev.reset();
        let st = r.mock.st();
        assert_eq!((st.resets, st.hot_resets.len()), (1, 0), "{m:?}");
    }
}

/// The plain constructor knows no sysfs and no groups: `VFIO_DEVICE_RESET` when the device has
/// it, no reset otherwise.
#[test]
fn new_chooses_from_the_device_fd_alone() {
    let r = Rig::new(&mut MockBuilder::new(0x8086, 0x10d3));
    assert_eq!(
        r.dev.reset_strategy(),
        &ResetStrategy::Kernel { method: None }
    );
    let r = Rig::new(&mut bus_shared());
    assert!(!r.dev.reset_strategy().usable());
}

/// An empty `reset_method` (reset disabled by the host's administrator) is obeyed, even for a
/// device VFIO could reset, and the fix is named.
#[test]
fn reset_disabled_on_the_host_is_respected() {
    let mut r = rig_with(&mut MockBuilder::new(0x8086, 0x10d3), &methods(listed(&[])));
    let ResetStrategy::None { why } = r.dev.reset_strategy().clone() else {
        panic!("{:?}", r.dev.reset_strategy());
    };
    assert!(why.contains("reset_method is empty"), "{why}");
    assert!(
        why.contains("echo default > /sys/bus/pci/devices/0000:06:0d.0/reset_method"),
        "{why}"
    );
    r.dev.reset();
    assert_eq!(r.mock.st().resets, 0);
    assert!(r.violations().is_empty());
}

/// No function reset, every group on the bus held: a bus hot reset with every group's fd, in
/// group order, whenever the device is reset (teardown included); never `VFIO_DEVICE_RESET`.
#[test]
fn bus_hot_reset_passes_every_group_fd() {
    let host = ResetHost {
        methods: HostResetMethods::Absent { reset_file: false },
        groups: vec![(30, 102), (27, 101), (26, 100)],
    };
    let mut r = rig_with(&mut bus_shared(), &host);
    assert_eq!(
        r.dev.reset_strategy(),
        &ResetStrategy::BusHotReset {
            groups: vec![26, 27],
            devices: vec!["0000:06:0d.0".into(), "0000:06:0d.1".into()],
        }
    );
    let shown = r.dev.reset_strategy().to_string();
    assert!(
        shown.contains("VFIO_DEVICE_PCI_HOT_RESET with groups 26, 27"),
        "{shown}"
    );
    r.dev.reset();
    assert_eq!(r.mock.st().hot_resets, vec![vec![100, 101]]);
    let Rig { mock, dev, .. } = r;
    drop(dev);
    let st = mock.st();
    assert_eq!(st.hot_resets.len(), 2, "teardown resets the same way");
    assert_eq!(st.resets, 0);
    assert!(st.violations.is_empty(), "{:?}", st.violations);
}

/// A function on the bus whose group this VMM does not hold: no reset at all, and the reason
/// names that function and the fix.
#[test]
fn a_foreign_group_on_the_bus_means_no_reset() {
    let host = ResetHost {
        methods: HostResetMethods::Absent { reset_file: false },
        groups: vec![(26, 100)],
    };
    let mut r = rig_with(&mut bus_shared(), &host);
    let ResetStrategy::None { why } = r.dev.reset_strategy().clone() else {
        panic!("{:?}", r.dev.reset_strategy());
    };
    assert!(why.contains("0000:06:0d.1 (IOMMU group 27)"), "{why}");
    assert!(why.contains("--device"), "{why}");
    r.dev.reset();
    let st = r.mock.st();
    assert_eq!((st.resets, st.hot_resets.len()), (0, 0));
}

/// No function reset and no bus reset (the kernel answers ENODEV): none, with the kernel's
/// answer in the reason.
#[test]
fn no_function_and_no_bus_reset_means_none() {
    let mut b = MockBuilder::new(0x8086, 0x10d3);
    b.no_reset();
    let r = rig_with(
        &mut b,
        &methods(HostResetMethods::Absent { reset_file: false }),
    );
    let ResetStrategy::None { why } = r.dev.reset_strategy() else {
        panic!("{:?}", r.dev.reset_strategy());
    };
    assert!(why.contains("cannot be reset alone"), "{why}");
    assert!(why.contains("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"), "{why}");
}

/// A PCI Express capability: Device Capabilities with FLR (bit 28) when `flr`, Device Control
/// 0x2810 (max read request 512 bytes, relaxed ordering... as a driver might leave it). Returns
/// the builder and the capability's offset.
fn pcie_device(flr: bool) -> (MockBuilder, u16, u16) {
    let mut b = MockBuilder::new(0x1b36, 0x0010);
    let msi = b.msi(1, true, false);
    let mut body = vec![0u8; 0x3a];
    body[0..2].copy_from_slice(&0x0002u16.to_le_bytes()); // version 2, endpoint
    let devcap: u32 = if flr { 1 << 28 } else { 0 };
    body[2..6].copy_from_slice(&devcap.to_le_bytes());
    body[6..8].copy_from_slice(&0x2810u16.to_le_bytes());
    let cap = b.cap(0x10, &body);
    (b, cap, msi)
}

/// The guest sets Initiate Function-Level Reset (with a 16-bit, a 32-bit and an 8-bit write):
/// each is one reset through the strategy, with the device's MSI quiesced first; the bit never
/// reaches the device and reads back 0, while the other Device Control bits of the same write
/// do reach it.
#[test]
fn guest_flr_resets_the_device_once_and_reads_back_zero() {
    let (mut b, cap, msi) = pcie_device(true);
    let mut r = rig_with(&mut b, &methods(listed(&["flr", "bus"])));
    assert!(r.dev.guest_flr());
    assert_eq!(r.dev.reset_strategy(), &ResetStrategy::Flr);
    let devctl = cap + 8;
    // MSI on, as a driver would have it.
    r.w32(msi + 4, 0xfee0_0000);
    r.w16(msi + 2, 1);
    assert_eq!(r.r16(msi + 2) & 1, 1);
    r.mock.st().set_irqs.clear();

    r.w16(devctl, 0x8000 | 0x2010);
    assert_eq!(r.mock.st().resets, 1, "one reset per FLR");
    assert_eq!(r.mock.st().set_irqs[0], SetIrqs::Disable { index: MSI_IRQ });
    assert_eq!(r.r16(msi + 2) & 1, 0, "MSI is off after the FLR");
    assert_eq!(r.r16(devctl) & 0x8000, 0, "Initiate FLR reads back 0");
    assert_eq!(
        r.r16(devctl),
        0x2010,
        "the other bits of the write reached the device"
    );

    r.w32(devctl, 0x8000 | 0x2810);
    assert_eq!(r.mock.st().resets, 2);
    r.dev.config_write(devctl + 1, &[0x80 | 0x28]);
    assert_eq!(r.mock.st().resets, 3);
    assert_eq!(r.r32(devctl) & 0x8000, 0);
    // Writes that leave the bit clear, or miss the register, reset nothing.
    r.w16(devctl, 0x2810);
    r.dev.config_write(devctl + 2, &[0xff, 0xff]);
    r.dev.config_write(devctl - 1, &[0xff]);
    assert_eq!(r.mock.st().resets, 3);
    for (off, bytes) in r
        .mock
        .config_writes_in(u64::from(devctl)..u64::from(devctl) + 2)
    {
        let hi = usize::from(devctl + 1) - off as usize;
        assert_eq!(bytes.get(hi).copied().unwrap_or(0) & 0x80, 0, "{bytes:x?}");
    }
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

/// A guest FLR goes through the chosen strategy: a bus hot reset with every group's fd.
#[test]
fn guest_flr_uses_the_bus_hot_reset() {
    let (mut b, cap, _) = pcie_device(true);
    b.no_reset().hot_reset_info(vec![dep(0, 26), dep(1, 27)]);
    let host = ResetHost {
        methods: HostResetMethods::Absent { reset_file: false },
        groups: vec![(26, 100), (27, 101)],
    };
    let mut r = rig_with(&mut b, &host);
    r.w16(cap + 8, 0x8000);
    let st = r.mock.st();
    assert_eq!(st.hot_resets, vec![vec![100, 101]]);
    assert_eq!(st.resets, 0);
}

/// Without FLR in Device Capabilities the bit is dropped: nothing is reset, nothing reaches the
/// device.
#[test]
fn guest_flr_is_ignored_without_devcap_flr() {
    let (mut b, cap, _) = pcie_device(false);
    let mut r = rig_with(&mut b, &methods(listed(&["pm"])));
    assert!(!r.dev.guest_flr());
    r.w16(cap + 8, 0x8000 | 0x2810);
    assert_eq!(r.mock.st().resets, 0);
    assert_eq!(r.r16(cap + 8), 0x2810);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}
