"""Loads a causal LM and an etagrid-exported causal_lm adapter with transformers + PEFT and prints
the next-token logits after each of the given token-id lists as JSON (used by
crates/etagrid-train/tests/causal_lm.rs).

    .venv/bin/python scripts/peft_lm_logits.py BASE_DIR ADAPTER_DIR '[[ids…], …]'
"""
import json
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import PeftModel  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
base, adapter, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
model = transformers.AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager")
model = PeftModel.from_pretrained(model, adapter).eval()
with torch.no_grad():
    out = [model(input_ids=torch.tensor([i])).logits[0, -1].tolist() for i in ids]
print(json.dumps(out))
