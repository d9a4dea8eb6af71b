//! The table loader, executed by an interpreter that follows OVMF's `AcpiPlatformDxe` rules
//! (its checks, both passes, what it installs), over tables built with `acpi_tables` — the
//! set vfiovm's `arch` crate builds, and a hand-made set with an SSDT — read from fw_cfg by
//! DMA as OVMF reads them.

use std::collections::BTreeMap;

use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vfiovm_arch::acpi::{build_tables, AcpiConfig, AcpiTables};

use super::{fw_cfg_with_ram, Guest};
use crate::firmware::table_loader::ENTRY_LEN;
use crate::firmware::{
    build_acpi, offsets, AcpiTable, TableLoader, TableLoaderError, Zone, ACPI_RSDP_FILE,
    TABLE_LOADER_FILE,
};

fn le(bytes: &[u8], at: usize, len: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..len].copy_from_slice(&bytes[at..at + len]);
    u64::from_le_bytes(v)
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b))
}

fn name(field: &[u8]) -> Result<String, String> {
    if field[55] != 0 {
        return Err("malformed file name".into());
    }
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    Ok(String::from_utf8_lossy(&field[..end]).into_owned())
}

/// A file OVMF has downloaded into memory it allocated.
#[derive(Debug)]
struct Blob {
    base: u64,
    data: Vec<u8>,
}

/// What the firmware ends up with.
#[derive(Debug)]
struct Loaded {
    blobs: BTreeMap<String, Blob>,
    /// Installed tables: (signature, address), in installation order.
    installed: Vec<(String, u64)>,
}

impl Loaded {
    /// The bytes at `addr` (inside some blob).
    fn at(&self, addr: u64, len: usize) -> &[u8] {
        for b in self.blobs.values() {
            if addr >= b.base && addr + len as u64 <= b.base + b.data.len() as u64 {
                let o = (addr - b.base) as usize;
                return &b.data[o..o + len];
            }
        }
        panic!("{addr:#x}+{len} is in no blob");
    }

    fn table(&self, addr: u64) -> &[u8] {
        let len = le(self.at(addr, 8), 4, 4) as usize;
        self.at(addr, len)
    }

    fn installed_at(&self, sig: &str) -> u64 {
        let hits: Vec<u64> = self
            .installed
            .iter()
            .filter(|(s, _)| s == sig)
            .map(|&(_, a)| a)
            .collect();
        assert_eq!(hits.len(), 1, "{sig} installed {} times", hits.len());
        hits[0]
    }
}

