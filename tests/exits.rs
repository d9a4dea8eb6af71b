//! How a guest ends the VM, and the exit status that follows: reset and power-off → 0,
//! debug-exit v → (v << 1) | 1, a triple fault → 4 with one line on stderr, SIGTERM → 143.

mod common;

use common::{guest, run, run_with_input, vfiovm_bin};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn action(a: &str) -> common::Outcome {
    run(&[
        "--kernel",
        &guest("pvh_probe"),
        "--cmdline",
        &format!("action={a}"),
    ])
}

#[test]
fn i8042_reset_exits_zero() {
    let o = action("reset");
    o.expect_status(0).expect_clean_stderr(0);
    assert!(o.stdout.contains("action: reset"));
}

#[test]
fn acpi_poweroff_exits_zero() {
    let o = action("poweroff");
    o.expect_status(0).expect_clean_stderr(0);
    assert!(o.stdout.contains("via pm1a_cnt=0x604 slp_typ=5"), "{o:#?}");
}

#[test]
fn cf9_reset_exits_zero() {
    action("cf9").expect_status(0).expect_clean_stderr(0);
}

#[test]
fn debug_exit_statuses() {
    for (v, status) in [(0u32, 1), (3, 7), (0x10, 33), (127, 255), (128, 1)] {
        let o = action(&format!("exit:{v}"));
        o.expect_status(status).expect_clean_stderr(0);
    }
}

#[test]
fn triple_fault_is_a_crash_with_one_line() {
    let o = action("fault");
    o.expect_status(4).expect_clean_stderr(1);
    assert!(
        o.stderr.contains("guest crashed: triple fault on vCPU 0"),
        "{o:#?}"
    );
    // With -v the registers are dumped too.
    let o = run(&[
        "-v",
        "--kernel",
        &guest("pvh_probe"),
        "--cmdline",
        "action=fault",
    ]);
    o.expect_status(4);
    assert!(o.stderr.contains("vCPU 0 registers: rip="), "{o:#?}");
}

#[test]
fn sigterm_stops_a_hung_guest_cleanly() {
    for (sig, status) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let child = Command::new(vfiovm_bin())
            .args([
                "--kernel",
                &guest("pvh_probe"),
                "--cpus",
                "2",
                "--cmdline",
                "action=hang",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the guest has printed its last line before hanging.
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let start = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "stopped promptly");
        assert_eq!(out.status.code(), Some(status), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("stopped by signal {sig}")),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"));
    }
}

/// Console input from a pipe reaches the guest in order and whole, including more than the
/// 16550's FIFO holds at once (the VMM must hold the rest back, not drop it).
#[test]
fn stdin_pipe_feeds_the_serial_port() {
    let mut input = String::new();
    let lines: Vec<String> = (0..20)
        .map(|i| format!("line {i:02} {}", "x".repeat(90)))
        .collect();
    for l in &lines {
        input.push_str(l);
        input.push('\n');
    }
    input.push_str("quit\n");
    let o = run_with_input(
        &["--kernel", &guest("echo"), "--memory", "64M"],
        Some(input.as_bytes()),
        Duration::from_secs(60),
    );
    o.expect_status(85).expect_clean_stderr(0);
    let echoed: Vec<&str> = o
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("echo: "))
        .collect();
    let mut want: Vec<&str> = vec!["ready"];
    want.extend(lines.iter().map(|s| s.as_str()));
    want.push("quit");
    assert_eq!(echoed, want);
}
