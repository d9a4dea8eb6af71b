//! QEMU-compatible `pc-testdev`: the ISA test device kvm-unit-tests' x86 tests use to check
//! port I/O emulation (`emulator`, `realmode`, `amd_sev`), to drop a page from KVM's mappings
//! (`eventinj`) and to raise and lower interrupt lines (`ioapic`, `lib/x86/apic.c`'s
//! `set_irq_line`).
//!
//! # Register map (two port ranges; the VMM picks the bases, QEMU's are given)
//!
//! | Port (QEMU) | Offset | Access | Meaning |
//! |---|---|---|---|
//! | 0xe0–0xe3 | 0–3 | R/W, 1/2/4 bytes | a 32-bit data register: an access of n bytes at offset k reads or writes bytes k..k+n of it (bytes past 3 read 0 and are dropped) |
//! | 0xe4–0xe7 | 4–7 | W, 4 bytes | flush page: the guest physical address written names a page whose host mapping is write-protected and restored, so KVM drops its mapping of it and the guest's next access faults into KVM again; other sizes and reads are ignored (reads all ones) |
//! | 0xe8–0xeb | 8–11 | R/W, 1/2/4 bytes | the same data register, byte by byte |
//! | 0x2000–0x2017 | 0–23 of [`PC_TESTDEV_IRQ_LEN`] | W, 1 byte | interrupt line n = offset: a non-zero byte raises GSI n, zero lowers it; a wider write is consecutive byte writes to consecutive lines (as QEMU splits it: kvm-unit-tests' `realmode` raises line 11 with an `outl` to 0x200b); reads all ones |
//!
//! | 0xFF000000 (MMIO) | 0–0xFFFF of [`PC_TESTDEV_IOMEM_LEN`] | R/W, any size | 64 KiB of memory behind MMIO exits (kvm-unit-tests' `emulator`, `lam` and `cmpxchg8b` map it to run instructions against emulated memory); zero at start ([`PcTestDevIomem`]) |

use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::bus::BusDevice;
use crate::legacy::Once;

/// Length of the data/flush port range (QEMU: 0xe0–0xeb).
pub const PC_TESTDEV_PORT_LEN: u64 = 0x0c;
/// Length of the interrupt line range (QEMU: 0x2000–0x2017, one port per ISA/IOAPIC line).
pub const PC_TESTDEV_IRQ_LEN: u64 = 24;
/// Length of the MMIO scratch memory (QEMU: 0xFF000000–0xFF00FFFF).
pub const PC_TESTDEV_IOMEM_LEN: u64 = 0x1_0000;

const DATA: u64 = 0;
const FLUSH: u64 = 4;
const DATA_BYTES: u64 = 8;
const PAGE_SIZE: u64 = 0x1000;

/// Sets the level of an interrupt line (a GSI of the in-kernel IOAPIC and PIC).
pub trait IrqLevel: Send {
    /// Raises (`true`) or lowers line `gsi`.
    fn set_level(&self, gsi: u32, level: bool) -> Result<(), String>;
}

/// Drops a guest page from the hypervisor's mappings (the flush port).
pub trait PageFlush: Send {
    /// Flushes the page at guest physical `addr` (page aligned).
    fn flush(&self, addr: u64) -> Result<(), String>;
}

/// [`PageFlush`] for guest memory mapped into this process: the page is write-protected and
/// made writable again with `mprotect`, which makes the kernel tell KVM (its MMU notifier) to
/// drop the page's mapping. For the instant between the two calls a write by the VMM itself to
/// that page would fault; only a test guest asks for it.
pub struct MprotectFlush<M: GuestMemoryBackend + Send> {
    mem: M,
}

impl<M: GuestMemoryBackend + Send> std::fmt::Debug for MprotectFlush<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MprotectFlush").finish_non_exhaustive()
    }
}

impl<M: GuestMemoryBackend + Send> MprotectFlush<M> {
    /// Flushes pages of `mem`.
    pub fn new(mem: M) -> Self {
        MprotectFlush { mem }
    }
}

