//! A PCI test device: a test double for guest-side tests of the PCI platform, not a user
//! feature (the VMM only adds it behind an explicit test option). It exercises every path a
//! passthrough device will use: all BAR kinds (32-bit, 64-bit, prefetchable, I/O, ROM), MSI,
//! MSI-X, INTx, the extended config space and DMA into guest memory.
//!
//! # Identity
//!
//! 1234:5654 ("VT"), class 0xff0000 (unassigned, so no OS driver binds to it), subsystem
//! 1234:0001, revision 1, interrupt pin INTA#. The IDs are private test IDs, not registered
//! with the PCI-SIG; vendor 0x1234 is the one QEMU's own test and example devices use.
//!
//! # BARs
//!
//! | BAR | Kind | Size | Contents |
//! |---|---|---|---|
//! | 0 | 32-bit memory | 4 KiB | registers (below) |
//! | 1 | I/O | 64 B | the first 64 bytes of BAR 0's registers |
//! | 2–3 | 64-bit memory | 8 KiB | MSI-X table at 0, PBA at 0x1000 |
//! | 4–5 | 64-bit prefetchable memory | 64 KiB | plain read/write memory (zero at reset) |
//! | ROM | expansion ROM | 2 KiB | 0x55 0xAA, size 4 × 512, "VFTD test ROM" at 0x10 |
//!
//! # Registers (BAR 0; any access size, little-endian)
//!
//! | Offset | Name | Access | Meaning |
//! |---|---|---|---|
//! | 0x00 | IDENT | RO | [`TESTDEV_IDENT`] ("VFTD") |
//! | 0x04 | VERSION | RO | 1 |
//! | 0x08 | SCRATCH | RW | |
//! | 0x0C | INTX_STATUS | RW1C | bit 0: INTx raised by FIRE; write 1 to clear |
//! | 0x10 | DMA_ADDR_LO | RW | guest physical address for DMA_GO (64-bit access at 0x10 too) |
//! | 0x14 | DMA_ADDR_HI | RW | |
//! | 0x18 | DMA_VALUE | RW | the dword DMA_GO writes |
//! | 0x1C | DMA_GO | WO | any write: write DMA_VALUE (4 bytes) at DMA_ADDR in guest RAM |
//! | 0x20 | DMA_STATUS | RO | result of the last DMA_GO: `DMA_*` |
//! | 0x24 | DMA_COUNT | RO | successful DMAs |
//! | 0x28 | FIRE | WO | writing n raises vector n: MSI-X if enabled, else MSI if enabled, else INTx (n = 0) |
//! | 0x2C | FIRE_STATUS | RO | result of the last FIRE: `FIRE_*` |
//! | 0x30 | BAR_MOVES | RO | how many times the platform reported a BAR mapping change |
//!
//! DMA and MSI/MSI-X need bus mastering on (command bit 2), as on real hardware. A DMA
//! address outside guest RAM is refused ([`DMA_OUT_OF_RAM`]) without touching anything.
//!
//! INTx is level-triggered: FIRE asserts it and sets INTX_STATUS and the status register's
//! interrupt bit; the guest clears INTX_STATUS and EOIs. If the guest EOIs without clearing,
//! the line is asserted again at the device's next register access (the resample notification
//! is polled there rather than in an event loop). With INTx disabled in the command register
//! FIRE only records the status; clearing INTx disable with INTX_STATUS set asserts the line.
//!
//! Config space: MSI (2 vectors, 64-bit, per-vector masking), MSI-X (2 vectors), PCI Express
//! (root complex integrated endpoint), and at 0x100 a vendor-specific extended capability whose
//! payload is IDENT (RO) followed by a RW scratch dword.

use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::bar::{BarSpec, DecodedBar, ROM_BAR};
use super::caps::msi::{Msi, MsiError};
use super::caps::msix::{Msix, MsixCap, MsixError};
use super::caps::pcie::{PciExpressCap, VendorExtCap, PCIE_TYPE_RC_INTEGRATED};
use super::caps::Delivery;
use super::config::{
    ConfigError, ConfigHeader, ConfigSpace, CMD_BUS_MASTER, CMD_INTX_DISABLE, STATUS_INTERRUPT,
};
use super::{BarAccess, PciDevice};
use crate::interrupt::{InterruptManager, IntxLine};

