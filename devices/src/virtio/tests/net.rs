//! virtio-net through the transport, as a guest driver uses it: frames between guest buffers
//! and a backend (a datagram socket pair, which keeps frame boundaries as a tap does, or a
//! real tap where one can be made), the header both ways, `num_buffers`, offload negotiation,
//! and what a hostile driver can put on the queues.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use super::*;
use crate::virtio::net::{
    features as f, tap_offloads, MacAddr, Net, NetBackend, NetStats, CONFIG_LEN, NET_HDR_LEN,
    RX_QUEUE, TX_QUEUE,
};
use crate::virtio::pci::DEVICE_CFG_OFFSET;
use crate::virtio::tap::Tap;
use crate::virtio::VIRTIO_F_RING_EVENT_IDX;

/// One end of a socket pair as the device's backend; the test holds the other.
struct PairBackend {
    sock: UnixDatagram,
    offload: Mutex<Vec<u32>>,
}

impl NetBackend for PairBackend {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
    fn set_offload(&self, tun_flags: u32) -> std::io::Result<()> {
        self.offload.lock().unwrap().push(tun_flags);
        Ok(())
    }
}

struct Rig {
    d: Driver,
    peer: UnixDatagram,
    backend: Arc<PairBackend>,
    stats: Arc<NetStats>,
}

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
/// Guest buffers start here (the rings are below 0x30000).
const BUF: u64 = 0x10_0000;

fn rig(features: u64) -> Rig {
    let (a, peer) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(WAIT)).unwrap();
    let backend = Arc::new(PairBackend {
        sock: a,
        offload: Mutex::new(Vec::new()),
    });
    let net = Net::new(backend.clone(), MAC).unwrap();
    let stats = net.stats();
    let mut d = Driver::named("virtio-net-test", Box::new(net));
    d.bring_up(features, &[256, 256]);
    Rig {
        d,
        peer,
        backend,
        stats,
    }
}

