//! [`Tap`]: a Linux tap interface as a virtio-net backend.
//!
//! The tap is opened (or an already-open descriptor is taken) with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`, non-blocking, and its virtio-net header size set to 12 bytes
//! (`TUNSETVNETHDRSZ`, the virtio 1.x header with `num_buffers`). Every frame read from it or
//! written to it then starts with that header: the kernel fills it for frames going to the
//! guest (checksum state, segmentation) and honours it for frames coming from the guest
//! (checksum to complete, segments to cut). What the guest can take is set per activation
//! with [`Tap::set_offload`] (`TUNSETOFFLOAD`).
//!
//! Creating a tap, or attaching to one that belongs to someone else, needs `CAP_NET_ADMIN`.
//! Without it, create the tap beforehand for the user that runs vfiovm:
//! `ip tuntap add NAME mode tap user UID vnet_hdr`.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The control device taps are made through.
pub const TUN_PATH: &str = "/dev/net/tun";
/// The virtio-net header the tap exchanges with every frame (virtio 1.x: with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name (`IFNAMSIZ` minus the NUL).
pub const MAX_NAME_LEN: usize = 15;

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: the name and the flags (the rest of the
/// 40-byte union is unused).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> Self {
        let mut r = IfReq {
            name: [0; 16],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// Flags a usable tap has.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Why a tap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or has characters Linux refuses.
    #[error("invalid tap name '{0}': give 1 to {MAX_NAME_LEN} characters without '/', ':', ',', '=' or spaces")]
    BadName(String),
    /// `/dev/net/tun` does not exist.
    #[error("cannot open {TUN_PATH}: it does not exist: load the tun module (modprobe tun)")]
    NoTunDevice,
    /// The caller may not open `/dev/net/tun` or create/attach the tap.
    #[error("tap '{0}': permission denied: run with CAP_NET_ADMIN, or create the tap beforehand for this user (ip tuntap add {0} mode tap user $(id -u) vnet_hdr)")]
    Permission(String),
    /// Another process has the tap open (a single-queue tap takes one user).
    #[error("tap '{0}' is busy: another process has it open; stop it or use another tap")]
    Busy(String),
    /// An interface of that name exists but is not a tap (a tun, a bridge, an Ethernet card).
    #[error(
        "'{0}' exists and is not a tap interface: pick a free name or a tap (ip -d link show {0})"
    )]
    NotTapName(String),
    /// `fd=N` is not an open descriptor.
    #[error("fd={0} is not an open file descriptor: pass a tap descriptor the parent process opened and left open (no close-on-exec)")]
    BadFd(RawFd),
    /// `fd=N` is open but not an attached tap.
    #[error("fd={0} is not a tap: pass a descriptor of /dev/net/tun attached with TUNSETIFF (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)")]
    NotTapFd(RawFd),
    /// `fd=N` is a tun/tap without the flags vfiovm needs.
    #[error("fd={fd} ({name}) has flags {flags:#x}, without {missing}: attach it with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR")]
    FdFlags {
        /// The descriptor.
        fd: RawFd,
        /// Its interface.
        name: String,
        /// The flags it has.
        flags: u32,
        /// The flags it lacks, by name.
        missing: String,
    },
    /// Another step failed.
    #[error("tap '{name}': {what}: {source}")]
    Io {
        /// The interface (or `fd=N`).
        name: String,
        /// The step.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An open tap interface, non-blocking, exchanging 12-byte virtio-net headers.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"/:,=".contains(&b))
}

