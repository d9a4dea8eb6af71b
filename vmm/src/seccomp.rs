//! Seccomp sandboxing: one BPF filter per kind of VMM thread, allowing only the syscalls (and,
//! for `ioctl`, the request numbers) that thread makes once the VM is built.
//!
//! - vCPU threads (`vcpuN`), [`ThreadKind::Vcpu`]: `KVM_RUN` and exit handling; each thread
//!   installs its filter itself, before its first `KVM_RUN`.
//! - The VMM thread (main: event loop, stopping the vCPUs, teardown), [`ThreadKind::Vmm`]:
//!   epoll, signalfd, stdin, kicks, teardown; installed once every vCPU thread is spawned.
//!
//! - virtio I/O threads (`virtio-*`), [`ThreadKind::Device`]: epoll on the queues' eventfds,
//!   the device's own I/O (`getrandom`, `pread64`/`pwrite64`, `fdatasync`, `fallocate`,
//!   `io_uring_enter` on a disk's restricted ring, `preadv2` for a read the page cache holds;
//!   virtio-net's frames are `readv`/`writev` on its tap, straight between the tap and guest
//!   RAM, or `read`/`write` through its own buffer) and irqfd
//!   writes; virtio-console's output to a socket is `sendto` with `MSG_DONTWAIT |
//!   MSG_NOSIGNAL` only. The tap's `TUNSETOFFLOAD` is a vCPU thread's: the driver starts the card there. Each is created with its device while the VM is built, waits at the
//!   [`DeviceGate`] and installs its filter when the gate opens, before it serves anything.
//! - The virtio-9p I/O threads (`virtio-9pN`, `--share`), [`ThreadKind::Share`]: the same
//!   queue work, and the file-system calls of the in-process 9P server (`openat`, `*at`
//!   calls on its directory descriptors, `getdents64`, `pread64`/`pwrite64`, `fsync`…), which
//!   no other thread gets. None of the other devices' backend calls (`getrandom`, io_uring,
//!   `fallocate`, `sendto`, `readv`/`writev`).
//!
//! The VMM spawns no other threads (the kernel may add io_uring workers, `iou-wrk-*`, for a
//! disk's ring: they run no user-space code). Order, in [`crate::vm::Vm::run_sandboxed`]: the VM is fully
//! built (devices open, guest RAM and BARs mapped, DMA mapped, vCPUs created); each vCPU thread
//! installs its filter and waits at a start gate; the VMM thread installs its own filter and
//! opens the gate; only then does any vCPU enter the guest. Filters are per thread (no TSYNC)
//! and a vCPU thread does not inherit the VMM filter, since that is installed after the spawn.
//!
//! A syscall outside the filter kills the whole process (`SECCOMP_RET_KILL_PROCESS`): it dies by
//! SIGSYS, exit status 128 + 31 = 159 in a shell, and the kernel logs an audit line with the
//! syscall number (`dmesg`). Nothing can be logged by vfiovm itself at that point. To find the
//! missing syscall, run the same command with `--no-seccomp` under `strace -f` (see
//! docs/security.md).
//!
//! Argument checks where they are cheap and meaningful: `ioctl` by request number, `mmap` and
//! `mprotect` never with `PROT_EXEC`, `fcntl` only to read flags, `tgkill` only with the vCPU
//! kick signal or SIGABRT (a panic's abort). File descriptors are not checked (their numbers
//! are not known when the filters are compiled).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

use seccompiler::{
    apply_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::config::{SandboxConfig, ViolationSite};

/// The ioctl request numbers the filters allow, from the kernel's uapi (`_IO`/`_IOR`/`_IOW`).
#[allow(missing_docs, non_snake_case)]
mod nr {
    use kvm_bindings::{
        kvm_debugregs, kvm_fpu, kvm_irq_routing, kvm_irqfd, kvm_lapic_state, kvm_mp_state,
        kvm_msrs, kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, kvm_xcrs,
        KVMIO,
    };
    use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

    const VFIO: u32 = VFIO_TYPE as u32;
    const TUN: u32 = b'T' as u32;

    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
    ioctl_iow_nr!(
        KVM_SET_USER_MEMORY_REGION,
        KVMIO,
        0x46,
        kvm_userspace_memory_region
    );
    ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
    ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
    ioctl_iow_nr!(KVM_IRQ_LINE, KVMIO, 0x61, kvm_bindings::kvm_irq_level);
    ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);
    ioctl_iow_nr!(KVM_SET_REGS, KVMIO, 0x82, kvm_regs);
    ioctl_iow_nr!(KVM_SET_SREGS, KVMIO, 0x84, kvm_sregs);
    ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
    ioctl_iow_nr!(KVM_SET_FPU, KVMIO, 0x8d, kvm_fpu);
    ioctl_iow_nr!(KVM_SET_LAPIC, KVMIO, 0x8f, kvm_lapic_state);
    ioctl_iow_nr!(KVM_SET_MP_STATE, KVMIO, 0x99, kvm_mp_state);
    ioctl_iow_nr!(KVM_SET_VCPU_EVENTS, KVMIO, 0xa0, kvm_vcpu_events);
    ioctl_iow_nr!(KVM_SET_DEBUGREGS, KVMIO, 0xa2, kvm_debugregs);
    ioctl_iow_nr!(KVM_SET_XCRS, KVMIO, 0xa7, kvm_xcrs);
    // The kernel declares KVM_SET_IRQCHIP with _IOR.
    ioctl_ior_nr!(KVM_SET_IRQCHIP, KVMIO, 0x63, kvm_bindings::kvm_irqchip);
    ioctl_iow_nr!(KVM_SET_PIT2, KVMIO, 0xa0, kvm_bindings::kvm_pit_state2);

    ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO, VFIO_BASE + 5);
    ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO, VFIO_BASE + 10);
    ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO, VFIO_BASE + 11);
    // The same number as VFIO_IOMMU_MAP_DMA (a container's): the filter cannot tell them apart.
    ioctl_io_nr!(VFIO_DEVICE_PCI_HOT_RESET, VFIO, VFIO_BASE + 13);
    ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO, VFIO_BASE + 14);

    ioctl_iow_nr!(TUNSETOFFLOAD, TUN, 208, libc::c_uint);

    /// Terminal attributes (`tcgetattr`/`tcsetattr(TCSANOW)`), for restoring a raw-mode stdin.
    pub fn TCGETS() -> u64 {
        libc::TCGETS
    }
    pub fn TCSETS() -> u64 {
        libc::TCSETS
    }
}

/// The kinds of thread the VMM runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop (stdin, signals, stop requests), stopping the vCPUs, and
    /// tearing the VM down.
    Vmm,
    /// A vCPU thread: `KVM_RUN` and the exit handlers (port I/O and MMIO to devices, PCI config
    /// space, BAR moves, MSI/MSI-X masking).
    Vcpu,
    /// A virtio device's I/O thread: its queues and its backend's I/O.
    Device,
    /// A virtio-9p device's I/O thread: its queue and the 9P server's file-system calls.
    Share,
}

impl ThreadKind {
    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "VMM thread",
            ThreadKind::Vcpu => "vCPU thread",
            ThreadKind::Device => "virtio I/O thread",
            ThreadKind::Share => "virtio-9p I/O thread",
        }
    }
}

