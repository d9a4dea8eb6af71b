//! Host checks for PCI passthrough: the classic reasons a device cannot be handed to a VM, each
//! reported with its cause and the command that fixes it.
//!
//! Everything here only reads: sysfs (`/sys/kernel/iommu_groups`, `/sys/bus/pci/...`), device
//! nodes under `/dev/vfio` (existence and access, never opened), the process's
//! `RLIMIT_MEMLOCK` and its effective capabilities. The VMM runs [`check_iommu`],
//! [`check_device`] and [`check_memlock`] before it opens anything, and maps a failed open of
//! `/dev/vfio/N` with [`group_open_error`]; `vfiovm doctor` prints [`doctor`]'s report.
//!
//! sysfs and devfs are read under a [`HostRoot`] so tests can build a fake tree. Messages always
//! name the canonical `/sys` and `/dev` paths: they are commands for a person to type on the host.
//!
//! Group viability follows the kernel (5.19 and later; also the 6.1 kernel the rig runs): every
//! other member of the IOMMU group must have no driver or a driver that leaves DMA to its owner —
//! `vfio-pci` (or a `*vfio_pci` variant driver), `pci-stub`, or `pcieport` on bridges and ports.
//! Kernels before 5.19 ignored bridges whatever their driver; bridges carry `pcieport` in practice.

use std::ffi::CString;
use std::fmt::{self, Display, Write as _};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::reset::{HostResetMethods, ResetHost, ResetStrategy};

/// Driver that must own a passed-through device.
const VFIO_PCI: &str = "vfio-pci";
/// Drivers (besides vfio ones) that may own other members of a viable group.
const GROUP_SAFE_DRIVERS: &[&str] = &["pci-stub", "pcieport"];
/// PCI class codes (base class, subclass) of bridges with a type 1 or 2 config header.
const BRIDGE_CLASSES: &[u32] = &[0x0604, 0x0607, 0x0609];
/// CapEff bit of CAP_IPC_LOCK: no RLIMIT_MEMLOCK applies to the process.
const CAP_IPC_LOCK_BIT: u32 = 14;
/// Where the fix for a missing IOMMU is explained.
const DOC: &str = "docs/passthrough.md";
/// The expected forms of a device address, for error messages.
const BDF_FORMS: &str = "expected DDDD:BB:DD.F like 0000:06:0d.0, BB:DD.F like 06:0d.0 (segment \
     0000), or a sysfs path like /sys/bus/pci/devices/0000:06:0d.0; `lspci -D` lists them";

/// Where sysfs and devfs are read from. The default is the real host (`/sys`, `/dev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    /// The sysfs mount, normally `/sys`.
    pub sys: PathBuf,
    /// The devfs mount, normally `/dev`.
    pub dev: PathBuf,
}

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl HostRoot {
    /// A root whose sysfs is `dir/sys` and devfs `dir/dev` (a fake host tree).
    pub fn under(dir: &Path) -> Self {
        HostRoot {
            sys: dir.join("sys"),
            dev: dir.join("dev"),
        }
    }

    fn pci_device(&self, name: &str) -> PathBuf {
        self.sys.join("bus/pci/devices").join(name)
    }

    fn groups(&self) -> PathBuf {
        self.sys.join("kernel/iommu_groups")
    }
}

/// A PCI function address: segment (domain), bus, device, function. Displays as `0000:06:0d.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    segment: u32,
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// A PCI address; `None` when `device > 31` or `function > 7`.
    pub fn new(segment: u32, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Bdf {
            segment,
            bus,
            device,
            function,
        })
    }
    /// The PCI segment (domain).
    pub fn segment(&self) -> u32 {
        self.segment
    }
    /// The bus number.
    pub fn bus(&self) -> u8 {
        self.bus
    }
    /// The device number, 0–31.
    pub fn device(&self) -> u8 {
        self.device
    }
    /// The function number, 0–7.
    pub fn function(&self) -> u8 {
        self.function
    }
}

impl Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

impl FromStr for Bdf {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Self, HostError> {
        parse_bdf(s)
    }
}

