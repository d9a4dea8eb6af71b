//! The virtio request path: the descriptor walk and its checks (`devices::virtio::Chain`), the
//! used ring and EVENT_IDX (virtio-queue), and the virtio-blk handler over a real raw image,
//! served with `virtio::test_util::QueueRunner`, which runs the same code the device's I/O
//! thread runs: chain by chain through `process` (synchronous I/O), or, with the image on an
//! io_uring (two inputs in three), through the handler's own `ready` for the notify and then
//! for each completion event until nothing is in flight. A queue reset drops the handler
//! (which waits for its requests in flight) and activates a new one, as the transport does.
//! Guest RAM has a hole; the input sizes the image (a partial last
//! sector sometimes), makes it read-only or `O_DIRECT`, picks the negotiated features, places
//! the rings anywhere, writes descriptors (chained, indirect, looped, out of range), headers of
//! every request type with any sector, discard segments and raw bytes anywhere in RAM, publishes
//! heads, moves the available index and `used_event`, serves, and resets the queue.
//!
//! Invariants (besides no panic, no hang, no leak):
//! - a serve writes guest RAM only inside buffers that a descriptor marks device-writable (in
//!   the descriptor table, or in an indirect table a descriptor points to) and inside the used
//!   ring (flags, index, elements, `avail_event`);
//! - the image never changes size, its bytes past the last whole sector never change, and a
//!   read-only image never changes at all;
//! - the used index in RAM advances exactly by the chains the runner completed, and every new
//!   used element names a descriptor inside the queue;
//! - a serve that succeeds consumed the whole available ring;
//! - a queue whose serve failed (NEEDS_RESET) is served no more until it is set up again.
//!
//! The RAM and used-ring checks are skipped for a serve in which a device-writable buffer
//! overlaps the rings or a descriptor table, or the used ring overlaps another ring or a table
//! (the device may then legitimately rewrite them).
#![no_main]

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::{Result, Unstructured};
use devices::virtio::blk::{Block, BlockConfig, BlockIo};
use devices::virtio::test_util::QueueRunner;
use devices::virtio::{QueueHandler, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::one_in;
use vfiovm_fuzz::trace;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: [0, 64 KiB) and [96 KiB, 160 KiB).
const REGIONS: [(u64, u64); 2] = [(0, 0x1_0000), (0x1_8000, 0x1_0000)];
const RAM_END: u64 = 0x2_8000;
const MAX_OPS: usize = 96;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

type Mem = GuestMemoryMmap<()>;

struct Image {
    path: std::path::PathBuf,
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn image(u: &mut Unstructured, direct: bool) -> Result<(Image, Vec<u8>)> {
    static N: AtomicU64 = AtomicU64::new(0);
    let sectors: usize = u.int_in_range(0..=64)?;
    let tail = if direct || !one_in(u, 4)? {
        0
    } else {
        u.int_in_range(1..=511)?
    };
    let size = if direct {
        (sectors * 512).next_multiple_of(4096)
    } else {
        sectors * 512 + tail
    };
    let data: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
    let path = std::env::temp_dir().join(format!(
        "vfiovm-fuzz-blk-{}-{}.raw",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, &data).expect("writing the fuzz image");
    Ok((Image { path }, data))
}

/// Where things go, biased to the places a driver uses.
#[derive(Debug, Clone, Copy)]
struct Layout {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

fn ring_addr(u: &mut Unstructured, default: u64, align: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary()?,
        1 => u.int_in_range(0..=RAM_END + 0x100)? & !(align - 1),
        2 => u.int_in_range(0..=RAM_END)?,
        _ => default,
    })
}

fn layout(u: &mut Unstructured) -> Result<Layout> {
    let size = 1u16 << u.int_in_range(0..=8)?;
    Ok(Layout {
        size,
        desc: ring_addr(u, 0x1000, 16)?,
        avail: ring_addr(u, 0x3000, 2)?,
        used: ring_addr(u, 0x4000, 4)?,
    })
}

/// A buffer address: mostly the data area, sometimes the hole, the edges, anywhere.
fn buf_addr(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary()?,
        1 => 0x1_0000 - u.int_in_range(0..=16)?,
        2 => 0x1_8000 + u.int_in_range(0..=0x100)?,
        3 => RAM_END - u.int_in_range(0..=16)?,
        4 => u.int_in_range(0..=RAM_END)?,
        _ => 0x8000 + 0x200 * u.int_in_range(0..=0x3f)?,
    })
}

