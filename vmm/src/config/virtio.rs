//! The virtio device flags' values: `--net`, `--share`.

use std::path::PathBuf;

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

/// One `--share`: a host directory the guest mounts over virtio-9p by its tag
/// (`mount -t 9p -o trans=virtio,version=9p2000.L share0 /mnt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    /// The host directory, as given (checked to be a directory before the VM is built).
    pub path: PathBuf,
    /// `:ro` (the default): the guest cannot change anything in it; `:rw`: it can.
    pub read_only: bool,
    /// The mount tag: `share0`, `share1`, … in command-line order.
    pub tag: String,
}

impl ShareConfig {
    /// The syntax of `--share`, for help and error messages.
    pub const SYNTAX: &'static str = "HOSTDIR[:ro|:rw]";

    /// Parses the `index`-th `--share` value (0 for the first): `HOSTDIR`, `HOSTDIR:ro` or
    /// `HOSTDIR:rw`. A path that itself ends in `:ro` or `:rw` needs the suffix given too.
    pub fn parse(s: &str, index: usize) -> Result<ShareConfig, ConfigError> {
        let (path, read_only) = match s.rsplit_once(':') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            _ => (s, true),
        };
        if path.is_empty() {
            return Err(ConfigError::BadShare(
                s.to_string(),
                "no directory given".into(),
            ));
        }
        Ok(ShareConfig {
            path: PathBuf::from(path),
            read_only,
            tag: format!("share{index}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_syntax() {
        let p = |s: &str| ShareConfig::parse(s, 2).unwrap();
        assert_eq!(
            p("/srv/data"),
            ShareConfig {
                path: "/srv/data".into(),
                read_only: true,
                tag: "share2".into()
            }
        );
        assert!(p("/srv/data:ro").read_only);
        let rw = p("/srv/data:rw");
        assert!(!rw.read_only);
        assert_eq!(rw.path, PathBuf::from("/srv/data"));
        // Only the last `:` counts, and only before ro or rw.
        assert_eq!(p("/a:b").path, PathBuf::from("/a:b"));
        assert_eq!(p("/a:rw:ro").path, PathBuf::from("/a:rw"));
        assert_eq!(p("rel/dir:rwx").path, PathBuf::from("rel/dir:rwx"));
        for bad in ["", ":ro", ":rw"] {
            let e = ShareConfig::parse(bad, 0).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "invalid --share '{bad}': no directory given (syntax: {})",
                    ShareConfig::SYNTAX
                )
            );
        }
    }

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
