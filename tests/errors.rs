//! The errors of docs/errors.md that no other test file exercises, and the check that keeps
//! that table honest: every row names a test function that exists and is a `#[test]`, and
//! every row's message still occurs in the source.
//!
//! Most tests start the real binary (one line on stderr, status 2); a few drive the library
//! API where the command line cannot reach the path (a configuration the parser refuses, a
//! file the kernel refuses to read); the last few check messages of paths that only the
//! nested VFIO rig or a VMM bug can reach.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{guest, run, run_cmd, vfiovm_bin, Outcome, TempFile};
use vfiovm::config::{VmConfig, DEFAULT_CMDLINE};
use vfiovm::exit::{
    ExitReason, ExitState, PanicEvidence, STATUS_BOOT_TIMEOUT, STATUS_ERROR, STATUS_GUEST_CRASH,
    STATUS_KERNEL_PANIC, STATUS_STALL, STATUS_TIMEOUT,
};

/// Runs vfiovm and checks: status 2, one line, `vfiovm: error: ` and `needle` in it.
fn expect_error(args: &[&str], needle: &str) -> Outcome {
    let o = run(args);
    o.expect_status(STATUS_ERROR).expect_clean_stderr(1);
    assert!(o.stderr.starts_with("vfiovm: error: "), "{o:#?}");
    assert!(
        o.stderr.contains(needle),
        "stderr should have {needle:?}: {o:#?}"
    );
    o
}

fn exit_now() -> String {
    guest("exit_now")
}

// ---- command line ------------------------------------------------------------------------------

#[test]
fn option_without_a_value() {
    expect_error(
        &["--kernel", &exit_now(), "--memory"],
        "option '--memory' needs a value (see vfiovm --help)",
    );
    expect_error(&["doctor", "-m"], "option '-m' needs a value");
}

#[test]
fn option_given_twice() {
    expect_error(
        &["--kernel", &exit_now(), "--kernel", "x"],
        "option '--kernel' given more than once: give it once",
    );
    // An alias is the same option.
    expect_error(
        &["--kernel", &exit_now(), "--cpus", "1", "--smp", "2"],
        "option '--smp' given more than once",
    );
}

#[test]
fn stray_argument() {
    expect_error(
        &["--kernel", &exit_now(), "console=ttyS0"],
        "unexpected argument 'console=ttyS0' (options start with --; see vfiovm --help)",
    );
}

#[test]
fn bad_device_values() {
    for (value, why) in [
        (",rom=x", "no device address"),
        ("0000:06:0d.0,color=red", "unknown option 'color=red'"),
        ("0000:06:0d.0,rom=a,rom=b", "rom= given twice"),
        ("0000:06:0d.0,vf_token=nope", "vf_token must be a UUID like"),
        ("0000:06:0d.0,reset=always", "reset= takes auto or required"),
    ] {
        let o = expect_error(
            &["--kernel", &exit_now(), "--device", value],
            &format!("invalid --device '{value}': {why}"),
        );
        assert!(
            o.stderr.contains(
                "(syntax: BDF|SYSFS_PATH[,rom=FILE][,vf_token=UUID][,reset=auto|required][,msix_relocation=auto|off][,p2p=on|off])"
            ),
            "{o:#?}"
        );
    }
}

#[test]
fn doctor_rejects_unknown_options() {
    expect_error(&["doctor", "--kernel", "x"], "unknown option '--kernel'");
}

// ---- kernel and initramfs ------------------------------------------------------------------------

/// /proc/self/mem is a regular file that opens but cannot be read at offset 0.
#[test]
fn kernel_that_cannot_be_read() {
    expect_error(
        &["--kernel", "/proc/self/mem"],
        "cannot read the kernel image: Input/output error",
    );
}

#[test]
fn elf32_kernel() {
    let mut image = vec![0u8; 64];
    image[..5].copy_from_slice(b"\x7fELF\x01");
    let f = TempFile::new("elf32", &image);
    expect_error(
        &["--kernel", f.path()],
        "32-bit ELF kernels without a multiboot header are not supported: link it as ELF64",
    );
}

/// A bzImage setup header (`HdrS`, boot protocol `version`) in a file of `len` bytes.
fn bzimage(version: u16, len: usize) -> Vec<u8> {
    let mut img = vec![0u8; 0x2000];
    img[0x1f1] = 1; // setup_sects
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    img[0x211] = 1; // loadflags: LOADED_HIGH
    img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    img.truncate(len);
    img
}

