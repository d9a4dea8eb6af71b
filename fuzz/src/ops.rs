//! Guest operations on a [`Rig`], decoded from fuzz bytes: raw port and MMIO accesses of any
//! size (the type-1 ports 0xCF8–0xCFF, ECAM, the BARs the buses hold, anywhere), and the
//! sequences a guest driver performs that random bytes rarely hit (BAR sizing and moves,
//! command register toggles, MSI and MSI-X programming, firing and DMA on the test device, the
//! passthrough hardware signalling an eventfd, a device reset). After every operation
//! [`Rig::check`] runs.

use arbitrary::{Result, Unstructured};
use arch::layout::{self, ports};
use devices::pci::testdev::{
    REGS_BAR, REG_DMA_ADDR_HI, REG_DMA_ADDR_LO, REG_DMA_GO, REG_DMA_VALUE, REG_FIRE,
};
use devices::pci::{BarAccess, PciAddress};

use crate::checks::fire_expectation;
use crate::input::{access_len, data, offset_in, one_in, value, MAX_OPS};
use crate::rig::{fixed_mmio, fixed_pio, lock, Rig, RAM_SIZE};
use crate::views::{find_cap, MSIX_ID, MSI_ID};

const CF8: u64 = ports::PCI_CONFIG as u64;
const CF9: u64 = ports::RESET_CF9 as u64;
const CFC: u64 = CF8 + 4;
const ECAM: u64 = layout::PCI_ECAM_START;
/// Capability IDs the capability operations aim at: PM, MSI, PCI Express, MSI-X.
const CAP_IDS: [u8; 4] = [0x01, MSI_ID, 0x10, MSIX_ID];

/// Runs operations from `u` until it is empty (at most [`MAX_OPS`]), checking after each.
pub fn run(rig: &Rig, u: &mut Unstructured) -> Result<()> {
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let before = rig.before();
        let reset = step(rig, u)?;
        crate::trace!("  -> check");
        rig.check(&before, reset);
    }
    Ok(())
}

fn ecam_addr(slot: u8, func: u8, reg: u16) -> u64 {
    ECAM + (u64::from(slot) << 15) + (u64::from(func & 7) << 12) + u64::from(reg & 0xfff)
}

fn config_read(rig: &Rig, slot: u8, reg: u16, len: usize) -> u64 {
    let mut b = [0u8; 8];
    rig.mmio.read(ecam_addr(slot, 0, reg), &mut b[..len.min(8)]);
    u64::from_le_bytes(b)
}

fn config_write(rig: &Rig, slot: u8, reg: u16, bytes: &[u8]) {
    crate::trace!("config write {slot}:{reg:#x} <- {bytes:02x?}");
    rig.mmio.write(ecam_addr(slot, 0, reg), bytes);
}

/// A slot: the host bridge, a device, an empty slot, or any.
fn pick_slot(rig: &Rig, u: &mut Unstructured) -> Result<u8> {
    let mut slots = vec![0u8];
    slots.extend(rig.testdevs.iter().map(|f| f.slot));
    slots.extend(rig.vfio.iter().map(|v| v.f.slot));
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.int_in_range(0..=31)?,
        _ => *u.choose(&slots)?,
    })
}

/// A slot holding a device with capabilities (a test device or the passthrough device).
fn pick_device(rig: &Rig, u: &mut Unstructured) -> Result<Option<u8>> {
    let mut slots: Vec<u8> = rig.testdevs.iter().map(|f| f.slot).collect();
    slots.extend(rig.vfio.iter().map(|v| v.f.slot));
    if slots.is_empty() {
        return Ok(None);
    }
    Ok(Some(*u.choose(&slots)?))
}

fn find(rig: &Rig, slot: u8, id: u8) -> Option<u16> {
    let addr = PciAddress {
        bus: 0,
        device: slot,
        function: 0,
    };
    find_cap(&mut |o, b| rig.platform.config_read(addr, o, b), id)
}

