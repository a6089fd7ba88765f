"""What every experiment writes: tables, figures, verdicts, fitted slopes.

Outputs of one experiment go to one directory: `<name>.csv` and `<name>.md`
per table, `<name>.png` per figure (titled with the device it was measured
on), and `summary.md` with the key figures and one verdict per seed claim.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnn_transformer import benchmarking

VERDICTS = ("supported", "partly supported", "not supported", "not measured")
SCALES = ("tiny", "default", "large")


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


def check_scale(scale: str) -> str:
  if scale not in SCALES:
    raise ValueError(f"scale (the config argument): expected one of {SCALES}, "
                     f"got {scale!r}")
  return scale


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim of the seed document and what the measurement says of it."""
  claim: str  # the seed's words, e.g. "vanilla RNN gradients vanish"
  verdict: str  # one of VERDICTS
  evidence: str  # the measured numbers behind the verdict

  def __post_init__(self):
    if self.verdict not in VERDICTS:
      raise ValueError(f"verdict: expected one of {VERDICTS}, got "
                       f"{self.verdict!r}")


@dataclasses.dataclass
class Report:
  """An experiment's result: key figures, verdicts, files written."""
  name: str
  device: str
  figures: dict[str, float] = dataclasses.field(default_factory=dict)
  claims: list[Claim] = dataclasses.field(default_factory=list)
  files: list[str] = dataclasses.field(default_factory=list)

  def markdown(self) -> str:
    lines = [f"# {self.name}", "", f"Device: {self.device}", ""]
    if self.figures:
      lines += [benchmarking.markdown_table(
          ["figure", "value"],
          [(k, _format(v)) for k, v in self.figures.items()]), ""]
    for c in self.claims:
      lines.append(f"- **{c.verdict}**: {c.claim}. {c.evidence}")
    lines += ["", "Files: " + ", ".join(
        os.path.basename(f) for f in self.files)]
    return "\n".join(lines) + "\n"

  def write(self, output_dir: str) -> str:
    """Writes `summary.md` and `summary.json`; returns the Markdown path."""
    path = os.path.join(output_dir, "summary.md")
    with open(path, "w", encoding="utf-8") as f:
      f.write(self.markdown())
    with open(os.path.join(output_dir, "summary.json"), "w",
              encoding="utf-8") as f:
      json.dump(dataclasses.asdict(self), f, indent=2)
    return path


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def device_description() -> str:
  return benchmarking.device_description()


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
    f.write(benchmarking.markdown_table(
        header, [[_format(c) for c in row] for row in rows]) + "\n")
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
