//! The guest physical memory map and I/O port map of a vfiovm x86_64 guest.
//!
//! The layout follows QEMU's Q35 where a firmware or an OS might care (ECAM at 0xB000_0000, the
//! 32-bit PCI window, the ACPI PM block at 0x600), so that UEFI firmware can be added later
//! without moving anything.
//!
//! ```text
//! 0x0000_0000 ─ 0x0009_FBFF   RAM: real-mode IVT, boot structures (GDT, start info, zero page,
//!                              page tables, command line)
//! 0x0009_FC00 ─ 0x0009_FFFF   RAM, reserved in the memory map: MP table (EBDA)
//! 0x000A_0000 ─ 0x000F_FFFF   RAM, reserved in the memory map: ACPI tables, RSDP at 0xE_0000
//! 0x0010_0000 ─ low_ram_end   RAM: kernel (1 MiB), initramfs at the top; low_ram_end is the RAM
//!                              size when it is below 0xB000_0000, else 0x8000_0000 (Q35's split)
//! 0xB000_0000 ─ 0xBFFF_FFFF   PCI ECAM (MMCONFIG), 256 buses
//! 0xC000_0000 ─ 0xFBFF_FFFF   32-bit PCI MMIO window
//! 0xFEC0_0000                 IOAPIC
//! 0xFEE0_0000                 LAPIC
//! 0x1_0000_0000 ─ …           RAM above 4 GiB (the rest)
//! 1 GiB-aligned after RAM ─ (1 << phys_bits)   64-bit PCI MMIO window
//! ```

/// Start of guest RAM.
pub const RAM_START: u64 = 0;
/// RAM below 4 GiB ends here at the latest; the 32-bit MMIO hole follows.
pub const LOW_RAM_MAX_END: u64 = 0xB000_0000;
/// Where RAM below 4 GiB ends when the guest has at least [`LOW_RAM_MAX_END`] of RAM: the 2 GiB
/// boundary, as QEMU's Q35 splits it, so that both RAM regions start and end on 1 GiB
/// boundaries (1 GiB huge pages back them without waste, and KVM can map them with 1 GiB pages).
pub const LOW_RAM_SPLIT: u64 = 0x8000_0000;
/// Start of RAM above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// End (exclusive) of the guest physical address space: x86-64 addresses at most 52 bits. RAM
/// never reaches past it.
pub const MAX_PHYS_ADDR: u64 = 1 << 52;

/// Global descriptor table used for the initial vCPU state.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty) used for the initial vCPU state.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Maximum number of PVH memory map entries that fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = (ZERO_PAGE_START - PVH_MEMMAP_START) as usize / 24;
/// Linux boot protocol zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, PDPT, then four page directories (4 GiB in 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Largest command line we accept, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Multiboot information structure (the PVH start info's page: a boot uses one or the other).
pub const MULTIBOOT_INFO_START: u64 = PVH_INFO_START;
/// Multiboot module list (one module: the initramfs), after the 88-byte structure and the
/// boot loader's name at +0x60.
pub const MULTIBOOT_MODS_START: u64 = MULTIBOOT_INFO_START + 0x80;
/// Multiboot memory map.
pub const MULTIBOOT_MMAP_START: u64 = PVH_MEMMAP_START;
/// Maximum number of multiboot memory map entries (24 bytes each) before the zero page.
pub const MULTIBOOT_MMAP_MAX_ENTRIES: usize = PVH_MEMMAP_MAX_ENTRIES;
/// The multiboot module's string (the initramfs argument), after the command line.
pub const MULTIBOOT_MOD_STRING_START: u64 = CMDLINE_START + CMDLINE_MAX_SIZE as u64;
/// Longest multiboot module string, without its NUL.
pub const MULTIBOOT_MOD_STRING_MAX: usize = 0xfff;
/// Extended BIOS data area: the MP table lives here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Legacy VGA hole + BIOS area (reserved in the memory map).
pub const BIOS_AREA_START: u64 = 0xa_0000;
/// ACPI tables: RSDP first (Linux also scans 0xE0000–0xFFFFF for it), then the other tables.
pub const ACPI_START: u64 = 0xe_0000;
/// End of the ACPI table area (exclusive).
pub const ACPI_END: u64 = 0x10_0000;
/// Where the kernel goes, and the start of "high memory" in linux-loader's sense.
pub const HIMEM_START: u64 = 0x10_0000;

