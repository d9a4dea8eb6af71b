//! The type-1 and ECAM mechanisms, the host bridge and the 0xCF9 reset register.

use super::*;
use crate::exit::GuestExit;

#[test]
fn host_bridge_identity() {
    let r = Rig::new();
    assert_eq!(r.ecam_read32(0, 0), 0x29c0_8086);
    assert_eq!(r.ecam_read32(0, 0x08) >> 8, 0x06_00_00);
    assert_eq!(r.ecam_read32(0, 0x0c) & 0x00ff_0000, 0, "header type 0");
    assert_eq!(r.cf8_read(0, 0, 4), 0x29c0_8086);
    assert_eq!(r.ecam_read32(0, 0x2c), 0x1100_1af4);
    // No BARs, no interrupt pin.
    for bar in 0..6 {
        r.ecam_write32(0, 0x10 + 4 * bar, u32::MAX);
        assert_eq!(r.ecam_read32(0, 0x10 + 4 * bar), 0);
    }
    assert_eq!(r.ecam_read(0, 0x3d, 1), 0);
}

#[test]
fn absent_functions_read_all_ones() {
    let r = Rig::new();
    r.add_testdev(3);
    assert_eq!(r.ecam_read32(1, 0), u32::MAX);
    assert_eq!(r.cf8_read(31, 0, 4), u64::from(u32::MAX));
    let mut b = [0u8; 4];
    // Function 1 of a present device, bus 1, bus 255.
    for addr in [
        Rig::ecam_addr(3, 1, 0),
        ECAM + (1 << 20),
        ECAM + (255 << 20) + 0xffc,
    ] {
        r.mmio.read(addr, &mut b);
        assert_eq!(b, [0xff; 4]);
        r.mmio.write(addr, &[0; 4]);
    }
    // Function 1 through type 1.
    r.pio.write(CF8, &Rig::cf8_address(3, 1, 0).to_le_bytes());
    r.pio.read(0xcfc, &mut b);
    assert_eq!(b, [0xff; 4]);
}

#[test]
fn cf8_and_ecam_agree_on_every_offset() {
    let r = Rig::new();
    r.add_testdev(2);
    r.add_testdev(5);
    for dev in [0u8, 2, 5, 7] {
        for off in 0..256u16 {
            for len in [1usize, 2, 4] {
                if off as usize % len != 0 && len == 4 {
                    continue;
                }
                // Words at odd offsets are unaligned; they must still agree.
                if off % 4 + len as u16 > 4 {
                    continue;
                }
                assert_eq!(
                    r.ecam_read(dev, off, len),
                    r.cf8_read(dev, off, len),
                    "device {dev} offset {off:#x} len {len}"
                );
            }
        }
    }
    // An 8-byte ECAM read is two dword reads.
    let lo = r.ecam_read32(2, 0x10);
    let hi = r.ecam_read32(2, 0x14);
    assert_eq!(
        r.ecam_read(2, 0x10, 8),
        u64::from(lo) | (u64::from(hi) << 32)
    );
}

#[test]
fn writes_through_either_mechanism_are_the_same() {
    let r = Rig::new();
    r.add_testdev(2);
    // Interrupt line via a type-1 byte write at 0xCFC + 0 with register 0x3c.
    r.cf8_write(2, 0x3c, 1, 0x42);
    assert_eq!(r.ecam_read(2, 0x3c, 1), 0x42);
    // Cache line size via an ECAM word write covering 0x0c/0x0d (latency timer is RO).
    r.ecam_write(2, 0x0c, 2, 0xffff);
    assert_eq!(r.cf8_read(2, 0x0c, 2), 0x00ff);
    // A word through 0xCFD (unaligned): bytes 0x3d (RO pin) and 0x3e (RO).
    r.cf8_write(2, 0x3d, 2, 0xffff);
    assert_eq!(r.ecam_read(2, 0x3c, 4) & 0xffff_ff00, 0x0000_0100);
}

