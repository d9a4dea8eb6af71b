//! The CFI flash through its MMIO interface, with the command sequences of OVMF's
//! `QemuFlash.c`, and its backing file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::bus::BusDevice;
use std::sync::{Arc, Mutex};

use crate::firmware::{
    ArrayMapping, CfiFlash, FlashError, FLASH_BLOCK_SIZE, OVMF_VARS_2M_LEN, OVMF_VARS_4M_LEN,
};

const BASE: u64 = 0xffc0_0000;
const BLOCK: usize = FLASH_BLOCK_SIZE as usize;

fn rd(f: &mut CfiFlash, offset: u64) -> u8 {
    let mut d = [0u8];
    f.read(BASE, offset, &mut d);
    d[0]
}

fn wr(f: &mut CfiFlash, offset: u64, v: u8) {
    f.write(BASE, offset, &[v]);
}

/// A flash whose bytes are a pattern with no 0x00, 0x50 or 0x70 at offset 5, zeros before it.
fn patterned(len: usize) -> CfiFlash {
    let mut data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    data[..5].copy_from_slice(&[0x00, 0x50, 0x70, 0x00, 0x50]);
    data[5] = 0xa5;
    CfiFlash::new(data).unwrap()
}

/// `QemuFlashDetected`, step by step: true when OVMF would decide "FD behaves as FLASH".
fn ovmf_probe(f: &mut CfiFlash) -> bool {
    let Some(offset) = (0..BLOCK as u64).find(|&o| !matches!(rd(f, o), 0x50 | 0x70 | 0x00)) else {
        return false;
    };
    let original = rd(f, offset);
    wr(f, offset, 0x50);
    let probe = rd(f, offset);
    if original != 0x50 && probe == 0x50 {
        return false; // RAM
    }
    wr(f, offset, 0x70);
    let probe = rd(f, offset);
    if probe == original || probe == 0x70 {
        return false; // ROM or RAM
    }
    if probe == 0x00 {
        wr(f, offset, 0xff);
        return true;
    }
    false
}

/// `QemuFlashWrite`: 0x10 then the byte, for each byte; 0xFF at the last byte's address.
fn ovmf_write(f: &mut CfiFlash, offset: u64, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate() {
        wr(f, offset + i as u64, 0x10);
        wr(f, offset + i as u64, b);
    }
    if !bytes.is_empty() {
        wr(f, offset + bytes.len() as u64 - 1, 0xff);
    }
}

/// `QemuFlashEraseBlock`: 0x20 and 0xD0 at the block's first byte.
fn ovmf_erase(f: &mut CfiFlash, lba: u64) {
    wr(f, lba * FLASH_BLOCK_SIZE, 0x20);
    wr(f, lba * FLASH_BLOCK_SIZE, 0xd0);
}

fn read_all(f: &mut CfiFlash) -> Vec<u8> {
    let mut d = vec![0u8; f.len() as usize];
    f.read(BASE, 0, &mut d);
    d
}

#[test]
fn ovmf_probe_finds_a_flash_and_leaves_it_in_read_array() {
    let mut f = patterned(OVMF_VARS_2M_LEN as usize);
    let before = f.data().to_vec();
    assert!(ovmf_probe(&mut f));
    assert_eq!(read_all(&mut f), before, "the probe changed nothing");
    // An erased flash (all 0xFF) probes at offset 0.
    let mut f = CfiFlash::new(vec![0xff; OVMF_VARS_2M_LEN as usize]).unwrap();
    assert!(ovmf_probe(&mut f));
    assert_eq!(rd(&mut f, 0), 0xff);
}

#[test]
fn clear_status_reads_array_then_status_reads_zero() {
    let mut f = patterned(2 * BLOCK);
    // Status is "ready" at start.
    wr(&mut f, 9, 0x70);
    assert_eq!(rd(&mut f, 9), 0x80);
    assert_eq!(rd(&mut f, 1234), 0x80, "status at any offset");
    // 0x50 clears it and goes back to the array.
    wr(&mut f, 9, 0x50);
    assert_eq!(rd(&mut f, 5), 0xa5);
    wr(&mut f, 9, 0x70);
    assert_eq!(rd(&mut f, 5), 0x00);
    // A program sets ready again.
    wr(&mut f, 5, 0x40);
    wr(&mut f, 5, 0x11);
    assert_eq!(rd(&mut f, 5), 0x80);
    wr(&mut f, 0, 0xf0);
    assert_eq!(rd(&mut f, 5), 0x11);
}

