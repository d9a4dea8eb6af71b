//! virtio-blk through the transport, against a host temp file.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::*;
use crate::virtio::blk::{features, Block, BlockConfig, BlockError, BlockIo};
use crate::virtio::VIRTIO_F_RING_EVENT_IDX;

pub(super) const T_IN: u32 = 0;
pub(super) const T_OUT: u32 = 1;
pub(super) const T_FLUSH: u32 = 4;
pub(super) const T_GET_ID: u32 = 8;
pub(super) const T_DISCARD: u32 = 11;
pub(super) const T_WRITE_ZEROES: u32 = 13;
pub(super) const S_OK: u8 = 0;
pub(super) const S_IOERR: u8 = 1;
pub(super) const S_UNSUPP: u8 = 2;

/// Guest addresses the requests use.
pub(super) const HDR: u64 = 0x20_0000;
pub(super) const STATUS_AT: u64 = 0x20_0800;
pub(super) const DATA: u64 = 0x21_0000;

/// A temp image, removed on drop.
pub(super) struct TempImage(pub(super) PathBuf);

impl TempImage {
    /// `size` bytes, byte *i* = `i * 7 % 251` (so every sector differs).
    pub(super) fn new(tag: &str, size: usize) -> Self {
        let p = std::env::temp_dir().join(format!("vfiovm-blk-{}-{tag}.raw", std::process::id()));
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, data).unwrap();
        TempImage(p)
    }

    pub(super) fn config(&self) -> BlockConfig {
        BlockConfig {
            path: self.0.clone(),
            ..Default::default()
        }
    }

    pub(super) fn bytes(&self, off: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(&self.0).unwrap();
        let mut v = vec![0u8; len];
        f.read_exact_at(&mut v, off).unwrap();
        v
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn blk_up(config: &BlockConfig) -> Driver {
    blk_up_with(BlockIo::Uring, config)
}

/// The device up, its I/O done as `io` says.
pub(super) fn blk_up_with(io: BlockIo, config: &BlockConfig) -> Driver {
    let dev = Block::open_with(config, io).unwrap();
    let mut d = Driver::new(Box::new(dev));
    let offered = d.device_features() & !VIRTIO_F_VERSION_1;
    d.bring_up(offered, &[16]);
    d
}

fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

impl Driver {
    /// One request laid out as Linux does: header, data (out or in), status. Returns
    /// `(status, used length)`; data read lands at [`DATA`].
    pub(super) fn blk(&mut self, kind: u32, sector: u64, out: &[u8], in_len: u32) -> (u8, u32) {
        self.mem
            .write_slice(&header(kind, sector), GuestAddress(HDR))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS_AT)).unwrap();
        let mut bufs = vec![(HDR, 16, false)];
        if !out.is_empty() {
            self.mem.write_slice(out, GuestAddress(DATA)).unwrap();
            bufs.push((DATA, out.len() as u32, false));
        }
        if in_len > 0 {
            bufs.push((DATA, in_len, true));
        }
        bufs.push((STATUS_AT, 1, true));
        self.submit(&bufs)
    }

    /// Submits any chain and waits for it: `(status byte at STATUS_AT, used length)`.
    pub(super) fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> (u8, u32) {
        let head = self.queues[0].add(&self.mem, bufs);
        self.notify(0);
        let (id, len) = self.queues[0].wait_used(&self.mem);
        assert_eq!(id, u32::from(head));
        (self.mem.read_obj(GuestAddress(STATUS_AT)).unwrap(), len)
    }

    pub(super) fn data(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(DATA)).unwrap();
        v
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed)
        .collect()
}

