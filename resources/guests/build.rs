//! Builds the test guests from C and assembly with the host's `gcc`, `as` and `ld`, into
//! `$OUT_DIR/<name>.elf`, and writes `$OUT_DIR/guests.rs` (the paths `src/lib.rs` exposes).
//!
//! **Adding a guest is one line in [`GUESTS`]**: its name, boot protocol, source files (relative
//! to this directory) and a one-line description. The boot protocol picks the runtime it links
//! against (see `rt/`) and the link script.
//!
//! How sources are built:
//! - 32-bit code (PVH guests): `gcc -m32 -S` (C) or `gcc -m32 -E` (`.S`) to 32-bit assembly, then
//!   `as --64` with a leading `.code32`: 32-bit instructions in ELF64 objects, because loaders
//!   (linux-loader in vfiovm, QEMU) expect ELF64 images like Linux's vmlinux.
//! - 64-bit code (Linux boot protocol guests): `gcc -m64 -c`.
//! - Link: `ld -m elf_x86_64 -T rt/<protocol>.ld`, physically at the layout's `HIMEM_START`.
//!
//! The platform numbers the guests need (ports, MMIO bases) are generated into `layout.h` from
//! `arch/src/layout.rs`, which this script compiles in as a module, so they are never re-typed.

use std::collections::HashMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
#[path = "../../arch/src/layout.rs"]
mod layout;

/// How a guest is booted, which decides its CPU mode, runtime and link script.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Boot {
    /// PVH (ELF note, 32-bit protected mode entry) with the C runtime.
    Pvh,
    /// PVH, assembly only: just the PVH note, no runtime. The source defines `pvh_start`.
    PvhBare,
    /// Linux 64-bit boot protocol (ELF64 without a PVH note, long-mode entry, zero page in rsi).
    Linux64,
    /// Multiboot (v1), the shape of kvm-unit-tests' x86 images: a multiboot header, 32-bit
    /// protected mode entry with the C runtime, linked as ELF64 then converted to ELF32.
    Multiboot,
    /// A firmware image for `--firmware` (`<name>.fd`, a flat binary): one `.S` file, 16-bit
    /// code from the reset vector on, no runtime. The source fixes the image's size itself.
    Rom,
}

/// One guest image.
struct Guest {
    /// File stem of the image and its name in `vfiovm_guests::path`.
    name: &'static str,
    boot: Boot,
    /// Sources, relative to the package directory.
    sources: &'static [&'static str],
    /// One line for the generated documentation.
    doc: &'static str,
}