impl<M: GuestMemoryBackend + Send> PageFlush for MprotectFlush<M> {
    fn flush(&self, addr: u64) -> Result<(), String> {
        let host = self
            .mem
            .get_host_address(GuestAddress(addr))
            .map_err(|e| format!("{addr:#x} is not guest RAM ({e})"))?;
        let len = PAGE_SIZE as usize;
        for prot in [libc::PROT_READ, libc::PROT_READ | libc::PROT_WRITE] {
            // SAFETY: `host` is the page-aligned start of a page of guest RAM this process maps
            // (from `get_host_address`, and the guest address is page aligned, as is every
            // region's host mapping); changing its protection touches no Rust object, and the
            // second call restores read/write, as guest RAM is mapped.
            let r = unsafe { libc::mprotect(host.cast(), len, prot) };
            if r != 0 {
                return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

/// The data and flush ports of `pc-testdev`.
pub struct PcTestDev {
    data: u32,
    flush: Box<dyn PageFlush>,
    warned_flush: Once,
}

impl std::fmt::Debug for PcTestDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcTestDev")
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

impl PcTestDev {
    /// The data and flush ports; flush requests go to `flush`.
    pub fn new(flush: Box<dyn PageFlush>) -> Self {
        PcTestDev {
            data: 0,
            flush,
            warned_flush: Once::default(),
        }
    }
}

impl BusDevice for PcTestDev {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let reg = match offset {
            DATA..FLUSH => offset - DATA,
            DATA_BYTES..PC_TESTDEV_PORT_LEN => offset - DATA_BYTES,
            _ => {
                data.fill(0xff);
                return;
            }
        };
        let bytes = self.data.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(reg as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let reg = match offset {
            DATA..FLUSH => offset - DATA,
            DATA_BYTES..PC_TESTDEV_PORT_LEN => offset - DATA_BYTES,
            FLUSH if data.len() == 4 => {
                let addr = u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
                if let Err(e) = self.flush.flush(addr & !(PAGE_SIZE - 1)) {
                    if self.warned_flush.first() {
                        log::warn!("pc-testdev: cannot flush the page at {addr:#x}: {e}");
                    }
                }
                return;
            }
            _ => return,
        };
        let mut bytes = self.data.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(reg as usize + i) {
                *slot = *b;
            }
        }
        self.data = u32::from_le_bytes(bytes);
    }
}

/// The interrupt line ports of `pc-testdev`.
pub struct PcTestDevIrq {
    irq: Box<dyn IrqLevel>,
    warned: Once,
}

impl std::fmt::Debug for PcTestDevIrq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcTestDevIrq").finish_non_exhaustive()
    }
}

impl PcTestDevIrq {
    /// Interrupt line ports that set levels through `irq`.
    pub fn new(irq: Box<dyn IrqLevel>) -> Self {
        PcTestDevIrq {
            irq,
            warned: Once::default(),
        }
    }
}

impl BusDevice for PcTestDevIrq {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // QEMU's line ports take single bytes; it splits a wider access into byte accesses.
        crate::legacy::write_bytes(offset, data, |line, level| {
            if line >= PC_TESTDEV_IRQ_LEN {
                return;
            }
            if let Err(e) = self.irq.set_level(line as u32, level != 0) {
                if self.warned.first() {
                    log::warn!("pc-testdev: cannot set interrupt line {line}: {e}");
                }
            }
        });
    }
}

/// The MMIO scratch memory of `pc-testdev`: reads and writes of any size land in a 64 KiB
/// buffer (bytes past its end read 0 and are dropped).
pub struct PcTestDevIomem {
    buf: Vec<u8>,
}

impl std::fmt::Debug for PcTestDevIomem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcTestDevIomem").finish_non_exhaustive()
    }
}

impl Default for PcTestDevIomem {
    fn default() -> Self {
        PcTestDevIomem {
            buf: vec![0; PC_TESTDEV_IOMEM_LEN as usize],
        }
    }
}