fn hdr(flags: u8, gso: u8, num_buffers: u16) -> [u8; NET_HDR_LEN] {
    let mut h = [0u8; NET_HDR_LEN];
    h[0] = flags;
    h[1] = gso;
    h[2..4].copy_from_slice(&14u16.to_le_bytes()); // hdr_len
    h[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
    h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn stat(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn read_guest(d: &Driver, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    d.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

/// Nothing more from the device on the backend.
fn assert_backend_quiet(r: &Rig) {
    r.peer
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut b = [0u8; 64];
    assert!(r.peer.recv(&mut b).is_err(), "the backend got a frame");
    r.peer.set_read_timeout(Some(WAIT)).unwrap();
}

#[test]
fn identity_config_and_features() {
    let mut d = Driver::named(
        "virtio-net-test",
        Box::new(
            Net::new(
                Arc::new(PairBackend {
                    sock: UnixDatagram::pair().unwrap().0,
                    offload: Mutex::new(Vec::new()),
                }),
                MAC,
            )
            .unwrap(),
        ),
    );
    assert_eq!(d.cfg_read16(2), 0x1041);
    assert_eq!(d.cfg_read32(8) >> 8, 0x02_00_00, "Ethernet controller");
    let offered = d.device_features();
    for bit in [
        f::CSUM,
        f::GUEST_CSUM,
        f::MAC,
        f::STATUS,
        f::MRG_RXBUF,
        f::HOST_TSO4,
        f::HOST_TSO6,
        f::GUEST_TSO4,
        f::GUEST_TSO6,
        f::GUEST_ECN,
        f::HOST_ECN,
        VIRTIO_F_VERSION_1,
    ] {
        assert_ne!(offered & bit, 0, "bit {bit:#x} offered");
    }
    let mut cfg = [0u8; CONFIG_LEN];
    d.dev.bar_read(0, DEVICE_CFG_OFFSET, &mut cfg);
    assert_eq!(&cfg[..6], &MAC.0);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1, "one queue pair");
    // The MAC is read-only with VERSION_1.
    d.dev.bar_write(0, DEVICE_CFG_OFFSET, &[0xee; 6]);
    d.dev.bar_read(0, DEVICE_CFG_OFFSET, &mut cfg);
    assert_eq!(&cfg[..6], &MAC.0);
}

#[test]
fn mac_addresses() {
    assert_eq!(MacAddr::parse("52:54:00:12:34:56").unwrap(), MAC);
    assert_eq!(MacAddr::parse("52-54-00-12-34-56").unwrap(), MAC);
    assert_eq!(MAC.to_string(), "52:54:00:12:34:56");
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "5254.0012.3456",
        "52:54:00:12:34:5g",
        "052:54:00:12:34:56",
    ] {
        assert!(
            matches!(
                MacAddr::parse(bad),
                Err(crate::virtio::net::MacError::Syntax(_))
            ),
            "{bad}"
        );
    }
    assert!(MacAddr::parse("01:00:5e:00:00:01")
        .unwrap_err()
        .to_string()
        .contains("multicast"));
    assert!(MacAddr::parse("00:00:00:00:00:00")
        .unwrap_err()
        .to_string()
        .contains("all-zero"));
    let a = MacAddr::from_seed("tap0");
    assert_eq!(a, MacAddr::from_seed("tap0"), "stable");
    assert_ne!(a, MacAddr::from_seed("tap1"));
    assert_eq!(&a.0[..3], &[0x52, 0x54, 0x00]);
}

#[test]
fn transmitted_frame_reaches_the_backend_with_its_header() {
    let mut r = rig(f::CSUM | f::HOST_TSO4);
    let h = hdr(1, 1, 7); // NEEDS_CSUM, GSO TCPv4; num_buffers (meaningless here) as well
    let fr = frame(1500, 3);
    r.d.mem.write_slice(&h, GuestAddress(BUF)).unwrap();
    r.d.mem
        .write_slice(&fr, GuestAddress(BUF + 0x1000))
        .unwrap();
    // Header and frame in separate descriptors, as Linux does.
    let head = r.d.queues[1].add(
        &r.d.mem,
        &[
            (BUF, NET_HDR_LEN as u32, false),
            (BUF + 0x1000, 1500, false),
        ],
    );
    r.d.notify(TX_QUEUE);
    assert_eq!(r.d.queues[1].wait_used(&r.d.mem), (u32::from(head), 0));
    let mut got = vec![0u8; 4096];
    let n = r.peer.recv(&mut got).unwrap();
    assert_eq!(n, NET_HDR_LEN + 1500);
    assert_eq!(
        &got[..NET_HDR_LEN],
        &h[..],
        "the header goes to the tap as the guest wrote it (a tap skips num_buffers)"
    );
    assert_eq!(&got[NET_HDR_LEN..n], &fr[..]);
    assert_eq!(stat(&r.stats.tx_frames), 1);
    assert_eq!(r.d.wait_deliveries(1), vec![(r.d.gsis[2], Driver::msg(2))]);
}

#[test]
fn received_frame_reaches_a_guest_buffer_with_num_buffers_one() {
    let mut r = rig(f::GUEST_CSUM);
    assert_eq!(*r.backend.offload.lock().unwrap(), vec![libc::TUN_F_CSUM]);
    for i in 0..2 {
        r.d.queues[0].add(&r.d.mem, &[(BUF + 0x1000 * i, 1526, true)]);
    }
    r.d.notify(RX_QUEUE);
    let mut out = hdr(2, 0, 0).to_vec(); // DATA_VALID
    out.extend(frame(100, 9));
    r.peer.send(&out).unwrap();
    let (id, len) = r.d.queues[0].wait_used(&r.d.mem);
    assert_eq!((id, len), (0, 112));
    let got = read_guest(&r.d, BUF, 112);
    assert_eq!(
        got[0], 2,
        "the tap's flags reach a guest that took GUEST_CSUM"
    );
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[NET_HDR_LEN..], &out[NET_HDR_LEN..]);
    assert_eq!(r.d.wait_deliveries(1), vec![(r.d.gsis[1], Driver::msg(1))]);
    // A second frame takes the second buffer.
    r.peer.send(&out[..60]).unwrap();
    assert_eq!(r.d.queues[0].wait_used(&r.d.mem), (1, 60));
    assert_eq!(stat(&r.stats.rx_frames), 2);
}

#[test]
fn a_frame_waits_for_the_driver_to_add_buffers() {
    let mut r = rig(0);
    let mut out = hdr(2, 1, 0).to_vec();
    out.extend(frame(200, 1));
    r.peer.send(&out).unwrap();
    r.peer.send(&out[..80]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.d.queues[0].used_idx(&r.d.mem), 0);
    r.d.queues[0].add(&r.d.mem, &[(BUF, 2048, true)]);
    r.d.notify(RX_QUEUE);
    assert_eq!(r.d.queues[0].wait_used(&r.d.mem), (0, 212));
    let got = read_guest(&r.d, BUF, 212);
    assert_eq!(
        &got[..10],
        &[0; 10],
        "no GUEST_CSUM: flags and GSO fields cleared"
    );
    assert_eq!(&got[NET_HDR_LEN..], &out[NET_HDR_LEN..]);
    // The second frame is still queued in the backend; one more buffer brings it in.
    r.d.queues[0].add(&r.d.mem, &[(BUF + 0x1000, 2048, true)]);
    r.d.notify(RX_QUEUE);
    assert_eq!(r.d.queues[0].wait_used(&r.d.mem), (1, 80));
}

#[test]
fn mergeable_buffers_split_a_frame_and_count_them() {
    let mut r = rig(f::MRG_RXBUF | VIRTIO_F_RING_EVENT_IDX);
    // Two buffers of 64 bytes cannot hold 162 bytes: the frame waits for more.
    for i in 0..2 {
        r.d.queues[0].add(&r.d.mem, &[(BUF + 0x1000 * i, 64, true)]);
    }
    r.d.notify(RX_QUEUE);
    let mut out = hdr(0, 0, 0).to_vec();
    out.extend(frame(150, 5));
    r.peer.send(&out).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        r.d.queues[0].used_idx(&r.d.mem),
        0,
        "two buffers hold 128 of 162 bytes"
    );
    for i in 2..4 {
        r.d.queues[0].add(&r.d.mem, &[(BUF + 0x1000 * i, 64, true)]);
    }
    r.d.notify(RX_QUEUE);
    let used: Vec<_> = (0..3).map(|_| r.d.queues[0].wait_used(&r.d.mem)).collect();
    assert_eq!(used, vec![(0, 64), (1, 64), (2, 34)]);
    let first = read_guest(&r.d, BUF, 64);
    assert_eq!(u16::from_le_bytes([first[10], first[11]]), 3, "num_buffers");
    let mut all = first[NET_HDR_LEN..].to_vec();
    all.extend(read_guest(&r.d, BUF + 0x1000, 64));
    all.extend(read_guest(&r.d, BUF + 0x2000, 34));
    assert_eq!(all, out[NET_HDR_LEN..]);
    assert_eq!(stat(&r.stats.rx_frames), 1);
}

