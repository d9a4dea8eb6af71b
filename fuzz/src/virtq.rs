//! The driver's side of a split virtqueue, read independently of the device code: a snapshot
//! of guest RAM (with its holes), a descriptor walk that follows the virtio 1.x rules as
//! virtio-queue applies them, and the byte ranges the rings and tables take. The virtio targets
//! use them to say what a device may have read and written.
//!
//! The walk (`walk`) is the harness's own reading of the rules, written apart from
//! `devices::virtio::Chain` so the two can disagree: a head at or past the queue size, a
//! `next` out of range, more descriptors than the table has entries, an unreadable
//! descriptor, an indirect descriptor inside an indirect table, an indirect table whose length
//! is not a multiple of 16 (or of more than 65535 entries), or a chain whose bytes add up past
//! 2^32 ends the walk early; a walk that ends on a descriptor with NEXT set is broken. Then every
//! buffer must lie in RAM and no device-readable buffer may follow a device-writable one, and
//! a chain has at most 1024 buffers (`devices::virtio::chain::MAX_SEGMENTS`).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Descriptor flag: the chain continues at `next`.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is an indirect descriptor table.
pub const F_INDIRECT: u16 = 4;
/// Most buffers a chain may have.
pub const MAX_SEGMENTS: usize = 1024;

/// Guest memory as the targets build it.
pub type Mem = GuestMemoryMmap<()>;

/// A copy of guest RAM: `regions` are `(start, len)`, disjoint and not adjacent; the bytes of
/// the holes read as zero and are not RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ram {
    regions: Vec<(u64, u64)>,
    bytes: Vec<u8>,
}

impl Ram {
    /// Copies `mem`, whose regions are `regions`.
    pub fn snapshot(mem: &Mem, regions: &[(u64, u64)]) -> Ram {
        let end = regions.iter().map(|&(s, l)| s + l).max().unwrap_or(0);
        let mut bytes = vec![0u8; end as usize];
        for &(start, len) in regions {
            let s = start as usize;
            mem.read_slice(&mut bytes[s..s + len as usize], GuestAddress(start))
                .expect("reading guest RAM");
        }
        Ram {
            regions: regions.to_vec(),
            bytes,
        }
    }

