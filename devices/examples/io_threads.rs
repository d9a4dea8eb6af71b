//! Where virtio device work runs: one I/O thread per device (vfiovm's design) against one shared
//! thread serving every device (what a shared event-manager loop would do), measured with the
//! real virtio-blk handler.
//!
//! ```text
//! cargo run --release -p vfiovm-devices --features test-util --example io_threads -- \
//!     [--seconds 3] [--runs 3] [--io sync,uring] [--direct off,on] [--qd 32] \
//!     [--image-a /var/tmp/vfiovm-io-threads-a.raw] [--image-b /var/tmp/vfiovm-io-threads-b.raw] \
//!     [--a blk|rng]
//! ```
//!
//! Two disks, each with its own "guest" (a driver thread standing in for a vCPU):
//! - disk A (1 GiB image, read-only) gets 4 KiB random reads, `qd` kept available; its driver
//!   timestamps each request when it makes it available and again when it finds it on the used
//!   ring, which gives the latency (median, p99) and the IOPS;
//! - disk B (256 MiB image) gets a 1 MiB write at a random 1 MiB-aligned offset, then a FLUSH
//!   (`fdatasync` on the host), then the next write: one request at a time, as
//!   `fio --fdatasync=1` does.
//!
//! With `--a rng` device A is a virtio-rng instead, `qd` requests of 4 KiB each kept available
//! (`--io` and `--direct` then apply to disk B only).
//!
//! The device side is the I/O thread's loop ([`serve`], a copy of `worker.rs`'s loop without
//! the interrupt resampling): `epoll_wait` on each device's notify eventfd (level-triggered,
//! drained when it fires) and the handler's own descriptors (the io_uring's eventfd,
//! edge-triggered), then `QueueSet::serve` for a queue the handler does not serve itself or
//! `QueueSet::ready` for one it does, then a write to the device's "interrupt" eventfd when the
//! queue asks for one (what the irqfd write is under KVM). The drivers honour the
//! used ring's `NO_NOTIFY` flag and sleep on their interrupt eventfd, as a guest does.
//!
//! Arrangements, same loop, only the grouping differs:
//! - `alone`: disk A only, on its own thread (the reference);
//! - `per-device`: disk A and disk B, each on its own thread (vfiovm);
//! - `shared`: disk A and disk B on one thread that waits on both devices' descriptors with one
//!   `epoll_wait` and serves whichever is ready.
//!
//! `direct=off` runs read A's image whole first, so A's reads hit the page cache (the device's
//! own cost shows); B's writes go to the page cache and its flushes to the disk. `direct=on`
//! puts both disks' I/O on the disk. Results in `docs/benchmarks.md`.

use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfiovm_devices::virtio::blk::{Block, BlockConfig, BlockIo};
use vfiovm_devices::virtio::rng::Rng;
use vfiovm_devices::virtio::test_util::QueueSet;
use vfiovm_devices::virtio::{QueueHandler, Ready, VirtioDevice, VIRTIO_F_VERSION_1};
use vfiovm_devices::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vfiovm_devices::vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vfiovm_devices::vmm_sys_util::eventfd::EventFd;

type Mem = GuestMemoryMmap<()>;

const QSIZE: u16 = 256;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Request slot *k*: header at `HDRS + 16 k`, status at `STATUS + k`; descriptors `3k` (head),
/// `3k + 1`, `3k + 2`.
const HDRS: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
/// Data: disk A's slot *k* at `DATA + 4096 k`; disk B's one 1 MiB buffer at `DATA`.
const DATA: u64 = 0x10_0000;
const BLOCK: u64 = 4096;
const BIG: u64 = 1 << 20;
/// `VRING_USED_F_NO_NOTIFY`.
const NO_NOTIFY: u16 = 1;
/// Request types (virtio 1.x 5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
/// Descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

struct Opts {
    image_a: std::path::PathBuf,
    image_b: std::path::PathBuf,
    seconds: f64,
    warmup: f64,
    runs: usize,
    qd: u16,
    ios: Vec<BlockIo>,
    directs: Vec<bool>,
    /// Device A is a virtio-rng instead of a disk.
    rng: bool,
}

