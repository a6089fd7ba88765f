r"""Collective traffic and memory of one training step per sharding strategy.

    python scripts/bench_sharding.py                      # 8 CPU devices
    python scripts/bench_sharding.py --strategies=dp,fsdp --sizes=small \
        --output=/tmp/bench_sharding.md                   # also writes .json

For each strategy (`dp`, `fsdp`, `tp`, `fsdp_tp`; mesh `(-1,)` over the
strategy's axis, `(-1, --tensor_size)` over (fsdp, tensor) for `fsdp_tp`)
and each model preset, builds the `Trainer`'s jitted train step, lowers it
on the abstract sharded state (`ShapeDtypeStruct`s: nothing is allocated,
no step is run) and compiles it. From the compiled, SPMD-partitioned HLO
(`compiled.as_text()`, the program ONE device runs) it sums, per kind of
collective, the bytes of every instruction:

* the bytes of an instruction are those of its larger side, the unsharded
  buffer: the result of an all-gather (the gathered parameter), the operand
  of a reduce-scatter (the full gradient going in), the operand (= result)
  of an all-reduce; for all-to-all and collective-permute both sides are
  equal. Tuple shapes (combined collectives) are summed element by element;
  dtypes by their width (pred 1 byte, bf16 2, f32/s32 4, ...).
* These are per-device buffer sizes, not bytes on the wire: a ring moves
  (n-1)/n of the buffer per device for an all-gather or reduce-scatter and
  2(n-1)/n for an all-reduce.
* An asynchronous pair (`all-gather-start` / `all-gather-done`, ...) counts
  once, at its `-start`, with the `-done`'s result as its result; a generic
  async wrapper (`*-start` with `calls=`) is not counted, the collective in
  its wrapped computation is. A collective inside a `while` body counts
  `known_trip_count` times (once, with a note, when XLA does not know it).
* XLA may rewrite collectives (an all-reduce into reduce-scatter plus
  all-gather, several into one tuple-shaped instruction, a reduce-scatter
  into an all-reduce and a slice, as XLA:CPU does) and GSPMD may move
  activations instead of parameters: the table shows what the compiled
  program does, the textbook columns what the strategy asks for. The JSON
  lists each step's largest collectives with the `op_name` (layer) that
  asked for them; --hlo_dir keeps the HLO.

Textbook values, from the parameter bytes `P*b` (per device after the
tensor split): `dp` all-reduces the gradients (`P*b`); `fsdp` all-gathers
every fsdp-split parameter twice (forward and backward, `2*P*b`) and
reduce-scatters its gradient (`P*b` in); parameters left whole (a dimension
not divisible) are all-reduced instead; tensor parallelism adds about 4
activation all-reduces per Transformer layer (2 forward, 2 backward) of
`batch_per_group * seq_len * model_dim * b`. Beside them: the per-device
memory of `compiled.memory_analysis()` ("n/a" where this jax or backend does
not report a field).

No wall time is measured: on CPU the devices are
`--xla_force_host_platform_device_count` fakes sharing the host's cores,
so times on them say nothing about scaling. On GPU/TPU the real devices
are used and --devices is ignored.
"""

from __future__ import annotations

import os
import re
import sys


def _force_host_devices(argv: list[str]) -> None:
  """Sets `--xla_force_host_platform_device_count` from --devices before jax
  starts, unless XLA_FLAGS already has a device count (the user's wins). It
  only adds fake CPU devices, so it is harmless where jax picks a GPU/TPU."""
  count = "8"
  for i, arg in enumerate(argv):
    if arg.startswith("--devices="):
      count = arg.split("=", 1)[1]
    elif arg == "--devices" and i + 1 < len(argv):
      count = argv[i + 1]
  flags_now = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags_now and count.isdigit():
    os.environ["XLA_FLAGS"] = (
        f"{flags_now} --xla_force_host_platform_device_count={count}").strip()


if __name__ == "__main__":
  _force_host_devices(sys.argv)

import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from typing import NamedTuple  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from kernels import benchmark  # noqa: E402
from rnn_transformer import parallel  # noqa: E402
from rnn_transformer.benchmarks import outputs  # noqa: E402
from rnn_transformer.training import metric_writer  # noqa: E402
from rnn_transformer.training import train  # noqa: E402
from rnn_transformer.training import train_config  # noqa: E402

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
         "collective-permute", "collective-broadcast", "ragged-all-to-all")

