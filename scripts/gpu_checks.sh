#!/usr/bin/env bash
# The GPU checks in one go, sized for a short lease (under 10 minutes on one
# H100, as measured on the two leases of 2026-11-27): the compiled-kernel
# tests, the compile gate against the driver, and the attention (also at 64k
# tokens) and recurrent benchmarks; on request the parallel-recurrence and
# Newton benchmarks at reduced grids and a forward block-size tune. Each step's
# own files go to the output folder; every step's output to gpu_checks.log.
# Keep what comes back under 8 files (the device tool's limit), e.g. by
# tarring the folder.
#
# GPU_STEPS picks the steps (comma-separated; default gpu_tests,
# compile_gate, sharded_attention, attention_bench, recurrent_bench,
# attention_long), so a
# short lease can run part of it or add recurrence_sweep, newton, tune or
# tune_bwd (the backward kernels' block sizes, head_dim 128, non-causal):
#   GPU_STEPS=gpu_tests,compile_gate bash ...
# Issue 28's lease (about 9 minutes; the summary table prints last):
#   GPU_STEPS=triton_call,gpu_tests,compile_gate,kernel_rows bash ...
# triton_call records whether jaxlib's Triton call takes a global scratch
# size (the own call, TMA descriptors); kernel_rows times the forward and
# backward candidates (kernels/candidates.py) against cuDNN and XLA at batch
# 4 x 4096 and 1 x 16384, causal and not, forward and forward+backward.
# attention_long times issue 14's long-context rows: 64k tokens in one
# sequence (dense, causal) and a 4096-key sliding window at 64k against dense
# causal 8k, Triton forward and forward+backward, bfloat16, head_dim 128.
#
# Usage, from the repository root:
#   bash scripts/gpu_checks.sh [OUT_DIR]          # default: $OUT, else ./out
# Missing packages (jax-triton, ml_collections) can be carried as wheels in
# .whl/ (gitignored); they are installed into /tmp/site, never into the system:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 -d .whl jax-triton==0.3.1 ml_collections
# Each step has its own time limit (seconds, overridable through the
# environment) so one slow step cannot starve the rest; a step that fails or
# runs out of time is reported in gpu_checks.log and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:-${OUT:-out}}
mkdir -p "$out"
log="$out/gpu_checks.log"
# Limits from the leases: the tests took 152 s in 6 processes (over 170 s
# serially), the gate 37 s, the attention rows below 63-90 s, the recurrent
# benchmark 44 s, the sweep about 105 s, the tune 26 s, attention_long 33 s.
# kernel_rows (42 timed calls, each compiled first) is an estimate: not yet
# run on a GPU.
: "${TESTS_S:=200}" "${GATE_S:=45}" "${ATTENTION_S:=140}" "${RECURRENT_S:=65}"
: "${SWEEP_S:=120}" "${NEWTON_S:=80}" "${TUNE_S:=60}" "${LONG_S:=90}"
: "${TUNE_BWD_S:=150}" "${SHARDED_S:=60}" "${CALL_S:=30}" "${ROWS_S:=240}"
: "${GPU_STEPS:=gpu_tests,compile_gate,sharded_attention,attention_bench,recurrent_bench,attention_long}"

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# Tests and benchmarks share the GPU one process at a time; no preallocation
# keeps the peak-memory columns about the program, not the allocator.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

step() {  # step NAME SECONDS COMMAND...: run with a limit, log the outcome
  local name=$1 limit=$2 start rc
  shift 2
  [[ ",$GPU_STEPS," == *",$name,"* ]] || return 0
  start=$SECONDS
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log" | tail -n 40
  rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc after $((SECONDS - start))s" | tee -a "$log"
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import sys, jax, jaxlib, flax, optax, triton
print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib",
      jaxlib.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "triton", triton.__version__)
print("devices", jax.devices())
import importlib.metadata as m
try:
  print("jax-triton", m.version("jax-triton"))
except m.PackageNotFoundError:
  print("jax-triton not installed: the triton implementation cannot run")'
  git rev-parse HEAD 2>/dev/null
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

# Whether this jaxlib's Triton call takes a global scratch size (the own
# call's TMA descriptors need it; checked from the wheels: 0.10.2 no, 0.11.2
# and 0.12.0.1 yes).
step triton_call "$CALL_S" python3 -c '
import jaxlib
from jax._src.lib import gpu_triton
from kernels.triton import kernel_call
print("jaxlib", jaxlib.__version__)
print("TritonKernel.__init__:", gpu_triton.TritonKernel.__init__.__doc__)
print("global scratch supported:", kernel_call.supports_global_scratch())'

