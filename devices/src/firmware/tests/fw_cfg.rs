//! fw_cfg through its ports, as `QemuFwCfgLib` uses them: selector writes, data reads, DMA
//! descriptors in guest memory, and hostile descriptors.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{fw_cfg_with_ram, Guest, RAM_END, RAM_START};
use crate::bus::BusDevice;
use crate::firmware::{dma, e820, keys, E820Entry, FwCfg, FwCfgError, FILE_NAME_MAX};

#[test]
fn signature_and_dma_feature_through_ports() {
    let mut g = Guest::new(fw_cfg_with_ram());
    assert_eq!(g.read_item_pio(keys::SIGNATURE, 4), b"QEMU");
    let id = g.read_item_pio(keys::ID, 4);
    assert_eq!(u32::from_le_bytes(id.try_into().unwrap()) & 2, 2, "DMA bit");
    // The DMA registers read the DMA signature, as a 64-bit big-endian value would.
    let mut sig = [0u8; 8];
    for (i, b) in sig.iter_mut().enumerate() {
        let mut d = [0u8];
        g.dev.read(0x510, 4 + i as u64, &mut d);
        *b = d[0];
    }
    assert_eq!(&sig, b"QEMU CFG");
}

#[test]
fn reads_advance_and_end_in_zeros() {
    let mut dev = fw_cfg_with_ram();
    dev.add_bytes(keys::UUID, vec![1, 2, 3]).unwrap();
    let mut g = Guest::new(dev);
    assert_eq!(g.read_item_pio(keys::UUID, 6), [1, 2, 3, 0, 0, 0]);
    // Selecting again rewinds.
    assert_eq!(g.read_item_pio(keys::UUID, 2), [1, 2]);
    // Reading at 0x510 reads data too (QEMU's combined register).
    let mut d = [0u8];
    g.dev.read(0x510, 0, &mut d);
    assert_eq!(d, [3]);
}

#[test]
fn absent_keys_read_zeros() {
    let mut g = Guest::new(fw_cfg_with_ram());
    // No CPU count given: zeros, never 0xFFFF (OVMF would wait for 65,534 APs).
    assert_eq!(g.read_item_pio(keys::NB_CPUS, 2), [0, 0]);
    assert_eq!(g.read_item_pio(0x1234, 4), [0; 4]);
    assert_eq!(g.read_item_pio(0x8005, 4), [0; 4]);
}

#[test]
fn byte_writes_to_the_selector_select_nothing() {
    let mut dev = fw_cfg_with_ram();
    dev.add_cpu_count(3).unwrap();
    let mut g = Guest::new(dev);
    g.select(keys::SIGNATURE);
    // The two halves of key 0x0005, byte by byte: data writes, ignored (QEMU does the same).
    g.dev.write(0x510, 0, &[0x05]);
    g.dev.write(0x510, 1, &[0x00]);
    assert_eq!(g.read_data(4), b"QEMU");
    // Odd widths and places are ignored and read all ones.
    g.dev.write(0x510, 0, &[5, 0, 0, 0]);
    g.dev.write(0x510, 2, &[5, 0]);
    let mut d = [0u8; 2];
    g.dev.read(0x510, 0, &mut d);
    assert_eq!(d, [0xff; 2]);
    let mut d = [0u8; 1];
    g.dev.read(0x510, 2, &mut d);
    assert_eq!(d, [0xff]);
    // The write channel bit is ignored when selecting.
    g.select(keys::NB_CPUS | keys::WRITE_CHANNEL);
    assert_eq!(g.read_data(2), [3, 0]);
}

#[test]
fn well_known_items_have_qemu_layouts() {
    let mut dev = fw_cfg_with_ram();
    dev.add_cpu_count(4).unwrap();
    dev.add_kernel(vec![0xaa; 10]).unwrap();
    dev.add_setup(vec![0xbb; 3]).unwrap();
    dev.add_initrd(vec![0xcc; 5]).unwrap();
    dev.add_cmdline("console=ttyS0").unwrap();
    dev.add_load_addresses(0x10_0000, 0x20_0000, 0x2_0000, 0x9_0000)
        .unwrap();
    let le32 = |d: &FwCfg, k| u32::from_le_bytes(d.item(k).unwrap().try_into().unwrap());
    assert_eq!(dev.item(keys::NB_CPUS), Some(&[4u8, 0][..]));
    assert_eq!(le32(&dev, keys::KERNEL_SIZE), 10);
    assert_eq!(dev.item(keys::KERNEL_DATA), Some(&[0xaa; 10][..]));
    assert_eq!(le32(&dev, keys::SETUP_SIZE), 3);
    assert_eq!(le32(&dev, keys::INITRD_SIZE), 5);
    assert_eq!(dev.item(keys::INITRD_DATA), Some(&[0xcc; 5][..]));
    assert_eq!(le32(&dev, keys::CMDLINE_SIZE), 14, "with the NUL");
    assert_eq!(dev.item(keys::CMDLINE_DATA), Some(&b"console=ttyS0\0"[..]));
    assert_eq!(le32(&dev, keys::KERNEL_ADDR), 0x10_0000);
    assert_eq!(le32(&dev, keys::INITRD_ADDR), 0x20_0000);
    assert_eq!(le32(&dev, keys::CMDLINE_ADDR), 0x2_0000);
    assert_eq!(le32(&dev, keys::SETUP_ADDR), 0x9_0000);
    assert_eq!(
        dev.add_kernel(vec![1]),
        Err(FwCfgError::DuplicateKey {
            key: keys::KERNEL_SIZE
        })
    );
    assert_eq!(dev.add_cmdline("a\0b"), Err(FwCfgError::NulInCmdline));
}

