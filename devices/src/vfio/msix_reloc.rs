//! Relocating the MSI-X table and PBA the guest sees, so that the BAR holding them can be
//! guest memory whole (docs/passthrough.md, "The MSI-X page").
//!
//! # Why
//!
//! The model emulates the MSI-X table and PBA (a guest-programmed vector becomes a KVM route),
//! so guest accesses to them must trap. KVM memory slots are made of whole host pages, so
//! without relocation the host pages holding the table and the PBA trap as a whole, and a
//! device register that shares such a page costs a VMM exit on every access.
//!
//! # What
//!
//! With [`MsixRelocation::Auto`] (the default), when
//!
//! - the kernel reports `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE` for the table's BAR (the region
//!   may be mmapped whole, table included; without it the table's pages cannot be mapped and
//!   relocating would gain nothing), and
//! - the host pages of the table or the PBA hold other bytes of their BAR,
//!
//! the guest sees the table's BAR doubled: the lower half is the device's BAR, mmapped whole
//! (sparse areas permitting), and the upper half holds the emulated table at its start and the
//! PBA right after it; the capability's Table and PBA registers point there, and only that
//! upper half traps. The PBA moves along even when the device has it in another BAR. Offsets
//! are relative to the BAR, so when the guest moves or resizes the BAR, the relocated table
//! moves with it. The device's own table and PBA, now inside the mapped lower half, are the
//! kernel's to protect: it offers the capability because a write there cannot reach beyond the
//! device's own interrupts (the IOMMU remaps or isolates MSI, which `vfio_iommu_type1` requires
//! unless loaded with `allow_unsafe_interrupts`).
//!
//! Why the same BAR doubled rather than a free BAR register (QEMU's `x-msix-relocation`
//! offers both; cloud-hypervisor doubles): it always works, since a device with three 64-bit
//! BARs (or six 32-bit ones) has no free register; the BAR indices a driver looks for stay the
//! same, and a driver checking that its BAR is at least some size still passes. The cost is
//! guest address space (twice the BAR, naturally aligned), and a relocation that cannot be
//! expressed: a 32-bit BAR that would pass 2 GiB, or a half of 4 GiB or more (the Table offset
//! register has 32 bits), stays as it is, with a warning.

use std::str::FromStr;

use super::bars::{Bar, HOST_PAGE_SIZE};
use crate::pci::bar::BarSpec;
use crate::pci::caps::msix::MsixCap;

/// `msix_relocation=` of `--device`: whether the MSI-X table and PBA the guest sees may be
/// moved off the device's registers (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MsixRelocation {
    /// Relocate when the kernel reports the table's BAR mmappable whole and the pages of the
    /// table or PBA hold other bytes of the BAR; otherwise keep the device's layout.
    #[default]
    Auto,
    /// Keep the device's layout: the host pages of the table and PBA trap.
    Off,
}

impl FromStr for MsixRelocation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            _ => Err(format!("msix_relocation takes auto or off, not '{s}'")),
        }
    }
}

impl std::fmt::Display for MsixRelocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Off => "off",
        })
    }
}

/// Where the guest sees the relocated table and PBA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relocation {
    /// The BAR that holds both (the table's).
    pub bar: usize,
    /// Its size as the guest sees it (twice the half).
    pub size: u64,
    /// The table's offset: the start of the upper half.
    pub table_offset: u32,
    /// The PBA's offset, right after the table.
    pub pba_offset: u32,
}

/// `ranges` as sorted, merged `[start, end)` ranges, empty ones dropped.
fn merged(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.0 < r.1);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The bytes two merged range lists have in common.
fn common(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in a {
        for &(t, f) in b {
            if s.max(t) < e.min(f) {
                out.push((s.max(t), e.min(f)));
            }
        }
    }
    merged(out)
}

fn total(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|(s, e)| e - s).sum()
}

/// Bytes of BAR `bar` that trap only because they share a host page with the table or PBA:
/// inside the pages they touch and the region's mmappable areas, outside the structures.
fn shared_bytes(cap: &MsixCap, bar: &Bar) -> u64 {
    let structs = merged(
        [cap.table(), cap.pba()]
            .iter()
            .filter(|s| s.0 == bar.index)
            .filter_map(|&(_, off, len)| Some((off, off.checked_add(len)?)))
            .collect(),
    );
    let pages = merged(
        structs
            .iter()
            .map(|&(s, e)| {
                let end = e
                    .checked_next_multiple_of(HOST_PAGE_SIZE)
                    .unwrap_or(u64::MAX);
                (s - s % HOST_PAGE_SIZE, end)
            })
            .collect(),
    );
    let areas = merged(
        bar.region
            .mmap_areas()
            .iter()
            .filter_map(|a| Some((a.offset, a.offset.checked_add(a.size)?)))
            .collect(),
    );
    let exposed = common(&pages, &areas);
    total(&exposed) - total(&common(&exposed, &structs))
}

