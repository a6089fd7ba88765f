"""Nonlinear recurrences evaluated in parallel over time by Newton's method.

DEER (Lim et al., ICLR 2024) and quasi-DEER (Gonzalez et al., NeurIPS 2024)
solve `h_t = f(h_{t-1}, x_t)` for all t at once. Stack the states of all
steps into one unknown and guess it; linearise every step around the guess,

    h_t = J_t h_{t-1} + (f(h*_{t-1}, x_t) - J_t h*_{t-1}),
    J_t = df/dh (h*_{t-1}, x_t),

and solve that linear recurrence with a parallel (associative) scan; repeat
until the residual `max |h_t - f(h_{t-1}, x_t)|` is below `tol`. Iteration k
makes the first k steps exact whatever J is used, so any variant converges in
at most T iterations; with contracting dynamics it takes a handful.

Methods (`newton_scan(method=...)`):

* "full": exact S x S Jacobians (DEER); quadratic convergence near the
  solution, O(T S^2) memory, for small states.
* "quasi": the diagonal of the Jacobian only (quasi-DEER), solved with
  `linear_recurrence.linear_scan`; O(T S) memory, for large states.
* "damped": the quasi diagonal clipped to [-1, 1] and scaled by
  `1 - damping`, a trust region on the linearisation: products of clipped
  Jacobians cannot overflow (the instability of DEER at spectral radius > 1),
  and `damping=1` is the Picard (Jacobi) iteration `h_t <- f(h*_{t-1}, x_t)`.
  Still exact in at most T iterations.

Gradients go through the fixed point by the implicit function theorem
(`jax.custom_vjp`), never through the iterations: at the solution the adjoint
`lambda_t = dL/dh_t + J_{t+1}^T lambda_{t+1}` is itself a linear recurrence,
solved backward in time, then one parallel VJP of f at every
`(h*_{t-1}, x_t)` gives the gradients of the parameters, inputs and initial
carry.

The state is the carry pytree flattened per example to a vector of size S
(`(c, h)` for an LSTM: S = 2H). Masks follow `recurrent.RNN`: steps past a
sequence's length are the identity (J = I) and output zeros, a reset replaces
the previous carry by the reset carry (J = 0), and `reverse` runs each
sequence from its last valid step: step t follows step t + 1, the padding
at the end (identity steps) handing the initial carry to the last valid
step, so nothing is flipped.

Across devices (`newton_scan(mesh=, time_axis=, batch_axes=)`), every array
`(batch, time, ...)` is split over time (and batch), and no collective moves
a time axis:

* the cell at every step, its Jacobians and the residual are elementwise in
  time; XLA partitions them under sharding constraints (the residual's max is
  an all-reduce of one scalar);
* the state before each step is a shift by one step, `lax.pad` by (1, -1),
  which XLA partitions into one collective-permute of a `(batch, S)` slice;
* the linearised solve is `linear_recurrence.linear_scan(mesh=...)` for the
  diagonal methods and the same two-level scan over matrices for "full":
  each device scans its steps, then one all-gather of `(devices, batch, S)`
  (diagonal) or `(devices, batch, S, S)` (full) summaries fixes every
  device's incoming carry;
* what is sequential (the "sequential" adjoint, the fallback) runs in turn
  across devices (`_in_turn`): each device scans its own steps from the
  carry its neighbour hands on (a collective-permute of `(batch, S)`),
  `devices` rounds, so it takes the T steps of one device, without gathering
  the sequence.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import validation
from rnn_transformer.recurrences import linear_recurrence

Array = jax.Array
Carry = Any
StepFn = Callable[[Carry, Array], tuple[Carry, Array]]

METHODS = ("full", "quasi", "damped")
# The keyword options of `newton_scan` a caller of `newton_rnn` or
# `RNN(evaluation="newton", newton=...)` may set.
OPTIONS = ("method", "max_iters", "tol", "on_failure", "damping", "adjoint")
ON_FAILURE = ("fallback", "raise", "return")
ADJOINTS = ("associative", "sequential")
DEFAULT_MAX_ITERS = 100
# Residual at which the iteration stops, by state dtype: about 100 ulp of an
# O(1) state, below which a parallel scan's rounding leaves nothing to gain.
DEFAULT_TOL = {
    jnp.dtype(jnp.float64): 1e-10,
    jnp.dtype(jnp.float32): 1e-5,
    jnp.dtype(jnp.bfloat16): 5e-2,
    jnp.dtype(jnp.float16): 5e-3,
}
_HIGHEST = jax.lax.Precision.HIGHEST


class NewtonInfo(NamedTuple):
  """How a `newton_scan` call went; every field a scalar array.

  Attributes:
    iterations: int32, linearised solves performed (0 when the initial guess
      already met `tol`).
    residual: max over batch, time and state of `|h_t - f(h_{t-1}, x_t)|` at
      the last Newton iterate (before any fallback; NaN or inf if the
      iteration diverged).
    converged: bool, `residual <= tol` within `max_iters`.
    fell_back: bool, the states come from the sequential `lax.scan` because
      the iteration did not converge (`on_failure="fallback"`).
  """
  iterations: Array
  residual: Array
  converged: Array
  fell_back: Array


# (mesh, time_axes, batch_axes), as `linear_recurrence._time_sharding`
# checks them; None on one device.
_Sharding = tuple[jax.sharding.Mesh, tuple[str, ...], tuple[str, ...]] | None


@dataclasses.dataclass(frozen=True)
class _Options:
  method: str
  max_iters: int
  tol: float
  damping: float
  fallback: bool
  adjoint: str
  reverse: bool = False
  sharding: _Sharding = None

  def constrain(self, x: Array, time: bool = True) -> Array:
    """`x: (batch, time, ...)` (`time=False`: `(batch, ...)`) split over the
    batch and time axes of `sharding`; unchanged without one."""
    if self.sharding is None:
      return x
    mesh, time_axes, batch_axes = self.sharding
    spec = jax.sharding.PartitionSpec(batch_axes or None,
                                      *((time_axes,) if time else ()))
    return jax.lax.with_sharding_constraint(
        x, jax.sharding.NamedSharding(mesh, spec))

  def scan_kwargs(self) -> dict[str, Any]:
    """`linear_scan`'s sequence-parallel arguments."""
    if self.sharding is None:
      return {}
    mesh, time_axes, batch_axes = self.sharding
    return dict(mesh=mesh, time_axis=time_axes, batch_axes=batch_axes or None)


