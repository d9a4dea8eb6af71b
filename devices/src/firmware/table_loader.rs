//! The ACPI table loader: the `etc/table-loader` script through which QEMU hands ACPI tables to
//! firmware, and a builder that turns an RSDP and a set of tables into the three fw_cfg files
//! OVMF reads.
//!
//! OVMF installs ACPI tables only this way (`OvmfPkg/AcpiPlatformDxe`): it reads
//! `etc/table-loader`, a sequence of [`ENTRY_LEN`]-byte commands, allocates a buffer below
//! 4 GiB for each file an ALLOCATE names and reads the file into it, adds a buffer's address to
//! the relative pointers ADD_POINTER names, and stores the checksums ADD_CHECKSUM asks for.
//! Then, for every ADD_POINTER, it looks at what the patched pointer points to and installs it
//! if it is a FACS, or a table whose length fits and whose bytes sum to zero; the RSDT and XSDT
//! are recognised and skipped (OVMF builds its own). A table no pointer reaches, or one whose
//! checksum is wrong, is silently left out.
//!
//! Command layout (little-endian, each entry 128 bytes, unused bytes zero; file names are
//! NUL-terminated in 56 bytes):
//!
//! | command | type (u32 at 0) | fields |
//! |---|---|---|
//! | ALLOCATE | 1 | `file[56]` at 4, `align: u32` at 60 (a power of two, at most 4096 for OVMF), `zone: u8` at 64 (1 high, 2 F-segment) |
//! | ADD_POINTER | 2 | `dest_file[56]` at 4 (holds the pointer), `src_file[56]` at 60 (pointed into), `offset: u32` at 116, `size: u8` at 120 (1, 2, 4 or 8) |
//! | ADD_CHECKSUM | 3 | `file[56]` at 4, `result_offset: u32` at 60, `start: u32` at 64, `length: u32` at 68 |
//!
//! The byte at `result_offset` is set to minus the sum of `[start, start + length)`; it must
//! be zero before (it usually lies inside the range).

use super::fw_cfg::{FwCfg, FwCfgError};
use vm_memory::GuestMemory;

/// Name of the loader script file.
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";
/// Name of the file holding every table except the RSDP.
pub const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
/// Name of the file holding the RSDP.
pub const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
/// Length of one loader command.
pub const ENTRY_LEN: usize = 128;

/// Command types.
const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;
/// Length of a file-name field.
const NAME_LEN: usize = 56;
/// Field offsets inside an entry.
const FIELD_FILE: usize = 4;
const ALLOC_ALIGN: usize = 60;
const ALLOC_ZONE: usize = 64;
const PTR_SRC_FILE: usize = 60;
const PTR_OFFSET: usize = 116;
const PTR_SIZE: usize = 120;
const CSUM_RESULT: usize = 60;
const CSUM_START: usize = 64;
const CSUM_LENGTH: usize = 68;
/// OVMF refuses larger alignments.
const MAX_ALIGN: u32 = 4096;

/// Where an ALLOCATE wants its buffer (OVMF places both below 4 GiB; SeaBIOS honours them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Zone {
    /// Anywhere in RAM below 4 GiB.
    High = 1,
    /// The F-segment, 0xE0000–0xFFFFF (where legacy OSes look for the RSDP).
    FSeg = 2,
}

/// Offsets of the pointer and checksum fields in the standard ACPI tables, for describing
/// [`AcpiTable::pointers`].
pub mod offsets {
    /// RSDP: 1.0 checksum (over the first 20 bytes).
    pub const RSDP_CHECKSUM: usize = 8;
    /// RSDP: `RsdtAddress` (u32).
    pub const RSDP_RSDT: u32 = 16;
    /// RSDP: `Length` (u32, revision 2 and later).
    pub const RSDP_LENGTH: usize = 20;
    /// RSDP: `XsdtAddress` (u64).
    pub const RSDP_XSDT: u32 = 24;
    /// RSDP: extended checksum (over the whole structure).
    pub const RSDP_EXT_CHECKSUM: usize = 32;
    /// Any table with the standard header: `Length` (u32).
    pub const SDT_LENGTH: usize = 4;
    /// Any table with the standard header: checksum byte.
    pub const SDT_CHECKSUM: usize = 9;
    /// Length of the standard header; RSDT (u32) and XSDT (u64) entries start here.
    pub const SDT_HEADER_LEN: u32 = 36;
    /// FADT: `FIRMWARE_CTRL`, the FACS (u32).
    pub const FADT_FIRMWARE_CTRL: u32 = 36;
    /// FADT: `DSDT` (u32).
    pub const FADT_DSDT: u32 = 40;
    /// FADT: `X_FIRMWARE_CTRL` (u64).
    pub const FADT_X_FIRMWARE_CTRL: u32 = 132;
    /// FADT: `X_DSDT` (u64).
    pub const FADT_X_DSDT: u32 = 140;
}

