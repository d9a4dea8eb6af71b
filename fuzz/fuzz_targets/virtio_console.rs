//! The virtio-console handler (`devices::virtio::console`) on both of its queues, driven through
//! `virtio::test_util::QueueSet` exactly as the device's I/O thread drives it (`ready` with
//! every reason: a queue notify, host input, room on the output). Guest RAM has a hole; the
//! input picks the negotiated ring features, places both queues' rings anywhere, writes
//! descriptors (chained, indirect, looped, out of range, any flags), lays out transmit chains
//! and receive buffers as a driver does with one mutation at most, writes raw bytes anywhere,
//! moves the available indices and `used_event`, pushes host input (more than the buffer
//! holds), reads the host output in pieces, and resets the queues. The output is a pipe of one
//! page that the harness reads when the input says (so it is often full), or a regular file
//! (never full).
//!
//! Invariants (besides no panic, no hang, no leak):
//! - a `ready` writes guest RAM only inside buffers that a descriptor of either queue marks
//!   device-writable (in the tables, or in an indirect table one of them points to) and inside
//!   the two used rings;
//! - after a `ready` that completed chains on a queue, its used index in RAM is the device's
//!   count of completions (so it moved by exactly the chains completed), and every new used
//!   element names a descriptor inside its queue;
//! - no host input is lost or duplicated: bytes pushed = bytes delivered to the guest + bytes
//!   still buffered, and a push takes at most the room left (the buffer never exceeds its
//!   size);
//! - no guest output is invented: the bytes the device counts as written equal the bytes that
//!   reached the host output;
//! - a `ready` that succeeds leaves no available receive chain while host input is buffered,
//!   and, with a file as the output (never full), no available transmit chain;
//! - after a `ready` fails (NEEDS_RESET) the queues are served no more until set up again.
//!
//! The RAM and used-ring checks are skipped for a `ready` in which a device-writable buffer
//! overlaps the rings or a descriptor table, or the two queues' rings overlap each other (the
//! device may then legitimately rewrite them).
#![no_main]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use devices::virtio::console::{
    Console, HostInput, HostOutput, INPUT_MAX, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use devices::virtio::test_util::QueueSet;
use devices::virtio::{QueueHandler, Ready, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::one_in;
use vfiovm_fuzz::trace;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: [0, 64 KiB) and [96 KiB, 160 KiB).
const REGIONS: [(u64, u64); 2] = [(0, 0x1_0000), (0x1_8000, 0x1_0000)];
const RAM_END: u64 = 0x2_8000;
const MAX_OPS: usize = 128;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// Indirect tables the well-formed chains use, one per queue.
const INDIRECT: [u64; 2] = [0x6000, 0x6800];
/// Data slots: 16 of 1 KiB from 0x8000.
const SLOT: u64 = 0x400;

type Mem = GuestMemoryMmap<()>;

/// One queue's rings.
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

fn layout(u: &mut Unstructured, q: u16) -> Result<Layout> {
    let size = 1u16 << u.int_in_range(0..=7)?;
    let base = 0x1000 + 0x2800 * u64::from(q);
    Ok(Layout {
        size,
        desc: ring_addr(u, base, 16)?,
        avail: ring_addr(u, base + 0x800, 2)?,
        used: ring_addr(u, base + 0x1000, 4)?,
    })
}

fn buf_addr(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary()?,
        1 => 0x1_0000 - u.int_in_range(0..=16)?,
        2 => 0x1_8000 + u.int_in_range(0..=0x100)?,
        3 => RAM_END - u.int_in_range(0..=16)?,
        4 => u.int_in_range(0..=RAM_END)?,
        _ => 0x8000 + SLOT * u.int_in_range(0..=15)?,
    })
}

fn buf_len(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0u8..=9)? {
        0 => u.arbitrary()?,
        1 => 0,
        2 => 1,
        3 => u.int_in_range(1..=16)?,
        _ => u.int_in_range(1..=1000)?,
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

fn indirect_tables(mem: &Mem, l: &Layout) -> Vec<(u64, u64)> {
    table(mem, l.desc, u64::from(l.size))
        .into_iter()
        .filter(|d| d.2 & F_INDIRECT != 0)
        .map(|(addr, len, _)| (addr, u64::from(len / 16).min(4096)))
        .collect()
}

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

fn read16(mem: &Mem, at: u64) -> u16 {
    mem.read_obj(GuestAddress(at)).unwrap_or(0)
}

/// The driver's side of the queues.
struct Driver {
    l: [Layout; 2],
    avail_idx: [u16; 2],
}

impl Driver {
    fn publish(&mut self, mem: &Mem, q: usize, head: u16) {
        let l = self.l[q];
        let slot = u64::from(self.avail_idx[q] % l.size);
        let _ = mem.write_obj(head, GuestAddress(l.avail.wrapping_add(4 + 2 * slot)));
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx[q], GuestAddress(l.avail.wrapping_add(2)));
    }
}