/// The device reads a frame straight into as many mergeable buffers as the last frame took:
/// a frame longer than that (taken partly into its own buffer, then spread over more chains)
/// and one shorter (the chains it did not need given back) both arrive whole, in order, with
/// the right `num_buffers`, and no chain is lost.
#[test]
fn mergeable_frames_of_changing_sizes_arrive_whole() {
    let mut r = rig(f::MRG_RXBUF | f::GUEST_CSUM | VIRTIO_F_RING_EVENT_IDX);
    const N: u64 = 64;
    for i in 0..N {
        r.d.queues[0].add(&r.d.mem, &[(BUF + 0x1000 * i, 256, true)]);
    }
    r.d.notify(RX_QUEUE);
    let sizes = [100usize, 3000, 3000, 100, 700, 5000, 20, 244, 245];
    let mut sent = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let mut out = hdr(1, 1, 0).to_vec();
        out.extend(frame(len, i as u8));
        r.peer.send(&out).unwrap();
        sent.push(out);
    }
    let mut next_buf = 0u64;
    for out in &sent {
        let (id, len) = r.d.queues[0].wait_used(&r.d.mem);
        assert_eq!(
            u64::from(id),
            next_buf,
            "chains are used in the order they were lent"
        );
        let mut got = read_guest(&r.d, BUF + 0x1000 * u64::from(id), len as usize);
        let count = u16::from_le_bytes([got[10], got[11]]);
        assert_eq!(
            usize::from(count),
            out.len().div_ceil(256),
            "num_buffers of a {}-byte frame",
            out.len()
        );
        for _ in 1..count {
            let (id, len) = r.d.queues[0].wait_used(&r.d.mem);
            got.extend(read_guest(&r.d, BUF + 0x1000 * u64::from(id), len as usize));
        }
        next_buf += u64::from(count);
        assert_eq!(
            &got[..10],
            &out[..10],
            "GUEST_CSUM: the kernel's header kept"
        );
        assert_eq!(&got[NET_HDR_LEN..], &out[NET_HDR_LEN..]);
    }
    assert_eq!(stat(&r.stats.rx_frames), sizes.len() as u64);
    assert_eq!(stat(&r.stats.rx_dropped), 0);
}

