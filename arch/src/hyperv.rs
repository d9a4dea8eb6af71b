//! Hyper-V enlightenments: the CPUID leaves 0x4000_0000–0x4000_000A that tell a guest (Windows,
//! or Linux's Hyper-V code) which of Microsoft's paravirtual interfaces KVM implements for it.
//!
//! The leaves are built from what the host's KVM offers (`KVM_GET_SUPPORTED_HV_CPUID`), keeping
//! only the enlightenments vfiovm stands behind; everything else KVM offers is left out, so with
//! `KVM_CAP_HYPERV_ENFORCE_CPUID` the guest cannot use it either. What is kept, by the name
//! QEMU's `hv-*` properties give it (the bit numbers are the Hyper-V TLFS's, as Linux's
//! `hvgdk_mini.h` names them):
//!
//! | enlightenment | leaf.register: bits |
//! |---|---|
//! | (the base: hypercall page, guest OS id) | 0x4000_0003.EAX: `HYPERCALL_AVAILABLE` (5) |
//! | relaxed (no watchdog on late timer ticks) | 0x4000_0004.EAX: `RELAXED_TIMING_RECOMMENDED` (5) |
//! | vapic (APIC MSRs, APIC assist page) | 0x4000_0003.EAX: `APIC_ACCESS_AVAILABLE` (4); 0x4000_0004.EAX: `APIC_ACCESS_RECOMMENDED` (3) |
//! | spinlocks (long spin-wait notification) | 0x4000_0004.EBX: the retry count KVM offers |
//! | vpindex | 0x4000_0003.EAX: `VP_INDEX_AVAILABLE` (6) |
//! | runtime | 0x4000_0003.EAX: `VP_RUNTIME_AVAILABLE` (0) |
//! | time (reference counter and TSC page) | 0x4000_0003.EAX: `TIME_REF_COUNT_AVAILABLE` (1), `REFERENCE_TSC_AVAILABLE` (9) |
//! | synic | 0x4000_0003.EAX: `SYNIC_AVAILABLE` (2) |
//! | stimer | 0x4000_0003.EAX: `SYNTIMER_AVAILABLE` (3); EDX: `STIMER_DIRECT_MODE_AVAILABLE` (19) |
//! | frequencies (TSC and APIC frequency MSRs) | 0x4000_0003.EAX: `ACCESS_FREQUENCY_MSRS` (11); EDX: `FREQUENCY_MSRS_AVAILABLE` (8) |
//! | tlbflush (flush hypercalls) | 0x4000_0004.EAX: `REMOTE_TLB_FLUSH_RECOMMENDED` (2), `EX_PROCESSOR_MASKS_RECOMMENDED` (11) |
//! | ipi (IPI hypercalls) | 0x4000_0004.EAX: `CLUSTER_IPI_RECOMMENDED` (10), `EX_PROCESSOR_MASKS_RECOMMENDED` (11) |
//!
//! Left out although KVM may offer them: the reset MSR, reenlightenment and TSC invariance
//! control, the crash MSRs, XMM hypercall input, debugging and the synthetic debugger leaves
//! (0x4000_0080–0x4000_0082), extended hypercalls, posting messages and signalling events (both
//! go to the VMM, which has no VMBus to answer them), the enlightened VMCS and the nested leaf
//! (0x4000_000A stays zero), the AutoEOI deprecation and core-sharing hints. A bit KVM does not
//! offer is never set.
//!
//! The identity leaves: 0x4000_0000 gives the highest leaf (0x4000_000A) and the vendor
//! ("Microsoft Hv" unless `hv-vendor-id=` says otherwise: Windows does not look at it, some
//! drivers do), 0x4000_0001 the interface ("Hv#1"), 0x4000_0002 the version KVM reports,
//! 0x4000_0005 KVM's limits; 0x4000_0006–0x4000_0009 are zero. KVM's own leaves move to
//! 0x4000_0100 (see [`crate::cpuid`]), where Linux and KVM look for them.

