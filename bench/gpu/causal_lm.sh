#!/usr/bin/env bash
# On the GPU machine: a random-init Llama at SmolLM2-135M's shape (config + tokenizer carried in
# .gpu/smol-cfg), then the dialogue causal_lm sweep bench/gpu/dialog-gpu.toml on it.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python3 - <<'PY'
import shutil, torch, transformers as tf
torch.manual_seed(0)
cfg = tf.AutoConfig.from_pretrained(".gpu/smol-cfg")
tf.LlamaForCausalLM(cfg).save_pretrained("/tmp/smollm2-shape-random")
shutil.copy(".gpu/smol-cfg/tokenizer.json", "/tmp/smollm2-shape-random/")
PY
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv -l 1 > "$OUT/gpu-util-lm.csv" &
SMI=$!
/usr/bin/time -f "wall %e s" ./.gpu/etagrid --state-dir /tmp/lm-state run bench/gpu/dialog-gpu.toml --reports "$OUT/reports" 2>&1 | tee "$OUT/dialog-gpu.log"
kill "$SMI"
./.gpu/etagrid --state-dir /tmp/lm-state status dialog-gpu
