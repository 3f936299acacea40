#!/usr/bin/env bash
# Packed cells against the peer, on one GPU, in one device call (issue 9). Runs on the GPU machine
# from the repository root with .gpu/ unpacked (stripped etagrid binaries, fp16 MiniLM, the peer's
# scripts) and data/trec carried. Writes logs and a table under $OUT.
#   bash bench/gpu/grid_vs_peft.sh trec     # the 36-cell TREC-50 sweep: packed, unpacked, PEFT ×8
#   bash bench/gpu/grid_vs_peft.sh roberta  # RoBERTa-base 32×128 step speed: K = 1, 4, 16, 32 vs PEFT
#                                           # (PEFT one process and K = 16 in $ROUNDS pairs, default 5)
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
  # PEFT's one process moves by ±12 % from run to run (bench/RESULTS.md 2026-12-02), so it and
  # etagrid's K = 16 run $ROUNDS times (default 5) in adjacent pairs; the table divides by the
  # median of PEFT's runs and also gives each pair's own ratio. The other rows run once.
  random_roberta /tmp/roberta-base
  : > "$OUT/roberta.jsonl"
  : > "$OUT/peak.txt"
  row() { # who k-or-procs: one 10-second run, its JSON line tagged with the peak memory
    local cmd
    if [ "$1" = peft ]; then
      cmd=(python3 .gpu/peft_baseline.py --seconds 10 --model roberta-base --batch 32 --seq 128 --procs "$2")
    else
      cmd=(./.gpu/etagrid-bench --seconds 10 --model /tmp/roberta-base --targets query,value --batch 32 --seq 128 --k "$2")
    fi
    peak "${cmd[@]}" 2>>"$OUT/peak.txt" > /tmp/row.json
    python3 -c "import json,sys; r=json.loads(open('/tmp/row.json').read().strip().splitlines()[-1]); \
r['peak_mib']=int(open('/tmp/peak').read()); r['who']='$1'; r['n']=$2; print(json.dumps(r))" >> "$OUT/roberta.jsonl"
    tail -1 "$OUT/roberta.jsonl"
  }
  row peft 4
  for k in 1 4 32; do row etagrid $k; done
  for round in $(seq "${ROUNDS:-5}"); do row peft 1; row etagrid 16; done
  python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
rows = [json.loads(l) for l in open(f"{out}/roberta.jsonl") if l.strip()]
peft1 = [r["samples_per_s"] for r in rows if r["who"] == "peft" and r["n"] == 1]
ours16 = [r["samples_per_s"] for r in rows if r["who"] == "etagrid" and r["n"] == 16]
one = statistics.median(peft1)
print(f"PEFT one process, {len(peft1)} runs: {[round(x, 1) for x in peft1]} samples/s, median {one:.1f}")
print("K = 16 / the PEFT run just before it:", [round(b / a, 2) for a, b in zip(peft1, ours16)],
      f"median {statistics.median(b / a for a, b in zip(peft1, ours16)):.2f}")
print(f"{'who':8} {'k/procs':>7} {'runs':>4} {'ms/step':>8} {'samples/s':>10} {'× PEFT 1 (median)':>17} {'peak MiB':>8}")
seen = []
for r in rows:
    key = (r["who"], r["n"])
    if key in seen:
        continue
    seen.append(key)
    same = [x for x in rows if (x["who"], x["n"]) == key]
    sps = statistics.median(x["samples_per_s"] for x in same)
    ms = statistics.median(x.get("ms_per_step", float("nan")) for x in same)
    print(f"{key[0]:8} {key[1]:>7} {len(same):>4} {ms:>8.1f} {sps:>10.1f} {sps / one:>17.2f} "
          f"{max(x['peak_mib'] for x in same):>8}")
PY
fi
