r"""Newton iterations (DEER / quasi-DEER) against T and rho(W_hh), and time
of `newton_rnn` against `lax.scan`, for an Elman RNN on adding-task inputs.

    python scripts/bench_newton.py --output_dir=/tmp/newton
    python scripts/bench_newton.py --config.seq_lens='(64, 1024)' \
        --config.train_steps=0 --output_dir=/tmp/newton

Prints the load average (measure on an idle machine: below 1.5), then two
Markdown tables: iterations per W_hh, method and T (with the residual and the
largest difference from lax.scan), and forward / forward+backward times per
contender and T (median over repeats, min-max spread, lax.scan / this).
Writes newton_iterations.csv, newton_times.csv, newton.md and newton.png to
--output_dir.
"""

import csv
import os
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import timing
from rnn_transformer.benchmarks import newton_benchmark

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(pathlib.Path(__file__).resolve().parents[1] / "configs" /
        "bench_newton.py"),
    "Benchmark sizes (an ml_collections config file).", lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write the CSVs, newton.md and newton.png.",
    required=True)


def _write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def main(argv):
  del argv
  config = _CONFIG.value
  newton_benchmark.check_config(config)
  load = timing.load_average()
  print(timing.load_average_report(load), flush=True)
  iterations = newton_benchmark.measure_iterations(config)
  times = newton_benchmark.measure_times(config)
  title = (f"{outputs.device_description()}; Elman RNN, batch "
           f"{config.batch}, hidden {config.hidden_size}, float32; "
           f"{config.repeats} repeats x {config.iters} rounds; load average "
           f"at start {load:.2f}")
  text = "\n\n".join([title, newton_benchmark.format_iterations(iterations),
                      newton_benchmark.format_times(times)])
  print(text)
  output_dir = _OUTPUT_DIR.value
  os.makedirs(output_dir, exist_ok=True)
  _write_csv(os.path.join(output_dir, "newton_iterations.csv"), iterations)
  _write_csv(os.path.join(output_dir, "newton_times.csv"), times)
  with open(os.path.join(output_dir, "newton.md"), "w") as f:
    f.write(text + "\n")
  newton_benchmark.plot(iterations, times, title, output_dir)


if __name__ == "__main__":
  app.run(main)
