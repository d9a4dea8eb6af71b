//! The test device driven through the buses, as a guest would: MSI-X, MSI, INTx, DMA, and its
//! plain BARs.

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::interrupt::MsiMessage;
use crate::pci::testdev::*;

const CMD: u16 = 0x04;
const SLOT: u8 = 3;

/// Walks the capability list through ECAM, as a guest would.
fn find_cap(r: &Rig, dev: u8, id: u8) -> Option<u16> {
    let mut ptr = r.ecam_read(dev, 0x34, 1) as u16;
    for _ in 0..48 {
        if ptr < 0x40 {
            return None;
        }
        if r.ecam_read(dev, ptr, 1) as u8 == id {
            return Some(ptr);
        }
        ptr = r.ecam_read(dev, ptr + 1, 1) as u16 & !3;
    }
    None
}

struct Dev {
    r: Rig,
    dev: std::sync::Arc<std::sync::Mutex<TestDevice<Mem>>>,
    regs: u64,
}

impl Dev {
    fn new() -> Self {
        let r = Rig::new();
        let dev = r.add_testdev(SLOT);
        let regs = r.bar_addr(SLOT, 0);
        Dev { r, dev, regs }
    }

    fn reg(&self, reg: u64) -> u32 {
        self.r.mmio_read32(self.regs + reg)
    }

    fn set_reg(&self, reg: u64, v: u32) {
        assert!(self.r.mmio_write32(self.regs + reg, v));
    }

    fn bus_master(&self, on: bool) {
        let cmd = self.r.ecam_read(SLOT, CMD, 2);
        let cmd = if on { cmd | 4 } else { cmd & !4 };
        self.r.ecam_write(SLOT, CMD, 2, cmd);
    }

    fn msix_gsi(&self, v: u16) -> u32 {
        self.dev.lock().unwrap().msix().vector(v).unwrap().gsi()
    }

    fn msi_gsi(&self, v: u32) -> u32 {
        self.dev.lock().unwrap().msi().vector(v).unwrap().gsi()
    }
}

#[test]
fn registers_and_plain_bars() {
    let d = Dev::new();
    assert_eq!(d.reg(REG_IDENT), TESTDEV_IDENT);
    assert_eq!(d.reg(REG_VERSION), 1);
    d.set_reg(REG_SCRATCH, 0xdead_beef);
    assert_eq!(d.reg(REG_SCRATCH), 0xdead_beef);
    // Byte and word accesses.
    assert!(d.r.mmio.write(d.regs + REG_SCRATCH + 1, &[0x11]));
    assert_eq!(d.reg(REG_SCRATCH), 0xdead_11ef);
    let mut w = [0u8; 2];
    d.r.mmio.read(d.regs + REG_SCRATCH + 2, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0xdead);
    // Read-only registers ignore writes; unknown offsets read zero.
    d.set_reg(REG_IDENT, 0);
    assert_eq!(d.reg(REG_IDENT), TESTDEV_IDENT);
    assert_eq!(d.reg(0xffc), 0);
    // The I/O BAR mirrors the registers.
    let io = d.r.bar_addr(SLOT, 1) & !3;
    let mut b = [0u8; 4];
    d.r.pio.read(io + REG_SCRATCH, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0xdead_11ef);
    d.r.pio.write(io + REG_SCRATCH, &[1, 2, 3, 4]);
    assert_eq!(d.reg(REG_SCRATCH), 0x0403_0201);
    // The prefetchable BAR is memory.
    let mem = d.r.bar_addr(SLOT, 4);
    assert!(d
        .r
        .mmio
        .write(mem + 0xfff8, &0x0102_0304_0506_0708u64.to_le_bytes()));
    let mut q = [0u8; 8];
    d.r.mmio.read(mem + 0xfff8, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x0102_0304_0506_0708);
}