fn opts() -> Opts {
    let mut o = Opts {
        image_a: "/var/tmp/vfiovm-io-threads-a.raw".into(),
        image_b: "/var/tmp/vfiovm-io-threads-b.raw".into(),
        seconds: 3.0,
        warmup: 0.5,
        runs: 3,
        qd: 32,
        ios: vec![BlockIo::Sync, BlockIo::Uring],
        directs: vec![false, true],
        rng: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--image-a" => o.image_a = v.into(),
            "--image-b" => o.image_b = v.into(),
            "--seconds" => o.seconds = v.parse().expect("--seconds S"),
            "--warmup" => o.warmup = v.parse().expect("--warmup S"),
            "--runs" => o.runs = v.parse().expect("--runs N"),
            "--a" => {
                o.rng = match v.as_str() {
                    "blk" => false,
                    "rng" => true,
                    _ => panic!("--a blk|rng"),
                }
            }
            "--qd" => {
                o.qd = v.parse().expect("--qd N");
                assert!((1..=64).contains(&o.qd), "--qd 1..=64");
            }
            "--io" => {
                o.ios = v
                    .split(',')
                    .map(|s| match s {
                        "sync" => BlockIo::Sync,
                        "uring" => BlockIo::Uring,
                        _ => panic!("--io sync,uring"),
                    })
                    .collect()
            }
            "--direct" => {
                o.directs = v
                    .split(',')
                    .map(|s| match s {
                        "off" => false,
                        "on" => true,
                        _ => panic!("--direct off,on"),
                    })
                    .collect()
            }
            _ => panic!("unknown option {a} (see the example's doc comment)"),
        }
    }
    o
}

fn make_image(path: &std::path::Path, size: u64) {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return;
    }
    eprintln!("writing {} ({} MiB)", path.display(), size >> 20);
    let mut f = std::fs::File::create(path).expect("creating the image");
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1)
        .collect();
    for _ in 0..size >> 20 {
        f.write_all(&chunk).expect("writing the image");
    }
    f.sync_all().expect("syncing the image");
}

fn warm(path: &std::path::Path) {
    let mut f = std::fs::File::open(path).expect("opening the image");
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).expect("reading the image") > 0 {}
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One device as its I/O thread holds it.
struct Dev {
    /// `'A'` or `'B'`.
    name: char,
    handler: Box<dyn QueueHandler>,
    mem: Mem,
    queues: QueueSet,
    /// Driver → device (the queue's ioeventfd).
    notify: Arc<EventFd>,
    /// Device → driver (the interrupt's irqfd).
    call: Arc<EventFd>,
    /// Kept open for the handler (the image, the ring's home); `None` for the rng.
    _block: Option<Block>,
}

/// The driver's side of a device.
struct Guest {
    mem: Mem,
    notify: Arc<EventFd>,
    call: Arc<EventFd>,
}

fn open(
    name: char,
    path: &std::path::Path,
    readonly: bool,
    direct: bool,
    io: BlockIo,
) -> (Dev, Guest) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let config = BlockConfig {
        path: path.to_path_buf(),
        readonly,
        direct,
        ..Default::default()
    };
    let mut block = Block::open_with(&config, io).expect("opening the image");
    let handler = block
        .activate(block.features() | VIRTIO_F_VERSION_1)
        .unwrap();
    assert_eq!(
        handler.serves_itself(0),
        io == BlockIo::Uring,
        "io_uring unavailable here"
    );
    wire(name, mem, handler, Some(block))
}

/// A virtio-rng as device `name`.
fn open_rng(name: char) -> (Dev, Guest) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let handler = Rng::new().activate(VIRTIO_F_VERSION_1).unwrap();
    wire(name, mem, handler, None)
}

/// Device `name` with one queue set up in `mem`, and the guest side that drives it.
fn wire(
    name: char,
    mem: Mem,
    handler: Box<dyn QueueHandler>,
    block: Option<Block>,
) -> (Dev, Guest) {
    let mut queues = QueueSet::new(1);
    queues
        .set(&mem, 0, QSIZE, QSIZE, (DESC, AVAIL, USED), false)
        .unwrap();
    let notify = Arc::new(vfiovm_devices::new_eventfd().unwrap());
    let call = Arc::new(vfiovm_devices::new_eventfd().unwrap());
    let guest = Guest {
        mem: mem.clone(),
        notify: notify.clone(),
        call: call.clone(),
    };
    let dev = Dev {
        name,
        handler,
        mem,
        queues,
        notify,
        call,
        _block: block,
    };
    (dev, guest)
}

