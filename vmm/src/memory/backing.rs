//! The host memory behind guest RAM: anonymous or memfd mappings, placed so that huge pages can
//! back them, and the host's huge page pool checked before any is asked for.
//!
//! Every mapping starts on a boundary of its page size (at least 2 MiB): KVM maps a guest page
//! with a huge page only when the guest address and the host address agree modulo the huge
//! page size, and the RAM regions of [`arch::layout::ram_regions`] start on such boundaries.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use super::MemoryError;
use crate::config::RamPages;

/// Alignment of every guest RAM mapping: one PMD (2 MiB), or the huge page when larger.
pub const MIN_ALIGN: u64 = 2 << 20;

/// One mapping of guest RAM in this process, unmapped on drop.
#[derive(Debug)]
pub struct HostMapping {
    addr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this struct; it hands out only its address, and
// every access to guest RAM goes through vm-memory's volatile accessors.
unsafe impl Send for HostMapping {}
// SAFETY: as above; the struct itself is immutable after creation.
unsafe impl Sync for HostMapping {}

impl HostMapping {
    /// Maps `len` bytes read-write at an address aligned to `align` (a power of two): from
    /// `file` at `offset` shared when given, else private anonymous memory.
    pub fn new(
        len: u64,
        align: u64,
        file: Option<(&File, u64)>,
    ) -> Result<HostMapping, std::io::Error> {
        let len_us = usize::try_from(len).map_err(|_| std::io::Error::other("too large"))?;
        let align_us = usize::try_from(align).map_err(|_| std::io::Error::other("too large"))?;
        let span = len_us
            .checked_add(align_us)
            .ok_or_else(|| std::io::Error::other("too large"))?;
        // SAFETY: a fresh PROT_NONE reservation at an address the kernel chooses; it replaces
        // nothing and nothing reads it.
        let resv = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if resv == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = resv as usize;
        let aligned = (start + align_us - 1) & !(align_us - 1);
        let (flags, fd, off) = match file {
            Some((f, off)) => (libc::MAP_SHARED, f.as_raw_fd(), off),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            ),
        };
        // SAFETY: `aligned..aligned + len` lies inside the reservation made above, which this
        // function owns, so MAP_FIXED replaces only our own PROT_NONE pages.
        let p = unsafe {
            libc::mmap(
                aligned as *mut libc::c_void,
                len_us,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED,
                fd,
                off as libc::off_t,
            )
        };
        let err = (p == libc::MAP_FAILED).then(std::io::Error::last_os_error);
        // The reservation's ends around the mapping (all of it on failure) go back.
        let (head, tail_start) = match err {
            Some(_) => (span, start + span),
            None => (aligned - start, aligned + len_us),
        };
        if head > 0 {
            // SAFETY: `start..start + head` is part of our own reservation, unused.
            unsafe { libc::munmap(resv, head) };
        }
        let tail = start + span - tail_start;
        if tail > 0 {
            // SAFETY: `tail_start..start + span` is the unused end of our reservation.
            unsafe { libc::munmap(tail_start as *mut libc::c_void, tail) };
        }
        match err {
            Some(e) => Err(e),
            None => Ok(HostMapping {
                addr: p.cast(),
                len: len_us,
            }),
        }
    }

