#!/usr/bin/env python3
"""Guest RAM benchmarks on this host (docs/benchmarks.md, "Big guests"); run as root.

  python3 scripts/membench.py [--sizes 1,4,16] [--runs 3] [--start-runs 10] [--only populate|start]
                              [--pages 4k,thp,2m,1g]

populate: time to bring in all of guest RAM per GiB, for each size, page kind (4 KiB, THP,
          hugetlbfs 2 MiB and 1 GiB as far as the host can reserve them) and 1 and 2 threads:
          vfiovm (`--memory S,hugepages=…,prefault=on,threads=N`, its own `populated … in T ms`
          line) against the machine's limit, scripts/populate_limit.c on the same mapping both
          ways it can (one MADV_POPULATE_WRITE per thread, and a write per page). Runs are
          interleaved, in a rotating order, so all three see the same machine state; medians of
          --runs.
start:    process start -> first guest instruction (the `first_byte` guest's byte on stdout),
          at each size, default RAM and hugetlbfs 2 MiB, no prefault: start-up must not grow
          with RAM size.

Before measuring, most free memory is touched once: on a host that is itself a VM, memory the
hypervisor has never backed costs many times more on first touch, and would swamp the numbers.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (build, guest_path, log)

ROOT = bench.ROOT
POPULATED = re.compile(r"populated (\d+) MiB of guest RAM .* in ([\d.]+) ms")
PAGES = {"4k": "off", "thp": "thp", "2m": "2M", "1g": "1G"}


def limit_tool():
    out = os.path.join(ROOT, "target", "populate_limit")
    subprocess.run(["gcc", "-O2", "-pthread", "-o", out,
                    os.path.join(ROOT, "scripts", "populate_limit.c")], check=True)
    return out


def meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    return 0


def warm_up(tool):
    """Touches most free memory once, so that no measurement pays the hypervisor's first touch."""
    mib = max(0, (meminfo("MemAvailable") >> 20) - 1536)
    bench.log(f"warming up: touching {mib} MiB once ...")
    subprocess.run([tool, str(mib), "4k", "2", "touch"], check=True, capture_output=True)


def pool_path(kind):
    kb = 2048 if kind == "2m" else 1 << 20
    return f"/sys/kernel/mm/hugepages/hugepages-{kb}kB/nr_hugepages"


def reserve(kind, gib):
    """Sets the pool to hold `gib` GiB of `kind` pages; returns whether it does."""
    path = pool_path(kind)
    n = gib * (512 if kind == "2m" else 1)
    try:
        with open(path, "w") as f:
            f.write(str(n))
        with open(path) as f:
            return int(f.read()) >= n
    except OSError:
        return False


def release():
    for kind in ("2m", "1g"):
        try:
            with open(pool_path(kind), "w") as f:
                f.write("0")
        except OSError:
            pass


def run_vfiovm(vfiovm, guest, gib, kind, threads):
    mem = f"{gib}G,hugepages={PAGES[kind]},prefault=on,threads={threads}"
    out = subprocess.run([vfiovm, "-v", "--kernel", guest, "--memory", mem],
                         capture_output=True, text=True, timeout=900)
    m = POPULATED.search(out.stderr)
    if out.returncode != 1 or not m:
        raise SystemExit(f"vfiovm --memory {mem} exited {out.returncode}:\n{out.stderr}")
    return float(m.group(2))


def run_limit(tool, gib, kind, threads, method):
    out = subprocess.run([tool, str(gib << 10), kind, str(threads), method],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"populate_limit {gib} GiB {kind} {method} failed:\n{out.stderr}")
    return float(out.stdout.strip().split("=")[1])


