"""A fused-gate recurrence over time with a hand-written backward pass.

For cells whose step is one recurrent matmul followed by elementwise gates
(`cells.FusedGateCell`: Elman RNN, LSTM, GRU),

    u_t = h_{t-1} W_h                         (batch, G*H)
    (carry_t, y_t) = combine(carry_{t-1}, p_t, u_t)

with the input projection p_t = x_t W_x + b computed for all steps beforehand.
Autodiff through `lax.scan` accumulates dW_h += h_{t-1}^T du_t inside the
reverse loop: a (H, batch) x (batch, G*H) matmul per step, on the loop's
critical path. The backward here keeps only what the recurrence needs inside
the loop,

    du_t = combine's vjp,     dh_{t-1} += du_t W_h^T,

emits du_t for every step, and forms the weight gradient afterwards as one
matmul over all steps, dW_h = sum_t h_{t-1}^T du_t, as cuDNN does
(Appleyard et al., 2016, "Optimizing performance of recurrent neural networks
on GPUs"). The gradient of the projected inputs is du_t itself, so dW_x, db
and dx are also single matmuls (autodiff of the hoisted projection).

Everything is time-major here; `recurrent.RNN` does the layout and masks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Carry = Any


def select_batch(mask: Array, on_true: Any, on_false: Any) -> Any:
  """Per-example select between two carries; `mask: (batch,)`."""
  def select(a, b):
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
  return jax.tree.map(select, on_true, on_false)


def _replace_hidden(carry: Carry, hidden: Array) -> Carry:
  """`carry` with its last leaf (the hidden state h) replaced."""
  leaves, treedef = jax.tree.flatten(carry)
  return jax.tree.unflatten(treedef, leaves[:-1] + [hidden])


def _rows(x: Array) -> Array:
  """`(time, batch, features)` -> `(time * batch, features)`."""
  return x.reshape((-1, x.shape[-1]))


def _hidden(carry: Carry) -> Array:
  return jax.tree.leaves(carry)[-1]


def add_to_hidden(carry: Carry, output: Array,
                  perturbation: Array) -> tuple[Carry, Array]:
  """Adds `perturbation` to the hidden state h (the last carry leaf) and to
  the output, which every cell here and in flax sets to h: the perturbed h
  feeds both the next step and the loss, so d loss / d perturbation_t is the
  total derivative dL/dh_t."""
  return (_replace_hidden(carry, _hidden(carry) + perturbation),
          output + perturbation)


def scan(cell: Any, kernel: Array, params: tuple[Array, ...], xs: Array,
         initial_carry: Carry, reset_carry: Carry, *,
         input_weights: tuple[Array, Array] | None = None,
         valid: Array | None = None, reset: Array | None = None,
         perturbation: Array | None = None,
         unroll: int = 1,
         flatten_rows: bool = True) -> tuple[Carry, Array]:
  """Runs `cell` over time from projected inputs, with the backward above.

  Args:
    cell: a cell with `recurrent_matmul(h, kernel)` and
      `combine(carry, projected_t, recurrent_t, params)` (`FusedGateCell`);
      if `cell.additive`, `gates(carry, projected_t + recurrent_t, params)`.
    kernel: the `(H, G*H)` recurrent kernel.
    params: the parameters `combine` reads (`cell.elementwise_params()`).
    xs: `(time, batch, G*H)` input projections p_t = x_t W_x + b, or with
      `input_weights` the inputs x_t, `(time, batch, in)`.
    initial_carry: the carry before the first step, leaves `(batch, H)`.
    reset_carry: the carry a reset restarts from.
    input_weights: `(W_x, b)` to project each step inside the loop
      (`cell.input_matmul`), where it runs beside the recurrent matmul; the
      backward then keeps dx_t = dp_t W_x^T in the reverse loop (off the
      critical path) and forms dW_x and db as one matmul over all steps.
    valid: `(time, batch)` bool; invalid steps keep the carry and output 0.
    reset: `(time, batch)` bool; the carry becomes `reset_carry` before
      such a step.
    perturbation: `(time, batch, H)` added to h after each step.
    unroll: steps per loop iteration of both scans.
    flatten_rows: form the weight gradients on `(time * batch, ...)` rows
      (one contracting axis: faster on XLA:CPU). False contracts time and
      batch as two axes, as a batch split over devices needs: flattening
      would gather the (time, batch) cotangents to every device.

  Returns:
    `(final_carry, outputs)` with outputs `(time, batch, H)`; the same values
    as running `cell.step` in `lax.scan` with these masks.
  """
  def enter(carry, reset_t, reset_carry):
    """The carry a step starts from: after a reset, the reset carry."""
    return carry if reset_t is None else select_batch(reset_t, reset_carry,
                                                       carry)

  additive = getattr(cell, "additive", False)

  def leave(carry_in, preactivations_t, params, perturbation_t, valid_t):
    """The elementwise rest of a step: gates, perturbation, padding.

    `preactivations_t` is z_t = p_t + u_t for an additive cell (one array to
    save and one cotangent, dz_t, for both), else the pair (p_t, u_t).
    """
    if additive:
      new_carry, y = cell.gates(carry_in, preactivations_t, params)
    else:
      new_carry, y = cell.combine(carry_in, *preactivations_t, params)
    if perturbation_t is not None:
      new_carry, y = add_to_hidden(new_carry, y, perturbation_t)
    if valid_t is not None:
      new_carry = select_batch(valid_t, new_carry, carry_in)
      y = jnp.where(valid_t[:, None], y, jnp.zeros_like(y))
    return new_carry, y

  def project(x_t, input_weights):
    return x_t if input_weights is None else cell.input_matmul(x_t,
                                                               *input_weights)

  def forward(kernel, params, input_weights, xs, initial_carry, reset_carry,
              valid, reset, perturbation):
    def step(carry, xs_t):
      x_t, valid_t, reset_t, perturbation_t = xs_t
      projected_t = project(x_t, input_weights)
      carry_in = enter(carry, reset_t, reset_carry)
      recurrent_t = cell.recurrent_matmul(_hidden(carry_in), kernel)
      pre_t = (projected_t + recurrent_t if additive
               else (projected_t, recurrent_t))
      new_carry, y = leave(carry_in, pre_t, params, perturbation_t, valid_t)
      return new_carry, (y, carry_in, pre_t)
    final, (outputs, carries_in, preactivations) = jax.lax.scan(
        step, initial_carry, (xs, valid, reset, perturbation), unroll=unroll)
    return final, outputs, carries_in, preactivations

  @jax.custom_vjp
  def run(kernel, params, input_weights, xs, initial_carry, reset_carry, valid,
          reset, perturbation):
    final, outputs, _, _ = forward(kernel, params, input_weights, xs,
                                   initial_carry, reset_carry, valid, reset,
                                   perturbation)
    return final, outputs

  def run_fwd(kernel, params, input_weights, xs, initial_carry, reset_carry,
              valid, reset, perturbation):
    final, outputs, carries_in, preactivations = forward(
        kernel, params, input_weights, xs, initial_carry, reset_carry, valid,
        reset, perturbation)
    residuals = (kernel, params, input_weights,
                 None if input_weights is None else xs, carries_in,
                 preactivations, reset_carry, valid, reset, perturbation)
    return (final, outputs), residuals

  def run_bwd(residuals, cotangents):
    (kernel, params, input_weights, inputs, carries_in, preactivations,
     reset_carry, valid, reset, perturbation) = residuals
    d_final, d_outputs = cotangents
    # Linear in h (and x), so one vjp (at any h) serves every step.
    _, hidden_vjp = jax.vjp(lambda h: cell.recurrent_matmul(h, kernel),
                            _hidden(carries_in)[0])
    if input_weights is not None:
      _, input_vjp = jax.vjp(lambda x: cell.input_matmul(x, *input_weights),
                             inputs[0])

    def step(acc, xs_t):
      d_carry, d_params, d_reset_carry = acc
      d_y, carry_in, pre_t, valid_t, reset_t, perturbation_t = xs_t
      _, leave_vjp = jax.vjp(
          lambda c, z, q, e: leave(c, z, q, e, valid_t),
          carry_in, pre_t, params, perturbation_t)
      d_carry_in, d_pre, d_params_t, d_perturbation = leave_vjp(
          (d_carry, d_y))
      d_projected, d_recurrent = (d_pre, d_pre) if additive else d_pre
      (d_hidden,) = hidden_vjp(d_recurrent)  # du_t W_h^T: the loop's matmul
      d_carry_in = _replace_hidden(d_carry_in,
                                   _hidden(d_carry_in) + d_hidden)
      if reset_t is None:
        d_carry_prev = d_carry_in
      else:
        _, enter_vjp = jax.vjp(lambda c, rc: enter(c, reset_t, rc), carry_in,
                               reset_carry)
        d_carry_prev, d_reset_t = enter_vjp(d_carry_in)
        d_reset_carry = jax.tree.map(jnp.add, d_reset_carry, d_reset_t)
      d_params = jax.tree.map(jnp.add, d_params, d_params_t)
      per_step = ((d_projected,) if additive else (d_projected, d_recurrent))
      # dx_t beside dh_{t-1}: independent of it, so it overlaps.
      d_x = None if input_weights is None else input_vjp(d_projected)[0]
      return (d_carry_prev, d_params, d_reset_carry), (per_step, d_x,
                                                       d_perturbation)

    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731
    (d_initial, d_params, d_reset_carry), (per_step, d_x, d_perturbation) = (
        jax.lax.scan(step, (d_final, zeros(params), zeros(reset_carry)),
                     (d_outputs, carries_in, preactivations, valid, reset,
                      perturbation), reverse=True, unroll=unroll))
    d_projected, d_recurrents = per_step * 2 if additive else per_step
    # dW_h = sum_t h_{t-1}^T du_t: one matmul over every (step, example),
    # with (step, example) flattened into one contracting axis: contracting
    # two axes, XLA:CPU copies the (time, batch, G*H) cotangent into a
    # transposed layout first.
    rows = _rows if flatten_rows else (lambda x: x)
    _, kernel_vjp = jax.vjp(
        lambda k: cell.recurrent_matmul(rows(_hidden(carries_in)), k), kernel)
    (d_kernel,) = kernel_vjp(rows(d_recurrents))
    if input_weights is None:
      d_input_weights, d_xs = None, d_projected
    else:  # dW_x = sum_t x_t^T dp_t and db = sum_t dp_t, likewise
      _, weights_vjp = jax.vjp(
          lambda k, b: cell.input_matmul(rows(inputs), k, b), *input_weights)
      d_input_weights, d_xs = weights_vjp(rows(d_projected)), d_x
    return (d_kernel, d_params, d_input_weights, d_xs, d_initial,
            d_reset_carry, None, None, d_perturbation)

  run.defvjp(run_fwd, run_bwd)
  return run(kernel, params, input_weights, xs, initial_carry, reset_carry,
             valid, reset, perturbation)
