"""Sharding strategies: rules mapping logical axis names to mesh axes.

| strategy | parameters and optimizer state | batch |
| --- | --- | --- |
| `dp` | replicated | `data` |
| `fsdp` | `embed` and `hidden` split over `fsdp` (ZeRO-3) | `data`, `fsdp` |
| `tp` | `heads`, `kv_heads`, `mlp`, `vocab` over `tensor` (Megatron) | `data` |
| `fsdp_tp` | both | `data`, `fsdp` |

`tp` leaves the recurrent cells replicated: splitting their hidden state
would put a collective in every time step of the scan; `fsdp` splits them
(gathered once per step of training, not of time). A custom rule set is a
sequence of `(logical name, mesh axis or axes or None)` pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence

import jax

from kernels import mesh_axes
from rnn_transformer.parallel import axis_names as la
from rnn_transformer.parallel import mesh as mesh_lib

Rules = tuple[tuple[str, tuple[str, ...]], ...]

_FSDP = ((la.EMBED, (mesh_lib.FSDP,)), (la.HIDDEN, (mesh_lib.FSDP,)))
_TP = ((la.HEADS, (mesh_lib.TENSOR,)), (la.KV_HEADS, (mesh_lib.TENSOR,)),
       (la.MLP, (mesh_lib.TENSOR,)), (la.VOCAB, (mesh_lib.TENSOR,)))
# Parameter rules and the mesh axes each strategy needs.
STRATEGIES = {
    "dp": ((), (mesh_lib.DATA,)),
    "fsdp": (_FSDP, (mesh_lib.FSDP,)),
    "tp": (_TP, (mesh_lib.TENSOR,)),
    "fsdp_tp": (_FSDP + _TP, (mesh_lib.FSDP, mesh_lib.TENSOR)),
}
CUSTOM = "custom"
# The mesh axes a config gets when it names none (`config.mesh.axes`).
DEFAULT_MESH_AXES = {
    "dp": (mesh_lib.DATA,),
    "fsdp": (mesh_lib.FSDP,),
    "tp": (mesh_lib.DATA, mesh_lib.TENSOR),
    "fsdp_tp": (mesh_lib.FSDP, mesh_lib.TENSOR),
}


def batch_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
  """The mesh axes the batch splits over: `data` and `fsdp`, where present."""
  return tuple(a for a in mesh.axis_names
               if a in (mesh_lib.DATA, mesh_lib.FSDP))


def time_axes(mesh: jax.sharding.Mesh) -> tuple[str, ...]:
  """The mesh axes the time steps split over: `context`, where present."""
  return tuple(a for a in mesh.axis_names if a == mesh_lib.CONTEXT)


def check_rules(rules: Sequence, mesh: jax.sharding.Mesh,
                name: str = "sharding.rules") -> Rules:
  """`rules` as `((logical, (mesh axes...)), ...)`, validated against `mesh`."""
  if isinstance(rules, Mapping):
    rules = tuple(rules.items())
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise TypeError(f"{name}: expected (logical name, mesh axis) pairs, got "
                    f"{rules!r}")
  out = []
  for rule in rules:
    if (isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence)
        or len(rule) != 2):
      raise ValueError(f"{name}: expected (logical name, mesh axis or axes "
                       f"or None) pairs, got the entry {rule!r}")
    logical, target = rule
    if logical not in la.LOGICAL_AXES or logical == la.BATCH:
      raise ValueError(f"{name}: unknown logical axis {logical!r} in "
                       f"{rule!r}; expected one of "
                       f"{tuple(a for a in la.LOGICAL_AXES if a != la.BATCH)} "
                       f"(the batch always splits over data and fsdp)")
    targets = mesh_axes.axis_tuple(target)
    unknown = [t for t in targets if t not in mesh.axis_names]
    if unknown:
      raise ValueError(f"{name}: the rule {rule!r} names mesh axes "
                       f"{unknown} that the mesh {tuple(mesh.axis_names)} "
                       f"lacks")
    out.append((logical, targets))
  return tuple(out)


def strategy_rules(strategy: str, mesh: jax.sharding.Mesh,
                   rules: Sequence = ()) -> Rules:
  """The parameter rules of `strategy` on `mesh`, validated.

  Args:
    strategy: one of `STRATEGIES`, or "custom" with `rules`.
    mesh: its axes must include the strategy's (`fsdp` for "fsdp", ...);
      every mesh axis of size > 1 must be used by a rule or split the batch.
    rules: only with "custom": `(logical name, mesh axes)` pairs.
  """
  if strategy == CUSTOM:
    if not rules:
      raise ValueError("sharding.rules: strategy 'custom' needs rules, "
                       "(logical name, mesh axis) pairs; got none")
    out = check_rules(rules, mesh)
  else:
    if strategy not in STRATEGIES:
      raise ValueError(f"sharding.strategy: expected one of "
                       f"{tuple(STRATEGIES) + (CUSTOM,)}, got {strategy!r}")
    if rules:
      raise ValueError(f"sharding.rules: only strategy 'custom' takes rules; "
                       f"strategy {strategy!r} got {tuple(rules)!r}")
    out, needed = STRATEGIES[strategy]
    missing = [a for a in needed if a not in mesh.axis_names]
    if missing:
      raise ValueError(f"mesh.axes: strategy {strategy!r} needs the mesh "
                       f"axes {needed}, got {tuple(mesh.axis_names)} "
                       f"(e.g. --config.mesh.axes=\"{needed}\")")
  used = ({a for _, targets in out for a in targets} | set(batch_axes(mesh))
          | set(time_axes(mesh)))
  idle = [a for a in mesh.axis_names if a not in used and mesh.shape[a] > 1]
  if idle:
    raise ValueError(f"mesh.axes: the mesh axes {idle} (sizes "
                     f"{[mesh.shape[a] for a in idle]}) are used by no rule "
                     f"of strategy {strategy!r}; drop them or pick a "
                     f"strategy that shards over them")
  return out
