"""The optional kernels compiled on a GPU: the Hopper forward (TMA, warp
specialization) and the one-kernel backward, at their candidate tiles, and
the library's own call against jax-triton's. All `gpu`-marked: skipped with
a reason where no CUDA GPU is visible (their CPU checks are the interpreter
tests, the compile gate and the lowering tests)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_test_base as base
import kernels
from kernels.triton import block_sizes
from kernels.triton import launch as triton_launch

pytestmark = pytest.mark.gpu


def _inputs(batch, q_len, kv_len, heads, kv_heads, head_dim, dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim))
  k = jax.random.normal(keys[1], (batch, kv_len, kv_heads, head_dim))
  v = jax.random.normal(keys[2], (batch, kv_len, kv_heads, head_dim))
  do = jax.random.normal(keys[3], q.shape)
  return [x.astype(dtype) for x in (q, k, v, do)]


def _require_hopper():
  capability = triton_launch.target_capability()
  if capability is None or capability < 90:
    pytest.skip(f"the Hopper forward needs sm_90 or newer; GPU 0 is "
                f"{capability}")
  from kernels.triton import kernel_call  # pylint: disable=g-import-not-at-top

  if not kernel_call.supports_global_scratch():
    pytest.skip(f"the own call needs jaxlib >= {kernel_call.SCRATCH_JAXLIB}")


def _check(q, k, v, do, dtype, **kwargs):
  def attention(q, k, v):
    return kernels.attention(q, k, v, implementation="triton", **kwargs)

  out, grads = base.jit_vjp(attention)(q, k, v, do)
  ref_out, ref_grads = base.reference_vjp(q, k, v, do, kwargs)
  base.assert_close(out, ref_out, dtype, "out", "out")
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    base.assert_close(g, ref_g, dtype, "grad", f"d{name}")


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_hopper_forward_at_its_candidate_tile(head_dim, dtype):
  """Ragged lengths, grouped-query heads, key lengths; the backward kernels
  take its log-sum-exp."""
  _require_hopper()
  q, k, v, do = _inputs(2, 1000, 1100, 8, 2, head_dim, dtype)
  row = {(block_sizes.TMA_KERNEL, head_dim, dtype, False):
         block_sizes.TMA_CANDIDATES[(head_dim, dtype)]}
  with block_sizes.override(row):
    _check(q, k, v, do, dtype,
           key_lengths=jnp.asarray([1100, 517], jnp.int32))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_fused_backward_at_its_candidate_tile(head_dim, causal):
  dtype = "bfloat16"
  q, k, v, do = _inputs(2, 900, 1000, 8, 2, head_dim, dtype, seed=1)
  row = {(block_sizes.FUSED_BWD_KERNEL, head_dim, dtype, causal):
         block_sizes.FUSED_BWD_CANDIDATES[(head_dim, dtype)]}
  with block_sizes.override(row):
    _check(q, k, v, do, dtype, causal=causal,
           key_lengths=jnp.asarray([1000, 611], jnp.int32))


def test_own_call_gives_jax_tritons_results_bit_for_bit(monkeypatch):
  """The same PTX on the same grid through either custom call."""
  _require_hopper()
  q, k, v, do = _inputs(2, 700, 700, 4, 2, 128, "bfloat16", seed=2)

  def attention(q, k, v):
    return kernels.attention(q, k, v, causal=True, implementation="triton")

  def run():
    targets = jax.jit(base.jit_vjp(attention)).lower(q, k, v, do).as_text()
    return base.jit_vjp(attention)(q, k, v, do), targets

  (jax_triton_out, jax_triton_grads), text = run()
  assert "triton_kernel_call_ffi" not in text
  monkeypatch.setenv(triton_launch.CALL_ENV, "own")
  jax.clear_caches()
  (own_out, own_grads), text = run()
  assert text.count("triton_kernel_call_ffi") == 4  # fwd, delta, dK/dV, dQ
  np.testing.assert_array_equal(np.asarray(own_out),
                                np.asarray(jax_triton_out))
  for own, theirs in zip(own_grads, jax_triton_grads):
    np.testing.assert_array_equal(np.asarray(own), np.asarray(theirs))
