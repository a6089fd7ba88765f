"""Recurrent cells with fused gates: Elman RNN, LSTM and GRU.

Each cell is a `flax.linen.RNNCellBase`, so it also runs inside
`flax.linen.RNN`. A step is split in two so the `RNN` layer can hoist the
input projection out of the time loop:

* `project_inputs(x)`: `x @ W_x + b` for all gates at once, `(..., G*hidden)`;
* `step(carry, projected)`: the recurrence, one `(hidden, G*hidden)` matmul
  `recurrent_matmul(h, recurrent_kernel())` followed by `combine`, the
  elementwise gate arithmetic.

`cell(carry, x)` is `step(carry, project_inputs(x))`. `combine` takes every
parameter it reads as an argument (`elementwise_params()`), so
`fused_recurrence` can differentiate a whole sequence of steps by hand. Kernels are stored
transposed, as `flax.linen.Dense` does: the seed's `W_hh h` is
`h @ recurrent_kernel`, with the gates side by side along the last axis.

Parameter layout, unlike flax: flax.linen's cells keep one `Dense` per gate
and side (`ii`, `if`, `ig`, `io`, `hi`, ... for the LSTM); these keep two
fused kernels, `input_projection` `(in, G*H)` with the gate biases and
`recurrent_projection` `(H, G*H)`, gates in flax's order. The cells compute
the same function: `params_from_flax(LSTMCell, flax_params)` converts a flax
checkpoint, and `tests/layers/test_recurrent.py` checks the equality.
"""

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import validation
from rnn_transformer.layers import initializers as rinit

Array = jax.Array
Carry = Any


