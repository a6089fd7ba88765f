"""Which experiment and which cell is running, with elapsed time and an estimate.

An experiment's cells (a backbone at a distance, an implementation at a
length, ...) run one after another through `cells`. On a terminal a tqdm bar
per experiment shows the running cell, elapsed time and tqdm's estimate;
elsewhere (CI, a redirected log) each cell starts with one plain line:

    long_range [3/7] lstm: elapsed 1 min 02 s, about 2 min 25 s left

The estimate is the mean time of the finished cells times the cells left,
so it is only as good as the cells are alike; the first cell has none.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TextIO, TypeVar

import tqdm

T = TypeVar("T")


def format_seconds(seconds: float) -> str:
  """`42 s`, `3 min 05 s` or `1 h 02 min`."""
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f"{seconds} s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes} min {seconds:02d} s"
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes:02d} min"


def estimate_left(elapsed: float, done: int, total: int) -> float | None:
  """Seconds left after `done` of `total` cells took `elapsed`; None before
  the first cell has finished."""
  if done <= 0:
    return None
  return elapsed / done * (total - done)


def status_line(experiment: str, index: int, total: int, cell: str,
                elapsed: float) -> str:
  """The plain line printed as cell `index` (0-based) of `total` starts."""
  left = estimate_left(elapsed, index, total)
  estimate = ("no estimate before the first cell ends" if left is None else
              f"about {format_seconds(left)} left")
  return (f"{experiment} [{index + 1}/{total}] {cell}: elapsed "
          f"{format_seconds(elapsed)}, {estimate}")


def cells(experiment: str, items: Iterable[T],
          describe: Callable[[T], str] = str, *,
          stream: TextIO | None = None,
          bar: bool | None = None) -> Iterator[T]:
  """Yields `items`, reporting each as it starts.

  Args:
    experiment: the experiment's name, first on every line.
    items: the cells, in the order they run.
    describe: a cell's label, e.g. `lambda c: f"{c[0]} T={c[1]}"`.
    stream: where progress goes (default: stdout at call time).
    bar: a tqdm bar (True) or plain lines (False); None: a bar when
      `stream` is a terminal.
  """
  stream = sys.stdout if stream is None else stream
  items: Sequence[T] = list(items)
  if bar is None:
    bar = stream.isatty()
  start = time.perf_counter()
  if bar:
    with tqdm.tqdm(total=len(items), desc=experiment, unit="cell",
                   dynamic_ncols=True, file=stream) as progress:
      for item in items:
        progress.set_postfix_str(describe(item))
        yield item
        progress.update(1)
    return
  for index, item in enumerate(items):
    print(status_line(experiment, index, len(items), describe(item),
                      time.perf_counter() - start), file=stream, flush=True)
    yield item
  print(f"{experiment}: {len(items)} cells in "
        f"{format_seconds(time.perf_counter() - start)}", file=stream,
        flush=True)
