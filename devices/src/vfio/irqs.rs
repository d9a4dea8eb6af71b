//! The passthrough function's interrupts: the MSI and MSI-X capabilities emulated with
//! [`crate::pci::caps`], INTx on the platform's line, and keeping the device's VFIO interrupt
//! state (`VFIO_DEVICE_SET_IRQS`) in step with what the guest enabled.
//!
//! # The path of an interrupt
//!
//! Each MSI/MSI-X vector of the model owns an [`crate::interrupt::MsiVector`] whose `EventFd` is
//! handed to VFIO as the vector's trigger, so the device's interrupt goes eventfd → KVM irqfd
//! → guest without a userspace hop. Masking (per vector, or the MSI-X function mask) is done
//! by the model disabling the vector (its irqfd), not by the device: events that arrive while
//! masked accumulate in the eventfd and show up in the emulated pending bits, and are delivered
//! on unmask. INTx uses the line's trigger `EventFd` as VFIO's trigger and its resample
//! `EventFd` as VFIO's unmask eventfd, so the level-triggered cycle (assert, automask, EOI,
//! unmask) stays in the kernel too.
//!
//! # Modes
//!
//! The device runs one of: nothing, INTx, MSI with n vectors, MSI-X with n vectors (the
//! kernel allows one at a time). MSI-X wins if the guest enables both. Every change tears the
//! old mode down and sets the new one up; a change of the MSI vector count re-enables MSI with
//! the new count. Vector counts never exceed what the device reports (the capabilities'
//! vector counts are capped when the device is created).

use std::os::unix::io::AsRawFd;

use super::bars::Bar;
use super::config::{ErrorLog, VfioConfig};
use super::ops::{IrqInfo, SetIrqs, VfioDeviceOps, INTX_IRQ, MSIX_IRQ, MSI_IRQ};
use crate::interrupt::{InterruptManager, IntxLine};
use crate::pci::bar::BarKind;
use crate::pci::caps::msi::{Msi, MsiError, MSI_CAP_ID, MSI_CTRL_ENABLE};
use crate::pci::caps::msix::{
    Msix, MsixError, MSIX_CAP_ID, MSIX_CAP_LEN, MSIX_CTRL_ENABLE, MSIX_CTRL_FUNCTION_MASK,
};
use crate::pci::config::{ConfigSpace, INTERRUPT_PIN};

/// MSI message control: multiple message capable (bits 3:1) and enable (bits 6:4).
const MSI_MMC_MASK: u16 = 0x7 << 1;
const MSI_MME_MASK: u16 = 0x7 << 4;
/// MSI-X message control: table size − 1.
const MSIX_TABLE_SIZE_MASK: u16 = 0x7ff;

