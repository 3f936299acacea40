#!/usr/bin/env bash
# README command 1: set up everything, run sweeps/quickstart.toml on the embedded SQLite store and
# write reports/quickstart/{heatmap.png,index.html}. Run it again: finished cells are not redone.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ETAGRID_ROOT"
bash scripts/setup.sh
# Again: on a fresh machine the venv (and so libtorch's directory) exists only now.
source scripts/env.sh
printf '\n==> etagrid run sweeps/quickstart.toml\n' >&2
exec ./target/release/etagrid run sweeps/quickstart.toml "$@"
