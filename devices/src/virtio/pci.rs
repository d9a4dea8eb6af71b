//! [`VirtioPciDevice`]: the virtio 1.x PCI transport, modern only.
//!
//! # Identity
//!
//! Vendor 0x1af4, device 0x1040 + virtio type, revision 1, subsystem 0x1af4:0x0040, class from
//! the device, interrupt pin INTA#.
//!
//! # BAR 0 (64-bit memory, not prefetchable, [`BAR_SIZE`] bytes)
//!
//! | Offset | Region | Length |
//! |---|---|---|
//! | 0x0000 | common configuration ([`COMMON_CFG_OFFSET`]) | 0x38 |
//! | 0x1000 | ISR status ([`ISR_OFFSET`]): bit 0 queue, bit 1 configuration; cleared by reading | 1 |
//! | 0x2000 | device configuration ([`DEVICE_CFG_OFFSET`]) | the device's |
//! | 0x3000 | notify ([`NOTIFY_OFFSET`]): queue *n* at 0x3000 + 4*n* (multiplier 4) | 4 × queues |
//! | 0x4000 | MSI-X table ([`MSIX_TABLE_OFFSET`]): queues + 1 vectors | 16 × vectors |
//! | 0x6000 | MSI-X PBA ([`MSIX_PBA_OFFSET`]) | |
//!
//! # Common configuration (offsets into it)
//!
//! | Offset | Field | Width | Access |
//! |---|---|---|---|
//! | 0x00 | device_feature_select | 4 | RW |
//! | 0x04 | device_feature (32 bits of the offered features picked by the select) | 4 | RO |
//! | 0x08 | driver_feature_select | 4 | RW |
//! | 0x0c | driver_feature | 4 | RW until FEATURES_OK |
//! | 0x10 | config_msix_vector | 2 | RW; reads 0xffff if the vector does not exist |
//! | 0x12 | num_queues | 2 | RO |
//! | 0x14 | device_status | 1 | RW (0 resets) |
//! | 0x15 | config_generation | 1 | RO |
//! | 0x16 | queue_select | 2 | RW |
//! | 0x18 | queue_size | 2 | RW while the queue is disabled (power of two up to the maximum) |
//! | 0x1a | queue_msix_vector | 2 | RW |
//! | 0x1c | queue_enable | 2 | RW (writing 1 enables) |
//! | 0x1e | queue_notify_off | 2 | RO: the queue index |
//! | 0x20 | queue_desc | 8 | RW while the queue is disabled |
//! | 0x28 | queue_driver (available ring) | 8 | RW while the queue is disabled |
//! | 0x30 | queue_device (used ring) | 8 | RW while the queue is disabled |
//!
//! Accesses of any width and alignment work (a field written in part keeps its other bytes).
//!
//! # Config space capabilities
//!
//! MSI-X, then the vendor-specific virtio capabilities (ID 0x09): common (type 1), notify
//! (type 2, with the multiplier), ISR (type 3), device (type 4, when the device has a
//! configuration) and the PCI configuration access capability (type 5: its `bar`, `offset` and
//! `length` fields are writable, and `pci_cfg_data` reads and writes BAR 0 there).
//!
//! # Device status
//!
//! Writing 0 resets: the I/O thread is stopped and joined, the queues, features, selects and
//! vectors return to their reset values and the ISR is cleared (so INTx stays de-asserted after
//! the guest's EOI). The driver cannot clear bits otherwise. FEATURES_OK sticks only if the
//! driver's features are a subset of the offered ones and include VERSION_1. DRIVER_OK (after
//! FEATURES_OK) checks the enabled queues (size, alignment, rings in guest RAM, the available
//! ring not at address 0, which virtio-queue takes for an unset ring) and starts the
//! I/O thread; if that fails the device sets NEEDS_RESET and raises the configuration
//! interrupt, as it does when the I/O thread finds a malformed ring.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::Queue;
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use super::irq::{IrqState, VIRTIO_MSI_NO_VECTOR};
use super::worker::{make_queue, IoThread, Shared, ThreadStart, Worker};
use super::{
    thread_name, Features, VirtioDevice, VirtioError, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    STATUS_NEEDS_RESET, TRANSPORT_FEATURES, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
    VIRTIO_PCI_DEVICE_ID_BASE, VIRTIO_PCI_SUBSYSTEM_ID, VIRTIO_PCI_VENDOR_ID,
};
use crate::interrupt::{InterruptManager, IntxLine};
use crate::ioevent::{Datamatch, IoEventRegistrar};
use crate::pci::bar::{BarSpec, DecodedBar};
use crate::pci::caps::msix::{Msix, MsixCap, MsixError, MSIX_ENTRY_SIZE};
use crate::pci::config::{
    CapRegs, ConfigError, ConfigHeader, ConfigSpace, CMD_BUS_MASTER, CMD_INTX_DISABLE, COMMAND,
    STATUS, STATUS_INTERRUPT,
};
use crate::pci::platform::lock;
use crate::pci::{BarAccess, PciDevice};

