//! QEMU's `pci-testdev` (`--pci-testdev`) from inside a guest: the multiboot `mb_pci_testdev`
//! guest finds 1b36:0005 through 0xCF8 as kvm-unit-tests does, runs every test of both BARs the
//! way kvm-unit-tests' `lib/pci-testdev.c` runs them (16 writes of DATA at OFFSET, COUNT read
//! back) on this host's KVM, and probes what a write the eventfd does not take counts. The
//! device's debug log says how often each test's eventfd was signalled and how many of those
//! writes exited to the VMM: none may, for the eventfd tests, or KVM did not take them.

mod common;

use common::{guest, run, Outcome};
use devices::pci::pci_testdev::{
    DATA_MATCH, DATA_NOMATCH, IO_TEST_BASE, MEM_TEST_BASE, PCI_TESTDEV_CLASS,
    PCI_TESTDEV_DEVICE_ID, PCI_TESTDEV_VENDOR_ID,
};

/// Debug-exit status of `action=exit:0`.
const STATUS_OK: i32 = 1;

fn probe(extra: &[&str]) -> Outcome {
    let g = guest("mb_pci_testdev");
    let mut args = vec![
        "--kernel",
        g.as_str(),
        "--memory",
        "64M",
        "--cmdline",
        "action=exit:0",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn ptd_lines(o: &Outcome) -> Vec<&str> {
    o.stdout
        .lines()
        .filter(|l| l.starts_with("ptd: ") && !l.starts_with("ptd: found at "))
        .collect()
}

#[test]
fn every_test_of_both_bars_as_kvm_unit_tests_runs_it() {
    let o = probe(&["--pci-testdev", "-vv"]);
    o.expect_status(STATUS_OK);
    assert!(!o.stderr.contains("panicked"), "{o:#?}");
    // No binding refused (the writes would exit to the VMM), nothing else to warn about.
    assert!(!o.stderr.contains("] warn: "), "{o:#?}");
    assert!(!o.stderr.contains("] error: "), "{o:#?}");
    let found = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("ptd: found at "))
        .unwrap_or_default();
    let id = u32::from(PCI_TESTDEV_DEVICE_ID) << 16 | u32::from(PCI_TESTDEV_VENDOR_ID);
    assert!(found.starts_with("0:"), "{}", o.stdout);
    assert!(
        found.ends_with(&format!(
            " id={id:#x} class={PCI_TESTDEV_CLASS:#x} bar0=mem bar1=io cmd-io=1 cmd-mem=1"
        )),
        "{}",
        o.stdout
    );
    let (m, n) = (DATA_MATCH, DATA_NOMATCH);
    let (mb, ib) = (MEM_TEST_BASE, IO_TEST_BASE);
    let want = [
        // Found as kvm-unit-tests finds it; BARs sized with decoding on (no warning for that).
        "ptd: kvm-unit-tests find=yes bar0-mask=0xfffff000 bar1-mask=0xffffff01".to_string(),
        // A no-eventfd test counts all 16 writes; an eventfd test none (KVM took them).
        format!("ptd: mem test=0 index=0 name=mmio-no-eventfd width=1 offset={:#x} data={m:#x} count=16 ok", mb),
        format!("ptd: mem test=1 index=1 name=mmio-wildcard-eventfd width=1 offset={:#x} data={n:#x} count=0 ok", mb + 1),
        format!("ptd: mem test=2 index=2 name=mmio-datamatch-eventfd width=1 offset={:#x} data={m:#x} count=0 ok", mb + 2),
        format!("ptd: io test=0 index=3 name=portio-no-eventfd width=1 offset={:#x} data={m:#x} count=16 ok", ib + 3),
        format!("ptd: io test=1 index=4 name=portio-wildcard-eventfd width=1 offset={:#x} data={n:#x} count=0 ok", ib + 4),
        format!("ptd: io test=2 index=5 name=portio-datamatch-eventfd width=1 offset={:#x} data={m:#x} count=0 ok", ib + 5),
        // outw at the port wildcard's OFFSET: KVM binds 1-byte writes, so it exits; its low
        // byte counts, as QEMU's.
        "ptd: probe portio-wildcard outw count=1".to_string(),
        // Not DATA: exits, does not count.
        "ptd: probe portio-datamatch 0xce count=0".to_string(),
        // A 2-byte write whose low byte is DATA counts once.
        "ptd: probe mmio-no-eventfd movw count=1".to_string(),
        "ptd: probe no-test test=0x0 offset=0x0".to_string(),
        "ptd: tests=6".to_string(),
    ];
    assert_eq!(ptd_lines(&o), want, "{}", o.stdout);

    // The host side: each eventfd test's 16 writes signalled its eventfd in KVM, none exited.
    for name in [
        "mmio-wildcard-eventfd",
        "mmio-datamatch-eventfd",
        "portio-wildcard-eventfd",
        "portio-datamatch-eventfd",
    ] {
        let line = format!(
            "pci-testdev: {name} ended: COUNT 0, eventfd signalled 16 times, 0 of them by writes that exited to the VMM"
        );
        assert!(o.stderr.contains(&line), "{line}\n{o:#?}");
    }
    for name in ["mmio-no-eventfd", "portio-no-eventfd"] {
        let line = format!("pci-testdev: {name} ended: COUNT 16\n");
        assert!(o.stderr.contains(&line), "{line}\n{o:#?}");
    }
}

#[test]
fn quiet_without_verbose_and_absent_unless_asked_for() {
    let o = probe(&["--pci-testdev"]);
    o.expect_status(STATUS_OK).expect_clean_stderr(0);
    assert!(o.stdout.contains("ptd: tests=6\n"), "{}", o.stdout);

    let o = probe(&[]);
    o.expect_status(STATUS_OK).expect_clean_stderr(0);
    assert_eq!(o.value("ptd"), Some("no pci-testdev"), "{}", o.stdout);
}

/// Beside the project's own test device: each in its own slot, both found.
#[test]
fn beside_the_test_pci_device() {
    let o = probe(&["--test-pci-device", "--pci-testdev"]);
    o.expect_status(STATUS_OK).expect_clean_stderr(0);
    assert!(o.stdout.contains("ptd: tests=6\n"), "{}", o.stdout);
}
