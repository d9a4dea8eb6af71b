//! The CPUID a vCPU sees: what KVM supports, with the topology, the hypervisor bit and the
//! KVM signature/timing leaves filled in for this VM.
//!
//! KVM's leaves sit at 0x4000_0000 (signature, features) and 0x4000_0010 (timing) unless the VM
//! has Hyper-V enlightenments ([`crate::hyperv`]): then the Hyper-V leaves take 0x4000_0000 and
//! KVM's move to 0x4000_0100 and 0x4000_0110 (Linux and KVM find KVM's signature at any multiple
//! of 0x100 up to 0x4000_FF00; Windows reads only 0x4000_0000). With `hide_kvm` KVM's leaves are
//! left out wherever they would be; the hypervisor bit of leaf 1 stays.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::hyperv::KVM_BASE_WITH_HYPERV;

/// Leaf of the hypervisor signature ("KVMKVMKVM\0\0\0").
pub const HYPERVISOR_SIGNATURE_LEAF: u32 = 0x4000_0000;
/// Hypervisor timing leaf: EAX = TSC frequency in kHz, EBX = LAPIC bus frequency in kHz.
pub const HYPERVISOR_TIMING_LEAF: u32 = 0x4000_0010;
/// KVM's LAPIC timer runs at 1 GHz.
const LAPIC_BUS_KHZ: u32 = 1_000_000;
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d]; // "KVMKVMKVM\0\0\0"

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Errors from building a vCPU's CPUID.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// The CPUID table has no room for a leaf we must add.
    #[error("the CPUID table is full; cannot add leaf {0:#x}")]
    Full(u32),
}

/// Per-vCPU facts that shape its CPUID.
#[derive(Debug, Clone, Copy)]
pub struct CpuidParams<'a> {
    /// This vCPU's index, which is also its APIC id.
    pub cpu_id: u8,
    /// Number of vCPUs in the VM.
    pub cpu_count: u8,
    /// Guest TSC frequency in kHz (KVM_GET_TSC_KHZ), if known.
    pub tsc_khz: Option<u32>,
    /// The Hyper-V leaves ([`crate::hyperv::build_leaves`]); `None` without enlightenments.
    pub hyperv: Option<&'a [kvm_cpuid_entry2]>,
    /// Leave KVM's own leaves out (for guest drivers that refuse to run under KVM).
    pub hide_kvm: bool,
}

/// Number of bits needed to number `n` things (the APIC-id shift for a topology level).
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts KVM's supported CPUID (`cpuid`) for one vCPU: APIC ids and core counts (one socket,
/// one thread per core), the hypervisor bit, the KVM signature leaf and a TSC-frequency leaf,
/// then the Hyper-V leaves and KVM's moved or hidden as `p` asks.
pub fn filter_cpuid(cpuid: &mut CpuId, p: &CpuidParams) -> Result<(), CpuidError> {
    let count = u32::from(p.cpu_count.max(1));
    let apic_id = u32::from(p.cpu_id);
    let mut has_timing_leaf = false;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            4 => {
                // Deterministic cache parameters: cores per package in EAX[31:26].
                entry.eax = (entry.eax & 0x03ff_ffff) | ((count - 1) << 26);
                // Threads sharing this cache, EAX[25:14]: L1/L2 per core, L3 per package.
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = if cache_level >= 3 { count - 1 } else { 0 };
                entry.eax = (entry.eax & !(0xfff << 14)) | (sharing << 14);
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread), level 1 = core (count cores).
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 1 << 8;
                    }
                    1 => {
                        entry.eax = id_bits(count);
                        entry.ebx = count;
                        entry.ecx = (2 << 8) | 1;
                    }
                    i => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = i & 0xff;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: number of cores minus one in ECX[7:0], APIC id size in ECX[15:12].
                entry.ecx = (entry.ecx & !0xf0ff) | (count - 1) | (id_bits(count) << 12);
            }
            HYPERVISOR_SIGNATURE_LEAF => {
                entry.eax = HYPERVISOR_TIMING_LEAF;
                entry.ebx = KVM_SIGNATURE[0];
                entry.ecx = KVM_SIGNATURE[1];
                entry.edx = KVM_SIGNATURE[2];
            }
            HYPERVISOR_TIMING_LEAF => has_timing_leaf = true,
            _ => {}
        }
    }
    if let (Some(tsc_khz), false) = (p.tsc_khz, has_timing_leaf) {
        let leaf = kvm_cpuid_entry2 {
            function: HYPERVISOR_TIMING_LEAF,
            index: 0,
            flags: 0,
            eax: tsc_khz,
            ebx: LAPIC_BUS_KHZ,
            ..Default::default()
        };
        cpuid
            .push(leaf)
            .map_err(|_| CpuidError::Full(HYPERVISOR_TIMING_LEAF))?;
    }
    place_hypervisor_leaves(cpuid, p.hyperv, p.hide_kvm)
}

/// Whether `e` is one of KVM's leaves as KVM_GET_SUPPORTED_CPUID places them (0x4000_00xx).
fn is_kvm_leaf(e: &kvm_cpuid_entry2) -> bool {
    (HYPERVISOR_SIGNATURE_LEAF..KVM_BASE_WITH_HYPERV).contains(&e.function)
}

