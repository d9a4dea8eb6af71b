//! What the user asked for, as typed structs, and the command-line parser that fills them.
//!
//! The flag names are a contract with users and scripts: `--kernel`, `--initramfs`,
//! `--cmdline`, `--memory`, `--cpus`, `--device`, `--firmware`, `--firmware-vars`,
//! `--no-seccomp`, `--user`, `--share`. Aliases: `--initrd`, `--append`, `-m`, `--smp`. `--flag value`
//! and `--flag=value` both work.

use devices::vfio::MsixRelocation;
use std::path::PathBuf;

mod guest;
mod virtio;

pub use devices::virtio::blk::BlockConfig;
pub use guest::{CpuConfig, HypervMode, RtcBase};
pub use virtio::{NetBackendConfig, NetConfig, ShareConfig};

/// Smallest guest RAM we accept: room for the boot structures, a small kernel and a stack.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Default guest RAM.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Default kernel command line when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// The default kernel command line with `--console virtio`: early messages on COM1 (earlycon)
/// until the virtio console (`hvc0`) is up, then everything there.
pub const DEFAULT_CMDLINE_VIRTIO: &str = "earlycon=uart8250,io,0x3f8 console=hvc0";
/// The xAPIC ID space (8 bits, 0xff is broadcast) bounds the vCPU count.
pub const MAX_CPUS_XAPIC: u32 = 254;

/// A whole VM's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image: bzImage, ELF vmlinux, or ELF with a PVH note. Without firmware it is
    /// booted directly; with `firmware` it is handed to the firmware through fw_cfg.
    pub kernel: Option<PathBuf>,
    /// UEFI firmware to boot (`--firmware`, `--firmware-vars`).
    pub firmware: Option<FirmwareConfig>,
    /// Initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// How guest RAM is backed and brought in (the options after the size in `--memory`).
    pub ram: RamConfig,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Devices to pass through (`--device`).
    pub devices: Vec<DeviceConfig>,
    /// virtio-blk disks (`--disk`), in the order given.
    pub disks: Vec<BlockConfig>,
    /// A virtio-rng device (`--rng`).
    pub rng: bool,
    /// virtio-net cards (`--net`), in order.
    pub net: Vec<NetConfig>,
    /// Host directories shared over virtio-9p (`--share`), in order (tags `share0`, …).
    pub shares: Vec<ShareConfig>,
    /// Which device is the guest's console (`--console`).
    pub console: ConsoleKind,
    /// Attach the PCI test device (for the project's own guest tests).
    pub test_pci_device: bool,
    /// Attach QEMU's `pc-testdev` ports (`--pc-testdev`, for kvm-unit-tests).
    pub pc_testdev: bool,
    /// Attach QEMU's `pci-testdev` (1b36:0005) to the PCI bus (`--pci-testdev`, for
    /// kvm-unit-tests' `vmexit`).
    pub pci_testdev: bool,
    /// Log verbosity: 0 = warnings and errors, 1 = info, 2 = debug, 3+ = trace.
    pub verbosity: u8,
    /// The run's time limits and verdict file (`--timeout`, `--boot-timeout`,
    /// `--stall-timeout`, `--verdict`).
    pub runner: crate::runner::RunnerConfig,
    /// `--exec`: run this command in the guest with vfiovm's own init (docs/ci-runner.md).
    pub exec: Option<crate::exec::ExecConfig>,
    /// `--hyperv`: Hyper-V enlightenments.
    pub hyperv: HypervMode,
    /// `--cpu`: the hypervisor's signature as the guest sees it.
    pub cpu: CpuConfig,
    /// `--rtc`: UTC or local time in the RTC.
    pub rtc: RtcBase,
    /// What a guest reset does (`--on-reset`).
    pub on_reset: OnReset,
}

/// `--on-reset`: what the guest's reset (0xCF9, the keyboard controller's reset line, the ACPI
/// reset register) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReset {
    /// The VM restarts in the same process: devices reset (passed-through ones through VFIO),
    /// guest RAM cleared, the vCPUs at their power-on state, the firmware (or the kernel)
    /// started again. The default with `--firmware`.
    Reboot,
    /// The VM ends with status 0 (cause `reset`). The default for a direct kernel boot.
    Exit,
}

impl OnReset {
    /// The syntax of `--on-reset`.
    pub const SYNTAX: &'static str = "reboot|exit";

    /// Parses an `--on-reset` value.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "reboot" => Ok(OnReset::Reboot),
            "exit" => Ok(OnReset::Exit),
            _ => Err(ConfigError::BadOnReset(s.to_string())),
        }
    }
}

impl VmConfig {
    /// A VM booting `kernel` with every other setting at its command-line default (512 MiB, one
    /// vCPU, COM1, no devices). Library users start here and set what they need.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: Some(kernel.into()),
            firmware: None,
            initramfs: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            memory: DEFAULT_MEMORY,
            ram: RamConfig::default(),
            cpus: 1,
            devices: Vec::new(),
            disks: Vec::new(),
            rng: false,
            net: Vec::new(),
            shares: Vec::new(),
            console: ConsoleKind::Serial,
            test_pci_device: false,
            pc_testdev: false,
            pci_testdev: false,
            verbosity: 0,
            runner: Default::default(),
            exec: None,
            hyperv: HypervMode::Auto,
            cpu: CpuConfig::default(),
            rtc: RtcBase::Utc,
            on_reset: OnReset::Exit,
        }
    }
}

/// `--console`: where the host's terminal meets the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleKind {
    /// COM1 (`ttyS0`): stdout shows what the guest writes to it, stdin feeds it.
    #[default]
    Serial,
    /// A virtio-console PCI device (`hvc0`): its transmit queue goes to stdout, stdin feeds
    /// its receive queue. COM1 is still there and still writes to stdout (early boot
    /// messages), but gets no input.
    Virtio,
}

impl ConsoleKind {
    /// The syntax of `--console`, for help and error messages.
    pub const SYNTAX: &'static str = "serial|virtio";

    /// Parses a `--console` value.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "serial" => Ok(ConsoleKind::Serial),
            "virtio" => Ok(ConsoleKind::Virtio),
            _ => Err(ConfigError::BadConsole(s.to_string())),
        }
    }
}

/// `--firmware` and `--firmware-vars`: UEFI firmware (OVMF) instead of a direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareConfig {
    /// The CODE image (`OVMF_CODE_4M.fd`, the 2M `OVMF_CODE.fd`) or a unified `OVMF.fd`.
    pub code: PathBuf,
    /// A writable copy of the VARS image: variables persist in it. Without it the variables
    /// live in an in-memory copy of the default VARS image and are lost at power-off.
    pub vars: Option<PathBuf>,
}

/// The pages behind guest RAM (`hugepages=` in `--memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RamPages {
    /// `hugepages=off`: 4 KiB pages only (`MADV_NOHUGEPAGE`).
    Small,
    /// `hugepages=thp` (the default): 4 KiB pages the kernel may fold into transparent huge
    /// pages (`MADV_HUGEPAGE`); needs THP `enabled` at `madvise` or `always`.
    #[default]
    Transparent,
    /// `hugepages=on|2M|1G`: hugetlbfs pages from the host's reserved pool, through a
    /// `MFD_HUGETLB` memfd; `None` is the host's default huge page size.
    Huge(Option<u64>),
}

/// How guest RAM is backed and brought in: the options of `--memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RamConfig {
    /// Which pages back it.
    pub pages: RamPages,
    /// `shared=on`: a memfd mapped shared (another process, e.g. a vhost-user backend, can map
    /// the same RAM). Huge pages are always a shared memfd.
    pub shared: bool,
    /// `prefault=on`: populate all of guest RAM before the guest runs. Passthrough always does
    /// (VFIO pins every page), whatever this says.
    pub prefault: bool,
    /// `threads=N`: threads populating guest RAM; `None` is one per host CPU.
    pub threads: Option<u32>,
}

