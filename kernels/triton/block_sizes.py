"""Block sizes, warps and stages of the Triton attention kernels: one table.

Provenance. Registers: every row is gated by `scripts/check_kernels.py`,
which compiles each launch the library makes (plain, segment ids,
grouped-query, decode and window/soft-cap calls) for sm_80 and sm_90 (a
TABLE row that a `CAPABILITY_TABLE` row replaces on one of them, for the
other only) with
triton 3.6.0 and its bundled ptxas 12.8 and requires zero spilled registers
(BUILD_NOTES, "Compile gate", has the per-row figures; 2026-11-27, on a CPU;
on an H100 the driver's counts equal ptxas's on every row). Speed: only the
head_dim 128 16-bit rows are timed (H100, `tune_attention.py`, 2026-11-27:
forward, and the sm_90 backward rows); the rest are untimed starting
points. The 16-bit
rows start from the defaults of Triton's fused-attention tutorial
(python/tutorials/06-fused-attention.py: forward 128 x 64, 4 warps, 8 at
head_dim 128, 3 stages; backward dK/dV 32 x 128 and dQ 128 x 32, 4 warps, 5
stages) and move only where the gate found spills: forward head_dim 64 takes
8 warps (4 spilled with segment ids), dK/dV takes 3 stages at head_dim 32,
64 x 64 tiles at head_dim 128 (8 warps). The split into unmasked interior
and masked edge loops (issue 14) holds two loop bodies per kernel and
spilled 4-28 B on sm_80 in rows that sat at 251-255 registers; those rows
moved (each candidate compiled for every call variant on sm_80 and sm_90):
forward head_dim 128 to 128 x 32 (128 x 64 spilled 4-8 B on sm_80 with 1-4
stages; sm_90 keeps 128 x 64 through `CAPABILITY_TABLE`), dK/dV
head_dim 64 causal to 32 x 64 with 8 warps (64 x 32 spilled nothing but
lost wgmma: 32 keys are below its 64-row minimum), dQ head_dim 64 to 8
warps, float32 forward head_dim 256 to 2 stages.
float32 rows run tf32x3 tensor-core dots and need small tiles (16 queries or
keys from head_dim 64 up) to stay within 255 registers. Query offsets
(HAS_Q_OFFSET, the gate's "offset" variant, 2026-12-05) spilled 12 B in the
float32 head_dim 64 dK/dV row on sm_80 at 2 stages: it runs 1 stage (227
registers, no spill; 16 x 32 with 8 warps and 2 stages also fit, 178).
Replace rows with the output of `python scripts/tune_attention.py` run on the
target GPU, then rerun the gate.

Keys are `(kernel, head_dim, dtype name, causal)` where kernel is "fwd",
"bwd_dkdv" or "bwd_dq"; the backward kernels have no head_dim 256 rows
(unsupported). `CAPABILITY_TABLE` holds rows that replace TABLE's on one
compute capability. Under the interpreter every kernel uses `INTERPRET`
unless an `override` names its row. Two optional kernels run only where a
row of theirs exists (`optional_row`): "fwd_tma" (`TMA_KERNEL`), the Hopper
forward in place of "fwd" where it serves the call, and "bwd_fused"
(`FUSED_BWD_KERNEL`), one backward kernel in place of "bwd_dkdv" and
"bwd_dq".
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping

import numpy as np

KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile shape (queries x keys) and launch parameters of one kernel."""

  block_m: int
  block_n: int
  num_warps: int
  num_stages: int


# Small tiles keep the interpreter fast; 16 is tl.dot's minimum tile size.
INTERPRET = BlockSizes(16, 16, 1, 1)

