//! The KVM implementation of the device crate's interrupt traits: one [`KvmInterruptManager`]
//! per VM owns the whole GSI routing table.
//!
//! `KVM_SET_GSI_ROUTING` replaces the table, so the table always holds the in-kernel irqchip
//! routes too, replicating QEMU's PC routing:
//!
//! | GSI | Routed to |
//! |---|---|
//! | 0 | PIC master pin 0 and IOAPIC pin 2 (the MADT's ISA IRQ0 → GSI 2 override) |
//! | 1, 3–7 | PIC master pin n and IOAPIC pin n |
//! | 2 | nothing (the PIC cascade) |
//! | 8–15 | PIC slave pin n − 8 and IOAPIC pin n |
//! | 16–23 | IOAPIC pin n (PCI INTx) |
//! | [`MSI_GSI_BASE`].. | one MSI route per allocated vector that has a message |
//!
//! MSI vectors are GSIs with an irqfd. Disabling (masking) a vector deassigns its irqfd
//! (`KVM_IRQFD` with the deassign flag): events then accumulate in the eventfd; re-assigning
//! delivers an accumulated event (KVM polls the eventfd when an irqfd is assigned). INTx lines
//! are resample irqfds on IOAPIC pins (level-triggered: asserted until the guest's EOI, which
//! signals the resample eventfd).
//!
//! The number of MSI GSIs is bounded so the whole table fits `KVM_MAX_IRQ_ROUTES`; allocation
//! past it is an error, not a panic. Routes carry no device ID (no `KVM_CAP_MSI_DEVID` here).
//! The manager is `Send + Sync`; the table is behind one mutex, taken for allocation, release
//! and route changes (never on the interrupt delivery path).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{IOAPIC_PINS, MSI_GSI_BASE};
use crate::interrupt::{
    drain_eventfd, InterruptError, InterruptManager, IntxLine, MsiMessage, MsiVector,
};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use kvm_ioctls::{Cap, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Errors from setting up the interrupt manager.
#[derive(Debug, thiserror::Error)]
pub enum InterruptsError {
    /// KVM does not support GSI routing.
    #[error("KVM does not support GSI routing (KVM_CAP_IRQ_ROUTING); vfiovm needs it")]
    NoRouting,
    /// The initial table was refused.
    #[error(
        "installing the initial GSI routing table failed: {0} (create the in-kernel irqchip first)"
    )]
    InitialRouting(#[source] io::Error),
}

fn irqchip_entry(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    }
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        // No KVM_MSI_VALID_DEVID: the host has no KVM_CAP_MSI_DEVID.
        flags: 0,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: msg.address as u32,
                address_hi: (msg.address >> 32) as u32,
                data: msg.data,
                ..Default::default()
            },
        },
        ..Default::default()
    }
}

/// The PIC and IOAPIC routes (see the module documentation).
pub fn irqchip_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..16u32 {
        if gsi == 2 {
            continue;
        }
        let (chip, pin) = if gsi < 8 {
            (KVM_IRQCHIP_PIC_MASTER, gsi)
        } else {
            (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
        };
        routes.push(irqchip_entry(gsi, chip, pin));
    }
    for gsi in 0..IOAPIC_PINS {
        match gsi {
            0 => routes.push(irqchip_entry(0, KVM_IRQCHIP_IOAPIC, 2)),
            2 => {}
            _ => routes.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi)),
        }
    }
    routes
}

/// The allocated MSI GSIs and their routes.
struct Table {
    msi: BTreeMap<u32, Option<MsiMessage>>,
    /// One past the highest MSI GSI.
    gsi_end: u32,
    /// `msi` differs from what KVM has: routes of disabled vectors set, or routes of released
    /// ones removed, since the last commit. Neither can deliver anything before the next commit
    /// (a disabled or released vector has no irqfd), so committing waits for the next enable or
    /// the next route change of an enabled vector: one `KVM_SET_GSI_ROUTING` for a whole MSI-X
    /// table instead of one per vector.
    dirty: bool,
    /// `KVM_SET_GSI_ROUTING` calls made.
    commits: u64,
}

