"""Whether the attention kernels could load tiles through TMA descriptors.

Hopper's tensor memory accelerator copies a whole tile per instruction
(`cp.async.bulk.tensor`) and zero-fills rows past the tensor's edge, which
would replace the kernels' masked pointer loads. Triton offers it two ways,
and jax-triton 0.3.1 (the version the GPU image's jax 0.11.2 and triton 3.6
take) can pass neither:

* device-side descriptors, `tl.make_tensor_descriptor` inside the kernel:
  the kernel writes each descriptor into a global scratch buffer
  (`metadata.global_scratch_size` > 0), which jaxlib's Triton custom call
  replaces by a null pointer (`jaxlib/gpu/triton_kernels.cc`: "we do not use
  yet, so we are just replacing this argument with a null pointer");
* host-side descriptors (`triton.tools.tensor_descriptor.TensorDescriptor`,
  a 128-byte `CUtensorMap` passed by value): jax-triton 0.3.1's parameters
  are buffers and scalars only.

jax-triton 0.4.x passes both (`jax_triton.TensorDescriptor`, and a scratch
buffer with jaxlib > 0.11.0), but requires triton >= 3.7 and Python >= 3.12.
So the pointer kernels keep pointer loads (`cp.async` on sm_80/sm_90), and
the compile gate refuses any jax-triton launch that needs global scratch.
The Hopper forward (`kernels.triton.attention_hopper`) uses device-side
descriptors through the library's own call (`kernels.triton.kernel_call`),
which passes the scratch size on jaxlib >= 0.11.2.

`_tma_tile_copy` copies a tile in the kernels' `(batch, seq, heads,
head_dim)` layout through device-side descriptors; `compile_gate.TMA_PROBE`
compiles it (for sm_90: the TMA instructions and the scratch requirement,
`tests/test_compile_gate.py`). Importing this module imports triton.
"""

import triton
import triton.language as tl


@triton.jit
def _tma_tile_copy(X, batch, seq_len, Y, NUM_HEADS: tl.constexpr,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
  """Y[b, m:m+BLOCK_M, h] = X[b, m:m+BLOCK_M, h] by TMA; rows >= seq_len
  read as zeros and are not written. Arguments in the library's launch
  order (inputs, then the output), so `kernels.triton.launch` can launch it."""
  start_m = tl.program_id(0) * BLOCK_M
  off_b = tl.program_id(1) // NUM_HEADS
  off_h = tl.program_id(1) % NUM_HEADS
  x = tl.make_tensor_descriptor(
      X, shape=[batch, seq_len, NUM_HEADS, HEAD_DIM],
      strides=[seq_len * NUM_HEADS * HEAD_DIM, NUM_HEADS * HEAD_DIM,
               HEAD_DIM, 1],
      block_shape=[1, BLOCK_M, 1, HEAD_DIM])
  y = tl.make_tensor_descriptor(
      Y, shape=[batch, seq_len, NUM_HEADS, HEAD_DIM],
      strides=[seq_len * NUM_HEADS * HEAD_DIM, NUM_HEADS * HEAD_DIM,
               HEAD_DIM, 1],
      block_shape=[1, BLOCK_M, 1, HEAD_DIM])
  y.store([off_b, start_m, off_h, 0], x.load([off_b, start_m, off_h, 0]))

