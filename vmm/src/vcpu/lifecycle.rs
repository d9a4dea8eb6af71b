//! The vCPU lifecycle: the state each vCPU thread is in, the requests the VMM makes of it
//! through its [`VcpuHandle`], and the kick that gets it out of `KVM_RUN` to see them.
//!
//! ```text
//!            pause()              vCPU parks               stop() (from any state)
//!  Running ──────────▶ Pausing ──────────────▶ Paused    ─────────▶ Stopping ──▶ Stopped
//!     ▲                   │ resume() cancels      │ resume()                     ▲
//!     └───────────────────┴───────────────────────┘      reset()/on_paused() run │
//!                                                        on the parked thread    │
//!  a guest exit, a vCPU error or the platform stop flag ─────────────────────────┘
//! ```
//!
//! One `Mutex<Inner>` + `Condvar` per vCPU holds the state; the VMM thread moves it to
//! `Pausing`/`Stopping`/`Running`, the vCPU thread to `Paused`/`Stopped`. The run loop's hot path
//! takes no lock: it reads one atomic `pending` flag (set under the lock with `Pausing` and
//! `Stopping`) before each `KVM_RUN`.
//!
//! The kick: the requester sets the state (and `pending`) first, then sends [`kick_signal`]
//! once to the vCPU thread. The signal's handler, on the vCPU thread, sets that vCPU's
//! `kvm_run.immediate_exit` through a thread-local pointer. Wherever the signal lands, the
//! request is seen: before the loop's check, the check sees `pending`; between the check and
//! `KVM_RUN`, `immediate_exit` makes `KVM_RUN` return `EINTR` without entering the guest;
//! inside `KVM_RUN`, the signal itself makes it return `EINTR`. After an `EINTR` the vCPU thread
//! clears `immediate_exit` and only then reads the state again, so a kick is never lost and
//! never needs repeating for a vCPU in (or entering) `KVM_RUN`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::reset::{self, ResetError};
use super::ExitCounts;

/// How long [`VcpuHandle::pause`] waits for the vCPU to park.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a vCPU thread is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    /// In the guest, entering it, or handling an exit.
    Running,
    /// Asked to pause; not parked yet (still in `KVM_RUN` or in an exit handler).
    Pausing,
    /// Out of `KVM_RUN`, parked: its registers can be read and written.
    Paused,
    /// Asked to stop; its run loop has not returned yet.
    Stopping,
    /// Its run loop has returned (the thread is ending or has ended).
    Stopped,
}

/// Errors from a [`VcpuHandle`] request.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The request needs a paused vCPU.
    #[error("vCPU {cpu} is {state:?}, not paused: pause it first")]
    NotPaused {
        /// The vCPU.
        cpu: u32,
        /// Its state.
        state: VcpuState,
    },
    /// The vCPU has stopped (or is stopping); it cannot run or be paused again.
    #[error("vCPU {0} has stopped")]
    Stopped(u32),
    /// The vCPU did not park in time: it is blocked outside `KVM_RUN`, in an exit handler.
    #[error("vCPU {0} did not pause within {1:?} (blocked in an exit handler?)")]
    PauseTimeout(u32, Duration),
    /// Writing the power-on state failed.
    #[error(transparent)]
    Reset(#[from] ResetError),
}

/// Work for a parked vCPU thread, run with its fd (see [`VcpuHandle::on_paused`]).
type Task = Box<dyn FnOnce(&mut VcpuFd) + Send>;

struct Inner {
    state: VcpuState,
    task: Option<Task>,
}

/// What the VMM thread and one vCPU thread share.
pub(super) struct Control {
    inner: Mutex<Inner>,
    cv: Condvar,
    pending: AtomicBool,
    /// Exits from `KVM_RUN` the guest caused (not kicks): the stall watch's sign of progress.
    pub(super) exits: AtomicU64,
    /// Tests: hold the vCPU thread between its check and `KVM_RUN` (see [`Control::test_hold`]).
    #[cfg(test)]
    pub(super) hold: AtomicBool,
    /// Tests: the vCPU thread is being held there.
    #[cfg(test)]
    pub(super) held: AtomicBool,
}

