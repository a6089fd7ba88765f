"""The Triton block-size candidates of issue 28 and how a run compares them.

Each candidate is a set of `block_sizes.override` rows (`candidate_rows`);
`plan` lists the calls to time (batch = tokens // seq_len, causal and not,
forward and forward+backward), skipping a candidate where it does not
apply; `summary` tabulates TF/s with the ratio to cuDNN in the same run and
checks the issue's goals. `scripts/bench_kernel_rows.py` times the plan.

Candidates:
  triton          the table as it stands
  fwd_128x64      forward 128 x 64, 8 warps, 3 stages (the sm_90 row the
                  H100 leases measured)
  fwd_128x128     forward 128 x 128, 8 warps, 3 stages (Triton's tutorial)
  fwd_tma         the Hopper forward (TMA, warp-specialized) on its
                  `TMA_CANDIDATES` row; non-causal calls only
  bwd_fused       the one-kernel backward on its `FUSED_BWD_CANDIDATES` row
                  (forward+backward only)
  tma_fused       fwd_tma and bwd_fused together
  cudnn, xla      `jax.nn.dot_product_attention`'s implementations
"""

from __future__ import annotations

from kernels import benchmark
from kernels.triton import block_sizes

CANDIDATES = ("triton", "fwd_128x64", "fwd_128x128", "fwd_tma", "bwd_fused",
              "tma_fused", "cudnn", "xla")
_B = block_sizes.BlockSizes
_FORWARD_TILES = {"fwd_128x64": _B(128, 64, 8, 3),
                  "fwd_128x128": _B(128, 128, 8, 3)}
# Issue 28's goals (H100 figures of Triton's tutorial and this project's
# leases): (pass, seq_len, causal) -> TF/s, and the causal forward's ratio.
_GOALS_TFLOPS = {("fwd", 4096, False): 458.0, ("fwd+bwd", 4096, False): 400.0,
                 ("fwd+bwd", 4096, True): 330.0}
_GOAL_CAUSAL_FWD_RATIO = 0.9


def candidate_rows(name: str, head_dim: int, dtype: str, causal: bool,
                   pass_: str) -> dict | None:
  """The block-size override of a Triton candidate, or None where the
  candidate does not apply to the call (then it is not timed)."""
  rows = {}
  if name in _FORWARD_TILES:
    rows[("fwd", head_dim, dtype, causal)] = _FORWARD_TILES[name]
  optional = []
  if name in ("fwd_tma", "tma_fused"):
    optional.append(block_sizes.TMA_KERNEL)
  if name in ("bwd_fused", "tma_fused"):
    if pass_ != "fwd+bwd":
      return None
    optional.append(block_sizes.FUSED_BWD_KERNEL)
  for kernel in optional:
    row = block_sizes.candidate_row(kernel, head_dim, dtype, causal)
    if row is None:
      return None
    rows.update(row)
  return rows


def implementation(name: str) -> str:
  return name if name in ("cudnn", "xla") else "triton"


def plan(seq_lens, tokens, num_heads, head_dim, dtype, causal_flags, passes,
         candidates):
  """(candidate, benchmark.Row, override) for every applicable call."""
  out = []
  for seq in seq_lens:
    for causal in causal_flags:
      for pass_ in passes:
        for name in candidates:
          override = {}
          if implementation(name) == "triton" and name != "triton":
            override = candidate_rows(name, head_dim, dtype, causal, pass_)
            if override is None:
              continue
          out.append((name, benchmark.Row(
              implementation(name), pass_, seq, max(1, tokens // seq),
              num_heads, head_dim, causal, dtype), override))
  return out


def summary(rows) -> str:
  """Markdown: TF/s and x cuDNN per call and candidate, then the goals."""
  calls = sorted({(r.pass_, r.seq_len, r.batch, r.causal) for r in rows},
                 key=lambda c: (c[0], c[1], c[3]))
  present = {r.implementation for r in rows}
  names = [n for n in CANDIDATES if n in present]
  by = {(r.pass_, r.seq_len, r.causal, r.implementation): r for r in rows}
  lines = ["| pass | batch x seq | causal | " + " | ".join(names) + " |",
           "|" + " --- |" * (3 + len(names))]
  for pass_, seq, batch, causal in calls:
    cudnn = by.get((pass_, seq, causal, "cudnn"))
    cells = []
    for name in names:
      r = by.get((pass_, seq, causal, name))
      if r is None:
        cells.append("-")
      elif r.tflops is None:
        cells.append(r.status.split(":")[0])
      elif cudnn is not None and cudnn.tflops:
        cells.append(f"{r.tflops:.0f} ({r.tflops / cudnn.tflops:.2f}x)")
      else:
        cells.append(f"{r.tflops:.0f}")
    lines.append(f"| {pass_} | {batch} x {seq} | {causal} | "
                 + " | ".join(cells) + " |")
  lines += ["", "TF/s (x cuDNN in the same run). Goals (issue 28):"]
  for (pass_, seq, causal), goal in _GOALS_TFLOPS.items():
    best = _best_triton(by, pass_, seq, causal)
    lines.append(f"- {pass_} {seq} {'causal' if causal else 'non-causal'} "
                 f">= {goal:.0f} TF/s: " + _verdict(best, goal))
  best = _best_triton(by, "fwd", 4096, True)
  cudnn = by.get(("fwd", 4096, True, "cudnn"))
  if best and cudnn and cudnn.tflops:
    ratio = best[1].tflops / cudnn.tflops
    lines.append(f"- causal forward 4096 >= {_GOAL_CAUSAL_FWD_RATIO}x cuDNN: "
                 f"{'met' if ratio >= _GOAL_CAUSAL_FWD_RATIO else 'not met'}"
                 f" ({best[0]}: {ratio:.2f}x)")
  else:
    lines.append("- causal forward 4096 vs cuDNN: not measured")
  return "\n".join(lines) + "\n"


def _best_triton(by, pass_, seq, causal):
  timed = [(name, r) for (p, s, c, name), r in by.items()
           if (p, s, c) == (pass_, seq, causal) and r.tflops
           and implementation(name) == "triton"]
  return max(timed, key=lambda t: t[1].tflops, default=None)


def _verdict(best, goal: float) -> str:
  if best is None:
    return "not measured"
  name, row = best
  return (f"{'met' if row.tflops >= goal else 'not met'} ({name}: "
          f"{row.tflops:.0f} TF/s)")
