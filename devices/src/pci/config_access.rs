//! The two ways a guest reaches PCI config space.
//!
//! [`PciConfigIo`], mapped on the port bus at 0xCF8 with length [`PCI_CONFIG_IO_LEN`]:
//!
//! | Port | Offset | Register |
//! |---|---|---|
//! | 0xCF8 | 0 | CONFIG_ADDRESS, dword accesses only: enable (31), bus (23:16), device (15:11), function (10:8), register (7:2); other bits read zero |
//! | 0xCF9 | 1 | reset control (byte accesses): a write with bit 2 set resets the VM; bits 1 and 3 read back |
//! | 0xCFC–0xCFF | 4–7 | CONFIG_DATA: byte, word or dword at any offset, into the 256-byte config space of the addressed function, when enable is set (all ones / dropped otherwise) |
//!
//! Other accesses to 0xCF8–0xCFB read all ones and are dropped.
//!
//! CONFIG_ADDRESS bits 1:0 read back zero, as the PCI spec has them, but like QEMU's host
//! bridge the type-1 mechanism keeps what was written there and ORs it into the register
//! offset of a CONFIG_DATA access (`register | bits 1:0 | port − 0xCFC`): kvm-unit-tests'
//! `lib/x86/asm/pci.h` reads the device ID by writing register 2 to 0xCF8 and a word from
//! 0xCFC, which reads offset 2 under QEMU. A guest that writes bits 1:0 as zero (Linux,
//! firmware) sees no difference.
//!
//! [`PciConfigMmio`], mapped on the MMIO bus over the ECAM window: offset
//! `bus << 20 | device << 15 | function << 12 | register` reaches the full 4 KiB config space.
//! Accesses of 1, 2, 4 and 8 bytes are accepted; unaligned ones are split into bytes.

use std::sync::Arc;

use super::aligned_pieces;
use super::root::RootRef;
use super::PciAddress;
use crate::bus::BusDevice;
use crate::exit::{ExitSink, GuestExit};

/// Length of the type-1 port range (0xCF8–0xCFF).
pub const PCI_CONFIG_IO_LEN: u64 = 8;

const CONFIG_ADDRESS: u64 = 0;
const RESET_CONTROL: u64 = 1;
const CONFIG_DATA: u64 = 4;

/// CONFIG_ADDRESS enable bit.
pub const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// CONFIG_ADDRESS bits that hold state and read back (enable, bus, device, function, register).
const CONFIG_ADDRESS_MASK: u32 = 0x80ff_fffc;
/// CONFIG_ADDRESS bits that read zero but still address a byte within the dword (as in QEMU).
const CONFIG_ADDRESS_BYTE: u32 = 0x3;
/// Reset control: reset the CPU (triggers the reset).
pub const RESET_CPU: u8 = 1 << 2;
/// Reset control bits that read back: system reset (1) and full reset (3).
const RESET_CONTROL_STORED: u8 = 0x0a;

fn decode_type1(address: u32) -> (PciAddress, u16) {
    (
        PciAddress {
            bus: (address >> 16) as u8,
            device: ((address >> 11) & 0x1f) as u8,
            function: ((address >> 8) & 0x7) as u8,
        },
        (address & 0xfc) as u16,
    )
}

fn decode_ecam(offset: u64) -> Option<(PciAddress, u16)> {
    (offset >> 28 == 0).then_some((
        PciAddress {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
        },
        (offset & 0xfff) as u16,
    ))
}

/// The type-1 configuration mechanism and the reset control register (ports 0xCF8–0xCFF).
pub struct PciConfigIo {
    root: RootRef,
    address: u32,
    /// CONFIG_ADDRESS bits 1:0 as written (they read back zero).
    byte: u16,
    reset_control: u8,
    exit: Arc<dyn ExitSink>,
}

impl std::fmt::Debug for PciConfigIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfigIo")
            .field("address", &format_args!("{:#x}", self.address))
            .field("reset_control", &self.reset_control)
            .finish_non_exhaustive()
    }
}

impl PciConfigIo {
    pub(crate) fn new(root: RootRef, exit: Arc<dyn ExitSink>) -> Self {
        PciConfigIo {
            root,
            address: 0,
            byte: 0,
            reset_control: 0,
            exit,
        }
    }

    /// The function and register offset a CONFIG_DATA access at `offset` (4..8) reaches.
    fn target(&self, offset: u64) -> Option<(PciAddress, u16)> {
        if self.address & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        let (addr, reg) = decode_type1(self.address);
        Some((addr, reg | self.byte | (offset - CONFIG_DATA) as u16))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (CONFIG_ADDRESS, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (RESET_CONTROL, 1) => data[0] = self.reset_control,
            (o, _) if o >= CONFIG_DATA => match self.target(o) {
                Some((addr, reg)) => {
                    if self.root.with(|r| r.config_read(addr, reg, data)).is_none() {
                        data.fill(0xff);
                    }
                }
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (CONFIG_ADDRESS, &[a, b, c, d]) => {
                let v = u32::from_le_bytes([a, b, c, d]);
                self.address = v & CONFIG_ADDRESS_MASK;
                self.byte = (v & CONFIG_ADDRESS_BYTE) as u16;
            }
            (RESET_CONTROL, &[v]) => {
                self.reset_control = v & RESET_CONTROL_STORED;
                if v & RESET_CPU != 0 {
                    log::info!("PCI: reset requested through 0xCF9 ({v:#x})");
                    self.exit.request_exit(GuestExit::Reset);
                }
            }
            (o, _) if o >= CONFIG_DATA => {
                if let Some((addr, reg)) = self.target(o) {
                    self.root.with(|r| r.config_write(addr, reg, data));
                }
            }
            _ => {}
        }
    }
}

/// The ECAM (memory-mapped) configuration mechanism.
pub struct PciConfigMmio {
    root: RootRef,
}

impl std::fmt::Debug for PciConfigMmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfigMmio").finish_non_exhaustive()
    }
}

impl PciConfigMmio {
    pub(crate) fn new(root: RootRef) -> Self {
        PciConfigMmio { root }
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let done = self.root.with(|root| {
            for (i, n) in aligned_pieces(offset, data.len()) {
                let piece = &mut data[i..i + n];
                match decode_ecam(offset + i as u64) {
                    Some((addr, reg)) => root.config_read(addr, reg, piece),
                    None => piece.fill(0xff),
                }
            }
        });
        if done.is_none() {
            data.fill(0xff);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.root.with(|root| {
            for (i, n) in aligned_pieces(offset, data.len()) {
                if let Some((addr, reg)) = decode_ecam(offset + i as u64) {
                    root.config_write(addr, reg, &data[i..i + n]);
                }
            }
        });
    }
}
