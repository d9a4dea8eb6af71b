//! Why the VM stopped, and the process exit status that follows from it.
//!
//! Any thread can request the stop (a device on a vCPU thread, a vCPU on a fault, the event loop
//! on a signal or a timeout). The first request wins; it also wakes the event loop through an
//! `EventFd`. The latch also records what a runner guest reported on the way (its phases, a
//! panic its crash kernel handles), for the verdict (`crate::runner`).
//!
//! Statuses (README, docs/errors.md): 0 for the guest's reset or power-off, the command's own
//! status for the runner port, `(v << 1) | 1` (odd) for debug-exit, and even values of the VMM's
//! own: 2 error, 4 crash, 6 kernel panic, 120 stall, 122 boot timeout, 124 timeout; 128 + N for
//! signal N.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use devices::{ExitSink, GuestEvent, GuestExit};
use vmm_sys_util::eventfd::EventFd;

/// Status for bad input or a host problem.
pub const STATUS_ERROR: i32 = 2;
/// Status for a guest crash (triple fault, internal error, failed entry).
pub const STATUS_GUEST_CRASH: i32 = 4;
/// Status for a guest kernel panic (pvpanic, or the console's panic line).
pub const STATUS_KERNEL_PANIC: i32 = 6;
/// Status for a run the stall watch ended (`--stall-timeout`).
pub const STATUS_STALL: i32 = 120;
/// Status for a guest that did not reach its init in time (`--boot-timeout`).
pub const STATUS_BOOT_TIMEOUT: i32 = 122;
/// Status for a run that took longer than `--timeout` (as `timeout(1)`).
pub const STATUS_TIMEOUT: i32 = 124;
/// Status for a runner guest whose init could not run the command (`--exec`: a missing
/// driver, a share that would not mount): even, like the VMM's other statuses, below the stall's.
pub const STATUS_INIT_FAILED: i32 = 118;

/// How vfiovm knows the guest kernel panicked, when the guest did not say so through pvpanic
/// bit 0 (which is [`GuestExit::Panicked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicEvidence {
    /// A console line contained `Kernel panic - not syncing`.
    ConsoleLine,
    /// pvpanic bit 1: the kernel panicked and handed over to its crash kernel.
    CrashLoaded,
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest asked: reset, power-off, debug-exit.
    Guest(GuestExit),
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault {
        /// vCPU that faulted.
        cpu: u32,
    },
    /// KVM could not handle something the guest did (typically an instruction it cannot emulate).
    InternalError {
        /// vCPU.
        cpu: u32,
        /// KVM's suberror (1 = emulation failure).
        suberror: u32,
        /// Linear address of the instruction (CS base + RIP) when it could be read.
        rip: Option<u64>,
    },
    /// UEFI firmware stopped in its own code with an emulation failure: this host's KVM cannot
    /// run it (seen on nested, paravirtualized KVM).
    FirmwareUnsupported {
        /// vCPU.
        cpu: u32,
        /// Linear address of the instruction KVM could not run.
        rip: u64,
    },
    /// VM entry failed.
    FailEntry {
        /// vCPU.
        cpu: u32,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// KVM reported a guest crash (KVM_SYSTEM_EVENT_CRASH) or an exit we cannot continue from.
    GuestCrash {
        /// vCPU.
        cpu: u32,
        /// What happened.
        what: String,
    },
    /// A vCPU thread failed in the VMM.
    VcpuError {
        /// vCPU.
        cpu: u32,
        /// The error.
        error: String,
    },
    /// A signal (SIGINT, SIGTERM) or the console's quit key (reported as SIGINT).
    Signal(i32),
    /// The run took longer than `--timeout`.
    Timeout {
        /// The limit.
        limit: Duration,
    },
    /// The guest did not write phase 1 to the runner port within `--boot-timeout`.
    BootTimeout {
        /// The limit.
        limit: Duration,
    },
    /// No console output and no exit to the VMM for `--stall-timeout`.
    Stall {
        /// The limit.
        limit: Duration,
    },
    /// The guest kernel panicked (known from its console or pvpanic bit 1), and then the run
    /// ended as `then` says.
    KernelPanic {
        /// How vfiovm knows.
        evidence: PanicEvidence,
        /// How the run ended after the panic (`None`: it went quiet after the panic line).
        then: Option<Box<ExitReason>>,
    },
}

