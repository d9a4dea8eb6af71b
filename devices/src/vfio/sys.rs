//! The kernel side: thin `unsafe` wrappers over the VFIO ioctls (with `vfio-bindings` structs),
//! and [`VfioDeviceFd`], the kernel implementation of [`VfioDeviceOps`].
//!
//! Every ioctl wrapper passes the kernel either nothing, a value, or a pointer to memory this
//! module owns and sized as the ABI asks (`argsz`); results are returned as `io::Error`s with
//! the errno. Variable-length structures (`vfio_irq_set` with its eventfd array, region info
//! with its capability chain) are built in `u32`/`u64` buffers and parsed back with bounds
//! checks, never with pointer casts.
//!
//! Region reads and writes are `pread`/`pwrite` at the region's offset in the device file
//! (`FileExt::read_exact_at`/`write_all_at`); mmaps go through `vm_memory::MmapRegion`.

use std::any::Any;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_irq_info, vfio_region_info, VFIO_BASE, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_HOT_RESET_FLAG_DEV_ID, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP, VFIO_REGION_INFO_FLAG_CAPS, VFIO_TYPE,
};
use vm_memory::FileOffset;
use vm_memory::MmapRegion;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ptr, ioctl_with_mut_ref, ioctl_with_ptr};
use vmm_sys_util::ioctl::{ioctl_with_ref, ioctl_with_val};

use super::ops::{
    DeviceInfo, HotResetDevice, IrqInfo, OpsError, RegionInfo, SetIrqs, SparseArea, VfioDeviceOps,
};

const VFIO: u32 = VFIO_TYPE as u32;

vmm_sys_util::ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO, VFIO_BASE);
vmm_sys_util::ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO, VFIO_BASE + 1);
vmm_sys_util::ioctl_io_nr!(VFIO_SET_IOMMU, VFIO, VFIO_BASE + 2);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO, VFIO_BASE + 3);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO, VFIO_BASE + 4);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO, VFIO_BASE + 5);
vmm_sys_util::ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO, VFIO_BASE + 6);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO, VFIO_BASE + 7);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO, VFIO_BASE + 8);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO, VFIO_BASE + 9);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO, VFIO_BASE + 10);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO, VFIO_BASE + 11);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO, VFIO_BASE + 12);
// The same number as VFIO_IOMMU_MAP_DMA: one is a device ioctl, the other a container's.
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_PCI_HOT_RESET, VFIO, VFIO_BASE + 13);
vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO, VFIO_BASE + 13);
vmm_sys_util::ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO, VFIO_BASE + 14);

/// Size of `struct vfio_irq_set` without its data.
const IRQ_SET_HEADER_WORDS: usize = 5;
/// Size of `struct vfio_pci_hot_reset_info` and `struct vfio_pci_hot_reset` without their
/// arrays, in 32-bit words (argsz, flags, count).
const HOT_RESET_HEADER_WORDS: usize = 3;
/// Words per `struct vfio_pci_dependent_device` (group id; segment, bus, devfn).
const DEPENDENT_WORDS: usize = 2;
/// More functions than this on one bus is a malformed answer (a bus has 256 at most).
const MAX_HOT_RESET_DEVICES: u32 = 256;
/// Region info buffers larger than this are refused (a capability chain is a few dozen bytes
/// per sparse area; 64 KiB is thousands of areas).
const MAX_REGION_INFO: u32 = 64 << 10;

