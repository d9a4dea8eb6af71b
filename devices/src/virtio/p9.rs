//! virtio-9p (device type 9): a host directory shared into the guest over 9P2000.L, served in
//! process by the `p9` crate (crosvm's 9P2000.L server) behind this module's checks. No helper
//! daemon, no FUSE, no vhost-user socket. In a Linux guest:
//! `mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt`.
//!
//! # Register map
//!
//! One request queue of [`QUEUE_SIZE`] entries. Feature offered: [`VIRTIO_9P_MOUNT_TAG`]
//! (bit 0). Device configuration, read-only (driver writes are dropped), little-endian:
//!
//! | Offset | Field | Value |
//! |---|---|---|
//! | 0x00 | tag_len (u16) | length of the tag in bytes (1..=[`MAX_TAG_LEN`]) |
//! | 0x02 | tag (tag_len bytes, no NUL) | the mount tag, e.g. `share0` |
//!
//! # Requests
//!
//! Each chain carries one 9P T-message in its device-readable part and gets the R-message in
//! its device-writable part; the used length is the R-message's size. The whole exchange is
//! synchronous on the device's I/O thread, one chain at a time (so `Tflush` has nothing to
//! cancel). A chain whose writable part cannot hold an `Rlerror` (11 bytes), or whose readable
//! part holds no 9P header, is completed with used length 0 and nothing is done for it. A
//! malformed message (a size field that disagrees with the chain, a field running past the
//! end) gets `Rlerror(EINVAL)`; an R-message that would not fit the writable part gets
//! `Rlerror(EMSGSIZE)`, and a message whose fixed-size reply would not fit is refused that way
//! before it runs. `Tread` and `Treaddir` counts are cut to what the writable part holds.
//!
//! # msize
//!
//! The server accepts up to [`MAX_MSIZE`] bytes per message: 500 KiB, the largest msize Linux's
//! 9pnet_virtio transport ever negotiates (`PAGE_SIZE * (VIRTQUEUE_NUM - 3)` with 4 KiB pages
//! and its 128-entry scatter list). A guest mounting with the default (128 KiB since Linux
//! 5.15) gets what it asks for, and one mounting with `msize=512000` is not cut down; the
//! buffers the server allocates per message never exceed it.
//!
//! # What reaches the `p9` server (docs/security.md)
//!
//! Every T-message is parsed here first (the same wire layout `p9` decodes, checked to the
//! byte) and refused with an `Rlerror` built here when it breaks a rule:
//!
//! - Names: a walk element or a name to create, link, rename or unlink that is empty, `.`,
//!   `..` or contains `/` is refused with `EPERM`: `p9` hands names straight to `openat`,
//!   `mkdirat`, `unlinkat`…, where `..` leaves the shared directory and `a/b` follows a
//!   symbolic link `a` out of it. A walk of more than 16 names (9P's limit) gets `EINVAL`.
//! - Read-only shares (`read_only`): `Twrite`, `Tremove`, `Tlcreate`, `Tsymlink`, `Tmknod`,
//!   `Trename`, `Trenameat`, `Tsetattr`, `Txattrcreate`, `Tlink`, `Tmkdir`, `Tunlinkat`, and
//!   `Tlopen` for writing (`O_WRONLY`, `O_RDWR`, access mode 3, `O_TRUNC`, `O_APPEND`,
//!   `O_CREAT`) get `EROFS`.
//! - Writable shares: `Tmknod` of a character or block device gets `EPERM`; the set-user-ID
//!   and set-group-ID bits are cleared from the modes of `Tlcreate`, `Tmkdir`, `Tmknod` and
//!   `Tsetattr`; `Tsetattr` changing the owner to a user or group other than the VMM's own
//!   (effective IDs) gets `EPERM`. A VMM running as root must not let a guest plant a
//!   set-user-ID root program on the host.
//! - `Tlopen` always opens with `O_NONBLOCK`: a FIFO in the shared directory cannot block the
//!   I/O thread (and with it device reset and VMM shutdown).
//! - At most [`MAX_FIDS`] fids at once (each holds host descriptors): `Tattach` or `Twalk` to a
//!   new fid beyond that gets `EMFILE`.
//! - Message types the server does not know (9P2000 and 9P2000.u ones included) get
//!   `EOPNOTSUPP`.
//!
//! What `p9` does itself: every file it opens by name is opened relative to a directory
//! descriptor with `O_NOFOLLOW` (a walk to a symbolic link yields the link, never its target,
//! and nothing can be walked from it); it opens an fid's file again through
//! `/proc/self/fd/N`, which reaches the link itself and fails with `ELOOP`; it refuses
//! `Tsymlink` and `Tmknod` (`EACCES`), `Trename` and `Tremove` (`EOPNOTSUPP`) and extended
//! attributes. Files are created and accessed with the VMM's own user and group IDs: the
//! uid, gid and names in `Tattach`, `Tlcreate` and `Tmkdir` are not used.
//!
//! # Threads and system calls
//!
//! The `p9` server is made on the I/O thread when the first message arrives (it opens
//! `/proc`), not when the driver sets DRIVER_OK: that happens on a vCPU thread, whose seccomp
//! filter allows no `openat`. The I/O thread's calls besides every device's: `openat`,
//! `newfstatat`, `fstat`, `fstatfs`, `readlinkat`, `getdents64`, `lseek`, `pread64`,
//! `pwrite64`, `ftruncate`, `fsync`, `fdatasync`, `fchmodat`, `fchownat`, `utimensat`,
//! `mkdirat`, `renameat`, `unlinkat`, `linkat`, `fcntl(F_DUPFD_CLOEXEC)`, `geteuid`,
//! `getegid`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{
    read_config_bytes, Chain, Completion, QueueHandler, VirtioDevice, VirtioError, VIRTIO_TYPE_9P,
};

