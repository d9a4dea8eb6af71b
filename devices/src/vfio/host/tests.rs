//! Tests of the host checks over fake sysfs/devfs trees.

use super::*;
use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fake host tree in a temp dir, laid out like sysfs (device dirs under sys/devices,
/// symlinks from bus/pci/devices, driver, iommu_group, physfn), removed on drop.
struct FakeHost {
    dir: PathBuf,
}

impl FakeHost {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vfiovm-host-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sys/bus/pci/devices")).unwrap();
        std::fs::create_dir_all(dir.join("sys/bus/pci/drivers/vfio-pci")).unwrap();
        std::fs::create_dir_all(dir.join("dev/vfio")).unwrap();
        std::fs::write(dir.join("dev/vfio/vfio"), "").unwrap();
        FakeHost { dir }
    }
    fn root(&self) -> HostRoot {
        HostRoot::under(&self.dir)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    /// A PCI function with a class code, an optional group and driver, on root bus 0000:00.
    fn device(&self, bdf: &str, class: u32, group: Option<u32>, driver: Option<&str>) {
        self.device_in("sys/devices/pci0000:00", bdf, class, group, driver);
    }
    /// [`FakeHost::device`] with its directory under `parent` (a bridge's, for a device behind
    /// it).
    fn device_in(
        &self,
        parent: &str,
        bdf: &str,
        class: u32,
        group: Option<u32>,
        driver: Option<&str>,
    ) {
        let dev = self.path(&format!("{parent}/{bdf}"));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), "0x8086\n").unwrap();
        std::fs::write(dev.join("device"), "0x10D3\n").unwrap();
        std::fs::write(dev.join("class"), format!("{class:#08x}\n")).unwrap();
        symlink(&dev, self.path(&format!("sys/bus/pci/devices/{bdf}"))).unwrap();
        if let Some(g) = group {
            let gdir = self.path(&format!("sys/kernel/iommu_groups/{g}/devices"));
            std::fs::create_dir_all(&gdir).unwrap();
            symlink(&dev, gdir.join(bdf)).unwrap();
            symlink(gdir.parent().unwrap(), dev.join("iommu_group")).unwrap();
        }
        if let Some(d) = driver {
            let ddir = self.path(&format!("sys/bus/pci/drivers/{d}"));
            std::fs::create_dir_all(&ddir).unwrap();
            symlink(&ddir, dev.join("driver")).unwrap();
        }
    }
    fn vf_of(&self, vf: &str, pf: &str) {
        let dev = self.path(&format!("sys/devices/pci0000:00/{vf}"));
        symlink(
            self.path(&format!("sys/devices/pci0000:00/{pf}")),
            dev.join("physfn"),
        )
        .unwrap();
    }
    fn dev_node(&self, name: &str) {
        std::fs::write(self.path(&format!("dev/vfio/{name}")), "").unwrap();
    }
}

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Made-up process facts: limits, CAP_IPC_LOCK, and paths that refuse rw access.
struct FakeEnv {
    memlock: (Option<u64>, Option<u64>),
    cap: bool,
    denied: Vec<PathBuf>,
}

impl FakeEnv {
    fn unlimited() -> Self {
        FakeEnv {
            memlock: (None, None),
            cap: false,
            denied: Vec::new(),
        }
    }
}

impl Env for FakeEnv {
    fn memlock(&self) -> Result<(Option<u64>, Option<u64>), HostError> {
        Ok(self.memlock)
    }
    fn cap_ipc_lock(&self) -> bool {
        self.cap
    }
    fn access_rw(&self, path: &Path) -> io::Result<()> {
        if self.denied.iter().any(|d| d == path) {
            Err(io::Error::from_raw_os_error(libc::EACCES))
        } else {
            std::fs::metadata(path).map(|_| ())
        }
    }
}

const DEV: &str = "0000:06:0d.0";
const GIB: u64 = 1 << 30;

fn bdf() -> Bdf {
    parse_bdf(DEV).unwrap()
}

