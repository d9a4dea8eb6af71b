//! ACPI tables for a Q35-like PC guest with KVM's in-kernel irqchip (PIC + IOAPIC + PIT).
//!
//! [`build_tables`] generates every table as bytes together with the guest physical address it
//! belongs at; [`create_acpi_tables`] also writes them into guest memory and returns the RSDP
//! address (for the zero page's `acpi_rsdp_addr` or PVH's `rsdp_paddr`).
//!
//! The tables live in the ACPI area of [`crate::layout`]
//! (`ACPI_START..ACPI_END`, 128 KiB, reserved in the memory map), in this order, each 16-byte
//! aligned (the FACS 64-byte aligned):
//!
//! | table | address (1 vCPU)   | size                                  |
//! |-------|--------------------|---------------------------------------|
//! | RSDP  | `0xE_0000`         | 36 (revision 2, XSDT only, no RSDT)   |
//! | FACS  | `0xE_0040`         | 64                                    |
//! | FADT  | `0xE_0080`         | 276 (revision 6.5, not hardware-reduced) |
//! | MCFG  | `0xE_01A0`         | 60 (one ECAM allocation)              |
//! | WAET  | `0xE_01E0`         | 40 (RTC and PM timer good, `waet.rs`)  |
//! | XSDT  | `0xE_0210`         | 68 (FADT, MADT, MCFG, WAET)           |
//! | MADT  | `0xE_0260`         | 82 + 8 per vCPU                       |
//! | DSDT  | `0xE_02C0`         | about 2000 + 28 per vCPU              |
//!
//! Everything up to the MADT sits at fixed addresses; the MADT and the DSDT grow with the vCPU
//! count (8 and about 28 bytes per vCPU), so only the DSDT moves. With the maximum of 255 vCPUs
//! all tables take about 12 KiB of the 128 KiB area; [`build_tables`] still checks and returns
//! [`AcpiError::TablesTooLarge`] rather than spilling over.

mod dsdt;
mod fadt;
mod madt;
mod waet;

#[cfg(test)]
mod acpica_tests;

use acpi_tables::facs::FACS;
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout;

pub use madt::MADT_IOAPIC_ID;

/// OEM ID in every table header.
const OEM_ID: [u8; 6] = *b"VFIOVM";
/// OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// Alignment of every table except the FACS.
const TABLE_ALIGN: u64 = 16;
/// The FACS must be 64-byte aligned.
const FACS_ALIGN: u64 = 64;
/// Highest physical address (exclusive) x86-64 can address: 52 bits.
const MAX_PHYS_ADDR: u64 = 1 << 52;

// The FADT holds 32-bit copies of the DSDT and FACS addresses, so the area must sit below 4 GiB.
const _: () = assert!(layout::ACPI_END <= 1 << 32 && layout::ACPI_START < layout::ACPI_END);

/// The OEM table ID of the table with signature `sig`: "VFIO" followed by the signature, so
/// every table is identifiable in a dump.
fn oem_table_id(sig: &[u8; 4]) -> [u8; 8] {
    let mut id = *b"VFIO    ";
    id[4..].copy_from_slice(sig);
    id
}

