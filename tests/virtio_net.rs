//! virtio-net seen from inside a guest: `virtio_probe test=net` takes the card up, answers
//! ARP and ICMP echo requests and pings the host; the host pings it back through a real tap.
//! Needs root (or CAP_NET_ADMIN) and /dev/net/tun: without them the tests say so and skip.
//! Bad `--net` input needs neither.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{guest, run, run_cmd, vfiovm_bin};

/// Debug-exit status of a guest that ran `exit:0`.
const STATUS_OK: i32 = 1;
const ERROR: i32 = 2;
const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];

/// A network namespace of its own for one test, with a tap holding the host's address, so
/// tests (and anything else on this host using 10.0.2.0/24) never see each other's frames.
/// Deleted, tap and all, on drop.
struct HostTap {
    ns: String,
    name: String,
}

impl HostTap {
    /// `None` (and a line saying why) where this host cannot make one.
    fn new(tag: &str) -> Option<HostTap> {
        let id = std::process::id() % 100_000;
        let ns = format!("vfiovm-test-{tag}{id}");
        match Command::new("ip").args(["netns", "add", &ns]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot create network namespace {ns} (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run ip(8): {e}");
                return None;
            }
        }
        let tap = HostTap {
            ns,
            name: format!("vfn{tag}{id}"),
        };
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(["-n", &tap.ns])
                .args(args)
                .output()
                .unwrap()
        };
        let o = ip(&["tuntap", "add", &tap.name, "mode", "tap", "vnet_hdr"]);
        if !o.status.success() {
            eprintln!(
                "SKIPPED: cannot create tap {} (needs /dev/net/tun): {}",
                tap.name,
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return None;
        }
        for args in [
            &["addr", "add", &format!("{HOST_IP}/24"), "dev", &tap.name][..],
            &["link", "set", &tap.name, "up"],
            &["link", "set", "lo", "up"],
        ] {
            let o = ip(args);
            assert!(o.status.success(), "ip {args:?}: {o:?}");
        }
        Some(tap)
    }

    /// vfiovm with `args`, inside the namespace.
    fn vfiovm(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(vfiovm_bin())
            .args(args);
        c
    }

    /// A raw ICMP socket in the namespace (made on a thread that enters it; a socket stays in
    /// the namespace it was made in).
    fn icmp_socket(&self) -> OwnedFd {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns(2) on a namespace descriptor we hold; it changes only this
            // short-lived thread's network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            // SAFETY: plain socket(2); the descriptor is owned below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            assert!(
                fd >= 0,
                "raw ICMP socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `fd` is a fresh descriptor nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .join()
        .unwrap()
    }
}

impl Drop for HostTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// Sends ICMP echo requests to the guest from a raw socket and counts the replies (no ping(8)
/// needed). Returns the sequence numbers that were answered.
fn ping_guest(sock: &OwnedFd, count: u16, timeout: Duration) -> Vec<u16> {
    let fd = sock.as_raw_fd();
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: SO_RCVTIMEO reads a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: sockaddr_in is plain data; zero is a valid start.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from_ne_bytes(GUEST_IP);
    let id: u16 = 0x4e54;
    let mut answered = Vec::new();
    for seq in 1..=count {
        let mut pkt = vec![8u8, 0, 0, 0];
        pkt.extend(id.to_be_bytes());
        pkt.extend(seq.to_be_bytes());
        pkt.extend(b"vfiovm host ping, 32 bytes long.");
        let sum = csum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
        // SAFETY: `pkt` and `to` are live for the call, with the lengths passed.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(
            n,
            pkt.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
        let start = Instant::now();
        while start.elapsed() < timeout {
            let mut b = [0u8; 1500];
            // SAFETY: the kernel writes at most `b.len()` bytes into `b`.
            let n = unsafe { libc::recv(sock.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
            if n <= 0 {
                continue;
            }
            let b = &b[..n as usize];
            let ihl = usize::from(b[0] & 0xf) * 4;
            let icmp = &b[ihl..];
            if b[12..16] == GUEST_IP
                && icmp.len() >= 8
                && icmp[0] == 0
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                assert_eq!(csum(icmp), 0, "the reply's checksum");
                assert_eq!(&icmp[8..], &pkt[8..], "the reply echoes the payload");
                answered.push(seq);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    answered
}

/// The `Seccomp:` field of the thread named `name` in process `pid`.
fn thread_seccomp(pid: u32, name: &str) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .and_then(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_string()))
        })
}

