"""The Transformer benchmark script runs end to end on a tiny config."""

import json

from script_helpers import run_bench


def _run_script(*flags, cwd):
  return run_bench("bench_transformer", *flags, cwd=cwd, timeout=300)


def test_bench_transformer_script_times_training_and_generation(tmp_path):
  result = _run_script("--config.implementations=('xla', 'blockwise', "
                       "'cudnn')",
                       "--config.seq_lens=(8,)", f"--output_dir={tmp_path}",
                       cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "| with KV cache | 8 |" in result.stdout
  with open(tmp_path / "bench_transformer.json") as f:
    report = json.load(f)
  assert [(r["implementation"], r["seq_len"]) for r in report["training"]] == [
      ("xla", 8), ("blockwise", 8)]
  # Attention through the cache: implementations that take q_offset (xla
  # cannot), each case by query offset and through all 32 cache rows.
  cache = report["cache_attention"]
  assert [(r["implementation"], r["case"], r["path"], r["new_tokens"])
          for r in cache] == [
              ("blockwise", "prefill chunk", "query offset", 4),
              ("blockwise", "prefill chunk", "32 query rows", 4),
              ("blockwise", "one decoded token", "query offset", 1),
              ("blockwise", "one decoded token", "32 query rows", 1),
              ("blockwise", "full forward", "32 query rows", 32)]
  assert all(r["ms"] > 0 for r in cache)
  assert [r["mode"] for r in report["generation"]] == [
      "with KV cache", "without cache (full forward per token)"]
  assert all(r["tokens_per_s"] > 0 for r in report["training"] +
             report["generation"])
  # cuDNN needs a GPU: reported as skipped with the reason, never silently.
  assert [s.split(":")[0] for s in report["skipped"]] == ["cudnn"]


def test_bench_transformer_rejects_an_unknown_implementation(tmp_path):
  result = _run_script("--config.implementations=('flash',)", cwd=tmp_path)
  assert result.returncode != 0
  assert "config.implementations: expected names from" in result.stderr
