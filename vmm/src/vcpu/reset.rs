//! The architectural power-on state of an x86 vCPU (Intel SDM vol. 3, table 9-1), written with
//! KVM's setters. What [`power_on`] sets and what it leaves is listed on it.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    kvm_vcpu_events, kvm_xcr, kvm_xcrs, Msrs, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SHADOW, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::VcpuFd;

/// `rip` at reset; with `cs.base` it makes the first fetch at 0xffff_fff0.
pub const RESET_RIP: u64 = 0xfff0;
/// `cs.selector` at reset.
pub const RESET_CS_SELECTOR: u16 = 0xf000;
/// `cs.base` at reset (the "hidden" base that puts the reset vector below 4 GiB).
pub const RESET_CS_BASE: u64 = 0xffff_0000;
/// `rflags` at reset: only the always-one bit 1.
pub const RESET_RFLAGS: u64 = 0x2;
/// `cr0` at reset: CD, NW and ET set; protection and paging off.
pub const RESET_CR0: u64 = 0x6000_0010;
/// `dr6` at reset.
pub const RESET_DR6: u64 = 0xffff_0ff0;
/// `dr7` at reset.
pub const RESET_DR7: u64 = 0x400;
/// `IA32_PAT` at reset.
pub const RESET_PAT: u64 = 0x0007_0406_0007_0406;
/// The CPU signature `rdx` holds at reset when the vCPU's CPUID has no leaf 1 (KVM's choice).
pub const DEFAULT_SIGNATURE: u32 = 0x600;

const APIC_BASE_ADDRESS: u64 = 0xfee0_0000;
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_ENABLE: u64 = 1 << 11;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_CR_PAT: u32 = 0x277;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;

/// The MSRs [`power_on`] writes in one `KVM_SET_MSRS`, all architectural (KVM stops at the
/// first MSR it refuses); the paravirtual ones, which a host may not offer, are in
/// [`PV_RESET_MSRS`] and written one at a time.
pub const RESET_MSRS: [(u32, u64); 11] = [
    (MSR_IA32_SYSENTER_CS, 0),
    (MSR_IA32_SYSENTER_ESP, 0),
    (MSR_IA32_SYSENTER_EIP, 0),
    (MSR_STAR, 0),
    (MSR_LSTAR, 0),
    (MSR_CSTAR, 0),
    (MSR_SYSCALL_MASK, 0),
    (MSR_KERNEL_GS_BASE, 0),
    (MSR_IA32_CR_PAT, RESET_PAT),
    // MTRRs disabled (the firmware enables them).
    (MSR_MTRR_DEF_TYPE, 0),
    // Fast strings, as the processor comes out of reset.
    (MSR_IA32_MISC_ENABLE, 1),
];

/// The paravirtual MSRs [`power_on`] clears, one `KVM_SET_MSRS` each: a host without one
/// (steal time needs `CONFIG_SCHED_INFO`) must not keep the others from being cleared.
pub const PV_RESET_MSRS: [(u32, u64); 5] = [
    // KVM keeps writing kvmclock, steal time and async-#PF data into guest RAM while these are
    // enabled: a guest after reset must not find the old kernel's structures being updated.
    (MSR_KVM_SYSTEM_TIME_NEW, 0),
    (MSR_KVM_SYSTEM_TIME, 0),
    (MSR_KVM_STEAL_TIME, 0),
    (MSR_KVM_ASYNC_PF_EN, 0),
    (MSR_KVM_PV_EOI_EN, 0),
];

/// The Hyper-V MSRs [`power_on`] clears (Hyper-V TLFS; KVM's `hyperv.c`), one `KVM_SET_MSRS`
/// each, since a host or VM without the enlightenments refuses them and KVM stops at the first
/// refusal. KVM writes the reference TSC page, and the SynIC's message and event pages, into
/// guest RAM while they are enabled; after a reboot in place the next guest must not find the
/// old one's pages updated (or its hypercall page, APIC assist page, SynIC or timers on). The
/// SINTs go back to masked, their reset value.
pub fn hyperv_reset_msrs() -> Vec<(u32, u64)> {
    const GUEST_OS_ID: u32 = 0x4000_0000;
    const HYPERCALL: u32 = 0x4000_0001;
    const REFERENCE_TSC: u32 = 0x4000_0021;
    const VP_ASSIST_PAGE: u32 = 0x4000_0073;
    const SCONTROL: u32 = 0x4000_0080;
    const SIEFP: u32 = 0x4000_0082;
    const SIMP: u32 = 0x4000_0083;
    const SINT0: u32 = 0x4000_0090;
    const STIMER0_CONFIG: u32 = 0x4000_00b0;
    const SINT_MASKED: u64 = 1 << 16;
    let mut m = vec![
        (HYPERCALL, 0),
        (GUEST_OS_ID, 0),
        (REFERENCE_TSC, 0),
        (VP_ASSIST_PAGE, 0),
        (SCONTROL, 0),
        (SIEFP, 0),
        (SIMP, 0),
    ];
    m.extend((0..16).map(|i| (SINT0 + i, SINT_MASKED)));
    // Four timers: config, then count.
    m.extend((0..8).map(|i| (STIMER0_CONFIG + i, 0)));
    m
}

