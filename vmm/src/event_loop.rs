//! The VMM thread's event loop (event-manager): the stop latch, SIGINT/SIGTERM through a
//! signalfd, and the console's input from stdin into the guest's console (COM1, or the virtio
//! console with `--console virtio`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitReason, ExitState};

/// Wakes the loop when a stop was requested; the loop itself checks the latch.
#[derive(Debug)]
pub struct ExitWatcher(pub Arc<ExitState>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.0.event().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event(), EventSet::IN)) {
            log::error!("cannot watch the stop event: {e}");
        }
    }
}

/// The signals that stop the VM cleanly.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// SIGINT/SIGTERM/SIGHUP, blocked in every thread and read from a signalfd here.
#[derive(Debug)]
pub struct SignalWatcher {
    fd: File,
    exit: Arc<ExitState>,
}

fn stop_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is a plain bit array; all zeroes is a valid (empty) set.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset only writes the set we own.
    unsafe { libc::sigemptyset(&mut set) };
    for s in STOP_SIGNALS {
        // SAFETY: sigaddset only writes the set we own; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

impl SignalWatcher {
    /// Blocks the stop signals in the calling thread (threads spawned later inherit the mask)
    /// and opens a signalfd for them. Call before starting any other thread.
    pub fn new(exit: Arc<ExitState>) -> std::io::Result<Self> {
        let set = stop_sigset();
        // SAFETY: `set` is a valid, initialised signal set; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is valid; -1 asks for a new fd, which we take ownership of below.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor owned by nobody else.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(SignalWatcher { fd, exit })
    }
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _: Events, _: &mut EventOps) {
        // struct signalfd_siginfo is 128 bytes; ssi_signo is its first u32.
        let mut buf = [0u8; 128];
        while let Ok(128) = self.fd.read(&mut buf) {
            let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as i32;
            log::info!("signal {signo} received: stopping the VM");
            self.exit.request(ExitReason::Signal(signo));
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            log::error!("cannot watch signals: {e}");
        }
    }
}

/// Where console input goes: COM1's receive FIFO, or the virtio console's input buffer.
pub trait ConsoleSink: Send {
    /// Queues bytes for the guest; returns how many were taken (the FIFO or buffer may be full).
    fn enqueue(&mut self, bytes: &[u8]) -> usize;
    /// Becomes readable when the guest has made room after a short `enqueue`.
    fn space_event(&self) -> &EventFd;
}

const CTRL_A: u8 = 0x01;
const PENDING_MAX: usize = 4096;

/// Feeds stdin to the guest's console. When the guest's FIFO (or the virtio console's buffer) is
/// full it stops watching stdin and waits for the sink's space event instead, so nothing spins and nothing is dropped. On a
/// terminal (raw mode), Ctrl-A x quits and Ctrl-A Ctrl-A sends a Ctrl-A.
pub struct ConsoleInput {
    stdin: RawFd,
    sink: Arc<Mutex<dyn ConsoleSink>>,
    pending: VecDeque<u8>,
    watching_stdin: bool,
    escape: Option<bool>, // None: no escape handling (not a tty); Some(true): after Ctrl-A
    exit: Arc<ExitState>,
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleInput")
            .field("pending", &self.pending.len())
            .field("watching_stdin", &self.watching_stdin)
            .finish()
    }
}

impl ConsoleInput {
    /// Console input from `stdin` (fd 0 normally); `tty` enables the Ctrl-A escape.
    pub fn new(
        stdin: RawFd,
        tty: bool,
        sink: Arc<Mutex<dyn ConsoleSink>>,
        exit: Arc<ExitState>,
    ) -> Self {
        ConsoleInput {
            stdin,
            sink,
            pending: VecDeque::new(),
            watching_stdin: false,
            escape: tty.then_some(false),
            exit,
        }
    }

