//! [`Queues`]: a started device's rings, for a handler that serves a queue on its own terms
//! instead of chain by chain through [`QueueHandler::process`].
//!
//! Most devices complete each chain as the driver makes it available (rng, a network
//! transmit queue). A network receive queue is another kind: its buffers wait, available,
//! until the backend has a frame, and one frame may fill several of them
//! (`VIRTIO_NET_F_MRG_RXBUF`). virtio-blk on io_uring is a third: it pops many chains,
//! completes them later and in any order as the kernel finishes their I/O, writing their
//! status bytes through [`Queues::ram`]. Such a handler names the queue in
//! [`QueueHandler::serves_itself`], lists the backend's file descriptors in
//! [`QueueHandler::extra_fds`], and gets [`QueueHandler::ready`] with a [`Queues`] when either
//! the queue is notified or a descriptor becomes readable. Through it the handler pops chains
//! (checked as usual), puts back those it cannot fill yet, completes them, and re-arms the
//! driver's notifications. The I/O thread raises the interrupts afterwards (with
//! `VIRTIO_F_RING_EVENT_IDX` suppression) and puts the device in NEEDS_RESET if a ring was
//! malformed.
//!
//! [`QueueHandler::process`]: super::QueueHandler::process
//! [`QueueHandler::serves_itself`]: super::QueueHandler::serves_itself
//! [`QueueHandler::extra_fds`]: super::QueueHandler::extra_fds
//! [`QueueHandler::ready`]: super::QueueHandler::ready

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use super::chain::Chain;
use super::worker::ServeError;
use super::GuestRam;

/// Why [`QueueHandler::ready`](super::QueueHandler::ready) was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// The driver notified this queue (one the handler serves itself).
    Queue(u16),
    /// The handler's extra descriptor with this index (into
    /// [`QueueHandler::extra_fds`](super::QueueHandler::extra_fds)) became readable.
    Fd(usize),
    /// The handler's output descriptor with this index (into
    /// [`QueueHandler::writable_fds`](super::QueueHandler::writable_fds)) has room again.
    Writable(usize),
}

/// A ring operation failed: the ring or a chain is malformed. The handler stops touching the
/// rings and returns; the device then goes to NEEDS_RESET.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the queue's ring is malformed; the device needs a reset")]
pub struct RingFault;

/// The ring operations the worker provides (over its guest memory type).
pub(crate) trait RingOps<'r> {
    fn pop(&mut self, q: u16) -> Result<Option<Chain<'r>>, ServeError>;
    fn put_back(&mut self, q: u16, n: u16);
    fn add_used(&mut self, q: u16, head: u16, len: u32) -> Result<(), ServeError>;
    fn enable_notification(&mut self, q: u16) -> Result<bool, ServeError>;
    fn avail_idx(&mut self, q: u16) -> Result<u16, ServeError>;
    fn ram(&self) -> &'r dyn GuestRam;
}

/// A started device's rings, lent to its handler during
/// [`QueueHandler::ready`](super::QueueHandler::ready).
pub struct Queues<'a, 'r> {
    ops: &'a mut dyn RingOps<'r>,
    completed: Vec<bool>,
    /// Chains each queue may still give out in this call ([`POP_BUDGET`]).
    budget: Vec<usize>,
    error: Option<ServeError>,
}

/// Chains one queue gives out in one [`QueueHandler::ready`](super::QueueHandler::ready)
/// call. Past it, [`Queues::pop`] finds the ring empty and [`Queues::enable_notification`]
/// reports nothing new, and the I/O thread comes back for the rest through its event loop: a
/// driver whose used ring lies over its own available index (every completion then looks like
/// a new request), or one that keeps adding from another vCPU, cannot keep the thread from a
/// stop or a reset.
pub const POP_BUDGET: usize = 1024;

impl std::fmt::Debug for Queues<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("completed", &self.completed)
            .finish_non_exhaustive()
    }
}

impl<'a, 'r> Queues<'a, 'r> {
    pub(crate) fn new(ops: &'a mut dyn RingOps<'r>, queues: usize) -> Self {
        Queues {
            ops,
            completed: vec![false; queues],
            budget: vec![POP_BUDGET; queues],
            error: None,
        }
    }

    fn check<T>(&mut self, r: Result<T, ServeError>) -> Result<T, RingFault> {
        if self.error.is_some() {
            return Err(RingFault);
        }
        r.map_err(|e| {
            self.error = Some(e);
            RingFault
        })
    }

