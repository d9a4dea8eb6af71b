//! Tests of the firmware devices, driven through their bus interface the way OVMF drives them.

mod flash;
mod fw_cfg;
mod table_loader;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::BusDevice;
use crate::firmware::{dma, keys, FwCfg};

/// Guest RAM of the fw_cfg tests: one MiB at 1 MiB, so addresses below and above it are holes.
pub(super) const RAM_START: u64 = 0x10_0000;
/// End of that RAM (exclusive).
pub(super) const RAM_END: u64 = 0x20_0000;
/// Where [`Guest::dma`] puts its descriptors.
const DESCRIPTOR: u64 = RAM_START + 0xf_f000;

/// A fw_cfg device over [`RAM_START`]..[`RAM_END`].
pub(super) fn fw_cfg_with_ram() -> FwCfg {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(
        GuestAddress(RAM_START),
        (RAM_END - RAM_START) as usize,
    )])
    .unwrap();
    FwCfg::new(mem)
}

/// What `QemuFwCfgLib` does, through the device's bus interface (offsets from 0x510).
pub(super) struct Guest {
    pub(super) dev: FwCfg,
}

impl Guest {
    pub(super) fn new(dev: FwCfg) -> Self {
        Guest { dev }
    }

    pub(super) fn dev_mem(&self) -> &GuestMemoryMmap {
        self.dev.memory()
    }

    /// `IoWrite16(0x510, key)`.
    pub(super) fn select(&mut self, key: u16) {
        self.dev.write(0x510, 0, &key.to_le_bytes());
    }

    /// `len` times `IoRead8(0x511)`.
    pub(super) fn read_data(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                let mut d = [0u8];
                self.dev.read(0x510, 1, &mut d);
                d[0]
            })
            .collect()
    }

    pub(super) fn read_item_pio(&mut self, key: u16, len: usize) -> Vec<u8> {
        self.select(key);
        self.read_data(len)
    }

    /// The directory as (name, key, size), read through the ports.
    pub(super) fn directory(&mut self) -> Vec<(String, u16, u32)> {
        self.select(keys::FILE_DIR);
        let count = u32::from_be_bytes(self.read_data(4).try_into().unwrap());
        (0..count)
            .map(|_| {
                let e = self.read_data(64);
                let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
                let key = u16::from_be_bytes([e[4], e[5]]);
                assert_eq!(&e[6..8], &[0, 0], "reserved");
                let name = e[8..].split(|&b| b == 0).next().unwrap();
                (String::from_utf8(name.to_vec()).unwrap(), key, size)
            })
            .collect()
    }

    /// The file named `name`, read through DMA as OVMF does.
    pub(super) fn read_file_dma(&mut self, name: &str) -> Option<Vec<u8>> {
        let (_, key, size) = self.directory().into_iter().find(|(n, _, _)| n == name)?;
        let buf = RAM_START;
        let mut out = Vec::new();
        let mut first = true;
        // In pieces no larger than the test RAM, as a firmware bounce buffer would.
        while out.len() < size as usize {
            let n = (size as usize - out.len()).min(0x8_0000);
            let sel = if first {
                u32::from(key) << 16 | dma::SELECT
            } else {
                0
            };
            first = false;
            assert_eq!(self.dma(sel | dma::READ, n as u32, buf), 0, "DMA of {name}");
            out.extend(self.mem_bytes(buf, n));
        }
        Some(out)
    }

    pub(super) fn write_descriptor(&self, at: u64, control: u32, len: u32, addr: u64) {
        let mut d = Vec::new();
        d.extend_from_slice(&control.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&addr.to_be_bytes());
        self.dev_mem().write_slice(&d, GuestAddress(at)).unwrap();
    }

    /// Writes the descriptor address, high half then low half, big-endian.
    pub(super) fn kick(&mut self, at: u64) {
        self.dev.write(0x510, 4, &((at >> 32) as u32).to_be_bytes());
        self.dev.write(0x510, 8, &(at as u32).to_be_bytes());
    }

    pub(super) fn control_at(&self, at: u64) -> u32 {
        let mut c = [0u8; 4];
        self.dev_mem().read_slice(&mut c, GuestAddress(at)).unwrap();
        u32::from_be_bytes(c)
    }

    /// One transfer with a descriptor at `desc`; returns the control word written back.
    pub(super) fn dma_at(&mut self, desc: u64, control: u32, len: u32, addr: u64) -> u32 {
        self.write_descriptor(desc, control, len, addr);
        self.kick(desc);
        self.control_at(desc)
    }

    pub(super) fn dma(&mut self, control: u32, len: u32, addr: u64) -> u32 {
        self.dma_at(DESCRIPTOR, control, len, addr)
    }

    pub(super) fn mem_bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.dev_mem().read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    pub(super) fn fill(&self, at: u64, len: usize, byte: u8) {
        self.dev_mem()
            .write_slice(&vec![byte; len], GuestAddress(at))
            .unwrap();
    }
}
