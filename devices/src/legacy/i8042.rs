//! An i8042 PS/2 controller: enough for Linux's i8042 driver to probe it, and the pulse-reset
//! command (0xFE) that PC reboot code uses. Nothing is plugged in, or (with
//! [`I8042::with_keyboard`], the firmware path) a [`Ps2Keyboard`] that answers commands and has
//! no keys.
//!
//! Mapping: one range of [`I8042_PORT_LEN`] (5) bytes at the data port (0x60), so offset 0 is the
//! data port and offset 4 the command/status port (0x64). Offsets 1–3 read all ones and ignore
//! writes (on KVM, port 0x61 is claimed by the in-kernel PIT's speaker port anyway and never
//! reaches the bus).
//!
//! The model: the controller answers its own commands at once (the input buffer is never full,
//! so `IBF` never sets), with a one-byte output buffer (`OBF`, `AUXDATA`). Without a keyboard,
//! bytes sent to the devices are dropped (no mouse is ever attached); with one, its answers move
//! into the output buffer one at a time as the guest reads them. The loop-back commands (0xD2, 0xD3) still
//! work, as they are internal to the controller. No interrupts are raised (IRQ 1/12), so a guest
//! has to poll; Linux does for its probe. Linux's AUX IRQ test therefore fails after 250 ms
//! unless the AUX port is skipped, e.g. by an ACPI DSDT that declares only the keyboard
//! (`PNP0303`, no `PNP0F13`), or `i8042.noaux`.
//!
//! Reset: command 0xFE (and any 0xF0–0xFF pulse with bit 0 clear), or writing the output port
//! (0xD1) with the reset line (bit 0) low, requests [`GuestExit::Reset`].

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSink, GuestExit};
use crate::legacy::Once;
use crate::legacy::Ps2Keyboard;

/// Length of the port range: data at offset 0, command/status at offset 4.
pub const I8042_PORT_LEN: u64 = 5;

// Offsets.
/// Data port (0x60): output buffer on read, command parameters or device bytes on write.
const DATA: u64 = 0;
/// Status register on read, command register on write (0x64).
const COMMAND: u64 = 4;

// Status register bits.
/// Output buffer full: the data port holds a byte for the CPU.
const STS_OBF: u8 = 1 << 0;
/// System flag, mirrors the CTR's SYS bit.
const STS_SYS: u8 = 1 << 2;
/// The last write went to the command port.
const STS_CMD: u8 = 1 << 3;
/// Keyboard not inhibited.
const STS_UNLOCKED: u8 = 1 << 4;
/// The output buffer holds a byte from the AUX (mouse) side.
const STS_AUXDATA: u8 = 1 << 5;

// Controller configuration byte (CTR, controller RAM byte 0) bits.
/// Keyboard interrupt enable.
const CTR_KBDINT: u8 = 1 << 0;
/// System flag (POST passed).
const CTR_SYS: u8 = 1 << 2;
/// Keyboard clock disabled.
const CTR_KBDDIS: u8 = 1 << 4;
/// AUX clock disabled.
const CTR_AUXDIS: u8 = 1 << 5;
/// Scan-code set 2 → 1 translation.
const CTR_XLATE: u8 = 1 << 6;
/// What firmware leaves behind on a PC without a mouse.
const INITIAL_CTR: u8 = CTR_KBDINT | CTR_SYS | CTR_AUXDIS | CTR_XLATE;

// Output port bits.
/// CPU reset line, active low.
const OUT_RESET: u8 = 1 << 0;
/// A20 gate.
const OUT_A20: u8 = 1 << 1;
/// Reflects a full output buffer with keyboard data.
const OUT_KBD_OBF: u8 = 1 << 4;
/// Reflects a full output buffer with AUX data.
const OUT_AUX_OBF: u8 = 1 << 5;
/// Reset line high (CPU running), A20 enabled.
const INITIAL_OUTPUT_PORT: u8 = OUT_RESET | OUT_A20;

