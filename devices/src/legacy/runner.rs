//! The runner port: a small paravirtual port-I/O device through which a CI guest's init tells
//! the VMM how far it got and hands back its command's exit status.
//!
//! Register map (offsets into the [`RUNNER_PORT_LEN`]-byte range; docs/devices.md has it too):
//!
//! | offset | read | write |
//! |---|---|---|
//! | 0x0 | [`RUNNER_SIGNATURE`] (`"VFRN"` little-endian): an init reads it to know the port is there | ignored |
//! | 0x4 | [`RUNNER_VERSION`] | ignored |
//! | 0x8 | the last phase written (0 before any) | phase: [`PHASE_INIT`] = init reached, [`PHASE_COMMAND`] = command started ([`GuestEvent::Phase`]) |
//! | 0xC | all ones | the command's exit status, 0–255: ends the VM ([`GuestExit::CommandExited`]); [`STATUS_INIT_FAILED`] (0x100, 2 or 4 bytes): the init could not run the command, ends the VM ([`GuestExit::InitFailed`]); other values are ignored (logged once) |
//!
//! Writes are 1, 2 or 4 bytes at the register's own offset, the value zero-extended (an init
//! written in shell can use `outb`); other writes are ignored and logged once. Reads of any size
//! at any offset return the bytes of the register image above (little-endian), all ones past
//! it. Nothing a guest does here can panic the VMM.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSink, GuestEvent, GuestExit};
use crate::legacy::Once;

/// Length of the port range.
pub const RUNNER_PORT_LEN: u64 = 0x10;
/// What offset 0 reads: the bytes `V F R N`.
pub const RUNNER_SIGNATURE: u32 = u32::from_le_bytes(*b"VFRN");
/// What offset 4 reads: the register map's version.
pub const RUNNER_VERSION: u32 = 2;
/// Status register value: the init could not run the command (it says why on the console).
pub const STATUS_INIT_FAILED: u32 = 0x100;
/// Phase value: the guest's init runs.
pub const PHASE_INIT: u32 = 1;
/// Phase value: the init started the command.
pub const PHASE_COMMAND: u32 = 2;

/// Offset of the signature register.
pub const REG_SIGNATURE: u64 = 0x0;
/// Offset of the version register.
pub const REG_VERSION: u64 = 0x4;
/// Offset of the phase register.
pub const REG_PHASE: u64 = 0x8;
/// Offset of the command exit status register.
pub const REG_STATUS: u64 = 0xc;

/// The runner port device.
pub struct RunnerPort {
    exit: Arc<dyn ExitSink>,
    phase: u32,
    warned_write: Once,
    warned_status: Once,
}

impl std::fmt::Debug for RunnerPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerPort")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl RunnerPort {
    /// A runner port that reports to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        RunnerPort {
            exit,
            phase: 0,
            warned_write: Once::default(),
            warned_status: Once::default(),
        }
    }

    fn image(&self) -> [u8; RUNNER_PORT_LEN as usize] {
        let mut b = [0u8; RUNNER_PORT_LEN as usize];
        b[0..4].copy_from_slice(&RUNNER_SIGNATURE.to_le_bytes());
        b[4..8].copy_from_slice(&RUNNER_VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.phase.to_le_bytes());
        b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        b
    }
}

