//! Hyper-V enlightenments on the host side: asking KVM what it offers
//! (`KVM_GET_SUPPORTED_HV_CPUID`), deciding from `--hyperv` and `--firmware` whether the guest
//! gets them, and turning on what each vCPU needs (`KVM_CAP_HYPERV_SYNIC2`,
//! `KVM_CAP_HYPERV_ENFORCE_CPUID`). The leaves themselves are [`arch::hyperv`]'s.

use std::os::unix::io::AsRawFd;

use arch::hyperv::{HypervLeaves, HypervOptions};
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, CpuId, KVM_CAP_HYPERV_CPUID, KVM_CAP_HYPERV_ENFORCE_CPUID,
    KVM_CAP_HYPERV_SYNIC2, KVM_CAP_SYS_HYPERV_CPUID,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::errno;
use vmm_sys_util::ioctl::ioctl_with_mut_ptr;

use crate::config::{HypervMode, VmConfig};

/// The one ioctl kvm-ioctls 0.25 lacks (`KVM_GET_SUPPORTED_HV_CPUID`, `_IOWR(KVMIO, 0xc1,
/// struct kvm_cpuid2)` in Linux's `uapi/linux/kvm.h`).
mod ioctls {
    vmm_sys_util::ioctl_iowr_nr!(
        KVM_GET_SUPPORTED_HV_CPUID,
        kvm_bindings::KVMIO,
        0xc1,
        kvm_bindings::kvm_cpuid2
    );
}
use ioctls::KVM_GET_SUPPORTED_HV_CPUID;

/// Room for KVM's answer: Linux 6.x returns 10 leaves and fails with E2BIG below that.
const HV_CPUID_ENTRIES: usize = 64;