TABLE: dict[tuple[str, int, str, bool], BlockSizes] = {
    ("fwd", 32, "float16", False): BlockSizes(128, 64, 4, 3),
    ("fwd", 32, "float16", True): BlockSizes(128, 64, 4, 3),
    ("fwd", 32, "bfloat16", False): BlockSizes(128, 64, 4, 3),
    ("fwd", 32, "bfloat16", True): BlockSizes(128, 64, 4, 3),
    ("fwd", 32, "float32", False): BlockSizes(64, 32, 4, 2),
    ("fwd", 32, "float32", True): BlockSizes(64, 32, 4, 2),
    ("fwd", 64, "float16", False): BlockSizes(128, 64, 8, 3),
    ("fwd", 64, "float16", True): BlockSizes(128, 64, 8, 3),
    ("fwd", 64, "bfloat16", False): BlockSizes(128, 64, 8, 3),
    ("fwd", 64, "bfloat16", True): BlockSizes(128, 64, 8, 3),
    ("fwd", 64, "float32", False): BlockSizes(64, 32, 4, 2),
    ("fwd", 64, "float32", True): BlockSizes(64, 32, 4, 2),
    ("fwd", 128, "float16", False): BlockSizes(128, 32, 8, 3),
    ("fwd", 128, "float16", True): BlockSizes(128, 32, 8, 3),
    ("fwd", 128, "bfloat16", False): BlockSizes(128, 32, 8, 3),
    ("fwd", 128, "bfloat16", True): BlockSizes(128, 32, 8, 3),
    ("fwd", 128, "float32", False): BlockSizes(16, 32, 4, 1),
    ("fwd", 128, "float32", True): BlockSizes(16, 32, 4, 1),
    ("fwd", 256, "float16", False): BlockSizes(64, 32, 8, 2),
    ("fwd", 256, "float16", True): BlockSizes(64, 32, 8, 2),
    ("fwd", 256, "bfloat16", False): BlockSizes(64, 32, 8, 2),
    ("fwd", 256, "bfloat16", True): BlockSizes(64, 32, 8, 2),
    ("fwd", 256, "float32", False): BlockSizes(16, 16, 8, 2),
    ("fwd", 256, "float32", True): BlockSizes(16, 16, 8, 2),
    ("bwd_dkdv", 32, "float16", False): BlockSizes(32, 128, 4, 3),
    ("bwd_dkdv", 32, "float16", True): BlockSizes(32, 128, 4, 3),
    ("bwd_dkdv", 32, "bfloat16", False): BlockSizes(32, 128, 4, 3),
    ("bwd_dkdv", 32, "bfloat16", True): BlockSizes(32, 128, 4, 3),
    ("bwd_dkdv", 32, "float32", False): BlockSizes(16, 32, 4, 2),
    ("bwd_dkdv", 32, "float32", True): BlockSizes(16, 32, 4, 2),
    ("bwd_dkdv", 64, "float16", False): BlockSizes(32, 64, 4, 3),
    ("bwd_dkdv", 64, "float16", True): BlockSizes(32, 64, 8, 3),
    ("bwd_dkdv", 64, "bfloat16", False): BlockSizes(32, 64, 4, 3),
    ("bwd_dkdv", 64, "bfloat16", True): BlockSizes(32, 64, 8, 3),
    ("bwd_dkdv", 64, "float32", False): BlockSizes(16, 32, 4, 1),
    ("bwd_dkdv", 64, "float32", True): BlockSizes(16, 32, 4, 1),
    ("bwd_dkdv", 128, "float16", False): BlockSizes(64, 64, 8, 3),
    ("bwd_dkdv", 128, "float16", True): BlockSizes(64, 64, 8, 3),
    ("bwd_dkdv", 128, "bfloat16", False): BlockSizes(64, 64, 8, 3),
    ("bwd_dkdv", 128, "bfloat16", True): BlockSizes(64, 64, 8, 3),
    ("bwd_dkdv", 128, "float32", False): BlockSizes(16, 16, 4, 1),
    ("bwd_dkdv", 128, "float32", True): BlockSizes(16, 16, 4, 1),
    ("bwd_dq", 32, "float16", False): BlockSizes(128, 32, 4, 5),
    ("bwd_dq", 32, "float16", True): BlockSizes(128, 32, 4, 5),
    ("bwd_dq", 32, "bfloat16", False): BlockSizes(128, 32, 4, 5),
    ("bwd_dq", 32, "bfloat16", True): BlockSizes(128, 32, 4, 5),
    ("bwd_dq", 32, "float32", False): BlockSizes(64, 16, 4, 2),
    ("bwd_dq", 32, "float32", True): BlockSizes(64, 16, 4, 2),
    ("bwd_dq", 64, "float16", False): BlockSizes(128, 32, 8, 5),
    ("bwd_dq", 64, "float16", True): BlockSizes(128, 32, 8, 5),
    ("bwd_dq", 64, "bfloat16", False): BlockSizes(128, 32, 8, 5),
    ("bwd_dq", 64, "bfloat16", True): BlockSizes(128, 32, 8, 5),
    ("bwd_dq", 64, "float32", False): BlockSizes(16, 32, 4, 1),
    ("bwd_dq", 64, "float32", True): BlockSizes(16, 32, 4, 1),
    ("bwd_dq", 128, "float16", False): BlockSizes(128, 32, 8, 3),
    ("bwd_dq", 128, "float16", True): BlockSizes(128, 32, 8, 3),
    ("bwd_dq", 128, "bfloat16", False): BlockSizes(128, 32, 8, 3),
    ("bwd_dq", 128, "bfloat16", True): BlockSizes(128, 32, 8, 3),
    ("bwd_dq", 128, "float32", False): BlockSizes(16, 16, 4, 1),
    ("bwd_dq", 128, "float32", True): BlockSizes(16, 16, 4, 1),
}

