"""Lowers the Triton attention for `cuda` without a GPU; prints JSON.

Run as a subprocess by `test_cuda_lowering.py`: triton holds one mode per
process (other tests import it for the interpreter), jax-triton sets
`TRITON_CACHE_DIR=""` on import, and the 8 host devices of the sharded
lowering are fixed when jax starts. Lowering needs no device of the target
platform: the sharded call's mesh holds CPU devices, lowered for cuda.

  python tests/attention_kernels/cuda_lowering_probe.py 90
"""

import json
import os
import re
import sys
import tempfile
import zlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.extend.mlir import ir  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import kernels  # noqa: E402
from kernels.gate import aot_compile  # noqa: E402
from kernels.triton import compiling  # noqa: E402
from kernels.triton import launch as triton_launch  # noqa: E402

_SHAPES = dict(q=(1, 200, 4, 64), kv=(1, 200, 2, 64))  # grouped-query, ragged
# The sharded lowering: batch 8 over `data` (4 ways), heads over `model` (2).
_SHARDED_SHAPES = dict(q=(8, 200, 4, 64), kv=(8, 200, 2, 64))
_MESH_SHAPE = dict(data=4, model=2)


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


def _custom_calls(module) -> list[tuple[str, bytes, list[list[int]]]]:
  """(call_target_name, decompressed kernel config, operand then result
  shapes) of every custom call."""
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
            values = [*inner.operation.operands, *inner.operation.results]
            shapes = [list(ir.RankedTensorType(x.type).shape) for x in values]
            found.append((target, config, shapes))
          walk(inner.operation)

  walk(module.operation)
  return found


def _summary(lowered, capability: int) -> list[dict]:
  target = aot_compile.arch_name(capability).encode()
  return [dict(target=name, ptx_target=(b".target " + target) in config,
               entry=[m.decode() for m in re.findall(rb"\.entry\s+(\w+)",
                                                     config)])
          for name, config, _ in _custom_calls(
              lowered.compiler_ir("stablehlo"))]


def _triton_shapes(lowered) -> list[list[list[int]]]:
  """Per Triton custom call: its operand shapes, then its result shapes."""
  return [shapes for name, _, shapes in _custom_calls(
      lowered.compiler_ir("stablehlo")) if name in TARGETS]


def decode_proto(data: bytes) -> dict[int, list]:
  """Protocol-buffer wire format to {field number: [values]}: varints as
  ints, length-delimited fields as bytes (decode nested messages again)."""
  fields, i = {}, 0

  def varint():
    nonlocal i
    value, shift = 0, 0
    while True:
      byte = data[i]
      i += 1
      value |= (byte & 0x7F) << shift
      shift += 7
      if byte < 0x80:
        return value

  while i < len(data):
    key = varint()
    number, wire = key >> 3, key & 7
    if wire == 0:
      value = varint()
    elif wire == 2:
      size = varint()
      value, i = data[i:i + size], i + size
    elif wire == 5:
      value, i = data[i:i + 4], i + 4
    elif wire == 1:
      value, i = data[i:i + 8], i + 8
    else:
      raise ValueError(f"wire type {wire} of field {number}")
    fields.setdefault(number, []).append(value)
  return fields


# jaxlib's triton.proto: TritonAnyKernelCall {1: TritonKernelCall}, which is
# {1: TritonKernel, 2-4: grid, 5: parameters}; TritonKernel {1: name,
# 2: num_warps, 3: shared_mem_bytes, 4: ptx, 5: ttir, 6: compute_capability,
# 12: global_scratch_size, 13: global_scratch_align} (jaxlib >= 0.11.2).
_KERNEL_FIELDS = dict(name=1, num_warps=2, shared=3, ptx=4, capability=6,
                      scratch_size=12, scratch_align=13)


def kernel_fields(proto: bytes) -> dict:
  """The TritonKernel fields, grid and parameters of a serialised call."""
  kernel_call = decode_proto(decode_proto(proto)[1][0])
  kernel = decode_proto(kernel_call[1][0])
  out = {name: kernel.get(number, [None])[0]
         for name, number in _KERNEL_FIELDS.items()}
  out["grid"] = [kernel_call.get(n, [0])[0] for n in (2, 3, 4)]
  out["params"] = kernel_call.get(5, [])
  return out


