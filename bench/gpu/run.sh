#!/usr/bin/env bash
# Runs on the GPU machine through the device tool, over a copy of the working tree with
# .gpu/ (stripped etagrid + etagrid-torch binaries, fp16 MiniLM) and data/mr carried. Writes results under $OUT.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=./.gpu/etagrid
nvidia-smi -L
ldd "$B" | grep -E "not found|fontconfig|freetype" && echo "WARNING: missing libraries"
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1 > "$OUT/gpu-util.csv" &
SMI=$!
for sweep in "$@"; do
  echo "=== $sweep"
  /usr/bin/time -f "wall %e s" "$B" --state-dir /tmp/etagrid-state run "bench/gpu/$sweep.toml" --reports "$OUT/reports" 2>&1 | tee "$OUT/$sweep.log"
done
kill "$SMI"
"$B" --state-dir /tmp/etagrid-state status | tee "$OUT/status.txt"
python3 - "$OUT" <<'PY'
import csv, sqlite3, sys
db = sqlite3.connect("/tmp/etagrid-state/etagrid.sqlite")
rows = db.execute("SELECT sweep, id, lr_a, lr_b, state, device, metric, eval_loss, wall_s, samples_per_s, started_at, finished_at FROM cells ORDER BY sweep, started_at").fetchall()
with open(sys.argv[1] + "/cells.csv", "w", newline="") as f:
    w = csv.writer(f); w.writerow(["sweep", "id", "lr_a", "lr_b", "state", "device", "metric", "eval_loss", "wall_s", "samples_per_s", "started_at", "finished_at"]); w.writerows(rows)
for sweep in sorted({r[0] for r in rows}):
    rs = [r for r in rows if r[0] == sweep and r[8]]
    print(f"{sweep}: {len(rs)} cells, mean wall {sum(r[8] for r in rs)/len(rs):.1f} s/cell, mean {sum(r[9] for r in rs)/len(rs):.0f} train samples/s/cell, best {max(r[6] for r in rs):.4f}")
PY
