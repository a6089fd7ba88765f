"""The benchmark's main function on a tiny CPU grid."""

import csv
import os
import sys

import pytest
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import bench_attention  # pylint: disable=g-import-not-at-top,wrong-import-position

from kernels import benchmark  # pylint: disable=g-bad-import-order
from kernels import candidates  # pylint: disable=g-bad-import-order
from kernels.triton import block_sizes  # pylint: disable=g-bad-import-order


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


def test_kernel_rows_plan_applies_each_candidate_where_it_serves():
  """The kernel-row candidates: fwd_tma only non-causal, bwd_fused only with the
  backward, each with its candidate row; cuDNN and XLA without override."""
  spec = candidates.plan([4096], 16384, 16, 128, "bfloat16",
                                [False, True], ["fwd", "fwd+bwd"],
                                list(candidates.CANDIDATES))
  by = {(name, row.pass_, row.causal): override
        for name, row, override in spec}
  assert ("fwd_tma", "fwd", True) not in by
  assert ("bwd_fused", "fwd", False) not in by
  assert ("tma_fused", "fwd+bwd", True) not in by
  assert set(by[("tma_fused", "fwd+bwd", False)]) == {
      ("fwd_tma", 128, "bfloat16", False),
      ("bwd_fused", 128, "bfloat16", False)}
  assert by[("cudnn", "fwd", True)] == {} and by[("triton", "fwd", True)] == {}
  assert by[("fwd_128x128", "fwd", True)] == {
      ("fwd", 128, "bfloat16", True): block_sizes.BlockSizes(128, 128, 8, 3)}
  assert all(row.batch == 4 for _, row, _ in spec)


def test_kernel_rows_summary_ratios_and_goals():
  rows = []
  for name, tflops in (("triton", 380.0), ("fwd_tma", 470.0),
                       ("cudnn", 500.0), ("xla", None)):
    row = benchmark.Row(name, "fwd", 4096, 4, 16, 128, False, "bfloat16",
                        tflops=tflops)
    if tflops is None:
      row.status = "unsupported: no"
    rows.append(row)
  text = candidates.summary(rows)
  assert "| fwd | 4 x 4096 | False | 380 (0.76x) | 470 (0.94x) | " in text
  assert "500 (1.00x) | unsupported |" in text
  assert "fwd 4096 non-causal >= 458 TF/s: met (fwd_tma: 470 TF/s)" in text
  assert "fwd+bwd 4096 causal >= 330 TF/s: not measured" in text


def test_kernel_rows_script_times_the_candidates(tmp_path):
  """scripts/bench_kernel_rows.py end to end, the Triton kernels under the
  interpreter (their times mean nothing; the rows and the table do)."""
  import subprocess  # pylint: disable=g-import-not-at-top

  root = os.path.join(os.path.dirname(__file__), "..", "..")
  env = dict(os.environ, PYTHONPATH=root, RNN_TRANSFORMER_TRITON_INTERPRET="1")
  run = subprocess.run(
      [sys.executable, os.path.join(root, "scripts", "bench_kernel_rows.py"),
       "--seq_lens=32", "--tokens=64", "--num_heads=2", "--head_dim=64",
       "--causal=false", "--passes=fwd+bwd", "--warmup=0", "--iters=1",
       "--candidates=triton,tma_fused,xla", f"--out_dir={tmp_path}"],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(tmp_path / "kernel_rows.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["implementation"] for r in rows] == ["triton", "tma_fused", "xla"]
  assert {r["status"] for r in rows} == {"ok"}
  assert run.stdout.rstrip().endswith("- causal forward 4096 vs cuDNN: "
                                      "not measured")
  assert "| fwd+bwd | 2 x 32 | False |" in run.stdout
