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
from kernels import blockwise
from kernels import masking
from kernels import reference

# (atol, rtol) per input dtype, for outputs and (looser) for dQ, dK, dV.
TOLERANCES = {
    "float32": dict(out=(2e-5, 2e-5), grad=(1e-4, 1e-4)),
    "float16": dict(out=(4e-3, 4e-3), grad=(2e-2, 2e-2)),
    "bfloat16": dict(out=(3e-2, 3e-2), grad=(1e-1, 5e-2)),
}
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

  def __str__(self) -> str:
    return self.name


CASES = (
    Case("plain"),
    Case("causal", causal=True),
    Case("causal_ragged", q_len=37, kv_len=37, causal=True),
    Case("q_shorter_causal", q_len=20, kv_len=45, causal=True),
    Case("q_longer_causal", q_len=40, kv_len=24, causal=True),
    Case("gqa_ragged", q_len=33, kv_len=33, num_heads=4, num_kv_heads=2),
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


def _segment_ids(batch: int, length: int, seed: int) -> np.ndarray:
  """Sorted segment ids with 2-3 segments per example."""
  rng = np.random.default_rng(seed)
  ids = np.sort(rng.integers(0, 3, size=(batch, length)), axis=1)
  return ids.astype(np.int32)


def make_inputs(case: Case, dtype: str, seed: int = 0):
  """Random q, k, v, an output cotangent and the masking keyword arguments."""
  kq, kk, kv, kd = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(kq, (case.batch, case.q_len, case.num_heads,
                             case.head_dim), jnp.float32)
  kv_shape = (case.batch, case.kv_len, case.num_kv_heads, case.head_dim)
  k = jax.random.normal(kk, kv_shape, jnp.float32)
  v = jax.random.normal(kv, kv_shape, jnp.float32)
  do = jax.random.normal(kd, q.shape, jnp.float32)
  q, k, v, do = (x.astype(dtype) for x in (q, k, v, do))
  kwargs: dict[str, Any] = dict(causal=case.causal)
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
    out, vjp = jax.vjp(fn, *f32[:3])
    return out, vjp(f32[3])


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
    out, vjp = jax.vjp(lambda q, k, v: self.attention(q, k, v, **kwargs),
                       q, k, v)
    grads = vjp(do)
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

  @pytest.mark.parametrize("dtype", DTYPES)
  @pytest.mark.parametrize("case", CASES, ids=str)
  def test_matches_reference(self, case, dtype):
    self.check_forward_and_grads(case, dtype)

  @pytest.mark.parametrize("case", HEAD_DIM_CASES, ids=str)
  def test_head_dims(self, case):
    self.check_forward_and_grads(case, "bfloat16")

  def test_head_dim_256(self):
    q, k, v, do, kwargs = make_inputs(HEAD_DIM_256, "float16")
    ref_out, ref_grads = reference_vjp(q, k, v, do, kwargs)
    assert_close(self.attention(q, k, v, **kwargs), ref_out, "float16", "out")
    grad_fn = jax.grad(lambda q: self.attention(q, k, v, **kwargs).astype(
        jnp.float32).sum())
    if self.supports_backward_head_dim_256:
      ref_dq = jax.grad(lambda q: kernels.attention(
          q, k.astype(jnp.float32), v.astype(jnp.float32),
          implementation="reference", **kwargs).sum())(q.astype(jnp.float32))
      assert_close(grad_fn(q), ref_dq, "float16", "grad")
    else:
      with pytest.raises(ValueError, match="head_dim"):
        jax.eval_shape(grad_fn, q)

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
