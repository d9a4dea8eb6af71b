#!/usr/bin/env python3
"""vfiovm benchmarks: numbers, printed, side by side with QEMU on the same guest in one run.

  python3 scripts/bench.py [--runs N] [--only boot|pci|routing] [--pci-runs N] [--pci-reads N]

boot: process start -> exit for the `exit_now` PVH guest (it writes the debug-exit port at once),
      vfiovm vs `qemu-system-x86_64 -enable-kvm -M microvm`, interleaved run by run so both see
      the same machine state; wall time (median, p90) and peak RSS (from wait4's ru_maxrss).
routing: an MSI-X enable of 2048 vectors on a real KVM VM (the test
      kvm::interrupts::tests::msix_enable_of_2048_vectors_commits_routing_once, release build, which
      asserts one KVM_SET_GSI_ROUTING commit): wall time per enable, --runs of it, median.
pci:  cost of one PCI config-space read from inside a guest (`pci_bench`): through 0xCF8/0xCFC
      (address + data, two port exits), the data port alone, and ECAM (one MMIO exit), timed
      with rdtsc; vfiovm vs `qemu-system-x86_64 -enable-kvm -M q35` on the same guest image,
      interleaved, --pci-runs runs of --pci-reads reads each; median ns per read and the ratio.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build():
    log("building vfiovm (release) and the test guests ...")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "vfiovm", "-p", "vfiovm-guests"],
                   cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "release", "vfiovm")


def guest_path(name):
    out = subprocess.run(["cargo", "run", "--release", "-q", "-p", "vfiovm-guests", "--bin",
                          "guest-path", name], cwd=ROOT, check=True, capture_output=True,
                         text=True)
    return out.stdout.strip()


LAUNCHER = None


def launcher():
    """Builds scripts/spawn_measure.c (static): it forks, execs and reports wall time and the
    child's peak RSS. Measuring from Python directly would count the interpreter's own ~13 MiB,
    which a forked child inherits into ru_maxrss."""
    global LAUNCHER
    if LAUNCHER is None:
        out = os.path.join(ROOT, "target", "spawn_measure")
        subprocess.run(["gcc", "-static", "-O2", "-o", out,
                        os.path.join(ROOT, "scripts", "spawn_measure.c")], check=True)
        LAUNCHER = out
    return LAUNCHER


def measure(cmd, expect_status):
    """Runs cmd once; returns (seconds, peak RSS in KiB)."""
    out = subprocess.run([launcher()] + cmd, check=True, capture_output=True, text=True)
    ns, rss, code = (int(x) for x in out.stdout.split())
    if code != expect_status:
        err = subprocess.run(cmd, capture_output=True, text=True).stderr
        raise SystemExit(f"{cmd[0]} exited {code}, expected {expect_status}:\n{err}")
    return ns / 1e9, rss


def pct(xs, q):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


def summary(name, samples):
    ts = [s[0] * 1000 for s in samples]
    rss = [s[1] / 1024 for s in samples]
    return {"name": name, "median_ms": statistics.median(ts), "p90_ms": pct(ts, 0.9),
            "min_ms": min(ts), "rss_mib": max(rss)}


def bench_boot(vfiovm, runs):
    guest = guest_path("exit_now")
    qemu = shutil.which("qemu-system-x86_64")
    cmds = {
        "vfiovm": [vfiovm, "--kernel", guest, "--memory", "256M"],
        "qemu-microvm": [qemu, "-enable-kvm", "-M", "microvm", "-m", "256", "-nodefaults",
                         "-no-user-config", "-display", "none",
                         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", guest]
        if qemu else None,
    }
    cmds = {k: v for k, v in cmds.items() if v}
    # exit_now writes 0 to port 0xf4: status (0 << 1) | 1 = 1, for both.
    for name, cmd in cmds.items():  # warm-up (page cache, first KVM use)
        measure(cmd, 1)
    samples = {k: [] for k in cmds}
    for i in range(runs):
        for name, cmd in cmds.items():
            samples[name].append(measure(cmd, 1))
        if (i + 1) % 10 == 0:
            log(f"  boot: {i + 1}/{runs} runs")
    base = [measure(["/bin/true"], 0)[1] for _ in range(3)]
    rows = [summary(k, v) for k, v in samples.items()]
    print(f"\nboot: process start -> guest exit, exit_now PVH guest, 256 MiB, {runs} runs each")
    print(f"{'':14} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'peak RSS MiB':>13}")
    for r in rows:
        print(f"{r['name']:14} {r['median_ms']:10.2f} {r['p90_ms']:8.2f} {r['min_ms']:8.2f} "
              f"{r['rss_mib']:13.2f}")
    if len(rows) == 2:
        v, q = rows
        print(f"{'ratio':14} {v['median_ms'] / q['median_ms']:10.3f} "
              f"{v['p90_ms'] / q['p90_ms']:8.3f} {'':8} {v['rss_mib'] / q['rss_mib']:13.3f}"
              "   (vfiovm / qemu)")
    print(f"(peak RSS includes the launcher's {max(base) / 1024:.2f} MiB, measured on /bin/true)")
    phases = subprocess.run(cmds["vfiovm"] + ["-v"], capture_output=True, text=True).stderr
    for line in phases.splitlines():
        if "timing:" in line:
            print("vfiovm " + line.split("timing:", 1)[1].strip())


PCI_MECHS = ["cf8", "cf8_data", "ecam"]
BENCH_LINE = re.compile(r"^bench: mech=(\S+) reads=(\d+) cycles_per_read=([\d.]+) "
                        r"ns_per_read=([\d.]+) value=(0x[0-9a-f]+)$")
TSC_LINE = re.compile(r"^tsc: khz=(\d+) source=(\S+)$")


def pci_run(cmd):
    """Runs pci_bench once; returns ({mech: (cycles, ns)}, (tsc_khz, source))."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    # pci_bench ends with exit:0 on the debug-exit port: status (0 << 1) | 1 = 1 on both VMMs.
    if out.returncode != 1:
        raise SystemExit(f"{cmd[0]} exited {out.returncode}, expected 1:\n{out.stdout}\n{out.stderr}")
    mechs, tsc = {}, None
    for line in out.stdout.splitlines():
        m = BENCH_LINE.match(line.strip())
        if m:
            mechs[m.group(1)] = (float(m.group(3)), float(m.group(4)))
        t = TSC_LINE.match(line.strip())
        if t:
            tsc = (int(t.group(1)), t.group(2))
    if sorted(mechs) != sorted(PCI_MECHS) or tsc is None:
        raise SystemExit(f"unexpected pci_bench output from {cmd[0]}:\n{out.stdout}")
    return mechs, tsc


