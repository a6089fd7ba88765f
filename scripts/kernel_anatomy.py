"""Per-iteration SASS of the attention kernels' hot loops, compiled on a CPU.

For each case (head_dim, dtype, causal, call variant of the compile gate) it
traces the library's launches, compiles them for each arch with Triton and
its bundled ptxas, disassembles the cubin with the bundled nvdisasm, and
prints registers, spill bytes and every tensor-core loop body: instructions,
compares (ISETP/FSETP: mask arithmetic), selects (SEL/FSEL: masked
`tl.where`) and MMAs per iteration. `--kernel_source` compiles another
version of `kernels/triton/attention.py` (e.g. `git show REV:...`) with the
same launches and tiles, for before/after figures:

  PYTHONPATH=.gate-triton/3.6.0:. python scripts/kernel_anatomy.py
  git show 3aad59e:kernels/triton/attention.py > /tmp/before.py
  PYTHONPATH=.gate-triton/3.6.0:. python scripts/kernel_anatomy.py \\
      --kernel_source=/tmp/before.py
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import shutil
import sys
import tempfile

from absl import app
from absl import flags

from kernels.gate import aot_compile
from kernels.gate import compile_gate
from kernels.triton import compiling

_CASES = flags.DEFINE_list(
    "cases", ["128:bfloat16:full:plain", "128:bfloat16:causal:plain",
              "64:bfloat16:causal:plain", "128:bfloat16:causal:window_softcap",
              "128:bfloat16:full:segments"],
    "head_dim:dtype:full|causal:variant (a compile-gate variant).")
_ARCHS = flags.DEFINE_list("archs", ["90"], "Compute capabilities.")
_KERNEL_SOURCE = flags.DEFINE_string(
    "kernel_source", None,
    "Compile this file in place of kernels/triton/attention.py.")
_JOBS = flags.DEFINE_integer("jobs", 2, "Parallel compile processes.")
_SOURCE_MODULE = "anatomy_kernels"


def _measure(spec: compiling.CompileSpec, capability: int, path: str):
  if path not in sys.path:
    sys.path.insert(0, path)
  compiled = compiling.compile_kernel(spec, capability)
  registers, stores, loads = aot_compile.ptxas_resources(compiled.asm["ptx"],
                                                         capability)
  loops = aot_compile.sass_loops(
      aot_compile.disassemble(compiled.asm["cubin"], capability))
  return registers, stores + loads, loops


def _launches(case: str, capability: int):
  head_dim, dtype, causal, variant = case.split(":")
  for record in compile_gate.trace_launches(int(head_dim), dtype,
                                            causal == "causal", variant,
                                            capability):
    if record.name in compile_gate.TABLE_KERNEL:
      yield case, compiling.launch_spec(record)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    if _KERNEL_SOURCE.value:
      shutil.copy(_KERNEL_SOURCE.value,
                  os.path.join(tmp, _SOURCE_MODULE + ".py"))
    tasks = []
    for case in _CASES.value:
      for arch in map(int, _ARCHS.value):
        for _, spec in _launches(case, arch):
          if _KERNEL_SOURCE.value:
            spec = dataclasses.replace(spec, module=_SOURCE_MODULE)
          tasks.append((case, spec, arch))
    with concurrent.futures.ProcessPoolExecutor(
        _JOBS.value, mp_context=multiprocessing.get_context("spawn"),
        initializer=aot_compile.init_worker,
        initargs=(os.path.join(tmp, "cache"),)) as pool:
      results = list(pool.map(_measure, *zip(*[(s, a, tmp)
                                                for _, s, a in tasks])))
  print("| case | kernel | tile, warps, stages | arch | registers | spill B "
        "| loop bodies: instructions / compares / selects / MMAs |")
  print("|" + " --- |" * 7)
  for (case, spec, arch), (registers, spill, loops) in zip(tasks, results):
    constexprs = dict(spec.constexprs)
    tile = (f"{constexprs['BLOCK_M']}x{constexprs['BLOCK_N']}, "
            f"{spec.num_warps}, {spec.num_stages}")
    bodies = ", ".join(f"{b.instructions} / {b.compares} / {b.selects} / "
                       f"{b.mma}" for b in loops)
    print(f"| {case} | {spec.kernel} | {tile} | "
          f"{aot_compile.arch_name(arch)} | {registers} | {spill} | "
          f"{bodies} |")


if __name__ == "__main__":
  app.run(main)
