//! Guest RAM backends (`--memory SIZE,hugepages=…,shared=…,prefault=…,threads=…`), each booted
//! with the `mem_probe` guest: the guest checks the memory map and its alignment from inside and
//! writes and reads RAM; while it waits, the test reads vfiovm's `/proc/PID/smaps` to see which
//! pages really back guest RAM. hugetlbfs cases reserve huge pages for themselves (root) and give
//! them back.

mod common;

use common::{guest, vfiovm_bin};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

/// The huge page pool is the host's: one test at a time touches it.
static POOL: Mutex<()> = Mutex::new(());

/// One mapping from smaps: its range, flags, path and the fields in kB.
#[derive(Debug, Default, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    path: String,
    kb: std::collections::BTreeMap<String, u64>,
}

impl Mapping {
    fn field(&self, k: &str) -> u64 {
        self.kb.get(k).copied().unwrap_or(0)
    }
    fn size(&self) -> u64 {
        self.end - self.start
    }
}

fn smaps(pid: u32) -> Vec<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = words.next().unwrap_or("").to_string();
                let path = words.skip(3).collect::<Vec<_>>().join(" ");
                out.push(Mapping {
                    start,
                    end,
                    perms,
                    path,
                    ..Default::default()
                });
                continue;
            }
        }
        if let (Some(k), Some(v)) = (first.strip_suffix(':'), words.next()) {
            if let (Ok(v), Some(m)) = (v.parse(), out.last_mut()) {
                m.kb.insert(k.to_string(), v);
            }
        }
    }
    out
}

/// What a probe run saw.
#[derive(Debug)]
struct Probe {
    status: i32,
    stdout: String,
    stderr: String,
    /// The mappings backing guest RAM (one per RAM region, by size).
    ram: Vec<Mapping>,
}

fn ram_regions(size: u64) -> Vec<u64> {
    arch::layout::ram_regions(size)
        .into_iter()
        .map(|r| r.1)
        .collect()
}

