"""The Triton attention kernels and how they reach JAX.

* `attention`: the `triton.jit` kernels (forward, dK/dV and dQ backward),
  following the loop structure of Triton's fused-attention tutorial.
* `ops`: the JAX functions (`custom_vjp`) that launch them.
* `launch`: compiled launches through jax-triton, or Triton's CPU
  interpreter; the CUDA compute capability to lower for.
* `block_sizes`: the tile table per head_dim, dtype and compute capability.

Importing this package imports neither triton nor jax_triton: `launch`
imports them when a kernel is first traced.
"""
