"""The sequential depth of a traced program: its longest chain of operations,
and the loop iterations it runs one after another.

`critical_path_length(jaxpr)` counts primitive applications along the longest
chain of data dependencies, a hardware-independent measure of how much of a
program must run one step after another:

* a primitive counts 1;
* a `scan` counts `length` times its body's depth (iterations are chained);
* a `while` counts one pass of its condition and body (no static trip count);
* a `cond` counts 1 plus its deepest branch;
* a call (`pjit`, `custom_jvp_call`, `custom_vjp_call`, `remat`, ...)
  counts its callee's depth.

A `lax.scan` over T steps is O(T) deep, `lax.associative_scan` O(log T)
(Blelloch's up- and down-sweep, unrolled into slices), attention O(1).
"""

from __future__ import annotations

from typing import Any


def sub_jaxprs(params: dict[str, Any]) -> list[Any]:
  """The jaxprs nested in an equation's params (scan/cond/pjit bodies)."""
  found = []
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, "eqns") or hasattr(getattr(item, "jaxpr", None),
                                           "eqns"):
        found.append(item)
  return found


def _is_literal(var: Any) -> bool:
  return hasattr(var, "val")


def _equation_depth(eqn: Any) -> int:
  name = eqn.primitive.name
  subs = [critical_path_length(sub) for sub in sub_jaxprs(eqn.params)]
  if name == "scan":
    return eqn.params["length"] * max([1, *subs])
  if name == "while":
    return max(1, sum(subs))
  if name == "cond":
    return 1 + max(subs, default=0)
  if subs:
    return max(subs)
  return 1


def critical_path_length(jaxpr: Any) -> int:
  """Longest dependency chain of `jaxpr`, in primitive applications.

  Args:
    jaxpr: a `Jaxpr` or `ClosedJaxpr`, e.g. `jax.make_jaxpr(f)(*args)` or
      `jax.jit(f).trace(*args).jaxpr`.

  Returns:
    The depth of the deepest output (0 for a program that only forwards its
    inputs).
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  depth: dict[Any, int] = {}

  def of(var):
    return 0 if _is_literal(var) else depth.get(var, 0)

  for eqn in jaxpr.eqns:
    start = max((of(v) for v in eqn.invars), default=0)
    end = start + _equation_depth(eqn)
    for out in eqn.outvars:
      depth[out] = end
  return max((of(v) for v in jaxpr.outvars), default=0)


def sequential_steps(jaxpr: Any) -> int:
  """Loop iterations that must run one after another in `jaxpr`.

  Each `scan` contributes `length` times the steps of its body (at least 1);
  a `cond` the most of its branches; other equations the steps of the
  sub-jaxprs they call (`pjit`, `custom_vjp_call`, `remat`, ...). A `while`
  loop has no static trip count and counts as one pass of its body. Neither
  the models here nor `kernels.attention` use one.

  Args:
    jaxpr: a `Jaxpr` or `ClosedJaxpr`, e.g. `jax.jit(f).trace(*args).jaxpr`.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    inner = [sequential_steps(sub) for sub in sub_jaxprs(eqn.params)]
    if eqn.primitive.name == "scan":
      total += eqn.params["length"] * max([1, *inner])
    elif eqn.primitive.name == "cond":
      total += max(inner, default=0)
    else:
      total += sum(inner)
  return total
