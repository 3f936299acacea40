#!/usr/bin/env bash
# Two etagrid-bench binaries side by side in one GPU call, alternating so that drift in the GPU's
# clocks falls on both, with PEFT's one process first and last (its step moves by ±6 % within a
# call). RoBERTa-base at the peer's shapes (32 × 128, random weights, dropout 0.1 everywhere as
# saved), ETAGRID_ATTENTION=auto (the per-cell fused path at 128 tokens on a GPU).
#   bash bench/gpu/ab_bench.sh .gpu/etagrid-bench-old .gpu/etagrid-bench   # K from $KS (default 16)
# Runs on the GPU machine from the repository root with .gpu/ unpacked. Prints one table.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OLD=$1 NEW=$2
record_machine
random_roberta /tmp/rb-ab
J="$OUT/ab.jsonl"
: > "$J"
tag() { python3 -c "import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); r['variant']='$1'; print(json.dumps(r))" >> "$J"; }
peft() { python3 .gpu/peft_baseline.py --seconds "${SECONDS_PER:-10}" --model roberta-base --batch 32 --seq 128; }
bench() { ETAGRID_ATTENTION=${ETAGRID_ATTENTION:-auto} "$1" --seconds "${SECONDS_PER:-10}" --model /tmp/rb-ab \
  --targets query,value --batch 32 --seq 128 --k "$2"; }
peft | tag peft-1
for round in 1 2; do
  for k in ${KS:-16}; do
    bench "$OLD" "$k" | tag old
    bench "$NEW" "$k" | tag new
  done
done
peft | tag peft-1
python3 - "$J" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ones = [r["samples_per_s"] for r in rows if r["variant"] == "peft-1"]
ref = statistics.median(ones)
print("PEFT one process, samples/s:", [round(x, 1) for x in ones], "-> median", round(ref, 1))
print(f"{'binary':7} {'K':>3} {'ms/step':>8} {'samples/s':>10} {'x PEFT 1 (median)':>18}")
for r in rows:
    if r["variant"] != "peft-1":
        print(f"{r['variant']:7} {r['k']:>3} {r['ms_per_step']:>8.1f} {r['samples_per_s']:>10.1f} {r['samples_per_s'] / ref:>18.2f}")
PY