/// The good host: DEV on vfio-pci in group 26 with its root port (pcieport) and a
/// driverless sibling, /dev/vfio/26 and /dev/vfio/vfio present.
fn good_host() -> FakeHost {
    let h = FakeHost::new();
    h.device("0000:00:00.0", 0x060000, Some(0), None);
    h.device("0000:00:1c.0", 0x060400, Some(26), Some("pcieport"));
    h.device(DEV, 0x020000, Some(26), Some("vfio-pci"));
    h.device("0000:06:0d.1", 0x0c0330, Some(26), None);
    h.dev_node("26");
    h
}

fn run_doctor(h: &FakeHost, devs: &[&str], guest: Option<u64>, env: &FakeEnv) -> (String, bool) {
    let devs: Vec<String> = devs.iter().map(|d| d.to_string()).collect();
    let (text, pass) = doctor_with(&h.root(), &devs, guest, env, &[]);
    println!("{text}");
    (text, pass)
}

fn fail_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("FAIL: ")).collect()
}

#[test]
fn parses_the_accepted_forms() {
    let b = Bdf::new(0, 6, 0x0d, 0).unwrap();
    for s in [
        "0000:06:0d.0",
        "06:0d.0",
        "06:0D.0",
        " 0000:06:0d.0\n",
        "/sys/bus/pci/devices/0000:06:0d.0",
        "/sys/bus/pci/devices/0000:06:0d.0/",
        "/sys/devices/pci0000:00/0000:00:1c.0/0000:06:0d.0",
    ] {
        assert_eq!(parse_bdf(s).unwrap(), b, "{s:?}");
    }
    assert_eq!(b.to_string(), "0000:06:0d.0");
    let vmd: Bdf = "10000:e1:1f.7".parse().unwrap();
    assert_eq!(
        (vmd.segment(), vmd.bus(), vmd.device(), vmd.function()),
        (0x10000, 0xe1, 0x1f, 7)
    );
    assert_eq!(vmd.to_string(), "10000:e1:1f.7");
    assert!(Bdf::new(0, 0, 32, 0).is_none());
    assert!(Bdf::new(0, 0, 0, 8).is_none());
}

#[test]
fn rejects_malformed_addresses_with_the_expected_form() {
    for (s, why) in [
        ("", "no '.'"),
        ("06:0d", "no '.'"),
        ("0d.0", "wrong number"),
        ("0:0000:06:0d.0", "wrong number"),
        ("6:0d.0", "bus '6' is not 2 hex digits"),
        ("06:d.0", "device 'd' is not 2 hex digits"),
        ("000:06:0d.0", "segment '000' is not 4-8 hex digits"),
        ("06:0d.00", "function '00' is not 1 hex digit)"),
        ("06:0g.0", "device '0g'"),
        ("06:20.0", "device 0x20 is above 0x1f"),
        ("06:0d.8", "function 8 is above 7"),
        ("+6:0d.0", "bus '+6'"),
        ("/sys/bus/pci/devices/", "no '.'"),
    ] {
        let e = parse_bdf(s).unwrap_err();
        assert!(matches!(e, HostError::BadAddress { .. }), "{s:?}: {e:?}");
        let msg = e.to_string();
        assert!(msg.contains(why), "{s:?}: {msg}");
        assert!(
            msg.contains("expected DDDD:BB:DD.F like 0000:06:0d.0"),
            "{msg}"
        );
        assert!(msg.contains("lspci -D"), "{msg}");
    }
}

