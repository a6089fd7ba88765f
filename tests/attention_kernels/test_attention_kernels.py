"""Triton kernels (interpreted on CPU, compiled on GPU) and the blockwise
fallback against the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_test_base as base
import kernels
from kernels import masking


class TestTritonInterpret(base.AttentionTestBase):
  implementation = "triton"
  mode = "interpret"
  supports_backward_head_dim_256 = False


@pytest.mark.gpu
class TestTritonGpu(base.AttentionTestBase):
  implementation = "triton"
  mode = "gpu"
  supports_backward_head_dim_256 = False


class TestBlockwise(base.AttentionTestBase):
  implementation = "blockwise"
  mode = "fallback"


_XLA_CASES = tuple(c for c in base.CASES
                   if not (c.causal and c.q_len != c.kv_len))


@pytest.mark.parametrize("case,dtype", [(c, "float32") for c in _XLA_CASES] +
                         [(_XLA_CASES[-1], "bfloat16")], ids=str)
def test_reference_matches_jax_xla(case, dtype):
  """The oracle against jax.nn.dot_product_attention where it applies."""
  q, k, v, _, kwargs = base.make_inputs(case, dtype)
  seg_mask = None
  if "segment_ids" in kwargs:
    ids = kwargs["segment_ids"]
    q_seg, kv_seg = ids if isinstance(ids, tuple) else (ids, ids)
    seg_mask = q_seg[:, None, :, None] == kv_seg[:, None, None, :]
  want = jax.nn.dot_product_attention(
      q, k, v, mask=seg_mask, scale=case.scale, is_causal=case.causal,
      key_value_seq_lengths=kwargs.get("key_lengths"), implementation="xla")
  got = jax.jit(lambda q, k, v: kernels.attention(
      q, k, v, implementation="reference", **kwargs))(q, k, v)
  # jax.nn gives rows without any allowed key the mean of V; compare the
  # other rows, and those to zero.
  q_len, kv_len = case.q_len, case.kv_len
  mask = masking.Mask(
      causal=case.causal, key_lengths=kwargs.get("key_lengths"),
      q_segment_ids=None if seg_mask is None else q_seg,
      kv_segment_ids=None if seg_mask is None else kv_seg)
  rows = np.asarray(masking.allowed(mask, jnp.arange(q_len),
                                    jnp.arange(kv_len), q_len,
                                    kv_len).any(-1))
  rows = np.broadcast_to(rows, q.shape[:2])
  base.assert_close(got[rows], want[rows], dtype, "out")
  base.assert_close(got[~rows], np.zeros_like(got[~rows]), dtype, "out")


@pytest.mark.parametrize("case", _XLA_CASES[-4:], ids=str)
def test_xla_backend_matches_reference(case):
  q, k, v, do, kwargs = base.make_inputs(case, "float32")
  ref_out, ref_grads = base.reference_vjp(q, k, v, do, kwargs)
  with jax.default_matmul_precision("highest"):
    out, grads = base.jit_vjp(lambda q, k, v: kernels.attention(
        q, k, v, implementation="xla", **kwargs))(q, k, v, do)
  base.assert_close(out, ref_out, "float32", "out")
  for g, r in zip(grads, ref_grads):
    base.assert_close(g, r, "float32", "grad")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", base.DTYPES)
@pytest.mark.parametrize("q_len,kv_len", [(100, 100), (64, 130), (130, 64)])
@pytest.mark.parametrize("head_dim", (64, 128))
def test_triton_interpret_larger(q_len, kv_len, head_dim, dtype):
  case = base.Case("larger", q_len=q_len, kv_len=kv_len, num_heads=4,
                   num_kv_heads=2, head_dim=head_dim, causal=True,
                   key_lengths=(kv_len // 2, kv_len))
  q, k, v, do, kwargs = base.make_inputs(case, dtype)
  ref_out, ref_grads = base.reference_vjp(q, k, v, do, kwargs)
  with kernels.triton_interpret():
    out, grads = base.jit_vjp(lambda q, k, v: kernels.attention(
        q, k, v, implementation="triton", **kwargs))(q, k, v, do)
  base.assert_close(out, ref_out, dtype, "out")
  for g, r in zip(grads, ref_grads):
    base.assert_close(g, r, dtype, "grad")
  assert not jnp.isnan(out.astype(jnp.float32)).any()