#[test]
fn identity_features_and_config() {
    let img = TempImage::new("ident", 1 << 20);
    let dev = Block::open(&img.config()).unwrap();
    let mut d = Driver::new(Box::new(dev));
    assert_eq!(d.cfg_read16(2), 0x1042);
    let f = d.device_features();
    for bit in [
        features::SEG_MAX,
        features::BLK_SIZE,
        features::FLUSH,
        features::TOPOLOGY,
        features::DISCARD,
        features::WRITE_ZEROES,
    ] {
        assert_ne!(f & bit, 0, "feature {bit:#x}");
    }
    assert_eq!(f & features::RO, 0);
    let cfg = crate::virtio::pci::DEVICE_CFG_OFFSET;
    let cap = u64::from(d.read32(cfg)) | (u64::from(d.read32(cfg + 4)) << 32);
    assert_eq!(cap, 2048, "1 MiB in sectors");
    assert_eq!(d.read32(cfg + 0x0c), 254, "seg_max");
    assert_eq!(d.read32(cfg + 0x14), 512, "blk_size");
    assert_eq!(d.read32(cfg + 0x28), 1, "max_discard_seg");
    assert_eq!(d.read8(cfg + 0x38), 1, "write_zeroes_may_unmap");
}

fn write_then_read_against_the_host_file(io: BlockIo) {
    let img = TempImage::new(&format!("rw-{io:?}"), 1 << 20);
    let mut d = blk_up_with(io, &img.config());
    let data = pattern(1024, 0x5a);
    assert_eq!(d.blk(T_OUT, 3, &data, 0), (S_OK, 1));
    assert_eq!(
        img.bytes(3 * 512, 1024),
        data,
        "the host file has what the guest wrote"
    );
    assert_eq!(
        img.bytes(2 * 512, 512),
        TempImage::new(&format!("rw-ref-{io:?}"), 1 << 20).bytes(2 * 512, 512),
        "the sector before is untouched"
    );
    // Read back, and read a part the host wrote.
    assert_eq!(d.blk(T_IN, 3, &[], 1024), (S_OK, 1025));
    assert_eq!(d.data(1024), data);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap()
        .write_all_at(&[0xab; 512], 100 * 512)
        .unwrap();
    assert_eq!(d.blk(T_IN, 100, &[], 512), (S_OK, 513));
    assert_eq!(d.data(512), vec![0xab; 512]);
    // The header split over two descriptors and the data over three.
    d.mem
        .write_slice(&header(T_IN, 3), GuestAddress(HDR))
        .unwrap();
    d.mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
    let r = d.submit(&[
        (HDR, 5, false),
        (HDR + 5, 11, false),
        (DATA, 100, true),
        (DATA + 100, 412, true),
        (DATA + 512, 512, true),
        (STATUS_AT, 1, true),
    ]);
    assert_eq!(r, (S_OK, 1025));
    assert_eq!(d.data(1024), data);
}

fn flush_and_get_id(io: BlockIo) {
    let img = TempImage::new(&format!("id-{io:?}"), 64 << 10);
    let mut c = img.config();
    c.serial = Some("VFIOVM-DISK-1".into());
    let mut d = blk_up_with(io, &c);
    assert_eq!(d.blk(T_FLUSH, 0, &[], 0), (S_OK, 1));
    assert_eq!(d.blk(T_GET_ID, 0, &[], 20), (S_OK, 21));
    let mut want = b"VFIOVM-DISK-1".to_vec();
    want.resize(20, 0);
    assert_eq!(d.data(20), want);
    // A shorter buffer gets what fits.
    assert_eq!(d.blk(T_GET_ID, 0, &[], 6), (S_OK, 7));
}

