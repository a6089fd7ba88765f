r"""Character-level language model on any text file.

    python scripts/train.py --config=configs/char_lm.py:lstm \
        --config.task.params.path=/path/to/text.txt --workdir=/tmp/char_lstm
"""

import pathlib

from rnn_transformer import train_config

# A text that ships with the repository; point --config.task.params.path at
# your own corpus.
_DEFAULT_TEXT = str(pathlib.Path(__file__).resolve().parents[1] / "README.md")


def get_config(backbone: str | None = None):
  config = train_config.task_config("char_lm", backbone, path=_DEFAULT_TEXT,
                                    seq_len=64, validation_fraction=0.1)
  config.model.max_len = 256
  return config
