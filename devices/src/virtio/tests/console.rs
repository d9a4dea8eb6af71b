//! virtio-console through the transport, as a guest driver uses it: guest output to a pipe the
//! test reads (or leaves full, or closes), host input into the driver's receive buffers, the
//! configuration, and a stop that a full output cannot hold up.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::*;
use crate::virtio::console::{
    Console, ConsoleStats, HostInput, HostOutput, CONFIG_LEN, INPUT_MAX, QUEUE_SIZE, RX_QUEUE,
    TX_QUEUE,
};
use crate::virtio::pci::DEVICE_CFG_OFFSET;
use crate::virtio::{TRANSPORT_FEATURES, VIRTIO_TYPE_CONSOLE};

/// Guest buffers start here (the rings are below 0x30000).
const BUF: u64 = 0x10_0000;

/// A pipe: (read end, write end).
fn pipe() -> (File, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, an array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: a fresh descriptor owned by nobody else.
    let read = unsafe { File::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    (read, write)
}

/// Shrinks the pipe to one page, so a test fills it quickly.
fn small_pipe(read: &File) {
    // SAFETY: F_SETPIPE_SZ takes an int; no pointers.
    let r = unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(r >= 4096, "F_SETPIPE_SZ");
}

/// Bytes waiting in the pipe.
fn buffered(read: &File) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into `n`.
    let r = unsafe { libc::ioctl(read.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(r, 0);
    n as usize
}

struct Rig {
    d: Driver,
    out: File,
    input: Arc<HostInput>,
    stats: Arc<ConsoleStats>,
    /// The pipe's write end the device's output was opened from (kept, as stdout would be).
    _w: OwnedFd,
}

fn rig_with(before_start: impl FnOnce(&File, &HostInput)) -> Rig {
    rig_draining(before_start, Duration::ZERO)
}

fn rig_draining(before_start: impl FnOnce(&File, &HostInput), stop_drain: Duration) -> Rig {
    let (out, w) = pipe();
    let input = Arc::new(HostInput::new().unwrap());
    before_start(&out, &input);
    let console = Console::new(input.clone(), HostOutput::for_fd(w.as_raw_fd()).unwrap())
        .with_stop_drain(stop_drain);
    let stats = console.stats();
    let mut d = Driver::named("virtio-con-test", Box::new(console));
    d.bring_up(0, &[QUEUE_SIZE, QUEUE_SIZE]);
    Rig {
        d,
        out,
        input,
        stats,
        _w: w,
    }
}

fn rig() -> Rig {
    rig_with(|_, _| {})
}

impl Rig {
    /// Publishes a transmit chain of `(bytes, writable)` buffers at BUF + 0x1000 * k.
    fn send(&mut self, parts: &[(&[u8], bool)]) {
        let mut bufs = Vec::new();
        for (k, (bytes, w)) in parts.iter().enumerate() {
            let at = BUF + 0x1000 * k as u64;
            self.d.mem.write_slice(bytes, GuestAddress(at)).unwrap();
            bufs.push((at, bytes.len() as u32, *w));
        }
        let m = self.d.mem.clone();
        self.d.queues[usize::from(TX_QUEUE)].add(&m, &bufs);
        self.d.notify(TX_QUEUE);
    }

    /// Lends a receive buffer of `len` bytes at `at`.
    fn lend(&mut self, at: u64, len: u32) {
        let m = self.d.mem.clone();
        self.d.queues[usize::from(RX_QUEUE)].add(&m, &[(at, len, true)]);
        self.d.notify(RX_QUEUE);
    }

    fn read_out(&mut self, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        self.out.read_exact(&mut got).unwrap();
        got
    }
}

#[test]
fn identity_features_and_configuration() {
    let (_out, w) = pipe();
    let input = Arc::new(HostInput::new().unwrap());
    let console = Console::new(input, HostOutput::for_fd(w.as_raw_fd()).unwrap());
    assert_eq!(console.device_type(), VIRTIO_TYPE_CONSOLE);
    let mut d = Driver::new(Box::new(console));
    assert_eq!(d.cfg_read16(2), 0x1043, "device ID 0x1040 + 3");
    // No device features: neither SIZE (no honest terminal size), MULTIPORT nor EMERG_WRITE.
    assert_eq!(d.device_features(), TRANSPORT_FEATURES);
    let mut c = [0u8; CONFIG_LEN];
    for (i, b) in c.iter_mut().enumerate() {
        *b = d.read8(DEVICE_CFG_OFFSET + i as u64);
    }
    assert_eq!(
        c,
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        "cols, rows, max_nr_ports 1"
    );
    // emerg_wr is not offered: a write changes nothing and outputs nothing.
    d.write32(DEVICE_CFG_OFFSET + 8, u32::from(b'!'));
    assert_eq!(d.read32(DEVICE_CFG_OFFSET + 8), 0);
    assert_eq!(d.read32(DEVICE_CFG_OFFSET + 12), 0, "past the structure");
    // SIZE asked for without being offered: FEATURES_OK does not stick.
    assert!(!d.negotiate(VIRTIO_F_VERSION_1 | crate::virtio::console::features::SIZE));
}

#[test]
fn guest_output_reaches_the_host_in_order() {
    let mut r = rig();
    r.send(&[(b"hello, ", false), (b"host\n", false)]);
    assert_eq!(r.read_out(12), b"hello, host\n");
    // Writable buffers in a transmit chain are ignored; the chain completes with 0.
    r.send(&[(b"second", false), (b"XXXX", true)]);
    assert_eq!(r.read_out(6), b"second");
    let q = &mut r.d.queues[usize::from(TX_QUEUE)];
    let m = r.d.mem.clone();
    assert_eq!(q.wait_used(&m), (0, 0));
    assert_eq!(q.wait_used(&m), (2, 0));
    assert!(!r.d.wait_deliveries(1).is_empty(), "completions interrupt");
    assert_eq!(r.stats.tx_bytes.load(Ordering::Relaxed), 18);
}

#[test]
fn host_input_fills_receive_buffers_in_order() {
    // Input typed before the driver is up waits for it.
    let mut r = rig_with(|_, input| assert_eq!(input.push(b"early "), 6));
    r.lend(BUF, 4);
    r.lend(BUF + 0x1000, 64);
    let m = r.d.mem.clone();
    let q = usize::from(RX_QUEUE);
    assert_eq!(r.d.queues[q].wait_used(&m), (0, 4));
    assert_eq!(r.d.queues[q].wait_used(&m), (1, 2));
    assert_eq!(r.input.push(b"late"), 4);
    r.lend(BUF + 0x2000, 64);
    assert_eq!(r.d.queues[q].wait_used(&m), (2, 4));
    let mut got = vec![0u8; 4];
    m.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(got, b"earl");
    let mut got = vec![0u8; 2];
    m.read_slice(&mut got, GuestAddress(BUF + 0x1000)).unwrap();
    assert_eq!(got, b"y ");
    let mut got = vec![0u8; 4];
    m.read_slice(&mut got, GuestAddress(BUF + 0x2000)).unwrap();
    assert_eq!(got, b"late");
    assert_eq!(r.stats.rx_bytes.load(Ordering::Relaxed), 10);
    assert!(r.input.is_empty());
}

#[test]
fn full_input_buffer_takes_a_prefix_and_signals_room() {
    let mut r = rig();
    let big = vec![b'a'; INPUT_MAX + 100];
    assert_eq!(r.input.push(&big), INPUT_MAX);
    assert_eq!(r.input.push(b"more"), 0, "full");
    assert!(r.input.space_event().read().is_err(), "no room yet");
    r.lend(BUF, 1024);
    let m = r.d.mem.clone();
    assert_eq!(r.d.queues[usize::from(RX_QUEUE)].wait_used(&m), (0, 1024));
    let start = Instant::now();
    while r.input.space_event().read().is_err() {
        assert!(start.elapsed() < WAIT, "room was never signalled");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(r.input.push(&big[..2000]), 1024);
}

#[test]
fn a_full_output_holds_chains_back_and_never_holds_up_a_stop() {
    let mut r = rig_with(|out, _| small_pipe(out));
    // Far more than the pipe and the device's own buffer hold, a page per chain.
    let page = [b'z'; 4096];
    let chains = 2 * crate::virtio::console::TX_PENDING_MAX / 4096 + 8;
    let m = r.d.mem.clone();
    m.write_slice(&page, GuestAddress(BUF)).unwrap();
    for _ in 0..chains.min(usize::from(QUEUE_SIZE)) {
        r.d.queues[usize::from(TX_QUEUE)].add(&m, &[(BUF, 4096, false)]);
    }
    r.d.notify(TX_QUEUE);
    // It takes what fits in the pipe and its own buffer, then leaves the rest in the ring.
    let q = usize::from(TX_QUEUE);
    let mut last = u16::MAX;
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = r.d.queues[q].used_idx(&m);
        if now == last {
            break;
        }
        last = now;
        assert!(start.elapsed() < WAIT, "the used index never settled");
    }
    assert!(usize::from(last) < chains, "took {last} of {chains} chains");
    assert!(buffered(&r.out) > 0);
    // A reset stops the I/O thread at once, full pipe or not. (On a thread of its own, so a
    // device stuck in a write fails the test instead of hanging it.)
    let Rig {
        mut d, stats, out, ..
    } = r;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        d.set_status(0);
        let _ = tx.send((d.status(), d.dev.running(), start.elapsed()));
    });
    let (status, running, took) = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("the reset did not return: the I/O thread is stuck writing to a full output");
    assert_eq!((status, running), (0, false));
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(stats.tx_dropped.load(Ordering::Relaxed) > 0, "counted");
    drop(out);
}

