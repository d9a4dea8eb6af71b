//! COM1: a 16550A UART on top of `vm_superio::Serial`.
//!
//! Mapping: one range of [`SERIAL_PORT_LEN`] (8) bytes at the COM port's base; the device sees the
//! UART register offsets 0–7. Wider accesses are split into byte accesses at consecutive
//! offsets; offsets 8 and up read all ones and ignore writes.
//!
//! Interrupt: the UART signals (adds 1 to) the interrupt `EventFd` given to [`Serial::new`]; the
//! VMM registers that `EventFd` as a KVM irqfd for the COM port's GSI (4 for COM1). It is an
//! edge: each signal is one pulse on the IOAPIC pin.
//!
//! Output: every byte the guest transmits is written to `W` and flushed at once. For the VMM's
//! console, [`StdoutWriter`] writes straight to fd 1 with write(2): no buffering, `EINTR` and
//! partial writes retried, a non-blocking fd waited on, and a closed reader (`EPIPE`) or closed fd
//! (`EBADF`) makes it drop output from then on instead of failing. Write errors of other writers
//! are logged once; the guest's byte is lost but the guest never notices.
//!
//! Input: [`Serial::enqueue_input`] puts host bytes into the 64-byte receive FIFO and returns how
//! many it took. When it took fewer than offered, the FIFO is full: the VMM should stop reading
//! its input source, keep the rest, and wait for the RX-drained `EventFd` (given to
//! [`Serial::new`]): it is signalled once when the guest has read the FIFO empty, after which the
//! VMM reads the `EventFd` (to reset it), offers the rest again and resumes reading input.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vm_superio::serial::{Error as UartError, SerialEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::legacy::Once;

/// Length of the port range of one UART.
pub const SERIAL_PORT_LEN: u64 = 8;
/// The UART's registers (offsets 0–7): RBR/THR/DLL, IER/DLM, IIR/FCR, LCR, MCR, LSR, MSR, SCR.
const UART_REGS: u64 = 8;

/// An `EventFd` as a `vm_superio` interrupt trigger: each trigger adds 1 to its counter.
#[derive(Debug)]
struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Serial events: signals the RX-drained `EventFd` when the guest empties the receive FIFO,
/// but only after [`Serial::enqueue_input`] found the FIFO full (armed), so the `EventFd` is
/// not signalled on every read of an empty FIFO.
#[derive(Debug)]
struct RxEvents {
    rx_drained: EventFd,
    armed: AtomicBool,
    warned: AtomicBool,
}

impl SerialEvents for RxEvents {
    fn buffer_read(&self) {}

    fn out_byte(&self) {}

    fn tx_lost_byte(&self) {}

    fn in_buffer_empty(&self) {
        if self.armed.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.rx_drained.write(1) {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    log::warn!("serial: cannot signal the RX-drained event: {e}");
                }
            }
        }
    }
}

/// A 16550A UART as a bus device, writing guest output to `W`.
pub struct Serial<W: Write + Send> {
    uart: vm_superio::Serial<EventFdTrigger, RxEvents, W>,
    warned_output: Once,
    warned_trigger: Once,
}

