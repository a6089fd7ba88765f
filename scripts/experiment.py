r"""Runs one of the seed's experiments: figure, CSV/Markdown tables, summary.

    python scripts/experiment.py --config=configs/experiments/speed.py \
        --output_dir=results/experiments
    python scripts/experiment.py --config=configs/experiments/long_range.py:large \
        --config.seeds=5 --output_dir=/tmp/long_range

The config argument is the scale: tiny (seconds, what CI runs), default
(minutes on a 2-core CPU) or large (for a GPU). Outputs go to
`<output_dir>/<experiment name>/`; `<output_dir>/RESULTS.md` is rebuilt
from every experiment directory there.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from rnn_transformer import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/experiments/<name>.py[:tiny|default|large]",
    lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "results/experiments",
                                  "Outputs go to <output_dir>/<experiment>/.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  config = _CONFIG.value
  report = experiments.run(config.experiment, config, _OUTPUT_DIR.value)
  print(report.markdown())


if __name__ == "__main__":
  app.run(main)
