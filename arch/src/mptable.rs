//! Intel MultiProcessor Specification 1.4 tables, for guests that boot without ACPI.
//!
//! The floating pointer and the configuration table sit together in the first KiB of the EBDA
//! (`layout::EBDA_START..layout::BIOS_AREA_START`), where Linux looks for them. Entries, in the
//! order the spec requires:
//!
//! - one processor per vCPU (APIC ID = index, the BSP flag on vCPU 0);
//! - bus 0 = PCI, bus 1 = ISA;
//! - the IOAPIC, with ID `num_cpus` (the first ID after the CPUs: MP 1.4 assumes one APIC ID
//!   space, and SeaBIOS makes the same choice; the ACPI MADT uses ID 0, see `acpi::MADT_IOAPIC_ID`);
//! - I/O interrupts for ISA IRQs 0–15 as the MADT describes them: IRQ 0 → pin 2, IRQ 2 (the PIC
//!   cascade) left out, IRQ 9 (SCI) level-triggered active high, the rest identity-mapped;
//! - I/O interrupts for INTA#–INTD# of PCI slots [`MPTABLE_FIRST_PCI_SLOT`]..=[`MPTABLE_LAST_PCI_SLOT`]
//!   on bus 0, to the pins [`layout::pci_intx_gsi`] gives;
//! - local interrupts: ExtINT on LINT0 and NMI on LINT1 of every local APIC.
//!
//! One KiB is tight: the fixed part (pointer, header, buses, IOAPIC, 15 ISA and 2 local
//! interrupt entries: 220 bytes) plus 4 × 8 bytes per PCI slot leaves room for 20 bytes per
//! processor. Covering slots 1–15 (480 bytes) leaves room for [`MPTABLE_MAX_CPUS`] = 16 vCPUs;
//! both limits are checked at compile time, and [`setup_mptable`] refuses more vCPUs. Guests with
//! more vCPUs, or devices in higher slots, need ACPI (which has no such limit). A device in a
//! slot the MP table leaves out still gets its IRQ from the config-space Interrupt Line under
//! Linux.

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use crate::layout::{self, irqs};

/// First PCI slot (bus 0) the MP table has interrupt entries for.
pub const MPTABLE_FIRST_PCI_SLOT: u8 = 1;
/// Last PCI slot (bus 0) the MP table has interrupt entries for.
pub const MPTABLE_LAST_PCI_SLOT: u8 = 15;
/// Most vCPUs whose processor entries fit in the EBDA next to everything else.
pub const MPTABLE_MAX_CPUS: u8 = {
    let room = (EBDA_SIZE - table_len(0)) / PROCESSOR_ENTRY_LEN;
    assert!(room >= 1 && room <= u8::MAX as usize);
    room as u8
};

/// Bytes available for the MP structures.
const EBDA_SIZE: usize = (layout::BIOS_AREA_START - layout::EBDA_START) as usize;

const FLOATING_POINTER_LEN: usize = 16;
const CONFIG_HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
/// Every entry other than a processor is 8 bytes.
const ENTRY_LEN: usize = 8;

const NUM_BUSES: usize = 2;
const NUM_IOAPICS: usize = 1;
const ISA_IRQS: u8 = 16;
/// ISA IRQ 2 is the PIC cascade and never raised.
const ISA_IRQ_CASCADE: u8 = 2;
const NUM_ISA_INTERRUPTS: usize = ISA_IRQS as usize - 1;
const INTX_PINS: u8 = 4;
const NUM_PCI_INTERRUPTS: usize =
    (MPTABLE_LAST_PCI_SLOT - MPTABLE_FIRST_PCI_SLOT + 1) as usize * INTX_PINS as usize;
const NUM_LOCAL_INTERRUPTS: usize = 2;

/// Size of the floating pointer plus the configuration table for `num_cpus` processors.
const fn table_len(num_cpus: usize) -> usize {
    FLOATING_POINTER_LEN
        + CONFIG_HEADER_LEN
        + num_cpus * PROCESSOR_ENTRY_LEN
        + (NUM_BUSES + NUM_IOAPICS + NUM_ISA_INTERRUPTS + NUM_PCI_INTERRUPTS + NUM_LOCAL_INTERRUPTS)
            * ENTRY_LEN
}

const _: () = assert!(table_len(MPTABLE_MAX_CPUS as usize) <= EBDA_SIZE);
// The MP table holds 32-bit addresses.
const _: () = assert!(layout::APIC_START <= u32::MAX as u64);
const _: () = assert!(layout::IOAPIC_START <= u32::MAX as u64);

