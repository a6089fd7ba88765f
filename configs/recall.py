r"""Associative recall: key-value pairs, then a query, with any backbone.

    python scripts/train.py --config=configs/recall.py:transformer --workdir=/tmp/recall_tf
"""

from rnn_transformer.training import train_config


def get_config(backbone: str | None = None):
  config = train_config.task_config("recall", backbone, num_pairs=8,
                                    num_keys=16, num_values=16)
  if config.model.backbone == "transformer":  # recurrent models have no limit
    config.model.max_len = 32
  return config