#[test]
fn offloads_follow_what_the_driver_accepted() {
    assert_eq!(tap_offloads(0), 0);
    assert_eq!(
        tap_offloads(f::GUEST_TSO4),
        0,
        "TSO without checksum offload is not used"
    );
    assert_eq!(tap_offloads(f::GUEST_CSUM), libc::TUN_F_CSUM);
    assert_eq!(
        tap_offloads(f::GUEST_CSUM | f::GUEST_TSO4 | f::GUEST_TSO6 | f::GUEST_ECN),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN
    );
    assert_eq!(tap_offloads(f::GUEST_CSUM | f::GUEST_ECN), libc::TUN_F_CSUM);
    let r = rig(f::GUEST_CSUM | f::GUEST_TSO6);
    assert_eq!(
        *r.backend.offload.lock().unwrap(),
        vec![libc::TUN_F_CSUM | libc::TUN_F_TSO6]
    );
}

// ---- hostile drivers ---------------------------------------------------------------------

#[test]
fn malformed_transmit_chains_are_dropped_and_counted() {
    let mut r = rig(0);
    let m = r.d.mem.clone();
    m.write_slice(&hdr(0, 0, 0), GuestAddress(BUF)).unwrap();
    let cases: [&[(u64, u32, bool)]; 5] = [
        &[(BUF, 0, false)],                                            // zero length
        &[(BUF, 5, false)],                                            // shorter than the header
        &[(BUF, NET_HDR_LEN as u32, false), (BUF + 0x1000, 64, true)], // a writable buffer
        &[(BUF, 64, true)],                                            // only writable
        &[(BUF, NET_HDR_LEN as u32 + 70000, false)],                   // longer than any frame
    ];
    for (i, c) in cases.iter().enumerate() {
        r.d.queues[1].add(&m, c);
        r.d.notify(TX_QUEUE);
        assert_eq!(r.d.queues[1].wait_used(&m).1, 0, "case {i}");
    }
    assert_eq!(stat(&r.stats.tx_dropped), 5);
    assert_eq!(stat(&r.stats.tx_frames), 0);
    assert_backend_quiet(&r);
    // A good frame still goes through, and the device never asked for a reset.
    r.d.queues[1].add(&m, &[(BUF, NET_HDR_LEN as u32 + 60, false)]);
    r.d.notify(TX_QUEUE);
    r.d.queues[1].wait_used(&m);
    let mut b = [0u8; 128];
    assert_eq!(r.peer.recv(&mut b).unwrap(), NET_HDR_LEN + 60);
    assert_eq!(r.d.status() & crate::virtio::STATUS_NEEDS_RESET, 0);
}

#[test]
fn receive_buffers_too_small_for_the_header_or_the_frame() {
    let mut r = rig(0);
    let m = r.d.mem.clone();
    // 8 bytes: no room for the header; returned empty. 100 bytes: too small for the first
    // frame (dropped), kept for the second.
    r.d.queues[0].add(&m, &[(BUF, 8, true)]);
    r.d.queues[0].add(&m, &[(BUF + 0x1000, 100, true)]);
    r.d.notify(RX_QUEUE);
    let mut big = hdr(0, 0, 0).to_vec();
    big.extend(frame(1000, 0));
    r.peer.send(&big).unwrap();
    assert_eq!(r.d.queues[0].wait_used(&m), (0, 0));
    r.peer.send(&big[..90]).unwrap();
    assert_eq!(r.d.queues[0].wait_used(&m), (1, 90));
    assert_eq!(stat(&r.stats.rx_bad_buffers), 1);
    assert_eq!(stat(&r.stats.rx_dropped), 1);
    assert_eq!(stat(&r.stats.rx_frames), 1);
    // A readable-only chain on the receive queue is refused too (no writable bytes).
    r.d.queues[0].add(&m, &[(BUF, 64, false)]);
    r.d.notify(RX_QUEUE);
    r.peer.send(&big[..40]).unwrap();
    assert_eq!(r.d.queues[0].wait_used(&m), (2, 0));
    assert_eq!(r.d.status() & crate::virtio::STATUS_NEEDS_RESET, 0);
}

