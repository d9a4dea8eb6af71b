//! [`MockMapper`]: a recording, checking [`GuestMemoryMapper`].

use super::*;

/// What the fake mapper holds and records; lock it with [`MockMapper::st`].
#[derive(Debug, Default)]
pub struct MapperState {
    next: u32,
    /// Live mappings: slot -> (gpa, size, host address).
    pub live: BTreeMap<u32, (u64, u64, usize)>,
    /// Number of successful maps.
    pub maps: u32,
    /// Number of unmaps.
    pub unmaps: u32,
    /// Requests the model should never have made.
    pub violations: Vec<String>,
    /// Make every map fail from now on (the VMM ran out of memory slots).
    pub fail_map: bool,
    /// Make every unmap fail from now on.
    pub fail_unmap: bool,
    /// The device mmap behind each live slot (with [`MockMapper::backed_by`]).
    origins: BTreeMap<u32, MockMmap>,
}

/// A live slot of a [`MockMapper`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockSlot {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The host address mapped there.
    pub host: usize,
    /// The device mmap the host memory belongs to (with [`MockMapper::backed_by`]).
    pub mmap: Option<MockMmap>,
}

impl MockSlot {
    /// The offset into its region of the slot's first byte (with [`MockMapper::backed_by`]).
    pub fn region_offset(&self) -> Option<u64> {
        let m = self.mmap?;
        Some(m.offset + (self.host - m.host) as u64)
    }
}

/// A fake [`GuestMemoryMapper`] (the KVM memory slots a passthrough device asks for to put its
/// BAR mmaps into the guest). It refuses empty, unaligned or wrapping slots, a slot overlapping a
/// live one, and unmapping a slot that is not live; optionally a slot overlapping guest RAM
/// ([`MockMapper::guest_ram`]), outside the MMIO windows ([`MockMapper::windows`]) or whose host
/// memory is not a device mmap ([`MockMapper::backed_by`]).
#[derive(Debug, Default)]
pub struct MockMapper {
    state: Mutex<MapperState>,
    ram: Vec<(u64, u64)>,
    windows: Option<Vec<(u64, u64)>>,
    device: Option<MockDevice>,
    strict: bool,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

impl MockMapper {
    /// Panics on every violation instead of recording it (for fuzzing).
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Refuses slots overlapping guest RAM `ram`, each `(start, size)`.
    pub fn guest_ram(mut self, ram: Vec<(u64, u64)>) -> Self {
        self.ram = ram;
        self
    }

    /// Refuses slots outside the MMIO windows `windows`, each `(start, size)`.
    pub fn windows(mut self, windows: Vec<(u64, u64)>) -> Self {
        self.windows = Some(windows);
        self
    }

    /// Refuses slots whose host memory is not inside an mmap `device` handed out, and records
    /// which mmap each slot maps ([`MockSlot::mmap`]).
    pub fn backed_by(mut self, device: &MockDevice) -> Self {
        self.device = Some(device.clone());
        self
    }

    /// Locks the mapper's state.
    pub fn st(&self) -> MutexGuard<'_, MapperState> {
        lock(&self.state)
    }

    /// Live mappings as (gpa, size), sorted.
    pub fn live(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.st().live.values().map(|&(g, s, _)| (g, s)).collect();
        v.sort_unstable();
        v
    }

    /// The live slots.
    pub fn slots(&self) -> Vec<MockSlot> {
        let st = self.st();
        st.live
            .iter()
            .map(|(k, &(gpa, size, host))| MockSlot {
                gpa,
                size,
                host,
                mmap: st.origins.get(k).copied(),
            })
            .collect()
    }

    fn violation(&self, st: &mut MapperState, what: String) {
        if self.strict {
            panic!("fake memory mapper: {what}");
        }
        st.violations.push(what);
    }
}

impl GuestMemoryMapper for MockMapper {
    unsafe fn map(&self, gpa: u64, size: u64, host: *mut u8) -> Result<SlotHandle, MapperError> {
        let host = host as usize;
        let origin = self.device.as_ref().map(|d| d.mmap_containing(host, size));
        let mut st = self.st();
        if gpa % HOST_PAGE_SIZE != 0
            || size % HOST_PAGE_SIZE != 0
            || host as u64 % HOST_PAGE_SIZE != 0
            || size == 0
        {
            self.violation(
                &mut st,
                format!("unaligned or empty map {gpa:#x}+{size:#x} from {host:#x}"),
            );
        }
        if gpa.checked_add(size).is_none() {
            self.violation(&mut st, format!("map {gpa:#x}+{size:#x} wraps around"));
        }
        if let Some(r) = self.ram.iter().find(|&&r| overlaps((gpa, size), r)) {
            let what = format!(
                "map {gpa:#x}+{size:#x} overlaps guest RAM {:#x}+{:#x}",
                r.0, r.1
            );
            self.violation(&mut st, what);
        }
        if let Some(w) = &self.windows {
            if !w.iter().any(|&(s, l)| gpa >= s && gpa - s + size <= l) {
                let what = format!("map {gpa:#x}+{size:#x} is outside the MMIO windows {w:x?}");
                self.violation(&mut st, what);
            }
        }
        if origin == Some(None) {
            self.violation(
                &mut st,
                format!("map {gpa:#x}+{size:#x} of host {host:#x}, which is no mmap of the device"),
            );
        }
        if let Some(&(g, s, _)) = st
            .live
            .values()
            .find(|&&(g, s, _)| overlaps((gpa, size), (g, s)))
        {
            self.violation(
                &mut st,
                format!("map {gpa:#x}+{size:#x} overlaps the live slot {g:#x}+{s:#x}"),
            );
        }
        if st.fail_map {
            return Err("mapping refused".into());
        }
        st.next += 1;
        let slot = st.next;
        st.live.insert(slot, (gpa, size, host));
        if let Some(Some(m)) = origin {
            st.origins.insert(slot, m);
        }
        st.maps += 1;
        Ok(SlotHandle(slot))
    }

    fn unmap(&self, slot: SlotHandle) -> Result<(), MapperError> {
        let mut st = self.st();
        if st.fail_unmap {
            return Err("unmapping refused".into());
        }
        st.origins.remove(&slot.0);
        if st.live.remove(&slot.0).is_none() {
            self.violation(&mut st, format!("unmap of unknown slot {slot:?}"));
        }
        st.unmaps += 1;
        Ok(())
    }
}