#[test]
fn good_device_passes_every_check() {
    let h = good_host();
    assert_eq!(check_iommu(&h.root()).unwrap(), 2);
    let env = FakeEnv::unlimited();
    let r = check_device(&h.root(), &bdf()).unwrap();
    assert_eq!(r.group, 26);
    assert_eq!(r.driver.as_deref(), Some("vfio-pci"));
    assert_eq!(r.id.as_deref(), Some("8086:10d3"));
    assert_eq!(r.vf, None);
    let names: Vec<&str> = r.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["0000:00:1c.0", DEV, "0000:06:0d.1"]);
    assert!(r.members[0].bridge && !r.members[1].bridge);
    r.check_vf_token(false).unwrap();

    let (text, pass) = run_doctor(&h, &[DEV], Some(GIB), &env);
    assert!(pass, "{text}");
    assert!(fail_lines(&text).is_empty());
    for want in [
        "ok: IOMMU is active: 2 IOMMU groups",
        "ok: /dev/vfio/vfio is present",
        "ok: locked memory: the RLIMIT_MEMLOCK soft limit (unlimited) covers the 1 GiB",
        "ok: 0000:06:0d.0 is present (8086:10d3)",
        "ok: 0000:06:0d.0 is bound to vfio-pci",
        "ok: 0000:06:0d.0 is in IOMMU group 26",
        "ok: IOMMU group 26 is viable: 0000:00:1c.0 (pcieport, bridge), 0000:06:0d.0 \
         (vfio-pci), 0000:06:0d.1 (no driver)",
        "ok: /dev/vfio/26 is present and read/writable",
        "doctor: all checks passed",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn no_iommu_when_groups_missing_or_empty() {
    let h = FakeHost::new();
    let e = check_iommu(&h.root()).unwrap_err();
    assert!(matches!(e, HostError::NoIommu { missing: true }));
    assert!(e.to_string().starts_with(
        "no IOMMU is active (/sys/kernel/iommu_groups is missing): enable VT-d (Intel) / \
         AMD-Vi (AMD) in the firmware, and boot the host with intel_iommu=on"
    ));
    std::fs::create_dir_all(h.path("sys/kernel/iommu_groups")).unwrap();
    let e = check_iommu(&h.root()).unwrap_err();
    assert!(e.to_string().contains("iommu_groups is empty"), "{e}");
    assert!(e.to_string().contains("docs/passthrough.md"), "{e}");

    // A device without a group then fails on its own line too.
    h.device(DEV, 0x020000, None, Some("vfio-pci"));
    let (text, pass) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(!pass);
    let fails = fail_lines(&text);
    assert_eq!(fails.len(), 2, "{text}");
    assert!(fails[0].starts_with("FAIL: no IOMMU is active"));
    assert!(fails[1].starts_with("FAIL: 0000:06:0d.0 has no IOMMU group"));
    assert!(matches!(
        check_device(&h.root(), &bdf()),
        Err(HostError::NoIommuGroup { .. })
    ));
    assert!(text.ends_with("doctor: 2 checks failed\n"), "{text}");
}

#[test]
fn missing_device_suggests_lspci() {
    let h = good_host();
    let other = parse_bdf("0000:07:00.0").unwrap();
    let e = check_device(&h.root(), &other).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no PCI device 0000:07:00.0 on this host (/sys/bus/pci/devices/0000:07:00.0 is \
         missing): list the devices with `lspci -D` and use an address from its first column"
    );
    let (text, pass) = run_doctor(&h, &["07:00.0", "junk"], None, &FakeEnv::unlimited());
    assert!(!pass);
    let fails = fail_lines(&text);
    assert_eq!(fails.len(), 2, "{text}");
    assert_eq!(fails[0], format!("FAIL: {e}"));
    assert!(fails[1].starts_with("FAIL: 'junk' is not a PCI address"));
}

#[test]
fn device_on_another_driver_gets_the_rebind_commands() {
    let h = good_host();
    std::fs::remove_file(h.path(&format!("sys/bus/pci/devices/{DEV}/driver"))).unwrap();
    std::fs::create_dir_all(h.path("sys/bus/pci/drivers/e1000e")).unwrap();
    symlink(
        h.path("sys/bus/pci/drivers/e1000e"),
        h.path(&format!("sys/bus/pci/devices/{DEV}/driver")),
    )
    .unwrap();
    let e = check_device(&h.root(), &bdf()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:06:0d.0 is bound to e1000e, not vfio-pci: rebind it as root with \
         `echo vfio-pci > /sys/bus/pci/devices/0000:06:0d.0/driver_override`, \
         `echo 0000:06:0d.0 > /sys/bus/pci/drivers/e1000e/unbind`, then \
         `echo 0000:06:0d.0 > /sys/bus/pci/drivers_probe`"
    );
    let (text, pass) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(!pass);
    assert_eq!(fail_lines(&text), [format!("FAIL: {e}")], "{text}");
    // vfio-pci variant drivers do VFIO as well.
    check_driver(&h.root(), &bdf(), Some("mlx5_vfio_pci")).unwrap();
    check_driver(&h.root(), &bdf(), Some("vfio-pci")).unwrap();
    check_driver(&h.root(), &bdf(), Some("ehci-pci")).unwrap_err();
}