/// Errors from building or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter does not compile (a bug in the rules below).
    #[error("cannot build the seccomp filter for the {0}: {1} (a vfiovm bug; --no-seccomp runs without filters)")]
    Compile(&'static str, String),
    /// The kernel refused a filter.
    #[error("cannot install the seccomp filter for the {0}: {1} (the kernel needs CONFIG_SECCOMP_FILTER; --no-seccomp runs without filters)")]
    Install(String, #[source] seccompiler::Error),
    /// `--user`: switching user or group failed.
    #[error("cannot drop privileges to --user {uid}:{gid}: {step} failed: {err} (vfiovm must start as root to switch users; or leave out --user)")]
    DropPrivileges {
        /// The user asked for.
        uid: u32,
        /// The group asked for.
        gid: u32,
        /// `setgroups`, `setgid` or `setuid`, or the check after them.
        step: &'static str,
        /// Why.
        #[source]
        err: std::io::Error,
    },
}

/// The real and effective user and group IDs: `(uid, euid, gid, egid)`.
fn current_ids() -> (u32, u32, u32, u32) {
    // SAFETY: getuid only returns the calling process's real user ID; it cannot fail.
    let uid = unsafe { libc::getuid() };
    // SAFETY: likewise for the effective user ID.
    let euid = unsafe { libc::geteuid() };
    // SAFETY: likewise for the real group ID.
    let gid = unsafe { libc::getgid() };
    // SAFETY: likewise for the effective group ID.
    let egid = unsafe { libc::getegid() };
    (uid, euid, gid, egid)
}

/// `--user UID:GID`: drops every supplementary group, then switches the real, effective and
/// saved group and user IDs for good. Call while the process has one thread (glibc would
/// otherwise have to signal every thread to follow) and after everything that needs root is
/// open: /dev/kvm, /dev/vfio, guest RAM locked and DMA-mapped. Files and devices already open
/// stay usable; nothing new can be opened as root.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), SeccompError> {
    let fail = |step: &'static str| SeccompError::DropPrivileges {
        uid,
        gid,
        step,
        err: std::io::Error::last_os_error(),
    };
    // SAFETY: an empty group list: the kernel reads no memory.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(fail("setgroups"));
    }
    // SAFETY: plain integer argument.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(fail("setgid"));
    }
    // SAFETY: plain integer argument.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(fail("setuid"));
    }
    let now = current_ids();
    // Root could get root back only if a saved ID stayed 0: setuid() as root sets all three.
    // SAFETY: setuid with a plain integer; it must fail now.
    let regained = uid != 0 && unsafe { libc::setuid(0) } == 0;
    if now != (uid, uid, gid, gid) || regained {
        return Err(SeccompError::DropPrivileges {
            uid,
            gid,
            step: "the check",
            err: std::io::Error::other(format!(
                "now uid {}/{} gid {}/{}{}",
                now.0,
                now.1,
                now.2,
                now.3,
                if regained {
                    ", and root can be regained"
                } else {
                    ""
                }
            )),
        });
    }
    log::info!("running as uid {uid}, gid {gid}, no supplementary groups");
    Ok(())
}

/// The syscalls of one filter: number → rules (`None`: any arguments; otherwise any rule).
#[derive(Default)]
struct Rules(BTreeMap<i64, Option<Vec<SeccompRule>>>);

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, seccompiler::Error> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(Into::into)
}

impl Rules {
    /// Allows each syscall in `nrs` whatever its arguments.
    fn any(&mut self, nrs: &[libc::c_long]) {
        for &nr in nrs {
            self.0.insert(nr, None);
        }
    }

    /// Allows `nr` when argument `arg` (32 bits) equals one of `values`.
    fn arg_in(
        &mut self,
        nr: libc::c_long,
        arg: u8,
        values: &[u64],
    ) -> Result<(), seccompiler::Error> {
        for &v in values {
            let rule = SeccompRule::new(vec![cond(arg, SeccompCmpOp::Eq, v)?])?;
            self.push(nr, rule);
        }
        Ok(())
    }

    /// Allows `nr` when none of the bits of `mask` are set in argument `arg`.
    fn arg_without(
        &mut self,
        nr: libc::c_long,
        arg: u8,
        mask: u64,
    ) -> Result<(), seccompiler::Error> {
        let rule = SeccompRule::new(vec![cond(arg, SeccompCmpOp::MaskedEq(mask), 0)?])?;
        self.push(nr, rule);
        Ok(())
    }

    fn push(&mut self, nr: libc::c_long, rule: SeccompRule) {
        // `None`: already allowed with any arguments, which a rule would only narrow.
        if let Some(rules) = self.0.entry(nr).or_insert_with(|| Some(Vec::new())) {
            rules.push(rule);
        }
    }

    fn into_map(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.0
            .into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect()
    }
}

/// What every thread needs: memory allocation (never executable), locks, reading and writing
/// fds it already has (eventfds, stdout, stderr), closing them, signal delivery and masking,
/// the time, a panic's abort, and leaving.
fn common(r: &mut Rules) -> Result<(), seccompiler::Error> {
    r.any(&[
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_restart_syscall,
        libc::SYS_sigaltstack,
        libc::SYS_clock_gettime,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_exit,
    ]);
    let exec = libc::PROT_EXEC as u64;
    r.arg_without(libc::SYS_mmap, 2, exec)?;
    r.arg_without(libc::SYS_mprotect, 2, exec)?;
    // std checks an fd is open (F_GETFD) before closing it in debug builds.
    r.arg_in(
        libc::SYS_fcntl,
        1,
        &[libc::F_GETFD as u64, libc::F_GETFL as u64],
    )?;
    // A panic aborts (release builds): raise(SIGABRT) is a tgkill to the thread itself.
    r.arg_in(libc::SYS_tgkill, 2, &[libc::SIGABRT as u64])?;
    Ok(())
}

