//! Serving virtio-blk requests: a 16-byte header (type, reserved, sector) at the start of the
//! readable part, data after it (`OUT`, `DISCARD`, `WRITE_ZEROES`) or in the writable part
//! (`IN`, `GET_ID`), and the status byte as the last writable byte.

use std::sync::{Arc, Mutex};

use super::image::{Disk, MAX_CHUNK};
use super::{features, ID_BYTES, MAX_DISCARD_SECTORS, SECTOR_SIZE};
use crate::pci::platform::lock;
use crate::virtio::{Chain, Completion, QueueHandler};

/// Request types.
pub(crate) const T_IN: u32 = 0;
pub(crate) const T_OUT: u32 = 1;
pub(crate) const T_FLUSH: u32 = 4;
pub(crate) const T_GET_ID: u32 = 8;
pub(crate) const T_DISCARD: u32 = 11;
pub(crate) const T_WRITE_ZEROES: u32 = 13;

/// Status codes.
pub(crate) const S_OK: u8 = 0;
pub(crate) const S_IOERR: u8 = 1;
pub(crate) const S_UNSUPP: u8 = 2;

/// Header length.
const HEADER: u64 = 16;
/// One discard / write-zeroes segment: sector (u64), num_sectors (u32), flags (u32).
const SEG: u64 = 16;
/// Write-zeroes flag: the device may deallocate.
const FLAG_UNMAP: u32 = 1;

pub(crate) struct BlockHandler {
    disk: Arc<Mutex<Disk>>,
    path: std::path::PathBuf,
    capacity: u64,
    serial: [u8; ID_BYTES],
    features: u64,
    buf: Vec<u8>,
}

/// What a request did: its status and the bytes it wrote before the status byte.
struct Outcome {
    status: u8,
    written: u64,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Outcome { status, written: 0 }
    }
}

impl BlockHandler {
    pub(crate) fn new(
        disk: Arc<Mutex<Disk>>,
        capacity: u64,
        serial: [u8; ID_BYTES],
        features: u64,
    ) -> Self {
        let path = lock(&disk).path().to_path_buf();
        BlockHandler {
            disk,
            path,
            capacity,
            serial,
            features,
            buf: vec![0; MAX_CHUNK],
        }
    }

