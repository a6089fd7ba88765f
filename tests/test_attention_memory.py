"""Compiled temporary memory: blockwise grows ~O(n), the reference ~O(n^2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels

_LENGTHS = (512, 1024, 2048, 4096)


def _temp_bytes(implementation: str, seq: int, backward: bool) -> int:
  q = jax.ShapeDtypeStruct((1, seq, 1, 32), jnp.float32)

  def fwd(q, k, v):
    return kernels.attention(q, k, v, causal=True,
                             implementation=implementation)

  fn = fwd
  if backward:
    fn = jax.grad(lambda q, k, v: fwd(q, k, v).sum(), argnums=(0, 1, 2))
  compiled = jax.jit(fn).lower(q, q, q).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def _exponent(implementation: str, backward: bool) -> float:
  sizes = [_temp_bytes(implementation, n, backward) for n in _LENGTHS]
  return float(np.polyfit(np.log(_LENGTHS), np.log(sizes), 1)[0])


@pytest.mark.parametrize("backward", (False, True), ids=("fwd", "fwd_bwd"))
def test_memory_scaling(backward):
  if jax.default_backend() != "cpu":
    pytest.skip("the figures are for XLA:CPU")
  blockwise = _exponent("blockwise", backward)
  ref = _exponent("reference", backward)
  assert 0.8 < blockwise < 1.3, blockwise
  assert 1.8 < ref < 2.2, ref
