//! `devices::firmware::FwCfg` against a reference model: a device with fuzz-chosen numbered
//! items and files over a small guest memory of one to three regions (with holes between them
//! or not), then port accesses of any size at any offset in and around its 12-byte range,
//! selector writes, data reads, and DMA transfers whose descriptor, control word, length and
//! buffer the input chooses — biased to land inside RAM, straddle a region's edge, fall in a
//! hole or wrap around 2^64.
//!
//! Invariants (besides no panic, no leak): the directory lists exactly the files added, sorted
//! by name, with their sizes and keys; a data read returns the model's next byte of the
//! selected item (zero past its end, or for a key without an item); other reads return all
//! ones except the DMA registers, which read `"QEMU CFG"`; after every operation guest memory
//! equals the model's: a DMA transfer changes only the bytes of its buffer (item bytes, then
//! zeros) and its control word (0, or ERROR), and only when the descriptor and the buffer lie
//! entirely in guest RAM; a descriptor not in RAM changes nothing but, where the control word
//! alone is RAM, that word to ERROR; no transfer happens but on a write of the low half (or of
//! all 64 bits), and the address register is clear after it.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use devices::bus::BusDevice;
use devices::firmware::{dma, keys, FwCfg, FW_CFG_PORT_LEN};
use devices::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::{access_len, data, one_in, value, MAX_OPS};
use vfiovm_fuzz::trace;

const BASE: u64 = 0x510;
const NAMES: [&str; 8] = [
    "etc/e820",
    "etc/acpi/tables",
    "etc/acpi/rsdp",
    "etc/table-loader",
    "bootorder",
    "opt/ovmf/X-PciMmio64Mb",
    "a",
    "etc/acpi/tables2",
];

/// The model of the device and of guest memory.
struct Model {
    items: BTreeMap<u16, Vec<u8>>,
    selected: u16,
    offset: usize,
    dma_addr: u64,
    /// (start, bytes) of each RAM region.
    ram: Vec<(u64, Vec<u8>)>,
}

impl Model {
    /// Whether `[addr, addr + len)` is entirely RAM (regions may be adjacent).
    fn in_ram(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let mut at = addr;
        while at < end {
            match self
                .ram
                .iter()
                .find(|(s, b)| at >= *s && at < s + b.len() as u64)
            {
                Some((s, b)) => at = s + b.len() as u64,
                None => return false,
            }
        }
        true
    }

    fn byte_mut(&mut self, addr: u64) -> &mut u8 {
        let (s, b) = self
            .ram
            .iter_mut()
            .find(|(s, b)| addr >= *s && addr < *s + b.len() as u64)
            .expect("checked in_ram");
        &mut b[(addr - *s) as usize]
    }

    fn write(&mut self, addr: u64, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            *self.byte_mut(addr + i as u64) = b;
        }
    }

    fn read(&mut self, addr: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| *self.byte_mut(addr + i as u64)).collect()
    }

    fn item(&self) -> &[u8] {
        self.items
            .get(&self.selected)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn select(&mut self, key: u16) {
        self.selected = key & !keys::WRITE_CHANNEL;
        self.offset = 0;
    }

    fn dma(&mut self) {
        let at = std::mem::take(&mut self.dma_addr);
        if !self.in_ram(at, 16) {
            if self.in_ram(at, 4) {
                self.write(at, &dma::ERROR.to_be_bytes());
            }
            return;
        }
        let d = self.read(at, 16);
        let control = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let length = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
        let address = u64::from_be_bytes(d[8..16].try_into().unwrap());
        if control & dma::SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let remaining = self.item().len() - self.offset;
        let status = if control & dma::READ != 0 {
            if self.in_ram(address, length as u64) {
                let n = length.min(remaining);
                let mut bytes = self.item()[self.offset..self.offset + n].to_vec();
                bytes.resize(length, 0);
                self.write(address, &bytes);
                self.offset += n;
                0
            } else {
                dma::ERROR
            }
        } else if control & dma::WRITE != 0 {
            if length == 0 {
                0
            } else {
                dma::ERROR
            }
        } else if control & dma::SKIP != 0 {
            self.offset += length.min(remaining);
            0
        } else {
            0
        };
        self.write(at, &status.to_be_bytes());
    }
}

