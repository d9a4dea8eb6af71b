//! [`KvmIoEvents`]: the [`IoEventRegistrar`] over `KVM_IOEVENTFD`.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::ioevent::{Datamatch, IoEventError, IoEventRegistrar};

/// Binds `EventFd`s to guest MMIO addresses with `KVM_IOEVENTFD`: a matching guest write is
/// completed in the kernel and only signals the `EventFd`.
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
}

fn io_err(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Datamatch) -> Result<(), IoEventError> {
        let at = IoEventAddress::Mmio(addr);
        let r = match datamatch {
            Datamatch::Any => self.vm.register_ioevent(fd, &at, NoDatamatch),
            Datamatch::U16(v) => self.vm.register_ioevent(fd, &at, v),
            Datamatch::U32(v) => self.vm.register_ioevent(fd, &at, v),
            Datamatch::U64(v) => self.vm.register_ioevent(fd, &at, v),
        };
        r.map_err(|e| IoEventError::Register {
            addr,
            source: io_err(e),
        })
    }

    fn unregister(
        &self,
        fd: &EventFd,
        addr: u64,
        datamatch: Datamatch,
    ) -> Result<(), IoEventError> {
        let at = IoEventAddress::Mmio(addr);
        let r = match datamatch {
            Datamatch::Any => self.vm.unregister_ioevent(fd, &at, NoDatamatch),
            Datamatch::U16(v) => self.vm.unregister_ioevent(fd, &at, v),
            Datamatch::U32(v) => self.vm.unregister_ioevent(fd, &at, v),
            Datamatch::U64(v) => self.vm.unregister_ioevent(fd, &at, v),
        };
        r.map_err(|e| IoEventError::Unregister {
            addr,
            source: io_err(e),
        })
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
}
