#!/usr/bin/env bash
# RoBERTa-base at the peer's shapes (32 × 128, random weights, dropout 0.1 everywhere as saved),
# issue 9: etagrid-bench with attention-probability dropout on its two paths — `explicit`
# (probabilities written out, masks per seed) and `per-cell` (one fused SDPA call per cell, the
# generator seeded per cell; what `auto` takes on a GPU at ≥ 128 tokens) — at K = 1, 16 and 32,
# against PEFT's one process and 4 processes, all in one GPU call. PEFT's one process runs three
# times (first, middle, last) because its step moves by ±6 % within a call. Prints one table.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
record_machine
random_roberta /tmp/rb-drop
J="$OUT/attention.jsonl"
: > "$J"
tag() { python3 -c "import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); r['variant']='$1'; r['peak_mib']=int(open('/tmp/peak').read()); print(json.dumps(r))" >> "$J"; }
peft() { peak python3 .gpu/peft_baseline.py --seconds "${SECONDS_PER:-10}" --model roberta-base --batch 32 --seq 128 "$@"; }
ours() { ETAGRID_ATTENTION=$1 peak ./.gpu/etagrid-bench --seconds "${SECONDS_PER:-10}" --model /tmp/rb-drop --targets query,value --batch 32 --seq 128 --k "$2"; }
peft | tag peft-1
for k in 1 16 32; do
  ours explicit $k | tag explicit
  ours auto $k | tag auto
done
peft | tag peft-1
peft --procs 4 | tag peft-4
for k in 16; do
  ours auto $k | tag auto
  ours explicit $k | tag explicit
done
peft | tag peft-1
python3 - "$J" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ones = [r["samples_per_s"] for r in rows if r["variant"] == "peft-1"]
print("PEFT one process, samples/s:", ones, "-> median", statistics.median(ones))
ref = statistics.median(ones)
print(f"{'variant':10} {'K':>3} {'ms/step':>8} {'samples/s':>10} {'x PEFT 1 (median)':>18} {'x slowest':>9} {'x fastest':>9} {'peak MiB':>9}")
for r in rows:
    peak = r["peak_mib"]
    print(f"{r['variant']:10} {r.get('k', r.get('procs', 1)):>3} {r.get('ms_per_step', float('nan')):>8.1f} {r['samples_per_s']:>10.1f} "
          f"{r['samples_per_s'] / ref:>18.2f} {r['samples_per_s'] / min(ones):>9.2f} {r['samples_per_s'] / max(ones):>9.2f} {peak!s:>9}")
PY
