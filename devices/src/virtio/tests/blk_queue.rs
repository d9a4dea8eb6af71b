//! virtio-blk with several requests in flight: the handler driven through
//! `test_util::QueueRunner` one `ready` at a time, so a test sees what is in flight between the
//! notify and the completions.

use vm_memory::{Bytes, GuestAddress};

use super::blk::{TempImage, S_IOERR, S_OK, T_FLUSH, T_GET_ID, T_IN, T_OUT};
use super::{mem, GuestQueue, Mem};
use crate::virtio::blk::{Block, BlockConfig, BlockIo};
use crate::virtio::queues::Ready;
use crate::virtio::test_util::QueueRunner;
use crate::virtio::{QueueHandler, VirtioDevice, VIRTIO_F_VERSION_1};

const QSIZE: u16 = 256;
/// Request *i*: header at `HDRS + 16 i`, status byte at `STATUS + i`, data at `DATA + 4 KiB i`.
const HDRS: u64 = 0x1_0000;
const STATUS: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;

struct Rig {
    dev: Block,
    mem: Mem,
    q: GuestQueue,
    runner: QueueRunner,
    handler: Box<dyn QueueHandler>,
}

impl Rig {
    fn new(config: &BlockConfig, io: BlockIo) -> Self {
        Self::with(Block::open_with(config, io).unwrap())
    }

    /// Completing only on the ring's eventfd, so requests stay in flight until
    /// [`Rig::finish`] (or another `ready` for the eventfd).
    fn lazy(config: &BlockConfig) -> Self {
        Self::make(Block::open_with(config, BlockIo::Uring).unwrap(), true)
    }

    fn with(dev: Block) -> Self {
        Self::make(dev, false)
    }

    fn make(mut dev: Block, lazy: bool) -> Self {
        let mem = mem();
        let q = GuestQueue::new(QSIZE, 0x1000);
        let runner =
            QueueRunner::new(&mem, 0, QSIZE, QSIZE, (q.desc, q.avail, q.used), false).unwrap();
        let features = dev.features() | VIRTIO_F_VERSION_1;
        let handler = if lazy {
            dev.lazy_handler(features)
        } else {
            dev.activate(features).unwrap()
        };
        Rig {
            dev,
            mem,
            q,
            runner,
            handler,
        }
    }

    /// Makes request `i` available: 4 KiB of data (written to the disk with `T_OUT`, read
    /// into the guest with `T_IN`), none for other types but `GET_ID` (20 bytes).
    fn add(&mut self, i: u64, kind: u32, sector: u64) -> u16 {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&h, GuestAddress(HDRS + 16 * i))
            .unwrap();
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS + i))
            .unwrap();
        let data = DATA + 4096 * i;
        let mut bufs = vec![(HDRS + 16 * i, 16, false)];
        match kind {
            T_OUT => bufs.push((data, 4096, false)),
            T_IN => bufs.push((data, 4096, true)),
            T_GET_ID => bufs.push((data, 20, true)),
            _ => {}
        }
        bufs.push((STATUS + i, 1, true));
        self.q.add(&self.mem, &bufs)
    }

    fn status(&self, i: u64) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS + i)).unwrap()
    }

    fn data(&self, i: u64) -> Vec<u8> {
        let mut v = vec![0u8; 4096];
        self.mem
            .read_slice(&mut v, GuestAddress(DATA + 4096 * i))
            .unwrap();
        v
    }

    /// One `ready` for the notify: pops and queues, waits for nothing.
    fn notify(&mut self) {
        self.runner
            .ready(&self.mem, self.handler.as_mut(), Ready::Queue(0))
            .unwrap();
    }

    /// Serves until nothing is in flight.
    fn finish(&mut self) {
        self.runner.serve(&self.mem, self.handler.as_mut()).unwrap();
        assert_eq!(self.handler.in_flight(), 0);
    }

    /// The used ring: `(head, length)` in completion order.
    fn used(&self) -> Vec<(u16, u32)> {
        let n = self.q.used_idx(&self.mem);
        (0..n)
            .map(|k| {
                let at = self.q.used + 4 + 8 * u64::from(k % QSIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                (id as u16, len)
            })
            .collect()
    }
}

fn pattern(i: u64) -> Vec<u8> {
    (0..4096u64).map(|b| (b * 31 + i * 7) as u8).collect()
}

#[test]
fn io_uring_is_used_unless_asked_otherwise() {
    let img = TempImage::new("q-paths", 64 << 10);
    let r = Rig::new(&img.config(), BlockIo::Uring);
    assert!(r.handler.serves_itself(0));
    assert_eq!(r.handler.extra_fds().len(), 1, "the ring's eventfd");
    drop(r); // the image's lock
    let r = Rig::new(&img.config(), BlockIo::Sync);
    assert!(!r.handler.serves_itself(0));
    assert!(r.handler.extra_fds().is_empty());
}