/// Boots `mem_probe` with `--memory mem` (`size` bytes) and `align=`, reads smaps at `ready`.
fn probe(mem: &str, size: u64, align: u64) -> Probe {
    let mut child = Command::new(vfiovm_bin())
        .args(["-v", "--kernel", &guest("mem_probe"), "--memory", mem])
        .args(["--cmdline", &format!("align={align}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("mem_probe: ready") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let ready = rx.recv_timeout(Duration::from_secs(120)).is_ok();
    let maps = if ready { smaps(pid) } else { Vec::new() };
    if ready {
        child.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    } else {
        let _ = child.kill();
    }
    let status = child.wait().unwrap().code().unwrap_or(-1);
    let stdout = reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let mut ram = Vec::new();
    for want in ram_regions(size) {
        if let Some(m) = maps
            .iter()
            .find(|m| m.size() == want && m.perms.starts_with("rw"))
        {
            ram.push(m.clone());
        }
    }
    assert!(
        ready,
        "the guest never got ready\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    Probe {
        status,
        stdout,
        stderr,
        ram,
    }
}

impl Probe {
    /// The guest's own checks passed, it saw all RAM, and every RAM region has its mapping.
    fn expect_ok(&self, size: u64) -> &Self {
        assert_eq!(self.status, 0, "{self:#?}");
        let hole = 0x10_0000 - 0x9_fc00; // the EBDA/BIOS area is reserved, not RAM
        assert!(
            self.stdout
                .contains(&format!("mem_probe: ram_bytes={}", size - hole)),
            "{}",
            self.stdout
        );
        assert!(self.stdout.contains(" mismatches=0"), "{}", self.stdout);
        assert_eq!(self.ram.len(), ram_regions(size).len(), "{self:#?}");
        self
    }

    /// Every RAM mapping starts on an `align` boundary of the host's address space.
    fn expect_host_aligned(&self, align: u64) -> &Self {
        for m in &self.ram {
            assert_eq!(m.start % align, 0, "{m:#x?}");
        }
        self
    }

    /// Every page of guest RAM is resident (4 KiB, THP and shmem pages count in Rss; hugetlbfs
    /// pages in the *_Hugetlb fields).
    fn expect_populated(&self) -> &Self {
        for m in &self.ram {
            let resident = m.field("Rss") + m.field("Shared_Hugetlb") + m.field("Private_Hugetlb");
            assert_eq!(resident * 1024, m.size(), "{m:#?}");
        }
        self
    }
}

fn thp_mode() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default()
}

/// The default: anonymous memory with THP advised; the guest's 3 GiB is split 2 GiB + 1 GiB
/// (Q35), both host mappings 2 MiB aligned, and with prefault=on mostly huge pages.
#[test]
fn default_is_anonymous_with_transparent_huge_pages() {
    let size = 3u64 << 30;
    let p = probe("3G,prefault=on,threads=2", size, 1 << 30);
    p.expect_ok(size)
        .expect_host_aligned(2 << 20)
        .expect_populated();
    assert!(
        p.stdout.contains("addr=0x100000000 size=0x40000000 type=1"),
        "{}",
        p.stdout
    );
    assert!(
        p.stderr.contains("(anonymous, transparent huge pages)"),
        "{}",
        p.stderr
    );
    assert!(p.stderr.contains("with 2 threads in "), "{}", p.stderr);
    for m in &p.ram {
        assert!(m.path.is_empty(), "{m:#?}");
        if thp_mode().contains("[never]") {
            eprintln!("transparent huge pages are off on this host: AnonHugePages not checked");
            continue;
        }
        // Pages the kernel could not get huge stay small; on an idle host nearly all are huge.
        assert!(
            m.field("AnonHugePages") * 2 >= m.field("Size"),
            "fewer than half of guest RAM in THP: {m:#?}"
        );
    }
}

/// Without prefault, start-up touches next to nothing of a large guest's RAM.
#[test]
fn without_prefault_ram_is_not_touched() {
    let size = 8u64 << 30;
    let p = probe("8G", size, 1 << 30);
    p.expect_ok(size);
    let rss: u64 = p.ram.iter().map(|m| m.field("Rss")).sum();
    // The guest wrote one word every 2 MiB below 4 GiB: at most one huge page each.
    assert!(
        rss * 1024 <= (4u64 << 30) + (64 << 20),
        "{rss} kB: {:#?}",
        p.ram
    );
    assert!(!p.stderr.contains("populated"), "{}", p.stderr);
}

#[test]
fn small_pages_only() {
    let size = 1u64 << 30;
    let p = probe("1G,hugepages=off,prefault=on", size, 2 << 20);
    p.expect_ok(size).expect_populated();
    assert!(
        p.stderr.contains("(anonymous, 4 KiB pages)"),
        "{}",
        p.stderr
    );
    for m in &p.ram {
        assert_eq!(m.field("AnonHugePages"), 0, "{m:#?}");
    }
}

#[test]
fn shared_memfd() {
    let size = 1u64 << 30;
    let p = probe("1G,shared=on,prefault=on", size, 2 << 20);
    p.expect_ok(size)
        .expect_host_aligned(2 << 20)
        .expect_populated();
    for m in &p.ram {
        assert!(m.perms.starts_with("rw-s"), "{m:#?}");
        assert!(m.path.contains("memfd:vfiovm-guest-ram"), "{m:#?}");
    }
}

/// Reserves `n` more huge pages of `kb` KiB for the test's life, restoring the pool after.
struct Reserve {
    path: String,
    old: u64,
    got: u64,
}

impl Reserve {
    fn new(kb: u64, n: u64) -> Reserve {
        let path = format!("/sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages");
        let read = |p: &str| -> u64 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
        let old = read(&path);
        let free_path = path.replace("nr_hugepages", "free_hugepages");
        std::fs::write(&path, format!("{}", old + n)).unwrap();
        // A host whose free memory is mostly page cache in small pieces (a long CI run: builds,
        // the rig's images) can fail to find that many contiguous huge pages at once although
        // it has the memory (seen: 3 GiB of 2 MiB pages refused with 5 GiB free and 14 GiB of
        // cache). Then free the clean cache, compact, and ask again, as an administrator would.
        for _ in 0..3 {
            if read(&path) >= old + n {
                break;
            }
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
            let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
            std::fs::write(&path, format!("{}", old + n)).unwrap();
        }
        let got = read(&free_path).min(read(&path) - old);
        Reserve { path, old, got }
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, format!("{}", self.old));
    }
}

#[test]
fn hugetlbfs_2m_pages() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let size = 3u64 << 30;
    let r = Reserve::new(2048, size >> 21);
    assert_eq!(
        r.got,
        size >> 21,
        "the host could not reserve 1536 2 MiB pages"
    );
    let p = probe("3G,hugepages=2M,prefault=on,threads=2", size, 2 << 20);
    p.expect_ok(size)
        .expect_host_aligned(2 << 20)
        .expect_populated();
    assert!(p.stderr.contains("(hugetlbfs 2 MiB pages)"), "{}", p.stderr);
    for m in &p.ram {
        assert_eq!(m.field("KernelPageSize"), 2048, "{m:#?}");
        assert!(m.path.contains("vfiovm-guest-ram"), "{m:#?}");
    }
}