fn rules(kind: ThreadKind, kick: libc::c_int) -> Result<Rules, seccompiler::Error> {
    let mut r = Rules::default();
    common(&mut r)?;
    match kind {
        ThreadKind::Vcpu => {
            r.arg_in(
                libc::SYS_ioctl,
                1,
                &[
                    nr::KVM_RUN(),
                    // The register dump when a guest crashes (-v).
                    nr::KVM_GET_REGS(),
                    nr::KVM_GET_SREGS(),
                    // VcpuHandle::reset runs on the parked vCPU thread (it owns the fd) and
                    // writes the power-on state (vcpu::reset::power_on). They only set this
                    // VM's vCPU state, which the guest itself controls anyway.
                    nr::KVM_SET_REGS(),
                    nr::KVM_SET_SREGS(),
                    nr::KVM_SET_MSRS(),
                    nr::KVM_SET_FPU(),
                    nr::KVM_SET_LAPIC(),
                    nr::KVM_SET_MP_STATE(),
                    nr::KVM_SET_VCPU_EVENTS(),
                    nr::KVM_SET_DEBUGREGS(),
                    nr::KVM_SET_XCRS(),
                    // MSI/MSI-X routes and masking, INTx (re)connection.
                    nr::KVM_SET_GSI_ROUTING(),
                    nr::KVM_IRQFD(),
                    // pc-testdev's interrupt line ports (--pc-testdev): a level on one of the
                    // VM's own GSIs, which the guest can already raise through its devices.
                    nr::KVM_IRQ_LINE(),
                    // A guest moving a passed-through BAR moves its memory slots; a firmware
                    // command to the CFI flash removes or restores the read-only slot of its
                    // array (read-array mode).
                    nr::KVM_SET_USER_MEMORY_REGION(),
                    // A guest moving a virtio BAR moves its queue notify ioeventfds; a guest
                    // selecting one of pci-testdev's eventfd tests (--pci-testdev) binds that
                    // test's eventfd in its own BAR (and unbinds the last one's).
                    nr::KVM_IOEVENTFD(),
                    // A passed-through device's interrupt mode follows the guest's MSI/MSI-X
                    // enable bits.
                    nr::VFIO_DEVICE_SET_IRQS(),
                    // A guest's function-level reset resets the device with its strategy. The
                    // hot reset's number is also VFIO_IOMMU_MAP_DMA's, which gives this thread
                    // no power KVM_SET_USER_MEMORY_REGION does not (both put memory of the
                    // process where the guest reaches it).
                    nr::VFIO_DEVICE_RESET(),
                    nr::VFIO_DEVICE_PCI_HOT_RESET(),
                    // Peer-to-peer DMA: a guest moving a passed-through BAR (or turning its
                    // decoding off) moves its DMA mapping too (PeerDmaMapper); mapping is the
                    // number above. Both only name memory the guest already reaches as a slot.
                    nr::VFIO_IOMMU_UNMAP_DMA(),
                    // A guest starting a virtio-net card tells its tap which offloads the
                    // driver takes.
                    nr::TUNSETOFFLOAD(),
                ],
            )?;
            r.any(&[
                // VFIO config space and trapped BAR accesses; the firmware's CFI flash writes
                // each program and erase to its VARS file.
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                // The CFI flash syncs its VARS file after an erase and when the firmware ends
                // a programming sequence.
                libc::SYS_fdatasync,
                // The serial console waits for a non-blocking stdout to drain.
                libc::SYS_poll,
                libc::SYS_ppoll,
            ]);
        }
        ThreadKind::Vmm => {
            r.arg_in(
                libc::SYS_ioctl,
                1,
                &[
                    // Teardown: MSI vectors and INTx lines release their irqfds and routes,
                    // passed-through BARs leave their memory slots, devices turn their
                    // interrupts off and reset, the container unmaps DMA and lets its groups go.
                    nr::KVM_IRQFD(),
                    nr::KVM_SET_GSI_ROUTING(),
                    nr::KVM_SET_USER_MEMORY_REGION(),
                    // virtio devices unbind their notify ioeventfds, pci-testdev its running
                    // test's.
                    nr::KVM_IOEVENTFD(),
                    nr::VFIO_DEVICE_SET_IRQS(),
                    nr::VFIO_DEVICE_RESET(),
                    nr::VFIO_DEVICE_PCI_HOT_RESET(),
                    nr::VFIO_IOMMU_UNMAP_DMA(),
                    nr::VFIO_GROUP_UNSET_CONTAINER(),
                    // A reboot in place: the PIC, IOAPIC and PIT back to their state at
                    // creation (vm::Vm::reboot).
                    nr::KVM_SET_IRQCHIP(),
                    nr::KVM_SET_PIT2(),
                    // Restoring a terminal stdin from raw mode.
                    nr::TCGETS(),
                    nr::TCSETS(),
                ],
            )?;
            // Kicking a vCPU out of KVM_RUN (pthread_kill).
            r.arg_in(libc::SYS_tgkill, 2, &[kick as u64])?;
            r.any(&[
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                // No sleep of ours is left on this thread (stop_all waits on a condvar); kept
                // so a std or libc timed wait that falls back to it cannot kill the VMM.
                libc::SYS_clock_nanosleep,
                libc::SYS_exit_group,
                // Teardown: the firmware's CFI flash syncs its VARS file when it is dropped.
                libc::SYS_fdatasync,
                // --verdict: the verdict, written to a temporary file opened before the
                // filter, is renamed into place at the end of the run (runner::VerdictFile).
                // rename(2) moves names the process could already write; it opens nothing.
                libc::SYS_rename,
                // A direct boot's reboot in place reads its kernel and initramfs again from
                // the descriptors opened while the VM was built.
                libc::SYS_lseek,
            ]);
        }
        ThreadKind::Device => {
            queue_waits(&mut r);
            r.any(&[
                // virtio-rng
                libc::SYS_getrandom,
                // virtio-net: frames between its tap and guest RAM (read(2)/write(2) through
                // its own buffer are every thread's); the tap joins the epoll set.
                libc::SYS_readv,
                libc::SYS_writev,
                // virtio-blk: the image's data, FLUSH, DISCARD and WRITE_ZEROES.
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_fdatasync,
                libc::SYS_fallocate,
                // virtio-blk's io_uring: submitting and waiting. The ring is set up (and
                // restricted to READV, WRITEV and FSYNC, with no registration allowed) when
                // the disk is opened, before any filter, so io_uring_setup and
                // io_uring_register stay out of every filter.
                libc::SYS_io_uring_enter,
                // virtio-blk: a read the page cache holds, done at once (RWF_NOWAIT).
                libc::SYS_preadv2,
            ]);
            // virtio-console: output to a pipe or terminal is write(2) on a descriptor
            // opened non-blocking while the VM was built, its wait for room epoll; output to
            // a socket (stdout under systemd, say) is send(2) with exactly these flags, so
            // it never blocks and never raises SIGPIPE.
            let dontwait = (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u64;
            r.arg_in(libc::SYS_sendto, 3, &[dontwait])?;
        }
        ThreadKind::Share => {
            queue_waits(&mut r);
            // The p9 crate's server (devices::virtio::p9), on the shared directory: it opens
            // /proc and the share's root by path, everything else relative to descriptors it
            // holds (openat with O_NOFOLLOW, or through /proc/self/fd), and the device's own
            // checks run first. These are what its handlers call, traced (docs/security.md).
            r.any(&[
                libc::SYS_openat,
                libc::SYS_newfstatat,
                libc::SYS_fstatfs,
                libc::SYS_readlinkat,
                // Treaddir: readdir64 and seekdir on a duplicate of the directory's descriptor.
                libc::SYS_getdents64,
                libc::SYS_lseek,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_ftruncate,
                libc::SYS_fsync,
                libc::SYS_fdatasync,
                libc::SYS_fchmodat,
                libc::SYS_fchownat,
                libc::SYS_utimensat,
                libc::SYS_mkdirat,
                libc::SYS_renameat,
                libc::SYS_unlinkat,
                libc::SYS_linkat,
                // The device refuses a chown to any other user or group than the VMM's.
                libc::SYS_geteuid,
                libc::SYS_getegid,
            ]);
            // Duplicating a directory descriptor for readdir (and a walk of no names), which
            // glibc's fdopendir then marks close-on-exec.
            r.arg_in(
                libc::SYS_fcntl,
                1,
                &[libc::F_DUPFD_CLOEXEC as u64, libc::F_SETFD as u64],
            )?;
        }
    }
    Ok(r)
}

/// What every virtio I/O thread does to wait: on the queues' notify eventfds and the stop
/// eventfd, a new epoll set per start of the device.
fn queue_waits(r: &mut Rules) {
    r.any(&[
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
    ]);
}

/// Keeps every thread's heap allocations in glibc's main arena (`M_ARENA_MAX` = 1); call it
/// before any thread is spawned. A thread arena is trimmed with `shrink_heap`, whose first call
/// in a process reads `/proc/sys/vm/overcommit_memory`: an `openat` no filter allows, so a
/// large block freed on a confined thread (a device's I/O thread freeing what the VMM thread
/// allocated, say) could kill the VMM with SIGSYS. The main arena shrinks with `brk`, which
/// every filter allows.
pub fn malloc_in_one_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tunables; the caller runs it before any
    // other thread exists, so no allocation races it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The filters of the virtio I/O threads.
#[derive(Debug, Clone)]
pub struct DeviceFilters {
    /// Every device's but virtio-9p's ([`ThreadKind::Device`]).
    pub device: Arc<BpfProgram>,
    /// virtio-9p's ([`ThreadKind::Share`]).
    pub share: Arc<BpfProgram>,
}

/// Holds virtio I/O threads back, at their start, until the VM runs: then each installs its
/// kind's filter (or none: `--no-seccomp`, or an embedder's [`crate::vm::Vm::run`]) and goes
/// on. A VM dropped without running opens it with no filter, so the threads can leave.
#[derive(Debug, Default)]
pub struct DeviceGate {
    /// `None` until opened; then the filters to install, if any.
    state: Mutex<Option<Option<DeviceFilters>>>,
    cond: Condvar,
}

impl DeviceGate {
    /// Opens the gate: each waiting thread (and each that arrives later) installs its filter
    /// from `filters`. Only the first call counts.
    pub fn open(&self, filters: Option<DeviceFilters>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(filters);
        }
        self.cond.notify_all();
    }

    /// On a device's I/O thread, first thing: waits for the gate, installs the filter of
    /// `kind` ([`ThreadKind::Share`] for virtio-9p, [`ThreadKind::Device`] for the others).
    /// `false` (with an error logged) when the kernel refused the filter: the thread must end.
    pub fn enter(&self, thread: &str, kind: ThreadKind) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let filters = loop {
            match &*s {
                Some(f) => break f.clone(),
                None => s = self.cond.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
        };
        drop(s);
        let filter = filters.map(|f| match kind {
            ThreadKind::Share => f.share,
            _ => f.device,
        });
        match filter {
            Some(f) => match apply_filter(&f) {
                Ok(()) => true,
                Err(e) => {
                    log::error!(
                        "{}",
                        SeccompError::Install(format!("virtio I/O thread {thread}"), e)
                    );
                    false
                }
            },
            None => true,
        }
    }
}

