//! Loading a kernel and initramfs and writing the boot information the kernel reads.
//!
//! Three kernel formats, told apart by their contents (not their file names):
//! - ELF with a PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`): entered in 32-bit protected mode with
//!   `ebx` = `hvm_start_info` (memory map, command line, initramfs as module 0, RSDP address).
//! - ELF without a PVH note (a Linux `vmlinux`): entered at `e_entry` in 64-bit mode with
//!   `rsi` = the zero page (Linux boot protocol).
//! - bzImage: the protected-mode kernel is loaded at `code32_start` and entered in 64-bit mode
//!   at its 64-bit entry point (load address + 0x200), `rsi` = the zero page.
//! - Multiboot (v1): any other image with a multiboot header in its first 8 KiB: a 32-bit ELF
//!   (kvm-unit-tests' `*.flat`) or a flat image with the header's load addresses
//!   ([`crate::multiboot`]).
//!
//! Precedence: an ELF64 is always booted as PVH (note present) or Linux 64-bit, and an image
//! with the bzImage magic as a bzImage, whether or not it also has a multiboot header (QEMU also
//! prefers a bzImage and a PVH note to multiboot); the multiboot header is looked for in every
//! other image.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{
    ram_regions, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, PCI_ECAM_SIZE,
    PCI_ECAM_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START,
    ZERO_PAGE_START,
};
use crate::regs::EntryMode;