class _StateLayout:
  """Flattens a carry pytree, leaves `(..., *shape)`, to `(..., S)` and back."""

  def __init__(self, example: Carry):
    """`example`: one carry without the batch axis."""
    leaves, self.tree = jax.tree.flatten(example)
    self.shapes = [np.shape(leaf) for leaf in leaves]
    self.sizes = [int(np.prod(shape)) for shape in self.shapes]
    self.size = sum(self.sizes)

  def flatten(self, carry: Carry, lead: tuple[int, ...]) -> Array:
    leaves = jax.tree.leaves(carry)
    return jnp.concatenate(
        [jnp.reshape(leaf, lead + (-1,)) for leaf in leaves], axis=-1)

  def unflatten(self, state: Array) -> Carry:
    lead = state.shape[:-1]
    splits = np.cumsum(self.sizes)[:-1]
    parts = jnp.split(state, splits, axis=-1)
    return jax.tree.unflatten(self.tree, [
        jnp.reshape(part, lead + shape)
        for part, shape in zip(parts, self.shapes)])


def _transition(step: Callable[..., Any], layout: _StateLayout):
  """One example's masked step on flat states (the recurrence `F_t`).

  `step(carry, x, *consts) -> (carry, y)`. Returns
  `F(consts, s_prev, x, valid, reset, s_reset) -> (s, y)` with `s_prev,
  s_reset: (S,)` and scalar bool masks.
  """
  def transition(consts, s_prev, x, valid, reset, s_reset):
    prev = jnp.where(reset, s_reset, s_prev)
    carry, y = step(layout.unflatten(prev), x, *consts)
    s = layout.flatten(carry, ()).astype(s_prev.dtype)
    return jnp.where(valid, s, s_prev), jnp.where(valid, y, jnp.zeros_like(y))
  return transition


def _over_batch_and_time(fn):
  """vmaps a per-example transition over `(batch, time)`; consts shared and
  the reset state per example."""
  over_time = jax.vmap(fn, in_axes=(None, 0, 0, 0, 0, None))
  return jax.vmap(over_time, in_axes=(None, 0, 0, 0, 0, 0))


def _first_step(time: int, ndim: int, reverse: bool) -> Array:
  """`(1, time, 1, ...)` bool of rank `ndim`, true at the step processed
  first (the last with `reverse`)."""
  first = jnp.arange(time) == (time - 1 if reverse else 0)
  return first.reshape((1, time) + (1,) * (ndim - 2))


def _shift(x: Array, first: Array, reverse: bool) -> Array:
  """`x: (batch, time, ...)` moved one step later in processing order:
  `y_t = x_{t-1}` (`x_{t+1}` with `reverse`), `first: (batch, ...)` at the
  first step processed.

  `lax.pad` by (1, -1) rather than a concatenate: XLA partitions it over a
  time-split axis into one collective-permute of a one-step slice, where
  the concatenate gathers the whole axis.
  """
  config = [(0, 0, 0)] * x.ndim
  config[1] = (-1, 1, 0) if reverse else (1, -1, 0)
  shifted = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
  return jnp.where(_first_step(x.shape[1], x.ndim, reverse),
                   jnp.expand_dims(first, 1), shifted)


def _previous(options: _Options, states: Array, s0: Array) -> Array:
  """`(batch, time, S)` states -> the state before each step."""
  return options.constrain(_shift(states, s0, options.reverse))