# Model presets: backbone and `config.model` overrides. Heads divisible by 8
# so that `tp` on 8 devices splits them.
PRESETS = {
    "tiny": ("transformer", dict(num_layers=2, model_dim=64, num_heads=8)),
    "small": ("transformer", dict(num_layers=4, model_dim=256, num_heads=8)),
    "medium": ("transformer", dict(num_layers=4, model_dim=1024,
                                   num_heads=16)),
    "lstm_tiny": ("lstm", dict(num_layers=1, model_dim=64)),
    "lstm": ("lstm", dict(num_layers=2, model_dim=512)),
}
MESHES = {  # strategy -> (mesh shape, mesh axes); None: the tensor size
    "dp": ((-1,), ("data",)),
    "fsdp": ((-1,), ("fsdp",)),
    "tp": ((-1,), ("tensor",)),
    "fsdp_tp": ((-1, None), ("fsdp", "tensor")),
}

_DEVICES = flags.DEFINE_integer(
    "devices", 8, "Fake CPU devices (read before jax starts; ignored when "
    "XLA_FLAGS already sets a device count, and on GPU/TPU).")
_STRATEGIES = flags.DEFINE_list("strategies", list(MESHES),
                                f"Among {tuple(MESHES)}.")
_SIZES = flags.DEFINE_list("sizes", ["small", "medium", "lstm"],
                           f"Model presets among {tuple(PRESETS)}.")
_TENSOR_SIZE = flags.DEFINE_integer(
    "tensor_size", 2, "Size of the tensor axis of fsdp_tp's mesh.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Global batch.")
_SEQ_LEN = flags.DEFINE_integer(
    "seq_len", 128, "Sequence length (copy task, vocabulary 10: only the "
    "shapes matter here).")
_OUTPUT = flags.DEFINE_string(
    "output", None, "Write the report here (Markdown) and the numbers to the "
    "same path with a .json suffix.")
_HLO_DIR = flags.DEFINE_string(
    "hlo_dir", None, "Also write each compiled step's HLO text here, as "
    "<strategy>_<size>.hlo.txt (to read where a collective comes from).")


# ---------------------------------------------------------------------------
# HLO text: collectives and their bytes.