/// Every guest. Add a line here to add a guest (and describe its output in README.md).
#[rustfmt::skip]
const GUESTS: &[Guest] = &[
    Guest { name: "pvh_probe", boot: Boot::Pvh, sources: &["pvh_probe.c"], doc: "PVH guest that prints its start info, memory map, command line, modules, ACPI tables and CPUs, starts the APs, then runs `action=`." },
    Guest { name: "elf64_probe", boot: Boot::Linux64, sources: &["elf64_probe.c"], doc: "Linux 64-bit boot protocol guest that prints its zero page, e820 map, command line, initrd and ACPI tables, then runs `action=`." },
    Guest { name: "exit_now", boot: Boot::PvhBare, sources: &["exit_now.S"], doc: "Smallest PVH guest: writes 0 to the debug-exit port at its first instruction (exit status 1)." },
    Guest { name: "first_byte", boot: Boot::PvhBare, sources: &["first_byte.S"], doc: "Start-up benchmark target: writes `F` to COM1 at its first instruction, then exits through the debug-exit port (status 1)." },
    Guest { name: "mem_probe", boot: Boot::Pvh, sources: &["mem_probe.c"], doc: "Guest RAM from inside: memory map, RAM total, region alignment (`align=`), a word written and read back every 2 MiB below 4 GiB; prints `mem_probe: ready`, waits for a COM1 byte, powers off." },
    Guest { name: "echo", boot: Boot::Pvh, sources: &["echo.c"], doc: "Console input test: echoes each line read from COM1 as `echo: <line>`; the line `quit` exits with status 85." },
    Guest { name: "edu_probe", boot: Boot::Pvh, sources: &["edu_probe.c"], doc: "Rig L2 guest: drives QEMU's edu passed through by vfiovm (ident, factorial, DMA both ways, MSI); `msis=N` fires N more MSIs." },
    Guest { name: "nvme_reset", boot: Boot::Pvh, sources: &["nvme_reset.c"], doc: "Rig L2 guest: QEMU's NVMe controller passed through by vfiovm: prints CC/CSTS at start, sets CC (EN stays 0); `flr=1` initiates a function-level reset from the guest and checks that CC is cleared and the bit reads 0; `leave=1` leaves CC set for the next VM." },
    Guest { name: "hello", boot: Boot::Pvh, sources: &["hello.c"], doc: "README demo: greets, prints RAM size, CPU count and command line, then powers off through ACPI." },
    Guest { name: "pci_probe", boot: Boot::Pvh, sources: &["pci_probe.c", "pci_probe_irq.c"], doc: "PCI platform checks from inside (`test=enum|bars|move|msix|msi|intx|dma|ext`): enumeration via 0xCF8 and ECAM, BAR sizing and moves, MSI-X/MSI/INTx delivery and masking, DMA and extended config space of the test device." },
    Guest { name: "pci_bench", boot: Boot::Pvh, sources: &["pci_bench.c"], doc: "Benchmark: cycles and ns per PCI config read through 0xCF8/0xCFC and through ECAM (`n=` reads each); also boots under QEMU q35." },
    Guest { name: "pci_hostile", boot: Boot::Pvh, sources: &["pci_hostile.c"], doc: "Hostile guest: pseudo-random writes of every size to every config offset (ECAM and 0xCF8) and every BAR of the test device, then prints `hostile: survived` (exit status 85)." },
    Guest { name: "virtio_probe", boot: Boot::Pvh, sources: &["virtio_probe.c", "virtio_pci.c", "virtio_hostile.c", "virtio_net.c", "virtio_console.c", "virtio_9p.c"], doc: "virtio 1.x PCI driver from the spec (`test=list|rng|blk|blk-read|blk-ro|hostile|net|console|console-spam|9p`): finds every virtio-pci function, negotiates, sets up split virtqueues with MSI-X, reads virtio-rng, round-trips sectors through every virtio-blk disk, sends malformed chains, answers ARP and ping on a virtio-net card, writes to and reads from a virtio-console, reads and writes a virtio-9p share over 9P2000.L; also boots under QEMU q35 (`qemu-virtio-check.sh`)." },
    Guest { name: "fw_cfg_probe", boot: Boot::Pvh, sources: &["fw_cfg_probe.c"], doc: "fw_cfg as UEFI firmware reads it: signature and features through the ports (also by `rep insb`), the DMA signature, CPU count, file directory, `etc/e820` by DMA, then `etc/table-loader` run over `etc/acpi/*` and every loaded table's checksum and pointer checked, and SMBIOS; `fw_cfg: ok`, exit status 1." },
    Guest { name: "rom_probe", boot: Boot::Rom, sources: &["rom_probe.S"], doc: "Stand-in UEFI firmware for `--firmware` (a flat 1,966,080-byte image, the 2M OVMF CODE size): from the reset vector in real mode it checks the reset state, MTRRdefType, CPUID 0x8000001F, that the image is read-only, OVMF's CFI flash probe and a program, the host and LPC bridges (PMBASE, ACPI_CNTL, PCIEXBAR), the PM timer and fw_cfg, then powers off with SLP_TYP 0 (status 0)." },
    Guest { name: "runner_probe", boot: Boot::Pvh, sources: &["runner_probe.c"], doc: "CI runner tests (`test=status:N|status-byte:N|no-init|spin|halt|chatter|pvpanic|crash-loaded|panic-line|panic-reset`): the runner port's signature, phases and command status, pvpanic's two events, Linux's panic lines, and guests that spin, halt or print without end." },
    Guest { name: "mb_probe", boot: Boot::Multiboot, sources: &["mb_probe.c"], doc: "Multiboot (ELF32) guest: prints the bootloader magic, the multiboot information (flags, mem_lower/upper, memory map, command line, module 0 and its string, loader name), fw_cfg's CPU count and RAM size, with `testdev=1` pc-testdev's data register, flush port and an interrupt line, then runs `action=`." },
    Guest { name: "mb_pci_testdev", boot: Boot::Multiboot, sources: &["mb_pci_testdev.c"], doc: "Multiboot (ELF32) guest for `--pci-testdev`: finds QEMU's pci-testdev (1b36:0005) through 0xCF8, runs every test of both BARs as kvm-unit-tests' lib/pci-testdev.c does (16 writes, COUNT read back), probes what a write the eventfd does not take counts, then runs `action=`." },
    Guest { name: "hv_probe", boot: Boot::Pvh, sources: &["hv_probe.c"], doc: "Windows-facing platform from inside: the hypervisor bit and CPUID 0x40000000-0x40000004, 0x40000010, 0x40000100/1 and 0x40000110, the RTC's time of day; with Hyper-V leaves and `test=hv` every enlightenment used as a guest uses it (hypercall page and a hypercall, VP index, reference counter and TSC page, frequency MSRs, SynIC, synthetic timers direct and through SINT 0, flush and IPI hypercalls, the reset MSR refused); then runs `action=`." },
    Guest { name: "internal_error", boot: Boot::Pvh, sources: &["internal_error.c"], doc: "Teardown tests: the boot vCPU executes a protected-mode `iret` (KVM internal error, status 4, on a host whose KVM emulates every instruction); `aps=spin|halt` wakes the APs into a spin loop or halt first, `bsp=spin` spins instead of crashing." },
];

