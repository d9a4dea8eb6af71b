//! Boot protocols on /dev/kvm with tiny guests: PVH (32-bit entry, hvm_start_info) and the Linux
//! 64-bit entry (zero page), serial output, the memory map, the command line, the initramfs,
//! ACPI tables as the guest parses them, and SMP bring-up by INIT/SIPI.

mod common;

use common::{guest, run, Outcome, TempFile};

/// Parses `key[i]: addr=0x.. size=0x.. type=N` lines into (addr, size, type).
fn map_entries(o: &Outcome, key: &str) -> Vec<(u64, u64, u32)> {
    let prefix = format!("{key}[");
    o.stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| {
            let field = |name: &str| {
                let v = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {l}"));
                u64::from_str_radix(
                    v.trim_start_matches("0x"),
                    if v.starts_with("0x") { 16 } else { 10 },
                )
                .unwrap()
            };
            (field("addr="), field("size="), field("type=") as u32)
        })
        .collect()
}

fn ram_total(entries: &[(u64, u64, u32)]) -> u64 {
    entries.iter().filter(|e| e.2 == 1).map(|e| e.1).sum()
}

#[test]
fn pvh_entry_sees_memmap_cmdline_module_and_acpi() {
    let initrd = TempFile::new("initrd", b"INITRAMFS-MAGIC-0123456789");
    let o = run(&[
        "--kernel",
        &guest("pvh_probe"),
        "--memory",
        "256M",
        "--initramfs",
        initrd.path(),
        "--cmdline",
        "action=exit:5 marker=pvh-ok",
    ]);
    o.expect_status(11).expect_clean_stderr(0);
    assert_eq!(o.value("pvh"), Some("start_info=0x6000"));
    assert!(o.stdout.contains("pvh: magic=0x336ec578 version=1"));
    assert!(o.stdout.contains("cpu: mode=32"), "entered in 32-bit mode");
    assert_eq!(o.value("cmdline"), Some("action=exit:5 marker=pvh-ok"));
    assert_eq!(o.value("modules"), Some("1"));
    let module = o.value("module[0]").unwrap();
    assert!(module.contains("size=0x1a"), "{module}");
    assert!(module.contains("head=INITRAMFS-MAGIC-"), "{module}");
    let map = map_entries(&o, "memmap");
    // Everything but the reserved EBDA/BIOS area (0x9fc00..0x100000) is RAM.
    assert_eq!(ram_total(&map), (256 << 20) - (0x10_0000 - 0x9_fc00));
    assert!(
        map.contains(&(0xb000_0000, 0x1000_0000, 2)),
        "ECAM reserved: {map:?}"
    );
    assert!(o
        .stdout
        .contains("acpi: summary tables=4 bad=0 fadt=yes madt=yes mcfg=yes"));
    // The WAET: RTC good (bit 0) and ACPI PM timer good (bit 1).
    assert!(o.stdout.contains("acpi: waet flags=0x3\n"), "{}", o.stdout);
    assert!(!o.stdout.contains("checksum BAD"));
    assert_eq!(o.value("cpus"), Some("1"));
    assert!(o.stdout.contains("\ndone\n"));
}

#[test]
fn linux64_entry_sees_zero_page() {
    let initrd = TempFile::new("initrd64", b"ZERO-PAGE-INITRD");
    let o = run(&[
        "--kernel",
        &guest("elf64_probe"),
        "--memory",
        "5G",
        "--initramfs",
        initrd.path(),
        "--cmdline",
        "action=exit:3 marker=linux64",
    ]);
    o.expect_status(7).expect_clean_stderr(0);
    assert_eq!(o.value("boot"), Some("linux64 zero_page=0x7000"));
    assert!(o.stdout.contains("cpu: mode=64"), "entered in long mode");
    assert!(
        o.stdout.contains("rsdp=0xe0000"),
        "zero page carries the RSDP"
    );
    assert_eq!(o.value("cmdline"), Some("action=exit:3 marker=linux64"));
    let initrd_line = o.value("initrd").unwrap();
    assert!(
        initrd_line.contains("size=0x10 head=ZERO-PAGE-INITRD"),
        "{initrd_line}"
    );
    let e820 = map_entries(&o, "e820");
    // 5 GiB: 2 GiB below the hole (Q35's split) and the rest above 4 GiB.
    assert_eq!(ram_total(&e820), (5 << 30) - (0x10_0000 - 0x9_fc00));
    assert!(e820.contains(&(0x1_0000_0000, 3 << 30, 1)), "{e820:?}");
    assert!(o.stdout.contains("acpi: summary tables=4 bad=0"));
}

