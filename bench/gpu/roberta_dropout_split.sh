#!/usr/bin/env bash
# Where the K = 16 RoBERTa step's dropout time goes (issue 9), in one GPU call: the peer's one
# process, then etagrid-bench at K = 1 and 16 on three copies of the same random RoBERTa-base
# (32 × 128, the peer's shapes): its dropout as saved (0.1 on the hidden states and the attention
# probabilities), the attention probabilities' dropout at 0 (attention then takes SDPA's fused
# kernel; hidden states keep per-seed masks), and no dropout at all. Prints one table.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
record_machine
python3 - <<'PY'
import json, torch, transformers as tf
torch.manual_seed(0)
tf.RobertaForSequenceClassification(tf.RobertaConfig(num_labels=3)).save_pretrained("/tmp/rb-drop")
for name, att, hid in (("rb-hidden", 0.0, 0.1), ("rb-none", 0.0, 0.0)):
    torch.manual_seed(0)
    tf.RobertaForSequenceClassification(tf.RobertaConfig(
        num_labels=3, attention_probs_dropout_prob=att, hidden_dropout_prob=hid)).save_pretrained(f"/tmp/{name}")
PY
: > "$OUT/split.jsonl"
python3 .gpu/peft_baseline.py --seconds 10 --model roberta-base --batch 32 --seq 128 | tail -n 1 \
  | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['variant']='peft'; print(json.dumps(r))" >> "$OUT/split.jsonl"
for m in rb-drop rb-hidden rb-none; do
  for k in 1 16; do
    ./.gpu/etagrid-bench --seconds 10 --model /tmp/$m --targets query,value --batch 32 --seq 128 --k $k \
      | python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['variant']='$m'; print(json.dumps(r))" >> "$OUT/split.jsonl"
  done
done
python3 - "$OUT/split.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peft = rows[0]["samples_per_s"]
print(f"{'variant':10} {'K':>3} {'ms/step':>8} {'samples/s':>10} {'x PEFT 1 proc':>13}")
for r in rows:
    print(f"{r['variant']:10} {r.get('k', 1):>3} {r['ms_per_step']:>8.1f} {r['samples_per_s']:>10.1f} {r['samples_per_s'] / peft:>13.2f}")
PY
