//! virtio-net's request handling (`devices::virtio::net`): the transmit queue served chain by
//! chain and the receive queue the handler serves itself, both run synchronously with
//! `virtio::test_util::QueueSet` (the code the device's I/O thread runs), over a backend that is
//! one end of a datagram socket pair (it keeps frame boundaries as a tap does; the harness
//! holds the other end and plays the host network). The input picks the negotiated features
//! (`MRG_RXBUF`, `GUEST_CSUM`, `EVENT_IDX`…), places the rings anywhere, lays out transmit
//! frames (a 12-byte header of any content, split anywhere over up to four descriptors,
//! directly or in an indirect table, with one mutation at most) and receive buffer chains
//! (any sizes, some too small for the header), writes raw descriptors and bytes, moves the
//! available index and `used_event`, sends frames of any length from the host, serves, and
//! resets queues or the whole device.
//!
//! Invariants (besides no panic, no hang, no leak):
//! - activation hands the backend exactly the offloads the accepted features allow
//!   (`GUEST_CSUM` → `TUN_F_CSUM`, then `GUEST_TSO4/6`, and `GUEST_ECN` with either);
//! - a transmit serve writes guest RAM only inside the transmit used ring; a receive serve only
//!   inside the receive used ring and the device-writable buffers of the chains it completed;
//! - the used ring names, in order, the heads the available ring offered (every chain the
//!   device took is completed, none twice, none invented), each a well-formed chain by the
//!   harness's own walk (`vfiovm_fuzz::virtq`), with a used length of 0 on transmit and at
//!   most the chain's writable bytes on receive; the used index in RAM moves by exactly those
//!   completions, and after a serve the device has taken every available chain and holds
//!   none;
//! - a serve fails (NEEDS_RESET) only for a reason the harness sees too: a chain its walk
//!   finds malformed, or an available index more than the queue size ahead;
//! - the frames the backend receives are, in order, the readable bytes of well-formed
//!   transmit chains of 12 bytes up to a header plus 65,553, unchanged except `num_buffers`
//!   (cleared); the transmit counters add up to the chains completed;
//! - the frames in the guest's receive buffers are, in order, frames the host sent (12 bytes
//!   or more), byte for byte, with `num_buffers` the number of chains the frame spans (1
//!   without `MRG_RXBUF`) and, unless the driver took `GUEST_CSUM`, the other header fields
//!   zeroed; the receive counters count them.
//!
//! The RAM, used-ring and frame checks of a serve are skipped when a ring overlaps another
//! ring, a descriptor table or a buffer of that queue (the device may then legitimately
//! rewrite what it reads), and the receive frame checks when two buffers overlap.
#![no_main]

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arbitrary::{Result, Unstructured};
use devices::virtio::net::{self, MacAddr, Net, NetBackend, NetStats, NET_HDR_LEN};
use devices::virtio::queues::Ready;
use devices::virtio::test_util::{QueueSet, ServeError};
use devices::virtio::{QueueHandler, VirtioDevice, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::one_in;
use vfiovm_fuzz::trace;
use vfiovm_fuzz::virtq::{
    buffer_ranges, inside, overlap, ring_ranges, walk, Layout, Mem, Ram, Walked, F_INDIRECT,
    F_NEXT, F_WRITE,
};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM: [0, 64 KiB) and [96 KiB, 224 KiB): room for a 64 KiB frame past the hole.
const REGIONS: [(u64, u64); 2] = [(0, 0x1_0000), (0x1_8000, 0x2_0000)];
const RAM_END: u64 = 0x3_8000;
const MAX_OPS: usize = 96;
const RX: u16 = net::RX_QUEUE;
const TX: u16 = net::TX_QUEUE;
/// Where each queue's rings go by default, and its indirect table.
const RING_BASE: [u64; 2] = [0x1000, 0x5000];
const INDIRECT: [u64; 2] = [0x9000, 0x9800];
/// Transmit buffer slots: 12 of 2 KiB from 0xa000 up to the hole, then the large area past
/// the hole.
const SLOT: u64 = 0x800;
const SLOTS_AT: u64 = 0xa000;
const BIG_AT: u64 = 0x1_8000;
/// Receive buffer slots: 12 of 2 KiB past the large area.
const RX_SLOTS_AT: u64 = 0x2_9000;
/// `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;
/// The longest frame a backend may hand over: a header and `net::MAX_FRAME_LEN`.
const MAX_WIRE: usize = NET_HDR_LEN + net::MAX_FRAME_LEN;
/// `TUN_F_*` (linux/if_tun.h).
const TUN_F_CSUM: u32 = 1;
const TUN_F_TSO4: u32 = 2;
const TUN_F_TSO6: u32 = 4;
const TUN_F_TSO_ECN: u32 = 8;

/// The device's end of the socket pair; it records the offloads it is told.
struct Backend {
    sock: UnixDatagram,
    offloads: Mutex<Vec<u32>>,
}

impl NetBackend for Backend {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
    fn set_offload(&self, tun_flags: u32) -> std::io::Result<()> {
        self.offloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tun_flags);
        Ok(())
    }
}

