"""The memory experiment: tiny run exponents, the limit check, verdicts."""

import csv
import math
import os

import jax
import pytest

from experiment_helpers import assert_wrote
from experiment_helpers import run_tiny
from rnn_transformer.experiments import memory
from rnn_transformer.experiments import reporting


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  return run_tiny(memory, tmp_path_factory)


def test_tiny_run_writes_figure_tables_and_summary(tiny_run):
  config, report, output_dir = tiny_run
  assert_wrote(report, ("memory.png", "memory.csv", "memory.md",
                        "summary.md", "summary.json"))
  with open(os.path.join(output_dir, "memory.csv")) as f:
    rows = list(csv.DictReader(f))
  measured = [r for r in rows if r["status"] == "ok"]
  assert {r["implementation"] for r in measured} >= {"reference", "blockwise"}
  assert len(measured) >= 2 * len(config.seq_lens)
  assert all(c.verdict in reporting.VERDICTS for c in report.claims)


def test_reference_is_quadratic_blockwise_linear(tiny_run):
  _, report, _ = tiny_run
  if jax.default_backend() != "cpu":
    pytest.skip("the compiled figures are deterministic on XLA:CPU")
  assert 1.8 < report.figures["reference_exponent"] < 2.2
  assert 0.8 < report.figures["blockwise_exponent"] < 1.2
  # One claim per implementation, in config order: reference, blockwise.
  assert [c.verdict for c in report.claims[:2]] == ["supported"] * 2, (
      report.claims)
  triton = [c for c in report.claims if "Triton" in c.claim]
  assert [c.verdict for c in triton] == ["not measured"]


def test_reference_limit_is_bracketed_by_compiled_lengths(tiny_run):
  _, report, _ = tiny_run
  fits = report.figures["reference_max_len_compiled_fits"]
  over = report.figures["reference_first_len_over_memory"]
  estimate = report.figures["reference_max_len_from_fit"]
  assert over == 2 * fits
  # The fit's exponent is not exactly 2, so allow one octave either side.
  assert fits / 2 <= estimate <= 2 * over


@pytest.mark.parametrize("estimate", [100.0, 5000.0, 1e6])
def test_check_limit_walks_to_the_bracket(monkeypatch, estimate):
  monkeypatch.setattr(memory, "compiled_bytes",
                      lambda config, impl, n: float(n) ** 2)
  config = memory.get_config("tiny")
  config.max_check_len = 1 << 16
  fits, over = memory.check_limit(config, "reference", 1000.0**2, estimate)
  assert fits == (512, 512.0**2) and over == (1024, 1024.0**2)
  fits, over = memory.check_limit(config, "reference", 1e12, estimate)
  assert fits == (1 << 16, float(1 << 32)) and over is None


def test_power_fit_recovers_the_constant():
  p, log_c = memory.power_fit([10.0, 100.0, 1000.0], [3e2, 3e4, 3e6])
  assert p == pytest.approx(2.0) and math.exp(log_c) == pytest.approx(3.0)


class _ScriptedDevice:
  """memory_stats() returns the scripted (bytes_in_use, peak) pairs in turn."""

  def __init__(self, stats):
    self._stats = iter(stats)

  def memory_stats(self):
    in_use, peak = next(self._stats)
    return {"bytes_in_use": in_use, "peak_bytes_in_use": peak}


def test_runtime_peaks_orders_by_size_masks_and_stops_after_oom(monkeypatch):
  def fake_compile(config, impl, seq_len):
    del config

    def call(q, k, v):
      if (impl, seq_len) == ("reference", 1024):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating")
      return q + k + v
    return call

  monkeypatch.setattr(memory, "_compile", fake_compile)
  rows = [dict(implementation=i, seq_len=n, compiled_bytes=b, peak_bytes=None,
               status="ok")
          for i, n, b in (("reference", 2048, 40), ("reference", 1024, 30),
                          ("blockwise", 1024, 25), ("reference", 512, 20),
                          ("blockwise", 512, 10))]
  # Per run: (in use, high-water mark) before it, then the mark after it.
  device = _ScriptedDevice([(100, 100), (0, 300),  # blockwise 512
                            (100, 300), (0, 700),  # reference 512
                            (100, 700), (0, 700),  # blockwise 1024: masked
                            (100, 700)])  # reference 1024: OOM
  memory.runtime_peaks(memory.get_config("tiny"), rows, device)
  got = {(r["implementation"], r["seq_len"]): (r["peak_bytes"], r["status"])
         for r in rows}
  assert got == {
      ("blockwise", 512): (200, "ok"),
      ("reference", 512): (600, "ok"),
      ("blockwise", 1024): (None, "peak masked by an earlier, larger run"),
      ("reference", 1024): (None, "OOM when run"),
      ("reference", 2048): (None, "not run (OOM at a shorter length)")}