fn buf_len(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary()?,
        1 => 0,
        2 => 1,
        3 => 16,
        4 => u.int_in_range(1..=64)?,
        _ => 512 * u.int_in_range(1..=8)?,
    })
}

/// The `(addr, len, flags)` of `n` descriptors of a table at `base` (unreadable ones left out).
fn table(mem: &Mem, base: u64, n: u64) -> Vec<(u64, u32, u16)> {
    (0..n)
        .filter_map(|i| {
            let at = base.checked_add(16 * i)?;
            Some((
                mem.read_obj::<u64>(GuestAddress(at)).ok()?,
                mem.read_obj::<u32>(GuestAddress(at.checked_add(8)?)).ok()?,
                mem.read_obj::<u16>(GuestAddress(at.checked_add(12)?))
                    .ok()?,
            ))
        })
        .collect()
}

/// The indirect tables the main table points to: `(addr, entries)`.
fn indirect_tables(mem: &Mem, l: &Layout) -> Vec<(u64, u64)> {
    table(mem, l.desc, u64::from(l.size))
        .into_iter()
        .filter(|d| d.2 & F_INDIRECT != 0)
        .map(|(addr, len, _)| (addr, u64::from(len / 16).min(4096)))
        .collect()
}

/// Every byte range a descriptor (main table, or an indirect table it points to) marks
/// device-writable: a superset of what any chain may let the device write.
fn writable_ranges(mem: &Mem, l: &Layout) -> Vec<(u64, u64)> {
    let mut descs = table(mem, l.desc, u64::from(l.size));
    for (addr, n) in indirect_tables(mem, l) {
        descs.extend(table(mem, addr, n));
    }
    descs
        .into_iter()
        .filter(|d| d.2 & F_WRITE != 0)
        .map(|(addr, len, _)| (addr, addr.saturating_add(u64::from(len))))
        .collect()
}

/// The ranges the rings and the descriptor tables take.
fn ring_ranges(mem: &Mem, l: &Layout) -> Vec<(u64, u64)> {
    let n = u64::from(l.size);
    let mut v = vec![
        (l.desc, l.desc.saturating_add(16 * n)),
        (l.avail, l.avail.saturating_add(6 + 2 * n)),
        (l.used, l.used.saturating_add(6 + 8 * n)),
    ];
    for (addr, n) in indirect_tables(mem, l) {
        v.push((addr, addr.saturating_add(16 * n)));
    }
    v
}

fn overlaps(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    a.iter().any(|x| {
        b.iter()
            .any(|y| x.0 < y.1 && y.0 < x.1 && x.0 < x.1 && y.0 < y.1)
    })
}

fn snapshot(mem: &Mem) -> Vec<u8> {
    let mut v = vec![0u8; RAM_END as usize];
    for (start, len) in REGIONS {
        let s = start as usize;
        mem.read_slice(&mut v[s..s + len as usize], GuestAddress(start))
            .expect("reading RAM");
    }
    v
}

struct Driver {
    avail_idx: u16,
}

/// Data slots: 16 of 1 KiB from 0x8000; a buffer never fills its slot, so a write past a
/// buffer's end lands in bytes no descriptor made writable.
const SLOT: u64 = 0x400;

