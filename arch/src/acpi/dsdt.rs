//! DSDT: the AML namespace of the guest.
//!
//! ```text
//! \_S5_                 soft-off: SLP_TYP = layout::ports::SLP_TYP_S5
//! \_SB_
//!     C000 … Cnnn       processors (ACPI0007), _UID = MADT processor UID
//!     COM1              16550 UART (PNP0501) at 0x3F8, IRQ 4
//!     KBD_              i8042 keyboard (PNP0303) at 0x60/0x64, IRQ 1
//!     RTC_              CMOS RTC (PNP0B00) at 0x70, IRQ 8
//!     MBRS              motherboard resources (PNP0C02): ECAM window, ACPI PM block, the
//!                       runner port 0x5F0–0x5FF
//!     FWCF              QEMU's fw_cfg (QEMU0002) at 0x510–0x51B
//!     PEVT              QEMU's pvpanic (QEMU0001) at 0x505
//!     PCI0              PCI Express host bridge (PNP0A08/PNP0A03), _CRS windows, _PRT
//! ```
//!
//! The ECAM window has to be claimed by a motherboard-resources device: Linux refuses to use
//! MMCONFIG from the MCFG unless the range is reserved in ACPI (or E820). `_PRT` maps every INTx
//! pin of bus-0 slots 1–31 straight to its IOAPIC GSI (no link devices), with
//! [`layout::pci_intx_gsi`], the function the PCI devices use too.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, Memory32Fixed, Name, Package,
    PackageBuilder, Path, ResourceTemplate, Scope, IO, ZERO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::{oem_table_id, OEM_ID, OEM_REVISION};
use crate::layout::{self, irqs, ports};

/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// Length of the standard table header.
const HEADER_LEN: u32 = 36;

/// `_PRT` address for "all functions of device `slot`".
const PRT_ALL_FUNCTIONS: u32 = 0xffff;
/// First and last bus-0 slot `_PRT` covers (slot 0 is the host bridge).
const PRT_FIRST_SLOT: u8 = 1;
const PRT_LAST_SLOT: u8 = 31;
/// INTA#..INTD#.
const INTX_PINS: u8 = 4;

/// Legacy PCI I/O ranges the host bridge forwards: everything but the config ports.
const PCI_IO_LOW: (u16, u16) = (0x0000, 0x0cf7);
const PCI_IO_HIGH: (u16, u16) = (0x0d00, 0xffff);
/// The type-1 configuration mechanism occupies 0xCF8–0xCFF.
const PCI_CONFIG_LEN: u8 = 8;
/// Number of COM1's registers.
const COM_LEN: u8 = 8;
/// CMOS index + data.
const RTC_LEN: u8 = 2;

/// Legacy ISA IRQ descriptor with no flags (`IRQNoFlags () {n}`): edge, active high, exclusive.
/// The `aml` module only has the extended interrupt descriptor.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // Small resource: type 0x04 (IRQ format), length 2 → tag 0x22, then the 16-bit IRQ mask.
        sink.byte(0x22);
        sink.word(1u16 << (self.0 & 0x0f));
    }
}

/// Already-encoded AML.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn encode(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// A single I/O port range at a fixed address.
fn io_fixed(port: u16, len: u8) -> IO {
    IO::new(port, port, 1, len)
}

/// A legacy ISA device with an EISA `_HID` and a `_CRS`.
fn isa_device(name: &str, hid: &str, uid: Option<u8>, crs: &[&dyn Aml]) -> Vec<u8> {
    let hid = Name::new("_HID".into(), &EISAName::new(hid));
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(crs.to_vec()));
    let uid = uid.map(|u| Name::new("_UID".into(), &u));
    let mut children: Vec<&dyn Aml> = vec![&hid];
    if let Some(uid) = &uid {
        children.push(uid);
    }
    children.push(&crs);
    encode(&Device::new(name.into(), children))
}

