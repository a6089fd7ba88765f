"""The one-kernel backward (`attention._attn_bwd_fused`: dK/dV and, by
float32 atomic adds, dQ) under Triton's interpreter.

It runs where a "bwd_fused" row exists (`block_sizes.optional_row`); the
table holds none until a lease times it, so each test names one through
`block_sizes.override`. Its gradients must match the pure-JAX reference
on every masking case the separate kernels serve. Compiled for sm_90 it
is checked by the compile gate ("fused_bwd" variant) and by
`test_cuda_lowering.py` (the zeroed dQ accumulator in the serialised call).
"""

import jax
import jax.numpy as jnp
import pytest

import attention_test_base as base
import kernels
from kernels.triton import block_sizes
from kernels.triton import launch as triton_launch

_TILE = block_sizes.BlockSizes(16, 32, 4, 1)


@pytest.fixture(autouse=True)
def _interpreter():
  if any(d.platform == "gpu" for d in jax.devices()):
    pytest.skip("a GPU is present: the compiled kernel runs in the gpu tests")
  with kernels.triton_interpret(True):
    yield


def _rows(head_dim: int, dtype: str):
  return {(block_sizes.FUSED_BWD_KERNEL, block_sizes.row_head_dim(head_dim),
           dtype, causal): _TILE for causal in (False, True)}


# Every masking case in float32; the 16-bit dtypes on the richest ones.
_GRID = ([pytest.param(case, "float32", id=f"{case}-float32")
          for case in base.CASES] +
         [pytest.param(case, dtype, id=f"{case}-{dtype}")
          for case in base.CASES if case.name in ("everything", "mqa_causal")
          for dtype in ("bfloat16", "float16")])


@pytest.mark.parametrize("case,dtype", _GRID)
def test_gradients_match_the_reference(case, dtype):
  q, k, v, do, kwargs = base.make_inputs(case, dtype)

  def attention(q, k, v):
    return kernels.attention(q, k, v, implementation="triton", **kwargs)

  with block_sizes.override(_rows(case.head_dim, dtype)):
    with triton_launch.recording() as records:
      jax.make_jaxpr(lambda *a: base.jit_vjp(attention)(*a))(q, k, v, do)
    out, grads = base.jit_vjp(attention)(q, k, v, do)
  names = sorted(r.name for r in records)
  assert names == ["_attn_bwd_fused", "_attn_bwd_preprocess", "_attn_fwd"]
  (fused,) = [r for r in records if r.name == "_attn_bwd_fused"]
  assert fused.zeroed_outputs == (2,)  # the float32 dQ accumulator
  assert fused.args[-1].dtype == jnp.float32
  ref_out, ref_grads = base.reference_vjp(q, k, v, do, kwargs)
  base.assert_close(out, ref_out, dtype, "out", f"{case} out")
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    assert g.dtype == q.dtype
    base.assert_close(g, ref_g, dtype, "grad", f"{case} d{name}")


def test_windows_softcap_and_query_offsets():
  case = base.Case("window", q_len=40, kv_len=56, num_heads=4,
                   num_kv_heads=2, head_dim=32, batch=2,
                   key_lengths=(56, 30))
  q, k, v, do, kwargs = base.make_inputs(case, "float32")
  kwargs.update(window=(9, 3), softcap=15.0,
                q_offset=jnp.asarray([5, 16], jnp.int32))

  def attention(q, k, v):
    return kernels.attention(q, k, v, implementation="triton", **kwargs)

  with block_sizes.override(_rows(32, "float32")):
    with triton_launch.recording() as records:
      jax.make_jaxpr(lambda *a: base.jit_vjp(attention)(*a))(q, k, v, do)
    out, grads = base.jit_vjp(attention)(q, k, v, do)
  assert "_attn_bwd_fused" in [r.name for r in records]
  ref_out, ref_grads = base.reference_vjp(q, k, v, do, kwargs)
  base.assert_close(out, ref_out, "float32", "out", "out")
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    base.assert_close(g, ref_g, "float32", "grad", f"d{name}")


def test_keys_past_the_key_length_never_reach_dq():
  """NaN in the padded keys and values (past key_lengths): the fused dQ,
  which multiplies every key row of a block, stays what the separate
  kernels give (they load padded rows as zeros, and so does the fused
  kernel)."""
  case = base.Case("nan_padding", q_len=33, kv_len=48, num_heads=2,
                   num_kv_heads=1, head_dim=32, batch=2, key_lengths=(48, 21))
  q, k, v, do, kwargs = base.make_inputs(case, "float32")
  padded = jnp.arange(48)[None, :, None, None] >= jnp.asarray(
      [48, 21])[:, None, None, None]
  k, v = (jnp.where(padded, jnp.nan, x) for x in (k, v))

  def grads():
    return base.jit_vjp(lambda q, k, v: kernels.attention(
        q, k, v, implementation="triton", **kwargs))(q, k, v, do)[1]

  separate = grads()
  with block_sizes.override(_rows(32, "float32")):
    fused = grads()
  assert bool(jnp.all(jnp.isfinite(fused[0])))
  base.assert_close(fused[0], separate[0], "float32", "grad", "dq")
  for name, f, s in zip("kv", fused[1:], separate[1:]):
    keep = ~padded[..., 0, 0]
    base.assert_close(f[keep], s[keep], "float32", "grad", f"d{name}")


def test_without_a_row_the_separate_kernels_run():
  q = jnp.zeros((1, 40, 2, 32), jnp.float32)
  with triton_launch.recording() as records:
    jax.make_jaxpr(jax.grad(lambda q: kernels.attention(
        q, q, q, implementation="triton").sum()))(q)
  assert sorted(r.name for r in records) == [
      "_attn_bwd_dkdv", "_attn_bwd_dq", "_attn_bwd_preprocess", "_attn_fwd"]
