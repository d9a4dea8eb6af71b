//! The PCI platform seen from inside a guest: tiny guests (`pci_probe`, `pci_hostile`,
//! `pci_bench`) enumerate bus 0 through 0xCF8/0xCFC and ECAM, size and move the test device's
//! BARs, take its MSI-X, MSI and INTx interrupts, let it DMA, read its extended config space, and
//! write garbage everywhere. The guests check what they can themselves (a failed check ends the
//! run with status 255); these tests compare what they print with what the platform and the
//! test device (`devices::pci::testdev`) declare.

mod common;

use std::collections::{BTreeMap, HashMap};

use arch::layout;
use common::{guest, run, Outcome};
use devices::pci::host_bridge::{HOST_BRIDGE_CLASS, HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID};
use devices::pci::testdev::{
    DMA_DONE, DMA_NO_BUS_MASTER, DMA_OUT_OF_RAM, FIRE_DISABLED, FIRE_INTX, FIRE_MSI, FIRE_MSIX,
    FIRE_PENDING, IO_BAR, IO_BAR_SIZE, MEM_BAR, MEM_BAR_SIZE, MSIX_BAR, MSIX_BAR_SIZE,
    MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, MSIX_VECTORS, MSI_VECTORS, REGS_BAR, REGS_BAR_SIZE,
    ROM_SIZE, TESTDEV_CLASS, TESTDEV_DEVICE_ID, TESTDEV_IDENT, TESTDEV_VENDOR_ID, TESTDEV_VSEC_ID,
};

/// Debug-exit status of a guest that ran `exit:0` (`(0 << 1) | 1`).
const STATUS_OK: i32 = 1;
/// `pci_hostile` ends with `exit:0x2a`.
const STATUS_HOSTILE: i32 = (0x2a << 1) | 1;

/// Runs `pci_probe` with `test=<name>`, with or without the test device.
fn probe(test: &str, device: bool) -> Outcome {
    let cmdline = format!("test={test}");
    let image = guest("pci_probe");
    let mut args = vec![
        "--kernel",
        image.as_str(),
        "--memory",
        "256M",
        "--cmdline",
        &cmdline,
    ];
    if device {
        args.push("--test-pci-device");
    }
    let o = run(&args);
    assert!(!o.stderr.contains("panicked"), "VMM panicked: {o:#?}");
    o.expect_status(STATUS_OK);
    assert!(o.stdout.contains("pci_probe: failures=0"), "{o:#?}");
    o
}

/// A number as the guests print it: `0x`-prefixed hex or decimal.
fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .unwrap_or_else(|e| panic!("{s:?} is not a number: {e}"))
}

/// The `field=value` words of a line.
fn fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// The fields of the first line that starts with `prefix` (the whole prefix, e.g.
/// `"msix: masked "`).
fn line<'a>(o: &'a Outcome, prefix: &str) -> HashMap<&'a str, &'a str> {
    let l = o
        .stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}: {o:#?}"));
    fields(l)
}

/// A numeric field of the first line starting with `prefix`.
fn field(o: &Outcome, prefix: &str, name: &str) -> u64 {
    let f = line(o, prefix);
    num(f
        .get(name)
        .unwrap_or_else(|| panic!("no {name}= after {prefix:?}: {o:#?}")))
}

/// What one mechanism showed of one function: vendor, device, class, header type.
type Function = (u64, u64, u64, u64);

/// `enum: BB:DD.F mech=M vendor=.. device=.. class=.. header=..` lines, per mechanism.
fn enumerated(o: &Outcome) -> BTreeMap<String, BTreeMap<String, Function>> {
    let mut by_mech: BTreeMap<String, BTreeMap<String, Function>> = BTreeMap::new();
    for l in o.stdout.lines() {
        let Some(rest) = l.strip_prefix("enum: ") else {
            continue;
        };
        let Some((bdf, _)) = rest.split_once(' ') else {
            continue;
        };
        if !bdf.contains(':') {
            continue;
        }
        let f = fields(rest);
        let (Some(mech), Some(vendor), Some(device), Some(class), Some(header)) = (
            f.get("mech"),
            f.get("vendor"),
            f.get("device"),
            f.get("class"),
            f.get("header"),
        ) else {
            continue;
        };
        by_mech.entry(mech.to_string()).or_default().insert(
            bdf.to_string(),
            (num(vendor), num(device), num(class), num(header)),
        );
    }
    by_mech
}

