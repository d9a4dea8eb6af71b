//! The last lines of what the guest wrote to its consoles, kept for a run's verdict, and the
//! two things a CI runner learns from them: whether the guest is still printing (a byte count)
//! and whether a Linux kernel said it panicked ([`PANIC_MARKER`]).
//!
//! Both consoles feed one [`ConsoleTail`]: COM1 through [`TeeWriter`] around its output writer,
//! the virtio console through [`ConsoleTail::record`] on its I/O thread. Each source keeps its
//! own unfinished line, so bytes of the two never mix within a line. Lines are cut at
//! [`LINE_MAX`] bytes (the rest of an over-long line is dropped from the tail, not from the
//! console); carriage returns are dropped; bytes that are not UTF-8 are replaced. The tail is
//! bounded (lines × [`LINE_MAX`]), so a guest printing forever costs no memory.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What Linux prints when it panics (`panic()`: `Kernel panic - not syncing: <reason>`), also
/// in its closing "---[ end Kernel panic - not syncing: … ]---" line.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Longest line kept, in bytes.
pub const LINE_MAX: usize = 1024;
/// Lines a tail keeps by default.
pub const DEFAULT_TAIL_LINES: usize = 50;

/// Which console a byte came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleSource {
    /// COM1.
    Serial,
    /// The virtio console.
    Virtio,
}

#[derive(Debug, Default)]
struct Partial {
    bytes: Vec<u8>,
    /// The line passed [`LINE_MAX`]: its rest is dropped.
    cut: bool,
}

#[derive(Debug)]
struct Inner {
    lines: VecDeque<String>,
    partial: [Partial; 2],
}

/// The last lines of the guest's console output (see the module docs).
#[derive(Debug)]
pub struct ConsoleTail {
    max_lines: usize,
    inner: Mutex<Inner>,
    bytes: AtomicU64,
    panic_seen: AtomicBool,
}

impl Default for ConsoleTail {
    fn default() -> Self {
        Self::new(DEFAULT_TAIL_LINES)
    }
}

impl ConsoleTail {
    /// A tail keeping the last `max_lines` lines (at least one).
    pub fn new(max_lines: usize) -> Self {
        ConsoleTail {
            max_lines: max_lines.max(1),
            inner: Mutex::new(Inner {
                lines: VecDeque::new(),
                partial: Default::default(),
            }),
            bytes: AtomicU64::new(0),
            panic_seen: AtomicBool::new(false),
        }
    }

    /// Adds what the guest wrote to `source`.
    pub fn record(&self, source: ConsoleSource, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { lines, partial } = &mut *g;
        let p = &mut partial[source as usize];
        for &b in data {
            match b {
                b'\n' => {
                    let line = String::from_utf8_lossy(&p.bytes).into_owned();
                    p.bytes.clear();
                    p.cut = false;
                    if line.contains(PANIC_MARKER) {
                        self.panic_seen.store(true, Ordering::Release);
                    }
                    if lines.len() == self.max_lines {
                        lines.pop_front();
                    }
                    lines.push_back(line);
                }
                b'\r' => {}
                _ if p.cut => {}
                _ => {
                    p.bytes.push(b);
                    if p.bytes.len() == LINE_MAX {
                        p.cut = true;
                        // A marker in a line too long to keep still counts.
                        if String::from_utf8_lossy(&p.bytes).contains(PANIC_MARKER) {
                            self.panic_seen.store(true, Ordering::Release);
                        }
                    }
                }
            }
        }
    }

    /// Counts `n` bytes of output as progress without keeping them as lines (an `--exec`
    /// command's own stdout and stderr: its text is the user's, not the kernel's, and a line
    /// of it that looks like a panic is not one).
    pub fn count(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// How many bytes the guest has written to its consoles so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether a finished console line contained [`PANIC_MARKER`].
    pub fn panic_seen(&self) -> bool {
        self.panic_seen.load(Ordering::Acquire)
    }

    /// The last lines, oldest first, then each source's unfinished line (if any), up to the
    /// tail's size.
    pub fn lines(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = g.lines.iter().cloned().collect();
        for p in &g.partial {
            if !p.bytes.is_empty() {
                v.push(String::from_utf8_lossy(&p.bytes).into_owned());
            }
        }
        let extra = v.len().saturating_sub(self.max_lines);
        v.drain(..extra);
        v
    }
}

/// A writer that records everything written through it in a [`ConsoleTail`] and passes it on
/// to `W` (COM1's output).
#[derive(Debug)]
pub struct TeeWriter<W: Write> {
    inner: W,
    tail: Arc<ConsoleTail>,
    source: ConsoleSource,
    /// Only record, do not pass on (the kernel's console of an `--exec` run).
    quiet: bool,
}

impl<W: Write> TeeWriter<W> {
    /// Writes to `inner`, recording in `tail` as coming from `source`.
    pub fn new(inner: W, tail: Arc<ConsoleTail>, source: ConsoleSource) -> Self {
        TeeWriter {
            inner,
            tail,
            source,
            quiet: false,
        }
    }

