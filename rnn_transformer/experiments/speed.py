r"""Forward+backward time against sequence length: recurrent scan vs Transformer.

The seed's chapter 1 says "RNNs are slow because they are sequential", and its
chapter 3 table puts numbers on it: per layer of width d over n steps, a
recurrent layer does O(n d^2) work in O(n) sequential operations, self-
attention O(n^2 d) work in O(1) sequential operations.

This experiment builds one layer of each backbone (`build_backbone` with
`num_layers=1`: an RNN/LSTM/GRU `lax.scan`, or a Transformer block with the
automatically chosen attention implementation) at one width and batch, and
for each sequence length n measures

* the median time of one jitted forward+backward (`jax.grad` of the mean
  square of the `(batch, n, d)` features w.r.t. parameters and inputs), after
  compilation, every backbone at every n timed round-robin so that all of
  them share the machine's background load;
* the sequential steps of that program: the scan iterations in its jaxpr
  (nested scans multiply), a count that does not depend on the hardware;
* its depth, the longest chain of dependent operations
  (`program_depth.critical_path_length`).

"RNNs are slow", revisited: recurrences linear in h ("mingru", "minlstm",
"lru") run over time with `config.scan_method` (associative by default: no
loop over n, O(log n) depth), so the sequential part the seed blames is gone
from the program; whether that makes them faster depends on the hardware
having parallel units to spare.

    python scripts/experiment.py --config=configs/experiments/speed.py:tiny \
        --output_dir=/tmp/experiments
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kernels import backends
from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import timing
from rnn_transformer.recurrences import newton_recurrence
from rnn_transformer.analysis import program_depth
from rnn_transformer.benchmarks import recurrent_benchmark
from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.experiments import progress
from rnn_transformer.experiments import reporting
from rnn_transformer.models.model_config import BACKBONES
from rnn_transformer.models.model_config import LINEAR_BACKBONES
from rnn_transformer.models.model_config import NEWTON_BACKBONES
from rnn_transformer.models.model_config import ModelConfig

NAME = "speed"

RECURRENT = ("rnn", "lstm", "gru")
PARALLEL = LINEAR_BACKBONES  # recurrences linear in h, scanned in parallel
NEWTON_SUFFIX = "-newton"  # a classic cell evaluated by Newton iterations

# Verdict thresholds. Timing ratios within SLOWER_MARGIN of 1 are treated as a
# tie (shared-machine noise); slopes are log-log exponents of time against n.
SLOWER_MARGIN = 1.1
LINEAR_SLOPE = (0.75, 1.25)  # recurrent time ~ n
QUADRATIC_SLOPE = 1.75  # Transformer end slope at or above: attention dominates
SUBQUADRATIC_SLOPE = 1.25  # at or below: the O(n d^2) terms still dominate
LOG_DEPTH_SLOPE = 0.5  # depth slope at or below: sub-linear, O(log n)-like


def get_config(scale: str = "default") -> ml_collections.ConfigDict:
  """Sizes per scale: "tiny" (seconds), "default" (minutes, CPU), "large"."""
  reporting.check_scale(scale)
  config = ml_collections.ConfigDict()
  config.experiment = NAME
  config.backbones = ("rnn", "lstm", "gru", "mingru", "lru",
                      "transformer")  # one layer each
  config.scan_method = "associative"  # of mingru/minlstm/lru (linear_scan)
  # Classic cells also evaluated by Newton iterations (DEER, RNN(evaluation=
  # "newton")), labelled "<backbone>-newton"; () for none.
  config.newton_backbones = ("gru",)
  config.newton_method = "quasi"  # "full", "quasi" or "damped"
  config.seq_lens = (64, 128, 256, 512, 1024)  # n, ascending
  config.batch = 4  # sequences per forward+backward
  config.model_dim = 128  # width d of every backbone (hidden size, residual)
  config.num_heads = 4  # Transformer heads (head_dim = model_dim / num_heads)
  config.attention_impl = "auto"  # "auto": kernels.attention picks per call
  config.dtype = "float32"  # compute dtype
  config.warmup = 1  # untimed calls after compilation
  config.iters = 10  # timed rounds over all backbones and lengths; medians
  if scale == "tiny":  # compilation dominates: two backbones, two lengths
    config.backbones = ("rnn", "mingru", "transformer")
    config.newton_backbones = ("rnn",)
    config.seq_lens = (8, 32)
    config.batch, config.model_dim, config.num_heads = 2, 16, 2
    config.iters = 2
  elif scale == "large":  # a GPU: longer sequences, a realistic width
    config.seq_lens = (256, 512, 1024, 2048, 4096, 8192, 16384)
    config.batch, config.model_dim, config.num_heads = 8, 512, 8
    # float32 Triton attention makes three tf32 passes per dot while XLA's
    # matmuls make one on recent GPUs: bfloat16 puts every backbone on equal
    # tensor-core terms.
    config.dtype = "bfloat16"
    config.warmup, config.iters = 2, 10
  return config


def _model_config(config: ml_collections.ConfigDict, backbone: str,
                  newton: bool = False) -> ModelConfig:
  fields = dict(backbone=backbone, num_layers=1, model_dim=config.model_dim,
                dtype=jnp.dtype(config.dtype))
  if backbone == "transformer":
    fields.update(num_heads=config.num_heads, max_len=max(config.seq_lens),
                  attention_impl=(None if config.attention_impl == "auto"
                                  else config.attention_impl))
  if backbone in PARALLEL:
    fields.update(scan_method=config.scan_method)
  if newton:
    fields.update(evaluation="newton", newton_method=config.newton_method)
  return ModelConfig(**fields)


def labels(config: ml_collections.ConfigDict) -> dict[str, ModelConfig]:
  """Every timed model: `config.backbones` by name, then each of
  `config.newton_backbones` evaluated by Newton as "<backbone>-newton"."""
  unknown = sorted(set(config.backbones) - set(BACKBONES))
  if unknown or not config.backbones:
    raise ValueError(f"config.backbones: expected names from {BACKBONES}, "
                     f"got {tuple(config.backbones)}")
  unknown = sorted(set(config.newton_backbones) - set(NEWTON_BACKBONES))
  if unknown:
    raise ValueError(f"config.newton_backbones: expected names from "
                     f"{NEWTON_BACKBONES}, got {tuple(config.newton_backbones)}")
  models = {b: _model_config(config, b) for b in config.backbones}
  models.update({f"{b}{NEWTON_SUFFIX}": _model_config(config, b, newton=True)
                 for b in config.newton_backbones})
  return models


def attention_used(config: ml_collections.ConfigDict, seq_len: int) -> str:
  """The implementation `kernels.attention` runs for the Transformer here."""
  if config.attention_impl != "auto":
    return config.attention_impl
  heads = config.num_heads
  call = backends.AttentionCall(
      config.batch, seq_len, seq_len, heads, heads,
      config.model_dim // heads, np.dtype(config.dtype), True, False, False,
      jax.default_backend())
  return backends.select(call).name


def _inputs(model: Any, batch: int, seq_len: int) -> jax.Array:
  # Drawn on the host: jax.random would compile a program per shape.
  return jnp.asarray(np.random.default_rng(seq_len).standard_normal(
      (batch, seq_len, model.config.model_dim)), model.config.dtype)


def newton_iterations(model: Any, params: Any, batch: int,
                      seq_len: int) -> str:
  """The Newton iterations of a forward pass, per layer, e.g. "14"; or
  "fell back" when a layer did not converge and ran the scan."""
  _, state = jax.jit(lambda p, x: model.apply(
      p, x, mutable=["intermediates"]))(params, _inputs(model, batch, seq_len))
  infos = jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, newton_recurrence.NewtonInfo))
  return "/".join("fell back" if bool(i.fell_back) else str(int(i.iterations))
                  for i in infos)


def _compiled_step(model: Any, params: Any, batch: int, seq_len: int):
  """(zero-argument compiled call, its sequential steps, its depth)."""
  x = _inputs(model, batch, seq_len)
  step = recurrent_benchmark.forward_backward(
      lambda params, x: model.apply(params, x).features)
  traced = step.trace(params, x)
  compiled = traced.lower().compile()
  return ((lambda: compiled(params, x)), program_depth.sequential_steps(traced.jaxpr),
          program_depth.critical_path_length(traced.jaxpr))


def measure(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """One row per backbone and sequence length: ms, us/token, steps, depth."""
  model_configs = labels(config)
  outputs.check_positive(config, "batch", "model_dim", "num_heads", "iters")
  lens = list(config.seq_lens)
  if len(lens) < 2 or lens != sorted(set(lens)) or lens[0] < 1:
    raise ValueError(f"config.seq_lens: expected at least two ascending "
                     f"positive lengths, got {tuple(lens)}")
  models = {b: build_backbone(c) for b, c in model_configs.items()}
  # No parameter depends on n (sinusoidal positions), so one initialisation
  # per backbone serves every length.
  x = jnp.zeros((config.batch, lens[0], config.model_dim), config.dtype)
  params = {b: jax.jit(m.init)(jax.random.key(0), x)
            for b, m in models.items()}
  calls, steps, depth = {}, {}, {}
  grid = [f"{backbone} n={seq_len}" for seq_len in lens for backbone in models]
  for label in progress.cells(f"{NAME} compile", grid):
    backbone, seq_len = label.split(" n=")
    calls[label], steps[label], depth[label] = _compiled_step(
        models[backbone], params[backbone], config.batch, int(seq_len))
  print(f"{NAME}: timing {len(calls)} compiled calls in interleaved rounds "
        f"({config.warmup} warm-up + {config.iters} each)", flush=True)
  # Every backbone at every length in one round-robin: a change of the
  # machine's background load during the run shifts all curves alike instead
  # of bending the slopes.
  times = timing.interleaved_median_seconds(
      calls, warmup=config.warmup, iters=config.iters,
      rounds=lambda labels: progress.cells(f"{NAME} timing", labels))
  rows = []
  for seq_len in lens:
    for backbone in models:
      label = f"{backbone} n={seq_len}"
      rows.append(dict(
          backbone=backbone, seq_len=seq_len, ms=1e3 * times[label],
          us_per_token=1e6 * times[label] / (config.batch * seq_len),
          sequential_steps=steps[label], depth=depth[label],
          attention=(attention_used(config, seq_len)
                     if backbone == "transformer" else ""),
          newton_iterations=(newton_iterations(
              models[backbone], params[backbone], config.batch, seq_len)
                             if backbone.endswith(NEWTON_SUFFIX) else "")))
  return rows


def _series(rows: Sequence[dict[str, Any]], backbone: str, key: str
            ) -> tuple[np.ndarray, np.ndarray]:
  mine = [r for r in rows if r["backbone"] == backbone]
  return (np.array([r["seq_len"] for r in mine], np.float64),
          np.array([r[key] for r in mine], np.float64))


def _upper_half(num_lens: int) -> int:
  return max(2, (num_lens + 1) // 2)


def fit_slopes(rows: Sequence[dict[str, Any]],
               backbones: Sequence[str]) -> dict[str, float]:
  """`<backbone>_slope` over all lengths, `<backbone>_end_slope` over the
  longer half of them (at least two): the asymptotic regime the seed's O()
  statements describe."""
  figures = {}
  for backbone in backbones:
    n, ms = _series(rows, backbone, "ms")
    k = _upper_half(len(n))
    figures[f"{backbone}_slope"] = outputs.loglog_slope(n, ms)
    figures[f"{backbone}_end_slope"] = outputs.loglog_slope(n[-k:], ms[-k:])
    if rows and "depth" in rows[0]:
      _, depth = _series(rows, backbone, "depth")
      figures[f"{backbone}_depth_slope"] = outputs.loglog_slope(
          n, np.maximum(depth, 1.0))
  return figures


def _hardware() -> str:
  if jax.default_backend() == "cpu":
    return f"{len(os.sched_getaffinity(0))} CPU cores"
  return outputs.device_description()


def claims(rows: Sequence[dict[str, Any]], figures: dict[str, float],
           backbones: Sequence[str]) -> list[reporting.Claim]:
  """The seed's claims with verdicts computed from the measurement."""
  recurrent = [b for b in backbones if b in RECURRENT]
  longest = max(r["seq_len"] for r in rows)
  at_longest = {r["backbone"]: r for r in rows if r["seq_len"] == longest}
  has_transformer = "transformer" in backbones
  result = []

  text = ("RNNs are slow because they are sequential: at equal width and "
          "batch a recurrent layer's forward+backward is slower than a "
          "Transformer layer's")
  if recurrent and has_transformer:
    t = at_longest["transformer"]["ms"]
    ratios = {b: at_longest[b]["ms"] / t for b in recurrent}
    slower = [b for b, r in ratios.items() if r >= SLOWER_MARGIN]
    faster = [b for b, r in ratios.items() if r <= 1 / SLOWER_MARGIN]
    verdict = ("supported" if len(slower) == len(recurrent) else
               "not supported" if len(faster) == len(recurrent) else
               "partly supported")
    result.append(reporting.Claim(text, verdict, (
        f"At n={longest}: Transformer {t:.1f} ms, " + ", ".join(
            f"{b} {at_longest[b]['ms']:.1f} ms ({ratios[b]:.2f}x)"
            for b in recurrent) +
        f" (recurrent / Transformer; a tie within {SLOWER_MARGIN:g}x). "
        f"Measured on {_hardware()}: all the parallel hardware the "
        f"Transformer's O(1)-sequential work can spread over.")))
  else:
    result.append(reporting.Claim(text, "not measured",
                                  "needs a recurrent backbone and the "
                                  "Transformer in config.backbones"))

  text = ("a recurrent layer needs O(n) sequential operations, self-attention "
          "O(1)")
  lens = sorted({r["seq_len"] for r in rows})
  steps = {b: [r["sequential_steps"] for r in rows if r["backbone"] == b]
           for b in backbones}
  linear = {b: steps[b][0] > 0 and all(
      s * lens[0] == steps[b][0] * n for s, n in zip(steps[b], lens))
            for b in recurrent}
  constant = has_transformer and len(set(steps["transformer"])) == 1
  checks = list(linear.values()) + ([constant] if has_transformer else [])
  verdict = ("supported" if checks and all(checks) else
             "not supported" if not any(checks) else "partly supported")
  result.append(reporting.Claim(text, verdict, (
      f"Scan iterations in the compiled forward+backward at n={lens[0]}.."
      f"{lens[-1]}: " + "; ".join(
          f"{b} {steps[b][0]}..{steps[b][-1]}" for b in backbones) +
      " (proportional to n: " + ", ".join(
          f"{b} {'yes' if v else 'no'}" for b, v in linear.items()) +
      (f"; Transformer constant: {'yes' if constant else 'no'}, attention "
       f"{'/'.join(sorted({r['attention'] for r in rows if r['attention']}))}"
       if has_transformer else "") + ")")))

  text = "a recurrent layer's time grows linearly in n (O(n d^2) work)"
  if recurrent:
    low, high = LINEAR_SLOPE
    # The longer half, as for the Transformer: fixed per-call overhead bends
    # the short end of every curve below its asymptotic slope.
    inside = [b for b in recurrent
              if low <= figures[f"{b}_end_slope"] <= high]
    verdict = ("supported" if len(inside) == len(recurrent) else
               "not supported" if not inside else "partly supported")
    result.append(reporting.Claim(text, verdict, (
        "Log-log slopes of time against n over the longer half of the "
        "lengths: " + ", ".join(
            f"{b} {figures[f'{b}_end_slope']:.2f}" for b in recurrent) +
        f" (linear: within [{low:g}, {high:g}])")))
  else:
    result.append(reporting.Claim(text, "not measured",
                                  "no recurrent backbone in config.backbones"))

  text = "self-attention's work grows as n^2 (O(n^2 d))"
  if has_transformer:
    end = figures["transformer_end_slope"]
    verdict = ("supported" if end >= QUADRATIC_SLOPE else
               "not supported" if end <= SUBQUADRATIC_SLOPE else
               "partly supported")
    result.append(reporting.Claim(text, verdict, (
        f"Transformer slope {end:.2f} over n={lens[-_upper_half(len(lens))]}"
        f"..{lens[-1]} "
        f"({figures['transformer_slope']:.2f} over all lengths); quadratic at "
        f">= {QUADRATIC_SLOPE:g}, <= {SUBQUADRATIC_SLOPE:g} means the "
        f"O(n d^2) projections and feed-forward still dominate")))
  else:
    result.append(reporting.Claim(text, "not measured",
                                  "no Transformer in config.backbones"))
  return (result + _parallel_claims(rows, figures, backbones) +
          _newton_claims(rows, backbones))