fn processors(num_cpus: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    for cpu in 0..num_cpus {
        let name = format!("C{cpu:03X}");
        let hid = Name::new("_HID".into(), &"ACPI0007");
        let uid = Name::new("_UID".into(), &cpu);
        Device::new(Path::new(&name), vec![&hid, &uid]).to_aml_bytes(&mut bytes);
    }
    bytes
}

fn motherboard_resources() -> Vec<u8> {
    // The ECAM window is in the 32-bit hole by the layout's definition.
    let ecam = Memory32Fixed::new(
        true,
        layout::PCI_ECAM_START as u32,
        layout::PCI_ECAM_SIZE as u32,
    );
    let pm = io_fixed(ports::PM_BLOCK_START, ports::PM_BLOCK_LEN as u8);
    // vfiovm's own runner port: no driver binds it, the OS only has to leave it alone.
    let runner = io_fixed(ports::RUNNER, ports::RUNNER_LEN);
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C02"));
    let uid = Name::new("_UID".into(), &ZERO);
    let crs = Name::new(
        "_CRS".into(),
        &ResourceTemplate::new(vec![&ecam, &pm, &runner]),
    );
    encode(&Device::new("MBRS".into(), vec![&hid, &uid, &crs]))
}

/// fw_cfg, as QEMU describes it: Linux's `qemu_fw_cfg` driver binds to `QEMU0002`, and the
/// OS knows the ports are taken.
fn fw_cfg_device() -> Vec<u8> {
    let hid = Name::new("_HID".into(), &"QEMU0002");
    // Present, enabled, not shown in the UI (as QEMU: 0x0B).
    let sta = Name::new("_STA".into(), &0x0bu8);
    let io = io_fixed(ports::FW_CFG, ports::FW_CFG_LEN);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io]));
    encode(&Device::new("FWCF".into(), vec![&hid, &sta, &crs]))
}

/// pvpanic, as QEMU describes its ISA device: Linux's `pvpanic` driver binds to `QEMU0001`
/// and takes the port from the I/O resource (older drivers also want `_STA` bits 0x0B).
fn pvpanic_device() -> Vec<u8> {
    let hid = Name::new("_HID".into(), &"QEMU0001");
    let sta = Name::new("_STA".into(), &0x0bu8);
    let io = io_fixed(ports::PVPANIC, 1);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&io]));
    encode(&Device::new("PEVT".into(), vec![&hid, &sta, &crs]))
}

/// The `_PRT` package: `Package { (slot << 16) | 0xFFFF, pin, 0, gsi }` per slot and pin.
fn pci_routing_table() -> PackageBuilder {
    let mut prt = PackageBuilder::new();
    for slot in PRT_FIRST_SLOT..=PRT_LAST_SLOT {
        let addr = (u32::from(slot) << 16) | PRT_ALL_FUNCTIONS;
        for pin in 0..INTX_PINS {
            let gsi = layout::pci_intx_gsi(slot, pin);
            prt.add_element(&Package::new(vec![&addr, &pin, &ZERO, &gsi]));
        }
    }
    prt
}

fn pci_host_bridge(mmio64: Option<(u64, u64)>) -> Vec<u8> {
    let buses = AddressSpace::new_bus_number(0u16, u16::from(layout::PCI_LAST_BUS));
    let io_low = AddressSpace::new_io(PCI_IO_LOW.0, PCI_IO_LOW.1, None);
    let config = io_fixed(ports::PCI_CONFIG, PCI_CONFIG_LEN);
    let io_high = AddressSpace::new_io(PCI_IO_HIGH.0, PCI_IO_HIGH.1, None);
    // The 32-bit window is below 4 GiB by the layout's definition.
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        layout::PCI_MMIO32_START as u32,
        (layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE - 1) as u32,
        None,
    );
    let mmio64 = mmio64.map(|(min, max)| {
        AddressSpace::new_memory(AddressSpaceCacheable::Cacheable, true, min, max, None)
    });
    let mut resources: Vec<&dyn Aml> = vec![&buses, &io_low, &config, &io_high, &mmio32];
    if let Some(w) = &mmio64 {
        resources.push(w);
    }

    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let adr = Name::new("_ADR".into(), &ZERO);
    let seg = Name::new("_SEG".into(), &ZERO);
    let bbn = Name::new("_BBN".into(), &ZERO);
    let uid = Name::new("_UID".into(), &ZERO);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(resources));
    let prt = Name::new("_PRT".into(), &pci_routing_table());
    encode(&Device::new(
        "PCI0".into(),
        vec![&hid, &cid, &adr, &seg, &bbn, &uid, &crs, &prt],
    ))
}

