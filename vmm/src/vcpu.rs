//! vCPU threads: the run loop, the exit handler, and the VMM's handle on each thread.
//!
//! A vCPU is an explicit state machine ([`VcpuState`]: `Running`, `Pausing`, `Paused`,
//! `Stopping`, `Stopped`), driven by the VMM through a [`VcpuHandle`] (`pause`, `resume`,
//! `reset`, `stop`, `join`) and by the guest's own exits. The states, their transitions and the
//! kick protocol (one signal that sets `kvm_run.immediate_exit`, so no kick is lost) are in
//! [`lifecycle`]; the power-on state a reset writes is in [`reset`].
//!
//! [`handle_exit`] is pure with respect to the vCPU: it takes a decoded exit and the buses and
//! returns what to do, so tests feed it synthetic exits. Port numbers never appear here: every
//! port I/O and MMIO access goes through a [`Bus`].

pub mod lifecycle;
#[cfg(test)]
mod lifecycle_tests;
pub mod reset;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::{
    kvm_run, KVM_EXIT_HYPERV, KVM_EXIT_HYPERV_HCALL, KVM_EXIT_IO, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

pub use lifecycle::{
    install_kick_handler, kick_signal, VcpuError, VcpuHandle, VcpuState, PAUSE_TIMEOUT,
};
use lifecycle::{Control, ImmediateExit};

use crate::exit::{ExitReason, ExitState};
use arch::layout::ports::COM1;
use devices::GuestExit;

/// The two address spaces a vCPU exits on.
#[derive(Debug, Clone)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: Arc<Bus>,
    /// MMIO.
    pub mmio: Arc<Bus>,
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuAction {
    /// Enter the guest again.
    Continue,
    /// Stop this vCPU and ask the VMM to stop the VM for this reason.
    Stop(ExitReason),
}

/// Handles one exit. `io_size` is the access size of a port I/O exit (1, 2 or 4); the data of a
/// string instruction (`rep outsb`) holds `count` such accesses to the same port.
pub fn handle_exit(cpu: u32, exit: VcpuExit, io_size: usize, buses: &IoBuses) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            for chunk in data.chunks_mut(io_size.max(1)) {
                buses.pio.read(u64::from(port), chunk);
            }
            VcpuAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            for chunk in data.chunks(io_size.max(1)) {
                buses.pio.write(u64::from(port), chunk);
            }
            VcpuAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            buses.mmio.read(addr, data);
            VcpuAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            buses.mmio.write(addr, data);
            VcpuAction::Continue
        }
        // With the in-kernel irqchip HLT does not exit; if it does, running again is right.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => VcpuAction::Continue,
        // Hyper-V (`--hyperv`): KVM reports the guest's SynIC control and message/event page
        // MSR writes (KVM_EXIT_HYPERV_SYNIC) for a VMBus, which vfiovm does not have: nothing to
        // do, KVM has already taken them. A hypercall KVM leaves to the VMM gets its answer in
        // the run loop (`RunPeek::refuse_hyperv_hypercall`).
        VcpuExit::Hyperv => VcpuAction::Continue,
        VcpuExit::Shutdown => VcpuAction::Stop(ExitReason::TripleFault { cpu }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VcpuAction::Stop(ExitReason::Guest(GuestExit::PowerOff)),
            KVM_SYSTEM_EVENT_RESET => VcpuAction::Stop(ExitReason::Guest(GuestExit::Reset)),
            KVM_SYSTEM_EVENT_CRASH => VcpuAction::Stop(ExitReason::GuestCrash {
                cpu,
                what: "KVM reported a guest crash".into(),
            }),
            other => VcpuAction::Stop(ExitReason::GuestCrash {
                cpu,
                what: format!("unhandled KVM system event {other}"),
            }),
        },
        VcpuExit::FailEntry(reason, _) => VcpuAction::Stop(ExitReason::FailEntry { cpu, reason }),
        VcpuExit::InternalError => VcpuAction::Stop(ExitReason::InternalError {
            cpu,
            suberror: 0,
            rip: None,
        }),
        other => VcpuAction::Stop(ExitReason::GuestCrash {
            cpu,
            what: format!("unexpected KVM exit {other:?}"),
        }),
    }
}

/// How many exits to userspace a vCPU took, by kind. Interrupts delivered through irqfds and
/// memory-mapped BARs cause none; these count what did reach the VMM.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port I/O exits.
    pub pio: u64,
    /// The part of `pio` that went to the serial console (COM1): it follows how much the guest
    /// prints, so measurements of other exits leave it out.
    pub console: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// Every other exit (including signal interruptions).
    pub other: u64,
}

