//! Devices that cannot be passed through: each refusal names the device and the cause
//! (docs/errors.md, the E-VFIO-DEVICE-* rows).

use std::io;
use std::sync::Arc;

use vm_memory::mmap::MmapRegion;

use super::super::mock::{MockBuilder, MockDevice, MockMapper};
use super::super::ops::{
    DeviceInfo, IrqInfo, OpsError, RegionInfo, SetIrqs, VfioDeviceOps, CONFIG_REGION,
};
use super::super::{VfioPciDevice, VfioPciError};
use crate::interrupt::fake::FakeInterrupts;

/// A device whose `fail` call returns EIO; everything else is the mock's.
struct Failing {
    mock: MockDevice,
    fail: &'static str,
}

impl Failing {
    fn err(&self, what: &'static str) -> Result<(), OpsError> {
        if self.fail == what {
            return Err(OpsError::Ioctl {
                what: what.into(),
                source: io::Error::from_raw_os_error(libc::EIO),
            });
        }
        Ok(())
    }
}

impl VfioDeviceOps for Failing {
    fn device_info(&self) -> Result<DeviceInfo, OpsError> {
        self.err("VFIO_DEVICE_GET_INFO")?;
        self.mock.device_info()
    }
    fn region_info(&self, index: u32) -> Result<RegionInfo, OpsError> {
        if index != CONFIG_REGION {
            self.err("VFIO_DEVICE_GET_REGION_INFO")?;
        }
        self.mock.region_info(index)
    }
    fn irq_info(&self, index: u32) -> Result<IrqInfo, OpsError> {
        self.mock.irq_info(index)
    }
    fn region_read(&self, r: &RegionInfo, offset: u64, data: &mut [u8]) -> Result<(), OpsError> {
        self.err("pread")?;
        self.mock.region_read(r, offset, data)
    }
    fn region_write(&self, r: &RegionInfo, offset: u64, data: &[u8]) -> Result<(), OpsError> {
        self.mock.region_write(r, offset, data)
    }
    fn mmap_region(&self, r: &RegionInfo, offset: u64, size: u64) -> Result<MmapRegion, OpsError> {
        self.mock.mmap_region(r, offset, size)
    }
    fn set_irqs(&self, request: &SetIrqs) -> Result<(), OpsError> {
        self.mock.set_irqs(request)
    }
    fn reset(&self) -> Result<(), OpsError> {
        self.mock.reset()
    }
    fn hot_reset_info(&self) -> Result<Vec<crate::vfio::ops::HotResetDevice>, OpsError> {
        self.mock.hot_reset_info()
    }
    fn hot_reset(&self, group_fds: &[std::os::unix::io::RawFd]) -> Result<(), OpsError> {
        self.mock.hot_reset(group_fds)
    }
}

fn open(ops: Box<dyn VfioDeviceOps>, irq: &FakeInterrupts) -> String {
    match VfioPciDevice::new(
        "0000:06:0d.0",
        ops,
        irq,
        Arc::new(MockMapper::default()),
        None,
    ) {
        Ok(_) => panic!("the device was accepted"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.starts_with("0000:06:0d.0"), "names the device: {text}");
            assert!(
                matches!(
                    e,
                    VfioPciError::DeviceInfo { .. }
                        | VfioPciError::NotPci(_)
                        | VfioPciError::Config { .. }
                        | VfioPciError::Bar { .. }
                        | VfioPciError::Interrupts { .. }
                ),
                "{e:?}"
            );
            text
        }
    }
}

fn open_mock(b: &mut MockBuilder) -> String {
    open(Box::new(b.build()), &FakeInterrupts::new())
}

fn open_failing(b: &mut MockBuilder, fail: &'static str) -> String {
    let failing = Failing {
        mock: b.build(),
        fail,
    };
    open(Box::new(failing), &FakeInterrupts::new())
}

#[test]
fn device_information_that_cannot_be_read() {
    let e = open_failing(
        &mut MockBuilder::new(0x1234, 0x11e8),
        "VFIO_DEVICE_GET_INFO",
    );
    assert_eq!(
        e,
        "0000:06:0d.0: reading the device information: VFIO_DEVICE_GET_INFO failed: Input/output error (os error 5)"
    );
}

#[test]
fn a_device_that_is_not_pci() {
    let mock = MockBuilder::new(0x1234, 0x11e8).build();
    mock.st().info.flags = 0;
    let e = open(Box::new(mock), &FakeInterrupts::new());
    assert_eq!(
        e,
        "0000:06:0d.0 is not a PCI device (VFIO reports another device API)"
    );
}

#[test]
fn config_spaces_that_cannot_be_used() {
    let mock = MockBuilder::new(0x1234, 0x11e8).build();
    mock.st()
        .regions
        .get_mut(&CONFIG_REGION)
        .expect("config region")
        .info
        .size = 32;
    let e = open(Box::new(mock), &FakeInterrupts::new());
    assert_eq!(
        e,
        "0000:06:0d.0: the device's config region is only 32 bytes"
    );

    let e = open_mock(&mut MockBuilder::new(0xffff, 0xffff));
    assert!(
        e.contains("reads vendor ID 0xffff (it is not responding; is it powered on?)"),
        "{e}"
    );

    let e = open_mock(MockBuilder::new(0x1234, 0x11e8).config(0x0e, &[0x81]));
    assert!(
        e.contains("has header type 0x81; only endpoints (type 0) can be passed through"),
        "{e}"
    );

    let e = open_failing(&mut MockBuilder::new(0x1234, 0x11e8), "pread");
    assert!(
        e.contains("reading the device's config space: pread failed: Input/output error"),
        "{e}"
    );
}

#[test]
fn bars_that_cannot_be_modelled() {
    let e = open_mock(MockBuilder::new(0x1234, 0x11e8).mem_bar(5, 0x1000, true, false));
    assert!(
        e.contains("BAR 5 claims to be 64-bit, which needs a sixth register"),
        "{e}"
    );

    let e = open_mock(MockBuilder::new(0x1234, 0x11e8).io_bar(0, 0x1000));
    assert!(e.contains("BAR 0: a Io BAR cannot be 0x1000 bytes"), "{e}");

    let e = open_failing(
        MockBuilder::new(0x1234, 0x11e8).mem_bar(0, 0x1000, false, false),
        "VFIO_DEVICE_GET_REGION_INFO",
    );
    assert!(
        e.contains("BAR 0: VFIO_DEVICE_GET_REGION_INFO failed: Input/output error"),
        "{e}"
    );
}

#[test]
fn interrupts_that_cannot_be_routed() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x4000, false, false);
    b.msix(8, (0, 0), (0, 0x2000));
    let e = open(Box::new(b.build()), &FakeInterrupts::with_limit(2));
    assert!(e.contains("MSI-X: "), "{e}");
    assert!(e.contains("no free GSI for another MSI vector"), "{e}");
}
