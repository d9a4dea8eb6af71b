//! Multiboot (version 1, spec 0.6.96) loading: what kvm-unit-tests' x86 `*.flat` images and
//! other small kernels (GRUB-style test kernels, hobby OSes) are.
//!
//! An image is a multiboot image when a header lies 4-byte aligned in its first 8192 bytes:
//! `magic` 0x1BADB002, `flags`, and a `checksum` making the three sum to 0 (a magic whose
//! checksum does not hold is not a header and the search goes on). With flag bit 16 the header
//! carries the load addresses (the "a.out kludge", any file format: the file is copied from the
//! header's position backwards to `load_addr`); without it the image must be a 32-bit ELF, loaded
//! by its `PT_LOAD` program headers at their physical addresses and entered at `e_entry`.
//!
//! Requirements (flag bits 0–15) vfiovm meets: bit 0 (modules page aligned: the initramfs always
//! is) and bit 1 (memory information: always given). Any other requirement bit (bit 2, a video
//! mode, among them: vfiovm has no display) is refused, as the spec asks of a loader that cannot
//! meet one.
//!
//! Entry: 32-bit protected mode, paging off, flat 4 GiB code and data segments, interrupts off,
//! `eax` = 0x2BADB002 and `ebx` = the multiboot information (below). Everything loaded must lie
//! in one guest RAM region below 4 GiB and clear of what vfiovm writes for a multiboot boot
//! ([`RESERVED`]: the GDT and IDT page, the information page, the command line and module
//! string, the MP and ACPI tables from the EBDA to 1 MiB); kvm-unit-tests' `realmode.flat` loads
//! at 0x8000. A hostile image gets an error, never a write elsewhere.
//!
//! The information structure (at [`MULTIBOOT_INFO_START`]) has `mem_lower`/`mem_upper`
//! (flag 0), the command line (flag 2), the modules (flag 3: the initramfs is module 0, its
//! string the initramfs argument as given, as QEMU's `-initrd` is for multiboot kernels), the
//! memory map (flag 6: the e820 map of [`crate::boot::memory_map`]) and the boot loader's name
//! (flag 9, `"vfiovm"`).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::{memory_map, BootError, BootInfo, LoadedKernel, MemoryKind};
use crate::layout::{
    ram_regions, CMDLINE_START, EBDA_START, HIMEM_START, MULTIBOOT_INFO_START,
    MULTIBOOT_MMAP_MAX_ENTRIES, MULTIBOOT_MMAP_START, MULTIBOOT_MODS_START,
    MULTIBOOT_MOD_STRING_MAX, MULTIBOOT_MOD_STRING_START, ZERO_PAGE_START,
};
use crate::regs::EntryMode;

/// The header's magic.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// What the kernel finds in `eax` at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must lie in the image's first this many bytes.
pub const HEADER_SEARCH_LEN: usize = 8192;

/// Header flag: modules page aligned.
const HF_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: memory information wanted.
const HF_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: the a.out kludge address fields are valid.
const HF_AOUT_KLUDGE: u32 = 1 << 16;
/// Requirement bits vfiovm meets.
const HF_SUPPORTED_REQUIREMENTS: u32 = HF_PAGE_ALIGN | HF_MEMORY_INFO;

/// Info flag: `mem_lower`, `mem_upper`.
pub const INFO_MEMORY: u32 = 1 << 0;
/// Info flag: `cmdline`.
pub const INFO_CMDLINE: u32 = 1 << 2;
/// Info flag: `mods_count`, `mods_addr`.
pub const INFO_MODS: u32 = 1 << 3;
/// Info flag: `mmap_length`, `mmap_addr`.
pub const INFO_MMAP: u32 = 1 << 6;
/// Info flag: `boot_loader_name`.
pub const INFO_LOADER_NAME: u32 = 1 << 9;

