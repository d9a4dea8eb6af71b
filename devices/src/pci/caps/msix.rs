//! The MSI-X capability (ID 0x11) with its table and pending-bit array (PBA).
//!
//! Capability registers (offsets into the capability):
//!
//! | Offset | Register | Access |
//! |---|---|---|
//! | 0x02 | message control: table size − 1 (10:0), function mask (14), enable (15) | 14 and 15 RW |
//! | 0x04 | table offset (31:3) and BAR indicator (2:0) | RO |
//! | 0x08 | PBA offset (31:3) and BAR indicator (2:0) | RO |
//!
//! Each 16-byte table entry holds the message address (low, high), the message data and the
//! vector control word, whose bit 0 masks the vector (set after reset). The PBA holds one
//! read-only pending bit per vector. Accesses of any size and alignment are accepted on both.
//!
//! A vector is delivered when MSI-X is enabled, the function is not masked and the vector is not
//! masked. A vector that fires otherwise sets its pending bit and is delivered (and the bit
//! cleared) as soon as it is unmasked. Masking is implemented by disabling the hypervisor vector
//! (see [`crate::interrupt`]); events a passthrough device signals while masked show up in the
//! PBA when the guest reads it.

use super::{Delivery, VectorSlot};
use crate::interrupt::{InterruptError, InterruptManager, MsiMessage, MsiVector};
use crate::pci::bar::NUM_BARS;
use crate::pci::config::{CapRegs, ConfigError, ConfigSpace};

/// Capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Capability length.
pub const MSIX_CAP_LEN: usize = 12;
/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors an MSI-X capability can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;

const CONTROL: u16 = 0x02;
const TABLE: u16 = 0x04;
const PBA: u16 = 0x08;

/// Message control: MSI-X enable.
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;
const TABLE_SIZE_MASK: u16 = 0x7ff;
const BIR_MASK: u32 = 0x7;

/// Table entry: message address low.
pub const ENTRY_ADDRESS_LOW: u64 = 0x0;
/// Table entry: message address high.
pub const ENTRY_ADDRESS_HIGH: u64 = 0x4;
/// Table entry: message data.
pub const ENTRY_DATA: u64 = 0x8;
/// Table entry: vector control.
pub const ENTRY_VECTOR_CONTROL: u64 = 0xc;
/// Vector control: mask bit.
pub const VECTOR_CTRL_MASKED: u32 = 1;

/// Writable bits of each byte of a table entry: address bits 1:0 read zero, only the mask bit
/// of the vector control word is implemented.
const ENTRY_WRITABLE: [u8; 16] = [
    0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0, 0,
];

