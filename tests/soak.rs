//! Soak: hundreds of tiny VMs started and stopped back to back, and two at a time, must not
//! leave anything behind — open fds, threads, memory.
//!
//! Two levels:
//! - **process**: 200 `vfiovm` runs of `exit_now` one after the other, then 200 more two at a
//!   time. Each run's peak RSS comes from `wait4`'s rusage; run 200's must match run 1's. Host-wide
//!   counters (allocated file handles, tasks, Slab, MemAvailable) are sampled before and after; the
//!   host is shared with other work, so they get tolerances far below what one leaked object per
//!   run would add up to, but far above the noise of a busy machine.
//! - **in-process** (the stronger check): 200 `Vm::build` + `Vm::run` + drop in this process,
//!   then 200 more on two threads at once, watching `/proc/self/fd`, `Threads` and `VmRSS` of
//!   `/proc/self/status`. After a warm-up of 10 VMs (allocator arenas, thread stack caches), fds
//!   and threads must be back to exactly where they were, and RSS may not grow by 1 MiB.
//!
//! `scripts/soak` runs this with `--nocapture` and prints the figures (docs/soak.md).

mod common;
#[path = "common/procfs.rs"]
mod procfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use procfs::SelfSample;
use vfiovm::config::{VmConfig, DEFAULT_CMDLINE};
use vfiovm::exit::ExitReason;
use vfiovm::vm::Vm;

/// VMs per phase, unless `VFIOVM_SOAK_RUNS` says otherwise (an even number, at least 20).
const DEFAULT_RUNS: usize = 200;
/// In-process VMs built before the baseline is taken.
const WARMUP: usize = 10;
/// Status of an `exit_now` run: debug-exit 0 → (0 << 1) | 1.
const EXIT_NOW_STATUS: i32 = 1;
/// Runs whose figures are printed (and the last one).
const REPORTED: [usize; 4] = [1, 10, 100, 200];

fn runs() -> usize {
    let n = std::env::var("VFIOVM_SOAK_RUNS")
        .ok()
        .map(|v| v.parse().expect("VFIOVM_SOAK_RUNS is a number"))
        .unwrap_or(DEFAULT_RUNS);
    assert!(
        n >= 2 * WARMUP && n % 2 == 0,
        "VFIOVM_SOAK_RUNS must be even and >= 20"
    );
    n
}

fn reported(run: usize, runs: usize) -> bool {
    REPORTED.contains(&run) || run == runs
}
/// In-process RSS growth allowed after the warm-up.
const RSS_GROWTH_MAX_KIB: u64 = 1024;
/// Process level: run 200's peak RSS may differ from run 1's by this much.
const PEAK_RSS_DIFF_MAX_KIB: i64 = 1024;
/// Host-wide tolerances for 400 runs (one leaked file per run would already be 400; a leaked
/// VM is a dozen files, a task and hundreds of KiB of slab).
const HOST_FILES_MAX_GROWTH: i64 = 2000;
const HOST_TASKS_MAX_GROWTH: i64 = 200;
const HOST_SLAB_MAX_GROWTH_KIB: i64 = 128 << 10;

/// The two tests measure the same process: never at the same time.
static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- /proc readers --------------------------------------------------------------------------

fn meminfo_kib(field: &str) -> i64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/meminfo"))
}

/// Host-wide counters.
#[derive(Debug, Clone, Copy)]
struct HostSample {
    /// Allocated file handles (first field of /proc/sys/fs/file-nr).
    files: i64,
    /// Tasks (threads) of every process.
    tasks: i64,
    slab_kib: i64,
    available_kib: i64,
}

fn host_sample() -> HostSample {
    let nr = std::fs::read_to_string("/proc/sys/fs/file-nr").unwrap();
    let files = nr.split_whitespace().next().unwrap().parse().unwrap();
    let mut tasks = 0i64;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        if name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            // A process may be gone by now; it then counts for nothing.
            if let Ok(t) = std::fs::read_dir(e.path().join("task")) {
                tasks += t.count() as i64;
            }
        }
    }
    HostSample {
        files,
        tasks,
        slab_kib: meminfo_kib("Slab:"),
        available_kib: meminfo_kib("MemAvailable:"),
    }
}

// ---- process level --------------------------------------------------------------------------

/// `scripts/spawn_measure.c`, built static once per test run: it forks, execs its arguments and
/// prints `<wall_ns> <peak_rss_kib> <status>`. A child's peak RSS must be measured from a small
/// parent: started from this (large) test process, a child's ru_maxrss would include this
/// process's own peak, because exec records the old address space's high-water mark and a
/// `posix_spawn` child runs on its parent's address space until it execs.
fn launcher() -> PathBuf {
    static LAUNCHER: OnceLock<PathBuf> = OnceLock::new();
    LAUNCHER
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spawn_measure");
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/spawn_measure.c");
            let st = Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&out)
                .arg(&src)
                .status()
                .expect("run gcc (it also builds the test guests)");
            assert!(st.success(), "building {} failed", src.display());
            out
        })
        .clone()
}

