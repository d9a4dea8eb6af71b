//! `--exec`: vfiovm as a kernel CI runner (docs/ci-runner.md). vfiovm packs an initramfs on the
//! fly, in memory: its own init (`resources/init/vfiovm-init.c`, built static by `build.rs`),
//! the command, the working directory, the shares to mount and the guest kernel's modules the
//! init needs (virtio-console for the command's stdout and stderr, 9p for the shares), taken
//! from `/lib/modules/RELEASE` (or `--modules`) with their dependencies from `modules.dep`.
//! The kernel's release comes from its image (the bzImage header's version string, or the
//! `Linux version` banner of an ELF vmlinux).
//!
//! The init reports through the runner port: the command's exit status becomes vfiovm's.

pub mod cpio;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::config::ShareConfig;

/// The init, built by `build.rs`.
static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vfiovm-init"));

/// The guest kernel command line `--exec` starts from (`--cmdline` is appended): the kernel's
/// messages on COM1, which vfiovm keeps out of stdout; a panic reboots at once.
pub const EXEC_CMDLINE: &str = "console=ttyS0 quiet panic=-1 rdinit=/init";

/// The modules the init needs, by module name; each with its dependencies.
const NEEDED: &[&str] = &["virtio_pci", "virtio_console", "9pnet_virtio", "9p"];

/// What `--exec` runs and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// The command, run with `/bin/sh -c` in the guest.
    pub command: String,
    /// The directory it runs in (vfiovm's own working directory).
    pub cwd: PathBuf,
    /// Where the guest kernel's modules are (`--modules`); `None`: `/lib/modules/RELEASE`.
    pub modules: Option<PathBuf>,
    /// `--save-initramfs FILE`: write the initramfs to FILE and stop there (to run the same
    /// init under another VMM, as scripts/rig-bench-exec does with QEMU).
    pub save: Option<PathBuf>,
    /// `--vmlinux`: boot the uncompressed kernel of the same build in place of a bzImage.
    pub vmlinux: Vmlinux,
}

/// `--vmlinux auto|off|FILE`: what `--exec` boots when `--kernel` is a bzImage. A bzImage's
/// kernel decompresses itself in the guest before it starts, which under nested virtualization
/// is seconds of each run (3 s of 8.8 s for Debian's xz-compressed kernel in the nested rig).
/// A kernel build tree holds the same kernel uncompressed (`vmlinux`), which vfiovm loads
/// directly (its PVH entry), so the guest starts at once. The vmlinux is used only when its
/// `Linux version` banner is the bzImage's own version string, which names the build
/// (`#N`, the builder and the build time). Without KASLR: the decompressor is what
/// randomizes the kernel's addresses, so a run that tests KASLR wants `--vmlinux off`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Vmlinux {
    /// `vmlinux` beside the bzImage, or at the top of its build tree
    /// (`TREE/arch/x86/boot/bzImage` → `TREE/vmlinux`), when it is of the same build.
    #[default]
    Auto,
    /// Always the image `--kernel` names.
    Off,
    /// This vmlinux; refused unless it is of the same build as the bzImage.
    File(PathBuf),
}

impl Vmlinux {
    /// Parses `--vmlinux`'s value.
    pub fn parse(s: &str) -> Vmlinux {
        match s {
            "auto" => Vmlinux::Auto,
            "off" => Vmlinux::Off,
            f => Vmlinux::File(PathBuf::from(f)),
        }
    }
}

/// `--save-initramfs`: writes the initramfs `--exec` would boot with to `exec.save`.
pub fn save_initramfs(
    exec: &ExecConfig,
    shares: &[ShareConfig],
    kernel: &Path,
) -> Result<(), String> {
    let Some(to) = &exec.save else {
        return Ok(());
    };
    let mut k = File::open(kernel)
        .map_err(|e| format!("cannot open kernel '{}': {e}", kernel.display()))?;
    let mut f = initramfs(exec, shares, &mut k, None).map_err(|e| e.to_string())?;
    let mut out = File::create(to)
        .map_err(|e| format!("cannot create '{}' for --save-initramfs: {e}", to.display()))?;
    std::io::copy(&mut f, &mut out)
        .map_err(|e| format!("cannot write '{}' for --save-initramfs: {e}", to.display()))?;
    Ok(())
}

