//! SMBIOS tables (DMTF DSP0134, version 3.0) describing the guest, in the form QEMU hands them
//! to UEFI firmware through fw_cfg: a 64-bit entry point (`_SM3_`, `etc/smbios/smbios-anchor`)
//! whose table address the firmware fills in, and the structures back to back
//! (`etc/smbios/smbios-tables`). OVMF installs each structure and builds its own entry point.
//!
//! Structures: type 0 (firmware), 1 (system), 3 (chassis), 4 (one processor socket with a core
//! per vCPU, matching the CPUID topology), 16 (the memory array), 17 (one memory device), 19
//! (one mapped range per RAM region), 32 (boot status), 127 (end). Windows reads these; Linux
//! only logs them.

use crate::layout;

/// SMBIOS version the tables follow.
pub const SMBIOS_MAJOR: u8 = 3;
/// Minor version.
pub const SMBIOS_MINOR: u8 = 0;
/// Length of the 64-bit entry point.
pub const ENTRY_POINT_LEN: usize = 0x18;
/// Offset of the entry point's table address (filled in by whoever places the tables).
pub const ENTRY_POINT_TABLE_ADDRESS: usize = 0x10;

/// What the tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmbiosConfig {
    /// vCPUs (cores of the one socket).
    pub cpus: u16,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// The system UUID (type 1), RFC 4122 byte order as SMBIOS stores it; zeros: not set.
    pub uuid: [u8; 16],
}

/// The entry point and the structures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosTables {
    /// The 24-byte `_SM3_` entry point, table address 0.
    pub anchor: Vec<u8>,
    /// The structures, type 127 last.
    pub tables: Vec<u8>,
}

const VENDOR: &str = "vfiovm";
const PRODUCT: &str = "vfiovm KVM guest";

// Handles: one block per type, so they stay unique whatever the counts.
const HANDLE_MEMORY_ARRAY: u16 = 0x1000;
const HANDLE_MEMORY_DEVICE: u16 = 0x1100;
const NO_HANDLE: u16 = 0xffff;
const NO_ERROR_INFO: u16 = 0xfffe;

/// One structure: the formatted area after the 4-byte header, then its strings.
struct Structure {
    bytes: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, handle: u16) -> Self {
        let mut bytes = vec![kind, 0];
        bytes.extend_from_slice(&handle.to_le_bytes());
        Structure {
            bytes,
            strings: Vec::new(),
        }
    }

    fn u8(mut self, v: u8) -> Self {
        self.bytes.push(v);
        self
    }

    fn u16(mut self, v: u16) -> Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(mut self, v: u32) -> Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(mut self, v: u64) -> Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn bytes(mut self, v: &[u8]) -> Self {
        self.bytes.extend_from_slice(v);
        self
    }

    /// A string field: its 1-based number in the string set, or 0 for an empty string.
    fn string(mut self, s: &str) -> Self {
        if s.is_empty() {
            return self.u8(0);
        }
        self.strings.push(s.to_string());
        let n = self.strings.len() as u8;
        self.u8(n)
    }

    fn finish(mut self, out: &mut Vec<u8>) {
        self.bytes[1] = self.bytes.len() as u8;
        out.extend_from_slice(&self.bytes);
        if self.strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            for s in &self.strings {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            out.push(0);
        }
    }
}