const STOP: u64 = u64::MAX;
/// Epoll data: device `d`'s notify is `d << 8`, its handler's extra descriptor *i* `d << 8 | 1 + i`.
const PER_DEV: u64 = 1 << 8;

/// Time the serving thread spent in one device's handler.
#[derive(Default)]
struct Busy {
    total: Duration,
    longest: Duration,
}

/// The I/O thread's loop (`worker.rs`) over `devs`: returns when `stop` is readable, with the
/// time spent in each device's handler (by name).
fn serve(mut devs: Vec<Dev>, stop: &EventFd) -> Vec<(char, Busy)> {
    let epoll = Epoll::new().unwrap();
    let add = |fd: RawFd, events: EventSet, data: u64| {
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, data))
            .unwrap();
    };
    add(stop.as_raw_fd(), EventSet::IN, STOP);
    for (d, dev) in devs.iter().enumerate() {
        let base = d as u64 * PER_DEV;
        add(dev.notify.as_raw_fd(), EventSet::IN, base);
        for (i, fd) in dev.handler.extra_fds().into_iter().enumerate() {
            add(
                fd,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                base + 1 + i as u64,
            );
        }
    }
    let mut events = vec![EpollEvent::default(); 4 * devs.len() + 4];
    let mut busy: Vec<Busy> = devs.iter().map(|_| Busy::default()).collect();
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        };
        for ev in &events[..n] {
            if ev.data() == STOP {
                return devs.iter().map(|d| d.name).zip(busy).collect();
            }
            let d = (ev.data() / PER_DEV) as usize;
            let dev = &mut devs[d];
            let t0 = Instant::now();
            let why = match ev.data() % PER_DEV {
                0 => {
                    let _ = dev.notify.read();
                    Ready::Queue(0)
                }
                i => Ready::Fd(i as usize - 1),
            };
            let signal = if why == Ready::Queue(0) && !dev.handler.serves_itself(0) {
                dev.queues
                    .serve(&dev.mem, 0, dev.handler.as_mut())
                    .expect("serving the queue")
            } else {
                let (signal, error) = dev.queues.ready(&dev.mem, dev.handler.as_mut(), why);
                assert!(error.is_none(), "{error:?}");
                !signal.is_empty()
            };
            if signal {
                dev.call.write(1).unwrap();
            }
            let spent = t0.elapsed();
            busy[d].total += spent;
            busy[d].longest = busy[d].longest.max(spent);
        }
    }
}

