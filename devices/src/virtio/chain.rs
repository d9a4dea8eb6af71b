//! [`Chain`]: one descriptor chain the driver made available, checked before a device sees it.
//!
//! The walk uses virtio-queue's iterator, which stops after as many descriptors as the queue
//! (or indirect table) has entries, and at any descriptor it cannot read. Whether the walk
//! ended cleanly is decided here: the last descriptor yielded must not have
//! `VIRTQ_DESC_F_NEXT` set. So loops, chains longer than the queue, `next` indices out of
//! range, unreadable or nested indirect tables all end as [`ChainError::Broken`].
//!
//! Each buffer must lie entirely in guest RAM (checked once, here), and every device-readable
//! buffer must come before every device-writable one (virtio 1.x 2.7.4.2). The device then
//! reads the readable part and writes the writable part as two byte streams, by offset:
//! how the driver split them into descriptors (a request header over two descriptors) makes
//! no difference.

use std::ops::Deref;

use vm_memory::GuestMemory;

use super::GuestRam;

/// Most descriptors a chain may have (an indirect table may hold up to 65535 entries, far
/// more than any request needs).
pub const MAX_SEGMENTS: usize = 1024;

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (else device-readable).
    pub writable: bool,
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The walk did not end on a descriptor without NEXT: a loop, more descriptors than the
    /// table has entries, a `next` out of range, an unreadable descriptor, a bad indirect
    /// table, or a head index out of range.
    #[error("descriptor chain from head {head} is broken (a loop, longer than its table, a next index or indirect table out of range, or unreadable)")]
    Broken {
        /// The chain's head index.
        head: u16,
    },
    /// A buffer is not (entirely) guest RAM.
    #[error(
        "descriptor chain from head {head} has a buffer outside guest RAM: {addr:#x}+{len:#x}"
    )]
    OutsideRam {
        /// The chain's head index.
        head: u16,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error("descriptor chain from head {head} has a device-readable buffer after a device-writable one")]
    Order {
        /// The chain's head index.
        head: u16,
    },
    /// More than [`MAX_SEGMENTS`] buffers.
    #[error("descriptor chain from head {head} has more than {MAX_SEGMENTS} buffers")]
    TooLong {
        /// The chain's head index.
        head: u16,
    },
}

/// A checked descriptor chain, with the guest RAM it points into.
pub struct Chain<'a> {
    head: u16,
    segs: Vec<Segment>,
    readable: u64,
    writable: u64,
    ram: &'a dyn GuestRam,
}

impl std::fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("head", &self.head)
            .field("segs", &self.segs)
            .finish_non_exhaustive()
    }
}