// LAPIC register offsets (SDM vol. 3, table 11-1).
const APIC_ID: usize = 0x20;
const APIC_DFR: usize = 0xe0;
const APIC_SVR: usize = 0xf0;
const APIC_LVTS: [usize; 7] = [0x2f0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370];
const APIC_LVT_MASKED: u32 = 1 << 16;

/// A KVM setter that failed during a reset.
#[derive(Debug, thiserror::Error)]
#[error("resetting vCPU {cpu}: {what} failed: {err}")]
pub struct ResetError {
    /// The vCPU.
    pub cpu: u32,
    /// The ioctl.
    pub what: &'static str,
    /// KVM's error.
    pub err: kvm_ioctls::Error,
}

fn segment(selector: u16, base: u64, type_: u8, s: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit: 0xffff,
        selector,
        type_,
        present: 1,
        s,
        ..Default::default()
    }
}

/// General registers at reset: `rip` 0xfff0, `rflags` 2, `rdx` the CPU signature (CPUID leaf
/// 1 `eax`), everything else 0 (`eax` 0 is "BIST passed").
pub fn reset_regs(signature: u32) -> kvm_regs {
    kvm_regs {
        rip: RESET_RIP,
        rflags: RESET_RFLAGS,
        rdx: u64::from(signature),
        ..Default::default()
    }
}

/// Segment and control registers at reset, starting from `sregs` (as KVM returned them) so the
/// fields this does not name keep KVM's layout. Real mode: `cs` 0xf000 based at 0xffff0000,
/// the data segments and `ss` selector 0 base 0, all limits 0xffff and present; GDTR and IDTR
/// base 0 limit 0xffff; `cr0` 0x60000010, `cr2`/`cr3`/`cr4`/`cr8` and EFER 0; the LAPIC enabled
/// at 0xfee00000, marked BSP on vCPU 0; no interrupt pending.
pub fn reset_sregs(mut sregs: kvm_sregs, cpu: u32) -> kvm_sregs {
    // Code: execute/read, accessed (type 0xb). Data: read/write, accessed (3).
    sregs.cs = segment(RESET_CS_SELECTOR, RESET_CS_BASE, 0xb, 1);
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *seg = segment(0, 0, 3, 1);
    }
    // System segments: the LDT (type 2) and a busy 32-bit TSS (0xb), as VM entry requires.
    sregs.ldt = segment(0, 0, 2, 0);
    sregs.tr = segment(0, 0, 0xb, 0);
    sregs.gdt.base = 0;
    sregs.gdt.limit = 0xffff;
    sregs.idt.base = 0;
    sregs.idt.limit = 0xffff;
    sregs.cr0 = RESET_CR0;
    sregs.cr2 = 0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.cr8 = 0;
    sregs.efer = 0;
    sregs.apic_base =
        APIC_BASE_ADDRESS | APIC_BASE_ENABLE | if cpu == 0 { APIC_BASE_BSP } else { 0 };
    sregs.interrupt_bitmap = [0; 4];
    sregs
}

/// The LAPIC's registers at reset: ID = `cpu`, DFR all ones, SVR 0xff (software-disabled),
/// every LVT masked, everything else (TPR, LDR, ISR/TMR/IRR, ICR, the timer) zero. KVM fills
/// in the version register itself.
pub fn reset_lapic(cpu: u32) -> kvm_lapic_state {
    let mut s = kvm_lapic_state::default();
    let mut set = |offset: usize, value: u32| {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            s.regs[offset + i] = b as _;
        }
    };
    set(APIC_ID, cpu << 24);
    set(APIC_DFR, u32::MAX);
    set(APIC_SVR, 0xff);
    for lvt in APIC_LVTS {
        set(lvt, APIC_LVT_MASKED);
    }
    s
}

