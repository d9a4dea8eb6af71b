//! The virtio-9p handler (`devices::virtio::p9`: the device's checks, then the `p9` crate's
//! 9P2000.L server) on a real directory, served with `virtio::test_util::QueueRunner`, which
//! runs the same code the device's I/O thread runs. Each input gets a fresh tree:
//! `share/{a.txt, d/b.txt, link_out -> ../outside/canary, link_dir -> ../outside}` and
//! `outside/canary` beside it; the input makes the share read-only or writable, places the
//! queue, lays out chains as a driver does (the T-message split over up to three readable
//! descriptors, room for the reply over up to three writable ones, of any size down to none)
//! with one mutation at most, writes 9P messages of every type (fids from a small set, names
//! from a dictionary with `..`, `.`, `/`, the links and empty names, modes with set-ID bits,
//! device nodes, open flags of every kind, counts and offsets anywhere) or raw bytes, raw
//! descriptors and bytes anywhere in RAM, publishes heads, moves the available index, serves,
//! and resets the queue (a new handler, as the transport does).
//!
//! Invariants (besides no panic, no hang, no leak):
//! - nothing outside the share changes: `outside/` keeps exactly its one file, its bytes and
//!   mode, and nothing appears beside `share/` and `outside/`;
//! - a read-only share never changes (names, types, bytes, modes);
//! - a writable share never holds a set-user-ID or set-group-ID file, nor a device node;
//! - a serve writes guest RAM only inside buffers a descriptor marks device-writable and
//!   inside the used ring; after completions the used index is the device's count of them,
//!   each new element naming a descriptor inside the queue, with a used length no larger than
//!   the largest message;
//! - a queue whose serve failed (NEEDS_RESET) is served no more until it is set up again.
//!
//! The RAM checks are skipped for a serve in which a device-writable buffer overlaps the rings
//! or a descriptor table, or the used ring overlaps another ring (the device may then
//! legitimately rewrite them).
#![no_main]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::{Result, Unstructured};
use devices::virtio::p9::{Share, MAX_MSIZE, QUEUE_SIZE};
use devices::virtio::test_util::QueueRunner;
use devices::virtio::{QueueHandler, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::one_in;
use vfiovm_fuzz::trace;
use vfiovm_fuzz::virtq::{buffer_ranges, inside, overlap, ring_ranges, Layout, Mem, Ram};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM: [0, 64 KiB) and [96 KiB, 160 KiB).
const REGIONS: [(u64, u64); 2] = [(0, 0x1_0000), (0x1_8000, 0x1_0000)];
const RAM_END: u64 = 0x2_8000;
const MAX_OPS: usize = 64;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// Where requests go (four slots of up to 6 KiB, so several can wait for one serve) and where
/// replies go (up to 48 KiB, in the second region).
const REQ: u64 = 0x9000;
const REQ_MAX: usize = 0x1800;
const REPLY: u64 = 0x1_8000;
const REPLY_MAX: u64 = 0xc000;

/// A fresh tree for one input, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new() -> Tree {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir().join(format!(
            "vfiovm-fuzz-9p-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("share/d")).expect("the fuzz tree");
        std::fs::create_dir_all(base.join("outside")).expect("the fuzz tree");
        std::fs::write(base.join("share/a.txt"), b"0123456789abcdef").expect("the fuzz tree");
        std::fs::write(base.join("share/d/b.txt"), b"b").expect("the fuzz tree");
        std::fs::write(base.join("outside/canary"), b"canary").expect("the fuzz tree");
        std::os::unix::fs::symlink("../outside/canary", base.join("share/link_out"))
            .expect("the fuzz tree");
        std::os::unix::fs::symlink("../outside", base.join("share/link_dir"))
            .expect("the fuzz tree");
        Tree(base)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every entry under `dir` (not following links): relative path, kind, mode, bytes of files.
fn listing(dir: &Path) -> Vec<(String, String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                todo.push(p.clone());
                "dir"
            } else if ft.is_symlink() {
                "link"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            let bytes = if ft.is_file() {
                std::fs::read(&p).unwrap_or_default()
            } else if ft.is_symlink() {
                std::fs::read_link(&p)
                    .map(|t| t.into_os_string().into_encoded_bytes())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
            out.push((rel, kind.to_string(), m.mode(), bytes));
        }
    }
    out.sort();
    out
}

