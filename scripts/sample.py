r"""Generates text from a char-LM run's latest checkpoint.

    python scripts/sample.py --workdir=/tmp/char_lstm --prompt="The " \
        --num_chars=300 --temperature=0.8 --top_k=20

Prints the prompt followed by the generated characters. Temperature 0 is
greedy decoding; `--seed` makes sampling reproducible.
"""

import sys

from absl import app
from absl import flags

from rnn_transformer.training import metric_writer
from rnn_transformer.training import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a char_lm run.")
_PROMPT = flags.DEFINE_string("prompt", "The ", "Text to continue.")
_NUM_CHARS = flags.DEFINE_integer("num_chars", 200, "Characters to generate.",
                                  lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "0: greedy.",
                                  lower_bound=0.0)
_TOP_K = flags.DEFINE_integer("top_k", None, "Sample among the k most likely "
                              "characters (default: all).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax INFO: --verbosity=0
    metric_writer.quiet_library_logs()
  try:
    text = train.sample_workdir(
        _WORKDIR.value, _PROMPT.value, _NUM_CHARS.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, seed=_SEED.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(_PROMPT.value + text)


if __name__ == "__main__":
  app.run(main)
