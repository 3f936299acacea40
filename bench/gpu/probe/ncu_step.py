"""Where a training step's GPU time goes, from an Nsight Compute CSV of `gpu__time_duration.sum`.

    ncu --csv --log-file step.csv --metrics gpu__time_duration.sum \
        --launch-skip 12000 --launch-count 10000 ./.gpu/etagrid-bench --seconds 1 ... --k 16
    python3 bench/gpu/probe/ncu_step.py step.csv

Groups the kernels into GEMMs, attention and the rest (elementwise, copies, reductions), and lists
the kernels with the most time. Figures are per step: the window's totals divided by the number of
steps in it, taken as the fewest launches of any kernel seen at least three times (the loss and
the optimizer's kernels run once a step). ncu serialises kernels and locks clocks, so its times
are higher than an unprofiled run's.
"""

import collections
import csv
import sys


def kind(name):
    n = name.lower()
    if any(s in n for s in ("gemm", "cutlass", "xmma", "nvjet", "cublas")):
        return "GEMM"
    if any(s in n for s in ("cudnn", "fmha", "flash", "attention", "sdpa")):
        return "attention"
    return "elementwise and other"


def main(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    rows = [r for r in csv.DictReader(lines) if r.get("Metric Name") == "gpu__time_duration.sum"]
    scale = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}
    per_name = collections.defaultdict(lambda: [0, 0.0])
    for r in rows:
        ms = float(r["Metric Value"].replace(",", "")) * scale[r["Metric Unit"]]
        k = per_name[r["Kernel Name"]]
        k[0] += 1
        k[1] += ms
    steps = min(c for c, _ in per_name.values() if c >= 3)
    total = sum(ms for _, ms in per_name.values())
    print(f"{len(rows)} kernels, {total:.1f} ms; {steps} steps in the window -> "
          f"{len(rows) / steps:.0f} kernels and {total / steps:.1f} ms a step")
    groups = collections.defaultdict(lambda: [0, 0.0])
    for name, (c, ms) in per_name.items():
        g = groups[kind(name)]
        g[0] += c
        g[1] += ms
    for g, (c, ms) in sorted(groups.items(), key=lambda x: -x[1][1]):
        print(f"  {g:22} {c / steps:7.0f} kernels {ms / steps:7.2f} ms a step")
    print("top kernels (a step):")
    for name, (c, ms) in sorted(per_name.items(), key=lambda x: -x[1][1])[:30]:
        print(f"  {ms / steps:6.2f} ms {c / steps:6.1f} x  {name[:150]}")


if __name__ == "__main__":
    main(sys.argv[1])
