r"""Regenerates every experiment's figures and tables at one scale.

    python scripts/run_experiments.py                       # default scale
    python scripts/run_experiments.py --scale=tiny --output_dir=/tmp/exp
    python scripts/run_experiments.py --only=speed,memory --scale=large

Writes `<output_dir>/<experiment>/` per experiment and `<output_dir>/
RESULTS.md`, the concatenated summaries with their verdicts.
"""

import os
import time

from absl import app
from absl import flags

from rnn_transformer import experiments

_SCALE = flags.DEFINE_enum("scale", "default", list(experiments.SCALES),
                           "Scale of every experiment.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/experiments",
                                  "Outputs go to <output_dir>/<experiment>/.")
_ONLY = flags.DEFINE_list("only", list(experiments.EXPERIMENTS),
                          "Experiments to run, in this order.")


def main(argv):
  del argv
  modules = {name: experiments.load(name) for name in _ONLY.value}  # fail early
  summaries = []
  for name, module in modules.items():
    output_dir = os.path.join(_OUTPUT_DIR.value, name)
    os.makedirs(output_dir, exist_ok=True)
    start = time.perf_counter()
    report = module.run(module.get_config(_SCALE.value), output_dir)
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.0f} s")
    summaries.append(report.markdown() + f"\nWall time: {elapsed:.0f} s\n")
  path = os.path.join(_OUTPUT_DIR.value, "RESULTS.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(summaries))
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