/// One finished `vfiovm` run.
struct Measured {
    wall: Duration,
    max_rss_kib: i64,
    status: i32,
}

fn start_exit_now() -> Child {
    Command::new(launcher())
        .arg(common::vfiovm_bin())
        .args(["--kernel", &common::guest("exit_now")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start spawn_measure")
}

fn finish(child: Child) -> Measured {
    let out = child.wait_with_output().expect("wait for spawn_measure");
    assert!(out.status.success(), "spawn_measure failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<i64> = text
        .split_whitespace()
        .map(|x| x.parse().expect("a number"))
        .collect();
    assert_eq!(v.len(), 3, "spawn_measure printed {text:?}");
    Measured {
        wall: Duration::from_nanos(v[0] as u64),
        max_rss_kib: v[1],
        status: v[2] as i32,
    }
}

fn print_host(label: &str, h: &HostSample) {
    println!(
        "soak: host {label}: files={} tasks={} slab={} KiB available={} KiB",
        h.files, h.tasks, h.slab_kib, h.available_kib
    );
}

#[test]
fn process_level_runs_leave_nothing_behind() {
    let _serial = lock();
    let guest = common::guest("exit_now");
    assert!(std::path::Path::new(&guest).exists());
    // One run first so page cache and lazily loaded modules are not counted as growth.
    assert_eq!(finish(start_exit_now()).status, EXIT_NOW_STATUS);
    let before = host_sample();
    print_host("before", &before);

    let runs = runs();
    let t0 = Instant::now();
    let mut peaks = Vec::with_capacity(runs);
    let mut walls = Vec::with_capacity(runs);
    for run in 1..=runs {
        let r = finish(start_exit_now());
        assert_eq!(r.status, EXIT_NOW_STATUS, "run {run}");
        peaks.push(r.max_rss_kib);
        walls.push(r.wall);
    }
    let serial_time = t0.elapsed();
    for n in (1..=runs).filter(|&n| reported(n, runs)) {
        println!(
            "soak: process serial run {n}: peak RSS {} KiB, wall {:.1?}",
            peaks[n - 1],
            walls[n - 1]
        );
    }
    println!("soak: process serial: {runs} runs in {serial_time:.2?}");

    let t1 = Instant::now();
    let mut pair_peaks = Vec::with_capacity(runs);
    for pair in 0..runs / 2 {
        let (a, b) = (start_exit_now(), start_exit_now());
        for child in [a, b] {
            let r = finish(child);
            assert_eq!(r.status, EXIT_NOW_STATUS, "pair {pair}");
            pair_peaks.push(r.max_rss_kib);
        }
    }
    let pair_time = t1.elapsed();
    for n in (1..=runs).filter(|&n| reported(n, runs)) {
        println!(
            "soak: process two-at-a-time run {n}: peak RSS {} KiB",
            pair_peaks[n - 1]
        );
    }
    println!("soak: process two-at-a-time: {runs} runs in {pair_time:.2?}");

    let after = host_sample();
    print_host("after", &after);
    let growth = (
        after.files - before.files,
        after.tasks - before.tasks,
        after.slab_kib - before.slab_kib,
        before.available_kib - after.available_kib,
    );
    println!(
        "soak: host growth over {} runs: files {:+}, tasks {:+}, slab {:+} KiB, MemAvailable {:+} KiB",
        2 * runs,
        growth.0,
        growth.1,
        growth.2,
        -growth.3
    );

    // Peak RSS does not creep from run to run: the binary is the same, its inputs are the same.
    for (what, p) in [("serial", &peaks), ("two-at-a-time", &pair_peaks)] {
        let (first, last) = (p[0], p[p.len() - 1]);
        assert!(
            (last - first).abs() <= PEAK_RSS_DIFF_MAX_KIB,
            "{what}: peak RSS of run {} is {last} KiB, of run 1 {first} KiB",
            p.len()
        );
        let max = *p.iter().max().unwrap();
        let min = *p.iter().min().unwrap();
        assert!(
            max - min <= 2 * PEAK_RSS_DIFF_MAX_KIB,
            "{what}: peak RSS ranges from {min} to {max} KiB"
        );
    }
    assert!(
        growth.0 < HOST_FILES_MAX_GROWTH,
        "allocated file handles grew by {}",
        growth.0
    );
    assert!(
        growth.1 < HOST_TASKS_MAX_GROWTH,
        "host tasks grew by {}",
        growth.1
    );
    assert!(
        growth.2 < HOST_SLAB_MAX_GROWTH_KIB,
        "Slab grew by {} KiB",
        growth.2
    );
}

// ---- in-process -----------------------------------------------------------------------------

/// `exit_now` with the PCI test device, so the PCI root, its MSI/MSI-X vectors and irqfds, and
/// its hold on guest RAM are built and torn down every time too.
fn config() -> VmConfig {
    VmConfig {
        kernel: Some(common::guest("exit_now").into()),
        initramfs: None,
        cmdline: DEFAULT_CMDLINE.to_string(),
        memory: vfiovm::config::DEFAULT_MEMORY,
        ram: Default::default(),
        cpus: 1,
        devices: Vec::new(),
        test_pci_device: true,
        verbosity: 0,
        ..VmConfig::new("")
    }
}

/// Builds, runs and drops one VM; it must end the way `exit_now` ends it.
fn one_vm(config: &VmConfig) {
    let mut vm = Vm::build(config).expect("build");
    let reason = vm.run().expect("run");
    assert_eq!(reason.status(), EXIT_NOW_STATUS, "{reason:?}");
    assert!(matches!(reason, ExitReason::Guest(_)));
    drop(vm);
}

fn print_self(label: &str, n: usize, s: &SelfSample) {
    println!(
        "soak: in-process {label} run {n}: fds {} threads {} VmRSS {} KiB",
        s.fds, s.threads, s.rss_kib
    );
}

/// Fds and threads must be exactly back at `base` after VM number `run`.
fn check_back_to(
    base: &SelfSample,
    base_kinds: &BTreeMap<String, usize>,
    run: usize,
) -> SelfSample {
    let s = procfs::sample();
    assert!(
        s.fds == base.fds && s.threads == base.threads,
        "after VM {run}: {s:?}, after the warm-up: {base:?}; fds that changed: {:?}",
        procfs::fd_diff(base_kinds, &procfs::fd_kinds())
    );
    s
}

#[test]
fn in_process_vms_leave_nothing_behind() {
    let _serial = lock();
    procfs::stdin_from_dev_null();
    let cfg = config();
    one_vm(&cfg);
    print_self("serial", 1, &procfs::sample());
    for _ in 1..WARMUP {
        one_vm(&cfg);
    }
    let base = procfs::sample();
    let base_kinds = procfs::fd_kinds();
    print_self("serial", WARMUP, &base);

    let runs = runs();
    let t0 = Instant::now();
    let mut end = base;
    for run in WARMUP + 1..=runs {
        one_vm(&cfg);
        end = check_back_to(&base, &base_kinds, run);
        if reported(run, runs) {
            print_self("serial", run, &end);
        }
    }
    println!(
        "soak: in-process serial: {} VMs in {:.2?}",
        runs - WARMUP,
        t0.elapsed()
    );
    assert!(
        end.rss_kib < base.rss_kib + RSS_GROWTH_MAX_KIB,
        "VmRSS grew from {} KiB (VM {WARMUP}) to {} KiB (VM {runs})",
        base.rss_kib,
        end.rss_kib
    );

    // Two at a time: two threads each build and run a VM, joined before the next pair. This
    // phase has its own warm-up (a second malloc arena, a second cached thread stack): RSS is
    // compared from its pair WARMUP / 2 on.
    let t1 = Instant::now();
    let mut pair_base = base;
    for pair in 1..=runs / 2 {
        std::thread::scope(|s| {
            let a = s.spawn(|| one_vm(&cfg));
            let b = s.spawn(|| one_vm(&cfg));
            a.join().expect("VM thread a");
            b.join().expect("VM thread b");
        });
        let run = pair * 2;
        end = check_back_to(&base, &base_kinds, run);
        if pair == WARMUP / 2 {
            pair_base = end;
        }
        if reported(run, runs) {
            print_self("two-at-a-time", run, &end);
        }
    }
    println!(
        "soak: in-process two-at-a-time: {runs} VMs in {:.2?}",
        t1.elapsed()
    );
    assert!(
        end.rss_kib < pair_base.rss_kib + RSS_GROWTH_MAX_KIB,
        "VmRSS grew from {} KiB (VM {WARMUP}) to {} KiB (VM {runs}) two at a time",
        pair_base.rss_kib,
        end.rss_kib
    );

    // The measurement sees what a VM holds while it exists, so "no change" above means
    // something: a built VM has /dev/kvm, the VM, its vCPU and its eventfds open.
    let vm = Vm::build(&cfg).expect("build");
    let live = procfs::sample();
    assert!(live.fds > base.fds + 5, "a live VM holds fds: {live:?}");
    drop(vm);
    check_back_to(&base, &base_kinds, runs + 1);
}