const NAMES: [&str; 16] = [
    "a.txt",
    "d",
    "b.txt",
    "new",
    "link_out",
    "link_dir",
    "..",
    ".",
    "",
    "d/b.txt",
    "link_dir/canary",
    "../outside",
    "/",
    "new2",
    "a.txt/",
    "nul\u{0}x",
];

fn name(u: &mut Unstructured) -> Result<String> {
    Ok(if one_in(u, 8)? {
        let n = u.int_in_range(0..=12)?;
        let b: Vec<u8> = (0..n)
            .map(|_| u.int_in_range(0x20u8..=0x7e))
            .collect::<Result<_>>()?;
        String::from_utf8(b).unwrap_or_default()
    } else {
        NAMES[u.int_in_range(0..=NAMES.len() - 1)?].to_string()
    })
}

fn fid(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => u.arbitrary()?,
        1..=7 => 0,
        _ => u.int_in_range(1..=3)?,
    })
}

/// `Tattach` of fid 0 to the share's root.
fn attach0() -> Vec<u8> {
    let mut m = vec![0, 0, 0, 0, 104, 1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
    m.extend_from_slice(&[4, 0, b'r', b'o', b'o', b't', 0, 0, 0, 0, 0, 0]);
    let n = m.len() as u32;
    m[..4].copy_from_slice(&n.to_le_bytes());
    m
}

fn mode(u: &mut Unstructured) -> Result<u32> {
    let kind = match u.int_in_range(0u8..=7)? {
        0 => libc::S_IFCHR,
        1 => libc::S_IFBLK,
        2 => libc::S_IFIFO,
        3 => libc::S_IFSOCK,
        4 => libc::S_IFREG,
        _ => 0,
    };
    let setid = if one_in(u, 2)? {
        u.int_in_range(0..=7u32)? << 9
    } else {
        0
    };
    Ok(if one_in(u, 16)? {
        u.arbitrary()?
    } else {
        kind | setid | u.int_in_range(0..=0o777)?
    })
}

fn flags(u: &mut Unstructured) -> Result<u32> {
    let mut f = u.int_in_range(0..=3u32)?;
    for bit in [
        0o100, 0o200, 0o1000, 0o2000, 0o4000, 0o40000, 0o200000, 0o400000,
    ] {
        if one_in(u, 4)? {
            f |= bit;
        }
    }
    Ok(if one_in(u, 16)? { u.arbitrary()? } else { f })
}

/// A 9P T-message (or junk).
fn message(u: &mut Unstructured, own: (u32, u32)) -> Result<Vec<u8>> {
    let mut m = vec![0, 0, 0, 0, 0];
    m.extend_from_slice(&u.arbitrary::<u16>()?.to_le_bytes());
    let w32 = |m: &mut Vec<u8>, v: u32| m.extend_from_slice(&v.to_le_bytes());
    let w64 = |m: &mut Vec<u8>, v: u64| m.extend_from_slice(&v.to_le_bytes());
    let s = |m: &mut Vec<u8>, v: &str| {
        m.extend_from_slice(&(v.len() as u16).to_le_bytes());
        m.extend_from_slice(v.as_bytes());
    };
    let ty: u8 = match u.int_in_range(0u8..=26)? {
        0 => {
            w32(&mut m, u.int_in_range(0..=MAX_MSIZE * 2)?);
            s(&mut m, if one_in(u, 4)? { "9P2000" } else { "9P2000.L" });
            100
        }
        1 | 2 => {
            w32(&mut m, fid(u)?);
            w32(&mut m, !0);
            s(&mut m, "root");
            s(&mut m, "");
            w32(&mut m, u.arbitrary()?);
            104
        }
        3..=6 => {
            w32(&mut m, fid(u)?);
            w32(&mut m, fid(u)?);
            let n = if one_in(u, 16)? {
                u.int_in_range(0..=20)?
            } else {
                u.int_in_range(0..=3)?
            };
            m.extend_from_slice(&(n as u16).to_le_bytes());
            for _ in 0..n {
                s(&mut m, &name(u)?);
            }
            110
        }
        7 | 8 => {
            w32(&mut m, fid(u)?);
            w32(&mut m, flags(u)?);
            12
        }
        9 | 10 => {
            w32(&mut m, fid(u)?);
            w64(&mut m, u.int_in_range(0..=32)?);
            w32(&mut m, u.int_in_range(0..=MAX_MSIZE)?);
            if one_in(u, 2)? {
                116
            } else {
                40
            }
        }
        11 => {
            w32(&mut m, fid(u)?);
            w64(&mut m, u.int_in_range(0..=64)?);
            let n = u.int_in_range(0..=64)?;
            w32(&mut m, n);
            m.extend((0..n).map(|i| i as u8));
            118
        }
        12 => {
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            w32(&mut m, flags(u)?);
            w32(&mut m, mode(u)?);
            w32(&mut m, u.arbitrary()?);
            14
        }
        13 => {
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            w32(&mut m, mode(u)?);
            w32(&mut m, u.arbitrary()?);
            72
        }
        14 => {
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            w32(&mut m, mode(u)?);
            w32(&mut m, u.arbitrary()?);
            w32(&mut m, u.arbitrary()?);
            w32(&mut m, u.arbitrary()?);
            18
        }
        15 => {
            w32(&mut m, fid(u)?);
            w32(&mut m, u.arbitrary()?);
            w32(&mut m, mode(u)?);
            for _ in 0..2 {
                w32(
                    &mut m,
                    match u.int_in_range(0u8..=3)? {
                        0 => own.0,
                        1 => own.1,
                        2 => u32::MAX,
                        _ => u.arbitrary()?,
                    },
                );
            }
            for _ in 0..5 {
                w64(&mut m, u.int_in_range(0..=64)?);
            }
            26
        }
        16 => {
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            74
        }
        17 => {
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            w32(&mut m, if one_in(u, 3)? { 0x200 } else { 0 });
            76
        }
        18 => {
            w32(&mut m, fid(u)?);
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            70
        }
        19 => {
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            s(&mut m, &name(u)?);
            w32(&mut m, 0);
            16
        }
        20 => {
            w32(&mut m, fid(u)?);
            120
        }
        21 => {
            w32(&mut m, fid(u)?);
            w64(&mut m, 0x7ff);
            24
        }
        22 => {
            w32(&mut m, fid(u)?);
            [8u8, 22, 122][u.int_in_range(0..=2)?]
        }
        23 => {
            w32(&mut m, fid(u)?);
            w32(&mut m, u.int_in_range(0..=1)?);
            50
        }
        24 => {
            w32(&mut m, fid(u)?);
            w32(&mut m, fid(u)?);
            s(&mut m, &name(u)?);
            20
        }
        _ => {
            // Junk after a header of any type.
            let n = u.int_in_range(0..=32)?;
            for _ in 0..n {
                m.push(u.arbitrary()?);
            }
            u.arbitrary()?
        }
    };
    m[4] = ty;
    let n = m.len() as u32;
    m[..4].copy_from_slice(&n.to_le_bytes());
    if one_in(u, 12)? {
        // A size field that lies, or a cut message.
        match u.int_in_range(0u8..=2)? {
            0 => m[..4].copy_from_slice(&u.arbitrary::<u32>()?.to_le_bytes()),
            1 => {
                let keep = u.int_in_range(0..=m.len())?;
                m.truncate(keep);
            }
            _ => {
                let i = u.int_in_range(0..=m.len() - 1)?;
                m[i] = u.arbitrary()?;
            }
        }
    }
    Ok(m)
}

fn ring_addr(u: &mut Unstructured, default: u64, align: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=11)? {
        0 => u.arbitrary()?,
        1 => u.int_in_range(0..=RAM_END + 0x100)? & !(align - 1),
        _ => default,
    })
}