impl RamConfig {
    /// The syntax of `--memory`, for help and error messages.
    pub const SYNTAX: &'static str =
        "SIZE[,hugepages=off|thp|on|2M|1G][,shared=on|off][,prefault=on|off][,threads=N]";
}

/// How the VMM process confines itself while a VM runs. A property of the process, not of the
/// VM: embedders that run VMs in their own threads use [`crate::vm::Vm::run`], which installs
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Install the seccomp filters (the default; `--no-seccomp` turns them off for debugging).
    pub seccomp: bool,
    /// Hidden test hook (`--test-seccomp-violation=vmm|vcpu`): the named thread makes a syscall
    /// outside its filter once the filters are in, so tests can check that it kills the process.
    pub test_violation: Option<ViolationSite>,
    /// `--user UID:GID`: the user and group to switch to once the VM is built (every file and
    /// device open), before it runs.
    pub user: Option<(u32, u32)>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            seccomp: true,
            test_violation: None,
            user: None,
        }
    }
}

/// Which thread makes the deliberate seccomp violation of `--test-seccomp-violation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationSite {
    /// The VMM (event loop) thread, right after the filters are in.
    Vmm,
    /// vCPU 0's thread, after its filter is in and before its first `KVM_RUN`.
    Vcpu,
}

/// One `--device`: a host PCI function to pass through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The host address as given: `0000:06:0d.0`, `06:0d.0` or a sysfs path.
    pub addr: String,
    /// A ROM image to show the guest instead of the device's own ROM.
    pub rom: Option<PathBuf>,
    /// The VF token (a UUID) for an SR-IOV VF whose PF is owned by a userspace driver.
    pub vf_token: Option<String>,
    /// `reset=`: whether a device that cannot be reset is refused.
    pub reset: ResetPolicy,
    /// `msix_relocation=`: whether the MSI-X table the guest sees may be moved off the
    /// device's registers (docs/passthrough.md, "The MSI-X page").
    pub msix_relocation: MsixRelocation,
    /// `p2p=on|off`: whether the device's mmapped BAR memory is DMA-mapped into the container
    /// at its guest address, so other passed-through devices can DMA into it (default off: the
    /// kernel maps device memory page by page, docs/passthrough.md, "Peer-to-peer DMA").
    pub p2p: bool,
}

/// `reset=` of `--device`: what to do with a device vfiovm cannot reset (docs/passthrough.md,
/// "Reset").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetPolicy {
    /// `reset=auto` (the default): use the best reset the host offers; without one, pass the
    /// device through anyway, with whatever state it has (logged at info).
    #[default]
    Auto,
    /// `reset=required`: refuse the device, before the guest runs, when it cannot be reset.
    Required,
}

impl DeviceConfig {
    /// The syntax of a `--device` value; also the help text.
    pub const SYNTAX: &'static str =
        "BDF|SYSFS_PATH[,rom=FILE][,vf_token=UUID][,reset=auto|required][,msix_relocation=auto|off][,p2p=on|off]";

    /// Parses one `--device` value.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::BadDevice(s.to_string(), why.to_string());
        let mut parts = s.split(',');
        let addr = parts.next().unwrap_or_default().trim();
        if addr.is_empty() {
            return Err(bad("no device address"));
        }
        let mut dev = DeviceConfig {
            addr: addr.to_string(),
            rom: None,
            vf_token: None,
            reset: ResetPolicy::Auto,
            msix_relocation: MsixRelocation::Auto,
            p2p: false,
        };
        let (mut reset_seen, mut msix_seen, mut p2p_seen) = (false, false, false);
        for part in parts {
            match part.split_once('=') {
                Some(("rom", f)) if !f.is_empty() => {
                    if dev.rom.replace(PathBuf::from(f)).is_some() {
                        return Err(bad("rom= given twice"));
                    }
                }
                Some(("vf_token", t)) => {
                    if !is_uuid(t) {
                        return Err(bad(
                            "vf_token must be a UUID like 2ab74924-c335-45f4-9b16-8569e5b08258",
                        ));
                    }
                    if dev.vf_token.replace(t.to_ascii_lowercase()).is_some() {
                        return Err(bad("vf_token= given twice"));
                    }
                }
                Some(("reset", r)) => {
                    if std::mem::replace(&mut reset_seen, true) {
                        return Err(bad("reset= given twice"));
                    }
                    dev.reset = match r {
                        "auto" => ResetPolicy::Auto,
                        "required" => ResetPolicy::Required,
                        _ => return Err(bad("reset= takes auto or required")),
                    };
                }
                Some(("msix_relocation", m)) => {
                    if std::mem::replace(&mut msix_seen, true) {
                        return Err(bad("msix_relocation= given twice"));
                    }
                    dev.msix_relocation = m.parse().map_err(|e: String| bad(&e))?;
                }
                Some(("p2p", v)) => {
                    if std::mem::replace(&mut p2p_seen, true) {
                        return Err(bad("p2p= given twice"));
                    }
                    dev.p2p = match v {
                        "on" => true,
                        "off" => false,
                        _ => return Err(bad("p2p= takes on or off")),
                    };
                }
                _ => return Err(bad(&format!("unknown option '{part}'"))),
            }
        }
        Ok(dev)
    }
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What the command line asks the program to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Boot a VM.
    Run {
        /// The VM (boxed: it is most of the enum's size).
        vm: Box<VmConfig>,
        /// How the process confines itself while the VM runs.
        sandbox: SandboxConfig,
    },
    /// Check the host (and devices) for passthrough without starting a VM.
    Doctor {
        /// Devices to check, as `--device` values.
        devices: Vec<String>,
        /// Guest RAM to check RLIMIT_MEMLOCK against.
        memory: Option<u64>,
        /// How that RAM would be backed (`hugepages=`: the host's pool is checked too).
        ram: RamConfig,
    },
    /// Print the help text.
    Help,
    /// Print the version.
    Version,
}

