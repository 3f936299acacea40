"""Writes an fp16 copy of a Hugging Face model directory (config.json, tokenizer.json,
model.safetensors) so it fits the GPU machine's 64 MiB transfer limit. etagrid loads fp16 weights
and computes in fp32, so results match the fp32 checkpoint up to fp16 rounding of the weights.

usage: .venv/bin/python bench/gpu/make_half_model.py models/all-MiniLM-L6-v2 .gpu/minilm-f16
"""
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
tensors = load_file(src / "model.safetensors")
half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
save_file(half, dst / "model.safetensors", metadata={"format": "pt"})
for name in ("config.json", "tokenizer.json"):
    shutil.copy(src / name, dst / name)
print(f"wrote {dst} ({sum(v.numel() for v in half.values()):,} values in fp16)")
