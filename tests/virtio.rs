//! The virtio devices seen from inside a guest: `virtio_probe` (a virtio 1.x PCI driver written
//! from the specification, checked against QEMU's devices by
//! `resources/guests/qemu-virtio-check.sh`) finds them, negotiates, sets up its queues with
//! one MSI-X vector each and uses them, with the seccomp filters on (so the I/O threads run
//! under theirs).

mod common;

use common::{guest, run, Outcome};

/// Debug-exit status of a guest that ran `exit:0`.
const STATUS_OK: i32 = 1;

fn probe(test: &str, extra: &[&str]) -> Outcome {
    let cmdline = format!("test={test}");
    let image = guest("virtio_probe");
    let mut args = vec![
        "--kernel",
        image.as_str(),
        "--memory",
        "128M",
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(!o.stderr.contains("panicked"), "VMM panicked: {o:#?}");
    o
}

fn line<'a>(o: &'a Outcome, prefix: &str) -> &'a str {
    o.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?}: {o:#?}"))
}

/// `--rng`: the guest finds one modern virtio-rng function, takes it up with MSI-X and reads
/// 8 KiB of entropy through it: two different, non-zero buffers, each completion an interrupt.
#[test]
fn rng_gives_the_guest_entropy() {
    let o = probe("rng", &["--rng"]);
    o.expect_status(STATUS_OK);
    let dev = line(&o, "virtio: 00:");
    assert!(dev.contains("type=4 name=rng device=0x1044 rev=1"), "{dev}");
    assert!(
        dev.contains("modern=yes") && dev.contains("vectors=2"),
        "{dev}"
    );
    let init = line(&o, "virtio: 00:01.0 init");
    assert!(
        init.contains("status=0xf") && init.contains("msix=yes"),
        "{init}"
    );
    let sum = line(&o, "rng: dev=00:01.0 bytes=8192");
    assert!(sum.contains("differ=yes nonzero=yes"), "{sum}");
    assert!(
        !sum.contains("irqs=0 "),
        "completions must interrupt: {sum}"
    );
    assert!(o.stdout.contains("rng: ok"), "{o:#?}");
    assert!(o.stdout.contains("virtio_probe: failures=0"), "{o:#?}");
}

/// Without `--rng` there is no virtio device, and the probe says so.
#[test]
fn no_virtio_device_unless_asked() {
    let o = probe("list", &[]);
    assert!(o.stdout.contains("virtio: devices=0"), "{o:#?}");
}
