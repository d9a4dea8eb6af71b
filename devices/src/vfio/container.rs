//! The IOMMU side of passthrough: a container that holds the host's IOMMU groups, maps guest
//! RAM for device DMA and opens device file descriptors.
//!
//! [`VfioContainer`] is the interface; [`LegacyContainer`] implements it with the legacy
//! `/dev/vfio/vfio` container and the type-1 (v2) IOMMU. An iommufd backend can implement the
//! same trait beside it.
//!
//! # Lifecycle (legacy)
//!
//! 1. [`LegacyContainer::new`] opens `/dev/vfio/vfio` and checks the API version and type-1 v2
//!    support.
//! 2. [`VfioContainer::add_group`] opens `/dev/vfio/N` (once per group, however many of its
//!    functions are assigned), checks that the group is viable, attaches it to the container
//!    and, for the first group, selects the type-1 v2 IOMMU.
//! 3. The VMM adds every [`VfioContainer::kvm_files`] fd to its KVM VFIO device
//!    (`KVM_DEV_VFIO_GROUP_ADD`/`KVM_DEV_VFIO_FILE_ADD`), then maps guest RAM with
//!    [`VfioContainer::map_dma`] (IOVA = guest physical address).
//! 4. [`VfioContainer::open_device`] returns a [`VfioDeviceFd`] (`VFIO_GROUP_GET_DEVICE_FD` with
//!    `"BDF"` or `"BDF vf_token=UUID"`).
//!
//! # Teardown order
//!
//! Every device fd holds a reference to the container's shared state, so whatever order the
//! VMM drops things in, the kernel sees: device fds closed, then every DMA mapping unmapped,
//! then each group detached (`VFIO_GROUP_UNSET_CONTAINER`) and closed, then the container
//! closed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vfio_bindings::bindings::vfio::{
    VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE,
};

use super::sys;
use super::VfioDeviceFd;