/// Size of the information structure vfiovm writes (up to and including the VBE fields).
pub const INFO_SIZE: usize = 88;
/// Size of one module list entry.
pub const MOD_ENTRY_SIZE: u64 = 16;
/// Size of one memory map entry (its `size` field, 20, plus the field itself).
pub const MMAP_ENTRY_SIZE: u64 = 24;
/// Where the boot loader's name goes (inside the information page, after the structure).
const LOADER_NAME_START: u64 = MULTIBOOT_INFO_START + 0x60;
const LOADER_NAME: &[u8] = b"vfiovm\0";

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const PT_LOAD: u32 = 1;
const ELF32_EHDR_SIZE: usize = 52;
const ELF32_PHDR_SIZE: usize = 32;

/// Errors from loading a multiboot image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultibootError {
    /// A requirement bit vfiovm cannot meet.
    #[error("its header requires features vfiovm does not provide (flags {flags:#010x}; supported requirement bits: 0 and 1, not the video mode of bit 2 or bits 3-15)")]
    UnsupportedRequirements {
        /// The header's flags.
        flags: u32,
    },
    /// No a.out kludge and not a 32-bit little-endian x86 ELF.
    #[error("it has no load addresses in its header (flag bit 16) and is not a 32-bit x86 ELF")]
    NotElf32,
    /// The ELF headers do not fit the file or are malformed.
    #[error("its ELF headers are truncated or malformed ({0})")]
    BadElf(&'static str),
    /// The a.out kludge addresses are inconsistent with each other or the file.
    #[error("its header's load addresses are inconsistent ({0})")]
    BadAout(&'static str),
    /// Nothing to load.
    #[error("it has nothing to load (no PT_LOAD segment with a size)")]
    Empty,
    /// A part of the image lies outside usable guest RAM.
    #[error("it loads {len:#x} bytes at {addr:#x}, outside guest RAM below 4 GiB or over what vfiovm places below 1 MiB (give the guest more --memory, or link the image at 1 MiB or above)")]
    OutsideRam {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The module string does not fit.
    #[error(
        "the initramfs argument is {len} bytes; the multiboot module string holds at most {max}"
    )]
    ModuleStringTooLong {
        /// Its length.
        len: usize,
        /// The largest length accepted.
        max: usize,
    },
}

/// The a.out kludge address fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AoutKludge {
    /// Where the header itself is to be in memory.
    pub header_addr: u32,
    /// Where the text segment starts (the file is loaded from the corresponding offset).
    pub load_addr: u32,
    /// End of the data to load; 0: to the end of the file.
    pub load_end_addr: u32,
    /// End of the bss; 0: no bss.
    pub bss_end_addr: u32,
    /// Entry point.
    pub entry_addr: u32,
}

/// A multiboot header found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its offset in the file.
    pub offset: usize,
    /// Its flags.
    pub flags: u32,
    /// The load addresses, when flag bit 16 is set.
    pub aout: Option<AoutKludge>,
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Looks for a multiboot header in the first [`HEADER_SEARCH_LEN`] bytes of `image`. A header
/// whose a.out fields would run past the file's end counts as truncated: `BadAout`.
pub fn find_header(image: &[u8]) -> Result<Option<Header>, MultibootError> {
    let end = image.len().min(HEADER_SEARCH_LEN);
    let mut off = 0;
    while off + 12 <= end {
        let (Some(magic), Some(flags), Some(sum)) =
            (le32(image, off), le32(image, off + 4), le32(image, off + 8))
        else {
            break;
        };
        if magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(sum) == 0 {
            let aout = if flags & HF_AOUT_KLUDGE != 0 {
                let f = |i: usize| {
                    le32(image, off + 12 + 4 * i).ok_or(MultibootError::BadAout("header truncated"))
                };
                Some(AoutKludge {
                    header_addr: f(0)?,
                    load_addr: f(1)?,
                    load_end_addr: f(2)?,
                    bss_end_addr: f(3)?,
                    entry_addr: f(4)?,
                })
            } else {
                None
            };
            return Ok(Some(Header {
                offset: off,
                flags,
                aout,
            }));
        }
        off += 4;
    }
    Ok(None)
}

/// One piece to copy into guest memory: `file[offset..offset + filesz]` at `addr`, then zeros up
/// to `memsz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    addr: u64,
    offset: usize,
    filesz: usize,
    memsz: u64,
}

