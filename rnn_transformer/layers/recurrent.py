"""Run a recurrent cell over time: `RNN`, `Bidirectional` and `StackedRNN`.

Inputs `(batch, time, features)` and outputs `(batch, time, hidden)`, or
time-major and with several batch axes as flax allows (`RNN.time_major`,
`RNN.num_batch_dims`). Time runs through `jax.lax.scan` via Flax's lifted
`nn.scan` (parameters broadcast across steps), so compile time does not grow
with sequence length and the sequential dependency the seed calls "RNNs are
slow" is explicit; cells linear in h run a parallel scan instead, and
`evaluation="newton"` evaluates any cell in parallel over time by Newton
iterations (`newton_recurrence`).
"""

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import parallel
from rnn_transformer import validation
from rnn_transformer.recurrences import fused_recurrence
from rnn_transformer.recurrences import linear_recurrence
from rnn_transformer.recurrences import newton_recurrence
from rnn_transformer.recurrences.sequence_order import flip_sequences

Array = jax.Array
Carry = Any

EVALUATIONS = ("scan", "newton")


class Defaults(NamedTuple):
  """How `RNN` runs a fused-gate cell when the caller does not say."""
  hoist_input_projection: bool  # one (batch*time, in) x (in, G*H) matmul
  defer_weight_gradients: bool  # fused_recurrence's backward
  evidence: str  # the measurement behind the choice
  # Deferral only up to this many sequences per call (None: any batch): the
  # per-step dW matmul is a rank-`batch` update, poor at small batches and
  # efficient enough at large ones that one big matmul stops paying.
  defer_max_batch: int | None = None

  def defers(self, batch: int) -> bool:
    """Whether weight gradients are deferred for `batch` sequences."""
    return self.defer_weight_gradients and (
        self.defer_max_batch is None or batch <= self.defer_max_batch)


_CPU = ("2-core x86-64 (AVX-512), jax 0.10.2, 2026-11-27, median of three "
        "idle runs of 3 repeats, BUILD_NOTES.md")
_GPU = ("H100, jax 0.11.2, 2026-11-27, B32 T256 H256 fwd+bwd, 2 repeats x 10 "
        "rounds, spread <= 0.02, docs/results/gpu_h100_lease3/call3/"
        "bench_recurrent.md")

# By `jax.default_backend()`, then by cell class (the first name in the
# cell's MRO that has a row; "*" otherwise). Each row from
# scripts/bench_recurrent.py on an idle machine (BUILD_NOTES.md, "Recurrent
# layers against flax"), as flax / this at B32 T256 H256.
DEFAULTS_BY_BACKEND: dict[str, dict[str, Defaults]] = {
    "cpu": {  # flax / this at (B32 T256 H256), (B8 T1024 H128), (B64 T128 H512);
        # spreads in BUILD_NOTES.md
        "SimpleRNNCell": Defaults(True, True, (
            f"{_CPU}: hoisted + deferred 1.50, 1.81, 1.03x flax; per-step + "
            f"deferred 1.28, 1.33, 1.00x; hoisted 1.18, 1.32, 1.01x; "
            f"per-step 1.01, 1.00, 1.01x")),
        "LSTMCell": Defaults(False, True, (
            f"{_CPU}: per-step + deferred 1.18, 1.75, 1.10x flax; hoisted + "
            f"deferred 1.05, 1.68, 1.04x; hoisted 1.02, 1.32, 1.00x; "
            f"per-step 1.00, 0.86, 0.99x")),
        "GRUCell": Defaults(False, True, (
            f"{_CPU}: per-step + deferred 1.18, 1.76, 1.07x flax; hoisted "
            f"1.17, 1.51, 1.05x; per-step 1.12, 1.03, 1.04x; hoisted + "
            f"deferred 1.02, 1.70, 1.01x")),
        "*": Defaults(False, False, "not measured; per-step, as flax runs"),
    },
    "gpu": {"*": Defaults(True, True, (
        f"{_GPU}: hoisted + deferred 1.61/2.51/2.14x flax (rnn/lstm/gru), "
        f"hoisted 1.34/1.72/1.63x, per-step + deferred 1.31/1.95/1.52x, "
        f"per-step 1.00/1.20/1.17x; cuDNN LSTM 1.27x"))},
    "tpu": {"*": Defaults(True, False, "not measured; hoisted as cuDNN does")},
}