fn layout(u: &mut Unstructured) -> Result<Layout> {
    let size = 1u16 << u.int_in_range(0..=7)?;
    let mut l = Layout {
        size,
        desc: ring_addr(u, 0x1000, 16)?,
        avail: ring_addr(u, 0x3000, 2)?,
        used: ring_addr(u, 0x4000, 4)?,
    };
    // A used ring over the available ring makes every completion move the available index: the
    // transport serves such a ring a budget at a time (virtio::worker::serve_queue; tested in
    // devices/src/virtio/tests/hostile.rs), which leaves chains pending after the last serve and
    // breaks this target's accounting, so the layout is left out here.
    if overlap(l.avail_range(), l.used_range()) {
        (l.avail, l.used) = (0x3000, 0x4000);
    }
    Ok(l)
}

/// Splits `total` into up to three pieces.
fn pieces(u: &mut Unstructured, total: u64) -> Result<Vec<u64>> {
    let n = u.int_in_range(1..=3u8)?;
    let mut left = total;
    let mut v = Vec::new();
    for k in 0..n {
        let take = if k + 1 == n {
            left
        } else {
            u.int_in_range(0..=left)?
        };
        left -= take;
        v.push(take);
    }
    Ok(v)
}

/// Lays a request out as a driver does and publishes it: the message in readable buffers,
/// room for the reply in writable ones, one mutation at most.
fn request(
    u: &mut Unstructured,
    mem: &Mem,
    l: &Layout,
    avail_idx: &mut u16,
    own: (u32, u32),
) -> Result<()> {
    let msg = message(u, own)?;
    lay_out(u, mem, l, avail_idx, msg)
}