/// The BAR holding every virtio structure and the MSI-X table.
pub const VIRTIO_BAR: usize = 0;
/// Its size.
pub const BAR_SIZE: u64 = 0x8000;
/// Common configuration, offset into the BAR.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Common configuration length.
pub const COMMON_CFG_LEN: u64 = 0x38;
/// ISR status.
pub const ISR_OFFSET: u64 = 0x1000;
/// Device configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Largest device configuration.
pub const DEVICE_CFG_MAX: u64 = 0x1000;
/// Notify region: queue *n* at `NOTIFY_OFFSET + NOTIFY_MULTIPLIER * n`.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
/// MSI-X pending-bit array.
pub const MSIX_PBA_OFFSET: u32 = 0x6000;
/// Most queues a device may have (the notify region and the MSI-X table bound it).
pub const MAX_QUEUES: usize = 511;

/// Vendor-specific capability ID, used by every virtio structure capability.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// `cfg_type`: common configuration.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type`: notifications.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type`: ISR status.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type`: device configuration.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type`: PCI configuration access.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

/// Common configuration fields (offsets into it).
pub mod common {
    /// Selects which 32 feature bits `DEVICE_FEATURE` shows.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// 32 bits of the offered features.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// Selects which 32 feature bits `DRIVER_FEATURE` writes.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// 32 bits of the driver's features.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// MSI-X vector for configuration changes.
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    /// Number of queues.
    pub const NUM_QUEUES: u64 = 0x12;
    /// Device status.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// Configuration generation.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// Selects the queue the queue fields show.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// Queue size.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// Queue MSI-X vector.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// Queue enable.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// Queue notify offset (in multiples of the notify multiplier).
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// Descriptor table address.
    pub const QUEUE_DESC: u64 = 0x20;
    /// Available ring address.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// Used ring address.
    pub const QUEUE_DEVICE: u64 = 0x30;
}

