"""The sequence-length sweep runs end to end on a tiny config."""

import csv

import pytest

from rnn_transformer.benchmarks import recurrence_sweep
from script_helpers import load_config
from script_helpers import run_bench


def _config(arg):
  return load_config("bench_recurrence_sweep", arg)


@pytest.mark.slow  # CI time; run with -m slow
def test_sweep_script_writes_rows_depths_and_slopes(tmp_path):
  result = run_bench("bench_recurrence_sweep", f"--output_dir={tmp_path}",
                     cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "load average (1 min) at start:" in result.stdout
  assert "| variant | log-log slope of time |" in result.stdout
  with open(tmp_path / "recurrence_sweep.csv") as f:
    rows = {(r["variant"], int(r["seq_len"])): r for r in csv.DictReader(f)}
  config = _config("tiny")
  assert set(rows) == {(v, n) for v in config.variants
                       for n in config.seq_lens}
  for n in config.seq_lens:
    steps = {v: int(rows[v, n]["scan_steps"]) for v in config.variants}
    # Forward and backward each loop once over time (or over the chunks).
    assert steps["lstm/scan"] == steps["mingru/sequential"] == 2 * n
    assert steps["lru/chunked"] == 2 * -(-n // config.chunk_size)
    assert steps["mingru/associative"] == steps["transformer/layer"] == 0
    assert float(rows["lstm/scan", n]["lstm_over_this"]) == 1.0
    assert float(rows["mingru/sequential", n]["sequential_over_this"]) == 1.0
    for row in (rows[v, n] for v in config.variants):
      assert 0 < float(row["ms_min"]) <= float(row["ms"]) <= float(
          row["ms_max"])
  short, long = config.seq_lens
  # 4x the steps: the sequential depth (4n + a constant) nearly follows.
  assert int(rows["mingru/sequential", long]["depth"]) > 2.5 * int(
      rows["mingru/sequential", short]["depth"])
  assert int(rows["mingru/associative", long]["depth"]) < 2 * int(
      rows["mingru/associative", short]["depth"])


def test_sweep_rejects_bad_variants_and_lengths():
  config = _config("tiny")
  config.variants = ("gru/scan",)
  with pytest.raises(ValueError, match=r"config.variants: expected names "
                     r"from \('lstm/scan'.*got \('gru/scan',\)"):
    recurrence_sweep.measure(config)
  config = _config("tiny")
  config.seq_lens = (32, 8)
  with pytest.raises(ValueError, match="config.seq_lens: expected at least "
                     "two ascending"):
    recurrence_sweep.measure(config)