#[test]
fn a_broken_receive_ring_needs_a_reset() {
    let mut r = rig(0);
    r.d.queues[0].set_avail_idx(&r.d.mem, 300); // queue size 256
    r.d.notify(RX_QUEUE);
    r.peer.send(&[0u8; 60]).unwrap();
    assert!(
        r.d.wait_status(crate::virtio::STATUS_NEEDS_RESET),
        "the device did not ask for a reset"
    );
    assert!(r
        .d
        .wait_deliveries(1)
        .contains(&(r.d.gsis[0], Driver::msg(0))));
}

// ---- a real tap ------------------------------------------------------------------------------

/// `SIOCETHTOOL` with an `ethtool_value` (ETHTOOL_GTXCSUM, ETHTOOL_GTSO): the tap's own view
/// of the offloads TUNSETOFFLOAD gave it.
fn ethtool_get(name: &str, cmd: u32) -> u32 {
    #[repr(C)]
    struct Value {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct Req {
        name: [u8; 16],
        data: *mut Value,
        _pad: [u8; 16],
    }
    let mut v = Value { cmd, data: 0 };
    let mut req = Req {
        name: [0; 16],
        data: &mut v,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // SAFETY: `req` is a live ifreq whose data pointer points to `v`, which lives across the
    // call; SIOCETHTOOL reads the command there and writes the value back.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    assert_eq!(
        rc,
        0,
        "SIOCETHTOOL {cmd:#x} on {name}: {}",
        std::io::Error::last_os_error()
    );
    v.data
}

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GTSO: u32 = 0x1e;

/// A tap of our own, or `None` (printed) where this host cannot make one.
fn test_tap(tag: &str) -> Option<Tap> {
    let name = format!("vfnt{tag}{}", std::process::id() % 100_000);
    match Tap::open(&name) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!("SKIPPED: cannot create a tap here ({e})");
            None
        }
    }
}

#[test]
fn tap_offloads_are_set_at_activation() {
    let Some(tap) = test_tap("o") else { return };
    let name = tap.name().to_string();
    assert_eq!(
        ethtool_get(&name, ETHTOOL_GTXCSUM),
        0,
        "no offloads before the driver"
    );
    assert_eq!(ethtool_get(&name, ETHTOOL_GTSO), 0);
    let mut d = Driver::named(
        "virtio-net-tap",
        Box::new(Net::new(Arc::new(tap), MAC).unwrap()),
    );
    d.bring_up(
        f::GUEST_CSUM | f::GUEST_TSO4 | f::GUEST_TSO6 | f::MRG_RXBUF,
        &[256, 256],
    );
    assert_eq!(ethtool_get(&name, ETHTOOL_GTXCSUM), 1, "TUN_F_CSUM");
    assert_eq!(ethtool_get(&name, ETHTOOL_GTSO), 1, "TUN_F_TSO4|TSO6");
    // A driver that takes only checksum offload turns segmentation off again.
    d.set_status(0);
    d.mem
        .write_slice(&vec![0u8; 0x30000], GuestAddress(0x10000))
        .unwrap();
    d.bring_up(f::GUEST_CSUM, &[256, 256]);
    assert_eq!(ethtool_get(&name, ETHTOOL_GTXCSUM), 1);
    assert_eq!(ethtool_get(&name, ETHTOOL_GTSO), 0);
}

