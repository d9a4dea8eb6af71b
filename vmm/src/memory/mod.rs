//! Guest RAM: one host mapping per region of the layout (anonymous memory, a shared memfd, or
//! hugetlbfs pages through a memfd), each aligned for huge pages, registered with KVM as memory
//! slots and, when asked or when devices are passed through, populated in parallel up front.
//!
//! Files: `backing.rs` (the mappings, the memfd, the host's huge page pool), `populate.rs`
//! (parallel prefault with progress); KVM slots for device memory are
//! `devices::kvm::DeviceSlots`.

pub mod backing;
pub mod populate;

use std::fs::File;
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::bitmap::BS;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestMemoryRegionBytes,
    GuestRegionCollection, GuestRegionMmap, GuestUsize, MemoryRegionAddress, VolatileSlice,
};

use crate::config::{RamConfig, RamPages};
use backing::{HostMapping, HugePagePool, MIN_ALIGN};
pub use populate::PopulateStats;

/// Guest RAM: its regions own their host mappings, so guest RAM lives exactly as long as the
/// last handle to it (clones share the regions).
pub type GuestMemory = GuestRegionCollection<RamRegion>;

/// What backs a RAM region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Private anonymous memory, 4 KiB pages (`hugepages=off`).
    Anonymous,
    /// Private anonymous memory with transparent huge pages advised (the default).
    AnonymousThp,
    /// A shared memfd (`shared=on`), transparent huge pages advised.
    Shared,
    /// hugetlbfs pages of this many bytes, through a memfd.
    HugeTlb(u64),
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::Anonymous => write!(f, "anonymous, 4 KiB pages"),
            Backing::AnonymousThp => write!(f, "anonymous, transparent huge pages"),
            Backing::Shared => write!(f, "shared memfd"),
            Backing::HugeTlb(p) if *p >= 1 << 30 => write!(f, "hugetlbfs {} GiB pages", p >> 30),
            Backing::HugeTlb(p) => write!(f, "hugetlbfs {} MiB pages", p >> 20),
        }
    }
}

impl Backing {
    /// The page size the host maps this backing with for certain (huge only for hugetlbfs).
    pub fn page_size(&self) -> u64 {
        match self {
            Backing::HugeTlb(p) => *p,
            _ => 4096,
        }
    }
}

/// One region of guest RAM and the host mapping behind it.
#[derive(Debug)]
pub struct RamRegion {
    // Field order is drop order: the vm-memory view (which does not own the memory) first.
    inner: GuestRegionMmap<()>,
    map: HostMapping,
    backing: Backing,
}

impl RamRegion {
    /// What backs this region.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// The host address and length of the region's mapping.
    pub fn host_span(&self) -> (usize, u64) {
        (self.map.addr() as usize, self.map.len() as u64)
    }
}

impl GuestMemoryRegion for RamRegion {
    type B = ();

    fn len(&self) -> GuestUsize {
        self.inner.len()
    }

    fn start_addr(&self) -> GuestAddress {
        self.inner.start_addr()
    }

    fn bitmap(&self) -> BS<'_, ()> {
        self.inner.bitmap()
    }

    fn get_host_address(
        &self,
        addr: MemoryRegionAddress,
    ) -> vm_memory::guest_memory::Result<*mut u8> {
        self.inner.get_host_address(addr)
    }

    fn file_offset(&self) -> Option<&FileOffset> {
        self.inner.file_offset()
    }

    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::guest_memory::Result<VolatileSlice<'_, BS<'_, ()>>> {
        self.inner.get_slice(offset, count)
    }

    fn is_hugetlbfs(&self) -> Option<bool> {
        Some(matches!(self.backing, Backing::HugeTlb(_)))
    }
}

impl GuestMemoryRegionBytes for RamRegion {}

/// Errors from setting up guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// More RAM than the host has.
    #[error("--memory {asked} MiB is more than this host's {host} MiB of RAM: ask for less")]
    MoreThanHost {
        /// MiB asked for.
        asked: u64,
        /// MiB the host has.
        host: u64,
    },
    /// The mmap failed.
    #[error("cannot allocate {0} MiB of guest RAM: {1} (ask for less --memory, or raise the address-space limit `ulimit -v`)")]
    Allocate(u64, String),
    /// The host has no huge pages of the size asked for.
    #[error("{}", no_huge_pages(*page))]
    NoHugePages {
        /// The page size; `None`: the host reports no default size.
        page: Option<u64>,
    },
    /// Too few free huge pages.
    #[error("--memory needs {needed} huge pages of {} MiB but only {free} are free: {fix}", page >> 20)]
    NotEnoughHugePages {
        /// Page size.
        page: u64,
        /// Pages needed.
        needed: u64,
        /// Pages free.
        free: u64,
        /// The command that reserves enough.
        fix: String,
    },
    /// The RAM size is not a multiple of the huge page size.
    #[error("--memory {size} MiB is not a multiple of the {} MiB huge page: round it to {} MiB", page >> 20, size.div_ceil(page >> 20) * (page >> 20))]
    NotPageMultiple {
        /// MiB asked for.
        size: u64,
        /// The page size in bytes.
        page: u64,
    },
    /// The memfd behind shared or huge-page RAM.
    #[error("cannot create the memfd for {size} MiB of guest RAM ({backing}): {err}")]
    Memfd {
        /// MiB.
        size: u64,
        /// What it was for.
        backing: Backing,
        /// Why.
        err: std::io::Error,
    },
    /// Populating guest RAM failed: the host ran out of memory (or huge pages) on the way.
    #[error("cannot populate guest RAM ({backing}): {err} (the host ran out of free memory or huge pages: ask for less --memory or free some)")]
    Populate {
        /// What backs it.
        backing: Backing,
        /// Why.
        err: std::io::Error,
    },
    /// KVM refused a memory slot.
    #[error("KVM refused guest RAM slot {slot} at {addr:#x}: {err} (try less --memory; otherwise run with -v and report the output)")]
    Slot {
        /// Slot number.
        slot: u32,
        /// Guest physical address.
        addr: u64,
        /// The error.
        err: kvm_ioctls::Error,
    },
}

