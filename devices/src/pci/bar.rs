//! Base address registers: what a device declares, and how the register bits encode it.
//!
//! A BAR is emulated entirely through the config-space write masks (see
//! [`crate::pci::config::ConfigSpace::set_bar`]): the address bits above the BAR's size are
//! writable and everything else is read-only, so the sizing protocol (write all ones, read back
//! `!(size - 1) | flags`, write the original back) needs no special case. A 64-bit BAR spans two
//! registers: the low one holds the flags and address bits 31:4, the high one bits 63:32.

/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;
/// Index that names the expansion ROM BAR wherever a BAR index is used.
pub const ROM_BAR: usize = 6;
/// Number of BAR slots including the ROM.
pub const NUM_BAR_SLOTS: usize = 7;

/// Config offset of BAR 0.
pub const BAR0_OFFSET: u16 = 0x10;
/// Config offset of the expansion ROM BAR (type-0 header).
pub const ROM_BAR_OFFSET: u16 = 0x30;

/// I/O BAR flag (bit 0).
pub const BAR_IO: u32 = 0x1;
/// Memory BAR type field: 64-bit (bits 2:1 = 10b).
pub const BAR_MEM_64: u32 = 0x4;
/// Memory BAR prefetchable flag (bit 3).
pub const BAR_MEM_PREFETCH: u32 = 0x8;
/// Address bits of a memory BAR's low register.
pub const BAR_MEM_ADDR_MASK: u32 = !0xf;
/// Address bits of an I/O BAR.
pub const BAR_IO_ADDR_MASK: u32 = !0x3;
/// Address bits of the expansion ROM BAR.
pub const ROM_ADDR_MASK: u32 = !0x7ff;
/// Expansion ROM BAR enable bit.
pub const ROM_ENABLE: u32 = 0x1;

/// Smallest memory BAR the PCI specification allows.
pub const MIN_MEM_BAR: u64 = 16;
/// Smallest I/O BAR.
pub const MIN_IO_BAR: u64 = 4;
/// Largest I/O BAR the PCI specification allows.
pub const MAX_IO_BAR: u64 = 256;
/// Smallest expansion ROM.
pub const MIN_ROM: u64 = 2048;
/// Largest expansion ROM (the ROM BAR decodes 32 address bits; keep it sane).
pub const MAX_ROM: u64 = 16 << 20;

/// What kind of BAR a device implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// An I/O-space BAR.
    Io,
    /// A memory BAR that decodes 32 address bits.
    Memory32,
    /// A memory BAR that decodes 64 address bits; it occupies this register and the next.
    Memory64,
    /// The expansion ROM BAR (only valid for [`ROM_BAR`]).
    Rom,
}

/// A BAR as the device declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    /// Kind and width.
    pub kind: BarKind,
    /// Size in bytes, a power of two.
    pub size: u64,
    /// Whether the memory is prefetchable (reads have no side effects).
    pub prefetchable: bool,
}

impl BarSpec {
    /// A 32-bit, non-prefetchable memory BAR.
    pub fn mem32(size: u64) -> Self {
        BarSpec {
            kind: BarKind::Memory32,
            size,
            prefetchable: false,
        }
    }

    /// A 64-bit memory BAR.
    pub fn mem64(size: u64, prefetchable: bool) -> Self {
        BarSpec {
            kind: BarKind::Memory64,
            size,
            prefetchable,
        }
    }

    /// An I/O BAR.
    pub fn io(size: u64) -> Self {
        BarSpec {
            kind: BarKind::Io,
            size,
            prefetchable: false,
        }
    }

    /// An expansion ROM.
    pub fn rom(size: u64) -> Self {
        BarSpec {
            kind: BarKind::Rom,
            size,
            prefetchable: false,
        }
    }

    /// The address space this BAR decodes in.
    pub fn space(&self) -> AddressSpace {
        match self.kind {
            BarKind::Io => AddressSpace::Io,
            _ => AddressSpace::Memory,
        }
    }

