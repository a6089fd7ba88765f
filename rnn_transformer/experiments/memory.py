r"""Attention memory against sequence length: reference vs blockwise vs Triton.

The seed's chapter 3: self-attention builds an n x n matrix of scores, so its
memory grows as O(n^2). Fused kernels (FlashAttention: Dao et al., 2022) and
the blockwise online softmax (Rabe and Staats, 2021) never store it and need
O(n) memory. For q, k, v of shape `(batch, n, heads, head_dim)` this
experiment measures, per implementation of `kernels.attention` and length n,
the memory of one jitted forward+backward (`jax.grad` of the output's sum
w.r.t. q, k and v):

* compiled: XLA's `memory_analysis()`, temp + arguments + outputs, on every
  backend. Deterministic, and it can be read at lengths that would not fit
  (on a CPU compiling allocates nothing; on a GPU the autotuner may allocate
  while compiling, which raises the high-water mark below);
* peak (GPU): `memory_stats()["peak_bytes_in_use"]` after running the program
  once, minus the bytes in use before its inputs were allocated. The peak is
  a high-water mark that never resets, so programs run in increasing order of
  compiled size and a run that does not raise it is reported as masked. It
  is only informative in a fresh process: run this experiment alone
  (`scripts/experiment.py`), not after others in `run_experiments.py`.
  Never run yet (no GPU was available where this was written).

It fits the exponent p of bytes ~ c n^p per implementation, and the length
at which the reference no longer fits in the device's memory (GPU:
`memory_stats()["bytes_limit"]`; CPU: physical RAM): extrapolated from the
fit, then checked by compiling the reference at the powers of two around it.
The Triton kernel is measured on CUDA GPUs only.

    python scripts/experiment.py --config=configs/experiments/memory.py:tiny \
        --output_dir=/tmp/experiments
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import kernels
from kernels import backends
from kernels import benchmark
from kernels.triton import launch as triton_launch
from rnn_transformer.experiments import progress
from rnn_transformer.experiments import reporting
from rnn_transformer.benchmarks import outputs

NAME = "memory"

# Verdict thresholds on the fitted exponent p of bytes ~ c n^p.
EXPONENT_TOLERANCE = 0.25  # supported: |p - expected| <= this
EXPONENT_PARTLY = 0.5  # partly supported: |p - expected| <= this
# At the reference's limit an O(n) implementation should need at most this
# fraction of the device's memory for "O(n^2) memory caps the length".
SMALL_FRACTION = 1 / 8
EXPECTED_EXPONENT = {"reference": 2.0, "blockwise": 1.0, "triton": 1.0,
                     "xla": 2.0, "cudnn": 1.0}

_GIB = 2**30


def get_config(scale: str = "default") -> ml_collections.ConfigDict:
  """Sizes per scale: "tiny" (seconds), "default" (minutes, CPU), "large"."""
  reporting.check_scale(scale)
  config = ml_collections.ConfigDict()
  config.experiment = NAME
  # kernels.attention implementations; "triton" is measured on CUDA GPUs only.
  config.implementations = ("reference", "blockwise", "triton")
  config.seq_lens = (512, 1024, 2048, 4096, 8192, 16384)  # n, ascending
  config.batch = 1  # sequences
  config.num_heads = 8  # query = key/value heads
  config.head_dim = 64  # per head (the Triton kernels take 32..256)
  config.causal = True  # causal masking
  config.dtype = "float32"  # of q, k and v (scores are float32 throughout)
  config.backward = True  # forward+backward; False: the forward alone
  config.runtime_peak = True  # on GPUs also run and read peak_bytes_in_use
  config.max_check_len = 1 << 22  # the limit check compiles at most this n
  if scale == "tiny":
    config.seq_lens = (512, 1024, 2048, 4096)
    config.num_heads, config.head_dim = 1, 32
  elif scale == "large":  # a GPU
    config.seq_lens = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
    config.num_heads, config.head_dim = 16, 128
    config.dtype = "bfloat16"
  return config


def device_memory() -> tuple[int, str]:
  """(bytes, where the figure comes from) of the default device's memory."""
  stats = jax.devices()[0].memory_stats()
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]), "memory_stats()['bytes_limit']"
  return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
          "physical RAM")


