"""Tooling that checks the Triton kernels without a GPU, never imported by
the runtime path.

* `aot_compile`: compiles a recorded launch for a CUDA target with the
  ptxas Triton bundles; registers, spills, shared memory, instructions.
* `compile_gate`: every launch the library makes, compiled for sm_80/sm_90,
  against the rules (no spills, shared memory within the limit, every
  block-size row compiled, `wgmma` for 16-bit kernels on Hopper).
* `tma_probe`: a minimal TMA kernel, the probe for descriptor support.
"""
