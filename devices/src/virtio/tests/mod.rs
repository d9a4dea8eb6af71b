//! Tests of the virtio transport and devices, driving them as a guest driver does: config
//! space through `config_read`/`config_write`, the BAR through `bar_read`/`bar_write`, rings in
//! a `GuestMemoryMmap`, interrupts through the fake manager.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::pci::{common, VirtioPciDevice, ISR_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFFSET};
use super::{
    VirtioDevice, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_VERSION_1,
};
use crate::interrupt::fake::FakeInterrupts;
use crate::interrupt::{InterruptManager, MsiMessage};
use crate::ioevent::fake::FakeIoEvents;
use crate::ioevent::IoEventRegistrar;
use crate::pci::caps::msix::{MSIX_CAP_ID, MSIX_CTRL_ENABLE};
use crate::pci::config::{CMD_BUS_MASTER, CMD_MEMORY_SPACE, COMMAND};
use crate::pci::{BarAccess, PciDevice};

mod blk;
mod blk_queue;
mod console;
mod hostile;
mod net;
mod p9;
mod platform;
mod rng;
mod transport;

pub(super) type Mem = GuestMemoryMmap<()>;

/// Guest RAM: 4 MiB at 0.
pub(super) const RAM_SIZE: u64 = 4 << 20;
/// Where the harness puts BAR 0.
pub(super) const BAR_ADDR: u64 = 0xc000_0000;
/// How long a test waits for the I/O thread.
pub(super) const WAIT: Duration = Duration::from_secs(5);

pub(super) fn mem() -> Mem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap()
}

