//! The virtio devices seen from inside a guest: `virtio_probe` (a virtio 1.x PCI driver written
//! from the specification, checked against QEMU's devices by
//! `resources/guests/qemu-virtio-check.sh`) finds them, negotiates, sets up its queues with
//! one MSI-X vector each and uses them, with the seccomp filters on (so the I/O threads run
//! under theirs). Disk contents are checked against the image file on the host.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{guest, run, Outcome};

/// Debug-exit status of a guest that ran `exit:0`.
const STATUS_OK: i32 = 1;

fn probe(test: &str, extra: &[&str]) -> Outcome {
    let cmdline = format!("test={test}");
    let image = guest("virtio_probe");
    let mut args = vec![
        "--kernel",
        image.as_str(),
        "--memory",
        "128M",
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(!o.stderr.contains("panicked"), "VMM panicked: {o:#?}");
    o
}

fn line<'a>(o: &'a Outcome, prefix: &str) -> &'a str {
    o.stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?}: {o:#?}"))
}

/// `--rng`: the guest finds one modern virtio-rng function, takes it up with MSI-X and reads
/// 8 KiB of entropy through it: two different, non-zero buffers, each completion an interrupt.
#[test]
fn rng_gives_the_guest_entropy() {
    let o = probe("rng", &["--rng"]);
    o.expect_status(STATUS_OK);
    let dev = line(&o, "virtio: 00:");
    assert!(dev.contains("type=4 name=rng device=0x1044 rev=1"), "{dev}");
    assert!(
        dev.contains("modern=yes") && dev.contains("vectors=2"),
        "{dev}"
    );
    let init = line(&o, "virtio: 00:01.0 init");
    assert!(
        init.contains("status=0xf") && init.contains("msix=yes"),
        "{init}"
    );
    let sum = line(&o, "rng: dev=00:01.0 bytes=8192");
    assert!(sum.contains("differ=yes nonzero=yes"), "{sum}");
    assert!(
        !sum.contains("irqs=0 "),
        "completions must interrupt: {sum}"
    );
    assert!(o.stdout.contains("rng: ok"), "{o:#?}");
    assert!(o.stdout.contains("virtio_probe: failures=0"), "{o:#?}");
}

/// Without `--rng` there is no virtio device, and the probe says so.
#[test]
fn no_virtio_device_unless_asked() {
    let o = probe("list", &[]);
    assert!(o.stdout.contains("virtio: devices=0"), "{o:#?}");
}

/// A scratch image of `size` bytes in the test's temp directory, removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(name: &str, size: u64) -> Self {
        let dir = std::env::temp_dir().join(format!("vfiovm-virtio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        Image(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.0)
            .unwrap()
            .read_exact_at(&mut buf, offset)
            .unwrap();
        buf
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.0)
            .unwrap();
        f.write_all_at(data, offset).unwrap();
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = self.0.parent().map(std::fs::remove_dir);
    }
}

/// The `field=value` of a line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|w| w.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// zlib's CRC-32, as the guest prints it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `--disk`: the guest writes 8 sectors of a seeded pattern, reads them back and flushes; the
/// bytes are then in the image file on the host, where the guest put them, and nowhere else.
#[test]
fn disk_round_trip_reaches_the_image() {
    let img = Image::new("rt.raw", 1 << 20);
    let disk = format!("path={},serial=VFIOVM-SN1", img.path());
    let o = probe("blk sector=200 seed=0x42", &["--disk", &disk]);
    o.expect_status(STATUS_OK);
    let info = line(&o, "blk: dev=00:01.0 capacity=");
    assert_eq!(field(info, "capacity"), "2048", "{info}");
    assert_eq!(field(info, "blk_size"), "512", "{info}");
    assert_eq!(field(info, "ro"), "0", "{info}");
    assert_eq!(field(info, "flush"), "1", "{info}");
    assert!(
        o.stdout
            .contains("blk: dev=00:01.0 serial=VFIOVM-SN1 status=0"),
        "{o:#?}"
    );
    assert!(
        o.stdout.contains("compare bytes=4096 mismatches=0"),
        "{o:#?}"
    );
    assert!(o.stdout.contains("op=flush status=0"), "{o:#?}");
    assert!(o.stdout.contains("blk: roundtrip ok disks=1"), "{o:#?}");
    let data = img.read(200 * 512, 4096);
    for (i, &b) in data.iter().enumerate() {
        let (s, j) = (200 + i / 512, i % 512);
        assert_eq!(
            b,
            ((0x42 + 3 * s + j) & 0xff) as u8,
            "byte {i} of the written range"
        );
    }
    assert!(
        img.read(0, 200 * 512).iter().all(|&b| b == 0),
        "nothing before it changed"
    );
    assert!(
        img.read(208 * 512, 4096).iter().all(|&b| b == 0),
        "nothing after it changed"
    );
}

/// What the host put in the image is what the guest reads (CRC-32 of the sector).
#[test]
fn disk_reads_what_the_host_wrote() {
    let img = Image::new("rd.raw", 1 << 20);
    let mut sector = vec![0u8; 512];
    for (i, b) in sector.iter_mut().enumerate() {
        *b = (i * 7 + 1) as u8;
    }
    sector[..16].copy_from_slice(b"HOST-DATA-AT-SEC");
    img.write(100 * 512, &sector);
    let o = probe("blk-read sector=100", &["--disk", img.path()]);
    o.expect_status(STATUS_OK);
    let l = line(&o, "blk-read: dev=00:01.0 sector=100");
    assert_eq!(field(l, "status"), "0", "{l}");
    assert_eq!(
        field(l, "crc32"),
        format!("{:#010x}", crc32(&sector)),
        "{l}"
    );
    assert!(l.ends_with("head=HOST-DATA-AT-SEC"), "{l}");
}

