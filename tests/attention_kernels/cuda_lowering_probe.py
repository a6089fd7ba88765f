"""Lowers the Triton attention for `cuda` without a GPU; prints JSON.

Run as a subprocess by `test_cuda_lowering.py`: triton holds one mode per
process (other tests import it for the interpreter), and jax-triton sets
`TRITON_CACHE_DIR=""` on import.

  python tests/attention_kernels/cuda_lowering_probe.py 90
"""

import json
import os
import re
import sys
import tempfile
import zlib

import jax
import jax.numpy as jnp
from jax.extend.mlir import ir

import kernels
from kernels.gate import aot_compile
from kernels.gate import compile_gate
from kernels.triton import launch as triton_launch

_SHAPES = dict(q=(1, 200, 4, 64), kv=(1, 200, 2, 64))  # grouped-query, ragged


def _attention(q, k, v):
  return kernels.attention(q, k, v, causal=True, implementation="triton")


def _loss(q, k, v):
  return _attention(q, k, v).astype(jnp.float32).sum()


# jax-triton 0.3.x emits "triton_kernel_call" with the config in
# `backend_config`; 0.4.x emits the FFI target "triton_kernel_call_ffi" with
# it under `mhlo.backend_config = {opaque = ...}`.
TARGETS = ("triton_kernel_call", "triton_kernel_call_ffi")


def _config_bytes(attrs) -> bytes:
  config = ir.StringAttr(attrs["backend_config"]).value_bytes
  if not config and "mhlo.backend_config" in attrs:
    opaque = ir.DictAttr(attrs["mhlo.backend_config"])["opaque"]
    config = ir.StringAttr(opaque).value_bytes
  return config


def _custom_calls(module) -> list[tuple[str, bytes]]:
  """(call_target_name, decompressed kernel config) of every custom call."""
  found = []

  def walk(op):
    for region in op.regions:
      for block in region.blocks:
        for inner in block.operations:
          if inner.operation.name == "stablehlo.custom_call":
            attrs = inner.operation.attributes
            target = ir.StringAttr(attrs["call_target_name"]).value
            config = _config_bytes(attrs)
            if target in TARGETS:
              config = zlib.decompress(config)
            found.append((target, config))
          walk(inner.operation)

  walk(module.operation)
  return found


def _summary(lowered, capability: int) -> list[dict]:
  target = aot_compile.arch_name(capability).encode()
  return [dict(target=name, ptx_target=(b".target " + target) in config,
               entry=[m.decode() for m in re.findall(rb"\.entry\s+(\w+)",
                                                     config)])
          for name, config in _custom_calls(lowered.compiler_ir("stablehlo"))]


def main(capability: int) -> dict:
  q = jnp.zeros(_SHAPES["q"], jnp.bfloat16)
  kv = jnp.zeros(_SHAPES["kv"], jnp.bfloat16)
  grad = jax.grad(_loss, argnums=(0, 1, 2))
  with kernels.cuda_compute_capability(capability):
    forward = jax.jit(_attention).trace(q, kv, kv).lower(
        lowering_platforms=("cuda",))
    gradient = jax.jit(grad).trace(q, kv, kv).lower(
        lowering_platforms=("cuda",))
    exported = jax.export.export(
        jax.jit(grad), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(t)
                         for t in TARGETS],
    )(q, kv, kv)
    serialized = exported.serialize()
    # The compile gate's PTX for the forward launch is what jax-triton embeds.
    with triton_launch.recording() as records:
      jax.make_jaxpr(_attention)(q, kv, kv)
  roundtrip = jax.export.deserialize(serialized)
  aot_compile.init_worker(tempfile.mkdtemp())
  gate_ptx, _ = aot_compile.compile_ptx(compile_gate.compile_spec(records[0]),
                                        capability)
  forward_config = _custom_calls(forward.compiler_ir("stablehlo"))[0][1]
  return dict(
      forward=_summary(forward, capability),
      gradient=_summary(gradient, capability),
      export_bytes=len(serialized),
      export_platforms=list(roundtrip.platforms),
      gate_ptx_embedded=gate_ptx.encode() in forward_config)


if __name__ == "__main__":
  os.environ.pop("TRITON_INTERPRET", None)
  print(json.dumps(main(int(sys.argv[1]))))
