//! virtio-console (device type 3): one console port on the host's terminal — the guest's
//! `/dev/hvc0`.
//!
//! # Queues
//!
//! | Index | Queue | Served |
//! |---|---|---|
//! | 0 ([`RX_QUEUE`]) | receiveq (port 0): buffers the driver lends for host input | when [`HostInput`] has bytes (its wake eventfd) or the driver adds buffers |
//! | 1 ([`TX_QUEUE`]) | transmitq (port 0): guest output | on the driver's notify, and when the host output has room again |
//!
//! One port, no control queues: `VIRTIO_CONSOLE_F_MULTIPORT` is not offered.
//!
//! # Device features
//!
//! None. `VIRTIO_CONSOLE_F_SIZE` (0) is not offered: the device does not follow the host
//! terminal's size (no `SIGWINCH` handling), and a size that never changes would be a lie
//! after the first resize. `VIRTIO_CONSOLE_F_EMERG_WRITE` (2) is not offered either: an
//! emergency write is a config-space write on a vCPU thread, which would then write to the
//! host's output and could block the vCPU.
//!
//! # Device configuration ([`CONFIG_LEN`] bytes, read-only)
//!
//! | Offset | Field | Width | Value |
//! |---|---|---|---|
//! | 0x00 ([`CONFIG_COLS`]) | `cols` | 2 | 0 (`F_SIZE` not offered) |
//! | 0x02 ([`CONFIG_ROWS`]) | `rows` | 2 | 0 |
//! | 0x04 ([`CONFIG_MAX_NR_PORTS`]) | `max_nr_ports` | 4 | 1 (`F_MULTIPORT` not offered) |
//! | 0x08 ([`CONFIG_EMERG_WR`]) | `emerg_wr` | 4 | reads 0; writes are ignored (`F_EMERG_WRITE` not offered) |
//!
//! # Host side
//!
//! Output ([`HostOutput`]) is written without ever blocking: a pipe or terminal is reopened
//! with `O_NONBLOCK` (its own open file description, so the VMM's other users of the same
//! descriptor, the serial port, keep theirs), a socket is written with `MSG_DONTWAIT`, and a
//! regular file or `/dev/null` never waits. When the output is full the device keeps up to
//! [`TX_PENDING_MAX`] bytes it already took from the guest, stops taking more (the guest's
//! driver finds its transmit queue full and waits), and waits for room on its I/O thread
//! together with its other events, so a stop or a driver reset is never held up by a reader
//! that stopped reading. A closed reader (`EPIPE`) makes it drop output from then on. Output
//! still pending when the device stops is dropped and counted in one warning, or, with
//! [`Console::with_stop_drain`], written for up to that long first while the reader takes it.
//!
//! Input ([`HostInput`]) is a buffer of [`INPUT_MAX`] bytes that the VMM fills (from stdin, in
//! its event loop, where the Ctrl-A escape is handled for the serial console too) and the I/O
//! thread empties into the receive queue. When the buffer is full the VMM keeps the rest and
//! waits for [`HostInput::space_event`].
//!
//! # Hostile drivers
//!
//! Transmit chains may have any layout: their device-readable bytes are output (at most
//! [`TX_CHAIN_MAX`] per chain; the rest is dropped and counted), device-writable buffers are
//! ignored, and every chain completes with length 0. Receive chains get host bytes in their
//! writable part (none if they have none, completed with length 0). Malformed rings put the
//! device in NEEDS_RESET (the transport's rule).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::queues::{Queues, Ready, RingFault};
use super::{Chain, Completion, QueueHandler, VirtioDevice, VirtioError, VIRTIO_TYPE_CONSOLE};
use crate::console_tail::{ConsoleSource, ConsoleTail};

