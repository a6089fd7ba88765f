"""Local windows, logit soft-capping and the log-sum-exp residual against a
brute-force float64 oracle, in every implementation that claims them: the
reference, the blockwise fallback, "xla" (windows, square only) and the
Triton kernels under the interpreter."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import attention_test_base as base
import kernels
import tolerances
from kernels.triton import launch as triton_launch

IMPLEMENTATIONS = ("reference", "blockwise", "triton")


def brute_force(q, k, v, *, causal=False, window=None, softcap=None,
                key_lengths=None, segment_ids=None, scale=None,
                q_offset=None):
  """Attention and log-sum-exp in float64 numpy, mask by explicit loops."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  batch, q_len, heads, head_dim = q.shape
  kv_len, kv_heads = k.shape[1], k.shape[2]
  scale = 1.0 / np.sqrt(head_dim) if scale is None else scale
  left, right = window or (None, None)
  out = np.zeros(q.shape)
  lse = np.full((batch, heads, q_len), -np.inf)
  for b in range(batch):
    for h in range(heads):
      kh = h // (heads // kv_heads)
      for i in range(q_len):
        aligned = i + (kv_len - q_len if q_offset is None else q_offset[b])
        keys = [j for j in range(kv_len)
                if (not causal or j <= aligned)
                and (left is None or j >= aligned - left)
                and (right is None or j <= aligned + right)
                and (key_lengths is None or j < key_lengths[b])
                and (segment_ids is None or
                     segment_ids[b, i] == segment_ids[b, j])]
        if not keys:
          continue
        s = np.array([q[b, i, h] @ k[b, j, kh] for j in keys]) * scale
        if softcap is not None:
          s = softcap * np.tanh(s / softcap)
        lse[b, h, i] = np.log(np.sum(np.exp(s - s.max()))) + s.max()
        p = np.exp(s - lse[b, h, i])
        out[b, i, h] = p @ v[b, keys, kh]
  return out, lse


def _inputs(batch, q_len, kv_len, heads, kv_heads, head_dim, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (batch, q_len, heads, head_dim)),
          jax.random.normal(keys[1], (batch, kv_len, kv_heads, head_dim)),
          jax.random.normal(keys[2], (batch, kv_len, kv_heads, head_dim)))


def _run(implementation, *args, **kwargs):
  with triton_launch.triton_interpret(implementation == "triton"):
    return kernels.attention(*args, implementation=implementation, **kwargs)


# (name, q_len, kv_len, heads, kv_heads, options): lengths cross the
# interpreter's 16-32 wide blocks, so fully masked blocks are skipped.
CASES = [
    ("sliding_causal", 70, 70, 4, 2, dict(causal=True, window=(9, 0))),
    ("non_causal_window", 50, 50, 2, 2, dict(window=(5, 3))),
    ("right_only_ragged", 37, 45, 2, 1, dict(window=(None, 2))),
    ("left_only_bottom_right", 20, 45, 4, 4, dict(window=(6, None))),
    ("window_key_lengths", 40, 40, 2, 2,
     dict(causal=True, window=(12, 0), key_lengths=(40, 17))),
    ("softcap", 33, 33, 2, 2, dict(softcap=2.0, scale=1.0)),
    ("softcap_window_gqa", 41, 41, 4, 2,
     dict(causal=True, window=(16, 0), softcap=3.0)),
    ("zero_window_causal", 20, 20, 2, 2, dict(causal=True, window=(0, 0))),
    # Windows several blocks wide: the kernels' unmasked interior blocks lie
    # between masked edges on both sides, with ragged ends and key lengths.
    ("wide_window_interior", 99, 90, 2, 1, dict(window=(40, 21))),
    ("wide_causal_window_key_lengths", 97, 97, 2, 2,
     dict(causal=True, window=(50, 0), key_lengths=(97, 70))),
    # Query offsets: a decode chunk written at cache index 40 / 76 of a
    # 100-key cache; offsets before the keys, past them and negative, with
    # windows on both sides (some rows see no key).
    ("offset_decode_chunk", 24, 100, 2, 1,
     dict(causal=True, q_offset=(40, 76), key_lengths=(64, 100))),
    ("offset_window_negative", 30, 60, 2, 2,
     dict(window=(10, 4), q_offset=(-20, 45))),
    ("offset_sliding_past_the_keys", 33, 50, 4, 2,
     dict(causal=True, window=(7, 0), q_offset=(100, 17), softcap=3.0)),
]


def _options(options):
  options = dict(options)
  for name in ("key_lengths", "q_offset"):
    if name in options:
      options[name] = jnp.asarray(options[name], jnp.int32)
  return options


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("name,q_len,kv_len,heads,kv_heads,options", CASES,
                         ids=[c[0] for c in CASES])
