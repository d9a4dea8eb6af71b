//! QEMU's firmware configuration interface (fw_cfg) on x86 port I/O, as OVMF and SeaBIOS read
//! it: named and numbered items the VMM fills before boot, read by the guest through a selector
//! and a data register or through DMA.
//!
//! Mapping: one port range of [`FW_CFG_PORT_LEN`] (12) bytes at [`FW_CFG_PORT_BASE`] (0x510):
//!
//! | port  | offset | access | what |
//! |-------|--------|--------|------|
//! | 0x510 | 0 | 16-bit write | selector: selects the item with that key and rewinds its offset |
//! | 0x510, 0x511 | 0, 1 | 8-bit read | data: the selected item's next byte; past its end 0 |
//! | 0x514 | 4 | 32-bit write | DMA descriptor address, high half (big-endian) |
//! | 0x518 | 8 | 32-bit write | DMA descriptor address, low half (big-endian); runs the transfer |
//! | 0x514–0x51B | 4–11 | read | the bytes of `"QEMU CFG"` (the DMA interface's signature) |
//!
//! As in QEMU, only a 2-byte write at offset 0 selects: an 8-bit write to 0x510 or 0x511 is a
//! data write, which fw_cfg ignores (QEMU dropped write support in 2.4), so the two halves of a
//! key written byte by byte select nothing. Other reads return all ones, other writes are
//! dropped (logged once). A 64-bit write of the whole address at offset 4 is accepted too (the
//! MMIO form QEMU has; no x86 port access is that wide).
//!
//! Items: key 0x0000 reads `"QEMU"`, key 0x0001 the feature bits (1: traditional interface,
//! 2: DMA), key 0x0019 the file directory, and files start at key 0x0020. Keys nobody added read
//! as zeros (OVMF treats a missing CPU count of 0xFFFF as 65,535 CPUs; zero means "not given").
//! Bit 14 of a key (QEMU's write channel) is ignored when selecting.
//!
//! File directory: a big-endian `u32` count, then per file `{be32 size, be16 key, be16 0,
//! name[56]}`, sorted by name (the order QEMU uses for machines without a legacy order). File
//! keys are handed out from 0x0020 in the order files are added and never change, so a key
//! [`FwCfg::add_file`] returned stays valid; firmware finds files by name through the
//! directory. (QEMU renumbers its keys into name order; nothing relies on that.)
//!
//! DMA descriptor, 16 bytes in guest memory at the written address: `{be32 control, be32
//! length, be64 address}`. Control bits: [`dma::SELECT`] (select the key in bits 16–31 first),
//! then one of [`dma::READ`] (copy `length` bytes of the item from its offset to `address`,
//! zeros past its end), [`dma::WRITE`] (refused: no item is writable) or [`dma::SKIP`] (advance
//! the offset). The transfer completes before the port write returns; the device then writes
//! the control word back as 0, or as [`dma::ERROR`] on failure. Every guest address is
//! checked before any byte moves: a descriptor or buffer that is not entirely guest RAM, or
//! whose end overflows, fails with [`dma::ERROR`] without touching memory (QEMU would copy the
//! part that fits; firmware never relies on that).

use std::collections::BTreeMap;

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use crate::bus::BusDevice;

/// The usual base port of the range (QEMU's x86 machines).
pub const FW_CFG_PORT_BASE: u16 = 0x510;
/// Length of the port range: selector/data at 0–1, DMA address at 4–11.
pub const FW_CFG_PORT_LEN: u64 = 0x0c;

/// Offset of the selector (16-bit write), where an 8-bit read also reads data.
const SELECTOR: u64 = 0;
/// Offset of the data register (8-bit read).
const DATA: u64 = 1;
/// Offset of the DMA address's high half.
const DMA_HIGH: u64 = 4;
/// Offset of the DMA address's low half.
const DMA_LOW: u64 = 8;
/// Length of the DMA address register pair.
const DMA_REG_LEN: u64 = 8;
/// What reads of the DMA registers return.
const DMA_SIGNATURE: &[u8; 8] = b"QEMU CFG";

