//! What UEFI firmware (Debian's OVMF) needs from the VMM besides the PC devices: fw_cfg to read
//! its configuration from, the ACPI tables in the form its table loader installs, and a CFI
//! flash to keep its variables in.
//!
//! | Device | Bus | Where | Range length |
//! |---|---|---|---|
//! | [`FwCfg`] | port I/O | [`FW_CFG_PORT_BASE`] (0x510) | [`FW_CFG_PORT_LEN`] (12: selector/data at 0–1, DMA address at 4–11) |
//! | [`CfiFlash`] | MMIO | the VARS base of the firmware build ([`OVMF_VARS_4M_BASE`], [`OVMF_VARS_2M_BASE`]) | [`CfiFlash::len`] |
//!
//! [`TableLoader`] and [`build_acpi`] are no device: they build the `etc/table-loader`,
//! `etc/acpi/tables` and `etc/acpi/rsdp` files that [`FwCfg::add_acpi`] puts into fw_cfg.
//! The register maps are at the top of each file and in `docs/devices.md`.
//!
//! Nothing a guest does to these devices can panic or reach memory outside guest RAM: DMA
//! addresses and lengths are checked against the guest memory before any byte moves, and
//! failures are reported to the guest (the DMA error bit, the flash status register) and logged
//! once.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use vfiovm_devices::firmware::{
//!     build_acpi, offsets, AcpiTable, CfiFlash, E820Entry, FwCfg, FW_CFG_PORT_BASE,
//!     FW_CFG_PORT_LEN, OVMF_VARS_2M_BASE, e820,
//! };
//! use vfiovm_devices::vm_memory::{GuestAddress, GuestMemoryMmap};
//! use vfiovm_devices::Bus;
//!
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let mut fw_cfg = FwCfg::new(mem);
//! fw_cfg.add_cpu_count(2).unwrap();
//! fw_cfg
//!     .add_e820(&[E820Entry { addr: 0, len: 1 << 20, kind: e820::RAM }])
//!     .unwrap();
//! # let header = |sig: &[u8; 4], len: usize| {
//! #     let mut t = vec![0u8; len];
//! #     t[..4].copy_from_slice(sig);
//! #     t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
//! #     t
//! # };
//! # let (rsdp, xsdt, dsdt) = {
//! #     let mut r = vec![0u8; 36];
//! #     r[..8].copy_from_slice(b"RSD PTR ");
//! #     r[15] = 2;
//! #     r[20..24].copy_from_slice(&36u32.to_le_bytes());
//! #     (r, header(b"XSDT", 44), header(b"DSDT", 36))
//! # };
//! // Each table with the offsets and widths of its pointers to other tables (by index).
//! let tables = [
//!     AcpiTable::new(xsdt).with_pointer(offsets::SDT_HEADER_LEN, 8, 1),
//!     AcpiTable::new(dsdt),
//! ];
//! let rsdp = AcpiTable::new(rsdp).with_pointer(offsets::RSDP_XSDT, 8, 0);
//! fw_cfg.add_acpi(build_acpi(rsdp, &tables).unwrap()).unwrap();
//!
//! let pio = Bus::new("pio");
//! pio.insert(Arc::new(Mutex::new(fw_cfg)), FW_CFG_PORT_BASE.into(), FW_CFG_PORT_LEN)
//!     .unwrap();
//!
//! let flash = CfiFlash::new(vec![0xff; 128 << 10]).unwrap(); // or CfiFlash::open(path, len)
//! let len = flash.len();
//! let mmio = Bus::new("mmio");
//! mmio.insert(Arc::new(Mutex::new(flash)), OVMF_VARS_2M_BASE, len).unwrap();
//! ```

pub mod flash;
pub mod fw_cfg;
pub mod table_loader;

#[cfg(test)]
mod tests;

pub use flash::{
    ArrayMapping, CfiFlash, FlashError, FLASH_BLOCK_SIZE, OVMF_VARS_2M_BASE, OVMF_VARS_2M_LEN,
    OVMF_VARS_4M_BASE, OVMF_VARS_4M_LEN,
};
pub use fw_cfg::{
    dma, e820, keys, E820Entry, FwCfg, FwCfgError, BOOTORDER_FILE, E820_FILE, FILE_NAME_MAX,
    FW_CFG_PORT_BASE, FW_CFG_PORT_LEN,
};
pub use table_loader::{
    build_acpi, offsets, AcpiFiles, AcpiPointer, AcpiTable, TableLoader, TableLoaderError, Zone,
    ACPI_RSDP_FILE, ACPI_TABLES_FILE, ENTRY_LEN, TABLE_LOADER_FILE,
};
