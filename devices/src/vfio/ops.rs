//! What the passthrough device model needs from a VFIO device file descriptor, as a trait.
//!
//! [`VfioDeviceOps`] is the whole syscall surface of [`crate::vfio::VfioPciDevice`]: device,
//! region and interrupt information, region reads and writes (errors returned, never
//! swallowed), mmap of a region area, `VFIO_DEVICE_SET_IRQS`, `VFIO_DEVICE_RESET` and the bus
//! hot reset pair (`VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`, `VFIO_DEVICE_PCI_HOT_RESET`). The kernel
//! implementation is [`crate::vfio::VfioDeviceFd`]; unit tests use an in-memory fake device.
//!
//! Region offsets handed to the trait are offsets *into the region* (0 = the region's first
//! byte); the implementation adds the region's offset in the device file itself.

use std::io;
use std::os::unix::io::RawFd;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_NORESIZE,
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_ROM_REGION_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vm_memory::MmapRegion;

/// Region index of BAR 0 (BAR `n` is region `n`).
pub const BAR0_REGION: u32 = VFIO_PCI_BAR0_REGION_INDEX;
/// Region index of the expansion ROM.
pub const ROM_REGION: u32 = VFIO_PCI_ROM_REGION_INDEX;
/// Region index of the configuration space.
pub const CONFIG_REGION: u32 = VFIO_PCI_CONFIG_REGION_INDEX;
/// Interrupt index of INTx.
pub const INTX_IRQ: u32 = VFIO_PCI_INTX_IRQ_INDEX;
/// Interrupt index of MSI.
pub const MSI_IRQ: u32 = VFIO_PCI_MSI_IRQ_INDEX;
/// Interrupt index of MSI-X.
pub const MSIX_IRQ: u32 = VFIO_PCI_MSIX_IRQ_INDEX;

/// Errors from the VFIO device syscall layer.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// An ioctl on the device failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        /// The ioctl and its arguments.
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A read or write of a region failed in the kernel.
    #[error("{op} of {len} bytes at offset {offset:#x} of VFIO region {index} failed: {source}")]
    Region {
        /// "read" or "write".
        op: &'static str,
        /// Region index.
        index: u32,
        /// Offset into the region.
        offset: u64,
        /// Access length.
        len: usize,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// An access or mapping reaches outside its region (refused before the kernel sees it).
    #[error(
        "{len:#x} bytes at offset {offset:#x} are outside VFIO region {index} ({size:#x} bytes)"
    )]
    OutOfRange {
        /// Region index.
        index: u32,
        /// Offset into the region.
        offset: u64,
        /// Length.
        len: u64,
        /// Region size.
        size: u64,
    },
    /// The region does not allow the operation (no read, write or mmap flag).
    #[error("VFIO region {index} does not support {op}")]
    NotSupported {
        /// Region index.
        index: u32,
        /// "read", "write" or "mmap".
        op: &'static str,
    },
    /// mmap of a region area failed.
    #[error(
        "mapping {size:#x} bytes at offset {offset:#x} of VFIO region {index} failed: {source}"
    )]
    Mmap {
        /// Region index.
        index: u32,
        /// Offset into the region.
        offset: u64,
        /// Size.
        size: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The kernel returned a structure that does not parse.
    #[error("the kernel returned a malformed {0}")]
    Malformed(&'static str),
}

/// `VFIO_DEVICE_GET_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of interrupt indexes.
    pub num_irqs: u32,
}

impl DeviceInfo {
    /// Whether this is a vfio-pci device.
    pub fn is_pci(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_PCI != 0
    }

    /// Whether `VFIO_DEVICE_RESET` is supported (the device has a reset method: FLR, PM reset,
    /// a bus reset it can do alone, or a device-specific one).
    pub fn supports_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }
}

/// One area of a region that may be mmapped (the sparse-mmap capability), relative to the
/// region's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseArea {
    /// Offset into the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// `VFIO_DEVICE_GET_REGION_INFO`, with the capabilities the device model uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionInfo {
    /// Region index.
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes (0: the region does not exist, e.g. an unimplemented BAR).
    pub size: u64,
    /// Offset of the region in the device file.
    pub offset: u64,
    /// The sparse-mmap capability: only these areas may be mmapped. `None` without the
    /// capability (then the whole region may be, if [`RegionInfo::mmappable`]).
    pub sparse: Option<Vec<SparseArea>>,
    /// The kernel reports that the MSI-X table may be mmapped (`CAP_MSIX_MAPPABLE`); the device
    /// model still traps it, since it emulates the table.
    pub msix_mappable: bool,
}

impl RegionInfo {
    /// Whether the region can be read.
    pub fn readable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_READ != 0
    }

    /// Whether the region can be written.
    pub fn writable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_WRITE != 0
    }

    /// Whether (some of) the region can be mmapped.
    pub fn mmappable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0
    }

    /// The areas that may be mmapped: the sparse areas, or the whole region, or none; each
    /// clipped to the region.
    pub fn mmap_areas(&self) -> Vec<SparseArea> {
        if !self.mmappable() || self.size == 0 {
            return Vec::new();
        }
        let areas = match &self.sparse {
            Some(a) => a.clone(),
            None => vec![SparseArea {
                offset: 0,
                size: self.size,
            }],
        };
        areas
            .into_iter()
            .filter_map(|a| {
                let end = a.offset.checked_add(a.size)?.min(self.size);
                (a.offset < end).then(|| SparseArea {
                    offset: a.offset,
                    size: end - a.offset,
                })
            })
            .collect()
    }

    /// Checks that `[offset, offset + len)` lies inside the region.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), OpsError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(OpsError::OutOfRange {
                index: self.index,
                offset,
                len,
                size: self.size,
            }),
        }
    }
}

