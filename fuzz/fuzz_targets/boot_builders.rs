//! arch's boot-time builders fed hostile sizes: the memory map (RAM size anywhere in the 64-bit
//! range), the 64-bit PCI window, the ACPI tables (vCPU count, window), the MP table, the
//! command line, a kernel image (fuzz bytes, or an ELF or bzImage skeleton with fuzz fields)
//! through the loader, the initramfs placement (sizes up to 4 GiB as sparse files), the Linux
//! zero page and the PVH start info — into guest memories of fuzz-chosen sizes. Errors are
//! fine; panics are not.
//!
//! Invariants on success: the memory map is sorted, disjoint, without wrapping entries, its RAM
//! inside the layout's RAM regions; the 64-bit window is 1 GiB aligned, above RAM and below the
//! physical address limit; every ACPI table lies in the ACPI area without overlap, with a
//! correct length and checksum, and the RSDP, XSDT and FADT point at the right tables; the MADT
//! lists one enabled local APIC per vCPU; the MP table's checksums hold and it fits the EBDA;
//! the command line lands NUL-terminated; an initramfs is page aligned, above the kernel and
//! HIMEM_START and below its limit; the zero page and PVH start info describe exactly
//! `memory_map`. A multiboot image that loads wrote nothing where vfiovm's own structures go below 1 MiB, ends inside guest RAM
//! and below 4 GiB, and its information structure (when written) has the magic flags, the
//! memory map of `memory_map` and module 0 exactly when there is an initramfs. Errors happen exactly when the documented preconditions do not hold (no vCPU,
//! invalid window, too many vCPUs for the MP table, NUL or overlong command line).
#![no_main]

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use arch::acpi::{build_tables, AcpiConfig, AcpiError};
use arch::boot::{
    load_initramfs, load_kernel, memory_map, write_cmdline, write_pvh_start_info, write_zero_page,
    BootError, BootInfo, LoadedInitramfs, LoadedKernel, MemoryKind, PVH_MAGIC,
};
use arch::layout::{self, mmio64_window, ram_end, ram_regions};
use arch::mptable::{build_mptable, setup_mptable, MPTABLE_MAX_CPUS};
use arch::multiboot;
use arch::regs::EntryMode;
use libfuzzer_sys::fuzz_target;
use linux_loader::loader::bootparam::{boot_params, setup_header};
use vfiovm_fuzz::input::{data, one_in};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

type Mem = GuestMemoryMmap<()>;

/// A RAM size: small, around the 32-bit hole and 4 GiB, or anything up to u64::MAX.
fn mem_size(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=5)? {
        0 => u.arbitrary()?,
        1 => u64::MAX - u.int_in_range(0..=(8u64 << 30))?,
        2 => layout::LOW_RAM_MAX_END.wrapping_add_signed(u.int_in_range(-4096..=4096)?),
        3 => u.int_in_range(0..=(1u64 << 24))?,
        _ => u.int_in_range(0..=(1u64 << 46))?,
    })
}

/// A guest memory: one region from 0 of a size between nothing useful and 64 MiB.
fn guest_memory(u: &mut Unstructured) -> Result<Option<Mem>> {
    let size = match u.int_in_range(0u8..=5)? {
        0 => 0x1000,
        1 => 0x1_0000,
        2 => 0xf_0000,
        3 => 0x10_0000,
        4 => 0x200_0000,
        _ => 0x400_0000,
    };
    Ok(Mem::from_ranges(&[(GuestAddress(0), size)]).ok())
}

fn le(b: &[u8], off: usize, len: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..len].copy_from_slice(&b[off..off + len]);
    u64::from_le_bytes(v)
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
}

