"""Loads a base model and an etagrid-exported adapter with transformers + PEFT and prints the
sequence-classification logits of the given token ids as JSON (used by the export round-trip test).

    .venv/bin/python scripts/peft_logits.py BASE_DIR ADAPTER_DIR '[[ids…], …]' PAD_ID
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
base, adapter, ids, pad = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
model = transformers.AutoModelForSequenceClassification.from_pretrained(base, attn_implementation="eager")
model = PeftModel.from_pretrained(model, adapter).eval()
n = max(len(i) for i in ids)
batch = torch.tensor([i + [pad] * (n - len(i)) for i in ids])
mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
with torch.no_grad():
    logits = model(input_ids=batch, attention_mask=mask).logits
print(json.dumps(logits.tolist()))
