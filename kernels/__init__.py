"""Attention kernels: a fused Triton kernel and pure-JAX fallbacks behind one entry point.

`import kernels` never imports triton, jax_triton or torch; they are imported
when a Triton kernel is first traced.
"""

from kernels.attention import attention
from kernels.attention import IMPLEMENTATIONS
from kernels.backends import XLA_SCORE_BYTES_LIMIT
from kernels.ring import from_zigzag
from kernels.ring import to_zigzag
from kernels.triton.launch import COMPUTE_CAPABILITY_ENV
from kernels.triton.launch import cuda_compute_capability
from kernels.triton.launch import INTERPRET_ENV
from kernels.triton.launch import triton_interpret

__all__ = [
    "attention",
    "COMPUTE_CAPABILITY_ENV",
    "cuda_compute_capability",
    "from_zigzag",
    "IMPLEMENTATIONS",
    "INTERPRET_ENV",
    "to_zigzag",
    "triton_interpret",
    "XLA_SCORE_BYTES_LIMIT",
]
