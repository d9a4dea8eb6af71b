//! UEFI firmware support that this machine can test: fw_cfg read from inside a tiny guest (every
//! VM has it, as on QEMU), `--firmware` input checks, and what happens when this host's KVM
//! cannot run OVMF. Booting OVMF itself is for a host with VMX/SVM (docs/firmware.md).

mod common;

use common::{guest, run, run_with_input, TempFile};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

const ERROR: i32 = 2;
const CODE_4M: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const VARS_4M: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const CODE_2M: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const UNIFIED: &str = "/usr/share/ovmf/OVMF.fd";

fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// The guest reads fw_cfg as OVMF does, runs the table loader over the ACPI blobs and checks
/// every table: with 1 and 4 vCPUs, RAM below the hole and split around it.
#[test]
fn fw_cfg_probe_reads_what_firmware_reads() {
    for (cpus, mem, ram_entries) in [("1", "256M", 1), ("4", "3G", 2)] {
        let o = run(&[
            "--kernel",
            &guest("fw_cfg_probe"),
            "--cpus",
            cpus,
            "--memory",
            mem,
        ]);
        o.expect_status(1).expect_clean_stderr(0);
        let s = &o.stdout;
        assert!(
            s.contains("fw_cfg: signature=QEMU rep_insb=QEMU\n"),
            "{o:#?}"
        );
        assert!(s.contains("fw_cfg: dma_signature=QEMU CFG\n"), "{o:#?}");
        assert!(s.contains("fw_cfg: features=0x3\n"), "{o:#?}");
        assert!(
            s.contains("ports: 0xcd8=0xffffffff 0x92 written\n"),
            "{o:#?}"
        );
        assert!(s.contains(&format!("fw_cfg: cpus={cpus}\n")), "{o:#?}");
        let names: Vec<&str> = lines_with(s, "file: ")
            .iter()
            .filter_map(|l| l.split("name=").nth(1))
            .collect();
        assert_eq!(
            names,
            [
                "etc/acpi/rsdp",
                "etc/acpi/tables",
                "etc/e820",
                "etc/smbios/smbios-anchor",
                "etc/smbios/smbios-tables",
                "etc/table-loader",
                "opt/org.tianocore/IPv4PXESupport",
                "opt/org.tianocore/IPv6PXESupport"
            ],
            "{o:#?}"
        );
        let ram: Vec<&str> = lines_with(s, "e820: addr=")
            .into_iter()
            .filter(|l| l.ends_with("type=1"))
            .collect();
        assert_eq!(ram.len(), ram_entries, "{o:#?}");
        assert!(
            s.contains("e820: addr=0xb0000000 size=0x10000000 type=2\n"),
            "{o:#?}"
        );
        let mib = if mem == "3G" { 3072 } else { 256 };
        assert!(s.contains(&format!("e820: ram={mib} MiB\n")), "{o:#?}");
        assert!(
            s.contains("loader: commands=19 allocate=2 add_pointer=9 add_checksum=8\n"),
            "{o:#?}"
        );
        assert!(
            s.contains(&format!("acpi: loaded tables=4 cpus={cpus} s5=5\n")),
            "{o:#?}"
        );
        assert!(s.contains("acpi: waet flags=0x3\n"), "{o:#?}");
        assert!(!s.contains("checksum BAD"), "{o:#?}");
        // Types 0, 1, 3, 4, 16, 17, 32, 127 and a 19 per RAM region.
        let structures = 8 + ram_entries;
        assert!(
            lines_with(s, "smbios: version=3.0 tables=")
                .iter()
                .any(|l| l.ends_with(&format!(" structures={structures} checksum=ok"))),
            "{o:#?}"
        );
        assert!(s.ends_with("fw_cfg: ok\n"), "{o:#?}");
    }
}