/// Puts vCPU `cpu` into the architectural power-on state (Intel SDM vol. 3, table 9-1), as far
/// as KVM lets userspace write it. Call it only on a vCPU that is out of `KVM_RUN`.
///
/// Reset: the general registers ([`reset_regs`]; `rdx` = `signature`), the segment and control
/// registers, EFER and the APIC base ([`reset_sregs`]), x87/SSE state (`fcw` 0x37f, `mxcsr`
/// 0x1f80: the FNINIT values KVM and QEMU use, not the table's power-up `fcw` 0x40), DR0-DR3 0,
/// DR6 0xffff0ff0, DR7 0x400, XCR0 1 (x87 only), pending exceptions, interrupts, NMIs and the
/// interrupt shadow cleared, the MP state (vCPU 0 runnable, the others waiting for INIT/SIPI as
/// APs do), the LAPIC ([`reset_lapic`]), and the MSRs in [`RESET_MSRS`] (SYSENTER/SYSCALL,
/// `KERNEL_GS_BASE`, PAT, MTRRs off, and the paravirtual kvmclock, steal-time, async-#PF and
/// PV-EOI areas turned off; those KVM refuses are reported at debug level, not failed on); XCR0
/// = x87 where the host has XSAVE; the Hyper-V MSRs of [`hyperv_reset_msrs`] where the VM has
/// the enlightenments.
///
/// Not reset: extended XSAVE state beyond x87/SSE (AVX and later registers keep their values
/// until the guest's next XRSTOR or VZEROUPPER), the TSC (all vCPUs must be written together to
/// stay in sync: the caller decides), variable-range MTRRs, performance counters, nested
/// virtualization state, SMM, the CPUID table (configuration, not state), and anything outside
/// the vCPU (devices, guest RAM, the in-kernel PIC/IOAPIC/PIT).
pub fn power_on(fd: &VcpuFd, cpu: u32, signature: u32) -> Result<(), ResetError> {
    let err = |what| move |err| ResetError { cpu, what, err };
    // SREGS before REGS (CR0 decides how RFLAGS and segments are checked) and before the LAPIC
    // (the APIC base enables it).
    let sregs = fd.get_sregs().map_err(err("KVM_GET_SREGS"))?;
    fd.set_sregs(&reset_sregs(sregs, cpu))
        .map_err(err("KVM_SET_SREGS"))?;
    fd.set_regs(&reset_regs(signature))
        .map_err(err("KVM_SET_REGS"))?;
    fd.set_fpu(&arch::regs::boot_fpu())
        .map_err(err("KVM_SET_FPU"))?;
    fd.set_debug_regs(&kvm_debugregs {
        dr6: RESET_DR6,
        dr7: RESET_DR7,
        ..Default::default()
    })
    .map_err(err("KVM_SET_DEBUGREGS"))?;
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0] = kvm_xcr {
        xcr: 0,
        value: 1,
        ..Default::default()
    };
    // XCR0 exists only where the host has XSAVE; KVM refuses KVM_SET_XCRS otherwise (EINVAL),
    // as on the rig's L1 (QEMU's qemu64 CPU model, no XSAVE).
    if std::is_x86_feature_detected!("xsave") {
        fd.set_xcrs(&xcrs).map_err(err("KVM_SET_XCRS"))?;
    }
    fd.set_vcpu_events(&kvm_vcpu_events {
        flags: KVM_VCPUEVENT_VALID_NMI_PENDING
            | KVM_VCPUEVENT_VALID_SIPI_VECTOR
            | KVM_VCPUEVENT_VALID_SHADOW,
        ..Default::default()
    })
    .map_err(err("KVM_SET_VCPU_EVENTS"))?;
    fd.set_lapic(&reset_lapic(cpu))
        .map_err(err("KVM_SET_LAPIC"))?;
    fd.set_mp_state(kvm_mp_state {
        mp_state: if cpu == 0 {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_INIT_RECEIVED
        },
    })
    .map_err(err("KVM_SET_MP_STATE"))?;
    let entries: Vec<kvm_msr_entry> = RESET_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| ResetError {
        cpu,
        what: "building the MSR list",
        err: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let set = fd.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
    if set != entries.len() {
        log::debug!(
            "vCPU {cpu} reset: KVM accepted {set} of {} MSRs (from index {:#x} on they were refused)",
            entries.len(),
            entries.get(set).map(|e| e.index).unwrap_or(0)
        );
    }
    for (index, data) in PV_RESET_MSRS.into_iter().chain(hyperv_reset_msrs()) {
        let one = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }]);
        if !matches!(one.map(|m| fd.set_msrs(&m)), Ok(Ok(1))) {
            log::trace!("vCPU {cpu} reset: paravirtual MSR {index:#x} refused (not offered)");
        }
    }
    Ok(())
}

/// The CPU signature (CPUID leaf 1 `eax`) in `fd`'s CPUID table, or [`DEFAULT_SIGNATURE`].
pub fn signature(fd: &VcpuFd) -> u32 {
    fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .ok()
        .and_then(|c| {
            c.as_slice()
                .iter()
                .find(|e| e.function == 1 && e.index == 0)
                .map(|e| e.eax)
        })
        .unwrap_or(DEFAULT_SIGNATURE)
}
