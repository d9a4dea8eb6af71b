//! What a hostile or broken driver can build: each must fail its request or put the device in
//! NEEDS_RESET with a configuration interrupt; never a panic, a hang or an access outside
//! guest RAM.

use super::blk::{blk_up, TempImage, DATA, HDR, STATUS_AT, S_IOERR, S_OK, T_IN, T_OUT};
use super::*;
use crate::virtio::rng::Rng;
use crate::virtio::STATUS_NEEDS_RESET;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Where indirect tables go.
const TABLE: u64 = 0x28_0000;

fn rng_up() -> Driver {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.bring_up(0, &[8]);
    d
}

/// Writes descriptor `i` of an indirect table at `table`.
fn table_desc(m: &Mem, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let at = table + 16 * i;
    m.write_obj(addr, GuestAddress(at)).unwrap();
    m.write_obj(len, GuestAddress(at + 8)).unwrap();
    m.write_obj(flags, GuestAddress(at + 12)).unwrap();
    m.write_obj(next, GuestAddress(at + 14)).unwrap();
}

/// The device reports NEEDS_RESET, raised the configuration vector (0) and serves nothing more
/// until reset; after a reset it works again.
pub(super) fn assert_needs_reset(d: &mut Driver, sizes: &[u16]) {
    assert!(
        d.wait_status(STATUS_NEEDS_RESET),
        "the device did not ask for a reset"
    );
    let got = d.wait_deliveries(1);
    assert!(
        got.contains(&(d.gsis[0], Driver::msg(0))),
        "no configuration interrupt: {got:?}"
    );
    // A good chain now is not served.
    let used = d.queues[0].used_idx(&d.mem);
    d.queues[0].add(&d.mem, &[(0x20_0000, 8, true), (STATUS_AT, 1, true)]);
    d.notify(0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        d.queues[0].used_idx(&d.mem),
        used,
        "served after NEEDS_RESET"
    );
    d.set_status(0);
    assert_eq!(d.status(), 0);
    d.mem
        .write_slice(&vec![0u8; 0x10000 * sizes.len()], GuestAddress(0x10000))
        .unwrap();
    d.bring_up(0, sizes);
    assert_eq!(d.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn avail_index_running_ahead_of_the_queue() {
    let mut d = rng_up();
    d.queues[0].set_avail_idx(&d.mem, 9); // queue size 8
    d.notify(0);
    assert_needs_reset(&mut d, &[8]);
    d.queues[0].add(&d.mem, &[(0x20_0000, 8, true)]);
    d.notify(0);
    assert_eq!(d.queues[0].wait_used(&d.mem).1, 8);
}

#[test]
fn descriptor_loop() {
    let mut d = rng_up();
    let q = &mut d.queues[0];
    q.write_desc(&d.mem, 0, 0x20_0000, 8, F_NEXT | F_WRITE, 1);
    q.write_desc(&d.mem, 1, 0x20_1000, 8, F_NEXT | F_WRITE, 0);
    q.publish(&d.mem, 0);
    d.notify(0);
    assert_needs_reset(&mut d, &[8]);
}

#[test]
fn self_loop_and_next_out_of_range() {
    for next in [0u16, 8, 0xffff] {
        let mut d = rng_up();
        let q = &mut d.queues[0];
        q.write_desc(&d.mem, 0, 0x20_0000, 8, F_NEXT | F_WRITE, next);
        q.publish(&d.mem, 0);
        d.notify(0);
        assert_needs_reset(&mut d, &[8]);
    }
}

#[test]
fn head_index_out_of_range() {
    let mut d = rng_up();
    d.queues[0].publish(&d.mem, 300);
    d.notify(0);
    assert_needs_reset(&mut d, &[8]);
}

#[test]
fn buffers_outside_guest_ram_and_huge_lengths() {
    for (addr, len) in [
        (RAM_SIZE, 8),         // just past RAM
        (RAM_SIZE - 4, 8),     // straddling its end
        (0x20_0000, u32::MAX), // huge
        (u64::MAX - 3, 8),     // wrapping
        (0xfee0_0000, 4),      // MMIO, not RAM
    ] {
        let mut d = rng_up();
        d.queues[0].add(&d.mem, &[(addr, len, true)]);
        d.notify(0);
        assert_needs_reset(&mut d, &[8]);
    }
}

/// Writes an indirect table's entries.
type TableFill = Box<dyn Fn(&Mem)>;

#[test]
fn indirect_tables() {
    // A loop inside the table, a next past its end, a nested indirect descriptor, a length
    // that is not a whole number of descriptors, a table outside RAM, an empty table.
    let cases: Vec<(TableFill, u64, u32)> = vec![
        (
            Box::new(|m| {
                table_desc(m, TABLE, 0, 0x20_0000, 8, F_NEXT | F_WRITE, 1);
                table_desc(m, TABLE, 1, 0x20_0000, 8, F_NEXT | F_WRITE, 0);
            }),
            TABLE,
            32,
        ),
        (
            Box::new(|m| table_desc(m, TABLE, 0, 0x20_0000, 8, F_NEXT | F_WRITE, 2)),
            TABLE,
            32,
        ),
        (
            Box::new(|m| table_desc(m, TABLE, 0, TABLE + 0x100, 16, F_INDIRECT, 0)),
            TABLE,
            16,
        ),
        (Box::new(|_| {}), TABLE, 24),
        (Box::new(|_| {}), RAM_SIZE, 32),
        (Box::new(|_| {}), TABLE, 0),
    ];
    for (i, (fill, table, len)) in cases.into_iter().enumerate() {
        let mut d = rng_up();
        d.mem
            .write_slice(&[0u8; 0x200], GuestAddress(TABLE))
            .unwrap();
        fill(&d.mem);
        let q = &mut d.queues[0];
        q.write_desc(&d.mem, 0, table, len, F_INDIRECT, 0);
        q.publish(&d.mem, 0);
        d.notify(0);
        assert!(
            d.wait_status(STATUS_NEEDS_RESET),
            "indirect case {i} was not refused"
        );
        assert_needs_reset(&mut d, &[8]);
    }
}

#[test]
fn a_good_indirect_table_is_served() {
    let mut d = rng_up();
    table_desc(&d.mem, TABLE, 0, 0x20_0000, 16, F_NEXT | F_WRITE, 1);
    table_desc(&d.mem, TABLE, 1, 0x20_1000, 16, F_WRITE, 0);
    let q = &mut d.queues[0];
    q.write_desc(&d.mem, 0, TABLE, 32, F_INDIRECT, 0);
    q.publish(&d.mem, 0);
    d.notify(0);
    assert_eq!(d.queues[0].wait_used(&d.mem), (0, 32));
}

#[test]
fn rings_outside_ram_or_misaligned_refuse_driver_ok() {
    for (desc, avail, used) in [
        (RAM_SIZE, 0x11000, 0x12000),     // descriptor table past RAM
        (0x10000, 0x11000, RAM_SIZE - 8), // used ring straddling the end
        (0x10008, 0x11000, 0x12000),      // descriptor table not 16-byte aligned
        (0x10000, 0x11001, 0x12000),      // available ring odd
        (0x10000, 0x11000, 0x12002),      // used ring not 4-byte aligned
    ] {
        let mut d = Driver::new(Box::new(Rng::new()));
        d.enable_msix(2);
        assert!(d.negotiate(VIRTIO_F_VERSION_1));
        d.write16(common::CONFIG_MSIX_VECTOR, 0);
        d.write16(common::QUEUE_SELECT, 0);
        d.write16(common::QUEUE_SIZE, 8);
        d.write64_split(common::QUEUE_DESC, desc);
        d.write64_split(common::QUEUE_DRIVER, avail);
        d.write64_split(common::QUEUE_DEVICE, used);
        d.write16(common::QUEUE_ENABLE, 1);
        d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(!d.dev.running(), "{desc:#x} {avail:#x} {used:#x}");
        assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
        assert_eq!(d.wait_deliveries(1), vec![(d.gsis[0], Driver::msg(0))]);
    }
}

/// An available ring at guest address 0 is in RAM and aligned, but virtio-queue takes address
/// 0 for a ring nobody set and pops nothing from it: a device started with it would fail its
/// first chain with a ring error. DRIVER_OK refuses it instead, with NEEDS_RESET at once.
#[test]
fn an_available_ring_at_address_0_refuses_driver_ok() {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.enable_msix(2);
    assert!(d.negotiate(VIRTIO_F_VERSION_1));
    d.write16(common::CONFIG_MSIX_VECTOR, 0);
    d.write16(common::QUEUE_SELECT, 0);
    d.write16(common::QUEUE_SIZE, 8);
    d.write64_split(common::QUEUE_DESC, 0x10000);
    d.write64_split(common::QUEUE_DRIVER, 0);
    d.write64_split(common::QUEUE_DEVICE, 0x12000);
    d.write16(common::QUEUE_ENABLE, 1);
    d.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert!(!d.dev.running(), "started with the available ring at 0");
    assert_ne!(d.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(d.wait_deliveries(1), vec![(d.gsis[0], Driver::msg(0))]);
}

#[test]
fn blk_chain_without_a_writable_status_byte() {
    let img = TempImage::new("hostile-nostatus", 64 << 10);
    // The status descriptor is device-readable (wrong direction), or has length 0.
    for status in [(STATUS_AT, 1, false), (STATUS_AT, 0, true)] {
        let mut d = blk_up(&img.config());
        d.mem
            .write_slice(&T_IN.to_le_bytes(), GuestAddress(HDR))
            .unwrap();
        d.queues[0].add(&d.mem, &[(HDR, 16, false), status]);
        d.notify(0);
        assert_needs_reset(&mut d, &[16]);
        drop(d);
    }
}

#[test]
fn blk_writable_before_readable() {
    let img = TempImage::new("hostile-order", 64 << 10);
    let mut d = blk_up(&img.config());
    d.queues[0].add(
        &d.mem,
        &[(DATA, 512, true), (HDR, 16, false), (STATUS_AT, 1, true)],
    );
    d.notify(0);
    assert_needs_reset(&mut d, &[16]);
}

#[test]
fn blk_wrong_direction_data() {
    let img = TempImage::new("hostile-dir", 64 << 10);
    let before = img.bytes(0, 4096);
    let mut d = blk_up(&img.config());
    // An OUT whose data buffer is device-writable: refused, nothing written.
    d.mem
        .write_slice(&T_OUT.to_le_bytes(), GuestAddress(HDR))
        .unwrap();
    d.mem.write_slice(&[0u8; 8], GuestAddress(HDR + 8)).unwrap();
    d.mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    let r = d.submit(&[(HDR, 16, false), (DATA, 512, true), (STATUS_AT, 1, true)]);
    assert_eq!(r.0, S_IOERR);
    assert_eq!(img.bytes(0, 4096), before);
    // An IN whose data buffer is device-readable: refused, and the buffer is not written.
    d.mem
        .write_slice(&T_IN.to_le_bytes(), GuestAddress(HDR))
        .unwrap();
    let r = d.submit(&[(HDR, 16, false), (DATA, 512, false), (STATUS_AT, 1, true)]);
    assert_eq!(r, (S_IOERR, 1));
    assert_eq!(
        d.data(512),
        vec![0xee; 512],
        "a readable buffer is never written"
    );
}

/// Config space and BAR accesses of every size at every offset, in any order, with the I/O
/// thread running: nothing panics and the device still answers.
#[test]
fn register_noise_does_not_panic() {
    let img = TempImage::new("hostile-noise", 64 << 10);
    let mut d = blk_up(&img.config());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let r = next();
        let len = [1usize, 2, 4, 8, 3][(r % 5) as usize];
        let val = next().to_le_bytes();
        match (r >> 8) % 4 {
            0 => {
                let off = ((r >> 16) % 0x1000) as u16;
                let mut b = vec![0u8; len];
                d.dev.config_read(off, &mut b);
            }
            1 => {
                // Keep the BAR and the command register as they are, so the BAR stays put.
                let off = (0x40 + (r >> 16) % 0xfc0) as u16;
                d.dev.config_write(off, &val[..len]);
            }
            2 => {
                let off = (r >> 16) % 0x9000;
                let mut b = vec![0u8; len];
                d.dev.bar_read(0, off, &mut b);
            }
            _ => {
                let off = (r >> 16) % 0x9000;
                d.dev.bar_write(0, off, &val[..len]);
            }
        }
    }
    // Whatever state that left, a reset and a fresh bring-up work.
    d.set_status(0);
    d.cfg_write16(COMMAND, CMD_MEMORY_SPACE | CMD_BUS_MASTER);
    d.mem
        .write_slice(&vec![0u8; 0x10000], GuestAddress(0x10000))
        .unwrap();
    let f = d.device_features() & !VIRTIO_F_VERSION_1;
    d.bring_up(f, &[16]);
    assert_eq!(d.blk(T_IN, 0, &[], 512).0, S_OK);
}

/// A driver on another vCPU that publishes a new chain (head 0 again) each time one completes,
/// as fast as the device goes: the available ring never runs dry.
struct Republisher {
    mem: Mem,
    q: GuestQueue,
    served: usize,
    /// Serve the queue through [`crate::virtio::Queues`] instead of chain by chain.
    own: bool,
}

impl Republisher {
    fn republish(&mut self) {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.q.avail + 2)).unwrap();
        let slot = u64::from(idx % self.q.size);
        self.mem
            .write_obj(0u16, GuestAddress(self.q.avail + 4 + 2 * slot))
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(self.q.avail + 2))
            .unwrap();
        self.served += 1;
    }
}