/// Parses `0000:06:0d.0`, `06:0d.0` (segment 0) or a sysfs path ending in the address, such as
/// `/sys/bus/pci/devices/0000:06:0d.0`. Hex digits may be upper or lower case.
pub fn parse_bdf(input: &str) -> Result<Bdf, HostError> {
    let bad = |why: &str| HostError::BadAddress {
        input: input.to_string(),
        why: why.to_string(),
    };
    let s = input.trim();
    let s = if s.contains('/') {
        s.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
    } else {
        s
    };
    let hex = |field: &str, what: &str, digits: std::ops::RangeInclusive<usize>| {
        if !digits.contains(&field.len()) || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
            let n = match (digits.start(), digits.end()) {
                (1, 1) => "1 hex digit".to_string(),
                (a, b) if a == b => format!("{a} hex digits"),
                (a, b) => format!("{a}-{b} hex digits"),
            };
            return Err(bad(&format!("{what} '{field}' is not {n}")));
        }
        u32::from_str_radix(field, 16).map_err(|_| bad(&format!("{what} '{field}' is not hex")))
    };
    let (head, function) = s
        .rsplit_once('.')
        .ok_or_else(|| bad("no '.' before the function number"))?;
    let parts: Vec<&str> = head.split(':').collect();
    let (segment, bus, device) = match parts.as_slice() {
        [bus, dev] => (0, hex(bus, "bus", 2..=2)?, hex(dev, "device", 2..=2)?),
        [seg, bus, dev] => (
            hex(seg, "segment", 4..=8)?,
            hex(bus, "bus", 2..=2)?,
            hex(dev, "device", 2..=2)?,
        ),
        _ => return Err(bad("wrong number of ':'-separated fields")),
    };
    let function = hex(function, "function", 1..=1)?;
    if device > 0x1f {
        return Err(bad(&format!("device {device:#04x} is above 0x1f")));
    }
    if function > 7 {
        return Err(bad(&format!("function {function} is above 7")));
    }
    // Both fit: bus has two hex digits, device and function were range-checked above.
    Ok(Bdf {
        segment,
        bus: bus as u8,
        device: device as u8,
        function: function as u8,
    })
}

/// One member of an IOMMU group, as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The member's sysfs name (a PCI address on x86).
    pub name: String,
    /// The driver bound to it, if any.
    pub driver: Option<String>,
    /// Whether it is a PCI bridge (class 06.04, 06.07 or 06.09).
    pub bridge: bool,
}

impl GroupMember {
    /// Whether a VFIO driver (vfio-pci or a variant) owns it: a device that goes with its
    /// group into whichever container takes the group.
    pub fn is_vfio_owned(&self) -> bool {
        self.driver.as_deref().is_some_and(is_vfio_driver)
    }

    /// Whether this member lets the group stay viable for VFIO.
    pub fn allows_vfio(&self) -> bool {
        self.driver
            .as_deref()
            .is_none_or(|d| is_vfio_driver(d) || GROUP_SAFE_DRIVERS.contains(&d))
    }
}

impl Display for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let driver = self.driver.as_deref().unwrap_or("no driver");
        let bridge = if self.bridge { ", bridge" } else { "" };
        write!(f, "{} ({driver}{bridge})", self.name)
    }
}

/// An SR-IOV virtual function's physical function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfInfo {
    /// The PF's sysfs name.
    pub pf: String,
    /// The PF's driver, if any.
    pub pf_driver: Option<String>,
}

impl VfInfo {
    /// A VF whose PF is owned by vfio-pci opens only with the VF token the PF's user set.
    pub fn needs_token(&self) -> bool {
        self.pf_driver.as_deref().is_some_and(is_vfio_driver)
    }
}

/// What [`check_device`] found about a device that is ready for passthrough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// The device.
    pub bdf: Bdf,
    /// `vendor:device` from sysfs, lower-case hex, when readable.
    pub id: Option<String>,
    /// Its driver (vfio-pci or a vfio-pci variant once checked).
    pub driver: Option<String>,
    /// Its IOMMU group: `/dev/vfio/<group>`.
    pub group: u32,
    /// Every member of the group, the device included, sorted by name.
    pub members: Vec<GroupMember>,
    /// Set when the device is an SR-IOV VF.
    pub vf: Option<VfInfo>,
}

