//! How a device asks the VMM to end the VM: the guest reset, powered off, wrote the debug-exit
//! port, reported its command's exit status or a kernel panic. The VMM implements [`ExitSink`];
//! the first request wins. Devices also report events that do not end the VM
//! ([`GuestEvent`]: how far a runner guest got, a panic its own crash kernel handles) through
//! the same sink.

/// Why the guest asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// A reset request (i8042 pulse, 0xCF9, ACPI reset register).
    Reset,
    /// An ACPI S5 power-off.
    PowerOff,
    /// A write of this value to the `isa-debug-exit` port.
    DebugExit(u32),
    /// The command a runner guest's init ran exited with this status (the runner port's
    /// status register, [`crate::legacy::RunnerPort`]).
    CommandExited(u8),
    /// A runner guest's init could not run the command (the runner port's status register got
    /// [`crate::legacy::runner::STATUS_INIT_FAILED`]); it said why on the kernel's console.
    InitFailed,
    /// The guest kernel panicked and asks the host to act (pvpanic bit 0,
    /// [`crate::legacy::PvPanic`]).
    Panicked,
}

/// Something the guest reported that does not end the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEvent {
    /// A runner guest reached this phase (the runner port's phase register): 1 = its init
    /// runs, 2 = its command started. Other values are reported as they come.
    Phase(u32),
    /// The guest kernel panicked and its own crash kernel takes over (pvpanic bit 1): the host
    /// records it and lets the guest run.
    CrashLoaded,
}

/// Receives a device's request to end the VM.
pub trait ExitSink: Send + Sync {
    /// Records `why` (if nothing was recorded first) and wakes the VMM to stop the VM.
    fn request_exit(&self, why: GuestExit);

    /// Records an event that does not end the VM. The default ignores it (a VMM without a
    /// runner has nothing to record).
    fn guest_event(&self, event: GuestEvent) {
        let _ = event;
    }
}
