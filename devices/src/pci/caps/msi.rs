//! The MSI capability (ID 0x05).
//!
//! Registers (offsets into the capability):
//!
//! | Offset | 32-bit address | 64-bit address | Access |
//! |---|---|---|---|
//! | 0x02 | message control | message control | bit 0 enable and bits 6:4 multiple message enable RW; MMC, 64-bit and per-vector-mask flags RO |
//! | 0x04 | address | address low | RW, bits 1:0 read zero |
//! | 0x08 | data (16 bits) | address high | RW |
//! | 0x0C | mask bits | data (16 bits) | RW (one bit per vector) |
//! | 0x10 | pending bits | mask bits | RO |
//! | 0x14 | — | pending bits | RO |
//!
//! With multiple messages enabled, vector `i` sends `data` with its low bits replaced by `i`.
//! A vector is delivered when MSI is enabled, the vector is below the enabled count and (with
//! per-vector masking) unmasked. A masked vector that fires sets its pending bit and is sent
//! when unmasked.

use super::{Delivery, VectorSlot};
use crate::interrupt::{InterruptError, InterruptManager, MsiMessage, MsiVector};
use crate::pci::config::{CapRegs, ConfigError, ConfigSpace};

/// Capability ID.
pub const MSI_CAP_ID: u8 = 0x05;

const CONTROL: u16 = 0x02;
const ADDRESS_LOW: u16 = 0x04;

/// Message control: MSI enable.
pub const MSI_CTRL_ENABLE: u16 = 1 << 0;
const MMC_SHIFT: u16 = 1;
const MME_SHIFT: u16 = 4;
const MME_MASK: u16 = 0x7 << MME_SHIFT;
/// Message control: 64-bit address capable.
pub const MSI_CTRL_64BIT: u16 = 1 << 7;
/// Message control: per-vector masking capable.
pub const MSI_CTRL_PER_VECTOR_MASK: u16 = 1 << 8;

/// Errors from building an MSI capability.
#[derive(Debug, thiserror::Error)]
pub enum MsiError {
    /// MSI supports 1, 2, 4, 8, 16 or 32 vectors.
    #[error("MSI cannot have {0} vectors (1, 2, 4, 8, 16 or 32)")]
    BadVectorCount(u32),
    /// The capability did not fit.
    #[error("placing the MSI capability: {0}")]
    Config(#[from] ConfigError),
    /// Allocating the vectors failed.
    #[error("allocating MSI vectors: {0}")]
    Interrupt(#[from] InterruptError),
}

/// The layout of an MSI capability at a given config offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCap {
    offset: u16,
    max_vectors: u32,
    is64: bool,
    per_vector_mask: bool,
}

impl MsiCap {
    /// Capability length in bytes.
    pub fn len(&self) -> usize {
        match (self.is64, self.per_vector_mask) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        }
    }

    /// Never empty; here for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Config offset of the capability.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Vectors the device supports.
    pub fn max_vectors(&self) -> u32 {
        self.max_vectors
    }

    fn data_offset(&self) -> u16 {
        self.offset + if self.is64 { 0x0c } else { 0x08 }
    }

    fn mask_offset(&self) -> u16 {
        self.offset + if self.is64 { 0x10 } else { 0x0c }
    }

    fn pending_offset(&self) -> u16 {
        self.mask_offset() + 4
    }

    fn regs(&self) -> CapRegs {
        let mut r = CapRegs::new(self.len());
        let mmc = self.max_vectors.trailing_zeros() as u16;
        let mut ctrl = mmc << MMC_SHIFT;
        if self.is64 {
            ctrl |= MSI_CTRL_64BIT;
        }
        if self.per_vector_mask {
            ctrl |= MSI_CTRL_PER_VECTOR_MASK;
        }
        r.field(
            usize::from(CONTROL),
            2,
            ctrl.into(),
            (MSI_CTRL_ENABLE | MME_MASK).into(),
            0,
        );
        r.field(usize::from(ADDRESS_LOW), 4, 0, !3, 0);
        if self.is64 {
            r.field(0x08, 4, 0, u32::MAX, 0);
        }
        let data = usize::from(self.data_offset() - self.offset);
        r.field(data, 2, 0, 0xffff, 0);
        if self.per_vector_mask {
            let mask = usize::from(self.mask_offset() - self.offset);
            let bits = if self.max_vectors == 32 {
                u32::MAX
            } else {
                (1 << self.max_vectors) - 1
            };
            r.field(mask, 4, 0, bits, 0);
        }
        r
    }