def backend_defaults(cell: Any = None, backend: str | None = None) -> Defaults:
  """The `DEFAULTS_BY_BACKEND` row for `cell` on `backend` (default: jax's)."""
  backend = jax.default_backend() if backend is None else backend
  if backend not in DEFAULTS_BY_BACKEND:
    raise ValueError(
        f"backend: expected one of {sorted(DEFAULTS_BY_BACKEND)} (the RNN "
        f"defaults table), got {backend!r}; pass hoist_input_projection= and "
        f"defer_weight_gradients= explicitly")
  rows = DEFAULTS_BY_BACKEND[backend]
  for cls in type(cell).__mro__:
    if cls.__name__ in rows:
      return rows[cls.__name__]
  return rows["*"]


def _check_carry(initial_carry: Carry, expected: Carry) -> None:
  got = jax.tree.map(jnp.shape, initial_carry)
  want = jax.tree.map(jnp.shape, expected)
  if jax.tree.structure(initial_carry) != jax.tree.structure(expected) or (
      jax.tree.leaves(got) != jax.tree.leaves(want)):
    raise ValueError(
        f"initial_carry: expected the cell's carry structure with shapes "
        f"{want}, got {got}")
  for leaf, default in zip(jax.tree.leaves(initial_carry),
                           jax.tree.leaves(expected)):
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      raise validation.DTypeError(
          f"initial_carry: expected floating arrays (the cell's carry is "
          f"{jnp.result_type(default)}), got dtype {jnp.result_type(leaf)}")