/// Runs `etc/table-loader` as OVMF does: reads the script and the files through fw_cfg DMA,
/// then the first pass (allocate, patch pointers, checksums, each checked as OVMF checks it)
/// and the second (install what every pointer reaches).
fn run_loader(g: &mut Guest) -> Result<Loaded, String> {
    let script = g
        .read_file_dma(TABLE_LOADER_FILE)
        .ok_or("no etc/table-loader")?;
    if script.len() % ENTRY_LEN != 0 {
        return Err("script size is not a multiple of 128".into());
    }
    let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
    // Page allocations below 4 GiB, downwards, as AllocatePages(MaxAddress) tends to do.
    let mut next_top: u64 = 0x7fff_0000;
    for e in script.chunks(ENTRY_LEN) {
        match le(e, 0, 4) {
            1 => {
                let file = name(&e[4..60])?;
                let align = le(e, 60, 4);
                if align > 4096 {
                    return Err(format!("unsupported alignment {align}"));
                }
                let data = g.read_file_dma(&file).ok_or(format!("no file {file}"))?;
                let pages = (data.len() as u64).div_ceil(4096).max(1);
                next_top -= pages * 4096;
                if blobs.contains_key(&file) {
                    return Err(format!("duplicated file {file}"));
                }
                assert_eq!(next_top % align.max(1), 0);
                blobs.insert(
                    file,
                    Blob {
                        base: next_top,
                        data,
                    },
                );
            }
            2 => {
                let dest = name(&e[4..60])?;
                let src = name(&e[60..116])?;
                let offset = le(e, 116, 4) as usize;
                let size = usize::from(e[120]);
                let src_blob = blobs.get(&src).ok_or(format!("unknown {src}"))?;
                let (src_base, src_len) = (src_blob.base, src_blob.data.len() as u64);
                let d = blobs.get_mut(&dest).ok_or(format!("unknown {dest}"))?;
                if !matches!(size, 1 | 2 | 4 | 8)
                    || d.data.len() < size
                    || d.data.len() - size < offset
                {
                    return Err(format!("invalid pointer location or size in {dest}"));
                }
                let value = le(&d.data, offset, size);
                if value >= src_len {
                    return Err(format!("invalid pointer value in {dest}"));
                }
                let value = value + src_base;
                if size < 8 && value >> (size * 8) != 0 {
                    return Err("relocated pointer unrepresentable".into());
                }
                d.data[offset..offset + size].copy_from_slice(&value.to_le_bytes()[..size]);
            }
            3 => {
                let file = name(&e[4..60])?;
                let result = le(e, 60, 4) as usize;
                let start = le(e, 64, 4) as usize;
                let length = le(e, 68, 4) as usize;
                let b = blobs.get_mut(&file).ok_or(format!("unknown {file}"))?;
                if b.data.len() <= result || b.data.len() < length || b.data.len() - length < start
                {
                    return Err(format!("invalid checksum range in {file}"));
                }
                b.data[result] = 0u8.wrapping_sub(sum(&b.data[start..start + length]));
            }
            _ => {}
        }
    }
    let mut loaded = Loaded {
        blobs,
        installed: Vec::new(),
    };
    let mut seen = Vec::new();
    for e in script.chunks(ENTRY_LEN).filter(|e| le(e, 0, 4) == 2) {
        let dest = &loaded.blobs[&name(&e[4..60])?];
        let src = &loaded.blobs[&name(&e[60..116])?];
        let value = le(&dest.data, le(e, 116, 4) as usize, usize::from(e[120]));
        assert!(value >= src.base && value < src.base + src.data.len() as u64);
        if seen.contains(&value) {
            continue;
        }
        seen.push(value);
        let o = (value - src.base) as usize;
        let remaining = src.data.len() - o;
        let t = &src.data[o..];
        let len = if remaining >= 8 {
            le(t, 4, 4) as usize
        } else {
            0
        };
        let sig = String::from_utf8_lossy(&t[..4.min(remaining)]).into_owned();
        if remaining >= 64 && sig == "FACS" && (64..=remaining).contains(&len) {
            loaded.installed.push((sig, value));
        } else if remaining >= 36
            && (36..=remaining).contains(&len)
            && sum(&t[..len]) == 0
            && sig != "RSDT"
            && sig != "XSDT"
        {
            // RSDT and XSDT are recognised and skipped: OVMF builds its own.
            loaded.installed.push((sig, value));
        }
    }
    Ok(loaded)
}

/// The arch crate's tables as loader input: XSDT first, its entries and the FADT's pointers
/// found by the addresses arch put in them.
fn from_arch(t: &AcpiTables) -> (AcpiTable, Vec<AcpiTable>) {
    let list = [
        &t.xsdt, &t.fadt, &t.facs, &t.dsdt, &t.madt, &t.mcfg, &t.waet,
    ];
    let index = |addr: u64| {
        list.iter()
            .position(|x| x.addr.0 == addr)
            .unwrap_or_else(|| panic!("no table at {addr:#x}"))
    };
    let mut xsdt = AcpiTable::new(t.xsdt.bytes.clone());
    for at in (offsets::SDT_HEADER_LEN as usize..t.xsdt.bytes.len()).step_by(8) {
        xsdt = xsdt.with_pointer(at as u32, 8, index(le(&t.xsdt.bytes, at, 8)));
    }
    let fadt = AcpiTable::new(t.fadt.bytes.clone())
        .with_pointer(offsets::FADT_FIRMWARE_CTRL, 4, index(t.facs.addr.0))
        .with_pointer(offsets::FADT_DSDT, 4, index(t.dsdt.addr.0))
        .with_pointer(offsets::FADT_X_FIRMWARE_CTRL, 8, index(t.facs.addr.0))
        .with_pointer(offsets::FADT_X_DSDT, 8, index(t.dsdt.addr.0));
    let rest =
        [&t.facs, &t.dsdt, &t.madt, &t.mcfg, &t.waet].map(|x| AcpiTable::new(x.bytes.clone()));
    let mut tables = vec![xsdt, fadt];
    tables.extend(rest);
    let rsdp = AcpiTable::new(t.rsdp.bytes.clone()).with_pointer(offsets::RSDP_XSDT, 8, 0);
    (rsdp, tables)
}

