"""Every dtype under `jax.jit`: the default and every named implementation.

An implementation that claims a call (its `supports` gives no reason) must run
it under jit, forward and backward, and match the float32 reference; one that
does not must refuse with a ValueError naming the reason.
"""

import contextlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_test_base as base
import kernels
import rnn_transformer as rt
from kernels import backends
from transformer_helpers import init_params
from transformer_helpers import tiny_config
from transformer_helpers import tokens

_CASE = base.Case("dtype_jit", q_len=19, kv_len=19, num_heads=2,
                  num_kv_heads=1, causal=True, key_lengths=(19, 7))


def _claims(implementation: str, dtype: str) -> str | None:
  """The backend's own reason for refusing the call, or None."""
  c = _CASE
  call = backends.AttentionCall(
      batch=c.batch, q_len=c.q_len, kv_len=c.kv_len, num_heads=c.num_heads,
      num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, dtype=np.dtype(
          jnp.dtype(dtype)), causal=c.causal, has_key_lengths=True,
      has_segments=False, platform=jax.default_backend())
  return backends.REGISTRY[implementation].supports(call)


@pytest.mark.parametrize("dtype", base.DTYPES)
@pytest.mark.parametrize("implementation", (None,) + kernels.IMPLEMENTATIONS)
def test_every_dtype_under_jit(implementation, dtype):
  interpret = implementation == "triton" and jax.default_backend() != "gpu"
  ctx = (kernels.triton_interpret(True) if interpret
         else contextlib.nullcontext())
  q, k, v, do, kwargs = base.make_inputs(_CASE, dtype)
  fn = lambda q, k, v: kernels.attention(q, k, v, implementation=implementation,
                                         **kwargs)
  with ctx:
    reason = None if implementation is None else _claims(implementation, dtype)
    if reason is not None:
      with pytest.raises(ValueError, match="cannot serve"):
        jax.jit(fn)(q, k, v)
      return
    out, grads = base.jit_vjp(fn)(q, k, v, do)
  ref_out, ref_grads = base.reference_vjp(q, k, v, do, kwargs)
  chex.assert_trees_all_equal_dtypes((out, *grads), (q, q, k, v))
  base.assert_close(out, ref_out, dtype, "out", "out")
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    base.assert_close(g, ref_g, dtype, "grad", f"d{name}")


def test_transformer_in_float16_under_jit():
  """float16 compute (float32 parameters) matches float32 compute."""
  inputs = tokens((2, 12))
  fp32 = rt.TransformerLM(tiny_config())
  fp16 = rt.TransformerLM(tiny_config(dtype=jnp.float16))
  params = init_params(fp32, inputs)

  def loss(model, params):
    logits = model.apply({"params": params}, inputs).logits
    return jnp.mean(logits.astype(jnp.float32) ** 2)

  got, got_grad = jax.jit(jax.value_and_grad(
      lambda p: loss(fp16, p)))(params)
  want, want_grad = jax.jit(jax.value_and_grad(
      lambda p: loss(fp32, p)))(params)
  assert np.isfinite(float(got))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-2)
  # Relative to the whole gradient: some entries (the key bias) are exactly 0.
  diff = _norm(jax.tree.map(jnp.subtract, got_grad, want_grad))
  assert diff < 1e-2 * _norm(want_grad)


def _norm(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                           for x in jax.tree.leaves(tree))))