impl<W: Write + Send> std::fmt::Debug for Serial<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("state", &self.uart.state())
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send> Serial<W> {
    /// A UART that signals `interrupt` when it raises its interrupt, signals `rx_drained` when
    /// the guest empties a receive FIFO that [`Serial::enqueue_input`] found full, and writes
    /// the guest's output to `out`. Keep clones (`EventFd::try_clone`) of both `EventFd`s to
    /// register the irqfd and to poll.
    pub fn new(interrupt: EventFd, rx_drained: EventFd, out: W) -> Self {
        let events = RxEvents {
            rx_drained,
            armed: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        };
        Serial {
            uart: vm_superio::Serial::with_events(EventFdTrigger(interrupt), events, out),
            warned_output: Once::default(),
            warned_trigger: Once::default(),
        }
    }

    /// Offers host input to the guest; returns how many bytes of `bytes` were taken (a prefix).
    /// Fewer than offered means the receive FIFO is full: wait for the RX-drained `EventFd`.
    /// Input that arrives while the guest has the UART in loop-back mode is discarded (all of
    /// it is reported taken), as the receive line is disconnected then.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() {
            return 0;
        }
        let before = self.uart.fifo_capacity();
        let taken = match self.uart.enqueue_raw_bytes(bytes) {
            // In loop-back mode the UART takes nothing and reports success.
            Ok(0) => return bytes.len(),
            Ok(n) => n,
            Err(UartError::FullFifo) => 0,
            Err(e) => {
                self.log_error(&e);
                // The bytes went in even if the interrupt could not be signalled.
                before.saturating_sub(self.uart.fifo_capacity())
            }
        };
        if taken < bytes.len() {
            self.uart.events().armed.store(true, Ordering::Relaxed);
        }
        taken
    }

    /// Free space in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The output writer.
    pub fn writer(&self) -> &W {
        self.uart.writer()
    }

    fn log_error(&mut self, e: &UartError<io::Error>) {
        match e {
            UartError::Trigger(e) => {
                if self.warned_trigger.first() {
                    log::warn!("serial: cannot signal the interrupt EventFd, guest interrupts are lost: {e}");
                }
            }
            UartError::IOError(e) => {
                if self.warned_output.first() {
                    log::warn!("serial: cannot write guest output, it is dropped: {e}");
                }
            }
            UartError::FullFifo => {}
        }
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        super::read_bytes(offset, data, 0xff, |o| {
            if o < UART_REGS {
                self.uart.read(o as u8)
            } else {
                0xff
            }
        });
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        super::write_bytes(offset, data, |o, v| {
            if o < UART_REGS {
                if let Err(e) = self.uart.write(o as u8, v) {
                    self.log_error(&e);
                }
            }
        });
    }
}

/// A writer that sends everything straight to a file descriptor with write(2), unbuffered.
///
/// Each `write` writes the whole buffer: it retries `EINTR` and partial writes, and waits with
/// poll(2) when the fd is non-blocking and full. Once the fd reports `EPIPE` (no reader) or
/// `EBADF` (closed), the writer drops all output and reports success, so a guest's console
/// cannot fail or stall the VMM because nobody is listening.
///
/// With an abort flag ([`FdWriter::with_abort`]), a write blocked on a full fd gives up once the
/// flag is set and a signal interrupts it (the VMM sets the flag and kicks the vCPU threads when
/// the VM stops): the bytes not yet written are dropped and counted in one warning, so a console
/// nobody reads cannot keep a vCPU, and with it the VM, from stopping.
#[derive(Debug)]
pub struct FdWriter<F: AsFd> {
    fd: F,
    broken: bool,
    abort: Option<Arc<AtomicBool>>,
    dropped: u64,
}

/// How often a blocked write with an abort flag re-checks the flag, in ms.
pub const ABORT_POLL_MS: i32 = 100;

/// An [`FdWriter`] for the process's standard output.
pub type StdoutWriter = FdWriter<io::Stdout>;

impl FdWriter<io::Stdout> {
    /// A writer to fd 1 (the `Stdout` handle is only used for its fd; its buffer is bypassed).
    pub fn stdout() -> Self {
        FdWriter::new(io::stdout())
    }

    /// [`FdWriter::stdout`] that gives up blocked writes once `abort` is set.
    pub fn stdout_with_abort(abort: Arc<AtomicBool>) -> Self {
        FdWriter::with_abort(io::stdout(), abort)
    }
}

impl<F: AsFd> FdWriter<F> {
    /// A writer to `fd`.
    pub fn new(fd: F) -> Self {
        FdWriter {
            fd,
            broken: false,
            abort: None,
            dropped: 0,
        }
    }

    /// A writer to `fd` whose blocked writes give up once `abort` is set (see [`FdWriter`]).
    pub fn with_abort(fd: F, abort: Arc<AtomicBool>) -> Self {
        FdWriter {
            fd,
            broken: false,
            abort: Some(abort),
            dropped: 0,
        }
    }

