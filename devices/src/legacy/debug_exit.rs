//! QEMU-compatible `isa-debug-exit` port: lets a test guest end the VM with a status of its
//! choosing.
//!
//! A write of 1, 2 or 4 bytes of value `v` (little-endian, at any offset of the range, like
//! QEMU's device) asks the VMM to exit with [`GuestExit::DebugExit`]`(v)`; the VMM turns that into
//! the process exit status `(v << 1) | 1`, so a guest can never fake a clean exit (status 0).
//! Writes of other sizes are ignored (logged once). Reads return all ones.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSink, GuestExit};
use crate::legacy::Once;

/// Length of the port range the device expects (QEMU's `iosize=0x04`).
pub const DEBUG_EXIT_PORT_LEN: u64 = 4;

/// The `isa-debug-exit` device.
pub struct DebugExit {
    exit: Arc<dyn ExitSink>,
    warned_size: Once,
}

impl std::fmt::Debug for DebugExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugExit").finish_non_exhaustive()
    }
}

impl DebugExit {
    /// A debug-exit port that reports writes to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        DebugExit {
            exit,
            warned_size: Once::default(),
        }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let value = match *data {
            [b0] => u32::from(b0),
            [b0, b1] => u32::from(u16::from_le_bytes([b0, b1])),
            [b0, b1, b2, b3] => u32::from_le_bytes([b0, b1, b2, b3]),
            _ => {
                if self.warned_size.first() {
                    log::warn!(
                        "debug-exit: ignoring a {}-byte write at offset {offset:#x} (only 1, 2 or 4 bytes end the VM)",
                        data.len()
                    );
                }
                return;
            }
        };
        log::info!("debug-exit: guest wrote {value:#x}");
        self.exit.request_exit(GuestExit::DebugExit(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::{RecordingSink, SIZES};

    fn device() -> (Arc<RecordingSink>, DebugExit) {
        let sink = Arc::new(RecordingSink::default());
        (sink.clone(), DebugExit::new(sink))
    }

    #[test]
    fn widths_give_little_endian_values() {
        let (sink, mut dev) = device();
        dev.write(0, 0, &[0x31]);
        dev.write(0, 0, &[0x34, 0x12]);
        dev.write(0, 0, &[0x78, 0x56, 0x34, 0x12]);
        dev.write(0, 0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            sink.requests(),
            vec![
                GuestExit::DebugExit(0x31),
                GuestExit::DebugExit(0x1234),
                GuestExit::DebugExit(0x1234_5678),
                GuestExit::DebugExit(u32::MAX),
            ]
        );
    }

    #[test]
    fn any_offset_in_range_exits_like_qemu() {
        let (sink, mut dev) = device();
        dev.write(0, 3, &[2]);
        assert_eq!(sink.requests(), vec![GuestExit::DebugExit(2)]);
    }

    #[test]
    fn odd_sizes_are_ignored() {
        let (sink, mut dev) = device();
        dev.write(0, 0, &[]);
        dev.write(0, 0, &[1, 2, 3]);
        dev.write(0, 0, &[1; 8]);
        assert!(sink.requests().is_empty());
    }

    #[test]
    fn reads_all_ones_at_every_size() {
        let (sink, mut dev) = device();
        for size in SIZES {
            let mut d = vec![0u8; size];
            dev.read(0, 1, &mut d);
            assert!(d.iter().all(|&b| b == 0xff));
        }
        assert!(sink.requests().is_empty());
    }
}