impl DeviceReport {
    /// Fails when the device is a VF of a PF owned by vfio-pci and no VF token is given.
    pub fn check_vf_token(&self, token_given: bool) -> Result<(), HostError> {
        match &self.vf {
            Some(vf) if vf.needs_token() && !token_given => Err(HostError::VfTokenRequired {
                bdf: self.bdf,
                pf: vf.pf.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// A host problem that stops passthrough; each message names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No IOMMU groups: the IOMMU is off.
    #[error(
        "no IOMMU is active (/sys/kernel/iommu_groups is {}): enable VT-d (Intel) / AMD-Vi (AMD) in \
         the firmware, and boot the host with intel_iommu=on (Intel; AMD enables its IOMMU by \
         default) — see {DOC}",
        if *.missing { "missing" } else { "empty" }
    )]
    NoIommu {
        /// The directory is missing (rather than empty).
        missing: bool,
    },
    /// A device address that does not parse.
    #[error("'{input}' is not a PCI address ({why}): {BDF_FORMS}")]
    BadAddress {
        /// What was given.
        input: String,
        /// What is wrong with it.
        why: String,
    },
    /// No such device in sysfs.
    #[error(
        "no PCI device {bdf} on this host (/sys/bus/pci/devices/{bdf} is missing): list the \
         devices with `lspci -D` and use an address from its first column"
    )]
    DeviceNotFound {
        /// The address looked for.
        bdf: Bdf,
    },
    /// The device is not bound to vfio-pci.
    #[error("{}", not_bound_message(.bdf, .driver.as_deref(), *.vfio_pci_loaded))]
    NotBoundToVfio {
        /// The device.
        bdf: Bdf,
        /// Its current driver, if any.
        driver: Option<String>,
        /// `/sys/bus/pci/drivers/vfio-pci` exists.
        vfio_pci_loaded: bool,
    },
    /// The device has no IOMMU group.
    #[error(
        "{bdf} has no IOMMU group (/sys/bus/pci/devices/{bdf}/iommu_group is missing): the IOMMU \
         is off or does not cover this device — enable VT-d / AMD-Vi in the firmware and \
         intel_iommu=on on the kernel command line, see {DOC}"
    )]
    NoIommuGroup {
        /// The device.
        bdf: Bdf,
    },
    /// Another member of the device's IOMMU group is bound to a host driver.
    #[error("{}", not_viable_message(.bdf, *.group, .offenders))]
    GroupNotViable {
        /// The device.
        bdf: Bdf,
        /// Its group.
        group: u32,
        /// The members that make the group unusable.
        offenders: Vec<GroupMember>,
    },
    /// `/dev/vfio/N` does not exist.
    #[error(
        "/dev/vfio/{group} is missing: no device of IOMMU group {group} is bound to vfio-pci yet, \
         or the vfio modules are not loaded — run `modprobe vfio-pci` and bind the device to \
         vfio-pci"
    )]
    GroupDevMissing {
        /// The group.
        group: u32,
    },
    /// `/dev/vfio/N` exists but this process may not open it read/write.
    #[error(
        "no read/write access to /dev/vfio/{group}: run vfiovm as root, or give your user rw on \
         /dev/vfio/{group} and /dev/vfio/vfio with a udev rule such as \
         SUBSYSTEM==\"vfio\", GROUP=\"kvm\", MODE=\"0660\" (in /etc/udev/rules.d/) and \
         membership of that group"
    )]
    GroupDevNoAccess {
        /// The group.
        group: u32,
    },
    /// `/dev/vfio/N` is open in another process (EBUSY at open).
    #[error(
        "/dev/vfio/{group} is in use by another process or VM (a group opens once at a time): \
         find it with `fuser -v /dev/vfio/{group}` / `lsof /dev/vfio/{group}` and stop it"
    )]
    GroupInUse {
        /// The group.
        group: u32,
    },
    /// `/dev/vfio/vfio` does not exist.
    #[error(
        "/dev/vfio/vfio is missing: load the vfio modules with `modprobe vfio-pci` (the kernel \
         needs CONFIG_VFIO_CONTAINER or CONFIG_IOMMUFD_VFIO_CONTAINER)"
    )]
    ContainerMissing,
    /// `/dev/vfio/vfio` exists but this process may not open it read/write.
    #[error(
        "no read/write access to /dev/vfio/vfio: run vfiovm as root, or give your user rw on it \
         (normally mode 0666) and on /dev/vfio/N with a udev rule"
    )]
    ContainerNoAccess,
    /// RLIMIT_MEMLOCK is too low to pin guest RAM.
    #[error("{}", memlock_message(*.guest_bytes, *.soft, *.hard))]
    Memlock {
        /// Guest RAM that will be pinned.
        guest_bytes: u64,
        /// Soft limit in bytes, `None` for unlimited.
        soft: Option<u64>,
        /// Hard limit in bytes, `None` for unlimited.
        hard: Option<u64>,
    },
    /// A VF of a vfio-pci-owned PF needs the PF owner's VF token.
    #[error(
        "{bdf} is an SR-IOV VF of {pf}, which is bound to vfio-pci: it opens only with the VF \
         token (a UUID) the PF's user set — pass it as --device {bdf},vf_token=UUID (kernel 5.7 \
         or later)"
    )]
    VfTokenRequired {
        /// The VF.
        bdf: Bdf,
        /// Its PF.
        pf: String,
    },
    /// Reading sysfs or devfs, or asking the kernel for a limit, failed unexpectedly.
    #[error("cannot access {}: {source}", .path.display())]
    Io {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
}

