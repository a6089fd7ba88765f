"""scripts/bench_sharding.py: the HLO collective parser on a handwritten
module (exact bytes), and the script on 8 CPU devices at a tiny size."""

import functools
import importlib.util
import json
import os
import subprocess
import sys

import pytest
from script_helpers import REPO


@functools.cache
def _load_script():
  """The script as a module, once (its absl flags may be defined once)."""
  spec = importlib.util.spec_from_file_location(
      "bench_sharding", REPO / "scripts" / "bench_sharding.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # not __main__: XLA_FLAGS is left alone
  return module


# Every counting rule once: a tuple all-reduce (f32, bf16, a scalar, an
# index comment), a bf16 all-gather, an async s32 all-gather pair, a
# reduce-scatter (its operand is the larger side), a collective-permute, an
# all-reduce in a while body of 3 trips, an all-to-all in a generic async
# wrapper. (A backslash joins a long instruction's two source lines.)
_HLO = """\
HloModule test, entry_computation_layout={(f32[8,16]{1,0})->f32[]}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%body (carry: (s32[], f32[4,4])) -> (s32[], f32[4,4]) {
  %carry = (s32[], f32[4,4]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%carry), index=0
  %w = f32[4,4]{1,0} get-tuple-element(%carry), index=1
  %ar.loop = f32[4,4]{1,0} all-reduce(%w), channel_id=5, replica_groups={{0,1}}, to_apply=%add
  ROOT %next = (s32[], f32[4,4]{1,0}) tuple(%i, %ar.loop)
}

%cond (carry.1: (s32[], f32[4,4])) -> pred[] {
  %carry.1 = (s32[], f32[4,4]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%carry.1), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i.1, %n), direction=LT
}

%wrapped_all_to_all (a: f32[8,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  ROOT %a2a = f32[8,16]{1,0} all-to-all(%a), channel_id=7, replica_groups={{0,1}}, dimensions={0}
}

ENTRY %main (p0: f32[8,16], p1: bf16[2,16], p2: s32[4]) -> f32[] {
  %p0 = f32[8,16]{1,0} parameter(0)
  %p1 = bf16[2,16]{1,0} parameter(1)
  %p2 = s32[4]{0} parameter(2)
  %c = f32[] constant(0)
  %ag = bf16[16,16]{1,0} all-gather(%p1), channel_id=1, dimensions={0}
  %ags = (s32[4]{0}, s32[32]{0}) all-gather-start(%p2), dimensions={0}
  %agd = s32[32]{0} all-gather-done(%ags)
  %rs = f32[1,16]{1,0} reduce-scatter(%p0), dimensions={0}, to_apply=%add
  %ar = (f32[8,16]{1,0}, bf16[2,16]{1,0}, /*index=2*/f32[]) all-reduce(%p0, %p1, \
      /*index=2*/%c), to_apply=%add, metadata={op_name="jit(step)/grads"}
  %cp = f32[8,16]{1,0} collective-permute(%p0), channel_id=6, source_target_pairs={{0,1},{1,0}}
  %a2a-start = ((f32[8,16]{1,0}), f32[8,16]{1,0}, s32[]) all-to-all-start(%p0), \
      calls=%wrapped_all_to_all
  %a2a-done = f32[8,16]{1,0} all-to-all-done(%a2a-start)
  %zero = s32[] constant(0)
  %w0 = f32[4,4]{1,0} constant({...})
  %init = (s32[], f32[4,4]{1,0}) tuple(%zero, %w0)
  %loop = (s32[], f32[4,4]{1,0}) while(%init), condition=%cond, body=%body, \
      backend_config={"known_trip_count":{"n":"3"}}
  ROOT %out = f32[] constant(1)
}
"""


def test_collective_stats_counts_exact_bytes_of_a_handwritten_module():
  bench = _load_script()
  stats = bench.collective_stats(_HLO)
  assert not stats["unknown_trip_count"]
  kinds = stats["kinds"]
  assert set(kinds) == {"all-gather", "reduce-scatter", "all-reduce",
                        "collective-permute", "all-to-all"}
  # bf16[16,16] = 512 B gathered from bf16[2,16] = 64 B; the async pair
  # counts once, its result s32[32] = 128 B (the -done's), from s32[4].
  assert kinds["all-gather"] == dict(count=2, instructions=2,
                                     result_bytes=512 + 128,
                                     operand_bytes=64 + 16, bytes=640)
  # The larger side of a reduce-scatter is its operand, f32[8,16].
  assert kinds["reduce-scatter"] == dict(count=1, instructions=1,
                                         result_bytes=64,
                                         operand_bytes=512, bytes=512)
  # (f32[8,16], bf16[2,16], f32[]) = 512 + 64 + 4, and f32[4,4] x 3 trips.
  assert kinds["all-reduce"] == dict(count=4, instructions=2,
                                     result_bytes=580 + 3 * 64,
                                     operand_bytes=580 + 3 * 64,
                                     bytes=580 + 192)
  assert kinds["collective-permute"]["bytes"] == 512
  # The wrapped all-to-all counts once; its async-start wrapper does not.
  assert kinds["all-to-all"]["count"] == 1
  assert kinds["all-to-all"]["bytes"] == 512
  assert stats["largest"][0]["kind"] == "all-reduce"
  assert stats["largest"][0]["op_name"] == "jit(step)/grads"


def test_shape_bytes_of_arrays_tuples_and_dtypes():
  bench = _load_script()
  assert bench.shape_bytes("f32[]") == 4
  assert bench.shape_bytes("pred[16,20]{1,0}") == 320
  assert bench.shape_bytes("(bf16[8]{0}, /*index=1*/s32[2,2]{1,0})") == 32
  assert bench.shape_bytes("f32[<=8,2]{1,0}") == 64
  assert bench.shape_bytes("token[]") == 0
  with pytest.raises(ValueError, match="unknown HLO element type"):
    bench.shape_bytes("q7[3]")


def test_unknown_trip_count_is_reported():
  bench = _load_script()
  hlo = _HLO.replace(',       backend_config={"known_trip_count":{"n":"3"}}', "")
  stats = bench.collective_stats(hlo)
  assert stats["unknown_trip_count"]
  assert stats["kinds"]["all-reduce"]["count"] == 2  # the loop's once


def _bench_dp_and_fsdp(tmp_path, size: str):
  """The script on 8 CPU devices for dp and fsdp at `size`, batch 16 x 24:
  its CompletedProcess, the Markdown table and the JSON report."""
  flags_now = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                       if "xla_force_host_platform_device_count" not in f)
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags_now,
             PYTHONPATH=os.pathsep.join(filter(None, [
                 str(REPO), os.environ.get("PYTHONPATH")])))
  output = tmp_path / f"{size}.md"
  result = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "bench_sharding.py"),
       "--devices=8", "--strategies=dp,fsdp", f"--sizes={size}",
       "--batch_size=16", "--seq_len=24", f"--output={output}"],
      capture_output=True, text=True, check=False, timeout=600, cwd=tmp_path,
      env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / f"{size}.json") as f:
    return result, output.read_text(), json.load(f)