/// Lays `msg` out as [`request`] says and publishes it.
fn lay_out(
    u: &mut Unstructured,
    mem: &Mem,
    l: &Layout,
    avail_idx: &mut u16,
    mut msg: Vec<u8>,
) -> Result<()> {
    msg.truncate(REQ_MAX);
    let req = REQ + (u64::from(*avail_idx) % 4) * REQ_MAX as u64;
    let _ = mem.write_slice(&msg, GuestAddress(req));
    let room: u64 = match u.int_in_range(0u8..=9)? {
        0 => 0,
        1 => u.int_in_range(1..=11)?,
        2 => u.int_in_range(12..=64)?,
        3 => u.int_in_range(0..=REPLY_MAX - 0x300)?,
        _ => 8192,
    };
    // (addr, len, writable)
    let mut bufs: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = req;
    for n in pieces(u, msg.len() as u64)? {
        bufs.push((at, n, false));
        at += n;
    }
    let mut out = REPLY;
    if room > 0 {
        for n in pieces(u, room)? {
            bufs.push((out, n, true));
            out += n + 0x100;
        }
    }
    if one_in(u, 6)? {
        let k = u.int_in_range(0..=bufs.len() - 1)?;
        match u.int_in_range(0u8..=2)? {
            0 => bufs[k].2 = !bufs[k].2,
            1 => bufs[k].1 = u64::from(u.arbitrary::<u32>()?),
            _ => bufs[k].0 = u.int_in_range(0..=RAM_END)?,
        }
    }
    let indirect = one_in(u, 4)?;
    let (base, first, n) = if indirect {
        (0x6000u64, 0u16, bufs.len() as u16)
    } else {
        (l.desc, u.int_in_range(0..=l.size - 1)?, l.size)
    };
    for (k, &(addr, len, w)) in bufs.iter().enumerate() {
        let i = first.wrapping_add(k as u16) % n.max(1);
        let last = k + 1 == bufs.len();
        let flags = if last { 0 } else { F_NEXT } | if w { F_WRITE } else { 0 };
        let d = base.wrapping_add(16 * u64::from(i));
        let _ = mem.write_obj(addr, GuestAddress(d));
        let _ = mem.write_obj(len as u32, GuestAddress(d.wrapping_add(8)));
        let _ = mem.write_obj(flags, GuestAddress(d.wrapping_add(12)));
        let _ = mem.write_obj((i + 1) % n.max(1), GuestAddress(d.wrapping_add(14)));
    }
    let head = if indirect {
        let head = u.int_in_range(0..=l.size - 1)?;
        let d = l.desc.wrapping_add(16 * u64::from(head));
        let _ = mem.write_obj(0x6000u64, GuestAddress(d));
        let _ = mem.write_obj(16 * bufs.len() as u32, GuestAddress(d.wrapping_add(8)));
        let _ = mem.write_obj(F_INDIRECT, GuestAddress(d.wrapping_add(12)));
        head
    } else {
        first
    };
    let slot = u64::from(*avail_idx % l.size);
    let _ = mem.write_obj(head, GuestAddress(l.avail.wrapping_add(4 + 2 * slot)));
    *avail_idx = avail_idx.wrapping_add(1);
    let _ = mem.write_obj(*avail_idx, GuestAddress(l.avail.wrapping_add(2)));
    trace!(
        "request type {} ({} bytes) room {room}: {bufs:x?} indirect {indirect} head {head}",
        msg.get(4).copied().unwrap_or(0),
        msg.len()
    );
    Ok(())
}

