"""Diagonal linear recurrences over time, sequential or in parallel.

    h_t = a_t * h_{t-1} + b_t          (elementwise; real or complex)

with `a_t`, `b_t` computed from the inputs alone, as in LRU (Orvieto et al.,
2023), minGRU/minLSTM (Feng et al., 2024), S5 and RG-LRU. Composing two steps
is again one affine step, `(a1, b1) then (a2, b2) = (a2 a1, a2 b1 + b2)`, an
associative operator, so a prefix scan computes every h_t at O(log T) depth
(Blelloch, 1990; Martin and Cundy, 2018).

`linear_scan` has the masking semantics of `recurrent.RNN`:

* `seq_lengths`: steps t >= L keep the carry (a = 1, b = 0) and output 0;
* `reset`: a_t = 0 before that step, an exact restart from the zero carry
  (packed sequences);
* `initial_carry` in, the final carry (each sequence's own last) out;
* `reverse`: h_t = a_t h_{t+1} + b_t within each sequence, padding left at
  the end, outputs aligned with the inputs.

`log_linear_scan` runs the same recurrence on logarithms of positive
`a`, `b`, `h` (Heinsen, 2023), as minGRU and minLSTM do in log space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels import mesh_axes
from rnn_transformer import validation

Array = jax.Array

METHODS = ("associative", "chunked", "sequential")
DEFAULT_CHUNK_SIZE = 64


class MethodChoice(NamedTuple):
  """A default scan method and where the choice comes from."""
  method: str
  provenance: str


# The method a layer uses when none is given, by `jax.default_backend()`.
# A row becomes "measured" only with a device, versions and date from
# scripts/bench_recurrence_sweep.py (BUILD_NOTES.md); until then it is a
# guess and says so.
DEFAULT_METHOD_BY_BACKEND: dict[str, MethodChoice] = {
    "cpu": MethodChoice("sequential", (
        "measured: 2-core x86-64, jax 0.10.2, 2026-11-27, B32 H256 float32 "
        "fwd+bwd, idle: fastest for minGRU at n = 256, 1024, 4096 and for "
        "the LRU at 1024 and 4096 (associative 1.26x at 256); associative "
        "0.58-0.99x and chunked 0.59-0.81x the sequential minGRU "
        "(docs/results/recurrence_sweep_cpu/recurrence_sweep.md)")),
    "gpu": MethodChoice("associative", (
        "measured: H100, jax 0.11.2, 2026-11-27, B32 H256 float32 fwd+bwd, "
        "fastest for minGRU and LRU at n = 256, 1024 and 4096; at 4096 "
        "minGRU 40x and LRU 23x their sequential form, chunked 1.4-1.6x "
        "slower than associative (docs/results/gpu_h100/recurrence_sweep.md)"
        )),
    "tpu": MethodChoice("associative", "not measured"),
}


def default_method(backend: str | None = None) -> str:
  """The scan method for `backend` (default: jax's) from the table above."""
  backend = jax.default_backend() if backend is None else backend
  choice = DEFAULT_METHOD_BY_BACKEND.get(backend)
  if choice is None:
    raise ValueError(
        f"backend: expected one of {sorted(DEFAULT_METHOD_BY_BACKEND)} (the "
        f"default-method table), got {backend!r}; pass method= explicitly")
  return choice.method


class _Semiring(NamedTuple):
  """(+, x, 0, 1) of the recurrence: reals/complex, or logarithms."""
  add: Callable[[Array, Array], Array]
  mul: Callable[[Array, Array], Array]
  zero: float
  one: float


_LINEAR = _Semiring(jnp.add, jnp.multiply, 0.0, 1.0)
# log(x + y) = logaddexp, log(x y) = log x + log y; log 0 = -inf, log 1 = 0.
_LOG = _Semiring(jnp.logaddexp, jnp.add, -np.inf, 0.0)


def _combine(ring: _Semiring):
  def combine(first, second):
    a1, b1 = first
    a2, b2 = second
    return ring.mul(a2, a1), ring.add(ring.mul(a2, b1), b2)
  return combine


def _sequential(ring, a, b, h0):
  """lax.scan over time; a, b: (batch, time, f), h0: (batch, f)."""
  def step(h, ab):
    a_t, b_t = ab
    h = ring.add(ring.mul(a_t, h), b_t)
    return h, h
  _, h = jax.lax.scan(step, h0, (jnp.swapaxes(a, 0, 1),
                                 jnp.swapaxes(b, 0, 1)))
  return jnp.swapaxes(h, 0, 1)


def _associative(ring, a, b, h0):
  """One prefix scan over all T steps: O(log T) depth."""
  # Folding h0 into the first step makes every prefix start from zero.
  b = b.at[:, 0].set(ring.add(ring.mul(a[:, 0], h0), b[:, 0]))
  _, h = jax.lax.associative_scan(_combine(ring), (a, b), axis=1)
  return h


def _chunked(ring, a, b, h0, chunk_size):
  """Prefix scans within all chunks at once, lax.scan across the chunks.

  Depth O(log chunk_size) + ceil(T / chunk_size): the within-chunk scans of
  every chunk run side by side, then one sequential pass carries h from
  chunk to chunk with one multiply-add per chunk, then every step adds its
  chunk's incoming carry.
  """
  batch, time, features = a.shape
  chunks = -(-time // chunk_size)
  pad = chunks * chunk_size - time
  if pad:  # identity steps at the end change neither outputs nor carry
    a = jnp.pad(a, ((0, 0), (0, pad), (0, 0)), constant_values=ring.one)
    b = jnp.pad(b, ((0, 0), (0, pad), (0, 0)), constant_values=ring.zero)
  shape = (batch, chunks, chunk_size, features)
  cum_a, cum_b = jax.lax.associative_scan(
      _combine(ring), (a.reshape(shape), b.reshape(shape)), axis=2)

  def carry_across(h, ab):  # h entering a chunk -> h leaving it
    a_chunk, b_chunk = ab
    return ring.add(ring.mul(a_chunk, h), b_chunk), h

  _, h_in = jax.lax.scan(carry_across, h0,
                         (jnp.swapaxes(cum_a[:, :, -1], 0, 1),
                          jnp.swapaxes(cum_b[:, :, -1], 0, 1)))
  h_in = jnp.swapaxes(h_in, 0, 1)[:, :, None]  # (batch, chunks, 1, f)
  h = ring.add(ring.mul(cum_a, h_in), cum_b)
  return h.reshape(batch, chunks * chunk_size, features)[:, :time]


def _check_args(a, b, initial_carry, seq_lengths, reset, method, chunk_size,
                names: tuple[str, str, str], allow_complex: bool) -> None:
  a_name, b_name, carry_name = names
  for name, x in ((a_name, a), (b_name, b)):
    validation.check_rank(name, x, 3, "(batch, time, features)")
    dtype = jnp.result_type(x)
    kinds = (jnp.floating, jnp.complexfloating) if allow_complex else (
        jnp.floating,)
    if not any(jnp.issubdtype(dtype, kind) for kind in kinds):
      raise validation.DTypeError(
          f"{name}: expected a {'floating or complex' if allow_complex else 'floating'} "
          f"dtype, got {dtype}")
  if a.shape != b.shape:
    raise ValueError(f"{b_name}: expected the shape of {a_name} {a.shape} "
                     f"(batch, time, features), got {b.shape}")
  if a.dtype != b.dtype:
    raise validation.DTypeError(f"{b_name}: expected the dtype of {a_name} "
                                f"({a.dtype}), got {b.dtype}")
  batch, time, features = a.shape
  if time < 1:
    raise ValueError(f"{a_name}: expected at least one time step, got shape "
                     f"{a.shape}")
  if initial_carry is not None:
    if np.shape(initial_carry) != (batch, features):
      raise ValueError(
          f"{carry_name}: expected shape (batch, features) = "
          f"{(batch, features)}, got {np.shape(initial_carry)}")
    if jnp.result_type(initial_carry) != a.dtype:
      raise validation.DTypeError(
          f"{carry_name}: expected the dtype of {a_name} ({a.dtype}), got "
          f"{jnp.result_type(initial_carry)}")
  if seq_lengths is not None:
    validation.check_seq_lengths(seq_lengths, batch, time)
  if reset is not None:
    validation.check_mask("reset", reset, (batch, time), "(batch, time)")
  if method not in METHODS:
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
  if not isinstance(chunk_size, (int, np.integer)) or isinstance(
      chunk_size, bool) or chunk_size < 1:
    raise ValueError(f"chunk_size: expected a positive int, got "
                     f"{chunk_size!r}")


def _time_sharding(mesh, time_axis, batch_axes, time: int, batch: int,
                   a_name: str):
  """`(mesh, time_axes, batch_axes)` checked, or None without a mesh."""
  if mesh is None:
    if time_axis is not None or batch_axes is not None:
      raise ValueError(f"mesh: time_axis and batch_axes need a "
                       f"jax.sharding.Mesh, got mesh=None with time_axis="
                       f"{time_axis!r}, batch_axes={batch_axes!r}")
    return None
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"mesh: expected a jax.sharding.Mesh, got "
                    f"{type(mesh).__name__}")

  time_axes = mesh_axes.mesh_axis_names("time_axis", time_axis, mesh)
  batch_axes = mesh_axes.mesh_axis_names("batch_axes", batch_axes, mesh)
  if not time_axes:
    raise ValueError("time_axis: expected the mesh axis (or axes) the time "
                     "steps are split over, got None")
  if set(time_axes) & set(batch_axes):
    raise ValueError(f"batch_axes: {batch_axes} overlaps time_axis "
                     f"{time_axes}")
  shards = int(np.prod([mesh.shape[x] for x in time_axes]))
  if time % shards:
    raise ValueError(
        f"{a_name}: time {time} is not divisible by the {shards} shards of "
        f"time_axis {time_axes}; pad the sequences to a multiple of {shards} "
        f"(with seq_lengths marking the padding)")
  batch_shards = int(np.prod([mesh.shape[x] for x in batch_axes]))
  if batch % batch_shards:
    raise ValueError(f"{a_name}: batch {batch} is not divisible by the "
                     f"{batch_shards} shards of batch_axes {batch_axes}")
  return mesh, time_axes, batch_axes


def _across_devices(ring: _Semiring, run, a, b, h0, reverse: bool, mesh,
                    time_axes: tuple[str, ...], batch_axes: tuple[str, ...],
                    compose=None, apply=None):
  """The scan with time split over `time_axes`: each device scans its steps
  from the zero carry, all devices exchange one (product of a, last h)
  summary each, and every device adds its incoming carry times its prefix
  products of a. Communication: one all-gather of (devices, batch, features)
  per summary, whatever the sequence length.

  `a: (batch, time, *a_shape)`, `b: (batch, time, *h_shape)`, `h0: (batch,
  *h_shape)`. `compose(earlier, later)` chains two steps' a and `apply(a,
  h)` applies an a to a state; both default to `ring.mul` (elementwise).
  Square matrices (`newton_recurrence`'s dense Jacobians) pass
  `later @ earlier` and the matrix-vector product; their summaries are
  then (devices, batch, S, S).
  """
  compose = ring.mul if compose is None else compose
  apply = ring.mul if apply is None else apply
  shards = int(np.prod([mesh.shape[x] for x in time_axes]))
  spec = jax.sharding.PartitionSpec
  batch_spec = batch_axes or None

  def local(a, b, h0):
    if reverse:  # this device's steps backwards; devices in reverse order
      a, b = jnp.flip(a, 1), jnp.flip(b, 1)
    h = run(a, b, jnp.full_like(h0, ring.zero))
    # Products of a (sums of log a): no zero b, whose logaddexp(-inf, -inf)
    # would give NaN gradients in log space.
    a_prefix = jax.lax.associative_scan(compose, a, axis=1)
    a_total = jax.lax.all_gather(a_prefix[:, -1], time_axes)
    h_last = jax.lax.all_gather(h[:, -1], time_axes)
    position = jax.lax.axis_index(time_axes)
    if reverse:
      a_total, h_last = a_total[::-1], h_last[::-1]
      position = shards - 1 - position
    carries = [h0]  # the carry entering device 0, 1, ..., and leaving the last
    for j in range(shards):
      carries.append(ring.add(apply(a_total[j], carries[-1]), h_last[j]))
    carry_in = jnp.stack(carries[:-1])[position]
    h = ring.add(h, apply(a_prefix, carry_in[:, None]))
    if reverse:
      h = jnp.flip(h, 1)
    return carries[-1], h

  steps = spec(batch_spec, time_axes, None)
  # check_vma=False: the final carry is the same fold of all-gathered
  # summaries on every time shard, which the type check cannot see.
  return jax.shard_map(
      local, mesh=mesh, in_specs=(steps, steps, spec(batch_spec, None)),
      out_specs=(spec(batch_spec, None), steps), check_vma=False)(a, b, h0)


def _scan(ring: _Semiring, a: Array, b: Array, initial_carry: Array | None,
          seq_lengths: Array | None, reset: Array | None, reverse: bool,
          method: str, chunk_size: int, sharding=None
          ) -> tuple[Array, Array]:
  reverse = validation.check_bool("reverse", reverse)
  batch, time, features = a.shape
  if initial_carry is None:
    initial_carry = jnp.full((batch, features), ring.zero, a.dtype)
  steps = jnp.arange(time)[None, :]
  valid = None if seq_lengths is None else steps < seq_lengths[:, None]
  if reset is not None:
    if reverse:
      # In reversed time a segment starts at its last input step: the step
      # just before the next reset (as in recurrent.RNN).
      reset = jnp.concatenate([reset[:, 1:], jnp.zeros_like(reset[:, :1])],
                              axis=1)
      if valid is not None:  # a reset in the padding restarts nothing
        reset = reset & (steps + 1 < seq_lengths[:, None])
    a = jnp.where(reset[..., None], jnp.asarray(ring.zero, a.dtype), a)
  if valid is not None:
    # Padding is the identity step: it keeps the carry, so the final carry
    # is each sequence's own last one, and in reverse the padding at the end
    # hands the initial carry to the last valid step unchanged.
    a = jnp.where(valid[..., None], a, jnp.asarray(ring.one, a.dtype))
    b = jnp.where(valid[..., None], b, jnp.asarray(ring.zero, b.dtype))
  def run(a, b, h0):  # the method's scan, forward in time
    if method == "sequential":
      return _sequential(ring, a, b, h0)
    if method == "associative":
      return _associative(ring, a, b, h0)
    return _chunked(ring, a, b, h0, chunk_size)

  if sharding is None:
    if reverse:
      a, b = jnp.flip(a, 1), jnp.flip(b, 1)
    h = run(a, b, initial_carry)
    if reverse:
      h = jnp.flip(h, 1)
    final = h[:, 0] if reverse else h[:, -1]
  else:
    final, h = _across_devices(ring, run, a, b, initial_carry, reverse,
                               *sharding)
  if valid is not None:
    h = jnp.where(valid[..., None], h, jnp.asarray(ring.zero, h.dtype))
  return final, h


def linear_scan(a: Array, b: Array, *, initial_carry: Array | None = None,
                seq_lengths: Array | None = None, reset: Array | None = None,
                reverse: bool = False, method: str = "associative",
                chunk_size: int = DEFAULT_CHUNK_SIZE,
                mesh: jax.sharding.Mesh | None = None,
                time_axis: str | tuple[str, ...] | None = None,
                batch_axes: str | tuple[str, ...] | None = None
                ) -> tuple[Array, Array]:
  """Computes `h_t = a_t * h_{t-1} + b_t` for every step.

  Args:
    a: `(batch, time, features)` decay, floating or complex.
    b: `(batch, time, features)` input, the dtype of `a`.
    initial_carry: `(batch, features)` h before the first step (after the
      last step with `reverse`); default zeros. The dtype of `a`.
    seq_lengths: `(batch,)` integers in [0, time]; steps t >= length keep the
      carry and output zeros.
    reset: `(batch, time)` bool; a_t = 0 where true, so h_t = b_t: the
      sequence restarts from the zero carry there. With `reverse`, a reset
      marks a segment's first step in input order, as in `recurrent.RNN`.
    reverse: run from each sequence's last valid step to its first,
      `h_t = a_t h_{t+1} + b_t`; outputs stay aligned with the inputs.
    method: "associative" (`jax.lax.associative_scan`, depth O(log T)),
      "chunked" (prefix scans within chunks of `chunk_size` steps, all
      chunks at once, then `lax.scan` across the T / chunk_size chunks:
      fewer levels than "associative" and less loop overhead than
      "sequential") or "sequential" (`lax.scan`, T steps).
    chunk_size: steps per chunk of the "chunked" method.
    mesh, time_axis, batch_axes: sequence parallelism. With a
      `jax.sharding.Mesh`, time is split over the mesh axis (or axes)
      `time_axis` and the batch over `batch_axes`: each device scans its
      own steps (with `method`), then one all-gather of every device's
      `(batch, features)` summary (the product of its a, its last h) fixes
      up each device's incoming carry, so communication does not grow with
      time (Blelloch's two-level scan across devices). Exact, gradients
      included; time must divide by the time shards.

  Returns:
    `(final_carry (batch, features), h (batch, time, features))`.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  _check_args(a, b, initial_carry, seq_lengths, reset, method, chunk_size,
              ("a", "b", "initial_carry"), allow_complex=True)
  sharding = _time_sharding(mesh, time_axis, batch_axes, a.shape[1],
                            a.shape[0], "a")
  return _scan(_LINEAR, a, b, initial_carry, seq_lengths, reset, reverse,
               method, chunk_size, sharding)


def log_linear_scan(log_a: Array, log_b: Array, *,
                    log_initial_carry: Array | None = None,
                    seq_lengths: Array | None = None,
                    reset: Array | None = None, reverse: bool = False,
                    method: str = "associative",
                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                    mesh: jax.sharding.Mesh | None = None,
                    time_axis: str | tuple[str, ...] | None = None,
                    batch_axes: str | tuple[str, ...] | None = None
                    ) -> tuple[Array, Array]:
  """`linear_scan` for positive a, b, h, on their logarithms.

      log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)

  Heinsen (2023) computes this in closed form, `a*_t + logcumsumexp(log b -
  a*)` with `a* = cumsum(log a)`; that subtracts numbers that grow with t
  (float32 loses digits once |a*| is large) and cannot express a reset
  (`a*` becomes -inf - -inf). The same sums in the (logaddexp, +) semiring
  go through the affine operator of `linear_scan` instead, so every method
  and mask carries over; `log h` never leaves the range of its values.

  Args:
    log_a, log_b: `(batch, time, features)` real floating; log 0 = -inf.
    log_initial_carry: `(batch, features)`; default -inf (h_0 = 0).
    seq_lengths, reset, reverse, method, chunk_size, mesh, time_axis,
      batch_axes: as in `linear_scan`.

  Returns:
    `(log final_carry, log h)`; padded steps hold -inf (h = 0).
  """
  log_a, log_b = jnp.asarray(log_a), jnp.asarray(log_b)
  _check_args(log_a, log_b, log_initial_carry, seq_lengths, reset, method,
              chunk_size, ("log_a", "log_b", "log_initial_carry"),
              allow_complex=False)
  sharding = _time_sharding(mesh, time_axis, batch_axes, log_a.shape[1],
                            log_a.shape[0], "log_a")
  return _scan(_LOG, log_a, log_b, log_initial_carry, seq_lengths, reset,
               reverse, method, chunk_size, sharding)

