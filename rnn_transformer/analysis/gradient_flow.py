"""Gradient-flow probes: ||dL/dh_t|| at every step, and rho(W_hh).

The seed's Chapter 2 claim: by the chain rule

    dL/dh_1 = dL/dh_T  prod_{t=2..T} dh_t/dh_{t-1},   dh_t/dh_{t-1} = diag(f') W_hh

so the gradient reaching early steps shrinks geometrically when rho(W_hh) < 1
(times |tanh'| <= 1) and grows when rho(W_hh) > 1 with a linear activation.

The probes measure the *total* derivative of the loss with respect to each
step's hidden state: a zero perturbation eps_t is added to h_t inside the
recurrence and dL/deps_t = dL/dh_t, counting every path from h_t to the loss
(through later steps and through the output at t).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer.analysis.spectral import spectral_radius

__all__ = [
    "hidden_state_gradient_norms",
    "rnn_hidden_state_gradient_norms",
    "recurrent_spectral_radius",
    "spectral_radius",
]


def hidden_state_gradient_norms(
    loss_of_perturbation: Callable[[jax.Array], jax.Array],
    perturbation_shape: tuple[int, int, int],
    dtype: Any = jnp.float32,
) -> jax.Array:
  """||dL/dh_t|| for any model that adds a per-step perturbation to its states.

  Args:
    loss_of_perturbation: maps a `(batch, time, hidden)` perturbation, added
      by the model to its hidden state h_t at every step, to a scalar loss.
    perturbation_shape: `(batch, time, hidden)`.
    dtype: dtype of the perturbation.

  Returns:
    `(batch, time)`: the Euclidean norm over hidden features of dL/dh_t.
  """
  if not callable(loss_of_perturbation):
    raise TypeError(f"loss_of_perturbation: expected a callable, got "
                    f"{type(loss_of_perturbation).__name__}")
  if len(perturbation_shape) != 3:
    raise ValueError(
        f"perturbation_shape: expected (batch, time, hidden), got "
        f"{perturbation_shape}")
  grads = jax.grad(loss_of_perturbation)(jnp.zeros(perturbation_shape, dtype))
  return jnp.linalg.norm(grads.astype(jnp.float32), axis=-1)


def rnn_hidden_state_gradient_norms(
    rnn: nn.Module,
    variables: Any,
    inputs: jax.Array,
    loss_fn: Callable[[Any], jax.Array],
    **rnn_kwargs: Any,
) -> jax.Array:
  """||dL/dh_t|| for every step of an `RNN` layer around any cell.

  Args:
    rnn: an `rnn_transformer.RNN` layer (anything whose `apply` takes
      `state_perturbation`); `rnn.cell` may be any cell (ours or flax's).
    variables: its variables, e.g. from `rnn.init`.
    inputs: `(batch, time, features)`.
    loss_fn: maps what `rnn.apply` returns (outputs `(batch, time, hidden)`,
      or `(carry, outputs)` with `return_carry`) to a scalar.
    **rnn_kwargs: further keyword arguments of `RNN.__call__`
      (`seq_lengths`, `initial_carry`, ...).

  Returns:
    `(batch, time)` gradient norms, in input time order.
  """
  if not isinstance(rnn, nn.Module) or not hasattr(rnn, "cell"):
    raise TypeError(f"rnn: expected an RNN layer (with a .cell), got "
                    f"{type(rnn).__name__}")
  if np.ndim(inputs) != 3:
    raise ValueError(f"inputs: expected rank 3 (batch, time, features), got "
                     f"shape {np.shape(inputs)}")
  if not callable(loss_fn):
    raise TypeError(f"loss_fn: expected a callable, got "
                    f"{type(loss_fn).__name__}")
  batch, time = inputs.shape[:2]
  carry = rnn.cell.initialize_carry(jax.random.key(0), inputs[:, 0].shape)
  hidden = jax.tree.leaves(carry)[-1].shape[-1]

  def loss_of_perturbation(perturbation):
    return loss_fn(rnn.apply(variables, inputs,
                             state_perturbation=perturbation, **rnn_kwargs))

  return hidden_state_gradient_norms(loss_of_perturbation,
                                     (batch, time, hidden), inputs.dtype)


def recurrent_spectral_radius(cell_params: Any) -> jax.Array:
  """rho(W_hh) of a `SimpleRNNCell`'s params (the `(H, H)` recurrent kernel).

  For fused-gate cells (LSTM, GRU) it returns one radius per gate block,
  `(num_gates,)`, since each gate has its own recurrent matrix.
  """
  params = cell_params.get("params", cell_params)
  kernel = params["recurrent_projection"]["kernel"]
  hidden, fused = kernel.shape
  blocks = kernel.reshape(hidden, fused // hidden, hidden).transpose(1, 0, 2)
  radii = spectral_radius(blocks)
  return radii[0] if radii.shape[0] == 1 else radii
