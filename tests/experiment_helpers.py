"""Shared by the experiment tests: the tiny run and the files it must write."""

import os
from types import ModuleType


def run_tiny(module: ModuleType, tmp_path_factory):
  """`(config, report, output_dir)` of `module` at the "tiny" scale."""
  name = module.__name__.rsplit(".", 1)[-1]
  output_dir = str(tmp_path_factory.mktemp(name))
  config = module.get_config("tiny")
  return config, module.run(config, output_dir), output_dir


def assert_wrote(report, names) -> None:
  """Every name in `names` is among the report's files; none is empty."""
  written = {os.path.basename(f) for f in report.files}
  missing = set(names) - written
  assert not missing, f"not written: {sorted(missing)}"
  for path in report.files:
    assert os.path.getsize(path) > 0, path
