"""Ring (context-parallel) attention: the sequence split over a mesh axis.

Liu et al. (2023), "Ring Attention with Blockwise Transformers". Inside
`shard_map`, each device holds a block of queries and one of keys and
values; the key/value blocks travel round the ring (`ppermute`), and each
device attends its queries to every block in turn with any kernel that
returns the log-sum-exp, merging the partial outputs by it:

    lse = logaddexp(lse_1, lse_2),  o = exp(lse_1 - lse) o_1 + exp(lse_2 - lse) o_2

Masks. A query chunk starting at global position `qs` against a key chunk
starting at `ks` is the single-device mask with the query offset
`q_offset + qs - ks` (`kernels.masking`): causal, window, key lengths
(clipped to the chunk) and segment ids (travelling with their chunk) keep
their global meaning. A chunk pair that the causal mask, the window or the
key lengths leave wholly masked is skipped (`lax.cond`); with a window and
no query offset, ring steps whose every pair is masked on every device are
not run at all, so a sliding window shorter than a block costs one
`ppermute`, not `devices - 1`.

Layouts (`LAYOUTS`). "contiguous": device `d` holds block `d` of the
sequence; with a causal mask device `d` has `d + 1` blocks of work and the
last device sets the pace. "zigzag" (Brandon et al. 2023, "Striped
Attention", and MaxText's load-balanced context parallelism): the sequence
is cut into `2 c` chunks and device `d` holds chunks `d` and `2c - 1 - d`,
so every device has the same causal work (3 chunk pairs on its own step, 2
on every other). The caller keeps the sequence in that order
(`to_zigzag` / `from_zigzag`), as a data pipeline would; the outputs come
back in the layout the inputs had.

Gradients flow through the ring (autodiff of `ppermute` is the reverse
ring), so the backward keeps each step's key/value block: O(n) per device
for the residuals (BUILD_NOTES measures it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

PartitionSpec = jax.sharding.PartitionSpec

LAYOUTS = ("contiguous", "zigzag")


def _chunks_per_device(layout: str) -> int:
  return 2 if layout == "zigzag" else 1


def _zigzag_order(devices: int) -> np.ndarray:
  """Chunk order of the zigzag layout: 0, 2c-1, 1, 2c-2, ..."""
  return np.array([c for d in range(devices)
                   for c in (d, 2 * devices - 1 - d)])


def _check_layout_args(x, devices: int, axis: int) -> None:
  if not isinstance(devices, int) or isinstance(devices, bool) or (
      devices < 1):
    raise ValueError(f"devices: expected a positive int, got {devices!r}")
  if x.shape[axis] % (2 * devices):
    raise ValueError(f"x: the zigzag layout cuts axis {axis} into 2 x "
                     f"{devices} chunks, but it has length {x.shape[axis]}")


def to_zigzag(x: jax.Array, devices: int, axis: int = 1) -> jax.Array:
  """Reorders `axis` (the sequence) so that its `devices` contiguous blocks
  are the zigzag layout's: block `d` = chunks `d` and `2 devices - 1 - d`.

  Shape unchanged, e.g. `(batch, seq, heads, head_dim)` with `axis=1`;
  `seq` must divide by `2 * devices`. Positions, targets and segment ids
  of the same sequence are reordered the same way.
  """
  _check_layout_args(x, devices, axis)
  chunks = jnp.split(x, 2 * devices, axis=axis)
  return jnp.concatenate([chunks[c] for c in _zigzag_order(devices)], axis)


def from_zigzag(x: jax.Array, devices: int, axis: int = 1) -> jax.Array:
  """Inverse of `to_zigzag`: the zigzag layout back in sequence order."""
  _check_layout_args(x, devices, axis)
  chunks = jnp.split(x, 2 * devices, axis=axis)
  inverse = np.argsort(_zigzag_order(devices))
  return jnp.concatenate([chunks[c] for c in inverse], axis)


def _chunk_ids(device, devices: int, layout: str) -> list:
  """Global chunk indices held by `device` (traced or int), in order."""
  if layout == "zigzag":
    return [device, 2 * devices - 1 - device]
  return [device]


def _pair_masked(first, last, key_chunk: int, causal: bool, window,
                 chunk_lengths=None):
  """Whether a query chunk whose rows align at key positions `first` ..
  `last` (relative to a key chunk of `key_chunk` keys) sees none of it.
  Ints or arrays (one entry per example)."""
  left, right = window
  masked = False
  if causal:
    masked = masked | (last < 0)
  if left is not None:
    masked = masked | (first - left > key_chunk - 1)
  if right is not None:
    masked = masked | (last + right < 0)
  if chunk_lengths is not None:
    masked = masked | (chunk_lengths <= 0)
  return masked


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


def schedule(devices: int, layout: str, q_len: int, kv_len: int, *,
             causal: bool, window: tuple[int | None, int | None] = (None,
                                                                   None)
             ) -> np.ndarray:
  """Chunk pairs each device attends at each ring step, `(devices, devices)`.

  The ring's own skipping rule (`_pair_masked`) on the bottom-right
  alignment without key lengths: entry `[d, s]` counts the (query chunk,
  key chunk) pairs device `d` computes at step `s`; a pair is
  `(q_len / (devices * m)) x (kv_len / (devices * m))` scores, `m` the
  chunks per device (1 contiguous, 2 zigzag). The row sums are each
  device's work; their maximum paces the ring.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  per_device = _chunks_per_device(layout)
  q_chunk = q_len // (devices * per_device)
  kv_chunk = kv_len // (devices * per_device)
  pairs = np.zeros((devices, devices), np.int64)
  for me in range(devices):
    for step in range(devices):
      source = (me - step) % devices
      for q_id in _chunk_ids(me, devices, layout):
        for k_id in _chunk_ids(source, devices, layout):
          first = kv_len - q_len + q_id * q_chunk - k_id * kv_chunk
          pairs[me, step] += not _pair_masked(
              first, first + q_chunk - 1, kv_chunk, causal, tuple(window))
  return pairs


