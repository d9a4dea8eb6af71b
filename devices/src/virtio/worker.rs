//! The I/O thread of a started device: waits on the queues' notify `EventFd`s, serves the
//! chains, completes them on the used ring and raises interrupts. See the module docs of
//! [`crate::virtio`] for the thread model.

use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::chain::Chain;
use super::irq::IrqState;
use super::queues::{Queues, Ready, Rings};
use super::{Completion, GuestRam, QueueHandler};
use crate::interrupt::drain_eventfd;
use crate::pci::platform::lock;

/// What the transport and the I/O thread share besides the interrupt state.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The device hit a malformed ring: the status reads NEEDS_RESET.
    pub(crate) needs_reset: AtomicBool,
}

const STOP: u64 = 0;
const RESAMPLE: u64 = u64::MAX;
/// Epoll data of the handler's extra descriptor *i*: `EXTRA + i` (queue *n* is `n + 1`).
const EXTRA: u64 = 1 << 32;
/// Epoll data of the handler's writable descriptor *i*: `WRITABLE + i`.
const WRITABLE: u64 = 2 << 32;

/// A hook the I/O thread runs first, with its name, before it serves anything: where a VMM
/// installs the thread's seccomp filter ([`super::VirtioPciDevice::with_thread_start`]).
/// `false` ends the thread at once (the hook logs why); the device then fails to start.
pub type ThreadStart = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Everything one start of the device hands its I/O thread.
pub(crate) struct Worker<M> {
    /// Declared first so it is dropped first: a handler with I/O in flight into guest RAM
    /// (virtio-blk on io_uring) waits for it when dropped, and `mem` must still be mapped then.
    pub(crate) handler: Box<dyn QueueHandler>,
    pub(crate) name: String,
    pub(crate) mem: M,
    /// The driver's queues (`None`: not enabled), by index.
    pub(crate) queues: Vec<Option<Queue>>,
    pub(crate) notify: Vec<Arc<EventFd>>,
    pub(crate) resample: Option<RawFd>,
    pub(crate) irq: Arc<Mutex<IrqState>>,
    pub(crate) shared: Arc<Shared>,
}

type Job = Box<dyn FnOnce(&EventFd) + Send>;

/// A device's I/O thread. It is created with the device, by the thread that builds the VM, and
/// lives as long as the device: a thread spawned later by a vCPU thread (where DRIVER_OK
/// arrives) would inherit that vCPU's seccomp filter. Between starts it sleeps on a channel;
/// each start hands it a [`Worker`], which runs until [`IoThread::stop`].
pub(crate) struct IoThread {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<()>,
    stop: Arc<EventFd>,
    running: bool,
    thread: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts the thread, named `name`; it runs `start` first.
    pub(crate) fn spawn(name: &str, start: Option<ThreadStart>) -> std::io::Result<Self> {
        let stop = Arc::new(crate::new_eventfd()?);
        let (jobs, rx) = mpsc::channel::<Job>();
        let (finished, done) = mpsc::channel();
        let thread_stop = stop.clone();
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                if let Some(f) = start {
                    if !f(&thread_name) {
                        return;
                    }
                }
                while let Ok(job) = rx.recv() {
                    job(&thread_stop);
                    if finished.send(()).is_err() {
                        break;
                    }
                }
            })?;
        Ok(IoThread {
            jobs: Some(jobs),
            done,
            stop,
            running: false,
            thread: Some(thread),
        })
    }

    /// Whether a worker runs (from its start until [`IoThread::stop`]).
    pub(crate) fn running(&self) -> bool {
        self.running
    }

    /// Hands the thread a worker to run. Fails only when the thread is gone.
    pub(crate) fn start<M: GuestMemory + Send + Sync + 'static>(
        &mut self,
        worker: Worker<M>,
    ) -> std::io::Result<()> {
        self.stop();
        let gone = || std::io::Error::other("the device's I/O thread has exited");
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        jobs.send(Box::new(move |stop: &EventFd| worker.run(stop)))
            .map_err(|_| gone())?;
        self.running = true;
        Ok(())
    }

    /// Stops the running worker and waits until the thread is idle again. The worker finishes
    /// the chain it is on (synchronous I/O) and returns at its next wait; dropping it drops
    /// its handler, which first waits for any I/O it has in flight (virtio-blk on io_uring).
    pub(crate) fn stop(&mut self) {
        if !std::mem::take(&mut self.running) {
            return;
        }
        if let Err(e) = self.stop.write(1) {
            log::error!("stopping a virtio I/O thread: {e}");
        }
        // Err: the thread is gone (it panicked); nothing to wait for.
        let _ = self.done.recv();
        // the worker may have ended on its own (an epoll error) without reading the stop
        drain_eventfd(&self.stop);
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.stop();
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("a virtio I/O thread panicked");
            }
        }
    }
}

