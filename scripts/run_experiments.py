r"""Regenerates every experiment's figures and tables at one scale.

    python scripts/run_experiments.py                       # default scale
    python scripts/run_experiments.py --scale=tiny --output_dir=/tmp/exp
    python scripts/run_experiments.py --only=speed,memory --scale=large

Writes `<output_dir>/<experiment>/` per experiment and `<output_dir>/
RESULTS.md`, the summaries with their verdicts of every experiment present
there (so `--only` keeps the others' sections).
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
  for name, module in modules.items():
    start = time.perf_counter()
    experiments.run(name, module.get_config(_SCALE.value), _OUTPUT_DIR.value)
    print(f"{name}: {time.perf_counter() - start:.0f} s")
  print(f"wrote {os.path.join(_OUTPUT_DIR.value, 'RESULTS.md')}")


if __name__ == "__main__":
  app.run(main)