/// A transmit chain (1–4 readable buffers of text) or a receive buffer (1–2 writable
/// buffers) laid out as a driver does, in the table or an indirect table, with one mutation
/// at most, and published.
fn chain(u: &mut Unstructured, mem: &Mem, d: &mut Driver, q: usize) -> Result<()> {
    let tx = q == usize::from(TX_QUEUE);
    let pieces = u.int_in_range(1..=if tx { 4 } else { 2 })?;
    let mut bufs: Vec<(u64, u32, bool)> = Vec::new();
    for _ in 0..pieces {
        let at = 0x8000 + SLOT * u.int_in_range(0..=15)?;
        let len = u.int_in_range(0..=SLOT as u32)?;
        if tx {
            let text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let _ = mem.write_slice(&text, GuestAddress(at));
        }
        bufs.push((at, len, !tx));
    }
    if one_in(u, 4)? {
        let k = u.int_in_range(0..=bufs.len() - 1)?;
        match u.int_in_range(0u8..=2)? {
            0 => bufs[k].2 = !bufs[k].2,
            1 => bufs[k].1 = buf_len(u)?,
            _ => bufs[k].0 = buf_addr(u)?,
        }
    }
    let l = d.l[q];
    let indirect = one_in(u, 4)?;
    let (base, first) = if indirect {
        (INDIRECT[q], 0u16)
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
        let _ = mem.write_obj(len, GuestAddress(at.wrapping_add(8)));
        let _ = mem.write_obj(flags, GuestAddress(at.wrapping_add(12)));
        let _ = mem.write_obj((i + 1) % n.max(1), GuestAddress(at.wrapping_add(14)));
    }
    let head = if indirect {
        let head = u.int_in_range(0..=l.size - 1)?;
        let at = l.desc.wrapping_add(16 * u64::from(head));
        let _ = mem.write_obj(INDIRECT[q], GuestAddress(at));
        let _ = mem.write_obj(16 * bufs.len() as u32, GuestAddress(at.wrapping_add(8)));
        let _ = mem.write_obj(F_INDIRECT, GuestAddress(at.wrapping_add(12)));
        head
    } else {
        first
    };
    d.publish(mem, q, head);
    trace!("queue {q} chain {bufs:x?} indirect {indirect} head {head}");
    Ok(())
}

/// Where the guest's output goes.
enum Out {
    /// A one-page pipe; the harness reads it when the input says.
    Pipe { read: File, _write: OwnedFd },
    /// A regular file, never full.
    File(std::path::PathBuf),
}

