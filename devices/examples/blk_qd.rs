//! virtio-blk at a queue depth: 4 KiB random reads from an image, served by the device's own
//! handler through `virtio::test_util::QueueRunner` (the code its I/O thread runs, minus the
//! thread and the interrupts), synchronous I/O against io_uring, `direct=off` and `on`.
//!
//! ```text
//! cargo run --release -p vfiovm-devices --features test-util --example blk_qd -- \
//!     [--image /var/tmp/vfiovm-blk-qd.raw] [--size-mb 1024] [--seconds 5] [--qd 1,32]
//! ```
//!
//! The image is made (non-zero data, so reads are not of holes) if it is missing or of another
//! size, and kept for the next run. Before the `direct=off` runs it is read once whole, so they
//! measure page-cache hits (the device's own cost); `direct=on` reads reach the disk. Each line
//! keeps `qd` requests available: a completed one is made available again at once, at a new
//! random sector (xorshift, fixed seed). Results in `docs/benchmarks.md`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use vfiovm_devices::virtio::blk::{Block, BlockConfig, BlockIo};
use vfiovm_devices::virtio::test_util::QueueRunner;
use vfiovm_devices::virtio::{QueueHandler, Ready, VirtioDevice, VIRTIO_F_VERSION_1};
use vfiovm_devices::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vfiovm_devices::vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

type Mem = GuestMemoryMmap<()>;

const QSIZE: u16 = 256;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Request slot *k*: header at `HDRS + 16 k`, status at `STATUS + k`, data at
/// `DATA + 4096 k`; descriptors `3k` (head), `3k + 1`, `3k + 2`.
const HDRS: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;
const BLOCK: u64 = 4096;

struct Opts {
    image: std::path::PathBuf,
    size: u64,
    seconds: f64,
    qds: Vec<u16>,
}

fn opts() -> Opts {
    let mut o = Opts {
        image: "/var/tmp/vfiovm-blk-qd.raw".into(),
        size: 1024 << 20,
        seconds: 5.0,
        qds: vec![1, 32],
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--image" => o.image = v.into(),
            "--size-mb" => o.size = v.parse::<u64>().expect("--size-mb N") << 20,
            "--seconds" => o.seconds = v.parse().expect("--seconds S"),
            "--qd" => {
                o.qds = v.split(',').map(|q| q.parse().expect("--qd N,M")).collect();
                assert!(o.qds.iter().all(|&q| (1..=64).contains(&q)), "--qd 1..=64");
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

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn desc(mem: &Mem, i: u16, addr: u64, len: u32, flags: u16) {
    let at = DESC + 16 * u64::from(i);
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(i + 1, GuestAddress(at + 14)).unwrap();
}

/// Makes slot `k` available, reading block `block`.
fn publish(mem: &Mem, avail: &mut u16, k: u16, block: u64) {
    let hdr = HDRS + 16 * u64::from(k);
    mem.write_obj(0u32, GuestAddress(hdr)).unwrap(); // VIRTIO_BLK_T_IN
    mem.write_obj(block * (BLOCK / 512), GuestAddress(hdr + 8))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS + u64::from(k)))
        .unwrap();
    let slot = u64::from(*avail % QSIZE);
    mem.write_obj(3 * k, GuestAddress(AVAIL + 4 + 2 * slot))
        .unwrap();
    *avail = avail.wrapping_add(1);
    mem.write_obj(*avail, GuestAddress(AVAIL + 2)).unwrap();
}

/// One line: `qd` requests kept available for `seconds`. Returns (IOPS, mean latency in µs).
fn run(o: &Opts, io: BlockIo, direct: bool, qd: u16) -> (f64, f64) {
    let mem = Mem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let config = BlockConfig {
        path: o.image.clone(),
        direct,
        ..Default::default()
    };
    let mut dev = Block::open_with(&config, io).expect("opening the image");
    let mut h: Box<dyn QueueHandler> = dev.activate(dev.features() | VIRTIO_F_VERSION_1).unwrap();
    let mut runner = QueueRunner::new(&mem, 0, QSIZE, QSIZE, (DESC, AVAIL, USED), false).unwrap();
    let uring = h.serves_itself(0);
    assert_eq!(uring, io == BlockIo::Uring, "io_uring unavailable here");
    let epoll = Epoll::new().unwrap();
    for fd in h.extra_fds() {
        let ev = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 0);
        epoll.ctl(ControlOperation::Add, fd, ev).unwrap();
    }
    for k in 0..qd {
        let kk = u64::from(k);
        desc(&mem, 3 * k, HDRS + 16 * kk, 16, 1);
        desc(&mem, 3 * k + 1, DATA + BLOCK * kk, BLOCK as u32, 1 | 2);
        desc(&mem, 3 * k + 2, STATUS + kk, 1, 2);
    }
    let blocks = o.size / BLOCK;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut avail, mut seen, mut done) = (0u16, 0u16, 0u64);
    for k in 0..qd {
        publish(&mem, &mut avail, k, rng.next() % blocks);
    }
    let mut events = [EpollEvent::default(); 4];
    let start = Instant::now();
    let until = Duration::from_secs_f64(o.seconds);
    while start.elapsed() < until {
        if uring {
            runner.ready(&mem, h.as_mut(), Ready::Queue(0)).unwrap();
            // EINTR: io_uring's task work interrupts the wait; just look again.
            if h.in_flight() > 0 && epoll.wait(1000, &mut events).unwrap_or(0) > 0 {
                runner.ready(&mem, h.as_mut(), Ready::Fd(0)).unwrap();
            }
        } else {
            runner.serve(&mem, h.as_mut()).unwrap();
        }
        let used: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        while seen != used {
            let at = USED + 4 + 8 * u64::from(seen % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let k = (id / 3) as u16;
            let status: u8 = mem.read_obj(GuestAddress(STATUS + u64::from(k))).unwrap();
            assert_eq!(status, 0, "a read failed");
            done += 1;
            seen = seen.wrapping_add(1);
            publish(&mem, &mut avail, k, rng.next() % blocks);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(h); // waits for what is still in flight
    let iops = done as f64 / secs;
    (iops, f64::from(qd) * 1e6 / iops)
}

fn main() {
    let o = opts();
    make_image(&o.image, o.size);
    println!(
        "4 KiB random reads, {} MiB image {}, {} s per line",
        o.size >> 20,
        o.image.display(),
        o.seconds
    );
    println!(
        "{:<6} {:<7} {:>3} {:>10} {:>8} {:>9}",
        "direct", "io", "qd", "IOPS", "MiB/s", "mean µs"
    );
    for direct in [false, true] {
        if !direct {
            warm(&o.image);
        }
        for &qd in &o.qds {
            for io in [BlockIo::Sync, BlockIo::Uring] {
                let (iops, lat) = run(&o, io, direct, qd);
                let name = if io == BlockIo::Sync { "sync" } else { "uring" };
                println!(
                    "{:<6} {:<7} {:>3} {:>10.0} {:>8.1} {:>9.1}",
                    if direct { "on" } else { "off" },
                    name,
                    qd,
                    iops,
                    iops * BLOCK as f64 / f64::from(1u32 << 20),
                    lat
                );
            }
        }
    }
}
