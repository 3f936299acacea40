#!/usr/bin/env bash
# Run-to-run determinism on the GPU: subset.sh's small sweep twice from scratch, each in its own
# store, compared as subset.sh compares (the first run stands in for the full grid).
set -uo pipefail
rm -rf /tmp/inv-*
WHICH=subset bash bench/gpu/probe/subset.sh > /dev/null 2>&1
mv /tmp/inv-subset /tmp/inv-full
WHICH=subset bash bench/gpu/probe/subset.sh 2>&1 | tail -5