class RNN(nn.Module):
  """Runs `cell` over the time axis of `(batch, time, features)` inputs.

  A drop-in for `flax.linen.RNN`, with these differences:

  * padding (steps t >= `seq_lengths`) keeps the carry and outputs zeros,
    where flax computes through it and selects the carry afterwards;
  * `reverse` flips each sequence within its length and leaves the padding
    in place at the end; flax's `flip_sequences` reverses the padding too
    (`[x0, x1, pad0, pad1]` -> ours `[x1, x0, pad0, pad1]`, flax's
    `[x1, x0, pad1, pad0]`), which only matters to a cell that reads padding;
  * a zero-length sequence returns its initial carry unchanged; flax returns
    the carry after the last padded step (index `seq_lengths - 1 = -1`);
  * `reset` masks and `state_perturbation` (for gradient-flow experiments);
  * where weight gradients are deferred (`defer_weight_gradients`, on by
    default for this library's cells where it was measured faster), forward-
    mode autodiff (`jax.jvp`, `jax.jacfwd`) needs
    `defer_weight_gradients=False`.

  Attributes:
    cell: any `flax.linen.RNNCellBase`, e.g. `SimpleRNNCell`, `LSTMCell`,
      `GRUCell` or one of flax's own cells.
    reverse: process each sequence from its last valid step to its first
      (padding stays at the end).
    keep_order: with `reverse`, return outputs in input order rather than in
      processing order.
    return_carry: return `(final_carry, outputs)` instead of `outputs`.
    time_major: inputs and outputs are `(time, *batch, features)` (and the
      `reset`/`state_perturbation` masks `(time, *batch, ...)`), as in flax.
    num_batch_dims: leading batch axes: inputs `(*batch, time, features)`,
      `seq_lengths` `(*batch,)`, carry leaves `(*batch, hidden)`. None: every
      axis before time and features, as flax infers its `num_batch_dims`;
      an int also checks the rank.
    unroll: steps unrolled per scan iteration (`jax.lax.scan`'s `unroll`).
    hoist_input_projection: compute the input projection of all steps as one
      matmul before the scan. Needs a cell with `project_inputs`/`step` (the
      cells of this library). None: per backend (`DEFAULTS_BY_BACKEND`), and
      never for other cells.
    defer_weight_gradients: for a `FusedGateCell`, differentiate with
      `fused_recurrence`'s backward: the reverse loop keeps dh_{t-1} = du_t
      W_h^T (and dx_t when not hoisted), and dW_h, dW_x, db are one matmul
      each over all steps, as cuDNN does. None: per backend and batch size
      (`DEFAULTS_BY_BACKEND`, `Defaults.defers`) where it applies. That
      backward is a `jax.custom_vjp`, which JAX cannot differentiate in
      forward mode: for `jax.jvp`/`jax.jacfwd` through the layer pass
      False (reverse mode and forward-over-reverse, e.g. `jax.hessian`,
      work either way).
    scan_method: for cells with a linear recurrence (`MinGRU`, `MinLSTM`,
      `LRU`: they have `scan_over_time`), "associative", "chunked" or
      "sequential" (see `linear_recurrence.linear_scan`); None: per backend
      (`linear_recurrence.DEFAULT_METHOD_BY_BACKEND`). Other cells always
      run `lax.scan` and reject a method.
    chunk_size: steps per chunk of the "chunked" method.
    evaluation: "scan" (the sequential recurrence) or "newton": all steps at
      once by Newton iterations on the whole sequence (DEER / quasi-DEER,
      `newton_recurrence.newton_rnn`), exact to the scan at convergence, with
      gradients by the implicit function theorem. `newton` holds its options
      (`method`, `max_iters`, `tol`, `on_failure`, `damping`, `adjoint`);
      each call sows its `NewtonInfo` (iterations, residual, converged,
      fell_back) as `intermediates/newton_info`, read with
      `apply(..., mutable=["intermediates"])`. Not for cells with a linear
      recurrence (already parallel) nor with `state_perturbation`. Inside
      `parallel.activation_sharding` with a time (`context`) axis the steps
      stay split over its devices (`newton_scan(mesh=...)`).
    newton: options of `newton_recurrence.newton_scan` for
      `evaluation="newton"` (default: its own, method "full").
  """
  cell: nn.RNNCellBase
  reverse: bool = False
  keep_order: bool = False
  return_carry: bool = False
  time_major: bool = False
  num_batch_dims: int | None = None
  unroll: int = 1
  hoist_input_projection: bool | None = None
  defer_weight_gradients: bool | None = None
  scan_method: str | None = None
  chunk_size: int = linear_recurrence.DEFAULT_CHUNK_SIZE
  evaluation: str = "scan"
  newton: Mapping[str, Any] | None = None

  def __post_init__(self):
    check_cell("cell", self.cell)
    for name in ("reverse", "keep_order", "return_carry", "time_major"):
      validation.check_bool(name, getattr(self, name))
    for name in ("hoist_input_projection", "defer_weight_gradients"):
      if getattr(self, name) is not None:
        validation.check_bool(name, getattr(self, name))
    validation.check_int("num_batch_dims", self.num_batch_dims, optional=True)
    validation.check_int("unroll", self.unroll)
    validation.check_int("chunk_size", self.chunk_size)
    if self.scan_method is not None:
      validation.check_choice("scan_method", self.scan_method,
                              linear_recurrence.METHODS)
    validation.check_choice("evaluation", self.evaluation, EVALUATIONS)
    if self.newton is not None:
      if not isinstance(self.newton, Mapping):
        raise TypeError(f"newton: expected a mapping of newton_scan options "
                        f"or None, got {type(self.newton).__name__}")
      newton_recurrence.check_options("newton", self.newton)
    super().__post_init__()

  def _should_hoist(self) -> bool:
    splittable = hasattr(self.cell, "project_inputs") and hasattr(
        self.cell, "step")
    if self.hoist_input_projection is None:
      return splittable and backend_defaults(
          self.cell).hoist_input_projection
    if self.hoist_input_projection and not splittable:
      raise ValueError(
          f"hoist_input_projection=True needs a cell with project_inputs() and "
          f"step(); {type(self.cell).__name__} has neither")
    return self.hoist_input_projection

  def _should_defer(self, batch: int) -> bool:
    fused = all(hasattr(self.cell, name) for name in (
        "combine", "recurrent_kernel", "input_weights"))
    if self.defer_weight_gradients is None:
      return fused and backend_defaults(self.cell).defers(batch)
    if self.defer_weight_gradients and not fused:
      raise ValueError(
          f"defer_weight_gradients=True needs a cell with input_weights(), "
          f"recurrent_kernel() and combine() (a FusedGateCell); got "
          f"{type(self.cell).__name__}")
    return self.defer_weight_gradients

  @nn.compact
  def __call__(
      self,
      inputs: Array,
      *,
      initial_carry: Carry | None = None,
      init_key: Array | None = None,
      seq_lengths: Array | None = None,
      reset: Array | None = None,
      state_perturbation: Array | None = None,
      reverse: bool | None = None,
      keep_order: bool | None = None,
      return_carry: bool | None = None,
  ) -> Array | tuple[Carry, Array]:
    """Applies the cell at every step.

    Args:
      inputs: `(batch, time, features)`, floating (`(time, batch, features)`
        with `time_major`; `batch` is `num_batch_dims` axes).
      initial_carry: the carry before the first step, e.g. the final carry of
        the previous chunk for truncated backpropagation through time.
        Default: `cell.initialize_carry` (zeros).
      init_key: key for `cell.initialize_carry` when `initial_carry` is None.
      seq_lengths: `(batch,)` integers in [0, time]. Steps at t >= length keep
        the carry unchanged and output zeros, so the final carry is the carry
        after each sequence's own last step (the initial carry for length 0).
      reset: `(batch, time)` bool. Where true, the carry is re-initialised to
        the default initial carry before that step: packed sequences, each
        starting at a reset. With `reverse`, a sequence's reset marks its
        first step in input order and the reversed pass restarts after it.
      state_perturbation: `(batch, time, hidden)`, added to the hidden state
        after each step inside the recurrence. Zeros leave the result
        unchanged; its gradient is dL/dh_t (see `gradient_flow`).
      reverse, keep_order, return_carry: override the attributes per call.

    Returns:
      outputs `(batch, time, hidden)`, or `(final_carry, outputs)`.
    """
    reverse = validation.check_bool(
        "reverse", self.reverse if reverse is None else reverse)
    keep_order = validation.check_bool(
        "keep_order", self.keep_order if keep_order is None else keep_order)
    return_carry = validation.check_bool(
        "return_carry",
        self.return_carry if return_carry is None else return_carry)

    layout = _Layout.of(inputs, self.num_batch_dims, self.time_major,
                        getattr(self.cell, "num_feature_axes", 1))
    inputs = layout.to_canonical(inputs)
    validation.check_floating("inputs", inputs)
    validation.check_time("inputs", inputs)
    validation.check_features("inputs", inputs, 2)
    batch, time = inputs.shape[:2]
    if seq_lengths is not None:
      seq_lengths = layout.batch_vector("seq_lengths", seq_lengths)
      validation.check_seq_lengths(seq_lengths, batch, time)
    if reset is not None:
      validation.check_mask("reset", reset, layout.shape(()),
                            layout.describe(""))
      reset = layout.to_canonical(reset)
    if initial_carry is not None:
      initial_carry = layout.carry_to_canonical(initial_carry)

    default_carry = self.cell.initialize_carry(
        jax.random.key(0) if init_key is None else init_key, inputs[:, 0].shape)
    if initial_carry is None:
      initial_carry = default_carry
    else:
      _check_carry(initial_carry, default_carry)
    if state_perturbation is not None:
      hidden = jax.tree.leaves(default_carry)[-1].shape[-1]
      validation.check_rank("state_perturbation", state_perturbation,
                            len(layout.shape((hidden,))),
                            layout.describe(", hidden"))
      if state_perturbation.shape != layout.shape((hidden,)):
        raise ValueError(
            f"state_perturbation: expected shape {layout.describe(', hidden')}"
            f" = {layout.shape((hidden,))}, got {state_perturbation.shape}")
      state_perturbation = layout.to_canonical(state_perturbation)

    final_carry, outputs = self._run(
        inputs, initial_carry, default_carry, seq_lengths, reset,
        state_perturbation, reverse, keep_order)
    outputs = layout.from_canonical(outputs)
    final_carry = layout.carry_from_canonical(final_carry)
    return (final_carry, outputs) if return_carry else outputs

  def _run(self, inputs, initial_carry, default_carry, seq_lengths, reset,
           state_perturbation, reverse, keep_order):
    """The recurrence over `(batch, time, features)`; see `__call__`."""
    time = inputs.shape[1]
    validation.check_choice("evaluation", self.evaluation, EVALUATIONS)
    if self.evaluation == "newton":
      return self._run_newton(inputs, initial_carry, seq_lengths, reset,
                              state_perturbation, reverse, keep_order)
    if self.newton is not None:
      raise ValueError(f"newton: options for evaluation='newton' only; got "
                       f"{dict(self.newton)} with evaluation="
                       f"{self.evaluation!r}")
    if hasattr(self.cell, "scan_over_time"):
      if state_perturbation is not None:
        raise ValueError(
            f"state_perturbation: not supported by {type(self.cell).__name__}"
            f", whose steps run inside a linear scan")
      final_carry, outputs = self.cell.scan_over_time(
          inputs, initial_carry=initial_carry, seq_lengths=seq_lengths,
          reset=reset, reverse=reverse, method=self.scan_method,
          chunk_size=self.chunk_size)
      if reverse and not keep_order:  # processing order, as below
        outputs = flip_sequences(outputs, seq_lengths)
      return final_carry, outputs
    if self.scan_method is not None:
      raise ValueError(
          f"scan_method: only cells with a linear recurrence (MinGRU, "
          f"MinLSTM, LRU) take one; {type(self.cell).__name__} runs lax.scan, "
          f"got scan_method={self.scan_method!r}")

    valid = None
    if seq_lengths is not None:
      valid = jnp.arange(time)[None, :] < seq_lengths[:, None]  # (B, T)
    if reset is not None and reverse:
      # In reversed time a segment starts at its last input step: the step
      # just before the next reset (or the sequence end, where a reversed
      # pass starts from the initial carry anyway).
      reset = jnp.concatenate(
          [reset[:, 1:], jnp.zeros_like(reset[:, :1])], axis=1)
      if seq_lengths is not None:  # a reset in the padding restarts nothing
        reset = reset & (jnp.arange(time)[None, :] + 1 < seq_lengths[:, None])
    elif reset is not None and valid is not None:
      reset = reset & valid  # nor in forward time: the final carry stays

    hoist = self._should_hoist()
    defer = self._should_defer(inputs.shape[0])
    step_inputs = inputs
    if reverse:
      step_inputs, reset, state_perturbation = (
          None if x is None else flip_sequences(x, seq_lengths)
          for x in (step_inputs, reset, state_perturbation))
    # valid is symmetric under the per-sequence flip: no need to flip it.

    def time_major(x):
      return None if x is None else jnp.swapaxes(x, 0, 1)

    xs = tuple(time_major(x)
               for x in (step_inputs, valid, reset, state_perturbation))
    # Under `parallel.activation_sharding` the batch stays split and every
    # weight is gathered once, before the time loop, not inside it.
    sharded = parallel.current() is not None
    xs = (parallel.constrain_batch(xs[0], batch_dim=1, time_dim=0),) + xs[1:]
    if hoist:
      xs = (self._project_rows(xs[0]),) + xs[1:]

    if defer:
      input_weights = None if hoist else self.cell.input_weights(inputs)
      final_carry, outputs = fused_recurrence.scan(
          self.cell, parallel.replicate(self.cell.recurrent_kernel()),
          self.cell.elementwise_params(), xs[0], initial_carry, default_carry,
          input_weights=(None if input_weights is None else
                         tuple(map(parallel.replicate, input_weights))),
          valid=xs[1], reset=xs[2], perturbation=xs[3], unroll=self.unroll,
          flatten_rows=not sharded)
    else:
      def body(cell, carry, xs_t, reset_carry):
        x_t, valid_t, reset_t, perturbation_t = xs_t
        if reset_t is not None:
          carry = fused_recurrence.select_batch(reset_t, reset_carry, carry)
        new_carry, y = (cell.step if hoist else cell)(carry, x_t)
        if perturbation_t is not None:
          new_carry, y = fused_recurrence.add_to_hidden(new_carry, y,
                                                        perturbation_t)
        if valid_t is not None:
          new_carry = fused_recurrence.select_batch(valid_t, new_carry, carry)
          y = jnp.where(valid_t.reshape(valid_t.shape + (1,) * (y.ndim - 1)),
                        y, jnp.zeros_like(y))
        return new_carry, y

      scan = nn.scan(
          body,
          variable_broadcast="params",
          split_rngs={"params": False},
          in_axes=(0, nn.broadcast),
          out_axes=0,
          unroll=self.unroll)
      final_carry, outputs = scan(self.cell, initial_carry, xs, default_carry)
    outputs = parallel.constrain_batch(jnp.swapaxes(outputs, 0, 1),
                                       time_dim=1)
    if reverse and keep_order:
      outputs = flip_sequences(outputs, seq_lengths)
    return final_carry, outputs

  def _project_rows(self, inputs: Array) -> Array:
    """The hoisted input projection of `(time, batch, in)` inputs, as one
    `(time * batch, in) x (in, G*H)` matmul -> `(time, batch, G*H)`.

    Projected after the flip and the time-major transpose, so those move the
    inputs rather than the G times wider projections; and on rows, so the
    weight gradient contracts one axis (contracting two, XLA:CPU first
    copies the cotangent into a transposed layout).
    """
    if parallel.current() is not None:  # flattening would gather the batch
      return self.cell.project_inputs(inputs)
    rows = self.cell.project_inputs(inputs.reshape((-1, inputs.shape[-1])))
    return rows.reshape(inputs.shape[:-1] + rows.shape[-1:])

  def _run_newton(self, inputs, initial_carry, seq_lengths, reset,
                  state_perturbation, reverse, keep_order):
    """`evaluation="newton"`: `newton_recurrence.newton_rnn` on the cell."""
    name = type(self.cell).__name__
    if hasattr(self.cell, "scan_over_time"):
      raise ValueError(
          f"evaluation='newton': {name} has a linear recurrence, which runs "
          f"in parallel already (scan_method=\"associative\"); Newton is for "
          f"nonlinear cells")
    for option, value in (("scan_method", self.scan_method),
                          ("state_perturbation", state_perturbation),
                          ("hoist_input_projection",
                           self.hoist_input_projection),
                          ("defer_weight_gradients",
                           self.defer_weight_gradients)):
      if value is not None:
        raise ValueError(f"{option}: not supported with evaluation='newton' "
                         f"(leave it None)")
    if self.is_initializing():  # the cell's parameters, as a scan makes them
      self.cell(initial_carry, inputs[:, 0])
    # newton_rnn applies the cell inside jax.custom_vjp and
    # jax.closure_convert, where a bound flax module cannot run: hand it the
    # unbound cell and this scope's variables.
    cell, variables = self.cell.unbind()
    # Under an activation_sharding context with a time (`context`) axis the
    # steps stay split over devices (newton_scan's mesh).
    sharding = parallel.current()
    across = {} if sharding is None else sharding.scan_across_devices()
    final_carry, outputs, info = newton_recurrence.newton_rnn(
        cell, variables, inputs, initial_carry=initial_carry,
        seq_lengths=seq_lengths, reset=reset, reverse=reverse,
        **across, **dict(self.newton or {}))
    self.sow("intermediates", "newton_info", info)
    if reverse and not keep_order:  # newton_rnn keeps input order
      outputs = flip_sequences(outputs, seq_lengths)
    return final_carry, outputs


