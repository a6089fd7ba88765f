"""The hyper-parameters of every backbone, and what every backbone returns.

One frozen `ModelConfig` describes a recurrent or a Transformer model (as flax
lm1b's `TransformerConfig` does for its Transformer), so a task swaps
architectures by changing `backbone`. `BackboneOutput` is the common result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

import kernels
from rnn_transformer import validation
from rnn_transformer.layers import attention
from rnn_transformer.layers.recurrent import EVALUATIONS
from rnn_transformer.recurrences import linear_recurrence
from rnn_transformer.recurrences import newton_recurrence

BACKBONES = ("rnn", "lstm", "gru", "mingru", "minlstm", "lru", "transformer")
# Recurrent backbones whose layers run `linear_recurrence.linear_scan`.
LINEAR_BACKBONES = ("mingru", "minlstm", "lru")
# Backbones whose nonlinear cells `RNN(evaluation="newton")` can evaluate.
NEWTON_BACKBONES = ("rnn", "lstm", "gru")
# Fields only some backbones read, with those backbones. Any other backbone
# refuses a value other than the field's default instead of ignoring it.
_TRANSFORMER_ONLY = ("num_heads", "num_kv_heads", "mlp_dim", "max_len",
                     "positional", "rope_base", "norm", "activation",
                     "attention_impl", "attention_window", "attention_softcap",
                     "remat", "scan_layers")
FIELD_BACKBONES = {
    **{name: ("transformer",) for name in _TRANSFORMER_ONLY},
    "scan_method": LINEAR_BACKBONES,
    "evaluation": NEWTON_BACKBONES,
    "newton_method": NEWTON_BACKBONES,  # and evaluation "newton"
    "forget_bias": ("lstm",),
}
DEFAULT_NEWTON_METHOD = "quasi"
POSITIONAL_ENCODINGS = ("none", "sinusoidal", "learned", "rope")
NORMS = ("pre", "post")
ACTIVATIONS = ("gelu", "relu")


def check_module_config(module: str, config: Any,
                        backbones: tuple[str, ...],
                        causal: bool | None = None) -> None:
  """Raises unless `config` is a `ModelConfig` that `module` can build:
  its backbone among `backbones` and, when given, its `causal` matching."""
  if not isinstance(config, ModelConfig):
    raise TypeError(f"config: expected a ModelConfig for {module} (build "
                    f"one with ModelConfig(...) or ModelConfig.from_mapping("
                    f"a_dict)), got {type(config).__name__}")
  if config.backbone not in backbones:
    raise ValueError(f"config.backbone: {module} builds {backbones}, got "
                     f"{config.backbone!r}; build_backbone(config) picks the "
                     f"module for any backbone")
  if causal is not None and config.causal != causal:
    raise ValueError(f"config.causal: {module} is {'' if causal else 'not '}"
                     f"causal, got causal={config.causal}; build_backbone("
                     f"config) picks TransformerLM or TransformerEncoder")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of a backbone (recurrent or Transformer).

  Attributes:
    backbone: "rnn" (Elman), "lstm", "gru", "mingru", "minlstm", "lru"
      (recurrences linear in h, run in parallel over time) or
      "transformer".
    vocab_size: inputs are `(batch, time)` token ids in `[0, vocab_size)`,
      embedded to `model_dim`. None: inputs are `(batch, time, features)`
      floats (projected to `model_dim` by the Transformer, fed as they are to
      the recurrent layers).
    output_size: size of the logits; None means `vocab_size` (a language
      model), or no logits when `vocab_size` is None too.
    causal: True for a left-to-right model (language model, decodable);
      False for a bidirectional encoder (bidirectional recurrent layers).
    num_layers: Transformer blocks or recurrent layers.
    model_dim: width of the residual stream / hidden size of each recurrent
      layer.
    dropout_rate: dropout on embeddings, on the attention and feed-forward
      outputs before each residual add, and between recurrent layers.
    tie_embeddings: logits are `features @ embedding^T` (Press and Wolf,
      2017); needs `vocab_size` and `output_size` in (None, vocab_size).
    dtype: compute dtype (None: float32); parameters are `param_dtype`.
    num_heads, num_kv_heads: attention heads; `num_kv_heads < num_heads` is
      grouped-query attention (None: as many as `num_heads`).
    mlp_dim: hidden width of the feed-forward layer (None: 4 * model_dim).
    max_len: the longest sequence (and decode cache) a Transformer accepts.
    positional: "sinusoidal", "learned" (absolute, added to the embeddings),
      "rope" (rotary, applied to q and k in every layer) or "none".
    rope_base: the base (max timescale) of the rotary frequencies.
    norm: "pre" (LayerNorm before each sub-layer, plus a final one) or "post"
      (after each residual add, as in Vaswani et al., 2017).
    activation: "gelu" or "relu" in the feed-forward layer.
    attention_impl: passed to `kernels.attention` (None: automatic).
    attention_window: local attention over the query and the
      `attention_window` keys before it (and after it when not causal):
      `kernels.attention(window=(w, 0))`, or `(w, w)` bidirectional. None:
      global attention.
    attention_softcap: Gemma 2's logit soft-capping, `softcap *
      tanh(scores / softcap)` (None: off).
    remat: rematerialise each block in the backward pass (`nn.remat`).
    scan_layers: run the blocks with `nn.scan` over stacked parameters, so
      compile time does not grow with depth.
    scan_method: for "mingru", "minlstm" and "lru": "associative",
      "chunked" or "sequential" (`linear_recurrence.linear_scan`); None:
      the per-backend default (`linear_recurrence.default_method`).
    evaluation: for "rnn", "lstm" and "gru": "scan" (sequential) or
      "newton" (parallel over time by Newton iterations, `RNN(evaluation=
      "newton")`; exact at convergence, falls back to the scan otherwise).
    newton_method: with evaluation "newton": "full", "quasi" or "damped"
      (`newton_recurrence.newton_scan`); None: "quasi".

  A field that only some backbones read (`FIELD_BACKBONES`: the attention
  fields, `max_len`, `remat` and `scan_layers` for the Transformer;
  `scan_method` for the linear recurrences; `evaluation` and
  `newton_method` for the classic cells; `forget_bias` for the LSTM) must
  keep its default with any other backbone: a config never trains with a
  setting silently ignored.
    forget_bias: initial forget-gate bias of "lstm" cells (`LSTMCell`):
      1.0 as in Jozefowicz et al. (2015); larger values start the memory
      closer to the original LSTM's constant error carousel (no forget
      gate, Hochreiter and Schmidhuber, 1997), which long lags need.
  """
  backbone: str = "transformer"
  vocab_size: int | None = None
  output_size: int | None = None
  causal: bool = True
  num_layers: int = 2
  model_dim: int = 64
  dropout_rate: float = 0.0
  tie_embeddings: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32
  num_heads: int = 4
  num_kv_heads: int | None = None
  mlp_dim: int | None = None
  max_len: int = 512
  positional: str = "sinusoidal"
  rope_base: float = 10_000.0
  norm: str = "pre"
  activation: str = "gelu"
  attention_impl: str | None = None
  attention_window: int | None = None
  attention_softcap: float | None = None
  remat: bool = False
  scan_layers: bool = False
  scan_method: str | None = None
  evaluation: str = "scan"
  newton_method: str | None = None
  forget_bias: float = 1.0

  def __post_init__(self):
    validation.check_choice("backbone", self.backbone, BACKBONES)
    validation.check_choice("positional", self.positional,
                            POSITIONAL_ENCODINGS)
    validation.check_choice("norm", self.norm, NORMS)
    validation.check_choice("activation", self.activation, ACTIVATIONS)
    validation.check_choice("attention_impl", self.attention_impl,
                            (None,) + kernels.IMPLEMENTATIONS)
    for name in ("num_layers", "model_dim", "max_len", "num_heads"):
      validation.check_int(name, getattr(self, name))
    for name in ("vocab_size", "output_size", "mlp_dim", "num_kv_heads"):
      validation.check_int(name, getattr(self, name), optional=True)
    if self.attention_window is not None and (
        isinstance(self.attention_window, bool) or not isinstance(
            self.attention_window, int) or self.attention_window < 0):
      raise ValueError(f"attention_window: expected an int >= 0 or None, "
                       f"got {self.attention_window!r}")
    if self.attention_softcap is not None and (
        isinstance(self.attention_softcap, bool) or not isinstance(
            self.attention_softcap, (int, float)) or not (
                np.isfinite(self.attention_softcap)
                and self.attention_softcap > 0)):
      raise ValueError(f"attention_softcap: expected a positive number or "
                       f"None, got {self.attention_softcap!r}")
    for name in ("causal", "tie_embeddings", "remat", "scan_layers"):
      validation.check_bool(name, getattr(self, name))
    validation.check_rate("dropout_rate", self.dropout_rate)
    if not isinstance(self.forget_bias, (int, float)) or isinstance(
        self.forget_bias, bool) or not np.isfinite(self.forget_bias):
      raise ValueError(f"forget_bias: expected a finite number, got "
                       f"{self.forget_bias!r}")
    if not isinstance(self.rope_base, (int, float)) or isinstance(
        self.rope_base, bool) or not self.rope_base > 0:
      raise ValueError(f"rope_base: expected a positive number, got "
                       f"{self.rope_base!r}")
    # Names ("bfloat16") become dtypes, so equal configs compare equal.
    object.__setattr__(self, "dtype", validation.check_float_dtype(
        "dtype", self.dtype, optional=True))
    object.__setattr__(self, "param_dtype", validation.check_float_dtype(
        "param_dtype", self.param_dtype))
    if self.scan_method is not None:
      validation.check_choice("scan_method", self.scan_method,
                              linear_recurrence.METHODS)
    validation.check_choice("evaluation", self.evaluation, EVALUATIONS)
    if self.newton_method is not None:
      validation.check_choice("newton_method", self.newton_method,
                              newton_recurrence.METHODS)
    self._check_fields_the_backbone_reads()
    if self.tie_embeddings and (self.vocab_size is None or self.output_size
                                not in (None, self.vocab_size)):
      raise ValueError(
          "tie_embeddings needs token inputs (vocab_size) and logits over the "
          f"vocabulary; got vocab_size={self.vocab_size}, "
          f"output_size={self.output_size}")
    if self.backbone == "transformer":
      attention.check_heads(self.model_dim, self.num_heads, self.num_kv_heads)
      if self.positional == "rope" and self.head_dim % 2:
        raise ValueError(
            f"positional='rope' needs an even head_dim, got {self.head_dim}")
      if self.positional == "sinusoidal" and self.model_dim % 2:
        raise ValueError("positional='sinusoidal' needs an even model_dim, "
                         f"got {self.model_dim}")

  def _check_fields_the_backbone_reads(self) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    for name, users in FIELD_BACKBONES.items():
      value = getattr(self, name)
      if self.backbone not in users and value != defaults[name]:
        raise ValueError(
            f"{name}: only for backbones {users}, got {name}={value!r} with "
            f"backbone={self.backbone!r}, which would ignore it (leave it at "
            f"its default {defaults[name]!r})")
    if self.newton_method is not None and self.evaluation != "newton":
      raise ValueError(
          f"newton_method: only with evaluation='newton', got newton_method="
          f"{self.newton_method!r} with evaluation={self.evaluation!r}, which "
          f"would ignore it (leave it None)")

  @property
  def newton_options(self) -> dict[str, Any] | None:
    """`RNN(newton=...)` for this config: None unless evaluation "newton"."""
    if self.evaluation != "newton":
      return None
    return {"method": self.newton_method or DEFAULT_NEWTON_METHOD}

  def window(self, causal: bool) -> tuple[int, int] | None:
    """`kernels.attention`'s window for `attention_window` in a block that
    is `causal` or not."""
    if self.attention_window is None:
      return None
    return (self.attention_window, 0 if causal else self.attention_window)

  @property
  def head_dim(self) -> int:
    return self.model_dim // self.num_heads

  @property
  def logits_size(self) -> int | None:
    return self.vocab_size if self.output_size is None else self.output_size

  @property
  def feed_forward_dim(self) -> int:
    return 4 * self.model_dim if self.mlp_dim is None else self.mlp_dim

  def replace(self, **changes: Any) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_mapping(cls, mapping: Mapping[str, Any]) -> ModelConfig:
    """From a dict or `ml_collections.ConfigDict` with the same field names."""
    if hasattr(mapping, "to_dict"):
      mapping = mapping.to_dict()
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - fields)
    if unknown:
      raise ValueError(f"model config: unknown fields {unknown}; expected "
                       f"names from {sorted(fields)}")
    return cls(**mapping)


class BackboneOutput(flax.struct.PyTreeNode):
  """What every backbone returns.

  Attributes:
    features: `(batch, time, model_dim)` per-step features (twice model_dim
      for a bidirectional recurrent backbone).
    logits: `(batch, time, logits_size)`, or None without an output layer.
  """
  features: jax.Array
  logits: jax.Array | None