_DTYPE_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8,
    "s16": 16, "u16": 16, "s32": 32, "u32": 32, "s64": 64, "u64": 64,
    "f16": 16, "bf16": 16, "f32": 32, "f64": 64, "c64": 64, "c128": 128,
    "token": 0, "tuple": 0,
}
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMMENT = re.compile(r"/\*.*?\*/")
_CALLED = re.compile(
    r"\b(body|condition|calls|to_apply|branch_computations|true_computation|"
    r"false_computation)=(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def dtype_bits(dtype: str) -> int:
  """Bits of one element: `f32` 32, `bf16` 16, `pred` 8, `f8e4m3fn` 8."""
  if dtype in _DTYPE_BITS:
    return _DTYPE_BITS[dtype]
  if dtype.startswith("f8"):
    return 8
  if dtype.startswith("f4") or dtype.startswith("f6"):
    return int(dtype[1])
  raise ValueError(f"unknown HLO element type {dtype!r}")


def shape_bytes(text: str) -> int:
  """Bytes of an HLO type: an array `f32[16,20]{1,0}` or a tuple of them
  (summed). `f32[]` is a scalar; `<=` marks a bounded dynamic dimension."""
  bits = 0
  for dtype, dims in _SHAPE.findall(_COMMENT.sub("", text)):
    sizes = [int(d.replace("<=", "")) for d in dims.split(",") if d.strip()]
    bits += dtype_bits(dtype) * math.prod(sizes)
  return bits // 8


def _split_type(rest: str) -> tuple[str, str]:
  """`rest` after `name = `: (its type, the text after the type)."""
  rest = rest.lstrip()
  if not rest.startswith("("):
    head, _, tail = rest.partition(" ")
    return head, tail
  depth = 0
  for i, char in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return rest[:i + 1], rest[i + 1:]
  return rest, ""


def _operands(call: str) -> tuple[str, str]:
  """`op(a, b), attrs` -> (text inside the parentheses, attributes)."""
  start = call.find("(")
  depth = 0
  for i in range(start, len(call)):
    depth += {"(": 1, ")": -1}.get(call[i], 0)
    if depth == 0:
      return call[start + 1:i], call[i + 1:]
  return call[start + 1:], ""


class Instruction(NamedTuple):
  name: str
  computation: str
  opcode: str
  result: str  # the HLO type text
  operands: list[str]  # names
  operand_types: list[str]  # types printed inline (newer printers), or ""
  attributes: str


def parse_hlo(text: str) -> tuple[dict[str, list[Instruction]], str | None]:
  """Instructions per computation of an HLO module's text, and the entry's
  name."""
  computations: dict[str, list[Instruction]] = {}
  entry = None
  current = None
  for raw in text.splitlines():
    line = _COMMENT.sub("", raw)
    header = _COMPUTATION.match(line)
    if header and "=" not in line.split("(", 1)[0]:
      current = header.group(1)
      computations[current] = []
      if line.lstrip().startswith("ENTRY"):
        entry = current
      continue
    if current is None:
      continue
    if line.strip() == "}":
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, rest = match.groups()
    result, tail = _split_type(rest)
    opcode_match = re.match(r"\s*([\w\-]+)\(", tail)
    if not opcode_match:
      continue
    inside, attributes = _operands(tail)
    operands, types = [], []
    for operand in _split_top_level(inside):
      found = re.search(r"%([\w.\-]+)\s*$", operand)
      if found:
        operands.append(found.group(1))
        types.append(operand[:found.start()].strip())
    computations[current].append(Instruction(
        name, current, opcode_match.group(1), result, operands, types,
        attributes))
  return computations, entry


def _split_top_level(text: str) -> list[str]:
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    if char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  if text[start:].strip():
    parts.append(text[start:])
  return parts


def _multipliers(computations: dict[str, list[Instruction]], entry: str | None
                 ) -> tuple[dict[str, int], bool]:
  """How many times each computation runs per execution of the entry (while
  bodies by their known trip count), and whether a trip count was unknown."""
  calls: dict[str, list[tuple[str, int]]] = defaultdict(list)
  unknown = False
  for name, instructions in computations.items():
    for inst in instructions:
      trip = _TRIP_COUNT.search(inst.attributes)
      for key, target in _CALLED.findall(inst.attributes):
        if key == "to_apply":
          continue  # a reducer, applied per element
        times = 1
        if inst.opcode == "while":
          times = int(trip.group(1)) if trip else 1
          unknown |= trip is None and key == "body"
        for callee in re.findall(r"%?([\w.\-]+)", target.strip("{}")):
          calls[name].append((callee, times))
  runs: dict[str, int] = defaultdict(int)
  roots = [entry] if entry else list(computations)

  def visit(name: str, times: int, depth: int = 0) -> None:
    runs[name] += times
    if depth < 64:
      for callee, factor in calls.get(name, ()):
        visit(callee, times * factor, depth + 1)

  for root in roots:
    visit(root, 1)
  return dict(runs), unknown


def collective_stats(text: str, top: int = 10) -> dict:
  """Per kind of collective: instructions and bytes per execution of the
  module (see the module docstring for the counting rules).

  Returns a dict: `kinds`, `{kind: {"count", "instructions",
  "result_bytes", "operand_bytes", "bytes"}}` for the kinds present
  (`count`: executions per step, a collective in a loop once per trip;
  `instructions`: in the HLO text; `bytes`: per execution the larger side,
  summed); `unknown_trip_count`, a bool;
  `largest`, the `top` instructions by bytes (kind, bytes, times, result
  type, the `op_name` of their metadata: which layer asked for them).
  """
  computations, entry = parse_hlo(text)
  types = {inst.name: inst.result for insts in computations.values()
           for inst in insts}
  done_of = {}  # start name -> its -done instruction's result type
  for insts in computations.values():
    for inst in insts:
      if inst.opcode.endswith("-done") and inst.operands:
        done_of[inst.operands[0]] = inst.result
  runs, unknown = _multipliers(computations, entry)
  stats: dict = {}
  largest = []
  for insts in computations.values():
    for inst in insts:
      kind, result = inst.opcode, inst.result
      if kind.endswith("-start"):
        if "calls=" in inst.attributes:
          continue  # generic async wrapper: its wrapped collective counts
        kind = kind[:-len("-start")]
        if inst.name in done_of:
          result = done_of[inst.name]
      if kind not in KINDS:
        continue
      operand_bytes = sum(
          shape_bytes(typ or types.get(name, ""))
          for name, typ in zip(inst.operands, inst.operand_types))
      result_bytes = shape_bytes(result)
      if inst.opcode.endswith("-start") and inst.name not in done_of:
        # No -done found: the start's tuple holds (operands, results, ...).
        result_bytes = max(result_bytes - operand_bytes, 0)
      times = runs.get(inst.computation, 0)
      entry_stats = stats.setdefault(kind, dict(
          count=0, instructions=0, result_bytes=0, operand_bytes=0, bytes=0))
      entry_stats["count"] += times
      entry_stats["instructions"] += 1
      entry_stats["result_bytes"] += times * result_bytes
      entry_stats["operand_bytes"] += times * operand_bytes
      entry_stats["bytes"] += times * max(result_bytes, operand_bytes)
      op_name = re.search(r'op_name="([^"]*)"', inst.attributes)
      largest.append(dict(
          kind=kind, bytes=times * max(result_bytes, operand_bytes),
          times=times, result=_COMMENT.sub("", result),
          op_name=op_name.group(1) if op_name else ""))
  largest.sort(key=lambda x: -x["bytes"])
  return dict(kinds=stats, unknown_trip_count=unknown, largest=largest[:top])


# ---------------------------------------------------------------------------
# Textbook traffic and memory.


def textbook(abstract_params, param_shardings, mesh, backbone: str,
             model, batch_size: int, seq_len: int) -> dict:
  """Per-device collective bytes the strategy asks for, from the parameter
  shardings (module docstring); `params` and `param_bytes` are global."""
  batch_axes = [a for a in mesh.axis_names if a in ("data", "fsdp")]
  batch_split = math.prod(mesh.shape[a] for a in batch_axes)
  out = {"all-gather": 0, "reduce-scatter": 0, "all-reduce": 0}
  params = param_bytes = 0
  leaves = zip(jax.tree.leaves(abstract_params),
               jax.tree.leaves(param_shardings))
  for leaf, sharding in leaves:
    size = math.prod(leaf.shape)
    nbytes = size * leaf.dtype.itemsize
    params += size
    param_bytes += nbytes
    used = [a for entry in sharding.spec if entry is not None
            for a in ((entry,) if isinstance(entry, str) else entry)]
    tensor_split = math.prod(mesh.shape[a] for a in used if a == "tensor")
    fsdp_split = math.prod(mesh.shape[a] for a in used if a == "fsdp")
    local = nbytes // tensor_split  # this device's tensor-parallel part
    if fsdp_split > 1:
      out["all-gather"] += 2 * local
      out["reduce-scatter"] += local
    elif batch_split > 1:
      out["all-reduce"] += local
  layers_term = 0
  tensor = mesh.shape.get("tensor", 1)
  if tensor > 1 and backbone == "transformer":
    activation = (batch_size // batch_split) * seq_len * model.model_dim * (
        _itemsize(model.dtype))
    layers_term = 4 * model.num_layers * activation
    out["all-reduce"] += layers_term
  return dict(bytes=out, params=params, param_bytes=param_bytes,
              tp_activation_bytes=layers_term)


def _itemsize(dtype) -> int:
  return np.dtype(dtype or "float32").itemsize


# Table labels of `kernels.benchmark.CompiledMemory`'s fields.
MEMORY_FIELDS = (("arguments", "arguments"), ("outputs", "outputs"),
                 ("aliased", "aliased"), ("temp", "temp"),
                 ("generated code", "generated_code"))


def memory(compiled) -> dict[str, int | None]:
  """Per-device bytes of `compiled` by table label; None where this backend
  reports no `memory_analysis()`."""
  stats = benchmark.compiled_memory(compiled)
  return {label: None if stats is None else getattr(stats, field)
          for label, field in MEMORY_FIELDS}


def human(nbytes: int | None) -> str:
  """`1536` -> `1.5 KiB`; None -> `n/a`."""
  if nbytes is None:
    return "n/a"
  value = float(nbytes)
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(value) < 1024 or unit == "GiB":
      return f"{int(value)} B" if unit == "B" else f"{value:.3g} {unit}"
    value /= 1024
  return f"{value:.3g} GiB"


# ---------------------------------------------------------------------------
# The benchmark.


def config_for(strategy: str, size: str, batch_size: int, seq_len: int,
               tensor_size: int):
  backbone, overrides = PRESETS[size]
  config = train_config.task_config("copy", backbone, delay=seq_len - 20,
                                    copy_len=10)
  for name, value in overrides.items():
    config.model[name] = value
  if backbone == "transformer":
    config.model.max_len = seq_len
  config.train.batch_size = batch_size
  config.train.progress_bar = False
  config.sharding.strategy = strategy
  shape, axes = MESHES[strategy]
  config.mesh.shape = tuple(tensor_size if s is None else s for s in shape)
  config.mesh.axes = axes
  return config


def measure(strategy: str, size: str, batch_size: int, seq_len: int,
            tensor_size: int, hlo_dir: str | None = None) -> dict:
  """Compiles one train step (no step runs) and reads its collectives."""
  config = config_for(strategy, size, batch_size, seq_len, tensor_size)
  with tempfile.TemporaryDirectory() as workdir:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always", parallel.ReplicatedDimensionWarning)
      trainer = train.Trainer(config, workdir)
    try:
      state = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          trainer.abstract_state, trainer.state_shardings)
      batch = jax.eval_shape(trainer.next_batch, 0)
      compiled = trainer.train_step.lower(state, batch,
                                          trainer.dropout_key).compile()
      expected = textbook(trainer.abstract_state.params,
                          trainer.state_shardings.params, trainer.mesh,
                          PRESETS[size][0], trainer.model_config, batch_size,
                          seq_len)
      hlo = compiled.as_text()
      measured = collective_stats(hlo)
      if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        with open(os.path.join(hlo_dir, f"{strategy}_{size}.hlo.txt"), "w",
                  encoding="utf-8") as f:
          f.write(hlo)
    finally:
      trainer.checkpoints.close()
  replicated = sorted({str(w.message).split(":", 1)[1].strip()
                       for w in caught if issubclass(
                           w.category, parallel.ReplicatedDimensionWarning)})
  return dict(strategy=strategy, size=size,
              mesh=dict(zip(trainer.mesh.axis_names,
                            (int(s) for s in trainer.mesh.devices.shape))),
              params=expected["params"], param_bytes=expected["param_bytes"],
              measured=measured["kinds"],
              unknown_trip_count=measured["unknown_trip_count"],
              largest=measured["largest"],
              textbook=expected["bytes"],
              tp_activation_bytes=expected["tp_activation_bytes"],
              memory=memory(compiled), replicated=replicated)