/// Errors writing loader commands or building the ACPI files.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableLoaderError {
    /// A file name does not fit the 56-byte field.
    #[error("loader file name {name:?} is invalid: it must be 1 to 55 bytes without NUL")]
    InvalidFileName {
        /// The name.
        name: String,
    },
    /// An alignment is not a power of two or exceeds 4096 (OVMF refuses it).
    #[error("loader alignment {align} is invalid: it must be a power of two up to 4096")]
    InvalidAlign {
        /// The alignment.
        align: u32,
    },
    /// A pointer size other than 1, 2, 4 or 8.
    #[error("loader pointer size {size} is invalid: it must be 1, 2, 4 or 8")]
    InvalidPointerSize {
        /// The size.
        size: u8,
    },
    /// The RSDP is not one.
    #[error(
        "the RSDP is invalid ({why}): give the 20-byte revision 0 or 36-byte revision 2 \
         structure starting with \"RSD PTR \""
    )]
    InvalidRsdp {
        /// What is wrong.
        why: &'static str,
    },
    /// A table's header is malformed.
    #[error(
        "ACPI table {index} ({signature}) is invalid: {why}; give the complete table with its \
         standard header (or a FACS)"
    )]
    InvalidTable {
        /// Index in the table list.
        index: usize,
        /// Its signature, as text.
        signature: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A pointer field lies outside its table, has a bad size or names no table.
    #[error("pointer at offset {offset} (size {size}) of {table} is invalid: {why}")]
    InvalidPointer {
        /// The table holding the pointer ("RSDP" or "table N").
        table: String,
        /// Offset of the field.
        offset: u32,
        /// Its size.
        size: u8,
        /// What is wrong.
        why: &'static str,
    },
    /// The tables exceed 4 GiB.
    #[error("the ACPI tables are larger than 4 GiB")]
    TooLarge,
}

/// A loader script under construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableLoader {
    bytes: Vec<u8>,
}

fn put_name(entry: &mut [u8; ENTRY_LEN], at: usize, name: &str) -> Result<(), TableLoaderError> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains('\0') {
        return Err(TableLoaderError::InvalidFileName {
            name: name.to_string(),
        });
    }
    entry[at..at + name.len()].copy_from_slice(name.as_bytes());
    Ok(())
}

fn put_u32(entry: &mut [u8; ENTRY_LEN], at: usize, v: u32) {
    entry[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn new_entry(cmd: u32) -> [u8; ENTRY_LEN] {
    let mut e = [0u8; ENTRY_LEN];
    put_u32(&mut e, 0, cmd);
    e
}

impl TableLoader {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// ALLOCATE: the firmware reads `file` into a buffer aligned to `align` in `zone`.
    pub fn allocate(&mut self, file: &str, align: u32, zone: Zone) -> Result<(), TableLoaderError> {
        if !align.is_power_of_two() || align > MAX_ALIGN {
            return Err(TableLoaderError::InvalidAlign { align });
        }
        let mut e = new_entry(CMD_ALLOCATE);
        put_name(&mut e, FIELD_FILE, file)?;
        put_u32(&mut e, ALLOC_ALIGN, align);
        e[ALLOC_ZONE] = zone as u8;
        self.bytes.extend_from_slice(&e);
        Ok(())
    }

    /// ADD_POINTER: the `size`-byte little-endian value at `offset` in `dest_file` is an offset
    /// into `src_file`; the firmware adds `src_file`'s buffer address to it.
    pub fn add_pointer(
        &mut self,
        dest_file: &str,
        src_file: &str,
        offset: u32,
        size: u8,
    ) -> Result<(), TableLoaderError> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return Err(TableLoaderError::InvalidPointerSize { size });
        }
        let mut e = new_entry(CMD_ADD_POINTER);
        put_name(&mut e, FIELD_FILE, dest_file)?;
        put_name(&mut e, PTR_SRC_FILE, src_file)?;
        put_u32(&mut e, PTR_OFFSET, offset);
        e[PTR_SIZE] = size;
        self.bytes.extend_from_slice(&e);
        Ok(())
    }

    /// ADD_CHECKSUM: the firmware stores at `result_offset` in `file` the byte that makes
    /// `[start, start + length)` sum to zero.
    pub fn add_checksum(
        &mut self,
        file: &str,
        result_offset: u32,
        start: u32,
        length: u32,
    ) -> Result<(), TableLoaderError> {
        let mut e = new_entry(CMD_ADD_CHECKSUM);
        put_name(&mut e, FIELD_FILE, file)?;
        put_u32(&mut e, CSUM_RESULT, result_offset);
        put_u32(&mut e, CSUM_START, start);
        put_u32(&mut e, CSUM_LENGTH, length);
        self.bytes.extend_from_slice(&e);
        Ok(())
    }

    /// The script: the commands in the order they were added.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of commands.
    pub fn len(&self) -> usize {
        self.bytes.len() / ENTRY_LEN
    }

    /// Whether the script has no command.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A pointer field inside a table: `size` bytes at `offset` that must end up holding the
/// address of table `target` (an index into the list given to [`build_acpi`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPointer {
    /// Offset of the field in its table.
    pub offset: u32,
    /// Width of the field: 4 or 8 (1 and 2 only if the value fits).
    pub size: u8,
    /// Index of the table pointed to.
    pub target: usize,
}

