//! Multiboot (v1) loading with the `mb_probe` tiny guest, an ELF32 multiboot image built like
//! kvm-unit-tests' x86 `*.flat` files: the bootloader magic in eax, the information structure
//! (memory, e820 memory map, command line, the initramfs as module 0 with its string, the loader's
//! name), fw_cfg's CPU count and RAM size as kvm-unit-tests' lib/x86/fwcfg.c reads them,
//! `--pc-testdev`'s ports, and exiting through debug-exit with a status; hostile images.

mod common;

use common::{guest, run, Outcome, TempFile};

fn mb_probe(extra: &[&str], cmdline: &str) -> Outcome {
    let g = guest("mb_probe");
    let mut args = vec!["--kernel", g.as_str(), "--cmdline", cmdline];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn multiboot_entry_sees_magic_memory_cmdline_and_module() {
    let env = TempFile::new("kut-env", b"NR_CPUS=2\nMARK=multiboot-env-0123\n");
    let o = mb_probe(
        &["--memory", "96M", "--cpus", "2", "--initramfs", env.path()],
        "action=exit:5 marker=mb-ok",
    );
    o.expect_status(11).expect_clean_stderr(0);
    assert_eq!(o.value("multiboot"), Some("magic=0x2badb002 info=0x6000"));
    assert!(o.stdout.contains("cpu: mode=32 cr0=0x11"), "{}", o.stdout);
    // Memory, command line, modules, memory map, loader name: flags 0, 2, 3, 6, 9.
    assert!(
        o.stdout.contains("multiboot: flags=0x24d\n"),
        "{}",
        o.stdout
    );
    // 639 KiB below the EBDA; from 1 MiB to the end of RAM.
    assert!(o.stdout.contains(&format!(
        "multiboot: mem_lower=639 mem_upper={}\n",
        96 * 1024 - 1024
    )));
    assert!(o.stdout.contains("multiboot: loader: vfiovm\n"));
    // The kernel's name first, as GRUB and QEMU pass it (kvm-unit-tests' argv[0]).
    assert_eq!(
        o.value("cmdline"),
        Some(format!("{} action=exit:5 marker=mb-ok", guest("mb_probe")).as_str())
    );
    assert_eq!(o.value("modules"), Some("1"));
    assert!(o
        .stdout
        .contains(&format!("multiboot: module string: {}\n", env.path())));
    let module = o.value("module[0]").unwrap();
    assert!(module.contains("size=0x22"), "{module}");
    // Its first 16 bytes, "NR_CPUS=2\nMARK=m" (printed as hex: the newline).
    assert!(
        module.contains("head=hex:4e525f435055533d320a4d41524b3d6d"),
        "{module}"
    );
    // The e820 map: low RAM, the EBDA/BIOS area, RAM from 1 MiB, the ECAM window.
    for line in [
        "memmap: 4 entries",
        "memmap[0]: addr=0x0 size=0x9fc00 type=1",
        "memmap[1]: addr=0x9fc00 size=0x60400 type=2",
        "memmap[2]: addr=0x100000 size=0x5f00000 type=1",
        "memmap[3]: addr=0xb0000000 size=0x10000000 type=2",
    ] {
        assert!(
            o.stdout.contains(&format!("{line}\n")),
            "{line}: {}",
            o.stdout
        );
    }
    // fw_cfg as kvm-unit-tests reads it: key 0x05 (u16) and key 0x03 (u64).
    assert_eq!(
        o.value("fw_cfg"),
        Some("signature=0x554d4551 cpus=2 ram=0x6000000")
    );
    assert_eq!(o.value("cpus"), Some("2"));
}

#[test]
fn without_initramfs_there_is_no_module() {
    let o = mb_probe(&["--memory", "32M"], "action=exit:0");
    o.expect_status(1).expect_clean_stderr(0);
    assert!(
        o.stdout.contains("multiboot: flags=0x245\n"),
        "{}",
        o.stdout
    );
    assert_eq!(o.value("modules"), Some("0"));
    assert_eq!(
        o.value("fw_cfg"),
        Some("signature=0x554d4551 cpus=1 ram=0x2000000")
    );
}

#[test]
fn pc_testdev_ports() {
    let o = mb_probe(
        &["--memory", "64M", "--pc-testdev"],
        "testdev=1 action=exit:9",
    );
    o.expect_status(19).expect_clean_stderr(0);
    let lines: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.starts_with("testdev: "))
        .collect();
    assert_eq!(
        lines,
        [
            // 32-bit write; 16-bit read at 0xe2; byte view at 0xe9; outw keeps the high half;
            // outb at 0xeb writes byte 3.
            "testdev: l=0x12345678 w=0x1234 b=0x56 after_w=0x12349999 after_b=0xab349999",
            // The page flush touches neither the register nor the page's contents.
            "testdev: flush data=0xab349999 page=0xfeedf00d",
            // The MMIO memory at 0xFF000000: a dword, then a byte into it.
            "testdev: iomem=0xcafe5a0d",
            // Port 0x2003 raises ISA line 3: the PIC's IRR shows it.
            "testdev: irq line 3 before=0 raised=1",
        ],
        "{}",
        o.stdout
    );
}