    /// The read-only flag bits of the (low) BAR register.
    pub fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => BAR_IO,
            BarKind::Memory32 if self.prefetchable => BAR_MEM_PREFETCH,
            BarKind::Memory32 | BarKind::Rom => 0,
            BarKind::Memory64 if self.prefetchable => BAR_MEM_64 | BAR_MEM_PREFETCH,
            BarKind::Memory64 => BAR_MEM_64,
        }
    }

    /// Writable bits of the low register (the address bits above the size; the ROM's enable bit).
    pub fn low_writable(&self) -> u32 {
        let addr_bits = !(self.size - 1) as u32;
        match self.kind {
            BarKind::Io => addr_bits & BAR_IO_ADDR_MASK,
            BarKind::Memory32 | BarKind::Memory64 => addr_bits & BAR_MEM_ADDR_MASK,
            BarKind::Rom => (addr_bits & ROM_ADDR_MASK) | ROM_ENABLE,
        }
    }

    /// Writable bits of the high register of a 64-bit BAR.
    pub fn high_writable(&self) -> u32 {
        (!(self.size - 1) >> 32) as u32
    }
}

/// The two address spaces a BAR can decode in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    /// Port I/O.
    Io,
    /// Memory (MMIO).
    Memory,
}

/// A BAR the device currently decodes: decoding is on in the command register (and, for the ROM,
/// the ROM enable bit is set), at the address the BAR registers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedBar {
    /// BAR index, or [`ROM_BAR`].
    pub index: usize,
    /// Address space.
    pub space: AddressSpace,
    /// Guest address of the BAR's first byte.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Why a BAR declaration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BarError {
    /// The index is out of range for the kind (a 64-bit BAR needs two registers; the ROM has
    /// its own index).
    #[error("BAR index {index} cannot hold a {kind:?} BAR")]
    BadIndex {
        /// The index.
        index: usize,
        /// The kind.
        kind: BarKind,
    },
    /// The size is not a power of two or out of the kind's range.
    #[error("a {kind:?} BAR cannot be {size:#x} bytes (power of two, 16 B..2 GiB for 32-bit memory, 4..256 B for I/O, 2 KiB..16 MiB for the ROM)")]
    BadSize {
        /// The kind.
        kind: BarKind,
        /// The rejected size.
        size: u64,
    },
    /// The register (or the second register of a 64-bit BAR) is already taken.
    #[error("BAR register {index} is already in use")]
    InUse {
        /// The index.
        index: usize,
    },
}

impl BarSpec {
    /// Checks the spec against the index it is to occupy.
    pub fn validate(&self, index: usize) -> Result<(), BarError> {
        let bad_index = match self.kind {
            BarKind::Rom => index != ROM_BAR,
            BarKind::Memory64 => index + 1 >= NUM_BARS,
            _ => index >= NUM_BARS,
        };
        if bad_index {
            return Err(BarError::BadIndex {
                index,
                kind: self.kind,
            });
        }
        let (min, max) = match self.kind {
            BarKind::Io => (MIN_IO_BAR, MAX_IO_BAR),
            BarKind::Memory32 => (MIN_MEM_BAR, 1 << 31),
            BarKind::Memory64 => (MIN_MEM_BAR, 1 << 63),
            BarKind::Rom => (MIN_ROM, MAX_ROM),
        };
        if !self.size.is_power_of_two() || self.size < min || self.size > max {
            return Err(BarError::BadSize {
                kind: self.kind,
                size: self.size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_masks() {
        assert_eq!(BarSpec::io(32).flags(), 1);
        assert_eq!(BarSpec::io(32).low_writable(), 0xffff_ffe0);
        assert_eq!(BarSpec::mem32(0x1000).low_writable(), 0xffff_f000);
        assert_eq!(BarSpec::mem64(0x1000, true).flags(), 0xc);
        let big = BarSpec::mem64(64 << 30, true);
        assert_eq!(big.low_writable(), 0);
        assert_eq!(big.high_writable(), 0xffff_fff0);
        assert_eq!(BarSpec::rom(0x800).low_writable(), 0xffff_f801);
        // Sizes below 16 would expose flag bits as writable if allowed; they are refused.
        assert!(BarSpec::mem32(8).validate(0).is_err());
    }

    #[test]
    fn validation() {
        assert!(BarSpec::mem64(0x1000, false).validate(4).is_ok());
        assert!(BarSpec::mem64(0x1000, false).validate(5).is_err());
        assert!(BarSpec::io(512).validate(0).is_err());
        assert!(BarSpec::io(3).validate(0).is_err());
        assert!(BarSpec::mem32(1 << 32).validate(0).is_err());
        assert!(BarSpec::mem32(0x3000).validate(0).is_err());
        assert!(BarSpec::rom(0x800).validate(ROM_BAR).is_ok());
        assert!(BarSpec::rom(0x800).validate(0).is_err());
        assert!(BarSpec::mem32(0x1000).validate(ROM_BAR).is_err());
    }
}
