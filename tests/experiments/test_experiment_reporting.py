"""The experiments' shared reporting: fits, tables, verdicts, the registry."""

import csv
import json

import numpy as np
import pytest

from rnn_transformer import experiments
from rnn_transformer.benchmarks import outputs
from rnn_transformer.experiments import reporting


@pytest.mark.parametrize("exponent", [1.0, 2.0, 0.5])
def test_loglog_slope_recovers_a_power_law(exponent):
  x = np.array([16.0, 64.0, 256.0, 1024.0])
  assert outputs.loglog_slope(x, 3.0 * x**exponent) == pytest.approx(
      exponent, abs=1e-9)


def test_loglog_slope_rejects_bad_input():
  with pytest.raises(ValueError, match="at least 2 points"):
    outputs.loglog_slope([1.0], [2.0])
  with pytest.raises(ValueError, match="positive"):
    outputs.loglog_slope([1.0, 2.0], [0.0, 1.0])


def test_write_table_and_report(tmp_path):
  paths = outputs.write_table(str(tmp_path), "t", ["n", "ms"],
                                [(16, 1.23456), (32, 2.5)])
  with open(paths[0]) as f:
    assert list(csv.reader(f)) == [["n", "ms"], ["16", "1.23456"],
                                   ["32", "2.5"]]
  with open(paths[1]) as f:
    assert f.read().splitlines()[2] == "| 16 | 1.235 |"
  report = experiments.Report("demo", "cpu", {"slope": 1.5}, [
      experiments.Claim("x is fast", "supported", "slope 1.5")], paths)
  report.write(str(tmp_path))
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["claims"][0]["verdict"] == "supported"
  assert "- **supported**: x is fast. slope 1.5" in report.markdown()


def test_bad_names_raise():
  with pytest.raises(ValueError, match="verdict: expected one of"):
    experiments.Claim("c", "maybe", "")
  with pytest.raises(ValueError, match="experiment: expected one of"):
    experiments.load("nope")
  with pytest.raises(ValueError, match="scale .* expected one of"):
    reporting.check_scale("huge")


@pytest.mark.parametrize("name,field,value", [
    ("speed", "iters", 0), ("positional", "num_seeds", 0),
    ("gradient_flow", "train.steps", -1), ("gradient_flow", "hidden", 0)])
def test_experiments_reject_non_positive_sizes(tmp_path, name, field, value):
  module = experiments.load(name)
  config = module.get_config("tiny")
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  with config.unlocked():
    node[leaf] = value
  with pytest.raises(ValueError, match=rf"config.{field}: expected a positive "
                     rf"integer, got {value}"):
    module.run(config, str(tmp_path))


def test_results_index_keeps_every_experiment_present_in_order(tmp_path):
  for name in ("speed", "gradient_flow"):  # written out of order
    (tmp_path / name).mkdir()
    (tmp_path / name / "summary.md").write_text(f"# {name}\n")
  (tmp_path / "not_an_experiment").mkdir()
  (tmp_path / "not_an_experiment" / "summary.md").write_text("# stray\n")
  index = experiments.write_results_index(str(tmp_path))
  text = open(index, encoding="utf-8").read()
  assert text == "# gradient_flow\n\n# speed\n"


def test_run_appends_the_wall_time_and_rebuilds_the_index(tmp_path):
  (tmp_path / "speed").mkdir()
  (tmp_path / "speed" / "summary.md").write_text("# speed, kept\n")
  module = experiments.load("positional")
  experiments.run("positional", module.get_config("tiny"), str(tmp_path))
  summary = (tmp_path / "positional" / "summary.md").read_text()
  assert summary.rstrip().splitlines()[-1].startswith("Wall time: ")
  index = (tmp_path / "RESULTS.md").read_text()
  assert index.index("# speed, kept") < index.index("# positional")
