//! vfiovm as a CI runner: the time limits on a run (`--timeout`, `--boot-timeout`,
//! `--stall-timeout`), the watch that enforces them, and the verdict (`--verdict FILE`) written
//! at the end of every run. docs/ci-runner.md is the user's side of it.
//!
//! The watch runs on the VMM thread, in its event loop: [`Watchdog::next_wake`] bounds how long
//! the loop sleeps, and [`Watchdog::check`] (given the time, the guest's progress counter and
//! what the guest reported) says whether the run must end and why. It is a pure function of its
//! inputs, so the tests drive it with made-up clocks. Progress is every exit from `KVM_RUN` the
//! guest caused on any vCPU plus every byte it wrote to a console: a guest that neither exits
//! nor prints (a `cli; hlt`, a tight loop, a kernel stuck with interrupts off) makes none.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exit::{ExitReason, GuestProgress, PANIC_QUIET};

/// How often the VMM thread looks at the run at least: a console panic line is acted on within
/// [`PANIC_QUIET`] plus this, a stall within its limit plus this.
pub const TICK: Duration = Duration::from_millis(250);
/// Largest time limit accepted, in seconds (about 115 days).
pub const MAX_LIMIT_SECS: f64 = 1e7;

/// The run's limits and its verdict file (`--timeout`, `--boot-timeout`, `--stall-timeout`,
/// `--verdict`); all off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerConfig {
    /// The whole run, from vfiovm's start.
    pub timeout: Option<Duration>,
    /// From vfiovm's start until the guest writes phase 1 to the runner port.
    pub boot_timeout: Option<Duration>,
    /// No console output and no exit to the VMM for this long.
    pub stall_timeout: Option<Duration>,
    /// Where the verdict goes.
    pub verdict: Option<PathBuf>,
}

/// Parses a time limit in seconds: a number greater than 0 (fractions allowed), at most
/// [`MAX_LIMIT_SECS`].
pub fn parse_secs(s: &str) -> Option<Duration> {
    let v: f64 = s.trim().parse().ok()?;
    (v.is_finite() && v > 0.0 && v <= MAX_LIMIT_SECS).then(|| Duration::from_secs_f64(v))
}

/// The watch over one run.
#[derive(Debug)]
pub struct Watchdog {
    config: RunnerConfig,
    start: Instant,
    last_progress: u64,
    last_change: Instant,
}

impl Watchdog {
    /// Watches a run that started at `start` (vfiovm's start: the limits count from there).
    pub fn new(config: &RunnerConfig, start: Instant) -> Self {
        Watchdog {
            config: config.clone(),
            start,
            last_progress: 0,
            last_change: start,
        }
    }

    /// The guest restarted in place at `now` (a reboot): the stall clock starts again, so the
    /// time the reboot took is not counted as the guest's silence. `--timeout` and
    /// `--boot-timeout` still count from vfiovm's start.
    pub fn restarted(&mut self, now: Instant) {
        self.last_change = now;
    }

    /// How long the event loop may sleep before the next [`Watchdog::check`].
    pub fn next_wake(&self, now: Instant) -> Duration {
        let mut wake = TICK;
        let mut until = |deadline: Instant| {
            wake = wake.min(deadline.saturating_duration_since(now));
        };
        if let Some(t) = self.config.timeout {
            until(self.start + t);
        }
        if let Some(t) = self.config.boot_timeout {
            until(self.start + t);
        }
        if let Some(t) = self.config.stall_timeout {
            until(self.last_change + t);
        }
        wake
    }

