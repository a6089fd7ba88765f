"""What every experiment writes: tables, figures, verdicts, fitted slopes.

Outputs of one experiment go to one directory: `<name>.csv` and `<name>.md`
per table, `<name>.png` per figure (titled with the device it was measured
on), and `summary.md` with the key figures and one verdict per seed claim.
"""

from __future__ import annotations

import dataclasses
import json
import os


from rnn_transformer.benchmarks import outputs

VERDICTS = ("supported", "partly supported", "not supported", "not measured")
SCALES = ("tiny", "default", "large")


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
      lines += [outputs.markdown_table(
          ["figure", "value"],
          [(k, outputs.format_value(v)) for k, v in self.figures.items()]), ""]
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