def bench_populate(vfiovm, tool, sizes, runs, kinds):
    guest = bench.guest_path("exit_now")
    rows = []
    for kind in kinds:
        for gib in sizes:
            if kind in ("2m", "1g") and not reserve(kind, gib):
                print(f"  {kind} {gib} GiB: the host could not reserve the huge pages, skipped")
                release()
                continue
            # Pages new to the pool may be new to the hypervisor too: touch them once first.
            run_limit(tool, gib, kind, 2, "touch")
            for threads in (1, 2):
                samples = {"vfiovm": [], "populate": [], "touch": []}
                run = {
                    "vfiovm": lambda: run_vfiovm(vfiovm, guest, gib, kind, threads),
                    "populate": lambda: run_limit(tool, gib, kind, threads, "populate"),
                    "touch": lambda: run_limit(tool, gib, kind, threads, "touch"),
                }
                order = list(run)
                for i in range(runs):
                    # Who goes first pays for memory the host's hypervisor reclaimed meanwhile
                    # (seen: a cold 16 GiB populate took 6x a warm one): rotate the order.
                    for name in order[i % 3:] + order[:i % 3]:
                        samples[name].append(run[name]())
                med = {k: statistics.median(v) / gib for k, v in samples.items()}
                rows.append((kind, gib, threads, med))
                bench.log(f"  populate {kind} {gib} GiB {threads} thr: " +
                          " ".join(f"{k}={v:.0f}ms/GiB" for k, v in med.items()))
            release()
    print(f"\npopulate: ms per GiB to bring in all of guest RAM, median of {runs} runs each "
          "(interleaved)")
    print(f"{'pages':6} {'GiB':>4} {'thr':>4} {'vfiovm':>9} {'limit:madv':>11} {'limit:touch':>12}"
          f" {'vfiovm/best':>12}")
    for kind, gib, threads, med in rows:
        best = min(med["populate"], med["touch"])
        print(f"{kind:6} {gib:4} {threads:4} {med['vfiovm']:9.1f} {med['populate']:11.1f} "
              f"{med['touch']:12.1f} {med['vfiovm'] / best:12.2f}")


def first_byte(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    b = p.stdout.read(1)
    t1 = time.perf_counter()
    p.wait()
    if b != b"F" or p.returncode != 1:
        raise SystemExit(f"{cmd} gave {b!r}, status {p.returncode}")
    return (t1 - t0) * 1e3


def bench_start(vfiovm, sizes, runs):
    guest = bench.guest_path("first_byte")
    print(f"\nstart: process start -> first guest instruction (first_byte guest), median of {runs}")
    print(f"{'memory':>22} {'median ms':>10} {'min ms':>8}")
    for gib in sizes:
        for opts in ("", ",hugepages=2M"):
            if opts and not reserve("2m", gib):
                print(f"{gib}G{opts:>16}: no huge pages, skipped")
                continue
            cmd = [vfiovm, "--kernel", guest, "--memory", f"{gib}G{opts}"]
            first_byte(cmd)
            ts = [first_byte(cmd) for _ in range(runs)]
            print(f"{f'{gib}G{opts}':>22} {statistics.median(ts):10.2f} {min(ts):8.2f}")
            release()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,4,16", help="guest sizes in GiB, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--start-runs", type=int, default=10)
    ap.add_argument("--only", choices=["populate", "start"], default=None)
    ap.add_argument("--pages", default="4k,thp,2m,1g", help="page kinds for populate")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if os.geteuid() != 0:
        raise SystemExit("membench reserves huge pages: run it as root")
    vfiovm = bench.build()
    tool = limit_tool()
    print(f"host: {os.cpu_count()} CPUs, {meminfo('MemTotal') >> 30} GiB, "
          f"THP {open('/sys/kernel/mm/transparent_hugepage/enabled').read().strip()}")
    try:
        warm_up(tool)
        if a.only in (None, "populate"):
            bench_populate(vfiovm, tool, sizes, a.runs, a.pages.split(","))
        if a.only in (None, "start"):
            bench_start(vfiovm, sizes, a.start_runs)
    finally:
        release()


if __name__ == "__main__":
    main()
