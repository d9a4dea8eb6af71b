//! The guest's PC platform: the two buses, the legacy devices on them, and the firmware tables
//! that describe them. Addresses come from `arch::layout`; the devices themselves only see
//! offsets.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arch::layout::{self, irqs, ports};
use devices::console_tail::{ConsoleSource, ConsoleTail, TeeWriter};
use devices::firmware::{CfiFlash, FwCfg, FW_CFG_PORT_BASE, FW_CFG_PORT_LEN};
use devices::ioevent::IoEventRegistrar;
use devices::kvm::{KvmInterruptManager, KvmIoEvents};
use devices::legacy::{
    AcpiPm, Cmos, DebugExit, MprotectFlush, PcTestDev, PcTestDevIomem, PcTestDevIrq, PvPanic,
    RunnerPort, Serial, StdoutWriter, ACPI_PM_BLOCK_LEN, CMOS_PORT_LEN, DEBUG_EXIT_PORT_LEN, I8042,
    I8042_PORT_LEN, PC_TESTDEV_IOMEM_LEN, PC_TESTDEV_IRQ_LEN, PC_TESTDEV_PORT_LEN,
    PVPANIC_PORT_LEN, RUNNER_PORT_LEN, SERIAL_PORT_LEN,
};
use devices::pci::{
    LpcBridge, PciPlatform, PciPlatformConfig, PciTestDev, PciWindows, TestDevice,
    PCI_CONFIG_IO_LEN,
};
use devices::virtio::console::HostInput;
use devices::{Bus, BusDevice, BusError, ExitSink};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::event_loop::ConsoleSink;
use crate::exit::ExitState;
use crate::memory::GuestMemory;
use crate::seccomp::DeviceGate;
use crate::vcpu::IoBuses;

// The GSI layout the ACPI tables describe is the one the KVM interrupt manager routes.
const _: () = assert!(
    irqs::IOAPIC_PINS == devices::kvm::IOAPIC_PINS
        && irqs::MSI_GSI_BASE == devices::kvm::MSI_GSI_BASE
);

// The DSDT's fw_cfg device names the ports the device sits on.
const _: () =
    assert!(ports::FW_CFG == FW_CFG_PORT_BASE && ports::FW_CFG_LEN as u64 == FW_CFG_PORT_LEN);
// The DSDT reserves the runner port's whole range.
const _: () = assert!(ports::RUNNER_LEN as u64 == RUNNER_PORT_LEN);

/// Errors from creating the platform devices.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for {0}: {1}")]
    EventFd(&'static str, std::io::Error),
    /// KVM refused an irqfd.
    #[error("cannot route {what} to GSI {gsi}: {err}")]
    Irqfd {
        /// Which device.
        what: &'static str,
        /// The GSI.
        gsi: u32,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// Two devices claim one range (a bug in the layout).
    #[error("cannot map {what}: {err}")]
    Bus {
        /// Which device.
        what: &'static str,
        /// The error.
        err: BusError,
    },
    /// A device refused its configuration.
    #[error("cannot create {0}: {1}")]
    Device(&'static str, String),
    /// The interrupt routing table.
    #[error("cannot set up interrupt routing: {0}")]
    Interrupts(String),
    /// The PCI platform.
    #[error("PCI: {0}")]
    Pci(String),
    /// A `--disk` image could not be opened (the error names the file and the fix).
    #[error("{0}")]
    Disk(#[source] devices::virtio::blk::BlockError),
    /// A virtio device could not be created or added.
    #[error("cannot add {0}: {1}")]
    Virtio(String, String),
    /// A `--net` tap could not be opened or used.
    #[error("--net {0}: {1}")]
    Net(String, #[source] devices::virtio::tap::TapError),
}

/// `pc-testdev`'s interrupt lines on the in-kernel irqchip (`KVM_IRQ_LINE`: the GSI's IOAPIC
/// pin, and the PIC's for 0–15).
struct KvmIrqLevel(Arc<VmFd>);

impl devices::legacy::IrqLevel for KvmIrqLevel {
    fn set_level(&self, gsi: u32, level: bool) -> Result<(), String> {
        self.0
            .set_irq_line(gsi, level)
            .map_err(|e| format!("KVM_IRQ_LINE: {e}"))
    }
}

/// The firmware interface of a VM: fw_cfg always (as on QEMU), and with UEFI firmware its
/// variable store flash and where it goes.
pub struct FirmwareDevices {
    /// fw_cfg, for the port bus at 0x510.
    pub fw_cfg: FwCfg<GuestMemory>,
    /// The variable store and its guest address (`--firmware` only). With it the platform also
    /// gets the LPC bridge at 00:1f.0, which then owns the ACPI PM block's place.
    pub flash: Option<(CfiFlash, u64)>,
}

impl std::fmt::Debug for FirmwareDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirmwareDevices")
            .field("flash", &self.flash.as_ref().map(|(_, base)| base))
            .finish_non_exhaustive()
    }
}

/// COM1 as the console: output to stdout (and the console tail), input from stdin.
pub type ConsoleSerial = Serial<TeeWriter<StdoutWriter>>;

/// The serial port's receive FIFO as the event loop's console sink.
struct SerialConsole {
    serial: Arc<Mutex<ConsoleSerial>>,
    /// Fires when the guest has read the FIFO empty after a short enqueue.
    drained: EventFd,
}

impl ConsoleSink for SerialConsole {
    fn enqueue(&mut self, bytes: &[u8]) -> usize {
        self.serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enqueue_input(bytes)
    }

    fn space_event(&self) -> &EventFd {
        &self.drained
    }
}

/// The virtio console's input buffer as the event loop's console sink (`--console virtio`).
struct VirtioConsole(Arc<HostInput>);

impl ConsoleSink for VirtioConsole {
    fn enqueue(&mut self, bytes: &[u8]) -> usize {
        self.0.push(bytes)
    }

    fn space_event(&self) -> &EventFd {
        self.0.space_event()
    }
}

/// A system reset of a VM's devices, for a reboot in place ([`Platform::reset_handle`]).
#[derive(Clone)]
pub struct SystemReset {
    pci: devices::pci::platform::PciResetHandle,
    fw_cfg: Arc<Mutex<FwCfg<GuestMemory>>>,
    flash: Option<Arc<Mutex<CfiFlash>>>,
    pm: Arc<Mutex<AcpiPm>>,
    i8042: Arc<Mutex<I8042>>,
}

impl std::fmt::Debug for SystemReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemReset").finish_non_exhaustive()
    }
}