def _full_jacobians(transition, consts, prev, xs, valid, reset, s_reset):
  """`(f (B, T, S), J (B, T, S, S))`, J_t = dF_t/ds_{t-1} at `prev`."""
  def states_and_jacobian(consts, s_prev, x, v, r, s_r):
    def f(s):
      s_new = transition(consts, s, x, v, r, s_r)[0]
      return s_new, s_new
    jacobian, s_new = jax.jacfwd(f, has_aux=True)(s_prev)
    return s_new, jacobian
  return _over_batch_and_time(states_and_jacobian)(
      consts, prev, xs, valid, reset, s_reset)


def _diagonal_jacobians(transition, consts, prev, xs, valid, reset, s_reset):
  """`(f (B, T, S), diag J (B, T, S))` with O(B T S) memory.

  One JVP per state coordinate (a generic cell has no cheaper diagonal), in
  blocks of 16 so the full Jacobian is never stored.
  """
  batched = _over_batch_and_time(transition)
  f, jvp = jax.linearize(
      lambda p: batched(consts, p, xs, valid, reset, s_reset)[0], prev)
  size = prev.shape[-1]

  def column_entry(i):
    basis = jnp.zeros((size,), prev.dtype).at[i].set(1)
    return jvp(jnp.broadcast_to(basis, prev.shape))[..., i]

  diagonal = jax.lax.map(column_entry, jnp.arange(size),
                         batch_size=min(size, 16))
  return f, jnp.moveaxis(diagonal, 0, -1)


def _compose(earlier: Array, later: Array) -> Array:
  return jnp.matmul(later, earlier, precision=_HIGHEST)


def _apply(a: Array, h: Array) -> Array:
  """`a: (..., S, S)` times `h: (..., S)`, broadcasting the leading axes."""
  return jnp.matmul(a, h[..., None], precision=_HIGHEST)[..., 0]


def _matrix_scan(a: Array, b: Array, reverse: bool = False,
                 sharding: _Sharding = None) -> Array:
  """`h_t = a_t h_{t-1} + b_t` from h_{-1} = 0 with `a: (B, T, S, S)`,
  `b: (B, T, S)` (`h_t = a_t h_{t+1} + b_t` from h_T = 0 with `reverse`).

  A prefix scan over affine maps: `(a1, b1) then (a2, b2) = (a2 a1,
  a2 b1 + b2)`, O(log T) depth and O(T S^2) memory. With `sharding`, time
  split over devices as `linear_recurrence.linear_scan` splits it: each
  device scans its steps, then an all-gather of `(devices, B, S, S)`
  summaries.
  """
  def run(a, b, h0):
    b = b.at[:, 0].add(_apply(a[:, 0], h0))

    def combine(first, second):
      a1, b1 = first
      a2, b2 = second
      return _compose(a1, a2), _apply(a2, b1) + b2
    return jax.lax.associative_scan(combine, (a, b), axis=1)[1]

  h0 = jnp.zeros(b.shape[:1] + b.shape[2:], b.dtype)
  if sharding is not None:
    # linear_scan's two-level scan, with matrices for its products.
    return linear_recurrence._across_devices(
        linear_recurrence._LINEAR, run, a, b, h0, reverse, *sharding,
        compose=_compose, apply=_apply)[1]
  if reverse:
    return jnp.flip(run(jnp.flip(a, 1), jnp.flip(b, 1), h0), 1)
  return run(a, b, h0)


def _in_turn(options: _Options, scan, replicated, per_example, carry,
             sequences):
  """A sequential scan over time, across devices when `options.sharding`.

  `scan(replicated, per_example, carry, sequences) -> (carry, outputs)` runs
  `lax.scan` over the time axis of the `(batch, time, ...)` `sequences`
  (backwards when it was built so; `options.reverse` says which way the
  carry travels); `per_example` and `carry` are `(batch, ...)`. Across
  devices each device scans its own steps from the carry the previous
  device (in scan order) handed on by a collective-permute of one
  `(batch, ...)` carry; after `devices - 1` rounds every device holds its
  true incoming carry and one more scan gives the outputs. Exact, T
  sequential steps as on one device, and no time axis gathered.

  Returns the outputs, `(batch, time, ...)`.
  """
  if options.sharding is None:
    return scan(replicated, per_example, carry, sequences)[1]
  mesh, time_axes, batch_axes = options.sharding
  shards = int(np.prod([mesh.shape[x] for x in time_axes]))
  first = shards - 1 if options.reverse else 0
  step = -1 if options.reverse else 1
  perm = [(i, i + step) for i in range(shards) if 0 <= i + step < shards]

  def local(replicated, per_example, carry, sequences):
    position = jax.lax.axis_index(time_axes)

    def hand_on(_, carry_in):
      carry_out, _ = scan(replicated, per_example, carry_in, sequences)
      handed = jax.lax.ppermute(carry_out, time_axes, perm)
      return jax.tree.map(lambda c, h: jnp.where(position == first, c, h),
                          carry, handed)
    carry_in = jax.lax.fori_loop(0, shards - 1, hand_on, carry)
    return scan(replicated, per_example, carry_in, sequences)[1]

  spec = jax.sharding.PartitionSpec
  batch_spec = batch_axes or None
  steps = spec(batch_spec, time_axes)
  # check_vma=False: the carry varies over the time axes only after the
  # first hand-on, which the loop's type check cannot express.
  return jax.shard_map(
      local, mesh=mesh,
      in_specs=(spec(), spec(batch_spec), spec(batch_spec), steps),
      out_specs=steps, check_vma=False)(replicated, per_example, carry,
                                        sequences)


