"""Spectral radius of a square matrix, usable under `jit` on every backend."""

import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import validation


def _host_spectral_radius(matrix: np.ndarray) -> np.ndarray:
  eigenvalues = np.linalg.eigvals(np.asarray(matrix, dtype=np.float64))
  return np.abs(eigenvalues).max(axis=-1).astype(np.float32)


def spectral_radius(matrix: jax.Array) -> jax.Array:
  """max |lambda| over the eigenvalues of `matrix: (..., n, n)`, float32.

  For the Elman RNN h_t = tanh(W_hh h_{t-1} + ...) the Jacobian
  dh_t/dh_{t-1} = diag(tanh') W_hh, so rho(W_hh) < 1 makes the product of
  Jacobians over time vanish and rho > 1 lets it explode (linear activation).
  The general (non-symmetric) eigenproblem runs on the host through
  `jax.pure_callback`, so this works under `jit`/`vmap` on CPU, GPU and TPU;
  it has no gradient.
  """
  matrix = jnp.asarray(matrix)
  if matrix.ndim < 2 or matrix.shape[-1] != matrix.shape[-2]:
    raise ValueError(
        f"matrix: expected a square matrix (..., n, n), got shape {matrix.shape}")
  if matrix.shape[-1] == 0:
    raise ValueError(f"matrix: expected a square matrix (..., n, n) with "
                     f"n >= 1, got shape {matrix.shape}")
  # The host's eigensolver fails on NaN/inf (a CpuCallback error); concrete
  # values are checked here, traced ones (under jit/vmap) cannot be.
  if validation.is_concrete(matrix) and not bool(jnp.isfinite(matrix).all()):
    raise ValueError(f"matrix: expected finite values, got NaN or inf in "
                     f"the matrix of shape {matrix.shape}")
  out = jax.ShapeDtypeStruct(matrix.shape[:-2], jnp.float32)
  return jax.pure_callback(
      _host_spectral_radius, out, matrix, vmap_method="expand_dims")