/// Errors from loading the kernel and initramfs and writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading the kernel image failed.
    #[error("cannot read the kernel image: {0}")]
    ReadKernel(#[source] std::io::Error),
    /// The image is neither an ELF nor a bzImage.
    #[error("unknown kernel format: not an ELF (vmlinux, PVH), a bzImage nor a multiboot image")]
    UnknownFormat,
    /// A 32-bit ELF image without a multiboot header.
    #[error("32-bit ELF kernels without a multiboot header are not supported: link it as ELF64 (objcopy -O elf64-x86-64 IN OUT; the PVH entry may stay 32-bit code) or give it a multiboot header")]
    Elf32,
    /// The multiboot image could not be loaded.
    #[error("the multiboot image could not be loaded: {0}")]
    Multiboot(#[source] crate::multiboot::MultibootError),
    /// The multiboot image is larger than guest RAM.
    #[error("the kernel image ({size} bytes) is larger than guest RAM ({mem} bytes): give the guest more --memory")]
    ImageTooLarge {
        /// The image's size.
        size: u64,
        /// Guest RAM.
        mem: u64,
    },
    /// The ELF has neither a PVH note nor a 64-bit entry we can use.
    #[error("the ELF kernel could not be loaded: {0} (is the file complete? vfiovm boots an x86-64 vmlinux or an ELF with a PVH note)")]
    Elf(#[source] linux_loader::loader::Error),
    /// The bzImage could not be loaded.
    #[error("the bzImage could not be loaded: {0} (is the file a complete x86 bzImage?)")]
    BzImage(#[source] linux_loader::loader::Error),
    /// The bzImage is too old or not a 64-bit kernel.
    #[error("the bzImage does not support the 64-bit boot protocol (needs boot protocol 2.12+ with XLF_KERNEL_64; this one has version {version:#x}, xloadflags {xloadflags:#x})")]
    BzImageNot64Bit {
        /// Boot protocol version from the setup header.
        version: u16,
        /// `xloadflags` from the setup header.
        xloadflags: u16,
    },
    /// The kernel command line is too long.
    #[error("the kernel command line is {len} bytes; at most {max} fit: shorten --cmdline")]
    CmdlineTooLong {
        /// Its length, without the NUL.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
    /// The kernel command line has a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Reading the initramfs failed.
    #[error("cannot read the initramfs: {0}")]
    ReadInitramfs(#[source] std::io::Error),
    /// The initramfs does not fit in guest RAM.
    #[error("the initramfs ({size} bytes) does not fit in guest RAM between the kernel's end ({kernel_end:#x}) and {limit:#x}: give the guest more --memory")]
    InitramfsTooLarge {
        /// Initramfs size.
        size: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
        /// Highest address the initramfs may end at.
        limit: u64,
    },
    /// Writing a boot structure to guest memory failed.
    #[error("guest memory is too small for the {0}")]
    GuestMemory(&'static str),
}

/// `e820`/PVH memory types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// One entry of the guest's memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What it is.
    pub kind: MemoryKind,
}

/// The memory map the guest is told about: RAM, the EBDA/BIOS area (reserved; the MP and ACPI
/// tables live there), and the ECAM window (reserved, so Linux trusts MCFG).
pub fn memory_map(mem_size: u64) -> Vec<MemoryRegion> {
    let mut map = Vec::new();
    for (start, len) in ram_regions(mem_size) {
        let end = start + len;
        if start == 0 {
            map.push(region(0, EBDA_START.min(end), MemoryKind::Ram));
            if end > EBDA_START {
                map.push(region(
                    EBDA_START,
                    HIMEM_START - EBDA_START,
                    MemoryKind::Reserved,
                ));
            }
            if end > HIMEM_START {
                map.push(region(HIMEM_START, end - HIMEM_START, MemoryKind::Ram));
            }
        } else {
            map.push(region(start, len, MemoryKind::Ram));
        }
    }
    map.push(region(PCI_ECAM_START, PCI_ECAM_SIZE, MemoryKind::Reserved));
    map.sort_by_key(|r| r.addr);
    map
}

fn region(addr: u64, size: u64, kind: MemoryKind) -> MemoryRegion {
    MemoryRegion { addr, size, kind }
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// How the boot vCPU enters it.
    pub mode: EntryMode,
    /// Entry point (guest physical).
    pub entry: u64,
    /// First byte after the kernel image.
    pub kernel_end: u64,
    /// The bzImage setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS32: u8 = 1;
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
const XLF_KERNEL_64: u16 = 1;
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Boot protocol 2.12 introduced `xloadflags`.
const BOOT_PROTOCOL_XLOADFLAGS: u16 = 0x020c;

/// Loads `kernel` into `mem`, choosing the entry protocol from the image's format.
pub fn load_kernel<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
) -> Result<LoadedKernel, BootError> {
    let mut head = vec![0u8; crate::multiboot::HEADER_SEARCH_LEN];
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    let n = read_up_to(kernel, &mut head).map_err(BootError::ReadKernel)?;
    head.truncate(n);
    let elf = n >= 4 && head[..4] == ELF_MAGIC;
    let elf32 = elf && n >= 5 && head[4] == ELFCLASS32;
    let bzimage = head.get(BZIMAGE_MAGIC_OFFSET as usize..BZIMAGE_MAGIC_OFFSET as usize + 4)
        == Some(&BZIMAGE_MAGIC[..]);
    if (!elf || elf32) && !bzimage {
        match crate::multiboot::find_header(&head) {
            Ok(Some(_)) => return load_multiboot(mem, kernel),
            Ok(None) => {}
            Err(e) => return Err(BootError::Multiboot(e)),
        }
    }
    if elf {
        if elf32 {
            return Err(BootError::Elf32);
        }
        let r = Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
            .map_err(BootError::Elf)?;
        let (mode, entry) = match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => (EntryMode::Pvh, addr.0),
            _ => (EntryMode::Linux64, r.kernel_load.0),
        };
        return Ok(LoadedKernel {
            mode,
            entry,
            kernel_end: r.kernel_end,
            setup_header: None,
        });
    }
    let mut magic = [0u8; 4];
    kernel
        .seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))
        .map_err(BootError::ReadKernel)?;
    if read_up_to(kernel, &mut magic).map_err(BootError::ReadKernel)? != 4 || magic != BZIMAGE_MAGIC
    {
        return Err(BootError::UnknownFormat);
    }
    let r = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::BzImage)?;
    let hdr = r.setup_header.ok_or(BootError::UnknownFormat)?;
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < BOOT_PROTOCOL_XLOADFLAGS || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::BzImageNot64Bit {
            version,
            xloadflags,
        });
    }
    // The decompressor needs init_size bytes from the load address.
    let kernel_end = r.kernel_end.max(r.kernel_load.0 + u64::from(hdr.init_size));
    Ok(LoadedKernel {
        mode: EntryMode::Linux64,
        entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        kernel_end,
        setup_header: Some(hdr),
    })
}

