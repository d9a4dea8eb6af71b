//! The virtio devices the command line asks for (`--disk`, `--rng`, `--net`, `--share`,
//! `--console virtio`), built on
//! [`devices::virtio`] and put on the guest's PCI bus after the test device and before the
//! passed-through devices.
//!
//! Each device's queue notifications are bound to KVM ioeventfds ([`devices::kvm::KvmIoEvents`]),
//! so a guest's kick never exits to userspace; completions go out through irqfds. Each device
//! has one I/O thread, created here by the thread that builds the VM; it waits at the
//! platform's [`DeviceGate`] and installs the virtio seccomp filter before it serves anything
//! ([`crate::seccomp`]); a `--share`'s virtio-9p thread installs its own, the only one that
//! allows file-system calls.
//!
//! The `--share` directories are checked before the VM is built ([`check_shares`]): each must
//! be an existing directory vfiovm can open, or the run stops with one line naming it.
//!
//! A `--net` tap is opened here, while the VM is built (before any filter and before
//! `--user` drops root); an error names the flag's value and the fix, and what was already
//! made is dropped with the half-built VM.
//!
//! With `--console virtio` the console's output is opened here too (stdout again, without
//! blocking: [`HostOutput::stdout`]), and its input buffer goes back to the platform, which
//! hands it to the event loop in place of COM1's receive FIFO.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::console_tail::ConsoleTail;
use devices::ioevent::IoEventRegistrar;
use devices::kvm::{KvmInterruptManager, KvmIoEvents};
use devices::pci::PciPlatform;
use devices::virtio::blk::Block;
use devices::virtio::console::{Console, HostInput, HostOutput};
use devices::virtio::net::{MacAddr, Net};
use devices::virtio::p9::Share;
use devices::virtio::rng::Rng;
use devices::virtio::tap::Tap;
use devices::virtio::{ThreadStart, VirtioDevice, VirtioPciDevice};
use kvm_ioctls::VmFd;

use crate::config::{ConsoleKind, NetBackendConfig, NetConfig, VmConfig};
use crate::memory::GuestMemory;
use crate::platform::PlatformError;
use crate::seccomp::{DeviceGate, ThreadKind};

/// A `--share` directory that cannot be shared. Each names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// Nothing at the path.
    #[error("--share {0}: no such directory: give the path of an existing directory")]
    Missing(PathBuf),
    /// A file, device or socket.
    #[error("--share {0}: not a directory: give a directory (to share one file, share the directory that holds it)")]
    NotADirectory(PathBuf),
    /// It exists but cannot be opened or listed.
    #[error("--share {0}: cannot open it: {1} (give vfiovm's user read and search permission on it, and search permission on every directory above it)")]
    Open(PathBuf, #[source] std::io::Error),
    /// A writable share with a kernel file system (proc, sysfs, devtmpfs…) mounted inside it.
    #[error("--share {0}:rw: {1} ({2}) is mounted inside it, and a guest that may write there could change the host kernel's settings or vfiovm's own memory (/proc/PID/mem): share it read-only, and read-write only the directories the command writes")]
    KernelFsInside(PathBuf, String, String),
}

/// File systems a writable share must not contain: writing into them reaches the host kernel
/// or a process's memory, not files.
const KERNEL_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "debugfs",
    "tracefs",
    "securityfs",
    "configfs",
    "cgroup",
    "cgroup2",
    "bpf",
    "efivarfs",
    "fusectl",
    "pstore",
    "binfmt_misc",
    "mqueue",
];

/// The mount points in `mountinfo` (the text of /proc/self/mountinfo) at or below `dir` whose
/// file system is one of [`KERNEL_FS`], with the file system's type.
fn kernel_fs_under(mountinfo: &str, dir: &Path) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        let (mount, rest) = line.split_once(" - ")?;
        let point = unescape_mount(mount.split(' ').nth(4)?);
        let fstype = rest.split(' ').next()?;
        (KERNEL_FS.contains(&fstype) && Path::new(&point).starts_with(dir))
            .then(|| (point, fstype.to_string()))
    })
}

