//! vfiovm as a CI runner (docs/ci-runner.md), with the `runner_probe` and `pvh_probe` tiny
//! guests: every cause a run can end with, its exit status and its verdict file; the command
//! status round trip through the runner port; pvpanic and the console's panic line; the
//! timeouts and the stall watch (with every vCPU's registers on stderr), and a guest that keeps
//! printing is not called stalled.
//!
//! The limits are seconds and the guests either end at once or never: each assertion is on the
//! cause and the status, never on how long a run took beyond "it ended" (the harness's own
//! limit, 60 s, is far above every run's; the busiest run here, `chatter`, prints every 200 ms
//! against a 3 s stall limit).

mod common;

use common::json::Json;
use common::{guest, run, run_cmd, Outcome, TempFile};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A verdict path in a fresh directory, removed on drop.
struct VerdictDir(PathBuf);

impl VerdictDir {
    fn new(tag: &str) -> Self {
        let t = TempFile::new(tag, b"");
        let dir = PathBuf::from(format!("{}.d", t.path()));
        std::fs::create_dir_all(&dir).unwrap();
        VerdictDir(dir)
    }

    fn path(&self) -> String {
        self.0.join("verdict.json").to_string_lossy().into_owned()
    }

    /// The verdict, parsed; and nothing else left in the directory (no temporary file).
    fn read(&self) -> Json {
        let names: Vec<_> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["verdict.json"], "only the verdict in {:?}", self.0);
        Json::parse(&std::fs::read_to_string(self.path()).unwrap())
    }
}

impl Drop for VerdictDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `guest` with `cmdline` and `extra` flags and a verdict; returns the outcome and the
/// verdict, after checking the verdict's status is the process's.
fn verdict_of(image: &str, cmdline: &str, extra: &[&str]) -> (Outcome, Json) {
    let dir = VerdictDir::new("verdict");
    let v = dir.path();
    let kernel = guest(image);
    let mut args = vec!["--kernel", &kernel, "--cmdline", cmdline, "--verdict", &v];
    args.extend_from_slice(extra);
    let o = run(&args);
    let j = dir.read();
    assert_eq!(j.get("format").int(), Some(1));
    assert_eq!(
        j.get("status").int(),
        Some(i64::from(o.status)),
        "{o:#?}\n{j:?}"
    );
    assert!(j.get("run_ms").int().is_some());
    (o, j)
}

fn probe(test: &str, extra: &[&str]) -> (Outcome, Json) {
    verdict_of("runner_probe", &format!("test={test}"), extra)
}

fn cause(j: &Json) -> &str {
    j.get("cause").str().unwrap()
}

fn tail(j: &Json) -> Vec<&str> {
    j.get("console_tail")
        .array()
        .unwrap()
        .iter()
        .map(|l| l.str().unwrap())
        .collect()
}

#[test]
fn the_command_status_is_the_exit_status_exactly() {
    for n in [0, 1, 7, 255] {
        for how in ["status", "status-byte"] {
            let (o, j) = probe(&format!("{how}:{n}"), &[]);
            o.expect_status(n).expect_clean_stderr(0);
            assert_eq!(cause(&j), "command-exited", "{j:?}");
            assert_eq!(j.get("guest_status").int(), Some(i64::from(n)));
            assert_eq!(
                j.get("phase").int(),
                Some(2),
                "init reached, command started"
            );
            let boot = j.get("boot_ms").int().expect("init was reached");
            assert!(boot <= j.get("run_ms").int().unwrap());
            assert!(j.get("message").is_null());
            let t = tail(&j);
            assert_eq!(
                t.first(),
                Some(&"runner: signature 0x4e524656 (ok), version 2")
            );
            assert_eq!(
                t.last().copied(),
                Some(format!("runner: command exits with {n}")).as_deref()
            );
            assert!(t.contains(&"runner: pvpanic events 0x3"), "{t:?}");
        }
    }
}

#[test]
fn the_verdict_without_runner_flags_is_the_plain_run() {
    // No --verdict: same statuses, no file anywhere, nothing on stderr.
    run(&[
        "--kernel",
        &guest("runner_probe"),
        "--cmdline",
        "test=status:9",
    ])
    .expect_status(9)
    .expect_clean_stderr(0);
}