/// PCI Express enhanced configuration access mechanism (ECAM) window.
pub const PCI_ECAM_START: u64 = 0xB000_0000;
/// ECAM size: 256 buses × 32 devices × 8 functions × 4 KiB (what Q35's PCIEXBAR decodes and a
/// firmware programs).
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// The last PCI bus the platform has: only bus 0 (no bridges). The MCFG and the host bridge's
/// `_CRS` describe buses 0 to this one. Announcing 256 buses would cost every Linux boot a
/// scan of the other 255 (`pcibios_fixup_peer_bridges` takes `pcibios_last_bus` from the
/// MCFG: 8160 type-1 reads, 16320 exits to the VMM, 0.85 s in the nested rig).
pub const PCI_LAST_BUS: u8 = 0;
/// 32-bit PCI MMIO window.
pub const PCI_MMIO32_START: u64 = 0xC000_0000;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 0xFC00_0000 - PCI_MMIO32_START;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// QEMU's `pc-testdev` MMIO memory, 64 KiB (`--pc-testdev`; kvm-unit-tests' `IORAM_BASE_PHYS`).
pub const PC_TESTDEV_IOMEM_START: u64 = 0xFF00_0000;
/// LAPIC MMIO base.
pub const APIC_START: u64 = 0xFEE0_0000;
/// Alignment of the 64-bit PCI MMIO window's start.
pub const PCI_MMIO64_ALIGN: u64 = 1 << 30;

/// Legacy I/O ports.
pub mod ports {
    /// ACPI PM block (Q35 ICH9 layout): PM1a event block (4 bytes).
    pub const PM1A_EVT: u16 = 0x600;
    /// PM1a control block (2 bytes).
    pub const PM1A_CNT: u16 = 0x604;
    /// ACPI PM timer (4 bytes, 3.579545 MHz, 24 bits).
    pub const PM_TMR: u16 = 0x608;
    /// GPE0 block (16 bytes: 8 status, 8 enable).
    pub const GPE0_BLK: u16 = 0x620;
    /// Length of GPE0 block.
    pub const GPE0_BLK_LEN: u8 = 16;
    /// Start and length of the whole PM block the PM device claims.
    pub const PM_BLOCK_START: u16 = 0x600;
    /// Length of the PM block.
    pub const PM_BLOCK_LEN: u16 = 0x40;
    /// SLP_TYP value the DSDT's `_S5` names; writing it with SLP_EN powers off.
    pub const SLP_TYP_S5: u8 = 5;
    /// First COM port (16550).
    pub const COM1: u16 = 0x3f8;
    /// i8042 data port.
    pub const I8042_DATA: u16 = 0x60;
    /// i8042 command/status port.
    pub const I8042_CMD: u16 = 0x64;
    /// QEMU's fw_cfg: selector/data at 0x510/0x511, DMA address at 0x514–0x51B.
    pub const FW_CFG: u16 = 0x510;
    /// Ports fw_cfg claims.
    pub const FW_CFG_LEN: u8 = 0x0c;
    /// CMOS/RTC index and data ports.
    pub const RTC: u16 = 0x70;
    /// QEMU-compatible `isa-debug-exit` port (4 bytes).
    pub const DEBUG_EXIT: u16 = 0xf4;
    /// QEMU-compatible pvpanic port (1 byte), QEMU's default place; the DSDT names it
    /// (`QEMU0001`).
    pub const PVPANIC: u16 = 0x505;
    /// QEMU's `pc-testdev` data and flush ports (0xe0–0xeb; `--pc-testdev`).
    pub const PC_TESTDEV: u16 = 0xe0;
    /// QEMU's `pc-testdev` interrupt line ports (0x2000–0x2017; `--pc-testdev`).
    pub const PC_TESTDEV_IRQ: u16 = 0x2000;
    /// vfiovm's runner port (CI guests: phase and command exit status). Between fw_cfg
    /// (0x510–0x51B) and the ACPI PM block (0x600): nothing QEMU's PC machines, Linux's legacy
    /// probes or kvm-unit-tests' test devices (0xE0–0xEF, 0x2000) use; reserved in the DSDT.
    pub const RUNNER: u16 = 0x5f0;
    /// Ports the runner port claims.
    pub const RUNNER_LEN: u8 = 0x10;
    /// PCI type-1 configuration address/data ports (0xCF8–0xCFF); 0xCF9 is the reset control register.
    pub const PCI_CONFIG: u16 = 0xcf8;
    /// Reset control register (byte at 0xCF9; 0x06 or 0x0E resets).
    pub const RESET_CF9: u16 = 0xcf9;
    /// Value the FADT reset register writes.
    pub const RESET_VALUE: u8 = 0x06;
    /// PCI I/O window for I/O BARs.
    pub const PCI_IO_START: u16 = 0x6000;
    /// Size of the PCI I/O window (up to 0xFFFF inclusive).
    pub const PCI_IO_SIZE: u32 = 0x1_0000 - 0x6000;
}