/// `ioctl(fd, req, arg)` with a pointer argument.
///
/// # Safety
/// `arg` must point to memory valid for what the kernel reads or writes for `req` (an
/// [`IfReq`] for TUNSETIFF/TUNGETIFF, a `c_int` for TUNSETVNETHDRSZ).
unsafe fn ioctl_ptr<T>(fd: RawFd, req: libc::Ioctl, arg: *mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees `arg` fits `req`.
    if unsafe { libc::ioctl(fd, req, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Opens (creating it if needed) the tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice,
                io::ErrorKind::PermissionDenied => TapError::Permission(name.to_string()),
                _ => TapError::Io {
                    name: name.to_string(),
                    what: "opening /dev/net/tun",
                    source: e,
                },
            })?;
        let fd = OwnedFd::from(file);
        let mut req = IfReq::new(name, TAP_FLAGS);
        // SAFETY: `req` is a live, 40-byte `struct ifreq` the kernel reads and writes back.
        unsafe { ioctl_ptr(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) }.map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(name.to_string()),
                Some(libc::EBUSY) => TapError::Busy(name.to_string()),
                Some(libc::EINVAL) => TapError::NotTapName(name.to_string()),
                _ => TapError::Io {
                    name: name.to_string(),
                    what: "TUNSETIFF",
                    source: e,
                },
            }
        })?;
        let tap = Tap {
            fd,
            name: req.name(),
        };
        tap.configure()?;
        Ok(tap)
    }

    /// Uses `fd`, a tap the caller opened (an inherited `fd=N`): checks with TUNGETIFF that
    /// it is a tap with `IFF_NO_PI` and `IFF_VNET_HDR`, makes it non-blocking and sets the
    /// header size. The `Tap` works on its own duplicate (close-on-exec); `fd` itself is left
    /// open and untouched otherwise, so a wrong number never closes someone else's descriptor.
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        if fd < 0 {
            return Err(TapError::BadFd(fd));
        }
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor (or fails with EBADF); no memory is
        // passed.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(TapError::BadFd(fd));
        }
        // SAFETY: `dup` was just created for us and nothing else knows it.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let mut req = IfReq::new("", 0);
        // SAFETY: `req` is a live `struct ifreq` the kernel writes.
        unsafe { ioctl_ptr(dup, libc::TUNGETIFF, &mut req) }.map_err(|_| TapError::NotTapFd(fd))?;
        let name = req.name();
        let flags = i32::from(req.flags) & 0xffff;
        let mut missing = Vec::new();
        for (bit, what) in [
            (libc::IFF_TAP, "IFF_TAP"),
            (libc::IFF_NO_PI, "IFF_NO_PI"),
            (libc::IFF_VNET_HDR, "IFF_VNET_HDR"),
        ] {
            if flags & bit == 0 {
                missing.push(what);
            }
        }
        if !missing.is_empty() {
            return Err(TapError::FdFlags {
                fd,
                name,
                flags: flags as u32,
                missing: missing.join("|"),
            });
        }
        // SAFETY: F_GETFL/F_SETFL on our open descriptor.
        let fl = unsafe { libc::fcntl(dup, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(dup, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::Io {
                name,
                what: "making it non-blocking",
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap { fd: owned, name };
        tap.configure()?;
        Ok(tap)
    }

    fn configure(&self) -> Result<(), TapError> {
        let mut size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int, which `size` is.
        unsafe { ioctl_ptr(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &mut size) }.map_err(
            |source| TapError::Io {
                name: self.name.clone(),
                what: "TUNSETVNETHDRSZ",
                source,
            },
        )?;
        self.set_offload(0).map_err(|source| TapError::Io {
            name: self.name.clone(),
            what: "TUNSETOFFLOAD",
            source,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the tap which offloads the guest takes (`TUN_F_*`): with `TUN_F_CSUM` it may
    /// hand over frames whose checksum is still to be completed, with `TUN_F_TSO4`/`TSO6`
    /// (and `TUN_F_TSO_ECN`) unsegmented TCP of up to 64 KiB.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long); the kernel
        // reads no memory.
        if unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["tap0", "vfiovm-test-net", "a"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "sixteen-chars-xx",
            "a/b",
            "a b",
            "a:b",
            "a,b",
            "..",
            "tap=1",
        ] {
            assert!(!valid_name(bad), "{bad}");
            assert!(matches!(Tap::open(bad), Err(TapError::BadName(_))), "{bad}");
        }
    }

    #[test]
    fn error_messages_name_the_fix() {
        let io = |what| TapError::Io {
            name: "vm0".into(),
            what,
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        };
        for (e, want) in [
            (
                TapError::NoTunDevice,
                "cannot open /dev/net/tun: it does not exist: load the tun module (modprobe tun)",
            ),
            (
                TapError::Permission("vm0".into()),
                "tap 'vm0': permission denied: run with CAP_NET_ADMIN, or create the tap beforehand for this user (ip tuntap add vm0 mode tap user $(id -u) vnet_hdr)",
            ),
            (
                TapError::Busy("vm0".into()),
                "tap 'vm0' is busy: another process has it open; stop it or use another tap",
            ),
            (
                TapError::NotTapName("lo".into()),
                "'lo' exists and is not a tap interface: pick a free name or a tap (ip -d link show lo)",
            ),
            (
                io("TUNSETVNETHDRSZ"),
                "tap 'vm0': TUNSETVNETHDRSZ: Cannot allocate memory (os error 12)",
            ),
        ] {
            assert_eq!(e.to_string(), want);
        }
    }

    #[test]
    fn a_name_that_is_not_a_tap() {
        match Tap::open("lo") {
            Err(TapError::NotTapName(n)) => assert_eq!(n, "lo"),
            Err(e @ (TapError::Permission(_) | TapError::NoTunDevice)) => {
                eprintln!("SKIPPED: cannot open {TUN_PATH} here ({e})")
            }
            r => panic!("lo as a tap: {r:?}"),
        }
    }

    #[test]
    fn a_descriptor_that_is_not_a_tap_is_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let fd = f.as_raw_fd();
        let e = Tap::from_fd(fd).unwrap_err();
        assert!(matches!(e, TapError::NotTapFd(n) if n == fd), "{e}");
        assert!(e.to_string().contains("is not a tap"), "{e}");
        // SAFETY: F_GETFD only asks whether the descriptor is open: it still is.
        assert!(unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
        assert!(matches!(Tap::from_fd(-1), Err(TapError::BadFd(-1))));
    }

    #[test]
    fn an_inherited_tap_descriptor_is_checked() {
        let name = format!("vfntfd{}", std::process::id() % 100_000);
        let tap = match Tap::open(&name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIPPED: cannot create a tap here ({e})");
                return;
            }
        };
        let again = Tap::from_fd(tap.as_raw_fd()).unwrap();
        assert_eq!(again.name(), name);
        assert_ne!(again.as_raw_fd(), tap.as_raw_fd(), "a duplicate");
        // A tun (no Ethernet frames) and a tap without IFF_VNET_HDR are refused by name.
        for (flags, missing) in [
            (
                libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR,
                "IFF_TAP",
            ),
            (libc::IFF_TAP | libc::IFF_NO_PI, "IFF_VNET_HDR"),
        ] {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(TUN_PATH)
                .unwrap();
            let mut req = IfReq::new(&format!("vfntx{}", std::process::id() % 100_000), flags);
            // SAFETY: `req` is a live `struct ifreq`.
            unsafe { ioctl_ptr(f.as_raw_fd(), libc::TUNSETIFF, &mut req) }.unwrap();
            let e = Tap::from_fd(f.as_raw_fd()).unwrap_err();
            assert!(
                matches!(&e, TapError::FdFlags { missing: m, .. } if m == missing),
                "{e}"
            );
            assert!(e
                .to_string()
                .contains("attach it with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"));
        }
        // The same name twice: the first holder keeps it.
        assert!(matches!(Tap::open(&name), Err(TapError::Busy(_))));
    }
}