#[test]
fn broken_bzimage() {
    let f = TempFile::new("bzimage-cut", &bzimage(0x020c, 0x300));
    expect_error(&["--kernel", f.path()], "the bzImage could not be loaded: ");
    let o = run(&["--kernel", f.path()]);
    assert!(
        o.stderr.contains("(is the file a complete x86 bzImage?)"),
        "{o:#?}"
    );
}

#[test]
fn old_bzimage() {
    let f = TempFile::new("bzimage-old", &bzimage(0x0200, 0x2000));
    expect_error(
        &["--kernel", f.path()],
        "the bzImage does not support the 64-bit boot protocol (needs boot protocol 2.12+ with XLF_KERNEL_64; this one has version 0x200",
    );
}

#[test]
fn command_line_too_long() {
    let max = arch::layout::CMDLINE_MAX_SIZE - 1;
    let long = "x".repeat(max + 1);
    expect_error(
        &["--kernel", &exit_now(), "--cmdline", &long],
        &format!(
            "the kernel command line is {} bytes; at most {max} fit: shorten --cmdline",
            max + 1
        ),
    );
}

/// Reading fails after the size is known (library API: a file opened write-only).
#[test]
fn initramfs_that_cannot_be_read() {
    use arch::boot::{load_initramfs, LoadedKernel};
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let kernel = LoadedKernel {
        mode: arch::regs::EntryMode::Pvh,
        entry: arch::layout::HIMEM_START,
        kernel_end: 0x20_0000,
        setup_header: None,
    };
    let f = TempFile::new("initramfs-wo", &[0xab; 4096]);
    let mut wo = std::fs::OpenOptions::new()
        .write(true)
        .open(f.path())
        .unwrap();
    let e = load_initramfs(&mem, 64 << 20, &mut wo, &kernel)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cannot read the initramfs: "), "{e}");
    assert!(e.contains("Bad file descriptor"), "{e}");
}

/// Boot structures written to guest memory that cannot hold them (library API: the command
/// line never asks for less than 16 MiB).
#[test]
fn boot_structures_that_do_not_fit() {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    let tiny = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let e = arch::regs::write_identity_page_tables(&tiny).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("guest memory is too small for the boot "),
        "{e}"
    );
    let info = arch::boot::BootInfo {
        mem_size: 0x1000,
        cmdline: "",
        initramfs: None,
        rsdp: None,
    };
    let e = arch::boot::write_pvh_start_info(&tiny, &info).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("guest memory is too small for the PVH"),
        "{e}"
    );
}

// ---- KVM and host resources ----------------------------------------------------------------------

fn config() -> VmConfig {
    VmConfig {
        kernel: Some(exit_now().into()),
        initramfs: None,
        cmdline: DEFAULT_CMDLINE.to_string(),
        memory: 64 << 20,
        ram: Default::default(),
        cpus: 1,
        devices: Vec::new(),
        test_pci_device: false,
        verbosity: 0,
        ..VmConfig::new("")
    }
}

/// Library API: the command line stops at 254 vCPUs, which this host's KVM allows.
#[test]
fn more_vcpus_than_kvm_allows() {
    let max = kvm_ioctls::Kvm::new().unwrap().get_max_vcpus() as u32;
    let cfg = VmConfig {
        cpus: max + 1,
        ..config()
    };
    let e = vfiovm::vm::Vm::build(&cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "--cpus {} is more than this host's KVM allows ({max}): ask for fewer",
            max + 1
        )
    );
}

/// Guest RAM larger than the address-space limit.
#[test]
fn guest_ram_that_cannot_be_allocated() {
    let o = run_cmd(
        Command::new("prlimit").args([
            "--as=1073741824",
            vfiovm_bin().to_str().unwrap(),
            "--kernel",
            &exit_now(),
            "--memory",
            "2G",
        ]),
        None,
        Duration::from_secs(30),
    );
    o.expect_status(STATUS_ERROR).expect_clean_stderr(1);
    assert!(
        o.stderr
            .starts_with("vfiovm: error: cannot allocate 2048 MiB of guest RAM: "),
        "{o:#?}"
    );
    assert!(o.stderr.contains("ask for less --memory"), "{o:#?}");
}

/// Library API: KVM refuses to resize a memory slot in place.
#[test]
fn kvm_refuses_a_ram_slot() {
    use vfiovm::memory::{create_guest_memory, register_with_kvm};
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let first = create_guest_memory(64 << 20, &Default::default()).unwrap();
    register_with_kvm(&vm, &first).unwrap();
    let second = create_guest_memory(32 << 20, &Default::default()).unwrap();
    let e = register_with_kvm(&vm, &second).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("KVM refused guest RAM slot 0 at 0x0: Invalid argument"),
        "{e}"
    );
}

