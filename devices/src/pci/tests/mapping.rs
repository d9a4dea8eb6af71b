//! BAR placement by the platform and remapping as the guest programs BARs and decoding.

use std::sync::{Arc, Mutex};

use super::*;
use crate::pci::bar::{BarSpec, DecodedBar, ROM_BAR};
use crate::pci::config::{ConfigHeader, ConfigSpace};
use crate::pci::testdev::{REG_BAR_MOVES, TESTDEV_IDENT};
use crate::pci::{BarAccess, PciDevice, PlatformError};

const CMD: u16 = 0x04;

#[test]
fn initial_placement_and_decoding() {
    let r = Rig::new();
    r.add_testdev(3);
    let bar0 = r.bar_addr(3, 0);
    let bar1 = r.bar_addr(3, 1) & !0x3;
    let bar2 = r.bar_addr(3, 2);
    let bar4 = r.bar_addr(3, 4);
    // 32-bit and small 64-bit non-prefetchable BARs low, the prefetchable one high, I/O in
    // the I/O window; all naturally aligned.
    assert!((MMIO32.0..MMIO32.0 + MMIO32.1).contains(&bar0));
    assert!((MMIO32.0..MMIO32.0 + MMIO32.1).contains(&bar2));
    assert!((MMIO64.0..MMIO64.0 + MMIO64.1).contains(&bar4));
    assert!((IO.0..IO.0 + IO.1).contains(&bar1));
    assert_eq!(bar0 % 0x1000, 0);
    assert_eq!(bar2 % 0x2000, 0);
    assert_eq!(bar4 % 0x1_0000, 0);
    assert_eq!(bar1 % 0x40, 0);
    // I/O and memory decoding on, bus master off, interrupt line = the swizzled GSI.
    assert_eq!(r.ecam_read(3, CMD, 2), 0x3);
    assert_eq!(r.ecam_read(3, 0x3c, 1), u64::from(swizzle(3, 0)));
    // The ROM has an address but is disabled.
    let rom = r.ecam_read32(3, 0x30);
    assert_eq!(rom & 1, 0);
    assert_ne!(rom & !0x7ff, 0);
    // Mapped on the buses.
    let (pio, mmio) = r.bar_ranges();
    assert_eq!(pio, vec![(bar1, 0x40)]);
    // Largest first: BAR 2 (8 KiB) before BAR 0 (4 KiB).
    assert_eq!(mmio, vec![(bar2, 0x2000), (bar0, 0x1000), (bar4, 0x1_0000)]);
    assert_eq!(r.mmio_read32(bar0), TESTDEV_IDENT);
    let mut b = [0u8; 4];
    assert!(r.pio.read(bar1, &mut b));
    assert_eq!(u32::from_le_bytes(b), TESTDEV_IDENT);
}

#[test]
fn guest_moves_bar_and_mapping_follows() {
    let r = Rig::new();
    r.add_testdev(3);
    let old = r.bar_addr(3, 0);
    let moves = r.mmio_read32(old + REG_BAR_MOVES);
    let new = 0xd000_0000;
    r.ecam_write32(3, 0x10, new as u32);
    assert_eq!(r.mmio_read32(old), u32::MAX);
    assert_eq!(r.mmio_read32(new), TESTDEV_IDENT);
    assert_eq!(r.mmio_read32(new + REG_BAR_MOVES), moves + 1);
    // A 64-bit BAR moved half by half (decoding on): the intermediate address is mapped or
    // not, the final one is.
    let target: u64 = MMIO64.0 + 0x40_0000;
    r.ecam_write32(3, 0x20, target as u32 | 0xc);
    r.ecam_write32(3, 0x24, (target >> 32) as u32);
    let (_, mmio) = r.bar_ranges();
    assert!(mmio.contains(&(target, 0x1_0000)));
    // Move the I/O BAR.
    r.ecam_write32(3, 0x14, 0x8001);
    let (pio, _) = r.bar_ranges();
    assert_eq!(pio, vec![(0x8000, 0x40)]);
}