/// Reads the whole multiboot image (it must fit in guest RAM) and loads it.
fn load_multiboot<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &mut File,
) -> Result<LoadedKernel, BootError> {
    // Its size by seeking (no fstat): a reboot in place loads it again under the VMM thread's
    // seccomp filter, which allows lseek and read on the descriptor it has.
    let size = kernel
        .seek(SeekFrom::End(0))
        .map_err(BootError::ReadKernel)?;
    let ram: u64 = mem.iter().map(|r| r.len()).sum();
    if size > ram {
        return Err(BootError::ImageTooLarge { size, mem: ram });
    }
    let mut image = Vec::with_capacity(size as usize);
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    kernel
        .take(size)
        .read_to_end(&mut image)
        .map_err(BootError::ReadKernel)?;
    let hdr = crate::multiboot::find_header(&image)
        .map_err(BootError::Multiboot)?
        .ok_or(BootError::UnknownFormat)?;
    crate::multiboot::load(mem, &image, &hdr).map_err(BootError::Multiboot)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Where the initramfs went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitramfs {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads the initramfs page-aligned at the top of RAM below 4 GiB (and below the kernel's
/// `initrd_addr_max`), above the kernel.
pub fn load_initramfs<M: GuestMemoryBackend>(
    mem: &M,
    mem_size: u64,
    initramfs: &mut File,
    kernel: &LoadedKernel,
) -> Result<LoadedInitramfs, BootError> {
    // Its size by seeking (no fstat), as load_multiboot does.
    let size = initramfs
        .seek(SeekFrom::End(0))
        .map_err(BootError::ReadInitramfs)?;
    let low_end = ram_regions(mem_size)[0].1;
    // Boot protocol: before 2.03 the limit was 0x37FFFFFF; later headers say.
    let addr_max = match kernel.setup_header {
        Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        Some(_) => 0x37ff_ffff,
        None => u64::MAX,
    };
    let limit = low_end.min(addr_max.saturating_add(1));
    let too_large = BootError::InitramfsTooLarge {
        size,
        kernel_end: kernel.kernel_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or(too_large)? & !0xfff;
    if addr < kernel.kernel_end || addr < HIMEM_START {
        return Err(BootError::InitramfsTooLarge {
            size,
            kernel_end: kernel.kernel_end,
            limit,
        });
    }
    initramfs
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadInitramfs)?;
    mem.read_exact_volatile_from(GuestAddress(addr), initramfs, size as usize)
        .map_err(|e| BootError::ReadInitramfs(std::io::Error::other(e.to_string())))?;
    Ok(LoadedInitramfs { addr, size })
}

/// Writes the NUL-terminated command line at `CMDLINE_START`. `max_len` is the kernel's limit
/// (the bzImage's `cmdline_size`) when it has one.
pub fn write_cmdline<M: GuestMemoryBackend>(
    mem: &M,
    cmdline: &str,
    max_len: Option<usize>,
) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let max = max_len.unwrap_or(usize::MAX).min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|_| BootError::GuestMemory("command line"))
}

/// What the boot information describes.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo<'a> {
    /// Guest RAM size.
    pub mem_size: u64,
    /// The command line (already written by [`write_cmdline`]).
    pub cmdline: &'a str,
    /// The initramfs, if any.
    pub initramfs: Option<LoadedInitramfs>,
    /// The ACPI RSDP address, if tables were written.
    pub rsdp: Option<u64>,
}

