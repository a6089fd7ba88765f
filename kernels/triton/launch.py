"""How a `@triton.jit` kernel is launched from JAX.

Two modes, chosen at trace time:

* compiled (CUDA GPU): `jax_triton.triton_call`, which compiles the kernel
  with Triton and emits an XLA custom call; or, for a launch made with
  `own_call=True` (kernels that need global scratch or warp specialization)
  and for every launch under `RNN_TRANSFORMER_TRITON_CALL=own`, the
  library's own custom call (`kernel_call`), which carries the compiled
  warps and scratch size (jaxlib >= 0.11.2).
* interpreted (any backend, for tests and debugging): a `jax.pure_callback`
  that hands the host buffers as torch CPU tensors to Triton's interpreter
  (`triton.runtime.interpreter.InterpretedFunction`). It runs the very same
  kernel source, one program instance at a time, so it is slow.

The interpreter is requested with the environment variable
`RNN_TRANSFORMER_TRITON_INTERPRET=1` or, taking precedence, the context
manager `triton_interpret(True/False)`. The choice is read when a function is
traced: a `jax.jit` cache entry traced under one mode keeps it.

Compiled launches target the compute capability of GPU 0 unless one is given
with `cuda_compute_capability(90)` or `RNN_TRANSFORMER_CUDA_COMPUTE_CAPABILITY`
(for lowering or exporting for `cuda` on a machine without a GPU).

`recording()` replaces every launch by a record of what would be launched
(kernel, operand types, scalars, constexprs, grid, warps, stages), for the
ahead-of-time compile gate in `kernels.gate.compile_gate`.

Kernel arguments follow jax-triton's convention: positional inputs (arrays
become pointers, Python ints/floats become scalars), then one pointer per
output, then keyword constexprs. Kernels must write every output element
that `zeroed_outputs` does not name: the compiled mode does not initialise
other outputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import importlib.util
import inspect
import os
import threading
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

INTERPRET_ENV = "RNN_TRANSFORMER_TRITON_INTERPRET"
CALL_ENV = "RNN_TRANSFORMER_TRITON_CALL"
CALLS = ("jax_triton", "own")
COMPUTE_CAPABILITY_ENV = "RNN_TRANSFORMER_CUDA_COMPUTE_CAPABILITY"
_interpret_override: contextvars.ContextVar[bool | None] = (
    contextvars.ContextVar("triton_interpret", default=None))
_capability_override: contextvars.ContextVar[int | None] = (
    contextvars.ContextVar("cuda_compute_capability", default=None))
_recorder: contextvars.ContextVar[list[LaunchRecord] | None] = (
    contextvars.ContextVar("launch_recorder", default=None))


@dataclasses.dataclass(frozen=True)
class LaunchRecord:
  """One kernel launch as jax-triton would compile it.

  Attributes:
    module: module of the `@triton.jit` function.
    name: its name.
    arg_names: its argument names, in order.
    args: the positional kernel arguments in order: `jax.ShapeDtypeStruct`
      for each array (inputs, then outputs), Python int or float scalars.
    constexprs: keyword constexprs.
    grid: launch grid.
    num_warps: warps per program, as requested.
    num_stages: software-pipelining stages.
    own_call: launched through `kernel_call` (compiled warps and global
      scratch), not jax-triton.
    zeroed_outputs: indices of outputs zeroed before the launch.
  """

  module: str
  name: str
  arg_names: tuple[str, ...]
  args: tuple[Any, ...]
  constexprs: tuple[tuple[str, Any], ...]
  grid: tuple[int, ...]
  num_warps: int
  num_stages: int
  own_call: bool = False
  zeroed_outputs: tuple[int, ...] = ()


@contextlib.contextmanager
def recording() -> Iterator[list[LaunchRecord]]:
  """Within the block, launches are recorded (and return zeros), not run.

  Yields the list the records are appended to, in trace order. Launches are
  seen only while a function is traced, so jax's tracing caches are cleared
  on entry: a function traced before would otherwise record nothing.
  """
  jax.clear_caches()
  records: list[LaunchRecord] = []
  token = _recorder.set(records)
  try:
    yield records
  finally:
    _recorder.reset(token)


@contextlib.contextmanager
def triton_interpret(enabled: bool = True) -> Iterator[None]:
  """Within the block, Triton kernels run (or not) under the interpreter."""
  if not isinstance(enabled, (bool, np.bool_)):
    raise TypeError(f"enabled must be a bool, got {type(enabled).__name__} "
                    f"{enabled!r}")
  token = _interpret_override.set(bool(enabled))
  try:
    yield
  finally:
    _interpret_override.reset(token)


def interpret_requested() -> bool:
  """Whether the Triton interpreter is requested (context, then env var)."""
  override = _interpret_override.get()
  if override is not None:
    return override
  return os.environ.get(INTERPRET_ENV, "0").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def cuda_compute_capability(capability: int | None) -> Iterator[None]:
  """Within the block, compiled kernels target `capability` (e.g. 80, 90).

  None restores the default: the environment variable, else GPU 0's own.
  The value is read when a launch is traced, and it also picks the block
  sizes (`block_sizes.CAPABILITY_TABLE`): like the interpreter choice, a
  `jax.jit` cache entry traced for one capability keeps it, so lower for
  another through a fresh `jax.jit` (or after `jax.clear_caches()`).
  """
  if capability is not None:
    _check_capability("capability", capability)
  token = _capability_override.set(capability)
  try:
    yield
  finally:
    _capability_override.reset(token)


def _check_capability(name: str, capability: Any) -> int:
  if not isinstance(capability, (int, np.integer)) or isinstance(
      capability, bool):
    raise TypeError(f"{name} must be a CUDA compute capability as an int "
                    f"such as 80 or 90, got {type(capability).__name__} "
                    f"{capability!r}")
  if not 30 <= capability < 1000:
    raise ValueError(f"{name} must be a CUDA compute capability as an int "
                     f"such as 80 or 90, got {capability!r}")
  return int(capability)


def compute_capability() -> int | None:
  """The requested compute capability, or None to ask the device."""
  override = _capability_override.get()
  if override is not None:
    return override
  value = os.environ.get(COMPUTE_CAPABILITY_ENV, "").strip()
  if not value:
    return None
  try:
    parsed = int(value)
  except ValueError:
    raise ValueError(f"{COMPUTE_CAPABILITY_ENV} must be a CUDA compute "
                     f"capability as an int such as 80 or 90, got "
                     f"{value!r}") from None
  return _check_capability(COMPUTE_CAPABILITY_ENV, parsed)


def target_capability() -> int | None:
  """The compute capability compiled launches target: the requested one
  (`compute_capability`), else GPU 0's (e.g. 90 for an H100), else None
  when there is no GPU to ask."""
  requested = compute_capability()
  if requested is not None or jax.default_backend() != "gpu":
    return requested
  # A CUDA device reports e.g. "9.0"; other GPU platforms report none.
  value = getattr(jax.local_devices()[0], "compute_capability", None)
  try:
    major, minor = str(value).split(".")[:2]
    return int(major) * 10 + int(minor)
  except ValueError:
    return None


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def unavailable_reason(interpret: bool) -> str | None:
  """Why Triton kernels cannot launch in the given mode, or None if they can."""
  if interpret:
    missing = [m for m in ("triton", "torch") if not _installed(m)]
    if missing:
      return (f"the Triton interpreter needs {' and '.join(missing)} "
              "installed (pip install -e '.[test]')")
    return _triton_mode_mismatch(interpret)
  if jax.default_backend() != "gpu" and compute_capability() is None:
    return (f"compiled Triton kernels need a CUDA GPU (jax backend is "
            f"'{jax.default_backend()}'); set {INTERPRET_ENV}=1 or use "
            "kernels.triton_interpret() to run them under the interpreter, "
            f"or name a compute capability ({COMPUTE_CAPABILITY_ENV} or "
            "kernels.cuda_compute_capability) to lower them for cuda")
  if call_requested() == "jax_triton" and not _installed("jax_triton"):
    return "jax_triton is not installed (pip install -e '.[cuda]')"
  return _triton_mode_mismatch(interpret)


def call_requested() -> str:
  """How compiled launches reach XLA: "jax_triton" (default) or "own"
  (`kernel_call` for every launch), from `RNN_TRANSFORMER_TRITON_CALL`."""
  value = os.environ.get(CALL_ENV, "jax_triton").strip() or "jax_triton"
  if value not in CALLS:
    raise ValueError(f"{CALL_ENV} must be one of {CALLS}, got {value!r}")
  return value


def launch(kernel: Any, *args: Any, out_shape: Sequence[jax.ShapeDtypeStruct],
           grid: tuple[int, ...], num_warps: int, num_stages: int,
           interpret: bool, own_call: bool = False,
           zeroed_outputs: tuple[int, ...] = (),
           **constexprs: Any) -> tuple[jax.Array, ...]:
  """Launches `kernel[grid](*args, *outputs, **constexprs)`; returns outputs.

  `own_call`: compile through `kernel_call` (the kernel needs global
  scratch or runs more warps than requested); raises on a jaxlib that
  cannot carry them. `zeroed_outputs`: indices of outputs set to zero
  before the kernel runs (it accumulates into them); the others must be
  written in full.
  """
  out_shape = tuple(out_shape)
  records = _recorder.get()
  if records is not None or (not interpret and (
      own_call or call_requested() == "own")):
    # The compiled and the interpreted decorator both keep the function.
    fn = getattr(kernel, "fn", kernel)
    record = LaunchRecord(
        module=fn.__module__, name=fn.__name__,
        arg_names=tuple(inspect.signature(fn).parameters),
        args=tuple(a if _is_scalar(a) else jax.ShapeDtypeStruct(
            np.shape(a), a.dtype) for a in args) + out_shape,
        constexprs=tuple(sorted(constexprs.items())), grid=tuple(grid),
        num_warps=num_warps, num_stages=num_stages, own_call=own_call,
        zeroed_outputs=tuple(zeroed_outputs))
    if records is not None:
      records.append(record)
      return tuple(jnp.zeros(s.shape, s.dtype) for s in out_shape)
    return _launch_own_call(record, args)
  if interpret:
    return _launch_interpreted(kernel, args, out_shape, grid, constexprs)
  import jax_triton  # pylint: disable=g-import-not-at-top

  # Triton's own launcher types a Python float as fp32; jax-triton types it
  # fp64, which would promote every score tile to fp64 (and clash with the
  # fp32 loop-carried softmax state). Pass float32 scalars explicitly.
  args = tuple(np.float32(a) if isinstance(a, float) else a for a in args)
  outs = jax_triton.triton_call(
      *args, kernel=kernel, out_shape=out_shape, grid=grid,
      num_warps=num_warps, num_stages=num_stages,
      zeroed_outputs=tuple(zeroed_outputs),
      compute_capability=compute_capability(), **constexprs)
  return tuple(outs)


def _launch_own_call(record: LaunchRecord, args) -> tuple[jax.Array, ...]:
  from kernels.triton import compiling  # pylint: disable=g-import-not-at-top
  from kernels.triton import kernel_call  # pylint: disable=g-import-not-at-top

  capability = target_capability()
  if capability is None:
    raise ValueError(
        f"{record.name}: the Triton call needs a compute capability to "
        f"compile for: a CUDA GPU, {COMPUTE_CAPABILITY_ENV} or "
        "kernels.cuda_compute_capability")
  return kernel_call.call(
      compiling.launch_spec(record), record.args,
      [a for a in args if not _is_scalar(a)],
      record.args[len(args):], record.grid, capability,
      zeroed_outputs=record.zeroed_outputs)


def _triton_mode_mismatch(interpret: bool) -> str | None:
  """Why the already imported triton cannot serve `interpret`, or None."""
  if "triton" not in sys.modules:
    return None
  import triton.language as tl  # pylint: disable=g-import-not-at-top
  from triton.runtime import interpreter  # pylint: disable=g-import-not-at-top

  interpreting = isinstance(tl.sum, interpreter.InterpretedFunction)
  if interpreting == interpret:
    return None
  if interpret:
    return ("triton was imported in compiled mode before the interpreter was "
            f"requested; set {INTERPRET_ENV}=1 (or TRITON_INTERPRET=1) before "
            "triton is first imported")
  return ("triton was imported in interpreter mode (TRITON_INTERPRET=1), so "
          "it cannot compile kernels in this process")


def import_kernels(module: str, interpret: bool) -> types.ModuleType:
  """Imports a module of @triton.jit kernels for the requested mode.

  Triton decides at decoration time whether a @triton.jit function (its own
  `tl.sum`, `tl.max`, ... included) is compiled or interpreted. So for the
  interpreter, triton is first imported with TRITON_INTERPRET=1, which makes
  every kernel an `InterpretedFunction`; the variable stays set for the rest
  of the process, which then holds one mode only.

  Under `recording()` either mode gives what a record needs (the kernel's
  name and arguments). There, on a host without a GPU, a first import takes
  the interpreter: the only mode such a host runs kernels in, so recording
  (the compile gate) does not lock the process out of it. Lowering for
  `cuda` in the same process then needs the compiled mode and raises.
  """
  if (not interpret and _recorder.get() is not None
      and "triton" not in sys.modules
      and not any(d.platform == "gpu" for d in jax.devices())):
    interpret = True
  if interpret and "triton" not in sys.modules:
    # Stays set: triton imports more modules lazily and checks the flag then.
    os.environ["TRITON_INTERPRET"] = "1"
  reason = _triton_mode_mismatch(interpret)
  # A recorded launch needs only the kernel's name and arguments, which
  # either mode gives; the compile gate compiles in fresh processes.
  if reason and _recorder.get() is None:
    raise ValueError(reason)
  return importlib.import_module(module)


def _is_scalar(x: Any) -> bool:
  return isinstance(x, (bool, int, float))


def _to_torch(x: np.ndarray) -> Any:
  import torch  # pylint: disable=g-import-not-at-top

  x = np.array(x, copy=True, order="C")
  if x.dtype.name == "bfloat16":  # torch.from_numpy rejects ml_dtypes types.
    return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(x)


def _to_numpy(t: Any, dtype: np.dtype) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top

  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(dtype)
  return t.numpy()


def _torch_dtype(dtype: np.dtype) -> Any:
  import torch  # pylint: disable=g-import-not-at-top

  dtype = np.dtype(dtype)
  if dtype.name == "bfloat16":
    return torch.bfloat16
  return torch.from_numpy(np.zeros((), dtype)).dtype


# Triton's interpreter patches module-level state while a kernel runs, so two
# launches at once (one callback per device of a sharded call) corrupt each
# other ("Did you forget to add @triton.jit?"): run them one at a time.
_INTERPRETER_LOCK = threading.Lock()


def _launch_interpreted(kernel, args, out_shape, grid, constexprs):
  array_pos = [i for i, a in enumerate(args) if not _is_scalar(a)]

  def callback(*arrays):
    import torch  # pylint: disable=g-import-not-at-top

    call_args = list(args)
    for i, a in zip(array_pos, arrays):
      call_args[i] = _to_torch(a)
    # Zeros: what `zeroed_outputs` asks of the compiled launches.
    outs = [torch.zeros(s.shape, dtype=_torch_dtype(s.dtype))
            for s in out_shape]
    with _INTERPRETER_LOCK:
      kernel[grid](*call_args, *outs, **constexprs)
    return tuple(_to_numpy(o, s.dtype) for o, s in zip(outs, out_shape))

  return tuple(jax.pure_callback(callback, out_shape,
                                 *[args[i] for i in array_pos],
                                 vmap_method="sequential"))