fn not_bound_message(bdf: &Bdf, driver: Option<&str>, vfio_pci_loaded: bool) -> String {
    let load = if vfio_pci_loaded {
        ""
    } else {
        "load vfio-pci with `modprobe vfio-pci` (/sys/bus/pci/drivers/vfio-pci is missing), then "
    };
    let over = format!("`echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override`");
    let probe = format!("`echo {bdf} > /sys/bus/pci/drivers_probe`");
    match driver {
        Some(d) => format!(
            "{bdf} is bound to {d}, not vfio-pci: {load}rebind it as root with {over}, \
             `echo {bdf} > /sys/bus/pci/drivers/{d}/unbind`, then {probe}"
        ),
        None => format!(
            "{bdf} has no driver, not vfio-pci: {load}bind it as root with {over} then {probe}"
        ),
    }
}

fn not_viable_message(bdf: &Bdf, group: u32, offenders: &[GroupMember]) -> String {
    let names: Vec<String> = offenders.iter().map(|m| m.to_string()).collect();
    let unbind: Vec<String> = offenders
        .iter()
        .filter_map(|m| {
            let d = m.driver.as_deref()?;
            Some(format!(
                "`echo {} > /sys/bus/pci/drivers/{d}/unbind`",
                m.name
            ))
        })
        .collect();
    format!(
        "IOMMU group {group} of {bdf} is not viable: {} also in it; a group goes to one VM as a \
         whole, so unbind {} as root ({}) or bind {} to vfio-pci like {bdf}; members with no \
         driver, pci-stub or pcieport (bridges) may stay",
        names.join(", "),
        if offenders.len() == 1 { "it" } else { "them" },
        unbind.join(", "),
        if offenders.len() == 1 { "it" } else { "them" },
    )
}

fn memlock_message(guest_bytes: u64, soft: Option<u64>, hard: Option<u64>) -> String {
    let own = match hard {
        Some(h) if h < guest_bytes => String::new(),
        // The hard limit allows it: the user can raise the soft limit alone (ulimit -l is in KiB).
        _ => format!(
            " (the hard limit allows it without root: `ulimit -l {}`)",
            hard.map_or_else(|| "unlimited".to_string(), |h| (h / 1024).to_string())
        ),
    };
    format!(
        "RLIMIT_MEMLOCK is {} (soft) / {} (hard), below the {} of guest RAM that is pinned for \
         DMA: raise it before starting vfiovm with `ulimit -l unlimited` as root or \
         `prlimit --pid PID --memlock=unlimited:unlimited`{own}, or for good with \
         `@group - memlock unlimited` in /etc/security/limits.conf or LimitMEMLOCK=infinity in \
         the systemd unit; a process with CAP_IPC_LOCK (root) is not limited",
        size(soft),
        size(hard),
        size(Some(guest_bytes)),
    )
}

/// A byte count for messages: `unlimited`, `4 GiB`, `640 KiB`, `1000 bytes`.
fn size(bytes: Option<u64>) -> String {
    let Some(b) = bytes else {
        return "unlimited".to_string();
    };
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if b != 0 && b % (1u64 << shift) == 0 {
            return format!("{} {unit}", b >> shift);
        }
    }
    format!("{b} bytes")
}

fn is_vfio_driver(name: &str) -> bool {
    name == VFIO_PCI || name.ends_with("vfio_pci") || name.ends_with("vfio-pci")
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HostError + '_ {
    move |source| HostError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file name a symlink points to; `None` when there is no link.
fn link_name(link: &Path) -> Result<Option<String>, HostError> {
    match std::fs::read_link(link) {
        Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(link)(e)),
    }
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The process facts the checks need; the real one asks the kernel, tests make them up.
trait Env {
    /// RLIMIT_MEMLOCK (soft, hard) in bytes, `None` = unlimited.
    fn memlock(&self) -> Result<(Option<u64>, Option<u64>), HostError>;
    /// CAP_IPC_LOCK is in the effective set.
    fn cap_ipc_lock(&self) -> bool;
    /// Whether the process may open `path` for reading and writing.
    fn access_rw(&self, path: &Path) -> io::Result<()>;
}

struct RealEnv;

impl Env for RealEnv {
    fn memlock(&self) -> Result<(Option<u64>, Option<u64>), HostError> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into `lim`, a valid exclusive borrow for the call.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
        if rc != 0 {
            return Err(io_err(Path::new("RLIMIT_MEMLOCK"))(
                io::Error::last_os_error(),
            ));
        }
        let val = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
        Ok((val(lim.rlim_cur), val(lim.rlim_max)))
    }

    fn cap_ipc_lock(&self) -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| status_has_ipc_lock(&s))
    }

    fn access_rw(&self, path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `c` is a NUL-terminated string alive for the call; faccessat only reads it.
        let rc = unsafe {
            libc::faccessat(
                libc::AT_FDCWD,
                c.as_ptr(),
                libc::R_OK | libc::W_OK,
                libc::AT_EACCESS,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Whether a `/proc/<pid>/status` text shows CAP_IPC_LOCK in `CapEff`.
fn status_has_ipc_lock(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK_BIT) != 0)
}

/// Checks that an IOMMU is active; returns the number of IOMMU groups.
pub fn check_iommu(root: &HostRoot) -> Result<usize, HostError> {
    let dir = root.groups();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(HostError::NoIommu { missing: true })
        }
        Err(e) => return Err(io_err(&dir)(e)),
    };
    match entries.count() {
        0 => Err(HostError::NoIommu { missing: false }),
        n => Ok(n),
    }
}