def _newton_step(options, prev, f, jacobian):
  """The states solving the recurrence linearised at `prev`."""
  # The carry before the first step is given: that step is exact already.
  first = _first_step(f.shape[1], f.ndim, options.reverse)
  if options.method == "full":
    b = jnp.where(first, f, f - _apply(jacobian, prev))
    return options.constrain(_matrix_scan(jacobian, b, options.reverse,
                                          options.sharding))
  diagonal = jacobian
  if options.method == "damped":
    diagonal = (1.0 - options.damping) * jnp.clip(diagonal, -1.0, 1.0)
  b = jnp.where(first, f, f - diagonal * prev)
  return options.constrain(linear_recurrence.linear_scan(
      diagonal, b, reverse=options.reverse, **options.scan_kwargs())[1])


def _linearise(options, transition, consts, prev, xs, valid, reset, s_reset):
  if options.method == "full":
    f, jacobian = _full_jacobians(transition, consts, prev, xs, valid, reset,
                                  s_reset)
  else:
    f, jacobian = _diagonal_jacobians(transition, consts, prev, xs, valid,
                                      reset, s_reset)
  return options.constrain(f), options.constrain(jacobian)


def _sequential_states(transition, options, consts, s0, xs, valid, reset,
                       s_reset):
  """The oracle: `lax.scan` over time (in turn across devices), `(B, T, S)`."""
  over_batch = jax.vmap(transition, in_axes=(None, 0, 0, 0, 0, 0))

  def scan(consts, s_reset, s0, sequences):
    def body(s, inputs):
      x, v, r = inputs
      s = over_batch(consts, s, x, v, r, s_reset)[0]
      return s, s

    time_major = tuple(jnp.swapaxes(a, 0, 1) for a in sequences)
    final, states = jax.lax.scan(body, s0, time_major,
                                 reverse=options.reverse)
    return final, jnp.swapaxes(states, 0, 1)

  return options.constrain(_in_turn(options, scan, consts, s_reset, s0,
                                    (xs, valid, reset)))


def _solve(transition, options, consts, s0, xs, valid, reset, s_reset):
  """Newton iterations in a `lax.while_loop`; `(states, NewtonInfo)`."""
  def linearise(states):
    prev = _previous(options, states, s0)
    f, jacobian = _linearise(options, transition, consts, prev, xs, valid,
                             reset, s_reset)
    gap = jnp.abs(states - f)
    # XLA's max reduction may drop NaNs (all-NaN gives -inf on CPU), so a
    # non-finite iterate (full Newton's Jacobian products overflow when the
    # dynamics expand) is marked explicitly: its residual is NaN.
    residual = jnp.where(jnp.all(jnp.isfinite(gap)), jnp.max(gap), jnp.nan)
    return prev, f, jacobian, residual.astype(jnp.float32)

  def cond(loop):
    iterations, _, _, _, _, residual = loop
    # A NaN residual (a diverged iteration) stops the loop: NaN > tol is False,
    # and NaN <= tol is False, so it is never reported as converged.
    return (iterations < options.max_iters) & (residual > options.tol)

  def body(loop):
    iterations, _, prev, f, jacobian, _ = loop
    states = _newton_step(options, prev, f, jacobian)
    return (iterations + 1, states, *linearise(states))

  guess = options.constrain(jnp.broadcast_to(
      s0[:, None], (s0.shape[0], xs.shape[1], s0.shape[-1])))
  iterations, states, _, _, _, residual = jax.lax.while_loop(
      cond, body, (jnp.int32(0), guess, *linearise(guess)))
  converged = residual <= options.tol
  fell_back = jnp.asarray(False)
  if options.fallback:
    fell_back = ~converged
    states = jax.lax.cond(
        converged, lambda: states,
        lambda: _sequential_states(transition, options, consts, s0, xs,
                                   valid, reset, s_reset))
  return states, NewtonInfo(iterations, residual, converged, fell_back)