#[test]
fn debug_exit_reset_and_poweroff_are_their_own_causes() {
    let (o, j) = verdict_of("pvh_probe", "action=exit:3", &[]);
    o.expect_status(7).expect_clean_stderr(0);
    assert_eq!(cause(&j), "debug-exit");
    assert_eq!(j.get("guest_status").int(), Some(3));
    assert!(j.get("boot_ms").is_null(), "pvh_probe never reports init");
    assert_eq!(j.get("phase").int(), Some(0));
    for (action, want) in [("reset", "reset"), ("poweroff", "poweroff")] {
        let (o, j) = verdict_of("pvh_probe", &format!("action={action}"), &[]);
        o.expect_status(0).expect_clean_stderr(0);
        assert_eq!(cause(&j), want);
        assert!(j.get("guest_status").is_null());
        assert!(tail(&j).contains(&"done"), "{j:?}");
    }
}

#[test]
fn a_triple_fault_is_a_crash() {
    let (o, j) = verdict_of("pvh_probe", "action=fault", &[]);
    o.expect_status(4).expect_clean_stderr(1);
    assert_eq!(cause(&j), "triple-fault");
    assert!(j
        .get("message")
        .str()
        .unwrap()
        .contains("triple fault on vCPU 0"));
}

#[test]
fn pvpanic_bit_0_is_a_kernel_panic() {
    let (o, j) = probe("pvpanic", &[]);
    o.expect_status(6).expect_clean_stderr(1);
    assert!(
        o.stderr
            .contains("vfiovm: guest kernel panic, reported by its pvpanic driver"),
        "{o:#?}"
    );
    assert_eq!(cause(&j), "kernel-panic");
    assert!(j.get("guest_status").is_null());
    assert_eq!(tail(&j).last(), Some(&"runner: pvpanic panicked"));
}

#[test]
fn pvpanic_bit_1_lets_the_guest_run_and_is_still_a_panic() {
    let (o, j) = probe("crash-loaded", &[]);
    o.expect_status(6).expect_clean_stderr(1);
    assert!(
        o.stdout
            .contains("runner: the crash kernel runs, then resets"),
        "ran on: {o:#?}"
    );
    assert!(o.stderr.contains("crash kernel, and then reset"), "{o:#?}");
    assert_eq!(cause(&j), "kernel-panic");
}

#[test]
fn the_console_panic_line_is_a_kernel_panic() {
    // Then a reset (panic=N): not a pass.
    let (o, j) = probe("panic-reset", &[]);
    o.expect_status(6).expect_clean_stderr(1);
    assert!(
        o.stderr
            .contains("it printed 'Kernel panic - not syncing', and then reset"),
        "{o:#?}"
    );
    assert_eq!(cause(&j), "kernel-panic");
    assert!(tail(&j)
        .iter()
        .any(|l| l.starts_with("Kernel panic - not syncing: runner_probe")));
    // Then nothing (panic=0, the default): ended once quiet, with no limit asked for.
    let (o, j) = probe("panic-line", &[]);
    o.expect_status(6).expect_clean_stderr(1);
    assert!(o.stderr.contains("and then stayed quiet for 5 s"), "{o:#?}");
    assert_eq!(cause(&j), "kernel-panic");
    assert_eq!(
        tail(&j).last(),
        Some(&"---[ end Kernel panic - not syncing: runner_probe: test panic ]---")
    );
    // A panic line, then a stall: the panic is what the verdict says.
    let (o, j) = probe("panic-line", &["--stall-timeout", "1"]);
    o.expect_status(6);
    assert_eq!(cause(&j), "kernel-panic");
}

#[test]
fn the_timeout_ends_a_spinning_guest() {
    let (o, j) = probe("spin", &["--timeout", "2"]);
    o.expect_status(124).expect_clean_stderr(1);
    assert!(
        o.stderr
            .contains("vfiovm: timed out: the run took longer than --timeout 2 s"),
        "{o:#?}"
    );
    assert_eq!(cause(&j), "timeout");
    assert_eq!(j.get("phase").int(), Some(1));
    assert!(j.get("run_ms").int().unwrap() >= 2000);
    assert_eq!(tail(&j).last(), Some(&"runner: spinning"));
    // With -v, where each vCPU was.
    let (o, _) = probe("spin", &["--timeout", "2", "-v", "--cpus", "2"]);
    o.expect_status(124);
    for cpu in 0..2 {
        assert!(
            o.stderr.contains(&format!("vCPU {cpu} registers: rip=")),
            "{o:#?}"
        );
    }
}