def bench_pci(vfiovm, runs, reads):
    guest = guest_path("pci_bench")
    qemu = shutil.which("qemu-system-x86_64")
    cmds = {
        "vfiovm": [vfiovm, "--kernel", guest, "--memory", "256M", "--cmdline", f"n={reads}"],
        "qemu-q35": [qemu, "-enable-kvm", "-M", "q35", "-m", "256", "-nodefaults",
                     "-no-user-config", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                     "-display", "none", "-serial", "stdio", "-kernel", guest,
                     "-append", f"n={reads}"] if qemu else None,
    }
    cmds = {k: v for k, v in cmds.items() if v}
    samples = {k: {m: [] for m in PCI_MECHS} for k in cmds}
    tsc = {}
    for i in range(runs):
        for name, cmd in cmds.items():
            mechs, tsc[name] = pci_run(cmd)
            for m, v in mechs.items():
                samples[name][m].append(v)
        log(f"  pci: {i + 1}/{runs} runs")
    print(f"\npci: one config read of 00:00.0 from inside the pci_bench guest, {reads} reads per "
          f"mechanism per run, {runs} runs each (median over runs; min in brackets)")
    for name, (khz, source) in tsc.items():
        print(f"  {name}: TSC {khz / 1000:.1f} MHz from {source}")
    names = list(cmds)
    header = f"{'mechanism':10}"
    for name in names:
        header += f" {name + ' ns [min]':>20} {name + ' cycles':>16}"
    if len(names) == 2:
        header += f" {'ratio ns':>9}"
    print(header)
    for m in PCI_MECHS:
        row = f"{m:10}"
        med = {}
        for name in names:
            ns = [s[1] for s in samples[name][m]]
            cyc = [s[0] for s in samples[name][m]]
            med[name] = statistics.median(ns)
            row += f" {med[name]:10.1f} [{min(ns):7.1f}] {statistics.median(cyc):16.1f}"
        if len(names) == 2:
            row += f" {med[names[0]] / med[names[1]]:9.3f}"
        print(row)
    if len(names) == 2:
        print(f"(ratio = {names[0]} / {names[1]}; below 1 means vfiovm is faster)")


ROUTING_LINE = re.compile(r"MSI-X enable of 2048 vectors: (\d+) routing commit\(s\) in ([\d.]+)(ms|µs|s)")


def bench_routing(runs):
    cmd = ["cargo", "test", "-q", "--release", "--locked", "-p", "vfiovm-devices",
           "--features", "kvm", "--lib",
           "msix_enable_of_2048_vectors_commits_routing_once", "--", "--nocapture"]
    ms = []
    for _ in range(runs):
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        m = ROUTING_LINE.search(out.stdout + out.stderr)
        if not m:
            raise SystemExit(f"no timing line from the routing test:\n{out.stderr}")
        scale = {"ms": 1.0, "µs": 1e-3, "s": 1e3}[m.group(3)]
        ms.append(float(m.group(2)) * scale)
    print(f"\nrouting: MSI-X enable of 2048 vectors, {runs} runs, 1 KVM_SET_GSI_ROUTING each")
    print(f"  median {statistics.median(ms):.2f} ms, min {min(ms):.2f} ms, max {max(ms):.2f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--only", choices=["boot", "pci", "routing"], default=None)
    ap.add_argument("--pci-runs", type=int, default=5, help="runs of pci_bench per VMM")
    ap.add_argument("--pci-reads", type=int, default=20000, help="reads per mechanism per run")
    a = ap.parse_args()
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    if a.pci_runs < 1 or not 1 <= a.pci_reads <= 10_000_000:
        ap.error("--pci-runs must be at least 1 and --pci-reads 1..10000000")
    vfiovm = build()
    if a.only in (None, "boot"):
        bench_boot(vfiovm, a.runs)
    if a.only in (None, "pci"):
        bench_pci(vfiovm, a.pci_runs, a.pci_reads)
    if a.only in (None, "routing"):
        bench_routing(min(a.runs, 10))


if __name__ == "__main__":
    main()