def _adjoint(options, transition, consts, prev, xs, valid, reset, s_reset,
             cotangent):
  """`lambda_t = g_t + J_{t+1}^T lambda_{t+1}` backward from the last step
  (`J_{t-1}^T lambda_{t-1}` forward from step 0 with `reverse`)."""
  backward = not options.reverse  # the direction lambda travels
  if options.adjoint == "associative":
    _, jacobian = _full_jacobians(transition, consts, prev, xs, valid, reset,
                                  s_reset)
    # mu_t = J_t^T lambda_t = J_t^T (g_t + mu_{t+1}) is a linear recurrence
    # in J_t^T itself, so the Jacobians need no shift; lambda_t = g_t +
    # mu_{t+1} shifts mu, one (batch, S) step across devices.
    a = options.constrain(jnp.swapaxes(jacobian, -1, -2))
    mu = _matrix_scan(a, _apply(a, cotangent), backward, options.sharding)
    mu = options.constrain(mu)
    return cotangent + options.constrain(
        _shift(mu, jnp.zeros_like(mu[:, 0]), backward))

  over_batch = jax.vmap(transition, in_axes=(None, 0, 0, 0, 0, 0))

  def scan(consts, s_reset, carried, sequences):
    def body(carried, inputs):  # carried = J_{t+1}^T lambda_{t+1}
      p, x, v, r, g = inputs
      lam = g + carried
      _, pullback = jax.vjp(
          lambda s: over_batch(consts, s, x, v, r, s_reset)[0], p)
      return pullback(lam)[0], lam

    time_major = tuple(jnp.swapaxes(a, 0, 1) for a in sequences)
    carried, lam = jax.lax.scan(body, carried, time_major, reverse=backward)
    return carried, jnp.swapaxes(lam, 0, 1)

  adjoint_options = dataclasses.replace(options, reverse=backward)
  return options.constrain(_in_turn(
      adjoint_options, scan, consts, s_reset, jnp.zeros_like(prev[:, 0]),
      (prev, xs, valid, reset, cotangent)))


def _fixed_point_fwd(transition, options, consts, s0, xs, valid, reset,
                     s_reset):
  states, info = _solve(transition, options, consts, s0, xs, valid, reset,
                        s_reset)
  return (states, info), (consts, s0, xs, valid, reset, s_reset, states)


def _fixed_point_bwd(transition, options, residuals, cotangents):
  consts, s0, xs, valid, reset, s_reset, states = residuals
  cotangent = options.constrain(cotangents[0])
  prev = _previous(options, states, s0)
  lam = _adjoint(options, transition, consts, prev, xs, valid, reset, s_reset,
                 cotangent)
  # One parallel VJP of every step at the solution, with cotangent lambda_t.
  batched = _over_batch_and_time(transition)
  _, pullback = jax.vjp(
      lambda c, p, x, r: batched(c, p, x, valid, reset, r)[0],
      consts, prev, xs, s_reset)
  d_consts, d_prev, d_xs, d_reset_state = pullback(lam)
  d_s0 = d_prev[:, -1] if options.reverse else d_prev[:, 0]
  return d_consts, d_s0, d_xs, None, None, d_reset_state


_fixed_point = jax.custom_vjp(
    lambda transition, options, *args: _solve(transition, options, *args),
    nondiff_argnums=(0, 1))
_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


def _check_options(method, max_iters, tol, on_failure, damping, adjoint,
                   time):
  validation.check_choice("method", method, METHODS)
  validation.check_choice("on_failure", on_failure, ON_FAILURE)
  if adjoint is not None:
    validation.check_choice("adjoint", adjoint, ADJOINTS)
  max_iters = validation.check_int("max_iters", max_iters, optional=True)
  # inf would accept any iterate: the "converged" outputs are the guess.
  validation.check_real("tol", tol, positive=True, optional=True)
  if not isinstance(damping, numbers.Real) or isinstance(damping, bool) or (
      not 0.0 <= damping <= 1.0):
    raise ValueError(f"damping: expected a float in [0, 1], got {damping!r}")
  return min(time, DEFAULT_MAX_ITERS) if max_iters is None else max_iters


def _check_carry(name: str, carry: Carry, batch: int) -> jnp.dtype:
  leaves = jax.tree.leaves(carry)
  if not leaves:
    raise ValueError(f"{name}: expected a pytree of (batch, ...) arrays, got "
                     f"{carry!r}")
  dtypes = {jnp.result_type(leaf) for leaf in leaves}
  if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
    raise validation.DTypeError(
        f"{name}: expected leaves of one floating dtype, got "
        f"{sorted(str(d) for d in dtypes)}")
  shapes = jax.tree.map(np.shape, carry)
  if any(np.ndim(leaf) < 1 or np.shape(leaf)[0] != batch for leaf in leaves):
    raise ValueError(f"{name}: expected leaves of shape (batch, ...) with "
                     f"batch={batch}, got shapes {shapes}")
  return next(iter(dtypes))