/// The receive queue of port 0.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue of port 0.
pub const TX_QUEUE: u16 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// Size of the device configuration.
pub const CONFIG_LEN: usize = 12;
/// `cols` (le16).
pub const CONFIG_COLS: usize = 0x00;
/// `rows` (le16).
pub const CONFIG_ROWS: usize = 0x02;
/// `max_nr_ports` (le32).
pub const CONFIG_MAX_NR_PORTS: usize = 0x04;
/// `emerg_wr` (le32).
pub const CONFIG_EMERG_WR: usize = 0x08;
/// Host input held for the guest before the VMM is told to wait.
pub const INPUT_MAX: usize = 4096;
/// Guest output taken but not yet written to the host: no more chains are taken past this.
pub const TX_PENDING_MAX: usize = 64 * 1024;
/// Most bytes output from one transmit chain (Linux sends at most a page per chain).
pub const TX_CHAIN_MAX: u64 = 64 * 1024;

/// Feature bits (`VIRTIO_CONSOLE_F_*`), none of them offered (see the module docs).
pub mod features {
    /// `cols`/`rows` in the configuration are valid.
    pub const SIZE: u64 = 1 << 0;
    /// Several ports and the control queues.
    pub const MULTIPORT: u64 = 1 << 1;
    /// `emerg_wr` in the configuration.
    pub const EMERG_WRITE: u64 = 1 << 2;
    /// What the device offers.
    pub const OFFERED: u64 = 0;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host input waiting for the guest: filled by the VMM ([`HostInput::push`]), emptied into the
/// receive queue by the device's I/O thread.
#[derive(Debug)]
pub struct HostInput {
    state: Mutex<InputState>,
    /// Signalled by `push`: the I/O thread waits on it.
    wake: EventFd,
    /// Signalled by the I/O thread when it made room after a short `push`.
    space: EventFd,
}

#[derive(Debug, Default)]
struct InputState {
    bytes: VecDeque<u8>,
    /// A push found the buffer full: signal `space` once there is room.
    armed: bool,
}

impl HostInput {
    /// An empty input buffer. Fails only if no eventfd can be made.
    pub fn new() -> io::Result<Self> {
        Ok(HostInput {
            state: Mutex::default(),
            wake: crate::new_eventfd()?,
            space: crate::new_eventfd()?,
        })
    }

    /// Queues host bytes for the guest; returns how many of `bytes` were taken (a prefix).
    /// Fewer means the buffer is full: keep the rest and wait for [`HostInput::space_event`].
    pub fn push(&self, bytes: &[u8]) -> usize {
        if bytes.is_empty() {
            return 0;
        }
        let mut s = lock(&self.state);
        let n = bytes.len().min(INPUT_MAX - s.bytes.len());
        s.bytes.extend(&bytes[..n]);
        if n < bytes.len() {
            s.armed = true;
        }
        drop(s);
        if n > 0 {
            if let Err(e) = self.wake.write(1) {
                log::warn!("virtio-console: cannot wake the I/O thread for input: {e}");
            }
        }
        n
    }

    /// Becomes readable when the guest made room after a [`HostInput::push`] that did not take
    /// everything; read it (to reset it) and push the rest.
    pub fn space_event(&self) -> &EventFd {
        &self.space
    }

    /// Bytes waiting for the guest.
    pub fn len(&self) -> usize {
        lock(&self.state).bytes.len()
    }

    /// Whether no bytes wait for the guest.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max` bytes for the guest.
    fn take(&self, max: usize) -> Vec<u8> {
        let mut s = lock(&self.state);
        let n = max.min(s.bytes.len());
        let out: Vec<u8> = s.bytes.drain(..n).collect();
        if s.armed && n > 0 {
            s.armed = false;
            drop(s);
            if let Err(e) = self.space.write(1) {
                log::warn!("virtio-console: cannot signal room for input: {e}");
            }
        }
        out
    }
}

/// How a [`HostOutput`] avoids blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputKind {
    /// A pipe or terminal opened anew with `O_NONBLOCK`: write(2), wait for room with epoll.
    NonBlocking,
    /// A socket: send(2) with `MSG_DONTWAIT`, wait for room with epoll.
    Socket,
    /// A regular file, a block device, `/dev/null`: writes never wait for a reader.
    NeverWaits,
}