use kvm_bindings::kvm_cpuid_entry2;

/// The vendor-and-maximum leaf.
pub const LEAF_VENDOR: u32 = 0x4000_0000;
/// The interface leaf ("Hv#1").
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// The version leaf.
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// The feature (partition privilege) leaf.
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// The recommendations (enlightenment information) leaf.
pub const LEAF_RECOMMENDATIONS: u32 = 0x4000_0004;
/// The implementation limits leaf.
pub const LEAF_LIMITS: u32 = 0x4000_0005;
/// The highest Hyper-V leaf vfiovm gives (the nested features leaf, left zero).
pub const LEAF_MAX: u32 = 0x4000_000A;
/// Where KVM's own leaves go when the Hyper-V leaves take 0x4000_0000.
pub const KVM_BASE_WITH_HYPERV: u32 = 0x4000_0100;
/// The vendor id guests see unless told otherwise.
pub const DEFAULT_VENDOR_ID: &str = "Microsoft Hv";
/// "Hv#1" in EAX of the interface leaf.
pub const INTERFACE_HV1: u32 = 0x3123_7648;

// 0x4000_0003 EAX (partition privileges, low half).
/// `HV_MSR_VP_RUNTIME_AVAILABLE`.
pub const EAX_VP_RUNTIME: u32 = 1 << 0;
/// `HV_MSR_TIME_REF_COUNT_AVAILABLE`.
pub const EAX_TIME_REF_COUNT: u32 = 1 << 1;
/// `HV_MSR_SYNIC_AVAILABLE`.
pub const EAX_SYNIC: u32 = 1 << 2;
/// `HV_MSR_SYNTIMER_AVAILABLE`.
pub const EAX_SYNTIMER: u32 = 1 << 3;
/// `HV_MSR_APIC_ACCESS_AVAILABLE`.
pub const EAX_APIC_ACCESS: u32 = 1 << 4;
/// `HV_MSR_HYPERCALL_AVAILABLE`.
pub const EAX_HYPERCALL: u32 = 1 << 5;
/// `HV_MSR_VP_INDEX_AVAILABLE`.
pub const EAX_VP_INDEX: u32 = 1 << 6;
/// `HV_MSR_REFERENCE_TSC_AVAILABLE`.
pub const EAX_REFERENCE_TSC: u32 = 1 << 9;
/// `HV_ACCESS_FREQUENCY_MSRS`.
pub const EAX_FREQUENCY_MSRS: u32 = 1 << 11;
/// Every 0x4000_0003.EAX bit vfiovm may pass on.
pub const FEATURES_EAX_KEPT: u32 = EAX_VP_RUNTIME
    | EAX_TIME_REF_COUNT
    | EAX_SYNIC
    | EAX_SYNTIMER
    | EAX_APIC_ACCESS
    | EAX_HYPERCALL
    | EAX_VP_INDEX
    | EAX_REFERENCE_TSC
    | EAX_FREQUENCY_MSRS;

// 0x4000_0003 EDX (feature identification).
/// `HV_FEATURE_FREQUENCY_MSRS_AVAILABLE`.
pub const EDX_FREQUENCY_MSRS: u32 = 1 << 8;
/// `HV_STIMER_DIRECT_MODE_AVAILABLE`.
pub const EDX_STIMER_DIRECT: u32 = 1 << 19;
/// Every 0x4000_0003.EDX bit vfiovm may pass on.
pub const FEATURES_EDX_KEPT: u32 = EDX_FREQUENCY_MSRS | EDX_STIMER_DIRECT;

