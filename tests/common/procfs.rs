//! What this test process holds, from /proc/self: open fds (and what they are), threads, RSS.
//! Used by the teardown and soak tests (`#[path = "common/procfs.rs"] mod procfs;`).
#![allow(dead_code)]

use std::collections::BTreeMap;

/// One look at this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfSample {
    /// Entries in /proc/self/fd.
    pub fds: usize,
    /// `Threads:` of /proc/self/status.
    pub threads: u64,
    /// `VmRSS:` of /proc/self/status, KiB.
    pub rss_kib: u64,
}

/// A number field of /proc/self/status (`Threads:`, `VmRSS:` in KiB, ...).
pub fn status_field(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Samples this process now.
pub fn sample() -> SelfSample {
    SelfSample {
        fds: std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .count(),
        threads: status_field("Threads:"),
        rss_kib: status_field("VmRSS:"),
    }
}

/// Names of this process's vCPU threads (vfiovm names them `vcpu0`, `vcpu1`, ...).
pub fn vcpu_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_string())
        .filter(|n| {
            n.strip_prefix("vcpu")
                .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    names.sort();
    names
}

/// Open fds by kind (`anon_inode:[eventfd]`, `anon_inode:kvm-vm`, `/dev/kvm`, `pipe`, ...), for
/// messages that say what leaked rather than how many.
pub fn fd_kinds() -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue; // the directory's own fd, closed by now
        };
        let t = target.to_string_lossy();
        // pipe:[1234] and socket:[1234] differ only by inode.
        let kind = match t.split_once(":[") {
            Some((k, _)) if !t.starts_with("anon_inode") => k.to_string(),
            _ => t.into_owned(),
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// The kinds whose count differs between two [`fd_kinds`] results, as `kind: before -> after`.
pub fn fd_diff(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> Vec<String> {
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let (b, a) = (
                before.get(k).copied().unwrap_or(0),
                after.get(k).copied().unwrap_or(0),
            );
            (a != b).then(|| format!("{k}: {b} -> {a}"))
        })
        .collect()
}

/// Points fd 0 at /dev/null. An in-process VM's console reads stdin (and puts a terminal in raw
/// mode); epoll refuses /dev/null, so console input stays off as in a CI run.
pub fn stdin_from_dev_null() {
    use std::os::fd::AsRawFd;
    let null = std::fs::File::open("/dev/null").expect("open /dev/null");
    // SAFETY: dup2 onto fd 0, which this test process owns; `null` is open for the call.
    assert_eq!(unsafe { libc::dup2(null.as_raw_fd(), 0) }, 0);
}
