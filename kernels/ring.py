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
not run at all (`schedule`): in the contiguous layout a causal window
shorter than a block costs one `ppermute`, not `devices - 1`. In the
zigzag layout a device's late chunk needs its neighbour's, so a sliding
window still visits the last step; a two-sided window visits every step.

Layouts (`LAYOUTS`). "contiguous": device `d` holds block `d` of the
sequence; with a causal mask device `d` has `d + 1` blocks of work and the
last device sets the pace. "zigzag" (Brandon et al. 2023, "Striped
Attention", and MaxText's load-balanced context parallelism): the sequence
is cut into `2 c` chunks and device `d` holds chunks `d` and `2c - 1 - d`,
so every device has the same causal work (3 chunk pairs on its own step, 2
on every other). The caller keeps the sequence in that order
(`to_zigzag` / `from_zigzag`), as a data pipeline would; the outputs come
back in the layout the inputs had.

Reverse-mode only (like the kernels' own custom VJPs): `jax.jvp` through
the ring raises. Backward (`jax.custom_vjp`): the forward keeps only this device's q, k, v,
output and log-sum-exp; the backward runs the ring again, the key/value
gradients travelling with their block and going home in one last hop. Each
pair's kernel backward gets its partial output's and log-sum-exp's
cotangents through the merge (`w = exp(lse_pair - lse)`: `w dO` and
`w (rowsum(dO * (o_pair - o)) + dlse)`), recomputing the pair's forward
first. So residual memory is O(n / devices) per device, where
differentiating through the ring kept every step's block (O(n)).
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


def _check_layout_args(x, devices: int, axis: int) -> jax.Array:
  x = jnp.asarray(x)
  if not isinstance(devices, (int, np.integer)) or isinstance(
      devices, bool) or devices < 1:
    raise ValueError(f"devices: expected a positive int, got {devices!r}")
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or (
      not -x.ndim <= axis < x.ndim):
    raise ValueError(f"axis: expected an axis of x (ndim {x.ndim}), got "
                     f"{axis!r}")
  if x.shape[axis] % (2 * devices):
    raise ValueError(f"x: the zigzag layout needs axis {axis} to divide "
                     f"into 2 x {devices} chunks, got length {x.shape[axis]}")
  return x


def to_zigzag(x: jax.Array, devices: int, axis: int = 1) -> jax.Array:
  """Reorders `axis` (the sequence) so that its `devices` contiguous blocks
  are the zigzag layout's: block `d` = chunks `d` and `2 devices - 1 - d`.

  Shape unchanged, e.g. `(batch, seq, heads, head_dim)` with `axis=1`;
  `seq` must divide by `2 * devices`. Positions, targets and segment ids
  of the same sequence are reordered the same way.
  """
  x = _check_layout_args(x, devices, axis)
  chunks = jnp.split(x, 2 * int(devices), axis=axis)
  return jnp.concatenate([chunks[c] for c in _zigzag_order(int(devices))],
                         axis)


def from_zigzag(x: jax.Array, devices: int, axis: int = 1) -> jax.Array:
  """Inverse of `to_zigzag`: the zigzag layout back in sequence order."""
  x = _check_layout_args(x, devices, axis)
  chunks = jnp.split(x, 2 * int(devices), axis=axis)
  inverse = np.argsort(_zigzag_order(int(devices)))
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
  last = steps[-1]
  # After the last step device d holds the block of device d - last: the key
  # and value gradients it accumulated go home in one hop.
  home = [(d, (d - last) % devices) for d in range(devices)]

  def split(x, axis=1):
    """`per_device` chunks of `x` along the sequence, or Nones."""
    if x is None:
      return (None,) * per_device
    return jnp.split(x, per_device, axis=axis)

  def walk(blocks, visit):
    """Passes `blocks` (a tuple of `(batch, kv_seq, ...)` arrays or None)
    round the ring; at each attended step `visit(source, blocks)` returns
    them updated. Returns the blocks this device holds at the end."""
    me = jax.lax.axis_index(context_axis)
    for step in range(last + 1):
      if step in steps:
        blocks = visit((me - step) % devices, blocks)
      if step < last:
        blocks = jax.lax.ppermute(blocks, context_axis, ring)
    return blocks

  def pairs(given, source):
    """(query chunk, key chunk, q_offset, key lengths, masked) of every
    chunk pair at the step holding `source`'s key block."""
    offsets = given["q_offset"]
    lengths = given.get("key_lengths")
    q_ids = _chunk_ids(jax.lax.axis_index(context_axis), devices, layout)
    k_ids = _chunk_ids(source, devices, layout)
    for qi in range(per_device):
      for ki in range(per_device):
        pair_offsets = offsets + (q_ids[qi] * q_chunk - k_ids[ki] * kv_chunk)
        chunk_lengths = None if lengths is None else jnp.clip(
            lengths - k_ids[ki] * kv_chunk, 0, kv_chunk)
        masked = _pair_masked(pair_offsets, pair_offsets + q_chunk - 1,
                              kv_chunk, causal, window, chunk_lengths)
        yield qi, ki, pair_offsets, chunk_lengths, masked

  def guarded(masked, run, empty):
    """`run()`, or `empty()` where every example's pair is masked."""
    if masked is False:  # no mask can empty a pair
      return run()
    return jax.lax.cond(jnp.all(masked), empty, run)

  def attend(q_part, k_part, v_part, pair_offsets, chunk_lengths, segments):
    # The offset moves only the causal and window masks (attention refuses
    # it without them); the pair's place in the sequence matters to no
    # other mask.
    moved = causal or window != (None, None)
    out, lse = local_attention(
        q_part, k_part, v_part, causal=causal, window=window,
        q_offset=pair_offsets if moved else None, key_lengths=chunk_lengths,
        segment_ids=segments, return_residuals=True, **options)
    return out.astype(jnp.float32), lse

  def forward(q, k, v, given):
    """This device's output (float32) and log-sum-exp."""
    batch, _, heads, dim = q.shape
    q_parts, q_segs = split(q), split(given.get("q_segments"))
    empty_out = (jnp.zeros((batch, q_chunk, heads, dim), jnp.float32),
                 jnp.full((batch, heads, q_chunk), -jnp.inf, jnp.float32))
    acc = [empty_out] * per_device

    def visit(source, blocks):
      k_parts, v_parts, kv_segs = (split(x) for x in blocks)
      for qi, ki, offsets, lengths, masked in pairs(given, source):
        segments = None if q_segs[qi] is None else (q_segs[qi], kv_segs[ki])

        def run(qi=qi, ki=ki, offsets=offsets, lengths=lengths,
                segments=segments):
          return attend(q_parts[qi], k_parts[ki], v_parts[ki], offsets,
                        lengths, segments)

        acc[qi] = _merge(*acc[qi], *guarded(masked, run, lambda: empty_out))
      return blocks

    walk((k, v, given.get("kv_segments")), visit)
    return (jnp.concatenate([o for o, _ in acc], axis=1),
            jnp.concatenate([lse for _, lse in acc], axis=2))

  def backward(q, k, v, given, out, lse, d_out, d_lse):
    """q, k, v gradients: the ring again, each pair's kernel backward fed
    the cotangents of its partial output and log-sum-exp through the merge:
    with w = exp(lse_pair - lse), d o_pair = w dO and d lse_pair =
    w (rowsum(dO * (o_pair - o)) + d lse)."""
    q_parts, q_segs = split(q), split(given.get("q_segments"))
    outs, lses = split(out), split(lse, axis=2)
    d_outs = split(d_out.astype(jnp.float32))
    d_lses = split(d_lse.astype(jnp.float32), axis=2)
    dq = [jnp.zeros(x.shape, jnp.float32) for x in q_parts]

    def visit(source, blocks):
      k, v, kv_seg, dk, dv = blocks
      k_parts, v_parts, kv_segs = split(k), split(v), split(kv_seg)
      dk_parts, dv_parts = list(split(dk)), list(split(dv))
      for qi, ki, offsets, lengths, masked in pairs(given, source):
        segments = None if q_segs[qi] is None else (q_segs[qi], kv_segs[ki])

        def run(qi=qi, ki=ki, offsets=offsets, lengths=lengths,
                segments=segments):
          (o_pair, lse_pair), pull = jax.vjp(
              lambda q_, k_, v_: attend(q_, k_, v_, offsets, lengths,
                                        segments),
              q_parts[qi], k_parts[ki], v_parts[ki])
          w = jnp.where(jnp.isfinite(lse_pair), jnp.exp(
              lse_pair - jnp.where(jnp.isfinite(lses[qi]), lses[qi], 0.0)),
                        0.0)  # (batch, heads, q)
          rows = jnp.swapaxes(w, 1, 2)[..., None]  # (batch, q, heads, 1)
          shift = jnp.swapaxes(jnp.sum(d_outs[qi] * (o_pair - outs[qi]),
                                       axis=-1), 1, 2)
          grads = pull((rows * d_outs[qi], w * (shift + d_lses[qi])))
          return tuple(g.astype(jnp.float32) for g in grads)

        def empty(qi=qi, ki=ki):
          return tuple(jnp.zeros(x.shape, jnp.float32) for x in (
              q_parts[qi], k_parts[ki], v_parts[ki]))

        d_q, d_k, d_v = guarded(masked, run, empty)
        dq[qi] = dq[qi] + d_q
        dk_parts[ki] = dk_parts[ki] + d_k
        dv_parts[ki] = dv_parts[ki] + d_v
      return (k, v, kv_seg, jnp.concatenate(dk_parts, axis=1),
              jnp.concatenate(dv_parts, axis=1))

    zeros = jnp.zeros(k.shape, jnp.float32)
    *_, dk, dv = walk((k, v, given.get("kv_segments"), zeros, zeros), visit)
    if last:
      dk, dv = jax.lax.ppermute((dk, dv), context_axis, home)
    return (jnp.concatenate(dq, axis=1).astype(q.dtype), dk.astype(k.dtype),
            dv.astype(v.dtype))

  # The backward reruns the ring (each pair's forward and backward kernels)
  # instead of keeping every step's key block: O(n / devices) residuals.
  @jax.custom_vjp
  def ring_local(q, k, v, given):
    out, lse = forward(q, k, v, given)
    return out.astype(q.dtype), lse

  def ring_fwd(q, k, v, given):
    out, lse = forward(q, k, v, given)
    return (out.astype(q.dtype), lse), (q, k, v, given, out, lse)

  def ring_bwd(residuals, cotangents):
    q, k, v, given, out, lse = residuals
    grads = backward(q, k, v, given, out, lse, *cotangents)
    return (*grads, jax.tree.map(lambda _: None, given))

  ring_local.defvjp(ring_fwd, ring_bwd)

  def local(q, k, v, *rest):
    given = dict(zip(present, rest))
    if "q_offset" not in given:  # the bottom-right alignment
      given["q_offset"] = jnp.full((q.shape[0],), kv_len - q_len, jnp.int32)
    out, lse = ring_local(q, k, v, given)
    return (out, lse) if return_residuals else out

  lse_spec = PartitionSpec(b, h, context_axis)
  out_specs = (qkv, lse_spec) if return_residuals else qkv
  return jax.shard_map(local, mesh=mesh, in_specs=tuple(specs),
                       out_specs=out_specs, check_vma=False)(*operands)