/// The offloads a driver that accepted `features` can take, from the virtio-net feature bits.
fn expected_offloads(features: u64) -> u32 {
    use net::features::*;
    if features & GUEST_CSUM == 0 {
        return 0;
    }
    let mut o = TUN_F_CSUM;
    if features & GUEST_TSO4 != 0 {
        o |= TUN_F_TSO4;
    }
    if features & GUEST_TSO6 != 0 {
        o |= TUN_F_TSO6;
    }
    if features & GUEST_ECN != 0 && features & (GUEST_TSO4 | GUEST_TSO6) != 0 {
        o |= TUN_F_TSO_ECN;
    }
    o
}

fn ring_addr(u: &mut Unstructured, default: u64, align: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=11)? {
        0 => u.arbitrary()?,
        1 => u.int_in_range(0..=RAM_END + 0x100)? & !(align - 1),
        2 => u.int_in_range(0..=RAM_END)?,
        _ => default,
    })
}

fn layout(u: &mut Unstructured, q: usize) -> Result<Layout> {
    let size = 1u16 << u.int_in_range(0..=8)?;
    let base = RING_BASE[q];
    Ok(Layout {
        size,
        desc: ring_addr(u, base, 16)?,
        avail: ring_addr(u, base + 0x1000, 2)?,
        used: ring_addr(u, base + 0x2000, 4)?,
    })
}

/// A buffer address: mostly a slot, sometimes the hole, the edges, anywhere.
fn buf_addr(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary()?,
        1 => 0x1_0000 - u.int_in_range(0..=16)?,
        2 => RAM_END - u.int_in_range(0..=16)?,
        3 => u.int_in_range(0..=RAM_END)?,
        _ => SLOTS_AT + SLOT * u.int_in_range(0..=11)?,
    })
}

fn buf_len(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary()?,
        1 => 0,
        2 => u.int_in_range(1..=11)?,
        3 => NET_HDR_LEN as u32,
        4 => u.int_in_range(1..=64)?,
        _ => u.int_in_range(60..=1526)?,
    })
}

/// A frame length: mostly Ethernet sizes, sometimes a runt, sometimes up to the largest.
fn frame_len(u: &mut Unstructured) -> Result<usize> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.int_in_range(0..=NET_HDR_LEN + 2)?,
        1 => u.int_in_range(1527..=MAX_WIRE + 16)?,
        2 => MAX_WIRE,
        _ => u.int_in_range(NET_HDR_LEN + 14..=NET_HDR_LEN + 1514)?,
    })
}