/// Decides whether and where to relocate the table and PBA of `cap` (which fit in `bars`), and
/// says why at info level (`-v`): `name` is the device's, for the messages.
pub(crate) fn plan(
    mode: MsixRelocation,
    cap: &MsixCap,
    bars: &[Bar],
    name: &str,
) -> Option<Relocation> {
    let (tbar, toff, tlen) = cap.table();
    let (pbar, poff, plen) = cap.pba();
    let layout = format!(
        "the table (BAR {tbar} offset {toff:#x}, {tlen:#x} bytes) and PBA (BAR {pbar} offset {poff:#x})"
    );
    if mode == MsixRelocation::Off {
        log::info!(
            "VFIO {name}: MSI-X not relocated (msix_relocation=off): the host pages of {layout} trap"
        );
        return None;
    }
    let bar = bars.iter().find(|b| b.index == tbar)?;
    if !bar.region.msix_mappable {
        log::info!(
            "VFIO {name}: MSI-X not relocated: the kernel does not report VFIO_REGION_INFO_CAP_MSIX_MAPPABLE for BAR {tbar} (its table may not be mmapped), so the host pages of {layout} trap"
        );
        return None;
    }
    let shared: u64 = bars
        .iter()
        .filter(|b| b.index == tbar || b.index == pbar)
        .map(|b| shared_bytes(cap, b))
        .sum();
    if shared == 0 {
        log::info!(
            "VFIO {name}: MSI-X not relocated: {layout} fill their host pages alone, so nothing else of the BAR traps"
        );
        return None;
    }
    // Table then PBA (the table is a multiple of 16 bytes, so the PBA stays 8-byte aligned), in
    // whole host pages, rounded to a power of two: a BAR's halves are.
    let need = tlen
        .checked_add(plen)
        .and_then(|n| n.checked_next_multiple_of(HOST_PAGE_SIZE))
        .and_then(u64::checked_next_power_of_two)?;
    let half = bar.spec.size.max(need);
    let spec = BarSpec {
        size: half.saturating_mul(2),
        ..bar.spec
    };
    let offsets = u32::try_from(half)
        .ok()
        .and_then(|t| Some((t, t.checked_add(u32::try_from(tlen).ok()?)?)));
    let (Some((table_offset, pba_offset)), Ok(())) = (offsets, spec.validate(tbar)) else {
        log::warn!(
            "VFIO {name}: MSI-X not relocated: BAR {tbar} doubled to {:#x} bytes is too large for a {:?} BAR or an MSI-X offset; the host pages of {layout} trap ({shared:#x} bytes besides them)",
            spec.size,
            spec.kind
        );
        return None;
    };
    log::info!(
        "VFIO {name}: MSI-X relocated: the host pages of {layout} hold {shared:#x} other bytes of the device's BARs; the guest sees BAR {tbar} as {:#x} bytes: the device's {:#x} mapped as it is, the table at offset {table_offset:#x} and the PBA at {pba_offset:#x} (trapped)",
        spec.size,
        bar.spec.size
    );
    Some(Relocation {
        bar: tbar,
        size: spec.size,
        table_offset,
        pba_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_arithmetic() {
        assert_eq!(
            merged(vec![(5, 9), (0, 2), (2, 3), (8, 12), (4, 4)]),
            vec![(0, 3), (5, 12)]
        );
        assert_eq!(
            common(&[(0, 10), (20, 30)], &[(5, 25)]),
            vec![(5, 10), (20, 25)]
        );
        assert_eq!(total(&[(0, 3), (5, 12)]), 10);
    }

    #[test]
    fn parse_and_print() {
        assert_eq!("auto".parse(), Ok(MsixRelocation::Auto));
        assert_eq!("off".parse(), Ok(MsixRelocation::Off));
        assert!("on".parse::<MsixRelocation>().is_err());
        assert_eq!(MsixRelocation::default().to_string(), "auto");
        assert_eq!(MsixRelocation::Off.to_string(), "off");
    }
}