/// Where guest output goes: a descriptor written without ever blocking (see the module docs).
#[derive(Debug)]
pub struct HostOutput {
    fd: OwnedFd,
    kind: OutputKind,
}

impl HostOutput {
    /// Guest output to the process's standard output.
    pub fn stdout() -> io::Result<Self> {
        Self::for_fd(libc::STDOUT_FILENO)
    }

    /// Guest output to `fd` (borrowed: this opens or duplicates its own descriptor). A pipe or
    /// terminal is reopened through `/proc/self/fd` with `O_NONBLOCK`, so `fd`'s own file
    /// description stays as it is.
    pub fn for_fd(fd: RawFd) -> io::Result<Self> {
        // SAFETY: an all-zero `stat` is a valid value; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one `stat` into `st`, a live exclusive reference.
        if unsafe { libc::fstat(fd, &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let fmt = st.st_mode & libc::S_IFMT;
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(fd) } == 1;
        let (fd, kind) = if fmt == libc::S_IFIFO || tty {
            match reopen_nonblocking(fd) {
                Ok(fd) => (fd, OutputKind::NonBlocking),
                // A pipe whose reader is already gone: writes fail at once (EPIPE) and the
                // output is dropped, as later.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    (dup(fd)?, OutputKind::NeverWaits)
                }
                Err(e) => return Err(e),
            }
        } else if fmt == libc::S_IFSOCK {
            (dup(fd)?, OutputKind::Socket)
        } else {
            (dup(fd)?, OutputKind::NeverWaits)
        };
        Ok(HostOutput { fd, kind })
    }

    /// The descriptor to wait on for room, if writes to it can find it full.
    fn pollable(&self) -> Option<RawFd> {
        (self.kind != OutputKind::NeverWaits).then(|| self.fd.as_raw_fd())
    }

    /// One write that never blocks; `WouldBlock` when the output is full.
    fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.fd.as_raw_fd();
        let n = match self.kind {
            // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`, a live buffer.
            OutputKind::Socket => unsafe {
                libc::send(
                    fd,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            },
            // SAFETY: as above.
            _ => unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) },
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

/// Waits up to `limit` for room in `fd` (epoll: what the I/O thread's filter allows).
fn wait_writable(fd: RawFd, limit: Duration) -> io::Result<()> {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let epoll = Epoll::new()?;
    epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::OUT, 0))?;
    let mut events = [EpollEvent::default()];
    let ms = i32::try_from(limit.as_millis().max(1)).unwrap_or(i32::MAX);
    epoll.wait(ms, &mut events)?;
    Ok(())
}

