//! A minimal KVM VMM that passes one PCI device through to a guest, built only on the library
//! crates (`vfiovm-devices` with feature `kvm`, and `vfiovm-arch` for the boot structures) and
//! kvm-ioctls — what another VMM's author writes to embed the passthrough device. No code of the
//! `vfiovm` binary is used.
//!
//! ```text
//! cargo build --release -p vfiovm-devices --features kvm --example minimal_vmm
//! minimal_vmm --kernel GUEST --device 0000:01:00.0 [--memory MIB] [--cmdline TEXT]
//! ```
//!
//! GUEST is a PVH or 64-bit ELF (the project's tiny guests, e.g. `edu_probe`). One vCPU; COM1 on
//! stdout; a write of `v` to the `isa-debug-exit` port ends the run with status `(v << 1) | 1`
//! (QEMU's and vfiovm's convention: a guest cannot fake status 0). Messages and errors go to
//! stderr; status 2 on an error of the VMM's.
//!
//! The passthrough wiring is the part between "passthrough" and "vCPU" in `run`: a container,
//! KVM's VFIO device, guest RAM DMA-mapped, the device opened and put on the PCI platform.

use std::error::Error;
use std::fs::File;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use vfiovm_arch::acpi::{create_acpi_tables, AcpiConfig};
use vfiovm_arch::boot::{self, BootInfo};
use vfiovm_arch::layout::{self, ports};
use vfiovm_arch::regs::{self, EntryMode};
use vfiovm_devices::kvm::{DeviceSlots, KvmInterruptManager, KvmVfioDevice};
use vfiovm_devices::kvm_bindings::{kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES};
use vfiovm_devices::kvm_ioctls::{Kvm, VcpuExit};
use vfiovm_devices::legacy::{DebugExit, Serial, DEBUG_EXIT_PORT_LEN, SERIAL_PORT_LEN};
use vfiovm_devices::pci::{PciPlatform, PciPlatformConfig, PciWindows, PCI_CONFIG_IO_LEN};
use vfiovm_devices::vfio::host::{self, HostRoot};
use vfiovm_devices::vfio::{LegacyContainer, VfioContainer, VfioDeviceAddress, VfioPciDevice};
use vfiovm_devices::vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};
use vfiovm_devices::{Bus, ExitSink, GuestExit};

/// KVM's TSS and identity-map pages, below the 4 GiB hole's devices (Intel hosts need them).
const KVM_TSS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP: u64 = 0xfffb_c000;

struct Args {
    kernel: String,
    device: String,
    memory_mib: u64,
    cmdline: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        kernel: String::new(),
        device: String::new(),
        memory_mib: 64,
        cmdline: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--kernel" => a.kernel = value()?,
            "--device" => a.device = value()?,
            "--cmdline" => a.cmdline = value()?,
            "--memory" => {
                a.memory_mib = value()?
                    .parse()
                    .map_err(|_| "--memory takes MiB".to_string())?
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.kernel.is_empty() || a.device.is_empty() {
        return Err(
            "usage: minimal_vmm --kernel GUEST --device BDF [--memory MIB] [--cmdline TEXT]".into(),
        );
    }
    Ok(a)
}

/// The first exit a device asks for.
#[derive(Default)]
struct Exit(Mutex<Option<GuestExit>>);

impl ExitSink for Exit {
    fn request_exit(&self, why: GuestExit) {
        self.0.lock().unwrap().get_or_insert(why);
    }
}

fn main() -> ExitCode {
    match parse_args().map_err(Into::into).and_then(|a| run(&a)) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("minimal_vmm: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<u8, Box<dyn Error>> {
    let mem_size = args.memory_mib << 20;
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    vm.set_tss_address(KVM_TSS)?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP)?;
    vm.create_irq_chip()?;

    // Guest RAM, as KVM memory slots 0.. .
    let mem = GuestMemoryMmap::<()>::from_ranges(
        &layout::ram_regions(mem_size)
            .iter()
            .map(|&(start, len)| (GuestAddress(start), len as usize))
            .collect::<Vec<_>>(),
    )?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region.as_ptr() as u64;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the region's mapping lives in `mem`, which outlives the VM (dropped after it
        // at the end of this function).
        unsafe { vm.set_user_memory_region(r) }?;
    }
    let vm = Arc::new(vm);