/// `original` and `loaded` are equal except at the given byte ranges.
fn same_except(original: &[u8], loaded: &[u8], skip: &[(usize, usize)]) {
    assert_eq!(original.len(), loaded.len());
    for (i, (a, b)) in original.iter().zip(loaded).enumerate() {
        if !skip.iter().any(|&(s, l)| (s..s + l).contains(&i)) {
            assert_eq!(
                a,
                b,
                "byte {i} of {}",
                String::from_utf8_lossy(&original[..4])
            );
        }
    }
}

#[test]
fn ovmf_installs_every_arch_table_with_right_pointers_and_checksums() {
    for cpus in [1, 4, 255] {
        let arch = build_tables(&AcpiConfig {
            num_cpus: cpus,
            mmio64: Some((1 << 36, 1 << 36)),
        })
        .unwrap();
        let (rsdp, tables) = from_arch(&arch);
        let files = build_acpi(rsdp, &tables).unwrap();
        let mut dev = fw_cfg_with_ram();
        dev.add_acpi(files).unwrap();
        let mut g = Guest::new(dev);
        let l = run_loader(&mut g).unwrap();

        let mut sigs: Vec<&str> = l.installed.iter().map(|(s, _)| s.as_str()).collect();
        sigs.sort();
        assert_eq!(
            sigs,
            ["APIC", "DSDT", "FACP", "FACS", "MCFG", "WAET"],
            "{cpus} vCPUs"
        );

        // The RSDP: both checksums, and its XSDT pointer at the XSDT.
        let r = &l.blobs[ACPI_RSDP_FILE].data;
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(r), 0);
        let xsdt_addr = le(r, 24, 8);
        let xsdt = l.table(xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(xsdt), 0);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| le(xsdt, o, 8))
            .collect();
        assert_eq!(
            entries,
            [
                l.installed_at("FACP"),
                l.installed_at("APIC"),
                l.installed_at("MCFG"),
                l.installed_at("WAET")
            ]
        );
        let fadt = l.table(l.installed_at("FACP"));
        assert_eq!(sum(fadt), 0);
        assert_eq!(le(fadt, 36, 4), l.installed_at("FACS"));
        assert_eq!(le(fadt, 132, 8), l.installed_at("FACS"));
        assert_eq!(le(fadt, 40, 4), l.installed_at("DSDT"));
        assert_eq!(le(fadt, 140, 8), l.installed_at("DSDT"));
        assert_eq!(l.installed_at("FACS") % 64, 0, "FACS alignment");
        assert!(l.blobs[ACPI_RSDP_FILE].base < 1 << 32);

        // Everything else is the bytes arch built.
        same_except(&arch.fadt.bytes, fadt, &[(9, 1), (36, 8), (132, 16)]);
        same_except(&arch.xsdt.bytes, xsdt, &[(9, 1), (36, xsdt.len() - 36)]);
        same_except(&arch.rsdp.bytes, r, &[(8, 1), (24, 9)]);
        for (sig, table) in [
            ("APIC", &arch.madt),
            ("DSDT", &arch.dsdt),
            ("MCFG", &arch.mcfg),
            ("WAET", &arch.waet),
        ] {
            assert_eq!(l.table(l.installed_at(sig)), &table.bytes[..], "{sig}");
        }
        assert_eq!(l.at(l.installed_at("FACS"), 64), &arch.facs.bytes[..]);
    }
}

