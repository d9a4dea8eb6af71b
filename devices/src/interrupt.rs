//! The interrupt routing a PCI device needs, as traits the VMM implements.
//!
//! A device never talks to KVM. It asks an [`InterruptManager`] for
//!
//! - [`MsiVector`]s: one GSI each, plus an `EventFd` that fires it. The device model (the MSI and
//!   MSI-X capabilities in [`crate::pci`]) programs the vector's route from what the guest wrote
//!   (address/data), and enables or disables delivery as the guest masks and unmasks it. A
//!   passthrough device hands the `EventFd` to the hardware (VFIO); an emulated device calls
//!   [`MsiVector::trigger`].
//! - [`IntxLine`]s: a level-triggered IOAPIC input (a GSI) with a trigger `EventFd` and a resample
//!   `EventFd` that signals when the guest's EOI de-asserted the line.
//!
//! # Masking
//!
//! A disabled vector ([`MsiVector::disable`]) must not reach the guest. The KVM implementation
//! deassigns the irqfd: events written to the `EventFd` then accumulate in its counter instead of
//! being delivered. [`MsiVector::take_pending`] consumes such an accumulated event (so the device
//! model can show it as a pending bit), and re-enabling a vector whose `EventFd` still holds an
//! event delivers it (KVM checks the counter when an irqfd is assigned). Either way every event
//! that arrives while masked is delivered exactly once after unmasking, as the PCI specification
//! asks of pending MSI-X vectors.
//!
//! All `EventFd`s handed out are non-blocking.

use std::fmt;

use vmm_sys_util::eventfd::EventFd;

/// Errors from allocating or programming interrupts.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// Every GSI the VMM can route is in use.
    #[error("no free GSI for another MSI vector (all {limit} routable GSIs are in use); give the VM fewer interrupt vectors")]
    NoFreeGsi {
        /// How many GSIs the routing table can hold.
        limit: u32,
    },
    /// An INTx line was asked for on a GSI that is not an IOAPIC input.
    #[error("GSI {gsi} is not an IOAPIC input that INTx can be wired to")]
    InvalidIntxGsi {
        /// The rejected GSI.
        gsi: u32,
    },
    /// Creating, reading or writing an `EventFd` failed.
    #[error("eventfd operation failed: {0}")]
    EventFd(#[source] std::io::Error),
    /// The hypervisor rejected the GSI routing table.
    #[error("setting the GSI routing table failed: {0}")]
    Routing(#[source] std::io::Error),
    /// The hypervisor rejected assigning or deassigning an irqfd.
    #[error("(de)assigning the irqfd for GSI {gsi} failed: {source}")]
    Irqfd {
        /// The GSI the irqfd fires.
        gsi: u32,
        /// The hypervisor's error.
        #[source]
        source: std::io::Error,
    },
}

/// An MSI message: what the device writes (`data`, 32 bits) and where (`address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (on x86, 0xFEEx_xxxx selects the destination APIC).
    pub address: u64,
    /// Message data (on x86, the vector and delivery mode).
    pub data: u32,
}

impl fmt::Display for MsiMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "address {:#x} data {:#x}", self.address, self.data)
    }
}

/// One MSI or MSI-X vector: a GSI the hypervisor routes to an MSI message, and an `EventFd` that
/// fires it. Dropping the vector releases its GSI and route.
///
/// A new vector has no route and is disabled.
pub trait MsiVector: Send {
    /// The GSI this vector fires.
    fn gsi(&self) -> u32;
    /// The `EventFd` that fires the vector (hand it to hardware, or use [`MsiVector::trigger`]).
    fn eventfd(&self) -> &EventFd;
    /// Routes the GSI to `msg`. Implementations skip the update when the route is unchanged,
    /// and may defer it while the vector is disabled, as long as it is in force before
    /// [`MsiVector::enable`] returns (the KVM implementation commits the routing table once, at
    /// the first enable, for every vector routed while disabled). On an enabled vector the new
    /// route is in force when this returns.
    fn set_route(&mut self, msg: MsiMessage) -> Result<(), InterruptError>;
    /// Starts delivering events (the guest unmasked the vector). Idempotent. An event that
    /// accumulated while disabled is delivered now.
    fn enable(&mut self) -> Result<(), InterruptError>;
    /// Stops delivering events; they accumulate in the `EventFd` (the guest masked the vector).
    /// Idempotent.
    fn disable(&mut self) -> Result<(), InterruptError>;
    /// Fires the vector from userspace. While disabled the event accumulates.
    fn trigger(&self) -> Result<(), InterruptError>;
    /// While disabled: consumes the events that accumulated and returns whether there were any.
    /// While enabled: returns `false` (events are delivered, never pending).
    fn take_pending(&self) -> bool;
}

