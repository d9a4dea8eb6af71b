//! The configuration-space model every emulated PCI function shares.
//!
//! [`ConfigSpace`] is 4 KiB of register bytes with two masks per byte: `writable` (the bits a
//! guest write replaces) and `w1c` (the bits a guest clears by writing 1). Everything else is
//! read-only. Because the masks are per byte, an access of any width at any offset means the
//! same thing, and nothing a guest writes can change a read-only bit.
//!
//! The device itself changes registers with the `set_*` methods, which ignore the masks (a status
//! bit the device raises, a pending bit). BARs are declared with [`ConfigSpace::set_bar`] and are
//! nothing but masks (see [`crate::pci::bar`]). Capabilities are laid out by
//! [`ConfigSpace::add_capability`] and [`ConfigSpace::add_ext_capability`], which link them into
//! the list at 0x34 and the extended list at 0x100; each capability struct (in
//! [`crate::pci::caps`]) describes its registers as a [`CapRegs`] and reads its state back from
//! the config space after a guest write.
//!
//! A conventional (non-PCIe) function simply leaves bytes 0x100.. zero: the extended space reads
//! as zeros behind ECAM, and the type-1 mechanism cannot reach it anyway.

use super::bar::{
    BarError, BarKind, BarSpec, DecodedBar, BAR0_OFFSET, BAR_IO_ADDR_MASK, BAR_MEM_ADDR_MASK,
    NUM_BARS, NUM_BAR_SLOTS, ROM_ADDR_MASK, ROM_BAR, ROM_BAR_OFFSET, ROM_ENABLE,
};

/// Size of a PCI Express function's configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the conventional (type-1 reachable) configuration space.
pub const LEGACY_CONFIG_SIZE: usize = 256;

/// Vendor ID (16 bits).
pub const VENDOR_ID: u16 = 0x00;
/// Device ID (16 bits).
pub const DEVICE_ID: u16 = 0x02;
/// Command register (16 bits).
pub const COMMAND: u16 = 0x04;
/// Status register (16 bits).
pub const STATUS: u16 = 0x06;
/// Revision ID (8 bits).
pub const REVISION_ID: u16 = 0x08;
/// Class code: programming interface (0x09), subclass (0x0A), base class (0x0B).
pub const CLASS_PROG_IF: u16 = 0x09;
/// Cache line size (8 bits, RW).
pub const CACHE_LINE_SIZE: u16 = 0x0c;
/// Latency timer (8 bits).
pub const LATENCY_TIMER: u16 = 0x0d;
/// Header type (8 bits; bit 7 = multi-function).
pub const HEADER_TYPE: u16 = 0x0e;
/// Header type bit 7: the device has functions besides 0.
pub const HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;
/// Subsystem vendor ID (16 bits).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID (16 bits).
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Capabilities pointer (8 bits).
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Interrupt line (8 bits, RW: what firmware/OS wrote; the device ignores it).
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin (8 bits, RO: 0 none, 1..=4 INTA#..INTD#).
pub const INTERRUPT_PIN: u16 = 0x3d;

/// Command: I/O space decoding.
pub const CMD_IO_SPACE: u16 = 1 << 0;
/// Command: memory space decoding.
pub const CMD_MEMORY_SPACE: u16 = 1 << 1;
/// Command: bus master (the device may DMA and send MSIs).
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Command: parity error response.
pub const CMD_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
/// Command: SERR# enable.
pub const CMD_SERR: u16 = 1 << 8;
/// Command: INTx disable.
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// The command bits a guest may write.
pub const CMD_WRITABLE: u16 = CMD_IO_SPACE
    | CMD_MEMORY_SPACE
    | CMD_BUS_MASTER
    | CMD_PARITY_ERROR_RESPONSE
    | CMD_SERR
    | CMD_INTX_DISABLE;

/// Status: INTx asserted (RO, set by the device).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status: the capability list at 0x34 is valid.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// Status error bits a guest clears by writing 1: master data parity error (8), signalled target
/// abort (11), received target abort (12), received master abort (13), signalled system error
/// (14), detected parity error (15).
pub const STATUS_W1C: u16 = 0xf900;

/// Where the first standard capability goes.
pub const CAP_START: u16 = 0x40;
/// Where the extended capability list starts.
pub const EXT_CAP_START: u16 = 0x100;
/// The walkers stop after this many entries, so a looped list cannot hang them.
const MAX_CAP_WALK: usize = (CONFIG_SPACE_SIZE - LEGACY_CONFIG_SIZE) / 4;

/// Errors from laying out a config space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A BAR declaration was refused.
    #[error("invalid BAR {index}: {source}")]
    Bar {
        /// BAR index.
        index: usize,
        /// Why.
        #[source]
        source: BarError,
    },
    /// The capability does not fit in the remaining (extended) config space.
    #[error("capability {id:#x} of {len} bytes does not fit in the config space (next free offset {next:#x})")]
    NoRoom {
        /// Capability ID.
        id: u16,
        /// Its length.
        len: usize,
        /// The first free offset.
        next: u16,
    },
    /// The capability is too short to hold its own header.
    #[error("capability {id:#x} is {len} bytes, shorter than its header")]
    TooShort {
        /// Capability ID.
        id: u16,
        /// Its length.
        len: usize,
    },
}

