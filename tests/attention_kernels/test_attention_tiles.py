"""The GPU's tile shapes, run under Triton's interpreter.

The interpreter normally uses 16 x 16 tiles (`block_sizes.INTERPRET`), so the
shapes a GPU runs would execute nowhere on CPU. Here every kernel takes its
real `block_sizes.TABLE` row (warps and stages aside: the interpreter has
neither), on problems that cross tile edges: sequences just over two tiles,
q_len != kv_len both ways, causal with BLOCK_M != BLOCK_N, key lengths,
segment ids and grouped-query heads.
"""

import jax
import pytest

import attention_test_base as base
import kernels
from kernels.triton import block_sizes

# The 16-bit rows share tiles per dtype family; float16 is covered by the
# compile gate and by the interpreter grid at small tiles.
_DTYPES = ("bfloat16", "float32")
_HEAD_DIMS = (32, 64, 128)


def _table_rows(head_dim: int, dtype: str, causal: bool, kernels_=None,
                capability=None):
  """The rows a GPU of `capability` compiles (None: TABLE's)."""
  kernels_ = kernels_ or block_sizes.KERNELS
  return {(k, head_dim, dtype, causal): block_sizes.lookup(
      k, head_dim, dtype, causal, interpret=False, capability=capability)
          for k in kernels_ if (k, head_dim, dtype, causal) in block_sizes.TABLE}


def _cases(head_dim: int, dtype: str, capability=None):
  """Two problems per row set, sized from its largest tiles."""
  rows = _table_rows(head_dim, dtype, True, capability=capability)
  over_two_q = 2 * max(r.block_m for r in rows.values()) + 3
  over_two_kv = 2 * max(r.block_n for r in rows.values()) + 5
  return (
      # Queries shorter than keys: dK/dV's first query block rounds down.
      base.Case("q_shorter_gqa_key_lengths", q_len=over_two_q,
                kv_len=max(over_two_kv, over_two_q + 37), num_heads=4,
                num_kv_heads=2, head_dim=head_dim, batch=2, causal=True,
                key_lengths=(max(over_two_kv, over_two_q + 37), 50)),
      # Queries longer than keys, with segments: fully masked query rows.
      base.Case("q_longer_segments", q_len=max(over_two_q, over_two_kv) + 37,
                kv_len=max(over_two_q, over_two_kv), num_heads=2,
                num_kv_heads=1, head_dim=head_dim, batch=1, causal=True,
                segments="pair"),
  )


_GRID = [pytest.param(case, dtype, id=f"hd{hd}-{dtype}-{case}")
         for hd in _HEAD_DIMS for dtype in _DTYPES for case in _cases(hd, dtype)]


@pytest.fixture(autouse=True)
def _interpreter():
  if any(d.platform == "gpu" for d in jax.devices()):
    pytest.skip("a GPU is present: the compiled kernels run these tiles")
  with kernels.triton_interpret(True):
    yield


@pytest.mark.parametrize("case,dtype", _GRID)
def test_table_tiles_forward_and_gradients(case, dtype):
  with block_sizes.override(_table_rows(case.head_dim, dtype, case.causal)):
    _check(case, dtype)


# `block_sizes.CAPABILITY_TABLE`'s rows, where they differ from TABLE's.
_CAPABILITY_GRID = [
    pytest.param(case, capability, id=f"sm{capability}-{case}")
    for capability, rows in block_sizes.CAPABILITY_TABLE.items()
    for (_, hd, dtype, causal) in sorted(rows)
    if dtype == "bfloat16" and causal
    for case in _cases(hd, dtype, capability)[:1]]


@pytest.mark.parametrize("case,capability", _CAPABILITY_GRID)
def test_capability_tiles_forward_and_gradients(case, capability):
  with block_sizes.override(_table_rows(case.head_dim, "bfloat16",
                                        case.causal, capability=capability)):
    _check(case, "bfloat16")


@pytest.mark.parametrize("dtype", _DTYPES)
def test_table_tiles_non_causal(dtype):
  """The non-causal rows (their own table entries) on a ragged GQA problem."""
  rows = _table_rows(64, dtype, False)
  kv_len = 2 * rows[("bwd_dkdv", 64, dtype, False)].block_n + 5
  case = base.Case("non_causal", q_len=2 * rows[("fwd", 64, dtype, False)]
                   .block_m + 3, kv_len=kv_len, num_heads=4, num_kv_heads=1,
                   head_dim=64, batch=1, key_lengths=(kv_len - 20,))
  with block_sizes.override(rows):
    _check(case, dtype)


@pytest.mark.parametrize("dtype", _DTYPES)
def test_table_tiles_head_dim_256_forward(dtype):
  """head_dim 256 has forward rows only (no Triton backward)."""
  rows = _table_rows(256, dtype, True)
  tile = rows[("fwd", 256, dtype, True)]
  case = base.Case("hd256", q_len=2 * tile.block_m + 3,
                   kv_len=2 * tile.block_n + 40, num_heads=2, num_kv_heads=1,
                   head_dim=256, batch=1, causal=True, key_lengths=(60,))
  q, k, v, do, kwargs = base.make_inputs(case, dtype)
  with block_sizes.override(rows):
    out = jax.jit(lambda q, k, v: kernels.attention(
        q, k, v, implementation="triton", **kwargs))(q, k, v)
  ref_out, _ = base.reference_vjp(q, k, v, do, kwargs)
  base.assert_close(out, ref_out, dtype, "out", "hd256 out")


def _check(case, dtype):
  q, k, v, do, kwargs = base.make_inputs(case, dtype)
  out, grads = base.jit_vjp(lambda q, k, v: kernels.attention(
      q, k, v, implementation="triton", **kwargs))(q, k, v, do)
  ref_out, ref_grads = base.reference_vjp(q, k, v, do, kwargs)
  base.assert_close(out, ref_out, dtype, "out", f"{case} out")
  for name, g, ref_g in zip("qkv", grads, ref_grads):
    base.assert_close(g, ref_g, dtype, "grad", f"{case} d{name}")
