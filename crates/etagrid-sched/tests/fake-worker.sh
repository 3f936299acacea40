#!/usr/bin/env bash
# A fast stand-in for `etagrid worker --job FILE` that speaks the protocol without training.
# Its behaviour comes from STATE/fake-mode (STATE = the scheduler's state dir, four levels above
# the job file); STATE/cells/<sweep>/<cell>/starts counts how often each cell was started.
set -u
job="$2"
dir="$(dirname "$job")"
state="$(cd "$dir/../../.." && pwd)"
mode="$(cat "$state/fake-mode" 2>/dev/null || echo ok)"
n=$(( $(cat "$dir/starts" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/starts"
echo '{"event":"started","device":"fake","total_steps":1,"train_examples":1,"eval_examples":1,"trainable_params":1,"groups":[]}'
case "$mode" in
  crash-once) [ "$n" -eq 1 ] && kill -9 $$ ;;
  hang-once) [ "$n" -eq 1 ] && exec sleep 600 ;;
  crash-always) kill -9 $$ ;;
  fail) echo '{"event":"failed","error":"bad data at line 3"}'; exit 1 ;;
esac
echo '{"event":"finished","result":{"metric":0.5,"eval_loss":0.7,"accuracy":0.5,"train_loss":0.7,"steps":1,"wall_s":0.01,"train_samples_per_s":100.0}}'