/// Vendor ID (private test ID).
pub const TESTDEV_VENDOR_ID: u16 = 0x1234;
/// Device ID.
pub const TESTDEV_DEVICE_ID: u16 = 0x5654;
/// Class code: unassigned.
pub const TESTDEV_CLASS: u32 = 0xff_00_00;
/// Value of the IDENT register: "VFTD" in memory order.
pub const TESTDEV_IDENT: u32 = u32::from_le_bytes(*b"VFTD");
/// Value of the VERSION register.
pub const TESTDEV_VERSION: u32 = 1;

/// Register BAR.
pub const REGS_BAR: usize = 0;
/// Register BAR size.
pub const REGS_BAR_SIZE: u64 = 0x1000;
/// I/O BAR (mirrors the first [`IO_BAR_SIZE`] bytes of the registers).
pub const IO_BAR: usize = 1;
/// I/O BAR size.
pub const IO_BAR_SIZE: u64 = 0x40;
/// MSI-X BAR (64-bit).
pub const MSIX_BAR: usize = 2;
/// MSI-X BAR size.
pub const MSIX_BAR_SIZE: u64 = 0x2000;
/// MSI-X table offset in its BAR.
pub const MSIX_TABLE_OFFSET: u32 = 0;
/// MSI-X PBA offset in its BAR.
pub const MSIX_PBA_OFFSET: u32 = 0x1000;
/// Memory BAR (64-bit prefetchable, read/write memory).
pub const MEM_BAR: usize = 4;
/// Memory BAR size.
pub const MEM_BAR_SIZE: u64 = 0x1_0000;
/// Expansion ROM size.
pub const ROM_SIZE: u64 = 0x800;
/// MSI vectors.
pub const MSI_VECTORS: u32 = 2;
/// MSI-X vectors.
pub const MSIX_VECTORS: u16 = 2;
/// Vendor-specific extended capability ID the device uses.
pub const TESTDEV_VSEC_ID: u16 = 0x1;

/// Register: identification.
pub const REG_IDENT: u64 = 0x00;
/// Register: version.
pub const REG_VERSION: u64 = 0x04;
/// Register: scratch.
pub const REG_SCRATCH: u64 = 0x08;
/// Register: INTx status.
pub const REG_INTX_STATUS: u64 = 0x0c;
/// Register: DMA address, low half.
pub const REG_DMA_ADDR_LO: u64 = 0x10;
/// Register: DMA address, high half.
pub const REG_DMA_ADDR_HI: u64 = 0x14;
/// Register: DMA value.
pub const REG_DMA_VALUE: u64 = 0x18;
/// Register: start a DMA.
pub const REG_DMA_GO: u64 = 0x1c;
/// Register: DMA status.
pub const REG_DMA_STATUS: u64 = 0x20;
/// Register: successful DMA count.
pub const REG_DMA_COUNT: u64 = 0x24;
/// Register: raise an interrupt.
pub const REG_FIRE: u64 = 0x28;
/// Register: result of the last FIRE.
pub const REG_FIRE_STATUS: u64 = 0x2c;
/// Register: BAR mapping changes reported by the platform.
pub const REG_BAR_MOVES: u64 = 0x30;

/// DMA_STATUS: no DMA yet.
pub const DMA_NONE: u32 = 0;
/// DMA_STATUS: the value was written.
pub const DMA_DONE: u32 = 1;
/// DMA_STATUS: refused, the address range is not (entirely) guest RAM.
pub const DMA_OUT_OF_RAM: u32 = 2;
/// DMA_STATUS: refused, bus mastering is off.
pub const DMA_NO_BUS_MASTER: u32 = 3;

/// FIRE_STATUS: nothing fired yet.
pub const FIRE_NONE: u32 = 0;
/// FIRE_STATUS: delivered as MSI-X.
pub const FIRE_MSIX: u32 = 1;
/// FIRE_STATUS: delivered as MSI.
pub const FIRE_MSI: u32 = 2;
/// FIRE_STATUS: INTx asserted.
pub const FIRE_INTX: u32 = 3;
/// FIRE_STATUS: the vector is masked; its pending bit is set.
pub const FIRE_PENDING: u32 = 4;
/// FIRE_STATUS: the interrupt mode cannot deliver it (vector beyond the enabled MSI count,
/// INTx disabled, no INTx line).
pub const FIRE_DISABLED: u32 = 5;
/// FIRE_STATUS: no such vector.
pub const FIRE_INVALID_VECTOR: u32 = 6;
/// FIRE_STATUS: MSI/MSI-X needs bus mastering on.
pub const FIRE_NO_BUS_MASTER: u32 = 7;
/// FIRE_STATUS: the hypervisor refused (logged by the VMM).
pub const FIRE_FAILED: u32 = 8;

