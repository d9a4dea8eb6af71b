//! How a passed-through device is reset: the [`ResetStrategy`], chosen once when the device is
//! opened from what the kernel tells.
//!
//! | the kernel says | strategy |
//! |---|---|
//! | `reset_method` in sysfs is present and empty (an administrator disabled reset) | [`ResetStrategy::None`] |
//! | `VFIO_DEVICE_FLAGS_RESET`, first `reset_method` entry `flr` or `af_flr` | [`ResetStrategy::Flr`] |
//! | the same, first entry `pm` | [`ResetStrategy::Pm`] |
//! | the same, another first entry (`device_specific`, `acpi`, `bus` for a device alone on its bus, …) or no `reset_method` to say | [`ResetStrategy::Kernel`] |
//! | no `VFIO_DEVICE_FLAGS_RESET`; `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` names only functions in IOMMU groups this VMM holds | [`ResetStrategy::BusHotReset`] |
//! | anything else | [`ResetStrategy::None`], naming why |
//!
//! The first three are all `VFIO_DEVICE_RESET`: the kernel tries its methods in `reset_method`'s
//! order, so the first one listed is the one that runs. A bus hot reset resets every function
//! on the bus; the kernel takes it only with the fd of every affected group, so a device whose
//! bus it shares with functions of groups this VMM does not hold cannot be reset that way, and a
//! guest can never reach a function it does not own through it.

use std::fmt;
use std::os::unix::io::RawFd;

use super::ops::{DeviceInfo, HotResetDevice, OpsError};

/// What the host's sysfs says about a device's reset methods (`reset_method`, Linux 5.15 and
/// later; Documentation/ABI/testing/sysfs-bus-pci).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostResetMethods {
    /// Not read (an embedder without sysfs, or tests).
    #[default]
    Unknown,
    /// `reset_method`'s contents: the methods the kernel will try, in order. Empty: reset is
    /// disabled for the device.
    Listed(Vec<String>),
    /// No `reset_method` file. With `reset_file` (the older `reset` attribute is there) the
    /// kernel can reset the function but predates `reset_method`; without it the kernel knows
    /// no way to reset the function alone.
    Absent {
        /// `/sys/bus/pci/devices/BDF/reset` exists.
        reset_file: bool,
    },
}

impl fmt::Display for HostResetMethods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostResetMethods::Unknown => f.write_str("reset methods not read from sysfs"),
            HostResetMethods::Listed(m) if m.is_empty() => {
                f.write_str("reset_method is empty (reset disabled on the host)")
            }
            HostResetMethods::Listed(m) => write!(f, "the kernel offers {}", m.join(" ")),
            HostResetMethods::Absent { reset_file: true } => f.write_str(
                "the kernel can reset it alone but has no reset_method to say how (before Linux 5.15)",
            ),
            HostResetMethods::Absent { reset_file: false } => {
                f.write_str("the kernel offers no reset of the function alone (no reset_method)")
            }
        }
    }
}

/// What the VMM knows about resetting a device beyond its fd: the host's reset methods and the
/// IOMMU groups it holds, each with its fd (what a bus hot reset hands the kernel). The fds must
/// stay open as long as the device (a [`crate::vfio::LegacyContainer`]'s do: its devices keep it
/// alive).
#[derive(Debug, Clone, Default)]
pub struct ResetHost {
    /// sysfs `reset_method`.
    pub methods: HostResetMethods,
    /// `(group, fd)` of every IOMMU group the VMM holds.
    pub groups: Vec<(u32, RawFd)>,
}

/// How the device is reset: at open, at a guest FLR, at the VM's reset and at teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetStrategy {
    /// `VFIO_DEVICE_RESET`, which the kernel carries out with a function-level reset (`flr`, or
    /// `af_flr` for a conventional PCI function's Advanced Features capability).
    Flr,
    /// `VFIO_DEVICE_RESET` with a PM reset (D3hot then D0, on a function whose No_Soft_Reset
    /// bit is clear).
    Pm,
    /// `VFIO_DEVICE_RESET` with another kernel method: `device_specific` (a quirk), `acpi`
    /// (`_RST`), `bus` (a bus reset of a device alone on its bus), …; `None` when the kernel does
    /// not say (no `reset_method`).
    Kernel {
        /// The kernel's method, as `reset_method` names it.
        method: Option<String>,
    },
    /// `VFIO_DEVICE_PCI_HOT_RESET` with the fd of every group the reset reaches (all held by
    /// this VMM).
    BusHotReset {
        /// The groups, sorted.
        groups: Vec<u32>,
        /// Every function the reset resets, this one included.
        devices: Vec<String>,
    },
    /// No reset: the device keeps whatever state it had.
    None {
        /// Why, and what would change it.
        why: String,
    },
}