/// Runtime sources every C guest links, compiled once per CPU mode.
const RT_COMMON: &[&str] = &[
    "rt/serial.c",
    "rt/print.c",
    "rt/string.c",
    "rt/boot.c",
    "rt/acpi.c",
    "rt/lapic.c",
    "rt/cpu.c",
    "rt/action.c",
    "rt/pci.c",
];
/// Runtime sources of 32-bit PVH guests.
const RT_PVH: &[&str] = &[
    "rt/pvh_entry.S",
    "rt/pvh_note.S",
    "rt/ap_trampoline.S",
    "rt/pvh.c",
    "rt/smp.c",
    "rt/idt.c",
    "rt/idt_stubs.S",
];
/// Runtime sources of multiboot guests (the PVH runtime's SMP and IDT code, their own entry).
const RT_MULTIBOOT: &[&str] = &[
    "rt/multiboot_entry.S",
    "rt/ap_trampoline.S",
    "rt/multiboot.c",
    "rt/smp.c",
    "rt/idt.c",
    "rt/idt_stubs.S",
];
/// Runtime of assembly-only PVH guests.
const RT_PVH_BARE: &[&str] = &["rt/pvh_note.S"];
/// Runtime sources of 64-bit Linux boot protocol guests.
const RT_LINUX64: &[&str] = &["rt/linux64_entry.S", "rt/linux64.c"];
/// Headers and link scripts (for rerun-if-changed).
const RT_OTHER: &[&str] = &[
    "rt/include/rt.h",
    "rt/include/gdt.h",
    "rt/pvh.ld",
    "rt/linux64.ld",
    "rt/multiboot.ld",
    "pci_probe.h",
    "virtio_pci.h",
    "virtio_probe.h",
];

/// Page the PVH runtime copies its AP real-mode trampoline to (the SIPI vector is its page
/// number). Checked against the layout below: it must not overlap what the VMM puts in low memory.
const AP_TRAMPOLINE_ADDR: u64 = 0x1_0000;
const PAGE_SIZE: u64 = 0x1000;

/// Flags for every C and preprocessed assembly source.
const COMMON_FLAGS: &[&str] = &[
    "-ffreestanding",
    "-nostdlib",
    "-nostdinc",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-common",
    "-fno-tree-loop-distribute-patterns",
    "-mno-sse",
    "-mno-mmx",
    "-mno-80387",
    "-mgeneral-regs-only",
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Werror",
];
const FLAGS_32: &[&str] = &["-m32"];
const FLAGS_64: &[&str] = &["-m64", "-mno-red-zone", "-mcmodel=small"];

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Bits32,
    Bits64,
}

impl Boot {
    fn mode(self) -> Mode {
        match self {
            Boot::Pvh | Boot::PvhBare | Boot::Rom | Boot::Multiboot => Mode::Bits32,
            Boot::Linux64 => Mode::Bits64,
        }
    }

    fn runtime(self) -> Vec<&'static str> {
        match self {
            Boot::Pvh => [RT_COMMON, RT_PVH].concat(),
            Boot::PvhBare => RT_PVH_BARE.to_vec(),
            Boot::Linux64 => [RT_COMMON, RT_LINUX64].concat(),
            Boot::Multiboot => [RT_COMMON, RT_MULTIBOOT].concat(),
            Boot::Rom => Vec::new(),
        }
    }

    fn link_script(self) -> &'static str {
        match self {
            Boot::Pvh | Boot::PvhBare | Boot::Rom => "rt/pvh.ld",
            Boot::Linux64 => "rt/linux64.ld",
            Boot::Multiboot => "rt/multiboot.ld",
        }
    }
}

