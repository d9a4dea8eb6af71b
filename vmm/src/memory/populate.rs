//! Bringing guest RAM in before the guest runs: every page faulted in by several threads at
//! once (`MADV_POPULATE_WRITE` on slices), with progress on stderr for long runs.
//!
//! Passthrough needs this: VFIO pins every page of guest RAM when it DMA-maps it, faulting in
//! whatever is missing on one thread. Zeroing the pages is most of that work; done first, in
//! parallel, the pinning that follows only walks page tables.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Each thread takes slices this large (rounded up to the page size) from a shared queue.
const SLICE: u64 = 64 << 20;

/// Reports how far a long job has come on stderr, once a second after its first second.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    total: u64,
    start: Instant,
    last: Option<Instant>,
    shown: u64,
}

impl Progress {
    /// A job over `total` bytes, named `what` ("populating guest RAM").
    pub fn new(what: &'static str, total: u64) -> Self {
        Progress {
            what,
            total,
            start: Instant::now(),
            last: None,
            shown: 0,
        }
    }

    /// `done` bytes are done: prints `what: 23/64 GiB` when the job has run over a second and
    /// nothing was printed in the last second.
    pub fn update(&mut self, done: u64) {
        let now = Instant::now();
        let due = match self.last {
            None => now - self.start >= Duration::from_secs(1),
            Some(t) => now - t >= Duration::from_secs(1),
        };
        if due && done < self.total && done > self.shown {
            eprintln!("{}: {}", self.what, gib_of(done, self.total));
            self.last = Some(now);
            self.shown = done;
        }
    }

    /// Ends the job: when progress was shown, one last line says it finished and how long it took.
    pub fn finish(self) {
        if self.last.is_some() {
            eprintln!(
                "{}: {} in {:.1} s",
                self.what,
                gib_of(self.total, self.total),
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

fn gib_of(done: u64, total: u64) -> String {
    let g = |b: u64| b as f64 / f64::from(1u32 << 30);
    if total >= 10 << 30 {
        format!("{:.0}/{:.0} GiB", g(done), g(total))
    } else {
        format!("{:.1}/{:.1} GiB", g(done), g(total))
    }
}

/// What populating took.
#[derive(Debug, Clone, Copy)]
pub struct PopulateStats {
    /// Bytes populated.
    pub bytes: u64,
    /// Threads used.
    pub threads: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// The kernel lacks `MADV_POPULATE_WRITE` (before 5.14): pages were touched one by one.
    pub touched: bool,
}

/// Faults in every page of `spans` (host address, length; page aligned) with `threads` threads.
///
/// # Safety
///
/// Each span must be a live, writable mapping of guest RAM that no guest runs on yet. Where the
/// kernel lacks `MADV_POPULATE_WRITE` each page's first byte is read and written back, which
/// changes nothing but must not race with another writer.
pub unsafe fn populate(
    spans: &[(usize, u64)],
    page: u64,
    threads: usize,
) -> Result<PopulateStats, std::io::Error> {
    let start = Instant::now();
    let slice = SLICE.div_ceil(page) * page;
    let mut work = Vec::new();
    for &(addr, len) in spans {
        let mut off = 0;
        while off < len {
            let n = slice.min(len - off);
            work.push((addr + off as usize, n));
            off += n;
        }
    }
    let total: u64 = spans.iter().map(|s| s.1).sum();
    let threads = threads.clamp(1, work.len().max(1));
    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let touched = std::sync::atomic::AtomicBool::new(false);
    let failed: Mutex<Option<std::io::Error>> = Mutex::new(None);
    let finished = (Mutex::new(0usize), Condvar::new());
    let mut progress = Progress::new("populating guest RAM", total);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(addr, len)) = work.get(i) else {
                        break;
                    };
                    if failed.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                        break;
                    }
                    // SAFETY: `addr..addr + len` is inside a span the caller vouches for.
                    let r = unsafe { populate_slice(addr, len, page, &touched) };
                    if let Err(e) = r {
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                    done.fetch_add(len, Ordering::Relaxed);
                }
                let (n, cv) = &finished;
                *n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                cv.notify_one();
            });
        }
        let (n, cv) = &finished;
        let mut count = n.lock().unwrap_or_else(|e| e.into_inner());
        while *count < threads {
            count = cv
                .wait_timeout(count, Duration::from_millis(250))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            progress.update(done.load(Ordering::Relaxed));
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    progress.finish();
    Ok(PopulateStats {
        bytes: total,
        threads,
        elapsed: start.elapsed(),
        touched: touched.load(Ordering::Relaxed),
    })
}

