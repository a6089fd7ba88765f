"""Shared by the multi-device tests: child processes and parameter checks."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests.script_helpers import REPO

# Float32 sums in another order per mesh: a few ulps per step, compounding
# over the steps of Adam.
LOSS_RTOL, PARAM_ATOL = 1e-5, 1e-5
# The attention's key bias has an exactly zero gradient (a query's scores
# all shift by q . b_k, which softmax ignores), so its gradient is float
# noise that Adam normalises into steps of up to the learning rate: it may
# differ by steps x peak learning rate (20 x 3e-3), and nothing else may.
ZERO_GRADIENT = "['key']['bias']"
KEY_BIAS_ATOL = 20 * 3e-3


def child_env(devices: int | None = None) -> dict[str, str]:
  """The environment of a child jax process with `devices` CPU devices."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  env.pop("XLA_FLAGS", None)
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def run(args, devices=None, timeout=900):
  done = subprocess.run([sys.executable, *map(str, args)],
                        capture_output=True, text=True, timeout=timeout,
                        env=child_env(devices), check=False)
  assert done.returncode == 0, done.stderr[-4000:]
  return done


def run_report(args, devices=None, timeout=900):
  """`run`, then the JSON object a probe prints on its last line."""
  done = run(args, devices=devices, timeout=timeout)
  return json.loads(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
  """A free TCP port on the loopback address."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def assert_params_close(actual: dict, expected: dict, what: str,
                        atol: float = PARAM_ATOL) -> None:
  """Equal keys and values within `atol` (0: exactly), the zero-gradient
  key bias within its Adam-noise bound."""
  assert actual.keys() == expected.keys(), what
  for key in expected:
    tolerance = max(atol, KEY_BIAS_ATOL) if (
        atol and key.endswith(ZERO_GRADIENT)) else atol
    np.testing.assert_allclose(actual[key], expected[key], rtol=0,
                               atol=tolerance, err_msg=f"{what}: {key}")