/// An image in memory (tmpfs: /dev/shm) gets synchronous I/O from `Block::open`, one on a disk
/// file system (the temporary directory, unless that is tmpfs too) the io_uring.
#[test]
fn images_in_memory_are_served_synchronously() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIPPED: no /dev/shm");
        return;
    }
    let p = shm.join(format!("vfiovm-blk-{}-inmem.raw", std::process::id()));
    std::fs::write(&p, vec![0u8; 64 << 10]).unwrap();
    let config = BlockConfig {
        path: p.clone(),
        ..Default::default()
    };
    let in_memory = crate::virtio::blk::image::in_memory(&std::fs::File::open(&p).unwrap());
    let r = Rig::with(Block::open(&config).unwrap());
    let served_itself = r.handler.serves_itself(0);
    drop(r);
    std::fs::remove_file(&p).unwrap();
    assert!(in_memory, "/dev/shm is not tmpfs here");
    assert!(!served_itself, "an image on tmpfs went to the io_uring");

    let img = TempImage::new("q-ondisk", 64 << 10);
    let on_disk =
        !crate::virtio::blk::image::in_memory(&std::fs::File::open(img.config().path).unwrap());
    let r = Rig::with(Block::open(&img.config()).unwrap());
    assert_eq!(r.handler.serves_itself(0), on_disk);
}

#[test]
fn many_requests_in_flight_complete_out_of_order() {
    let img = TempImage::new("q-many", 1 << 20);
    let mut r = Rig::lazy(&img.config());
    let reads: Vec<u16> = (0..32).map(|i| r.add(i, T_IN, 8 * (31 - i))).collect();
    let id = r.add(32, T_GET_ID, 0);
    r.notify();
    // Every read is in the ring; GET_ID, made available after them, is already complete.
    assert_eq!(r.handler.in_flight(), 32);
    assert_eq!(r.used(), vec![(id, 1 + 20)]);
    r.finish();
    let used = r.used();
    assert_eq!(used.len(), 33);
    for (i, head) in reads.iter().enumerate() {
        assert!(used.contains(&(*head, 4097)), "read {i} completed");
        let i = i as u64;
        assert_eq!(r.status(i), S_OK);
        assert_eq!(r.data(i), img.bytes(8 * (31 - i) * 512, 4096), "read {i}");
    }
}

#[test]
fn no_more_in_flight_than_the_ring_holds() {
    let img = TempImage::new("q-full", 2 << 20);
    let mut r = Rig::lazy(&img.config());
    // The guest publishes the same 64 chains again and again (a driver that does so breaks
    // the rules; the device still must not queue without bound).
    let heads: Vec<u16> = (0..64).map(|i| r.add(i, T_IN, 8 * i)).collect();
    for _ in 0..3 {
        for &h in &heads {
            r.q.publish(&r.mem, h);
        }
    }
    r.notify();
    assert_eq!(
        r.handler.in_flight(),
        usize::from(QSIZE),
        "the ring is full"
    );
    for &h in &heads {
        r.q.publish(&r.mem, h);
    }
    r.notify();
    assert!(r.handler.in_flight() <= usize::from(QSIZE));
    r.finish();
    assert_eq!(r.used().len(), usize::from(QSIZE) + 64);
}

#[test]
fn reads_the_page_cache_holds_complete_at_once() {
    let img = TempImage::new("q-cached", 1 << 20);
    let mut r = Rig::new(&img.config(), BlockIo::Uring);
    // The image was just written: its pages are cached.
    let heads: Vec<u16> = (0..8).map(|i| r.add(i, T_IN, 8 * i)).collect();
    r.notify();
    assert_eq!(r.handler.in_flight(), 0);
    let used = r.used();
    for (i, head) in heads.iter().enumerate() {
        assert_eq!(used[i], (*head, 4097));
        assert_eq!(r.data(i as u64), img.bytes(8 * i as u64 * 512, 4096));
    }
}

#[test]
fn flush_waits_for_the_writes_before_it() {
    flush_ordering(false);
    flush_ordering(true);
}

fn flush_ordering(lazy: bool) {
    let img = TempImage::new(&format!("q-flush-{lazy}"), 1 << 20);
    let mut r = if lazy {
        Rig::lazy(&img.config())
    } else {
        Rig::new(&img.config(), BlockIo::Uring)
    };
    for i in 0..16 {
        r.mem
            .write_slice(&pattern(i), GuestAddress(DATA + 4096 * i))
            .unwrap();
    }
    let before: Vec<u16> = (0..12).map(|i| r.add(i, T_OUT, 8 * i)).collect();
    let flush = r.add(12, T_FLUSH, 0);
    let after: Vec<u16> = (13..16).map(|i| r.add(i, T_OUT, 8 * i)).collect();
    r.notify();
    r.finish();
    let order: Vec<u16> = r.used().iter().map(|u| u.0).collect();
    let at = |h: u16| order.iter().position(|&x| x == h).unwrap();
    for h in &before {
        assert!(
            at(*h) < at(flush),
            "a write before the FLUSH completed after it"
        );
    }
    for h in &after {
        assert!(
            at(*h) > at(flush),
            "a write after the FLUSH completed before it"
        );
    }
    for i in 0..16 {
        assert_eq!(r.status(i), S_OK);
        if i != 12 {
            assert_eq!(img.bytes(8 * i * 512, 4096), pattern(i), "write {i}");
        }
    }
}

