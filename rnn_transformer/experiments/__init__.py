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
all of them.
"""

import importlib
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


def load(name: str) -> ModuleType:
  """The module of experiment `name`; raises ValueError for unknown names."""
  if name not in EXPERIMENTS:
    raise ValueError(f"experiment: expected one of {sorted(EXPERIMENTS)}, "
                     f"got {name!r}")
  return importlib.import_module(f"rnn_transformer.experiments.{name}")


__all__ = ["EXPERIMENTS", "SCALES", "Claim", "Report", "load"]
