"""Benchmarks the attention implementations available on this device.

Example (GPU): python scripts/bench_attention.py --out_dir=results/attention
Example (CPU, seconds): python scripts/bench_attention.py
"""

import contextlib
import os

from absl import app
from absl import flags
import jax

from kernels import benchmark

_GPU = jax.default_backend() == "gpu"
_SEQ_LENS = flags.DEFINE_list(
    "seq_lens", ["512", "1024", "2048", "4096", "8192", "16384", "32768"]
    if _GPU else ["256"], "Sequence lengths (q_len == kv_len).")
_HEAD_DIMS = flags.DEFINE_list("head_dims", ["64", "128"] if _GPU else ["64"],
                               "Head dims.")
_TOKENS = flags.DEFINE_integer("tokens", 16384 if _GPU else 512,
                               "batch x seq_len per cell.")
_HEADS = flags.DEFINE_integer("num_heads", 16 if _GPU else 4, "Heads.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Input dtype.")
_IMPLS = flags.DEFINE_list("implementations", None,
                           "Default: every one available on the device.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling.")
_ITERS = flags.DEFINE_integer("iters", 10 if _GPU else 3, "Timed calls.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results/attention",
                               "Where attention_bench.{csv,md} go.")
_WINDOW = flags.DEFINE_integer(
    "window", None, "Sliding window of this many keys: (w, 0) on causal rows, "
    "(w, w) on the others; unset: dense.")
_CAUSAL = flags.DEFINE_list("causal", ["false", "true"],
                            "Which masks to time: false, true or both.")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None,
                                   "Write a jax.profiler trace here.")


def _parse_bool(name: str, text: str) -> bool:
  if text.lower() not in ("true", "false"):
    raise app.UsageError(f"--{name} takes true/false values, got {text!r}")
  return text.lower() == "true"


def main(argv):
  del argv
  rows = benchmark.grid(
      [int(s) for s in _SEQ_LENS.value], [int(d) for d in _HEAD_DIMS.value],
      _IMPLS.value or benchmark.available_implementations(),
      tokens=_TOKENS.value, num_heads=_HEADS.value, dtype=_DTYPE.value,
      causal=[_parse_bool("causal", c) for c in _CAUSAL.value],
      window=_WINDOW.value)
  trace = (jax.profiler.trace(_PROFILE_DIR.value) if _PROFILE_DIR.value
           else contextlib.nullcontext())
  with trace:
    for row in rows:
      benchmark.measure(row, warmup=_WARMUP.value, iters=_ITERS.value)
      print(" ".join(benchmark.cells(row)), flush=True)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  benchmark.write_csv(rows, os.path.join(_OUT_DIR.value, "attention_bench.csv"))
  table = benchmark.markdown(rows)
  with open(os.path.join(_OUT_DIR.value, "attention_bench.md"), "w") as f:
    f.write(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}\n\n")
    f.write(table)
  print(table)


if __name__ == "__main__":
  app.run(main)
