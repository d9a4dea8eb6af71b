//! The virtio-pci transport (`devices::virtio::VirtioPciDevice`) driven as a hostile driver
//! drives it: config space reads and writes (1, 2 and 4 bytes, aligned, anywhere in 4 KiB:
//! the command register, the MSI-X capability, the BAR registers, the virtio capabilities and
//! the PCI configuration access capability's window into BAR 0), and BAR 0 reads and writes of
//! any width at any offset (common configuration, ISR, device configuration, notify, MSI-X table
//! and PBA, and past them). The device is virtio-rng or a probe device of the harness's (one to
//! four queues of any power-of-two size, offered features, a writable configuration of up to 64
//! bytes, and an activation that may fail), with the devices crate's test doubles
//! (`interrupt::fake` in strict mode, `ioevent::fake`), guest RAM with a hole, an INTx line or
//! none. Besides single accesses the input can run a driver's whole bring-up (reset,
//! ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues, vectors, DRIVER_OK) with fuzz values,
//! program MSI-X, notify queues (through the BAR or the bound ioeventfd; the device's I/O thread
//! then serves them), move the BAR, scribble on RAM and EOI the INTx line.
//!
//! The harness keeps its own model of the common configuration, written from the virtio 1.x
//! rules the transport documents (`devices/src/virtio/pci.rs`), and checks after every
//! operation (besides no panic, no hang, no leak):
//! - the whole common configuration reads as the model says (feature words by select, driver
//!   features, vectors, queue count, status, generation 0, the selected queue's fields; a
//!   select past the queues reads size 0 and vector NO_VECTOR);
//! - status: 0 resets everything (every queue reads back size = maximum, disabled, rings 0,
//!   NO_VECTOR; features, selects and vectors 0 or NO_VECTOR; ISR clear); a write that clears a
//!   bit is ignored; FEATURES_OK sticks only when the driver's features are a subset of the
//!   offered ones with VERSION_1; DRIVER_OK needs FEATURES_OK; the device runs (its I/O
//!   thread serving) exactly when DRIVER_OK was accepted with at least one enabled queue, every
//!   enabled queue valid by the harness's reading (power-of-two size up to the maximum, rings
//!   aligned 16/2/4 and wholly in RAM, the available ring not at address 0) and the device's
//!   activation succeeding, and otherwise
//!   NEEDS_RESET is set with the configuration interrupt (ISR bit 1); NEEDS_RESET is never
//!   cleared but by a reset;
//! - the device is activated exactly then, with exactly the driver's features;
//! - queue size, enable and ring addresses change only while the queue is disabled and DRIVER_OK
//!   is not set, the size only to a power of two up to the maximum; a vector write outside the
//!   table reads back NO_VECTOR;
//! - reads outside the structures return zeros, reads of another BAR all ones, the device
//!   configuration reads what the device holds (written where the driver wrote), the ISR holds
//!   only bits 0 and 1 and, while no I/O thread ran since it was last cleared, exactly what the
//!   model says; the PCI configuration access capability reads and writes BAR 0 exactly as a
//!   direct access would;
//! - every MSI-X vector is enabled exactly when the guest has MSI-X on and the function and
//!   the vector unmasked, routes to the message the guest programmed, and has no pending bit
//!   then; every delivery is on a vector of the device that the driver assigned to the
//!   configuration or a queue at some point; INTx is asserted only while MSI-X is off and INTx is
//!   not disabled in the command register;
//! - while the BAR is mapped, exactly the queues' notify addresses are bound to their
//!   `EventFd`s; after the device is dropped nothing is bound and no vector or line is held.
#![no_main]

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use arbitrary::{Result, Unstructured};
use devices::interrupt::fake::{FakeInterrupts, MSI_GSI_BASE};
use devices::interrupt::InterruptManager;
use devices::ioevent::fake::FakeIoEvents;
use devices::ioevent::IoEventRegistrar;
use devices::pci::config::{CMD_INTX_DISABLE, COMMAND, STATUS, STATUS_INTERRUPT};
use devices::pci::{BarAccess, PciDevice};
use devices::virtio::pci::{
    common, BAR_SIZE, DEVICE_CFG_OFFSET, ISR_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
    NOTIFY_OFFSET, PCI_CAP_ID_VNDR, VIRTIO_PCI_CAP_PCI_CFG,
};
use devices::virtio::rng::Rng;
use devices::virtio::{
    Chain, Completion, QueueHandler, VirtioDevice, VirtioError, VirtioPciDevice,
    STATUS_NEEDS_RESET, TRANSPORT_FEATURES, VIRTIO_F_VERSION_1,
};
use libfuzzer_sys::fuzz_target;
use vfiovm_fuzz::input::{access_len, one_in, value};
use vfiovm_fuzz::trace;
use vfiovm_fuzz::views::{find_cap, MsixView, MSIX_ID};
use vfiovm_fuzz::virtio_model::{DeviceLog, Model, COMMON_LEN, NO_VECTOR};
use vfiovm_fuzz::virtq::Mem;
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM: [0, 64 KiB) and [96 KiB, 160 KiB).
const REGIONS: [(u64, u64); 2] = [(0, 0x1_0000), (0x1_8000, 0x1_0000)];
const RAM_END: u64 = 0x2_8000;
const MAX_OPS: usize = 128;
const INTX_GSI: u32 = 5;
/// The probe device's virtio type (one no driver binds to).
const PROBE_TYPE: u16 = 0x3f;

