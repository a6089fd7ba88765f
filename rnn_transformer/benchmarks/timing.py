"""Timing helpers shared by the benchmark scripts.

Times are taken after compilation and `block_until_ready`, as the median of
repeated calls, so two implementations timed in one run on one device can be
compared by their ratio.
"""

import os
import statistics
import time
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

import jax


def median_seconds(fn: Callable[..., Any], *args: Any, warmup: int = 2,
                   iters: int = 10) -> float:
  """Median wall time of `fn(*args)` over `iters` calls, after `warmup`."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  samples = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    samples.append(time.perf_counter() - start)
  return statistics.median(samples)


def interleaved_median_seconds(
    calls: dict[str, Callable[[], Any]], warmup: int = 2, iters: int = 10,
    rounds: Callable[[list[str]], Iterable[str]] | None = None
) -> dict[str, float]:
  """Median wall time of each zero-argument call, timed round-robin.

  Interleaving (A, B, C, A, B, C, ...) exposes every variant to the same
  background load, so their ratios stay meaningful on a shared machine.
  `warmup` untimed rounds come first. `rounds`, when given, wraps the list
  of round labels ("warm-up 1", ..., "round 1", ...) and yields them back,
  e.g. to report progress.
  """
  labels = ([f"warm-up {i + 1}" for i in range(warmup)] +
            [f"round {i + 1}" for i in range(iters)])
  samples = {label: [] for label in calls}
  for round_label in (labels if rounds is None else rounds(labels)):
    for label, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      if round_label.startswith("round"):
        samples[label].append(time.perf_counter() - start)
  return {label: statistics.median(s) for label, s in samples.items()}


def repeated_interleaved_ms(calls: dict[Any, Callable[[], Any]], *,
                            warmup: int, iters: int,
                            repeats: int) -> dict[Any, list[float]]:
  """`repeats` whole round-robin comparisons of `calls`
  (`interleaved_median_seconds`, warmup in the first only): each call's
  median milliseconds per repeat, so rows can give a median and a spread."""
  samples = {key: [] for key in calls}
  for repeat in range(repeats):
    times = interleaved_median_seconds(
        calls, warmup=warmup if repeat == 0 else 0, iters=iters)
    for key, seconds in times.items():
      samples[key].append(1e3 * seconds)
  return samples


IDLE_LOAD = 1.5  # 1-minute load average above which timings are suspect


def load_average() -> float:
  """The 1-minute load average; measure on an idle machine (below
  `IDLE_LOAD`)."""
  return os.getloadavg()[0]


def load_average_report(load: float | None = None) -> str:
  """`load` (default: `load_average()`), with a warning above `IDLE_LOAD`:
  timings are taken only on an idle machine."""
  load = load_average() if load is None else load
  report = f"load average (1 min) at start: {load:.2f}"
  if load > IDLE_LOAD:
    report += (f"  WARNING: above {IDLE_LOAD}; the machine is not idle and "
               f"these timings are not figures to report")
  return report
