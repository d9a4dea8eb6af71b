//! [`Uring`]: the io_uring a disk's requests go through, set up locked down and wrapped thinly.
//!
//! The ring is made when the disk is opened (by the thread building the VM, before any seccomp
//! filter), so the I/O thread needs only `io_uring_enter`. It is created disabled
//! (`IORING_SETUP_R_DISABLED`), given an eventfd for completions, then restricted before it
//! is enabled: the only operations it accepts are `READV`, `WRITEV` and `FSYNC`, the only SQE
//! flag allowed is `IOSQE_IO_DRAIN`, and no `io_uring_register` operation is allowed at all
//! (so no file, buffer or eventfd can be registered later). A compromised I/O thread can do
//! nothing through the ring that its seccomp filter does not already let it do with
//! `pread64`, `pwrite64` and `fdatasync`: no open, no socket, no other operation.
//!
//! The image is *not* a registered file (nor is `IOSQE_FIXED_FILE` required, which would
//! have confined the ring to it): a registered file is released only when the ring is torn
//! down, which the kernel does asynchronously after the ring's fd is closed, so the image's
//! OFD lock would outlive a VM that exits (or is killed) by a moment, and a VM started right
//! after it would find the image "in use". Since the I/O thread may already `pread64` and
//! `pwrite64` any descriptor, requiring a fixed file would confine nothing more.
//!
//! # Soundness
//!
//! A read or write hands the kernel host addresses of guest RAM; the kernel uses them until the
//! request's completion is posted, possibly from another kernel thread. [`Uring::read`] and
//! [`Uring::write`] are `unsafe`: their caller promises the memory stays mapped until the
//! completion is reaped. [`Uring::drain`] waits for every request in flight, and
//! dropping a [`Uring`] drains it first, so nothing the kernel still uses outlives the ring
//! by accident. (The guest may change its buffers while they are in flight: that only changes
//! what is read or written, as on real hardware.)

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};

use io_uring::{opcode, register::Restriction, squeue, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

/// Most iovecs one request may have (`IOV_MAX`).
pub(crate) const MAX_IOVECS: usize = 1024;

/// One host buffer of a request: a host address and a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostBuf {
    /// Host virtual address.
    pub(crate) addr: usize,
    /// Length in bytes.
    pub(crate) len: usize,
}

/// A request the kernel holds.
struct Op {
    /// The caller's tag, given back with the completion.
    tag: u64,
    kind: Kind,
    /// Still to transfer (advanced past what short transfers did).
    iov: Vec<libc::iovec>,
    /// File offset of the first byte still to transfer.
    offset: u64,
    /// Bytes transferred so far.
    done: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
}

/// An io_uring restricted to one file, with a table of the requests in flight.
pub(crate) struct Uring {
    ring: IoUring,
    event: EventFd,
    /// The image (kept open by the [`super::Disk`] that outlives the ring).
    file: RawFd,
    /// By slot (the SQE's user data); `None`: free.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Pushed to the submission queue and not yet given to the kernel.
    unsubmitted: usize,
}

// SAFETY: the raw pointers in the iovecs are host addresses of guest RAM, not references to
// anything the `Uring` owns or shares with another thread; the kernel reads them whichever
// thread submits. The ring itself is an fd and two mappings, usable from any thread.
unsafe impl Send for Uring {}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("fd", &self.ring.as_raw_fd())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// Completion of one request: its tag and the bytes transferred, or the error.
pub(crate) type Done = (u64, io::Result<u64>);

