//! Bus 0 of segment 0: the device table and config-access dispatch shared by the type-1 and
//! ECAM mechanisms. Functions that do not exist read all ones and ignore writes. Every write is
//! followed by a BAR reconcile (see [`super::platform`]).
//!
//! Ownership runs one way: the [`super::PciPlatform`] owns the root, the root owns the devices
//! and (through its BAR mapper) the buses; what the buses hold — the config access devices and
//! the BAR handlers — refers back only weakly. Dropping the platform therefore drops the root,
//! which unmaps every BAR from the buses (each device sees its BARs go through
//! [`super::PciDevice::bar_moved`]) and then drops the devices; a config access or BAR access
//! that reaches a handler left on a bus afterwards reads all ones and is dropped.

use std::sync::{Arc, Mutex, Weak};

use super::aligned_pieces;
use super::config::{CONFIG_SPACE_SIZE, HEADER_TYPE, HEADER_TYPE_MULTI_FUNCTION};
use super::platform::{lock, Allocation, BarMapper, Resources, SavedConfig, SlotBars};
use super::{PciAddress, PciDevice, FUNCTIONS_PER_SLOT, SLOTS_PER_BUS};

/// A weak handle on the root, for the config access devices the buses hold.
#[derive(Debug, Clone)]
pub(crate) struct RootRef(pub(crate) Weak<Mutex<PciRoot>>);

impl RootRef {
    /// Runs `f` on the root if it is still alive.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut PciRoot) -> R) -> Option<R> {
        let root = self.0.upgrade()?;
        let mut r = lock(&root);
        Some(f(&mut r))
    }
}

/// One populated slot.
pub(crate) struct Slot {
    pub(crate) dev: Arc<Mutex<dyn PciDevice>>,
    pub(crate) bars: SlotBars,
    /// The window space its BARs were placed in.
    pub(crate) allocations: Vec<Allocation>,
    /// The BARs, interrupt line and command register as the platform programmed them when
    /// the function was added: what a system reset puts back (`None` for the host bridge,
    /// which the platform never programs).
    pub(crate) boot: Option<SavedConfig>,
}

/// The device table of bus 0 and the BAR bookkeeping.
pub(crate) struct PciRoot {
    slots: Vec<Option<Slot>>,
    pub(crate) mapper: BarMapper,
    pub(crate) resources: Resources,
}

impl PciRoot {
    /// Bus 0 with `host` at slot 0.
    pub(crate) fn new(
        mapper: BarMapper,
        resources: Resources,
        host: Arc<Mutex<dyn PciDevice>>,
    ) -> Self {
        let n = usize::from(SLOTS_PER_BUS) * usize::from(FUNCTIONS_PER_SLOT);
        let mut slots: Vec<Option<Slot>> = (0..n).map(|_| None).collect();
        slots[0] = Some(Slot {
            dev: host,
            bars: SlotBars::default(),
            allocations: Vec::new(),
            boot: None,
        });
        PciRoot {
            slots,
            mapper,
            resources,
        }
    }

    /// Whether `slot` holds a device (its function 0; other functions need one).
    pub(crate) fn slot_used(&self, slot: u8) -> bool {
        self.function_used(PciAddress {
            bus: 0,
            device: slot,
            function: 0,
        })
    }

    pub(crate) fn function_used(&self, addr: PciAddress) -> bool {
        Self::index(addr).is_some_and(|i| self.slots[i].is_some())
    }

    /// Whether a function other than 0 of `slot` exists (function 0 then reports a
    /// multi-function device).
    fn has_other_functions(&self, slot: u8) -> bool {
        (1..FUNCTIONS_PER_SLOT).any(|function| {
            self.function_used(PciAddress {
                bus: 0,
                device: slot,
                function,
            })
        })
    }

    pub(crate) fn free_slot(&self) -> Option<u8> {
        (1..SLOTS_PER_BUS).find(|&s| !self.slot_used(s))
    }

    pub(crate) fn insert(&mut self, addr: PciAddress, s: Slot) {
        if let Some(i) = Self::index(addr) {
            self.slots[i] = Some(s);
        }
    }

    /// Empties `slot`, its other functions before function 0: unmaps their BARs, releases
    /// their window space, returns the devices.
    pub(crate) fn remove(&mut self, slot: u8) -> Vec<Arc<Mutex<dyn PciDevice>>> {
        let mut out = Vec::new();
        for function in (0..FUNCTIONS_PER_SLOT).rev() {
            let addr = PciAddress {
                bus: 0,
                device: slot,
                function,
            };
            let Some(mut s) = Self::index(addr).and_then(|i| self.slots[i].take()) else {
                continue;
            };
            {
                let mut d = lock(&s.dev);
                self.mapper.reconcile(&mut s.bars, &mut *d, &[]);
            }
            self.resources.release(&s.allocations);
            out.push(s.dev);
        }
        if !out.is_empty() {
            self.retry_unmapped();
        }
        out
    }

