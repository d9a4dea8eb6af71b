//! A PS/2 keyboard with no keys: it answers the host's commands (acknowledge, self-test
//! result, identity, scan-code set) and never sends a scan code. Plugged into the [`I8042`]'s
//! keyboard port with `--firmware` only, because a firmware waits for these answers: OVMF's
//! `Ps2KeyboardDxe` sends "enable" (0xF4) and waits up to a second for the acknowledge, then
//! resets the keyboard (0xFF: acknowledge and the self-test's 0xAA), sets scan-code set 2 and
//! the LEDs, each answer waited for with a timeout. With nothing attached every wait runs to its
//! end, polling the status port and the ACPI PM timer: 107,000 status reads and as many timer
//! reads in one OVMF boot in the nested rig (docs/firmware.md), against 2,300 with QEMU's
//! keyboard.
//!
//! Commands (the byte the host writes to the data port when no controller command waits for a
//! parameter) and the bytes queued in answer:
//!
//! | command | answer |
//! |---|---|
//! | 0xED set LEDs, 0xF3 set typematic rate | 0xFA, and 0xFA for the parameter byte |
//! | 0xF0 scan-code set | 0xFA; parameter 0: 0xFA and the set in use; 1–3: 0xFA, the set kept |
//! | 0xF2 identify | 0xFA 0xAB 0x83 (an MF2 keyboard) |
//! | 0xEE echo | 0xEE |
//! | 0xFF reset | 0xFA 0xAA (self-test passed); set 2, scanning on |
//! | 0xF4 enable, 0xF5 disable, 0xF6 defaults, 0xF7–0xFD, 0xFE resend | 0xFA (0xFE: the last byte again) |
//! | anything else | 0xFE (resend: not understood) |
//!
//! The answers wait in a small queue; the controller moves one at a time into its output buffer
//! as the host reads them. No interrupts: the host polls (`OBF` in the status register).
//!
//! [`I8042`]: super::I8042

use std::collections::VecDeque;

/// Acknowledge.
pub const KBD_ACK: u8 = 0xfa;
/// Self-test passed (after a reset).
pub const KBD_BAT_OK: u8 = 0xaa;
/// Resend: the command was not understood.
pub const KBD_RESEND: u8 = 0xfe;
/// Echo's answer.
pub const KBD_ECHO: u8 = 0xee;
/// Identity of an MF2 keyboard, after the acknowledge of 0xF2.
pub const KBD_ID: [u8; 2] = [0xab, 0x83];

const CMD_SET_LEDS: u8 = 0xed;
const CMD_ECHO: u8 = 0xee;
const CMD_SCAN_SET: u8 = 0xf0;
const CMD_IDENTIFY: u8 = 0xf2;
const CMD_TYPEMATIC: u8 = 0xf3;
const CMD_ENABLE: u8 = 0xf4;
const CMD_DISABLE: u8 = 0xf5;
const CMD_DEFAULTS: u8 = 0xf6;
const CMD_RESEND: u8 = 0xfe;
const CMD_RESET: u8 = 0xff;

/// Answers kept at most; a host that never reads loses the oldest.
const QUEUE_LEN: usize = 16;

/// The keyboard.
#[derive(Debug)]
pub struct Ps2Keyboard {
    queue: VecDeque<u8>,
    /// A command waiting for its parameter byte.
    pending: Option<u8>,
    scan_set: u8,
    scanning: bool,
    leds: u8,
    /// The last byte sent, for 0xFE.
    last: u8,
}

impl Default for Ps2Keyboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Ps2Keyboard {
    /// A keyboard after its power-on self-test (whose 0xAA a firmware would have read long ago:
    /// the queue starts empty).
    pub fn new() -> Self {
        Ps2Keyboard {
            queue: VecDeque::new(),
            pending: None,
            scan_set: 2,
            scanning: true,
            leds: 0,
            last: KBD_BAT_OK,
        }
    }

    fn send(&mut self, byte: u8) {
        if self.queue.len() == QUEUE_LEN {
            self.queue.pop_front();
        }
        self.queue.push_back(byte);
        self.last = byte;
    }

    /// The next byte for the controller's output buffer, if any.
    pub fn pop(&mut self) -> Option<u8> {
        self.queue.pop_front()
    }