def _newton_claims(rows: Sequence[dict[str, Any]],
                   backbones: Sequence[str]) -> list[reporting.Claim]:
  """The classic cells evaluated in parallel by Newton against their scan."""
  text = ("RNNs are slow, revisited: a classic cell evaluated in parallel "
          "over time by Newton iterations (DEER) trains faster than its "
          "sequential scan at the longest n")
  pairs = [(b, b[:-len(NEWTON_SUFFIX)]) for b in backbones
           if b.endswith(NEWTON_SUFFIX) and b[:-len(NEWTON_SUFFIX)] in
           backbones]
  if not pairs:
    return [reporting.Claim(text, "not measured", (
        "needs a backbone in config.newton_backbones that is also in "
        "config.backbones"))]
  longest = max(r["seq_len"] for r in rows)
  by = {(r["backbone"], r["seq_len"]): r for r in rows}
  ratios = {newton: by[scan, longest]["ms"] / by[newton, longest]["ms"]
            for newton, scan in pairs}
  faster = [b for b, r in ratios.items() if r >= SLOWER_MARGIN]
  verdict = ("supported" if len(faster) == len(pairs) else
             "not supported" if not faster else "partly supported")
  lens = sorted({r["seq_len"] for r in rows})
  return [reporting.Claim(text, verdict, "; ".join(
      f"{scan}: scan / Newton time " + ", ".join(
          f"{by[scan, n]['ms'] / by[newton, n]['ms']:.2f}x at n={n} "
          f"({by[newton, n]['newton_iterations']} iterations)" for n in lens)
      for newton, scan in pairs) + (
          f" (faster: >= {SLOWER_MARGIN:g}x). Measured on {_hardware()}: "
          f"each iteration is a whole-sequence parallel scan, so the scan "
          f"wins unless parallel units outnumber the iterations."))]