def _measured(row: dict, kind: str) -> int:
  return row["measured"].get(kind, {}).get("bytes", 0)


def _ratio(row: dict) -> str:
  """All measured collective bytes over all textbook bytes."""
  measured = sum(v["bytes"] for v in row["measured"].values())
  expected = sum(row["textbook"].values())
  if not expected:
    return "-" if not measured else "inf"
  return f"{measured / expected:.2f}"


def format_report(rows: list[dict], header: str) -> str:
  traffic = []
  for row in rows:
    others = [k for k in KINDS[3:] if k in row["measured"]]
    other = ", ".join(f"{k} {human(_measured(row, k))}" for k in others)
    counts = ", ".join(
        f"{k} x{v['count']}" + (f" ({v['instructions']} in HLO)" if
                                v["instructions"] != v["count"] else "")
        for k, v in sorted(row["measured"].items()))
    traffic.append([
        row["strategy"], row["size"],
        " x ".join(f"{a} {s}" for a, s in row["mesh"].items()),
        f"{row['params'] / 1e6:.3g}M ({human(row['param_bytes'])})",
        human(_measured(row, "all-gather")),
        human(row["textbook"]["all-gather"]),
        human(_measured(row, "reduce-scatter")),
        human(row["textbook"]["reduce-scatter"]),
        human(_measured(row, "all-reduce")),
        human(row["textbook"]["all-reduce"]),
        other or "-", _ratio(row), counts or "none"])
  mem = [[row["strategy"], row["size"]] +
         [human(row["memory"][label]) for label, _ in MEMORY_FIELDS]
         for row in rows]
  notes = []
  for row in rows:
    if row["unknown_trip_count"]:
      notes.append(f"{row['strategy']}/{row['size']}: a while loop of unknown "
                   f"trip count holds collectives, counted once")
    split_grads = row["textbook"]["reduce-scatter"]
    if split_grads and not _measured(row, "reduce-scatter"):
      notes.append(
          f"{row['strategy']}/{row['size']}: no reduce-scatter in the "
          f"compiled step; all-reduced {human(_measured(row, 'all-reduce'))}"
          f" against {human(split_grads)} of fsdp-split gradients (the "
          f"JSON's `largest` says what each big collective carries)")
    for message in row["replicated"]:
      notes.append(f"{row['strategy']}/{row['size']}: replicated, {message}")
  parts = [
      header,
      "Collective bytes per training step, PER DEVICE (the SPMD program one "
      "device runs): per instruction its unsharded side (all-gather result, "
      "reduce-scatter operand, all-reduce operand), not wire bytes (a ring "
      "sends (n-1)/n of it, twice for an all-reduce). Measured: summed from "
      "the compiled HLO; textbook: from the parameter bytes P*b (dp: P*b "
      "all-reduced; fsdp: 2*P*b all-gathered, P*b reduce-scattered; tensor "
      "parallelism: + 4 activation all-reduces per Transformer layer of "
      "batch_per_group*seq*model_dim*b). Instructions: executions per "
      "step (a collective in a while loop once per trip; async pairs once).",
      outputs.markdown_table(
          ["strategy", "size", "mesh", "params", "all-gather",
           "textbook", "reduce-scatter", "textbook", "all-reduce",
           "textbook", "other", "total / textbook", "instructions"],
          traffic),
      "Memory per device (`compiled.memory_analysis()`; n/a: not reported "
      "by this jax/backend).",
      outputs.markdown_table(["strategy", "size"] + [
          label for label, _ in MEMORY_FIELDS], mem)]
  if notes:
    parts.append("Notes:\n" + "\n".join(f"- {n}" for n in notes))
  return "\n\n".join(parts)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax's INFO lines per Trainer
    metric_writer.quiet_library_logs()
  unknown = [s for s in _STRATEGIES.value if s not in MESHES]
  if unknown:
    raise app.UsageError(f"--strategies: expected names among "
                         f"{tuple(MESHES)}, got {unknown}")
  unknown = [s for s in _SIZES.value if s not in PRESETS]
  if unknown:
    raise app.UsageError(f"--sizes: expected presets among "
                         f"{tuple(PRESETS)}, got {unknown}")
  if _SEQ_LEN.value < 21:
    raise app.UsageError(f"--seq_len: expected at least 21 (copy task: 10 "
                         f"symbols, a delay, 10 outputs), got {_SEQ_LEN.value}")
  presets = "; ".join(
      f"{name}: {PRESETS[name][0]} " + ", ".join(
          f"{k}={v}" for k, v in PRESETS[name][1].items())
      for name in _SIZES.value)
  note = ("" if jax.default_backend() != "cpu" else
          " (fake host devices sharing the CPU's cores)")
  header = (
      f"{outputs.device_description()}{note}; batch {_BATCH_SIZE.value}, "
      f"seq_len {_SEQ_LEN.value}, float32; {presets}.\n\n"
      "Train steps are only compiled, never run: no wall time is reported, "
      "since times on fake CPU devices say nothing about scaling.")
  rows = []
  for size in _SIZES.value:
    for strategy in _STRATEGIES.value:
      rows.append(measure(strategy, size, _BATCH_SIZE.value, _SEQ_LEN.value,
                          _TENSOR_SIZE.value, _HLO_DIR.value))
  report = format_report(rows, header)
  print(report)
  if _OUTPUT.value:
    directory = os.path.dirname(os.path.abspath(_OUTPUT.value))
    os.makedirs(directory, exist_ok=True)
    with open(_OUTPUT.value, "w", encoding="utf-8") as f:
      f.write(report + "\n")
    with open(os.path.splitext(_OUTPUT.value)[0] + ".json", "w",
              encoding="utf-8") as f:
      json.dump(dict(
          device=outputs.device_description(), jax=jax.__version__,
          date=datetime.date.today().isoformat(), batch_size=_BATCH_SIZE.value,
          seq_len=_SEQ_LEN.value, tensor_size=_TENSOR_SIZE.value,
          presets={k: PRESETS[k] for k in _SIZES.value}, rows=rows), f,
          indent=1)


if __name__ == "__main__":
  app.run(main)
