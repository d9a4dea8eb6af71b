//! The virtio device flags' values: `--net`.

use devices::virtio::net::MacAddr;

use super::ConfigError;

/// Where a `--net` card's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendConfig {
    /// `tap=NAME`: open (or create) the tap of that name.
    Tap(String),
    /// `fd=N`: a tap descriptor the parent process opened and left open.
    Fd(i32),
}

/// One `--net`: a virtio-net card on a tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The tap.
    pub backend: NetBackendConfig,
    /// The card's address; `None`: `52:54:00:xx:xx:xx` derived from the tap's name
    /// ([`MacAddr::from_seed`]), the same on every run.
    pub mac: Option<MacAddr>,
}

impl NetConfig {
    /// The syntax of `--net`, for help and error messages.
    pub const SYNTAX: &'static str = "tap=NAME[,mac=MAC]|fd=N[,mac=MAC]";

    /// Parses a `--net` value.
    pub fn parse(s: &str) -> Result<NetConfig, ConfigError> {
        let bad = |why: String| ConfigError::BadNet(s.to_string(), why);
        let mut backend = None;
        let mut mac = None;
        for opt in s.split(',') {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| bad(format!("'{opt}' is not KEY=VALUE")))?;
            match k {
                "tap" | "fd" if backend.is_some() => {
                    return Err(bad("give one of tap= and fd=, once".into()))
                }
                "tap" => {
                    if v.is_empty() {
                        return Err(bad("tap= needs an interface name".into()));
                    }
                    backend = Some(NetBackendConfig::Tap(v.to_string()));
                }
                "fd" => {
                    let n = v.parse::<i32>().ok().filter(|&n| n >= 3).ok_or_else(|| {
                        bad(format!(
                            "fd= takes an open descriptor number (3 or more), not '{v}'"
                        ))
                    })?;
                    backend = Some(NetBackendConfig::Fd(n));
                }
                "mac" if mac.is_some() => return Err(bad("mac= is given twice".into())),
                "mac" => mac = Some(MacAddr::parse(v).map_err(|e| bad(e.to_string()))?),
                _ => return Err(bad(format!("unknown option '{k}'"))),
            }
        }
        let backend = backend.ok_or_else(|| bad("no tap= or fd=".into()))?;
        Ok(NetConfig { backend, mac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_syntax() {
        assert_eq!(
            NetConfig::parse("tap=tap0").unwrap(),
            NetConfig {
                backend: NetBackendConfig::Tap("tap0".into()),
                mac: None
            }
        );
        assert_eq!(
            NetConfig::parse("fd=5,mac=52:54:00:ab:cd:ef").unwrap(),
            NetConfig {
                backend: NetBackendConfig::Fd(5),
                mac: Some(MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]))
            }
        );
        assert_eq!(
            NetConfig::parse("mac=02:00:00:00:00:01,tap=vm1")
                .unwrap()
                .backend,
            NetBackendConfig::Tap("vm1".into())
        );
        for (bad, why) in [
            ("", "is not KEY=VALUE"),
            ("tap0", "'tap0' is not KEY=VALUE"),
            ("tap=", "tap= needs an interface name"),
            ("mac=52:54:00:00:00:01", "no tap= or fd="),
            ("tap=a,fd=3", "give one of tap= and fd=, once"),
            ("tap=a,tap=b", "give one of tap= and fd=, once"),
            ("fd=x", "fd= takes an open descriptor number"),
            ("fd=1", "fd= takes an open descriptor number"),
            ("tap=a,mac=1:2:3", "is not a MAC address"),
            ("tap=a,mac=01:00:5e:00:00:01", "multicast"),
            ("tap=a,mac=00:00:00:00:00:00", "all-zero"),
            (
                "tap=a,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02",
                "mac= is given twice",
            ),
            ("tap=a,queues=2", "unknown option 'queues'"),
        ] {
            let e = NetConfig::parse(bad).unwrap_err();
            assert!(matches!(e, ConfigError::BadNet(..)), "{bad}: {e:?}");
            let msg = e.to_string();
            assert!(msg.contains(why), "{bad}: {msg}");
            assert!(
                msg.starts_with(&format!("invalid --net '{bad}': ")),
                "{msg}"
            );
            assert!(
                msg.ends_with(&format!("(syntax: {})", NetConfig::SYNTAX)),
                "{msg}"
            );
        }
    }
}
