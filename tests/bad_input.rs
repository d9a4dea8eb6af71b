//! Bad input from the user: one clear line on stderr naming the cause and the fix, exit
//! status 2, never a panic.

mod common;

use common::{guest, run, run_cmd, TempFile};
use std::process::Command;
use std::time::Duration;

const ERROR: i32 = 2;

fn expect_error(args: &[&str], needle: &str) {
    let o = run(args);
    o.expect_status(ERROR).expect_clean_stderr(1);
    assert!(
        o.stderr.contains(needle),
        "stderr should mention {needle:?}: {o:#?}"
    );
    assert!(o.stderr.starts_with("vfiovm: error: "), "{o:#?}");
}

#[test]
fn no_kernel() {
    expect_error(&[], "no kernel given: pass --kernel");
}

#[test]
fn missing_kernel_file() {
    expect_error(
        &["--kernel", "/nonexistent/vmlinuz"],
        "cannot open kernel '/nonexistent/vmlinuz': No such file or directory",
    );
}

#[test]
fn kernel_is_a_directory() {
    expect_error(&["--kernel", "/tmp"], "kernel '/tmp' is not a regular file");
}

#[test]
fn missing_initramfs() {
    expect_error(
        &[
            "--kernel",
            &guest("exit_now"),
            "--initramfs",
            "/nonexistent/initrd",
        ],
        "cannot open initramfs '/nonexistent/initrd'",
    );
}

#[test]
fn unknown_kernel_format() {
    let f = TempFile::new("garbage", &[0x5a; 8192]);
    expect_error(&["--kernel", f.path()], "unknown kernel format");
    let empty = TempFile::new("empty", b"");
    expect_error(&["--kernel", empty.path()], "unknown kernel format");
}

#[test]
fn truncated_elf() {
    let g = std::fs::read(guest("exit_now")).unwrap();
    let f = TempFile::new("truncated", &g[..80.min(g.len())]);
    expect_error(&["--kernel", f.path()], "ELF kernel could not be loaded");
}

#[test]
fn bad_memory_values() {
    let k = guest("exit_now");
    expect_error(
        &["--kernel", &k, "--memory", "lots"],
        "invalid --memory 'lots'",
    );
    expect_error(&["--kernel", &k, "--memory", "1M"], "too small");
    expect_error(
        &["--kernel", &k, "--memory", "99999999999999999999G"],
        "invalid --memory",
    );
    expect_error(
        &["--kernel", &k, "--memory", "64T"],
        "more than this host's",
    );
}

#[test]
fn bad_cpu_counts() {
    let k = guest("exit_now");
    expect_error(&["--kernel", &k, "--cpus", "0"], "invalid --cpus '0'");
    expect_error(&["--kernel", &k, "--cpus", "999"], "invalid --cpus '999'");
}

#[test]
fn unknown_option() {
    expect_error(&["--kernal", "x"], "unknown option '--kernal'");
}

#[test]
fn initramfs_too_large_for_memory() {
    let big = TempFile::new("big-initrd", &vec![0u8; 40 << 20]);
    expect_error(
        &[
            "--kernel",
            &guest("exit_now"),
            "--memory",
            "32M",
            "--initramfs",
            big.path(),
        ],
        "does not fit in guest RAM",
    );
}

/// /dev/kvm missing: run in a private mount namespace with an empty /dev.
#[test]
fn dev_kvm_missing() {
    let k = guest("exit_now");
    let script = format!(
        "mount -t tmpfs none /dev && exec {} --kernel {k}",
        common::vfiovm_bin().display()
    );
    let o = run_cmd(
        Command::new("unshare").args(["-m", "sh", "-c", &script]),
        None,
        Duration::from_secs(30),
    );
    o.expect_status(ERROR).expect_clean_stderr(1);
    assert!(o.stderr.contains("cannot open /dev/kvm"), "{o:#?}");
    assert!(o.stderr.contains("enable virtualization"), "{o:#?}");
}

/// /dev/kvm not permitted: run as an unprivileged user.
#[test]
fn dev_kvm_not_permitted() {
    let k = guest("exit_now");
    // The guest file must be readable by that user; copy it somewhere world-readable.
    let copy = TempFile::new("kernel-copy", &std::fs::read(&k).unwrap());
    let o = run_cmd(
        Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::vfiovm_bin().to_str().unwrap(),
            "--kernel",
            copy.path(),
        ]),
        None,
        Duration::from_secs(30),
    );
    o.expect_status(ERROR).expect_clean_stderr(1);
    assert!(o.stderr.contains("permission denied"), "{o:#?}");
    assert!(o.stderr.contains("'kvm' group"), "{o:#?}");
}
