"""The positional experiment at its tiny scale: attention alone is order-blind."""


import numpy as np
import pytest

from experiment_helpers import assert_wrote
from experiment_helpers import run_tiny
from rnn_transformer import experiments
from rnn_transformer.experiments import positional


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  return run_tiny(positional, tmp_path_factory)[1]


def _verdicts(report):
  return [c.verdict for c in report.claims]


def test_writes_figures_tables_and_summary(report):
  assert_wrote(report, ("sinusoidal_encoding.png", "permutation_difference.png",
                        "permutation_difference.csv",
                        "permutation_difference.md", "vocabulary.csv",
                        "summary.md", "summary.json"))
  assert experiments.load("positional") is positional


def test_without_positions_outputs_are_permuted_outputs(report):
  assert report.figures["none largest difference"] <= 1e-5
  assert _verdicts(report)[0] == "supported"


@pytest.mark.parametrize("encoding", ["sinusoidal", "learned", "rope"])
def test_each_encoding_tells_word_order(report, encoding):
  assert report.figures[f"{encoding} smallest difference"] > 1e-3
  assert _verdicts(report)[1] == "supported"


def test_vocabulary_and_permutation_of_words():
  pairs = ["dog bites man / man bites dog"]
  assert positional.vocabulary(pairs) == {
      "<pad>": 0, "bites": 1, "dog": 2, "man": 3}
  sentence, permuted = "the cat sees the dog".split(), (
      "the dog sees the cat".split())
  perm = positional.word_permutation(sentence, permuted)
  assert [sentence[i] for i in perm] == permuted
  assert sorted(perm) == list(range(5))
  with pytest.raises(ValueError, match="is not a permutation"):
    positional.word_permutation(["dog", "bites"], ["man", "bites"])


def test_unpermuted_difference_is_zero_for_permuted_features():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 4, 3))
  perm = np.array([2, 0, 1])
  features[1, :3] = features[0, perm]  # row 1 = the permuted row 0
  lengths = np.array([3, 3])
  np.testing.assert_array_equal(
      positional.unpermuted_differences(features, lengths, [perm]), [0.0])
  features[1, 1] += 0.5
  np.testing.assert_allclose(
      positional.unpermuted_differences(features, lengths, [perm]), [0.5])


@pytest.mark.parametrize("none, sinusoidal, learned, rope, verdicts", [
    (0.0, 0.5, 0.05, 0.5, ["supported", "supported"]),
    (1e-4, 0.5, 1e-6, 0.5, ["partly supported", "partly supported"]),
    (0.1, 1e-6, 1e-6, 1e-4, ["not supported", "not supported"]),
])
def test_verdicts_follow_the_thresholds(none, sinusoidal, learned, rope,
                                        verdicts):
  smallest = {"none": none, "sinusoidal": sinusoidal, "learned": learned,
              "rope": rope}
  largest = {k: 2 * v for k, v in smallest.items()}
  claims = positional._claims(largest, smallest, exact_pairs=0, total_pairs=1)
  assert [c.verdict for c in claims] == verdicts