impl Guest {
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16) {
        let at = GuestAddress(DESC + 16 * u64::from(i));
        let mem = &self.mem;
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(i + 1, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Puts block request `k` (header at `HDRS + 16 k`, head descriptor `head`) in the
    /// available ring; the index is published by [`Guest::kick`].
    fn offer(&self, avail: &mut u16, k: u16, head: u16, kind: u32, sector: u64) {
        let hdr = GuestAddress(HDRS + 16 * u64::from(k));
        self.mem.write_obj(kind, hdr).unwrap();
        self.mem.write_obj(sector, GuestAddress(hdr.0 + 8)).unwrap();
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS + u64::from(k)))
            .unwrap();
        self.offer_head(avail, head);
    }

    /// Puts the chain at descriptor `head` in the available ring.
    fn offer_head(&self, avail: &mut u16, head: u16) {
        let slot = u64::from(*avail % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        *avail = avail.wrapping_add(1);
    }

    /// Publishes the available index and notifies the device unless it asked not to be.
    fn kick(&self, avail: u16) {
        self.mem
            .store(avail, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
        fence(Ordering::SeqCst);
        let flags: u16 = self
            .mem
            .load(GuestAddress(USED), Ordering::Acquire)
            .unwrap();
        if flags & NO_NOTIFY == 0 {
            self.notify.write(1).unwrap();
        }
    }

    /// Waits for an interrupt (at most until `until`): `false` once `until` has passed.
    fn wait(&self, epoll: &Epoll, until: Instant) -> bool {
        let mut events = [EpollEvent::default(); 1];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let ms = left.as_millis().clamp(1, 100) as i32;
            match epoll.wait(ms, &mut events) {
                Ok(0) => continue,
                Ok(_) => {
                    let _ = self.call.read();
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("epoll_wait: {e}"),
            }
        }
    }

    fn epoll(&self) -> Epoll {
        let epoll = Epoll::new().unwrap();
        let ev = EpollEvent::new(EventSet::IN, 0);
        epoll
            .ctl(ControlOperation::Add, self.call.as_raw_fd(), ev)
            .unwrap();
        epoll
    }

    /// The status byte of block request `k`.
    fn status(&self, k: u16) -> u8 {
        self.mem
            .read_obj(GuestAddress(STATUS + u64::from(k)))
            .unwrap()
    }

    /// The used entries from `*seen` on: (descriptor head, length written).
    fn used(&self, seen: &mut u16, out: &mut Vec<(u16, u32)>) {
        let used: u16 = self
            .mem
            .load(GuestAddress(USED + 2), Ordering::Acquire)
            .unwrap();
        while *seen != used {
            let at = GuestAddress(USED + 4 + 8 * u64::from(*seen % QSIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at.0 + 4)).unwrap();
            out.push((id as u16, len));
            *seen = seen.wrapping_add(1);
        }
    }
}

/// What disk A's driver saw after the warm-up.
struct ReadStats {
    iops: f64,
    /// Latencies in ns, sorted.
    lat: Vec<u64>,
}

/// Device A's driver: `qd` 4 KiB random reads (or, with `blocks` 0, 4 KiB requests to a
/// virtio-rng) kept available until `until`, counted from `count_from`.
fn drive_reads(g: &Guest, qd: u16, blocks: u64, count_from: Instant, until: Instant) -> ReadStats {
    let rng_dev = blocks == 0;
    for k in 0..qd {
        let kk = u64::from(k);
        if rng_dev {
            g.desc(3 * k, DATA + BLOCK * kk, BLOCK as u32, F_WRITE);
            continue;
        }
        g.desc(3 * k, HDRS + 16 * kk, 16, F_NEXT);
        g.desc(3 * k + 1, DATA + BLOCK * kk, BLOCK as u32, F_NEXT | F_WRITE);
        g.desc(3 * k + 2, STATUS + kk, 1, F_WRITE);
    }
    let blocks = blocks.max(1);
    let offer = |avail: &mut u16, k: u16, sector: u64| {
        if rng_dev {
            g.offer_head(avail, 3 * k);
        } else {
            g.offer(avail, k, 3 * k, T_IN, sector);
        }
    };
    let epoll = g.epoll();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut sent = vec![Instant::now(); usize::from(qd)];
    let (mut avail, mut seen) = (0u16, 0u16);
    let now = Instant::now();
    for k in 0..qd {
        offer(&mut avail, k, rng.next() % blocks * (BLOCK / 512));
        sent[usize::from(k)] = now;
    }
    g.kick(avail);
    let mut lat = Vec::with_capacity(1 << 20);
    let mut done = Vec::new();
    while g.wait(&epoll, until) {
        done.clear();
        g.used(&mut seen, &mut done);
        if done.is_empty() {
            continue;
        }
        let now = Instant::now();
        for &(head, len) in &done {
            let k = head / 3;
            if rng_dev {
                assert_eq!(len, BLOCK as u32, "the rng filled less");
            } else {
                assert_eq!(g.status(k), 0, "a read failed");
            }
            if now >= count_from {
                lat.push((now - sent[usize::from(k)]).as_nanos() as u64);
            }
            offer(&mut avail, k, rng.next() % blocks * (BLOCK / 512));
            sent[usize::from(k)] = now;
        }
        g.kick(avail);
    }
    let secs = (until - count_from).as_secs_f64();
    lat.sort_unstable();
    ReadStats {
        iops: lat.len() as f64 / secs,
        lat,
    }
}

/// Disk B's driver: a 1 MiB write, then a FLUSH, then the next write, from now to `until`.
/// Returns the write+flush pairs per second after `count_from` (MiB/s made durable).
fn drive_writes(g: &Guest, blocks: u64, count_from: Instant, until: Instant) -> f64 {
    // Write: descriptors 0 (header), 1 (1 MiB), 2 (status); flush: 3 (header), 4 (status).
    g.desc(0, HDRS, 16, F_NEXT);
    g.desc(1, DATA, BIG as u32, F_NEXT);
    g.desc(2, STATUS, 1, F_WRITE);
    g.desc(3, HDRS + 16, 16, F_NEXT);
    g.desc(4, STATUS + 1, 1, F_WRITE);
    let data: Vec<u8> = (0..BIG as u32).map(|i| (i % 251) as u8 + 1).collect();
    g.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let epoll = g.epoll();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let (mut avail, mut seen, mut pairs) = (0u16, 0u16, 0u64);
    let mut done = Vec::new();
    let mut writing = true;
    g.offer(&mut avail, 0, 0, T_OUT, rng.next() % blocks * (BIG / 512));
    g.kick(avail);
    while g.wait(&epoll, until) {
        done.clear();
        g.used(&mut seen, &mut done);
        for &(head, _) in &done {
            assert_eq!(g.status(head / 3), 0, "a write or flush failed");
            if writing {
                g.offer(&mut avail, 1, 3, T_FLUSH, 0);
            } else {
                if Instant::now() >= count_from {
                    pairs += 1;
                }
                g.offer(&mut avail, 0, 0, T_OUT, rng.next() % blocks * (BIG / 512));
            }
            writing = !writing;
            g.kick(avail);
        }
    }
    pairs as f64 / (until - count_from).as_secs_f64()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arrangement {
    Alone,
    PerDevice,
    Shared,
}

impl Arrangement {
    fn name(self) -> &'static str {
        match self {
            Arrangement::Alone => "alone",
            Arrangement::PerDevice => "per-device",
            Arrangement::Shared => "shared",
        }
    }
}

struct Outcome {
    iops: f64,
    p50_us: f64,
    p99_us: f64,
    b_mib_s: f64,
    /// Milliseconds per second the serving thread(s) spent in A's and B's handler.
    a_busy: f64,
    b_busy: f64,
    /// The longest single call of B's handler, ms.
    b_longest: f64,
}

fn run(o: &Opts, io: BlockIo, direct: bool, arr: Arrangement) -> Outcome {
    let size_a = if o.rng {
        0
    } else {
        std::fs::metadata(&o.image_a).unwrap().len()
    };
    let size_b = std::fs::metadata(&o.image_b).unwrap().len();
    let (dev_a, guest_a) = if o.rng {
        open_rng('A')
    } else {
        open('A', &o.image_a, true, direct, io)
    };
    let b = (arr != Arrangement::Alone).then(|| open('B', &o.image_b, false, direct, io));
    let stop = Arc::new(vfiovm_devices::new_eventfd().unwrap());
    let spawn = |name: &str, devs: Vec<Dev>| {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(devs, &stop))
            .unwrap()
    };
    let mut servers = Vec::new();
    let mut guest_b = None;
    match b {
        None => servers.push(spawn("io-a", vec![dev_a])),
        Some((dev_b, g)) => {
            guest_b = Some(g);
            if arr == Arrangement::Shared {
                servers.push(spawn("io-shared", vec![dev_a, dev_b]));
            } else {
                servers.push(spawn("io-a", vec![dev_a]));
                servers.push(spawn("io-b", vec![dev_b]));
            }
        }
    }
    let start = Instant::now();
    let count_from = start + Duration::from_secs_f64(o.warmup);
    let until = count_from + Duration::from_secs_f64(o.seconds);
    let qd = o.qd;
    let writer = guest_b.map(|g| {
        std::thread::Builder::new()
            .name("guest-b".into())
            .spawn(move || drive_writes(&g, size_b / BIG, count_from, until))
            .unwrap()
    });
    let reads = std::thread::Builder::new()
        .name("guest-a".into())
        .spawn(move || drive_reads(&guest_a, qd, size_a / BLOCK, count_from, until))
        .unwrap()
        .join()
        .unwrap();
    let b_mib_s = writer.map_or(0.0, |w| w.join().unwrap());
    stop.write(1).unwrap();
    let busy: Vec<(char, Busy)> = servers
        .into_iter()
        .flat_map(|s| s.join().unwrap())
        .collect();
    let secs = (until - start).as_secs_f64();
    let of = |n: char| busy.iter().find(|(d, _)| *d == n).map(|(_, b)| b);
    let (b_busy, b_longest) = of('B').map_or((0.0, 0.0), |b| {
        (
            b.total.as_secs_f64() * 1000.0 / secs,
            b.longest.as_secs_f64() * 1000.0,
        )
    });
    let a_busy = of('A').map_or(0.0, |b| b.total.as_secs_f64() * 1000.0 / secs);
    let pct = |p: f64| {
        let l = &reads.lat;
        if l.is_empty() {
            return f64::NAN;
        }
        l[((l.len() as f64 * p) as usize).min(l.len() - 1)] as f64 / 1000.0
    };
    Outcome {
        iops: reads.iops,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        b_mib_s,
        a_busy,
        b_busy,
        b_longest,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn io_name(io: BlockIo) -> &'static str {
    if io == BlockIo::Sync {
        "sync"
    } else {
        "uring"
    }
}

fn on_off(direct: bool) -> &'static str {
    if direct {
        "on"
    } else {
        "off"
    }
}

