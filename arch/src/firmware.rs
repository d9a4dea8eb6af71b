//! Where UEFI firmware images go in guest physical memory: the OVMF builds Debian ships, told
//! apart by their size, and the addresses each implies.
//!
//! An OVMF image ends at 4 GiB, where the reset vector (0xFFFF_FFF0) must be. Its variable
//! store (VARS) sits directly below its code (CODE); both addresses are fixed by the build
//! (edk2 `OvmfPkgDefines.fdf.inc`), so a split CODE file tells its VARS size by its own size:
//!
//! | image | size (bytes) | VARS | CODE |
//! |---|---|---|---|
//! | `OVMF_CODE_4M.fd` | 3,653,632 | 0xFFC0_0000, 0x84000 bytes | 0xFFC8_4000 – 4 GiB |
//! | `OVMF_CODE.fd` (2M) | 1,966,080 | 0xFFE0_0000, 0x20000 bytes | 0xFFE2_0000 – 4 GiB |
//! | `OVMF.fd` 4M unified | 4,194,304 | its first 0x84000 bytes, at 0xFFC0_0000 | the rest |
//! | `OVMF.fd` 2M unified | 2,097,152 | its first 0x20000 bytes, at 0xFFE0_0000 | the rest |

/// One past the last byte of every firmware image: 4 GiB.
pub const FIRMWARE_END: u64 = 1 << 32;
/// Size of the 4M build's CODE image.
pub const CODE_4M_LEN: u64 = 3_653_632;
/// Size of the 4M build's VARS image.
pub const VARS_4M_LEN: u64 = 0x84000;
/// Size of the 2M build's CODE image.
pub const CODE_2M_LEN: u64 = 1_966_080;
/// Size of the 2M build's VARS image.
pub const VARS_2M_LEN: u64 = 0x20000;

/// KVM's TSS (three pages, Intel hosts): below the firmware range, above the LAPIC, where QEMU
/// puts it (an image up to 16 MiB below 4 GiB never reaches it).
pub const KVM_TSS_ADDRESS: u64 = 0xfeff_d000;
/// KVM's identity-map page (one page, Intel hosts), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfeff_c000;

/// How a firmware file is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareKind {
    /// CODE only; VARS comes from a separate file of [`FirmwareLayout::vars_len`] bytes.
    Split,
    /// One file holding VARS then CODE (`OVMF.fd`).
    Unified,
}

/// Where the parts of a firmware image go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareLayout {
    /// Split or unified.
    pub kind: FirmwareKind,
    /// Guest address of the variable store (the CFI flash).
    pub vars_base: u64,
    /// Its length.
    pub vars_len: u64,
    /// Guest address of the code (a read-only memory slot up to [`FIRMWARE_END`]).
    pub code_base: u64,
    /// Its length.
    pub code_len: u64,
    /// Offset of the code within the file (the VARS length for a unified image, else 0).
    pub code_offset: u64,
}

/// The image sizes [`FirmwareLayout::for_image_size`] knows, for error messages.
pub const KNOWN_SIZES: &str = "3653632 (OVMF_CODE_4M.fd), 1966080 (OVMF_CODE.fd, 2M), \
4194304 (a 4M unified OVMF.fd) or 2097152 (a 2M unified OVMF.fd)";

impl FirmwareLayout {
    /// The layout for a firmware file of `size` bytes, or `None` when no known build has that
    /// size (see [`KNOWN_SIZES`]).
    pub fn for_image_size(size: u64) -> Option<Self> {
        let (kind, vars_len, code_len) = match size {
            CODE_4M_LEN => (FirmwareKind::Split, VARS_4M_LEN, CODE_4M_LEN),
            CODE_2M_LEN => (FirmwareKind::Split, VARS_2M_LEN, CODE_2M_LEN),
            s if s == VARS_4M_LEN + CODE_4M_LEN => {
                (FirmwareKind::Unified, VARS_4M_LEN, CODE_4M_LEN)
            }
            s if s == VARS_2M_LEN + CODE_2M_LEN => {
                (FirmwareKind::Unified, VARS_2M_LEN, CODE_2M_LEN)
            }
            _ => return None,
        };
        let code_base = FIRMWARE_END - code_len;
        Some(FirmwareLayout {
            kind,
            vars_base: code_base - vars_len,
            vars_len,
            code_base,
            code_len,
            code_offset: if kind == FirmwareKind::Unified {
                vars_len
            } else {
                0
            },
        })
    }

    /// The lowest guest address the firmware occupies.
    pub fn start(&self) -> u64 {
        self.vars_base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;

    #[test]
    fn debian_images_land_where_their_build_expects() {
        let l = FirmwareLayout::for_image_size(3_653_632).unwrap();
        assert_eq!(
            (l.kind, l.vars_base, l.vars_len, l.code_base, l.code_offset),
            (FirmwareKind::Split, 0xffc0_0000, 540_672, 0xffc8_4000, 0)
        );
        let l = FirmwareLayout::for_image_size(1_966_080).unwrap();
        assert_eq!(
            (l.kind, l.vars_base, l.vars_len, l.code_base),
            (FirmwareKind::Split, 0xffe0_0000, 131_072, 0xffe2_0000)
        );
        let l = FirmwareLayout::for_image_size(2 << 20).unwrap();
        assert_eq!(
            (l.kind, l.vars_base, l.code_base, l.code_offset),
            (FirmwareKind::Unified, 0xffe0_0000, 0xffe2_0000, 0x20000)
        );
        let l = FirmwareLayout::for_image_size(4 << 20).unwrap();
        assert_eq!(
            (l.kind, l.vars_base, l.code_base, l.code_offset),
            (FirmwareKind::Unified, 0xffc0_0000, 0xffc8_4000, 0x84000)
        );
        for size in [0, 1, 540_672, 131_072, 3_653_631, (4 << 20) + 1, 8 << 20] {
            assert_eq!(FirmwareLayout::for_image_size(size), None, "{size}");
        }
    }

    /// Every layout ends at 4 GiB on page boundaries (KVM maps whole pages), and none overlaps
    /// KVM's pages, the LAPIC, the IOAPIC or the PCI windows.
    #[test]
    fn layouts_are_page_aligned_and_clear_of_everything_else() {
        for size in [CODE_4M_LEN, CODE_2M_LEN, 2 << 20, 4 << 20] {
            let l = FirmwareLayout::for_image_size(size).unwrap();
            assert_eq!(l.code_base + l.code_len, FIRMWARE_END);
            assert_eq!(l.vars_base + l.vars_len, l.code_base);
            assert_eq!((l.vars_base % 4096, l.code_base % 4096), (0, 0));
            assert!(KVM_TSS_ADDRESS + 3 * 4096 <= l.start());
        }
        const {
            assert!(KVM_IDENTITY_MAP_ADDRESS + 4096 == KVM_TSS_ADDRESS);
            assert!(layout::APIC_START + 4096 <= KVM_IDENTITY_MAP_ADDRESS);
            assert!(layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE <= layout::IOAPIC_START);
        }
    }
}