impl ExitCounts {
    fn count(&mut self, exit: &VcpuExit) {
        match exit {
            VcpuExit::IoIn(port, _) | VcpuExit::IoOut(port, _) => {
                self.pio += 1;
                if (COM1..COM1 + 8).contains(port) {
                    self.console += 1;
                }
            }
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => self.mmio += 1,
            _ => self.other += 1,
        }
    }

    /// Adds another vCPU's counts.
    pub fn add(&mut self, o: &ExitCounts) {
        self.pio += o.pio;
        self.console += o.console;
        self.mmio += o.mmio;
        self.other += o.other;
    }
}

/// Reads fields of the vCPU's shared `kvm_run` page that `VcpuExit` does not carry.
///
/// The `VcpuExit` that `VcpuFd::run` returns may hold a `&mut` into the same page (the data of
/// an MMIO or port I/O exit), so this never makes a reference to the page: it reads single
/// fields through the raw pointer (`addr_of!`), none of which overlaps the bytes such an exit
/// borrows (`exit_reason` sits before the union; `io.size` is the union's second byte, which no
/// port I/O exit borrows, and an MMIO exit is never asked for it; `internal.suberror` is read only
/// on an internal-error exit, which borrows nothing). The one write, a Hyper-V hypercall's result,
/// happens after the exit was handled, when nothing borrows the page.
struct RunPeek(*mut kvm_run);

// SAFETY: the pointer is only dereferenced on the vCPU's own thread, while the vCPU (and so the
// mmap of its kvm_run page) is alive; the type only moves it there.
unsafe impl Send for RunPeek {}

impl RunPeek {
    fn exit_reason(&self) -> u32 {
        // SAFETY: `self.0` points at the kvm_run page mmapped by kvm-ioctls for this vCPU, alive
        // as long as the VcpuFd the caller holds; `addr_of!` makes no reference.
        let p = unsafe { std::ptr::addr_of!((*self.0).exit_reason) };
        // SAFETY: `p` is a valid, aligned u32 in that page; the kernel does not write it while
        // the vCPU is outside KVM_RUN, and no live Rust reference covers it.
        unsafe { p.read() }
    }

    /// Access size of the current port I/O exit (1, 2 or 4), or 1 if it is not one.
    fn io_size(&self) -> usize {
        if self.exit_reason() != KVM_EXIT_IO {
            return 1;
        }
        // SAFETY: as in `exit_reason`; for KVM_EXIT_IO the kernel filled the `io` member.
        let p = unsafe { std::ptr::addr_of!((*self.0).__bindgen_anon_1.io.size) };
        // SAFETY: a valid u8 of the page; a port I/O exit borrows only the data at
        // `io.data_offset`, past the union.
        let size = unsafe { p.read() };
        if matches!(size, 1 | 2 | 4) {
            usize::from(size)
        } else {
            1
        }
    }

    /// Answers a Hyper-V hypercall KVM left to the VMM (KVM_EXIT_HYPERV_HCALL: posting a
    /// message, signalling an event without an eventfd, an extended hypercall; with
    /// `KVM_CAP_HYPERV_ENFORCE_CPUID` KVM refuses them itself, as vfiovm's leaves do not offer
    /// them): none is implemented, so `HV_STATUS_INVALID_HYPERCALL_CODE`. Returns the
    /// hypercall's input value when it answered one. Call it only after the exit was handled.
    fn refuse_hyperv_hypercall(&self) -> Option<u64> {
        const HV_STATUS_INVALID_HYPERCALL_CODE: u64 = 2;
        if self.exit_reason() != KVM_EXIT_HYPERV {
            return None;
        }
        // SAFETY: as in `exit_reason`; for KVM_EXIT_HYPERV the kernel filled `hyperv`.
        let ty = unsafe { std::ptr::addr_of!((*self.0).__bindgen_anon_1.hyperv.type_) };
        // SAFETY: a valid, aligned u32 of the page; a Hyper-V exit borrows nothing.
        if unsafe { ty.read() } != KVM_EXIT_HYPERV_HCALL {
            return None;
        }
        // SAFETY: as above; for KVM_EXIT_HYPERV_HCALL the kernel filled `u.hcall`.
        let input = unsafe { std::ptr::addr_of!((*self.0).__bindgen_anon_1.hyperv.u.hcall.input) };
        // SAFETY: a valid, aligned u64 of the page, borrowed by nothing.
        let input = unsafe { input.read() };
        // SAFETY: as above.
        let result =
            unsafe { std::ptr::addr_of_mut!((*self.0).__bindgen_anon_1.hyperv.u.hcall.result) };
        // SAFETY: a valid, aligned u64 of the page, which is mapped writable and borrowed by
        // nothing; KVM reads it as the hypercall's status at the next KVM_RUN.
        unsafe { result.write(HV_STATUS_INVALID_HYPERCALL_CODE) };
        Some(input)
    }