/// Feature bit: the device configuration holds a mount tag.
pub const VIRTIO_9P_MOUNT_TAG: u64 = 1 << 0;
/// Size of the request queue (Linux's 9pnet_virtio uses up to 128 descriptors per request).
pub const QUEUE_SIZE: u16 = 128;
/// The largest 9P message (T or R) the server negotiates and accepts: 500 KiB, the most Linux's
/// 9pnet_virtio asks for (its transport maximum, `PAGE_SIZE * (VIRTQUEUE_NUM - 3)`), so a
/// guest's `msize=` mount option is never cut down; its default (128 KiB) is granted as asked.
pub const MAX_MSIZE: u32 = 512_000;
/// The longest mount tag.
pub const MAX_TAG_LEN: usize = 255;
/// Most fids a guest may hold at once.
pub const MAX_FIDS: usize = 16_384;
/// Most names in one `Twalk` (9P's `MAXWELEM`).
pub const MAX_WALK_NAMES: usize = 16;

/// size[4] type[1] tag[2]
const HEADER_LEN: usize = 7;
/// `Rlerror`: header, then the errno as a u32.
pub const RLERROR_LEN: usize = HEADER_LEN + 4;
/// `Rread` and `Rreaddir` before their data: header, count[4].
const RDATA_HEADER_LEN: usize = HEADER_LEN + 4;
/// A qid: type[1] version[4] path[8].
const QID_LEN: usize = 13;

// Message types (9P2000.L, as Linux's include/net/9p/9p.h numbers them).
const RLERROR: u8 = 7;
const TSTATFS: u8 = 8;
const TLOPEN: u8 = 12;
const TLCREATE: u8 = 14;
const TSYMLINK: u8 = 16;
const TMKNOD: u8 = 18;
const TRENAME: u8 = 20;
const TREADLINK: u8 = 22;
const TGETATTR: u8 = 24;
const TSETATTR: u8 = 26;
const TXATTRWALK: u8 = 30;
const TXATTRCREATE: u8 = 32;
const TREADDIR: u8 = 40;
const TFSYNC: u8 = 50;
const TLOCK: u8 = 52;
const TGETLOCK: u8 = 54;
const TLINK: u8 = 70;
const TMKDIR: u8 = 72;
const TRENAMEAT: u8 = 74;
const TUNLINKAT: u8 = 76;
const TVERSION: u8 = 100;
const TAUTH: u8 = 102;
const TATTACH: u8 = 104;
const TFLUSH: u8 = 108;
const TWALK: u8 = 110;
const TREAD: u8 = 116;
const TWRITE: u8 = 118;
const TCLUNK: u8 = 120;
const TREMOVE: u8 = 122;