/// A virtio-net header: zeros, a typical offload request, or any bytes.
fn header(u: &mut Unstructured) -> Result<[u8; NET_HDR_LEN]> {
    let mut h = [0u8; NET_HDR_LEN];
    match u.int_in_range(0u8..=3)? {
        0 => {}
        1 => {
            h[0] = 1; // NEEDS_CSUM
            h[1] = u.int_in_range(0..=4)?;
            h[2..4].copy_from_slice(&54u16.to_le_bytes());
            h[4..6].copy_from_slice(&1448u16.to_le_bytes());
            h[6..8].copy_from_slice(&34u16.to_le_bytes());
            h[8..10].copy_from_slice(&16u16.to_le_bytes());
            h[10..12].copy_from_slice(&u.arbitrary::<u16>()?.to_le_bytes());
        }
        _ => u.fill_buffer(&mut h)?,
    }
    Ok(h)
}

/// The driver's side of one queue.
struct Driver {
    l: Layout,
    avail_idx: u16,
}

impl Driver {
    fn publish(&mut self, mem: &Mem, head: u16) {
        let slot = u64::from(self.avail_idx % self.l.size);
        let _ = mem.write_obj(head, GuestAddress(self.l.avail.wrapping_add(4 + 2 * slot)));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.l.avail.wrapping_add(2)));
    }
}

fn write_desc(mem: &Mem, table: u64, i: u16, d: (u64, u32, u16, u16)) {
    let at = table.wrapping_add(16 * u64::from(i));
    let _ = mem.write_obj(d.0, GuestAddress(at));
    let _ = mem.write_obj(d.1, GuestAddress(at.wrapping_add(8)));
    let _ = mem.write_obj(d.2, GuestAddress(at.wrapping_add(12)));
    let _ = mem.write_obj(d.3, GuestAddress(at.wrapping_add(14)));
}

/// Puts `bufs` (`(addr, len, writable)`) in queue `q` as one chain, in the main table from a
/// fuzz-chosen index or in the queue's indirect table, maybe after one mutation, and publishes
/// it.
fn add_chain(
    u: &mut Unstructured,
    mem: &Mem,
    q: usize,
    d: &mut Driver,
    mut bufs: Vec<(u64, u32, bool)>,
) -> Result<()> {
    if one_in(u, 5)? {
        let k = u.int_in_range(0..=bufs.len() - 1)?;
        match u.int_in_range(0u8..=2)? {
            0 => bufs[k].2 = !bufs[k].2,
            1 => bufs[k].1 = buf_len(u)?,
            _ => bufs[k].0 = buf_addr(u)?,
        }
    }
    let l = d.l;
    let indirect = one_in(u, 4)?;
    let (table, n, first) = if indirect {
        (INDIRECT[q], bufs.len() as u16, 0u16)
    } else {
        (l.desc, l.size, u.int_in_range(0..=l.size - 1)?)
    };
    for (k, &(addr, len, w)) in bufs.iter().enumerate() {
        let i = first.wrapping_add(k as u16) % n;
        let last = k + 1 == bufs.len();
        let flags = if last { 0 } else { F_NEXT } | if w { F_WRITE } else { 0 };
        write_desc(mem, table, i, (addr, len, flags, (i + 1) % n));
    }
    let head = if indirect {
        let head = u.int_in_range(0..=l.size - 1)?;
        let len = 16 * bufs.len() as u32;
        write_desc(mem, l.desc, head, (table, len, F_INDIRECT, 0));
        head
    } else {
        first
    };
    d.publish(mem, head);
    trace!("queue {q}: chain {bufs:x?} indirect {indirect} head {head}");
    Ok(())
}

