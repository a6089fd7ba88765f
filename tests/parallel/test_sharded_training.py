"""Training on 8 CPU devices under dp, fsdp, tp and fsdp_tp equals the
1-device run; the state is created sharded; checkpoints reshard.

Each backbone's probe runs in child processes (`sharded_training_probe.py`):
the device count is fixed when jax starts.
"""

import json
import os

import numpy as np
import pytest

from tests.parallel.sharding_helpers import LOSS_RTOL
from tests.parallel.sharding_helpers import assert_params_close
from tests.parallel.sharding_helpers import run
from tests.parallel.sharding_helpers import run_report
from tests.script_helpers import REPO

PROBE = os.path.join(os.path.dirname(__file__), "sharded_training_probe.py")
STRATEGIES = ("dp", "fsdp", "tp", "fsdp_tp")


def _probe(devices, backbone, root, *extra):
  return run_report([PROBE, devices, backbone, root, *extra])


def _params(root, name):
  with np.load(os.path.join(root, f"{name}.npz")) as f:
    return {k: f[k] for k in f.files}


def test_linear_recurrences_train_with_time_split_like_one_device(tmp_path):
  """LRU on (data 4 x context 2) and (fsdp 4 x context 2): every layer scans
  its half of the steps and exchanges (batch, features) summaries."""
  sharded = _probe(8, "lru", tmp_path)
  reference = _probe(1, "lru", tmp_path, "--restore",
                     str(tmp_path / "fsdp_context"))
  expected = np.asarray(reference["losses"]["reference"])
  assert expected.shape == (20,) and expected[-1] < expected[0]
  final = _params(tmp_path, "reference")
  for strategy in ("dp_context", "fsdp_context"):
    np.testing.assert_allclose(sharded["losses"][strategy], expected,
                               rtol=LOSS_RTOL, err_msg=strategy)
    assert_params_close(_params(tmp_path, strategy), final, strategy)
  assert_params_close(_params(tmp_path, "restored_into_1"),
                      _params(tmp_path, "fsdp_context"), "into 1 device",
                      atol=0)


@pytest.mark.parametrize("backbone", ["transformer", "lstm"])
def test_every_strategy_trains_like_one_device(backbone, tmp_path):
  sharded = _probe(8, backbone, tmp_path)
  reference = _probe(1, backbone, tmp_path, "--restore",
                     str(tmp_path / "fsdp"))
  assert (sharded["devices"], reference["devices"]) == (8, 1)
  expected = np.asarray(reference["losses"]["reference"])
  assert expected.shape == (20,) and expected[-1] < expected[0]
  final = _params(tmp_path, "reference")
  strategies = STRATEGIES + (("dp_context", "fsdp_context") if (
      backbone == "transformer") else ())
  for strategy in strategies:
    np.testing.assert_allclose(sharded["losses"][strategy], expected,
                               rtol=LOSS_RTOL, err_msg=strategy)
    assert_params_close(_params(tmp_path, strategy), final, strategy)
  # Killed after step 10 under fsdp, relaunched under fsdp_tp.
  np.testing.assert_allclose(sharded["losses"]["fsdp_then_fsdp_tp"],
                             expected[10:], rtol=LOSS_RTOL)
  # The fsdp checkpoint (8 devices) restored exactly into tp on a (4, 2)
  # mesh and into one device.
  fsdp = _params(tmp_path, "fsdp")
  assert_params_close(_params(tmp_path, "fsdp_into_tp"), fsdp, "into tp",
                       atol=0)
  assert_params_close(_params(tmp_path, "restored_into_1"), fsdp,
                       "into 1 device", atol=0)
  if backbone == "transformer":
    specs = sharded["fsdp_into_tp_specs"]
    assert specs["['blocks_0']['attention']['query']['kernel']"] == (
        "P(None, 'tensor')")
    _check_layout(sharded["layout"])
    _check_refusals(sharded["refusals"])