    /// Whether the run must end now, and why. `progress` only ever grows (exits plus console
    /// bytes); `guest` is what the guest reported; `panic_line` whether its console printed the
    /// kernel's panic line.
    pub fn check(
        &mut self,
        now: Instant,
        progress: u64,
        guest: &GuestProgress,
        panic_line: bool,
    ) -> Option<ExitReason> {
        if progress != self.last_progress {
            self.last_progress = progress;
            self.last_change = now;
        }
        let elapsed = now.saturating_duration_since(self.start);
        let quiet = now.saturating_duration_since(self.last_change);
        if let Some(limit) = self.config.timeout.filter(|&t| elapsed >= t) {
            return Some(ExitReason::Timeout { limit });
        }
        if let Some(limit) = self
            .config
            .boot_timeout
            .filter(|&t| elapsed >= t && guest.init_at.is_none())
        {
            return Some(ExitReason::BootTimeout { limit });
        }
        if panic_line && quiet >= PANIC_QUIET {
            return Some(ExitReason::KernelPanic {
                evidence: crate::exit::PanicEvidence::ConsoleLine,
                then: None,
            });
        }
        if let Some(limit) = self.config.stall_timeout.filter(|&t| quiet >= t) {
            return Some(ExitReason::Stall { limit });
        }
        None
    }
}

/// What the verdict says about one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `ExitReason::cause`, or `vmm-error` when the VM could not be built or run.
    pub cause: String,
    /// The process's exit status.
    pub status: i32,
    /// The command's status or the debug-exit value, when the run ended with one.
    pub guest_status: Option<u32>,
    /// The last phase the guest wrote to the runner port (0: none).
    pub phase: u32,
    /// From vfiovm's start to the guest's phase 1.
    pub boot_ms: Option<u64>,
    /// From vfiovm's start to the VM's stop.
    pub run_ms: u64,
    /// The line vfiovm printed on stderr about the stop (an error, a crash, a timeout), if any.
    pub message: Option<String>,
    /// The last console lines.
    pub console_tail: Vec<String>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Verdict {
    /// The verdict of a run that ended for `reason`.
    pub fn of_run(
        reason: &ExitReason,
        start: Instant,
        stopped: Instant,
        guest: &GuestProgress,
        console_tail: Vec<String>,
    ) -> Verdict {
        Verdict {
            cause: reason.cause().to_string(),
            status: reason.status(),
            guest_status: reason.guest_status(),
            phase: guest.phase,
            boot_ms: guest
                .init_at
                .map(|t| ms(t.saturating_duration_since(start))),
            run_ms: ms(stopped.saturating_duration_since(start)),
            message: reason.complaint(),
            console_tail,
        }
    }

    /// The verdict of a run that failed in the VMM (building the VM, or its event loop):
    /// `vmm-error` with `status`, and the error line.
    pub fn of_error(
        message: String,
        status: i32,
        start: Instant,
        guest: Option<&GuestProgress>,
        console_tail: Vec<String>,
    ) -> Verdict {
        let g = guest.copied().unwrap_or_default();
        Verdict {
            cause: "vmm-error".into(),
            status,
            guest_status: None,
            phase: g.phase,
            boot_ms: g.init_at.map(|t| ms(t.saturating_duration_since(start))),
            run_ms: ms(start.elapsed()),
            message: Some(message),
            console_tail,
        }
    }

    /// The verdict as one JSON object (docs/ci-runner.md has the fields), with a newline.
    pub fn to_json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        let mut s = String::from("{\n");
        s += "  \"format\": 1,\n";
        s += &format!("  \"cause\": {},\n", json_string(&self.cause));
        s += &format!("  \"status\": {},\n", self.status);
        s += &format!(
            "  \"guest_status\": {},\n",
            opt(self.guest_status.map(u64::from))
        );
        s += &format!("  \"phase\": {},\n", self.phase);
        s += &format!("  \"boot_ms\": {},\n", opt(self.boot_ms));
        s += &format!("  \"run_ms\": {},\n", self.run_ms);
        s += &format!(
            "  \"message\": {},\n",
            self.message
                .as_deref()
                .map_or("null".to_string(), json_string)
        );
        s += "  \"console_tail\": [";
        for (i, line) in self.console_tail.iter().enumerate() {
            s += if i == 0 { "\n    " } else { ",\n    " };
            s += &json_string(line);
        }
        s += if self.console_tail.is_empty() {
            "]\n"
        } else {
            "\n  ]\n"
        };
        s += "}\n";
        s
    }
}