/// One ACPI table (or the RSDP) with its pointer fields. What the pointer fields and checksum
/// hold on input does not matter: [`build_acpi`] overwrites them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTable {
    /// The whole table.
    pub bytes: Vec<u8>,
    /// Its pointers to other tables.
    pub pointers: Vec<AcpiPointer>,
}

impl AcpiTable {
    /// A table without pointers.
    pub fn new(bytes: Vec<u8>) -> Self {
        AcpiTable {
            bytes,
            pointers: Vec::new(),
        }
    }

    /// Adds a pointer field to table `target`.
    pub fn with_pointer(mut self, offset: u32, size: u8, target: usize) -> Self {
        self.pointers.push(AcpiPointer {
            offset,
            size,
            target,
        });
        self
    }
}

/// The three fw_cfg files that carry ACPI tables to OVMF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiFiles {
    /// `etc/acpi/rsdp`: the RSDP, pointers relative to `etc/acpi/tables`.
    pub rsdp: Vec<u8>,
    /// `etc/acpi/tables`: every table, each at an aligned offset, pointers relative to it.
    pub tables: Vec<u8>,
    /// `etc/table-loader`.
    pub loader: TableLoader,
    /// Offset of each table in `tables`, in the order given.
    pub table_offsets: Vec<u32>,
}

/// Alignment of the tables buffer and of the FACS inside it (the FACS must be 64-byte aligned).
const TABLES_ALIGN: u32 = 64;
/// Alignment of the other tables inside the buffer.
const TABLE_ALIGN: usize = 16;
/// Alignment of the RSDP buffer (16 bytes, for legacy scans of the F-segment).
const RSDP_ALIGN: u32 = 16;
/// Length of a revision 0 RSDP.
const RSDP_V1_LEN: usize = 20;
/// Length of a revision 2 RSDP.
const RSDP_V2_LEN: usize = 36;
/// Length of a FACS.
const FACS_MIN_LEN: usize = 64;

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn is_facs(bytes: &[u8]) -> bool {
    bytes.get(0..4) == Some(b"FACS")
}

fn check_table(index: usize, bytes: &[u8]) -> Result<(), TableLoaderError> {
    let bad = |why| TableLoaderError::InvalidTable {
        index,
        signature: String::from_utf8_lossy(bytes.get(0..4).unwrap_or(bytes)).into_owned(),
        why,
    };
    let min = if is_facs(bytes) {
        FACS_MIN_LEN
    } else {
        offsets::SDT_HEADER_LEN as usize
    };
    if bytes.len() < min {
        return Err(bad("shorter than its header"));
    }
    if le32(bytes, offsets::SDT_LENGTH) as usize != bytes.len() {
        return Err(bad("its length field differs from its size"));
    }
    Ok(())
}

fn check_rsdp(bytes: &[u8]) -> Result<bool, TableLoaderError> {
    let bad = |why| TableLoaderError::InvalidRsdp { why };
    if bytes.get(0..8) != Some(b"RSD PTR ") {
        return Err(bad("no signature"));
    }
    match bytes.len() {
        RSDP_V1_LEN => Ok(false),
        len if len >= RSDP_V2_LEN => {
            if le32(bytes, offsets::RSDP_LENGTH) as usize != len {
                return Err(bad("its length field differs from its size"));
            }
            Ok(true)
        }
        _ => Err(bad("its size is neither 20 nor at least 36 bytes")),
    }
}

/// Writes `value` into the pointer field and returns the field's offset, checking that the
/// field is inside the table and the value fits.
fn patch_pointer(
    table: &mut [u8],
    name: &dyn Fn() -> String,
    p: &AcpiPointer,
    value: Option<u32>,
) -> Result<(), TableLoaderError> {
    let bad = |why| TableLoaderError::InvalidPointer {
        table: name(),
        offset: p.offset,
        size: p.size,
        why,
    };
    if !matches!(p.size, 1 | 2 | 4 | 8) {
        return Err(bad("the size is not 1, 2, 4 or 8"));
    }
    let value = value.ok_or_else(|| bad("it names a table that is not in the list"))?;
    let start = p.offset as usize;
    let field = start
        .checked_add(usize::from(p.size))
        .and_then(|end| table.get_mut(start..end))
        .ok_or_else(|| bad("the field is not inside the table"))?;
    let wide = u64::from(value).to_le_bytes();
    if wide[usize::from(p.size)..].iter().any(|&b| b != 0) {
        return Err(bad("the table's offset does not fit the field"));
    }
    field.copy_from_slice(&wide[..usize::from(p.size)]);
    Ok(())
}

