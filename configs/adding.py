r"""The adding problem (Hochreiter and Schmidhuber, 1997) with any backbone.

    python scripts/train.py --config=configs/adding.py:gru --workdir=/tmp/adding_gru
"""

from rnn_transformer.training import train_config


def get_config(backbone: str | None = None):
  config = train_config.task_config("adding", backbone, seq_len=50)
  if config.model.backbone == "transformer":  # recurrent models have no limit
    config.model.max_len = 64
  return config