#[test]
fn a_real_tap_carries_frames_to_the_host() {
    let Some(tap) = test_tap("t") else { return };
    let name = tap.name().to_string();
    // An AF_PACKET socket on the tap sees what the guest transmits.
    // SAFETY: plain socket(2); the descriptor is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
    };
    assert!(raw >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let c = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: `c` is a NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0);
    let up = std::process::Command::new("ip")
        .args(["link", "set", &name, "up"])
        .status();
    if !matches!(up, Ok(s) if s.success()) {
        eprintln!("SKIPPED: cannot bring {name} up with ip(8): {up:?}");
        return;
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads a timeval of the size passed.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut d = Driver::named(
        "virtio-net-tap",
        Box::new(Net::new(Arc::new(tap), MAC).unwrap()),
    );
    d.bring_up(f::CSUM, &[256, 256]);
    // A broadcast frame of an unused EtherType, with our MAC as the source.
    let mut fr = vec![0xffu8; 6];
    fr.extend(MAC.0);
    fr.extend([0x88, 0xb5]); // local experimental EtherType
    fr.extend(b"vfiovm virtio-net test frame".iter());
    fr.resize(64, 0xab);
    d.mem.write_slice(&hdr(0, 0, 0), GuestAddress(BUF)).unwrap();
    d.mem
        .write_slice(&fr, GuestAddress(BUF + NET_HDR_LEN as u64))
        .unwrap();
    d.queues[1].add(&d.mem, &[(BUF, (NET_HDR_LEN + fr.len()) as u32, false)]);
    d.notify(TX_QUEUE);
    d.queues[1].wait_used(&d.mem);
    let mut b = [0u8; 2048];
    loop {
        // SAFETY: the kernel writes at most `b.len()` bytes into `b`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
        assert!(
            n > 0,
            "the frame never reached the host: {}",
            std::io::Error::last_os_error()
        );
        if b[..n as usize] == fr[..] {
            break;
        }
    }
}