# Rows for head dims whose tile is padded (head_dim < its power-of-two tile,
# the columns masked): the mask costs registers, and where the gate found
# spills with the TABLE row these replace it (found by compiling the
# candidates for sm_80 and sm_90, 2026-11-27): float32 forward at the 32
# tile (hd 24: 4 B spilled on sm_80 with 4 warps) and float32 dQ at the 128
# tile (hd 80 and 96: 16 B spilled at 255 registers; 164 with 8 warps);
# after the interior/edge loop split also float32 dQ at the 32 tile (hd 24
# causal, 4 B) and the float32 forward at the 256 tile (hd 160, 4 B with
# the table's 2 stages).
PADDED_TABLE: dict[tuple[str, int, str, bool], BlockSizes] = {
    ("fwd", 32, "float32", False): BlockSizes(64, 32, 8, 2),
    ("fwd", 32, "float32", True): BlockSizes(64, 32, 8, 2),
    ("bwd_dq", 128, "float32", False): BlockSizes(16, 16, 8, 1),
    ("bwd_dq", 128, "float32", True): BlockSizes(16, 16, 8, 1),
    ("bwd_dq", 32, "float32", False): BlockSizes(64, 16, 8, 2),
    ("bwd_dq", 32, "float32", True): BlockSizes(64, 16, 8, 2),
    ("fwd", 256, "float32", False): BlockSizes(16, 16, 8, 1),
}

