#!/usr/bin/env bash
# The compile gate (scripts/check_kernels.py) with the GPU image's triton.
#
# Registers and spills depend on the Triton version (and its bundled ptxas),
# so the gate compiles with the triton the lent GPU machines run (3.6.x),
# while the rest of the environment may hold a newer one (the interpreter
# tests need triton >= 3.9 with numpy >= 2.4: 3.6's interpreter turns
# one-element arrays into ints, which numpy 2.4 refuses). That triton is
# installed --no-deps into its own folder (default .gate-triton/, gitignored)
# and put first on PYTHONPATH for the gate and its compile workers.
#
#   bash scripts/compile_gate.sh                      # sm_80 and sm_90
#   bash scripts/compile_gate.sh --archs=80,90,100 --out=/tmp/gate.md
#   GATE_TRITON_VERSION=3.9.0 bash scripts/compile_gate.sh   # another triton
set -euo pipefail
cd "$(dirname "$0")/.."

version=${GATE_TRITON_VERSION:-3.6.0}
dir=${GATE_TRITON_DIR:-.gate-triton}/$version
has_version() {
  PYTHONPATH="$dir" python -c "import sys, triton
sys.exit(triton.__version__ != '$version')" 2>/dev/null
}
if ! has_version; then
  rm -rf "$dir"
  python -m pip install -q --no-deps --target "$dir" "triton==$version"
  has_version || { echo "could not install triton $version in $dir" >&2; exit 1; }
fi
PYTHONPATH="$dir:.${PYTHONPATH:+:$PYTHONPATH}" python scripts/check_kernels.py "$@"