#[test]
fn e820_and_bootorder_files() {
    let mut dev = fw_cfg_with_ram();
    let entries = [
        E820Entry {
            addr: 0,
            len: 0xa_0000,
            kind: e820::RAM,
        },
        E820Entry {
            addr: 1 << 32,
            len: 1 << 30,
            kind: e820::RAM,
        },
        E820Entry {
            addr: 0xfec0_0000,
            len: 0x1000,
            kind: e820::RESERVED,
        },
    ];
    let key = dev.add_e820(&entries).unwrap();
    let raw = dev.item(key).unwrap();
    assert_eq!(raw.len(), 60);
    assert_eq!(&raw[20..28], &(1u64 << 32).to_le_bytes());
    assert_eq!(&raw[28..36], &(1u64 << 30).to_le_bytes());
    assert_eq!(&raw[56..60], &2u32.to_le_bytes());
    let key = dev
        .add_bootorder(&["/pci@i0cf8/pci-root@0/nvme@1/namespace@1,0", "HALT"])
        .unwrap();
    assert_eq!(
        dev.item(key).unwrap(),
        b"/pci@i0cf8/pci-root@0/nvme@1/namespace@1,0\nHALT\0"
    );
}

#[test]
fn directory_is_sorted_by_name_and_keys_stay_put() {
    let mut dev = fw_cfg_with_ram();
    let names = [
        "opt/z",
        "etc/e820",
        "bootorder",
        "etc/acpi/tables",
        "etc/acpi/rsdp",
    ];
    let keys: Vec<u16> = names
        .iter()
        .enumerate()
        .map(|(i, n)| dev.add_file(n, vec![i as u8; i + 1]).unwrap())
        .collect();
    assert_eq!(keys, [0x20, 0x21, 0x22, 0x23, 0x24]);
    let mut g = Guest::new(dev);
    let dir = g.directory();
    let listed: Vec<&str> = dir.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        listed,
        [
            "bootorder",
            "etc/acpi/rsdp",
            "etc/acpi/tables",
            "etc/e820",
            "opt/z"
        ]
    );
    for (name, key, size) in &dir {
        let i = names.iter().position(|n| n == name).unwrap();
        assert_eq!((*key, *size as usize), (keys[i], i + 1), "{name}");
        assert_eq!(g.read_item_pio(*key, i + 1), vec![i as u8; i + 1]);
    }
}

#[test]
fn file_and_key_errors() {
    let mut dev = fw_cfg_with_ram();
    let long = "x".repeat(FILE_NAME_MAX);
    assert!(dev.add_file(&long, vec![]).is_ok());
    let too_long = "x".repeat(FILE_NAME_MAX + 1);
    for bad in ["", too_long.as_str(), "a\0b"] {
        assert!(matches!(
            dev.add_file(bad, vec![]),
            Err(FwCfgError::InvalidFileName { .. })
        ));
    }
    assert_eq!(
        dev.add_file(&long, vec![]),
        Err(FwCfgError::DuplicateFile { name: long.clone() })
    );
    for key in [
        keys::SIGNATURE,
        keys::ID,
        keys::FILE_DIR,
        0x20,
        0x3fff,
        0x4005,
    ] {
        assert_eq!(
            dev.add_bytes(key, vec![1]),
            Err(FwCfgError::ReservedKey { key })
        );
    }
    dev.add_bytes(0x8001, vec![1]).unwrap();
    assert_eq!(
        dev.add_bytes(0x8001, vec![1]),
        Err(FwCfgError::DuplicateKey { key: 0x8001 })
    );
    // Every error message says what to do or what the limit is.
    assert!(FwCfgError::TooManyFiles.to_string().contains("0x3fff"));
}