/// Checks that RLIMIT_MEMLOCK lets this process pin `guest_bytes` of guest RAM for DMA.
pub fn check_memlock(guest_bytes: u64) -> Result<(), HostError> {
    memlock_verdict(guest_bytes, RealEnv.memlock()?, RealEnv.cap_ipc_lock())
}

fn memlock_verdict(
    guest_bytes: u64,
    (soft, hard): (Option<u64>, Option<u64>),
    cap_ipc_lock: bool,
) -> Result<(), HostError> {
    match soft {
        Some(s) if s < guest_bytes && !cap_ipc_lock => Err(HostError::Memlock {
            guest_bytes,
            soft,
            hard,
        }),
        _ => Ok(()),
    }
}

/// Maps an error from opening `/dev/vfio/<group>` to the message for it: EBUSY (in use by
/// another process), EACCES/EPERM (permissions), ENOENT (not bound / modules missing).
pub fn group_open_error(group: u32, err: io::Error) -> HostError {
    match err.raw_os_error() {
        Some(libc::EBUSY) => HostError::GroupInUse { group },
        Some(libc::EACCES) | Some(libc::EPERM) => HostError::GroupDevNoAccess { group },
        Some(libc::ENOENT) => HostError::GroupDevMissing { group },
        _ => HostError::Io {
            path: PathBuf::from(format!("/dev/vfio/{group}")),
            source: err,
        },
    }
}

/// Checks one device for passthrough: present, bound to vfio-pci, in a viable IOMMU group,
/// `/dev/vfio/<group>` and `/dev/vfio/vfio` read/writable. Returns the first problem.
/// The VF token is checked separately with [`DeviceReport::check_vf_token`].
pub fn check_device(root: &HostRoot, bdf: &Bdf) -> Result<DeviceReport, HostError> {
    let env = RealEnv;
    let dir = device_dir(root, bdf)?;
    let driver = link_name(&dir.join("driver"))?;
    check_driver(root, bdf, driver.as_deref())?;
    let group = group_of(bdf, &dir)?;
    let members = group_members(root, group)?;
    check_viable(bdf, group, &members)?;
    check_group_dev(root, group, &env)?;
    check_container(root, &env)?;
    Ok(DeviceReport {
        bdf: *bdf,
        id: read_id(&dir),
        driver,
        group,
        members,
        vf: vf_info(root, &dir)?,
    })
}

fn device_dir(root: &HostRoot, bdf: &Bdf) -> Result<PathBuf, HostError> {
    let dir = root.pci_device(&bdf.to_string());
    match std::fs::metadata(&dir) {
        Ok(_) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(HostError::DeviceNotFound { bdf: *bdf })
        }
        Err(e) => Err(io_err(&dir)(e)),
    }
}

fn read_id(dir: &Path) -> Option<String> {
    let read = |f: &str| {
        let s = std::fs::read_to_string(dir.join(f)).ok()?;
        Some(s.trim().trim_start_matches("0x").to_ascii_lowercase())
    };
    Some(format!("{}:{}", read("vendor")?, read("device")?))
}

fn check_driver(root: &HostRoot, bdf: &Bdf, driver: Option<&str>) -> Result<(), HostError> {
    match driver {
        Some(d) if is_vfio_driver(d) => Ok(()),
        _ => Err(HostError::NotBoundToVfio {
            bdf: *bdf,
            driver: driver.map(str::to_string),
            vfio_pci_loaded: exists(&root.sys.join("bus/pci/drivers").join(VFIO_PCI)),
        }),
    }
}

fn group_of(bdf: &Bdf, dir: &Path) -> Result<u32, HostError> {
    let link = dir.join("iommu_group");
    let name = link_name(&link)?.ok_or(HostError::NoIommuGroup { bdf: *bdf })?;
    name.parse().map_err(|_| HostError::Io {
        path: link,
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("group '{name}' is not a number"),
        ),
    })
}