/// Builds the tables for `cfg`.
pub fn build(cfg: &SmbiosConfig) -> SmbiosTables {
    let mut t = Vec::new();
    let version = env!("CARGO_PKG_VERSION");

    // Type 0: firmware information (length 0x18).
    Structure::new(0, 0)
        .string(VENDOR)
        .string(version)
        .u16(0xe800) // starting segment, as QEMU
        .string("01/01/2026")
        .u8(0) // ROM size: 64 KiB units - 1
        .u64(1 << 3) // characteristics: "BIOS characteristics not supported"
        .u8(0)
        .u8((1 << 3) | (1 << 4)) // UEFI supported; the system is a virtual machine
        .u8(0) // release major
        .u8(0) // release minor
        .u8(0xff) // no embedded controller
        .u8(0xff)
        .finish(&mut t);

    // Type 1: system (length 0x1B).
    Structure::new(1, 0x100)
        .string(VENDOR)
        .string(PRODUCT)
        .string(version)
        .string("")
        .bytes(&cfg.uuid)
        .u8(6) // woken by the power switch
        .string("")
        .string("")
        .finish(&mut t);

    // Type 3: chassis (length 0x16).
    Structure::new(3, 0x300)
        .string(VENDOR)
        .u8(1) // other
        .string("")
        .string("")
        .string("")
        .u8(3) // boot-up state: safe
        .u8(3) // power supply: safe
        .u8(3) // thermal: safe
        .u8(2) // security: unknown
        .u32(0)
        .u8(0) // height
        .u8(0) // power cords
        .u8(0) // contained elements
        .u8(0) // their record length
        .string("")
        .finish(&mut t);

    // Type 4: one socket, a core (one thread) per vCPU (length 0x30).
    let cores = cfg.cpus.max(1);
    let cores8 = u8::try_from(cores).unwrap_or(0xff);
    Structure::new(4, 0x400)
        .string("CPU 0")
        .u8(3) // central processor
        .u8(0xfe) // family: see family 2
        .string(VENDOR)
        .u64(0) // processor ID
        .string("")
        .u8(0) // voltage
        .u16(0) // external clock: unknown
        .u16(0) // max speed: unknown
        .u16(0) // current speed: unknown
        .u8(0x41) // socket populated, CPU enabled
        .u8(1) // upgrade: other
        .u16(NO_HANDLE)
        .u16(NO_HANDLE)
        .u16(NO_HANDLE)
        .string("")
        .string("")
        .string("")
        .u8(cores8)
        .u8(cores8)
        .u8(cores8)
        .u16(1 << 2) // 64-bit capable
        .u16(1) // family 2: other
        .u16(cores)
        .u16(cores)
        .u16(cores)
        .finish(&mut t);

    // Type 16: the memory array (length 0x17).
    let kib = cfg.mem_size >> 10;
    Structure::new(16, HANDLE_MEMORY_ARRAY)
        .u8(1) // location: other
        .u8(3) // use: system memory
        .u8(3) // error correction: none
        .u32(u32::try_from(kib).unwrap_or(0x8000_0000))
        .u16(NO_ERROR_INFO)
        .u16(1)
        .u64(if kib >= 0x8000_0000 { cfg.mem_size } else { 0 })
        .finish(&mut t);

    // Type 17: one memory device holding it all (length 0x28).
    let mib = cfg.mem_size >> 20;
    Structure::new(17, HANDLE_MEMORY_DEVICE)
        .u16(HANDLE_MEMORY_ARRAY)
        .u16(NO_ERROR_INFO)
        .u16(64) // total width
        .u16(64) // data width
        .u16(if mib < 0x7fff { mib as u16 } else { 0x7fff })
        .u8(9) // DIMM
        .u8(0)
        .string("DIMM 0")
        .string("")
        .u8(7) // RAM
        .u16(1 << 1) // type detail: other
        .u16(0) // speed: unknown
        .string(VENDOR)
        .string("")
        .string("")
        .string("")
        .u8(0) // attributes
        .u32(if mib < 0x7fff {
            0
        } else {
            u32::try_from(mib).unwrap_or(u32::MAX >> 1)
        })
        .u16(0) // configured speed
        .u16(0)
        .u16(0)
        .u16(0)
        .finish(&mut t);

    // Type 19: a mapped range per RAM region (length 0x1F).
    for (i, (start, len)) in layout::ram_regions(cfg.mem_size).into_iter().enumerate() {
        let end = start + len - 1;
        let fits = end >> 10 < 0xffff_ffff;
        let s = Structure::new(19, 0x1300 + i as u16);
        let s = if fits {
            s.u32((start >> 10) as u32).u32((end >> 10) as u32)
        } else {
            s.u32(u32::MAX).u32(u32::MAX)
        };
        s.u16(HANDLE_MEMORY_ARRAY)
            .u8(1)
            .u64(if fits { 0 } else { start })
            .u64(if fits { 0 } else { end })
            .finish(&mut t);
    }

    // Type 32: boot status: no errors (length 0x0B).
    Structure::new(32, 0x2000)
        .bytes(&[0; 6])
        .u8(0)
        .finish(&mut t);

    // Type 127: end of table.
    Structure::new(127, 0x7f00).finish(&mut t);

    let mut anchor = vec![0u8; ENTRY_POINT_LEN];
    anchor[..5].copy_from_slice(b"_SM3_");
    anchor[6] = ENTRY_POINT_LEN as u8;
    anchor[7] = SMBIOS_MAJOR;
    anchor[8] = SMBIOS_MINOR;
    anchor[9] = 0; // docrev
    anchor[10] = 1; // entry point revision: 3.0
    anchor[12..16].copy_from_slice(&(t.len() as u32).to_le_bytes());
    let sum = anchor.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    anchor[5] = 0u8.wrapping_sub(sum);
    SmbiosTables { anchor, tables: t }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn cfg(cpus: u16, mem_size: u64) -> SmbiosConfig {
        SmbiosConfig {
            cpus,
            mem_size,
            uuid: [0x11; 16],
        }
    }

    /// Walks the structures: (type, formatted length, string count) each.
    fn walk(t: &[u8]) -> Vec<(u8, u8, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < t.len() {
            let (kind, len) = (t[at], t[at + 1]);
            let mut p = at + usize::from(len);
            let mut strings = 0;
            if t[p] == 0 && t[p + 1] == 0 {
                p += 2;
            } else {
                while t[p] != 0 {
                    while t[p] != 0 {
                        p += 1;
                    }
                    p += 1;
                    strings += 1;
                }
                p += 1;
            }
            out.push((kind, len, strings));
            at = p;
        }
        out
    }

    #[test]
    fn structures_and_lengths() {
        let s = build(&cfg(4, 256 << 20));
        let w = walk(&s.tables);
        let kinds: Vec<(u8, u8)> = w.iter().map(|&(k, l, _)| (k, l)).collect();
        assert_eq!(
            kinds,
            [
                (0, 0x18),
                (1, 0x1b),
                (3, 0x16),
                (4, 0x30),
                (16, 0x17),
                (17, 0x28),
                (19, 0x1f),
                (32, 0x0b),
                (127, 4)
            ]
        );
        // A big guest: two RAM regions, sizes in the extended fields.
        let s = build(&cfg(2, 64 << 30));
        assert_eq!(walk(&s.tables).iter().filter(|w| w.0 == 19).count(), 2);
    }

    #[test]
    fn entry_point_names_the_tables() {
        let s = build(&cfg(1, 16 << 20));
        let a = &s.anchor;
        assert_eq!(&a[..5], b"_SM3_");
        assert_eq!(a.iter().fold(0u8, |x, &b| x.wrapping_add(b)), 0);
        assert_eq!((a[6], a[7], a[8]), (0x18, 3, 0));
        assert_eq!(
            u32::from_le_bytes(a[12..16].try_into().unwrap()) as usize,
            s.tables.len()
        );
        assert_eq!(&a[ENTRY_POINT_TABLE_ADDRESS..], &[0; 8]);
    }

    /// `dmidecode --from-dump` decodes every structure without a complaint. The dump format is
    /// the entry point at offset 0 with its table address pointing at offset 32 of the file,
    /// the structures there. Skipped (loudly) without dmidecode.
    #[test]
    fn dmidecode_decodes_every_structure() {
        if Command::new("dmidecode").arg("--version").output().is_err() {
            eprintln!("skipped: dmidecode is not installed (apt-get install dmidecode)");
            return;
        }
        for (cpus, mem) in [(1u16, 256u64 << 20), (8, 6 << 30), (254, 1 << 40)] {
            let s = build(&cfg(cpus, mem));
            let mut dump = s.anchor.clone();
            dump[ENTRY_POINT_TABLE_ADDRESS..ENTRY_POINT_TABLE_ADDRESS + 8]
                .copy_from_slice(&32u64.to_le_bytes());
            let sum = dump.iter().fold(0u8, |a, &b| a.wrapping_add(b));
            dump[5] = dump[5].wrapping_sub(sum);
            dump.resize(32, 0);
            dump.extend_from_slice(&s.tables);
            let path = std::env::temp_dir()
                .join(format!("vfiovm-smbios-{}-{cpus}.bin", std::process::id()));
            std::fs::write(&path, &dump).unwrap();
            let out = Command::new("dmidecode")
                .arg("--from-dump")
                .arg(&path)
                .output()
                .unwrap();
            std::fs::remove_file(&path).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            for bad in [
                "OUT OF SPEC",
                "Invalid",
                "wrong",
                "Bad",
                "truncated",
                "Unknown Type",
            ] {
                assert!(!text.contains(bad), "{bad}: {text}");
            }
            for want in [
                "SMBIOS 3.0.0 present.",
                "BIOS Information",
                "Vendor: vfiovm",
                "System Information",
                "UUID: 11111111-1111-1111-1111-111111111111",
                "Chassis Information",
                "Processor Information",
                &format!("Core Count: {cpus}"),
                "Physical Memory Array",
                "Memory Device",
                "Memory Array Mapped Address",
                "System Boot Information",
                "Status: No errors detected",
                "End Of Table",
            ] {
                assert!(text.contains(want), "{want}: {text}");
            }
            let regions = layout::ram_regions(mem).len();
            assert_eq!(text.matches("\nHandle 0x").count(), 8 + regions, "{text}");
            let size = if mem >> 30 >= 1024 {
                format!("Size: {} TB", mem >> 40)
            } else if mem >= 1 << 30 {
                format!("Size: {} GB", mem >> 30)
            } else {
                format!("Size: {} MB", mem >> 20)
            };
            assert!(text.contains(&size), "{size}: {text}");
        }
    }
}