/// Library API: the interrupt routing table needs the in-kernel irqchip, which the VMM always
/// creates first.
#[test]
fn interrupt_routing_without_an_irqchip() {
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = Arc::new(kvm.create_vm().unwrap());
    let mem = vfiovm::memory::create_guest_memory(64 << 20, &Default::default()).unwrap();
    let exit = Arc::new(ExitState::new().unwrap());
    let firmware = vfiovm::platform::FirmwareDevices {
        fw_cfg: vfiovm::firmware::fw_cfg(&mem, &config(), 36).unwrap(),
        flash: None,
    };
    let e = vfiovm::platform::Platform::new(&vm, &mem, &config(), exit, 36, firmware).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot set up interrupt routing: "),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("(create the in-kernel irqchip first)"),
        "{e}"
    );
}

/// Out of file descriptors at every step of setup in turn (RLIMIT_NOFILE from 4 up): each
/// step that opens something fails with its own one line and status 2, never a panic, until
/// the limit is high enough for the VM to run. The VM has the PCI test device, pci-testdev and
/// two vCPUs, so every kind of setup step is on the way.
#[test]
fn fd_exhaustion_at_every_setup_step() {
    let k = exit_now();
    let mut seen: Vec<String> = Vec::new();
    let mut ran_at = None;
    for n in 4..=64 {
        let o = run_cmd(
            Command::new("prlimit").args([
                &format!("--nofile={n}"),
                vfiovm_bin().to_str().unwrap(),
                "--kernel",
                &k,
                "--cpus",
                "2",
                "--test-pci-device",
                "--pci-testdev",
            ]),
            None,
            Duration::from_secs(30),
        );
        if o.status == 1 {
            ran_at = Some(n);
            break;
        }
        o.expect_status(STATUS_ERROR).expect_clean_stderr(1);
        assert!(
            o.stderr.starts_with("vfiovm: error: "),
            "nofile={n}: {o:#?}"
        );
        assert!(
            o.stderr.contains("Too many open files"),
            "nofile={n}: {o:#?}"
        );
        seen.push(o.stderr.trim_end().to_string());
    }
    assert!(ran_at.is_some(), "never ran: {seen:#?}");
    for want in [
        "vfiovm: error: cannot set up the event loop (signals, epoll): Too many open files",
        "vfiovm: error: cannot open /dev/kvm: Too many open files (os error 24) (too many open files: raise the limit with `ulimit -n`",
        "vfiovm: error: KVM setup failed (KVM_CREATE_VM): Too many open files (os error 24) (too many open files: raise the limit with `ulimit -n`",
        "vfiovm: error: cannot create an eventfd for the serial interrupt: Too many open files",
        "vfiovm: error: cannot create the PCI test device: ",
        "vfiovm: error: cannot create pci-testdev: cannot create an eventfd for its tests: Too many open files",
        "vfiovm: error: PCI: ",
        "vfiovm: error: KVM setup failed (KVM_CREATE_VCPU): Too many open files",
    ] {
        assert!(
            seen.iter().any(|l| l.starts_with(want)),
            "no step failed with {want:?}: {seen:#?}"
        );
    }
}

// ---- passthrough: input and host checks --------------------------------------------------------

/// Device addresses are checked before the host: a typo is reported the same on every host.
#[test]
fn passthrough_input_errors_come_first() {
    expect_error(
        &["--kernel", &exit_now(), "--device", "junk"],
        "'junk' is not a PCI address (no '.' before the function number): expected DDDD:BB:DD.F",
    );
    expect_error(
        &[
            "--kernel",
            &exit_now(),
            "--device",
            "06:0d.0",
            "--device",
            "/sys/bus/pci/devices/0000:06:0d.0",
        ],
        "--device 0000:06:0d.0 is given twice: give each device once",
    );
    // A ROM file is an input too: read before the host is checked or anything is opened.
    expect_error(
        &[
            "--kernel",
            &exit_now(),
            "--device",
            "06:0d.0,rom=/nonexistent/vbios.rom",
        ],
        "cannot read the ROM file '/nonexistent/vbios.rom' for 0000:06:0d.0: No such file or directory (os error 2)",
    );
}

fn doctor(args: &[&str]) -> Outcome {
    let mut all = vec!["doctor"];
    all.extend_from_slice(args);
    run(&all)
}

fn fail_lines(o: &Outcome) -> Vec<&str> {
    o.stdout
        .lines()
        .filter(|l| l.starts_with("FAIL: "))
        .collect()
}

