r"""Regenerates the experiments' figures and tables at one scale.

    python scripts/run_experiments.py                       # the default set
    python scripts/run_experiments.py --scale=tiny --output_dir=/tmp/exp
    python scripts/run_experiments.py --only=speed,memory --scale=large
    python scripts/run_experiments.py --only=adding_1997    # run separately

Writes `<output_dir>/<experiment>/` per experiment and `<output_dir>/
RESULTS.md`, the summaries with their verdicts of every experiment present
there (so `--only` keeps the others' sections). The default set is every
experiment but those `experiments.RUN_SEPARATELY` names (each with its
reason and command). Progress: one line as each experiment starts, and per
cell (`experiments.progress`) a tqdm bar on a terminal or plain lines
elsewhere, with elapsed time and an estimate.
"""

import os
import time

from absl import app
from absl import flags

from rnn_transformer import experiments
from rnn_transformer.experiments import progress

_SCALE = flags.DEFINE_enum("scale", "default", list(experiments.SCALES),
                           "Scale of every experiment.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/experiments",
                                  "Outputs go to <output_dir>/<experiment>/.")
_ONLY = flags.DEFINE_list(
    "only", list(experiments.DEFAULT_SET),
    "Experiments to run, in this order (default: all but "
    f"{', '.join(experiments.RUN_SEPARATELY)}).")


def main(argv):
  del argv
  modules = {name: experiments.load(name) for name in _ONLY.value}  # fail early
  for name, reason in experiments.RUN_SEPARATELY.items():
    if name not in modules:
      print(f"not run: {name} ({reason}; or --only={name})")
  start = time.perf_counter()
  for index, (name, module) in enumerate(modules.items()):
    print(f"[{index + 1}/{len(modules)}] {name} at scale {_SCALE.value}: "
          f"{experiments.EXPERIMENTS[name]} (run elapsed "
          f"{progress.format_seconds(time.perf_counter() - start)})",
          flush=True)
    began = time.perf_counter()
    experiments.run(name, module.get_config(_SCALE.value), _OUTPUT_DIR.value)
    print(f"{name}: {progress.format_seconds(time.perf_counter() - began)}",
          flush=True)
  print(f"wrote {os.path.join(_OUTPUT_DIR.value, 'RESULTS.md')} in "
        f"{progress.format_seconds(time.perf_counter() - start)}")


if __name__ == "__main__":
  app.run(main)
