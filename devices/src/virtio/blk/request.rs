//! Serving virtio-blk requests: a 16-byte header (type, reserved, sector) at the start of the
//! readable part, data after it (`OUT`, `DISCARD`, `WRITE_ZEROES`) or in the writable part
//! (`IN`, `GET_ID`), and the status byte as the last writable byte.
//!
//! Two ways, one set of checks ([`BlockHandler::plan`]):
//! - with an io_uring ([`Uring`]) the handler serves the queue itself
//!   ([`QueueHandler::ready`]): it pops every available chain (up to the ring's size in
//!   flight), queues reads and writes straight between the image and guest RAM, a `FLUSH` as an
//!   `fdatasync` that waits for every request queued before it (`IOSQE_IO_DRAIN`), submits
//!   them in one `io_uring_enter`, and completes each chain when its completion arrives, in
//!   whatever order. A read the page cache holds whole (without `direct`) is done at once
//!   (`preadv2` with `RWF_NOWAIT`, straight into guest RAM): that costs one system call, not
//!   the ring's submit, eventfd and wake-up. What cannot go zero-copy (an `O_DIRECT` transfer not aligned to 4 KiB,
//!   more than 1024 host buffers), `DISCARD` and `WRITE_ZEROES` wait until nothing is in
//!   flight and then run synchronously;
//! - without one (io_uring unavailable), each chain is served synchronously in
//!   [`QueueHandler::process`], one at a time.

use std::collections::BTreeMap;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use super::image::{Disk, DIRECT_ALIGN, MAX_CHUNK};
use super::uring::{Done, HostBuf, Uring, MAX_IOVECS};
use super::{features, ID_BYTES, MAX_DISCARD_SECTORS, SECTOR_SIZE};
use crate::pci::platform::lock;
use crate::virtio::queues::{Queues, Ready, RingFault};
use crate::virtio::{Chain, Completion, QueueHandler};

/// The request queue.
const REQUEST_QUEUE: u16 = 0;
/// Most submits per wake-up ([`BlockHandler::pump`]).
const ROUNDS: usize = 4;

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
    direct: bool,
    buf: Vec<u8>,
    /// The disk's ring while this handler runs (`None`: synchronous); given back to `home`,
    /// drained, when the handler is dropped.
    ring: Option<Uring>,
    home: Arc<Mutex<Option<Uring>>>,
    /// Requests in the ring, by tag. (Not a `HashMap`: its random keys would cost a
    /// `getrandom` on the vCPU thread that activates the device, which its filter refuses.)
    pending: BTreeMap<u64, Pending>,
    next_tag: u64,
    /// Completions taken from the ring so far (mod 2^64).
    reaped: u64,
    /// Reads the page cache holds done at once, completions reaped right after a submit.
    /// Tests turn it off to see requests in flight.
    eager: bool,
}

/// A request whose I/O is in the ring: what completing its chain needs.
struct Pending {
    head: u16,
    /// Guest address of the status byte.
    status_at: u64,
    what: &'static str,
    /// Byte offset in the image (for the log).
    start: u64,
    /// Bytes the device writes into the chain on success (`IN`).
    written: u64,
}