#[test]
fn file_keys_run_out_at_0x3fff() {
    let mut dev = fw_cfg_with_ram();
    for i in 0..(0x4000 - 0x20) {
        dev.add_file(&format!("f{i}"), Vec::new()).unwrap();
    }
    assert_eq!(
        dev.add_file("one-more", Vec::new()),
        Err(FwCfgError::TooManyFiles)
    );
}

#[test]
fn dma_read_with_select_like_ovmf() {
    let mut dev = fw_cfg_with_ram();
    let key = dev.add_file("etc/x", (0..=255).collect()).unwrap();
    let mut g = Guest::new(dev);
    let buf = RAM_START + 0x2000;
    // Select and read 16 bytes, then read 300 more: 240 bytes of data, then zeros.
    assert_eq!(
        g.dma(dma::SELECT | dma::READ | u32::from(key) << 16, 16, buf),
        0
    );
    assert_eq!(g.mem_bytes(buf, 16), (0..16).collect::<Vec<u8>>());
    assert_eq!(g.dma(dma::READ, 300, buf), 0);
    let got = g.mem_bytes(buf, 300);
    assert_eq!(&got[..240], &(16..=255).collect::<Vec<u8>>()[..]);
    assert!(got[240..].iter().all(|&b| b == 0));
    // The port interface continues where DMA left off: at the end.
    assert_eq!(g.read_data(1), [0]);
}

#[test]
fn dma_skip_then_read_and_the_address_register_rewinds() {
    let mut dev = fw_cfg_with_ram();
    dev.add_bytes(keys::UUID, (0..16).collect()).unwrap();
    let mut g = Guest::new(dev);
    let buf = RAM_START + 0x3000;
    let sel = u32::from(keys::UUID) << 16 | dma::SELECT;
    assert_eq!(g.dma(sel | dma::SKIP, 5, 0), 0);
    assert_eq!(g.dma(dma::READ, 3, buf), 0);
    assert_eq!(g.mem_bytes(buf, 3), [5, 6, 7]);
    // A skip past the end stops at the end.
    assert_eq!(g.dma(dma::SKIP, 1000, 0), 0);
    assert_eq!(g.read_data(1), [0]);
    // A low-half write alone reuses no stale high half: the register was cleared.
    g.write_descriptor(RAM_START, sel | dma::READ, 2, buf);
    g.dev
        .write(0x510, 4, &((RAM_START >> 32) as u32 | 0x10).to_be_bytes());
    g.dev.write(0x510, 8, &(RAM_START as u32).to_be_bytes());
    // High half 0x10 << 32 points outside RAM: nothing happened at RAM_START's descriptor.
    assert_eq!(g.control_at(RAM_START), sel | dma::READ);
    g.dev.write(0x510, 8, &(RAM_START as u32).to_be_bytes());
    assert_eq!(g.control_at(RAM_START), 0);
    assert_eq!(g.mem_bytes(buf, 2), [0, 1]);
}

#[test]
fn dma_without_operation_or_with_write_bits() {
    let mut dev = fw_cfg_with_ram();
    dev.add_bytes(keys::UUID, vec![9; 16]).unwrap();
    let mut g = Guest::new(dev);
    let sel = u32::from(keys::UUID) << 16 | dma::SELECT;
    // Select only: control 0, nothing moves.
    assert_eq!(g.dma(sel, 100, RAM_START + 0x100), 0);
    // WRITE to a read-only item: ERROR, nothing read or written.
    g.fill(RAM_START + 0x100, 16, 0x55);
    assert_eq!(g.dma(sel | dma::WRITE, 16, RAM_START + 0x100), dma::ERROR);
    assert_eq!(g.dev.item(keys::UUID), Some(&[9; 16][..]));
    // READ wins over WRITE and SKIP, as in QEMU.
    assert_eq!(
        g.dma(
            sel | dma::READ | dma::WRITE | dma::SKIP,
            2,
            RAM_START + 0x100
        ),
        0
    );
    assert_eq!(g.mem_bytes(RAM_START + 0x100, 3), [9, 9, 0x55]);
    // A zero-length write is no error.
    assert_eq!(g.dma(dma::WRITE, 0, 0), 0);
}