fn no_huge_pages(page: Option<u64>) -> String {
    match page {
        Some(p) if p >= 1 << 30 => format!(
            "--memory hugepages={}G: this host has no {} MiB huge pages (the CPU needs pdpe1gb and the kernel hugetlbfs; use hugepages=2M)",
            p >> 30,
            p >> 20
        ),
        Some(p) => format!(
            "--memory hugepages: this host has no {} MiB huge pages (a kernel without hugetlbfs?); use hugepages=thp",
            p >> 20
        ),
        None => "--memory hugepages=on: this host reports no default huge page size (no hugetlbfs); use hugepages=thp".into(),
    }
}

/// The host's total RAM in bytes.
pub fn host_ram() -> Option<u64> {
    // SAFETY: sysinfo only writes the struct we pass, which is a valid zeroed `libc::sysinfo`.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some(info.totalram.saturating_mul(u64::from(info.mem_unit)))
}

/// Maps guest RAM for `mem_size` bytes as `cfg` asks (the layout decides where it goes).
/// Nothing is populated yet: see [`populate()`].
pub fn create_guest_memory(mem_size: u64, cfg: &RamConfig) -> Result<GuestMemory, MemoryError> {
    create_guest_memory_with(mem_size, cfg, &HugePagePool::default())
}

/// [`create_guest_memory`] with the huge page pool read from `pool` (tests fake it).
pub fn create_guest_memory_with(
    mem_size: u64,
    cfg: &RamConfig,
    pool: &HugePagePool,
) -> Result<GuestMemory, MemoryError> {
    if let Some(host) = host_ram() {
        if mem_size > host {
            return Err(MemoryError::MoreThanHost {
                asked: mem_size >> 20,
                host: host >> 20,
            });
        }
    }
    let backing = match (pool.resolve(cfg.pages)?, cfg.pages, cfg.shared) {
        (Some(page), _, _) => Backing::HugeTlb(page),
        (None, _, true) => Backing::Shared,
        (None, RamPages::Small, false) => Backing::Anonymous,
        (None, _, false) => Backing::AnonymousThp,
    };
    let page = backing.page_size();
    if mem_size % page != 0 {
        return Err(MemoryError::NotPageMultiple {
            size: mem_size >> 20,
            page,
        });
    }
    if let Backing::HugeTlb(page) = backing {
        pool.check(page, mem_size)?;
    }
    let file: Option<Arc<File>> = match backing {
        Backing::HugeTlb(p) => Some(backing::memfd(mem_size, Some(p))),
        Backing::Shared => Some(backing::memfd(mem_size, None)),
        _ => None,
    }
    .transpose()
    .map_err(|err| MemoryError::Memfd {
        size: mem_size >> 20,
        backing,
        err,
    })?
    .map(Arc::new);
    let align = page.max(MIN_ALIGN);
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in arch::layout::ram_regions(mem_size) {
        let alloc = |e: String| MemoryError::Allocate(len >> 20, e);
        let map =
            HostMapping::new(len, align, file.as_deref().map(|f| (f, offset))).map_err(|e| {
                match backing {
                    // hugetlbfs reserves the pages at mmap: fewer than checked are left.
                    Backing::HugeTlb(page) if e.raw_os_error() == Some(libc::ENOMEM) => {
                        match pool.check(page, mem_size) {
                            Err(short) => short,
                            Ok(()) => alloc(e.to_string()),
                        }
                    }
                    _ => alloc(e.to_string()),
                }
            })?;
        match backing {
            Backing::Anonymous => map.advise_thp(false),
            Backing::AnonymousThp | Backing::Shared => map.advise_thp(true),
            Backing::HugeTlb(_) => {}
        }
        let mut builder = MmapRegionBuilder::new(map.len())
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_hugetlbfs(matches!(backing, Backing::HugeTlb(_)));
        if let Some(f) = &file {
            builder = builder.with_file_offset(FileOffset::from_arc(f.clone(), offset));
        }
        // SAFETY: `map` is a live mapping of exactly `map.len()` bytes, and the region that
        // owns it drops this view first.
        let view = unsafe { builder.with_raw_mmap_pointer(map.addr()) }
            .build()
            .map_err(|e| alloc(e.to_string()))?;
        let inner = GuestRegionMmap::new(view, GuestAddress(start))
            .ok_or_else(|| alloc("region wraps the address space".into()))?;
        regions.push(RamRegion {
            inner,
            map,
            backing,
        });
        offset += len;
    }
    GuestRegionCollection::from_regions(regions)
        .map_err(|e| MemoryError::Allocate(mem_size >> 20, e.to_string()))
}