/// A transmit frame laid out as a driver does: the header (maybe split) and the payload over up
/// to four descriptors, in slots (or the large area for a big frame).
fn tx_frame(u: &mut Unstructured, mem: &Mem, d: &mut Driver) -> Result<()> {
    let h = header(u)?;
    let total = frame_len(u)?.max(NET_HDR_LEN);
    let mut bytes = h.to_vec();
    bytes.extend((NET_HDR_LEN..total).map(|i| (i as u8).wrapping_mul(7) ^ 0xa5));
    let pieces = u.int_in_range(1..=4usize)?;
    let mut cuts: Vec<usize> = (1..pieces)
        .map(|_| u.int_in_range(0..=total))
        .collect::<Result<_>>()?;
    if one_in(u, 2)? {
        cuts.push(NET_HDR_LEN);
    }
    cuts.push(0);
    cuts.push(total);
    cuts.sort_unstable();
    cuts.dedup();
    let big = total > SLOT as usize;
    let mut bufs = Vec::new();
    for (k, w) in cuts.windows(2).enumerate() {
        let at = if big {
            BIG_AT + w[0] as u64 + 16 * k as u64
        } else {
            SLOTS_AT + SLOT * (k as u64 % 12)
        };
        let _ = mem.write_slice(&bytes[w[0]..w[1]], GuestAddress(at));
        bufs.push((at, (w[1] - w[0]) as u32, false));
    }
    add_chain(u, mem, TX as usize, d, bufs)
}

/// A receive chain of one to four writable buffers.
fn rx_buffers(u: &mut Unstructured, mem: &Mem, d: &mut Driver) -> Result<()> {
    let n = u.int_in_range(1..=4u64)?;
    let mut bufs = Vec::new();
    for k in 0..n {
        let len = match u.int_in_range(0u8..=5)? {
            0 => u.int_in_range(0..=NET_HDR_LEN as u32)?,
            1 => u.int_in_range(0..=0x7f0)?,
            2 if k == 0 => 0x1_0000 + 0x100,
            _ => 0x7f0,
        };
        let at = if len > 0x7f0 {
            BIG_AT
        } else {
            RX_SLOTS_AT + SLOT * u.int_in_range(0..=11)?
        };
        bufs.push((at, len, true));
    }
    add_chain(u, mem, RX as usize, d, bufs)
}

/// What the device may do to guest RAM in one serve, and what it saw.
struct Before {
    ram: Ram,
    next_used: u16,
    /// A ring overlaps another ring, a table or a buffer of the queue.
    self_modifying: bool,
}

fn before(mem: &Mem, l: &Layout, set: &QueueSet, q: u16) -> Before {
    let ram = Ram::snapshot(mem, &REGIONS);
    let rings = ring_ranges(&ram, l);
    let bufs = buffer_ranges(&ram, l, false);
    let self_modifying = rings
        .iter()
        .enumerate()
        .any(|(i, a)| rings[i + 1..].iter().any(|b| overlap(*a, *b)))
        || rings.iter().any(|r| bufs.iter().any(|b| overlap(*r, *b)));
    Before {
        ram,
        next_used: set.next_used(q),
        self_modifying,
    }
}

/// The chains queue `q` completed since `b`: `(head, used len, its walk)`, checked against the
/// available ring and the used ring in RAM.
/// The chains the driver has made available and the device has not completed after a serve:
/// their writable buffers are the device's to write (it may read a frame into chains and give
/// them back when the frame turns out longer, or the driver has too few for it).
fn still_available(b: &Before, l: &Layout, set: &QueueSet, q: u16) -> Vec<Walked> {
    let Some(avail) = l.avail_idx(&b.ram) else {
        return Vec::new();
    };
    let n = avail.wrapping_sub(set.next_used(q)).min(l.size);
    (0..n)
        .filter_map(|k| {
            let head = l.avail_head(&b.ram, set.next_used(q).wrapping_add(k))?;
            walk(&b.ram, l.desc, l.size, head)
        })
        .collect()
}