/// A device of the harness's: queues and features from the input, a configuration the driver
/// may write, an activation that fails when the input says so. Its handler completes every
/// chain empty.
struct Probe {
    sizes: Vec<u16>,
    features: u64,
    config: Arc<Mutex<Vec<u8>>>,
    fail: bool,
    log: Arc<Mutex<DeviceLog>>,
}

struct ProbeHandler;

impl QueueHandler for ProbeHandler {
    fn process(&mut self, _queue: u16, _chain: &mut Chain<'_>) -> Completion {
        Completion::Used(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VirtioDevice for Probe {
    fn device_type(&self) -> u16 {
        PROBE_TYPE
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        self.sizes.clone()
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn config_len(&self) -> usize {
        lock(&self.config).len()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = lock(&self.config);
        for (i, d) in data.iter_mut().enumerate() {
            *d = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| c.get(at))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut c = lock(&self.config);
        for (i, &d) in data.iter().enumerate() {
            if let Some(b) = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| c.get_mut(at))
            {
                *b = d;
            }
        }
    }
    fn activate(
        &mut self,
        features: u64,
    ) -> std::result::Result<Box<dyn QueueHandler>, VirtioError> {
        lock(&self.log).activations.push(features);
        if self.fail {
            return Err(VirtioError::Activate {
                device: "probe".into(),
                why: "the input says so".into(),
            });
        }
        Ok(Box::new(ProbeHandler))
    }
    fn reset(&mut self) {
        lock(&self.log).resets += 1;
    }
}

/// Where the harness keeps the device and what it knows.
struct Rig {
    dev: VirtioPciDevice<Mem>,
    mem: Mem,
    irq: FakeInterrupts,
    io: Option<FakeIoEvents>,
    model: Model,
    /// The probe's configuration (shared with the device), or none for rng.
    config: Option<Arc<Mutex<Vec<u8>>>>,
    /// The configuration as the harness wrote it.
    config_model: Vec<u8>,
    device_log: Arc<Mutex<DeviceLog>>,
    bar: Option<u64>,
    msix_cap: u16,
    pci_cfg_cap: u16,
    /// The PCI configuration access capability's data register, when the harness knows it.
    pci_cfg_data: Option<[u8; 4]>,
    intx: bool,
}

impl Rig {
    fn cfg_read(&mut self, off: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.dev.config_read(off, &mut b);
        b
    }

    fn cfg_u16(&mut self, off: u16) -> u16 {
        let b = self.cfg_read(off, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    fn cfg_u32(&mut self, off: u16) -> u32 {
        let b = self.cfg_read(off, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn msix(&mut self) -> MsixView {
        let cap = self.msix_cap;
        let dev = &mut self.dev;
        MsixView::read(&mut |o, d| dev.config_read(o, d), cap)
    }

    fn notify_len(&self) -> u64 {
        4 * self.model.queues.len() as u64
    }

    /// What a BAR 0 read of `len` bytes at `offset` returns by the model, where it is known
    /// without reading (`None`: the MSI-X table and PBA, the ISR).
    fn expected_read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let at = |start: u64, size: u64| offset >= start && offset - start < size;
        if at(0, COMMON_LEN as u64) {
            let v = self.model.view();
            Some(
                (0..len)
                    .map(|i| v.get(offset as usize + i).copied().unwrap_or(0))
                    .collect(),
            )
        } else if at(ISR_OFFSET, 4) || at(u64::from(MSIX_TABLE_OFFSET), 0x4000) {
            None
        } else if at(DEVICE_CFG_OFFSET, 0x1000) {
            let o = offset - DEVICE_CFG_OFFSET;
            Some(
                (0..len as u64)
                    .map(|i| {
                        self.config_model
                            .get((o + i) as usize)
                            .copied()
                            .unwrap_or(0)
                    })
                    .collect(),
            )
        } else {
            Some(vec![0; len])
        }
    }

    /// Compares a read of the common configuration (or anything with a known value) with the
    /// model; a NEEDS_RESET the I/O thread set on its own is taken into the model.
    fn check_read(&mut self, offset: u64, got: &[u8], what: &str) {
        let Some(mut want) = self.expected_read(offset, got.len()) else {
            return;
        };
        let status_at = common::DEVICE_STATUS
            .checked_sub(offset)
            .map(|i| i as usize);
        if let Some(i) = status_at.filter(|&i| i < got.len() && offset < COMMON_LEN as u64) {
            if self.model.running
                && !self.model.needs_reset
                && got[i] == want[i] | STATUS_NEEDS_RESET
            {
                trace!("the I/O thread set NEEDS_RESET");
                self.model.needs_reset = true;
                want[i] |= STATUS_NEEDS_RESET;
            }
        }
        assert_eq!(
            got,
            &want[..],
            "{what} at BAR offset {offset:#x}: read {got:x?}, the model says {want:x?} ({:?})",
            self.model
        );
    }

    fn bar_read(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0xa5u8; len];
        self.dev.bar_read(0, offset, &mut b);
        if offset == ISR_OFFSET {
            self.isr_read(b.first().copied());
        }
        self.check_read(offset, &b, "read");
        b
    }

    /// An ISR read returned `got` (and cleared it).
    fn isr_read(&mut self, got: Option<u8>) {
        if let Some(got) = got {
            assert_eq!(
                got & !3,
                0,
                "ISR {got:#x} has bits besides queue and config"
            );
            if self.model.isr_exact {
                assert_eq!(got, self.model.isr, "ISR");
            }
        }
        self.model.isr = 0;
        self.model.isr_exact = !self.model.running;
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        trace!("BAR write {offset:#x} {data:x?}");
        let was_running = self.model.running;
        self.dev.bar_write(0, offset, data);
        if offset < COMMON_LEN as u64 {
            self.model.common_write(offset, data);
        } else if offset >= DEVICE_CFG_OFFSET && offset - DEVICE_CFG_OFFSET < 0x1000 {
            let o = (offset - DEVICE_CFG_OFFSET) as usize;
            for (i, &d) in data.iter().enumerate() {
                if let Some(b) = self.config_model.get_mut(o + i) {
                    *b = d;
                }
            }
        }
        if self.model.running && !was_running {
            self.model.isr_exact = false;
        }
    }

    /// Reads the whole common configuration (and every queue's fields when `all_queues`) and
    /// compares it with the model.
    fn audit(&mut self, all_queues: bool) {
        for at in (0..COMMON_LEN as u64).step_by(4) {
            self.bar_read(at, 4);
        }
        if all_queues {
            let keep = self.model.qsel;
            let n = self.model.queues.len() as u16;
            for q in (0..=n).chain([keep, 0xffff]) {
                self.bar_write(common::QUEUE_SELECT, &q.to_le_bytes());
                for at in (common::QUEUE_SELECT..COMMON_LEN as u64).step_by(2) {
                    self.bar_read(at, 2);
                }
            }
            self.bar_write(common::QUEUE_SELECT, &keep.to_le_bytes());
        }
    }

    /// The capability's `(bar, offset, length)` window and whether an access through it
    /// reaches BAR 0.
    fn pci_cfg_target(&mut self) -> (u8, u64, usize, bool) {
        let c = self.pci_cfg_cap;
        let bar = self.cfg_read(c + 4, 1)[0];
        let off = u64::from(self.cfg_u32(c + 8));
        let len = self.cfg_u32(c + 12) as usize;
        let valid = bar == 0 && matches!(len, 1 | 2 | 4) && off % len as u64 == 0;
        (bar, off, len, valid)
    }

    fn touches_pci_cfg_data(&self, off: u16, len: usize) -> bool {
        let d = self.pci_cfg_cap + 16;
        off < d + 4 && d < off + len as u16
    }

    fn cfg_write(&mut self, off: u16, data: &[u8]) {
        let touches = self.touches_pci_cfg_data(off, data.len());
        let (_, target, len, valid) = self.pci_cfg_target();
        if touches && valid {
            // The write goes on to BAR 0 with the data register's bytes.
            let Some(mut reg) = self.pci_cfg_data else {
                return; // the harness cannot tell what would be written
            };
            let d = self.pci_cfg_cap + 16;
            for (i, &b) in data.iter().enumerate() {
                let at = usize::from(off) + i;
                if at >= usize::from(d) && at < usize::from(d) + 4 {
                    reg[at - usize::from(d)] = b;
                }
            }
            trace!(
                "config write {off:#x} {data:x?} -> BAR {target:#x} {:x?}",
                &reg[..len]
            );
            let was_running = self.model.running;
            self.dev.config_write(off, data);
            self.pci_cfg_data = Some(reg);
            if target < COMMON_LEN as u64 {
                self.model.common_write(target, &reg[..len]);
            } else if target >= DEVICE_CFG_OFFSET && target - DEVICE_CFG_OFFSET < 0x1000 {
                let o = (target - DEVICE_CFG_OFFSET) as usize;
                for (i, &b) in reg[..len].iter().enumerate() {
                    if let Some(x) = self.config_model.get_mut(o + i) {
                        *x = b;
                    }
                }
            }
            if self.model.running && !was_running {
                self.model.isr_exact = false;
            }
            return;
        }
        trace!("config write {off:#x} {data:x?}");
        self.dev.config_write(off, data);
        if touches {
            if let Some(reg) = self.pci_cfg_data.as_mut() {
                let d = usize::from(self.pci_cfg_cap + 16);
                for (i, &b) in data.iter().enumerate() {
                    let at = usize::from(off) + i;
                    if at >= d && at < d + 4 {
                        reg[at - d] = b;
                    }
                }
            }
        }
    }

    fn cfg_read_op(&mut self, off: u16, len: usize) {
        let touches = self.touches_pci_cfg_data(off, len);
        let (_, target, tlen, valid) = self.pci_cfg_target();
        let got = self.cfg_read(off, len);
        trace!("config read {off:#x}+{len} = {got:x?}");
        if touches {
            // The data register's bytes this read returned: (index into it, value).
            let d = self.pci_cfg_cap + 16;
            let seen: Vec<(usize, u8)> = (0..len)
                .filter_map(|i| {
                    let at = off + i as u16;
                    (at >= d && at < d + 4).then(|| (usize::from(at - d), got[i]))
                })
                .collect();
            if valid {
                if target == ISR_OFFSET {
                    self.isr_read(seen.iter().find(|s| s.0 == 0).map(|s| s.1));
                } else if seen.len() == 4 {
                    let bytes: Vec<u8> = seen.iter().map(|s| s.1).collect();
                    self.check_read(
                        target,
                        &bytes[..tlen],
                        "read through the PCI configuration access capability",
                    );
                    assert!(
                        bytes[tlen..].iter().all(|&b| b == 0),
                        "pci_cfg_data past the {tlen} bytes read: {bytes:x?}"
                    );
                }
            } else if let Some(reg) = self.pci_cfg_data {
                for &(i, b) in &seen {
                    assert_eq!(
                        b, reg[i],
                        "pci_cfg_data changed on a read through a window that reaches nothing"
                    );
                }
            }
            if seen.len() == 4 {
                self.pci_cfg_data = Some([seen[0].1, seen[1].1, seen[2].1, seen[3].1]);
            } else if valid {
                self.pci_cfg_data = None;
            }
        }
        if off <= STATUS + 1 && STATUS < off + len as u16 && self.model.isr_exact {
            let status = self.cfg_u16(STATUS);
            let msix_on = self.msix().enabled;
            assert_eq!(
                status & STATUS_INTERRUPT != 0,
                self.model.isr != 0 && !msix_on,
                "PCI status interrupt bit vs ISR {:#x} (MSI-X on {msix_on})",
                self.model.isr
            );
        }
    }

    fn intx_asserts(&self) -> u64 {
        self.irq.intx_lines().first().map_or(0, |l| l.asserts)
    }

    /// INTx may be asserted now: MSI-X off and INTx not disabled.
    fn intx_allowed(&mut self) -> bool {
        let cmd = self.cfg_u16(COMMAND);
        !self.msix().enabled && cmd & CMD_INTX_DISABLE == 0
    }

    /// The invariants that hold between any two operations.
    fn check(&mut self, intx_before: (u64, bool)) {
        assert_eq!(
            self.dev.running(),
            self.model.running,
            "the device runs (I/O thread serving) vs the model ({:?})",
            self.model
        );
        if self.config.is_some() {
            let log = lock(&self.device_log);
            assert_eq!(
                log.activations, self.model.log.activations,
                "activations of the device (features) vs the model"
            );
            assert_eq!(log.resets, self.model.log.resets, "device resets");
        }
        self.audit(false);
        // MSI-X: every vector in the state the guest asked for.
        let view = self.msix();
        assert_eq!(view.vectors, self.model.vectors, "MSI-X table size");
        for v in 0..view.vectors {
            let dev = &mut self.dev;
            let entry = view.entry(v, &mut |bar, off, d| dev.bar_read(bar, off, d));
            let expect = view.expect(&entry);
            self.irq.assert_vector(
                MSI_GSI_BASE + u32::from(v),
                expect,
                &format!("MSI-X vector {v}"),
            );
            if expect.is_some() {
                let mut pba = [0u8; 8];
                self.dev.bar_read(0, u64::from(MSIX_PBA_OFFSET), &mut pba);
                assert_eq!(
                    u64::from_le_bytes(pba) & 1 << v,
                    0,
                    "MSI-X vector {v} is live with its pending bit set"
                );
            }
        }
        for (gsi, msg) in self.irq.take_deliveries() {
            let v = gsi.checked_sub(MSI_GSI_BASE).map(|v| v as usize);
            assert!(
                v.is_some_and(|v| self.model.assigned.get(v) == Some(&true)),
                "delivery on GSI {gsi} ({msg}), a vector never assigned to the configuration or a queue"
            );
        }
        if self.intx {
            let after = self.intx_asserts();
            if after > intx_before.0 {
                let now = self.intx_allowed();
                assert!(
                    intx_before.1 || now,
                    "INTx asserted while MSI-X was on or INTx disabled"
                );
            }
        }
        // ioeventfds: exactly the notify addresses while the BAR is mapped.
        if let Some(io) = &self.io {
            let want: Vec<u64> = match self.bar {
                Some(base) => (0..self.model.queues.len() as u64)
                    .map(|q| base + NOTIFY_OFFSET + 4 * q)
                    .collect(),
                None => Vec::new(),
            };
            assert_eq!(io.addresses(), want, "bound notify addresses");
            for (q, &addr) in want.iter().enumerate() {
                let fd = self.dev.notify_eventfd(q).map(|e| e.as_raw_fd());
                assert_eq!(
                    io.fd_at(addr),
                    fd,
                    "queue {q}'s notify address bound elsewhere"
                );
            }
        }
    }
}

/// A common configuration field: its offset and natural width.
fn common_field(u: &mut Unstructured) -> Result<(u64, usize)> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => (common::DEVICE_FEATURE_SELECT, 4),
        1 => (common::DEVICE_FEATURE, 4),
        2 => (common::DRIVER_FEATURE_SELECT, 4),
        3 => (common::DRIVER_FEATURE, 4),
        4 => (common::CONFIG_MSIX_VECTOR, 2),
        5 => (common::NUM_QUEUES, 2),
        6 => (common::DEVICE_STATUS, 1),
        7 => (common::CONFIG_GENERATION, 1),
        8 => (common::QUEUE_SELECT, 2),
        9 => (common::QUEUE_SIZE, 2),
        10 => (common::QUEUE_MSIX_VECTOR, 2),
        11 => (common::QUEUE_ENABLE, 2),
        12 => (common::QUEUE_NOTIFY_OFF, 2),
        13 => (common::QUEUE_DESC + 4 * u64::from(one_in(u, 2)?), 4),
        14 => (common::QUEUE_DRIVER + 4 * u64::from(one_in(u, 2)?), 4),
        _ => (common::QUEUE_DEVICE, 8),
    })
}

/// A BAR offset: mostly a field or a structure, sometimes anywhere.
fn bar_offset(u: &mut Unstructured, rig: &Rig) -> Result<(u64, usize)> {
    Ok(match u.int_in_range(0u8..=15)? {
        0..=6 => common_field(u)?,
        7 => (ISR_OFFSET + u.int_in_range(0..=4)?, access_len(u)?),
        8 => (
            DEVICE_CFG_OFFSET + u.int_in_range(0..=0x48)?,
            access_len(u)?,
        ),
        9 => (
            NOTIFY_OFFSET + u.int_in_range(0..=rig.notify_len() + 4)?,
            access_len(u)?,
        ),
        10 => (
            u64::from(MSIX_TABLE_OFFSET) + u.int_in_range(0..=0x50)?,
            access_len(u)?,
        ),
        11 => (
            u64::from(MSIX_PBA_OFFSET) + u.int_in_range(0..=8)?,
            access_len(u)?,
        ),
        12 => (u.int_in_range(0..=COMMON_LEN as u64 + 8)?, access_len(u)?),
        13 => (u.arbitrary()?, access_len(u)?),
        _ => (u.int_in_range(0..=BAR_SIZE + 16)?, access_len(u)?),
    })
}

/// A config space offset and width (1, 2 or 4, aligned).
fn cfg_access(u: &mut Unstructured, rig: &Rig) -> Result<(u16, usize)> {
    let len = [1usize, 2, 4][usize::from(u.int_in_range(0u8..=2)?)];
    let base: u16 = match u.int_in_range(0u8..=7)? {
        0 => COMMAND,
        1 => rig.msix_cap + u.int_in_range(0..=11)?,
        2 | 3 => rig.pci_cfg_cap + u.int_in_range(0..=19)?,
        4 => 0x10 + u.int_in_range(0..=0x17)?,
        5 => 0x40 + u.int_in_range(0..=0x60)?,
        _ => u.int_in_range(0..=0xfff)?,
    };
    Ok((base & !(len as u16 - 1), len))
}

/// A ring address for the bring-up: mostly valid, sometimes misaligned or outside RAM.
fn ring(u: &mut Unstructured, default: u64, align: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        1 => u.int_in_range(0..=RAM_END + 0x100)?,
        2 => u.int_in_range(0..=RAM_END)? & !(align - 1),
        _ => default,
    })
}