impl<M: GuestMemory + Send + Sync + 'static> Worker<M> {
    fn epoll(&self, stop: &EventFd) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, data: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )
        };
        add(stop.as_raw_fd(), STOP)?;
        for (i, fd) in self.notify.iter().enumerate() {
            if self.queues.get(i).is_some_and(Option::is_some) {
                add(fd.as_raw_fd(), i as u64 + 1)?;
            }
        }
        if let Some(fd) = self.resample {
            add(fd, RESAMPLE)?;
        }
        for (i, fd) in self.handler.extra_fds().into_iter().enumerate() {
            let ev = EventSet::IN | EventSet::EDGE_TRIGGERED;
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(ev, EXTRA + i as u64),
            )?;
        }
        for (i, fd) in self.handler.writable_fds().into_iter().enumerate() {
            let ev = EventSet::OUT | EventSet::EDGE_TRIGGERED;
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(ev, WRITABLE + i as u64),
            )?;
        }
        Ok(epoll)
    }

    /// Serves the queues until `stop` is signalled.
    fn run(mut self, stop: &EventFd) {
        let epoll = match self.epoll(stop) {
            Ok(e) => e,
            Err(e) => {
                self.fault(format_args!("cannot wait for the queues (epoll: {e})"));
                return;
            }
        };
        log::debug!("{}: I/O thread serving", self.name);
        let mut events = vec![EpollEvent::default(); self.notify.len() + 4];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("{}: epoll_wait failed: {e}; the device stops", self.name);
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP => {
                        drain_eventfd(stop);
                        log::debug!("{}: I/O thread stopped serving", self.name);
                        return;
                    }
                    RESAMPLE => lock(&self.irq).resample(),
                    d if d >= WRITABLE => self.ready(Ready::Writable((d - WRITABLE) as usize)),
                    d if d >= EXTRA => self.ready(Ready::Fd((d - EXTRA) as usize)),
                    d => {
                        let q = (d - 1) as usize;
                        if let Some(fd) = self.notify.get(q) {
                            drain_eventfd(fd);
                        }
                        if self.handler.serves_itself(q as u16) {
                            self.ready(Ready::Queue(q as u16));
                        } else if !self.shared.needs_reset.load(Ordering::Acquire) {
                            self.serve(q);
                        }
                    }
                }
            }
        }
    }

    /// Puts the device in NEEDS_RESET and tells the driver.
    fn fault(&self, what: std::fmt::Arguments<'_>) {
        log::warn!(
            "{}: {what}; the device needs a reset and serves nothing until the driver resets it",
            self.name
        );
        self.shared.needs_reset.store(true, Ordering::Release);
        lock(&self.irq).signal_config();
    }

    /// Lets the handler serve its own queues ([`QueueHandler::ready`]), then raises the
    /// interrupts its completions call for.
    fn ready(&mut self, why: Ready) {
        if self.shared.needs_reset.load(Ordering::Acquire) {
            return;
        }
        let (signal, more, error) =
            ready_queues(&self.mem, &mut self.queues, self.handler.as_mut(), why);
        for q in signal {
            lock(&self.irq).signal_queue(q);
        }
        // Queues that gave out their whole budget: back through epoll for the rest.
        for q in more {
            if let Some(fd) = self.notify.get(q) {
                let _ = fd.write(1);
            }
        }
        if let Some(e) = error {
            self.fault(format_args!("{e}"));
        }
    }

    /// Serves queue `q` until its available ring is empty.
    fn serve(&mut self, q: usize) {
        let Worker {
            mem,
            queues,
            handler,
            ..
        } = self;
        let Some(Some(queue)) = queues.get_mut(q) else {
            return;
        };
        let r = serve_queue(mem, queue, q as u16, handler.as_mut());
        let more = r.is_ok() && has_pending(mem, queue);
        match r {
            Ok(notify) => {
                if notify {
                    lock(&self.irq).signal_queue(q);
                }
                if more {
                    // Back through epoll for the rest, so a stop in between is seen.
                    if let Some(fd) = self.notify.get(q) {
                        let _ = fd.write(1);
                    }
                }
            }
            Err(e) => self.fault(format_args!("queue {q}: {e}")),
        }
    }
}

/// Whether `queue`'s available ring holds chains not yet taken (what [`serve_queue`] leaves
/// when its budget runs out).
pub(crate) fn has_pending<M: GuestMemory>(mem: &M, queue: &Queue) -> bool {
    queue
        .avail_idx(mem, Ordering::Acquire)
        .is_ok_and(|a| a != Wrapping(queue.next_avail()))
}

/// A queue as the driver programmed it, checked as at DRIVER_OK: a power-of-two size up to
/// `max`, aligned rings, all of them in guest RAM, the available ring not at address 0.
pub(crate) fn make_queue<M: GuestMemory>(
    mem: &M,
    max: u16,
    size: u16,
    (desc, avail, used): (u64, u64, u64),
    event_idx: bool,
) -> Result<Queue, String> {
    use vm_memory::GuestAddress;
    let mut q = Queue::new(max).map_err(|e| e.to_string())?;
    q.try_set_size(size)
        .map_err(|_| format!("size {size} is not a power of two up to {max}"))?;
    q.try_set_desc_table_address(GuestAddress(desc))
        .map_err(|_| "the descriptor table is not 16-byte aligned".to_string())?;
    q.try_set_avail_ring_address(GuestAddress(avail))
        .map_err(|_| "the available ring is not 2-byte aligned".to_string())?;
    if avail == 0 {
        // virtio-queue takes an available ring at 0 for one nobody set and pops nothing from
        // it: the device would fail its first chain.
        return Err(
            "the available ring is at guest address 0, which this device cannot use \
             (virtio-queue takes it for an unset ring)"
                .into(),
        );
    }
    q.try_set_used_ring_address(GuestAddress(used))
        .map_err(|_| "the used ring is not 4-byte aligned".to_string())?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return Err("the rings are not (entirely) in guest RAM".into());
    }
    Ok(q)
}

