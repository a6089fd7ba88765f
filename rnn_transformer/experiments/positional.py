r"""Attention alone is order-blind: "dog bites man" vs "man bites dog" (chapter 4).

Self-attention treats its inputs as a set: for a permutation matrix P,

    Attn(P X) = softmax(P Q K^T P^T / sqrt(d)) P V = P Attn(X),

and every other sub-layer of a Transformer block acts per position, so an
encoder without positional information is permutation-equivariant: the
outputs for a permuted sentence are the permuted outputs. Adding sinusoidal
or learned absolute encodings to the embeddings, or rotating queries and
keys by position (RoPE), breaks the symmetry.

What runs: a `TransformerEncoder` at initialisation, for each positional
encoding ("none", "sinusoidal", "learned", "rope") and several seeds, on
sentence pairs whose second sentence permutes the words of the first. The
measure is max |f(P x) - P f(x)| over the per-word output features (the
"un-permuted difference").

    python scripts/experiment.py --config=configs/experiments/positional.py:tiny \
        --output_dir=/tmp/experiments
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rnn_transformer.layers import positional
from rnn_transformer.experiments import progress
from rnn_transformer.experiments import reporting
from rnn_transformer.models.model_config import ModelConfig
from rnn_transformer.models.model_config import POSITIONAL_ENCODINGS
from rnn_transformer.models.transformer import TransformerEncoder
from rnn_transformer.benchmarks import outputs

NAME = "positional"

PAD = "<pad>"
# Without positions the un-permuted difference must stay within float32
# round-off (the softmax sums its keys in another order): "equivariant" below
# EQUIVARIANT_ATOL, "nearly" below ORDER_SENSITIVE_ATOL. With positions the
# encoder "tells word order" when every pair differs by more than
# ORDER_SENSITIVE_ATOL, 100 times float32's tolerance, on outputs of unit
# scale (the final LayerNorm).
EQUIVARIANT_ATOL = 1e-5
ORDER_SENSITIVE_ATOL = 1e-3

_SENTENCE_PAIRS = (
    "dog bites man / man bites dog",
    "the cat chases the mouse / the mouse chases the cat",
    "the man who feeds the dog sees the cat / "
    "the cat who feeds the dog sees the man",
    "the dog that bit the man saw the cat / "
    "the man that bit the dog saw the cat",
)
_LONG_SENTENCE = ("the man who bites the dog sees a cat that chases the "
                  "mouse")


def get_config(scale: str = "default") -> ml_collections.ConfigDict:
  """The experiment's config at `scale` ("tiny", "default" or "large")."""
  reporting.check_scale(scale)
  config = ml_collections.ConfigDict()
  config.experiment = NAME
  config.seed = 0  # the first seed; seeds are seed .. seed + num_seeds - 1
  config.num_seeds = {"tiny": 1, "default": 10, "large": 20}[scale]
  # "sentence / a permutation of its words", one pair per entry.
  config.sentence_pairs = _SENTENCE_PAIRS[:2] if scale == "tiny" else (
      _SENTENCE_PAIRS)
  # Further pairs: this sentence and random shuffles of its words.
  config.long_sentence = _LONG_SENTENCE
  config.random_permutations = {"tiny": 1, "default": 8, "large": 32}[scale]
  config.model = ml_collections.ConfigDict()  # fields of ModelConfig
  config.model.num_layers = {"tiny": 1, "default": 2, "large": 6}[scale]
  config.model.model_dim = {"tiny": 16, "default": 64, "large": 256}[scale]
  config.model.num_heads = {"tiny": 2, "default": 4, "large": 8}[scale]
  config.model.mlp_dim = 4 * config.model.model_dim
  config.model.max_len = 16
  # The float32 reference kernel: the claim is about attention's algebra,
  # not a fused kernel's rounding.
  config.model.attention_impl = "reference"
  config.heatmap_positions = 64  # rows of the sinusoidal-encoding figure
  return config


def sentence_pairs(config: ml_collections.ConfigDict) -> list[str]:
  """The configured pairs plus shuffles of `long_sentence` (seeded)."""
  pairs = list(config.sentence_pairs)
  words = config.long_sentence.split()
  rng = np.random.default_rng(config.seed)
  for _ in range(config.random_permutations):
    shuffled = [words[i] for i in rng.permutation(len(words))]
    pairs.append(f"{' '.join(words)} / {' '.join(shuffled)}")
  return pairs


def vocabulary(pairs) -> dict[str, int]:
  """Word -> token id over every sentence, `<pad>` = 0, the rest sorted."""
  words = sorted({w for pair in pairs for s in _split(pair) for w in s})
  return {PAD: 0, **{w: i + 1 for i, w in enumerate(words)}}


def _split(pair: str) -> tuple[list[str], list[str]]:
  first, _, second = pair.partition("/")
  return first.split(), second.split()