/// Lays out a request as a driver does — header (maybe split), data split over up to four
/// descriptors at any split points, status — in the main table or an indirect table, with
/// one fuzz mutation at most (a flipped direction, a length, an address), and publishes it.
fn request(u: &mut Unstructured, mem: &Mem, l: &Layout, d: &mut Driver) -> Result<()> {
    let kind: u32 = match u.int_in_range(0u8..=7)? {
        0 | 1 => 0,
        2 | 3 => 1,
        4 => 4,
        5 => 8,
        6 => 11,
        _ => 13,
    };
    let sector: u64 = u.int_in_range(0..=66)?;
    let data_len: u64 = match kind {
        0 | 1 => 512 * u.int_in_range(0..=4)?,
        8 => 20,
        11 | 13 => 16,
        _ => 0,
    };
    let data_writable = matches!(kind, 0 | 8);
    let mut slot = 0u64;
    let mut place = |len: u64| {
        let at = 0x8000 + SLOT * (slot % 16);
        slot += 1;
        (at, len)
    };
    // (addr, len, writable)
    let mut bufs: Vec<(u64, u64, bool)> = Vec::new();
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    let (ha, _) = place(16);
    let _ = mem.write_slice(&h, GuestAddress(ha));
    if one_in(u, 3)? {
        let cut = u.int_in_range(1..=15)?;
        bufs.push((ha, cut, false));
        bufs.push((ha + cut, 16 - cut, false));
    } else {
        bufs.push((ha, 16, false));
    }
    if data_len > 0 {
        let pieces = u.int_in_range(1..=4u64)?;
        let mut left = data_len;
        for k in 0..pieces {
            let n = if k + 1 == pieces {
                left
            } else {
                u.int_in_range(0..=left)?
            };
            left -= n;
            let (at, _) = place(n);
            if !data_writable {
                let seg = match kind {
                    11 | 13 => {
                        let mut s = [0u8; 16];
                        s[..8].copy_from_slice(&u.int_in_range(0u64..=66)?.to_le_bytes());
                        s[8..12].copy_from_slice(&u.int_in_range(0u32..=66)?.to_le_bytes());
                        s[12..].copy_from_slice(&u.int_in_range(0u32..=1)?.to_le_bytes());
                        s.to_vec()
                    }
                    _ => (0..n).map(|i| (i as u8) ^ 0x5a).collect(),
                };
                let _ = mem.write_slice(&seg[..n as usize], GuestAddress(at));
            }
            bufs.push((at, n, data_writable));
        }
    }
    let (sa, _) = place(1);
    bufs.push((sa, 1, true));
    if one_in(u, 4)? {
        let k = u.int_in_range(0..=bufs.len() - 1)?;
        match u.int_in_range(0u8..=2)? {
            0 => bufs[k].2 = !bufs[k].2,
            1 => bufs[k].1 = u64::from(buf_len(u)?),
            _ => bufs[k].0 = buf_addr(u)?,
        }
    }
    let indirect = one_in(u, 3)?;
    let (base, first) = if indirect {
        (0x6000, 0u16)
    } else {
        (l.desc, u.int_in_range(0..=l.size - 1)?)
    };
    let n = if indirect { bufs.len() as u16 } else { l.size };
    for (k, &(addr, len, w)) in bufs.iter().enumerate() {
        let i = first.wrapping_add(k as u16) % n.max(1);
        let last = k + 1 == bufs.len();
        let flags = if last { 0 } else { F_NEXT } | if w { F_WRITE } else { 0 };
        let at = base.wrapping_add(16 * u64::from(i));
        let _ = mem.write_obj(addr, GuestAddress(at));
        let _ = mem.write_obj(len as u32, GuestAddress(at.wrapping_add(8)));
        let _ = mem.write_obj(flags, GuestAddress(at.wrapping_add(12)));
        let _ = mem.write_obj((i + 1) % n.max(1), GuestAddress(at.wrapping_add(14)));
    }
    let head = if indirect {
        let head = u.int_in_range(0..=l.size - 1)?;
        let at = l.desc.wrapping_add(16 * u64::from(head));
        let _ = mem.write_obj(0x6000u64, GuestAddress(at));
        let _ = mem.write_obj(16 * bufs.len() as u32, GuestAddress(at.wrapping_add(8)));
        let _ = mem.write_obj(F_INDIRECT, GuestAddress(at.wrapping_add(12)));
        head
    } else {
        first
    };
    let slot = u64::from(d.avail_idx % l.size);
    let _ = mem.write_obj(head, GuestAddress(l.avail.wrapping_add(4 + 2 * slot)));
    d.avail_idx = d.avail_idx.wrapping_add(1);
    let _ = mem.write_obj(d.avail_idx, GuestAddress(l.avail.wrapping_add(2)));
    trace!("request type {kind} sector {sector}: {bufs:x?} indirect {indirect} head {head}");
    Ok(())
}

