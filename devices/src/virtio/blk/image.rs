//! The host side of virtio-blk: opening a raw image (refusing other formats), locking it
//! against a second VM, and positioned I/O on it, with aligned bounce buffers for `O_DIRECT`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{BlockConfig, BlockError, SECTOR_SIZE};

/// Alignment of `O_DIRECT` transfers: buffer address, file offset and length. 4096 covers both
/// 512-byte and 4 KiB logical block devices.
pub const DIRECT_ALIGN: u64 = 4096;
/// Largest transfer in one system call.
pub const MAX_CHUNK: usize = 256 * 1024;

/// Image formats that are recognised and refused, by their magic.
fn foreign_format(head: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        Some("qcow2")
    } else if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") || at(0, b"COWD") {
        Some("vmdk")
    } else if at(0, b"vhdxfile") {
        Some("vhdx")
    } else if at(0x40, &[0x7f, 0x10, 0xda, 0xbe]) {
        Some("vdi")
    } else if at(0, b"conectix") {
        Some("vhd")
    } else {
        None
    }
}

/// Takes an open-file-description lock on the whole file (`F_OFD_SETLK`, what QEMU uses):
/// exclusive for a writable image, shared for a read-only one. `Ok(false)` if another open
/// file (another VM, QEMU) holds a conflicting lock.
fn ofd_lock(file: &File, exclusive: bool) -> io::Result<bool> {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value (whole file from 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if exclusive {
        libc::F_WRLCK as libc::c_short
    } else {
        libc::F_RDLCK as libc::c_short
    };
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads the `flock` we pass by pointer, valid for the call; the fd is
    // open for as long as `file` lives.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// `fallocate(2)` on the whole of `[offset, offset + len)`.
pub(crate) fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    loop {
        // SAFETY: fallocate takes plain integers and an fd that `file` keeps open.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A buffer whose usable part starts at a [`DIRECT_ALIGN`] boundary.
struct AlignedBuf {
    v: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let a = DIRECT_ALIGN as usize;
        let v = vec![0u8; len + a];
        let start = v.as_ptr().align_offset(a);
        AlignedBuf { v, start, len }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.v[self.start..self.start + len.min(self.len)]
    }
}

/// An open, locked image.
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    direct: bool,
    readonly: bool,
    bounce: AlignedBuf,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("direct", &self.direct)
            .field("readonly", &self.readonly)
            .finish()
    }
}