    /// Whether answers are waiting.
    pub fn has_output(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The LED bits last set (bit 0 scroll, 1 num, 2 caps lock).
    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// The scan-code set in use (1–3).
    pub fn scan_set(&self) -> u8 {
        self.scan_set
    }

    /// Whether scanning is enabled (0xF4 / 0xF5).
    pub fn scanning(&self) -> bool {
        self.scanning
    }

    /// A byte from the host.
    pub fn write(&mut self, byte: u8) {
        if let Some(cmd) = self.pending.take() {
            self.parameter(cmd, byte);
            return;
        }
        match byte {
            CMD_SET_LEDS | CMD_TYPEMATIC | CMD_SCAN_SET => {
                self.pending = Some(byte);
                self.send(KBD_ACK);
            }
            CMD_ECHO => self.send(KBD_ECHO),
            CMD_IDENTIFY => {
                self.send(KBD_ACK);
                self.send(KBD_ID[0]);
                self.send(KBD_ID[1]);
            }
            CMD_ENABLE => {
                self.scanning = true;
                self.send(KBD_ACK);
            }
            CMD_DISABLE | CMD_DEFAULTS => {
                // 0xF5 also restores the defaults; both leave the keyboard as after 0xF6.
                self.scan_set = 2;
                self.scanning = byte == CMD_DEFAULTS;
                self.send(KBD_ACK);
            }
            CMD_RESEND => {
                let last = self.last;
                self.send(last);
            }
            CMD_RESET => {
                self.queue.clear();
                self.scan_set = 2;
                self.scanning = true;
                self.leds = 0;
                self.send(KBD_ACK);
                self.send(KBD_BAT_OK);
            }
            0xf7..=0xfd => self.send(KBD_ACK),
            _ => self.send(KBD_RESEND),
        }
    }

    fn parameter(&mut self, cmd: u8, byte: u8) {
        match cmd {
            CMD_SET_LEDS => self.leds = byte & 0x7,
            CMD_SCAN_SET => match byte {
                0 => {
                    self.send(KBD_ACK);
                    let set = self.scan_set;
                    self.send(set);
                    return;
                }
                1..=3 => self.scan_set = byte,
                _ => {
                    self.send(KBD_RESEND);
                    return;
                }
            },
            // CMD_TYPEMATIC: the rate is kept nowhere; no key ever repeats.
            _ => {}
        }
        self.send(KBD_ACK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(kbd: &mut Ps2Keyboard, bytes: &[u8]) -> Vec<u8> {
        for &b in bytes {
            kbd.write(b);
        }
        std::iter::from_fn(|| kbd.pop()).collect()
    }

    #[test]
    fn reset_acknowledges_and_passes_its_self_test() {
        let mut k = Ps2Keyboard::new();
        assert!(!k.has_output());
        k.write(CMD_SET_LEDS);
        k.write(0x2);
        assert_eq!(k.leds(), 2);
        assert_eq!(answers(&mut k, &[0xff]), vec![KBD_ACK, KBD_BAT_OK]);
        assert_eq!(k.leds(), 0);
    }

    #[test]
    fn ovmf_sequence_gets_an_acknowledge_for_every_byte() {
        // Ps2KeyboardDxe: enable, reset, scan-code set 2, enable, LEDs.
        let mut k = Ps2Keyboard::new();
        assert_eq!(answers(&mut k, &[0xf4]), vec![KBD_ACK]);
        assert_eq!(answers(&mut k, &[0xff]), vec![KBD_ACK, KBD_BAT_OK]);
        assert_eq!(answers(&mut k, &[0xf0, 0x02]), vec![KBD_ACK, KBD_ACK]);
        assert_eq!(answers(&mut k, &[0xf4]), vec![KBD_ACK]);
        assert_eq!(answers(&mut k, &[0xed, 0x07]), vec![KBD_ACK, KBD_ACK]);
        assert_eq!((k.scan_set(), k.leds(), k.scanning()), (2, 7, true));
    }

    #[test]
    fn identify_echo_and_scan_set_query() {
        let mut k = Ps2Keyboard::new();
        assert_eq!(answers(&mut k, &[0xf2]), vec![KBD_ACK, 0xab, 0x83]);
        assert_eq!(answers(&mut k, &[0xee]), vec![KBD_ECHO]);
        assert_eq!(answers(&mut k, &[0xf0, 0x01]), vec![KBD_ACK, KBD_ACK]);
        assert_eq!(answers(&mut k, &[0xf0, 0x00]), vec![KBD_ACK, KBD_ACK, 1]);
        assert_eq!(answers(&mut k, &[0xf0, 0x09]), vec![KBD_ACK, KBD_RESEND]);
        assert_eq!(k.scan_set(), 1);
        assert_eq!(answers(&mut k, &[0xf5]), vec![KBD_ACK]);
        assert_eq!((k.scan_set(), k.scanning()), (2, false));
    }

    #[test]
    fn unknown_commands_ask_for_a_resend_and_resend_repeats() {
        let mut k = Ps2Keyboard::new();
        assert_eq!(answers(&mut k, &[0x12]), vec![KBD_RESEND]);
        assert_eq!(answers(&mut k, &[0xee, 0xfe]), vec![KBD_ECHO, KBD_ECHO]);
    }

    #[test]
    fn an_unread_queue_keeps_the_newest_answers() {
        let mut k = Ps2Keyboard::new();
        for _ in 0..20 {
            k.write(CMD_ECHO);
        }
        k.write(CMD_IDENTIFY);
        let got = answers(&mut k, &[]);
        assert_eq!(got.len(), QUEUE_LEN);
        assert_eq!(&got[QUEUE_LEN - 3..], &[KBD_ACK, 0xab, 0x83]);
    }
}