/// Why the initramfs could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// `--modules` names a directory without `modules.dep`.
    #[error("--modules {0}: no modules.dep there: give the guest kernel's module directory (lib/modules/RELEASE of its build, after `make modules_install INSTALL_MOD_PATH=...`)")]
    NoModulesDep(PathBuf),
    /// A module file could not be read.
    #[error("cannot read the guest kernel's module {0}: {1}")]
    Module(PathBuf, std::io::Error),
    /// The in-memory initramfs could not be made.
    #[error("cannot make the initramfs for --exec in memory: {0}")]
    Memfd(std::io::Error),
    /// The user's `--initramfs` could not be read.
    #[error("cannot read the initramfs to append to --exec's: {0}")]
    Initramfs(std::io::Error),
    /// The kernel image could not be read for its release.
    #[error("cannot read the kernel image for its release: {0}")]
    Kernel(std::io::Error),
    /// `--vmlinux FILE` with a `--kernel` that is not a bzImage.
    #[error(
        "--vmlinux {0}: --kernel is not a bzImage (it is booted as it is); leave out --vmlinux"
    )]
    VmlinuxWithoutBzImage(PathBuf),
    /// `--vmlinux FILE` that is not of the bzImage's build.
    #[error("--vmlinux {0}: not the same build as the bzImage ({1}): give the vmlinux built with it, or --vmlinux off to boot the bzImage")]
    VmlinuxMismatch(PathBuf, String),
}

/// The version string of a bzImage (`kernel_version` in its setup header, boot protocol 2.00+):
/// `RELEASE (BUILDER@HOST) VERSION`, e.g. `6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1
/// SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)`. `None` for any other image.
pub fn bzimage_version(kernel: &mut File) -> Result<Option<String>, ExecError> {
    let mut head = vec![0u8; 0x210];
    kernel.seek(SeekFrom::Start(0)).map_err(ExecError::Kernel)?;
    let n = read_up_to(kernel, &mut head).map_err(ExecError::Kernel)?;
    if n < head.len() || &head[0x202..0x206] != b"HdrS" {
        return Ok(None);
    }
    let off = u64::from(u16::from_le_bytes([head[0x20e], head[0x20f]]));
    if off == 0 {
        return Ok(None);
    }
    let mut s = [0u8; 256];
    kernel
        .seek(SeekFrom::Start(off + 0x200))
        .map_err(ExecError::Kernel)?;
    let n = read_up_to(kernel, &mut s).map_err(ExecError::Kernel)?;
    let end = s[..n].iter().position(|&c| c == 0).unwrap_or(n);
    Ok(std::str::from_utf8(&s[..end])
        .ok()
        .filter(|v| !v.is_empty())
        .map(str::to_string))
}

/// Whether `rodata` holds the `Linux version` banner of the build whose bzImage version string
/// is `version`. The banner is `Linux version RELEASE (BUILDER@HOST) (COMPILER) VERSION\n`;
/// the bzImage's string is the same without the compiler.
pub fn banner_matches(rodata: &[u8], version: &str) -> bool {
    let Some(at) = version.find(") ") else {
        return false;
    };
    let (release_builder, uts_version) = (&version[..=at], &version[at + 2..]);
    let head = format!("Linux version {release_builder} (");
    let tail = format!(") {uts_version}\n");
    memchr::memmem::find_iter(rodata, head.as_bytes()).any(|i| {
        let line = &rodata[i..];
        let end = memchr::memchr(b'\n', &line[..line.len().min(1024)]);
        end.is_some_and(|e| line[..=e].ends_with(tail.as_bytes()))
    })
}

