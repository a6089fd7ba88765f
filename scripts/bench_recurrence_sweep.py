r"""Times LSTM (lax.scan), minGRU and LRU (each scan method) and a Transformer
layer against sequence length; forward+backward, with program depth.

    python scripts/bench_recurrence_sweep.py --output_dir=/tmp/sweep
    python scripts/bench_recurrence_sweep.py --config.seq_lens='(256, 1024)' \
        --config.variants="('lstm/scan', 'mingru/sequential')"

Prints the load average (measure on an idle machine: below 1.5), then
Markdown tables: one row per variant and length (median, spread over
repeats, depth, ratios to the LSTM and to the same layer's sequential scan),
the log-log slopes, and the fastest method per layer and length against the
default of `linear_recurrence.DEFAULT_METHOD_BY_BACKEND`. With --output_dir
also writes recurrence_sweep.{csv,md}.
"""

import csv
import os
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import timing
from rnn_transformer.benchmarks import recurrence_sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(pathlib.Path(__file__).resolve().parents[1] / "configs" /
        "bench_recurrence_sweep.py"),
    "Benchmark sizes (an ml_collections config file).", lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write recurrence_sweep.csv and .md.")


def main(argv):
  del argv
  config = _CONFIG.value
  load = timing.load_average()
  print(timing.load_average_report(load), flush=True)
  rows = recurrence_sweep.measure(config)
  title = (f"{outputs.device_description()}; batch {config.batch}, "
           f"hidden {config.hidden_size}, {config.dtype}, chunk "
           f"{config.chunk_size}; {config.repeats} repeats x {config.iters} "
           f"rounds; load average at start {load:.2f}")
  text = "\n\n".join([
      title, recurrence_sweep.format_rows(rows),
      recurrence_sweep.format_slopes(rows),
      recurrence_sweep.format_fastest(rows)])
  print(text)
  if _OUTPUT_DIR.value:
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    with open(os.path.join(_OUTPUT_DIR.value, "recurrence_sweep.csv"), "w",
              newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
    with open(os.path.join(_OUTPUT_DIR.value, "recurrence_sweep.md"),
              "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main)