/// Errors from building an MSI-X capability.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    /// Table size out of range.
    #[error("MSI-X cannot have {0} vectors (1..=2048)")]
    BadVectorCount(u16),
    /// BAR indicator, alignment or fit problem.
    #[error("MSI-X {what} at BAR {bar} offset {offset:#x} is invalid: {why}")]
    BadPlacement {
        /// "table" or "PBA".
        what: &'static str,
        /// BAR indicator.
        bar: usize,
        /// Offset into the BAR.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The capability did not fit.
    #[error("placing the MSI-X capability: {0}")]
    Config(#[from] ConfigError),
    /// Allocating the vectors failed.
    #[error("allocating MSI-X vectors: {0}")]
    Interrupt(#[from] InterruptError),
}

/// The layout of an MSI-X capability: where it sits and where its table and PBA live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    offset: u16,
    vectors: u16,
    table_bar: usize,
    table_offset: u64,
    pba_bar: usize,
    pba_offset: u64,
}

impl MsixCap {
    /// A capability with `vectors` vectors, the table at `table_offset` into BAR `table_bar`,
    /// the PBA at `pba_offset` into BAR `pba_bar`. Offsets must be 8-byte aligned and the two
    /// must not overlap.
    pub fn new(
        vectors: u16,
        table_bar: usize,
        table_offset: u32,
        pba_bar: usize,
        pba_offset: u32,
    ) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::BadVectorCount(vectors));
        }
        let cap = MsixCap {
            offset: 0,
            vectors,
            table_bar,
            table_offset: table_offset.into(),
            pba_bar,
            pba_offset: pba_offset.into(),
        };
        cap.check_placement()?;
        Ok(cap)
    }

    fn check_placement(&self) -> Result<(), MsixError> {
        for (what, bar, offset) in [
            ("table", self.table_bar, self.table_offset),
            ("PBA", self.pba_bar, self.pba_offset),
        ] {
            let bad = |why| MsixError::BadPlacement {
                what,
                bar,
                offset,
                why,
            };
            if bar >= NUM_BARS {
                return Err(bad("BAR indicator must be 0..=5"));
            }
            if offset % 8 != 0 {
                return Err(bad("offset must be 8-byte aligned"));
            }
        }
        let (t, p) = (self.table(), self.pba());
        if t.0 == p.0 && t.1 < p.1 + p.2 && p.1 < t.1 + t.2 {
            return Err(MsixError::BadPlacement {
                what: "PBA",
                bar: p.0,
                offset: p.1,
                why: "overlaps the table",
            });
        }
        Ok(())
    }

    fn regs(&self) -> CapRegs {
        let mut r = CapRegs::new(MSIX_CAP_LEN);
        r.field(
            CONTROL.into(),
            2,
            u32::from(self.vectors - 1),
            u32::from(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK),
            0,
        );
        r.field(
            TABLE.into(),
            4,
            self.table_offset as u32 | self.table_bar as u32,
            0,
            0,
        );
        r.field(
            PBA.into(),
            4,
            self.pba_offset as u32 | self.pba_bar as u32,
            0,
            0,
        );
        r
    }

    /// Reads the layout of an MSI-X capability already present at `offset` (copied from
    /// hardware) and gives its control register the standard masks.
    pub fn at(cfg: &mut ConfigSpace, offset: u16) -> Result<Self, MsixError> {
        let ctrl = cfg.read_u16(offset + CONTROL);
        let table = cfg.read_u32(offset + TABLE);
        let pba = cfg.read_u32(offset + PBA);
        let mut cap = MsixCap::new(
            (ctrl & TABLE_SIZE_MASK) + 1,
            (table & BIR_MASK) as usize,
            table & !BIR_MASK,
            (pba & BIR_MASK) as usize,
            pba & !BIR_MASK,
        )?;
        cap.offset = offset;
        let regs = cap.regs();
        cfg.set_masks(offset + 2, &regs.writable()[2..], &regs.w1c()[2..]);
        Ok(cap)
    }

    /// The same capability with its table at `table_offset` and its PBA at `pba_offset`, both
    /// in BAR `bar`: where a VMM shows the guest an emulated table it moved off the device's
    /// registers. The placement rules of [`MsixCap::new`] apply.
    pub fn relocated(
        &self,
        bar: usize,
        table_offset: u32,
        pba_offset: u32,
    ) -> Result<Self, MsixError> {
        let cap = MsixCap {
            table_bar: bar,
            table_offset: table_offset.into(),
            pba_bar: bar,
            pba_offset: pba_offset.into(),
            ..*self
        };
        cap.check_placement()?;
        Ok(cap)
    }

    /// Config offset of the capability.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// The table: `(BAR, offset into the BAR, length)`.
    pub fn table(&self) -> (usize, u64, u64) {
        (
            self.table_bar,
            self.table_offset,
            u64::from(self.vectors) * MSIX_ENTRY_SIZE,
        )
    }

    /// The PBA: `(BAR, offset into the BAR, length)` (whole qwords).
    pub fn pba(&self) -> (usize, u64, u64) {
        (
            self.pba_bar,
            self.pba_offset,
            u64::from(self.vectors).div_ceil(64) * 8,
        )
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self, cfg: &ConfigSpace) -> bool {
        cfg.read_u16(self.offset + CONTROL) & MSIX_CTRL_ENABLE != 0
    }

    /// Whether the guest masked the whole function.
    pub fn function_masked(&self, cfg: &ConfigSpace) -> bool {
        cfg.read_u16(self.offset + CONTROL) & MSIX_CTRL_FUNCTION_MASK != 0
    }
}