/// Compiles the filter for `kind`; syscalls outside it get `on_violation`.
fn program(kind: ThreadKind, on_violation: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let err = |e: seccompiler::Error| SeccompError::Compile(kind.name(), e.to_string());
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SeccompError::Compile(kind.name(), e.to_string()))?;
    let rules = rules(kind, crate::vcpu::kick_signal()).map_err(err)?;
    let filter = SeccompFilter::new(rules.into_map(), on_violation, SeccompAction::Allow, arch)
        .map_err(|e| err(e.into()))?;
    BpfProgram::try_from(filter).map_err(|e| err(e.into()))
}

/// Holds vCPU threads back until the VMM thread's filter is in.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    cond: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while !*open {
            open = self.cond.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The process's sandbox for one VM run: the compiled filters (none with `--no-seccomp`), the
/// start gate, and the test hook.
pub struct Sandbox {
    /// `(vmm, vcpu, virtio devices)` programs; `None` when seccomp is off.
    filters: Option<(BpfProgram, BpfProgram, DeviceFilters)>,
    test_violation: Option<ViolationSite>,
    gate: Gate,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field(
                "filter_lengths",
                &self
                    .filters
                    .as_ref()
                    .map(|(a, b, c)| (a.len(), b.len(), c.device.len(), c.share.len())),
            )
            .field("test_violation", &self.test_violation)
            .finish()
    }
}

impl Sandbox {
    /// Compiles the filters `config` asks for (none with `--no-seccomp`).
    pub fn new(config: &SandboxConfig) -> Result<Sandbox, SeccompError> {
        let filters = if config.seccomp {
            Some((
                program(ThreadKind::Vmm, SeccompAction::KillProcess)?,
                program(ThreadKind::Vcpu, SeccompAction::KillProcess)?,
                DeviceFilters {
                    device: Arc::new(program(ThreadKind::Device, SeccompAction::KillProcess)?),
                    share: Arc::new(program(ThreadKind::Share, SeccompAction::KillProcess)?),
                },
            ))
        } else {
            None
        };
        Ok(Sandbox {
            filters,
            test_violation: config.test_violation,
            gate: Gate::default(),
        })
    }

    /// Whether filters are installed at all.
    pub fn enabled(&self) -> bool {
        self.filters.is_some()
    }

    /// On vCPU `id`'s thread, before its first `KVM_RUN`: installs the vCPU filter, then waits
    /// until the VMM thread has installed its own ([`Sandbox::enter_vmm`]) or given up
    /// ([`Sandbox::release`]). On an error the thread must not run the guest.
    pub fn enter_vcpu(&self, id: u32) -> Result<(), SeccompError> {
        if let Some((_, vcpu, _)) = &self.filters {
            apply_filter(vcpu).map_err(|e| SeccompError::Install(format!("vCPU {id}"), e))?;
        }
        self.gate.wait();
        if id == 0 {
            self.test_hook(ViolationSite::Vcpu, "vCPU 0");
        }
        Ok(())
    }

    /// On the VMM thread, after every vCPU thread is spawned: installs the VMM filter and lets
    /// the vCPUs run. On an error the gate stays shut: stop the vCPUs (set their stop flag,
    /// then [`Sandbox::release`]).
    pub fn enter_vmm(&self) -> Result<(), SeccompError> {
        match &self.filters {
            Some((vmm, _, _)) => {
                apply_filter(vmm).map_err(|e| SeccompError::Install("VMM".into(), e))?;
                log::debug!(
                    "seccomp filter installed on the VMM thread; each vCPU thread installs its own before its first KVM_RUN"
                );
            }
            None => log::debug!("no seccomp filters (--no-seccomp): the guest starts now"),
        }
        self.gate.open();
        self.test_hook(ViolationSite::Vmm, "VMM");
        Ok(())
    }

    /// The filters virtio I/O threads install ([`DeviceGate::open`]); `None` without seccomp.
    pub fn device_filters(&self) -> Option<DeviceFilters> {
        self.filters.as_ref().map(|(_, _, d)| d.clone())
    }

    /// Opens the start gate without the VMM filter (on the way out after an error), so vCPU
    /// threads waiting at it can see their stop flag and leave.
    pub fn release(&self) {
        self.gate.open();
    }