/// Legacy interrupt lines (ISA IRQs, as GSIs on the IOAPIC).
pub mod irqs {
    /// i8042 keyboard.
    pub const I8042_KBD: u32 = 1;
    /// COM1.
    pub const COM1: u32 = 4;
    /// RTC.
    pub const RTC: u32 = 8;
    /// ACPI SCI (level, active high, as on QEMU).
    pub const SCI: u32 = 9;
    /// The IOAPIC has 24 pins; pins 16–23 serve PCI INTx.
    pub const IOAPIC_PINS: u32 = 24;
    /// First IOAPIC pin used for PCI INTx (INTA#–INTD# swizzled onto 16–23).
    pub const PCI_INTX_BASE: u32 = 16;
    /// First GSI handed out for MSI/MSI-X routes (after the IOAPIC pins).
    pub const MSI_GSI_BASE: u32 = 24;
}

// The boot structures must not overlap; checked at compile time.
const _: () = {
    assert!(PVH_MEMMAP_START + 24 * PVH_MEMMAP_MAX_ENTRIES as u64 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 0x1000 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + 4 * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(MULTIBOOT_MODS_START + 16 <= MULTIBOOT_MMAP_START);
    assert!(MULTIBOOT_MOD_STRING_START + (MULTIBOOT_MOD_STRING_MAX as u64) < EBDA_START);
};

/// The IOAPIC pin (GSI) that INTx pin `pin` (0 = INTA#) of bus-0 device `slot` is wired to.
/// The ACPI `_PRT` and the PCI devices both use this; keep them in step by calling it.
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    irqs::PCI_INTX_BASE + (u32::from(slot) + u32::from(pin)) % 8
}

/// The RAM regions of a guest with `mem_size` bytes of RAM: all of it below the 32-bit hole when
/// it fits there (below [`LOW_RAM_MAX_END`]), otherwise 2 GiB below ([`LOW_RAM_SPLIT`]) and the
/// rest above 4 GiB, up to [`MAX_PHYS_ADDR`] (a larger `mem_size` cannot be addressed and is cut
/// there; the VMM refuses more RAM than the host has long before). Region boundaries are as
/// aligned as `mem_size` is, up to 1 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    let low = if mem_size < LOW_RAM_MAX_END {
        mem_size
    } else {
        LOW_RAM_SPLIT
    };
    let mut regions = vec![(RAM_START, low)];
    if mem_size > low {
        let high = (mem_size - low).min(MAX_PHYS_ADDR - HIGH_RAM_START);
        regions.push((HIGH_RAM_START, high));
    }
    regions
}