fn completions(
    b: &Before,
    after: &Ram,
    l: &Layout,
    set: &QueueSet,
    q: u16,
) -> Vec<(u16, u32, Walked)> {
    let n = set.next_used(q).wrapping_sub(b.next_used);
    if n > 0 {
        assert_eq!(
            l.used_idx(after),
            Some(set.next_used(q)),
            "queue {q}: the used index in RAM is not the chains completed"
        );
    } else {
        assert_eq!(
            l.used_idx(after),
            l.used_idx(&b.ram),
            "queue {q}: the used index moved without a completion"
        );
    }
    let mut out = Vec::new();
    for k in 0..n {
        let pos = b.next_used.wrapping_add(k);
        let head = l
            .avail_head(&b.ram, pos)
            .expect("the available ring is in RAM");
        let (id, len) = l.used_elem(after, pos).expect("the used ring is in RAM");
        assert_eq!(
            id,
            u32::from(head),
            "queue {q}: used element {pos} names another chain than the available ring offered"
        );
        let Some(w) = walk(&b.ram, l.desc, l.size, head) else {
            panic!(
                "queue {q}: the device completed the chain from head {head}, which is malformed"
            );
        };
        out.push((head, len, w));
    }
    out
}

/// On a failed serve, the harness must see why: the last chain taken is malformed, or the
/// available index ran more than the queue size ahead.
fn check_failure(b: &Before, l: &Layout, next_avail: u16, e: &ServeError, q: u16) {
    match e {
        ServeError::Chain(_) => {
            let head = l
                .avail_head(&b.ram, next_avail.wrapping_sub(1))
                .expect("the available ring is in RAM");
            assert!(
                walk(&b.ram, l.desc, l.size, head).is_none(),
                "queue {q}: the device refused the chain from head {head} ({e}), which is well-formed"
            );
        }
        ServeError::AvailIdx(ahead, _) => {
            let idx = l.avail_idx(&b.ram).expect("the available ring is in RAM");
            assert!(
                *ahead > l.size && idx.wrapping_sub(next_avail) == *ahead,
                "queue {q}: available index {idx} is {ahead} ahead of {next_avail}?"
            );
        }
        e => panic!("queue {q}: the serve failed on rings checked at setup: {e}"),
    }
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Whether `sub` is, in order, a subsequence of `of`.
fn subsequence(sub: &[Vec<u8>], of: &[Vec<u8>]) -> bool {
    let mut it = of.iter();
    sub.iter().all(|s| it.any(|o| o == s))
}

struct Rig {
    mem: Mem,
    peer: UnixDatagram,
    stats: Arc<NetStats>,
    features: u64,
    handler: Box<dyn QueueHandler>,
    set: QueueSet,
    drivers: [Driver; 2],
    /// Set when a serve failed: the device serves nothing until reset.
    needs_reset: bool,
    /// Frames the host sent, not yet seen in the guest (some never will: dropped).
    sent: VecDeque<Vec<u8>>,
}

impl Rig {
    fn setup_queue(&mut self, q: usize) {
        let l = self.drivers[q].l;
        let _ = self.mem.write_slice(
            &vec![0u8; 6 + 8 * usize::from(l.size)],
            GuestAddress(l.used),
        );
        let _ = self
            .mem
            .write_obj(0u16, GuestAddress(l.avail.wrapping_add(2)));
        self.drivers[q].avail_idx = 0;
        let event_idx = self.features & VIRTIO_F_RING_EVENT_IDX != 0;
        let r = self.set.set(
            &self.mem,
            q as u16,
            net::QUEUE_SIZE,
            l.size,
            (l.desc, l.avail, l.used),
            event_idx,
        );
        trace!("queue {q}: {l:x?}: {r:?}");
    }

    fn serve_tx(&mut self) {
        if self.needs_reset || !self.set.enabled(TX) {
            return;
        }
        let l = self.drivers[TX as usize].l;
        let b = before(&self.mem, &l, &self.set, TX);
        let (frames0, dropped0) = (
            counter(&self.stats.tx_frames),
            counter(&self.stats.tx_dropped),
        );
        let r = self.set.serve(&self.mem, TX, self.handler.as_mut());
        trace!("serve tx: {r:?}");
        let after = Ram::snapshot(&self.mem, &REGIONS);
        let mut got = Vec::new();
        let mut buf = vec![0u8; MAX_WIRE + 64];
        while let Ok(n) = self.peer.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        let completed = u64::from(self.set.next_used(TX).wrapping_sub(b.next_used));
        let (frames, dropped) = (
            counter(&self.stats.tx_frames) - frames0,
            counter(&self.stats.tx_dropped) - dropped0,
        );
        assert_eq!(got.len() as u64, frames, "frames on the wire vs tx_frames");
        assert_eq!(
            frames + dropped,
            completed,
            "tx counters vs chains completed"
        );
        if r.is_err() {
            self.needs_reset = true;
        }
        if b.self_modifying {
            return;
        }
        let used = l.used_range();
        for at in b.ram.changed(&after) {
            assert!(
                inside(at, &[used]),
                "a transmit serve wrote guest RAM at {at:#x}, outside the transmit used ring"
            );
        }
        let mut expect = Vec::new();
        for (head, len, w) in completions(&b, &after, &l, &self.set, TX) {
            assert_eq!(
                len, 0,
                "transmit chain from head {head} completed with length {len}"
            );
            let n = w.len(false);
            if w.len(true) == 0 && (NET_HDR_LEN as u64..=MAX_WIRE as u64).contains(&n) {
                // As the guest wrote it, num_buffers too (a tap skips it).
                let f = w
                    .stream(&b.ram, false, n)
                    .expect("a walked chain is in RAM");
                expect.push(f);
            }
        }
        assert!(
            subsequence(&got, &expect),
            "the backend got frames the guest did not send, or out of order"
        );
        match &r {
            Ok(_) => {
                let idx = l.avail_idx(&after).expect("avail ring in RAM");
                assert_eq!(self.set.next_avail(TX), idx, "a transmit serve left chains");
            }
            Err(e) => check_failure(&b, &l, self.set.next_avail(TX), e, TX),
        }
    }

    fn serve_rx(&mut self, why: Ready) {
        if self.needs_reset {
            return;
        }
        let l = self.drivers[RX as usize].l;
        let b = before(&self.mem, &l, &self.set, RX);
        let rx0 = counter(&self.stats.rx_frames);
        let (signal, err) = self.set.ready(&self.mem, self.handler.as_mut(), why);
        trace!("ready {why:?}: interrupt {signal:?}, error {err:?}");
        let after = Ram::snapshot(&self.mem, &REGIONS);
        if err.is_some() {
            self.needs_reset = true;
        }
        if !self.set.enabled(RX) || b.self_modifying {
            return;
        }
        let done = completions(&b, &after, &l, &self.set, RX);
        let lent = still_available(&b, &l, &self.set, RX);
        let mut writable = vec![l.used_range()];
        writable.extend(lent.iter().flat_map(|w| w.writable_ranges()));
        for (head, len, w) in &done {
            assert!(
                u64::from(*len) <= w.len(true),
                "receive chain from head {head}: used length {len} over its {} writable bytes",
                w.len(true)
            );
            writable.extend(w.writable_ranges());
        }
        for at in b.ram.changed(&after) {
            assert!(
                inside(at, &writable),
                "a receive serve wrote guest RAM at {at:#x}, outside the used ring and the writable buffers of the chains made available"
            );
        }
        if err.is_none() {
            assert_eq!(
                self.set.next_used(RX),
                self.set.next_avail(RX),
                "the receive queue holds chains it took"
            );
        }
        // Frames are checked where no buffer the device may write overlaps another.
        let bufs: Vec<_> = done
            .iter()
            .flat_map(|c| c.2.writable_ranges())
            .chain(lent.iter().flat_map(|w| w.writable_ranges()))
            .collect();
        let disjoint = bufs
            .iter()
            .enumerate()
            .all(|(i, a)| bufs[i + 1..].iter().all(|b| !overlap(*a, *b)));
        if !disjoint || err.is_some() {
            return;
        }
        // The frames, out of the chains in completion order.
        let mrg = self.features & net::features::MRG_RXBUF != 0;
        let csum = self.features & net::features::GUEST_CSUM != 0;
        let mut delivered = 0u64;
        let mut k = 0;
        while k < done.len() {
            let (head, len, w) = &done[k];
            if *len == 0 {
                k += 1;
                continue;
            }
            let first = w
                .stream(&after, true, u64::from(*len))
                .expect("a walked chain is in RAM");
            assert!(
                first.len() >= NET_HDR_LEN,
                "receive chain from head {head} got {len} bytes, less than a header"
            );
            let count = u16::from_le_bytes([first[NUM_BUFFERS], first[NUM_BUFFERS + 1]]);
            if !mrg {
                assert_eq!(count, 1, "num_buffers without MRG_RXBUF");
            }
            assert!(
                count >= 1 && k + usize::from(count) <= done.len(),
                "num_buffers {count} but {} chains completed from here",
                done.len() - k
            );
            let mut frame = first;
            for (_, n, w) in &done[k + 1..k + usize::from(count)] {
                frame.extend(w.stream(&after, true, u64::from(*n)).expect("in RAM"));
            }
            k += usize::from(count);
            let mut hit = false;
            while let Some(mut f) = self.sent.pop_front() {
                if f.len() < NET_HDR_LEN {
                    continue;
                }
                if !csum {
                    f[..NUM_BUFFERS].fill(0);
                }
                f[NUM_BUFFERS..NET_HDR_LEN].copy_from_slice(&count.to_le_bytes());
                if f == frame {
                    hit = true;
                    break;
                }
            }
            assert!(
                hit,
                "the guest received a frame of {} bytes the host did not send (or out of order)",
                frame.len()
            );
            delivered += 1;
        }
        assert_eq!(
            counter(&self.stats.rx_frames) - rx0,
            delivered,
            "rx_frames vs frames in the guest's buffers"
        );
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let regions: Vec<_> = REGIONS
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = Mem::from_ranges(&regions).expect("guest RAM");
    let (ours, peer) = UnixDatagram::pair().expect("socket pair");
    ours.set_nonblocking(true).expect("non-blocking");
    peer.set_nonblocking(true).expect("non-blocking");
    let backend = Arc::new(Backend {
        sock: ours,
        offloads: Mutex::new(Vec::new()),
    });
    let mut dev =
        Net::new(backend.clone(), MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])).expect("virtio-net");
    let offered = dev.features() | devices::virtio::TRANSPORT_FEATURES;
    let features = offered & u.arbitrary::<u64>()? | VIRTIO_F_VERSION_1;
    let handler = dev.activate(features).expect("activate");
    let layouts = [layout(u, 0)?, layout(u, 1)?];
    let mut rig = Rig {
        mem,
        peer,
        stats: dev.stats(),
        features,
        handler,
        set: QueueSet::new(2),
        drivers: layouts.map(|l| Driver { l, avail_idx: 0 }),
        needs_reset: false,
        sent: VecDeque::new(),
    };
    rig.setup_queue(0);
    rig.setup_queue(1);
    let mut activations = vec![features];
    trace!("features {features:#x}");

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=19)? {
            0..=2 => tx_frame(u, &rig.mem, &mut rig.drivers[TX as usize])?,
            3..=4 => rx_buffers(u, &rig.mem, &mut rig.drivers[RX as usize])?,
            5 => {
                // A raw descriptor in a main table or an indirect table.
                let q = usize::from(one_in(u, 2)?);
                let l = rig.drivers[q].l;
                let base = if one_in(u, 4)? { INDIRECT[q] } else { l.desc };
                let i = u.int_in_range(0..=l.size.saturating_sub(1).max(7))?;
                let addr = if one_in(u, 8)? {
                    INDIRECT[q] + 16 * u.int_in_range(0..=7)?
                } else {
                    buf_addr(u)?
                };
                let len = buf_len(u)?;
                let flags: u16 = match u.int_in_range(0u8..=5)? {
                    0 => u.arbitrary()?,
                    1 => F_INDIRECT,
                    2 => F_NEXT,
                    3 => F_NEXT | F_WRITE,
                    4 => F_WRITE,
                    _ => 0,
                };
                let next = if one_in(u, 6)? {
                    u.arbitrary()?
                } else {
                    (i + 1) % 8
                };
                write_desc(&rig.mem, base, i, (addr, len, flags, next));
                trace!("desc {base:#x}[{i}] = {addr:#x}+{len:#x} flags {flags:#x} next {next}");
            }
            6 => {
                let q = usize::from(one_in(u, 2)?);
                let head: u16 = if one_in(u, 8)? {
                    u.arbitrary()?
                } else {
                    u.int_in_range(0..=7)?
                };
                rig.drivers[q].publish(&rig.mem, head);
                trace!("queue {q}: publish head {head}");
            }
            7 => {
                let q = usize::from(one_in(u, 2)?);
                let d = &mut rig.drivers[q];
                d.avail_idx = u.arbitrary()?;
                let _ = rig
                    .mem
                    .write_obj(d.avail_idx, GuestAddress(d.l.avail.wrapping_add(2)));
                trace!("queue {q}: avail idx = {}", d.avail_idx);
            }
            8 => {
                // used_event
                let q = usize::from(one_in(u, 2)?);
                let l = rig.drivers[q].l;
                let v: u16 = u.arbitrary()?;
                let at = l.avail.wrapping_add(4 + 2 * u64::from(l.size));
                let _ = rig.mem.write_obj(v, GuestAddress(at));
            }
            9 => {
                let at = u.int_in_range(0..=RAM_END)?;
                let len = u.int_in_range(0..=32)?;
                let mut b = vec![0u8; len];
                u.fill_buffer(&mut b)?;
                let _ = rig.mem.write_slice(&b, GuestAddress(at));
            }
            10..=12 => {
                // The host sends frames.
                for _ in 0..u.int_in_range(1..=4)? {
                    let len = frame_len(u)?.min(MAX_WIRE);
                    let mut f = vec![0u8; len];
                    let h = header(u)?;
                    let n = len.min(NET_HDR_LEN);
                    f[..n].copy_from_slice(&h[..n]);
                    for (i, b) in f.iter_mut().enumerate().skip(NET_HDR_LEN) {
                        *b = (i as u8).wrapping_mul(13) ^ 0x3c;
                    }
                    match rig.peer.send(&f) {
                        Ok(_) => rig.sent.push_back(f),
                        Err(e) => trace!("host send of {len} bytes: {e}"),
                    }
                    trace!("host sends {len} bytes");
                }
            }
            13..=14 => rig.serve_tx(),
            15..=16 => rig.serve_rx(Ready::Fd(0)),
            17 => {
                let why = if one_in(u, 2)? {
                    Ready::Queue(RX)
                } else {
                    Ready::Fd(1)
                };
                rig.serve_rx(why);
            }
            18 => {
                // The driver puts a queue elsewhere (as after a reset of its own).
                let q = usize::from(one_in(u, 2)?);
                if one_in(u, 2)? {
                    rig.drivers[q].l = layout(u, q)?;
                }
                rig.set.disable(q as u16);
                rig.setup_queue(q);
            }
            19 => {
                // Device reset: a new handler, maybe other features, both queues set up again.
                let features = offered & u.arbitrary::<u64>()? | VIRTIO_F_VERSION_1;
                rig.handler = dev.activate(features).expect("activate");
                rig.features = features;
                activations.push(features);
                rig.needs_reset = false;
                rig.set = QueueSet::new(2);
                rig.setup_queue(0);
                rig.setup_queue(1);
                trace!("device reset, features {features:#x}");
            }
            _ => unreachable!("op range"),
        }
    }
    let told = backend
        .offloads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let want: Vec<u32> = activations.iter().map(|&f| expected_offloads(f)).collect();
    assert_eq!(told, want, "offloads set at activation");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
