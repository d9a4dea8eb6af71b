//! Checks the tables with ACPICA's own tools, the code base Linux's ACPI core comes from:
//!
//! - `iasl -d` disassembles every table (the RSDP excepted: it has no standard table header, and
//!   iasl — at least Debian's 20200925 — cannot read it from a file; `mod.rs` checks it field by
//!   field) without errors or warnings;
//! - `acpiexec` loads the DSDT into the AML interpreter, evaluates `\_S5`, decodes `_PRT` and
//!   every `_CRS` the way the OS does.
//!
//! Both come with Debian's `acpica-tools`; the tests fail, rather than skip, without it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{build_tables, AcpiConfig, AcpiTables};
use crate::layout;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "vfiovm-acpi-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs an ACPICA tool in `dir`; returns its status and combined output.
fn run(tool: &str, args: &[&str], dir: &Path) -> (Output, String) {
    let out = match Command::new(tool).args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run `{tool}` ({e}); install ACPICA's tools (Debian/Ubuntu: \
             `apt-get install acpica-tools`) to run the ACPI table tests"
        ),
    };
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, log)
}

/// Runs `iasl -d` on `bytes` written to `dir/name.dat`; returns (iasl output, disassembly).
fn disassemble(dir: &Path, name: &str, bytes: &[u8]) -> (String, String) {
    let dat = format!("{name}.dat");
    std::fs::write(dir.join(&dat), bytes).expect("write table");
    let (out, log) = run("iasl", &["-d", &dat], dir);
    assert!(out.status.success(), "iasl -d {name} failed:\n{log}");
    let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl")))
        .unwrap_or_else(|e| panic!("iasl wrote no {name}.dsl ({e}):\n{log}"));
    (log, dsl)
}

/// Asserts that neither iasl's output nor the disassembly reports a problem.
fn assert_clean(name: &str, log: &str, dsl: &str) {
    for line in log.lines().chain(dsl.lines()) {
        let l = line.to_ascii_lowercase();
        assert!(
            !l.contains("error") && !l.contains("warning") && !l.contains("invalid"),
            "iasl reports a problem in {name}: {line}\n--- output ---\n{log}\n--- dsl ---\n{dsl}"
        );
    }
}

fn tables(num_cpus: u8, mmio64: Option<(u64, u64)>) -> AcpiTables {
    build_tables(&AcpiConfig { num_cpus, mmio64 }).unwrap()
}

fn disassemble_all(tag: &str, t: &AcpiTables) -> Vec<(&'static str, String)> {
    let dir = TempDir::new(tag);
    t.iter()
        .filter(|(name, _)| *name != "RSDP")
        .map(|(name, table)| {
            let (log, dsl) = disassemble(&dir.0, name, &table.bytes);
            assert_clean(name, &log, &dsl);
            (name, dsl)
        })
        .collect()
}

fn dsl_of<'a>(all: &'a [(&str, String)], name: &str) -> &'a str {
    &all.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn all_tables_disassemble_cleanly() {
    let mmio64 = layout::mmio64_window(2 << 30, 40);
    let all = disassemble_all("all", &tables(4, mmio64));

    let dsdt = dsl_of(&all, "DSDT");
    for needle in [
        "_S5_",
        "PNP0A08",
        "PNP0A03",
        "_PRT",
        "_CRS",
        "PNP0501",
        "PNP0303",
        "PNP0B00",
        "PNP0C02",
        "QEMU0002",
        "QEMU0001",
        // pvpanic and the runner port, each a fixed I/O range of its own.
        "IO (Decode16,\n                    0x0505,",
        "IO (Decode16,\n                    0x05F0,",
        "ACPI0007",
        "WordBusNumber",
        "QWordMemory",
        "DWordMemory",
        "IRQNoFlags",
        "Memory32Fixed",
        "0xB0000000",
        "0x10000000",
        "0xFBFFFFFF",
    ] {
        assert!(dsdt.contains(needle), "DSDT lacks {needle}:\n{dsdt}");
    }
    // 31 slots × 4 pins; each entry starts with its address line `0x00ssFFFF,`.
    let prt_entries = dsdt
        .lines()
        .map(str::trim)
        .filter(|l| l.len() == 11 && l.starts_with("0x00") && l.ends_with("FFFF,"))
        .count();
    assert_eq!(prt_entries, 124, "{dsdt}");

    let madt = dsl_of(&all, "APIC");
    assert_eq!(madt.matches("[Processor Local APIC]").count(), 4, "{madt}");
    assert_eq!(madt.matches("[Interrupt Source Override]").count(), 2);
    assert_eq!(madt.matches("[Local APIC NMI]").count(), 1, "{madt}");

    let fadt = dsl_of(&all, "FACP");
    assert!(fadt.contains("Address : 0000000000000CF9"), "{fadt}");
    assert!(fadt.contains("Address : 0000000000000608"), "{fadt}");
    assert!(fadt.contains("Hardware Reduced (V5) : 0"), "{fadt}");

    let mcfg = dsl_of(&all, "MCFG");
    assert!(mcfg.contains("Base Address : 00000000B0000000"), "{mcfg}");

    // iasl decodes the WAET's flags by name (ACPICA's dmtbinfo: "RTC needs no INT ack",
    // "PM timer, one read only").
    let waet = dsl_of(&all, "WAET");
    assert!(waet.contains("Flags (decoded below) : 00000003"), "{waet}");
    assert!(waet.contains("RTC needs no INT ack : 1"), "{waet}");
    assert!(waet.contains("PM timer, one read only : 1"), "{waet}");

    let xsdt = dsl_of(&all, "XSDT");
    assert_eq!(xsdt.matches("ACPI Table Address").count(), 4, "{xsdt}");
}

