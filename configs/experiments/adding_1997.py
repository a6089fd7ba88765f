r"""The adding problem at Hochreiter & Schmidhuber's lengths (T = 100, 500,
1000): training sequences to the paper's criterion per backbone.

    python scripts/experiment.py --config=configs/experiments/adding_1997.py:tiny \
        --output_dir=/tmp/exp
    python scripts/experiment.py --config=configs/experiments/adding_1997.py \
        --output_dir=docs/results/adding_1997

The argument is the scale: tiny (seconds), default (under an hour
on a 2-core CPU) or large (for a GPU). See
`rnn_transformer.experiments.adding_1997`.
"""

from rnn_transformer.experiments import adding_1997


def get_config(scale="default"):
  return adding_1997.get_config(scale)