/// The identity registers of a type-0 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// 24-bit class code: base class << 16 | subclass << 8 | programming interface.
    pub class_code: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin: 0 = none, 1..=4 = INTA#..INTD#.
    pub interrupt_pin: u8,
}

/// A capability's registers before it is placed: bytes, writable mask and W1C mask, all the same
/// length. The header (ID and next pointer: 2 bytes, or 4 for an extended capability) is filled
/// in and made read-only when the capability is added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapRegs {
    bytes: Vec<u8>,
    writable: Vec<u8>,
    w1c: Vec<u8>,
}

impl CapRegs {
    /// `len` zero bytes, all read-only.
    pub fn new(len: usize) -> Self {
        CapRegs {
            bytes: vec![0; len],
            writable: vec![0; len],
            w1c: vec![0; len],
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The register bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The writable mask.
    pub fn writable(&self) -> &[u8] {
        &self.writable
    }

    /// The write-1-to-clear mask.
    pub fn w1c(&self) -> &[u8] {
        &self.w1c
    }

    /// Whether the capability has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Sets a little-endian field of `width` bytes (1, 2 or 4) at `offset` with its masks.
    /// Bytes beyond the capability's length are ignored.
    pub fn field(&mut self, offset: usize, width: usize, value: u32, writable: u32, w1c: u32) {
        for i in 0..width.min(4) {
            let Some(b) = self.bytes.get_mut(offset + i) else {
                return;
            };
            let shift = 8 * i;
            *b = (value >> shift) as u8;
            self.writable[offset + i] = (writable >> shift) as u8;
            self.w1c[offset + i] = (w1c >> shift) as u8;
        }
    }
}

/// A function's configuration space: registers, masks, BAR declarations and capability layout.
#[derive(Clone)]
pub struct ConfigSpace {
    regs: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    bars: [Option<BarSpec>; NUM_BAR_SLOTS],
    last_cap: Option<u16>,
    next_cap: u16,
    last_ext_cap: Option<u16>,
    next_ext_cap: u16,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field(
                "vendor_id",
                &format_args!("{:#06x}", self.read_u16(VENDOR_ID)),
            )
            .field(
                "device_id",
                &format_args!("{:#06x}", self.read_u16(DEVICE_ID)),
            )
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl ConfigSpace {
    /// A type-0 header with the given identity; command and interrupt line writable, status
    /// error bits write-1-to-clear, no BARs, no capabilities.
    pub fn new(header: &ConfigHeader) -> Self {
        let mut c = ConfigSpace {
            regs: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            bars: [None; NUM_BAR_SLOTS],
            last_cap: None,
            next_cap: CAP_START,
            last_ext_cap: None,
            next_ext_cap: EXT_CAP_START,
        };
        c.set_u16(VENDOR_ID, header.vendor_id);
        c.set_u16(DEVICE_ID, header.device_id);
        c.set_u8(REVISION_ID, header.revision_id);
        c.set_u8(CLASS_PROG_IF, header.class_code as u8);
        c.set_u8(CLASS_PROG_IF + 1, (header.class_code >> 8) as u8);
        c.set_u8(CLASS_PROG_IF + 2, (header.class_code >> 16) as u8);
        c.set_u16(SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, header.subsystem_id);
        c.set_u8(INTERRUPT_PIN, header.interrupt_pin.min(4));
        c.set_masks(COMMAND, &CMD_WRITABLE.to_le_bytes(), &[0, 0]);
        c.set_masks(STATUS, &[0, 0], &STATUS_W1C.to_le_bytes());
        c.set_masks(CACHE_LINE_SIZE, &[0xff], &[0]);
        c.set_masks(INTERRUPT_LINE, &[0xff], &[0]);
        c
    }

    /// Guest read of `data.len()` bytes at `offset`; bytes past the end read all ones.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self
                .regs
                .get(usize::from(offset) + i)
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Guest write of `data` at `offset`, through the masks; bytes past the end are dropped.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            let (Some(r), Some(&wr), Some(&wc)) = (
                self.regs.get_mut(at),
                self.writable.get(at),
                self.w1c.get(at),
            ) else {
                return;
            };
            *r = ((*r & !wr) | (v & wr)) & !(v & wc);
        }
    }

    /// Whether a guest access `[offset, offset + len)` touches `[start, start + size)`.
    pub fn touches(offset: u16, len: usize, start: u16, size: usize) -> bool {
        let (o, s) = (usize::from(offset), usize::from(start));
        o < s + size && s < o + len
    }

    /// Device-side read of one byte (0xff past the end).
    pub fn read_u8(&self, offset: u16) -> u8 {
        self.regs.get(usize::from(offset)).copied().unwrap_or(0xff)
    }

    /// Device-side read of a little-endian 16-bit register.
    pub fn read_u16(&self, offset: u16) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Device-side read of a little-endian 32-bit register.
    pub fn read_u32(&self, offset: u16) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Device-side write of bytes, ignoring the masks (bytes past the end are dropped).
    pub fn set_bytes(&mut self, offset: u16, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            if let Some(r) = self.regs.get_mut(usize::from(offset) + i) {
                *r = v;
            }
        }
    }

