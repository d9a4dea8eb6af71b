//! virtio-9p through the transport, on a real host directory: 9P messages built by hand (the
//! 9P2000.L wire format), written into guest RAM, served by the device's I/O thread.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::virtio::p9::{Share, ShareServer, MAX_MSIZE, QUEUE_SIZE, VIRTIO_9P_MOUNT_TAG};

// Message types.
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
const TXATTRCREATE: u8 = 32;
const TREADDIR: u8 = 40;
const TLINK: u8 = 70;
const TMKDIR: u8 = 72;
const TRENAMEAT: u8 = 74;
const TUNLINKAT: u8 = 76;
const TVERSION: u8 = 100;
const TATTACH: u8 = 104;
const TWALK: u8 = 110;
const TREAD: u8 = 116;
const TWRITE: u8 = 118;
const TCLUNK: u8 = 120;
const TREMOVE: u8 = 122;

const O_RDONLY: u32 = 0;
const O_WRONLY: u32 = 1;
const O_RDWR: u32 = 2;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const O_APPEND: u32 = 0o2000;
const O_DIRECTORY: u32 = 0o200000;

const SETATTR_MODE: u32 = 1;
const SETATTR_UID: u32 = 2;
const SETATTR_GID: u32 = 4;
const SETATTR_SIZE: u32 = 8;

const ROOT: u32 = 1;
/// Guest addresses of the request and the reply.
const REQ: u64 = 0x20_0000;
const REPLY: u64 = 0x28_0000;

/// A T-message: type, tag 1, and its fields.
struct T(Vec<u8>);