fn group_members(root: &HostRoot, group: u32) -> Result<Vec<GroupMember>, HostError> {
    let dir = root.groups().join(group.to_string()).join("devices");
    let mut members = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let path = entry.map_err(io_err(&dir))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let class = std::fs::read_to_string(path.join("class")).ok();
        let class =
            class.and_then(|c| u32::from_str_radix(c.trim().trim_start_matches("0x"), 16).ok());
        members.push(GroupMember {
            name,
            driver: link_name(&path.join("driver"))?,
            bridge: class.is_some_and(|c| BRIDGE_CLASSES.contains(&(c >> 8))),
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(members)
}

fn check_viable(bdf: &Bdf, group: u32, members: &[GroupMember]) -> Result<(), HostError> {
    let me = bdf.to_string();
    let offenders: Vec<GroupMember> = members
        .iter()
        .filter(|m| m.name != me && !m.allows_vfio())
        .cloned()
        .collect();
    if offenders.is_empty() {
        Ok(())
    } else {
        Err(HostError::GroupNotViable {
            bdf: *bdf,
            group,
            offenders,
        })
    }
}

fn check_group_dev(root: &HostRoot, group: u32, env: &dyn Env) -> Result<(), HostError> {
    let path = root.dev.join("vfio").join(group.to_string());
    if !exists(&path) {
        return Err(HostError::GroupDevMissing { group });
    }
    env.access_rw(&path).map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            HostError::GroupDevNoAccess { group }
        }
        _ => io_err(&path)(e),
    })
}

fn check_container(root: &HostRoot, env: &dyn Env) -> Result<(), HostError> {
    let path = root.dev.join("vfio/vfio");
    if !exists(&path) {
        return Err(HostError::ContainerMissing);
    }
    env.access_rw(&path).map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => HostError::ContainerNoAccess,
        _ => io_err(&path)(e),
    })
}

