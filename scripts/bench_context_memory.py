r"""Per-device memory of one Transformer layer, forward and backward, with the
sequence split 1, 2, 4 and 8 ways (context parallelism, issue 26).

    python scripts/bench_context_memory.py --output_dir=docs/results/context_memory

Each row compiles `jax.grad` of one `TransformerBlock` (pre-LN, causal, ring
attention with `--implementation`) on a mesh of `c` devices along
`context`, the input `(batch, seq_len, model_dim)` split over time and the
parameters whole, and reads `compiled.memory_analysis()`: temp + arguments
+ outputs, the bytes ONE device's program reserves. Nothing runs, so the
figures hold on fake CPU devices; they are XLA:CPU's buffer assignment (a
GPU's differs in detail, not in how it scales). Writes a table, a JSON and
a figure (per-device memory against sequence length, one line per
context size), and the longest sequence within `--budget_mib` per device.
"""

import json
import os

from absl import app
from absl import flags

_DEVICES = flags.DEFINE_integer("devices", 8, "CPU devices to fake.")
_CONTEXTS = flags.DEFINE_list("contexts", ["1", "2", "4", "8"],
                              "Context-parallel degrees.")
_SEQ_LENS = flags.DEFINE_list(
    "seq_lens", ["1024", "2048", "4096", "8192", "16384", "32768"],
    "Sequence lengths (divisible by every context degree).")
_MODEL_DIM = flags.DEFINE_integer("model_dim", 256, "Residual width.")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads.")
_BATCH = flags.DEFINE_integer("batch", 1, "Batch.")
_IMPLEMENTATION = flags.DEFINE_enum(
    "implementation", "blockwise", ["blockwise", "reference"],
    "Attention per ring step (blockwise: O(n) memory).")
_BUDGET_MIB = flags.DEFINE_float("budget_mib", 512.0,
                                 "Per-device budget for the longest-sequence "
                                 "column.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write.")


def _memory(context: int, seq_len: int) -> int:
  import jax  # after XLA_FLAGS
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import rnn_transformer as rt
  from kernels import benchmark
  from rnn_transformer import parallel

  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:context]), ("context",))
  config = rt.ModelConfig(backbone="transformer", model_dim=_MODEL_DIM.value,
                          num_heads=_HEADS.value, num_layers=1,
                          vocab_size=None, output_size=1, max_len=seq_len,
                          attention_impl=_IMPLEMENTATION.value)
  block = rt.TransformerBlock(config, causal=True)
  x = jax.ShapeDtypeStruct((_BATCH.value, seq_len, _MODEL_DIM.value),
                           jnp.float32,
                           sharding=NamedSharding(mesh, P(None, "context")))
  params = jax.eval_shape(block.init, jax.random.key(0),
                          jnp.zeros((1, 8, _MODEL_DIM.value)))["params"]
  params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(
      p.shape, p.dtype, sharding=NamedSharding(mesh, P())), params)

  def loss(params, x):
    with parallel.activation_sharding(mesh, ()):
      return jnp.sum(block.apply({"params": params}, x) ** 2)

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
      params, x).compile()
  return benchmark.compiled_memory(compiled).total


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count="
                             f"{_DEVICES.value}")
  import jax
  contexts = [int(c) for c in _CONTEXTS.value]
  seq_lens = [int(s) for s in _SEQ_LENS.value]
  if max(contexts) > jax.device_count():
    raise app.UsageError(f"--contexts: {max(contexts)} exceeds the "
                         f"{jax.device_count()} devices")
  bad = [(s, c) for s in seq_lens for c in contexts if s % c]
  if bad:
    raise app.UsageError(f"--seq_lens: {bad[0][0]} is not divisible by "
                         f"context {bad[0][1]}")
  rows = {c: {s: _memory(c, s) for s in seq_lens} for c in contexts}
  budget = _BUDGET_MIB.value * 2**20
  mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
  lines = [f"Per-device memory (MiB) of one TransformerBlock forward+backward "
           f"(model_dim {_MODEL_DIM.value}, {_HEADS.value} heads, batch "
           f"{_BATCH.value}, float32, causal, {_IMPLEMENTATION.value} per ring "
           f"step); {jax.device_count()} x {jax.devices()[0].platform}, jax "
           f"{jax.__version__}; compile only.", "",
           "| context | " + " | ".join(f"n={s}" for s in seq_lens) +
           f" | longest n within {_BUDGET_MIB.value:g} MiB |",
           "| --- |" + " --- |" * (len(seq_lens) + 1)]
  longest = {}
  for c in contexts:
    fits = [s for s in seq_lens if rows[c][s] <= budget]
    longest[c] = max(fits) if fits else None
    lines.append(f"| {c} | " + " | ".join(mib(rows[c][s]) for s in seq_lens)
                 + f" | {longest[c] or 'none measured'} |")
  top = seq_lens[-1]
  ratios = {c: rows[contexts[0]][top] / rows[c][top] for c in contexts}
  lines += ["", f"At n = {top}: per-device memory falls "
            + ", ".join(f"{r:.2f}x at context {c}" for c, r in ratios.items())
            + f" (context {contexts[0]} = 1x)."]
  report = "\n".join(lines)
  print(report)
  if _OUTPUT_DIR.value:
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    with open(os.path.join(_OUTPUT_DIR.value, "context_memory.md"), "w",
              encoding="utf-8") as f:
      f.write(report + "\n")
    with open(os.path.join(_OUTPUT_DIR.value, "context_memory.json"), "w",
              encoding="utf-8") as f:
      json.dump({"bytes": {str(c): {str(s): b for s, b in r.items()}
                           for c, r in rows.items()},
                 "longest_within_budget": {str(c): n for c, n in
                                           longest.items()},
                 "budget_mib": _BUDGET_MIB.value}, f, indent=2)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6, 4))
    for c in contexts:
      axes.plot(seq_lens, [rows[c][s] / 2**20 for s in seq_lens], "o-",
                label=f"context {c}")
    axes.axhline(_BUDGET_MIB.value, color="gray", linestyle=":",
                 label=f"{_BUDGET_MIB.value:g} MiB budget")
    axes.set(xscale="log", yscale="log", xlabel="sequence length n",
             ylabel="MiB per device",
             title="One Transformer layer, forward+backward")
    axes.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(_OUTPUT_DIR.value, "context_memory.png"),
                   dpi=120)


if __name__ == "__main__":
  app.run(main)