    /// KVM's internal-error suberror (only meaningful on an internal-error exit).
    fn internal_suberror(&self) -> u32 {
        if self.exit_reason() != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
            return 0;
        }
        // SAFETY: as in `exit_reason`; for KVM_EXIT_INTERNAL_ERROR the kernel filled `internal`.
        let p = unsafe { std::ptr::addr_of!((*self.0).__bindgen_anon_1.internal.suberror) };
        // SAFETY: a valid, aligned u32 of the page; an internal-error exit borrows nothing.
        unsafe { p.read() }
    }
}

/// Starts vCPU `id` on its own thread.
pub fn spawn(
    id: u32,
    fd: VcpuFd,
    buses: IoBuses,
    exit: Arc<ExitState>,
    stop: Arc<AtomicBool>,
    dump_on_crash: bool,
) -> std::io::Result<VcpuHandle> {
    spawn_confined(id, fd, buses, exit, stop, dump_on_crash, None)
}

/// Sets the vCPU's state to `Stopped` when its thread's work ends, by return or by panic.
struct StoppedOnDrop<'a>(&'a Control);

impl Drop for StoppedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set_stopped();
    }
}

/// Like [`spawn`]; with a `sandbox`, the thread enters it (its seccomp filter, then the start
/// gate) before its first `KVM_RUN`, and stops the VM instead of running if it cannot.
///
/// `stop` is the platform's stop flag ([`crate::platform::Platform::stop_flag`]): once set, the
/// vCPU leaves its run loop at its next check, as if [`VcpuHandle::stop`] had been called (which
/// is what kicks it there).
pub fn spawn_confined(
    id: u32,
    fd: VcpuFd,
    buses: IoBuses,
    exit: Arc<ExitState>,
    stop: Arc<AtomicBool>,
    dump_on_crash: bool,
    sandbox: Option<Arc<crate::seccomp::Sandbox>>,
) -> std::io::Result<VcpuHandle> {
    let ctl = Arc::new(Control::new());
    let ctl_t = ctl.clone();
    // Read here, before any filter: the vCPU thread's filter does not allow KVM_GET_CPUID2.
    let signature = reset::signature(&fd);
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            let mut fd = fd;
            // Declared after `fd`, so dropped before it: the kick handler's pointer into the
            // kvm_run page is gone before the page is unmapped.
            let ie = ImmediateExit::arm(&mut fd);
            let _stopped = StoppedOnDrop(&ctl_t);
            let peek = RunPeek(fd.get_kvm_run() as *mut kvm_run);
            if let Err(e) = sandbox.as_ref().map_or(Ok(()), |s| s.enter_vcpu(id)) {
                exit.request(ExitReason::VcpuError {
                    cpu: id,
                    error: e.to_string(),
                });
                return ExitCounts::default();
            }
            let ctx = LoopCtx {
                id,
                peek: &peek,
                ie: &ie,
                ctl: &ctl_t,
                buses: &buses,
                exit: &exit,
                stop: &stop,
                dump_on_crash,
            };
            run_loop(&mut fd, &ctx)
        })?;
    Ok(VcpuHandle {
        id,
        thread,
        ctl,
        signature,
    })
}

/// What a vCPU's run loop works with besides its fd.
struct LoopCtx<'a> {
    id: u32,
    peek: &'a RunPeek,
    ie: &'a ImmediateExit,
    ctl: &'a Control,
    buses: &'a IoBuses,
    exit: &'a ExitState,
    stop: &'a AtomicBool,
    dump_on_crash: bool,
}

