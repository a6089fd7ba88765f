r"""Trains a backbone on a task; resumes from the workdir's latest checkpoint.

    python scripts/train.py --config=configs/first_token.py:lstm --workdir=/tmp/run
    python scripts/train.py --config=configs/copy.py:transformer \
        --config.model.num_layers=4 --config.train.steps=5000 --workdir=/tmp/copy

Any config field can be overridden with --config.<field>=<value>; the
resolved config, metrics.jsonl, TensorBoard events and orbax checkpoints go
to --workdir, library INFO logs (orbax, jax) to <workdir>/train.log
(`--verbosity=0` shows them on the console too). Relaunching with the same
--workdir continues the run; a relaunch whose config differs in anything but
`train.RESUMABLE_FIELDS` (steps, logging, eval and checkpoint cadence) is
refused before the workdir is touched.
"""

import sys

import jax
from absl import app
from absl import flags
from ml_collections import config_flags

from rnn_transformer.training import metric_writer
from rnn_transformer.training import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A configs/<task>.py[:<backbone>] file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() first (one process "
    "per host; coordinator from the environment, e.g. on Cloud TPU or SLURM).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _MULTIHOST.value:
    jax.distributed.initialize()
  if not flags.FLAGS["verbosity"].present:  # library INFO: <workdir>/train.log
    metric_writer.quiet_library_logs()
  config = _CONFIG.value
  task, _ = train.train_config.validate(config)  # fail before compiling
  metric_writer.console(f"devices: {jax.devices()}")
  try:
    metrics = train.train_and_evaluate(config, _WORKDIR.value)
  except train.NonFiniteLossError as e:
    sys.exit(f"stopped: {e}")
  except train.WorkdirMismatchError as e:
    sys.exit(f"refused: {e}")
  metric_writer.console(train.summary(task, metrics))


if __name__ == "__main__":
  app.run(main)