fn check_memory_map(size: u64) {
    let map = memory_map(size);
    let ram = ram_regions(size);
    for w in map.windows(2) {
        assert!(w[0].addr <= w[1].addr, "memory map not sorted: {map:x?}");
        assert!(
            w[0].addr + w[0].size <= w[1].addr,
            "memory map entries overlap: {map:x?}"
        );
    }
    for r in &map {
        let end = r.addr.checked_add(r.size);
        assert!(end.is_some(), "memory map entry wraps: {r:x?}");
        if r.kind == MemoryKind::Ram {
            assert!(
                ram.iter()
                    .any(|&(s, l)| r.addr >= s && r.addr + r.size <= s + l),
                "RAM entry {r:x?} outside the RAM regions {ram:x?}"
            );
        }
    }
    let end = ram_end(size);
    for phys_bits in [36u8, 40, 46, 52, 57] {
        if let Some((start, len)) = mmio64_window(size, phys_bits) {
            assert!(
                len > 0 && start % layout::PCI_MMIO64_ALIGN == 0,
                "window {start:#x}"
            );
            assert!(
                start >= end && start >= layout::HIGH_RAM_START,
                "window below RAM"
            );
            let top = 1u64 << phys_bits.min(52);
            assert!(
                start.checked_add(len).is_some_and(|e| e <= top),
                "window past the address limit"
            );
        }
    }
}

fn check_acpi(u: &mut Unstructured, mem: Option<&Mem>) -> Result<()> {
    let num_cpus: u8 = u.arbitrary()?;
    let mmio64 = match u.int_in_range(0u8..=3)? {
        0 => None,
        1 => Some((u.arbitrary()?, u.arbitrary()?)),
        _ => mmio64_window(mem_size(u)?, u.int_in_range(32..=52)?),
    };
    let cfg = AcpiConfig { num_cpus, mmio64 };
    let tables = match build_tables(&cfg) {
        Ok(t) => t,
        Err(AcpiError::NoCpus) => {
            assert_eq!(num_cpus, 0);
            return Ok(());
        }
        Err(AcpiError::InvalidMmio64Window { start, size }) => {
            let ok = size > 0
                && start >= layout::HIGH_RAM_START
                && start
                    .checked_add(size - 1)
                    .is_some_and(|last| last < 1 << 52);
            assert!(!ok, "valid window {start:#x}+{size:#x} refused");
            return Ok(());
        }
        Err(e) => panic!("ACPI tables for {cfg:?}: {e}"),
    };
    assert!(num_cpus > 0);
    let mut placed: Vec<(u64, u64)> = Vec::new();
    for (name, t) in tables.iter() {
        let (a, l) = (t.addr.0, t.bytes.len() as u64);
        assert!(
            a >= layout::ACPI_START && a + l <= layout::ACPI_END,
            "{name} outside the ACPI area"
        );
        assert!(
            placed.iter().all(|&(s, e)| a + l <= s || a >= e),
            "{name} overlaps another table"
        );
        placed.push((a, a + l));
        match name {
            "RSDP" => {
                assert_eq!(&t.bytes[..8], b"RSD PTR ");
                assert_eq!(sum(&t.bytes[..20]), 0, "RSDP checksum");
                assert_eq!(sum(&t.bytes), 0, "RSDP extended checksum");
                assert_eq!(le(&t.bytes, 24, 8), tables.xsdt.addr.0, "RSDP -> XSDT");
            }
            "FACS" => assert_eq!(le(&t.bytes, 4, 4), l, "FACS length"),
            _ => {
                assert_eq!(&t.bytes[..4], name.as_bytes(), "signature");
                assert_eq!(le(&t.bytes, 4, 4), l, "{name} length");
                assert_eq!(sum(&t.bytes), 0, "{name} checksum");
            }
        }
    }
    let x = &tables.xsdt.bytes;
    let entries: Vec<u64> = (36..x.len()).step_by(8).map(|o| le(x, o, 8)).collect();
    assert_eq!(
        entries,
        vec![
            tables.fadt.addr.0,
            tables.madt.addr.0,
            tables.mcfg.addr.0,
            tables.waet.addr.0
        ],
        "XSDT entries"
    );
    let f = &tables.fadt.bytes;
    assert_eq!(le(f, 36, 4), tables.facs.addr.0, "FADT FIRMWARE_CTRL");
    assert_eq!(le(f, 40, 4), tables.dsdt.addr.0, "FADT DSDT");
    assert_eq!(le(f, 140, 8), tables.dsdt.addr.0, "FADT X_DSDT");
    let m = &tables.madt.bytes;
    let mut at = 44;
    let mut lapics = Vec::new();
    while at < m.len() {
        let len = usize::from(m[at + 1]);
        assert!(
            len >= 2 && at + len <= m.len(),
            "MADT entry at {at} malformed"
        );
        if m[at] == 0 {
            assert_eq!(le(m, at + 4, 4) & 1, 1, "disabled LAPIC");
            lapics.push(m[at + 3]);
        }
        at += len;
    }
    assert_eq!(
        lapics,
        (0..num_cpus).collect::<Vec<_>>(),
        "MADT local APICs"
    );
    if let Some(mem) = mem {
        match tables.write_to(mem) {
            Ok(rsdp) => {
                assert_eq!(rsdp, tables.rsdp.addr);
                for (name, t) in tables.iter() {
                    let mut b = vec![0u8; t.bytes.len()];
                    mem.read_slice(&mut b, t.addr).expect("just written");
                    assert_eq!(b, t.bytes, "{name} in guest memory");
                }
            }
            Err(AcpiError::GuestMemory { .. }) => {}
            Err(e) => panic!("writing ACPI tables: {e}"),
        }
    }
    Ok(())
}