/// Errors from setting up the interrupt model.
#[derive(Debug, thiserror::Error)]
pub enum IrqSetupError {
    /// Allocating the MSI vectors failed.
    #[error("MSI: {0}")]
    Msi(#[from] MsiError),
    /// Allocating the MSI-X vectors failed.
    #[error("MSI-X: {0}")]
    Msix(#[from] MsixError),
}

/// What the device is set up to signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Nothing.
    Off,
    /// INTx.
    Intx,
    /// MSI with this many vectors.
    Msi(u32),
    /// MSI-X with this many vectors.
    Msix(u32),
}

/// The interrupt model of a passthrough function.
pub(crate) struct Irqs {
    pub msi: Option<Msi>,
    pub msix: Option<Msix>,
    intx: Option<Box<dyn IntxLine>>,
    mode: Mode,
}

fn irq_info(ops: &dyn VfioDeviceOps, num_irqs: u32, index: u32, log: &mut ErrorLog) -> IrqInfo {
    if index >= num_irqs {
        return IrqInfo::default();
    }
    match ops.irq_info(index) {
        Ok(i) if i.eventfd() => i,
        Ok(_) => IrqInfo::default(),
        Err(e) => {
            log.log("reading interrupt information", &e);
            IrqInfo::default()
        }
    }
}

impl Irqs {
    /// Wraps the device's MSI and MSI-X capabilities (capping their vector counts at what VFIO
    /// reports, hiding one the device cannot deliver or whose table does not fit its BARs), and
    /// clears the interrupt pin if the device has no INTx.
    pub(crate) fn setup(
        cfg: &mut VfioConfig,
        ops: &dyn VfioDeviceOps,
        num_irqs: u32,
        bars: &[Bar],
        irq: &dyn InterruptManager,
        log: &mut ErrorLog,
    ) -> Result<Self, IrqSetupError> {
        let caps: Vec<(u16, u16)> = cfg.std_caps().iter().map(|c| (c.offset, c.id)).collect();
        let mut msi = None;
        let mut msix = None;
        for (off, id) in caps {
            if id == u16::from(MSI_CAP_ID) && msi.is_none() {
                let count = irq_info(ops, num_irqs, MSI_IRQ, log).count.min(32);
                let ctrl = cfg.shadow.read_u16(off + 2);
                let len = msi_len(ctrl);
                if count == 0 {
                    log::info!(
                        "VFIO {}: MSI hidden (VFIO reports no MSI vectors)",
                        log.name()
                    );
                    cfg.hide_std_cap(off, len);
                    continue;
                }
                // Cap the advertised vectors at what the host can give (a power of two).
                let mmc = ((ctrl & MSI_MMC_MASK) >> 1).min(count.ilog2() as u16);
                let ctrl = (ctrl & !(MSI_MMC_MASK | MSI_MME_MASK | MSI_CTRL_ENABLE)) | (mmc << 1);
                cfg.shadow.set_u16(off + 2, ctrl);
                cfg.emulate(off, len);
                msi = Some(Msi::existing(&mut cfg.shadow, off, irq)?);
            } else if id == u16::from(MSIX_CAP_ID) && msix.is_none() {
                let count = irq_info(ops, num_irqs, MSIX_IRQ, log).count.min(2048);
                let ctrl = cfg.shadow.read_u16(off + 2);
                if count == 0 {
                    log::info!(
                        "VFIO {}: MSI-X hidden (VFIO reports no MSI-X vectors)",
                        log.name()
                    );
                    cfg.hide_std_cap(off, MSIX_CAP_LEN);
                    continue;
                }
                let size = ((ctrl & MSIX_TABLE_SIZE_MASK) + 1).min(count as u16);
                let ctrl = (ctrl
                    & !(MSIX_TABLE_SIZE_MASK | MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK))
                    | (size - 1);
                cfg.shadow.set_u16(off + 2, ctrl);
                cfg.emulate(off, MSIX_CAP_LEN);
                match Msix::existing(&mut cfg.shadow, off, irq) {
                    Ok(m) if msix_fits(&m, bars) => msix = Some(m),
                    Ok(_) | Err(MsixError::BadPlacement { .. }) => {
                        log::warn!(
                            "VFIO {}: MSI-X hidden: its table or PBA is not inside a memory BAR",
                            log.name()
                        );
                        cfg.hide_std_cap(off, MSIX_CAP_LEN);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let intx = irq_info(ops, num_irqs, INTX_IRQ, log);
        if intx.count == 0 {
            cfg.shadow.set_u8(INTERRUPT_PIN, 0);
        }
        Ok(Irqs {
            msi,
            msix,
            intx: None,
            mode: Mode::Off,
        })
    }

    /// The current mode (for tests).
    #[cfg(test)]
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Takes the platform's INTx line.
    pub(crate) fn attach_intx(&mut self, line: Box<dyn IntxLine>) {
        self.intx = Some(line);
    }

    /// Applies a guest config write to the capabilities.
    pub(crate) fn config_written(&mut self, shadow: &mut ConfigSpace, offset: u16, len: usize) {
        if let Some(m) = &mut self.msi {
            m.config_written(shadow, offset, len);
        }
        if let Some(m) = &mut self.msix {
            m.config_written(shadow, offset, len);
        }
    }

    /// Before a guest config read: pending bits of masked MSI vectors from their eventfds.
    pub(crate) fn before_read(&mut self, shadow: &mut ConfigSpace, offset: u16, len: usize) {
        if let Some(m) = &mut self.msi {
            if m.reads_pending(offset, len) {
                m.sync_pending(shadow);
            }
        }
    }

    fn wanted(&self, shadow: &ConfigSpace) -> Mode {
        if let Some(m) = self.msix.as_ref().filter(|m| m.enabled()) {
            return Mode::Msix(m.cap().vectors().into());
        }
        if let Some(m) = self.msi.as_ref().filter(|m| m.enabled(shadow)) {
            return Mode::Msi(m.cap().enabled_vectors(shadow));
        }
        if self.intx.is_some() {
            Mode::Intx
        } else {
            Mode::Off
        }
    }

    /// Brings the device's VFIO interrupt state in line with the model.
    pub(crate) fn sync(
        &mut self,
        ops: &dyn VfioDeviceOps,
        shadow: &ConfigSpace,
        log: &mut ErrorLog,
    ) {
        let want = self.wanted(shadow);
        if want == self.mode {
            return;
        }
        self.off(ops, log);
        self.mode = want;
        if let Err(e) = self.enable(ops, want) {
            log.log(&format!("enabling {want:?}"), &e);
            // Leave nothing half set up; the next change of mode tries again.
            self.off(ops, log);
        }
    }

    fn enable(&mut self, ops: &dyn VfioDeviceOps, mode: Mode) -> Result<(), super::ops::OpsError> {
        match mode {
            Mode::Off => Ok(()),
            Mode::Intx => {
                let Some(line) = self.intx.as_mut() else {
                    return Ok(());
                };
                if let Err(e) = line.enable() {
                    log::warn!("VFIO: connecting INTx: {e}");
                }
                let fd = line.eventfd().as_raw_fd();
                let resample = line.resample_eventfd().as_raw_fd();
                ops.set_irqs(&SetIrqs::Trigger {
                    index: INTX_IRQ,
                    start: 0,
                    fds: vec![fd],
                })?;
                ops.set_irqs(&SetIrqs::UnmaskFd {
                    index: INTX_IRQ,
                    start: 0,
                    fd: resample,
                })
            }
            Mode::Msi(n) => {
                let Some(m) = &self.msi else { return Ok(()) };
                let fds = (0..n)
                    .filter_map(|v| m.vector(v).map(|x| x.eventfd().as_raw_fd()))
                    .collect();
                ops.set_irqs(&SetIrqs::Trigger {
                    index: MSI_IRQ,
                    start: 0,
                    fds,
                })
            }
            Mode::Msix(n) => {
                let Some(m) = &self.msix else { return Ok(()) };
                let fds = (0..n)
                    .filter_map(|v| u16::try_from(v).ok().and_then(|v| m.vector(v)))
                    .map(|x| x.eventfd().as_raw_fd())
                    .collect();
                ops.set_irqs(&SetIrqs::Trigger {
                    index: MSIX_IRQ,
                    start: 0,
                    fds,
                })
            }
        }
    }

    /// Turns the device's interrupts off (and disconnects INTx).
    pub(crate) fn off(&mut self, ops: &dyn VfioDeviceOps, log: &mut ErrorLog) {
        let mode = std::mem::replace(&mut self.mode, Mode::Off);
        if mode == Mode::Off {
            return;
        }
        if let Err(e) = ops.set_irqs(&SetIrqs::Disable {
            index: irq_index(mode),
        }) {
            log.log(&format!("disabling {mode:?}"), &e);
        }
        if mode == Mode::Intx {
            if let Some(line) = self.intx.as_mut() {
                if let Err(e) = line.disable() {
                    log::warn!("VFIO: disconnecting INTx: {e}");
                }
            }
        }
    }

    /// Clears the MSI and MSI-X enable bits (and the function mask) as a device reset does.
    pub(crate) fn reset_caps(&mut self, shadow: &mut ConfigSpace) {
        if let Some(m) = &mut self.msi {
            let off = m.cap().offset() + 2;
            let ctrl = shadow.read_u16(off) & !(MSI_CTRL_ENABLE | MSI_MME_MASK);
            shadow.set_u16(off, ctrl);
            m.apply(shadow);
        }
        if let Some(m) = &mut self.msix {
            let off = m.cap().offset() + 2;
            let ctrl = shadow.read_u16(off) & !(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK);
            shadow.set_u16(off, ctrl);
            m.config_written(shadow, off, 2);
        }
    }
}

fn irq_index(mode: Mode) -> u32 {
    match mode {
        Mode::Off | Mode::Intx => INTX_IRQ,
        Mode::Msi(_) => MSI_IRQ,
        Mode::Msix(_) => MSIX_IRQ,
    }
}

/// Length of an MSI capability with message control `ctrl`.
fn msi_len(ctrl: u16) -> usize {
    let is64 = ctrl & (1 << 7) != 0;
    let pvm = ctrl & (1 << 8) != 0;
    match (is64, pvm) {
        (false, false) => 10,
        (true, false) => 14,
        (false, true) => 20,
        (true, true) => 24,
    }
}

/// Whether the MSI-X table and PBA lie inside memory BARs of the device.
fn msix_fits(m: &Msix, bars: &[Bar]) -> bool {
    [m.cap().table(), m.cap().pba()]
        .iter()
        .all(|&(bar, off, len)| {
            bars.iter().any(|b| {
                b.index == bar
                    && b.spec.kind != BarKind::Io
                    && off.checked_add(len).is_some_and(|end| end <= b.spec.size)
            })
        })
}