fn main() {
    let o = opts();
    if !o.rng {
        make_image(&o.image_a, 1024 << 20);
    }
    make_image(&o.image_b, 256 << 20);
    let a = if o.rng {
        "virtio-rng, 4 KiB requests".to_string()
    } else {
        format!("disk, 4 KiB random reads ({})", o.image_a.display())
    };
    println!(
        "A: {a} at qd {}; disk B: 1 MiB write + FLUSH, one at a time ({}); \
         {} s per run after {} s warm-up, {} runs",
        o.qd,
        o.image_b.display(),
        o.seconds,
        o.warmup,
        o.runs
    );
    println!("load average at start: {}", loadavg());
    println!(
        "{:<5} {:<6} {:<10} {:>3} {:>8} {:>8} {:>8} {:>7} {:>9} {:>9} {:>9}",
        "io",
        "direct",
        "threads",
        "run",
        "A IOPS",
        "A p50µs",
        "A p99µs",
        "B MiB/s",
        "A ms/s",
        "B ms/s",
        "B max ms"
    );
    let arrs = [
        Arrangement::Alone,
        Arrangement::PerDevice,
        Arrangement::Shared,
    ];
    let mut summary = Vec::new();
    for &direct in &o.directs {
        for &io in &o.ios {
            if !direct && !o.rng {
                warm(&o.image_a);
            }
            let mut got: Vec<Vec<Outcome>> = arrs.iter().map(|_| Vec::new()).collect();
            // Arrangements interleaved run by run, in a rotating order, so a change in the
            // machine's load falls on all of them.
            for r in 0..o.runs {
                for j in 0..arrs.len() {
                    let i = (j + r) % arrs.len();
                    let arr = arrs[i];
                    let out = run(&o, io, direct, arr);
                    println!(
                        "{:<5} {:<6} {:<10} {:>3} {:>8.0} {:>8.1} {:>8.1} {:>7.1} {:>9.1} {:>9.1} {:>9.1}",
                        io_name(io),
                        on_off(direct),
                        arr.name(),
                        r + 1,
                        out.iops,
                        out.p50_us,
                        out.p99_us,
                        out.b_mib_s,
                        out.a_busy,
                        out.b_busy,
                        out.b_longest
                    );
                    got[i].push(out);
                }
            }
            for (i, &arr) in arrs.iter().enumerate() {
                let col =
                    |f: fn(&Outcome) -> f64| median(&mut got[i].iter().map(f).collect::<Vec<_>>());
                let row = [
                    col(|x| x.iops),
                    col(|x| x.p50_us),
                    col(|x| x.p99_us),
                    col(|x| x.b_mib_s),
                    col(|x| x.b_longest),
                ];
                summary.push((io, direct, arr, row));
            }
        }
    }
    println!("load average at end: {}", loadavg());
    println!("\nmedians over {} runs:", o.runs);
    println!(
        "| io | direct | threads | A IOPS | A p50 µs | A p99 µs | B MiB/s (write+flush) | B's longest handler call, ms |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for (io, direct, arr, [iops, p50, p99, b, longest]) in summary {
        let (b, longest) = if arr == Arrangement::Alone {
            ("–".to_string(), "–".to_string())
        } else {
            (format!("{b:.1}"), format!("{longest:.1}"))
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {} |",
            io_name(io),
            on_off(direct),
            arr.name(),
            iops,
            p50,
            p99,
            b,
            longest
        );
    }
}