#[test]
fn the_boot_timeout_needs_the_init_to_report() {
    let (o, j) = probe("no-init", &["--boot-timeout", "2"]);
    o.expect_status(122).expect_clean_stderr(1);
    assert!(
        o.stderr
            .contains("vfiovm: boot timed out: the guest's init did not report"),
        "{o:#?}"
    );
    assert_eq!(cause(&j), "boot-timeout");
    assert!(j.get("boot_ms").is_null());
    assert_eq!(j.get("phase").int(), Some(0));
    // An init that reports in time is not timed out, even when its command runs long.
    let (o, j) = probe("spin", &["--boot-timeout", "1", "--timeout", "3"]);
    o.expect_status(124);
    assert_eq!(cause(&j), "timeout");
    assert!(j.get("boot_ms").int().is_some());
}

#[test]
fn a_halted_guest_stalls_and_every_vcpu_is_dumped() {
    // cli; hlt on the boot vCPU; the AP waits for a SIPI that never comes. Neither exits.
    let (o, j) = probe("halt", &["--stall-timeout", "2", "--cpus", "2"]);
    o.expect_status(120);
    assert!(o.stderr.contains("vfiovm: guest stalled: no console output and no exit to the VMM for --stall-timeout 2 s"), "{o:#?}");
    for cpu in 0..2 {
        assert!(
            o.stderr.contains(&format!("vCPU {cpu} registers: rip=")),
            "no -v needed: {o:#?}"
        );
    }
    assert_eq!(cause(&j), "stall");
    assert_eq!(tail(&j).last(), Some(&"runner: halting"));
}

#[test]
fn a_spinning_guest_stalls() {
    let (o, j) = probe("spin", &["--stall-timeout", "2", "--timeout", "50"]);
    o.expect_status(120);
    assert!(o.stderr.contains("vCPU 0 registers: rip="), "{o:#?}");
    assert_eq!(cause(&j), "stall");
}

#[test]
fn a_guest_printing_steadily_is_not_stalled() {
    let (o, j) = probe("chatter", &["--stall-timeout", "3", "--timeout", "8"]);
    o.expect_status(124);
    assert_eq!(cause(&j), "timeout", "{o:#?}");
    let t = tail(&j);
    assert!(
        t.iter()
            .filter(|l| l.starts_with("runner: chatter "))
            .count()
            > 10,
        "{t:?}"
    );
    assert!(t.len() <= 50, "the tail keeps 50 lines");
}

#[test]
fn a_failed_build_still_writes_a_verdict() {
    let dir = VerdictDir::new("no-kernel");
    let v = dir.path();
    let o = run(&["--kernel", "/nonexistent/bzImage", "--verdict", &v]);
    o.expect_status(2).expect_clean_stderr(1);
    let j = dir.read();
    assert_eq!(cause(&j), "vmm-error");
    assert_eq!(j.get("status").int(), Some(2));
    assert!(j
        .get("message")
        .str()
        .unwrap()
        .starts_with("cannot open kernel '/nonexistent/bzImage'"));
    assert!(tail(&j).is_empty());
}

#[test]
fn no_dev_kvm_is_an_error_with_a_verdict_never_a_fallback() {
    let dir = VerdictDir::new("no-kvm");
    let script = format!(
        "mount -t tmpfs none /dev && exec {} --kernel {} --cmdline test=status:0 --verdict {}",
        common::vfiovm_bin().display(),
        guest("runner_probe"),
        dir.path()
    );
    let o = run_cmd(
        Command::new("unshare").args(["-m", "sh", "-c", &script]),
        None,
        Duration::from_secs(30),
    );
    o.expect_status(2).expect_clean_stderr(1);
    assert!(o.stdout.is_empty(), "no guest ran: {o:#?}");
    let j = dir.read();
    assert_eq!(cause(&j), "vmm-error");
    assert!(j
        .get("message")
        .str()
        .unwrap()
        .starts_with("cannot open /dev/kvm: it does not exist"));
}

#[test]
fn a_verdict_path_that_cannot_work_fails_before_the_guest_runs() {
    let o = run(&[
        "--kernel",
        &guest("runner_probe"),
        "--cmdline",
        "test=status:0",
        "--verdict",
        "/nonexistent/dir/verdict.json",
    ]);
    o.expect_status(2).expect_clean_stderr(1);
    assert!(o.stderr.starts_with("vfiovm: error: cannot write --verdict /nonexistent/dir/verdict.json: creating /nonexistent/dir/verdict.json.tmp."), "{o:#?}");
    assert!(o.stdout.is_empty(), "no guest ran: {o:#?}");
}

