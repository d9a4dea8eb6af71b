//! The vCPU lifecycle against real KVM: tiny real-mode guests in a few pages of RAM, run by the
//! same `spawn`/`VcpuHandle` code the VMM uses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::{kvm_userspace_memory_region, Msrs, KVM_MP_STATE_RUNNABLE};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::reset::*;
use super::*;
use crate::exit::ExitState;

/// Where the guests count.
const COUNTER: u64 = 0x3000;
/// Where the reset-vector code leaves its mark.
const MARK: u64 = 0x2000;
/// Where the counting code starts (cs base 0).
const CODE: u64 = 0x1000;
/// A generous bound for anything that should take well under a millisecond.
const PROMPT: Duration = Duration::from_secs(1);

/// `inc dword [0x3000]; jmp short back`: spins in the guest, never exits to userspace.
const SPIN: &[u8] = &[0x66, 0xff, 0x06, 0x00, 0x30, 0xeb, 0xf9];
/// `inc dword [0x3000]; out 0x80, al; jmp short back`: a port I/O exit per iteration, so the
/// vCPU thread goes through its check and into KVM_RUN as often as it can: the window in which
/// a kick used to be lost.
const SPIN_IO: &[u8] = &[0x66, 0xff, 0x06, 0x00, 0x30, 0xe6, 0x80, 0xeb, 0xf7];
/// At the reset vector (0xfffffff0): `mov word [0x2000], 0xbeef; jmp $`.
const AT_RESET_VECTOR: &[u8] = &[0xc7, 0x06, 0x00, 0x20, 0xef, 0xbe, 0xeb, 0xfe];

struct Guest {
    handle: VcpuHandle,
    mem: GuestMemoryMmap<()>,
    stop: Arc<AtomicBool>,
    // Kept for the VM's life; dropped after the vCPU thread is joined.
    _vm: VmFd,
    _kvm: Kvm,
}

