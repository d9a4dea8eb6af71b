//! Building a VM from a [`VmConfig`] and running it to its end.
//!
//! Order matters and is the same on every path: inputs are checked (files open, sizes sane)
//! before KVM is touched; then the VM, its irqchip and PIT, guest RAM, the boot image and
//! firmware tables, the devices, and the vCPUs. Nothing the guest can reach exists before it is
//! fully set up. On the way out, vCPUs are stopped and joined before devices are released and
//! before guest RAM is unmapped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch::boot::{self, BootInfo, LoadedKernel};
use arch::regs::{self, EntryMode};
use kvm_bindings::{
    kvm_irqchip, kvm_pit_config, kvm_pit_state2, CpuId, Msrs, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::config::VmConfig;
use crate::event_loop::{ConsoleInput, ExitWatcher, SignalWatcher};
use crate::exit::{ExitReason, ExitState};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::platform::{self, Platform, PlatformError};
use crate::vcpu::{self, IoBuses, VcpuHandle};
use devices::GuestExit;
use vm_memory::GuestMemoryBackend;

/// TSS and identity-map pages KVM needs below 4 GiB on Intel hosts, out of the way of the MMIO
/// hole's devices and below any firmware image (where QEMU puts them).
const KVM_TSS_ADDRESS: usize = arch::firmware::KVM_TSS_ADDRESS as usize;
const KVM_IDENTITY_MAP_ADDRESS: u64 = arch::firmware::KVM_IDENTITY_MAP_ADDRESS;

/// Errors from building or running a VM. Each names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `--exec`'s initramfs could not be made.
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    /// An input file cannot be opened.
    #[error("cannot open {what} '{path}': {err}")]
    OpenFile {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// An input path is a directory or otherwise not a file.
    #[error("{what} '{path}' is not a regular file: give the path of the image file itself")]
    NotAFile {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(String),
    /// Too many vCPUs for this host.
    #[error("--cpus {asked} is more than this host's KVM allows ({max}): ask for fewer")]
    TooManyCpus {
        /// Asked for.
        asked: u32,
        /// KVM's limit.
        max: u32,
    },
    /// A KVM call failed while setting up the VM.
    #[error("KVM setup failed ({what}): {err}{}", errno_hint(.err.errno()))]
    KvmSetup {
        /// The step.
        what: &'static str,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Hyper-V enlightenments (`--hyperv`).
    #[error(transparent)]
    Hyperv(#[from] crate::hyperv::HypervError),
    /// UEFI firmware and fw_cfg.
    #[error(transparent)]
    Uefi(#[from] crate::firmware::FirmwareError),
    /// Loading the kernel or writing boot information.
    #[error("{0}")]
    Boot(#[from] boot::BootError),
    /// Writing the vCPU boot state.
    #[error("{0}")]
    Regs(#[from] regs::RegsError),
    /// Writing firmware tables.
    #[error("cannot write the firmware tables: {0}")]
    Firmware(String),
    /// Devices.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// A `--share` directory.
    #[error(transparent)]
    Share(#[from] crate::virtio::ShareError),
    /// PCI passthrough.
    #[error(transparent)]
    Passthrough(#[from] crate::passthrough::PassthroughError),
    /// The event loop.
    #[error("cannot set up the event loop (signals, epoll): {0}")]
    EventLoop(String),
    /// Installing the seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// Starting a vCPU thread.
    #[error("cannot start vCPU thread {0}: {1} (the limit on processes and threads, `ulimit -u`, or on memory may be reached: raise it or ask for fewer --cpus)")]
    VcpuThread(u32, std::io::Error),
    /// A reboot in place failed half-way; the VM cannot go on.
    #[error("the guest reset and the VM could not restart in place ({0}); use --on-reset exit to end the run at a guest reset instead")]
    Reboot(String),
}

/// What to do about a KVM call that failed with `errno`, for the message.
fn errno_hint(errno: i32) -> &'static str {
    match errno {
        libc::EMFILE | libc::ENFILE => {
            " (too many open files: raise the limit with `ulimit -n` or close some)"
        }
        libc::ENOMEM => " (the host is short of memory: ask for less --memory or fewer --cpus)",
        _ => " (this host's KVM refused it: run with -v and report the output)",
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |err| VmError::KvmSetup { what, err }
}

fn open_input(what: &'static str, path: &Path) -> Result<File, VmError> {
    let f = File::open(path).map_err(|err| VmError::OpenFile {
        what,
        path: path.to_path_buf(),
        err,
    })?;
    match f.metadata() {
        Ok(m) if m.is_file() => Ok(f),
        _ => Err(VmError::NotAFile {
            what,
            path: path.to_path_buf(),
        }),
    }
}

fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| {
        VmError::Kvm(match e.errno() {
            libc::ENOENT => "it does not exist: enable virtualization (VT-x/AMD-V) in the firmware and load the kvm_intel or kvm_amd module".into(),
            libc::EACCES | libc::EPERM => "permission denied: add your user to the 'kvm' group (then log in again) or run as root".into(),
            errno => format!("{e}{}", errno_hint(errno)),
        })
    })
}

/// A VM ready to run. Field order is drop order: vCPU fds and devices go before the VM fd,
/// and the VM fd before guest RAM.
pub struct Vm {
    vcpus: Vec<VcpuFd>,
    platform: Platform,
    buses: IoBuses,
    exit: Arc<ExitState>,
    signals: Option<SignalWatcher>,
    // After the devices (in `platform` and `buses`), before the VM fd and guest RAM.
    passthrough: Option<crate::passthrough::Passthrough>,
    vm: Arc<VmFd>,
    _kvm: Kvm,
    // After the VM fd: KVM maps it.
    _firmware_code: Option<crate::firmware::CodeMapping>,
    /// The firmware's CODE range `[start, end)`, to tell an emulation failure in it apart.
    firmware_code_range: Option<(u64, u64)>,
    mem: GuestMemory,
    /// What a guest reset does, and what a reboot in place needs.
    on_reset: crate::config::OnReset,
    reboot: RebootState,
    dump_on_crash: bool,
    runner: crate::runner::RunnerConfig,
    /// What the run's limits count from (vfiovm's start; [`Vm::set_start`]).
    start: std::time::Instant,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .field("buses", &self.buses)
            .field("passthrough", &self.passthrough)
            .finish()
    }
}

impl Vm {
    /// Builds the VM `config` describes.
    pub fn build(config: &VmConfig) -> Result<Vm, VmError> {
        // Inputs first: a typo in a path should not cost a KVM VM.
        let mut kernel_file = config
            .kernel
            .as_deref()
            .map(|p| open_input("kernel", p))
            .transpose()?;
        let mut initramfs_file = config
            .initramfs
            .as_deref()
            .map(|p| open_input("initramfs", p))
            .transpose()?;
        if let (Some(exec), Some(kernel)) = (&config.exec, kernel_file.as_mut()) {
            initramfs_file = Some(crate::exec::initramfs(
                exec,
                &config.shares,
                kernel,
                initramfs_file.as_mut(),
            )?);
            if let Some(path) = config.kernel.as_deref() {
                if let Some((vmlinux, f)) = crate::exec::pick_vmlinux(path, kernel, &exec.vmlinux)?
                {
                    log::info!(
                        "--exec: booting {}, the same build as {} uncompressed (the guest does not decompress itself; --vmlinux off boots the bzImage)",
                        vmlinux.display(),
                        path.display()
                    );
                    *kernel = f;
                }
            }
        }
        let firmware = config
            .firmware
            .as_ref()
            .map(crate::firmware::FirmwareImage::open)
            .transpose()?;
        crate::virtio::check_shares(config)?;

        let exit = Arc::new(ExitState::new().map_err(|e| VmError::EventLoop(e.to_string()))?);
        // Block the stop signals before any thread starts, so every thread inherits the mask.
        let signals =
            SignalWatcher::new(exit.clone()).map_err(|e| VmError::EventLoop(e.to_string()))?;

        let kvm = open_kvm()?;
        let max = kvm.get_max_vcpus() as u32;
        if config.cpus > max {
            return Err(VmError::TooManyCpus {
                asked: config.cpus,
                max,
            });
        }
        // Before guest RAM: `--hyperv on` on a host without it should cost nothing. KVM is
        // asked only when the enlightenments are wanted (before 5.11 that takes a throwaway VM).
        let hyperv = if crate::hyperv::wanted(config) {
            let host = crate::hyperv::host_leaves(&kvm)?;
            crate::hyperv::decide(
                config,
                host.as_deref(),
                crate::hyperv::enforce_available(&kvm),
            )?
        } else {
            None
        };
        let mem = memory::create_guest_memory(config.memory, &config.ram)?;
        log::info!(
            "guest RAM: {} MiB ({})",
            config.memory >> 20,
            mem.iter()
                .next()
                .map(|r| r.backing().to_string())
                .unwrap_or_default()
        );
        // Passthrough populates (in parallel) as part of its DMA setup, timed there.
        if config.ram.prefault && config.devices.is_empty() {
            memory::populate(&mem, config.ram.threads)?;
        }
        // Before the VM fd, so that on an error path it is unmapped after the fd is closed.
        let firmware_code = firmware
            .as_ref()
            .map(crate::firmware::CodeMapping::new)
            .transpose()?;
        let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        // Before any vCPU exists, and below the firmware's range.
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        vm.create_pit2(kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        })
        .map_err(kvm_err("KVM_CREATE_PIT2"))?;
        // Their power-on state, which a reboot in place puts back.
        let irqchips = [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ]
        .into_iter()
        .map(|chip_id| {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map(|()| chip)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        let pit = vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?;
        let t = std::time::Instant::now();
        let mut ram_slots = memory::register_with_kvm(&vm, &mem)?;
        let slots_time = t.elapsed();
        let firmware_code_range = firmware
            .as_ref()
            .map(|f| (f.layout.code_base, arch::firmware::FIRMWARE_END));
        if let (Some(code), Some(f)) = (&firmware_code, &firmware) {
            code.map(&kvm, &vm, ram_slots)?;
            ram_slots += 1;
            crate::firmware::log_layout(f);
        }
        let vm = Arc::new(vm);

        // One KVM_GET_SUPPORTED_CPUID serves the address width and every vCPU's table.
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let phys_bits = guest_phys_bits(&supported_cpuid);

        // The boot image and what it reads: a kernel booted directly, or the firmware (which
        // reads the kernel, if any, from fw_cfg).
        let entry = match (&mut kernel_file, &firmware) {
            (Some(kernel_file), None) => Some(load_direct(
                &mem,
                config,
                kernel_file,
                initramfs_file.as_mut(),
                phys_bits,
            )?),
            _ => None,
        };
        let fw_cfg = crate::firmware::fw_cfg(&mem, config, phys_bits)?;
        // The variable store's array is also a read-only slot while the flash reads as an
        // array (devices::firmware::flash, "ROM device" mode): OVMF's reads of its variables
        // then cost no exit.
        let flash = firmware.map(|mut f| {
            let slot = crate::firmware::VarsSlot::new(vm.clone(), ram_slots, f.layout.vars_base);
            f.vars.set_array_mapping(Box::new(slot));
            ram_slots += 1;
            (f.vars, f.layout.vars_base)
        });

        let platform = Platform::new(
            &vm,
            &mem,
            config,
            exit.clone(),
            phys_bits,
            platform::FirmwareDevices { fw_cfg, flash },
        )?;
        let buses = platform.buses();
        let device_slots = Arc::new(devices::kvm::DeviceSlots::new(
            vm.clone(),
            ram_slots,
            kvm.get_nr_memslots() as u32,
        ));
        let vcpus = (0..config.cpus)
            .map(|id| {
                create_vcpu(
                    &vm,
                    supported_cpuid.clone(),
                    VcpuIdentity {
                        id,
                        count: config.cpus,
                        hyperv: hyperv.as_ref(),
                        hide_kvm: config.cpu.hide_kvm,
                    },
                    entry,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Passthrough last: nothing after it can fail, so an error never drops the VFIO
        // state before the devices that use it (Vm's field order is the teardown order).
        let passthrough = crate::passthrough::setup(
            &vm,
            &mem,
            config.memory,
            &config.ram,
            &platform,
            device_slots,
            &config.devices,
        )?;

        if config.firmware.is_some() {
            let sizes = passthrough.as_ref().map_or(&[][..], |p| p.bar64_sizes());
            if let Some(mb) = crate::firmware::pci_mmio64_mb(sizes) {
                let mut f = platform.fw_cfg().lock().unwrap_or_else(|e| e.into_inner());
                match f.add_file(
                    crate::firmware::PCI_MMIO64_MB_FILE,
                    mb.to_string().into_bytes(),
                ) {
                    Ok(_) => log::info!(
                        "firmware: 64-bit PCI aperture {mb} MiB for the passed-through BARs"
                    ),
                    Err(e) => log::warn!("firmware: cannot enlarge the 64-bit PCI aperture: {e}"),
                }
            }
        }
        log::info!(
            "timing: KVM_SET_USER_MEMORY_REGION {:.2} ms",
            slots_time.as_secs_f64() * 1e3
        );
        // A direct boot reboots by loading the same images again (from the descriptors opened
        // here: nothing is opened under the seccomp filter).
        let direct = match (config.on_reset, entry, kernel_file) {
            (crate::config::OnReset::Reboot, Some(_), Some(kernel)) => Some(DirectReload {
                config: config.clone(),
                kernel,
                initramfs: initramfs_file,
                phys_bits,
            }),
            _ => None,
        };
        Ok(Vm {
            vcpus,
            platform,
            buses,
            exit,
            signals: Some(signals),
            passthrough,
            vm,
            _kvm: kvm,
            _firmware_code: firmware_code,
            firmware_code_range,
            mem,
            on_reset: config.on_reset,
            reboot: RebootState {
                irqchips,
                pit,
                direct,
                boots: 1,
                prefaulted: config.ram.prefault,
            },
            dump_on_crash: config.verbosity > 0,
            runner: config.runner.clone(),
            start: std::time::Instant::now(),
        })
    }

    /// Runs the VM until the guest or the user stops it; returns why it stopped. Installs no
    /// seccomp filter (for embedders and in-process tests); the binary uses
    /// [`Vm::run_sandboxed`].
    pub fn run(&mut self) -> Result<ExitReason, VmError> {
        self.run_sandboxed(None)
    }

    /// Like [`Vm::run`]; with a `sandbox`, every vCPU thread and then this thread install their
    /// seccomp filters before the guest runs (see [`crate::seccomp`]). The filter stays on this
    /// thread for good, teardown included: call this last, from a thread that does nothing
    /// else afterwards but drop the VM and exit.
    pub fn run_sandboxed(
        &mut self,
        sandbox: Option<Arc<crate::seccomp::Sandbox>>,
    ) -> Result<ExitReason, VmError> {
        use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

        vcpu::install_kick_handler().map_err(|e| VmError::EventLoop(e.to_string()))?;
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().map_err(|e| VmError::EventLoop(e.to_string()))?;
        em.add_subscriber(Arc::new(Mutex::new(ExitWatcher(self.exit.clone()))));
        if let Some(s) = self.signals.take() {
            em.add_subscriber(Arc::new(Mutex::new(s)));
        }
        let console = self.platform.console_input();
        let raw_mode = console
            .as_ref()
            .and_then(|_| crate::terminal::RawMode::enter());
        if let Some(sink) = console {
            let tty = raw_mode.is_some();
            em.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
                libc::STDIN_FILENO,
                tty,
                sink,
                self.exit.clone(),
            ))));
        }

        // The virtio I/O threads confine themselves and may serve from here on.
        self.platform
            .device_gate()
            .open(sandbox.as_ref().and_then(|s| s.device_filters()));
        // Shared with the console's writer, so a vCPU blocked on a full stdout stops too.
        let stop = self.platform.stop_flag();
        let mut threads: Vec<VcpuHandle> = Vec::new();
        for (id, fd) in self.vcpus.drain(..).enumerate() {
            match vcpu::spawn_confined(
                id as u32,
                fd,
                self.buses.clone(),
                self.exit.clone(),
                stop.clone(),
                self.dump_on_crash,
                sandbox.clone(),
            ) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    stop.store(true, std::sync::atomic::Ordering::Release);
                    if let Some(s) = &sandbox {
                        s.release();
                    }
                    let _ = vcpu::stop_all(threads, &stop, Duration::from_secs(5));
                    return Err(VmError::VcpuThread(id as u32, e));
                }
            }
        }
        if let Some(s) = &sandbox {
            if let Err(e) = s.enter_vmm() {
                stop.store(true, std::sync::atomic::Ordering::Release);
                s.release();
                let _ = vcpu::stop_all(threads, &stop, Duration::from_secs(5));
                return Err(e.into());
            }
        }
        log::debug!("{} vCPU thread(s) running", threads.len());

        let tail = self.platform.console_tail().clone();
        let mut watch = crate::runner::Watchdog::new(&self.runner, self.start);
        let result = loop {
            if let Some(reason) = self.exit.reason() {
                // A reset after a kernel panic ends the run as the panic (below), so a guest
                // that panics and reboots is reported, not looped.
                let panicked = tail.panic_seen() || self.exit.progress().crash_loaded;
                if matches!(reason, ExitReason::Guest(GuestExit::Reset))
                    && self.on_reset == crate::config::OnReset::Reboot
                    && !panicked
                {
                    match self.reboot(&threads) {
                        // On to the event loop and the watch (signals, limits) before the
                        // latch is looked at again: a guest that resets at once is still
                        // stoppable.
                        Ok(()) => watch.restarted(std::time::Instant::now()),
                        Err(e) => break Err(e),
                    }
                } else {
                    break Ok(reason);
                }
            }
            // Woken by the stop latch, a signal, console input, or at the latest when the
            // watch wants to look again.
            let wake = watch.next_wake(std::time::Instant::now());
            let ms = i32::try_from(wake.as_millis().max(1)).unwrap_or(i32::MAX);
            if let Err(e) = em.run_with_timeout(ms) {
                if !matches!(&e, event_manager::Error::Epoll(err) if err.errno() == libc::EINTR) {
                    break Err(VmError::EventLoop(e.to_string()));
                }
            }
            let progress = threads.iter().map(VcpuHandle::exits).sum::<u64>() + tail.bytes();
            if let Some(reason) = watch.check(
                std::time::Instant::now(),
                progress,
                &self.exit.progress(),
                tail.panic_seen(),
            ) {
                log::info!("runner: {reason:?}");
                self.exit.request(reason);
            }
        };
        let crash_loaded = self.exit.progress().crash_loaded;
        let result = result.map(|r| self.explain(r).after_panic(tail.panic_seen(), crash_loaded));
        let exits = vcpu::stop_all(threads, &stop, Duration::from_secs(5));
        log::info!(
            "exits to userspace: {} port I/O, {} MMIO, {} other; {} of the port I/O to the console",
            exits.pio,
            exits.mmio,
            exits.other,
            exits.console
        );
        result
    }

    /// Restarts the VM in place after the guest's reset: every vCPU paused, the devices reset
    /// ([`Platform::system_reset`]: passed-through ones through VFIO), the in-kernel PIC,
    /// IOAPIC and PIT back to their state at creation, guest RAM cleared, a direct boot's
    /// images loaded again, every vCPU at its power-on state (a direct boot's vCPU 0 at the
    /// kernel's entry), the reset taken off the stop latch, the vCPUs resumed. The firmware's
    /// CODE mapping, its variable store's contents and the memory slots stay.
    fn reboot(&mut self, threads: &[VcpuHandle]) -> Result<(), VmError> {
        let t = std::time::Instant::now();
        let fail = |what: &str, e: &dyn std::fmt::Display| VmError::Reboot(format!("{what}: {e}"));
        for h in threads {
            h.pause().map_err(|e| fail("pausing the vCPUs", &e))?;
        }
        // On vCPU 0's thread: its sandbox allows what resetting a passed-through device does
        // (config writes through the VFIO device, VFIO resets, BAR slots moving), the VMM
        // thread's does not.
        let devices = self.platform.reset_handle();
        threads
            .first()
            .ok_or_else(|| VmError::Reboot("no vCPU".into()))?
            .on_paused(move |_| devices.run())
            .map_err(|e| fail("resetting the devices", &e))?;
        for chip in &self.reboot.irqchips {
            self.vm
                .set_irqchip(chip)
                .map_err(|e| fail("KVM_SET_IRQCHIP", &e))?;
        }
        self.vm
            .set_pit2(&self.reboot.pit)
            .map_err(|e| fail("KVM_SET_PIT2", &e))?;
        memory::clear(
            &self.mem,
            self.passthrough.is_some() || self.reboot.prefaulted,
        )
        .map_err(|e| fail("clearing guest RAM", &e))?;
        let entry = match &mut self.reboot.direct {
            Some(d) => Some(
                load_direct(
                    &self.mem,
                    &d.config,
                    &mut d.kernel,
                    d.initramfs.as_mut(),
                    d.phys_bits,
                )
                .map_err(|e| fail("loading the kernel again", &e))?,
            ),
            None => None,
        };
        for h in threads {
            h.reset().map_err(|e| fail("resetting a vCPU", &e))?;
            if let Some(entry) = entry {
                let id = h.id;
                h.on_paused(move |fd| {
                    direct_boot_state(fd, id, entry, vcpu::reset::reset_lapic(id))
                })
                .map_err(|e| fail("setting a vCPU's kernel entry", &e))?
                .map_err(|e| fail("setting a vCPU's kernel entry", &e))?;
            }
        }
        self.exit.clear_reset();
        for h in threads {
            h.resume().map_err(|e| fail("resuming the vCPUs", &e))?;
        }
        self.reboot.boots += 1;
        log::info!(
            "guest reset: the VM restarted in place in {:.1} ms (boot {}; --on-reset exit ends the run instead)",
            t.elapsed().as_secs_f64() * 1e3,
            self.reboot.boots
        );
        Ok(())
    }

    /// An emulation failure inside the firmware's read-only code is this host's KVM failing
    /// the firmware, not the guest crashing.
    fn explain(&self, reason: ExitReason) -> ExitReason {
        match (reason, self.firmware_code_range) {
            (
                ExitReason::InternalError {
                    cpu,
                    suberror: 1,
                    rip: Some(rip),
                },
                Some((start, end)),
            ) if (start..end).contains(&rip) => ExitReason::FirmwareUnsupported { cpu, rip },
            (r, _) => r,
        }
    }

    /// Sets what the run's time limits (`--timeout`, `--boot-timeout`) count from: by default
    /// the end of [`Vm::build`]; the binary gives its own start, so build time counts too.
    pub fn set_start(&mut self, start: std::time::Instant) {
        self.start = start;
    }

    /// The stop latch, with what the guest reported on the way (phases, pvpanic bit 1).
    pub fn exit_state(&self) -> &Arc<ExitState> {
        &self.exit
    }

    /// What the guest wrote to its consoles (the last lines, for the verdict).
    pub fn console_tail(&self) -> &Arc<devices::console_tail::ConsoleTail> {
        self.platform.console_tail()
    }

    /// Guest RAM (for tests and embedding).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The VM fd.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm
    }
}

/// The guest's physical address width, from KVM's supported CPUID leaf 0x8000_0008.
fn guest_phys_bits(cpuid: &CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map(|e| (e.eax & 0xff) as u8)
        .filter(|&b| (32..=52).contains(&b))
        .unwrap_or(36)
}

/// What a reboot in place puts back.
struct RebootState {
    /// The PIC master, PIC slave and IOAPIC as KVM created them.
    irqchips: Vec<kvm_irqchip>,
    /// The PIT as KVM created it.
    pit: kvm_pit_state2,
    /// A direct boot's images, with `--on-reset reboot`.
    direct: Option<DirectReload>,
    /// How many times the guest has started (1 before any reboot).
    boots: u32,
    /// Guest RAM was populated up front (`prefault=on`): a reboot keeps it populated.
    prefaulted: bool,
}

/// The images a direct boot loads again at a reboot.
struct DirectReload {
    config: VmConfig,
    kernel: File,
    initramfs: Option<File>,
    phys_bits: u8,
}

/// Where the boot vCPU starts a directly booted kernel.
#[derive(Debug, Clone, Copy)]
struct DirectEntry {
    kernel: LoadedKernel,
    boot_info: u64,
}

/// Loads the kernel, initramfs and command line, and writes the boot structures and firmware
/// tables a directly booted kernel reads.
fn load_direct(
    mem: &GuestMemory,
    config: &VmConfig,
    kernel_file: &mut File,
    initramfs_file: Option<&mut File>,
    phys_bits: u8,
) -> Result<DirectEntry, VmError> {
    let kernel = boot::load_kernel(mem, kernel_file)?;
    log::info!(
        "kernel {}: {:?} entry at {:#x}",
        config
            .kernel
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        kernel.mode,
        kernel.entry
    );
    let initramfs = initramfs_file
        .map(|f| boot::load_initramfs(mem, config.memory, f, &kernel))
        .transpose()?;
    let max_cmdline = kernel
        .setup_header
        .map(|h| h.cmdline_size as usize)
        .filter(|&n| n > 0)
        .map(|n| n - 1);
    // A multiboot kernel's command line starts with the kernel's name, as GRUB and QEMU pass it
    // (kvm-unit-tests takes it as argv[0]).
    let cmdline = match kernel.mode {
        EntryMode::Multiboot => {
            let name = config.kernel.as_deref().unwrap_or(Path::new("kernel"));
            format!("{} {}", name.display(), config.cmdline)
                .trim_end()
                .to_string()
        }
        _ => config.cmdline.clone(),
    };
    boot::write_cmdline(mem, &cmdline, max_cmdline)?;
    let rsdp =
        platform::write_firmware_tables(mem, config, phys_bits).map_err(VmError::Firmware)?;
    let info = BootInfo {
        mem_size: config.memory,
        cmdline: &cmdline,
        initramfs,
        rsdp: Some(rsdp),
    };
    let boot_info = match kernel.mode {
        EntryMode::Pvh => boot::write_pvh_start_info(mem, &info)?,
        EntryMode::Linux64 => boot::write_zero_page(mem, &kernel, &info)?,
        EntryMode::Multiboot => {
            // Module 0's string: the --initramfs argument as given (QEMU passes -initrd's).
            let name = config
                .initramfs
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            arch::multiboot::write_info(mem, &info, &name)?
        }
    };
    regs::write_gdt_idt(mem)?;
    // Multiboot enters with paging off, and its image may load where the tables would go.
    if kernel.mode != EntryMode::Multiboot {
        regs::write_identity_page_tables(mem)?;
    }
    Ok(DirectEntry { kernel, boot_info })
}

/// Who a vCPU is and what hypervisor it is told it runs on.
#[derive(Debug, Clone, Copy)]
struct VcpuIdentity<'a> {
    id: u32,
    count: u32,
    hyperv: Option<&'a crate::hyperv::HypervPlan>,
    hide_kvm: bool,
}

/// Creates vCPU `id`: its CPUID table (with the Hyper-V leaves and their per-vCPU
/// capabilities when the VM has them), then either the direct-boot state (`entry`) or, for
/// firmware, the architectural power-on state (the boot vCPU at the reset vector, the others
/// waiting for INIT/SIPI, MTRRs off).
fn create_vcpu(
    vm: &VmFd,
    mut cpuid: CpuId,
    who: VcpuIdentity,
    entry: Option<DirectEntry>,
) -> Result<VcpuFd, VmError> {
    let id = who.id;
    let fd = vm
        .create_vcpu(u64::from(id))
        .map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let params = arch::cpuid::CpuidParams {
        cpu_id: id as u8,
        cpu_count: who.count as u8,
        tsc_khz: fd.get_tsc_khz().ok().filter(|&k| k > 0),
        hyperv: who.hyperv.map(|p| p.leaves.entries.as_slice()),
        hide_kvm: who.hide_kvm,
    };
    arch::cpuid::filter_cpuid(&mut cpuid, &params).map_err(|e| VmError::Firmware(e.to_string()))?;
    if entry.is_none() {
        firmware_cpuid(&mut cpuid);
    }
    fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    if let Some(plan) = who.hyperv {
        crate::hyperv::enable_on_vcpu(&fd, id, plan)?;
    }

    let Some(entry) = entry else {
        let signature = vcpu::reset::signature(&fd);
        vcpu::reset::power_on(&fd, id, signature).map_err(|e| VmError::KvmSetup {
            what: e.what,
            err: e.err,
        })?;
        return Ok(fd);
    };
    let lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    direct_boot_state(&fd, id, entry, lapic)?;
    Ok(fd)
}

/// A direct boot's vCPU state on top of a vCPU at power-on (`lapic`: its LAPIC then): the boot
/// MSRs, LINT0/LINT1 wired as a PC's, the FPU, and for vCPU 0 the kernel's entry state; the
/// others wait for INIT/SIPI.
fn direct_boot_state(
    fd: &VcpuFd,
    id: u32,
    entry: DirectEntry,
    mut lapic: kvm_bindings::kvm_lapic_state,
) -> Result<(), VmError> {
    let entries = arch::msr::boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VmError::Firmware(format!("{e:?}")))?;
    let set = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != entries.len() {
        log::debug!(
            "vCPU {id}: KVM accepted {set} of {} boot MSRs (from index {:#x} on they were refused)",
            entries.len(),
            entries.get(set).map(|e| e.index).unwrap_or(0)
        );
    }
    arch::msr::set_lint(&mut lapic);
    fd.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    fd.set_fpu(&regs::boot_fpu())
        .map_err(kvm_err("KVM_SET_FPU"))?;

    // Only the boot vCPU gets the entry state; the others wait for INIT/SIPI in the kernel.
    if id == 0 {
        let sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        fd.set_sregs(&regs::boot_sregs(sregs, entry.kernel.mode))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        fd.set_regs(&regs::boot_regs(
            entry.kernel.mode,
            entry.kernel.entry,
            entry.boot_info,
        ))
        .map_err(kvm_err("KVM_SET_REGS"))?;
    }
    Ok(())
}

/// CPUID for UEFI firmware: leaf 0x8000_001F (AMD memory encryption) zeroed, so OVMF's reset
/// vector does not go looking for SEV (it would read MSR 0xC001_0131, which KVM refuses
/// without SEV).
pub(crate) fn firmware_cpuid(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 0x8000_001f {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn reboot_error_names_the_step_and_the_way_out() {
        let e = VmError::Reboot("pausing the vCPUs: vCPU 1 has stopped".into());
        assert_eq!(
            e.to_string(),
            "the guest reset and the VM could not restart in place (pausing the vCPUs: vCPU 1 has stopped); use --on-reset exit to end the run at a guest reset instead"
        );
    }

    #[test]
    fn firmware_cpuid_zeroes_the_memory_encryption_leaf_only() {
        let leaf = |function, v| kvm_cpuid_entry2 {
            function,
            eax: v,
            ebx: v,
            ecx: v,
            edx: v,
            ..Default::default()
        };
        let mut c =
            CpuId::from_entries(&[leaf(1, 7), leaf(0x8000_001f, 0x1b), leaf(0x8000_0008, 3)])
                .unwrap();
        firmware_cpuid(&mut c);
        let s = c.as_slice();
        assert_eq!((s[0].eax, s[2].ecx), (7, 3));
        assert_eq!((s[1].eax, s[1].ebx, s[1].ecx, s[1].edx), (0, 0, 0, 0));
    }
}