def _jsonable(fields: dict) -> dict:
  return {k: (v.decode() if isinstance(v, bytes) and k == "name" else
              len(v) if isinstance(v, bytes) else
              [p.hex() for p in v] if k == "params" else v)
          for k, v in fields.items()}


def own_call(capability: int, forward_record, forward_config: bytes) -> dict:
  """The library's own Triton call (`kernel_call`) for cuda on a CPU.

  * The plain forward launch, serialised by `kernel_call.serialized_call`,
    against what jax-triton embeds for it: every TritonKernel field but
    the TTIR text, the grid and the parameters.
  * The Hopper forward (TMA descriptors: global scratch; warp-specialized:
    12 warps for 4 requested) lowered through `kernels.attention`: the FFI
    call carries both where jaxlib can (>= 0.11.2); elsewhere the launch
    is refused by name.
  """
  from kernels.triton import kernel_call  # pylint: disable=g-import-not-at-top

  ours = kernel_fields(kernel_call.serialized_call(
      compiling.launch_spec(forward_record), forward_record.args,
      forward_record.grid, capability))
  theirs = kernel_fields(forward_config)
  # The Hopper forward through kernels.attention, on its candidate row.
  from kernels.triton import block_sizes  # pylint: disable=g-import-not-at-top

  q = jax.ShapeDtypeStruct((2, 300, 8, 128), jnp.bfloat16)
  kv = jax.ShapeDtypeStruct((2, 300, 2, 128), jnp.bfloat16)
  row = {(block_sizes.TMA_KERNEL, 128, "bfloat16", False):
         block_sizes.TMA_CANDIDATES[(128, "bfloat16")]}
  fused = _fused_backward(capability)
  tma = dict(supports_scratch=kernel_call.supports_global_scratch())
  if capability < 90:
    return dict(matches_jax_triton={k: ours[k] == theirs[k] for k in ours},
                ours=_jsonable(ours), fused=fused)
  try:
    with kernels.cuda_compute_capability(capability), \
        block_sizes.override(row):
      lowered = jax.jit(lambda q, k, v: kernels.attention(
          q, k, v, implementation="triton")).trace(q, kv, kv).lower(
              lowering_platforms=("cuda",))
    ((target, config, shapes),) = _custom_calls(
        lowered.compiler_ir("stablehlo"))
    tma.update(target=target, shapes=shapes,
               kernel=_jsonable(kernel_fields(config)))
  except ValueError as e:
    tma.update(error=str(e))
  return dict(
      matches_jax_triton={k: ours[k] == theirs[k] for k in ours},
      ours=_jsonable(ours), tma=tma, fused=fused)


def _fused_backward(capability: int) -> dict:
  """The one-kernel backward's launch (its dQ accumulator zeroed by jaxlib):
  jax-triton's serialised call against `kernel_call.serialized_call`."""
  from kernels.triton import block_sizes  # pylint: disable=g-import-not-at-top
  from kernels.triton import kernel_call  # pylint: disable=g-import-not-at-top

  q = jnp.zeros(_SHAPES["q"], jnp.bfloat16)
  kv = jnp.zeros(_SHAPES["kv"], jnp.bfloat16)
  row = {(block_sizes.FUSED_BWD_KERNEL, 64, "bfloat16", True):
         block_sizes.BlockSizes(32, 64, 4, 3)}
  grad = jax.grad(_loss, argnums=(0, 1, 2))
  with kernels.cuda_compute_capability(capability), \
      block_sizes.override(row):
    lowered = jax.jit(grad).trace(q, kv, kv).lower(
        lowering_platforms=("cuda",))
    with triton_launch.recording() as records:
      jax.make_jaxpr(grad)(q, kv, kv)
  (config,) = [c for _, c, _ in _custom_calls(
      lowered.compiler_ir("stablehlo")) if b".entry _attn_bwd_fused" in c]
  (record,) = [r for r in records if r.name == "_attn_bwd_fused"]
  first_output = len(record.args) - 3
  ours = kernel_fields(kernel_call.serialized_call(
      compiling.launch_spec(record), record.args, record.grid, capability,
      zeroed_args=[first_output + j for j in record.zeroed_outputs]))
  theirs = kernel_fields(config)
  return dict(matches_jax_triton={k: ours[k] == theirs[k] for k in ours},
              zeroed_param=decode_proto(decode_proto(ours["params"][-1])[1][0]
                                        ).get(1, [0])[0],
              dq_bytes=int(np.prod(_SHAPES["q"])) * 4)


