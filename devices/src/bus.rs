//! One bus type for both address spaces a vCPU exits on: port I/O and MMIO.
//!
//! A bus maps non-overlapping address ranges to devices. A vCPU exit looks the address up, and
//! the device sees the offset into its range. Unknown reads return all ones and unknown writes
//! are dropped (each logged once per address space, so a guest cannot flood the log).
//!
//! Lock order: the range map's lock is never held while a device's lock is taken. Dispatch clones
//! the device's `Arc` under the map's read lock and drops the map lock before locking the device,
//! so a device may change bus mappings (a PCI BAR moving) from inside its own access handler.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into the range that starts at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the range that starts at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A device shared between the bus and its owner.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from changing a bus's mappings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps an existing one.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Base of the range already there.
        other_base: u64,
        /// Length of the range already there.
        other_len: u64,
    },
    /// The range is empty or wraps around the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    InvalidRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No device is mapped at exactly this range.
    #[error("no device is mapped at bus range {base:#x}+{len:#x}")]
    NotFound {
        /// Base of the range looked for.
        base: u64,
        /// Length of the range looked for.
        len: u64,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedBusDevice,
}

/// An address space (port I/O or MMIO) that routes accesses to devices.
pub struct Bus {
    name: &'static str,
    ranges: RwLock<BTreeMap<u64, Entry>>,
    warned_read: AtomicBool,
    warned_write: AtomicBool,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<(u64, u64)> = self.ranges().collect::<Vec<_>>();
        f.debug_struct("Bus")
            .field("name", &self.name)
            .field("ranges", &ranges)
            .finish()
    }
}

impl Bus {
    /// An empty bus; `name` ("pio", "mmio") appears in log lines.
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: RwLock::new(BTreeMap::new()),
            warned_read: AtomicBool::new(false),
            warned_write: AtomicBool::new(false),
        }
    }

    /// Maps `device` at `[base, base + len)`. Fails, changing nothing, if the range is invalid or
    /// overlaps a range already mapped.
    pub fn insert(&self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        // The nearest range at or below the new base, and the nearest above it.
        if let Some((&b, e)) = ranges.range(..=base).next_back() {
            if b + (e.len - 1) >= base {
                return Err(overlap(base, len, b, e.len));
            }
        }
        if let Some((&b, e)) = ranges.range(base..).next() {
            if b <= base + (len - 1) {
                return Err(overlap(base, len, b, e.len));
            }
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the mapping at exactly `[base, base + len)` and returns its device.
    pub fn remove(&self, base: u64, len: u64) -> Result<SharedBusDevice, BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        match ranges.get(&base) {
            Some(e) if e.len == len => Ok(ranges.remove(&base).map(|e| e.device).unwrap_or_else(
                // Unreachable: the key was just found under the same lock.
                || unreachable!(),
            )),
            _ => Err(BusError::NotFound { base, len }),
        }
    }

    /// Moves the mapping at `[old_base, old_base + len)` to `new_base`. On failure the old
    /// mapping stays in place.
    pub fn relocate(&self, old_base: u64, len: u64, new_base: u64) -> Result<(), BusError> {
        let device = self.remove(old_base, len)?;
        if let Err(e) = self.insert(device.clone(), new_base, len) {
            // Put it back where it was; that range was free a moment ago and we hold no lock
            // across the two calls, but nothing else removes ranges it does not own.
            let _ = self.insert(device, old_base, len);
            return Err(e);
        }
        Ok(())
    }

    /// The mapped ranges, `(base, len)`, in address order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        ranges
            .iter()
            .map(|(&b, e)| (b, e.len))
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn lookup(&self, addr: u64, size: usize) -> Option<(u64, SharedBusDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        // The whole access must fall inside the range.
        if offset.checked_add(size as u64)? > entry.len {
            return None;
        }
        Some((base, entry.device.clone()))
    }

    /// Reads from the device at `addr`. Returns `false`, with `data` filled with all ones, when
    /// no device covers the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((base, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                if !self.warned_read.swap(true, Ordering::Relaxed) {
                    log::debug!(
                        "{}: read of {} bytes at {addr:#x} hits no device (further misses are not logged)",
                        self.name,
                        data.len()
                    );
                }
                false
            }
        }
    }

    /// Writes to the device at `addr`. Returns `false`, dropping the write, when no device covers
    /// the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((base, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(base, addr - base, data);
                true
            }
            None => {
                if !self.warned_write.swap(true, Ordering::Relaxed) {
                    log::debug!(
                        "{}: write of {} bytes at {addr:#x} hits no device (further misses are not logged)",
                        self.name,
                        data.len()
                    );
                }
                false
            }
        }
    }
}