def unavailable_reason(config: ml_collections.ConfigDict,
                       implementation: str) -> str | None:
  """Why `implementation` is not measured here, or None."""
  if implementation not in kernels.IMPLEMENTATIONS:
    raise ValueError(f"config.implementations: expected names from "
                     f"{kernels.IMPLEMENTATIONS}, got {implementation!r}")
  if implementation == "triton" and triton_launch.interpret_requested():
    return ("the Triton interpreter runs the kernel on the host; its buffers "
            "are not the compiled kernel's")
  heads = config.num_heads
  call = backends.AttentionCall(
      config.batch, config.seq_lens[0], config.seq_lens[0], heads, heads,
      config.head_dim, np.dtype(config.dtype), config.causal, False, False,
      jax.default_backend())
  return backends.REGISTRY[implementation].supports(call)


def _shape(config: ml_collections.ConfigDict, seq_len: int) -> tuple[int, ...]:
  return (config.batch, seq_len, config.num_heads, config.head_dim)


def _compile(config: ml_collections.ConfigDict, implementation: str,
             seq_len: int):
  return benchmark.compile_attention(
      implementation, _shape(config, seq_len), jnp.dtype(config.dtype),
      causal=config.causal, backward=config.backward)


def compiled_bytes(config: ml_collections.ConfigDict, implementation: str,
                   seq_len: int) -> float:
  """temp + arguments + outputs of the compiled program; inf if XLA refuses
  to compile it for lack of memory."""
  try:
    memory = benchmark.compiled_memory(_compile(config, implementation,
                                                seq_len))
  except Exception as error:  # pylint: disable=broad-except
    if benchmark.is_oom(error):
      return math.inf
    raise
  if memory is None:
    raise RuntimeError(f"{jax.default_backend()}: compiled programs report no "
                       "memory_analysis()")
  return float(memory.total)


def runtime_peaks(config: ml_collections.ConfigDict,
                  rows: list[dict[str, Any]], device: Any = None) -> None:
  """Fills `peak_bytes` / `status` of `rows` by running each program once.

  Runs in increasing compiled size, so that each run should raise the
  device's high-water mark `peak_bytes_in_use`; a run that does not is
  reported as masked. An implementation that runs out of memory is not run
  at longer lengths.

  Args:
    config: the experiment's config (shapes).
    rows: rows of `measure`, each with `implementation`, `seq_len` and
      `compiled_bytes`; updated in place.
    device: has `memory_stats()` with `bytes_in_use` and `peak_bytes_in_use`
      (default: the default device).
  """
  device = jax.devices()[0] if device is None else device
  failed = set()
  for row in sorted(rows, key=lambda r: r["compiled_bytes"]):
    impl, seq_len = row["implementation"], row["seq_len"]
    if impl in failed:
      row["status"] = "not run (OOM at a shorter length)"
      continue
    qkv = None
    try:
      # Compile before reading the high-water mark: autotuning may allocate.
      compiled = _compile(config, impl, seq_len)
      stats = device.memory_stats()
      before, high = stats["bytes_in_use"], stats["peak_bytes_in_use"]
      rng = np.random.default_rng(seq_len)
      qkv = [jnp.asarray(rng.standard_normal(_shape(config, seq_len),
                                             np.float32), config.dtype)
             for _ in range(3)]
      jax.block_until_ready(compiled(*qkv))
    except Exception as error:  # pylint: disable=broad-except
      if not benchmark.is_oom(error):
        raise
      row["status"] = "OOM when run"
      failed.add(impl)
      continue
    finally:
      del qkv
    peak = device.memory_stats()["peak_bytes_in_use"]
    if peak > high:
      row["peak_bytes"] = peak - before
    else:
      row["status"] = "peak masked by an earlier, larger run"