impl crate::virtio::QueueHandler for Republisher {
    fn process(
        &mut self,
        _q: u16,
        _chain: &mut crate::virtio::chain::Chain<'_>,
    ) -> crate::virtio::Completion {
        self.republish();
        crate::virtio::Completion::Used(0)
    }

    fn serves_itself(&self, _q: u16) -> bool {
        self.own
    }

    fn ready(&mut self, _why: crate::virtio::Ready, queues: &mut crate::virtio::Queues<'_, '_>) {
        loop {
            let Ok(Some(chain)) = queues.pop(0) else {
                if queues.enable_notification(0) == Ok(true) {
                    continue;
                }
                return;
            };
            self.republish();
            if queues.add_used(0, chain.head(), 0).is_err() {
                return;
            }
        }
    }
}

/// One serve of a queue whose available ring never runs dry returns after a bounded number of
/// chains (so the I/O thread gets back to its stop and reset events), chain by chain and for a
/// handler serving its own queue alike.
#[test]
fn a_ring_that_never_runs_dry_is_served_a_budget_at_a_time() {
    use crate::virtio::test_util::QueueRunner;
    for own in [false, true] {
        let mem = mem();
        let q = GuestQueue::new(8, 0x10000);
        q.write_desc(&mem, 0, 0x20_0000, 8, 2, 0);
        let mut gq = GuestQueue::new(8, 0x10000);
        gq.add(&mem, &[(0x20_0000, 8, true)]);
        let mut runner = QueueRunner::new(&mem, 0, 8, 8, (q.desc, q.avail, q.used), false).unwrap();
        let mut h = Republisher {
            mem: mem.clone(),
            q,
            served: 0,
            own,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = runner.serve(&mem, &mut h);
            let _ = tx.send((r.is_ok(), h.served));
        });
        let (ok, served) = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("the serve never returned");
        assert!(ok, "own={own}");
        let budget = if own {
            crate::virtio::queues::POP_BUDGET
        } else {
            16
        };
        assert_eq!(served, budget, "own={own}");
    }
}
