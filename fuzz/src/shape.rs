//! [`Shape`]: the layout of the fake VFIO device the passthrough targets run the model over —
//! the crate's own test double, `devices::vfio::mock::MockDevice` (feature `test-util`), built
//! with its `MockBuilder` in strict mode, so it panics on every request a correct model never
//! makes (the list is in that module's documentation). The layout comes from the fuzz input
//! ([`Shape::from_fuzz`]) or is a fixed rich one ([`Shape::rich`]).

use arbitrary::{Result, Unstructured};
use devices::vfio::mock::MockBuilder;
use devices::vfio::ops::{DeviceInfo, INTX_IRQ, MSIX_IRQ, MSI_IRQ, ROM_REGION};
use devices::vfio::HOST_PAGE_SIZE;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

use crate::input::one_in;
use crate::views::{MSIX_ID, MSI_ID};

const RW: u32 = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
/// Power management capability ID.
pub const PM_ID: u8 = 0x01;

/// The layout of a fake device.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The fake device, ready to build.
    pub device: MockBuilder,
    /// A ROM file's bytes to hand the model instead of the device's ROM.
    pub rom_file: Option<Vec<u8>>,
}

/// A builder for a device whose every config byte the layout sets: only the capability-list
/// bit of the status register is set (the rest of the header the caller writes).
fn builder(size: usize) -> MockBuilder {
    let mut b = MockBuilder::with_config_size(0, 0, size);
    b.config(0x08, &[0; 4])
        .config(0x3d, &[0])
        .config(0x06, &[0x10]);
    b.strict();
    b
}

fn msi_body(ctrl: u16) -> Vec<u8> {
    let len = match (ctrl & (1 << 7) != 0, ctrl & (1 << 8) != 0) {
        (false, false) => 10,
        (true, false) => 14,
        (false, true) => 20,
        (true, true) => 24,
    };
    let mut body = vec![0u8; len - 2];
    body[..2].copy_from_slice(&ctrl.to_le_bytes());
    body
}

fn msix_body(ctrl: u16, table: u32, pba: u32) -> Vec<u8> {
    let mut body = ctrl.to_le_bytes().to_vec();
    body.extend_from_slice(&table.to_le_bytes());
    body.extend_from_slice(&pba.to_le_bytes());
    body
}

/// A region size: exact powers of two, odd sizes, tiny and huge ones.
fn region_size(u: &mut Unstructured, mmap: bool) -> Result<u64> {
    let max_shift = if mmap { 32 } else { 40 };
    Ok(match u.int_in_range(0u8..=7)? {
        0 => 0,
        1 => u.int_in_range(1..=0x40)?,
        2 => u.int_in_range(1..=1 << 20)?,
        3 => u.int_in_range(1..=1u64 << max_shift)?,
        _ => 1u64 << u.int_in_range(2..=max_shift)?,
    })
}

fn sparse_areas(u: &mut Unstructured, size: u64) -> Result<Option<Vec<(u64, u64)>>> {
    if !one_in(u, 3)? {
        return Ok(None);
    }
    let n = u.int_in_range(0..=4)?;
    let mut areas = Vec::new();
    for _ in 0..n {
        let (offset, size) = if one_in(u, 4)? {
            (u.arbitrary()?, u.arbitrary()?)
        } else {
            let page = |v: u64| v & !(HOST_PAGE_SIZE - 1);
            let o = page(u.int_in_range(0..=size)?);
            let s = page(u.int_in_range(0..=size.saturating_sub(o))?);
            (o, s)
        };
        areas.push((offset, size));
    }
    Ok(Some(areas))
}

