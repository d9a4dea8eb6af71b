//! x86_64 guest platform for vfiovm: memory layout, boot protocols (Linux boot protocol and PVH),
//! initial vCPU state (registers, page tables, CPUID, MSRs, LAPIC) and firmware tables (ACPI, MP).
#![deny(missing_docs)]

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod firmware;
pub mod hyperv;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod multiboot;
pub mod regs;
pub mod smbios;
