//! virtio-blk (device type 2) on a raw image file or block device.
//!
//! # Options ([`BlockConfig::SYNTAX`])
//!
//! `path=<image>,readonly=on|off,direct=on|off,serial=<up to 20 bytes>,id=<name>`
//!
//! - `path`: a raw image (a regular file or a block device). A missing file, or an image in
//!   another format (qcow2, vmdk, vhdx, vdi, vhd: recognised by their magic) is refused with a
//!   [`BlockError`] that says how to convert it (`qemu-img convert -O raw`).
//! - `readonly`: opened read-only with a shared lock; the device offers `VIRTIO_BLK_F_RO`, and
//!   writes, discards and write-zeroes fail with `VIRTIO_BLK_S_IOERR`.
//! - `direct`: `O_DIRECT` (no host page cache). Transfers whose guest buffers and image offset
//!   are aligned to 4096 bytes go straight between guest RAM and the disk; others go through a
//!   bounce buffer aligned to 4096 bytes, unaligned writes read-modified-written; the image size
//!   must then be a multiple of 4096.
//! - `serial`: what `VIRTIO_BLK_T_GET_ID` returns (zero-padded to 20 bytes; empty by default).
//! - `id`: the VMM's name for the device.
//!
//! A writable image is locked with an exclusive open-file-description lock (`F_OFD_SETLK`, as
//! QEMU uses), a read-only one with a shared lock, so a second VM (vfiovm or QEMU) cannot
//! write an image another one uses: [`BlockError::Locked`].
//!
//! # Queue and requests
//!
//! One request queue of [`QUEUE_SIZE`] entries. Requests: `IN`, `OUT`, `FLUSH` (`fdatasync`),
//! `GET_ID`, `DISCARD` (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), `WRITE_ZEROES`
//! (`fallocate(ZERO_RANGE | KEEP_SIZE)`, or `PUNCH_HOLE` with the unmap flag); others get
//! `VIRTIO_BLK_S_UNSUPP`. Sector arithmetic is overflow-checked and bounded by the capacity
//! (`VIRTIO_BLK_S_IOERR` past it). A host I/O error is logged and answered with
//! `VIRTIO_BLK_S_IOERR`; nothing is reported written that was not. A chain without a
//! device-writable byte for the status puts the device in NEEDS_RESET.
//!
//! # Requests in flight
//!
//! Up to [`QUEUE_SIZE`] requests are in flight at once, through an io_uring the device sets
//! up when it opens the image ([`BlockIo::Uring`], the default): the handler serves the
//! request queue itself on the device's I/O thread, pops every available chain, queues its
//! read or write with the guest buffers' host addresses as iovecs (no copy), submits them in
//! one `io_uring_enter` and completes each chain when its completion arrives, in any order. A
//! `FLUSH` is an `fdatasync` queued with `IOSQE_IO_DRAIN`: it starts only after every request
//! made available before it has completed (and nothing after it starts before it ends), so
//! it covers every write the driver had seen complete. Reads the page cache holds are done at
//! once (`preadv2` with `RWF_NOWAIT`); `DISCARD`, `WRITE_ZEROES` and `direct` transfers that are
//! not aligned wait until nothing is in flight, then run synchronously. The ring accepts
//! only `READV`, `WRITEV` and `FSYNC` and no registration once enabled. The buffers stay mapped
//! while the kernel uses them: a handler waits for its requests in flight when it is dropped
//! (driver reset, device stop, VM teardown), before the I/O thread lets go of guest RAM.
//!
//! Where io_uring cannot be set up (`ENOSYS`, `EPERM`, `kernel.io_uring_disabled`, a kernel
//! without ring restrictions), opening logs one warning and the device serves one request at a
//! time with synchronous system calls on its I/O thread, as [`BlockIo::Sync`] asks for. An
//! image in memory (tmpfs, ramfs) is served that way too, by choice ([`Block::open`]): its
//! requests are memory copies with no device latency to overlap.
//! Why io_uring and not a thread pool, with measurements: `docs/architecture.md`,
//! `docs/benchmarks.md`.
//!
//! # Device configuration (offsets into it, little-endian)
//!
//! | Offset | Field | Value |
//! |---|---|---|
//! | 0x00 | capacity (u64) | image size / 512 |
//! | 0x08 | size_max (u32) | 0 (not offered) |
//! | 0x0c | seg_max (u32) | [`SEG_MAX`] |
//! | 0x10 | geometry (u16, u8, u8) | 0 (not offered) |
//! | 0x14 | blk_size (u32) | 512 |
//! | 0x18 | physical_block_exp (u8), alignment_offset (u8), min_io_size (u16) | 0 (3 with `direct`), 0, 1 |
//! | 0x1c | opt_io_size (u32) | 0 |
//! | 0x20 | writeback (u8), unused (u8), num_queues (u16) | 0, 0, 1 |
//! | 0x24 | max_discard_sectors (u32) | [`MAX_DISCARD_SECTORS`] |
//! | 0x28 | max_discard_seg (u32) | 1 |
//! | 0x2c | discard_sector_alignment (u32) | 8 |
//! | 0x30 | max_write_zeroes_sectors (u32) | [`MAX_DISCARD_SECTORS`] |
//! | 0x34 | max_write_zeroes_seg (u32) | 1 |
//! | 0x38 | write_zeroes_may_unmap (u8) | 1 |
//!
//! Features: `SEG_MAX`, `BLK_SIZE`, `FLUSH`, `TOPOLOGY`, and `RO` (read-only) or `DISCARD` and
//! `WRITE_ZEROES` (writable).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{QueueHandler, VirtioDevice, VirtioError, VIRTIO_TYPE_BLOCK};