impl<'a> Chain<'a> {
    /// Walks and checks `chain`. `ram` is the same guest memory, as the devices see it.
    pub(crate) fn parse<M>(
        chain: virtio_queue::DescriptorChain<M>,
        ram: &'a dyn GuestRam,
    ) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let mut segs = Vec::new();
        let mut last_has_next = true;
        for d in chain {
            if segs.len() == MAX_SEGMENTS {
                return Err(ChainError::TooLong { head });
            }
            last_has_next = d.has_next();
            segs.push(Segment {
                addr: d.addr().0,
                len: d.len(),
                writable: d.is_write_only(),
            });
        }
        if last_has_next {
            return Err(ChainError::Broken { head });
        }
        Self::from_segments(head, segs, ram)
    }

    /// A chain made of `segs` directly (tests, fuzzing), checked like a walked one: not
    /// empty, at most [`MAX_SEGMENTS`], each buffer in guest RAM, readable before writable.
    pub fn from_segments(
        head: u16,
        segs: Vec<Segment>,
        ram: &'a dyn GuestRam,
    ) -> Result<Self, ChainError> {
        if segs.is_empty() {
            return Err(ChainError::Broken { head });
        }
        if segs.len() > MAX_SEGMENTS {
            return Err(ChainError::TooLong { head });
        }
        let (mut readable, mut writable, mut seen_writable) = (0u64, 0u64, false);
        for s in &segs {
            if !ram.contains(s.addr, s.len.into(), s.writable) {
                return Err(ChainError::OutsideRam {
                    head,
                    addr: s.addr,
                    len: s.len,
                });
            }
            if s.writable {
                seen_writable = true;
                writable += u64::from(s.len);
            } else if seen_writable {
                return Err(ChainError::Order { head });
            } else {
                readable += u64::from(s.len);
            }
        }
        Ok(Chain {
            head,
            segs,
            readable,
            writable,
            ram,
        })
    }

    /// The head descriptor's index.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The buffers, in chain order.
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Total length of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable
    }

    /// Total length of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable
    }

    /// Calls `f(addr, range into buf)` for each piece of `[offset, offset + len)` of the
    /// readable (or writable) stream; `false` if the range runs past the stream.
    fn pieces(
        &self,
        writable: bool,
        offset: u64,
        len: usize,
        mut f: impl FnMut(u64, std::ops::Range<usize>) -> bool,
    ) -> bool {
        let total = if writable {
            self.writable
        } else {
            self.readable
        };
        match offset.checked_add(len as u64) {
            Some(end) if end <= total => {}
            _ => return false,
        }
        let mut stream_at = 0u64; // stream offset of the current segment
        let mut done = 0usize;
        for s in self.segs.iter().filter(|s| s.writable == writable) {
            if done == len {
                break;
            }
            let seg_end = stream_at + u64::from(s.len);
            let want = offset + done as u64;
            if want < seg_end {
                let in_seg = want - stream_at;
                let n = ((seg_end - want) as usize).min(len - done);
                if !f(s.addr + in_seg, done..done + n) {
                    return false;
                }
                done += n;
            }
            stream_at = seg_end;
        }
        done == len
    }

    /// The guest RAM the buffers are in.
    pub fn ram(&self) -> &'a dyn GuestRam {
        self.ram
    }

    /// The guest ranges `(address, length)` holding `[offset, offset + len)` of the readable
    /// (or writable) stream, in order; `None` if that runs past the stream.
    pub fn ranges(&self, writable: bool, offset: u64, len: u64) -> Option<Vec<(u64, u64)>> {
        let len = usize::try_from(len).ok()?;
        let mut v = Vec::new();
        self.pieces(writable, offset, len, |addr, r| {
            v.push((addr, r.len() as u64));
            true
        })
        .then_some(v)
    }

    /// The host memory behind `[offset, offset + len)` of the readable (or writable) stream,
    /// appended to `out` as `(host address, length)` pieces in stream order, for I/O the
    /// kernel does straight into guest RAM ([`GuestRam::host_ranges`]); `false` (`out`
    /// unchanged) if that runs past the stream or the RAM has no host addresses to give.
    pub fn host_ranges(
        &self,
        writable: bool,
        offset: u64,
        len: u64,
        out: &mut Vec<(usize, usize)>,
    ) -> bool {
        let Ok(len) = usize::try_from(len) else {
            return false;
        };
        let (ram, start) = (self.ram, out.len());
        let ok = self.pieces(writable, offset, len, |addr, r| {
            ram.host_ranges(addr, r.len() as u64, writable, out)
        });
        if !ok {
            out.truncate(start);
        }
        ok
    }

    /// Reads `buf.len()` bytes at `offset` into the readable buffers; `false` if that runs
    /// past them (or RAM went away).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        let ram = self.ram;
        let len = buf.len();
        self.pieces(false, offset, len, |addr, r| ram.read_at(addr, &mut buf[r]))
    }

    /// Writes `buf` at `offset` into the writable buffers; `false` if that runs past them.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> bool {
        let ram = self.ram;
        self.pieces(true, offset, buf.len(), |addr, r| {
            ram.write_at(addr, &buf[r])
        })
    }
}