def test_outputs_and_log_sum_exp_match_brute_force(
    implementation, name, q_len, kv_len, heads, kv_heads, options):
  del name
  q, k, v = _inputs(2, q_len, kv_len, heads, kv_heads, 32)
  out, lse = _run(implementation, q, k, v, return_residuals=True,
                  **_options(options))
  want_out, want_lse = brute_force(q, k, v, **options)
  tol = tolerances.output_tol(jnp.float32)
  chex.assert_trees_all_close(out, want_out.astype(np.float32), **tol)
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
  finite = np.isfinite(want_lse)
  np.testing.assert_allclose(np.asarray(lse)[finite], want_lse[finite],
                             **tol)
  chex.assert_shape(lse, (2, heads, q_len))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ["softcap_window_gqa", "non_causal_window",
                                  "window_key_lengths",
                                  "offset_window_negative"])
def test_gradients_through_output_and_log_sum_exp_match_reference(
    implementation, case):
  _, q_len, kv_len, heads, kv_heads, options = next(
      c for c in CASES if c[0] == case)
  q, k, v = _inputs(2, q_len, kv_len, heads, kv_heads, 32, seed=1)
  options = _options(options)

  def loss(impl, q, k, v):
    out, lse = _run(impl, q, k, v, return_residuals=True, **options)
    # sin keeps the lse's cotangent away from a constant; empty rows are
    # -inf and take no gradient.
    return jnp.sum(out * out) + jnp.sum(
        jnp.where(jnp.isfinite(lse), jnp.sin(lse), 0.0))

  got = jax.grad(lambda *a: loss(implementation, *a), argnums=(0, 1, 2))(
      q, k, v)
  want = jax.grad(lambda *a: loss("reference", *a), argnums=(0, 1, 2))(
      q, k, v)
  chex.assert_trees_all_close(got, want,
                              **tolerances.gradient_tol(jnp.float32))


def test_reference_softcap_gradient_is_exact():
  """The reference's softcap backward, checked by finite differences."""
  q, k, v = _inputs(1, 6, 6, 1, 1, 8)
  def f(q):
    return jnp.sum(kernels.attention(q, k, v, softcap=0.7, scale=2.0,
                                     implementation="reference") ** 2)

  check_grads(f, (q,), order=1, modes=("rev",), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS + ("xla",))
def test_non_causal_window_never_sees_beyond_its_right_edge(implementation):
  """The class of bug of jax PR #39576: a non-causal window that attended to
  future keys. Values are one-hot key positions, so each output row is the
  query's attention distribution; its mass right of i + right must be 0."""
  length, right = 32, 2
  q, k, _ = _inputs(1, length, length, 1, 1, 32, seed=2)
  v = jnp.eye(length)[None, :, None, :]
  probs = _run(implementation, q, k, v, window=(4, right))[0, :, 0]
  steps = np.arange(length)
  beyond = steps[None, :] > steps[:, None] + right
  before = steps[None, :] < steps[:, None] - 4
  assert np.all(np.asarray(probs)[beyond | before] == 0.0)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_residuals_merge_two_halves_of_the_keys(implementation):
  """Split-KV / ring attention: attending to each half of the keys and
  merging with the log-sum-exps gives attention over all keys."""
  q, k, v = _inputs(2, 24, 40, 4, 2, 32, seed=3)
  o1, l1 = _run(implementation, q, k[:, :17], v[:, :17],
                return_residuals=True)
  o2, l2 = _run(implementation, q, k[:, 17:], v[:, 17:],
                return_residuals=True)
  lse = jnp.logaddexp(l1, l2)

  def weight(part):  # (b, h, q) -> (b, q, h, 1)
    return jnp.exp(part - lse).transpose(0, 2, 1)[..., None]

  merged = weight(l1) * o1 + weight(l2) * o2
  full, full_lse = _run(implementation, q, k, v, return_residuals=True)
  tol = tolerances.output_tol(jnp.float32)
  chex.assert_trees_all_close(merged, full, **tol)
  chex.assert_trees_all_close(lse, full_lse, **tol)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_rows_without_keys_have_minus_infinite_log_sum_exp(implementation):
  q, k, v = _inputs(2, 8, 8, 2, 2, 32)
  out, lse = _run(implementation, q, k, v, return_residuals=True,
                  key_lengths=jnp.array([0, 8], jnp.int32))
  assert np.all(np.isneginf(lse[0])) and np.all(np.isfinite(lse[1]))
  assert not np.any(out[0])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(window=(3, 1, 2)), ValueError, "window must be an int >= 0 or a pair"),
    (dict(window=-2), ValueError, "window left side"),
    (dict(window=True), ValueError, "window must be an int"),
    (dict(scale=jnp.ones((2,))), TypeError, "scale must be a real number"),
    (dict(scale="0.5"), TypeError, "scale must be a real number"),
    (dict(scale=np.float32(np.nan)), ValueError, "scale must be finite"),
    (dict(scale=1e39), ValueError, "scale must be finite in float32"),
    (dict(window=(None, 2**31 - 5)), ValueError, "window right side"),
    (dict(window=(2**40, 0)), ValueError, "window left side"),
    (dict(q_offset=jnp.zeros((1,), jnp.int32)), ValueError,
     "q_offset only moves the causal and window masks"),
    (dict(q_offset=np.array([2**32]), causal=True), ValueError,
     r"q_offset must lie in"),
    (dict(key_lengths=np.array([2**32])), ValueError,
     r"key_lengths must lie in \[0, kv_len=8\]"),
    (dict(key_lengths="ab"), TypeError, "key_lengths must be an integer"),
    (dict(segment_ids=np.array([[2**32] * 8])), ValueError,
     "q_segment_ids must lie in"),
    (dict(implementation=["xla"]), ValueError, "implementation must be"),
    (dict(window=(-1, 0)), ValueError, "window left side"),
    (dict(window=(0, 1.5)), ValueError, "window right side"),
    (dict(softcap=0.0), ValueError, "softcap must be a positive"),
    (dict(softcap=float("inf")), ValueError, "softcap must be a positive"),
    (dict(return_residuals=1), TypeError, "return_residuals must be a bool"),
    (dict(softcap=5.0, implementation="xla"), ValueError,
     "no logit soft-capping"),
    (dict(return_residuals=True, implementation="xla"), ValueError,
     "carries no gradient"),
    (dict(window=(2, 0), implementation="cudnn"), ValueError, "cuDNN"),
    (dict(q_offset=jnp.zeros((1,), jnp.int32), causal=True,
          implementation="xla"), ValueError, "has no query offset"),
    (dict(q_offset=jnp.zeros((2,), jnp.int32), causal=True), ValueError,
     "q_offset"),
    (dict(q_offset=jnp.zeros((1,), jnp.float32), causal=True), TypeError,
     "q_offset"),
])
def test_bad_or_unservable_arguments_raise_named_errors(kwargs, error, match):
  q, k, v = _inputs(1, 8, 8, 2, 2, 32)
  with pytest.raises(error, match=match):
    kernels.attention(q, k, v, **kwargs)