#[test]
fn two_cpus_from_madt_and_ap_wakes_by_init_sipi() {
    let o = run(&[
        "--kernel",
        &guest("pvh_probe"),
        "--cpus",
        "2",
        "--cmdline",
        "action=exit:0",
    ]);
    o.expect_status(1).expect_clean_stderr(0);
    assert_eq!(o.value("cpus"), Some("2"));
    assert!(o
        .stdout
        .contains("acpi: madt lapic uid=1 apic_id=1 enabled"));
    assert!(o.stdout.contains("smp: aps_expected=1"));
    assert!(o.stdout.contains("smp: aps_online=1"), "{o:#?}");
}

#[test]
fn four_cpus_all_online() {
    let o = run(&[
        "--kernel",
        &guest("pvh_probe"),
        "--cpus",
        "4",
        "--cmdline",
        "action=exit:0",
    ]);
    o.expect_status(1);
    assert_eq!(o.value("cpus"), Some("4"));
    assert!(o.stdout.contains("smp: aps_online=3"), "{o:#?}");
}

#[test]
fn demo_guest_says_hello_and_powers_off() {
    let o = run(&[
        "--kernel",
        &guest("hello"),
        "--memory",
        "128M",
        "--cpus",
        "2",
    ]);
    o.expect_status(0).expect_clean_stderr(0);
    assert!(o.stdout.contains("hello: Hello from a tiny vfiovm guest!"));
    assert!(o.stdout.contains("hello: memory: 127 MiB"), "{o:#?}");
    assert!(o.stdout.contains("hello: cpus: 2 (from the ACPI MADT)"));
    assert!(
        o.stdout.contains("hello: cmdline: console=ttyS0"),
        "default command line"
    );
}

/// `--on-reset reboot` on a direct boot: the guest's reset restarts the VM in place with the
/// kernel (and its initramfs) loaded again and guest RAM cleared, while the RTC's NVRAM keeps
/// the byte the first boot set; with 2 vCPUs the AP comes up again in the second boot. The
/// default for a direct boot stays `exit`: the reset ends the run with status 0.
#[test]
fn direct_boot_reboots_in_place_with_on_reset_reboot() {
    let initrd = TempFile::new("initrd", b"INITRAMFS-MAGIC-0123456789");
    for probe in ["pvh_probe", "elf64_probe"] {
        let kernel = guest(probe);
        let o = run(&[
            "--kernel",
            &kernel,
            "--initramfs",
            initrd.path(),
            "--cpus",
            "2",
            "--cmdline",
            "action=reset-once",
            "--on-reset",
            "reboot",
        ]);
        o.expect_status(1).expect_clean_stderr(0);
        let s = &o.stdout;
        assert!(
            s.contains(
                "action: reset-once: cmos=0x0 ram_mark=0x0\naction: reset-once: resetting\n"
            ),
            "{probe}: {o:#?}"
        );
        assert!(
            s.contains(
                "action: reset-once: cmos=0xa5 ram_mark=0x0\naction: reset-once: after the reset\n"
            ),
            "{probe}: {o:#?}"
        );
        // Everything the first boot printed, the second printed again (the initramfs too).
        for line in s
            .lines()
            .filter(|l| l.starts_with("initramfs: ") || l.starts_with("cpus: "))
        {
            assert_eq!(s.matches(line).count(), 2, "{probe}: {line:?} once: {o:#?}");
        }
        let o = run(&["--kernel", &kernel, "--cmdline", "action=reset-once"]);
        o.expect_status(0).expect_clean_stderr(0);
        assert!(
            o.stdout.contains("action: reset-once: resetting\n"),
            "{o:#?}"
        );
        assert!(!o.stdout.contains("after the reset"), "{o:#?}");
    }
}
