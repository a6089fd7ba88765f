"""Shared pytest configuration: the `gpu` marker skips with a reason off-GPU."""

import jax
import pytest


def _has_cuda_gpu() -> bool:
  try:
    return any(d.platform == "gpu" for d in jax.devices())
  except RuntimeError:
    return False


def pytest_collection_modifyitems(config, items):
  del config
  if _has_cuda_gpu():
    return
  skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none visible to jax")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip_gpu)
