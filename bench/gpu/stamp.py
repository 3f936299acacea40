"""Prefixes each line of stdin with the seconds since this filter started (3 decimals), for
timelines of a run's output: `etagrid run … 2>&1 | python3 -u bench/gpu/stamp.py > log`."""
import sys
import time

t0 = time.monotonic()
for line in sys.stdin:
    sys.stdout.write(f"{time.monotonic() - t0:8.3f} {line}")
    sys.stdout.flush()