/// A network namespace for one test, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("vfiovm-ut-{tag}{}", std::process::id() % 100_000);
        match std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
        {
            Ok(o) if o.status.success() => Some(Netns(name)),
            r => {
                eprintln!("SKIPPED: cannot create a network namespace here: {r:?}");
                None
            }
        }
    }

    /// Runs `f` on a thread inside the namespace (what it creates — a tap, a socket — stays
    /// there).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns(2) on a namespace descriptor we hold; it moves only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    }

    fn ip(&self, args: &[&str]) -> String {
        let o = std::process::Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "ip {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The guest sends a UDP datagram whose checksum is left for the device to complete
/// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, as Linux does with `VIRTIO_NET_F_CSUM`): the host's socket
/// gets it, so the tap took the header's word for it. The same frame without the flag has a
/// wrong checksum and the host drops it. The other way, with `VIRTIO_NET_F_GUEST_CSUM` the
/// host's datagram reaches the guest with its checksum still to be completed, as the header
/// says (`TUN_F_CSUM` on the tap).
#[test]
fn a_real_tap_honours_the_checksum_offload_header() {
    let Some(ns) = Netns::new("c") else { return };
    let tap = match ns.run(|| Tap::open("vfntc0")) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED: cannot create a tap here ({e})");
            return;
        }
    };
    ns.ip(&["addr", "add", "10.9.9.1/24", "dev", "vfntc0"]);
    ns.ip(&["link", "set", "vfntc0", "up"]);
    let link = ns.ip(&["-o", "link", "show", "vfntc0"]);
    let host_mac: Vec<u8> = link
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    let sock = ns.run(|| {
        let s = std::net::UdpSocket::bind("10.9.9.1:7777").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    });
    let mut d = Driver::named(
        "virtio-net-tap",
        Box::new(Net::new(Arc::new(tap), MAC).unwrap()),
    );
    d.bring_up(f::CSUM | f::GUEST_CSUM, &[256, 256]);

    let payload = b"checksum left to the host";
    let udp_len = 8 + payload.len();
    let (src, dst) = ([10u8, 9, 9, 2], [10u8, 9, 9, 1]);
    let mut fr = host_mac.clone();
    fr.extend(MAC.0);
    fr.extend([0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend(src);
    ip.extend(dst);
    let c = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    fr.extend(&ip);
    // The UDP checksum field holds only the pseudo-header sum, as a driver leaves it.
    let pseudo = sum16(&src) + sum16(&dst) + 17 + udp_len as u32;
    fr.extend(5555u16.to_be_bytes());
    fr.extend(7777u16.to_be_bytes());
    fr.extend((udp_len as u16).to_be_bytes());
    fr.extend(fold(pseudo).to_be_bytes());
    fr.extend(payload);

    let mut send = |flags: u8| {
        let mut h = [0u8; NET_HDR_LEN];
        h[0] = flags;
        h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the UDP header
        h[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: its checksum field
        d.mem.write_slice(&h, GuestAddress(BUF)).unwrap();
        d.mem.write_slice(&fr, GuestAddress(BUF + 0x1000)).unwrap();
        d.queues[1].add(
            &d.mem,
            &[
                (BUF, NET_HDR_LEN as u32, false),
                (BUF + 0x1000, fr.len() as u32, false),
            ],
        );
        d.notify(TX_QUEUE);
        d.queues[1].wait_used(&d.mem);
    };
    let mut got = [0u8; 64];
    send(0);
    assert!(
        sock.recv(&mut got).is_err(),
        "a partial checksum without NEEDS_CSUM must be dropped by the host"
    );
    send(1); // VIRTIO_NET_HDR_F_NEEDS_CSUM
    let n = sock
        .recv(&mut got)
        .expect("the host did not get the datagram");
    assert_eq!(&got[..n], payload);

    // Host to guest.
    ns.ip(&[
        "neigh",
        "add",
        "10.9.9.2",
        "lladdr",
        &MAC.to_string(),
        "dev",
        "vfntc0",
    ]);
    for i in 0..16 {
        d.queues[0].add(&d.mem, &[(BUF + 0x4000 + 0x1000 * i, 2048, true)]);
    }
    d.notify(RX_QUEUE);
    sock.send_to(b"from the host", "10.9.9.2:5555").unwrap();
    // The host's own IPv6 chatter on a new link may come first.
    let got = loop {
        let (id, len) = d.queues[0].wait_used(&d.mem);
        let got = read_guest(&d, BUF + 0x4000 + 0x1000 * u64::from(id), len as usize);
        if got.ends_with(b"from the host") {
            break got;
        }
    };
    let h = &got[..NET_HDR_LEN];
    assert_eq!(h[0] & 1, 1, "NEEDS_CSUM from the tap: {h:?}");
    assert_eq!(u16::from_le_bytes([h[6], h[7]]), 34, "csum_start");
    assert_eq!(u16::from_le_bytes([h[8], h[9]]), 6, "csum_offset");
    assert_eq!(u16::from_le_bytes([h[10], h[11]]), 1, "num_buffers");
    assert_eq!(
        &got[NET_HDR_LEN..NET_HDR_LEN + 6],
        &MAC.0[..],
        "to the guest's MAC"
    );
    assert!(got.ends_with(b"from the host"));
}

/// With mergeable buffers, chains that add no room (zero-length writable buffers) cannot hold
/// a frame however many there are: the device waits for more instead of retrying them forever,
/// and delivers once a real buffer arrives.
#[test]
fn mergeable_chains_without_room_do_not_spin_the_device() {
    let mut r = rig(f::MRG_RXBUF);
    let m = r.d.mem.clone();
    r.d.queues[0].add(&m, &[(BUF, 64, true)]);
    for _ in 0..8 {
        r.d.queues[0].add(&m, &[(BUF + 0x1000, 0, true)]);
    }
    r.d.notify(RX_QUEUE);
    let mut out = hdr(0, 0, 0).to_vec();
    out.extend(frame(200, 7));
    r.peer.send(&out).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.d.queues[0].used_idx(&m), 0);
    // The I/O thread is not stuck: a reset stops it at once.
    let start = Instant::now();
    r.d.set_status(0);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "the I/O thread was busy"
    );
    assert!(!r.d.dev.running());
    // The frame the device held is gone with the reset. Up again, with room this time.
    r.d.mem
        .write_slice(&vec![0u8; 0x30000], GuestAddress(0x10000))
        .unwrap();
    r.d.bring_up(f::MRG_RXBUF, &[256, 256]);
    r.d.queues[0].add(&m, &[(BUF, 64, true)]);
    for _ in 0..3 {
        r.d.queues[0].add(&m, &[(BUF + 0x1000, 0, true)]);
    }
    r.d.queues[0].add(&m, &[(BUF + 0x2000, 4096, true)]);
    r.d.notify(RX_QUEUE);
    r.peer.send(&out).unwrap();
    let used: Vec<_> = (0..5).map(|_| r.d.queues[0].wait_used(&m)).collect();
    assert_eq!(used, vec![(0, 64), (1, 0), (2, 0), (3, 0), (4, 148)]);
    let first = read_guest(&r.d, BUF, 64);
    assert_eq!(u16::from_le_bytes([first[10], first[11]]), 5, "num_buffers");
}