/// `vfiovm doctor` on this host: the host-wide checks its sysfs and devfs call for.
#[test]
fn doctor_on_this_host() {
    let o = doctor(&[]);
    let groups = std::fs::read_dir("/sys/kernel/iommu_groups").map(|d| d.count());
    let mut want = Vec::new();
    match groups {
        Err(_) => want.push("FAIL: no IOMMU is active (/sys/kernel/iommu_groups is missing)"),
        Ok(0) => want.push("FAIL: no IOMMU is active (/sys/kernel/iommu_groups is empty)"),
        Ok(_) => {}
    }
    if !Path::new("/dev/vfio/vfio").exists() {
        want.push("FAIL: /dev/vfio/vfio is missing: load the vfio modules");
    }
    let fails = fail_lines(&o);
    assert_eq!(fails.len(), want.len(), "{o:#?}");
    for (line, w) in fails.iter().zip(&want) {
        assert!(line.starts_with(w), "{line:?} should start with {w:?}");
    }
    if want.is_empty() {
        o.expect_status(0);
    } else {
        o.expect_status(STATUS_ERROR);
        let summary = format!(
            "doctor: {} check{} failed",
            want.len(),
            if want.len() == 1 { "" } else { "s" }
        );
        assert!(o.stdout.ends_with(&format!("{summary}\n")), "{o:#?}");
    }
}

