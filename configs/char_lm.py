r"""Character-level language model; by default on the repository's own docs.

    python scripts/train.py --config=configs/char_lm.py:lstm --workdir=/tmp/char_lstm
    python scripts/sample.py --workdir=/tmp/char_lstm --prompt="The " --top_k=20
    python scripts/train.py --config=configs/char_lm.py:lstm \
        --config.task.params.path=/path/to/text.txt --workdir=/tmp/my_text

`path` is one UTF-8 file or several joined by the OS path separator (":" on
Linux and macOS).
"""

import os
import pathlib

from rnn_transformer.training import train_config

_REPO = pathlib.Path(__file__).resolve().parents[1]
# Texts that ship with the repository (about 45,000 characters).
_DEFAULT_TEXT = os.pathsep.join(str(_REPO / name)
                                for name in ("README.md", "BUILD_NOTES.md"))


def get_config(backbone: str | None = None):
  config = train_config.task_config("char_lm", backbone, path=_DEFAULT_TEXT,
                                    seq_len=128, validation_fraction=0.1)
  if config.model.backbone == "transformer":  # recurrent models have no limit
    config.model.max_len = 512  # prompt plus generated characters
  config.train.steps = 500  # the validation bits/char stop improving near here
  config.train.warmup_steps = 100
  config.train.log_every = 50
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  return config