/// `dup(fd)` with close-on-exec.
fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor for the same file; it takes no pointers.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Opens what `fd` refers to again, write-only and non-blocking: a new open file description,
/// so the flag does not reach the other holders of `fd`'s.
fn reopen_nonblocking(fd: RawFd) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let flags = libc::O_WRONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let n = unsafe { libc::open(path.as_ptr(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Counters of one console, shared with its I/O thread.
#[derive(Debug, Default)]
pub struct ConsoleStats {
    /// Guest output bytes written to the host.
    pub tx_bytes: AtomicU64,
    /// Guest output bytes dropped: past [`TX_CHAIN_MAX`] in a chain, after the host's reader
    /// went away, or still pending when the device stopped.
    pub tx_dropped: AtomicU64,
    /// Host input bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
}

/// The virtio-console device: one port.
pub struct Console {
    input: Arc<HostInput>,
    output: Arc<HostOutput>,
    stats: Arc<ConsoleStats>,
    tail: Option<Arc<ConsoleTail>>,
    /// Keep the output as lines in `tail` (else only count it).
    lines: bool,
    /// How long a stop keeps writing output already taken ([`Console::with_stop_drain`]).
    stop_drain: Duration,
}

impl fmt::Debug for Console {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// A console whose port writes to `output` and reads from `input`.
    pub fn new(input: Arc<HostInput>, output: HostOutput) -> Self {
        Console {
            input,
            output: Arc::new(output),
            stats: Arc::default(),
            tail: None,
            lines: false,
            stop_drain: Duration::ZERO,
        }
    }

    /// Also records the guest's output in `tail` (what a run's verdict quotes), whether or not
    /// the host's output takes it.
    pub fn with_tail(mut self, tail: Arc<ConsoleTail>) -> Self {
        self.tail = Some(tail);
        self.lines = true;
        self
    }

    /// At a stop (the VM's, or the driver's reset), keeps writing the output already taken from
    /// the guest for up to `limit` while the reader makes room, instead of dropping it at once:
    /// for output that must arrive whole (an `--exec` command's stdout and stderr, whose last
    /// bytes may still be on their way when its status ends the VM). A reader that stopped
    /// reading holds the stop up for `limit`.
    pub fn with_stop_drain(mut self, limit: Duration) -> Self {
        self.stop_drain = limit;
        self
    }

    /// Only counts the guest's output in `tail` as progress (for the stall watch), without
    /// keeping it as lines ([`ConsoleTail::count`]).
    pub fn with_progress(mut self, tail: Arc<ConsoleTail>) -> Self {
        self.tail = Some(tail);
        self.lines = false;
        self
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ConsoleStats> {
        self.stats.clone()
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[CONFIG_MAX_NR_PORTS..CONFIG_MAX_NR_PORTS + 4].copy_from_slice(&1u32.to_le_bytes());
        c
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u16 {
        VIRTIO_TYPE_CONSOLE
    }

    fn pci_class(&self) -> u32 {
        0x07_80_00 // communication controller, other
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::OFFERED
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, _features: u64) -> Result<Box<dyn QueueHandler>, VirtioError> {
        Ok(Box::new(ConsoleHandler {
            input: self.input.clone(),
            output: self.output.clone(),
            stats: self.stats.clone(),
            tail: self.tail.clone(),
            lines: self.lines,
            stop_drain: self.stop_drain,
            pending: VecDeque::new(),
            broken: false,
            warned_long: false,
        }))
    }
}

/// The port's two queues on the I/O thread.
struct ConsoleHandler {
    input: Arc<HostInput>,
    output: Arc<HostOutput>,
    stats: Arc<ConsoleStats>,
    tail: Option<Arc<ConsoleTail>>,
    lines: bool,
    stop_drain: Duration,
    /// Guest output taken from the transmit queue, not yet written.
    pending: VecDeque<u8>,
    /// The host's reader is gone: output is dropped.
    broken: bool,
    warned_long: bool,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What became of writing the pending output.
#[derive(Debug, PartialEq, Eq)]
enum Flush {
    /// All of it is written (or dropped: the reader is gone).
    Done,
    /// The output is full: wait for room.
    Full,
}

impl ConsoleHandler {
    /// Writes the pending output while the reader makes room, for at most `limit`.
    fn drain(&mut self, limit: Duration) {
        if limit.is_zero() {
            return;
        }
        let deadline = std::time::Instant::now() + limit;
        while self.flush() == Flush::Full {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some(fd) = self.output.pollable() else {
                break;
            };
            if left.is_zero() || wait_writable(fd, left).is_err() {
                break;
            }
        }
    }

    /// Writes pending output until it is all out or the host's output is full.
    fn flush(&mut self) -> Flush {
        while !self.pending.is_empty() {
            if self.broken {
                add(&self.stats.tx_dropped, self.pending.len() as u64);
                self.pending.clear();
                break;
            }
            let (a, _) = self.pending.as_slices();
            match self.output.write(a) {
                Ok(0) => return Flush::Full, // odd files; try again on the next event
                Ok(n) => {
                    self.pending.drain(..n);
                    add(&self.stats.tx_bytes, n as u64);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return Flush::Full,
                    _ => {
                        log::info!("virtio-console output: {e}; dropping further guest output");
                        self.broken = true;
                    }
                },
            }
        }
        Flush::Done
    }

    /// Takes guest output while there is room for it, writing it out as it goes.
    fn transmit(&mut self, queues: &mut Queues<'_, '_>) -> Result<(), RingFault> {
        loop {
            if self.flush() == Flush::Full && self.pending.len() >= TX_PENDING_MAX {
                // The driver's further chains wait in the ring until the output has room.
                return Ok(());
            }
            let Some(chain) = queues.pop(TX_QUEUE)? else {
                if queues.enable_notification(TX_QUEUE)? {
                    continue;
                }
                return Ok(());
            };
            self.take_output(&chain);
            // Out before the driver sees the chain done, when there is room: what the guest
            // writes next to COM1 then follows it on a shared stdout.
            self.flush();
            queues.add_used(TX_QUEUE, chain.head(), 0)?;
        }
    }

    /// Appends a transmit chain's readable bytes to the pending output.
    fn take_output(&mut self, chain: &Chain<'_>) {
        let len = chain.readable_len();
        let take = len.min(TX_CHAIN_MAX);
        if take < len {
            add(&self.stats.tx_dropped, len - take);
            if !std::mem::replace(&mut self.warned_long, true) {
                log::warn!(
                    "virtio-console: a transmit chain of {len} bytes; only the first {TX_CHAIN_MAX} are output (further such chains are only counted)"
                );
            }
        }
        let mut buf = vec![0u8; take as usize];
        if chain.read_at(0, &mut buf) {
            match &self.tail {
                Some(t) if self.lines => t.record(ConsoleSource::Virtio, &buf),
                Some(t) => t.count(buf.len()),
                None => {}
            }
            self.pending.extend(buf);
        } else {
            add(&self.stats.tx_dropped, take);
        }
    }

    /// Moves host input into the driver's receive buffers while there are both.
    fn receive(&mut self, queues: &mut Queues<'_, '_>) -> Result<(), RingFault> {
        while !self.input.is_empty() {
            let Some(chain) = queues.pop(RX_QUEUE)? else {
                if queues.enable_notification(RX_QUEUE)? {
                    continue;
                }
                return Ok(());
            };
            let room = usize::try_from(chain.writable_len().min(INPUT_MAX as u64)).unwrap_or(0);
            let bytes = self.input.take(room);
            let n = if chain.write_at(0, &bytes) {
                add(&self.stats.rx_bytes, bytes.len() as u64);
                bytes.len() as u32
            } else {
                0
            };
            queues.add_used(RX_QUEUE, chain.head(), n)?;
        }
        Ok(())
    }
}

impl QueueHandler for ConsoleHandler {
    fn process(&mut self, _queue: u16, _chain: &mut Chain<'_>) -> Completion {
        // Both queues are served in `ready`; nothing reaches here.
        Completion::Used(0)
    }

    fn serves_itself(&self, _queue: u16) -> bool {
        true
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.input.wake.as_raw_fd()]
    }

    fn writable_fds(&self) -> Vec<RawFd> {
        self.output.pollable().into_iter().collect()
    }

    fn ready(&mut self, why: Ready, queues: &mut Queues<'_, '_>) {
        if why == Ready::Fd(0) {
            // Reset the counter; the bytes are in the buffer.
            let _ = self.input.wake.read();
        }
        // Either queue's notify, input, or room for output: serve both directions; each
        // stops by itself when it has nothing to do.
        if self.transmit(queues).is_ok() {
            let _ = self.receive(queues);
        }
    }
}

impl Drop for ConsoleHandler {
    fn drop(&mut self) {
        self.drain(self.stop_drain);
        if !self.pending.is_empty() {
            let n = self.pending.len();
            add(&self.stats.tx_dropped, n as u64);
            log::warn!(
                "virtio-console: {n} byte{} of guest output were dropped at the stop because nobody read them",
                if n == 1 { "" } else { "s" }
            );
        }
    }
}