pub mod image;
mod request;
mod uring;

pub use image::Disk;
use uring::Uring;

/// Bytes per sector (the unit of every virtio-blk address and length).
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most data segments per request (the queue size less header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most sectors one discard or write-zeroes segment may cover (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Length of the device configuration we expose.
pub const CONFIG_LEN: usize = 0x3c;
/// Length of the `GET_ID` answer.
pub const ID_BYTES: usize = 20;

/// Feature bit numbers (virtio 1.x 5.2.3).
pub mod features {
    /// Maximum number of segments in config `seg_max`.
    pub const SEG_MAX: u64 = 1 << 2;
    /// Read-only device.
    pub const RO: u64 = 1 << 5;
    /// Block size in config `blk_size`.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Cache flush command.
    pub const FLUSH: u64 = 1 << 9;
    /// Topology in config.
    pub const TOPOLOGY: u64 = 1 << 10;
    /// Discard command.
    pub const DISCARD: u64 = 1 << 13;
    /// Write-zeroes command.
    pub const WRITE_ZEROES: u64 = 1 << 14;
}

/// Errors from opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image does not exist.
    #[error("disk image {} does not exist", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The image is in a format other than raw.
    #[error("disk image {} is a {format} image; vfiovm reads raw images only: convert it with `qemu-img convert -O raw {} {}.raw`", path.display(), path.display(), path.display())]
    NotRaw {
        /// The path given.
        path: PathBuf,
        /// The format recognised.
        format: &'static str,
    },
    /// Another process holds a lock on the image.
    #[error("disk image {} is in use by another process (another VM holds a lock on it){}", path.display(), if *readonly { "; it is attached writable there" } else { "; stop that VM first (two VMs can share an image only if both attach it with readonly=on)" })]
    Locked {
        /// The path given.
        path: PathBuf,
        /// Whether we asked for a shared (read-only) lock.
        readonly: bool,
    },
    /// The file system does not support `O_DIRECT`.
    #[error("disk image {}: the file system does not support direct I/O; use direct=off", path.display())]
    DirectUnsupported {
        /// The path given.
        path: PathBuf,
    },
    /// With `direct`, the image size must be a multiple of 4096.
    #[error("disk image {}: its size {size} is not a multiple of 4096, which direct=on needs; resize it (`truncate -s %4096`) or use direct=off", path.display())]
    DirectSize {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Any other error opening or inspecting the image.
    #[error("opening disk image {}: {source}", path.display())]
    Open {
        /// The path given.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The serial is longer than `GET_ID` can return.
    #[error("disk serial {0:?} is longer than 20 bytes")]
    SerialTooLong(String),
    /// The option string could not be parsed.
    #[error("invalid disk option {0:?}; expected {syntax}", syntax = BlockConfig::SYNTAX)]
    BadOption(String),
}

/// What the user asked for (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Read-only.
    pub readonly: bool,
    /// `O_DIRECT`.
    pub direct: bool,
    /// What `GET_ID` returns (at most 20 bytes).
    pub serial: Option<String>,
    /// The VMM's name for the device.
    pub id: Option<String>,
}

impl BlockConfig {
    /// The option syntax, for help texts.
    pub const SYNTAX: &'static str =
        "path=<raw image>[,readonly=on|off][,direct=on|off][,serial=<up to 20 bytes>][,id=<name>]";

    /// Parses `path=…,readonly=on,…` (a bare first item is the path). Each option at most
    /// once; the serial printable ASCII of at most 20 bytes; the id letters, digits, `-`, `_`
    /// and `.`.
    pub fn parse(s: &str) -> Result<Self, BlockError> {
        let mut c = BlockConfig::default();
        let bad = |item: &str, why: &str| BlockError::BadOption(format!("{item}: {why}"));
        let on_off = |item: &str, v: &str| match v {
            "on" | "true" => Ok(true),
            "off" | "false" => Ok(false),
            _ => Err(bad(item, "takes on or off")),
        };
        let mut seen: Vec<&str> = Vec::new();
        for (i, item) in s.split(',').enumerate() {
            let (k, v) = match item.split_once('=') {
                Some(kv) => kv,
                None if i == 0 && !item.is_empty() => ("path", item),
                None => return Err(bad(item, "not key=value")),
            };
            if seen.contains(&k) {
                return Err(bad(item, "given twice"));
            }
            seen.push(k);
            match k {
                "path" if v.is_empty() => return Err(bad(item, "empty path")),
                "path" => c.path = v.into(),
                "readonly" => c.readonly = on_off(item, v)?,
                "direct" => c.direct = on_off(item, v)?,
                "serial" => {
                    if v.len() > ID_BYTES {
                        return Err(BlockError::SerialTooLong(v.to_string()));
                    }
                    if !v.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(bad(item, "printable ASCII without blanks only"));
                    }
                    c.serial = Some(v.to_string());
                }
                "id" => {
                    let ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
                    if v.is_empty() || !v.bytes().all(ok) {
                        return Err(bad(item, "letters, digits, '-', '_' and '.' only"));
                    }
                    c.id = Some(v.to_string());
                }
                _ => return Err(bad(item, "unknown option")),
            }
        }
        if c.path.as_os_str().is_empty() {
            return Err(bad(s, "no path"));
        }
        Ok(c)
    }
}

/// How a [`Block`] does its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockIo {
    /// Several requests in flight through an io_uring, falling back to [`BlockIo::Sync`]
    /// (with a warning) where io_uring cannot be set up.
    #[default]
    Uring,
    /// One request at a time, synchronous system calls on the I/O thread.
    Sync,
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct Block {
    /// The image's io_uring, made at open; a running handler holds it and puts it back,
    /// drained, when it is dropped. `None` inside: synchronous I/O. Declared before `disk`
    /// so it goes first: it names the image's descriptor.
    ring: Arc<Mutex<Option<Uring>>>,
    /// Shared with the handler of the running device; the lock is uncontended (only the I/O
    /// thread uses it) and keeps the image open and locked across driver resets.
    disk: Arc<Mutex<Disk>>,
    id: Option<String>,
    serial: [u8; ID_BYTES],
    readonly: bool,
    direct: bool,
    capacity: u64,
    config: [u8; CONFIG_LEN],
}

impl Block {
    /// Opens the image and builds the device, with an io_uring ([`BlockIo::Uring`]) unless
    /// the image is in memory (tmpfs, ramfs: [`BlockIo::Sync`], logged): there each request
    /// is a memory copy with nothing to overlap, which the I/O thread does at once, while
    /// through the ring it would cost a kernel worker thread's hand-off (kernels before 6.6
    /// give tmpfs no non-blocking reads, so io_uring hands every read to a worker, and
    /// `preadv2(RWF_NOWAIT)` refuses them too).
    pub fn open(config: &BlockConfig) -> Result<Self, BlockError> {
        Self::open_ring(config, |file| {
            if image::in_memory(file) {
                log::info!(
                    "disk image {} is in memory (tmpfs or ramfs): its requests are served with synchronous copies, not io_uring",
                    config.path.display()
                );
                return None;
            }
            Some(Uring::new(file, u32::from(QUEUE_SIZE)))
        })
    }

    /// Opens the image and builds the device, doing its I/O as `io` says.
    pub fn open_with(config: &BlockConfig, io: BlockIo) -> Result<Self, BlockError> {
        Self::open_ring(config, |file| match io {
            BlockIo::Uring => Some(Uring::new(file, u32::from(QUEUE_SIZE))),
            BlockIo::Sync => None,
        })
    }

    /// [`Block::open_with`], the ring made by `setup` (`None`: synchronous by choice; an
    /// error: io_uring unavailable, logged once, synchronous).
    pub(crate) fn open_ring(
        config: &BlockConfig,
        setup: impl FnOnce(&std::fs::File) -> Option<std::io::Result<Uring>>,
    ) -> Result<Self, BlockError> {
        let mut serial = [0u8; ID_BYTES];
        if let Some(s) = &config.serial {
            if s.len() > ID_BYTES {
                return Err(BlockError::SerialTooLong(s.clone()));
            }
            serial[..s.len()].copy_from_slice(s.as_bytes());
        }
        let disk = Disk::open(config)?;
        let capacity = disk.size() / SECTOR_SIZE;
        let ring = match setup(disk.file()) {
            None => None,

            Some(Ok(ring)) => Some(ring),
            Some(Err(e)) => {
                log::warn!(
                    "disk image {}: io_uring unavailable ({e}); serving its requests one at a time with synchronous I/O",
                    config.path.display()
                );
                None
            }
        };
        let mut b = Block {
            disk: Arc::new(Mutex::new(disk)),
            ring: Arc::new(Mutex::new(ring)),
            id: config.id.clone(),
            serial,
            readonly: config.readonly,
            direct: config.direct,
            capacity,
            config: [0; CONFIG_LEN],
        };
        b.config = b.build_config();
        Ok(b)
    }

    /// The VMM's name for it.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn build_config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |off: usize, b: &[u8]| c[off..off + b.len()].copy_from_slice(b);
        put(0x00, &self.capacity.to_le_bytes());
        put(0x0c, &SEG_MAX.to_le_bytes());
        put(0x14, &(SECTOR_SIZE as u32).to_le_bytes());
        // 4 KiB physical blocks with O_DIRECT (transfers are that aligned on the host).
        put(0x18, &[if self.direct { 3 } else { 0 }, 0]);
        put(0x1a, &1u16.to_le_bytes());
        put(0x22, &1u16.to_le_bytes());
        put(0x24, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(0x28, &1u32.to_le_bytes());
        put(0x2c, &8u32.to_le_bytes());
        put(0x30, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(0x34, &1u32.to_le_bytes());
        put(0x38, &[1]);
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u16 {
        VIRTIO_TYPE_BLOCK
    }

    fn pci_class(&self) -> u32 {
        // Mass storage, SCSI (what QEMU's virtio-blk reports).
        0x01_00_00
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        use features::*;
        let f = SEG_MAX | BLK_SIZE | FLUSH | TOPOLOGY;
        if self.readonly {
            f | RO
        } else {
            f | DISCARD | WRITE_ZEROES
        }
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, features: u64) -> Result<Box<dyn QueueHandler>, VirtioError> {
        Ok(Box::new(self.handler(features)))
    }
}

impl Block {
    fn handler(&self, features: u64) -> request::BlockHandler {
        request::BlockHandler::new(
            self.disk.clone(),
            self.ring.clone(),
            self.capacity,
            self.serial,
            features,
        )
    }

    /// A handler that completes only on the ring's eventfd (no read done at once from the
    /// page cache, no reaping right after a submit), so tests see requests in flight.
    #[cfg(test)]
    pub(crate) fn lazy_handler(&self, features: u64) -> Box<dyn QueueHandler> {
        Box::new(self.handler(features).lazy())
    }
}
