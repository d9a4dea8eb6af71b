//! Guest writes that signal an `EventFd` in the hypervisor, without an exit to the VMM
//! (KVM's `ioeventfd`).
//!
//! A device that wants a doorbell register handled off the vCPU thread asks an
//! [`IoEventRegistrar`] to bind an `EventFd` to a guest physical MMIO address
//! ([`IoEventRegistrar::register`]) or an I/O port ([`IoEventRegistrar::register_pio`]); a guest
//! write there then only signals the `EventFd` (KVM completes the write in the kernel and resumes
//! the vCPU). The virtio transport binds each queue's notify address this way and re-binds it when
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
    /// Every write of exactly this many bytes (1, 2, 4 or 8), whatever its value.
    AnyOfLen(u8),
    /// Only 1-byte writes of this value.
    U8(u8),
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
    /// The hypervisor (or the registrar) refused to bind the `EventFd` to a port.
    #[error("binding an eventfd to guest I/O port {port:#x} failed: {source}")]
    RegisterPio {
        /// Guest I/O port.
        port: u16,
        /// The hypervisor's error.
        #[source]
        source: std::io::Error,
    },
    /// The hypervisor (or the registrar) refused to unbind the `EventFd` from a port.
    #[error("unbinding the eventfd from guest I/O port {port:#x} failed: {source}")]
    UnregisterPio {
        /// Guest I/O port.
        port: u16,
        /// The hypervisor's error.
        #[source]
        source: std::io::Error,
    },
}

impl Datamatch {
    /// Whether a guest write of `len` bytes of `value` (little-endian, zero-extended) is one this
    /// datamatch accepts: what the hypervisor checks, for a device that sees a write the
    /// hypervisor did not take (no registrar, or a refused binding) and must act the same.
    pub fn accepts(&self, len: usize, value: u64) -> bool {
        match *self {
            Datamatch::Any => true,
            Datamatch::AnyOfLen(n) => len == usize::from(n),
            Datamatch::U8(v) => len == 1 && value == u64::from(v),
            Datamatch::U16(v) => len == 2 && value == u64::from(v),
            Datamatch::U32(v) => len == 4 && value == u64::from(v),
            Datamatch::U64(v) => len == 8 && value == v,
        }
    }
}

