//! BARs: sizing through the shadow, mmapped areas as guest memory, trapped accesses, the ROM.

use std::sync::Arc;

use super::super::mock::{MockBuilder, MockMapper};
use super::super::ops::ROM_REGION;
use super::super::{VfioPciDevice, VfioPciError};
use super::{pattern, Rig};
use crate::interrupt::fake::FakeInterrupts;
use crate::pci::bar::ROM_BAR;
use crate::pci::{BarAccess, PciDevice};

const MEM: u16 = 0x2;

#[test]
fn sixty_four_bit_prefetchable_bar_sizes_maps_and_moves() {
    let mut b = MockBuilder::new(0x10de, 0x1eb8);
    b.mem_bar(2, 0x10_0000, true, true);
    let mut r = Rig::new(&mut b);
    assert_eq!(r.size_bar(0x18), 0xfff0_000c);
    assert_eq!(r.size_bar(0x1c), 0xffff_ffff);
    assert_eq!(r.dev.bar_mapped_pieces(2), vec![(0, 0x10_0000)]);
    let host = r.dev.bar_ref(2).unwrap().host_addr(0).unwrap() as usize;
    assert_eq!(r.mock.st().mmaps, vec![(2, 0, 0x10_0000, host)]);

    let addr = 0x10_0000_0000u64;
    r.w32(0x18, addr as u32 | 0xc);
    r.w32(0x1c, (addr >> 32) as u32);
    r.w16(4, MEM);
    let d = r.dev.decoded_bars();
    assert_eq!((d[0].index, d[0].addr, d[0].size), (2, addr, 0x10_0000));
    // The platform maps the BAR: its memory becomes guest memory at the programmed address.
    r.dev.bar_moved(2, None, Some(addr));
    assert_eq!(r.mapper.live(), vec![(addr, 0x10_0000)]);
    assert_eq!(r.mapper.st().live.values().next().unwrap().2, host);
    // The guest moves it.
    let addr2 = 0x20_0000_0000u64;
    r.dev.bar_moved(2, Some(addr), Some(addr2));
    assert_eq!(r.mapper.live(), vec![(addr2, 0x10_0000)]);
    // Decoding off: unmapped as soon as the command register is written, before the platform
    // reports it.
    r.w16(4, 0);
    assert!(r.mapper.live().is_empty());
    r.dev.bar_moved(2, Some(addr2), None);
    r.w16(4, MEM);
    r.dev.bar_moved(2, None, Some(addr2));
    assert_eq!(r.mapper.live(), vec![(addr2, 0x10_0000)]);
    assert!(r.mock.config_writes_in(0x10..0x28).is_empty());
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn msix_table_sharing_a_page_with_registers_traps_that_page() {
    let mut b = MockBuilder::new(0x8086, 0x10fb);
    b.mem_bar(0, 0x4000, false, false);
    b.msix(4, (0, 0x800), (0, 0xc00));
    let mut r = Rig::new(&mut b);
    // Only the pages after the MSI-X page are mapped.
    assert_eq!(r.dev.bar_mapped_pieces(0), vec![(0x1000, 0x3000)]);
    r.dev.bar_moved(0, None, Some(0xc000_0000));
    assert_eq!(r.mapper.live(), vec![(0xc000_1000, 0x3000)]);
    // Registers in the MSI-X page go to the device through the region.
    assert_eq!(
        r.bar_read(0, 0x10, 4),
        (0x10..0x14).map(|o| pattern(0, o)).collect::<Vec<_>>()
    );
    r.dev.bar_write(0, 0x7fc, &[1, 2, 3, 4]);
    r.dev.bar_write(0, 0xc08, &[9; 4]);
    let writes: Vec<(u32, u64, Vec<u8>)> = r
        .mock
        .st()
        .writes
        .iter()
        .filter(|w| w.0 == 0)
        .cloned()
        .collect();
    assert_eq!(
        writes,
        vec![(0, 0x7fc, vec![1, 2, 3, 4]), (0, 0xc08, vec![9; 4])]
    );
    // The table and PBA are emulated: never read or written on the device.
    assert_eq!(
        r.bar_read(0, 0x80c, 4),
        vec![1, 0, 0, 0],
        "vector 0 masked at reset"
    );
    r.dev.bar_write(0, 0x800, &0xfee0_0000u32.to_le_bytes());
    assert_eq!(r.bar_read(0, 0x800, 4), 0xfee0_0000u32.to_le_bytes());
    r.dev.bar_write(0, 0xc00, &[0xff; 8]);
    assert_eq!(r.bar_read(0, 0xc00, 8), vec![0; 8]);
    let st = r.mock.st();
    assert!(!st
        .reads
        .iter()
        .any(|&(reg, o, _)| reg == 0 && (0x800..0x840).contains(&o)));
    assert!(!st
        .writes
        .iter()
        .any(|(reg, o, _)| *reg == 0 && (0x800..0x840).contains(o)));
    assert!(!st
        .writes
        .iter()
        .any(|(reg, o, _)| *reg == 0 && (0xc00..0xc08).contains(o)));
    drop(st);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn msix_table_and_pba_in_one_bar_with_sparse_areas() {
    let mut b = MockBuilder::new(0x15b3, 0x1017);
    b.mem_bar(2, 0x1_0000, true, false);
    b.msix(16, (2, 0x2000), (2, 0x3000));
    // An older kernel: the sparse areas leave out the table page only.
    b.sparse(2, &[(0, 0x2000), (0x3000, 0xd000)]);
    let mut r = Rig::new(&mut b);
    assert_eq!(
        r.dev.bar_mapped_pieces(2),
        vec![(0, 0x2000), (0x4000, 0xc000)]
    );
    r.dev.bar_moved(2, None, Some(0xd000_0000));
    assert_eq!(
        r.mapper.live(),
        vec![(0xd000_0000, 0x2000), (0xd000_4000, 0xc000)]
    );
    // The PBA page outside the PBA itself traps to the device.
    assert_eq!(
        r.bar_read(2, 0x3010, 2),
        vec![pattern(2, 0x3010), pattern(2, 0x3011)]
    );
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

/// Without the kernel's MSIX_MAPPABLE capability the table and PBA pages trap whatever the
/// relocation mode (tests/msix_reloc.rs has the cases with it).
#[test]
fn without_msix_mappable_the_table_and_pba_pages_trap() {
    let mut b = MockBuilder::new(0x15b3, 0x1017);
    b.mem_bar(0, 0x8000, false, false);
    b.msix(8, (0, 0x6000), (0, 0x7000));
    let r = Rig::new(&mut b);
    assert_eq!(r.dev.bar_mapped_pieces(0), vec![(0, 0x6000)]);
    assert!(r.violations().is_empty());
}

#[test]
fn unmappable_sub_page_and_odd_sized_bars_trap() {
    let mut b = MockBuilder::new(0x1af4, 0x1000);
    b.mem_bar(0, 0x4000, false, false);
    b.no_mmap(0);
    b.mem_bar(1, 0x100, false, false);
    b.mem_bar(2, 0x180, false, false);
    b.io_bar(3, 0x20);
    let mut r = Rig::new(&mut b);
    for bar in 0..4 {
        assert!(r.dev.bar_mapped_pieces(bar).is_empty(), "BAR {bar}");
    }
    assert_eq!(r.size_bar(0x18), 0xffff_fe00, "0x180 rounds up to 0x200");
    assert_eq!(r.size_bar(0x1c), 0xffff_ffe1);
    r.dev.bar_moved(0, None, Some(0xc000_0000));
    assert!(r.mapper.live().is_empty());
    assert_eq!(
        r.bar_read(0, 0x2000, 4),
        (0x2000..0x2004).map(|o| pattern(0, o)).collect::<Vec<_>>()
    );
    // Past the region but inside the BAR: all ones, the device is not asked.
    assert_eq!(r.bar_read(2, 0x1fc, 4), vec![0xff; 4]);
    assert_eq!(
        r.bar_read(2, 0x17e, 4),
        vec![pattern(2, 0x17e), pattern(2, 0x17f), 0xff, 0xff]
    );
    r.dev.bar_write(2, 0x17e, &[1, 2, 3, 4]);
    assert_eq!(r.mock.st().writes.last().unwrap(), &(2, 0x17e, vec![1, 2]));
    assert_eq!(r.bar_read(3, 4, 2), vec![pattern(3, 4), pattern(3, 5)]);
    assert!(r.mock.st().mmaps.is_empty());
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

#[test]
fn rom_from_the_device() {
    let mut rom = vec![0u8; 3000];
    rom[..3].copy_from_slice(&[0x55, 0xaa, 6]);
    rom[2999] = 0x42;
    let mut b = MockBuilder::new(0x10de, 0x1eb8);
    b.rom(&rom);
    let mut r = Rig::new(&mut b);
    assert_eq!(
        r.size_bar(0x30),
        0xffff_f001,
        "3000 bytes round up to 4 KiB"
    );
    assert_eq!(r.bar_read(ROM_BAR, 0, 3), vec![0x55, 0xaa, 6]);
    assert_eq!(r.bar_read(ROM_BAR, 2998, 4), vec![0, 0x42, 0xff, 0xff]);
    assert_eq!(r.bar_read(ROM_BAR, u64::MAX - 1, 4), vec![0xff; 4]);
    // Read once, at creation; never mmapped or written.
    let st = r.mock.st();
    assert_eq!(st.reads.iter().filter(|x| x.0 == ROM_REGION).count(), 1);
    assert!(st.mmaps.is_empty());
}

#[test]
fn rom_from_a_file_replaces_the_devices() {
    let mut b = MockBuilder::new(0x10de, 0x1eb8);
    b.rom(&[0x55, 0xaa, 1, 2]);
    let file = vec![0x55, 0xaa, 0x10, 0x77];
    let mut r = Rig::with_rom(&mut b, Some(file.clone()));
    assert_eq!(r.size_bar(0x30), 0xffff_f801, "2 KiB minimum");
    assert_eq!(r.bar_read(ROM_BAR, 0, 4), file);
    assert!(r.mock.st().reads.iter().all(|x| x.0 != ROM_REGION));
    // Without any ROM the register reads zero.
    let mut b = MockBuilder::new(0x10de, 0x1eb8);
    let mut r = Rig::new(&mut b);
    assert_eq!(r.size_bar(0x30), 0);
    // An empty file is refused.
    let mock = MockBuilder::new(1, 2).build();
    let irq = FakeInterrupts::new();
    let e = VfioPciDevice::new(
        "x",
        Box::new(mock),
        &irq,
        Arc::new(MockMapper::default()),
        Some(Vec::new()),
    )
    .unwrap_err();
    assert!(matches!(e, VfioPciError::RomSize { len: 0, .. }));
}

#[test]
fn failed_guest_mapping_falls_back_to_trapping() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x2000, false, false);
    let mut r = Rig::new(&mut b);
    r.mapper.st().fail_map = true;
    r.dev.bar_moved(0, None, Some(0xc000_0000));
    assert!(r.mapper.live().is_empty());
    assert_eq!(r.bar_read(0, 0x1000, 1), vec![pattern(0, 0x1000)]);
    // Mapping works again on the next move.
    r.mapper.st().fail_map = false;
    r.dev.bar_moved(0, Some(0xc000_0000), Some(0xc001_0000));
    assert_eq!(r.mapper.live(), vec![(0xc001_0000, 0x2000)]);
}

#[test]
fn drop_unmaps_and_resets() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x2000, false, false);
    let mut r = Rig::new(&mut b);
    r.dev.bar_moved(0, None, Some(0xc000_0000));
    let Rig {
        mock, mapper, dev, ..
    } = r;
    drop(dev);
    assert!(mapper.live().is_empty());
    assert_eq!(mock.st().resets, 1);
    // A device without a reset method is not reset.
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.no_reset();
    let r = Rig::new(&mut b);
    let Rig { mock, dev, .. } = r;
    drop(dev);
    assert_eq!(mock.st().resets, 0);
    assert!(mock.st().violations.is_empty());
    // A mapping that cannot be removed is leaked, not freed under the guest.
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x2000, false, false);
    let mut r = Rig::new(&mut b);
    r.dev.bar_moved(0, None, Some(0xc000_0000));
    r.mapper.st().fail_unmap = true;
    let Rig { mapper, dev, .. } = r;
    drop(dev);
    assert_eq!(mapper.live().len(), 1);
}