/// The whole firmware path on this host, with a stand-in for OVMF (`rom_probe`, a flat image of
/// the 2M CODE size): vfiovm maps it read-only at 0xFFE20000 with the VARS flash below, the boot
/// vCPU starts at the reset vector in the power-on state and the AP waits for INIT-SIPI-SIPI;
/// the ROM checks what OVMF relies on (see resources/guests/rom_probe.S), then resets through
/// 0xCF9. With `--firmware` a reset reboots in place: the second boot finds RAM cleared, the
/// host bridge reset, the flash's counter kept and the APs waiting for INIT-SIPI-SIPI again,
/// and powers off with SLP_TYP 0. The bytes it programs reach the VARS file, nothing else
/// changes, and the file is free for the next VM.
#[test]
fn a_stand_in_firmware_runs_from_the_reset_vector_through_a_reboot_to_power_off() {
    let rom = guest("rom_probe");
    for (with_file, cpus) in [(true, 2u32), (false, 1), (true, 4)] {
        let vars = TempFile::new("rom-vars", &[0xff; 131_072]);
        let cpus_arg = cpus.to_string();
        let mut args = vec!["--firmware", &rom, "--cpus", &cpus_arg];
        if with_file {
            args.extend(["--firmware-vars", vars.path()]);
        }
        let o = run(&args);
        o.expect_status(0).expect_clean_stderr(0);
        let s = &o.stdout;
        let boots: Vec<&str> = s.split("rom: reset vector reached\n").skip(1).collect();
        assert_eq!(boots.len(), 2, "one reboot ({args:?}): {o:#?}");
        for (n, boot) in boots.iter().enumerate() {
            let (counter, last) = if n == 0 {
                ("0x000000ff", "rom: resetting through 0xcf9\n")
            } else {
                ("0x000000fe", "rom: powering off with SLP_TYP 0\n")
            };
            for want in [
                "rom: ram mark=0x00000000\n",
                "rom: cr0=0x60000010\n",
                "rom: mtrr_def_type=0x00000000\n",
                "rom: cpuid_8000001f_eax=0x00000000\n",
                "rom: image byte before/after a write=0x00003c3c\n",
                "rom: flash after 0x50=0x000000ff\n",
                "rom: flash after 0x70=0x00000000\n",
                "rom: flash status after program=0x00000080\n",
                "rom: flash programmed byte=0x0000005a\n",
                &format!("rom: boot counter={counter}\n"),
                "rom: 00:00.0 id=0x29c08086\n",
                "rom: 00:1f.0 id=0x29188086\n",
                "rom: pmbase=0x00000601\n",
                "rom: acpi_cntl=0x00000080\n",
                "rom: pciexbar at reset=0x00000000\n",
                "rom: pciexbar=0xb0000001\n",
                "rom: pm timer advances=0x00000001\n",
                "rom: pm timer at 0xb008 advances=0x00000001\n",
                "rom: 0x608 after the move=0xffffffff\n",
                "rom: fw_cfg signature=0x554d4551\n",
                &format!("rom: fw_cfg cpus=0x{cpus:08x}\n"),
                last,
            ] {
                assert!(
                    boot.contains(want),
                    "{want:?} missing in boot {n} ({args:?}): {o:#?}"
                );
            }
            assert!(boot.contains("rom: flash array=0x000000ff\n"), "{o:#?}");
            assert!(!boot.contains("rom: edx=0x00000000"), "{o:#?}");
            // The AP starts at the SIPI in each boot: after the reset it waits for one again.
            assert_eq!(
                boot.contains("rom: ap started=0x00000001\n"),
                cpus > 1,
                "boot {n}: {o:#?}"
            );
        }
        if with_file {
            let v = std::fs::read(&vars.0).unwrap();
            assert_eq!((v[0x100], v[0x200]), (0x5a, 0xfe));
            assert_eq!(v.iter().filter(|&&b| b != 0xff).count(), 2);
        }
    }
}

