r"""Copy memory (Arjovsky et al., 2016) with any backbone.

    python scripts/train.py --config=configs/copy.py:lstm --workdir=/tmp/copy_lstm
    python scripts/train.py --config=configs/copy.py:transformer \
        --config.task.params.delay=100 --workdir=/tmp/copy_tf
"""

from rnn_transformer.training import train_config


def get_config(backbone: str | None = None):
  config = train_config.task_config("copy", backbone, delay=20)
  if config.model.backbone == "transformer":  # recurrent models have no limit
    config.model.max_len = 64  # delay + 20 steps
  return config
