//! A model of the virtio-pci common configuration (`virtio_pci`'s reference), written from the
//! virtio 1.x rules as `devices/src/virtio/pci.rs` documents them: the feature words and
//! selects, the vectors (NO_VECTOR outside the table), the status state machine (reset, bits
//! that cannot be cleared, FEATURES_OK only for a subset of the offered features with
//! VERSION_1, DRIVER_OK only after it and only with valid enabled queues), the queue fields
//! (writable only while the queue is disabled and DRIVER_OK is clear). A write of any width
//! is the bytes laid over what the driver reads, then every field they touch written whole in
//! offset order (the transport's documented rule for partial and multi-field writes).

use devices::virtio::pci::common;
use devices::virtio::{
    STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1,
};

/// "No vector".
pub const NO_VECTOR: u16 = 0xffff;
/// Length of the common configuration.
pub const COMMON_LEN: usize = 0x38;

/// What the device reports to its embedder: activations (with the features) and resets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceLog {
    /// The features of each activation.
    pub activations: Vec<u64>,
    /// Resets.
    pub resets: u32,
}

/// What the driver programmed into one queue, as the model has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueModel {
    /// The device's largest size.
    pub max: u16,
    /// Size.
    pub size: u16,
    /// queue_enable.
    pub ready: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    /// MSI-X vector.
    pub vector: u16,
}

impl QueueModel {
    /// A queue after reset.
    pub fn new(max: u16) -> Self {
        QueueModel {
            max,
            size: max,
            ready: false,
            desc: 0,
            avail: 0,
            used: 0,
            vector: NO_VECTOR,
        }
    }

    /// Whether DRIVER_OK may start the device with this queue enabled.
    pub fn valid(&self, regions: &[(u64, u64)]) -> bool {
        let ram = |addr: u64, len: u64| {
            addr.checked_add(len)
                .is_some_and(|end| regions.iter().any(|&(s, l)| addr >= s && end <= s + l))
        };
        let n = u64::from(self.size);
        self.size.is_power_of_two()
            && self.size <= self.max
            && self.avail != 0
            && self.desc % 16 == 0
            && self.avail % 2 == 0
            && self.used % 4 == 0
            && ram(self.desc, 16 * n)
            && ram(self.avail, 6 + 2 * n)
            && ram(self.used, 6 + 8 * n)
    }
}

/// The transport as the virtio 1.x rules say it behaves.
#[derive(Debug, Clone)]
pub struct Model {
    /// The features offered.
    pub offered: u64,
    /// MSI-X table size.
    pub vectors: u16,
    /// device_feature_select.
    pub dfsel: u32,
    /// driver_feature_select.
    pub drvsel: u32,
    /// The driver's features.
    pub driver_features: u64,
    /// Device status, without NEEDS_RESET.
    pub status: u8,
    /// NEEDS_RESET, as far as the harness knows (the I/O thread may set it on its own).
    pub needs_reset: bool,
    /// config_msix_vector.
    pub config_vector: u16,
    /// queue_select.
    pub qsel: u16,
    /// The queues.
    pub queues: Vec<QueueModel>,
    /// The device runs: DRIVER_OK accepted and the activation done.
    pub running: bool,
    /// The ISR as the model has it, exact while `isr_exact`.
    pub isr: u8,
    /// No I/O thread ran since the ISR was last cleared.
    pub isr_exact: bool,
    /// Whether each vector was ever assigned to the configuration or a queue.
    pub assigned: Vec<bool>,
    /// Whether the device's activation fails.
    pub activation_fails: bool,
    /// Activations and resets the device should have seen.
    pub log: DeviceLog,
    /// Guest RAM, `(start, len)`.
    pub ram: Vec<(u64, u64)>,
}

impl Model {
    /// A device offering `offered` with queues of `sizes`, in RAM of `ram` regions.
    pub fn new(offered: u64, sizes: &[u16], activation_fails: bool, ram: &[(u64, u64)]) -> Self {
        Model {
            offered,
            vectors: sizes.len() as u16 + 1,
            dfsel: 0,
            drvsel: 0,
            driver_features: 0,
            status: 0,
            needs_reset: false,
            config_vector: NO_VECTOR,
            qsel: 0,
            queues: sizes.iter().map(|&s| QueueModel::new(s)).collect(),
            running: false,
            isr: 0,
            isr_exact: true,
            assigned: vec![false; sizes.len() + 1],
            activation_fails,
            log: DeviceLog::default(),
            ram: ram.to_vec(),
        }
    }

    fn vector(&mut self, v: u16) -> u16 {
        if v < self.vectors {
            self.assigned[usize::from(v)] = true;
            v
        } else {
            NO_VECTOR
        }
    }