/// Reads the kernel's reset methods for `bdf`: `reset_method` (Linux 5.15 and later; the methods
/// in the order the kernel tries them, empty when an administrator disabled reset), or, without
/// it, whether the older `reset` file is there. Like every sysfs attribute of its kind, the
/// kernel only shows them for a function it can reset alone.
pub fn reset_methods(root: &HostRoot, bdf: &Bdf) -> HostResetMethods {
    let dir = root.pci_device(&bdf.to_string());
    match std::fs::read_to_string(dir.join("reset_method")) {
        Ok(s) => HostResetMethods::Listed(s.split_whitespace().map(str::to_string).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => HostResetMethods::Absent {
            reset_file: exists(&dir.join("reset")),
        },
        Err(_) => HostResetMethods::Unknown,
    }
}

/// The other functions on `bdf`'s bus (what a bus reset resets too), each with its driver and
/// IOMMU group, from `/sys/bus/pci/devices`.
fn bus_peers(root: &HostRoot, bdf: &Bdf) -> Vec<(Bdf, Option<String>, Option<u32>)> {
    let Ok(entries) = std::fs::read_dir(root.sys.join("bus/pci/devices")) else {
        return Vec::new();
    };
    let mut peers: Vec<_> = entries
        .filter_map(|e| parse_bdf(&e.ok()?.file_name().to_string_lossy()).ok())
        .filter(|b| b.segment == bdf.segment && b.bus == bdf.bus && b != bdf)
        .map(|b| {
            let dir = root.pci_device(&b.to_string());
            let driver = link_name(&dir.join("driver")).ok().flatten();
            (b, driver, group_of(&b, &dir).ok())
        })
        .collect();
    peers.sort();
    peers
}

/// The doctor's reset line: what the kernel offers and what vfiovm will use, predicted from
/// sysfs (a running VMM asks the device itself). `note` when vfiovm may not be able to reset
/// the device; a failure when `required` (`reset=required`) and it cannot.
fn doctor_reset(r: &mut Report, root: &HostRoot, bdf: &Bdf, group: Option<u32>, required: bool) {
    let name = bdf.to_string();
    let methods = reset_methods(root, bdf);
    let none = |r: &mut Report, why: String| {
        let line = format!("{bdf} reset: {methods}; vfiovm will use none: {why}");
        if required {
            r.fails += 1;
            r.line("FAIL", format!("{line} (reset=required refuses it)"));
        } else {
            r.line("note", format!("{line} (reset=required would refuse it)"));
        }
    };
    match &methods {
        HostResetMethods::Absent { reset_file: false } => {}
        _ => {
            let info = super::ops::DeviceInfo {
                flags: vfio_bindings::bindings::vfio::VFIO_DEVICE_FLAGS_RESET,
                ..Default::default()
            };
            let host = ResetHost {
                methods: methods.clone(),
                groups: Vec::new(),
            };
            match super::reset::choose(&name, &info, &host, || Ok(Vec::new())).0 {
                ResetStrategy::None { why } => none(r, why),
                s => r.line("ok", format!("{bdf} reset: {methods}; vfiovm will use {s}")),
            }
            return;
        }
    }
    // A function on a root bus (its sysfs directory sits right under `pciSSSS:BB`) has no bridge
    // above it to reset the bus.
    let root_bus = std::fs::canonicalize(root.pci_device(&name))
        .ok()
        .and_then(|d| {
            Some(
                d.parent()?
                    .file_name()?
                    .to_string_lossy()
                    .starts_with("pci"),
            )
        })
        .unwrap_or(false);
    if root_bus {
        return none(
            r,
            "it sits on a root bus, which has no bridge to reset it; another slot (behind a \
             root port or bridge) may allow a bus reset"
                .to_string(),
        );
    }
    let peers = bus_peers(root, bdf);
    if peers.is_empty() {
        return none(
            r,
            "no other function shares its bus, so the bus cannot be reset either (a root bus, or \
             a bridge that cannot reset it); another slot may allow a reset"
                .to_string(),
        );
    }
    let shown: Vec<String> = peers
        .iter()
        .map(|(b, d, g)| {
            let g = g.map_or("no IOMMU group".to_string(), |g| format!("group {g}"));
            format!("{b} ({}, {g})", d.as_deref().unwrap_or("no driver"))
        })
        .collect();
    let foreign: Vec<String> = peers
        .iter()
        .filter(|(_, d, g)| {
            (g.is_none() || *g != group) && !d.as_deref().is_some_and(is_vfio_driver)
        })
        .map(|(b, d, _)| format!("{b} ({})", d.as_deref().unwrap_or("no driver")))
        .collect();
    if foreign.is_empty() {
        r.line(
            "note",
            format!(
                "{bdf} reset: {methods}; vfiovm will use a bus hot reset if the VM holds the IOMMU group of every function on its bus, {} — pass the ones outside group {} through too (--device); otherwise none",
                shown.join(", "),
                group.map_or("?".to_string(), |g| g.to_string())
            ),
        );
    } else {
        none(
            r,
            format!(
                "a reset of its bus would also reset {}, which no VM can hold while a host driver (or none, outside VFIO) has it; bind them to vfio-pci and pass them through too, or move {bdf} to a slot of its own",
                foreign.join(", ")
            ),
        );
    }
}

fn vf_info(root: &HostRoot, dir: &Path) -> Result<Option<VfInfo>, HostError> {
    let Some(pf) = link_name(&dir.join("physfn"))? else {
        return Ok(None);
    };
    let pf_driver = link_name(&root.pci_device(&pf).join("driver"))?;
    Ok(Some(VfInfo { pf, pf_driver }))
}

/// Runs every check for the host and for each device in `devices` (addresses as
/// [`parse_bdf`] takes them; `--device` options after a ',' are allowed and a `vf_token=`
/// among them counts as given). With `guest_bytes`, RLIMIT_MEMLOCK is checked against it.
///
/// Returns the report, one line per check (`ok: …`, `FAIL: <cause>: <fix>`, `note: …`) ending
/// in a `doctor: …` summary, and whether every check passed.
pub fn doctor(root: &HostRoot, devices: &[String], guest_bytes: Option<u64>) -> (String, bool) {
    doctor_with(root, devices, guest_bytes, &RealEnv, &[])
}

/// [`doctor`] with the VMM's own checks added (each `Ok(ok line)` or `Err(failure)`), reported
/// and counted before the summary: guest RAM backing, say, which this crate knows nothing of.
pub fn doctor_and(
    root: &HostRoot,
    devices: &[String],
    guest_bytes: Option<u64>,
    more: &[Result<String, String>],
) -> (String, bool) {
    doctor_with(root, devices, guest_bytes, &RealEnv, more)
}

/// Collects report lines and counts failures.
#[derive(Default)]
struct Report {
    text: String,
    fails: usize,
}

impl Report {
    fn line(&mut self, kind: &str, msg: impl Display) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "{kind}: {msg}");
    }
    fn fail(&mut self, e: &HostError) {
        self.fails += 1;
        self.line("FAIL", e);
    }
    /// Prints `ok: <msg>` or the failure; returns the value when there was one.
    fn check<T>(&mut self, r: Result<T, HostError>, ok: impl FnOnce(&T) -> String) -> Option<T> {
        match r {
            Ok(v) => {
                let msg = ok(&v);
                self.line("ok", msg);
                Some(v)
            }
            Err(e) => {
                self.fail(&e);
                None
            }
        }
    }
}