/// What a request asks for, once checked.
enum Plan {
    /// Answered already (an error status, `GET_ID`, a zero-length transfer).
    Done(Outcome),
    /// Read `len` bytes at byte `start` into the writable part.
    Read {
        start: u64,
        len: u64,
    },
    /// Write `len` bytes of the readable part after the header at byte `start`.
    Write {
        start: u64,
        len: u64,
    },
    Flush,
    /// `DISCARD` or `WRITE_ZEROES` (synchronous: `fallocate`).
    Discard {
        zeroes: bool,
    },
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
    /// A handler on `disk`, using the ring parked in `home` if there is one.
    pub(crate) fn new(
        disk: Arc<Mutex<Disk>>,
        home: Arc<Mutex<Option<Uring>>>,
        capacity: u64,
        serial: [u8; ID_BYTES],
        features: u64,
    ) -> Self {
        let (path, direct) = {
            let d = lock(&disk);
            (d.path().to_path_buf(), d.direct())
        };
        let ring = lock(&home).take();
        BlockHandler {
            disk,
            path,
            capacity,
            serial,
            features,
            direct,
            buf: vec![0; MAX_CHUNK],
            ring,
            home,
            pending: BTreeMap::new(),
            next_tag: 0,
            reaped: 0,
            eager: true,
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

    fn plan_read(&self, chain: &Chain<'_>, sector: u64) -> Plan {
        let len = chain.writable_len() - 1;
        // Device-readable data after the header: the driver mixed up the directions.
        if chain.readable_len() != HEADER || len % SECTOR_SIZE != 0 {
            return Plan::Done(Outcome::status(S_IOERR));
        }
        match self.range(sector, len) {
            Some(_) if len == 0 => Plan::Done(Outcome::status(S_OK)),
            Some(start) => Plan::Read { start, len },
            None => Plan::Done(Outcome::status(S_IOERR)),
        }
    }

    fn plan_write(&self, chain: &Chain<'_>, sector: u64) -> Plan {
        let len = chain.readable_len() - HEADER;
        // Device-writable data besides the status byte: the driver mixed up the directions.
        if chain.writable_len() != 1 || len % SECTOR_SIZE != 0 {
            return Plan::Done(Outcome::status(S_IOERR));
        }
        let Some(start) = self.range(sector, len) else {
            return Plan::Done(Outcome::status(S_IOERR));
        };
        if lock(&self.disk).readonly() {
            return Plan::Done(Outcome::status(S_IOERR));
        }
        if len == 0 {
            return Plan::Done(Outcome::status(S_OK));
        }
        Plan::Write { start, len }
    }

    /// Reads the header and checks the request: what it asks for, or its answer.
    fn plan(&self, chain: &Chain<'_>) -> Plan {
        let mut hdr = [0u8; HEADER as usize];
        if !chain.read_at(0, &mut hdr) {
            return Plan::Done(Outcome::status(S_IOERR));
        }
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        match kind {
            T_IN => self.plan_read(chain, sector),
            T_OUT => self.plan_write(chain, sector),
            T_FLUSH => Plan::Flush,
            T_GET_ID => Plan::Done(self.get_id(chain)),
            T_DISCARD => Plan::Discard { zeroes: false },
            T_WRITE_ZEROES => Plan::Discard { zeroes: true },
            _ => Plan::Done(Outcome::status(S_UNSUPP)),
        }
    }

    /// Carries out `plan` synchronously.
    fn run(&mut self, chain: &Chain<'_>, plan: Plan) -> Outcome {
        match plan {
            Plan::Done(o) => o,
            Plan::Read { start, len } => self.read(chain, start, len),
            Plan::Write { start, len } => self.write(chain, start, len),
            Plan::Flush => self.flush(),
            Plan::Discard { zeroes } => self.discard(chain, zeroes),
        }
    }

    fn read(&mut self, chain: &Chain<'_>, start: u64, len: u64) -> Outcome {
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

    fn write(&mut self, chain: &Chain<'_>, start: u64, len: u64) -> Outcome {
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

impl BlockHandler {
    /// The host buffers behind `[offset, offset + len)` of the chain's readable (or
    /// writable) part, if the kernel can use them directly: in guest RAM, at most
    /// [`MAX_IOVECS`], and with `O_DIRECT` each one and `start` aligned to [`DIRECT_ALIGN`].
    fn host_bufs(
        &self,
        chain: &Chain<'_>,
        writable: bool,
        offset: u64,
        len: u64,
        start: u64,
    ) -> Option<Vec<HostBuf>> {
        let mut out = Vec::new();
        if !chain.host_ranges(writable, offset, len, &mut out) || out.len() > MAX_IOVECS {
            return None;
        }
        let a = DIRECT_ALIGN as usize;
        let misaligned = |&(p, n): &(usize, usize)| p % a != 0 || n % a != 0;
        if self.direct && (start % DIRECT_ALIGN != 0 || out.iter().any(misaligned)) {
            return None;
        }
        Some(
            out.into_iter()
                .map(|(addr, len)| HostBuf { addr, len })
                .collect(),
        )
    }

    /// Writes the status byte of the chain `head` at `status_at` and puts it on the used ring.
    fn finish(
        queues: &mut Queues<'_, '_>,
        head: u16,
        status_at: u64,
        o: Outcome,
    ) -> Result<(), RingFault> {
        if !queues.ram().write_at(status_at, &[o.status]) {
            return Err(queues.refuse(REQUEST_QUEUE, head));
        }
        let len = (o.written + 1).min(u64::from(u32::MAX)) as u32;
        queues.add_used(REQUEST_QUEUE, head, len)
    }

    /// Completes the chains of `done`.
    fn complete(&mut self, done: Vec<Done>, queues: &mut Queues<'_, '_>) -> Result<(), RingFault> {
        for (tag, result) in done {
            self.reaped = self.reaped.wrapping_add(1);
            let Some(p) = self.pending.remove(&tag) else {
                continue;
            };
            let o = match result {
                Ok(_) => Outcome {
                    status: S_OK,
                    written: p.written,
                },
                Err(e) => self.io_error(p.what, p.start, &e),
            };
            Self::finish(queues, p.head, p.status_at, o)?;
        }
        Ok(())
    }

    /// Reads into `bufs` now if the page cache holds the data ([`Uring::read_cached`]).
    fn cached(ring: &Uring, start: u64, bufs: &[HostBuf]) -> bool {
        // SAFETY: the buffers are guest RAM (checked by `host_bufs`), mapped while the
        // device's I/O thread runs its handler; the read is over when the call returns.
        unsafe { ring.read_cached(start, bufs) }
    }

    /// Queues one chain's I/O in the ring, or serves it at once.
    fn start(
        &mut self,
        ring: &mut Uring,
        chain: &Chain<'_>,
        queues: &mut Queues<'_, '_>,
    ) -> Result<(), RingFault> {
        let head = chain.head();
        let wlen = chain.writable_len();
        // No byte to put the status in: the driver broke the protocol.
        let Some(status_at) = wlen
            .checked_sub(1)
            .and_then(|at| chain.ranges(true, at, 1))
            .and_then(|r| r.first().map(|&(addr, _)| addr))
        else {
            return Err(queues.refuse(REQUEST_QUEUE, head));
        };
        let plan = self.plan(chain);
        let tag = self.next_tag;
        let pending = |what, start, written| Pending {
            head,
            status_at,
            what,
            start,
            written,
        };
        let queued = match plan {
            Plan::Done(o) => return Self::finish(queues, head, status_at, o),
            Plan::Read { start, len } => match self.host_bufs(chain, true, 0, len, start) {
                Some(bufs) if self.eager && !self.direct && Self::cached(ring, start, &bufs) => {
                    let o = Outcome {
                        status: S_OK,
                        written: len,
                    };
                    return Self::finish(queues, head, status_at, o);
                }
                // SAFETY: the buffers are guest RAM (checked by `host_bufs`) that the device's
                // I/O thread keeps mapped until its handler, this one, is dropped; dropping it
                // drains the ring first (`Drop for BlockHandler`, and `Drop for Uring`).
                Some(bufs) => unsafe { ring.read(tag, start, &bufs) }
                    .ok()
                    .map(|()| pending("read", start, len)),
                None => None,
            },
            Plan::Write { start, len } => match self.host_bufs(chain, false, HEADER, len, start) {
                // SAFETY: as for the read above.
                Some(bufs) => unsafe { ring.write(tag, start, &bufs) }
                    .ok()
                    .map(|()| pending("write", start, 0)),
                None => None,
            },
            Plan::Flush => ring.flush(tag).ok().map(|()| pending("flush", 0, 0)),
            Plan::Discard { .. } => None,
        };
        if let Some(p) = queued {
            self.pending.insert(tag, p);
            self.next_tag = self.next_tag.wrapping_add(1);
            return Ok(());
        }
        // Synchronously, once nothing is in flight: a read-modify-write through the bounce
        // buffer or a zero range must not race a write in the ring to the same block.
        let done = ring.drain();
        self.complete(done, queues)?;
        let o = self.run(chain, plan);
        Self::finish(queues, head, status_at, o)
    }

    /// Completes what the ring finished, then pops and queues chains until the queue is empty
    /// or the ring full.
    fn round(&mut self, ring: &mut Uring, queues: &mut Queues<'_, '_>) -> Result<(), RingFault> {
        loop {
            let mut done = Vec::new();
            ring.reap(&mut done);
            self.complete(done, queues)?;
            if !ring.has_room() {
                // More once completions make room (the ring's eventfd).
                return Ok(());
            }
            match queues.pop(REQUEST_QUEUE)? {
                Some(chain) => self.start(ring, &chain, queues)?,
                None => {
                    if !queues.enable_notification(REQUEST_QUEUE)? {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Rounds of [`BlockHandler::round`] and a submit. Reads the page cache can serve complete
    /// inside `io_uring_enter`: the round after a submit completes them at once rather than
    /// after another wake-up. At most [`ROUNDS`], so a driver that keeps the queue full
    /// cannot hold the thread here (the eventfd brings it back).
    fn pump(&mut self, ring: &mut Uring, queues: &mut Queues<'_, '_>) -> Result<(), RingFault> {
        let reaped = self.reaped;
        let rounds = if self.eager { ROUNDS } else { 1 };
        for _ in 0..rounds {
            let r = self.round(ring, queues);
            if !ring.queued() {
                r?;
                break;
            }
            if let Err(e) = ring.submit() {
                log::error!(
                    "virtio-blk {}: io_uring_enter: {e}; retrying at the next event",
                    self.path.display()
                );
                return r;
            }
            r?;
        }
        // Completions reaped here need no wake-up: clearing the eventfd drops the one their
        // posting raised (epoll re-checks an edge-triggered fd before reporting it), and
        // anything posted after the clear raises it again.
        if !self.eager {
            return Ok(());
        }
        let mut done = Vec::new();
        ring.reap(&mut done);
        if self.reaped != reaped || !done.is_empty() {
            ring.clear_event();
            ring.reap(&mut done);
        }
        self.complete(done, queues)
    }
}

#[cfg(test)]
impl BlockHandler {
    /// Turns off the eager completions (tests that look at requests in flight).
    pub(crate) fn lazy(mut self) -> Self {
        self.eager = false;
        self
    }
}

impl Drop for BlockHandler {
    fn drop(&mut self) {
        if let Some(mut ring) = self.ring.take() {
            // The requests in flight write into or read from guest RAM: wait for them before
            // the RAM may go. Their chains are not completed (the device is being reset or
            // stopped).
            let n = ring.in_flight();
            if n > 0 {
                log::debug!(
                    "virtio-blk {}: waiting for {n} requests in flight",
                    self.path.display()
                );
                ring.drain();
            }
            *lock(&self.home) = Some(ring);
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
        let plan = self.plan(chain);
        let outcome = self.run(chain, plan);
        if !chain.write_at(status_at, &[outcome.status]) {
            return Completion::Fault;
        }
        Completion::Used((outcome.written + 1).min(u64::from(u32::MAX)) as u32)
    }

    fn serves_itself(&self, queue: u16) -> bool {
        queue == REQUEST_QUEUE && self.ring.is_some()
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        self.ring.iter().map(Uring::eventfd).collect()
    }

    fn ready(&mut self, why: Ready, queues: &mut Queues<'_, '_>) {
        let Some(mut ring) = self.ring.take() else {
            return;
        };
        if why == Ready::Fd(0) {
            ring.clear_event();
        }
        // A ring error has been recorded in `queues`: the device goes to NEEDS_RESET.
        let _ = self.pump(&mut ring, queues);
        self.ring = Some(ring);
    }

    fn in_flight(&self) -> usize {
        self.ring.as_ref().map_or(0, Uring::in_flight)
    }
}
