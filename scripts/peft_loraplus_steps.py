"""The LoRA+ reference for tests/loraplus_peft.rs: loads a base model and an etagrid-exported adapter
with transformers + PEFT (trainable), builds `peft.optimizers.create_loraplus_optimizer` with
`torch.optim.AdamW` (fp32, CPU, eval mode so no dropout), takes N steps on one batch and prints JSON:
the loss before each step, the four parameter groups (lr, weight decay, member names in PEFT's
order: A, embedding, B, B without decay) and every trainable tensor after the steps.

    .venv/bin/python scripts/peft_loraplus_steps.py BASE_DIR ADAPTER_DIR JOB.json

JOB.json: {"input_ids": [[…]], "attention_mask": [[…]], "token_type_ids": [[…]] (optional),
           "labels": […], "lr": 1e-3, "ratio": 16, "weight_decay": 0.01, "lr_embedding": 1e-3,
           "steps": 3}
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
from peft.optimizers import create_loraplus_optimizer  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)
base, adapter, job_path = sys.argv[1], sys.argv[2], sys.argv[3]
with open(job_path) as f:
    job = json.load(f)

model = transformers.AutoModelForSequenceClassification.from_pretrained(
    base, attn_implementation="eager", torch_dtype=torch.float32)
model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
model.eval()  # no dropout; gradients still flow

opt = create_loraplus_optimizer(
    model, torch.optim.AdamW, lr=job["lr"], loraplus_lr_ratio=job["ratio"],
    loraplus_weight_decay=job["weight_decay"], loraplus_lr_embedding=job["lr_embedding"])
names = {id(p): n for n, p in model.named_parameters()}
groups = [{"lr": g["lr"], "weight_decay": g["weight_decay"], "params": [names[id(p)] for p in g["params"]]}
          for g in opt.param_groups]

inputs = {"input_ids": torch.tensor(job["input_ids"]), "attention_mask": torch.tensor(job["attention_mask"])}
if job.get("token_type_ids") is not None:
    inputs["token_type_ids"] = torch.tensor(job["token_type_ids"])
labels = torch.tensor(job["labels"])
losses = []
for _ in range(job["steps"]):
    loss = model(**inputs, labels=labels).loss
    losses.append(loss.item())
    opt.zero_grad()
    loss.backward()
    opt.step()

after = {n: p.detach().tolist() for n, p in model.named_parameters() if p.requires_grad}
print(json.dumps({"groups": groups, "losses": losses, "params_after": after,
                  "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                               "peft": __import__("peft").__version__}}))