/// The legacy container device.
pub const VFIO_CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// Errors from the container, its groups and opening devices. Each message names the cause and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// `/dev/vfio/vfio` does not exist.
    #[error("{VFIO_CONTAINER_PATH} does not exist: load the VFIO modules (modprobe vfio-pci)")]
    NoVfio,
    /// Opening a VFIO file was refused.
    #[error("permission denied opening {path}: run as root, or give this user read/write access to it (and a large enough RLIMIT_MEMLOCK to pin guest RAM)")]
    Permission {
        /// The file.
        path: String,
    },
    /// Opening the container failed otherwise.
    #[error("cannot open {VFIO_CONTAINER_PATH}: {0}")]
    OpenContainer(#[source] io::Error),
    /// The kernel speaks another VFIO API version.
    #[error("the kernel's VFIO API version is {0}, vfiovm needs {VFIO_API_VERSION}")]
    ApiVersion(i32),
    /// No type-1 v2 IOMMU.
    #[error("the kernel's VFIO container does not support the type-1 v2 IOMMU (is an IOMMU enabled? intel_iommu=on or amd_iommu=on on the host kernel command line)")]
    NoType1v2,
    /// `/dev/vfio/N` does not exist.
    #[error("/dev/vfio/{0} does not exist: the device is not bound to vfio-pci (echo vfio-pci > /sys/bus/pci/devices/BDF/driver_override; echo BDF > /sys/bus/pci/drivers_probe)")]
    NoGroup(u32),
    /// The group is open elsewhere.
    #[error("/dev/vfio/{0} is in use by another process or VM (a group opens once at a time): find it with `fuser -v /dev/vfio/{0}` / `lsof /dev/vfio/{0}` and stop it")]
    GroupBusy(u32),
    /// Opening the group failed otherwise.
    #[error("cannot open /dev/vfio/{group}: {source}")]
    OpenGroup {
        /// Group number.
        group: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Not every device of the group is bound to vfio-pci (or unbound).
    #[error("IOMMU group {0} is not viable: every device in the group must be bound to vfio-pci or to no driver (see the host checks for which)")]
    GroupNotViable(u32),
    /// An ioctl on the container or a group failed.
    #[error("{what} failed: {source}")]
    Ioctl {
        /// The ioctl and its arguments.
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The device address or VF token does not parse.
    #[error("invalid device '{0}': expected a PCI address like 0000:06:0d.0 and a UUID VF token")]
    BadDeviceName(String),
    /// The device is open elsewhere.
    #[error(
        "device {0} is in use by another process or VM: stop it (`fuser -v /dev/vfio/*` names it)"
    )]
    DeviceBusy(String),
    /// The kernel refused the VF token (missing, or not the one the PF's owner set).
    #[error("device {0} refused the VF token: it is a VF whose PF is owned by a userspace driver; give the PF owner's token with vf_token=UUID")]
    VfToken(String),
    /// A VF token was given for a device that takes none.
    #[error("device {0} is not an SR-IOV PF or VF owned through vfio-pci: remove vf_token=")]
    VfTokenNotNeeded(String),
    /// The group does not hold the device.
    #[error("device {bdf} is not in IOMMU group {group} (or not bound to vfio-pci)")]
    DeviceNotInGroup {
        /// The device.
        bdf: String,
        /// The group.
        group: u32,
    },
    /// Opening the device failed otherwise.
    #[error("cannot open device {bdf}: {source}")]
    OpenDevice {
        /// The device.
        bdf: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// DMA mapping before any group was added.
    #[error("cannot map DMA before a group is added to the container")]
    NoIommu,
    /// `VFIO_IOMMU_MAP_DMA` failed.
    #[error(
        "mapping {size:#x} bytes of guest RAM at IOVA {iova:#x} for DMA failed: {source}{hint}"
    )]
    MapDma {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
        /// The kernel's error.
        #[source]
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// `VFIO_IOMMU_UNMAP_DMA` failed or unmapped nothing.
    #[error("unmapping {size:#x} bytes at IOVA {iova:#x} failed: {source}")]
    UnmapDma {
        /// IOVA.
        iova: u64,
        /// Size.
        size: u64,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

/// A validated device name for `VFIO_GROUP_GET_DEVICE_FD`: its PCI address, its IOMMU group and
/// an optional VF token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioDeviceAddress {
    bdf: String,
    group: u32,
    vf_token: Option<String>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_bdf(s: &str) -> bool {
    // DDDD:BB:DD.F
    let parts: Vec<&str> = s.split([':', '.']).collect();
    matches!(parts.as_slice(), [d, b, s, f] if is_hex(d, 4) && is_hex(b, 2) && is_hex(s, 2)
        && f.len() == 1 && matches!(f.as_bytes()[0], b'0'..=b'7'))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| is_hex(g, n))
}

impl VfioDeviceAddress {
    /// `bdf` must be a full address (`0000:06:0d.0`), `vf_token` a UUID.
    pub fn new(bdf: &str, group: u32, vf_token: Option<&str>) -> Result<Self, ContainerError> {
        if !is_bdf(bdf) || vf_token.is_some_and(|t| !is_uuid(t)) {
            let shown = match vf_token {
                Some(t) => format!("{bdf} vf_token={t}"),
                None => bdf.to_string(),
            };
            return Err(ContainerError::BadDeviceName(shown));
        }
        Ok(VfioDeviceAddress {
            bdf: bdf.to_ascii_lowercase(),
            group,
            vf_token: vf_token.map(str::to_ascii_lowercase),
        })
    }

    /// The PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The IOMMU group.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// The name the kernel matches: `"BDF"` or `"BDF vf_token=UUID"`.
    pub fn kernel_name(&self) -> String {
        match &self.vf_token {
            Some(t) => format!("{} vf_token={t}", self.bdf),
            None => self.bdf.clone(),
        }
    }
}

/// A VFIO container: DMA mappings for every device in it, and the groups the devices come
/// from. Shared by every passed-through device of a VM.
pub trait VfioContainer: Send + Sync {
    /// Maps `size` bytes of host memory at `host_addr` for device DMA at `iova` (read and
    /// write). The VMM maps guest RAM with IOVA = guest physical address.
    ///
    /// # Safety
    ///
    /// `host_addr..host_addr + size` must be memory of this process that stays mapped until
    /// it is unmapped here (or the container is dropped), and that the caller accepts devices
    /// reading and writing at any time (guest RAM qualifies).
    unsafe fn map_dma(&self, iova: u64, size: u64, host_addr: u64) -> Result<(), ContainerError>;
    /// Unmaps the mappings inside `[iova, iova + size)`.
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), ContainerError>;
    /// Adds IOMMU group `group` (a no-op if it is already in).
    fn add_group(&self, group: u32) -> Result<(), ContainerError>;
    /// Opens a device of an added group (adding the group first if needed).
    fn open_device(&self, device: &VfioDeviceAddress) -> Result<VfioDeviceFd, ContainerError>;
    /// The fds the VMM registers with its KVM VFIO device (`KVM_DEV_VFIO_FILE_ADD`): the group
    /// fds of a legacy container.
    fn kvm_files(&self) -> Vec<RawFd>;
}