#[test]
fn dma_addresses_outside_ram_set_error_and_touch_nothing() {
    let mut dev = fw_cfg_with_ram();
    dev.add_bytes(keys::UUID, vec![7; 16]).unwrap();
    let mut g = Guest::new(dev);
    let sel = u32::from(keys::UUID) << 16 | dma::SELECT | dma::READ;
    // Buffers below RAM, straddling its end, past it, wrapping around 2^64, and a length that
    // covers all of RAM and more.
    let cases = [
        (RAM_START - 1, 2),
        (RAM_END - 4, 8),
        (RAM_END, 1),
        (u64::MAX - 2, 16),
        (RAM_START, u32::MAX),
    ];
    for (addr, len) in cases {
        g.fill(RAM_START, (RAM_END - RAM_START) as usize, 0x55);
        let desc = RAM_START + 0x800;
        g.write_descriptor(desc, sel, len, addr);
        g.kick(desc);
        assert_eq!(g.control_at(desc), dma::ERROR, "{addr:#x}+{len:#x}");
        let ram = g.mem_bytes(RAM_START, (RAM_END - RAM_START) as usize);
        let changed = ram
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b != 0x55 && !(0x800..0x810).contains(&i))
            .count();
        assert_eq!(changed, 0, "{addr:#x}+{len:#x} wrote guest memory");
    }
    // The failed reads moved no offset.
    assert_eq!(g.dma(sel, 1, RAM_START), 0);
    assert_eq!(g.mem_bytes(RAM_START, 1), [7]);
}

#[test]
fn dma_descriptors_outside_ram_do_not_panic() {
    let mut g = Guest::new(fw_cfg_with_ram());
    for desc in [
        0,
        RAM_START - 8,
        RAM_END - 8,
        RAM_END,
        u64::MAX - 7,
        u64::MAX,
    ] {
        g.kick(desc);
    }
    // A descriptor straddling RAM's start: not read; its control word inside RAM is left.
    g.fill(RAM_START, 16, 0x55);
    g.kick(RAM_START - 4);
    assert_eq!(g.mem_bytes(RAM_START, 4), [0x55; 4]);
    // A descriptor whose first bytes are RAM but not all: the ERROR report lands where it can.
    g.write_descriptor(RAM_END - 16, dma::READ, 1, RAM_START);
    g.kick(RAM_END - 12);
    assert_eq!(g.mem_bytes(RAM_END - 12, 4), dma::ERROR.to_be_bytes());
}

#[test]
fn a_64_bit_address_write_runs_the_transfer() {
    let mut dev = fw_cfg_with_ram();
    dev.add_bytes(keys::UUID, vec![4; 4]).unwrap();
    let mut g = Guest::new(dev);
    let desc = RAM_START + 0x40;
    g.write_descriptor(
        desc,
        u32::from(keys::UUID) << 16 | dma::SELECT | dma::READ,
        4,
        RAM_START + 0x80,
    );
    g.dev.write(0x510, 4, &desc.to_be_bytes());
    assert_eq!(g.control_at(desc), 0);
    assert_eq!(g.mem_bytes(RAM_START + 0x80, 4), [4; 4]);
}

#[test]
fn works_over_guest_memory_with_a_hole() {
    // Two regions with a hole between them: a buffer across the hole is refused.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x1000),
        (GuestAddress(0x2000), 0x1000),
    ])
    .unwrap();
    let mut dev = FwCfg::new(mem);
    dev.add_bytes(keys::UUID, vec![1; 16]).unwrap();
    let mut g = Guest::new(dev);
    let sel = u32::from(keys::UUID) << 16 | dma::SELECT | dma::READ;
    assert_eq!(g.dma_at(0x2000, sel, 16, 0xff8), dma::ERROR);
    assert_eq!(g.dma_at(0x2000, sel, 16, 0x2100), 0);
    // Adjacent regions: a buffer across the seam is fine.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x1000),
        (GuestAddress(0x1000), 0x1000),
    ])
    .unwrap();
    let mut dev = FwCfg::new(mem);
    dev.add_bytes(keys::UUID, vec![1; 16]).unwrap();
    let mut g = Guest::new(dev);
    assert_eq!(g.dma_at(0x1800, sel, 16, 0xff8), 0);
    let mut got = [0u8; 16];
    g.dev_mem()
        .read_slice(&mut got, GuestAddress(0xff8))
        .unwrap();
    assert_eq!(got, [1; 16]);
}

#[test]
fn reset_selects_the_signature_and_clears_the_dma_address() {
    let mut dev = fw_cfg_with_ram();
    dev.add_cpu_count(2).unwrap();
    let mut g = Guest::new(dev);
    g.select(keys::NB_CPUS);
    g.write_descriptor(RAM_START, dma::READ, 4, RAM_START + 0x100);
    g.dev.write(0x510, 4, &1u32.to_be_bytes());
    g.dev.reset();
    assert_eq!(g.read_data(4), b"QEMU");
    // The high half written before the reset is gone: the descriptor below 4 GiB runs.
    g.dev.write(0x510, 8, &(RAM_START as u32).to_be_bytes());
    assert_eq!(g.control_at(RAM_START), 0);
    assert_eq!(g.dev.item(keys::NB_CPUS), Some(&[2u8, 0][..]), "items stay");
}