fn check(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn argsz<T>() -> u32 {
    size_of::<T>() as u32
}

/// `VFIO_GET_API_VERSION` on a container.
pub(crate) fn api_version(container: &File) -> io::Result<i32> {
    // SAFETY: the ioctl takes no argument; the kernel only looks at the fd.
    check(unsafe { ioctl(container, VFIO_GET_API_VERSION()) })
}

/// `VFIO_CHECK_EXTENSION` on a container: whether `ext` (an IOMMU type) is supported.
pub(crate) fn check_extension(container: &File, ext: u32) -> io::Result<bool> {
    // SAFETY: the argument is passed by value; no memory is shared with the kernel.
    check(unsafe { ioctl_with_val(container, VFIO_CHECK_EXTENSION(), ext.into()) }).map(|r| r > 0)
}

/// `VFIO_SET_IOMMU` on a container.
pub(crate) fn set_iommu(container: &File, iommu_type: u32) -> io::Result<()> {
    // SAFETY: the argument is passed by value; no memory is shared with the kernel.
    check(unsafe { ioctl_with_val(container, VFIO_SET_IOMMU(), iommu_type.into()) }).map(|_| ())
}

/// `VFIO_GROUP_GET_STATUS`: the group's `VFIO_GROUP_FLAGS_*`.
pub(crate) fn group_status(group: &File) -> io::Result<u32> {
    let mut status = vfio_group_status {
        argsz: argsz::<vfio_group_status>(),
        flags: 0,
    };
    // SAFETY: `status` is a live, correctly sized vfio_group_status the kernel writes into.
    check(unsafe { ioctl_with_mut_ref(group, VFIO_GROUP_GET_STATUS(), &mut status) })?;
    Ok(status.flags)
}

/// `VFIO_GROUP_SET_CONTAINER`.
pub(crate) fn set_container(group: &File, container: &File) -> io::Result<()> {
    let fd: i32 = container.as_raw_fd();
    // SAFETY: the kernel reads one int (the container fd) from `fd`, which lives across the call.
    check(unsafe { ioctl_with_ref(group, VFIO_GROUP_SET_CONTAINER(), &fd) }).map(|_| ())
}

/// `VFIO_GROUP_UNSET_CONTAINER`.
pub(crate) fn unset_container(group: &File) -> io::Result<()> {
    // SAFETY: the ioctl takes no argument.
    check(unsafe { ioctl(group, VFIO_GROUP_UNSET_CONTAINER()) }).map(|_| ())
}

/// `VFIO_GROUP_GET_DEVICE_FD` with `name` ("BDF" or "BDF vf_token=UUID").
pub(crate) fn group_device_fd(group: &File, name: &CStr) -> io::Result<File> {
    // SAFETY: `name` is a NUL-terminated string the kernel only reads during the call.
    let fd = check(unsafe { ioctl_with_ptr(group, VFIO_GROUP_GET_DEVICE_FD(), name.as_ptr()) })?;
    // SAFETY: on success the ioctl returned a new file descriptor that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(File::from(owned))
}

/// `VFIO_IOMMU_MAP_DMA` (read and write) of `size` bytes at `vaddr` to `iova`.
///
/// # Safety
///
/// `vaddr..vaddr + size` must be memory of this process that stays mapped while the DMA
/// mapping exists and that the caller accepts the device reading and writing at any time.
pub(crate) unsafe fn map_dma(container: &File, iova: u64, size: u64, vaddr: u64) -> io::Result<()> {
    let map = vfio_iommu_type1_dma_map {
        argsz: argsz::<vfio_iommu_type1_dma_map>(),
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr,
        iova,
        size,
    };
    // SAFETY: `map` is a live, correctly sized struct the kernel only reads; the memory it
    // names is the caller's responsibility (see the function's contract).
    check(unsafe { ioctl_with_ref(container, VFIO_IOMMU_MAP_DMA(), &map) }).map(|_| ())
}

/// `VFIO_IOMMU_UNMAP_DMA`; returns how many bytes the kernel unmapped.
pub(crate) fn unmap_dma(container: &File, iova: u64, size: u64) -> io::Result<u64> {
    let mut unmap = vfio_iommu_type1_dma_unmap {
        argsz: argsz::<vfio_iommu_type1_dma_unmap>(),
        flags: 0,
        iova,
        size,
        ..Default::default()
    };
    // SAFETY: `unmap` is a live, correctly sized struct (no dirty bitmap requested) that the
    // kernel reads and writes the unmapped size back into.
    check(unsafe { ioctl_with_mut_ref(container, VFIO_IOMMU_UNMAP_DMA(), &mut unmap) })?;
    Ok(unmap.size)
}

/// Builds the `struct vfio_irq_set` for `request`, as 32-bit words (header, then the eventfds).
pub(crate) fn irq_set_words(request: &SetIrqs) -> Vec<u32> {
    let (flags, index, start, fds): (u32, u32, u32, &[RawFd]) = match request {
        SetIrqs::Trigger { index, start, fds } => (
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            *index,
            *start,
            fds,
        ),
        SetIrqs::UnmaskFd { index, start, fd } => (
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
            *index,
            *start,
            std::slice::from_ref(fd),
        ),
        SetIrqs::Disable { index } => (
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            *index,
            0,
            &[],
        ),
    };
    let argsz = ((IRQ_SET_HEADER_WORDS + fds.len()) * 4) as u32;
    let mut words = vec![argsz, flags, index, start, fds.len() as u32];
    // An eventfd is an `__s32` in the ABI; -1 keeps its bit pattern.
    words.extend(fds.iter().map(|&fd| fd as u32));
    words
}

/// Parses a `struct vfio_pci_hot_reset_info` (as 32-bit words: argsz, flags, count, then two
/// words per device). Only the group form is understood (flags without `DEV_ID`: the legacy
/// container's); `count` must fit the buffer.
pub(crate) fn parse_hot_reset_info(words: &[u32]) -> Result<Vec<HotResetDevice>, OpsError> {
    let bad = || OpsError::Malformed("hot reset info");
    let (flags, count) = match words {
        [_, flags, count, ..] => (*flags, *count),
        _ => return Err(bad()),
    };
    if flags & VFIO_PCI_HOT_RESET_FLAG_DEV_ID != 0 || count > MAX_HOT_RESET_DEVICES {
        return Err(bad());
    }
    let body = &words[HOT_RESET_HEADER_WORDS..];
    if body.len() < count as usize * DEPENDENT_WORDS {
        return Err(bad());
    }
    Ok(body
        .chunks_exact(DEPENDENT_WORDS)
        .take(count as usize)
        .map(|d| {
            let [seg_lo, seg_hi, bus, devfn] = d[1].to_le_bytes();
            HotResetDevice {
                group: d[0],
                segment: u16::from_le_bytes([seg_lo, seg_hi]),
                bus,
                devfn,
            }
        })
        .collect())
}

/// Builds the `struct vfio_pci_hot_reset` for `group_fds`, as 32-bit words.
pub(crate) fn hot_reset_words(group_fds: &[RawFd]) -> Vec<u32> {
    let argsz = ((HOT_RESET_HEADER_WORDS + group_fds.len()) * 4) as u32;
    let mut words = vec![argsz, 0, group_fds.len() as u32];
    // A group fd is an `__s32` in the ABI.
    words.extend(group_fds.iter().map(|&fd| fd as u32));
    words
}

/// Parses the capability chain of a region info buffer (`buf` holds the whole
/// `vfio_region_info` plus its capabilities; offsets are relative to its start).
pub(crate) fn parse_region_caps(
    buf: &[u8],
    first: u32,
) -> Result<(Option<Vec<SparseArea>>, bool), OpsError> {
    let u16_at = |at: usize| {
        buf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        buf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at: usize| {
        buf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let bad = || OpsError::Malformed("region info capability chain");
    let mut sparse = None;
    let mut msix_mappable = false;
    let mut at = first as usize;
    let mut seen = 0;
    while at != 0 {
        // Each capability is at least a header; a chain longer than the buffer allows loops.
        seen += 1;
        if seen > buf.len() / 8 || at < size_of::<vfio_region_info>() {
            return Err(bad());
        }
        let id = u32::from(u16_at(at).ok_or_else(bad)?);
        let next = u32_at(at + 4).ok_or_else(bad)?;
        match id {
            VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                let n = u32_at(at + 8).ok_or_else(bad)? as usize;
                if n > buf.len() / 16 {
                    return Err(bad());
                }
                let mut areas = Vec::with_capacity(n);
                for i in 0..n {
                    let a = at + 16 + 16 * i;
                    areas.push(SparseArea {
                        offset: u64_at(a).ok_or_else(bad)?,
                        size: u64_at(a + 8).ok_or_else(bad)?,
                    });
                }
                sparse = Some(areas);
            }
            VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => msix_mappable = true,
            _ => {}
        }
        at = next as usize;
    }
    Ok((sparse, msix_mappable))
}

/// A VFIO device file descriptor: the kernel implementation of [`VfioDeviceOps`].
///
/// It keeps whatever opened it (the container and its groups) alive until it is closed, so the
/// container is torn down only after its last device.
pub struct VfioDeviceFd {
    file: Arc<File>,
    _owner: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for VfioDeviceFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioDeviceFd")
            .field("fd", &self.file.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl AsRawFd for VfioDeviceFd {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl VfioDeviceFd {
    /// Wraps a device fd obtained elsewhere (a group's `VFIO_GROUP_GET_DEVICE_FD`, or a
    /// `/dev/vfio/devices/vfioN` cdev bound to an iommufd); `owner` is kept alive until the
    /// device is closed.
    pub fn new(file: File, owner: Option<Arc<dyn Any + Send + Sync>>) -> Self {
        VfioDeviceFd {
            file: Arc::new(file),
            _owner: owner,
        }
    }

    fn ioctl_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> OpsError {
        let what = what.into();
        move |source| OpsError::Ioctl { what, source }
    }

    fn region_info_with_caps(&self, index: u32, argsz: u32) -> Result<RegionInfo, OpsError> {
        let words = (argsz as usize).div_ceil(8);
        let mut buf = vec![0u64; words.max(size_of::<vfio_region_info>() / 8)];
        buf[0] = u64::from(argsz); // argsz (low half), flags (high half) = 0
        buf[1] = u64::from(index); // index (low half), cap_offset = 0
                                   // SAFETY: `buf` is a live, 8-byte aligned buffer of at least `argsz` bytes, laid out as a
                                   // vfio_region_info followed by room for its capability chain; the kernel writes at most
                                   // `argsz` bytes into it.
        let ret = unsafe {
            ioctl_with_mut_ptr(&*self.file, VFIO_DEVICE_GET_REGION_INFO(), buf.as_mut_ptr())
        };
        check(ret).map_err(Self::ioctl_err(format!(
            "VFIO_DEVICE_GET_REGION_INFO({index}) with capabilities"
        )))?;
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_le_bytes()).collect();
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let dword = |at: usize| u64::from(word(at)) | (u64::from(word(at + 4)) << 32);
        let flags = word(4);
        let cap_offset = word(12);
        let mut info = RegionInfo {
            index,
            flags,
            size: dword(16),
            offset: dword(24),
            sparse: None,
            msix_mappable: false,
        };
        if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && cap_offset != 0 {
            let len = (word(0) as usize).min(bytes.len());
            let (sparse, msix) = parse_region_caps(&bytes[..len], cap_offset)?;
            info.sparse = sparse;
            info.msix_mappable = msix;
        }
        Ok(info)
    }
}

impl VfioDeviceOps for VfioDeviceFd {
    fn device_info(&self) -> Result<DeviceInfo, OpsError> {
        let mut info = vfio_device_info {
            argsz: argsz::<vfio_device_info>(),
            ..Default::default()
        };
        // SAFETY: `info` is a live, correctly sized vfio_device_info the kernel writes into.
        let ret = unsafe { ioctl_with_mut_ref(&*self.file, VFIO_DEVICE_GET_INFO(), &mut info) };
        check(ret).map_err(Self::ioctl_err("VFIO_DEVICE_GET_INFO"))?;
        Ok(DeviceInfo {
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
        })
    }

    fn region_info(&self, index: u32) -> Result<RegionInfo, OpsError> {
        let mut info = vfio_region_info {
            argsz: argsz::<vfio_region_info>(),
            index,
            ..Default::default()
        };
        // SAFETY: `info` is a live, correctly sized vfio_region_info the kernel writes into.
        let ret =
            unsafe { ioctl_with_mut_ref(&*self.file, VFIO_DEVICE_GET_REGION_INFO(), &mut info) };
        check(ret).map_err(Self::ioctl_err(format!(
            "VFIO_DEVICE_GET_REGION_INFO({index})"
        )))?;
        // With capabilities, the kernel sets the CAPS flag and asks for a bigger buffer in argsz.
        if info.flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && info.argsz > argsz::<vfio_region_info>()
        {
            if info.argsz > MAX_REGION_INFO {
                return Err(OpsError::Malformed("region info size"));
            }
            return self.region_info_with_caps(index, info.argsz);
        }
        Ok(RegionInfo {
            index,
            flags: info.flags,
            size: info.size,
            offset: info.offset,
            sparse: None,
            msix_mappable: false,
        })
    }

    fn irq_info(&self, index: u32) -> Result<IrqInfo, OpsError> {
        let mut info = vfio_irq_info {
            argsz: argsz::<vfio_irq_info>(),
            index,
            ..Default::default()
        };
        // SAFETY: `info` is a live, correctly sized vfio_irq_info the kernel writes into.
        let ret = unsafe { ioctl_with_mut_ref(&*self.file, VFIO_DEVICE_GET_IRQ_INFO(), &mut info) };
        check(ret).map_err(Self::ioctl_err(format!(
            "VFIO_DEVICE_GET_IRQ_INFO({index})"
        )))?;
        Ok(IrqInfo {
            index,
            flags: info.flags,
            count: info.count,
        })
    }

    fn region_read(
        &self,
        region: &RegionInfo,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), OpsError> {
        if !region.readable() {
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "read",
            });
        }
        region.check_range(offset, data.len() as u64)?;
        self.file
            .read_exact_at(data, region.offset + offset)
            .map_err(|source| OpsError::Region {
                op: "read",
                index: region.index,
                offset,
                len: data.len(),
                source,
            })
    }

    fn region_write(&self, region: &RegionInfo, offset: u64, data: &[u8]) -> Result<(), OpsError> {
        if !region.writable() {
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "write",
            });
        }
        region.check_range(offset, data.len() as u64)?;
        self.file
            .write_all_at(data, region.offset + offset)
            .map_err(|source| OpsError::Region {
                op: "write",
                index: region.index,
                offset,
                len: data.len(),
                source,
            })
    }

    fn mmap_region(
        &self,
        region: &RegionInfo,
        offset: u64,
        size: u64,
    ) -> Result<MmapRegion, OpsError> {
        if !region.mmappable() {
            return Err(OpsError::NotSupported {
                index: region.index,
                op: "mmap",
            });
        }
        region.check_range(offset, size)?;
        let mut prot = 0;
        if region.readable() {
            prot |= libc::PROT_READ;
        }
        if region.writable() {
            prot |= libc::PROT_WRITE;
        }
        let len = usize::try_from(size).map_err(|_| OpsError::OutOfRange {
            index: region.index,
            offset,
            len: size,
            size: region.size,
        })?;
        let file_offset = FileOffset::from_arc(self.file.clone(), region.offset + offset);
        MmapRegion::build(Some(file_offset), len, prot, libc::MAP_SHARED).map_err(|source| {
            OpsError::Mmap {
                index: region.index,
                offset,
                size,
                source,
            }
        })
    }

    fn set_irqs(&self, request: &SetIrqs) -> Result<(), OpsError> {
        let words = irq_set_words(request);
        // SAFETY: `words` is a live buffer holding a complete vfio_irq_set (header plus one
        // __s32 per vector, `argsz` = its length in bytes) that the kernel only reads.
        let ret = unsafe { ioctl_with_ptr(&*self.file, VFIO_DEVICE_SET_IRQS(), words.as_ptr()) };
        check(ret).map_err(Self::ioctl_err(format!(
            "VFIO_DEVICE_SET_IRQS({request:?})"
        )))?;
        Ok(())
    }

    fn reset(&self) -> Result<(), OpsError> {
        // SAFETY: the ioctl takes no argument.
        let ret = unsafe { ioctl(&*self.file, VFIO_DEVICE_RESET()) };
        check(ret).map_err(Self::ioctl_err("VFIO_DEVICE_RESET"))?;
        Ok(())
    }

    fn hot_reset_info(&self) -> Result<Vec<HotResetDevice>, OpsError> {
        // First with room for the header only: the kernel fills in `count` and answers ENOSPC
        // when there are devices; then again with room for them. A bus that gained a device in
        // between answers ENOSPC again, so it is asked a few times.
        let mut count = 0u32;
        for _ in 0..4 {
            let len = HOT_RESET_HEADER_WORDS + count as usize * DEPENDENT_WORDS;
            let mut words = vec![0u32; len];
            words[0] = (len * 4) as u32;
            // SAFETY: `words` is a live, 4-byte aligned buffer of `argsz` bytes laid out as a
            // vfio_pci_hot_reset_info with room for `count` devices; the kernel writes at most
            // `argsz` bytes into it.
            let ret = unsafe {
                ioctl_with_mut_ptr(
                    &*self.file,
                    VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
                    words.as_mut_ptr(),
                )
            };
            match check(ret) {
                Ok(_) => return parse_hot_reset_info(&words),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && words[2] > count => {
                    if words[2] > MAX_HOT_RESET_DEVICES {
                        return Err(OpsError::Malformed("hot reset info device count"));
                    }
                    count = words[2];
                }
                Err(e) => return Err(Self::ioctl_err("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO")(e)),
            }
        }
        Err(OpsError::Malformed(
            "hot reset info (the device count kept changing)",
        ))
    }

    fn hot_reset(&self, group_fds: &[RawFd]) -> Result<(), OpsError> {
        let words = hot_reset_words(group_fds);
        // SAFETY: `words` is a live buffer holding a complete vfio_pci_hot_reset (header plus
        // one __s32 group fd per entry, `argsz` = its length in bytes) that the kernel only
        // reads.
        let ret =
            unsafe { ioctl_with_ptr(&*self.file, VFIO_DEVICE_PCI_HOT_RESET(), words.as_ptr()) };
        check(ret).map_err(Self::ioctl_err(format!(
            "VFIO_DEVICE_PCI_HOT_RESET({} groups)",
            group_fds.len()
        )))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_bindings::bindings::vfio::VFIO_PCI_MSIX_IRQ_INDEX;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        // _IO(';', 100 + n) = 0x3b00 | (100 + n).
        assert_eq!(VFIO_GET_API_VERSION(), 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD(), 0x3b6a);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(), 0x3b70);
        assert_eq!(VFIO_DEVICE_PCI_HOT_RESET(), 0x3b71);
        assert_eq!(VFIO_IOMMU_MAP_DMA(), 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
    }

    #[test]
    fn irq_set_layout() {
        let w = irq_set_words(&SetIrqs::Trigger {
            index: VFIO_PCI_MSIX_IRQ_INDEX,
            start: 1,
            fds: vec![7, -1, 9],
        });
        assert_eq!(w, vec![32, 0x24, 2, 1, 3, 7, u32::MAX, 9]);
        let w = irq_set_words(&SetIrqs::UnmaskFd {
            index: 0,
            start: 0,
            fd: 5,
        });
        assert_eq!(w, vec![24, 0x14, 0, 0, 1, 5]);
        let w = irq_set_words(&SetIrqs::Disable { index: 1 });
        assert_eq!(w, vec![20, 0x21, 1, 0, 0]);
    }

    #[test]
    fn hot_reset_layouts() {
        // Two devices: 0000:06:0d.0 in group 26, 0001:06:0d.1 in group 27.
        let w = [28, 0, 2, 26, 0x6806_0000, 27, 0x6906_0001];
        let d = parse_hot_reset_info(&w).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].group, d[0].to_string()), (26, "0000:06:0d.0".into()));
        assert_eq!((d[1].group, d[1].to_string()), (27, "0001:06:0d.1".into()));
        // A count past the buffer, the device-id form, a short header: refused.
        assert!(parse_hot_reset_info(&[28, 0, 3, 26, 0, 27, 0]).is_err());
        assert!(parse_hot_reset_info(&[20, VFIO_PCI_HOT_RESET_FLAG_DEV_ID, 1, 5, 0]).is_err());
        assert!(parse_hot_reset_info(&[12, 0]).is_err());
        assert!(parse_hot_reset_info(&[12, 0, 0]).unwrap().is_empty());
        assert_eq!(hot_reset_words(&[7, 9]), vec![20, 0, 2, 7, 9]);
        assert_eq!(hot_reset_words(&[]), vec![12, 0, 0]);
    }

    fn cap_buf(caps: &[(u16, Vec<u8>)]) -> (Vec<u8>, u32) {
        // A 32-byte vfio_region_info followed by the chain.
        let mut buf = vec![0u8; 32];
        let first = if caps.is_empty() { 0 } else { 32 };
        for (i, (id, body)) in caps.iter().enumerate() {
            let at = buf.len();
            let next = if i + 1 < caps.len() {
                (at + 8 + body.len()) as u32
            } else {
                0
            };
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&1u16.to_le_bytes());
            buf.extend_from_slice(&next.to_le_bytes());
            buf.extend_from_slice(body);
        }
        (buf, first)
    }

    fn sparse_body(areas: &[(u64, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(areas.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for (o, s) in areas {
            b.extend_from_slice(&o.to_le_bytes());
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    #[test]
    fn region_caps_parse() {
        let (buf, first) = cap_buf(&[
            (
                VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16,
                sparse_body(&[(0, 0x1000), (0x3000, 0x5000)]),
            ),
            (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16, vec![]),
            (0x77, vec![0; 8]),
        ]);
        let (sparse, msix) = parse_region_caps(&buf, first).unwrap();
        assert_eq!(
            sparse.unwrap(),
            vec![
                SparseArea {
                    offset: 0,
                    size: 0x1000
                },
                SparseArea {
                    offset: 0x3000,
                    size: 0x5000
                }
            ]
        );
        assert!(msix);
    }

    #[test]
    fn malformed_region_caps_are_errors() {
        // A count of areas beyond the buffer.
        let mut body = sparse_body(&[(0, 0x1000)]);
        body[0] = 200;
        let (buf, first) = cap_buf(&[(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16, body)]);
        assert!(parse_region_caps(&buf, first).is_err());
        // A chain that loops onto itself.
        let (mut buf, first) = cap_buf(&[(0x77, vec![0; 8])]);
        buf[36..40].copy_from_slice(&32u32.to_le_bytes());
        assert!(parse_region_caps(&buf, first).is_err());
        // A pointer into the fixed part or past the end.
        let (buf, _) = cap_buf(&[(0x77, vec![])]);
        assert!(parse_region_caps(&buf, 8).is_err());
        assert!(parse_region_caps(&buf, 4096).is_err());
    }
}
