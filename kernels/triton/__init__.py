"""The Triton attention kernels and how they reach JAX.

* `attention`: the `triton.jit` kernels (forward, dK/dV and dQ backward),
  following the loop structure of Triton's fused-attention tutorial.
* `attention_hopper`: a forward for sm_90 with TMA loads and a
  warp-specialized loop.
* `ops`: the JAX functions (`custom_vjp`) that launch them.
* `launch`: compiled launches through jax-triton or the library's own call,
  or Triton's CPU interpreter; the CUDA compute capability to lower for.
* `kernel_call`: the own call, jaxlib's Triton custom call built from the
  compiled kernel (its warps and global scratch).
* `compiling`: how a launch is compiled (shared with the compile gate).
* `block_sizes`: the tile table per head_dim, dtype and compute capability.

Importing this package imports neither triton nor jax_triton: `launch`
imports them when a kernel is first traced.
"""