struct Builder {
    src_dir: PathBuf,
    out_dir: PathBuf,
    include_dirs: Vec<PathBuf>,
    /// Runtime objects already built in this run, by (source, mode): each is compiled once.
    runtime_objects: HashMap<(&'static str, Mode), PathBuf>,
}

fn main() {
    let src_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../../arch/src/layout.rs");
    println!("cargo:rerun-if-changed=rt");
    for file in RT_COMMON
        .iter()
        .chain(RT_PVH)
        .chain(RT_LINUX64)
        .chain(RT_MULTIBOOT)
        .chain(RT_OTHER)
    {
        println!("cargo:rerun-if-changed={file}");
    }
    for guest in GUESTS {
        for file in guest.sources {
            println!("cargo:rerun-if-changed={file}");
        }
    }

    check_tools();
    check_trampoline();

    let gen_include = out_dir.join("include");
    fs::create_dir_all(&gen_include)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", gen_include.display())));
    write_file(&gen_include.join("layout.h"), &layout_header());
    write_file(&out_dir.join("code32.s"), ".code32\n");

    let mut builder = Builder {
        include_dirs: vec![src_dir.join("rt/include"), gen_include],
        src_dir,
        out_dir: out_dir.clone(),
        runtime_objects: HashMap::new(),
    };
    let mut images = Vec::new();
    for guest in GUESTS {
        images.push((guest, builder.build_guest(guest)));
    }
    write_file(&out_dir.join("guests.rs"), &rust_index(&images));
}

/// Ends the build with a message cargo shows to the user.
fn fail(msg: &str) -> ! {
    panic!("\n\nvfiovm-guests: {msg}\n\n");
}

fn write_file(path: &Path, contents: &str) {
    // Only rewrite on change, so dependants are not rebuilt for nothing.
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return;
    }
    fs::write(path, contents)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
}

/// Fails the build early and clearly if the toolchain is missing.
fn check_tools() {
    for tool in ["gcc", "as", "ld", "objcopy"] {
        match Command::new(tool).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => fail(&format!(
                "`{tool} --version` failed ({}); the test guests are built with the host's gcc, as and ld (GNU binutils)",
                out.status
            )),
            Err(e) => fail(&format!(
                "cannot run `{tool}` ({e}). The test guests are built from source with the host's gcc, as and ld; \
                 install them (Debian/Ubuntu: `apt-get install gcc binutils`) and make sure they are on PATH"
            )),
        }
    }
}

/// The AP trampoline page must be free of everything the VMM places in low memory.
fn check_trampoline() {
    let page = AP_TRAMPOLINE_ADDR..AP_TRAMPOLINE_ADDR + PAGE_SIZE;
    let overlaps = |start: u64, end: u64| page.start < end && start < page.end;
    let boot_structures_end = layout::PDE_START + 4 * PAGE_SIZE;
    let cmdline_end = layout::CMDLINE_START + layout::CMDLINE_MAX_SIZE as u64;
    if AP_TRAMPOLINE_ADDR % PAGE_SIZE != 0
        || page.end > layout::EBDA_START
        || overlaps(layout::BOOT_GDT_START, boot_structures_end)
        || overlaps(layout::CMDLINE_START, cmdline_end)
    {
        fail(&format!(
            "AP_TRAMPOLINE_ADDR {AP_TRAMPOLINE_ADDR:#x} collides with the boot structures in arch/src/layout.rs; pick another free page below {:#x}",
            layout::EBDA_START
        ));
    }
}

