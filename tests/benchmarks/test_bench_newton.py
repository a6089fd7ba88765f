"""scripts/bench_newton.py runs end to end on the tiny config."""

import csv

import pytest

from rnn_transformer.benchmarks import newton_benchmark
from script_helpers import load_config
from script_helpers import run_bench


def _config(arg):
  return load_config("bench_newton", arg)


@pytest.mark.slow  # CI time; run with -m slow
def test_bench_newton_writes_iterations_times_and_figure(tmp_path):
  result = run_bench("bench_newton", f"--output_dir={tmp_path}",
                     cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "load average (1 min) at start:" in result.stdout
  assert (tmp_path / "newton.png").stat().st_size > 0
  assert "| W_hh | method | T | iterations |" in (
      tmp_path / "newton.md").read_text()
  config = _config("tiny")
  with open(tmp_path / "newton_iterations.csv") as f:
    rows = list(csv.DictReader(f))
  weights = {r["weights"] for r in rows}
  assert {f"rho={r:g}" for r in config.radii} < weights
  assert any(w.startswith(newton_benchmark.TRAINED) for w in weights)
  assert len(rows) == len(weights) * len(config.methods) * len(
      config.seq_lens)
  for row in rows:  # max_iters >= T: every run converges, to scan's outputs
    assert row["converged"] == "True"
    assert 1 <= int(row["iterations"]) <= int(row["seq_len"])
    assert float(row["max_abs_error"]) < 1e-4
  with open(tmp_path / "newton_times.csv") as f:
    times = list(csv.DictReader(f))
  assert {(r["contender"], r["pass_"], int(r["seq_len"])) for r in times} == {
      (c, p, n) for c in ("scan", *config.timed_methods)
      for p in ("fwd", "fwd+bwd") for n in config.time_seq_lens}
  for row in times:
    assert 0 < float(row["ms_min"]) <= float(row["ms"]) <= float(
        row["ms_max"])


def test_bench_newton_rejects_bad_config():
  config = _config("tiny")
  config.methods = ("newton",)
  with pytest.raises(ValueError, match=r"config.methods: expected names "
                     r"from \('full', 'quasi', 'damped'\), got \('newton',\)"):
    newton_benchmark.check_config(config)
  config = _config("tiny")
  config.seq_lens = (32, 8)
  with pytest.raises(ValueError, match="config.seq_lens: expected ascending"):
    newton_benchmark.check_config(config)