/// Selector keys of the well-known items (QEMU `fw_cfg_keys.h`, edk2 `QemuFwCfgLib.h`).
pub mod keys {
    /// `"QEMU"`: firmware checks it to find the device.
    pub const SIGNATURE: u16 = 0x00;
    /// Feature bits, little-endian `u32`: 1 the traditional interface, 2 DMA.
    pub const ID: u16 = 0x01;
    /// Machine UUID (16 bytes).
    pub const UUID: u16 = 0x02;
    /// RAM size (`u64`; not read by OVMF).
    pub const RAM_SIZE: u16 = 0x03;
    /// Number of boot CPUs, little-endian `u16` (OVMF starts that many).
    pub const NB_CPUS: u16 = 0x05;
    /// Kernel load address (`u32`; SeaBIOS only).
    pub const KERNEL_ADDR: u16 = 0x07;
    /// Kernel size, little-endian `u32`.
    pub const KERNEL_SIZE: u16 = 0x08;
    /// Initrd load address (`u32`; SeaBIOS only).
    pub const INITRD_ADDR: u16 = 0x0a;
    /// Initrd size, little-endian `u32`.
    pub const INITRD_SIZE: u16 = 0x0b;
    /// Maximum CPU count (`u16`; not read by OVMF).
    pub const MAX_CPUS: u16 = 0x0f;
    /// Kernel bytes (after the setup part, if that is given separately).
    pub const KERNEL_DATA: u16 = 0x11;
    /// Initrd bytes.
    pub const INITRD_DATA: u16 = 0x12;
    /// Command-line load address (`u32`; SeaBIOS only).
    pub const CMDLINE_ADDR: u16 = 0x13;
    /// Command-line size including its NUL, little-endian `u32`.
    pub const CMDLINE_SIZE: u16 = 0x14;
    /// Command line, NUL-terminated.
    pub const CMDLINE_DATA: u16 = 0x15;
    /// Setup (real-mode) part load address (`u32`; SeaBIOS only).
    pub const SETUP_ADDR: u16 = 0x16;
    /// Setup part size, little-endian `u32` (0 or absent: the kernel item holds the whole image).
    pub const SETUP_SIZE: u16 = 0x17;
    /// Setup part bytes.
    pub const SETUP_DATA: u16 = 0x18;
    /// The file directory.
    pub const FILE_DIR: u16 = 0x19;
    /// The first file's key.
    pub const FILE_FIRST: u16 = 0x20;
    /// Bit 14: QEMU's write channel, ignored when selecting.
    pub const WRITE_CHANNEL: u16 = 0x4000;
    /// Bit 15: architecture-specific items.
    pub const ARCH_LOCAL: u16 = 0x8000;
}

/// Control bits of a DMA descriptor.
pub mod dma {
    /// Set by the device when the transfer failed.
    pub const ERROR: u32 = 0x01;
    /// Copy item bytes to guest memory.
    pub const READ: u32 = 0x02;
    /// Advance the item offset without copying.
    pub const SKIP: u32 = 0x04;
    /// Select the key in bits 16–31 before the transfer.
    pub const SELECT: u32 = 0x08;
    /// Copy guest memory into a writable item (none is; always fails).
    pub const WRITE: u32 = 0x10;
}

/// Feature bit of key 0x0001: the selector/data interface.
const FEATURE_TRADITIONAL: u32 = 1;
/// Feature bit of key 0x0001: DMA.
const FEATURE_DMA: u32 = 2;
/// Longest file name in bytes (the directory holds 56 with the NUL).
pub const FILE_NAME_MAX: usize = 55;
/// Length of a directory entry.
const DIR_ENTRY_LEN: usize = 64;
/// Length of a DMA descriptor.
const DESCRIPTOR_LEN: usize = 16;
/// Zeros are written to guest memory this many bytes at a time.
const ZERO_CHUNK: usize = 4096;
/// The highest key a file can get (keys with the write-channel bit are not items).
const FILE_LAST: u16 = keys::WRITE_CHANNEL - 1;

/// Name of the e820 file.
pub const E820_FILE: &str = "etc/e820";
/// Name of the boot order file.
pub const BOOTORDER_FILE: &str = "bootorder";

/// e820 entry types.
pub mod e820 {
    /// Usable RAM.
    pub const RAM: u32 = 1;
    /// Reserved.
    pub const RESERVED: u32 = 2;
    /// ACPI reclaimable.
    pub const ACPI: u32 = 3;
    /// ACPI NVS.
    pub const NVS: u32 = 4;
}

