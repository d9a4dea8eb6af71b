//! Shared helpers for the integration tests: start the real `vfiovm` binary, with a time limit,
//! and collect its exit status, stdout (the guest console) and stderr (the VMM's messages).
#![allow(dead_code)]

pub mod json;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn vfiovm_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vfiovm"))
}

/// Path of a tiny guest built by resources/guests.
pub fn guest(name: &str) -> String {
    guests::path(name)
        .unwrap_or_else(|| panic!("no guest named {name}"))
        .to_string_lossy()
        .into_owned()
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status (signals as 128 + n).
    pub status: i32,
    /// Guest console.
    pub stdout: String,
    /// VMM messages.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Outcome {
    /// The value of the first stdout line starting with `key: `.
    pub fn value(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}: ");
        self.stdout
            .lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
    }

    /// Panics with the whole output unless the status is `want`.
    pub fn expect_status(&self, want: i32) -> &Self {
        assert_eq!(self.status, want, "unexpected exit status; run: {self:#?}");
        self
    }

    /// Asserts stderr has no panic and at most `lines` lines.
    pub fn expect_clean_stderr(&self, lines: usize) -> &Self {
        assert!(!self.stderr.contains("panicked"), "VMM panicked: {self:#?}");
        assert!(
            self.stderr.lines().count() <= lines,
            "expected at most {lines} stderr line(s): {self:#?}"
        );
        self
    }
}

/// Runs `vfiovm` with `args` and `stdin` as its input, killing it after `limit`.
pub fn run_with_input(args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> Outcome {
    run_cmd(Command::new(vfiovm_bin()).args(args), stdin, limit)
}

/// Runs `vfiovm` with `args`, stdin closed (/dev/null), killing it after 60 s.
pub fn run(args: &[&str]) -> Outcome {
    run_with_input(args, None, Duration::from_secs(60))
}

/// Runs an arbitrary command the same way.
pub fn run_cmd(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vfiovm");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = String::from_utf8_lossy(&t_out.join().unwrap()).into_owned();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
            panic!("vfiovm did not finish within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Outcome {
        status: code,
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// A temporary file with `bytes`, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Writes `bytes` to a new file named after `tag`.
    pub fn new(tag: &str, bytes: &[u8]) -> Self {
        let p = std::env::temp_dir().join(format!(
            "vfiovm-test-{}-{tag}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::write(&p, bytes).unwrap();
        TempFile(p)
    }

    /// Its path as a string.
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