    /// Records in `tail` only; `inner` gets nothing.
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// The writer it passes output on to.
    pub fn inner(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for TeeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.quiet {
            self.tail.record(self.source, buf);
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Ok(n) => {
                self.tail.record(self.source, &buf[..n.min(buf.len())]);
                Ok(n)
            }
            Err(e) => {
                // The guest wrote it even if the host could not show it.
                self.tail.record(self.source, buf);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_and_the_unfinished_one() {
        let t = ConsoleTail::new(3);
        t.record(ConsoleSource::Serial, b"one\r\ntwo\nthree\nfour\nfi");
        assert_eq!(t.lines(), vec!["three", "four", "fi"]);
        t.record(ConsoleSource::Serial, b"ve\n");
        assert_eq!(t.lines(), vec!["three", "four", "five"]);
        assert_eq!(t.bytes(), 25);
        assert!(!t.panic_seen());
    }

    #[test]
    fn sources_do_not_mix_within_a_line() {
        let t = ConsoleTail::new(10);
        t.record(ConsoleSource::Serial, b"ser");
        t.record(ConsoleSource::Virtio, b"virt");
        t.record(ConsoleSource::Serial, b"ial\n");
        t.record(ConsoleSource::Virtio, b"io\n");
        assert_eq!(t.lines(), vec!["serial", "virtio"]);
    }

    #[test]
    fn the_panic_marker_is_seen_in_a_finished_line_across_writes() {
        let t = ConsoleTail::default();
        t.record(ConsoleSource::Serial, b"[ 1.0] Kernel panic - not ");
        assert!(!t.panic_seen(), "not before the line ends");
        t.record(
            ConsoleSource::Serial,
            b"syncing: VFS: Unable to mount root fs\n",
        );
        assert!(t.panic_seen());
        let t = ConsoleTail::default();
        t.record(ConsoleSource::Virtio, b"Kernel panic - not syncing\n");
        assert!(t.panic_seen());
        let t = ConsoleTail::default();
        t.record(
            ConsoleSource::Serial,
            b"kernel panic - not syncing (lower case)\n",
        );
        assert!(!t.panic_seen());
    }

    #[test]
    fn long_lines_are_cut_and_bytes_are_bounded() {
        let t = ConsoleTail::new(2);
        let long = vec![b'x'; LINE_MAX * 3];
        t.record(ConsoleSource::Serial, &long);
        t.record(ConsoleSource::Serial, b"\nshort\n");
        let lines = t.lines();
        assert_eq!(lines[0].len(), LINE_MAX);
        assert_eq!(lines[1], "short");
        let mut marker = vec![b'y'; LINE_MAX - 100];
        marker.extend_from_slice(PANIC_MARKER.as_bytes());
        marker.extend_from_slice(&[b'z'; 500]);
        let t = ConsoleTail::new(2);
        t.record(ConsoleSource::Serial, &marker);
        assert!(
            t.panic_seen(),
            "a marker before the cut of an unfinished line counts"
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let t = ConsoleTail::default();
        t.record(ConsoleSource::Serial, b"a\xffb\n");
        assert_eq!(t.lines(), vec!["a\u{fffd}b"]);
    }

    #[test]
    fn the_tee_records_what_it_passes_on() {
        let tail = Arc::new(ConsoleTail::default());
        let mut w = TeeWriter::new(Vec::new(), tail.clone(), ConsoleSource::Serial);
        w.write_all(b"hello\n").unwrap();
        assert_eq!(w.inner(), b"hello\n");
        assert_eq!(tail.lines(), vec!["hello"]);
    }
}
