"""Timed comparisons behind the `scripts/bench_*.py` entry points.

* `timing`: medians after compilation, interleaved rounds, load average.
* `outputs`: CSV/Markdown tables, figures, log-log fits (shared with the
  experiments).
* `recurrent_benchmark`: our recurrent layers against `flax.linen.RNN`.
* `transformer_benchmark`: Transformer LM tokens/s per attention
  implementation; decoding with and without the KV cache.
* `newton_benchmark`: Newton evaluation against the sequential scan.
* `recurrence_sweep`: time and program depth against sequence length.

The attention benchmark is `kernels.benchmark`.
"""
