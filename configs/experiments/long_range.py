r"""Accuracy against dependency distance per backbone (seed chapters 2 and 3).

    python scripts/experiment.py --config=configs/experiments/long_range.py:tiny \
        --output_dir=/tmp/exp
    python scripts/experiment.py --config=configs/experiments/long_range.py:large \
        --config.seeds=5 --output_dir=/tmp/exp

The argument is the scale: tiny (seconds), default (minutes on a 2-core CPU)
or large (for a GPU). See `rnn_transformer.experiments.long_range`.
"""

from rnn_transformer.experiments import long_range


def get_config(scale="default"):
  return long_range.get_config(scale)