def _parallel_claims(rows: Sequence[dict[str, Any]],
                     figures: dict[str, float],
                     backbones: Sequence[str]) -> list[reporting.Claim]:
  """"RNNs are slow", revisited with recurrences linear in h."""
  parallel = [b for b in backbones if b in PARALLEL]
  recurrent = [b for b in backbones if b in RECURRENT]
  result = []
  text = ("a recurrence linear in h (minGRU, minLSTM, LRU) runs over time "
          "without a loop over n: its depth grows as O(log n)")
  if parallel:
    steps = {b: [r["sequential_steps"] for r in rows if r["backbone"] == b]
             for b in parallel}
    depth = {b: [r["depth"] for r in rows if r["backbone"] == b]
             for b in backbones}
    ok = [b for b in parallel if not any(steps[b]) and
          figures[f"{b}_depth_slope"] <= LOG_DEPTH_SLOPE]
    verdict = ("supported" if len(ok) == len(parallel) else
               "not supported" if not ok else "partly supported")
    result.append(reporting.Claim(text, verdict, (
        "Compiled forward+backward, scan iterations and depth (longest "
        "chain of operations) from the shortest to the longest n: " +
        "; ".join(f"{b} {steps[b][0]}..{steps[b][-1]} iterations, depth "
                  f"{depth[b][0]}..{depth[b][-1]} (log-log slope "
                  f"{figures[f'{b}_depth_slope']:.2f})" for b in parallel) +
        "; for comparison " + "; ".join(
            f"{b} depth {depth[b][0]}..{depth[b][-1]} (slope "
            f"{figures[f'{b}_depth_slope']:.2f})"
            for b in backbones if b not in parallel) +
        f". O(log n): no scan and a depth slope <= {LOG_DEPTH_SLOPE:g}.")))
  else:
    result.append(reporting.Claim(text, "not measured",
                                  f"no backbone of {PARALLEL} in "
                                  f"config.backbones"))

  text = ("RNNs are slow, revisited: at the longest n a recurrence linear in "
          "h trains faster than the classic recurrent layers")
  if parallel and recurrent:
    longest = max(r["seq_len"] for r in rows)
    ms = {r["backbone"]: r["ms"] for r in rows if r["seq_len"] == longest}
    pairs = [(p, c, ms[c] / ms[p]) for p in parallel for c in recurrent]
    faster = [pair for pair in pairs if pair[2] >= SLOWER_MARGIN]
    verdict = ("supported" if len(faster) == len(pairs) else
               "not supported" if not faster else "partly supported")
    result.append(reporting.Claim(text, verdict, (
        f"At n={longest}: " + ", ".join(
            f"{b} {ms[b]:.1f} ms" for b in backbones) +
        "; classic / parallel: " + ", ".join(
            f"{c}/{p} {r:.2f}x" for p, c, r in pairs) +
        f" (faster: >= {SLOWER_MARGIN:g}x). Measured on {_hardware()}.")))
  else:
    result.append(reporting.Claim(text, "not measured", (
        "needs a classic recurrent backbone and one of "
        f"{PARALLEL} in config.backbones")))
  return result