/// `vfiovm doctor DEV...` on this host: a malformed address, an absent device, and the first
/// PCI device of this host, which is not bound to vfio-pci (no VFIO here).
#[test]
fn doctor_device_checks_on_this_host() {
    let first = std::fs::read_dir("/sys/bus/pci/devices")
        .ok()
        .and_then(|d| {
            let mut names: Vec<String> = d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names.into_iter().next()
        });
    let mut args = vec!["junk", "ffff:ff:1f.7"];
    if let Some(f) = &first {
        args.push(f);
    }
    let o = doctor(&args);
    o.expect_status(STATUS_ERROR);
    let fails = fail_lines(&o);
    assert!(
        fails.iter().any(|l| l
            .starts_with("FAIL: 'junk' is not a PCI address (no '.' before the function number)")),
        "{o:#?}"
    );
    assert!(
        fails.iter().any(|l| l.starts_with(
            "FAIL: no PCI device ffff:ff:1f.7 on this host (/sys/bus/pci/devices/ffff:ff:1f.7 is missing)"
        )),
        "{o:#?}"
    );
    let Some(dev) = first else {
        eprintln!("note: this host has no PCI device; the driver and group checks were not run");
        return;
    };
    let sys = PathBuf::from("/sys/bus/pci/devices").join(&dev);
    let driver = std::fs::read_link(sys.join("driver"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
    let bound = match driver.as_deref() {
        Some("vfio-pci") => None,
        Some(d) => Some(format!("FAIL: {dev} is bound to {d}, not vfio-pci: ")),
        None => Some(format!("FAIL: {dev} has no driver, not vfio-pci: ")),
    };
    if let Some(want) = bound {
        assert!(
            fails.iter().any(|l| l.starts_with(&want)),
            "{want:?}: {o:#?}"
        );
    }
    if !sys.join("iommu_group").exists() {
        let want = format!(
            "FAIL: {dev} has no IOMMU group (/sys/bus/pci/devices/{dev}/iommu_group is missing)"
        );
        assert!(
            fails.iter().any(|l| l.starts_with(&want)),
            "{want:?}: {o:#?}"
        );
    }
}

/// An unprivileged user (no CAP_IPC_LOCK) whose locked-memory limit is below guest RAM.
#[test]
fn doctor_memlock_as_a_user() {
    let o = run_cmd(
        Command::new("prlimit").args([
            "--memlock=8388608:8388608",
            "setpriv",
            "--reuid=64999",
            "--regid=64999",
            "--clear-groups",
            vfiovm_bin().to_str().unwrap(),
            "doctor",
            "--memory",
            "1G",
        ]),
        None,
        Duration::from_secs(30),
    );
    o.expect_status(STATUS_ERROR);
    assert!(
        fail_lines(&o).contains(
            &"FAIL: RLIMIT_MEMLOCK is 8 MiB (soft) / 8 MiB (hard), below the 1 GiB of guest RAM that is pinned for DMA: raise it before starting vfiovm with `ulimit -l unlimited` as root or `prlimit --pid PID --memlock=unlimited:unlimited`, or for good with `@group - memlock unlimited` in /etc/security/limits.conf or LimitMEMLOCK=infinity in the systemd unit; a process with CAP_IPC_LOCK (root) is not limited"
        ),
        "{o:#?}"
    );
}

// ---- how the VM stopped ------------------------------------------------------------------------

/// The line and status of every way the VM stops that a test guest cannot trigger on demand
/// (the exit handler's mapping from KVM exits is tested with synthetic exits in vmm/src/vcpu.rs).
#[test]
fn stop_lines_and_statuses() {
    use devices::GuestExit;
    let cases = [
        (
            ExitReason::TripleFault { cpu: 1 },
            "guest crashed: triple fault on vCPU 1 (-v dumps the registers)",
            STATUS_GUEST_CRASH,
        ),
        (
            ExitReason::InternalError {
                cpu: 0,
                suberror: 3,
                rip: None,
            },
            "guest crashed: KVM internal error on vCPU 0, suberror 3 (-v dumps the registers)",
            STATUS_GUEST_CRASH,
        ),
        (
            ExitReason::FirmwareUnsupported {
                cpu: 0,
                rip: 0xfffc_ed45,
            },
            "this host's KVM cannot run the firmware: KVM_EXIT_INTERNAL_ERROR (emulation failure) on vCPU 0 at 0xfffced45, inside the firmware's own code; this is what a nested or paravirtualized KVM without full VMX/SVM does: run on a host with hardware virtualization (VMX or SVM; bare metal, or a nested guest given vmx/svm, like the rig)",
            STATUS_ERROR,
        ),
        (
            ExitReason::FailEntry { cpu: 0, reason: 0x21 },
            "guest crashed: VM entry failed on vCPU 0, hardware reason 0x21 (-v dumps the registers)",
            STATUS_GUEST_CRASH,
        ),
        (
            ExitReason::GuestCrash {
                cpu: 2,
                what: "KVM reported a guest crash".into(),
            },
            "guest crashed on vCPU 2: KVM reported a guest crash",
            STATUS_GUEST_CRASH,
        ),
        (
            ExitReason::VcpuError {
                cpu: 0,
                error: "KVM_RUN failed: Bad address (os error 14)".into(),
            },
            "vCPU 0 failed: KVM_RUN failed: Bad address (os error 14) (a VMM or KVM problem, not the guest's: run with -v and report the output)",
            STATUS_ERROR,
        ),
        (
            ExitReason::Signal(libc::SIGTERM),
            "stopped by signal 15; the VM was shut down",
            143,
        ),
        (
            ExitReason::Guest(GuestExit::Panicked),
            "guest kernel panic, reported by its pvpanic driver; the console above shows why",
            STATUS_KERNEL_PANIC,
        ),
        (
            ExitReason::KernelPanic {
                evidence: PanicEvidence::ConsoleLine,
                then: Some(Box::new(ExitReason::Guest(GuestExit::Reset))),
            },
            "guest kernel panic: it printed 'Kernel panic - not syncing', and then reset; the console above (and the verdict's console_tail) shows why",
            STATUS_KERNEL_PANIC,
        ),
        (
            ExitReason::KernelPanic {
                evidence: PanicEvidence::ConsoleLine,
                then: None,
            },
            "guest kernel panic: it printed 'Kernel panic - not syncing', and then stayed quiet for 5 s; the console above (and the verdict's console_tail) shows why",
            STATUS_KERNEL_PANIC,
        ),
        (
            ExitReason::KernelPanic {
                evidence: PanicEvidence::CrashLoaded,
                then: Some(Box::new(ExitReason::TripleFault { cpu: 0 })),
            },
            "guest kernel panic: its pvpanic driver reported a panic handed to its crash kernel, and then: guest crashed: triple fault on vCPU 0 (-v dumps the registers); the console above (and the verdict's console_tail) shows why",
            STATUS_KERNEL_PANIC,
        ),
        (
            ExitReason::Timeout {
                limit: Duration::from_secs(600),
            },
            "timed out: the run took longer than --timeout 600 s and was stopped (-v dumps the registers); raise --timeout if it needs longer",
            STATUS_TIMEOUT,
        ),
        (
            ExitReason::BootTimeout {
                limit: Duration::from_millis(1500),
            },
            "boot timed out: the guest's init did not report to the runner port within --boot-timeout 1.5 s; check the console above (did the kernel boot and find its init?), or raise --boot-timeout",
            STATUS_BOOT_TIMEOUT,
        ),
        (
            ExitReason::Stall {
                limit: Duration::from_secs(30),
            },
            "guest stalled: no console output and no exit to the VMM for --stall-timeout 30 s (every vCPU's registers are above); raise --stall-timeout if the guest computes silently for longer",
            STATUS_STALL,
        ),
    ];
    for (reason, line, status) in cases {
        assert_eq!(reason.complaint().as_deref(), Some(line), "{reason:?}");
        assert_eq!(reason.status(), status, "{reason:?}");
    }
    assert_eq!(ExitReason::Guest(GuestExit::Reset).complaint(), None);
    // The command's own status: nothing on stderr, the status exactly.
    for n in [0u8, 1, 7, 255] {
        let r = ExitReason::Guest(GuestExit::CommandExited(n));
        assert_eq!((r.complaint(), r.status()), (None, i32::from(n)));
    }
    assert_eq!(
        (
            STATUS_KERNEL_PANIC,
            STATUS_STALL,
            STATUS_BOOT_TIMEOUT,
            STATUS_TIMEOUT
        ),
        (6, 120, 122, 124)
    );
}

// ---- paths only the VFIO rig or a VMM bug reaches ----------------------------------------------

fn kvm_error(errno: i32) -> kvm_ioctls::Error {
    kvm_ioctls::Error::new(errno)
}

/// Messages of paths that need real VFIO (the nested rig, docs/rig.md) or an invariant of the
/// VMM broken: pinned here so their wording (cause and fix) does not drift unseen.
#[test]
fn messages_of_paths_no_host_test_reaches() {
    use vfiovm::passthrough::PassthroughError;
    use vfiovm::platform::PlatformError;
    let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
    let cases: Vec<(String, &str)> = vec![
        (
            vfiovm::memory::MemoryError::Memfd {
                size: 1024,
                backing: vfiovm::memory::Backing::Shared,
                err: io(),
            }
            .to_string(),
            "cannot create the memfd for 1024 MiB of guest RAM (shared memfd): No such file or directory (os error 2)",
        ),
        (
            vfiovm::memory::MemoryError::Populate {
                backing: vfiovm::memory::Backing::HugeTlb(2 << 20),
                err: std::io::Error::from_raw_os_error(libc::ENOMEM),
            }
            .to_string(),
            "cannot populate guest RAM (hugetlbfs 2 MiB pages): Cannot allocate memory (os error 12) (the host ran out of free memory or huge pages: ask for less --memory or free some)",
        ),
        (
            PassthroughError::KvmVfio(devices::kvm::KvmVfioError {
                group: 26,
                source: kvm_error(libc::EINVAL),
            })
            .to_string(),
            "cannot tell KVM about VFIO group 26: Invalid argument (os error 22) (is the kvm module new enough and vfio loaded?)",
        ),
        (
            PassthroughError::ResetRequired {
                bdf: "0000:06:0d.0".into(),
                why: "reset is disabled on the host (0000:06:0d.0's reset_method is empty): as root, `echo default > /sys/bus/pci/devices/0000:06:0d.0/reset_method` gives the kernel's methods back".into(),
            }
            .to_string(),
            "0000:06:0d.0: reset=required, but vfiovm cannot reset this device: reset is disabled on the host (0000:06:0d.0's reset_method is empty): as root, `echo default > /sys/bus/pci/devices/0000:06:0d.0/reset_method` gives the kernel's methods back (or drop reset=required to pass it through unreset)",
        ),
        (
            PassthroughError::Rom {
                bdf: "0000:06:0d.0".into(),
                path: "/tmp/vbios.rom".into(),
                err: io(),
            }
            .to_string(),
            "cannot read the ROM file '/tmp/vbios.rom' for 0000:06:0d.0: No such file or directory (os error 2)",
        ),
        (
            PassthroughError::Pci {
                bdf: "0000:06:0d.0".into(),
                err: "no free slot on bus 0".into(),
            }
            .to_string(),
            "0000:06:0d.0: cannot put it on the guest's PCI bus: no free slot on bus 0",
        ),
        (
            PassthroughError::Internal("a group just added has no fd").to_string(),
            "internal error: a group just added has no fd",
        ),
        (
            PassthroughError::Device {
                bdf: "0000:06:0d.0".into(),
                err: devices::vfio::VfioPciError::Declare {
                    name: "0000:06:0d.0".into(),
                    bar: 1,
                    source: devices::pci::config::ConfigError::Bar {
                        index: 1,
                        source: devices::pci::bar::BarError::InUse { index: 1 },
                    },
                },
            }
            .to_string(),
            "0000:06:0d.0: 0000:06:0d.0: declaring BAR 1: invalid BAR 1: BAR register 1 is already in use",
        ),
        (
            PlatformError::Irqfd {
                what: "COM1",
                gsi: 4,
                err: kvm_error(libc::ENOMEM),
            }
            .to_string(),
            "cannot route COM1 to GSI 4: Cannot allocate memory (os error 12)",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}

// ---- the table ---------------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ has a parent")
        .to_path_buf()
}

/// One row of the error table.
#[derive(Debug)]
struct Row {
    line: usize,
    cells: Vec<String>,
}

/// Splits a Markdown table row on `|`, keeping `\|` inside cells (as `|`).
fn cells(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn table_rows(text: &str) -> Vec<Row> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("| E-"))
        .map(|(i, l)| Row {
            line: i + 1,
            cells: cells(l),
        })
        .collect()
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether `source` has `fn name(` marked `#[test]` (attributes and doc comments may sit in
/// between).
fn has_test_fn(source: &str, name: &str) -> bool {
    let lines: Vec<&str> = source.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        let t = l.trim_start();
        if !(t.starts_with(&format!("fn {name}(")) || t.starts_with(&format!("pub fn {name}("))) {
            return false;
        }
        lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
            .any(|l| l == "#[test]")
    })
}

/// Whether the rig's vfiovm payload has a check called `name`.
fn rig_has_check(name: &str) -> bool {
    let dir = repo().join("resources/rig/payload-vfiovm");
    let mut files = vec![dir.join("run")];
    if let Ok(d) = std::fs::read_dir(dir.join("checks")) {
        files.extend(d.flatten().map(|e| e.path()));
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|s| {
            s.lines().any(|l| {
                let t = l.trim_start();
                t.starts_with(&format!("expect_error {name} "))
                    || t.starts_with(&format!("expect {name} "))
                    || t.starts_with(&format!("init_fails {name} "))
                    || t.contains(&format!("ok \"{name} ("))
            })
        })
    })
}