/// A legacy INTx line: a level-triggered IOAPIC input with an irqfd and a resample fd.
///
/// [`IntxLine::trigger`] asserts the line; the guest's EOI de-asserts it and signals the
/// resample `EventFd`, after which a device whose interrupt condition still holds must trigger
/// again. A new line is enabled.
pub trait IntxLine: Send {
    /// The GSI (IOAPIC pin) the line drives.
    fn gsi(&self) -> u32;
    /// The `EventFd` that asserts the line.
    fn eventfd(&self) -> &EventFd;
    /// The `EventFd` signalled when the guest's EOI de-asserted the line.
    fn resample_eventfd(&self) -> &EventFd;
    /// Connects the line (irqfd assigned). Idempotent.
    fn enable(&mut self) -> Result<(), InterruptError>;
    /// Disconnects the line (irqfd deassigned), e.g. while the device uses MSI. Idempotent.
    fn disable(&mut self) -> Result<(), InterruptError>;
    /// Asserts the line from userspace.
    fn trigger(&self) -> Result<(), InterruptError>;
    /// Consumes a resample notification and returns whether there was one.
    fn take_resample(&self) -> bool;
}

/// Hands out interrupt vectors and lines. Implemented by the VMM over its hypervisor.
pub trait InterruptManager: Send + Sync {
    /// Allocates an MSI vector: a free GSI and an `EventFd`, disabled and without a route.
    fn allocate_msi(&self) -> Result<Box<dyn MsiVector>, InterruptError>;
    /// Connects an INTx line to IOAPIC input `gsi`.
    fn allocate_intx(&self, gsi: u32) -> Result<Box<dyn IntxLine>, InterruptError>;
}

/// Reads an `EventFd` without blocking; `true` if it held events (they are consumed).
/// The `EventFd` must be non-blocking.
pub fn drain_eventfd(fd: &EventFd) -> bool {
    matches!(fd.read(), Ok(n) if n > 0)
}

#[cfg(any(test, feature = "test-util"))]
pub mod fake {
    //! Test double (feature `test-util`): [`FakeInterrupts`], an in-memory [`InterruptManager`]
    //! that behaves like the KVM implementation and records what a device model asks of it, for
    //! tests of device models (this crate's unit tests, the fuzz targets, an embedder's tests).
    //!
    //! - A disabled vector's events accumulate in its `EventFd` and are delivered when it is
    //!   enabled again; a delivery sends the vector's current route and is recorded twice: in
    //!   the GSI's [`GsiLog::delivered`] and in the list [`FakeInterrupts::take_deliveries`]
    //!   drains.
    //! - MSI vectors get GSIs from [`MSI_GSI_BASE`] up; INTx lines live below it.
    //! - [`FakeInterrupts::fire_fd`] plays passthrough hardware signalling an eventfd that the
    //!   model handed to VFIO.
    //! - [`FakeInterrupts::strict`] makes it panic on what no correct model asks for (enabling a
    //!   vector before any route was set), for fuzzing.
    //!
    //! ```
    //! use vfiovm_devices::interrupt::fake::FakeInterrupts;
    //! use vfiovm_devices::interrupt::{InterruptManager, MsiMessage};
    //!
    //! let irq = FakeInterrupts::new().strict();
    //! let mut v = irq.allocate_msi().unwrap();
    //! let msg = MsiMessage { address: 0xfee0_0000, data: 0x41 };
    //! v.set_route(msg).unwrap();
    //! v.trigger().unwrap(); // disabled: the event waits in the eventfd
    //! assert!(irq.take_deliveries().is_empty());
    //! v.enable().unwrap(); // delivered now
    //! assert_eq!(irq.take_deliveries(), vec![(v.gsi(), msg)]);
    //! irq.assert_vector(v.gsi(), Some(msg), "vector 0");
    //! drop(v);
    //! assert_eq!(irq.live(), 0);
    //! ```

    use std::collections::BTreeMap;
    use std::os::unix::io::{AsRawFd, RawFd};
    use std::sync::{Arc, Mutex, MutexGuard};

    use vmm_sys_util::eventfd::EventFd;

    use super::{drain_eventfd, InterruptError, InterruptManager, IntxLine, MsiMessage, MsiVector};

