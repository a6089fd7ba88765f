"""Shardings of parameter and train-state trees, sharded init, and the
activation-sharding context the layers read.

MaxText's `get_abstract_state` order: `jax.eval_shape` the init, name every
leaf's axes (`logical_axes`), map names to mesh axes (`rules`), then
`jit(init, out_shardings=...)`, so the state is created sharded and never
exists replicated.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import warnings
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rnn_transformer.parallel import axis_names as la
from rnn_transformer.parallel import rules as rules_lib


class ReplicatedDimensionWarning(UserWarning):
  """A dimension its rule would split is not divisible: it stays whole."""


def partition_spec(names: la.AxisNames, shape: Sequence[int],
                   mesh: jax.sharding.Mesh, rules: rules_lib.Rules,
                   where: str = "") -> P:
  """The `PartitionSpec` of one array from its logical `names`.

  A mesh axis serves one dimension per array (the first that asks). A
  dimension the mesh axes do not divide is replicated with a
  `ReplicatedDimensionWarning` (e.g. a 97-character vocabulary over 2 tensor
  shards), never an error: the run stays correct, only less sharded.
  """
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(names, shape):
    targets = tuple(a for a in table.get(name, ()) if a not in used)
    split = math.prod(mesh.shape[a] for a in targets)
    if targets and size % split:
      warnings.warn(
          f"{where}: dimension {name!r} of size {size} is not divisible by "
          f"the {split} shards of mesh axes {targets}; it stays replicated",
          ReplicatedDimensionWarning, stacklevel=3)
      targets = ()
    used.update(targets)
    spec.append(None if not targets else (
        targets[0] if len(targets) == 1 else targets))
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def _names(path, leaf, extra_rules):
  """The leaf's logical names, or None for leaves no parameter rule fits."""
  try:
    return la.axes_for(la.path_string(path), len(leaf.shape),
                       tuple(extra_rules) + la.PARAM_RULES)
  except la.UnnamedParameterError:  # e.g. an optimizer's per-row statistic
    return None


def tree_shardings(tree: Any, mesh: jax.sharding.Mesh, rules: rules_lib.Rules,
                   extra_rules: Sequence[tuple[str, la.AxisNames]] = ()
                   ) -> Any:
  """A `NamedSharding` per leaf of any state tree (params, optimizer, step).

  Leaves found by a parameter rule (their dict-key path ends like a
  parameter's: optax's `mu`/`nu` repeat the parameter tree) are split by
  `rules`; the rest (step counters, scalars) are replicated. Use
  `logical_axes(params)` first to refuse unnamed parameters.
  """
  def sharding(path, leaf):
    names = _names(path, leaf, extra_rules)
    if names is None:
      return NamedSharding(mesh, P())
    return NamedSharding(mesh, partition_spec(
        names, leaf.shape, mesh, rules, la.path_string(path)))
  return jax.tree_util.tree_map_with_path(sharding, tree)


def abstract_state(init: Callable[..., Any], mesh: jax.sharding.Mesh,
                   rules: rules_lib.Rules, *args,
                   params_of: Callable[[Any], Any] | None = None,
                   extra_rules: Sequence[tuple[str, la.AxisNames]] = ()
                   ) -> tuple[Any, Any]:
  """The shape of `init(*args)` and its shardings, before any array exists.

  Arguments as `sharded_init` takes them. Returns `(abstract, shardings)`:
  `jax.ShapeDtypeStruct` leaves and a `NamedSharding` per leaf. Raises
  `UnnamedParameterError` for a parameter no rule names.
  """
  abstract = jax.eval_shape(init, *args)
  la.logical_axes(abstract if params_of is None else params_of(abstract),
                  extra_rules)
  return abstract, tree_shardings(abstract, mesh, rules, extra_rules)


def sharded_init(init: Callable[..., Any], mesh: jax.sharding.Mesh,
                 rules: rules_lib.Rules, *args,
                 params_of: Callable[[Any], Any] | None = None,
                 extra_rules: Sequence[tuple[str, la.AxisNames]] = ()
                 ) -> tuple[Any, Any]:
  """`init(*args)` computed directly into its shardings; returns both.

  Args:
    init: a pure function building the state (parameters, optimizer state).
    mesh, rules: where and how to split it.
    *args: `init`'s arguments (a PRNG key, ...), replicated.
    params_of: picks the parameter tree out of the state, checked with
      `logical_axes` so that an unnamed parameter raises instead of being
      replicated. Default: the state is the parameters.
    extra_rules: as `logical_axes` takes them.

  Returns:
    `(state, shardings)`, `shardings` a tree of `NamedSharding` like state.
  """
  _, shardings = abstract_state(init, mesh, rules, *args,
                                params_of=params_of, extra_rules=extra_rules)
  return jax.jit(init, out_shardings=shardings)(*args), shardings


