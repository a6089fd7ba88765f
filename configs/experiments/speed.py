"""The `speed` experiment (rnn_transformer.experiments.speed).

    python scripts/experiment.py --config=configs/experiments/speed.py:tiny \
        --output_dir=/tmp/experiments
"""

import ml_collections

from rnn_transformer.experiments import speed


def get_config(scale: str = "default") -> ml_collections.ConfigDict:
  return speed.get_config(scale)
