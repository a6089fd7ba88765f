"""The recurrent benchmark script runs end to end on a tiny config."""

import csv

from rnn_transformer.benchmarks import recurrent_benchmark
from rnn_transformer.layers import recurrent
from script_helpers import run_bench


def _run_script(*flags, cwd):
  return run_bench("bench_recurrent", *flags, cwd=cwd, timeout=300)


def test_bench_recurrent_script_writes_a_row_per_variant(tmp_path):
  result = _run_script("--config.cells=('lstm', 'gru')",
                       f"--output_dir={tmp_path}", cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| lstm | flax.linen.RNN |" in result.stdout
  assert "load average (1 min) at start:" in result.stdout
  with open(tmp_path / "bench_recurrent.csv") as f:
    rows = list(csv.DictReader(f))
  labels = ["flax.linen.RNN", *recurrent_benchmark.VARIANTS]
  assert [(r["cell"], r["implementation"]) for r in rows] == [
      (cell, label) for cell in ("lstm", "gru") for label in labels]
  assert all(float(r["ms"]) > 0 for r in rows)
  for r in rows:
    assert (float(r["ratio_min"]) <= float(r["flax_over_this"])
            <= float(r["ratio_max"]))
  flax_rows = [r for r in rows if r["implementation"] == "flax.linen.RNN"]
  assert all(float(r["flax_over_this"]) == 1.0 for r in flax_rows)
  # Exactly one of our variants per cell is what RNN() runs by default.
  for cell in ("lstm", "gru"):
    defaults = [r["implementation"] for r in rows
                if r["cell"] == cell and r["default"] == "True"]
    assert defaults == [recurrent_benchmark.default_label(cell, batch=2)]


def test_default_label_follows_the_batch_limit_of_deferral(monkeypatch):
  """A row with `defer_max_batch` names a different variant above the
  limit."""
  row = recurrent.Defaults(False, True, "test", defer_max_batch=8)
  monkeypatch.setattr(recurrent_benchmark, "backend_defaults",
                      lambda cell: row)
  small = recurrent_benchmark.default_label("gru", 8)
  large = recurrent_benchmark.default_label("gru", 9)
  assert small == "ours (per-step projection, deferred weight gradients)"
  assert large == "ours (per-step projection)"


def test_bench_recurrent_rejects_an_unknown_cell(tmp_path):
  result = _run_script("--config.cells=('transformer',)", cwd=tmp_path)
  assert result.returncode != 0
  assert "config.cells: expected names from ['gru', 'lstm', 'rnn']" in (
      result.stderr)
