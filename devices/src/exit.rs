//! How a device asks the VMM to end the VM: the guest reset, powered off, or wrote the debug-exit
//! port. The VMM implements [`ExitSink`]; the first request wins.

/// Why the guest asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// A reset request (i8042 pulse, 0xCF9, ACPI reset register).
    Reset,
    /// An ACPI S5 power-off.
    PowerOff,
    /// A write of this value to the `isa-debug-exit` port.
    DebugExit(u32),
}

/// Receives a device's request to end the VM.
pub trait ExitSink: Send + Sync {
    /// Records `why` (if nothing was recorded first) and wakes the VMM to stop the VM.
    fn request_exit(&self, why: GuestExit);
}