    /// The common configuration as the driver should read it (NEEDS_RESET as the model knows).
    pub fn view(&self) -> [u8; COMMON_LEN] {
        let mut b = [0u8; COMMON_LEN];
        let mut put = |at: u64, bytes: &[u8]| {
            b[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        let word = |sel: u32, v: u64| match sel {
            0 => v as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        put(common::DEVICE_FEATURE_SELECT, &self.dfsel.to_le_bytes());
        put(
            common::DEVICE_FEATURE,
            &word(self.dfsel, self.offered).to_le_bytes(),
        );
        put(common::DRIVER_FEATURE_SELECT, &self.drvsel.to_le_bytes());
        put(
            common::DRIVER_FEATURE,
            &word(self.drvsel, self.driver_features).to_le_bytes(),
        );
        put(
            common::CONFIG_MSIX_VECTOR,
            &self.config_vector.to_le_bytes(),
        );
        put(
            common::NUM_QUEUES,
            &(self.queues.len() as u16).to_le_bytes(),
        );
        let nr = if self.needs_reset {
            STATUS_NEEDS_RESET
        } else {
            0
        };
        put(common::DEVICE_STATUS, &[self.status | nr]);
        put(common::QUEUE_SELECT, &self.qsel.to_le_bytes());
        match self.queues.get(usize::from(self.qsel)) {
            Some(q) => {
                put(common::QUEUE_SIZE, &q.size.to_le_bytes());
                put(common::QUEUE_MSIX_VECTOR, &q.vector.to_le_bytes());
                put(common::QUEUE_ENABLE, &u16::from(q.ready).to_le_bytes());
                put(common::QUEUE_NOTIFY_OFF, &self.qsel.to_le_bytes());
                put(common::QUEUE_DESC, &q.desc.to_le_bytes());
                put(common::QUEUE_DRIVER, &q.avail.to_le_bytes());
                put(common::QUEUE_DEVICE, &q.used.to_le_bytes());
            }
            None => put(common::QUEUE_MSIX_VECTOR, &NO_VECTOR.to_le_bytes()),
        }
        b
    }

    /// A driver write of `data` at `offset` into the common configuration: the bytes laid over
    /// what the driver reads, then every field they touch written whole, in offset order.
    pub fn common_write(&mut self, offset: u64, data: &[u8]) {
        const FIELDS: [(u64, u64); 16] = [
            (0x00, 4),
            (0x04, 4),
            (0x08, 4),
            (0x0c, 4),
            (0x10, 2),
            (0x12, 2),
            (0x14, 1),
            (0x15, 1),
            (0x16, 2),
            (0x18, 2),
            (0x1a, 2),
            (0x1c, 2),
            (0x1e, 2),
            (0x20, 8),
            (0x28, 8),
            (0x30, 8),
        ];
        let mut view = self.view();
        for (i, &d) in data.iter().enumerate() {
            if let Some(b) = view.get_mut(offset as usize + i) {
                *b = d;
            }
        }
        let end = offset + data.len() as u64;
        for (at, w) in FIELDS {
            if at < end && offset < at + w {
                let mut v = [0u8; 8];
                v[..w as usize].copy_from_slice(&view[at as usize..(at + w) as usize]);
                self.field(at, u64::from_le_bytes(v));
            }
        }
    }

    fn field(&mut self, at: u64, v: u64) {
        let configurable = self.status & STATUS_DRIVER_OK == 0;
        let qi = usize::from(self.qsel);
        let q_writable = configurable && self.queues.get(qi).is_some_and(|q| !q.ready);
        match at {
            common::DEVICE_FEATURE_SELECT => self.dfsel = v as u32,
            common::DRIVER_FEATURE_SELECT => self.drvsel = v as u32,
            common::DRIVER_FEATURE if self.status & STATUS_FEATURES_OK == 0 => {
                let v = v & 0xffff_ffff;
                match self.drvsel {
                    0 => self.driver_features = self.driver_features & !0xffff_ffff | v,
                    1 => self.driver_features = self.driver_features & 0xffff_ffff | v << 32,
                    _ => {}
                }
            }
            common::CONFIG_MSIX_VECTOR => self.config_vector = self.vector(v as u16),
            common::DEVICE_STATUS => self.write_status(v as u8),
            common::QUEUE_SELECT => self.qsel = v as u16,
            common::QUEUE_SIZE if q_writable => {
                let s = v as u16;
                let q = &mut self.queues[qi];
                if s.is_power_of_two() && s <= q.max {
                    q.size = s;
                }
            }
            common::QUEUE_MSIX_VECTOR if qi < self.queues.len() => {
                self.queues[qi].vector = self.vector(v as u16);
            }
            common::QUEUE_ENABLE if q_writable && v as u16 == 1 => self.queues[qi].ready = true,
            common::QUEUE_DESC if q_writable => self.queues[qi].desc = v,
            common::QUEUE_DRIVER if q_writable => self.queues[qi].avail = v,
            common::QUEUE_DEVICE if q_writable => self.queues[qi].used = v,
            _ => {}
        }
    }

    fn reset(&mut self) {
        let fresh = Model::new(
            self.offered,
            &self.queues.iter().map(|q| q.max).collect::<Vec<_>>(),
            self.activation_fails,
            &self.ram,
        );
        let (assigned, mut log) = (
            std::mem::take(&mut self.assigned),
            std::mem::take(&mut self.log),
        );
        log.resets += 1;
        *self = Model {
            assigned,
            log,
            ..fresh
        };
    }

    fn write_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = v & !STATUS_NEEDS_RESET;
        if new & old != old {
            return;
        }
        let features_ok = self.driver_features & !self.offered == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0;
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 && !features_ok {
            new &= !STATUS_FEATURES_OK;
        }
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            if new & STATUS_FEATURES_OK == 0 {
                new &= !STATUS_DRIVER_OK;
            } else {
                self.status = new;
                let enabled: Vec<_> = self.queues.iter().filter(|q| q.ready).collect();
                let queues_ok = !enabled.is_empty() && enabled.iter().all(|q| q.valid(&self.ram));
                if queues_ok {
                    self.log.activations.push(self.driver_features);
                }
                if queues_ok && !self.activation_fails {
                    self.running = true;
                } else {
                    self.needs_reset = true;
                    self.isr |= 2;
                }
                return;
            }
        }
        self.status = new;
    }
}
