r"""Remember the first token at distances 100, 200 and 500, with learning
curves: the seed's "LSTMs reach a few hundred steps" at a budget a 2-core
CPU affords (about 15 minutes).

    python scripts/experiment.py --config=configs/experiments/long_range_far.py \
        --output_dir=/tmp/far     # writes /tmp/far/long_range/

The recurrent backbones only: at length 501 one Transformer update costs
about 2 s on this CPU (6 vmapped runs), 50 minutes for the budget; its
claim is measured at distances 5-100 by the default `long_range` config.
The LSTM starts with forget bias 5 (`lstm_forget_bias`), near the 1997
LSTM's forget-gate-free memory, as in the adding_1997 experiment. See
`rnn_transformer.experiments.long_range`.
"""

from rnn_transformer.experiments import long_range


def get_config(scale="default"):
  config = long_range.get_config(scale)
  if scale == "tiny":
    return config
  config.backbones = ("rnn", "lstm", "gru", "mingru", "lru")
  config.distances = (100, 200, 500)
  config.seeds = 2
  config.lstm_forget_bias = 5.0
  config.curve_points = 10
  config.train.steps = 1500
  config.train.warmup_steps = 100
  return config