/// `VFIO_DEVICE_GET_IRQ_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfo {
    /// Interrupt index.
    pub index: u32,
    /// `VFIO_IRQ_INFO_*`.
    pub flags: u32,
    /// Number of vectors (0: the device does not have this kind of interrupt).
    pub count: u32,
}

impl IrqInfo {
    /// Whether vectors can be signalled through eventfds.
    pub fn eventfd(&self) -> bool {
        self.flags & VFIO_IRQ_INFO_EVENTFD != 0
    }

    /// Whether the vector count cannot change while enabled (disable and re-enable instead).
    pub fn noresize(&self) -> bool {
        self.flags & VFIO_IRQ_INFO_NORESIZE != 0
    }
}

/// The `VFIO_DEVICE_SET_IRQS` requests the device model makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetIrqs {
    /// `DATA_EVENTFD | ACTION_TRIGGER`: vector `start + i` of `index` signals `fds[i]`; `-1`
    /// unbinds a vector. Enables the interrupt type (MSI/MSI-X with `fds.len()` vectors).
    Trigger {
        /// Interrupt index.
        index: u32,
        /// First vector.
        start: u32,
        /// One eventfd per vector.
        fds: Vec<RawFd>,
    },
    /// `DATA_EVENTFD | ACTION_UNMASK`: signalling `fd` unmasks vector `start` of `index` (for
    /// INTx, the resample eventfd KVM signals on the guest's EOI).
    UnmaskFd {
        /// Interrupt index.
        index: u32,
        /// The vector.
        start: u32,
        /// The eventfd.
        fd: RawFd,
    },
    /// `DATA_NONE | ACTION_TRIGGER` with count 0: turns every vector of `index` off.
    Disable {
        /// Interrupt index.
        index: u32,
    },
}

/// One function a bus (or slot) reset of a device's bus would reset too, with its IOMMU group
/// (`struct vfio_pci_dependent_device` of `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`, group form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HotResetDevice {
    /// The IOMMU group whose fd the hot reset needs.
    pub group: u32,
    /// PCI segment.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7:3) and function (bits 2:0).
    pub devfn: u8,
}

impl std::fmt::Display for HotResetDevice {
    /// `0000:06:0d.0`, as `lspci -D` and sysfs name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment,
            self.bus,
            self.devfn >> 3,
            self.devfn & 7
        )
    }
}

/// The syscalls the passthrough device model makes on a VFIO device.
pub trait VfioDeviceOps: Send + Sync {
    /// `VFIO_DEVICE_GET_INFO`.
    fn device_info(&self) -> Result<DeviceInfo, OpsError>;
    /// `VFIO_DEVICE_GET_REGION_INFO` with its capability chain.
    fn region_info(&self, index: u32) -> Result<RegionInfo, OpsError>;
    /// `VFIO_DEVICE_GET_IRQ_INFO`.
    fn irq_info(&self, index: u32) -> Result<IrqInfo, OpsError>;
    /// Reads `data.len()` bytes at `offset` into `region` (all of them, or an error).
    fn region_read(
        &self,
        region: &RegionInfo,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), OpsError>;
    /// Writes `data` at `offset` into `region` (all of it, or an error).
    fn region_write(&self, region: &RegionInfo, offset: u64, data: &[u8]) -> Result<(), OpsError>;
    /// Maps `size` bytes at `offset` into `region` (shared, readable and, if the region is,
    /// writable). The mapping lives as long as the returned region.
    fn mmap_region(
        &self,
        region: &RegionInfo,
        offset: u64,
        size: u64,
    ) -> Result<MmapRegion, OpsError>;
    /// `VFIO_DEVICE_SET_IRQS`.
    fn set_irqs(&self, request: &SetIrqs) -> Result<(), OpsError>;
    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> Result<(), OpsError>;
    /// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: every function a reset of the device's bus (or
    /// slot) would reset, this one included, with its IOMMU group. The kernel answers `ENODEV`
    /// when no such reset exists for the device (a root bus, a bridge that cannot reset it).
    ///
    /// The default answers `ENOTTY`: an implementation without it offers no bus reset.
    fn hot_reset_info(&self) -> Result<Vec<HotResetDevice>, OpsError> {
        Err(OpsError::Ioctl {
            what: "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO".into(),
            source: io::Error::from_raw_os_error(libc::ENOTTY),
        })
    }
    /// `VFIO_DEVICE_PCI_HOT_RESET` with the fds of the IOMMU groups of every function
    /// [`VfioDeviceOps::hot_reset_info`] names (the kernel refuses a list that misses one).
    ///
    /// The default answers `ENOTTY`.
    fn hot_reset(&self, group_fds: &[RawFd]) -> Result<(), OpsError> {
        let _ = group_fds;
        Err(OpsError::Ioctl {
            what: "VFIO_DEVICE_PCI_HOT_RESET".into(),
            source: io::Error::from_raw_os_error(libc::ENOTTY),
        })
    }
}
