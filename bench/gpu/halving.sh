#!/usr/bin/env bash
# Successive halving against the full grid (issue 11), on one GPU in one device call. Runs on the
# GPU machine from the repository root with .gpu/ unpacked (stripped etagrid binaries, fp16
# MiniLM) and data/trec, data/mr carried. For each sweep of $SWEEPS (TASK-STEPS: TREC-50 and MR,
# two budgets each; 36 cells) it runs the same cells three ways, each in its own store:
#   plain    the full grid as a user runs it (eval at the end only): GPU-seconds and best cell;
#   dense    the full grid evaluated every budget/$DENSE_DIV steps (default 27: the default
#            rungs 1/9, 1/3 and those at 1/27, 2/27, 7/27; 16: rungs at 1/16, 1/4), for
#            `etagrid replay-halving` (offline replays of any policy, here or later);
#   halving  [search] strategy = "halving" with the defaults (or HALVING_EXTRA), live;
#   halving3 the same with reduction = 3 (the default until 2026-12-01: rungs 1/9, 1/3).
# Writes the table, the walls and results.tar.xz (logs with each line stamped with the seconds
# since the run started, stores, statuses, replays, each worker's log with its time split) under
# $OUT (few files: the device tool returns a handful).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=$PWD/.gpu/etagrid
T=bench/gpu/halving
R=/tmp/halving-results; rm -rf "$R"; mkdir -p "$R"
record_machine
SWEEPS=${SWEEPS:-"trec50-540 trec50-2160 mr-540 mr-2160"}
# NODROP=1: the same sweeps on a copy of MiniLM with its dropout off (names end in -nodrop), to
# separate the policy from the dropout draws that re-packing changes.
MODEL=minilm-f16; TAG=""
if [ "${NODROP:-0}" = 1 ]; then
  MODEL=minilm-f16-nodrop; TAG=-nodrop
  mkdir -p .gpu/$MODEL && cp .gpu/minilm-f16/{model.safetensors,tokenizer.json} .gpu/$MODEL/
  python3 -c "import json; c=json.load(open('.gpu/minilm-f16/config.json')); c['hidden_dropout_prob']=0.0; c['attention_probs_dropout_prob']=0.0; json.dump(c, open('.gpu/$MODEL/config.json','w'))"
fi
MODES=${MODES:-"plain dense halving"}
# Mode halving4: a more aggressive policy, reduction 4 with rungs at 2/27 and 7/27 of the budget
# (steps the dense grid evaluates at), replayed with the same settings.
R4="0.07407407407407407,0.25925925925925924,1.0"
H4=$(printf 'reduction = 4\nrungs = [%s]' "$R4")
for base in $SWEEPS; do
  s=$base$TAG
  task=${base%-*}; steps=${base#*-}
  case $task in
    trec50) data=trec; label='label_column = "fine"'; len=32; batch=32 ;;
    mr) data=mr; label=''; len=64; batch=32 ;;
    # Compute-bound: 36 cells × 256 sentences × 64 tokens a step, where a step's time grows
    # with the cells in it (the batch-32 sweeps above are launch-bound on an H200).
    mr256) data=mr; label=''; len=64; batch=256 ;;
    trec50b128) data=trec; label='label_column = "fine"'; len=32; batch=128 ;;
    trec50b256) data=trec; label='label_column = "fine"'; len=32; batch=256 ;;
  esac
  for mode in $MODES; do
    eval_every=0; search=''
    # Every rung step of 1/27, 1/9, 1/3 of the budget is a multiple of budget/27; of 1/16 and
    # 1/4 one of budget/16.
    [ $mode = dense ] && eval_every=$((steps / ${DENSE_DIV:-27}))
    [ $mode = halving ] && search=$(printf '[search]\nstrategy = "halving"\n%b' "${HALVING_EXTRA:-}")
    [ $mode = halving3 ] && search=$(printf '[search]\nstrategy = "halving"\nreduction = 3')
    [ $mode = halving4 ] && search=$(printf '[search]\nstrategy = "halving"\n%s' "$H4")
    f=$T/$s-$mode.toml
    sed -e "s/@NAME@/$s-$mode/" -e "s/minilm-f16/$MODEL/" -e "s/@TASK@/$data/g" -e "s/@LABEL@/$label/" -e "s/@STEPS@/$steps/" \
        -e "s/@LEN@/$len/" -e "s/@BATCH@/$batch/" -e "s/@WARMUP@/$((steps / 10))/" -e "s/@EVAL@/$eval_every/" $T/sweep.toml.in \
      | python3 -c "import sys; t=sys.stdin.read(); print(t.replace('@SEARCH@', sys.argv[1]))" "$search" > "$f"
    st=/tmp/halving-$s-$mode
    t0=$(date +%s.%N)
    # Each line of the run's output stamped with the seconds since it started (its timeline).
    "$B" --state-dir "$st" run "$f" --no-report 2>&1 | python3 -u bench/gpu/stamp.py > "$OUT/$s-$mode.log"
    rc=${PIPESTATUS[0]}
    echo "$s $mode rc $rc wall_s $(python3 -c "print(round($(date +%s.%N) - $t0, 2))")" | tee -a "$OUT/walls.txt"
    cp "$st/etagrid.sqlite" "$R/$s-$mode.sqlite"
    mv "$OUT/$s-$mode.log" "$R/"
    "$B" --state-dir "$st" status "$s-$mode" > "$R/$s-$mode.status" 2>&1
    for l in "$st"/cells/*/*/worker.log; do echo "== $l"; grep "cell(s):" "$l"; done > "$R/$s-$mode.workers" 2>/dev/null
    for l in "$st"/cells/*/*/worker.log "$st"/cells/*/*/probe.log; do [ -f "$l" ] && { echo "== $l ($(stat -c %y "$l"))"; cat "$l"; }; done > "$R/$s-$mode.workerlogs" 2>/dev/null
  done
  if [[ " $MODES " == *" dense "* ]]; then
    "$B" --state-dir /tmp/halving-$s-dense replay-halving "$s-dense" --json --one-d-lambda 16 \
      > "$R/$s-replay.json" 2> "$R/$s-replay.err"
    if [ "${DENSE_DIV:-27}" = 27 ]; then
      "$B" --state-dir /tmp/halving-$s-dense replay-halving "$s-dense" --json --one-d-lambda 16 \
        --reduction 4 --rungs "$R4" > "$R/$s-replay-halving4.json" 2>> "$R/$s-replay.err"
      "$B" --state-dir /tmp/halving-$s-dense replay-halving "$s-dense" --json --one-d-lambda 16 \
        --reduction 3 > "$R/$s-replay-halving3.json" 2>> "$R/$s-replay.err"
    fi
  fi
done
cp "$OUT/walls.txt" "$R/"
python3 bench/halving_table.py "$R" | tee "$OUT/table.md"
tar cJf "$OUT/results.tar.xz" -C "$R" .