# The compiled-kernel tests spend their time in Triton's compiler, on the
# CPU: pytest-xdist (in the GPU image) runs them in 6 processes.
xdist=()
python3 -c 'import xdist' 2>/dev/null && xdist=(-n 6)
step gpu_tests "$TESTS_S" python3 -m pytest -m gpu -q -rfE ${xdist[@]+"${xdist[@]}"} \
  --durations=10 -p no:cacheprovider tests/
# The compile gate's ptxas figures against the driver's own n_regs/n_spills.
step compile_gate "$GATE_S" python3 scripts/check_kernels.py --archs=90 \
  --variants=plain,gqa,window_softcap,tma,fused_bwd,fused_bwd_window \
  --dtypes=bfloat16,float32 \
  --head_dims=64,128 \
  --jobs=8 --device --out="$out/compile_gate.md"
# Issue 25: the Triton hot path per shard (a mesh of the visible GPUs, one
# on a single-GPU lease) against the unsharded call: same outputs, and the
# time ratio with its spread.
step sharded_attention "$SHARDED_S" python3 scripts/check_sharded_attention.py \
  --implementation=triton --batch=4 --seq_len=4096 --heads=16 --head_dim=128 \
  --dtype=bfloat16 --output="$out/sharded_attention.json"
# The reference and blockwise rows are slow and run out of memory at 16384;
# they are CPU oracles, not GPU contenders.
step attention_bench "$ATTENTION_S" python3 scripts/bench_attention.py \
  --seq_lens=4096,16384 --head_dims=128 --implementations=triton,cudnn,xla \
  --out_dir="$out"
step recurrent_bench "$RECURRENT_S" python3 scripts/bench_recurrent.py \
  --config.repeats=2 --output_dir="$out"
step recurrence_sweep "$SWEEP_S" python3 scripts/bench_recurrence_sweep.py \
  --config=configs/bench_recurrence_sweep.py:gpu_lease --output_dir="$out"
step newton "$NEWTON_S" python3 scripts/bench_newton.py \
  --config=configs/bench_newton.py:gpu_lease --output_dir="$out"
# Forward kernel, bfloat16, head_dim 128: the row the issue's goals name.
step tune "$TUNE_S" python3 scripts/tune_attention.py --kernels=fwd \
  --head_dims=128 --dtypes=bfloat16 --block_ms=64,128 --block_ns=32,64,128 \
  --num_warps=4,8 --num_stages=3 --iters=10 --out="$out/block_sizes_tuned.txt"
# Rows of (out subfolder, seq_len, extra flags); one process each.
step attention_long "$LONG_S" bash -c '
  out=$1
  for row in "dense_64k 65536" "window_64k 65536 --window=4096" \
      "dense_8k 8192"; do
    set -- $row
    python3 scripts/bench_attention.py --seq_lens="$2" --head_dims=128 \
      --tokens=65536 --causal=true --implementations=triton --iters=5 \
      --out_dir="$out/$1" "${@:3}" || exit 1
  done' _ "$out"
# Backward kernels, bfloat16, head_dim 128, non-causal: one grid covering the
# dK/dV (key tile BLOCK_N outer) and dQ (query tile BLOCK_M outer) shapes,
# timed as forward+backward with the other kernels on their table rows.
step tune_bwd "$TUNE_BWD_S" python3 scripts/tune_attention.py \
  --kernels=bwd_dkdv,bwd_dq --head_dims=128 --dtypes=bfloat16 --causal=false \
  --block_ms=32,64,128 --block_ns=32,64,128 --num_warps=8 --num_stages=2,3 \
  --iters=5 --out="$out/block_sizes_tuned_bwd.txt"
# Issue 28: every forward/backward candidate against cuDNN and XLA in one
# run (fwd_128x64 is left out: it is the causal table row, and its
# non-causal figure is the leases' 361 TF/s).
step kernel_rows "$ROWS_S" python3 scripts/bench_kernel_rows.py \
  --candidates=triton,fwd_128x128,fwd_tma,bwd_fused,tma_fused,cudnn,xla \
  --out_dir="$out/kernel_rows"

# The candidates' summary (TF/s, x cuDNN, the goals) last.
if [[ ",$GPU_STEPS," == *",kernel_rows,"* && -f "$out/kernel_rows/kernel_rows.md" ]]; then
  echo "== kernel_rows summary" | tee -a "$log"
  sed -n '/^| pass | batch x seq/,$p' "$out/kernel_rows/kernel_rows.md" | tee -a "$log"
fi