impl Uring {
    /// A ring of `entries` requests on `file`, restricted as the module docs say. Fails with
    /// the kernel's error where io_uring is missing (`ENOSYS`), forbidden (`EPERM`,
    /// `io_uring_disabled`) or lacks what is needed (restrictions need Linux 5.10). The
    /// caller keeps `file` open as long as the ring.
    pub(crate) fn new(file: &File, entries: u32) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .setup_cqsize(entries * 2)
            .build(entries)?;
        let event = crate::new_eventfd()?;
        let sub = ring.submitter();
        sub.register_eventfd(event.as_raw_fd())?;
        let mut rules = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_flags_allowed(squeue::Flags::IO_DRAIN.bits()),
        ];
        sub.register_restrictions(&mut rules)?;
        sub.register_enable_rings()?;
        let n = entries as usize;
        Ok(Uring {
            ring,
            event,
            file: file.as_raw_fd(),
            ops: (0..n).map(|_| None).collect(),
            free: (0..n).rev().collect(),
            unsubmitted: 0,
        })
    }

    /// The eventfd the kernel signals when it posts completions.
    pub(crate) fn eventfd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Clears the eventfd (before reaping).
    pub(crate) fn clear_event(&self) {
        let _ = self.event.read();
    }

    /// Requests pushed and not yet reaped.
    pub(crate) fn in_flight(&self) -> usize {
        self.ops.len() - self.free.len()
    }

    /// Whether requests wait for [`Uring::submit`].
    pub(crate) fn queued(&self) -> bool {
        self.unsubmitted > 0
    }

    /// Whether another request fits.
    pub(crate) fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    fn push_op(&mut self, op: Op, drain: bool) -> io::Result<()> {
        let Some(slot) = self.free.pop() else {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        };
        let entry = self.entry(&op, slot, drain);
        self.ops[slot] = Some(op);
        // SAFETY: the entry's iovec array is the `Vec` now stored in `self.ops[slot]`, which
        // is neither moved nor freed until that slot's completion is reaped (a `Vec`'s
        // buffer does not move with it). The buffers the iovecs name are the caller's
        // promise (`read`/`write`).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // The queue is full of unsubmitted entries: hand them over and retry.
            self.submit()?;
            // SAFETY: as above.
            let again = unsafe { self.ring.submission().push(&entry) };
            if again.is_err() {
                self.ops[slot] = None;
                self.free.push(slot);
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
        self.unsubmitted += 1;
        Ok(())
    }

    fn entry(&self, op: &Op, slot: usize, drain: bool) -> squeue::Entry {
        let file = types::Fd(self.file);
        let e = match op.kind {
            Kind::Read => opcode::Readv::new(file, op.iov.as_ptr(), op.iov.len() as u32)
                .offset(op.offset)
                .build(),
            Kind::Write => opcode::Writev::new(file, op.iov.as_ptr(), op.iov.len() as u32)
                .offset(op.offset)
                .build(),
            Kind::Flush => opcode::Fsync::new(file)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        let flags = if drain {
            squeue::Flags::IO_DRAIN
        } else {
            squeue::Flags::empty()
        };
        e.flags(flags).user_data(slot as u64)
    }

    fn rw(&mut self, tag: u64, kind: Kind, offset: u64, bufs: &[HostBuf]) -> io::Result<()> {
        if bufs.is_empty() || bufs.len() > MAX_IOVECS {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let iov = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.addr as *mut libc::c_void,
                iov_len: b.len,
            })
            .collect();
        let op = Op {
            tag,
            kind,
            iov,
            offset,
            done: 0,
        };
        self.push_op(op, false)
    }

    /// Queues a read of the file at `offset` into `bufs` (at most [`MAX_IOVECS`]); its
    /// completion carries `tag`. Given to the kernel at the next [`Uring::submit`].
    ///
    /// # Safety
    ///
    /// Every buffer must be memory of this process that stays mapped and writable until this
    /// request's completion is returned by [`Uring::reap`] or [`Uring::drain`] (guest RAM
    /// held by the device's I/O thread, whose handler drains the ring before that RAM can go).
    pub(crate) unsafe fn read(
        &mut self,
        tag: u64,
        offset: u64,
        bufs: &[HostBuf],
    ) -> io::Result<()> {
        self.rw(tag, Kind::Read, offset, bufs)
    }

    /// Reads the file at `offset` into `bufs` (at most [`MAX_IOVECS`]) now, if the page
    /// cache holds all of it (`preadv2` with `RWF_NOWAIT`): whether it did. Anything else (data
    /// not cached, a short read, an error) is left to a [`Uring::read`] of the whole request.
    ///
    /// # Safety
    ///
    /// Every buffer must be memory of this process, mapped and writable for the call.
    pub(crate) unsafe fn read_cached(&self, offset: u64, bufs: &[HostBuf]) -> bool {
        let (Ok(off), true) = (libc::off_t::try_from(offset), bufs.len() <= MAX_IOVECS) else {
            return false;
        };
        let iov: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.addr as *mut libc::c_void,
                iov_len: b.len,
            })
            .collect();
        let want: usize = bufs.iter().map(|b| b.len).sum();
        // SAFETY: `iov` is a live array of `iov.len()` iovecs; the memory they name is mapped
        // and writable for the call (the caller's promise); the kernel writes nothing else.
        let n = unsafe {
            libc::preadv2(
                self.file,
                iov.as_ptr(),
                iov.len() as i32,
                off,
                libc::RWF_NOWAIT,
            )
        };
        usize::try_from(n) == Ok(want)
    }

    /// Queues a write of `bufs` (at most [`MAX_IOVECS`]) to the file at `offset`.
    ///
    /// # Safety
    ///
    /// As [`Uring::read`], the buffers readable instead of writable.
    pub(crate) unsafe fn write(
        &mut self,
        tag: u64,
        offset: u64,
        bufs: &[HostBuf],
    ) -> io::Result<()> {
        self.rw(tag, Kind::Write, offset, bufs)
    }

    /// Queues an `fdatasync` that starts only once every request queued before it completed
    /// (`IOSQE_IO_DRAIN`), and before which nothing queued after it starts.
    pub(crate) fn flush(&mut self, tag: u64) -> io::Result<()> {
        let op = Op {
            tag,
            kind: Kind::Flush,
            iov: Vec::new(),
            offset: 0,
            done: 0,
        };
        self.push_op(op, true)
    }

    /// Hands the queued requests to the kernel (`io_uring_enter`).
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        self.enter(0)
    }

    fn enter(&mut self, wait: usize) -> io::Result<()> {
        loop {
            match self.ring.submitter().submit_and_wait(wait) {
                Ok(n) => {
                    self.unsubmitted = self.unsubmitted.saturating_sub(n);
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Completions must be reaped first (they are, by the caller's next reap).
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the completions the kernel posted into `out`, without waiting. A short transfer
    /// is queued again for the rest (and given to the kernel at once); a transfer that makes
    /// no progress ends with `EIO`.
    pub(crate) fn reap(&mut self, out: &mut Vec<Done>) {
        let cqes: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let mut requeued = false;
        for (slot, res) in cqes {
            let slot = slot as usize;
            let Some(mut op) = self.ops.get_mut(slot).and_then(Option::take) else {
                log::error!("io_uring completion for unknown slot {slot}");
                continue;
            };
            let left: u64 = op.iov.iter().map(|v| v.iov_len as u64).sum();
            let result = match u64::try_from(res) {
                Err(_) => Err(io::Error::from_raw_os_error(-res)),
                Ok(n) if op.kind == Kind::Flush || n == left => Ok(op.done + n),
                Ok(0) => Err(io::Error::from_raw_os_error(libc::EIO)),
                Ok(n) => {
                    advance(&mut op.iov, n);
                    op.offset += n;
                    op.done += n;
                    let entry = self.entry(&op, slot, false);
                    self.ops[slot] = Some(op);
                    // SAFETY: the iovec array lives in `self.ops[slot]` until that slot's
                    // completion is reaped; the buffers are the original request's, still
                    // covered by its caller's promise.
                    if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                        self.unsubmitted += 1;
                        requeued = true;
                        continue;
                    }
                    op = self.ops[slot].take().expect("just stored");
                    Err(io::Error::from_raw_os_error(libc::EBUSY))
                }
            };
            self.free.push(slot);
            out.push((op.tag, result));
        }
        if requeued {
            if let Err(e) = self.submit() {
                log::error!("io_uring submit: {e}");
            }
        }
    }

    /// Waits for every request in flight and returns their completions.
    pub(crate) fn drain(&mut self) -> Vec<Done> {
        let mut out = Vec::new();
        loop {
            self.reap(&mut out);
            if self.in_flight() == 0 {
                return out;
            }
            if let Err(e) = self.enter(1) {
                // Nothing else to do: the memory must stay mapped, so wait and try again.
                log::error!("io_uring_enter while draining: {e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        if self.in_flight() > 0 {
            self.drain();
        }
    }
}

/// Drops the first `n` bytes from `iov`.
fn advance(iov: &mut Vec<libc::iovec>, mut n: u64) {
    let mut skip = 0;
    for v in iov.iter_mut() {
        let len = v.iov_len as u64;
        if n >= len {
            n -= len;
            skip += 1;
            continue;
        }
        v.iov_base = (v.iov_base as usize + n as usize) as *mut libc::c_void;
        v.iov_len -= n as usize;
        break;
    }
    iov.drain(..skip);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_refuses_other_operations_and_registrations() {
        let path = std::env::temp_dir().join(format!("vfiovm-uring-{}.raw", std::process::id()));
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut r = Uring::new(&file, 8).unwrap();
        // io_uring_register: nothing is allowed once the ring is enabled.
        let other = crate::new_eventfd().unwrap();
        let e = r.ring.submitter().register_eventfd(other.as_raw_fd());
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EACCES));
        let e = r.ring.submitter().register_files(&[file.as_raw_fd()]);
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EACCES));
        // An operation not on the list (a no-op here; openat or connect alike) fails.
        let nop = opcode::Nop::new().build().user_data(99);
        // SAFETY: a no-op names no memory.
        unsafe { r.ring.submission().push(&nop) }.unwrap();
        r.ring.submitter().submit_and_wait(1).unwrap();
        let c = r.ring.completion().next().unwrap();
        assert_eq!((c.user_data(), c.result()), (99, -libc::EACCES));
        // A read on the list goes through.
        let mut buf = vec![0u8; 4096];
        let b = [HostBuf {
            addr: buf.as_mut_ptr() as usize,
            len: buf.len(),
        }];
        // SAFETY: `buf` lives until the drain below returns.
        unsafe { r.read(5, 4096, &b) }.unwrap();
        r.submit().unwrap();
        let done = r.drain();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].0, 5);
        assert_eq!(done[0].1.as_ref().unwrap(), &4096);
        assert_eq!(buf, vec![7u8; 4096]);
    }

    #[test]
    fn advance_skips_whole_and_part_buffers() {
        let mk = |a: usize, l: usize| libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: l,
        };
        let mut v = vec![mk(0x1000, 512), mk(0x4000, 1024)];
        advance(&mut v, 512 + 100);
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].iov_base as usize, v[0].iov_len), (0x4000 + 100, 924));
    }
}