/// A hand-built set: RSDP → XSDT → {SSDT, a second SSDT}, written with stale pointer values and
/// checksums that `build_acpi` must replace.
#[test]
fn ovmf_installs_acpi_tables_crate_tables_with_stale_fields() {
    let ssdt = |id: &[u8; 8]| {
        let mut b = Sdt::new(*b"SSDT", 40, 2, *b"VFIOVM", *id, 1)
            .as_slice()
            .to_vec();
        b[36..40].copy_from_slice(b"\x10\x20\x30\x40");
        b[9] = 0x77; // a wrong checksum
        b
    };
    let mut xsdt = XSDT::new(*b"VFIOVM", *b"VFIOXSDT", 1);
    xsdt.add_entry(0xdead_beef);
    xsdt.add_entry(0xdead_beef);
    let mut xb = Vec::new();
    xsdt.to_aml_bytes(&mut xb);
    let mut rb = Vec::new();
    Rsdp::new(*b"VFIOVM", 0x1234_5678).to_aml_bytes(&mut rb);
    let tables = vec![
        AcpiTable::new(xb)
            .with_pointer(36, 8, 1)
            .with_pointer(44, 8, 2),
        AcpiTable::new(ssdt(b"VFIOSSD1")),
        AcpiTable::new(ssdt(b"VFIOSSD2")),
    ];
    let rsdp = AcpiTable::new(rb).with_pointer(offsets::RSDP_XSDT, 8, 0);
    let files = build_acpi(rsdp, &tables).unwrap();
    assert_eq!(files.table_offsets, [0, 64, 112]);
    // 2 allocations, 3 pointers, 3 table checksums and 2 RSDP checksums.
    assert_eq!(files.loader.len(), 10);
    let mut dev = fw_cfg_with_ram();
    dev.add_acpi(files).unwrap();
    let mut g = Guest::new(dev);
    let l = run_loader(&mut g).unwrap();
    assert_eq!(l.installed.len(), 2);
    for (sig, at) in &l.installed {
        assert_eq!(sig, "SSDT");
        assert_eq!(&l.table(*at)[36..40], b"\x10\x20\x30\x40");
    }
    assert_ne!(l.installed[0].1, l.installed[1].1);
}

#[test]
fn a_table_nothing_points_to_is_not_installed() {
    // The interpreter agrees with OVMF that a table without a pointer is lost: build_acpi's
    // documentation makes reaching every table the caller's job.
    let arch = build_tables(&AcpiConfig {
        num_cpus: 1,
        mmio64: None,
    })
    .unwrap();
    let (rsdp, mut tables) = from_arch(&arch);
    // Drop the XSDT's pointer to the WAET (its last entry).
    tables[0].pointers.pop();
    let mut dev = fw_cfg_with_ram();
    dev.add_acpi(build_acpi(rsdp, &tables).unwrap()).unwrap();
    let l = run_loader(&mut Guest::new(dev)).unwrap();
    assert!(l.installed.iter().all(|(s, _)| s != "WAET"));
    assert!(l.installed.iter().any(|(s, _)| s == "MCFG"));
}

#[test]
fn loader_entries_have_the_qemu_layout() {
    let mut s = TableLoader::new();
    s.allocate("etc/acpi/tables", 64, Zone::High).unwrap();
    s.add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 24, 8)
        .unwrap();
    s.add_checksum("etc/acpi/tables", 9, 0x40, 0x24).unwrap();
    let b = s.as_bytes();
    assert_eq!(b.len(), 3 * 128);
    assert_eq!(le(b, 0, 4), 1);
    assert_eq!(&b[4..19], b"etc/acpi/tables");
    assert!(b[19..60].iter().all(|&x| x == 0));
    assert_eq!(le(b, 60, 4), 64);
    assert_eq!(b[64], 1);
    assert!(b[65..128].iter().all(|&x| x == 0));
    let p = &b[128..256];
    assert_eq!(le(p, 0, 4), 2);
    assert_eq!(&p[4..17], b"etc/acpi/rsdp");
    assert_eq!(&p[60..75], b"etc/acpi/tables");
    assert_eq!(le(p, 116, 4), 24);
    assert_eq!(p[120], 8);
    assert!(p[121..].iter().all(|&x| x == 0));
    let c = &b[256..];
    assert_eq!(le(c, 0, 4), 3);
    assert_eq!((le(c, 60, 4), le(c, 64, 4), le(c, 68, 4)), (9, 0x40, 0x24));
    assert!(c[72..].iter().all(|&x| x == 0));
}