/// Moves KVM's leaves to 0x4000_0100 under the Hyper-V leaves, or drops them (`hide_kvm`).
fn place_hypervisor_leaves(
    cpuid: &mut CpuId,
    hyperv: Option<&[kvm_cpuid_entry2]>,
    hide_kvm: bool,
) -> Result<(), CpuidError> {
    if hyperv.is_none() && !hide_kvm {
        return Ok(());
    }
    let kvm: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| is_kvm_leaf(e))
        .copied()
        .collect();
    cpuid.retain(|e| !is_kvm_leaf(e));
    let shift = KVM_BASE_WITH_HYPERV - HYPERVISOR_SIGNATURE_LEAF;
    let moved = kvm.into_iter().filter(|_| !hide_kvm).map(|mut e| {
        if e.function == HYPERVISOR_SIGNATURE_LEAF {
            // The signature leaf's EAX is the highest KVM leaf.
            e.eax += shift;
        }
        e.function += shift;
        e
    });
    for e in hyperv.unwrap_or_default().iter().copied().chain(moved) {
        cpuid.push(e).map_err(|_| CpuidError::Full(e.function))?;
    }
    Ok(())
}

/// Marks a leaf's index as significant; exposed for tests building synthetic tables.
pub fn indexed(function: u32, index: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CpuId {
        let entries = vec![
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xdead_0800,
                ..Default::default()
            },
            indexed(0xb, 0),
            indexed(0xb, 1),
            kvm_cpuid_entry2 {
                function: HYPERVISOR_SIGNATURE_LEAF,
                eax: 0x4000_0001,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: KVM_FEATURES_LEAF,
                eax: 0x0100_7afb,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn topology_and_signature() {
        let mut c = table();
        let p = CpuidParams {
            cpu_id: 3,
            cpu_count: 4,
            tsc_khz: Some(2_500_000),
            hyperv: None,
            hide_kvm: false,
        };
        filter_cpuid(&mut c, &p).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (2, 4, 3));
        let sig = find(&c, HYPERVISOR_SIGNATURE_LEAF, 0);
        assert_eq!(sig.eax, HYPERVISOR_TIMING_LEAF);
        let bytes: Vec<u8> = [sig.ebx, sig.ecx, sig.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&bytes[..9], b"KVMKVMKVM");
        let t = find(&c, HYPERVISOR_TIMING_LEAF, 0);
        assert_eq!((t.eax, t.ebx), (2_500_000, LAPIC_BUS_KHZ));
    }

    const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

    fn functions(c: &CpuId) -> Vec<u32> {
        let mut f: Vec<u32> = c
            .as_slice()
            .iter()
            .map(|e| e.function)
            .filter(|f| f >> 28 == 4)
            .collect();
        f.sort();
        f
    }

    fn signature(e: &kvm_cpuid_entry2) -> Vec<u8> {
        [e.ebx, e.ecx, e.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect()
    }

    fn params(hyperv: Option<&[kvm_cpuid_entry2]>, hide_kvm: bool) -> CpuidParams<'_> {
        CpuidParams {
            cpu_id: 0,
            cpu_count: 1,
            tsc_khz: Some(1_000_000),
            hyperv,
            hide_kvm,
        }
    }

    #[test]
    fn with_hyperv_kvm_moves_to_0x40000100() {
        let hv = crate::hyperv::build_leaves(
            &crate::hyperv::tests::linux_6_1(),
            &crate::hyperv::HypervOptions::default(),
        )
        .unwrap();
        let mut c = table();
        filter_cpuid(&mut c, &params(Some(&hv.entries), false)).unwrap();
        let mut want: Vec<u32> = (0x4000_0000..=0x4000_000A).collect();
        want.extend([0x4000_0100, 0x4000_0101, 0x4000_0110]);
        assert_eq!(functions(&c), want);
        let hv0 = find(&c, 0x4000_0000, 0);
        assert_eq!(&signature(&hv0), b"Microsoft Hv");
        assert_eq!(hv0.eax, 0x4000_000A);
        let kvm = find(&c, 0x4000_0100, 0);
        assert_eq!(&signature(&kvm)[..9], b"KVMKVMKVM");
        assert_eq!(
            kvm.eax, 0x4000_0110,
            "the highest KVM leaf: the timing leaf"
        );
        assert_eq!(
            find(&c, 0x4000_0101, 0).eax,
            0x0100_7afb,
            "KVM features kept"
        );
        assert_eq!(find(&c, 0x4000_0110, 0).eax, 1_000_000);
        assert_ne!(find(&c, 1, 0).ecx & ECX_HYPERVISOR, 0);
    }

    #[test]
    fn hide_kvm_drops_every_kvm_leaf_and_keeps_the_hypervisor_bit() {
        let hv = crate::hyperv::build_leaves(
            &crate::hyperv::tests::linux_6_1(),
            &crate::hyperv::HypervOptions::default(),
        )
        .unwrap();
        let mut c = table();
        filter_cpuid(&mut c, &params(Some(&hv.entries), true)).unwrap();
        let want: Vec<u32> = (0x4000_0000..=0x4000_000A).collect();
        assert_eq!(functions(&c), want);
        assert_eq!(&signature(&find(&c, 0x4000_0000, 0)), b"Microsoft Hv");

        let mut c = table();
        filter_cpuid(&mut c, &params(None, true)).unwrap();
        assert_eq!(functions(&c), Vec::<u32>::new());
        assert_ne!(find(&c, 1, 0).ecx & ECX_HYPERVISOR, 0);
        assert!(
            c.as_slice().iter().any(|e| e.function == 0xb),
            "other leaves kept"
        );
    }

    #[test]
    fn without_either_kvm_stays_at_0x40000000() {
        let mut c = table();
        filter_cpuid(&mut c, &params(None, false)).unwrap();
        assert_eq!(functions(&c), vec![0x4000_0000, 0x4000_0001, 0x4000_0010]);
    }

    #[test]
    fn id_bits_counts() {
        assert_eq!([1, 2, 3, 4, 5, 255].map(id_bits), [0, 1, 2, 2, 3, 8]);
    }
}