    fn aborted(&self) -> bool {
        self.abort
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Acquire))
    }

    /// Bytes dropped because the VM stopped while the fd was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether output is being dropped because the fd's reader went away or the fd was closed.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// One write(2).
    fn write_once(&self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.fd.as_fd().as_raw_fd();
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call, and
        // write(2) only reads it; `fd` is borrowed from `self.fd`, which outlives the call.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Blocks until the fd is writable (or has an error condition a write will report), or a
    /// signal interrupts the wait. With an abort flag the wait also ends every
    /// [`ABORT_POLL_MS`]: a kick that lands between the flag check and `poll` is lost, and the
    /// re-check then bounds how long a stopping VM waits for this vCPU.
    fn wait_writable(&self) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_fd().as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let timeout = if self.abort.is_some() {
            ABORT_POLL_MS
        } else {
            -1
        };
        // SAFETY: `pfd` is a valid, exclusively borrowed pollfd array of length 1 for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    fn break_off(&mut self, e: &io::Error) {
        self.broken = true;
        log::info!("serial output: {e}; dropping further guest output");
    }
}

impl<F: AsFd> Drop for FdWriter<F> {
    fn drop(&mut self) {
        if self.dropped > 0 {
            log::warn!(
                "serial output: {} byte{} of guest output were dropped at the stop because nobody read them",
                self.dropped,
                if self.dropped == 1 { "" } else { "s" }
            );
        }
    }
}