impl Shape {
    /// A device with every feature the model handles: 32/64-bit, I/O and sub-page BARs, a
    /// power management capability, MSI with 8 vectors, MSI-X with 5 vectors whose table shares
    /// a page with registers in BAR 0 and whose PBA sits at the end of BAR 2, a PCI Express
    /// capability, hidden extended capabilities (SR-IOV, ARI) and a ROM.
    pub fn rich() -> Self {
        let mut b = builder(4096);
        b.config(0, &0x1521_8086u32.to_le_bytes());
        b.config(0x08, &[1, 0, 0, 0x02]);
        b.config(0x3d, &[1]);
        b.config(0x10, &0u32.to_le_bytes());
        b.region(0, 0x4000, RW | VFIO_REGION_INFO_FLAG_MMAP);
        b.config(0x14, &1u32.to_le_bytes());
        b.region(1, 0x20, RW);
        b.config(0x18, &0xcu32.to_le_bytes());
        b.region(2, 0x2_0000, RW | VFIO_REGION_INFO_FLAG_MMAP);
        b.config(0x20, &0u32.to_le_bytes());
        b.region(4, 0x100, RW | VFIO_REGION_INFO_FLAG_MMAP);
        b.region(ROM_REGION, 0x800, VFIO_REGION_INFO_FLAG_READ);
        b.cap(PM_ID, &[0x03, 0x00, 0, 0, 0, 0]);
        b.cap(MSI_ID, &msi_body((3 << 1) | (1 << 7) | (1 << 8)));
        b.cap(MSIX_ID, &msix_body(4, 0x800, 0x1_f000 | 2));
        b.cap(0x10, &[0; 0x3a]);
        b.ext_cap(0x01, &[0; 0x44]);
        b.ext_cap(0x10, &[0x22; 0x3c]);
        b.ext_cap(0x0e, &[0; 4]);
        b.irq_with_flags(INTX_IRQ, 1, VFIO_IRQ_INFO_EVENTFD);
        b.irq_with_flags(MSI_IRQ, 8, VFIO_IRQ_INFO_EVENTFD);
        b.irq_with_flags(MSIX_IRQ, 5, VFIO_IRQ_INFO_EVENTFD);
        Shape {
            device: b,
            rom_file: None,
        }
    }