#[test]
fn host_io_errors_reach_the_guest_among_requests_in_flight() {
    let img = TempImage::new("q-eio", 1 << 20);
    let mut r = Rig::new(&img.config(), BlockIo::Uring);
    // The image shrinks under the device: reads past the new end fail on the host.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap()
        .set_len(64 << 10)
        .unwrap();
    let heads: Vec<u16> = (0..16).map(|i| r.add(i, T_IN, 64 * i)).collect();
    r.notify();
    r.finish();
    let used = r.used();
    for (i, head) in heads.iter().enumerate() {
        let inside = 64 * i as u64 * 512 + 4096 <= 64 << 10;
        let want = if inside { (S_OK, 4097) } else { (S_IOERR, 1) };
        assert_eq!(r.status(i as u64), want.0, "read {i}");
        assert!(used.contains(&(*head, want.1)), "read {i}: {used:?}");
    }
}

#[test]
fn dropping_the_handler_waits_for_requests_in_flight() {
    let img = TempImage::new("q-reset", 2 << 20);
    let mut r = Rig::lazy(&img.config());
    for i in 0..64 {
        r.add(i, T_IN, 8 * i);
    }
    r.notify();
    assert_eq!(r.handler.in_flight(), 64);
    // A driver reset: the transport drops the handler; it returns once the kernel is done
    // with guest RAM, and completes nothing more.
    let used = r.used().len();
    r.handler = crate::virtio::rng::Rng::new().activate(0).unwrap();
    assert_eq!(r.used().len(), used);
    // The ring came back to the device, empty, for the next start.
    let h = r
        .dev
        .activate(r.dev.features() | VIRTIO_F_VERSION_1)
        .unwrap();
    assert!(h.serves_itself(0));
    assert_eq!(h.in_flight(), 0);
}

#[test]
fn without_io_uring_requests_are_served_one_at_a_time() {
    let img = TempImage::new("q-fallback", 1 << 20);
    // As where io_uring_setup fails (ENOSYS, EPERM, io_uring_disabled): a warning, then the
    // synchronous path.
    let dev = Block::open_ring(&img.config(), |_| {
        Some(Err(std::io::Error::from_raw_os_error(libc::ENOSYS)))
    })
    .unwrap();
    let mut r = Rig::with(dev);
    assert!(!r.handler.serves_itself(0));
    r.mem.write_slice(&pattern(0), GuestAddress(DATA)).unwrap();
    let w = r.add(0, T_OUT, 16);
    let f = r.add(1, T_FLUSH, 0);
    let rd = r.add(2, T_IN, 16);
    r.finish();
    assert_eq!(r.used(), vec![(w, 1), (f, 1), (rd, 4097)]);
    assert_eq!(r.data(2), pattern(0));
    assert_eq!(img.bytes(16 * 512, 4096), pattern(0));
}

#[test]
fn driver_reset_with_requests_in_flight_through_the_transport() {
    use super::Driver;
    // O_DIRECT reads from the disk: they are in the ring, not in the page cache.
    let img = TempImage::new("q-transport-reset", 2 << 20);
    let mut c = img.config();
    c.direct = true;
    let mut d = Driver::new(Box::new(Block::open(&c).unwrap()));
    let features = d.device_features() & !VIRTIO_F_VERSION_1;
    d.bring_up(features, &[QSIZE]);
    let (hdrs, status, data) = (0x30_0000u64, 0x30_1000u64, 0x31_0000u64);
    for i in 0..64u64 {
        let mut h = [0u8; 16];
        h[8..].copy_from_slice(&(8 * i).to_le_bytes());
        d.mem.write_slice(&h, GuestAddress(hdrs + 16 * i)).unwrap();
        let bufs = [
            (hdrs + 16 * i, 16, false),
            (data + 4096 * i, 4096, true),
            (status + i, 1, true),
        ];
        d.queues[0].add(&d.mem, &bufs);
    }
    d.notify(0);
    // The reset stops the I/O thread, which drops the handler, which waits for the reads in
    // flight before guest RAM may go; the device then starts again, with its ring. (Whether
    // the thread popped them before the reset is a race: in 2 runs of 3 here all 64 were in
    // flight. `dropping_the_handler_waits_for_requests_in_flight` is the deterministic one.)
    d.set_status(0);
    assert_eq!(d.status(), 0);
    d.mem
        .write_slice(&vec![0u8; 0x10000], GuestAddress(0x10000))
        .unwrap();
    d.bring_up(features, &[16]);
    assert_eq!(d.blk(T_IN, 8, &[], 4096), (S_OK, 4097));
    assert_eq!(d.data(4096), img.bytes(8 * 512, 4096));
}