fn discard_seg(sector: u64, num: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&num.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

fn discard_and_write_zeroes(io: BlockIo) {
    let img = TempImage::new(&format!("discard-{io:?}"), 1 << 20);
    let mut d = blk_up_with(io, &img.config());
    let before = img.bytes(0, 8192);
    assert!(before.iter().any(|&b| b != 0));
    // Discard 8 sectors from 0: reads back zeros (a hole), the size stays.
    assert_eq!(d.blk(T_DISCARD, 0, &discard_seg(0, 8, 0), 0), (S_OK, 1));
    assert_eq!(img.bytes(0, 4096), vec![0; 4096]);
    assert_eq!(img.bytes(4096, 512), before[4096..4608].to_vec());
    assert_eq!(std::fs::metadata(&img.0).unwrap().len(), 1 << 20);
    // Write zeroes without and with unmap.
    assert_eq!(
        d.blk(T_WRITE_ZEROES, 0, &discard_seg(8, 2, 0), 0),
        (S_OK, 1)
    );
    assert_eq!(img.bytes(8 * 512, 1024), vec![0; 1024]);
    assert_eq!(
        d.blk(T_WRITE_ZEROES, 0, &discard_seg(16, 1, 1), 0),
        (S_OK, 1)
    );
    assert_eq!(img.bytes(16 * 512, 512), vec![0; 512]);
    let reference = TempImage::new(&format!("discard-ref-{io:?}"), 1 << 20);
    assert_eq!(img.bytes(17 * 512, 512), reference.bytes(17 * 512, 512));
    // Discard with the unmap flag, unknown flags, two segments: unsupported.
    assert_eq!(d.blk(T_DISCARD, 0, &discard_seg(0, 1, 1), 0).0, S_UNSUPP);
    assert_eq!(
        d.blk(T_WRITE_ZEROES, 0, &discard_seg(0, 1, 2), 0).0,
        S_UNSUPP
    );
    let mut two = discard_seg(0, 1, 0);
    two.extend(discard_seg(4, 1, 0));
    assert_eq!(d.blk(T_DISCARD, 0, &two, 0).0, S_UNSUPP);
    // Past the end, or more than the limit: I/O error.
    assert_eq!(d.blk(T_DISCARD, 0, &discard_seg(2047, 2, 0), 0).0, S_IOERR);
    assert_eq!(
        d.blk(T_DISCARD, 0, &discard_seg(u64::MAX, 1, 0), 0).0,
        S_IOERR
    );
    assert_eq!(
        d.blk(T_WRITE_ZEROES, 0, &discard_seg(0, u32::MAX, 0), 0).0,
        S_IOERR
    );
}

fn readonly_refuses_writes(io: BlockIo) {
    let img = TempImage::new(&format!("ro-{io:?}"), 64 << 10);
    let mut c = img.config();
    c.readonly = true;
    let dev = Block::open_with(&c, io).unwrap();
    let mut d = Driver::new(Box::new(dev));
    let f = d.device_features();
    assert_ne!(f & features::RO, 0);
    assert_eq!(f & (features::DISCARD | features::WRITE_ZEROES), 0);
    d.bring_up(f & !VIRTIO_F_VERSION_1, &[16]);
    let before = img.bytes(0, 4096);
    assert_eq!(d.blk(T_OUT, 0, &[0xee; 512], 0).0, S_IOERR);
    assert_eq!(d.blk(T_DISCARD, 0, &discard_seg(0, 8, 0), 0).0, S_IOERR);
    assert_eq!(
        d.blk(T_WRITE_ZEROES, 0, &discard_seg(0, 8, 0), 0).0,
        S_IOERR
    );
    assert_eq!(img.bytes(0, 4096), before, "nothing was written");
    assert_eq!(d.blk(T_IN, 0, &[], 512), (S_OK, 513));
    assert_eq!(d.data(512), before[..512].to_vec());
}

fn bad_requests_fail_with_a_status(io: BlockIo) {
    let img = TempImage::new(&format!("bad-{io:?}"), 64 << 10);
    let mut d = blk_up_with(io, &img.config());
    let before = img.bytes(0, 64 << 10);
    // Capacity is 128 sectors.
    assert_eq!(d.blk(T_IN, 128, &[], 512).0, S_IOERR);
    assert_eq!(d.blk(T_IN, 127, &[], 1024).0, S_IOERR);
    assert_eq!(d.blk(T_OUT, 127, &[1; 1024], 0).0, S_IOERR);
    assert_eq!(d.blk(T_IN, u64::MAX, &[], 512).0, S_IOERR);
    assert_eq!(d.blk(T_OUT, u64::MAX / 512, &[1; 512], 0).0, S_IOERR);
    // Not a whole number of sectors.
    assert_eq!(d.blk(T_IN, 0, &[], 100).0, S_IOERR);
    assert_eq!(d.blk(T_OUT, 0, &[1; 100], 0).0, S_IOERR);
    // Unknown request type.
    assert_eq!(d.blk(0x7777, 0, &[], 0).0, S_UNSUPP);
    // A header shorter than 16 bytes.
    let r = d.submit(&[(HDR, 8, false), (STATUS_AT, 1, true)]);
    assert_eq!(r.0, S_IOERR);
    // A zero-length data descriptor reads nothing.
    assert_eq!(d.blk(T_IN, 0, &[], 0), (S_OK, 1));
    assert_eq!(img.bytes(0, 64 << 10), before, "nothing was written");
}

fn host_io_error_is_reported(io: BlockIo) {
    let img = TempImage::new(&format!("eio-{io:?}"), 64 << 10);
    let mut d = blk_up_with(io, &img.config());
    // The image shrinks under the device: reads past the new end fail on the host.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert_eq!(d.blk(T_IN, 64, &[], 512).0, S_IOERR);
    assert_eq!(d.blk(T_IN, 0, &[], 512).0, S_OK);
}

fn direct_io_round_trip(io: BlockIo) {
    let img = TempImage::new(&format!("direct-{io:?}"), 1 << 20);
    let mut c = img.config();
    c.direct = true;
    let mut d = blk_up_with(io, &c);
    // Unaligned to 4 KiB: read-modify-write on the host.
    let data = pattern(1536, 0x33);
    let around = img.bytes(0, 8192);
    assert_eq!(d.blk(T_OUT, 7, &data, 0), (S_OK, 1));
    assert_eq!(img.bytes(7 * 512, 1536), data);
    assert_eq!(img.bytes(0, 7 * 512), around[..7 * 512].to_vec());
    assert_eq!(
        img.bytes(10 * 512, 512),
        TempImage::new(&format!("direct-ref-{io:?}"), 1 << 20).bytes(10 * 512, 512)
    );
    assert_eq!(d.blk(T_IN, 7, &[], 1536), (S_OK, 1537));
    assert_eq!(d.data(1536), data);
    // A big aligned transfer (more than one bounce buffer).
    let big = pattern(512 << 10, 0x77);
    d.mem.write_slice(&big, GuestAddress(DATA)).unwrap();
    assert_eq!(d.blk(T_OUT, 8, &big, 0).0, S_OK);
    assert_eq!(img.bytes(8 * 512, 512 << 10), big);
}

#[test]
fn opening_refuses_missing_foreign_and_locked_images() {
    let missing = BlockConfig::parse("path=/nonexistent/vfiovm.raw").unwrap();
    let e = Block::open(&missing).unwrap_err();
    assert!(matches!(e, BlockError::NotFound { .. }), "{e}");

    let img = TempImage::new("qcow", 64 << 10);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img.0)
        .unwrap()
        .write_all_at(b"QFI\xfb\0\0\0\x03", 0)
        .unwrap();
    let e = Block::open(&img.config()).unwrap_err();
    assert!(matches!(
        e,
        BlockError::NotRaw {
            format: "qcow2",
            ..
        }
    ));
    assert!(e.to_string().contains("qemu-img convert -O raw"), "{e}");

    let img = TempImage::new("lock", 64 << 10);
    let first = Block::open(&img.config()).unwrap();
    let e = Block::open(&img.config()).unwrap_err();
    assert!(matches!(e, BlockError::Locked { .. }));
    assert!(e.to_string().contains("in use by another process"), "{e}");
    let mut ro = img.config();
    ro.readonly = true;
    assert!(matches!(
        Block::open(&ro).unwrap_err(),
        BlockError::Locked { .. }
    ));
    drop(first);
    // Two readers share.
    let a = Block::open(&ro).unwrap();
    let b = Block::open(&ro).unwrap();
    assert!(matches!(
        Block::open(&img.config()).unwrap_err(),
        BlockError::Locked { .. }
    ));
    drop((a, b));
    Block::open(&img.config()).unwrap();

    let odd = TempImage::new("odd", 5000);
    let mut c = odd.config();
    c.direct = true;
    assert!(matches!(
        Block::open(&c).unwrap_err(),
        BlockError::DirectSize { .. }
    ));
}