fn run_loop(fd: &mut VcpuFd, c: &LoopCtx) -> ExitCounts {
    let id = c.id;
    let mut counts = ExitCounts::default();
    loop {
        // The one check before each KVM_RUN: lock-free unless the VMM asked for something.
        if c.stop.load(Ordering::Acquire) || c.ctl.pending() {
            // Clear before reading the state: a kick that lands after this sets it again and
            // KVM_RUN returns at once, so it cannot be lost.
            c.ie.clear();
            if c.stop.load(Ordering::Acquire) || !c.ctl.park(fd) {
                // Stopped by a signal (a hung guest killed by its harness), a timeout or by
                // another vCPU's fault: with -v, say where this vCPU was; after a stall,
                // always. Not on the guest's own reset/power-off.
                let reason = c.exit.reason();
                let dump = c.dump_on_crash
                    || reason
                        .as_ref()
                        .is_some_and(ExitReason::always_dumps_registers);
                if dump && !matches!(reason, Some(ExitReason::Guest(_))) {
                    dump_registers(id, fd);
                }
                return counts;
            }
            // Resumed: a kick that arrived while parked must not cost an extra exit.
            c.ie.clear();
        }
        #[cfg(test)]
        c.ctl.test_hold();
        let action = match fd.run() {
            Ok(e) => {
                counts.count(&e);
                // What the stall watch counts as progress (kicks, below, are not).
                c.ctl.exits.fetch_add(1, Ordering::Relaxed);
                let size = c.peek.io_size();
                let action = handle_exit(id, e, size, c.buses);
                if let Some(input) = c.peek.refuse_hyperv_hypercall() {
                    log::debug!(
                        "vCPU {id}: Hyper-V hypercall {:#x} left to the VMM: refused",
                        input & 0xffff
                    );
                }
                match action {
                    VcpuAction::Stop(ExitReason::InternalError { cpu, .. }) => {
                        VcpuAction::Stop(ExitReason::InternalError {
                            cpu,
                            suberror: c.peek.internal_suberror(),
                            rip: linear_rip(fd),
                        })
                    }
                    a => a,
                }
            }
            // A kick (the signal, or `immediate_exit` set by it): back to the check.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                counts.other += 1;
                c.ie.clear();
                continue;
            }
            Err(e) => VcpuAction::Stop(ExitReason::VcpuError {
                cpu: id,
                error: format!("KVM_RUN failed: {e}"),
            }),
        };
        // A reset KVM reports as a system event (the Hyper-V reset MSR) is requested like a
        // device's: the vCPU keeps its thread, so a reboot in place can pause and reset it (and
        // without one, the VMM stops it with the others).
        if let VcpuAction::Stop(ExitReason::Guest(GuestExit::Reset)) = action {
            c.exit.request(ExitReason::Guest(GuestExit::Reset));
            continue;
        }
        if let VcpuAction::Stop(reason) = action {
            if c.dump_on_crash && reason.status() != 0 && !matches!(reason, ExitReason::Guest(_)) {
                dump_registers(id, fd);
            }
            c.exit.request(reason);
            return counts;
        }
    }
}

/// CS base + RIP: where the vCPU is, whatever its mode.
fn linear_rip(fd: &VcpuFd) -> Option<u64> {
    let regs = fd.get_regs().ok()?;
    let sregs = fd.get_sregs().ok()?;
    Some(sregs.cs.base.wrapping_add(regs.rip))
}

fn dump_registers(id: u32, fd: &VcpuFd) {
    match (fd.get_regs(), fd.get_sregs()) {
        (Ok(r), Ok(s)) => log::error!(
            "vCPU {id} registers: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}/{:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi,
            s.cr0, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base
        ),
        (Err(e), _) | (_, Err(e)) => log::error!("vCPU {id}: cannot read registers: {e}"),
    }
}