/// Writes the PVH `hvm_start_info`, its module list and memory map; returns its address (`ebx`).
pub fn write_pvh_start_info<M: GuestMemoryBackend>(
    mem: &M,
    info: &BootInfo,
) -> Result<u64, BootError> {
    let map = memory_map(info.mem_size);
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(BootError::GuestMemory("PVH memory map"));
    }
    for (i, r) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: r.addr,
            size: r.size,
            type_: r.kind as u32,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(PVH_MEMMAP_START + (i * 24) as u64))
            .map_err(|_| BootError::GuestMemory("PVH memory map"))?;
    }
    let mut start = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        rsdp_paddr: info.rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(initrd) = info.initramfs {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(|_| BootError::GuestMemory("PVH module list"))?;
        start.nr_modules = 1;
        start.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(start, GuestAddress(PVH_INFO_START))
        .map_err(|_| BootError::GuestMemory("PVH start info"))?;
    Ok(PVH_INFO_START)
}

/// `hvm_start_info.magic` ("xEn3" with the high bit of the first byte set).
pub const PVH_MAGIC: u32 = 0x336e_c578;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const E820_MAX_ENTRIES: usize = 128;

/// Writes the Linux zero page (`boot_params`); returns its address (`rsi`).
pub fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    info: &BootInfo,
) -> Result<u64, BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = info.cmdline.len() as u32 + 1;
    if let Some(initrd) = info.initramfs {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    params.acpi_rsdp_addr = info.rsdp.unwrap_or(0);
    let map = memory_map(info.mem_size);
    if map.len() > E820_MAX_ENTRIES {
        return Err(BootError::GuestMemory("e820 table"));
    }
    for (i, r) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: r.addr,
            size: r.size,
            r#type: r.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(|_| BootError::GuestMemory("zero page"))?;
    Ok(ZERO_PAGE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn memory_map_small_guest() {
        let m = memory_map(256 << 20);
        assert_eq!(m[0], region(0, EBDA_START, MemoryKind::Ram));
        assert_eq!(
            m[1],
            region(EBDA_START, HIMEM_START - EBDA_START, MemoryKind::Reserved)
        );
        assert_eq!(
            m[2],
            region(HIMEM_START, (256 << 20) - HIMEM_START, MemoryKind::Ram)
        );
        assert_eq!(m[3].addr, PCI_ECAM_START);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn memory_map_large_guest_has_high_ram() {
        let m = memory_map(6 << 30);
        let ram: u64 = m
            .iter()
            .filter(|r| r.kind == MemoryKind::Ram)
            .map(|r| r.size)
            .sum();
        // Everything but the EBDA/BIOS area is usable RAM.
        assert_eq!(ram, (6 << 30) - (HIMEM_START - EBDA_START));
        assert!(m.windows(2).all(|w| w[0].addr + w[0].size <= w[1].addr));
        assert_eq!(m.last().unwrap().addr, crate::layout::HIGH_RAM_START);
    }

    fn temp_file(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "vfiovm-boot-test-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    fn mem(size: u64) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    #[test]
    fn rejects_unknown_and_elf32() {
        let m = mem(32 << 20);
        let mut f = temp_file(&[0u8; 4096]);
        assert!(matches!(
            load_kernel(&m, &mut f),
            Err(BootError::UnknownFormat)
        ));
        let mut f = temp_file(b"");
        assert!(matches!(
            load_kernel(&m, &mut f),
            Err(BootError::UnknownFormat)
        ));
        let mut elf32 = vec![0u8; 64];
        elf32[..5].copy_from_slice(b"\x7fELF\x01");
        let mut f = temp_file(&elf32);
        assert!(matches!(load_kernel(&m, &mut f), Err(BootError::Elf32)));
    }

    #[test]
    fn multiboot_image_larger_than_ram() {
        let m = mem(16 << 20);
        let mut img = vec![0u8; 64];
        let flags = 0u32;
        for v in [
            crate::multiboot::HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(crate::multiboot::HEADER_MAGIC),
        ] {
            img.extend_from_slice(&v.to_le_bytes());
        }
        let path = std::env::temp_dir().join(format!("vfiovm-mb-large-{}", std::process::id()));
        std::fs::write(&path, &img).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(17 << 20)
            .unwrap();
        let mut f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            load_kernel(&m, &mut f),
            Err(BootError::ImageTooLarge { size, mem }) if size == 17 << 20 && mem == 16 << 20
        ));
        // The same header in a small file: found, but neither ELF32 nor a.out.
        let mut f = temp_file(&img);
        assert!(matches!(
            load_kernel(&m, &mut f),
            Err(BootError::Multiboot(
                crate::multiboot::MultibootError::NotElf32
            ))
        ));
    }

    #[test]
    fn rejects_old_bzimage() {
        let m = mem(32 << 20);
        let mut img = vec![0u8; 0x2000];
        img[0x1f1] = 1; // setup_sects
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x0200u16.to_le_bytes());
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        let mut f = temp_file(&img);
        assert!(matches!(
            load_kernel(&m, &mut f),
            Err(BootError::BzImageNot64Bit { version: 0x200, .. })
        ));
    }

    #[test]
    fn initramfs_goes_to_top_of_low_ram() {
        let m = mem(32 << 20);
        let k = LoadedKernel {
            mode: EntryMode::Pvh,
            entry: HIMEM_START,
            kernel_end: 0x20_0000,
            setup_header: None,
        };
        let mut f = temp_file(&[0xabu8; 10_000]);
        let i = load_initramfs(&m, 32 << 20, &mut f, &k).unwrap();
        assert_eq!(i.size, 10_000);
        assert_eq!(i.addr % 4096, 0);
        assert!(i.addr + i.size <= 32 << 20);
        let b: u8 = m.read_obj(GuestAddress(i.addr + 9_999)).unwrap();
        assert_eq!(b, 0xab);
        // Too large: collides with the kernel.
        let mut f = temp_file(&vec![0u8; 31 << 20]);
        assert!(matches!(
            load_initramfs(&m, 32 << 20, &mut f, &k),
            Err(BootError::InitramfsTooLarge { .. })
        ));
    }

    #[test]
    fn cmdline_limits() {
        let m = mem(32 << 20);
        write_cmdline(&m, "console=ttyS0", None).unwrap();
        let mut buf = [0u8; 14];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
        assert!(matches!(
            write_cmdline(&m, "abcdef", Some(5)),
            Err(BootError::CmdlineTooLong { len: 6, max: 5 })
        ));
        assert!(matches!(
            write_cmdline(&m, "a\0b", None),
            Err(BootError::CmdlineNul)
        ));
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(write_cmdline(&m, &long, None).is_err());
    }

    #[test]
    fn pvh_start_info_and_zero_page() {
        let m = mem(64 << 20);
        let info = BootInfo {
            mem_size: 64 << 20,
            cmdline: "a=b",
            initramfs: Some(LoadedInitramfs {
                addr: 0x300_0000,
                size: 0x1234,
            }),
            rsdp: Some(0xe_0000),
        };
        let at = write_pvh_start_info(&m, &info).unwrap();
        let s: hvm_start_info = m.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(
            (s.magic, s.nr_modules, s.rsdp_paddr),
            (PVH_MAGIC, 1, 0xe_0000)
        );
        assert_eq!(s.memmap_entries as usize, memory_map(64 << 20).len());
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(s.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));

        let k = LoadedKernel {
            mode: EntryMode::Linux64,
            entry: 0x100_0000,
            kernel_end: 0x200_0000,
            setup_header: None,
        };
        let at = write_zero_page(&m, &k, &info).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(u64::from(p.hdr.cmd_line_ptr), CMDLINE_START);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe_0000);
        assert_eq!(p.e820_entries as usize, memory_map(64 << 20).len());
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
    }
}