impl BusDevice for PcTestDevIomem {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        crate::legacy::read_bytes(offset, data, 0, |o| {
            usize::try_from(o)
                .ok()
                .and_then(|o| self.buf.get(o))
                .copied()
                .unwrap_or(0)
        });
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        crate::legacy::write_bytes(offset, data, |o, b| {
            if let Some(slot) = usize::try_from(o).ok().and_then(|o| self.buf.get_mut(o)) {
                *slot = b;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Vec<(u32, bool)>>>, Arc<Mutex<Vec<u64>>>);

    impl IrqLevel for Record {
        fn set_level(&self, gsi: u32, level: bool) -> Result<(), String> {
            self.0.lock().unwrap().push((gsi, level));
            Ok(())
        }
    }

    impl PageFlush for Record {
        fn flush(&self, addr: u64) -> Result<(), String> {
            self.1.lock().unwrap().push(addr);
            Ok(())
        }
    }

    fn rd(d: &mut PcTestDev, off: u64, n: usize) -> u64 {
        let mut b = [0u8; 8];
        d.read(0xe0, off, &mut b[..n]);
        u64::from_le_bytes(b)
    }

    #[test]
    fn data_register_by_width_and_offset() {
        let r = Record::default();
        let mut d = PcTestDev::new(Box::new(r.clone()));
        d.write(0xe0, 0, &0x1234_5678u32.to_le_bytes());
        assert_eq!(rd(&mut d, 0, 4), 0x1234_5678);
        assert_eq!(rd(&mut d, 0, 1), 0x78);
        assert_eq!(rd(&mut d, 0, 2), 0x5678);
        assert_eq!(rd(&mut d, 2, 2), 0x1234);
        // Byte view at 8, the same register.
        assert_eq!(rd(&mut d, 9, 1), 0x56);
        d.write(0xe0, 10, &[0xab]);
        assert_eq!(rd(&mut d, 0, 4), 0x12ab_5678);
        // A 2-byte write keeps the other bytes (the emulator test's `outw 0x9999`).
        d.write(0xe0, 0, &0x9999u16.to_le_bytes());
        assert_eq!(rd(&mut d, 0, 4), 0x12ab_9999);
        // Past the register: reads 0, writes dropped.
        d.write(0xe0, 3, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(rd(&mut d, 0, 4), 0xffab_9999);
        assert_eq!(rd(&mut d, 3, 4), 0xff);
        // The flush port is write-only, 4 bytes.
        assert_eq!(rd(&mut d, 4, 4), 0xffff_ffff);
        d.write(0xe0, 4, &[1]);
        d.write(0xe0, 4, &0x0012_3456u32.to_le_bytes());
        assert_eq!(*r.1.lock().unwrap(), vec![0x12_3000]);
        assert_eq!(
            rd(&mut d, 0, 4),
            0xffab_9999,
            "the flush leaves the data alone"
        );
    }

    #[test]
    fn irq_lines_by_byte() {
        let r = Record::default();
        let mut d = PcTestDevIrq::new(Box::new(r.clone()));
        d.write(0x2000, 14, &[1]);
        d.write(0x2000, 14, &[0]);
        d.write(0x2000, 23, &[0x80]);
        d.write(0x2000, 24, &[1]);
        assert_eq!(
            *r.0.lock().unwrap(),
            vec![(14, true), (14, false), (23, true)]
        );
        r.0.lock().unwrap().clear();
        // realmode's `outl 1` to 0x200b: line 11 up, 12-14 down; bytes past line 23 dropped.
        d.write(0x2000, 11, &1u32.to_le_bytes());
        d.write(0x2000, 22, &[0, 5, 1, 1]);
        assert_eq!(
            *r.0.lock().unwrap(),
            vec![
                (11, true),
                (12, false),
                (13, false),
                (14, false),
                (22, false),
                (23, true)
            ]
        );
        let mut b = [0u8; 1];
        d.read(0x2000, 0, &mut b);
        assert_eq!(b, [0xff]);
    }

    #[test]
    fn iomem_is_memory() {
        let mut m = PcTestDevIomem::default();
        let mut b = [0u8; 8];
        m.read(0, 0x100, &mut b);
        assert_eq!(b, [0; 8]);
        m.write(0, 0x100, &0x0123_4567_89ab_cdefu64.to_le_bytes());
        m.write(0, 0x102, &[0xee]);
        m.read(0, 0x100, &mut b);
        assert_eq!(u64::from_le_bytes(b), 0x0123_4567_89ee_cdef);
        m.write(0, 0xfffe, &[1, 2, 3, 4]);
        let mut b = [0xaau8; 4];
        m.read(0, 0xfffe, &mut b);
        assert_eq!(b, [1, 2, 0, 0]);
    }

    #[test]
    fn mprotect_flush_keeps_the_page_usable() {
        use vm_memory::{Bytes, GuestMemoryMmap};
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        m.write_obj(0x55aa_u32, GuestAddress(0x1000)).unwrap();
        let f = MprotectFlush::new(m.clone());
        f.flush(0x1000).unwrap();
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0x55aa);
        m.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        assert!(f.flush(0x10_0000).is_err());
    }
}
