//! [`CheckingInterrupts`]: an [`InterruptManager`] that records what the device models ask of
//! the hypervisor (every vector's route and whether it is enabled, every delivery) so a target
//! can compare it with what the guest programmed, and that refuses the requests no correct model
//! makes (enabling a vector that has no route).
//!
//! It behaves like the VMM's KVM implementation: a disabled vector's events accumulate in its
//! `EventFd` and are delivered when it is enabled again; a delivery sends the vector's current
//! route. [`CheckingInterrupts::fire_fd`] plays the passthrough hardware signalling an eventfd
//! VFIO was given.

use std::collections::BTreeMap;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use devices::interrupt::{
    drain_eventfd, InterruptError, InterruptManager, IntxLine, MsiMessage, MsiVector,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// First GSI handed out for MSI vectors (GSIs below are IOAPIC pins).
pub const MSI_GSI_BASE: u32 = 24;

/// What the manager knows about one MSI vector.
#[derive(Debug, Clone)]
pub struct VectorLog {
    /// The route the model set last.
    pub route: Option<MsiMessage>,
    /// Whether delivery is enabled (the irqfd is assigned).
    pub enabled: bool,
    /// The raw fd of the vector's `EventFd` (what the model hands to VFIO).
    pub fd: RawFd,
}

/// What the manager knows about one INTx line.
#[derive(Debug, Clone, Copy)]
pub struct IntxLog {
    /// The IOAPIC input.
    pub gsi: u32,
    /// Whether the line is connected.
    pub enabled: bool,
    /// Raw fd of the trigger `EventFd`.
    pub fd: RawFd,
    /// Raw fd of the resample `EventFd`.
    pub resample_fd: RawFd,
    /// Assertions delivered while connected.
    pub asserts: u64,
}

#[derive(Debug, Default)]
struct State {
    vectors: BTreeMap<u32, (VectorLog, Arc<EventFd>)>,
    intx: BTreeMap<u64, IntxLog>,
    next_gsi: u32,
    next_intx: u64,
    limit: usize,
    /// `(gsi, message)` of every delivery since the last [`CheckingInterrupts::take_deliveries`].
    deliveries: Vec<(u32, MsiMessage)>,
}

impl State {
    /// Delivers what accumulated in `gsi`'s eventfd if the vector is enabled (KVM's irqfd).
    fn pump(&mut self, gsi: u32) {
        let Some((log, fd)) = self.vectors.get(&gsi) else {
            return;
        };
        if log.enabled && drain_eventfd(fd) {
            let Some(route) = log.route else {
                panic!("GSI {gsi} delivered an interrupt with no route set");
            };
            self.deliveries.push((gsi, route));
        }
    }
}

/// The checking interrupt manager; clones share state.
#[derive(Debug, Clone, Default)]
pub struct CheckingInterrupts {
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CheckingInterrupts {
    /// A manager that hands out at most `limit` MSI vectors at a time.
    pub fn new(limit: usize) -> Self {
        CheckingInterrupts {
            state: Arc::new(Mutex::new(State {
                next_gsi: MSI_GSI_BASE,
                limit,
                ..Default::default()
            })),
        }
    }

    /// The vector behind `gsi`, if it is allocated.
    pub fn vector(&self, gsi: u32) -> Option<VectorLog> {
        lock(&self.state).vectors.get(&gsi).map(|(l, _)| l.clone())
    }

    /// The allocated vectors, by GSI.
    pub fn vectors(&self) -> Vec<(u32, VectorLog)> {
        lock(&self.state)
            .vectors
            .iter()
            .map(|(&g, (l, _))| (g, l.clone()))
            .collect()
    }

    /// The GSI of the vector whose `EventFd` is `fd`.
    pub fn gsi_of_fd(&self, fd: RawFd) -> Option<u32> {
        lock(&self.state)
            .vectors
            .iter()
            .find(|(_, (l, _))| l.fd == fd)
            .map(|(&g, _)| g)
    }

    /// The INTx lines handed out and still alive.
    pub fn intx_lines(&self) -> Vec<IntxLog> {
        lock(&self.state).intx.values().copied().collect()
    }

    /// Number of live MSI vectors and INTx lines (zero once every device is dropped).
    pub fn live(&self) -> usize {
        let st = lock(&self.state);
        st.vectors.len() + st.intx.len()
    }

    /// Deliveries since the last call: `(gsi, message)`.
    pub fn take_deliveries(&self) -> Vec<(u32, MsiMessage)> {
        std::mem::take(&mut lock(&self.state).deliveries)
    }

    /// The device signals the vector whose `EventFd` is `fd` (what passthrough hardware does
    /// with an eventfd VFIO was given). Returns whether such a vector exists.
    pub fn fire_fd(&self, fd: RawFd) -> bool {
        let mut st = lock(&self.state);
        let Some((&gsi, (_, efd))) = st.vectors.iter().find(|(_, (l, _))| l.fd == fd) else {
            return false;
        };
        if let Err(e) = efd.write(1) {
            panic!("writing the eventfd of GSI {gsi}: {e}");
        }
        st.pump(gsi);
        true
    }

    /// Checks one vector against what the guest programmed: `Some(msg)` if the guest has the
    /// vector enabled and unmasked with message `msg` (the vector must then be enabled with
    /// exactly that route), `None` if the guest has it disabled or masked (the vector must be
    /// disabled). `what` names the vector in the panic message.
    pub fn check_vector(&self, gsi: u32, expect: Option<MsiMessage>, what: &str) {
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

struct CheckedVector {
    gsi: u32,
    fd: Arc<EventFd>,
    state: Arc<Mutex<State>>,
}

impl CheckedVector {
    fn with<T>(&self, f: impl FnOnce(&mut VectorLog) -> T) -> T {
        let mut st = lock(&self.state);
        match st.vectors.get_mut(&self.gsi) {
            Some((log, _)) => f(log),
            None => panic!("GSI {} used after it was released", self.gsi),
        }
    }
}

impl MsiVector for CheckedVector {
    fn gsi(&self) -> u32 {
        self.gsi
    }

    fn eventfd(&self) -> &EventFd {
        &self.fd
    }

    fn set_route(&mut self, msg: MsiMessage) -> Result<(), InterruptError> {
        self.with(|l| l.route = Some(msg));
        Ok(())
    }

    fn enable(&mut self) -> Result<(), InterruptError> {
        self.with(|l| {
            assert!(
                l.route.is_some(),
                "GSI {} enabled before any route was set",
                self.gsi
            );
            l.enabled = true;
        });
        lock(&self.state).pump(self.gsi);
        Ok(())
    }

    fn disable(&mut self) -> Result<(), InterruptError> {
        self.with(|l| l.enabled = false);
        Ok(())
    }

    fn trigger(&self) -> Result<(), InterruptError> {
        self.fd.write(1).map_err(InterruptError::EventFd)?;
        lock(&self.state).pump(self.gsi);
        Ok(())
    }

    fn take_pending(&self) -> bool {
        !self.with(|l| l.enabled) && drain_eventfd(&self.fd)
    }
}

impl Drop for CheckedVector {
    fn drop(&mut self) {
        lock(&self.state).vectors.remove(&self.gsi);
    }
}

struct CheckedIntx {
    id: u64,
    gsi: u32,
    fd: EventFd,
    resample: EventFd,
    state: Arc<Mutex<State>>,
}

impl CheckedIntx {
    fn with<T>(&self, f: impl FnOnce(&mut IntxLog) -> T) -> T {
        let mut st = lock(&self.state);
        match st.intx.get_mut(&self.id) {
            Some(log) => f(log),
            None => panic!("INTx line {} used after it was released", self.gsi),
        }
    }
}

impl IntxLine for CheckedIntx {
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
        self.with(|l| {
            if l.enabled {
                l.asserts += 1;
            }
        });
        Ok(())
    }

    fn take_resample(&self) -> bool {
        drain_eventfd(&self.resample)
    }
}

impl Drop for CheckedIntx {
    fn drop(&mut self) {
        lock(&self.state).intx.remove(&self.id);
    }
}

impl InterruptManager for CheckingInterrupts {
    fn allocate_msi(&self) -> Result<Box<dyn MsiVector>, InterruptError> {
        let mut st = lock(&self.state);
        if st.vectors.len() >= st.limit {
            return Err(InterruptError::NoFreeGsi {
                limit: st.limit as u32,
            });
        }
        let fd = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?);
        let gsi = st.next_gsi;
        st.next_gsi = st.next_gsi.checked_add(1).unwrap_or(MSI_GSI_BASE);
        let log = VectorLog {
            route: None,
            enabled: false,
            fd: fd.as_raw_fd(),
        };
        assert!(
            st.vectors.insert(gsi, (log, fd.clone())).is_none(),
            "GSI {gsi} handed out twice"
        );
        Ok(Box::new(CheckedVector {
            gsi,
            fd,
            state: self.state.clone(),
        }))
    }

    fn allocate_intx(&self, gsi: u32) -> Result<Box<dyn IntxLine>, InterruptError> {
        if gsi >= MSI_GSI_BASE {
            return Err(InterruptError::InvalidIntxGsi { gsi });
        }
        let fd = EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
        let resample = EventFd::new(EFD_NONBLOCK).map_err(InterruptError::EventFd)?;
        let mut st = lock(&self.state);
        let id = st.next_intx;
        st.next_intx += 1;
        st.intx.insert(
            id,
            IntxLog {
                gsi,
                enabled: true,
                fd: fd.as_raw_fd(),
                resample_fd: resample.as_raw_fd(),
                asserts: 0,
            },
        );
        Ok(Box::new(CheckedIntx {
            id,
            gsi,
            fd,
            resample,
            state: self.state.clone(),
        }))
    }
}