struct Shared {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
    irqchip: Vec<kvm_irq_routing_entry>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs the irqchip routes plus every MSI route in `table`.
    fn commit(&self, table: &mut Table) -> io::Result<()> {
        table.commits += 1;
        self.install(table)?;
        table.dirty = false;
        Ok(())
    }

    fn install(&self, table: &Table) -> io::Result<()> {
        let mut entries = self.irqchip.clone();
        entries.extend(
            table
                .msi
                .iter()
                .filter_map(|(&gsi, msg)| msg.map(|m| msi_entry(gsi, m))),
        );
        let routing = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
        self.vm.set_gsi_routing(&routing).map_err(io::Error::from)
    }

    fn allocate(&self) -> Result<u32, InterruptError> {
        let mut t = self.table();
        let limit = t.gsi_end - MSI_GSI_BASE;
        let gsi = (MSI_GSI_BASE..t.gsi_end)
            .find(|g| !t.msi.contains_key(g))
            .ok_or(InterruptError::NoFreeGsi { limit })?;
        t.msi.insert(gsi, None);
        Ok(gsi)
    }

    /// Routes `gsi` to `msg`: committed now when the vector is `live` (its irqfd assigned),
    /// else at the next [`Shared::flush`].
    fn set_route(&self, gsi: u32, msg: MsiMessage, live: bool) -> Result<(), InterruptError> {
        let mut t = self.table();
        let Some(slot) = t.msi.get_mut(&gsi) else {
            return Err(InterruptError::Routing(io::Error::new(
                io::ErrorKind::NotFound,
                format!("GSI {gsi} is not allocated"),
            )));
        };
        if *slot == Some(msg) {
            return Ok(());
        }
        let old = slot.replace(msg);
        if !live {
            t.dirty = true;
            return Ok(());
        }
        if let Err(e) = self.commit(&mut t) {
            t.msi.insert(gsi, old);
            return Err(InterruptError::Routing(e));
        }
        Ok(())
    }

    /// Commits the table if routes changed since the last commit (before an irqfd is assigned).
    fn flush(&self) -> Result<(), InterruptError> {
        let mut t = self.table();
        if t.dirty {
            self.commit(&mut t).map_err(InterruptError::Routing)?;
        }
        Ok(())
    }

    /// Forgets `gsi`'s route; KVM drops it at the next commit (the vector's irqfd is gone, so
    /// the stale route cannot fire).
    fn release(&self, gsi: u32) {
        let mut t = self.table();
        if let Some(Some(_)) = t.msi.remove(&gsi) {
            t.dirty = true;
        }
    }
}

/// Owns the VM's GSI routing table and hands out irqfd-backed MSI vectors and INTx lines.
pub struct KvmInterruptManager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KvmInterruptManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.shared.table();
        f.debug_struct("KvmInterruptManager")
            .field("msi_gsis", &t.msi.len())
            .field("gsi_end", &t.gsi_end)
            .finish()
    }
}

impl KvmInterruptManager {
    /// Takes over the routing table of `vm` (whose in-kernel irqchip must exist) and installs the
    /// irqchip routes. MSI GSIs are limited by what the table can hold.
    pub fn new(vm: Arc<VmFd>) -> Result<Self, InterruptsError> {
        Self::with_max_msi(vm, u32::MAX)
    }

    /// Like [`KvmInterruptManager::new`], with at most `max_msi` MSI vectors in all.
    pub fn with_max_msi(vm: Arc<VmFd>, max_msi: u32) -> Result<Self, InterruptsError> {
        let max_routes = vm.check_extension_int(Cap::IrqRouting);
        if max_routes <= 0 {
            return Err(InterruptsError::NoRouting);
        }
        let max_routes = (max_routes as u32).min(KVM_MAX_IRQ_ROUTES as u32);
        let irqchip = irqchip_routes();
        // GSIs must be below the route limit, and the table must hold every route.
        let capacity = max_routes
            .saturating_sub(irqchip.len() as u32)
            .min(max_routes.saturating_sub(MSI_GSI_BASE))
            .min(max_msi);
        let shared = Shared {
            vm,
            table: Mutex::new(Table {
                msi: BTreeMap::new(),
                gsi_end: MSI_GSI_BASE + capacity,
                dirty: false,
                commits: 0,
            }),
            irqchip,
        };
        shared
            .commit(&mut shared.table())
            .map_err(InterruptsError::InitialRouting)?;
        Ok(KvmInterruptManager {
            shared: Arc::new(shared),
        })
    }

