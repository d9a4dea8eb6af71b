//! MADT (signature `APIC`): one enabled local APIC per vCPU, the IOAPIC, QEMU's pc/q35 interrupt
//! source overrides and the LINT1 NMI.
//!
//! IOAPIC ID: 0, as QEMU's ACPI tables use. On xAPIC and x2APIC systems interrupts travel over
//! the system bus, so IOAPIC IDs and local APIC IDs are separate name spaces (Linux and Windows
//! only use the MADT IOAPIC ID to tell IOAPICs apart), and 0 is also what KVM's in-kernel IOAPIC
//! reports in its ID register after reset. The MP table, whose 1.4 spec predates that, uses a
//! different ID (see [`crate::mptable`]).

use acpi_tables::sdt::Sdt;

use super::{oem_table_id, OEM_ID, OEM_REVISION};
use crate::layout::{self, irqs};

/// The IOAPIC's ID in the MADT.
pub const MADT_IOAPIC_ID: u8 = 0;

/// MADT revision (ACPI 6.3+ layout; the structures used here date from revision 1).
const MADT_REVISION: u8 = 5;
/// Header length: standard header + local APIC address + flags.
const MADT_HEADER_LEN: u32 = 44;
/// Offset of the local interrupt controller address.
const LOCAL_APIC_ADDR_OFFSET: usize = 36;
/// Offset of the MADT flags.
const FLAGS_OFFSET: usize = 40;
/// MADT flag: the system also has dual 8259 PICs.
const PCAT_COMPAT: u32 = 1;

/// Structure types.
const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IOAPIC: u8 = 1;
const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;

/// Local APIC flag: the processor is usable.
const LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags (polarity bits 0–1, trigger mode bits 2–3).
const INTI_CONFORMS: u16 = 0;
const INTI_ACTIVE_HIGH: u16 = 0b01;
const INTI_LEVEL: u16 = 0b11 << 2;
/// ISA is bus 0 in interrupt source overrides.
const BUS_ISA: u8 = 0;
/// ISA IRQ of the PIT; the VMM routes it to IOAPIC pin 2, as QEMU does.
const ISA_IRQ_PIT: u8 = 0;
/// GSI the PIT is routed to.
const GSI_PIT: u32 = 2;
/// "All processors" in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;
/// The NMI is wired to LINT1.
const NMI_LINT: u8 = 1;

fn local_apic(uid: u8, apic_id: u8) -> Vec<u8> {
    let mut s = vec![TYPE_LOCAL_APIC, 8, uid, apic_id];
    s.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
    s
}

fn ioapic(id: u8, addr: u32, gsi_base: u32) -> Vec<u8> {
    let mut s = vec![TYPE_IOAPIC, 12, id, 0];
    s.extend_from_slice(&addr.to_le_bytes());
    s.extend_from_slice(&gsi_base.to_le_bytes());
    s
}

fn interrupt_source_override(source: u8, gsi: u32, flags: u16) -> Vec<u8> {
    let mut s = vec![TYPE_INTERRUPT_SOURCE_OVERRIDE, 10, BUS_ISA, source];
    s.extend_from_slice(&gsi.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

fn local_apic_nmi(uid: u8, flags: u16, lint: u8) -> Vec<u8> {
    let mut s = vec![TYPE_LOCAL_APIC_NMI, 6, uid];
    s.extend_from_slice(&flags.to_le_bytes());
    s.push(lint);
    s
}

/// Builds the MADT for `num_cpus` vCPUs with APIC IDs and ACPI processor UIDs `0..num_cpus`.
pub(super) fn build(num_cpus: u8) -> Vec<u8> {
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        oem_table_id(b"APIC"),
        OEM_REVISION,
    );
    // The LAPIC and IOAPIC sit below 4 GiB by the layout's definition.
    madt.write_u32(LOCAL_APIC_ADDR_OFFSET, layout::APIC_START as u32);
    madt.write_u32(FLAGS_OFFSET, PCAT_COMPAT);

    for cpu in 0..num_cpus {
        madt.append_slice(&local_apic(cpu, cpu));
    }
    madt.append_slice(&ioapic(MADT_IOAPIC_ID, layout::IOAPIC_START as u32, 0));
    madt.append_slice(&interrupt_source_override(
        ISA_IRQ_PIT,
        GSI_PIT,
        INTI_CONFORMS,
    ));
    // The SCI is level-triggered, active high (an ISA IRQ would default to edge).
    madt.append_slice(&interrupt_source_override(
        irqs::SCI as u8,
        irqs::SCI,
        INTI_LEVEL | INTI_ACTIVE_HIGH,
    ));
    madt.append_slice(&local_apic_nmi(ALL_PROCESSORS, INTI_CONFORMS, NMI_LINT));
    madt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_util::{check_header, le};

    /// The interrupt controller structures as (type, bytes).
    fn structures(b: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = 44;
        while off < b.len() {
            let len = usize::from(b[off + 1]);
            assert!(len >= 2 && off + len <= b.len(), "bad structure at {off}");
            out.push((b[off], &b[off..off + len]));
            off += len;
        }
        out
    }

    #[test]
    fn one_enabled_local_apic_per_cpu() {
        for n in [1u8, 2, 7, 255] {
            let b = build(n);
            check_header(&b, b"APIC");
            assert_eq!(le(&b, 36, 4), 0xfee0_0000, "local APIC address");
            assert_eq!(le(&b, 40, 4), 1, "PCAT_COMPAT");
            let lapics: Vec<_> = structures(&b)
                .into_iter()
                .filter(|(t, _)| *t == 0)
                .map(|(_, s)| s)
                .collect();
            assert_eq!(lapics.len(), usize::from(n));
            for (i, s) in lapics.iter().enumerate() {
                assert_eq!(s.len(), 8);
                assert_eq!(usize::from(s[2]), i, "ACPI processor UID");
                assert_eq!(usize::from(s[3]), i, "APIC ID");
                assert_eq!(le(s, 4, 4), 1, "enabled");
            }
        }
    }

    #[test]
    fn ioapic_overrides_and_nmi() {
        let b = build(4);
        let s = structures(&b);
        let ioapics: Vec<_> = s.iter().filter(|(t, _)| *t == 1).collect();
        assert_eq!(ioapics.len(), 1);
        let io = ioapics[0].1;
        assert_eq!(io[2], MADT_IOAPIC_ID);
        assert_eq!(le(io, 4, 4), 0xfec0_0000);
        assert_eq!(le(io, 8, 4), 0, "GSI base");

        // (bus, source IRQ, GSI, flags)
        let isos: Vec<_> = s
            .iter()
            .filter(|(t, _)| *t == 2)
            .map(|(_, x)| (x[2], x[3], le(x, 4, 4), le(x, 8, 2)))
            .collect();
        assert_eq!(isos, vec![(0, 0, 2, 0), (0, 9, 9, 0b1101)]);

        let nmis: Vec<_> = s.iter().filter(|(t, _)| *t == 4).collect();
        assert_eq!(nmis.len(), 1);
        let nmi = nmis[0].1;
        assert_eq!((nmi[2], le(nmi, 3, 2), nmi[5]), (0xff, 0, 1));
        // Nothing else.
        assert_eq!(s.len(), 4 + 1 + 2 + 1);
    }
}
