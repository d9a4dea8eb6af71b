//! What the guest sees of a function's MSI and MSI-X programming, decoded from register bytes
//! the way the PCI specification defines them (independently of the device models' own
//! decoding), so a target can compare the routes a model set with what the guest wrote.
//!
//! The bytes come from guest-style reads (config space, the MSI-X table through its BAR); none
//! of the registers read here has a read side effect.

use devices::interrupt::MsiMessage;

/// Capability ID of MSI.
pub const MSI_ID: u8 = 0x05;
/// Capability ID of MSI-X.
pub const MSIX_ID: u8 = 0x11;

/// Reads config bytes at an offset.
pub type ConfigReader<'a> = dyn FnMut(u16, &mut [u8]) + 'a;

fn read_u8(read: &mut ConfigReader, off: u16) -> u8 {
    let mut b = [0u8; 1];
    read(off, &mut b);
    b[0]
}

fn read_u16(read: &mut ConfigReader, off: u16) -> u16 {
    let mut b = [0u8; 2];
    read(off, &mut b);
    u16::from_le_bytes(b)
}

fn read_u32(read: &mut ConfigReader, off: u16) -> u32 {
    let mut b = [0u8; 4];
    read(off, &mut b);
    u32::from_le_bytes(b)
}

/// Walks the standard capability list as a guest does (status bit 4, pointer at 0x34, low two
/// bits of every pointer ignored, at most 48 entries) and returns the offset of the first
/// capability with `id`.
pub fn find_cap(read: &mut ConfigReader, id: u8) -> Option<u16> {
    if read_u16(read, 0x06) & 0x10 == 0 {
        return None;
    }
    let mut ptr = u16::from(read_u8(read, 0x34) & !3);
    for _ in 0..48 {
        if ptr < 0x40 {
            return None;
        }
        if read_u8(read, ptr) == id {
            return Some(ptr);
        }
        ptr = u16::from(read_u8(read, ptr + 1) & !3);
    }
    None
}

/// An MSI capability as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiView {
    /// Config offset.
    pub offset: u16,
    /// MSI enable.
    pub enabled: bool,
    /// Vectors the function supports (2^MMC, MMC capped at 5).
    pub max_vectors: u32,
    /// Vectors the guest enabled: 2^MME (MME capped at 5), at most `max_vectors`.
    pub enabled_vectors: u32,
    /// 64-bit address capable.
    pub is64: bool,
    /// Per-vector masking capable.
    pub per_vector_mask: bool,
    /// Message address.
    pub address: u64,
    /// Message data (16 bits).
    pub data: u16,
    /// Mask bits (zero without per-vector masking).
    pub mask: u32,
}

impl MsiView {
    /// Decodes the MSI capability at `offset`.
    pub fn read(read: &mut ConfigReader, offset: u16) -> Self {
        let ctrl = read_u16(read, offset + 2);
        let is64 = ctrl & (1 << 7) != 0;
        let per_vector_mask = ctrl & (1 << 8) != 0;
        let mmc = u32::from((ctrl >> 1) & 7).min(5);
        let mme = u32::from((ctrl >> 4) & 7).min(5);
        let mut address = u64::from(read_u32(read, offset + 4));
        let data_at = if is64 {
            address |= u64::from(read_u32(read, offset + 8)) << 32;
            offset + 0xc
        } else {
            offset + 8
        };
        let mask = if per_vector_mask {
            read_u32(read, data_at + 4)
        } else {
            0
        };
        MsiView {
            offset,
            enabled: ctrl & 1 != 0,
            max_vectors: 1 << mmc,
            enabled_vectors: (1u32 << mme).min(1 << mmc),
            is64,
            per_vector_mask,
            address,
            data: read_u16(read, data_at),
            mask,
        }
    }

