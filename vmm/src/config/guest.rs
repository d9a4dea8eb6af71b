//! What the guest's platform says about itself, for Windows and the drivers that look:
//! `--hyperv`, `--cpu`, `--rtc` (docs/firmware.md, "Windows-facing platform").

use super::ConfigError;

/// `--hyperv`: Hyper-V enlightenments (CPUID 0x4000_0000–0x4000_000A, [`arch::hyperv`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HypervMode {
    /// Not given: on with `--firmware` when the host's KVM offers them, off otherwise.
    #[default]
    Auto,
    /// `on`: required; a host without them is an error.
    On,
    /// `off`: never.
    Off,
}

impl HypervMode {
    /// The syntax of `--hyperv`, for help and error messages.
    pub const SYNTAX: &'static str = "on|off";

    /// Parses a `--hyperv` value.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "on" => Ok(HypervMode::On),
            "off" => Ok(HypervMode::Off),
            _ => Err(ConfigError::BadHyperv(s.to_string())),
        }
    }
}

/// `--cpu`: how the vCPUs present the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuConfig {
    /// `hide-kvm`: no KVM signature or KVM leaves (QEMU's `kvm=off`), for guest drivers that
    /// refuse to run under KVM; the CPUID hypervisor bit stays.
    pub hide_kvm: bool,
    /// `hv-vendor-id=ID`: the Hyper-V vendor id (at most 12 bytes) instead of "Microsoft Hv".
    pub hv_vendor_id: Option<String>,
}

impl CpuConfig {
    /// The syntax of `--cpu`, for help and error messages.
    pub const SYNTAX: &'static str = "hide-kvm[,hv-vendor-id=ID]";

    /// Parses a `--cpu` value: comma-separated items, each at most once.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::BadCpu(s.to_string(), why);
        let mut c = CpuConfig::default();
        for item in s.split(',') {
            match item.split_once('=') {
                None if item == "hide-kvm" => {
                    if c.hide_kvm {
                        return Err(bad("hide-kvm is given twice".into()));
                    }
                    c.hide_kvm = true;
                }
                Some(("hv-vendor-id", v)) => {
                    if c.hv_vendor_id.is_some() {
                        return Err(bad("hv-vendor-id= is given twice".into()));
                    }
                    if v.is_empty() || v.len() > 12 {
                        return Err(bad(format!(
                            "hv-vendor-id= takes 1 to 12 bytes, not {}",
                            v.len()
                        )));
                    }
                    c.hv_vendor_id = Some(v.to_string());
                }
                _ => return Err(bad(format!("unknown option '{item}'"))),
            }
        }
        Ok(c)
    }
}

/// `--rtc base=`: what the RTC's clock shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtcBase {
    /// The host's clock in UTC (what Linux expects).
    #[default]
    Utc,
    /// The host's clock in the host's local time zone (what Windows expects unless told
    /// otherwise), at the offset in force when the VM starts.
    LocalTime,
}

impl RtcBase {
    /// The syntax of `--rtc`, for help and error messages.
    pub const SYNTAX: &'static str = "base=utc|localtime";

    /// Parses a `--rtc` value.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "base=utc" => Ok(RtcBase::Utc),
            "base=localtime" => Ok(RtcBase::LocalTime),
            _ => Err(ConfigError::BadRtc(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperv_values() {
        assert_eq!(HypervMode::parse("on"), Ok(HypervMode::On));
        assert_eq!(HypervMode::parse("off"), Ok(HypervMode::Off));
        for bad in ["", "auto", "yes", "ON"] {
            assert_eq!(
                HypervMode::parse(bad).unwrap_err().to_string(),
                format!("invalid --hyperv '{bad}': use on or off")
            );
        }
    }

    #[test]
    fn cpu_syntax() {
        assert_eq!(
            CpuConfig::parse("hide-kvm"),
            Ok(CpuConfig {
                hide_kvm: true,
                hv_vendor_id: None
            })
        );
        assert_eq!(
            CpuConfig::parse("hv-vendor-id=KVMKVMKVM,hide-kvm"),
            Ok(CpuConfig {
                hide_kvm: true,
                hv_vendor_id: Some("KVMKVMKVM".into())
            })
        );
        let twelve = CpuConfig::parse("hv-vendor-id=0123456789ab").unwrap();
        assert_eq!(twelve.hv_vendor_id.as_deref(), Some("0123456789ab"));
        assert!(!twelve.hide_kvm);
        for (bad, why) in [
            ("", "unknown option ''"),
            ("kvm=off", "unknown option 'kvm=off'"),
            ("hide-kvm,hide-kvm", "hide-kvm is given twice"),
            ("hide-kvm=on", "unknown option 'hide-kvm=on'"),
            ("hv-vendor-id=", "hv-vendor-id= takes 1 to 12 bytes, not 0"),
            (
                "hv-vendor-id=0123456789abc",
                "hv-vendor-id= takes 1 to 12 bytes, not 13",
            ),
            (
                "hv-vendor-id=a,hv-vendor-id=b",
                "hv-vendor-id= is given twice",
            ),
        ] {
            assert_eq!(
                CpuConfig::parse(bad).unwrap_err().to_string(),
                format!(
                    "invalid --cpu '{bad}': {why} (syntax: {})",
                    CpuConfig::SYNTAX
                ),
            );
        }
    }

    #[test]
    fn rtc_values() {
        assert_eq!(RtcBase::parse("base=utc"), Ok(RtcBase::Utc));
        assert_eq!(RtcBase::parse("base=localtime"), Ok(RtcBase::LocalTime));
        for bad in ["", "localtime", "base=local", "base=utc,clock=host"] {
            assert_eq!(
                RtcBase::parse(bad).unwrap_err().to_string(),
                format!("invalid --rtc '{bad}': use base=utc or base=localtime")
            );
        }
    }
}