#[test]
fn decode_toggling_maps_and_unmaps() {
    let r = Rig::new();
    r.add_testdev(3);
    let bar0 = r.bar_addr(3, 0);
    r.ecam_write(3, CMD, 2, 0x1);
    let (pio, mmio) = r.bar_ranges();
    assert!(mmio.is_empty());
    assert_eq!(pio.len(), 1);
    assert_eq!(r.mmio_read32(bar0), u32::MAX);
    r.ecam_write(3, CMD, 2, 0x2);
    let (pio, mmio) = r.bar_ranges();
    assert!(pio.is_empty());
    assert_eq!(mmio.len(), 3);
    assert_eq!(r.mmio_read32(bar0), TESTDEV_IDENT);
    // Byte write to the command register works the same.
    r.cf8_write(3, CMD, 1, 0);
    assert_eq!(r.bar_ranges(), (vec![], vec![]));
}

#[test]
fn sizing_with_decoding_off_restores_everything() {
    let r = Rig::new();
    r.add_testdev(3);
    let before = r.bar_ranges();
    r.ecam_write(3, CMD, 2, 0);
    for off in (0x10..0x28).step_by(4).chain([0x30]) {
        let orig = r.ecam_read32(3, off);
        r.ecam_write32(3, off, u32::MAX);
        let mask = r.ecam_read32(3, off);
        r.ecam_write32(3, off, orig);
        let expect = match off {
            0x10 => 0xffff_f000,
            0x14 => 0xffff_ffc1,
            0x18 => 0xffff_e004,
            0x20 => 0xffff_000c,
            0x1c | 0x24 => u32::MAX,
            0x30 => 0xffff_f801,
            _ => 0,
        };
        assert_eq!(mask, expect, "BAR register {off:#x}");
    }
    r.ecam_write(3, CMD, 2, 3);
    assert_eq!(r.bar_ranges(), before);
}

#[test]
fn sizing_with_decoding_on_never_maps_garbage() {
    // Some guests size with decoding left on: the all-ones address is outside the windows.
    let r = Rig::new();
    r.add_testdev(3);
    let bar0 = r.bar_addr(3, 0);
    r.ecam_write32(3, 0x10, u32::MAX);
    let (_, mmio) = r.bar_ranges();
    assert!(!mmio.iter().any(|&(_, len)| len == 0x1000));
    r.ecam_write32(3, 0x10, bar0 as u32);
    assert_eq!(r.mmio_read32(bar0), TESTDEV_IDENT);
}

#[test]
fn rom_bar_enable() {
    let r = Rig::new();
    r.add_testdev(3);
    let rom = u64::from(r.ecam_read32(3, 0x30) & !0x7ff);
    assert_eq!(r.mmio_read32(rom), u32::MAX);
    r.ecam_write32(3, 0x30, rom as u32 | 1);
    assert_eq!(r.mmio_read32(rom) & 0xffff, 0xaa55);
    let mut text = [0u8; 13];
    r.mmio.read(rom + 0x10, &mut text);
    assert_eq!(&text, b"VFTD test ROM");
    // ROM writes are ignored.
    r.mmio_write32(rom, 0);
    assert_eq!(r.mmio_read32(rom) & 0xffff, 0xaa55);
    // Memory decoding off hides the ROM too.
    r.ecam_write(3, CMD, 2, 1);
    assert_eq!(r.mmio_read32(rom), u32::MAX);
}