fn aout_segments(
    image: &[u8],
    hdr: &Header,
    a: &AoutKludge,
) -> Result<(Vec<Segment>, u64), MultibootError> {
    let bad = MultibootError::BadAout;
    if a.header_addr < a.load_addr {
        return Err(bad("header_addr is below load_addr"));
    }
    let back = (a.header_addr - a.load_addr) as usize;
    let offset = hdr
        .offset
        .checked_sub(back)
        .ok_or(bad("load_addr lies before the file's start"))?;
    let load_end = if a.load_end_addr == 0 {
        u64::from(a.load_addr) + (image.len() - offset) as u64
    } else {
        u64::from(a.load_end_addr)
    };
    if load_end < u64::from(a.load_addr) {
        return Err(bad("load_end_addr is below load_addr"));
    }
    let filesz = (load_end - u64::from(a.load_addr)) as usize;
    if offset.checked_add(filesz).is_none_or(|e| e > image.len()) {
        return Err(bad("load_end_addr lies past the file's end"));
    }
    let mem_end = if a.bss_end_addr == 0 {
        load_end
    } else if u64::from(a.bss_end_addr) < load_end {
        return Err(bad("bss_end_addr is below load_end_addr"));
    } else {
        u64::from(a.bss_end_addr)
    };
    let seg = Segment {
        addr: u64::from(a.load_addr),
        offset,
        filesz,
        memsz: mem_end - u64::from(a.load_addr),
    };
    Ok((vec![seg], u64::from(a.entry_addr)))
}

fn elf32_segments(image: &[u8]) -> Result<(Vec<Segment>, u64), MultibootError> {
    if image.len() < 6
        || image[..4] != ELF_MAGIC
        || image[4] != ELFCLASS32
        || image[5] != ELFDATA2LSB
    {
        return Err(MultibootError::NotElf32);
    }
    let bad = MultibootError::BadElf;
    if image.len() < ELF32_EHDR_SIZE {
        return Err(bad("file shorter than the ELF header"));
    }
    if le16(image, 18) != Some(EM_386) {
        return Err(bad("e_machine is not EM_386"));
    }
    let entry = le32(image, 24).ok_or(bad("e_entry"))?;
    let phoff = le32(image, 28).ok_or(bad("e_phoff"))? as usize;
    let phentsize = usize::from(le16(image, 42).ok_or(bad("e_phentsize"))?);
    let phnum = usize::from(le16(image, 44).ok_or(bad("e_phnum"))?);
    if phentsize < ELF32_PHDR_SIZE {
        return Err(bad("e_phentsize smaller than a program header"));
    }
    let table_end = phnum
        .checked_mul(phentsize)
        .and_then(|n| n.checked_add(phoff));
    if table_end.is_none_or(|e| e > image.len()) {
        return Err(bad("program headers past the file's end"));
    }
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let field = |n: usize| le32(image, ph + 4 * n).ok_or(bad("program header"));
        if field(0)? != PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) =
            (field(1)? as usize, field(3)?, field(4)? as usize, field(5)?);
        if filesz as u64 > u64::from(memsz) {
            return Err(bad("a segment's p_filesz is larger than its p_memsz"));
        }
        if offset.checked_add(filesz).is_none_or(|e| e > image.len()) {
            return Err(bad("a segment's data lies past the file's end"));
        }
        if memsz == 0 {
            continue;
        }
        segs.push(Segment {
            addr: u64::from(paddr),
            offset,
            filesz,
            memsz: u64::from(memsz),
        });
    }
    Ok((segs, u64::from(entry)))
}

/// What vfiovm writes below 1 MiB for a multiboot boot, `[start, end)`: the real-mode IVT page
/// with the boot GDT and IDT, the information structure with its module list and memory map,
/// the command line and the module string, the MP table (EBDA) and the ACPI tables up to 1 MiB.
/// A multiboot image may load anywhere else in RAM below 4 GiB.
pub const RESERVED: [(u64, u64); 4] = [
    (0, 0x1000),
    (MULTIBOOT_INFO_START, ZERO_PAGE_START),
    (
        CMDLINE_START,
        MULTIBOOT_MOD_STRING_START + MULTIBOOT_MOD_STRING_MAX as u64 + 1,
    ),
    (EBDA_START, HIMEM_START),
];

