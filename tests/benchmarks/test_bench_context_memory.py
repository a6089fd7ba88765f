"""scripts/bench_context_memory.py at a tiny size: memory per device falls
with the context degree, and the outputs are written."""

import json

from tests.parallel.sharding_helpers import run
from tests.script_helpers import REPO


def test_memory_per_device_falls_with_the_context_degree(tmp_path):
  done = run([REPO / "scripts" / "bench_context_memory.py",
              "--contexts=1,4", "--seq_lens=512,1024", "--model_dim=32",
              "--budget_mib=1", f"--output_dir={tmp_path}"])
  assert "| context | n=512 | n=1024 |" in done.stdout
  report = json.loads((tmp_path / "context_memory.json").read_text())
  one, four = report["bytes"]["1"], report["bytes"]["4"]
  for n in ("512", "1024"):
    assert four[n] < one[n], n
  assert one["1024"] > one["512"]  # grows with the sequence
  assert (tmp_path / "context_memory.png").stat().st_size > 0
  assert set(report["longest_within_budget"]) == {"1", "4"}
