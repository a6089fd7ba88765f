"""The seed document's claims as reproducible experiments.

Each experiment is a module here with two functions:

* `get_config(scale) -> ml_collections.ConfigDict`, scale one of `SCALES`:
  "tiny" (seconds; what CI runs), "default" (minutes on a 2-core CPU),
  "large" (for a GPU). The config's `experiment` field names the module.
* `run(config, output_dir) -> Report`: writes a labelled PNG figure, the raw
  numbers as CSV and Markdown, and `summary.md` into `output_dir`, and
  returns the `Report` (key figures and one verdict per claim of the seed)
  that tests assert on.

`configs/experiments/<name>.py` exposes `get_config` to absl's config flags;
`scripts/experiment.py` runs one experiment, `scripts/run_experiments.py`
the `DEFAULT_SET` (every experiment but those in `RUN_SEPARATELY`). While an
experiment runs, `progress.cells` shows which cell is running, the elapsed
time and an estimate.
"""

import importlib
import os
import time
from types import ModuleType

from rnn_transformer.experiments.reporting import Claim
from rnn_transformer.experiments.reporting import Report
from rnn_transformer.experiments.reporting import SCALES

# Experiment name -> what it measures (the seed chapter in brackets).
EXPERIMENTS = {
    "gradient_flow": "||dLoss/dh_t|| against t; clipping an exploding run "
                     "(chapter 2)",
    "long_range": "accuracy against dependency distance per backbone "
                  "(chapters 2 and 3)",
    "adding_1997": "training sequences to Hochreiter & Schmidhuber's "
                   "criterion on the adding problem at T = 100, 500, 1000 "
                   "(chapter 2)",
    "speed": "forward+backward time against sequence length, recurrent scan "
             "vs Transformer (chapters 1 and 3)",
    "memory": "peak attention memory against sequence length, reference vs "
              "blockwise vs Triton (chapter 3)",
    "positional": "permutation equivariance without positions, 'dog bites "
                  "man' (chapter 4)",
}

# Experiments that `scripts/run_experiments.py` leaves out unless named with
# --only, with the reason: each has its own documented command.
RUN_SEPARATELY = {
    "adding_1997": "about 50 minutes at the default scale on the 2-core CPU "
                   "(18 runs of up to 3 minutes); run it with "
                   "scripts/experiment.py --config=configs/experiments/"
                   "adding_1997.py",
}
DEFAULT_SET = tuple(name for name in EXPERIMENTS if name not in RUN_SEPARATELY)


def run(name: str, config, output_dir: str) -> Report:
  """Runs experiment `name` into `<output_dir>/<name>/`, appends its wall
  time to that `summary.md`, and rebuilds `<output_dir>/RESULTS.md`."""
  module = load(name)
  directory = os.path.join(output_dir, name)
  os.makedirs(directory, exist_ok=True)
  start = time.perf_counter()
  report = module.run(config, directory)
  with open(os.path.join(directory, "summary.md"), "a",
            encoding="utf-8") as f:
    f.write(f"\nWall time: {time.perf_counter() - start:.0f} s\n")
  write_results_index(output_dir)
  return report


def write_results_index(output_dir: str) -> str:
  """`<output_dir>/RESULTS.md`: every experiment's `summary.md` found under
  `output_dir`, in `EXPERIMENTS` order, so running one experiment keeps the
  others' sections."""
  sections = []
  for name in EXPERIMENTS:
    path = os.path.join(output_dir, name, "summary.md")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        sections.append(f.read())
  index = os.path.join(output_dir, "RESULTS.md")
  with open(index, "w", encoding="utf-8") as f:
    f.write("\n".join(sections))
  return index


def load(name: str) -> ModuleType:
  """The module of experiment `name`; raises ValueError for unknown names."""
  if name not in EXPERIMENTS:
    raise ValueError(f"experiment: expected one of {sorted(EXPERIMENTS)}, "
                     f"got {name!r}")
  return importlib.import_module(f"rnn_transformer.experiments.{name}")


__all__ = ["DEFAULT_SET", "EXPERIMENTS", "RUN_SEPARATELY", "SCALES", "Claim",
           "Report", "load", "run", "write_results_index"]
