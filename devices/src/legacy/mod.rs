//! Legacy PC devices on the port-I/O bus.
//!
//! Each device implements [`crate::bus::BusDevice`] and sees offsets into its own range; port
//! numbers are the VMM's business. The lengths below are what each device expects to be mapped
//! with (the VMM passes its own port constants as bases).
//!
//! | Device        | Purpose                                                        | Range length           |
//! |---------------|----------------------------------------------------------------|------------------------|
//! | [`Serial`]    | COM1 16550 UART (vm-superio): console output, stdin input       | [`SERIAL_PORT_LEN`] (8) |
//! | [`I8042`]     | PS/2 controller, enough for Linux's probe and the 0xFE reset    | [`I8042_PORT_LEN`] (5, data at 0, command/status at 4) |
//! | [`DebugExit`] | QEMU-compatible `isa-debug-exit`: exit status for CI guests     | [`DEBUG_EXIT_PORT_LEN`] (4) |
//! | [`AcpiPm`]    | ACPI PM block (ICH9 layout): PM1 event/control, PM timer, GPE0; S5 power-off | [`ACPI_PM_BLOCK_LEN`] (0x40) |
//! | [`Cmos`]      | MC146818 RTC/CMOS: wall-clock time, memory-size bytes, NVRAM  | [`CMOS_PORT_LEN`] (2)   |
//! | [`RunnerPort`] | CI runner guests: init reached, command started, the command's exit status | [`RUNNER_PORT_LEN`] (0x10) |
//! | [`PvPanic`]   | QEMU-compatible pvpanic: the guest kernel reports a panic      | [`PVPANIC_PORT_LEN`] (1) |
//! | [`PcTestDev`], [`PcTestDevIrq`], [`PcTestDevIomem`] | QEMU-compatible `pc-testdev` for kvm-unit-tests: a data register, page flush, interrupt lines, 64 KiB of MMIO memory | [`PC_TESTDEV_PORT_LEN`] (0x0c), [`PC_TESTDEV_IRQ_LEN`] (24), [`PC_TESTDEV_IOMEM_LEN`] (0x10000, MMIO) |
//!
//! Devices that end the VM (i8042 reset, debug exit, ACPI power-off, the runner port's status,
//! pvpanic) report through an
//! [`crate::exit::ExitSink`]. None of these devices raise interrupts except the serial port,
//! which signals an `EventFd` the VMM registers as an irqfd.
//!
//! Every access size is accepted: the byte-register devices (serial, i8042, CMOS) treat a wider
//! access as consecutive byte accesses, as an ISA bus splitting the cycle would; offsets outside
//! a device's registers read all ones and ignore writes. Nothing a guest writes can panic.

pub mod acpi_pm;
pub mod debug_exit;
pub mod i8042;
pub mod pc_testdev;
pub mod ps2_keyboard;
pub mod pvpanic;
pub mod rtc;
pub mod runner;
pub mod serial;

pub use acpi_pm::{AcpiPm, AcpiPmError, ACPI_PM_BLOCK_LEN};
pub use debug_exit::{DebugExit, DEBUG_EXIT_PORT_LEN};
pub use i8042::{I8042, I8042_PORT_LEN};
pub use pc_testdev::{
    IrqLevel, MprotectFlush, PageFlush, PcTestDev, PcTestDevIomem, PcTestDevIrq,
    PC_TESTDEV_IOMEM_LEN, PC_TESTDEV_IRQ_LEN, PC_TESTDEV_PORT_LEN,
};
pub use ps2_keyboard::Ps2Keyboard;
pub use pvpanic::{PvPanic, PVPANIC_PORT_LEN};
pub use rtc::{Cmos, CMOS_PORT_LEN};
pub use runner::{RunnerPort, RUNNER_PORT_LEN};
pub use serial::{FdWriter, Serial, StdoutWriter, SERIAL_PORT_LEN};

/// Reads `data.len()` consecutive byte registers starting at `offset`, one `read_byte` each, as
/// an ISA bus splitting a wide cycle would. A byte whose offset overflows reads `missing`.
pub(crate) fn read_bytes(
    offset: u64,
    data: &mut [u8],
    missing: u8,
    mut read_byte: impl FnMut(u64) -> u8,
) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = match offset.checked_add(i as u64) {
            Some(o) => read_byte(o),
            None => missing,
        };
    }
}

/// Writes `data` to consecutive byte registers starting at `offset`, one `write_byte` each. A
/// byte whose offset overflows is dropped.
pub(crate) fn write_bytes(offset: u64, data: &[u8], mut write_byte: impl FnMut(u64, u8)) {
    for (i, &v) in data.iter().enumerate() {
        if let Some(o) = offset.checked_add(i as u64) {
            write_byte(o, v);
        }
    }
}

/// A flag that is true the first time it is asked: for "logged once" messages about guest
/// behaviour, so a guest cannot flood the log.
#[derive(Debug, Default)]
pub(crate) struct Once(bool);

impl Once {
    /// True on the first call only.
    pub(crate) fn first(&mut self) -> bool {
        !std::mem::replace(&mut self.0, true)
    }
}

/// Test helpers shared by the legacy device tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::Mutex;

    use crate::exit::{ExitSink, GuestEvent, GuestExit};

    /// An [`ExitSink`] that records every request and event, in order.
    #[derive(Debug, Default)]
    pub(crate) struct RecordingSink(Mutex<Vec<GuestExit>>, Mutex<Vec<GuestEvent>>);

    impl RecordingSink {
        pub(crate) fn requests(&self) -> Vec<GuestExit> {
            self.0.lock().unwrap().clone()
        }

        pub(crate) fn events(&self) -> Vec<GuestEvent> {
            self.1.lock().unwrap().clone()
        }
    }

    impl ExitSink for RecordingSink {
        fn request_exit(&self, why: GuestExit) {
            self.0.lock().unwrap().push(why);
        }

        fn guest_event(&self, event: GuestEvent) {
            self.1.lock().unwrap().push(event);
        }
    }

    /// Access sizes a hostile guest may use, including odd ones.
    pub(crate) const SIZES: [usize; 7] = [0, 1, 2, 3, 4, 7, 8];
}