def plot(rows: Sequence[dict[str, Any]], config: ml_collections.ConfigDict,
         output_dir: str) -> str:
  """Time and time per token against n, log-log, one line per backbone."""
  plt = outputs.pyplot()
  fig, (ax_time, ax_token) = plt.subplots(1, 2, figsize=(11, 4.2))
  for backbone in labels(config):
    n, ms = _series(rows, backbone, "ms")
    _, per_token = _series(rows, backbone, "us_per_token")
    label = backbone if backbone != "transformer" else "Transformer"
    ax_time.plot(n, ms, "o-", label=label)
    ax_token.plot(n, per_token, "o-", label=label)
  n = np.array(sorted({r["seq_len"] for r in rows}), np.float64)
  anchor = min(r["ms"] for r in rows if r["seq_len"] == n[0])
  for power, style in ((1, ":"), (2, "--")):
    ax_time.plot(n, anchor * (n / n[0]) ** power, style, color="gray",
                 label=f"slope {power}")
  ax_time.set_ylabel("forward+backward time (ms)")
  ax_token.set_ylabel("time per token (us)")
  for ax in (ax_time, ax_token):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n (tokens)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle(f"One layer, width {config.model_dim}, batch {config.batch}, "
               f"{config.dtype}: forward+backward after compilation\n"
               f"{outputs.device_description()}")
  return outputs.save_figure(fig, output_dir, "speed")