/// The `.rodata` section of an ELF64 file (where the kernel's banner is), read whole; `None` if
/// the file is not an ELF64 image with one. At most 256 MiB is read.
fn elf_rodata(f: &mut File) -> std::io::Result<Option<Vec<u8>>> {
    const MAX: u64 = 256 << 20;
    let mut eh = [0u8; 64];
    f.seek(SeekFrom::Start(0))?;
    if read_up_to(f, &mut eh)? < 64 || &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return Ok(None);
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&eh, 0x28),
        usize::from(u16_at(&eh, 0x3a)),
        usize::from(u16_at(&eh, 0x3c)),
        usize::from(u16_at(&eh, 0x3e)),
    );
    if shentsize < 64 || shnum == 0 || shstrndx >= shnum || shnum > 4096 {
        return Ok(None);
    }
    let mut sh = vec![0u8; shentsize * shnum];
    f.seek(SeekFrom::Start(shoff))?;
    if read_up_to(f, &mut sh)? < sh.len() {
        return Ok(None);
    }
    let section = |i: usize| {
        let h = &sh[i * shentsize..];
        (u32_at(h, 0), u64_at(h, 0x18), u64_at(h, 0x20))
    };
    let mut read = |off: u64, size: u64| -> std::io::Result<Option<Vec<u8>>> {
        if size > MAX {
            return Ok(None);
        }
        let mut b = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(off))?;
        Ok((read_up_to(f, &mut b)? == b.len()).then_some(b))
    };
    let (_, stroff, strsize) = section(shstrndx);
    let Some(names) = read(stroff, strsize)? else {
        return Ok(None);
    };
    for i in 0..shnum {
        let (name, off, size) = section(i);
        let name = names.get(name as usize..).unwrap_or_default();
        if name.starts_with(b".rodata\0") {
            return read(off, size);
        }
    }
    Ok(None)
}

/// What `--exec` boots for the kernel image at `path` (open as `kernel`), per `choice`:
/// `Some` vmlinux of the same build when the image is a bzImage and one is found, `None` to
/// boot the image as it is.
pub fn pick_vmlinux(
    path: &Path,
    kernel: &mut File,
    choice: &Vmlinux,
) -> Result<Option<(PathBuf, File)>, ExecError> {
    if *choice == Vmlinux::Off {
        return Ok(None);
    }
    let version = bzimage_version(kernel)?;
    kernel.seek(SeekFrom::Start(0)).map_err(ExecError::Kernel)?;
    let Some(version) = version else {
        return match choice {
            Vmlinux::File(f) => Err(ExecError::VmlinuxWithoutBzImage(f.clone())),
            _ => Ok(None),
        };
    };
    let candidates = match choice {
        Vmlinux::File(f) => vec![f.clone()],
        _ => vmlinux_candidates(path),
    };
    for c in candidates {
        let Ok(mut f) = File::open(&c) else {
            if let Vmlinux::File(_) = choice {
                return Err(ExecError::VmlinuxMismatch(c, version));
            }
            continue;
        };
        let same = elf_rodata(&mut f)
            .ok()
            .flatten()
            .is_some_and(|r| banner_matches(&r, &version));
        if same {
            f.seek(SeekFrom::Start(0)).map_err(ExecError::Kernel)?;
            return Ok(Some((c, f)));
        }
        if let Vmlinux::File(_) = choice {
            return Err(ExecError::VmlinuxMismatch(c, version));
        }
        log::info!(
            "--exec: {} is not of the same build as {} (its banner differs): booting the bzImage",
            c.display(),
            path.display()
        );
    }
    Ok(None)
}

/// Where a bzImage's vmlinux may be: beside it, and at the top of the kernel build tree it
/// is in (`TREE/arch/x86/boot/bzImage`, or `arch/x86_64/boot`, a link to it), for the path as
/// given and with links resolved.
fn vmlinux_candidates(bzimage: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if !out.contains(&p) {
            out.push(p);
        }
    };
    let real = std::fs::canonicalize(bzimage).ok();
    for p in std::iter::once(bzimage.to_path_buf()).chain(real) {
        let Some(dir) = p.parent() else { continue };
        add(dir.join("vmlinux"));
        let boot = dir.ends_with("arch/x86/boot") || dir.ends_with("arch/x86_64/boot");
        if let (true, Some(tree)) = (boot, dir.ancestors().nth(3)) {
            add(tree.join("vmlinux"));
        }
    }
    out
}