#[test]
fn driverless_device_without_vfio_module_gets_modprobe() {
    let h = good_host();
    std::fs::remove_file(h.path(&format!("sys/bus/pci/devices/{DEV}/driver"))).unwrap();
    std::fs::remove_dir(h.path("sys/bus/pci/drivers/vfio-pci")).unwrap();
    std::fs::remove_file(h.path("dev/vfio/26")).unwrap();
    let e = check_device(&h.root(), &bdf()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "0000:06:0d.0 has no driver, not vfio-pci: load vfio-pci with `modprobe \
             vfio-pci` (/sys/bus/pci/drivers/vfio-pci is missing), then bind it as root with \
             `echo vfio-pci > /sys/bus/pci/devices/0000:06:0d.0/driver_override` then \
             `echo 0000:06:0d.0 > /sys/bus/pci/drivers_probe`"
        ),
        "{msg}"
    );
    assert!(!msg.contains("unbind"), "{msg}");
    let (text, _) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    let fails = fail_lines(&text);
    assert_eq!(fails.len(), 2, "{text}");
    assert_eq!(fails[0], format!("FAIL: {msg}"));
    assert_eq!(
        fails[1],
        format!("FAIL: {}", HostError::GroupDevMissing { group: 26 })
    );
}

#[test]
fn group_with_a_host_driver_is_not_viable() {
    let h = good_host();
    h.device("0000:06:0d.2", 0x040300, Some(26), Some("snd_hda_intel"));
    h.device("0000:06:0d.3", 0x0c0330, Some(26), Some("pci-stub"));
    h.device("0000:06:0d.4", 0x0c0320, Some(26), Some("ehci-pci"));
    h.device("0000:06:0d.5", 0x020000, Some(26), Some("mlx5_vfio_pci"));
    let e = check_device(&h.root(), &bdf()).unwrap_err();
    let HostError::GroupNotViable {
        group, offenders, ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(*group, 26);
    let names: Vec<&str> = offenders.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["0000:06:0d.2", "0000:06:0d.4"]);
    let msg = e.to_string();
    for want in [
        "IOMMU group 26 of 0000:06:0d.0 is not viable: 0000:06:0d.2 (snd_hda_intel), \
         0000:06:0d.4 (ehci-pci) also in it",
        "`echo 0000:06:0d.2 > /sys/bus/pci/drivers/snd_hda_intel/unbind`",
        "`echo 0000:06:0d.4 > /sys/bus/pci/drivers/ehci-pci/unbind`",
    ] {
        assert!(msg.contains(want), "missing {want:?} in {msg}");
    }
    assert!(!msg.contains("pci-stub)"), "{msg}");
    let (text, pass) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(!pass);
    assert_eq!(fail_lines(&text), [format!("FAIL: {msg}")], "{text}");
}

#[test]
fn bridge_with_a_foreign_driver_is_not_viable() {
    let h = good_host();
    h.device("0000:06:0e.0", 0x060400, Some(26), Some("shpchp"));
    let e = check_device(&h.root(), &bdf()).unwrap_err();
    assert!(
        e.to_string()
            .contains("not viable: 0000:06:0e.0 (shpchp, bridge) also in it; a group goes to one VM as a whole, so unbind it as root"),
        "{e}"
    );
}

#[test]
fn missing_or_forbidden_device_nodes() {
    let h = good_host();
    std::fs::remove_file(h.path("dev/vfio/26")).unwrap();
    let e = check_device(&h.root(), &bdf()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/dev/vfio/26 is missing: no device of IOMMU group 26 is bound to vfio-pci yet, or \
         the vfio modules are not loaded — run `modprobe vfio-pci` and bind the device to \
         vfio-pci"
    );
    h.dev_node("26");
    let env = FakeEnv {
        denied: vec![h.path("dev/vfio/26"), h.path("dev/vfio/vfio")],
        ..FakeEnv::unlimited()
    };
    let (text, pass) = run_doctor(&h, &[DEV], None, &env);
    assert!(!pass);
    let fails = fail_lines(&text);
    assert_eq!(
        fails,
        [
            format!("FAIL: {}", HostError::ContainerNoAccess),
            format!("FAIL: {}", HostError::GroupDevNoAccess { group: 26 }),
        ],
        "{text}"
    );
    assert!(fails[1].contains("run vfiovm as root, or give your user rw on /dev/vfio/26 and /dev/vfio/vfio with a udev rule"));

    std::fs::remove_file(h.path("dev/vfio/vfio")).unwrap();
    let e = check_device(&h.root(), &bdf()).unwrap_err();
    assert!(matches!(e, HostError::ContainerMissing), "{e:?}");
    assert!(e.to_string().contains("`modprobe vfio-pci`"));
    let (text, _) = run_doctor(&h, &[], None, &FakeEnv::unlimited());
    assert_eq!(fail_lines(&text), [format!("FAIL: {e}")], "{text}");
}