// Controller commands.
/// Read controller RAM byte `cmd - 0x20` (0x20 reads the CTR).
const CMD_READ_RAM: u8 = 0x20;
/// Last read-RAM command.
const CMD_READ_RAM_LAST: u8 = 0x3f;
/// Write controller RAM byte `cmd - 0x60` (0x60 writes the CTR); takes a parameter.
const CMD_WRITE_RAM: u8 = 0x60;
/// Last write-RAM command.
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
/// Disable the AUX port.
const CMD_AUX_DISABLE: u8 = 0xa7;
/// Enable the AUX port.
const CMD_AUX_ENABLE: u8 = 0xa8;
/// Test the AUX port's lines; 0 = no error.
const CMD_AUX_TEST: u8 = 0xa9;
/// Controller self test; answers 0x55.
const CMD_SELF_TEST: u8 = 0xaa;
/// Test the keyboard port's lines; 0 = no error.
const CMD_KBD_TEST: u8 = 0xab;
/// Disable the keyboard port.
const CMD_KBD_DISABLE: u8 = 0xad;
/// Enable the keyboard port.
const CMD_KBD_ENABLE: u8 = 0xae;
/// Read the output port.
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
/// Write the output port; takes a parameter.
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
/// Put the parameter in the output buffer as keyboard data (keyboard loop-back).
const CMD_WRITE_KBD_BUFFER: u8 = 0xd2;
/// Put the parameter in the output buffer as AUX data (AUX loop-back).
const CMD_WRITE_AUX_BUFFER: u8 = 0xd3;
/// Send the parameter to the AUX device.
const CMD_WRITE_AUX: u8 = 0xd4;
/// 0xF0–0xFF pulse the output port lines whose bit (0–3) is clear; 0xFE pulses reset.
const CMD_PULSE_FIRST: u8 = 0xf0;

/// Self-test pass answer.
const SELF_TEST_OK: u8 = 0x55;
/// Port test answer: no error.
const PORT_TEST_OK: u8 = 0x00;
/// Bytes of controller RAM (0x20–0x3F / 0x60–0x7F); byte 0 is the CTR.
const RAM_LEN: usize = 32;

/// Where a byte in the output buffer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The controller or the keyboard side.
    Kbd,
    /// The AUX side.
    Aux,
}

