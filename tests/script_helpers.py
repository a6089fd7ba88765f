"""Shared by the benchmark-script tests: run a script on a tiny config, load
a config file."""

import importlib.util
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_bench(name: str, *flags: str, cwd, timeout: int = 600):
  """`scripts/<name>.py --config=configs/<name>.py:tiny *flags` in a child
  process with the repository importable; its CompletedProcess."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  return subprocess.run(
      [sys.executable, str(REPO / "scripts" / f"{name}.py"),
       f"--config={REPO / 'configs' / f'{name}.py'}:tiny", *flags],
      capture_output=True, text=True, check=False, timeout=timeout, cwd=cwd,
      env=env)


def load_config(name: str, arg: str):
  """`configs/<name>.py`'s `get_config(arg)`."""
  spec = importlib.util.spec_from_file_location(
      name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