/// The kernel calls a legacy container makes, behind a trait so tests can fake them.
pub(crate) trait LegacySys: Send + Sync {
    fn open(&self, path: &str) -> io::Result<File>;
    fn api_version(&self, container: &File) -> io::Result<i32>;
    fn check_extension(&self, container: &File, ext: u32) -> io::Result<bool>;
    fn set_iommu(&self, container: &File, iommu_type: u32) -> io::Result<()>;
    fn group_status(&self, group: &File) -> io::Result<u32>;
    fn set_container(&self, group: &File, container: &File) -> io::Result<()>;
    fn unset_container(&self, group: &File) -> io::Result<()>;
    fn device_fd(&self, group: &File, name: &CString) -> io::Result<File>;
    /// # Safety
    ///
    /// As [`sys::map_dma`].
    unsafe fn map_dma(&self, container: &File, iova: u64, size: u64, vaddr: u64) -> io::Result<()>;
    fn unmap_dma(&self, container: &File, iova: u64, size: u64) -> io::Result<u64>;
}

/// The real kernel.
struct KernelSys;

impl LegacySys for KernelSys {
    fn open(&self, path: &str) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }
    fn api_version(&self, container: &File) -> io::Result<i32> {
        sys::api_version(container)
    }
    fn check_extension(&self, container: &File, ext: u32) -> io::Result<bool> {
        sys::check_extension(container, ext)
    }
    fn set_iommu(&self, container: &File, iommu_type: u32) -> io::Result<()> {
        sys::set_iommu(container, iommu_type)
    }
    fn group_status(&self, group: &File) -> io::Result<u32> {
        sys::group_status(group)
    }
    fn set_container(&self, group: &File, container: &File) -> io::Result<()> {
        sys::set_container(group, container)
    }
    fn unset_container(&self, group: &File) -> io::Result<()> {
        sys::unset_container(group)
    }
    fn device_fd(&self, group: &File, name: &CString) -> io::Result<File> {
        sys::group_device_fd(group, name)
    }
    unsafe fn map_dma(&self, container: &File, iova: u64, size: u64, vaddr: u64) -> io::Result<()> {
        // SAFETY: the caller upholds `sys::map_dma`'s contract.
        unsafe { sys::map_dma(container, iova, size, vaddr) }
    }
    fn unmap_dma(&self, container: &File, iova: u64, size: u64) -> io::Result<u64> {
        sys::unmap_dma(container, iova, size)
    }
}

#[derive(Default)]
struct State {
    /// Open groups, by number, in the order they were added.
    groups: Vec<(u32, File)>,
    iommu_set: bool,
    /// DMA mappings: IOVA -> size.
    dma: BTreeMap<u64, u64>,
    /// Guest memory mapped with [`LegacyContainer::map_guest_memory`], kept alive until the
    /// container has unmapped it (dropped after the unmapping in `Shared::drop`).
    kept: Vec<vm_memory::GuestMemoryMmap>,
}

/// What devices keep alive: the container file, its groups and mappings.
struct Shared {
    sys: Arc<dyn LegacySys>,
    container: File,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let sys = self.sys.clone();
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for (&iova, &size) in &st.dma {
            if let Err(e) = sys.unmap_dma(&self.container, iova, size) {
                log::warn!("VFIO: unmapping DMA at IOVA {iova:#x} (+{size:#x}) at teardown: {e}");
            }
        }
        st.dma.clear();
        for (id, group) in st.groups.drain(..) {
            if let Err(e) = sys.unset_container(&group) {
                log::warn!("VFIO: detaching IOMMU group {id} from the container: {e}");
            }
            drop(group);
        }
        // The container file closes when `self` is dropped, after the groups.
    }
}

/// The legacy VFIO container (`/dev/vfio/vfio`, type-1 v2 IOMMU).
pub struct LegacyContainer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LegacyContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyContainer")
            .field("groups", &self.groups())
            .finish_non_exhaustive()
    }
}

fn open_error(
    path: &str,
    e: io::Error,
    other: impl FnOnce(io::Error) -> ContainerError,
) -> ContainerError {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => ContainerError::Permission {
            path: path.to_string(),
        },
        _ => other(e),
    }
}

