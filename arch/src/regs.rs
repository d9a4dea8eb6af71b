//! Initial vCPU state for the two direct-boot entry modes: PVH (32-bit protected mode, paging off)
//! and the Linux 64-bit boot protocol (long mode, identity-mapped page tables).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

/// Errors from writing the initial vCPU state into guest memory.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest memory is too small for the GDT/IDT or page tables.
    #[error("guest memory is too small for the boot {0} (at {1:#x})")]
    BootStructure(&'static str, u64),
}

/// GDT selector of the flat 32-bit code segment (PVH entry).
pub const SEL_CODE32: u16 = 0x08;
/// GDT selector of the flat 64-bit code segment (`__BOOT_CS` of the Linux boot protocol).
pub const SEL_CODE64: u16 = 0x10;
/// GDT selector of the flat data segment (`__BOOT_DS`).
pub const SEL_DATA: u16 = 0x18;
/// GDT selector of the TSS.
pub const SEL_TSS: u16 = 0x20;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How the boot vCPU enters the guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, `rsi` = zero page.
    Linux64,
    /// Multiboot: 32-bit protected mode, paging off, `eax` = 0x2BADB002, `ebx` = the
    /// multiboot information.
    Multiboot,
}

/// Builds a GDT descriptor from flags (access byte in bits 0–7, flags in bits 12–15 of `flags`),
/// base and limit, in the packed layout the CPU reads.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The boot GDT: null, code32, code64, data, TSS, indexed by selector / 8.
pub const BOOT_GDT: [u64; 5] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xfffff), // code, 32-bit, 4 KiB granularity
    gdt_entry(0xa09b, 0, 0xfffff), // code, 64-bit (L)
    gdt_entry(0xc093, 0, 0xfffff), // data, read/write
    gdt_entry(0x808b, 0, 0xfffff), // TSS (busy), KVM wants a valid TR
];

/// The `kvm_segment` that loading `selector` from `BOOT_GDT` produces.
pub fn segment_from_gdt(selector: u16) -> kvm_segment {
    let entry = BOOT_GDT[usize::from(selector >> 3)];
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    kvm_segment {
        base,
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(((entry >> 47) & 1) == 0),
    }
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_gdt_idt<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    for (i, entry) in BOOT_GDT.iter().enumerate() {
        let addr = BOOT_GDT_START + (i * 8) as u64;
        mem.write_obj(*entry, GuestAddress(addr))
            .map_err(|_| RegsError::BootStructure("GDT", addr))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::BootStructure("IDT", BOOT_IDT_START))?;
    Ok(())
}

/// Writes identity-mapping page tables for the first 4 GiB (2 MiB pages), so the Linux 64-bit
/// entry can reach its kernel, zero page, command line and the MMIO hole.
pub fn write_identity_page_tables<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    let err = |a| RegsError::BootStructure("page tables", a);
    // PML4[0] -> PDPT, present + writable.
    mem.write_obj(PDPTE_START | 0x3, GuestAddress(PML4_START))
        .map_err(|_| err(PML4_START))?;
    for pd in 0..4u64 {
        let pd_addr = PDE_START + pd * 0x1000;
        mem.write_obj(pd_addr | 0x3, GuestAddress(PDPTE_START + pd * 8))
            .map_err(|_| err(PDPTE_START))?;
        for i in 0..512u64 {
            // Present + writable + 2 MiB page.
            let phys = (pd << 30) | (i << 21);
            mem.write_obj(phys | 0x83, GuestAddress(pd_addr + i * 8))
                .map_err(|_| err(pd_addr))?;
        }
    }
    Ok(())
}

/// Special registers for `mode`, starting from the vCPU's current `sregs`.
pub fn boot_sregs(mut sregs: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let data = segment_from_gdt(SEL_DATA);
    let code = match mode {
        EntryMode::Pvh | EntryMode::Multiboot => segment_from_gdt(SEL_CODE32),
        EntryMode::Linux64 => segment_from_gdt(SEL_CODE64),
    };
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(SEL_TSS);
    match mode {
        EntryMode::Pvh | EntryMode::Multiboot => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            sregs.cr3 = 0;
        }
        EntryMode::Linux64 => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

/// General registers for `mode`: the entry point and the boot-info pointer where the protocol
/// wants it (`ebx` = start info for PVH, `rsi` = zero page for Linux).
pub fn boot_regs(mode: EntryMode, entry: u64, boot_info: u64) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => regs.rbx = boot_info,
        EntryMode::Multiboot => {
            regs.rax = u64::from(crate::multiboot::BOOTLOADER_MAGIC);
            regs.rbx = boot_info;
        }
        EntryMode::Linux64 => {
            debug_assert_eq!(boot_info, ZERO_PAGE_START);
            regs.rsi = boot_info;
        }
    }
    regs
}

/// FPU state at reset: x87 control word and MXCSR defaults.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    #[test]
    fn gdt_segments_decode_as_flat() {
        let c32 = segment_from_gdt(SEL_CODE32);
        assert_eq!(
            (c32.base, c32.limit, c32.db, c32.l, c32.type_),
            (0, 0xffff_ffff, 1, 0, 0xb)
        );
        let c64 = segment_from_gdt(SEL_CODE64);
        assert_eq!((c64.l, c64.db, c64.present, c64.s), (1, 0, 1, 1));
        let d = segment_from_gdt(SEL_DATA);
        assert_eq!((d.type_, d.limit, d.db), (0x3, 0xffff_ffff, 1));
        let tss = segment_from_gdt(SEL_TSS);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
        assert_eq!(segment_from_gdt(0).unusable, 1);
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let m = mem();
        write_identity_page_tables(&m).unwrap();
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        for gib in 0..4u64 {
            let pdpte: u64 = m.read_obj(GuestAddress(PDPTE_START + gib * 8)).unwrap();
            let pd = pdpte & !0xfff;
            // Check the first and last 2 MiB page of each GiB.
            let first: u64 = m.read_obj(GuestAddress(pd)).unwrap();
            let last: u64 = m.read_obj(GuestAddress(pd + 511 * 8)).unwrap();
            assert_eq!(first, (gib << 30) | 0x83);
            assert_eq!(last, (gib << 30) | (511 << 21) | 0x83);
        }
    }

    #[test]
    fn entry_modes() {
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Pvh);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cs.selector, SEL_CODE32);
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Linux64);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cs.selector, SEL_CODE64);
        let r = boot_regs(EntryMode::Pvh, 0x10_0000, 0x6000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x10_0000, 0x6000, 2));
        let s = boot_sregs(kvm_sregs::default(), EntryMode::Multiboot);
        assert_eq!((s.cr0 & X86_CR0_PG, s.cr0 & X86_CR0_PE), (0, X86_CR0_PE));
        assert_eq!(s.cs.selector, SEL_CODE32);
        let r = boot_regs(EntryMode::Multiboot, 0x40_000c, 0x6000);
        assert_eq!((r.rip, r.rax, r.rbx), (0x40_000c, 0x2bad_b002, 0x6000));
        let r = boot_regs(EntryMode::Linux64, 0x100_0000, ZERO_PAGE_START);
        assert_eq!(r.rsi, ZERO_PAGE_START);
    }

    #[test]
    fn too_small_memory_is_an_error() {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(write_identity_page_tables(&m).is_err());
    }
}