#[test]
fn overlapping_bar_stays_unmapped_until_valid() {
    let r = Rig::new();
    r.add_testdev(3);
    r.add_testdev(4);
    let a = r.bar_addr(3, 0);
    let b = r.bar_addr(4, 0);
    // Device 4's BAR 0 onto device 3's.
    r.ecam_write32(4, 0x10, a as u32);
    assert_eq!(r.mmio_read32(a), TESTDEV_IDENT);
    assert_eq!(r.mmio_read32(b), u32::MAX);
    let (_, mmio) = r.bar_ranges();
    assert_eq!(mmio.iter().filter(|&&(base, _)| base == a).count(), 1);
    // Distinguish the two by the scratch register.
    r.mmio_write32(a + 8, 0x33);
    // Move device 3 away: device 4's BAR 0 now maps at `a`.
    r.ecam_write32(3, 0x10, 0xd000_0000);
    assert_eq!(r.mmio_read32(0xd000_0000 + 8), 0x33);
    assert_eq!(r.mmio_read32(a), TESTDEV_IDENT);
    assert_eq!(r.mmio_read32(a + 8), 0);
    // A BAR on top of the ECAM window or outside the windows stays unmapped.
    r.ecam_write32(4, 0x10, ECAM as u32);
    assert_eq!(r.ecam_read32(0, 0), 0x29c0_8086);
    r.ecam_write32(4, 0x10, 0x1000);
    assert_eq!(r.mmio_read32(0x1000), u32::MAX);
    // An I/O BAR onto the config ports.
    r.ecam_write32(4, 0x14, 0xcc1);
    assert_eq!(r.ecam_read32(0, 0), 0x29c0_8086);
    assert_eq!(r.cf8_read(0, 0, 4), 0x29c0_8086);
}

/// The `bar_moved` calls a [`Recorder`] saw: `(bar, old, new)`.
type Moves = Arc<Mutex<Vec<(usize, Option<u64>, Option<u64>)>>>;

/// A device that records the `bar_moved` calls.
struct Recorder {
    config: ConfigSpace,
    moves: Moves,
}

impl PciDevice for Recorder {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_specs(&self) -> Vec<(usize, BarSpec)> {
        self.config.bar_specs()
    }
    fn decoded_bars(&self) -> Vec<DecodedBar> {
        self.config.decoded_bars()
    }
    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        self.moves.lock().unwrap().push((bar, old, new));
    }
}