// Tlopen/Tlcreate flags (Linux's P9_DOTL_*, the same values as x86's O_*).
const P9_ACCMODE: u32 = 0o3;
const P9_CREATE: u32 = 0o100;
const P9_TRUNC: u32 = 0o1000;
const P9_APPEND: u32 = 0o2000;
const P9_NONBLOCK: u32 = 0o4000;

// Tsetattr `valid` bits.
const P9_SETATTR_MODE: u32 = 1 << 0;
const P9_SETATTR_UID: u32 = 1 << 1;
const P9_SETATTR_GID: u32 = 1 << 2;

/// The set-user-ID and set-group-ID mode bits, cleared from every mode a guest sets.
const SETID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;
/// An id of -1 in `Tsetattr`: "leave it".
const NO_ID: u32 = u32::MAX;

/// Errors making a [`Share`].
#[derive(Debug, thiserror::Error)]
pub enum P9Error {
    /// The mount tag is empty or too long.
    #[error("9p mount tag '{0}' must be 1 to {MAX_TAG_LEN} bytes long")]
    BadTag(String),
    /// The shared path cannot be resolved.
    #[error("shared directory {0}: {1}")]
    Path(PathBuf, #[source] std::io::Error),
    /// The shared path is not a directory.
    #[error("shared directory {0} is not a directory: give the directory to share")]
    NotADirectory(PathBuf),
}

/// The virtio-9p device: one host directory under one mount tag.
#[derive(Debug)]
pub struct Share {
    root: PathBuf,
    read_only: bool,
    /// The device configuration: tag_len, tag.
    config: Vec<u8>,
}

impl Share {
    /// Shares the directory `root` (resolved to its canonical path, which must be a directory)
    /// under `tag`; `read_only` refuses every change.
    pub fn new(root: &Path, tag: &str, read_only: bool) -> Result<Share, P9Error> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(P9Error::BadTag(tag.to_string()));
        }
        // `p9` opens the root with O_NOFOLLOW: a root that is itself a symbolic link would
        // be the link.
        let root = std::fs::canonicalize(root).map_err(|e| P9Error::Path(root.into(), e))?;
        let meta = std::fs::metadata(&root).map_err(|e| P9Error::Path(root.clone(), e))?;
        if !meta.is_dir() {
            return Err(P9Error::NotADirectory(root));
        }
        let mut config = (tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(tag.as_bytes());
        Ok(Share {
            root,
            read_only,
            config,
        })
    }

    /// The shared directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the share refuses changes.
    pub fn read_only(&self) -> bool {
        self.read_only
    }
}

impl VirtioDevice for Share {
    fn device_type(&self) -> u16 {
        VIRTIO_TYPE_9P
    }

    fn pci_class(&self) -> u32 {
        0x01_80_00 // mass storage controller, other
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_9P_MOUNT_TAG
    }

    fn config_len(&self) -> usize {
        self.config.len()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, _features: u64) -> Result<Box<dyn QueueHandler>, VirtioError> {
        // Each start gets a fresh server: no fid survives a reset.
        Ok(Box::new(Handler {
            server: ShareServer::new(&self.root, self.read_only),
            request: Vec::new(),
            reply: Vec::new(),
        }))
    }
}