def run(config: ml_collections.ConfigDict, output_dir: str) -> reporting.Report:
  """Measures, writes `speed.{png,csv,md}` and the summary; see module doc."""
  rows = measure(config)
  names = list(labels(config))
  figures = fit_slopes(rows, names)
  longest = max(config.seq_lens)
  ms = {r["backbone"]: r["ms"] for r in rows if r["seq_len"] == longest}
  for backbone in names:
    figures[f"{backbone}_ms_at_{longest}"] = ms[backbone]
  if "transformer" in ms:
    for backbone in RECURRENT + PARALLEL:
      if backbone in ms:
        figures[f"{backbone}_over_transformer_at_{longest}"] = (
            ms[backbone] / ms["transformer"])
  report = reporting.Report("speed", outputs.device_description(), figures,
                            claims(rows, figures, names))
  report.files += outputs.write_table(
      output_dir, "speed",
      ["backbone", "seq_len", "ms", "us_per_token", "sequential_steps",
       "depth", "attention", "newton_iterations"],
      [[r["backbone"], r["seq_len"], r["ms"], r["us_per_token"],
        r["sequential_steps"], r["depth"], r["attention"],
        r["newton_iterations"]] for r in rows])
  report.files.append(plot(rows, config, output_dir))
  report.files.append(os.path.join(output_dir, "summary.md"))
  report.files.append(os.path.join(output_dir, "summary.json"))
  report.write(output_dir)
  return report