/// The i8042 controller.
pub struct I8042 {
    exit: Arc<dyn ExitSink>,
    /// Controller RAM; byte 0 is the CTR.
    ram: [u8; RAM_LEN],
    output_port: u8,
    /// The output buffer, if full.
    out: Option<(u8, Source)>,
    /// What a read of an empty output buffer returns (the last byte, as on hardware).
    last_out: u8,
    /// A command waiting for its parameter on the data port.
    pending: Option<u8>,
    /// The last write went to the command port.
    last_was_cmd: bool,
    /// The device on the keyboard port, if any.
    keyboard: Option<Ps2Keyboard>,
    warned_cmd: Once,
    warned_device: Once,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042")
            .field("ctr", &self.ram[0])
            .field("output_port", &self.output_port)
            .field("out", &self.out)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller that reports reset requests to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        let mut ram = [0u8; RAM_LEN];
        ram[0] = INITIAL_CTR;
        I8042 {
            exit,
            ram,
            output_port: INITIAL_OUTPUT_PORT,
            out: None,
            last_out: 0,
            pending: None,
            last_was_cmd: false,
            keyboard: None,
            warned_cmd: Once::default(),
            warned_device: Once::default(),
        }
    }

    /// A controller with a [`Ps2Keyboard`] on its keyboard port (for firmware, which waits for
    /// the keyboard's answers; a Linux guest then finds a keyboard that answers its commands
    /// but, with no interrupts, only when it polls).
    pub fn with_keyboard(exit: Arc<dyn ExitSink>) -> Self {
        I8042 {
            keyboard: Some(Ps2Keyboard::new()),
            ..Self::new(exit)
        }
    }

    /// Back to the power-on state (a system reset, for a reboot in place): the controller's
    /// RAM and output port, an empty output buffer, no command pending, and a keyboard, if one
    /// is plugged in, as it comes out of its own reset.
    pub fn system_reset(&mut self) {
        let exit = self.exit.clone();
        *self = if self.keyboard.is_some() {
            Self::with_keyboard(exit)
        } else {
            Self::new(exit)
        };
    }

    /// The keyboard, if one is plugged in.
    pub fn keyboard(&self) -> Option<&Ps2Keyboard> {
        self.keyboard.as_ref()
    }

    /// Moves the keyboard's next answer into an empty output buffer.
    fn refill(&mut self) {
        if self.out.is_none() {
            if let Some(byte) = self.keyboard.as_mut().and_then(Ps2Keyboard::pop) {
                self.out = Some((byte, Source::Kbd));
            }
        }
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        if self.ctr() & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.last_was_cmd {
            s |= STS_CMD;
        }
        match self.out {
            Some((_, Source::Kbd)) => s |= STS_OBF,
            Some((_, Source::Aux)) => s |= STS_OBF | STS_AUXDATA,
            None => {}
        }
        s
    }

    fn push_out(&mut self, byte: u8, source: Source) {
        // A one-byte buffer: a newer byte replaces an unread one.
        self.out = Some((byte, source));
    }

    fn read_data(&mut self) -> u8 {
        if let Some((byte, _)) = self.out.take() {
            self.last_out = byte;
        }
        self.refill();
        self.last_out
    }

    fn reset(&mut self, why: &str) {
        log::info!("i8042: guest requested a reset ({why})");
        self.exit.request_exit(GuestExit::Reset);
    }

    fn write_output_port(&mut self, value: u8) {
        self.output_port = value & !(OUT_KBD_OBF | OUT_AUX_OBF);
        if value & OUT_RESET == 0 {
            self.reset("output port reset line low");
        }
    }

    fn read_output_port(&self) -> u8 {
        let obf = match self.out {
            Some((_, Source::Kbd)) => OUT_KBD_OBF,
            Some((_, Source::Aux)) => OUT_AUX_OBF,
            None => 0,
        };
        self.output_port | obf
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_was_cmd = true;
        // A new command abandons one still waiting for its parameter.
        self.pending = None;
        match cmd {
            CMD_READ_RAM..=CMD_READ_RAM_LAST => {
                let byte = self.ram[usize::from(cmd - CMD_READ_RAM)];
                self.push_out(byte, Source::Kbd);
            }
            CMD_WRITE_RAM..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_BUFFER
            | CMD_WRITE_AUX_BUFFER
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUXDIS,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUXDIS,
            CMD_AUX_TEST | CMD_KBD_TEST => self.push_out(PORT_TEST_OK, Source::Kbd),
            CMD_SELF_TEST => {
                self.ram[0] |= CTR_SYS;
                self.push_out(SELF_TEST_OK, Source::Kbd);
            }
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBDDIS,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBDDIS,
            CMD_READ_OUTPUT_PORT => {
                let value = self.read_output_port();
                self.push_out(value, Source::Kbd);
            }
            CMD_PULSE_FIRST..=0xff => {
                if cmd & OUT_RESET == 0 {
                    self.reset("pulse of the reset line");
                }
            }
            _ => {
                if self.warned_cmd.first() {
                    log::debug!(
                        "i8042: ignoring unsupported controller command {cmd:#x} (further ones not logged)"
                    );
                }
            }
        }
    }

    fn write_data(&mut self, value: u8) {
        self.last_was_cmd = false;
        match self.pending.take() {
            Some(cmd @ CMD_WRITE_RAM..=CMD_WRITE_RAM_LAST) => {
                self.ram[usize::from(cmd - CMD_WRITE_RAM)] = value;
            }
            Some(CMD_WRITE_OUTPUT_PORT) => self.write_output_port(value),
            Some(CMD_WRITE_KBD_BUFFER) => self.push_out(value, Source::Kbd),
            Some(CMD_WRITE_AUX_BUFFER) => self.push_out(value, Source::Aux),
            // A byte for the keyboard, when one is plugged in.
            None if self.keyboard.is_some() => {
                if let Some(k) = self.keyboard.as_mut() {
                    k.write(value);
                }
                self.refill();
            }
            // CMD_WRITE_AUX, or a byte for the keyboard: nothing is attached to receive it.
            _ => {
                if self.warned_device.first() {
                    log::debug!(
                        "i8042: dropping byte {value:#x} for the keyboard or mouse: none is attached (further ones not logged)"
                    );
                }
            }
        }
    }

    fn read_byte(&mut self, offset: u64) -> u8 {
        match offset {
            DATA => self.read_data(),
            COMMAND => self.status(),
            _ => 0xff,
        }
    }

    fn write_byte(&mut self, offset: u64, value: u8) {
        match offset {
            DATA => self.write_data(value),
            COMMAND => self.write_command(value),
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        super::read_bytes(offset, data, 0xff, |o| self.read_byte(o));
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        super::write_bytes(offset, data, |o, v| self.write_byte(o, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::{RecordingSink, SIZES};

    /// AUX interrupt enable (the device raises no interrupts, but Linux clears it).
    const CTR_AUXINT: u8 = 1 << 1;
    /// Input buffer full (never set by this model).
    const STS_IBF: u8 = 1 << 1;

    fn device() -> (Arc<RecordingSink>, I8042) {
        let sink = Arc::new(RecordingSink::default());
        (sink.clone(), I8042::new(sink))
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut d = [0u8];
        dev.read(0x60, COMMAND, &mut d);
        d[0]
    }

    fn data(dev: &mut I8042) -> u8 {
        let mut d = [0u8];
        dev.read(0x60, DATA, &mut d);
        d[0]
    }

    fn command(dev: &mut I8042, cmd: u8) {
        dev.write(0x60, COMMAND, &[cmd]);
    }

    /// Like Linux's `i8042_command`: write the command and its parameters, then poll OBF for
    /// each answer byte. `None` if an expected answer never arrives.
    fn i8042_command(dev: &mut I8042, cmd: u8, params: &[u8], answers: usize) -> Option<Vec<u8>> {
        assert_eq!(status(dev) & STS_IBF, 0, "IBF must be clear before a write");
        command(dev, cmd);
        for &p in params {
            assert_eq!(status(dev) & STS_IBF, 0);
            dev.write(0x60, DATA, &[p]);
        }
        let mut out = Vec::new();
        for _ in 0..answers {
            if status(dev) & STS_OBF == 0 {
                return None;
            }
            out.push(data(dev));
        }
        Some(out)
    }

    /// A system reset: the CTR back to its power-on value, the output buffer empty, the
    /// keyboard's state (scan-code set, LEDs, queued answers) as after its own reset.
    #[test]
    fn system_reset_restores_the_power_on_state() {
        let sink = Arc::new(RecordingSink::default());
        let mut dev = I8042::with_keyboard(sink);
        let power_on_ctr = i8042_command(&mut dev, 0x20, &[], 1).unwrap();
        i8042_command(&mut dev, 0x60, &[CTR_AUXINT], 0).unwrap();
        dev.write(0x60, DATA, &[0xed]);
        dev.write(0x60, DATA, &[0x07]);
        dev.write(0x60, DATA, &[0xf0]);
        dev.write(0x60, DATA, &[0x01]);
        assert_eq!(dev.keyboard().unwrap().leds(), 0x07);
        assert_ne!(status(&mut dev) & STS_OBF, 0, "answers queued");
        dev.system_reset();
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        assert_eq!(i8042_command(&mut dev, 0x20, &[], 1).unwrap(), power_on_ctr);
        let k = dev.keyboard().unwrap();
        assert_eq!((k.leds(), k.scan_set()), (0, 2));
    }

    #[test]
    fn self_test_answers_0x55() {
        let (_, mut dev) = device();
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        command(&mut dev, CMD_SELF_TEST);
        assert_eq!(status(&mut dev) & (STS_OBF | STS_AUXDATA), STS_OBF);
        assert_eq!(data(&mut dev), 0x55);
        assert_eq!(status(&mut dev) & STS_OBF, 0);
    }

    #[test]
    fn port_tests_answer_no_error() {
        let (_, mut dev) = device();
        assert_eq!(i8042_command(&mut dev, CMD_KBD_TEST, &[], 1), Some(vec![0]));
        assert_eq!(i8042_command(&mut dev, CMD_AUX_TEST, &[], 1), Some(vec![0]));
    }

    #[test]
    fn ctr_read_write_round_trip() {
        let (_, mut dev) = device();
        let initial = i8042_command(&mut dev, CMD_READ_RAM, &[], 1).unwrap()[0];
        assert_eq!(initial, INITIAL_CTR);
        // Linux clears the interrupt enables and sets the disable bits while probing.
        let probing = (initial & !(CTR_KBDINT | CTR_AUXINT)) | CTR_KBDDIS | CTR_AUXDIS;
        assert_eq!(
            i8042_command(&mut dev, CMD_WRITE_RAM, &[probing], 0),
            Some(vec![])
        );
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        assert_eq!(
            i8042_command(&mut dev, CMD_READ_RAM, &[], 1),
            Some(vec![probing])
        );
        // Other controller RAM bytes are plain storage.
        i8042_command(&mut dev, CMD_WRITE_RAM + 0x1f, &[0xa5], 0).unwrap();
        assert_eq!(
            i8042_command(&mut dev, CMD_READ_RAM_LAST, &[], 1),
            Some(vec![0xa5])
        );
    }

    #[test]
    fn status_sys_follows_ctr_and_cmd_bit_follows_last_write() {
        let (_, mut dev) = device();
        i8042_command(&mut dev, CMD_WRITE_RAM, &[0], 0).unwrap();
        assert_eq!(status(&mut dev) & (STS_SYS | STS_CMD), 0);
        command(&mut dev, CMD_SELF_TEST);
        assert_eq!(status(&mut dev) & (STS_SYS | STS_CMD), STS_SYS | STS_CMD);
        assert_eq!(data(&mut dev), SELF_TEST_OK);
    }

    #[test]
    fn port_enable_disable_toggle_ctr_bits() {
        let (_, mut dev) = device();
        let ctr = |dev: &mut I8042| i8042_command(dev, CMD_READ_RAM, &[], 1).unwrap()[0];
        command(&mut dev, CMD_AUX_ENABLE);
        assert_eq!(ctr(&mut dev) & CTR_AUXDIS, 0);
        command(&mut dev, CMD_AUX_DISABLE);
        assert_eq!(ctr(&mut dev) & CTR_AUXDIS, CTR_AUXDIS);
        command(&mut dev, CMD_KBD_DISABLE);
        assert_eq!(ctr(&mut dev) & CTR_KBDDIS, CTR_KBDDIS);
        command(&mut dev, CMD_KBD_ENABLE);
        assert_eq!(ctr(&mut dev) & CTR_KBDDIS, 0);
    }

    #[test]
    fn loop_back_commands_mark_the_source() {
        let (_, mut dev) = device();
        command(&mut dev, CMD_WRITE_KBD_BUFFER);
        dev.write(0x60, DATA, &[0x12]);
        assert_eq!(status(&mut dev) & (STS_OBF | STS_AUXDATA), STS_OBF);
        assert_eq!(data(&mut dev), 0x12);
        // Linux's AUX loop test.
        assert_eq!(
            i8042_command(&mut dev, CMD_WRITE_AUX_BUFFER, &[0x5a], 0),
            Some(vec![])
        );
        assert_eq!(
            status(&mut dev) & (STS_OBF | STS_AUXDATA),
            STS_OBF | STS_AUXDATA
        );
        assert_eq!(data(&mut dev), 0x5a);
        assert_eq!(status(&mut dev) & (STS_OBF | STS_AUXDATA), 0);
        // An empty buffer reads the last byte again.
        assert_eq!(data(&mut dev), 0x5a);
    }

    #[test]
    fn bytes_for_absent_devices_are_dropped() {
        let (sink, mut dev) = device();
        // Keyboard "get ID" and a mouse "reset": no answer, no stale byte left behind.
        dev.write(0x60, DATA, &[0xf2]);
        i8042_command(&mut dev, CMD_WRITE_AUX, &[0xff], 0).unwrap();
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        assert!(sink.requests().is_empty());
    }

    #[test]
    fn output_port_read_write_and_reset_line() {
        let (sink, mut dev) = device();
        assert_eq!(
            i8042_command(&mut dev, CMD_READ_OUTPUT_PORT, &[], 1),
            Some(vec![INITIAL_OUTPUT_PORT])
        );
        // A20 off, reset line high: no reset.
        i8042_command(&mut dev, CMD_WRITE_OUTPUT_PORT, &[OUT_RESET], 0).unwrap();
        assert_eq!(
            i8042_command(&mut dev, CMD_READ_OUTPUT_PORT, &[], 1),
            Some(vec![OUT_RESET])
        );
        assert!(sink.requests().is_empty());
        i8042_command(&mut dev, CMD_WRITE_OUTPUT_PORT, &[OUT_A20], 0).unwrap();
        assert_eq!(sink.requests(), vec![GuestExit::Reset]);
    }

    #[test]
    fn output_port_reports_obf_lines() {
        let (_, mut dev) = device();
        i8042_command(&mut dev, CMD_WRITE_AUX_BUFFER, &[1], 0).unwrap();
        command(&mut dev, CMD_READ_OUTPUT_PORT);
        // The answer replaced the AUX byte; it reports the state it saw.
        assert_eq!(data(&mut dev), INITIAL_OUTPUT_PORT | OUT_AUX_OBF);
    }

    #[test]
    fn pulse_reset_command_requests_reset() {
        let (sink, mut dev) = device();
        // Linux's kb_wait() polls IBF before each 0xFE.
        assert_eq!(status(&mut dev) & STS_IBF, 0);
        command(&mut dev, 0xfe);
        assert_eq!(sink.requests(), vec![GuestExit::Reset]);
    }

    #[test]
    fn pulses_without_reset_line_do_nothing() {
        let (sink, mut dev) = device();
        command(&mut dev, 0xff);
        command(&mut dev, 0xfd);
        assert!(sink.requests().is_empty());
        // 0xFE at the data port or a 0xFE parameter is not the command.
        dev.write(0x60, DATA, &[0xfe]);
        i8042_command(&mut dev, CMD_WRITE_RAM, &[0xfe], 0).unwrap();
        assert!(sink.requests().is_empty());
    }

    #[test]
    fn new_command_abandons_pending_parameter() {
        let (_, mut dev) = device();
        command(&mut dev, CMD_WRITE_RAM);
        command(&mut dev, CMD_KBD_DISABLE);
        // This byte goes to the (absent) keyboard, not into the CTR.
        dev.write(0x60, DATA, &[0x00]);
        assert_eq!(
            i8042_command(&mut dev, CMD_READ_RAM, &[], 1),
            Some(vec![INITIAL_CTR | CTR_KBDDIS])
        );
    }

    /// The order of Linux's `i8042_controller_check`, `_selftest` and `_init`.
    #[test]
    fn linux_probe_sequence() {
        let (sink, mut dev) = device();
        // i8042_flush: drains while OBF, giving up after 16 bytes.
        let mut drained = 0;
        while status(&mut dev) & STS_OBF != 0 {
            data(&mut dev);
            drained += 1;
            assert!(drained < 16, "controller looks absent");
        }
        assert_eq!(
            i8042_command(&mut dev, CMD_SELF_TEST, &[], 1),
            Some(vec![0x55])
        );
        // Two CTR reads must agree.
        let a = i8042_command(&mut dev, CMD_READ_RAM, &[], 1).unwrap();
        let b = i8042_command(&mut dev, CMD_READ_RAM, &[], 1).unwrap();
        assert_eq!(a, b);
        let ctr = (a[0] & !(CTR_KBDINT | CTR_AUXINT)) | CTR_KBDDIS;
        i8042_command(&mut dev, CMD_WRITE_RAM, &[ctr], 0).unwrap();
        assert_eq!(status(&mut dev) & STS_OBF, 0);
        // MUX detection: the third loop byte must not come back unchanged for a MUX.
        for sent in [0xf0u8, 0x56, 0xa4] {
            assert_eq!(
                i8042_command(&mut dev, CMD_WRITE_AUX_BUFFER, &[sent], 1),
                Some(vec![sent])
            );
        }
        assert!(sink.requests().is_empty());
    }

    #[test]
    fn word_access_is_split_into_bytes() {
        let (_, mut dev) = device();
        command(&mut dev, CMD_SELF_TEST);
        // A 16-bit read at 0x63 covers 0x63 (nothing) and 0x64 (status).
        let mut d = [0u8; 2];
        dev.read(0x60, 3, &mut d);
        assert_eq!(d[0], 0xff);
        assert_eq!(d[1] & STS_OBF, STS_OBF);
        // A 16-bit read at 0x60 takes the byte and reads 0x61 as nothing.
        dev.read(0x60, DATA, &mut d);
        assert_eq!(d, [0x55, 0xff]);
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (_, mut dev) = device();
        for offset in (0..I8042_PORT_LEN + 4).chain([u64::MAX - 2, u64::MAX]) {
            for size in SIZES {
                for value in [0x00u8, 0x60, 0xd1, 0xd4, 0xff, 0x3f, 0x7f] {
                    let mut d = vec![0u8; size];
                    dev.read(0x60, offset, &mut d);
                    dev.write(0x60, offset, &vec![value; size]);
                }
            }
        }
    }
    /// OVMF's `Ps2KeyboardDxe` through the ports: controller self-test, the CTR it writes,
    /// then keyboard commands whose answers it polls for (OBF, then the data port).
    #[test]
    fn a_plugged_in_keyboard_answers_through_the_output_buffer() {
        let sink = Arc::new(RecordingSink::default());
        let mut dev = I8042::with_keyboard(sink);
        assert_eq!(
            i8042_command(&mut dev, CMD_SELF_TEST, &[], 1),
            Some(vec![0x55])
        );
        i8042_command(&mut dev, CMD_WRITE_RAM, &[0x67], 0).unwrap();
        let kbd = |dev: &mut I8042, bytes: &[u8], n: usize| {
            for &b in bytes {
                assert_eq!(status(dev) & STS_IBF, 0);
                dev.write(0x60, DATA, &[b]);
            }
            let mut out = Vec::new();
            while status(dev) & STS_OBF != 0 {
                assert_eq!(
                    status(dev) & STS_AUXDATA,
                    0,
                    "keyboard bytes are not AUX data"
                );
                out.push(data(dev));
            }
            assert_eq!(out.len(), n);
            out
        };
        assert_eq!(kbd(&mut dev, &[0xf4], 1), vec![0xfa]);
        assert_eq!(kbd(&mut dev, &[0xff], 2), vec![0xfa, 0xaa]);
        // Each parameter is acknowledged; polled after each byte as OVMF does.
        assert_eq!(kbd(&mut dev, &[0xf0], 1), vec![0xfa]);
        assert_eq!(kbd(&mut dev, &[0x02], 1), vec![0xfa]);
        assert_eq!(kbd(&mut dev, &[0xed, 0x02], 2), vec![0xfa, 0xfa]);
        assert_eq!(dev.keyboard().map(Ps2Keyboard::leds), Some(2));
        // A controller answer still arrives while the keyboard is quiet.
        assert_eq!(
            i8042_command(&mut dev, CMD_READ_RAM, &[], 1),
            Some(vec![0x67])
        );
    }

    #[test]
    fn without_a_keyboard_device_bytes_are_dropped() {
        let (_, mut dev) = device();
        assert!(dev.keyboard().is_none());
        dev.write(0x60, DATA, &[0xff]);
        assert_eq!(status(&mut dev) & STS_OBF, 0);
    }
}