/// The same functions, with the same identity, through both mechanisms; all the rest absent
/// and all ones; every dword of the first 256 bytes of all 256 functions equal.
fn check_enumeration(o: &Outcome, want: &BTreeMap<String, Function>) {
    let seen = enumerated(o);
    assert_eq!(seen.get("cf8"), Some(want), "{o:#?}");
    assert_eq!(seen.get("ecam"), Some(want), "{o:#?}");
    for mech in ["cf8", "ecam"] {
        let f = line(o, &format!("enum: mech={mech} present="));
        let absent = 256 - want.len() as u64;
        assert_eq!(num(f["present"]), want.len() as u64, "{mech}");
        assert_eq!(num(f["absent"]), absent, "{mech}");
        assert_eq!(num(f["absent_all_ones"]), absent, "{mech}");
    }
    assert_eq!(field(o, "enum: compared=", "compared"), 256 * 64);
    assert_eq!(field(o, "enum: compared=", "mismatches"), 0);
    assert_eq!(field(o, "enum: cf8 enable_bit_clear", "value"), 0xffff_ffff);
}

fn host_bridge() -> (String, Function) {
    (
        "00:00.0".to_string(),
        (
            HOST_BRIDGE_VENDOR_ID.into(),
            HOST_BRIDGE_DEVICE_ID.into(),
            HOST_BRIDGE_CLASS.into(),
            0,
        ),
    )
}

#[test]
fn enumeration_without_test_device_is_the_host_bridge_alone() {
    let o = probe("enum", false);
    o.expect_clean_stderr(0);
    check_enumeration(&o, &BTreeMap::from([host_bridge()]));
}

#[test]
fn enumeration_with_test_device_agrees_between_cf8_and_ecam() {
    let o = probe("enum", true);
    o.expect_clean_stderr(0);
    let testdev = (
        "00:01.0".to_string(),
        (
            TESTDEV_VENDOR_ID.into(),
            TESTDEV_DEVICE_ID.into(),
            TESTDEV_CLASS.into(),
            0,
        ),
    );
    check_enumeration(&o, &BTreeMap::from([host_bridge(), testdev]));
}

/// `(kind, prefetch, size, addr)` of `bar[i]:`.
fn bar(o: &Outcome, index: usize) -> (String, u64, u64, u64) {
    let f = line(o, &format!("bar[{index}]: kind="));
    (
        f["kind"].to_string(),
        num(f["prefetch"]),
        num(f["size"]),
        num(f["addr"]),
    )
}

#[test]
fn test_device_bars_size_as_declared() {
    let o = probe("bars", true);
    o.expect_clean_stderr(0);
    let mmio32 = layout::PCI_MMIO32_START..layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE;
    let io = u64::from(layout::ports::PCI_IO_START)
        ..u64::from(layout::ports::PCI_IO_START) + u64::from(layout::ports::PCI_IO_SIZE);

    let (kind, prefetch, size, addr) = bar(&o, REGS_BAR);
    assert_eq!((kind.as_str(), prefetch, size), ("mem32", 0, REGS_BAR_SIZE));
    assert!(mmio32.contains(&addr) && addr % size == 0, "{addr:#x}");

    let (kind, _, size, addr) = bar(&o, IO_BAR);
    assert_eq!((kind.as_str(), size), ("io", IO_BAR_SIZE));
    assert!(io.contains(&addr) && addr % size == 0, "{addr:#x}");

    // Non-prefetchable 64-bit: placed in the 32-bit window; the next register is its upper half.
    let (kind, prefetch, size, addr) = bar(&o, MSIX_BAR);
    assert_eq!((kind.as_str(), prefetch, size), ("mem64", 0, MSIX_BAR_SIZE));
    assert!(mmio32.contains(&addr) && addr % size == 0, "{addr:#x}");
    assert_eq!(
        field(
            &o,
            &format!("bar[{}]: upper-half-of=", MSIX_BAR + 1),
            "upper-half-of"
        ),
        MSIX_BAR as u64
    );

    // Prefetchable 64-bit: placed above 4 GiB.
    let (kind, prefetch, size, addr) = bar(&o, MEM_BAR);
    assert_eq!((kind.as_str(), prefetch, size), ("mem64", 1, MEM_BAR_SIZE));
    assert!(
        addr >= layout::HIGH_RAM_START && addr % size == 0,
        "{addr:#x}"
    );
    assert_eq!(
        field(
            &o,
            &format!("bar[{}]: upper-half-of=", MEM_BAR + 1),
            "upper-half-of"
        ),
        MEM_BAR as u64
    );

    let rom = line(&o, "bar[rom]: ");
    assert_eq!(rom["kind"], "rom");
    assert_eq!(num(rom["size"]), ROM_SIZE);
    assert_eq!(num(rom["enabled"]), 0, "firmware leaves the ROM disabled");
    assert!(mmio32.contains(&num(rom["addr"])));

    assert!(o.stdout.contains("bars: restored=yes"), "{o:#?}");
    assert!(
        o.stdout
            .contains("bars: rom signature=0xaa55 text=VFTD test ROM disabled_reads=0xffffffff"),
        "{o:#?}"
    );
    assert_eq!(
        field(&o, "bars: ident_after_sizing=", "ident_after_sizing"),
        u64::from(TESTDEV_IDENT)
    );
}

