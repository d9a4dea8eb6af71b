//! UEFI firmware boot (`--firmware`, `--firmware-vars`) and the fw_cfg device every VM has.
//!
//! - [`FirmwareImage::open`] reads the firmware file and its variable store before KVM is
//!   touched: the image's size picks the layout ([`arch::firmware::FirmwareLayout`]), the VARS
//!   file is opened (and locked) as a [`CfiFlash`].
//! - [`CodeMapping`] maps the CODE part at the top of 4 GiB as a read-only KVM memory slot
//!   (`KVM_MEM_READONLY`): executed in place, writes exit to the MMIO bus and are dropped.
//! - [`fw_cfg`] builds the fw_cfg device: CPU count, `etc/e820`, the ACPI tables through the
//!   table loader, SMBIOS, the PXE switches, and with a firmware and `--kernel` the kernel
//!   items.
//!
//! Without `--firmware-vars` the variable store is an in-memory flash seeded from the default
//! VARS image next to the CODE file (`OVMF_VARS_4M.fd` beside `OVMF_CODE_4M.fd`, `OVMF_VARS.fd`
//! beside `OVMF_CODE.fd`; a unified `OVMF.fd` brings its own), or blank (all 0xFF: OVMF formats
//! it) when there is none. Variables then last until the VM ends.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arch::firmware::{FirmwareKind, FirmwareLayout, FIRMWARE_END, KNOWN_SIZES};
use arch::layout;
use devices::firmware::{
    build_acpi, e820, offsets, AcpiTable, ArrayMapping, CfiFlash, E820Entry, FlashError, FwCfg,
    FwCfgError,
};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{MmapRegion, VolatileMemory};

use crate::config::{FirmwareConfig, VmConfig};
use crate::memory::GuestMemory;

/// fw_cfg file OVMF reads to skip its IPv4 PXE boot options (`n`: none, no 60 s wait).
pub const IPV4_PXE_FILE: &str = "opt/org.tianocore/IPv4PXESupport";
/// The same for IPv6.
pub const IPV6_PXE_FILE: &str = "opt/org.tianocore/IPv6PXESupport";
/// fw_cfg file that enlarges OVMF's 64-bit PCI aperture (decimal MiB).
pub const PCI_MMIO64_MB_FILE: &str = "opt/ovmf/X-PciMmio64Mb";
/// fw_cfg file with the SMBIOS entry point (OVMF reads the version and the size from it).
pub const SMBIOS_ANCHOR_FILE: &str = "etc/smbios/smbios-anchor";
/// fw_cfg file with the SMBIOS structures.
pub const SMBIOS_TABLES_FILE: &str = "etc/smbios/smbios-tables";
/// OVMF's 64-bit PCI aperture when nothing enlarges it (edk2 2022.11: 32 GiB).
pub const OVMF_DEFAULT_MMIO64: u64 = 32 << 30;