def measure(config: ml_collections.ConfigDict
            ) -> tuple[list[dict[str, Any]], dict[str, str]]:
  """(one row per measured implementation and length, skipped: reasons)."""
  lens = list(config.seq_lens)
  if len(lens) < 2 or lens != sorted(set(lens)) or lens[0] < 1:
    raise ValueError(f"config.seq_lens: expected at least two ascending "
                     f"positive lengths, got {tuple(lens)}")
  limit, _ = device_memory()
  rows, skipped = [], {}
  runnable = []
  for impl in config.implementations:
    reason = unavailable_reason(config, impl)
    if reason is not None:
      skipped[impl] = reason
    else:
      runnable += [(impl, seq_len) for seq_len in lens]
  for impl, seq_len in progress.cells(NAME, runnable,
                                      lambda c: f"{c[0]} n={c[1]}"):
    total = compiled_bytes(config, impl, seq_len)
    status = ("OOM when compiled" if not math.isfinite(total) else
              "exceeds device memory (compiled only)" if total > limit else
              "ok")
    rows.append(dict(implementation=impl, seq_len=seq_len,
                     compiled_bytes=total, peak_bytes=None, status=status))
  if config.runtime_peak and jax.default_backend() == "gpu":
    runtime_peaks(config, [r for r in rows if r["status"] == "ok"])
  return rows, skipped