/// One entry of `etc/e820`: 20 bytes, `{le64 addr, le64 len, le32 type}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Type ([`e820`]).
    pub kind: u32,
}

/// Errors adding items to [`FwCfg`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// The key is the device's own (signature, ID, directory), a file key, or has the
    /// write-channel bit.
    #[error(
        "fw_cfg key {key:#06x} cannot be added with add_bytes: keys 0x0000, 0x0001 and 0x0019 are \
         the device's own, 0x0020–0x3fff are files (use add_file) and bit 14 is not part of a key"
    )]
    ReservedKey {
        /// The key.
        key: u16,
    },
    /// The key already has an item.
    #[error("fw_cfg key {key:#06x} already has an item; add each item once")]
    DuplicateKey {
        /// The key.
        key: u16,
    },
    /// The file name is empty, longer than 55 bytes or holds a NUL.
    #[error(
        "fw_cfg file name {name:?} is invalid: it must be 1 to 55 bytes without NUL (the \
         directory holds 56 bytes with the terminating NUL)"
    )]
    InvalidFileName {
        /// The name.
        name: String,
    },
    /// A file of that name exists.
    #[error("fw_cfg already has a file named {name:?}; add each file once")]
    DuplicateFile {
        /// The name.
        name: String,
    },
    /// Every file key (0x0020–0x3fff) is taken.
    #[error("fw_cfg has no free file key left (0x0020–0x3fff are all taken)")]
    TooManyFiles,
    /// The item is larger than the directory's 32-bit size field.
    #[error("fw_cfg item {what} has {len} bytes; items are limited to 4 GiB - 1")]
    TooLarge {
        /// The key or file name.
        what: String,
        /// Its length.
        len: usize,
    },
    /// A command line holds a NUL byte.
    #[error("the kernel command line holds a NUL byte; remove it")]
    NulInCmdline,
}

/// A file in the directory.
#[derive(Debug, Clone)]
struct FileEntry {
    name: String,
    key: u16,
    size: u32,
}

/// What a DMA descriptor asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DmaOp {
    Read,
    Write,
    Skip,
    None,
}

/// The fw_cfg device. `M` is the guest memory DMA reaches.
pub struct FwCfg<M: GuestMemory = GuestMemoryMmap> {
    mem: M,
    items: BTreeMap<u16, Vec<u8>>,
    /// Sorted by name.
    files: Vec<FileEntry>,
    next_file_key: u16,
    selected: u16,
    offset: usize,
    dma_addr: u64,
    warned_access: bool,
}

impl<M: GuestMemory> std::fmt::Debug for FwCfg<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<(&str, u16, u32)> = self
            .files
            .iter()
            .map(|e| (e.name.as_str(), e.key, e.size))
            .collect();
        f.debug_struct("FwCfg")
            .field("keys", &self.items.keys().collect::<Vec<_>>())
            .field("files", &files)
            .field("selected", &self.selected)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

fn check_len(what: impl FnOnce() -> String, len: usize) -> Result<u32, FwCfgError> {
    u32::try_from(len)
        .ok()
        .filter(|&l| l != u32::MAX)
        .ok_or_else(|| FwCfgError::TooLarge { what: what(), len })
}

impl<M: GuestMemory> FwCfg<M> {
    /// A device with only the signature, the feature bits and an empty directory; DMA reaches
    /// `mem`.
    pub fn new(mem: M) -> Self {
        let mut items = BTreeMap::new();
        items.insert(keys::SIGNATURE, b"QEMU".to_vec());
        items.insert(
            keys::ID,
            (FEATURE_TRADITIONAL | FEATURE_DMA).to_le_bytes().to_vec(),
        );
        items.insert(keys::FILE_DIR, 0u32.to_be_bytes().to_vec());
        FwCfg {
            mem,
            items,
            files: Vec::new(),
            next_file_key: keys::FILE_FIRST,
            selected: keys::SIGNATURE,
            offset: 0,
            dma_addr: 0,
            warned_access: false,
        }
    }