/// A driver-side split virtqueue in guest RAM.
pub(super) struct GuestQueue {
    pub(super) size: u16,
    pub(super) desc: u64,
    pub(super) avail: u64,
    pub(super) used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    /// A queue of `size` entries with its rings from `base` (page aligned).
    pub(super) fn new(size: u16, base: u64) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 4095) & !4095;
        GuestQueue {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Writes descriptor `i`.
    pub(super) fn write_desc(&self, m: &Mem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(i));
        m.write_obj(addr, at).unwrap();
        m.write_obj(len, at.unchecked_add(8)).unwrap();
        m.write_obj(flags, at.unchecked_add(12)).unwrap();
        m.write_obj(next, at.unchecked_add(14)).unwrap();
    }

    /// Puts head `head` on the available ring and publishes it.
    pub(super) fn publish(&mut self, m: &Mem, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        m.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Sets the avail index to any value (hostile tests).
    pub(super) fn set_avail_idx(&mut self, m: &Mem, idx: u16) {
        self.avail_idx = idx;
        m.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Adds a chain of `(addr, len, writable)` buffers; returns its head.
    pub(super) fn add(&mut self, m: &Mem, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len, w)) in bufs.iter().enumerate() {
            let i = (self.next_desc + k as u16) % self.size;
            let last = k + 1 == bufs.len();
            let flags = if last { 0 } else { 1 } | if w { 2 } else { 0 };
            self.write_desc(m, i, addr, len, flags, (i + 1) % self.size);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % self.size;
        self.publish(m, head);
        head
    }

    /// The used ring's index.
    pub(super) fn used_idx(&self, m: &Mem) -> u16 {
        m.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Waits for the next used element: `(id, len)`.
    pub(super) fn wait_used(&mut self, m: &Mem) -> (u32, u32) {
        let start = Instant::now();
        while self.used_idx(m) == self.used_seen {
            assert!(
                start.elapsed() < WAIT,
                "the device did not complete a chain"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let slot = u64::from(self.used_seen % self.size);
        let at = self.used + 4 + 8 * slot;
        self.used_seen = self.used_seen.wrapping_add(1);
        (
            m.read_obj(GuestAddress(at)).unwrap(),
            m.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// Sets `used_event` (EVENT_IDX): the driver wants an interrupt once the used index
    /// passes it.
    pub(super) fn set_used_event(&self, m: &Mem, v: u16) {
        m.write_obj(v, GuestAddress(self.avail + 4 + 2 * u64::from(self.size)))
            .unwrap();
    }
}

/// A guest driver for one device.
pub(super) struct Driver {
    pub(super) dev: VirtioPciDevice<Mem>,
    pub(super) mem: Mem,
    pub(super) irq: FakeInterrupts,
    pub(super) io: FakeIoEvents,
    pub(super) queues: Vec<GuestQueue>,
    /// GSIs of the MSI-X vectors, by vector.
    pub(super) gsis: Vec<u32>,
}

impl Driver {
    /// The device on a fresh bus: BAR 0 at [`BAR_ADDR`], memory decoding and bus mastering
    /// on, the ioeventfd registrar told about the BAR as the platform would.
    pub(super) fn new(device: Box<dyn VirtioDevice>) -> Self {
        Self::named("virtio-test", device)
    }

    /// As [`Driver::new`], with the I/O thread named `name`.
    pub(super) fn named(name: &str, device: Box<dyn VirtioDevice>) -> Self {
        Self::build(name, device, None)
    }

    pub(super) fn with_hook(
        name: &str,
        device: Box<dyn VirtioDevice>,
        hook: crate::virtio::ThreadStart,
    ) -> Self {
        Self::build(name, device, Some(hook))
    }

    fn build(
        name: &str,
        device: Box<dyn VirtioDevice>,
        hook: Option<crate::virtio::ThreadStart>,
    ) -> Self {
        let mem = mem();
        let irq = FakeInterrupts::new();
        let io = FakeIoEvents::new();
        let registrar: Arc<dyn IoEventRegistrar> = Arc::new(io.clone());
        let mut dev = VirtioPciDevice::with_thread_start(
            name,
            device,
            mem.clone(),
            &irq,
            Some(registrar),
            hook,
        )
        .unwrap();
        dev.attach_intx(irq.allocate_intx(5).unwrap());
        let gsis = irq.vectors().iter().map(|(g, _)| *g).collect();
        let mut d = Driver {
            dev,
            mem,
            irq,
            io,
            queues: Vec::new(),
            gsis,
        };
        d.cfg_write32(0x10, BAR_ADDR as u32 | 0x4);
        d.cfg_write32(0x14, (BAR_ADDR >> 32) as u32);
        d.cfg_write16(COMMAND, CMD_MEMORY_SPACE | CMD_BUS_MASTER);
        d.dev.bar_moved(0, None, Some(BAR_ADDR));
        d
    }

    pub(super) fn cfg_read8(&mut self, off: u16) -> u8 {
        let mut b = [0u8];
        self.dev.config_read(off, &mut b);
        b[0]
    }
    pub(super) fn cfg_read16(&mut self, off: u16) -> u16 {
        let mut b = [0u8; 2];
        self.dev.config_read(off, &mut b);
        u16::from_le_bytes(b)
    }
    pub(super) fn cfg_read32(&mut self, off: u16) -> u32 {
        let mut b = [0u8; 4];
        self.dev.config_read(off, &mut b);
        u32::from_le_bytes(b)
    }
    pub(super) fn cfg_write16(&mut self, off: u16, v: u16) {
        self.dev.config_write(off, &v.to_le_bytes());
    }
    pub(super) fn cfg_write32(&mut self, off: u16, v: u32) {
        self.dev.config_write(off, &v.to_le_bytes());
    }

    pub(super) fn read8(&mut self, off: u64) -> u8 {
        let mut b = [0u8];
        self.dev.bar_read(0, off, &mut b);
        b[0]
    }
    pub(super) fn read16(&mut self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.dev.bar_read(0, off, &mut b);
        u16::from_le_bytes(b)
    }
    pub(super) fn read32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    pub(super) fn write8(&mut self, off: u64, v: u8) {
        self.dev.bar_write(0, off, &[v]);
    }
    pub(super) fn write16(&mut self, off: u64, v: u16) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }
    pub(super) fn write32(&mut self, off: u64, v: u32) {
        self.dev.bar_write(0, off, &v.to_le_bytes());
    }
    pub(super) fn write64_split(&mut self, off: u64, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }

    pub(super) fn status(&mut self) -> u8 {
        self.read8(common::DEVICE_STATUS)
    }
    pub(super) fn set_status(&mut self, s: u8) {
        self.write8(common::DEVICE_STATUS, s);
    }

    /// The 64 offered feature bits.
    pub(super) fn device_features(&mut self) -> u64 {
        self.write32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.read32(common::DEVICE_FEATURE);
        self.write32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.read32(common::DEVICE_FEATURE);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    pub(super) fn write_driver_features(&mut self, f: u64) {
        self.write32(common::DRIVER_FEATURE_SELECT, 0);
        self.write32(common::DRIVER_FEATURE, f as u32);
        self.write32(common::DRIVER_FEATURE_SELECT, 1);
        self.write32(common::DRIVER_FEATURE, (f >> 32) as u32);
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK; returns whether FEATURES_OK stuck.
    pub(super) fn negotiate(&mut self, features: u64) -> bool {
        self.set_status(0);
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write_driver_features(features);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.status() & STATUS_FEATURES_OK != 0
    }

    /// Sets up queue `q` with `size` entries at `base`, on MSI-X vector `vector`, and enables it.
    pub(super) fn setup_queue(&mut self, q: u16, size: u16, base: u64, vector: u16) {
        self.write16(common::QUEUE_SELECT, q);
        self.write16(common::QUEUE_SIZE, size);
        let gq = GuestQueue::new(size, base);
        self.write64_split(common::QUEUE_DESC, gq.desc);
        self.write64_split(common::QUEUE_DRIVER, gq.avail);
        self.write64_split(common::QUEUE_DEVICE, gq.used);
        self.write16(common::QUEUE_MSIX_VECTOR, vector);
        self.write16(common::QUEUE_ENABLE, 1);
        let i = usize::from(q);
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, || GuestQueue::new(1, 0));
        }
        self.queues[i] = gq;
    }

    /// Enables MSI-X and programs vector `v` to message data `0x40 + v`, unmasked.
    pub(super) fn enable_msix(&mut self, vectors: u16) {
        let cap = self.dev.config().find_capability(MSIX_CAP_ID).unwrap();
        self.cfg_write16(cap + 2, MSIX_CTRL_ENABLE);
        for v in 0..vectors {
            let e = u64::from(MSIX_TABLE_OFFSET) + 16 * u64::from(v);
            self.write32(e, 0xfee0_0000);
            self.write32(e + 4, 0);
            self.write32(e + 8, 0x40 + u32::from(v));
            self.write32(e + 12, 0);
        }
    }

    /// The message vector `v` delivers.
    pub(super) fn msg(v: u16) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data: 0x40 + u32::from(v),
        }
    }

    /// A full bring-up with MSI-X: features, every queue of `sizes` (queue *n* on vector
    /// *n* + 1, config on vector 0), DRIVER_OK.
    pub(super) fn bring_up(&mut self, features: u64, sizes: &[u16]) {
        self.try_bring_up(features, sizes);
        assert!(self.dev.running(), "DRIVER_OK did not start the I/O thread");
    }

    /// [`Driver::bring_up`] without the check that the device started.
    pub(super) fn try_bring_up(&mut self, features: u64, sizes: &[u16]) {
        self.enable_msix(sizes.len() as u16 + 1);
        assert!(self.negotiate(features | VIRTIO_F_VERSION_1));
        self.write16(common::CONFIG_MSIX_VECTOR, 0);
        for (q, &s) in sizes.iter().enumerate() {
            self.setup_queue(q as u16, s, 0x10000 * (q as u64 + 1), q as u16 + 1);
        }
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    /// A notify write for queue `q`, as the guest does it: through the ioeventfd binding
    /// when there is one (as KVM would), else through the BAR.
    pub(super) fn notify(&mut self, q: u16) {
        let addr = BAR_ADDR + NOTIFY_OFFSET + 4 * u64::from(q);
        if !self.io.guest_write(addr, 2, u64::from(q)) {
            self.write16(NOTIFY_OFFSET + 4 * u64::from(q), q);
        }
    }

    /// Waits until `n` MSI deliveries arrived (or the time is up); returns them.
    pub(super) fn wait_deliveries(&self, n: usize) -> Vec<(u32, MsiMessage)> {
        let start = Instant::now();
        let mut got = Vec::new();
        while got.len() < n && start.elapsed() < WAIT {
            got.extend(self.irq.take_deliveries());
            std::thread::sleep(Duration::from_millis(1));
        }
        got.extend(self.irq.take_deliveries());
        got
    }

    /// The ISR (reading clears it).
    pub(super) fn isr(&mut self) -> u8 {
        self.read8(ISR_OFFSET)
    }

    /// Waits for the status to show `bit`.
    pub(super) fn wait_status(&mut self, bit: u8) -> bool {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if self.status() & bit != 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}

/// How many threads of this process are named `name`, once that number is `want` or
/// the time is up (a new thread names itself after it starts).
pub(super) fn threads_named(name: &str, want: usize) -> usize {
    let start = Instant::now();
    loop {
        let n = count_threads(name);
        if n == want || start.elapsed() > WAIT {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn count_threads(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim_end() == name)
        .count()
}