#[test]
fn pc_testdev_is_absent_unless_asked_for() {
    let o = mb_probe(&["--memory", "64M"], "testdev=1 action=exit:9");
    o.expect_status(19).expect_clean_stderr(2);
    // Unclaimed ports and MMIO read all ones and drop writes (each bus logs once).
    assert!(
        o.stdout.contains("testdev: l=0xffffffff w=0xffff b=0xff"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("testdev: iomem=0xffffffff"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("testdev: irq line 3 before=0 raised=0"));
}

fn expect_error(image: &[u8], tag: &str, msg: &str) {
    let f = TempFile::new(tag, image);
    let o = run(&["--kernel", f.path(), "--memory", "32M"]);
    o.expect_status(2).expect_clean_stderr(1);
    assert!(o.stderr.contains(msg), "wanted {msg:?}: {o:#?}");
    assert!(o.stdout.is_empty(), "no guest ran: {o:#?}");
}

#[test]
fn hostile_multiboot_images_are_one_error_line() {
    let g = std::fs::read(guest("mb_probe")).unwrap();
    // Cut in the middle of its code: the segment's data lies past the file's end.
    let hdr = g
        .windows(4)
        .position(|w| w == 0x1bad_b002u32.to_le_bytes())
        .unwrap();
    expect_error(&g[..hdr + 64], "mb-truncated", "past the file's end");
    // Loaded past 32 MiB of RAM: move its segments' physical address to 256 MiB.
    let mut far = g.clone();
    let phoff = u32::from_le_bytes(far[28..32].try_into().unwrap()) as usize;
    for i in 0..usize::from(u16::from_le_bytes(far[44..46].try_into().unwrap())) {
        let paddr = phoff + i * 32 + 12;
        far[paddr..paddr + 4].copy_from_slice(&0x1000_0000u32.to_le_bytes());
    }
    expect_error(&far, "mb-far", "outside guest RAM");
    // A video mode required (flag bit 2), checksum kept valid.
    let mut video = g.clone();
    let flags = u32::from_le_bytes(video[hdr + 4..hdr + 8].try_into().unwrap()) | 4;
    video[hdr + 4..hdr + 8].copy_from_slice(&flags.to_le_bytes());
    let sum = 0u32.wrapping_sub(0x1bad_b002u32.wrapping_add(flags));
    video[hdr + 8..hdr + 12].copy_from_slice(&sum.to_le_bytes());
    expect_error(
        &video,
        "mb-video",
        "requires features vfiovm does not provide",
    );
    // An a.out-kludge header whose load address lies before the file's start.
    let mut aout = vec![0u8; 64];
    for v in [
        0x1bad_b002u32,
        0x1_0000,
        0u32.wrapping_sub(0x1bad_b002 + 0x1_0000),
        0x20_0000,
        0x10_0000,
        0,
        0,
        0x20_0000,
    ] {
        aout.extend_from_slice(&v.to_le_bytes());
    }
    expect_error(&aout, "mb-aout", "load_addr lies before the file's start");
}
