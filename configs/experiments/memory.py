"""The `memory` experiment (rnn_transformer.experiments.memory).

    python scripts/experiment.py --config=configs/experiments/memory.py:tiny \
        --output_dir=/tmp/experiments
"""

import ml_collections

from rnn_transformer.experiments import memory


def get_config(scale: str = "default") -> ml_collections.ConfigDict:
  return memory.get_config(scale)
