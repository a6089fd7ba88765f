r"""Trains a backbone on a task; resumes from the workdir's latest checkpoint.

    python scripts/train.py --config=configs/first_token.py:lstm --workdir=/tmp/run
    python scripts/train.py --config=configs/copy.py:transformer \
        --config.model.num_layers=4 --config.train.steps=5000 --workdir=/tmp/copy

Any config field can be overridden with --config.<field>=<value>; the
resolved config, metrics.jsonl, TensorBoard events and orbax checkpoints go
to --workdir, library INFO logs (orbax, jax) to <workdir>/train.log
(`--verbosity=0` shows them on the console too). Relaunching with the same
--workdir continues the run; a relaunch whose config differs in anything but
`train.RESUMABLE_FIELDS` (steps, logging, eval and checkpoint cadence, the
mesh and the sharding strategy) is refused before the workdir is touched.

Many devices and hosts (docs/scaling.md):

    python scripts/train.py --config=configs/copy.py:transformer \
        --config.sharding.strategy=fsdp_tp --config.mesh.shape='(-1, 2)' \
        --workdir=/tmp/copy_fsdp_tp
    # two processes of 4 CPU devices each, on this machine:
    for i in 0 1; do XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python scripts/train.py --config=configs/copy.py:transformer \
        --config.sharding.strategy=fsdp --workdir=/tmp/copy_2proc \
        --multihost --coordinator_address=127.0.0.1:12355 \
        --num_processes=2 --process_id=$i & done; wait
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
    "per host). Without the three flags below the coordinator comes from the "
    "environment (Cloud TPU, SLURM, Open MPI).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost: host:port of process 0, "
    "e.g. 127.0.0.1:12355 for processes on one machine.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --multihost: how many processes take part.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --multihost: this process's index, 0 first.")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if any(v is not None for v in explicit) and not _MULTIHOST.value:
    raise app.UsageError("--coordinator_address, --num_processes and "
                         "--process_id need --multihost")
  if not _MULTIHOST.value:
    return
  if any(v is None for v in explicit) and any(v is not None for v in explicit):
    raise app.UsageError("--coordinator_address, --num_processes and "
                         "--process_id go together: give all three or none")
  if explicit[0] is None:
    jax.distributed.initialize()
    return
  host = explicit[0].rsplit(":", 1)[0].strip("[]")
  # jax's coordinator listens on every interface unless told otherwise: a
  # run on one machine keeps it on the loopback address it was given.
  bind = explicit[0] if host in ("127.0.0.1", "localhost", "::1") else None
  jax.distributed.initialize(coordinator_address=explicit[0],
                             num_processes=explicit[1],
                             process_id=explicit[2],
                             coordinator_bind_address=bind)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _initialize_distributed()
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