#[test]
fn real_access_check_follows_file_modes() {
    use std::os::unix::fs::PermissionsExt;
    let h = FakeHost::new();
    let f = h.path("dev/vfio/vfio");
    assert!(RealEnv.access_rw(&f).is_ok());
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
    // Root (CAP_DAC_OVERRIDE) may write a read-only file; anyone else may not.
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    let r = check_container(&h.root(), &RealEnv);
    assert_eq!(r.is_ok(), root, "{r:?}");
    assert!(RealEnv.access_rw(&h.path("dev/vfio/nope")).is_err());
}

#[test]
fn memlock_below_guest_ram_fails_unless_cap_ipc_lock() {
    let low = (Some(8 << 20), Some(8 << 20));
    let e = memlock_verdict(GIB, low, false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "RLIMIT_MEMLOCK is 8 MiB (soft) / 8 MiB (hard), below the 1 GiB of guest RAM that is \
         pinned for DMA: raise it before starting vfiovm with `ulimit -l unlimited` as root \
         or `prlimit --pid PID --memlock=unlimited:unlimited`, or for good with \
         `@group - memlock unlimited` in /etc/security/limits.conf or LimitMEMLOCK=infinity \
         in the systemd unit; a process with CAP_IPC_LOCK (root) is not limited"
    );
    memlock_verdict(GIB, low, true).unwrap();
    memlock_verdict(GIB, (None, None), false).unwrap();
    memlock_verdict(GIB, (Some(GIB), Some(GIB)), false).unwrap();
    let e = memlock_verdict(GIB, (Some(64 << 10), Some(4 * GIB)), false).unwrap_err();
    assert!(
        e.to_string()
            .contains("RLIMIT_MEMLOCK is 64 KiB (soft) / 4 GiB (hard), below the 1 GiB")
            && e.to_string()
                .contains("(the hard limit allows it without root: `ulimit -l 4194304`)"),
        "{e}"
    );
    let e = memlock_verdict(GIB, (Some(1000), None), false).unwrap_err();
    assert!(
        e.to_string()
            .contains("1000 bytes (soft) / unlimited (hard)"),
        "{e}"
    );
    assert!(e.to_string().contains("`ulimit -l unlimited`)"), "{e}");
    // The real process: nothing to pin always fits.
    check_memlock(0).unwrap();
}

#[test]
fn doctor_memlock_lines() {
    let h = good_host();
    let mut env = FakeEnv {
        memlock: (Some(8 << 20), Some(8 << 20)),
        ..FakeEnv::unlimited()
    };
    let (text, pass) = run_doctor(&h, &[], Some(2 * GIB), &env);
    assert!(!pass);
    assert_eq!(
        fail_lines(&text),
        [format!(
            "FAIL: {}",
            HostError::Memlock {
                guest_bytes: 2 * GIB,
                soft: Some(8 << 20),
                hard: Some(8 << 20)
            }
        )]
    );
    env.memlock.1 = Some(4 * GIB);
    let (text, pass) = run_doctor(&h, &[], Some(2 * GIB), &env);
    assert!(!pass);
    assert!(
        text.contains("`ulimit -l 4194304`"),
        "the hard limit allows 2 GiB: {text}"
    );
    env.memlock.1 = Some(8 << 20);
    let (text, pass) = run_doctor(&h, &[], None, &env);
    assert!(pass, "{text}");
    assert!(text.contains("note: locked memory: RLIMIT_MEMLOCK is 8 MiB (soft) / 8 MiB (hard)"));
    env.cap = true;
    let (text, pass) = run_doctor(&h, &[], Some(2 * GIB), &env);
    assert!(pass, "{text}");
    assert!(text.contains("ok: locked memory: CAP_IPC_LOCK is effective"));
}

