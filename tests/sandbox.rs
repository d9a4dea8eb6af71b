//! Seccomp sandboxing (docs/security.md): every thread of a running VMM has a filter by default
//! and none with `--no-seccomp`; a syscall outside a filter kills the whole process by SIGSYS
//! (status 159), on the VMM thread and on a vCPU thread alike, while the same run without
//! filters survives. The other integration tests run with the filters on, so they check that the
//! filters allow everything those runs do; the terminal test here covers what they cannot (raw
//! mode, Ctrl-A x, restoring the terminal under the filter).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{guest, vfiovm_bin};

const SIGSYS: i32 = 31;
const LIMIT: Duration = Duration::from_secs(60);

/// `vfiovm args…` with core dumps off (a SIGSYS death would dump core), stdin closed.
fn command(args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -c 0; exec \"$0\" \"$@\"")
        .arg(vfiovm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` (killing it after [`LIMIT`]); returns its status, stdout and stderr.
fn finish(child: Child) -> (ExitStatus, String, String) {
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => {
            let out = out.expect("wait for vfiovm");
            (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("vfiovm did not finish within {LIMIT:?}");
        }
    }
}

fn run(args: &[&str]) -> (ExitStatus, String, String) {
    finish(command(args).spawn().expect("start vfiovm"))
}

/// The `Seccomp:` mode (0 off, 2 filter) of every thread of `pid` that runs vfiovm's code,
/// with the thread names. KVM's own worker tasks (`kvm-nx-lpage-recovery`) are listed under the
/// process too but run only kernel code; they are left out.
fn seccomp_modes(pid: u32) -> Vec<(String, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut modes = Vec::new();
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let Some(name) = field("Name:")
            .filter(|n| n == "vfiovm" || n.starts_with("vcpu") || n.starts_with("virtio-"))
        else {
            continue;
        };
        if let Some(mode) = field("Seccomp:") {
            modes.push((name, mode.parse().unwrap_or(u32::MAX)));
        }
    }
    modes.sort();
    modes
}

/// Starts a 2-vCPU guest that hangs, samples `probe(pid)` until `settled` accepts it or time
/// runs out, stops the VMM with SIGTERM and returns the last sample, the status and stderr.
fn probe_a_running_vm<T>(
    extra: &[&str],
    probe: impl Fn(u32) -> T,
    settled: impl Fn(&T) -> bool,
) -> (T, ExitStatus, String) {
    let kernel = guest("pvh_probe");
    let mut args = vec![
        "--kernel",
        &kernel,
        "--cpus",
        "2",
        "--cmdline",
        "action=hang",
    ];
    args.extend_from_slice(extra);
    let child = command(&args).spawn().expect("start vfiovm");
    let pid = child.id();
    let start = Instant::now();
    let mut sample;
    loop {
        sample = probe(pid);
        if settled(&sample) || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let (status, _, stderr) = finish(child);
    (sample, status, stderr)
}

/// The seccomp modes of a running 2-vCPU VM's three threads, once all show `want`.
fn modes_of_a_running_vm(extra: &[&str], want: u32) -> (Vec<(String, u32)>, ExitStatus, String) {
    let devices = extra
        .iter()
        .filter(|a| **a == "--rng" || **a == "--share")
        .count();
    let threads = 3 + devices;
    probe_a_running_vm(extra, seccomp_modes, |modes| {
        modes.len() == threads && modes.iter().all(|(_, m)| *m == want)
    })
}

#[test]
fn every_thread_is_filtered_by_default_and_none_with_no_seccomp() {
    let (modes, status, stderr) = modes_of_a_running_vm(&[], 2);
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["vcpu0", "vcpu1", "vfiovm"], "{modes:?}");
    assert!(modes.iter().all(|(_, m)| *m == 2), "{modes:?}");
    // SIGTERM still stops it cleanly: signalfd, kicks, joins and teardown under the filters.
    assert_eq!(status.code(), Some(143), "{status:?}: {stderr}");
    assert!(stderr.contains("stopped by signal 15"), "{stderr}");

    let (modes, status, stderr) = modes_of_a_running_vm(&["--no-seccomp"], 0);
    assert_eq!(modes.len(), 3, "{modes:?}");
    assert!(modes.iter().all(|(_, m)| *m == 0), "{modes:?}");
    assert_eq!(status.code(), Some(143), "{status:?}: {stderr}");
}

/// A virtio device's I/O thread (made while the VM is built, so no vCPU filter is inherited)
/// runs under its own filter from the moment the guest runs, whether or not the guest ever
/// starts the device.
#[test]
fn virtio_io_threads_are_filtered_too() {
    let (modes, status, stderr) = modes_of_a_running_vm(&["--rng"], 2);
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["vcpu0", "vcpu1", "vfiovm", "virtio-rng"],
        "{modes:?}"
    );
    assert!(modes.iter().all(|(_, m)| *m == 2), "{modes:?}");
    assert_eq!(status.code(), Some(143), "{status:?}: {stderr}");
    let (modes, _, _) = modes_of_a_running_vm(&["--rng", "--no-seccomp"], 0);
    assert_eq!(modes.len(), 4, "{modes:?}");
}

/// A `--share`'s virtio-9p I/O thread runs under a filter too (its own, with the file-system
/// calls of the 9P server: `seccomp::tests` checks what it allows and refuses).
#[test]
fn virtio_9p_io_threads_are_filtered_too() {
    let dir = std::env::temp_dir().join(format!("vfiovm-sandbox-9p-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let share = dir.to_str().unwrap();
    let (modes, status, stderr) = modes_of_a_running_vm(&["--share", share, "--rng"], 2);
    let names: Vec<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["vcpu0", "vcpu1", "vfiovm", "virtio-9p0", "virtio-rng"],
        "{modes:?}"
    );
    assert!(modes.iter().all(|(_, m)| *m == 2), "{modes:?}");
    assert_eq!(status.code(), Some(143), "{status:?}: {stderr}");
    let (modes, _, _) = modes_of_a_running_vm(&["--share", share, "--no-seccomp"], 0);
    assert_eq!(modes.len(), 4, "{modes:?}");
    let _ = std::fs::remove_dir(&dir);
}

/// Descriptor numbers of `pid` (above stdio) that stay open across `exec`: `flags:` in
/// `/proc/PID/fdinfo/N` lacks O_CLOEXEC. Each comes with what it is (`anon_inode:[eventfd]`…).
fn inheritable_fds(pid: &str) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok());
        if n > 2 && flags.is_some_and(|f| f & libc::O_CLOEXEC as u32 == 0) {
            let what = std::fs::read_link(e.path()).unwrap_or_default();
            out.push((n, what.display().to_string()));
        }
    }
    out.sort();
    out
}

/// Every descriptor the VMM opens (eventfds of interrupts and ioeventfds, KVM, epoll, signalfd,
/// the virtio threads' wake and stop events) is closed on `exec`, so none leaks into another
/// program. The test process's own inheritable descriptors (from whoever started it) reach
/// vfiovm legitimately and are left out.
#[test]
fn no_descriptor_of_a_running_vm_survives_exec() {
    let ours: Vec<u32> = inheritable_fds("self")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let (leaks, status, stderr) = probe_a_running_vm(
        &["--rng", "--test-pci-device"],
        |pid| {
            let all = inheritable_fds(&pid.to_string());
            // Settled once all four threads run: the VM is built by then.
            (seccomp_modes(pid).len(), all)
        },
        |(threads, _)| *threads == 4,
    );
    assert_eq!(leaks.0, 4, "the VM never ran: {stderr}");
    let leaks: Vec<_> = leaks
        .1
        .into_iter()
        .filter(|(n, _)| !ours.contains(n))
        .collect();
    assert!(leaks.is_empty(), "descriptors without O_CLOEXEC: {leaks:?}");
    assert_eq!(status.code(), Some(143), "{status:?}: {stderr}");
}

/// `--test-seccomp-violation=site` kills the process by SIGSYS; with `--no-seccomp` the same
/// run ends the way the guest ends it.
fn violation_kills(site: &str, thread: &str) {
    let kernel = guest("pvh_probe");
    let args = [
        "--kernel",
        &kernel,
        "--cpus",
        "2",
        "--cmdline",
        "action=exit:3",
        "--test-seccomp-violation",
        site,
    ];
    let announce = format!("the {thread} thread opens /dev/null");

    let (status, stdout, stderr) = run(&args);
    assert_eq!(
        status.signal(),
        Some(SIGSYS),
        "{status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains(&announce), "{stderr}");
    assert!(!stderr.contains("survived"), "{stderr}");

    let mut args = args.to_vec();
    args.push("--no-seccomp");
    let (status, stdout, stderr) = run(&args);
    assert_eq!(status.code(), Some(7), "{status:?}\n{stderr}");
    assert!(stdout.contains("action: exit:3"), "{stdout}");
    assert!(stderr.contains(&announce), "{stderr}");
    assert!(
        stderr.contains(&format!("the {thread} thread survived (seccomp is off)")),
        "{stderr}"
    );
}

#[test]
fn a_forbidden_syscall_on_the_vmm_thread_kills_the_process() {
    violation_kills("vmm", "VMM");
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_thread_kills_the_process() {
    violation_kills("vcpu", "vCPU 0");
}

/// A terminal on stdin (through `script`, util-linux): raw mode, console input, Ctrl-A x, and
/// restoring the terminal at the end all happen under the filters; then the same with a
/// violation, to show that a SIGSYS death is what `script` would report (159).
#[test]
fn terminal_console_works_under_the_filters() {
    let run_in_pty = |extra: &str| {
        let cmd = format!(
            "ulimit -c 0; exec {} --kernel {} --cmdline action=hang {extra}",
            vfiovm_bin().display(),
            guest("pvh_probe")
        );
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs vfiovm in a pseudo-terminal");
        let mut input = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            // Let the guest reach its hang first, then type Ctrl-A x.
            std::thread::sleep(Duration::from_millis(500));
            let _ = input.write_all(b"\x01x");
            // Keep the pty open until vfiovm has gone.
            std::thread::sleep(Duration::from_secs(5));
        });
        finish(child)
    };
    let (status, stdout, _) = run_in_pty("");
    assert_eq!(status.code(), Some(130), "{status:?}\n{stdout}");
    assert!(stdout.contains("stopped by signal 2"), "{stdout}");

    let (status, stdout, _) = run_in_pty("--test-seccomp-violation=vmm");
    assert_eq!(status.code(), Some(128 + SIGSYS), "{status:?}\n{stdout}");
}

/// The `Uid:`, `Gid:` and `Groups:` lines of `pid`'s status.
fn ids(pid: u32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Groups:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// `--user`: as root, the running VMM has switched every ID and dropped its groups, and still
/// stops cleanly (teardown needs no privilege); not as root, it refuses with one clear line.
#[test]
fn user_drops_root_once_the_vm_is_built() {
    // SAFETY: geteuid only returns this process's effective user ID.
    if unsafe { libc::geteuid() } != 0 {
        let kernel = guest("pvh_probe");
        let (status, _, stderr) = run(&["--kernel", &kernel, "--user", "65534:65534"]);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("cannot drop privileges to --user 65534:65534"),
            "{stderr}"
        );
        return;
    }
    let want = [
        "Uid: 65534 65534 65534 65534",
        "Gid: 65533 65533 65533 65533",
        "Groups:",
    ];
    let (seen, status, stderr) =
        probe_a_running_vm(&["--user", "65534:65533"], ids, |ids| ids == &want);
    assert_eq!(seen, want, "{stderr}");
    assert_eq!(status.code(), Some(143), "{status:?}: {stderr}");
    assert!(stderr.contains("stopped by signal 15"), "{stderr}");
}