impl<F: AsFd> Write for FdWriter<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() && !self.broken {
            match self.write_once(&buf[done..]) {
                Ok(0) => {
                    // write(2) returns 0 for a non-empty buffer only on odd files; do not spin.
                    return Err(io::Error::from(io::ErrorKind::WriteZero));
                }
                Ok(n) => done += n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) => self.wait_writable()?,
                    Some(libc::EPIPE | libc::EBADF) => self.break_off(&e),
                    _ => return Err(e),
                },
            }
            // Interrupted or still full: if the VM is stopping, nobody will read the rest in time.
            if done < buf.len() && self.aborted() {
                if self.dropped == 0 {
                    log::warn!(
                        "serial output: the VM is stopping and the console's reader is not reading; guest output it did not take is dropped"
                    );
                }
                self.dropped += (buf.len() - done) as u64;
                break;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::SIZES;
    use std::fs::File;
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};

    // UART register offsets and bits used by the tests.
    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LCR_DLAB: u8 = 0x80;
    const MCR_LOOP: u8 = 0x10;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE: u8 = 0x20;
    const FIFO: usize = 64;

    fn evt() -> EventFd {
        crate::new_eventfd().unwrap()
    }

    /// A serial port writing into a `Vec`, with clones of its interrupt and RX-drained events.
    fn serial() -> (Serial<Vec<u8>>, EventFd, EventFd) {
        let irq = evt();
        let drained = evt();
        let s = Serial::new(
            irq.try_clone().unwrap(),
            drained.try_clone().unwrap(),
            Vec::new(),
        );
        (s, irq, drained)
    }

    fn rd(s: &mut Serial<Vec<u8>>, offset: u64) -> u8 {
        let mut d = [0u8];
        s.read(0x3f8, offset, &mut d);
        d[0]
    }

    fn wr(s: &mut Serial<Vec<u8>>, offset: u64, v: u8) {
        s.write(0x3f8, offset, &[v]);
    }

    fn signalled(e: &EventFd) -> bool {
        e.read().is_ok()
    }

    #[test]
    fn output_bytes_reach_the_writer() {
        let (mut s, _, _) = serial();
        for &b in b"hello\n" {
            assert_ne!(rd(&mut s, LSR) & LSR_THRE, 0);
            wr(&mut s, DATA, b);
        }
        assert_eq!(s.writer().as_slice(), b"hello\n");
    }

    #[test]
    fn thre_interrupt_signals_the_eventfd() {
        let (mut s, irq, _) = serial();
        assert!(!signalled(&irq));
        wr(&mut s, IER, IER_THRE);
        assert!(signalled(&irq));
        // Reading IIR acknowledges it; the next byte raises it again.
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
        wr(&mut s, DATA, b'x');
        assert!(signalled(&irq));
    }

    #[test]
    fn input_reaches_the_guest_with_an_interrupt() {
        let (mut s, irq, _) = serial();
        wr(&mut s, IER, IER_RDA);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert!(signalled(&irq));
        assert_ne!(rd(&mut s, LSR) & LSR_DR, 0);
        assert_eq!(rd(&mut s, DATA), b'a');
        assert_eq!(rd(&mut s, DATA), b'b');
        assert_eq!(rd(&mut s, LSR) & LSR_DR, 0);
        assert_eq!(s.enqueue_input(b""), 0);
    }

    #[test]
    fn input_respects_fifo_capacity_and_drained_event_fires_once() {
        let (mut s, _, drained) = serial();
        let input: Vec<u8> = (0..100u8).collect();
        assert_eq!(s.enqueue_input(&input), FIFO);
        assert_eq!(s.fifo_capacity(), 0);
        assert_eq!(s.enqueue_input(&input[FIFO..]), 0);
        assert!(!signalled(&drained));
        // The guest reads all but one byte: not drained yet.
        for expect in 0..FIFO as u8 - 1 {
            assert_eq!(rd(&mut s, DATA), expect);
        }
        assert!(!signalled(&drained));
        assert_eq!(rd(&mut s, DATA), FIFO as u8 - 1);
        assert!(signalled(&drained));
        // The VMM offers the rest.
        assert_eq!(s.enqueue_input(&input[FIFO..]), 100 - FIFO);
        for expect in FIFO as u8..100 {
            assert_eq!(rd(&mut s, DATA), expect);
        }
        // Not armed: everything was taken, so no event this time.
        assert!(!signalled(&drained));
        // Reads of an empty FIFO do not signal either.
        rd(&mut s, DATA);
        assert!(!signalled(&drained));
    }

    #[test]
    fn partial_enqueue_arms_the_drained_event() {
        let (mut s, _, drained) = serial();
        assert_eq!(s.enqueue_input(&[1; FIFO - 2]), FIFO - 2);
        assert_eq!(s.enqueue_input(&[2; 5]), 2);
        for _ in 0..FIFO {
            rd(&mut s, DATA);
        }
        assert!(signalled(&drained));
    }

    #[test]
    fn loopback_input_is_discarded() {
        let (mut s, _, _) = serial();
        wr(&mut s, MCR, MCR_LOOP);
        assert_eq!(s.enqueue_input(b"xyz"), 3);
        assert_eq!(rd(&mut s, LSR) & LSR_DR, 0);
        // Transmitted bytes come back in loop-back mode instead of reaching the writer.
        wr(&mut s, DATA, b'q');
        assert_eq!(rd(&mut s, DATA), b'q');
        assert!(s.writer().is_empty());
    }

    #[test]
    fn dlab_and_scratch_registers() {
        let (mut s, _, _) = serial();
        wr(&mut s, LCR, LCR_DLAB | 0x03);
        wr(&mut s, DATA, 0x01);
        wr(&mut s, IER, 0x00);
        assert_eq!(rd(&mut s, DATA), 0x01);
        wr(&mut s, LCR, 0x03);
        // The divisor write did not transmit anything.
        assert!(s.writer().is_empty());
        wr(&mut s, SCR, 0xa5);
        assert_eq!(rd(&mut s, SCR), 0xa5);
    }

    #[test]
    fn wide_accesses_split_and_out_of_range_ignored() {
        let (mut s, _, _) = serial();
        // A 16-bit write at 6 hits MSR (read-only) and SCR.
        s.write(0x3f8, 6, &[0x11, 0x22]);
        assert_eq!(rd(&mut s, SCR), 0x22);
        let mut d = [0u8; 3];
        s.read(0x3f8, 6, &mut d);
        assert_eq!(d[1..], [0x22, 0xff]);
        s.write(0x3f8, 8, b"no");
        assert!(s.writer().is_empty());
    }

    #[test]
    fn hostile_accesses_do_not_panic() {
        let (mut s, _, _) = serial();
        for offset in (0..SERIAL_PORT_LEN + 4).chain([u64::MAX - 1, u64::MAX]) {
            for size in SIZES {
                for value in [0x00u8, 0x80, 0x10, 0xff] {
                    let mut d = vec![0u8; size];
                    s.read(0x3f8, offset, &mut d);
                    s.write(0x3f8, offset, &vec![value; size]);
                }
            }
        }
    }

    /// A writer that always fails.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("broken"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failing_writer_does_not_stop_the_uart() {
        let irq = evt();
        let mut s = Serial::new(irq.try_clone().unwrap(), evt(), Broken);
        s.write(0x3f8, IER, &[IER_THRE]);
        assert!(irq.read().is_ok());
        // The guest's interrupt handler reads IIR, which acknowledges THRE.
        let mut iir = [0u8];
        s.read(0x3f8, IIR, &mut iir);
        assert_eq!(iir[0] & 0x0f, 0x02);
        s.write(0x3f8, DATA, b"x");
        // The THRE interrupt still comes, so the guest's driver does not hang.
        assert!(irq.read().is_ok());
    }

    fn pipe() -> (File, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: pipe2 succeeded, so fds[0] is an open fd owned by nobody else.
        let read = unsafe { File::from_raw_fd(fds[0]) };
        // SAFETY: as above, for the write end fds[1].
        let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        (read, write)
    }

    #[test]
    fn fd_writer_writes_everything_through_a_small_nonblocking_pipe() {
        let (mut reader, write_end) = pipe();
        // A one-page pipe in non-blocking mode forces EAGAIN and partial writes.
        // SAFETY: fcntl on an fd we own, with integer arguments only.
        unsafe {
            libc::fcntl(write_end.as_raw_fd(), libc::F_SETPIPE_SZ, 4096);
        }
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(write_end.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        let r = unsafe {
            libc::fcntl(
                write_end.as_raw_fd(),
                libc::F_SETFL,
                flags | libc::O_NONBLOCK,
            )
        };
        assert_eq!(r, 0);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = std::thread::spawn(move || {
            let mut w = FdWriter::new(write_end);
            w.write_all(&data).unwrap();
            assert!(!w.is_broken());
            // Dropping the writer closes the pipe: the reader sees EOF.
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            // Read slowly so the writer keeps hitting a full pipe.
            std::thread::sleep(std::time::Duration::from_micros(50));
            match reader.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        writer.join().unwrap();
        assert_eq!(got.len(), expect.len());
        assert!(got == expect);
    }

    #[test]
    fn fd_writer_drops_output_after_epipe() {
        let (reader, write_end) = pipe();
        drop(reader);
        let mut w = FdWriter::new(write_end);
        // Rust ignores SIGPIPE, so write(2) returns EPIPE.
        assert_eq!(w.write(b"lost").unwrap(), 4);
        assert!(w.is_broken());
        w.write_all(b"still fine").unwrap();
        w.flush().unwrap();
    }

    #[test]
    fn fd_writer_drops_output_on_ebadf() {
        // A read-only fd gives EBADF on write.
        let (reader, _write_end) = pipe();
        let mut w = FdWriter::new(reader);
        assert_eq!(w.write(b"x").unwrap(), 1);
        assert!(w.is_broken());
    }

    #[test]
    fn serial_on_fd_writer_survives_a_closed_reader() {
        let (reader, write_end) = pipe();
        drop(reader);
        let mut s = Serial::new(evt(), evt(), FdWriter::new(write_end));
        s.write(0x3f8, DATA, b"hello");
        assert!(s.writer().is_broken());
    }
}