/// `--on-reset exit`: the firmware's reset ends the run with status 0 (cause `reset`), the
/// counter it programmed before is in the VARS file, and nothing ran a second time.
#[test]
fn on_reset_exit_ends_the_run_at_the_firmware_reset() {
    let rom = guest("rom_probe");
    let vars = TempFile::new("rom-vars", &[0xff; 131_072]);
    let verdict = TempFile::new("rom-verdict", b"");
    let o = run(&[
        "--firmware",
        &rom,
        "--firmware-vars",
        vars.path(),
        "--on-reset",
        "exit",
        "--verdict",
        verdict.path(),
    ]);
    o.expect_status(0).expect_clean_stderr(0);
    assert_eq!(
        o.stdout.matches("rom: reset vector reached").count(),
        1,
        "{o:#?}"
    );
    assert!(
        o.stdout.contains("rom: resetting through 0xcf9\n"),
        "{o:#?}"
    );
    assert!(!o.stdout.contains("powering off"), "{o:#?}");
    let v = std::fs::read_to_string(&verdict.0).unwrap();
    assert!(v.contains("\"cause\": \"reset\""), "{v}");
    assert_eq!(std::fs::read(&vars.0).unwrap()[0x200], 0xfe);
}

fn ovmf_installed() -> bool {
    let there = Path::new(CODE_4M).exists() && Path::new(VARS_4M).exists();
    if !there {
        eprintln!("skipped: Debian's ovmf package is not installed (apt-get install ovmf)");
    }
    there
}

fn vars_copy(tag: &str) -> TempFile {
    TempFile::new(tag, &std::fs::read(VARS_4M).unwrap())
}

/// This machine's KVM (nested, paravirtualized) cannot run OVMF: vfiovm says so in one line,
/// with what it saw, and exits with status 2; the VARS file is untouched. On a host where OVMF
/// runs, the firmware is still running after 10 s and the test has nothing to check.
#[test]
fn ovmf_on_a_kvm_that_cannot_run_it_fails_with_one_line() {
    if !ovmf_installed() {
        return;
    }
    let vars = vars_copy("vars");
    let before = std::fs::read(&vars.0).unwrap();
    for args in [
        vec!["--firmware", CODE_4M, "--firmware-vars", vars.path()],
        vec!["--firmware", CODE_2M],
        vec!["--firmware", UNIFIED],
        vec![
            "--firmware",
            CODE_4M,
            "--cpus",
            "2",
            "--kernel",
            &guest("hello"),
        ],
    ] {
        if !Path::new(args[1]).exists() {
            continue;
        }
        let o = run_with_input(&args, None, Duration::from_secs(10));
        if o.status == 128 + libc::SIGKILL {
            eprintln!("OVMF runs on this host ({args:?}): nothing to check here");
            return;
        }
        o.expect_status(ERROR).expect_clean_stderr(1);
        assert!(
            o.stderr.starts_with("vfiovm: this host's KVM cannot run the firmware: KVM_EXIT_INTERNAL_ERROR (emulation failure) on vCPU 0 at 0xfff"),
            "{o:#?}"
        );
        assert!(o.stderr.contains("nested or paravirtualized KVM"), "{o:#?}");
        assert!(o.stderr.contains("VMX or SVM"), "{o:#?}");
    }
    assert!(
        std::fs::read(&vars.0).unwrap() == before,
        "the VARS file changed"
    );
}

fn expect_error(args: &[&str], needle: &str) {
    let o = run(args);
    o.expect_status(ERROR).expect_clean_stderr(1);
    assert!(o.stderr.starts_with("vfiovm: error: "), "{o:#?}");
    assert!(
        o.stderr.contains(needle),
        "stderr should say {needle:?}: {o:#?}"
    );
}

#[test]
fn missing_firmware_file() {
    expect_error(
        &["--firmware", "/nonexistent/OVMF_CODE_4M.fd"],
        "cannot read firmware '/nonexistent/OVMF_CODE_4M.fd': No such file or directory",
    );
    expect_error(
        &["--firmware", "/tmp"],
        "firmware '/tmp' is not a regular file",
    );
}