impl ResetStrategy {
    /// Whether the device can be reset at all.
    pub fn usable(&self) -> bool {
        !matches!(self, ResetStrategy::None { .. })
    }
}

impl fmt::Display for ResetStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetStrategy::Flr => f.write_str("function-level reset (VFIO_DEVICE_RESET)"),
            ResetStrategy::Pm => f.write_str("PM reset, D3hot to D0 (VFIO_DEVICE_RESET)"),
            ResetStrategy::Kernel { method: Some(m) } => {
                write!(f, "the kernel's {m} reset (VFIO_DEVICE_RESET)")
            }
            ResetStrategy::Kernel { method: None } => {
                f.write_str("VFIO_DEVICE_RESET (the kernel's choice of method)")
            }
            ResetStrategy::BusHotReset { groups, devices } => {
                let g: Vec<String> = groups.iter().map(u32::to_string).collect();
                write!(
                    f,
                    "bus hot reset (VFIO_DEVICE_PCI_HOT_RESET with group{} {}; resets {})",
                    if g.len() == 1 { "" } else { "s" },
                    g.join(", "),
                    devices.join(", ")
                )
            }
            ResetStrategy::None { why } => write!(f, "none: {why}"),
        }
    }
}

/// Chooses how to reset the device `name` (see the module's table): `info` from
/// `VFIO_DEVICE_GET_INFO`, `hot_reset_info` asked only when the device cannot be reset alone.
/// Returns the strategy and, for a bus hot reset, the group fds to hand the kernel.
pub fn choose(
    name: &str,
    info: &DeviceInfo,
    host: &ResetHost,
    hot_reset_info: impl FnOnce() -> Result<Vec<HotResetDevice>, OpsError>,
) -> (ResetStrategy, Vec<RawFd>) {
    if host.methods == HostResetMethods::Listed(Vec::new()) {
        let why = format!(
            "reset is disabled on the host ({name}'s reset_method is empty): as root, \
             `echo default > /sys/bus/pci/devices/{name}/reset_method` gives the kernel's methods back"
        );
        return (ResetStrategy::None { why }, Vec::new());
    }
    if info.supports_reset() {
        let first = match &host.methods {
            HostResetMethods::Listed(m) => m.first().cloned(),
            _ => None,
        };
        let s = match first.as_deref() {
            Some("flr") | Some("af_flr") => ResetStrategy::Flr,
            Some("pm") => ResetStrategy::Pm,
            _ => ResetStrategy::Kernel { method: first },
        };
        return (s, Vec::new());
    }
    let devices = match hot_reset_info() {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => {
            let why = format!("{name} cannot be reset alone and the kernel names no bus reset");
            return (ResetStrategy::None { why }, Vec::new());
        }
        Err(e) => {
            let why = format!(
                "{name} cannot be reset alone (no FLR, PM or device-specific reset) and its bus \
                 cannot be reset either ({e}): nothing on this host resets it; another slot may \
                 allow a bus reset"
            );
            return (ResetStrategy::None { why }, Vec::new());
        }
    };
    let held = |g: u32| host.groups.iter().find(|(id, _)| *id == g).map(|g| g.1);
    let foreign: Vec<String> = devices
        .iter()
        .filter(|d| held(d.group).is_none())
        .map(|d| format!("{d} (IOMMU group {})", d.group))
        .collect();
    if !foreign.is_empty() {
        let why = format!(
            "{name} cannot be reset alone, and a reset of its bus would also reset {}, which this \
             VM does not hold: pass {} through too (bound to vfio-pci, --device), or move {name} \
             to a slot of its own",
            foreign.join(", "),
            if foreign.len() == 1 { "it" } else { "them" }
        );
        return (ResetStrategy::None { why }, Vec::new());
    }
    let mut groups: Vec<u32> = devices.iter().map(|d| d.group).collect();
    groups.sort_unstable();
    groups.dedup();
    let fds = groups.iter().filter_map(|&g| held(g)).collect();
    let devices = devices.iter().map(ToString::to_string).collect();
    (ResetStrategy::BusHotReset { groups, devices }, fds)
}