impl BusDevice for RunnerPort {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let image = self.image();
        super::read_bytes(offset, data, 0xff, |o| {
            usize::try_from(o)
                .ok()
                .and_then(|o| image.get(o).copied())
                .unwrap_or(0xff)
        });
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let value = match *data {
            [b0] => u32::from(b0),
            [b0, b1] => u32::from(u16::from_le_bytes([b0, b1])),
            [b0, b1, b2, b3] => u32::from_le_bytes([b0, b1, b2, b3]),
            _ => u32::MAX, // refused below with the other malformed writes
        };
        match offset {
            REG_PHASE if matches!(data.len(), 1 | 2 | 4) => {
                log::info!("runner port: guest phase {value}");
                self.phase = value;
                self.exit.guest_event(GuestEvent::Phase(value));
            }
            REG_STATUS if matches!(data.len(), 1 | 2 | 4) => match u8::try_from(value) {
                Err(_) if value == STATUS_INIT_FAILED => {
                    log::info!("runner port: the guest's init could not run the command");
                    self.exit.request_exit(GuestExit::InitFailed);
                }
                Ok(status) => {
                    log::info!("runner port: the guest's command exited with status {status}");
                    self.exit.request_exit(GuestExit::CommandExited(status));
                }
                Err(_) => {
                    if self.warned_status.first() {
                        log::warn!(
                            "runner port: ignoring command status {value:#x}: an exit status is 0 to 255"
                        );
                    }
                }
            },
            _ => {
                if self.warned_write.first() {
                    log::warn!(
                        "runner port: ignoring a {}-byte write at offset {offset:#x} (the phase register is at 0x8, the status register at 0xc; 1, 2 or 4 bytes)",
                        data.len()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::{RecordingSink, SIZES};

    fn device() -> (Arc<RecordingSink>, RunnerPort) {
        let sink = Arc::new(RecordingSink::default());
        (sink.clone(), RunnerPort::new(sink))
    }

    fn read(dev: &mut RunnerPort, offset: u64, size: usize) -> Vec<u8> {
        let mut d = vec![0u8; size];
        dev.read(0, offset, &mut d);
        d
    }

    #[test]
    fn signature_and_version_read_back() {
        let (sink, mut dev) = device();
        assert_eq!(read(&mut dev, 0, 4), b"VFRN");
        assert_eq!(read(&mut dev, 1, 2), b"FR");
        assert_eq!(read(&mut dev, 4, 4), 2u32.to_le_bytes());
        assert_eq!(read(&mut dev, 8, 4), [0; 4], "no phase yet");
        assert_eq!(read(&mut dev, 12, 4), [0xff; 4]);
        assert_eq!(read(&mut dev, 14, 4), [0xff; 4], "past the end");
        assert!(sink.requests().is_empty() && sink.events().is_empty());
    }

    #[test]
    fn phases_are_events_and_read_back() {
        let (sink, mut dev) = device();
        dev.write(0, REG_PHASE, &PHASE_INIT.to_le_bytes());
        assert_eq!(read(&mut dev, 8, 4), 1u32.to_le_bytes());
        dev.write(0, REG_PHASE, &[2]);
        dev.write(0, REG_PHASE, &[7, 0]);
        assert_eq!(
            sink.events(),
            vec![
                GuestEvent::Phase(1),
                GuestEvent::Phase(2),
                GuestEvent::Phase(7)
            ]
        );
        assert!(sink.requests().is_empty(), "phases do not end the VM");
    }

    #[test]
    fn status_writes_end_the_vm_with_that_status() {
        for (bytes, status) in [
            (&0u32.to_le_bytes()[..], 0u8),
            (&[1u8][..], 1),
            (&[7, 0][..], 7),
            (&255u32.to_le_bytes()[..], 255),
        ] {
            let (sink, mut dev) = device();
            dev.write(0, REG_STATUS, bytes);
            assert_eq!(sink.requests(), vec![GuestExit::CommandExited(status)]);
        }
    }

    #[test]
    fn init_failed_ends_the_vm_as_such() {
        for bytes in [&STATUS_INIT_FAILED.to_le_bytes()[..], &[0, 1][..]] {
            let (sink, mut dev) = device();
            dev.write(0, REG_STATUS, bytes);
            assert_eq!(sink.requests(), vec![GuestExit::InitFailed]);
        }
    }

    #[test]
    fn statuses_above_255_and_stray_writes_are_ignored() {
        let (sink, mut dev) = device();
        dev.write(0, REG_STATUS, &257u32.to_le_bytes());
        dev.write(0, REG_STATUS, &[0xff, 0xff]);
        dev.write(0, REG_STATUS, &[1, 2, 3]);
        dev.write(0, REG_STATUS, &[0; 8]);
        dev.write(0, REG_STATUS + 1, &[3]);
        dev.write(0, REG_SIGNATURE, &[3, 0, 0, 0]);
        dev.write(0, REG_VERSION, &[3]);
        dev.write(0, u64::MAX, &[3]);
        dev.write(0, REG_PHASE, &[]);
        assert!(sink.requests().is_empty(), "{:?}", sink.requests());
        assert!(sink.events().is_empty());
        assert_eq!(read(&mut dev, 0, 4), b"VFRN", "signature unchanged");
    }

    #[test]
    fn reads_of_every_size_at_every_offset_never_panic() {
        let (_, mut dev) = device();
        for offset in (0..=RUNNER_PORT_LEN + 2).chain([u64::MAX - 1, u64::MAX]) {
            for size in SIZES {
                let d = read(&mut dev, offset, size);
                if offset >= RUNNER_PORT_LEN {
                    assert!(d.iter().all(|&b| b == 0xff));
                }
            }
        }
    }
}
