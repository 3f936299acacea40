#!/usr/bin/env bash
# Is the packed TREC-50 grid the same run to run, and did a binary change its numbers? Runs the
# 36-cell sweep (bench/gpu/trec50-grid.toml, one pack) with each binary dir given, alternated,
# twice each, and prints per run the best cell, and a digest of every cell's metric and final
# train loss (equal digests: the same numbers to the last digit). Needs .gpu/ unpacked and
# data/trec carried, as grid_vs_peft.sh.
#   bash bench/gpu/probe/trec_repeat.sh .gpu/old .gpu
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
record_machine
for round in 1 2; do
  for dir in "$@"; do
    st=/tmp/rep-$round-$(basename "$dir")
    rm -rf "$st"
    ETAGRID_PROFILE=0 "$dir/etagrid" --state-dir "$st" run bench/gpu/trec50-grid.toml --no-report > "$OUT/rep-$round-$(basename "$dir").log" 2>&1
    python3 - "$st/etagrid.sqlite" "$dir" "$round" <<'PY'
import hashlib, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT lr_a, lr_b, metric, train_loss FROM cells ORDER BY lr_a, lr_b").fetchall()
best = max(rows, key=lambda r: r[2] or -1)
digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:12]
print(f"{sys.argv[2]:10} round {sys.argv[3]}: best {best[0]:.3g}, {best[1]:.3g} -> {best[2]:.4f}  metrics digest {digest}")
PY
  done
done | tee "$OUT/repeat.txt"
