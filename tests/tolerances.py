"""Per-dtype comparison tolerances, in one place for every test.

Outputs and gradients of a low-precision computation are compared with a
float32 oracle; gradients get looser bounds because they accumulate more
rounding.
"""

import jax.numpy as jnp

OUTPUT = {
    jnp.dtype(jnp.float32): dict(atol=1e-5, rtol=1e-5),
    jnp.dtype(jnp.bfloat16): dict(atol=2e-2, rtol=2e-2),
    jnp.dtype(jnp.float16): dict(atol=2e-3, rtol=2e-3),
}

GRADIENT = {
    jnp.dtype(jnp.float32): dict(atol=5e-5, rtol=5e-5),
    jnp.dtype(jnp.bfloat16): dict(atol=5e-2, rtol=5e-2),
    jnp.dtype(jnp.float16): dict(atol=5e-3, rtol=5e-3),
}


def output_tol(dtype) -> dict:
  return OUTPUT[jnp.dtype(dtype)]


def gradient_tol(dtype) -> dict:
  return GRADIENT[jnp.dtype(dtype)]
