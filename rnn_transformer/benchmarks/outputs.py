"""Tables, figures and fits that benchmarks and experiments write.

A table is written twice, as `<name>.csv` (raw values) and `<name>.md`
(GitHub Markdown); a figure as `<name>.png` at 150 dpi, drawn on matplotlib's
non-interactive Agg backend.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def check_positive(config, *fields: str) -> None:
  """Raises ValueError naming `config.<field>` unless each is an int >= 1.

  Fields may be dotted (`"train.steps"`).
  """
  for field in fields:
    value = config
    for part in field.split("."):
      value = value[part]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config.{field}: expected a positive integer, got "
                       f"{value!r}")


def device_description() -> str:
  """e.g. 'cpu: 2 x TFRT_CPU_0 (jax 0.10.2)' or the GPU's name."""
  devices = jax.devices()
  kind = devices[0].device_kind
  return f"{jax.default_backend()}: {len(devices)} x {kind} (jax {jax.__version__})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured Markdown table."""
  lines = ["| " + " | ".join(header) + " |",
           "| " + " | ".join("---" for _ in header) + " |"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def format_value(value: Any) -> str:
  """Floats to 4 significant digits, everything else by `str`."""
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def write_table(output_dir: str, name: str, header: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> list[str]:
  """Writes `<name>.csv` (raw values) and `<name>.md`; returns both paths."""
  os.makedirs(output_dir, exist_ok=True)
  csv_path = os.path.join(output_dir, f"{name}.csv")
  with open(csv_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  md_path = os.path.join(output_dir, f"{name}.md")
  with open(md_path, "w", encoding="utf-8") as f:
    f.write(markdown_table(
        header, [[format_value(c) for c in row] for row in rows]) + "\n")
  return [csv_path, md_path]


def pyplot():
  """matplotlib.pyplot on the non-interactive Agg backend."""
  try:
    import matplotlib
  except ImportError as error:
    raise ImportError("the experiments draw figures with matplotlib: "
                      "pip install -e '.[plot]'") from error
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, output_dir: str, name: str) -> str:
  """Saves `fig` as `<name>.png` (150 dpi) and closes it; returns the path."""
  os.makedirs(output_dir, exist_ok=True)
  path = os.path.join(output_dir, f"{name}.png")
  fig.savefig(path, dpi=150, bbox_inches="tight")
  pyplot().close(fig)
  return path


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
  """Exponent p of the least-squares fit y ~ c x^p on log-log axes."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.size < 2:
    raise ValueError(f"x, y: expected two equal-length sequences of at least "
                     f"2 points, got {x.size} and {y.size}")
  if np.any(x <= 0) or np.any(y <= 0):
    raise ValueError("x, y: log-log fit needs positive values")
  slope, _ = np.polyfit(np.log(x), np.log(y), 1)
  return float(slope)
