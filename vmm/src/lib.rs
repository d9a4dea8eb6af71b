//! vfiovm: a minimal KVM virtual machine monitor whose purpose is PCI passthrough through VFIO.
//!
//! The binary (`src/main.rs`) is a thin shell over [`run_main`]: parse the command line, build
//! the VM ([`vm::Vm::build`]), run it ([`vm::Vm::run`]) and turn why it stopped into the process
//! exit status ([`exit::ExitReason::status`]).
#![deny(missing_docs)]

pub mod config;
pub mod event_loop;
pub mod exec;
pub mod exit;
pub mod firmware;
pub mod hyperv;
pub mod logger;
pub mod memory;
pub mod passthrough;
pub mod platform;
pub mod runner;
pub mod seccomp;
pub mod terminal;
pub mod vcpu;
pub mod virtio;
pub mod vm;

use std::time::Instant;

use config::Command;

/// Runs the program with `args` (without the program name); returns the exit status.
pub fn run_main<I: IntoIterator<Item = String>>(args: I) -> i32 {
    // What --timeout and --boot-timeout count from, and the verdict's times.
    let start = Instant::now();
    let command = match config::parse_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vfiovm: error: {e}");
            return exit::STATUS_ERROR;
        }
    };
    let (config, sandbox) = match command {
        Command::Help => {
            print!("{}", config::HELP);
            return 0;
        }
        Command::Doctor {
            devices,
            memory,
            ram,
        } => {
            let more: Vec<Result<String, String>> = memory
                .and_then(|size| memory::doctor_line(size, &ram))
                .map(|r| r.map_err(|e| e.to_string()))
                .into_iter()
                .collect();
            let (report, ok) =
                devices::vfio::host::doctor_and(&Default::default(), &devices, memory, &more);
            print!("{report}");
            return if ok { 0 } else { exit::STATUS_ERROR };
        }
        Command::Version => {
            println!("vfiovm {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Command::Run { vm, sandbox } => (*vm, sandbox),
    };
    // before the first thread (guest RAM population, device I/O threads, vCPUs)
    seccomp::malloc_in_one_arena();
    logger::init(logger::level_for(
        config.verbosity,
        std::env::var("VFIOVM_LOG").ok().as_deref(),
    ));
    let sandbox_user = sandbox.user;
    // Compiled before the VM is built, so a broken filter costs no KVM VM.
    let sandbox = match seccomp::Sandbox::new(&sandbox) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("vfiovm: error: {e}");
            return exit::STATUS_ERROR;
        }
    };
    // Created before the VM, so a verdict path that cannot work fails before any guest runs
    // (and no file needs opening under the seccomp filter); from here on every run ends with a
    // verdict, a failed build included.
    let verdict = match config
        .runner
        .verdict
        .as_deref()
        .map(runner::VerdictFile::create)
    {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            eprintln!("vfiovm: error: {e}");
            return exit::STATUS_ERROR;
        }
    };
    let finish = |verdict: Option<runner::VerdictFile>, v: runner::Verdict| -> i32 {
        if let Some(f) = verdict {
            if let Err(e) = f.finish(&v) {
                eprintln!("vfiovm: error: {e}");
            }
        }
        v.status
    };
    let error = |verdict, message: String| -> i32 {
        eprintln!("vfiovm: error: {message}");
        finish(
            verdict,
            runner::Verdict::of_error(message, exit::STATUS_ERROR, start, None, Vec::new()),
        )
    };
    if let (Some(exec), Some(kernel)) = (&config.exec, &config.kernel) {
        if exec.save.is_some() {
            return match exec::save_initramfs(exec, &config.shares, kernel) {
                Ok(()) => 0,
                Err(e) => error(verdict, e),
            };
        }
    }
    virtio::raise_fd_limit_for_shares(&config);
    let t0 = Instant::now();
    let mut vm = match vm::Vm::build(&config) {
        Ok(vm) => vm,
        Err(e) => return error(verdict, e.to_string()),
    };
    vm.set_start(start);
    if let Some((uid, gid)) = sandbox_user {
        if let Err(e) = seccomp::drop_privileges(uid, gid) {
            return error(verdict, e.to_string());
        }
    }
    let exit_state = vm.exit_state().clone();
    let tail = vm.console_tail().clone();
    let t1 = Instant::now();
    // From here on this thread runs under the VMM filter (unless --no-seccomp).
    let result = vm.run_sandboxed(Some(sandbox));
    let t2 = Instant::now();
    drop(vm);
    let t3 = Instant::now();
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    log::info!(
        "timing: build {:.2} ms, run {:.2} ms, teardown {:.2} ms",
        ms(t0, t1),
        ms(t1, t2),
        ms(t2, t3)
    );
    let progress = exit_state.progress();
    match result {
        Ok(reason) => {
            if config.exec.is_some() && reason.cause() != "command-exited" {
                // The kernel's console was kept off stdout: show its end, which says why.
                for line in tail.lines() {
                    eprintln!("guest: {line}");
                }
            }
            if let Some(line) = reason.complaint() {
                eprintln!("vfiovm: {line}");
            }
            log::info!("stopped: {reason:?}; exit status {}", reason.status());
            let v = runner::Verdict::of_run(&reason, start, t2, &progress, tail.lines());
            finish(verdict, v)
        }
        Err(e) => {
            let message = e.to_string();
            eprintln!("vfiovm: error: {message}");
            let v = runner::Verdict::of_error(
                message,
                exit::STATUS_ERROR,
                start,
                Some(&progress),
                tail.lines(),
            );
            finish(verdict, v)
        }
    }
}