/// Errors in the command line. Each names the flag and what would be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A time limit that is not a number of seconds.
    #[error("invalid {0} '{1}': give a number of seconds greater than 0, e.g. 600 (fractions such as 0.5 work)")]
    BadTimeout(String, String),
    /// A flag we do not know.
    #[error("unknown option '{0}' (see vfiovm --help)")]
    UnknownOption(String),
    /// A flag that needs a value got none.
    #[error("option '{0}' needs a value (see vfiovm --help)")]
    MissingValue(String),
    /// A flag given twice that may only appear once.
    #[error(
        "option '{0}' given more than once: give it once (only --device, --disk, --net, --share and -v repeat)"
    )]
    Repeated(String),
    /// `--kernel` or `--firmware` is required.
    #[error("no kernel given: pass --kernel PATH (a bzImage, an ELF vmlinux or a PVH ELF) or --firmware PATH (UEFI firmware such as /usr/share/OVMF/OVMF_CODE_4M.fd)")]
    NoKernel,
    /// `--initramfs` or `--cmdline` with a firmware but no kernel to give them to.
    #[error("{0} needs --kernel: with --firmware, the initramfs and command line go to the kernel given with --kernel (through fw_cfg); add --kernel PATH or leave out {0}")]
    NeedsKernel(&'static str),
    /// `--exec` with something it cannot go with.
    #[error("--exec cannot go with {0}: {1}")]
    ExecConflict(&'static str, &'static str),
    /// `--modules`, `--vmlinux` or `--save-initramfs` without `--exec`.
    #[error("--modules, --vmlinux and --save-initramfs need --exec: they shape an --exec run; leave them out or add --exec COMMAND")]
    ModulesWithoutExec,
    /// `--firmware-vars` needs `--firmware`.
    #[error(
        "--firmware-vars needs --firmware: give the firmware's CODE image with --firmware PATH"
    )]
    VarsWithoutFirmware,
    /// `--memory` does not parse.
    #[error("invalid --memory '{0}': use a size like 512M, 4G or 1024 (MiB)")]
    BadMemory(String),
    /// An option after the size in `--memory` that does not parse.
    #[error("invalid --memory '{0}': {1} (syntax: {syntax})", syntax = RamConfig::SYNTAX)]
    BadMemoryOption(String, String),
    /// `--memory` is below the minimum.
    #[error("--memory {0} is too small: the minimum is {min} MiB", min = MIN_MEMORY >> 20)]
    MemoryTooSmall(String),
    /// `--cpus` does not parse or is zero.
    #[error("invalid --cpus '{0}': give a number from 1 to {MAX_CPUS_XAPIC}")]
    BadCpus(String),
    /// A `--device` value that does not parse.
    #[error("invalid --device '{0}': {1} (syntax: {syntax})", syntax = DeviceConfig::SYNTAX)]
    BadDevice(String, String),
    /// A `--net` value that does not parse.
    #[error("invalid --net '{0}': {1} (syntax: {syntax})", syntax = NetConfig::SYNTAX)]
    BadNet(String, String),
    /// A `--share` value that does not parse.
    #[error("invalid --share '{0}': {1} (syntax: {syntax})", syntax = ShareConfig::SYNTAX)]
    BadShare(String, String),
    /// A `--console` value other than `serial` or `virtio`.
    #[error("invalid --console '{0}': use serial or virtio (syntax: {syntax})", syntax = ConsoleKind::SYNTAX)]
    BadConsole(String),
    /// An `--on-reset` value other than `reboot` or `exit`.
    #[error("invalid --on-reset '{0}': use reboot (restart the VM in place) or exit (end with status 0) (syntax: {syntax})", syntax = OnReset::SYNTAX)]
    BadOnReset(String),
    /// `--test-seccomp-violation` with a value other than `vmm` or `vcpu`.
    #[error("invalid --test-seccomp-violation '{0}': use vmm or vcpu")]
    BadViolationSite(String),
    /// `--user` does not parse.
    #[error("invalid --user '{0}': give a numeric UID:GID, e.g. 65534:65534")]
    BadUser(String),
    /// A `--disk` value that does not parse.
    #[error("invalid --disk '{0}': {1}")]
    BadDisk(String, String),
    /// A `--hyperv` value other than `on` or `off`.
    #[error("invalid --hyperv '{0}': use on or off")]
    BadHyperv(String),
    /// A `--cpu` value that does not parse.
    #[error("invalid --cpu '{0}': {1} (syntax: {syntax})", syntax = CpuConfig::SYNTAX)]
    BadCpu(String, String),
    /// `--cpu hv-vendor-id=` with `--hyperv off`.
    #[error("--cpu hv-vendor-id= names the Hyper-V vendor, but --hyperv off leaves the Hyper-V leaves out: drop one of the two")]
    VendorWithoutHyperv,
    /// A `--rtc` value that does not parse.
    #[error("invalid --rtc '{0}': use base=utc or base=localtime")]
    BadRtc(String),
    /// A positional argument where none is expected.
    #[error("unexpected argument '{0}' (options start with --; see vfiovm --help)")]
    Unexpected(String),
}

/// The help text; the flag descriptions double as the reference in the README.
pub const HELP: &str = "\
vfiovm - a minimal KVM VMM for PCI passthrough through VFIO

USAGE:
    vfiovm --kernel PATH [OPTIONS]
    vfiovm --firmware PATH [--firmware-vars PATH] [--kernel PATH] [OPTIONS]
    vfiovm doctor [--memory SIZE[,OPT]] [DEV...]   check the host for passthrough (IOMMU,
                                             vfio-pci binding, group viability, /dev/vfio,
                                             memlock, free huge pages for hugepages=)

OPTIONS:
    --kernel PATH        Kernel to boot: a bzImage, an ELF vmlinux (64-bit entry), an ELF
                         with a PVH note (32-bit PVH entry; preferred when present) or a
                         multiboot image (kvm-unit-tests' *.flat; the initramfs is module 0);
                         with --firmware it is handed to the firmware through fw_cfg
    --firmware PATH      Boot UEFI firmware: an OVMF CODE image (OVMF_CODE_4M.fd, the 2M
                         OVMF_CODE.fd) or a unified OVMF.fd (docs/firmware.md)
    --firmware-vars PATH A writable copy of the matching OVMF VARS image: UEFI variables
                         persist in it [default: an in-memory copy, lost at power-off]
    --on-reset reboot|exit
                         What the guest's reset does: restart the VM in place (devices reset,
                         RAM cleared, firmware or kernel started again), or end with status 0
                         [default: reboot with --firmware, exit otherwise]
    --initramfs PATH     Initramfs (alias --initrd)
    --cmdline STRING     Kernel command line (alias --append) [default: console=ttyS0; with
                         --console virtio: earlycon=uart8250,io,0x3f8 console=hvc0]
    --memory SIZE[,OPT]  Guest RAM: 512M, 4G, 1024 (MiB) (alias -m) [default: 512M], with
                         options: hugepages=off|thp|on|2M|1G (4 KiB pages, transparent huge
                         pages [default], or the host's reserved huge pages), shared=on (a
                         shared memfd), prefault=on (populate before boot; passthrough always
                         does), threads=N (populating threads) [default: host CPUs]
    --cpus N             Number of vCPUs (alias --smp) [default: 1]
    --device DEV         PCI device to pass through (repeatable):
                         BDF|SYSFS_PATH[,rom=FILE][,vf_token=UUID][,reset=auto|required]
                         [,msix_relocation=auto|off][,p2p=on|off], e.g. 0000:06:0d.0;
                         reset=required refuses a device vfiovm cannot reset (FLR, PM, a bus
                         reset of devices it holds) [default: auto]; msix_relocation=off keeps
                         the MSI-X table where the device has it, its pages trapping [default:
                         auto: moved off the registers when the kernel lets the BAR be mapped
                         whole]; p2p=on lets the other devices DMA into its BARs [default:
                         off]
    --disk DISK          A raw image as a virtio-blk disk (repeatable; /dev/vda, vdb, ...):
                         path=FILE[,readonly=on][,direct=on][,serial=STR][,id=NAME]
    --rng                A virtio-rng device fed from the host's getrandom (the guest's
                         virtio_rng driver: /dev/hwrng)
    --net tap=NAME[,mac=MAC]|fd=N[,mac=MAC]
                         A virtio-net card on a tap (repeatable): the tap NAME (created if
                         missing; needs CAP_NET_ADMIN unless it belongs to you) or an open tap
                         descriptor N; MAC defaults to 52:54:00:xx:xx:xx from the tap's name
    --share HOSTDIR[:ro|:rw]
                         Share a host directory with the guest over virtio-9p (repeatable),
                         read-only unless :rw; the guest mounts the Nth one by its tag shareN:
                         mount -t 9p -o trans=virtio,version=9p2000.L share0 /mnt
    --console serial|virtio
                         The guest's console [default: serial]: COM1 (ttyS0), or a virtio
                         console (the guest's virtio_console driver: /dev/hvc0), whose output
                         goes to stdout and which stdin feeds; COM1 then still writes to stdout
                         (early boot messages) but gets no input
    --timeout SECS       End the run after SECS seconds (status 124) [default: no limit]
    --boot-timeout SECS  End the run if the guest's init has not written phase 1 to the runner
                         port within SECS seconds of vfiovm's start (status 122) [default: off]
    --stall-timeout SECS End the run when the guest has printed nothing and made no exit to the
                         VMM for SECS seconds, after dumping every vCPU's registers (status 120)
                         [default: off]
    --verdict FILE       Write the run's verdict (cause, status, guest status, boot and run
                         time, last console lines) as JSON to FILE at the end of the run,
                         atomically (docs/ci-runner.md)
    --exec CMD           Run CMD (/bin/sh -c) in the guest with vfiovm's own init, in this
                         directory; its stdout, stderr and exit status become vfiovm's; the
                         kernel's console (COM1) stays off stdout (docs/ci-runner.md)
    --modules DIR        With --exec: the guest kernel's module directory (virtio-console,
                         9p) [default: /lib/modules/RELEASE of the kernel image]
    --vmlinux auto|off|FILE
                         With --exec and a bzImage: boot the same build's uncompressed
                         vmlinux instead (beside the bzImage or at the top of its build
                         tree), so the guest does not decompress itself; off: the bzImage
                         (KASLR) [default: auto]
    --save-initramfs FILE
                         With --exec: write the initramfs it would boot with, run nothing
    --hyperv on|off      Hyper-V enlightenments (CPUID 0x40000000-0x4000000A; KVM's own
                         leaves move to 0x40000100): relaxed timing, vapic, spinlocks, VP
                         index, runtime, reference time and TSC page, SynIC, synthetic
                         timers, frequency MSRs, TLB flush and IPI hypercalls, as the host's
                         KVM offers them [default: on with --firmware when the host offers
                         them, off otherwise]; on: a host without them is an error
    --cpu hide-kvm[,hv-vendor-id=ID]
                         hide-kvm: no KVM signature in CPUID (QEMU's kvm=off; for GPU drivers
                         that refuse to run in a VM); hv-vendor-id=: the Hyper-V vendor id,
                         1 to 12 bytes [default: Microsoft Hv]
    --rtc base=utc|localtime
                         The RTC in UTC or in the host's local time (Windows keeps local time
                         in the RTC) [default: utc]
    --pc-testdev         QEMU's pc-testdev for kvm-unit-tests: ports 0xe0-0xeb (a data
                         register, page flush) and 0x2000-0x2017 (interrupt lines)
    --pci-testdev        QEMU's pci-testdev (PCI 1b36:0005) for kvm-unit-tests' vmexit: MMIO
                         and port writes that exit to the VMM, and ones an ioeventfd takes
    --no-seccomp         Do not confine the VMM's threads with seccomp filters (they are on by
                         default; turn them off only to debug a SIGSYS, see docs/security.md)
    --user UID:GID       Once the VM is built, drop root and run as this numeric user and
                         group (no supplementary groups)
    -v, --verbose        More logging on stderr (repeat for more); VFIOVM_LOG=debug also works
    -h, --help           Print this help
    -V, --version        Print the version