class _Layout(NamedTuple):
  """`RNN`'s user-facing layout, `(*batch, time, ...)` or `(time, *batch,
  ...)`, and the canonical `(batch, time, ...)` it runs in."""
  batch_shape: tuple[int, ...]
  time: int
  time_major: bool

  @classmethod
  def of(cls, inputs: Array, num_batch_dims: int | None,
         time_major: bool, feature_axes: int = 1) -> "_Layout":
    """`feature_axes`: the cell's `num_feature_axes` (flax's convention; 3
    for `ConvLSTMCell` over `(height, width, channels)`)."""
    shape = np.shape(inputs)
    features = "features" if feature_axes == 1 else (
        f"{feature_axes} feature axes")
    if num_batch_dims is None:  # as flax: every axis before time and features
      if len(shape) < feature_axes + 2:
        layout = (f"(time, batch, {features})" if time_major else
                  f"(batch, time, {features})")
        raise ValueError(
            f"inputs: expected rank {feature_axes + 2} {layout} or more "
            f"(leading batch axes), got shape {shape}")
      num_batch_dims = len(shape) - 1 - feature_axes
    validation.check_int("num_batch_dims", num_batch_dims)
    batch = "batch" if num_batch_dims == 1 else (
        f"{num_batch_dims} batch axes")
    layout = (f"(time, {batch}, {features})" if time_major else
              f"({batch}, time, {features})")
    validation.check_rank("inputs", inputs, num_batch_dims + 1 + feature_axes,
                          layout)
    if time_major:
      return cls(tuple(shape[1:1 + num_batch_dims]), shape[0], True)
    return cls(tuple(shape[:num_batch_dims]), shape[num_batch_dims], False)

  @property
  def batch(self) -> int:
    return int(np.prod(self.batch_shape, dtype=np.int64))

  def shape(self, trailing: tuple[int, ...]) -> tuple[int, ...]:
    """The user-facing shape of a per-step array with `trailing` axes."""
    if self.time_major:
      return (self.time, *self.batch_shape, *trailing)
    return (*self.batch_shape, self.time, *trailing)

  def describe(self, trailing: str) -> str:
    batch = "batch" if len(self.batch_shape) == 1 else "*batch"
    return (f"(time, {batch}{trailing})" if self.time_major
            else f"({batch}, time{trailing})")

  def to_canonical(self, x: Array) -> Array:
    """User layout -> `(batch, time, ...)`."""
    nb = len(self.batch_shape)
    if self.time_major:
      x = jnp.moveaxis(x, 0, nb)
    return x.reshape((self.batch, self.time) + x.shape[nb + 1:])

  def from_canonical(self, x: Array) -> Array:
    """`(batch, time, ...)` -> user layout."""
    x = x.reshape(self.batch_shape + x.shape[1:])
    return jnp.moveaxis(x, len(self.batch_shape), 0) if self.time_major else x

  def batch_vector(self, name: str, x: Array) -> Array:
    """A `(*batch,)` array flattened to `(batch,)`."""
    if len(self.batch_shape) > 1:
      if np.shape(x) != self.batch_shape:
        raise ValueError(f"{name}: expected shape (*batch,) = "
                         f"{self.batch_shape}, got {np.shape(x)}")
      return jnp.reshape(x, (self.batch,))
    return x

  def carry_to_canonical(self, carry: Carry) -> Carry:
    if len(self.batch_shape) == 1:
      return carry
    nb = len(self.batch_shape)

    def flat(leaf):
      if np.shape(leaf)[:nb] != self.batch_shape:
        raise ValueError(
            f"initial_carry: expected leaves of shape (*batch, ...) with batch"
            f" = {self.batch_shape}, got {jax.tree.map(np.shape, carry)}")
      return jnp.reshape(leaf, (self.batch,) + np.shape(leaf)[nb:])
    return jax.tree.map(flat, carry)

  def carry_from_canonical(self, carry: Carry) -> Carry:
    if len(self.batch_shape) == 1:
      return carry
    return jax.tree.map(
        lambda leaf: leaf.reshape(self.batch_shape + leaf.shape[1:]), carry)


