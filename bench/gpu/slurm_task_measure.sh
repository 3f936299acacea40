#!/usr/bin/env bash
# A SLURM array task of an `auto` GPU pack (`etagrid worker --job F --lease S --measure-pack`) on a
# real GPU, without SLURM: the memory-bound sweep bench/gpu/mr-memory.toml (36 MiniLM cells on MR
# in batches of 1,024 × 128 tokens, ~7 GB a cell) enqueued, its 36 cells written as one task's job
# file as the front end would (device "cpu" until the task knows its GPU), and the task started
# with the SLURM variables of a granted GPU. It should probe two cells, train the 36 in parts that
# fit, and leave every cell done once. Runs on the GPU machine from the repository root with .gpu/
# unpacked and data/mr carried; writes the task's log, the status and the GPU peak under $OUT.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=$PWD/.gpu/etagrid; st=/tmp/slurm-task-measure
rm -rf "$st"
record_machine
"$B" --state-dir "$st" run bench/gpu/mr-memory.toml --enqueue-only 2>&1 | tee "$OUT/enqueue.log"
python3 - "$st" "$PWD/.gpu/minilm-f16" <<'PY'
import json, sqlite3, sys
st, model = sys.argv[1:]
rows = sqlite3.connect(f"{st}/etagrid.sqlite").execute(
    "select id, config from cells where sweep = 'mr-memory' order by idx").fetchall()
cell = lambda i, c: {"cell_id": i, "config": json.loads(c), "out_dir": f"{st}/cells/mr-memory/{i}"}
cells = [cell(i, c) for i, c in rows]
job = {"protocol": 3, "sweep": "mr-memory", **cells[0], "model_dir": model, "device": "cpu",
       "threads": 4, "save_adapter": False, "cache_dir": f"{st}/cache", "pack": cells[1:]}
json.dump(job, open(f"{st}/task-0.json", "w"))
print(f"task-0.json: {len(cells)} cells")
PY
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/gpu-mem.txt" &
smi=$!
t0=$(date +%s.%N)
SLURM_JOB_GPUS=0 SLURM_ARRAY_JOB_ID=1 SLURM_ARRAY_TASK_ID=0 SLURMD_NODENAME=$(hostname) \
  "$B" --state-dir "$st" worker --job "$st/task-0.json" --lease 120 --max-attempts 3 --measure-pack \
  > "$OUT/task.log" 2>&1
echo "task rc $? wall_s $(python3 -c "print(round($(date +%s.%N) - $t0, 1))")" | tee "$OUT/wall.txt"
kill $smi
grep -v "^{" "$OUT/task.log" | grep -E "measur|MiB|part|fit|done|failed|error" | head -20
echo "GPU peak (MiB): $(sort -n "$OUT/gpu-mem.txt" | tail -1)" | tee -a "$OUT/wall.txt"
"$B" --state-dir "$st" status mr-memory > "$OUT/status.txt" 2>&1; head -5 "$OUT/status.txt"
grep -h "cell(s):" "$OUT/task.log" | tee "$OUT/workers.txt"