#[test]
fn bar0_moves_and_memory_decoding_toggles() {
    let o = probe("move", true);
    let ident = u64::from(TESTDEV_IDENT);
    let all_ones = 0xffff_ffff;
    let start = line(&o, "move: bar0=");
    assert_eq!(num(start["ident"]), ident);
    assert_eq!(num(start["ident_io"]), ident, "the I/O BAR mirrors IDENT");
    let old = num(start["bar0"]);

    let w = line(&o, "move: window ");
    let to = num(w["to"]);
    assert_ne!(to, old);
    assert!(
        to >= layout::PCI_MMIO32_START
            && to + REGS_BAR_SIZE <= layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE
    );
    assert_eq!(num(w["ident_at_new"]), ident);
    assert_eq!(num(w["ident_at_old"]), all_ones);
    assert_eq!(w["bar_moves"], "+1");

    // Memory decoding off unmaps every memory BAR (the ROM is disabled anyway), on maps them.
    let memory_bars = [REGS_BAR, MSIX_BAR, MEM_BAR].len();
    let off = line(&o, "move: memory_decoding=off ");
    assert_eq!(num(off["ident"]), all_ones);
    assert_eq!(off["bar_moves"], format!("+{memory_bars}"));
    let on = line(&o, "move: memory_decoding=on ");
    assert_eq!(num(on["ident"]), ident);
    assert_eq!(on["bar_moves"], format!("+{memory_bars}"));

    // Outside the windows: unmapped, nothing answers there.
    let outside = line(&o, "move: outside ");
    assert_eq!(num(outside["ident_at_new"]), all_ones);
    assert_eq!(num(outside["ident_at_old"]), all_ones);
    assert_eq!(outside["bar_moves"], "+1");
    let back_in = line(&o, "move: from_outside ");
    assert_eq!(num(back_in["ident_at_new"]), ident);
    assert_eq!(back_in["bar_moves"], "+1");

    // Over the MSI-X BAR: left unmapped; mapped as soon as the MSI-X BAR moves away.
    let overlap = line(&o, "move: overlap ");
    assert_ne!(num(overlap["ident_at_new"]), ident);
    assert_eq!(overlap["bar_moves"], "+1");
    let away = line(&o, "move: msix_bar_away ");
    assert_eq!(num(away["ident_at_bar0"]), ident);
    assert_eq!(away["bar_moves"], "+2", "BAR 2 moved, BAR 0 mapped");

    let back = line(&o, "move: back ");
    assert_eq!(num(back["to"]), old);
    assert_eq!(num(back["ident_at_new"]), ident);

    // The 64-bit BAR 4 moved below 4 GiB, low dword then high: one transient mapping at
    // to + 4 GiB (still in the 64-bit window), then the target; its memory works there. Back
    // with decoding off: the three memory BARs unmapped and mapped again.
    let bar4 = line(&o, "move: bar4 ");
    assert_eq!(bar4["memory"], "ok");
    assert_eq!(bar4["bar_moves"], "+2");
    assert_eq!(bar4["restored"], bar4["from"]);
    assert_eq!(bar4["bar_moves_back"], format!("+{}", 2 * memory_bars));
    assert!(num(bar4["to"]) + MEM_BAR_SIZE <= layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE);

    // The two unmapped episodes are logged, nothing else.
    assert!(
        o.stderr
            .lines()
            .all(|l| l.contains("warn: PCI: BAR 0 at ") && l.contains("left unmapped")),
        "{o:#?}"
    );
    assert_eq!(o.stderr.lines().count(), 2, "{o:#?}");
}