    /// `--test-seccomp-violation`: opens a file, which no filter allows.
    fn test_hook(&self, site: ViolationSite, thread: &str) {
        if self.test_violation != Some(site) {
            return;
        }
        log::warn!(
            "--test-seccomp-violation: the {thread} thread opens /dev/null, which its seccomp filter does not allow"
        );
        match std::fs::File::open("/dev/null") {
            Ok(_) => log::warn!(
                "--test-seccomp-violation: the {thread} thread survived (seccomp is off)"
            ),
            Err(e) => log::warn!("--test-seccomp-violation: opening /dev/null failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Arc;

    use kvm_bindings::{kvm_userspace_memory_region, KvmIrqRouting};
    use kvm_ioctls::{Kvm, VcpuFd, VmFd};
    use vm_memory::MmapRegion;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;

    /// The errno the test filters return instead of killing the process: none of the calls
    /// below fails with it for another reason.
    const REFUSED: i32 = libc::ENOTRECOVERABLE;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        // From linux/kvm.h, linux/vfio.h and asm-generic/ioctls.h on x86_64.
        assert_eq!(nr::KVM_RUN(), 0xae80);
        assert_eq!(nr::KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(nr::KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(nr::KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(nr::KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(nr::KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(nr::KVM_IRQ_LINE(), 0x4008_ae61);
        assert_eq!(nr::KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(nr::KVM_SET_REGS(), 0x4090_ae82);
        assert_eq!(nr::KVM_SET_SREGS(), 0x4138_ae84);
        assert_eq!(nr::KVM_SET_MSRS(), 0x4008_ae89);
        assert_eq!(nr::KVM_SET_FPU(), 0x41a0_ae8d);
        assert_eq!(nr::KVM_SET_LAPIC(), 0x4400_ae8f);
        assert_eq!(nr::KVM_SET_MP_STATE(), 0x4004_ae99);
        assert_eq!(nr::KVM_SET_VCPU_EVENTS(), 0x4040_aea0);
        assert_eq!(nr::KVM_SET_DEBUGREGS(), 0x4080_aea2);
        assert_eq!(nr::KVM_SET_XCRS(), 0x4188_aea7);
        assert_eq!(nr::KVM_SET_IRQCHIP(), 0x8208_ae63);
        assert_eq!(nr::KVM_SET_PIT2(), 0x4070_aea0);
        assert_eq!(nr::VFIO_GROUP_UNSET_CONTAINER(), 0x3b69);
        assert_eq!(nr::VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(nr::VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(nr::VFIO_DEVICE_PCI_HOT_RESET(), 0x3b71);
        assert_eq!(nr::VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
        assert_eq!((nr::TCGETS(), nr::TCSETS()), (0x5401, 0x5402));
        assert_eq!(nr::TUNSETOFFLOAD(), libc::TUNSETOFFLOAD);
        assert_eq!(nr::TUNSETOFFLOAD(), 0x4004_54d0);
    }

    #[test]
    fn filters_compile_within_the_bpf_limit() {
        let s = Sandbox::new(&SandboxConfig::default()).unwrap();
        assert!(s.enabled());
        let (vmm, vcpu, devices) = s.filters.as_ref().unwrap();
        for p in [vmm, vcpu, &*devices.device, &*devices.share] {
            assert!(!p.is_empty() && p.len() < 4096, "{} instructions", p.len());
        }
        let off = Sandbox::new(&SandboxConfig {
            seccomp: false,
            ..Default::default()
        })
        .unwrap();
        assert!(!off.enabled());
    }

    /// What a confined thread needs, made before its filter is in.
    struct Kit {
        vm: Arc<VmFd>,
        vcpu: VcpuFd,
        /// A page to map as a memory slot.
        page: MmapRegion,
        /// An eventfd (for irqfds, reads and writes, poll and epoll).
        evt: EventFd,
        /// A regular file (for pread/pwrite).
        file: std::fs::File,
        epoll: Epoll,
        /// A datagram socket pair (for frames, as virtio-net moves them on a tap).
        pair: (UnixDatagram, UnixDatagram),
    }

    fn kit(tmp: &TempFile) -> Kit {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        Kit {
            vm: Arc::new(vm),
            vcpu,
            page: MmapRegion::new(4096).unwrap(),
            evt: devices::new_eventfd().unwrap(),
            file: tmp.as_file().try_clone().unwrap(),
            epoll: Epoll::new().unwrap(),
            pair: UnixDatagram::pair().unwrap(),
        }
    }

    /// Runs `f` on a new thread under `kind`'s filter, with refused syscalls failing with
    /// [`REFUSED`] instead of killing the test process.
    fn confined<T: Send + 'static>(kind: ThreadKind, f: impl FnOnce() -> T + Send + 'static) -> T {
        let prog = program(kind, SeccompAction::Errno(REFUSED as u32)).unwrap();
        std::thread::spawn(move || {
            apply_filter(&prog).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn refused_kvm<T>(r: Result<T, kvm_ioctls::Error>) -> bool {
        matches!(r, Err(e) if e.errno() == REFUSED)
    }

    /// An io_uring system call `nr` with a bad descriptor and null pointers (EBADF, EFAULT or
    /// EINVAL if the filter lets it through): whether the filter refused it.
    fn uring_call(nr: libc::c_long) -> bool {
        // SAFETY: every argument is a bad descriptor, zero or null; the kernel validates them
        // and writes nothing.
        let r = unsafe { libc::syscall(nr, -1, 0, 0, 0, 0usize, 0) };
        r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(REFUSED)
    }

    fn refused_io<T>(r: std::io::Result<T>) -> bool {
        matches!(r, Err(e) if e.raw_os_error() == Some(REFUSED))
    }

    /// An ioctl with request `nr` and a null argument on an eventfd, which implements no ioctl:
    /// ENOTTY if the filter lets it through.
    fn refused_ioctl(evt: &EventFd, nr: u64) -> bool {
        // SAFETY: an eventfd has no ioctls; the kernel refuses any request before it could look
        // at the (null) argument, and the fd is ours.
        let r = unsafe { vmm_sys_util::ioctl::ioctl_with_val(evt, nr, 0) };
        r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(REFUSED)
    }

    fn slot(page: &MmapRegion, size: u64) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot: 5,
            flags: 0,
            guest_phys_addr: 0x1_0000_0000,
            memory_size: size,
            userspace_addr: page.as_ptr() as u64,
        }
    }

    fn routing() -> KvmIrqRouting {
        KvmIrqRouting::from_entries(&devices::kvm::interrupts::irqchip_routes()).unwrap()
    }

    /// Maps `k.page` as a memory slot and removes it again.
    fn slot_round_trip(k: &Kit) -> bool {
        // SAFETY: `k.page` outlives the slot, which is removed right after.
        let add = unsafe { k.vm.set_user_memory_region(slot(&k.page, 4096)) };
        // SAFETY: removes the slot just added (size 0).
        let remove = unsafe { k.vm.set_user_memory_region(slot(&k.page, 0)) };
        refused_kvm(add) || refused_kvm(remove)
    }

    fn ioeventfd_round_trip(k: &Kit) -> bool {
        let at = kvm_ioctls::IoEventAddress::Mmio(0xd000_0000);
        refused_kvm(k.vm.register_ioevent(&k.evt, &at, kvm_ioctls::NoDatamatch))
            || refused_kvm(k.vm.unregister_ioevent(&k.evt, &at, kvm_ioctls::NoDatamatch))
    }

    fn irqfd_round_trip(k: &Kit) -> bool {
        refused_kvm(k.vm.register_irqfd(&k.evt, 5)) || refused_kvm(k.vm.unregister_irqfd(&k.evt, 5))
    }

    fn eventfd_round_trip(k: &Kit) -> bool {
        refused_io(k.evt.write(1)) || refused_io(k.evt.read())
    }

    fn exec_mapping() -> bool {
        matches!(
            MmapRegion::<()>::build(
                None,
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            ),
            Err(vm_memory::mmap::MmapRegionError::Mmap(e)) if e.raw_os_error() == Some(REFUSED)
        )
    }

    type Checks = Vec<(&'static str, bool)>;

    fn check(kind: ThreadKind, allowed: Checks, refused: Checks) {
        for (what, was_refused) in allowed {
            assert!(!was_refused, "the {} filter refuses {what}", kind.name());
        }
        for (what, was_refused) in refused {
            assert!(was_refused, "the {} filter allows {what}", kind.name());
        }
    }

    #[test]
    fn vcpu_filter_allows_what_a_vcpu_thread_does_and_nothing_else() {
        let tmp = TempFile::new().unwrap();
        let mut k = kit(&tmp);
        let (allowed, refused) = confined(ThreadKind::Vcpu, move || {
            let mut buf = [0u8; 8];
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&k.evt),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd for the duration of the call.
            let polled = unsafe { libc::poll(&mut pfd, 1, 0) };
            let allowed: Checks = vec![
                // With no guest state KVM_RUN ends in some exit or some error, not in REFUSED.
                ("KVM_RUN", refused_kvm(k.vcpu.run().map(|_| ()))),
                ("KVM_GET_REGS", refused_kvm(k.vcpu.get_regs())),
                ("KVM_GET_SREGS", refused_kvm(k.vcpu.get_sregs())),
                // A whole reset (every setter it makes) succeeds on the confined thread.
                (
                    "the reset's KVM_SET_*",
                    crate::vcpu::reset::power_on(&k.vcpu, 0, 0x600).is_err(),
                ),
                (
                    "KVM_SET_GSI_ROUTING",
                    refused_kvm(k.vm.set_gsi_routing(&routing())),
                ),
                ("KVM_IRQFD", irqfd_round_trip(&k)),
                ("KVM_SET_USER_MEMORY_REGION", slot_round_trip(&k)),
                ("KVM_IOEVENTFD", ioeventfd_round_trip(&k)),
                (
                    "VFIO_DEVICE_SET_IRQS",
                    refused_ioctl(&k.evt, nr::VFIO_DEVICE_SET_IRQS()),
                ),
                (
                    "VFIO_DEVICE_RESET",
                    refused_ioctl(&k.evt, nr::VFIO_DEVICE_RESET()),
                ),
                (
                    "VFIO_DEVICE_PCI_HOT_RESET",
                    refused_ioctl(&k.evt, nr::VFIO_DEVICE_PCI_HOT_RESET()),
                ),
                (
                    "VFIO_IOMMU_UNMAP_DMA",
                    refused_ioctl(&k.evt, nr::VFIO_IOMMU_UNMAP_DMA()),
                ),
                ("TUNSETOFFLOAD", refused_ioctl(&k.evt, nr::TUNSETOFFLOAD())),
                ("eventfd read/write", eventfd_round_trip(&k)),
                ("pwrite64", refused_io(k.file.write_at(b"12345678", 0))),
                ("pread64", refused_io(k.file.read_at(&mut buf, 0))),
                ("fdatasync", refused_io(k.file.sync_data())),
                (
                    "poll",
                    polled < 0 && std::io::Error::last_os_error().raw_os_error() == Some(REFUSED),
                ),
            ];
            let refused: Checks = vec![
                ("openat", refused_io(std::fs::File::open("/dev/null"))),
                ("eventfd2", refused_io(devices::new_eventfd())),
                ("KVM_CREATE_VCPU", refused_kvm(k.vm.create_vcpu(1))),
                ("TCGETS", refused_ioctl(&k.evt, nr::TCGETS())),
                (
                    "epoll_wait",
                    refused_io(k.epoll.wait(0, &mut [EpollEvent::default()])),
                ),
                ("mmap with PROT_EXEC", exec_mapping()),
            ];
            (allowed, refused)
        });
        check(ThreadKind::Vcpu, allowed, refused);
    }

    #[test]
    fn vmm_filter_allows_the_event_loop_and_teardown_and_nothing_else() {
        let tmp = TempFile::new().unwrap();
        let mut k = kit(&tmp);
        // The verdict's rename, and an unlink that must stay refused.
        let src = TempFile::new().unwrap();
        let from = src.as_path().to_path_buf();
        let to = from.with_extension("renamed");
        let renamed = to.clone();
        let (allowed, refused) = confined(ThreadKind::Vmm, move || {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&k.evt);
            let ev = EpollEvent::new(EventSet::IN, fd as u64);
            let add = k.epoll.ctl(ControlOperation::Add, fd, ev);
            let wait = k.epoll.wait(0, &mut [EpollEvent::default()]);
            let del = k.epoll.ctl(ControlOperation::Delete, fd, ev);
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1000,
            };
            // SAFETY: `ts` is a valid timespec; no remainder is asked for.
            let slept = unsafe {
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut())
            };
            let mut buf = [0u8; 8];
            let allowed: Checks = vec![
                (
                    "epoll_ctl/epoll_wait",
                    refused_io(add) || refused_io(wait) || refused_io(del),
                ),
                ("clock_nanosleep", slept == REFUSED),
                ("eventfd read/write", eventfd_round_trip(&k)),
                ("KVM_IRQFD", irqfd_round_trip(&k)),
                (
                    "KVM_SET_GSI_ROUTING",
                    refused_kvm(k.vm.set_gsi_routing(&routing())),
                ),
                ("KVM_SET_USER_MEMORY_REGION", slot_round_trip(&k)),
                ("KVM_IOEVENTFD", ioeventfd_round_trip(&k)),
                (
                    "VFIO_DEVICE_SET_IRQS",
                    refused_ioctl(&k.evt, nr::VFIO_DEVICE_SET_IRQS()),
                ),
                (
                    "VFIO_DEVICE_RESET",
                    refused_ioctl(&k.evt, nr::VFIO_DEVICE_RESET()),
                ),
                (
                    "VFIO_DEVICE_PCI_HOT_RESET",
                    refused_ioctl(&k.evt, nr::VFIO_DEVICE_PCI_HOT_RESET()),
                ),
                (
                    "VFIO_IOMMU_UNMAP_DMA",
                    refused_ioctl(&k.evt, nr::VFIO_IOMMU_UNMAP_DMA()),
                ),
                (
                    "VFIO_GROUP_UNSET_CONTAINER",
                    refused_ioctl(&k.evt, nr::VFIO_GROUP_UNSET_CONTAINER()),
                ),
                ("TCGETS", refused_ioctl(&k.evt, nr::TCGETS())),
                ("TCSETS", refused_ioctl(&k.evt, nr::TCSETS())),
                ("fdatasync", refused_io(k.file.sync_data())),
                ("rename", refused_io(std::fs::rename(&from, &to))),
                (
                    "KVM_SET_IRQCHIP",
                    refused_ioctl(&k.evt, nr::KVM_SET_IRQCHIP()),
                ),
                ("KVM_SET_PIT2", refused_ioctl(&k.evt, nr::KVM_SET_PIT2())),
                (
                    "lseek",
                    refused_io(std::io::Seek::seek(
                        &mut &k.file,
                        std::io::SeekFrom::Start(0),
                    )),
                ),
            ];
            let refused: Checks = vec![
                ("KVM_RUN", refused_kvm(k.vcpu.run().map(|_| ()))),
                ("openat", refused_io(std::fs::File::open("/dev/null"))),
                ("unlink", refused_io(std::fs::remove_file(&to))),
                ("eventfd2", refused_io(devices::new_eventfd())),
                ("pread64", refused_io(k.file.read_at(&mut buf, 0))),
                ("KVM_CREATE_VCPU", refused_kvm(k.vm.create_vcpu(1))),
                ("mmap with PROT_EXEC", exec_mapping()),
            ];
            (allowed, refused)
        });
        check(ThreadKind::Vmm, allowed, refused);
        assert!(renamed.exists(), "renamed under the filter");
        std::fs::remove_file(renamed).unwrap();
    }

    /// Whether a `send(2)` with `flags` on the kit's datagram pair was refused by the filter.
    fn sent(k: &Kit, flags: libc::c_int) -> bool {
        let out = [1u8; 8];
        // SAFETY: send(2) reads `out`, a live buffer of the length passed.
        let n = unsafe { libc::send(k.pair.0.as_raw_fd(), out.as_ptr().cast(), out.len(), flags) };
        n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(REFUSED)
    }

    /// A 9P message field (9P2000.L wire format).
    enum F<'a> {
        B(u8),
        H(u16),
        W(u32),
        D(u64),
        S(&'a str),
        Data(&'a [u8]),
    }

    /// A T-message of type `ty`, tag 1.
    fn t9(ty: u8, fields: &[F]) -> Vec<u8> {
        let mut m = vec![0, 0, 0, 0, ty, 1, 0];
        for f in fields {
            match f {
                F::B(v) => m.push(*v),
                F::H(v) => m.extend_from_slice(&v.to_le_bytes()),
                F::W(v) => m.extend_from_slice(&v.to_le_bytes()),
                F::D(v) => m.extend_from_slice(&v.to_le_bytes()),
                F::S(v) => {
                    m.extend_from_slice(&(v.len() as u16).to_le_bytes());
                    m.extend_from_slice(v.as_bytes());
                }
                F::Data(v) => {
                    m.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    m.extend_from_slice(v);
                }
            }
        }
        let n = m.len() as u32;
        m[..4].copy_from_slice(&n.to_le_bytes());
        m
    }

    /// A whole 9P session on a real directory, every kind of message the server handles with
    /// a system call, served under the virtio-9p filter: each one succeeds (a call the filter
    /// refused would come back as `Rlerror(REFUSED)`). The other devices' calls stay refused.
    #[test]
    fn share_filter_allows_what_the_9p_server_does_and_nothing_else() {
        use devices::virtio::p9::ShareServer;
        use F::*;
        let tmp = TempFile::new().unwrap();
        let mut k = kit(&tmp);
        let root = std::env::temp_dir().join(format!("vfiovm-seccomp-9p-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("link")).unwrap();
        let server = ShareServer::new(&root, false);
        let (_, uid, _, gid) = current_ids();
        let session: Vec<(&str, Vec<u8>)> = vec![
            ("Tversion", t9(100, &[W(65536), S("9P2000.L")])),
            ("Tattach", t9(104, &[W(1), W(!0), S(""), S(""), W(0)])),
            ("Twalk (clone)", t9(110, &[W(1), W(2), H(0)])),
            ("Tlcreate", t9(14, &[W(2), S("f"), W(2), W(0o644), W(0)])),
            ("Twrite", t9(118, &[W(2), D(0), Data(b"hello")])),
            ("Tread", t9(116, &[W(2), D(0), W(5)])),
            ("Tfsync", t9(50, &[W(2), W(0)])),
            ("Tfsync (data)", t9(50, &[W(2), W(1)])),
            (
                "Tlock",
                t9(52, &[W(2), B(0), W(0), D(0), D(0), W(1), S("c")]),
            ),
            ("Tgetlock", t9(54, &[W(2), B(0), D(0), D(0), W(1), S("c")])),
            ("Tgetattr", t9(24, &[W(2), D(0x7ff)])),
            (
                "Tsetattr (mode, owner, size, times)",
                t9(
                    26,
                    &[
                        W(2),
                        W(0x3f),
                        W(0o600),
                        W(uid),
                        W(gid),
                        D(2),
                        D(1),
                        D(0),
                        D(1),
                        D(0),
                    ],
                ),
            ),
            (
                "Tsetattr (ctime)",
                t9(
                    26,
                    &[
                        W(2),
                        W(0x40),
                        W(0),
                        W(0),
                        W(0),
                        D(0),
                        D(0),
                        D(0),
                        D(0),
                        D(0),
                    ],
                ),
            ),
            ("Tstatfs", t9(8, &[W(1)])),
            ("Tmkdir", t9(72, &[W(1), S("d"), W(0o755), W(0)])),
            ("Twalk", t9(110, &[W(1), W(3), H(1), S("f")])),
            (
                "Tsetattr (size, not open)",
                t9(
                    26,
                    &[W(3), W(0x8), W(0), W(0), W(0), D(1), D(0), D(0), D(0), D(0)],
                ),
            ),
            ("Tlink", t9(70, &[W(1), W(3), S("hard")])),
            ("Trenameat", t9(74, &[W(1), S("hard"), W(1), S("moved")])),
            ("Tunlinkat", t9(76, &[W(1), S("moved"), W(0)])),
            ("Twalk (to a link)", t9(110, &[W(1), W(4), H(1), S("link")])),
            ("Treadlink", t9(22, &[W(4)])),
            ("Twalk (clone)", t9(110, &[W(1), W(5), H(0)])),
            ("Tlopen", t9(12, &[W(5), W(0o200000)])),
            ("Treaddir", t9(40, &[W(5), D(0), W(4096)])),
            ("Tclunk", t9(120, &[W(3)])),
        ];
        // Then the same directory from its second entry on (seekdir: lseek).
        let readdir_from = |offset: u64| t9(40, &[W(5), D(offset), W(4096)]);
        let (replies, refused) = confined(ThreadKind::Share, move || {
            let mut server = server;
            let replies: Vec<(&str, u8, Vec<u8>)> = session
                .into_iter()
                .map(|(what, mut m)| {
                    let ty = m[4];
                    let mut r = Vec::new();
                    server.handle(&mut m, 65536, &mut r);
                    (what, ty, r)
                })
                .collect();
            // The first entry's offset: after its qid (13 bytes) in the Rreaddir's data.
            let first = &replies.iter().find(|r| r.0 == "Treaddir").unwrap().2;
            let offset = u64::from_le_bytes(first[24..32].try_into().unwrap());
            let mut m = readdir_from(offset);
            let mut rest = Vec::new();
            server.handle(&mut m, 65536, &mut rest);
            let replies = [replies, vec![("Treaddir from the second entry", 40, rest)]].concat();
            drop(server);
            let mut rnd = [0u8; 4];
            // SAFETY: `rnd` is a valid buffer of that length.
            let got = unsafe { libc::getrandom(rnd.as_mut_ptr().cast(), rnd.len(), 0) };
            let fd_file = std::os::fd::AsRawFd::as_raw_fd(&k.file);
            // SAFETY: plain fallocate on a file of ours.
            let falloc = unsafe { libc::fallocate(fd_file, 0, 0, 4096) };
            let errno = || std::io::Error::last_os_error().raw_os_error();
            let refused: Checks = vec![
                ("KVM_IRQFD", irqfd_round_trip(&k)),
                ("KVM_RUN", refused_kvm(k.vcpu.run().map(|_| ()))),
                ("eventfd2", refused_io(devices::new_eventfd())),
                ("getrandom", got < 0 && errno() == Some(REFUSED)),
                ("fallocate", falloc < 0 && errno() == Some(REFUSED)),
                ("io_uring_enter", uring_call(libc::SYS_io_uring_enter)),
                ("sendto", sent(&k, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)),
                ("TCGETS", refused_ioctl(&k.evt, nr::TCGETS())),
                ("mmap with PROT_EXEC", exec_mapping()),
            ];
            (replies, refused)
        });
        let _ = std::fs::remove_dir_all(&root);
        let replies_data: Vec<(&str, Vec<u8>)> = replies
            .iter()
            .map(|r| (r.0, r.2.get(11..).unwrap_or_default().to_vec()))
            .collect();
        for (what, ty, r) in replies {
            assert!(r.len() >= 7, "{what}: no reply");
            if r[4] == 7 {
                let errno = i32::from_le_bytes(r[7..11].try_into().unwrap());
                panic!(
                    "{what} failed with errno {errno}{}",
                    if errno == REFUSED {
                        " (refused by the filter)"
                    } else {
                        ""
                    }
                );
            }
            assert_eq!(r[4], ty + 1, "{what}");
            // A directory read that fails (getdents64 refused) reads as the end: no entries.
            if what == "Treaddir" || what == "Tread" {
                assert!(r.len() > 11, "{what} returned no data");
            }
        }
        // Rreaddir data after size[4] type[1] tag[2] count[4]; an entry is qid[13] offset[8]
        // type[1] name[s].
        let data = |what: &str| replies_data.iter().find(|r| r.0 == what).unwrap().1.clone();
        let (all, rest) = (data("Treaddir"), data("Treaddir from the second entry"));
        let first_len = 24 + usize::from(u16::from_le_bytes([all[22], all[23]]));
        assert_eq!(
            rest,
            all[first_len..],
            "a directory read from an offset does not start there (lseek refused?)"
        );
        check(ThreadKind::Share, Vec::new(), refused);
    }

    #[test]
    fn device_filter_allows_queue_work_and_backend_io_and_nothing_else() {
        let tmp = TempFile::new().unwrap();
        let mut k = kit(&tmp);
        let (allowed, refused) = confined(ThreadKind::Device, move || {
            let dontwait = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&k.evt);
            let ev = EpollEvent::new(EventSet::IN, fd as u64);
            let fresh = Epoll::new();
            let add = k.epoll.ctl(ControlOperation::Add, fd, ev);
            let wait = k.epoll.wait(0, &mut [EpollEvent::default()]);
            let mut rnd = [0u8; 16];
            // SAFETY: `rnd` is a valid buffer of that length.
            let got = unsafe { libc::getrandom(rnd.as_mut_ptr().cast(), rnd.len(), 0) };
            let mut buf = [0u8; 8];
            let f = &k.file;
            let fd_file = std::os::fd::AsRawFd::as_raw_fd(f);
            // SAFETY: plain fallocate on a file of ours.
            let falloc = unsafe { libc::fallocate(fd_file, 0, 0, 4096) };
            // virtio-net: one frame each way on a datagram pair, as on a tap.
            let frames = {
                let (a, b) = (k.pair.0.as_raw_fd(), k.pair.1.as_raw_fd());
                let (out, mut inp) = ([7u8; 60], [0u8; 64]);
                // SAFETY: write(2) reads `out`, read(2) fills `inp`; both live buffers of the
                // lengths passed.
                let w = unsafe { libc::write(a, out.as_ptr().cast(), out.len()) };
                let w_err = std::io::Error::last_os_error().raw_os_error();
                // SAFETY: as above.
                let r = unsafe { libc::read(b, inp.as_mut_ptr().cast(), inp.len()) };
                let r_err = std::io::Error::last_os_error().raw_os_error();
                (w < 0 && w_err == Some(REFUSED)) || (r < 0 && r_err == Some(REFUSED))
            };
            // ... and with writev(2)/readv(2), as it does to and from guest RAM.
            let frames_v = {
                let (a, b) = (k.pair.0.as_raw_fd(), k.pair.1.as_raw_fd());
                let (out, mut inp) = ([7u8; 60], [0u8; 64]);
                let ov = libc::iovec {
                    iov_base: out.as_ptr() as *mut libc::c_void,
                    iov_len: out.len(),
                };
                let iv = libc::iovec {
                    iov_base: inp.as_mut_ptr().cast(),
                    iov_len: inp.len(),
                };
                // SAFETY: writev(2) reads `out` through `ov`, readv(2) fills `inp` through `iv`;
                // both live buffers of the lengths given.
                let w = unsafe { libc::writev(a, &ov, 1) };
                let w_err = std::io::Error::last_os_error().raw_os_error();
                // SAFETY: as above.
                let r = unsafe { libc::readv(b, &iv, 1) };
                let r_err = std::io::Error::last_os_error().raw_os_error();
                (w < 0 && w_err == Some(REFUSED)) || (r < 0 && r_err == Some(REFUSED))
            };
            let allowed: Checks = vec![
                (
                    "epoll_create1/epoll_ctl/epoll_wait",
                    refused_io(fresh) || refused_io(add) || refused_io(wait),
                ),
                ("eventfd read/write", eventfd_round_trip(&k)),
                (
                    "getrandom",
                    got < 0 && std::io::Error::last_os_error().raw_os_error() == Some(REFUSED),
                ),
                ("pwrite64", refused_io(f.write_at(b"12345678", 0))),
                ("pread64", refused_io(f.read_at(&mut buf, 0))),
                ("fdatasync", refused_io(f.sync_data())),
                (
                    "fallocate",
                    falloc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(REFUSED),
                ),
                ("write/read of frames (virtio-net's tap)", frames),
                ("writev/readv of frames (virtio-net's tap)", frames_v),
                ("io_uring_enter", uring_call(libc::SYS_io_uring_enter)),
                ("preadv2", uring_call(libc::SYS_preadv2)),
                (
                    "sendto MSG_DONTWAIT|MSG_NOSIGNAL (virtio-console)",
                    sent(&k, dontwait),
                ),
            ];
            let refused: Checks = vec![
                ("KVM_RUN", refused_kvm(k.vcpu.run().map(|_| ()))),
                ("KVM_IRQFD", irqfd_round_trip(&k)),
                ("KVM_IOEVENTFD", ioeventfd_round_trip(&k)),
                ("KVM_SET_USER_MEMORY_REGION", slot_round_trip(&k)),
                ("openat", refused_io(std::fs::File::open("/dev/null"))),
                ("eventfd2", refused_io(devices::new_eventfd())),
                ("TCGETS", refused_ioctl(&k.evt, nr::TCGETS())),
                // The tap's offloads are set where the driver starts the card (a vCPU).
                ("TUNSETOFFLOAD", refused_ioctl(&k.evt, nr::TUNSETOFFLOAD())),
                ("mmap with PROT_EXEC", exec_mapping()),
                ("io_uring_setup", uring_call(libc::SYS_io_uring_setup)),
                ("io_uring_register", uring_call(libc::SYS_io_uring_register)),
                ("sendto that may block", sent(&k, libc::MSG_NOSIGNAL)),
            ];
            (allowed, refused)
        });
        check(ThreadKind::Device, allowed, refused);
    }
}