impl BarAccess for Recorder {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(bar as u8 ^ offset as u8);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

fn recorder(specs: &[(usize, BarSpec)]) -> (Arc<Mutex<Recorder>>, Moves) {
    let mut config = ConfigSpace::new(&ConfigHeader {
        vendor_id: 0x1234,
        device_id: 1,
        revision_id: 0,
        class_code: 0,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        interrupt_pin: 0,
    });
    for &(i, s) in specs {
        config.set_bar(i, s).unwrap();
    }
    let moves = Arc::new(Mutex::new(Vec::new()));
    (
        Arc::new(Mutex::new(Recorder {
            config,
            moves: moves.clone(),
        })),
        moves,
    )
}

#[test]
fn bar_moved_hook_sees_every_mapping_change() {
    let r = Rig::new();
    let (dev, moves) = recorder(&[
        (0, BarSpec::mem64(64 << 30, false)),
        (ROM_BAR, BarSpec::rom(0x1000)),
    ]);
    r.platform.add_device(6, dev).unwrap();
    let placed = r.bar_addr(6, 0);
    // A 64 GiB BAR lands in the 64-bit window, naturally aligned.
    assert_eq!(placed % (64 << 30), 0);
    assert!(placed >= MMIO64.0);
    assert_eq!(*moves.lock().unwrap(), vec![(0, None, Some(placed))]);
    moves.lock().unwrap().clear();
    r.ecam_write(6, CMD, 2, 0);
    r.ecam_write(6, CMD, 2, 2);
    let rom = u64::from(r.ecam_read32(6, 0x30));
    r.ecam_write32(6, 0x30, rom as u32 | 1);
    let high = MMIO64.0 + (128 << 30);
    r.ecam_write32(6, 0x14, (high >> 32) as u32);
    assert_eq!(
        *moves.lock().unwrap(),
        vec![
            (0, Some(placed), None),
            (0, None, Some(placed)),
            (ROM_BAR, None, Some(rom)),
            (0, Some(placed), Some(high)),
        ]
    );
    let mut b = [0u8; 1];
    r.mmio.read(high + 3, &mut b);
    assert_eq!(b[0], 3);
}

/// Found by the `pci_config` fuzz target: BAR 0 waited for a range BAR 2 held; when BAR 2
/// moved away, BAR 0 was reported mapped there before BAR 2 was reported gone, so a
/// passthrough device put BAR 0's memory slot over BAR 2's, which was still live.
#[test]
fn a_bar_that_leaves_is_reported_before_one_that_takes_its_place() {
    let r = Rig::new();
    let (dev, moves) = recorder(&[(0, BarSpec::mem32(0x4000)), (2, BarSpec::mem32(0x4000))]);
    r.platform.add_device(1, dev).unwrap();
    let (held, away) = (MMIO32.0 + 0x10_0000, MMIO32.0 + 0x20_0000);
    r.ecam_write32(1, 0x18, held as u32);
    // BAR 0 onto BAR 2: refused by the bus, BAR 0 waits.
    r.ecam_write32(1, 0x10, held as u32);
    moves.lock().unwrap().clear();
    // BAR 2 leaves; BAR 0 takes the range in the same reconcile.
    r.ecam_write32(1, 0x18, away as u32);
    assert_eq!(
        *moves.lock().unwrap(),
        vec![(2, Some(held), Some(away)), (0, None, Some(held))]
    );
}

#[test]
fn add_device_errors_leave_nothing_behind() {
    let r = Rig::new();
    assert!(matches!(
        r.platform.add_device(0, r.testdev()),
        Err(PlatformError::SlotOutOfRange(0))
    ));
    assert!(matches!(
        r.platform.add_device(32, r.testdev()),
        Err(PlatformError::SlotOutOfRange(32))
    ));
    r.add_testdev(1);
    assert!(matches!(
        r.platform.add_device(1, r.testdev()),
        Err(PlatformError::SlotInUse(1))
    ));
    assert_eq!(r.platform.free_slot(), Some(2));
    // A BAR that does not fit: 2 GiB 32-bit BAR in a 960 MiB window.
    let before = r.bar_ranges();
    let (dev, _) = recorder(&[(0, BarSpec::mem32(0x1000)), (1, BarSpec::mem32(1 << 31))]);
    assert!(matches!(
        r.platform.add_device(2, dev),
        Err(PlatformError::NoSpace { bar: 1, .. })
    ));
    assert_eq!(r.bar_ranges(), before);
    assert_eq!(r.ecam_read32(2, 0), u32::MAX);
    // The space was released: a device that fits takes the slot.
    let (dev, _) = recorder(&[(0, BarSpec::mem32(0x1000))]);
    r.platform.add_device(2, dev).unwrap();
}

struct Squat;

impl crate::bus::BusDevice for Squat {
    fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: u64, _: &[u8]) {}
}

#[test]
fn something_else_in_the_window_is_reported() {
    let r = Rig::new();
    // The VMM put a device where the first BAR would go.
    r.mmio
        .insert(Arc::new(Mutex::new(Squat)), MMIO32.0, 0x1_0000)
        .unwrap();
    let (dev, _) = recorder(&[(0, BarSpec::mem32(0x1000))]);
    assert!(matches!(
        r.platform.add_device(2, dev),
        Err(PlatformError::Map { bar: 0, .. })
    ));
    assert_eq!(r.bar_ranges().1, vec![(MMIO32.0, 0x1_0000)]);
}