    /// How many MSI vectors can exist at once.
    pub fn msi_capacity(&self) -> u32 {
        self.shared.table().gsi_end - MSI_GSI_BASE
    }

    /// How many times the routing table was committed to KVM (`KVM_SET_GSI_ROUTING`).
    pub fn routing_commits(&self) -> u64 {
        self.shared.table().commits
    }

    /// The MSI routes of allocated vectors: `(gsi, message)` (in force in KVM for every enabled
    /// vector).
    pub fn msi_routes(&self) -> Vec<(u32, MsiMessage)> {
        self.shared
            .table()
            .msi
            .iter()
            .filter_map(|(&g, m)| m.map(|m| (g, m)))
            .collect()
    }
}

fn new_eventfd() -> Result<EventFd, InterruptError> {
    crate::new_eventfd().map_err(InterruptError::EventFd)
}

impl InterruptManager for KvmInterruptManager {
    fn allocate_msi(&self) -> Result<Box<dyn MsiVector>, InterruptError> {
        let fd = new_eventfd()?;
        let gsi = self.shared.allocate()?;
        Ok(Box::new(KvmMsiVector(Irqfd {
            gsi,
            fd,
            shared: self.shared.clone(),
            live: false,
        })))
    }

    fn allocate_intx(&self, gsi: u32) -> Result<Box<dyn IntxLine>, InterruptError> {
        if gsi >= IOAPIC_PINS {
            return Err(InterruptError::InvalidIntxGsi { gsi });
        }
        let mut line = KvmIntxLine {
            irqfd: Irqfd {
                gsi,
                fd: new_eventfd()?,
                shared: self.shared.clone(),
                live: false,
            },
            resample: new_eventfd()?,
        };
        line.enable()?;
        Ok(Box::new(line))
    }
}

fn irqfd_error(gsi: u32, e: kvm_ioctls::Error) -> InterruptError {
    InterruptError::Irqfd {
        gsi,
        source: e.into(),
    }
}

/// An eventfd bound to a GSI as a KVM irqfd, assigned only while enabled: while it is not,
/// events wait in the eventfd's counter.
struct Irqfd {
    gsi: u32,
    fd: EventFd,
    shared: Arc<Shared>,
    live: bool,
}

impl Irqfd {
    /// Assigns the irqfd; with `resample` (a level-triggered line) KVM signals it on EOI.
    fn enable(&mut self, resample: Option<&EventFd>) -> Result<(), InterruptError> {
        if !self.live {
            let vm = &self.shared.vm;
            match resample {
                Some(r) => vm.register_irqfd_with_resample(&self.fd, r, self.gsi),
                None => vm.register_irqfd(&self.fd, self.gsi),
            }
            .map_err(|e| irqfd_error(self.gsi, e))?;
            self.live = true;
        }
        Ok(())
    }

    fn disable(&mut self) -> Result<(), InterruptError> {
        if self.live {
            self.shared
                .vm
                .unregister_irqfd(&self.fd, self.gsi)
                .map_err(|e| irqfd_error(self.gsi, e))?;
            self.live = false;
        }
        Ok(())
    }

    fn trigger(&self) -> Result<(), InterruptError> {
        self.fd.write(1).map_err(InterruptError::EventFd)
    }
}

/// An MSI vector: a GSI with an irqfd.
struct KvmMsiVector(Irqfd);

impl MsiVector for KvmMsiVector {
    fn gsi(&self) -> u32 {
        self.0.gsi
    }