/// # Safety
///
/// As [`populate`], for `addr..addr + len`.
unsafe fn populate_slice(
    addr: usize,
    len: u64,
    page: u64,
    touched: &std::sync::atomic::AtomicBool,
) -> Result<(), std::io::Error> {
    if populate_write_supported() {
        // SAFETY: advice on part of a live mapping; it faults pages in without changing them.
        let r = unsafe {
            libc::madvise(
                addr as *mut libc::c_void,
                len as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        return if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
    }
    touched.store(true, Ordering::Relaxed);
    let mut off = 0;
    while off < len {
        let p = (addr + off as usize) as *mut u8;
        // SAFETY: `p` is inside the caller's live, writable span.
        let b = unsafe { p.read_volatile() };
        // SAFETY: as above; nothing else runs on guest RAM yet, so writing back the byte just
        // read changes nothing.
        unsafe { p.write_volatile(b) };
        off += page.min(4096);
    }
    Ok(())
}

/// Whether the kernel knows `MADV_POPULATE_WRITE` (Linux 5.14): asked once, on a page of our
/// own, since on a real span EINVAL can also mean the span cannot be populated.
fn populate_write_supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        // SAFETY: a fresh private anonymous page, unmapped below; nothing else sees it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        // SAFETY: advice on the page just mapped.
        let ok = unsafe { libc::madvise(p, 4096, libc::MADV_POPULATE_WRITE) } == 0;
        // SAFETY: our own page, used by nothing.
        unsafe { libc::munmap(p, 4096) };
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::backing::HostMapping;

    /// Populating makes the pages resident (RSS grows by the mapping) and keeps their contents.
    #[test]
    fn populates_in_parallel_and_keeps_contents() {
        let len = 96u64 << 20;
        let m = HostMapping::new(len, 2 << 20, None).unwrap();
        // SAFETY: the mapping is ours and writable.
        unsafe { m.addr().wrapping_add(5 << 20).write_volatile(0x5a) };
        let resident = |m: &HostMapping| {
            let pages = m.len() / 4096;
            let mut v = vec![0u8; pages];
            // SAFETY: mincore writes one byte per page of our live mapping into `v`.
            let r = unsafe { libc::mincore(m.addr().cast(), m.len(), v.as_mut_ptr()) };
            assert_eq!(r, 0);
            v.iter().filter(|b| *b & 1 == 1).count() as u64 * 4096
        };
        assert!(resident(&m) < len / 2);
        // SAFETY: the span is our own live mapping and nothing else uses it.
        let st = unsafe { populate(&[(m.addr() as usize, len)], 4096, 2) }.unwrap();
        assert_eq!((st.bytes, st.threads), (len, 2));
        assert_eq!(resident(&m), len);
        // SAFETY: as above.
        let b = unsafe { m.addr().wrapping_add(5 << 20).read_volatile() };
        assert_eq!(b, 0x5a);
    }

    /// A span the kernel cannot populate (here: read-only) is an error, not a crash.
    #[test]
    fn a_failing_span_is_an_error() {
        let m = HostMapping::new(4 << 20, 2 << 20, None).unwrap();
        // SAFETY: our own mapping, made read-only for the test.
        let r = unsafe { libc::mprotect(m.addr().cast(), 4 << 20, libc::PROT_READ) };
        assert_eq!(r, 0);
        // SAFETY: a live mapping; MADV_POPULATE_WRITE fails on it without touching it.
        let e = unsafe { populate(&[(m.addr() as usize, 4 << 20)], 4096, 2) }.unwrap_err();
        assert!(
            matches!(
                e.raw_os_error(),
                Some(libc::EFAULT | libc::ENOMEM | libc::EINVAL)
            ),
            "{e}"
        );
    }

    #[test]
    fn progress_text() {
        assert_eq!(gib_of(23 << 30, 64 << 30), "23/64 GiB");
        assert_eq!(gib_of(1 << 29, 4 << 30), "0.5/4.0 GiB");
    }
}
