"""Two processes of 4 CPU devices each train like one process of 8.

Real multi-controller jax on this machine: `scripts/train.py --multihost`
with a coordinator on the loopback address and gloo CPU collectives (the
README's command). The losses equal a single 8-device process's, both
checkpoints restore in one 1-device process, and equal each other there.
"""

import json
import os
import subprocess
import sys

import numpy as np

from tests.parallel.sharding_helpers import LOSS_RTOL
from tests.parallel.sharding_helpers import assert_params_close
from tests.parallel.sharding_helpers import child_env
from tests.parallel.sharding_helpers import free_port
from tests.parallel.sharding_helpers import run
from tests.script_helpers import REPO

STEPS = 6
FLAGS = (f"--config={REPO / 'configs' / 'copy.py'}:transformer",
         "--config.task.params.delay=6", "--config.model.model_dim=32",
         "--config.sharding.strategy=fsdp", f"--config.train.steps={STEPS}",
         "--config.train.warmup_steps=1", "--config.train.batch_size=16",
         "--config.train.log_every=1", f"--config.train.eval_every={STEPS}",
         "--config.train.eval_batches=1", "--config.train.checkpoint_every=3",
         "--config.train.progress_bar=False")
TRAIN = REPO / "scripts" / "train.py"
RESTORE = """
import sys
import numpy as np
import jax
from rnn_transformer.training import train
for workdir, out in zip(sys.argv[1::2], sys.argv[2::2]):
  trainer = train.Trainer(train.load_config(workdir), workdir)
  params = trainer.gathered(trainer.restore_or_init().params)
  trainer.checkpoints.close()
  np.savez(out, **{jax.tree_util.keystr(p): np.asarray(x) for p, x in
                   jax.tree_util.tree_flatten_with_path(params)[0]})
print(jax.device_count(), jax.process_count())
"""


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return [r["loss"] for r in rows if r["split"] == "train"]


def _load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def test_two_processes_train_like_one_and_restore_in_one(tmp_path):
  multi, single = tmp_path / "two_processes", tmp_path / "one_process"
  port = free_port()
  children = [subprocess.Popen(
      [sys.executable, str(TRAIN), *FLAGS, f"--workdir={multi}",
       "--multihost", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=child_env(4)) for i in range(2)]
  try:
    outputs = [child.communicate(timeout=600) for child in children]
  finally:
    for child in children:
      child.kill()
  for child, (_, err) in zip(children, outputs):
    assert child.returncode == 0, err[-4000:]
  run([TRAIN, *FLAGS, f"--workdir={single}"], devices=8)

  assert "devices: [CpuDevice(id=0)" in outputs[0][0]
  # The coordinator listens on the loopback address only, not on [::].
  assert f"distributed service on 127.0.0.1:{port}" in outputs[0][1]
  multi_losses = _losses(multi)
  assert len(multi_losses) == STEPS
  np.testing.assert_allclose(multi_losses, _losses(single), rtol=LOSS_RTOL)
  # One process wrote the shared config and metrics; each its own log.
  assert (multi / "train.log").exists()
  assert (multi / "train.process1.log").exists()
  checkpoint = multi / "checkpoints" / str(STEPS)
  assert (checkpoint / "commit_success.txt").exists()
  # orbax: each process wrote its own shards, one metadata file for both.
  written = sorted(p.name for p in (checkpoint / "default").iterdir())
  assert {"ocdbt.process_0", "ocdbt.process_1", "_METADATA"} <= set(written)
  assert not any(name.startswith("ocdbt.process_2") for name in written)

  done = run(["-c", RESTORE, multi, tmp_path / "multi.npz", single,
              tmp_path / "single.npz"], devices=1)
  assert done.stdout.split()[-2:] == ["1", "1"]
  assert_params_close(_load(tmp_path / "multi.npz"),
                      _load(tmp_path / "single.npz"), "2 processes vs 1")