    /// Whether `[addr, addr + len)` is RAM (an empty range always is, as for the devices).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        self.regions.iter().any(|&(s, l)| addr >= s && end <= s + l)
    }

    /// The bytes `[addr, addr + len)`, if they are RAM.
    pub fn get(&self, addr: u64, len: u64) -> Option<&[u8]> {
        if !self.contains(addr, len) {
            return None;
        }
        if len == 0 {
            return Some(&[]);
        }
        Some(&self.bytes[addr as usize..(addr + len) as usize])
    }

    /// A little-endian `u16` at `addr`.
    pub fn u16(&self, addr: u64) -> Option<u16> {
        self.get(addr, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    /// A little-endian `u32` at `addr`.
    pub fn u32(&self, addr: u64) -> Option<u32> {
        self.get(addr, 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// A little-endian `u64` at `addr`.
    pub fn u64(&self, addr: u64) -> Option<u64> {
        self.get(addr, 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// The guest addresses whose bytes differ from `other` (a snapshot of the same RAM).
    pub fn changed(&self, other: &Ram) -> Vec<u64> {
        const BLOCK: usize = 4096;
        let mut out = Vec::new();
        for (k, (a, b)) in self
            .bytes
            .chunks(BLOCK)
            .zip(other.bytes.chunks(BLOCK))
            .enumerate()
        {
            if a != b {
                let base = (k * BLOCK) as u64;
                out.extend(
                    a.iter()
                        .zip(b)
                        .enumerate()
                        .filter(|(_, (x, y))| x != y)
                        .map(|(i, _)| base + i as u64),
                );
            }
        }
        out
    }
}

/// A split virtqueue as the driver placed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Entries.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

impl Layout {
    /// The descriptor table's bytes.
    pub fn desc_range(&self) -> (u64, u64) {
        span(self.desc, 16 * u64::from(self.size))
    }

    /// The available ring's bytes (flags, index, ring, `used_event`).
    pub fn avail_range(&self) -> (u64, u64) {
        span(self.avail, 6 + 2 * u64::from(self.size))
    }

    /// The used ring's bytes (flags, index, ring, `avail_event`).
    pub fn used_range(&self) -> (u64, u64) {
        span(self.used, 6 + 8 * u64::from(self.size))
    }

    /// The available index the driver published.
    pub fn avail_idx(&self, ram: &Ram) -> Option<u16> {
        ram.u16(self.avail.wrapping_add(2))
    }

    /// The head at position `pos` (any index, taken modulo the size) of the available ring.
    pub fn avail_head(&self, ram: &Ram, pos: u16) -> Option<u16> {
        let slot = u64::from(pos % self.size);
        ram.u16(self.avail.wrapping_add(4 + 2 * slot))
    }

    /// The used index.
    pub fn used_idx(&self, ram: &Ram) -> Option<u16> {
        ram.u16(self.used.wrapping_add(2))
    }

    /// The used element at position `pos` (modulo the size): `(id, len)`.
    pub fn used_elem(&self, ram: &Ram, pos: u16) -> Option<(u32, u32)> {
        let at = self.used.wrapping_add(4 + 8 * u64::from(pos % self.size));
        Some((ram.u32(at)?, ram.u32(at.wrapping_add(4))?))
    }
}

/// `[start, start + len)`, cut at the top of the address space.
pub fn span(start: u64, len: u64) -> (u64, u64) {
    (start, start.saturating_add(len))
}

/// Whether two half-open ranges share a byte.
pub fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1 && a.0 < a.1 && b.0 < b.1
}

/// Whether `at` lies in one of `ranges`.
pub fn inside(at: u64, ranges: &[(u64, u64)]) -> bool {
    ranges.iter().any(|&(s, e)| at >= s && at < e)
}

/// One descriptor: `(addr, len, flags, next)`.
pub type Desc = (u64, u32, u16, u16);

/// Descriptor `i` of the table at `base`, if readable.
pub fn desc(ram: &Ram, base: u64, i: u64) -> Option<Desc> {
    let at = base.checked_add(16 * i)?;
    let b = ram.get(at, 16)?;
    Some((
        u64::from_le_bytes(b[..8].try_into().ok()?),
        u32::from_le_bytes(b[8..12].try_into().ok()?),
        u16::from_le_bytes([b[12], b[13]]),
        u16::from_le_bytes([b[14], b[15]]),
    ))
}

/// Every descriptor of the main table and of the indirect tables it points to (at most 4096
/// entries each): the buffers any chain of the queue can have.
pub fn all_descs(ram: &Ram, l: &Layout) -> Vec<Desc> {
    let main: Vec<Desc> = (0..u64::from(l.size))
        .filter_map(|i| desc(ram, l.desc, i))
        .collect();
    let mut all = main.clone();
    for (addr, entries) in indirect_tables(&main) {
        all.extend((0..entries).filter_map(|i| desc(ram, addr, i)));
    }
    all
}

/// The distinct indirect tables `descs` point to: `(addr, entries)`, at most 4096 entries
/// each (a bound on the harness's work: entries past it of a larger table are not looked at;
/// the harness lays out no table that large, only a raw descriptor can claim one).
fn indirect_tables(descs: &[Desc]) -> Vec<(u64, u64)> {
    let mut t: Vec<(u64, u64)> = descs
        .iter()
        .filter(|d| d.2 & F_INDIRECT != 0)
        .map(|d| (d.0, u64::from(d.1 / 16).min(4096)))
        .collect();
    t.sort_unstable();
    t.dedup();
    t
}

/// The ranges of the descriptor table, both rings and the indirect tables.
pub fn ring_ranges(ram: &Ram, l: &Layout) -> Vec<(u64, u64)> {
    let main: Vec<Desc> = (0..u64::from(l.size))
        .filter_map(|i| desc(ram, l.desc, i))
        .collect();
    let mut v = vec![l.desc_range(), l.avail_range(), l.used_range()];
    v.extend(
        indirect_tables(&main)
            .into_iter()
            .map(|(addr, n)| span(addr, 16 * n)),
    );
    v
}

/// The buffers every descriptor (main table and indirect tables) points to; with `writable`,
/// only the device-writable ones.
pub fn buffer_ranges(ram: &Ram, l: &Layout, writable_only: bool) -> Vec<(u64, u64)> {
    all_descs(ram, l)
        .into_iter()
        .filter(|d| d.2 & F_INDIRECT == 0 && (!writable_only || d.2 & F_WRITE != 0))
        .map(|(addr, len, _, _)| span(addr, u64::from(len)))
        .collect()
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A well-formed chain's buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walked {
    /// The buffers, in chain order.
    pub segs: Vec<Seg>,
}

impl Walked {
    /// Total bytes of the device-readable (or device-writable) buffers.
    pub fn len(&self, writable: bool) -> u64 {
        self.segs
            .iter()
            .filter(|s| s.writable == writable)
            .map(|s| u64::from(s.len))
            .sum()
    }

    /// Whether the chain has no buffer.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// The first `len` bytes of the readable (or writable) stream, read from `ram`.
    pub fn stream(&self, ram: &Ram, writable: bool, len: u64) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for s in self.segs.iter().filter(|s| s.writable == writable) {
            let left = len - out.len() as u64;
            if left == 0 {
                break;
            }
            let n = left.min(u64::from(s.len));
            out.extend_from_slice(ram.get(s.addr, n)?);
        }
        (out.len() as u64 == len).then_some(out)
    }

    /// The byte ranges of the writable buffers.
    pub fn writable_ranges(&self) -> Vec<(u64, u64)> {
        self.segs
            .iter()
            .filter(|s| s.writable)
            .map(|s| span(s.addr, u64::from(s.len)))
            .collect()
    }
}

/// Walks the chain from `head` of a queue of `size` entries whose table is at `table`: its
/// buffers if the chain is well-formed (see the module docs), else `None`.
pub fn walk(ram: &Ram, table: u64, size: u16, head: u16) -> Option<Walked> {
    let (mut base, mut entries, mut ttl, mut idx) = (table, size, size, head);
    let mut indirect = false;
    let mut bytes = 0u32;
    let mut segs = Vec::new();
    let mut last_next = true;
    while ttl > 0 && idx < entries {
        let Some((addr, len, flags, next)) = desc(ram, base, u64::from(idx)) else {
            break;
        };
        if flags & F_INDIRECT != 0 {
            if indirect || len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                break;
            }
            (base, entries, ttl, idx) = (addr, (len / 16) as u16, (len / 16) as u16, 0);
            indirect = true;
            continue;
        }
        let Some(b) = bytes.checked_add(len) else {
            break;
        };
        bytes = b;
        segs.push(Seg {
            addr,
            len,
            writable: flags & F_WRITE != 0,
        });
        last_next = flags & F_NEXT != 0;
        if last_next {
            idx = next;
            ttl -= 1;
        } else {
            ttl = 0;
        }
    }
    if last_next || segs.is_empty() || segs.len() > MAX_SEGMENTS {
        return None;
    }
    let mut seen_writable = false;
    for s in &segs {
        if !ram.contains(s.addr, u64::from(s.len)) || (seen_writable && !s.writable) {
            return None;
        }
        seen_writable |= s.writable;
    }
    Some(Walked { segs })
}
