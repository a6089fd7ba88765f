"""Times the Triton block-size candidates against cuDNN and XLA in one run.

Issue 28's comparison: the forward and forward+backward at batch 4 x 4096
and batch 1 x 16384 tokens (16 heads of 128, bfloat16), causal and not, for
each candidate below; every candidate runs through `kernels.attention` with
its rows given by `block_sizes.override`, so exactly the library's launches
are timed. The summary table, printed last, gives TF/s and the ratio to
cuDNN in the same run, and the issue's goals as met / not met.

Candidates (`--candidates`): `kernels/candidates.py`.

  python scripts/bench_kernel_rows.py --out_dir=out/kernel_rows
"""

import os

from absl import app
from absl import flags
import jax

from kernels import benchmark
from kernels import candidates
from kernels.triton import block_sizes

_SEQ_LENS = flags.DEFINE_list("seq_lens", ["4096", "16384"],
                              "Sequence lengths; batch = tokens // seq_len.")
_TOKENS = flags.DEFINE_integer("tokens", 16384, "Tokens per call.")
_HEADS = flags.DEFINE_integer("num_heads", 16, "Heads.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "Head dim.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Input dtype.")
_CAUSAL = flags.DEFINE_list("causal", ["false", "true"], "Causal flags.")
_PASSES = flags.DEFINE_list("passes", ["fwd", "fwd+bwd"], "Passes.")
_CANDIDATES = flags.DEFINE_list("candidates", list(candidates.CANDIDATES),
                                "See kernels/candidates.py.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling.")
_ITERS = flags.DEFINE_integer("iters", 10, "Timed calls (median).")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/kernel_rows",
                               "CSV and Markdown go here.")


def measure_all(rows_spec, *, warmup: int, iters: int) -> list:
  """Times every (row, override) of `rows_spec`; labels rows by candidate."""
  rows = []
  for name, row, override in rows_spec:
    with block_sizes.override(override):
      benchmark.measure(row, warmup=warmup, iters=iters)
    row.implementation = name
    print(" ".join(benchmark.cells(row)), flush=True)
    rows.append(row)
  return rows


def main(argv):
  del argv
  bools = {"true": True, "false": False}
  if any(c.lower() not in bools for c in _CAUSAL.value):
    raise app.UsageError(f"--causal takes true/false, got {_CAUSAL.value}")
  unknown = set(_CANDIDATES.value) - set(candidates.CANDIDATES)
  if unknown:
    raise app.UsageError(f"--candidates: unknown {sorted(unknown)}")
  spec = candidates.plan([int(s) for s in _SEQ_LENS.value], _TOKENS.value,
              _HEADS.value, _HEAD_DIM.value, _DTYPE.value,
              [bools[c.lower()] for c in _CAUSAL.value], _PASSES.value,
              _CANDIDATES.value)
  rows = measure_all(spec, warmup=_WARMUP.value, iters=_ITERS.value)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  benchmark.write_csv(rows, os.path.join(_OUT_DIR.value, "kernel_rows.csv"))
  text = (f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}"
          f"\n\n{benchmark.markdown(rows)}\n{candidates.summary(rows)}")
  with open(os.path.join(_OUT_DIR.value, "kernel_rows.md"), "w") as f:
    f.write(text)
  print(candidates.summary(rows))


if __name__ == "__main__":
  app.run(main)