fn check_mptable(u: &mut Unstructured, mem: Option<&Mem>) -> Result<()> {
    let n: u8 = u.arbitrary()?;
    match build_mptable(n) {
        Ok(t) => {
            assert!((1..=MPTABLE_MAX_CPUS).contains(&n));
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "MP floating pointer checksum");
            let cfg_addr = le(&t, 4, 4);
            assert_eq!(cfg_addr, layout::EBDA_START + 16);
            let len = le(&t, 16 + 4, 2) as usize;
            assert_eq!(16 + len, t.len(), "MP configuration table length");
            assert_eq!(sum(&t[16..]), 0, "MP configuration table checksum");
            assert!(
                layout::EBDA_START + t.len() as u64 <= layout::BIOS_AREA_START,
                "MP table past the EBDA"
            );
        }
        Err(_) => assert!(n == 0 || n > MPTABLE_MAX_CPUS, "{n} vCPUs refused"),
    }
    if let Some(mem) = mem {
        let _ = setup_mptable(mem, n);
    }
    Ok(())
}

fn check_cmdline(u: &mut Unstructured, mem: &Mem) -> Result<String> {
    let len = match u.int_in_range(0u8..=3)? {
        0 => u.int_in_range(0..=0x2_0000)?,
        _ => u.int_in_range(0..=64)?,
    };
    let mut bytes = data(u, len.min(64))?;
    bytes.resize(len, b'x');
    let s = String::from_utf8_lossy(&bytes).into_owned();
    let max = match u.int_in_range(0u8..=2)? {
        0 => None,
        1 => Some(u.int_in_range(0..=0x2_0000)?),
        _ => Some(u.arbitrary()?),
    };
    let limit = max.unwrap_or(usize::MAX).min(layout::CMDLINE_MAX_SIZE - 1);
    match write_cmdline(mem, &s, max) {
        Ok(()) => {
            assert!(
                !s.contains('\0') && s.len() <= limit,
                "command line accepted"
            );
            let mut back = vec![0u8; s.len() + 1];
            mem.read_slice(&mut back, GuestAddress(layout::CMDLINE_START))
                .expect("just written");
            assert_eq!(&back[..s.len()], s.as_bytes());
            assert_eq!(back[s.len()], 0, "command line not NUL-terminated");
        }
        Err(BootError::CmdlineNul) => assert!(s.contains('\0')),
        Err(BootError::CmdlineTooLong { len, max }) => {
            assert!(len > max && max == limit && !s.contains('\0'))
        }
        Err(BootError::GuestMemory(_)) => {}
        Err(e) => panic!("write_cmdline: {e}"),
    }
    Ok(s)
}

