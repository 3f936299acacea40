#!/usr/bin/env bash
# README command 2: set up what the tests need, then run the whole test suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ETAGRID_ROOT"
# Formatting needs no set-up: fail in seconds rather than after the build.
cargo fmt --all --check || { echo "cargo fmt --check failed: run \`cargo fmt --all\`" >&2; exit 1; }
bash scripts/setup.sh
# Again: on a fresh machine the venv (and so libtorch's directory) exists only now.
source scripts/env.sh
# The fast lane: clippy, rustdoc and function length (scripts/lint.sh).
if [ "${ETAGRID_SKIP_LINT:-0}" != 1 ]; then
  bash scripts/lint.sh
fi
# The store tests also run on PostgreSQL: a throw-away local server (a no-op when it is running).
if [ "${ETAGRID_SKIP_PG:-0}" != 1 ] && [ -z "${ETAGRID_TEST_PG:-}" ]; then
  bash scripts/pg-local.sh up
  ETAGRID_TEST_PG="$(bash scripts/pg-local.sh url)"
  export ETAGRID_TEST_PG
fi
# The SLURM tests (crates/etagrid/tests/slurm.rs) run against a real single-node SLURM cluster
# with fake GPUs (root only: packages, daemons, device nodes); a no-op when it is running.
if [ "$(id -u)" = 0 ]; then
  if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null; then
    printf '\n==> apt-get install slurm-wlm (for the SLURM tests)\n' >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm >/dev/null; }
  fi
  bash scripts/slurm-local.sh up
  export SLURM_CONF="${ETAGRID_SLURM_BASE:-/tmp/etagrid-slurm-local}/etc/slurm.conf"
fi
printf '\n==> cargo test (release profile: shares the build with the binary)\n' >&2
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --locked --workspace "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line with the totals of every test binary (cargo's own last line is the doc-tests').
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
