//! virtio-net (device type 1): an Ethernet card whose wire is a [`Tap`](super::tap::Tap) (or
//! any [`NetBackend`]).
//!
//! # Queues
//!
//! | Index | Queue | Served |
//! |---|---|---|
//! | 0 ([`RX_QUEUE`]) | receiveq1: buffers the driver lends for frames to the guest | when the backend is readable, or the driver adds buffers after the device ran out ([`QueueHandler::ready`]) |
//! | 1 ([`TX_QUEUE`]) | transmitq1: frames from the guest | per chain, on the driver's notify |
//!
//! No control queue, one queue pair. The I/O thread waits on the tap (edge-triggered) besides
//! the notifies, and moves at most [`RX_BUDGET`] frames per wake-up; with more waiting it
//! signals an eventfd of its own and comes back after the other events.
//!
//! # Device configuration ([`CONFIG_LEN`] bytes)
//!
//! | Offset | Field | Width | Value |
//! |---|---|---|---|
//! | 0x00 | `mac` | 6 | the MAC address (`VIRTIO_NET_F_MAC`); read-only |
//! | 0x06 | `status` | 2 | `VIRTIO_NET_S_LINK_UP` (`VIRTIO_NET_F_STATUS`) |
//! | 0x08 | `max_virtqueue_pairs` | 2 | 1 |
//!
//! # Frames
//!
//! Every chain starts with the 12-byte `virtio_net_hdr_v1` ([`NET_HDR_LEN`]). The tap speaks
//! the same header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12), so it passes through unchanged in
//! both directions: the guest's checksum and segmentation requests reach the host kernel,
//! and the kernel's reach the guest. On receive the device sets `num_buffers` (1 without
//! `VIRTIO_NET_F_MRG_RXBUF`) and, unless the driver took `VIRTIO_NET_F_GUEST_CSUM`, clears
//! the checksum and segmentation fields. At activation [`NetBackend::set_offload`] tells the
//! tap which offloads the driver accepted (`GUEST_CSUM` → `TUN_F_CSUM`, `GUEST_TSO4/6` →
//! `TUN_F_TSO4/6`, `GUEST_ECN` → `TUN_F_TSO_ECN`), so bulk TCP reaches the guest unsegmented.
//!
//! Frames are not copied on the way: a transmitted one is one `writev` over the guest's
//! buffers, a received one a `readv` into the driver's receive buffers, lending as many
//! mergeable buffers as the previous frame took plus the rest of the handler's own buffer for
//! a longer one (which is then gathered there and delivered by copying). A guest changing its
//! buffers meanwhile only garbles its own frame: the kernel copies and checks it.
//!
//! # Hostile drivers
//!
//! A transmit chain with a device-writable buffer, shorter than the header, or longer than
//! the header plus [`MAX_FRAME_LEN`] is dropped (completed with length 0, counted in
//! [`NetStats`]). A receive chain with less than [`NET_HDR_LEN`] writable bytes is completed
//! with length 0 and counted; a frame larger than the receive chain (without
//! `VIRTIO_NET_F_MRG_RXBUF`) is dropped and the chain kept for the next one. Malformed rings
//! put the device in NEEDS_RESET (the transport's rule).

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::queues::{Queues, Ready, RingFault};
use super::{Chain, Completion, QueueHandler, VirtioDevice, VirtioError, VIRTIO_TYPE_NET};

