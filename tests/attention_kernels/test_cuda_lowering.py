"""The Triton path lowered for `cuda` on a CPU-only machine.

Needs jax-triton and the `jax-cuda13-plugin` wheel installed `--no-deps` (the
README's install does both): the plugin's `_triton` module holds the custom
call's serialiser and needs no CUDA library.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

_PROBE = pathlib.Path(__file__).with_name("cuda_lowering_probe.py")
_ROOT = _PROBE.parent.parent


def _probe(capability: int) -> dict:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(_ROOT), os.environ.get("PYTHONPATH", "")]))
  env.pop("TRITON_INTERPRET", None)
  run = subprocess.run([sys.executable, str(_PROBE), str(capability)],
                       capture_output=True, text=True, env=env, timeout=600,
                       check=False)
  assert run.returncode == 0, (
      "lowering for cuda failed; jax-triton and the jax-cuda13-plugin wheel "
      "(pip install --no-deps jax-cuda13-plugin==<jaxlib version>) must be "
      f"installed:\n{run.stderr[-4000:]}")
  return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("capability", [80, 90])
def test_forward_and_gradient_lower_for_cuda(capability):
  result = _probe(capability)
  forward, gradient = result["forward"], result["gradient"]
  # The forward is one kernel; the gradient reruns it for the log-sum-exp,
  # then the preprocess (delta), dK/dV and dQ kernels.
  (target,) = {c["target"] for c in forward + gradient}
  assert target in ("triton_kernel_call", "triton_kernel_call_ffi")
  assert [c["entry"] for c in forward] == [["_attn_fwd"]]
  assert len(gradient) == 4
  assert sorted(c["entry"][0] for c in gradient) == sorted(
      ["_attn_fwd", "_attn_bwd_preprocess", "_attn_bwd_dkdv", "_attn_bwd_dq"])
  assert all(c["ptx_target"] for c in forward + gradient), result
  assert result["export_platforms"] == ["cuda"]
  assert result["export_bytes"] > 0
  assert result["gate_ptx_embedded"], (
      "the compile gate's PTX differs from what jax-triton embeds")
