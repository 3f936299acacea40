# Sourced by the other scripts: where the venv with libtorch is, and how cargo and the binary
# find it. Safe to source from any directory.
ETAGRID_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ETAGRID_ROOT
export VIRTUAL_ENV="$ETAGRID_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# tch's build script takes libtorch from the venv's PyTorch (it must be 2.11.0 for tch 0.24).
export LIBTORCH_USE_PYTORCH=1
if [ -x "$VIRTUAL_ENV/bin/python" ]; then
  TORCH_LIB="$("$VIRTUAL_ENV/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
  export LD_LIBRARY_PATH="${TORCH_LIB}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