/// `vfiovm doctor --memory SIZE,hugepages=…`: whether the host's huge page pool holds guest RAM
/// now (`None` when no huge pages are asked for).
pub fn doctor_line(size: u64, cfg: &RamConfig) -> Option<Result<String, MemoryError>> {
    let pool = HugePagePool::default();
    let page = match pool.resolve(cfg.pages) {
        Ok(Some(page)) => page,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    Some(pool.check(page, size).map(|()| {
        format!(
            "huge pages: the host's free {} MiB pages hold the {} MiB of guest RAM ({} needed)",
            page >> 20,
            size >> 20,
            size.div_ceil(page)
        )
    }))
}

/// Faults in all of guest RAM with `threads` threads (`None`: one per host CPU), before the
/// guest runs.
pub fn populate(mem: &GuestMemory, threads: Option<u32>) -> Result<PopulateStats, MemoryError> {
    let threads = threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let spans: Vec<(usize, u64)> = mem.iter().map(|r| r.host_span()).collect();
    let backing = mem
        .iter()
        .next()
        .map_or(Backing::Anonymous, |r| r.backing());
    // SAFETY: the spans are the live mappings `mem` owns, and no vCPU runs yet.
    let stats = unsafe { populate::populate(&spans, backing.page_size(), threads) }
        .map_err(|err| MemoryError::Populate { backing, err })?;
    let ms = stats.elapsed.as_secs_f64() * 1e3;
    log::info!(
        "populated {} MiB of guest RAM ({backing}) with {} threads in {ms:.1} ms ({:.1} ms/GiB){}",
        stats.bytes >> 20,
        stats.threads,
        ms / (stats.bytes as f64 / f64::from(1u32 << 30)),
        if stats.touched {
            "; this kernel lacks MADV_POPULATE_WRITE, pages were touched one by one"
        } else {
            ""
        }
    );
    Ok(stats)
}

/// Zeroes all of guest RAM (a reboot in place). Private anonymous memory is discarded
/// (`MADV_DONTNEED`: no page is touched, and the host gets the memory back) unless `keep_pages`
/// (pages a passed-through device's DMA has pinned must stay the pages the IOMMU translates to;
/// RAM populated up front, `prefault=on`, stays populated); everything else is written with
/// zeros (a shared memfd or hugetlbfs file keeps its pages).
pub fn clear(mem: &GuestMemory, keep_pages: bool) -> Result<(), vm_memory::GuestMemoryError> {
    use vm_memory::{Address, Bytes};
    const CHUNK: u64 = 2 << 20;
    let zeros = vec![0u8; CHUNK as usize];
    for r in mem.iter() {
        if !keep_pages && matches!(r.backing, Backing::Anonymous | Backing::AnonymousThp) {
            match r.map.discard() {
                Ok(()) => continue,
                Err(e) => log::debug!("MADV_DONTNEED on guest RAM failed ({e}); writing zeros"),
            }
        }
        let mut off = 0;
        while off < r.len() {
            let n = (r.len() - off).min(CHUNK);
            mem.write_slice(&zeros[..n as usize], r.start_addr().unchecked_add(off))?;
            off += n;
        }
    }
    Ok(())
}

/// Registers every RAM region with KVM, slots 0.. in address order; returns the next free slot.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemory) -> Result<u32, MemoryError> {
    let mut slot = 0u32;
    for region in mem.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Allocate(region.len() >> 20, e.to_string()))?;
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: `host` points at a live anonymous mapping of `region.len()` bytes owned by
        // `mem`; the Vm keeps `mem` alive for as long as the VM fd exists (it drops the VM fd
        // first), so KVM never maps freed memory.
        unsafe { vm.set_user_memory_region(r) }.map_err(|err| MemoryError::Slot {
            slot,
            addr: r.guest_phys_addr,
            err,
        })?;
        slot += 1;
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_more_than_host() {
        let host = host_ram().unwrap();
        assert!(matches!(
            create_guest_memory(host + (1 << 30), &RamConfig::default()),
            Err(MemoryError::MoreThanHost { .. })
        ));
        let m = create_guest_memory(64 << 20, &RamConfig::default()).unwrap();
        assert_eq!(m.num_regions(), 1);
    }
}
