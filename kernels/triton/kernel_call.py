"""jaxlib's Triton custom call, built from what Triton compiled.

jax-triton 0.3.1 (the version the GPU image runs) and 0.4.0 build jaxlib's
`TritonKernel` with the warps the launch *requested*, and 0.3.1 passes no
global scratch. Two kinds of kernel need more:

* device-side TMA descriptors (`tl.make_tensor_descriptor`) are written into
  a global scratch buffer, a hidden kernel argument: the call must carry the
  compiled `metadata.global_scratch_size` / `global_scratch_align` so that
  jaxlib allocates it. jaxlib's `TritonKernel` takes them from 0.11.2 on
  (checked on the jax-cuda13-plugin wheels: 0.10.2 has no such argument;
  0.11.2 and 0.12.0.1 do); on older jaxlib the own call raises, naming the
  version.
* a warp-specialized loop (`tl.range(..., warp_specialize=True)`) compiles
  to more warps than requested (4 become 12: `.reqntid 384` in the PTX);
  the call must launch the compiled `metadata.num_warps`.

`serialized_call` compiles a launch with `compiling.compile_kernel` (the
compile gate's compile: jax-triton's signature and specialisation) and
serialises jaxlib's `TritonKernelCall` from the compiled metadata; `call`
emits it as the FFI custom call `triton_kernel_call_ffi` with the
zlib-compressed proto as its `opaque` attribute, as jax-triton 0.4 does.
`kernels.triton.launch` sends a launch here when the launch asks for it
(`own_call=True`: the kernels that need scratch or warp specialization) or
when `RNN_TRANSFORMER_TRITON_CALL=own` routes every compiled launch here.
Every launch through `call` needs jaxlib >= 0.11.2, the FFI target that
jax-triton 0.4 (with scratch) is built for; `serialized_call` alone serves
any jaxlib with the CUDA plugin (the lowering tests compare it with
jax-triton 0.3.1's proto on jaxlib 0.10.2).
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jaxlib
import numpy as np

from kernels.triton import compiling

FFI_TARGET = "triton_kernel_call_ffi"
# The first jaxlib whose TritonKernel takes global_scratch_size/align (the
# jax-cuda13-plugin wheels: 0.10.2 lacks them, 0.11.2 has them; no 0.11.0 or
# 0.11.1 wheel exists for CUDA 13).
SCRATCH_JAXLIB = "0.11.2"
_NUM_CTAS = 1


def _gpu_triton() -> Any:
  from jax._src.lib import gpu_triton  # pylint: disable=g-import-not-at-top

  if not hasattr(gpu_triton, "TritonKernel"):
    raise ValueError(
        "jaxlib's Triton custom call needs the CUDA plugin: install jax with "
        "CUDA (pip install -e '.[cuda]') or, to lower on a CPU, "
        "jax-cuda13-plugin --no-deps at jaxlib's version "
        f"({jaxlib.__version__})")
  return gpu_triton


def supports_global_scratch() -> bool:
  """Whether this jaxlib's `TritonKernel` takes a global scratch size."""
  doc = _gpu_triton().TritonKernel.__init__.__doc__ or ""
  return "global_scratch_size" in doc


def require_own_call_support() -> None:
  """Raises unless this jaxlib can serve `call` (the FFI target with
  scratch sizes), naming the version needed."""
  if not supports_global_scratch():
    raise ValueError(
        "launching a Triton kernel with its compiled warps and global scratch "
        f"(TMA descriptors, warp specialization) needs jaxlib >= "
        f"{SCRATCH_JAXLIB}, whose TritonKernel takes global_scratch_size; "
        f"this jaxlib is {jaxlib.__version__}")


@functools.lru_cache(maxsize=256)
def compiled_kernel(spec: compiling.CompileSpec, capability: int) -> Any:
  """Triton's `CompiledKernel` of `spec` for `sm_<capability>` (cached)."""
  return compiling.compile_kernel(spec, capability)


def serialized_call(spec: compiling.CompileSpec, args: Sequence[Any],
                    grid: Sequence[int], capability: int,
                    zeroed_args: Sequence[int] = ()) -> bytes:
  """jaxlib's serialised `TritonKernelCall` of one launch.

  Args:
    spec: the launch (`compiling.launch_spec`).
    args: its positional kernel arguments (`launch.LaunchRecord.args`:
      arrays, inputs then outputs, and Python scalars).
    grid: programs along x, y, z (missing axes are 1).
    capability: compute capability to compile for, e.g. 90.
    zeroed_args: positions in `args` of the outputs jaxlib zeroes before
      the launch.

  Returns:
    The proto bytes (uncompressed): the kernel carries the compiled name,
    PTX, shared memory, `metadata.num_warps` and, when the kernel needs
    global scratch, its size and alignment.
  """
  lib = _gpu_triton()
  compiled = compiled_kernel(spec, capability)
  metadata = compiled.metadata
  if int(getattr(metadata, "profile_scratch_size", 0) or 0):
    raise ValueError(f"{spec.kernel} needs profile scratch (proton "
                     "instrumentation), which jaxlib's Triton call does not "
                     "allocate")
  scratch = int(getattr(metadata, "global_scratch_size", 0) or 0)
  extra = {}
  if scratch:
    require_own_call_support()
    extra = dict(global_scratch_size=scratch, global_scratch_align=int(
        getattr(metadata, "global_scratch_align", 1) or 1))
  kernel = lib.TritonKernel(
      metadata.name, int(metadata.num_warps), _NUM_CTAS, int(metadata.shared),
      compiled.asm["ptx"], compiled.asm["ttir"], int(capability), **extra)
  params = []
  for i, ((_, triton_type), arg) in enumerate(zip(spec.signature, args)):
    if triton_type == "constexpr":  # a scalar equal to 1, specialised away
      continue
    if i in spec.pointer_args:
      size = (int(np.prod(arg.shape)) * np.dtype(arg.dtype).itemsize
              if i in zeroed_args else 0)
      params.append(lib.create_array_parameter(size, 16))
    else:
      value = float(arg) if triton_type == "fp32" else int(arg)
      params.append(lib.create_scalar_parameter(value, triton_type))
  grid = tuple(grid) + (1,) * (3 - len(grid))
  call = lib.TritonKernelCall(kernel, *grid, params)
  return call.to_proto(spec.kernel, b"")


def call(spec: compiling.CompileSpec, args: Sequence[Any],
         arrays: Sequence[jax.Array],
         out_shape: Sequence[jax.ShapeDtypeStruct], grid: Sequence[int],
         capability: int, zeroed_outputs: Sequence[int] = ()
         ) -> tuple[jax.Array, ...]:
  """Launches `spec` through `triton_kernel_call_ffi`; returns the outputs.

  `args` as for `serialized_call` (the outputs last); `arrays` the input
  arrays among them, in order; `zeroed_outputs` indices into `out_shape`.
  Needs jaxlib >= `SCRATCH_JAXLIB` (the FFI target with scratch sizes).
  """
  require_own_call_support()
  first_output = len(args) - len(out_shape)
  opaque = zlib.compress(serialized_call(
      spec, args, grid, capability,
      zeroed_args=[first_output + j for j in zeroed_outputs]))
  outs = jax.ffi.ffi_call(FFI_TARGET, tuple(out_shape))(*arrays,
                                                          opaque=opaque)
  return tuple(outs)