/// A mountinfo path with its octal escapes (`\040` for a blank) undone.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let esc = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match esc {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// With a `--share`, raises the soft limit on open files to the hard one (as root, the hard one
/// too, up to `fs.nr_open` or 2^20): the 9p server holds a host descriptor for every file and
/// directory the guest has open or walked to, up to [`devices::virtio::p9::MAX_FIDS`] a share,
/// and the usual soft limit of 1024 is below that. Returns the soft limit now in force.
pub fn raise_fd_limit_for_shares(config: &VmConfig) -> Option<u64> {
    if config.shares.is_empty() {
        return None;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, a live exclusive reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let want = (devices::virtio::p9::MAX_FIDS * config.shares.len() + 1024) as u64;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    let mut new = lim;
    new.rlim_cur = lim.rlim_max.min(want.max(lim.rlim_cur));
    // SAFETY: geteuid only returns the calling process's effective user ID.
    if unsafe { libc::geteuid() } == 0 && lim.rlim_max < want {
        new.rlim_max = want.min(nr_open.min(1 << 20)).max(lim.rlim_max);
        new.rlim_cur = new.rlim_max.min(want);
    }
    if new.rlim_cur > lim.rlim_cur || new.rlim_max != lim.rlim_max {
        // SAFETY: setrlimit reads one rlimit from `new`, a live reference.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            lim = new;
        }
    }
    if lim.rlim_cur < want {
        log::warn!(
            "--share: vfiovm may open {} files, fewer than the {want} a guest may hold open through its shares; a guest walking large trees may get EMFILE (raise `ulimit -n`)",
            lim.rlim_cur
        );
    } else {
        log::info!("--share: open-file limit {}", lim.rlim_cur);
    }
    Some(lim.rlim_cur)
}

/// Checks every `--share` of `config`: an existing directory vfiovm can open and list.
pub fn check_shares(config: &VmConfig) -> Result<(), ShareError> {
    config.shares.iter().try_for_each(|s| {
        check_share(&s.path)?;
        if !s.read_only {
            let dir =
                std::fs::canonicalize(&s.path).map_err(|e| ShareError::Open(s.path.clone(), e))?;
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            if let Some((point, fstype)) = kernel_fs_under(&info, &dir) {
                return Err(ShareError::KernelFsInside(s.path.clone(), point, fstype));
            }
        }
        Ok(())
    })
}

fn check_share(path: &Path) -> Result<(), ShareError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ShareError::Missing(path.into()),
        _ => ShareError::Open(path.into(), e),
    })?;
    if !meta.is_dir() {
        return Err(ShareError::NotADirectory(path.into()));
    }
    std::fs::read_dir(path).map_err(|e| ShareError::Open(path.into(), e))?;
    Ok(())
}

/// How long the `--exec` consoles keep writing the command's last output at the stop while
/// vfiovm's stdout or stderr reader takes it.
const EXEC_STOP_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Creates the virtio devices `config` asks for and adds each to `pci` in a free slot; returns
/// the virtio console's input side when there is one. The virtio console records its output in
/// `tail`.
pub fn add_devices(
    pci: &PciPlatform,
    vm: &Arc<VmFd>,
    mem: &GuestMemory,
    irq: &KvmInterruptManager,
    gate: &Arc<DeviceGate>,
    config: &VmConfig,
    tail: &Arc<ConsoleTail>,
) -> Result<Option<Arc<HostInput>>, PlatformError> {
    let ioevents: Arc<dyn IoEventRegistrar> = Arc::new(KvmIoEvents::new(vm.clone()));
    let add_kind = |name: &str,
                    device: Box<dyn VirtioDevice>,
                    kind: ThreadKind|
     -> Result<(), PlatformError> {
        let thread_gate = gate.clone();
        let start: ThreadStart = Arc::new(move |thread: &str| thread_gate.enter(thread, kind));
        let dev = VirtioPciDevice::with_thread_start(
            name,
            device,
            mem.clone(),
            irq,
            Some(ioevents.clone()),
            Some(start),
        )
        .map_err(|e| PlatformError::Virtio(name.to_string(), e.to_string()))?;
        // From here an error drops the device, which joins its thread: let it leave the gate
        // first.
        let fail = |e: PlatformError| {
            gate.open(None);
            e
        };
        let slot = pci
            .free_slot()
            .ok_or_else(|| fail(PlatformError::Pci(format!("no free PCI slot for {name}"))))?;
        let addr = pci
            .add_device(slot, Arc::new(Mutex::new(dev)))
            .map_err(|e| fail(PlatformError::Virtio(name.to_string(), e.to_string())))?;
        log::info!("{name} at {addr}");
        Ok(())
    };
    let add =
        |name: &str, device: Box<dyn VirtioDevice>| add_kind(name, device, ThreadKind::Device);
    for (i, disk) in config.disks.iter().enumerate() {
        let dev = Block::open(disk).map_err(PlatformError::Disk)?;
        add(&format!("virtio-blk{i}"), Box::new(dev))?;
    }
    if config.rng {
        add("virtio-rng", Box::new(Rng::new()))?;
    }
    for (i, net) in config.net.iter().enumerate() {
        let name = format!("virtio-net{i}");
        let (tap, mac) = open_net(net)?;
        log::info!("{name}: tap {} mac {mac}", tap.name());
        let card = Net::new(Arc::new(tap), mac)
            .map_err(|e| PlatformError::Virtio(name.clone(), e.to_string()))?;
        add(&name, Box::new(card))?;
    }
    for (i, share) in config.shares.iter().enumerate() {
        let name = format!("virtio-9p{i}");
        let dev = Share::new(&share.path, &share.tag, share.read_only)
            .map_err(|e| PlatformError::Virtio(name.clone(), e.to_string()))?;
        log::info!(
            "{name}: {} as '{}' ({})",
            dev.root().display(),
            share.tag,
            if share.read_only {
                "read-only"
            } else {
                "read-write"
            }
        );
        add_kind(&name, Box::new(dev), ThreadKind::Share)?;
    }
    if config.exec.is_some() {
        // The command's stdout and stderr (hvc0, hvc1 in the guest: PCI slot order). Their
        // output counts as progress for the stall watch but is not kept as console lines.
        for (name, fd) in [
            ("virtio-console-stdout", libc::STDOUT_FILENO),
            ("virtio-console-stderr", libc::STDERR_FILENO),
        ] {
            let fail = |what: &str, e: std::io::Error| {
                PlatformError::Virtio(name.to_string(), format!("{what}: {e}"))
            };
            let input = Arc::new(HostInput::new().map_err(|e| fail("its input buffer", e))?);
            let output = HostOutput::for_fd(fd).map_err(|e| fail("opening its output", e))?;
            add(
                name,
                Box::new(
                    Console::new(input, output)
                        .with_progress(tail.clone())
                        .with_stop_drain(EXEC_STOP_DRAIN),
                ),
            )?;
        }
    }
    if config.console == ConsoleKind::Virtio {
        let name = "virtio-console";
        let fail = |what: &str, e: std::io::Error| {
            PlatformError::Virtio(name.to_string(), format!("{what}: {e}"))
        };
        let input = Arc::new(HostInput::new().map_err(|e| fail("its input buffer", e))?);
        let output =
            HostOutput::stdout().map_err(|e| fail("opening stdout without blocking", e))?;
        add(
            name,
            Box::new(Console::new(input.clone(), output).with_tail(tail.clone())),
        )?;
        return Ok(Some(input));
    }
    Ok(None)
}