/// Binds `EventFd`s to guest physical MMIO addresses and I/O ports. Implemented by the VMM over
/// its hypervisor (`crate::kvm::KvmIoEvents` on KVM, feature `kvm`).
pub trait IoEventRegistrar: Send + Sync {
    /// From now on a guest write to `addr` that `datamatch` accepts signals `fd` instead of
    /// exiting to the VMM.
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Datamatch) -> Result<(), IoEventError>;
    /// Undoes [`IoEventRegistrar::register`] with the same arguments.
    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: Datamatch)
        -> Result<(), IoEventError>;
    /// From now on a guest write to I/O port `port` that `datamatch` accepts signals `fd`
    /// instead of exiting to the VMM. A registrar without port I/O refuses (the default): the
    /// write then exits to the device as before.
    fn register_pio(
        &self,
        fd: &EventFd,
        port: u16,
        datamatch: Datamatch,
    ) -> Result<(), IoEventError> {
        let _ = (fd, datamatch);
        Err(IoEventError::RegisterPio {
            port,
            source: std::io::ErrorKind::Unsupported.into(),
        })
    }
    /// Undoes [`IoEventRegistrar::register_pio`] with the same arguments.
    fn unregister_pio(
        &self,
        fd: &EventFd,
        port: u16,
        datamatch: Datamatch,
    ) -> Result<(), IoEventError> {
        let _ = (fd, datamatch);
        Err(IoEventError::UnregisterPio {
            port,
            source: std::io::ErrorKind::Unsupported.into(),
        })
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod fake {
    //! Test double (feature `test-util`): [`FakeIoEvents`] records the bindings, so a test can
    //! check which addresses and ports are bound to which `EventFd` and play a guest write that
    //! KVM would have turned into an `EventFd` signal ([`FakeIoEvents::guest_write`],
    //! [`FakeIoEvents::guest_out`]).

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

    /// The bindings of one address space, by address (or port).
    type Space = BTreeMap<u64, Binding>;

    /// The fake registrar. Clones share state.
    #[derive(Debug, Clone, Default)]
    pub struct FakeIoEvents {
        /// MMIO bindings, then port I/O bindings.
        bindings: Arc<Mutex<(Space, Space)>>,
    }

    impl FakeIoEvents {
        /// No bindings.
        pub fn new() -> Self {
            Self::default()
        }

        /// The bound MMIO addresses, in order.
        pub fn addresses(&self) -> Vec<u64> {
            self.lock().0.keys().copied().collect()
        }

        /// The bound I/O ports, in order.
        pub fn ports(&self) -> Vec<u16> {
            self.lock().1.keys().map(|&p| p as u16).collect()
        }

        /// The raw fd bound at MMIO address `addr` (the device's own `EventFd`, not the
        /// duplicate).
        pub fn fd_at(&self, addr: u64) -> Option<RawFd> {
            self.lock().0.get(&addr).map(|b| b.raw)
        }

        /// The datamatch of the binding at MMIO address `addr`.
        pub fn datamatch_at(&self, addr: u64) -> Option<Datamatch> {
            self.lock().0.get(&addr).map(|b| b.datamatch)
        }

        /// The raw fd and datamatch bound at I/O port `port`.
        pub fn at_port(&self, port: u16) -> Option<(RawFd, Datamatch)> {
            self.lock()
                .1
                .get(&u64::from(port))
                .map(|b| (b.raw, b.datamatch))
        }

        /// A guest write of `len` bytes of `value` at `addr`: signals the bound `EventFd` if the
        /// datamatch accepts it, as KVM would. Returns whether it did (if not, the write would
        /// have exited to the VMM).
        pub fn guest_write(&self, addr: u64, len: usize, value: u64) -> bool {
            signal(&self.lock().0, addr, len, value)
        }

        /// A guest `out` of `len` bytes of `value` to `port`, as [`FakeIoEvents::guest_write`].
        pub fn guest_out(&self, port: u16, len: usize, value: u64) -> bool {
            signal(&self.lock().1, u64::from(port), len, value)
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, (Space, Space)> {
            self.bindings.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    fn signal(space: &Space, addr: u64, len: usize, value: u64) -> bool {
        let Some(b) = space.get(&addr) else {
            return false;
        };
        b.datamatch.accepts(len, value) && b.fd.write(1).is_ok()
    }

    /// Binds like KVM: one binding per address here (KVM refuses an exact duplicate), and a
    /// length KVM refuses (`AnyOfLen` other than 1, 2, 4, 8) is refused.
    fn bind(
        space: &mut Space,
        fd: &EventFd,
        addr: u64,
        datamatch: Datamatch,
    ) -> std::io::Result<()> {
        if space.contains_key(&addr) {
            return Err(std::io::Error::from_raw_os_error(libc::EEXIST));
        }
        if matches!(datamatch, Datamatch::AnyOfLen(n) if !matches!(n, 1 | 2 | 4 | 8)) {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        let dup = fd.try_clone()?;
        space.insert(
            addr,
            Binding {
                fd: dup,
                raw: fd.as_raw_fd(),
                datamatch,
            },
        );
        Ok(())
    }

    fn unbind(
        space: &mut Space,
        fd: &EventFd,
        addr: u64,
        datamatch: Datamatch,
    ) -> std::io::Result<()> {
        match space.get(&addr) {
            Some(b) if b.raw == fd.as_raw_fd() && b.datamatch == datamatch => {
                space.remove(&addr);
                Ok(())
            }
            _ => Err(std::io::Error::from_raw_os_error(libc::ENOENT)),
        }
    }

    impl IoEventRegistrar for FakeIoEvents {
        fn register(
            &self,
            fd: &EventFd,
            addr: u64,
            datamatch: Datamatch,
        ) -> Result<(), IoEventError> {
            bind(&mut self.lock().0, fd, addr, datamatch)
                .map_err(|source| IoEventError::Register { addr, source })
        }

        fn unregister(
            &self,
            fd: &EventFd,
            addr: u64,
            datamatch: Datamatch,
        ) -> Result<(), IoEventError> {
            unbind(&mut self.lock().0, fd, addr, datamatch)
                .map_err(|source| IoEventError::Unregister { addr, source })
        }

        fn register_pio(
            &self,
            fd: &EventFd,
            port: u16,
            datamatch: Datamatch,
        ) -> Result<(), IoEventError> {
            bind(&mut self.lock().1, fd, u64::from(port), datamatch)
                .map_err(|source| IoEventError::RegisterPio { port, source })
        }

        fn unregister_pio(
            &self,
            fd: &EventFd,
            port: u16,
            datamatch: Datamatch,
        ) -> Result<(), IoEventError> {
            unbind(&mut self.lock().1, fd, u64::from(port), datamatch)
                .map_err(|source| IoEventError::UnregisterPio { port, source })
        }
    }
}
