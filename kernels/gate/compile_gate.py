"""The compile gate: every Triton launch the library makes, compiled for GPUs.

For every row of `block_sizes.TABLE` and every call variant (plain, segment
ids, grouped-query, decode, a local window with logit soft-capping, query
offsets; on sm_90 also the optional kernels on their candidate rows: "tma",
the Hopper forward, and "fused_bwd", the one-kernel backward), the
real forward and gradient of
`triton_ops.attention_triton` are traced with `triton_launch.recording()`, so
the launches are exactly the library's. Calls are traced once per compute
capability (its `block_sizes.CAPABILITY_TABLE` rows replace TABLE's), each
distinct launch is compiled for each requested capability that makes it
(`aot_compile`), and `check` turns the results into failures:

* a compile or ptxas error;
* shared memory over the architecture's per-block limit;
* any register spill;
* a table row that no compiled launch used, on any requested capability;
* a float16/bfloat16 `tl.dot` kernel on sm_90 without `wgmma` (Hopper tensor
  cores);
* a kernel that needs global scratch memory but is launched through
  jax-triton, which passes none (`kernels.gate.tma_probe` says why);
* a Hopper forward launch ("tma" variant, `own_call`) without TMA copies
  or with no more warps than it asked for (warp specialization off).

`scripts/check_kernels.py` is the command-line entry point.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import tempfile
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kernels import masking
from kernels.gate import aot_compile
from kernels.triton import block_sizes
from kernels.triton import compiling
from kernels.triton import launch as triton_launch
from kernels.triton import ops as triton_ops

VARIANTS = ("plain", "segments", "gqa", "decode", "window_softcap",
            "offset", "tma", "fused_bwd", "fused_bwd_window",
            "fused_bwd_segments")
# The window_softcap variant: a sliding window (causal rows) or a two-sided
# one, and Gemma 2's soft-capping; both are constexprs of the kernels. The
# offset variant adds per-example query offsets (HAS_Q_OFFSET: ring
# attention's chunk pairs, decoding into a cache) to the same masks.
_WINDOW = {True: (256, 0), False: (128, 128)}
_SOFTCAP = 30.0
# The optional kernels' variants, on sm_90 only, each on its candidate row
# (for the rows of the candidates' head dims and dtypes): "tma", the Hopper
# forward (`attention_hopper._attn_fwd_tma`), non-causal, forward only (the
# backward kernels are the plain variant's); "fused_bwd", the one-kernel
# backward (`attention._attn_bwd_fused`), causal and not, with plain masks,
# "fused_bwd_window" with the offset variant's (window, soft-cap, query
# offsets) and "fused_bwd_segments" with segment ids.
_TMA_CAPABILITY = 90
_OPTIONAL = {"tma": block_sizes.TMA_KERNEL,
             "fused_bwd": block_sizes.FUSED_BWD_KERNEL,
             "fused_bwd_window": block_sizes.FUSED_BWD_KERNEL,
             "fused_bwd_segments": block_sizes.FUSED_BWD_KERNEL}
# Head dims that are not a tile width: each runs in the power-of-two tile of
# `block_sizes.padded_head_dim` with masked columns, under the row of
# `block_sizes.row_head_dim`. Compiled plain, causal and not, in one 16-bit
# dtype and float32 (float16 shares bfloat16's code path).
EXTRA_HEAD_DIMS = (16, 24, 48, 80, 96, 160)
EXTRA_DTYPES = ("bfloat16", "float32")
# Which table kernel each Triton function takes its row from; the backward
# preprocess has no row (it borrows bwd_dq's BLOCK_M) and no tl.dot.
TABLE_KERNEL = {"_attn_fwd": "fwd", "_attn_bwd_dkdv": "bwd_dkdv",
                "_attn_bwd_dq": "bwd_dq",
                "_attn_fwd_tma": block_sizes.TMA_KERNEL,
                "_attn_bwd_fused": block_sizes.FUSED_BWD_KERNEL}
_SEQ_LEN = 1024  # Any length > 1 traces the same kernels (lengths are scalars).

RowKey = tuple[str, int, str, bool]

# A TMA tile copy (`kernels.gate.tma_probe`): not a library launch, the evidence
# that device-side descriptors compile to TMA on sm_90 but need the global
# scratch `check` refuses.
TMA_PROBE = compiling.CompileSpec(
    module="kernels.gate.tma_probe", kernel="_tma_tile_copy",
    signature=(("X", "*bf16"), ("batch", "i32"), ("seq_len", "i32"),
               ("Y", "*bf16"), ("NUM_HEADS", "constexpr"),
               ("HEAD_DIM", "constexpr"), ("BLOCK_M", "constexpr")),
    constexprs=(("NUM_HEADS", 8), ("HEAD_DIM", 128), ("BLOCK_M", 128)),
    pointer_args=(0, 3), num_warps=4, num_stages=1)


@dataclasses.dataclass(frozen=True)
class Launch:
  """One distinct launch, the table row and variants that make it, and the
  compute capabilities it is made for (None: every one)."""

  spec: compiling.CompileSpec
  row: RowKey | None
  variants: tuple[str, ...]
  capabilities: tuple[int, ...] | None = None
  own_call: bool = False  # launched through `kernel_call` (scratch passed)

  def targets(self, capability: int) -> bool:
    return self.capabilities is None or capability in self.capabilities

  @property
  def kernel(self) -> str:
    return self.spec.kernel


def _variant_inputs(variant: str, head_dim: int, dtype: str):
  """q, k, v and the mask of one variant, as shape-only placeholders."""
  q_len, kv_len, heads, kv_heads = _SEQ_LEN, _SEQ_LEN, 2, 2
  if variant in ("gqa", "tma"):
    heads, kv_heads = 16, 4
  elif variant == "decode":
    q_len = 1
  elif variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  q = jnp.zeros((1, q_len, heads, head_dim), dtype)
  kv = jnp.zeros((1, kv_len, kv_heads, head_dim), dtype)
  seg = None
  if variant in ("segments", "fused_bwd_segments"):
    seg = jnp.zeros((1, q_len), jnp.int32)
  return q, kv, seg


def trace_launches(head_dim: int, dtype: str, causal: bool, variant: str,
                   capability: int | None = None
                   ) -> list[triton_launch.LaunchRecord]:
  """The launches of one attention call's forward and (where supported) VJP,
  for a GPU of `capability` (its `block_sizes.CAPABILITY_TABLE` rows).

  Decode (q_len 1) is inference: forward only. The backward is traced where
  the kernels support it (head_dim <= triton_ops.MAX_BACKWARD_HEAD_DIM).
  """
  q, kv, seg = _variant_inputs(variant, head_dim, dtype)
  offsets = variant in ("offset", "fused_bwd_window")
  windowed = offsets or variant == "window_softcap"
  window = _WINDOW[causal] if windowed else (None, None)
  mask = masking.Mask(causal=causal, key_lengths=None, q_segment_ids=seg,
                      kv_segment_ids=seg, window_left=window[0],
                      window_right=window[1],
                      q_offset=jnp.zeros((1,), jnp.int32) if offsets
                      else None)
  scale = 1.0 / np.sqrt(head_dim)
  softcap = _SOFTCAP if windowed else None

  def forward(q, k, v):
    return triton_ops.attention_triton(q, k, v, mask, float(scale),
                                       interpret=False, softcap=softcap)

  def forward_and_vjp(q, k, v):
    out, vjp = jax.vjp(forward, q, k, v)
    return vjp(out)

  backward = (variant not in ("decode", "tma")
              and head_dim <= triton_ops.MAX_BACKWARD_HEAD_DIM)
  rows = {}
  if variant in _OPTIONAL:
    rows = block_sizes.candidate_row(_OPTIONAL[variant], head_dim, dtype,
                                     causal)
    if rows is None or capability != _TMA_CAPABILITY:
      return []  # the optional kernel has no candidate for this call
  with triton_launch.cuda_compute_capability(capability), \
      block_sizes.override(rows), triton_launch.recording() as records:
    jax.make_jaxpr(forward_and_vjp if backward else forward)(q, kv, kv)
  return records


def table_rows() -> list[RowKey]:
  return sorted(block_sizes.TABLE)


def collect_launches(rows: Iterable[RowKey] | None = None,
                     variants: Sequence[str] = VARIANTS,
                     extra_head_dims: Sequence[int] = EXTRA_HEAD_DIMS,
                     capabilities: Sequence[int] = (80, 90)
                     ) -> list[Launch]:
  """Distinct launches over `rows` (default: the whole table) x `variants`,
  and, variant "plain", each of `extra_head_dims` whose row (`block_sizes.
  row_head_dim`) is among `rows`, in the rows' `EXTRA_DTYPES`; traced for
  each of `capabilities`, so a `block_sizes.CAPABILITY_TABLE` row is
  compiled for its own capability only."""
  rows = table_rows() if rows is None else list(rows)
  keys = sorted({r[1:] for r in rows})
  calls = [(hd, dt, causal, variant) for hd, dt, causal in keys
           for variant in variants]
  calls += [(hd, dt, causal, "plain") for hd in extra_head_dims
            for row_hd, dt, causal in keys
            if row_hd == block_sizes.row_head_dim(hd) and dt in EXTRA_DTYPES]
  found: dict[compiling.CompileSpec,
              tuple[RowKey | None, list[str], list[int]]] = {}
  own_call = set()
  for capability in capabilities:
    for head_dim, dtype, causal, variant in calls:
      for record in trace_launches(head_dim, dtype, causal, variant,
                                   capability):
        spec = compiling.launch_spec(record)
        if record.own_call:
          own_call.add(spec)
        kernel = TABLE_KERNEL.get(record.name)
        row = None if kernel is None else (
            kernel, block_sizes.row_head_dim(head_dim), dtype, causal)
        entry = found.setdefault(spec, (row, [], []))
        if variant not in entry[1]:
          entry[1].append(variant)
        if capability not in entry[2]:
          entry[2].append(capability)
  return [Launch(spec, row, tuple(v), tuple(c), own_call=spec in own_call)
          for spec, (row, v, c) in found.items()]


def compile_all(launches: Sequence[Launch], capabilities: Sequence[int], *,
                jobs: int = 2, ptxas: str | None = None,
                on_device: bool = False,
                progress: Callable[[int, int], None] | None = None
                ) -> dict[tuple[int, int], aot_compile.CompileResult]:
  """Compiles every launch for each of `capabilities` it targets, `jobs` at
  a time.

  Returns {(launch index, capability): result}. Workers are spawned fresh
  (never forked from a process running XLA) with an empty Triton cache.
  `on_device` also loads each cubin on GPU 0 (see `aot_compile`).
  """
  tasks = [(i, c) for i in range(len(launches)) for c in capabilities
           if launches[i].targets(c)]
  results: dict[tuple[int, int], aot_compile.CompileResult] = {}
  with tempfile.TemporaryDirectory() as cache, \
      concurrent.futures.ProcessPoolExecutor(
          max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
          initializer=aot_compile.init_worker, initargs=(cache,)) as pool:
    futures = {pool.submit(aot_compile.compile_and_measure,
                           launches[i].spec, c, ptxas, on_device): (i, c)
               for i, c in tasks}
    for done, future in enumerate(concurrent.futures.as_completed(futures)):
      results[futures[future]] = future.result()
      if progress:
        progress(done + 1, len(tasks))
  return results


def _uses_tensor_cores(launch: Launch) -> bool:
  dtypes = {t for _, t in launch.spec.signature}
  return launch.kernel in TABLE_KERNEL and bool(dtypes & {"*fp16", "*bf16"})


def check(launches: Sequence[Launch],
          results: dict[tuple[int, int], aot_compile.CompileResult],
          rows: Iterable[RowKey] | None = None,
          capabilities: Iterable[int] | None = None) -> list[str]:
  """Every reason the gate fails, one line each; empty when it passes.

  `capabilities`: those the gate was asked for (default: those in
  `results`); every row must be compiled for each.
  """
  failures = []
  compiled_rows = set()
  for (i, capability), r in sorted(results.items()):
    launch = launches[i]
    where = f"{_describe(launch)} on {aot_compile.arch_name(capability)}"
    if r.error:
      failures.append(f"{where}: compile error: {r.error.splitlines()[0]}")
      continue
    limit = aot_compile.SHARED_MEMORY_LIMIT.get(capability)
    if limit is not None and r.shared_bytes > limit:
      failures.append(f"{where}: shared memory {r.shared_bytes} B over the "
                      f"limit {limit} B")
    if r.spill_bytes:
      failures.append(f"{where}: spills {r.spill_stores} B stored, "
                      f"{r.spill_loads} B loaded ({r.registers} registers)")
    if r.global_scratch and not launch.own_call:
      failures.append(f"{where}: needs {r.global_scratch} B of global "
                      "scratch (device-side TMA descriptors), which "
                      "jax-triton's call passes as a null pointer (launch "
                      "it with own_call=True)")
    if launch.kernel == "_attn_fwd_tma" and not r.tma:
      failures.append(f"{where}: the Hopper forward without TMA copies")
    if (launch.kernel == "_attn_fwd_tma" and capability >= _TMA_CAPABILITY
        and r.num_warps is not None and r.num_warps <= launch.spec.num_warps):
      failures.append(f"{where}: the Hopper forward was not warp-"
                      f"specialized ({r.num_warps} warps compiled for "
                      f"{launch.spec.num_warps} requested)")
    if capability == 90 and _uses_tensor_cores(launch) and not r.wgmma:
      failures.append(f"{where}: a 16-bit tl.dot kernel without wgmma")
    if launch.row is not None:
      compiled_rows.add((launch.row, capability))
  capabilities = sorted({c for _, c in results} if capabilities is None
                        else capabilities)
  for row in (table_rows() if rows is None else rows):
    for capability in capabilities:
      if (row, capability) not in compiled_rows:
        failures.append(f"table row {row} was never compiled for "
                        f"{aot_compile.arch_name(capability)}")
  return failures


def _head_dim(launch: Launch) -> str:
  """The launch's head_dim, with its table row's when that differs."""
  head_dim = dict(launch.spec.constexprs).get("HEAD_DIM")
  if launch.row is None or launch.row[1] == head_dim:
    return str(head_dim)
  return f"{head_dim} (row {launch.row[1]})"


def _describe(launch: Launch) -> str:
  row = launch.row
  if row is None:
    return f"{launch.kernel} hd{_head_dim(launch)} [{'/'.join(launch.variants)}]"
  kernel, _, dtype, causal = row
  return (f"{kernel} hd{_head_dim(launch)} {dtype} "
          f"{'causal' if causal else 'full'} [{'/'.join(launch.variants)}]")


def format_table(launches: Sequence[Launch],
                 results: dict[tuple[int, int], aot_compile.CompileResult]
                 ) -> str:
  """A Markdown table: one line per launch and capability."""
  header = ("| kernel | head_dim | dtype | causal | variants | tile | warps "
            "| stages | arch | registers | spill B | shared B (% of limit) "
            "| wgmma | TMA | device regs / spills | compile s |")
  lines = [header, "|" + " --- |" * (header.count("|") - 1)]
  for (i, capability), r in sorted(
      results.items(), key=lambda kv: (_sort_key(launches[kv[0][0]]),
                                       kv[0][1])):
    launch = launches[i]
    constexprs = dict(launch.spec.constexprs)
    kernel, _, dtype, causal = launch.row or (launch.kernel, None, "-", "-")
    head_dim = _head_dim(launch)
    tile = (f"{constexprs['BLOCK_M']}x{constexprs.get('BLOCK_N', '-')}"
            if "BLOCK_M" in constexprs else "-")
    arch = aot_compile.arch_name(capability)
    if r.error:
      cells = ["error: " + r.error.splitlines()[0][:60]] + [""] * 5
    else:
      limit = aot_compile.SHARED_MEMORY_LIMIT.get(capability)
      share = f" ({100 * r.shared_bytes / limit:.0f}%)" if limit else ""
      cells = [str(r.registers), str(r.spill_bytes),
               f"{r.shared_bytes}{share}", str(r.wgmma), str(r.tma),
               "-" if r.device_registers is None else
               f"{r.device_registers} / {r.device_spills}"]
    lines.append(
        f"| {kernel} | {head_dim} | {dtype} | {causal} | "
        f"{'/'.join(launch.variants)} | {tile} | {_warps(launch, r)} | "
        f"{launch.spec.num_stages} | {arch} | " + " | ".join(cells) +
        f" | {r.seconds:.1f} |")
  return "\n".join(lines)


def format_row_summary(
    launches: Sequence[Launch],
    results: dict[tuple[int, int], aot_compile.CompileResult]) -> str:
  """A Markdown table per table row and arch: the worst launch of the row.

  Registers, spill bytes and shared memory are the maxima over the row's
  variants (plain, segments, grouped-query, decode).
  """
  worst: dict[tuple[RowKey, int], list[int]] = {}
  for (i, capability), r in results.items():
    row = launches[i].row
    if row is None or r.error:
      continue
    cell = worst.setdefault((row, capability), [0, 0, 0])
    cell[0] = max(cell[0], r.registers)
    cell[1] = max(cell[1], r.spill_bytes)
    cell[2] = max(cell[2], r.shared_bytes)
  capabilities = sorted({c for _, c in worst})
  head = " | ".join(f"{aot_compile.arch_name(c)} regs / spill B / shared KiB"
                    for c in capabilities)
  lines = [f"| kernel | head_dim | dtype | causal | tile, warps, stages | {head} |",
           "|" + " --- |" * (5 + len(capabilities))]
  for row in sorted({row for row, _ in worst}):
    bs = block_sizes.TABLE.get(row) or _candidate(row)
    tile = _tile(bs) if bs else "-"
    cells = []
    for c in capabilities:
      regs, spill, shared = worst.get((row, c), (None, None, None))
      # A CAPABILITY_TABLE row names its own tile in its cell.
      own = block_sizes.CAPABILITY_TABLE.get(c, {}).get(row)
      cells.append(("" if own is None else f"{_tile(own)}: ") +
                   ("-" if regs is None else
                    f"{regs} / {spill} / {shared / 1024:.0f}"))
    lines.append(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]} | {tile} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def _candidate(row: RowKey) -> block_sizes.BlockSizes | None:
  """An optional kernel's candidate tile for its row (the gate's variant)."""
  if row[0] not in _OPTIONAL.values():
    return None
  return (block_sizes.candidate_row(*row) or {}).get(row)


def _warps(launch: Launch, result: aot_compile.CompileResult) -> str:
  """Requested warps, and the compiled count where it differs (a warp-
  specialized kernel: "4 (12)")."""
  asked = launch.spec.num_warps
  if result.num_warps is None or result.num_warps == asked:
    return str(asked)
  return f"{asked} ({result.num_warps})"


def _tile(bs: block_sizes.BlockSizes) -> str:
  return f"{bs.block_m}x{bs.block_n}, {bs.num_warps}, {bs.num_stages}"


def _sort_key(launch: Launch):
  row = launch.row or (launch.kernel, 0, "", False)
  return (row[0], row[1], row[2], row[3], launch.variants)