#[test]
fn msix_delivers_the_programmed_vector_and_pends_while_masked() {
    let o = probe("msix", true);
    o.expect_clean_stderr(0);
    let cap = line(&o, "msix: cap=");
    assert_eq!(num(cap["vectors"]), u64::from(MSIX_VECTORS));
    assert_eq!(
        cap["table"],
        format!("bar{MSIX_BAR}+{MSIX_TABLE_OFFSET:#x}")
    );
    assert_eq!(cap["pba"], format!("bar{MSIX_BAR}+{MSIX_PBA_OFFSET:#x}"));

    let f1 = line(&o, "msix: fire=1 ");
    assert_eq!(
        (f1["got"], num(f1["fire_status"])),
        ("0x41", FIRE_MSIX.into())
    );
    let f0 = line(&o, "msix: fire=0 ");
    assert_eq!(
        (f0["got"], num(f0["fire_status"])),
        ("0x40", FIRE_MSIX.into())
    );

    let masked = line(&o, "msix: masked fire=1 ");
    assert_eq!(masked["got"], "none");
    assert_eq!(num(masked["fire_status"]), u64::from(FIRE_PENDING));
    assert_eq!(num(masked["pba"]), 1 << 1);
    let unmask = line(&o, "msix: unmask ");
    assert_eq!((unmask["got"], num(unmask["pba"])), ("0x41", 0));

    let fmasked = line(&o, "msix: function_masked fire=0 ");
    assert_eq!(fmasked["got"], "none");
    assert_eq!(num(fmasked["fire_status"]), u64::from(FIRE_PENDING));
    assert_eq!(num(fmasked["pba"]), 1 << 0);
    let funmask = line(&o, "msix: function_unmask ");
    assert_eq!((funmask["got"], num(funmask["pba"])), ("0x40", 0));

    // A masked entry with new data delivers the new vector once unmasked.
    assert_eq!(line(&o, "msix: reprogrammed fire=1 ")["got"], "0x42");

    // Exactly the five deliveries above: nothing spurious, nothing doubled.
    let total = line(&o, "msix: interrupts=");
    assert_eq!(
        (
            num(total["interrupts"]),
            num(total["vector0"]),
            num(total["vector1"])
        ),
        (5, 2, 3)
    );
}

#[test]
fn msi_delivers_data_plus_vector_and_pends_while_masked() {
    let o = probe("msi", true);
    o.expect_clean_stderr(0);
    let cap = line(&o, "msi: cap=");
    assert_eq!(num(cap["max_vectors"]), u64::from(MSI_VECTORS));
    assert_eq!((cap["64bit"], cap["per_vector_mask"]), ("1", "1"));

    let f1 = line(&o, "msi: fire=1 ");
    assert_eq!(
        (f1["got"], num(f1["fire_status"])),
        ("0x51", FIRE_MSI.into())
    );
    let f0 = line(&o, "msi: fire=0 ");
    assert_eq!(
        (f0["got"], num(f0["fire_status"])),
        ("0x50", FIRE_MSI.into())
    );
    let masked = line(&o, "msi: masked fire=1 ");
    assert_eq!(masked["got"], "none");
    assert_eq!(num(masked["fire_status"]), u64::from(FIRE_PENDING));
    assert_eq!(num(masked["pending"]), 1 << 1);
    let unmask = line(&o, "msi: unmask ");
    assert_eq!((unmask["got"], num(unmask["pending"])), ("0x51", 0));
    // New data while enabled: vector 1 now arrives as 0x58 + 1.
    assert_eq!(line(&o, "msi: reprogrammed fire=1 ")["got"], "0x59");
    assert_eq!(field(&o, "msi: interrupts=", "interrupts"), 4);
}