/// `s` as a JSON string literal (RFC 8259: `"` and `\` escaped, control characters as `\uXXXX`
/// or their short forms; everything else, non-ASCII included, as is).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Errors writing the verdict.
#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    /// The temporary file beside the verdict cannot be created.
    #[error("cannot write --verdict {path}: creating {tmp}: {err} (is the directory there and writable?)")]
    Create {
        /// The verdict's path.
        path: PathBuf,
        /// The temporary file's.
        tmp: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// Writing or renaming failed at the end of the run.
    #[error("cannot write --verdict {path}: {step}: {err}")]
    Finish {
        /// The verdict's path.
        path: PathBuf,
        /// "writing" or "renaming the temporary file".
        step: &'static str,
        /// Why.
        err: std::io::Error,
    },
}

/// The verdict file, written atomically: a temporary file beside it, created before the VM is
/// built (so a bad path fails before any guest runs, and nothing needs `open` once the seccomp
/// filters are on), filled and renamed over the verdict's path at the end of the run. A
/// reader never sees a half-written verdict; a vfiovm killed with SIGKILL leaves the temporary
/// file (`FILE.tmp.PID`) and no verdict.
#[derive(Debug)]
pub struct VerdictFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl VerdictFile {
    /// Creates the temporary file for the verdict at `path`.
    pub fn create(path: &Path) -> Result<VerdictFile, VerdictError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".tmp.{}", std::process::id()));
        let tmp = path.with_file_name(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|err| VerdictError::Create {
                path: path.to_path_buf(),
                tmp: tmp.clone(),
                err,
            })?;
        Ok(VerdictFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    /// Writes `verdict` and renames it into place (`write` and `rename`: both allowed by the
    /// VMM thread's seccomp filter).
    pub fn finish(mut self, verdict: &Verdict) -> Result<(), VerdictError> {
        let path = self.path.clone();
        let fail = |step, err| VerdictError::Finish {
            path: path.clone(),
            step,
            err,
        };
        let mut file = self.file.take().expect("a verdict is finished once");
        file.write_all(verdict.to_json().as_bytes())
            .map_err(|e| fail("writing", e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| fail("renaming the temporary file", e))
    }
}

impl Drop for VerdictFile {
    fn drop(&mut self) {
        // Not finished (a panic on the way): leave no temporary file behind. This `unlink` only
        // runs before the filters are on, or never.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::PanicEvidence;

    fn cfg(timeout: Option<u64>, boot: Option<u64>, stall: Option<u64>) -> RunnerConfig {
        RunnerConfig {
            timeout: timeout.map(Duration::from_secs),
            boot_timeout: boot.map(Duration::from_secs),
            stall_timeout: stall.map(Duration::from_secs),
            verdict: None,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn limits_parse_as_positive_seconds() {
        assert_eq!(parse_secs("600"), Some(Duration::from_secs(600)));
        assert_eq!(parse_secs("0.5"), Some(Duration::from_millis(500)));
        for bad in ["0", "-1", "", "abc", "inf", "NaN", "1e8", "5s"] {
            assert_eq!(parse_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn nothing_armed_only_ticks() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(&cfg(None, None, None), t0);
        assert_eq!(w.next_wake(t0), TICK);
        let g = GuestProgress::default();
        assert_eq!(w.check(t0 + 1000 * S, 0, &g, false), None);
    }

    #[test]
    fn the_timeout_fires_at_its_deadline_whatever_the_guest_does() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(&cfg(Some(10), None, None), t0);
        let g = GuestProgress::default();
        assert_eq!(w.check(t0 + 9 * S, 5, &g, false), None);
        assert_eq!(w.next_wake(t0 + 10 * S - TICK / 2), TICK / 2);
        assert_eq!(
            w.check(t0 + 10 * S, 6, &g, false),
            Some(ExitReason::Timeout { limit: 10 * S })
        );
    }

    #[test]
    fn the_boot_timeout_needs_phase_one() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(&cfg(None, Some(5), None), t0);
        let mut g = GuestProgress::default();
        assert_eq!(w.check(t0 + 4 * S, 1, &g, false), None);
        assert_eq!(
            w.check(t0 + 5 * S, 2, &g, false),
            Some(ExitReason::BootTimeout { limit: 5 * S })
        );
        g.init_at = Some(t0 + 4 * S);
        g.phase = 1;
        assert_eq!(w.check(t0 + 100 * S, 3, &g, false), None, "disarmed");
    }

    #[test]
    fn the_stall_watch_counts_from_the_last_progress() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(&cfg(None, None, Some(3)), t0);
        let g = GuestProgress::default();
        // Steady progress: never stalled.
        for i in 1..100u64 {
            assert_eq!(w.check(t0 + Duration::from_secs(i), i, &g, false), None);
        }
        assert_eq!(w.check(t0 + 101 * S, 99, &g, false), None);
        assert_eq!(w.next_wake(t0 + 101 * S), TICK);
        assert_eq!(
            w.check(t0 + 102 * S, 99, &g, false),
            Some(ExitReason::Stall { limit: 3 * S })
        );
    }

    #[test]
    fn a_panic_line_then_quiet_ends_the_run_as_a_panic() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(&cfg(None, None, None), t0);
        let g = GuestProgress::default();
        assert_eq!(w.check(t0 + S, 10, &g, true), None);
        assert_eq!(w.check(t0 + S + PANIC_QUIET / 2, 10, &g, true), None);
        assert_eq!(
            w.check(t0 + S + PANIC_QUIET, 10, &g, true),
            Some(ExitReason::KernelPanic {
                evidence: PanicEvidence::ConsoleLine,
                then: None
            })
        );
        // Still printing after the line (a stack trace, a crash kernel booting): not yet.
        let mut w = Watchdog::new(&cfg(None, None, None), t0);
        for i in 1..50u64 {
            assert_eq!(w.check(t0 + Duration::from_secs(i), i, &g, true), None);
        }
    }

    #[test]
    fn json_escapes_and_has_every_field() {
        let v = Verdict {
            cause: "command-exited".into(),
            status: 7,
            guest_status: Some(7),
            phase: 2,
            boot_ms: None,
            run_ms: 12,
            message: None,
            console_tail: vec!["a \"q\" \\ b".into(), "tab\tbell\u{7}é".into()],
        };
        let j = v.to_json();
        assert!(j.contains(r#""cause": "command-exited""#), "{j}");
        assert!(j.contains(r#""guest_status": 7"#));
        assert!(j.contains(r#""boot_ms": null"#));
        assert!(j.contains(r#""a \"q\" \\ b""#), "{j}");
        assert!(j.contains(r#""tab\tbell\u0007é""#), "{j}");
        let empty = Verdict {
            console_tail: vec![],
            ..v
        };
        assert!(empty.to_json().contains("\"console_tail\": []\n}"));
    }

    #[test]
    fn the_verdict_file_appears_whole_at_the_end() {
        let dir = std::env::temp_dir().join(format!("vfiovm-verdict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.json");
        let f = VerdictFile::create(&path).unwrap();
        assert!(!path.exists(), "nothing at the path until the end");
        let v = Verdict::of_error("x".into(), 2, Instant::now(), None, vec!["l".into()]);
        f.finish(&v).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), v.to_json());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        // A directory that does not exist fails at once, naming the path.
        let e = VerdictFile::create(&dir.join("no/such/v.json")).unwrap_err();
        assert!(e.to_string().starts_with("cannot write --verdict "), "{e}");
        // Dropped unfinished: the temporary file goes.
        drop(VerdictFile::create(&dir.join("w.json")).unwrap());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