impl T {
    fn new(ty: u8) -> Self {
        let mut v = vec![0, 0, 0, 0, ty];
        v.extend_from_slice(&1u16.to_le_bytes());
        T(v)
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn s(mut self, v: &str) -> Self {
        self.0.extend_from_slice(&(v.len() as u16).to_le_bytes());
        self.0.extend_from_slice(v.as_bytes());
        self
    }
    fn data(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
        self
    }
    /// The message with its size field set.
    fn done(mut self) -> Vec<u8> {
        let n = self.0.len() as u32;
        self.0[..4].copy_from_slice(&n.to_le_bytes());
        self.0
    }
}

fn version(msize: u32) -> Vec<u8> {
    T::new(TVERSION).u32(msize).s("9P2000.L").done()
}
fn attach(fid: u32) -> Vec<u8> {
    T::new(TATTACH)
        .u32(fid)
        .u32(!0)
        .s("root")
        .s("")
        .u32(0)
        .done()
}
fn walk(fid: u32, newfid: u32, names: &[&str]) -> Vec<u8> {
    let mut t = T::new(TWALK).u32(fid).u32(newfid).u16(names.len() as u16);
    for n in names {
        t = t.s(n);
    }
    t.done()
}
fn lopen(fid: u32, flags: u32) -> Vec<u8> {
    T::new(TLOPEN).u32(fid).u32(flags).done()
}
fn read(fid: u32, offset: u64, count: u32) -> Vec<u8> {
    T::new(TREAD).u32(fid).u64(offset).u32(count).done()
}
fn lcreate(fid: u32, name: &str, flags: u32, mode: u32) -> Vec<u8> {
    T::new(TLCREATE)
        .u32(fid)
        .s(name)
        .u32(flags)
        .u32(mode)
        .u32(0)
        .done()
}
fn mkdir(dfid: u32, name: &str, mode: u32) -> Vec<u8> {
    T::new(TMKDIR).u32(dfid).s(name).u32(mode).u32(0).done()
}
fn setattr(fid: u32, valid: u32, mode: u32, uid: u32, gid: u32, size: u64) -> Vec<u8> {
    T::new(TSETATTR)
        .u32(fid)
        .u32(valid)
        .u32(mode)
        .u32(uid)
        .u32(gid)
        .u64(size)
        .u64(0)
        .u64(0)
        .u64(0)
        .u64(0)
        .done()
}
fn unlinkat(dfid: u32, name: &str) -> Vec<u8> {
    T::new(TUNLINKAT).u32(dfid).s(name).u32(0).done()
}
fn renameat(old: u32, oldname: &str, new: u32, newname: &str) -> Vec<u8> {
    T::new(TRENAMEAT)
        .u32(old)
        .s(oldname)
        .u32(new)
        .s(newname)
        .done()
}
fn mknod(dfid: u32, name: &str, mode: u32) -> Vec<u8> {
    T::new(TMKNOD)
        .u32(dfid)
        .s(name)
        .u32(mode)
        .u32(1)
        .u32(3)
        .u32(0)
        .done()
}

/// The reply's type.
fn ty(r: &[u8]) -> u8 {
    assert!(r.len() >= 7, "no 9P header in {r:?}");
    assert_eq!(
        u32::from_le_bytes(r[..4].try_into().unwrap()) as usize,
        r.len(),
        "size field"
    );
    r[4]
}

/// The errno of an `Rlerror`, `None` for any other reply.
fn lerror(r: &[u8]) -> Option<i32> {
    (ty(r) == RLERROR).then(|| u32::from_le_bytes(r[7..11].try_into().unwrap()) as i32)
}

/// Asserts the reply is the success R-message of `t` (type + 1).
fn ok(r: &[u8], t: u8) {
    assert_eq!(lerror(r), None, "T{t} failed");
    assert_eq!(ty(r), t + 1);
}

/// A shared directory and what lies beside it, removed on drop:
/// `share/{hello.txt, sub/inner.txt, link_out -> ../secret.txt, link_dir -> ../outside}`,
/// `secret.txt`, `outside/x.txt`.
struct Tree(PathBuf);

impl Tree {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir().join(format!(
            "vfiovm-p9-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("share/sub")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("share/hello.txt"), b"hello from the host\n").unwrap();
        std::fs::write(base.join("share/sub/inner.txt"), b"inner").unwrap();
        std::fs::write(base.join("secret.txt"), b"secret").unwrap();
        std::fs::set_permissions(
            base.join("secret.txt"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(base.join("outside/x.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("../secret.txt", base.join("share/link_out")).unwrap();
        std::os::unix::fs::symlink(base.join("outside"), base.join("share/link_dir")).unwrap();
        Tree(base)
    }

    fn share(&self) -> PathBuf {
        self.0.join("share")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn mode(&self, rel: &str) -> u32 {
        std::fs::symlink_metadata(self.path(rel)).unwrap().mode()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn up(root: &Path, read_only: bool) -> Driver {
    let dev = Share::new(root, "hostshare", read_only).unwrap();
    let mut d = Driver::new(Box::new(dev));
    d.bring_up(VIRTIO_9P_MOUNT_TAG, &[16]);
    d
}

impl Driver {
    /// One chain: `readable` as `(offset into the message, len)` pieces, then writable pieces
    /// of the given sizes; returns the used length and the reply.
    fn p9_chain(&mut self, msg: &[u8], readable: &[usize], writable: &[u32]) -> (u32, Vec<u8>) {
        self.mem.write_slice(msg, GuestAddress(REQ)).unwrap();
        let mut bufs = Vec::new();
        let mut at = 0u64;
        for &n in readable {
            bufs.push((REQ + at, n as u32, false));
            at += n as u64;
        }
        let mut out = 0u64;
        for &n in writable {
            // A gap between the writable pieces: the reply is one stream over them.
            bufs.push((REPLY + out, n, true));
            out += u64::from(n) + 64;
        }
        self.queues[0].add(&self.mem, &bufs);
        self.notify(0);
        let (_, used) = self.queues[0].wait_used(&self.mem);
        let mut reply = Vec::new();
        let mut left = used as usize;
        let mut out = 0u64;
        for &n in writable {
            let take = left.min(n as usize);
            let mut b = vec![0u8; take];
            self.mem
                .read_slice(&mut b, GuestAddress(REPLY + out))
                .unwrap();
            reply.extend_from_slice(&b);
            left -= take;
            out += u64::from(n) + 64;
        }
        (used, reply)
    }

    /// `msg` in one readable buffer, the reply in one writable buffer of `room` bytes.
    fn rpc_room(&mut self, msg: &[u8], room: u32) -> Vec<u8> {
        let (used, reply) = self.p9_chain(msg, &[msg.len()], &[room]);
        assert_eq!(used as usize, reply.len());
        reply
    }

    fn rpc(&mut self, msg: &[u8]) -> Vec<u8> {
        self.rpc_room(msg, 8192)
    }

    /// Tversion, then Tattach of [`ROOT`].
    fn attach_root(&mut self) {
        ok(&self.rpc(&version(8192)), TVERSION);
        ok(&self.rpc(&attach(ROOT)), TATTACH);
    }
}

/// The data of an `Rread` or `Rreaddir`.
fn data(r: &[u8]) -> &[u8] {
    let n = u32::from_le_bytes(r[7..11].try_into().unwrap()) as usize;
    &r[11..11 + n]
}

/// The names in an `Rreaddir`'s data.
fn dirents(mut d: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while !d.is_empty() {
        // qid[13] offset[8] type[1] name[s]
        let n = u16::from_le_bytes([d[22], d[23]]) as usize;
        names.push(String::from_utf8(d[24..24 + n].to_vec()).unwrap());
        d = &d[24 + n..];
    }
    names.sort();
    names
}

#[test]
fn identity_features_and_the_tag_in_config_space() {
    let tree = Tree::new();
    let mut d = Driver::new(Box::new(
        Share::new(&tree.share(), "hostshare", true).unwrap(),
    ));
    assert_eq!(d.cfg_read16(2), 0x1049, "0x1040 + type 9");
    assert_eq!(
        d.device_features() & VIRTIO_9P_MOUNT_TAG,
        VIRTIO_9P_MOUNT_TAG
    );
    let cfg = crate::virtio::pci::DEVICE_CFG_OFFSET;
    assert_eq!(d.read16(cfg), 9, "tag_len");
    let tag: Vec<u8> = (0..9).map(|i| d.read8(cfg + 2 + i)).collect();
    assert_eq!(tag, b"hostshare");
    assert_eq!(d.read8(cfg + 11), 0, "nothing past the tag");
    // Read-only to the driver.
    d.write16(cfg, 3);
    d.write8(cfg + 2, b'X');
    assert_eq!(d.read16(cfg), 9);
    assert_eq!(d.read8(cfg + 2), b'h');
    // Bad tags and roots are refused when the device is made.
    assert!(Share::new(&tree.share(), "", true).is_err());
    assert!(Share::new(&tree.share(), &"t".repeat(256), true).is_err());
    assert!(Share::new(&tree.path("secret.txt"), "t", true).is_err());
    assert!(Share::new(&tree.path("missing"), "t", true).is_err());
}

#[test]
fn version_attach_walk_open_read_getattr_readdir() {
    let tree = Tree::new();
    let mut d = up(&tree.share(), true);
    // msize: what the guest asks for, up to MAX_MSIZE.
    let r = d.rpc(&version(1 << 20));
    ok(&r, TVERSION);
    assert_eq!(u32::from_le_bytes(r[7..11].try_into().unwrap()), MAX_MSIZE);
    assert_eq!(&r[13..], b"9P2000.L");
    let r = d.rpc(&version(131_072));
    assert_eq!(u32::from_le_bytes(r[7..11].try_into().unwrap()), 131_072);
    let r = d.rpc(&attach(ROOT));
    ok(&r, TATTACH);
    assert_eq!(r[7], 0x80, "the root's qid is a directory");
    let r = d.rpc(&walk(ROOT, 2, &["sub", "inner.txt"]));
    ok(&r, TWALK);
    assert_eq!(u16::from_le_bytes([r[7], r[8]]), 2, "two qids");
    let r = d.rpc(&walk(ROOT, 3, &["hello.txt"]));
    ok(&r, TWALK);
    ok(&d.rpc(&lopen(3, O_RDONLY)), TLOPEN);
    let r = d.rpc(&read(3, 0, 4096));
    ok(&r, TREAD);
    assert_eq!(data(&r), b"hello from the host\n");
    let r = d.rpc(&read(3, 6, 4));
    assert_eq!(data(&r), b"from");
    // Not opened: no file to read.
    assert_eq!(lerror(&d.rpc(&read(2, 0, 10))), Some(libc::EBADF));
    let r = d.rpc(&T::new(TGETATTR).u32(3).u64(0x7ff).done());
    ok(&r, TGETATTR);
    // valid[8] qid[13] mode[4] uid[4] gid[4] nlink[8] rdev[8] size[8]
    let mode = u32::from_le_bytes(r[28..32].try_into().unwrap());
    let size = u64::from_le_bytes(r[56..64].try_into().unwrap());
    assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(size, 20);
    ok(&d.rpc(&walk(ROOT, 4, &[])), TWALK);
    ok(&d.rpc(&lopen(4, O_RDONLY | O_DIRECTORY)), TLOPEN);
    let r = d.rpc(&T::new(TREADDIR).u32(4).u64(0).u32(4096).done());
    ok(&r, TREADDIR);
    assert_eq!(
        dirents(data(&r)),
        [".", "..", "hello.txt", "link_dir", "link_out", "sub"]
    );
    ok(&d.rpc(&T::new(TSTATFS).u32(ROOT).done()), TSTATFS);
    ok(&d.rpc(&T::new(TCLUNK).u32(3).done()), TCLUNK);
    assert_eq!(lerror(&d.rpc(&read(3, 0, 1))), Some(libc::EBADF));
}

#[test]
fn a_read_only_share_refuses_every_change_with_erofs() {
    let tree = Tree::new();
    let mut d = up(&tree.share(), true);
    d.attach_root();
    ok(&d.rpc(&walk(ROOT, 2, &["hello.txt"])), TWALK);
    let own = own_ids();
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("Tlcreate", lcreate(ROOT, "new", O_RDWR, 0o644)),
        (
            "Tsymlink",
            T::new(TSYMLINK).u32(ROOT).s("l").s("x").u32(0).done(),
        ),
        ("Tmknod", mknod(ROOT, "fifo", libc::S_IFIFO | 0o644)),
        (
            "Trename",
            T::new(TRENAME).u32(2).u32(ROOT).s("moved").done(),
        ),
        ("Trenameat", renameat(ROOT, "hello.txt", ROOT, "moved")),
        ("Tsetattr", setattr(2, SETATTR_SIZE, 0, own.0, own.1, 0)),
        ("Tsetattr", setattr(2, SETATTR_MODE, 0o777, 0, 0, 0)),
        (
            "Txattrcreate",
            T::new(TXATTRCREATE).u32(2).s("user.x").u64(1).u32(0).done(),
        ),
        ("Tlink", T::new(TLINK).u32(ROOT).u32(2).s("hard").done()),
        ("Tmkdir", mkdir(ROOT, "dir", 0o755)),
        ("Tunlinkat", unlinkat(ROOT, "hello.txt")),
        ("Twrite", T::new(TWRITE).u32(2).u64(0).data(b"x").done()),
        ("Tremove", T::new(TREMOVE).u32(2).done()),
        ("Tlopen O_WRONLY", lopen(2, O_WRONLY)),
        ("Tlopen O_RDWR", lopen(2, O_RDWR)),
        ("Tlopen access mode 3", lopen(2, 3)),
        ("Tlopen O_TRUNC", lopen(2, O_RDONLY | O_TRUNC)),
        ("Tlopen O_APPEND", lopen(2, O_RDONLY | O_APPEND)),
        ("Tlopen O_CREAT", lopen(2, O_RDONLY | O_CREAT)),
    ];
    for (what, msg) in refused {
        assert_eq!(lerror(&d.rpc(&msg)), Some(libc::EROFS), "{what}");
    }
    // Nothing changed, and reading still works.
    let names: Vec<_> = std::fs::read_dir(tree.share())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(
        std::fs::read(tree.path("share/hello.txt")).unwrap(),
        b"hello from the host\n"
    );
    ok(&d.rpc(&lopen(2, O_RDONLY)), TLOPEN);
    assert_eq!(data(&d.rpc(&read(2, 0, 5))), b"hello");
}

/// The effective IDs of the test process (the VMM's, in the device).
fn own_ids() -> (u32, u32) {
    let m = std::fs::metadata("/proc/self").unwrap();
    (m.uid(), m.gid())
}

#[test]
fn a_writable_share_creates_writes_renames_and_removes() {
    let tree = Tree::new();
    let mut d = up(&tree.share(), false);
    d.attach_root();
    ok(&d.rpc(&walk(ROOT, 2, &[])), TWALK);
    let r = d.rpc(&lcreate(2, "new.txt", O_RDWR, 0o644));
    ok(&r, TLCREATE);
    let r = d.rpc(
        &T::new(TWRITE)
            .u32(2)
            .u64(0)
            .data(b"written by the guest")
            .done(),
    );
    ok(&r, TWRITE);
    assert_eq!(u32::from_le_bytes(r[7..11].try_into().unwrap()), 20);
    assert_eq!(
        std::fs::read(tree.path("share/new.txt")).unwrap(),
        b"written by the guest"
    );
    ok(&d.rpc(&mkdir(ROOT, "dir", 0o755)), TMKDIR);
    assert!(tree.path("share/dir").is_dir());
    ok(
        &d.rpc(&renameat(ROOT, "new.txt", ROOT, "renamed.txt")),
        TRENAMEAT,
    );
    assert!(tree.path("share/renamed.txt").is_file());
    ok(&d.rpc(&walk(ROOT, 3, &["renamed.txt"])), TWALK);
    ok(&d.rpc(&setattr(3, SETATTR_SIZE, 0, 0, 0, 7)), TSETATTR);
    assert_eq!(
        std::fs::read(tree.path("share/renamed.txt")).unwrap(),
        b"written"
    );
    ok(&d.rpc(&unlinkat(ROOT, "renamed.txt")), TUNLINKAT);
    assert!(!tree.path("share/renamed.txt").exists());
    // p9 itself refuses symbolic links and device nodes of any kind.
    let r = d.rpc(&T::new(TSYMLINK).u32(ROOT).s("l").s("/etc").u32(0).done());
    assert_eq!(lerror(&r), Some(libc::EACCES));
    assert_eq!(
        lerror(&d.rpc(&mknod(ROOT, "fifo", libc::S_IFIFO | 0o644))),
        Some(libc::EACCES)
    );
}

#[test]
fn set_id_bits_are_cleared_from_every_mode() {
    let tree = Tree::new();
    let mut d = up(&tree.share(), false);
    d.attach_root();
    ok(&d.rpc(&walk(ROOT, 2, &[])), TWALK);
    ok(&d.rpc(&lcreate(2, "suid", O_RDWR, 0o6755)), TLCREATE);
    let m = tree.mode("share/suid");
    assert_eq!(m & 0o6000, 0, "created {m:o}");
    assert_ne!(m & 0o700, 0, "the rest of the mode is kept: {m:o}");
    ok(&d.rpc(&mkdir(ROOT, "sgid", 0o2755)), TMKDIR);
    assert_eq!(tree.mode("share/sgid") & 0o6000, 0);
    ok(&d.rpc(&walk(ROOT, 3, &["hello.txt"])), TWALK);
    ok(&d.rpc(&setattr(3, SETATTR_MODE, 0o4755, 0, 0, 0)), TSETATTR);
    let m = tree.mode("share/hello.txt");
    assert_eq!(m & 0o7777, 0o755, "chmod {m:o}");
    ok(&d.rpc(&setattr(3, SETATTR_MODE, 0o2700, 0, 0, 0)), TSETATTR);
    assert_eq!(tree.mode("share/hello.txt") & 0o7777, 0o700);
}

#[test]
fn chown_to_another_user_or_group_and_device_nodes_are_refused() {
    let tree = Tree::new();
    let mut d = up(&tree.share(), false);
    d.attach_root();
    ok(&d.rpc(&walk(ROOT, 2, &["hello.txt"])), TWALK);
    let (uid, gid) = own_ids();
    let other = |id: u32| if id == 0 { 1 } else { 0 };
    for (valid, u, g) in [
        (SETATTR_UID, other(uid), gid),
        (SETATTR_GID, uid, other(gid)),
        (SETATTR_UID | SETATTR_GID, other(uid), other(gid)),
        (SETATTR_UID | SETATTR_GID, uid, other(gid)),
    ] {
        let r = d.rpc(&setattr(2, valid, 0, u, g, 0));
        assert_eq!(lerror(&r), Some(libc::EPERM), "chown {u}:{g} valid {valid}");
    }
    let m = std::fs::metadata(tree.path("share/hello.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (uid, gid));
    // To the VMM's own IDs, or "unchanged" (-1): allowed.
    ok(
        &d.rpc(&setattr(2, SETATTR_UID | SETATTR_GID, 0, uid, gid, 0)),
        TSETATTR,
    );
    ok(
        &d.rpc(&setattr(2, SETATTR_UID, 0, u32::MAX, 0, 0)),
        TSETATTR,
    );
    // Character and block devices: EPERM from the device, before p9.
    for kind in [libc::S_IFCHR, libc::S_IFBLK] {
        let r = d.rpc(&mknod(ROOT, "dev", kind | 0o666));
        assert_eq!(lerror(&r), Some(libc::EPERM), "mknod {kind:o}");
    }
    assert!(!tree.path("share/dev").exists());
}

#[test]
fn walks_and_names_cannot_leave_the_share() {
    let tree = Tree::new();
    let mut d = up(&tree.share(), false);
    d.attach_root();
    for names in [
        &[".."][..],
        &["."],
        &[""],
        &["sub", ".."],
        &["sub/inner.txt"],
        &["link_dir/x.txt"],
        &["link_dir/"],
        &["/etc"],
    ] {
        let r = d.rpc(&walk(ROOT, 9, names));
        assert_eq!(lerror(&r), Some(libc::EPERM), "walk {names:?}");
    }
    // The fid was never made.
    assert_eq!(lerror(&d.rpc(&lopen(9, O_RDONLY))), Some(libc::EBADF));
    // Names to create, link, rename and unlink.
    ok(&d.rpc(&walk(ROOT, 2, &["hello.txt"])), TWALK);
    ok(&d.rpc(&walk(ROOT, 3, &[])), TWALK);
    for (what, msg) in [
        ("mkdir ..", mkdir(ROOT, "../escaped", 0o755)),
        ("mkdir link_dir/", mkdir(ROOT, "link_dir/escaped", 0o755)),
        ("lcreate", lcreate(3, "../escaped", O_RDWR, 0o644)),
        ("unlinkat", unlinkat(ROOT, "../secret.txt")),
        ("unlinkat via link", unlinkat(ROOT, "link_dir/x.txt")),
        (
            "renameat from",
            renameat(ROOT, "../secret.txt", ROOT, "stolen"),
        ),
        (
            "renameat to",
            renameat(ROOT, "hello.txt", ROOT, "../escaped"),
        ),
        (
            "link",
            T::new(TLINK).u32(ROOT).u32(2).s("../escaped").done(),
        ),
        ("mknod", mknod(ROOT, "../escaped", libc::S_IFIFO | 0o644)),
    ] {
        assert_eq!(lerror(&d.rpc(&msg)), Some(libc::EPERM), "{what}");
    }
    assert!(!tree.path("escaped").exists() && !tree.path("outside/escaped").exists());
    assert!(tree.path("secret.txt").exists() && tree.path("outside/x.txt").exists());
    assert!(!tree.path("share/stolen").exists());

    // A symbolic link to outside is walked to as the link itself: it cannot be opened,
    // walked through, truncated or chmodded through.
    let r = d.rpc(&walk(ROOT, 4, &["link_out"]));
    ok(&r, TWALK);
    assert_eq!(r[9], 0x02, "the qid is a symbolic link's");
    for flags in [O_RDONLY, O_RDWR, O_RDWR | O_TRUNC] {
        assert_eq!(lerror(&d.rpc(&lopen(4, flags))), Some(libc::ELOOP));
    }
    let _ = d.rpc(&setattr(4, SETATTR_MODE, 0o666, 0, 0, 0));
    let _ = d.rpc(&setattr(4, SETATTR_SIZE, 0, 0, 0, 0));
    assert_eq!(tree.mode("secret.txt") & 0o777, 0o600);
    assert_eq!(std::fs::read(tree.path("secret.txt")).unwrap(), b"secret");
    // Through a link to a directory: the walk stops at the link.
    let r = d.rpc(&walk(ROOT, 5, &["link_dir", "x.txt"]));
    ok(&r, TWALK);
    assert_eq!(
        u16::from_le_bytes([r[7], r[8]]),
        1,
        "only the link is walked"
    );
    assert_eq!(lerror(&d.rpc(&lopen(5, O_RDONLY))), Some(libc::EBADF));
    ok(&d.rpc(&walk(ROOT, 6, &["link_dir"])), TWALK);
    assert_eq!(lerror(&d.rpc(&lopen(6, O_RDONLY))), Some(libc::ELOOP));
    assert_eq!(
        lerror(&d.rpc(&lopen(6, O_RDONLY | O_DIRECTORY))),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        lerror(&d.rpc(&lcreate(6, "planted", O_RDWR, 0o644))),
        Some(libc::ENOTDIR)
    );
    assert!(!tree.path("outside/planted").exists());
    // The link's target is readable only as a name.
    let r = d.rpc(&T::new(TREADLINK).u32(4).done());
    ok(&r, TREADLINK);
    assert_eq!(&r[9..], b"../secret.txt");
}

#[test]
fn hostile_chains_and_messages() {
    let tree = Tree::new();
    let mut d = up(&tree.share(), false);
    d.attach_root();
    let mk = mkdir(ROOT, "made", 0o755);
    // No writable part, or too little for an Rlerror: used 0, and nothing is done.
    assert_eq!(d.p9_chain(&mk, &[mk.len()], &[]), (0, Vec::new()));
    assert_eq!(d.p9_chain(&mk, &[mk.len()], &[10]).0, 0);
    assert!(!tree.path("share/made").exists());
    // A reply that must hold a qid (20 bytes) does not run with 11 bytes of room.
    assert_eq!(lerror(&d.rpc_room(&mk, 11)), Some(libc::EMSGSIZE));
    assert!(!tree.path("share/made").exists());
    // Message and reply split anywhere over several descriptors.
    let (used, r) = d.p9_chain(&mk, &[3, 4, mk.len() - 7], &[5, 6, 100]);
    assert_eq!(used, 20);
    ok(&r, TMKDIR);
    assert!(tree.path("share/made").is_dir());
    // Less than a header: used 0.
    assert_eq!(d.p9_chain(&mk[..6], &[6], &[64]).0, 0);
    // A size field that disagrees with the chain, or below the header.
    let mut bad = walk(ROOT, 7, &["hello.txt"]);
    bad[0] += 1;
    assert_eq!(lerror(&d.rpc(&bad)), Some(libc::EINVAL));
    bad[..4].copy_from_slice(&3u32.to_le_bytes());
    assert_eq!(lerror(&d.rpc(&bad)), Some(libc::EINVAL));
    // More readable bytes than the size field: the message is what the size says.
    let w = walk(ROOT, 7, &["hello.txt"]);
    let mut padded = w.clone();
    padded.extend_from_slice(&[0xff; 32]);
    let (_, r) = d.p9_chain(&padded, &[padded.len()], &[256]);
    ok(&r, TWALK);
    // Fields running past the end of the message, a string longer than it.
    let mut cut = walk(ROOT, 8, &["hello.txt"]);
    cut.truncate(cut.len() - 3);
    let n = cut.len() as u32;
    cut[..4].copy_from_slice(&n.to_le_bytes());
    assert_eq!(lerror(&d.rpc(&cut)), Some(libc::EINVAL));
    // Unknown and 9P2000 (not .L) message types.
    for t in [0u8, 6, 7, 112, 114, 124, 126, 255] {
        let m = T::new(t).u32(ROOT).done();
        assert_eq!(lerror(&d.rpc(&m)), Some(libc::EOPNOTSUPP), "type {t}");
    }
    // Seventeen names.
    let many = vec!["sub"; 17];
    assert_eq!(lerror(&d.rpc(&walk(ROOT, 8, &many))), Some(libc::EINVAL));
    // Reads are cut to the room; replies that still do not fit become Rlerror(EMSGSIZE).
    ok(&d.rpc(&lopen(7, O_RDONLY)), TLOPEN);
    let r = d.rpc_room(&read(7, 0, 4096), 16);
    ok(&r, TREAD);
    assert_eq!(data(&r), b"hello");
    ok(&d.rpc(&walk(ROOT, 8, &["link_out"])), TWALK);
    let r = d.rpc_room(&T::new(TREADLINK).u32(8).done(), 12);
    assert_eq!(lerror(&r), Some(libc::EMSGSIZE));
    // A body p9 cannot decode (a name that is not UTF-8).
    let mut m = walk(ROOT, 9, &["xx"]);
    let len = m.len();
    m[len - 2..].copy_from_slice(&[0xff, 0xfe]);
    assert_eq!(lerror(&d.rpc(&m)), Some(libc::EINVAL));
    // The device is still serving.
    assert_eq!(d.status() & crate::virtio::STATUS_NEEDS_RESET, 0);
    ok(&d.rpc(&walk(ROOT, 10, &["hello.txt"])), TWALK);
}

#[test]
fn fids_are_capped_and_tracked() {
    let tree = Tree::new();
    let mut s = ShareServer::new(&tree.share(), true).with_max_fids(4);
    let mut rpc = |m: Vec<u8>| {
        let mut m = m;
        let mut r = Vec::new();
        s.handle(&mut m, 8192, &mut r);
        r
    };
    ok(&rpc(version(8192)), TVERSION);
    ok(&rpc(attach(1)), TATTACH);
    ok(&rpc(walk(1, 2, &[])), TWALK);
    ok(&rpc(walk(1, 3, &["sub"])), TWALK);
    // A walk that does not reach its end makes no fid.
    ok(&rpc(walk(1, 4, &["sub", "missing"])), TWALK);
    ok(&rpc(attach(4)), TATTACH);
    assert_eq!(lerror(&rpc(attach(5))), Some(libc::EMFILE));
    assert_eq!(lerror(&rpc(walk(1, 5, &[]))), Some(libc::EMFILE));
    // Walking onto a fid already held makes none.
    assert_eq!(lerror(&rpc(walk(1, 4, &[]))), Some(libc::EBADF));
    ok(&rpc(walk(2, 2, &["hello.txt"])), TWALK);
    ok(&rpc(T::new(TCLUNK).u32(3).done()), TCLUNK);
    ok(&rpc(walk(1, 5, &[])), TWALK);
    assert_eq!(lerror(&rpc(walk(1, 6, &[]))), Some(libc::EMFILE));
    // Tversion clunks them all.
    ok(&rpc(version(8192)), TVERSION);
    for fid in 1..=4 {
        ok(&rpc(attach(fid)), TATTACH);
    }
    assert_eq!(lerror(&rpc(attach(5))), Some(libc::EMFILE));
}

#[test]
fn a_reset_starts_a_fresh_server() {
    let tree = Tree::new();
    let mut d = up(&tree.share(), true);
    d.attach_root();
    d.set_status(0);
    // Fresh rings where the old ones were.
    d.mem
        .write_slice(&[0u8; 0x10000], GuestAddress(0x10000))
        .unwrap();
    d.bring_up(VIRTIO_9P_MOUNT_TAG, &[QUEUE_SIZE]);
    // The old root fid is gone, and the same fid number can be attached again.
    assert_eq!(
        lerror(&d.rpc(&walk(ROOT, 2, &["hello.txt"]))),
        Some(libc::EBADF)
    );
    ok(&d.rpc(&attach(ROOT)), TATTACH);
}

/// A FIFO in the shared directory opens without waiting for a writer (`O_NONBLOCK` is added to
/// every `Tlopen`): the I/O thread never blocks in `open`.
#[test]
fn opening_a_fifo_does_not_block_the_server() {
    let tree = Tree::new();
    let fifo = std::ffi::CString::new(
        tree.path("share/fifo")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, which lives across the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let root = tree.share();
    let (tx, rx) = std::sync::mpsc::channel();
    // On its own thread: if the open blocked, the thread stays blocked and the test fails.
    std::thread::spawn(move || {
        let mut s = ShareServer::new(&root, true);
        let mut rpc = |mut m: Vec<u8>| {
            let mut r = Vec::new();
            s.handle(&mut m, 8192, &mut r);
            r
        };
        ok(&rpc(attach(ROOT)), TATTACH);
        ok(&rpc(walk(ROOT, 2, &["fifo"])), TWALK);
        let _ = tx.send(rpc(lopen(2, O_RDONLY)));
    });
    let r = rx
        .recv_timeout(WAIT)
        .expect("Tlopen of a FIFO blocked the server");
    ok(&r, TLOPEN);
}