    /// The message vector `v` sends: the data's low log2(enabled vectors) bits replaced by `v`.
    pub fn message(&self, v: u32) -> MsiMessage {
        let low = self.enabled_vectors - 1;
        MsiMessage {
            address: self.address,
            data: (u32::from(self.data) & !low) | (v & low),
        }
    }

    /// `Some(message)` if vector `v` may reach the guest now (MSI enabled, `v` below the enabled
    /// count, not masked), else `None`.
    pub fn expect(&self, v: u32) -> Option<MsiMessage> {
        let masked = self.per_vector_mask && v < 32 && self.mask & (1 << v) != 0;
        (self.enabled && v < self.enabled_vectors && !masked).then(|| self.message(v))
    }

    /// Messages of every vector that may reach the guest now.
    pub fn active_messages(&self) -> Vec<MsiMessage> {
        (0..self.max_vectors)
            .filter_map(|v| self.expect(v))
            .collect()
    }
}

/// An MSI-X capability as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixView {
    /// Config offset.
    pub offset: u16,
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask.
    pub function_masked: bool,
    /// Table size.
    pub vectors: u16,
    /// Table BAR indicator.
    pub table_bar: usize,
    /// Table offset into its BAR.
    pub table_offset: u64,
    /// PBA BAR indicator.
    pub pba_bar: usize,
    /// PBA offset into its BAR.
    pub pba_offset: u64,
}

/// One MSI-X table entry as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address and data.
    pub message: MsiMessage,
    /// Vector control mask bit.
    pub masked: bool,
}

impl MsixView {
    /// Decodes the MSI-X capability at `offset`.
    pub fn read(read: &mut ConfigReader, offset: u16) -> Self {
        let ctrl = read_u16(read, offset + 2);
        let table = read_u32(read, offset + 4);
        let pba = read_u32(read, offset + 8);
        MsixView {
            offset,
            enabled: ctrl & (1 << 15) != 0,
            function_masked: ctrl & (1 << 14) != 0,
            vectors: (ctrl & 0x7ff) + 1,
            table_bar: (table & 7) as usize,
            table_offset: u64::from(table & !7),
            pba_bar: (pba & 7) as usize,
            pba_offset: u64::from(pba & !7),
        }
    }

    /// Reads table entry `v` with `bar_read(bar, offset, data)` (four dword reads).
    pub fn entry(&self, v: u16, bar_read: &mut dyn FnMut(usize, u64, &mut [u8])) -> MsixEntry {
        let mut dw = [0u32; 4];
        for (i, d) in dw.iter_mut().enumerate() {
            let mut b = [0u8; 4];
            let at = self.table_offset + u64::from(v) * 16 + 4 * i as u64;
            bar_read(self.table_bar, at, &mut b);
            *d = u32::from_le_bytes(b);
        }
        MsixEntry {
            message: MsiMessage {
                address: u64::from(dw[0]) | (u64::from(dw[1]) << 32),
                data: dw[2],
            },
            masked: dw[3] & 1 != 0,
        }
    }

    /// `Some(message)` if `entry` may reach the guest now (MSI-X enabled, function and vector
    /// unmasked), else `None`.
    pub fn expect(&self, entry: &MsixEntry) -> Option<MsiMessage> {
        (self.enabled && !self.function_masked && !entry.masked).then_some(entry.message)
    }

    /// The host pages `(start, end)` of BAR `bar` the table and PBA occupy (they must trap).
    pub fn pages_in_bar(&self, bar: usize) -> Vec<(u64, u64)> {
        let table_len = u64::from(self.vectors) * 16;
        let pba_len = u64::from(self.vectors).div_ceil(64) * 8;
        [
            (self.table_bar, self.table_offset, table_len),
            (self.pba_bar, self.pba_offset, pba_len),
        ]
        .iter()
        .filter(|&&(b, _, _)| b == bar)
        .map(|&(_, off, len)| (off & !0xfff, (off + len + 0xfff) & !0xfff))
        .collect()
    }
}