# Rows that replace TABLE's on one compute capability (major * 10 + minor),
# where the portable row gives up speed to fit another architecture.
# sm_90 (H100, H200), forward head_dim 128, 16-bit: 128 x 64 with 8 warps
# spills 4-8 B on sm_80 (hence TABLE's 128 x 32) but takes 206-216 registers
# and no spill on sm_90 in every call variant. On an H100 (bfloat16, batch
# 4, 16 heads, seq 4096, median of 10, one `tune_attention.py` run each,
# 2026-11-27): non-causal 1.476 ms (3 stages) and 1.471 ms (4 stages)
# against 1.823 ms for TABLE's 128 x 32 x 8 x 3 (1.769 ms in
# `bench_attention.py`), 1.2x; causal 1.013 ms against 1.051 ms.
# Backward, head_dim 128, 16-bit: dK/dV wants 128 keys per program (two
# 128 x 128 float32 accumulators, 128 registers a thread), which spills with
# 64 queries but not with 32 (249 registers): 32 x 128 x 8 x 3, forward+
# backward 5.84 ms non-causal and 3.35 ms causal against 7.67 ms for TABLE's
# 64 x 64 (64 x 128, spilling: 5.62 and 3.24). dQ 128 x 64 x 8 x 3: 7.50 ms
# against 7.61 ms for 128 x 32, and the best causal candidate (3.32 ms).
# Same H100, batch 4, seq 4096, median of 5, other kernel on its row;
# bench_attention.py: forward+backward 1.26-1.42x faster with both rows.
# Forward head_dim 128, 16-bit, non-causal (issue 28): 128 x 128 with 8
# warps and 3 stages, Triton's fused-attention tutorial configuration (458
# TF/s on an H100 at batch 4, seq 4096, against 361 measured here at
# 128 x 64); not in the tuned grid above (block_n <= 64). Compiled with
# triton 3.6 for sm_90a in every call variant: 246-255 registers, no
# spill, 224 KiB of shared memory (99% of 227), wgmma; causal too (255,
# no spill) but the causal row stays at the measured 128 x 64. Not yet
# timed on a GPU: gpu_checks.sh's tune step now includes block_n 128.
CAPABILITY_TABLE: dict[int, dict[tuple[str, int, str, bool], BlockSizes]] = {
    90: {
        ("fwd", 128, "float16", False): BlockSizes(128, 128, 8, 3),
        ("fwd", 128, "float16", True): BlockSizes(128, 64, 8, 3),
        ("fwd", 128, "bfloat16", False): BlockSizes(128, 128, 8, 3),
        ("fwd", 128, "bfloat16", True): BlockSizes(128, 64, 8, 3),
        ("bwd_dkdv", 128, "float16", False): BlockSizes(32, 128, 8, 3),
        ("bwd_dkdv", 128, "float16", True): BlockSizes(32, 128, 8, 3),
        ("bwd_dkdv", 128, "bfloat16", False): BlockSizes(32, 128, 8, 3),
        ("bwd_dkdv", 128, "bfloat16", True): BlockSizes(32, 128, 8, 3),
        ("bwd_dq", 128, "float16", False): BlockSizes(128, 64, 8, 3),
        ("bwd_dq", 128, "float16", True): BlockSizes(128, 64, 8, 3),
        ("bwd_dq", 128, "bfloat16", False): BlockSizes(128, 64, 8, 3),
        ("bwd_dq", 128, "bfloat16", True): BlockSizes(128, 64, 8, 3),
    },
}

# The Hopper forward (`attention_hopper._attn_fwd_tma`: TMA loads, a
# warp-specialized loop; 4 requested warps run as 12) serves non-causal
# 16-bit calls without segments, window, soft-cap or query offsets. A
# ("fwd_tma", head_dim, dtype, False) row in CAPABILITY_TABLE (or an
# `override`) selects it for such calls; none is in the table, because no
# lease has timed it against the pointer kernel yet. These candidates are
# what the compile gate compiles (its "tma" variant) and the lease's tune
# step times: with triton 3.6 for sm_90a, 168 registers, no spill, 384
# threads; head_dim 128 takes 2 stages (3 need 240 KiB of shared memory,
# over the 227 KiB limit).
TMA_KERNEL = "fwd_tma"
TMA_CANDIDATES: dict[tuple[int, str], BlockSizes] = {
    (64, "float16"): BlockSizes(128, 128, 4, 3),
    (64, "bfloat16"): BlockSizes(128, 128, 4, 3),
    (128, "float16"): BlockSizes(128, 128, 4, 2),
    (128, "bfloat16"): BlockSizes(128, 128, 4, 2),
}

# The fused backward (`attention._attn_bwd_fused`: dK/dV and dQ in one
# kernel, dQ by float32 atomic adds as in FlashAttention-2; five matmuls
# per block pair instead of seven) serves every call the separate kernels
# do whose head_dim is a tile width (a power of two, <= 128). A ("bwd_fused",
# head_dim, dtype, causal) row selects it in place of "bwd_dkdv" +
# "bwd_dq"; none is in the table until a lease times it. The
# candidates are what the gate compiles (its "fused_bwd" variant) and the
# lease's benchmark times. Compiled with triton 3.6 for sm_90a (the gate's
# fused_bwd variants: plain, window/soft-cap/offsets, segments): 32 x 128
# with 8 warps, 3 stages at head_dim 64 (189-220 registers) and 2 stages at
# 128 (228-253; 3 stages spill 16 B with the window masks, 255 registers),
# no spill. 64 x 64 spills 100-332 B and 64 x 128 800-930 B at head_dim
# 128; 32 x 128 spills there on sm_80 (280 B), so these are sm_90's.
FUSED_BWD_KERNEL = "bwd_fused"
FUSED_BWD_CANDIDATES: dict[tuple[int, str], BlockSizes] = {
    (64, "float16"): BlockSizes(32, 128, 8, 3),
    (64, "bfloat16"): BlockSizes(32, 128, 8, 3),
    (128, "float16"): BlockSizes(32, 128, 8, 2),
    (128, "bfloat16"): BlockSizes(32, 128, 8, 2),
}