The guest's COM1 is on stdout; stdin feeds COM1, or the virtio console with --console virtio
(when stdin is a terminal it is put in raw mode: type Ctrl-A x to quit, Ctrl-A Ctrl-A to send
Ctrl-A, with either console).

EXIT STATUS:
    0        the guest reset or powered off
    odd      the guest wrote v to the debug-exit port 0xf4: status (v << 1) | 1, as QEMU's
             isa-debug-exit (truncated to 8 bits)
    2        bad input or a host problem (one line on stderr names it and the fix)
    4        the guest crashed: triple fault, KVM internal/emulation error, failed VM entry
    6        the guest kernel panicked (pvpanic, or a 'Kernel panic - not syncing' line)
    120      --stall-timeout: the guest stalled (registers dumped on stderr)
    122      --boot-timeout: the guest's init never reported to the runner port
    124      --timeout: the run took too long
    N        the guest's init wrote N (0-255) to the runner port's status register: its
             command's exit status, exactly
    128+N    stopped by signal N (SIGINT 130, SIGTERM 143) or Ctrl-A x (130); 159 is
             SIGSYS: a thread made a syscall its seccomp filter does not allow (a vfiovm
             bug: rerun with --no-seccomp under `strace -f` and report it)
";

/// Parses a `--memory` value: a size (see [`parse_memory`]), then comma-separated options
/// ([`RamConfig::SYNTAX`]).
pub fn parse_memory_arg(s: &str) -> Result<(u64, RamConfig), ConfigError> {
    let mut parts = s.split(',');
    let size = parse_memory(parts.next().unwrap_or(""))?;
    let bad = |why: String| ConfigError::BadMemoryOption(s.to_string(), why);
    let on_off = |k: &str, v: &str| match v {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(bad(format!("{k}= takes on or off, not '{v}'"))),
    };
    let mut ram = RamConfig::default();
    let mut seen = Vec::new();
    for opt in parts {
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| bad(format!("'{opt}' is not KEY=VALUE")))?;
        if seen.contains(&k) {
            return Err(bad(format!("{k}= is given twice")));
        }
        seen.push(k);
        match k {
            "hugepages" => {
                ram.pages = match v.to_ascii_lowercase().as_str() {
                    "off" | "none" | "4k" => RamPages::Small,
                    "thp" => RamPages::Transparent,
                    "on" => RamPages::Huge(None),
                    "2m" | "2mb" | "2mib" => RamPages::Huge(Some(2 << 20)),
                    "1g" | "1gb" | "1gib" => RamPages::Huge(Some(1 << 30)),
                    _ => {
                        return Err(bad(format!(
                            "hugepages= takes off, thp, on, 2M or 1G, not '{v}'"
                        )))
                    }
                }
            }
            "shared" => ram.shared = on_off(k, v)?,
            "prefault" => ram.prefault = on_off(k, v)?,
            "threads" => {
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| {
                        bad(format!("threads= takes a number from 1 to 1024, not '{v}'"))
                    })?;
                ram.threads = Some(n);
            }
            _ => return Err(bad(format!("unknown option '{k}'"))),
        }
    }
    if let RamPages::Huge(Some(page)) = ram.pages {
        if size % page != 0 {
            return Err(bad(format!(
                "the size is not a multiple of the {} MiB huge page: round it to {} MiB",
                page >> 20,
                (size.div_ceil(page) * page) >> 20
            )));
        }
    }
    Ok((size, ram))
}

/// Parses a memory size: a number with an optional K/M/G/T suffix (optionally followed by
/// `iB` or `B`); a bare number is MiB, as in QEMU.
pub fn parse_memory(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadMemory(s.to_string());
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let suffix = t[digits_end..].to_ascii_lowercase();
    let shift = match suffix.trim_end_matches("ib").trim_end_matches('b') {
        "" if suffix.is_empty() => 20,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall(s.to_string()));
    }
    Ok(bytes)
}

fn parse_cpus(s: &str) -> Result<u32, ConfigError> {
    match s.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_CPUS_XAPIC).contains(&n) => Ok(n),
        _ => Err(ConfigError::BadCpus(s.to_string())),
    }
}

fn parse_user(s: &str) -> Result<(u32, u32), ConfigError> {
    let bad = || ConfigError::BadUser(s.to_string());
    let (uid, gid) = s.split_once(':').ok_or_else(bad)?;
    let num = |v: &str| {
        v.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| v.parse::<u32>().ok())
            .flatten()
            .filter(|&n| n != u32::MAX)
            .ok_or_else(bad)
    };
    Ok((num(uid)?, num(gid)?))
}

fn parse_doctor(args: &[String]) -> Result<Command, ConfigError> {
    let mut devices = Vec::new();
    let mut memory = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.split_once('=') {
            Some(("--memory" | "-m", v)) => memory = Some(parse_memory_arg(v)?),
            _ if a == "--memory" || a == "-m" => {
                let v = it
                    .next()
                    .ok_or_else(|| ConfigError::MissingValue(a.clone()))?;
                memory = Some(parse_memory_arg(v)?);
            }
            _ if a == "-h" || a == "--help" => return Ok(Command::Help),
            _ if a.starts_with('-') => return Err(ConfigError::UnknownOption(a.clone())),
            _ => {
                DeviceConfig::parse(a)?;
                devices.push(a.clone());
            }
        }
    }
    Ok(Command::Doctor {
        devices,
        memory: memory.map(|m| m.0),
        ram: memory.map(|m| m.1).unwrap_or_default(),
    })
}

