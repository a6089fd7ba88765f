"""Ring (context-parallel) attention: the sequence split over a mesh axis.

Liu et al. (2023), "Ring Attention with Blockwise Transformers". Inside
`shard_map`, each device holds one block of queries and one of keys and
values; the key/value blocks travel round the ring (`ppermute`), and each
device attends its queries to every block in turn with any kernel that
returns the log-sum-exp, merging the partial outputs by it:

    lse = logaddexp(lse_1, lse_2),  o = exp(lse_1 - lse) o_1 + exp(lse_2 - lse) o_2

Causal: a key block after the query block is skipped (`lax.switch`), the
diagonal block is causal, earlier blocks are attended in full. Gradients
flow through the ring (autodiff of `ppermute` is the reverse ring).
Blocks are contiguous: with a causal mask the last device works on every
step and the first on one (no zig-zag balancing yet).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

PartitionSpec = jax.sharding.PartitionSpec


def _merge(o_acc, lse_acc, o_new, lse_new):
  """Two partial attentions over disjoint keys, merged by log-sum-exp.

  `o: (batch, q, heads, d)` float32, `lse: (batch, heads, q)`; a row
  without keys has lse -inf and o 0. Written so that no gradient is NaN
  when both sides are -inf (logaddexp's would be).
  """
  top = jnp.maximum(lse_acc, lse_new)
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  w_acc, w_new = jnp.exp(lse_acc - top), jnp.exp(lse_new - top)
  total = w_acc + w_new
  any_key = total > 0
  safe = jnp.where(any_key, total, 1.0)
  lse = jnp.where(any_key, top + jnp.log(safe), -jnp.inf)

  def weight(w):  # (batch, heads, q) -> (batch, q, heads, 1)
    return jnp.swapaxes(w / safe, 1, 2)[..., None]
  return o_acc * weight(w_acc) + o_new * weight(w_new), lse


def ring_attention(local_attention: Callable, q, k, v, *, mesh,
                   context_axis: str, batch_axes: tuple[str, ...],
                   head_axes: tuple[str, ...], causal: bool,
                   key_lengths, q_segments, kv_segments, return_residuals,
                   **options):
  """`local_attention` (`kernels.attention` without a mesh) run as a ring.

  Args:
    local_attention: attends one query block to one key block; called with
      `causal`, `key_lengths`, `segment_ids`, `return_residuals=True` and
      `options`.
    q: `(batch, seq, heads, d)`, k, v: `(batch, seq, kv_heads, d)`, the
      sequence split over `context_axis` (equal lengths when causal).
    mesh, context_axis, batch_axes, head_axes: where the blocks live.
    causal: global causal mask (`q_len == kv_len`).
    key_lengths: `(batch,)` global valid key counts, or None.
    q_segments, kv_segments: `(batch, q_len)`, `(batch, kv_len)` or None.
    return_residuals: also return the global log-sum-exp.
    **options: scale, softcap, implementation.
  """
  devices = mesh.shape[context_axis]
  b = batch_axes or None
  h = head_axes or None
  qkv = PartitionSpec(b, context_axis, h, None)
  rows = PartitionSpec(b, context_axis)
  has_lengths, has_segments = key_lengths is not None, q_segments is not None
  operands, specs = [q, k, v], [qkv, qkv, qkv]
  if has_lengths:
    operands.append(key_lengths)
    specs.append(PartitionSpec(b))
  if has_segments:
    operands += [q_segments, kv_segments]
    specs += [rows, rows]
  kv_block = k.shape[1] // devices
  ring = [(d, (d + 1) % devices) for d in range(devices)]

  def local(q, k, v, *rest):
    rest = list(rest)
    lengths = rest.pop(0) if has_lengths else None
    q_seg, kv_seg = (rest.pop(0), rest.pop(0)) if has_segments else (None,
                                                                      None)
    me = jax.lax.axis_index(context_axis)
    batch, q_len, heads, dim = q.shape
    o = jnp.zeros((batch, q_len, heads, dim), jnp.float32)
    lse = jnp.full((batch, heads, q_len), -jnp.inf, jnp.float32)
    for step in range(devices):
      source = (me - step) % devices  # whose key block this device holds

      def attend(block_causal, k=k, v=v, kv_seg=kv_seg, source=source):
        block_lengths = None if lengths is None else jnp.clip(
            lengths - source * kv_block, 0, kv_block)
        segments = None if q_seg is None else (q_seg, kv_seg)
        out, block_lse = local_attention(
            q, k, v, causal=block_causal, key_lengths=block_lengths,
            segment_ids=segments, return_residuals=True, **options)
        return out.astype(jnp.float32), block_lse

      if causal:
        def skip(o=o, lse=lse):
          return (jnp.zeros_like(o), jnp.full_like(lse, -jnp.inf))
        branch = jnp.where(source > me, 0, jnp.where(source == me, 1, 2))
        o_step, lse_step = jax.lax.switch(
            branch, (skip, lambda: attend(True), lambda: attend(False)))
      else:
        o_step, lse_step = attend(False)
      o, lse = _merge(o, lse, o_step, lse_step)
      if step < devices - 1:  # pass the key block on round the ring
        k, v = jax.lax.ppermute((k, v), context_axis, ring)
        if kv_seg is not None:
          kv_seg = jax.lax.ppermute(kv_seg, context_axis, ring)
    out = o.astype(q.dtype)
    return (out, lse) if return_residuals else out

  lse_spec = PartitionSpec(b, h, context_axis)
  out_specs = (qkv, lse_spec) if return_residuals else qkv
  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs),
                       out_specs=out_specs, check_vma=False)(*operands)