def test_script_measures_dp_and_fsdp_on_eight_cpu_devices(tmp_path):
  result, table, report = _bench_dp_and_fsdp(tmp_path, "tiny")
  assert "cpu: 8 x" in result.stdout
  assert "no wall time is reported" in result.stdout
  assert "PER DEVICE" in result.stdout
  for strategy in ("dp", "fsdp"):
    # One row in the traffic table and one in the memory table.
    assert table.count(f"| {strategy} | tiny |") == 2
  rows = {(r["strategy"], r["size"]): r for r in report["rows"]}
  assert list(rows) == [("dp", "tiny"), ("fsdp", "tiny")]
  dp, fsdp = rows["dp", "tiny"], rows["fsdp", "tiny"]
  assert dp["mesh"] == {"data": 8} and fsdp["mesh"] == {"fsdp": 8}
  grads = dp["param_bytes"]  # f32 gradients of every parameter
  assert dp["textbook"] == {"all-gather": 0, "reduce-scatter": 0,
                            "all-reduce": grads}
  # dp: the gradients are all-reduced (plus a few scalar metrics), and no
  # parameter is gathered: it is replicated already.
  assert grads <= dp["measured"]["all-reduce"]["bytes"] <= 1.1 * grads
  assert "all-gather" not in dp["measured"]
  # fsdp: every split parameter is gathered (at least once; the replicated
  # biases need not be) and gradients reduced, by reduce-scatter or
  # (XLA:CPU) all-reduce then slice.
  gathered = fsdp["measured"]["all-gather"]["bytes"]
  assert gathered >= fsdp["textbook"]["reduce-scatter"]
  assert fsdp["textbook"]["all-gather"] == 2 * fsdp["textbook"][
      "reduce-scatter"] > 0.9 * fsdp["param_bytes"]
  reduced = sum(fsdp["measured"].get(k, {}).get("bytes", 0)
                for k in ("reduce-scatter", "all-reduce"))
  assert reduced >= fsdp["textbook"]["reduce-scatter"]
  # The state is split 8 ways: far fewer argument bytes per device
  # (XLA:CPU reports memory_analysis(), so the figures are there).
  assert 0 < fsdp["memory"]["arguments"] < dp["memory"]["arguments"] / 4


def test_script_rejects_an_unknown_strategy(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  result = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "bench_sharding.py"),
       "--strategies=zero3"], capture_output=True, text=True, check=False,
      timeout=300, cwd=tmp_path, env=env)
  assert result.returncode != 0
  assert "--strategies: expected names among" in result.stderr


def test_recurrent_layers_keep_the_batch_split_and_loops_free_of_collectives(
    tmp_path):
  """dp on the LSTM all-reduces its gradients and gathers nothing (the
  deferred weight gradient once gathered the (time, batch) cotangents); fsdp
  gathers the kernels once, outside the time loops."""
  _, _, report = _bench_dp_and_fsdp(tmp_path, "lstm_tiny")
  rows = {r["strategy"]: r for r in report["rows"]}
  dp, fsdp = rows["dp"], rows["fsdp"]
  assert "all-gather" not in dp["measured"]
  assert dp["param_bytes"] <= dp["measured"]["all-reduce"]["bytes"] <= (
      1.1 * dp["param_bytes"])
  for kind, measured in fsdp["measured"].items():
    # Executions per step equal instructions in the HLO: none in a loop.
    assert measured["count"] == measured["instructions"], kind
  assert fsdp["measured"]["all-gather"]["bytes"] <= (
      1.1 * fsdp["param_bytes"])