/// Errors from building the test device.
#[derive(Debug, thiserror::Error)]
pub enum TestDeviceError {
    /// Laying out the config space failed.
    #[error("test device config space: {0}")]
    Config(#[from] ConfigError),
    /// Setting up MSI failed.
    #[error("test device MSI: {0}")]
    Msi(#[from] MsiError),
    /// Setting up MSI-X failed.
    #[error("test device MSI-X: {0}")]
    Msix(#[from] MsixError),
}

/// The test device. `M` is the guest memory its DMA writes into.
pub struct TestDevice<M: GuestMemory> {
    config: ConfigSpace,
    msi: Msi,
    msix: Msix,
    intx: Option<Box<dyn IntxLine>>,
    mem: M,
    scratch: u32,
    intx_status: bool,
    dma_addr: u64,
    dma_value: u32,
    dma_status: u32,
    dma_count: u32,
    fire_status: u32,
    bar_moves: u32,
    memory: Vec<u8>,
    rom: Vec<u8>,
}

impl<M: GuestMemory> std::fmt::Debug for TestDevice<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDevice")
            .field("config", &self.config)
            .field("msi", &self.msi)
            .field("msix", &self.msix)
            .finish_non_exhaustive()
    }
}

impl<M: GuestMemory + Send> TestDevice<M> {
    /// A test device in its reset state, DMA-ing into `mem`, with its MSI/MSI-X vectors taken
    /// from `irq`.
    pub fn new(mem: M, irq: &dyn InterruptManager) -> Result<Self, TestDeviceError> {
        let mut config = ConfigSpace::new(&ConfigHeader {
            vendor_id: TESTDEV_VENDOR_ID,
            device_id: TESTDEV_DEVICE_ID,
            revision_id: 1,
            class_code: TESTDEV_CLASS,
            subsystem_vendor_id: TESTDEV_VENDOR_ID,
            subsystem_id: 1,
            interrupt_pin: 1,
        });
        config.set_bar(REGS_BAR, BarSpec::mem32(REGS_BAR_SIZE))?;
        config.set_bar(IO_BAR, BarSpec::io(IO_BAR_SIZE))?;
        config.set_bar(MSIX_BAR, BarSpec::mem64(MSIX_BAR_SIZE, false))?;
        config.set_bar(MEM_BAR, BarSpec::mem64(MEM_BAR_SIZE, true))?;
        config.set_bar(ROM_BAR, BarSpec::rom(ROM_SIZE))?;
        let msi = Msi::new(&mut config, MSI_VECTORS, true, true, irq)?;
        let cap = MsixCap::new(
            MSIX_VECTORS,
            MSIX_BAR,
            MSIX_TABLE_OFFSET,
            MSIX_BAR,
            MSIX_PBA_OFFSET,
        )?;
        let msix = Msix::new(&mut config, cap, irq)?;
        PciExpressCap::add_to(&mut config, PCIE_TYPE_RC_INTEGRATED)?;
        VendorExtCap::add_to(
            &mut config,
            TESTDEV_VSEC_ID,
            1,
            &[(TESTDEV_IDENT, 0), (0, u32::MAX)],
        )?;
        let mut rom = vec![0u8; ROM_SIZE as usize];
        rom[..3].copy_from_slice(&[0x55, 0xaa, (ROM_SIZE / 512) as u8]);
        let text = b"VFTD test ROM";
        rom[0x10..0x10 + text.len()].copy_from_slice(text);
        Ok(TestDevice {
            config,
            msi,
            msix,
            intx: None,
            mem,
            scratch: 0,
            intx_status: false,
            dma_addr: 0,
            dma_value: 0,
            dma_status: DMA_NONE,
            dma_count: 0,
            fire_status: FIRE_NONE,
            bar_moves: 0,
            memory: vec![0; MEM_BAR_SIZE as usize],
            rom,
        })
    }