fn check_tree(tree: &Tree, read_only: bool, share_before: &[(String, String, u32, Vec<u8>)]) {
    let outside = listing(&tree.0.join("outside"));
    assert_eq!(
        outside.len(),
        1,
        "something appeared outside the share: {outside:?}"
    );
    assert_eq!(outside[0].0, "canary");
    assert_eq!(
        outside[0].3, b"canary",
        "the file outside the share changed"
    );
    let top: Vec<String> = std::fs::read_dir(&tree.0)
        .expect("the fuzz tree")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        top.len() == 2 && top.iter().all(|n| n == "share" || n == "outside"),
        "something appeared beside the share: {top:?}"
    );
    let share = listing(&tree.0.join("share"));
    if read_only {
        assert_eq!(share, share_before, "a read-only share changed");
    }
    for (name, kind, mode, _) in &share {
        // The server makes regular files and directories only (no FIFO, socket or node).
        assert!(kind != "other", "{name} is a special file");
        if kind == "link" {
            continue;
        }
        assert_eq!(mode & 0o6000, 0, "{name} has set-ID bits: {mode:o}");
        let ft = mode & libc::S_IFMT;
        assert!(
            ft != libc::S_IFCHR && ft != libc::S_IFBLK,
            "{name} is a device node"
        );
    }
}

/// One serve of the queue, as a notify makes the I/O thread do it, and every check after it;
/// `false` when the serve failed (NEEDS_RESET).
#[allow(clippy::too_many_arguments)]
fn serve(
    r: &mut QueueRunner,
    mem: &Mem,
    l: &Layout,
    handler: &mut dyn QueueHandler,
    tree: &Tree,
    read_only: bool,
    share_before: &[(String, String, u32, Vec<u8>)],
    canary_mode: u32,
) -> bool {
    let before = Ram::snapshot(mem, &REGIONS);
    let writable = buffer_ranges(&before, l, true);
    let rings = ring_ranges(&before, l);
    let used_ring = l.used_range();
    let self_modifying = writable
        .iter()
        .any(|&w| rings.iter().any(|&x| overlap(w, x)))
        || rings[..2]
            .iter()
            .chain(&rings[3..])
            .any(|&x| overlap(used_ring, x));
    let completed_before = r.next_used();
    let res = r.serve(mem, handler);
    trace!("serve: {res:?}");
    let after = Ram::snapshot(mem, &REGIONS);
    if !self_modifying {
        for at in before.changed(&after) {
            assert!(
                    inside(at, &writable) || inside(at, &[used_ring]),
                    "the device wrote guest RAM at {at:#x}, outside every writable buffer and the used ring"
                );
        }
        let completed = r.next_used().wrapping_sub(completed_before);
        let used_after = l.used_idx(&after).unwrap_or(0);
        // The driver may have scribbled on its used index (a request laid over the used ring):
        // after completions it reads the device's own count again.
        if completed > 0 {
            assert_eq!(
                used_after,
                r.next_used(),
                "the used index is not the device's count of completions"
            );
        }
        for k in 0..completed {
            let (id, len) = l
                .used_elem(&after, completed_before.wrapping_add(k))
                .expect("the used ring is RAM");
            assert!(id < u32::from(l.size), "used element names descriptor {id}");
            assert!(len <= MAX_MSIZE, "used length {len}");
        }
    }
    check_tree(tree, read_only, share_before);
    assert_eq!(
        std::fs::metadata(tree.0.join("outside/canary"))
            .expect("the canary")
            .mode(),
        canary_mode,
        "the canary's mode changed"
    );
    res.is_ok()
}

