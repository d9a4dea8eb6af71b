//! Teardown under faults: whatever ends the VM — SIGTERM, SIGINT, SIGHUP, a KVM internal error, a
//! vCPU thread's error, a setup step failing halfway — every vCPU thread is stopped and joined,
//! nothing the VM opened stays open, and the process exits promptly with the documented status
//! (`vfiovm --help`, docs/errors.md): 128+N for signal N, 4 for a guest crash, 2 for an error.
//!
//! "Promptly" is [`PROMPT`]: vCPUs get 5 s to stop before vfiovm gives up on them and says so,
//! so a hang on a join shows as a slow exit with "did not stop within" on stderr. With `-vv`
//! vfiovm logs "vCPU N thread joined" for each vCPU it joined; the binary tests assert those
//! lines. The in-process tests compare this process's fds before and after, and look for
//! threads named `vcpuN` left behind.
//!
//! The guest `internal_error` (resources/guests) makes the faults: a protected-mode `iret`,
//! which this host's KVM cannot emulate (KVM_EXIT_INTERNAL_ERROR, suberror 1), with the other
//! vCPUs spinning in a real-mode loop (`aps=spin`) or halted (`aps=halt`); `bsp=spin` spins
//! instead, for the signal tests.

mod common;
#[path = "common/procfs.rs"]
mod procfs;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{guest, vfiovm_bin, TempFile};
use devices::Bus;
use kvm_ioctls::Kvm;
use vfiovm::config::{VmConfig, DEFAULT_CMDLINE};
use vfiovm::exit::{ExitReason, ExitState, STATUS_ERROR, STATUS_GUEST_CRASH};
use vfiovm::vcpu::{self, IoBuses};
use vfiovm::vm::Vm;

/// How long the VMM may take from the event that ends the VM to its exit.
const PROMPT: Duration = Duration::from_secs(5);
/// How long a guest may take to reach the point where a test acts.
const GUEST_READY: Duration = Duration::from_secs(30);

/// Every test here runs alone: the in-process ones count this process's fds and threads, which
/// the others' pipes and reader threads would change.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- the binary ------------------------------------------------------------------------------

/// A running `vfiovm` whose stdout can be waited on line by line.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    /// The reader threads, joined by [`Running::finish`] so their pipe fds are closed after it.
    readers: Option<(JoinHandle<()>, JoinHandle<String>)>,
}