    fn eventfd(&self) -> &EventFd {
        &self.0.fd
    }

    fn set_route(&mut self, msg: MsiMessage) -> Result<(), InterruptError> {
        self.0.shared.set_route(self.0.gsi, msg, self.0.live)
    }

    fn enable(&mut self) -> Result<(), InterruptError> {
        if !self.0.live {
            self.0.shared.flush()?;
        }
        self.0.enable(None)
    }

    fn disable(&mut self) -> Result<(), InterruptError> {
        self.0.disable()
    }

    fn trigger(&self) -> Result<(), InterruptError> {
        self.0.trigger()
    }

    fn take_pending(&self) -> bool {
        !self.0.live && drain_eventfd(&self.0.fd)
    }
}

impl Drop for KvmMsiVector {
    fn drop(&mut self) {
        if let Err(e) = self.0.disable() {
            log::warn!("releasing MSI vector: {e}");
        }
        self.0.shared.release(self.0.gsi);
    }
}

/// An INTx line: a resample irqfd on an IOAPIC pin.
struct KvmIntxLine {
    irqfd: Irqfd,
    resample: EventFd,
}

impl IntxLine for KvmIntxLine {
    fn gsi(&self) -> u32 {
        self.irqfd.gsi
    }

    fn eventfd(&self) -> &EventFd {
        &self.irqfd.fd
    }

    fn resample_eventfd(&self) -> &EventFd {
        &self.resample
    }

    fn enable(&mut self) -> Result<(), InterruptError> {
        self.irqfd.enable(Some(&self.resample))
    }

    fn disable(&mut self) -> Result<(), InterruptError> {
        self.irqfd.disable()
    }

    fn trigger(&self) -> Result<(), InterruptError> {
        self.irqfd.trigger()
    }

    fn take_resample(&self) -> bool {
        drain_eventfd(&self.resample)
    }
}

