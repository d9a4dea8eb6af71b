//! `devices::firmware::CfiFlash` against a reference model of its documented command table:
//! a flash of one to four 4 KiB blocks (in memory, or now and then backed by a file), then
//! command streams — biased to the sequences OVMF issues (probe, program, block erase, read
//! array, status) — and reads and writes of any size at any offset, up to 2^64.
//!
//! Invariants (besides no panic, no leak): every read returns what the model says for the mode
//! the last command left (array bytes, all ones past the end; the status in every byte; the
//! CFI table's `"QRY"` and zeros past it); the array always equals the model's (only a program
//! changes the bytes written, only an erase confirm changes exactly one whole block); and with a
//! backing file, after the device is dropped the file holds exactly the array. Mostly the flash
//! also has a (fake) read-only mapping of its array, as the VMM gives it: the mapping is in place
//! exactly when the model is in read-array mode, it maps the array itself (so the guest's reads
//! through it see what a trapped read would), and dropping the device removes it.
#![no_main]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arbitrary::{Result, Unstructured};
use devices::bus::BusDevice;
use devices::firmware::{ArrayMapping, CfiFlash, FLASH_BLOCK_SIZE};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::{access_len, data, one_in, MAX_OPS};

const BASE: u64 = 0xffc0_0000;
const BLOCK: u64 = FLASH_BLOCK_SIZE;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Array,
    Status,
    Query,
    Program,
    Erase,
}

struct Model {
    data: Vec<u8>,
    mode: Mode,
    status: u8,
}

impl Model {
    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let Some(&cmd) = bytes.first() else {
            return;
        };
        self.mode = match self.mode {
            Mode::Program => {
                let end = offset.checked_add(bytes.len() as u64);
                match end {
                    Some(end) if end <= self.data.len() as u64 => {
                        self.data[offset as usize..end as usize].copy_from_slice(bytes);
                        self.status |= 0x80;
                    }
                    _ => self.status |= 0x90,
                }
                Mode::Status
            }
            Mode::Erase => match cmd {
                0xd0 => {
                    let start = offset & !(BLOCK - 1);
                    if start
                        .checked_add(BLOCK)
                        .is_some_and(|e| e <= self.data.len() as u64)
                    {
                        self.data[start as usize..(start + BLOCK) as usize].fill(0xff);
                        self.status |= 0x80;
                    } else {
                        self.status |= 0xa0;
                    }
                    Mode::Status
                }
                0xff => Mode::Array,
                _ => {
                    self.status |= 0x30;
                    Mode::Status
                }
            },
            _ => match cmd {
                0x70 => Mode::Status,
                0x50 => {
                    self.status = 0;
                    Mode::Array
                }
                0x10 | 0x40 => Mode::Program,
                0x20 => Mode::Erase,
                0x98 => Mode::Query,
                _ => Mode::Array,
            },
        };
    }

    fn check_read(&self, offset: u64, got: &[u8]) {
        for (i, &b) in got.iter().enumerate() {
            let o = offset.checked_add(i as u64);
            match self.mode {
                Mode::Array => {
                    let want = o
                        .and_then(|o| self.data.get(usize::try_from(o).ok()?))
                        .copied()
                        .unwrap_or(0xff);
                    assert_eq!(b, want, "array byte at {offset:#x}+{i}");
                }
                Mode::Status | Mode::Program | Mode::Erase => {
                    assert_eq!(b, self.status, "status byte at {offset:#x}+{i}")
                }
                Mode::Query => match o {
                    Some(0x10) => assert_eq!(b, b'Q'),
                    Some(0x11) => assert_eq!(b, b'R'),
                    Some(0x12) => assert_eq!(b, b'Y'),
                    Some(o) if o >= 0x31 => assert_eq!(b, 0, "past the query table"),
                    None => assert_eq!(b, 0, "past the query table"),
                    _ => {}
                },
            }
        }
    }
}

/// An offset: mostly inside the flash and block-aligned or near a block edge, sometimes anywhere.
fn offset(u: &mut Unstructured, len: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        1 => u.int_in_range(0..=len / BLOCK)? * BLOCK,
        2 => (u.int_in_range(1..=len / BLOCK)? * BLOCK).wrapping_sub(u.int_in_range(0..=3)?),
        3 => len + u.int_in_range(0..=8)?,
        _ => u.int_in_range(0..=len - 1)?,
    })
}