#[test]
fn intx_is_level_triggered_through_the_ioapic() {
    let o = probe("intx", true);
    o.expect_clean_stderr(0);
    let wired = line(&o, "intx: pin=");
    assert_eq!(num(wired["pin"]), 1, "INTA#");
    // The platform wrote the GSI of slot 1, INTA# into the interrupt line register.
    assert_eq!(num(wired["line"]), u64::from(layout::pci_intx_gsi(1, 0)));
    let step = |name: &str| line(&o, &format!("intx: step={name} "))["got"].to_string();
    assert_eq!(step("fire"), "0x60");
    // Level semantics: EOI'd while INTX_STATUS is set, the line comes back (at the device's
    // next register access), and stops once the guest clears INTX_STATUS.
    assert_eq!(step("fire_status_read"), "0x60");
    assert_eq!(step("no_access"), "none");
    assert_eq!(step("register_read"), "0x60");
    assert_eq!(step("after_clear"), "none");
    assert_eq!(step("fire_while_disabled"), "none");
    assert_eq!(step("enable"), "0x60");
    let f = line(&o, "intx: fire_status=");
    assert_eq!(num(f["fire_status"]), u64::from(FIRE_INTX));
    assert_eq!(num(f["status_bit_set"]), 1);
    assert_eq!(num(f["intx_status_after_clear"]), 0);
    assert_eq!(num(f["status_bit_after_clear"]), 0);
    assert_eq!(num(f["fire_status_disabled"]), u64::from(FIRE_DISABLED));
}

#[test]
fn dma_lands_in_guest_ram_and_is_refused_outside_it() {
    let o = probe("dma", true);
    o.expect_clean_stderr(0);
    let ram = line(&o, "dma: ram ");
    assert_eq!(num(ram["status"]), u64::from(DMA_DONE));
    assert_eq!(num(ram["count"]), 1);
    assert_eq!(ram["readback"], ram["value"]);
    assert!(o.stdout.contains("dma: neighbours_untouched=yes"));
    for what in ["beyond_ram", "straddling_ram_end", "ecam"] {
        let f = line(&o, &format!("dma: {what} "));
        assert_eq!(num(f["status"]), u64::from(DMA_OUT_OF_RAM), "{what}");
        assert_eq!(num(f["count"]), 1, "{what}: refused DMAs are not counted");
    }
    let f = line(&o, "dma: no_bus_master ");
    assert_eq!(num(f["status"]), u64::from(DMA_NO_BUS_MASTER));
    assert_eq!(num(f["count"]), 1);
}

#[test]
fn extended_config_space_is_reached_through_ecam_only() {
    let o = probe("ext", true);
    o.expect_clean_stderr(0);
    let hdr = line(&o, "ext: ecam off=0x100 ");
    assert_eq!(
        num(hdr["id"]),
        u64::from(devices::pci::caps::pcie::VSEC_CAP_ID)
    );
    assert_eq!(num(hdr["next"]), 0, "the only extended capability");
    let vsec = line(&o, "ext: vsec at=");
    assert_eq!(num(vsec["at"]), 0x100);
    assert_eq!(num(vsec["vsec_id"]), u64::from(TESTDEV_VSEC_ID));
    assert_eq!(num(vsec["ident"]), u64::from(TESTDEV_IDENT));
    let scratch = line(&o, "ext: vsec scratch ");
    assert_eq!(scratch["read"], scratch["wrote"]);
    assert_eq!(num(scratch["ident_after_write"]), u64::from(TESTDEV_IDENT));

    // CONFIG_ADDRESS keeps only enable, bus, device, function and register 7:2: offset 0x100
    // cannot be named, and the AMD-style bits 27:24 are dropped (the access reaches 0x00).
    let cf8 = line(&o, "ext: cf8 ext_bits ");
    assert_eq!(num(cf8["readback"]), num(cf8["address"]) & 0x80ff_fffc);
    assert_eq!(cf8["value"], cf8["dword0"]);
    assert_eq!(
        num(cf8["value"]),
        u64::from(TESTDEV_VENDOR_ID) | u64::from(TESTDEV_DEVICE_ID) << 16
    );
    assert_ne!(num(cf8["value"]), num(hdr["header"]));
    let pcie = line(&o, "ext: pcie_cap ");
    assert_eq!(pcie["cf8"], pcie["ecam"]);
    // A conventional function (the host bridge) has nothing there.
    assert_eq!(field(&o, "ext: host_bridge ", "value"), 0);
}