/// `readonly=on`: the guest sees VIRTIO_BLK_F_RO, its write fails with IOERR and the image is
/// unchanged.
#[test]
fn readonly_disk_refuses_writes() {
    let img = Image::new("ro.raw", 1 << 20);
    img.write(8 * 512, &[0x5a; 512]);
    let disk = format!("path={},readonly=on", img.path());
    let o = probe("blk-ro sector=8", &["--disk", &disk]);
    o.expect_status(STATUS_OK);
    assert!(
        line(&o, "blk-ro: dev=00:01.0 capacity=").contains(" ro=1 "),
        "{o:#?}"
    );
    let w = line(&o, "blk-ro: dev=00:01.0 op=write");
    assert_eq!(field(w, "status"), "1", "VIRTIO_BLK_S_IOERR: {w}");
    assert!(
        o.stdout.contains("blk-ro: dev=00:01.0 unchanged=yes"),
        "{o:#?}"
    );
    assert_eq!(img.read(8 * 512, 512), vec![0x5a; 512]);
}

/// Two disks are two functions, /dev/vda and /dev/vdb in the order given; each gets its own
/// data.
#[test]
fn two_disks_each_get_their_own_data() {
    let a = Image::new("a.raw", 1 << 20);
    let b = Image::new("b.raw", 2 << 20);
    let o = probe(
        "blk sector=16 seed=7",
        &["--disk", a.path(), "--disk", b.path()],
    );
    o.expect_status(STATUS_OK);
    assert!(o.stdout.contains("blk: roundtrip ok disks=2"), "{o:#?}");
    assert_eq!(
        field(line(&o, "blk: dev=00:01.0 capacity="), "capacity"),
        "2048"
    );
    assert_eq!(
        field(line(&o, "blk: dev=00:02.0 capacity="), "capacity"),
        "4096"
    );
    assert_eq!(
        a.read(16 * 512, 512),
        b.read(16 * 512, 512),
        "same pattern on both"
    );
    assert_ne!(a.read(16 * 512, 512), vec![0; 512]);
}

/// Malformed chains (loops, chains longer than the queue, buffers outside RAM, zero and 4 GiB
/// lengths, a header split over descriptors, a runaway available index, broken indirect
/// tables): the VMM survives each, the device answers or asks for a reset, and a normal request
/// works after the reset. Nothing outside the request's sectors changes.
#[test]
fn hostile_chains_leave_the_disk_usable() {
    let img = Image::new("hostile.raw", 1 << 20);
    let o = probe("hostile", &["--disk", img.path()]);
    assert!(o.stdout.contains("hostile: survived"), "{o:#?}");
    o.expect_status(STATUS_OK);
    assert!(!o.stdout.contains("recovered=no"), "{o:#?}");
    assert!(
        o.stdout.contains("case=split_header completed=yes"),
        "a header split over two descriptors is legal: {o:#?}"
    );
}

fn expect_disk_error(disk: &str, needle: &str) {
    let o = probe("list", &["--disk", disk]);
    o.expect_status(2);
    assert!(o.stderr.contains(needle), "{o:#?}");
    assert_eq!(o.stderr.lines().count(), 1, "one line: {o:#?}");
    assert!(o.stdout.is_empty(), "the guest never ran: {o:#?}");
}

/// Bad images: one clear line each, status 2, no guest.
#[test]
fn bad_disk_images_are_refused_with_the_fix() {
    expect_disk_error(
        "/nonexistent/vfiovm.raw",
        "disk image /nonexistent/vfiovm.raw does not exist",
    );
    let q = Image::new("x.qcow2", 1 << 20);
    q.write(0, b"QFI\xfb\0\0\0\x03");
    expect_disk_error(q.path(), "qemu-img convert -O raw");
    let odd = Image::new("odd.raw", 1001 * 512);
    expect_disk_error(
        &format!("path={},direct=on", odd.path()),
        "not a multiple of 4096",
    );
}

/// A writable image in use by a running VM is refused to a second one (an OFD lock, as QEMU
/// takes), with one line saying so; read-only users may share it.
#[test]
fn a_disk_in_use_is_locked_against_a_second_vm() {
    let img = Image::new("locked.raw", 1 << 20);
    let kernel = guest("pvh_probe");
    let mut first = std::process::Command::new(common::vfiovm_bin())
        .args([
            "--kernel",
            &kernel,
            "--memory",
            "64M",
            "--cmdline",
            "action=hang",
        ])
        .args(["--disk", img.path()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the first VM holds its lock (asking the kernel, so no probe of ours ever takes
    // the lock first and makes the first VM the one refused).
    let start = std::time::Instant::now();
    while !write_locked(&img.0) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the first VM took no lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = probe("list", &["--disk", img.path()]);
    let _ = first.kill();
    let _ = first.wait();
    o.expect_status(2);
    assert!(o.stderr.contains("is in use by another process"), "{o:#?}");
    assert_eq!(o.stderr.lines().count(), 1, "{o:#?}");
    // and once it is gone the image is free again
    let o = probe("blk", &["--disk", img.path()]);
    o.expect_status(STATUS_OK);
}

/// Whether another open file holds an OFD write lock on `path` (F_OFD_GETLK).
fn write_locked(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: `flock` is a plain C struct; all zeros is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_GETLK reads and writes the `flock` passed by pointer, valid for the call;
    // the fd is open.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(r, 0, "F_OFD_GETLK: {}", std::io::Error::last_os_error());
    fl.l_type != libc::F_UNLCK as libc::c_short
}
