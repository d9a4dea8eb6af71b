//! PCI capabilities, one struct per capability.
//!
//! Each capability describes its registers as a [`crate::pci::config::CapRegs`] (bytes and
//! masks), is placed into a [`crate::pci::config::ConfigSpace`], and afterwards interprets the
//! registers the guest wrote: the device calls its `config_written` after every guest config
//! write that touches it.
//!
//! | Capability | Struct | Notes |
//! |---|---|---|
//! | MSI (0x05) | [`msi::MsiCap`] + [`msi::Msi`] | 1–32 vectors, 32/64-bit address, optional per-vector mask and pending bits |
//! | MSI-X (0x11) | [`msix::MsixCap`] + [`msix::Msix`] | table and PBA in BARs, per-vector and function mask, pending bits |
//! | PCI Express (0x10) | [`pcie::PciExpressCap`] | v2, no link: enough for an OS to use the extended config space |
//! | Vendor-specific extended (0x000B) | [`pcie::VendorExtCap`] | an extended capability with RO and RW payload |

use crate::interrupt::{InterruptError, MsiMessage, MsiVector};

pub mod msi;
pub mod msix;
pub mod pcie;

/// What happened to an interrupt an emulated device raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent to the guest.
    Delivered,
    /// The vector is masked: its pending bit is set and it is sent on unmask.
    Pending,
    /// The capability is disabled (or the vector is beyond what the guest enabled); nothing was
    /// sent or recorded.
    Disabled,
    /// No such vector.
    InvalidVector,
    /// Delivery failed in the hypervisor (logged).
    Failed,
}

/// One vector of an MSI or MSI-X capability: the hypervisor vector plus what the model last
/// programmed into it, so that unchanged routes are not rewritten and errors are logged once.
pub(crate) struct VectorSlot {
    vector: Box<dyn MsiVector>,
    routed: Option<MsiMessage>,
    live: bool,
    warned: bool,
}

impl VectorSlot {
    pub(crate) fn new(vector: Box<dyn MsiVector>) -> Self {
        VectorSlot {
            vector,
            routed: None,
            live: false,
            warned: false,
        }
    }

    pub(crate) fn vector(&self) -> &dyn MsiVector {
        self.vector.as_ref()
    }

    /// Whether delivery is enabled.
    pub(crate) fn live(&self) -> bool {
        self.live
    }

    fn warn(&mut self, what: &str, e: &InterruptError) {
        if !self.warned {
            self.warned = true;
            log::warn!(
                "MSI vector on GSI {}: {what} failed: {e} (further errors for it are not logged)",
                self.vector.gsi()
            );
        }
    }

    /// Routes the vector to `msg` if that changed; returns whether it is routed there. Routing
    /// every vector of a reconfiguration before enabling any lets the hypervisor side commit the
    /// routing table once for all of them ([`MsiVector::set_route`]).
    pub(crate) fn route(&mut self, msg: MsiMessage) -> bool {
        if self.routed != Some(msg) {
            match self.vector.set_route(msg) {
                Ok(()) => self.routed = Some(msg),
                Err(e) => {
                    self.warn("routing", &e);
                    return false;
                }
            }
        }
        true
    }

    /// Routes the vector to `msg` (if that changed) and enables delivery.
    pub(crate) fn activate(&mut self, msg: MsiMessage) {
        if !self.route(msg) {
            return;
        }
        if !self.live {
            match self.vector.enable() {
                Ok(()) => self.live = true,
                Err(e) => self.warn("enabling", &e),
            }
        }
    }

    /// Disables delivery.
    pub(crate) fn deactivate(&mut self) {
        if self.live {
            match self.vector.disable() {
                Ok(()) => self.live = false,
                Err(e) => self.warn("disabling", &e),
            }
        }
    }

    /// Sends the vector (must be live).
    pub(crate) fn trigger(&mut self) -> Delivery {
        match self.vector.trigger() {
            Ok(()) => Delivery::Delivered,
            Err(e) => {
                self.warn("triggering", &e);
                Delivery::Failed
            }
        }
    }

    /// Consumes events the vector collected while disabled (passthrough hardware firing a
    /// masked vector).
    pub(crate) fn take_pending(&self) -> bool {
        !self.live && self.vector.take_pending()
    }
}
