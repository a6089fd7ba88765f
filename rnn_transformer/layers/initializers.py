"""Initialisers for recurrent weight matrices.

All return flax-style initialisers `init(key, shape, dtype) -> Array` for a
square `(hidden, hidden)` recurrent kernel. The vanishing/exploding-gradient
experiments set the spectral radius rho(W_hh) directly:

* `orthogonal(scale)`: every eigenvalue has modulus `scale`, so rho = scale.
* `identity(scale)`: IRNN (Le, Jaitly and Hinton, 2015), rho = scale.
* `gaussian_spectral_radius(radius)`: i.i.d. N(0, 1) entries rescaled so that
  rho is exactly `radius` (eigenvalues computed on the host).
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_transformer import validation
from rnn_transformer.analysis.spectral import spectral_radius

Initializer = Callable[..., jax.Array]


def _check_square(shape: tuple[int, ...], name: str) -> None:
  if len(shape) != 2 or shape[0] != shape[1]:
    raise ValueError(
        f"{name}: expected a square (hidden, hidden) shape, got {shape}")


def _check_scale(name: str, value: float) -> None:
  validation.check_real(name, value)
  if value < 0:
    raise ValueError(f"{name}: expected a number >= 0 (the spectral radius), "
                     f"got {value}")


def orthogonal(scale: float = 1.0) -> Initializer:
  """A random orthogonal matrix times `scale`: spectral radius `scale`."""
  _check_scale("scale", scale)
  return nn.initializers.orthogonal(scale)


def identity(scale: float = 1.0) -> Initializer:
  """`scale * I`, the IRNN initialisation (with ReLU activation)."""
  _check_scale("scale", scale)
  def init(key, shape, dtype=jnp.float32):
    del key
    _check_square(tuple(shape), "identity initializer")
    return scale * jnp.eye(shape[0], dtype=dtype)
  return init


def gaussian_spectral_radius(radius: float) -> Initializer:
  """Gaussian matrix rescaled so its spectral radius is exactly `radius`."""
  validation.check_real("radius", radius, positive=True)

  def init(key, shape, dtype=jnp.float32):
    _check_square(tuple(shape), "gaussian_spectral_radius initializer")
    matrix = jax.random.normal(key, shape, jnp.float32)
    matrix = matrix * (radius / spectral_radius(matrix))
    return matrix.astype(dtype)
  return init


def per_gate(init: Initializer, num_gates: int) -> Initializer:
  """Applies `init` to each `(in, out)` gate block of an `(in, G*out)` kernel.

  Fused-gate cells keep one `(in, G*hidden)` kernel so each step does one
  matmul; initialising block by block keeps each gate's recurrent matrix
  e.g. orthogonal, as in separate-matrix implementations.
  """
  validation.check_int("num_gates", num_gates)

  def fused_init(key, shape, dtype=jnp.float32):
    fan_in, fused = shape
    if fused % num_gates:
      raise ValueError(f"per_gate: {fused} columns do not split into "
                       f"{num_gates} gates")
    keys = jax.random.split(key, num_gates)
    blocks = [init(k, (fan_in, fused // num_gates), dtype) for k in keys]
    return jnp.concatenate(blocks, axis=-1)
  return fused_init