/// The literal pieces of a documented message: the text between `{placeholders}`, `…` and
/// ` / ` (alternatives), cut further at `: `, `; `, `, ` and ` (`, trimmed.
fn literal_pieces(message: &str) -> Vec<String> {
    let mut coarse = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in message.chars() {
        match c {
            '{' => {
                depth += 1;
                coarse.push(std::mem::take(&mut cur));
            }
            '}' if depth > 0 => depth -= 1,
            '…' => coarse.push(std::mem::take(&mut cur)),
            _ if depth == 0 => cur.push(c),
            _ => {}
        }
    }
    coarse.push(cur);
    let mut pieces = Vec::new();
    for c in coarse {
        for alt in c.split(" / ") {
            let mut parts = vec![alt.to_string()];
            for sep in [": ", "; ", ", ", " ("] {
                parts = parts
                    .iter()
                    .flat_map(|p| p.split(sep).map(str::to_string).collect::<Vec<_>>())
                    .collect();
            }
            pieces.extend(parts.into_iter().map(|p| p.trim().to_string()));
        }
    }
    pieces.retain(|p| !p.is_empty());
    pieces
}

/// Whether the source still prints `message`: at least half of its literal pieces of 10 or more
/// characters occur in `corpus` (computed parts, such as a limit's value, may differ); a message
/// without such pieces must have its longest piece there.
fn message_in_source(message: &str, corpus: &str) -> Result<(), String> {
    let pieces = literal_pieces(message);
    let long: Vec<&String> = pieces.iter().filter(|p| p.len() >= 10).collect();
    if long.is_empty() {
        let longest = pieces
            .iter()
            .max_by_key(|p| p.len())
            .cloned()
            .unwrap_or_default();
        return if longest.len() >= 3 && corpus.contains(&longest) {
            Ok(())
        } else {
            Err(format!("{longest:?} occurs nowhere in the source"))
        };
    }
    let missing: Vec<&&String> = long
        .iter()
        .filter(|p| !corpus.contains(p.as_str()))
        .collect();
    if missing.len() * 2 > long.len() {
        return Err(format!("{missing:?} occur nowhere in the source"));
    }
    Ok(())
}