#[test]
fn program_as_ovmf_writes_a_variable() {
    let mut f = CfiFlash::new(vec![0xff; 4 * BLOCK]).unwrap();
    let var = b"\xaa\x55\x3f\x00Boot0000";
    // Between the command and the data, reads return the status.
    wr(&mut f, 0x1010, 0x10);
    assert_eq!(rd(&mut f, 0x1010), 0x80);
    wr(&mut f, 0x1010, var[0]);
    ovmf_write(&mut f, 0x1011, &var[1..]);
    assert_eq!(&read_all(&mut f)[0x1010..0x1010 + var.len()], var);
    assert!(f.data()[..0x1010].iter().all(|&b| b == 0xff));
    assert!(f.data()[0x1010 + var.len()..].iter().all(|&b| b == 0xff));
    // Program overwrites (no AND with the old value), as QEMU's flash does.
    ovmf_write(&mut f, 0x1010, &[0xf0]);
    ovmf_write(&mut f, 0x1010, &[0x0f]);
    assert_eq!(rd(&mut f, 0x1010), 0x0f);
}

#[test]
fn block_erase_as_ovmf_erases_exactly_one_block() {
    let mut f = patterned(4 * BLOCK);
    let before = f.data().to_vec();
    ovmf_erase(&mut f, 2);
    // Reads show the status until read-array mode.
    assert_eq!(rd(&mut f, 2 * BLOCK as u64), 0x80);
    wr(&mut f, 0, 0xff);
    let after = read_all(&mut f);
    assert!(after[2 * BLOCK..3 * BLOCK].iter().all(|&b| b == 0xff));
    assert_eq!(after[..2 * BLOCK], before[..2 * BLOCK]);
    assert_eq!(after[3 * BLOCK..], before[3 * BLOCK..]);
    // The confirm's offset picks the block, wherever inside it.
    wr(&mut f, 10, 0x20);
    wr(&mut f, BLOCK as u64 + 0x7ff, 0xd0);
    wr(&mut f, 0, 0xff);
    assert!(f.data()[BLOCK..2 * BLOCK].iter().all(|&b| b == 0xff));
    assert_eq!(f.data()[..BLOCK], before[..BLOCK]);
}

#[test]
fn broken_erase_sequences_erase_nothing() {
    let mut f = patterned(2 * BLOCK);
    let before = f.data().to_vec();
    // Cancelled with read array.
    wr(&mut f, 0, 0x20);
    wr(&mut f, 0, 0xff);
    assert_eq!(read_all(&mut f), before);
    // Anything else: command sequence error in the status, nothing erased.
    wr(&mut f, 0, 0x20);
    wr(&mut f, 0, 0x10);
    assert_eq!(rd(&mut f, 0), 0xb0);
    wr(&mut f, 0, 0xff);
    assert_eq!(read_all(&mut f), before);
    // Clear status clears the error.
    wr(&mut f, 0, 0x50);
    wr(&mut f, 0, 0x70);
    assert_eq!(rd(&mut f, 0), 0);
}

#[test]
fn cfi_query_describes_the_geometry() {
    let mut f = CfiFlash::new(vec![0xff; OVMF_VARS_4M_LEN as usize]).unwrap();
    wr(&mut f, 0x55, 0x98);
    let q: Vec<u8> = (0..0x31).map(|o| rd(&mut f, o)).collect();
    assert_eq!(&q[0x10..0x13], b"QRY");
    assert_eq!(
        u16::from_le_bytes([q[0x13], q[0x14]]),
        1,
        "Intel command set"
    );
    assert_eq!(q[0x27], 20, "2^20 bytes, rounded up from 540672");
    assert_eq!(q[0x2c], 1, "one erase region");
    assert_eq!(u16::from_le_bytes([q[0x2d], q[0x2e]]), 131, "132 blocks");
    assert_eq!(u16::from_le_bytes([q[0x2f], q[0x30]]) as usize * 256, BLOCK);
    assert_eq!(rd(&mut f, 0x1000), 0, "past the table");
    wr(&mut f, 0, 0xff);
    assert_eq!(rd(&mut f, 0x10), 0xff);
}