#[test]
fn io_window_exhaustion_and_no_64bit_window() {
    let r = Rig::with_windows(PciWindows {
        mmio32: MMIO32,
        mmio64: None,
        io: (0x6000, 0x80),
    });
    r.add_testdev(1);
    r.add_testdev(2);
    // Without a 64-bit window the prefetchable BAR goes low.
    assert!(r.bar_addr(1, 4) < 1 << 32);
    assert!(matches!(
        r.platform.add_device(3, r.testdev()),
        Err(PlatformError::NoSpace { bar: 1, .. })
    ));
}

#[test]
fn invalid_windows_are_refused() {
    let pio = Arc::new(Bus::new("pio"));
    let mmio = Arc::new(Bus::new("mmio"));
    let cfg = |windows| PciPlatformConfig {
        pio: pio.clone(),
        mmio: mmio.clone(),
        windows,
        irq: Arc::new(FakeInterrupts::new()),
        intx_gsi: Arc::new(swizzle),
        exit: Arc::new(Exits::default()),
    };
    for w in [
        PciWindows {
            mmio32: MMIO32,
            mmio64: None,
            io: (0x6000, 0x1_0000),
        },
        PciWindows {
            mmio32: (0xf000_0000, 0x2000_0000),
            mmio64: None,
            io: IO,
        },
        PciWindows {
            mmio32: MMIO32,
            mmio64: Some((u64::MAX, 2)),
            io: IO,
        },
        PciWindows {
            mmio32: (0, 0),
            mmio64: None,
            io: IO,
        },
    ] {
        assert!(matches!(
            PciPlatform::new(cfg(w)),
            Err(PlatformError::InvalidWindow { .. })
        ));
    }
}

#[test]
fn intx_wiring_failure_is_an_error() {
    let pio = Arc::new(Bus::new("pio"));
    let mmio = Arc::new(Bus::new("mmio"));
    let irq = FakeInterrupts::new();
    let p = PciPlatform::new(PciPlatformConfig {
        pio,
        mmio: mmio.clone(),
        windows: PciWindows {
            mmio32: MMIO32,
            mmio64: Some(MMIO64),
            io: IO,
        },
        irq: Arc::new(irq.clone()),
        intx_gsi: Arc::new(|_, _| 99),
        exit: Arc::new(Exits::default()),
    })
    .unwrap();
    let mem = Mem::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let dev = Arc::new(Mutex::new(TestDevice::new(mem, &irq).unwrap()));
    assert!(matches!(
        p.add_device(1, dev),
        Err(PlatformError::Interrupt { .. })
    ));
    assert_eq!(mmio.ranges().count(), 0);
}

/// A system reset (a reboot in place): a BAR the guest moved is back where the platform placed
/// it, the command register as the platform left it, the function's own registers (the test
/// device's scratch) at power-on, and the host bridge's PCIEXBAR cleared.
#[test]
fn system_reset_puts_back_what_the_platform_programmed() {
    let r = Rig::new();
    r.add_testdev(3);
    let a = r.bar_addr(3, 0);
    let cmd = u64::from(r.ecam_read32(3, CMD) & 0xffff);
    r.mmio_write32(a + 8, 0x33);
    r.ecam_write(3, CMD, 2, cmd | 0x4);
    r.ecam_write32(3, 0x10, 0xd000_0000);
    r.ecam_write32(0, 0x60, 0xb000_0001);
    assert_eq!(r.mmio_read32(0xd000_0000 + 8), 0x33);
    r.platform.system_reset();
    assert_eq!(r.bar_addr(3, 0), a);
    assert_eq!(r.mmio_read32(a), TESTDEV_IDENT);
    assert_eq!(r.mmio_read32(a + 8), 0);
    assert_eq!(r.mmio_read32(0xd000_0000), u32::MAX);
    assert_eq!(u64::from(r.ecam_read32(3, CMD) & 0xffff), cmd);
    assert_eq!(r.ecam_read32(0, 0x60), 0);
    let (_, mmio) = r.bar_ranges();
    assert_eq!(mmio.iter().filter(|&&(base, _)| base == a).count(), 1);
}
