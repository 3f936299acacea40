#!/usr/bin/env bash
# GPU memory beside speed, etagrid against PEFT, in one call on the GPU machine. Each command runs
# alone on the GPU while nvidia-smi samples the GPU's used memory every 0.1 s; the figure is the
# peak minus what was in use before it started (CUDA context + caching allocator + tensors — the
# same yardstick for both). PEFT also reports torch.cuda.max_memory_allocated (tensors only), which
# etagrid cannot read through tch. Needs vs_peft.sh's models in /tmp (it builds them if missing).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=./.gpu/etagrid-bench
SECS=${SECS:-6}
OUTF="$OUT/mem_vs_peft.txt"
used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0; }
measure() {  # measure WHO MODEL CMD...
  local who=$1 model=$2; shift 2
  local base peak cur line
  base=$(used); peak=$base
  "$@" > /tmp/m.out 2>/dev/null &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do cur=$(used); (( cur > peak )) && peak=$cur; sleep 0.1; done
  wait "$pid"
  line=$(tail -n 1 /tmp/m.out)
  python3 - "$who" "$model" "$((peak - base))" "$line" <<'PY' | tee -a "$OUTF"
import json, sys
who, model, mib, line = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
r = json.loads(line)
print(f"{who:8} {model:13} batch {r['batch']:>3}  {r.get('ms_per_step', float('nan')):7.1f} ms/step  "
      f"{r['samples_per_s']:8.1f} samples/s  GPU memory {mib/1024:6.2f} GiB (nvidia-smi)  "
      f"allocated peak {r.get('peak_gib', 'n/a')} GiB")
PY
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
[ -d /tmp/roberta-base ] || MODELS="roberta-base gpt2 llama-1b" SECS=1 OUT=/tmp bash bench/gpu/vs_peft.sh > /dev/null 2>&1
measure peft    roberta-base python3 .gpu/peft_baseline.py --seconds "$SECS" --model roberta-base --batch 32 --seq 128
measure etagrid roberta-base "$B" --seconds "$SECS" --model /tmp/roberta-base --targets query,value --batch 32 --seq 128
measure peft    gpt2         python3 .gpu/peft_baseline.py --seconds "$SECS" --model gpt2 --batch 32 --seq 128
measure etagrid gpt2         "$B" --seconds "$SECS" --model /tmp/gpt2 --targets c_attn,c_proj,c_fc --batch 32 --seq 128
measure peft    llama-1b     python3 .gpu/peft_baseline.py --seconds "$SECS" --model llama-1b --batch 32 --seq 128
measure etagrid llama-1b     "$B" --seconds "$SECS" --model /tmp/llama-1b --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --batch 32 --seq 128