impl SystemReset {
    /// Every PCI function back to its power-on state with the BARs, interrupt line and command
    /// register the platform first gave it (passed-through devices reset through VFIO, virtio
    /// devices reset), fw_cfg's selector and DMA address, the flash in read-array mode (its
    /// contents and file kept: they are the firmware's variables), the ACPI PM block's
    /// registers, the i8042 and its keyboard. The serial port, the RTC and the consoles keep
    /// their state, as on a PC's reset line. Call with every vCPU paused, on a thread whose
    /// sandbox allows a passed-through device's config accesses and resets (a paused vCPU's:
    /// `vm::Vm::reboot`).
    pub fn run(&self) {
        self.pci.system_reset();
        self.fw_cfg
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        if let Some(f) = &self.flash {
            f.lock().unwrap_or_else(|e| e.into_inner()).reset();
        }
        self.pm.lock().unwrap_or_else(|e| e.into_inner()).reset();
        self.i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .system_reset();
    }
}

/// The devices of one VM and the buses they sit on.
pub struct Platform {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    /// Where stdin goes: COM1, or the virtio console.
    console: Arc<Mutex<dyn ConsoleSink>>,
    pci: PciPlatform,
    irq: Arc<KvmInterruptManager>,
    stop: Arc<AtomicBool>,
    device_gate: Arc<DeviceGate>,
    fw_cfg: Arc<Mutex<FwCfg<GuestMemory>>>,
    /// The firmware's variable store (`--firmware` only).
    flash: Option<Arc<Mutex<CfiFlash>>>,
    /// The ACPI PM block (on the port bus directly, or behind the LPC bridge).
    pm: Arc<Mutex<AcpiPm>>,
    i8042: Arc<Mutex<I8042>>,
    tail: Arc<ConsoleTail>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        // A VM dropped without running: its virtio I/O threads still wait at the gate, and
        // dropping their devices joins them.
        self.device_gate.open(None);
    }
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("pio", &self.pio)
            .field("mmio", &self.mmio)
            .finish_non_exhaustive()
    }
}

fn eventfd(what: &'static str) -> Result<EventFd, PlatformError> {
    devices::new_eventfd().map_err(|e| PlatformError::EventFd(what, e))
}

fn insert(
    bus: &Bus,
    what: &'static str,
    dev: Arc<Mutex<dyn BusDevice>>,
    base: u64,
    len: u64,
) -> Result<(), PlatformError> {
    bus.insert(dev, base, len)
        .map_err(|err| PlatformError::Bus { what, err })
}

