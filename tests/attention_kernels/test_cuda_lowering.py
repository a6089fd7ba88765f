"""The Triton path lowered for `cuda` on a CPU-only machine.

Needs jax-triton and the `jax-cuda13-plugin` wheel installed `--no-deps` (the
README's install does both): the plugin's `_triton` module holds the custom
call's serialiser and needs no CUDA library. The sharded call's mesh holds 8
host (CPU) devices: lowering for cuda needs no GPU, compiling would.
"""

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

_PROBE = pathlib.Path(__file__).with_name("cuda_lowering_probe.py")
_ROOT = _PROBE.parent.parent


@functools.cache
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


def test_a_sharded_call_lowers_per_shard_for_cuda():
  """Batch 8 over `data` (4 ways) and heads 4/2 over `model` (2 ways): with
  `mesh=` every Triton call of the forward and the gradient sees one
  device's shard, batch 2 with 2 query and 1 kv heads; without it, under
  jit, the kernel sees the global arrays (XLA would gather them)."""
  result = _probe(90)["sharded"]
  assert result["mesh"] == {"data": 4, "model": 2}
  (forward,) = result["forward"]
  assert forward[:3] == [[2, 200, 2, 64], [2, 200, 1, 64], [2, 200, 1, 64]]
  assert len(result["gradient"]) == 4
  for shapes in result["forward"] + result["gradient"]:
    assert all(shape[0] == 2 for shape in shapes), shapes  # batch per shard
    assert {tuple(s) for s in shapes if len(s) == 4} <= {
        (2, 200, 2, 64), (2, 200, 1, 64)}, shapes
  (global_call,) = result["without_mesh"]
  assert global_call[:3] == [[8, 200, 4, 64], [8, 200, 2, 64],
                             [8, 200, 2, 64]]


def test_ring_attention_lowers_per_chunk_for_cuda():
  """Zigzag ring attention, causal, sequence 256 over `context` (4 ways)
  and batch 2 over `data`: every Triton call of the forward and the
  gradient attends one 32-row chunk of one example to one 32-key chunk;
  the key blocks move by collective-permute, nothing is all-gathered."""
  result = _probe(90)["ring"]
  for name in ("forward", "gradient"):
    calls = result[name]["shapes"]
    assert calls, name
    for shapes in calls:
      assert {tuple(s) for s in shapes if len(s) == 4} <= {
          (1, 32, 4, 64), (1, 32, 2, 64)}, (name, shapes)
    assert result[name]["permutes"] > 0 and result[name]["gathers"] == 0
  entries = len(result["gradient"]["shapes"])
  assert entries > len(result["forward"]["shapes"])


@pytest.mark.parametrize("capability", [80, 90])
def test_own_call_serialises_what_jax_triton_does(capability):
  """`kernel_call.serialized_call` for the plain forward launch: every
  TritonKernel field jax-triton embeds (name, warps, shared memory, the PTX
  itself, capability), the grid and each parameter, equal."""
  result = _probe(capability)["own_call"]
  assert all(result["matches_jax_triton"].values()), result
  assert result["ours"]["name"] == "_attn_fwd"
  assert result["ours"]["scratch_size"] is None  # pointer loads: no scratch


def test_hopper_forward_carries_its_warps_and_scratch_or_is_refused():
  """The TMA, warp-specialized forward asked for 4 warps; it compiles to 12
  and 384 B of descriptor scratch. A jaxlib whose TritonKernel takes a
  scratch size (>= 0.11.2) gets both in the FFI call; an older one refuses
  the launch, naming the version, never launching 4 warps without
  scratch."""
  tma = _probe(90)["own_call"]["tma"]
  if not tma["supports_scratch"]:
    assert "jaxlib >= 0.11.2" in tma["error"]
    assert "global_scratch_size" in tma["error"]
    return
  assert tma["target"] == "triton_kernel_call_ffi"
  kernel = tma["kernel"]
  assert kernel["name"] == "_attn_fwd_tma"
  assert kernel["num_warps"] == 12
  assert kernel["scratch_size"] >= 3 * 128 and kernel["scratch_align"] == 128
  assert kernel["grid"] == [3, 16, 1]


def test_the_fused_backward_zeroes_its_dq_accumulator_in_both_calls():
  """The one-kernel backward accumulates dQ by atomic adds into a float32
  output that jaxlib zeroes first: jax-triton's `zeroed_outputs` and the own
  call's `bytes_to_zero` serialise the same call."""
  fused = _probe(90)["own_call"]["fused"]
  assert all(fused["matches_jax_triton"].values()), fused
  assert fused["zeroed_param"] == fused["dq_bytes"]
