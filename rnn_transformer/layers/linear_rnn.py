"""Recurrences linear in the hidden state: minGRU, minLSTM and LRU.

Each is a `flax.linen.RNNCellBase` whose step is

    h_t = a_t * h_{t-1} + b_t,     (a_t, b_t) computed from x_t alone,
    y_t = readout(h_t, x_t)

so it is usable two ways with the same parameters:

* as a cell, `cell(carry, x_t) -> (carry, y_t)`: one step (decoding, carrying
  state across batches, `flax.linen.RNN`);
* as a layer over time, `recurrent.RNN(cell)`: `RNN` calls `scan_over_time`,
  which computes (a, b) for all steps with one projection and runs
  `linear_recurrence.linear_scan` (or `log_linear_scan`) with the method of
  `RNN.scan_method`: associative (O(log T) depth), chunked or sequential.

Parameters and the carry are `param_dtype` (complex for the LRU); `dtype` is
the compute dtype of the projections, whose results are cast to the carry's
dtype before the recurrence, so a bfloat16 run accumulates h in float32.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_transformer import parallel
from rnn_transformer import validation
from rnn_transformer.recurrences import linear_recurrence

Array = jax.Array


def log_g(x: Array) -> Array:
  """log g(x) of Feng et al. (2024)'s positive activation g(x) = x + 1/2
  (x >= 0), σ(x) (x < 0); finite with finite gradients everywhere."""
  return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


class LinearRecurrentCell(nn.RNNCellBase):
  """Base class: a cell with `h_t = a_t * h_{t-1} + b_t`.

  Subclasses define `coefficients(inputs) -> (a, b)` (their logarithms when
  `scans_in_log_space`), each `(..., state)` in the carry's dtype, and optionally
  `readout(h, inputs) -> y` (default: y = h).

  Attributes:
    features: hidden size (and output size) H.
    dtype: compute dtype of the projections (None: from inputs and params).
    param_dtype: dtype of the parameters and (its complex form for the LRU)
      of the carry.
    precision: matmul precision passed to `jax.lax.dot_general`.
  """
  features: int
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None

  def __post_init__(self):
    if type(self).coefficients is LinearRecurrentCell.coefficients:
      raise TypeError(
          f"{type(self).__name__}: an abstract base without coefficients(); "
          f"use MinGRU, MinLSTM or LRU, or subclass it and define "
          f"coefficients(inputs) -> (a, b)")
    validation.check_int("features", self.features)
    validation.check_float_dtype("dtype", self.dtype, optional=True)
    validation.check_float_dtype("param_dtype", self.param_dtype)
    super().__post_init__()

  @property
  def scans_in_log_space(self) -> bool:
    """Whether `coefficients` returns log a and log b (a, b, h > 0)."""
    return False

  @property
  def state_features(self) -> int:
    return self.features

  @property
  def carry_dtype(self) -> Any:
    return jnp.dtype(self.param_dtype)

  def coefficients(self, inputs: Array) -> tuple[Array, Array]:
    raise NotImplementedError

  def readout(self, h: Array, inputs: Array) -> Array:
    del inputs
    return h

  def _dense(self, features: int, name: str, **kwargs) -> nn.Dense:
    kwargs.setdefault("kernel_init", nn.initializers.lecun_normal())
    return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype,
                    precision=self.precision, name=name, **kwargs)

  def _check_inputs(self, inputs: Array, kernel_owner: str) -> None:
    validation.check_floating("inputs", inputs)
    params = self.variables.get("params", {})
    kernel = params.get(kernel_owner, {}).get("kernel")
    if kernel is not None and kernel.shape[0] != inputs.shape[-1]:
      raise ValueError(
          f"inputs: expected {kernel.shape[0]} features (the size the params "
          f"were built for) on the last axis, got shape {inputs.shape}")

  def __call__(self, carry: Array, inputs: Array) -> tuple[Array, Array]:
    """One step: `carry: (..., state)`, `inputs: (..., in)` -> `(h, y)`."""
    a, b = self.coefficients(inputs)
    if self.scans_in_log_space:  # the paper's sequential mode is in linear space
      a, b = jnp.exp(a), jnp.exp(b)
    h = a * carry.astype(self.carry_dtype) + b
    return h, self.readout(h, inputs)

  def scan_over_time(self, inputs: Array, *, initial_carry: Array,
                     seq_lengths: Array | None = None,
                     reset: Array | None = None, reverse: bool = False,
                     method: str | None = None,
                     chunk_size: int = linear_recurrence.DEFAULT_CHUNK_SIZE
                     ) -> tuple[Array, Array]:
    """All steps at once: `inputs: (batch, time, in)` -> `(final_carry, y)`.

    Masks and `reverse` as in `recurrent.RNN` (outputs in input order, zero
    at padded steps); `method` None picks
    `linear_recurrence.default_method()` for this backend.
    """
    method = linear_recurrence.default_method() if method is None else method
    a, b = self.coefficients(inputs)
    kwargs = dict(seq_lengths=seq_lengths, reset=reset, reverse=reverse,
                  method=method, chunk_size=chunk_size)
    sharding = parallel.current()
    if sharding is not None:  # sequence parallelism under a time axis
      kwargs.update(sharding.scan_across_devices())
    carry = initial_carry.astype(self.carry_dtype)
    if self.scans_in_log_space:
      # A zero carry is log 0 = -inf: the log-space scan handles it exactly.
      log_final, log_h = linear_recurrence.log_linear_scan(
          a, b, log_initial_carry=jnp.log(carry), **kwargs)
      final, h = jnp.exp(log_final), jnp.exp(log_h)
    else:
      final, h = linear_recurrence.linear_scan(a, b, initial_carry=carry,
                                               **kwargs)
    y = self.readout(h, inputs)
    if seq_lengths is not None:
      valid = jnp.arange(inputs.shape[1])[None, :] < seq_lengths[:, None]
      y = jnp.where(valid[..., None], y, jnp.zeros((), y.dtype))
    return final, y

  @nn.nowrap
  def initialize_carry(self, rng: Array, input_shape: tuple[int, ...]) -> Array:
    """Zero carry `(..., state)` for inputs of shape `(..., in)`."""
    del rng
    return jnp.zeros(tuple(input_shape[:-1]) + (self.state_features,),
                     self.carry_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


class MinGRU(LinearRecurrentCell):
  """minGRU (Feng et al., 2024, "Were RNNs All We Needed?", section 3.1).

      z_t = σ(W_z x_t + b_z),   h̃_t = W_h x_t + b_h
      h_t = (1 - z_t) * h_{t-1} + z_t * h̃_t

  No gate sees h_{t-1}, so a = 1 - z and b = z h̃ come from x_t alone.
  `log_space=True` is the paper's log-space variant: h̃_t = g(W_h x_t + b_h)
  with the positive `g`, so h stays positive (from a non-negative initial
  carry) and the scan runs on log a = -softplus(k_z), log b = -softplus(-k_z)
  + log g(k_h). Carry and output: `h: (..., H)`.
  """
  log_space: bool = False

  def __post_init__(self):
    validation.check_bool("log_space", self.log_space)
    super().__post_init__()

  @property
  def scans_in_log_space(self) -> bool:
    return self.log_space

  def setup(self):
    self.projection = self._dense(2 * self.features, "projection")

  def coefficients(self, inputs: Array) -> tuple[Array, Array]:
    self._check_inputs(inputs, "projection")
    k = self.projection(inputs).astype(self.carry_dtype)
    k_z, k_h = jnp.split(k, 2, axis=-1)
    if self.log_space:
      return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(k_h)
    z = jax.nn.sigmoid(k_z)
    return 1.0 - z, z * k_h


class MinLSTM(LinearRecurrentCell):
  """minLSTM (Feng et al., 2024, section 3.2), with its normalised gates.

      f_t = σ(W_f x_t + b_f),  i_t = σ(W_i x_t + b_i),  h̃_t = W_h x_t + b_h
      f'_t = f_t / (f_t + i_t),  i'_t = i_t / (f_t + i_t)
      h_t = f'_t * h_{t-1} + i'_t * h̃_t

  The normalisation makes the scale of h independent of t. Computed stably
  as f' = σ(-d), i' = σ(d) with d = log(i / f) = softplus(-k_f) -
  softplus(-k_i). `log_space=True`: h̃_t = g(W_h x_t + b_h), log a =
  -softplus(d), log b = -softplus(-d) + log g(k_h). Carry and output:
  `h: (..., H)`.
  """
  log_space: bool = False

  def __post_init__(self):
    validation.check_bool("log_space", self.log_space)
    super().__post_init__()

  @property
  def scans_in_log_space(self) -> bool:
    return self.log_space

  def setup(self):
    self.projection = self._dense(3 * self.features, "projection")

  def coefficients(self, inputs: Array) -> tuple[Array, Array]:
    self._check_inputs(inputs, "projection")
    k = self.projection(inputs).astype(self.carry_dtype)
    k_f, k_i, k_h = jnp.split(k, 3, axis=-1)
    d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)  # log(i / f)
    if self.log_space:
      return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(k_h)
    return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * k_h


def _ring_nu_log_init(r_min: float, r_max: float):
  """ν_log so that |λ| = exp(-exp(ν_log)) is uniform on the ring's area."""
  def init(key, shape, dtype=jnp.float32):
    u = jax.random.uniform(key, shape, dtype)
    return jnp.log(-0.5 * jnp.log(u * (r_max ** 2 - r_min ** 2) + r_min ** 2))
  return init


