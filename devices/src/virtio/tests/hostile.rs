//! What a hostile or broken driver can build: each must fail its request or put the device in
//! NEEDS_RESET with a configuration interrupt; never a panic, a hang or an access outside
//! guest RAM.

use super::*;
use crate::virtio::rng::Rng;
use crate::virtio::STATUS_NEEDS_RESET;

fn rng_up() -> Driver {
    let mut d = Driver::new(Box::new(Rng::new()));
    d.bring_up(0, &[8]);
    d
}

/// The device reports NEEDS_RESET and raised the configuration vector (0), and serves nothing
/// more until reset; after a reset it works again.
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
    d.set_status(0);
    assert_eq!(d.status(), 0);
    d.mem
        .write_slice(
            &vec![0u8; 0x10000 * (sizes.len() + 1)],
            GuestAddress(0x10000),
        )
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
    q.write_desc(&d.mem, 0, 0x20_0000, 8, 1 | 2, 1);
    q.write_desc(&d.mem, 1, 0x20_1000, 8, 1 | 2, 0);
    q.publish(&d.mem, 0);
    d.notify(0);
    assert_needs_reset(&mut d, &[8]);
}