/// Builds the DSDT. `mmio64` is the 64-bit PCI window as an inclusive `(min, max)` range,
/// already validated (non-empty, no overflow).
pub(super) fn build(num_cpus: u8, mmio64: Option<(u64, u64)>) -> Vec<u8> {
    let s5 = Name::new(
        "_S5_".into(),
        &Package::new(vec![&ports::SLP_TYP_S5, &ports::SLP_TYP_S5, &ZERO, &ZERO]),
    );

    let com1 = isa_device(
        "COM1",
        "PNP0501",
        Some(1),
        &[
            &io_fixed(ports::COM1, COM_LEN),
            &IrqNoFlags(irqs::COM1 as u8),
        ],
    );
    let kbd = isa_device(
        "KBD_",
        "PNP0303",
        None,
        &[
            &io_fixed(ports::I8042_DATA, 1),
            &io_fixed(ports::I8042_CMD, 1),
            &IrqNoFlags(irqs::I8042_KBD as u8),
        ],
    );
    let rtc = isa_device(
        "RTC_",
        "PNP0B00",
        None,
        &[&io_fixed(ports::RTC, RTC_LEN), &IrqNoFlags(irqs::RTC as u8)],
    );

    let mut sb = processors(num_cpus);
    for dev in [
        com1,
        kbd,
        rtc,
        motherboard_resources(),
        fw_cfg_device(),
        pvpanic_device(),
        pci_host_bridge(mmio64),
    ] {
        sb.extend_from_slice(&dev);
    }
    let sb = RawAml(Scope::raw("\\_SB_".into(), sb));

    let mut dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN,
        DSDT_REVISION,
        OEM_ID,
        oem_table_id(b"DSDT"),
        OEM_REVISION,
    );
    let mut body = encode(&s5);
    sb.to_aml_bytes(&mut body);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_util::check_header;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn header_and_names() {
        let b = build(2, Some((1 << 32, 1 << 32)));
        check_header(&b, b"DSDT");
        assert_eq!(b[8], 2, "revision");
        for name in [
            &b"_S5_"[..],
            b"_SB_",
            b"C000",
            b"C001",
            b"COM1",
            b"KBD_",
            b"RTC_",
            b"MBRS",
            b"FWCF",
            b"QEMU0002",
            b"PEVT",
            b"QEMU0001",
            b"PCI0",
            b"_PRT",
            b"_CRS",
            b"ACPI0007",
        ] {
            assert!(contains(&b, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!contains(&b, b"C002"));
    }

    #[test]
    fn irq_descriptor_encoding() {
        assert_eq!(encode(&IrqNoFlags(4)), vec![0x22, 0x10, 0x00]);
        assert_eq!(encode(&IrqNoFlags(8)), vec![0x22, 0x00, 0x01]);
    }

    #[test]
    fn qword_window_only_when_given() {
        // 0x8A = QWord address space descriptor.
        let with = build(1, Some((1 << 40, (1 << 41) - 1)));
        let without = build(1, None);
        let qword_tag = [0x8a, 0x2b, 0x00];
        assert!(contains(&with, &qword_tag));
        assert!(!contains(&without, &qword_tag));
        let mut min = vec![];
        min.extend_from_slice(&(1u64 << 40).to_le_bytes());
        min.extend_from_slice(&((1u64 << 41) - 1).to_le_bytes());
        assert!(contains(&with, &min), "min and max follow each other");
    }

    #[test]
    fn many_cpus_build() {
        let b = build(255, None);
        check_header(&b, b"DSDT");
        assert!(contains(&b, b"C0FE"));
        assert!(!contains(&b, b"C0FF"));
    }
}