#[test]
fn cap_ipc_lock_is_bit_14_of_capeff() {
    assert!(status_has_ipc_lock("Name:\tx\nCapEff:\t0000000000004000\n"));
    assert!(status_has_ipc_lock("CapEff:\t000001ffffffffff\n"));
    assert!(!status_has_ipc_lock(
        "CapInh:\t0000000000004000\nCapEff:\t0000000000000000\n"
    ));
    assert!(!status_has_ipc_lock("CapEff:\t000001ffffffbfff\n"));
    assert!(!status_has_ipc_lock("CapEff:\tzz\n"));
    assert!(!status_has_ipc_lock(""));
}

#[test]
fn vf_of_a_vfio_pf_needs_a_token() {
    let h = good_host();
    h.device("0000:06:00.0", 0x020000, Some(25), Some("vfio-pci"));
    h.vf_of(DEV, "0000:06:00.0");
    let r = check_device(&h.root(), &bdf()).unwrap();
    let vf = r.vf.clone().unwrap();
    assert_eq!(vf.pf, "0000:06:00.0");
    assert!(vf.needs_token());
    let e = r.check_vf_token(false).unwrap_err();
    assert_eq!(
        e.to_string(),
        "0000:06:0d.0 is an SR-IOV VF of 0000:06:00.0, which is bound to vfio-pci: it opens \
         only with the VF token (a UUID) the PF's user set — pass it as \
         --device 0000:06:0d.0,vf_token=UUID (kernel 5.7 or later)"
    );
    r.check_vf_token(true).unwrap();
    let (text, pass) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(pass, "{text}");
    assert!(text.contains(&format!("note: {e}")), "{text}");
    let token = format!("{DEV},vf_token=2ab74924-c335-45f4-9b16-8569e5b08258");
    // A VF resets with FLR: no reset note either.
    std::fs::write(
        h.path(&format!("sys/devices/pci0000:00/{DEV}/reset_method")),
        "flr\n",
    )
    .unwrap();
    let (text, pass) = run_doctor(&h, &[&token], None, &FakeEnv::unlimited());
    assert!(pass && !text.contains("note:"), "{text}");
    assert!(text.contains(
        "ok: 0000:06:0d.0 is an SR-IOV VF of 0000:06:00.0 (vfio-pci) and a vf_token is given"
    ));
}

#[test]
fn vf_of_a_host_driven_pf_needs_no_token() {
    let h = good_host();
    h.device("0000:06:00.0", 0x020000, Some(25), Some("ixgbe"));
    h.vf_of(DEV, "0000:06:00.0");
    let r = check_device(&h.root(), &bdf()).unwrap();
    assert!(!r.vf.as_ref().unwrap().needs_token());
    r.check_vf_token(false).unwrap();
    let (text, pass) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(pass, "{text}");
    assert!(text
        .contains("ok: 0000:06:0d.0 is an SR-IOV VF of 0000:06:00.0 (ixgbe): no VF token needed"));
}

#[test]
fn open_errors_map_to_their_fixes() {
    let e = group_open_error(26, io::Error::from_raw_os_error(libc::EBUSY));
    assert_eq!(
        e.to_string(),
        "/dev/vfio/26 is in use by another process or VM (a group opens once at a time): \
         find it with `fuser -v /dev/vfio/26` / `lsof /dev/vfio/26` and stop it"
    );
    for (errno, want) in [
        (libc::EACCES, "no read/write access to /dev/vfio/26"),
        (libc::EPERM, "no read/write access to /dev/vfio/26"),
        (libc::ENOENT, "/dev/vfio/26 is missing"),
        (libc::EIO, "cannot access /dev/vfio/26: Input/output error"),
    ] {
        let e = group_open_error(26, io::Error::from_raw_os_error(errno));
        assert!(e.to_string().starts_with(want), "{errno}: {e}");
    }
}

