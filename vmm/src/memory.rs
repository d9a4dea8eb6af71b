//! Guest RAM: an anonymous mapping per region of the layout, registered with KVM as memory slots.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// Guest RAM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors from setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// More RAM than the host has.
    #[error("--memory {asked} MiB is more than this host's {host} MiB of RAM: ask for less")]
    MoreThanHost {
        /// MiB asked for.
        asked: u64,
        /// MiB the host has.
        host: u64,
    },
    /// The mmap failed.
    #[error("cannot allocate {0} MiB of guest RAM: {1}")]
    Allocate(u64, String),
    /// KVM refused a memory slot.
    #[error("KVM refused guest RAM slot {slot} at {addr:#x}: {err}")]
    Slot {
        /// Slot number.
        slot: u32,
        /// Guest physical address.
        addr: u64,
        /// The error.
        err: kvm_ioctls::Error,
    },
}

/// The host's total RAM in bytes.
pub fn host_ram() -> Option<u64> {
    // SAFETY: sysinfo only writes the struct we pass, which is a valid zeroed `libc::sysinfo`.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some(info.totalram.saturating_mul(u64::from(info.mem_unit)))
}

/// Maps guest RAM for `mem_size` bytes (the layout decides where it goes).
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemory, MemoryError> {
    if let Some(host) = host_ram() {
        if mem_size > host {
            return Err(MemoryError::MoreThanHost {
                asked: mem_size >> 20,
                host: host >> 20,
            });
        }
    }
    let ranges: Vec<(GuestAddress, usize)> = arch::layout::ram_regions(mem_size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| MemoryError::Allocate(mem_size >> 20, e.to_string()))
}

/// Registers every RAM region with KVM, slots 0.. in address order; returns the next free slot.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemory) -> Result<u32, MemoryError> {
    let mut slot = 0u32;
    for region in mem.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Allocate(region.len() >> 20, e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` points at a live anonymous mapping of `region.len()` bytes owned by
        // `mem`; the Vm keeps `mem` alive for as long as the VM fd exists (it drops the VM fd
        // first), so KVM never maps freed memory.
        unsafe { vm.set_user_memory_region(r) }.map_err(|err| MemoryError::Slot {
            slot,
            addr: r.guest_phys_addr,
            err,
        })?;
        slot += 1;
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_more_than_host() {
        let host = host_ram().unwrap();
        assert!(matches!(
            create_guest_memory(host + (1 << 30)),
            Err(MemoryError::MoreThanHost { .. })
        ));
        let m = create_guest_memory(64 << 20).unwrap();
        assert_eq!(m.num_regions(), 1);
    }
}