def check_cell(name: str, cell: Any) -> None:
  """Raises TypeError unless `cell` is a recurrent cell (`nn.RNNCellBase`)."""
  if isinstance(cell, (RNN, Bidirectional)):
    raise TypeError(f"{name}: expected a cell (e.g. LSTMCell(64)), got the "
                    f"layer {type(cell).__name__}; pass its cell")
  if not isinstance(cell, nn.RNNCellBase):
    raise TypeError(f"{name}: expected a recurrent cell (an nn.RNNCellBase "
                    f"such as LSTMCell, GRUCell, MinGRU), got "
                    f"{type(cell).__name__}")


def concatenate_features(forward: Array, backward: Array) -> Array:
  return jnp.concatenate([forward, backward], axis=-1)


class Bidirectional(nn.Module):
  """Runs a forward and a backward `RNN` and merges their outputs.

  The backward RNN runs with `reverse=True, keep_order=True`, so both
  outputs are aligned with the inputs; `merge_fn` defaults to concatenation,
  giving `(batch, time, hidden_fwd + hidden_bwd)`. The carry is the pair
  `(forward_carry, backward_carry)`.
  """
  forward_rnn: RNN
  backward_rnn: RNN
  merge_fn: Callable[[Array, Array], Array] = concatenate_features
  return_carry: bool = False

  def __post_init__(self):
    for name in ("forward_rnn", "backward_rnn"):
      layer = getattr(self, name)
      if isinstance(layer, nn.RNNCellBase):
        raise TypeError(f"{name}: expected an RNN layer, got the cell "
                        f"{type(layer).__name__}; wrap it: RNN(cell)")
      if not isinstance(layer, nn.Module) or isinstance(layer, Bidirectional):
        raise TypeError(f"{name}: expected an RNN layer (RNN(cell)), got "
                        f"{type(layer).__name__}")
      if not isinstance(layer, RNN):
        # A user's own layer must take RNN's call interface.
        parameters = inspect.signature(type(layer).__call__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD
                        for p in parameters.values())
        missing = [] if takes_any else [
            p for p in ("initial_carry", "seq_lengths", "reset", "reverse",
                        "return_carry") if p not in parameters]
        if missing:
          raise TypeError(f"{name}: expected an RNN layer (RNN(cell)); "
                          f"{type(layer).__name__} takes no {missing}")
    if not callable(self.merge_fn):
      raise TypeError(f"merge_fn: expected a callable (forward, backward) -> "
                      f"outputs, got {type(self.merge_fn).__name__}")
    validation.check_bool("return_carry", self.return_carry)
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs: Array, *, initial_carry: tuple[Carry, Carry] |
               None = None, seq_lengths: Array | None = None,
               reset: Array | None = None,
               return_carry: bool | None = None) -> Any:
    return_carry = self.return_carry if return_carry is None else return_carry
    if initial_carry is not None and (
        not isinstance(initial_carry, (tuple, list)) or len(initial_carry) != 2):
      raise ValueError(
          "initial_carry: Bidirectional expects the pair (forward_carry, "
          "backward_carry), one carry of each direction's cell (e.g. "
          "((c, h), (c, h)) for LSTM cells), as it returns with "
          f"return_carry=True; got {jax.tree.map(jnp.shape, initial_carry)}")
    forward_carry, backward_carry = (None, None) if initial_carry is None else (
        initial_carry)
    carry_fwd, out_fwd = self.forward_rnn(
        inputs, initial_carry=forward_carry, seq_lengths=seq_lengths,
        reset=reset, reverse=False, return_carry=True)
    carry_bwd, out_bwd = self.backward_rnn(
        inputs, initial_carry=backward_carry, seq_lengths=seq_lengths,
        reset=reset, reverse=True, keep_order=True, return_carry=True)
    outputs = self.merge_fn(out_fwd, out_bwd)
    return ((carry_fwd, carry_bwd), outputs) if return_carry else outputs


