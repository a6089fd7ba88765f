"""The attention mask, defined once for the pure-JAX implementations.

A query at position `i` may attend to a key at position `j` when all of the
following hold (the Triton kernels implement the same predicate in
`triton_attention.py`):

* causal: `j <= i + (kv_len - q_len)`. Causal attention is aligned at the
  bottom-right, as in decoding: the last query sees every key. For
  `q_len == kv_len` this is the usual lower triangle (and equals the top-left
  convention of `jax.nn.dot_product_attention(is_causal=True)`).
* key lengths: `j < key_lengths[b]` (key padding per example).
* segments: `q_segment_ids[b, i] == kv_segment_ids[b, j]`.
* window `(left, right)`: `i' - left <= j <= i' + right` with the same
  bottom-right alignment `i' = i + (kv_len - q_len)`; a side that is None is
  unbounded. `(left, 0)` with `causal` is sliding-window attention (each query
  sees itself and the `left` keys before it).
* query offsets: with `q_offset` (`(batch,)`, the key position of each
  example's first query, as `cache_seqlens` in FlashAttention's
  `flash_attn_with_kvcache`), the causal and window alignment is
  `i' = i + q_offset[b]` instead of `i + (kv_len - q_len)`. Decoding into a
  cache and each step of ring attention (a query block against another
  device's key block) are this one mask.

A query with no allowed key produces a zero output row and zero gradients.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Mask:
  """Masking arguments in canonical form.

  Attributes:
    causal: bottom-right aligned causal masking (static).
    key_lengths: `(batch,) int32` valid key count per example, or None.
    q_segment_ids: `(batch, q_len) int32` or None (None iff kv_segment_ids is).
    kv_segment_ids: `(batch, kv_len) int32` or None.
    window_left, window_right: the local window's sides (static ints >= 0),
      None for unbounded.
    q_offset: `(batch,) int32` key position of each example's first query,
      or None for the bottom-right alignment `kv_len - q_len`.
  """

  causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
  key_lengths: jax.Array | None = None
  q_segment_ids: jax.Array | None = None
  kv_segment_ids: jax.Array | None = None
  window_left: int | None = dataclasses.field(default=None,
                                              metadata=dict(static=True))
  window_right: int | None = dataclasses.field(default=None,
                                               metadata=dict(static=True))
  q_offset: jax.Array | None = None

  @property
  def has_segments(self) -> bool:
    return self.q_segment_ids is not None

  @property
  def has_window(self) -> bool:
    return self.window_left is not None or self.window_right is not None


def allowed(mask: Mask, q_pos: jax.Array, k_pos: jax.Array, q_len: int,
            kv_len: int) -> jax.Array:
  """Which (query, key) pairs may attend.

  Args:
    mask: the masking arguments.
    q_pos: `(q_block,) int32` absolute query positions.
    k_pos: `(k_block,) int32` absolute key positions; positions `>= kv_len`
      (block padding) are never allowed.
    q_len: total query length.
    kv_len: total key length.

  Returns:
    `(batch or 1, q_block, k_block) bool`.
  """
  ok = (k_pos < kv_len)[None, None, :]
  keys = k_pos[None, None, :]
  if mask.q_offset is None:  # i', bottom-right aligned: (1, q_block, 1)
    aligned = (q_pos + (kv_len - q_len))[None, :, None]
  else:  # (batch, q_block, 1)
    aligned = q_pos[None, :, None] + mask.q_offset[:, None, None]
  if mask.causal:
    ok = ok & (keys <= aligned)
  if mask.window_left is not None:
    ok = ok & (keys >= aligned - mask.window_left)
  if mask.window_right is not None:
    ok = ok & (keys <= aligned + mask.window_right)
  if mask.key_lengths is not None:
    ok = ok & (k_pos[None, None, :] < mask.key_lengths[:, None, None])
  if mask.has_segments:
    q_seg = jnp.take(mask.q_segment_ids, q_pos, axis=1, mode="clip")
    kv_seg = jnp.take(mask.kv_segment_ids, k_pos, axis=1, mode="clip")
    ok = ok & (q_seg[:, :, None] == kv_seg[:, None, :])
  return ok
