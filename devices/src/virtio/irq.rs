//! The interrupt side of a virtio device, shared between the transport (vCPU threads, which
//! program MSI-X and read the ISR) and the I/O thread (which raises interrupts).
//!
//! Lock order: the transport's own lock, then this state's mutex. The I/O thread takes only
//! this mutex, briefly, once per batch of completions.

use crate::interrupt::IntxLine;
use crate::pci::caps::msix::Msix;
use crate::pci::caps::Delivery;

/// "No vector" in the MSI-X vector registers.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue has used buffers.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration (or the device status: NEEDS_RESET) changed.
pub const ISR_CONFIG: u8 = 2;

pub(crate) struct IrqState {
    pub(crate) msix: Msix,
    pub(crate) intx: Option<Box<dyn IntxLine>>,
    pub(crate) isr: u8,
    /// Command register bits, mirrored on every config write.
    pub(crate) bus_master: bool,
    pub(crate) intx_disabled: bool,
    pub(crate) config_vector: u16,
    pub(crate) queue_vectors: Vec<u16>,
    name: String,
    warned: bool,
}

impl IrqState {
    pub(crate) fn new(name: &str, msix: Msix, queues: usize) -> Self {
        IrqState {
            msix,
            intx: None,
            isr: 0,
            bus_master: false,
            intx_disabled: false,
            config_vector: VIRTIO_MSI_NO_VECTOR,
            queue_vectors: vec![VIRTIO_MSI_NO_VECTOR; queues],
            name: name.to_string(),
            warned: false,
        }
    }

    fn warn_once(&mut self, what: std::fmt::Arguments<'_>) {
        if !self.warned {
            self.warned = true;
            log::warn!(
                "{}: {what} (further interrupt problems are not logged)",
                self.name
            );
        }
    }

    /// Used buffers on queue `q`.
    pub(crate) fn signal_queue(&mut self, q: usize) {
        let v = self
            .queue_vectors
            .get(q)
            .copied()
            .unwrap_or(VIRTIO_MSI_NO_VECTOR);
        self.signal(v, ISR_QUEUE);
    }

    /// The configuration (or NEEDS_RESET) changed.
    pub(crate) fn signal_config(&mut self) {
        // The configuration bit is set whether or not MSI-X is on (virtio 1.x 4.1.4.5.1).
        self.isr |= ISR_CONFIG;
        let v = self.config_vector;
        self.signal(v, 0);
    }

    fn signal(&mut self, vector: u16, isr_bit: u8) {
        if self.msix.enabled() {
            if vector == VIRTIO_MSI_NO_VECTOR {
                return;
            }
            if !self.bus_master {
                self.warn_once(format_args!(
                    "MSI-X vector {vector} raised with bus mastering off: dropped"
                ));
                return;
            }
            match self.msix.fire(vector) {
                Delivery::Delivered | Delivery::Pending => {}
                d => self.warn_once(format_args!("MSI-X vector {vector}: {d:?}")),
            }
        } else {
            self.isr |= isr_bit;
            self.assert_intx();
        }
    }

    /// Asserts INTx if an ISR bit is set, INTx is allowed and MSI-X is off.
    pub(crate) fn assert_intx(&mut self) {
        if self.isr == 0 || self.intx_disabled || self.msix.enabled() {
            return;
        }
        let r = match &self.intx {
            Some(line) => line.trigger(),
            None => return,
        };
        if let Err(e) = r {
            self.warn_once(format_args!("asserting INTx: {e}"));
        }
    }

    /// The guest's EOI de-asserted INTx: assert it again if the condition still holds.
    pub(crate) fn resample(&mut self) {
        if self.intx.as_ref().is_some_and(|l| l.take_resample()) {
            self.assert_intx();
        }
    }

    /// Reading the ISR returns it and clears it (the line stays de-asserted after the EOI).
    pub(crate) fn read_isr(&mut self) -> u8 {
        std::mem::take(&mut self.isr)
    }

    /// Device reset: no vectors, nothing pending in the ISR.
    pub(crate) fn reset(&mut self) {
        self.isr = 0;
        self.config_vector = VIRTIO_MSI_NO_VECTOR;
        self.queue_vectors.fill(VIRTIO_MSI_NO_VECTOR);
    }
}
