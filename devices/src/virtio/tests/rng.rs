//! virtio-rng through the transport.

use super::*;
use crate::virtio::rng::{Rng, MAX_BYTES_PER_REQUEST};
use crate::virtio::VIRTIO_F_RING_EVENT_IDX;

fn up(features: u64) -> Driver {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.bring_up(features, &[16]);
    d
}

#[test]
fn fills_writable_buffers_with_random_bytes() {
    let mut d = up(0);
    let (a, b) = (0x20_0000u64, 0x30_0000u64);
    d.mem.write_slice(&[0u8; 256], GuestAddress(a)).unwrap();
    d.mem.write_slice(&[0u8; 256], GuestAddress(b)).unwrap();
    // Two buffers in one chain, and bytes after them that must stay untouched.
    let head = d.queues[0].add(&d.mem, &[(a, 64, true), (b, 100, true)]);
    d.notify(0);
    assert_eq!(d.queues[0].wait_used(&d.mem), (u32::from(head), 164));
    let mut x = [0u8; 256];
    d.mem.read_slice(&mut x, GuestAddress(a)).unwrap();
    assert!(
        x[..64].iter().any(|&v| v != 0),
        "64 random bytes are not all zero"
    );
    assert!(x[64..].iter().all(|&v| v == 0), "nothing past the buffer");
    let mut y = [0u8; 256];
    d.mem.read_slice(&mut y, GuestAddress(b)).unwrap();
    assert!(y[..100].iter().any(|&v| v != 0));
    assert!(y[100..].iter().all(|&v| v == 0));
    assert_ne!(x[..64], y[..64], "two draws differ");
    assert_eq!(d.wait_deliveries(1), vec![(d.gsis[1], Driver::msg(1))]);
}

#[test]
fn readable_only_chain_completes_empty_and_large_requests_are_capped() {
    let mut d = up(0);
    d.queues[0].add(&d.mem, &[(0x20_0000, 64, false)]);
    d.notify(0);
    assert_eq!(d.queues[0].wait_used(&d.mem).1, 0);
    d.queues[0].add(&d.mem, &[(0x20_0000, 1 << 20, true)]);
    d.notify(0);
    assert_eq!(
        u64::from(d.queues[0].wait_used(&d.mem).1),
        MAX_BYTES_PER_REQUEST
    );
}

#[test]
fn event_idx_suppresses_interrupts() {
    let mut d = up(VIRTIO_F_RING_EVENT_IDX);
    // The driver asks for an interrupt only after used index 3 is passed.
    d.queues[0].set_used_event(&d.mem, 3);
    for _ in 0..3 {
        d.queues[0].add(&d.mem, &[(0x20_0000, 8, true)]);
        d.notify(0);
        d.queues[0].wait_used(&d.mem);
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        d.irq.take_deliveries().is_empty(),
        "used index 1..=3 did not pass used_event 3"
    );
    d.queues[0].add(&d.mem, &[(0x20_0000, 8, true)]);
    d.notify(0);
    d.queues[0].wait_used(&d.mem);
    assert_eq!(d.wait_deliveries(1), vec![(d.gsis[1], Driver::msg(1))]);
    // And with EVENT_IDX the device asks for notifications through avail_event: it wrote the
    // next available index it expects (4) after the ring.
    let q = &d.queues[0];
    let avail_event: u16 = d
        .mem
        .read_obj(GuestAddress(q.used + 4 + 8 * u64::from(q.size)))
        .unwrap();
    assert_eq!(avail_event, 4);
}
