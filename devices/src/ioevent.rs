//! Guest writes that signal an `EventFd` in the hypervisor, without an exit to the VMM
//! (KVM's `ioeventfd`).
//!
//! A device that wants a doorbell register handled off the vCPU thread asks an
//! [`IoEventRegistrar`] to bind an `EventFd` to a guest physical MMIO address; a guest write
//! there then only signals the `EventFd` (KVM completes the write in the kernel and resumes the
//! vCPU). The virtio transport binds each queue's notify address this way and re-binds it when
//! the guest moves the BAR ([`crate::pci::PciDevice::bar_moved`]). A write that does reach the
//! device (no registrar, a test) must have the same effect: the device signals the same
//! `EventFd` itself.
//!
//! The KVM implementation is `crate::kvm::KvmIoEvents` (feature `kvm`).

use vmm_sys_util::eventfd::EventFd;

/// Which writes to the address signal the `EventFd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datamatch {
    /// Every write, of any length.
    Any,
    /// Only 2-byte writes of this value.
    U16(u16),
    /// Only 4-byte writes of this value.
    U32(u32),
    /// Only 8-byte writes of this value.
    U64(u64),
}

/// Errors from binding or unbinding an `EventFd`.
#[derive(Debug, thiserror::Error)]
pub enum IoEventError {
    /// The hypervisor refused to bind the `EventFd`.
    #[error("binding an eventfd to guest MMIO address {addr:#x} failed: {source}")]
    Register {
        /// Guest physical address.
        addr: u64,
        /// The hypervisor's error.
        #[source]
        source: std::io::Error,
    },
    /// The hypervisor refused to unbind the `EventFd`.
    #[error("unbinding the eventfd from guest MMIO address {addr:#x} failed: {source}")]
    Unregister {
        /// Guest physical address.
        addr: u64,
        /// The hypervisor's error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds `EventFd`s to guest physical MMIO addresses. Implemented by the VMM over its
/// hypervisor (`crate::kvm::KvmIoEvents` on KVM, feature `kvm`).
pub trait IoEventRegistrar: Send + Sync {
    /// From now on a guest write to `addr` that `datamatch` accepts signals `fd` instead of
    /// exiting to the VMM.
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Datamatch) -> Result<(), IoEventError>;
    /// Undoes [`IoEventRegistrar::register`] with the same arguments.
    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: Datamatch)
        -> Result<(), IoEventError>;
}

#[cfg(any(test, feature = "test-util"))]
pub mod fake {
    //! Test double (feature `test-util`): [`FakeIoEvents`] records the bindings, so a test can
    //! check which addresses are bound to which `EventFd` and play a guest write that KVM would
    //! have turned into an `EventFd` signal ([`FakeIoEvents::guest_write`]).

    use std::collections::BTreeMap;
    use std::os::unix::io::{AsRawFd, RawFd};
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::EventFd;

    use super::{Datamatch, IoEventError, IoEventRegistrar};

    /// One binding: the fd (a duplicate, so the test can signal it) and its datamatch.
    #[derive(Debug)]
    struct Binding {
        fd: EventFd,
        raw: RawFd,
        datamatch: Datamatch,
    }

    /// The fake registrar. Clones share state.
    #[derive(Debug, Clone, Default)]
    pub struct FakeIoEvents {
        bindings: Arc<Mutex<BTreeMap<u64, Binding>>>,
    }

    impl FakeIoEvents {
        /// No bindings.
        pub fn new() -> Self {
            Self::default()
        }

        /// The bound addresses, in order.
        pub fn addresses(&self) -> Vec<u64> {
            self.lock().keys().copied().collect()
        }

        /// The raw fd bound at `addr` (the device's own `EventFd`, not the duplicate).
        pub fn fd_at(&self, addr: u64) -> Option<RawFd> {
            self.lock().get(&addr).map(|b| b.raw)
        }

        /// A guest write of `len` bytes of `value` at `addr`: signals the bound `EventFd` if the
        /// datamatch accepts it, as KVM would. Returns whether it did (if not, the write would
        /// have exited to the VMM).
        pub fn guest_write(&self, addr: u64, len: usize, value: u64) -> bool {
            let map = self.lock();
            let Some(b) = map.get(&addr) else {
                return false;
            };
            let hit = match b.datamatch {
                Datamatch::Any => true,
                Datamatch::U16(v) => len == 2 && value == u64::from(v),
                Datamatch::U32(v) => len == 4 && value == u64::from(v),
                Datamatch::U64(v) => len == 8 && value == v,
            };
            hit && b.fd.write(1).is_ok()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Binding>> {
            self.bindings.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl IoEventRegistrar for FakeIoEvents {
        fn register(
            &self,
            fd: &EventFd,
            addr: u64,
            datamatch: Datamatch,
        ) -> Result<(), IoEventError> {
            let mut map = self.lock();
            if map.contains_key(&addr) {
                return Err(IoEventError::Register {
                    addr,
                    source: std::io::Error::from_raw_os_error(libc::EEXIST),
                });
            }
            let dup = fd
                .try_clone()
                .map_err(|source| IoEventError::Register { addr, source })?;
            map.insert(
                addr,
                Binding {
                    fd: dup,
                    raw: fd.as_raw_fd(),
                    datamatch,
                },
            );
            Ok(())
        }

        fn unregister(
            &self,
            fd: &EventFd,
            addr: u64,
            datamatch: Datamatch,
        ) -> Result<(), IoEventError> {
            let mut map = self.lock();
            match map.get(&addr) {
                Some(b) if b.raw == fd.as_raw_fd() && b.datamatch == datamatch => {
                    map.remove(&addr);
                    Ok(())
                }
                _ => Err(IoEventError::Unregister {
                    addr,
                    source: std::io::Error::from_raw_os_error(libc::ENOENT),
                }),
            }
        }
    }
}
