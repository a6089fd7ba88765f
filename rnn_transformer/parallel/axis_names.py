"""Logical axis names of every parameter, by rule on its path.

Each parameter dimension gets a logical name (`embed`, `heads`, `mlp`, ...),
as `flax.linen.with_logical_partitioning` gives it in MaxText; a strategy
(`rules.py`) then maps logical names to mesh axes. The names come from rules
on the parameter's path (`blocks_0/attention/query/kernel`), as big_vision's
`sharding_strategy` matches them, instead of boxes inside the parameters:
`model.init` keeps returning plain arrays, as flax's own layers do, and the
fused recurrent cells read their kernels unboxed. `logical_axes` refuses a
parameter no rule names, so a new layer cannot go unannotated (the tests run
it over every backbone).

A leading axis beyond a rule's rank is the `layers` axis of a scanned stack
(`ModelConfig(scan_layers=True)`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax

# Logical names, with what they index.
BATCH = "batch"  # examples (activations only)
VOCAB = "vocab"  # token ids, or the output layer's classes
EMBED = "embed"  # the residual stream / a layer's input features
HEADS = "heads"  # query heads
KV_HEADS = "kv_heads"  # key/value heads (grouped-query attention)
HEAD_DIM = "head_dim"
MLP = "mlp"  # the feed-forward hidden layer
HIDDEN = "hidden"  # a recurrent cell's state
GATES = "gates"  # a recurrent cell's fused gate columns (gates x hidden)
POSITION = "position"  # rows of a learned position table
LAYERS = "layers"  # the stacked axis of scanned layers
LOGICAL_AXES = (BATCH, VOCAB, EMBED, HEADS, KV_HEADS, HEAD_DIM, MLP, HIDDEN,
                GATES, POSITION, LAYERS)

AxisNames = tuple[str | None, ...]

# (regex searched in the "/"-joined path, logical names). First match wins.
PARAM_RULES: tuple[tuple[str, AxisNames], ...] = (
    # Embedder and positions (models/embedding.py, layers/positional.py).
    (r"(^|/)position_embedding/embedding$", (POSITION, EMBED)),
    (r"^embedding$", (POSITION, EMBED)),  # a LearnedPositionEmbedding alone
    (r"(^|/)embedding/embedding$", (VOCAB, EMBED)),
    # Float inputs' projection: their width is the data's, never split.
    (r"(^|/)embedder/input_projection/kernel$", (None, EMBED)),
    (r"(^|/)embedder/input_projection/bias$", (EMBED,)),
    (r"(^|/)input_projection/kernel$", (EMBED, GATES)),
    (r"(^|/)input_projection/bias$", (GATES,)),
    (r"(^|/)output_layer/kernel$", (EMBED, VOCAB)),
    (r"(^|/)output_layer/bias$", (VOCAB,)),
    # Multi-head attention (layers/attention.py).
    (r"(^|/)query/kernel$", (EMBED, HEADS, HEAD_DIM)),
    (r"(^|/)query/bias$", (HEADS, HEAD_DIM)),
    (r"(^|/)(key|value)/kernel$", (EMBED, KV_HEADS, HEAD_DIM)),
    (r"(^|/)(key|value)/bias$", (KV_HEADS, HEAD_DIM)),
    (r"(^|/)out/kernel$", (HEADS, HEAD_DIM, EMBED)),
    (r"(^|/)out/bias$", (EMBED,)),
    # Feed-forward and norms (models/transformer.py).
    (r"(^|/)wi/kernel$", (EMBED, MLP)),
    (r"(^|/)wi/bias$", (MLP,)),
    (r"(^|/)wo/kernel$", (MLP, EMBED)),
    (r"(^|/)wo/bias$", (EMBED,)),
    (r"(^|/)(norm_\w+|final_norm)/(scale|bias)$", (EMBED,)),
    # Classic cells (layers/cells.py): fused gates, (in, G*H) and (H, G*H).
    (r"(^|/)recurrent_projection/kernel$", (HIDDEN, GATES)),
    (r"(^|/)candidate_bias$", (HIDDEN,)),
    # minGRU / minLSTM (layers/linear_rnn.py): one fused (in, G*H) projection.
    (r"(^|/)projection/kernel$", (EMBED, GATES)),
    (r"(^|/)projection/bias$", (GATES,)),
    # LRU (layers/linear_rnn.py).
    (r"(^|/)B_(re|im)/kernel$", (EMBED, HIDDEN)),
    (r"(^|/)C_(re|im)/kernel$", (HIDDEN, EMBED)),
    (r"(^|/)(nu_log|theta_log|gamma_log)$", (HIDDEN,)),
    (r"(^|/)skip/D$", (HIDDEN,)),
    (r"(^|/)skip/dense/kernel$", (EMBED, HIDDEN)),
)


class UnnamedParameterError(ValueError):
  """A parameter matches no rule of `PARAM_RULES` (or the caller's)."""


def path_string(path: Sequence[Any]) -> str:
  """A pytree key path's dict keys joined by "/" (`blocks_0/mlp/wi/kernel`).

  Only dict keys count, so an optimizer state's `mu`/`nu` trees (whose dict
  keys repeat the parameters') give the parameters' strings.
  """
  keys = []
  for entry in path:
    if isinstance(entry, jax.tree_util.DictKey):
      keys.append(str(entry.key))
  return "/".join(keys)


def axes_for(path: str, ndim: int,
             rules: Sequence[tuple[str, AxisNames]] = PARAM_RULES
             ) -> AxisNames | None:
  """The logical names of a rank-`ndim` parameter at `path`, or None.

  A match one rank short is a scanned stack: `layers` is prepended. A match
  of another rank raises, since the rule and the layer disagree.
  """
  for pattern, names in rules:
    if re.search(pattern, path):
      if ndim == len(names):
        return tuple(names)
      if ndim == len(names) + 1:
        return (LAYERS,) + tuple(names)
      raise UnnamedParameterError(
          f"params: {path} has rank {ndim}, but the rule {pattern!r} names "
          f"{len(names)} axes {names}")
  return None


def logical_axes(params: Any, extra_rules: Sequence[tuple[str, AxisNames]]
                 = ()) -> Any:
  """The tree of logical names (tuples) for `params`, one per dimension.

  Args:
    params: a parameter tree (arrays or `jax.ShapeDtypeStruct`s), e.g.
      `jax.eval_shape(model.init, key, x)["params"]`.
    extra_rules: `(regex, names)` pairs tried before `PARAM_RULES`, for a
      researcher's own layers.

  Raises:
    UnnamedParameterError: a parameter no rule names.
  """
  rules = tuple(extra_rules) + PARAM_RULES

  def name(path, leaf):
    where = path_string(path)
    names = axes_for(where, len(leaf.shape), rules)
    if names is None:
      raise UnnamedParameterError(
          f"params: no logical axis rule names {where} (shape "
          f"{tuple(leaf.shape)}); add a (regex, names) pair to extra_rules "
          f"(or to rnn_transformer.parallel.PARAM_RULES for a "
          f"layer of this library)")
    return names

  return jax.tree_util.tree_map_with_path(name, params)
