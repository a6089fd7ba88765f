"""How one recorded Triton launch is compiled for a CUDA GPU: the same
signature, specialisations and options jax-triton 0.3.x derives.

Shared by the runtime launch that builds its own custom call
(`kernel_call`) and the compile gate (`kernels.gate.aot_compile`), so both
compile exactly what the library launches. Importing this module imports
neither triton nor jax_triton; `compile_kernel` imports triton.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import jax
import numpy as np

TRITON_TYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32",
               "int32": "i32"}


@dataclasses.dataclass(frozen=True)
class CompileSpec:
  """A picklable description of one launch to compile.

  Attributes:
    module: module holding the kernel, e.g. "kernels.triton.attention".
    kernel: name of the `@triton.jit` function in `module`.
    signature: argument name -> Triton type ("*bf16", "i32", "fp32") or
      "constexpr", in the kernel's argument order.
    constexprs: argument name -> value, for every "constexpr" entry.
    pointer_args: indices of pointer arguments; all are 16-byte aligned, as
      jax-triton assumes for XLA buffers.
    num_warps: warps per program, as requested (a warp-specialized kernel
      runs more: its compiled `metadata.num_warps`).
    num_stages: software-pipelining stages.
  """

  module: str
  kernel: str
  signature: tuple[tuple[str, str], ...]
  constexprs: tuple[tuple[str, Any], ...]
  pointer_args: tuple[int, ...]
  num_warps: int
  num_stages: int


def launch_spec(record) -> CompileSpec:
  """The compile description jax-triton derives from a launch
  (`launch.LaunchRecord`).

  Arrays become 16-byte-aligned pointers, Python ints `i32` (`i64` past
  32 bits) and floats `fp32` (the launcher passes float32 scalars); a
  scalar equal to 1 becomes the constexpr 1, as jax-triton specialises it.
  """
  names = record.arg_names
  signature, constexprs, pointers = {}, dict(record.constexprs), []
  for i, arg in enumerate(record.args):
    name = names[i]
    if isinstance(arg, jax.ShapeDtypeStruct):
      signature[name] = "*" + TRITON_TYPE[np.dtype(arg.dtype).name]
      pointers.append(i)
    elif arg == 1:
      signature[name] = "constexpr"
      constexprs[name] = 1
    elif isinstance(arg, int):
      signature[name] = "i32" if -2**31 <= arg < 2**31 else "i64"
    else:
      signature[name] = "fp32"
  for name in record.constexprs:
    signature[name] = "constexpr"
  ordered = tuple((n, signature[n]) for n in names if n in signature)
  return CompileSpec(
      module=record.module, kernel=record.name, signature=ordered,
      constexprs=tuple(sorted(constexprs.items())),
      pointer_args=tuple(pointers), num_warps=record.num_warps,
      num_stages=record.num_stages)


def compile_kernel(spec: CompileSpec, capability: int) -> Any:
  """Compiles `spec` for `sm_<capability>`: Triton's `CompiledKernel`
  (`asm["ptx"]`, `asm["ttir"]`, `metadata`: name, num_warps, shared,
  global_scratch_size/align)."""
  import triton  # pylint: disable=g-import-not-at-top
  from triton.backends.compiler import GPUTarget  # pylint: disable=g-import-not-at-top

  fn = getattr(importlib.import_module(spec.module), spec.kernel)
  source = triton.compiler.ASTSource(
      fn=fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs),
      attrs={(i,): [["tt.divisibility", 16]] for i in spec.pointer_args})
  # The options jax-triton 0.3.x passes (triton_lib.get_or_create_triton_kernel).
  options = dict(num_warps=spec.num_warps, num_stages=spec.num_stages,
                 num_ctas=1, enable_fp_fusion=True, debug=False)
  return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                        options=options)