    /// Reads the layout of an MSI capability already present at `offset` (e.g. copied from
    /// hardware) and gives its registers the standard masks.
    pub fn at(cfg: &mut ConfigSpace, offset: u16) -> Self {
        let ctrl = cfg.read_u16(offset + CONTROL);
        let mmc = ((ctrl >> MMC_SHIFT) & 0x7).min(5);
        let cap = MsiCap {
            offset,
            max_vectors: 1 << mmc,
            is64: ctrl & MSI_CTRL_64BIT != 0,
            per_vector_mask: ctrl & MSI_CTRL_PER_VECTOR_MASK != 0,
        };
        let regs = cap.regs();
        // Keep the header (ID, next) read-only; apply masks to the rest.
        cfg.set_masks(offset + 2, &regs.writable()[2..], &regs.w1c()[2..]);
        cap
    }

    /// Whether the guest enabled MSI.
    pub fn enabled(&self, cfg: &ConfigSpace) -> bool {
        cfg.read_u16(self.offset + CONTROL) & MSI_CTRL_ENABLE != 0
    }

    /// How many vectors the guest enabled (multiple message enable, clamped to what the device
    /// supports).
    pub fn enabled_vectors(&self, cfg: &ConfigSpace) -> u32 {
        let mme = (cfg.read_u16(self.offset + CONTROL) & MME_MASK) >> MME_SHIFT;
        (1u32 << mme.min(5)).min(self.max_vectors)
    }

    /// The message vector `v` sends.
    pub fn message(&self, cfg: &ConfigSpace, v: u32) -> MsiMessage {
        let mut address = u64::from(cfg.read_u32(self.offset + ADDRESS_LOW));
        if self.is64 {
            address |= u64::from(cfg.read_u32(self.offset + 0x08)) << 32;
        }
        let n = self.enabled_vectors(cfg);
        let data = u32::from(cfg.read_u16(self.data_offset()));
        MsiMessage {
            address,
            data: (data & !(n - 1)) | (v & (n - 1)),
        }
    }

    /// Whether vector `v` is masked (always `false` without per-vector masking).
    pub fn masked(&self, cfg: &ConfigSpace, v: u32) -> bool {
        self.per_vector_mask && v < 32 && cfg.read_u32(self.mask_offset()) & (1 << v) != 0
    }

    /// Whether vector `v`'s pending bit is set.
    pub fn pending(&self, cfg: &ConfigSpace, v: u32) -> bool {
        self.per_vector_mask && v < 32 && cfg.read_u32(self.pending_offset()) & (1 << v) != 0
    }

    fn set_pending(&self, cfg: &mut ConfigSpace, v: u32, on: bool) {
        if !self.per_vector_mask || v >= 32 {
            return;
        }
        let p = cfg.read_u32(self.pending_offset());
        let p = if on { p | (1 << v) } else { p & !(1 << v) };
        cfg.set_u32(self.pending_offset(), p);
    }
}

/// An emulated MSI capability with its hypervisor vectors.
pub struct Msi {
    cap: MsiCap,
    slots: Vec<VectorSlot>,
}

impl std::fmt::Debug for Msi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msi").field("cap", &self.cap).finish()
    }
}