    /// Device-side write of one byte.
    pub fn set_u8(&mut self, offset: u16, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    /// Device-side write of a 16-bit register.
    pub fn set_u16(&mut self, offset: u16, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Device-side write of a 32-bit register.
    pub fn set_u32(&mut self, offset: u16, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets the writable and W1C masks of the bytes at `offset` (`writable` and `w1c` may differ
    /// in length; each covers as many bytes as it has).
    pub fn set_masks(&mut self, offset: u16, writable: &[u8], w1c: &[u8]) {
        let at = usize::from(offset);
        for (i, &m) in writable.iter().enumerate() {
            if let Some(b) = self.writable.get_mut(at + i) {
                *b = m;
            }
        }
        for (i, &m) in w1c.iter().enumerate() {
            if let Some(b) = self.w1c.get_mut(at + i) {
                *b = m;
            }
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Sets or clears device-owned status bits (e.g. [`STATUS_INTERRUPT`]).
    pub fn set_status_bits(&mut self, bits: u16, on: bool) {
        let s = self.read_u16(STATUS);
        self.set_u16(STATUS, if on { s | bits } else { s & !bits });
    }

    /// Declares BAR `index` (or [`ROM_BAR`]): writes its flags and makes its address bits
    /// writable. A 64-bit BAR also takes register `index + 1`.
    pub fn set_bar(&mut self, index: usize, spec: BarSpec) -> Result<(), ConfigError> {
        let err = |source| ConfigError::Bar { index, source };
        spec.validate(index).map_err(err)?;
        let taken = |i: usize| {
            self.bars[i].is_some()
                || (i > 0 && matches!(self.bars[i - 1], Some(b) if b.kind == BarKind::Memory64))
        };
        if taken(index) || (spec.kind == BarKind::Memory64 && taken(index + 1)) {
            return Err(err(BarError::InUse { index }));
        }
        let off = bar_offset(index);
        self.set_u32(off, spec.flags());
        self.set_masks(off, &spec.low_writable().to_le_bytes(), &[0; 4]);
        if spec.kind == BarKind::Memory64 {
            self.set_u32(off + 4, 0);
            self.set_masks(off + 4, &spec.high_writable().to_le_bytes(), &[0; 4]);
        }
        self.bars[index] = Some(spec);
        Ok(())
    }

    /// The declared BARs (and ROM), by index.
    pub fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b)))
            .collect()
    }

    /// The declaration of BAR `index`.
    pub fn bar_spec(&self, index: usize) -> Option<BarSpec> {
        self.bars.get(index).copied().flatten()
    }

    /// The address BAR `index` holds now (whatever decoding is set to).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let spec = self.bar_spec(index)?;
        let off = bar_offset(index);
        let low = self.read_u32(off);
        Some(match spec.kind {
            BarKind::Io => u64::from(low & BAR_IO_ADDR_MASK),
            BarKind::Memory32 => u64::from(low & BAR_MEM_ADDR_MASK),
            BarKind::Memory64 => {
                u64::from(low & BAR_MEM_ADDR_MASK) | (u64::from(self.read_u32(off + 4)) << 32)
            }
            BarKind::Rom => u64::from(low & ROM_ADDR_MASK),
        })
    }

    /// Whether the ROM BAR's enable bit is set.
    pub fn rom_enabled(&self) -> bool {
        self.bars[ROM_BAR].is_some() && self.read_u32(ROM_BAR_OFFSET) & ROM_ENABLE != 0
    }

    /// The BARs the function decodes now: I/O BARs if I/O decoding is on, memory BARs if memory
    /// decoding is on, the ROM if memory decoding and its enable bit are on.
    pub fn decoded_bars(&self) -> Vec<DecodedBar> {
        let cmd = self.command();
        let mut out = Vec::new();
        for (index, spec) in self.bar_specs() {
            let on = match spec.kind {
                BarKind::Io => cmd & CMD_IO_SPACE != 0,
                BarKind::Memory32 | BarKind::Memory64 => cmd & CMD_MEMORY_SPACE != 0,
                BarKind::Rom => cmd & CMD_MEMORY_SPACE != 0 && self.rom_enabled(),
            };
            if let (true, Some(addr)) = (on, self.bar_address(index)) {
                out.push(DecodedBar {
                    index,
                    space: spec.space(),
                    addr,
                    size: spec.size,
                });
            }
        }
        out
    }

    /// Adds a standard capability with ID `id`, linked at the end of the list. Returns its offset.
    pub fn add_capability(&mut self, id: u8, regs: &CapRegs) -> Result<u16, ConfigError> {
        let len = regs.len();
        if len < 2 {
            return Err(ConfigError::TooShort { id: id.into(), len });
        }
        let off = self.next_cap;
        if usize::from(off) + len > LEGACY_CONFIG_SIZE {
            return Err(ConfigError::NoRoom {
                id: id.into(),
                len,
                next: off,
            });
        }
        self.place(off, regs);
        self.set_bytes(off, &[id, 0]);
        self.set_masks(off, &[0, 0], &[0, 0]);
        match self.last_cap {
            Some(prev) => self.set_u8(prev + 1, off as u8),
            None => {
                self.set_u8(CAPABILITIES_POINTER, off as u8);
                self.set_status_bits(STATUS_CAP_LIST, true);
            }
        }
        self.last_cap = Some(off);
        self.next_cap = align4(off + len as u16);
        Ok(off)
    }

    /// Adds an extended capability (`id`, `version`) to the list at 0x100. Returns its offset.
    pub fn add_ext_capability(
        &mut self,
        id: u16,
        version: u8,
        regs: &CapRegs,
    ) -> Result<u16, ConfigError> {
        let len = regs.len();
        if len < 4 {
            return Err(ConfigError::TooShort { id, len });
        }
        let off = self.next_ext_cap;
        if usize::from(off) + len > CONFIG_SPACE_SIZE {
            return Err(ConfigError::NoRoom { id, len, next: off });
        }
        self.place(off, regs);
        self.set_u32(off, u32::from(id) | (u32::from(version & 0xf) << 16));
        self.set_masks(off, &[0; 4], &[0; 4]);
        if let Some(prev) = self.last_ext_cap {
            let h = self.read_u32(prev);
            self.set_u32(prev, (h & 0x000f_ffff) | (u32::from(off) << 20));
        }
        self.last_ext_cap = Some(off);
        self.next_ext_cap = align4(off + len as u16);
        Ok(off)
    }

    fn place(&mut self, off: u16, regs: &CapRegs) {
        self.set_bytes(off, &regs.bytes);
        self.set_masks(off, &regs.writable, &regs.w1c);
    }

    /// Walks the standard capability list: `(offset, id)` in list order. Stops at a null or
    /// out-of-range pointer, and after a bounded number of entries (a looped list).
    pub fn capabilities(&self) -> Vec<(u16, u8)> {
        let mut out = Vec::new();
        if self.read_u16(STATUS) & STATUS_CAP_LIST == 0 {
            return out;
        }
        let mut ptr = u16::from(self.read_u8(CAPABILITIES_POINTER) & !3);
        while ptr >= CAP_START && out.len() < MAX_CAP_WALK {
            out.push((ptr, self.read_u8(ptr)));
            ptr = u16::from(self.read_u8(ptr + 1) & !3);
        }
        out
    }

    /// Walks the extended capability list: `(offset, id, version)`.
    pub fn ext_capabilities(&self) -> Vec<(u16, u16, u8)> {
        let mut out = Vec::new();
        let mut ptr = EXT_CAP_START;
        while out.len() < MAX_CAP_WALK {
            let h = self.read_u32(ptr);
            if h == 0 || h == u32::MAX {
                break;
            }
            out.push((ptr, h as u16, ((h >> 16) & 0xf) as u8));
            ptr = (h >> 20) as u16 & !3;
            if ptr < EXT_CAP_START {
                break;
            }
        }
        out
    }

    /// The offset of the first standard capability with ID `id`.
    pub fn find_capability(&self, id: u8) -> Option<u16> {
        self.capabilities()
            .into_iter()
            .find(|&(_, i)| i == id)
            .map(|(o, _)| o)
    }
}

/// Config offset of BAR `index` (the ROM BAR for [`ROM_BAR`]).
pub fn bar_offset(index: usize) -> u16 {
    if index >= NUM_BARS {
        ROM_BAR_OFFSET
    } else {
        BAR0_OFFSET + 4 * index as u16
    }
}

/// For a guest config access that may hit BAR registers: the BAR indices (0..=5, [`ROM_BAR`])
/// whose registers `[offset, offset + len)` touches.
pub fn bars_touched(offset: u16, len: usize) -> impl Iterator<Item = usize> {
    (0..NUM_BAR_SLOTS).filter(move |&i| ConfigSpace::touches(offset, len, bar_offset(i), 4))
}

fn align4(v: u16) -> u16 {
    (v + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::bar::{AddressSpace, BarSpec};

    fn header() -> ConfigHeader {
        ConfigHeader {
            vendor_id: 0x1234,
            device_id: 0x5678,
            revision_id: 1,
            class_code: 0xff0000,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 1,
        }
    }

    fn read32(c: &ConfigSpace, off: u16) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(c: &mut ConfigSpace, off: u16, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    #[test]
    fn read_only_bits_stay_and_rw_bits_change() {
        let mut c = ConfigSpace::new(&header());
        write32(&mut c, 0, 0xffff_ffff);
        assert_eq!(read32(&c, 0), 0x5678_1234);
        // Command: only the defined bits are writable.
        c.write(COMMAND, &[0xff, 0xff]);
        assert_eq!(c.command(), CMD_WRITABLE);
        c.write(COMMAND, &[0, 0]);
        assert_eq!(c.command(), 0);
        // Byte write to the high command byte alone.
        c.write(COMMAND + 1, &[0x04]);
        assert_eq!(c.command(), CMD_INTX_DISABLE);
        // Interrupt line RW, pin RO.
        c.write(INTERRUPT_LINE, &[0x11, 0x03]);
        assert_eq!(c.read_u8(INTERRUPT_LINE), 0x11);
        assert_eq!(c.read_u8(INTERRUPT_PIN), 1);
        // Class code and header type RO.
        write32(&mut c, 0x08, 0);
        assert_eq!(read32(&c, 0x08), 0xff00_0001);
    }

    #[test]
    fn write_one_to_clear_status_bits() {
        let mut c = ConfigSpace::new(&header());
        c.set_status_bits(0x8000 | 0x2000 | STATUS_INTERRUPT, true);
        // Writing zeros changes nothing; writing 1 to a W1C bit clears only that bit; writing 1
        // to the device-owned interrupt bit does nothing.
        c.write(STATUS, &[0, 0]);
        assert_eq!(c.read_u16(STATUS), 0xa008);
        c.write(STATUS, &0x2008u16.to_le_bytes());
        assert_eq!(c.read_u16(STATUS), 0x8008);
        // A dword write at COMMAND reaches the status half too.
        write32(&mut c, COMMAND, 0x8000_0002);
        assert_eq!(c.read_u16(STATUS), 0x0008);
        assert_eq!(c.command(), CMD_MEMORY_SPACE);
    }

    #[test]
    fn out_of_range_access_is_clamped() {
        let mut c = ConfigSpace::new(&header());
        let mut b = [0u8; 4];
        c.read(4094, &mut b);
        assert_eq!(&b[2..], &[0xff, 0xff]);
        c.write(4094, &[1, 2, 3, 4]);
        c.read(u16::MAX, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn capability_list_walks_in_order() {
        let mut c = ConfigSpace::new(&header());
        assert!(c.capabilities().is_empty());
        let a = c.add_capability(0x09, &CapRegs::new(6)).unwrap();
        let b = c.add_capability(0x05, &CapRegs::new(10)).unwrap();
        let d = c.add_capability(0x11, &CapRegs::new(12)).unwrap();
        assert_eq!((a, b, d), (0x40, 0x48, 0x54));
        assert_eq!(
            c.capabilities(),
            vec![(0x40, 0x09), (0x48, 0x05), (0x54, 0x11)]
        );
        assert_ne!(c.read_u16(STATUS) & STATUS_CAP_LIST, 0);
        assert_eq!(c.read_u8(CAPABILITIES_POINTER), 0x40);
        assert_eq!(c.find_capability(0x11), Some(0x54));
        // Guest writes cannot relink the list.
        c.write(a, &[0xff, 0xff]);
        c.write(CAPABILITIES_POINTER, &[0x80]);
        assert_eq!(c.capabilities().len(), 3);
        // Too big for what is left.
        assert!(matches!(
            c.add_capability(0x10, &CapRegs::new(0x100)),
            Err(ConfigError::NoRoom { .. })
        ));
    }

    #[test]
    fn looped_list_walk_terminates() {
        let mut c = ConfigSpace::new(&header());
        c.add_capability(0x09, &CapRegs::new(4)).unwrap();
        c.set_u8(0x41, 0x40);
        assert_eq!(c.capabilities().len(), MAX_CAP_WALK);
        c.add_ext_capability(0xb, 1, &CapRegs::new(8)).unwrap();
        c.set_u32(0x100, 0x1001_000b);
        assert_eq!(c.ext_capabilities().len(), MAX_CAP_WALK);
    }

    #[test]
    fn extended_capability_list_walks_in_order() {
        let mut c = ConfigSpace::new(&header());
        assert!(c.ext_capabilities().is_empty());
        let mut regs = CapRegs::new(12);
        regs.field(8, 4, 0xdead_beef, 0xffff_0000, 0);
        let a = c.add_ext_capability(0x000b, 1, &regs).unwrap();
        let b = c
            .add_ext_capability(0x0001, 2, &CapRegs::new(0x2c))
            .unwrap();
        assert_eq!((a, b), (0x100, 0x10c));
        assert_eq!(c.ext_capabilities(), vec![(0x100, 0xb, 1), (0x10c, 1, 2)]);
        assert_eq!(read32(&c, 0x100), 0x10c1_000b);
        write32(&mut c, 0x100, 0);
        assert_eq!(read32(&c, 0x100), 0x10c1_000b);
        write32(&mut c, 0x108, 0);
        assert_eq!(read32(&c, 0x108), 0x0000_beef);
        assert!(c.add_ext_capability(1, 1, &CapRegs::new(0x1000)).is_err());
        assert!(c.add_ext_capability(1, 1, &CapRegs::new(2)).is_err());
    }

    /// Sizes a BAR the way firmware does and restores it; returns the size mask read back.
    fn size_bar(c: &mut ConfigSpace, off: u16) -> u32 {
        let orig = read32(c, off);
        write32(c, off, u32::MAX);
        let mask = read32(c, off);
        write32(c, off, orig);
        assert_eq!(read32(c, off), orig, "original restored");
        mask
    }

    #[test]
    fn bar_sizing_each_kind() {
        let mut c = ConfigSpace::new(&header());
        c.set_bar(0, BarSpec::mem32(0x1000)).unwrap();
        c.set_bar(1, BarSpec::io(0x20)).unwrap();
        c.set_bar(2, BarSpec::mem64(0x4000, false)).unwrap();
        c.set_bar(4, BarSpec::mem64(64 << 30, true)).unwrap();
        c.set_bar(ROM_BAR, BarSpec::rom(0x800)).unwrap();
        write32(&mut c, 0x10, 0xc000_0000);
        write32(&mut c, 0x14, 0x6000);
        write32(&mut c, 0x18, 0xc001_0000);
        write32(&mut c, 0x1c, 0x1);
        write32(&mut c, 0x20, 0);
        write32(&mut c, 0x24, 0x10);

        assert_eq!(size_bar(&mut c, 0x10), 0xffff_f000);
        assert_eq!(size_bar(&mut c, 0x14), 0xffff_ffe1);
        assert_eq!(size_bar(&mut c, 0x18), 0xffff_c004);
        assert_eq!(size_bar(&mut c, 0x1c), 0xffff_ffff);
        // 64 GiB: no address bits in the low half.
        assert_eq!(size_bar(&mut c, 0x20), 0x0000_000c);
        assert_eq!(size_bar(&mut c, 0x24), 0xffff_fff0);
        assert_eq!(size_bar(&mut c, 0x30), 0xffff_f801);
        // Unimplemented BAR registers read zero and ignore writes.
        c.set_bar(5, BarSpec::mem32(16)).unwrap_err();
        assert_eq!(c.bar_address(0), Some(0xc000_0000));
        assert_eq!(c.bar_address(1), Some(0x6000));
        assert_eq!(c.bar_address(2), Some(0x1_c001_0000));
        assert_eq!(c.bar_address(4), Some(0x10_0000_0000));
        assert_eq!(c.bar_address(3), None);
    }

    #[test]
    fn unused_bar_reads_zero() {
        let mut c = ConfigSpace::new(&header());
        c.set_bar(0, BarSpec::mem32(0x1000)).unwrap();
        assert_eq!(size_bar(&mut c, 0x14), 0);
        assert_eq!(size_bar(&mut c, 0x30), 0);
    }

    #[test]
    fn bar_overlap_declarations_refused() {
        let mut c = ConfigSpace::new(&header());
        c.set_bar(2, BarSpec::mem64(0x1000, false)).unwrap();
        assert!(c.set_bar(3, BarSpec::mem32(0x1000)).is_err());
        assert!(c.set_bar(1, BarSpec::mem64(0x1000, false)).is_err());
        assert!(c.set_bar(2, BarSpec::io(4)).is_err());
        assert!(c.set_bar(ROM_BAR, BarSpec::mem32(0x1000)).is_err());
    }

    #[test]
    fn rom_enable_bit_and_decoding() {
        let mut c = ConfigSpace::new(&header());
        c.set_bar(0, BarSpec::mem32(0x1000)).unwrap();
        c.set_bar(1, BarSpec::io(0x10)).unwrap();
        c.set_bar(ROM_BAR, BarSpec::rom(0x1000)).unwrap();
        write32(&mut c, 0x10, 0xc000_0000);
        write32(&mut c, 0x14, 0x6000);
        write32(&mut c, 0x30, 0xc010_0000);
        assert!(c.decoded_bars().is_empty());
        c.write(COMMAND, &[CMD_MEMORY_SPACE as u8]);
        let idx: Vec<usize> = c.decoded_bars().iter().map(|b| b.index).collect();
        assert_eq!(idx, vec![0]);
        write32(&mut c, 0x30, 0xc010_0001);
        assert_eq!(read32(&c, 0x30), 0xc010_0001);
        assert!(c.rom_enabled());
        let bars = c.decoded_bars();
        assert_eq!(bars.len(), 2);
        assert_eq!(
            bars[1],
            DecodedBar {
                index: ROM_BAR,
                space: AddressSpace::Memory,
                addr: 0xc010_0000,
                size: 0x1000
            }
        );
        c.write(COMMAND, &[CMD_IO_SPACE as u8]);
        let bars = c.decoded_bars();
        assert_eq!(bars.len(), 1);
        assert_eq!(bars[0].space, AddressSpace::Io);
        assert_eq!(bars[0].addr, 0x6000);
    }

    #[test]
    fn touched_bars() {
        assert_eq!(bars_touched(0x10, 4).collect::<Vec<_>>(), vec![0]);
        assert_eq!(bars_touched(0x13, 2).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(bars_touched(0x30, 1).collect::<Vec<_>>(), vec![ROM_BAR]);
        assert_eq!(bars_touched(0x04, 4).count(), 0);
    }
}
