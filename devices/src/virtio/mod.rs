//! Virtio 1.x devices over PCI (feature `virtio`): the modern PCI transport
//! [`VirtioPciDevice`], and the devices behind it: [`rng::Rng`] (virtio-rng), [`blk::Block`]
//! (virtio-blk on a raw image), [`net::Net`] (virtio-net), [`console::Console`]
//! (virtio-console) and [`p9::Share`] (virtio-9p: a host directory). Register maps:
//! `docs/devices.md`.
//!
//! # Pieces
//!
//! | Module | What |
//! |---|---|
//! | [`pci`] | [`VirtioPciDevice`]: config space, the BAR with the virtio structures, MSI-X/INTx, the status state machine, ioeventfds |
//! | [`chain`] | [`Chain`]: a descriptor chain checked against guest RAM, read and written by offset |
//! | [`rng`] | virtio-rng (type 4) |
//! | [`blk`] | virtio-blk (type 2) |
//! | [`console`] | virtio-console (type 3): one port on the host's stdin and stdout |
//! | [`net`] | virtio-net (type 1) over a [`tap`] |
//! | [`p9`] | virtio-9p (type 9): a host directory over 9P2000.L, in process |
//! | [`queues`] | [`Queues`]: the rings for a handler serving a queue itself (network receive) |
//!
//! A device implements [`VirtioDevice`] (identity, features, config space) and, once the driver
//! set DRIVER_OK, hands the transport a [`QueueHandler`] that serves descriptor chains. The
//! transport owns everything else: feature negotiation, queue setup, the descriptor walk,
//! the used ring, notification suppression (`VIRTIO_F_RING_EVENT_IDX`) and interrupts.
//!
//! # Using it (a VMM on KVM)
//!
//! ```no_run
//! # #[cfg(feature = "kvm")]
//! # mod doc {
//! use std::sync::{Arc, Mutex};
//! use vfiovm_devices::ioevent::IoEventRegistrar;
//! use vfiovm_devices::kvm::{KvmInterruptManager, KvmIoEvents};
//! use vfiovm_devices::kvm_ioctls::VmFd;
//! use vfiovm_devices::pci::PciPlatform;
//! use vfiovm_devices::virtio::blk::{Block, BlockConfig};
//! use vfiovm_devices::virtio::rng::Rng;
//! use vfiovm_devices::virtio::VirtioPciDevice;
//! use vfiovm_devices::vm_memory::GuestMemoryMmap;
//!
//! fn add_virtio(
//!     vm: Arc<VmFd>,
//!     mem: &GuestMemoryMmap,
//!     irq: &KvmInterruptManager, // the one the platform has too
//!     platform: &PciPlatform,
//! ) -> Result<(), Box<dyn std::error::Error>> {
//!     // Queue notifies become KVM ioeventfds: no exit to the VMM.
//!     let ioevents: Arc<dyn IoEventRegistrar> = Arc::new(KvmIoEvents::new(vm));
//!     let rng = VirtioPciDevice::new("virtio-rng", Box::new(Rng::new()), mem.clone(), irq, Some(ioevents.clone()))?;
//!     platform.add_device(platform.free_slot().ok_or("no free PCI slot")?, Arc::new(Mutex::new(rng)))?;
//!     // --disk path=disk.raw,readonly=on: a typed error if missing, not raw, or locked.
//!     let disk = Block::open(&BlockConfig::parse("path=disk.raw,readonly=on")?)?;
//!     let blk = VirtioPciDevice::new("virtio-blk0", Box::new(disk), mem.clone(), irq, Some(ioevents))?;
//!     platform.add_device(platform.free_slot().ok_or("no free PCI slot")?, Arc::new(Mutex::new(blk)))?;
//!     // The I/O threads start when the guest's drivers set DRIVER_OK, and stop when they reset
//!     // the devices or the devices are dropped (PciPlatform::remove_device, or the platform
//!     // going away); VirtioPciDevice::shutdown stops one explicitly.
//!     Ok(())
//! }
//! # }
//! ```
//!
//! # Threads
//!
//! Queue work never runs on a vCPU thread. Each device gets one I/O thread, created with the
//! device (so by the thread that builds the VM: a thread a vCPU spawned would inherit the vCPU's
//! seccomp filter) and joined when the device is dropped. It serves the queues from DRIVER_OK
//! until the driver resets the device (writes 0 to the status); in between it sleeps. A VMM
//! that confines its threads gives [`VirtioPciDevice::with_thread_start`] a hook, which the
//! thread runs first. The thread is named after the device (the `name`
//! given to [`VirtioPciDevice::new`], e.g. `virtio-blk0`) so the VMM can tell it apart. It waits
//! in `epoll_wait` on one `EventFd` per queue (the guest's notify writes, bound with an
//! ioeventfd when the VMM gives an [`crate::ioevent::IoEventRegistrar`]), a stop `EventFd` and
//! the INTx resample `EventFd` (and, for a device whose backend delivers data on its own
//! schedule, the descriptors [`QueueHandler::extra_fds`] names), pops the available chains,
//! calls the handler and delivers the completion through
//! [`crate::interrupt::MsiVector::trigger`] (an irqfd write under KVM) or INTx. The rng and
//! net handlers' I/O is synchronous on that thread; virtio-blk keeps several requests in flight
//! on an io_uring, whose completion eventfd is one of its extra descriptors (module
//! [`blk`]). Why one thread per device: `docs/architecture.md`.
//!
//! System calls the I/O thread makes (for a per-thread seccomp filter): `epoll_wait`,
//! `epoll_ctl` and `epoll_create1` (at start), `read` and `write` (eventfds), `futex` (the
//! interrupt state's mutex, the stop handshake), `getrandom` (virtio-rng), `pread64`,
//! `pwrite64`, `fdatasync`, `fallocate`, `io_uring_enter`, `preadv2` (virtio-blk; its ring is
//! set up when the image is opened, so `io_uring_setup` and `io_uring_register` are never made
//! on the I/O thread), `read` and `write` on the tap and
//! `epoll_ctl` for it (virtio-net), `write` to the host output (opened non-blocking) or
//! `sendto` with `MSG_DONTWAIT | MSG_NOSIGNAL` when it is a socket, `read` of its input
//! eventfd, `epoll_ctl` for both (virtio-console), `madvise`, `munmap`, `mmap` (allocator),
//! `close`, `exit`, `sigaltstack`, `rt_sigprocmask` (thread exit), and `write` to stderr (logs).
//! virtio-9p's thread also makes the file-system calls of its 9P server ([`p9`] lists them),
//! which no other device needs: a VMM gives it a filter of its own.
//!
//! # Hostile guests
//!
//! Every descriptor chain is walked with a bound (the queue size, per table), every buffer is
//! checked to lie in guest RAM before it is used, and a readable buffer after a writable one is
//! refused. A chain that breaks these rules, an available index that runs more than the queue
//! size ahead, or a ring outside guest RAM put the device in NEEDS_RESET and raise the
//! configuration interrupt; the I/O thread then serves nothing until the driver resets the
//! device. A well-formed chain with a bad request (unknown type, a sector past the end) fails
//! that request with the device's status code. Nothing a guest writes makes the VMM panic.