/// An address biased to the interesting places of the memory layout.
fn address(u: &mut Unstructured, ram: &[(u64, Vec<u8>)]) -> Result<u64> {
    let (s, b) = &ram[u.int_in_range(0..=ram.len() - 1)?];
    let end = s + b.len() as u64;
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        1 => end.wrapping_sub(u.int_in_range(0..=24)?),
        2 => s.wrapping_sub(u.int_in_range(0..=24)?),
        3 => u64::MAX - u.int_in_range(0..=24)?,
        _ => s + u.int_in_range(0..=b.len() as u64 - 1)?,
    })
}

fn run(u: &mut Unstructured) -> Result<()> {
    // One to three regions of 1–8 KiB, adjacent or with holes.
    let mut regions = Vec::new();
    let mut at = 0x1000 * u64::from(u.int_in_range(0u8..=4)?);
    for _ in 0..u.int_in_range(1..=3)? {
        let len = 0x400 * u.int_in_range(1..=8)?;
        regions.push((GuestAddress(at), len));
        at += len as u64 + 0x400 * u64::from(u.int_in_range(0u8..=2)?);
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&regions).expect("valid regions");
    let mut dev = FwCfg::new(mem.clone());
    let mut model = Model {
        items: BTreeMap::new(),
        selected: keys::SIGNATURE,
        offset: 0,
        dma_addr: 0,
        ram: regions.iter().map(|&(a, l)| (a.0, vec![0u8; l])).collect(),
    };
    model.items.insert(keys::SIGNATURE, b"QEMU".to_vec());
    model.items.insert(keys::ID, 3u32.to_le_bytes().to_vec());
    // Numbered items and files.
    for _ in 0..u.int_in_range(0..=4)? {
        let key = if one_in(u, 2)? {
            u.int_in_range(2..=0x18)?
        } else {
            u.arbitrary()?
        };
        let len = u.int_in_range(0..=64)?;
        let bytes = data(u, len)?;
        if dev.add_bytes(key, bytes.clone()).is_ok() {
            assert!(!model.items.contains_key(&key), "key {key:#x} added twice");
            model.items.insert(key, bytes);
        }
    }
    let mut files: Vec<(String, u16, usize)> = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let name = NAMES[u.int_in_range(0..=NAMES.len() - 1)?];
        let len = u.int_in_range(0..=600)?;
        let bytes = data(u, len)?;
        match dev.add_file(name, bytes.clone()) {
            Ok(key) => {
                assert!(files.iter().all(|(n, k, _)| n != name && *k != key));
                assert!((keys::FILE_FIRST..keys::WRITE_CHANNEL).contains(&key));
                files.push((name.to_string(), key, len));
                model.items.insert(key, bytes);
            }
            Err(_) => assert!(files.iter().any(|(n, _, _)| n == name), "{name} refused"),
        }
    }
    files.sort();
    let mut dir = (files.len() as u32).to_be_bytes().to_vec();
    for (name, key, len) in &files {
        dir.extend_from_slice(&(*len as u32).to_be_bytes());
        dir.extend_from_slice(&key.to_be_bytes());
        dir.extend_from_slice(&[0, 0]);
        let mut n = [0u8; 56];
        n[..name.len()].copy_from_slice(name.as_bytes());
        dir.extend_from_slice(&n);
    }
    assert_eq!(dev.item(keys::FILE_DIR), Some(&dir[..]), "directory");
    model.items.insert(keys::FILE_DIR, dir);
    trace!("regions {regions:x?} items {:x?}", model.items.keys());

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=9)? {
            // Select a key that exists, mostly.
            0 | 1 => {
                let key = if one_in(u, 4)? {
                    u.arbitrary()?
                } else {
                    let keys: Vec<u16> = model.items.keys().copied().collect();
                    keys[u.int_in_range(0..=keys.len() - 1)?]
                };
                dev.write(BASE, 0, &key.to_le_bytes());
                model.select(key);
            }
            // Data reads.
            2 | 3 => {
                for _ in 0..u.int_in_range(1..=16)? {
                    let mut d = [0u8];
                    dev.read(BASE, u.int_in_range(0..=1)?, &mut d);
                    let want = model.item().get(model.offset).copied();
                    if want.is_some() {
                        model.offset += 1;
                    }
                    assert_eq!(d[0], want.unwrap_or(0), "data byte");
                }
            }
            // A DMA descriptor written into RAM, then kicked.
            4..=6 => {
                let at = address(u, &model.ram)?;
                if model.in_ram(at, 16) && !one_in(u, 8)? {
                    let mut control: u32 = match u.int_in_range(0u8..=4)? {
                        0 => u.arbitrary()?,
                        1 => dma::SKIP,
                        2 => dma::WRITE,
                        _ => dma::READ,
                    };
                    if one_in(u, 2)? {
                        let keys: Vec<u16> = model.items.keys().copied().collect();
                        let key = keys[u.int_in_range(0..=keys.len() - 1)?];
                        control = (control & 0xffff) | dma::SELECT | u32::from(key) << 16;
                    }
                    let len: u32 = if one_in(u, 8)? {
                        u.arbitrary()?
                    } else {
                        u.int_in_range(0..=700)?
                    };
                    let buf = address(u, &model.ram)?;
                    let mut d = control.to_be_bytes().to_vec();
                    d.extend_from_slice(&len.to_be_bytes());
                    d.extend_from_slice(&buf.to_be_bytes());
                    mem.write_slice(&d, GuestAddress(at)).expect("in RAM");
                    model.write(at, &d);
                    trace!("descriptor at {at:#x}: {control:#x} {len:#x} {buf:#x}");
                }
                if one_in(u, 4)? {
                    dev.write(BASE, 4, &at.to_be_bytes());
                    model.dma_addr = at;
                    model.dma();
                } else {
                    dev.write(BASE, 4, &((at >> 32) as u32).to_be_bytes());
                    model.dma_addr = (at >> 32) << 32;
                    dev.write(BASE, 8, &(at as u32).to_be_bytes());
                    model.dma_addr |= at & 0xffff_ffff;
                    model.dma();
                }
            }
            // Any port access in and around the range.
            _ => {
                let off = u.int_in_range(0..=FW_CFG_PORT_LEN + 2)?;
                let len = access_len(u)?;
                if one_in(u, 2)? {
                    let mut d = vec![0u8; len];
                    dev.read(BASE, off, &mut d);
                    if matches!((off, len), (0 | 1, 1)) {
                        let want = model.item().get(model.offset).copied();
                        if want.is_some() {
                            model.offset += 1;
                        }
                        assert_eq!(d[0], want.unwrap_or(0), "data byte");
                    } else if off >= 4 && off + len as u64 <= 12 {
                        assert_eq!(d, b"QEMU CFG"[off as usize - 4..off as usize - 4 + len]);
                    } else {
                        assert!(d.iter().all(|&b| b == 0xff), "read at {off}+{len}");
                    }
                } else {
                    let d = value(u, len)?;
                    dev.write(BASE, off, &d);
                    match (off, len) {
                        (0, 2) => model.select(u16::from_le_bytes([d[0], d[1]])),
                        (4, 4) => {
                            model.dma_addr =
                                u64::from(u32::from_be_bytes(d[..4].try_into().unwrap())) << 32
                        }
                        (8, 4) => {
                            model.dma_addr |=
                                u64::from(u32::from_be_bytes(d[..4].try_into().unwrap()));
                            model.dma();
                        }
                        (4, 8) => {
                            model.dma_addr = u64::from_be_bytes(d[..8].try_into().unwrap());
                            model.dma();
                        }
                        _ => {}
                    }
                }
            }
        }
        for (start, bytes) in &model.ram {
            let mut got = vec![0u8; bytes.len()];
            mem.read_slice(&mut got, GuestAddress(*start))
                .expect("region");
            assert!(
                got == *bytes,
                "guest memory at {start:#x} differs from the model"
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