    /// Applies the escape sequence to freshly read bytes and queues the rest.
    fn take_input(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.escape {
                None => self.pending.push_back(b),
                Some(false) if b == CTRL_A => self.escape = Some(true),
                Some(false) => self.pending.push_back(b),
                Some(true) => {
                    self.escape = Some(false);
                    match b {
                        b'x' | b'X' => {
                            self.exit.request(ExitReason::Signal(libc::SIGINT));
                            return;
                        }
                        CTRL_A => self.pending.push_back(CTRL_A),
                        _ => {}
                    }
                }
            }
        }
    }

    fn flush_pending(&mut self) {
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        while !self.pending.is_empty() {
            let (a, _) = self.pending.as_slices();
            let offered = a.len();
            let taken = sink.enqueue(a);
            self.pending.drain(..taken);
            if taken < offered {
                break;
            }
        }
    }

    fn watch(&mut self, ops: &mut EventOps) {
        let want_stdin = self.pending.is_empty();
        if want_stdin != self.watching_stdin {
            let stdin = Events::new_raw(self.stdin, EventSet::IN);
            let r = if want_stdin {
                ops.add(stdin)
            } else {
                ops.remove(stdin)
            };
            match r {
                Ok(()) => self.watching_stdin = want_stdin,
                Err(e) => log::info!("console input from stdin is off: {e}"),
            }
        }
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        // SAFETY: reading into a stack buffer of the stated length from a plain fd.
        let n = unsafe { libc::read(self.stdin, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => {
                // EOF: stop watching stdin for good.
                let _ = ops.remove(Events::new_raw(self.stdin, EventSet::IN));
                self.watching_stdin = false;
                self.escape = None;
                self.stdin = -1;
            }
            n if n > 0 => {
                self.take_input(&buf[..n as usize]);
                self.flush_pending();
                if self.pending.len() > PENDING_MAX {
                    log::warn!(
                        "console input overflow: dropping {} bytes",
                        self.pending.len()
                    );
                    self.pending.clear();
                }
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted
                    && e.kind() != std::io::ErrorKind::WouldBlock
                {
                    log::info!("console input from stdin stopped: {e}");
                    let _ = ops.remove(Events::new_raw(self.stdin, EventSet::IN));
                    self.watching_stdin = false;
                    self.stdin = -1;
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let space_fd = self
            .sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .space_event()
            .as_raw_fd();
        if events.fd() == space_fd {
            let sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
            let _ = sink.space_event().read();
            drop(sink);
            self.flush_pending();
        } else if events.fd() == self.stdin {
            if events.event_set().contains(EventSet::IN) {
                self.read_stdin(ops);
            } else {
                // HUP/ERR without data: the other end is gone.
                let _ = ops.remove(Events::new_raw(self.stdin, EventSet::IN));
                self.watching_stdin = false;
                self.stdin = -1;
            }
        }
        if self.stdin >= 0 {
            self.watch(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let sink = self.sink.clone();
        let sink = sink.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ops.add(Events::new(sink.space_event(), EventSet::IN)) {
            log::error!("cannot watch the console's input space event: {e}");
        }
        drop(sink);
        if self.stdin >= 0 {
            self.watch(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fifo {
        cap: usize,
        got: Vec<u8>,
        evt: EventFd,
    }
    impl ConsoleSink for Fifo {
        fn enqueue(&mut self, b: &[u8]) -> usize {
            let n = b.len().min(self.cap - self.got.len());
            self.got.extend_from_slice(&b[..n]);
            n
        }
        fn space_event(&self) -> &EventFd {
            &self.evt
        }
    }

    fn console(tty: bool, cap: usize) -> (ConsoleInput, Arc<Mutex<Fifo>>, Arc<ExitState>) {
        let fifo = Arc::new(Mutex::new(Fifo {
            cap,
            got: vec![],
            evt: EventFd::new(0).unwrap(),
        }));
        let exit = Arc::new(ExitState::new().unwrap());
        (
            ConsoleInput::new(-1, tty, fifo.clone(), exit.clone()),
            fifo,
            exit,
        )
    }

    #[test]
    fn escape_sequences_on_a_tty() {
        let (mut c, fifo, exit) = console(true, 64);
        c.take_input(b"ab\x01\x01c\x01zd");
        c.flush_pending();
        assert_eq!(fifo.lock().unwrap().got, b"ab\x01cd");
        assert_eq!(exit.reason(), None);
        c.take_input(b"\x01x");
        assert_eq!(exit.reason(), Some(ExitReason::Signal(libc::SIGINT)));
    }

    #[test]
    fn no_escape_on_a_pipe() {
        let (mut c, fifo, exit) = console(false, 64);
        c.take_input(b"\x01x");
        c.flush_pending();
        assert_eq!(fifo.lock().unwrap().got, b"\x01x");
        assert_eq!(exit.reason(), None);
    }

    #[test]
    fn full_fifo_keeps_bytes_pending() {
        let (mut c, fifo, _) = console(false, 4);
        c.take_input(b"123456");
        c.flush_pending();
        assert_eq!(fifo.lock().unwrap().got, b"1234");
        assert_eq!(c.pending.len(), 2);
        fifo.lock().unwrap().got.clear();
        c.flush_pending();
        assert_eq!(fifo.lock().unwrap().got, b"56");
        assert!(c.pending.is_empty());
    }
}