/// The kernel release in a bzImage's header (`kernel_version`, boot protocol 2.00+) or an ELF
/// vmlinux's `Linux version ` banner; `None` if neither is there.
pub fn kernel_release(kernel: &mut File) -> Result<Option<String>, ExecError> {
    let first_word = |b: &[u8]| -> Option<String> {
        let end = b
            .iter()
            .position(|&c| c == b' ' || c == 0)
            .unwrap_or(b.len());
        let s = std::str::from_utf8(&b[..end]).ok()?;
        (!s.is_empty() && s.len() < 128).then(|| s.to_string())
    };
    if let Some(v) = bzimage_version(kernel)? {
        return Ok(first_word(v.as_bytes()));
    }
    let mut head = [0u8; 0x210];
    kernel.seek(SeekFrom::Start(0)).map_err(ExecError::Kernel)?;
    let n = read_up_to(kernel, &mut head).map_err(ExecError::Kernel)?;
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(None); // a bzImage without a version string
    }
    // An ELF vmlinux: the banner is in .rodata, uncompressed.
    let mut all = Vec::new();
    kernel.seek(SeekFrom::Start(0)).map_err(ExecError::Kernel)?;
    kernel.read_to_end(&mut all).map_err(ExecError::Kernel)?;
    const BANNER: &[u8] = b"Linux version ";
    Ok(memchr::memmem::find(&all, BANNER).and_then(|i| first_word(&all[i + BANNER.len()..])))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A module's name from its path in `modules.dep`: the file name without `.ko` and a
/// compression suffix, `-` read as `_` (as modprobe does).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module files to load, in order (each after its dependencies), for `wanted` given the
/// text of `modules.dep` and `modules.builtin`. Built-in modules and names the kernel does not
/// have are left out (the init then says which option is missing).
pub fn load_order(dep: &str, builtin: &str, wanted: &[&str]) -> Vec<String> {
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let list = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(module_name(path), (path.to_string(), list));
    }
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        if builtin.contains(name) || !seen.insert(name.to_string()) {
            return;
        }
        let Some((path, list)) = deps.get(name) else {
            return;
        };
        for d in list {
            visit(&module_name(d), deps, builtin, seen, out);
        }
        out.push(path.clone());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(&w.replace('-', "_"), &deps, &builtin, &mut seen, &mut out);
    }
    out
}

