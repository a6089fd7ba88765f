"""The Hopper forward (`attention_hopper._attn_fwd_tma`: TMA descriptors, a
warp-specialized loop) under Triton's interpreter, and when it is chosen.

The kernel runs where a "fwd_tma" row exists (`block_sizes.optional_row`); the
table holds none until a lease times it, so each test names one through
`block_sizes.override`. Its output and log-sum-exp must match the pure-JAX
reference like the pointer kernel's, gradients included (the backward
kernels take the Hopper forward's log-sum-exp). Compiled for sm_90 it is
checked by the compile gate ("tma" variant) and by
`test_cuda_lowering.py` (the own call's warps and scratch).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_test_base as base
import kernels
from kernels import masking
from kernels.triton import block_sizes
from kernels.triton import launch as triton_launch
from kernels.triton import ops as triton_ops

_TILE = block_sizes.BlockSizes(16, 16, 4, 2)


def _rows(head_dim: int, dtype: str, causal: bool = False, tile=_TILE):
  """The "fwd_tma" row a call of `head_dim` looks up (its table row's)."""
  return {(block_sizes.TMA_KERNEL, block_sizes.row_head_dim(head_dim), dtype,
           causal): tile}


@pytest.fixture(autouse=True)
def _interpreter():
  if any(d.platform == "gpu" for d in jax.devices()):
    pytest.skip("a GPU is present: the compiled kernel runs in the gpu tests")
  with kernels.triton_interpret(True):
    yield


_CASES = [
    # Ragged lengths (not multiples of the tile), grouped-query heads, key
    # lengths with one shorter than a tile and one in the last tile.
    base.Case("ragged_gqa_key_lengths", q_len=37, kv_len=45, num_heads=4,
              num_kv_heads=2, head_dim=64, batch=2, key_lengths=(45, 7)),
    # Queries longer than keys, head_dim 32, one kv head.
    base.Case("q_longer_mqa", q_len=50, kv_len=33, num_heads=2,
              num_kv_heads=1, head_dim=32, batch=1),
    # A 128-key tile over fewer keys: the one block is partial.
    base.Case("wide_tile", q_len=20, kv_len=100, num_heads=2, num_kv_heads=2,
              head_dim=16, batch=2, key_lengths=(100, 64)),
]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", _CASES, ids=str)
def test_matches_the_reference_forward_and_gradients(case, dtype):
  tile = (block_sizes.BlockSizes(16, 128, 4, 2) if case.name == "wide_tile"
          else _TILE)
  q, k, v, do, kwargs = base.make_inputs(case, dtype)

  def attention(q, k, v):
    return kernels.attention(q, k, v, implementation="triton", **kwargs)

  with block_sizes.override(_rows(case.head_dim, dtype, tile=tile)):
    with triton_launch.recording() as records:
      jax.make_jaxpr(attention)(q, k, v)
    out, grads = base.jit_vjp(attention)(q, k, v, do)
  assert [r.name for r in records] == ["_attn_fwd_tma"]
  assert records[0].own_call
  ref_out, ref_grads = base.reference_vjp(q, k, v, do, kwargs)
  base.assert_close(out, ref_out, dtype, "out", f"{case} out")
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    base.assert_close(g, ref_g, dtype, "grad", f"{case} d{name}")


def test_log_sum_exp_and_rows_without_keys():
  """A zero key length: output 0 and log-sum-exp -inf, as the pointer
  kernel gives; the other example's LSE matches the pointer kernel's."""
  case = base.Case("empty_row", q_len=24, kv_len=40, num_heads=2,
                   num_kv_heads=2, head_dim=32, batch=2, key_lengths=(0, 29))
  q, k, v, _, kwargs = base.make_inputs(case, "bfloat16")
  mask = masking.Mask(causal=False, key_lengths=jnp.asarray(
      kwargs["key_lengths"], jnp.int32))

  def run():
    return triton_ops.attention_triton(q, k, v, mask, 32 ** -0.5,
                                       interpret=True, return_residuals=True)

  pointer_out, pointer_lse = run()
  with block_sizes.override(_rows(32, "bfloat16")):
    out, lse = run()
  assert float(jnp.abs(out[0].astype(jnp.float32)).max()) == 0.0
  assert bool(jnp.all(jnp.isneginf(lse[0])))
  np.testing.assert_allclose(np.asarray(lse[1]), np.asarray(pointer_lse[1]),
                             atol=1e-5, rtol=1e-5)
  base.assert_close(out, pointer_out, "bfloat16", "out", "vs pointer kernel")


_NOT_SERVED = [
    ("causal", dict(causal=True), "bfloat16", 64),
    ("segments", dict(segments=True), "bfloat16", 64),
    ("window", dict(window=(8, 8)), "bfloat16", 64),
    ("softcap", dict(softcap=20.0), "bfloat16", 64),
    ("q_offset", dict(q_offset=True, window=(None, 8)), "bfloat16", 64),
    ("float32", {}, "float32", 64),
    ("head_dim_48", {}, "bfloat16", 48),
]


@pytest.mark.parametrize("name,extra,dtype,head_dim", _NOT_SERVED,
                         ids=[c[0] for c in _NOT_SERVED])
def test_calls_it_does_not_serve_run_the_pointer_kernel(name, extra, dtype,
                                                         head_dim):
  """A "fwd_tma" row for every causal flag and head_dim: calls outside the
  kernel's features still launch `_attn_fwd`."""
  del name
  extra = dict(extra)
  q = jnp.zeros((2, 40, 2, head_dim), dtype)
  if extra.pop("segments", False):
    extra["segment_ids"] = jnp.zeros((2, 40), jnp.int32)
  if extra.pop("q_offset", False):
    extra["q_offset"] = jnp.zeros((2,), jnp.int32)
  rows = {}
  for causal in (False, True):
    rows.update(_rows(block_sizes.row_head_dim(head_dim), dtype, causal))
    rows.update(_rows(head_dim, dtype, causal))
  with block_sizes.override(rows), triton_launch.recording() as records:
    jax.make_jaxpr(lambda q: kernels.attention(
        q, q, q, implementation="triton", **extra))(q)
  assert [r.name for r in records] == ["_attn_fwd"]


def test_no_table_row_selects_it_yet():
  """Traced for sm_90 (compiled mode) without an override: the pointer
  kernel, because no lease has timed the Hopper kernel (the gate compiles
  the candidates); with the candidate row, the Hopper kernel."""
  q = jnp.zeros((1, 256, 2, 128), jnp.bfloat16)
  mask = masking.Mask(causal=False)

  def traced():
    with triton_launch.cuda_compute_capability(90), \
        triton_launch.recording() as records:
      triton_ops.attention_triton(q, q, q, mask, 0.125, interpret=False)
    return [r.name for r in records]

  assert traced() == ["_attn_fwd"]
  with block_sizes.override(_rows(128, "bfloat16", tile=block_sizes
                                  .TMA_CANDIDATES[(128, "bfloat16")])):
    assert traced() == ["_attn_fwd_tma"]
  assert not any(key[0] == block_sizes.TMA_KERNEL
                 for rows in block_sizes.CAPABILITY_TABLE.values()
                 for key in rows)


def test_a_row_on_a_gpu_before_hopper_is_refused():
  """Traced for sm_80 (as the compile gate traces, whatever mode triton was
  imported in): an explicit "fwd_tma" row cannot run there and raises."""
  q = jnp.zeros((1, 64, 2, 64), jnp.bfloat16)
  mask = masking.Mask(causal=False)
  with triton_launch.cuda_compute_capability(80), \
      block_sizes.override(_rows(64, "bfloat16")), \
      triton_launch.recording():
    with pytest.raises(ValueError, match="compute capability >= 90.*80"):
      triton_ops.attention_triton(q, q, q, mask, 0.125, interpret=False)
