#!/usr/bin/env bash
# README command 2: set up what the tests need, then run the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ETAGRID_ROOT"
bash scripts/setup.sh
# Again: on a fresh machine the venv (and so libtorch's directory) exists only now.
source scripts/env.sh
printf '\n==> cargo test (release profile: shares the build with the binary)\n' >&2
cargo test --release --locked --workspace "$@"
