r"""Benchmarks the recurrent layers against flax.linen.RNN (forward+backward).

    python scripts/bench_recurrent.py                       # batch 32, time 256, 256 -> 256
    python scripts/bench_recurrent.py --config.time=1024 --output_dir=/tmp/bench

Prints the load average (timings count only below 1.5), then a Markdown table
with milliseconds per forward+backward step and the ratio flax / ours, the
median over `--config.repeats` interleaved comparisons with its min-max
spread; "[default]" marks what `RNN()` runs on this backend. With
--output_dir also writes bench_recurrent.{csv,md}.
"""

import csv
import os
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import timing
from rnn_transformer.benchmarks import recurrent_benchmark

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(pathlib.Path(__file__).resolve().parents[1] / "configs" /
        "bench_recurrent.py"),
    "Benchmark sizes (an ml_collections config file).", lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write bench_recurrent.csv and .md.")


def main(argv):
  del argv
  load = timing.load_average_report()
  print(load, flush=True)
  rows = recurrent_benchmark.run(_CONFIG.value)
  config = _CONFIG.value
  title = (f"{outputs.device_description()}; batch {config.batch}, "
           f"time {config.time}, input {config.input_size}, hidden "
           f"{config.hidden_size}, {config.dtype}; {config.repeats} repeats x "
           f"{config.iters} rounds; {load}")
  table = recurrent_benchmark.format_rows(rows)
  print(title)
  print(table)
  if _OUTPUT_DIR.value:
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    with open(os.path.join(_OUTPUT_DIR.value, "bench_recurrent.csv"), "w",
              newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
    with open(os.path.join(_OUTPUT_DIR.value, "bench_recurrent.md"), "w") as f:
      f.write(f"{title}\n\n{table}\n")


if __name__ == "__main__":
  app.run(main)
