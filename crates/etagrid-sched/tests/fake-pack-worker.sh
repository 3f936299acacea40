#!/usr/bin/env bash
# A fast stand-in for a pack worker (`etagrid worker --job FILE` with several cells): it reads the
# job's cell ids, counts each cell's starts in STATE/cells/<sweep>/<cell>/starts, appends the pack's
# size to STATE/packs, and names each cell in its lines. STATE/fake-mode `pack-crash-once`: the
# first start of a pack finishes its first cell, then the worker dies by SIGKILL.
# With `--probe-memory` (a memory probe of an `auto` pack on a GPU) it appends the probe's size
# to STATE/probes and, in mode `probe-fit-3`, prints figures in which 3 cells fit (0.9 of
# 1000 MiB, 100 MiB with the base, 250 MiB per cell); in any other mode the probe fails. Mode
# `probe-fit-3-usr2` probes as `probe-fit-3`, then the first pack sends SIGUSR2 to its parent (a
# SLURM task: "the time limit is near") and waits to be killed.
set -u
job="$2"
dir="$(dirname "$job")"
state="$(cd "$dir/../../.." && pwd)"
mode="$(cat "$state/fake-mode" 2>/dev/null || echo ok)"
if [ "${3:-}" = --probe-memory ]; then
  n=$(grep -c '"cell_id"' "$job")
  echo "$n" >> "$state/probes"
  if [ "$mode" = probe-fit-3 ] || [ "$mode" = probe-fit-3-usr2 ]; then
    echo '{"cells":'"$n"',"before_mib":40,"model_mib":100,"peak_mib":'"$((100 + n * 250))"',"total_mib":1000}'
    exit 0
  fi
  echo "CUDA out of memory (fake)" >&2
  exit 1
fi
ids=$(grep -o '"cell_id": *"[0-9a-f]*"' "$job" | sed 's/.*"\([0-9a-f]*\)"$/\1/')
first=""
n_first=0
count=0
for id in $ids; do
  d="$dir/../$id"
  n=$(( $(cat "$d/starts" 2>/dev/null || echo 0) + 1 ))
  echo "$n" > "$d/starts"
  if [ -z "$first" ]; then first="$id"; n_first=$n; fi
  count=$((count + 1))
done
echo "$count" >> "$state/packs"
if [ "$mode" = probe-fit-3-usr2 ] && [ ! -e "$state/usr2-sent" ]; then
  touch "$state/usr2-sent"
  kill -USR2 "$PPID"
  sleep 60
  exit 1
fi
for id in $ids; do
  echo '{"cell":"'"$id"'","event":"started","device":"fake","total_steps":1,"train_examples":1,"eval_examples":1,"trainable_params":1,"groups":[]}'
done
finish() {
  echo '{"cell":"'"$1"'","event":"finished","result":{"metric":0.5,"eval_loss":0.7,"accuracy":0.5,"train_loss":0.7,"steps":1,"wall_s":0.01,"train_samples_per_s":100.0,"pack_size":'"$count"'}}'
}
if [ "$mode" = pack-crash-once ] && [ "$n_first" -eq 1 ] && [ "$count" -gt 1 ]; then
  finish "$first"
  kill -9 $$
fi
for id in $ids; do finish "$id"; done
