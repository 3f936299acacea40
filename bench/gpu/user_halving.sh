#!/usr/bin/env bash
# The shipped halving example as a user runs it, on the GPU machine (.gpu/ unpacked, data/trec
# carried): sweeps/trec50-halving.toml with its model path pointed at the fp16 MiniLM copy that
# fits the transfer, `etagrid plan`, then `etagrid run` with its report. Then the peer's one
# RoBERTa process three times and etagrid-bench K = 16 twice, interleaved, to see how much the
# peer's speed moves within one call (issue 9's ratios move with it between calls).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
record_machine
sed 's#"../models/all-MiniLM-L6-v2"#"../.gpu/minilm-f16"#' sweeps/trec50-halving.toml > sweeps/trec50-halving-gpu.toml
./.gpu/etagrid plan sweeps/trec50-halving-gpu.toml 2>&1 | head -4 | tee "$OUT/plan.txt"
s=$(date +%s.%N)
./.gpu/etagrid --state-dir /tmp/uh run sweeps/trec50-halving-gpu.toml --reports /tmp/uh-report 2>&1 \
  | python3 -u bench/gpu/stamp.py > "$OUT/run.log"
echo "rc ${PIPESTATUS[0]} wall_s $(python3 -c "print(round($(date +%s.%N) - $s, 2))")" | tee "$OUT/wall.txt"
tail -4 "$OUT/run.log"
./.gpu/etagrid --state-dir /tmp/uh status trec50-halving-gpu > "$OUT/status.txt" 2>&1
cp /tmp/uh-report/*/heatmap*.png "$OUT/" 2>/dev/null; ls /tmp/uh-report/* | head -20 > "$OUT/report-files.txt"
random_roberta /tmp/rb
: > "$OUT/variance.jsonl"
for i in 1 2 3; do
  python3 .gpu/peft_baseline.py --seconds 10 --model roberta-base --batch 32 --seq 128 | tail -n 1 >> "$OUT/variance.jsonl"
  [ $i -lt 3 ] && ./.gpu/etagrid-bench --seconds 10 --model /tmp/rb --targets query,value --batch 32 --seq 128 --k 16 >> "$OUT/variance.jsonl"
done
python3 -c "
import json
for l in open('$OUT/variance.jsonl'):
    r = json.loads(l); print(r['peer'], r.get('k', 1), r['ms_per_step'], r['samples_per_s'])
"
