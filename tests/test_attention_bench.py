"""The benchmark's main function on a tiny CPU grid."""

import csv
import os
import sys

from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import bench_attention  # pylint: disable=g-import-not-at-top,wrong-import-position

from kernels import benchmark  # pylint: disable=g-bad-import-order


def test_flops_convention():
  assert benchmark.flops(1, 1, 4, 8, False, False) == 4 * 16 * 8
  assert benchmark.flops(1, 1, 4, 8, True, True) == 4 * 16 * 8 / 2 * 3.5


def test_main_writes_expected_rows(tmp_path):
  argv = ["bench", "--seq_lens=32", "--head_dims=32", "--tokens=64",
          "--num_heads=2", "--implementations=xla,blockwise", "--warmup=1",
          "--iters=1", f"--out_dir={tmp_path}"]
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    bench_attention.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  with open(tmp_path / "attention_bench.csv") as f:
    rows = list(csv.DictReader(f))
  # 1 length x 1 head_dim x 2 causal x 2 passes x 2 implementations.
  assert len(rows) == 8
  assert {r["implementation"] for r in rows} == {"xla", "blockwise"}
  assert {r["status"] for r in rows} == {"ok"}
  assert all(float(r["ms"]) > 0 and float(r["peak_mib"]) > 0 for r in rows)
  assert (tmp_path / "attention_bench.md").read_text().count("\n| xla") == 4