/// The text of Rust sources with string continuations (`\` at a line's end) joined and
/// backticks dropped, so messages can be looked up as they print.
fn normalized(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut join = false;
    for line in source.lines() {
        let line = if join { line.trim_start() } else { line };
        match line.strip_suffix('\\') {
            Some(head) => {
                out.push_str(head);
                join = true;
            }
            None => {
                out.push_str(line);
                out.push('\n');
                join = false;
            }
        }
    }
    out.replace('`', "")
}

/// docs/errors.md: every row has an ID, a message that the source still prints, a cause, a fix,
/// a documented status and tests that exist — `path::fn` naming a `#[test]` function in that
/// file, or `rig:check` naming a check of the nested rig's vfiovm payload.
#[test]
fn the_error_table_names_real_tests() {
    let root = repo();
    let doc = std::fs::read_to_string(root.join("docs/errors.md")).expect("docs/errors.md");
    let rows = table_rows(&doc);
    assert!(rows.len() >= 60, "only {} rows in the table", rows.len());

    let mut files = Vec::new();
    for d in ["arch/src", "devices/src", "vmm/src", "tests"] {
        rust_files(&root.join(d), &mut files);
    }
    let corpus: String = files
        .iter()
        .map(|f| normalized(&std::fs::read_to_string(f).unwrap()))
        .collect::<Vec<_>>()
        .join("\n");

    let mut ids = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    for row in &rows {
        let at = format!("docs/errors.md:{}", row.line);
        let [id, message, cause, fix, status, tests] = row.cells.as_slice() else {
            problems.push(format!("{at}: expected 6 cells, got {:?}", row.cells));
            continue;
        };
        if !ids.insert(id.clone()) {
            problems.push(format!("{at}: {id} is listed twice"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        {
            problems.push(format!("{at}: {id} is not like E-UPPER-CASE"));
        }
        if cause.is_empty() || fix.is_empty() {
            problems.push(format!("{at}: {id} has no cause or no fix"));
        }
        // "the run's own": a message printed after the stop line that leaves the run's status.
        let statuses = [
            "2",
            "4",
            "6",
            "118",
            "120",
            "122",
            "124",
            "128+N",
            "the run's own",
        ];
        if !statuses.contains(&status.as_str()) {
            problems.push(format!(
                "{at}: {id} has status {status:?}, not one of {statuses:?}"
            ));
        }
        if let Err(e) = message_in_source(&message.replace('`', ""), &corpus) {
            problems.push(format!("{at}: {id}: the message's {e}"));
        }
        // "*(message)*" marks a test that pins the wording only.
        let tests = tests.replace("*(message)*", "");
        let refs: Vec<&str> = tests.split(',').map(str::trim).collect();
        if refs.iter().all(|r| r.is_empty()) {
            problems.push(format!("{at}: {id} names no test"));
        }
        for r in refs {
            let r = r.trim_matches('`');
            if let Some(check) = r.strip_prefix("rig:") {
                if !rig_has_check(check) {
                    problems.push(format!("{at}: {id}: no rig check {check:?}"));
                }
                continue;
            }
            let Some((file, name)) = r.rsplit_once("::") else {
                problems.push(format!("{at}: {id}: {r:?} is not path::fn or rig:check"));
                continue;
            };
            match std::fs::read_to_string(root.join(file)) {
                Ok(src) if has_test_fn(&src, name) => {}
                Ok(_) => problems.push(format!("{at}: {id}: no #[test] fn {name} in {file}")),
                Err(e) => problems.push(format!("{at}: {id}: {file}: {e}")),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself: it finds tests that exist and refuses ones that do not.
#[test]
fn the_table_checker_tells_real_tests_from_missing_ones() {
    let src = "#[test]\nfn a() {}\n/// doc\n#[test]\n#[ignore]\nfn b() {}\nfn helper() {}\n";
    assert!(has_test_fn(src, "a"));
    assert!(has_test_fn(src, "b"));
    assert!(!has_test_fn(src, "helper"));
    assert!(!has_test_fn(src, "c"));
    assert_eq!(
        cells(r"| E-X | a \| b | c | d | 2 | t.rs::f |"),
        ["E-X", "a | b", "c", "d", "2", "t.rs::f"]
    );
    assert_eq!(
        literal_pieces("cannot open {kernel|initramfs} '{path}': {why}"),
        ["cannot open", "'", "'"]
    );
    assert_eq!(
        literal_pieces("no IOMMU is active (/sys/kernel/iommu_groups is {state}): enable … a / b"),
        [
            "no IOMMU is active",
            "/sys/kernel/iommu_groups is",
            ")",
            "enable",
            "a",
            "b"
        ]
    );
    let corpus = normalized("#[error(\"a long message \\\n      that continues: {x}\")]");
    assert!(message_in_source("a long message that continues: {x}", &corpus).is_ok());
    assert!(message_in_source("a long message that was reworded: {x}", &corpus).is_err());
    assert!(message_in_source("PCI: {why}", "#[error(\"PCI: {0}\")]").is_ok());
    assert!(rig_has_check("vfio-busy"));
    assert!(!rig_has_check("no-such-check"));
}
