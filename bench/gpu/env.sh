# Sourced by the GPU benchmark scripts, which run on the GPU machine from the repository root
# with .gpu/ unpacked: libtorch from that machine's PyTorch for the etagrid binaries, $OUT
# (default /tmp/out: what the device tool brings back) created, and `record_machine` writing the
# GPU, its driver and the time into $OUT/machine.txt.
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"

record_machine() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/machine.txt"
  date -u +%Y-%m-%dT%H:%MZ | tee -a "$OUT/machine.txt"
}
