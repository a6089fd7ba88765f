"""Imports run one way: each layer of the package imports only layers below it.

Every `import` and `from ... import` in `rnn_transformer/` and `kernels/`
(function-level ones included) is parsed with `ast`, never executed, so the
rule holds for code paths no other test imports.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Lower rank = lower layer. A module may import modules of its own layer or
# of lower-ranked ones; two layers of one rank never import each other.
RANKS = {
    "rnn_transformer.validation": 0,
    "rnn_transformer.recurrences": 1,
    "rnn_transformer.analysis": 1,
    "rnn_transformer.parallel": 1,
    "kernels": 1,
    "rnn_transformer.layers": 2,
    "rnn_transformer.models": 3,
    "rnn_transformer.training": 4,
    "rnn_transformer.benchmarks": 5,
    "rnn_transformer.experiments": 6,
    "rnn_transformer": 7,  # the package's __init__: the public API
}

# Inside kernels: pure-JAX building blocks, then the Triton kernels, then the
# dispatch that picks an implementation, then the compile-gate tooling.
KERNEL_RANKS = {
    "kernels.masking": 0,
    "kernels.reference": 0,
    "kernels.blockwise": 0,
    "kernels.ring": 0,
    "kernels.mesh_axes": 0,
    "kernels.triton": 1,
    "kernels.backends": 2,
    "kernels.attention": 2,
    "kernels.benchmark": 2,
    "kernels": 2,  # the package's __init__
    "kernels.gate": 3,
}
# Keys of KERNEL_RANKS that form one layer (they may import each other).
KERNEL_LAYERS = {
    "kernels.masking": "base", "kernels.reference": "base",
    "kernels.blockwise": "base", "kernels.ring": "base",
    "kernels.mesh_axes": "base",
    "kernels.triton": "triton",
    "kernels.backends": "dispatch", "kernels.attention": "dispatch",
    "kernels.benchmark": "dispatch", "kernels": "dispatch",
    "kernels.gate": "gate",
}


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
  return {_module_name(p, root): p
          for package in ("rnn_transformer", "kernels")
          for p in sorted((root / package).rglob("*.py"))}


def _is_package(name: str, modules: dict[str, pathlib.Path]) -> bool:
  return modules[name].name == "__init__.py"


def _imports(name: str, modules: dict[str, pathlib.Path]) -> set[str]:
  """The project modules `name` imports (`from pkg import mod` names mod)."""
  tree = ast.parse(modules[name].read_text(encoding="utf-8"))
  package = name if _is_package(name, modules) else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
    else:
      continue
    for target in targets:
      while target and target not in modules:
        target = target.rpartition(".")[0]
      # A module's own packages are imported before it in any case.
      if target and not (name == target or name.startswith(target + ".")):
        found.add(target)
  return found


def _layer(name: str, ranks: dict[str, int]) -> str:
  """The longest key of `ranks` that is `name` or a package above it."""
  candidates = [k for k in ranks if name == k or name.startswith(k + ".")]
  assert candidates, f"{name} belongs to no layer: add it to the ranks"
  return max(candidates, key=len)


def _violations(ranks: dict[str, int], scope: str,
                root: pathlib.Path = ROOT,
                groups: dict[str, str] | None = None) -> list[str]:
  modules = _modules(root)
  bad = []
  for name in modules:
    if not (name == scope or name.startswith(scope + ".")):
      continue
    here = _layer(name, ranks)
    for target in _imports(name, modules):
      if not (target == scope or target.startswith(scope + ".")):
        continue
      there = _layer(target, ranks)
      same_layer = (there == here or groups is not None
                    and groups[there] == groups[here])
      if not same_layer and ranks[there] >= ranks[here]:
        bad.append(f"{name} ({here}, rank {ranks[here]}) imports {target} "
                   f"({there}, rank {ranks[there]})")
  return bad


def test_every_module_belongs_to_a_layer():
  for name in _modules():
    _layer(name, RANKS)
    if name.startswith("kernels"):
      _layer(name, KERNEL_RANKS)


def test_rnn_transformer_imports_point_down():
  bad = _violations(RANKS, "rnn_transformer")
  assert not bad, "\n".join(bad)


def test_kernels_never_import_rnn_transformer():
  modules = _modules()
  bad = [f"{name} imports {target}" for name in modules
         if name.startswith("kernels")
         for target in _imports(name, modules)
         if target.startswith("rnn_transformer")]
  assert not bad, "\n".join(bad)


def test_kernels_imports_point_down():
  bad = _violations(KERNEL_RANKS, "kernels", groups=KERNEL_LAYERS)
  assert not bad, "\n".join(bad)


def test_no_import_cycles():
  modules = _modules()
  graph = {name: _imports(name, modules) for name in modules}
  state: dict[str, int] = {}
  cycles = []

  def visit(node, path):
    state[node] = 1
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 2

  for name in sorted(graph):
    if name not in state:
      visit(name, [name])
  assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("source, rule", [
    ("from rnn_transformer.models import model_config\n",
     "rnn_transformer.layers"),
    ("import rnn_transformer.training.tasks\n", "rnn_transformer.recurrences"),
    ("from rnn_transformer.experiments import reporting\n",
     "rnn_transformer.benchmarks"),
    ("from rnn_transformer.analysis import spectral\n",
     "rnn_transformer.recurrences"),
    ("def f():\n  from kernels import backends\n", "kernels.triton"),
    ("from kernels.gate import compile_gate\n", "kernels"),
])
def test_the_checker_catches_an_upward_import(tmp_path, source, rule):
  """The checker itself can fail: a planted upward import is reported."""
  fake_root = tmp_path / "repo"
  for package in ("rnn_transformer", "kernels"):
    for path in (ROOT / package).rglob("*.py"):
      dest = fake_root / path.relative_to(ROOT)
      dest.parent.mkdir(parents=True, exist_ok=True)
      dest.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
  planted = fake_root / rule.replace(".", "/") / "planted.py"
  planted.write_text(source, encoding="utf-8")
  if rule.startswith("kernels"):
    bad = _violations(KERNEL_RANKS, "kernels", fake_root, KERNEL_LAYERS)
  else:
    bad = _violations(RANKS, "rnn_transformer", fake_root)
  assert any(line.startswith(f"{rule}.planted ") for line in bad), bad