/// True when `[addr, addr + len)` lies in one RAM region of `mem`, below 4 GiB and clear of
/// [`RESERVED`].
fn placeable<M: GuestMemoryBackend>(mem: &M, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    RESERVED.iter().all(|&(s, e)| end <= s || addr >= e)
        && end <= 1 << 32
        && mem
            .find_region(GuestAddress(addr))
            .is_some_and(|r| end <= r.start_addr().0 + r.len())
}

fn zero<M: GuestMemoryBackend>(mem: &M, mut addr: u64, mut len: u64) -> Result<(), BootError> {
    const CHUNK: [u8; 4096] = [0; 4096];
    while len > 0 {
        let n = len.min(CHUNK.len() as u64);
        mem.write_slice(&CHUNK[..n as usize], GuestAddress(addr))
            .map_err(|_| BootError::GuestMemory("multiboot image"))?;
        addr += n;
        len -= n;
    }
    Ok(())
}

/// Loads the multiboot image `image` with header `hdr` into `mem`.
pub fn load<M: GuestMemoryBackend>(
    mem: &M,
    image: &[u8],
    hdr: &Header,
) -> Result<LoadedKernel, MultibootError> {
    let required = hdr.flags & 0xffff;
    if required & !HF_SUPPORTED_REQUIREMENTS != 0 {
        return Err(MultibootError::UnsupportedRequirements { flags: hdr.flags });
    }
    let (segs, entry) = match &hdr.aout {
        Some(a) => aout_segments(image, hdr, a)?,
        None => elf32_segments(image)?,
    };
    if segs.is_empty() {
        return Err(MultibootError::Empty);
    }
    // Check every segment before writing any.
    for s in &segs {
        if !placeable(mem, s.addr, s.memsz) {
            return Err(MultibootError::OutsideRam {
                addr: s.addr,
                len: s.memsz,
            });
        }
    }
    let mut kernel_end = 0;
    for s in &segs {
        let data = &image[s.offset..s.offset + s.filesz];
        // Placeable: these cannot fail.
        mem.write_slice(data, GuestAddress(s.addr))
            .map_err(|_| MultibootError::OutsideRam {
                addr: s.addr,
                len: s.memsz,
            })?;
        zero(mem, s.addr + s.filesz as u64, s.memsz - s.filesz as u64).map_err(|_| {
            MultibootError::OutsideRam {
                addr: s.addr,
                len: s.memsz,
            }
        })?;
        kernel_end = kernel_end.max(s.addr + s.memsz);
    }
    Ok(LoadedKernel {
        mode: EntryMode::Multiboot,
        entry,
        kernel_end,
        setup_header: None,
    })
}