struct Handler {
    server: ShareServer,
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Handler {
    /// Serves one chain; returns the used length.
    fn serve(&mut self, chain: &Chain<'_>) -> u32 {
        let room = chain.writable_len();
        let mut header = [0u8; HEADER_LEN];
        if room < RLERROR_LEN as u64 || !chain.read_at(0, &mut header) {
            return 0;
        }
        let room = room.min(u64::from(MAX_MSIZE)) as usize;
        let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let tag = u16::from_le_bytes([header[5], header[6]]);
        self.reply.clear();
        if size as usize >= HEADER_LEN
            && size <= MAX_MSIZE
            && u64::from(size) <= chain.readable_len()
        {
            self.request.resize(size as usize, 0);
            if !chain.read_at(0, &mut self.request) {
                return 0;
            }
            self.server.handle(&mut self.request, room, &mut self.reply);
        } else {
            rlerror(&mut self.reply, tag, libc::EINVAL);
        }
        if self.reply.len() > room || !chain.write_at(0, &self.reply) {
            return 0;
        }
        self.reply.len() as u32
    }
}

impl QueueHandler for Handler {
    fn process(&mut self, _queue: u16, chain: &mut Chain<'_>) -> Completion {
        Completion::Used(self.serve(chain))
    }
}

/// Appends `Rlerror(errno)` for `tag` to `out`.
fn rlerror(out: &mut Vec<u8>, tag: u16, errno: i32) {
    out.extend_from_slice(&(RLERROR_LEN as u32).to_le_bytes());
    out.push(RLERROR);
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(errno as u32).to_le_bytes());
}

/// The 9P server behind a [`Share`], without the queue: the checks of the module docs, then
/// the `p9` server. The device's I/O thread runs one per start of the device; tests and fuzz
/// targets drive it directly.
pub struct ShareServer {
    root: PathBuf,
    read_only: bool,
    /// Made at the first message, on the thread that serves (it opens `/proc`).
    server: Option<::p9::Server>,
    /// The fids the server holds (tracked from its replies).
    fids: BTreeSet<u32>,
    max_fids: usize,
}

impl std::fmt::Debug for ShareServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareServer")
            .field("root", &self.root)
            .field("read_only", &self.read_only)
            .field("started", &self.server.is_some())
            .field("fids", &self.fids.len())
            .finish()
    }
}

/// What a message does to the fid table, for tracking it from the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fids {
    Unchanged,
    /// `Tversion`: every fid is clunked when it succeeds.
    Clear,
    /// `Tattach` of this fid.
    Attach(u32),
    /// `Twalk` from `fid` to `newfid` over `names` names: `newfid` exists when all are walked.
    Walk {
        newfid: u32,
        names: usize,
    },
    /// `Tclunk` of this fid.
    Clunk(u32),
}

impl ShareServer {
    /// A server for `root` (canonical, a directory); nothing is opened until the first message.
    pub fn new(root: &Path, read_only: bool) -> Self {
        ShareServer {
            root: root.to_path_buf(),
            read_only,
            server: None,
            fids: BTreeSet::new(),
            max_fids: MAX_FIDS,
        }
    }

    /// The same with at most `n` fids instead of [`MAX_FIDS`].
    pub fn with_max_fids(mut self, n: usize) -> Self {
        self.max_fids = n;
        self
    }

    /// How many fids the guest holds.
    pub fn fids(&self) -> usize {
        self.fids.len()
    }

    /// Answers the T-message `msg` (its whole bytes, size field first) with an R-message of at
    /// most `room` bytes, appended to `reply` (left empty when `msg` has no 9P header or
    /// `room` cannot hold an `Rlerror`). `msg` may be rewritten (modes, counts, flags).
    pub fn handle(&mut self, msg: &mut [u8], room: usize, reply: &mut Vec<u8>) {
        if msg.len() < HEADER_LEN || room < RLERROR_LEN {
            return;
        }
        let start = reply.len();
        let tag = u16::from_le_bytes([msg[5], msg[6]]);
        let size = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
        if size as usize != msg.len() || size > MAX_MSIZE {
            return rlerror(reply, tag, libc::EINVAL);
        }
        let fids = match check(msg, self.read_only, room) {
            Ok(f) => f,
            Err(errno) => return rlerror(reply, tag, errno),
        };
        let new_fid = match fids {
            Fids::Attach(fid) => Some(fid),
            Fids::Walk { newfid, .. } => Some(newfid),
            _ => None,
        };
        if new_fid.is_some_and(|f| !self.fids.contains(&f)) && self.fids.len() >= self.max_fids {
            return rlerror(reply, tag, libc::EMFILE);
        }
        let server = match self.server.as_mut() {
            Some(s) => s,
            None => match ::p9::Server::with_config(::p9::Config {
                root: self.root.clone().into_boxed_path(),
                msize: MAX_MSIZE,
                uid_map: Default::default(),
                gid_map: Default::default(),
                ascii_casefold: false,
            }) {
                Ok(s) => self.server.insert(s),
                Err(e) => {
                    log::warn!("virtio-9p: cannot start the 9P server: {e}");
                    return rlerror(reply, tag, e.raw_os_error().unwrap_or(libc::EIO));
                }
            },
        };
        let mut input: &[u8] = msg;
        if server.handle_message(&mut input, reply).is_err() {
            reply.truncate(start);
            return rlerror(reply, tag, libc::EINVAL);
        }
        self.track(fids, &reply[start..]);
        if reply.len() - start > room {
            reply.truncate(start);
            rlerror(reply, tag, libc::EMSGSIZE);
        }
    }

