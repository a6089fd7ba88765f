"""Ring (context-parallel) attention on 8 CPU devices equals the
single-device call: outputs, log-sum-exp and q/k/v gradients, with causal
masks, key lengths, segments, grouped-query heads and softcap; the compiled
program passes key blocks round the ring and gathers no sequence."""

import json

import pytest

from tests.parallel.sharding_helpers import run

PROBE = __file__.replace("test_ring_attention.py", "ring_probe.py")


def _check(report, implementations):
  rows = report["rows"]
  assert {row["implementation"] for row in rows} == set(implementations)
  for row in rows:
    assert row["output"] <= 5e-6, row
    assert row["lse"] <= 5e-6 and row["lse_inf_match"], row
    assert row["grads"] <= 5e-5, row
    assert row["permutes"] > 0 and row["largest_gather"] == 0, row


@pytest.mark.parametrize("implementations", [("reference", "blockwise"),
                                             ("triton",)])
def test_ring_attention_equals_one_device(implementations):
  """The Triton interpreter runs one case (causal, 8 devices): it is slow."""
  done = run([PROBE, ",".join(implementations)])
  report = json.loads(done.stdout.strip().splitlines()[-1])
  _check(report, implementations)
  refusals = report["refusals"]
  assert refusals["xla"].startswith("implementation='xla' cannot serve "
                                    "context_axis")
  assert refusals["window"].startswith("window: not supported with "
                                       "context_axis")
  assert refusals["length"].startswith("q: sequence length 60 is not "
                                       "divisible by the 8 devices")
  assert refusals["axis"].startswith("context_axis must name an axis")