def _check_layout(layout):
  """fsdp: >= 98% of parameter and Adam bytes split, ~1/8 per device;
  tp on a (data 4, tensor 2) mesh: heads, MLP and vocabulary split."""
  fsdp = layout["fsdp"]
  assert fsdp["params_fraction"] >= 0.98 and fsdp["opt_fraction"] >= 0.98
  assert fsdp["devices"] == 8
  assert fsdp["max_device_bytes"] <= 1.05 * fsdp["total_bytes"] / 8
  tp = layout["tp"]["specs"]
  for layer in ("blocks_0", "blocks_1"):
    for name in ("query", "key", "value"):
      assert tp[f"['{layer}']['attention']['{name}']['kernel']"] == (
          "P(None, 'tensor')")
    assert tp[f"['{layer}']['attention']['out']['kernel']"] == "P('tensor',)"
    assert tp[f"['{layer}']['mlp']['wi']['kernel']"] == "P(None, 'tensor')"
    assert tp[f"['{layer}']['mlp']['wo']['kernel']"] == "P('tensor',)"
  assert tp["['embedder']['embedding']['embedding']"] == "P('tensor',)"
  # Half the state per device: split over tensor (2), replicated over data.
  assert layout["tp"]["max_device_bytes"] <= 0.52 * layout["tp"]["total_bytes"]


def _check_refusals(refusals):
  expected = {
      "mesh_size": "config.mesh.shape: (3,) holds 3 devices, but there are 8",
      "mesh_two_rest": "config.mesh.shape: expected positive sizes and at "
                       "most one -1",
      "unknown_axis": "config.mesh.axes: expected names among",
      "idle_axis": "are used by no rule of strategy 'dp'",
      "strategy_typo": "config.sharding.strategy: expected one of",
      "missing_axis": "config.mesh.axes: strategy 'fsdp' needs the mesh axes",
      "rule_unknown_logical": "config.sharding.rules: unknown logical axis "
                              "'embedd'",
      "rule_unknown_mesh": "names mesh axes ['tensor'] that the mesh",
      "batch": "config.train.batch_size: expected a multiple of",
      "context_rnn": "config.mesh.axes: a 'context' axis splits time over "
                     "devices",
      "context_indivisible": "config.mesh.shape: the context axis splits the "
                             "task's 14 steps 4 ways, not evenly",
  }
  assert refusals.keys() == expected.keys()
  for case, message in expected.items():
    assert refusals[case] is not None, f"{case} was accepted"
    assert refusals[case].startswith("ValueError: "), refusals[case]
    assert message in refusals[case], (case, refusals[case])


def _train_losses(workdir, devices, *flags):
  run([REPO / "scripts" / "train.py", f"--workdir={workdir}", *flags],
      devices=devices)
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return [r["loss"] for r in rows if r["split"] == "train"]


def test_newton_lstm_trains_with_time_split_like_one_device(tmp_path):
  """LSTM with evaluation='newton' on (data 4 x context 2): each Newton
  iteration's linear solve scans across the two time shards; 6 steps give
  the 1-device losses."""
  flags = [f"--config={REPO / 'configs' / 'copy.py'}:lstm",
           "--config.model.evaluation=newton",
           "--config.model.model_dim=32", "--config.train.steps=6",
           "--config.train.warmup_steps=1", "--config.train.log_every=1",
           "--config.train.eval_every=6", "--config.train.eval_batches=1",
           "--config.train.checkpoint_every=6", "--config.train.batch_size=16",
           "--config.train.progress_bar=False"]
  one = _train_losses(tmp_path / "one", 1, *flags)
  split = _train_losses(tmp_path / "split", 8, *flags,
                        "--config.mesh.axes=('data', 'context')",
                        "--config.mesh.shape=(4, 2)")
  assert len(one) == 6 and one[-1] < one[0]
  np.testing.assert_allclose(split, one, rtol=LOSS_RTOL)