use std::fmt;
use std::os::unix::io::RawFd;

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

pub mod blk;
pub mod chain;
pub mod console;
mod irq;
pub mod pci;
pub mod rng;
mod worker;

pub mod net;
pub mod p9;
pub mod queues;
pub mod tap;

#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    //! Test helpers (feature `test-util`): [`QueueRunner`] serves a queue synchronously, exactly
    //! as a device's I/O thread does (same checks, same descriptor walk, same used-ring and
    //! notification handling), for fuzzing and deterministic tests without a thread;
    //! [`QueueSet`] does the same for a device with queues its handler serves itself.

    use virtio_queue::{Queue, QueueT};
    use vm_memory::GuestMemory;
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

    use super::queues::{Queues, Rings};
    pub use super::worker::ServeError;
    use super::{QueueHandler, Ready};

    /// One queue, served on the caller's thread.
    #[derive(Debug)]
    pub struct QueueRunner {
        /// Indexed by queue number: only `index` is set.
        queues: Vec<Option<Queue>>,
        index: u16,
    }

    impl QueueRunner {
        /// Queue `index` with `size` entries (maximum `max`) and its rings at
        /// `(desc, avail, used)`, checked as the transport checks it at DRIVER_OK.
        pub fn new<M: GuestMemory>(
            mem: &M,
            index: u16,
            max: u16,
            size: u16,
            rings: (u64, u64, u64),
            event_idx: bool,
        ) -> Result<Self, String> {
            let queue = super::worker::make_queue(mem, max, size, rings, event_idx)?;
            let mut queues: Vec<Option<Queue>> = (0..index).map(|_| None).collect();
            queues.push(Some(queue));
            Ok(QueueRunner { queues, index })
        }

        fn queue(&self) -> &Queue {
            self.queues[usize::from(self.index)]
                .as_ref()
                .expect("the runner's queue is set")
        }

        /// Serves every available chain with `handler`: `Ok(whether to interrupt the
        /// driver)`, or the error that would put the device in NEEDS_RESET. A handler that
        /// serves the queue itself ([`QueueHandler::serves_itself`]) is called as the I/O
        /// thread calls it: [`QueueHandler::ready`] for the notify, then, while it has
        /// requests in flight, again for each of its extra descriptors that becomes
        /// readable; so this returns once every chain popped is complete.
        pub fn serve<M: GuestMemory + Send + Sync>(
            &mut self,
            mem: &M,
            handler: &mut dyn QueueHandler,
        ) -> Result<bool, ServeError> {
            if !handler.serves_itself(self.index) {
                let queue = self.queues[usize::from(self.index)]
                    .as_mut()
                    .expect("the runner's queue is set");
                return super::worker::serve_queue(mem, queue, self.index, handler);
            }
            let mut notify = self.ready(mem, handler, Ready::Queue(self.index))?;
            if handler.in_flight() == 0 {
                return Ok(notify);
            }
            let epoll = Epoll::new().map_err(|e| ServeError::Wait(e.to_string()))?;
            for (i, fd) in handler.extra_fds().into_iter().enumerate() {
                let ev = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, i as u64);
                epoll
                    .ctl(ControlOperation::Add, fd, ev)
                    .map_err(|e| ServeError::Wait(e.to_string()))?;
            }
            // An edge already passed is not reported: look at every descriptor once first.
            let mut events = vec![EpollEvent::default(); 8];
            let mut first = true;
            while handler.in_flight() > 0 {
                let fired: Vec<usize> = if first {
                    first = false;
                    (0..handler.extra_fds().len()).collect()
                } else {
                    match epoll.wait(-1, &mut events) {
                        Ok(n) => events[..n].iter().map(|e| e.data() as usize).collect(),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(ServeError::Wait(e.to_string())),
                    }
                };
                for i in fired {
                    notify |= self.ready(mem, handler, Ready::Fd(i))?;
                }
            }
            Ok(notify)
        }

        /// One call of [`QueueHandler::ready`], as the I/O thread makes it: `Ok(whether to
        /// interrupt the driver)`, or the error that would put the device in NEEDS_RESET.
        /// Returns without waiting for I/O the handler started.
        pub fn ready<M: GuestMemory + Send + Sync>(
            &mut self,
            mem: &M,
            handler: &mut dyn QueueHandler,
            why: Ready,
        ) -> Result<bool, ServeError> {
            let n = self.queues.len();
            let mut rings = Rings {
                mem,
                queues: &mut self.queues,
            };
            let mut queues = Queues::new(&mut rings, n);
            handler.ready(why, &mut queues);
            let (completed, _spent, error) = queues.finish();
            if let Some(e) = error {
                return Err(e);
            }
            if !completed
                .get(usize::from(self.index))
                .copied()
                .unwrap_or(false)
            {
                return Ok(false);
            }
            let queue = self.queues[usize::from(self.index)]
                .as_mut()
                .expect("the runner's queue is set");
            queue.needs_notification(mem).map_err(ServeError::Ring)
        }

        /// The next available-ring index the device will read.
        pub fn next_avail(&self) -> u16 {
            self.queue().next_avail()
        }

        /// The next used-ring index the device will write.
        pub fn next_used(&self) -> u16 {
            self.queue().next_used()
        }
    }

    /// Every queue of a device, for a handler that serves some of them itself
    /// ([`QueueHandler::serves_itself`], e.g. a network receive queue): [`QueueSet::ready`]
    /// runs what the I/O thread runs when such a queue is notified or one of the handler's
    /// descriptors becomes readable, and [`QueueSet::serve`] what it runs for the others.
    #[derive(Debug, Default)]
    pub struct QueueSet {
        queues: Vec<Option<Queue>>,
    }

    impl QueueSet {
        /// `n` queues, none enabled.
        pub fn new(n: usize) -> Self {
            QueueSet {
                queues: (0..n).map(|_| None).collect(),
            }
        }

        /// Sets queue `index` up as [`QueueRunner::new`] does; `Err` (the queue left
        /// disabled) where the transport would refuse DRIVER_OK.
        pub fn set<M: GuestMemory>(
            &mut self,
            mem: &M,
            index: u16,
            max: u16,
            size: u16,
            rings: (u64, u64, u64),
            event_idx: bool,
        ) -> Result<(), String> {
            let slot = self
                .queues
                .get_mut(usize::from(index))
                .ok_or_else(|| format!("no queue {index}"))?;
            *slot = None;
            *slot = Some(super::worker::make_queue(mem, max, size, rings, event_idx)?);
            Ok(())
        }

        /// Disables queue `index` (the device needs a reset, or the driver reset it).
        pub fn disable(&mut self, index: u16) {
            if let Some(q) = self.queues.get_mut(usize::from(index)) {
                *q = None;
            }
        }

        /// Whether queue `index` is enabled.
        pub fn enabled(&self, index: u16) -> bool {
            self.queues
                .get(usize::from(index))
                .is_some_and(Option::is_some)
        }

        /// Serves every available chain of queue `index` with [`QueueHandler::process`], as
        /// [`QueueRunner::serve`] does (`Ok(false)` for a queue not enabled).
        pub fn serve<M: GuestMemory + Send + Sync>(
            &mut self,
            mem: &M,
            index: u16,
            handler: &mut dyn QueueHandler,
        ) -> Result<bool, ServeError> {
            match self.queues.get_mut(usize::from(index)) {
                Some(Some(q)) => super::worker::serve_queue(mem, q, index, handler),
                _ => Ok(false),
            }
        }

        /// Calls [`QueueHandler::ready`] with these queues: the queues whose completions
        /// call for an interrupt, and the error that would put the device in NEEDS_RESET.
        pub fn ready<M: GuestMemory + Send + Sync>(
            &mut self,
            mem: &M,
            handler: &mut dyn QueueHandler,
            why: Ready,
        ) -> (Vec<usize>, Option<String>) {
            let (signal, _more, error) =
                super::worker::ready_queues(mem, &mut self.queues, handler, why);
            (signal, error)
        }

        /// Queue `index`'s next available-ring index (0 when not enabled).
        pub fn next_avail(&self, index: u16) -> u16 {
            self.queues
                .get(usize::from(index))
                .and_then(Option::as_ref)
                .map_or(0, |q| q.next_avail())
        }

        /// Queue `index`'s next used-ring index (0 when not enabled).
        pub fn next_used(&self, index: u16) -> u16 {
            self.queues
                .get(usize::from(index))
                .and_then(Option::as_ref)
                .map_or(0, |q| q.next_used())
        }
    }
}