impl Drop for KvmIntxLine {
    fn drop(&mut self) {
        if let Err(e) = self.irqfd.disable() {
            log::warn!("releasing INTx line: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use kvm_bindings::{kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER};
    use kvm_ioctls::{Kvm, VcpuFd};

    use super::*;

    fn vm() -> Arc<VmFd> {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        Arc::new(vm)
    }

    fn chip(e: &kvm_irq_routing_entry) -> (u32, u32) {
        // SAFETY: every entry of `irqchip_routes` is of type KVM_IRQ_ROUTING_IRQCHIP, so the
        // `irqchip` member is the one written (and the union is plain old data anyway).
        let c = unsafe { e.u.irqchip };
        (c.irqchip, c.pin)
    }

    #[test]
    fn irqchip_routing_matches_qemu() {
        let routes = irqchip_routes();
        let of = |gsi| {
            let mut v: Vec<(u32, u32)> = routes.iter().filter(|e| e.gsi == gsi).map(chip).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(
            of(0),
            vec![(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 2)]
        );
        assert!(of(2).is_empty());
        assert_eq!(
            of(4),
            vec![(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]
        );
        assert_eq!(
            of(9),
            vec![(KVM_IRQCHIP_PIC_SLAVE, 1), (KVM_IRQCHIP_IOAPIC, 9)]
        );
        for gsi in 16..24 {
            assert_eq!(of(gsi), vec![(KVM_IRQCHIP_IOAPIC, gsi)]);
        }
        assert!(of(24).is_empty());
        assert!(routes.iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
        // PIC: GSIs 0..16 but 2; IOAPIC: GSIs 0..24 but 2.
        assert_eq!(routes.len(), 15 + 23);
    }

    fn irqchip_state(vm: &VmFd, chip_id: u32) -> kvm_irqchip {
        let mut c = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).unwrap();
        c
    }

    fn ioapic_irr(vm: &VmFd) -> u32 {
        let c = irqchip_state(vm, KVM_IRQCHIP_IOAPIC);
        // SAFETY: KVM_GET_IRQCHIP with chip_id IOAPIC fills the `ioapic` member; the union is
        // plain old data.
        unsafe { c.chip.ioapic.irr }
    }

    fn pic_master_irr(vm: &VmFd) -> u8 {
        let c = irqchip_state(vm, KVM_IRQCHIP_PIC_MASTER);
        // SAFETY: KVM_GET_IRQCHIP with chip_id PIC_MASTER fills the `pic` member; POD union.
        unsafe { c.chip.pic.irr }
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn intx_lines_reach_the_routed_irqchip_pins() {
        let vm = vm();
        let m = KvmInterruptManager::new(vm.clone()).unwrap();
        assert!(m.allocate_intx(24).is_err());
        let l16 = m.allocate_intx(16).unwrap();
        let l0 = m.allocate_intx(0).unwrap();
        assert_eq!(ioapic_irr(&vm) & (1 << 16 | 1 << 2), 0);
        l16.trigger().unwrap();
        assert!(wait_for(|| ioapic_irr(&vm) & (1 << 16) != 0));
        // GSI 0 is the IOAPIC's pin 2 and the PIC's pin 0.
        l0.trigger().unwrap();
        assert!(wait_for(|| ioapic_irr(&vm) & (1 << 2) != 0));
        assert!(wait_for(|| pic_master_irr(&vm) & 1 != 0));
        assert_eq!(ioapic_irr(&vm) & 1, 0);
    }

    /// A vCPU whose local APIC is software-enabled, so fixed MSIs land in its IRR.
    fn vcpu_with_apic(vm: &VmFd) -> VcpuFd {
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut lapic = vcpu.get_lapic().unwrap();
        // Spurious-interrupt vector register (0xF0): APIC software enable (bit 8).
        lapic.regs[0xf1] |= 1;
        vcpu.set_lapic(&lapic).unwrap();
        vcpu
    }

    fn irr_has(vcpu: &VcpuFd, vector: u8) -> bool {
        let lapic = vcpu.get_lapic().unwrap();
        let reg = 0x200 + usize::from(vector / 32) * 0x10;
        let word = u32::from_le_bytes([
            lapic.regs[reg] as u8,
            lapic.regs[reg + 1] as u8,
            lapic.regs[reg + 2] as u8,
            lapic.regs[reg + 3] as u8,
        ]);
        word & (1 << (vector % 32)) != 0
    }

    fn msg(vector: u8) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000,
            data: vector.into(),
        }
    }

    #[test]
    fn msi_vectors_deliver_mask_and_hold_pending() {
        let vm = vm();
        let vcpu = vcpu_with_apic(&vm);
        let m = KvmInterruptManager::new(vm.clone()).unwrap();
        let mut v = m.allocate_msi().unwrap();
        assert!(v.gsi() >= MSI_GSI_BASE);
        v.set_route(msg(0x40)).unwrap();
        v.enable().unwrap();
        v.trigger().unwrap();
        assert!(wait_for(|| irr_has(&vcpu, 0x40)));
        // Masked: nothing arrives, the event waits in the eventfd and is consumable.
        v.set_route(msg(0x41)).unwrap();
        v.disable().unwrap();
        v.trigger().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!irr_has(&vcpu, 0x41));
        assert!(v.take_pending());
        assert!(!v.take_pending());
        // An event that accumulated while masked is delivered when unmasked.
        v.trigger().unwrap();
        v.set_route(msg(0x42)).unwrap();
        v.enable().unwrap();
        assert!(wait_for(|| irr_has(&vcpu, 0x42)));
        assert!(!v.take_pending());
        assert_eq!(m.msi_routes(), vec![(v.gsi(), msg(0x42))]);
        let gsi = v.gsi();
        drop(v);
        assert!(m.msi_routes().is_empty());
        // The GSI is reused.
        assert_eq!(m.allocate_msi().unwrap().gsi(), gsi);
    }

    #[test]
    fn gsis_are_bounded_and_reused() {
        let vm = vm();
        let m = KvmInterruptManager::with_max_msi(vm.clone(), 4).unwrap();
        assert_eq!(m.msi_capacity(), 4);
        let mut vs: Vec<_> = (0..4).map(|_| m.allocate_msi().unwrap()).collect();
        assert!(matches!(
            m.allocate_msi(),
            Err(InterruptError::NoFreeGsi { limit: 4 })
        ));
        for (i, v) in vs.iter_mut().enumerate() {
            v.set_route(msg(0x50 + i as u8)).unwrap();
        }
        assert_eq!(m.msi_routes().len(), 4);
        vs.remove(1);
        assert_eq!(m.msi_routes().len(), 3);
        let v = m.allocate_msi().unwrap();
        assert_eq!(v.gsi(), MSI_GSI_BASE + 1);
        // The unbounded manager still fits the table into KVM's limit.
        let big = KvmInterruptManager::new(vm).unwrap();
        assert!(big.msi_capacity() + irqchip_routes().len() as u32 <= KVM_MAX_IRQ_ROUTES as u32);
        assert!(big.msi_capacity() >= 2048);
    }

    #[test]
    fn concurrent_route_updates_all_land() {
        let vm = vm();
        let m = Arc::new(KvmInterruptManager::new(vm).unwrap());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    let mut vs = Vec::new();
                    for i in 0..16u8 {
                        let mut v = m.allocate_msi().unwrap();
                        v.set_route(msg(0x20 + t * 16 + i)).unwrap();
                        vs.push(v);
                    }
                    vs
                })
            })
            .collect();
        let vectors: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let routes = m.msi_routes();
        assert_eq!(routes.len(), 64);
        let mut data: Vec<u32> = routes.iter().map(|r| r.1.data).collect();
        data.sort_unstable();
        assert_eq!(data, (0x20..0x60).collect::<Vec<u32>>());
        drop(vectors);
        assert!(m.msi_routes().is_empty());
    }

    /// Issue 11: enabling a 2048-vector MSI-X table (the guest programs every entry unmasked,
    /// then sets the enable bit) used to commit the routing table once per vector, each commit
    /// copying the whole table into KVM. Now the device model routes every vector before
    /// enabling any, and the manager commits at the first enable: one commit.
    #[test]
    fn msix_enable_of_2048_vectors_commits_routing_once() {
        use crate::pci::bar::BarSpec;
        use crate::pci::caps::msix::{Msix, MsixCap};
        use crate::pci::config::{ConfigHeader, ConfigSpace};
        let vm = vm();
        let m = KvmInterruptManager::new(vm).unwrap();
        let mut c = ConfigSpace::new(&ConfigHeader {
            vendor_id: 1,
            device_id: 2,
            ..Default::default()
        });
        c.set_bar(0, BarSpec::mem32(0x1_0000)).unwrap();
        let cap = MsixCap::new(2048, 0, 0, 0, 0x8000).unwrap();
        let mut x = Msix::new(&mut c, cap, &m).unwrap();
        for v in 0..2048u64 {
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&0xfee0_0000u64.to_le_bytes());
            e[8..12].copy_from_slice(&(0x30 + (v as u32 % 0xc0)).to_le_bytes());
            x.write_table(v * 16, &e);
        }
        let before = m.routing_commits();
        let off = x.cap().offset() + 2;
        let t = Instant::now();
        c.write(off, &0x8000u16.to_le_bytes());
        x.config_written(&c, off, 2);
        let took = t.elapsed();
        let commits = m.routing_commits() - before;
        eprintln!("MSI-X enable of 2048 vectors: {commits} routing commit(s) in {took:?}");
        assert_eq!(commits, 1);
        assert_eq!(m.msi_routes().len(), 2048);
        assert!((0..2048).all(|v| x.vector(v).is_some()));
        // Dropping the device releases every vector without a commit per vector.
        let before = m.routing_commits();
        drop(x);
        assert_eq!(m.routing_commits(), before);
        assert!(m.msi_routes().is_empty());
    }

    #[test]
    fn route_to_unallocated_gsi_is_an_error() {
        let m = KvmInterruptManager::new(vm()).unwrap();
        assert!(m.shared.set_route(MSI_GSI_BASE, msg(0x30), false).is_err());
    }
}
