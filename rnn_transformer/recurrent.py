"""Run a recurrent cell over time: `RNN`, `Bidirectional` and `StackedRNN`.

Batch-major throughout: inputs `(batch, time, features)`, outputs
`(batch, time, hidden)`. Time runs through `jax.lax.scan` via Flax's lifted
`nn.scan` (parameters broadcast across steps), so compile time does not grow
with sequence length and the sequential dependency the seed calls "RNNs are
slow" is explicit.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_transformer import linear_recurrence
from rnn_transformer import validation

Array = jax.Array
Carry = Any

# Whether hoisting the input projection of all steps out of the scan (one
# (batch*time, in) x (in, G*H) matmul) beats projecting inside each step, by
# backend. CPU measured by scripts/bench_recurrent.py (BUILD_NOTES.md); GPU and
# TPU not measured yet, set as cuDNN does.
HOIST_INPUT_PROJECTION_BY_BACKEND = {"cpu": True, "gpu": True, "tpu": True}


def flip_sequences(x: Array, seq_lengths: Array | None) -> Array:
  """Reverses `x: (batch, time, ...)` along time within each sequence.

  Step t < L_b of sequence b goes to L_b - 1 - t; padding (t >= L_b) stays in
  place at the end, as flax does. Its own inverse.
  """
  if seq_lengths is None:
    return jnp.flip(x, axis=1)
  time = x.shape[1]
  steps = jnp.arange(time)[None, :]
  lengths = seq_lengths[:, None]
  index = jnp.where(steps < lengths, lengths - 1 - steps, steps)
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def _where_batch(mask: Array, on_true: Any, on_false: Any) -> Any:
  """Per-example select between two carries; `mask: (batch,)`."""
  def select(a, b):
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
  return jax.tree.map(select, on_true, on_false)


def _add_to_hidden(carry: Carry, output: Array,
                   perturbation: Array) -> tuple[Carry, Array]:
  """Adds `perturbation` to the hidden state h (the last carry leaf).

  Every cell here and in flax outputs its hidden state, so the output gets
  the same perturbation: the perturbed h feeds both the next step and the
  loss, and d loss / d perturbation_t is the total derivative dL/dh_t.
  """
  if isinstance(carry, tuple):
    *rest, h = carry
    return (*rest, h + perturbation), output + perturbation
  return carry + perturbation, output + perturbation


def _check_carry(initial_carry: Carry, expected: Carry) -> None:
  got = jax.tree.map(jnp.shape, initial_carry)
  want = jax.tree.map(jnp.shape, expected)
  if jax.tree.structure(initial_carry) != jax.tree.structure(expected) or (
      jax.tree.leaves(got) != jax.tree.leaves(want)):
    raise ValueError(
        f"initial_carry: expected the cell's carry structure with shapes "
        f"{want}, got {got}")


class RNN(nn.Module):
  """Runs `cell` over the time axis of `(batch, time, features)` inputs.

  Attributes:
    cell: any `flax.linen.RNNCellBase`, e.g. `SimpleRNNCell`, `LSTMCell`,
      `GRUCell` or one of flax's own cells.
    reverse: process each sequence from its last valid step to its first
      (padding stays at the end).
    keep_order: with `reverse`, return outputs in input order rather than in
      processing order.
    return_carry: return `(final_carry, outputs)` instead of `outputs`.
    unroll: steps unrolled per scan iteration (`jax.lax.scan`'s `unroll`).
    hoist_input_projection: compute the input projection of all steps as one
      matmul before the scan. Needs a cell with `project_inputs`/`step` (the
      cells of this library). None: per backend, by measurement
      (`HOIST_INPUT_PROJECTION_BY_BACKEND`), and never for other cells.
    scan_method: for cells with a linear recurrence (`MinGRU`, `MinLSTM`,
      `LRU`: they have `scan_over_time`), "associative", "chunked" or
      "sequential" (see `linear_recurrence.linear_scan`); None: per backend
      (`linear_recurrence.DEFAULT_METHOD_BY_BACKEND`). Other cells always
      run `lax.scan` and reject a method.
    chunk_size: steps per chunk of the "chunked" method.
  """
  cell: nn.RNNCellBase
  reverse: bool = False
  keep_order: bool = False
  return_carry: bool = False
  unroll: int = 1
  hoist_input_projection: bool | None = None
  scan_method: str | None = None
  chunk_size: int = linear_recurrence.DEFAULT_CHUNK_SIZE

  def _should_hoist(self) -> bool:
    splittable = hasattr(self.cell, "project_inputs") and hasattr(
        self.cell, "step")
    if self.hoist_input_projection is None:
      return splittable and HOIST_INPUT_PROJECTION_BY_BACKEND.get(
          jax.default_backend(), True)
    if self.hoist_input_projection and not splittable:
      raise ValueError(
          f"hoist_input_projection=True needs a cell with project_inputs() and "
          f"step(); {type(self.cell).__name__} has neither")
    return self.hoist_input_projection

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
      inputs: `(batch, time, features)`, floating.
      initial_carry: the carry before the first step, e.g. the final carry of
        the previous chunk for truncated backpropagation through time.
        Default: `cell.initialize_carry` (zeros).
      init_key: key for `cell.initialize_carry` when `initial_carry` is None.
      seq_lengths: `(batch,)` integers in [0, time]. Steps at t >= length keep
        the carry unchanged and output zeros, so the final carry is the carry
        after each sequence's own last step.
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
    reverse = self.reverse if reverse is None else reverse
    keep_order = self.keep_order if keep_order is None else keep_order
    return_carry = self.return_carry if return_carry is None else return_carry

    validation.check_rank("inputs", inputs, 3, "(batch, time, features)")
    validation.check_floating("inputs", inputs)
    validation.check_time("inputs", inputs)
    batch, time = inputs.shape[:2]
    if seq_lengths is not None:
      validation.check_seq_lengths(seq_lengths, batch, time)
    if reset is not None:
      validation.check_mask("reset", reset, (batch, time), "(batch, time)")

    default_carry = self.cell.initialize_carry(
        jax.random.key(0) if init_key is None else init_key, inputs[:, 0].shape)
    if initial_carry is None:
      initial_carry = default_carry
    else:
      _check_carry(initial_carry, default_carry)
    if state_perturbation is not None:
      hidden = jax.tree.leaves(default_carry)[-1].shape[-1]
      validation.check_rank("state_perturbation", state_perturbation, 3,
                            "(batch, time, hidden)")
      if state_perturbation.shape != (batch, time, hidden):
        raise ValueError(
            f"state_perturbation: expected shape (batch, time, hidden) = "
            f"{(batch, time, hidden)}, got {state_perturbation.shape}")

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
      return (final_carry, outputs) if return_carry else outputs
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

    hoist = self._should_hoist()
    step_inputs = self.cell.project_inputs(inputs) if hoist else inputs
    if reverse:
      step_inputs, reset, state_perturbation = (
          None if x is None else flip_sequences(x, seq_lengths)
          for x in (step_inputs, reset, state_perturbation))
    # valid is symmetric under the per-sequence flip: no need to flip it.

    def time_major(x):
      return None if x is None else jnp.swapaxes(x, 0, 1)

    xs = tuple(time_major(x)
               for x in (step_inputs, valid, reset, state_perturbation))

    def body(cell, carry, xs_t, reset_carry):
      x_t, valid_t, reset_t, perturbation_t = xs_t
      if reset_t is not None:
        carry = _where_batch(reset_t, reset_carry, carry)
      new_carry, y = (cell.step if hoist else cell)(carry, x_t)
      if perturbation_t is not None:
        new_carry, y = _add_to_hidden(new_carry, y, perturbation_t)
      if valid_t is not None:
        new_carry = _where_batch(valid_t, new_carry, carry)
        y = jnp.where(valid_t[:, None], y, jnp.zeros_like(y))
      return new_carry, y

    scan = nn.scan(
        body,
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=(0, nn.broadcast),
        out_axes=0,
        unroll=self.unroll)
    final_carry, outputs = scan(self.cell, initial_carry, xs, default_carry)
    outputs = jnp.swapaxes(outputs, 0, 1)
    if reverse and keep_order:
      outputs = flip_sequences(outputs, seq_lengths)
    return (final_carry, outputs) if return_carry else outputs


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
    unroll, hoist_input_projection, scan_method: passed to every `RNN`.
  Carry: a list with one carry per layer (a pair per layer if bidirectional).
  """
  cells: Sequence[nn.RNNCellBase]
  bidirectional: bool = False
  dropout_rate: float = 0.0
  unroll: int = 1
  hoist_input_projection: bool | None = None
  scan_method: str | None = None

  def setup(self):
    if not self.cells:
      raise ValueError("cells: expected at least one cell, got none")
    validation.check_rate("dropout_rate", self.dropout_rate)
    validation.check_int("unroll", self.unroll)
    rnn = functools.partial(RNN, unroll=self.unroll,
                            hoist_input_projection=self.hoist_input_projection,
                            scan_method=self.scan_method)
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
               reset: Array | None = None, deterministic: bool = True,
               return_carry: bool = False) -> Any:
    """`inputs: (batch, time, features)` -> `(batch, time, hidden_last)`."""
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