pub use chain::{Chain, ChainError, Segment};
pub use pci::{VirtioPciDevice, VirtioPciError};
pub use queues::{Queues, Ready, RingFault};
pub use worker::ThreadStart;

pub use virtio_bindings;
pub use virtio_queue;

/// PCI vendor ID of every virtio device (Red Hat, Inc.).
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// A modern virtio device's PCI device ID is this plus its virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID of our devices (non-transitional devices use 0x40 or above).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x40;

/// Virtio device type: network card.
pub const VIRTIO_TYPE_NET: u16 = 1;
/// Virtio device type: block device.
pub const VIRTIO_TYPE_BLOCK: u16 = 2;
/// Virtio device type: console.
pub const VIRTIO_TYPE_CONSOLE: u16 = 3;
/// Virtio device type: entropy source.
pub const VIRTIO_TYPE_RNG: u16 = 4;
/// Virtio device type: 9P transport.
pub const VIRTIO_TYPE_9P: u16 = 9;

/// Feature bit: the device follows virtio 1.x (mandatory for a modern-only device).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: descriptors may point at indirect descriptor tables.
pub const VIRTIO_F_RING_INDIRECT_DESC: u64 = 1 << 28;
/// Feature bit: `used_event`/`avail_event` notification suppression.
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
/// The transport's own features, offered with every device's.
pub const TRANSPORT_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_F_RING_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is set up; the device may serve its queues.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete (the device keeps it set only if it accepts
/// the driver's features).
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error it cannot recover from without a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// The guest memory the devices read and write, as a trait object so device code is not
/// generic over the VMM's memory type. Implemented for every [`GuestMemory`].
pub trait GuestRam: Send + Sync {
    /// Whether `[addr, addr + len)` is guest RAM the device may access (`write`: for writing).
    fn contains(&self, addr: u64, len: u64, write: bool) -> bool;
    /// Reads `buf.len()` bytes at `addr`; `false` (nothing read) if not all of it is RAM.
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Writes `buf` at `addr`; `false` (nothing written) if not all of it is RAM.
    fn write_at(&self, addr: u64, buf: &[u8]) -> bool;
    /// The host memory behind `[addr, addr + len)`, appended to `out` as `(host address,
    /// length)` pieces (more than one where the range crosses regions); `false` (`out`
    /// unchanged) if not all of it is RAM the device may access (`write`: for writing). For
    /// I/O the kernel does straight into guest RAM; the addresses stay valid while this
    /// memory (the mapping behind it) lives. The default has no host addresses to give
    /// (`false`): a device then copies through its own buffers.
    fn host_ranges(&self, addr: u64, len: u64, write: bool, out: &mut Vec<(usize, usize)>) -> bool {
        let _ = (addr, len, write, out);
        false
    }
}

impl<M: GuestMemory + Send + Sync> GuestRam for M {
    fn contains(&self, addr: u64, len: u64, write: bool) -> bool {
        let perm = if write {
            Permissions::Write
        } else {
            Permissions::Read
        };
        match usize::try_from(len) {
            Ok(0) => true,
            Ok(len) => {
                addr.checked_add(len as u64).is_some()
                    && self.check_range(GuestAddress(addr), len, perm)
            }
            Err(_) => false,
        }
    }

    fn read_at(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.contains(addr, buf.len() as u64, false)
            && self.read_slice(buf, GuestAddress(addr)).is_ok()
    }

    fn write_at(&self, addr: u64, buf: &[u8]) -> bool {
        self.contains(addr, buf.len() as u64, true)
            && self.write_slice(buf, GuestAddress(addr)).is_ok()
    }

    fn host_ranges(&self, addr: u64, len: u64, write: bool, out: &mut Vec<(usize, usize)>) -> bool {
        let (Ok(count), true) = (usize::try_from(len), self.contains(addr, len, write)) else {
            return false;
        };
        if count == 0 {
            return true;
        }
        let perm = if write {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let Ok(slices) = self.get_slices(GuestAddress(addr), count, perm) else {
            return false;
        };
        let start = out.len();
        let mut got = 0usize;
        for s in slices {
            let Ok(s) = s else {
                out.truncate(start);
                return false;
            };
            out.push((s.ptr_guard_mut().as_ptr() as usize, s.len()));
            got += s.len();
        }
        if got != count {
            out.truncate(start);
            return false;
        }
        true
    }
}

/// Errors a device reports when the driver starts it.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// The device cannot run with what the driver set up.
    #[error("{device}: cannot start: {why}")]
    Activate {
        /// Which device.
        device: String,
        /// Why.
        why: String,
    },
    /// Starting the I/O thread failed.
    #[error("starting the I/O thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The device-specific half of a virtio device; the transport ([`VirtioPciDevice`]) does the
/// rest. Config accesses arrive on vCPU threads with the transport locked; queue work happens
/// in the [`QueueHandler`] on the device's I/O thread.
pub trait VirtioDevice: Send {
    /// The virtio device type (`VIRTIO_TYPE_*`).
    fn device_type(&self) -> u16;
    /// The PCI class code (base class << 16 | subclass << 8 | interface).
    fn pci_class(&self) -> u32 {
        0xff_00_00
    }
    /// The largest size of each queue (powers of two, 1..=32768); their number is the number
    /// of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The device-specific feature bits offered (the transport adds [`TRANSPORT_FEATURES`]).
    fn features(&self) -> u64;
    /// Size of the device configuration structure in bytes (at most 4096).
    fn config_len(&self) -> usize {
        0
    }
    /// A driver read of the device configuration at `offset`; bytes past the structure read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let _ = offset;
        data.fill(0);
    }
    /// A driver write to the device configuration (ignored unless the device has writable
    /// fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// The driver set DRIVER_OK having accepted `features`: return the handler the I/O thread
    /// runs.
    fn activate(&mut self, features: u64) -> Result<Box<dyn QueueHandler>, VirtioError>;
    /// The driver reset the device (the I/O thread is stopped and the handler dropped before
    /// this is called).
    fn reset(&mut self) {}
}

/// What a device does with a well-formed descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Put the chain on the used ring with this many bytes written into its writable part.
    Used(u32),
    /// The chain breaks the device's rules in a way it cannot report in the chain itself (no
    /// room for a status byte): put the device in NEEDS_RESET.
    Fault,
}