impl LegacyContainer {
    /// Opens `/dev/vfio/vfio` and checks the API version and type-1 v2 IOMMU support.
    pub fn new() -> Result<Self, ContainerError> {
        Self::with_sys(Arc::new(KernelSys))
    }

    pub(crate) fn with_sys(sys: Arc<dyn LegacySys>) -> Result<Self, ContainerError> {
        let container = sys.open(VFIO_CONTAINER_PATH).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContainerError::NoVfio,
            _ => open_error(VFIO_CONTAINER_PATH, e, ContainerError::OpenContainer),
        })?;
        let version = sys
            .api_version(&container)
            .map_err(|source| ContainerError::Ioctl {
                what: "VFIO_GET_API_VERSION".into(),
                source,
            })?;
        if version != VFIO_API_VERSION as i32 {
            return Err(ContainerError::ApiVersion(version));
        }
        match sys.check_extension(&container, VFIO_TYPE1v2_IOMMU) {
            Ok(true) => {}
            Ok(false) => return Err(ContainerError::NoType1v2),
            Err(source) => {
                return Err(ContainerError::Ioctl {
                    what: "VFIO_CHECK_EXTENSION(TYPE1v2)".into(),
                    source,
                })
            }
        }
        Ok(LegacyContainer {
            shared: Arc::new(Shared {
                sys,
                container,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// The groups in the container, in the order they were added.
    pub fn groups(&self) -> Vec<u32> {
        self.shared
            .state()
            .groups
            .iter()
            .map(|(id, _)| *id)
            .collect()
    }

    /// The fd of group `group`, if it was added (for `KVM_DEV_VFIO_GROUP_ADD`).
    pub fn group_fd(&self, group: u32) -> Option<RawFd> {
        self.shared
            .state()
            .groups
            .iter()
            .find(|(id, _)| *id == group)
            .map(|(_, f)| f.as_raw_fd())
    }

    /// The DMA mappings: `(iova, size)`.
    pub fn dma_mappings(&self) -> Vec<(u64, u64)> {
        self.shared
            .state()
            .dma
            .iter()
            .map(|(&i, &s)| (i, s))
            .collect()
    }

    /// DMA-maps every region of `mem` at its guest physical address (IOVA = GPA, what the
    /// passthrough device model assumes) and keeps a clone of `mem` — which keeps its host
    /// mappings alive — until the container is closed, so the IOMMU never points at freed
    /// memory: the safe way for a VMM on `vm_memory::GuestMemoryMmap` to give its guest RAM to
    /// the devices. Add the groups first. Returns the bytes mapped. On error the regions mapped
    /// so far stay mapped until the container closes.
    pub fn map_guest_memory(
        &self,
        mem: &vm_memory::GuestMemoryMmap,
    ) -> Result<u64, ContainerError> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
        self.shared.state().kept.push(mem.clone());
        let mut total = 0;
        for region in mem.iter() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| ContainerError::MapDma {
                    iova: region.start_addr().0,
                    size: region.len(),
                    hint: "",
                    source: io::Error::from_raw_os_error(libc::EFAULT),
                })?;
            // SAFETY: `host` is the start of the region's mapping, `len` bytes long; the clone
            // of `mem` kept in the state holds that mapping until the container's drop has
            // unmapped every DMA range.
            unsafe { self.map_dma(region.start_addr().0, region.len(), host as u64) }?;
            total += region.len();
        }
        Ok(total)
    }

    fn add_group_locked(&self, st: &mut State, group: u32) -> Result<(), ContainerError> {
        if st.groups.iter().any(|(id, _)| *id == group) {
            return Ok(());
        }
        let sh = &self.shared;
        let path = format!("/dev/vfio/{group}");
        let file = sh.sys.open(&path).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => ContainerError::NoGroup(group),
            Some(libc::EBUSY) => ContainerError::GroupBusy(group),
            _ => open_error(&path, e, |source| ContainerError::OpenGroup {
                group,
                source,
            }),
        })?;
        let ioctl = |what: &str| {
            let what = format!("{what} on /dev/vfio/{group}");
            move |source| ContainerError::Ioctl { what, source }
        };
        let flags = sh
            .sys
            .group_status(&file)
            .map_err(ioctl("VFIO_GROUP_GET_STATUS"))?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(ContainerError::GroupNotViable(group));
        }
        sh.sys
            .set_container(&file, &sh.container)
            .map_err(ioctl("VFIO_GROUP_SET_CONTAINER"))?;
        if !st.iommu_set {
            // The IOMMU type can only be chosen once a group is in the container.
            if let Err(e) = sh.sys.set_iommu(&sh.container, VFIO_TYPE1v2_IOMMU) {
                if let Err(u) = sh.sys.unset_container(&file) {
                    log::warn!("VFIO: detaching group {group} after a failed VFIO_SET_IOMMU: {u}");
                }
                return Err(ioctl("VFIO_SET_IOMMU(TYPE1v2)")(e));
            }
            st.iommu_set = true;
        }
        log::debug!("VFIO: IOMMU group {group} added to the container");
        st.groups.push((group, file));
        Ok(())
    }
}