/// Opens a `--net` card's tap; its MAC is the one given or one derived from the tap's name.
fn open_net(net: &NetConfig) -> Result<(Tap, MacAddr), PlatformError> {
    let (arg, tap) = match &net.backend {
        NetBackendConfig::Tap(name) => (format!("tap={name}"), Tap::open(name)),
        NetBackendConfig::Fd(fd) => (format!("fd={fd}"), Tap::from_fd(*fd)),
    };
    let tap = tap.map_err(|e| PlatformError::Net(arg, e))?;
    let mac = net.mac.unwrap_or_else(|| MacAddr::from_seed(tap.name()));
    Ok((tap, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_shares_must_not_hold_kernel_file_systems() {
        let info = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    25 1 0:5 / /dev rw - devtmpfs udev rw\n\
                    30 1 8:1 / /srv/my\\040dir rw - ext4 /dev/sda1 rw\n\
                    31 30 0:40 / /srv/my\\040dir/sys rw - sysfs sysfs rw\n\
                    40 1 0:41 / /home rw - ext4 /dev/sda2 rw\n";
        assert_eq!(
            kernel_fs_under(info, Path::new("/")),
            Some(("/proc".into(), "proc".into()))
        );
        assert_eq!(
            kernel_fs_under(info, Path::new("/srv/my dir")),
            Some(("/srv/my dir/sys".into(), "sysfs".into()))
        );
        assert_eq!(kernel_fs_under(info, Path::new("/home")), None);
        assert_eq!(
            kernel_fs_under(info, Path::new("/pro")),
            None,
            "a prefix is not a parent"
        );
        assert_eq!(kernel_fs_under(info, Path::new("/dev/shm")), None);
        let e = ShareError::KernelFsInside("/".into(), "/proc".into(), "proc".into());
        assert!(
            e.to_string()
                .starts_with("--share /:rw: /proc (proc) is mounted inside it"),
            "{e}"
        );
    }

    #[test]
    fn share_errors_name_the_path_and_the_fix() {
        let dir = std::env::temp_dir().join(format!("vfiovm-share-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_share(&dir).is_ok());
        let missing = dir.join("missing");
        assert_eq!(
            check_share(&missing).unwrap_err().to_string(),
            format!(
                "--share {}: no such directory: give the path of an existing directory",
                missing.display()
            )
        );
        assert!(matches!(
            check_share(&file),
            Err(ShareError::NotADirectory(p)) if p == file
        ));
        // Permission denied cannot be had as root: the message alone.
        let denied = ShareError::Open(
            "/srv/x".into(),
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(denied
            .to_string()
            .starts_with("--share /srv/x: cannot open it: Permission denied (os error 13) (give vfiovm's user read and search permission"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
