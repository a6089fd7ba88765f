"""scripts/check_sharded_attention.py (the GPU lease's sharded step) at a
tiny size on this CPU: the per-shard call equals the unsharded one."""

import json

from tests.parallel.sharding_helpers import run
from tests.script_helpers import REPO


def test_per_shard_equals_unsharded_and_both_are_timed(tmp_path):
  out = tmp_path / "sharded.json"
  done = run([REPO / "scripts" / "check_sharded_attention.py",
              "--implementation=xla", "--batch=4", "--seq_len=32",
              "--heads=4", "--kv_heads=2", "--head_dim=16",
              "--dtype=float32", "--iters=2", "--repeats=2",
              f"--output={out}"], devices=2)
  report = json.loads(out.read_text())
  assert report["device"] == "2 x cpu"
  assert report["output_diff"] <= 1e-6 and report["grad_diff"] <= 1e-5
  assert [row["pass_"] for row in report["rows"]] == ["forward",
                                                      "forward+backward"]
  for row in report["rows"]:
    assert len(row["ratios"]) == 2 and all(r > 0 for r in row["ratios"])
  assert "| forward+backward |" in done.stdout
