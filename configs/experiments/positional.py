r"""Transformer encoder outputs under word permutation, per positional encoding.

    python scripts/experiment.py --config=configs/experiments/positional.py:tiny \
        --output_dir=/tmp/experiments
"""

from rnn_transformer.experiments import positional


def get_config(scale="default"):
  return positional.get_config(scale)