/// Parses the arguments after the program name.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
    let args: Vec<String> = args.into_iter().collect();
    if args.first().map(String::as_str) == Some("doctor") {
        return parse_doctor(&args[1..]);
    }
    let mut kernel = None;
    let mut firmware = None;
    let mut firmware_vars = None;
    let mut initramfs = None;
    let mut cmdline = None;
    let mut memory = None;
    let mut cpus = None;
    let mut devices = Vec::new();
    let mut disks = Vec::new();
    let mut rng = false;
    let mut net = Vec::new();
    let mut shares = Vec::new();
    let mut console = None;
    let mut test_pci_device = false;
    let mut pc_testdev = false;
    let mut pci_testdev = false;
    let mut verbosity = 0u8;
    let mut sandbox = SandboxConfig::default();
    let mut runner = crate::runner::RunnerConfig::default();
    let mut exec = None;
    let mut modules = None;
    let mut save_initramfs = None;
    let mut vmlinux = None;
    let mut hyperv = None;
    let mut cpu = None;
    let mut rtc = None;
    let mut on_reset = None;

    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let value = |it: &mut std::vec::IntoIter<String>| -> Result<String, ConfigError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .ok_or_else(|| ConfigError::MissingValue(flag.clone())),
            }
        };
        fn once<T>(slot: &mut Option<T>, v: T, flag: &str) -> Result<(), ConfigError> {
            if slot.replace(v).is_some() {
                return Err(ConfigError::Repeated(flag.to_string()));
            }
            Ok(())
        }
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--kernel" => once(&mut kernel, PathBuf::from(value(&mut it)?), &flag)?,
            "--firmware" => once(&mut firmware, PathBuf::from(value(&mut it)?), &flag)?,
            "--firmware-vars" => once(&mut firmware_vars, PathBuf::from(value(&mut it)?), &flag)?,
            "--initramfs" | "--initrd" => {
                once(&mut initramfs, PathBuf::from(value(&mut it)?), &flag)?
            }
            "--cmdline" | "--append" => once(&mut cmdline, value(&mut it)?, &flag)?,
            "--memory" | "-m" => once(&mut memory, parse_memory_arg(&value(&mut it)?)?, &flag)?,
            "--cpus" | "--smp" => once(&mut cpus, parse_cpus(&value(&mut it)?)?, &flag)?,
            "--device" => devices.push(DeviceConfig::parse(&value(&mut it)?)?),
            "--disk" => {
                let v = value(&mut it)?;
                disks.push(
                    BlockConfig::parse(&v).map_err(|e| ConfigError::BadDisk(v, e.to_string()))?,
                );
            }
            "--rng" => rng = true,
            "--exec" => once(&mut exec, value(&mut it)?, &flag)?,
            "--modules" => once(&mut modules, PathBuf::from(value(&mut it)?), &flag)?,
            "--save-initramfs" => once(&mut save_initramfs, PathBuf::from(value(&mut it)?), &flag)?,
            "--vmlinux" => once(
                &mut vmlinux,
                crate::exec::Vmlinux::parse(&value(&mut it)?),
                &flag,
            )?,
            "--net" => net.push(NetConfig::parse(&value(&mut it)?)?),
            "--share" => shares.push(ShareConfig::parse(&value(&mut it)?, shares.len())?),
            "--console" => once(&mut console, ConsoleKind::parse(&value(&mut it)?)?, &flag)?,
            "--hyperv" => once(&mut hyperv, HypervMode::parse(&value(&mut it)?)?, &flag)?,
            "--cpu" => once(&mut cpu, CpuConfig::parse(&value(&mut it)?)?, &flag)?,
            "--rtc" => once(&mut rtc, RtcBase::parse(&value(&mut it)?)?, &flag)?,
            "--on-reset" => once(&mut on_reset, OnReset::parse(&value(&mut it)?)?, &flag)?,
            "--test-pci-device" => test_pci_device = true,
            "--pc-testdev" => pc_testdev = true,
            "--pci-testdev" => pci_testdev = true,
            "--timeout" | "--boot-timeout" | "--stall-timeout" => {
                let v = value(&mut it)?;
                let limit = crate::runner::parse_secs(&v)
                    .ok_or_else(|| ConfigError::BadTimeout(flag.clone(), v))?;
                let slot = match flag.as_str() {
                    "--timeout" => &mut runner.timeout,
                    "--boot-timeout" => &mut runner.boot_timeout,
                    _ => &mut runner.stall_timeout,
                };
                once(slot, limit, &flag)?
            }
            "--verdict" => {
                let v = value(&mut it)?;
                if v.is_empty() {
                    return Err(ConfigError::MissingValue(flag.clone()));
                }
                once(&mut runner.verdict, PathBuf::from(v), &flag)?
            }
            "--no-seccomp" => sandbox.seccomp = false,
            "--user" => once(&mut sandbox.user, parse_user(&value(&mut it)?)?, &flag)?,
            "--test-seccomp-violation" => {
                let v = value(&mut it)?;
                sandbox.test_violation = Some(match v.as_str() {
                    "vmm" => ViolationSite::Vmm,
                    "vcpu" => ViolationSite::Vcpu,
                    _ => return Err(ConfigError::BadViolationSite(v)),
                });
            }
            "-v" | "--verbose" => verbosity = verbosity.saturating_add(1),
            "-vv" => verbosity = verbosity.saturating_add(2),
            f if f.starts_with('-') => return Err(ConfigError::UnknownOption(f.to_string())),
            _ => return Err(ConfigError::Unexpected(arg)),
        }
    }
    if firmware.is_none() && firmware_vars.is_some() {
        return Err(ConfigError::VarsWithoutFirmware);
    }
    if firmware.is_none() && kernel.is_none() {
        return Err(ConfigError::NoKernel);
    }
    if kernel.is_none() {
        if initramfs.is_some() {
            return Err(ConfigError::NeedsKernel("--initramfs"));
        }
        if cmdline.is_some() {
            return Err(ConfigError::NeedsKernel("--cmdline"));
        }
    }
    let hyperv = hyperv.unwrap_or_default();
    let cpu = cpu.unwrap_or_default();
    if hyperv == HypervMode::Off && cpu.hv_vendor_id.is_some() {
        return Err(ConfigError::VendorWithoutHyperv);
    }
    let console = console.unwrap_or_default();
    let default_cmdline = match console {
        ConsoleKind::Serial => DEFAULT_CMDLINE,
        ConsoleKind::Virtio => DEFAULT_CMDLINE_VIRTIO,
    };
    let (exec, shares, cmdline) = match exec {
        None if modules.is_some() || save_initramfs.is_some() || vmlinux.is_some() => {
            return Err(ConfigError::ModulesWithoutExec)
        }
        None => (None, shares, cmdline),
        Some(command) => {
            if firmware.is_some() {
                return Err(ConfigError::ExecConflict(
                    "--firmware",
                    "vfiovm's init is handed to the kernel directly; boot the kernel with --kernel",
                ));
            }
            if console == ConsoleKind::Virtio {
                return Err(ConfigError::ExecConflict(
                    "--console virtio",
                    "the command's stdout and stderr are virtio consoles of their own and the kernel's console is COM1; leave out --console",
                ));
            }
            let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
            let cmdline = Some(match cmdline {
                Some(extra) => format!("{} {extra}", crate::exec::EXEC_CMDLINE),
                None => crate::exec::EXEC_CMDLINE.to_string(),
            });
            let shares = exec_shares(shares);
            (
                Some(crate::exec::ExecConfig {
                    command,
                    cwd,
                    modules,
                    save: save_initramfs,
                    vmlinux: vmlinux.unwrap_or_default(),
                }),
                shares,
                cmdline,
            )
        }
    };
    // Firmware expects a reset to come back (it resets after changing some variables, Windows
    // setup resets); a directly booted kernel's reset ends the run, as it always did.
    let on_reset = on_reset.unwrap_or(if firmware.is_some() {
        OnReset::Reboot
    } else {
        OnReset::Exit
    });
    Ok(Command::Run {
        vm: Box::new(VmConfig {
            kernel,
            firmware: firmware.map(|code| FirmwareConfig {
                code,
                vars: firmware_vars,
            }),
            initramfs,
            cmdline: cmdline.unwrap_or_else(|| default_cmdline.to_string()),
            memory: memory.map_or(DEFAULT_MEMORY, |m| m.0),
            ram: memory.map(|m| m.1).unwrap_or_default(),
            cpus: cpus.unwrap_or(1),
            devices,
            disks,
            rng,
            net,
            shares,
            console,
            test_pci_device,
            pc_testdev,
            pci_testdev,
            verbosity,
            runner,
            exec,
            hyperv,
            cpu,
            rtc: rtc.unwrap_or_default(),
            on_reset,
        }),
        sandbox,
    })
}

