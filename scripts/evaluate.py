r"""Evaluates a run's latest checkpoint; samples text for language models.

    python scripts/evaluate.py --workdir=/tmp/run
"""

from absl import app
from absl import flags

from rnn_transformer.training import metric_writer
from rnn_transformer.training import train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of a training run.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax INFO: --verbosity=0
    metric_writer.quiet_library_logs()
  task, metrics, sample = train.evaluate_workdir(_WORKDIR.value)
  print(train.summary(task, metrics))
  if sample is not None:
    print(f"sample: {sample!r}")


if __name__ == "__main__":
  app.run(main)