    /// The config space (for tests).
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The MSI-X capability (for tests).
    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    /// The MSI capability (for tests).
    pub fn msi(&self) -> &Msi {
        &self.msi
    }

    /// Signals the INTx line's resample fd, as the guest's EOI would (for tests).
    #[cfg(test)]
    pub(crate) fn intx_resample_for_test(&self) {
        if let Some(line) = &self.intx {
            line.resample_eventfd().write(1).unwrap();
        }
    }

    fn bus_master(&self) -> bool {
        self.config.command() & CMD_BUS_MASTER != 0
    }

    fn intx_allowed(&self) -> bool {
        self.config.command() & CMD_INTX_DISABLE == 0
    }

    fn assert_intx(&mut self) -> u32 {
        self.intx_status = true;
        self.config.set_status_bits(STATUS_INTERRUPT, true);
        if !self.intx_allowed() {
            return FIRE_DISABLED;
        }
        match &self.intx {
            Some(line) => match line.trigger() {
                Ok(()) => FIRE_INTX,
                Err(e) => {
                    log::warn!("test device: asserting INTx: {e}");
                    FIRE_FAILED
                }
            },
            None => FIRE_DISABLED,
        }
    }

    fn fire(&mut self, n: u32) -> u32 {
        let msix = self.msix.enabled();
        let msi = self.msi.enabled(&self.config);
        if !msix && !msi {
            return if n == 0 {
                self.assert_intx()
            } else {
                FIRE_INVALID_VECTOR
            };
        }
        if !self.bus_master() {
            return FIRE_NO_BUS_MASTER;
        }
        let (delivery, delivered) = if msix {
            match u16::try_from(n) {
                Ok(v) => (self.msix.fire(v), FIRE_MSIX),
                Err(_) => (Delivery::InvalidVector, FIRE_MSIX),
            }
        } else {
            (self.msi.fire(&mut self.config, n), FIRE_MSI)
        };
        match delivery {
            Delivery::Delivered => delivered,
            Delivery::Pending => FIRE_PENDING,
            Delivery::Disabled => FIRE_DISABLED,
            Delivery::InvalidVector => FIRE_INVALID_VECTOR,
            Delivery::Failed => FIRE_FAILED,
        }
    }

    fn dma(&mut self) -> u32 {
        if !self.bus_master() {
            return DMA_NO_BUS_MASTER;
        }
        let addr = GuestAddress(self.dma_addr);
        let bytes = self.dma_value.to_le_bytes();
        if !self.mem.check_range(addr, bytes.len(), Permissions::Write) {
            return DMA_OUT_OF_RAM;
        }
        match self.mem.write_slice(&bytes, addr) {
            Ok(()) => {
                self.dma_count = self.dma_count.wrapping_add(1);
                DMA_DONE
            }
            Err(_) => DMA_OUT_OF_RAM,
        }
    }

    /// If the guest's EOI de-asserted INTx while the condition still holds, assert it again.
    fn poll_resample(&mut self) {
        let Some(line) = &self.intx else {
            return;
        };
        if line.take_resample()
            && self.intx_status
            && self.intx_allowed()
            && !self.msix.enabled()
            && !self.msi.enabled(&self.config)
        {
            if let Err(e) = line.trigger() {
                log::warn!("test device: re-asserting INTx: {e}");
            }
        }
    }

    fn reg_read(&self, reg: u64) -> u32 {
        match reg {
            REG_IDENT => TESTDEV_IDENT,
            REG_VERSION => TESTDEV_VERSION,
            REG_SCRATCH => self.scratch,
            REG_INTX_STATUS => self.intx_status.into(),
            REG_DMA_ADDR_LO => self.dma_addr as u32,
            REG_DMA_ADDR_HI => (self.dma_addr >> 32) as u32,
            REG_DMA_VALUE => self.dma_value,
            REG_DMA_STATUS => self.dma_status,
            REG_DMA_COUNT => self.dma_count,
            REG_FIRE_STATUS => self.fire_status,
            REG_BAR_MOVES => self.bar_moves,
            _ => 0,
        }
    }

