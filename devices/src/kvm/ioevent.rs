//! [`KvmIoEvents`]: the [`IoEventRegistrar`] over `KVM_IOEVENTFD`.
//!
//! The ioctl is issued here rather than through `kvm-ioctls`, whose `register_ioevent` derives
//! the write length from the datamatch type and so cannot say "every 1-byte write, any value"
//! ([`Datamatch::AnyOfLen`]), which QEMU's `pci-testdev` binds to its port.

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{
    kvm_ioeventfd, kvm_ioeventfd_flag_nr_datamatch, kvm_ioeventfd_flag_nr_deassign,
    kvm_ioeventfd_flag_nr_pio,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::ioevent::{Datamatch, IoEventError, IoEventRegistrar};

mod nr {
    use kvm_bindings::{kvm_ioeventfd, KVMIO};
    vmm_sys_util::ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
}

/// Binds `EventFd`s to guest MMIO addresses and I/O ports with `KVM_IOEVENTFD`: a matching
/// guest write is completed in the kernel and only signals the `EventFd`.
pub struct KvmIoEvents {
    vm: Arc<VmFd>,
}

impl std::fmt::Debug for KvmIoEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmIoEvents").finish_non_exhaustive()
    }
}

impl KvmIoEvents {
    /// A registrar for the VM `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        KvmIoEvents { vm }
    }

    /// One `KVM_IOEVENTFD` call: bind (or, with `deassign`, unbind) `fd` at `addr` in port
    /// space (`pio`) or memory space.
    fn ioeventfd(
        &self,
        fd: &EventFd,
        addr: u64,
        pio: bool,
        datamatch: Datamatch,
        deassign: bool,
    ) -> io::Result<()> {
        let (len, value, matched) = match datamatch {
            Datamatch::Any => (0, 0, false),
            Datamatch::AnyOfLen(n) => (u32::from(n), 0, false),
            Datamatch::U8(v) => (1, u64::from(v), true),
            Datamatch::U16(v) => (2, u64::from(v), true),
            Datamatch::U32(v) => (4, u64::from(v), true),
            Datamatch::U64(v) => (8, v, true),
        };
        let mut flags = 0;
        if matched {
            flags |= 1 << kvm_ioeventfd_flag_nr_datamatch;
        }
        if pio {
            flags |= 1 << kvm_ioeventfd_flag_nr_pio;
        }
        if deassign {
            flags |= 1 << kvm_ioeventfd_flag_nr_deassign;
        }
        let req = kvm_ioeventfd {
            datamatch: value,
            addr,
            len,
            fd: fd.as_raw_fd(),
            flags,
            ..Default::default()
        };
        // SAFETY: `self.vm` is a KVM VM fd; KVM_IOEVENTFD only reads one `kvm_ioeventfd` from
        // the pointer, and `req` is a fully initialised one that outlives the call. The kernel
        // checks the fd, length and flags itself.
        let ret = unsafe { ioctl_with_ref(&*self.vm, nr::KVM_IOEVENTFD(), &req) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Datamatch) -> Result<(), IoEventError> {
        self.ioeventfd(fd, addr, false, datamatch, false)
            .map_err(|source| IoEventError::Register { addr, source })
    }

    fn unregister(
        &self,
        fd: &EventFd,
        addr: u64,
        datamatch: Datamatch,
    ) -> Result<(), IoEventError> {
        self.ioeventfd(fd, addr, false, datamatch, true)
            .map_err(|source| IoEventError::Unregister { addr, source })
    }

    fn register_pio(
        &self,
        fd: &EventFd,
        port: u16,
        datamatch: Datamatch,
    ) -> Result<(), IoEventError> {
        self.ioeventfd(fd, u64::from(port), true, datamatch, false)
            .map_err(|source| IoEventError::RegisterPio { port, source })
    }

    fn unregister_pio(
        &self,
        fd: &EventFd,
        port: u16,
        datamatch: Datamatch,
    ) -> Result<(), IoEventError> {
        self.ioeventfd(fd, u64::from(port), true, datamatch, true)
            .map_err(|source| IoEventError::UnregisterPio { port, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    /// Bind, refuse a duplicate, unbind, refuse a second unbind, on a real VM.
    #[test]
    fn register_and_unregister_on_kvm() {
        let kvm = Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        let io = KvmIoEvents::new(vm);
        let fd = crate::new_eventfd().unwrap();
        io.register(&fd, 0xc000_3000, Datamatch::Any).unwrap();
        io.register(&fd, 0xc000_3004, Datamatch::U16(1)).unwrap();
        assert!(io.register(&fd, 0xc000_3000, Datamatch::Any).is_err());
        io.unregister(&fd, 0xc000_3000, Datamatch::Any).unwrap();
        io.unregister(&fd, 0xc000_3004, Datamatch::U16(1)).unwrap();
        assert!(io.unregister(&fd, 0xc000_3000, Datamatch::Any).is_err());
    }

    /// Every datamatch kind on both address spaces: bound, a duplicate refused, unbound only
    /// with the same arguments; the one-byte wildcard and byte datamatch included; a length KVM
    /// does not know refused.
    #[test]
    fn every_kind_on_ports_and_memory() {
        let kvm = Kvm::new().unwrap();
        let io = KvmIoEvents::new(Arc::new(kvm.create_vm().unwrap()));
        let fd = crate::new_eventfd().unwrap();
        let kinds = [
            Datamatch::Any,
            Datamatch::AnyOfLen(1),
            Datamatch::U8(0xfa),
            Datamatch::U16(2),
            Datamatch::U32(3),
            Datamatch::U64(4),
        ];
        for (i, &d) in kinds.iter().enumerate() {
            let port = 0x6000 + i as u16 * 16;
            let addr = 0xc000_0000 + i as u64 * 16;
            io.register_pio(&fd, port, d).unwrap();
            assert!(io.register_pio(&fd, port, d).is_err(), "{d:?}");
            io.register(&fd, addr, d).unwrap();
            // Port and memory bindings are separate: unbinding the port leaves the address.
            io.unregister_pio(&fd, port, d).unwrap();
            assert!(io.unregister_pio(&fd, port, d).is_err(), "{d:?}");
            io.unregister(&fd, addr, d).unwrap();
        }
        assert!(io
            .register_pio(&fd, 0x6100, Datamatch::AnyOfLen(3))
            .is_err());
        // Unbinding with another datamatch than the binding's finds nothing.
        io.register_pio(&fd, 0x6200, Datamatch::AnyOfLen(1))
            .unwrap();
        assert!(io.unregister_pio(&fd, 0x6200, Datamatch::Any).is_err());
        io.unregister_pio(&fd, 0x6200, Datamatch::AnyOfLen(1))
            .unwrap();
    }
}