/// How a run ended.
#[derive(Debug)]
struct Ended {
    /// Exit status; `None` when a signal killed the process instead of it exiting.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// From [`Running::finish`]'s call (the signal, or the start) to the exit.
    took: Duration,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        Self::start_cmd(Command::new(vfiovm_bin()).args(args))
    }

    fn start_cmd(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vfiovm");
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().expect("piped stdout");
        let sink = stdout.clone();
        let out_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push_str(&text);
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Running {
            child,
            stdout,
            readers: Some((out_reader, stderr)),
        }
    }

    /// Waits until the guest has printed `line` (a whole line).
    fn wait_for_line(&mut self, line: &str) {
        let start = Instant::now();
        loop {
            if self.stdout.lock().unwrap().lines().any(|l| l == line) {
                return;
            }
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "vfiovm exited ({st}) before the guest printed {line:?}: {:#?}",
                    self.finish(None)
                );
            }
            if start.elapsed() > GUEST_READY {
                let _ = self.child.kill();
                panic!(
                    "the guest did not print {line:?} within {GUEST_READY:?}: {:#?}",
                    self.finish(None)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (if any), then waits up to [`PROMPT`] + 10 s for the exit (killing the
    /// process after that, so a hang fails the test rather than the suite).
    fn finish(&mut self, signal: Option<i32>) -> Ended {
        let t = Instant::now();
        if let Some(sig) = signal {
            // SAFETY: kill(2) on our own child's pid, which it keeps until we reap it.
            assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
        }
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                break st;
            }
            if t.elapsed() > PROMPT + Duration::from_secs(10) {
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let took = t.elapsed();
        let (out_reader, err_reader) = self.readers.take().expect("finish is called once");
        let _ = out_reader.join();
        let stderr = err_reader.join().unwrap_or_default();
        Ended {
            code: if status.signal().is_some() {
                None
            } else {
                status.code()
            },
            stdout: self.stdout.lock().unwrap().clone(),
            stderr,
            took,
        }
    }
}

impl Ended {
    /// Exited by itself with `status`, within [`PROMPT`], no panic, no vCPU left behind.
    fn expect(&self, status: i32) -> &Self {
        assert_eq!(self.code, Some(status), "exit status: {self:#?}");
        assert!(
            self.took < PROMPT,
            "took {:?} to exit: {self:#?}",
            self.took
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        assert!(!self.stderr.contains("did not stop"), "{self:#?}");
        self
    }

    /// With -vv: every one of `cpus` vCPU threads was joined.
    fn expect_joined(&self, cpus: u32) -> &Self {
        for id in 0..cpus {
            assert!(
                self.stderr.contains(&format!("vCPU {id} thread joined")),
                "vCPU {id} was not joined: {self:#?}"
            );
        }
        self
    }

    /// Lines on stderr that are not log lines (`vfiovm: [ time] level: ...`).
    fn message_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.starts_with("vfiovm: ["))
            .collect()
    }
}

fn spinning_vm_stopped_by(signal: i32) {
    let _s = serial();
    let g = guest("internal_error");
    let mut r = Running::start(&[
        "-vv",
        "--kernel",
        &g,
        "--cpus",
        "2",
        "--cmdline",
        "aps=spin bsp=spin",
    ]);
    r.wait_for_line("internal_error: spinning");
    let e = r.finish(Some(signal));
    e.expect(128 + signal).expect_joined(2);
    assert!(
        e.stdout.contains("internal_error: aps=spin online=1"),
        "the AP was spinning: {e:#?}"
    );
    assert_eq!(
        e.message_lines(),
        [format!(
            "vfiovm: stopped by signal {signal}; the VM was shut down"
        )],
        "{e:#?}"
    );
}

/// Both vCPUs busy in the guest (neither halted): the kick must get each out of KVM_RUN.
#[test]
fn sigterm_stops_busy_vcpus_and_joins_them() {
    spinning_vm_stopped_by(libc::SIGTERM);
}

#[test]
fn sigint_stops_busy_vcpus_and_joins_them() {
    spinning_vm_stopped_by(libc::SIGINT);
}

#[test]
fn sighup_stops_busy_vcpus_and_joins_them() {
    spinning_vm_stopped_by(libc::SIGHUP);
}

/// A KVM internal error on vCPU 0 while vCPU 1 waits as `aps` says (`spin`: running guest code;
/// `halt`: blocked in the kernel): vCPU 1 is kicked out and joined, the process exits 4 with one
/// line, and -v dumps both vCPUs' registers (the crashed one and the one stopped because of it).
fn internal_error_with_the_ap(aps: &str) {
    let _s = serial();
    let g = guest("internal_error");
    let cmdline = format!("aps={aps}");
    let mut r = Running::start(&["-vv", "--kernel", &g, "--cpus", "2", "--cmdline", &cmdline]);
    let e = r.finish(None);
    e.expect(STATUS_GUEST_CRASH).expect_joined(2);
    assert!(
        e.stdout
            .contains(&format!("internal_error: aps={aps} online=1")),
        "{e:#?}"
    );
    assert!(e.stdout.contains("internal_error: iret"), "{e:#?}");
    assert_eq!(
        e.message_lines(),
        ["vfiovm: guest crashed: KVM internal error on vCPU 0, suberror 1 (instruction emulation failed) (-v dumps the registers)"],
        "{e:#?}"
    );
    assert!(e.stderr.contains("vCPU 0 registers: rip="), "{e:#?}");
    assert!(e.stderr.contains("vCPU 1 registers: rip="), "{e:#?}");
}

#[test]
fn kvm_internal_error_stops_the_spinning_ap() {
    internal_error_with_the_ap("spin");
}

#[test]
fn kvm_internal_error_stops_the_halted_ap() {
    internal_error_with_the_ap("halt");
}

/// A KVM internal error with one vCPU and no -v: status 4 and exactly one line.
#[test]
fn kvm_internal_error_is_one_line_and_status_4() {
    let _s = serial();
    let mut r = Running::start(&["--kernel", &guest("internal_error")]);
    let e = r.finish(None);
    e.expect(STATUS_GUEST_CRASH);
    assert_eq!(
        e.stderr,
        "vfiovm: guest crashed: KVM internal error on vCPU 0, suberror 1 (instruction emulation failed) (-v dumps the registers)\n",
        "{e:#?}"
    );
}

/// A uid no account uses, so RLIMIT_NPROC counts only our own process's tasks.
const UNUSED_UID: &str = "64999";

/// vCPU 1's thread cannot start (RLIMIT_NPROC = 2 tasks: the main thread and vCPU 0) while
/// vCPU 0 already runs the guest: vCPU 0 is stopped and joined, the process exits 2 with one
/// line. The process runs as an unused uid (root is exempt from RLIMIT_NPROC) with
/// CAP_DAC_OVERRIDE as an ambient capability, so it can still open /dev/kvm.
#[test]
fn vcpu_thread_that_cannot_start_stops_the_running_one() {
    let _s = serial();
    let copy = TempFile::new(
        "internal-error",
        &std::fs::read(guest("internal_error")).unwrap(),
    );
    let bin = vfiovm_bin();
    let mut r = Running::start_cmd(Command::new("prlimit").args([
        "--nproc=2",
        "setpriv",
        &format!("--reuid={UNUSED_UID}"),
        &format!("--regid={UNUSED_UID}"),
        "--clear-groups",
        "--inh-caps=+dac_override",
        "--ambient-caps=+dac_override",
        bin.to_str().unwrap(),
        "-vv",
        "--kernel",
        copy.path(),
        "--cpus",
        "2",
        "--cmdline",
        "bsp=spin",
    ]));
    let e = r.finish(None);
    e.expect(STATUS_ERROR).expect_joined(1);
    let lines = e.message_lines();
    assert_eq!(lines.len(), 1, "{e:#?}");
    assert!(
        lines[0].starts_with(
            "vfiovm: error: cannot start vCPU thread 1: Resource temporarily unavailable"
        ),
        "{e:#?}"
    );
    assert!(lines[0].contains("ulimit -u"), "names the fix: {e:#?}");
}

/// Setup fails after the VM, guest RAM, the loaded kernel and the PCI platform with a device
/// exist (passthrough asked for on a host without an IOMMU): exit 2, one line, at once.
#[test]
fn setup_failing_after_the_devices_exist_exits_2() {
    let _s = serial();
    let mut r = Running::start(&[
        "--kernel",
        &guest("internal_error"),
        "--test-pci-device",
        "--device",
        "0000:00:01.0",
    ]);
    let e = r.finish(None);
    e.expect(STATUS_ERROR);
    assert_eq!(e.message_lines().len(), 1, "{e:#?}");
    assert!(
        e.stderr.starts_with("vfiovm: error: no IOMMU is active"),
        "{e:#?}"
    );
}

// ---- in-process --------------------------------------------------------------------------------

fn config(kernel: &str) -> VmConfig {
    VmConfig {
        kernel: Some(guest(kernel).into()),
        initramfs: None,
        cmdline: DEFAULT_CMDLINE.to_string(),
        memory: 64 << 20,
        ram: Default::default(),
        cpus: 1,
        devices: Vec::new(),
        test_pci_device: true,
        // Its six tests' eventfds are made with the device and must go with it.
        pci_testdev: true,
        verbosity: 0,
        ..VmConfig::new("")
    }
}

/// Runs `f` and checks this process has exactly the fds afterwards that it had before (listed
/// by kind when not) and no vCPU thread.
fn leaves_nothing_behind(what: &str, f: impl FnOnce()) {
    let (before, kinds) = (procfs::sample(), procfs::fd_kinds());
    f();
    let after = procfs::sample();
    assert_eq!(
        procfs::vcpu_threads(),
        Vec::<String>::new(),
        "{what}: a vCPU thread is left"
    );
    assert!(
        after.fds == before.fds,
        "{what}: before {before:?}, after {after:?}; fds that changed: {:?}",
        procfs::fd_diff(&kinds, &procfs::fd_kinds())
    );
}

/// Dropping a VM closes everything it opened, the KVM VM fd included: the PCI root and its
/// devices (which hold interrupt routes, irqfds and guest RAM) must not outlive it. This failed
/// before `Platform` emptied its buses on drop (the buses and the PCI root held each other).
#[test]
fn dropping_a_vm_closes_every_fd_it_opened() {
    let _s = serial();
    procfs::stdin_from_dev_null();
    leaves_nothing_behind("built, run and dropped", || {
        let mut vm = Vm::build(&config("exit_now")).expect("build");
        let live = procfs::fd_kinds();
        assert_eq!(live.get("anon_inode:kvm-vm"), Some(&1), "{live:?}");
        let reason = vm.run().expect("run");
        assert_eq!(reason.status(), 1);
    });
    leaves_nothing_behind("built and dropped without running", || {
        drop(Vm::build(&config("exit_now")).expect("build"));
    });
}

/// Setup failing halfway releases what the earlier steps made.
#[test]
fn failed_builds_release_what_they_made() {
    let _s = serial();
    procfs::stdin_from_dev_null();
    let big = TempFile::new("big-initramfs", &vec![0u8; 80 << 20]);
    let cases: Vec<(&str, VmConfig, &str)> = vec![
        (
            // After the VM, RAM and the kernel.
            "initramfs too large",
            VmConfig {
                initramfs: Some(big.0.clone()),
                ..config("exit_now")
            },
            "does not fit in guest RAM",
        ),
        (
            // After the initramfs.
            "command line too long",
            VmConfig {
                cmdline: "x".repeat(arch::layout::CMDLINE_MAX_SIZE),
                ..config("exit_now")
            },
            "the kernel command line is",
        ),
        (
            // After the PCI platform and its test device.
            "passthrough without an IOMMU",
            VmConfig {
                devices: vec![vfiovm::config::DeviceConfig::parse("0000:00:01.0").unwrap()],
                ..config("exit_now")
            },
            "no IOMMU is active",
        ),
    ];
    for (what, cfg, message) in cases {
        // Twice: the first may allocate what stays for the process (lazy statics).
        for _ in 0..2 {
            leaves_nothing_behind(what, || {
                let e = Vm::build(&cfg).expect_err(what);
                assert!(e.to_string().contains(message), "{what}: {e}");
            });
        }
    }
}

/// A vCPU thread's own error (KVM_RUN failing; here because its kvm_run page asks KVM to sync
/// registers that do not exist, EINVAL) stops the VM with status 2 and the error, and the other
/// vCPU — halted in KVM_RUN, waiting for a startup IPI — is kicked out and joined.
#[test]
fn vcpu_error_stops_the_vm_and_the_other_vcpu() {
    let _s = serial();
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let mut bsp = vm.create_vcpu(0).expect("vCPU 0");
    let ap = vm.create_vcpu(1).expect("vCPU 1");
    // Bit 3 is not a KVM_SYNC_X86_* field: KVM_RUN refuses to run with EINVAL.
    bsp.get_kvm_run().kvm_dirty_regs = 1 << 3;
    vcpu::install_kick_handler().expect("kick handler");
    let buses = IoBuses {
        pio: Arc::new(Bus::new("pio")),
        mmio: Arc::new(Bus::new("mmio")),
    };
    let exit = Arc::new(ExitState::new().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = [(1, ap), (0, bsp)]
        .into_iter()
        .map(|(id, fd)| {
            vcpu::spawn(id, fd, buses.clone(), exit.clone(), stop.clone(), false).unwrap()
        })
        .collect();
    let t = Instant::now();
    let reason = loop {
        if let Some(r) = exit.reason() {
            break r;
        }
        assert!(t.elapsed() < PROMPT, "the vCPU error did not stop the VM");
        std::thread::sleep(Duration::from_millis(1));
    };
    let ExitReason::VcpuError { cpu, ref error } = reason else {
        panic!("expected a vCPU error, got {reason:?}");
    };
    assert_eq!(cpu, 0);
    assert!(
        error.starts_with("KVM_RUN failed: Invalid argument"),
        "{error}"
    );
    assert_eq!(reason.status(), STATUS_ERROR);
    // vCPU 1 cannot leave KVM_RUN on its own: it is still there until stopped. (A thread
    // names itself once it runs, which can be after vCPU 0 failed: wait for the name, never
    // for its absence.)
    let t = Instant::now();
    while !procfs::vcpu_threads().contains(&"vcpu1".to_string()) {
        assert!(t.elapsed() < PROMPT, "vCPU 1 is gone before it was stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(reason
        .complaint()
        .unwrap()
        .starts_with("vCPU 0 failed: KVM_RUN failed"));
    let t = Instant::now();
    vcpu::stop_all(threads, &stop, PROMPT);
    assert!(t.elapsed() < PROMPT, "stop_all took {:?}", t.elapsed());
    assert_eq!(
        procfs::vcpu_threads(),
        Vec::<String>::new(),
        "every vCPU thread was joined"
    );
}
