//! PCI passthrough: from `--device` arguments to VFIO devices on the guest's PCI bus.
//!
//! Order (and the reverse on the way out, which is RAII's drop order):
//! 1. the `--device` addresses parsed (no repeats), then host checks with the fix in the message
//!    (IOMMU on, device bound to vfio-pci, group viable, `/dev/vfio/N` usable, VF token when
//!    needed, RLIMIT_MEMLOCK ≥ guest RAM);
//! 2. one VFIO container (type-1 v2) for every device; each IOMMU group added once and told to
//!    KVM's VFIO pseudo-device (`KVM_DEV_VFIO_GROUP_ADD`);
//! 3. all guest RAM populated in parallel (`--memory …,threads=N`), then DMA-mapped with IOVA =
//!    guest physical address, in one call per RAM region, or per GiB for guests over 4 GiB so
//!    progress can be shown (each phase timed, logged at info);
//! 4. each device opened (with its VF token), its reset strategy chosen (the host's
//!    `reset_method`, `VFIO_DEVICE_FLAGS_RESET`, or a bus hot reset when every group on the bus is
//!    held here; logged at info, one line per device; `reset=required` refuses a device without
//!    one), reset, and put on the guest's PCI bus, where the
//!    PCI platform places its BARs (KVM memory slots over the BAR mmaps) and its interrupts
//!    (MSI/MSI-X eventfds = KVM irqfds; INTx with a resample eventfd).
//!
//! Teardown: the devices (owned by the PCI platform) disable their interrupts, remove their BAR
//! slots and reset with their strategy; then the container unmaps guest RAM and closes the groups.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::kvm::{DeviceSlots, KvmVfioDevice, KvmVfioError};
use devices::pci::{BarKind, PciAddress, PciDevice};
use devices::vfio::host::{self, HostError, HostRoot};
use devices::vfio::{
    GuestMemoryMapper, LegacyContainer, PeerDmaMapper, ResetHost, ResetStrategy, VfioContainer,
    VfioDeviceAddress, VfioPciDevice, VfioPciOptions,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::config::{DeviceConfig, RamConfig, ResetPolicy};
use crate::memory::populate::Progress;
use crate::memory::{GuestMemory, MemoryError};
use crate::platform::Platform;

/// Errors from setting up passthrough. Each names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// A host check failed.
    #[error("{0}")]
    Host(#[from] HostError),
    /// The VFIO container or a group.
    #[error("{0}")]
    Container(#[from] devices::vfio::ContainerError),
    /// KVM's VFIO pseudo-device.
    #[error("{0}")]
    KvmVfio(#[from] KvmVfioError),
    /// The ROM file given with `rom=`.
    #[error("cannot read the ROM file '{path}' for {bdf}: {err}")]
    Rom {
        /// The device.
        bdf: String,
        /// The path.
        path: String,
        /// Why.
        err: std::io::Error,
    },
    /// The device model.
    #[error("{bdf}: {err}")]
    Device {
        /// The device.
        bdf: String,
        /// The error.
        err: devices::vfio::VfioPciError,
    },
    /// Adding the device to the guest's PCI bus.
    #[error("{bdf}: cannot put it on the guest's PCI bus: {err}")]
    Pci {
        /// The device.
        bdf: String,
        /// The error.
        err: String,
    },
    /// Populating guest RAM before mapping it.
    #[error("{0}")]
    Memory(#[from] MemoryError),
    /// Something that cannot happen unless the VMM itself is wrong.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The same device given twice.
    #[error("--device {0} is given twice: give each device once")]
    Duplicate(String),
    /// `reset=required`, and the device cannot be reset.
    #[error("{bdf}: reset=required, but vfiovm cannot reset this device: {why} (or drop reset=required to pass it through unreset)")]
    ResetRequired {
        /// The device.
        bdf: String,
        /// Why, with the fix.
        why: String,
    },
}

/// The VFIO state of a VM. Drop it after the devices (the PCI platform) and before guest RAM.
pub struct Passthrough {
    // Field order is drop order: KVM forgets the groups, then the container unmaps DMA and
    // closes the groups.
    _kvm_vfio: KvmVfioDevice,
    container: Arc<LegacyContainer>,
    devices: Vec<String>,
    bar64_sizes: Vec<u64>,
}

impl Passthrough {
    /// The sizes of the 64-bit memory BARs of every device passed through (what firmware must
    /// fit into its 64-bit PCI aperture).
    pub fn bar64_sizes(&self) -> &[u64] {
        &self.bar64_sizes
    }
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("devices", &self.devices)
            .field("groups", &self.container.groups())
            .finish()
    }
}

/// Checks the host, then opens and attaches every device in `configs`. Returns `None` when
/// there are none.
pub fn setup(
    vm: &VmFd,
    mem: &GuestMemory,
    mem_size: u64,
    ram: &RamConfig,
    platform: &Platform,
    slots: Arc<DeviceSlots>,
    configs: &[DeviceConfig],
) -> Result<Option<Passthrough>, PassthroughError> {
    if configs.is_empty() {
        return Ok(None);
    }
    // The addresses first: a typo or a repeat is the user's to fix, whatever the host's state.
    let mut addrs = Vec::new();
    let mut seen = BTreeSet::new();
    for cfg in configs {
        let bdf = host::parse_bdf(&cfg.addr)?;
        if !seen.insert(bdf) {
            return Err(PassthroughError::Duplicate(bdf.to_string()));
        }
        addrs.push((cfg, bdf));
    }
    // Then the ROM files: a missing one is the user's to fix before any device is opened.
    let roms = addrs
        .iter()
        .map(|(cfg, bdf)| {
            cfg.rom
                .as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|err| PassthroughError::Rom {
                        bdf: bdf.to_string(),
                        path: p.display().to_string(),
                        err,
                    })
                })
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let root = HostRoot::default();
    host::check_iommu(&root)?;
    let mut reports = Vec::new();
    for (cfg, bdf) in addrs {
        let report = host::check_device(&root, &bdf)?;
        report.check_vf_token(cfg.vf_token.is_some())?;
        reports.push((cfg, report));
    }
    host::check_memlock(mem_size)?;
    for (group, others) in left_in_groups(&reports) {
        log::warn!(
            "IOMMU group {group} goes to this VM whole, with {} that {} not passed through: unusable by anyone else while the VM runs; add --device {} to give {} to the guest (functions of one device belong together)",
            others.join(", "),
            if others.len() == 1 { "is" } else { "are" },
            others.join(" --device "),
            if others.len() == 1 { "it" } else { "them" },
        );
    }

    let container = Arc::new(LegacyContainer::new()?);
    let kvm_vfio = KvmVfioDevice::new(vm)?;
    let groups: BTreeSet<u32> = reports.iter().map(|(_, r)| r.group).collect();
    for &g in &groups {
        container.add_group(g)?;
        let fd = container
            .group_fd(g)
            .ok_or(PassthroughError::Internal("a group just added has no fd"))?;
        kvm_vfio.add_group(g, fd)?;
        log::info!("VFIO group {g} attached to the container and to KVM");
    }

    map_guest_ram(&*container, mem, ram)?;

    let mapper: Arc<dyn GuestMemoryMapper> = slots;
    let mut added = Vec::new();
    let mut bar64_sizes = Vec::new();
    if let Err(e) = open_devices(
        &container,
        &reports,
        &roms,
        platform,
        &mapper,
        &mut added,
        &mut bar64_sizes,
    ) {
        // The documented order: the devices first (interrupts off, BARs unmapped, reset,
        // closed), then KVM's VFIO device and the container, which drop on return.
        for (slot, _) in added {
            drop(platform.pci().remove_device(slot));
        }
        return Err(e);
    }
    Ok(Some(Passthrough {
        _kvm_vfio: kvm_vfio,
        container,
        devices: added.into_iter().map(|(_, bdf)| bdf).collect(),
        bar64_sizes,
    }))
}

/// Opens every device, chooses its reset strategy (refusing a device without one when it is
/// `reset=required`), resets it and puts it on the PCI platform; `added` gets `(slot, bdf)`
/// of each device placed, also when a later one fails.
fn open_devices(
    container: &Arc<LegacyContainer>,
    reports: &[(&DeviceConfig, host::DeviceReport)],
    roms: &[Option<Vec<u8>>],
    platform: &Platform,
    mapper: &Arc<dyn GuestMemoryMapper>,
    added: &mut Vec<(u8, String)>,
    bar64_sizes: &mut Vec<u64>,
) -> Result<(), PassthroughError> {
    let root = HostRoot::default();
    let bdfs: Vec<host::Bdf> = reports.iter().map(|(_, r)| r.bdf).collect();
    // Guest slot of each host device whose function 0 is placed: its other functions join it.
    let mut slot_of: Vec<((u32, u8, u8), u8)> = Vec::new();
    for i in placement_order(&bdfs) {
        let ((cfg, report), rom) = (&reports[i], &roms[i]);
        let host_slot = (report.bdf.segment(), report.bdf.bus(), report.bdf.device());
        let bdf = report.bdf.to_string();
        let addr = VfioDeviceAddress::new(&bdf, report.group, cfg.vf_token.as_deref())?;
        let fd = container.open_device(&addr)?;
        let rom = rom.clone();
        // Every group is in the container before any device opens; their fds live as long as it.
        let reset_host = ResetHost {
            methods: host::reset_methods(&root, &report.bdf),
            groups: container
                .groups()
                .into_iter()
                .filter_map(|g| Some((g, container.group_fd(g)?)))
                .collect(),
        };
        // With p2p=on its BAR memory is also a DMA target for the other devices.
        let dev_mapper: Arc<dyn GuestMemoryMapper> = if cfg.p2p {
            Arc::new(PeerDmaMapper::new(mapper.clone(), container.clone()))
        } else {
            mapper.clone()
        };
        let options = VfioPciOptions::default()
            .rom(rom)
            .reset_host(reset_host.clone())
            .msix_relocation(cfg.msix_relocation);
        let mut dev = VfioPciDevice::with_options(
            &bdf,
            Box::new(fd),
            &**platform.interrupts(),
            dev_mapper,
            options,
        )
        .map_err(|err| PassthroughError::Device {
            bdf: bdf.clone(),
            err,
        })?;
        let strategy = dev.reset_strategy();
        log::info!(
            "{bdf} reset: {}; vfiovm uses {strategy}{}",
            reset_host.methods,
            if dev.guest_flr() {
                "; a guest FLR resets it the same way"
            } else {
                ""
            }
        );
        check_reset_policy(cfg, &bdf, strategy)?;
        // A clean device before the guest sees it (logs when the device cannot reset).
        dev.reset();
        bar64_sizes.extend(
            dev.bar_specs()
                .into_iter()
                .filter(|(_, b)| b.kind == BarKind::Memory64)
                .map(|(_, b)| b.size),
        );
        let pci = platform.pci();
        let sibling = slot_of.iter().find(|(h, _)| *h == host_slot).map(|s| s.1);
        let at = match sibling {
            // A further function of a multi-function device: the same guest slot, the same
            // function number, so the guest sees the device as the host does.
            Some(slot) if report.bdf.function() != 0 => PciAddress {
                bus: 0,
                device: slot,
                function: report.bdf.function(),
            },
            _ => PciAddress {
                bus: 0,
                device: pci.free_slot().ok_or_else(|| PassthroughError::Pci {
                    bdf: bdf.clone(),
                    err: "no free slot on bus 0".into(),
                })?,
                function: 0,
            },
        };
        if report.bdf.function() == 0 {
            slot_of.push((host_slot, at.device));
        }
        let at = pci
            .add_function(at, Arc::new(Mutex::new(dev)))
            .map_err(|e| PassthroughError::Pci {
                bdf: bdf.clone(),
                err: e.to_string(),
            })?;
        log::info!("{bdf} (group {}) is the guest's {at}", report.group);
        added.push((at.device, bdf));
    }
    Ok(())
}

/// `reset=required` refuses a device vfiovm cannot reset, with the reason and its fix.
fn check_reset_policy(
    cfg: &DeviceConfig,
    bdf: &str,
    strategy: &ResetStrategy,
) -> Result<(), PassthroughError> {
    match (cfg.reset, strategy) {
        (ResetPolicy::Required, ResetStrategy::None { why }) => {
            Err(PassthroughError::ResetRequired {
                bdf: bdf.to_string(),
                why: why.clone(),
            })
        }
        _ => Ok(()),
    }
}

/// Per group of the given devices, the other members vfio-pci owns that are not given: they are
/// taken with the group (the container holds it) but the guest never sees them.
fn left_in_groups(reports: &[(&DeviceConfig, host::DeviceReport)]) -> Vec<(u32, Vec<String>)> {
    let given: BTreeSet<String> = reports.iter().map(|(_, r)| r.bdf.to_string()).collect();
    let mut out: Vec<(u32, Vec<String>)> = Vec::new();
    for (_, r) in reports {
        if out.iter().any(|(g, _)| *g == r.group) {
            continue;
        }
        let others: Vec<String> = r
            .members
            .iter()
            .filter(|m| m.is_vfio_owned() && !m.bridge && !given.contains(&m.name))
            .map(|m| m.name.clone())
            .collect();
        if !others.is_empty() {
            out.push((r.group, others));
        }
    }
    out
}

/// The order devices are put on the guest's bus: as given, except that every function 0 comes
/// before the other functions of its host slot that are passed through too, so those can join
/// it as one multi-function guest device (a GPU and its audio function).
fn placement_order(bdfs: &[host::Bdf]) -> Vec<usize> {
    let host_slot = |b: &host::Bdf| (b.segment(), b.bus(), b.device());
    let first_of_slot = |b: &host::Bdf| {
        bdfs.iter()
            .position(|o| host_slot(o) == host_slot(b))
            .unwrap_or(0)
    };
    let mut order: Vec<usize> = (0..bdfs.len()).collect();
    order.sort_by_key(|&i| (first_of_slot(&bdfs[i]), bdfs[i].function()));
    order
}

/// Guests larger than this are DMA-mapped a GiB per call, with progress; smaller ones in one
/// call per RAM region. A call costs microseconds against tens of milliseconds per GiB of
/// pinning, and the steps stay 1 GiB aligned, so the IOMMU can still use its largest pages.
const DMA_STEP_ABOVE: u64 = 4 << 30;
/// The step for large guests.
const DMA_STEP: u64 = 1 << 30;

/// Populates guest RAM in parallel, then DMA-maps it (IOVA = guest physical address); logs
/// each phase and the total as `DMA-mapped N MiB of guest RAM in T ms`.
fn map_guest_ram(
    container: &dyn VfioContainer,
    mem: &GuestMemory,
    ram: &RamConfig,
) -> Result<(), PassthroughError> {
    map_guest_ram_in_steps(container, mem, ram, DMA_STEP_ABOVE, DMA_STEP)
}

/// [`map_guest_ram`] with its step rule given (tests use small ones).
fn map_guest_ram_in_steps(
    container: &dyn VfioContainer,
    mem: &GuestMemory,
    ram: &RamConfig,
    step_above: u64,
    step_size: u64,
) -> Result<(), PassthroughError> {
    let t = Instant::now();
    let populated = crate::memory::populate(mem, ram.threads)?;
    let t_map = Instant::now();
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let step = if total > step_above {
        step_size
    } else {
        u64::MAX
    };
    let mut progress = Progress::new("DMA-mapping guest RAM", total);
    let (mut mapped, mut calls) = (0u64, 0u32);
    for region in mem.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| PassthroughError::Internal("guest RAM region without a host mapping"))?
            as u64;
        let mut off = 0;
        while off < region.len() {
            let len = step.min(region.len() - off);
            // SAFETY: guest RAM stays mapped for the VM's whole life, and the Vm drops the
            // container (which unmaps every DMA mapping) before it unmaps guest RAM.
            unsafe { container.map_dma(region.start_addr().0 + off, len, host + off) }?;
            off += len;
            mapped += len;
            calls += 1;
            progress.update(mapped);
        }
    }
    progress.finish();
    let per_gib = |secs: f64| secs * 1e3 / (mapped as f64 / f64::from(1u32 << 30));
    let map_secs = t_map.elapsed().as_secs_f64();
    log::info!(
        "VFIO_IOMMU_MAP_DMA: {} MiB in {calls} calls, {:.1} ms ({:.1} ms/GiB)",
        mapped >> 20,
        map_secs * 1e3,
        per_gib(map_secs)
    );
    let secs = t.elapsed().as_secs_f64();
    log::info!(
        "DMA-mapped {} MiB of guest RAM in {:.1} ms ({:.1} ms/GiB; populate {:.1} ms with {} threads, map {:.1} ms)",
        mapped >> 20,
        secs * 1e3,
        per_gib(secs),
        populated.elapsed.as_secs_f64() * 1e3,
        populated.threads,
        map_secs * 1e3
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::vfio::{ContainerError, VfioDeviceFd};

    /// Members of a group that vfio-pci owns but nobody passed are named, once per group;
    /// bridges, members on other drivers (or none) and the given devices are not.
    #[test]
    fn group_members_left_behind_are_named() {
        use devices::vfio::host::GroupMember;
        let member = |name: &str, driver: Option<&str>, bridge| GroupMember {
            name: name.into(),
            driver: driver.map(Into::into),
            bridge,
        };
        let members = vec![
            member("0000:01:00.0", Some("vfio-pci"), false),
            member("0000:01:00.1", Some("vfio-pci"), false),
            member("0000:01:00.2", None, false),
            member("0000:01:00.3", Some("pci-stub"), false),
            member("0000:00:01.0", Some("vfio-pci"), true),
        ];
        let report = |bdf: &str, group| host::DeviceReport {
            bdf: host::parse_bdf(bdf).unwrap(),
            id: None,
            driver: Some("vfio-pci".into()),
            group,
            members: if group == 7 {
                members.clone()
            } else {
                Vec::new()
            },
            vf: None,
        };
        let cfg = DeviceConfig {
            addr: String::new(),
            rom: None,
            vf_token: None,
            reset: ResetPolicy::Auto,
            msix_relocation: Default::default(),
            p2p: true,
        };
        let gpu_only = [
            (&cfg, report("0000:01:00.0", 7)),
            (&cfg, report("0000:02:00.0", 8)),
        ];
        assert_eq!(
            left_in_groups(&gpu_only),
            vec![(7, vec!["0000:01:00.1".to_string()])]
        );
        let both = [
            (&cfg, report("0000:01:00.0", 7)),
            (&cfg, report("0000:01:00.1", 7)),
        ];
        assert!(left_in_groups(&both).is_empty());
    }

    /// `reset=required` refuses exactly the devices without a reset, naming why and the fix;
    /// `reset=auto` takes every device.
    #[test]
    fn reset_required_refuses_a_device_without_reset() {
        let mut cfg = DeviceConfig::parse("0000:06:0d.0,reset=required").unwrap();
        let none = ResetStrategy::None {
            why: "0000:06:0d.0 cannot be reset alone, and a reset of its bus would also reset \
                  0000:06:0e.0 (IOMMU group 27), which this VM does not hold: pass it through too"
                .into(),
        };
        let e = check_reset_policy(&cfg, "0000:06:0d.0", &none).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("0000:06:0d.0: reset=required, but vfiovm cannot reset this device: 0000:06:0d.0 cannot be reset alone"),
            "{msg}"
        );
        assert!(msg.contains("pass it through too"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        for ok in [
            ResetStrategy::Flr,
            ResetStrategy::Pm,
            ResetStrategy::Kernel { method: None },
            ResetStrategy::BusHotReset {
                groups: vec![26, 27],
                devices: vec![],
            },
        ] {
            check_reset_policy(&cfg, "0000:06:0d.0", &ok).unwrap();
        }
        cfg.reset = ResetPolicy::Auto;
        check_reset_policy(&cfg, "0000:06:0d.0", &none).unwrap();
    }

    /// Functions of one host device come out function 0 first, right where the first of them
    /// was given; other devices keep the order given.
    #[test]
    fn functions_follow_their_function_zero() {
        let b = |s: &str| host::parse_bdf(s).unwrap();
        let bdfs = [
            b("0000:03:00.0"),
            b("0000:01:00.1"), // GPU audio, given before the GPU
            b("0000:02:00.0"),
            b("0000:01:00.0"),
            b("0000:01:00.3"),
        ];
        assert_eq!(placement_order(&bdfs), vec![0, 3, 1, 4, 2]);
        assert_eq!(placement_order(&bdfs[..1]), vec![0]);
        assert!(placement_order(&[]).is_empty());
    }

    /// Records every DMA mapping; refuses everything else.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u64, u64, u64)>>);

    impl VfioContainer for Recorder {
        unsafe fn map_dma(&self, iova: u64, size: u64, host: u64) -> Result<(), ContainerError> {
            self.0.lock().unwrap().push((iova, size, host));
            Ok(())
        }
        fn unmap_dma(&self, _: u64, _: u64) -> Result<(), ContainerError> {
            Ok(())
        }
        fn add_group(&self, _: u32) -> Result<(), ContainerError> {
            Err(ContainerError::NoVfio)
        }
        fn open_device(&self, _: &VfioDeviceAddress) -> Result<VfioDeviceFd, ContainerError> {
            Err(ContainerError::NoVfio)
        }
        fn kvm_files(&self) -> Vec<std::os::fd::RawFd> {
            Vec::new()
        }
    }

    fn guest(size: u64) -> GuestMemory {
        crate::memory::create_guest_memory(size, &RamConfig::default()).unwrap()
    }

    /// A small guest: one call per RAM region, IOVA = guest physical address, the host address
    /// of the region; every page populated first.
    #[test]
    fn one_call_per_region_below_the_step_rule() {
        let mem = guest(64 << 20);
        let rec = Recorder::default();
        map_guest_ram(&rec, &mem, &RamConfig::default()).unwrap();
        let host = mem.iter().next().unwrap().host_span().0 as u64;
        assert_eq!(*rec.0.lock().unwrap(), vec![(0, 64 << 20, host)]);
    }

    /// Above the rule: steps of the step size, contiguous, covering every region exactly.
    #[test]
    fn large_guests_are_mapped_in_aligned_steps() {
        let mem = guest(40 << 20);
        let rec = Recorder::default();
        map_guest_ram_in_steps(&rec, &mem, &RamConfig::default(), 16 << 20, 16 << 20).unwrap();
        let host = mem.iter().next().unwrap().host_span().0 as u64;
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![
                (0, 16 << 20, host),
                (16 << 20, 16 << 20, host + (16 << 20)),
                (32 << 20, 8 << 20, host + (32 << 20)),
            ]
        );
    }
}