#[test]
fn open_errors_name_the_cause() {
    // A directory cannot be opened for writing: the generic error with the path and the OS's
    // reason.
    let dir = std::env::temp_dir();
    let e = Block::open(&BlockConfig::parse(dir.to_str().unwrap()).unwrap()).unwrap_err();
    assert!(matches!(e, BlockError::Open { .. }), "{e}");
    assert!(e.to_string().starts_with("opening disk image "), "{e}");
    // O_DIRECT refused by the file system: no file system here is sure to refuse it, so the
    // message is checked as the VMM prints it.
    let e = BlockError::DirectUnsupported {
        path: "/mnt/x.raw".into(),
    };
    assert_eq!(
        e.to_string(),
        "disk image /mnt/x.raw: the file system does not support direct I/O; use direct=off"
    );
}

#[test]
fn option_parsing() {
    let c = BlockConfig::parse("path=/a.raw,readonly=on,direct=off,serial=S1,id=disk0").unwrap();
    assert_eq!(
        c,
        BlockConfig {
            path: "/a.raw".into(),
            readonly: true,
            direct: false,
            serial: Some("S1".into()),
            id: Some("disk0".into()),
        }
    );
    assert_eq!(
        BlockConfig::parse("/b.raw").unwrap().path,
        PathBuf::from("/b.raw")
    );
    assert!(BlockConfig::parse("path=/a,readonly=maybe").is_err());
    assert!(BlockConfig::parse("path=/a,colour=blue").is_err());
    assert!(BlockConfig::parse("readonly=on").is_err());
    for bad in [
        "",
        "path=",
        "path=a,path=b",
        "path=a,serial=123456789012345678901",
        "path=a,serial=has space",
        "path=a,id=",
        "path=a,id=a/b",
        "path=a,direct",
        "path=a,readonly=on,readonly=off",
    ] {
        assert!(BlockConfig::parse(bad).is_err(), "{bad}");
    }
    assert!(matches!(
        BlockConfig::parse("path=/a,serial=123456789012345678901"),
        Err(BlockError::SerialTooLong(_))
    ));
}