/// A driver's bring-up, every step a BAR write with fuzz values.
fn bring_up(u: &mut Unstructured, rig: &mut Rig) -> Result<()> {
    let w = |rig: &mut Rig, off: u64, v: u64, len: usize| {
        rig.bar_write(off, &v.to_le_bytes()[..len]);
    };
    if !one_in(u, 4)? {
        w(rig, common::DEVICE_STATUS, 0, 1);
    }
    w(rig, common::DEVICE_STATUS, 1, 1);
    w(rig, common::DEVICE_STATUS, 3, 1);
    let features = match u.int_in_range(0u8..=3)? {
        0 => u.arbitrary()?,
        1 => rig.model.offered & u.arbitrary::<u64>()?,
        _ => rig.model.offered & u.arbitrary::<u64>()? | VIRTIO_F_VERSION_1,
    };
    for sel in 0..2u64 {
        w(rig, common::DRIVER_FEATURE_SELECT, sel, 4);
        w(rig, common::DRIVER_FEATURE, features >> (32 * sel), 4);
    }
    w(rig, common::DEVICE_STATUS, 0xb, 1);
    let vectors = u64::from(rig.model.vectors);
    let vec = |u: &mut Unstructured| -> Result<u64> {
        Ok(match u.int_in_range(0u8..=5)? {
            0 => u64::from(NO_VECTOR),
            1 => u.int_in_range(0..=0x20)?,
            _ => u.int_in_range(0..=vectors - 1)?,
        })
    };
    let cv = vec(u)?;
    w(rig, common::CONFIG_MSIX_VECTOR, cv, 2);
    let mut base = 0x1000u64;
    for q in 0..rig.model.queues.len() as u64 {
        if one_in(u, 4)? {
            continue;
        }
        w(rig, common::QUEUE_SELECT, q, 2);
        let max = rig.model.queues[q as usize].max;
        let size = match u.int_in_range(0u8..=3)? {
            0 => u.arbitrary()?,
            1 => 1u64 << u.int_in_range(0..=15)?,
            _ => u64::from(max >> u.int_in_range(0..=2)?).max(1),
        };
        w(rig, common::QUEUE_SIZE, size, 2);
        let n = u64::from(max);
        let desc = ring(u, base, 16)?;
        let avail = ring(u, base + 16 * n, 2)?;
        let used = ring(u, (base + 16 * n + 6 + 2 * n + 3) & !3, 4)?;
        base = (base + 16 * n + 6 + 2 * n + 6 + 8 * n + 0xfff) & !0xfff;
        for (at, v) in [
            (common::QUEUE_DESC, desc),
            (common::QUEUE_DRIVER, avail),
            (common::QUEUE_DEVICE, used),
        ] {
            w(rig, at, v, 4);
            w(rig, at + 4, v >> 32, 4);
        }
        let qv = vec(u)?;
        w(rig, common::QUEUE_MSIX_VECTOR, qv, 2);
        if !one_in(u, 6)? {
            w(rig, common::QUEUE_ENABLE, 1, 2);
        }
    }
    if !one_in(u, 6)? {
        w(rig, common::DEVICE_STATUS, 0xf, 1);
    }
    Ok(())
}

