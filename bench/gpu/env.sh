# Sourced by the GPU benchmark scripts, which run on the GPU machine from the repository root
# with .gpu/ unpacked: libtorch from that machine's PyTorch for the etagrid binaries, $OUT
# (default /tmp/out: what the device tool brings back) created, and `record_machine` writing the
# GPU, its driver and the time into $OUT/machine.txt; `random_roberta DIR` and `peak CMD…` (below).
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"

record_machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
  date -u +%Y-%m-%dT%H:%MZ | tee -a "$OUT/machine.txt"
}

# RoBERTa-base with random weights at the peer's shapes (its config's defaults, 3 labels, torch
# seed 0), saved as a Hugging Face directory at $1: the model etagrid-bench and the peer both time.
random_roberta() {
  python3 - "$1" <<'PY'
import sys, torch, transformers as tf
torch.manual_seed(0)
tf.RobertaForSequenceClassification(tf.RobertaConfig(num_labels=3)).save_pretrained(sys.argv[1])
PY
}

# Runs "$@" with the GPU's memory polled every 100 ms; the peak above what was in use before it
# goes to /tmp/peak and, as "peak_mib N", to stderr.
peak() {
  local base smi
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > /tmp/mem.txt &
  smi=$!
  "$@"
  kill $smi; wait $smi 2>/dev/null
  echo $(( $(sort -n /tmp/mem.txt | tail -1) - base )) > /tmp/peak
  echo "peak_mib $(cat /tmp/peak)" >&2
}