/// Writes the multiboot information, its memory map, module list and strings; returns its
/// address (`ebx`). `module_string` names module 0 (the initramfs), when there is one.
pub fn write_info<M: GuestMemoryBackend>(
    mem: &M,
    info: &BootInfo,
    module_string: &str,
) -> Result<u64, BootError> {
    let err = |what| move |_| BootError::GuestMemory(what);
    let map = memory_map(info.mem_size);
    if map.len() > MULTIBOOT_MMAP_MAX_ENTRIES {
        return Err(BootError::GuestMemory("multiboot memory map"));
    }
    let mut mbi = [0u8; INFO_SIZE];
    let mut put = |off: usize, v: u32| mbi[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let mut flags = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;

    // mem_lower: KiB from 0 to the EBDA; mem_upper: KiB from 1 MiB to the first hole.
    let low_end = ram_regions(info.mem_size).first().map_or(0, |r| r.0 + r.1);
    put(4, (low_end.min(EBDA_START) >> 10) as u32);
    put(
        8,
        (low_end.saturating_sub(HIMEM_START) >> 10).min(u64::from(u32::MAX)) as u32,
    );
    put(16, CMDLINE_START as u32);

    for (i, r) in map.iter().enumerate() {
        let mut e = [0u8; MMAP_ENTRY_SIZE as usize];
        e[0..4].copy_from_slice(&20u32.to_le_bytes());
        e[4..12].copy_from_slice(&r.addr.to_le_bytes());
        e[12..20].copy_from_slice(&r.size.to_le_bytes());
        let kind = match r.kind {
            MemoryKind::Ram => 1u32,
            MemoryKind::Reserved => 2,
        };
        e[20..24].copy_from_slice(&kind.to_le_bytes());
        mem.write_slice(
            &e,
            GuestAddress(MULTIBOOT_MMAP_START + i as u64 * MMAP_ENTRY_SIZE),
        )
        .map_err(err("multiboot memory map"))?;
    }
    put(44, (map.len() as u64 * MMAP_ENTRY_SIZE) as u32);
    put(48, MULTIBOOT_MMAP_START as u32);

    if let Some(initrd) = info.initramfs {
        if module_string.len() > MULTIBOOT_MOD_STRING_MAX {
            return Err(BootError::Multiboot(MultibootError::ModuleStringTooLong {
                len: module_string.len(),
                max: MULTIBOOT_MOD_STRING_MAX,
            }));
        }
        let end = initrd
            .addr
            .checked_add(initrd.size)
            .filter(|&e| e <= 1 << 32)
            .ok_or(BootError::GuestMemory(
                "multiboot module (the initramfs is above 4 GiB)",
            ))?;
        let mut s = module_string.as_bytes().to_vec();
        s.push(0);
        mem.write_slice(&s, GuestAddress(MULTIBOOT_MOD_STRING_START))
            .map_err(err("multiboot module string"))?;
        let mut m = [0u8; MOD_ENTRY_SIZE as usize];
        m[0..4].copy_from_slice(&(initrd.addr as u32).to_le_bytes());
        m[4..8].copy_from_slice(&(end as u32).to_le_bytes());
        m[8..12].copy_from_slice(&(MULTIBOOT_MOD_STRING_START as u32).to_le_bytes());
        mem.write_slice(&m, GuestAddress(MULTIBOOT_MODS_START))
            .map_err(err("multiboot module list"))?;
        flags |= INFO_MODS;
        put(20, 1);
        put(24, MULTIBOOT_MODS_START as u32);
    }
    put(64, LOADER_NAME_START as u32);
    put(0, flags);
    mem.write_slice(LOADER_NAME, GuestAddress(LOADER_NAME_START))
        .map_err(err("multiboot boot loader name"))?;
    mem.write_slice(&mbi, GuestAddress(MULTIBOOT_INFO_START))
        .map_err(err("multiboot information"))?;
    Ok(MULTIBOOT_INFO_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::LoadedInitramfs;
    use vm_memory::GuestMemoryMmap;

    fn read<const N: usize>(m: &GuestMemoryMmap<()>, at: u64) -> [u8; N] {
        let mut b = [0u8; N];
        m.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }

    fn mem(size: u64) -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn header(flags: u32, aout: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in aout.into_iter().flatten() {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// A flat image: 0x40 bytes of padding, the header, code bytes 0xc3 to 0x1000, loaded at
    /// 2 MiB with 0x2000 of bss.
    fn aout_image() -> Vec<u8> {
        let base = 0x20_0000u32;
        let mut img = vec![0x90u8; 0x40];
        img.extend(header(
            HF_AOUT_KLUDGE | HF_MEMORY_INFO,
            Some([base + 0x40, base, base + 0x1000, base + 0x3000, base + 0x80]),
        ));
        img.resize(0x1000, 0xc3);
        img
    }

    /// A minimal ELF32 with one PT_LOAD of `data` at `paddr`, memsz `memsz`, and a multiboot
    /// header in its data.
    fn elf32(paddr: u32, memsz: u32, flags: u32) -> Vec<u8> {
        let mut data = header(flags, None);
        data.extend_from_slice(b"payload!");
        let mut img = vec![0u8; 0x54];
        img[..4].copy_from_slice(&ELF_MAGIC);
        img[4] = ELFCLASS32;
        img[5] = ELFDATA2LSB;
        img[6] = 1;
        img[16..18].copy_from_slice(&2u16.to_le_bytes());
        img[18..20].copy_from_slice(&EM_386.to_le_bytes());
        img[24..28].copy_from_slice(&(paddr + 12).to_le_bytes());
        img[28..32].copy_from_slice(&52u32.to_le_bytes());
        img[42..44].copy_from_slice(&32u16.to_le_bytes());
        img[44..46].copy_from_slice(&1u16.to_le_bytes());
        let ph = 52;
        let w = |img: &mut Vec<u8>, i: usize, v: u32| {
            img[ph + 4 * i..ph + 4 * i + 4].copy_from_slice(&v.to_le_bytes())
        };
        w(&mut img, 0, PT_LOAD);
        w(&mut img, 1, 0x54);
        w(&mut img, 2, paddr);
        w(&mut img, 3, paddr);
        w(&mut img, 4, data.len() as u32);
        w(&mut img, 5, memsz);
        img.extend(data);
        img
    }

    #[test]
    fn finds_the_header_only_with_a_valid_checksum_and_aligned() {
        let mut img = vec![0u8; 64];
        img.extend(header(0, None));
        assert_eq!(find_header(&img).unwrap().unwrap().offset, 64);
        // Bad checksum: not a header.
        let mut bad = img.clone();
        bad[64 + 8] ^= 1;
        assert_eq!(find_header(&bad).unwrap(), None);
        // Unaligned: not looked at.
        let mut un = vec![0u8; 66];
        un.extend(header(0, None));
        assert_eq!(find_header(&un).unwrap(), None);
        // Past 8 KiB: not looked at.
        let mut far = vec![0u8; HEADER_SEARCH_LEN];
        far.extend(header(0, None));
        assert_eq!(find_header(&far).unwrap(), None);
        // a.out flag with the fields cut off.
        let mut cut = header(HF_AOUT_KLUDGE, None);
        cut.extend_from_slice(&[0; 8]);
        assert!(matches!(find_header(&cut), Err(MultibootError::BadAout(_))));
    }

    #[test]
    fn loads_an_aout_kludge_image() {
        let m = mem(32 << 20);
        m.write_slice(&[0xee; 0x3000], GuestAddress(0x20_0000))
            .unwrap();
        let img = aout_image();
        let h = find_header(&img).unwrap().unwrap();
        let k = load(&m, &img, &h).unwrap();
        assert_eq!(
            (k.mode, k.entry, k.kernel_end),
            (EntryMode::Multiboot, 0x20_0080, 0x20_3000)
        );
        let mut got = vec![0u8; 0x1000];
        m.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(got, img);
        let bss: [u8; 0x2000] = read(&m, 0x20_1000);
        assert!(bss.iter().all(|&b| b == 0), "bss zeroed");
    }

    #[test]
    fn loads_below_1_mib_where_vfiovm_writes_nothing() {
        // Where kvm-unit-tests' realmode.flat goes.
        let m = mem(32 << 20);
        let img = elf32(0x8000, 0x2900, 0);
        let h = find_header(&img).unwrap().unwrap();
        let k = load(&m, &img, &h).unwrap();
        assert_eq!((k.entry, k.kernel_end), (0x800c, 0xa900));
        assert_eq!(read::<8>(&m, 0x800c), *b"payload!");
    }

    #[test]
    fn loads_an_elf32_image() {
        let m = mem(32 << 20);
        let img = elf32(0x40_0000, 0x1000, HF_PAGE_ALIGN);
        let h = find_header(&img).unwrap().unwrap();
        assert_eq!(h.offset, 0x54);
        let k = load(&m, &img, &h).unwrap();
        assert_eq!((k.entry, k.kernel_end), (0x40_000c, 0x40_1000));
        let mut got = [0u8; 8];
        m.read_slice(&mut got, GuestAddress(0x40_000c)).unwrap();
        assert_eq!(&got, b"payload!");
    }

    #[test]
    fn refuses_what_it_cannot_do_or_place() {
        let m = mem(32 << 20);
        let check = |img: Vec<u8>, want: &dyn Fn(&MultibootError) -> bool| {
            let h = find_header(&img).unwrap().unwrap();
            let e = load(&m, &img, &h).unwrap_err();
            assert!(want(&e), "{e:?}");
        };
        // Video mode wanted.
        check(elf32(0x40_0000, 0x1000, 1 << 2), &|e| {
            matches!(e, MultibootError::UnsupportedRequirements { .. })
        });
        // Over the information page, the command line, the ACPI tables; past RAM, past 4 GiB,
        // wrapping.
        for (addr, memsz) in [
            (0x5000u32, 0x1001u32),
            (0x1ff00, 0x200),
            (0xe_0000, 0x100),
            (0x1ff_f000, 0x2000),
            (0xffff_f000, 0x2000),
            (0x40_0000, 0xffff_ffff),
        ] {
            check(elf32(addr, memsz, 0), &|e| {
                matches!(e, MultibootError::OutsideRam { .. })
            });
        }
        // A header, but neither a.out kludge nor ELF32.
        let mut raw = vec![0u8; 16];
        raw.extend(header(0, None));
        check(raw, &|e| *e == MultibootError::NotElf32);
        // a.out: header_addr below load_addr; load_addr before the file; past the file's end;
        // bss below load_end.
        for a in [
            [0x20_0000, 0x20_0010, 0, 0, 0x20_0000],
            [0x20_0100, 0x20_0000, 0, 0, 0x20_0000],
            [0x20_0000, 0x20_0000, 0x20_9000, 0, 0x20_0000],
            [0x20_0000, 0x20_0000, 0x20_0020, 0x20_0010, 0x20_0000],
        ] {
            let mut img = header(HF_AOUT_KLUDGE, Some(a));
            img.resize(0x40, 0);
            check(img, &|e| matches!(e, MultibootError::BadAout(_)));
        }
        // Truncated program headers.
        let mut img = elf32(0x40_0000, 0x1000, 0);
        img[44..46].copy_from_slice(&0x100u16.to_le_bytes());
        check(img, &|e| matches!(e, MultibootError::BadElf(_)));
        // Nothing written by a refused image.
        let page: [u8; 16] = m.read_obj(GuestAddress(0x40_0000)).unwrap();
        assert_eq!(page, [0; 16]);
    }

    #[test]
    fn info_describes_memory_cmdline_and_module() {
        let m = mem(64 << 20);
        let info = BootInfo {
            mem_size: 64 << 20,
            cmdline: "x=1",
            initramfs: Some(LoadedInitramfs {
                addr: 0x300_0000,
                size: 0x1234,
            }),
            rsdp: None,
        };
        let at = write_info(&m, &info, "env.txt").unwrap();
        let b: [u8; INFO_SIZE] = read(&m, at);
        let f = |o| le32(&b, o).unwrap();
        assert_eq!(
            f(0),
            INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME
        );
        assert_eq!((f(4), f(8)), (639, (64 << 10) - 1024));
        assert_eq!(u64::from(f(16)), CMDLINE_START);
        assert_eq!(f(20), 1);
        let md: [u8; 16] = m.read_obj(GuestAddress(u64::from(f(24)))).unwrap();
        assert_eq!(
            (le32(&md, 0), le32(&md, 4)),
            (Some(0x300_0000), Some(0x300_1234))
        );
        let s: [u8; 8] = m
            .read_obj(GuestAddress(u64::from(le32(&md, 8).unwrap())))
            .unwrap();
        assert_eq!(&s, b"env.txt\0");
        let map = memory_map(64 << 20);
        assert_eq!(f(44) as usize, map.len() * 24);
        for (i, r) in map.iter().enumerate() {
            let e: [u8; 24] = m
                .read_obj(GuestAddress(u64::from(f(48)) + 24 * i as u64))
                .unwrap();
            assert_eq!(le32(&e, 0), Some(20));
            assert_eq!(u64::from_le_bytes(e[4..12].try_into().unwrap()), r.addr);
            assert_eq!(u64::from_le_bytes(e[12..20].try_into().unwrap()), r.size);
        }
        // Without a module: no MODS flag, no count.
        let at = write_info(
            &m,
            &BootInfo {
                initramfs: None,
                ..info
            },
            "",
        )
        .unwrap();
        let b: [u8; INFO_SIZE] = read(&m, at);
        assert_eq!(le32(&b, 0).unwrap() & INFO_MODS, 0);
        assert_eq!(le32(&b, 20), Some(0));
        // A module string too long.
        let long = "x".repeat(MULTIBOOT_MOD_STRING_MAX + 1);
        assert!(write_info(&m, &info, &long).is_err());
    }
}
