//! vfiovm: a minimal KVM virtual machine monitor whose purpose is PCI passthrough through VFIO.
//!
//! The binary (`src/main.rs`) is a thin shell over [`run_main`]: parse the command line, build
//! the VM ([`vm::Vm::build`]), run it ([`vm::Vm::run`]) and turn why it stopped into the process
//! exit status ([`exit::ExitReason::status`]).
#![deny(missing_docs)]

pub mod config;
pub mod event_loop;
pub mod exit;
pub mod firmware;
pub mod logger;
pub mod memory;
pub mod passthrough;
pub mod platform;
pub mod seccomp;
pub mod terminal;
pub mod vcpu;
pub mod virtio;
pub mod vm;

use std::time::Instant;

use config::Command;

/// Runs the program with `args` (without the program name); returns the exit status.
pub fn run_main<I: IntoIterator<Item = String>>(args: I) -> i32 {
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
        Command::Run { vm, sandbox } => (vm, sandbox),
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
    let t0 = Instant::now();
    let mut vm = match vm::Vm::build(&config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("vfiovm: error: {e}");
            return exit::STATUS_ERROR;
        }
    };
    if let Some((uid, gid)) = sandbox_user {
        if let Err(e) = seccomp::drop_privileges(uid, gid) {
            eprintln!("vfiovm: error: {e}");
            return exit::STATUS_ERROR;
        }
    }
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
    match result {
        Ok(reason) => {
            if let Some(line) = reason.complaint() {
                eprintln!("vfiovm: {line}");
            }
            log::info!("stopped: {reason:?}; exit status {}", reason.status());
            reason.status()
        }
        Err(e) => {
            eprintln!("vfiovm: error: {e}");
            exit::STATUS_ERROR
        }
    }
}