/// `layout.h`: the constants of arch/src/layout.rs the guests use, as C/assembly macros.
fn layout_header() -> String {
    use layout::{irqs, ports};
    let defs: &[(&str, u64)] = &[
        ("HIMEM_START", layout::HIMEM_START),
        ("ACPI_START", layout::ACPI_START),
        ("ACPI_END", layout::ACPI_END),
        ("PCI_ECAM_START", layout::PCI_ECAM_START),
        ("PCI_ECAM_SIZE", layout::PCI_ECAM_SIZE),
        ("PCI_MMIO32_START", layout::PCI_MMIO32_START),
        ("PCI_MMIO32_SIZE", layout::PCI_MMIO32_SIZE),
        ("IOAPIC_START", layout::IOAPIC_START),
        ("APIC_START", layout::APIC_START),
        ("PORTS_PM1A_CNT", u64::from(ports::PM1A_CNT)),
        ("PORTS_PM_TMR", u64::from(ports::PM_TMR)),
        ("PORTS_SLP_TYP_S5", u64::from(ports::SLP_TYP_S5)),
        ("PORTS_COM1", u64::from(ports::COM1)),
        ("PORTS_I8042_DATA", u64::from(ports::I8042_DATA)),
        ("PORTS_I8042_CMD", u64::from(ports::I8042_CMD)),
        ("PORTS_DEBUG_EXIT", u64::from(ports::DEBUG_EXIT)),
        ("PORTS_PVPANIC", u64::from(ports::PVPANIC)),
        ("PORTS_RUNNER", u64::from(ports::RUNNER)),
        ("PORTS_PCI_CONFIG", u64::from(ports::PCI_CONFIG)),
        ("PORTS_RESET_CF9", u64::from(ports::RESET_CF9)),
        ("PORTS_RESET_VALUE", u64::from(ports::RESET_VALUE)),
        ("PORTS_PCI_IO_START", u64::from(ports::PCI_IO_START)),
        ("PORTS_PCI_IO_SIZE", u64::from(ports::PCI_IO_SIZE)),
        ("IRQS_COM1", u64::from(irqs::COM1)),
        ("IRQS_SCI", u64::from(irqs::SCI)),
        ("IRQS_IOAPIC_PINS", u64::from(irqs::IOAPIC_PINS)),
        ("IRQS_PCI_INTX_BASE", u64::from(irqs::PCI_INTX_BASE)),
        ("IRQS_MSI_GSI_BASE", u64::from(irqs::MSI_GSI_BASE)),
    ];
    let mut h = String::from(
        "/* Generated by resources/guests/build.rs from arch/src/layout.rs. Do not edit. */\n\
         #ifndef LAYOUT_H\n#define LAYOUT_H\n\n",
    );
    for (name, value) in defs {
        // Plain hex, no C suffix, so assembly can use these too.
        let _ = writeln!(h, "#define LAYOUT_{name} {value:#x}");
    }
    let _ = writeln!(
        h,
        "\n/* Chosen in build.rs (AP_TRAMPOLINE_ADDR) and checked against the layout there. */\n\
         #define RT_AP_TRAMPOLINE_ADDR {AP_TRAMPOLINE_ADDR:#x}\n\n#endif"
    );
    h
}

impl Builder {
    /// Compiles and links one guest; returns the image path.
    fn build_guest(&mut self, guest: &Guest) -> PathBuf {
        if guest.boot == Boot::Rom {
            return self.build_rom(guest);
        }
        let mode = guest.boot.mode();
        let mut objects = Vec::new();
        for src in guest.boot.runtime() {
            let object = match self.runtime_objects.get(&(src, mode)) {
                Some(object) => object.clone(),
                None => self.compile(src, mode, "rt"),
            };
            self.runtime_objects.insert((src, mode), object.clone());
            objects.push(object);
        }
        for src in guest.sources {
            objects.push(self.compile(src, mode, guest.name));
        }
        let image = self.out_dir.join(format!("{}.elf", guest.name));
        let mut ld = Command::new("ld");
        ld.args([
            "-m",
            "elf_x86_64",
            "-static",
            "-nostdlib",
            "--build-id=none",
        ])
        .args(["-z", "max-page-size=0x1000", "-z", "noexecstack"])
        .arg(format!("--defsym=RT_LOAD_ADDR={:#x}", layout::HIMEM_START))
        .arg("-T")
        .arg(self.src_dir.join(guest.boot.link_script()))
        .arg("-o")
        .arg(&image)
        .args(&objects);
        run(&mut ld, &format!("linking guest {}", guest.name));
        if guest.boot == Boot::Multiboot {
            // As kvm-unit-tests makes its *.flat: a multiboot loader takes ELF32.
            let mut objcopy = Command::new("objcopy");
            objcopy.args(["-O", "elf32-i386"]).arg(&image);
            run(
                &mut objcopy,
                &format!("converting guest {} to ELF32", guest.name),
            );
        }
        image
    }