@pytest.mark.parametrize("scale", [0.3, np.float32(0.3), jnp.float32(0.3),
                                   np.array(0.3)])
def test_int_window_and_numeric_scales_follow_jax_nn(scale):
  """jax.nn's conventions: `local_window_size=w` is `(w, w)`, and any
  concrete real scale is taken."""
  q, k, v = _inputs(1, 16, 16, 2, 2, 32, seed=4)
  want = jax.nn.dot_product_attention(q, k, v, scale=0.3,
                                      local_window_size=3)
  got = kernels.attention(q, k, v, scale=scale, window=3,
                          implementation="reference")
  chex.assert_trees_all_close(got, want, **tolerances.output_tol(jnp.float32))


def test_a_traced_scale_is_refused_by_name():
  q, k, v = _inputs(1, 8, 8, 2, 2, 32)
  with pytest.raises(TypeError, match="scale must be a concrete number"):
    jax.jit(lambda s: kernels.attention(q, k, v, scale=s))(0.3)


@pytest.mark.parametrize("shape_k", [(1, 8, 0, 32), (1, 8, 2, 0)])
def test_empty_head_axes_are_refused_by_name(shape_k):
  q = jnp.ones(shape_k[:2] + (2,) + shape_k[3:])
  k = jnp.ones(shape_k)
  with pytest.raises(ValueError, match="must be at least 1"):
    kernels.attention(q, k, k)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS + ("xla",))
def test_no_keys_at_all_gives_zero_rows(implementation):
  q = jnp.ones((1, 4, 2, 32))
  k = jnp.ones((1, 0, 2, 32))
  out = _run(implementation, q, k, k)
  chex.assert_shape(out, q.shape)
  assert not np.any(np.asarray(out))


def test_mesh_paths_check_concrete_values_as_the_plain_path():
  """The per-shard and ring paths see the same checks on the global
  arrays (inside shard_map the values are traced and unknowable)."""
  q, k, v = _inputs(1, 8, 8, 2, 2, 32)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  for extra in (dict(batch_axes="data"), dict(context_axis="data")):
    with pytest.raises(ValueError, match=r"key_lengths must lie"):
      kernels.attention(q, k, v, mesh=mesh, key_lengths=jnp.array([99]),
                        implementation="reference", **extra)
    with pytest.raises(TypeError, match="return_residuals must be a bool"):
      kernels.attention(q, k, v, mesh=mesh, return_residuals=1,
                        implementation="reference", **extra)


