"""Attention kernels: a fused Triton kernel and pure-JAX fallbacks behind one entry point."""
