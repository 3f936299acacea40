#!/usr/bin/env bash
# Wraps the real worker for crates/etagrid/tests/halving.rs. Each job appends one line to
# $HALVING_DIR/jobs.log: the run's tag ($HALVING_RUN), the fraction it resumes from ("start" for
# a cell's first segment) and its cells. With $HALVING_DIR/hold present, a job that continues
# from a rung writes $HALVING_DIR/held and waits for the test to kill the run (kill -9 on the
# run's process group); otherwise it runs `etagrid-torch worker` ($HALVING_REAL_WORKER).
set -u
job="$2"
resume="$(grep -o '"resume_from": [0-9.e+-]*' "$job" | awk '{print $2}')"
cells="$(grep -o '"cell_id": "[^"]*"' "$job" | cut -d'"' -f4 | tr '\n' ' ')"
echo "$HALVING_RUN ${resume:-start} $cells" >> "$HALVING_DIR/jobs.log"
if [ -n "$resume" ] && [ -e "$HALVING_DIR/hold" ]; then
  : > "$HALVING_DIR/held"
  # Not a timing device: the test waits for `held`, then kills this process with the run.
  exec tail -f /dev/null
fi
exec "$HALVING_REAL_WORKER" worker --job "$job"
