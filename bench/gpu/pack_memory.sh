#!/usr/bin/env bash
# `cells_per_worker = "auto"` against memory (issue 9), on the GPU machine from the repository root
# with .gpu/ unpacked and data/mr carried: the memory-bound sweep bench/gpu/mr-memory.toml run with
# `auto` (a memory probe sizes the packs), then with one pack of all 36 cells forced. Prints each
# run's probe line, packs, cell states, wall time and the GPU's peak memory.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=./.gpu/etagrid
record_machine
for mode in auto 36; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/mem-$mode.txt" &
  smi=$!
  s=$(date +%s.%N)
  "$B" --state-dir "/tmp/mem-$mode" run bench/gpu/mr-memory.toml --cells-per-worker "$mode" --no-report \
    > "$OUT/memory-$mode.log" 2>&1
  e=$(date +%s.%N)
  kill $smi; wait $smi 2>/dev/null
  echo "== cells_per_worker=$mode: wall $(python3 -c "print(round($e - $s, 1))") s, GPU peak $(sort -n "$OUT/mem-$mode.txt" | tail -1) MiB"
  grep -E "measur|memory probe|MiB per cell|cells per worker" "$OUT/memory-$mode.log"
  python3 - "/tmp/mem-$mode/etagrid.sqlite" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print("cells by state:", db.execute("SELECT state, COUNT(*) FROM cells GROUP BY state").fetchall())
print("pack sizes of done cells:", db.execute("SELECT pack_size, COUNT(*) FROM cells WHERE state='done' GROUP BY pack_size").fetchall())
print("attempts:", db.execute("SELECT attempts, COUNT(*) FROM cells GROUP BY attempts").fetchall())
err = db.execute("SELECT error FROM cells WHERE error IS NOT NULL LIMIT 1").fetchone()
print("an error:", (err[0][:300] if err else None))
PY
done
