"""critical_path_length and sequential_steps on programs whose depth and
loop steps are known exactly."""

import jax
import jax.numpy as jnp
import pytest

from rnn_transformer.analysis import program_depth
from rnn_transformer.analysis.program_depth import critical_path_length
from rnn_transformer.recurrences import linear_recurrence


def _depth(f, *args):
  return critical_path_length(jax.make_jaxpr(f)(*args))


def test_chains_branches_and_loops():
  assert _depth(lambda x: jnp.sin(jnp.cos(x)) + 1.0, 1.0) == 3
  # Two independent chains: the longer one counts.
  assert _depth(lambda x, y: (jnp.sin(jnp.sin(x)), jnp.cos(y)), 1.0, 2.0) == 2
  # A scan of 5 iterations of a 2-deep body.
  assert _depth(lambda x: jax.lax.scan(
      lambda h, _: (jnp.sin(h) * 2.0, None), x, None, length=5)[0], 1.0) == 10
  # A jitted call counts its callee; nested scans multiply.
  inner = jax.jit(lambda x: jax.lax.scan(
      lambda h, _: (jnp.sin(h), None), x, None, length=3)[0])
  assert _depth(lambda x: jax.lax.scan(
      lambda h, _: (inner(h), None), x, None, length=4)[0], 1.0) == 12
  assert _depth(lambda x: x, 1.0) == 0


@pytest.mark.parametrize("method,max_growth", [
    ("sequential", 64), ("associative", 2), ("chunked", 64)])
def test_scan_depth_grows_with_time_as_the_method_promises(method, max_growth):
  """T x 64: sequential depth x 64; associative + O(log T); chunked with
  chunk 64 adds T/64 steps to O(log 64) levels."""
  def depth(time):
    a = jnp.ones((1, time, 2))
    return critical_path_length(jax.make_jaxpr(lambda a: jax.grad(
        lambda a: linear_recurrence.linear_scan(
            a, a, method=method)[1].sum())(a))(a))
  short, long = depth(64), depth(64 * 64)
  if method == "sequential":  # 4 per step (fwd and bwd) plus a constant
    assert 60 * short < long < 64 * short, (short, long)
  else:
    assert long < max_growth * short, (short, long)
  if method == "associative":
    assert long > short  # log T levels: deeper, but far from 64x


def test_sequential_steps_multiplies_nested_scans_and_maxes_conds():
  def inner(c, x):
    return jax.lax.scan(lambda c, y: (c + y, None), c, x)[0], None

  def f(x):  # x: (3, 4); an outer scan of 3 over an inner scan of 4
    total, _ = jax.lax.scan(inner, 0.0, x)
    return jax.lax.cond(total > 0, lambda: jax.lax.scan(
        lambda c, y: (c + y, None), total, jnp.ones(5))[0], lambda: total)

  assert program_depth.sequential_steps(jax.make_jaxpr(f)(jnp.ones((3, 4)))) == 17