#[test]
fn bad_command_lines_write_no_verdict() {
    let dir = VerdictDir::new("bad-cli");
    let v = dir.path();
    for bad in [
        vec!["--kernel", "k", "--verdict", &v, "--bogus"],
        vec!["--kernel", "k", "--verdict", &v, "--timeout", "soon"],
    ] {
        run(&bad).expect_status(2).expect_clean_stderr(1);
    }
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        0,
        "no verdict, no temporary file"
    );
}

#[test]
fn the_verdict_escapes_what_the_guest_printed() {
    // Every byte pvh_probe's command line echo prints back goes through JSON escaping; quotes
    // and backslashes are the cases that matter.
    let (o, j) = verdict_of("pvh_probe", r#"action=exit:0 x="a\b""#, &[]);
    o.expect_status(1);
    assert!(
        tail(&j).iter().any(|l| l.contains(r#"x="a\b""#)),
        "{:?}",
        tail(&j)
    );
}

/// `--exec` with `runner_probe` standing in for vfiovm's init (Linux does not boot on this
/// host's KVM; the rig runs the real init, resources/rig/payload-vfiovm/checks/62-exec.sh): the
/// guest's COM1 stays off stdout, the status comes back exactly, and a run that does not end
/// with the command's status shows the end of the kernel's console on stderr.
#[test]
fn exec_keeps_the_kernel_console_off_stdout_and_returns_the_status() {
    let (o, j) = probe("status:7", &["--exec", "true"]);
    o.expect_status(7);
    assert!(o.stdout.is_empty(), "COM1 is not on stdout: {o:#?}");
    assert_eq!(cause(&j), "command-exited");
    assert!(tail(&j).contains(&"runner: command exits with 7"), "{j:?}");
    assert!(
        o.stderr
            .contains("--exec: the kernel image names no release"),
        "{o:#?}"
    );
    assert!(!o.stderr.contains("guest: "), "{o:#?}");

    let (o, j) = probe("init-failed", &["--exec", "true"]);
    o.expect_status(118);
    assert_eq!(cause(&j), "init-error");
    assert!(o.stdout.is_empty(), "{o:#?}");
    assert!(
        o.stderr
            .contains("guest: vfiovm-init: cannot run the command: runner_probe says so\n"),
        "{o:#?}"
    );
    assert!(
        o.stderr.contains(
            "vfiovm: the guest's init could not run the command; its 'vfiovm-init:' line above says why"
        ),
        "{o:#?}"
    );

    let (o, j) = probe("panic-reset", &["--exec", "true"]);
    o.expect_status(6);
    assert_eq!(cause(&j), "kernel-panic");
    assert!(
        o.stderr
            .contains("guest: Kernel panic - not syncing: runner_probe: test panic"),
        "{o:#?}"
    );
}

/// The same guest without `--exec` writes 0x100 as a status vfiovm ignores no more: it is the
/// init's failure whoever writes it, and the status table has it (docs/ci-runner.md).
#[test]
fn init_failed_without_exec_is_still_its_own_cause() {
    let (o, j) = probe("init-failed", &[]);
    o.expect_status(118);
    assert_eq!(cause(&j), "init-error");
    assert!(
        o.stdout.contains("vfiovm-init: cannot run the command"),
        "{o:#?}"
    );
}

/// `--save-initramfs FILE` writes the initramfs `--exec` boots with (a cpio archive with the
/// init and the command) and runs nothing.
#[test]
fn save_initramfs_writes_the_archive_and_runs_nothing() {
    let dir = VerdictDir::new("saved");
    let file = format!("{}.cpio", dir.path());
    let kernel = guest("runner_probe");
    let o = run(&[
        "--kernel",
        &kernel,
        "--exec",
        "echo saved-command",
        "--save-initramfs",
        &file,
    ]);
    o.expect_status(0);
    assert!(o.stdout.is_empty(), "{o:#?}");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(&bytes[..6], b"070701", "a newc cpio archive");
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"echo saved-command"));
    assert!(has(b"vfiovm/shares"));
    assert!(has(b"TRAILER!!!"));
}