/// Where the fake slot maps the array, if it does.
type Slot = Arc<Mutex<Option<(usize, usize)>>>;

struct FakeSlot(Slot);

impl ArrayMapping for FakeSlot {
    unsafe fn map(&mut self, host: *const u8, len: usize) -> std::result::Result<(), String> {
        let mut s = self.0.lock().unwrap();
        assert!(s.is_none(), "mapped twice");
        *s = Some((host as usize, len));
        Ok(())
    }

    fn unmap(&mut self) -> std::result::Result<(), String> {
        assert!(
            self.0.lock().unwrap().take().is_some(),
            "unmapped while not mapped"
        );
        Ok(())
    }
}

static FILES: AtomicUsize = AtomicUsize::new(0);

fn run(u: &mut Unstructured) -> Result<()> {
    let len = BLOCK * u.int_in_range(1..=4)?;
    let init: Vec<u8> = match u.int_in_range(0u8..=2)? {
        0 => vec![0xff; len as usize],
        1 => data(u, len as usize)?,
        _ => (0..len).map(|i| (i * 13 + 1) as u8).collect(),
    };
    let backed = one_in(u, 32)?;
    let path = std::env::temp_dir().join(format!(
        "vfiovm-fuzz-flash-{}-{}.fd",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed) % 4
    ));
    let mut dev = if backed {
        std::fs::write(&path, &init).expect("temp file");
        CfiFlash::open(&path, len).expect("just written")
    } else {
        CfiFlash::new(init.clone()).expect("whole blocks")
    };
    let slot: Option<Slot> = if one_in(u, 4)? {
        None
    } else {
        let s = Slot::default();
        dev.set_array_mapping(Box::new(FakeSlot(s.clone())));
        Some(s)
    };
    let mut model = Model {
        data: init,
        mode: Mode::Array,
        status: 0x80,
    };
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0u8..=9)? {
            // A command byte, mostly one OVMF uses.
            0..=3 => {
                const CMDS: [u8; 12] = [
                    0xff, 0xf0, 0x70, 0x50, 0x10, 0x40, 0x20, 0xd0, 0x98, 0x90, 0x00, 0xe8,
                ];
                let cmd = if one_in(u, 8)? {
                    u.arbitrary()?
                } else {
                    CMDS[u.int_in_range(0..=CMDS.len() - 1)?]
                };
                let at = offset(u, len)?;
                dev.write(BASE, at, &[cmd]);
                model.write(at, &[cmd]);
            }
            // OVMF's program of a few bytes, or its block erase.
            4 => {
                let at = offset(u, len)?;
                let n = u.int_in_range(1..=8)?;
                for (i, b) in data(u, n)?.into_iter().enumerate() {
                    let o = at.wrapping_add(i as u64);
                    for v in [0x10, b] {
                        dev.write(BASE, o, &[v]);
                        model.write(o, &[v]);
                    }
                }
            }
            5 => {
                let at = offset(u, len)?;
                for v in [0x20, 0xd0] {
                    dev.write(BASE, at, &[v]);
                    model.write(at, &[v]);
                }
            }
            // A write of any size.
            6 => {
                let at = offset(u, len)?;
                let n = access_len(u)?;
                let d = data(u, n)?;
                dev.write(BASE, at, &d);
                model.write(at, &d);
            }
            // Reads.
            _ => {
                let at = offset(u, len)?;
                let n = access_len(u)?;
                let mut d = vec![0u8; n];
                dev.read(BASE, at, &mut d);
                model.check_read(at, &d);
            }
        }
        assert!(
            dev.data() == &model.data[..],
            "array differs from the model"
        );
        if let Some(s) = &slot {
            let mapped = *s.lock().unwrap();
            assert_eq!(
                mapped.is_some(),
                model.mode == Mode::Array,
                "mapped outside read-array mode, or not in it"
            );
            if let Some(m) = mapped {
                assert_eq!(
                    m,
                    (dev.data().as_ptr() as usize, dev.data().len()),
                    "the mapping is not the array"
                );
            }
        }
    }
    drop(dev);
    if let Some(s) = &slot {
        assert!(
            s.lock().unwrap().is_none(),
            "the mapping outlived the device"
        );
    }
    if backed {
        let file = std::fs::read(&path).expect("temp file");
        let _ = std::fs::remove_file(&path);
        assert!(file == model.data, "the file differs from the array");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
