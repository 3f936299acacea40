#!/usr/bin/env bash
# Pack invariance of whole runs on the GPU: the TREC-50 540-step grid of bench/gpu/halving.sh
# (36 cells, one pack) against the same sweep cut to GRID ("lr_a ratio" TOML values) — fewer
# cells, so a smaller pack — from scratch. Prints each common cell's final metric and eval loss in
# both and whether they are the same bits. NODROP=1: MiniLM with its dropout off.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../env.sh"
B=${ETAGRID_BIN:-$PWD/.gpu/etagrid}; T=bench/gpu/halving
MODEL=minilm-f16
if [ "${NODROP:-0}" = 1 ]; then
  MODEL=minilm-f16-nodrop
  mkdir -p .gpu/$MODEL && cp .gpu/minilm-f16/{model.safetensors,tokenizer.json} .gpu/$MODEL/
  python3 -c "import json; c=json.load(open('.gpu/minilm-f16/config.json')); c['hidden_dropout_prob']=0.0; c['attention_probs_dropout_prob']=0.0; json.dump(c, open('.gpu/$MODEL/config.json','w'))"
fi
LRA=${LRA:-"[3.90625e-3, 9.765625e-4]"}; RATIO=${RATIO:-"[1, 4, 16]"}
for which in ${WHICH:-full subset}; do
  sed -e "s/@NAME@/inv-$which/" -e "s/minilm-f16/$MODEL/" -e "s/@TASK@/trec/g" -e 's/@LABEL@/label_column = "fine"/' \
      -e "s/@STEPS@/${STEPS:-540}/" -e "s/@LEN@/32/" -e "s/@BATCH@/32/" -e "s/@WARMUP@/${WARMUP:-54}/" -e "s/@EVAL@/0/" -e "s/^log_every = 10/log_every = 1/" -e "s/@SEARCH@//" $T/sweep.toml.in > $T/inv-$which.toml
  if [ $which = subset ]; then
    python3 - "$T/inv-subset.toml" "$LRA" "$RATIO" <<'PY'
import re, sys
p, lra, ratio = sys.argv[1:]
t = open(p).read()
t = re.sub(r"^lr_a = .*$", f"lr_a = {lra}", t, flags=re.M)
t = re.sub(r"^ratio = .*$", f"ratio = {ratio}", t, flags=re.M)
open(p, "w").write(t)
PY
  fi
  "$B" --state-dir /tmp/inv-$which run $T/inv-$which.toml --no-report > "$OUT/inv-$which.log" 2>&1
  echo "$which rc $?"
done
python3 - <<'PY'
import sqlite3
q = "select printf('%.6e', lr_a), printf('%.6e', lr_b), metric, eval_loss, train_loss from cells where state='done'"
full = {(a, b): r for a, b, *r in sqlite3.connect('/tmp/inv-full/etagrid.sqlite').execute(q)}
sub = {(a, b): r for a, b, *r in sqlite3.connect('/tmp/inv-subset/etagrid.sqlite').execute(q)}
same = 0
for k, r in sorted(sub.items()):
    f = full.get(k)
    eq = f == r
    same += eq
    print(k, "subset", r, "full", f, "SAME" if eq else "DIFFERENT")
print(f"{same} of {len(sub)} cells the same bits")
PY