    /// The next available chain of queue `q`, walked and checked against guest RAM;
    /// `Ok(None)` when the driver has made none available (or the queue is not enabled).
    pub fn pop(&mut self, q: u16) -> Result<Option<Chain<'r>>, RingFault> {
        if self.error.is_some() {
            return Err(RingFault);
        }
        match self.budget.get_mut(usize::from(q)) {
            Some(0) => return Ok(None),
            Some(b) => *b -= 1,
            None => {}
        }
        let r = self.ops.pop(q);
        self.check(r)
    }

    /// Puts back the last `n` chains popped from `q` and not completed (in the reverse order
    /// they were popped): the driver sees them as still available.
    pub fn put_back(&mut self, q: u16, n: u16) {
        self.ops.put_back(q, n);
    }

    /// Completes the chain with head `head` on queue `q`, `len` bytes written into it.
    pub fn add_used(&mut self, q: u16, head: u16, len: u32) -> Result<(), RingFault> {
        if self.error.is_some() {
            return Err(RingFault);
        }
        let r = self.ops.add_used(q, head, len);
        self.check(r)?;
        if let Some(c) = self.completed.get_mut(usize::from(q)) {
            *c = true;
        }
        Ok(())
    }

    /// Asks the driver to notify queue `q` when it makes more chains available (after the
    /// device found it empty). `true`: some arrived meanwhile, pop again.
    pub fn enable_notification(&mut self, q: u16) -> Result<bool, RingFault> {
        if self.error.is_some() {
            return Err(RingFault);
        }
        if self.budget.get(usize::from(q)) == Some(&0) {
            // Notifications stay off; the I/O thread comes back (see [`POP_BUDGET`]).
            return Ok(false);
        }
        let r = self.ops.enable_notification(q);
        self.check(r)
    }

    /// The driver's available index of queue `q` (how many chains it has published, mod
    /// 2^16): a handler that put chains back compares it before and after re-arming
    /// notifications to tell new chains from the ones it already found too few.
    pub fn avail_idx(&mut self, q: u16) -> Result<u16, RingFault> {
        if self.error.is_some() {
            return Err(RingFault);
        }
        let r = self.ops.avail_idx(q);
        self.check(r)
    }

    /// The guest RAM behind the rings: for a handler that completes a chain after the
    /// [`Chain`] itself is gone (writing a status byte it located when it popped the chain).
    pub fn ram(&self) -> &'r dyn GuestRam {
        self.ops.ram()
    }

    /// Refuses the chain with head `head` of queue `q` as the device's rules cannot report
    /// in the chain itself (what [`Completion::Fault`](super::Completion::Fault) does for
    /// [`QueueHandler::process`](super::QueueHandler::process)): the device goes to
    /// NEEDS_RESET once the handler returns.
    pub fn refuse(&mut self, q: u16, head: u16) -> RingFault {
        let _ = q;
        if self.error.is_none() {
            self.error = Some(ServeError::Refused(head));
        }
        RingFault
    }

    /// The queues with completions, and the first ring error (worker side).
    /// Per queue: whether a chain was completed, and whether its budget ran out; the error.
    pub(crate) fn finish(self) -> (Vec<bool>, Vec<bool>, Option<ServeError>) {
        let spent = self.budget.iter().map(|&b| b == 0).collect();
        (self.completed, spent, self.error)
    }
}

/// [`RingOps`] over the worker's memory and queues.
pub(crate) struct Rings<'r, M> {
    pub(crate) mem: &'r M,
    pub(crate) queues: &'r mut [Option<Queue>],
}

impl<'r, M: GuestMemory + Send + Sync> Rings<'r, M> {
    fn queue(&mut self, q: u16) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(q)).and_then(Option::as_mut)
    }
}

impl<'r, M: GuestMemory + Send + Sync> RingOps<'r> for Rings<'r, M> {
    fn pop(&mut self, q: u16) -> Result<Option<Chain<'r>>, ServeError> {
        let mem = self.mem;
        let Some(queue) = self.queue(q) else {
            return Ok(None);
        };
        let avail = queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(ServeError::Ring)?;
        let ahead = (avail - Wrapping(queue.next_avail())).0;
        if ahead > queue.size() {
            return Err(ServeError::AvailIdx(ahead, queue.size()));
        }
        if ahead == 0 {
            return Ok(None);
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return Err(ServeError::Ring(virtio_queue::Error::InvalidAvailRingIndex));
        };
        let ram: &'r dyn GuestRam = mem;
        Ok(Some(Chain::parse(chain, ram)?))
    }

    fn put_back(&mut self, q: u16, n: u16) {
        if let Some(queue) = self.queue(q) {
            queue.set_next_avail(queue.next_avail().wrapping_sub(n));
        }
    }

    fn add_used(&mut self, q: u16, head: u16, len: u32) -> Result<(), ServeError> {
        let mem = self.mem;
        match self.queue(q) {
            Some(queue) => queue.add_used(mem, head, len).map_err(ServeError::Ring),
            None => Ok(()),
        }
    }

    fn enable_notification(&mut self, q: u16) -> Result<bool, ServeError> {
        let mem = self.mem;
        match self.queue(q) {
            Some(queue) => queue.enable_notification(mem).map_err(ServeError::Ring),
            None => Ok(false),
        }
    }

    fn avail_idx(&mut self, q: u16) -> Result<u16, ServeError> {
        let mem = self.mem;
        match self.queue(q) {
            Some(queue) => queue
                .avail_idx(mem, Ordering::Acquire)
                .map(|w| w.0)
                .map_err(ServeError::Ring),
            None => Ok(0),
        }
    }

    fn ram(&self) -> &'r dyn GuestRam {
        self.mem
    }
}