/// Errors reading the firmware or building the firmware interface.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The firmware file cannot be opened or read.
    #[error("cannot read firmware '{path}': {err}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The firmware file is not a regular file.
    #[error("firmware '{path}' is not a regular file: give the OVMF image itself (e.g. /usr/share/OVMF/OVMF_CODE_4M.fd)")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The image's size matches no known OVMF build.
    #[error("firmware '{path}' has {size} bytes, which matches no OVMF layout vfiovm knows: give an image of {KNOWN_SIZES} bytes")]
    UnknownSize {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// A Secure Boot build of OVMF, which needs SMM.
    #[error("firmware '{path}' is a Secure Boot build of OVMF (OVMF_CODE*.secboot.fd, also installed as .ms.fd and .snakeoil.fd): it needs SMM, which vfiovm does not emulate; use the plain build, e.g. /usr/share/OVMF/OVMF_CODE_4M.fd (docs/firmware.md, \"Secure Boot\")")]
    NeedsSmm {
        /// The path.
        path: PathBuf,
    },
    /// The VARS file does not fit the CODE image (or cannot be used).
    #[error("--firmware-vars: {0}")]
    Vars(FlashError),
    /// The host's KVM cannot map read-only memory.
    #[error("this host's KVM cannot map read-only memory (no KVM_CAP_READONLY_MEM), which --firmware needs: use a newer host kernel")]
    NoReadonlyMem,
    /// KVM refused the firmware's memory slot.
    #[error("cannot map the firmware at {addr:#x}: {err}")]
    Slot {
        /// Guest address.
        addr: u64,
        /// KVM's error.
        err: kvm_ioctls::Error,
    },
    /// Memory for the firmware image.
    #[error("cannot allocate {0} bytes for the firmware image: {1}")]
    Allocate(u64, String),
    /// An fw_cfg item.
    #[error("cannot build the fw_cfg items: {0}")]
    FwCfg(#[from] FwCfgError),
    /// The ACPI tables for the table loader.
    #[error("cannot build the ACPI tables for fw_cfg: {0}")]
    Acpi(String),
    /// A kernel or initrd for fw_cfg cannot be read.
    #[error("cannot read {what} '{path}' for the firmware: {err}")]
    Read {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
}

/// A firmware image read and checked, with its variable store.
#[derive(Debug)]
pub struct FirmwareImage {
    /// Where its parts go.
    pub layout: FirmwareLayout,
    /// The CODE bytes (`layout.code_len` of them).
    pub code: Vec<u8>,
    /// The variable store, for the MMIO bus at `layout.vars_base`.
    pub vars: CfiFlash,
    /// Whether the variables persist in a file (`--firmware-vars`).
    pub persistent: bool,
}

fn open_file(path: &Path) -> Result<(File, u64), FirmwareError> {
    let err = |err| FirmwareError::Open {
        path: path.to_path_buf(),
        err,
    };
    let f = File::open(path).map_err(err)?;
    let meta = f.metadata().map_err(err)?;
    if !meta.is_file() {
        return Err(FirmwareError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok((f, meta.len()))
}

/// The default VARS image next to a split CODE image, by Debian's names.
pub fn default_vars_path(code: &Path) -> Option<PathBuf> {
    let name = code.file_name()?.to_str()?;
    let vars = name.replacen("CODE", "VARS", 1);
    (vars != name).then(|| code.with_file_name(vars))
}

impl FirmwareImage {
    /// Reads the firmware `cfg` names and opens its variable store.
    pub fn open(cfg: &FirmwareConfig) -> Result<Self, FirmwareError> {
        let (mut f, size) = open_file(&cfg.code)?;
        let layout =
            FirmwareLayout::for_image_size(size).ok_or_else(|| FirmwareError::UnknownSize {
                path: cfg.code.clone(),
                size,
            })?;
        let mut image = Vec::with_capacity(size as usize);
        f.read_to_end(&mut image)
            .map_err(|err| FirmwareError::Open {
                path: cfg.code.clone(),
                err,
            })?;
        if image.len() as u64 != size {
            return Err(FirmwareError::UnknownSize {
                path: cfg.code.clone(),
                size: image.len() as u64,
            });
        }
        if is_secure_boot_build(&cfg.code, &image) {
            return Err(FirmwareError::NeedsSmm {
                path: cfg.code.clone(),
            });
        }
        let code = image.split_off(layout.code_offset as usize);
        let (vars, persistent) = match &cfg.vars {
            Some(path) => (open_vars(path, layout.vars_len)?, true),
            None => {
                let seed = match layout.kind {
                    FirmwareKind::Unified => Some(image),
                    FirmwareKind::Split => default_vars_path(&cfg.code)
                        .and_then(|p| std::fs::read(p).ok())
                        .filter(|v| v.len() as u64 == layout.vars_len),
                };
                if seed.is_none() {
                    log::info!("no default VARS image beside the firmware: the variable store starts blank and OVMF formats it");
                }
                let data = seed.unwrap_or_else(|| vec![0xff; layout.vars_len as usize]);
                (CfiFlash::new(data).map_err(FirmwareError::Vars)?, false)
            }
        };
        Ok(FirmwareImage {
            layout,
            code,
            vars,
            persistent,
        })
    }
}

/// Opens a `--firmware-vars` file. A file without any write permission bit is refused as
/// read-only even for root (who could write it anyway): its owner marked it so.
fn open_vars(path: &Path, len: u64) -> Result<CfiFlash, FirmwareError> {
    if let Ok(m) = std::fs::metadata(path) {
        if m.is_file() && m.permissions().mode() & 0o222 == 0 {
            return Err(FirmwareError::Vars(FlashError::ReadOnly {
                path: path.to_path_buf(),
            }));
        }
    }
    CfiFlash::open(path, len).map_err(FirmwareError::Vars)
}

/// The CODE image in host memory, for a read-only KVM slot. Create it before the VM fd and drop
/// it after (declared earlier, a local drops later; the Vm keeps it in a field after the VM fd).
#[derive(Debug)]
pub struct CodeMapping {
    region: MmapRegion<()>,
    base: u64,
}

impl CodeMapping {
    /// An anonymous mapping holding `image`'s code.
    pub fn new(image: &FirmwareImage) -> Result<Self, FirmwareError> {
        let len = image.layout.code_len;
        let region = MmapRegion::<()>::new(len as usize)
            .map_err(|e| FirmwareError::Allocate(len, e.to_string()))?;
        region
            .get_slice(0, len as usize)
            .map_err(|e| FirmwareError::Allocate(len, e.to_string()))?
            .copy_from(&image.code);
        Ok(CodeMapping {
            region,
            base: image.layout.code_base,
        })
    }

    /// Maps the code read-only at the top of 4 GiB as KVM memory slot `slot`.
    pub fn map(&self, kvm: &Kvm, vm: &VmFd, slot: u32) -> Result<(), FirmwareError> {
        if !kvm.check_extension(Cap::ReadonlyMem) {
            return Err(FirmwareError::NoReadonlyMem);
        }
        let len = self.region.size() as u64;
        let r = kvm_userspace_memory_region {
            slot,
            flags: KVM_MEM_READONLY,
            guest_phys_addr: self.base,
            memory_size: len,
            userspace_addr: self.region.as_ptr() as u64,
        };
        debug_assert_eq!(self.base + len, FIRMWARE_END);
        // SAFETY: `self.region` is a live anonymous mapping of `len` bytes; its owner outlives
        // the VM fd (see the type's doc), so KVM never maps freed memory.
        unsafe { vm.set_user_memory_region(r) }.map_err(|err| FirmwareError::Slot {
            addr: self.base,
            err,
        })
    }
}

/// The memory slot through which the guest reads the variable store's array while the flash
/// is in read-array mode (a read-only `KVM_MEM_READONLY` slot at the VARS base; writes still
/// exit to the flash on the MMIO bus). The flash maps and unmaps it as its mode changes
/// ([`devices::firmware::ArrayMapping`]).
pub struct VarsSlot {
    vm: Arc<VmFd>,
    slot: u32,
    gpa: u64,
}

impl std::fmt::Debug for VarsSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VarsSlot")
            .field("slot", &self.slot)
            .field("gpa", &self.gpa)
            .finish_non_exhaustive()
    }
}

impl VarsSlot {
    /// Slot number `slot` (one no other mapping uses) at guest address `gpa`.
    pub fn new(vm: Arc<VmFd>, slot: u32, gpa: u64) -> Self {
        VarsSlot { vm, slot, gpa }
    }

    fn set(&self, flags: u32, size: u64, host: u64) -> Result<(), String> {
        let r = kvm_userspace_memory_region {
            slot: self.slot,
            flags,
            guest_phys_addr: self.gpa,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: a zero size deletes the slot and references no memory; otherwise `host` is
        // the flash's array, which the flash keeps allocated until `unmap` returned Ok
        // (ArrayMapping::map's contract).
        unsafe { self.vm.set_user_memory_region(r) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION at {:#x}: {e}", self.gpa))
    }
}

impl ArrayMapping for VarsSlot {
    unsafe fn map(&mut self, host: *const u8, len: usize) -> Result<(), String> {
        self.set(KVM_MEM_READONLY, len as u64, host as u64)
    }

    fn unmap(&mut self) -> Result<(), String> {
        self.set(0, 0, 0)
    }
}

/// Logs where the firmware went.
pub fn log_layout(image: &FirmwareImage) {
    log::info!(
        "firmware: CODE {:#x}-{:#x} (read-only), VARS {:#x}-{:#x} ({})",
        image.layout.code_base,
        FIRMWARE_END - 1,
        image.layout.vars_base,
        image.layout.code_base - 1,
        if image.persistent {
            "flash, persistent"
        } else {
            "flash, in memory"
        }
    );
}

/// `etc/e820` as the firmware sees the guest: the RAM regions whole (the firmware makes its own
/// map of the first megabyte, as on QEMU) and the ECAM window reserved.
pub fn e820_entries(mem_size: u64) -> Vec<E820Entry> {
    let mut v: Vec<E820Entry> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(addr, len)| E820Entry {
            addr,
            len,
            kind: e820::RAM,
        })
        .collect();
    v.push(E820Entry {
        addr: layout::PCI_ECAM_START,
        len: layout::PCI_ECAM_SIZE,
        kind: e820::RESERVED,
    });
    v.sort_by_key(|e| e.addr);
    v
}

/// The arch crate's ACPI tables as table-loader input: every pointer between them named, so
/// the loader patches it and the firmware installs every table.
pub fn acpi_files(
    cfg: &arch::acpi::AcpiConfig,
) -> Result<devices::firmware::AcpiFiles, FirmwareError> {
    let t = arch::acpi::build_tables(cfg).map_err(|e| FirmwareError::Acpi(e.to_string()))?;
    let list = [
        &t.xsdt, &t.fadt, &t.facs, &t.dsdt, &t.madt, &t.mcfg, &t.waet,
    ];
    let index = |addr: u64| {
        list.iter()
            .position(|x| x.addr.0 == addr)
            .ok_or_else(|| FirmwareError::Acpi(format!("no table at {addr:#x}")))
    };
    let le64 = |b: &[u8], at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let mut xsdt = AcpiTable::new(t.xsdt.bytes.clone());
    for at in (offsets::SDT_HEADER_LEN as usize..t.xsdt.bytes.len()).step_by(8) {
        xsdt = xsdt.with_pointer(at as u32, 8, index(le64(&t.xsdt.bytes, at))?);
    }
    let facs = index(t.facs.addr.0)?;
    let dsdt = index(t.dsdt.addr.0)?;
    let fadt = AcpiTable::new(t.fadt.bytes.clone())
        .with_pointer(offsets::FADT_FIRMWARE_CTRL, 4, facs)
        .with_pointer(offsets::FADT_DSDT, 4, dsdt)
        .with_pointer(offsets::FADT_X_FIRMWARE_CTRL, 8, facs)
        .with_pointer(offsets::FADT_X_DSDT, 8, dsdt);
    let mut tables = vec![xsdt, fadt];
    tables.extend(
        [&t.facs, &t.dsdt, &t.madt, &t.mcfg, &t.waet].map(|x| AcpiTable::new(x.bytes.clone())),
    );
    let rsdp = AcpiTable::new(t.rsdp.bytes.clone()).with_pointer(offsets::RSDP_XSDT, 8, 0);
    build_acpi(rsdp, &tables).map_err(|e| FirmwareError::Acpi(e.to_string()))
}

/// The fw_cfg device of a VM: what QEMU's fw_cfg holds for OVMF, built from `config`.
pub fn fw_cfg(
    mem: &GuestMemory,
    config: &VmConfig,
    phys_bits: u8,
) -> Result<FwCfg<GuestMemory>, FirmwareError> {
    let mut f = FwCfg::new(mem.clone());
    // --cpus is at most 254.
    f.add_cpu_count(config.cpus.min(u32::from(u16::MAX)) as u16)?;
    // kvm-unit-tests' lib/x86/fwcfg.c reads it (key 0x03, little-endian u64).
    f.add_u64(devices::firmware::keys::RAM_SIZE, config.memory)?;
    f.add_e820(&e820_entries(config.memory))?;
    let cpus = u8::try_from(config.cpus)
        .map_err(|_| FirmwareError::Acpi(format!("{} vCPUs", config.cpus)))?;
    f.add_acpi(acpi_files(&arch::acpi::AcpiConfig {
        num_cpus: cpus,
        mmio64: layout::mmio64_window(config.memory, phys_bits),
    })?)?;
    let smbios = arch::smbios::build(&arch::smbios::SmbiosConfig {
        cpus: config.cpus.min(u32::from(u16::MAX)) as u16,
        mem_size: config.memory,
        uuid: [0; 16],
    });
    f.add_file(SMBIOS_ANCHOR_FILE, smbios.anchor)?;
    f.add_file(SMBIOS_TABLES_FILE, smbios.tables)?;
    f.add_file(IPV4_PXE_FILE, b"n".to_vec())?;
    f.add_file(IPV6_PXE_FILE, b"n".to_vec())?;
    if config.firmware.is_some() {
        if let Some(k) = &config.kernel {
            let read = |what, path: &Path| {
                std::fs::read(path).map_err(|err| FirmwareError::Read {
                    what,
                    path: path.to_path_buf(),
                    err,
                })
            };
            f.add_kernel(read("kernel", k)?)?;
            if let Some(i) = &config.initramfs {
                f.add_initrd(read("initramfs", i)?)?;
            }
            f.add_cmdline(&config.cmdline)?;
        }
    }
    Ok(f)
}

/// The `opt/ovmf/X-PciMmio64Mb` value that makes OVMF's 64-bit aperture hold BARs of the
/// given sizes (each a power of two, placed naturally aligned), or `None` when its default
/// 32 GiB does. Sizing: the sum rounded up to a power of two always fits naturally aligned
/// power-of-two BARs, placed largest first.
pub fn pci_mmio64_mb(bar_sizes: &[u64]) -> Option<u64> {
    let total = bar_sizes
        .iter()
        .try_fold(0u64, |a, &s| a.checked_add(s))?
        .checked_next_power_of_two()?;
    (total > OVMF_DEFAULT_MMIO64).then_some(total >> 20)
}

/// Whether `path` (with contents `image`) is one of Debian's Secure Boot builds of OVMF, which
/// require SMM: its real name says `secboot` (the `.ms.fd` and `.snakeoil.fd` names are links to
/// it), or it is a byte-for-byte copy of a `*secboot*` file of the same size beside it or in
/// /usr/share/OVMF (a renamed copy). Both builds have the same sizes, and the difference is deep
/// inside compressed volumes, so the name and the installed files are what tell them apart.
fn is_secure_boot_build(path: &Path, image: &[u8]) -> bool {
    let secboot_name = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains("secboot"))
    };
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if secboot_name(&real) {
        return true;
    }
    let dirs = [
        real.parent().map(Path::to_path_buf),
        Some(PathBuf::from("/usr/share/OVMF")),
    ];
    dirs.iter()
        .flatten()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .map(|e| e.path())
        .filter(|p| secboot_name(p) && p != &real)
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == image.len() as u64))
        .any(|p| std::fs::read(p).is_ok_and(|b| b == image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            FirmwareError::NoReadonlyMem.to_string(),
            "this host's KVM cannot map read-only memory (no KVM_CAP_READONLY_MEM), which --firmware needs: use a newer host kernel"
        );
    }

    /// With a firmware and `--kernel`, the kernel, initrd and command line go to fw_cfg; without
    /// a firmware they do not (the kernel is loaded directly).
    #[test]
    fn kernel_items_only_for_firmware() {
        use devices::firmware::keys;
        let dir = std::env::temp_dir().join(format!("vfiovm-fwk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (k, i) = (dir.join("k"), dir.join("i"));
        std::fs::write(&k, b"kernel bytes").unwrap();
        std::fs::write(&i, b"initrd").unwrap();
        let mem = crate::memory::create_guest_memory(16 << 20, &Default::default()).unwrap();
        let mut c = VmConfig::new(&k);
        c.initramfs = Some(i);
        c.cmdline = "console=ttyS0 quiet".into();
        c.cpus = 3;
        let f = fw_cfg(&mem, &c, 40).unwrap();
        assert_eq!(f.item(keys::NB_CPUS), Some(&3u16.to_le_bytes()[..]));
        assert_eq!(f.item(keys::KERNEL_DATA), None);
        assert!(f.file_key(IPV4_PXE_FILE).is_some() && f.file_key("etc/e820").is_some());
        c.firmware = Some(FirmwareConfig {
            code: "OVMF_CODE_4M.fd".into(),
            vars: None,
        });
        let f = fw_cfg(&mem, &c, 40).unwrap();
        assert_eq!(f.item(keys::KERNEL_DATA), Some(&b"kernel bytes"[..]));
        assert_eq!(f.item(keys::KERNEL_SIZE), Some(&12u32.to_le_bytes()[..]));
        assert_eq!(f.item(keys::INITRD_DATA), Some(&b"initrd"[..]));
        assert_eq!(
            f.item(keys::CMDLINE_DATA),
            Some(&b"console=ttyS0 quiet\0"[..])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_vars_beside_code() {
        assert_eq!(
            default_vars_path(Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd")),
            Some(PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"))
        );
        assert_eq!(
            default_vars_path(Path::new("OVMF_CODE.fd")),
            Some(PathBuf::from("OVMF_VARS.fd"))
        );
        assert_eq!(default_vars_path(Path::new("/x/OVMF.fd")), None);
    }

    #[test]
    fn e820_has_ram_whole_and_ecam_reserved() {
        let e = e820_entries(256 << 20);
        assert_eq!(
            e,
            [
                E820Entry {
                    addr: 0,
                    len: 256 << 20,
                    kind: e820::RAM
                },
                E820Entry {
                    addr: layout::PCI_ECAM_START,
                    len: layout::PCI_ECAM_SIZE,
                    kind: e820::RESERVED
                }
            ]
        );
        let e = e820_entries(4 << 30);
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].len, e[2].addr), (2 << 30, 1 << 32));
        // OVMF's Q35 path needs low RAM to end at or below the ECAM base.
        assert!(e
            .iter()
            .filter(|x| x.kind == e820::RAM && x.addr < 1 << 32)
            .all(|x| x.addr + x.len <= layout::PCI_ECAM_START));
    }

    #[test]
    fn mmio64_aperture_grows_only_for_large_bars() {
        assert_eq!(pci_mmio64_mb(&[]), None);
        assert_eq!(pci_mmio64_mb(&[16 << 30, 256 << 20]), None);
        assert_eq!(pci_mmio64_mb(&[32 << 30]), None);
        assert_eq!(pci_mmio64_mb(&[32 << 30, 32 << 20]), Some(64 << 10));
        assert_eq!(pci_mmio64_mb(&[128 << 30]), Some(128 << 10));
        assert_eq!(pci_mmio64_mb(&[u64::MAX, 1]), None);
    }

    #[test]
    fn firmware_sizes_are_checked_before_anything_else() {
        let dir = std::env::temp_dir().join(format!("vfiovm-fw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let code = dir.join("odd.fd");
        std::fs::write(&code, vec![0u8; 12345]).unwrap();
        let e = FirmwareImage::open(&FirmwareConfig {
            code: code.clone(),
            vars: None,
        })
        .unwrap_err();
        assert!(matches!(e, FirmwareError::UnknownSize { size: 12345, .. }));
        assert!(e.to_string().contains("3653632"), "{e}");
        // A blank 2M CODE image with no VARS beside it: a blank in-memory store.
        let code = dir.join("FAKE_CODE.fd");
        std::fs::write(&code, vec![0u8; 1_966_080]).unwrap();
        let img = FirmwareImage::open(&FirmwareConfig {
            code: code.clone(),
            vars: None,
        })
        .unwrap();
        assert_eq!((img.vars.len(), img.persistent), (131_072, false));
        assert!(img.vars.data().iter().all(|&b| b == 0xff));
        // With the default beside it, a copy of it.
        std::fs::write(dir.join("FAKE_VARS.fd"), vec![0x5a; 131_072]).unwrap();
        let img = FirmwareImage::open(&FirmwareConfig { code, vars: None }).unwrap();
        assert!(img.vars.data().iter().all(|&b| b == 0x5a));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