impl Control {
    pub(super) fn new() -> Control {
        Control {
            inner: Mutex::new(Inner {
                state: VcpuState::Running,
                task: None,
            }),
            cv: Condvar::new(),
            pending: AtomicBool::new(false),
            exits: AtomicU64::new(0),
            #[cfg(test)]
            hold: AtomicBool::new(false),
            #[cfg(test)]
            held: AtomicBool::new(false),
        }
    }

    /// Tests only, called by the run loop after its check and right before `KVM_RUN`: while
    /// `hold` is set, waits there, so a test can send a kick into the window where a kick used
    /// to be lost (the handler runs in userspace and the signal is no longer pending when
    /// `KVM_RUN` starts).
    #[cfg(test)]
    pub(super) fn test_hold(&self) {
        if self.hold.load(Ordering::Acquire) {
            self.held.store(true, Ordering::Release);
            while self.hold.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            self.held.store(false, Ordering::Release);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; carry on with it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The run loop's lock-free check: has the VMM asked for something?
    pub(super) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// On the vCPU thread, after [`Control::pending`]: parks while paused, running any task the
    /// VMM hands over. Returns whether to run the guest again (`false`: stop).
    pub(super) fn park(&self, fd: &mut VcpuFd) -> bool {
        let mut g = self.lock();
        loop {
            match g.state {
                VcpuState::Running => {
                    self.pending.store(false, Ordering::Release);
                    return true;
                }
                VcpuState::Pausing => {
                    g.state = VcpuState::Paused;
                    self.cv.notify_all();
                }
                VcpuState::Paused => {
                    if let Some(task) = g.task.take() {
                        drop(g);
                        task(fd);
                        g = self.lock();
                        self.cv.notify_all();
                    } else {
                        g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                }
                VcpuState::Stopping | VcpuState::Stopped => return false,
            }
        }
    }

    /// On the vCPU thread, when its run loop has returned (or panicked): `Stopped`, and a task
    /// nobody will run is dropped (its requester sees [`VcpuError::Stopped`]).
    pub(super) fn set_stopped(&self) {
        let mut g = self.lock();
        g.state = VcpuState::Stopped;
        g.task = None;
        self.pending.store(true, Ordering::Release);
        self.cv.notify_all();
    }

    fn state(&self) -> VcpuState {
        self.lock().state
    }

    /// Waits until the vCPU has stopped or `deadline` passes; returns whether it stopped.
    pub(super) fn wait_stopped(&self, deadline: Instant) -> bool {
        let mut g = self.lock();
        while g.state != VcpuState::Stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Where the kick handler finds the receiving thread's `immediate_exit`: set by
/// [`ImmediateExit::arm`], cleared when the [`ImmediateExit`] drops, before the page is unmapped.
mod tls {
    use super::Cell;
    thread_local! {
        /// This thread's `kvm_run.immediate_exit`, or null on threads that run no vCPU. A
        /// `const` thread-local with no destructor: reading it is a plain TLS access, safe in a
        /// signal handler.
        pub(super) static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
    }
}

/// Sets the byte `p` points at to `v` with an atomic store.
///
/// # Safety
///
/// `p` must point at a live `kvm_run.immediate_exit` (mapped for as long as the call runs) that
/// Rust code accesses only through this function.
unsafe fn store_immediate_exit(p: *mut u8, v: u8) {
    // SAFETY: the caller guarantees `p` is valid, and a u8 is always aligned; every Rust access
    // to the byte is this atomic store, and the kernel only reads it (READ_ONCE at KVM_RUN's
    // entry). kvm-ioctls' `run` makes a `&mut kvm_run` after each exit but never reads or writes
    // this field.
    unsafe { AtomicU8::from_ptr(p) }.store(v, Ordering::SeqCst);
}

/// The vCPU thread's hold on its `kvm_run.immediate_exit`: while it lives, [`kick_signal`] on
/// this thread sets the byte; [`ImmediateExit::clear`] resets it.
pub(super) struct ImmediateExit(*mut u8);

impl ImmediateExit {
    /// Points this thread's kick handler at `fd`'s `immediate_exit`. Keep the result alive no
    /// longer than `fd` (declare it after `fd`).
    pub(super) fn arm(fd: &mut VcpuFd) -> ImmediateExit {
        let run: *mut kvm_run = fd.get_kvm_run();
        // SAFETY: `run` points at the mapped kvm_run page; `addr_of_mut!` makes no reference.
        let p = unsafe { std::ptr::addr_of_mut!((*run).immediate_exit) };
        tls::IMMEDIATE_EXIT.with(|c| c.set(p));
        ImmediateExit(p)
    }

    /// Clears `immediate_exit` after `KVM_RUN` returned `EINTR`, before the state is read again.
    pub(super) fn clear(&self) {
        // SAFETY: `self.0` is this thread's armed kvm_run byte, mapped while `self` lives (it is
        // declared after the fd); it is only accessed through `store_immediate_exit`.
        unsafe { store_immediate_exit(self.0, 0) }
    }
}

impl Drop for ImmediateExit {
    fn drop(&mut self) {
        tls::IMMEDIATE_EXIT.with(|c| c.set(std::ptr::null_mut()));
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = tls::IMMEDIATE_EXIT.with(Cell::get);
    if !p.is_null() {
        // SAFETY: a non-null pointer was set by `ImmediateExit::arm` on this thread and is
        // cleared before the kvm_run page is unmapped; the handler runs on this same thread, so
        // the page is mapped for the whole store.
        unsafe { store_immediate_exit(p, 1) }
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the handler for [`kick_signal`] (process-wide; without SA_RESTART, so a blocked
/// `KVM_RUN` returns `EINTR`). The handler only sets the receiving vCPU thread's
/// `immediate_exit`.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(kick_signal(), kick_handler)
}

/// The VMM's handle on one vCPU thread: pause, resume, reset, stop, join.
///
/// Methods take `&self` and may be called from any thread; they are meant for one controlling
/// thread (the VMM's) at a time.
#[derive(Debug)]
pub struct VcpuHandle {
    /// vCPU index.
    pub id: u32,
    pub(super) thread: JoinHandle<ExitCounts>,
    pub(super) ctl: Arc<Control>,
    pub(super) signature: u32,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("state", &self.state())
            .finish()
    }
}

impl VcpuHandle {
    /// The vCPU's state now.
    pub fn state(&self) -> VcpuState {
        self.ctl.state()
    }

    /// How many exits from `KVM_RUN` the guest has caused on this vCPU so far (port I/O, MMIO,
    /// faults; not the VMM's own kicks). The stall watch reads it.
    pub fn exits(&self) -> u64 {
        self.ctl.exits.load(Ordering::Relaxed)
    }

    fn kick(&self) {
        if let Err(e) = self.thread.kill(kick_signal()) {
            log::debug!("kicking vCPU {}: {e}", self.id);
        }
    }

    /// Takes the vCPU out of the guest and parks it; returns once it is parked (out of
    /// `KVM_RUN`, its registers stable), or [`VcpuError::PauseTimeout`] after
    /// [`PAUSE_TIMEOUT`] if it is blocked in an exit handler (it parks when that returns;
    /// [`VcpuHandle::resume`] cancels). Pausing a paused vCPU does nothing.
    pub fn pause(&self) -> Result<(), VcpuError> {
        let mut g = self.ctl.lock();
        match g.state {
            VcpuState::Running => {
                g.state = VcpuState::Pausing;
                self.ctl.pending.store(true, Ordering::Release);
                drop(g);
                self.kick();
                g = self.ctl.lock();
            }
            VcpuState::Pausing | VcpuState::Paused => {}
            VcpuState::Stopping | VcpuState::Stopped => return Err(VcpuError::Stopped(self.id)),
        }
        let (g, _) = self
            .ctl
            .cv
            .wait_timeout_while(g, PAUSE_TIMEOUT, |i| i.state == VcpuState::Pausing)
            .unwrap_or_else(|e| e.into_inner());
        match g.state {
            VcpuState::Paused => Ok(()),
            VcpuState::Pausing => Err(VcpuError::PauseTimeout(self.id, PAUSE_TIMEOUT)),
            _ => Err(VcpuError::Stopped(self.id)),
        }
    }

    /// Lets a paused (or pausing) vCPU run the guest again. Resuming a running vCPU does
    /// nothing.
    pub fn resume(&self) -> Result<(), VcpuError> {
        let mut g = self.ctl.lock();
        match g.state {
            VcpuState::Running => Ok(()),
            VcpuState::Pausing | VcpuState::Paused => {
                g.state = VcpuState::Running;
                self.ctl.cv.notify_all();
                Ok(())
            }
            VcpuState::Stopping | VcpuState::Stopped => Err(VcpuError::Stopped(self.id)),
        }
    }

    /// Asks the vCPU to stop, from any state, and kicks it once; does not wait (see
    /// [`VcpuHandle::join`]). Its run loop returns without entering the guest again.
    pub fn stop(&self) {
        let mut g = self.ctl.lock();
        if g.state == VcpuState::Stopped {
            return;
        }
        g.state = VcpuState::Stopping;
        self.ctl.pending.store(true, Ordering::Release);
        self.ctl.cv.notify_all();
        drop(g);
        self.kick();
    }

    /// Runs `f` with the vCPU's fd on its own thread while it is paused, and returns what `f`
    /// returns: the way to read or write a parked vCPU's state (registers for a snapshot, a
    /// reset). The vCPU stays paused.
    pub fn on_paused<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut VcpuFd) -> R + Send + 'static,
    ) -> Result<R, VcpuError> {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut g = self.ctl.lock();
            // Another caller's task first.
            while g.state == VcpuState::Paused && g.task.is_some() {
                g = self.ctl.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if g.state != VcpuState::Paused {
                return Err(match g.state {
                    VcpuState::Stopping | VcpuState::Stopped => VcpuError::Stopped(self.id),
                    state => VcpuError::NotPaused {
                        cpu: self.id,
                        state,
                    },
                });
            }
            g.task = Some(Box::new(move |fd: &mut VcpuFd| {
                let _ = tx.send(f(fd));
            }));
            self.ctl.cv.notify_all();
        }
        // The task is dropped unrun (and `tx` with it) only if the vCPU stops first.
        rx.recv().map_err(|_| VcpuError::Stopped(self.id))
    }

    /// Puts a paused vCPU into the architectural power-on state (what is and is not reset:
    /// [`reset::power_on`]). The vCPU stays paused; [`VcpuHandle::resume`] runs it from the
    /// reset vector.
    pub fn reset(&self) -> Result<(), VcpuError> {
        let (id, signature) = (self.id, self.signature);
        self.on_paused(move |fd| reset::power_on(fd, id, signature))??;
        Ok(())
    }

    /// Waits until the vCPU thread has stopped (by [`VcpuHandle::stop`] or on its own) and joins
    /// it; returns its exit counts, or `None` if it has not stopped by `deadline` (it is left
    /// running, detached) or panicked. For a vCPU blocked in an exit handler's syscall (where
    /// `immediate_exit` cannot reach), the kick is repeated with a backoff from 10 ms.
    pub fn join(self, deadline: Instant) -> Option<ExitCounts> {
        let mut wait = Duration::from_millis(10);
        loop {
            let next = (Instant::now() + wait).min(deadline);
            if self.ctl.wait_stopped(next) {
                break;
            }
            if next >= deadline {
                log::error!(
                    "vCPU {} did not stop within the deadline (state {:?})",
                    self.id,
                    self.state()
                );
                return None;
            }
            log::debug!(
                "vCPU {} not stopped after {wait:?}: kicking it again",
                self.id
            );
            self.kick();
            wait *= 2;
        }
        match self.thread.join() {
            Ok(c) => {
                log::debug!("vCPU {} thread joined", self.id);
                Some(c)
            }
            Err(_) => {
                log::error!("vCPU {} thread panicked", self.id);
                None
            }
        }
    }
}
