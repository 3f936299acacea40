#!/usr/bin/env bash
# CI's fast lane, run first by scripts/test.sh (skip it there with ETAGRID_SKIP_LINT=1): formatting,
# clippy with warnings as errors, rustdoc with warnings as errors, and no function in
# crates/*/src over 150 lines. Needs the set-up (clippy builds torch-sys against the venv's libtorch).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ETAGRID_ROOT"
step() { printf '\n==> %s\n' "$*" >&2; }
step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy (warnings are errors)"
cargo clippy --release --locked --workspace --all-targets -- -D warnings
step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --release --locked --workspace --no-deps
step "functions over 150 lines"
python3 scripts/long-fns.py