    /// First GSI handed out for MSI vectors (the GSIs below are IOAPIC pins, for INTx).
    pub const MSI_GSI_BASE: u32 = 24;

    /// What happened to one GSI.
    #[derive(Debug, Default, Clone)]
    pub struct GsiLog {
        /// The current route.
        pub route: Option<MsiMessage>,
        /// Whether delivery is enabled.
        pub enabled: bool,
        /// Messages delivered to the "guest", in order.
        pub delivered: Vec<MsiMessage>,
        /// INTx assertions delivered (for an IOAPIC pin: the sum over the lines on it).
        pub intx_asserts: u32,
        /// Number of route updates (to check no-op updates are skipped).
        pub route_updates: u32,
    }

    /// What the manager knows about one INTx line.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct IntxLog {
        /// The IOAPIC input.
        pub gsi: u32,
        /// Whether the line is connected.
        pub enabled: bool,
        /// Raw fd of the trigger `EventFd` (what the model hands to VFIO).
        pub fd: RawFd,
        /// Raw fd of the resample `EventFd`.
        pub resample_fd: RawFd,
        /// Assertions delivered while connected.
        pub asserts: u64,
    }

    /// Shared record of every GSI and line; lock it with [`FakeInterrupts::state`].
    #[derive(Debug, Default)]
    pub struct FakeState {
        /// Every GSI that was allocated (MSI, until the vector is dropped) or asserted (INTx).
        pub gsis: BTreeMap<u32, GsiLog>,
        /// The most MSI vectors handed out at a time.
        pub limit: u32,
        next: u32,
        /// The live vectors' `EventFd`s, by GSI.
        fds: BTreeMap<u32, Arc<EventFd>>,
        /// The live INTx lines, by allocation number.
        intx: BTreeMap<u64, IntxLog>,
        /// Duplicates of the live INTx lines' resample `EventFd`s, by allocation number.
        resample_fds: BTreeMap<u64, EventFd>,
        next_intx: u64,
        /// `(gsi, message)` of every delivery since the last `take_deliveries`.
        deliveries: Vec<(u32, MsiMessage)>,
        strict: bool,
    }

    impl FakeState {
        /// Delivers what accumulated in `gsi`'s eventfd if the vector is enabled (KVM's irqfd).
        fn pump(&mut self, gsi: u32) {
            let Some(fd) = self.fds.get(&gsi) else {
                return;
            };
            let g = self.gsis.entry(gsi).or_default();
            if g.enabled && drain_eventfd(fd) {
                if self.strict && g.route.is_none() {
                    panic!("GSI {gsi} delivered an interrupt with no route set");
                }
                let route = g.route.unwrap_or_default();
                g.delivered.push(route);
                self.deliveries.push((gsi, route));
            }
        }
    }

    /// The fake manager. Clones share state: keep one to inspect what the devices did.
    #[derive(Debug, Clone)]
    pub struct FakeInterrupts {
        /// Everything recorded (prefer the accessors).
        pub state: Arc<Mutex<FakeState>>,
    }

    impl Default for FakeInterrupts {
        fn default() -> Self {
            Self::new()
        }
    }

    fn lock(m: &Mutex<FakeState>) -> MutexGuard<'_, FakeState> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl FakeInterrupts {
        /// A manager without a limit on MSI vectors.
        pub fn new() -> Self {
            Self::with_limit(u32::MAX)
        }

        /// A manager that refuses to hand out more than `limit` MSI vectors at a time.
        pub fn with_limit(limit: u32) -> Self {
            FakeInterrupts {
                state: Arc::new(Mutex::new(FakeState {
                    next: MSI_GSI_BASE,
                    limit,
                    ..Default::default()
                })),
            }
        }

        /// Panics on what no correct device model does: enabling a vector before any route was
        /// set (so a delivery always has a route). For fuzzing; without it such a delivery
        /// sends `MsiMessage::default()`.
        pub fn strict(self) -> Self {
            lock(&self.state).strict = true;
            self
        }

        /// The record of `gsi` (empty if it was never allocated or asserted).
        pub fn log(&self, gsi: u32) -> GsiLog {
            lock(&self.state)
                .gsis
                .get(&gsi)
                .cloned()
                .unwrap_or_default()
        }

        /// Number of GSIs with a record: live MSI vectors plus INTx pins that were asserted.
        pub fn allocated(&self) -> usize {
            lock(&self.state).gsis.len()
        }

        /// The live MSI vector behind `gsi`, if any.
        pub fn vector(&self, gsi: u32) -> Option<GsiLog> {
            let st = lock(&self.state);
            st.fds.get(&gsi)?;
            Some(st.gsis.get(&gsi).cloned().unwrap_or_default())
        }

        /// The live MSI vectors, by GSI.
        pub fn vectors(&self) -> Vec<(u32, GsiLog)> {
            let st = lock(&self.state);
            st.fds
                .keys()
                .map(|&g| (g, st.gsis.get(&g).cloned().unwrap_or_default()))
                .collect()
        }

        /// The GSI of the live vector whose `EventFd` is `fd`.
        pub fn gsi_of_fd(&self, fd: RawFd) -> Option<u32> {
            lock(&self.state)
                .fds
                .iter()
                .find(|(_, f)| f.as_raw_fd() == fd)
                .map(|(&g, _)| g)
        }

        /// The guest's EOI of IOAPIC pin `gsi`: signals the resample `EventFd` of every live line
        /// on it, as KVM does when it de-asserts a level-triggered line. Returns how many.
        pub fn eoi(&self, gsi: u32) -> usize {
            let st = lock(&self.state);
            let mut n = 0;
            for (id, l) in &st.intx {
                if l.gsi == gsi {
                    if let Some(fd) = st.resample_fds.get(id) {
                        if let Err(e) = fd.write(1) {
                            panic!("writing the resample eventfd of GSI {gsi}: {e}");
                        }
                        n += 1;
                    }
                }
            }
            n
        }

        /// The live INTx lines, in allocation order.
        pub fn intx_lines(&self) -> Vec<IntxLog> {
            lock(&self.state).intx.values().copied().collect()
        }

        /// Number of live MSI vectors and INTx lines (zero once every device let go).
        pub fn live(&self) -> usize {
            let st = lock(&self.state);
            st.fds.len() + st.intx.len()
        }

        /// The deliveries since the last call: `(gsi, message)`, in order.
        pub fn take_deliveries(&self) -> Vec<(u32, MsiMessage)> {
            std::mem::take(&mut lock(&self.state).deliveries)
        }

        /// Signals the live vector whose `EventFd` is `fd`, as passthrough hardware does with an
        /// eventfd VFIO was given (delivered now if the vector is enabled). Returns whether such
        /// a vector exists.
        pub fn fire_fd(&self, fd: RawFd) -> bool {
            let mut st = lock(&self.state);
            let Some((&gsi, efd)) = st.fds.iter().find(|(_, f)| f.as_raw_fd() == fd) else {
                return false;
            };
            if let Err(e) = efd.write(1) {
                panic!("writing the eventfd of GSI {gsi}: {e}");
            }
            st.pump(gsi);
            true
        }

        /// Asserts that the live vector `gsi` is in the state the guest asked for: with
        /// `Some(msg)` (the guest enabled and unmasked it with message `msg`) it is enabled
        /// and routes to exactly `msg`; with `None` (disabled or masked) it is disabled. `what`
        /// names the vector in the panic message.
        pub fn assert_vector(&self, gsi: u32, expect: Option<MsiMessage>, what: &str) {
            let Some(v) = self.vector(gsi) else {
                panic!("{what}: GSI {gsi} is not an allocated vector");
            };
            match expect {
                Some(msg) => {
                    assert!(
                        v.enabled,
                        "{what}: the guest enabled and unmasked it ({msg}) but GSI {gsi} is disabled"
                    );
                    assert_eq!(
                        v.route,
                        Some(msg),
                        "{what}: GSI {gsi} routes elsewhere than the guest programmed"
                    );
                }
                None => assert!(
                    !v.enabled,
                    "{what}: the guest has it disabled or masked but GSI {gsi} delivers (route {:?})",
                    v.route
                ),
            }
        }
    }

    struct FakeVector {
        gsi: u32,
        fd: Arc<EventFd>,
        state: Arc<Mutex<FakeState>>,
    }

    impl FakeVector {
        fn with<T>(&self, f: impl FnOnce(&mut GsiLog, bool) -> T) -> T {
            let mut s = lock(&self.state);
            let strict = s.strict;
            f(s.gsis.entry(self.gsi).or_default(), strict)
        }
    }

    impl MsiVector for FakeVector {
        fn gsi(&self) -> u32 {
            self.gsi
        }
        fn eventfd(&self) -> &EventFd {
            &self.fd
        }
        fn set_route(&mut self, msg: MsiMessage) -> Result<(), InterruptError> {
            self.with(|g, _| {
                if g.route != Some(msg) {
                    g.route = Some(msg);
                    g.route_updates += 1;
                }
            });
            Ok(())
        }
        fn enable(&mut self) -> Result<(), InterruptError> {
            self.with(|g, strict| {
                assert!(
                    !strict || g.route.is_some(),
                    "GSI {} enabled before any route was set",
                    self.gsi
                );
                g.enabled = true;
            });
            lock(&self.state).pump(self.gsi);
            Ok(())
        }
        fn disable(&mut self) -> Result<(), InterruptError> {
            self.with(|g, _| g.enabled = false);
            Ok(())
        }
        fn trigger(&self) -> Result<(), InterruptError> {
            self.fd.write(1).map_err(InterruptError::EventFd)?;
            lock(&self.state).pump(self.gsi);
            Ok(())
        }
        fn take_pending(&self) -> bool {
            !self.with(|g, _| g.enabled) && drain_eventfd(&self.fd)
        }
    }

    impl Drop for FakeVector {
        fn drop(&mut self) {
            let mut s = lock(&self.state);
            s.gsis.remove(&self.gsi);
            s.fds.remove(&self.gsi);
        }
    }

    struct FakeIntx {
        id: u64,
        gsi: u32,
        fd: EventFd,
        resample: EventFd,
        state: Arc<Mutex<FakeState>>,
    }

    impl FakeIntx {
        fn with<T>(&self, f: impl FnOnce(&mut IntxLog) -> T) -> T {
            let mut s = lock(&self.state);
            match s.intx.get_mut(&self.id) {
                Some(l) => f(l),
                None => panic!("INTx line {} used after it was released", self.gsi),
            }
        }
    }

    impl IntxLine for FakeIntx {
        fn gsi(&self) -> u32 {
            self.gsi
        }
        fn eventfd(&self) -> &EventFd {
            &self.fd
        }
        fn resample_eventfd(&self) -> &EventFd {
            &self.resample
        }
        fn enable(&mut self) -> Result<(), InterruptError> {
            self.with(|l| l.enabled = true);
            Ok(())
        }
        fn disable(&mut self) -> Result<(), InterruptError> {
            self.with(|l| l.enabled = false);
            Ok(())
        }
        fn trigger(&self) -> Result<(), InterruptError> {
            if self.with(|l| {
                l.asserts += u64::from(l.enabled);
                l.enabled
            }) {
                let mut s = lock(&self.state);
                s.gsis.entry(self.gsi).or_default().intx_asserts += 1;
            }
            Ok(())
        }
        fn take_resample(&self) -> bool {
            drain_eventfd(&self.resample)
        }
    }

    impl Drop for FakeIntx {
        fn drop(&mut self) {
            let mut s = lock(&self.state);
            s.intx.remove(&self.id);
            s.resample_fds.remove(&self.id);
        }
    }

    impl InterruptManager for FakeInterrupts {
        fn allocate_msi(&self) -> Result<Box<dyn MsiVector>, InterruptError> {
            let mut s = lock(&self.state);
            let msi_count = s.fds.len() as u64;
            if msi_count >= u64::from(s.limit) {
                return Err(InterruptError::NoFreeGsi { limit: s.limit });
            }
            let fd = Arc::new(crate::new_eventfd().map_err(InterruptError::EventFd)?);
            let gsi = s.next;
            s.next += 1;
            s.gsis.insert(gsi, GsiLog::default());
            s.fds.insert(gsi, fd.clone());
            Ok(Box::new(FakeVector {
                gsi,
                fd,
                state: self.state.clone(),
            }))
        }

        fn allocate_intx(&self, gsi: u32) -> Result<Box<dyn IntxLine>, InterruptError> {
            if gsi >= MSI_GSI_BASE {
                return Err(InterruptError::InvalidIntxGsi { gsi });
            }
            let fd = crate::new_eventfd().map_err(InterruptError::EventFd)?;
            let resample = crate::new_eventfd().map_err(InterruptError::EventFd)?;
            let dup = resample.try_clone().map_err(InterruptError::EventFd)?;
            let mut s = lock(&self.state);
            let id = s.next_intx;
            s.next_intx += 1;
            s.resample_fds.insert(id, dup);
            s.intx.insert(
                id,
                IntxLog {
                    gsi,
                    enabled: true,
                    fd: fd.as_raw_fd(),
                    resample_fd: resample.as_raw_fd(),
                    asserts: 0,
                },
            );
            Ok(Box::new(FakeIntx {
                id,
                gsi,
                fd,
                resample,
                state: self.state.clone(),
            }))
        }
    }
}