def _check_like(name: str, carry: Carry, reference: Carry,
                what: str, dtype: Any = None) -> None:
  """Raises unless `carry` has the structure and shapes of `reference` (and,
  given `dtype`, leaves of that dtype: DTypeError)."""
  want = jax.tree.map(np.shape, reference)
  got = jax.tree.map(np.shape, carry)
  if jax.tree.structure(carry) != jax.tree.structure(reference) or (
      jax.tree.leaves(got) != jax.tree.leaves(want)):
    raise ValueError(f"{name}: expected the structure and shapes of {what} "
                     f"{want}, got {got}")
  if dtype is not None:
    dtypes = sorted({str(jnp.result_type(leaf))
                     for leaf in jax.tree.leaves(carry)})
    if dtypes != [str(jnp.dtype(dtype))]:
      raise validation.DTypeError(
          f"{name}: expected leaves of {what}'s dtype {jnp.dtype(dtype)}, "
          f"got {dtypes}")


def _check_step(step: StepFn, carry: Carry, x: Array
                ) -> jax.ShapeDtypeStruct:
  """Raises unless `step(carry, x)` returns `(carry of the same shapes and
  dtype, y)` with `y` one array; returns `y`'s shape and dtype. `carry` and
  `x` may be `jax.ShapeDtypeStruct`s."""
  try:
    new_carry, y = jax.eval_shape(step, carry, x)
  except (TypeError, ValueError) as error:
    raise ValueError(
        f"step: expected step(carry, x) -> (new_carry, output) for one "
        f"example's carry {jax.tree.map(np.shape, carry)} and inputs "
        f"{np.shape(x)}; calling it raised {type(error).__name__}: "
        f"{error}") from error
  got = jax.tree.map(lambda s: s.shape, new_carry)
  want = jax.tree.map(np.shape, carry)
  if jax.tree.structure(new_carry) != jax.tree.structure(carry) or (
      jax.tree.leaves(got) != jax.tree.leaves(want)):
    raise ValueError(f"step: expected a new carry shaped like the carry "
                     f"{want}, got {got}")
  want_dtypes = [str(leaf.dtype) for leaf in jax.tree.leaves(carry)]
  got_dtypes = [str(leaf.dtype) for leaf in jax.tree.leaves(new_carry)]
  if got_dtypes != want_dtypes:
    # lax.scan refuses a carry whose dtype changes; so does this.
    raise validation.DTypeError(
        f"step: expected a new carry of the carry's dtype "
        f"{sorted(set(want_dtypes))}, got {sorted(set(got_dtypes))}; cast "
        f"the new carry")
  if not isinstance(y, jax.ShapeDtypeStruct):
    raise TypeError(
        f"step: expected step(carry, x) -> (new_carry, output) with the "
        f"output one array (zeros where a step is padding), got "
        f"{type(y).__name__} {jax.tree.map(lambda s: s.shape, y)!r}")
  return y


def check_options(name: str, options: Mapping[str, Any]) -> None:
  """Raises TypeError naming any key of `options` that `newton_scan` does
  not take (`OPTIONS`); `name` is the caller's argument."""
  unknown = sorted(set(options) - set(OPTIONS))
  if unknown:
    raise TypeError(f"{name}: unknown newton_scan options {unknown}; "
                    f"expected names from {OPTIONS}")