impl Disk {
    /// Opens `config.path`: it must exist, be a regular file or block device, not be an image
    /// of another format, and not be locked by another process; with `direct`, its size must be
    /// a multiple of [`DIRECT_ALIGN`].
    pub fn open(config: &BlockConfig) -> Result<Self, BlockError> {
        let path = config.path.clone();
        let err = |source: io::Error| BlockError::Open {
            path: path.clone(),
            source,
        };
        let mut opts = OpenOptions::new();
        opts.read(true).write(!config.readonly);
        if config.direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = match opts.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlockError::NotFound { path })
            }
            Err(e) if config.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(BlockError::DirectUnsupported { path })
            }
            Err(e) => return Err(err(e)),
        };
        let meta = file.metadata().map_err(err)?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            block_device_size(&file).map_err(err)?
        };
        let mut disk = Disk {
            file,
            path: path.clone(),
            size,
            direct: config.direct,
            readonly: config.readonly,
            bounce: AlignedBuf::new(MAX_CHUNK + 2 * DIRECT_ALIGN as usize),
        };
        if config.direct && size % DIRECT_ALIGN != 0 {
            return Err(BlockError::DirectSize { path, size });
        }
        // The magic. With O_DIRECT the size is a multiple of the alignment, so this reads
        // nothing or one aligned block.
        let probe = size.min(DIRECT_ALIGN) as usize;
        let buf = disk.bounce.get(probe);
        let n = if probe == 0 {
            0
        } else {
            disk.file.read_at(buf, 0).map_err(err)?
        };
        if let Some(format) = foreign_format(&buf[..n]) {
            return Err(BlockError::NotRaw { path, format });
        }
        if !ofd_lock(&disk.file, !config.readonly).map_err(err)? {
            return Err(BlockError::Locked {
                path,
                readonly: config.readonly,
            });
        }
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "disk image {}: size {size} is not a multiple of 512; the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        Ok(disk)
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the image in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the image was opened read-only.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Whether the image was opened with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The open image (for setting up its io_uring).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Reads `buf.len()` bytes at `offset` (at most [`MAX_CHUNK`]).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.read_exact_at(buf, offset);
        }
        let (a_start, a_len) = aligned(offset, buf.len())?;
        let b = self.bounce.get(a_len);
        if b.len() < a_len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.file.read_exact_at(b, a_start)?;
        let skip = (offset - a_start) as usize;
        buf.copy_from_slice(&b[skip..skip + buf.len()]);
        Ok(())
    }

    /// Writes `buf` at `offset` (at most [`MAX_CHUNK`] bytes). With `O_DIRECT`, an unaligned
    /// range is read, patched and written back whole.
    pub fn write(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if !self.direct {
            return self.file.write_all_at(buf, offset);
        }
        let (a_start, a_len) = aligned(offset, buf.len())?;
        let b = self.bounce.get(a_len);
        if b.len() < a_len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let skip = (offset - a_start) as usize;
        if skip != 0 || a_len != buf.len() {
            self.file.read_exact_at(b, a_start)?;
        }
        b[skip..skip + buf.len()].copy_from_slice(buf);
        self.file.write_all_at(b, a_start)
    }

    /// `fdatasync(2)`.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `[offset, offset + len)`; it reads back as zeros.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        fallocate(
            &self.file,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Zeroes `[offset, offset + len)` keeping it allocated (`FALLOC_FL_ZERO_RANGE`), falling
    /// back to writing zeros where the file system cannot.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        match fallocate(
            &self.file,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            r => return r,
        }
        let zeros = vec![0u8; MAX_CHUNK];
        let mut done = 0u64;
        while done < len {
            let n = ((len - done) as usize).min(MAX_CHUNK);
            self.write(offset + done, &zeros[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// The [`DIRECT_ALIGN`]-aligned range around `[offset, offset + len)`: `(start, length)`.
fn aligned(offset: u64, len: usize) -> io::Result<(u64, usize)> {
    let end = offset
        .checked_add(len as u64)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let start = offset & !(DIRECT_ALIGN - 1);
    let end = end
        .checked_next_multiple_of(DIRECT_ALIGN)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((start, (end - start) as usize))
}

/// Size of a block device in bytes (`BLKGETSIZE64`).
fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`; the fd
    // is open while `file` lives. On a non-block file it fails with ENOTTY and writes nothing.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Whether `file` lives in memory (tmpfs or ramfs): its reads and writes are memory copies that
/// never wait for a device. `false` if the file system cannot be asked.
pub fn in_memory(file: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: an all-zero `statfs` is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fstatfs` writes only into `st`, which lives for the call; `file` is open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type, TMPFS_MAGIC | RAMFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        assert_eq!(foreign_format(b"QFI\xfb\0\0\0\x03"), Some("qcow2"));
        assert_eq!(foreign_format(b"KDMV\x01\0\0\0"), Some("vmdk"));
        assert_eq!(foreign_format(b"# Disk DescriptorFile\n"), Some("vmdk"));
        assert_eq!(foreign_format(b"vhdxfile"), Some("vhdx"));
        let mut vdi = vec![0u8; 512];
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert_eq!(foreign_format(&vdi), Some("vdi"));
        assert_eq!(foreign_format(&[0u8; 512]), None);
        assert_eq!(foreign_format(b"QFI"), None, "too short to be a magic");
    }

    #[test]
    fn aligned_ranges() {
        assert_eq!(aligned(0, 4096).unwrap(), (0, 4096));
        assert_eq!(aligned(512, 512).unwrap(), (0, 4096));
        assert_eq!(aligned(4000, 200).unwrap(), (0, 8192));
        assert!(aligned(u64::MAX - 10, 100).is_err());
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        let mut b = AlignedBuf::new(8192);
        let s = b.get(8192);
        assert_eq!(s.as_ptr() as usize % DIRECT_ALIGN as usize, 0);
        assert_eq!(s.len(), 8192);
    }
}
