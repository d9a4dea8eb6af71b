//! KVM memory slots beyond guest RAM: device memory (passed-through BARs), and the
//! [`GuestMemoryMapper`] the VFIO device maps its BARs with.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

use crate::vfio::{GuestMemoryMapper, MapperError, SlotHandle};

/// KVM memory slots beyond guest RAM: device memory (a passed-through BAR's mmap) mapped into
/// the guest physical address space, moved when the guest moves the BAR.
pub struct DeviceSlots {
    vm: std::sync::Arc<VmFd>,
    state: std::sync::Mutex<SlotState>,
}

struct SlotState {
    next: u32,
    free: Vec<u32>,
    limit: u32,
}

impl std::fmt::Debug for DeviceSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSlots").finish_non_exhaustive()
    }
}

/// Errors from mapping device memory into the guest.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Every KVM memory slot is in use.
    #[error("no free KVM memory slot (KVM allows {0}); pass through fewer BARs")]
    NoFreeSlot(u32),
    /// KVM refused the mapping.
    #[error(
        "KVM refused to map {size:#x} bytes of device memory at guest address {gpa:#x}: {err}"
    )]
    Map {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// The mapping is not page aligned.
    #[error("device memory at guest address {gpa:#x} size {size:#x} is not page aligned")]
    Unaligned {
        /// Guest physical address.
        gpa: u64,
        /// Size.
        size: u64,
    },
}

impl DeviceSlots {
    /// Slots from `first` (after guest RAM's) up to KVM's limit.
    pub fn new(vm: std::sync::Arc<VmFd>, first: u32, limit: u32) -> Self {
        DeviceSlots {
            vm,
            state: std::sync::Mutex::new(SlotState {
                next: first,
                free: Vec::new(),
                limit,
            }),
        }
    }

    /// Maps `size` bytes of host memory at `host` to guest physical `gpa`; returns the slot.
    ///
    /// # Safety
    ///
    /// `host..host + size` must be a live mapping (a VFIO region mmap) that stays mapped until
    /// [`DeviceSlots::unmap`] is called for the returned slot, or the VM is destroyed.
    pub unsafe fn map(&self, gpa: u64, size: u64, host: u64) -> Result<u32, SlotError> {
        if gpa % 4096 != 0 || size % 4096 != 0 || host % 4096 != 0 || size == 0 {
            return Err(SlotError::Unaligned { gpa, size });
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match st.free.pop() {
            Some(s) => s,
            None if st.next < st.limit => {
                st.next += 1;
                st.next - 1
            }
            None => return Err(SlotError::NoFreeSlot(st.limit)),
        };
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: the caller guarantees `host..host + size` stays mapped while the slot exists.
        if let Err(err) = unsafe { self.vm.set_user_memory_region(region) } {
            st.free.push(slot);
            return Err(SlotError::Map { gpa, size, err });
        }
        Ok(slot)
    }

    /// Removes a slot made by [`DeviceSlots::map`].
    pub fn unmap(&self, slot: u32) -> Result<(), SlotError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0,
            userspace_addr: 0,
        };
        // SAFETY: a zero-sized region deletes the slot; no host memory is referenced.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|err| SlotError::Map {
            gpa: 0,
            size: 0,
            err,
        })?;
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .free
            .push(slot);
        Ok(())
    }
}

impl GuestMemoryMapper for DeviceSlots {
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> Result<SlotHandle, MapperError> {
        // SAFETY: the device promises `host..host + size` stays mapped until `unmap` succeeds,
        // which is DeviceSlots::map's contract.
        unsafe { DeviceSlots::map(self, gpa, size, host as u64) }
            .map(SlotHandle)
            .map_err(Into::into)
    }

    fn unmap(&self, handle: SlotHandle) -> Result<(), MapperError> {
        DeviceSlots::unmap(self, handle.0).map_err(Into::into)
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;
    use kvm_ioctls::Kvm;
    use std::sync::Arc;
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    /// Map, reuse and unmap device slots on a real VM.
    #[test]
    fn device_slots_map_and_reuse() {
        let kvm = Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        let backing = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let host = backing.get_host_address(GuestAddress(0)).unwrap() as u64;
        let slots = DeviceSlots::new(vm, 4, 6);
        // SAFETY: `backing` outlives the slots in this test.
        let a = unsafe { slots.map(0xc000_0000, 0x2000, host) }.unwrap();
        // SAFETY: as above.
        let b = unsafe { slots.map(0xc001_0000, 0x2000, host + 0x2000) }.unwrap();
        assert_eq!((a, b), (4, 5));
        // SAFETY: as above.
        let full = unsafe { slots.map(0xc002_0000, 0x1000, host) };
        assert!(matches!(full, Err(SlotError::NoFreeSlot(6))));
        slots.unmap(a).unwrap();
        // SAFETY: as above.
        let reused = unsafe { slots.map(0xc003_0000, 0x1000, host) }.unwrap();
        assert_eq!(reused, 4);
        // SAFETY: as above.
        let unaligned = unsafe { slots.map(0xc004_0001, 0x1000, host) };
        assert!(matches!(unaligned, Err(SlotError::Unaligned { .. })));
    }
}