fn event_idx_with_blk(io: BlockIo) {
    let img = TempImage::new(&format!("evidx-{io:?}"), 64 << 10);
    let dev = Block::open_with(&img.config(), io).unwrap();
    let mut d = Driver::new(Box::new(dev));
    d.bring_up(VIRTIO_F_RING_EVENT_IDX, &[16]);
    d.queues[0].set_used_event(&d.mem, 0);
    assert_eq!(d.blk(T_FLUSH, 0, &[], 0).0, S_OK);
    assert_eq!(d.wait_deliveries(1), vec![(d.gsis[1], Driver::msg(1))]);
}

/// The request tests, once on each I/O path.
macro_rules! on_both_paths {
    ($($t:ident),* $(,)?) => {
        mod sync_io {
            use super::BlockIo;
            $( #[test] fn $t() { super::$t(BlockIo::Sync) } )*
        }
        mod io_uring {
            use super::BlockIo;
            $( #[test] fn $t() { super::$t(BlockIo::Uring) } )*
        }
    };
}

on_both_paths!(
    write_then_read_against_the_host_file,
    flush_and_get_id,
    discard_and_write_zeroes,
    readonly_refuses_writes,
    bad_requests_fail_with_a_status,
    host_io_error_is_reported,
    direct_io_round_trip,
    event_idx_with_blk,
);