/// Errors building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The configuration has no vCPU.
    #[error("cannot build ACPI tables for a guest with 0 vCPUs: give the guest at least one")]
    NoCpus,
    /// The 64-bit PCI window is empty, overflows or lies outside 4 GiB..2^52.
    #[error(
        "invalid 64-bit PCI MMIO window (start {start:#x}, size {size:#x}): it must be non-empty, \
         start at or above 4 GiB and end at or below 2^52; derive it with layout::mmio64_window"
    )]
    InvalidMmio64Window {
        /// Requested start.
        start: u64,
        /// Requested size.
        size: u64,
    },
    /// The tables do not fit between `ACPI_START` and `ACPI_END`.
    #[error(
        "the ACPI tables need {needed:#x} bytes but the ACPI area {start:#x}..{end:#x} is smaller; \
         use fewer vCPUs"
    )]
    TablesTooLarge {
        /// Bytes needed from the start of the area, including alignment padding.
        needed: u64,
        /// Start of the area.
        start: u64,
        /// End of the area (exclusive).
        end: u64,
    },
    /// Writing a table into guest memory failed (the guest RAM does not cover the ACPI area).
    #[error(
        "cannot write the {table} table ({len} bytes) to guest memory at {addr:#x}; guest RAM must \
         cover the ACPI area"
    )]
    GuestMemory {
        /// Table signature.
        table: &'static str,
        /// Guest physical address.
        addr: u64,
        /// Table length.
        len: usize,
        /// The underlying vm-memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// What the ACPI tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; their APIC IDs and ACPI processor UIDs are `0..num_cpus`.
    pub num_cpus: u8,
    /// The 64-bit PCI MMIO window `(start, size)`, from [`layout::mmio64_window`]; `None` leaves
    /// it out of the host bridge's `_CRS`.
    pub mmio64: Option<(u64, u64)>,
}

/// One table: its bytes and where they go in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTable {
    /// Guest physical address of the first byte.
    pub addr: GuestAddress,
    /// The complete table, checksum included.
    pub bytes: Vec<u8>,
}

/// The complete set of tables, each placed in the ACPI area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// Root System Description Pointer (revision 2), at `ACPI_START`.
    pub rsdp: AcpiTable,
    /// Extended System Description Table: FADT, MADT, MCFG, WAET.
    pub xsdt: AcpiTable,
    /// Fixed ACPI Description Table (signature `FACP`).
    pub fadt: AcpiTable,
    /// Firmware ACPI Control Structure.
    pub facs: AcpiTable,
    /// Multiple APIC Description Table (signature `APIC`).
    pub madt: AcpiTable,
    /// Differentiated System Description Table (AML).
    pub dsdt: AcpiTable,
    /// PCI Express memory-mapped configuration space table.
    pub mcfg: AcpiTable,
    /// Windows ACPI Emulated devices Table.
    pub waet: AcpiTable,
}

impl AcpiTables {
    /// All tables with a printable name (the signature, `RSDP` for the root pointer), in address
    /// order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &AcpiTable)> {
        [
            ("RSDP", &self.rsdp),
            ("FACS", &self.facs),
            ("FACP", &self.fadt),
            ("MCFG", &self.mcfg),
            ("WAET", &self.waet),
            ("XSDT", &self.xsdt),
            ("APIC", &self.madt),
            ("DSDT", &self.dsdt),
        ]
        .into_iter()
    }

    /// Writes every table into guest memory and returns the RSDP address.
    pub fn write_to<M: GuestMemory>(&self, mem: &M) -> Result<GuestAddress, AcpiError> {
        for (name, table) in self.iter() {
            mem.write_slice(&table.bytes, table.addr)
                .map_err(|source| AcpiError::GuestMemory {
                    table: name,
                    addr: table.addr.0,
                    len: table.bytes.len(),
                    source,
                })?;
        }
        Ok(self.rsdp.addr)
    }
}

/// Hands out aligned, consecutive addresses inside `[start, end)`.
struct AreaAllocator {
    start: u64,
    next: u64,
    end: u64,
}

impl AreaAllocator {
    fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            next: start,
            end,
        }
    }

    /// Reserves `len` bytes aligned to `align` (a power of two).
    fn alloc(&mut self, len: usize, align: u64) -> Result<GuestAddress, AcpiError> {
        let too_large = || AcpiError::TablesTooLarge {
            needed: u64::MAX,
            start: self.start,
            end: self.end,
        };
        let addr = self
            .next
            .checked_add(align - 1)
            .map(|a| a & !(align - 1))
            .ok_or_else(too_large)?;
        let next = u64::try_from(len)
            .ok()
            .and_then(|len| addr.checked_add(len))
            .ok_or_else(too_large)?;
        if next > self.end {
            return Err(AcpiError::TablesTooLarge {
                needed: next - self.start,
                start: self.start,
                end: self.end,
            });
        }
        self.next = next;
        Ok(GuestAddress(addr))
    }
}