def sharded() -> dict:
  """The Triton calls' shapes, lowered for cuda, of a call sharded over a
  (4, 2) mesh of host devices: with `mesh=` (forward and gradient), and
  under jit without it (the inputs are tracers; nothing is detected)."""
  mesh = Mesh(np.array(jax.devices("cpu")[:8]).reshape(
      tuple(_MESH_SHAPE.values())), tuple(_MESH_SHAPE))
  layout = NamedSharding(mesh, P("data", None, "model", None))
  q, kv = (jax.ShapeDtypeStruct(_SHARDED_SHAPES[n], jnp.bfloat16,
                                sharding=layout) for n in ("q", "kv"))

  def per_shard(q, k, v):
    return kernels.attention(q, k, v, causal=True, implementation="triton",
                             mesh=mesh, batch_axes="data", head_axes="model")

  def loss(q, k, v):
    return per_shard(q, k, v).astype(jnp.float32).sum()

  lowered = {
      name: jax.jit(fn).trace(q, kv, kv).lower(lowering_platforms=("cuda",))
      for name, fn in (("forward", per_shard),
                       ("gradient", jax.grad(loss, argnums=(0, 1, 2))),
                       ("without_mesh", _attention))}
  return dict(mesh=_MESH_SHAPE, **{name: _triton_shapes(low)
                                   for name, low in lowered.items()})


def ring() -> dict:
  """Ring attention (zigzag, causal) over (data 2, context 4) host devices,
  lowered for cuda: the Triton calls' shapes and the collective-permutes of
  the forward and the gradient."""
  mesh = Mesh(np.array(jax.devices("cpu")[:8]).reshape(2, 4),
              ("data", "context"))
  layout = NamedSharding(mesh, P("data", "context", None, None))
  q = jax.ShapeDtypeStruct((2, 256, 4, 64), jnp.bfloat16, sharding=layout)
  kv = jax.ShapeDtypeStruct((2, 256, 2, 64), jnp.bfloat16, sharding=layout)

  def forward(q, k, v):
    return kernels.attention(q, k, v, causal=True, implementation="triton",
                             mesh=mesh, batch_axes="data",
                             context_axis="context", context_layout="zigzag")

  def loss(q, k, v):
    return forward(q, k, v).astype(jnp.float32).sum()

  out = {}
  for name, fn in (("forward", forward),
                   ("gradient", jax.grad(loss, argnums=(0, 1, 2)))):
    lowered = jax.jit(fn).trace(q, kv, kv).lower(lowering_platforms=("cuda",))
    text = lowered.as_text()
    out[name] = dict(shapes=_triton_shapes(lowered),
                     permutes=text.count("collective_permute"),
                     gathers=text.count("all_gather"))
  return out


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
    sharded_shapes = sharded()
    ring_lowering = ring()
  roundtrip = jax.export.deserialize(serialized)
  aot_compile.init_worker(tempfile.mkdtemp())
  gate_ptx, _ = aot_compile.compile_ptx(compiling.launch_spec(records[0]),
                                        capability)
  forward_config = _custom_calls(forward.compiler_ir("stablehlo"))[0][1]
  return dict(
      own_call=own_call(capability, records[0], forward_config),
      forward=_summary(forward, capability),
      gradient=_summary(gradient, capability),
      export_bytes=len(serialized),
      export_platforms=list(roundtrip.platforms),
      gate_ptx_embedded=gate_ptx.encode() in forward_config,
      sharded=sharded_shapes,
      ring=ring_lowering)


if __name__ == "__main__":
  os.environ.pop("TRITON_INTERPRET", None)
  print(json.dumps(main(int(sys.argv[1]))))
