"""The compile gate: compiles every Triton attention launch for real GPUs.

No GPU is needed: Triton's wheel bundles ptxas. For every row of
`kernels/triton/block_sizes.py` and every call variant (plain, segment ids,
grouped-query, decode, window/soft-cap, query offsets, and on sm_90 the
optional Hopper forward and fused backward on their candidate rows) the
real forward and gradient are
traced once per `--archs` entry (whose `CAPABILITY_TABLE` rows apply), each
distinct launch is compiled for the archs that make it, and a table of
registers, spill
bytes, shared memory, wgmma/TMA instruction counts and compile time is
printed. Exits 1 on a compile error, shared memory over the limit, any spill,
a table row never compiled, a 16-bit kernel on sm_90 without wgmma, global
scratch in a jax-triton launch, or a Hopper forward without TMA or warp
specialization.

  python scripts/check_kernels.py                           # sm_80 and sm_90
  python scripts/check_kernels.py --archs=80,90,100 --jobs=2 --out=gate.md
  python scripts/check_kernels.py --ptxas=/usr/local/cuda/bin/ptxas  # the host's ptxas
"""

import platform
import sys
import time

from absl import app
from absl import flags

from kernels.gate import aot_compile
from kernels.gate import compile_gate

_ARCHS = flags.DEFINE_list(
    "archs", ["80", "90"],
    "Compute capabilities to compile for; 100 (Blackwell) needs ptxas >= "
    "12.8 and is skipped with a note when the ptxas in use is older.")
_VARIANTS = flags.DEFINE_list("variants", list(compile_gate.VARIANTS),
                              "Call variants to trace.")
_HEAD_DIMS = flags.DEFINE_list("head_dims", [],
                               "Only these head dims (default: every row).")
_DTYPES = flags.DEFINE_list("dtypes", [], "Only these dtypes (default: all).")
_JOBS = flags.DEFINE_integer("jobs", 2, "Parallel compile processes.")
_PTXAS = flags.DEFINE_string(
    "ptxas", None,
    "Take registers and spills from this ptxas instead of the one Triton "
    "bundles (e.g. a CUDA 13 ptxas from the nvidia-cuda-nvcc wheel, or the "
    "GPU host's).")
_OUT = flags.DEFINE_string("out", None, "Also write the table here.")
_DEVICE = flags.DEFINE_bool(
    "device", False,
    "Also load each cubin on GPU 0 and record the driver's register and "
    "spill counts (a GPU of each --archs capability is needed).")


def _rows():
  rows = compile_gate.table_rows()
  if _HEAD_DIMS.value:
    rows = [r for r in rows if str(r[1]) in _HEAD_DIMS.value]
  if _DTYPES.value:
    rows = [r for r in rows if r[2] in _DTYPES.value]
  if not rows:
    raise app.UsageError("--head_dims/--dtypes select no table row")
  return rows


def _capabilities() -> list[int]:
  capabilities = []
  for arch in _ARCHS.value:
    try:
      capability = int(arch.removeprefix("sm_"))
    except ValueError:
      raise app.UsageError(f"--archs takes compute capabilities such as 80, "
                           f"90, 100; got {arch!r}") from None
    if not aot_compile.ptxas_supports(capability, _PTXAS.value):
      print(f"note: skipping sm_{capability}: the ptxas in use "
            f"({_ptxas_label(capability)}) does not know it")
      continue
    capabilities.append(capability)
  if not capabilities:
    raise app.UsageError("no --archs entry can be compiled")
  return capabilities


def _ptxas_label(capability: int) -> str:
  path = _PTXAS.value or aot_compile.bundled_ptxas(capability)
  major, minor = aot_compile.ptxas_version(path)
  return f"{path} (CUDA {major}.{minor})"


def _versions(capabilities) -> str:
  import triton  # pylint: disable=g-import-not-at-top

  used = sorted({_ptxas_label(c) for c in capabilities})
  return (f"triton {triton.__version__}; ptxas: {', '.join(used)}; "
          f"python {platform.python_version()}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  unknown = set(_VARIANTS.value) - set(compile_gate.VARIANTS)
  if unknown:
    raise app.UsageError(f"--variants: unknown {sorted(unknown)}; known "
                         f"{compile_gate.VARIANTS}")
  rows, capabilities = _rows(), _capabilities()
  start = time.perf_counter()
  launches = compile_gate.collect_launches(rows, _VARIANTS.value,
                                            capabilities=capabilities)
  print(f"{len(rows)} table rows x {len(_VARIANTS.value)} variants -> "
        f"{len(launches)} distinct launches for {len(capabilities)} archs "
        f"({_versions(capabilities)})", flush=True)

  def progress(done, total):
    if done % 20 == 0 or done == total:
      print(f"  compiled {done}/{total}", flush=True)

  results = compile_gate.compile_all(launches, capabilities, jobs=_JOBS.value,
                                     ptxas=_PTXAS.value,
                                     on_device=_DEVICE.value,
                                     progress=progress)
  table = compile_gate.format_table(launches, results)
  summary = compile_gate.format_row_summary(launches, results)
  print(table, summary, sep="\n\nPer table row (worst variant):\n")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(f"<!-- {_versions(capabilities)} -->\n{table}\n\n"
              f"Per table row (worst variant):\n\n{summary}\n")
  failures = compile_gate.check(launches, results, rows, capabilities)
  elapsed = time.perf_counter() - start
  if failures:
    print(f"\nFAILED: {len(failures)} problems ({elapsed:.0f} s):")
    print("\n".join(f"  {f}" for f in failures))
    sys.exit(1)
  print(f"\npassed: {len(results)} compiles, no spills, every row compiled "
        f"({elapsed:.0f} s)")


if __name__ == "__main__":
  app.run(main)
