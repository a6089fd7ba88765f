"""Shared cases, tolerances and checks of the attention tests.

`AttentionTestBase` compares one implementation against the float32 reference;
subclasses pick the implementation and the mode it runs in ("interpret": the
Triton kernels under Triton's CPU interpreter; "gpu": compiled; "fallback":
pure JAX).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels
import tolerances
from kernels import blockwise

# (atol, rtol) per input dtype, for outputs and (looser) for dQ, dK, dV.
TOLERANCES = tolerances.ATTENTION
DTYPES = tuple(TOLERANCES)


@dataclasses.dataclass(frozen=True)
class Case:
  """One attention problem; lengths are mostly not multiples of 16."""

  name: str
  q_len: int = 32
  kv_len: int = 32
  num_heads: int = 2
  num_kv_heads: int = 2
  head_dim: int = 32
  batch: int = 2
  causal: bool = False
  key_lengths: tuple[int, ...] | None = None
  # "single": one (batch, seq) array; "pair": (q, kv) arrays.
  segments: str | None = None
  scale: float | None = None

  def __str__(self) -> str:
    return self.name


CASES = (
    Case("plain"),
    Case("causal", causal=True),
    Case("causal_ragged", q_len=37, kv_len=37, causal=True),
    Case("q_shorter_causal", q_len=20, kv_len=45, causal=True),
    Case("q_longer_causal", q_len=40, kv_len=24, causal=True),
    Case("gqa_ragged_scale", q_len=33, kv_len=33, num_heads=4,
         num_kv_heads=2, scale=0.3),
    Case("mqa_causal", q_len=19, kv_len=41, num_heads=4, num_kv_heads=1,
         causal=True),
    Case("key_lengths_zero", q_len=24, kv_len=30, key_lengths=(0, 21)),
    Case("key_lengths_causal", q_len=35, kv_len=35, causal=True,
         key_lengths=(17, 35)),
    Case("segments", q_len=40, kv_len=40, segments="single"),
    Case("segment_pair_gqa", q_len=24, kv_len=40, num_heads=4,
         num_kv_heads=2, segments="pair"),
    Case("everything", q_len=37, kv_len=37, num_heads=4, num_kv_heads=1,
         causal=True, key_lengths=(30, 11), segments="single"),
)
HEAD_DIM_CASES = (
    Case("head_dim_64", q_len=20, kv_len=20, num_heads=1, num_kv_heads=1,
         head_dim=64, batch=1, causal=True),
    Case("head_dim_128", q_len=20, kv_len=20, num_heads=1, num_kv_heads=1,
         head_dim=128, batch=1, key_lengths=(13,)),
)
HEAD_DIM_256 = Case("head_dim_256", q_len=20, kv_len=20, num_heads=1,
                    num_kv_heads=1, head_dim=256, batch=1, causal=True)


# Every case in float32; the 16-bit dtypes on the cases that combine the most
# features (the full product is marked slow to keep CI within budget).
_HALF_CASES = ("causal_ragged", "mqa_causal", "key_lengths_zero",
               "segment_pair_gqa", "everything")
DTYPE_GRID = tuple(
    pytest.param(case, dtype, marks=() if dtype == "float32" or
                 case.name in _HALF_CASES else pytest.mark.slow,
                 id=f"{case}-{dtype}")
    for dtype in DTYPES for case in CASES)


def _segment_ids(batch: int, length: int, seed: int) -> np.ndarray:
  """Sorted segment ids with 2-3 segments per example."""
  rng = np.random.default_rng(seed)
  ids = np.sort(rng.integers(0, 3, size=(batch, length)), axis=1)
  return ids.astype(np.int32)


def make_inputs(case: Case, dtype: str, seed: int = 0):
  """Random q, k, v, an output cotangent and the masking keyword arguments."""
  # numpy draws: eager jax.random ops would each cost a compilation.
  rng = np.random.default_rng(seed)
  q_shape = (case.batch, case.q_len, case.num_heads, case.head_dim)
  kv_shape = (case.batch, case.kv_len, case.num_kv_heads, case.head_dim)
  q, k, v, do = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
                 for shape in (q_shape, kv_shape, kv_shape, q_shape))
  kwargs: dict[str, Any] = dict(causal=case.causal, scale=case.scale)
  if case.key_lengths is not None:
    kwargs["key_lengths"] = jnp.asarray(case.key_lengths, jnp.int32)
  if case.segments == "single":
    kwargs["segment_ids"] = jnp.asarray(_segment_ids(case.batch, case.q_len, 1))
  elif case.segments == "pair":
    kwargs["segment_ids"] = (
        jnp.asarray(_segment_ids(case.batch, case.q_len, 1)),
        jnp.asarray(_segment_ids(case.batch, case.kv_len, 2)))
  return q, k, v, do, kwargs


def reference_vjp(q, k, v, do, kwargs):
  """Reference output and (dq, dk, dv) in float32 at precision HIGHEST."""
  f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
  fn = lambda q, k, v: kernels.attention(q, k, v, implementation="reference",
                                         **kwargs)
  with jax.default_matmul_precision("highest"):
    return jit_vjp(fn)(*f32)


def jit_vjp(fn):
  """jit(q, k, v, do -> (fn(q, k, v), vjp(do))): one compilation, no eager ops."""

  def run(q, k, v, do):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(do)

  return jax.jit(run)


def assert_close(actual, expected, dtype: str, kind: str, name: str = ""):
  atol, rtol = TOLERANCES[dtype][kind]
  actual = np.asarray(jnp.asarray(actual, jnp.float32))
  assert not np.isnan(actual).any(), f"{name}: NaN"
  np.testing.assert_allclose(actual, np.asarray(expected, np.float32),
                             atol=atol, rtol=rtol, err_msg=name)


def _has_gpu() -> bool:
  return any(d.platform == "gpu" for d in jax.devices())


class AttentionTestBase:
  """Compares `implementation` in `mode` with the reference."""

  implementation: str = ""
  mode: str = ""  # "interpret", "gpu" or "fallback"
  supports_backward_head_dim_256 = True

  @pytest.fixture(autouse=True)
  def _mode(self, monkeypatch):
    if self.mode == "interpret" and _has_gpu():
      pytest.skip("a GPU is present: the compiled kernels are tested instead "
                  "(triton holds one mode per process)")
    # Several key blocks even at the small test lengths.
    monkeypatch.setattr(blockwise, "DEFAULT_BLOCK_K", 16)
    ctx = (kernels.triton_interpret(self.mode == "interpret")
           if self.mode in ("interpret", "gpu") else contextlib.nullcontext())
    with ctx:
      yield

  def attention(self, q, k, v, **kwargs):
    return kernels.attention(q, k, v, implementation=self.implementation,
                             **kwargs)

  def check_forward_and_grads(self, case: Case, dtype: str):
    q, k, v, do, kwargs = make_inputs(case, dtype)
    out, grads = jit_vjp(
        lambda q, k, v: self.attention(q, k, v, **kwargs))(q, k, v, do)
    ref_out, ref_grads = reference_vjp(q, k, v, do, kwargs)
    chex.assert_trees_all_equal_dtypes(out, q)
    chex.assert_shape(out, q.shape)
    assert_close(out, ref_out, dtype, "out", f"{case} out")
    for name, g, ref_g, x in zip("qkv", grads, ref_grads, (q, k, v)):
      chex.assert_trees_all_equal_dtypes(g, x)
      assert_close(g, ref_g, dtype, "grad", f"{case} d{name}")
    if case.key_lengths is not None and 0 in case.key_lengths:
      empty = case.key_lengths.index(0)
      np.testing.assert_array_equal(np.asarray(out[empty], np.float32), 0.0)
      np.testing.assert_array_equal(np.asarray(grads[0][empty], np.float32),
                                    0.0)

  @pytest.mark.parametrize("case,dtype", DTYPE_GRID)
  def test_matches_reference(self, case, dtype):
    self.check_forward_and_grads(case, dtype)

  @pytest.mark.parametrize("case", HEAD_DIM_CASES, ids=str)
  def test_head_dims(self, case):
    self.check_forward_and_grads(case, "bfloat16")

  def test_head_dim_256(self):
    q, k, v, do, kwargs = make_inputs(HEAD_DIM_256, "float16")
    ref_out, ref_grads = reference_vjp(q, k, v, do, kwargs)
    if self.supports_backward_head_dim_256:
      out, grads = jit_vjp(
          lambda q, k, v: self.attention(q, k, v, **kwargs))(q, k, v, do)
      for g, ref_g in zip(grads, ref_grads):
        assert_close(g, ref_g, "float16", "grad")
    else:
      out = jax.jit(lambda q, k, v: self.attention(q, k, v, **kwargs))(q, k, v)
      grad_fn = jax.grad(lambda q: self.attention(q, k, v, **kwargs).astype(
          jnp.float32).sum())
      with pytest.raises(ValueError, match="head_dim"):
        jax.eval_shape(grad_fn, q)
    assert_close(out, ref_out, "float16", "out")

  def test_jit_vmap_grad(self):
    case = Case("transforms", q_len=21, kv_len=27, num_heads=2,
                num_kv_heads=1, batch=1, causal=True, key_lengths=(25,))
    xs = [make_inputs(case, "float32", seed) for seed in range(2)]
    q, k, v, do = (jnp.stack([x[i] for x in xs]) for i in range(4))
    kwargs = xs[0][4]

    def loss(impl, q, k, v, do):
      out = kernels.attention(q, k, v, implementation=impl, **kwargs)
      return jnp.sum(out * do)

    def batched(impl):
      grad = jax.grad(loss, argnums=(1, 2, 3))
      return jax.jit(jax.vmap(lambda *a: (loss(impl, *a), grad(impl, *a))))

    got = batched(self.implementation)(q, k, v, do)
    with jax.default_matmul_precision("highest"):
      want = batched("reference")(q, k, v, do)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert_close(g, w, "float32", "grad")