#[test]
fn extended_space_only_through_ecam() {
    let r = Rig::new();
    r.add_testdev(2);
    // VSEC at 0x100: header, VSEC header, IDENT, RW scratch.
    assert_eq!(r.ecam_read32(2, 0x100) & 0xffff, 0x000b);
    assert_eq!(r.ecam_read32(2, 0x108), u32::from_le_bytes(*b"VFTD"));
    r.ecam_write32(2, 0x10c, 0x1234_5678);
    assert_eq!(r.ecam_read32(2, 0x10c), 0x1234_5678);
    // The type-1 register field is 8 bits: 0x100 aliases 0x00.
    assert_eq!(r.cf8_read(2, 0x100, 4), r.ecam_read(2, 0, 4));
    // The host bridge has no extended space: zeros.
    assert_eq!(r.ecam_read32(0, 0x100), 0);
    // Past the end of a function's 4 KiB via an 8-byte access at 0xffc: second half is the
    // next function (absent).
    assert_eq!(r.ecam_read(2, 0xffc, 8) >> 32, u64::from(u32::MAX));
}

#[test]
fn config_address_register_semantics() {
    let r = Rig::new();
    let mut b = [0u8; 4];
    r.pio.write(CF8, &0x8000_1234u32.to_le_bytes());
    r.pio.read(CF8, &mut b);
    // Bits 1:0 and 30:24 read zero.
    assert_eq!(u32::from_le_bytes(b), 0x8000_1234);
    r.pio.write(CF8, &0xffff_ffffu32.to_le_bytes());
    r.pio.read(CF8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x80ff_fffc);
    // Bits 1:0 read zero but address a byte within the dword, ORed with the data port's
    // offset, as in QEMU (kvm-unit-tests reads the device ID with register 2 and a word at
    // 0xCFC).
    let id = r.ecam_read32(0, 0);
    r.pio.write(CF8, &0x8000_0002u32.to_le_bytes());
    r.pio.read(CF8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    let mut w = [0u8; 2];
    r.pio.read(0xcfc, &mut w);
    assert_eq!(u32::from(u16::from_le_bytes(w)), id >> 16);
    r.pio.read(0xcfe, &mut w);
    assert_eq!(u32::from(u16::from_le_bytes(w)), id >> 16);
    r.pio.write(CF8, &0x8000_0001u32.to_le_bytes());
    r.pio.read(0xcfc, &mut b[..1]);
    assert_eq!(u32::from(b[0]), (id >> 8) & 0xff);
    r.pio.read(0xcfe, &mut b[..1]);
    assert_eq!(u32::from(b[0]), (id >> 24) & 0xff);
    // Register 0xFF with a dword access: what ECAM gives there (split by the platform).
    r.pio.write(CF8, &0x8000_00ffu32.to_le_bytes());
    r.pio.read(0xcfc, &mut b);
    let mut want = [0u8; 4];
    r.mmio.read(Rig::ecam_addr(0, 0, 0xff), &mut want);
    assert_eq!(b, want);
    r.pio.write(CF8, &0xffff_ffffu32.to_le_bytes());
    // Byte and word writes do not change it.
    r.pio.write(CF8, &[0]);
    r.pio.write(CF8 + 2, &[0, 0]);
    r.pio.read(CF8, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x80ff_fffc);
    // Non-dword reads of 0xCF8 read all ones.
    let mut w = [0u8; 2];
    r.pio.read(CF8, &mut w);
    assert_eq!(w, [0xff, 0xff]);
    // Enable bit clear: data reads all ones, writes dropped.
    r.pio.write(CF8, &0x0000_0000u32.to_le_bytes());
    r.pio.read(0xcfc, &mut b);
    assert_eq!(b, [0xff; 4]);
    r.pio.write(0xcfc, &[1, 2, 3, 4]);
    assert_eq!(r.ecam_read32(0, 0), 0x29c0_8086);
}

#[test]
fn reset_control_register() {
    let r = Rig::new();
    let mut b = [0u8; 1];
    r.pio.write(0xcf9, &[0x02]);
    r.pio.read(0xcf9, &mut b);
    assert_eq!(b[0], 0x02);
    assert!(r.exits.0.lock().unwrap().is_empty());
    // A dword write at 0xCF8 is the address register, not a reset.
    r.pio.write(CF8, &0x0000_0600u32.to_le_bytes());
    assert!(r.exits.0.lock().unwrap().is_empty());
    r.pio.write(0xcf9, &[0x06]);
    assert_eq!(*r.exits.0.lock().unwrap(), vec![GuestExit::Reset]);
    r.pio.write(0xcf9, &[0x0e]);
    assert_eq!(r.exits.0.lock().unwrap().len(), 2);
    r.pio.read(0xcf9, &mut b);
    assert_eq!(b[0], 0x0a);
}