def ring_attention(local_attention: Callable, q, k, v, *, mesh,
                   context_axis: str, layout: str,
                   batch_axes: tuple[str, ...], head_axes: tuple[str, ...],
                   causal: bool, window: tuple[int | None, int | None],
                   key_lengths, q_offset, q_segments, kv_segments,
                   return_residuals, **options):
  """`local_attention` (`kernels.attention` without a mesh) run as a ring.

  Args:
    local_attention: attends one query chunk to one key chunk; called with
      `causal`, `window`, `q_offset`, `key_lengths`, `segment_ids`,
      `return_residuals=True` and `options`.
    q: `(batch, q_len, heads, d)`, k, v: `(batch, kv_len, kv_heads, d)`, the
      sequence split over `context_axis` in `layout` (`LAYOUTS`).
    mesh, context_axis, batch_axes, head_axes: where the blocks live.
    causal, window: the global masks (`kernels.attention`'s meaning).
    key_lengths: `(batch,)` global valid key counts, or None.
    q_offset: `(batch,)` global query offsets, or None (`kv_len - q_len`).
    q_segments, kv_segments: `(batch, q_len)`, `(batch, kv_len)` or None.
    return_residuals: also return the global log-sum-exp `(batch, heads,
      q_len)`.
    **options: scale, softcap, implementation.

  Returns:
    `(batch, q_len, heads, d)` in q's layout (and the log-sum-exp).
  """
  devices = mesh.shape[context_axis]
  per_device = _chunks_per_device(layout)
  b = batch_axes or None
  h = head_axes or None
  qkv = PartitionSpec(b, context_axis, h, None)
  rows = PartitionSpec(b, context_axis)
  q_len, kv_len = q.shape[1], k.shape[1]
  q_chunk = q_len // (devices * per_device)
  kv_chunk = kv_len // (devices * per_device)
  steps = list(range(devices))
  if q_offset is None and window != (None, None):
    # Steps no device attends in (a window shorter than the ring) are not
    # run: neither attended nor passed on.
    busy = schedule(devices, layout, q_len, kv_len, causal=causal,
                    window=window).any(axis=0)
    steps = [int(s) for s in np.flatnonzero(busy)] or [0]
  named = dict(key_lengths=key_lengths, q_offset=q_offset,
               q_segments=q_segments, kv_segments=kv_segments)
  present = [name for name, x in named.items() if x is not None]
  operands = [q, k, v] + [named[name] for name in present]
  specs = [qkv, qkv, qkv] + [
      rows if name.endswith("segments") else PartitionSpec(b)
      for name in present]
  ring = [(d, (d + 1) % devices) for d in range(devices)]

  def local(q, k, v, *rest):
    given = dict(zip(present, rest))
    lengths, offsets = given.get("key_lengths"), given.get("q_offset")
    q_seg, kv_seg = given.get("q_segments"), given.get("kv_segments")
    me = jax.lax.axis_index(context_axis)
    batch, _, heads, dim = q.shape
    if offsets is None:
      offsets = jnp.full((batch,), kv_len - q_len, jnp.int32)
    q_parts = jnp.split(q, per_device, axis=1)
    q_seg_parts = (None,) * per_device if q_seg is None else jnp.split(
        q_seg, per_device, axis=1)
    q_ids = _chunk_ids(me, devices, layout)
    acc = [(jnp.zeros((batch, q_chunk, heads, dim), jnp.float32),
            jnp.full((batch, heads, q_chunk), -jnp.inf, jnp.float32))
           for _ in range(per_device)]

    def attend(qi, q_part, q_seg_part, k_id, k_part, v_part, kv_seg_part):
      pair_offsets = offsets + (q_ids[qi] * q_chunk - k_id * kv_chunk)
      chunk_lengths = None if lengths is None else jnp.clip(
          lengths - k_id * kv_chunk, 0, kv_chunk)
      segments = None if q_seg is None else (q_seg_part, kv_seg_part)

      def run():
        out, lse = local_attention(
            q_part, k_part, v_part, causal=causal, window=window,
            q_offset=pair_offsets, key_lengths=chunk_lengths,
            segment_ids=segments, return_residuals=True, **options)
        return out.astype(jnp.float32), lse

      def empty():
        return (jnp.zeros((batch, q_chunk, heads, dim), jnp.float32),
                jnp.full((batch, heads, q_chunk), -jnp.inf, jnp.float32))

      masked = _pair_masked(pair_offsets, pair_offsets + q_chunk - 1,
                            kv_chunk, causal, window, chunk_lengths)
      if masked is False:  # no mask can empty a pair: attend unconditionally
        return run()
      return jax.lax.cond(jnp.all(masked), empty, run)

    for step in range(steps[-1] + 1):
      if step in steps:
        source = (me - step) % devices  # whose key block this device holds
        k_ids = _chunk_ids(source, devices, layout)
        k_parts = jnp.split(k, per_device, axis=1)
        v_parts = jnp.split(v, per_device, axis=1)
        kv_seg_parts = (None,) * per_device if kv_seg is None else (
            jnp.split(kv_seg, per_device, axis=1))
        for qi in range(per_device):
          for ki in range(per_device):
            o_new, lse_new = attend(qi, q_parts[qi], q_seg_parts[qi],
                                    k_ids[ki], k_parts[ki], v_parts[ki],
                                    kv_seg_parts[ki])
            acc[qi] = _merge(*acc[qi], o_new, lse_new)
      if step < steps[-1]:  # pass the key block on round the ring
        k, v = jax.lax.ppermute((k, v), context_axis, ring)
        if kv_seg is not None:
          kv_seg = jax.lax.ppermute(kv_seg, context_axis, ring)
    out = jnp.concatenate([o for o, _ in acc], axis=1).astype(q.dtype)
    lse = jnp.concatenate([lse for _, lse in acc], axis=2)
    return (out, lse) if return_residuals else out

  lse_spec = PartitionSpec(b, h, context_axis)
  out_specs = (qkv, lse_spec) if return_residuals else qkv
  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs),
                       out_specs=out_specs, check_vma=False)(*operands)