#[test]
fn dma_into_guest_ram_is_bounds_checked() {
    let d = Dev::new();
    d.set_reg(REG_DMA_ADDR_LO, 0x1000);
    d.set_reg(REG_DMA_VALUE, 0xcafe_f00d);
    d.set_reg(REG_DMA_GO, 1);
    assert_eq!(d.reg(REG_DMA_STATUS), DMA_NO_BUS_MASTER);
    assert_eq!(d.r.mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0);
    d.bus_master(true);
    d.set_reg(REG_DMA_GO, 1);
    assert_eq!(d.reg(REG_DMA_STATUS), DMA_DONE);
    assert_eq!(d.reg(REG_DMA_COUNT), 1);
    assert_eq!(
        d.r.mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
        0xcafe_f00d
    );
    // A 64-bit address written with one qword access.
    assert!(d.r.mmio.write(
        d.regs + REG_DMA_ADDR_LO,
        &0x0000_0001_0000_0000u64.to_le_bytes()
    ));
    assert_eq!(d.reg(REG_DMA_ADDR_HI), 1);
    d.set_reg(REG_DMA_GO, 1);
    assert_eq!(d.reg(REG_DMA_STATUS), DMA_OUT_OF_RAM);
    // Straddling the end of RAM: refused, the RAM part untouched.
    let last = RAM_SIZE as u64 - 2;
    d.set_reg(REG_DMA_ADDR_HI, 0);
    d.set_reg(REG_DMA_ADDR_LO, last as u32);
    d.set_reg(REG_DMA_GO, 1);
    assert_eq!(d.reg(REG_DMA_STATUS), DMA_OUT_OF_RAM);
    assert_eq!(d.r.mem.read_obj::<u16>(GuestAddress(last)).unwrap(), 0);
    // The top of the address space.
    d.set_reg(REG_DMA_ADDR_LO, u32::MAX);
    d.set_reg(REG_DMA_ADDR_HI, u32::MAX);
    d.set_reg(REG_DMA_GO, 1);
    assert_eq!(d.reg(REG_DMA_STATUS), DMA_OUT_OF_RAM);
    assert_eq!(d.reg(REG_DMA_COUNT), 1);
}

#[test]
fn msix_end_to_end() {
    let d = Dev::new();
    let cap = find_cap(&d.r, SLOT, 0x11).unwrap();
    // Table and PBA location from the capability, as a driver reads it.
    let table = d.r.ecam_read32(SLOT, cap + 4);
    let pba = d.r.ecam_read32(SLOT, cap + 8);
    assert_eq!((table & 7, pba & 7), (2, 2));
    let bar2 = d.r.bar_addr(SLOT, 2);
    let t = bar2 + u64::from(table & !7);
    let p = bar2 + u64::from(pba & !7);
    // Vector 1: address, data, unmasked.
    d.r.mmio
        .write(t + 16, &0x0000_0000_fee0_0000u64.to_le_bytes());
    d.r.mmio_write32(t + 16 + 8, 0x45);
    d.r.mmio_write32(t + 16 + 12, 0);
    d.bus_master(true);
    d.set_reg(REG_FIRE, 1);
    assert_eq!(
        d.reg(REG_FIRE_STATUS),
        FIRE_INVALID_VECTOR,
        "INTx mode has vector 0 only"
    );
    d.r.ecam_write(SLOT, cap + 2, 2, 0x8000);
    d.set_reg(REG_FIRE, 1);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_MSIX);
    let log = d.r.irq.log(d.msix_gsi(1));
    assert_eq!(
        log.delivered,
        vec![MsiMessage {
            address: 0xfee0_0000,
            data: 0x45
        }]
    );
    // Vector 0 is masked (reset state): pending, visible in the PBA, delivered on unmask.
    d.set_reg(REG_FIRE, 0);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_PENDING);
    assert_eq!(d.r.mmio_read32(p), 1);
    d.r.mmio_write32(t, 0xfee0_0000);
    d.r.mmio_write32(t + 8, 0x44);
    d.r.mmio_write32(t + 12, 0);
    assert_eq!(d.r.irq.log(d.msix_gsi(0)).delivered.len(), 1);
    assert_eq!(d.r.mmio_read32(p), 0);
    // Function mask through a byte write to the control's high byte.
    d.r.ecam_write(SLOT, cap + 3, 1, 0xc0);
    d.set_reg(REG_FIRE, 1);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_PENDING);
    d.r.ecam_write(SLOT, cap + 3, 1, 0x80);
    assert_eq!(d.r.irq.log(d.msix_gsi(1)).delivered.len(), 2);
    // Bus mastering off: nothing is sent.
    d.bus_master(false);
    d.set_reg(REG_FIRE, 1);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_NO_BUS_MASTER);
    d.set_reg(REG_FIRE, 7);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_NO_BUS_MASTER);
    d.bus_master(true);
    d.set_reg(REG_FIRE, 7);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_INVALID_VECTOR);
    // The MSI-X table BAR moves; the table goes with it.
    d.r.ecam_write32(SLOT, 0x18, 0xd000_0004);
    d.r.ecam_write32(SLOT, 0x1c, 0);
    assert_eq!(d.r.mmio_read32(0xd000_0000 + 16 + 8), 0x45);
}