#[test]
fn wide_and_odd_accesses() {
    let mut f = patterned(BLOCK);
    // Array reads copy bytes in order; the last bytes of the range too.
    let mut d = [0u8; 4];
    f.read(BASE, 5, &mut d);
    assert_eq!(d[..], f.data()[5..9]);
    let mut d = [0u8; 8];
    f.read(BASE, BLOCK as u64 - 4, &mut d);
    assert_eq!(d[..4], f.data()[BLOCK - 4..]);
    assert_eq!(d[4..], [0xff; 4], "past the end reads all ones");
    // A status read fills every byte.
    wr(&mut f, 0, 0x70);
    let mut d = [0u8; 4];
    f.read(BASE, 0, &mut d);
    assert_eq!(d, [0x80; 4]);
    // A wide program stores every byte; a command's first byte counts.
    f.write(BASE, 0x100, &[0x10, 0xee]);
    f.write(BASE, 0x100, &[1, 2, 3, 4]);
    f.write(BASE, 0, &[0xff, 0x70]);
    assert_eq!(f.data()[0x100..0x104], [1, 2, 3, 4]);
    assert_eq!(rd(&mut f, 0x100), 1);
    // Programming past the end sets the program error bit and stores nothing.
    wr(&mut f, 0, 0x10);
    f.write(BASE, BLOCK as u64 - 1, &[9, 9]);
    assert_eq!(rd(&mut f, 0), 0x90);
    // Empty writes, unknown commands, offsets near 2^64.
    f.write(BASE, 0, &[]);
    wr(&mut f, 0, 0x90);
    assert_eq!(
        rd(&mut f, 5),
        0xa5,
        "unknown commands go back to read array"
    );
    f.read(BASE, u64::MAX, &mut [0u8; 4]);
    wr(&mut f, u64::MAX, 0x20);
    wr(&mut f, u64::MAX, 0xd0);
    wr(&mut f, u64::MAX, 0x10);
    f.write(BASE, u64::MAX - 1, &[1, 2, 3]);
}

#[test]
fn lengths_must_be_whole_blocks() {
    for len in [0, 100, BLOCK + 1] {
        assert!(matches!(
            CfiFlash::new(vec![0; len]),
            Err(FlashError::InvalidLength { .. })
        ));
    }
}

/// A temp file with `len` bytes of `byte`, removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new(len: usize, byte: u8) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "vfiovm-flash-{}-{}.fd",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, vec![byte; len]).unwrap();
        TempImage(p)
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn erase_program_read_round_trip_through_the_file() {
    let img = TempImage::new(OVMF_VARS_4M_LEN as usize, 0x5a);
    let var: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
    {
        let mut f = CfiFlash::open(&img.0, OVMF_VARS_4M_LEN).unwrap();
        assert!(ovmf_probe(&mut f));
        ovmf_erase(&mut f, 3);
        ovmf_write(&mut f, 3 * FLASH_BLOCK_SIZE + 0x40, &var);
        // Already in the file while the device lives (pwrite at once).
        let file = std::fs::read(&img.0).unwrap();
        assert_eq!(file[3 * BLOCK + 0x40..3 * BLOCK + 0x40 + 300], var[..]);
        ovmf_erase(&mut f, 131);
        wr(&mut f, 0, 0xff);
        f.flush().unwrap();
    }
    let mut fresh = CfiFlash::open(&img.0, OVMF_VARS_4M_LEN).unwrap();
    let data = read_all(&mut fresh);
    let mut want = vec![0x5a; OVMF_VARS_4M_LEN as usize];
    want[3 * BLOCK..4 * BLOCK].fill(0xff);
    want[3 * BLOCK + 0x40..3 * BLOCK + 0x40 + 300].copy_from_slice(&var);
    want[131 * BLOCK..].fill(0xff);
    assert!(
        data == want,
        "the fresh instance reads what the first one wrote"
    );
    assert!(std::fs::read(&img.0).unwrap() == want);
}

