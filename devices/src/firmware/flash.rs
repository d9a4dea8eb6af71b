//! A CFI flash (Intel command set, x8) for OVMF's variable store, the subset OVMF's
//! `QemuFlashFvbServicesRuntimeDxe` uses, over a byte buffer optionally backed by a file.
//!
//! Mapping: an MMIO range of [`CfiFlash::len`] bytes at the VARS base of the firmware build
//! ([`OVMF_VARS_4M_BASE`] for `OVMF_VARS_4M.fd`, [`OVMF_VARS_2M_BASE`] for the 2M
//! `OVMF_VARS.fd`); the CODE image right above it is a read-only memory slot, not this device.
//! Every access traps, unless the VMM gives the flash an [`ArrayMapping`]
//! ([`CfiFlash::set_array_mapping`]): then, as a ROM device, the array is also mapped read-only
//! into the guest while the flash is in read-array mode, so reads cost no exit (writes still
//! trap: the mapping is read-only), and the mapping is removed whenever a command leaves
//! read-array mode, so status and query reads trap and see the registers. OVMF reads its
//! variable store byte by byte through the mapping (377,000 trapped reads in one boot in the
//! nested rig without it; docs/firmware.md); QEMU's pflash does the same ("romd" mode).
//!
//! Commands, written as one byte at any offset (a wider write uses its first byte); reads
//! depend on the mode the last command left:
//!
//! | command | what | then reads return |
//! |---|---|---|
//! | 0xFF, 0xF0 | read array (0xF0 is the AMD reset some probes write) | the array |
//! | 0x70 | read status | the status register |
//! | 0x50 | clear status: the status register becomes 0x00 | the array |
//! | 0x10, 0x40 | program: the next write stores its bytes at its offset | status (bit 7 set when done) |
//! | 0x20, then 0xD0 | block erase: the 4 KiB block holding the 0xD0 write's offset becomes 0xFF | status |
//! | 0x20, then 0xFF | erase cancelled | the array |
//! | 0x98 | CFI query | the query table (`"QRY"` at 0x10) |
//!
//! Anything else returns to read-array mode (logged once). Program overwrites bytes as QEMU's
//! flash does (a real part can only clear bits; OVMF writes the values it computed). The
//! status register reads 0x80 (ready) at start and after every program or erase; an erase
//! sequence broken by another byte than 0xD0 or 0xFF sets 0x30 (command sequence error); a
//! program past the end, or one whose write to the backing file (or a sync) fails, sets 0x10,
//! an erase past the end or whose write fails 0x20. In status mode every byte of a wide read
//! holds the status.
//!
//! OVMF's probe (`QemuFlashDetected`): it reads a byte that is not 0x00, 0x50 or 0x70, writes
//! 0x50 and must read that byte back (a RAM would read 0x50), then writes 0x70 and must read
//! 0x00 — the status that 0x50 cleared. Then it writes 0xFF.
//!
//! Persistence: a program or erase updates the buffer and is written to the backing file at
//! once (`pwrite`), so a VMM that dies loses nothing the page cache holds. The file is synced
//! to disk (`fdatasync`) at the points where OVMF has finished a write: after each block erase,
//! when a read-array command follows programming (OVMF ends every buffer it programs with
//! 0xFF), on [`CfiFlash::flush`] and on drop. Syncing after each programmed byte would cost a
//! disk flush per byte (OVMF programs ~16 KB on a first boot).
//!
//! [`CfiFlash::open`] takes an exclusive `flock` on the image for the device's lifetime, so a
//! second vfiovm given the same VARS file fails with [`FlashError::Locked`] instead of both
//! writing it. (QEMU locks its images with OFD byte-range locks, which `flock` does not see.)

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::bus::BusDevice;

/// Host pages, for the array's alignment (a memory slot maps whole pages).
const PAGE: usize = 4096;

/// Maps the flash's array read-only into the guest at the flash's own address, and removes the
/// mapping again. A KVM VMM implements it with a `KVM_MEM_READONLY` memory slot.
pub trait ArrayMapping: Send {
    /// Maps `len` bytes of host memory at `host` (page aligned, `len` a multiple of 4 KiB)
    /// read-only at the flash's guest address; guest reads there no longer reach the device.
    ///
    /// # Safety
    ///
    /// The caller keeps `host..host + len` allocated until [`ArrayMapping::unmap`] has returned
    /// `Ok`.
    unsafe fn map(&mut self, host: *const u8, len: usize) -> Result<(), String>;
    /// Removes the mapping made by `map`; guest reads reach the device again.
    fn unmap(&mut self) -> Result<(), String>;
}