fn csum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The host pings the guest (three echo requests answered, checked from a raw socket) and the
/// guest pings the host (ARP, then an echo request the host's kernel answers), through
/// `--net tap=`, with seccomp on.
#[test]
fn the_guest_answers_pings_through_a_tap() {
    let Some(tap) = HostTap::new("p") else {
        return;
    };
    let image = guest("virtio_probe");
    let sock = tap.icmp_socket();
    let mut child = tap
        .vfiovm(&[
            "--kernel",
            &image,
            "--memory",
            "128M",
            "--net",
            &format!("tap={}", tap.name),
            "--cmdline",
            "test=net ip=10.0.2.15 peer=10.0.2.1 pings=3 net_ms=20000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vfiovm");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let ready = rx
        .iter()
        .find(|l| l.starts_with("net: ready") || l.contains("error"));
    // The card's I/O thread serves the guest under its seccomp filter (mode 2).
    let io_thread_seccomp = thread_seccomp(child.id(), "virtio-net0");
    let answered = if ready
        .as_deref()
        .is_some_and(|l| l.starts_with("net: ready"))
    {
        ping_guest(&sock, 3, Duration::from_secs(2))
    } else {
        Vec::new()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    let ctx = format!("status {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(answered, vec![1, 2, 3], "host pings answered\n{ctx}");
    assert_eq!(
        io_thread_seccomp.as_deref(),
        Some("2"),
        "virtio-net0's Seccomp:\n{ctx}"
    );
    assert_eq!(status.code(), Some(STATUS_OK), "{ctx}");
    assert!(!stderr.contains("panicked"), "{ctx}");
    let dev = stdout
        .lines()
        .find(|l| l.starts_with("virtio: 00:") && l.contains("type=1"))
        .unwrap_or_else(|| panic!("no virtio-net function\n{ctx}"));
    assert!(
        dev.contains("name=net device=0x1041") && dev.contains("vectors=3"),
        "{dev}"
    );
    // The default MAC: 52:54:00 and three bytes from the tap's name.
    assert!(
        stdout.contains("net: dev=00:") && stdout.contains("mac=52:54:00:"),
        "{ctx}"
    );
    assert!(stdout.contains("status=1 ip=10.0.2.15"), "link up\n{ctx}");
    assert!(stdout.contains("net: arp reply from=10.0.2.1"), "{ctx}");
    assert!(
        stdout.contains("net: ping reply from=10.0.2.1 seq=1 ttl=64"),
        "{ctx}"
    );
    for seq in 1..=3 {
        assert!(
            stdout.contains(&format!(
                "net: echo request from=10.0.2.1 id=0x4e54 seq={seq} bytes=32 answered"
            )),
            "{ctx}"
        );
    }
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("net: summary"))
        .unwrap_or_else(|| panic!("{ctx}"));
    for want in [
        "tx_failed=0",
        "echo_answered=3",
        "ping_reply=yes",
        "num_buffers_not_1=0",
    ] {
        assert!(summary.contains(want), "{want}: {summary}");
    }
    assert!(
        !summary.contains("rx_irqs=0 "),
        "receive completions interrupt: {summary}"
    );
    assert!(
        stdout.contains("net: ok") && stdout.contains("virtio_probe: failures=0"),
        "{ctx}"
    );
}

/// `mac=` reaches the guest's configuration space.
#[test]
fn the_mac_given_is_the_guests() {
    let Some(tap) = HostTap::new("m") else {
        return;
    };
    let image = guest("virtio_probe");
    let limit = Duration::from_secs(60);
    let net = format!("tap={},mac=02:12:34:56:78:9a", tap.name);
    let o = run_cmd(
        &mut tap.vfiovm(&[
            "--kernel",
            &image,
            "--memory",
            "128M",
            "--net",
            &net,
            "--cmdline",
            "test=list",
        ]),
        None,
        limit,
    );
    o.expect_status(STATUS_OK);
    assert!(o.stdout.contains("type=1 name=net"), "{o:#?}");
    assert!(
        o.stdout.contains("status=0xf num_queues=2 queues=2"),
        "{o:#?}"
    );
    let o = run_cmd(
        &mut tap.vfiovm(&[
            "--kernel",
            &image,
            "--memory",
            "128M",
            "--net",
            &net,
            "--cmdline",
            "test=net pings=0 net_ms=3000 accept=event_idx,indirect",
        ]),
        None,
        limit,
    );
    o.expect_status(STATUS_OK);
    assert!(o.stdout.contains("mac=02:12:34:56:78:9a"), "{o:#?}");
}

fn expect_error(o: &common::Outcome, needle: &str) {
    o.expect_status(ERROR).expect_clean_stderr(1);
    assert!(o.stderr.starts_with("vfiovm: error: "), "{o:#?}");
    assert!(
        o.stderr.contains(needle),
        "stderr should mention {needle:?}: {o:#?}"
    );
}

/// `--net fd=N` of a descriptor that is not a tap, of one that is not open, and a bad MAC:
/// one line naming the problem, status 2.
#[test]
fn bad_net_values() {
    let image = guest("exit_now");
    let file = common::TempFile::new("not-a-tap", b"x");
    let f = std::fs::File::open(file.path()).unwrap();
    let raw = f.as_raw_fd();
    let mut cmd = Command::new(vfiovm_bin());
    cmd.args(["--kernel", &image, "--net", "fd=9"]);
    let put_at_9 = move || {
        // SAFETY: dup2(2) takes no memory and is async-signal-safe; in the child it puts the
        // file at descriptor 9.
        if unsafe { libc::dup2(raw, 9) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only calls dup2.
    unsafe {
        cmd.pre_exec(put_at_9);
    }
    let o = run_cmd(&mut cmd, None, Duration::from_secs(30));
    expect_error(
        &o,
        "--net fd=9: fd=9 is not a tap: pass a descriptor of /dev/net/tun",
    );
    let o = run(&["--kernel", &image, "--net", "fd=200"]);
    expect_error(&o, "fd=200 is not an open file descriptor");
    let o = run(&["--kernel", &image, "--net", "tap=t0,mac=01:02:03:04:05:06"]);
    expect_error(
        &o,
        "invalid --net 'tap=t0,mac=01:02:03:04:05:06': '01:02:03:04:05:06' is a multicast address",
    );
    let o = run(&["--kernel", &image, "--net", "tap=t0,mac=52:54"]);
    expect_error(&o, "is not a MAC address");
    let o = run(&["--kernel", &image, "--net", "tap=this-name-is-too-long"]);
    expect_error(&o, "invalid tap name 'this-name-is-too-long'");
}

/// Without CAP_NET_ADMIN a tap cannot be created: the message says what to do instead.
#[test]
fn a_tap_without_the_capability_to_create_it() {
    let image = guest("exit_now");
    let o = run_cmd(
        Command::new("setpriv").args([
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
            vfiovm_bin().to_str().unwrap(),
            "--kernel",
            &image,
            "--net",
            "tap=vfnnocap0",
        ]),
        None,
        Duration::from_secs(30),
    );
    if o.stderr.contains("setpriv") {
        eprintln!(
            "SKIPPED: setpriv cannot drop CAP_NET_ADMIN here: {}",
            o.stderr
        );
        return;
    }
    expect_error(
        &o,
        "tap 'vfnnocap0': permission denied: run with CAP_NET_ADMIN",
    );
    assert!(
        o.stderr.contains("ip tuntap add vfnnocap0 mode tap user"),
        "{o:#?}"
    );
    assert!(
        !std::path::Path::new("/sys/class/net/vfnnocap0").exists(),
        "nothing left behind"
    );
}