class StackedRNN(nn.Module):
  """Layers of `RNN` (or `Bidirectional`) with optional dropout between them.

  Attributes:
    cells: one cell per layer, bottom first. With `bidirectional`, a clone of
      each cell (separate parameters) runs backward.
    bidirectional: make every layer a `Bidirectional` pair.
    dropout_rate: dropout on the outputs of every layer but the last
      (Zaremba et al., 2014); active when `deterministic=False`, which needs
      a 'dropout' rng.
    unroll, hoist_input_projection, defer_weight_gradients, scan_method,
      evaluation, newton: passed to every `RNN`.
  Carry: a list with one carry per layer (a pair per layer if bidirectional).
  """
  cells: Sequence[nn.RNNCellBase]
  bidirectional: bool = False
  dropout_rate: float = 0.0
  unroll: int = 1
  hoist_input_projection: bool | None = None
  defer_weight_gradients: bool | None = None
  scan_method: str | None = None
  evaluation: str = "scan"
  newton: Mapping[str, Any] | None = None

  def __post_init__(self):
    if isinstance(self.cells, nn.Module) or not isinstance(self.cells,
                                                           Sequence):
      raise TypeError(f"cells: expected a sequence of cells, one per layer, "
                      f"got {type(self.cells).__name__}")
    if not self.cells:
      raise ValueError("cells: expected at least one cell, got none")
    for index, cell in enumerate(self.cells):
      check_cell(f"cells[{index}]", cell)
    validation.check_bool("bidirectional", self.bidirectional)
    validation.check_rate("dropout_rate", self.dropout_rate)
    validation.check_int("unroll", self.unroll)
    if self.scan_method is not None:
      validation.check_choice("scan_method", self.scan_method,
                              linear_recurrence.METHODS)
    validation.check_choice("evaluation", self.evaluation, EVALUATIONS)
    super().__post_init__()

  def setup(self):
    rnn = functools.partial(
        RNN, unroll=self.unroll,
        hoist_input_projection=self.hoist_input_projection,
        defer_weight_gradients=self.defer_weight_gradients,
        scan_method=self.scan_method, evaluation=self.evaluation,
        newton=self.newton)
    # Clones detach each cell from this module, so its parameters live under
    # the layer that runs it: layers_0/cell or layers_0/{forward,backward}_rnn.
    def fresh(cell):
      return cell.clone(parent=None)
    if self.bidirectional:
      self.layers = [
          Bidirectional(rnn(fresh(cell)), rnn(fresh(cell)))
          for cell in self.cells
      ]
    else:
      self.layers = [rnn(fresh(cell)) for cell in self.cells]
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, inputs: Array, *, initial_carry: Sequence[Carry] | None =
               None, seq_lengths: Array | None = None,
               reset: Array | None = None,
               deterministic: bool | None = None,
               return_carry: bool = False) -> Any:
    """`inputs: (batch, time, features)` -> `(batch, time, hidden_last)`.

    `deterministic` disables dropout; as in flax it must be given when
    `dropout_rate > 0` (None raises then), and None is True without it.
    """
    validation.check_rank("inputs", inputs, 3, "(batch, time, features)")
    deterministic = validation.check_deterministic(
        deterministic, self.dropout_rate, "StackedRNN")
    if initial_carry is not None and len(initial_carry) != len(self.layers):
      raise ValueError(
          f"initial_carry: expected one carry per layer ({len(self.layers)}), "
          f"got {len(initial_carry)}")
    carries = []
    x = inputs
    for index, layer in enumerate(self.layers):
      if index > 0:
        x = self.dropout(x, deterministic=deterministic)
      carry, x = layer(
          x, initial_carry=None if initial_carry is None else
          initial_carry[index], seq_lengths=seq_lengths, reset=reset,
          return_carry=True)
      carries.append(carry)
    return (carries, x) if return_carry else x
