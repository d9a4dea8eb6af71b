#!/usr/bin/env python3
"""vfiovm benchmarks: numbers, printed, side by side with QEMU on the same guest in one run.

  python3 scripts/bench.py [--runs N] [--only boot]

boot: process start -> exit for the `exit_now` PVH guest (it writes the debug-exit port at once),
      vfiovm vs `qemu-system-x86_64 -enable-kvm -M microvm`, interleaved run by run so both see
      the same machine state; wall time (median, p90) and peak RSS (from wait4's ru_maxrss).
"""
import argparse
import os
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
    return os.path.join(ROOT, "target", "release", "vfiovm")


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


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--only", choices=["boot"], default=None)
    a = ap.parse_args()
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    vfiovm = build()
    if a.only in (None, "boot"):
        bench_boot(vfiovm, a.runs)


if __name__ == "__main__":
    main()
