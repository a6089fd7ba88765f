"""How a `@triton.jit` kernel is launched from JAX.

Two modes, chosen at trace time:

* compiled (CUDA GPU): `jax_triton.triton_call`, which compiles the kernel
  with Triton and emits an XLA custom call.
* interpreted (any backend, for tests and debugging): a `jax.pure_callback`
  that hands the host buffers as torch CPU tensors to Triton's interpreter
  (`triton.runtime.interpreter.InterpretedFunction`). It runs the very same
  kernel source, one program instance at a time, so it is slow.

The interpreter is requested with the environment variable
`RNN_TRANSFORMER_TRITON_INTERPRET=1` or, taking precedence, the context
manager `triton_interpret(True/False)`. The choice is read when a function is
traced: a `jax.jit` cache entry traced under one mode keeps it.

Kernel arguments follow jax-triton's convention: positional inputs (arrays
become pointers, Python ints/floats become scalars), then one pointer per
output, then keyword constexprs. Kernels must write every output element:
the compiled mode does not initialise outputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
import sys
import types
from typing import Any, Iterator, Sequence

import jax
import numpy as np

INTERPRET_ENV = "RNN_TRANSFORMER_TRITON_INTERPRET"
_interpret_override: contextvars.ContextVar[bool | None] = (
    contextvars.ContextVar("triton_interpret", default=None))


@contextlib.contextmanager
def triton_interpret(enabled: bool = True) -> Iterator[None]:
  """Within the block, Triton kernels run (or not) under the interpreter."""
  token = _interpret_override.set(enabled)
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
  if jax.default_backend() != "gpu":
    return (f"compiled Triton kernels need a CUDA GPU (jax backend is "
            f"'{jax.default_backend()}'); set {INTERPRET_ENV}=1 or use "
            "kernels.triton_interpret() to run them under the interpreter")
  if not _installed("jax_triton"):
    return "jax_triton is not installed (pip install -e '.[cuda]')"
  return _triton_mode_mismatch(interpret)


def launch(kernel: Any, *args: Any, out_shape: Sequence[jax.ShapeDtypeStruct],
           grid: tuple[int, ...], num_warps: int, num_stages: int,
           interpret: bool, **constexprs: Any) -> tuple[jax.Array, ...]:
  """Launches `kernel[grid](*args, *outputs, **constexprs)`; returns outputs."""
  out_shape = tuple(out_shape)
  if interpret:
    return _launch_interpreted(kernel, args, out_shape, grid, constexprs)
  import jax_triton  # pylint: disable=g-import-not-at-top

  outs = jax_triton.triton_call(
      *args, kernel=kernel, out_shape=out_shape, grid=grid,
      num_warps=num_warps, num_stages=num_stages, **constexprs)
  return tuple(outs)


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
  """
  if interpret and "triton" not in sys.modules:
    # Stays set: triton imports more modules lazily and checks the flag then.
    os.environ["TRITON_INTERPRET"] = "1"
  reason = _triton_mode_mismatch(interpret)
  if reason:
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


def _launch_interpreted(kernel, args, out_shape, grid, constexprs):
  array_pos = [i for i, a in enumerate(args) if not _is_scalar(a)]

  def callback(*arrays):
    import torch  # pylint: disable=g-import-not-at-top

    call_args = list(args)
    for i, a in zip(array_pos, arrays):
      call_args[i] = _to_torch(a)
    outs = [torch.zeros(s.shape, dtype=_torch_dtype(s.dtype))
            for s in out_shape]
    kernel[grid](*call_args, *outs, **constexprs)
    return tuple(_to_numpy(o, s.dtype) for o, s in zip(outs, out_shape))

  return tuple(jax.pure_callback(callback, out_shape,
                                 *[args[i] for i in array_pos],
                                 vmap_method="sequential"))