def newton_scan(
    step: StepFn,
    inputs: Array,
    initial_carry: Carry,
    *,
    seq_lengths: Array | None = None,
    reset: Array | None = None,
    reset_carry: Carry | None = None,
    reverse: bool = False,
    method: str = "full",
    max_iters: int | None = None,
    tol: float | None = None,
    on_failure: str = "fallback",
    damping: float = 0.5,
    adjoint: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    time_axis: str | tuple[str, ...] | None = None,
    batch_axes: str | tuple[str, ...] | None = None,
) -> tuple[Carry, Array, NewtonInfo]:
  """Runs `step` over time by Newton iterations (DEER / quasi-DEER).

  The semantics are those of `recurrent.RNN` with `keep_order=True`; the
  result equals the sequential `lax.scan` once the residual is below `tol`.

  Args:
    step: `step(carry, x) -> (new_carry, y)` for ONE example (no batch axis):
      carry a pytree of arrays, `x: (features,)`. Differentiable; it may
      close over parameters (they are hoisted with `jax.closure_convert` so
      their gradients flow). Flax cells work as
      `lambda c, x: cell.apply(variables, c, x)` (see `newton_rnn`).
    inputs: `(batch, time, features)`, floating.
    initial_carry: the carry before the first step, leaves `(batch, ...)` of
      one floating dtype.
    seq_lengths: `(batch,)` integers in [0, time]; steps t >= length keep the
      carry and output zeros.
    reset: `(batch, time)` bool; where true the carry is replaced by
      `reset_carry` before that step. With `reverse`, a reset marks a
      segment's first step in input order, as in `recurrent.RNN`.
    reset_carry: the carry a reset restarts from, like `initial_carry`;
      default zeros (`RNN` restarts from `cell.initialize_carry`).
    reverse: run each sequence from its last valid step to its first;
      padding stays at the end and outputs stay aligned with the inputs.
    method: "full" (exact Jacobians, O(T S^2) memory), "quasi" (their
      diagonal, O(T S)) or "damped" (the diagonal clipped to [-1, 1] and
      scaled by `1 - damping`); see the module doc.
    max_iters: Newton iterations at most; default `min(time, 100)`. `time`
      iterations always suffice in exact arithmetic.
    tol: stop once `max |h_t - f(h_{t-1}, x_t)| <= tol`; default by state
      dtype (`DEFAULT_TOL`, 1e-5 for float32).
    on_failure: if not converged after `max_iters`: "fallback" reruns the
      recurrence with `lax.scan` (under `lax.cond`; `info.fell_back` says so),
      "raise" raises ValueError (needs concrete values: not under `jit`,
      where it raises at trace time saying so), "return" returns the last
      iterate with `info.converged` False and its residual.
    damping: in [0, 1], for method "damped": 0 is quasi-Newton, 1 the Picard
      iteration.
    adjoint: how the backward pass solves the adjoint recurrence:
      "associative" (full Jacobians, a prefix scan: O(log T) depth, O(T S^2)
      memory) or "sequential" (a reverse `lax.scan` of per-step VJPs: T
      steps, O(T S) memory). Default: "associative" for method "full",
      "sequential" otherwise. Both are exact.
    mesh, time_axis, batch_axes: sequence parallelism, as in
      `linear_recurrence.linear_scan` (the same checks: time must divide by
      the time shards, batch by the batch shards): the steps are split over
      the mesh axis (or axes) `time_axis` and the batch over `batch_axes`,
      and no collective moves a time axis (module doc). Per Newton
      iteration: a collective-permute of one `(batch, S)` step, an
      all-gather of `(devices, batch, S)` summaries (`(devices, batch, S,
      S)` for "full" and the "associative" adjoint) and an all-reduce of the
      residual. The "sequential" adjoint and the fallback run in turn across
      the devices, T sequential steps as on one device.

  Returns:
    `(final_carry, outputs (batch, time, ...), info: NewtonInfo)`. The final
    carry is each sequence's own last one (the first step's with `reverse`).
  """
  if not callable(step):
    raise TypeError(f"step: expected a callable step(carry, x) -> "
                    f"(carry, y), got {type(step).__name__}")
  validation.check_rank("inputs", inputs, 3, "(batch, time, features)")
  validation.check_floating("inputs", inputs)
  validation.check_time("inputs", inputs)
  batch, time = np.shape(inputs)[:2]
  max_iters = _check_options(method, max_iters, tol, on_failure, damping,
                             adjoint, time)
  # linear_scan's checks of the mesh, the axis names and the divisibility.
  sharding = linear_recurrence._time_sharding(
      mesh, time_axis, batch_axes, time, batch, "inputs")
  reverse = validation.check_bool("reverse", reverse)
  dtype = _check_carry("initial_carry", initial_carry, batch)
  if reset_carry is None:
    reset_carry = jax.tree.map(jnp.zeros_like, initial_carry)
  else:
    _check_like("reset_carry", reset_carry, initial_carry, "initial_carry",
                dtype=dtype)
  if seq_lengths is not None:
    validation.check_seq_lengths(seq_lengths, batch, time)
  if reset is not None:
    validation.check_mask("reset", reset, (batch, time), "(batch, time)")
  y = _check_step(
      step, jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(
          np.shape(leaf)[1:], jnp.result_type(leaf)), initial_carry),
      jax.ShapeDtypeStruct(np.shape(inputs)[2:], jnp.result_type(inputs)))
  if batch == 0:  # nothing to solve: lax.scan's carry and (empty) outputs
    info = NewtonInfo(iterations=jnp.zeros((), jnp.int32),
                      residual=jnp.zeros((), jnp.float32),
                      converged=jnp.ones((), bool),
                      fell_back=jnp.zeros((), bool))
    return initial_carry, jnp.zeros((0, time) + y.shape, y.dtype), info
  one_carry = jax.tree.map(lambda leaf: leaf[0], initial_carry)

  options = _Options(
      method=method, max_iters=max_iters,
      tol=DEFAULT_TOL.get(jnp.dtype(dtype), 1e-5) if tol is None else float(
          tol),
      damping=float(damping), fallback=on_failure == "fallback",
      adjoint=adjoint or ("associative" if method == "full" else
                          "sequential"),
      reverse=reverse, sharding=sharding)

  inputs = options.constrain(inputs)
  steps = jnp.arange(time)[None, :]
  valid = (jnp.ones((batch, time), bool) if seq_lengths is None else
           steps < seq_lengths[:, None])
  reset = jnp.zeros((batch, time), bool) if reset is None else reset
  if reverse:  # as recurrent.RNN: a reversed segment starts before a reset
    reset = _shift(reset, jnp.zeros_like(reset[:, 0]), reverse=True)
    if seq_lengths is not None:
      reset = reset & (steps + 1 < seq_lengths[:, None])
  valid, reset = options.constrain(valid), options.constrain(reset)

  layout = _StateLayout(one_carry)
  converted, consts = jax.closure_convert(step, one_carry, inputs[0, 0])
  transition = _transition(converted, layout)
  s0 = options.constrain(layout.flatten(initial_carry, (batch,)).astype(
      dtype), time=False)
  s_reset = options.constrain(layout.flatten(reset_carry, (batch,)).astype(
      dtype), time=False)
  states, info = _fixed_point(transition, options, tuple(consts), s0, inputs,
                              valid, reset, s_reset)

  if on_failure == "raise":
    _raise_unless_converged(info)
  # The outputs are one more parallel evaluation at the solution, so their
  # gradient w.r.t. the parameters needs no custom rule.
  _, outputs = _over_batch_and_time(transition)(
      tuple(consts), _previous(options, states, s0), inputs, valid, reset,
      s_reset)
  final_carry = layout.unflatten(states[:, 0] if reverse else states[:, -1])
  return final_carry, options.constrain(outputs), info