#[test]
fn initramfs_or_cmdline_without_a_kernel_for_the_firmware() {
    expect_error(
        &["--firmware", CODE_4M, "--initramfs", "/tmp/i"],
        "--initramfs needs --kernel: with --firmware, the initramfs and command line go to the kernel given with --kernel",
    );
    expect_error(
        &["--firmware", CODE_4M, "--cmdline", "quiet"],
        "--cmdline needs --kernel",
    );
}

/// Debian's Secure Boot builds need SMM: refused by name (`.ms.fd` is a link to `.secboot.fd`)
/// and as a renamed copy, before KVM is touched; the plain build of the same size is not.
#[test]
fn secure_boot_builds_are_refused_with_the_plain_build_named() {
    let secboot = Path::new("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd");
    if !secboot.exists() {
        eprintln!("skipped: Debian's ovmf package is not installed");
        return;
    }
    let copy = TempFile::new("renamed-firmware.fd", &std::fs::read(secboot).unwrap());
    for path in ["/usr/share/OVMF/OVMF_CODE_4M.ms.fd", copy.path()] {
        expect_error(
            &["--firmware", path],
            "is a Secure Boot build of OVMF (OVMF_CODE*.secboot.fd, also installed as .ms.fd and .snakeoil.fd): it needs SMM, which vfiovm does not emulate; use the plain build, e.g. /usr/share/OVMF/OVMF_CODE_4M.fd",
        );
    }
}

#[test]
fn firmware_of_an_unknown_size() {
    let f = TempFile::new("odd-firmware", &[0xff; 3 << 20]);
    expect_error(
        &["--firmware", f.path()],
        "has 3145728 bytes, which matches no OVMF layout vfiovm knows: give an image of 3653632 (OVMF_CODE_4M.fd), 1966080 (OVMF_CODE.fd, 2M), 4194304 (a 4M unified OVMF.fd) or 2097152 (a 2M unified OVMF.fd) bytes",
    );
}

#[test]
fn firmware_vars_without_firmware() {
    expect_error(
        &["--kernel", &guest("exit_now"), "--firmware-vars", "/tmp/x"],
        "--firmware-vars needs --firmware",
    );
}

#[test]
fn firmware_vars_of_the_wrong_size() {
    if !ovmf_installed() {
        return;
    }
    let v = TempFile::new("vars-2m", &[0xff; 131_072]);
    expect_error(
        &["--firmware", CODE_4M, "--firmware-vars", v.path()],
        "has 131072 bytes, 540672 expected: the VARS file must match the firmware build",
    );
}

#[test]
fn firmware_vars_missing() {
    if !ovmf_installed() {
        return;
    }
    expect_error(
        &[
            "--firmware",
            CODE_4M,
            "--firmware-vars",
            "/nonexistent/vars.fd",
        ],
        "flash image /nonexistent/vars.fd does not exist",
    );
}

#[test]
fn read_only_firmware_vars() {
    if !ovmf_installed() {
        return;
    }
    let v = vars_copy("vars-ro");
    std::fs::set_permissions(&v.0, std::fs::Permissions::from_mode(0o444)).unwrap();
    expect_error(
        &["--firmware", CODE_4M, "--firmware-vars", v.path()],
        "is read-only: the firmware writes its variables there",
    );
}

#[test]
fn firmware_vars_locked_by_another_vm() {
    if !ovmf_installed() {
        return;
    }
    let v = vars_copy("vars-locked");
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&v.0)
        .unwrap();
    // SAFETY: flock on a descriptor this test owns; no memory is involved.
    let r = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(r, 0);
    expect_error(
        &["--firmware", CODE_4M, "--firmware-vars", v.path()],
        "is in use by another VM (it holds a lock on the file)",
    );
    drop(held);
}
