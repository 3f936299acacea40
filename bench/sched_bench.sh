#!/usr/bin/env bash
# Scheduler benchmark (issue 5), with a fake worker (crates/etagrid-sched/tests/fake-worker.sh)
# so that only etagrid's own overhead is measured:
#   1. plan, and plan + enqueue, of a 100,000-cell sweep (goal < 2 s), then `status` on it (goal
#      < 100 ms; median of 5);
#   2. the idle gap per slot between consecutive cells (goal < 1 s): 400 instant cells on 2 slots,
#      gap = wall × slots / cells − the fake worker's own run time.
# Usage: bash bench/sched_bench.sh   (after scripts/setup.sh; prints a table)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
B=$PWD/target/release/etagrid
FAKE=$PWD/crates/etagrid-sched/tests/fake-worker.sh
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.3f}')"; }

mkdir -p "$T/m" && echo '{}' > "$T/m/config.json" && printf 'text,label\na,b\n' > "$T/t.csv" && cp "$T/t.csv" "$T/e.csv"
sweep() { # name, [grid] body
  printf 'name = "%s"\n[model]\npath = "m"\n[task]\ntrain = "t.csv"\neval = "e.csv"\n[train]\nsteps = 1\n[grid]\n%b\n[resources]\ndevices = "cpu"\ncells_per_device = 2\n' "$1" "$2" > "$T/$1.toml"
}
# 1000 η_A × 100 λ = 100,000 cells.
sweep big 'lr_a = { log2 = [-20, -10.005], step = 0.01 }\nratio = { log2 = [0, 9.95], step = 0.1 }'
t0=$(now); "$B" plan "$T/big.toml" > "$T/plan.txt"; t1=$(now)
cells=$(($(wc -l < "$T/plan.txt") - 2))
t2=$(now); "$B" --state-dir "$T/st" run "$T/big.toml" --enqueue-only 2> "$T/enq.txt"; t3=$(now)
status_ms=()
for _ in 1 2 3 4 5; do
  a=$(now); "$B" --state-dir "$T/st" status big > "$T/status.txt"; b=$(now)
  status_ms+=("$(python3 -c "print(round(($b - $a) * 1000))")")
done
status_med=$(printf '%s\n' "${status_ms[@]}" | sort -n | sed -n 3p)
start_ms=()
for _ in 1 2 3 4 5; do
  a=$(now); "$B" --version > /dev/null; b=$(now)
  start_ms+=("$(python3 -c "print(round(($b - $a) * 1000))")")
done
start_med=$(printf '%s\n' "${start_ms[@]}" | sort -n | sed -n 3p)

# 2. Idle gap: 400 instant cells on 2 slots.
sweep gap 'lr_a = { log2 = [-20, -11.025], step = 0.05 }\nratio = [1, 2]'
a=$(now); for _ in $(seq 50); do "$FAKE" --job "$T/nowhere/x/y/job.json" > /dev/null 2>&1 || true; done; b=$(now)
worker_s=$(python3 -c "print(($b - $a) / 50)")
a=$(now); ETAGRID_WORKER="$FAKE" "$B" --state-dir "$T/st2" run "$T/gap.toml" --no-report > /dev/null 2> "$T/gap.txt"; b=$(now)
n_gap=$(grep -c ': done' "$T/gap.txt" || true)
gap=$(python3 -c "print(f'{($b - $a) * 2 / $n_gap - $worker_s:.3f}')")

echo "machine: $(nproc) cores, $(uname -m); $(date -u +%F)"
echo "| measurement | figure | goal |"
echo "|---|---|---|"
echo "| plan of $cells cells (printing every cell) | $(secs "$t0" "$t1") s | — |"
echo "| plan + enqueue of $cells cells into SQLite | $(secs "$t2" "$t3") s | < 2 s |"
echo "| status on the $cells-cell sweep (median of 5: ${status_ms[*]} ms) | ${status_med} ms | < 100 ms |"
echo "| for comparison: a command that loads libtorch (\`etagrid --version\`, exec'd into etagrid-torch; median of 5: ${start_ms[*]} ms) | ${start_med} ms | — |"
echo "| idle gap per slot ($n_gap instant cells on 2 slots; fake worker alone ${worker_s:0:6} s) | ${gap} s | < 1 s |"