def word_permutation(sentence: list[str], permuted: list[str]) -> np.ndarray:
  """`perm` with `permuted[i] == sentence[perm[i]]`; repeated words in order.

  Identical words get identical outputs from an order-blind model, so any
  consistent matching of repeats serves.
  """
  if sorted(sentence) != sorted(permuted):
    raise ValueError(f"sentence pair: {' '.join(permuted)!r} is not a "
                     f"permutation of {' '.join(sentence)!r}")
  unused = list(range(len(sentence)))
  perm = []
  for word in permuted:
    index = next(i for i in unused if sentence[i] == word)
    unused.remove(index)
    perm.append(index)
  return np.asarray(perm)


def _batch(pairs, vocab: dict[str, int], max_len: int):
  """Token ids `(2 * pairs, max_len)`: sentence, permuted, ...; lengths; perms."""
  rows, lengths, perms = [], [], []
  for pair in pairs:
    sentence, permuted = _split(pair)
    if len(sentence) > max_len:
      raise ValueError(f"sentence {' '.join(sentence)!r}: {len(sentence)} "
                       f"words exceed config.model.max_len={max_len}")
    perms.append(word_permutation(sentence, permuted))
    for words in (sentence, permuted):
      ids = [vocab[w] for w in words]
      rows.append(ids + [vocab[PAD]] * (max_len - len(ids)))
      lengths.append(len(ids))
  return (jnp.asarray(rows, jnp.int32), jnp.asarray(lengths, jnp.int32),
          perms)


def unpermuted_differences(features: np.ndarray, lengths: np.ndarray,
                           perms: list[np.ndarray]) -> np.ndarray:
  """max |f(P x) - P f(x)| per pair, from `features: (2 * pairs, time, d)`."""
  out = []
  for i, perm in enumerate(perms):
    n = int(lengths[2 * i])
    original = features[2 * i, :n]
    permuted = features[2 * i + 1, :n]
    out.append(float(np.max(np.abs(permuted - original[perm]))))
  return np.asarray(out)


def _measure(config: ml_collections.ConfigDict, vocab_size: int, tokens,
             lengths, perms) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """Per encoding: `(seeds, pairs)` differences and the largest |feature|.

  Every encoding runs on the same weights (those of the "learned" model,
  whose parameters are the others' plus the position table; flax derives
  each module's initialisation from its path), so only positions differ.
  """
  models = {e: TransformerEncoder(ModelConfig(
      **config.model.to_dict(), vocab_size=vocab_size, causal=False,
      positional=e)) for e in POSITIONAL_ENCODINGS}

  def init(key):
    return models["learned"].init(key, tokens, lengths=lengths)["params"]

  def apply(params):
    shared = {k: v for k, v in params.items() if k != "position_embedding"}
    return {e: model.apply({"params": params if e == "learned" else shared},
                           tokens, lengths=lengths).features
            for e, model in models.items()}

  init, apply = jax.jit(init), jax.jit(apply)
  valid = np.arange(tokens.shape[1])[None, :] < np.asarray(lengths)[:, None]
  differences = {e: [] for e in models}
  scales = dict.fromkeys(models, 0.0)
  seeds = range(config.seed, config.seed + config.num_seeds)
  for seed in progress.cells(NAME, seeds, lambda s: f"seed {s}"):
    features = apply(init(jax.random.key(seed)))
    for e, f in features.items():
      f = np.asarray(f, np.float64)
      differences[e].append(unpermuted_differences(f, np.asarray(lengths),
                                                   perms))
      scales[e] = max(scales[e], float(np.abs(f[valid]).max()))
  return {e: np.stack(d) for e, d in differences.items()}, scales


def _claims(worst: dict[str, float], best: dict[str, float],
            exact_pairs: int, total_pairs: int) -> list[reporting.Claim]:
  none = worst["none"]
  claims = [reporting.Claim(
      "without positional encoding attention is order-blind: the outputs for "
      "'man bites dog' are those for 'dog bites man', permuted",
      "supported" if none <= EQUIVARIANT_ATOL else
      "partly supported" if none <= ORDER_SENSITIVE_ATOL else "not supported",
      f"largest un-permuted difference {none:.3g} over {total_pairs} "
      f"(pair, seed) cases, {exact_pairs} of them bit-exact (equivariant: "
      f"<= {EQUIVARIANT_ATOL:g}).")]
  encodings = [e for e in worst if e != "none"]
  passed = [best[e] > ORDER_SENSITIVE_ATOL for e in encodings]
  verdict = "supported" if all(passed) else (
      "partly supported" if any(passed) else "not supported")
  claims.append(reporting.Claim(
      "sinusoidal, learned and rotary position encodings make the outputs "
      "depend on word order", verdict,
      "smallest un-permuted difference per encoding (order-sensitive: > "
      f"{ORDER_SENSITIVE_ATOL:g}): " + ", ".join(
          f"{e} {best[e]:.3g}" for e in encodings) + "."))
  return claims