/// Errors deciding on or setting up the enlightenments.
#[derive(Debug, thiserror::Error)]
pub enum HypervError {
    /// `--hyperv on` on a host whose KVM has no Hyper-V support.
    #[error("--hyperv on: this host's KVM offers no Hyper-V enlightenments (neither KVM_CAP_SYS_HYPERV_CPUID nor KVM_CAP_HYPERV_CPUID: a kernel built without CONFIG_KVM_HYPERV, or a paravirtualized KVM): leave out --hyperv on, or run on a host whose KVM has them")]
    Unsupported,
    /// KVM_GET_SUPPORTED_HV_CPUID failed although the capability is there.
    #[error("cannot read the host's Hyper-V CPUID (KVM_GET_SUPPORTED_HV_CPUID on the {on} fd): {err}; run with --hyperv off")]
    Query {
        /// "system" or "vCPU".
        on: &'static str,
        /// The error.
        err: errno::Error,
    },
    /// KVM's answer lacks what every Hyper-V guest reads, or the vendor id is too long.
    #[error(transparent)]
    Leaves(#[from] arch::hyperv::HypervError),
    /// Turning on a per-vCPU capability failed.
    #[error("cannot enable {cap} on vCPU {cpu}: {err}; run with --hyperv off")]
    EnableCap {
        /// The capability's name.
        cap: &'static str,
        /// The vCPU.
        cpu: u32,
        /// The error.
        err: errno::Error,
    },
}

/// What the VM's vCPUs get: the leaves and the per-vCPU capabilities to turn on.
#[derive(Debug, Clone)]
pub struct HypervPlan {
    /// The Hyper-V leaves (0x4000_0000–0x4000_000A).
    pub leaves: HypervLeaves,
    /// `KVM_CAP_HYPERV_ENFORCE_CPUID` is there: KVM then refuses the guest what the leaves
    /// leave out.
    pub enforce: bool,
}

/// Calls `KVM_GET_SUPPORTED_HV_CPUID` on `fd`: the system fd (with `KVM_CAP_SYS_HYPERV_CPUID`)
/// or a vCPU fd (with `KVM_CAP_HYPERV_CPUID`).
fn get_supported_hv_cpuid<F: AsRawFd>(fd: &F) -> Result<Vec<kvm_cpuid_entry2>, errno::Error> {
    let mut cpuid = CpuId::new(HV_CPUID_ENTRIES).map_err(|_| errno::Error::new(libc::ENOMEM))?;
    // SAFETY: `cpuid` is a kvm_cpuid2 header followed by room for `nent` (HV_CPUID_ENTRIES)
    // entries, allocated by CpuId; the kernel writes at most `nent` entries and lowers `nent`
    // to the number written. `fd` is an open KVM system or vCPU fd for the duration of the call.
    let ret = unsafe {
        ioctl_with_mut_ptr(
            fd,
            KVM_GET_SUPPORTED_HV_CPUID(),
            cpuid.as_mut_fam_struct_ptr(),
        )
    };
    if ret < 0 {
        return Err(errno::Error::last());
    }
    Ok(cpuid.as_slice().to_vec())
}

/// What the host's KVM offers, or `None` when it has no Hyper-V support. Kernels since 5.11 answer
/// on the system fd; older ones (5.0–5.10) only on a vCPU's, so a throwaway VM with an irqchip
/// (KVM offers direct synthetic timers only with an in-kernel LAPIC) and one vCPU is made for
/// the question.
pub fn host_leaves(kvm: &Kvm) -> Result<Option<Vec<kvm_cpuid_entry2>>, HypervError> {
    if kvm.check_extension_raw(KVM_CAP_SYS_HYPERV_CPUID.into()) > 0 {
        return get_supported_hv_cpuid(kvm)
            .map(Some)
            .map_err(|err| HypervError::Query { on: "system", err });
    }
    if kvm.check_extension_raw(KVM_CAP_HYPERV_CPUID.into()) <= 0 {
        return Ok(None);
    }
    let query = || -> Result<Vec<kvm_cpuid_entry2>, errno::Error> {
        let vm = kvm.create_vm()?;
        vm.create_irq_chip()?;
        let vcpu = vm.create_vcpu(0)?;
        get_supported_hv_cpuid(&vcpu)
    };
    query()
        .map(Some)
        .map_err(|err| HypervError::Query { on: "vCPU", err })
}

/// Whether the command line asks for the enlightenments (`--hyperv on`, or a firmware boot
/// without the flag), before the host is asked whether it has them.
pub fn wanted(config: &VmConfig) -> bool {
    match config.hyperv {
        HypervMode::Off => false,
        HypervMode::On => true,
        HypervMode::Auto => config.firmware.is_some(),
    }
}

/// Whether the guest gets the enlightenments, given the command line and what the host offers
/// (`host`, from [`host_leaves`]): `--hyperv on` needs them, `--hyperv off` never has them, and
/// without the flag a firmware boot has them when the host offers them.
pub fn decide(
    config: &VmConfig,
    host: Option<&[kvm_cpuid_entry2]>,
    enforce_available: bool,
) -> Result<Option<HypervPlan>, HypervError> {
    if !wanted(config) {
        return Ok(None);
    }
    let Some(host) = host else {
        if config.hyperv == HypervMode::On {
            return Err(HypervError::Unsupported);
        }
        log::info!("hyperv: the host's KVM offers no Hyper-V enlightenments; the guest gets none");
        return Ok(None);
    };
    let opts = HypervOptions {
        vendor_id: config
            .cpu
            .hv_vendor_id
            .clone()
            .unwrap_or_else(|| arch::hyperv::DEFAULT_VENDOR_ID.to_string()),
    };
    let leaves = arch::hyperv::build_leaves(host, &opts)?;
    log::info!(
        "hyperv: leaves 0x40000000-0x4000000a (features {:#x}/{:#x}, recommendations {:#x}){}",
        leaves.entries[3].eax,
        leaves.entries[3].edx,
        leaves.entries[4].eax,
        if config.cpu.hide_kvm {
            ", KVM's leaves hidden"
        } else {
            ", KVM's leaves at 0x40000100"
        }
    );
    Ok(Some(HypervPlan {
        leaves,
        enforce: enforce_available,
    }))
}

/// Whether the host's KVM can enforce the Hyper-V CPUID on each vCPU.
pub fn enforce_available(kvm: &Kvm) -> bool {
    kvm.check_extension_raw(KVM_CAP_HYPERV_ENFORCE_CPUID.into()) > 0
}

/// Turns on, for vCPU `cpu`, what its Hyper-V leaves promise: the SynIC (version 2, which
/// does not clear the message and event pages on enable) and CPUID enforcement.
pub fn enable_on_vcpu(fd: &VcpuFd, cpu: u32, plan: &HypervPlan) -> Result<(), HypervError> {
    let enable = |cap: u32, name: &'static str, arg: u64| {
        let mut c = kvm_enable_cap {
            cap,
            ..Default::default()
        };
        c.args[0] = arg;
        fd.enable_cap(&c).map_err(|err| HypervError::EnableCap {
            cap: name,
            cpu,
            err,
        })
    };
    if plan.leaves.synic {
        enable(KVM_CAP_HYPERV_SYNIC2, "KVM_CAP_HYPERV_SYNIC2", 0)?;
    }
    if plan.enforce {
        enable(
            KVM_CAP_HYPERV_ENFORCE_CPUID,
            "KVM_CAP_HYPERV_ENFORCE_CPUID",
            1,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FirmwareConfig;

    fn host() -> Vec<kvm_cpuid_entry2> {
        let e = |function, eax, ebx| kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ..Default::default()
        };
        vec![
            e(0x4000_0003, 0x7f | 1 << 9 | 1 << 11, 0),
            e(0x4000_0004, 1 << 5, 0xfff),
        ]
    }

    fn config(hyperv: HypervMode, firmware: bool) -> VmConfig {
        let mut c = VmConfig::new("k");
        c.hyperv = hyperv;
        if firmware {
            c.firmware = Some(FirmwareConfig {
                code: "OVMF_CODE_4M.fd".into(),
                vars: None,
            });
        }
        c
    }

    #[test]
    fn default_is_on_with_firmware_when_the_host_offers_it() {
        let h = host();
        let on = |c: &VmConfig, h: Option<&[kvm_cpuid_entry2]>| decide(c, h, true).unwrap();
        assert!(on(&config(HypervMode::Auto, true), Some(&h)).is_some());
        assert!(on(&config(HypervMode::Auto, true), None).is_none());
        assert!(on(&config(HypervMode::Auto, false), Some(&h)).is_none());
        assert!(on(&config(HypervMode::On, false), Some(&h)).is_some());
        assert!(on(&config(HypervMode::Off, true), Some(&h)).is_none());
        let plan = on(&config(HypervMode::On, false), Some(&h)).unwrap();
        assert!(plan.enforce && plan.leaves.synic);
    }

    #[test]
    fn on_without_host_support_is_one_clear_error() {
        let err = decide(&config(HypervMode::On, true), None, false).unwrap_err();
        assert!(matches!(err, HypervError::Unsupported));
        assert!(err
            .to_string()
            .starts_with("--hyperv on: this host's KVM offers no Hyper-V enlightenments"));
    }

    #[test]
    fn the_vendor_id_reaches_the_leaves() {
        let mut c = config(HypervMode::On, false);
        c.cpu.hv_vendor_id = Some("VFIOVMVFIOVM".into());
        let plan = decide(&c, Some(&host()), false).unwrap().unwrap();
        let v = plan.leaves.entries[0];
        let bytes: Vec<u8> = [v.ebx, v.ecx, v.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(bytes, b"VFIOVMVFIOVM");
    }

    #[test]
    fn messages() {
        let e = HypervError::Query {
            on: "system",
            err: errno::Error::new(libc::E2BIG),
        };
        assert_eq!(
            e.to_string(),
            "cannot read the host's Hyper-V CPUID (KVM_GET_SUPPORTED_HV_CPUID on the system fd): Argument list too long (os error 7); run with --hyperv off"
        );
        let e = HypervError::EnableCap {
            cap: "KVM_CAP_HYPERV_SYNIC2",
            cpu: 1,
            err: errno::Error::new(libc::EINVAL),
        };
        assert_eq!(
            e.to_string(),
            "cannot enable KVM_CAP_HYPERV_SYNIC2 on vCPU 1: Invalid argument (os error 22); run with --hyperv off"
        );
        let e = HypervError::from(arch::hyperv::HypervError::MissingLeaf(0x4000_0003));
        assert_eq!(
            e.to_string(),
            "the host's KVM_GET_SUPPORTED_HV_CPUID has no leaf 0x40000003: this KVM's Hyper-V support is too old or incomplete; run with --hyperv off"
        );
    }

    /// On a host whose KVM answers (not this project's machine), the answer has the leaves
    /// every Hyper-V guest reads; here the test checks that the host says it cannot.
    #[test]
    fn the_host_answers_or_says_it_cannot() {
        let kvm = Kvm::new().unwrap();
        match host_leaves(&kvm).unwrap() {
            Some(leaves) => {
                let interface = leaves.iter().find(|e| e.function == 0x4000_0001).unwrap();
                assert_eq!(interface.eax, arch::hyperv::INTERFACE_HV1);
                arch::hyperv::build_leaves(&leaves, &HypervOptions::default()).unwrap();
            }
            None => {
                assert!(kvm.check_extension_raw(KVM_CAP_HYPERV_CPUID.into()) <= 0);
                // The ioctl itself is refused, as the capability says.
                assert!(get_supported_hv_cpuid(&kvm).is_err());
            }
        }
    }
}
