#!/usr/bin/env bash
# Side by side on one GPU, in one call: etagrid's LoRA+ training step (.gpu/etagrid-bench) against
# PEFT's (shared/bench/peft_baseline.py, carried as .gpu/peft_baseline.py) at the peer's shapes:
# roberta-base, gpt2 and llama-1b sequence classification, random weights, synthetic tokens,
# bf16, r = 8, α = 8, LoRA+ ratio 16. PEFT builds each model in memory; etagrid loads the same
# architecture, saved by transformers from the same config. Writes $OUT/vs_peft.jsonl.
set -uo pipefail
export MODELS=${MODELS:-"roberta-base gpt2 llama-1b"}
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
B=./.gpu/etagrid-bench
OUTF="$OUT/vs_peft.jsonl"
SECS=${SECS:-10}
MODELS=${MODELS:-"roberta-base gpt2 llama-1b"}   # a subset, e.g. MODELS=gpt2
want() { [[ " $MODELS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 - <<'PY'
import torch, transformers as tf
torch.manual_seed(0)
import os
models = os.environ.get("MODELS", "roberta-base gpt2 llama-1b").split()
if "roberta-base" in models:
    tf.RobertaForSequenceClassification(tf.RobertaConfig(num_labels=3)).save_pretrained("/tmp/roberta-base")
if "gpt2" in models:
    tf.GPT2ForSequenceClassification(tf.GPT2Config(num_labels=3, pad_token_id=0)).save_pretrained("/tmp/gpt2")
cfg = tf.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=128256, num_labels=3, pad_token_id=0, tie_word_embeddings=True)
if "llama-1b" in models:
    with torch.device("cuda"):
        m = tf.LlamaForSequenceClassification(cfg).to(torch.bfloat16)
    m.save_pretrained("/tmp/llama-1b")
PY
ours() { "$B" --seconds "$SECS" "$@" | tee -a "$OUTF"; }
peer() { python3 .gpu/peft_baseline.py --seconds "$SECS" "$@" 2>/dev/null | tail -n 1 | tee -a "$OUTF"; }
if want roberta-base; then
  peer --model roberta-base --batch 32 --seq 128
  ours --model /tmp/roberta-base --targets query,value --batch 32 --seq 128
  peer --model roberta-base --batch 128 --seq 128
  ours --model /tmp/roberta-base --targets query,value --batch 128 --seq 128
  peer --model roberta-base --batch 32 --seq 128 --procs 4
  ours --model /tmp/roberta-base --targets query,value --batch 32 --seq 128 --k 4
  ours --model /tmp/roberta-base --targets query,value --batch 32 --seq 128 --k 16
fi
if want gpt2; then
  peer --model gpt2 --batch 32 --seq 128
  ours --model /tmp/gpt2 --targets c_attn,c_proj,c_fc --batch 32 --seq 128
  ours --model /tmp/gpt2 --targets c_attn,c_proj,c_fc --batch 32 --seq 128 --k 4
fi
if want llama-1b; then
  peer --model llama-1b --batch 32 --seq 128
  ours --model /tmp/llama-1b --targets q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj --batch 32 --seq 128
fi
python3 - "$OUTF" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'who':8} {'model':14} {'batch':>5} {'k/procs':>7} {'ms/step':>8} {'samples/s':>10} {'peak GiB':>8}")
for r in rows:
    model = r.get("model", r.get("model_type", "?"))
    print(f"{r['peer']:8} {model:14} {r['batch']:>5} {r.get('k', r.get('procs', 1)):>7} "
          f"{r.get('ms_per_step', float('nan')):>8.1f} {r['samples_per_s']:>10.1f} {r.get('peak_gib', float('nan')):>8}")
PY