/// Checks the 64-bit window and returns it as `(min, max)` (inclusive), as `_CRS` wants it.
fn mmio64_bounds(window: Option<(u64, u64)>) -> Result<Option<(u64, u64)>, AcpiError> {
    let Some((start, size)) = window else {
        return Ok(None);
    };
    let invalid = AcpiError::InvalidMmio64Window { start, size };
    let max = size
        .checked_sub(1)
        .and_then(|last| start.checked_add(last))
        .ok_or(invalid)?;
    if start < layout::HIGH_RAM_START || max >= MAX_PHYS_ADDR {
        return Err(AcpiError::InvalidMmio64Window { start, size });
    }
    Ok(Some((start, max)))
}

fn aml_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Builds every table and places it in the ACPI area, without touching guest memory.
pub fn build_tables(cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
    build_tables_in(cfg, layout::ACPI_START, layout::ACPI_END)
}

fn build_tables_in(cfg: &AcpiConfig, start: u64, end: u64) -> Result<AcpiTables, AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let mmio64 = mmio64_bounds(cfg.mmio64)?;

    // Tables that hold no addresses come first, so their sizes fix the layout.
    let facs = aml_bytes(&FACS::new());
    let madt = madt::build(cfg.num_cpus);
    let dsdt = dsdt::build(cfg.num_cpus, mmio64);
    let mut mcfg = MCFG::new(OEM_ID, oem_table_id(b"MCFG"), OEM_REVISION);
    mcfg.add_ecam(layout::PCI_ECAM_START, 0, 0, layout::PCI_LAST_BUS);
    let mcfg = aml_bytes(&mcfg);
    let waet = waet::build();
    const XSDT_ENTRIES: usize = 4;
    let xsdt_len = 36 + 8 * XSDT_ENTRIES;

    let mut area = AreaAllocator::new(start, end);
    let rsdp_addr = area.alloc(Rsdp::len(), TABLE_ALIGN)?;
    let facs_addr = area.alloc(facs.len(), FACS_ALIGN)?;
    let fadt_addr = area.alloc(fadt::FADT_LEN, TABLE_ALIGN)?;
    let mcfg_addr = area.alloc(mcfg.len(), TABLE_ALIGN)?;
    let waet_addr = area.alloc(waet.len(), TABLE_ALIGN)?;
    let xsdt_addr = area.alloc(xsdt_len, TABLE_ALIGN)?;
    let madt_addr = area.alloc(madt.len(), TABLE_ALIGN)?;
    let dsdt_addr = area.alloc(dsdt.len(), TABLE_ALIGN)?;

    let fadt = fadt::build(facs_addr.0, dsdt_addr.0);
    debug_assert_eq!(fadt.len(), fadt::FADT_LEN);

    let mut xsdt = XSDT::new(OEM_ID, oem_table_id(b"XSDT"), OEM_REVISION);
    for addr in [fadt_addr, madt_addr, mcfg_addr, waet_addr] {
        xsdt.add_entry(addr.0);
    }
    let xsdt = aml_bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), xsdt_len);

    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr.0));

    Ok(AcpiTables {
        rsdp: AcpiTable {
            addr: rsdp_addr,
            bytes: rsdp,
        },
        xsdt: AcpiTable {
            addr: xsdt_addr,
            bytes: xsdt,
        },
        fadt: AcpiTable {
            addr: fadt_addr,
            bytes: fadt,
        },
        facs: AcpiTable {
            addr: facs_addr,
            bytes: facs,
        },
        madt: AcpiTable {
            addr: madt_addr,
            bytes: madt,
        },
        dsdt: AcpiTable {
            addr: dsdt_addr,
            bytes: dsdt,
        },
        mcfg: AcpiTable {
            addr: mcfg_addr,
            bytes: mcfg,
        },
        waet: AcpiTable {
            addr: waet_addr,
            bytes: waet,
        },
    })
}

/// Builds the ACPI tables for `cfg` and writes them into the ACPI area of `mem`. Returns the
/// RSDP's guest physical address.
pub fn create_acpi_tables<M: GuestMemory>(
    mem: &M,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    build_tables(cfg)?.write_to(mem)
}

