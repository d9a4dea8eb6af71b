//! The I/O thread of a started device: waits on the queues' notify `EventFd`s, serves the
//! chains, completes them on the used ring and raises interrupts. See the module docs of
//! [`crate::virtio`] for the thread model.

use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::chain::Chain;
use super::irq::IrqState;
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

/// Everything the thread owns.
pub(crate) struct Worker<M> {
    pub(crate) name: String,
    pub(crate) mem: M,
    /// The driver's queues (`None`: not enabled), by index.
    pub(crate) queues: Vec<Option<Queue>>,
    pub(crate) notify: Vec<Arc<EventFd>>,
    pub(crate) stop: Arc<EventFd>,
    pub(crate) resample: Option<RawFd>,
    pub(crate) irq: Arc<Mutex<IrqState>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) handler: Box<dyn QueueHandler>,
}

/// A running I/O thread.
pub(crate) struct WorkerHandle {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Signals the thread to stop and waits for it. The thread finishes the chain it is on
    /// (synchronous I/O) and exits at its next wait.
    pub(crate) fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                log::error!("stopping a virtio I/O thread: {e}");
            }
            if t.join().is_err() {
                log::error!("a virtio I/O thread panicked");
            }
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl<M: GuestMemory + Send + Sync + 'static> Worker<M> {
    /// Starts the thread.
    pub(crate) fn spawn(self) -> std::io::Result<WorkerHandle> {
        let stop = self.stop.clone();
        let epoll = self.epoll()?;
        let thread = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || self.run(epoll))?;
        Ok(WorkerHandle {
            stop,
            thread: Some(thread),
        })
    }

    fn epoll(&self) -> std::io::Result<Epoll> {
        let epoll = Epoll::new()?;
        let add = |fd: RawFd, data: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )
        };
        add(self.stop.as_raw_fd(), STOP)?;
        for (i, fd) in self.notify.iter().enumerate() {
            if self.queues.get(i).is_some_and(Option::is_some) {
                add(fd.as_raw_fd(), i as u64 + 1)?;
            }
        }
        if let Some(fd) = self.resample {
            add(fd, RESAMPLE)?;
        }
        Ok(epoll)
    }

    fn run(mut self, epoll: Epoll) {
        log::debug!("{}: I/O thread started", self.name);
        let mut events = vec![EpollEvent::default(); self.notify.len() + 2];
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
                        log::debug!("{}: I/O thread stopped", self.name);
                        return;
                    }
                    RESAMPLE => lock(&self.irq).resample(),
                    d => {
                        let q = (d - 1) as usize;
                        if let Some(fd) = self.notify.get(q) {
                            drain_eventfd(fd);
                        }
                        if !self.shared.needs_reset.load(Ordering::Acquire) {
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
        match r {
            Ok(notify) => {
                if notify {
                    lock(&self.irq).signal_queue(q);
                }
            }
            Err(e) => self.fault(format_args!("queue {q}: {e}")),
        }
    }
}

/// Why serving a queue stopped for good.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("accessing the ring: {0}")]
    Ring(virtio_queue::Error),
    #[error(
        "the available index ran {0} entries ahead of the device, more than the queue size {1}"
    )]
    AvailIdx(u16, u16),
    #[error("{0}")]
    Chain(#[from] super::chain::ChainError),
    #[error("the device refused the chain from head {0}")]
    Refused(u16),
}

/// Pops and serves every available chain of `queue`; returns whether the driver wants an
/// interrupt for what was completed (EVENT_IDX suppression applied).
fn serve_queue<M: GuestMemory + Send + Sync>(
    mem: &M,
    queue: &mut Queue,
    index: u16,
    handler: &mut dyn QueueHandler,
) -> Result<bool, ServeError> {
    let ram: &dyn GuestRam = mem;
    let mut completed = false;
    loop {
        queue.disable_notification(mem).map_err(ServeError::Ring)?;
        loop {
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