impl Msi {
    /// Adds an MSI capability with `vectors` vectors to `cfg` and allocates the vectors.
    pub fn new(
        cfg: &mut ConfigSpace,
        vectors: u32,
        is64: bool,
        per_vector_mask: bool,
        irq: &dyn InterruptManager,
    ) -> Result<Self, MsiError> {
        if !vectors.is_power_of_two() || vectors > 32 {
            return Err(MsiError::BadVectorCount(vectors));
        }
        let mut cap = MsiCap {
            offset: 0,
            max_vectors: vectors,
            is64,
            per_vector_mask,
        };
        let slots = (0..vectors)
            .map(|_| irq.allocate_msi().map(VectorSlot::new))
            .collect::<Result<Vec<_>, _>>()?;
        cap.offset = cfg.add_capability(MSI_CAP_ID, &cap.regs())?;
        Ok(Msi { cap, slots })
    }

    /// Wraps an MSI capability already present in `cfg` at `offset` (passthrough devices).
    pub fn existing(
        cfg: &mut ConfigSpace,
        offset: u16,
        irq: &dyn InterruptManager,
    ) -> Result<Self, MsiError> {
        let cap = MsiCap::at(cfg, offset);
        let slots = (0..cap.max_vectors)
            .map(|_| irq.allocate_msi().map(VectorSlot::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Msi { cap, slots })
    }

    /// The capability layout.
    pub fn cap(&self) -> &MsiCap {
        &self.cap
    }

    /// The hypervisor vector behind MSI vector `v` (its `EventFd` is what hardware signals).
    pub fn vector(&self, v: u32) -> Option<&dyn MsiVector> {
        self.slots.get(v as usize).map(VectorSlot::vector)
    }

    /// Whether the guest enabled MSI.
    pub fn enabled(&self, cfg: &ConfigSpace) -> bool {
        self.cap.enabled(cfg)
    }

    /// Whether a guest config access `[offset, offset + len)` touches the capability.
    pub fn touches(&self, offset: u16, len: usize) -> bool {
        ConfigSpace::touches(offset, len, self.cap.offset, self.cap.len())
    }

    /// Applies what the guest wrote. Call after every guest config write (cheap when the write
    /// did not touch the capability).
    pub fn config_written(&mut self, cfg: &mut ConfigSpace, offset: u16, len: usize) {
        if self.touches(offset, len) {
            self.apply(cfg);
        }
    }

    /// Brings every vector's route and delivery state in line with the registers.
    pub fn apply(&mut self, cfg: &mut ConfigSpace) {
        let enabled = self.cap.enabled(cfg);
        let n = self.cap.enabled_vectors(cfg);
        // Every route first, then delivery: one routing commit for all the vectors.
        for v in 0..self.slots.len() as u32 {
            if enabled && v < n && !self.cap.masked(cfg, v) {
                let msg = self.cap.message(cfg, v);
                self.slots[v as usize].route(msg);
            }
        }
        for v in 0..self.slots.len() as u32 {
            let active = enabled && v < n && !self.cap.masked(cfg, v);
            let msg = self.cap.message(cfg, v);
            let pending = self.cap.pending(cfg, v);
            let slot = &mut self.slots[v as usize];
            if active {
                slot.activate(msg);
                if pending && slot.live() {
                    self.cap.set_pending(cfg, v, false);
                    slot.trigger();
                }
            } else {
                slot.deactivate();
            }
        }
    }

    /// Moves events that arrived on disabled vectors into the pending bits. Call before a guest
    /// read of the pending register.
    pub fn sync_pending(&mut self, cfg: &mut ConfigSpace) {
        if !self.cap.per_vector_mask {
            return;
        }
        for (v, slot) in self.slots.iter().enumerate() {
            if slot.take_pending() {
                self.cap.set_pending(cfg, v as u32, true);
            }
        }
    }

    /// Whether a guest config read `[offset, offset + len)` reads the pending bits.
    pub fn reads_pending(&self, offset: u16, len: usize) -> bool {
        self.cap.per_vector_mask && ConfigSpace::touches(offset, len, self.cap.pending_offset(), 4)
    }

    /// Raises vector `v` from an emulated device.
    pub fn fire(&mut self, cfg: &mut ConfigSpace, v: u32) -> Delivery {
        if v >= self.cap.max_vectors {
            return Delivery::InvalidVector;
        }
        if !self.cap.enabled(cfg) || v >= self.cap.enabled_vectors(cfg) {
            return Delivery::Disabled;
        }
        if self.cap.masked(cfg, v) {
            self.cap.set_pending(cfg, v, true);
            return Delivery::Pending;
        }
        let slot = &mut self.slots[v as usize];
        if !slot.live() {
            return Delivery::Failed;
        }
        slot.trigger()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::fake::FakeInterrupts;
    use crate::pci::config::ConfigHeader;

    fn cfg() -> ConfigSpace {
        ConfigSpace::new(&ConfigHeader {
            vendor_id: 1,
            device_id: 2,
            revision_id: 0,
            class_code: 0,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
            interrupt_pin: 0,
        })
    }

    fn w(c: &mut ConfigSpace, m: &mut Msi, off: u16, data: &[u8]) {
        c.write(off, data);
        m.config_written(c, off, data.len());
    }

    #[test]
    fn layout_32_and_64_bit() {
        let irq = FakeInterrupts::new();
        let mut c = cfg();
        let m32 = Msi::new(&mut c, 1, false, false, &irq).unwrap();
        let m64 = Msi::new(&mut c, 4, true, true, &irq).unwrap();
        assert_eq!(m32.cap().offset(), 0x40);
        assert_eq!(m64.cap().offset(), 0x4c);
        assert_eq!(c.capabilities(), vec![(0x40, 5), (0x4c, 5)]);
        assert_eq!(c.read_u16(0x42), 0);
        assert_eq!(
            c.read_u16(0x4e),
            (2 << 1) | MSI_CTRL_64BIT | MSI_CTRL_PER_VECTOR_MASK
        );
        // Control: only enable and MME writable.
        c.write(0x4e, &[0xff, 0xff]);
        assert_eq!(c.read_u16(0x4e), 0x1f5);
        // Address low bits 1:0 read zero; the 32-bit cap has no high address.
        c.write(0x44, &0xfee0_0003u32.to_le_bytes());
        assert_eq!(c.read_u32(0x44), 0xfee0_0000);
        // Mask bits: only the 4 implemented vectors; pending RO.
        c.write(0x5c, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(0x5c), 0xf);
        c.write(0x60, &u32::MAX.to_le_bytes());
        assert_eq!(c.read_u32(0x60), 0);
        assert!(Msi::new(&mut c, 3, false, false, &irq).is_err());
    }

    #[test]
    fn routes_follow_guest_programming_32_bit() {
        let irq = FakeInterrupts::new();
        let mut c = cfg();
        let mut m = Msi::new(&mut c, 1, false, false, &irq).unwrap();
        let gsi = m.vector(0).unwrap().gsi();
        assert_eq!(m.fire(&mut c, 0), Delivery::Disabled);
        w(&mut c, &mut m, 0x44, &0xfee0_1000u32.to_le_bytes());
        w(&mut c, &mut m, 0x48, &0x4041u16.to_le_bytes());
        assert!(!irq.log(gsi).enabled);
        w(&mut c, &mut m, 0x42, &[1]);
        let log = irq.log(gsi);
        assert!(log.enabled);
        let msg = MsiMessage {
            address: 0xfee0_1000,
            data: 0x4041,
        };
        assert_eq!(log.route, Some(msg));
        assert_eq!(m.fire(&mut c, 0), Delivery::Delivered);
        assert_eq!(irq.log(gsi).delivered, vec![msg]);
        assert_eq!(m.fire(&mut c, 1), Delivery::InvalidVector);
        // Rewriting the same data does not reprogram the route.
        w(&mut c, &mut m, 0x48, &0x4041u16.to_le_bytes());
        assert_eq!(irq.log(gsi).route_updates, 1);
        w(&mut c, &mut m, 0x42, &[0]);
        assert!(!irq.log(gsi).enabled);
    }

    #[test]
    fn multiple_messages_and_per_vector_mask_64_bit() {
        let irq = FakeInterrupts::new();
        let mut c = cfg();
        let mut m = Msi::new(&mut c, 4, true, true, &irq).unwrap();
        let off = m.cap().offset();
        let gsis: Vec<u32> = (0..4).map(|v| m.vector(v).unwrap().gsi()).collect();
        // 64-bit address, written as one qword (two dwords).
        w(
            &mut c,
            &mut m,
            off + 4,
            &0x0000_0001_fee0_0000u64.to_le_bytes(),
        );
        w(&mut c, &mut m, off + 0xc, &0x50u16.to_le_bytes());
        // Enable with MME = 2 (4 vectors) in one word write.
        w(&mut c, &mut m, off + 2, &(1u16 | (2 << 4)).to_le_bytes());
        for (v, &g) in gsis.iter().enumerate() {
            let log = irq.log(g);
            assert!(log.enabled);
            assert_eq!(
                log.route,
                Some(MsiMessage {
                    address: 0x1_fee0_0000,
                    data: 0x50 | v as u32
                })
            );
        }
        // Mask vector 2: firing sets its pending bit, unmasking delivers and clears it.
        w(&mut c, &mut m, off + 0x10, &4u32.to_le_bytes());
        assert!(!irq.log(gsis[2]).enabled);
        assert_eq!(m.fire(&mut c, 2), Delivery::Pending);
        assert!(irq.log(gsis[2]).delivered.is_empty());
        assert_eq!(c.read_u32(off + 0x14), 4);
        w(&mut c, &mut m, off + 0x10, &0u32.to_le_bytes());
        assert_eq!(irq.log(gsis[2]).delivered.len(), 1);
        assert_eq!(c.read_u32(off + 0x14), 0);
        // MME = 1 (2 vectors): vectors 2 and 3 are off, data low bit only.
        w(&mut c, &mut m, off + 2, &(1u16 | (1 << 4)).to_le_bytes());
        assert!(!irq.log(gsis[3]).enabled);
        assert_eq!(m.fire(&mut c, 3), Delivery::Disabled);
        assert_eq!(irq.log(gsis[1]).route.unwrap().data, 0x51);
        // MME beyond the supported count is clamped.
        w(&mut c, &mut m, off + 2, &(1u16 | (7 << 4)).to_le_bytes());
        assert_eq!(m.cap().enabled_vectors(&c), 4);
    }

    #[test]
    fn hardware_events_while_masked_become_pending() {
        let irq = FakeInterrupts::new();
        let mut c = cfg();
        let mut m = Msi::new(&mut c, 1, false, true, &irq).unwrap();
        let off = m.cap().offset();
        w(&mut c, &mut m, off + 0xc, &1u32.to_le_bytes());
        w(&mut c, &mut m, off + 2, &[1]);
        // "Hardware" signals the eventfd directly.
        m.vector(0).unwrap().eventfd().write(1).unwrap();
        assert!(m.reads_pending(off + 0x10, 4));
        m.sync_pending(&mut c);
        assert!(m.cap().pending(&c, 0));
        w(&mut c, &mut m, off + 0xc, &0u32.to_le_bytes());
        let gsi = m.vector(0).unwrap().gsi();
        assert_eq!(irq.log(gsi).delivered.len(), 1);
        assert!(!m.cap().pending(&c, 0));
    }

    #[test]
    fn existing_capability_is_parsed() {
        let irq = FakeInterrupts::new();
        let mut c = cfg();
        let orig = Msi::new(&mut c, 8, true, false, &irq).unwrap();
        let off = orig.cap().offset();
        drop(orig);
        let m = Msi::existing(&mut c, off, &irq).unwrap();
        assert_eq!(m.cap().max_vectors(), 8);
        assert_eq!(m.cap().len(), 14);
        c.write(off, &[0xff, 0xff]);
        assert_eq!(c.capabilities(), vec![(off, MSI_CAP_ID)]);
    }

    #[test]
    fn vector_allocation_failure_is_an_error() {
        let irq = FakeInterrupts::with_limit(2);
        let mut c = cfg();
        assert!(matches!(
            Msi::new(&mut c, 4, false, false, &irq),
            Err(MsiError::Interrupt(_))
        ));
        // Nothing was placed and nothing leaked.
        assert!(c.capabilities().is_empty());
        assert_eq!(irq.allocated(), 0);
    }
}
