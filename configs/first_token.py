r"""Remember the first token across `distance` noise tokens; the default run.

    python scripts/train.py --config=configs/first_token.py:lstm --workdir=/tmp/ft_lstm
    python scripts/train.py --config=configs/first_token.py:rnn \
        --config.task.params.distance=200 --workdir=/tmp/ft_rnn
"""

from rnn_transformer.training import train_config


def get_config(backbone: str | None = None):
  config = train_config.task_config("first_token", backbone, distance=50)
  if config.model.backbone == "transformer":  # recurrent models have no limit
    config.model.max_len = 256
  config.train.steps = 300
  config.train.warmup_steps = 30
  config.train.log_every = 25
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  return config