#[test]
fn msi_end_to_end() {
    let d = Dev::new();
    let cap = find_cap(&d.r, SLOT, 0x05).unwrap();
    let ctrl = d.r.ecam_read(SLOT, cap + 2, 2);
    assert_eq!(ctrl & 0x180, 0x180, "64-bit, per-vector mask");
    assert_eq!((ctrl >> 1) & 7, 1, "2 vectors");
    d.r.ecam_write32(SLOT, cap + 4, 0xfee0_0000);
    d.r.ecam_write32(SLOT, cap + 8, 0);
    d.r.ecam_write(SLOT, cap + 0xc, 2, 0x60);
    // Enable 2 vectors.
    d.r.ecam_write(SLOT, cap + 2, 2, 0x11);
    d.bus_master(true);
    d.set_reg(REG_FIRE, 1);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_MSI);
    assert_eq!(
        d.r.irq.log(d.msi_gsi(1)).delivered,
        vec![MsiMessage {
            address: 0xfee0_0000,
            data: 0x61
        }]
    );
    // Mask vector 0, fire, read the pending bit through type 1, unmask.
    d.r.ecam_write32(SLOT, cap + 0x10, 1);
    d.set_reg(REG_FIRE, 0);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_PENDING);
    assert_eq!(d.r.cf8_read(SLOT, cap + 0x14, 4), 1);
    d.r.cf8_write(SLOT, cap + 0x10, 4, 0);
    assert_eq!(d.r.irq.log(d.msi_gsi(0)).delivered.len(), 1);
    assert_eq!(d.r.ecam_read32(SLOT, cap + 0x14), 0);
    // MSI-X wins when both are enabled (the guest's mistake).
    let msix = find_cap(&d.r, SLOT, 0x11).unwrap();
    d.r.ecam_write(SLOT, msix + 2, 2, 0x8000);
    d.set_reg(REG_FIRE, 0);
    assert_eq!(
        d.reg(REG_FIRE_STATUS),
        FIRE_PENDING,
        "MSI-X vector 0 is masked"
    );
}

#[test]
fn intx_level_semantics() {
    let d = Dev::new();
    let gsi = swizzle(SLOT, 0);
    d.set_reg(REG_FIRE, 0);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_INTX);
    assert_eq!(d.r.irq.log(gsi).intx_asserts, 1);
    assert_eq!(d.reg(REG_INTX_STATUS), 1);
    assert_eq!(
        d.r.ecam_read(SLOT, 0x06, 2) & 0x8,
        0x8,
        "status interrupt bit"
    );
    // The guest EOIs without clearing the cause: the line comes back at the next access.
    signal_resample(&d);
    let _ = d.reg(REG_IDENT);
    assert_eq!(d.r.irq.log(gsi).intx_asserts, 2);
    // Ack then EOI: no re-assertion.
    d.set_reg(REG_INTX_STATUS, 1);
    assert_eq!(d.r.ecam_read(SLOT, 0x06, 2) & 0x8, 0);
    signal_resample(&d);
    let _ = d.reg(REG_IDENT);
    assert_eq!(d.r.irq.log(gsi).intx_asserts, 2);
    // INTx disabled: recorded, not asserted; enabling asserts.
    let cmd = d.r.ecam_read(SLOT, CMD, 2);
    d.r.ecam_write(SLOT, CMD, 2, cmd | 0x400);
    d.set_reg(REG_FIRE, 0);
    assert_eq!(d.reg(REG_FIRE_STATUS), FIRE_DISABLED);
    assert_eq!(d.r.irq.log(gsi).intx_asserts, 2);
    d.r.ecam_write(SLOT, CMD, 2, cmd);
    assert_eq!(d.r.irq.log(gsi).intx_asserts, 3);
}

fn signal_resample(d: &Dev) {
    d.dev.lock().unwrap().intx_resample_for_test();
}