/// The array: page-aligned bytes at an address that never changes (the buffer is never
/// resized), so it can back a memory slot.
struct Array {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Array {
    fn new(data: &[u8]) -> Self {
        let len = data.len();
        let mut buf = vec![0u8; len + PAGE];
        let start = (PAGE - (buf.as_ptr() as usize) % PAGE) % PAGE;
        buf[start..start + len].copy_from_slice(data);
        Array { buf, start, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Erase block size of OVMF's variable store on x86 (`PcdOvmfFirmwareBlockSize`).
pub const FLASH_BLOCK_SIZE: u64 = 0x1000;
/// Size of Debian's `OVMF_VARS_4M.fd` (and its `.ms`/`.snakeoil` variants).
pub const OVMF_VARS_4M_LEN: u64 = 540_672;
/// Size of Debian's 2M `OVMF_VARS.fd`.
pub const OVMF_VARS_2M_LEN: u64 = 131_072;
/// Guest address of the 4M build's VARS.
pub const OVMF_VARS_4M_BASE: u64 = 0xffc0_0000;
/// Guest address of the 2M build's VARS.
pub const OVMF_VARS_2M_BASE: u64 = 0xffe0_0000;

/// Commands.
const CMD_PROGRAM: u8 = 0x10;
const CMD_ERASE_SETUP: u8 = 0x20;
const CMD_PROGRAM_ALT: u8 = 0x40;
const CMD_CLEAR_STATUS: u8 = 0x50;
const CMD_READ_STATUS: u8 = 0x70;
const CMD_QUERY: u8 = 0x98;
const CMD_ERASE_CONFIRM: u8 = 0xd0;
const CMD_AMD_RESET: u8 = 0xf0;
const CMD_READ_ARRAY: u8 = 0xff;

/// Status register bits.
const STATUS_READY: u8 = 0x80;
const STATUS_ERASE_ERROR: u8 = 0x20;
const STATUS_PROGRAM_ERROR: u8 = 0x10;

/// Where the CFI query structure starts.
const QUERY_START: usize = 0x10;
/// Primary command set: Intel/Sharp extended.
const QUERY_CMD_SET_INTEL: u16 = 0x0001;

/// Errors opening a flash image.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// The file does not exist.
    #[error(
        "flash image {path} does not exist: copy the VARS template that matches the firmware \
         (cp /usr/share/OVMF/OVMF_VARS_4M.fd {path}) and give the copy"
    )]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The file's size differs from the one asked for.
    #[error(
        "flash image {path} has {actual} bytes, {expected} expected: the VARS file must match \
         the firmware build (540672 bytes for OVMF_VARS_4M.fd with OVMF_CODE_4M.fd, 131072 for \
         the 2M OVMF_VARS.fd with OVMF_CODE.fd)"
    )]
    WrongSize {
        /// The path.
        path: PathBuf,
        /// Its size.
        actual: u64,
        /// The size asked for.
        expected: u64,
    },
    /// The file cannot be opened for writing.
    #[error(
        "flash image {path} is read-only: the firmware writes its variables there; make it \
         writable (chmod u+w {path}) or use a writable copy (cp /usr/share/OVMF/OVMF_VARS_4M.fd \
         <dir>/)"
    )]
    ReadOnly {
        /// The path.
        path: PathBuf,
    },
    /// Another process (or another open of the file) holds the image's lock.
    #[error(
        "flash image {path} is in use by another VM (it holds a lock on the file): give each VM \
         its own copy of the VARS file"
    )]
    Locked {
        /// The path.
        path: PathBuf,
    },
    /// A length that is zero or not a multiple of the 4 KiB block size.
    #[error("flash size {len} is invalid: it must be a non-zero multiple of 4096 bytes")]
    InvalidLength {
        /// The length.
        len: u64,
    },
    /// Another I/O error.
    #[error("cannot {op} flash image {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What reads return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadArray,
    Status,
    Query,
    /// 0x10/0x40 seen: the next write is data.
    Program,
    /// 0x20 seen: the next write confirms or cancels.
    EraseSetup,
}