/// 1 GiB pages: the Q35 split keeps both regions 1 GiB aligned, inside and out. A host that
/// cannot reserve 1 GiB pages at run time (fragmented memory, no pdpe1gb) skips it, loudly.
#[test]
fn hugetlbfs_1g_pages() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let size = 3u64 << 30;
    if !std::path::Path::new("/sys/kernel/mm/hugepages/hugepages-1048576kB").exists() {
        eprintln!("SKIPPED hugetlbfs_1g_pages: this host has no 1 GiB huge pages");
        return;
    }
    let r = Reserve::new(1 << 20, 3);
    if r.got < 3 {
        eprintln!(
            "SKIPPED hugetlbfs_1g_pages: the host reserved only {} of 3 1 GiB pages",
            r.got
        );
        return;
    }
    let p = probe("3G,hugepages=1G,prefault=on", size, 1 << 30);
    p.expect_ok(size)
        .expect_host_aligned(1 << 30)
        .expect_populated();
    assert!(p.stderr.contains("(hugetlbfs 1 GiB pages)"), "{}", p.stderr);
    for m in &p.ram {
        assert_eq!(m.field("KernelPageSize"), 1 << 20, "{m:#?}");
    }
}

/// Too few huge pages: one line naming the sysctl that fixes it, status 2, before any VM; the
/// doctor reports it as a failed check.
#[test]
fn too_few_huge_pages_names_the_fix() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let o = common::run(&[
        "--kernel",
        &guest("mem_probe"),
        "--memory",
        "8G,hugepages=2M",
    ]);
    o.expect_status(2).expect_clean_stderr(1);
    assert!(
        o.stderr.contains("--memory needs 4096 huge pages of 2 MiB")
            && o.stderr.contains("sysctl vm.nr_hugepages="),
        "{o:#?}"
    );
    // The doctor says the same, as one of its checks.
    let o = common::run(&["doctor", "--memory", "8G,hugepages=2M"]);
    o.expect_status(2);
    assert!(
        o.stdout
            .contains("FAIL: --memory needs 4096 huge pages of 2 MiB but only")
            && o.stdout.contains("sysctl vm.nr_hugepages="),
        "{o:#?}"
    );
    let o = common::run(&[
        "--kernel",
        &guest("mem_probe"),
        "--memory",
        "1025M,hugepages=on",
    ]);
    o.expect_status(2).expect_clean_stderr(1);
    assert!(
        o.stderr
            .contains("is not a multiple of the 2 MiB huge page: round it to 1026 MiB"),
        "{o:#?}"
    );
}