/// The shares of an `--exec` run: the ones given, or the host's root read-only when none is
/// (what the command sees is then the host's own file system, as with virtme-ng).
fn exec_shares(mut shares: Vec<ShareConfig>) -> Vec<ShareConfig> {
    if shares.is_empty() {
        shares.push(ShareConfig {
            path: PathBuf::from("/"),
            read_only: true,
            tag: "share0".into(),
        });
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn run_sandboxed(s: &[&str]) -> (VmConfig, SandboxConfig) {
        match parse_args(args(s)).unwrap() {
            Command::Run { vm, sandbox } => (*vm, sandbox),
            c => panic!("expected Run, got {c:?}"),
        }
    }

    fn run(s: &[&str]) -> VmConfig {
        run_sandboxed(s).0
    }

    #[test]
    fn pc_testdev_flag() {
        assert!(!run(&["--kernel", "k"]).pc_testdev);
        assert!(run(&["--kernel", "k", "--pc-testdev"]).pc_testdev);
    }

    #[test]
    fn windows_platform_flags() {
        let c = run(&["--kernel", "k"]);
        assert_eq!(
            (c.hyperv, &c.cpu, c.rtc),
            (HypervMode::Auto, &CpuConfig::default(), RtcBase::Utc)
        );
        let c = run(&[
            "--kernel",
            "k",
            "--hyperv",
            "on",
            "--cpu=hide-kvm,hv-vendor-id=AuthenticAMD",
            "--rtc",
            "base=localtime",
        ]);
        assert_eq!(c.hyperv, HypervMode::On);
        assert!(c.cpu.hide_kvm);
        assert_eq!(c.cpu.hv_vendor_id.as_deref(), Some("AuthenticAMD"));
        assert_eq!(c.rtc, RtcBase::LocalTime);
        assert_eq!(
            run(&["--kernel", "k", "--hyperv=off"]).hyperv,
            HypervMode::Off
        );
        // hide-kvm alone goes with --hyperv off (no hypervisor leaves at all).
        assert!(
            run(&["--kernel", "k", "--hyperv=off", "--cpu", "hide-kvm"])
                .cpu
                .hide_kvm
        );
        let err = |a: &[&str]| parse_args(args(a)).unwrap_err();
        assert_eq!(
            err(&[
                "--kernel",
                "k",
                "--hyperv",
                "off",
                "--cpu",
                "hv-vendor-id=x"
            ]),
            ConfigError::VendorWithoutHyperv
        );
        assert_eq!(
            err(&["--kernel", "k", "--hyperv", "maybe"]),
            ConfigError::BadHyperv("maybe".into())
        );
        assert_eq!(
            err(&["--kernel", "k", "--rtc", "localtime"]),
            ConfigError::BadRtc("localtime".into())
        );
        assert!(matches!(
            err(&["--kernel", "k", "--cpu", "kvm=off"]),
            ConfigError::BadCpu(..)
        ));
        for flag in ["--hyperv", "--cpu", "--rtc"] {
            let v = match flag {
                "--hyperv" => "on",
                "--cpu" => "hide-kvm",
                _ => "base=utc",
            };
            assert_eq!(
                err(&["--kernel", "k", flag, v, flag, v]),
                ConfigError::Repeated(flag.into())
            );
        }
    }

    #[test]
    fn pci_testdev_flag() {
        assert!(!run(&["--kernel", "k"]).pci_testdev);
        let c = run(&["--kernel", "k", "--pci-testdev"]);
        assert!(c.pci_testdev && !c.pc_testdev && !c.test_pci_device);
    }

    #[test]
    fn exec_flags() {
        let c = run(&["--kernel", "k"]);
        assert_eq!((c.exec.as_ref(), c.shares.len()), (None, 0));
        let c = run(&["--kernel", "k", "--exec", "make -C t run; exit 7"]);
        let exec = c.exec.as_ref().unwrap();
        assert_eq!(exec.command, "make -C t run; exit 7");
        assert_eq!(exec.cwd, std::env::current_dir().unwrap());
        assert_eq!(exec.modules, None);
        assert_eq!(exec.vmlinux, crate::exec::Vmlinux::Auto);
        assert_eq!(c.cmdline, crate::exec::EXEC_CMDLINE);
        assert_eq!(
            c.shares,
            [ShareConfig {
                path: "/".into(),
                read_only: true,
                tag: "share0".into()
            }],
            "the host's root, read-only, when no share is given"
        );
        let c = run(&[
            "--kernel",
            "k",
            "--exec=true",
            "--cmdline",
            "loglevel=7",
            "--modules",
            "/m",
        ]);
        assert_eq!(
            c.cmdline,
            format!("{} loglevel=7", crate::exec::EXEC_CMDLINE)
        );
        assert_eq!(c.exec.unwrap().modules.as_deref(), Some(Path::new("/m")));
        for (v, want) in [
            ("off", crate::exec::Vmlinux::Off),
            ("auto", crate::exec::Vmlinux::Auto),
            ("t/vmlinux", crate::exec::Vmlinux::File("t/vmlinux".into())),
        ] {
            let c = run(&["--kernel", "k", "--exec", "x", "--vmlinux", v]);
            assert_eq!(c.exec.unwrap().vmlinux, want);
        }

        let e = |s: &[&str]| parse_args(args(s)).unwrap_err();
        for flag in ["--modules", "--save-initramfs", "--vmlinux"] {
            assert_eq!(
                e(&["--kernel", "k", flag, "/m"]),
                ConfigError::ModulesWithoutExec
            );
        }
        let err = e(&["--kernel", "k", "--exec", "x", "--console", "virtio"]);
        assert!(matches!(
            err,
            ConfigError::ExecConflict("--console virtio", _)
        ));
        assert!(err
            .to_string()
            .starts_with("--exec cannot go with --console virtio: "));
        let err = e(&["--firmware", "f", "--kernel", "k", "--exec", "x"]);
        assert!(matches!(err, ConfigError::ExecConflict("--firmware", _)));
        assert_eq!(
            e(&["--kernel", "k", "--exec", "a", "--exec", "b"]),
            ConfigError::Repeated("--exec".into())
        );
    }

    #[test]
    fn runner_flags() {
        use std::time::Duration;
        let c = run(&["--kernel", "k"]);
        assert_eq!(c.runner, crate::runner::RunnerConfig::default(), "all off");
        let c = run(&[
            "--kernel",
            "k",
            "--timeout",
            "600",
            "--boot-timeout=30",
            "--stall-timeout",
            "0.5",
            "--verdict",
            "out/v.json",
        ]);
        assert_eq!(c.runner.timeout, Some(Duration::from_secs(600)));
        assert_eq!(c.runner.boot_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.runner.stall_timeout, Some(Duration::from_millis(500)));
        assert_eq!(c.runner.verdict.as_deref(), Some(Path::new("out/v.json")));
        let e = |s: &[&str]| parse_args(args(s)).unwrap_err();
        for flag in ["--timeout", "--boot-timeout", "--stall-timeout"] {
            for bad in ["0", "-3", "ten", "1e9"] {
                let err = e(&["--kernel", "k", flag, bad]);
                assert_eq!(err, ConfigError::BadTimeout(flag.into(), bad.into()));
                assert!(err
                    .to_string()
                    .starts_with(&format!("invalid {flag} '{bad}': give a number of seconds")));
            }
            assert_eq!(
                e(&["--kernel", "k", flag, "1", flag, "2"]),
                ConfigError::Repeated(flag.into())
            );
        }
        assert_eq!(
            e(&["--kernel", "k", "--verdict="]),
            ConfigError::MissingValue("--verdict".into())
        );
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("4G").unwrap(), 4 << 30);
        assert_eq!(parse_memory("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_memory("256").unwrap(), 256 << 20);
        assert_eq!(parse_memory("65536k").unwrap(), 64 << 20);
        for bad in [
            "",
            "M",
            "12Q",
            "-5M",
            "1.5G",
            "99999999999999999999G",
            "5 G",
            "0x10M",
        ] {
            assert!(
                matches!(parse_memory(bad), Err(ConfigError::BadMemory(_))),
                "{bad}"
            );
        }
        assert_eq!(
            parse_memory("1M"),
            Err(ConfigError::MemoryTooSmall("1M".into()))
        );
        assert!(parse_memory("18446744073709551615T").is_err());
    }

    #[test]
    fn memory_options() {
        let (size, ram) = parse_memory_arg("4G").unwrap();
        assert_eq!((size, ram), (4 << 30, RamConfig::default()));
        assert_eq!(ram.pages, RamPages::Transparent);
        let (_, ram) = parse_memory_arg("4G,hugepages=2M,shared=on,prefault=on,threads=3").unwrap();
        assert_eq!(
            ram,
            RamConfig {
                pages: RamPages::Huge(Some(2 << 20)),
                shared: true,
                prefault: true,
                threads: Some(3)
            }
        );
        assert_eq!(
            parse_memory_arg("2G,hugepages=1G").unwrap().1.pages,
            RamPages::Huge(Some(1 << 30))
        );
        assert_eq!(
            parse_memory_arg("2G,hugepages=on").unwrap().1.pages,
            RamPages::Huge(None)
        );
        assert_eq!(
            parse_memory_arg("2G,hugepages=off").unwrap().1.pages,
            RamPages::Small
        );
        for bad in [
            "4G,hugepages=3M",
            "4G,shared=maybe",
            "4G,threads=0",
            "4G,threads=x",
            "4G,color=red",
            "4G,prefault",
            "4G,threads=1,threads=2",
            "1500M,hugepages=1G",
            "4G,",
        ] {
            let e = parse_memory_arg(bad).unwrap_err();
            assert!(matches!(e, ConfigError::BadMemoryOption(..)), "{bad}: {e}");
            assert!(e.to_string().contains("syntax: SIZE[,hugepages="), "{e}");
        }
        assert!(parse_memory_arg("1500M,hugepages=1G")
            .unwrap_err()
            .to_string()
            .contains("round it to 2048 MiB"));
        let c = run(&["--kernel", "k", "--memory=1G,hugepages=2M"]);
        assert_eq!(
            (c.memory, c.ram.pages),
            (1 << 30, RamPages::Huge(Some(2 << 20)))
        );
    }

    #[test]
    fn flags_and_aliases() {
        let c = run(&[
            "--kernel",
            "k",
            "--initrd=i",
            "--append",
            "a b",
            "-m",
            "1G",
            "--smp=2",
            "-v",
            "-v",
        ]);
        assert_eq!(c.kernel, Some(PathBuf::from("k")));
        assert_eq!(c.firmware, None);
        assert_eq!(c.initramfs, Some(PathBuf::from("i")));
        assert_eq!(c.cmdline, "a b");
        assert_eq!(c.memory, 1 << 30);
        assert_eq!(c.cpus, 2);
        assert_eq!(c.verbosity, 2);
        let c = run(&[
            "--kernel=k",
            "--device",
            "0000:06:0d.0",
            "--device",
            "0000:07:00.1",
        ]);
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[0].addr, "0000:06:0d.0");
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        assert_eq!((c.memory, c.cpus), (DEFAULT_MEMORY, 1));
        // A value that itself contains '=' survives.
        assert_eq!(
            run(&["--kernel", "k", "--cmdline=a=b c=d"]).cmdline,
            "a=b c=d"
        );
    }

    #[test]
    fn seccomp_flags() {
        let (_, s) = run_sandboxed(&["--kernel", "k"]);
        assert_eq!(
            s,
            SandboxConfig {
                seccomp: true,
                test_violation: None,
                user: None,
            }
        );
        let (_, s) = run_sandboxed(&["--kernel", "k", "--user", "65534:100"]);
        assert_eq!(s.user, Some((65534, 100)));
        for bad in [
            "",
            "1",
            "1:",
            ":1",
            "a:b",
            "-1:0",
            "1:2:3",
            "+1:2",
            "4294967295:0",
        ] {
            assert_eq!(
                parse_args(args(&["--kernel", "k", "--user", bad])),
                Err(ConfigError::BadUser(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_args(args(&["--kernel", "k", "--user=1:1", "--user=2:2"])),
            Err(ConfigError::Repeated("--user".into()))
        );
        let (_, s) = run_sandboxed(&["--no-seccomp", "--kernel", "k"]);
        assert!(!s.seccomp);
        let (_, s) = run_sandboxed(&["--kernel", "k", "--test-seccomp-violation=vcpu"]);
        assert_eq!(
            (s.seccomp, s.test_violation),
            (true, Some(ViolationSite::Vcpu))
        );
        let (_, s) = run_sandboxed(&["--kernel", "k", "--test-seccomp-violation", "vmm"]);
        assert_eq!(s.test_violation, Some(ViolationSite::Vmm));
        assert_eq!(
            parse_args(args(&["--kernel", "k", "--test-seccomp-violation=io"])),
            Err(ConfigError::BadViolationSite("io".into()))
        );
        // The test hook is not advertised.
        assert!(HELP.contains("--no-seccomp"));
        assert!(!HELP.contains("--test-seccomp-violation"));
    }

    #[test]
    fn disk_syntax() {
        let c = run(&[
            "--kernel",
            "k",
            "--disk",
            "a.raw",
            "--disk=path=b.raw,readonly=on,id=two",
        ]);
        assert_eq!(c.disks.len(), 2);
        assert_eq!(c.disks[0].path, PathBuf::from("a.raw"));
        assert!(c.disks[1].readonly && c.disks[1].id.as_deref() == Some("two"));
        for bad in [
            "",
            "path=a,color=red",
            "readonly=on",
            "path=a,serial=has space",
        ] {
            let e = parse_args(args(&["--kernel", "k", "--disk", bad])).unwrap_err();
            assert!(matches!(e, ConfigError::BadDisk(..)), "{bad}: {e}");
            assert!(e.to_string().starts_with("invalid --disk '"), "{e}");
        }
    }

    #[test]
    fn device_syntax() {
        let d = DeviceConfig::parse(
            "0000:07:00.1,rom=/tmp/vbios.rom,vf_token=2AB74924-c335-45f4-9b16-8569e5b08258",
        )
        .unwrap();
        assert_eq!(d.addr, "0000:07:00.1");
        assert_eq!(d.rom, Some(PathBuf::from("/tmp/vbios.rom")));
        assert_eq!(
            d.vf_token.as_deref(),
            Some("2ab74924-c335-45f4-9b16-8569e5b08258")
        );
        assert_eq!(d.reset, ResetPolicy::Auto);
        let d = DeviceConfig::parse("06:0d.0,reset=required").unwrap();
        assert_eq!(d.reset, ResetPolicy::Required);
        let d = DeviceConfig::parse("06:0d.0,reset=auto,rom=r").unwrap();
        assert_eq!(d.reset, ResetPolicy::Auto);
        assert_eq!(d.msix_relocation, MsixRelocation::Auto);
        let d = DeviceConfig::parse("06:0d.0,msix_relocation=off,reset=required").unwrap();
        assert_eq!(d.msix_relocation, MsixRelocation::Off);
        assert_eq!(d.reset, ResetPolicy::Required);
        let d = DeviceConfig::parse("06:0d.0,msix_relocation=auto").unwrap();
        assert_eq!(d.msix_relocation, MsixRelocation::Auto);
        assert!(DeviceConfig::SYNTAX.contains("[,reset=auto|required]"));
        assert!(DeviceConfig::SYNTAX.contains("[,msix_relocation=auto|off]"));
        assert!(!d.p2p, "peer DMA is off by default");
        assert!(!DeviceConfig::parse("06:0d.0,p2p=off").unwrap().p2p);
        assert!(DeviceConfig::parse("06:0d.0,p2p=on").unwrap().p2p);
        for bad in [
            "",
            ",rom=x",
            "0000:06:0d.0,rom=",
            "0000:06:0d.0,vf_token=nope",
            "0000:06:0d.0,vf_token=2ab74924-c335-45f4-9b16-8569e5b0825",
            "0000:06:0d.0,color=red",
            "0000:06:0d.0,rom=a,rom=b",
            "0000:06:0d.0,reset=always",
            "0000:06:0d.0,reset=",
            "0000:06:0d.0,msix_relocation=on",
            "0000:06:0d.0,msix_relocation=",
            "0000:06:0d.0,msix_relocation=off,msix_relocation=auto",
            "0000:06:0d.0,reset=auto,reset=required",
            "0000:06:0d.0,p2p=yes",
            "0000:06:0d.0,p2p=on,p2p=off",
        ] {
            assert!(
                matches!(DeviceConfig::parse(bad), Err(ConfigError::BadDevice(..))),
                "{bad}"
            );
        }
    }

    #[test]
    fn net_cards_repeat_in_order() {
        let vm = run(&[
            "--kernel",
            "k",
            "--net",
            "tap=tap0",
            "--net=fd=7,mac=52:54:00:00:00:09",
        ]);
        assert_eq!(
            vm.net,
            vec![
                NetConfig {
                    backend: NetBackendConfig::Tap("tap0".into()),
                    mac: None
                },
                NetConfig {
                    backend: NetBackendConfig::Fd(7),
                    mac: Some(devices::virtio::net::MacAddr([0x52, 0x54, 0, 0, 0, 9]))
                },
            ]
        );
        assert!(run(&["--kernel", "k"]).net.is_empty());
        assert!(matches!(
            parse_args(args(&["--kernel", "k", "--net", "fd=x"])),
            Err(ConfigError::BadNet(..))
        ));
    }

    #[test]
    fn shares_repeat_in_order_with_their_tags() {
        let vm = run(&[
            "--kernel",
            "k",
            "--share",
            "/srv/a",
            "--share=/srv/b:rw",
            "--share",
            "rel:ro",
        ]);
        let got: Vec<(&str, bool, &str)> = vm
            .shares
            .iter()
            .map(|s| (s.path.to_str().unwrap(), s.read_only, s.tag.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("/srv/a", true, "share0"),
                ("/srv/b", false, "share1"),
                ("rel", true, "share2")
            ]
        );
        assert!(run(&["--kernel", "k"]).shares.is_empty());
        assert!(matches!(
            parse_args(args(&["--kernel", "k", "--share", ":rw"])),
            Err(ConfigError::BadShare(..))
        ));
        assert_eq!(
            parse_args(args(&["--kernel", "k", "--share"])),
            Err(ConfigError::MissingValue("--share".into()))
        );
    }

    #[test]
    fn console_flag_picks_the_device_and_the_default_cmdline() {
        let c = run(&["--kernel", "k"]);
        assert_eq!(c.console, ConsoleKind::Serial);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        let c = run(&["--kernel", "k", "--console", "virtio"]);
        assert_eq!(c.console, ConsoleKind::Virtio);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE_VIRTIO);
        let c = run(&["--kernel", "k", "--console=virtio", "--cmdline", "x"]);
        assert_eq!((c.console, c.cmdline.as_str()), (ConsoleKind::Virtio, "x"));
        assert_eq!(
            run(&["--kernel", "k", "--console", "serial"]).console,
            ConsoleKind::Serial
        );
        let e = parse_args(args(&["--kernel", "k", "--console", "hvc"])).unwrap_err();
        assert!(matches!(e, ConfigError::BadConsole(..)), "{e:?}");
        assert!(e.to_string().contains("use serial or virtio"), "{e}");
        assert!(matches!(
            parse_args(args(&[
                "--kernel",
                "k",
                "--console",
                "virtio",
                "--console",
                "serial"
            ])),
            Err(ConfigError::Repeated(..))
        ));
        assert!(HELP.contains("--console serial|virtio"));
    }

    #[test]
    fn firmware_flags() {
        let c = run(&["--firmware", "/f/OVMF_CODE_4M.fd"]);
        assert_eq!(c.kernel, None);
        assert_eq!(
            c.firmware,
            Some(FirmwareConfig {
                code: PathBuf::from("/f/OVMF_CODE_4M.fd"),
                vars: None
            })
        );
        let c = run(&["--firmware=c", "--firmware-vars=v", "--kernel", "k"]);
        assert_eq!(c.kernel, Some(PathBuf::from("k")));
        assert_eq!(c.firmware.unwrap().vars, Some(PathBuf::from("v")));
        let e = |s: &[&str]| parse_args(args(s)).unwrap_err();
        assert_eq!(
            e(&["--kernel", "k", "--firmware-vars", "v"]),
            ConfigError::VarsWithoutFirmware
        );
        assert_eq!(
            e(&["--firmware", "a", "--firmware", "b"]),
            ConfigError::Repeated("--firmware".into())
        );
        assert!(ConfigError::NoKernel.to_string().contains("--firmware"));
        assert_eq!(
            e(&["--firmware", "c", "--initrd", "i"]),
            ConfigError::NeedsKernel("--initramfs")
        );
        assert_eq!(
            e(&["--firmware", "c", "--append", "quiet"]),
            ConfigError::NeedsKernel("--cmdline")
        );
    }

    #[test]
    fn on_reset_flag() {
        assert_eq!(run(&["--kernel", "k"]).on_reset, OnReset::Exit);
        assert_eq!(run(&["--firmware", "c"]).on_reset, OnReset::Reboot);
        assert_eq!(
            run(&["--kernel", "k", "--on-reset", "reboot"]).on_reset,
            OnReset::Reboot
        );
        assert_eq!(
            run(&["--firmware", "c", "--on-reset=exit"]).on_reset,
            OnReset::Exit
        );
        let e = parse_args(args(&["--kernel", "k", "--on-reset", "halt"])).unwrap_err();
        assert_eq!(e, ConfigError::BadOnReset("halt".into()));
        assert!(e.to_string().starts_with(
            "invalid --on-reset 'halt': use reboot (restart the VM in place) or exit"
        ));
        assert_eq!(
            parse_args(args(&[
                "--kernel",
                "k",
                "--on-reset",
                "exit",
                "--on-reset",
                "exit"
            ]))
            .unwrap_err(),
            ConfigError::Repeated("--on-reset".into())
        );
    }

    #[test]
    fn errors() {
        let e = |s: &[&str]| parse_args(args(s)).unwrap_err();
        assert_eq!(e(&[]), ConfigError::NoKernel);
        assert_eq!(
            e(&["--kernel"]),
            ConfigError::MissingValue("--kernel".into())
        );
        assert_eq!(
            e(&["--kernel", "a", "--kernel", "b"]),
            ConfigError::Repeated("--kernel".into())
        );
        assert_eq!(
            e(&["--bogus"]),
            ConfigError::UnknownOption("--bogus".into())
        );
        assert_eq!(e(&["stray"]), ConfigError::Unexpected("stray".into()));
        assert_eq!(
            e(&["--kernel", "k", "--cpus", "0"]),
            ConfigError::BadCpus("0".into())
        );
        assert_eq!(
            e(&["--kernel", "k", "--cpus", "255"]),
            ConfigError::BadCpus("255".into())
        );
        assert_eq!(
            e(&["--kernel", "k", "--cpus", "two"]),
            ConfigError::BadCpus("two".into())
        );
        assert_eq!(parse_args(args(&["--help"])).unwrap(), Command::Help);
        assert_eq!(
            parse_args(args(&[
                "doctor",
                "-m",
                "2G",
                "0000:00:01.0,vf_token=2ab74924-c335-45f4-9b16-8569e5b08258"
            ]))
            .unwrap(),
            Command::Doctor {
                devices: vec!["0000:00:01.0,vf_token=2ab74924-c335-45f4-9b16-8569e5b08258".into()],
                memory: Some(2 << 30),
                ram: RamConfig::default(),
            }
        );
        assert!(parse_args(args(&["doctor", "--bogus"])).is_err());
        assert_eq!(parse_args(args(&["-V"])).unwrap(), Command::Version);
    }
}