def power_fit(n: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
  """(p, log c) of the least-squares fit log y = p log n + log c."""
  p = outputs.loglog_slope(n, y)
  return p, float(np.mean(np.log(y)) - p * np.mean(np.log(n)))


def _series(rows: Sequence[dict[str, Any]], impl: str, key: str
            ) -> tuple[list[float], list[float]]:
  points = [(r["seq_len"], r[key]) for r in rows
            if r["implementation"] == impl and r[key] is not None and
            math.isfinite(r[key])]
  return [p[0] for p in points], [p[1] for p in points]


def check_limit(config: ml_collections.ConfigDict, implementation: str,
                limit: float, estimate: float,
                known: dict[int, float] | None = None
                ) -> tuple[tuple[int, float] | None, tuple[int, float] | None]:
  """Compiles at powers of two around `estimate`, walking until they bracket
  the length where the compiled footprint first exceeds `limit`.

  Args:
    config: the experiment's config (shapes, `max_check_len`).
    implementation: a `kernels.IMPLEMENTATIONS` name.
    limit: the device's memory in bytes.
    estimate: the extrapolated length where the footprint reaches `limit`.
    known: compiled bytes by length already measured, not compiled again.

  Returns:
    ((longest n that fits, its bytes) or None, (shortest n that does not,
    its bytes) or None if none up to `config.max_check_len`).
  """
  known = dict(known or {})

  def footprint(n: int) -> float:
    if n not in known:
      known[n] = compiled_bytes(config, implementation, n)
    return known[n]

  n = 2 ** max(0, int(math.floor(math.log2(max(estimate, 1.0)))))
  n = min(n, config.max_check_len)
  size = footprint(n)
  if size > limit:
    over = (n, size)
    while n > 1:
      n //= 2
      size = footprint(n)
      if size <= limit:
        return (n, size), over
      over = (n, size)
    return None, over
  fits = (n, size)
  while 2 * n <= config.max_check_len:
    n *= 2
    size = footprint(n)
    if size > limit:
      return fits, (n, size)
    fits = (n, size)
  return fits, None


def _gib(size: float) -> str:
  return f"{size / _GIB:.3g} GiB"


def analyse(config: ml_collections.ConfigDict, rows: Sequence[dict[str, Any]],
            skipped: dict[str, str]
            ) -> tuple[dict[str, float], list[reporting.Claim], dict[str, Any]]:
  """Fits, the reference's limit, and one verdict per claim of the seed."""
  limit, limit_source = device_memory()
  figures: dict[str, float] = {"device_memory_gib": limit / _GIB}
  fits: dict[str, tuple[float, float]] = {}
  for impl in config.implementations:
    n, size = _series(rows, impl, "compiled_bytes")
    if len(n) >= 2:
      fits[impl] = power_fit(n, size)
      figures[f"{impl}_exponent"] = fits[impl][0]
    n, size = _series(rows, impl, "peak_bytes")
    if len(n) >= 2:
      figures[f"{impl}_peak_exponent"] = outputs.loglog_slope(n, size)
  lens = sorted({r["seq_len"] for r in rows}) or list(config.seq_lens)
  setting = (f"batch {config.batch} x {config.num_heads} heads x head_dim "
             f"{config.head_dim}, {config.dtype}, "
             f"{'causal, ' if config.causal else ''}"
             f"{'forward+backward' if config.backward else 'forward'}")
  extra: dict[str, Any] = {"limit": limit, "limit_source": limit_source,
                           "fits": fits, "setting": setting}

  result = []
  names = {"reference": "the n x n attention matrix makes attention O(n^2) "
                        "in memory (the reference implementation)",
           "blockwise": "attention without the n x n matrix (blockwise "
                        "online softmax) needs O(n) memory",
           "triton": "the fused Triton kernel (FlashAttention-style) needs "
                     "O(n) memory"}
  for impl in config.implementations:
    text = names.get(impl, f"{impl} attention memory")
    expected = EXPECTED_EXPONENT[impl]
    if impl in skipped:
      result.append(reporting.Claim(text, "not measured",
                                    f"{impl}: {skipped[impl]}"))
      continue
    if impl not in fits:
      result.append(reporting.Claim(text, "not measured", (
          f"fewer than two lengths of {impl} compiled")))
      continue
    p = fits[impl][0]
    error = abs(p - expected)
    verdict = ("supported" if error <= EXPONENT_TOLERANCE else
               "partly supported" if error <= EXPONENT_PARTLY else
               "not supported")
    n, size = _series(rows, impl, "compiled_bytes")
    peak = figures.get(f"{impl}_peak_exponent")
    result.append(reporting.Claim(text, verdict, (
        f"Compiled memory {_gib(size[0])} at n={n[0]} to {_gib(size[-1])} at "
        f"n={n[-1]} ({setting}): fitted exponent {p:.2f}"
        + (f", runtime peak exponent {peak:.2f}" if peak is not None else "")
        + f" (expected {expected:g}; supported within "
        f"{EXPONENT_TOLERANCE:g}, partly within {EXPONENT_PARTLY:g})")))

  text = ("O(n^2) memory caps the sequence length: the reference stops fitting "
          "in device memory where O(n) attention needs a small fraction of it")
  linear = [i for i in config.implementations
            if i in fits and EXPECTED_EXPONENT[i] == 1.0]
  if "reference" not in fits or not linear:
    result.append(reporting.Claim(text, "not measured", (
        "needs the reference and an O(n) implementation measured")))
    return figures, result, extra
  p, log_c = fits["reference"]
  estimate = math.exp((math.log(limit) - log_c) / p)
  figures["reference_max_len_from_fit"] = estimate
  extra["estimate"] = estimate
  measured = dict(zip(*_series(rows, "reference", "compiled_bytes")))
  fit_len, over = check_limit(config, "reference", limit, estimate, measured)
  extra["check"] = (fit_len, over)
  if fit_len is not None:
    figures["reference_max_len_compiled_fits"] = fit_len[0]
  if over is not None:
    figures["reference_first_len_over_memory"] = over[0]
  oom = [r["seq_len"] for r in rows
         if r["implementation"] == "reference" and r["status"].startswith(
             "OOM")]
  if oom:
    figures["reference_first_len_oom_measured"] = min(oom)
  at_limit = {i: math.exp(fits[i][1]) * estimate ** fits[i][0] for i in linear}
  fraction = max(at_limit.values()) / limit
  figures["linear_fraction_of_memory_at_reference_limit"] = fraction
  verdict = ("supported" if fraction <= SMALL_FRACTION else
             "partly supported" if fraction < 1 else "not supported")
  check = "; checked by compiling the reference without running it: " + (
      f"n={fit_len[0]} needs {_gib(fit_len[1])} (fits)"
      if fit_len else "no power of two fits") + ", " + (
          f"n={over[0]} needs {_gib(over[1])} (does not fit)" if over else
          f"none up to n={config.max_check_len} exceeds it")
  result.append(reporting.Claim(text, verdict, (
      f"Device memory {_gib(limit)} ({limit_source}). By the reference's "
      f"fit (p={p:.2f} over n={lens[0]}..{lens[-1]}, "
      f"{'interpolated' if estimate <= lens[-1] else 'extrapolated'}) it no "
      f"longer fits beyond n ~ {estimate:,.0f}{check}"
      + (f"; it ran out of memory when run at n={min(oom)}" if oom else "")
      + ". At that length " + ", ".join(
          f"{i} needs {_gib(at_limit[i])} (extrapolated)" for i in linear)
      + f", {fraction:.2%} of the memory (small: <= {SMALL_FRACTION:.1%})")))
  return figures, result, extra


def plot(config: ml_collections.ConfigDict, rows: Sequence[dict[str, Any]],
         extra: dict[str, Any], output_dir: str) -> str:
  """Bytes against n on log-log axes, slope guides, device memory, limit."""
  plt = outputs.pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 5))
  mib = 2**20
  for impl in config.implementations:
    n, size = _series(rows, impl, "compiled_bytes")
    if n:
      line, = ax.plot(n, np.array(size) / mib, "o-",
                      label=f"{impl} (compiled)")
      pn, peak = _series(rows, impl, "peak_bytes")
      if pn:
        ax.plot(pn, np.array(peak) / mib, "x--", color=line.get_color(),
                label=f"{impl} (peak_bytes_in_use)")
  for power, impl, style in ((2, "reference", "--"), (1, "blockwise", ":")):
    n, size = _series(rows, impl, "compiled_bytes")
    if n:
      n = np.array(n, np.float64)
      ax.plot(n, size[0] / mib * (n / n[0]) ** power, style, color="gray",
              label=f"slope {power}")
  ax.axhline(extra["limit"] / mib, color="black", lw=1,
             label=f"device memory ({extra['limit_source']})")
  if "estimate" in extra:
    p, log_c = extra["fits"]["reference"]
    n = np.geomspace(min(r["seq_len"] for r in rows),
                     max(extra["estimate"], max(r["seq_len"] for r in rows)),
                     50)
    ax.plot(n, np.exp(log_c) * n ** p / mib, "--", color="tab:red", lw=1,
            label=f"reference fit (exponent {p:.2f})")
    ax.plot([extra["estimate"]], [extra["limit"] / mib], "*", ms=12,
            color="tab:red",
            label=f"fit reaches device memory: n ~ {extra['estimate']:,.0f}")
    checked = [c for c in extra["check"] if c is not None]
    if checked:
      ax.plot([c[0] for c in checked], [c[1] / mib for c in checked], "s",
              mfc="none", color="tab:red",
              label="reference compiled around the limit (not run)")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("sequence length n (tokens)")
  ax.set_ylabel("memory (MiB)")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f"Attention memory, {extra['setting']}\n"
               f"{outputs.device_description()}", fontsize=9)
  return outputs.save_figure(fig, output_dir, "memory")


def run(config: ml_collections.ConfigDict, output_dir: str) -> reporting.Report:
  """Measures, writes `memory.{png,csv,md}` and the summary; see module doc."""
  rows, skipped = measure(config)
  figures, claims, extra = analyse(config, rows, skipped)
  report = reporting.Report("memory", outputs.device_description(), figures,
                            claims)
  table = [[r["implementation"], r["seq_len"],
            r["compiled_bytes"] / 2**20 if math.isfinite(
                r["compiled_bytes"]) else "",
            "" if r["peak_bytes"] is None else r["peak_bytes"] / 2**20,
            r["status"]] for r in rows]
  table += [[impl, "", "", "", f"not measured: {reason}"]
            for impl, reason in skipped.items()]
  report.files += outputs.write_table(
      output_dir, "memory",
      ["implementation", "seq_len", "compiled_mib", "peak_mib", "status"],
      table)
  report.files.append(plot(config, rows, extra, output_dir))
  report.files.append(os.path.join(output_dir, "summary.md"))
  report.files.append(os.path.join(output_dir, "summary.json"))
  report.write(output_dir)
  return report
