"""Sizes for scripts/bench_recurrent.py.

    python scripts/bench_recurrent.py --config=configs/bench_recurrent.py \
        --config.batch=64 --config.time=512
    python scripts/bench_recurrent.py --config=configs/bench_recurrent.py:tiny
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.batch = 32  # sequences per step
  config.time = 256  # steps per sequence
  config.input_size = 256  # features per step
  config.hidden_size = 256  # hidden units per layer
  config.cells = ("rnn", "lstm", "gru")  # which cells to time
  config.dtype = "float32"  # compute dtype of inputs and matmuls
  config.warmup = 2  # untimed calls after compilation
  config.iters = 10  # timed rounds per repeat; each repeat takes medians
  config.repeats = 3  # whole round-robin comparisons; rows give the spread
  config.unroll = 1  # steps unrolled per scan iteration
  if arg == "tiny":  # seconds on a CPU; used by the test suite
    config.batch, config.time, config.input_size, config.hidden_size = 2, 8, 4, 8
    config.warmup, config.iters, config.repeats = 1, 2, 2
  elif arg is not None:
    raise ValueError(f"config argument: expected 'tiny' or nothing, got {arg!r}")
  return config
