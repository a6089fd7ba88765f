"""Compiled temporary memory: blockwise grows ~O(n), the reference ~O(n^2)."""

import jax
import jax.numpy as jnp
import pytest

from kernels import benchmark
from rnn_transformer.benchmarks import outputs

_LENGTHS = (512, 1024, 2048, 4096)


def _temp_bytes(implementation: str, seq: int, backward: bool) -> int:
  compiled = benchmark.compile_attention(
      implementation, (1, seq, 1, 32), jnp.float32, causal=True,
      backward=backward)
  return benchmark.compiled_memory(compiled).temp


def _exponent(implementation: str, backward: bool) -> float:
  return outputs.loglog_slope(
      _LENGTHS, [_temp_bytes(implementation, n, backward) for n in _LENGTHS])


@pytest.mark.parametrize("backward", (False, True), ids=("fwd", "fwd_bwd"))
def test_memory_scaling(backward):
  if jax.default_backend() != "cpu":
    pytest.skip("the figures are for XLA:CPU")
  blockwise = _exponent("blockwise", backward)
  ref = _exponent("reference", backward)
  assert 0.8 < blockwise < 1.3, blockwise
  assert 1.8 < ref < 2.2, ref