// 0x4000_0004 EAX (recommendations).
/// `HV_X64_REMOTE_TLB_FLUSH_RECOMMENDED`.
pub const REC_REMOTE_TLB_FLUSH: u32 = 1 << 2;
/// `HV_X64_APIC_ACCESS_RECOMMENDED`.
pub const REC_APIC_ACCESS: u32 = 1 << 3;
/// `HV_X64_RELAXED_TIMING_RECOMMENDED`.
pub const REC_RELAXED_TIMING: u32 = 1 << 5;
/// `HV_X64_CLUSTER_IPI_RECOMMENDED`.
pub const REC_CLUSTER_IPI: u32 = 1 << 10;
/// `HV_X64_EX_PROCESSOR_MASKS_RECOMMENDED`.
pub const REC_EX_PROCESSOR_MASKS: u32 = 1 << 11;
/// Every 0x4000_0004.EAX bit vfiovm may pass on.
pub const RECOMMENDATIONS_KEPT: u32 = REC_REMOTE_TLB_FLUSH
    | REC_APIC_ACCESS
    | REC_RELAXED_TIMING
    | REC_CLUSTER_IPI
    | REC_EX_PROCESSOR_MASKS;

/// Errors from building the Hyper-V leaves.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HypervError {
    /// KVM's answer lacks a leaf every Hyper-V guest reads.
    #[error("the host's KVM_GET_SUPPORTED_HV_CPUID has no leaf {0:#x}: this KVM's Hyper-V support is too old or incomplete; run with --hyperv off")]
    MissingLeaf(u32),
    /// The vendor id does not fit its 12 bytes.
    #[error("hv-vendor-id '{0}' is longer than 12 bytes")]
    VendorTooLong(String),
}

/// What the enlightenments of one VM depend on besides KVM's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HypervOptions {
    /// The 12-byte vendor id of leaf 0x4000_0000 (shorter ones are padded with NULs).
    pub vendor_id: String,
}

impl Default for HypervOptions {
    fn default() -> Self {
        HypervOptions {
            vendor_id: DEFAULT_VENDOR_ID.to_string(),
        }
    }
}

/// The leaves a guest gets, and whether the SynIC must be enabled on each vCPU
/// (`KVM_CAP_HYPERV_SYNIC2`).
#[derive(Debug, Clone, PartialEq)]
pub struct HypervLeaves {
    /// 0x4000_0000..=0x4000_000A, in order.
    pub entries: Vec<kvm_cpuid_entry2>,
    /// The guest is told the SynIC is there.
    pub synic: bool,
}

/// Packs up to 12 bytes into three little-endian registers, NUL-padded.
pub fn pack_vendor(id: &str) -> Result<[u32; 3], HypervError> {
    let b = id.as_bytes();
    if b.len() > 12 {
        return Err(HypervError::VendorTooLong(id.to_string()));
    }
    let mut bytes = [0u8; 12];
    bytes[..b.len()].copy_from_slice(b);
    let reg = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Ok([reg(0), reg(4), reg(8)])
}

fn leaf(function: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        ..Default::default()
    }
}

