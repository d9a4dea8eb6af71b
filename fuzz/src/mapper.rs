//! [`CheckingMapper`]: a [`GuestMemoryMapper`] (the KVM memory slots a passthrough device asks
//! for to put its BAR mmaps into the guest) that refuses every request a correct device model
//! never makes: unaligned or empty slots, a slot overlapping another slot, guest RAM or anything
//! outside the PCI MMIO windows, a slot whose host memory is not (entirely) a BAR mmap the model
//! made through VFIO, and unmapping a slot that does not exist.
//!
//! The mmaps are recorded by the fake VFIO device ([`crate::vfio_mock`]) in a shared
//! [`MmapLog`], so every slot can be traced back to `(region, offset, size)` of the device.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::vfio::{GuestMemoryMapper, MapperError, SlotHandle, HOST_PAGE_SIZE};

/// One mmap the device model made: VFIO region, offset into it, size, host address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapRecord {
    /// VFIO region index (BAR n is region n).
    pub region: u32,
    /// Offset into the region.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host address of the first byte.
    pub host: usize,
}

/// Every mmap the fake device handed out.
#[derive(Debug, Default)]
pub struct MmapLog(Mutex<Vec<MmapRecord>>);

impl MmapLog {
    /// Records one mmap.
    pub fn push(&self, r: MmapRecord) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    /// The mmap that contains `[host, host + size)`, if any.
    pub fn containing(&self, host: usize, size: u64) -> Option<MmapRecord> {
        let log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.iter()
            .rev()
            .find(|m| {
                host >= m.host
                    && (host - m.host) as u64 + size <= m.size
                    && (host as u64).checked_add(size).is_some()
            })
            .copied()
    }
}

/// A live guest mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The host memory behind it.
    pub mmap: MmapRecord,
    /// Offset of the slot's first byte into that mmap.
    pub mmap_offset: u64,
}

#[derive(Debug, Default)]
struct State {
    live: BTreeMap<u32, Slot>,
    next: u32,
    fail_map: bool,
}

/// The checking mapper.
#[derive(Debug)]
pub struct CheckingMapper {
    state: Mutex<State>,
    ram: Vec<(u64, u64)>,
    windows: Vec<(u64, u64)>,
    mmaps: Arc<MmapLog>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

impl CheckingMapper {
    /// A mapper for a guest with RAM `ram` and MMIO windows `windows` (each `(start, size)`),
    /// checking host pointers against `mmaps`. With `fail_map` every map request fails (the VMM
    /// ran out of memory slots).
    pub fn new(
        ram: Vec<(u64, u64)>,
        windows: Vec<(u64, u64)>,
        mmaps: Arc<MmapLog>,
        fail_map: bool,
    ) -> Self {
        CheckingMapper {
            state: Mutex::new(State {
                fail_map,
                ..Default::default()
            }),
            ram,
            windows,
            mmaps,
        }
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live mappings.
    pub fn live(&self) -> Vec<Slot> {
        self.st().live.values().copied().collect()
    }
}

impl GuestMemoryMapper for CheckingMapper {
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> Result<SlotHandle, MapperError> {
        let host = host as usize;
        assert!(
            size > 0
                && gpa % HOST_PAGE_SIZE == 0
                && size % HOST_PAGE_SIZE == 0
                && host as u64 % HOST_PAGE_SIZE == 0,
            "unaligned or empty slot {gpa:#x}+{size:#x} from host {host:#x}"
        );
        let end = gpa.checked_add(size);
        assert!(end.is_some(), "slot {gpa:#x}+{size:#x} wraps around");
        for &r in &self.ram {
            assert!(
                !overlaps((gpa, size), r),
                "slot {gpa:#x}+{size:#x} overlaps guest RAM {:#x}+{:#x}",
                r.0,
                r.1
            );
        }
        assert!(
            self.windows
                .iter()
                .any(|&(s, l)| gpa >= s && gpa - s + size <= l),
            "slot {gpa:#x}+{size:#x} is outside the PCI MMIO windows {:x?}",
            self.windows
        );
        let Some(mmap) = self.mmaps.containing(host, size) else {
            panic!("slot {gpa:#x}+{size:#x} maps host {host:#x}, which is not a BAR mmap of the device");
        };
        let mut st = self.st();
        if let Some(other) = st
            .live
            .values()
            .find(|s| overlaps((gpa, size), (s.gpa, s.size)))
        {
            panic!(
                "slot {gpa:#x}+{size:#x} overlaps the live slot {:#x}+{:#x}",
                other.gpa, other.size
            );
        }
        if st.fail_map {
            return Err("no free memory slot (injected)".into());
        }
        st.next += 1;
        let handle = st.next;
        st.live.insert(
            handle,
            Slot {
                gpa,
                size,
                mmap,
                mmap_offset: (host - mmap.host) as u64,
            },
        );
        Ok(SlotHandle(handle))
    }

    fn unmap(&self, slot: SlotHandle) -> Result<(), MapperError> {
        if self.st().live.remove(&slot.0).is_none() {
            panic!("unmap of {slot:?}, which is not a live slot");
        }
        Ok(())
    }
}
