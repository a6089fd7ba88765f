"""Ahead-of-time compilation of one Triton launch for a CUDA GPU, without one.

Triton's wheel bundles `ptxas`, so a kernel compiles to PTX and a cubin for
any `sm_XX` on a CPU-only machine. This module compiles a launch exactly as
the library launches it (`kernels.triton.compiling`: jax-triton's signature,
specialisations and options), then runs `ptxas -v` on the PTX to read what
only the assembler knows: registers per thread and spill bytes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import time

from kernels.triton.compiling import CompileSpec
from kernels.triton.compiling import compile_kernel

# Dynamic shared memory one block may opt into, bytes (CUDA programming guide,
# "Technical Specifications per Compute Capability").
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448,
                       100: 232448, 120: 101376}
MAX_REGISTERS = 255


@dataclasses.dataclass(frozen=True)
class CompileResult:
  """What compiling one `CompileSpec` for one compute capability gave."""

  capability: int
  registers: int | None = None
  spill_stores: int | None = None
  spill_loads: int | None = None
  shared_bytes: int | None = None
  wgmma: int | None = None
  tma: int | None = None
  tcgen05: int | None = None
  ptx_target: str | None = None
  # Bytes of global scratch the kernel expects as a hidden argument (device-
  # side TMA descriptors); only the library's own call passes it.
  global_scratch: int | None = None
  # Warps the compiled kernel runs (`metadata.num_warps`): more than
  # requested when a loop is warp-specialized.
  num_warps: int | None = None
  # Read back from the driver after loading the cubin (`on_device=True`).
  device_registers: int | None = None
  device_spills: int | None = None
  seconds: float = 0.0
  error: str | None = None

  @property
  def spill_bytes(self) -> int:
    return (self.spill_stores or 0) + (self.spill_loads or 0)


def arch_name(capability: int) -> str:
  """`sm_90a`-style target name Triton compiles for (`a` from Hopper on)."""
  return f"sm_{capability}{'a' if capability >= 90 else ''}"


def bundled_ptxas(capability: int) -> str:
  """Path of the ptxas Triton itself uses for `capability`."""
  from triton.backends.nvidia import compiler  # pylint: disable=g-import-not-at-top

  return compiler.get_ptxas(capability).path


def ptxas_version(ptxas: str) -> tuple[int, int]:
  """(major, minor) CUDA release of a ptxas binary."""
  out = subprocess.run([ptxas, "--version"], check=True, capture_output=True,
                       text=True).stdout
  match = re.search(r"release (\d+)\.(\d+)", out)
  if not match:
    raise ValueError(f"cannot read a CUDA release from {ptxas} --version: "
                     f"{out!r}")
  return int(match.group(1)), int(match.group(2))


def ptxas_supports(capability: int, ptxas: str | None = None) -> bool:
  """Whether the ptxas for `capability` knows that architecture.

  sm_100 needs CUDA 12.8 or later; earlier architectures are known to every
  ptxas Triton 3.x bundles.
  """
  ptxas = ptxas or bundled_ptxas(capability)
  return capability < 100 or ptxas_version(ptxas) >= (12, 8)


_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> tuple[int, int, int]:
  """(registers, spill store bytes, spill load bytes) from `ptxas -v` output.

  With several functions in one module the maximum of each is taken.
  """
  registers = [int(m) for m in _REGISTERS.findall(log)]
  spills = [(int(s), int(l)) for s, l in _SPILLS.findall(log)]
  if not registers or not spills:
    raise ValueError(f"no register or spill line in the ptxas log:\n{log}")
  return (max(registers), max(s for s, _ in spills),
          max(l for _, l in spills))


def count_instructions(ptx: str) -> dict[str, int]:
  """Tensor-core and TMA instruction counts in a PTX listing."""
  return dict(wgmma=len(re.findall(r"\bwgmma\.mma_async", ptx)),
              tma=len(re.findall(r"\bcp\.async\.bulk\.tensor", ptx)),
              tcgen05=len(re.findall(r"\btcgen05\.mma", ptx)))


@dataclasses.dataclass(frozen=True)
class LoopBody:
  """SASS of one loop that issues matrix-multiply instructions: its body
  from the branch target to the backward branch, per iteration."""

  instructions: int
  compares: int  # ISETP/FSETP/HSETP2: predicates, mostly mask arithmetic
  selects: int  # SEL/FSEL: the masked `tl.where`s
  mma: int  # HGMMA (sm_90) or HMMA (sm_80)


_SASS_LINE = re.compile(
    r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[^;]*;")
_SASS_LABEL = re.compile(r"^\s*(\.L_x_\d+):")


def sass_loops(sass: str) -> list[LoopBody]:
  """The loops of an `nvdisasm -c` listing that contain tensor-core MMAs,
  in program order; each body counted once, as executed per iteration."""
  ops, labels, pending = [], {}, []
  for line in sass.splitlines():
    label = _SASS_LABEL.match(line)
    if label:
      pending.append(label.group(1))
      continue
    match = _SASS_LINE.search(line)
    if match:
      labels.update((name, len(ops)) for name in pending)
      pending = []
      ops.append((match.group(2), line))
  loops = []
  for end, (op, line) in enumerate(ops):
    target = re.search(r"\bBRA\b.*?(\.L_x_\d+)", line) if op == "BRA" else None
    start = labels.get(target.group(1), end) if target else end
    if start >= end:
      continue
    body = [o for o, _ in ops[start:end + 1]]
    mma = sum(o in ("HGMMA", "HMMA") for o in body)
    if mma:
      loops.append(LoopBody(
          instructions=len(body),
          compares=sum(o in ("ISETP", "FSETP", "HSETP2") for o in body),
          selects=sum(o in ("SEL", "FSEL") for o in body), mma=mma))
  return loops


def disassemble(cubin: bytes, capability: int) -> str:
  """`nvdisasm -c` of a cubin, with the nvdisasm bundled beside ptxas."""
  tool = os.path.join(os.path.dirname(bundled_ptxas(capability)), "nvdisasm")
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "kernel.cubin")
    with open(path, "wb") as f:
      f.write(cubin)
    return subprocess.run([tool, "-c", path], check=True, capture_output=True,
                          text=True).stdout


def ptx_target(ptx: str) -> str | None:
  match = re.search(r"^\.target\s+(\S+)", ptx, re.MULTILINE)
  return match.group(1) if match else None


def compile_ptx(spec: CompileSpec, capability: int) -> tuple[str, int]:
  """Compiles `spec` for `sm_<capability>`; returns (PTX, shared bytes)."""
  compiled = compile_kernel(spec, capability)
  return compiled.asm["ptx"], int(compiled.metadata.shared)


def assemble(ptx: str, capability: int, ptxas: str) -> str:
  """Runs `ptxas -v` as Triton does; returns its log."""
  with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, "kernel.ptx")
    with open(src, "w") as f:
      f.write(ptx)
    cmd = [ptxas, "-lineinfo", "-v", f"--gpu-name={arch_name(capability)}",
           src, "-o", os.path.join(tmp, "kernel.cubin")]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if run.returncode:
    raise RuntimeError(f"ptxas failed ({run.returncode}): "
                       f"{run.stderr.strip()[-2000:]}")
  return run.stderr + run.stdout


def ptxas_resources(ptx: str, capability: int,
                    ptxas: str | None = None) -> tuple[int, int, int]:
  """(registers, spill store bytes, spill load bytes) of `ptx` as ptxas
  (default: Triton's bundled one) assembles it for `capability`."""
  return parse_ptxas_log(
      assemble(ptx, capability, ptxas or bundled_ptxas(capability)))


def compile_and_measure(spec: CompileSpec, capability: int,
                        ptxas: str | None = None,
                        on_device: bool = False) -> CompileResult:
  """Compiles `spec` and reads its resources; errors become `result.error`.

  With `on_device`, the cubin is also loaded on GPU 0 (which must have this
  capability) and the driver's own register and spill counts are recorded,
  to compare with ptxas's.
  """
  start = time.perf_counter()
  device = {}
  try:
    compiled = compile_kernel(spec, capability)
    ptx, shared = compiled.asm["ptx"], int(compiled.metadata.shared)
    registers, stores, loads = ptxas_resources(ptx, capability, ptxas)
    if on_device:
      compiled._init_handles()  # pylint: disable=protected-access
      device = dict(device_registers=int(compiled.n_regs),
                    device_spills=int(compiled.n_spills))
  except Exception as e:  # pylint: disable=broad-except
    # Reported per launch by the gate, which fails on any error.
    return CompileResult(capability=capability,
                         seconds=time.perf_counter() - start,
                         error=f"{type(e).__name__}: {e}"[:2000])
  return CompileResult(
      capability=capability, registers=registers, spill_stores=stores,
      spill_loads=loads, shared_bytes=shared, ptx_target=ptx_target(ptx),
      global_scratch=int(getattr(compiled.metadata, "global_scratch_size", 0)),
      num_warps=int(compiled.metadata.num_warps),
      seconds=time.perf_counter() - start, **device, **count_instructions(ptx))


def init_worker(cache_dir: str) -> None:
  """Compile-worker setup: a fresh Triton cache, never the interpreter.

  jax-triton sets `TRITON_CACHE_DIR=""` on import, which leaves
  `triton.compile` without a cache; a fresh directory also keeps compile
  times honest.
  """
  os.environ["TRITON_CACHE_DIR"] = cache_dir
  os.environ.pop("TRITON_INTERPRET", None)