/// Builds the Hyper-V leaves from KVM's `KVM_GET_SUPPORTED_HV_CPUID` answer (`host`), keeping
/// only the enlightenments in the module's table. The SynIC is offered only with the hypercall
/// page and the VP index (it is addressed by VP index and its messages need hypercalls), and the
/// synthetic timers only with the SynIC and the reference counter they count.
pub fn build_leaves(
    host: &[kvm_cpuid_entry2],
    opts: &HypervOptions,
) -> Result<HypervLeaves, HypervError> {
    let find = |f: u32| {
        host.iter()
            .find(|e| e.function == f)
            .copied()
            .ok_or(HypervError::MissingLeaf(f))
    };
    let features = find(LEAF_FEATURES)?;
    let recommendations = find(LEAF_RECOMMENDATIONS)?;
    // Older kernels may leave these out; zeros are what Hyper-V guests then assume.
    let version = find(LEAF_VERSION).unwrap_or_else(|_| leaf(LEAF_VERSION));
    let limits = find(LEAF_LIMITS).unwrap_or_else(|_| leaf(LEAF_LIMITS));
    let vendor = pack_vendor(&opts.vendor_id)?;

    let mut eax = features.eax & FEATURES_EAX_KEPT;
    let mut edx = features.edx & FEATURES_EDX_KEPT;
    let mut rec = recommendations.eax & RECOMMENDATIONS_KEPT;
    // Dependencies between the kept features, as the TLFS states them.
    fn has(eax: u32, bits: u32) -> bool {
        eax & bits == bits
    }
    if !has(eax, EAX_HYPERCALL) {
        // Without the hypercall page nothing that is a hypercall may be recommended.
        rec &= !(REC_REMOTE_TLB_FLUSH | REC_CLUSTER_IPI | REC_EX_PROCESSOR_MASKS);
        eax &= !EAX_SYNIC;
    }
    if !has(eax, EAX_VP_INDEX) {
        // Flush and IPI hypercalls and the SynIC name processors by VP index.
        rec &= !(REC_REMOTE_TLB_FLUSH | REC_CLUSTER_IPI | REC_EX_PROCESSOR_MASKS);
        eax &= !EAX_SYNIC;
    }
    if !has(eax, EAX_APIC_ACCESS) {
        rec &= !REC_APIC_ACCESS;
    }
    if !has(eax, EAX_SYNIC) || !has(eax, EAX_TIME_REF_COUNT) {
        eax &= !EAX_SYNTIMER;
    }
    if !has(eax, EAX_SYNTIMER) {
        edx &= !EDX_STIMER_DIRECT;
    }
    if !has(eax, EAX_FREQUENCY_MSRS) {
        edx &= !EDX_FREQUENCY_MSRS;
    }
    if rec & (REC_REMOTE_TLB_FLUSH | REC_CLUSTER_IPI) == 0 {
        rec &= !REC_EX_PROCESSOR_MASKS;
    }
    // The spin-wait notification is a hypercall too.
    let spinlock_retries = if has(eax, EAX_HYPERCALL) {
        recommendations.ebx
    } else {
        0xffff_ffff
    };

    let mut entries: Vec<kvm_cpuid_entry2> = (LEAF_VENDOR..=LEAF_MAX).map(leaf).collect();
    let slot = |f: u32| (f - LEAF_VENDOR) as usize;
    entries[slot(LEAF_VENDOR)].eax = LEAF_MAX;
    entries[slot(LEAF_VENDOR)].ebx = vendor[0];
    entries[slot(LEAF_VENDOR)].ecx = vendor[1];
    entries[slot(LEAF_VENDOR)].edx = vendor[2];
    entries[slot(LEAF_INTERFACE)].eax = INTERFACE_HV1;
    let v = &mut entries[slot(LEAF_VERSION)];
    (v.eax, v.ebx, v.ecx, v.edx) = (version.eax, version.ebx, version.ecx, version.edx);
    let f = &mut entries[slot(LEAF_FEATURES)];
    (f.eax, f.edx) = (eax, edx);
    let r = &mut entries[slot(LEAF_RECOMMENDATIONS)];
    (r.eax, r.ebx) = (rec, spinlock_retries);
    let l = &mut entries[slot(LEAF_LIMITS)];
    (l.eax, l.ebx, l.ecx) = (limits.eax, limits.ebx, limits.ecx);
    Ok(HypervLeaves {
        entries,
        synic: eax & EAX_SYNIC != 0,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Linux 6.1's answer to KVM_GET_SUPPORTED_HV_CPUID on an AMD host (`kvm_get_hv_cpuid`:
    /// every bit it sets, no enlightened VMCS), leaf by leaf.
    pub(crate) fn linux_6_1() -> Vec<kvm_cpuid_entry2> {
        let e = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        let [b, c, d] = pack_vendor("Linux KVM Hv").unwrap();
        vec![
            e(0x4000_0000, 0x4000_0082, b, c, d),
            e(0x4000_0001, INTERFACE_HV1, 0, 0, 0),
            e(0x4000_0002, 0x3839, 0x000A_0000, 0, 0),
            // EAX: bits 0-7, 9, 11, 13, 15; EBX: post messages, signal events, debugging,
            // extended hypercalls; EDX: XMM input, frequency, crash, debug MSRs, GVA ranges,
            // direct stimers, guest debugging.
            e(
                0x4000_0003,
                0xff | 1 << 9 | 1 << 11 | 1 << 13 | 1 << 15,
                1 << 4 | 1 << 5 | 1 << 11 | 1 << 20,
                0,
                1 << 1 | 1 << 4 | 1 << 8 | 1 << 10 | 1 << 11 | 1 << 14 | 1 << 19,
            ),
            // Remote flush, APIC, relaxed, AEOI deprecation, cluster IPI, ex masks, no
            // non-architectural core sharing; spinlock retries 0xfff.
            e(
                0x4000_0004,
                1 << 2 | 1 << 3 | 1 << 5 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 18,
                0xfff,
                0,
                0,
            ),
            e(0x4000_0005, 1024, 64, 0, 0),
            e(0x4000_0080, 0, b, c, d),
            e(0x4000_0081, 0x3123_5356, 0, 0, 0),
            e(0x4000_0082, 1 << 1, 0, 0, 0),
            e(0x4000_000A, 1 << 17 | 1 << 19, 1, 0, 0),
        ]
    }

    fn get(l: &HypervLeaves, f: u32) -> kvm_cpuid_entry2 {
        *l.entries.iter().find(|e| e.function == f).unwrap()
    }

    fn vendor_of(e: &kvm_cpuid_entry2) -> Vec<u8> {
        [e.ebx, e.ecx, e.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect()
    }

    #[test]
    fn leaves_from_linux_6_1_keep_only_the_listed_enlightenments() {
        let l = build_leaves(&linux_6_1(), &HypervOptions::default()).unwrap();
        let functions: Vec<u32> = l.entries.iter().map(|e| e.function).collect();
        assert_eq!(functions, (0x4000_0000..=0x4000_000A).collect::<Vec<_>>());
        let v = get(&l, LEAF_VENDOR);
        assert_eq!(v.eax, 0x4000_000A);
        assert_eq!(vendor_of(&v), b"Microsoft Hv");
        assert_eq!(get(&l, LEAF_INTERFACE).eax, 0x3123_7648, "Hv#1");
        let ver = get(&l, LEAF_VERSION);
        assert_eq!((ver.eax, ver.ebx), (0x3839, 0x000A_0000));
        let f = get(&l, LEAF_FEATURES);
        // runtime, time ref count, synic, stimer, APIC, hypercall, VP index (0-6), reference
        // TSC (9), frequency MSRs (11); not reset (7), reenlightenment (13), invariant TSC (15).
        assert_eq!(f.eax, 0x7f | 1 << 9 | 1 << 11);
        assert_eq!(
            f.ebx, 0,
            "no message posting, events, debugging, extended hypercalls"
        );
        assert_eq!(
            f.edx,
            1 << 8 | 1 << 19,
            "frequencies and direct stimers only"
        );
        let r = get(&l, LEAF_RECOMMENDATIONS);
        assert_eq!(r.eax, 1 << 2 | 1 << 3 | 1 << 5 | 1 << 10 | 1 << 11);
        assert_eq!(r.ebx, 0xfff);
        let lim = get(&l, LEAF_LIMITS);
        assert_eq!((lim.eax, lim.ebx), (1024, 64));
        for f in 0x4000_0006..=0x4000_000A {
            let e = get(&l, f);
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0), "{f:#x}");
        }
        assert!(l.synic);
        for e in &l.entries {
            assert_eq!((e.index, e.flags), (0, 0));
        }
    }

    #[test]
    fn a_bit_the_host_lacks_is_never_set() {
        let mut host = linux_6_1();
        for e in host.iter_mut() {
            if e.function == LEAF_FEATURES {
                e.eax &= !(EAX_REFERENCE_TSC | EAX_FREQUENCY_MSRS);
                e.edx = 0;
            }
            if e.function == LEAF_RECOMMENDATIONS {
                e.eax &= !REC_CLUSTER_IPI;
            }
        }
        let l = build_leaves(&host, &HypervOptions::default()).unwrap();
        let f = get(&l, LEAF_FEATURES);
        assert_eq!(f.eax & (EAX_REFERENCE_TSC | EAX_FREQUENCY_MSRS), 0);
        assert_eq!(f.edx, 0);
        let r = get(&l, LEAF_RECOMMENDATIONS);
        assert_eq!(r.eax & REC_CLUSTER_IPI, 0);
        assert_ne!(r.eax & REC_REMOTE_TLB_FLUSH, 0);
    }

    #[test]
    fn dependencies_drop_what_cannot_work() {
        let with_eax = |clear: u32| {
            let mut host = linux_6_1();
            host.iter_mut()
                .find(|e| e.function == LEAF_FEATURES)
                .unwrap()
                .eax &= !clear;
            build_leaves(&host, &HypervOptions::default()).unwrap()
        };
        // No VP index: no SynIC, no stimers, no flush or IPI hypercalls.
        let l = with_eax(EAX_VP_INDEX);
        let (f, r) = (get(&l, LEAF_FEATURES), get(&l, LEAF_RECOMMENDATIONS));
        assert_eq!(f.eax & (EAX_SYNIC | EAX_SYNTIMER), 0);
        assert_eq!(f.edx & EDX_STIMER_DIRECT, 0);
        assert_eq!(
            r.eax & (REC_REMOTE_TLB_FLUSH | REC_CLUSTER_IPI | REC_EX_PROCESSOR_MASKS),
            0
        );
        assert!(!l.synic);
        // No hypercall page: the same, and spinlock notification off (all ones: never).
        let l = with_eax(EAX_HYPERCALL);
        assert_eq!(get(&l, LEAF_FEATURES).eax & EAX_SYNIC, 0);
        assert_eq!(get(&l, LEAF_RECOMMENDATIONS).ebx, 0xffff_ffff);
        // No reference counter: no stimers, the SynIC stays.
        let l = with_eax(EAX_TIME_REF_COUNT);
        let f = get(&l, LEAF_FEATURES);
        assert_eq!(f.eax & EAX_SYNTIMER, 0);
        assert_ne!(f.eax & EAX_SYNIC, 0);
        assert_eq!(f.edx & EDX_STIMER_DIRECT, 0);
        // No APIC MSRs: not recommended either.
        let l = with_eax(EAX_APIC_ACCESS);
        assert_eq!(get(&l, LEAF_RECOMMENDATIONS).eax & REC_APIC_ACCESS, 0);
        // No frequency MSRs: the EDX twin goes too.
        let l = with_eax(EAX_FREQUENCY_MSRS);
        assert_eq!(get(&l, LEAF_FEATURES).edx & EDX_FREQUENCY_MSRS, 0);
    }

    #[test]
    fn vendor_id_is_padded_and_bounded() {
        let opts = HypervOptions {
            vendor_id: "KVMKVMKVM".into(),
        };
        let l = build_leaves(&linux_6_1(), &opts).unwrap();
        assert_eq!(vendor_of(&get(&l, LEAF_VENDOR)), b"KVMKVMKVM\0\0\0");
        assert_eq!(pack_vendor("").unwrap(), [0, 0, 0]);
        assert_eq!(
            pack_vendor("0123456789abc"),
            Err(HypervError::VendorTooLong("0123456789abc".into()))
        );
    }

    #[test]
    fn an_answer_without_the_feature_leaves_is_refused() {
        for f in [LEAF_FEATURES, LEAF_RECOMMENDATIONS] {
            let host: Vec<_> = linux_6_1()
                .into_iter()
                .filter(|e| e.function != f)
                .collect();
            assert_eq!(
                build_leaves(&host, &HypervOptions::default()),
                Err(HypervError::MissingLeaf(f))
            );
        }
    }
}