fn overlap(base: u64, len: u64, other_base: u64, other_len: u64) -> BusError {
    BusError::Overlap {
        base,
        len,
        other_base,
        other_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access; reads return the offset's low byte.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last_write = Some((base, offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn routes_by_range_and_offset() {
        let bus = Bus::new("test");
        let p = probe();
        bus.insert(p.clone(), 0x100, 0x10).unwrap();
        let mut d = [0u8; 2];
        assert!(bus.read(0x104, &mut d));
        assert_eq!(d, [4, 4]);
        assert!(bus.write(0x10f, &[7]));
        assert_eq!(p.lock().unwrap().last_write, Some((0x100, 0xf, vec![7])));
    }

    #[test]
    fn unknown_reads_all_ones_and_straddling_access_misses() {
        let bus = Bus::new("test");
        bus.insert(probe(), 0x100, 0x10).unwrap();
        let mut d = [0u8; 4];
        assert!(!bus.read(0x0, &mut d));
        assert_eq!(d, [0xff; 4]);
        // Starts inside, ends outside.
        assert!(!bus.read(0x10e, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert!(!bus.write(0x110, &[1]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let bus = Bus::new("test");
        bus.insert(probe(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(probe(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(probe(), 0xf0, 0x11),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(probe(), 0x0, 0x1000),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(probe(), 0xf0, 0x10).is_ok());
        assert!(bus.insert(probe(), 0x110, 0x10).is_ok());
        assert!(matches!(
            bus.insert(probe(), 0x200, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(probe(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(bus.insert(probe(), u64::MAX, 1).is_ok());
    }

    #[test]
    fn relocate_moves_or_keeps_old_mapping() {
        let bus = Bus::new("test");
        bus.insert(probe(), 0x100, 0x10).unwrap();
        bus.insert(probe(), 0x300, 0x10).unwrap();
        bus.relocate(0x100, 0x10, 0x200).unwrap();
        assert_eq!(
            bus.ranges().collect::<Vec<_>>(),
            vec![(0x200, 0x10), (0x300, 0x10)]
        );
        assert!(bus.relocate(0x200, 0x10, 0x308).is_err());
        assert_eq!(
            bus.ranges().collect::<Vec<_>>(),
            vec![(0x200, 0x10), (0x300, 0x10)]
        );
        assert!(matches!(
            bus.remove(0x200, 0x8),
            Err(BusError::NotFound { .. })
        ));
        bus.remove(0x200, 0x10).unwrap();
    }

    /// A device that remaps itself from inside its write handler must not deadlock.
    #[test]
    fn device_can_remap_during_access() {
        struct Mover(Arc<Bus>);
        impl BusDevice for Mover {
            fn read(&mut self, _: u64, _: u64, _: &mut [u8]) {}
            fn write(&mut self, base: u64, _: u64, data: &[u8]) {
                self.0
                    .relocate(base, 0x10, u64::from(data[0]) << 8)
                    .unwrap();
            }
        }
        let bus = Arc::new(Bus::new("test"));
        bus.insert(Arc::new(Mutex::new(Mover(bus.clone()))), 0x100, 0x10)
            .unwrap();
        assert!(bus.write(0x100, &[0x5]));
        assert_eq!(bus.ranges().collect::<Vec<_>>(), vec![(0x500, 0x10)]);
    }
}