/// Serves the chains of a started device, on its I/O thread.
pub trait QueueHandler: Send {
    /// Serves one chain popped from queue `queue`.
    fn process(&mut self, queue: u16, chain: &mut Chain<'_>) -> Completion;

    // Event-driven queues (a network device's receive queue): see [`queues`]. The defaults
    // leave every queue to `process` and wait on nothing else.

    /// Whether the handler serves queue `queue` itself, in [`QueueHandler::ready`], instead of
    /// each available chain going to [`QueueHandler::process`].
    fn serves_itself(&self, queue: u16) -> bool {
        let _ = queue;
        false
    }
    /// File descriptors the I/O thread also waits on (a backend's socket or tap), registered
    /// edge-triggered for input: after [`QueueHandler::ready`] with [`Ready::Fd`] the handler
    /// reads until it would block, or remembers that it stopped early and resumes on another
    /// event. Asked once per start of the device.
    fn extra_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// File descriptors the handler writes to without blocking (a host console's output), which
    /// the I/O thread waits on for room, edge-triggered: after a write that would block the
    /// handler keeps what it could not write and tries again at [`QueueHandler::ready`] with
    /// [`Ready::Writable`]. Asked once per start of the device.
    fn writable_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// A queue the handler serves itself was notified, or one of its extra descriptors became
    /// readable: serve the rings through `queues`. Not called while the device needs a reset.
    fn ready(&mut self, why: Ready, queues: &mut Queues<'_, '_>) {
        let _ = (why, queues);
    }
    /// Chains the handler popped and has not completed yet because their I/O is still
    /// running (virtio-blk on io_uring); their completions arrive on an extra descriptor.
    /// A handler with requests in flight waits for them when it is dropped.
    fn in_flight(&self) -> usize {
        0
    }
}

/// A device's name for its logs and its I/O thread: what the VMM passed, cut to the 15
/// bytes a Linux thread name holds.
pub(crate) fn thread_name(name: &str) -> String {
    let mut n = String::new();
    for c in name.chars() {
        if n.len() + c.len_utf8() > 15 {
            break;
        }
        n.push(c);
    }
    n
}

/// A device configuration read at `offset` out of the structure `config`: bytes past its end
/// (or an offset that overflows) read 0, as [`VirtioDevice::read_config`] asks.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, d) in data.iter_mut().enumerate() {
        *d = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// Feature bits as `0x…` for logs.
pub(crate) struct Features(pub u64);

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