/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio-net header of every frame (virtio 1.x: `virtio_net_hdr_v1`, with `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
const NUM_BUFFERS: usize = 10;
/// Longest frame (without the header): a 64 KiB IP packet with an Ethernet and a VLAN header.
pub const MAX_FRAME_LEN: usize = 65535 + 14 + 4;
/// Size of the device configuration.
pub const CONFIG_LEN: usize = 10;
/// Most frames moved to the guest per wake-up of the I/O thread: after that it lets the
/// other events (transmit notifies, a stop) in first and comes back through its own eventfd.
pub const RX_BUDGET: u32 = 64;

/// Feature bits (`VIRTIO_NET_F_*`).
pub mod features {
    /// The device completes partial checksums of transmitted frames.
    pub const CSUM: u64 = 1 << 0;
    /// The driver takes received frames with partial checksums.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// The device has a MAC address in its configuration.
    pub const MAC: u64 = 1 << 5;
    /// The driver takes TCPv4 segments larger than the MTU.
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// The driver takes TCPv6 segments larger than the MTU.
    pub const GUEST_TSO6: u64 = 1 << 8;
    /// The driver takes large TCP segments with ECN.
    pub const GUEST_ECN: u64 = 1 << 9;
    /// The device segments TCPv4 for the driver.
    pub const HOST_TSO4: u64 = 1 << 11;
    /// The device segments TCPv6 for the driver.
    pub const HOST_TSO6: u64 = 1 << 12;
    /// The device segments TCP with ECN.
    pub const HOST_ECN: u64 = 1 << 13;
    /// A received frame may span several receive chains (`num_buffers`).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// The configuration has a link status.
    pub const STATUS: u64 = 1 << 16;
    /// Everything offered.
    pub const OFFERED: u64 = CSUM
        | GUEST_CSUM
        | MAC
        | GUEST_TSO4
        | GUEST_TSO6
        | GUEST_ECN
        | HOST_TSO4
        | HOST_TSO6
        | HOST_ECN
        | MRG_RXBUF
        | STATUS;
}

/// `status` bit: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// The offloads (`TUN_F_*`) a tap may use towards a driver that accepted `features`.
pub fn tap_offloads(features: u64) -> u32 {
    use features::*;
    if features & GUEST_CSUM == 0 {
        return 0;
    }
    let mut o = libc::TUN_F_CSUM;
    if features & GUEST_TSO4 != 0 {
        o |= libc::TUN_F_TSO4;
    }
    if features & GUEST_TSO6 != 0 {
        o |= libc::TUN_F_TSO6;
    }
    if features & GUEST_ECN != 0 && o & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        o |= libc::TUN_F_TSO_ECN;
    }
    o
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address that does not parse or cannot be a card's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// Not six hex bytes separated by colons.
    #[error("'{0}' is not a MAC address: write six hex bytes separated by colons, e.g. 52:54:00:12:34:56")]
    Syntax(String),
    /// The group bit (bit 0 of the first byte) is set.
    #[error("'{0}' is a multicast address (bit 0 of the first byte is set): a card needs a unicast one, e.g. 52:54:00:12:34:56")]
    Multicast(String),
    /// All zeros.
    #[error("'{0}' is the all-zero address: give a real one, e.g. 52:54:00:12:34:56")]
    Zero(String),
}

impl MacAddr {
    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-`); refuses multicast and all-zero addresses.
    pub fn parse(s: &str) -> Result<MacAddr, MacError> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let parts: Vec<&str> = s.split(sep).collect();
        let mut b = [0u8; 6];
        if parts.len() != 6 {
            return Err(MacError::Syntax(s.to_string()));
        }
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(MacError::Syntax(s.to_string()));
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| MacError::Syntax(s.to_string()))?;
        }
        if b[0] & 1 != 0 {
            return Err(MacError::Multicast(s.to_string()));
        }
        if b == [0; 6] {
            return Err(MacError::Zero(s.to_string()));
        }
        Ok(MacAddr(b))
    }

    /// A locally administered address `52:54:00:xx:xx:xx` derived from `seed` (a tap name):
    /// the same seed gives the same address on every run (FNV-1a of the bytes).
    pub fn from_seed(seed: &str) -> MacAddr {
        let mut h: u32 = 0x811c_9dc5;
        for b in seed.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        let x = h.to_le_bytes();
        MacAddr([0x52, 0x54, 0x00, x[0], x[1], x[2] ^ x[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Where frames go and come from: a descriptor that reads and writes one frame (with its
/// 12-byte virtio-net header) per call, non-blocking.
pub trait NetBackend: Send + Sync {
    /// The descriptor (readable when a frame waits).
    fn fd(&self) -> RawFd;
    /// The offloads (`TUN_F_*`) the guest accepted; a backend without offloads ignores them.
    fn set_offload(&self, tun_flags: u32) -> io::Result<()>;
}

impl NetBackend for super::tap::Tap {
    fn fd(&self) -> RawFd {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }

    fn set_offload(&self, tun_flags: u32) -> io::Result<()> {
        super::tap::Tap::set_offload(self, tun_flags)
    }
}

/// Counters of one device, shared with its I/O thread.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames the guest sent that reached the backend.
    pub tx_frames: AtomicU64,
    /// Transmit chains dropped: malformed (writable buffers, shorter than the header, longer
    /// than a frame) or refused by the backend.
    pub tx_dropped: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Frames from the backend dropped: larger than the receive buffer.
    pub rx_dropped: AtomicU64,
    /// Receive chains returned empty because they could not hold the header.
    pub rx_bad_buffers: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The virtio-net device.
pub struct Net {
    backend: Arc<dyn NetBackend>,
    mac: MacAddr,
    stats: Arc<NetStats>,
    /// Written by the I/O thread when it stops receiving with frames possibly left (the
    /// budget): its next wake-up resumes. Made here, before any seccomp filter (`eventfd2`).
    resume: Arc<EventFd>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("mac", &self.mac)
            .field("fd", &self.backend.fd())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A card with address `mac` on `backend`. Fails only if no eventfd can be made.
    pub fn new(backend: Arc<dyn NetBackend>, mac: MacAddr) -> io::Result<Self> {
        Ok(Net {
            backend,
            mac,
            stats: Arc::default(),
            resume: Arc::new(crate::new_eventfd()?),
        })
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac.0);
        c[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        VIRTIO_TYPE_NET
    }

    fn pci_class(&self) -> u32 {
        0x02_00_00 // network controller, Ethernet
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        features::OFFERED
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, features: u64) -> Result<Box<dyn QueueHandler>, VirtioError> {
        let offload = tap_offloads(features);
        self.backend
            .set_offload(offload)
            .map_err(|e| VirtioError::Activate {
                device: "virtio-net".into(),
                why: format!("setting the tap's offloads ({offload:#x}): {e}"),
            })?;
        Ok(Box::new(NetHandler {
            backend: self.backend.clone(),
            stats: self.stats.clone(),
            mrg_rxbuf: features & features::MRG_RXBUF != 0,
            guest_csum: features & features::GUEST_CSUM != 0,
            tx_buf: FrameBuf::new().map_err(|e| VirtioError::Activate {
                device: "virtio-net".into(),
                why: format!("mapping a frame buffer: {e}"),
            })?,
            rx_buf: FrameBuf::new().map_err(|e| VirtioError::Activate {
                device: "virtio-net".into(),
                why: format!("mapping a frame buffer: {e}"),
            })?,
            rx_pending: None,
            rx_guess: 0,
            ranges: Vec::new(),
            resume: self.resume.clone(),
            warned: false,
        }))
    }
}

/// Room for one frame and its header, mapped on its own (`mmap`/`munmap`) rather than taken
/// from the allocator. It is made on the vCPU thread that starts the device and dropped on the
/// I/O thread: a heap block of that size freed there can make glibc shrink the other thread's
/// heap, which first reads `/proc/sys/vm/overcommit_memory` (an `openat` no seccomp filter
/// allows). A mapping of its own is simply unmapped.
struct FrameBuf {
    ptr: std::ptr::NonNull<u8>,
}

/// Its size: a header and the longest frame, rounded up to whole pages.
const FRAME_BUF_LEN: usize = (NET_HDR_LEN + MAX_FRAME_LEN + 4095) & !4095;

// SAFETY: the mapping is owned by the FrameBuf alone and only reached through `&self`/`&mut
// self`, like a Vec's buffer.
unsafe impl Send for FrameBuf {}

impl FrameBuf {
    fn new() -> io::Result<Self> {
        // SAFETY: an anonymous private mapping at an address the kernel picks; no existing
        // memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                FRAME_BUF_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        std::ptr::NonNull::new(p.cast())
            .map(|ptr| FrameBuf { ptr })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }
}

impl std::ops::Deref for FrameBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live, readable and writable mapping of FRAME_BUF_LEN bytes
        // (zero-filled at first), owned by self for its lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), FRAME_BUF_LEN) }
    }
}

impl std::ops::DerefMut for FrameBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), FRAME_BUF_LEN) }
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no reference to it outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), FRAME_BUF_LEN) };
    }
}