def _nbytes(leaf) -> int:
  return math.prod(leaf.shape) * leaf.dtype.itemsize


def sharded_fraction(tree: Any) -> float:
  """The fraction of the tree's bytes held in arrays split over devices."""
  leaves = jax.tree.leaves(tree)
  total = sum(_nbytes(x) for x in leaves)
  split = sum(_nbytes(x) for x in leaves if not x.sharding.is_fully_replicated)
  return split / total if total else 0.0


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
  """Bytes of the tree each addressable device holds (its shards)."""
  held: dict[jax.Device, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
  """Where activations live while a model runs: read by the layers.

  `MultiHeadAttention` runs `kernels.attention` per (batch, heads) shard
  with these axes, so an opaque kernel (Triton, cuDNN) never gathers.
  """
  mesh: jax.sharding.Mesh
  batch_axes: tuple[str, ...]
  head_axes: tuple[str, ...]
  time_axes: tuple[str, ...] = ()

  def attention_axes(self, num_heads: int, num_kv_heads: int
                     ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`(batch_axes, head_axes)` for one attention call; the heads stay
    whole where the head axes do not divide both head counts."""
    split = math.prod(self.mesh.shape[a] for a in self.head_axes)
    heads = self.head_axes if (num_heads % split == 0 and
                               num_kv_heads % split == 0) else ()
    return self.batch_axes, heads

  def scan_across_devices(self) -> dict[str, Any]:
    """The `mesh`, `time_axis`, `batch_axes` arguments of the recurrences
    that split time over devices (`linear_recurrence.linear_scan`,
    `newton_recurrence.newton_scan`); empty without a time axis."""
    if not self.time_axes:
      return {}
    return dict(mesh=self.mesh, time_axis=self.time_axes,
                batch_axes=self.batch_axes or None)


_CURRENT: contextvars.ContextVar[ActivationSharding | None] = (
    contextvars.ContextVar("activation_sharding", default=None))


def current() -> ActivationSharding | None:
  """The innermost `activation_sharding` context, or None."""
  return _CURRENT.get()


def constrain_batch(x: jax.Array, batch_dim: int = 0,
                    time_dim: int | None = None) -> jax.Array:
  """`x` kept split over the batch axes along `batch_dim`, and over the
  context axes along `time_dim` when given (all else whole), inside
  `activation_sharding`; unchanged outside it.

  Without it XLA's propagation may split activations like the parameters
  next to them (fsdp's `embed`), then gather whole global-batch activations
  (measured: 4.7x fsdp's textbook traffic on a 50M-parameter Transformer).
  """
  sharding = current()
  if sharding is None or not (sharding.batch_axes or sharding.time_axes):
    return x
  spec = [None] * x.ndim
  spec[batch_dim] = sharding.batch_axes or None
  if time_dim is not None and sharding.time_axes:
    spec[time_dim] = sharding.time_axes
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(sharding.mesh, P(*spec)))


def replicate(x: jax.Array) -> jax.Array:
  """`x` whole on every device inside `activation_sharding` (a weight used at
  every time step of a scan is gathered once, before it); unchanged outside."""
  sharding = current()
  if sharding is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(sharding.mesh, P()))


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules: rules_lib.Rules):
  """Within it (while tracing), layers place activations on `mesh`.

  The batch splits over the mesh's `data` and `fsdp` axes, time over
  `context` (the linear recurrences scan across devices); attention heads
  over the axes `rules` give both `heads` and `kv_heads`.
  """
  table = dict(rules)
  heads = table.get(la.HEADS, ())
  head_axes = heads if table.get(la.KV_HEADS, ()) == heads else ()
  token = _CURRENT.set(ActivationSharding(
      mesh, rules_lib.batch_axes(mesh), tuple(head_axes),
      rules_lib.time_axes(mesh)))
  try:
    yield
  finally:
    _CURRENT.reset(token)
