"""The benchmark's main function on a tiny CPU grid."""

import csv
import os
import sys

import pytest
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import bench_attention  # pylint: disable=g-import-not-at-top,wrong-import-position

from kernels import benchmark  # pylint: disable=g-bad-import-order


def test_flops_convention():
  assert benchmark.flops(1, 1, 4, 8, False, False) == 4 * 16 * 8
  assert benchmark.flops(1, 1, 4, 8, True, True) == 4 * 16 * 8 / 2 * 3.5


@pytest.mark.parametrize("seq,window", [(1, 0), (7, 3), (16, 40), (33, 8)])
@pytest.mark.parametrize("causal", [False, True])
def test_window_pairs_count_the_brute_force_mask(seq, window, causal):
  allowed = sum(1 for i in range(seq) for j in range(seq)
                if i - window <= j <= i + (0 if causal else window))
  assert benchmark.window_pairs(seq, window, causal) == allowed
  assert benchmark.flops(2, 3, seq, 8, causal, True, window) == (
      4 * 2 * 3 * allowed * 8 * 3.5)


def _run_main(argv, out_dir):
  """Runs the script's main with `argv`; the rows of its CSV in out_dir."""
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    bench_attention.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  with open(out_dir / "attention_bench.csv") as f:
    return list(csv.DictReader(f))


def test_main_writes_expected_rows(tmp_path):
  argv = ["bench", "--seq_lens=32", "--head_dims=32", "--tokens=64",
          "--num_heads=2", "--implementations=xla,blockwise", "--warmup=1",
          "--iters=1", f"--out_dir={tmp_path}"]
  rows = _run_main(argv, tmp_path)
  # 1 length x 1 head_dim x 2 causal x 2 passes x 2 implementations.
  assert len(rows) == 8
  assert {r["implementation"] for r in rows} == {"xla", "blockwise"}
  assert {r["status"] for r in rows} == {"ok"}
  assert all(float(r["ms"]) > 0 and float(r["peak_mib"]) > 0 for r in rows)
  assert (tmp_path / "attention_bench.md").read_text().count("\n| xla") == 4


def test_main_times_sliding_window_rows(tmp_path):
  argv = ["bench", "--seq_lens=48", "--head_dims=32", "--tokens=48",
          "--num_heads=2", "--implementations=xla,blockwise", "--warmup=0",
          "--iters=1", "--window=8", "--causal=true", f"--out_dir={tmp_path}"]
  rows = _run_main(argv, tmp_path)
  assert len(rows) == 4  # causal only, 2 passes x 2 implementations
  assert {(r["causal"], r["window"], r["status"]) for r in rows} == {
      ("True", "8", "ok")}