/// `read(2)` of one frame into `buf`.
fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`, a live mutable buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `write(2)` of one frame from `buf`.
fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes from `buf`, a live buffer.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Most iovecs one `readv`/`writev` takes (`IOV_MAX`); a frame in more pieces than that goes
/// through the device's own buffer.
const MAX_IOVECS: usize = 1024;

/// The `iovec`s naming `ranges` (host addresses and lengths).
fn iovecs(ranges: &[(usize, usize)]) -> Vec<libc::iovec> {
    ranges
        .iter()
        .map(|&(addr, len)| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        })
        .collect()
}

/// `writev(2)` of one frame from the memory `ranges` name.
///
/// # Safety
///
/// Every range must be memory of this process, mapped and readable for the call.
unsafe fn writev_fd(fd: RawFd, ranges: &[(usize, usize)]) -> io::Result<usize> {
    let iov = iovecs(ranges);
    // SAFETY: `iov` is a live array of `iov.len()` (at most MAX_IOVECS) iovecs naming memory
    // mapped and readable for the call (the caller's promise); the kernel only reads it.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `readv(2)` of one frame into the memory `ranges` name.
///
/// # Safety
///
/// Every range must be memory of this process, mapped and writable for the call, and no
/// Rust reference may be live to any of it.
unsafe fn readv_fd(fd: RawFd, ranges: &[(usize, usize)]) -> io::Result<usize> {
    let iov = iovecs(ranges);
    // SAFETY: `iov` is a live array of `iov.len()` (at most MAX_IOVECS) iovecs naming memory
    // mapped and writable for the call with no reference to it live (the caller's promise);
    // the kernel writes nothing else.
    let n = unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// What came of reading a frame straight into the driver's buffers.
enum Direct {
    /// In the guest's buffers (or dropped): take the next.
    Delivered,
    /// Nothing taken (a runt frame skipped, an interrupted read): try again.
    Again,
    /// The backend has no frame: done until it is readable again.
    Empty,
    /// The driver has no receive chain: wait for it to add some.
    NoBuffers,
    /// Not in place: the frame is pending in `rx_buf`, or the buffers have no host addresses
    /// (nothing read): take the copying path.
    Copy,
}

/// What became of the frame waiting for the guest.
enum Delivery {
    /// In the guest's buffers (or dropped): take the next.
    Done,
    /// Not enough buffers: wait for the driver to add some.
    Starved,
}

struct NetHandler {
    backend: Arc<dyn NetBackend>,
    stats: Arc<NetStats>,
    mrg_rxbuf: bool,
    guest_csum: bool,
    tx_buf: FrameBuf,
    rx_buf: FrameBuf,
    /// Length (header included) of the frame in `rx_buf` still to be delivered.
    rx_pending: Option<usize>,
    /// Length of the last frame received: how much receive room to lend the kernel for the
    /// next one (frames of a stream tend to be alike).
    rx_guess: usize,
    /// Scratch list of host ranges for one `readv`/`writev`.
    ranges: Vec<(usize, usize)>,
    resume: Arc<EventFd>,
    warned: bool,
}

impl NetHandler {
    fn warn_once(&mut self, what: fmt::Arguments<'_>) {
        if !std::mem::replace(&mut self.warned, true) {
            log::warn!("virtio-net: {what} (further such problems are only counted)");
        }
    }

    fn transmit(&mut self, chain: &Chain<'_>) {
        let len = chain.readable_len();
        if chain.writable_len() != 0
            || len < NET_HDR_LEN as u64
            || len > (NET_HDR_LEN + MAX_FRAME_LEN) as u64
        {
            bump(&self.stats.tx_dropped);
            return;
        }
        // Straight from guest RAM where it has host addresses (always, in a VMM); the guest
        // may change the buffers meanwhile, which only garbles its own frame (the kernel
        // copies and checks it). `num_buffers` means nothing on transmit; the tap skips it.
        self.ranges.clear();
        let sent = if chain.host_ranges(false, 0, len, &mut self.ranges)
            && self.ranges.len() <= MAX_IOVECS
        {
            // SAFETY: the ranges are guest RAM's host mappings, which stay mapped while the
            // device's memory lives, which outlasts this call (the chain borrows it).
            unsafe { writev_fd(self.backend.fd(), &self.ranges) }
        } else {
            let len = len as usize;
            if !chain.read_at(0, &mut self.tx_buf[..len]) {
                bump(&self.stats.tx_dropped);
                return;
            }
            write_fd(self.backend.fd(), &self.tx_buf[..len])
        };
        match sent {
            Ok(_) => bump(&self.stats.tx_frames),
            Err(e) => {
                bump(&self.stats.tx_dropped);
                if e.kind() != io::ErrorKind::WouldBlock {
                    self.warn_once(format_args!("the backend refused a frame: {e}"));
                }
            }
        }
    }

    /// Reads frames from the backend into the receive queue until the backend has none left
    /// or the driver's buffers run out.
    fn receive(&mut self, queues: &mut Queues<'_, '_>) -> Result<(), RingFault> {
        let mut moved = 0u32;
        loop {
            if moved == RX_BUDGET {
                // The tap is edge-triggered: nothing would wake us for what is left.
                if let Err(e) = self.resume.write(1) {
                    self.warn_once(format_args!("cannot schedule the rest of the frames: {e}"));
                }
                return Ok(());
            }
            if self.rx_pending.is_none() {
                match self.receive_direct(queues)? {
                    Direct::Delivered => {
                        moved += 1;
                        continue;
                    }
                    Direct::Again => continue,
                    Direct::Empty => return Ok(()),
                    Direct::NoBuffers => {
                        // The frame stays in the backend until the driver adds buffers, which
                        // it notifies once notifications are re-armed. Nothing was put back,
                        // so chains found on re-arming are new.
                        if !queues.enable_notification(RX_QUEUE)? {
                            return Ok(());
                        }
                        continue;
                    }
                    Direct::Copy => {}
                }
            }
            let len = match self.rx_pending {
                Some(len) => len,
                None => match read_fd(self.backend.fd(), &mut self.rx_buf) {
                    Ok(n) if n < NET_HDR_LEN => continue,
                    Ok(n) => {
                        self.rx_pending = Some(n);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.warn_once(format_args!("reading the backend: {e}"));
                        return Ok(());
                    }
                },
            };
            if !self.guest_csum {
                // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
                self.rx_buf[..NUM_BUFFERS].fill(0);
            }
            let published = queues.avail_idx(RX_QUEUE)?;
            let d = if self.mrg_rxbuf {
                self.deliver_merged(len, queues)?
            } else {
                self.deliver_one(len, queues)?
            };
            match d {
                Delivery::Done => {
                    self.rx_pending = None;
                    moved += 1;
                }
                Delivery::Starved => {
                    // Re-arm the driver's notify, then try again only if it published chains
                    // meanwhile: the ones put back are no more room than before.
                    queues.enable_notification(RX_QUEUE)?;
                    if queues.avail_idx(RX_QUEUE)? == published {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Reads the next frame from the backend straight into the driver's receive buffers (one
    /// chain, or with `VIRTIO_NET_F_MRG_RXBUF` as many as a frame like the last one needs);
    /// what does not fit lands in `rx_buf` at its offset in the frame. A frame that fit is
    /// completed in place; one that did not is moved whole into `rx_buf` and left pending
    /// for the copying path (or, without mergeable buffers, dropped as too long for the
    /// chain, which is kept).
    fn receive_direct(&mut self, queues: &mut Queues<'_, '_>) -> Result<Direct, RingFault> {
        let Some(first) = self.pop_rx(queues)? else {
            return Ok(Direct::NoBuffers);
        };
        let cap = NET_HDR_LEN + MAX_FRAME_LEN;
        let want = self.rx_guess.clamp(NET_HDR_LEN, cap) as u64;
        let mut room = first.writable_len();
        let mut chains = vec![first];
        while self.mrg_rxbuf && room < want {
            match queues.pop(RX_QUEUE)? {
                Some(c) => {
                    room += c.writable_len();
                    chains.push(c);
                }
                None => break,
            }
        }
        let popped = chains.len() as u16;
        // Lend the chains' buffers (up to the longest frame), then the rest of `rx_buf`.
        self.ranges.clear();
        let mut lent = 0usize;
        for c in &chains {
            let n = usize::try_from(c.writable_len()).map_or(cap - lent, |n| n.min(cap - lent));
            if !c.host_ranges(true, 0, n as u64, &mut self.ranges) {
                queues.put_back(RX_QUEUE, popped);
                return Ok(Direct::Copy);
            }
            lent += n;
        }
        if self.ranges.len() >= MAX_IOVECS {
            queues.put_back(RX_QUEUE, popped);
            return Ok(Direct::Copy);
        }
        if lent < cap {
            let base = self.rx_buf.ptr.as_ptr() as usize;
            self.ranges.push((base + lent, cap - lent));
        }
        // SAFETY: the ranges are guest RAM's host mappings, mapped and writable while the
        // device's memory lives (which outlasts the call: the chains borrow it), and the tail
        // of `rx_buf`, this handler's own mapping of FRAME_BUF_LEN >= `cap` bytes, with no
        // reference to it live; vm-memory holds no references into guest RAM.
        let n = match unsafe { readv_fd(self.backend.fd(), &self.ranges) } {
            Ok(n) => n,
            Err(e) => {
                queues.put_back(RX_QUEUE, popped);
                return Ok(match e.kind() {
                    io::ErrorKind::WouldBlock => Direct::Empty,
                    io::ErrorKind::Interrupted => Direct::Again,
                    _ => {
                        self.warn_once(format_args!("reading the backend: {e}"));
                        Direct::Empty
                    }
                });
            }
        };
        if n < NET_HDR_LEN {
            queues.put_back(RX_QUEUE, popped);
            return Ok(Direct::Again);
        }
        self.rx_guess = n;
        if n > lent {
            if !self.mrg_rxbuf {
                bump(&self.stats.rx_dropped);
                queues.put_back(RX_QUEUE, popped);
                return Ok(Direct::Delivered);
            }
            // Gather the head of the frame back from the chains and give them back.
            let ram = queues.ram();
            let mut at = 0usize;
            for c in &chains {
                let k = usize::try_from(c.writable_len()).map_or(lent - at, |k| k.min(lent - at));
                for (addr, len) in c.ranges(true, 0, k as u64).unwrap_or_default() {
                    let len = len as usize;
                    if !ram.read_at(addr, &mut self.rx_buf[at..at + len]) {
                        bump(&self.stats.rx_dropped);
                        queues.put_back(RX_QUEUE, popped);
                        return Ok(Direct::Delivered);
                    }
                    at += len;
                }
            }
            queues.put_back(RX_QUEUE, popped);
            self.rx_pending = Some(n);
            return Ok(Direct::Copy);
        }
        // The frame is in the first `used` chains: the others go back.
        let (mut used, mut filled) = (0usize, 0u64);
        while filled < n as u64 {
            filled += chains[used].writable_len();
            used += 1;
        }
        queues.put_back(RX_QUEUE, popped - used as u16);
        let mut hdr = [0u8; NET_HDR_LEN];
        let fixed = if self.guest_csum {
            // Keep the kernel's flags and segmentation fields; set num_buffers only.
            chains[0].write_at(NUM_BUFFERS as u64, &(used as u16).to_le_bytes())
        } else {
            hdr[NUM_BUFFERS..].copy_from_slice(&(used as u16).to_le_bytes());
            chains[0].write_at(0, &hdr)
        };
        let mut left = n as u64;
        for c in &chains[..used] {
            let k = c.writable_len().min(left);
            left -= k;
            queues.add_used(RX_QUEUE, c.head(), if fixed { k as u32 } else { 0 })?;
        }
        bump(if fixed {
            &self.stats.rx_frames
        } else {
            &self.stats.rx_dropped
        });
        Ok(Direct::Delivered)
    }

    /// Pops receive chains until one can take the header; chains that cannot are completed
    /// empty.
    fn pop_rx<'r>(&mut self, queues: &mut Queues<'_, 'r>) -> Result<Option<Chain<'r>>, RingFault> {
        while let Some(chain) = queues.pop(RX_QUEUE)? {
            if chain.writable_len() >= NET_HDR_LEN as u64 {
                return Ok(Some(chain));
            }
            bump(&self.stats.rx_bad_buffers);
            queues.add_used(RX_QUEUE, chain.head(), 0)?;
        }
        Ok(None)
    }

    fn deliver_one(
        &mut self,
        len: usize,
        queues: &mut Queues<'_, '_>,
    ) -> Result<Delivery, RingFault> {
        let Some(chain) = self.pop_rx(queues)? else {
            return Ok(Delivery::Starved);
        };
        if chain.writable_len() < len as u64 {
            bump(&self.stats.rx_dropped);
            queues.put_back(RX_QUEUE, 1);
            return Ok(Delivery::Done);
        }
        self.rx_buf[NUM_BUFFERS..NET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
        if !chain.write_at(0, &self.rx_buf[..len]) {
            bump(&self.stats.rx_dropped);
            queues.add_used(RX_QUEUE, chain.head(), 0)?;
            return Ok(Delivery::Done);
        }
        queues.add_used(RX_QUEUE, chain.head(), len as u32)?;
        bump(&self.stats.rx_frames);
        Ok(Delivery::Done)
    }

    fn deliver_merged<'r>(
        &mut self,
        len: usize,
        queues: &mut Queues<'_, 'r>,
    ) -> Result<Delivery, RingFault> {
        let Some(first) = self.pop_rx(queues)? else {
            return Ok(Delivery::Starved);
        };
        let mut room = first.writable_len();
        let mut chains = vec![first];
        // Each pop takes an available entry, so this ends within a queue's worth of chains.
        while room < len as u64 {
            match queues.pop(RX_QUEUE)? {
                Some(c) => {
                    room += c.writable_len();
                    chains.push(c);
                }
                None => {
                    queues.put_back(RX_QUEUE, chains.len() as u16);
                    return Ok(Delivery::Starved);
                }
            }
        }
        let count = chains.len() as u16;
        self.rx_buf[NUM_BUFFERS..NET_HDR_LEN].copy_from_slice(&count.to_le_bytes());
        let (mut at, mut ok) = (0usize, true);
        let mut used = Vec::with_capacity(chains.len());
        for c in &chains {
            let n = (len - at).min(usize::try_from(c.writable_len()).unwrap_or(usize::MAX));
            ok &= c.write_at(0, &self.rx_buf[at..at + n]);
            used.push((c.head(), n as u32));
            at += n;
        }
        for (head, n) in used {
            queues.add_used(RX_QUEUE, head, if ok { n } else { 0 })?;
        }
        bump(if ok {
            &self.stats.rx_frames
        } else {
            &self.stats.rx_dropped
        });
        Ok(Delivery::Done)
    }
}

impl QueueHandler for NetHandler {
    fn process(&mut self, queue: u16, chain: &mut Chain<'_>) -> Completion {
        if queue == TX_QUEUE {
            self.transmit(chain);
        }
        Completion::Used(0)
    }

    fn serves_itself(&self, queue: u16) -> bool {
        queue == RX_QUEUE
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![
            self.backend.fd(),
            std::os::fd::AsRawFd::as_raw_fd(&*self.resume),
        ]
    }

    fn ready(&mut self, why: Ready, queues: &mut Queues<'_, '_>) {
        if why == Ready::Fd(1) {
            // Reset the counter; being woken was the point.
            let _ = self.resume.read();
        }
        // A notify of the receive queue (buffers added), a readable backend and a resume all
        // mean: move frames while there are frames and buffers, up to the budget.
        let _ = self.receive(queues);
    }
}