class FusedGateCell(nn.RNNCellBase):
  """Base class: `num_gates` gate pre-activations from two fused matmuls.

  Attributes:
    features: hidden size H.
    kernel_init: initialiser for each gate's `(in, H)` input kernel block.
    recurrent_kernel_init: initialiser for each gate's `(H, H)` recurrent
      kernel block (see `rnn_transformer.layers.initializers`).
    bias_init: initialiser of the `(G*H,)` bias.
    dtype: compute dtype of the matmuls (None: from inputs and params).
    param_dtype: parameter and carry dtype.
    precision: matmul precision passed to `jax.lax.dot_general`.
    carry_init: initialiser of the carry.
  """
  num_gates: ClassVar[int]
  carry_layout: ClassVar[str] = "h"
  # Whether the step reads x W_x + b and h W_h only through their sum (then
  # `gates` defines it; otherwise `combine` does).
  additive: ClassVar[bool] = True

  features: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  recurrent_kernel_init: nn.initializers.Initializer = rinit.orthogonal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  carry_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  def __post_init__(self):
    if not hasattr(type(self), "num_gates"):
      raise TypeError(
          f"{type(self).__name__}: an abstract base without num_gates; use "
          f"SimpleRNNCell, LSTMCell or GRUCell, or subclass it")
    validation.check_int("features", self.features)
    validation.check_float_dtype("dtype", self.dtype, optional=True)
    validation.check_float_dtype("param_dtype", self.param_dtype)
    super().__post_init__()

  def setup(self):
    fused = self.num_gates * self.features
    self.input_projection = nn.Dense(
        fused, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
        precision=self.precision,
        kernel_init=rinit.per_gate(self.kernel_init, self.num_gates),
        bias_init=self.fused_bias_init)
    self.recurrent_projection = nn.Dense(
        fused, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        precision=self.precision,
        kernel_init=rinit.per_gate(self.recurrent_kernel_init, self.num_gates))

  def fused_bias_init(self, key, shape, dtype=jnp.float32) -> Array:
    return self.bias_init(key, shape, dtype)

  def project_inputs(self, inputs: Array) -> Array:
    """`inputs: (..., in)` -> gate pre-activations `(..., G*H)` with bias."""
    validation.check_floating("inputs", inputs)
    self._check_input_features(inputs)
    return self.input_projection(inputs)

  def _check_input_features(self, inputs: Array) -> None:
    params = self.variables.get("params", {})
    kernel = params.get("input_projection", {}).get("kernel")
    if kernel is not None and kernel.shape[0] != inputs.shape[-1]:
      raise ValueError(
          f"inputs: expected {kernel.shape[0]} features (the size the params "
          f"were built for) on the last axis, got shape {inputs.shape}")

  def recurrent_kernel(self) -> Array:
    """The fused `(H, G*H)` recurrent kernel W_h (created on first use)."""
    if self.is_initializing() and not self.recurrent_projection.has_variable(
        "params", "kernel"):
      self.recurrent_projection(jnp.zeros((1, self.features), self.param_dtype))
    return self.recurrent_projection.variables["params"]["kernel"]

  def input_weights(self, inputs: Array) -> tuple[Array, Array]:
    """The fused `(in, G*H)` input kernel W_x and `(G*H,)` bias b, created
    on first use from `inputs: (..., in)`."""
    self._check_input_features(inputs)
    if self.is_initializing() and not self.input_projection.has_variable(
        "params", "kernel"):
      self.input_projection(jnp.zeros((1, inputs.shape[-1]), self.param_dtype))
    params = self.input_projection.variables["params"]
    return params["kernel"], params["bias"]

  @nn.nowrap
  def input_matmul(self, x: Array, kernel: Array, bias: Array) -> Array:
    """`x: (..., in) @ kernel + bias`, as the `input_projection` Dense."""
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    return self._matmul(x, kernel) + bias

  @nn.nowrap
  def recurrent_matmul(self, h: Array, kernel: Array) -> Array:
    """`h: (..., H) @ kernel: (H, G*H)` in the cell's compute dtype, as the
    `recurrent_projection` Dense computes it."""
    h, kernel = nn.dtypes.promote_dtype(h, kernel, dtype=self.dtype)
    return self._matmul(h, kernel)

  @nn.nowrap
  def _matmul(self, x: Array, kernel: Array) -> Array:
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                               precision=self.precision)

  def elementwise_params(self) -> tuple[Array, ...]:
    """Parameters `combine` reads besides the two matmuls (none here)."""
    return ()

  @nn.nowrap
  def combine(self, carry: Carry, projected_inputs: Array, recurrent: Array,
              params: tuple[Array, ...]) -> tuple[Carry, Array]:
    """The elementwise part of a step: gates from `projected_inputs` (x W_x +
    b) and `recurrent` (h W_h), both `(..., G*H)`; returns `(carry, output)`.
    For an `additive` cell, `gates` of their sum.
    """
    return self.gates(carry, projected_inputs + recurrent, params)

  @nn.nowrap
  def gates(self, carry: Carry, preactivations: Array,
            params: tuple[Array, ...]) -> tuple[Carry, Array]:
    """`additive` cells: the step from the summed `(..., G*H)` gate
    pre-activations x W_x + b + h W_h."""
    raise NotImplementedError

  def step(self, carry: Carry, projected_inputs: Array) -> tuple[Carry, Array]:
    """One step from projected inputs `(..., G*H)`; returns `(carry, output)`."""
    h = jax.tree.leaves(carry)[-1]
    recurrent = self.recurrent_matmul(h, self.recurrent_kernel())
    return self.combine(carry, projected_inputs, recurrent,
                        self.elementwise_params())

  def __call__(self, carry: Carry, inputs: Array) -> tuple[Carry, Array]:
    """One time step: `inputs: (..., in)`; returns `(new_carry, output)`."""
    self.check_carry(carry, inputs)
    return self.step(carry, self.project_inputs(inputs))

  @nn.nowrap
  def check_carry(self, carry: Carry, inputs: Array) -> None:
    """Raises unless `carry` has the structure and shapes of this cell's
    carry for `inputs: (..., in)`, e.g. `(c, h)` for an LSTM."""
    validation.check_floating("inputs", inputs)
    if np.ndim(inputs) < 1:
      raise ValueError(f"inputs: expected shape (..., features), got "
                       f"{np.shape(inputs)}")
    expected = jax.eval_shape(
        lambda: self.initialize_carry(jax.random.key(0), np.shape(inputs)))
    want = jax.tree.map(lambda s: s.shape, expected)
    got = jax.tree.map(np.shape, carry)
    if (jax.tree.structure(carry) != jax.tree.structure(expected)
        or jax.tree.leaves(got) != jax.tree.leaves(want)):
      raise ValueError(
          f"carry: {type(self).__name__}(features={self.features}) expects "
          f"{self.carry_layout} with shapes {want} for inputs of shape "
          f"{np.shape(inputs)}, got {got}")

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Carry:
    """Zero (by `carry_init`) carry for inputs of shape `(..., in)`."""
    return self.carry_init(rng, tuple(input_shape[:-1]) + (self.features,),
                           self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


class SimpleRNNCell(FusedGateCell):
  """Elman RNN cell: h_t = activation(W_hh h_{t-1} + W_xh x_t + b).

  The seed's equation with `activation=tanh` (Elman, 1990). Choose the
  recurrent initialiser to set rho(W_hh) for gradient-flow experiments, e.g.
  `recurrent_kernel_init=initializers.gaussian_spectral_radius(0.5)` or
  `initializers.identity()` with `activation_fn=nn.relu` (IRNN).
  Carry: `h: (..., H)`; output: `h`.
  """
  num_gates: ClassVar[int] = 1
  activation_fn: Callable[[Array], Array] = jnp.tanh

  @nn.nowrap
  def gates(self, carry: Array, preactivations: Array,
            params: tuple[Array, ...]) -> tuple[Array, Array]:
    del params
    h = self.activation_fn(preactivations)
    h = h.astype(carry.dtype)  # the carry keeps its dtype under bf16 compute
    return h, h


class LSTMCell(FusedGateCell):
  """LSTM cell (Hochreiter and Schmidhuber, 1997; forget gate of Gers et al.).

      i, f, g, o = split(W_x x + b + W_h h)       one fused (.., 4H) matmul each
      c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
      h' = sigmoid(o) * tanh(c')

  Gates in flax's order (i, f, g, o). The forget-gate bias starts at
  `forget_bias` (1.0 by default, as in haiku and Jozefowicz et al., 2015,
  unlike flax's 0) so the cell remembers by default.
  Carry: `(c, h)`, each `(..., H)`, as in flax; output: `h`.
  """
  num_gates: ClassVar[int] = 4
  carry_layout: ClassVar[str] = "the pair (c, h)"
  forget_bias: float = 1.0
  gate_fn: Callable[[Array], Array] = jax.nn.sigmoid
  activation_fn: Callable[[Array], Array] = jnp.tanh

  def fused_bias_init(self, key, shape, dtype=jnp.float32) -> Array:
    bias = self.bias_init(key, shape, dtype)
    hidden = self.features
    return bias.at[hidden:2 * hidden].add(jnp.asarray(self.forget_bias, dtype))

  @nn.nowrap
  def gates(self, carry: tuple[Array, Array], preactivations: Array,
            params: tuple[Array, ...]) -> tuple[tuple[Array, Array], Array]:
    del params
    c, _ = carry
    i, f, g, o = jnp.split(preactivations, 4, axis=-1)
    c = self.gate_fn(f) * c + self.gate_fn(i) * self.activation_fn(g)
    h = self.gate_fn(o) * self.activation_fn(c)
    return (c, h), h

  @nn.nowrap
  def initialize_carry(self, rng: Array,
                       input_shape: tuple[int, ...]) -> tuple[Array, Array]:
    key_c, key_h = jax.random.split(rng)
    shape = tuple(input_shape[:-1]) + (self.features,)
    return (self.carry_init(key_c, shape, self.param_dtype),
            self.carry_init(key_h, shape, self.param_dtype))


class GRUCell(FusedGateCell):
  """GRU cell (Cho et al., 2014), in flax's formulation.

      r = sigmoid(W_ir x + b_ir + W_hr h)
      z = sigmoid(W_iz x + b_iz + W_hz h)
      n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
      h' = (1 - z) * n + z * h

  The three input and three recurrent matmuls are fused into one each;
  `b_hn` is the separate `candidate_bias` because `r` multiplies it.
  Carry: `h: (..., H)`; output: `h`.
  """
  num_gates: ClassVar[int] = 3
  additive: ClassVar[bool] = False  # r multiplies h W_hn + b_hn only
  gate_fn: Callable[[Array], Array] = jax.nn.sigmoid
  activation_fn: Callable[[Array], Array] = jnp.tanh

  def setup(self):
    super().setup()
    self.candidate_bias = self.param("candidate_bias", self.bias_init,
                                     (self.features,), self.param_dtype)

  def elementwise_params(self) -> tuple[Array]:
    return (self.candidate_bias,)

  @nn.nowrap
  def combine(self, carry: Array, projected_inputs: Array, recurrent: Array,
              params: tuple[Array]) -> tuple[Array, Array]:
    (candidate_bias,) = params
    h = carry
    x_r, x_z, x_n = jnp.split(projected_inputs, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(recurrent, 3, axis=-1)
    r = self.gate_fn(x_r + h_r)
    z = self.gate_fn(x_z + h_z)
    n = self.activation_fn(x_n + r * (h_n + candidate_bias))
    h = (1.0 - z) * n + z * h
    return h, h


# flax.linen's per-gate Dense layers, in our fused order, for each cell:
# (input-side names, recurrent-side names, which side holds the gate biases).
_FLAX_GATES = {
    "SimpleRNNCell": (("i",), ("h",), "input"),
    "LSTMCell": (("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho"),
                 "recurrent"),
    "GRUCell": (("ir", "iz", "in"), ("hr", "hz", "hn"), "input"),
}


def params_from_flax(cell_type: type, flax_params: Any) -> dict[str, Any]:
  """Maps a flax.linen cell's parameters onto this library's fused layout.

  flax's `SimpleCell`, `LSTMCell` / `OptimizedLSTMCell` and `GRUCell` keep
  one `Dense` per gate and side (`ii`, `if`, ..., `hi`, `hf`, ...); ours
  keep one `(in, G*H)` input kernel with the gate biases and one `(H, G*H)`
  recurrent kernel, gates side by side in flax's order (plus the GRU's
  separate `candidate_bias`, flax's `hn` bias). With the mapped parameters
  our cell computes flax's cell exactly (`tests/layers/test_recurrent.py`).

  flax's `SimpleCell(residual=True)` adds the input to its output; ours has
  no residual, so only `residual=False` cells map (the parameters cannot
  tell which it was).

  Args:
    cell_type: `SimpleRNNCell`, `LSTMCell` or `GRUCell`.
    flax_params: the flax cell's parameters without the `params` prefix,
      e.g. `variables["params"]` of `nn.LSTMCell(H).init(...)`.

  Returns:
    Parameters for `cell_type(H)` (no `params` prefix).
  """
  name = getattr(cell_type, "__name__", type(cell_type).__name__)
  if name not in _FLAX_GATES or not (isinstance(cell_type, type) and
                                     issubclass(cell_type, FusedGateCell)):
    raise ValueError(f"cell_type: expected one of {sorted(_FLAX_GATES)}, "
                     f"got {cell_type!r}")
  inputs, recurrent, bias_side = _FLAX_GATES[name]
  needed = inputs + recurrent
  if not hasattr(flax_params, "keys") or not set(needed) <= set(flax_params):
    got = sorted(flax_params) if hasattr(flax_params, "keys") else type(
        flax_params).__name__
    raise ValueError(f"flax_params: expected flax's {name} parameters with "
                     f"sub-layers {list(needed)} (no 'params' prefix), got "
                     f"{got}")

  shapes = {f"{n}.{leaf}": np.shape(flax_params[n][leaf])
            for n in needed for leaf in flax_params[n]}
  hidden = np.shape(flax_params[recurrent[0]]["kernel"])[-1:]
  in_shape = np.shape(flax_params[inputs[0]]["kernel"])
  expected = {}
  for n in needed:
    expected[f"{n}.kernel"] = (
        in_shape if n in inputs else hidden + hidden)
    if f"{n}.bias" in shapes:
      expected[f"{n}.bias"] = hidden
  if len(in_shape) != 2 or in_shape[-1:] != hidden or any(
      shapes.get(key) != want for key, want in expected.items()):
    raise ValueError(
        f"flax_params: expected {name} parameters of one hidden size H "
        f"(input kernels (in, H), recurrent kernels (H, H), biases (H,)), "
        f"got shapes {shapes}")

  def concat(names, leaf):
    return jnp.concatenate([flax_params[n][leaf] for n in names], axis=-1)

  params = {
      "input_projection": {
          "kernel": concat(inputs, "kernel"),
          "bias": concat(inputs if bias_side == "input" else recurrent,
                         "bias")},
      "recurrent_projection": {"kernel": concat(recurrent, "kernel")},
  }
  if name == "GRUCell":
    params["candidate_bias"] = flax_params["hn"]["bias"]
  return params