#[test]
fn d3hot_takes_bar_memory_away_until_d0() {
    let mut b = MockBuilder::new(0x8086, 0x1521);
    b.mem_bar(0, 0x2000, false, false);
    let pm = b.cap(0x01, &[0x03, 0x00, 0x08, 0x00, 0, 0]);
    let mut r = Rig::new(&mut b);
    r.w16(4, MEM);
    r.dev.bar_moved(0, None, Some(0xc000_0000));
    assert_eq!(r.mapper.live(), vec![(0xc000_0000, 0x2000)]);
    // D3hot: the write reaches the device, the guest mapping is gone first.
    r.w16(pm + 4, 0x0003);
    assert_eq!(r.mock.config_u32(usize::from(pm) + 4) & 3, 3);
    assert!(r.mapper.live().is_empty());
    // Moving the BAR in D3hot maps nothing; accesses trap to the device.
    r.dev.bar_moved(0, Some(0xc000_0000), Some(0xc001_0000));
    assert!(r.mapper.live().is_empty());
    // Back to D0: mapped where the BAR is now.
    r.dev.config_write(pm + 4, &[0x00]);
    assert_eq!(r.mapper.live(), vec![(0xc001_0000, 0x2000)]);
    // Writes to other bytes of the register leave the state alone.
    r.dev.config_write(pm + 5, &[0x81]);
    assert_eq!(r.mapper.live(), vec![(0xc001_0000, 0x2000)]);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}