fn map_dma_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOMEM) => {
            " (RLIMIT_MEMLOCK is too low to pin guest RAM: raise it, e.g. ulimit -l unlimited)"
        }
        Some(libc::EEXIST) => " (it overlaps an existing mapping)",
        Some(libc::EINVAL) => " (IOVA, size and address must be page aligned)",
        Some(libc::ENOSPC) => " (too many DMA mappings: raise vfio_iommu_type1's dma_entry_limit)",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (not allowed to pin memory: run as root or raise RLIMIT_MEMLOCK)"
        }
        _ => "",
    }
}

impl VfioContainer for LegacyContainer {
    unsafe fn map_dma(&self, iova: u64, size: u64, host_addr: u64) -> Result<(), ContainerError> {
        let sh = &self.shared;
        let mut st = sh.state();
        if !st.iommu_set {
            return Err(ContainerError::NoIommu);
        }
        // SAFETY: the caller upholds this method's contract, which is `map_dma`'s.
        let r = unsafe { sh.sys.map_dma(&sh.container, iova, size, host_addr) };
        r.map_err(|source| ContainerError::MapDma {
            iova,
            size,
            hint: map_dma_hint(&source),
            source,
        })?;
        st.dma.insert(iova, size);
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), ContainerError> {
        let sh = &self.shared;
        let mut st = sh.state();
        let err = |source| ContainerError::UnmapDma { iova, size, source };
        let done = sh.sys.unmap_dma(&sh.container, iova, size).map_err(err)?;
        if done == 0 {
            return Err(err(io::Error::from_raw_os_error(libc::ENOENT)));
        }
        let end = iova.saturating_add(size);
        st.dma
            .retain(|&i, &mut s| !(i >= iova && i.saturating_add(s) <= end));
        Ok(())
    }

    fn add_group(&self, group: u32) -> Result<(), ContainerError> {
        let mut st = self.shared.state();
        self.add_group_locked(&mut st, group)
    }

    fn open_device(&self, device: &VfioDeviceAddress) -> Result<VfioDeviceFd, ContainerError> {
        let sh = &self.shared;
        let mut st = sh.state();
        self.add_group_locked(&mut st, device.group)?;
        let Some((_, group)) = st.groups.iter().find(|(id, _)| *id == device.group) else {
            return Err(ContainerError::NoGroup(device.group));
        };
        let name = CString::new(device.kernel_name())
            .map_err(|_| ContainerError::BadDeviceName(device.kernel_name()))?;
        let bdf = device.bdf.clone();
        let file = sh
            .sys
            .device_fd(group, &name)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => ContainerError::DeviceBusy(bdf.clone()),
                Some(libc::EACCES) => ContainerError::VfToken(bdf.clone()),
                Some(libc::EINVAL) if device.vf_token.is_some() => {
                    ContainerError::VfTokenNotNeeded(bdf.clone())
                }
                Some(libc::ENODEV) => ContainerError::DeviceNotInGroup {
                    bdf: bdf.clone(),
                    group: device.group,
                },
                _ => ContainerError::OpenDevice {
                    bdf: bdf.clone(),
                    source: e,
                },
            })?;
        drop(st);
        log::debug!("VFIO: opened device {bdf}");
        let owner: Arc<dyn std::any::Any + Send + Sync> = self.shared.clone();
        Ok(VfioDeviceFd::new(file, Some(owner)))
    }

    fn kvm_files(&self) -> Vec<RawFd> {
        self.shared
            .state()
            .groups
            .iter()
            .map(|(_, f)| f.as_raw_fd())
            .collect()
    }
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;