impl Guest {
    /// A one-vCPU VM with 64 KiB of RAM at 0 holding `code` at [`CODE`], 64 KiB below 4 GiB
    /// holding [`AT_RESET_VECTOR`], and the vCPU started in real mode at [`CODE`].
    fn start(code: &[u8]) -> Guest {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0xffff_0000), 0x1_0000),
        ])
        .unwrap();
        for (slot, r) in mem.iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: r.start_addr().0,
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
            };
            // SAFETY: `mem` is mapped for `r.len()` bytes at that address and outlives the VM
            // (it is dropped after the vCPU is joined; the VM fd after it).
            unsafe { vm.set_user_memory_region(region) }.unwrap();
        }
        mem.write_slice(code, GuestAddress(CODE)).unwrap();
        mem.write_slice(AT_RESET_VECTOR, GuestAddress(0xffff_fff0))
            .unwrap();
        let fd = vm.create_vcpu(0).unwrap();
        let mut sregs = fd.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        fd.set_sregs(&sregs).unwrap();
        let mut regs = fd.get_regs().unwrap();
        regs.rip = CODE;
        regs.rflags = 2;
        fd.set_regs(&regs).unwrap();
        Guest::spawn(kvm, vm, fd, mem)
    }

    fn spawn(kvm: Kvm, vm: VmFd, fd: VcpuFd, mem: GuestMemoryMmap<()>) -> Guest {
        install_kick_handler().unwrap();
        let buses = IoBuses {
            pio: Arc::new(Bus::new("pio")),
            mmio: Arc::new(Bus::new("mmio")),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let exit = Arc::new(ExitState::new().unwrap());
        let handle = spawn(0, fd, buses, exit, stop.clone(), false).unwrap();
        Guest {
            handle,
            mem,
            stop,
            _vm: vm,
            _kvm: kvm,
        }
    }

    fn counter(&self) -> u32 {
        self.mem
            .load(GuestAddress(COUNTER), std::sync::atomic::Ordering::Relaxed)
            .unwrap()
    }

    /// Waits (up to [`PROMPT`]) for the counter to move past `from`.
    fn progresses_from(&self, from: u32) -> bool {
        let t = Instant::now();
        while t.elapsed() < PROMPT {
            if self.counter() != from {
                return true;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        false
    }

    /// Waits (up to [`PROMPT`]) for the counter to reach `n`.
    fn counts_to(&self, n: u32) -> bool {
        let t = Instant::now();
        while self.counter() < n {
            if t.elapsed() > PROMPT {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        true
    }

    /// Pauses the vCPU, then resumes it into the test hold between its check and `KVM_RUN`;
    /// returns once it is held there.
    fn hold_before_run(&self) {
        self.handle.pause().unwrap();
        self.handle.ctl.hold.store(true, Ordering::Release);
        self.handle.resume().unwrap();
        let t = Instant::now();
        while !self.handle.ctl.held.load(Ordering::Acquire) {
            assert!(t.elapsed() < PROMPT, "the vCPU never reached the hold");
            std::hint::spin_loop();
        }
    }

    /// Stops the vCPU; returns how long from the request to the thread joined. Waits for
    /// `Stopped` before joining, so the one kick `stop` sends must do (`join` would kick again).
    fn stop(self) -> Duration {
        let t = Instant::now();
        self.handle.stop();
        assert!(
            self.handle.ctl.wait_stopped(t + PROMPT),
            "the vCPU did not stop within {PROMPT:?} of one kick"
        );
        let counts = self.handle.join(t + PROMPT);
        let took = t.elapsed();
        assert!(counts.is_some(), "the vCPU did not stop within {PROMPT:?}");
        drop(self.stop);
        took
    }
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

#[test]
fn paused_vcpu_makes_no_progress_and_resumes() {
    let g = Guest::start(SPIN);
    assert!(g.progresses_from(0), "the guest never ran");
    assert_eq!(g.handle.state(), VcpuState::Running);

    let t = Instant::now();
    g.handle.pause().unwrap();
    let pause_took = t.elapsed();
    assert_eq!(g.handle.state(), VcpuState::Paused);
    let c = g.counter();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(g.counter(), c, "the guest ran while paused");
    // Out of KVM_RUN: its registers can be read, and it is inside the loop.
    let rip = g.handle.on_paused(|fd| fd.get_regs().unwrap().rip).unwrap();
    assert!(
        (CODE..CODE + SPIN.len() as u64).contains(&rip),
        "rip {rip:#x}"
    );
    // Pausing again is a no-op.
    g.handle.pause().unwrap();

    g.handle.resume().unwrap();
    assert_eq!(g.handle.state(), VcpuState::Running);
    assert!(g.progresses_from(c), "the guest did not run after resume");
    eprintln!("pause of a spinning vCPU took {pause_took:?}");
    assert!(pause_took < PROMPT, "pause took {pause_took:?}");
    g.stop();
}

#[test]
fn stop_is_prompt_spinning_paused_or_doing_io() {
    let mut spinning = Vec::new();
    let mut io = Vec::new();
    for _ in 0..20 {
        let g = Guest::start(SPIN);
        assert!(g.progresses_from(0));
        spinning.push(g.stop());
        let g = Guest::start(SPIN_IO);
        assert!(g.progresses_from(0));
        io.push(g.stop());
    }
    let g = Guest::start(SPIN);
    g.handle.pause().unwrap();
    let paused = g.stop();
    let (m, max) = median(spinning);
    let (mi, maxi) = median(io);
    eprintln!(
        "stop -> joined: spinning median {m:?} max {max:?}; port I/O loop median {mi:?} max {maxi:?}; paused {paused:?}"
    );
    // Guest::stop asserts each joined within PROMPT; the typical stop is far below it.
    assert!(m < Duration::from_millis(100), "median stop {m:?}");
    assert!(mi < Duration::from_millis(100), "median stop {mi:?}");
}

/// The kick that used to be lost, made to happen every time: the vCPU thread is held after its
/// check and before `KVM_RUN` while the kick arrives, so the signal's handler runs in userspace
/// and the signal is no longer pending when `KVM_RUN` starts. With `immediate_exit` set by the
/// handler, `KVM_RUN` returns at once; without it (an empty handler, as before) the vCPU spins in
/// the guest and the stop and the pause below never complete.
#[test]
fn kick_between_check_and_kvm_run_is_not_lost() {
    let g = Guest::start(SPIN);
    assert!(g.progresses_from(0));
    g.hold_before_run();
    g.handle.stop();
    // Let the handler run on the held thread before it goes on into KVM_RUN.
    std::thread::sleep(Duration::from_millis(5));
    g.handle.ctl.hold.store(false, Ordering::Release);
    // No second `stop()` (it would kick again): the one kick must have done it.
    assert!(
        g.handle.ctl.wait_stopped(Instant::now() + PROMPT),
        "the kick sent before KVM_RUN was lost"
    );
    g.stop();

    let g = Guest::start(SPIN);
    assert!(g.progresses_from(0));
    g.hold_before_run();
    let ctl = g.handle.ctl.clone();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        ctl.hold.store(false, Ordering::Release);
    });
    let t = Instant::now();
    let paused = g.handle.pause();
    let took = t.elapsed();
    release.join().unwrap();
    paused.expect("the kick sent before KVM_RUN was lost");
    // 5 ms of it is the hold.
    assert!(took < PROMPT, "pause took {took:?}");
    let c = g.counter();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(g.counter(), c, "the guest ran while paused");
    g.stop();
}

/// The same race left to chance, many times: stops right after start, and pause/resume cycles
/// on a guest that never exits (every entry into `KVM_RUN` after a resume is a chance to lose the
/// next kick) and on one that exits all the time.
#[test]
fn no_kick_is_lost() {
    // Stop right after start: the kick races the thread's first check and KVM_RUN.
    for i in 0..200 {
        let g = Guest::start(SPIN);
        let took = g.stop();
        assert!(took < PROMPT, "stop {i} right after start took {took:?}");
    }
    // Pause/resume a guest that exits to userspace all the time, so its thread is in the
    // window between check and KVM_RUN as often as a thread can be.
    let g = Guest::start(SPIN_IO);
    let mut worst = Duration::ZERO;
    for i in 0..2000 {
        let t = Instant::now();
        g.handle
            .pause()
            .unwrap_or_else(|e| panic!("pause {i}: {e}"));
        let took = t.elapsed();
        worst = worst.max(took);
        assert!(took < PROMPT, "pause {i} took {took:?}");
        g.handle.resume().unwrap();
    }
    eprintln!("2000 pauses of a port I/O loop: slowest {worst:?}");
    let g2 = Guest::start(SPIN);
    for i in 0..2000 {
        let t = Instant::now();
        g2.handle.pause().unwrap();
        assert!(t.elapsed() < PROMPT, "pause {i} took {:?}", t.elapsed());
        g2.handle.resume().unwrap();
    }
    g2.stop();
    g.stop();
}

#[test]
fn requests_need_the_right_state() {
    let g = Guest::start(SPIN);
    assert!(matches!(
        g.handle.reset(),
        Err(VcpuError::NotPaused {
            state: VcpuState::Running,
            ..
        })
    ));
    assert!(matches!(
        g.handle.on_paused(|_| ()),
        Err(VcpuError::NotPaused { .. })
    ));
    // Resuming a running vCPU is a no-op.
    g.handle.resume().unwrap();
    g.handle.pause().unwrap();
    g.handle.stop();
    assert!(matches!(g.handle.pause(), Err(VcpuError::Stopped(0))));
    assert!(matches!(g.handle.resume(), Err(VcpuError::Stopped(0))));
    assert!(matches!(g.handle.reset(), Err(VcpuError::Stopped(0))));
    assert!(g.handle.join(Instant::now() + PROMPT).is_some());
}

/// `stop_all` (the VMM's teardown) sets the platform stop flag and stops a running and a paused
/// vCPU, each with one kick.
#[test]
fn stop_all_stops_running_and_paused_vcpus() {
    let a = Guest::start(SPIN);
    let b = Guest::start(SPIN_IO);
    // Past the first `out`, so at least one port I/O exit was counted.
    assert!(b.counts_to(2));
    b.handle.pause().unwrap();
    let stop = a.stop.clone();
    let t = Instant::now();
    let counts = stop_all(vec![a.handle, b.handle], &stop, Duration::from_secs(5));
    let took = t.elapsed();
    eprintln!("stop_all of a running and a paused vCPU: {took:?}");
    assert!(took < PROMPT, "stop_all took {took:?}");
    assert!(stop.load(Ordering::Acquire));
    assert!(counts.pio > 0, "the port I/O loop's exits were counted");
}

#[test]
fn reset_writes_the_power_on_state() {
    let g = Guest::start(SPIN);
    assert!(g.progresses_from(0));
    g.handle.pause().unwrap();
    // Dirty what a reset must clean: protected mode bits, registers, MSRs, debug registers.
    g.handle
        .on_paused(|fd| {
            let mut r = fd.get_regs().unwrap();
            r.rax = 0x1111;
            r.rsp = 0x2222;
            r.rflags = 0x202;
            fd.set_regs(&r).unwrap();
            let mut d = fd.get_debug_regs().unwrap();
            d.db[0] = 0x1234;
            fd.set_debug_regs(&d).unwrap();
            let msrs = Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
                index: 0x174,
                data: 0x10,
                ..Default::default()
            }])
            .unwrap();
            assert_eq!(fd.set_msrs(&msrs).unwrap(), 1);
        })
        .unwrap();

    g.handle.reset().unwrap();
    assert_eq!(
        g.handle.state(),
        VcpuState::Paused,
        "reset leaves it paused"
    );
    let (regs, sregs, dregs, xcrs, mp, lapic, msrs) = g
        .handle
        .on_paused(|fd| {
            let mut msrs = Msrs::from_entries(
                &RESET_MSRS[..11]
                    .iter()
                    .map(|&(index, _)| kvm_bindings::kvm_msr_entry {
                        index,
                        ..Default::default()
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            assert_eq!(fd.get_msrs(&mut msrs).unwrap(), 11);
            (
                fd.get_regs().unwrap(),
                fd.get_sregs().unwrap(),
                fd.get_debug_regs().unwrap(),
                fd.get_xcrs().unwrap(),
                fd.get_mp_state().unwrap(),
                fd.get_lapic().unwrap(),
                msrs,
            )
        })
        .unwrap();
    assert_eq!(regs.rip, 0xfff0);
    assert_eq!(regs.rflags, 2);
    assert_eq!((regs.rax, regs.rsp), (0, 0));
    // rdx is the CPU signature; with no CPUID table set, KVM's fallback.
    assert_eq!(regs.rdx, u64::from(DEFAULT_SIGNATURE));
    assert_eq!((sregs.cs.selector, sregs.cs.base), (0xf000, 0xffff_0000));
    assert_eq!(sregs.cs.limit, 0xffff);
    for s in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
        assert_eq!((s.selector, s.base, s.limit, s.present), (0, 0, 0xffff, 1));
    }
    assert_eq!(sregs.cr0, 0x6000_0010);
    assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
    assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0, 0xffff));
    assert_eq!((sregs.idt.base, sregs.idt.limit), (0, 0xffff));
    assert_eq!(sregs.apic_base, 0xfee0_0900, "enabled, BSP");
    assert_eq!(dregs.db, [0; 4]);
    assert_eq!(dregs.dr6, 0xffff_0ff0);
    assert_eq!(dregs.dr7, 0x400);
    assert_eq!((xcrs.xcrs[0].xcr, xcrs.xcrs[0].value), (0, 1));
    assert_eq!(mp.mp_state, KVM_MP_STATE_RUNNABLE);
    let reg = |off: usize| u32::from_le_bytes(std::array::from_fn(|i| lapic.regs[off + i] as u8));
    assert_eq!(reg(0xf0), 0xff, "SVR: software-disabled");
    assert_eq!(reg(0x350) & (1 << 16), 1 << 16, "LINT0 masked");
    assert_eq!(reg(0x320) & (1 << 16), 1 << 16, "timer masked");
    for (e, &(index, data)) in msrs.as_slice().iter().zip(RESET_MSRS.iter()) {
        assert_eq!((e.index, e.data), (index, data), "MSR {index:#x}");
    }

    // Resumed, it runs from the reset vector (0xfffffff0), whose code leaves a mark.
    g.handle.resume().unwrap();
    let t = Instant::now();
    while g.mem.read_obj::<u16>(GuestAddress(MARK)).unwrap() != 0xbeef {
        assert!(t.elapsed() < PROMPT, "the reset vector's code did not run");
        std::thread::sleep(Duration::from_millis(1));
    }
    let c = g.counter();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(g.counter(), c, "the old loop is not running any more");
    g.stop();
}