    /// Updates the fid set from a reply to a message that changes it.
    fn track(&mut self, fids: Fids, reply: &[u8]) {
        let Some(&ty) = reply.get(4) else { return };
        if ty == RLERROR {
            return;
        }
        match fids {
            Fids::Unchanged => {}
            Fids::Clear => self.fids.clear(),
            Fids::Attach(fid) => {
                self.fids.insert(fid);
            }
            Fids::Walk { newfid, names } => {
                let walked = reply
                    .get(HEADER_LEN..HEADER_LEN + 2)
                    .map_or(0, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
                if walked == names {
                    self.fids.insert(newfid);
                }
            }
            Fids::Clunk(fid) => {
                self.fids.remove(&fid);
            }
        }
    }
}

/// A cursor over a T-message's fields after the header.
struct Fields<'a> {
    msg: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], i32> {
        let end = self.at.checked_add(n).ok_or(libc::EINVAL)?;
        let b = self.msg.get(self.at..end).ok_or(libc::EINVAL)?;
        self.at = end;
        Ok(b)
    }

    fn u16(&mut self) -> Result<u16, i32> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, i32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u32 and where it is, to be rewritten.
    fn u32_at(&mut self) -> Result<(u32, usize), i32> {
        let at = self.at;
        Ok((self.u32()?, at))
    }

    fn skip(&mut self, n: usize) -> Result<(), i32> {
        self.take(n).map(|_| ())
    }

    fn string(&mut self) -> Result<&'a [u8], i32> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    /// A name for one directory entry: refused when it could leave the directory.
    fn name(&mut self) -> Result<(), i32> {
        let s = self.string()?;
        if s.is_empty() || s == b"." || s == b".." || s.contains(&b'/') {
            return Err(libc::EPERM);
        }
        Ok(())
    }
}

