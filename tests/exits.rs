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

/// Issue 11: a guest printing into a stdout nobody reads. Once the pipe is full, the vCPU
/// blocks writing the console; SIGTERM must still end vfiovm within 2 s (it used to wait 5 s
/// for the vCPU, give up, and tear the VM down under the still-running thread), and the bytes it
/// could not write are counted on stderr, not dropped silently.
#[test]
fn sigterm_stops_a_vm_whose_console_nobody_reads() {
    let mut child = Command::new(vfiovm_bin())
        .args(["--kernel", &guest("pvh_probe"), "--cmdline", "action=spam"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap(); // held open, never read
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    // Until the pipe is full: its fill level stops growing.
    let fill = || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `n`; the fd is our pipe's read end.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&stdout),
                libc::FIONREAD,
                &mut n,
            )
        };
        assert_eq!(r, 0);
        n
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = -1;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = fill();
        if now == last && now > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pipe never filled ({now} bytes)"
        );
        last = now;
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("vfiovm did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    drop(stdout);
    let stderr = err.join().unwrap();
    // Not a time bound (a loaded CI host took 3.9 s to tear the process down): what shows the
    // stop did not wait on the blocked console is that every vCPU joined before its deadline
    // (no "did not stop within" below), well inside the 10 s this loop allows.
    eprintln!("stopped {took:?} after SIGTERM");
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by signal 15"), "{stderr}");
    assert!(
        stderr.contains("of guest output were dropped at the stop because nobody read them"),
        "{stderr}"
    );
    assert!(!stderr.contains("did not stop within"), "{stderr}");
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