    /// A device shaped by the fuzz input.
    pub fn from_fuzz(u: &mut Unstructured) -> Result<Self> {
        let size = match u.int_in_range(0u8..=7)? {
            0 => u.int_in_range(0..=0x1000)?,
            1..=3 => 0x100,
            _ => 0x1000,
        };
        let mut b = builder(size);
        let mut ident = [0u8; 16];
        u.fill_buffer(&mut ident)?;
        if !one_in(u, 16)? {
            // Not all ones (a device that is not responding), mostly.
            ident[0] &= 0x7f;
        }
        b.config(0, &ident[..4]);
        b.config(0x08, &ident[4..8]);
        b.config(0x2c, &ident[8..12]);
        b.config(0x0e, &[if one_in(u, 16)? { ident[12] } else { 0 }]);
        b.config(0x3d, &[if one_in(u, 4)? { ident[13] } else { 1 }]);

        // BARs: the register's low bits give the kind, the region the size.
        let mut i = 0;
        while i < 6 {
            let kind = u.int_in_range(0u8..=4)?;
            let garbage: u32 = if one_in(u, 8)? { u.arbitrary()? } else { 0 };
            let (reg, step) = match kind {
                0 => (garbage & !0x7, 1),
                1 => ((garbage & !0xf) | if one_in(u, 2)? { 8 } else { 0 }, 1),
                2 => ((garbage & !0xf) | 4 | if one_in(u, 2)? { 8 } else { 0 }, 2),
                3 => ((garbage & !0x3) | 1, 1),
                _ => (0, 1),
            };
            b.config(0x10 + 4 * i, &reg.to_le_bytes());
            if kind < 4 {
                let mmap = kind != 3 && !one_in(u, 4)?;
                let size = region_size(u, mmap)?;
                let mut flags = if one_in(u, 16)? { u.arbitrary()? } else { RW };
                if mmap {
                    flags |= VFIO_REGION_INFO_FLAG_MMAP;
                } else {
                    flags &= !VFIO_REGION_INFO_FLAG_MMAP;
                }
                let sparse = sparse_areas(u, size)?;
                b.region(i as u32, size, flags);
                if let Some(areas) = sparse {
                    b.sparse(i, &areas);
                }
                if one_in(u, 4)? {
                    b.msix_mappable(i);
                }
            }
            i += step;
        }
        if one_in(u, 2)? {
            let size = match u.int_in_range(0u8..=15)? {
                0..=4 => u.int_in_range(0..=0x100)?,
                5..=9 => u.int_in_range(0..=0x1_0000)?,
                10..=14 => 0x800,
                // Up to past the largest ROM the model accepts (16 MiB).
                _ => u.int_in_range(0..=(17 << 20))?,
            };
            let flags = if one_in(u, 8)? {
                0
            } else {
                VFIO_REGION_INFO_FLAG_READ
            };
            b.region(ROM_REGION, size, flags);
        }
        let mut rom_file = None;
        if one_in(u, 8)? {
            let len = u.int_in_range(0..=0x2000)?;
            rom_file = Some(crate::input::data(u, len)?);
        }

        // Standard capabilities.
        for _ in 0..u.int_in_range(0..=6)? {
            let gap = if one_in(u, 4)? {
                u.int_in_range(0..=16)?
            } else {
                0
            };
            let (id, body) = match u.int_in_range(0u8..=6)? {
                0 => {
                    // vfio-pci hands the device over in D0: power state bits 1:0 clear.
                    let mut body = crate::input::data(u, 6)?;
                    body[2] &= !3;
                    (PM_ID, body)
                }
                1 | 2 => (MSI_ID, msi_body(u.arbitrary()?)),
                3 | 4 => {
                    // Mostly small tables; enable and function-mask bits set as garbage.
                    let ctrl: u16 = if one_in(u, 8)? {
                        u.arbitrary()?
                    } else {
                        u.int_in_range(0..=15)? | (u.int_in_range(0..=3u16)? << 14)
                    };
                    let table = msix_region(u)?;
                    let pba = msix_region(u)?;
                    (MSIX_ID, msix_body(ctrl, table, pba))
                }
                5 => (0x10, vec![0; 0x3a]),
                _ => {
                    let id = u.arbitrary()?;
                    let len = u.int_in_range(0..=32)?;
                    (id, crate::input::data(u, len)?)
                }
            };
            if b.try_cap(id, &body, gap).is_none() {
                break;
            }
        }
        // Extended capabilities.
        let mut first_ext = true;
        for _ in 0..u.int_in_range(0..=5)? {
            let id = *u.choose(&[0x10u16, 0x0e, 0x15, 0x24, 0x01, 0x0b])?;
            let id = if one_in(u, 8)? { u.arbitrary()? } else { id };
            let len = 4 * u.int_in_range(0..=0x14)?;
            let body = crate::input::data(u, len)?;
            let gap = if one_in(u, 4)? {
                u.int_in_range(0..=64)?
            } else {
                0
            };
            // Mostly a null capability at 0x100 in front of a first capability past it.
            let link_head = !(gap > 0 && first_ext && one_in(u, 4)?);
            if b.try_ext_cap(id, &body, gap, link_head).is_none() {
                break;
            }
            first_ext = false;
        }

        // Interrupts.
        let flags = |u: &mut Unstructured| -> Result<u32> {
            Ok(if one_in(u, 16)? {
                u.arbitrary()?
            } else {
                VFIO_IRQ_INFO_EVENTFD
            })
        };
        let intx = if one_in(u, 4)? { 0 } else { 1 };
        let f = flags(u)?;
        b.irq_with_flags(INTX_IRQ, intx, f);
        let msi = match u.int_in_range(0u8..=3)? {
            0 => 0,
            1 => u.int_in_range(0..=64)?,
            _ => 1 << u.int_in_range(0..=5)?,
        };
        let f = flags(u)?;
        b.irq_with_flags(MSI_IRQ, msi, f);
        let msix = match u.int_in_range(0u8..=3)? {
            0 => 0,
            1 => u.int_in_range(0..=4096)?,
            _ => u.int_in_range(1..=64)?,
        };
        let f = flags(u)?;
        b.irq_with_flags(MSIX_IRQ, msix, f);
        if one_in(u, 8)? {
            let flags = u.arbitrary()?;
            let num_regions = u.int_in_range(0..=12)?;
            let num_irqs = u.int_in_range(0..=6)?;
            b.device_info(DeviceInfo {
                flags,
                num_regions,
                num_irqs,
            });
        } else if one_in(u, 4)? {
            b.no_reset();
        }
        Ok(Shape {
            device: b,
            rom_file,
        })
    }
}

/// An MSI-X table or PBA register: BAR indicator and 8-byte aligned offset, mostly inside the
/// first pages, sometimes anything.
fn msix_region(u: &mut Unstructured) -> Result<u32> {
    Ok(if one_in(u, 8)? {
        u.arbitrary()?
    } else {
        let bir = u.int_in_range(0..=5)?;
        let off: u32 = u.int_in_range(0..=0x4000)?;
        (off & !7) | bir
    })
}
