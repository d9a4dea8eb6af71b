//! `--share`: a host directory over virtio-9p, seen from inside a guest. `virtio_probe
//! test=9p` (a 9P2000.L client written from the protocol, resources/guests/virtio_9p.c) reads
//! the tag from the device configuration, reads a file the host put there, tries to walk `..`
//! and creates and writes a file, with the seccomp filters on (so the 9p I/O thread serves
//! under its own). And the command-line errors of a share that cannot be.

mod common;

use std::path::{Path, PathBuf};

use common::{guest, run, Outcome};

/// Debug-exit status of a guest that ran `exit:0`.
const STATUS_OK: i32 = 1;

/// A scratch directory with `hello.txt` in it, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vfiovm-9p-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("hello.txt"), b"hello from the host").unwrap();
        Dir(p)
    }

    fn arg(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.0.display())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn probe(shares: &[String]) -> Outcome {
    let image = guest("virtio_probe");
    let mut args = vec![
        "--kernel".to_string(),
        image,
        "--memory".into(),
        "128M".into(),
        "--cmdline".into(),
        "test=9p".into(),
    ];
    for s in shares {
        args.push("--share".into());
        args.push(s.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&args);
    assert!(!o.stderr.contains("panicked"), "VMM panicked: {o:#?}");
    o
}

fn value<'a>(o: &'a Outcome, prefix: &str) -> &'a str {
    o.stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?}: {o:#?}"))
}

/// Read-only (the default): the guest reads the host's file, `..` is refused with EPERM and
/// creating a file with EROFS; nothing appears in the directory.
#[test]
fn a_read_only_share_is_read_by_the_guest_and_refuses_changes() {
    let dir = Dir::new("ro");
    let o = probe(&[dir.arg("")]);
    o.expect_status(STATUS_OK);
    let dev = value(&o, "virtio: 00:01.0 ");
    assert!(dev.contains("type=9 name=9p device=0x1049"), "{dev}");
    assert_eq!(value(&o, "9p: dev=00:01.0 "), "tag_len=6 tag=share0");
    assert_eq!(value(&o, "9p: version "), "ecode=0 msize=8192");
    assert_eq!(value(&o, "9p: attach "), "ecode=0 qid_type=0x80");
    assert_eq!(
        value(&o, "9p: read "),
        "ecode=0 bytes=19 data=hello from the host"
    );
    assert_eq!(value(&o, "9p: walk-dotdot "), "ecode=1", "EPERM");
    assert_eq!(value(&o, "9p: create "), "ecode=30 written=0", "EROFS");
    assert!(!dir.0.join("from-guest.txt").exists());
    assert!(o.stdout.contains("virtio_probe: failures=0"), "{o:#?}");
}

/// `:rw`: the guest's file lands in the host directory, created with the VMM's user.
#[test]
fn a_writable_share_takes_the_guests_file() {
    let dir = Dir::new("rw");
    let other = Dir::new("rw-second");
    let o = probe(&[dir.arg(":rw"), other.arg(":ro")]);
    o.expect_status(STATUS_OK);
    assert_eq!(value(&o, "9p: dev=00:01.0 "), "tag_len=6 tag=share0");
    assert!(
        value(&o, "virtio: 00:02.0 ").contains("type=9 name=9p"),
        "the second share: {o:#?}"
    );
    assert_eq!(value(&o, "9p: create "), "ecode=0 written=20");
    let made = dir.0.join("from-guest.txt");
    assert_eq!(std::fs::read(&made).unwrap(), b"written by the guest");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&made).unwrap();
    // SAFETY: geteuid only returns this process's effective user ID.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    assert_eq!(meta.mode() & 0o7000, 0);
    assert!(!other.0.join("from-guest.txt").exists());
}

/// A share that cannot be: one line naming the path and the fix, status 2, before any guest
/// runs.
#[test]
fn bad_share_paths_are_refused_with_the_fix() {
    let kernel = guest("pvh_probe");
    let dir = Dir::new("bad");
    let missing = dir.0.join("missing");
    let file = dir.0.join("hello.txt");
    let cases: [(&Path, &str); 2] = [
        (
            &missing,
            "no such directory: give the path of an existing directory",
        ),
        (&file, "not a directory: give a directory"),
    ];
    for (path, why) in cases {
        let arg = format!("{}:rw", path.display());
        let o = run(&["--kernel", &kernel, "--share", &arg]);
        o.expect_status(2).expect_clean_stderr(1);
        let want = format!("vfiovm: error: --share {}: {why}", path.display());
        assert!(o.stderr.starts_with(&want), "{o:#?}");
        assert!(!o.stdout.contains("action:"), "the guest ran: {o:#?}");
    }
    // The host's root read-write holds /proc (and with it vfiovm's own memory): refused; the
    // same read-only is fine.
    let o = run(&["--kernel", &kernel, "--share", "/:rw"]);
    o.expect_status(2).expect_clean_stderr(1);
    assert!(
        o.stderr
            .starts_with("vfiovm: error: --share /:rw: /proc (proc) is mounted inside it"),
        "{o:#?}"
    );
    let o = run(&[
        "--kernel",
        &kernel,
        "--share",
        "/",
        "--cmdline",
        "action=exit:0",
    ]);
    o.expect_status(1);
    let o = run(&["--kernel", &kernel, "--share", ":rw"]);
    o.expect_status(2).expect_clean_stderr(1);
    assert!(
        o.stderr
            .starts_with("vfiovm: error: invalid --share ':rw': no directory given"),
        "{o:#?}"
    );
}