/// Frames that reached the backend before the driver started the card wait there and arrive
/// once it has buffers (the tap is watched from the start, and readable already then).
#[test]
fn frames_sent_before_the_driver_starts_arrive_after() {
    let (a, peer) = UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let backend = Arc::new(PairBackend {
        sock: a,
        offload: Mutex::new(Vec::new()),
    });
    let mut d = Driver::named("virtio-net-test", Box::new(Net::new(backend, MAC).unwrap()));
    let mut out = hdr(0, 0, 0).to_vec();
    out.extend(frame(60, 4));
    peer.send(&out).unwrap();
    d.bring_up(0, &[256, 256]);
    d.queues[0].add(&d.mem, &[(BUF, 2048, true)]);
    d.notify(RX_QUEUE);
    assert_eq!(d.queues[0].wait_used(&d.mem), (0, 72));
    assert_eq!(
        read_guest(&d, BUF + NET_HDR_LEN as u64, 60),
        out[NET_HDR_LEN..]
    );
}

/// One end of a `SOCK_SEQPACKET` pair: unlike a datagram pair it queues many frames (up to
/// its buffer), as a tap does.
struct SeqBackend(std::os::fd::OwnedFd);

impl NetBackend for SeqBackend {
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    fn set_offload(&self, _: u32) -> std::io::Result<()> {
        Ok(())
    }
}

fn seqpacket_pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) writes two descriptors into `fds`, owned below.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: the descriptor was just made and nothing else owns it.
    let a = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let b = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    (a, b)
}

/// More frames waiting than one wake-up moves (`RX_BUDGET`): the device comes back for the
/// rest by itself (the backend is edge-triggered, so no new event would say so).
#[test]
fn a_backlog_larger_than_the_budget_is_all_delivered() {
    use crate::virtio::net::RX_BUDGET;
    let (dev_end, peer) = seqpacket_pair();
    // SAFETY: F_GETFL on our own descriptor; no memory is passed.
    let fl = unsafe { libc::fcntl(dev_end.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: O_NONBLOCK on our own descriptor.
    unsafe { libc::fcntl(dev_end.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) };
    let frames = 2 * RX_BUDGET + 22;
    for i in 0..frames {
        let mut out = hdr(0, 0, 0).to_vec();
        out.extend(frame(60, i as u8));
        // SAFETY: write(2) reads `out`, a live buffer of that length.
        let n = unsafe { libc::write(peer.as_raw_fd(), out.as_ptr().cast(), out.len()) };
        assert_eq!(n, out.len() as isize);
    }
    let net = Net::new(Arc::new(SeqBackend(dev_end)), MAC).unwrap();
    let stats = net.stats();
    let mut d = Driver::named("virtio-net-test", Box::new(net));
    d.bring_up(0, &[256, 256]);
    for i in 0..u64::from(frames) {
        d.queues[0].add(&d.mem, &[(BUF + 0x800 * i, 2048, true)]);
    }
    d.notify(RX_QUEUE);
    for i in 0..frames {
        let (id, len) = d.queues[0].wait_used(&d.mem);
        assert_eq!((id, len), (i, 72));
        let got = read_guest(&d, BUF + 0x800 * u64::from(i) + NET_HDR_LEN as u64, 1);
        assert_eq!(got[0], i as u8, "frame {i} in order");
    }
    assert_eq!(stat(&stats.rx_frames), u64::from(frames));
}
