"""Argument checks that turn bad input into errors naming the argument.

Every public module validates its inputs here, before any tracing, so a user
sees `ValueError: inputs: expected rank 3 (batch, time, features), got shape
(4, 7)` rather than an XLA shape error from deep inside a scan.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class DTypeError(TypeError, ValueError):
  """An argument has the wrong dtype.

  A `TypeError` by nature; also a `ValueError` so callers that catch the
  library's input errors as `ValueError` catch this one too (as numpy's
  `AxisError` is both a `ValueError` and an `IndexError`).
  """


def check_rank(name: str, x: Any, rank: int, layout: str) -> None:
  """Raises if `x` does not have `rank` dimensions; `layout` names them."""
  if np.ndim(x) != rank:
    raise ValueError(
        f"{name}: expected rank {rank} {layout}, got shape {np.shape(x)}")


def check_floating(name: str, x: Any) -> None:
  """Raises `DTypeError` unless `x` has an inexact (floating) dtype."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise DTypeError(
        f"{name}: expected a floating dtype (float32, bfloat16, float16), "
        f"got {dtype}; cast inputs, e.g. embed integer tokens first")


def is_concrete(x: Any) -> bool:
  """True when `x`'s values are known now (not a tracer under jit/vmap)."""
  return not isinstance(x, jax.core.Tracer)


def check_seq_lengths(seq_lengths: Any, batch: int, time: int) -> None:
  """Validates `seq_lengths: (batch,)` integers in [0, time].

  The range is checked only when the values are concrete; under `jit` they
  are tracers and an out-of-range length behaves like its clipped value.
  """
  if np.shape(seq_lengths) != (batch,):
    raise ValueError(
        f"seq_lengths: expected shape (batch,) = ({batch},), "
        f"got {np.shape(seq_lengths)}")
  dtype = jnp.result_type(seq_lengths)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise DTypeError(f"seq_lengths: expected an integer dtype, got {dtype}")
  if is_concrete(seq_lengths):
    values = np.asarray(seq_lengths)
    if values.size and (values.min() < 0 or values.max() > time):
      raise ValueError(
          f"seq_lengths: expected values in [0, {time}] (the time axis), "
          f"got min {values.min()} and max {values.max()}")


def check_mask(name: str, mask: Any, shape: Sequence[int],
               layout: str) -> None:
  """Validates a boolean mask of exactly `shape`."""
  if tuple(np.shape(mask)) != tuple(shape):
    raise ValueError(
        f"{name}: expected shape {layout} = {tuple(shape)}, "
        f"got {np.shape(mask)}")
  dtype = jnp.result_type(mask)
  if dtype != jnp.bool_:
    raise DTypeError(f"{name}: expected dtype bool, got {dtype}")