    fn index(addr: PciAddress) -> Option<usize> {
        (addr.bus == 0 && addr.device < SLOTS_PER_BUS && addr.function < FUNCTIONS_PER_SLOT)
            .then_some(
                usize::from(addr.device) * usize::from(FUNCTIONS_PER_SLOT)
                    + usize::from(addr.function),
            )
    }

    /// A config read of `data.len()` bytes at `offset` of function `addr`.
    pub(crate) fn config_read(&mut self, addr: PciAddress, offset: u16, data: &mut [u8]) {
        let Some(slot) = Self::index(addr).and_then(|i| self.slots[i].as_ref()) else {
            data.fill(0xff);
            return;
        };
        {
            let mut d = lock(&slot.dev);
            for (i, n) in aligned_pieces(offset.into(), data.len()) {
                let piece = &mut data[i..i + n];
                match in_config_space(offset, i, n) {
                    Some(off) => d.config_read(off, piece),
                    None => piece.fill(0xff),
                }
            }
        }
        // Function 0 of a slot with more functions says so (header type bit 7), so firmware
        // and the OS scan functions 1–7; a device given alone says what it says.
        if addr.function == 0 && self.has_other_functions(addr.device) {
            let at = usize::from(HEADER_TYPE).wrapping_sub(usize::from(offset));
            if let Some(b) = data.get_mut(at) {
                *b |= HEADER_TYPE_MULTI_FUNCTION;
            }
        }
    }

    /// A config write of `data` at `offset` of function `addr`, then a BAR reconcile.
    pub(crate) fn config_write(&mut self, addr: PciAddress, offset: u16, data: &[u8]) {
        let Some(i) = Self::index(addr) else {
            return;
        };
        let PciRoot { slots, mapper, .. } = self;
        let Some(slot) = slots[i].as_mut() else {
            return;
        };
        let removed = {
            let mut d = lock(&slot.dev);
            for (i, n) in aligned_pieces(offset.into(), data.len()) {
                if let Some(off) = in_config_space(offset, i, n) {
                    d.config_write(off, &data[i..i + n]);
                }
            }
            let want = d.decoded_bars();
            mapper.reconcile(&mut slot.bars, &mut *d, &want)
        };
        if removed {
            self.retry_unmapped();
        }
    }

    /// A system reset: every function, in slot order, resets itself
    /// ([`PciDevice::system_reset`]) and gets back the BARs, interrupt line and command register
    /// the platform gave it when it was added; the bus mappings follow. BARs the guest moved
    /// are back where the platform placed them (that space is still reserved for them).
    pub(crate) fn system_reset(&mut self) {
        let PciRoot { slots, mapper, .. } = self;
        for slot in slots.iter_mut().flatten() {
            let mut d = lock(&slot.dev);
            d.system_reset();
            if let Some(boot) = &slot.boot {
                boot.restore(&mut *d);
            }
            let want = d.decoded_bars();
            mapper.reconcile(&mut slot.bars, &mut *d, &want);
        }
        self.retry_unmapped();
    }

    /// Tries again to map BARs that were left unmapped (a range they wanted may be free now).
    fn retry_unmapped(&mut self) {
        let PciRoot { slots, mapper, .. } = self;
        for slot in slots.iter_mut().flatten() {
            if slot.bars.unmapped {
                let mut d = lock(&slot.dev);
                let want = d.decoded_bars();
                mapper.reconcile(&mut slot.bars, &mut *d, &want);
            }
        }
    }

    /// The mapped BARs of every device: `(slot, bar)` (for tests).
    #[cfg(test)]
    pub(crate) fn mapped(&self) -> Vec<(u8, super::bar::DecodedBar)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(s, slot)| {
                slot.as_ref()
                    .map(|slot| ((s / usize::from(FUNCTIONS_PER_SLOT)) as u8, slot))
            })
            .flat_map(|(s, slot)| slot.bars.mapped.iter().flatten().map(move |b| (s, *b)))
            .collect()
    }

    /// The device in `slot` (for tests).
    #[cfg(test)]
    pub(crate) fn device(&self, slot: u8) -> Option<Arc<Mutex<dyn PciDevice>>> {
        self.slots
            .get(usize::from(slot) * usize::from(FUNCTIONS_PER_SLOT))
            .and_then(|s| s.as_ref().map(|s| s.dev.clone()))
    }
}

impl Drop for PciRoot {
    /// Takes every BAR off the buses before the devices drop, so the buses hold no handler of
    /// a dead device and each device releases its BAR memory in the order a BAR move does.
    fn drop(&mut self) {
        let PciRoot { slots, mapper, .. } = self;
        for slot in slots.iter_mut().flatten() {
            let mut d = lock(&slot.dev);
            mapper.reconcile(&mut slot.bars, &mut *d, &[]);
        }
    }
}

/// The config offset of piece `(i, n)` of an access at `offset`, if it lies inside the 4 KiB.
fn in_config_space(offset: u16, i: usize, n: usize) -> Option<u16> {
    let off = usize::from(offset) + i;
    (off + n <= CONFIG_SPACE_SIZE).then_some(off as u16)
}
