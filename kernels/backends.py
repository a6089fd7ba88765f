"""The registry of attention implementations.

Each backend says whether it can serve a call (`supports` returns None, or the
reason it cannot) and computes it. All take the canonical arguments built by
`kernels.attention`: q, k, v in `(batch, seq, heads, head_dim)` layout, a
`masking.Mask` and a Python float scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kernels import block_sizes
from kernels import blockwise
from kernels import masking
from kernels import reference
from kernels import triton_launch
from kernels import triton_ops

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, masking.Mask, float],
                       jax.Array]


@dataclasses.dataclass(frozen=True)
class AttentionCall:
  """The static description of one attention call, as backends see it."""

  batch: int
  q_len: int
  kv_len: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: np.dtype
  causal: bool
  has_key_lengths: bool
  has_segments: bool
  platform: str

  @property
  def score_bytes(self) -> int:
    """Bytes of one float32 (batch, heads, q_len, kv_len) score matrix."""
    return 4 * self.batch * self.num_heads * self.q_len * self.kv_len


@dataclasses.dataclass(frozen=True)
class Backend:
  name: str
  supports: Callable[[AttentionCall], str | None]
  fn: AttentionFn


def _always(call: AttentionCall) -> None:
  del call


def _xla_supports(call: AttentionCall) -> str | None:
  if call.causal and call.q_len != call.kv_len:
    return ("jax.nn.dot_product_attention aligns is_causal at the top-left; "
            "bottom-right causal attention with q_len != kv_len "
            f"({call.q_len} != {call.kv_len}) needs another implementation")
  return None


def _cudnn_supports(call: AttentionCall) -> str | None:
  if call.platform != "gpu":
    return f"cuDNN attention needs a CUDA GPU, the backend is {call.platform!r}"
  if call.dtype not in (np.dtype(jnp.float16), np.dtype(jnp.bfloat16)):
    return f"cuDNN attention takes float16/bfloat16, got {call.dtype}"
  if call.head_dim > 128 or call.head_dim % 8:
    return f"cuDNN attention takes head_dim <= 128, a multiple of 8, got {call.head_dim}"
  if call.has_segments:
    return "segment_ids are not expressed through the cuDNN path"
  return _xla_supports(call)


def _dot_product_attention(implementation: str) -> AttentionFn:
  """`jax.nn.dot_product_attention` with our masking semantics."""

  def fn(q, k, v, mask, scale):
    seg_mask = None
    if mask.has_segments:
      seg_mask = (mask.q_segment_ids[:, None, :, None] ==
                  mask.kv_segment_ids[:, None, None, :])
    out = jax.nn.dot_product_attention(
        q, k, v, mask=seg_mask, scale=scale, is_causal=mask.causal,
        key_value_seq_lengths=mask.key_lengths, implementation=implementation)
    # jax masks with a large negative number, so a row without any allowed key
    # averages V; our contract is a zero row (and zero gradients).
    if mask.key_lengths is not None or mask.has_segments:
      q_len, kv_len = q.shape[1], k.shape[1]
      has_key = masking.allowed(mask, jnp.arange(q_len), jnp.arange(kv_len),
                                q_len, kv_len).any(-1)
      out = jnp.where(has_key[:, :, None, None], out, 0).astype(out.dtype)
    return out

  if implementation == "xla":
    return _float16_widened_on_cpu(fn)
  return fn


def _float16_widened_on_cpu(attend: AttentionFn) -> AttentionFn:
  """`attend`, computing float16 in float32 when lowered for the CPU.

  XLA:CPU has no float16 x float16 -> float32 dot ("The precision
  'F16_F16_F32' is not supported by dot_general on CPU"), which
  `jax.nn.dot_product_attention` asks for; jax's own fallback catches that
  only outside `jit`. `lax.platform_dependent` picks the branch when the
  program is lowered, so a GPU lowering keeps the float16 path.
  """

  def fn(q, k, v, mask, scale):
    if q.dtype != jnp.float16:
      return attend(q, k, v, mask, scale)

    def widened(q, k, v, mask):
      f32 = (x.astype(jnp.float32) for x in (q, k, v))
      return attend(*f32, mask, scale).astype(q.dtype)

    def native(q, k, v, mask):
      return attend(q, k, v, mask, scale)

    return jax.lax.platform_dependent(q, k, v, mask, cpu=widened,
                                      default=native)

  return fn


def _triton_supports(call: AttentionCall) -> str | None:
  reason = triton_launch.unavailable_reason(triton_launch.interpret_requested())
  if reason:
    return reason
  head_dims = block_sizes.supported_head_dims("fwd")
  if call.head_dim not in head_dims:
    return (f"head_dim {call.head_dim} is not supported by the Triton kernels "
            f"(supported: {', '.join(map(str, head_dims))})")
  return None


def _triton(q, k, v, mask, scale):
  return triton_ops.attention_triton(
      q, k, v, mask, scale, interpret=triton_launch.interpret_requested())


REGISTRY: dict[str, Backend] = {
    b.name: b for b in (
        Backend("triton", _triton_supports, _triton),
        Backend("xla", _xla_supports, _dot_product_attention("xla")),
        Backend("cudnn", _cudnn_supports, _dot_product_attention("cudnn")),
        Backend("reference", _always, reference.attention_reference),
        Backend("blockwise", _always, blockwise.attention_blockwise),
    )
}

# implementation=None takes the score matrix through XLA up to this size and
# switches to the O(n)-memory blockwise path above it.
XLA_SCORE_BYTES_LIMIT = 1 << 30


def select(call: AttentionCall) -> Backend:
  """The implementation used when none is named (see `kernels.attention`)."""
  candidates = []
  if call.platform == "gpu" and not triton_launch.interpret_requested():
    candidates.append("triton")
  if call.score_bytes <= XLA_SCORE_BYTES_LIMIT:
    candidates += ["xla", "reference"]
  candidates.append("blockwise")
  for name in candidates:
    if REGISTRY[name].supports(call) is None:
      return REGISTRY[name]
  raise AssertionError("blockwise supports every call")
