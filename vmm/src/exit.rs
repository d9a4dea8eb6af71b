//! Why the VM stopped, and the process exit status that follows from it.
//!
//! Any thread can request the stop (a device on a vCPU thread, a vCPU on a fault, the event loop
//! on a signal). The first request wins; it also wakes the event loop through an `EventFd`.

use std::sync::Mutex;

use devices::{ExitSink, GuestExit};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Status for bad input or a host problem.
pub const STATUS_ERROR: i32 = 2;
/// Status for a guest crash (triple fault, internal error, failed entry).
pub const STATUS_GUEST_CRASH: i32 = 4;

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
}

impl ExitReason {
    /// The process exit status for this reason (see the README's contract).
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Guest(GuestExit::Reset | GuestExit::PowerOff) => 0,
            ExitReason::Guest(GuestExit::DebugExit(v)) => ((v << 1) | 1) as i32 & 0xff,
            ExitReason::TripleFault { .. }
            | ExitReason::InternalError { .. }
            | ExitReason::FailEntry { .. }
            | ExitReason::GuestCrash { .. } => STATUS_GUEST_CRASH,
            ExitReason::VcpuError { .. } | ExitReason::FirmwareUnsupported { .. } => STATUS_ERROR,
            ExitReason::Signal(n) => 128 + n,
        }
    }

    /// One line for stderr when the stop is not the guest's own wish, `None` otherwise.
    pub fn complaint(&self) -> Option<String> {
        match self {
            ExitReason::Guest(_) => None,
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

/// The shared "stop the VM" latch.
#[derive(Debug)]
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl ExitState {
    /// A latch with nothing requested yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitState {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless a reason was recorded first, and wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
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

    /// The fd the event loop waits on.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl ExitSink for ExitState {
    fn request_exit(&self, why: GuestExit) {
        self.request(ExitReason::Guest(why));
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
    fn first_request_wins() {
        let s = ExitState::new().unwrap();
        assert_eq!(s.reason(), None);
        s.request_exit(GuestExit::DebugExit(3));
        s.request(ExitReason::Signal(2));
        assert_eq!(s.reason(), Some(ExitReason::Guest(GuestExit::DebugExit(3))));
        assert_eq!(s.event().read().unwrap(), 2);
    }
}
