//! KVM's VFIO pseudo-device (`KVM_DEV_TYPE_VFIO`): tells KVM which VFIO groups the VM uses, so
//! KVM can keep coherent DMA and non-coherent caching right for passed-through devices.

use std::os::fd::RawFd;

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_VFIO, KVM_DEV_VFIO_GROUP,
    KVM_DEV_VFIO_GROUP_ADD, KVM_DEV_VFIO_GROUP_DEL,
};
use kvm_ioctls::{DeviceFd, VmFd};

use crate::vfio::LegacyContainer;

/// KVM refused to create the pseudo-device or to take a group.
#[derive(Debug, thiserror::Error)]
#[error("cannot tell KVM about VFIO group {group}: {source} (is the kvm module new enough and vfio loaded?)")]
pub struct KvmVfioError {
    /// The group (0 for creating the pseudo-device itself).
    pub group: u32,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

/// The VM's KVM VFIO device. Closing it (drop) makes KVM forget every group; drop it after the
/// VFIO devices and before the container, the order docs/architecture.md gives.
#[derive(Debug)]
pub struct KvmVfioDevice {
    fd: DeviceFd,
}

impl KvmVfioDevice {
    /// Creates the pseudo-device on `vm`.
    pub fn new(vm: &VmFd) -> Result<Self, KvmVfioError> {
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let fd = vm
            .create_device(&mut dev)
            .map_err(|source| KvmVfioError { group: 0, source })?;
        Ok(KvmVfioDevice { fd })
    }

    fn group_attr(&self, op: u32, group: u32, fd: RawFd) -> Result<(), KvmVfioError> {
        let fd: i32 = fd;
        let attr = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_VFIO_GROUP,
            attr: u64::from(op),
            addr: &fd as *const i32 as u64,
        };
        self.fd
            .set_device_attr(&attr)
            .map_err(|source| KvmVfioError { group, source })
    }

    /// Adds VFIO group `group`, open as `fd` (`/dev/vfio/<group>`).
    pub fn add_group(&self, group: u32, fd: RawFd) -> Result<(), KvmVfioError> {
        self.group_attr(KVM_DEV_VFIO_GROUP_ADD, group, fd)
    }

    /// Removes a group added with [`KvmVfioDevice::add_group`].
    pub fn remove_group(&self, group: u32, fd: RawFd) -> Result<(), KvmVfioError> {
        self.group_attr(KVM_DEV_VFIO_GROUP_DEL, group, fd)
    }

    /// Adds every group of `container` (call it once, after the container has its groups);
    /// returns the groups added.
    pub fn add_groups_of(&self, container: &LegacyContainer) -> Result<Vec<u32>, KvmVfioError> {
        let groups = container.groups();
        for &g in &groups {
            if let Some(fd) = container.group_fd(g) {
                self.add_group(g, fd)?;
            }
        }
        Ok(groups)
    }
}
