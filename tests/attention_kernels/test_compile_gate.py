"""The compile gate's parts: launch recording, compile specs, ptxas parsing,
the failure rules, one real sm_90 compile, and the compute-capability knob.

The whole gate (every table row, sm_80 and sm_90) runs in CI as
`python scripts/check_kernels.py`.
"""

import collections
import concurrent.futures
import os
import pathlib
import subprocess
import sys
from unittest import mock

import jax
import pytest

import kernels
from kernels.gate import aot_compile
from kernels.gate import compile_gate
from kernels.triton import block_sizes
from kernels.triton import compiling
from kernels.triton import launch as triton_launch

_PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_attn_fwd' for 'sm_90a'
ptxas info    : Function properties for _attn_fwd
    24 bytes stack frame, 28 bytes spill stores, 20 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 24 bytes cumulative stack size
"""


def test_parse_ptxas_log():
  assert aot_compile.parse_ptxas_log(_PTXAS_LOG) == (255, 28, 20)
  with pytest.raises(ValueError, match="no register or spill line"):
    aot_compile.parse_ptxas_log("ptxas info    : 0 bytes gmem\n")


def test_count_instructions_and_target():
  ptx = (".version 8.7\n.target sm_90a\n wgmma.mma_async.sync.aligned.m64n64k16"
         "\n wgmma.mma_async.sync x\n cp.async.bulk.tensor.2d x\n")
  assert aot_compile.count_instructions(ptx) == dict(wgmma=2, tma=1, tcgen05=0)
  assert aot_compile.ptx_target(ptx) == "sm_90a"
  assert aot_compile.arch_name(80) == "sm_80"
  assert aot_compile.arch_name(100) == "sm_100a"


_SASS = """\
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;
        /*0020*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0030*/                   FSEL R5, R6, -INF , P0 ;
        /*0040*/               @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0050*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0060*/              @!P1 BRA `(.L_x_1) ;
        /*0070*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0080*/                   EXIT ;
"""


def test_sass_loops_counts_each_mma_loop_body_once():
  """A backward branch closes a loop; loops without MMAs and forward
  branches are not loops of interest."""
  assert aot_compile.sass_loops(_SASS) == [aot_compile.LoopBody(
      instructions=4, compares=1, selects=1, mma=1)]


def _names(records):
  return [r.name for r in records]


def test_forward_and_gradient_launches_follow_the_table():
  records = compile_gate.trace_launches(64, "bfloat16", True, "gqa")
  assert _names(records) == ["_attn_fwd", "_attn_bwd_preprocess",
                             "_attn_bwd_dkdv", "_attn_bwd_dq"]
  seq, heads, kv_heads = compile_gate._SEQ_LEN, 16, 4  # pylint: disable=protected-access
  for record in records:
    constexprs = dict(record.constexprs)
    assert constexprs["HEAD_DIM"] == 64
    kernel = compile_gate.TABLE_KERNEL.get(record.name)
    if kernel is None:
      continue
    row = block_sizes.TABLE[(kernel, 64, "bfloat16", True)]
    assert (constexprs["BLOCK_M"], constexprs["BLOCK_N"]) == (row.block_m,
                                                              row.block_n)
    assert (record.num_warps, record.num_stages) == (row.num_warps,
                                                     row.num_stages)
    blocks, programs = ((-(-seq // row.block_n), kv_heads)
                        if kernel == "bwd_dkdv" else
                        (-(-seq // row.block_m), heads))
    assert record.grid == (blocks, programs)


def test_decode_traces_the_forward_only_with_q_len_a_constexpr():
  (record,) = compile_gate.trace_launches(128, "float16", True, "decode")
  spec = compiling.launch_spec(record)
  signature = dict(spec.signature)
  assert signature["q_len"] == "constexpr"  # jax-triton specialises 1
  assert dict(spec.constexprs)["q_len"] == 1
  assert signature["kv_len"] == "i32"
  assert signature["scale"] == "fp32"
  assert signature["Q"] == "*fp16" and signature["LSE"] == "*fp32"
  assert spec.pointer_args == tuple(
      i for i, (_, t) in enumerate(spec.signature) if t.startswith("*"))


def test_override_is_never_served_from_a_stale_trace():
  """Same shapes, new block sizes: the recorded launch has the new ones."""
  row = ("fwd", 32, "float32", False)
  before = compile_gate.trace_launches(32, "float32", False, "plain")[0]
  new = block_sizes.BlockSizes(16, 16, 2, 1)
  with block_sizes.override({row: new}):
    after = compile_gate.trace_launches(32, "float32", False, "plain")[0]
  assert dict(after.constexprs)["BLOCK_M"] == 16
  assert (after.num_warps, after.num_stages) == (2, 1)
  assert dict(before.constexprs)["BLOCK_M"] == block_sizes.TABLE[row].block_m


def _launch(kernel="_attn_fwd", row=("fwd", 64, "bfloat16", True),
            pointer_type="*bf16"):
  spec = compiling.CompileSpec(
      module="kernels.triton.attention", kernel=kernel,
      signature=(("Q", pointer_type), ("q_len", "i32")), constexprs=(),
      pointer_args=(0,), num_warps=4, num_stages=3)
  return compile_gate.Launch(spec, row, ("plain",))


def _ok(capability, **changes):
  fields = dict(capability=capability, registers=128, spill_stores=0,
                spill_loads=0, shared_bytes=1024, wgmma=8, tma=0, tcgen05=0)
  fields.update(changes)
  return aot_compile.CompileResult(**fields)


def test_check_names_every_failure_rule():
  rows = [("fwd", 64, "bfloat16", True), ("bwd_dq", 64, "bfloat16", True)]
  launches = [_launch(), _launch()]
  assert compile_gate.check(launches, {(0, 90): _ok(90)}, rows[:1]) == []
  failures = compile_gate.check(launches, {
      (0, 90): _ok(90, spill_stores=8, spill_loads=4, shared_bytes=300000,
                   wgmma=0),
      (1, 80): _ok(80, error="PTXASError: boom\nmore")}, rows)
  text = "\n".join(failures)
  assert "spills 8 B stored, 4 B loaded" in text
  assert "shared memory 300000 B over the limit 232448 B" in text
  assert "without wgmma" in text
  assert "compile error: PTXASError: boom" in text
  assert "table row ('bwd_dq', 64, 'bfloat16', True) was never compiled" in text
  scratch = compile_gate.check(
      launches[:1], {(0, 90): _ok(90, global_scratch=128)}, rows[:1])
  assert len(scratch) == 1 and "128 B of global scratch" in scratch[0]


def test_float32_kernels_are_not_required_to_use_wgmma():
  launch = _launch(row=("fwd", 64, "float32", True), pointer_type="*fp32")
  assert compile_gate.check([launch], {(0, 90): _ok(90, wgmma=0)},
                            [("fwd", 64, "float32", True)]) == []


def test_one_real_compile_for_sm90():
  """A bfloat16 forward compiles for Hopper: tensor cores, no spill."""
  launches = [launch for launch in compile_gate.collect_launches(
      [("fwd", 32, "bfloat16", False)], ["plain"], extra_head_dims=())
                if launch.kernel == "_attn_fwd"]
  ((_, result),) = compile_gate.compile_all(launches, [90], jobs=1).items()
  assert result.error is None, result.error
  assert result.ptx_target == "sm_90a"
  assert 0 < result.registers <= aot_compile.MAX_REGISTERS
  assert result.spill_bytes == 0
  assert result.wgmma > 0
  assert 0 < result.shared_bytes <= aot_compile.SHARED_MEMORY_LIMIT[90]


def test_tma_descriptors_compile_for_hopper_but_need_scratch_jaxlib_nulls():
  """The evidence of `kernels.gate.tma_probe`: a device-side descriptor copy is
  TMA on sm_90 and needs global scratch, so the gate would refuse it."""
  launch = compile_gate.Launch(compile_gate.TMA_PROBE, None, ("probe",))
  results = compile_gate.compile_all([launch], [90], jobs=1)
  result = results[(0, 90)]
  assert result.error is None, result.error
  assert result.tma >= 2  # one bulk tensor load, one store
  assert result.global_scratch >= 2 * 128  # one CUtensorMap per descriptor
  (failure,) = compile_gate.check([launch], results, rows=[])
  assert "null pointer" in failure


def test_tma_variant_traces_the_hopper_forward_on_sm90_only():
  """The "tma" variant: the candidate row's Hopper forward, own call, for
  non-causal 16-bit rows of the candidates' head dims on sm_90; nothing
  elsewhere."""
  (record,) = compile_gate.trace_launches(128, "bfloat16", False, "tma", 90)
  assert record.name == "_attn_fwd_tma" and record.own_call
  tile = block_sizes.TMA_CANDIDATES[(128, "bfloat16")]
  assert (dict(record.constexprs)["BLOCK_N"], record.num_warps,
          record.num_stages) == (tile.block_n, tile.num_warps,
                                 tile.num_stages)
  assert dict(record.constexprs)["WARP_SPECIALIZE"] is True
  for args in ((128, "bfloat16", False, "tma", 80),
               (128, "bfloat16", True, "tma", 90),
               (128, "float32", False, "tma", 90),
               (32, "bfloat16", False, "tma", 90)):
    assert compile_gate.trace_launches(*args) == [], args


def test_check_accepts_scratch_for_the_own_call_only():
  spec = compiling.CompileSpec(
      module="kernels.triton.attention_hopper", kernel="_attn_fwd_tma",
      signature=(("Q", "*bf16"),), constexprs=(), pointer_args=(0,),
      num_warps=4, num_stages=2)
  row = (block_sizes.TMA_KERNEL, 128, "bfloat16", False)
  own = compile_gate.Launch(spec, row, ("tma",), own_call=True)
  good = _ok(90, global_scratch=384, tma=4, num_warps=12)
  assert compile_gate.check([own], {(0, 90): good}, rows=[]) == []
  not_own = compile_gate.Launch(spec, row, ("tma",))
  (failure,) = compile_gate.check([not_own], {(0, 90): good}, rows=[])
  assert "384 B of global scratch" in failure
  failures = compile_gate.check(
      [own], {(0, 90): _ok(90, global_scratch=384, tma=0, num_warps=4)},
      rows=[])
  assert len(failures) == 2
  assert "without TMA copies" in failures[0]
  assert "not warp-specialized (4 warps compiled for 4" in failures[1]


def test_the_hopper_forward_compiles_warp_specialized_for_sm90():
  """One real compile of the tma variant: 12 warps from 4, TMA copies,
  descriptor scratch, wgmma, no spill; the gate accepts it."""
  launches = [launch for launch in compile_gate.collect_launches(
      [("fwd", 64, "bfloat16", False)], ["tma"], extra_head_dims=(),
      capabilities=(90,))]
  assert [launch.kernel for launch in launches] == ["_attn_fwd_tma"]
  results = compile_gate.compile_all(launches, [90], jobs=1)
  result = results[(0, 90)]
  assert result.error is None, result.error
  assert result.num_warps == 12 and result.tma > 0 and result.wgmma > 0
  assert result.global_scratch > 0 and result.spill_bytes == 0
  assert compile_gate.check(launches, results, rows=[]) == []


@pytest.mark.parametrize("bad,error", [("90", TypeError), (9.0, TypeError),
                                       (True, TypeError), (5, ValueError)])
def test_compute_capability_must_be_an_int(bad, error):
  with pytest.raises(error, match="compute capability"):
    with kernels.cuda_compute_capability(bad):
      pass


def test_compute_capability_from_the_environment(monkeypatch):
  monkeypatch.setenv(kernels.COMPUTE_CAPABILITY_ENV, "80")
  assert triton_launch.compute_capability() == 80
  with kernels.cuda_compute_capability(90):
    assert triton_launch.compute_capability() == 90
  monkeypatch.setenv(kernels.COMPUTE_CAPABILITY_ENV, "sm90")
  with pytest.raises(ValueError, match=kernels.COMPUTE_CAPABILITY_ENV):
    triton_launch.compute_capability()


def test_the_call_route_from_the_environment(monkeypatch):
  monkeypatch.delenv(triton_launch.CALL_ENV, raising=False)
  assert triton_launch.call_requested() == "jax_triton"
  monkeypatch.setenv(triton_launch.CALL_ENV, "own")
  assert triton_launch.call_requested() == "own"
  monkeypatch.setenv(triton_launch.CALL_ENV, "jax-triton")
  with pytest.raises(ValueError, match=f"{triton_launch.CALL_ENV} must be "
                     r"one of \('jax_triton', 'own'\), got 'jax-triton'"):
    triton_launch.call_requested()


@pytest.mark.parametrize("reported, want", [("9.0", 90), ("8.6", 86),
                                             (None, None)])
def test_target_capability_asks_gpu_zero_unless_one_is_requested(
    monkeypatch, reported, want):
  monkeypatch.delenv(kernels.COMPUTE_CAPABILITY_ENV, raising=False)
  device = mock.Mock(spec=["compute_capability"], compute_capability=reported)
  monkeypatch.setattr(triton_launch.jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(triton_launch.jax, "local_devices", lambda: [device])
  assert triton_launch.target_capability() == want
  with kernels.cuda_compute_capability(80):
    assert triton_launch.target_capability() == 80


def test_target_capability_without_a_gpu_is_the_requested_one(monkeypatch):
  monkeypatch.delenv(kernels.COMPUTE_CAPABILITY_ENV, raising=False)
  if jax.default_backend() == "gpu":
    pytest.skip("a GPU is present: its capability is the target")
  assert triton_launch.target_capability() is None
  with kernels.cuda_compute_capability(90):
    assert triton_launch.target_capability() == 90


def test_recording_returns_zeros_and_runs_nothing():
  q = jax.numpy.ones((1, 40, 2, 32), jax.numpy.float32)
  with triton_launch.recording() as records:
    out = compile_gate.triton_ops.attention_triton(
        q, q, q, compile_gate.masking.Mask(), 0.5, interpret=False)
  assert _names(records) == ["_attn_fwd"]
  assert float(abs(out).max()) == 0.0


def test_recording_works_where_triton_is_interpreted():
  """pytest workers import triton for the interpreter; the gate traces anyway.

  In a fresh process: triton holds one mode per process.
  """
  script = (
      "from kernels.gate import compile_gate\n"
      "from kernels.triton import compiling\n"
      "from kernels.triton import launch as triton_launch\n"
      "triton_launch.import_kernels('kernels.triton.attention', True)\n"
      "r = compile_gate.trace_launches(32, 'bfloat16', False, 'segments')\n"
      "print(r[0].name, compiling.launch_spec(r[0]).module)\n")
  root = pathlib.Path(__file__).resolve().parents[2]
  run = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       text=True, cwd=root, timeout=300, check=False,
                       env=dict(os.environ, PYTHONPATH=str(root),
                                JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.split() == ["_attn_fwd", "kernels.triton.attention"]


def test_recording_first_leaves_the_interpreter_usable_without_a_gpu():
  """The gate's tracing, first in a GPU-less process, must not lock triton
  into compiled mode: the interpreter still runs a kernel afterwards."""
  pytest.importorskip("torch", reason="the interpreter launches need torch")
  script = (
      "import jax.numpy as jnp, kernels\n"
      "from kernels.gate import compile_gate\n"
      "compile_gate.trace_launches(32, 'bfloat16', True, 'plain')\n"
      "q = jnp.ones((1, 20, 2, 32))\n"
      "with kernels.triton_interpret(True):\n"
      "  out = kernels.attention(q, q, q, causal=True, "
      "implementation='triton')\n"
      "print(float(abs(out - 1.0).max()))\n")
  root = pathlib.Path(__file__).resolve().parents[2]
  env = {k: v for k, v in os.environ.items()
         if k not in ("TRITON_INTERPRET", triton_launch.INTERPRET_ENV)}
  run = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       text=True, cwd=root, timeout=300, check=False,
                       env=dict(env, PYTHONPATH=str(root), JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-3000:]
  assert float(run.stdout.split()[-1]) < 1e-6  # attention over equal values


def test_row_summary_takes_the_worst_variant():
  row = ("fwd", 64, "bfloat16", True)
  launches = [_launch(row=row), _launch(row=row), _launch(row=None)]
  summary = compile_gate.format_row_summary(launches, {
      (0, 90): _ok(90, registers=100, shared_bytes=2048),
      (1, 90): _ok(90, registers=200, spill_stores=4, shared_bytes=1024),
      (2, 90): _ok(90, registers=255, spill_stores=99)})
  tile = block_sizes.TABLE[row]
  assert (f"| fwd | 64 | bfloat16 | True | {tile.block_m}x{tile.block_n}, "
          f"{tile.num_warps}, {tile.num_stages} | 200 / 4 / 2 |") in summary


def test_extra_head_dims_trace_under_their_tile_rows():
  """Head dims that are not tile widths compile in the padded tile of their
  row, the plain variant only, in the rows' 16-bit and float32 dtypes."""
  rows = [("fwd", 32, "bfloat16", True), ("fwd", 128, "float16", False)]
  launches = compile_gate.collect_launches(rows, ["plain"],
                                           extra_head_dims=(24, 80, 160),
                                           capabilities=(80,))
  dims = sorted((dict(launch.spec.constexprs)["HEAD_DIM"],
                 dict(launch.spec.constexprs)["HEAD_DIM_PAD"], launch.row)
                for launch in launches if launch.kernel == "_attn_fwd")
  assert dims == [(24, 32, ("fwd", 32, "bfloat16", True)),
                  (32, 32, ("fwd", 32, "bfloat16", True)),
                  (128, 128, ("fwd", 128, "float16", False))]


def test_capability_rows_replace_table_rows_on_their_capability_only():
  """`CAPABILITY_TABLE` rows: looked up for their capability, traced into
  their own launch, compiled for that capability alone."""
  capability, rows = next(iter(block_sizes.CAPABILITY_TABLE.items()))
  row, tile = next(iter(rows.items()))
  assert tile != block_sizes.TABLE[row]
  kernel, head_dim, dtype, causal = row
  for target, want in ((capability, tile), (None, block_sizes.TABLE[row]),
                       (80, block_sizes.TABLE[row])):
    assert block_sizes.lookup(kernel, head_dim, dtype, causal,
                              interpret=False, capability=target) == want
  assert block_sizes.lookup(kernel, head_dim, dtype, causal, interpret=True,
                            capability=capability) == block_sizes.INTERPRET
  shared_row = next(key for key in block_sizes.TABLE if key not in rows)
  launches = compile_gate.collect_launches([row, shared_row], ["plain"],
                                           extra_head_dims=(),
                                           capabilities=(80, capability))
  by_target = {launch.capabilities: dict(launch.spec.constexprs)
               for launch in launches if launch.row == row}
  assert by_target == {
      (80,): mock.ANY, (capability,): mock.ANY}
  assert (by_target[(capability,)]["BLOCK_M"],
          by_target[(capability,)]["BLOCK_N"]) == (tile.block_m, tile.block_n)
  # Every kernel of the call splits exactly where its row has a capability
  # entry; a row without one is shared: one launch for both capabilities.
  targets_by_row = collections.defaultdict(set)
  for launch in launches:
    if launch.row:
      targets_by_row[launch.row].add(launch.capabilities)
  assert row in targets_by_row and shared_row in targets_by_row
  for launch_row, targets in targets_by_row.items():
    assert targets == ({(80,), (capability,)} if launch_row in rows
                       else {(80, capability)}), launch_row
  # compile_all asks for each launch on its own capabilities only.
  with mock.patch.object(compile_gate.aot_compile, "compile_and_measure",
                         side_effect=lambda spec, c, *_: _ok(c)), \
      mock.patch.object(compile_gate.concurrent.futures,
                        "ProcessPoolExecutor", _InlineExecutor):
    results = compile_gate.compile_all(launches, [80, capability], jobs=1)
  assert sorted(c for (i, c) in results
                if launches[i].row == row) == [80, capability]
  assert compile_gate.check(launches, results, [row]) == []
  # A requested capability that compiled nothing of the row fails the gate.
  (failure,) = compile_gate.check(launches, results, [row],
                                  capabilities=[80, capability, 100])
  assert "never compiled for sm_100" in failure


def test_capability_rows_replace_table_rows_and_are_gated_by_default():
  """Every CAPABILITY_TABLE key is a TABLE key (the gate traces TABLE's
  calls) and every capability is among check_kernels.py's default --archs."""
  root = pathlib.Path(__file__).resolve().parents[2]
  script = (root / "scripts" / "check_kernels.py").read_text()
  default_archs = script.split('"archs", [', 1)[1].split("]", 1)[0]
  for capability, rows in block_sizes.CAPABILITY_TABLE.items():
    assert set(rows) <= set(block_sizes.TABLE)
    assert f'"{capability}"' in default_archs


class _InlineExecutor(concurrent.futures.Executor):
  """Runs submitted calls at once, in this process."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def submit(self, fn, *args, **kwargs):
    future = concurrent.futures.Future()
    future.set_result(fn(*args, **kwargs))
    return future


@pytest.mark.slow
def test_kernel_anatomy_script_reports_the_interior_loop_without_masks():
  """scripts/kernel_anatomy.py on one case: the forward's interior loop body
  has MMAs and no selects, its edge loop has the mask's selects."""
  root = pathlib.Path(__file__).resolve().parents[2]
  run = subprocess.run(
      [sys.executable, "scripts/kernel_anatomy.py",
       "--cases=64:bfloat16:causal:plain", "--archs=90", "--jobs=1"],
      capture_output=True, text=True, cwd=root, timeout=600, check=False,
      env=dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-3000:]
  (forward,) = [line for line in run.stdout.splitlines()
                if "| _attn_fwd |" in line]
  bodies = [[int(n) for n in body.split(" / ")]
            for body in forward.split("|")[-2].split(",")]
  interior, edge = bodies  # instructions / compares / selects / MMAs
  assert interior[3] > 0 and interior[2] == 0
  assert edge[3] > 0 and edge[2] > 0
