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

/// An in-memory [`InterruptManager`] that records routes and deliveries, for unit tests of device
/// models in this crate.
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::{drain_eventfd, InterruptError, InterruptManager, IntxLine, MsiMessage, MsiVector};

    /// What happened to one GSI.
    #[derive(Debug, Default, Clone)]
    pub struct GsiLog {
        /// The current route.
        pub route: Option<MsiMessage>,
        /// Whether delivery is enabled.
        pub enabled: bool,
        /// Messages delivered to the "guest", in order.
        pub delivered: Vec<MsiMessage>,
        /// INTx assertions delivered.
        pub intx_asserts: u32,
        /// Number of route updates (to check no-op updates are skipped).
        pub route_updates: u32,
    }

    /// Shared record of every GSI.
    #[derive(Debug, Default)]
    pub struct FakeState {
        pub gsis: BTreeMap<u32, GsiLog>,
        next: u32,
        pub limit: u32,
    }

    /// The fake manager; clone the `state` handle to inspect it.
    #[derive(Debug, Clone)]
    pub struct FakeInterrupts {
        pub state: Arc<Mutex<FakeState>>,
    }

    impl FakeInterrupts {
        pub fn new() -> Self {
            Self::with_limit(u32::MAX)
        }

        /// A manager that refuses to hand out more than `limit` MSI vectors.
        pub fn with_limit(limit: u32) -> Self {
            FakeInterrupts {
                state: Arc::new(Mutex::new(FakeState {
                    gsis: BTreeMap::new(),
                    next: 24,
                    limit,
                })),
            }
        }

        pub fn log(&self, gsi: u32) -> GsiLog {
            self.state
                .lock()
                .unwrap()
                .gsis
                .get(&gsi)
                .cloned()
                .unwrap_or_default()
        }

        pub fn allocated(&self) -> usize {
            self.state.lock().unwrap().gsis.len()
        }
    }

    struct FakeVector {
        gsi: u32,
        fd: EventFd,
        state: Arc<Mutex<FakeState>>,
    }

    impl FakeVector {
        fn with<T>(&self, f: impl FnOnce(&mut GsiLog) -> T) -> T {
            let mut s = self.state.lock().unwrap();
            f(s.gsis.entry(self.gsi).or_default())
        }

        /// Delivers what accumulated in the eventfd if enabled (what KVM's irqfd does).
        fn pump(&self) {
            self.with(|g| {
                if g.enabled && drain_eventfd(&self.fd) {
                    let route = g.route.unwrap_or_default();
                    g.delivered.push(route);
                }
            })
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
            self.with(|g| {
                if g.route != Some(msg) {
                    g.route = Some(msg);
                    g.route_updates += 1;
                }
            });
            Ok(())
        }
        fn enable(&mut self) -> Result<(), InterruptError> {
            self.with(|g| g.enabled = true);
            self.pump();
            Ok(())
        }
        fn disable(&mut self) -> Result<(), InterruptError> {
            self.with(|g| g.enabled = false);
            Ok(())
        }
        fn trigger(&self) -> Result<(), InterruptError> {
            self.fd.write(1).map_err(InterruptError::EventFd)?;
            self.pump();
            Ok(())
        }
        fn take_pending(&self) -> bool {
            !self.with(|g| g.enabled) && drain_eventfd(&self.fd)
        }
    }

    impl Drop for FakeVector {
        fn drop(&mut self) {
            self.state.lock().unwrap().gsis.remove(&self.gsi);
        }
    }

    struct FakeIntx {
        gsi: u32,
        fd: EventFd,
        resample: EventFd,
        enabled: bool,
        state: Arc<Mutex<FakeState>>,
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
            self.enabled = true;
            Ok(())
        }
        fn disable(&mut self) -> Result<(), InterruptError> {
            self.enabled = false;
            Ok(())
        }
        fn trigger(&self) -> Result<(), InterruptError> {
            if self.enabled {
                let mut s = self.state.lock().unwrap();
                s.gsis.entry(self.gsi).or_default().intx_asserts += 1;
            }
            Ok(())
        }
        fn take_resample(&self) -> bool {
            drain_eventfd(&self.resample)
        }
    }

    impl InterruptManager for FakeInterrupts {
        fn allocate_msi(&self) -> Result<Box<dyn MsiVector>, InterruptError> {
            let mut s = self.state.lock().unwrap();
            let msi_count = s.gsis.keys().filter(|&&g| g >= 24).count() as u32;
            if msi_count >= s.limit {
                return Err(InterruptError::NoFreeGsi { limit: s.limit });
            }
            let gsi = s.next;
            s.next += 1;
            s.gsis.insert(gsi, GsiLog::default());
            Ok(Box::new(FakeVector {
                gsi,
                fd: EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?,
                state: self.state.clone(),
            }))
        }

        fn allocate_intx(&self, gsi: u32) -> Result<Box<dyn IntxLine>, InterruptError> {
            if gsi >= 24 {
                return Err(InterruptError::InvalidIntxGsi { gsi });
            }
            Ok(Box::new(FakeIntx {
                gsi,
                fd: EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?,
                resample: EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?,
                enabled: true,
                state: self.state.clone(),
            }))
        }
    }
}