/// Builds `etc/acpi/rsdp`, `etc/acpi/tables` and `etc/table-loader` from an RSDP and the
/// tables it (directly or through other tables) points to.
///
/// Every table goes into `etc/acpi/tables` at a 16-byte aligned offset (a FACS at a 64-byte
/// aligned one); the script allocates that file (64-byte aligned, high) and the RSDP (16-byte
/// aligned, F-segment), adds the tables buffer's address to every pointer field listed, then
/// checksums every table except the FACS (byte 9 over the table) and the RSDP (byte 8 over 20
/// bytes, then for revision 2 byte 32 over the whole). Pointer fields and checksum bytes are
/// overwritten. For OVMF to install a table, some pointer must reach it: the XSDT's entries,
/// the FADT's DSDT and FACS fields, and the RSDP's XSDT field.
pub fn build_acpi(rsdp: AcpiTable, tables: &[AcpiTable]) -> Result<AcpiFiles, TableLoaderError> {
    let extended = check_rsdp(&rsdp.bytes)?;
    let mut blob = Vec::new();
    let mut table_offsets = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        check_table(i, &t.bytes)?;
        let align = if is_facs(&t.bytes) {
            TABLES_ALIGN as usize
        } else {
            TABLE_ALIGN
        };
        blob.resize(blob.len().next_multiple_of(align), 0);
        table_offsets.push(u32::try_from(blob.len()).map_err(|_| TableLoaderError::TooLarge)?);
        blob.extend_from_slice(&t.bytes);
    }
    u32::try_from(blob.len()).map_err(|_| TableLoaderError::TooLarge)?;

    let mut loader = TableLoader::new();
    loader.allocate(ACPI_TABLES_FILE, TABLES_ALIGN, Zone::High)?;
    loader.allocate(ACPI_RSDP_FILE, RSDP_ALIGN, Zone::FSeg)?;

    for (i, t) in tables.iter().enumerate() {
        let base = table_offsets[i];
        let end = base as usize + t.bytes.len();
        for p in &t.pointers {
            let name = || format!("table {i}");
            patch_pointer(
                &mut blob[base as usize..end],
                &name,
                p,
                table_offsets.get(p.target).copied(),
            )?;
            loader.add_pointer(ACPI_TABLES_FILE, ACPI_TABLES_FILE, base + p.offset, p.size)?;
        }
    }
    let mut rsdp_bytes = rsdp.bytes.clone();
    for p in &rsdp.pointers {
        let name = || "the RSDP".to_string();
        patch_pointer(
            &mut rsdp_bytes,
            &name,
            p,
            table_offsets.get(p.target).copied(),
        )?;
        loader.add_pointer(ACPI_RSDP_FILE, ACPI_TABLES_FILE, p.offset, p.size)?;
    }

    for (i, t) in tables.iter().enumerate() {
        if is_facs(&t.bytes) {
            continue;
        }
        let base = table_offsets[i];
        blob[base as usize + offsets::SDT_CHECKSUM] = 0;
        loader.add_checksum(
            ACPI_TABLES_FILE,
            base + offsets::SDT_CHECKSUM as u32,
            base,
            t.bytes.len() as u32,
        )?;
    }
    rsdp_bytes[offsets::RSDP_CHECKSUM] = 0;
    loader.add_checksum(
        ACPI_RSDP_FILE,
        offsets::RSDP_CHECKSUM as u32,
        0,
        RSDP_V1_LEN as u32,
    )?;
    if extended {
        rsdp_bytes[offsets::RSDP_EXT_CHECKSUM] = 0;
        loader.add_checksum(
            ACPI_RSDP_FILE,
            offsets::RSDP_EXT_CHECKSUM as u32,
            0,
            rsdp_bytes.len() as u32,
        )?;
    }

    Ok(AcpiFiles {
        rsdp: rsdp_bytes,
        tables: blob,
        loader,
        table_offsets,
    })
}

impl<M: GuestMemory> FwCfg<M> {
    /// Adds the three ACPI files ([`build_acpi`]'s output) as `etc/acpi/rsdp`,
    /// `etc/acpi/tables` and `etc/table-loader`.
    pub fn add_acpi(&mut self, files: AcpiFiles) -> Result<(), FwCfgError> {
        self.add_file(ACPI_TABLES_FILE, files.tables)?;
        self.add_file(ACPI_RSDP_FILE, files.rsdp)?;
        self.add_file(TABLE_LOADER_FILE, files.loader.bytes)?;
        Ok(())
    }
}