    /// Preprocesses and assembles a firmware image's one source, then copies its `.text` out as
    /// a flat binary (the source's `.org` directives make every address absolute, so there is
    /// nothing to link).
    fn build_rom(&self, guest: &Guest) -> PathBuf {
        let [src] = guest.sources else {
            fail(&format!(
                "firmware image {} must have exactly one source",
                guest.name
            ));
        };
        let dir = self.out_dir.join("obj").join("rom").join(guest.name);
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
        let asm = dir.join(format!("{}.s", guest.name));
        let object = dir.join(format!("{}.o", guest.name));
        let image = self.out_dir.join(format!("{}.fd", guest.name));
        let mut gcc = Command::new("gcc");
        gcc.args(["-E", "-P", "-nostdinc"]);
        for d in &self.include_dirs {
            gcc.arg("-I").arg(d);
        }
        gcc.arg(self.src_dir.join(src)).arg("-o").arg(&asm);
        run(&mut gcc, &format!("preprocessing {src}"));
        let mut as_ = Command::new("as");
        as_.args(["--32", "--fatal-warnings", "-o"])
            .arg(&object)
            .arg(&asm);
        run(&mut as_, &format!("assembling {src}"));
        let mut objcopy = Command::new("objcopy");
        objcopy
            .args(["-O", "binary", "-j", ".text"])
            .arg(&object)
            .arg(&image);
        run(&mut objcopy, &format!("extracting the image of {src}"));
        image
    }

    /// Compiles `src` for `mode` into `$OUT_DIR/obj/<32|64>/<group>/`, returning the object.
    fn compile(&self, src: &str, mode: Mode, group: &str) -> PathBuf {
        let bits = match mode {
            Mode::Bits32 => "32",
            Mode::Bits64 => "64",
        };
        let dir = self.out_dir.join("obj").join(bits).join(group);
        fs::create_dir_all(&dir)
            .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
        let input = self.src_dir.join(src);
        let stem = Path::new(src)
            .file_name()
            .map_or_else(|| src.to_string(), |s| s.to_string_lossy().into_owned());
        let object = dir.join(format!("{stem}.o"));
        let is_asm = src.ends_with(".S");

        let mut gcc = Command::new("gcc");
        gcc.args(COMMON_FLAGS);
        for dir in &self.include_dirs {
            gcc.arg("-I").arg(dir);
        }
        match mode {
            Mode::Bits64 => {
                gcc.args(FLAGS_64)
                    .arg("-c")
                    .arg(&input)
                    .arg("-o")
                    .arg(&object);
                run(&mut gcc, &format!("compiling {src} (64-bit)"));
            }
            Mode::Bits32 => {
                // 32-bit assembly first, then an ELF64 object holding 32-bit code.
                let asm = dir.join(format!("{stem}.s"));
                gcc.args(FLAGS_32)
                    .arg(if is_asm { "-E" } else { "-S" })
                    .arg(&input)
                    .arg("-o")
                    .arg(&asm);
                run(&mut gcc, &format!("compiling {src} (32-bit)"));
                let mut as_ = Command::new("as");
                as_.arg("--64")
                    .arg("--fatal-warnings")
                    .arg("-o")
                    .arg(&object)
                    .arg(self.out_dir.join("code32.s"))
                    .arg(&asm);
                run(
                    &mut as_,
                    &format!("assembling {src} (32-bit code, ELF64 object)"),
                );
            }
        }
        object
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("{what}: cannot run {:?}: {e}", cmd.get_program())));
    if !out.status.success() {
        fail(&format!(
            "{what} failed ({})\ncommand: {cmd:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

/// `guests.rs`: one path constant per guest, plus the name table `src/lib.rs` looks up.
fn rust_index(images: &[(&Guest, PathBuf)]) -> String {
    let mut rs = String::from("// Generated by build.rs. Do not edit.\n\n");
    for (guest, path) in images {
        let path = path
            .to_str()
            .unwrap_or_else(|| fail(&format!("OUT_DIR path {} is not UTF-8", path.display())));
        let _ = writeln!(
            rs,
            "/// `{}`: {}\npub const {}: &str = {path:?};\n",
            guest.name,
            guest.doc,
            guest.name.to_uppercase()
        );
    }
    rs.push_str(
        "/// The names of all guests, as accepted by [`path`].\npub const NAMES: &[&str] = &[",
    );
    for (guest, _) in images {
        let _ = write!(rs, "{:?}, ", guest.name);
    }
    rs.push_str(
        "];\n\n/// `(name, image path)` of every guest.\nconst IMAGES: &[(&str, &str)] = &[",
    );
    for (guest, _) in images {
        let _ = write!(rs, "({:?}, {}), ", guest.name, guest.name.to_uppercase());
    }
    rs.push_str("];\n");
    rs
}