fn run(u: &mut Unstructured) -> Result<()> {
    let regions: Vec<_> = REGIONS
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = Mem::from_ranges(&regions).expect("guest RAM");
    let readonly = one_in(u, 4)?;
    let direct = one_in(u, 6)?;
    let (img, original) = image(u, direct)?;
    let cfg = BlockConfig {
        path: img.path.clone(),
        readonly,
        direct,
        serial: if one_in(u, 2)? {
            Some("FUZZ-SERIAL".into())
        } else {
            None
        },
        id: None,
    };
    let io = if one_in(u, 3)? {
        BlockIo::Sync
    } else {
        BlockIo::Uring
    };
    let mut dev = match Block::open_with(&cfg, io) {
        Ok(d) => d,
        // A file system without O_DIRECT (tmpfs): nothing to fuzz here.
        Err(_) if direct => return Ok(()),
        Err(e) => panic!("opening the fuzz image: {e}"),
    };
    let capacity_bytes = dev.capacity() * 512;
    let offered = dev.features() | devices::virtio::TRANSPORT_FEATURES;
    let features = offered & u.arbitrary::<u64>()? | devices::virtio::VIRTIO_F_VERSION_1;
    let event_idx = features & devices::virtio::VIRTIO_F_RING_EVENT_IDX != 0;
    let mut handler: Box<dyn QueueHandler> = dev.activate(features).expect("activate");
    trace!(
        "image {} bytes, ro {readonly}, direct {direct}, {io:?}, features {features:#x}",
        original.len()
    );

    let mut l = layout(u)?;
    trace!("layout {l:?}");
    let mut runner =
        QueueRunner::new(&mem, 0, 256, l.size, (l.desc, l.avail, l.used), event_idx).ok();
    let mut d = Driver { avail_idx: 0 };
    let image_file = std::fs::File::open(&img.path).expect("reopening the image");

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=17)? {
            16 | 17 => request(u, &mem, &l, &mut d)?,
            0..=3 => {
                // A descriptor in the main table or an indirect table area.
                let base = if one_in(u, 4)? { 0x6000 } else { l.desc };
                let i = u64::from(u.int_in_range(0..=l.size.saturating_sub(1).max(15))?);
                let addr = if one_in(u, 8)? {
                    0x6000 + 16 * u.int_in_range(0..=7)?
                } else {
                    buf_addr(u)?
                };
                let len = buf_len(u)?;
                let flags: u16 = match u.int_in_range(0u8..=7)? {
                    0 => u.arbitrary()?,
                    1 => F_INDIRECT,
                    2 | 3 => F_NEXT,
                    4 | 5 => F_NEXT | F_WRITE,
                    6 => F_WRITE,
                    _ => 0,
                };
                let next: u16 = if one_in(u, 6)? {
                    u.arbitrary()?
                } else {
                    ((i + 1) % 16) as u16
                };
                let at = base.wrapping_add(16 * i);
                let _ = mem.write_obj(addr, GuestAddress(at));
                let _ = mem.write_obj(len, GuestAddress(at.wrapping_add(8)));
                let _ = mem.write_obj(flags, GuestAddress(at.wrapping_add(12)));
                let _ = mem.write_obj(next, GuestAddress(at.wrapping_add(14)));
                trace!("desc {base:#x}[{i}] = {addr:#x}+{len:#x} flags {flags:#x} next {next}");
            }
            4..=5 => {
                // A request header (and a discard segment after it) at a buffer address.
                let at = buf_addr(u)?;
                let kind: u32 = match u.int_in_range(0u8..=7)? {
                    0 => 0,
                    1 => 1,
                    2 => 4,
                    3 => 8,
                    4 => 11,
                    5 => 13,
                    _ => u.arbitrary()?,
                };
                let sector: u64 = match u.int_in_range(0u8..=3)? {
                    0 => u.arbitrary()?,
                    _ => u.int_in_range(0..=70)?,
                };
                let mut h = [0u8; 32];
                h[..4].copy_from_slice(&kind.to_le_bytes());
                h[8..16].copy_from_slice(&sector.to_le_bytes());
                h[16..24].copy_from_slice(&u.int_in_range(0u64..=70)?.to_le_bytes());
                h[24..28].copy_from_slice(&u.int_in_range(0u32..=70)?.to_le_bytes());
                h[28..32].copy_from_slice(&u.int_in_range(0u32..=3)?.to_le_bytes());
                let _ = mem.write_slice(&h, GuestAddress(at));
                trace!("header at {at:#x}: type {kind} sector {sector}");
            }
            6..=7 => {
                let head: u16 = if one_in(u, 8)? {
                    u.arbitrary()?
                } else {
                    u.int_in_range(0..=15)?
                };
                let slot = u64::from(d.avail_idx % l.size);
                let _ = mem.write_obj(head, GuestAddress(l.avail.wrapping_add(4 + 2 * slot)));
                d.avail_idx = d.avail_idx.wrapping_add(1);
                let _ = mem.write_obj(d.avail_idx, GuestAddress(l.avail.wrapping_add(2)));
                trace!("publish head {head}, avail idx {}", d.avail_idx);
            }
            8 => {
                d.avail_idx = u.arbitrary()?;
                let _ = mem.write_obj(d.avail_idx, GuestAddress(l.avail.wrapping_add(2)));
                trace!("avail idx = {}", d.avail_idx);
            }
            9 => {
                let v: u16 = u.arbitrary()?;
                let at = l.avail.wrapping_add(4 + 2 * u64::from(l.size));
                let _ = mem.write_obj(v, GuestAddress(at));
            }
            10 => {
                let at = u.int_in_range(0..=RAM_END)?;
                let len = u.int_in_range(0..=32)?;
                let mut b = vec![0u8; len];
                u.fill_buffer(&mut b)?;
                let _ = mem.write_slice(&b, GuestAddress(at));
            }
            11 => {
                // The driver resets and sets the queue up again (maybe elsewhere).
                if one_in(u, 2)? {
                    l = layout(u)?;
                }
                let _ = mem.write_slice(
                    &vec![0u8; 6 + 8 * usize::from(l.size)],
                    GuestAddress(l.used),
                );
                let _ = mem.write_obj(0u16, GuestAddress(l.avail.wrapping_add(2)));
                d.avail_idx = 0;
                runner =
                    QueueRunner::new(&mem, 0, 256, l.size, (l.desc, l.avail, l.used), event_idx)
                        .ok();
                // A device reset drops the handler (waiting for what it has in flight).
                drop(handler);
                handler = dev.activate(features).expect("activate");
                trace!("queue reset: {l:?} valid {}", runner.is_some());
            }
            12..=15 => {
                let Some(r) = runner.as_mut() else { continue };
                let before = snapshot(&mem);
                let writable = writable_ranges(&mem, &l);
                let rings = ring_ranges(&mem, &l);
                // The used ring over another ring or a table: the device's own used-ring
                // writes rewrite them (an available index read back as the used index).
                let used_ring = [rings[2]];
                let others: Vec<_> = rings
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != 2)
                    .map(|(_, r)| *r)
                    .collect();
                let self_modifying = overlaps(&writable, &rings) || overlaps(&used_ring, &others);
                let used_before: u16 = mem
                    .read_obj(GuestAddress(l.used.wrapping_add(2)))
                    .unwrap_or(0);
                let completed_before = r.next_used();
                let res = r.serve(&mem, handler.as_mut());
                trace!("serve: {res:?}");
                let after = snapshot(&mem);
                if !self_modifying {
                    let used_end = l.used.saturating_add(6 + 8 * u64::from(l.size));
                    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
                        if a == b {
                            continue;
                        }
                        let at = i as u64;
                        let ok = (at >= l.used && at < used_end)
                            || writable.iter().any(|&(s, e)| at >= s && at < e);
                        assert!(ok, "the device wrote guest RAM at {at:#x}, outside every writable buffer and the used ring");
                    }
                    let used_after: u16 = mem
                        .read_obj(GuestAddress(l.used.wrapping_add(2)))
                        .unwrap_or(0);
                    let completed = r.next_used().wrapping_sub(completed_before);
                    trace!("used idx {used_before} -> {used_after}, completed {completed}");
                    assert_eq!(
                        used_after.wrapping_sub(used_before),
                        completed,
                        "used index moved by other than the completions"
                    );
                    for k in 0..completed {
                        let slot = u64::from(used_before.wrapping_add(k) % l.size);
                        let id: u32 = mem
                            .read_obj(GuestAddress(l.used.wrapping_add(4 + 8 * slot)))
                            .unwrap_or(0);
                        assert!(
                            id < u32::from(l.size),
                            "used element names descriptor {id} of a {}-entry queue",
                            l.size
                        );
                    }
                    if res.is_ok() {
                        let avail: u16 = mem
                            .read_obj(GuestAddress(l.avail.wrapping_add(2)))
                            .unwrap_or(0);
                        assert_eq!(
                            r.next_avail(),
                            avail,
                            "a successful serve left available chains"
                        );
                    }
                }
                if res.is_err() {
                    // NEEDS_RESET: the device serves this queue no more.
                    runner = None;
                }
            }
            _ => unreachable!("op range"),
        }
        let mut now = vec![0u8; original.len() + 1];
        let n = image_file.read_at(&mut now, 0).expect("reading the image");
        assert_eq!(n, original.len(), "the image changed size");
        let now = &now[..n];
        if readonly {
            assert!(now == &original[..], "a read-only image changed");
        }
        let whole = capacity_bytes as usize;
        assert!(
            now[whole..] == original[whole..],
            "bytes past the last sector changed"
        );
    }
    drop(handler);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
