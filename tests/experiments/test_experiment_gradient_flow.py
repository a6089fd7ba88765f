"""The gradient_flow experiment at its tiny scale: the seed's chapter 2 claims."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiment_helpers import assert_wrote
from experiment_helpers import run_tiny
from rnn_transformer import experiments
from rnn_transformer.experiments import gradient_flow


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  _, report, output_dir = run_tiny(gradient_flow, tmp_path_factory)
  return report, output_dir


def _verdicts(report):
  return {c.claim: c.verdict for c in report.claims}


def test_writes_figures_tables_and_summary(report):
  report, output_dir = report
  assert_wrote(report, ("gradient_norms.png", "clipping.png",
                        "training_loss.png", "gradient_ratio.csv",
                        "gradient_ratio.md", "clipping.csv", "summary.md",
                        "summary.json"))
  assert experiments.load("gradient_flow") is gradient_flow
  with open(os.path.join(output_dir, "gradient_ratio.csv")) as f:
    assert len(f.read().splitlines()) == 1 + 2 * len(gradient_flow.MODELS)


def test_radius_half_tanh_rnn_vanishes_far_below_the_lstm(report):
  report, _ = report
  rnn = report.figures["ratio tanh_0.5 init"]
  lstm = report.figures["ratio lstm init"]
  assert rnn < 1e-6 * lstm, (rnn, lstm)
  assert lstm > gradient_flow.GATING_MARGIN * report.figures[
      "ratio tanh_1.0 init"]
  assert _verdicts(report)[
      "a tanh RNN with spectral radius < 1 has vanishing gradients"] == (
          "supported")


def test_linear_radius_one_and_a_half_explodes(report):
  report, _ = report
  assert report.figures["ratio linear_1.5 init"] > (
      gradient_flow.EXPLODING_RATIO)
  assert _verdicts(report)[
      "with spectral radius > 1 (linear activation) gradients explode"] == (
          "supported")


def test_clipping_keeps_the_exploding_run_on_track(report):
  report, _ = report
  baseline = report.figures["trivial-predictor loss"]
  # Unclipped SGD overflows at once; the clipped runs end near the baseline.
  assert not np.isfinite(report.figures["sgd unclipped final loss"])
  for optimizer in ("sgd", "adamw"):
    clipped = report.figures[f"{optimizer} clipped final loss"]
    assert clipped < gradient_flow.DERAILED_FACTOR * baseline, optimizer
  assert report.figures["adamw unclipped final loss"] > (
      gradient_flow.DERAILED_FACTOR * baseline)
  assert _verdicts(report)["gradient clipping prevents exploding gradients "
                           "from derailing training"] == "supported"


def test_clip_switch_is_optax_clipping_or_the_identity():
  grads = {"a": jnp.full((3,), 4.0), "b": jnp.full((2, 2), -3.0)}
  reference, _ = optax.clip_by_global_norm(1.0).update(grads, None)
  for enabled, expected in ((True, reference), (False, grads)):
    clip = gradient_flow._clip_when(jnp.asarray(enabled), 1.0)
    updates, _ = jax.jit(clip.update)(grads, clip.init(grads))
    chex.assert_trees_all_close(updates, expected, atol=0)


@pytest.mark.parametrize("init, trained, verdict", [
    # ratios of tanh 0.5, linear 1.5, LSTM, GRU, tanh 1.0
    ((1e-5, 1e5, 1e-1, 1e-1, 1e-4), (1e-5, 1.0, 1e-1, 1e-1, 1e-4),
     "supported"),
    ((1e-5, 10.0, 1e-2, 1e-4, 1e-4), (1e-2, 1.0, 1e-2, 1e-4, 1e-4),
     "partly supported"),
    ((0.5, 0.5, 1e-4, 1e-4, 1e-4), (0.5, 0.5, 1e-4, 1e-4, 1e-4),
     "not supported"),
])
def test_verdicts_follow_the_thresholds(init, trained, verdict):
  measured = {}
  for stage, values in (("init", init), ("trained", trained)):
    measured.update(zip([(name, stage) for name in (
        "tanh_0.5", "linear_1.5", "lstm", "gru", "tanh_1.0")], values))
  fine = dict(final_unclipped=0.1, final_clipped=0.1, non_finite_unclipped=None,
              derailed_unclipped=False, derailed_clipped=False,
              norm_overflow_clipped=None)
  claims = gradient_flow._claims(measured, {"sgd": fine}, 10)
  assert [c.verdict for c in claims[:3]] == [verdict] * 3
  assert claims[3].verdict == "not measured"  # nothing derailed unclipped
  rescued = dict(fine, derailed_unclipped=True)
  lost = dict(rescued, derailed_clipped=True)
  for runs, expected in (({"sgd": rescued}, "supported"),
                         ({"sgd": rescued, "adamw": lost}, "partly supported"),
                         ({"sgd": lost}, "not supported"),
                         # clip_by_global_norm of an infinite norm zeroes the
                         # update: that run says nothing about clipping.
                         ({"sgd": dict(lost, norm_overflow_clipped=3)},
                          "not measured"),
                         ({"sgd": rescued,
                           "adamw": dict(lost, norm_overflow_clipped=0)},
                          "supported")):
    assert gradient_flow._claims(measured, runs, 10)[3].verdict == expected