/// The doctor's reset line: the kernel's methods and the one vfiovm will use; a note when it
/// may use none, a failure when the spec says `reset=required`.
#[test]
fn doctor_reports_the_reset_strategy() {
    let line = |text: &str| {
        text.lines()
            .find(|l| l.contains("0000:06:0d.0 reset:"))
            .unwrap_or_else(|| panic!("no reset line in\n{text}"))
            .to_string()
    };
    // On the root bus (the good host's layout): no bus reset at all.
    let h = good_host();
    let (text, pass) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(pass, "{text}");
    assert!(
        line(&text).contains("vfiovm will use none: it sits on a root bus"),
        "{text}"
    );
    // Behind root port 00:1c.0, with 0000:06:0d.1 beside it in group 26.
    let h = FakeHost::new();
    h.device("0000:00:1c.0", 0x060400, Some(26), Some("pcieport"));
    let port = "sys/devices/pci0000:00/0000:00:1c.0";
    h.device_in(port, DEV, 0x020000, Some(26), Some("vfio-pci"));
    h.device_in(port, "0000:06:0d.1", 0x0c0330, Some(26), None);
    h.dev_node("26");
    let dev = h.path(&format!("{port}/{DEV}"));
    // No reset_method and no reset: only a bus reset, and 0000:06:0d.1 shares group 26.
    let (text, pass) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(pass, "{text}");
    let l = line(&text);
    assert!(l.starts_with("note: 0000:06:0d.0 reset: the kernel offers no reset of the function alone (no reset_method); vfiovm will use a bus hot reset if the VM holds"), "{l}");
    assert!(l.contains("0000:06:0d.1 (no driver, group 26)"), "{l}");

    // A NIC on the same bus, driven by the host: no reset; refused with reset=required.
    h.device_in(port, "0000:06:0e.0", 0x020000, Some(27), Some("e1000e"));
    let (text, pass) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(
        pass,
        "a missing reset is only a note without reset=required:\n{text}"
    );
    let l = line(&text);
    assert!(l.starts_with("note: "), "{l}");
    assert!(
        l.contains(
            "vfiovm will use none: a reset of its bus would also reset 0000:06:0e.0 (e1000e)"
        ),
        "{l}"
    );
    let (text, pass) = run_doctor(
        &h,
        &[&format!("{DEV},reset=required")],
        None,
        &FakeEnv::unlimited(),
    );
    assert!(!pass);
    assert!(line(&text).starts_with("FAIL: "), "{text}");
    assert!(
        line(&text).ends_with("(reset=required refuses it)"),
        "{text}"
    );

    // The kernel's methods: the first one is what VFIO_DEVICE_RESET does.
    std::fs::write(dev.join("reset_method"), "flr pm bus\n").unwrap();
    let (text, pass) = run_doctor(
        &h,
        &[&format!("{DEV},reset=required")],
        None,
        &FakeEnv::unlimited(),
    );
    assert!(pass, "{text}");
    assert_eq!(
        line(&text),
        "ok: 0000:06:0d.0 reset: the kernel offers flr pm bus; vfiovm will use function-level reset (VFIO_DEVICE_RESET)"
    );
    std::fs::write(dev.join("reset_method"), "pm\n").unwrap();
    let (text, _) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(
        line(&text).ends_with("vfiovm will use PM reset, D3hot to D0 (VFIO_DEVICE_RESET)"),
        "{text}"
    );
    // Disabled by the administrator.
    std::fs::write(dev.join("reset_method"), "\n").unwrap();
    let (text, _) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(
        line(&text).contains("echo default > /sys/bus/pci/devices/0000:06:0d.0/reset_method"),
        "{text}"
    );
    // An old kernel: `reset` without `reset_method`.
    std::fs::remove_file(dev.join("reset_method")).unwrap();
    std::fs::write(dev.join("reset"), "").unwrap();
    assert_eq!(
        reset_methods(&h.root(), &bdf()),
        HostResetMethods::Absent { reset_file: true }
    );
    let (text, _) = run_doctor(&h, &[DEV], None, &FakeEnv::unlimited());
    assert!(line(&text).starts_with("ok: 0000:06:0d.0 reset: the kernel can reset it alone but has no reset_method to say how (before Linux 5.15); vfiovm will use VFIO_DEVICE_RESET"), "{text}");
}