/// The address BAR `bar` of `slot` holds (`None` for the ROM without a ROM, or I/O BARs).
fn bar_address(rig: &Rig, slot: u8, bar: usize) -> Option<u64> {
    let reg = 0x10 + 4 * bar as u16;
    let low = config_read(rig, slot, reg, 4) as u32;
    if low & 1 != 0 {
        return None;
    }
    let mut a = u64::from(low & !0xf);
    if low & 6 == 4 && bar < 5 {
        a |= config_read(rig, slot, reg + 4, 4) << 32;
    }
    Some(a)
}

/// A config register offset: the header, the capabilities, the extended space, or anything.
fn config_offset(u: &mut Unstructured) -> Result<u16> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 | 1 => u.int_in_range(0..=0x3f)?,
        2..=4 => u.int_in_range(0x40..=0xff)?,
        5 => u.int_in_range(0x100..=0x1ff)?,
        _ => u.int_in_range(0..=0xfff)?,
    })
}

fn access(rig: &Rig, u: &mut Unstructured, pio: bool, addr: u64) -> Result<bool> {
    let len = access_len(u)?;
    let bus = if pio { &rig.pio } else { &rig.mmio };
    if one_in(u, 2)? {
        let mut d = vec![0u8; len];
        let hit = bus.read(addr, &mut d);
        crate::trace!(
            "{} read {addr:#x} -> {d:02x?}",
            if pio { "pio" } else { "mmio" }
        );
        assert!(
            hit || d.iter().all(|&b| b == 0xff),
            "a missed read must read all ones"
        );
        Ok(false)
    } else {
        let d = value(u, len)?;
        crate::trace!(
            "{} write {addr:#x} <- {d:02x?}",
            if pio { "pio" } else { "mmio" }
        );
        bus.write(addr, &d);
        Ok(pio && addr == CF9 && d.len() == 1 && d[0] & 4 != 0)
    }
}