def _raise_unless_converged(info: NewtonInfo) -> None:
  try:
    converged = bool(info.converged)
  except jax.errors.ConcretizationTypeError as error:
    raise ValueError(
        "on_failure='raise' needs concrete values to decide, but this call "
        "is traced (under jit, vmap or a loop); use on_failure='fallback' "
        "(the default) or 'return' and read info.converged") from error
  if not converged:
    raise ValueError(
        f"newton_scan did not converge: residual {float(info.residual):.3g} "
        f"after {int(info.iterations)} iterations (max_iters); raise "
        f"max_iters, try method='damped', or use on_failure='fallback'")


def newton_rnn(
    cell: nn.RNNCellBase,
    variables: Any,
    inputs: Array,
    *,
    initial_carry: Carry | None = None,
    seq_lengths: Array | None = None,
    reset: Array | None = None,
    reverse: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    time_axis: str | tuple[str, ...] | None = None,
    batch_axes: str | tuple[str, ...] | None = None,
    **options: Any,
) -> tuple[Carry, Array, NewtonInfo]:
  """`newton_scan` of a flax cell with its variables: `recurrent.RNN` in
  parallel over time.

  Cells with `project_inputs`/`step` (those of `rnn_transformer.layers.cells`) have
  their input projection computed once for all steps, outside the Newton
  iterations, as `RNN` hoists it.

  Args:
    cell: a `flax.linen.RNNCellBase`, e.g. `SimpleRNNCell`, `GRUCell`,
      `LSTMCell` or one of flax's cells.
    variables: the cell's variables, `{"params": ...}` (as from
      `cell.init`, or `RNN`'s `variables["params"]["cell"]` wrapped).
    inputs: `(batch, time, features)`, floating.
    initial_carry: default `cell.initialize_carry` (zeros); resets restart
      from `cell.initialize_carry`, as in `RNN`.
    seq_lengths, reset, reverse, mesh, time_axis, batch_axes: as in
      `newton_scan` (`RNN(evaluation="newton")` passes the mesh of an
      `activation_sharding` context with a `context` axis).
    **options: `method`, `max_iters`, `tol`, `on_failure`, `damping`,
      `adjoint` of `newton_scan`.

  Returns:
    `(final_carry, outputs (batch, time, hidden), info)`.
  """
  check_options("options", options)
  if not isinstance(cell, nn.RNNCellBase):
    raise TypeError(f"cell: expected a recurrent cell (an nn.RNNCellBase "
                    f"such as GRUCell), got {type(cell).__name__}")
  if not isinstance(variables, Mapping) or "params" not in variables:
    got = (f"keys {sorted(variables)}" if isinstance(variables, Mapping)
           else type(variables).__name__)
    raise ValueError(
        f"variables: expected the cell's variables {{'params': ...}} (as "
        f"cell.init returns, or {{'params': rnn_variables['params']['cell']}}"
        f"), got {got}")
  validation.check_rank("inputs", inputs, 3, "(batch, time, features)")
  validation.check_floating("inputs", inputs)
  validation.check_time("inputs", inputs)
  default_carry = cell.initialize_carry(jax.random.key(0),
                                        np.shape(inputs[:, 0]))
  if initial_carry is None:
    initial_carry = default_carry
  else:
    _check_like("initial_carry", initial_carry, default_carry,
                f"{type(cell).__name__}'s carry")
    dtype = _check_carry("initial_carry", initial_carry, np.shape(inputs)[0])
    # Resets restart from the cell's carry in the dtype the user's carries.
    default_carry = jax.tree.map(lambda leaf: leaf.astype(dtype),
                                 default_carry)
  if hasattr(cell, "project_inputs") and hasattr(cell, "step"):
    inputs = cell.apply(variables, inputs, method=cell.project_inputs)

    def step(carry, projected):
      return cell.apply(variables, carry, projected, method=cell.step)
  else:
    def step(carry, x):
      return cell.apply(variables, carry, x)
  return newton_scan(step, inputs, initial_carry, seq_lengths=seq_lengths,
                     reset=reset, reset_carry=default_carry, reverse=reverse,
                     mesh=mesh, time_axis=time_axis, batch_axes=batch_axes,
                     **options)
