"""Sizes for scripts/bench_recurrence_sweep.py (time against sequence length).

    python scripts/bench_recurrence_sweep.py                      # CPU: n = 256..4096
    python scripts/bench_recurrence_sweep.py \
        --config=configs/bench_recurrence_sweep.py:gpu --output_dir=/tmp/sweep
    python scripts/bench_recurrence_sweep.py \
        --config=configs/bench_recurrence_sweep.py:tiny           # seconds; the tests
"""

import ml_collections

from rnn_transformer.benchmarks import recurrence_sweep


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.variants = recurrence_sweep.VARIANTS  # which layers/methods to time
  config.seq_lens = (256, 1024, 4096)  # n, ascending
  config.batch = 32  # sequences per forward+backward
  config.hidden_size = 256  # width H of every layer (input = output = H)
  config.num_heads = 4  # Transformer heads
  config.chunk_size = 64  # steps per chunk of the "chunked" method
  config.dtype = "float32"  # compute dtype
  config.warmup = 1  # untimed calls per program before the first repeat
  config.iters = 5  # timed rounds per repeat; each repeat reports medians
  config.repeats = 3  # whole round-robin comparisons; rows give the spread
  if arg == "gpu":  # the range; the Transformer's n^2 needs a GPU
    config.seq_lens = (256, 1024, 4096, 16384)
    config.iters = 10
  elif arg == "gpu_lease":  # about 105 s of an H100 (2026-11-27)
    config.seq_lens = (256, 1024, 4096)
    config.iters, config.repeats = 3, 2
  elif arg == "tiny":
    config.variants = ("lstm/scan", "mingru/sequential", "mingru/associative",
                       "lru/chunked", "transformer/layer")
    config.seq_lens = (8, 32)
    config.batch, config.hidden_size, config.num_heads = 2, 8, 2
    config.chunk_size = 4
    config.iters, config.repeats = 2, 2
  elif arg is not None:
    raise ValueError(f"config argument: expected 'tiny', 'gpu', 'gpu_lease' or nothing, "
                     f"got {arg!r}")
  return config
