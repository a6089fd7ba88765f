"""Per-dtype comparison tolerances, in one place for every test.

Outputs and gradients of a low-precision computation are compared with a
float32 oracle; gradients get looser bounds because they accumulate more
rounding. `OUTPUT`/`GRADIENT` serve the models; `ATTENTION` the attention
kernels, whose (atol, rtol) pairs reflect one softmax-weighted reduction over
keys with float32 accumulation.
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


# dtype name -> {"out" | "grad": (atol, rtol)}, for kernels.attention.
ATTENTION = {
    "float32": dict(out=(2e-5, 2e-5), grad=(1e-4, 1e-4)),
    "float16": dict(out=(4e-3, 4e-3), grad=(2e-2, 2e-2)),
    "bfloat16": dict(out=(3e-2, 3e-2), grad=(1e-1, 5e-2)),
}
