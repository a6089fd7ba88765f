"""Argument checks that turn bad input into errors naming the argument.

Every public module validates its inputs here, before any tracing, so a user
sees `ValueError: inputs: expected rank 3 (batch, time, features), got shape
(4, 7)` rather than an XLA shape error from deep inside a scan.
"""

import numbers
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


# Dtype names a model's `dtype` / `param_dtype` may take.
FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def check_int(name: str, value: Any, *, minimum: int = 1,
              optional: bool = False) -> int | None:
  """`value` as an int >= `minimum` (None passes when `optional`).

  Python and numpy integers pass; bools, floats and strings (`4.0`, `"4"`)
  raise TypeError, so a mistyped size never reaches a shape.
  """
  if value is None and optional:
    return None
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    expected = "an int or None" if optional else "an int"
    raise TypeError(f"{name}: expected {expected}, got "
                    f"{type(value).__name__} {value!r}")
  if value < minimum:
    what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    raise ValueError(f"{name}: expected {what}, got {value}")
  return int(value)


def check_real(name: str, value: Any, *, positive: bool = False,
               optional: bool = False) -> float | None:
  """`value` as a finite float (> 0 when `positive`; None when `optional`).

  Python and numpy reals pass; bools and strings raise TypeError.
  """
  if value is None and optional:
    return None
  if not isinstance(value, numbers.Real) or isinstance(value, bool):
    expected = "a number or None" if optional else "a number"
    raise TypeError(f"{name}: expected {expected}, got "
                    f"{type(value).__name__} {value!r}")
  if not np.isfinite(value) or (positive and not value > 0):
    what = "a positive finite number" if positive else "a finite number"
    raise ValueError(f"{name}: expected {what}, got {value}")
  return float(value)


def check_rate(name: str, value: Any) -> float:
  """`value`, a real number in [0, 1) (a dropout rate)."""
  if not isinstance(value, numbers.Real) or isinstance(value, bool):
    raise TypeError(f"{name}: expected a float in [0, 1), got "
                    f"{type(value).__name__} {value!r}")
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{name}: expected a value in [0, 1), got {value}")
  return float(value)


def check_deterministic(deterministic: Any, dropout_rate: float,
                        owner: str) -> bool:
  """`deterministic` as flax's `nn.Dropout` resolves it: None is allowed
  only when there is no dropout (then True); with `dropout_rate > 0` it
  must be given, so a training call never runs without dropout silently."""
  if deterministic is None:
    if dropout_rate > 0:
      raise ValueError(
          f"deterministic: {owner}(dropout_rate={dropout_rate}) needs "
          f"deterministic=True (evaluation) or False (training, with a "
          f"'dropout' rng), as flax's Dropout does; got None")
    return True
  return check_bool("deterministic", deterministic)


def check_bool(name: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name}: expected True or False, got "
                    f"{type(value).__name__} {value!r}")
  return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in tuple(choices):
    raise ValueError(f"{name}: expected one of {tuple(choices)}, got "
                     f"{value!r}")


def check_float_dtype(name: str, value: Any, optional: bool = False
                      ) -> np.dtype | None:
  """A dtype among `FLOAT_DTYPES`, from its name or a numpy/jax dtype."""
  if value is None and optional:
    return None
  try:
    dtype = np.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or dtype.name not in FLOAT_DTYPES:
    allowed = FLOAT_DTYPES + (("None",) if optional else ())
    raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
  return dtype


def check_time(name: str, x: Any) -> None:
  """Raises on an empty time axis (axis 1), which no model can run over."""
  if np.shape(x)[1] == 0:
    raise ValueError(f"{name}: expected at least one time step, got shape "
                     f"{np.shape(x)}")


def check_features(name: str, x: Any, first_axis: int) -> None:
  """Raises on an empty feature axis (axes `first_axis` on): a projection
  of nothing has no fan-in to initialise from."""
  if 0 in np.shape(x)[first_axis:]:
    raise ValueError(f"{name}: expected at least one feature, got shape "
                     f"{np.shape(x)}")


def check_rank(name: str, x: Any, rank: int, layout: str) -> None:
  """Raises if `x` does not have `rank` dimensions; `layout` names them."""
  if np.ndim(x) != rank:
    raise ValueError(
        f"{name}: expected rank {rank} {layout}, got shape {np.shape(x)}")


def array_dtype(name: str, x: Any) -> np.dtype:
  """`x`'s dtype; TypeError naming `name` for what is not an array or a
  number (a Python list: jax takes arrays, `jnp.asarray` makes one)."""
  if isinstance(x, (list, tuple, str, bytes, dict)) or x is None or not (
      hasattr(x, "dtype") or isinstance(x, numbers.Number)):
    hint = "; wrap it in jnp.asarray" if isinstance(x, (list, tuple)) else ""
    raise TypeError(f"{name}: expected an array, got {type(x).__name__}"
                    f"{hint}")
  return jnp.result_type(x)


def check_floating(name: str, x: Any) -> None:
  """Raises `DTypeError` unless `x` has an inexact (floating) dtype."""
  dtype = array_dtype(name, x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise DTypeError(
        f"{name}: expected a floating dtype (float32, bfloat16, float16), "
        f"got {dtype}; cast inputs, e.g. embed integer tokens first")


def is_concrete(x: Any) -> bool:
  """True when `x`'s values are known now (not a tracer under jit/vmap)."""
  return not isinstance(x, jax.core.Tracer)


def check_seq_lengths(seq_lengths: Any, batch: int, time: int,
                      name: str = "seq_lengths") -> None:
  """Validates `seq_lengths: (batch,)` integers in [0, time].

  `name` is the caller's public argument (`lengths` for the backbones). The
  range is checked only when the values are concrete; under `jit` they are
  tracers and an out-of-range length behaves like its clipped value.
  """
  dtype = array_dtype(name, seq_lengths)
  if np.shape(seq_lengths) != (batch,):
    raise ValueError(
        f"{name}: expected shape (batch,) = ({batch},), "
        f"got {np.shape(seq_lengths)}")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise DTypeError(f"{name}: expected an integer dtype, got {dtype}")
  if is_concrete(seq_lengths):
    values = np.asarray(seq_lengths)
    if values.size and (values.min() < 0 or values.max() > time):
      raise ValueError(
          f"{name}: expected values in [0, {time}] (the time axis), "
          f"got min {values.min()} and max {values.max()}")


def check_mask(name: str, mask: Any, shape: Sequence[int],
               layout: str) -> None:
  """Validates a boolean mask of exactly `shape`."""
  array_dtype(name, mask)
  if tuple(np.shape(mask)) != tuple(shape):
    raise ValueError(
        f"{name}: expected shape {layout} = {tuple(shape)}, "
        f"got {np.shape(mask)}")
  dtype = array_dtype(name, mask)
  if dtype != jnp.bool_:
    raise DTypeError(f"{name}: expected dtype bool, got {dtype}")