/// An empty scratch file (in /dev/shm when there is one), already unlinked so nothing is left
/// behind however the process ends.
fn scratch(name: &str) -> File {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    });
    let path = dir.join(format!("vfiovm-fuzz-{}-{name}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("scratch file");
    std::fs::remove_file(&path).expect("unlinking the scratch file");
    f
}

/// A multiboot header with fuzz flags (bit 16 or not) and, with bit 16, fuzz a.out addresses
/// near 1–4 MiB or anywhere.
fn multiboot_header(u: &mut Unstructured) -> Result<Vec<u8>> {
    let mut flags: u32 = if one_in(u, 4)? { u.arbitrary()? } else { 3 };
    let aout = one_in(u, 2)?;
    if aout {
        flags |= 1 << 16;
    } else {
        flags &= !(1 << 16);
    }
    let mut h = Vec::new();
    for v in [
        multiboot::HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(multiboot::HEADER_MAGIC.wrapping_add(flags)),
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    if aout {
        let base: u32 = if one_in(u, 4)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0x8_0000..=0x40_0000)?
        };
        for _ in 0..5 {
            let v: u32 = if one_in(u, 4)? {
                u.arbitrary()?
            } else {
                base.wrapping_add(u.int_in_range(0..=0x4000)?)
            };
            h.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(h)
}

/// A kernel image: raw fuzz bytes, or an ELF64 / bzImage / multiboot skeleton with fuzz fields.
fn kernel_image(u: &mut Unstructured) -> Result<Vec<u8>> {
    let len = u.int_in_range(0..=0x3000)?;
    let mut img = data(u, len)?;
    match u.int_in_range(0u8..=4)? {
        0 => {
            if img.len() < 0x240 {
                img.resize(0x240, 0);
            }
            img[..4].copy_from_slice(b"\x7fELF");
            img[4] = 2; // ELFCLASS64
            img[5] = 1; // little-endian
            img[6] = 1;
            img[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
            if one_in(u, 2)? {
                img[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
                img[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
                let n: u16 = u.int_in_range(0..=4)?;
                img[56..58].copy_from_slice(&n.to_le_bytes());
            }
        }
        1 => {
            if img.len() < 0x400 {
                img.resize(0x400, 0);
            }
            img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
            img[0x202..0x206].copy_from_slice(b"HdrS");
            if one_in(u, 2)? {
                img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
                img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // XLF_KERNEL_64
            }
        }
        2 => {
            // ELF32 with program headers near 1–4 MiB, a multiboot header at a 4-byte offset.
            if img.len() < 0x200 {
                img.resize(0x200, 0);
            }
            img[..4].copy_from_slice(b"\x7fELF");
            img[4] = 1; // ELFCLASS32
            img[5] = 1;
            img[18..20].copy_from_slice(&3u16.to_le_bytes()); // EM_386
            img[28..32].copy_from_slice(&52u32.to_le_bytes()); // e_phoff
            img[42..44].copy_from_slice(&32u16.to_le_bytes()); // e_phentsize
            let n: u16 = u.int_in_range(0..=3)?;
            img[44..46].copy_from_slice(&n.to_le_bytes());
            for i in 0..usize::from(n) {
                let ph = 52 + 32 * i;
                if one_in(u, 4)? {
                    continue; // fuzz bytes
                }
                let paddr: u32 = u.int_in_range(0x8_0000..=0x40_0000)?;
                let filesz: u32 = u.int_in_range(0..=0x400)?;
                let memsz: u32 = filesz + u.int_in_range(0..=0x4000)?;
                for (k, v) in [1u32, 0x100, paddr, paddr, filesz, memsz]
                    .iter()
                    .enumerate()
                {
                    img[ph + 4 * k..ph + 4 * k + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            let at = u.int_in_range(0x100..=0x1c0usize)? & !3;
            let h = multiboot_header(u)?;
            img.splice(at..at, h);
        }
        3 => {
            // A flat image with a multiboot header at a 4-byte offset.
            let at = u.int_in_range(0..=0x200usize)? & !3;
            if img.len() < at {
                img.resize(at, 0);
            }
            let h = multiboot_header(u)?;
            img.splice(at..at, h);
        }
        _ => {}
    }
    Ok(img)
}

fn run(u: &mut Unstructured) -> Result<()> {
    let size = mem_size(u)?;
    check_memory_map(size);
    let mem = guest_memory(u)?;
    check_acpi(u, mem.as_ref())?;
    check_mptable(u, mem.as_ref())?;
    let Some(mem) = mem else { return Ok(()) };
    let cmdline = check_cmdline(u, &mem)?;

    let img = kernel_image(u)?;
    let mut kf = scratch("kernel");
    kf.write_all(&img).expect("scratch write");
    let mut low_before = vec![0u8; layout::HIMEM_START as usize];
    let _ = mem.read_slice(&mut low_before, GuestAddress(0));
    let kernel = match load_kernel(&mem, &mut kf) {
        Ok(k) if k.mode == EntryMode::Multiboot => {
            let mut low = vec![0u8; layout::HIMEM_START as usize];
            let _ = mem.read_slice(&mut low, GuestAddress(0));
            for (s, e) in multiboot::RESERVED {
                let (s, e) = (s as usize, e as usize);
                assert!(
                    low[s..e] == low_before[s..e],
                    "a multiboot image wrote into {s:#x}..{e:#x}"
                );
            }
            let ram: u64 = mem.iter().map(|r| r.len()).sum();
            assert!(
                k.kernel_end <= ram && k.kernel_end <= 1 << 32,
                "multiboot image past RAM: {k:x?}"
            );
            k
        }
        Ok(k) => k,
        Err(_) => {
            let mut hdr = setup_header::default();
            let synthetic = one_in(u, 2)?;
            if synthetic {
                hdr.version = u.arbitrary()?;
                hdr.initrd_addr_max = u.arbitrary()?;
                hdr.cmdline_size = u.arbitrary()?;
            }
            LoadedKernel {
                mode: if synthetic {
                    EntryMode::Linux64
                } else {
                    EntryMode::Pvh
                },
                entry: u.arbitrary()?,
                kernel_end: u.arbitrary()?,
                setup_header: synthetic.then_some(hdr),
            }
        }
    };

    let initramfs = if one_in(u, 2)? {
        let mut f = scratch("initramfs");
        let len: u64 = match u.int_in_range(0u8..=3)? {
            0 => u.int_in_range(0..=4096)?,
            1 => u.int_in_range(0..=(64u64 << 20))?,
            _ => u.int_in_range(0..=(4u64 << 30))?,
        };
        f.set_len(len).expect("sparse scratch file");
        f.seek(SeekFrom::Start(0)).expect("seek");
        match load_initramfs(&mem, size, &mut f, &kernel) {
            Ok(i) => {
                let low_end = ram_regions(size)[0].1;
                let addr_max = match kernel.setup_header {
                    Some(h) if h.version >= 0x0203 && h.initrd_addr_max != 0 => {
                        u64::from(h.initrd_addr_max)
                    }
                    Some(_) => 0x37ff_ffff,
                    None => u64::MAX,
                };
                assert_eq!(i.size, len);
                assert_eq!(i.addr % 4096, 0, "initramfs not page aligned");
                assert!(i.addr >= kernel.kernel_end && i.addr >= layout::HIMEM_START);
                assert!(
                    i.addr + i.size <= low_end.min(addr_max.saturating_add(1)),
                    "initramfs {i:x?} past its limit"
                );
                Some(i)
            }
            Err(_) => None,
        }
    } else if one_in(u, 2)? {
        Some(LoadedInitramfs {
            addr: u.arbitrary()?,
            size: u.arbitrary()?,
        })
    } else {
        None
    };

    let rsdp = if one_in(u, 2)? {
        Some(u.arbitrary()?)
    } else {
        None
    };
    let info = BootInfo {
        mem_size: size,
        cmdline: &cmdline,
        initramfs,
        rsdp,
    };
    let map = memory_map(size);
    if let Ok(at) = write_zero_page(&mem, &kernel, &info) {
        let p: boot_params = mem.read_obj(GuestAddress(at)).expect("just written");
        let n = usize::from(p.e820_entries);
        assert_eq!(n, map.len(), "e820 entries");
        for (e, r) in p.e820_table[..n].iter().zip(&map) {
            let (a, s, t) = (e.addr, e.size, e.r#type);
            assert_eq!((a, s, t), (r.addr, r.size, r.kind as u32), "e820 entry");
        }
        let (ptr, csize) = (p.hdr.cmd_line_ptr, p.hdr.cmdline_size);
        assert_eq!(u64::from(ptr), layout::CMDLINE_START);
        assert_eq!(csize as usize, cmdline.len() + 1);
        if let Some(i) = initramfs {
            let (lo, hi) = (p.hdr.ramdisk_image, p.ext_ramdisk_image);
            assert_eq!(
                u64::from(lo) | (u64::from(hi) << 32),
                i.addr,
                "ramdisk address"
            );
            let (lo, hi) = (p.hdr.ramdisk_size, p.ext_ramdisk_size);
            assert_eq!(
                u64::from(lo) | (u64::from(hi) << 32),
                i.size,
                "ramdisk size"
            );
        }
    }
    if let Ok(at) = multiboot::write_info(&mem, &info, &cmdline) {
        let mut b = [0u8; multiboot::INFO_SIZE];
        mem.read_slice(&mut b, GuestAddress(at))
            .expect("just written");
        let flags = le(&b, 0, 4) as u32;
        let want = multiboot::INFO_MEMORY
            | multiboot::INFO_CMDLINE
            | multiboot::INFO_MMAP
            | multiboot::INFO_LOADER_NAME;
        assert_eq!(flags & !multiboot::INFO_MODS, want, "multiboot flags");
        assert_eq!(flags & multiboot::INFO_MODS != 0, initramfs.is_some());
        assert_eq!(le(&b, 20, 4), u64::from(initramfs.is_some()), "mods_count");
        assert_eq!(le(&b, 44, 4), map.len() as u64 * multiboot::MMAP_ENTRY_SIZE);
        let table = le(&b, 48, 4);
        for (i, r) in map.iter().enumerate() {
            let mut e = [0u8; 24];
            mem.read_slice(&mut e, GuestAddress(table + 24 * i as u64))
                .expect("just written");
            assert_eq!(
                (le(&e, 0, 4), le(&e, 4, 8), le(&e, 12, 8), le(&e, 20, 4)),
                (20, r.addr, r.size, r.kind as u64),
                "multiboot memory map entry {i}"
            );
        }
    }
    if let Ok(at) = write_pvh_start_info(&mem, &info) {
        let mut s = [0u8; 56];
        mem.read_slice(&mut s, GuestAddress(at))
            .expect("just written");
        assert_eq!(le(&s, 0, 4), u64::from(PVH_MAGIC));
        assert_eq!(le(&s, 12, 4), u64::from(initramfs.is_some()), "nr_modules");
        assert_eq!(le(&s, 24, 8), layout::CMDLINE_START);
        assert_eq!(le(&s, 32, 8), rsdp.unwrap_or(0));
        let table = le(&s, 40, 8);
        assert_eq!(le(&s, 48, 4), map.len() as u64, "PVH memory map entries");
        for (i, r) in map.iter().enumerate() {
            let mut e = [0u8; 24];
            mem.read_slice(&mut e, GuestAddress(table + 24 * i as u64))
                .expect("just written");
            assert_eq!(
                (le(&e, 0, 8), le(&e, 8, 8), le(&e, 16, 4)),
                (r.addr, r.size, r.kind as u64),
                "PVH memory map entry {i}"
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