/// With a stop drain (the `--exec` consoles), output the device took but could not write yet
/// still reaches a reader that reads during the stop: nothing is dropped.
#[test]
fn a_stop_drain_writes_what_was_taken_while_the_reader_reads() {
    let mut r = rig_draining(|out, _| small_pipe(out), Duration::from_secs(2));
    let m = r.d.mem.clone();
    // 8 chains of 4000 bytes: more than the one-page pipe, less than the device's own buffer,
    // so every chain is taken and completed while most of it waits in the device.
    let text: Vec<u8> = (0..32_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (k, part) in text.chunks(4000).enumerate() {
        let at = BUF + 0x1000 * k as u64;
        m.write_slice(part, GuestAddress(at)).unwrap();
        r.d.queues[usize::from(TX_QUEUE)].add(&m, &[(at, 4000, false)]);
    }
    r.d.notify(TX_QUEUE);
    let start = Instant::now();
    while r.d.queues[usize::from(TX_QUEUE)].used_idx(&m) < 8 {
        assert!(start.elapsed() < WAIT, "the chains were not all taken");
        std::thread::sleep(Duration::from_millis(5));
    }
    let Rig {
        mut d,
        stats,
        mut out,
        ..
    } = r;
    // The stop comes while the pipe is full; the reader starts 200 ms later.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let start = Instant::now();
        while got.len() < text.len() && start.elapsed() < Duration::from_secs(3) {
            if buffered(&out) > 0 {
                let n = out.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(
            got == text,
            "{} of {} bytes, or they differ",
            got.len(),
            text.len()
        );
    });
    d.set_status(0);
    reader.join().unwrap();
    assert_eq!(stats.tx_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn output_resumes_when_the_reader_catches_up() {
    let mut r = rig_with(|out, _| small_pipe(out));
    let m = r.d.mem.clone();
    let text: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    // 50 chains of 4000 bytes: more than the pipe and the device's buffer together.
    let q = usize::from(TX_QUEUE);
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let start = Instant::now();
    while got.len() < text.len() {
        assert!(start.elapsed() < 4 * WAIT, "stalled at {} bytes", got.len());
        if sent < text.len() && r.d.queues[q].used_idx(&m) as usize * 4000 + 64_000 > sent {
            let k = sent / 4000 % 16;
            let at = BUF + 0x1000 * k as u64;
            m.write_slice(&text[sent..sent + 4000], GuestAddress(at))
                .unwrap();
            r.d.queues[q].add(&m, &[(at, 4000, false)]);
            r.d.notify(TX_QUEUE);
            sent += 4000;
        }
        if buffered(&r.out) > 0 {
            let n = r.out.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert!(got == text, "output differs");
    assert_eq!(r.stats.tx_dropped.load(Ordering::Relaxed), 0);
}

#[test]
fn a_closed_reader_drops_output_but_chains_still_complete() {
    let mut r = rig();
    r.send(&[(b"first\n", false)]);
    assert_eq!(r.read_out(6), b"first\n");
    let Rig { mut d, out, .. } = r;
    drop(out);
    let m = d.mem.clone();
    let q = usize::from(TX_QUEUE);
    assert_eq!(d.queues[q].wait_used(&m), (0, 0));
    for _ in 0..3 {
        m.write_slice(b"lost", GuestAddress(BUF)).unwrap();
        d.queues[q].add(&m, &[(BUF, 4, false)]);
        d.notify(TX_QUEUE);
        d.queues[q].wait_used(&m);
    }
    assert_eq!(d.status() & crate::virtio::STATUS_NEEDS_RESET, 0);
}

#[test]
fn output_to_a_regular_file_and_a_socket() {
    // A file never waits; a socket is written with MSG_DONTWAIT.
    let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let f = tmp.as_file();
    let out = HostOutput::for_fd(f.as_raw_fd()).unwrap();
    let input = Arc::new(HostInput::new().unwrap());
    let mut d = Driver::named("virtio-con-file", Box::new(Console::new(input, out)));
    d.bring_up(0, &[QUEUE_SIZE, QUEUE_SIZE]);
    let m = d.mem.clone();
    m.write_slice(b"to a file", GuestAddress(BUF)).unwrap();
    d.queues[usize::from(TX_QUEUE)].add(&m, &[(BUF, 9, false)]);
    d.notify(TX_QUEUE);
    d.queues[usize::from(TX_QUEUE)].wait_used(&m);
    let mut s = String::new();
    File::open(tmp.as_path())
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "to a file");

    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let out = HostOutput::for_fd(a.as_raw_fd()).unwrap();
    let input = Arc::new(HostInput::new().unwrap());
    let mut d = Driver::named("virtio-con-sock", Box::new(Console::new(input, out)));
    d.bring_up(0, &[QUEUE_SIZE, QUEUE_SIZE]);
    let m = d.mem.clone();
    m.write_slice(b"to a socket", GuestAddress(BUF)).unwrap();
    d.queues[usize::from(TX_QUEUE)].add(&m, &[(BUF, 11, false)]);
    d.notify(TX_QUEUE);
    let mut got = [0u8; 11];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to a socket");
}

#[test]
fn reopened_output_leaves_the_original_descriptor_blocking() {
    let (_out, w) = pipe();
    let _o = HostOutput::for_fd(w.as_raw_fd()).unwrap();
    // SAFETY: F_GETFL takes no pointers.
    let fl = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(
        fl & libc::O_NONBLOCK,
        0,
        "the serial port's stdout must stay as it was"
    );
}

#[test]
fn a_pipe_whose_reader_is_gone_is_accepted_and_output_dropped() {
    let (out, w) = pipe();
    drop(out);
    let o = HostOutput::for_fd(w.as_raw_fd()).expect("no reader is not an error");
    let input = Arc::new(HostInput::new().unwrap());
    let console = Console::new(input, o);
    let stats = console.stats();
    let mut d = Driver::named("virtio-con-gone", Box::new(console));
    d.bring_up(0, &[QUEUE_SIZE, QUEUE_SIZE]);
    let m = d.mem.clone();
    m.write_slice(b"nobody", GuestAddress(BUF)).unwrap();
    d.queues[usize::from(TX_QUEUE)].add(&m, &[(BUF, 6, false)]);
    d.notify(TX_QUEUE);
    assert_eq!(d.queues[usize::from(TX_QUEUE)].wait_used(&m), (0, 0));
    assert_eq!(stats.tx_dropped.load(Ordering::Relaxed), 6);
}
