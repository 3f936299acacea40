#!/usr/bin/env bash
# Packed against unpacked on the issue-9 TREC-50 grid with three seeds (dropout 0.1 makes a cell's
# accuracy a random variable; a pack draws its masks together, so packed and unpacked agree in
# distribution, not bit for bit). Runs on the GPU machine like grid_vs_peft.sh; writes under $OUT.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=./.gpu/etagrid
for mode in auto 1; do
  s=$(date +%s.%N)
  "$B" --state-dir "/tmp/seeds-$mode" run bench/gpu/trec50-seeds.toml --cells-per-worker "$mode" --no-report \
    > "$OUT/seeds-$mode.log" 2>&1
  echo "cells_per_worker=$mode wall_s $(python3 -c "print(round($(date +%s.%N) - $s, 2))")" | tee -a "$OUT/seeds-walls.txt"
done
python3 - <<'PY'
import sqlite3, statistics as st
for mode in ("auto", "1"):
    db = sqlite3.connect(f"/tmp/seeds-{mode}/etagrid.sqlite")
    rows = db.execute("SELECT lr_a, lr_b, seed, metric FROM cells WHERE state='done'").fetchall()
    by = {}
    for a, b, s, m in rows:
        by.setdefault((a, b), {})[s] = m
    mean = {k: st.mean(v.values()) for k, v in by.items() if len(v) == 3}
    best = max(mean, key=mean.get)
    per_seed = [max(m for (a, b, s, m) in rows if s == seed) for seed in (0, 1, 2)]
    print(f"cells_per_worker={mode}: {len(rows)} cells done; best mean over 3 seeds: η_A={best[0]:.3g} "
          f"η_B={best[1]:.3g} → {mean[best]:.4f} (seeds {[round(by[best][s], 4) for s in (0, 1, 2)]}); "
          f"best cell per seed {[round(x, 4) for x in per_seed]}")
PY