/// One past the last byte of guest RAM.
pub fn ram_end(mem_size: u64) -> u64 {
    ram_regions(mem_size)
        .last()
        .map(|&(start, len)| start + len)
        .unwrap_or(0)
}

/// The 64-bit PCI MMIO window `(start, size)` for a guest with `mem_size` bytes of RAM on a host
/// whose CPU has `phys_bits` physical address bits. It starts at the first 1 GiB boundary at or
/// above both 4 GiB and the end of RAM, and ends at the top of the guest physical address space.
/// Returns `None` when no space is left (a tiny address width).
pub fn mmio64_window(mem_size: u64, phys_bits: u8) -> Option<(u64, u64)> {
    let start = ram_end(mem_size).max(HIGH_RAM_START);
    let start = start.checked_add(PCI_MMIO64_ALIGN - 1)? & !(PCI_MMIO64_ALIGN - 1);
    let top = 1u64.checked_shl(u32::from(phys_bits.min(52)))?;
    (top > start).then(|| (start, top - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_fits_below_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_guest_splits_around_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, LOW_RAM_SPLIT),
                (HIGH_RAM_START, (4 << 30) - LOW_RAM_SPLIT)
            ]
        );
        assert_eq!(ram_end(4 << 30), HIGH_RAM_START + (4 << 30) - LOW_RAM_SPLIT);
    }

    /// Q35's split: just below 0xB000_0000 all RAM stays low; from there on 2 GiB stay low and
    /// every boundary is 1 GiB aligned when the size is.
    #[test]
    fn split_is_gigabyte_aligned() {
        assert_eq!(
            ram_regions(LOW_RAM_MAX_END - (2 << 20)),
            vec![(0, LOW_RAM_MAX_END - (2 << 20))]
        );
        assert_eq!(
            ram_regions(LOW_RAM_MAX_END),
            vec![
                (0, LOW_RAM_SPLIT),
                (HIGH_RAM_START, LOW_RAM_MAX_END - LOW_RAM_SPLIT)
            ]
        );
        for gib in [3u64, 4, 16, 512] {
            for (start, len) in ram_regions(gib << 30) {
                assert_eq!((start % (1 << 30), len % (1 << 30)), (0, 0), "{gib} GiB");
            }
        }
    }

    /// Found by the `boot_builders` fuzz target: `memory_map(u64::MAX)` (and `ram_end`,
    /// `mmio64_window`) overflowed computing the end of the RAM above 4 GiB.
    #[test]
    fn huge_sizes_stop_at_the_physical_address_limit() {
        for size in [u64::MAX, u64::MAX - (1 << 30), MAX_PHYS_ADDR + 1] {
            let r = ram_regions(size);
            assert_eq!(r[1], (HIGH_RAM_START, MAX_PHYS_ADDR - HIGH_RAM_START));
            assert_eq!(ram_end(size), MAX_PHYS_ADDR);
            assert_eq!(mmio64_window(size, 52), None);
        }
        let just_fits = MAX_PHYS_ADDR - HIGH_RAM_START + LOW_RAM_SPLIT;
        assert_eq!(ram_end(just_fits), MAX_PHYS_ADDR);
        assert_eq!(ram_end(just_fits - 1), MAX_PHYS_ADDR - 1);
    }

    #[test]
    fn mmio64_window_above_ram_and_aligned() {
        let (start, size) = mmio64_window(256 << 20, 40).unwrap();
        assert_eq!(start, HIGH_RAM_START);
        assert_eq!(start + size, 1 << 40);
        let (start, _) = mmio64_window(8 << 30, 46).unwrap();
        assert!(start >= ram_end(8 << 30));
        assert_eq!(start % PCI_MMIO64_ALIGN, 0);
        // A 64 GiB BAR fits with 40 physical address bits.
        let (_, size) = mmio64_window(4 << 30, 40).unwrap();
        assert!(size >= 64 << 30);
        assert!(mmio64_window(1 << 40, 40).is_none());
    }
}