#[test]
fn open_errors_name_cause_and_fix() {
    let missing = std::env::temp_dir().join("vfiovm-flash-does-not-exist.fd");
    let e = CfiFlash::open(&missing, OVMF_VARS_4M_LEN).unwrap_err();
    assert!(matches!(e, FlashError::Missing { .. }), "{e}");
    assert!(
        e.to_string().contains("/usr/share/OVMF/OVMF_VARS_4M.fd"),
        "{e}"
    );

    let img = TempImage::new(1000 * 1024, 0xff);
    let e = CfiFlash::open(&img.0, OVMF_VARS_4M_LEN).unwrap_err();
    assert!(
        matches!(
            e,
            FlashError::WrongSize {
                actual: 1_024_000,
                expected: 540_672,
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("540672") && msg.contains("131072"), "{msg}");

    let e = CfiFlash::open(&img.0, 1000).unwrap_err();
    assert!(matches!(e, FlashError::InvalidLength { len: 1000 }), "{e}");

    // Read-only: a file without write permission (root ignores that), and a sysfs attribute
    // without a store method, which refuses a writable open even to root.
    let ro = TempImage::new(OVMF_VARS_2M_LEN as usize, 0xff);
    std::fs::set_permissions(&ro.0, std::fs::Permissions::from_mode(0o444)).unwrap();
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(true);
    if !root {
        let e = CfiFlash::open(&ro.0, OVMF_VARS_2M_LEN).unwrap_err();
        assert!(matches!(e, FlashError::ReadOnly { .. }), "{e}");
    }
    let sysfs = std::path::Path::new("/sys/kernel/uevent_seqnum");
    if sysfs.exists() {
        let e = CfiFlash::open(sysfs, OVMF_VARS_2M_LEN).unwrap_err();
        assert!(matches!(e, FlashError::ReadOnly { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("chmod u+w") && msg.contains("cp /usr/share/OVMF"),
            "{msg}"
        );
    }

    // A second open of an image in use.
    let img = TempImage::new(OVMF_VARS_2M_LEN as usize, 0xff);
    let first = CfiFlash::open(&img.0, OVMF_VARS_2M_LEN).unwrap();
    let e = CfiFlash::open(&img.0, OVMF_VARS_2M_LEN).unwrap_err();
    assert!(matches!(e, FlashError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("its own copy"), "{e}");
    drop(first);
    assert!(
        CfiFlash::open(&img.0, OVMF_VARS_2M_LEN).is_ok(),
        "the lock goes with the device"
    );

    // A directory is no image.
    let e = CfiFlash::open(std::env::temp_dir(), OVMF_VARS_2M_LEN).unwrap_err();
    assert!(matches!(e, FlashError::Io { .. }), "{e}");
}

#[test]
fn reset_returns_to_read_array_with_status_ready() {
    let mut f = patterned(BLOCK);
    wr(&mut f, 0, 0x50);
    wr(&mut f, 0, 0x20);
    f.reset();
    assert_eq!(rd(&mut f, 5), 0xa5, "read array");
    wr(&mut f, 0, 0x70);
    assert_eq!(rd(&mut f, 0), 0x80, "ready");
    // The half-finished erase was dropped: a 0xD0 now is an unknown command.
    wr(&mut f, 0, 0xd0);
    assert_eq!(f.data()[5], 0xa5);
}

/// A memory slot as KVM would keep it: where the array is mapped, if it is.
#[derive(Default)]
struct SlotState {
    mapped: Option<(usize, usize)>,
    maps: usize,
    unmaps: usize,
    fail_map: bool,
}

struct FakeSlot(Arc<Mutex<SlotState>>);

impl ArrayMapping for FakeSlot {
    unsafe fn map(&mut self, host: *const u8, len: usize) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        if s.fail_map {
            return Err("no free slot".into());
        }
        assert!(s.mapped.is_none(), "mapped twice");
        assert_eq!(host as usize % 4096, 0, "a slot maps whole pages");
        assert_eq!(len % 4096, 0);
        s.mapped = Some((host as usize, len));
        s.maps += 1;
        Ok(())
    }

    fn unmap(&mut self) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        assert!(s.mapped.take().is_some(), "unmapped while not mapped");
        s.unmaps += 1;
        Ok(())
    }
}

fn mapped(len: usize) -> (CfiFlash, Arc<Mutex<SlotState>>) {
    let mut f = patterned(len);
    let slot = Arc::new(Mutex::new(SlotState::default()));
    f.set_array_mapping(Box::new(FakeSlot(slot.clone())));
    (f, slot)
}

/// A guest read: from the mapped memory while the slot is there (which must be the array
/// itself), through the device otherwise.
fn guest_rd(f: &mut CfiFlash, slot: &Mutex<SlotState>, offset: u64) -> u8 {
    let m = slot.lock().unwrap().mapped;
    match m {
        Some((host, len)) => {
            assert_eq!((host, len), (f.data().as_ptr() as usize, f.data().len()));
            f.data()[offset as usize]
        }
        None => rd(f, offset),
    }
}

#[test]
fn the_array_is_mapped_exactly_in_read_array_mode() {
    let (mut f, slot) = mapped(OVMF_VARS_4M_LEN as usize);
    assert!(f.array_mapped());
    assert_eq!(slot.lock().unwrap().maps, 1);
    // OVMF's probe at offset 5 (0xa5): clear status keeps read-array (and the mapping), read
    // status drops it so the status register is seen, read array maps it again.
    wr(&mut f, 5, 0x50);
    assert!(f.array_mapped());
    assert_eq!(guest_rd(&mut f, &slot, 5), 0xa5);
    wr(&mut f, 5, 0x70);
    assert!(!f.array_mapped());
    assert_eq!(guest_rd(&mut f, &slot, 5), 0x00);
    wr(&mut f, 5, 0xff);
    assert!(f.array_mapped());
    // A variable written as OVMF writes it: unmapped from the first program command on, mapped
    // again by the final read-array, and the guest then reads the new bytes from memory.
    wr(&mut f, 0x100, 0x10);
    assert!(!f.array_mapped());
    // the status register (cleared by the probe's 0x50), not the array
    assert_eq!(guest_rd(&mut f, &slot, 0x100), 0x00);
    wr(&mut f, 0x100, 0x42);
    ovmf_write(&mut f, 0x101, b"var");
    assert!(f.array_mapped());
    let got: Vec<u8> = (0x100..0x104).map(|o| guest_rd(&mut f, &slot, o)).collect();
    assert_eq!(got, b"\x42var");
    // Block erase and CFI query both leave read-array mode.
    wr(&mut f, 0x1000, 0x20);
    assert!(!f.array_mapped());
    wr(&mut f, 0x1000, 0xd0);
    assert_eq!(guest_rd(&mut f, &slot, 0x1000), 0x80);
    wr(&mut f, 0x1000, 0xff);
    assert!((0x1000..0x2000).all(|o| guest_rd(&mut f, &slot, o) == 0xff));
    wr(&mut f, 0, 0x98);
    assert!(!f.array_mapped());
    let qry: Vec<u8> = (0x10..0x13).map(|o| guest_rd(&mut f, &slot, o)).collect();
    assert_eq!(qry, b"QRY");
    // A reset (in-place reboot) returns to read-array: mapped.
    f.reset();
    assert!(f.array_mapped());
    let s = slot.lock().unwrap();
    assert_eq!((s.maps, s.unmaps), (5, 4));
}

#[test]
fn a_failed_mapping_leaves_reads_trapping_and_right() {
    let mut f = patterned(OVMF_VARS_2M_LEN as usize);
    let slot = Arc::new(Mutex::new(SlotState {
        fail_map: true,
        ..SlotState::default()
    }));
    f.set_array_mapping(Box::new(FakeSlot(slot.clone())));
    assert!(!f.array_mapped());
    assert!(ovmf_probe(&mut f));
    ovmf_write(&mut f, 0x20, b"ok");
    assert_eq!(
        (guest_rd(&mut f, &slot, 0x20), guest_rd(&mut f, &slot, 0x21)),
        (b'o', b'k')
    );
    assert_eq!(slot.lock().unwrap().maps, 0);
}

#[test]
fn dropping_the_flash_removes_the_mapping_first() {
    let (f, slot) = mapped(OVMF_VARS_2M_LEN as usize);
    assert!(slot.lock().unwrap().mapped.is_some());
    drop(f);
    let s = slot.lock().unwrap();
    assert!(s.mapped.is_none());
    assert_eq!((s.maps, s.unmaps), (1, 1));
}

#[test]
fn a_new_mapping_replaces_the_old_one_unmapped() {
    let (mut f, old) = mapped(OVMF_VARS_2M_LEN as usize);
    let new = Arc::new(Mutex::new(SlotState::default()));
    f.set_array_mapping(Box::new(FakeSlot(new.clone())));
    assert!(old.lock().unwrap().mapped.is_none());
    assert!(new.lock().unwrap().mapped.is_some());
    assert!(f.array_mapped());
}
