//! Tests of the legacy container over a fake kernel.

use std::collections::HashMap;

use super::*;

/// A fake kernel: files are `/dev/null` handles, remembered by fd; every call is logged.
#[derive(Default)]
struct FakeSys {
    log: Mutex<Vec<String>>,
    names: Mutex<HashMap<RawFd, String>>,
    /// errno returned by `open` for a path.
    open_errors: HashMap<String, i32>,
    /// Group flags by path (default viable).
    group_flags: HashMap<String, u32>,
    device_errno: Option<i32>,
    map_errno: Option<i32>,
    /// errno of VFIO_GROUP_GET_STATUS.
    status_errno: Option<i32>,
    /// VFIO_IOMMU_UNMAP_DMA unmaps nothing.
    unmap_nothing: bool,
    api: i32,
    type1v2: bool,
}

impl FakeSys {
    fn new() -> Self {
        FakeSys {
            api: VFIO_API_VERSION as i32,
            type1v2: true,
            ..Default::default()
        }
    }

    fn name(&self, f: &File) -> String {
        self.names
            .lock()
            .unwrap()
            .get(&f.as_raw_fd())
            .cloned()
            .unwrap_or_default()
    }

    fn record(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl LegacySys for FakeSys {
    fn open(&self, path: &str) -> io::Result<File> {
        self.record(format!("open {path}"));
        if let Some(&e) = self.open_errors.get(path) {
            return Err(io::Error::from_raw_os_error(e));
        }
        let f = File::open("/dev/null")?;
        self.names
            .lock()
            .unwrap()
            .insert(f.as_raw_fd(), path.to_string());
        Ok(f)
    }
    fn api_version(&self, _c: &File) -> io::Result<i32> {
        Ok(self.api)
    }
    fn check_extension(&self, _c: &File, ext: u32) -> io::Result<bool> {
        Ok(ext == VFIO_TYPE1v2_IOMMU && self.type1v2)
    }
    fn set_iommu(&self, c: &File, t: u32) -> io::Result<()> {
        self.record(format!("set_iommu {} {t}", self.name(c)));
        Ok(())
    }
    fn group_status(&self, g: &File) -> io::Result<u32> {
        if let Some(e) = self.status_errno {
            return Err(io::Error::from_raw_os_error(e));
        }
        let n = self.name(g);
        Ok(*self.group_flags.get(&n).unwrap_or(&VFIO_GROUP_FLAGS_VIABLE))
    }
    fn set_container(&self, g: &File, c: &File) -> io::Result<()> {
        self.record(format!("set_container {} {}", self.name(g), self.name(c)));
        Ok(())
    }
    fn unset_container(&self, g: &File) -> io::Result<()> {
        self.record(format!("unset_container {}", self.name(g)));
        Ok(())
    }
    fn device_fd(&self, g: &File, name: &CString) -> io::Result<File> {
        self.record(format!(
            "device_fd {} '{}'",
            self.name(g),
            name.to_str().unwrap()
        ));
        if let Some(e) = self.device_errno {
            return Err(io::Error::from_raw_os_error(e));
        }
        File::open("/dev/null")
    }
    unsafe fn map_dma(&self, _c: &File, iova: u64, size: u64, vaddr: u64) -> io::Result<()> {
        self.record(format!("map {iova:#x} {size:#x} {vaddr:#x}"));
        match self.map_errno {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }
    fn unmap_dma(&self, _c: &File, iova: u64, size: u64) -> io::Result<u64> {
        self.record(format!("unmap {iova:#x} {size:#x}"));
        Ok(if self.unmap_nothing { 0 } else { size })
    }
}

fn container(sys: FakeSys) -> (LegacyContainer, Arc<FakeSys>) {
    let sys = Arc::new(sys);
    (LegacyContainer::with_sys(sys.clone()).unwrap(), sys)
}

fn addr(bdf: &str, group: u32) -> VfioDeviceAddress {
    VfioDeviceAddress::new(bdf, group, None).unwrap()
}

#[test]
fn device_names() {
    let a = VfioDeviceAddress::new("0000:06:0D.0", 26, None).unwrap();
    assert_eq!(a.kernel_name(), "0000:06:0d.0");
    let t = "2AB74924-c335-45f4-9b16-8569e5b08258";
    let a = VfioDeviceAddress::new("0000:06:0d.1", 26, Some(t)).unwrap();
    assert_eq!(
        a.kernel_name(),
        "0000:06:0d.1 vf_token=2ab74924-c335-45f4-9b16-8569e5b08258"
    );
    for bad in [
        "06:0d.0",
        "0000:06:0d.8",
        "0000:06:0d",
        "0000:06:0d.0 vf_token=x",
        "0000:g6:0d.0",
        "",
    ] {
        assert!(VfioDeviceAddress::new(bad, 1, None).is_err(), "{bad}");
    }
    assert!(VfioDeviceAddress::new("0000:06:0d.0", 1, Some("1234")).is_err());
}

#[test]
fn groups_are_opened_once_and_iommu_set_once() {
    let (c, sys) = container(FakeSys::new());
    let d1 = c.open_device(&addr("0000:06:0d.0", 26)).unwrap();
    let d2 = c.open_device(&addr("0000:06:0d.1", 26)).unwrap();
    c.add_group(26).unwrap();
    let d3 = c.open_device(&addr("0000:07:00.0", 30)).unwrap();
    assert_eq!(c.groups(), vec![26, 30]);
    assert_eq!(c.kvm_files().len(), 2);
    assert_eq!(c.kvm_files()[0], c.group_fd(26).unwrap());
    assert!(c.group_fd(31).is_none());
    let log = sys.log();
    let count = |p: &str| log.iter().filter(|l| l.starts_with(p)).count();
    assert_eq!(count("open /dev/vfio/26"), 1);
    assert_eq!(count("open /dev/vfio/30"), 1);
    assert_eq!(count("set_iommu"), 1);
    assert_eq!(
        log[1..4],
        [
            "open /dev/vfio/26",
            "set_container /dev/vfio/26 /dev/vfio/vfio",
            "set_iommu /dev/vfio/vfio 3",
        ]
    );
    assert!(log.contains(&"device_fd /dev/vfio/26 '0000:06:0d.1'".to_string()));
    drop((d1, d2, d3));
}

#[test]
fn teardown_order_devices_then_dma_then_groups() {
    let (c, sys) = container(FakeSys::new());
    let dev = c.open_device(&addr("0000:06:0d.0", 26)).unwrap();
    c.add_group(27).unwrap();
    // SAFETY: the fake kernel does not touch the address.
    unsafe { c.map_dma(0, 0x10_0000, 0x7f00_0000_0000).unwrap() };
    // SAFETY: as above.
    unsafe { c.map_dma(0x10_0000, 0x1000, 0x7f00_0010_0000).unwrap() };
    assert_eq!(c.dma_mappings().len(), 2);
    // Dropping the container first changes nothing while a device is open.
    drop(c);
    assert!(!sys.log().iter().any(|l| l.starts_with("unset")));
    drop(dev);
    let log = sys.log();
    let tail: Vec<&str> = log[log.len() - 4..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "unmap 0x0 0x100000",
            "unmap 0x100000 0x1000",
            "unset_container /dev/vfio/26",
            "unset_container /dev/vfio/27",
        ]
    );
}

#[test]
fn unmap_forgets_mappings() {
    let (c, sys) = container(FakeSys::new());
    c.add_group(1).unwrap();
    // SAFETY: the fake kernel does not touch the address.
    unsafe { c.map_dma(0x1000, 0x1000, 0x5000).unwrap() };
    c.unmap_dma(0, 0x10_0000).unwrap();
    assert!(c.dma_mappings().is_empty());
    drop(c);
    assert_eq!(
        sys.log().iter().filter(|l| l.starts_with("unmap")).count(),
        1
    );
}

#[test]
fn dma_before_a_group_is_refused() {
    let (c, sys) = container(FakeSys::new());
    // SAFETY: the fake kernel does not touch the address.
    let r = unsafe { c.map_dma(0, 0x1000, 0x1000) };
    assert!(matches!(r, Err(ContainerError::NoIommu)));
    assert!(!sys.log().iter().any(|l| l.starts_with("map")));
}

#[test]
fn errors_name_cause_and_fix() {
    let mut s = FakeSys::new();
    s.open_errors.insert("/dev/vfio/5".into(), libc::ENOENT);
    s.open_errors.insert("/dev/vfio/6".into(), libc::EBUSY);
    s.open_errors.insert("/dev/vfio/7".into(), libc::EACCES);
    s.group_flags.insert("/dev/vfio/8".into(), 0);
    let (c, _) = container(s);
    let msg = |e: ContainerError| e.to_string();
    let e = c.add_group(5).unwrap_err();
    assert!(msg(e).contains("not bound to vfio-pci"));
    let e = c.add_group(6).unwrap_err();
    assert!(msg(e).contains("in use by another process"));
    let e = c.add_group(7).unwrap_err();
    assert!(msg(e).contains("permission denied opening /dev/vfio/7"));
    let e = c.add_group(8).unwrap_err();
    assert!(matches!(e, ContainerError::GroupNotViable(8)));
    assert!(c.groups().is_empty());

    let mut s = FakeSys::new();
    s.device_errno = Some(libc::EBUSY);
    s.map_errno = Some(libc::ENOMEM);
    let (c, _) = container(s);
    let e = c.open_device(&addr("0000:06:0d.0", 26)).unwrap_err();
    assert_eq!(
        msg(e),
        "device 0000:06:0d.0 is in use by another process or VM: stop it (`fuser -v /dev/vfio/*` names it)"
    );
    // SAFETY: the fake kernel does not touch the address.
    let e = unsafe { c.map_dma(0, 0x1000, 0x1000) }.unwrap_err();
    assert!(msg(e).contains("RLIMIT_MEMLOCK"));
    assert!(c.dma_mappings().is_empty());

    let mut s = FakeSys::new();
    s.device_errno = Some(libc::EACCES);
    let (c, _) = container(s);
    let e = c.open_device(&addr("0000:06:0d.0", 26)).unwrap_err();
    assert!(matches!(e, ContainerError::VfToken(_)));
}

#[test]
fn container_checks() {
    let mut s = FakeSys::new();
    s.open_errors
        .insert(VFIO_CONTAINER_PATH.into(), libc::ENOENT);
    assert!(matches!(
        LegacyContainer::with_sys(Arc::new(s)),
        Err(ContainerError::NoVfio)
    ));
    let mut s = FakeSys::new();
    s.api = 1;
    assert!(matches!(
        LegacyContainer::with_sys(Arc::new(s)),
        Err(ContainerError::ApiVersion(1))
    ));
    let mut s = FakeSys::new();
    s.type1v2 = false;
    assert!(matches!(
        LegacyContainer::with_sys(Arc::new(s)),
        Err(ContainerError::NoType1v2)
    ));
}

/// The failures without a fix of their own still name the file or call and the kernel's error.
#[test]
fn other_failures_name_the_call_and_the_errno() {
    let msg = |e: ContainerError| e.to_string();
    let mut s = FakeSys::new();
    s.open_errors
        .insert(VFIO_CONTAINER_PATH.into(), libc::EMFILE);
    let e = LegacyContainer::with_sys(Arc::new(s)).unwrap_err();
    assert!(matches!(e, ContainerError::OpenContainer(_)));
    assert!(msg(e).starts_with("cannot open /dev/vfio/vfio: Too many open files"));

    let mut s = FakeSys::new();
    s.open_errors.insert("/dev/vfio/9".into(), libc::EIO);
    let (c, _) = container(s);
    let e = c.add_group(9).unwrap_err();
    assert!(matches!(e, ContainerError::OpenGroup { group: 9, .. }));
    assert!(msg(e).starts_with("cannot open /dev/vfio/9: Input/output error"));

    let mut s = FakeSys::new();
    s.status_errno = Some(libc::EINVAL);
    let (c, _) = container(s);
    let e = c.add_group(9).unwrap_err();
    assert!(matches!(e, ContainerError::Ioctl { .. }));
    assert!(msg(e).starts_with("VFIO_GROUP_GET_STATUS on /dev/vfio/9 failed: Invalid argument"));

    let token = "2ab74924-c335-45f4-9b16-8569e5b08258";
    let with_token = VfioDeviceAddress::new("0000:06:0d.0", 26, Some(token)).unwrap();
    for (errno, with, want) in [
        (libc::EINVAL, &with_token, "device 0000:06:0d.0 is not an SR-IOV PF or VF owned through vfio-pci: remove vf_token="),
        (libc::ENODEV, &addr("0000:06:0d.0", 26), "device 0000:06:0d.0 is not in IOMMU group 26 (or not bound to vfio-pci)"),
        (libc::EIO, &addr("0000:06:0d.0", 26), "cannot open device 0000:06:0d.0: Input/output error"),
    ] {
        let mut s = FakeSys::new();
        s.device_errno = Some(errno);
        let (c, _) = container(s);
        let e = msg(c.open_device(with).unwrap_err());
        assert!(e.starts_with(want), "{e}");
    }

    let mut s = FakeSys::new();
    s.unmap_nothing = true;
    let (c, _) = container(s);
    c.add_group(1).unwrap();
    // SAFETY: the fake kernel does not touch the address.
    unsafe { c.map_dma(0, 0x1000, 0x1000).unwrap() };
    let e = c.unmap_dma(0, 0x1000).unwrap_err();
    assert!(matches!(e, ContainerError::UnmapDma { .. }));
    assert!(msg(e).starts_with("unmapping 0x1000 bytes at IOVA 0x0 failed"));
}

/// The safe way in for an embedder's guest RAM: every region mapped at IOVA = GPA with its
/// host address, and the memory kept alive by the container until DMA is unmapped at close.
#[test]
fn map_guest_memory_maps_every_region_and_keeps_it_alive() {
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
    let (c, sys) = container(FakeSys::new());
    c.add_group(26).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(1 << 32), 0x10_0000),
    ])
    .unwrap();
    let hosts: Vec<u64> = [0, 1 << 32]
        .iter()
        .map(|&a| mem.get_host_address(GuestAddress(a)).unwrap() as u64)
        .collect();
    assert_eq!(c.map_guest_memory(&mem).unwrap(), 0x30_0000);
    assert_eq!(c.dma_mappings(), vec![(0, 0x20_0000), (1 << 32, 0x10_0000)]);
    let maps: Vec<String> = sys
        .log()
        .into_iter()
        .filter(|l| l.starts_with("map"))
        .collect();
    assert_eq!(
        maps,
        [
            format!("map 0x0 0x200000 {:#x}", hosts[0]),
            format!("map 0x100000000 0x100000 {:#x}", hosts[1]),
        ]
    );
    // The VMM lets its memory go; the container still holds it (the pages stay mapped).
    let mapped = |host: u64| {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(' ').map(|(range, _)| range.to_string()))
            .filter_map(|r| {
                let (a, b) = r.split_once('-')?;
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .any(|(start, end)| (start..end).contains(&host))
    };
    assert!(mapped(hosts[0]) && mapped(hosts[1]));
    drop(mem);
    assert!(
        mapped(hosts[0]) && mapped(hosts[1]),
        "the container keeps guest memory"
    );
    drop(c);
    assert!(!mapped(hosts[0]) && !mapped(hosts[1]), "released at close");
    assert_eq!(
        sys.log().iter().filter(|l| l.starts_with("unmap")).count(),
        2
    );
}