/// An embedder's own PCI code asks the device to map BAR memory wherever the guest's BAR
/// register points, including while the guest sizes it: the device itself refuses the sizing
/// pattern and, once it knows the windows, anything outside them; it keeps trapping there.
#[test]
fn device_refuses_to_map_while_sized_or_outside_the_windows() {
    let mut b = MockBuilder::new(0x1234, 0x11e8);
    b.mem_bar(0, 0x10_0000, false, false);
    b.mem_bar(2, 0x10_0000, true, true);
    let mut r = Rig::new(&mut b);
    r.w16(4, MEM);
    // The guest sizes BAR 0 with decoding on; a naive adapter follows the register.
    r.w32(0x10, u32::MAX);
    let at = r.dev.decoded_bars()[0].addr;
    assert_eq!(at, 0xfff0_0000);
    r.dev.bar_moved(0, None, Some(at));
    assert!(r.mapper.live().is_empty(), "mapped while being sized");
    // Asked for a sane address while the register still holds the sizing pattern: refused too.
    r.dev.bar_moved(0, None, Some(0xc000_0000));
    assert!(r.mapper.live().is_empty());
    // The 64-bit BAR mid-sizing (high dword all ones).
    r.w32(0x1c, u32::MAX);
    r.dev.bar_moved(
        2,
        None,
        r.dev
            .decoded_bars()
            .iter()
            .find(|d| d.index == 2)
            .map(|d| d.addr),
    );
    assert!(r.mapper.live().is_empty());
    // Programmed: mapped.
    r.w32(0x10, 0xc000_0000);
    r.dev.bar_moved(0, None, Some(0xc000_0000));
    assert_eq!(r.mapper.live(), vec![(0xc000_0000, 0x10_0000)]);
    // With windows set, an address outside them is refused and the old mapping goes.
    r.dev.set_bar_windows(&crate::pci::PciWindows {
        mmio32: (0xc000_0000, 0x1000_0000),
        mmio64: Some((1 << 36, 1 << 36)),
        io: (0x6000, 0xa000),
    });
    r.w32(0x10, 0x8000_0000);
    r.dev.bar_moved(0, Some(0xc000_0000), Some(0x8000_0000));
    assert!(r.mapper.live().is_empty(), "mapped outside the windows");
    // Trapped accesses still reach the device's region.
    assert_eq!(r.bar_read(0, 0x10, 1), vec![pattern(0, 0x10)]);
    r.w32(0x10, 0xc010_0000);
    r.dev.bar_moved(0, None, Some(0xc010_0000));
    assert_eq!(r.mapper.live(), vec![(0xc010_0000, 0x10_0000)]);
    assert!(r.violations().is_empty(), "{:?}", r.violations());
}