fn run(u: &mut Unstructured) -> Result<()> {
    let regions: Vec<_> = REGIONS
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = Mem::from_ranges(&regions).expect("guest RAM");
    let tree = Tree::new();
    let read_only = one_in(u, 2)?;
    // SAFETY: geteuid only returns this process's effective user ID.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: likewise for the effective group ID.
    let gid = unsafe { libc::getegid() };
    let own = (uid, gid);
    let canary_mode = std::fs::metadata(tree.0.join("outside/canary"))
        .expect("the canary")
        .mode();
    let mut dev = Share::new(&tree.0.join("share"), "fuzz", read_only).expect("the share");
    let features = devices::virtio::VIRTIO_F_VERSION_1
        | (dev.features() | devices::virtio::TRANSPORT_FEATURES) & u.arbitrary::<u64>()?;
    let event_idx = features & devices::virtio::VIRTIO_F_RING_EVENT_IDX != 0;
    let mut handler: Box<dyn QueueHandler> = dev.activate(features).expect("activate");
    let share_before = listing(&tree.0.join("share"));
    let mut l = layout(u)?;
    let mut runner = QueueRunner::new(
        &mem,
        0,
        QUEUE_SIZE,
        l.size,
        (l.desc, l.avail, l.used),
        event_idx,
    )
    .ok();
    let mut avail_idx = 0u16;
    // Most sessions start as a driver's does: fid 0 attached to the share's root (served with
    // the first serve).
    if !one_in(u, 4)? {
        lay_out(u, &mem, &l, &mut avail_idx, attach0())?;
    }
    trace!(
        "read-only {read_only}, layout {l:?}, valid {}",
        runner.is_some()
    );
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=15)? {
            0..=7 => request(u, &mem, &l, &mut avail_idx, own)?,
            8 => {
                let at = u64::from(u.int_in_range(0..=l.size.saturating_sub(1))?);
                let d = l.desc.wrapping_add(16 * at);
                let _ = mem.write_obj(u.int_in_range(0..=RAM_END)?, GuestAddress(d));
                let _ = mem.write_obj(u.arbitrary::<u32>()?, GuestAddress(d.wrapping_add(8)));
                let _ = mem.write_obj(u.arbitrary::<u16>()?, GuestAddress(d.wrapping_add(12)));
                let _ = mem.write_obj(u.arbitrary::<u16>()?, GuestAddress(d.wrapping_add(14)));
            }
            9 => {
                let at = u.int_in_range(0..=RAM_END)?;
                let n = u.int_in_range(0..=32)?;
                let mut b = vec![0u8; n];
                u.fill_buffer(&mut b)?;
                let _ = mem.write_slice(&b, GuestAddress(at));
            }
            10 => {
                avail_idx = u.arbitrary()?;
                let _ = mem.write_obj(avail_idx, GuestAddress(l.avail.wrapping_add(2)));
            }
            11 => {
                if one_in(u, 2)? {
                    l = layout(u)?;
                }
                let _ = mem.write_slice(
                    &vec![0u8; 6 + 8 * usize::from(l.size)],
                    GuestAddress(l.used),
                );
                let _ = mem.write_obj(0u16, GuestAddress(l.avail.wrapping_add(2)));
                avail_idx = 0;
                runner = QueueRunner::new(
                    &mem,
                    0,
                    QUEUE_SIZE,
                    l.size,
                    (l.desc, l.avail, l.used),
                    event_idx,
                )
                .ok();
                drop(handler);
                handler = dev.activate(features).expect("activate");
                trace!("queue reset: {l:?} valid {}", runner.is_some());
            }
            _ => {
                let Some(r) = runner.as_mut() else { continue };
                let ok = serve(
                    r,
                    &mem,
                    &l,
                    handler.as_mut(),
                    &tree,
                    read_only,
                    &share_before,
                    canary_mode,
                );
                if !ok {
                    runner = None;
                }
            }
        }
    }
    // The driver's last kick: whatever it made available is served.
    if let Some(r) = runner.as_mut() {
        serve(
            r,
            &mem,
            &l,
            handler.as_mut(),
            &tree,
            read_only,
            &share_before,
            canary_mode,
        );
    }
    drop(handler);
    check_tree(&tree, read_only, &share_before);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