/// One operation; returns whether it was a reset write to 0xCF9.
fn step(rig: &Rig, u: &mut Unstructured) -> Result<bool> {
    let op = u.int_in_range(0u8..=19)?;
    crate::trace!("op {op}");
    match op {
        // CONFIG_ADDRESS: written as a dword, reads back with the reserved bits clear.
        0 => {
            let v: u32 = if one_in(u, 4)? {
                u.arbitrary()?
            } else {
                let slot = u32::from(pick_slot(rig, u)?);
                let func = if one_in(u, 8)? {
                    u.int_in_range(1..=7)?
                } else {
                    0
                };
                let reg = u32::from(config_offset(u)? & 0xfc);
                0x8000_0000 | (slot << 11) | (func << 8) | reg
            };
            rig.pio.write(CF8, &v.to_le_bytes());
            let mut b = [0u8; 4];
            assert!(rig.pio.read(CF8, &mut b));
            assert_eq!(
                u32::from_le_bytes(b),
                v & 0x80ff_fffc,
                "CONFIG_ADDRESS does not read back what was written"
            );
            Ok(false)
        }
        // CONFIG_DATA at any of its four ports.
        1 => {
            let port = CFC + u.int_in_range(0..=3)?;
            access(rig, u, true, port)
        }
        // Any port: the type-1 ports, a BAR, anywhere.
        2 => {
            let port = match u.int_in_range(0u8..=3)? {
                0 => CF8 + u.int_in_range(0..=7)?,
                1 => u64::from(u.arbitrary::<u16>()?),
                2 => u.arbitrary()?,
                _ => {
                    let ranges: Vec<_> = rig.pio.ranges().filter(|&r| r != fixed_pio()).collect();
                    match ranges.is_empty() {
                        true => CF8,
                        false => {
                            let (b, l) = *u.choose(&ranges)?;
                            b.wrapping_add(offset_in(u, l)?)
                        }
                    }
                }
            };
            access(rig, u, true, port)
        }
        // ECAM.
        3 => {
            let addr = if one_in(u, 8)? {
                ECAM.wrapping_add(offset_in(u, fixed_mmio().1)?)
            } else {
                let slot = pick_slot(rig, u)?;
                let func = if one_in(u, 8)? {
                    u.int_in_range(1..=7)?
                } else {
                    0
                };
                ecam_addr(slot, func, config_offset(u)?)
            };
            access(rig, u, false, addr)
        }
        // A BAR on the MMIO bus.
        4 => {
            let ranges: Vec<_> = rig.mmio.ranges().filter(|&r| r != fixed_mmio()).collect();
            if ranges.is_empty() {
                return Ok(false);
            }
            let (b, l) = *u.choose(&ranges)?;
            let addr = b.wrapping_add(offset_in(u, l)?);
            access(rig, u, false, addr)
        }
        // Anywhere in the MMIO space.
        5 => {
            let addr = match u.int_in_range(0u8..=2)? {
                0 => u.arbitrary()?,
                1 => layout::PCI_MMIO32_START.wrapping_add(offset_in(u, layout::PCI_MMIO32_SIZE)?),
                _ => rig
                    .windows
                    .mmio64
                    .map_or(0, |w| w.0)
                    .wrapping_add(offset_in(u, 1 << 32)?),
            };
            access(rig, u, false, addr)
        }
        // A write into a capability, relative to its start.
        6 => {
            let slot = pick_slot(rig, u)?;
            let id = *u.choose(&CAP_IDS)?;
            let Some(cap) = find(rig, slot, id) else {
                return Ok(false);
            };
            let rel: u16 = u.int_in_range(0..=0x18)?;
            let len = *u.choose(&[1usize, 2, 4, 8])?;
            let d = value(u, len)?;
            let align = (len as u16).min(4) - 1;
            config_write(rig, slot, (cap + rel) & !align, &d);
            Ok(false)
        }
        // Program an MSI-X table entry through the BAR, as a driver does.
        7 => {
            let Some(slot) = pick_device(rig, u)? else {
                return Ok(false);
            };
            let Some(cap) = find(rig, slot, MSIX_ID) else {
                return Ok(false);
            };
            let ctrl = config_read(rig, slot, cap + 2, 2) as u16;
            let table = config_read(rig, slot, cap + 4, 4) as u32;
            let Some(base) = bar_address(rig, slot, (table & 7) as usize) else {
                return Ok(false);
            };
            let v = u64::from(u.int_in_range(0..=(ctrl & 0x7ff) + 1)?);
            let entry = base.wrapping_add(u64::from(table & !7) + 16 * v);
            let addr = 0xfee0_0000u32 | (u.arbitrary::<u32>()? & 0xf_f00c);
            let msg = [
                addr,
                if one_in(u, 8)? { u.arbitrary()? } else { 0 },
                u.arbitrary()?,
                u32::from(one_in(u, 3)?),
            ];
            if one_in(u, 2)? {
                for (i, dw) in msg.iter().enumerate() {
                    rig.mmio
                        .write(entry.wrapping_add(4 * i as u64), &dw.to_le_bytes());
                }
            } else {
                let q0 = u64::from(msg[0]) | (u64::from(msg[1]) << 32);
                let q1 = u64::from(msg[2]) | (u64::from(msg[3]) << 32);
                rig.mmio.write(entry, &q0.to_le_bytes());
                rig.mmio.write(entry.wrapping_add(8), &q1.to_le_bytes());
            }
            Ok(false)
        }
        // Program MSI: address, data, mask, then enable with a vector count.
        8 => {
            let Some(slot) = pick_device(rig, u)? else {
                return Ok(false);
            };
            let Some(cap) = find(rig, slot, MSI_ID) else {
                return Ok(false);
            };
            let ctrl = config_read(rig, slot, cap + 2, 2) as u16;
            let is64 = ctrl & (1 << 7) != 0;
            let addr = 0xfee0_0000u32 | (u.arbitrary::<u32>()? & 0xf_f00c);
            config_write(rig, slot, cap + 4, &addr.to_le_bytes());
            let data_at = if is64 {
                config_write(rig, slot, cap + 8, &0u32.to_le_bytes());
                cap + 0xc
            } else {
                cap + 8
            };
            config_write(rig, slot, data_at, &u.arbitrary::<u16>()?.to_le_bytes());
            if ctrl & (1 << 8) != 0 {
                config_write(rig, slot, data_at + 4, &u.arbitrary::<u32>()?.to_le_bytes());
            }
            let mme: u16 = u.int_in_range(0..=5)?;
            let enable = u16::from(!one_in(u, 4)?);
            config_write(
                rig,
                slot,
                cap + 2,
                &((ctrl & !0x71) | (mme << 4) | enable).to_le_bytes(),
            );
            Ok(false)
        }
        // Size a BAR the way firmware does.
        9 => {
            let slot = pick_slot(rig, u)?;
            let reg = match u.int_in_range(0u8..=6)? {
                6 => 0x30,
                b => 0x10 + 4 * u16::from(b),
            };
            let orig = config_read(rig, slot, reg, 4) as u32;
            config_write(rig, slot, reg, &u32::MAX.to_le_bytes());
            config_read(rig, slot, reg, 4);
            config_write(rig, slot, reg, &orig.to_le_bytes());
            Ok(false)
        }
        // The command register: decoding, bus mastering, INTx disable.
        10 => {
            let slot = pick_slot(rig, u)?;
            let cmd: u16 = if one_in(u, 4)? {
                u.arbitrary()?
            } else {
                u.int_in_range(0..=7)? | (u16::from(one_in(u, 4)?) << 10)
            };
            config_write(rig, slot, 4, &cmd.to_le_bytes());
            Ok(false)
        }
        // Move a BAR (with decoding on or off).
        11 => {
            let slot = pick_slot(rig, u)?;
            let bar: u16 = u.int_in_range(0..=6)?;
            let reg = if bar == 6 { 0x30 } else { 0x10 + 4 * bar };
            let low = config_read(rig, slot, reg, 4) as u32;
            let addr: u64 = match u.int_in_range(0u8..=3)? {
                0 => u.arbitrary()?,
                1 => rig
                    .windows
                    .mmio64
                    .map_or(0, |w| w.0)
                    .wrapping_add(offset_in(u, 1 << 36)? & !0xfff),
                2 => u64::from(ports::PCI_IO_START).wrapping_add(offset_in(u, 0xa000)? & !0x3),
                _ => layout::PCI_MMIO32_START
                    .wrapping_add(offset_in(u, layout::PCI_MMIO32_SIZE)? & !0xfff),
            };
            let rom_enable = u32::from(bar == 6 && one_in(u, 2)?);
            config_write(rig, slot, reg, &((addr as u32) | rom_enable).to_le_bytes());
            if low & 7 == 4 && bar < 5 {
                config_write(rig, slot, reg + 4, &((addr >> 32) as u32).to_le_bytes());
            }
            Ok(false)
        }
        // The test device raises an interrupt.
        12 => {
            if rig.testdevs.is_empty() {
                return Ok(false);
            }
            let f = u.choose(&rig.testdevs)?;
            let n: u32 = if one_in(u, 8)? {
                u.arbitrary()?
            } else {
                u.int_in_range(0..=3)?
            };
            let mut d = lock(&f.dev);
            let expect = fire_expectation(&mut d, n);
            rig.irq.take_deliveries();
            d.bar_write(REGS_BAR, REG_FIRE, &n.to_le_bytes());
            assert_eq!(
                rig.irq.take_deliveries(),
                expect.into_iter().collect::<Vec<_>>(),
                "FIRE {n} delivered other than the guest programmed"
            );
            Ok(false)
        }
        // The test device DMAs.
        13 => {
            if rig.testdevs.is_empty() {
                return Ok(false);
            }
            let f = u.choose(&rig.testdevs)?;
            let addr: u64 = if one_in(u, 3)? {
                u.arbitrary()?
            } else {
                offset_in(u, RAM_SIZE + 8)?
            };
            let v: u32 = u.arbitrary()?;
            let mut d = lock(&f.dev);
            d.bar_write(REGS_BAR, REG_DMA_ADDR_LO, &(addr as u32).to_le_bytes());
            d.bar_write(
                REGS_BAR,
                REG_DMA_ADDR_HI,
                &((addr >> 32) as u32).to_le_bytes(),
            );
            d.bar_write(REGS_BAR, REG_DMA_VALUE, &v.to_le_bytes());
            d.bar_write(REGS_BAR, REG_DMA_GO, &[1]);
            Ok(false)
        }
        // The passthrough hardware signals one of the eventfds VFIO was given.
        14 => {
            let Some(v) = &rig.vfio else { return Ok(false) };
            if let (Some((_, fds)), _) = v.mock.active_irqs() {
                if !fds.is_empty() {
                    let fd = *u.choose(&fds)?;
                    rig.irq.fire_fd(fd);
                }
            }
            Ok(false)
        }
        // The two config mechanisms agree.
        15 => {
            let slot = pick_slot(rig, u)?;
            let reg = u.int_in_range(0..=0xffu16)? & 0xfc;
            let a = 0x8000_0000u32 | (u32::from(slot) << 11) | u32::from(reg);
            rig.pio.write(CF8, &a.to_le_bytes());
            let mut b = [0u8; 4];
            rig.pio.read(CFC, &mut b);
            let via_ecam = config_read(rig, slot, reg, 4) as u32;
            assert_eq!(
                u32::from_le_bytes(b),
                via_ecam,
                "slot {slot} register {reg:#x} reads differently through 0xCFC and ECAM"
            );
            Ok(false)
        }
        // The reset control register.
        16 => {
            let v: u8 = *u.choose(&[0x02, 0x04, 0x06, 0x0e, 0x0a, 0])?;
            let v = if one_in(u, 4)? { u.arbitrary()? } else { v };
            rig.pio.write(CF9, &[v]);
            // What vfiovm does next with --on-reset reboot (the default with firmware): the
            // platform's system reset, every function back to its power-on state.
            if v & 4 != 0 {
                crate::trace!("system reset");
                rig.platform.system_reset();
            }
            Ok(v & 4 != 0)
        }
        // A device's BAR handler called directly with any BAR index and offset (beyond what
        // the platform forwards).
        17 => {
            let bar = u.int_in_range(0..=8)?;
            let off = offset_in(u, 0x2_0000)?;
            let len = access_len(u)?;
            let write = one_in(u, 2)?;
            let d = data(u, len)?;
            let mut buf = vec![0u8; len];
            let use_vfio = rig.testdevs.is_empty() || one_in(u, 2)?;
            match (&rig.vfio, use_vfio) {
                (Some(v), true) => {
                    let mut dev = lock(&v.f.dev);
                    if write {
                        dev.bar_write(bar, off, &d);
                    } else {
                        dev.bar_read(bar, off, &mut buf);
                    }
                }
                _ => {
                    if let Some(f) = rig.testdevs.first() {
                        let mut dev = lock(&f.dev);
                        if write {
                            dev.bar_write(bar, off, &d);
                        } else {
                            dev.bar_read(bar, off, &mut buf);
                        }
                    }
                }
            }
            Ok(false)
        }
        // The VMM resets the passthrough device (guest reboot).
        18 => {
            if let Some(v) = &rig.vfio {
                lock(&v.f.dev).inner.reset();
            }
            Ok(false)
        }
        // Power state changes through the PM capability.
        _ => {
            let Some(slot) = pick_device(rig, u)? else {
                return Ok(false);
            };
            let Some(cap) = find(rig, slot, 0x01) else {
                return Ok(false);
            };
            let state: u8 = u.int_in_range(0..=3)?;
            config_write(rig, slot, cap + 4, &[state]);
            Ok(false)
        }
    }
}