    /// The start of the mapping.
    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never, for guest RAM).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every page of a private anonymous mapping (`MADV_DONTNEED`): the next touch of
    /// each reads zeros. Only for mappings no device has pinned for DMA (an IOMMU mapping would
    /// keep translating to the dropped pages).
    pub fn discard(&self) -> std::io::Result<()> {
        // SAFETY: our own live mapping; dropping its pages changes only its contents (to zeros),
        // which nothing in the VMM holds references into (guest memory is only reached through
        // volatile accesses), and the caller has paused everything that runs the guest.
        if unsafe { libc::madvise(self.addr.cast(), self.len, libc::MADV_DONTNEED) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Advises the kernel about transparent huge pages for this mapping (`MADV_HUGEPAGE` or
    /// `MADV_NOHUGEPAGE`). Failure is only logged: the guest runs either way.
    pub fn advise_thp(&self, huge: bool) {
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advice about our own live mapping; it changes no contents.
        if unsafe { libc::madvise(self.addr.cast(), self.len, advice) } != 0 {
            log::warn!(
                "madvise({}) on guest RAM failed: {} (transparent huge pages not configured?)",
                if huge {
                    "MADV_HUGEPAGE"
                } else {
                    "MADV_NOHUGEPAGE"
                },
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Drop for HostMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and is unmapped only here; whoever used its
        // address (vm-memory regions, KVM slots, VFIO DMA mappings) is gone before the owning
        // region drops it.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// A memfd of `size` bytes for guest RAM: hugetlbfs pages of `huge` bytes when given, else
/// shared memory.
pub fn memfd(size: u64, huge: Option<u64>) -> Result<File, std::io::Error> {
    let mut flags = libc::MFD_CLOEXEC;
    if let Some(page) = huge {
        flags |= libc::MFD_HUGETLB | (page.trailing_zeros() << libc::MFD_HUGE_SHIFT);
    }
    memfd_with(c"vfiovm-guest-ram", size, flags)
}

/// A memfd of `size` bytes of shared memory named `name` (in `/proc/PID/fd`).
pub fn memfd_named(name: &std::ffi::CStr, size: u64) -> Result<File, std::io::Error> {
    memfd_with(name, size, libc::MFD_CLOEXEC)
}

fn memfd_with(
    name: &std::ffi::CStr,
    size: u64,
    flags: libc::c_uint,
) -> Result<File, std::io::Error> {
    // SAFETY: `name` is NUL-terminated and outlives the call; the call only returns a new fd.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Where the kernel describes its huge page pools (tests point it elsewhere).
#[derive(Debug, Clone)]
pub struct HugePagePool {
    /// `/sys/kernel/mm/hugepages`.
    pub sysfs: PathBuf,
    /// `/proc/meminfo`.
    pub meminfo: PathBuf,
}

impl Default for HugePagePool {
    fn default() -> Self {
        HugePagePool {
            sysfs: "/sys/kernel/mm/hugepages".into(),
            meminfo: "/proc/meminfo".into(),
        }
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

impl HugePagePool {
    /// The host's default huge page size (`Hugepagesize` in /proc/meminfo).
    pub fn default_size(&self) -> Option<u64> {
        let info = std::fs::read_to_string(&self.meminfo).ok()?;
        let line = info.lines().find(|l| l.starts_with("Hugepagesize:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb << 10)
    }

    /// The page size `pages` asks for: `Huge(None)` is the host's default.
    pub fn resolve(&self, pages: RamPages) -> Result<Option<u64>, MemoryError> {
        match pages {
            RamPages::Huge(Some(size)) => Ok(Some(size)),
            RamPages::Huge(None) => self
                .default_size()
                .map(Some)
                .ok_or(MemoryError::NoHugePages { page: None }),
            RamPages::Small | RamPages::Transparent => Ok(None),
        }
    }

    /// Checks that `bytes` of `page`-sized huge pages can be had now: free pages not promised
    /// to another mapping, plus what overcommit still allows. The error names the fix.
    pub fn check(&self, page: u64, bytes: u64) -> Result<(), MemoryError> {
        let dir = self.sysfs.join(format!("hugepages-{}kB", page >> 10));
        let total = read_u64(&dir.join("nr_hugepages"))
            .ok_or(MemoryError::NoHugePages { page: Some(page) })?;
        let get = |f: &str| read_u64(&dir.join(f)).unwrap_or(0);
        let free = get("free_hugepages").saturating_sub(get("resv_hugepages"));
        let overcommit = get("nr_overcommit_hugepages").saturating_sub(get("surplus_hugepages"));
        let needed = bytes.div_ceil(page);
        if free + overcommit >= needed {
            return Ok(());
        }
        let want = total + needed - free - overcommit;
        let is_default = self.default_size() == Some(page);
        let fix = if is_default {
            format!(
                "reserve them with `sysctl vm.nr_hugepages={want}` (or boot with `hugepages={want}`)"
            )
        } else {
            format!(
                "reserve them with `echo {want} > {}` (or boot with `hugepagesz={}M hugepages={want}`)",
                dir.join("nr_hugepages").display(),
                page >> 20
            )
        };
        Err(MemoryError::NotEnoughHugePages {
            page,
            needed,
            free: free + overcommit,
            fix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_pool(files: &[(&str, u64)], default_kb: u64) -> (HugePagePool, PathBuf) {
        let root = std::env::temp_dir().join(format!(
            "vfiovm-hp-{}-{}",
            std::process::id(),
            files.len() * 1000 + default_kb as usize
        ));
        let _ = std::fs::remove_dir_all(&root);
        for (f, v) in files {
            let p = root.join("sys").join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("{v}\n")).unwrap();
        }
        std::fs::write(
            root.join("meminfo"),
            format!("MemTotal: 1 kB\nHugepagesize:    {default_kb} kB\n"),
        )
        .unwrap();
        (
            HugePagePool {
                sysfs: root.join("sys"),
                meminfo: root.join("meminfo"),
            },
            root,
        )
    }

    #[test]
    fn pool_check_names_the_fix() {
        let (pool, root) = fake_pool(
            &[
                ("hugepages-2048kB/nr_hugepages", 10),
                ("hugepages-2048kB/free_hugepages", 8),
                ("hugepages-2048kB/resv_hugepages", 2),
                ("hugepages-1048576kB/nr_hugepages", 0),
                ("hugepages-1048576kB/free_hugepages", 0),
            ],
            2048,
        );
        assert_eq!(pool.resolve(RamPages::Huge(None)).unwrap(), Some(2 << 20));
        assert_eq!(pool.resolve(RamPages::Transparent).unwrap(), None);
        pool.check(2 << 20, 12 << 20).unwrap();
        let e = pool.check(2 << 20, 14 << 20).unwrap_err().to_string();
        assert!(e.contains("7 huge pages of 2 MiB"), "{e}");
        assert!(e.contains("6 are free"), "{e}");
        assert!(e.contains("sysctl vm.nr_hugepages=11"), "{e}");
        let e = pool.check(1 << 30, 2 << 30).unwrap_err().to_string();
        assert!(
            e.contains("hugepages-1048576kB/nr_hugepages")
                && e.contains("hugepagesz=1024M hugepages=2"),
            "{e}"
        );
        let e = pool.check(16 << 30, 16 << 30).unwrap_err().to_string();
        assert!(e.contains("no 16384 MiB huge pages"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn mappings_are_aligned() {
        for align in [2u64 << 20, 1 << 30] {
            let m = HostMapping::new(6 << 20, align, None).unwrap();
            assert_eq!(m.addr() as u64 % align, 0);
            assert_eq!(m.len(), 6 << 20);
            // SAFETY: the mapping is ours, writable and 6 MiB long.
            unsafe { m.addr().wrapping_add((6 << 20) - 1).write_volatile(7) };
        }
        let f = memfd(4 << 20, None).unwrap();
        let m = HostMapping::new(2 << 20, 2 << 20, Some((&f, 2 << 20))).unwrap();
        assert_eq!(m.addr() as u64 % (2 << 20), 0);
        // SAFETY: as above, 2 MiB long.
        unsafe { m.addr().write_volatile(9) };
        let mut b = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 2 << 20).unwrap();
        assert_eq!(b[0], 9, "a shared mapping writes through to the memfd");
    }
}