/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;
const OEM_ID: &[u8; 8] = b"VFIOVM  ";
const PRODUCT_ID: &[u8; 12] = b"VFIOVM-Q35  ";

/// Entry types.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

/// Bus IDs.
const BUS_PCI: u8 = 0;
const BUS_ISA: u8 = 1;

/// Processor flags.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;
/// Local APIC version of KVM's in-kernel LAPIC (integrated xAPIC).
const LAPIC_VERSION: u8 = 0x14;
/// CPU signature: family 6.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX features: FPU and on-chip APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// IOAPIC version of KVM's in-kernel IOAPIC; the IOAPIC is usable.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;

/// Interrupt types.
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Interrupt flags (polarity bits 0–1, trigger bits 2–3).
const INT_CONFORMS: u16 = 0;
const INT_ACTIVE_HIGH: u16 = 0b01;
const INT_ACTIVE_LOW: u16 = 0b11;
const INT_LEVEL: u16 = 0b11 << 2;
/// Local interrupt destination "all local APICs".
const ALL_LAPICS: u8 = 0xff;

/// Errors building or writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// The configuration has no vCPU.
    #[error("cannot build an MP table for a guest with 0 vCPUs")]
    NoCpus,
    /// More vCPUs than fit in the EBDA.
    #[error(
        "the MP table fits at most {max} vCPUs in the EBDA, not {requested}; boot the guest with \
         ACPI for more vCPUs"
    )]
    TooManyCpus {
        /// Requested vCPU count.
        requested: u8,
        /// The most the table holds.
        max: u8,
    },
    /// Writing the table into guest memory failed.
    #[error(
        "cannot write the MP table to guest memory at {addr:#x}; guest RAM must cover the EBDA"
    )]
    GuestMemory {
        /// Guest physical address.
        addr: u64,
        /// The underlying vm-memory error.
        #[source]
        source: GuestMemoryError,
    },
}

/// The 8-bit value that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, &b| acc.wrapping_sub(b))
}

fn processor(apic_id: u8, bsp: bool) -> Vec<u8> {
    let flags = CPU_ENABLED | if bsp { CPU_BSP } else { 0 };
    let mut e = vec![ENTRY_PROCESSOR, apic_id, LAPIC_VERSION, flags];
    e.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
    e.extend_from_slice(&CPU_FEATURES.to_le_bytes());
    e.extend_from_slice(&[0; 8]);
    e
}

fn bus(id: u8, kind: &[u8; 6]) -> Vec<u8> {
    let mut e = vec![ENTRY_BUS, id];
    e.extend_from_slice(kind);
    e
}

fn ioapic(id: u8) -> Vec<u8> {
    let mut e = vec![ENTRY_IOAPIC, id, IOAPIC_VERSION, IOAPIC_ENABLED];
    e.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    e
}

/// An I/O or local interrupt entry; `dest` is the IOAPIC ID or local APIC ID, `pin` the
/// IOAPIC INTIN# or the LINTIN#.
fn interrupt(entry: u8, kind: u8, flags: u16, bus: u8, bus_irq: u8, dest: u8, pin: u8) -> Vec<u8> {
    let mut e = vec![entry, kind];
    e.extend_from_slice(&flags.to_le_bytes());
    e.extend_from_slice(&[bus, bus_irq, dest, pin]);
    e
}