/// Stops every vCPU thread: sets `stop`, asks each vCPU to stop (one kick each), then joins
/// them. Gives up on a thread (and says so) once `timeout` has passed since the call; with the
/// `immediate_exit` kick that is a safety net, not a wait anyone should see.
pub fn stop_all(threads: Vec<VcpuHandle>, stop: &AtomicBool, timeout: Duration) -> ExitCounts {
    let mut total = ExitCounts::default();
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + timeout;
    for t in &threads {
        t.stop();
    }
    for t in threads {
        if let Some(c) = t.join(deadline) {
            total.add(&c);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::BusDevice;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Rec(Vec<Vec<u8>>);
    impl BusDevice for Rec {
        fn read(&mut self, _: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 0x10);
        }
        fn write(&mut self, _: u64, _: u64, data: &[u8]) {
            self.0.push(data.to_vec());
        }
    }

    fn buses() -> (IoBuses, Arc<Mutex<Rec>>) {
        let rec = Arc::new(Mutex::new(Rec::default()));
        let b = IoBuses {
            pio: Arc::new(Bus::new("pio")),
            mmio: Arc::new(Bus::new("mmio")),
        };
        b.pio.insert(rec.clone(), 0x3f8, 8).unwrap();
        b.mmio.insert(rec.clone(), 0x1000, 0x100).unwrap();
        (b, rec)
    }

    #[test]
    fn port_io_goes_to_bus_per_access() {
        let (b, rec) = buses();
        // `rep outsb` of three bytes: three one-byte writes.
        let a = handle_exit(0, VcpuExit::IoOut(0x3f8, b"abc"), 1, &b);
        assert_eq!(a, VcpuAction::Continue);
        assert_eq!(
            rec.lock().unwrap().0,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        let mut d = [0u8; 4];
        handle_exit(0, VcpuExit::IoIn(0x3f9, &mut d), 2, &b);
        assert_eq!(d, [0x11; 4]);
        // Unknown port reads all ones.
        let mut d = [0u8; 2];
        handle_exit(0, VcpuExit::IoIn(0x80, &mut d), 2, &b);
        assert_eq!(d, [0xff; 2]);
    }

    #[test]
    fn mmio_goes_to_bus() {
        let (b, rec) = buses();
        handle_exit(0, VcpuExit::MmioWrite(0x1004, &[1, 2, 3, 4]), 1, &b);
        assert_eq!(rec.lock().unwrap().0, vec![vec![1, 2, 3, 4]]);
        let mut d = [0u8; 8];
        handle_exit(0, VcpuExit::MmioRead(0x1002, &mut d), 1, &b);
        assert_eq!(d, [0x12; 8]);
    }

    #[test]
    fn stop_reasons() {
        let (b, _) = buses();
        assert_eq!(
            handle_exit(1, VcpuExit::Shutdown, 1, &b),
            VcpuAction::Stop(ExitReason::TripleFault { cpu: 1 })
        );
        assert_eq!(
            handle_exit(0, VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), 1, &b),
            VcpuAction::Stop(ExitReason::Guest(GuestExit::Reset))
        );
        assert_eq!(
            handle_exit(
                0,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                1,
                &b
            ),
            VcpuAction::Stop(ExitReason::Guest(GuestExit::PowerOff))
        );
        assert!(matches!(
            handle_exit(0, VcpuExit::FailEntry(7, 0), 1, &b),
            VcpuAction::Stop(ExitReason::FailEntry { reason: 7, .. })
        ));
        assert!(matches!(
            handle_exit(0, VcpuExit::Exception, 1, &b),
            VcpuAction::Stop(ExitReason::GuestCrash { .. })
        ));
        assert_eq!(handle_exit(0, VcpuExit::Hlt, 1, &b), VcpuAction::Continue);
        // A SynIC MSR write reported for a VMBus: the guest goes on.
        assert_eq!(
            handle_exit(0, VcpuExit::Hyperv, 1, &b),
            VcpuAction::Continue
        );
    }

    #[test]
    fn hyperv_hypercalls_left_to_the_vmm_are_refused() {
        let mut run = kvm_run {
            exit_reason: KVM_EXIT_HYPERV,
            ..Default::default()
        };
        run.__bindgen_anon_1.hyperv.type_ = KVM_EXIT_HYPERV_HCALL;
        // HvPostMessage (0x5c), the status field still holding the input's garbage.
        run.__bindgen_anon_1.hyperv.u.hcall =
            kvm_bindings::kvm_hyperv_exit__bindgen_ty_1__bindgen_ty_2 {
                input: 0x5c,
                result: 0xdead,
                params: [0; 2],
            };
        let peek = RunPeek(&mut run);
        assert_eq!(peek.refuse_hyperv_hypercall(), Some(0x5c));
        // SAFETY: the exit type selects the `hyperv` member, written above.
        let hyperv = unsafe { run.__bindgen_anon_1.hyperv };
        // SAFETY: its type selects the `hcall` member, written above.
        let result = unsafe { hyperv.u.hcall.result };
        assert_eq!(result, 2, "HV_STATUS_INVALID_HYPERCALL_CODE");
        // A SynIC exit and any other exit are left alone.
        run.__bindgen_anon_1.hyperv.type_ = kvm_bindings::KVM_EXIT_HYPERV_SYNIC;
        assert_eq!(RunPeek(&mut run).refuse_hyperv_hypercall(), None);
        run.exit_reason = KVM_EXIT_IO;
        assert_eq!(RunPeek(&mut run).refuse_hyperv_hypercall(), None);
    }
}