/// The console's panic line ends the run once the guest has been this quiet after it (no
/// console output, no exit to the VMM): what a panicked Linux without `panic=N` does forever.
pub const PANIC_QUIET: Duration = Duration::from_secs(5);

fn secs(d: &Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

impl ExitReason {
    /// The process exit status for this reason (see the README's contract).
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Guest(GuestExit::Reset | GuestExit::PowerOff) => 0,
            ExitReason::Guest(GuestExit::DebugExit(v)) => ((v << 1) | 1) as i32 & 0xff,
            ExitReason::Guest(GuestExit::CommandExited(n)) => i32::from(*n),
            ExitReason::Guest(GuestExit::InitFailed) => STATUS_INIT_FAILED,
            ExitReason::Guest(GuestExit::Panicked) | ExitReason::KernelPanic { .. } => {
                STATUS_KERNEL_PANIC
            }
            ExitReason::Timeout { .. } => STATUS_TIMEOUT,
            ExitReason::BootTimeout { .. } => STATUS_BOOT_TIMEOUT,
            ExitReason::Stall { .. } => STATUS_STALL,
            ExitReason::TripleFault { .. }
            | ExitReason::InternalError { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::GuestCrash { .. } => STATUS_GUEST_CRASH,
            ExitReason::VcpuError { .. } | ExitReason::FirmwareUnsupported { .. } => STATUS_ERROR,
            ExitReason::Signal(n) => 128 + n,
        }
    }

    /// The verdict's `cause` (docs/ci-runner.md).
    pub fn cause(&self) -> &'static str {
        match self {
            ExitReason::Guest(GuestExit::Reset) => "reset",
            ExitReason::Guest(GuestExit::PowerOff) => "poweroff",
            ExitReason::Guest(GuestExit::DebugExit(_)) => "debug-exit",
            ExitReason::Guest(GuestExit::CommandExited(_)) => "command-exited",
            ExitReason::Guest(GuestExit::InitFailed) => "init-error",
            ExitReason::Guest(GuestExit::Panicked) | ExitReason::KernelPanic { .. } => {
                "kernel-panic"
            }
            ExitReason::TripleFault { .. } => "triple-fault",
            ExitReason::InternalError { .. }
            | ExitReason::FirmwareUnsupported { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::GuestCrash { .. } => "kvm-error",
            ExitReason::VcpuError { .. } => "vmm-error",
            ExitReason::Signal(_) => "signal",
            ExitReason::Timeout { .. } => "timeout",
            ExitReason::BootTimeout { .. } => "boot-timeout",
            ExitReason::Stall { .. } => "stall",
        }
    }

    /// The guest's own value, where it gave one: the command's status, the debug-exit value.
    pub fn guest_status(&self) -> Option<u32> {
        match self {
            ExitReason::Guest(GuestExit::DebugExit(v)) => Some(*v),
            ExitReason::Guest(GuestExit::CommandExited(n)) => Some(u32::from(*n)),
            _ => None,
        }
    }

    /// Whether every vCPU's registers go to stderr when the VM stops for this reason, even
    /// without `-v` (a stall: where the guest is stuck is the finding).
    pub fn always_dumps_registers(&self) -> bool {
        matches!(self, ExitReason::Stall { .. })
    }

    /// The reason once what the guest printed or reported is taken into account: after a
    /// console panic line or pvpanic bit 1, a run that then ends by the guest's reset or
    /// power-off, a triple fault, a stall or a timeout is a kernel panic (never a pass). The
    /// guest's explicit word (command status, debug-exit, pvpanic bit 0), a KVM or VMM error and
    /// a signal stay what they are.
    pub fn after_panic(self, console_panic: bool, crash_loaded: bool) -> ExitReason {
        let evidence = if crash_loaded {
            PanicEvidence::CrashLoaded
        } else if console_panic {
            PanicEvidence::ConsoleLine
        } else {
            return self;
        };
        match self {
            ExitReason::Guest(GuestExit::Reset | GuestExit::PowerOff)
            | ExitReason::TripleFault { .. }
            | ExitReason::Stall { .. }
            | ExitReason::Timeout { .. }
            | ExitReason::BootTimeout { .. } => ExitReason::KernelPanic {
                evidence,
                then: Some(Box::new(self)),
            },
            other => other,
        }
    }

    /// One line for stderr when the stop is not the guest's own wish, `None` otherwise.
    pub fn complaint(&self) -> Option<String> {
        match self {
            ExitReason::Guest(GuestExit::Panicked) => Some(
                "guest kernel panic, reported by its pvpanic driver; the console above shows why".into(),
            ),
            ExitReason::Guest(GuestExit::InitFailed) => Some(
                "the guest's init could not run the command; its 'vfiovm-init:' line above says why".into(),
            ),
            ExitReason::Guest(_) => None,
            ExitReason::KernelPanic { evidence, then } => {
                let how = match evidence {
                    PanicEvidence::ConsoleLine => "it printed 'Kernel panic - not syncing'",
                    PanicEvidence::CrashLoaded => {
                        "its pvpanic driver reported a panic handed to its crash kernel"
                    }
                };
                let after = match then.as_deref() {
                    None => format!("and then stayed quiet for {} s", secs(&PANIC_QUIET)),
                    Some(ExitReason::Guest(GuestExit::Reset)) => "and then reset".into(),
                    Some(ExitReason::Guest(GuestExit::PowerOff)) => "and then powered off".into(),
                    Some(r) => format!("and then: {}", r.complaint().unwrap_or_default()),
                };
                Some(format!(
                    "guest kernel panic: {how}, {after}; the console above (and the verdict's console_tail) shows why"
                ))
            }
            ExitReason::Timeout { limit } => Some(format!(
                "timed out: the run took longer than --timeout {} s and was stopped (-v dumps the registers); raise --timeout if it needs longer",
                secs(limit)
            )),
            ExitReason::BootTimeout { limit } => Some(format!(
                "boot timed out: the guest's init did not report to the runner port within --boot-timeout {} s; check the console above (did the kernel boot and find its init?), or raise --boot-timeout",
                secs(limit)
            )),
            ExitReason::Stall { limit } => Some(format!(
                "guest stalled: no console output and no exit to the VMM for --stall-timeout {} s (every vCPU's registers are above); raise --stall-timeout if the guest computes silently for longer",
                secs(limit)
            )),
            ExitReason::TripleFault { cpu } => Some(format!(
                "guest crashed: triple fault on vCPU {cpu} (-v dumps the registers)"
            )),
            ExitReason::InternalError { cpu, suberror, .. } => Some(format!(
                "guest crashed: KVM internal error on vCPU {cpu}, suberror {suberror}{} (-v dumps the registers)",
                if *suberror == 1 { " (instruction emulation failed)" } else { "" }
            )),
            ExitReason::FirmwareUnsupported { cpu, rip } => Some(format!(
                "this host's KVM cannot run the firmware: KVM_EXIT_INTERNAL_ERROR (emulation failure) on vCPU {cpu} at {rip:#x}, inside the firmware's own code; this is what a nested or paravirtualized KVM without full VMX/SVM does: run on a host with hardware virtualization (VMX or SVM; bare metal, or a nested guest given vmx/svm, like the rig)"
            )),
            ExitReason::FailEntry { cpu, reason } => Some(format!(
                "guest crashed: VM entry failed on vCPU {cpu}, hardware reason {reason:#x} (-v dumps the registers)"
            )),
            ExitReason::GuestCrash { cpu, what } => {
                Some(format!("guest crashed on vCPU {cpu}: {what}"))
            }
            ExitReason::VcpuError { cpu, error } => Some(format!(
                "vCPU {cpu} failed: {error} (a VMM or KVM problem, not the guest's: run with -v and report the output)"
            )),
            ExitReason::Signal(n) => Some(format!("stopped by signal {n}; the VM was shut down")),
        }
    }
}

