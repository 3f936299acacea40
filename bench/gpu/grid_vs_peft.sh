#!/usr/bin/env bash
# Packed cells against the peer, on one GPU, in one device call (issue 9). Runs on the GPU machine
# from the repository root with .gpu/ unpacked (stripped etagrid binaries, fp16 MiniLM, the peer's
# scripts) and data/trec carried. Writes logs and a table under $OUT.
#   bash bench/gpu/grid_vs_peft.sh trec     # the 36-cell TREC-50 sweep: packed, unpacked, PEFT ×8
#   bash bench/gpu/grid_vs_peft.sh roberta  # RoBERTa-base 32×128 step speed: K = 1, 4, 16, 32 vs PEFT
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=./.gpu/etagrid
record_machine

if [ "${1:-trec}" = trec ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 > "$OUT/gpu-util.csv" &
  SMI=$!
  for mode in ${ETAGRID_MODES:-auto 1}; do
    s=$(date +%s.%N)
    ETAGRID_PROFILE=0 "$B" --state-dir "/tmp/st-$mode" run bench/gpu/trec50-grid.toml --cells-per-worker "$mode" \
      --no-report > "$OUT/etagrid-$mode.log" 2>&1
    e=$(date +%s.%N)
    echo "etagrid cells_per_worker=$mode wall_s $(python3 -c "print(round($e - $s, 2))")" | tee -a "$OUT/walls.txt"
    tail -3 "$OUT/etagrid-$mode.log"
    # Where each worker's time went (start-up, training, evaluation).
    grep -h "cell(s):" /tmp/st-$mode/cells/*/*/worker.log > "$OUT/workers-$mode.txt"
  done
  # The peer: the same 36 cells as PEFT processes, 8 at a time (waves; the LoRA+ authors' way).
  CELLS=$(python3 -c "print(' '.join(f'{2.0**a}:{2.0**r}' for a in range(-16,-5,2) for r in range(0,11,2)))")
  set -- $CELLS
  : > "$OUT/peft.jsonl"
  while [ $# -gt 0 ]; do
    wave=""; for i in 1 2 3 4 5 6 7 8; do [ $# -gt 0 ] && { wave="$wave,$1"; shift; }; done
    python3 .gpu/peft_cell.py train --model .gpu/minilm-f16 --train data/trec/train.csv --eval data/trec/eval.csv \
      --label-column fine --max-len 32 --batch 32 --epochs 4 --warmup 50 --procs 8 --cells "${wave#,}" >> "$OUT/peft.jsonl"
  done
  kill $SMI
  python3 - "$OUT" "${ETAGRID_MODES:-auto 1}" <<'PY'
import json, sqlite3, sys
out = sys.argv[1]
walls = {l.split()[1]: float(l.split()[-1]) for l in open(f"{out}/walls.txt")}
peft = [json.loads(l) for l in open(f"{out}/peft.jsonl") if l.strip()]
waves = [r for r in peft if r["mode"] == "train-procs"]
cells = [r for r in peft if r["mode"] == "train"]
peft_wall = sum(w["wall_s"] for w in waves)
samples = sum(r["steps"] for r in cells) * 32
rows = []
for mode in sys.argv[2].split():
    db = sqlite3.connect(f"/tmp/st-{mode}/etagrid.sqlite")
    r = db.execute("SELECT COUNT(*), SUM(step), MAX(metric), MAX(pack_size) FROM cells WHERE state='done'").fetchone()
    best = db.execute("SELECT lr_a, lr_b, metric FROM cells WHERE state='done' ORDER BY metric DESC LIMIT 1").fetchone()
    rows.append((f"etagrid cells_per_worker={mode}", walls[f"cells_per_worker={mode}"], r[0], r[1] * 32, best, r[3]))
best_peft = max(cells, key=lambda r: r["accuracy"])
rows.append(("PEFT, 8 processes at a time", peft_wall, len(cells), samples,
             (best_peft["lr_a"], best_peft["lr_a"] * best_peft["ratio"], best_peft["accuracy"]), None))
print(f"{'run':34} {'wall s':>7} {'cells':>5} {'cell-samples/s':>14} {'× PEFT':>7}  best η_A, η_B → accuracy  (max pack)")
for name, wall, n, s, best, pack in rows:
    print(f"{name:34} {wall:7.1f} {n:5} {s / wall:14.0f} {peft_wall / wall:7.2f}  "
          f"{best[0]:.3g}, {best[1]:.3g} → {best[2]:.4f}  ({pack})")
PY
else
  random_roberta /tmp/roberta-base
  : > "$OUT/roberta.jsonl"
  for procs in 1 4; do
    peak python3 .gpu/peft_baseline.py --seconds 10 --model roberta-base --batch 32 --seq 128 --procs $procs \
      2>>"$OUT/peak.txt" | tail -n 1 >> "$OUT/roberta.jsonl"
    tail -1 "$OUT/peak.txt"
  done
  for k in 1 4 16 32; do
    peak ./.gpu/etagrid-bench --seconds 10 --model /tmp/roberta-base --targets query,value --batch 32 --seq 128 --k $k \
      2>>"$OUT/peak.txt" >> "$OUT/roberta.jsonl"
    tail -1 "$OUT/peak.txt"
  done
  python3 - "$OUT" "${ETAGRID_MODES:-auto 1}" <<'PY'
import json, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/roberta.jsonl") if l.strip()]
peaks = [int(l.split()[1]) for l in open(f"{out}/peak.txt") if l.startswith("peak_mib")]
one = rows[0]["samples_per_s"]
print(f"{'who':8} {'k/procs':>7} {'ms/step':>8} {'samples/s':>10} {'× PEFT 1 proc':>13} {'peak MiB':>8}")
for r, p in zip(rows, peaks):
    print(f"{r['peer']:8} {r.get('k', r.get('procs', 1)):>7} {r.get('ms_per_step', float('nan')):>8.1f} "
          f"{r['samples_per_s']:>10.1f} {r['samples_per_s'] / one:>13.2f} {p:>8}")
PY
fi