def _plot_encoding(output_dir: str, config: ml_collections.ConfigDict) -> str:
  plt = outputs.pyplot()
  positions = config.heatmap_positions
  dim = config.model.model_dim
  table = np.asarray(positional.sinusoidal_position_encoding(
      jnp.arange(positions), dim))
  fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
  image = ax.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                    interpolation="nearest")
  fig.colorbar(image, ax=ax, label="PE(pos, i)")
  ax.set_xlabel("encoding dimension i (even: sin, odd: cos)")
  ax.set_ylabel("position pos (token index)")
  ax.set_title(f"Sinusoidal position encoding, d={dim} (Vaswani et al., "
               f"2017)\n{outputs.device_description()}")
  return outputs.save_figure(fig, output_dir, "sinusoidal_encoding")


def _plot_differences(output_dir: str, worst: dict[str, float],
                      best: dict[str, float], floor: float,
                      config: ml_collections.ConfigDict) -> str:
  plt = outputs.pyplot()
  fig, ax = plt.subplots(figsize=(10, 4.5), layout="constrained")
  names = list(worst)
  x = np.arange(len(names))
  # A bit-exact 0 has no place on a log axis: drawn at `floor`, labelled.
  shown_best = [max(best[n], floor) for n in names]
  shown_worst = [max(worst[n], floor) for n in names]
  ax.bar(x - 0.2, shown_best, 0.4, label="smallest over (pair, seed)")
  ax.bar(x + 0.2, shown_worst, 0.4, label="largest over (pair, seed)")
  for i, n in enumerate(names):
    if worst[n] == 0:
      ax.annotate("0 (bit-exact)", (x[i], floor), textcoords="offset points",
                  xytext=(0, 4), ha="center", fontsize=8)
  ax.axhline(EQUIVARIANT_ATOL, color="gray", linestyle=":",
             label=f"float32 tolerance {EQUIVARIANT_ATOL:g}")
  ax.axhline(ORDER_SENSITIVE_ATOL, color="gray", linestyle="--",
             label=f"order-sensitive above {ORDER_SENSITIVE_ATOL:g}")
  ax.set_yscale("log")
  ax.set_ylim(bottom=floor / 2)
  ax.set_xticks(x, names)
  ax.set_xlabel("positional encoding")
  ax.set_ylabel("max |f(Px) - P f(x)| (output units)")
  model = config.model
  ax.set_title(f"{model.num_layers}-layer Transformer encoder (d="
               f"{model.model_dim}, same weights at init): permuted sentence "
               f"vs permuted outputs\n{outputs.device_description()}")
  ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  return outputs.save_figure(fig, output_dir, "permutation_difference")


def run(config: ml_collections.ConfigDict, output_dir: str) -> reporting.Report:
  """Measures, plots and tabulates; returns the report with verdicts."""
  outputs.check_positive(config, "num_seeds", "model.num_layers",
                           "model.model_dim", "model.num_heads")
  pairs = sentence_pairs(config)
  vocab = vocabulary(pairs)
  tokens, lengths, perms = _batch(pairs, vocab, config.model.max_len)
  with jax.default_matmul_precision("float32"):
    differences, scales = _measure(config, len(vocab), tokens, lengths, perms)
  worst = {e: float(d.max()) for e, d in differences.items()}
  best = {e: float(d.min()) for e, d in differences.items()}

  rows = []
  for encoding, diffs in differences.items():
    for s, seed_diffs in enumerate(diffs):
      for pair, diff in zip(pairs, seed_diffs):
        rows.append((encoding, config.seed + s, pair, diff,
                     diff / scales[encoding]))
  files = outputs.write_table(
      output_dir, "permutation_difference",
      ["encoding", "seed", "sentence_pair", "max_abs_difference",
       "relative_to_max_abs_output"], rows)
  files += outputs.write_table(
      output_dir, "vocabulary", ["word", "token_id"], list(vocab.items()))
  nonzero = [v for d in differences.values() for v in d.ravel() if v > 0]
  floor = min([EQUIVARIANT_ATOL / 10] + nonzero) / 10
  files.append(_plot_encoding(output_dir, config))
  files.append(_plot_differences(output_dir, worst, best, floor, config))
  files += [os.path.join(output_dir, f) for f in ("summary.md",
                                                  "summary.json")]

  figures: dict[str, float] = {}
  for encoding in differences:
    figures[f"{encoding} largest difference"] = worst[encoding]
    figures[f"{encoding} smallest difference"] = best[encoding]
    figures[f"{encoding} max abs output"] = scales[encoding]
    figures[f"{encoding} first pair, first seed"] = float(
        differences[encoding][0, 0])
  none = differences["none"]
  figures["none bit-exact cases"] = int(np.sum(none == 0))
  report = reporting.Report(
      name="positional", device=outputs.device_description(),
      figures=figures,
      claims=_claims(worst, best, int(np.sum(none == 0)), none.size),
      files=files)
  report.write(output_dir)
  return report