def candidate_row(kernel: str, head_dim: int, dtype: str, causal: bool
                  ) -> dict[tuple[str, int, str, bool], BlockSizes] | None:
  """The `override` that selects an optional kernel (`TMA_KERNEL`,
  `FUSED_BWD_KERNEL`) on its candidate tile, or None where it has none
  (the Hopper forward serves non-causal calls only)."""
  candidates = {TMA_KERNEL: TMA_CANDIDATES,
                FUSED_BWD_KERNEL: FUSED_BWD_CANDIDATES}[kernel]
  tile = candidates.get((head_dim, dtype))
  if tile is None or (kernel == TMA_KERNEL and causal):
    return None
  return {(kernel, head_dim, dtype, causal): tile}


_overrides: dict[tuple[str, int, str, bool], BlockSizes] = {}


@contextlib.contextmanager
def override(rows: Mapping[tuple[str, int, str, bool], BlockSizes]
             ) -> Iterator[None]:
  """Within the block, `rows` replace table rows, read at trace time.

  For the tuner, the compile gate, and tests that run the table's real tile
  shapes under the interpreter (overrides apply in both modes).
  """
  saved = dict(_overrides)
  _overrides.update(rows)
  try:
    yield
  finally:
    _overrides.clear()
    _overrides.update(saved)


def optional_row(kernel: str, head_dim: int, dtype: np.dtype, causal: bool,
                 interpret: bool, capability: int | None = None
                 ) -> BlockSizes | None:
  """The row of an optional kernel (`TMA_KERNEL`, `FUSED_BWD_KERNEL`) for a
  call, or None: the kernel then does not run.

  An `override` row wins (in both modes: how tests run it under the
  interpreter); compiled, the `CAPABILITY_TABLE` row of `capability`.
  """
  key = (kernel, head_dim, np.dtype(dtype).name, causal)
  if key in _overrides:
    return _overrides[key]
  if interpret:
    return None
  return CAPABILITY_TABLE.get(capability, {}).get(key)


def supported_head_dims(kernel: str) -> tuple[int, ...]:
  """Head dims with a table row for `kernel` (tile widths: powers of two)."""
  return tuple(sorted({key[1] for key in TABLE if key[0] == kernel}))


def padded_head_dim(head_dim: int) -> int:
  """The kernels' head-dim tile: the next power of two, at least 16."""
  return max(16, 1 << (int(head_dim) - 1).bit_length())


def row_head_dim(head_dim: int) -> int:
  """The table row a head dim uses: its tile width, rows start at 32."""
  return max(min(supported_head_dims("fwd")), padded_head_dim(head_dim))


def serves_head_dim(kernel: str, head_dim: int) -> bool:
  """Whether `kernel` runs `head_dim`: a multiple of 8 whose tile has a row."""
  return (head_dim >= 8 and head_dim % 8 == 0 and
          row_head_dim(head_dim) in supported_head_dims(kernel))


def lookup(kernel: str, head_dim: int, dtype: np.dtype, causal: bool,
           interpret: bool, masked: bool = False,
           capability: int | None = None) -> BlockSizes:
  """The block sizes of `kernel` for the call; KeyError if there is no row.

  `head_dim` is the row's (`row_head_dim`); `masked`: the call's head_dim is
  narrower than its tile (`padded_head_dim`), which takes a `PADDED_TABLE`
  row where there is one; `capability`: the target's compute capability
  (e.g. 90), whose `CAPABILITY_TABLE` rows replace TABLE's. An `override`
  row wins; otherwise the interpreter uses `INTERPRET` and the compiled
  kernels the tables.
  """
  key = (kernel, head_dim, np.dtype(dtype).name, causal)
  if key in _overrides:
    return _overrides[key]
  if interpret:
    return INTERPRET
  if masked and key in PADDED_TABLE:
    return PADDED_TABLE[key]
  rows = CAPABILITY_TABLE.get(capability, {})
  return rows[key] if key in rows else TABLE[key]