/// Builds the floating pointer followed by the configuration table, for placing at
/// `layout::EBDA_START`.
pub fn build_mptable(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MPTABLE_MAX_CPUS {
        return Err(MptableError::TooManyCpus {
            requested: num_cpus,
            max: MPTABLE_MAX_CPUS,
        });
    }
    let ioapic_id = num_cpus;

    let mut entries: Vec<Vec<u8>> = Vec::new();
    for cpu in 0..num_cpus {
        entries.push(processor(cpu, cpu == 0));
    }
    entries.push(bus(BUS_PCI, b"PCI   "));
    entries.push(bus(BUS_ISA, b"ISA   "));
    entries.push(ioapic(ioapic_id));
    for irq in (0..ISA_IRQS).filter(|&irq| irq != ISA_IRQ_CASCADE) {
        let (pin, flags) = match irq {
            0 => (2, INT_CONFORMS),
            i if u32::from(i) == irqs::SCI => (i, INT_LEVEL | INT_ACTIVE_HIGH),
            i => (i, INT_CONFORMS),
        };
        entries.push(interrupt(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            flags,
            BUS_ISA,
            irq,
            ioapic_id,
            pin,
        ));
    }
    for slot in MPTABLE_FIRST_PCI_SLOT..=MPTABLE_LAST_PCI_SLOT {
        for pin in 0..INTX_PINS {
            // GSIs 16–23 are IOAPIC pins, so they fit in a byte.
            let gsi = layout::pci_intx_gsi(slot, pin) as u8;
            entries.push(interrupt(
                ENTRY_IO_INTERRUPT,
                INT_TYPE_INT,
                INT_LEVEL | INT_ACTIVE_LOW,
                BUS_PCI,
                (slot << 2) | pin,
                ioapic_id,
                gsi,
            ));
        }
    }
    entries.push(interrupt(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        INT_CONFORMS,
        BUS_ISA,
        0,
        ALL_LAPICS,
        0,
    ));
    entries.push(interrupt(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        INT_CONFORMS,
        BUS_ISA,
        0,
        ALL_LAPICS,
        1,
    ));

    let body: Vec<u8> = entries.concat();
    let config_len = CONFIG_HEADER_LEN + body.len();
    debug_assert_eq!(
        FLOATING_POINTER_LEN + config_len,
        table_len(num_cpus.into())
    );

    let mut config = Vec::with_capacity(config_len);
    config.extend_from_slice(b"PCMP");
    // Both fit: the table is at most EBDA_SIZE bytes and has fewer entries than bytes.
    config.extend_from_slice(&(config_len as u16).to_le_bytes());
    config.push(SPEC_REV);
    config.push(0); // checksum
    config.extend_from_slice(OEM_ID);
    config.extend_from_slice(PRODUCT_ID);
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    config.extend_from_slice(&(layout::APIC_START as u32).to_le_bytes());
    config.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    config.push(0); // extended table checksum
    config.push(0); // reserved
    debug_assert_eq!(config.len(), CONFIG_HEADER_LEN);
    config.extend_from_slice(&body);
    config[7] = checksum(&config);

    // The configuration table follows the pointer; the EBDA is below 1 MiB.
    let config_addr = (layout::EBDA_START + FLOATING_POINTER_LEN as u64) as u32;
    let mut table = Vec::with_capacity(FLOATING_POINTER_LEN + config_len);
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&config_addr.to_le_bytes());
    table.push(1); // length in 16-byte units
    table.push(SPEC_REV);
    table.push(0); // checksum
                   // Feature byte 1 = 0: a configuration table is present. Feature byte 2 = 0: no IMCR,
                   // virtual wire mode.
    table.extend_from_slice(&[0; 5]);
    table[10] = checksum(&table);
    table.extend_from_slice(&config);
    Ok(table)
}