    /// Adds an item under a numbered key (the well-known keys below 0x0020, or an
    /// architecture-specific key with bit 15). Fails for the device's own keys, file keys, a
    /// key added before, or more than 4 GiB - 1 bytes.
    pub fn add_bytes(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let own = matches!(key, keys::SIGNATURE | keys::ID | keys::FILE_DIR);
        let file = (keys::FILE_FIRST..keys::WRITE_CHANNEL).contains(&key);
        if own || file || key & keys::WRITE_CHANNEL != 0 {
            return Err(FwCfgError::ReservedKey { key });
        }
        if self.items.contains_key(&key) {
            return Err(FwCfgError::DuplicateKey { key });
        }
        check_len(|| format!("{key:#06x}"), data.len())?;
        self.items.insert(key, data);
        Ok(())
    }

    /// Adds a little-endian `u16` item.
    pub fn add_u16(&mut self, key: u16, value: u16) -> Result<(), FwCfgError> {
        self.add_bytes(key, value.to_le_bytes().to_vec())
    }

    /// Adds a little-endian `u32` item.
    pub fn add_u32(&mut self, key: u16, value: u32) -> Result<(), FwCfgError> {
        self.add_bytes(key, value.to_le_bytes().to_vec())
    }

    /// Adds a little-endian `u64` item.
    pub fn add_u64(&mut self, key: u16, value: u64) -> Result<(), FwCfgError> {
        self.add_bytes(key, value.to_le_bytes().to_vec())
    }

