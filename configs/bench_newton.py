"""Sizes for scripts/bench_newton.py (Newton iterations and time vs lax.scan).

    python scripts/bench_newton.py --output_dir=/tmp/newton      # CPU: minutes
    python scripts/bench_newton.py --config=configs/bench_newton.py:gpu \
        --output_dir=/tmp/newton
    python scripts/bench_newton.py --config=configs/bench_newton.py:tiny \
        --output_dir=/tmp/newton                                 # seconds; tests
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.methods = ("full", "quasi", "damped")  # iteration counts per method
  config.seq_lens = (64, 256, 1024, 4096)  # T of the iteration counts
  config.radii = (0.5, 1.0, 1.5)  # rho(W_hh) at initialisation (Gaussian)
  config.max_iters = 4096  # Newton iterations at most (and at most T)
  config.batch = 8  # sequences per call (adding-task inputs)
  config.hidden_size = 32  # width H of the Elman RNN (state size S = H)
  config.seed = 0  # parameters and data
  config.train_steps = 300  # Adam steps on the adding task; 0: no trained row
  config.train_seq_len = 50  # adding-task length while training
  config.learning_rate = 1e-2  # Adam
  config.timed_methods = ("full", "quasi")  # timed against lax.scan
  config.time_seq_lens = (64, 256, 1024, 4096)  # T of the timings
  config.time_radius = 0.5  # rho(W_hh) of the timed RNN
  config.warmup = 1  # untimed calls per program before the first repeat
  config.iters = 5  # timed rounds per repeat; each repeat reports medians
  config.repeats = 3  # whole round-robin comparisons; rows give the spread
  if arg == "gpu":
    config.seq_lens = (64, 256, 1024, 4096, 16384)
    config.time_seq_lens = (256, 1024, 4096, 16384)
    config.batch, config.hidden_size = 32, 64
    config.iters = 10
  elif arg == "gpu_lease":  # a reduced grid for scripts/gpu_checks.sh
    config.methods = ("full", "quasi")
    config.seq_lens = (256, 1024, 4096)
    config.radii = (0.5, 1.0)
    config.batch, config.hidden_size = 32, 64
    config.train_steps = 100
    config.time_seq_lens = (256, 1024, 4096)
    config.iters, config.repeats = 5, 2
  elif arg == "tiny":
    config.methods = ("full", "quasi")
    config.seq_lens = (8, 32)
    config.radii = (0.5, 1.5)
    config.batch, config.hidden_size = 2, 4
    config.train_steps, config.train_seq_len = 3, 8
    config.timed_methods = ("quasi",)
    config.time_seq_lens = (8, 16)
    config.iters, config.repeats = 2, 2
  elif arg is not None:
    raise ValueError(f"config argument: expected 'tiny', 'gpu', 'gpu_lease' or nothing, "
                     f"got {arg!r}")
  return config