impl Platform {
    /// Creates the legacy devices, wires the serial interrupt and maps everything.
    pub fn new(
        vm: &Arc<VmFd>,
        mem: &GuestMemory,
        config: &VmConfig,
        exit: Arc<ExitState>,
        phys_bits: u8,
        firmware: FirmwareDevices,
    ) -> Result<Self, PlatformError> {
        let uefi = firmware.flash.is_some();
        let pio = Arc::new(Bus::new("pio"));
        let mmio = Arc::new(Bus::new("mmio"));
        let sink: Arc<dyn ExitSink> = exit;
        // The whole GSI routing table (legacy pins as on QEMU, then MSI routes) is ours from
        // here on; it replaces KVM's default table.
        let irq = Arc::new(
            KvmInterruptManager::new(vm.clone())
                .map_err(|e| PlatformError::Interrupts(e.to_string()))?,
        );

        let serial_irq = eventfd("the serial interrupt")?;
        vm.register_irqfd(&serial_irq, irqs::COM1)
            .map_err(|err| PlatformError::Irqfd {
                what: "COM1",
                gsi: irqs::COM1,
                err,
            })?;
        let drained = eventfd("the serial input")?;
        let drained_clone = drained
            .try_clone()
            .map_err(|e| PlatformError::EventFd("the serial input", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        // What both consoles write, for the verdict, the stall watch and the panic line.
        let tail = Arc::new(ConsoleTail::default());
        let mut com1 = TeeWriter::new(
            StdoutWriter::stdout_with_abort(stop.clone()),
            tail.clone(),
            ConsoleSource::Serial,
        );
        if config.exec.is_some() {
            // The kernel's console stays off stdout, which is the command's: the verdict and
            // a failed run's stderr quote it (crate::exec).
            com1 = com1.quiet();
        }
        let serial = Arc::new(Mutex::new(Serial::new(serial_irq, drained, com1)));
        let serial_console = Arc::new(Mutex::new(SerialConsole {
            serial: serial.clone(),
            drained: drained_clone,
        }));
        insert(
            &pio,
            "COM1",
            serial.clone(),
            u64::from(ports::COM1),
            SERIAL_PORT_LEN,
        )?;
        // With firmware, a keyboard on the i8042: OVMF's PS/2 driver waits for its answers,
        // and without one times out, polling, for seconds (devices::legacy::ps2_keyboard).
        let i8042 = if uefi {
            I8042::with_keyboard(sink.clone())
        } else {
            I8042::new(sink.clone())
        };
        let i8042 = Arc::new(Mutex::new(i8042));
        insert(
            &pio,
            "the i8042",
            i8042.clone(),
            u64::from(ports::I8042_DATA),
            I8042_PORT_LEN,
        )?;
        insert(
            &pio,
            "the debug-exit port",
            Arc::new(Mutex::new(DebugExit::new(sink.clone()))),
            u64::from(ports::DEBUG_EXIT),
            DEBUG_EXIT_PORT_LEN,
        )?;
        insert(
            &pio,
            "the runner port",
            Arc::new(Mutex::new(RunnerPort::new(sink.clone()))),
            u64::from(ports::RUNNER),
            RUNNER_PORT_LEN,
        )?;
        insert(
            &pio,
            "the pvpanic port",
            Arc::new(Mutex::new(PvPanic::new(sink.clone()))),
            u64::from(ports::PVPANIC),
            PVPANIC_PORT_LEN,
        )?;
        let pm = AcpiPm::new(sink.clone(), ports::SLP_TYP_S5)
            .map_err(|e| PlatformError::Device("the ACPI PM block", e.to_string()))?;
        let pm_block = Arc::new(Mutex::new(if uefi {
            // OVMF powers off with QEMU Q35's S5 type (0); the OS with the DSDT's.
            pm.with_s5_alias(0)
                .map_err(|e| PlatformError::Device("the ACPI PM block", e.to_string()))?
        } else {
            pm
        }));
        let pm: Arc<Mutex<dyn BusDevice>> = pm_block.clone();
        if !uefi {
            insert(
                &pio,
                "the ACPI PM block",
                pm.clone(),
                u64::from(ports::PM_BLOCK_START),
                ACPI_PM_BLOCK_LEN,
            )?;
        }
        if config.pc_testdev {
            insert(
                &pio,
                "pc-testdev",
                Arc::new(Mutex::new(PcTestDev::new(Box::new(MprotectFlush::new(
                    mem.clone(),
                ))))),
                u64::from(ports::PC_TESTDEV),
                PC_TESTDEV_PORT_LEN,
            )?;
            insert(
                &pio,
                "pc-testdev's interrupt lines",
                Arc::new(Mutex::new(PcTestDevIrq::new(Box::new(KvmIrqLevel(
                    vm.clone(),
                ))))),
                u64::from(ports::PC_TESTDEV_IRQ),
                PC_TESTDEV_IRQ_LEN,
            )?;
            insert(
                &mmio,
                "pc-testdev's memory",
                Arc::new(Mutex::new(PcTestDevIomem::default())),
                layout::PC_TESTDEV_IOMEM_START,
                PC_TESTDEV_IOMEM_LEN,
            )?;
        }
        let fw_cfg = Arc::new(Mutex::new(firmware.fw_cfg));
        insert(
            &pio,
            "fw_cfg",
            fw_cfg.clone(),
            u64::from(ports::FW_CFG),
            u64::from(ports::FW_CFG_LEN),
        )?;
        let flash = match firmware.flash {
            Some((flash, base)) => {
                let len = flash.len();
                let flash = Arc::new(Mutex::new(flash));
                insert(
                    &mmio,
                    "the firmware's variable store",
                    flash.clone(),
                    base,
                    len,
                )?;
                Some(flash)
            }
            None => None,
        };
        let ram = layout::ram_regions(config.memory);
        let below_4g = ram[0].1;
        let above_4g = ram.get(1).map(|r| r.1).unwrap_or(0);
        insert(
            &pio,
            "the RTC",
            Arc::new(Mutex::new(
                Cmos::new(below_4g, above_4g).with_utc_offset(rtc_utc_offset(config.rtc)),
            )),
            u64::from(ports::RTC),
            CMOS_PORT_LEN,
        )?;
        let pci = PciPlatform::new(PciPlatformConfig {
            pio: pio.clone(),
            mmio: mmio.clone(),
            windows: PciWindows {
                mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
                mmio64: layout::mmio64_window(config.memory, phys_bits),
                io: (
                    u64::from(ports::PCI_IO_START),
                    u64::from(ports::PCI_IO_SIZE),
                ),
            },
            irq: irq.clone(),
            intx_gsi: Arc::new(layout::pci_intx_gsi),
            exit: sink,
        })
        .map_err(|e| PlatformError::Pci(e.to_string()))?;
        insert(
            &pio,
            "the PCI config ports",
            pci.config_io_device(),
            u64::from(ports::PCI_CONFIG),
            PCI_CONFIG_IO_LEN,
        )?;
        insert(
            &mmio,
            "the PCI ECAM window",
            pci.ecam_device(),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )?;
        if uefi {
            let lpc = LpcBridge::new(pio.clone(), pm, ACPI_PM_BLOCK_LEN, ports::PM_BLOCK_START)
                .map_err(|err| PlatformError::Bus {
                    what: "the ACPI PM block",
                    err,
                })?;
            pci.add_device(devices::pci::lpc::LPC_SLOT, Arc::new(Mutex::new(lpc)))
                .map_err(|e| PlatformError::Pci(e.to_string()))?;
        } else {
            drop(pm);
        }
        if config.test_pci_device {
            let dev = TestDevice::new(mem.clone(), &*irq)
                .map_err(|e| PlatformError::Device("the PCI test device", e.to_string()))?;
            let slot = pci
                .free_slot()
                .ok_or_else(|| PlatformError::Pci("no free slot for the test device".into()))?;
            let addr = pci
                .add_device(slot, Arc::new(Mutex::new(dev)))
                .map_err(|e| PlatformError::Pci(e.to_string()))?;
            log::info!("PCI test device at {addr}");
        }
        if config.pci_testdev {
            // Its eventfd tests bind their eventfds in KVM while they run (a vCPU thread's
            // write to the test register binds; KVM_IOEVENTFD is in the vCPU filter).
            let ioevents: Arc<dyn IoEventRegistrar> = Arc::new(KvmIoEvents::new(vm.clone()));
            let dev = PciTestDev::new(Some(ioevents))
                .map_err(|e| PlatformError::Device("pci-testdev", e.to_string()))?;
            let slot = pci
                .free_slot()
                .ok_or_else(|| PlatformError::Pci("no free slot for pci-testdev".into()))?;
            let addr = pci
                .add_device(slot, Arc::new(Mutex::new(dev)))
                .map_err(|e| PlatformError::Pci(e.to_string()))?;
            log::info!("pci-testdev at {addr}");
        }
        let device_gate = Arc::new(DeviceGate::default());
        let console: Arc<Mutex<dyn ConsoleSink>> =
            match crate::virtio::add_devices(&pci, vm, mem, &irq, &device_gate, config, &tail) {
                Ok(Some(input)) => Arc::new(Mutex::new(VirtioConsole(input))),
                Ok(None) => serial_console,
                Err(e) => {
                    // before the devices already made are dropped (joining their threads)
                    device_gate.open(None);
                    return Err(e);
                }
            };
        Ok(Platform {
            tail,
            fw_cfg,
            flash,
            pm: pm_block,
            i8042,
            device_gate,
            pio,
            mmio,
            console,
            pci,
            irq,
            stop,
        })
    }

    /// What a system reset touches, as a handle that can run on another thread
    /// ([`SystemReset::run`]).
    pub fn reset_handle(&self) -> SystemReset {
        SystemReset {
            pci: self.pci.reset_handle(),
            fw_cfg: self.fw_cfg.clone(),
            flash: self.flash.clone(),
            pm: self.pm.clone(),
            i8042: self.i8042.clone(),
        }
    }

    /// The last lines the guest wrote to its consoles (COM1 and the virtio console), with the
    /// byte count and the panic line the runner watches.
    pub fn console_tail(&self) -> &Arc<ConsoleTail> {
        &self.tail
    }

    /// The buses the vCPUs dispatch to.
    pub fn buses(&self) -> IoBuses {
        IoBuses {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
        }
    }

    /// Where the virtio devices' I/O threads wait until the VM runs
    /// ([`crate::vm::Vm::run_sandboxed`] opens it with their seccomp filter).
    pub fn device_gate(&self) -> &Arc<DeviceGate> {
        &self.device_gate
    }

    /// The fw_cfg device (to add items before the guest runs).
    pub fn fw_cfg(&self) -> &Arc<Mutex<FwCfg<GuestMemory>>> {
        &self.fw_cfg
    }

    /// The PCI platform (to add devices).
    pub fn pci(&self) -> &PciPlatform {
        &self.pci
    }

    /// The interrupt manager devices allocate vectors from.
    pub fn interrupts(&self) -> &Arc<KvmInterruptManager> {
        &self.irq
    }

    /// The flag that stops the VM's vCPUs ([`crate::vcpu::stop_all`] sets it). The console's
    /// writer shares it: a vCPU blocked writing guest output to a stdout nobody reads gives up
    /// the write when the VM stops.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The console's input side: COM1's receive FIFO, or with `--console virtio` the virtio
    /// console's input buffer (COM1 then gets no input).
    pub fn console_input(&self) -> Option<Arc<Mutex<dyn ConsoleSink>>> {
        Some(self.console.clone())
    }
}

/// The RTC's offset from UTC in seconds for `--rtc`: 0, or the host's UTC offset now (east
/// positive, `localtime_r`'s `tm_gmtoff`, so `TZ` counts), kept for the VM's life.
pub fn rtc_utc_offset(base: crate::config::RtcBase) -> i64 {
    if base == crate::config::RtcBase::Utc {
        return 0;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: `libc::tm` is plain data (integers and a pointer) for which all zeros is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `now` and writes only `tm`, both alive for the call.
    let r = unsafe { libc::localtime_r(&now, &mut tm) };
    let offset = if r.is_null() {
        log::warn!("rtc: the host's local time is unknown (localtime_r failed); the RTC shows UTC");
        0
    } else {
        tm.tm_gmtoff
    };
    log::info!("rtc: local time, UTC{offset:+} s");
    offset
}

/// Writes the ACPI tables and the MP table; returns the RSDP address.
pub fn write_firmware_tables(
    mem: &GuestMemory,
    config: &VmConfig,
    phys_bits: u8,
) -> Result<u64, String> {
    let cpus = u8::try_from(config.cpus).map_err(|_| "too many vCPUs".to_string())?;
    let acpi = arch::acpi::AcpiConfig {
        num_cpus: cpus,
        mmio64: layout::mmio64_window(config.memory, phys_bits),
    };
    let rsdp = arch::acpi::create_acpi_tables(mem, &acpi).map_err(|e| e.to_string())?;
    // The MP table only has room for a limited number of CPUs; ACPI is what modern guests use.
    if let Err(e) = arch::mptable::setup_mptable(mem, cpus) {
        log::info!("no MP table: {e}");
    }
    Ok(rsdp.0)
}