fn doctor_with(
    root: &HostRoot,
    devices: &[String],
    guest_bytes: Option<u64>,
    env: &dyn Env,
    more: &[Result<String, String>],
) -> (String, bool) {
    let mut r = Report::default();
    r.check(check_iommu(root), |n| {
        format!("IOMMU is active: {n} IOMMU groups in /sys/kernel/iommu_groups")
    });
    r.check(check_container(root, env), |_| {
        "/dev/vfio/vfio is present and read/writable".to_string()
    });
    doctor_memlock(&mut r, guest_bytes, env);
    for spec in devices {
        doctor_device(&mut r, root, spec, env);
    }
    for m in more {
        match m {
            Ok(line) => r.line("ok", line),
            Err(e) => {
                r.fails += 1;
                r.line("FAIL", e);
            }
        }
    }
    let pass = r.fails == 0;
    if pass {
        r.line("doctor", "all checks passed");
    } else {
        let n = r.fails;
        r.line(
            "doctor",
            format!("{n} check{} failed", if n == 1 { "" } else { "s" }),
        );
    }
    (r.text, pass)
}

fn doctor_memlock(r: &mut Report, guest_bytes: Option<u64>, env: &dyn Env) {
    if env.cap_ipc_lock() {
        r.line(
            "ok",
            "locked memory: CAP_IPC_LOCK is effective, so pinning guest RAM for DMA is not limited",
        );
        return;
    }
    let (soft, hard) = match env.memlock() {
        Ok(lim) => lim,
        Err(e) => return r.fail(&e),
    };
    match guest_bytes {
        Some(g) => {
            r.check(memlock_verdict(g, (soft, hard), false), |_| {
                format!(
                    "locked memory: the RLIMIT_MEMLOCK soft limit ({}) covers the {} of guest \
                     RAM pinned for DMA",
                    size(soft),
                    size(Some(g))
                )
            });
        }
        None if soft.is_none() => r.line("ok", "locked memory: RLIMIT_MEMLOCK is unlimited"),
        None => r.line(
            "note",
            format!(
                "locked memory: RLIMIT_MEMLOCK is {} (soft) / {} (hard); all guest RAM is pinned \
                 for DMA and must fit under the soft limit (give the guest RAM size to check it)",
                size(soft),
                size(hard)
            ),
        ),
    }
}

fn doctor_device(r: &mut Report, root: &HostRoot, spec: &str, env: &dyn Env) {
    let mut parts = spec.split(',');
    let addr = parts.next().unwrap_or_default();
    let opts: Vec<&str> = parts.collect();
    let token_given = opts.iter().any(|p| p.starts_with("vf_token="));
    let reset_required = opts.contains(&"reset=required");
    let bdf = match parse_bdf(addr) {
        Ok(b) => b,
        Err(e) => return r.fail(&e),
    };
    let Some(dir) = r.check(device_dir(root, &bdf), |d| match read_id(d) {
        Some(id) => format!("{bdf} is present ({id})"),
        None => format!("{bdf} is present"),
    }) else {
        return;
    };
    let driver = match link_name(&dir.join("driver")) {
        Ok(d) => d,
        Err(e) => return r.fail(&e),
    };
    r.check(check_driver(root, &bdf, driver.as_deref()), |_| {
        format!(
            "{bdf} is bound to {}",
            driver.as_deref().unwrap_or_default()
        )
    });
    let group = r.check(group_of(&bdf, &dir), |g| {
        format!("{bdf} is in IOMMU group {g}")
    });
    if let Some(group) = group {
        let viable =
            group_members(root, group).and_then(|m| check_viable(&bdf, group, &m).map(|()| m));
        r.check(viable, |members| {
            let list: Vec<String> = members.iter().map(|m| m.to_string()).collect();
            format!("IOMMU group {group} is viable: {}", list.join(", "))
        });
        r.check(check_group_dev(root, group, env), |_| {
            format!("/dev/vfio/{group} is present and read/writable")
        });
    }
    doctor_reset(r, root, &bdf, group, reset_required);
    match vf_info(root, &dir) {
        Ok(None) => {}
        Ok(Some(vf)) if vf.needs_token() && !token_given => {
            let pf = vf.pf;
            r.line("note", HostError::VfTokenRequired { bdf, pf });
        }
        Ok(Some(vf)) if vf.needs_token() => r.line(
            "ok",
            format!(
                "{bdf} is an SR-IOV VF of {} (vfio-pci) and a vf_token is given",
                vf.pf
            ),
        ),
        Ok(Some(vf)) => r.line(
            "ok",
            format!(
                "{bdf} is an SR-IOV VF of {} ({}): no VF token needed",
                vf.pf,
                vf.pf_driver.as_deref().unwrap_or("no driver")
            ),
        ),
        Err(e) => r.fail(&e),
    }
}

#[cfg(test)]
mod tests;