def _phase_log_init(max_phase: float):
  def init(key, shape, dtype=jnp.float32):
    return jnp.log(max_phase * jax.random.uniform(key, shape, dtype))
  return init


class _Skip(nn.Module):
  """The LRU's `D u`: diagonal D (the paper) when input width == H.

  A stacked bidirectional LRU feeds 2H features to the next layer, which
  the paper's diagonal D cannot take; there D is a dense `(in, H)` matrix.
  """
  features: int
  dtype: Any
  param_dtype: Any
  precision: Any

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    if inputs.shape[-1] == self.features:
      d = self.param("D", nn.initializers.normal(1.0), (self.features,),
                     self.param_dtype)
      dtype = self.dtype or jnp.result_type(inputs, d)
      return inputs.astype(dtype) * d.astype(dtype)
    return nn.Dense(self.features, use_bias=False, dtype=self.dtype,
                    param_dtype=self.param_dtype, precision=self.precision,
                    name="dense")(inputs)


class LRU(LinearRecurrentCell):
  """Linear Recurrent Unit (Orvieto et al., 2023, "Resurrecting Recurrent
  Neural Networks for Long Sequences", section 3 and appendix A).

      λ = exp(-exp(ν) + i exp(θ))                    (N,) complex, |λ| < 1
      x_t = λ * x_{t-1} + γ * (B u_t),   γ = sqrt(1 - |λ|²)  (trainable, log)
      y_t = Re(C x_t) + D * u_t

  Initialisation: |λ| uniform on the ring [r_min, r_max] (by area), phase
  uniform in [0, max_phase]; B ~ N(0, 1/(2 in)), C ~ N(0, 1/N) (real and
  imaginary parts), D ~ N(0, 1). The complex projections run as real
  matmuls in `dtype`; the state x is complex (complex64 for float32 params).

  Attributes:
    state_size: N (None: H).
    r_min, r_max: radii of the ring of initial eigenvalues, 0 <= r_min <=
      r_max < 1 (r_max = 1 allowed, as in the paper's code).
    max_phase: largest initial phase of λ.
  Carry: `x: (..., N)` complex; output: `y: (..., H)` real.
  """
  state_size: int | None = None
  r_min: float = 0.0
  r_max: float = 1.0
  max_phase: float = 2 * math.pi

  @property
  def state_features(self) -> int:
    return self.features if self.state_size is None else self.state_size

  @property
  def carry_dtype(self) -> Any:
    return jnp.result_type(self.param_dtype, jnp.complex64)

  def __post_init__(self):
    validation.check_int("state_size", self.state_size, optional=True)
    for name in ("r_min", "r_max", "max_phase"):
      validation.check_real(name, getattr(self, name))
    if not 0.0 <= self.r_min <= self.r_max <= 1.0:
      raise ValueError(f"r_min, r_max: expected 0 <= r_min <= r_max <= 1, got "
                       f"r_min={self.r_min}, r_max={self.r_max}")
    if not self.max_phase > 0:
      raise ValueError(f"max_phase: expected > 0, got {self.max_phase}")
    super().__post_init__()

  def setup(self):
    n = self.state_features
    self.nu_log = self.param("nu_log", _ring_nu_log_init(self.r_min, self.r_max),
                             (n,), self.param_dtype)
    self.theta_log = self.param("theta_log", _phase_log_init(self.max_phase),
                                (n,), self.param_dtype)
    # γ starts at sqrt(1 - |λ|²) of the initial λ and is trained from there.
    self.gamma_log = self.param(
        "gamma_log",
        lambda key, shape, dtype: 0.5 * jnp.log1p(
            -jnp.exp(-2.0 * jnp.exp(self.nu_log))).astype(dtype),
        (n,), self.param_dtype)
    b_init = nn.initializers.variance_scaling(0.5, "fan_in", "normal")
    c_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    self.b_re = self._dense(n, "B_re", use_bias=False, kernel_init=b_init)
    self.b_im = self._dense(n, "B_im", use_bias=False, kernel_init=b_init)
    self.c_re = self._dense(self.features, "C_re", use_bias=False,
                            kernel_init=c_init)
    self.c_im = self._dense(self.features, "C_im", use_bias=False,
                            kernel_init=c_init)
    self.skip = _Skip(self.features, self.dtype, self.param_dtype,
                      self.precision, name="skip")

  def eigenvalues(self) -> Array:
    """λ: `(N,)` complex."""
    return jnp.exp(-jnp.exp(self.nu_log) + 1j * jnp.exp(self.theta_log)
                   ).astype(self.carry_dtype)

  def coefficients(self, inputs: Array) -> tuple[Array, Array]:
    self._check_inputs(inputs, "B_re")
    real = self.b_re(inputs).astype(self.param_dtype)
    imag = self.b_im(inputs).astype(self.param_dtype)
    b = jax.lax.complex(real, imag) * jnp.exp(self.gamma_log)
    return jnp.broadcast_to(self.eigenvalues(), b.shape), b

  def readout(self, h: Array, inputs: Array) -> Array:
    y = self.c_re(h.real) - self.c_im(h.imag) + self.skip(inputs)
    return y.astype(self.param_dtype)


LINEAR_CELLS = {"mingru": MinGRU, "minlstm": MinLSTM, "lru": LRU}
