"""`kernels.attention` per shard: 8 CPU devices, meshes (8,) and (4, 2).

The probe (`sharded_probe.py`) runs in a subprocess with 8 host devices. Per
implementation, sharded over the batch (and, on the (4, 2) mesh, over the
heads as well), the outputs, log-sum-exp and q/k/v gradients equal the
unsharded call, and the compiled forward and backward hold no collective.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

PROBE = pathlib.Path(__file__).with_name("sharded_probe.py")
ROOT = PROBE.parents[2]


def _probe(implementations):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, str(PROBE), ",".join(implementations)], env=env,
      capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report():
  return _probe(["reference", "blockwise", "xla"])


@pytest.mark.parametrize("implementation", ["reference", "blockwise", "xla"])
@pytest.mark.parametrize("mesh", ["(8,)", "(4, 2)"])
def test_per_shard_equals_the_unsharded_call_without_collectives(
    report, implementation, mesh):
  run = report["runs"][f"{implementation} {mesh}"]
  assert run["max_abs_diff"] <= 1e-5, run
  assert run["collectives"] == [], run
  heads = "'model'" if mesh == "(4, 2)" else "None"
  assert run["out_sharding"] == f"P('data', None, {heads}, None)"


def test_the_triton_interpreter_runs_per_shard():
  pytest.importorskip("torch", reason="Triton's interpreter needs torch")
  report = _probe(["triton"])
  for mesh in ("(8,)", "(4, 2)"):
    run = report["runs"][f"triton {mesh}"]
    assert run["max_abs_diff"] <= 1e-5 and run["collectives"] == [], run
    # Without a mesh the opaque kernel is gathered to one device.
    assert run["unsharded_collectives"], run


@pytest.mark.parametrize("label,message", [
    ("heads", r"ValueError: head_axes \('model',\) split the heads 4 ways"),
    ("batch", r"ValueError: batch_axes \('data', 'model'\) split the batch"),
    ("axis", r"ValueError: batch_axes must name axes of the mesh"),
    ("no_mesh", r"TypeError: mesh must be a jax.sharding.Mesh"),
])
def test_bad_shardings_are_named(report, label, message):
  assert re.match(message, report["refusals"][label] or ""), report[
      "refusals"][label]