impl Drop for Out {
    fn drop(&mut self) {
        if let Out::File(p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn output(u: &mut Unstructured) -> Result<(Out, HostOutput)> {
    if one_in(u, 3)? {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "vfiovm-fuzz-console-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = File::create(&path).expect("creating the output file");
        let out = HostOutput::for_fd(f.as_raw_fd()).expect("output to a file");
        return Ok((Out::File(path), out));
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, an array of two ints.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: a fresh descriptor owned by nobody else.
    let read = unsafe { File::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    // SAFETY: F_SETPIPE_SZ takes an int; no pointers.
    unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, 4096) };
    let out = HostOutput::for_fd(write.as_raw_fd()).expect("output to a pipe");
    Ok((
        Out::Pipe {
            read,
            _write: write,
        },
        out,
    ))
}

/// Bytes that reached the output so far (`read`: what the harness already took from a pipe).
fn reached(out: &Out, read: u64) -> u64 {
    match out {
        Out::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
        Out::Pipe { read: r, .. } => {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int into `n`.
            let rc = unsafe { libc::ioctl(r.as_raw_fd(), libc::FIONREAD, &mut n) };
            assert_eq!(rc, 0, "FIONREAD");
            read + n as u64
        }
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let regions: Vec<_> = REGIONS
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = Mem::from_ranges(&regions).expect("guest RAM");
    let input = Arc::new(HostInput::new().expect("eventfds"));
    let (mut out, host_out) = output(u)?;
    let never_full = matches!(out, Out::File(_));
    let mut dev = Console::new(input.clone(), host_out);
    let stats = dev.stats();
    let offered = dev.features() | devices::virtio::TRANSPORT_FEATURES;
    let features = offered & u.arbitrary::<u64>()? | devices::virtio::VIRTIO_F_VERSION_1;
    let event_idx = features & devices::virtio::VIRTIO_F_RING_EVENT_IDX != 0;
    let mut handler: Box<dyn QueueHandler> = dev.activate(features).expect("activate");

    let mut d = Driver {
        l: [layout(u, 0)?, layout(u, 1)?],
        avail_idx: [0; 2],
    };
    let setup = |d: &Driver| {
        let mut set = QueueSet::new(2);
        for q in 0..2u16 {
            let l = d.l[usize::from(q)];
            set.set(
                &mem,
                q,
                QUEUE_SIZE,
                l.size,
                (l.desc, l.avail, l.used),
                event_idx,
            )
            .ok()?;
        }
        Some(set)
    };
    let mut queues = setup(&d);
    trace!(
        "output to a {}, features {features:#x}, queues {:?} valid {}",
        if never_full { "file" } else { "pipe" },
        d.l,
        queues.is_some()
    );
    let mut pushed = 0u64;
    let mut taken = 0u64;

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=19)? {
            0..=2 => chain(u, &mem, &mut d, usize::from(TX_QUEUE))?,
            3..=4 => chain(u, &mem, &mut d, usize::from(RX_QUEUE))?,
            5..=6 => {
                // A raw descriptor in either queue's table or indirect area.
                let q = usize::from(u.int_in_range(0u8..=1)?);
                let l = d.l[q];
                let base = if one_in(u, 4)? { INDIRECT[q] } else { l.desc };
                let i = u64::from(u.int_in_range(0..=l.size.saturating_sub(1).max(15))?);
                let addr = if one_in(u, 8)? {
                    INDIRECT[q] + 16 * u.int_in_range(0..=7)?
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
            7 => {
                let q = usize::from(u.int_in_range(0u8..=1)?);
                let head: u16 = if one_in(u, 8)? {
                    u.arbitrary()?
                } else {
                    u.int_in_range(0..=15)?
                };
                d.publish(&mem, q, head);
                trace!("queue {q} publish head {head}");
            }
            8 => {
                let q = usize::from(u.int_in_range(0u8..=1)?);
                d.avail_idx[q] = u.arbitrary()?;
                let _ = mem.write_obj(d.avail_idx[q], GuestAddress(d.l[q].avail.wrapping_add(2)));
                trace!("queue {q} avail idx = {}", d.avail_idx[q]);
            }
            9 => {
                // used_event
                let q = usize::from(u.int_in_range(0u8..=1)?);
                let l = d.l[q];
                let v: u16 = u.arbitrary()?;
                let _ = mem.write_obj(
                    v,
                    GuestAddress(l.avail.wrapping_add(4 + 2 * u64::from(l.size))),
                );
            }
            10 => {
                let at = u.int_in_range(0..=RAM_END)?;
                let len = u.int_in_range(0..=32)?;
                let mut b = vec![0u8; len];
                u.fill_buffer(&mut b)?;
                let _ = mem.write_slice(&b, GuestAddress(at));
            }
            11..=12 => {
                // Host input: a few bytes, or more than the buffer holds.
                let len = if one_in(u, 8)? {
                    u.int_in_range(0..=2 * INPUT_MAX)?
                } else {
                    u.int_in_range(0..=64)?
                };
                let bytes: Vec<u8> = (0..len).map(|i| (pushed as usize + i) as u8).collect();
                let room = INPUT_MAX - input.len();
                let n = input.push(&bytes);
                assert_eq!(n, len.min(room), "a push takes exactly the room left");
                pushed += n as u64;
                trace!("host input {len} bytes, {n} taken");
            }
            13 => {
                // The host reads some output.
                if let Out::Pipe { read, .. } = &mut out {
                    let mut b = vec![0u8; u.int_in_range(1..=8192)?];
                    // SAFETY: F_SETFL with O_NONBLOCK; no pointers.
                    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
                    if let Ok(n) = read.read(&mut b) {
                        taken += n as u64;
                    }
                }
            }
            14 => {
                // The driver resets and sets the queues up again (maybe elsewhere): the
                // device makes a new handler, as at the next DRIVER_OK.
                if one_in(u, 2)? {
                    d.l = [layout(u, 0)?, layout(u, 1)?];
                }
                for l in d.l {
                    let _ = mem.write_slice(
                        &vec![0u8; 6 + 8 * usize::from(l.size)],
                        GuestAddress(l.used),
                    );
                    let _ = mem.write_obj(0u16, GuestAddress(l.avail.wrapping_add(2)));
                }
                d.avail_idx = [0; 2];
                drop(handler);
                dev.reset();
                handler = dev.activate(features).expect("activate");
                queues = setup(&d);
                trace!("reset: {:?} valid {}", d.l, queues.is_some());
            }
            15..=19 => {
                let Some(set) = queues.as_mut() else { continue };
                let why = match u.int_in_range(0u8..=3)? {
                    0 => Ready::Queue(RX_QUEUE),
                    1 => Ready::Queue(TX_QUEUE),
                    2 => Ready::Fd(0),
                    _ => Ready::Writable(0),
                };
                let before = snapshot(&mem);
                let mut writable = writable_ranges(&mem, &d.l[0]);
                writable.extend(writable_ranges(&mem, &d.l[1]));
                let rings0 = ring_ranges(&mem, &d.l[0]);
                let rings1 = ring_ranges(&mem, &d.l[1]);
                // The device may rewrite the rings when a writable buffer covers them, or one
                // queue's used ring another queue's rings.
                let self_modifying = overlaps(&writable, &rings0)
                    || overlaps(&writable, &rings1)
                    || overlaps(&rings0, &rings1);
                let completed_before = [set.next_used(0), set.next_used(1)];
                let res = set.ready(&mem, handler.as_mut(), why);
                trace!("ready {why:?}: {res:?}");
                let after = snapshot(&mem);
                if !self_modifying {
                    let used_ends: Vec<(u64, u64)> =
                        d.l.iter()
                            .map(|l| (l.used, l.used.saturating_add(6 + 8 * u64::from(l.size))))
                            .collect();
                    // 64-byte blocks first: most of RAM is unchanged.
                    let blocks = before.chunks(64).zip(after.chunks(64)).enumerate();
                    for (k, (ba, bb)) in blocks.filter(|(_, (a, b))| a != b) {
                        for (i, (a, b)) in ba.iter().zip(bb).enumerate() {
                            if a == b {
                                continue;
                            }
                            let at = (64 * k + i) as u64;
                            let ok = used_ends.iter().any(|&(s, e)| at >= s && at < e)
                                || writable.iter().any(|&(s, e)| at >= s && at < e);
                            assert!(ok, "the device wrote guest RAM at {at:#x}, outside every writable buffer and the used rings");
                        }
                    }
                    for (q, (l, before_q)) in d.l.iter().zip(completed_before).enumerate() {
                        let next_used = set.next_used(q as u16);
                        let completed = next_used.wrapping_sub(before_q);
                        if completed == 0 {
                            // The driver may have written anything there since.
                            continue;
                        }
                        assert_eq!(
                            read16(&mem, l.used.wrapping_add(2)),
                            next_used,
                            "queue {q}: the used index in RAM is not the device's count of completions"
                        );
                        for k in 0..completed {
                            let slot = u64::from(before_q.wrapping_add(k) % l.size);
                            let id: u32 = mem
                                .read_obj(GuestAddress(l.used.wrapping_add(4 + 8 * slot)))
                                .unwrap_or(0);
                            assert!(
                                id < u32::from(l.size),
                                "queue {q}: used element names descriptor {id} of a {}-entry queue",
                                l.size
                            );
                        }
                    }
                    if res.1.is_none() {
                        let avail = |q: usize| read16(&mem, d.l[q].avail.wrapping_add(2));
                        if !input.is_empty() {
                            assert_eq!(
                                set.next_avail(RX_QUEUE),
                                avail(0),
                                "input waits while receive chains are available"
                            );
                        }
                        if never_full {
                            assert_eq!(
                                set.next_avail(TX_QUEUE),
                                avail(1),
                                "transmit chains left while the output has room"
                            );
                        }
                    }
                }
                if res.1.is_some() {
                    // NEEDS_RESET: nothing is served until the driver sets the queues up again.
                    queues = None;
                }
            }
            _ => unreachable!("op range"),
        }
        let delivered = stats.rx_bytes.load(Ordering::Relaxed);
        assert!(
            input.len() <= INPUT_MAX,
            "the input buffer grew past its size"
        );
        assert_eq!(
            pushed,
            delivered + input.len() as u64,
            "host input lost or duplicated"
        );
        assert_eq!(
            stats.tx_bytes.load(Ordering::Relaxed),
            reached(&out, taken),
            "output counted as written differs from what reached the host"
        );
    }
    drop(handler);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