/// What a runner guest reported before the VM stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestProgress {
    /// When the guest first wrote phase 1 (init reached).
    pub init_at: Option<Instant>,
    /// The last phase written (0: none).
    pub phase: u32,
    /// pvpanic bit 1 was written: the kernel panicked and its crash kernel took over.
    pub crash_loaded: bool,
}

/// The shared "stop the VM" latch.
#[derive(Debug)]
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    progress: Mutex<GuestProgress>,
    event: EventFd,
}

impl ExitState {
    /// A latch with nothing requested yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitState {
            reason: Mutex::new(None),
            progress: Mutex::new(GuestProgress::default()),
            event: devices::new_eventfd()?,
        })
    }

    /// Records `reason` unless a reason was recorded first, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        // A guest reset may be taken back (a reboot in place): a signal or a time limit
        // arriving on top of one must not be lost with it.
        let over_reset = matches!(*r, Some(ExitReason::Guest(GuestExit::Reset)))
            && matches!(
                reason,
                ExitReason::Signal(_)
                    | ExitReason::Timeout { .. }
                    | ExitReason::BootTimeout { .. }
                    | ExitReason::Stall { .. }
            );
        if r.is_none() || over_reset {
            log::debug!("stop requested: {reason:?}");
            *r = Some(reason);
        }
        // A full counter (impossible in practice) still leaves the fd readable.
        let _ = self.event.write(1);
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes back a recorded guest reset, for a VM that reboots in place and runs on; returns
    /// whether there was one (any other reason stays).
    pub fn clear_reset(&self) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let reset = matches!(*r, Some(ExitReason::Guest(GuestExit::Reset)));
        if reset {
            *r = None;
        }
        reset
    }

    /// What the guest reported so far.
    pub fn progress(&self) -> GuestProgress {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fd the event loop waits on.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl ExitSink for ExitState {
    fn request_exit(&self, why: GuestExit) {
        self.request(ExitReason::Guest(why));
    }

    fn guest_event(&self, event: GuestEvent) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            GuestEvent::Phase(n) => {
                if n == devices::legacy::runner::PHASE_INIT && p.init_at.is_none() {
                    p.init_at = Some(Instant::now());
                }
                p.phase = n;
            }
            GuestEvent::CrashLoaded => p.crash_loaded = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ExitReason::Guest(GuestExit::Reset).status(), 0);
        assert_eq!(ExitReason::Guest(GuestExit::PowerOff).status(), 0);
        assert_eq!(ExitReason::Guest(GuestExit::DebugExit(0)).status(), 1);
        assert_eq!(ExitReason::Guest(GuestExit::DebugExit(0x31)).status(), 0x63);
        // Truncated to 8 bits like exit(3).
        assert_eq!(ExitReason::Guest(GuestExit::DebugExit(0x80)).status(), 1);
        assert_eq!(
            ExitReason::Guest(GuestExit::DebugExit(u32::MAX)).status(),
            0xff
        );
        assert_eq!(
            ExitReason::TripleFault { cpu: 0 }.status(),
            STATUS_GUEST_CRASH
        );
        assert_eq!(ExitReason::Signal(15).status(), 143);
        assert!(ExitReason::Guest(GuestExit::Reset).complaint().is_none());
        assert!(ExitReason::TripleFault { cpu: 1 }
            .complaint()
            .unwrap()
            .contains("triple fault"));
    }

    #[test]
    fn runner_statuses_causes_and_guest_values() {
        let t = Duration::from_secs(3);
        let cases = [
            (
                ExitReason::Guest(GuestExit::CommandExited(0)),
                0,
                "command-exited",
                Some(0),
            ),
            (
                ExitReason::Guest(GuestExit::CommandExited(7)),
                7,
                "command-exited",
                Some(7),
            ),
            (
                ExitReason::Guest(GuestExit::CommandExited(255)),
                255,
                "command-exited",
                Some(255),
            ),
            (
                ExitReason::Guest(GuestExit::DebugExit(3)),
                7,
                "debug-exit",
                Some(3),
            ),
            (
                ExitReason::Guest(GuestExit::InitFailed),
                118,
                "init-error",
                None,
            ),
            (
                ExitReason::Guest(GuestExit::Panicked),
                6,
                "kernel-panic",
                None,
            ),
            (ExitReason::Guest(GuestExit::Reset), 0, "reset", None),
            (ExitReason::Guest(GuestExit::PowerOff), 0, "poweroff", None),
            (ExitReason::TripleFault { cpu: 0 }, 4, "triple-fault", None),
            (ExitReason::Timeout { limit: t }, 124, "timeout", None),
            (
                ExitReason::BootTimeout { limit: t },
                122,
                "boot-timeout",
                None,
            ),
            (ExitReason::Stall { limit: t }, 120, "stall", None),
            (ExitReason::Signal(15), 143, "signal", None),
            (
                ExitReason::VcpuError {
                    cpu: 0,
                    error: "x".into(),
                },
                2,
                "vmm-error",
                None,
            ),
        ];
        for (r, status, cause, guest) in cases {
            assert_eq!(
                (r.status(), r.cause(), r.guest_status()),
                (status, cause, guest),
                "{r:?}"
            );
        }
        // The VMM's own statuses are even, so never a debug-exit value, and distinct.
        let own = [
            STATUS_ERROR,
            STATUS_GUEST_CRASH,
            STATUS_KERNEL_PANIC,
            STATUS_STALL,
            STATUS_BOOT_TIMEOUT,
            STATUS_TIMEOUT,
        ];
        for (i, a) in own.iter().enumerate() {
            assert_eq!(a % 2, 0);
            assert!(own[i + 1..].iter().all(|b| b != a));
        }
    }

    #[test]
    fn a_panic_seen_turns_the_end_into_a_kernel_panic() {
        let t = Duration::from_secs(1);
        for end in [
            ExitReason::Guest(GuestExit::Reset),
            ExitReason::Guest(GuestExit::PowerOff),
            ExitReason::TripleFault { cpu: 1 },
            ExitReason::Stall { limit: t },
            ExitReason::Timeout { limit: t },
            ExitReason::BootTimeout { limit: t },
        ] {
            let r = end.clone().after_panic(true, false);
            assert_eq!((r.status(), r.cause()), (6, "kernel-panic"), "{end:?}");
            assert!(r
                .complaint()
                .unwrap()
                .contains("Kernel panic - not syncing"));
            let r = end.clone().after_panic(false, true);
            assert!(matches!(
                r,
                ExitReason::KernelPanic {
                    evidence: PanicEvidence::CrashLoaded,
                    ..
                }
            ));
            assert_eq!(
                end.clone().after_panic(false, false),
                end,
                "no evidence, no change"
            );
        }
        for kept in [
            ExitReason::Guest(GuestExit::CommandExited(0)),
            ExitReason::Guest(GuestExit::DebugExit(0)),
            ExitReason::Signal(2),
            ExitReason::VcpuError {
                cpu: 0,
                error: "x".into(),
            },
        ] {
            assert_eq!(kept.clone().after_panic(true, true), kept);
        }
    }

    #[test]
    fn phases_and_crash_loaded_are_recorded() {
        let s = ExitState::new().unwrap();
        assert_eq!(s.progress(), GuestProgress::default());
        s.guest_event(GuestEvent::Phase(1));
        let at = s.progress().init_at.unwrap();
        s.guest_event(GuestEvent::Phase(2));
        s.guest_event(GuestEvent::Phase(1));
        s.guest_event(GuestEvent::CrashLoaded);
        let p = s.progress();
        assert_eq!((p.init_at, p.phase, p.crash_loaded), (Some(at), 1, true));
        assert_eq!(s.reason(), None, "events do not stop the VM");
    }

    #[test]
    fn a_signal_or_a_limit_replaces_a_latched_reset() {
        let s = ExitState::new().unwrap();
        s.request(ExitReason::Guest(GuestExit::Reset));
        s.request(ExitReason::Guest(GuestExit::PowerOff));
        assert_eq!(s.reason(), Some(ExitReason::Guest(GuestExit::Reset)));
        s.request(ExitReason::Signal(15));
        assert_eq!(s.reason(), Some(ExitReason::Signal(15)));
        assert!(!s.clear_reset());
        assert_eq!(s.reason(), Some(ExitReason::Signal(15)));
    }

    #[test]
    fn first_request_wins() {
        let s = ExitState::new().unwrap();
        assert_eq!(s.reason(), None);
        s.request_exit(GuestExit::DebugExit(3));
        s.request(ExitReason::Signal(2));
        assert_eq!(s.reason(), Some(ExitReason::Guest(GuestExit::DebugExit(3))));
        assert_eq!(s.event().read().unwrap(), 2);
    }
}
