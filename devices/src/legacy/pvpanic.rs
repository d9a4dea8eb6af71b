//! pvpanic: QEMU's paravirtual panic port (ISA, one byte at 0x505 on the VMM's map), which
//! Linux's `pvpanic` driver finds through the DSDT (`_HID "QEMU0001"` with an I/O resource) and
//! writes from its panic notifier.
//!
//! | access | meaning |
//! |---|---|
//! | read | the events the device knows: [`PVPANIC_PANICKED`] \| [`PVPANIC_CRASH_LOADED`] (the driver writes only events both sides know) |
//! | write, bit 0 | the kernel panicked and asks the host to act: ends the VM ([`GuestExit::Panicked`]) |
//! | write, bit 1 | the kernel panicked and its own crash kernel takes over: recorded ([`GuestEvent::CrashLoaded`]), the guest runs on |
//!
//! Bits the device does not know (bit 2, QEMU's "shutdown", included) are ignored, as QEMU's
//! device does. Accesses of any size at any offset are taken (the first byte of a write counts;
//! reads return the event mask in every byte); nothing a guest does here can panic the VMM.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSink, GuestEvent, GuestExit};
use crate::legacy::Once;

/// Length of the port range (QEMU's ISA pvpanic: one byte).
pub const PVPANIC_PORT_LEN: u64 = 1;
/// Event bit: a panic for the host to handle.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// Event bit: a panic the guest's crash kernel handles; the host records it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic device.
pub struct PvPanic {
    exit: Arc<dyn ExitSink>,
    warned_unknown: Once,
}

impl std::fmt::Debug for PvPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PvPanic").finish_non_exhaustive()
    }
}

impl PvPanic {
    /// A pvpanic port that reports to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        PvPanic {
            exit,
            warned_unknown: Once::default(),
        }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let known = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        if (v & !known != 0 || offset != 0 || data.len() != 1) && self.warned_unknown.first() {
            log::warn!(
                "pvpanic: a {}-byte write of {v:#x} at offset {offset:#x}: only bits 0 and 1 of the first byte count",
                data.len()
            );
        }
        if v & PVPANIC_PANICKED != 0 {
            log::info!("pvpanic: guest kernel panic (bit 0)");
            self.exit.request_exit(GuestExit::Panicked);
        } else if v & PVPANIC_CRASH_LOADED != 0 {
            log::info!("pvpanic: guest kernel panic handed to its crash kernel (bit 1)");
            self.exit.guest_event(GuestEvent::CrashLoaded);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::{RecordingSink, SIZES};

    fn device() -> (Arc<RecordingSink>, PvPanic) {
        let sink = Arc::new(RecordingSink::default());
        (sink.clone(), PvPanic::new(sink))
    }

    #[test]
    fn reads_give_the_known_events() {
        let (sink, mut dev) = device();
        for size in SIZES {
            let mut d = vec![0u8; size];
            dev.read(0, 0, &mut d);
            assert!(d.iter().all(|&b| b == 3));
        }
        assert!(sink.requests().is_empty());
    }

    #[test]
    fn bit_0_ends_the_vm_and_bit_1_is_recorded() {
        let (sink, mut dev) = device();
        dev.write(0, 0, &[PVPANIC_CRASH_LOADED]);
        assert!(sink.requests().is_empty());
        assert_eq!(sink.events(), vec![GuestEvent::CrashLoaded]);
        dev.write(0, 0, &[PVPANIC_PANICKED]);
        assert_eq!(sink.requests(), vec![GuestExit::Panicked]);
        // Both bits: the host acts.
        let (sink, mut dev) = device();
        dev.write(0, 0, &[3]);
        assert_eq!(sink.requests(), vec![GuestExit::Panicked]);
        assert!(sink.events().is_empty());
    }

    #[test]
    fn unknown_bits_empty_and_odd_writes_do_nothing_else() {
        let (sink, mut dev) = device();
        dev.write(0, 0, &[]);
        dev.write(0, 0, &[4]);
        dev.write(0, 0, &[0xf8, 1]);
        dev.write(0, 0, &[0]);
        assert!(sink.requests().is_empty() && sink.events().is_empty());
        // A wider write: its first byte counts.
        dev.write(0, 0, &[1, 0, 0, 0]);
        assert_eq!(sink.requests(), vec![GuestExit::Panicked]);
    }
}
