"""`kernels.attention` per shard: 8 CPU devices, meshes (8,) and (4, 2).

The probe (`sharded_probe.py`) runs in a subprocess with 8 host devices. Per
implementation, sharded over the batch (and, on the (4, 2) mesh, over the
heads as well), the outputs, log-sum-exp and q/k/v gradients equal the
unsharded call, and the compiled forward and backward hold no collective.
Concrete sharded inputs without `mesh=` run per shard on their own mesh;
a split sequence or head_dim and k/v sharded unlike q are refused.
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


@pytest.mark.parametrize("layout,batch_axes,head_axes", [
    ("(8,)", ["data"], []), ("(4, 2)", ["data"], ["model"])])
def test_concrete_sharded_inputs_run_per_shard_without_a_mesh(
    report, layout, batch_axes, head_axes):
  run = report["detected"][layout]
  mesh = {"data": 8} if layout == "(8,)" else {"data": 4, "model": 2}
  assert run["per_shard"] == [[mesh, batch_axes, head_axes]], run
  assert run["max_abs_diff"] <= 1e-5, run
  assert run["keeps_sharding"], run


def test_replicated_inputs_are_unchanged(report):
  run = report["detected"]["replicated"]
  assert run["per_shard"] == [] and run["max_abs_diff"] <= 1e-5, run


_SEQUENCE = (r"ValueError: k is sharded P\('data', 'model'\), which splits the "
             r"sequence \(dimension 1\) over mesh axes \('model',\); .* "
             r"reshard q, k and v to P\('data', None, None, None\), or wait "
             r"for context-parallel attention \(issue 26\)")


@pytest.mark.parametrize("label,message", [
    ("heads", r"ValueError: head_axes \('model',\) split the heads 4 ways"),
    ("batch", r"ValueError: batch_axes \('data', 'model'\) split the batch"),
    ("axis", r"ValueError: batch_axes: expected axis names of the mesh"),
    ("no_mesh", r"TypeError: mesh must be a jax.sharding.Mesh"),
    ("sequence", _SEQUENCE),
    ("sequence_with_mesh", _SEQUENCE),
    ("head_dim", r"ValueError: q is sharded P\(None, None, None, 'model'\), "
                 r"which splits head_dim \(dimension 3\)"),
    ("kv_heads", r"ValueError: k and q differ in head axes \(dimension 2\): "
                 r"k is P\('data',\) on mesh \{'data': 4, 'model': 2\}, q is "
                 r"P\('data', None, 'model', None\)"),
    ("kv_unsharded", r"ValueError: v and q differ in the kind of sharding: v "
                     r"is ArrayImpl with sharding SingleDeviceSharding"),
])
def test_bad_shardings_are_named(report, label, message):
  assert re.match(message, report["refusals"][label] or ""), report[
      "refusals"][label]