    /// The byte range of `len` bytes at `sector`, if it lies within the capacity.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let end_sectors = len.div_ceil(SECTOR_SIZE);
        let end = sector.checked_add(end_sectors)?;
        (end <= self.capacity).then(|| sector * SECTOR_SIZE)
    }

    fn io_error(&self, what: &str, offset: u64, e: &std::io::Error) -> Outcome {
        // Never called with the disk locked: the path is kept apart.
        log::warn!(
            "virtio-blk {}: {what} at byte {offset}: {e}; the guest gets an I/O error",
            self.path.display()
        );
        Outcome::status(S_IOERR)
    }

    fn read(&mut self, chain: &Chain<'_>, sector: u64) -> Outcome {
        let len = chain.writable_len() - 1;
        // Device-readable data after the header: the driver mixed up the directions.
        if chain.readable_len() != HEADER || len % SECTOR_SIZE != 0 {
            return Outcome::status(S_IOERR);
        }
        let Some(start) = self.range(sector, len) else {
            return Outcome::status(S_IOERR);
        };
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(MAX_CHUNK);
            let buf = &mut self.buf[..n];
            let r = lock(&self.disk).read(start + done, buf);
            if let Err(e) = r {
                let mut o = self.io_error("read", start + done, &e);
                o.written = done;
                return o;
            }
            if !chain.write_at(done, buf) {
                return Outcome {
                    status: S_IOERR,
                    written: done,
                };
            }
            done += n as u64;
        }
        Outcome {
            status: S_OK,
            written: len,
        }
    }

    fn write(&mut self, chain: &Chain<'_>, sector: u64) -> Outcome {
        let len = chain.readable_len() - HEADER;
        // Device-writable data besides the status byte: the driver mixed up the directions.
        if chain.writable_len() != 1 || len % SECTOR_SIZE != 0 {
            return Outcome::status(S_IOERR);
        }
        let Some(start) = self.range(sector, len) else {
            return Outcome::status(S_IOERR);
        };
        if lock(&self.disk).readonly() {
            return Outcome::status(S_IOERR);
        }
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(MAX_CHUNK);
            let buf = &mut self.buf[..n];
            if !chain.read_at(HEADER + done, buf) {
                return Outcome::status(S_IOERR);
            }
            let r = lock(&self.disk).write(start + done, buf);
            if let Err(e) = r {
                return self.io_error("write", start + done, &e);
            }
            done += n as u64;
        }
        Outcome::status(S_OK)
    }

    fn flush(&self) -> Outcome {
        let r = lock(&self.disk).flush();
        match r {
            Ok(()) => Outcome::status(S_OK),
            Err(e) => self.io_error("flush", 0, &e),
        }
    }

    fn get_id(&self, chain: &Chain<'_>) -> Outcome {
        let n = (chain.writable_len() - 1).min(ID_BYTES as u64) as usize;
        if !chain.write_at(0, &self.serial[..n]) {
            return Outcome::status(S_IOERR);
        }
        Outcome {
            status: S_OK,
            written: n as u64,
        }
    }

    /// `DISCARD` and `WRITE_ZEROES`: one segment (`max_*_seg` is 1).
    fn discard(&mut self, chain: &Chain<'_>, zeroes: bool) -> Outcome {
        if lock(&self.disk).readonly() {
            return Outcome::status(S_IOERR);
        }
        let feature = if zeroes {
            features::WRITE_ZEROES
        } else {
            features::DISCARD
        };
        if self.features & feature == 0 {
            return Outcome::status(S_UNSUPP);
        }
        let len = chain.readable_len() - HEADER;
        if len != SEG {
            return Outcome::status(if len % SEG == 0 && len > 0 {
                S_UNSUPP // more segments than max_*_seg
            } else {
                S_IOERR
            });
        }
        let mut seg = [0u8; SEG as usize];
        if !chain.read_at(HEADER, &mut seg) {
            return Outcome::status(S_IOERR);
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        if flags & !FLAG_UNMAP != 0 || (!zeroes && flags != 0) {
            return Outcome::status(S_UNSUPP);
        }
        if num > MAX_DISCARD_SECTORS {
            return Outcome::status(S_IOERR);
        }
        let bytes = u64::from(num) * SECTOR_SIZE;
        let Some(start) = self.range(sector, bytes) else {
            return Outcome::status(S_IOERR);
        };
        if bytes == 0 {
            return Outcome::status(S_OK);
        }
        let mut disk = lock(&self.disk);
        if disk.readonly() {
            return Outcome::status(S_IOERR);
        }
        let r = if !zeroes {
            match disk.punch_hole(start, bytes) {
                // Discard is a hint: a file system that cannot deallocate keeps the data.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
                r => r,
            }
        } else if flags & FLAG_UNMAP != 0 {
            match disk.punch_hole(start, bytes) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    disk.write_zeroes(start, bytes)
                }
                r => r,
            }
        } else {
            disk.write_zeroes(start, bytes)
        };
        drop(disk);
        match r {
            Ok(()) => Outcome::status(S_OK),
            Err(e) => self.io_error(if zeroes { "write-zeroes" } else { "discard" }, start, &e),
        }
    }
}

impl QueueHandler for BlockHandler {
    fn process(&mut self, _queue: u16, chain: &mut Chain<'_>) -> Completion {
        let wlen = chain.writable_len();
        if wlen == 0 {
            // No byte to put the status in: the driver broke the protocol.
            return Completion::Fault;
        }
        let status_at = wlen - 1;
        let mut hdr = [0u8; HEADER as usize];
        let outcome = if !chain.read_at(0, &mut hdr) {
            Outcome::status(S_IOERR)
        } else {
            let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
            let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
            match kind {
                T_IN => self.read(chain, sector),
                T_OUT => self.write(chain, sector),
                T_FLUSH => self.flush(),
                T_GET_ID => self.get_id(chain),
                T_DISCARD => self.discard(chain, false),
                T_WRITE_ZEROES => self.discard(chain, true),
                _ => Outcome::status(S_UNSUPP),
            }
        };
        if !chain.write_at(status_at, &[outcome.status]) {
            return Completion::Fault;
        }
        Completion::Used((outcome.written + 1).min(u64::from(u32::MAX)) as u32)
    }
}