#[test]
fn extremes_disassemble_cleanly() {
    // One CPU, no 64-bit window.
    let all = disassemble_all("min", &tables(1, None));
    let dsdt = dsl_of(&all, "DSDT");
    assert!(!dsdt.contains("QWordMemory"), "{dsdt}");
    // 255 CPUs and the widest 64-bit window.
    let all = disassemble_all(
        "max",
        &tables(255, Some((1 << 32, super::MAX_PHYS_ADDR - (1 << 32)))),
    );
    let madt = dsl_of(&all, "APIC");
    assert_eq!(madt.matches("[Processor Local APIC]").count(), 255);
    assert!(dsl_of(&all, "DSDT").contains("0x000FFFFFFFFFFFFF"));
}

#[test]
fn dsdt_loads_and_evaluates_in_acpiexec() {
    let t = tables(2, layout::mmio64_window(2 << 30, 40));
    let dir = TempDir::new("exec");
    std::fs::write(dir.0.join("dsdt.dat"), &t.dsdt.bytes).expect("write DSDT");
    let commands = [
        "evaluate \\_S5_",
        "evaluate \\_SB.C001._UID",
        "prt \\_SB.PCI0",
        "resources \\_SB.PCI0",
        "resources \\_SB.MBRS",
        "resources \\_SB.COM1",
        "resources \\_SB.KBD_",
        "resources \\_SB.RTC_",
        "resources \\_SB.FWCF",
        "resources \\_SB.PEVT",
        "evaluate \\_SB.PEVT._STA",
    ]
    .join("; ");
    let (out, log) = run("acpiexec", &["-b", &commands, "dsdt.dat"], &dir.0);
    assert!(out.status.success(), "acpiexec failed:\n{log}");

    for line in log.lines() {
        // `resources` also tries `_SRS`, which fixed-resource devices do not have.
        if line.trim() == "AcpiSetCurrentResources failed: AE_NOT_FOUND" {
            continue;
        }
        let l = line.to_ascii_lowercase();
        assert!(
            !l.contains("error")
                && !l.contains("warning")
                && !l.contains("exception")
                && !l.contains("failed")
                && !l.contains("ae_"),
            "acpiexec reports a problem: {line}\n{log}"
        );
    }
    assert!(log.contains("Evaluation of \\_S5_ returned"), "{log}");
    let s5_type = format!("[Integer] = {:016X}", layout::ports::SLP_TYP_S5);
    assert!(log.contains(&s5_type), "{log}");
    assert_eq!(
        log.matches("PCI IRQ Routing Table Package").count(),
        124,
        "{log}"
    );
    // One end tag per decoded _CRS: 7 devices.
    assert_eq!(log.matches("EndTag Resource").count(), 7, "{log}");
    // pvpanic's port, the runner port's range (in MBRS), and the _STA old pvpanic drivers check.
    for port in ["Address Minimum : 0505", "Address Minimum : 05F0"] {
        assert!(log.contains(port), "{port}: {log}");
    }
    assert!(
        log.contains("Evaluation of \\_SB.PEVT._STA returned"),
        "{log}"
    );
    assert!(log.contains("64-Bit QWORD Address Space Resource"), "{log}");
    assert!(log.contains("Resource Type : Bus Number Range"), "{log}");
}