/// Makes the `--exec` initramfs for `kernel` as an in-memory file: the init, the command, the
/// shares and the modules.
pub fn initramfs(
    exec: &ExecConfig,
    shares: &[ShareConfig],
    kernel: &mut File,
    extra: Option<&mut File>,
) -> Result<File, ExecError> {
    let mut a = cpio::Archive::new();
    a.file("init", 0o755, INIT);
    for d in ["dev", "proc", "sys", "newroot", "vfiovm", "vfiovm/mod"] {
        a.dir(d);
    }
    a.file("vfiovm/cmd", 0o644, exec.command.as_bytes());
    a.file("vfiovm/cwd", 0o644, exec.cwd.to_string_lossy().as_bytes());
    let mut lines = String::new();
    for s in shares {
        let mode = if s.read_only { "ro" } else { "rw" };
        // Mounted at the same path in the guest: absolute, without symbolic links.
        let path = std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
        lines.push_str(&format!("{} {mode} {}\n", s.tag, path.display()));
    }
    a.file("vfiovm/shares", 0o644, lines.as_bytes());

    let dir = match &exec.modules {
        Some(d) => {
            if !d.join("modules.dep").is_file() {
                return Err(ExecError::NoModulesDep(d.clone()));
            }
            Some(d.clone())
        }
        None => match kernel_release(kernel).and_then(|r| {
            kernel.seek(SeekFrom::Start(0)).map_err(ExecError::Kernel)?;
            Ok(r)
        })? {
            Some(rel) => {
                let d = PathBuf::from("/lib/modules").join(&rel);
                if d.join("modules.dep").is_file() {
                    Some(d)
                } else {
                    log::warn!("--exec: no {}/modules.dep: the guest kernel ({rel}) must have virtio-console and 9p built in; give --modules DIR otherwise", d.display());
                    None
                }
            }
            None => {
                log::warn!("--exec: the kernel image names no release, so no modules are packed: it must have virtio-console and 9p built in; give --modules DIR otherwise");
                None
            }
        },
    };
    let mut order = String::new();
    if let Some(dir) = dir {
        let dep = std::fs::read_to_string(dir.join("modules.dep"))
            .map_err(|e| ExecError::Module(dir.join("modules.dep"), e))?;
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        for rel in load_order(&dep, &builtin, NEEDED) {
            let path = dir.join(&rel);
            let data = std::fs::read(&path).map_err(|e| ExecError::Module(path.clone(), e))?;
            let file = Path::new(&rel)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            a.file(&format!("vfiovm/mod/{file}"), 0o644, &data);
            order.push_str(&file);
            order.push('\n');
        }
        log::info!(
            "--exec: modules from {}: {}",
            dir.display(),
            order.trim_end().replace('\n', " ")
        );
    }
    a.file("vfiovm/modules", 0o644, order.as_bytes());

    let mut bytes = a.finish();
    // The user's --initramfs after ours: the kernel unpacks both, later files winning.
    if let Some(extra) = extra {
        extra
            .seek(SeekFrom::Start(0))
            .and_then(|_| extra.read_to_end(&mut bytes))
            .map_err(ExecError::Initramfs)?;
    }
    let mut f = crate::memory::backing::memfd_named(c"vfiovm-exec-initramfs", 0)
        .map_err(ExecError::Memfd)?;
    f.write_all(&bytes).map_err(ExecError::Memfd)?;
    f.seek(SeekFrom::Start(0)).map_err(ExecError::Memfd)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/drivers/char/virtio_console.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
";

    #[test]
    fn modules_come_after_their_dependencies_once_each() {
        let order = load_order(DEP, "", NEEDED);
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "virtio_console",
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "9p"
            ]
        );
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        for (m, d) in [("9p", "9pnet"), ("9p", "netfs"), ("9pnet_virtio", "9pnet")] {
            assert!(pos(d) < pos(m), "{d} before {m}: {names:?}");
        }
    }

    #[test]
    fn built_in_and_unknown_modules_are_left_out() {
        let builtin = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/virtio/virtio_pci_modern_dev.ko\n";
        let names: Vec<String> =
            load_order(DEP, builtin, &["virtio_pci", "virtio-console", "nope"])
                .iter()
                .map(|p| module_name(p))
                .collect();
        assert_eq!(names, ["virtio_console"]);
    }

    /// The whole initramfs: the init (a static ELF), the run's files, the modules the init
    /// needs from a module directory in load order, and a user's initramfs after it all.
    #[test]
    fn the_initramfs_holds_the_init_the_run_and_the_modules() {
        let dir = std::env::temp_dir().join(format!("vfiovm-exec-{}", std::process::id()));
        let mods = dir.join("lib/modules/6.12.0-test");
        for d in [
            "kernel/fs/9p",
            "kernel/net/9p",
            "kernel/fs/netfs",
            "kernel/drivers/char",
        ] {
            std::fs::create_dir_all(mods.join(d)).unwrap();
        }
        let dep = "kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko\n\
                   kernel/net/9p/9pnet.ko:\nkernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko\n\
                   kernel/fs/netfs/netfs.ko:\nkernel/drivers/char/virtio_console.ko:\n";
        std::fs::write(mods.join("modules.dep"), dep).unwrap();
        std::fs::write(
            mods.join("modules.builtin"),
            "kernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();
        for m in dep.lines().filter_map(|l| l.split(':').next()) {
            std::fs::write(mods.join(m), format!("module {m}")).unwrap();
        }
        let kernel_path = dir.join("vmlinux");
        std::fs::write(&kernel_path, b"\x7fELF Linux version 6.12.0-test #1").unwrap();
        let extra_path = dir.join("extra.cpio");
        let mut extra = cpio::Archive::new();
        extra.file("bin/tool", 0o755, b"tool");
        std::fs::write(&extra_path, extra.finish()).unwrap();

        let exec = ExecConfig {
            command: "cd /src && ./run; exit 7".into(),
            cwd: "/home/me/src".into(),
            modules: Some(mods.clone()),
            save: None,
            vmlinux: Vmlinux::Auto,
        };
        let shares = [
            ShareConfig {
                path: "/".into(),
                read_only: true,
                tag: "share0".into(),
            },
            ShareConfig {
                path: "/home/me/out dir".into(),
                read_only: false,
                tag: "share1".into(),
            },
        ];
        let mut kernel = File::open(&kernel_path).unwrap();
        let mut extra = File::open(&extra_path).unwrap();
        let mut f = initramfs(&exec, &shares, &mut kernel, Some(&mut extra)).unwrap();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        // Ours, then the user's archive as it was (the kernel unpacks them in turn).
        let ours_len = bytes.len() - std::fs::metadata(&extra_path).unwrap().len() as usize;
        let entries = cpio::parse(&bytes[..ours_len]);
        assert_eq!(cpio::parse(&bytes[ours_len..])[0].0, "bin/tool");
        let get = |name: &str| {
            entries.iter().find(|e| e.0 == name).unwrap_or_else(|| {
                panic!(
                    "no {name} in {:?}",
                    entries.iter().map(|e| &e.0).collect::<Vec<_>>()
                )
            })
        };
        let init = get("init");
        assert_eq!(init.1, 0o100755);
        assert_eq!(&init.2[..4], b"\x7fELF", "the init is an ELF program");
        assert_eq!(get("vfiovm/cmd").2, exec.command.as_bytes());
        assert_eq!(get("vfiovm/cwd").2, b"/home/me/src");
        assert_eq!(
            get("vfiovm/shares").2,
            b"share0 ro /\nshare1 rw /home/me/out dir\n"
        );
        assert_eq!(
            String::from_utf8(get("vfiovm/modules").2.clone()).unwrap(),
            "virtio_console.ko\n9pnet.ko\n9pnet_virtio.ko\nnetfs.ko\n9p.ko\n",
            "virtio_pci is built in; each module after its dependencies"
        );
        assert_eq!(get("vfiovm/mod/9p.ko").2, b"module kernel/fs/9p/9p.ko");

        // The release from the image finds the same directory under /lib/modules only; a
        // --modules without modules.dep is an error naming the flag.
        let bad = ExecConfig {
            modules: Some(dir.clone()),
            ..exec.clone()
        };
        let e = initramfs(&bad, &shares, &mut kernel, None).unwrap_err();
        assert!(e.to_string().starts_with("--modules "), "{e}");
        assert!(e.to_string().contains("no modules.dep there"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const DEBIAN_VERSION: &str = "6.1.0-57-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)";
    const DEBIAN_BANNER: &str = "Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)\n";

    /// A bzImage header with `version` as its kernel_version string.
    fn fake_bzimage(version: &str) -> Vec<u8> {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        img[0x500..0x500 + version.len()].copy_from_slice(version.as_bytes());
        img
    }

    /// An ELF64 file with sections .shstrtab and .rodata (holding `rodata`), nothing else.
    fn fake_vmlinux(rodata: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.rodata\0";
        let (names_off, rodata_off) = (64u64, 64 + names.len() as u64);
        let shoff = (rodata_off + rodata.len() as u64 + 7) & !7;
        let mut f = vec![0u8; shoff as usize + 3 * 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        f[64..64 + names.len()].copy_from_slice(names);
        f[rodata_off as usize..rodata_off as usize + rodata.len()].copy_from_slice(rodata);
        for (i, (name, off, size)) in [
            (1u32, names_off, names.len() as u64),
            (11, rodata_off, rodata.len() as u64),
        ]
        .into_iter()
        .enumerate()
        {
            let h = shoff as usize + (i + 1) * 64;
            f[h..h + 4].copy_from_slice(&name.to_le_bytes());
            f[h + 0x18..h + 0x20].copy_from_slice(&off.to_le_bytes());
            f[h + 0x20..h + 0x28].copy_from_slice(&size.to_le_bytes());
        }
        f
    }

    #[test]
    fn the_banner_of_the_same_build_matches_and_no_other() {
        let rodata = |b: &str| [&b"\0\0padding\0"[..], b.as_bytes(), b"\0more"].concat();
        assert!(banner_matches(&rodata(DEBIAN_BANNER), DEBIAN_VERSION));
        // Another build of the same release (#2), another release, another builder.
        for other in [
            DEBIAN_BANNER.replace("#1 SMP", "#2 SMP"),
            DEBIAN_BANNER.replace("6.1.0-57", "6.1.0-58"),
            DEBIAN_BANNER.replace("debian-kernel@", "me@"),
            DEBIAN_BANNER.replace("(2025-11-09)\n", "(2025-11-10)\n"),
        ] {
            assert!(!banner_matches(&rodata(&other), DEBIAN_VERSION), "{other}");
        }
        assert!(!banner_matches(&rodata(DEBIAN_BANNER), "no builder here"));
    }

    /// `--vmlinux auto` finds the build tree's vmlinux of the same build and nothing else;
    /// `off` never looks; a named vmlinux of another build, or one for a kernel that is not a
    /// bzImage, is refused.
    #[test]
    fn the_build_trees_vmlinux_is_picked_only_when_it_is_the_same_build() {
        let tree = std::env::temp_dir().join(format!("vfiovm-vmlinux-{}", std::process::id()));
        let boot = tree.join("arch/x86/boot");
        std::fs::create_dir_all(&boot).unwrap();
        let bz = boot.join("bzImage");
        std::fs::write(&bz, fake_bzimage(DEBIAN_VERSION)).unwrap();
        let vmlinux = tree.join("vmlinux");
        let pick = |choice: &Vmlinux| {
            let mut k = File::open(&bz).unwrap();
            let r = pick_vmlinux(&bz, &mut k, choice).map(|o| o.map(|(p, _)| p));
            assert_eq!(
                k.stream_position().unwrap(),
                0,
                "the bzImage is left rewound"
            );
            r
        };
        assert_eq!(pick(&Vmlinux::Auto).unwrap(), None, "no vmlinux yet");
        std::fs::write(&vmlinux, fake_vmlinux(DEBIAN_BANNER.as_bytes())).unwrap();
        assert_eq!(pick(&Vmlinux::Auto).unwrap(), Some(vmlinux.clone()));
        assert_eq!(pick(&Vmlinux::Off).unwrap(), None);
        assert_eq!(
            pick(&Vmlinux::File(vmlinux.clone())).unwrap(),
            Some(vmlinux.clone())
        );
        // One beside the bzImage is found too (a directory of build artifacts).
        let beside = boot.join("vmlinux");
        std::fs::rename(&vmlinux, &beside).unwrap();
        assert_eq!(pick(&Vmlinux::Auto).unwrap(), Some(beside.clone()));
        std::fs::rename(&beside, &vmlinux).unwrap();

        // A rebuilt bzImage (#2) with the old vmlinux: auto boots the bzImage, a named one is
        // refused.
        std::fs::write(&bz, fake_bzimage(&DEBIAN_VERSION.replace("#1", "#2"))).unwrap();
        assert_eq!(pick(&Vmlinux::Auto).unwrap(), None);
        assert!(matches!(
            pick(&Vmlinux::File(vmlinux.clone())),
            Err(ExecError::VmlinuxMismatch(..))
        ));
        assert!(matches!(
            pick(&Vmlinux::File(tree.join("missing"))),
            Err(ExecError::VmlinuxMismatch(..))
        ));
        // A kernel that is not a bzImage is booted as it is.
        std::fs::write(&bz, fake_vmlinux(DEBIAN_BANNER.as_bytes())).unwrap();
        assert_eq!(pick(&Vmlinux::Auto).unwrap(), None);
        assert!(matches!(
            pick(&Vmlinux::File(vmlinux.clone())),
            Err(ExecError::VmlinuxWithoutBzImage(..))
        ));
        std::fs::remove_dir_all(&tree).unwrap();
    }

    #[test]
    fn release_from_a_bzimage_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        img[0x500..0x520].copy_from_slice(b"6.12.38+deb12-amd64 (debian-ke..");
        let path = std::env::temp_dir().join(format!("vfiovm-rel-{}", std::process::id()));
        std::fs::write(&path, &img).unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(
            kernel_release(&mut f).unwrap().as_deref(),
            Some("6.12.38+deb12-amd64")
        );
        std::fs::write(
            &path,
            b"\x7fELF....Linux version 6.1.0-9-cloud-amd64 (x) #1\0",
        )
        .unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(
            kernel_release(&mut f).unwrap().as_deref(),
            Some("6.1.0-9-cloud-amd64")
        );
        std::fs::write(&path, b"no kernel here").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(kernel_release(&mut f).unwrap(), None);
        std::fs::remove_file(&path).unwrap();
    }
}
