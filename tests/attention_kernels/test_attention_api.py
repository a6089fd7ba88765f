"""Argument validation and implementation dispatch of kernels.attention."""

import sys

import jax
import jax.numpy as jnp
import pytest

import kernels
from kernels import backends


def _qkv(q_len=8, kv_len=8, heads=4, kv_heads=2, head_dim=32,
         dtype=jnp.float32):
  q = jnp.zeros((2, q_len, heads, head_dim), dtype)
  k = jnp.zeros((2, kv_len, kv_heads, head_dim), dtype)
  return q, k, k


@pytest.mark.parametrize("mutate,error,match", [
    (lambda q, k, v: (q[0], k, v), ValueError, "q must have rank 4"),
    (lambda q, k, v: (q, k, v[..., :16]), ValueError, "v must have the shape"),
    (lambda q, k, v: (q, k[..., :16], v[..., :16]), ValueError,
     "head_dim of k"),
    (lambda q, k, v: (q[:, :, :3], k, v), ValueError, "divisible"),
    (lambda q, k, v: (q.astype(jnp.bfloat16), k, v), TypeError,
     "share a dtype"),
    (lambda q, k, v: (q.astype(jnp.int32), k, v), TypeError, "q must be"),
])
def test_bad_arrays(mutate, error, match):
  with pytest.raises(error, match=match):
    kernels.attention(*mutate(*_qkv()))


def test_bad_key_lengths():
  with pytest.raises(ValueError, match="key_lengths must have shape"):
    kernels.attention(*_qkv(), key_lengths=jnp.zeros((3,), jnp.int32))
  with pytest.raises(TypeError, match="key_lengths must be an integer"):
    kernels.attention(*_qkv(), key_lengths=jnp.zeros((2,), jnp.float32))


def test_bad_segment_ids():
  with pytest.raises(ValueError, match="q_len == kv_len"):
    kernels.attention(*_qkv(kv_len=6), segment_ids=jnp.zeros((2, 8), int))
  with pytest.raises(ValueError, match="kv_segment_ids must have shape"):
    kernels.attention(*_qkv(kv_len=6), segment_ids=(
        jnp.zeros((2, 8), int), jnp.zeros((2, 8), int)))


def test_unknown_implementation():
  with pytest.raises(ValueError, match="implementation must be one of"):
    kernels.attention(*_qkv(), implementation="flash")


def test_explicit_choice_that_cannot_serve_raises():
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="implementation='cudnn'.*GPU"):
      kernels.attention(*_qkv(), implementation="cudnn")
    with kernels.triton_interpret(False):
      with pytest.raises(ValueError, match="implementation='triton'.*GPU"):
        kernels.attention(*_qkv(), implementation="triton")
  with pytest.raises(ValueError, match="implementation='xla'.*top-left"):
    kernels.attention(*_qkv(q_len=4), causal=True, implementation="xla")


@pytest.mark.parametrize("head_dim", [4, 44, 264])
def test_unsupported_head_dim_for_triton(head_dim):
  with kernels.triton_interpret():
    with pytest.raises(ValueError, match=f"head_dim {head_dim} is not "
                       "supported.*multiples of 8 from 8 to 256"):
      kernels.attention(*_qkv(head_dim=head_dim), implementation="triton")


def test_default_selection_on_cpu():
  if jax.default_backend() == "gpu":
    pytest.skip("checks the CPU/TPU choice")
  small = backends.AttentionCall(2, 64, 64, 4, 4, 32, jnp.dtype("float32"),
                                 True, False, False, "cpu")
  assert backends.select(small).name == "xla"
  ragged = backends.AttentionCall(2, 32, 64, 4, 4, 32, jnp.dtype("float32"),
                                  True, False, False, "cpu")
  assert backends.select(ragged).name == "reference"
  huge = backends.AttentionCall(8, 65536, 65536, 16, 16, 128,
                                jnp.dtype("bfloat16"), False, False, False,
                                "cpu")
  assert backends.select(huge).name == "blockwise"


def test_default_is_differentiable_and_matches_reference():
  q, k, v = (jax.random.normal(key, shape) for key, shape in zip(
      jax.random.split(jax.random.key(0), 3),
      [(1, 8, 4, 32), (1, 8, 2, 32), (1, 8, 2, 32)]))
  got = kernels.attention(q, k, v, causal=True)
  want = kernels.attention(q, k, v, causal=True, implementation="reference")
  assert jnp.allclose(got, want, atol=1e-5)


def test_import_does_not_load_triton_or_torch():
  code = ("import sys, kernels; bad = [m for m in ('triton', 'torch', "
          "'jax_triton') if m in sys.modules]; assert not bad, bad")
  import subprocess  # pylint: disable=g-import-not-at-top
  subprocess.run([sys.executable, "-c", code], check=True,
                 env={"PYTHONPATH": ":".join(sys.path)})


def _random_qkv(q_len, kv_len, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(7), 3)
  q = jax.random.normal(keys[0], (2, q_len, 2, 16), dtype)
  k = jax.random.normal(keys[1], (2, kv_len, 2, 16), dtype)
  v = jax.random.normal(keys[2], (2, kv_len, 2, 16), dtype)
  return q, k, v


def _masked_reference(q, k, v, allowed):
  """softmax(QK^T / sqrt(d) masked by `allowed: (q_len, kv_len)`) V."""
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1])
  scores = jnp.where(allowed, scores, -jnp.inf)
  return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)


@pytest.mark.parametrize("implementation", ["reference", "blockwise"])
@pytest.mark.parametrize("q_len,kv_len", [(3, 7), (7, 3)])
def test_causal_aligns_bottom_right_and_the_top_left_recipe_holds(
    implementation, q_len, kv_len):
  q, k, v = _random_qkv(q_len, kv_len)
  i, j = jnp.arange(q_len)[:, None], jnp.arange(kv_len)[None, :]
  ours = kernels.attention(q, k, v, causal=True,
                           implementation=implementation)
  bottom_right = (j <= i + kv_len - q_len)
  rows = bottom_right.any(axis=1)  # a row with no key gives zeros
  want = jnp.where(rows[None, :, None, None],
                   _masked_reference(q, k, v, bottom_right), 0.0)
  assert jnp.allclose(ours, want, atol=1e-5)
  # tokamax's top-left alignment (j <= i), by the documented recipe.
  if q_len <= kv_len:
    top_left = kernels.attention(q, k[:, :q_len], v[:, :q_len], causal=True,
                                 implementation=implementation)
  else:
    top_left = kernels.attention(q, k, v, window=(None, q_len - kv_len),
                                 implementation=implementation)
  assert jnp.allclose(top_left, _masked_reference(q, k, v, j <= i),
                      atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_the_log_sum_exp_is_float32_for_every_input_dtype(dtype):
  q, k, v = _random_qkv(5, 5, dtype)
  out, lse = kernels.attention(q, k, v, causal=True, return_residuals=True,
                               implementation="reference")
  assert out.dtype == dtype and lse.dtype == jnp.float32
  scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32),
                      k.astype(jnp.float32)) / 4.0
  scores = jnp.where(jnp.tril(jnp.ones((5, 5), bool)), scores, -jnp.inf)
  assert jnp.allclose(lse, jax.nn.logsumexp(scores, axis=-1), atol=1e-5)