/// Errors from building a virtio PCI device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device declares no queues, too many, or a maximum size that is not a power of two
    /// in 1..=32768.
    #[error("virtio device {name}: invalid queues {sizes:?} (1..={MAX_QUEUES} queues, sizes powers of two up to 32768)")]
    Queues {
        /// Device name.
        name: String,
        /// The maximum sizes it declared.
        sizes: Vec<u16>,
    },
    /// The device configuration is larger than its region.
    #[error(
        "virtio device {name}: device configuration of {len} bytes is larger than {DEVICE_CFG_MAX}"
    )]
    ConfigTooLarge {
        /// Device name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// Laying out the config space failed.
    #[error("virtio device config space: {0}")]
    Config(#[from] ConfigError),
    /// Setting up MSI-X failed (no free GSIs).
    #[error("virtio device MSI-X: {0}")]
    Msix(#[from] MsixError),
    /// Creating an `EventFd` failed.
    #[error("virtio device: creating an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Starting the device's I/O thread failed.
    #[error("virtio device {name}: starting its I/O thread: {source}")]
    Thread {
        /// The device (and thread) name.
        name: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What the driver programmed into one queue.
#[derive(Debug, Clone, Copy)]
struct QueueCfg {
    max: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueCfg {
    fn new(max: u16) -> Self {
        QueueCfg {
            max,
            size: max,
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// The PCI configuration access capability's field offsets (into the capability).
const PCI_CFG_BAR: u16 = 4;
const PCI_CFG_OFFSET: u16 = 8;
const PCI_CFG_LENGTH: u16 = 12;
const PCI_CFG_DATA: u16 = 16;

/// A virtio device on PCI: the transport around a [`VirtioDevice`], with the guest memory `M`
/// its queues live in. Add it to the platform with [`crate::pci::PciPlatform::add_device`].
pub struct VirtioPciDevice<M: GuestMemory> {
    name: String,
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    mem: M,
    irq: Arc<Mutex<IrqState>>,
    shared: Arc<Shared>,
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
    /// The guest address of the notify region whose addresses are bound now.
    notify_bound: Option<u64>,
    notify: Vec<Arc<EventFd>>,
    queues: Vec<QueueCfg>,
    offered: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    generation: u8,
    queue_select: u16,
    pci_cfg_cap: u16,
    io: IoThread,
}

impl<M: GuestMemory> std::fmt::Debug for VirtioPciDevice<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("name", &self.name)
            .field("status", &self.status)
            .field("running", &self.io.running())
            .finish_non_exhaustive()
    }
}

fn vendor_cap(cfg_type: u8, offset: u64, length: u64, extra: usize) -> CapRegs {
    let len = 16 + extra;
    let mut r = CapRegs::new(len);
    r.field(2, 1, len as u32, 0, 0);
    r.field(3, 1, cfg_type.into(), 0, 0);
    r.field(4, 1, VIRTIO_BAR as u32, 0, 0);
    r.field(8, 4, offset as u32, 0, 0);
    r.field(12, 4, length as u32, 0, 0);
    r
}

impl<M: GuestMemory + Clone + Send + Sync + 'static> VirtioPciDevice<M> {
    /// Wraps `device`. `name` names its I/O thread and its log lines (e.g. `virtio-blk0`; cut
    /// to 15 bytes). Its queues live in `mem`; its MSI-X vectors (one per queue plus one for
    /// configuration changes) come from `irq`. With `ioevents`, queue notify writes are bound
    /// to `EventFd`s whenever the BAR is mapped, so they never exit to the VMM.
    pub fn new(
        name: &str,
        device: Box<dyn VirtioDevice>,
        mem: M,
        irq: &dyn InterruptManager,
        ioevents: Option<Arc<dyn IoEventRegistrar>>,
    ) -> Result<Self, VirtioPciError> {
        Self::with_thread_start(name, device, mem, irq, ioevents, None)
    }

    /// Like [`VirtioPciDevice::new`], and the device's I/O thread runs `start` (with its name)
    /// before anything else: a VMM installs the thread's seccomp filter there. The thread is
    /// created here, on the caller's thread, and sleeps until the driver starts the device.
    pub fn with_thread_start(
        name: &str,
        device: Box<dyn VirtioDevice>,
        mem: M,
        irq: &dyn InterruptManager,
        ioevents: Option<Arc<dyn IoEventRegistrar>>,
        start: Option<ThreadStart>,
    ) -> Result<Self, VirtioPciError> {
        let name = thread_name(name);
        let sizes = device.queue_max_sizes();
        if sizes.is_empty()
            || sizes.len() > MAX_QUEUES
            || sizes
                .iter()
                .any(|&s| s == 0 || s > 32768 || !s.is_power_of_two())
        {
            return Err(VirtioPciError::Queues { name, sizes });
        }
        let config_len = device.config_len();
        if config_len as u64 > DEVICE_CFG_MAX {
            return Err(VirtioPciError::ConfigTooLarge {
                name,
                len: config_len,
            });
        }
        let mut config = ConfigSpace::new(&ConfigHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + device.device_type(),
            revision_id: 1,
            class_code: device.pci_class(),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
            interrupt_pin: 1,
        });
        config.set_bar(VIRTIO_BAR, BarSpec::mem64(BAR_SIZE, false))?;
        let vectors = sizes.len() as u16 + 1;
        let cap = MsixCap::new(
            vectors,
            VIRTIO_BAR,
            MSIX_TABLE_OFFSET,
            VIRTIO_BAR,
            MSIX_PBA_OFFSET,
        )?;
        let msix = Msix::new(&mut config, cap, irq)?;
        let nq = sizes.len() as u64;
        config.add_capability(
            PCI_CAP_ID_VNDR,
            &vendor_cap(
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_CFG_OFFSET,
                COMMON_CFG_LEN,
                0,
            ),
        )?;
        let mut notify_cap = vendor_cap(
            VIRTIO_PCI_CAP_NOTIFY_CFG,
            NOTIFY_OFFSET,
            nq * u64::from(NOTIFY_MULTIPLIER),
            4,
        );
        notify_cap.field(16, 4, NOTIFY_MULTIPLIER, 0, 0);
        config.add_capability(PCI_CAP_ID_VNDR, &notify_cap)?;
        config.add_capability(
            PCI_CAP_ID_VNDR,
            &vendor_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, 0),
        )?;
        if config_len > 0 {
            config.add_capability(
                PCI_CAP_ID_VNDR,
                &vendor_cap(
                    VIRTIO_PCI_CAP_DEVICE_CFG,
                    DEVICE_CFG_OFFSET,
                    config_len as u64,
                    0,
                ),
            )?;
        }
        let mut pci_cfg = vendor_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 4);
        pci_cfg.field(PCI_CFG_BAR.into(), 1, 0, 0xff, 0);
        pci_cfg.field(PCI_CFG_OFFSET.into(), 4, 0, u32::MAX, 0);
        pci_cfg.field(PCI_CFG_LENGTH.into(), 4, 0, u32::MAX, 0);
        pci_cfg.field(PCI_CFG_DATA.into(), 4, 0, u32::MAX, 0);
        let pci_cfg_cap = config.add_capability(PCI_CAP_ID_VNDR, &pci_cfg)?;

        let notify = (0..sizes.len())
            .map(|_| crate::new_eventfd().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        let offered = device.features() | TRANSPORT_FEATURES;
        let io = IoThread::spawn(&name, start).map_err(|source| VirtioPciError::Thread {
            name: name.clone(),
            source,
        })?;
        Ok(VirtioPciDevice {
            irq: Arc::new(Mutex::new(IrqState::new(&name, msix, sizes.len()))),
            name,
            config,
            device,
            mem,
            shared: Arc::new(Shared::default()),
            ioevents,
            notify_bound: None,
            notify,
            queues: sizes.iter().map(|&s| QueueCfg::new(s)).collect(),
            offered,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            generation: 0,
            queue_select: 0,
            pci_cfg_cap,
            io,
        })
    }

    /// The name its thread and logs carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device status as the driver reads it (NEEDS_RESET included).
    pub fn status(&self) -> u8 {
        let nr = if self.shared.needs_reset.load(Ordering::Acquire) {
            STATUS_NEEDS_RESET
        } else {
            0
        };
        self.status | nr
    }

    /// The features offered (the device's and the transport's).
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// The features the driver accepted (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the I/O thread runs.
    pub fn running(&self) -> bool {
        self.io.running()
    }

    /// The config space (for tests).
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The `EventFd` queue `q`'s notify address signals (what a registrar binds).
    pub fn notify_eventfd(&self, q: usize) -> Option<&EventFd> {
        self.notify.get(q).map(|e| &**e)
    }

    /// Stops the I/O thread and waits for it, leaving the device as the driver set it (the VMM
    /// shutting down, before it drops the device; dropping does the same).
    pub fn shutdown(&mut self) {
        self.io.stop();
    }

    fn needs_reset(&mut self, why: std::fmt::Arguments<'_>) {
        log::warn!("{}: {why}; the device needs a reset", self.name);
        self.shared.needs_reset.store(true, Ordering::Release);
        lock(&self.irq).signal_config();
    }

    /// Device reset (status 0).
    fn reset(&mut self) {
        self.shutdown();
        self.device.reset();
        for q in &mut self.queues {
            *q = QueueCfg::new(q.max);
        }
        for fd in &self.notify {
            crate::interrupt::drain_eventfd(fd);
        }
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        self.shared.needs_reset.store(false, Ordering::Release);
        lock(&self.irq).reset();
        self.sync_intx_status();
    }

    fn features_ok(&self) -> bool {
        self.driver_features & !self.offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            log::debug!("{}: reset by the driver", self.name);
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = v & !STATUS_NEEDS_RESET;
        if new & old != old {
            log::warn!(
                "{}: the driver cleared device status bits ({old:#x} -> {new:#x}) without a reset; ignored",
                self.name
            );
            return;
        }
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 && !self.features_ok() {
            log::warn!(
                "{}: refusing driver features {} (offered {}; VERSION_1 is required)",
                self.name,
                Features(self.driver_features),
                Features(self.offered)
            );
            new &= !STATUS_FEATURES_OK;
        }
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            if new & STATUS_FEATURES_OK == 0 {
                log::warn!("{}: DRIVER_OK without FEATURES_OK; ignored", self.name);
                new &= !STATUS_DRIVER_OK;
            } else {
                self.status = new;
                if let Err(e) = self.activate() {
                    self.needs_reset(format_args!("{e}"));
                }
                return;
            }
        }
        self.status = new;
    }

    fn build_queue(&self, i: usize, c: &QueueCfg) -> Result<Queue, String> {
        make_queue(
            &self.mem,
            c.max,
            c.size,
            (c.desc, c.avail, c.used),
            self.driver_features & VIRTIO_F_RING_EVENT_IDX != 0,
        )
        .map_err(|e| format!("queue {i}: {e}"))
    }

    fn activate(&mut self) -> Result<(), VirtioError> {
        let fail = |why: String| VirtioError::Activate {
            device: self.name.clone(),
            why,
        };
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, c) in self.queues.iter().enumerate() {
            queues.push(if c.ready {
                Some(self.build_queue(i, c).map_err(fail)?)
            } else {
                None
            });
        }
        if queues.iter().all(Option::is_none) {
            return Err(fail("the driver enabled no queue".into()));
        }
        let handler = self.device.activate(self.driver_features)?;
        let resample = lock(&self.irq)
            .intx
            .as_ref()
            .map(|l| l.resample_eventfd().as_raw_fd());
        let worker = Worker {
            name: self.name.clone(),
            mem: self.mem.clone(),
            queues,
            notify: self.notify.clone(),
            resample,
            irq: self.irq.clone(),
            shared: self.shared.clone(),
            handler,
        };
        self.io
            .start(worker)
            .map_err(|source| VirtioError::Thread {
                name: self.name.clone(),
                source,
            })?;
        log::debug!(
            "{}: started with features {}",
            self.name,
            Features(self.driver_features)
        );
        Ok(())
    }

    fn selected(&self) -> Option<&QueueCfg> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The common configuration as the driver reads it now.
    fn common_snapshot(&self) -> [u8; COMMON_CFG_LEN as usize] {
        use common::*;
        let mut b = [0u8; COMMON_CFG_LEN as usize];
        let mut put = |off: u64, bytes: &[u8]| {
            let o = off as usize;
            b[o..o + bytes.len()].copy_from_slice(bytes);
        };
        let feat = match self.device_feature_select {
            0 => self.offered as u32,
            1 => (self.offered >> 32) as u32,
            _ => 0,
        };
        let drv = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        let irq = lock(&self.irq);
        put(
            DEVICE_FEATURE_SELECT,
            &self.device_feature_select.to_le_bytes(),
        );
        put(DEVICE_FEATURE, &feat.to_le_bytes());
        put(
            DRIVER_FEATURE_SELECT,
            &self.driver_feature_select.to_le_bytes(),
        );
        put(DRIVER_FEATURE, &drv.to_le_bytes());
        put(CONFIG_MSIX_VECTOR, &irq.config_vector.to_le_bytes());
        put(NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        put(DEVICE_STATUS, &[self.status()]);
        put(CONFIG_GENERATION, &[self.generation]);
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        let qi = usize::from(self.queue_select);
        if let Some(q) = self.selected() {
            let vector = irq
                .queue_vectors
                .get(qi)
                .copied()
                .unwrap_or(VIRTIO_MSI_NO_VECTOR);
            put(QUEUE_SIZE, &q.size.to_le_bytes());
            put(QUEUE_MSIX_VECTOR, &vector.to_le_bytes());
            put(QUEUE_ENABLE, &u16::from(q.ready).to_le_bytes());
            put(QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(QUEUE_DESC, &q.desc.to_le_bytes());
            put(QUEUE_DRIVER, &q.avail.to_le_bytes());
            put(QUEUE_DEVICE, &q.used.to_le_bytes());
        } else {
            put(QUEUE_MSIX_VECTOR, &VIRTIO_MSI_NO_VECTOR.to_le_bytes());
        }
        b
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let snap = self.common_snapshot();
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| snap.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    /// A write of any width: the bytes are laid over the current values and every field they
    /// touch is written whole, in offset order.
    fn common_write(&mut self, offset: u64, data: &[u8]) {
        use common::*;
        const FIELDS: [(u64, usize); 16] = [
            (DEVICE_FEATURE_SELECT, 4),
            (DEVICE_FEATURE, 4),
            (DRIVER_FEATURE_SELECT, 4),
            (DRIVER_FEATURE, 4),
            (CONFIG_MSIX_VECTOR, 2),
            (NUM_QUEUES, 2),
            (DEVICE_STATUS, 1),
            (CONFIG_GENERATION, 1),
            (QUEUE_SELECT, 2),
            (QUEUE_SIZE, 2),
            (QUEUE_MSIX_VECTOR, 2),
            (QUEUE_ENABLE, 2),
            (QUEUE_NOTIFY_OFF, 2),
            (QUEUE_DESC, 8),
            (QUEUE_DRIVER, 8),
            (QUEUE_DEVICE, 8),
        ];
        let mut snap = self.common_snapshot();
        let end = offset.saturating_add(data.len() as u64);
        for (i, &v) in data.iter().enumerate() {
            if let Some(b) = usize::try_from(offset + i as u64)
                .ok()
                .and_then(|at| snap.get_mut(at))
            {
                *b = v;
            }
        }
        for (at, width) in FIELDS {
            if at < end && offset < at + width as u64 {
                let mut v = [0u8; 8];
                v[..width].copy_from_slice(&snap[at as usize..at as usize + width]);
                self.write_field(at, u64::from_le_bytes(v));
            }
        }
    }

    fn write_field(&mut self, at: u64, v: u64) {
        use common::*;
        let configurable = self.status & STATUS_DRIVER_OK == 0;
        let qi = usize::from(self.queue_select);
        let q_writable = configurable && self.selected().is_some_and(|q| !q.ready);
        match at {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            DRIVER_FEATURE => {
                if self.status & STATUS_FEATURES_OK != 0 {
                    return;
                }
                let v = v & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            CONFIG_MSIX_VECTOR => {
                let mut irq = lock(&self.irq);
                let vectors = irq.msix.cap().vectors();
                irq.config_vector = valid_vector(v as u16, vectors);
            }
            DEVICE_STATUS => self.write_status(v as u8),
            QUEUE_SELECT => self.queue_select = v as u16,
            QUEUE_SIZE if q_writable => {
                let s = v as u16;
                if let Some(q) = self.queues.get_mut(qi) {
                    if s != 0 && s.is_power_of_two() && s <= q.max {
                        q.size = s;
                    } else {
                        log::warn!("{}: queue {qi}: size {s} refused", self.name);
                    }
                }
            }
            QUEUE_MSIX_VECTOR if qi < self.queues.len() => {
                let mut irq = lock(&self.irq);
                let vectors = irq.msix.cap().vectors();
                if let Some(slot) = irq.queue_vectors.get_mut(qi) {
                    *slot = valid_vector(v as u16, vectors);
                }
            }
            QUEUE_ENABLE if q_writable && v as u16 == 1 => {
                if let Some(q) = self.queues.get_mut(qi) {
                    q.ready = true;
                }
            }
            QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE if q_writable => {
                // A driver writes the halves apart; the other half kept its value above.
                let Some(q) = self.queues.get_mut(qi) else {
                    return;
                };
                let field = match at {
                    QUEUE_DESC => &mut q.desc,
                    QUEUE_DRIVER => &mut q.avail,
                    _ => &mut q.used,
                };
                *field = v;
            }
            _ => {}
        }
    }

    fn sync_intx_status(&mut self) {
        let irq = lock(&self.irq);
        let on = irq.isr != 0 && !irq.msix.enabled();
        drop(irq);
        self.config.set_status_bits(STATUS_INTERRUPT, on);
    }

    /// Binds (or rebinds) the queues' notify addresses for the BAR at `base`.
    fn bind_notify(&mut self, base: Option<u64>) {
        let Some(io) = self.ioevents.clone() else {
            return;
        };
        if let Some(old) = self.notify_bound.take() {
            for (i, fd) in self.notify.iter().enumerate() {
                let addr = notify_addr(old, i);
                if let Err(e) = io.unregister(fd, addr, Datamatch::Any) {
                    log::warn!("{}: {e}", self.name);
                }
            }
        }
        if let Some(new) = base {
            for (i, fd) in self.notify.iter().enumerate() {
                let addr = notify_addr(new, i);
                if let Err(e) = io.register(fd, addr, Datamatch::Any) {
                    // The write then exits to the VMM and bar_write signals the same fd.
                    log::warn!(
                        "{}: {e}; queue {i} notifications exit to the VMM",
                        self.name
                    );
                }
            }
            self.notify_bound = Some(new);
        }
    }

    /// Handles a guest access to `pci_cfg_data` of the PCI configuration access capability:
    /// a read fills it from BAR 0 at the capability's offset, a write goes there.
    fn pci_cfg_access(&mut self, read: bool) {
        let c = self.pci_cfg_cap;
        let bar = self.config.read_u8(c + PCI_CFG_BAR);
        let off = u64::from(self.config.read_u32(c + PCI_CFG_OFFSET));
        let len = self.config.read_u32(c + PCI_CFG_LENGTH) as usize;
        if usize::from(bar) != VIRTIO_BAR || !matches!(len, 1 | 2 | 4) || off % len as u64 != 0 {
            return;
        }
        let mut buf = [0u8; 4];
        if read {
            self.bar_read(VIRTIO_BAR, off, &mut buf[..len]);
            self.config.set_bytes(c + PCI_CFG_DATA, &buf);
        } else {
            self.config.read(c + PCI_CFG_DATA, &mut buf);
            self.bar_write(VIRTIO_BAR, off, &buf[..len]);
        }
    }
}

fn valid_vector(v: u16, vectors: u16) -> u16 {
    if v < vectors {
        v
    } else {
        VIRTIO_MSI_NO_VECTOR
    }
}

fn notify_addr(base: u64, q: usize) -> u64 {
    base + NOTIFY_OFFSET + u64::from(NOTIFY_MULTIPLIER) * q as u64
}

impl<M: GuestMemory> Drop for VirtioPciDevice<M> {
    fn drop(&mut self) {
        self.io.stop();
        if let (Some(io), Some(base)) = (&self.ioevents, self.notify_bound.take()) {
            for (i, fd) in self.notify.iter().enumerate() {
                if let Err(e) = io.unregister(fd, notify_addr(base, i), Datamatch::Any) {
                    log::warn!("{}: {e}", self.name);
                }
            }
        }
    }
}

impl<M: GuestMemory + Clone + Send + Sync + 'static> PciDevice for VirtioPciDevice<M> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        let c = self.pci_cfg_cap;
        if ConfigSpace::touches(offset, data.len(), c + PCI_CFG_DATA, 4) {
            self.pci_cfg_access(true);
        }
        if ConfigSpace::touches(offset, data.len(), STATUS, 2) {
            lock(&self.irq).resample();
            self.sync_intx_status();
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
        {
            let mut irq = lock(&self.irq);
            irq.msix.config_written(&self.config, offset, data.len());
            if ConfigSpace::touches(offset, data.len(), COMMAND, 2) {
                let cmd = self.config.command();
                irq.bus_master = cmd & CMD_BUS_MASTER != 0;
                irq.intx_disabled = cmd & CMD_INTX_DISABLE != 0;
                irq.assert_intx();
            }
        }
        if ConfigSpace::touches(offset, data.len(), self.pci_cfg_cap + PCI_CFG_DATA, 4) {
            self.pci_cfg_access(false);
        }
    }

    /// A virtio device reset (status 0: the queues stopped and forgotten, features and vectors
    /// cleared) and MSI-X off with every entry masked.
    fn system_reset(&mut self) {
        self.reset();
        lock(&self.irq).msix.reset(&mut self.config);
    }

    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        self.config.bar_specs()
    }

    fn decoded_bars(&self) -> Vec<DecodedBar> {
        self.config.decoded_bars()
    }

    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        if bar == VIRTIO_BAR {
            log::debug!("{}: BAR moved {old:x?} -> {new:x?}", self.name);
            self.bind_notify(new);
        }
    }

    fn attach_intx(&mut self, line: Box<dyn IntxLine>) {
        lock(&self.irq).intx = Some(line);
    }
}

fn region(offset: u64, start: u64, len: u64) -> Option<u64> {
    (offset >= start && offset - start < len).then(|| offset - start)
}

impl<M: GuestMemory + Clone + Send + Sync + 'static> BarAccess for VirtioPciDevice<M> {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar != VIRTIO_BAR {
            data.fill(0xff);
            return;
        }
        let msix_len = u64::from(MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) * 2;
        if let Some(o) = region(offset, COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
            self.common_read(o, data);
        } else if region(offset, ISR_OFFSET, 4).is_some() {
            let mut irq = lock(&self.irq);
            let isr = if offset == ISR_OFFSET {
                irq.read_isr()
            } else {
                0
            };
            drop(irq);
            data.fill(0);
            if let Some(b) = data.first_mut() {
                *b = isr;
            }
            self.sync_intx_status();
        } else if let Some(o) = region(offset, DEVICE_CFG_OFFSET, DEVICE_CFG_MAX) {
            self.device.read_config(o, data);
        } else if region(offset, u64::from(MSIX_TABLE_OFFSET), msix_len).is_some() {
            if !lock(&self.irq).msix.bar_read(bar, offset, data) {
                data.fill(0);
            }
        } else {
            data.fill(0);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != VIRTIO_BAR {
            return;
        }
        let msix_len = u64::from(MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) * 2;
        let notify_len = self.notify.len() as u64 * u64::from(NOTIFY_MULTIPLIER);
        if let Some(o) = region(offset, COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
            self.common_write(o, data);
            self.sync_intx_status();
        } else if let Some(o) = region(offset, DEVICE_CFG_OFFSET, DEVICE_CFG_MAX) {
            self.device.write_config(o, data);
        } else if let Some(o) = region(offset, NOTIFY_OFFSET, notify_len) {
            // What the ioeventfd would have done.
            let q = (o / u64::from(NOTIFY_MULTIPLIER)) as usize;
            if let Some(fd) = self.notify.get(q) {
                if let Err(e) = fd.write(1) {
                    log::warn!("{}: signalling queue {q}: {e}", self.name);
                }
            }
        } else if region(offset, u64::from(MSIX_TABLE_OFFSET), msix_len).is_some() {
            lock(&self.irq).msix.bar_write(bar, offset, data);
        }
    }
}

const _: () = assert!(
    MSIX_TABLE_OFFSET as u64 + MAX_QUEUES as u64 * MSIX_ENTRY_SIZE + MSIX_ENTRY_SIZE
        <= MSIX_PBA_OFFSET as u64
);