/// Writes the MP floating pointer and configuration table for `num_cpus` vCPUs to the EBDA.
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    let table = build_mptable(num_cpus)?;
    let addr = GuestAddress(layout::EBDA_START);
    mem.write_slice(&table, addr)
        .map_err(|source| MptableError::GuestMemory {
            addr: addr.0,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn le(b: &[u8], off: usize, len: usize) -> u64 {
        b[off..off + len]
            .iter()
            .rev()
            .fold(0, |acc, &x| (acc << 8) | u64::from(x))
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |acc, &x| acc.wrapping_add(x))
    }

    /// Splits the configuration table's entries; checks lengths and type order on the way.
    fn entries(config: &[u8]) -> Vec<&[u8]> {
        let mut out: Vec<&[u8]> = Vec::new();
        let mut off = 44;
        while off < config.len() {
            let len = if config[off] == 0 { 20 } else { 8 };
            if let Some(prev) = out.last() {
                assert!(prev[0] <= config[off], "entries out of type order");
            }
            out.push(&config[off..off + len]);
            off += len;
        }
        assert_eq!(off, config.len());
        out
    }

    fn of_type(e: &[&[u8]], t: u8) -> Vec<Vec<u8>> {
        e.iter().filter(|x| x[0] == t).map(|x| x.to_vec()).collect()
    }

    #[test]
    fn pointer_and_config_checksums() {
        for n in 1..=MPTABLE_MAX_CPUS {
            let t = build_mptable(n).unwrap();
            assert!(t.len() <= 1024, "{} bytes", t.len());
            let fp = &t[..16];
            assert_eq!(&fp[0..4], b"_MP_");
            assert_eq!(le(fp, 4, 4), layout::EBDA_START + 16);
            assert_eq!(fp[8], 1);
            assert_eq!(fp[9], 4);
            assert_eq!(sum(fp), 0);
            assert_eq!(fp[11], 0, "configuration table present");

            let config = &t[16..];
            assert_eq!(&config[0..4], b"PCMP");
            assert_eq!(le(config, 4, 2), config.len() as u64);
            assert_eq!(config[6], 4);
            assert_eq!(sum(config), 0);
            assert_eq!(le(config, 36, 4), 0xfee0_0000);
            assert_eq!(le(config, 34, 2), entries(config).len() as u64);
        }
    }

    #[test]
    fn entry_counts_and_contents() {
        let n = 4;
        let t = build_mptable(n).unwrap();
        let e = entries(&t[16..]);

        let cpus = of_type(&e, 0);
        assert_eq!(cpus.len(), usize::from(n));
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(usize::from(c[1]), i, "APIC ID");
            assert_eq!(c[3] & 1, 1, "enabled");
            assert_eq!(c[3] & 2 != 0, i == 0, "BSP flag only on CPU 0");
        }

        let buses = of_type(&e, 1);
        assert_eq!(buses.len(), 2);
        assert_eq!((buses[0][1], &buses[0][2..8]), (0, &b"PCI   "[..]));
        assert_eq!((buses[1][1], &buses[1][2..8]), (1, &b"ISA   "[..]));

        let ioapics = of_type(&e, 2);
        assert_eq!(ioapics.len(), 1);
        let ioapic_id = ioapics[0][1];
        assert!(ioapic_id >= n, "IOAPIC ID clashes with a CPU");
        assert_eq!(le(&ioapics[0], 4, 4), 0xfec0_0000);

        let ints = of_type(&e, 3);
        assert!(ints.iter().all(|i| i[6] == ioapic_id));
        // ISA: (irq, pin, flags)
        let isa: Vec<_> = ints
            .iter()
            .filter(|i| i[4] == 1)
            .map(|i| (i[5], i[7], le(i, 2, 2)))
            .collect();
        assert_eq!(isa.len(), 15);
        assert!(isa.contains(&(0, 2, 0)), "IRQ0 → pin 2");
        assert!(isa.contains(&(9, 9, 0b1101)), "SCI level, active high");
        assert!(isa.iter().all(|&(irq, _, _)| irq != 2));
        for &(irq, pin, _) in &isa {
            assert!(irq == 0 || irq == pin);
        }
        // PCI: every slot in range, every pin, at the layout's GSI.
        let pci: Vec<_> = ints.iter().filter(|i| i[4] == 0).collect();
        assert_eq!(pci.len(), 15 * 4);
        for slot in MPTABLE_FIRST_PCI_SLOT..=MPTABLE_LAST_PCI_SLOT {
            for pin in 0..4u8 {
                let entry = pci
                    .iter()
                    .find(|i| i[5] == (slot << 2) | pin)
                    .expect("missing PCI entry");
                assert_eq!(u32::from(entry[7]), layout::pci_intx_gsi(slot, pin));
                assert_eq!(le(entry, 2, 2), 0b1111, "level, active low");
            }
        }

        let locals = of_type(&e, 4);
        // (type, dest, LINTIN#)
        let locals: Vec<_> = locals.iter().map(|l| (l[1], l[6], l[7])).collect();
        assert_eq!(locals, vec![(3, 0xff, 0), (1, 0xff, 1)]);
    }

    #[test]
    fn limits() {
        assert_eq!(MPTABLE_MAX_CPUS, 16);
        assert!(matches!(build_mptable(0), Err(MptableError::NoCpus)));
        for n in [MPTABLE_MAX_CPUS + 1, 255] {
            assert!(matches!(
                build_mptable(n),
                Err(MptableError::TooManyCpus { requested, max: 16 }) if requested == n
            ));
        }
        // The largest table uses the EBDA almost completely.
        let t = build_mptable(MPTABLE_MAX_CPUS).unwrap();
        assert!(t.len() <= EBDA_SIZE && t.len() + PROCESSOR_ENTRY_LEN > EBDA_SIZE);
    }

    #[test]
    fn written_to_the_ebda() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let expected = build_mptable(2).unwrap();
        let mut buf = vec![0; expected.len()];
        mem.read_slice(&mut buf, GuestAddress(layout::EBDA_START))
            .unwrap();
        assert_eq!(buf, expected);

        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_mptable(&small, 1),
            Err(MptableError::GuestMemory { .. })
        ));
    }
}