def test_xla_refuses_a_bottom_right_window_it_would_misalign():
  q, k, v = _inputs(1, 8, 12, 2, 2, 32)
  with pytest.raises(ValueError, match="top-left"):
    kernels.attention(q, k, v, window=(2, 0), implementation="xla")
  # Automatic dispatch serves it with an implementation that aligns right.
  got = kernels.attention(q, k, v, window=(2, 0))
  want, _ = brute_force(q, k, v, window=(2, 0))
  chex.assert_trees_all_close(got, want.astype(np.float32),
                              **tolerances.output_tol(jnp.float32))


# One head dim per tile width runs by default (16 in the 16 tile, 24 in 32,
# 80 in 128, 160 in 256); the rest are slow-marked.
@pytest.mark.parametrize("head_dim", [
    pytest.param(8, marks=pytest.mark.slow), 16, 24,
    pytest.param(48, marks=pytest.mark.slow), 80,
    pytest.param(96, marks=pytest.mark.slow), 160])
def test_triton_any_head_dim_multiple_of_8(head_dim):
  """Padded head-dim tiles (masked columns) against the reference: outputs
  for every head dim, gradients up to 128."""
  q, k, v = _inputs(1, 20, 27, 2, 1, head_dim, seed=head_dim)

  def loss(impl, q, k, v):
    return jnp.sum(_run(impl, q, k, v, causal=True, window=(11, 0)) ** 2)

  out = _run("triton", q, k, v, causal=True, window=(11, 0))
  want, _ = brute_force(q, k, v, causal=True, window=(11, 0))
  chex.assert_trees_all_close(out, want.astype(np.float32),
                              **tolerances.output_tol(jnp.float32))
  if head_dim <= 128:
    grads = [jax.grad(lambda *a, impl=impl: loss(impl, *a), argnums=(0, 1, 2))(
        q, k, v) for impl in ("triton", "reference")]
    chex.assert_trees_all_close(*grads,
                                **tolerances.gradient_tol(jnp.float32))
  else:  # the forward serves it; the backward names its limit
    with pytest.raises(ValueError, match="backward supports head_dim <= 128"):
      jax.grad(lambda q: loss("triton", q, k, v))(q)


# Compiled kernels at the GPU's own tiles (16-bit rows 32-128 wide, float32
# 16-64): windows several tiles wide put unmasked interior blocks between the
# masked edges, with ragged
# ends, key lengths, GQA, q_len != kv_len and a padded head dim (96). The
# oracle is the float32 reference at precision HIGHEST, itself checked
# against `brute_force` above.
GPU_CASES = [
    ("wide_window_gqa", 1000, 1000, 4, 2, 64,
     dict(window=(300, 170))),
    ("causal_window_softcap_key_lengths", 1024, 1024, 4, 4, 128,
     dict(causal=True, window=(400, 0), softcap=5.0,
          key_lengths=(1024, 700))),
    ("bottom_right_causal_window", 500, 1100, 2, 1, 128,
     dict(causal=True, window=(333, 0))),
    ("padded_head_dim_window", 700, 700, 2, 2, 96,
     dict(window=(250, 90), softcap=4.0)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(
    "name,q_len,kv_len,heads,kv_heads,head_dim,options", GPU_CASES,
    ids=[c[0] for c in GPU_CASES])
def test_compiled_kernels_match_reference_at_gpu_tiles(
    dtype, name, q_len, kv_len, heads, kv_heads, head_dim, options):
  del name
  q, k, v = _inputs(2, q_len, kv_len, heads, kv_heads, head_dim, seed=4)
  d_out = jax.random.normal(jax.random.key(5), q.shape)
  d_lse = jax.random.normal(jax.random.key(6), (2, heads, q_len))
  options = _options(options)

  def run(impl, q, k, v):
    def f(q, k, v):
      return kernels.attention(q, k, v, implementation=impl,
                               return_residuals=True, **options)
    (out, lse), vjp = jax.vjp(f, q, k, v)
    # Empty rows (-inf log-sum-exp) take no cotangent.
    return (out, lse), vjp((d_out.astype(out.dtype),
                            jnp.where(jnp.isfinite(lse), d_lse, 0.0)))

  low = [x.astype(dtype) for x in (q, k, v)]
  (out, lse), grads = jax.jit(functools.partial(run, "triton"))(*low)
  with jax.default_matmul_precision("highest"):
    (want_out, want_lse), want_grads = jax.jit(
        functools.partial(run, "reference"))(
            *[x.astype(jnp.float32) for x in low])
  base.assert_close(out, want_out, dtype, "out", "out")
  np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(want_lse))
  finite = np.isfinite(np.asarray(want_lse))
  base.assert_close(np.asarray(lse)[finite], np.asarray(want_lse)[finite],
                    dtype, "out", "lse")
  for axis, got, want in zip("qkv", grads, want_grads):
    base.assert_close(got, want, dtype, "grad", f"d{axis}")