fn put_u32(msg: &mut [u8], at: usize, v: u32) {
    msg[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// The VMM's effective user and group IDs.
fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid only returns the calling process's effective user ID; it cannot fail.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: likewise for the effective group ID.
    let gid = unsafe { libc::getegid() };
    (uid, gid)
}

/// The rules of the module docs for the T-message `msg` (whole, header checked): `Err(errno)`
/// to refuse it, else what it does to the fid table. Rewrites modes (set-ID bits cleared),
/// `Tlopen` flags (`O_NONBLOCK`) and `Tread`/`Treaddir` counts (cut to `room`) in place.
fn check(msg: &mut [u8], read_only: bool, room: usize) -> Result<Fids, i32> {
    let ty = msg[4];
    let mut f = Fields {
        msg: &msg[..],
        at: HEADER_LEN,
    };
    let modifies = matches!(
        ty,
        TWRITE
            | TREMOVE
            | TLCREATE
            | TSYMLINK
            | TMKNOD
            | TRENAME
            | TRENAMEAT
            | TSETATTR
            | TXATTRCREATE
            | TLINK
            | TMKDIR
            | TUNLINKAT
    );
    if modifies && read_only {
        return Err(libc::EROFS);
    }
    // The smallest room the success reply needs: refused before it runs if that is missing.
    let reply_len = match ty {
        TLOPEN | TLCREATE => HEADER_LEN + QID_LEN + 4,
        TATTACH | TMKDIR | TSYMLINK | TMKNOD => HEADER_LEN + QID_LEN,
        _ => RLERROR_LEN,
    };
    if room < reply_len {
        return Err(libc::EMSGSIZE);
    }
    // Rewrites, applied once the whole message is checked: (offset, new value).
    let mut rewrite: Option<(usize, u32)> = None;
    let fids = match ty {
        TVERSION => Fids::Clear,
        TFLUSH | TSTATFS | TREADLINK | TGETATTR | TFSYNC | TLOCK | TGETLOCK | TAUTH
        | TXATTRWALK | TWRITE | TREMOVE | TXATTRCREATE => Fids::Unchanged,
        TATTACH => Fids::Attach(f.u32()?),
        TCLUNK => Fids::Clunk(f.u32()?),
        TWALK => {
            let _fid = f.u32()?;
            let newfid = f.u32()?;
            let names = usize::from(f.u16()?);
            if names > MAX_WALK_NAMES {
                return Err(libc::EINVAL);
            }
            if room < HEADER_LEN + 2 + QID_LEN * names {
                return Err(libc::EMSGSIZE);
            }
            for _ in 0..names {
                f.name()?;
            }
            Fids::Walk { newfid, names }
        }
        TREAD | TREADDIR => {
            f.skip(4 + 8)?;
            let (count, at) = f.u32_at()?;
            let most = (room - RDATA_HEADER_LEN) as u32;
            if count > most {
                rewrite = Some((at, most));
            }
            Fids::Unchanged
        }
        TLOPEN => {
            f.skip(4)?;
            let (flags, at) = f.u32_at()?;
            let writes = flags & P9_ACCMODE != 0 || flags & (P9_TRUNC | P9_APPEND | P9_CREATE) != 0;
            if read_only && writes {
                return Err(libc::EROFS);
            }
            rewrite = Some((at, flags | P9_NONBLOCK));
            Fids::Unchanged
        }
        TLCREATE => {
            f.skip(4)?;
            f.name()?;
            f.skip(4)?; // flags
            let (mode, at) = f.u32_at()?;
            rewrite = Some((at, mode & !SETID_BITS));
            Fids::Unchanged
        }
        TMKDIR => {
            f.skip(4)?;
            f.name()?;
            let (mode, at) = f.u32_at()?;
            rewrite = Some((at, mode & !SETID_BITS));
            Fids::Unchanged
        }
        TMKNOD => {
            f.skip(4)?;
            f.name()?;
            let (mode, at) = f.u32_at()?;
            let kind = mode & libc::S_IFMT;
            if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
                return Err(libc::EPERM);
            }
            rewrite = Some((at, mode & !SETID_BITS));
            Fids::Unchanged
        }
        TSYMLINK => {
            f.skip(4)?;
            f.name()?;
            Fids::Unchanged
        }
        TRENAME | TLINK => {
            f.skip(4 + 4)?;
            f.name()?;
            Fids::Unchanged
        }
        TRENAMEAT => {
            f.skip(4)?;
            f.name()?;
            f.skip(4)?;
            f.name()?;
            Fids::Unchanged
        }
        TUNLINKAT => {
            f.skip(4)?;
            f.name()?;
            Fids::Unchanged
        }
        TSETATTR => {
            f.skip(4)?;
            let valid = f.u32()?;
            let (mode, at) = f.u32_at()?;
            let uid = f.u32()?;
            let gid = f.u32()?;
            if valid & (P9_SETATTR_UID | P9_SETATTR_GID) != 0 {
                let (own_uid, own_gid) = effective_ids();
                let uid_ok = valid & P9_SETATTR_UID == 0 || uid == NO_ID || uid == own_uid;
                let gid_ok = valid & P9_SETATTR_GID == 0 || gid == NO_ID || gid == own_gid;
                if !uid_ok || !gid_ok {
                    return Err(libc::EPERM);
                }
            }
            if valid & P9_SETATTR_MODE != 0 {
                rewrite = Some((at, mode & !SETID_BITS));
            }
            Fids::Unchanged
        }
        _ => return Err(libc::EOPNOTSUPP),
    };
    if let Some((at, v)) = rewrite {
        put_u32(msg, at, v);
    }
    Ok(fids)
}
