"""The registry of attention implementations.

Each backend says whether it can serve a call (`supports` returns None, or the
reason it cannot) and computes it. All take the canonical arguments built by
`kernels.attention`: q, k, v in `(batch, seq, heads, head_dim)` layout, a
`masking.Mask` and a Python float scale, and the keywords `softcap` (float
or None) and `return_residuals` (then they return `(out, lse)`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kernels.triton import block_sizes
from kernels import blockwise
from kernels import masking
from kernels import reference
from kernels.triton import launch as triton_launch
from kernels.triton import ops as triton_ops

AttentionFn = Callable[..., Any]


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
  window: tuple[int | None, int | None] = (None, None)
  softcap: bool = False
  return_residuals: bool = False
  has_q_offset: bool = False

  @property
  def has_window(self) -> bool:
    return self.window != (None, None)

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
  if call.has_q_offset:
    return ("jax.nn.dot_product_attention has no query offset: q_offset "
            "needs triton, reference or blockwise")
  if (call.causal or call.has_window) and call.q_len != call.kv_len:
    return ("jax.nn.dot_product_attention aligns is_causal and "
            "local_window_size at the top-left; bottom-right aligned masks "
            f"with q_len != kv_len ({call.q_len} != {call.kv_len}) need "
            "another implementation")
  if call.softcap:
    return ("jax.nn.dot_product_attention has no logit soft-capping (jax "
            "issue #23300)")
  if call.return_residuals:
    return ("jax.nn.dot_product_attention's log-sum-exp (return_residual="
            "True) is in the input dtype and carries no gradient; "
            "return_residuals promises float32 and a differentiable one")
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
  if call.has_window:
    return ("local windows through cuDNN are not verified here (jax PR "
            "#39576: its non-causal window attended to future tokens)")
  return _xla_supports(call)


def _dot_product_attention(implementation: str) -> AttentionFn:
  """`jax.nn.dot_product_attention` with our masking semantics."""

  def fn(q, k, v, mask, scale, *, softcap=None, return_residuals=False):
    if softcap is not None or return_residuals:
      raise ValueError(f"implementation={implementation!r} supports neither "
                       f"softcap nor return_residuals")
    seg_mask = None
    if mask.has_segments:
      seg_mask = (mask.q_segment_ids[:, None, :, None] ==
                  mask.kv_segment_ids[:, None, None, :])
    window = None
    if mask.has_window:  # q_len == kv_len here: top-left == bottom-right
      kv_len = k.shape[1]
      window = tuple(kv_len if w is None else w
                     for w in (mask.window_left, mask.window_right))
    out = jax.nn.dot_product_attention(
        q, k, v, mask=seg_mask, scale=scale, is_causal=mask.causal,
        key_value_seq_lengths=mask.key_lengths, local_window_size=window,
        implementation=implementation)
    # jax masks with a large negative number, so a row without any allowed key
    # averages V; our contract is a zero row (and zero gradients).
    if mask.key_lengths is not None or mask.has_segments or mask.has_window:
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

  def fn(q, k, v, mask, scale, **options):
    if q.dtype != jnp.float16:
      return attend(q, k, v, mask, scale, **options)

    def widened(q, k, v, mask):
      f32 = (x.astype(jnp.float32) for x in (q, k, v))
      return attend(*f32, mask, scale, **options).astype(q.dtype)

    def native(q, k, v, mask):
      return attend(q, k, v, mask, scale, **options)

    return jax.lax.platform_dependent(q, k, v, mask, cpu=widened,
                                      default=native)

  return fn


def _triton_supports(call: AttentionCall) -> str | None:
  reason = triton_launch.unavailable_reason(triton_launch.interpret_requested())
  if reason:
    return reason
  if not block_sizes.serves_head_dim("fwd", call.head_dim):
    largest = max(block_sizes.supported_head_dims("fwd"))
    return (f"head_dim {call.head_dim} is not supported by the Triton kernels "
            f"(supported: multiples of 8 from 8 to {largest})")
  return None


def _triton(q, k, v, mask, scale, **options):
  return triton_ops.attention_triton(
      q, k, v, mask, scale, interpret=triton_launch.interpret_requested(),
      **options)


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