/// Helpers shared by the table tests.
#[cfg(test)]
pub(crate) mod test_util {
    /// Little-endian integer at `off`.
    pub fn le(bytes: &[u8], off: usize, len: usize) -> u64 {
        bytes[off..off + len]
            .iter()
            .rev()
            .fold(0, |acc, &b| (acc << 8) | u64::from(b))
    }

    /// The byte sum of `bytes` (0 for a correctly checksummed table).
    pub fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, &b| acc.wrapping_add(b))
    }

    /// Asserts a standard table header: signature, length field, checksum.
    pub fn check_header(bytes: &[u8], sig: &[u8; 4]) {
        assert_eq!(&bytes[0..4], sig, "signature");
        assert_eq!(le(bytes, 4, 4), bytes.len() as u64, "{sig:?} length field");
        assert_eq!(sum(bytes), 0, "{sig:?} checksum");
        assert_eq!(&bytes[10..16], b"VFIOVM", "{sig:?} OEM ID");
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::{check_header, le, sum};
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn cfg(num_cpus: u8) -> AcpiConfig {
        AcpiConfig {
            num_cpus,
            mmio64: layout::mmio64_window(1 << 30, 40),
        }
    }

    #[test]
    fn rsdp_points_at_xsdt_and_checksums() {
        let t = build_tables(&cfg(2)).unwrap();
        let r = &t.rsdp.bytes;
        assert_eq!(t.rsdp.addr, GuestAddress(layout::ACPI_START));
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(r.len(), 36);
        assert_eq!(sum(&r[0..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(r), 0, "extended checksum");
        assert_eq!(r[15], 2, "revision");
        assert_eq!(le(r, 16, 4), 0, "no RSDT");
        assert_eq!(le(r, 20, 4), 36, "length");
        assert_eq!(le(r, 24, 8), t.xsdt.addr.0);
    }

    #[test]
    fn every_table_has_a_valid_header() {
        for n in [1, 4, 255] {
            let t = build_tables(&cfg(n)).unwrap();
            check_header(&t.xsdt.bytes, b"XSDT");
            check_header(&t.fadt.bytes, b"FACP");
            check_header(&t.madt.bytes, b"APIC");
            check_header(&t.dsdt.bytes, b"DSDT");
            check_header(&t.mcfg.bytes, b"MCFG");
            check_header(&t.waet.bytes, b"WAET");
            // The FACS has no checksum, only a signature and a length.
            assert_eq!(&t.facs.bytes[0..4], b"FACS");
            assert_eq!(le(&t.facs.bytes, 4, 4), 64);
            assert_eq!(t.facs.bytes.len(), 64);
        }
    }

    #[test]
    fn xsdt_lists_fadt_madt_mcfg_waet() {
        let t = build_tables(&cfg(1)).unwrap();
        let x = &t.xsdt.bytes;
        let entries: Vec<u64> = (36..x.len()).step_by(8).map(|o| le(x, o, 8)).collect();
        assert_eq!(
            entries,
            vec![t.fadt.addr.0, t.madt.addr.0, t.mcfg.addr.0, t.waet.addr.0]
        );
    }

    #[test]
    fn tables_are_aligned_disjoint_and_inside_the_area() {
        let t = build_tables(&cfg(255)).unwrap();
        let mut spans: Vec<(u64, u64)> = t
            .iter()
            .map(|(_, tb)| (tb.addr.0, tb.addr.0 + tb.bytes.len() as u64))
            .collect();
        assert_eq!(t.facs.addr.0 % 64, 0);
        for (_, tb) in t.iter() {
            assert_eq!(tb.addr.0 % 16, 0);
        }
        spans.sort();
        assert!(spans[0].0 >= layout::ACPI_START);
        assert!(spans.last().unwrap().1 <= layout::ACPI_END);
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0, "{spans:x?} overlap");
        }
    }

    #[test]
    fn fixed_tables_do_not_move_with_cpu_count() {
        let a = build_tables(&cfg(1)).unwrap();
        let b = build_tables(&cfg(200)).unwrap();
        for (x, y) in [
            (&a.rsdp, &b.rsdp),
            (&a.facs, &b.facs),
            (&a.fadt, &b.fadt),
            (&a.mcfg, &b.mcfg),
            (&a.waet, &b.waet),
            (&a.xsdt, &b.xsdt),
            (&a.madt, &b.madt),
        ] {
            assert_eq!(x.addr, y.addr);
        }
        assert!(b.dsdt.addr.0 > a.dsdt.addr.0);
    }

    #[test]
    fn mcfg_describes_the_ecam_window() {
        let t = build_tables(&cfg(1)).unwrap();
        let m = &t.mcfg.bytes;
        assert_eq!(m.len(), 44 + 16);
        assert_eq!(le(m, 44, 8), layout::PCI_ECAM_START);
        assert_eq!(le(m, 52, 2), 0, "segment");
        assert_eq!(m[54], 0, "start bus");
        assert_eq!(m[55], 0, "end bus: the platform has bus 0 only");
        // The buses announced lie inside the ECAM window the platform decodes.
        assert!((u64::from(m[55] - m[54]) + 1) << 20 <= layout::PCI_ECAM_SIZE);
    }

    #[test]
    fn zero_cpus_is_an_error() {
        assert!(matches!(build_tables(&cfg(0)), Err(AcpiError::NoCpus)));
    }

    #[test]
    fn hostile_mmio64_windows_are_rejected() {
        let bad = [
            (0, 0),
            (1 << 32, 0),
            (u64::MAX, 1),
            (u64::MAX, u64::MAX),
            (1 << 32, u64::MAX),
            (0, u64::MAX),
            (0xC000_0000, 0x1000),
            (MAX_PHYS_ADDR, 1),
            (1 << 32, MAX_PHYS_ADDR),
        ];
        for (start, size) in bad {
            let c = AcpiConfig {
                num_cpus: 1,
                mmio64: Some((start, size)),
            };
            assert!(
                matches!(build_tables(&c), Err(AcpiError::InvalidMmio64Window { .. })),
                "{start:#x} {size:#x}"
            );
        }
        // The largest window that fits is accepted.
        let c = AcpiConfig {
            num_cpus: 1,
            mmio64: Some((1 << 32, MAX_PHYS_ADDR - (1 << 32))),
        };
        build_tables(&c).unwrap();
    }

    #[test]
    fn tables_that_do_not_fit_are_an_error() {
        let c = cfg(255);
        let full = build_tables(&c).unwrap();
        let end = full.dsdt.addr.0 + full.dsdt.bytes.len() as u64;
        // Exactly enough room works; one byte less does not.
        build_tables_in(&c, layout::ACPI_START, end).unwrap();
        let err = build_tables_in(&c, layout::ACPI_START, end - 1).unwrap_err();
        match err {
            AcpiError::TablesTooLarge { needed, .. } => {
                assert_eq!(needed, end - layout::ACPI_START)
            }
            e => panic!("unexpected {e}"),
        }
        // An area at the very top of the address space does not overflow.
        assert!(matches!(
            build_tables_in(&c, u64::MAX - 8, u64::MAX),
            Err(AcpiError::TablesTooLarge { .. })
        ));
    }

    #[test]
    fn create_writes_tables_to_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let c = cfg(3);
        let rsdp = create_acpi_tables(&mem, &c).unwrap();
        assert_eq!(rsdp, GuestAddress(layout::ACPI_START));
        let t = build_tables(&c).unwrap();
        for (name, tb) in t.iter() {
            let mut buf = vec![0; tb.bytes.len()];
            mem.read_slice(&mut buf, tb.addr).unwrap();
            assert_eq!(buf, tb.bytes, "{name}");
        }
    }

    #[test]
    fn guest_memory_without_the_area_is_an_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err = create_acpi_tables(&mem, &cfg(1)).unwrap_err();
        assert!(matches!(err, AcpiError::GuestMemory { .. }), "{err}");
        assert!(err.to_string().contains("RSDP"));
    }
}