#[test]
fn loader_and_builder_refuse_what_ovmf_would() {
    let mut s = TableLoader::new();
    let long = "n".repeat(56);
    assert!(matches!(
        s.allocate(&long, 16, Zone::FSeg),
        Err(TableLoaderError::InvalidFileName { .. })
    ));
    assert!(s.allocate(&long[..55], 16, Zone::FSeg).is_ok());
    for align in [0, 3, 8192] {
        assert_eq!(
            s.allocate("x", align, Zone::High),
            Err(TableLoaderError::InvalidAlign { align })
        );
    }
    assert_eq!(
        s.add_pointer("a", "b", 0, 3),
        Err(TableLoaderError::InvalidPointerSize { size: 3 })
    );

    let arch = build_tables(&AcpiConfig {
        num_cpus: 1,
        mmio64: None,
    })
    .unwrap();
    let (rsdp, tables) = from_arch(&arch);
    let fails = |rsdp: AcpiTable, tables: &[AcpiTable]| build_acpi(rsdp, tables).unwrap_err();
    // Pointer out of the table, to a missing table, of a bad size, too narrow for the offset.
    let mut t = tables.clone();
    let end = t[0].bytes.len() as u32;
    t[0].pointers.push(crate::firmware::AcpiPointer {
        offset: end - 4,
        size: 8,
        target: 1,
    });
    assert!(matches!(
        fails(rsdp.clone(), &t),
        TableLoaderError::InvalidPointer { .. }
    ));
    let mut t = tables.clone();
    t[0] = t[0].clone().with_pointer(36, 8, 99);
    assert!(matches!(
        fails(rsdp.clone(), &t),
        TableLoaderError::InvalidPointer { .. }
    ));
    let mut t = tables.clone();
    t[1] = t[1].clone().with_pointer(36, 3, 2);
    assert!(matches!(
        fails(rsdp.clone(), &t),
        TableLoaderError::InvalidPointer { .. }
    ));
    let mut t = tables.clone();
    t[1] = t[1].clone().with_pointer(36, 1, 5); // the MCFG sits past offset 255
    assert!(matches!(
        fails(rsdp.clone(), &t),
        TableLoaderError::InvalidPointer { .. }
    ));
    // A table whose length field lies, one too short, a bad RSDP.
    let mut t = tables.clone();
    t[3].bytes.push(0);
    assert!(matches!(
        fails(rsdp.clone(), &t),
        TableLoaderError::InvalidTable { index: 3, .. }
    ));
    let mut t = tables.clone();
    t[2].bytes.truncate(40);
    assert!(matches!(
        fails(rsdp.clone(), &t),
        TableLoaderError::InvalidTable { index: 2, .. }
    ));
    let mut r = rsdp.clone();
    r.bytes[0] = b'X';
    assert!(matches!(
        fails(r, &tables),
        TableLoaderError::InvalidRsdp { .. }
    ));
    let mut r = rsdp.clone();
    r.bytes.truncate(30);
    assert!(matches!(
        fails(r, &tables),
        TableLoaderError::InvalidRsdp { .. }
    ));
    // A revision 0 RSDP (20 bytes, RSDT pointer) gets one checksum.
    let mut r = AcpiTable::new(rsdp.bytes[..20].to_vec()).with_pointer(offsets::RSDP_RSDT, 4, 0);
    r.bytes[15] = 0;
    let files = build_acpi(r, &tables).unwrap();
    let rsdp_checksums = files
        .loader
        .as_bytes()
        .chunks(128)
        .filter(|e| le(e, 0, 4) == 3 && e[4..17] == *b"etc/acpi/rsdp")
        .count();
    assert_eq!(rsdp_checksums, 1);
    assert!(files.tables.len() >= tables.iter().map(|t| t.bytes.len()).sum::<usize>());
    assert!(files.tables.len() < u32::MAX as usize);
}