/// MSI-X on, each entry programmed (message data 0x40 + n), maybe unmasked.
fn program_msix(u: &mut Unstructured, rig: &mut Rig) -> Result<()> {
    let ctrl: u16 = match u.int_in_range(0u8..=3)? {
        0 => 0,
        1 => 0xc000,
        _ => 0x8000,
    };
    let cap = rig.msix_cap;
    rig.cfg_write(cap + 2, &ctrl.to_le_bytes());
    for v in 0..u64::from(rig.model.vectors) {
        let e = u64::from(MSIX_TABLE_OFFSET) + 16 * v;
        rig.bar_write(e, &0xfee0_0000u32.to_le_bytes());
        rig.bar_write(e + 4, &0u32.to_le_bytes());
        rig.bar_write(e + 8, &(0x40 + v as u32).to_le_bytes());
        let mask = u32::from(one_in(u, 4)?);
        rig.bar_write(e + 12, &mask.to_le_bytes());
    }
    Ok(())
}

fn run(u: &mut Unstructured) -> Result<()> {
    let regions: Vec<_> = REGIONS
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mem = Mem::from_ranges(&regions).expect("guest RAM");
    let irq = FakeInterrupts::new().strict();
    let io = (!one_in(u, 4)?).then(FakeIoEvents::new);
    let device_log = Arc::new(Mutex::new(DeviceLog::default()));
    let (device, sizes, config, fails): (Box<dyn VirtioDevice>, Vec<u16>, _, bool) =
        if one_in(u, 3)? {
            (
                Box::new(Rng::new()),
                vec![devices::virtio::rng::QUEUE_SIZE],
                None,
                false,
            )
        } else {
            let n = u.int_in_range(1..=4usize)?;
            let sizes: Vec<u16> = (0..n)
                .map(|_| {
                    let top = if one_in(u, 8)? { 15 } else { 8 };
                    Ok(1u16 << u.int_in_range(0..=top)?)
                })
                .collect::<Result<_>>()?;
            let len = if one_in(u, 3)? {
                0
            } else {
                u.int_in_range(1..=64)?
            };
            let mut bytes = vec![0u8; len];
            u.fill_buffer(&mut bytes)?;
            let config = Arc::new(Mutex::new(bytes));
            let fails = one_in(u, 8)?;
            let probe = Probe {
                sizes: sizes.clone(),
                features: u.arbitrary::<u64>()? & !TRANSPORT_FEATURES,
                config: config.clone(),
                fail: fails,
                log: device_log.clone(),
            };
            (Box::new(probe), sizes, Some(config), fails)
        };
    let registrar = io.clone().map(|f| Arc::new(f) as Arc<dyn IoEventRegistrar>);
    let mut dev = VirtioPciDevice::new("virtio-fuzz", device, mem.clone(), &irq, registrar)
        .expect("the virtio device");
    let intx = !one_in(u, 4)?;
    if intx {
        dev.attach_intx(irq.allocate_intx(INTX_GSI).expect("INTx"));
    }
    let offered = dev.offered_features();
    let config_model = config.as_ref().map_or(Vec::new(), |c| lock(c).clone());
    let mut rig = Rig {
        dev,
        mem,
        irq: irq.clone(),
        io: io.clone(),
        model: Model::new(offered, &sizes, fails, &REGIONS),
        config,
        config_model,
        device_log: device_log.clone(),
        bar: None,
        msix_cap: 0,
        pci_cfg_cap: 0,
        pci_cfg_data: Some([0; 4]),
        intx,
    };
    // The capabilities, found as a driver finds them.
    {
        let dev = &mut rig.dev;
        let mut read = |o: u16, d: &mut [u8]| dev.config_read(o, d);
        rig.msix_cap = find_cap(&mut read, MSIX_ID).expect("an MSI-X capability");
        let mut p = find_cap(&mut read, PCI_CAP_ID_VNDR).expect("virtio capabilities");
        loop {
            let mut b = [0u8; 4];
            read(p, &mut b);
            if b[0] == PCI_CAP_ID_VNDR && b[3] == VIRTIO_PCI_CAP_PCI_CFG {
                rig.pci_cfg_cap = p;
                break;
            }
            assert_ne!(b[1], 0, "no PCI configuration access capability");
            p = u16::from(b[1] & !3);
        }
    }
    trace!(
        "sizes {sizes:?} offered {offered:#x} intx {intx} ioevents {}",
        io.is_some()
    );
    // Memory decoding and bus mastering on, as firmware leaves a device it sets up.
    rig.cfg_write(COMMAND, &6u16.to_le_bytes());

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        let intx_before = (rig.intx_asserts(), rig.intx && rig.intx_allowed());
        let resets = rig.model.log.resets;
        match u.int_in_range(0u8..=23)? {
            0..=5 => {
                let (off, len) = bar_offset(u, &rig)?;
                let len = if one_in(u, 4)? { access_len(u)? } else { len };
                let data = value(u, len)?;
                rig.bar_write(off, &data);
            }
            6..=8 => {
                let (off, len) = bar_offset(u, &rig)?;
                rig.bar_read(off, len);
            }
            9 => {
                let b = rig.bar_read(ISR_OFFSET, 1);
                trace!("ISR {b:x?}");
            }
            10..=11 => {
                let (off, len) = cfg_access(u, &rig)?;
                let data = value(u, len)?;
                rig.cfg_write(off, &data);
            }
            12 => {
                let (off, len) = cfg_access(u, &rig)?;
                rig.cfg_read_op(off, len);
            }
            13 => {
                // Through the PCI configuration access capability.
                let c = rig.pci_cfg_cap;
                let bar: u8 = if one_in(u, 8)? { u.arbitrary()? } else { 0 };
                let (off, len) = bar_offset(u, &rig)?;
                let len = if one_in(u, 6)? {
                    access_len(u)?
                } else {
                    len.min(4)
                };
                let off = if one_in(u, 6)? {
                    off
                } else {
                    off & !(len.max(1) as u64 - 1)
                };
                rig.cfg_write(c + 4, &[bar]);
                rig.cfg_write(c + 8, &(off as u32).to_le_bytes());
                rig.cfg_write(c + 12, &(len as u32).to_le_bytes());
                if one_in(u, 2)? {
                    let data = value(u, 4)?;
                    rig.cfg_write(c + 16, &data);
                } else {
                    rig.cfg_read_op(c + 16, 4);
                }
            }
            14..=15 => bring_up(u, &mut rig)?,
            16 => program_msix(u, &mut rig)?,
            17..=18 => {
                let q = u.int_in_range(0..=rig.model.queues.len() as u64)?;
                let addr = rig.bar.map(|b| b + NOTIFY_OFFSET + 4 * q);
                let by_ioevent = match (&rig.io, addr) {
                    (Some(io), Some(a)) => io.guest_write(a, 2, q),
                    _ => false,
                };
                if !by_ioevent {
                    rig.bar_write(NOTIFY_OFFSET + 4 * q, &(q as u16).to_le_bytes());
                }
                trace!("notify {q} (ioeventfd {by_ioevent})");
            }
            19 => {
                // The platform maps the BAR elsewhere, or unmaps it.
                let new = if one_in(u, 4)? {
                    None
                } else {
                    Some(u.int_in_range(0..=0x0fff_ffff_u64)? * BAR_SIZE)
                };
                if let Some(a) = new {
                    rig.cfg_write(0x10, &(a as u32 | 4).to_le_bytes());
                    rig.cfg_write(0x14, &((a >> 32) as u32).to_le_bytes());
                }
                let old = rig.bar;
                rig.dev.bar_moved(0, old, new);
                rig.bar = new;
                trace!("BAR moved {old:x?} -> {new:x?}");
            }
            20 => {
                let at = u.int_in_range(0..=RAM_END)?;
                let len = u.int_in_range(0..=32)?;
                let mut b = vec![0u8; len];
                u.fill_buffer(&mut b)?;
                let _ = rig.mem.write_slice(&b, GuestAddress(at));
            }
            21 => {
                rig.irq.eoi(INTX_GSI);
            }
            22 => rig.audit(true),
            _ => {
                // A read of another BAR: all ones.
                let bar = u.int_in_range(1..=6usize)?;
                let len = access_len(u)?;
                let mut b = vec![0u8; len];
                rig.dev.bar_read(bar, u.arbitrary()?, &mut b);
                assert!(b.iter().all(|&x| x == 0xff), "BAR {bar} read {b:x?}");
            }
        }
        if rig.model.log.resets != resets {
            rig.audit(true);
        }
        rig.check(intx_before);
    }
    drop(rig);
    assert_eq!(irq.live(), 0, "vectors or INTx lines outlived the device");
    if let Some(io) = io {
        assert!(io.addresses().is_empty(), "notify addresses still bound");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