/// An emulated MSI-X capability: the capability registers live in the config space, the table
/// and PBA here; the device forwards accesses to the table and PBA regions of its BARs.
pub struct Msix {
    cap: MsixCap,
    table: Vec<u8>,
    pba: Vec<u64>,
    slots: Vec<VectorSlot>,
    enabled: bool,
    function_masked: bool,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("cap", &self.cap)
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl Msix {
    /// Adds the capability `cap` to `cfg` and allocates its vectors. The table and PBA must fit
    /// in BARs already declared in `cfg`.
    pub fn new(
        cfg: &mut ConfigSpace,
        mut cap: MsixCap,
        irq: &dyn InterruptManager,
    ) -> Result<Self, MsixError> {
        Self::check_fits(cfg, &cap)?;
        let msix = Self::build(cap, irq)?;
        cap.offset = cfg.add_capability(MSIX_CAP_ID, &cap.regs())?;
        Ok(Msix { cap, ..msix })
    }

    /// Wraps an MSI-X capability already present in `cfg` at `offset` (passthrough devices).
    pub fn existing(
        cfg: &mut ConfigSpace,
        offset: u16,
        irq: &dyn InterruptManager,
    ) -> Result<Self, MsixError> {
        let cap = MsixCap::at(cfg, offset)?;
        Self::build(cap, irq)
    }

    fn check_fits(cfg: &ConfigSpace, cap: &MsixCap) -> Result<(), MsixError> {
        for (what, (bar, offset, len)) in [("table", cap.table()), ("PBA", cap.pba())] {
            let size = cfg.bar_spec(bar).map(|s| s.size);
            if !matches!(size, Some(size) if offset + len <= size) {
                return Err(MsixError::BadPlacement {
                    what,
                    bar,
                    offset,
                    why: "does not fit in a BAR the device declares",
                });
            }
        }
        Ok(())
    }

    fn build(cap: MsixCap, irq: &dyn InterruptManager) -> Result<Self, MsixError> {
        let n = usize::from(cap.vectors);
        let slots = (0..n)
            .map(|_| irq.allocate_msi().map(VectorSlot::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut table = vec![0u8; n * MSIX_ENTRY_SIZE as usize];
        for e in table.chunks_exact_mut(MSIX_ENTRY_SIZE as usize) {
            e[ENTRY_VECTOR_CONTROL as usize] = VECTOR_CTRL_MASKED as u8;
        }
        Ok(Msix {
            cap,
            table,
            pba: vec![0; n.div_ceil(64)],
            slots,
            enabled: false,
            function_masked: false,
        })
    }

    /// The capability layout.
    pub fn cap(&self) -> &MsixCap {
        &self.cap
    }

    /// Moves the table and PBA the guest sees to BAR `bar` at `table_offset` and `pba_offset`
    /// ([`MsixCap::relocated`]) and writes the capability's Table and PBA registers in `cfg`.
    /// Entries, masks and pending bits stay as they are; on an error nothing changes.
    pub fn relocate(
        &mut self,
        cfg: &mut ConfigSpace,
        bar: usize,
        table_offset: u32,
        pba_offset: u32,
    ) -> Result<(), MsixError> {
        let cap = self.cap.relocated(bar, table_offset, pba_offset)?;
        cfg.set_u32(cap.offset + TABLE, table_offset | bar as u32);
        cfg.set_u32(cap.offset + PBA, pba_offset | bar as u32);
        self.cap = cap;
        Ok(())
    }

    /// Back to the power-on state (a system reset): MSI-X disabled and the function unmasked in
    /// `cfg`'s capability, every table entry zero and masked, no pending bits; the vectors
    /// follow.
    pub fn reset(&mut self, cfg: &mut ConfigSpace) {
        let ctl = self.cap.offset + CONTROL;
        cfg.set_u16(
            ctl,
            cfg.read_u16(ctl) & !(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK),
        );
        for e in self.table.chunks_exact_mut(MSIX_ENTRY_SIZE as usize) {
            e.fill(0);
            e[ENTRY_VECTOR_CONTROL as usize] = VECTOR_CTRL_MASKED as u8;
        }
        self.pba.fill(0);
        self.config_written(cfg, self.cap.offset, MSIX_CAP_LEN);
        for v in 0..self.slots.len() {
            self.apply(v);
        }
    }

    /// The hypervisor vector behind table entry `v`.
    pub fn vector(&self, v: u16) -> Option<&dyn MsiVector> {
        self.slots.get(usize::from(v)).map(VectorSlot::vector)
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a guest config access `[offset, offset + len)` touches the capability.
    pub fn touches(&self, offset: u16, len: usize) -> bool {
        ConfigSpace::touches(offset, len, self.cap.offset, MSIX_CAP_LEN)
    }

    /// Applies what the guest wrote to the capability. Call after every guest config write.
    pub fn config_written(&mut self, cfg: &ConfigSpace, offset: u16, len: usize) {
        if !self.touches(offset, len) {
            return;
        }
        let (enabled, masked) = (self.cap.enabled(cfg), self.cap.function_masked(cfg));
        if (enabled, masked) != (self.enabled, self.function_masked) {
            self.enabled = enabled;
            self.function_masked = masked;
            // Every route first, then delivery: one routing commit for the whole table.
            for v in 0..self.slots.len() {
                self.route_if_active(v);
            }
            for v in 0..self.slots.len() {
                self.apply(v);
            }
        }
    }

    fn entry_u32(&self, v: usize, field: u64) -> u32 {
        let at = v * MSIX_ENTRY_SIZE as usize + field as usize;
        self.table
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    }

    /// The message table entry `v` holds.
    pub fn message(&self, v: u16) -> MsiMessage {
        let v = usize::from(v);
        MsiMessage {
            address: u64::from(self.entry_u32(v, ENTRY_ADDRESS_LOW))
                | (u64::from(self.entry_u32(v, ENTRY_ADDRESS_HIGH)) << 32),
            data: self.entry_u32(v, ENTRY_DATA),
        }
    }

    /// Whether table entry `v` is masked.
    pub fn vector_masked(&self, v: u16) -> bool {
        self.entry_u32(usize::from(v), ENTRY_VECTOR_CONTROL) & VECTOR_CTRL_MASKED != 0
    }

    /// Whether vector `v`'s pending bit is set.
    pub fn pending(&self, v: u16) -> bool {
        let v = usize::from(v);
        self.pba
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, v: usize, on: bool) {
        if let Some(q) = self.pba.get_mut(v / 64) {
            if on {
                *q |= 1 << (v % 64);
            } else {
                *q &= !(1 << (v % 64));
            }
        }
    }

    /// Routes vector `v` to its message if it is to deliver (the first half of [`Self::apply`]).
    fn route_if_active(&mut self, v: usize) {
        if self.enabled && !self.function_masked && !self.vector_masked(v as u16) {
            let msg = self.message(v as u16);
            if let Some(slot) = self.slots.get_mut(v) {
                slot.route(msg);
            }
        }
    }

    fn apply(&mut self, v: usize) {
        let active = self.enabled && !self.function_masked && !self.vector_masked(v as u16);
        let msg = self.message(v as u16);
        let pending = self.pending(v as u16);
        let Some(slot) = self.slots.get_mut(v) else {
            return;
        };
        if active {
            slot.activate(msg);
            if pending && slot.live() {
                slot.trigger();
                self.set_pending(v, false);
            }
        } else {
            slot.deactivate();
        }
    }

    /// Guest read of the table at `offset` into it; bytes beyond the table read all ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.table.get(at))
                .copied()
                .unwrap_or(0xff);
        }
    }

    /// Guest write to the table at `offset` into it (any size, any alignment); bytes beyond the
    /// table are dropped. The entries written are re-applied.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let esz = MSIX_ENTRY_SIZE as usize;
        let mut touched = None;
        for (i, &v) in data.iter().enumerate() {
            let Some(at) = start.checked_add(i) else {
                break;
            };
            let Some(b) = self.table.get_mut(at) else {
                break;
            };
            let m = ENTRY_WRITABLE[at % esz];
            *b = (*b & !m) | (v & m);
            let e = at / esz;
            touched = Some(touched.map_or((e, e), |(lo, _): (usize, usize)| (lo, e)));
        }
        if let Some((lo, hi)) = touched {
            for v in lo..=hi {
                self.apply(v);
            }
        }
    }

    /// Guest read of the PBA at `offset` into it (bytes beyond it read all ones). Events that
    /// hardware signalled on masked vectors become pending bits first.
    pub fn read_pba(&mut self, offset: u64, data: &mut [u8]) {
        let len = self.pba.len() * 8;
        let Ok(start) = usize::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        let first = start.min(len) * 8;
        let last = start.saturating_add(data.len()).min(len) * 8;
        for v in first..last.min(self.slots.len()) {
            if self.slots[v].take_pending() {
                self.set_pending(v, true);
            }
        }
        for (i, b) in data.iter_mut().enumerate() {
            let at = start.saturating_add(i);
            *b = if at < len {
                (self.pba[at / 8] >> (8 * (at % 8))) as u8
            } else {
                0xff
            };
        }
    }

    /// Raises vector `v` from an emulated device.
    pub fn fire(&mut self, v: u16) -> Delivery {
        let i = usize::from(v);
        if i >= self.slots.len() {
            return Delivery::InvalidVector;
        }
        if !self.enabled {
            return Delivery::Disabled;
        }
        if self.function_masked || self.vector_masked(v) {
            self.set_pending(i, true);
            return Delivery::Pending;
        }
        let slot = &mut self.slots[i];
        if !slot.live() {
            return Delivery::Failed;
        }
        slot.trigger()
    }

    /// Handles a BAR read that starts inside the table or the PBA; returns `false` (leaving
    /// `data` alone) for any other access.
    pub fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        if let Some(o) = region_offset(self.cap.table(), bar, offset) {
            self.read_table(o, data);
        } else if let Some(o) = region_offset(self.cap.pba(), bar, offset) {
            self.read_pba(o, data);
        } else {
            return false;
        }
        true
    }

    /// Handles a BAR write that starts inside the table or the PBA (PBA writes are ignored);
    /// returns `false` for any other access.
    pub fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        if let Some(o) = region_offset(self.cap.table(), bar, offset) {
            self.write_table(o, data);
            true
        } else {
            region_offset(self.cap.pba(), bar, offset).is_some()
        }
    }
}

fn region_offset((rbar, start, len): (usize, u64, u64), bar: usize, offset: u64) -> Option<u64> {
    (rbar == bar && offset >= start && offset - start < len).then(|| offset - start)
}

#[cfg(test)]
mod tests;