/// Lets `handler` serve the queues it serves itself ([`QueueHandler::ready`]) over `queues`
/// (by index; `None`: not enabled). Returns the queues whose completions the driver wants an
/// interrupt for (EVENT_IDX suppression applied) and the ring error that puts the device in
/// NEEDS_RESET, if any.
pub(crate) fn ready_queues<M: GuestMemory + Send + Sync>(
    mem: &M,
    queues: &mut [Option<Queue>],
    handler: &mut dyn QueueHandler,
    why: Ready,
) -> (Vec<usize>, Vec<usize>, Option<String>) {
    let mut rings = Rings { mem, queues };
    let nq = rings.queues.len();
    let mut lent = Queues::new(&mut rings, nq);
    handler.ready(why, &mut lent);
    let (completed, spent, error) = lent.finish();
    if let Some(e) = error {
        return (Vec::new(), Vec::new(), Some(e.to_string()));
    }
    let more: Vec<usize> = spent
        .iter()
        .enumerate()
        .filter(|&(_, &s)| s)
        .map(|(q, _)| q)
        .collect();
    let mut signal = Vec::new();
    let mut error = None;
    for (q, done) in completed.into_iter().enumerate() {
        let Some(Some(queue)) = queues.get_mut(q).filter(|_| done) else {
            continue;
        };
        match queue.needs_notification(mem) {
            Ok(true) => signal.push(q),
            Ok(false) => {}
            Err(e) => {
                error.get_or_insert_with(|| format!("queue {q}: {}", ServeError::Ring(e)));
            }
        }
    }
    (signal, more, error)
}

/// Why serving a queue stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading or writing a ring failed.
    #[error("accessing the ring: {0}")]
    Ring(virtio_queue::Error),
    /// The driver's available index is further ahead than the queue has entries.
    #[error(
        "the available index ran {0} entries ahead of the device, more than the queue size {1}"
    )]
    AvailIdx(u16, u16),
    /// A chain broke the rules (`virtio::chain`).
    #[error("{0}")]
    Chain(#[from] super::chain::ChainError),
    /// The device answered `Completion::Fault`.
    #[error("the device refused the chain from head {0}")]
    Refused(u16),
    /// Waiting for the handler's I/O failed (test runner only).
    #[cfg(any(test, feature = "test-util"))]
    #[error("waiting for the device's I/O: {0}")]
    Wait(String),
}

/// Pops and serves every available chain of `queue`; returns whether the driver wants an
/// interrupt for what was completed (EVENT_IDX suppression applied).
pub(crate) fn serve_queue<M: GuestMemory + Send + Sync>(
    mem: &M,
    queue: &mut Queue,
    index: u16,
    handler: &mut dyn QueueHandler,
) -> Result<bool, ServeError> {
    let ram: &dyn GuestRam = mem;
    let mut completed = false;
    // At most two rings' worth per call: a driver whose used ring lies over its own available
    // index makes every completion look like a new request, and one that keeps adding from
    // another vCPU never lets the ring run dry; either would keep this thread from ever seeing
    // a stop or a reset. The caller comes back for the rest ([`has_pending`]).
    let mut budget = 2 * usize::from(queue.size());
    loop {
        queue.disable_notification(mem).map_err(ServeError::Ring)?;
        loop {
            if budget == 0 {
                return Ok(completed && queue.needs_notification(mem).map_err(ServeError::Ring)?);
            }
            budget -= 1;
            let avail = queue
                .avail_idx(mem, Ordering::Acquire)
                .map_err(ServeError::Ring)?;
            let ahead = (avail - Wrapping(queue.next_avail())).0;
            if ahead > queue.size() {
                return Err(ServeError::AvailIdx(ahead, queue.size()));
            }
            if ahead == 0 {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return Err(ServeError::Ring(virtio_queue::Error::InvalidAvailRingIndex));
            };
            let head = chain.head_index();
            let mut chain = Chain::parse(chain, ram)?;
            match handler.process(index, &mut chain) {
                Completion::Used(len) => {
                    queue.add_used(mem, head, len).map_err(ServeError::Ring)?;
                    completed = true;
                }
                Completion::Fault => return Err(ServeError::Refused(head)),
            }
        }
        if !queue.enable_notification(mem).map_err(ServeError::Ring)? {
            break;
        }
    }
    if !completed {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(ServeError::Ring)
}
