#!/usr/bin/env bash
# The per-cell attention-dropout path in a real `etagrid run` on the GPU (issue 9): the 36-cell
# TREC-50 sweep of grid_vs_peft.sh (MiniLM, 32 tokens, dropout 0.1, packed `auto`) once with
# ETAGRID_ATTENTION=explicit (what `auto` takes below 128 tokens) and once with per-cell (what it
# takes at >= 128), each from an empty store. Prints each run's wall time, cells done and best
# cell. The two paths draw different (equally likely) masks, so the runs are not the same bits.
# Runs on the GPU machine from the repository root with .gpu/ unpacked and data/trec carried.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
record_machine
for path in explicit per-cell; do
  st="/tmp/st-attn-$path"
  rm -rf "$st"
  s=$(date +%s.%N)
  ETAGRID_ATTENTION=$path ./.gpu/etagrid --state-dir "$st" run bench/gpu/trec50-grid.toml \
    --cells-per-worker auto --no-report > "$OUT/sweep-$path.log" 2>&1
  rc=$?
  e=$(date +%s.%N)
  python3 - "$st" "$path" "$rc" "$s" "$e" <<'PY' | tee -a "$OUT/sweeps.txt"
import sqlite3, sys
st, path, rc, s, e = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
db = sqlite3.connect(f"{st}/etagrid.sqlite")
n, pack = db.execute("SELECT COUNT(*), MAX(pack_size) FROM cells WHERE state='done'").fetchone()
best = db.execute("SELECT lr_a, lr_b, metric FROM cells WHERE state='done' ORDER BY metric DESC LIMIT 1").fetchone()
print(f"ETAGRID_ATTENTION={path:9} rc {rc}  wall {e - s:6.1f} s  done {n}  max pack {pack}  "
      f"best η_A {best[0]:.3g}, η_B {best[1]:.3g} → {best[2]:.4f}")
PY
  grep -h "cell(s):" "$st"/cells/*/*/worker.log | head -2 >> "$OUT/sweeps.txt"
done