/// The backing file.
#[derive(Debug)]
struct Backing {
    file: File,
    path: PathBuf,
    /// Written since the last sync.
    dirty: bool,
}

/// The flash device.
pub struct CfiFlash {
    data: Array,
    backing: Option<Backing>,
    /// The read-only guest mapping of the array, and whether it is in place now.
    mapping: Option<(Box<dyn ArrayMapping>, bool)>,
    mode: Mode,
    status: u8,
    query: Vec<u8>,
    warned: bool,
}

impl std::fmt::Debug for CfiFlash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CfiFlash")
            .field("len", &self.data.len)
            .field("backing", &self.backing.as_ref().map(|b| &b.path))
            .field("mode", &self.mode)
            .field("status", &self.status)
            .field("array_mapped", &self.array_mapped())
            .finish_non_exhaustive()
    }
}

fn check_len(len: u64) -> Result<(), FlashError> {
    if len == 0 || len % FLASH_BLOCK_SIZE != 0 {
        return Err(FlashError::InvalidLength { len });
    }
    Ok(())
}

/// Takes an exclusive advisory lock (`flock`) on the image, so a second VM opening it fails
/// instead of both writing it. The lock goes with the file's last descriptor.
fn lock_exclusive(file: &File) -> std::io::Result<()> {
    // SAFETY: flock takes a descriptor and flags by value and touches no memory; `file` owns the
    // descriptor and outlives the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CFI query structure for a flash of `len` bytes in 4 KiB blocks (JEDEC JESD68 layout,
/// x8 addressing: byte `i` of the structure at offset `i`).
fn query_table(len: u64) -> Vec<u8> {
    let mut q = vec![0u8; 0x31];
    q[QUERY_START..QUERY_START + 3].copy_from_slice(b"QRY");
    q[0x13..0x15].copy_from_slice(&QUERY_CMD_SET_INTEL.to_le_bytes());
    // No extended or alternate tables (0x15–0x1A stay 0). Vcc 2.7–3.6 V, no Vpp.
    q[0x1b] = 0x27;
    q[0x1c] = 0x36;
    // Typical timeouts: byte program 2^4 µs, block erase 2^7 ms; maximum 2^4 times those.
    q[0x1f] = 4;
    q[0x21] = 7;
    q[0x23] = 4;
    q[0x25] = 4;
    // Device size as 2^n bytes, rounded up (the VARS sizes are not powers of two; the erase
    // region below gives the exact size).
    q[0x27] = len.next_power_of_two().trailing_zeros() as u8;
    // Interface x8 (0x28–0x29 = 0), no write buffer (0x2A–0x2B = 0), one erase region of
    // `blocks` blocks of 4 KiB.
    q[0x2c] = 1;
    let blocks = (len / FLASH_BLOCK_SIZE).saturating_sub(1).min(0xffff) as u16;
    q[0x2d..0x2f].copy_from_slice(&blocks.to_le_bytes());
    q[0x2f..0x31].copy_from_slice(&((FLASH_BLOCK_SIZE / 256) as u16).to_le_bytes());
    q
}

impl CfiFlash {
    /// A flash over `data`, kept in memory only (lost when dropped). The length must be a
    /// non-zero multiple of 4 KiB.
    pub fn new(data: Vec<u8>) -> Result<Self, FlashError> {
        check_len(data.len() as u64)?;
        Ok(Self::with(data, None))
    }

    fn with(data: Vec<u8>, backing: Option<Backing>) -> Self {
        let query = query_table(data.len() as u64);
        CfiFlash {
            data: Array::new(&data),
            backing,
            mapping: None,
            mode: Mode::ReadArray,
            status: STATUS_READY,
            query,
            warned: false,
        }
    }

    /// A flash backed by the file at `path`, which must be writable and exactly
    /// `expected_len` bytes ([`OVMF_VARS_4M_LEN`] or [`OVMF_VARS_2M_LEN`] for Debian's OVMF).
    /// The guest's programs and erases are written to it.
    pub fn open(path: impl AsRef<Path>, expected_len: u64) -> Result<Self, FlashError> {
        let path = path.as_ref().to_path_buf();
        check_len(expected_len)?;
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(FlashError::Missing { path }),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                return Err(FlashError::ReadOnly { path })
            }
            Err(source) => {
                return Err(FlashError::Io {
                    op: "open",
                    path,
                    source,
                })
            }
        };
        let io = |op, source| FlashError::Io {
            op,
            path: path.clone(),
            source,
        };
        match lock_exclusive(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                return Err(FlashError::Locked { path });
            }
            // A file system without flock (some network file systems): go on unlocked.
            Err(e) => log::warn!("flash: cannot lock {}: {e}", path.display()),
        }
        let meta = file.metadata().map_err(|e| io("stat", e))?;
        if !meta.is_file() {
            return Err(io(
                "use",
                std::io::Error::new(ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        if meta.len() != expected_len {
            return Err(FlashError::WrongSize {
                path,
                actual: meta.len(),
                expected: expected_len,
            });
        }
        let mut data = vec![0u8; expected_len as usize];
        file.read_exact_at(&mut data, 0)
            .map_err(|e| io("read", e))?;
        Ok(Self::with(
            data,
            Some(Backing {
                file,
                path,
                dirty: false,
            }),
        ))
    }

    /// Length in bytes (the MMIO range to map).
    pub fn len(&self) -> u64 {
        self.data.len as u64
    }

    /// Whether the flash has no bytes (never: constructors refuse that).
    pub fn is_empty(&self) -> bool {
        self.data.len == 0
    }

    /// The array's contents.
    pub fn data(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Maps the array into the guest through `mapping` whenever the flash is in read-array mode
    /// (now, if it is), so reads there cost no exit. A mapping that fails leaves the reads
    /// trapping (logged once): slower, not wrong.
    pub fn set_array_mapping(&mut self, mapping: Box<dyn ArrayMapping>) {
        if !self.remove_mapping() {
            self.warn_once(format_args!(
                "cannot unmap the array to change its mapping; the old one stays"
            ));
            return;
        }
        self.mapping = Some((mapping, false));
        self.update_mapping();
    }

    /// Whether the array is mapped into the guest now.
    pub fn array_mapped(&self) -> bool {
        matches!(self.mapping, Some((_, true)))
    }

    /// Puts the mapping in the state the mode asks for: in place exactly in read-array mode.
    fn update_mapping(&mut self) {
        let want = self.mode == Mode::ReadArray;
        let host = self.data.bytes().as_ptr();
        let len = self.data.len;
        let Some((m, mapped)) = self.mapping.as_mut() else {
            return;
        };
        if *mapped == want {
            return;
        }
        let r = if want {
            // SAFETY: the array's buffer is never resized or freed while mapped: every path that
            // drops or replaces the mapping unmaps it first, and Drop leaks the buffer if that
            // fails.
            unsafe { m.map(host, len) }
        } else {
            m.unmap()
        };
        match r {
            Ok(()) => *mapped = want,
            Err(e) => {
                let what = if want { "mapping" } else { "unmapping" };
                self.warn_once(format_args!("{what} the array read-only failed: {e}"));
            }
        }
    }

    /// Unmaps the array (if mapped) and forgets the mapping; false if the unmap failed, and
    /// then the mapping is kept (the array must not be freed or moved under it).
    fn remove_mapping(&mut self) -> bool {
        if let Some((m, mapped)) = self.mapping.as_mut() {
            if *mapped && m.unmap().is_err() {
                return false;
            }
        }
        self.mapping = None;
        true
    }

    fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
        self.update_mapping();
    }

    /// Puts the device in its power-on state (a guest reset that keeps the VM): read-array
    /// mode, status ready, the backing file synced. The array keeps its contents.
    pub fn reset(&mut self) {
        self.sync();
        self.status = STATUS_READY;
        self.set_mode(Mode::ReadArray);
    }

    /// Syncs what was written to the backing file to disk (nothing without a file).
    pub fn flush(&mut self) -> Result<(), FlashError> {
        let Some(b) = self.backing.as_mut() else {
            return Ok(());
        };
        if b.dirty {
            b.file.sync_data().map_err(|source| FlashError::Io {
                op: "sync",
                path: b.path.clone(),
                source,
            })?;
            b.dirty = false;
        }
        Ok(())
    }

    fn warn_once(&mut self, what: std::fmt::Arguments<'_>) {
        if !std::mem::replace(&mut self.warned, true) {
            log::warn!("flash: {what} (further flash warnings are not logged)");
        }
    }

    /// Writes `[start, start + len)` of the array to the backing file; false on failure.
    fn persist(&mut self, start: usize, len: usize) -> bool {
        let Some(b) = self.backing.as_mut() else {
            return true;
        };
        match b
            .file
            .write_all_at(&self.data.bytes()[start..start + len], start as u64)
        {
            Ok(()) => {
                b.dirty = true;
                true
            }
            Err(e) => {
                let path = b.path.display().to_string();
                self.warn_once(format_args!("writing {path} failed: {e}"));
                false
            }
        }
    }

    fn sync(&mut self) {
        if let Err(e) = self.flush() {
            self.warn_once(format_args!("{e}"));
            self.status |= STATUS_PROGRAM_ERROR;
        }
    }

    fn program(&mut self, offset: u64, bytes: &[u8]) {
        let start = offset as usize;
        let Some(dst) = start
            .checked_add(bytes.len())
            .and_then(|end| self.data.bytes_mut().get_mut(start..end))
        else {
            self.status |= STATUS_PROGRAM_ERROR | STATUS_READY;
            return;
        };
        dst.copy_from_slice(bytes);
        if !self.persist(start, bytes.len()) {
            self.status |= STATUS_PROGRAM_ERROR;
        }
        self.status |= STATUS_READY;
    }

    fn erase(&mut self, offset: u64) {
        let start = (offset & !(FLASH_BLOCK_SIZE - 1)) as usize;
        let len = FLASH_BLOCK_SIZE as usize;
        let Some(block) = start
            .checked_add(len)
            .and_then(|end| self.data.bytes_mut().get_mut(start..end))
        else {
            self.status |= STATUS_ERASE_ERROR | STATUS_READY;
            return;
        };
        block.fill(0xff);
        if !self.persist(start, len) {
            self.status |= STATUS_ERASE_ERROR;
        }
        self.sync();
        self.status |= STATUS_READY;
    }

    fn command(&mut self, cmd: u8) {
        let mode = match cmd {
            CMD_READ_ARRAY | CMD_AMD_RESET => {
                self.sync();
                Mode::ReadArray
            }
            CMD_READ_STATUS => Mode::Status,
            CMD_CLEAR_STATUS => {
                self.status = 0;
                Mode::ReadArray
            }
            CMD_PROGRAM | CMD_PROGRAM_ALT => Mode::Program,
            CMD_ERASE_SETUP => Mode::EraseSetup,
            CMD_QUERY => Mode::Query,
            _ => {
                self.warn_once(format_args!(
                    "unknown command {cmd:#04x}; back to read array"
                ));
                Mode::ReadArray
            }
        };
        self.set_mode(mode);
    }
}

impl Drop for CfiFlash {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::warn!("flash: {e}");
        }
        if !self.remove_mapping() {
            // The guest may still map the array: never free it.
            log::warn!("flash: cannot unmap the array from the guest; its memory is kept");
            std::mem::forget(std::mem::take(&mut self.data.buf));
        }
    }
}

impl BusDevice for CfiFlash {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match self.mode {
            Mode::ReadArray => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = offset
                        .checked_add(i as u64)
                        .and_then(|o| self.data.bytes().get(usize::try_from(o).ok()?))
                        .copied()
                        .unwrap_or(0xff);
                }
            }
            Mode::Status | Mode::Program | Mode::EraseSetup => data.fill(self.status),
            Mode::Query => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = offset
                        .checked_add(i as u64)
                        .and_then(|o| self.query.get(usize::try_from(o).ok()?))
                        .copied()
                        .unwrap_or(0);
                }
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&cmd) = data.first() else {
            return;
        };
        match self.mode {
            Mode::Program => {
                self.program(offset, data);
                self.set_mode(Mode::Status);
            }
            Mode::EraseSetup => match cmd {
                CMD_ERASE_CONFIRM => {
                    self.erase(offset);
                    self.set_mode(Mode::Status);
                }
                CMD_READ_ARRAY => self.set_mode(Mode::ReadArray),
                _ => {
                    self.status |= STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR;
                    self.set_mode(Mode::Status);
                }
            },
            _ => self.command(cmd),
        }
    }
}
