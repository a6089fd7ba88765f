"""Ring (context-parallel) attention on 8 CPU devices equals the
single-device call: outputs, log-sum-exp and q/k/v gradients, with causal
masks, sliding and two-sided windows, query offsets, causal
cross-attention, the zigzag layout, key lengths, segments, grouped-query
heads and softcap; the compiled program passes key blocks round the ring
and gathers no sequence, and a window shorter than the ring runs fewer
steps."""


import numpy as np
import pytest

import kernels
from kernels import ring
from tests.parallel.sharding_helpers import run_report

PROBE = __file__.replace("test_ring_attention.py", "ring_probe.py")


def _check(report, implementations):
  rows = report["rows"]
  assert {row["implementation"] for row in rows} == set(implementations)
  for row in rows:
    assert row["output"] <= 5e-6, row
    assert row["lse"] <= 5e-6 and row["lse_inf_match"], row
    assert row["grads"] <= 5e-5, row
    assert row["permutes"] > 0 and row["largest_gather"] == 0, row
  permutes = {(row["implementation"], tuple(row["mesh"]), row["case"]):
              row["permutes"] for row in rows}
  if ("reference", (8,), "sliding") in permutes:
    # A window of 12 keys over blocks of 8 needs 2 of the 7 ring passes.
    assert permutes["reference", (8,), "sliding"] * 3 < permutes[
        "reference", (8,), "causal"]


@pytest.mark.parametrize("implementations", [("reference", "blockwise"),
                                             ("triton",)])
def test_ring_attention_equals_one_device(implementations):
  """The Triton interpreter runs two cases on 8 devices: it is slow."""
  report = run_report([PROBE, ",".join(implementations)])
  _check(report, implementations)
  refusals = report["refusals"]
  assert refusals["xla"].startswith("implementation='xla' cannot serve "
                                    "context_axis")
  assert refusals["length"].startswith("q: sequence length 60 is not "
                                       "divisible by the 8 chunks")
  assert refusals["zigzag_length"].startswith(
      "q: sequence length 56 is not divisible by the 16 chunks of "
      "context_layout 'zigzag'")
  assert refusals["layout"].startswith("context_layout must be one of")
  assert refusals["axis"].startswith("context_axis must name an axis")
  assert report["layout"] == {"first_block": [0, 1, 2, 3, 28, 29, 30, 31],
                              "round_trip": True}
  if "reference" in implementations:
    # bfloat16: the ring (one rounding per chunk pair) is as accurate as one
    # device against the float32 answer, within a factor of 2.
    low = report["bfloat16"]
    assert low["ring"]["dtype"] == "bfloat16"
    for key in ("output", "grads"):
      assert 0 < low["one_device"][key] < 0.5, low
      assert low["ring"][key] <= 2 * low["one_device"][key], low


def test_zigzag_balances_causal_work():
  """Contiguous blocks give device d d + 1 block pairs; the zigzag layout
  gives every device 2 devices + 1 quarter-size pairs (4.25 blocks of work
  on 8 devices against the contiguous layout's 8 on the last device)."""
  contiguous = ring.schedule(8, "contiguous", 512, 512, causal=True)
  np.testing.assert_array_equal(contiguous.sum(1), np.arange(1, 9))
  zigzag = ring.schedule(8, "zigzag", 512, 512, causal=True)
  np.testing.assert_array_equal(zigzag.sum(1), np.full(8, 17))
  np.testing.assert_array_equal(zigzag[:, 0], 3)
  np.testing.assert_array_equal(zigzag[:, 1:], 2)
  # Without a causal mask both layouts do all the work, evenly.
  assert (ring.schedule(8, "zigzag", 512, 512, causal=False) == 4).all()
  assert (ring.schedule(8, "contiguous", 512, 512, causal=False) == 1).all()


def test_sliding_window_schedule_stops_early():
  """A causal window of 12 keys over blocks of 8: each device attends its
  own block and the two before it; nothing later in the ring."""
  pairs = ring.schedule(8, "contiguous", 64, 64, causal=True, window=(12, 0))
  assert pairs[:, 3:].sum() == 0
  np.testing.assert_array_equal(pairs[:, :3].sum(1), [1, 2, 3, 3, 3, 3, 3, 3])


def test_zigzag_round_trip_and_errors():
  x = np.arange(3 * 48).reshape(3, 48)
  np.testing.assert_array_equal(
      kernels.from_zigzag(kernels.to_zigzag(x, 3), 3), x)
  with pytest.raises(ValueError, match="needs axis 1 to divide into 2 x 5 chunks"):
    kernels.to_zigzag(x, 5)
  with pytest.raises(ValueError, match="devices: expected a positive int"):
    kernels.from_zigzag(x, 0)
  with pytest.raises(ValueError, match="layout must be one of"):
    ring.schedule(4, "striped", 64, 64, causal=True)


def test_context_layout_needs_context_axis():
  q = np.zeros((1, 8, 1, 8), np.float32)
  with pytest.raises(ValueError, match="context_layout: 'zigzag' needs "
                     "context_axis"):
    kernels.attention(q, q, q, context_layout="zigzag")