/// Runs `pci_hostile` and checks the VMM came through: the guest's own exit status, its last
/// line, no panic, and the test device still answering.
fn hostile(seed: Option<u32>, device: bool) -> Outcome {
    let image = guest("pci_hostile");
    let cmdline = seed.map(|s| format!("seed={s:#x}")).unwrap_or_default();
    let mut args = vec!["--kernel", image.as_str(), "--memory", "256M"];
    if !cmdline.is_empty() {
        args.extend(["--cmdline", &cmdline]);
    }
    if device {
        args.push("--test-pci-device");
    }
    let o = run(&args);
    assert!(!o.stderr.contains("panicked"), "VMM panicked: {o:#?}");
    o.expect_status(STATUS_HOSTILE);
    assert!(o.stdout.contains("\nhostile: survived\n"), "{o:#?}");
    if let Some(seed) = seed {
        assert_eq!(field(&o, "hostile: seed=", "seed"), u64::from(seed));
    }
    o
}

#[test]
fn hostile_guest_cannot_crash_the_vmm() {
    let o = hostile(Some(0x1badcafe), true);
    assert_eq!(
        field(&o, "hostile: phase=ecam ", "present_functions"),
        2,
        "{o:#?}"
    );
    assert!(field(&o, "hostile: phase=bars ", "accesses") > 0);
    // Random MSI/MSI-X programming with bus mastering on: some FIREs were delivered.
    let storm = line(&o, "hostile: phase=interrupts ");
    assert!(num(storm["msix"]) > 0 && num(storm["msi"]) > 0, "{o:#?}");
    // Garbage never turned bus mastering on through a BAR.
    assert_eq!(
        field(&o, "hostile: command_after=", "command_after") & 0x4,
        0
    );
    assert_eq!(
        field(&o, "hostile: ident_after=", "ident_after"),
        u64::from(TESTDEV_IDENT),
        "the test device works again once reprogrammed: {o:#?}"
    );
    // Only the platform's bounded BAR-mapping warnings may appear.
    assert!(
        o.stderr.lines().all(|l| l.contains("warn: PCI: BAR ")),
        "{o:#?}"
    );
}

#[test]
fn hostile_guest_with_a_fresh_seed_and_no_test_device() {
    // Seeded from the guest's TSC; the seed is in the output for a replay with `seed=`.
    let o = hostile(None, false);
    o.expect_clean_stderr(0);
    assert!(o.stdout.contains("hostile: test_device=no"));
    assert_eq!(field(&o, "hostile: phase=ecam ", "present_functions"), 1);
}

#[test]
fn bench_guest_reports_config_read_costs() {
    let image = guest("pci_bench");
    let o = run(&["--kernel", &image, "--cmdline", "n=500"]);
    o.expect_status(STATUS_OK).expect_clean_stderr(0);
    // vfiovm gives the guest the TSC frequency in the hypervisor timing leaf.
    let tsc = line(&o, "tsc: khz=");
    assert_eq!(tsc["source"], "cpuid-0x40000010");
    let khz = num(tsc["khz"]) as f64;
    let pm = field(&o, "tsc: pm_timer_khz=", "pm_timer_khz") as f64;
    assert!(
        (khz - pm).abs() / khz < 0.05,
        "the PM timer agrees with the TSC leaf within 5%: {khz} vs {pm}"
    );
    for mech in ["cf8", "cf8_data", "ecam"] {
        let f = line(&o, &format!("bench: mech={mech} "));
        assert_eq!(num(f["reads"]), 500);
        assert_eq!(
            num(f["value"]),
            u64::from(HOST_BRIDGE_VENDOR_ID) | u64::from(HOST_BRIDGE_DEVICE_ID) << 16
        );
        let ns: f64 = f["ns_per_read"].parse().unwrap();
        assert!(ns > 0.0, "{mech}: {ns}");
    }
}
