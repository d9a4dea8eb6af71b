//! The Windows-facing platform from inside the `hv_probe` guest (docs/firmware.md,
//! "Windows-facing platform"): where the hypervisor leaves are with and without `--hyperv` and
//! `--cpu hide-kvm`, and the RTC in UTC and in local time (`--rtc base=localtime`).
//!
//! This project's machine has no Hyper-V support in its KVM (no `KVM_CAP_HYPERV_CPUID`): here
//! `hyperv_on_gives_the_hyperv_leaves_or_one_clear_error` checks the error; on a host whose KVM
//! has it (the rig's L1 runs the same guest, `checks/64-hyperv.sh`) it checks the leaves and
//! every enlightenment from inside.

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{guest, run, run_cmd, vfiovm_bin, Outcome};

/// One `cpuid: 0x... eax=.. ebx=.. ecx=.. edx=.. text=..` line of `hv_probe`: the four
/// registers and the text of EBX..EDX.
fn leaf(o: &Outcome, leaf: u32) -> ([u32; 4], String) {
    let prefix = format!("cpuid: {leaf:#x} ");
    let line = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no line for leaf {leaf:#x}: {o:#?}"));
    let field = |name: &str| {
        line.split(' ')
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    let reg = |name: &str| u32::from_str_radix(field(name).trim_start_matches("0x"), 16).unwrap();
    (
        [reg("eax="), reg("ebx="), reg("ecx="), reg("edx=")],
        line.split("text=").nth(1).unwrap_or("").to_string(),
    )
}

fn probe(extra: &[&str]) -> Outcome {
    let g = guest("hv_probe");
    let mut args = vec!["--kernel", g.as_str(), "--memory", "64M"];
    args.extend_from_slice(extra);
    run(&args)
}

/// Whether this host's KVM offers Hyper-V CPUID (as vfiovm decides it).
fn host_has_hyperv() -> bool {
    let kvm = kvm_ioctls::Kvm::new().expect("/dev/kvm");
    vfiovm::hyperv::host_leaves(&kvm)
        .expect("asking KVM")
        .is_some()
}

#[test]
fn without_hyperv_kvm_is_at_0x40000000() {
    let o = probe(&[]);
    o.expect_status(1).expect_clean_stderr(0);
    assert_eq!(o.value("cpuid"), Some("hypervisor-bit=1"), "{o:#?}");
    let (r, text) = leaf(&o, 0x4000_0000);
    assert_eq!(text, "KVMKVMKVM", "{o:#?}");
    assert_eq!(r[0], 0x4000_0010, "the highest KVM leaf: the timing leaf");
    // KVM's feature leaf is there (kvm-clock at least, bit 3: KVM_FEATURE_CLOCKSOURCE2).
    assert_ne!(leaf(&o, 0x4000_0001).0[0] & (1 << 3), 0, "{o:#?}");
    assert_eq!(leaf(&o, 0x4000_0100).0, [0; 4], "nothing at 0x40000100");
    assert_eq!(o.value("hv"), Some("interface=none"));
    // The same with --hyperv off said out loud.
    let off = probe(&["--hyperv", "off"]);
    off.expect_status(1);
    assert_eq!(leaf(&off, 0x4000_0000), (r, "KVMKVMKVM".to_string()));
}

#[test]
fn hide_kvm_leaves_no_kvm_signature_and_keeps_the_hypervisor_bit() {
    let o = probe(&["--cpu", "hide-kvm"]);
    o.expect_status(1).expect_clean_stderr(0);
    assert_eq!(o.value("cpuid"), Some("hypervisor-bit=1"), "{o:#?}");
    for l in [
        0x4000_0000,
        0x4000_0001,
        0x4000_0010,
        0x4000_0100,
        0x4000_0101,
    ] {
        let (r, text) = leaf(&o, l);
        assert!(!text.contains("KVM"), "{l:#x}: {o:#?}");
        assert_eq!(r, [0; 4], "{l:#x}: {o:#?}");
    }
    assert!(!o.stdout.contains("KVMKVMKVM"), "{o:#?}");
}

#[test]
fn hyperv_on_gives_the_hyperv_leaves_or_one_clear_error() {
    let o = probe(&["--hyperv", "on", "--cmdline", "test=hv"]);
    if !host_has_hyperv() {
        // This project's machine: one line, status 2, the guest never ran.
        o.expect_status(2).expect_clean_stderr(1);
        assert!(
            o.stderr.starts_with(
                "vfiovm: error: --hyperv on: this host's KVM offers no Hyper-V enlightenments"
            ),
            "{o:#?}"
        );
        assert!(o.stdout.is_empty(), "{o:#?}");
        return;
    }
    o.expect_status(1);
    let (r, text) = leaf(&o, 0x4000_0000);
    assert_eq!(
        (r[0], text.as_str()),
        (0x4000_000A, "Microsoft Hv"),
        "{o:#?}"
    );
    assert_eq!(o.value("hv"), Some("interface=Hv#1"), "{o:#?}");
    let (kvm, kvm_text) = leaf(&o, 0x4000_0100);
    assert_eq!((kvm[0], kvm_text.as_str()), (0x4000_0110, "KVMKVMKVM"));
    assert!(o.stdout.contains("hv: ok\n"), "{o:#?}");
    assert!(o.stdout.contains("hv: reset-msr gp\n"), "{o:#?}");
    // With a vendor id of its own and KVM hidden.
    let o = probe(&["--hyperv", "on", "--cpu", "hide-kvm,hv-vendor-id=VFIOVM"]);
    o.expect_status(1);
    assert_eq!(leaf(&o, 0x4000_0000).1, "VFIOVM", "{o:#?}");
    assert_eq!(leaf(&o, 0x4000_0100).0, [0; 4], "{o:#?}");
}

/// Seconds of the day now, in UTC.
fn utc_secs_of_day() -> i64 {
    (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 86_400) as i64
}

/// Runs `hv_probe` under the time zone `tz` and returns how far its RTC is ahead of UTC, in
/// seconds (-43200..43200).
fn rtc_ahead_of_utc(tz: &str, extra: &[&str]) -> i64 {
    let g = guest("hv_probe");
    let mut cmd = Command::new(vfiovm_bin());
    cmd.env("TZ", tz)
        .args(["--kernel", g.as_str(), "--memory", "64M"]);
    cmd.args(extra);
    let before = utc_secs_of_day();
    let o = run_cmd(&mut cmd, None, Duration::from_secs(60));
    o.expect_status(1);
    let line = o.value("rtc").unwrap_or_else(|| panic!("{o:#?}"));
    let secs: i64 = line
        .strip_prefix("secs-of-day=")
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let ahead = (secs - before).rem_euclid(86_400);
    if ahead > 43_200 {
        ahead - 86_400
    } else {
        ahead
    }
}

#[test]
fn rtc_in_utc_by_default_and_in_local_time_when_asked() {
    // A POSIX zone string, so no zoneinfo file is needed: UTC+05:30 (IST-5:30 is 5:30 east).
    const IST: &str = "IST-5:30";
    let near = |got: i64, want: i64| (got - want).abs() <= 5;
    let utc = rtc_ahead_of_utc(IST, &[]);
    assert!(
        near(utc, 0),
        "the default RTC is UTC whatever TZ says: {utc} s ahead"
    );
    let explicit = rtc_ahead_of_utc(IST, &["--rtc", "base=utc"]);
    assert!(near(explicit, 0), "--rtc base=utc: {explicit} s ahead");
    let local = rtc_ahead_of_utc(IST, &["--rtc", "base=localtime"]);
    assert!(
        near(local, 19_800),
        "--rtc base=localtime in IST: {local} s ahead"
    );
    // West of Greenwich, across midnight or not: 8 hours behind.
    let west = rtc_ahead_of_utc("PST8", &["--rtc", "base=localtime"]);
    assert!(
        near(west, -28_800),
        "--rtc base=localtime in PST8: {west} s ahead"
    );
}