    /// Adds a named file and returns its key. The name is 1 to [`FILE_NAME_MAX`] bytes without
    /// NUL and unique.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() > FILE_NAME_MAX || name.contains('\0') {
            return Err(FwCfgError::InvalidFileName {
                name: name.to_string(),
            });
        }
        let pos = match self
            .files
            .binary_search_by(|e| e.name.as_bytes().cmp(name.as_bytes()))
        {
            Ok(_) => {
                return Err(FwCfgError::DuplicateFile {
                    name: name.to_string(),
                })
            }
            Err(pos) => pos,
        };
        let size = check_len(|| name.to_string(), data.len())?;
        let key = self.next_file_key;
        if key > FILE_LAST {
            return Err(FwCfgError::TooManyFiles);
        }
        self.next_file_key += 1;
        self.files.insert(
            pos,
            FileEntry {
                name: name.to_string(),
                key,
                size,
            },
        );
        self.items.insert(key, data);
        self.insert_dir_entry(pos);
        Ok(key)
    }

    /// The key of the file named `name`.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        self.files.iter().find(|e| e.name == name).map(|e| e.key)
    }

    /// Sets the number of boot CPUs (key 0x0005, `u16`).
    pub fn add_cpu_count(&mut self, cpus: u16) -> Result<(), FwCfgError> {
        self.add_u16(keys::NB_CPUS, cpus)
    }

    /// Adds the kernel image for firmware to boot (keys 0x0008 size, 0x0011 data). OVMF
    /// prepends the setup item if there is one; a whole bzImage here with no setup item boots
    /// as well.
    pub fn add_kernel(&mut self, image: Vec<u8>) -> Result<(), FwCfgError> {
        self.add_sized(keys::KERNEL_SIZE, keys::KERNEL_DATA, image)
    }

    /// Adds the setup (real-mode) part of a split bzImage (keys 0x0017 size, 0x0018 data).
    pub fn add_setup(&mut self, setup: Vec<u8>) -> Result<(), FwCfgError> {
        self.add_sized(keys::SETUP_SIZE, keys::SETUP_DATA, setup)
    }

    /// Adds an initrd (keys 0x000b size, 0x0012 data).
    pub fn add_initrd(&mut self, initrd: Vec<u8>) -> Result<(), FwCfgError> {
        self.add_sized(keys::INITRD_SIZE, keys::INITRD_DATA, initrd)
    }

    /// Adds the kernel command line (keys 0x0014 size with the NUL, 0x0015 the NUL-terminated
    /// string).
    pub fn add_cmdline(&mut self, cmdline: &str) -> Result<(), FwCfgError> {
        if cmdline.contains('\0') {
            return Err(FwCfgError::NulInCmdline);
        }
        let mut data = cmdline.as_bytes().to_vec();
        data.push(0);
        self.add_sized(keys::CMDLINE_SIZE, keys::CMDLINE_DATA, data)
    }

    /// Adds the load addresses SeaBIOS's linuxboot uses (keys 0x0007, 0x000a, 0x0013, 0x0016;
    /// OVMF ignores them).
    pub fn add_load_addresses(
        &mut self,
        kernel: u32,
        initrd: u32,
        cmdline: u32,
        setup: u32,
    ) -> Result<(), FwCfgError> {
        self.add_u32(keys::KERNEL_ADDR, kernel)?;
        self.add_u32(keys::INITRD_ADDR, initrd)?;
        self.add_u32(keys::CMDLINE_ADDR, cmdline)?;
        self.add_u32(keys::SETUP_ADDR, setup)
    }

    fn add_sized(&mut self, size_key: u16, data_key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let len = check_len(|| format!("{data_key:#06x}"), data.len())?;
        for key in [size_key, data_key] {
            if self.items.contains_key(&key) {
                return Err(FwCfgError::DuplicateKey { key });
            }
        }
        self.add_u32(size_key, len)?;
        self.add_bytes(data_key, data)
    }

    /// Adds `etc/e820` from `entries`, in the order given (OVMF takes low RAM's end from the
    /// highest end of a RAM entry below 4 GiB).
    pub fn add_e820(&mut self, entries: &[E820Entry]) -> Result<u16, FwCfgError> {
        let mut data = Vec::with_capacity(entries.len() * 20);
        for e in entries {
            data.extend_from_slice(&e.addr.to_le_bytes());
            data.extend_from_slice(&e.len.to_le_bytes());
            data.extend_from_slice(&e.kind.to_le_bytes());
        }
        self.add_file(E820_FILE, data)
    }

    /// Adds `bootorder`: OpenFirmware device paths, one per line, NUL-terminated as QEMU writes
    /// it. With the file present OVMF connects only the devices listed.
    pub fn add_bootorder(&mut self, paths: &[&str]) -> Result<u16, FwCfgError> {
        let mut data = paths.join("\n").into_bytes();
        data.push(0);
        self.add_file(BOOTORDER_FILE, data)
    }

    /// Puts the registers in their power-on state (a guest reset that keeps the VM): key
    /// 0x0000 selected at offset 0, the DMA address cleared. Items stay.
    pub fn reset(&mut self) {
        self.select(keys::SIGNATURE);
        self.dma_addr = 0;
    }

    /// The guest memory DMA reaches.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The item under `key`, if any (the directory included).
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&key).map(Vec::as_slice)
    }

    /// Puts the directory entry of `self.files[pos]` at its place in the directory item and
    /// updates the count.
    fn insert_dir_entry(&mut self, pos: usize) {
        let e = &self.files[pos];
        let mut entry = [0u8; DIR_ENTRY_LEN];
        entry[0..4].copy_from_slice(&e.size.to_be_bytes());
        entry[4..6].copy_from_slice(&e.key.to_be_bytes());
        entry[8..8 + e.name.len()].copy_from_slice(e.name.as_bytes());
        let count = (self.files.len() as u32).to_be_bytes();
        let dir = self
            .items
            .entry(keys::FILE_DIR)
            .or_insert_with(|| vec![0; 4]);
        let at = 4 + pos * DIR_ENTRY_LEN;
        dir.splice(at..at, entry);
        dir[0..4].copy_from_slice(&count);
    }

    fn select(&mut self, key: u16) {
        self.selected = key & !keys::WRITE_CHANNEL;
        self.offset = 0;
    }

    fn selected_item(&self) -> &[u8] {
        self.items
            .get(&self.selected)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn read_data_byte(&mut self) -> u8 {
        let item = self.selected_item();
        match item.get(self.offset) {
            Some(&b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }

    /// Runs the DMA transfer whose descriptor is at the address written, then rewinds the
    /// address register.
    fn run_dma(&mut self) {
        let at = GuestAddress(std::mem::take(&mut self.dma_addr));
        let mut raw = [0u8; DESCRIPTOR_LEN];
        if self.mem.read_slice(&mut raw, at).is_err() {
            // Report it where the control word is RAM; a descriptor outside RAM cannot take
            // the report.
            if GuestMemory::check_range(&self.mem, at, 4, Permissions::Write) {
                let _ = self.mem.write_slice(&dma::ERROR.to_be_bytes(), at);
            }
            self.warn_once(format_args!(
                "DMA descriptor at {:#x} is not in guest RAM",
                at.0
            ));
            return;
        }
        let word = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let control = word(0);
        let length = word(4);
        let address = u64::from_be_bytes([
            raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
        ]);
        if control & dma::SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let op = if control & dma::READ != 0 {
            DmaOp::Read
        } else if control & dma::WRITE != 0 {
            DmaOp::Write
        } else if control & dma::SKIP != 0 {
            DmaOp::Skip
        } else {
            DmaOp::None
        };
        let status = match self.transfer(op, length, address) {
            Ok(()) => 0,
            Err(why) => {
                self.warn_once(format_args!(
                    "DMA {op:?} of {length:#x} bytes at {address:#x} failed: {why}"
                ));
                dma::ERROR
            }
        };
        // The control word is inside the descriptor, which was just read whole.
        let _ = self.mem.write_slice(&status.to_be_bytes(), at);
    }

    fn transfer(&mut self, op: DmaOp, length: u32, address: u64) -> Result<(), &'static str> {
        let length = length as usize;
        let remaining = self.selected_item().len().saturating_sub(self.offset);
        match op {
            DmaOp::None => Ok(()),
            DmaOp::Write if length == 0 => Ok(()),
            DmaOp::Write => Err("no item is writable"),
            DmaOp::Skip => {
                self.offset += length.min(remaining);
                Ok(())
            }
            DmaOp::Read => {
                let inside = address.checked_add(length as u64).is_some()
                    && GuestMemory::check_range(
                        &self.mem,
                        GuestAddress(address),
                        length,
                        Permissions::Write,
                    );
                if !inside {
                    return Err("the buffer is not entirely guest RAM");
                }
                let n = length.min(remaining);
                let start = self.offset;
                let item = self
                    .items
                    .get(&self.selected)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                // `offset` never passes the item's end; `get` keeps that from being a panic.
                let bytes = item.get(start..start + n).unwrap_or(&[]);
                self.mem
                    .write_slice(bytes, GuestAddress(address))
                    .map_err(|_| "guest memory write failed")?;
                self.offset += n;
                let zeros = [0u8; ZERO_CHUNK];
                let mut done = n;
                while done < length {
                    let chunk = (length - done).min(ZERO_CHUNK);
                    self.mem
                        .write_slice(&zeros[..chunk], GuestAddress(address + done as u64))
                        .map_err(|_| "guest memory write failed")?;
                    done += chunk;
                }
                Ok(())
            }
        }
    }

    fn warn_once(&mut self, what: std::fmt::Arguments<'_>) {
        if !std::mem::replace(&mut self.warned_access, true) {
            log::warn!("fw_cfg: {what} (further guest errors are not logged)");
        }
    }
}

impl<M: GuestMemory + Send> BusDevice for FwCfg<M> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (SELECTOR | DATA, 1) => data[0] = self.read_data_byte(),
            (o, len) if o >= DMA_HIGH && o.saturating_add(len as u64) <= DMA_HIGH + DMA_REG_LEN => {
                let start = (o - DMA_HIGH) as usize;
                data.copy_from_slice(&DMA_SIGNATURE[start..start + len]);
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data) {
            (SELECTOR, &[lo, hi]) => self.select(u16::from_le_bytes([lo, hi])),
            // Data writes: ignored, as in QEMU since 2.4.
            (SELECTOR | DATA, &[_]) => {}
            (DMA_HIGH, &[a, b, c, d]) => {
                self.dma_addr = u64::from(u32::from_be_bytes([a, b, c, d])) << 32;
            }
            (DMA_LOW, &[a, b, c, d]) => {
                self.dma_addr |= u64::from(u32::from_be_bytes([a, b, c, d]));
                self.run_dma();
            }
            (DMA_HIGH, &[a, b, c, d, e, f, g, h]) => {
                self.dma_addr = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
                self.run_dma();
            }
            _ => self.warn_once(format_args!(
                "ignoring a {}-byte write at offset {offset:#x}",
                data.len()
            )),
        }
    }
}