    fn reg_write(&mut self, reg: u64, v: u32) {
        match reg {
            REG_SCRATCH => self.scratch = v,
            REG_INTX_STATUS if v & 1 != 0 => {
                self.intx_status = false;
                self.config.set_status_bits(STATUS_INTERRUPT, false);
            }
            REG_DMA_ADDR_LO => self.dma_addr = (self.dma_addr & !0xffff_ffff) | u64::from(v),
            REG_DMA_ADDR_HI => self.dma_addr = (self.dma_addr & 0xffff_ffff) | (u64::from(v) << 32),
            REG_DMA_VALUE => self.dma_value = v,
            REG_DMA_GO => self.dma_status = self.dma(),
            REG_FIRE => self.fire_status = self.fire(v),
            _ => {}
        }
    }

    fn regs_read(&mut self, offset: u64, data: &mut [u8]) {
        self.poll_resample();
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = (self.reg_read(at & !3) >> (8 * (at & 3))) as u8;
        }
    }

    /// Writes of any size: each dword register touched gets its current value with the written
    /// bytes merged in (write-only registers merge into zero).
    fn regs_write(&mut self, offset: u64, data: &[u8]) {
        self.poll_resample();
        let mut i = 0;
        while i < data.len() {
            let reg = offset.saturating_add(i as u64) & !3;
            let mut v = match reg {
                REG_INTX_STATUS => 0,
                _ => self.reg_read(reg),
            };
            while i < data.len() && offset.saturating_add(i as u64) & !3 == reg {
                let shift = 8 * (offset.saturating_add(i as u64) & 3);
                v = (v & !(0xff << shift)) | (u32::from(data[i]) << shift);
                i += 1;
            }
            self.reg_write(reg, v);
        }
    }
}

fn copy_out(src: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|at| src.get(at))
            .copied()
            .unwrap_or(0xff);
    }
}

impl<M: GuestMemory + Send> PciDevice for TestDevice<M> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if self.msi.reads_pending(offset, data.len()) {
            self.msi.sync_pending(&mut self.config);
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let was_allowed = self.intx_allowed();
        self.config.write(offset, data);
        self.msi
            .config_written(&mut self.config, offset, data.len());
        self.msix.config_written(&self.config, offset, data.len());
        if !was_allowed && self.intx_allowed() && self.intx_status {
            self.assert_intx();
        }
    }

    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        self.config.bar_specs()
    }

    fn decoded_bars(&self) -> Vec<DecodedBar> {
        self.config.decoded_bars()
    }

    /// MSI and MSI-X off (entries masked), the interrupt status, scratch and DMA registers
    /// cleared. The BAR memory keeps its contents (device RAM is not cleared by a reset).
    fn system_reset(&mut self) {
        let msi_control = self.msi.cap().offset() + 2;
        self.config_write(msi_control, &[0, 0]);
        self.msix.reset(&mut self.config);
        self.intx_status = false;
        self.config.set_status_bits(STATUS_INTERRUPT, false);
        self.scratch = 0;
        self.dma_addr = 0;
        self.dma_value = 0;
        self.dma_status = 0;
        self.dma_count = 0;
        self.fire_status = 0;
    }

    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        log::debug!("test device: BAR {bar} moved {old:x?} -> {new:x?}");
        self.bar_moves = self.bar_moves.wrapping_add(1);
    }

    fn attach_intx(&mut self, line: Box<dyn IntxLine>) {
        self.intx = Some(line);
    }
}

impl<M: GuestMemory + Send> BarAccess for TestDevice<M> {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            REGS_BAR => self.regs_read(offset, data),
            IO_BAR if offset < IO_BAR_SIZE => self.regs_read(offset, data),
            MSIX_BAR if self.msix.bar_read(bar, offset, data) => {}
            MEM_BAR => copy_out(&self.memory, offset, data),
            ROM_BAR => copy_out(&self.rom, offset, data),
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            REGS_BAR => self.regs_write(offset, data),
            IO_BAR if offset < IO_BAR_SIZE => self.regs_write(offset, data),
            MSIX_BAR => {
                self.msix.bar_write(bar, offset, data);
            }
            MEM_BAR => {
                for (i, &v) in data.iter().enumerate() {
                    let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
                    if let Some(b) = at.and_then(|at| self.memory.get_mut(at)) {
                        *b = v;
                    }
                }
            }
            _ => {}
        }
    }
}