    // The guest and its boot structures.
    let kernel = boot::load_kernel(&mem, &mut File::open(&args.kernel)?)?;
    boot::write_cmdline(&mem, &args.cmdline, None)?;
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    let phys_bits = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| (e.eax & 0xff) as u8);
    let mmio64 = layout::mmio64_window(mem_size, phys_bits);
    let rsdp = create_acpi_tables(
        &mem,
        &AcpiConfig {
            num_cpus: 1,
            mmio64,
        },
    )?;
    let info = BootInfo {
        mem_size,
        cmdline: &args.cmdline,
        initramfs: None,
        rsdp: Some(rsdp.0),
    };
    let boot_info = match kernel.mode {
        EntryMode::Pvh => boot::write_pvh_start_info(&mem, &info)?,
        EntryMode::Linux64 => boot::write_zero_page(&mem, &kernel, &info)?,
        EntryMode::Multiboot => vfiovm_arch::multiboot::write_info(&mem, &info, "")?,
    };
    regs::write_gdt_idt(&mem)?;
    regs::write_identity_page_tables(&mem)?;

    // Buses, a console, the exit port and the PCI platform.
    let exit = Arc::new(Exit::default());
    let pio = Arc::new(Bus::new("pio"));
    let mmio = Arc::new(Bus::new("mmio"));
    let serial = Serial::new(
        vfiovm_devices::new_eventfd()?,
        vfiovm_devices::new_eventfd()?,
        std::io::stdout(),
    );
    pio.insert(
        Arc::new(Mutex::new(serial)),
        ports::COM1.into(),
        SERIAL_PORT_LEN,
    )?;
    pio.insert(
        Arc::new(Mutex::new(DebugExit::new(exit.clone()))),
        ports::DEBUG_EXIT.into(),
        DEBUG_EXIT_PORT_LEN,
    )?;
    let irq = Arc::new(KvmInterruptManager::new(vm.clone())?);
    let pci = PciPlatform::new(PciPlatformConfig {
        pio: pio.clone(),
        mmio: mmio.clone(),
        windows: PciWindows {
            mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            mmio64,
            io: (ports::PCI_IO_START.into(), ports::PCI_IO_SIZE.into()),
        },
        irq: irq.clone(),
        intx_gsi: Arc::new(layout::pci_intx_gsi),
        exit: exit.clone(),
    })?;
    pio.insert(
        pci.config_io_device(),
        ports::PCI_CONFIG.into(),
        PCI_CONFIG_IO_LEN,
    )?;
    mmio.insert(
        pci.ecam_device(),
        layout::PCI_ECAM_START,
        layout::PCI_ECAM_SIZE,
    )?;

    // Passthrough: check the host, then container, KVM's VFIO device, DMA, the device.
    let bdf = host::parse_bdf(&args.device)?;
    let report = host::check_device(&HostRoot::default(), &bdf)?;
    let container = LegacyContainer::new()?;
    container.add_group(report.group)?;
    let kvm_vfio = KvmVfioDevice::new(&vm)?;
    kvm_vfio.add_groups_of(&container)?;
    let mapped = container.map_guest_memory(&mem)?;
    let name = bdf.to_string();
    let fd = container.open_device(&VfioDeviceAddress::new(&name, report.group, None)?)?;
    let slots = Arc::new(DeviceSlots::new(
        vm.clone(),
        mem.num_regions() as u32,
        kvm.get_nr_memslots() as u32,
    ));
    let mut dev = VfioPciDevice::new(&name, Box::new(fd), &*irq, slots, None)?;
    dev.reset();
    let at = pci.add_device(1, Arc::new(Mutex::new(dev)))?;
    eprintln!(
        "minimal_vmm: {name} (group {}) is the guest's {at}; {} MiB DMA-mapped",
        report.group,
        mapped >> 20
    );

    // One vCPU in the entry state the boot protocol wants.
    let vcpu = vm.create_vcpu(0)?;
    let mut cpuid = cpuid;
    vfiovm_arch::cpuid::filter_cpuid(
        &mut cpuid,
        &vfiovm_arch::cpuid::CpuidParams {
            cpu_id: 0,
            cpu_count: 1,
            tsc_khz: vcpu.get_tsc_khz().ok().filter(|&k| k > 0),
            hyperv: None,
            hide_kvm: false,
        },
    )?;
    vcpu.set_cpuid2(&cpuid)?;
    let msrs = Msrs::from_entries(&vfiovm_arch::msr::boot_msrs())
        .map_err(|e| format!("boot MSRs: {e:?}"))?;
    vcpu.set_msrs(&msrs)?;
    let mut lapic = vcpu.get_lapic()?;
    vfiovm_arch::msr::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic)?;
    vcpu.set_fpu(&regs::boot_fpu())?;
    vcpu.set_sregs(&regs::boot_sregs(vcpu.get_sregs()?, kernel.mode))?;
    vcpu.set_regs(&regs::boot_regs(kernel.mode, kernel.entry, boot_info))?;

    let mut vcpu = vcpu;
    let status = loop {
        match vcpu.run()? {
            VcpuExit::IoIn(port, data) => {
                if !pio.read(port.into(), data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::IoOut(port, data) => {
                pio.write(port.into(), data);
            }
            VcpuExit::MmioRead(addr, data) => {
                if !mmio.read(addr, data) {
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                mmio.write(addr, data);
            }
            VcpuExit::Shutdown => return Err("the guest triple-faulted".into()),
            other => return Err(format!("unexpected vCPU exit {other:?}").into()),
        }
        match *exit.0.lock().unwrap() {
            Some(GuestExit::DebugExit(v)) => break ((v << 1) | 1) as u8,
            Some(other) => break u8::from(other != GuestExit::PowerOff),
            None => {}
        }
    };
    // Teardown in the documented order: the platform and its devices (interrupts off, BAR
    // slots removed, reset, closed), then KVM's VFIO device, then the container (DMA
    // unmapped, groups released), then the VM and guest RAM.
    drop(pci);
    drop(kvm_vfio);
    drop(container);
    Ok(status)
}
