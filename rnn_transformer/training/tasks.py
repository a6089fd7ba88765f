"""Built-in sequence tasks: generated on the fly, deterministic from a seed.

Every task produces batches as a dict of arrays

    inputs:  (batch, time) int32 tokens, or (batch, time, features) float32
    targets: (batch, time) int32 classes, or (batch, time) float32 values
    weights: (batch, time) float32, 1 where a step is scored

so one loss serves all of them: weighted cross-entropy for classification,
weighted squared error for regression (on `logits[..., 0]`). Batch `i` of a
stream is `task.batch(jax.random.fold_in(key, i), size)`: the data-stream
position is the step number, so a resumed run sees the same data.

Each task reports its natural metric next to the trivial baseline that a
model learning nothing would reach, so a log shows whether it learned.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from rnn_transformer import validation

Batch = dict[str, jax.Array]


class Task(abc.ABC):
  """A stream of training batches and how to score a model on them."""

  name: str
  seq_len: int
  vocab_size: int | None  # token inputs in [0, vocab_size); None: features
  input_features: int | None  # float inputs' feature size; None: tokens
  output_size: int  # classes, or 1 for regression
  regression: bool = False

  @abc.abstractmethod
  def batch(self, key: jax.Array, batch_size: int) -> Batch:
    """One batch; a pure function of `key` (jittable)."""

  def eval_batch(self, key: jax.Array, batch_size: int) -> Batch:
    """A held-out batch; the generated tasks draw from the same distribution."""
    return self.batch(key, batch_size)

  @property
  @abc.abstractmethod
  def baseline(self) -> dict[str, float]:
    """Metric values of the trivial predictor (see each task)."""

  def metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """`loss` plus the task's metric, from `logits: (batch, time, output)`."""
    weights = batch["weights"]
    total = jnp.maximum(weights.sum(), 1.0)
    if self.regression:
      error = (logits[..., 0].astype(jnp.float32) - batch["targets"]) ** 2
      mse = (error * weights).sum() / total
      return {"loss": mse, "mse": mse}
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, batch["targets"][..., None],
                               axis=-1)[..., 0]
    loss = (nll * weights).sum() / total
    correct = (logits.argmax(-1) == batch["targets"]).astype(jnp.float32)
    accuracy = (correct * weights).sum() / total
    return {"loss": loss, "accuracy": accuracy, **self.extra_metrics(
        nll, correct, batch)}

  def extra_metrics(self, nll: jax.Array, correct: jax.Array,
                    batch: Batch) -> dict[str, jax.Array]:
    """Task-specific metrics from per-step `nll` and `correct`, (batch, time)."""
    del nll, correct, batch
    return {}


def _check_params(task: Task, **minimums: int) -> None:
  """Checks each named field of the dataclass `task` is an int >= its
  minimum (TypeError/ValueError naming it) and stores it as a Python int."""
  for name, minimum in minimums.items():
    value = validation.check_int(name, getattr(task, name), minimum=minimum)
    object.__setattr__(task, name, value)


def _last_step_weights(batch_size: int, seq_len: int) -> jax.Array:
  return jnp.zeros((batch_size, seq_len), jnp.float32).at[:, -1].set(1.0)


@dataclasses.dataclass(frozen=True)
class CopyMemory(Task):
  """Copy memory (Arjovsky, Shah and Bengio, 2016).

  Input: `copy_len` (10) symbols from {1..num_symbols} ({1..8}), `delay`
  blanks (0) with the delimiter (`num_symbols + 1`, 9) as the last of them,
  then `copy_len` blanks; length `delay + 2 copy_len`. Target: blanks, then
  the symbols in the last `copy_len` steps. All steps are scored. Tokens and
  classes: `vocab_size = output_size = num_symbols + 2` (10). A memoryless
  model predicts blanks and then uniform symbols: cross-entropy
  `copy_len log num_symbols / seq_len` (`10 log 8 / (delay + 20)`).
  """
  delay: int = 50
  num_symbols: int = 8
  copy_len: int = 10

  name = "copy"
  input_features = None

  def __post_init__(self):
    _check_params(self, delay=1, num_symbols=1, copy_len=1)

  @property
  def seq_len(self) -> int:  # type: ignore[override]
    return self.delay + 2 * self.copy_len

  @property
  def vocab_size(self) -> int:  # type: ignore[override]
    return self.num_symbols + 2  # blank, the symbols, the delimiter

  @property
  def output_size(self) -> int:  # type: ignore[override]
    return self.vocab_size

  def batch(self, key: jax.Array, batch_size: int) -> Batch:
    symbols = jax.random.randint(key, (batch_size, self.copy_len), 1,
                                 self.num_symbols + 1)
    blanks = jnp.zeros((batch_size, self.delay - 1), jnp.int32)
    delimiter = jnp.full((batch_size, 1), self.num_symbols + 1, jnp.int32)
    tail = jnp.zeros((batch_size, self.copy_len), jnp.int32)
    inputs = jnp.concatenate([symbols, blanks, delimiter, tail], axis=1)
    targets = jnp.concatenate(
        [jnp.zeros((batch_size, self.delay + self.copy_len), jnp.int32),
         symbols], axis=1)
    return {"inputs": inputs, "targets": targets,
            "weights": jnp.ones(inputs.shape, jnp.float32)}

  @property
  def baseline(self) -> dict[str, float]:
    return {"loss": self.copy_len * math.log(self.num_symbols) / self.seq_len,
            "copy_accuracy": 1.0 / self.num_symbols}

  def extra_metrics(self, nll, correct, batch):
    del nll, batch
    return {"copy_accuracy": correct[:, -self.copy_len:].mean()}


@dataclasses.dataclass(frozen=True)
class Adding(Task):
  """The adding problem (Hochreiter and Schmidhuber, 1997).

  Input `(time, 2)`: values uniform in [0, 1] and a marker channel with two
  ones, one in each half. Target at the last step: the sum of the two marked
  values. Predicting the mean, 1, gives MSE = Var(U1 + U2) = 1/6 ~ 0.167.
  """
  seq_len: int = 50

  name = "adding"
  vocab_size = None
  input_features = 2
  output_size = 1
  regression = True

  def __post_init__(self):
    _check_params(self, seq_len=2)

  def batch(self, key: jax.Array, batch_size: int) -> Batch:
    k_values, k_first, k_second = jax.random.split(key, 3)
    values = jax.random.uniform(k_values, (batch_size, self.seq_len))
    half = self.seq_len // 2
    first = jax.random.randint(k_first, (batch_size,), 0, half)
    second = jax.random.randint(k_second, (batch_size,), half, self.seq_len)
    steps = jnp.arange(self.seq_len)[None, :]
    markers = ((steps == first[:, None]) | (steps == second[:, None])).astype(
        jnp.float32)
    total = (values * markers).sum(axis=1)
    targets = jnp.zeros((batch_size, self.seq_len)).at[:, -1].set(total)
    return {"inputs": jnp.stack([values, markers], axis=-1),
            "targets": targets,
            "weights": _last_step_weights(batch_size, self.seq_len)}

  @property
  def baseline(self) -> dict[str, float]:
    return {"loss": 1.0 / 6.0, "mse": 1.0 / 6.0}


@dataclasses.dataclass(frozen=True)
class Adding1997(Task):
  """The adding problem exactly as Hochreiter and Schmidhuber (1997) set it.

  "Long Short-Term Memory", Neural Computation 9(8), section 5.4 (experiment
  4). Each step is a pair (value, marker): values uniform in [-1, 1]; the
  marker is 1 at two steps, -1 at the first and the last step of the
  sequence, 0 elsewhere. One marked step is drawn from the first ten steps
  (its value X1), the other from the first `min_len / 2 - 1` steps not yet
  marked (X2); when X1 is the first step, X1 is zero. A sequence's
  length is drawn uniformly from [min_len, min_len + min_len // 10]; the
  batch is padded with zero pairs to `seq_len = min_len + min_len // 10`.
  Target at the sequence's last step only: 0.5 + (X1 + X2) / 4, the sum
  scaled to [0, 1]. A sequence is processed correctly when the absolute
  error there is below `CORRECT_BELOW` = 0.04 (`accuracy`).

  So every sequence keeps X1 for at least `min_len - 10` steps and X2 for
  more than `min_len / 2`. The scored step of a sequence depends on its own
  steps only, so any causal model sees the padding after it never.
  Predicting 0.5 gives MSE E[(X1 + X2)^2] / 16 = 1.9 / 48 and accuracy
  about 0.154 (`baseline`).
  """
  min_len: int = 100  # the paper's T

  name = "adding_1997"
  vocab_size = None
  input_features = 2
  output_size = 1
  regression = True
  CORRECT_BELOW = 0.04  # the paper's "processed correctly": |error| < 0.04
  FIRST_MARK_WITHIN = 10  # X1 is one of the first ten pairs

  def __post_init__(self):
    # X2 is drawn from the first min_len/2 - 1 pairs, which must hold more
    # than the ten where X1 may sit.
    _check_params(self, min_len=1)
    if self.min_len < 2 * (self.FIRST_MARK_WITHIN + 1) + 2:
      raise ValueError(f"min_len: expected at least "
                       f"{2 * (self.FIRST_MARK_WITHIN + 1) + 2}, got "
                       f"{self.min_len}")

  @property
  def seq_len(self) -> int:  # type: ignore[override]
    return self.min_len + self.min_len // 10

  def batch(self, key: jax.Array, batch_size: int) -> Batch:
    k_len, k_values, k_first, k_second = jax.random.split(key, 4)
    lengths = jax.random.randint(k_len, (batch_size, 1), self.min_len,
                                 self.seq_len + 1)
    steps = jnp.arange(self.seq_len)[None, :]
    valid = steps < lengths
    first = jax.random.randint(k_first, (batch_size, 1), 0,
                               self.FIRST_MARK_WITHIN)
    # One of the first min_len/2 - 1 pairs other than `first`: draw among
    # min_len/2 - 2 slots and skip over `first`.
    second = jax.random.randint(k_second, (batch_size, 1), 0,
                                self.min_len // 2 - 2)
    second = second + (second >= first)
    marked = (steps == first) | (steps == second)
    ends = (steps == 0) | (steps == lengths - 1)
    markers = jnp.where(marked, 1.0, jnp.where(ends, -1.0, 0.0))
    values = jax.random.uniform(k_values, (batch_size, self.seq_len),
                                minval=-1.0, maxval=1.0)
    # X1 is zero when it is the first pair (the paper says so of X1 only).
    values = jnp.where((first == 0) & (steps == 0), 0.0, values)
    values, markers = values * valid, markers * valid
    total = (values * marked).sum(axis=1, keepdims=True)
    last = (steps == lengths - 1).astype(jnp.float32)
    return {"inputs": jnp.stack([values, markers], axis=-1),
            "targets": last * (0.5 + total / 4.0),
            "weights": last}

  def metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    metrics = super().metrics(logits, batch)
    weights = batch["weights"]
    error = jnp.abs(logits[..., 0].astype(jnp.float32) - batch["targets"])
    correct = (error < self.CORRECT_BELOW) * weights
    metrics["accuracy"] = correct.sum() / jnp.maximum(weights.sum(), 1.0)
    return metrics

  @property
  def baseline(self) -> dict[str, float]:
    # S = X1 + X2; X1 = 0 with probability 1/10, else uniform like X2.
    p_zero = 1.0 / self.FIRST_MARK_WITHIN
    mse = ((1.0 - p_zero) / 3.0 + 1.0 / 3.0) / 16.0
    band = 4.0 * self.CORRECT_BELOW  # |S| < band
    # Sum of two U[-1, 1] is triangular on [-2, 2]: P(|S| < a) = 1-(2-a)^2/4.
    accuracy = (1.0 - p_zero) * (1.0 - (2.0 - band) ** 2 / 4.0) + (
        p_zero * band)
    return {"loss": mse, "mse": mse, "accuracy": accuracy}


@dataclasses.dataclass(frozen=True)
class AssociativeRecall(Task):
  """Key-value pairs, then a query key; answer its value at the last step.

  Tokens: keys in [0, num_keys), values in [num_keys, num_keys + num_values),
  the query marker `num_keys + num_values`. Sequence: k1 v1 ... kn vn ? kq.
  Keys in a sequence are distinct. Chance accuracy: 1 / num_values.
  """
  num_pairs: int = 8
  num_keys: int = 16
  num_values: int = 16

  name = "recall"
  input_features = None

  def __post_init__(self):
    _check_params(self, num_pairs=1, num_keys=1, num_values=1)
    if self.num_pairs > self.num_keys:
      raise ValueError(f"num_pairs: expected at most num_keys "
                       f"({self.num_keys}) distinct keys, got {self.num_pairs}")

  @property
  def seq_len(self) -> int:  # type: ignore[override]
    return 2 * self.num_pairs + 2

  @property
  def vocab_size(self) -> int:  # type: ignore[override]
    return self.num_keys + self.num_values + 1

  @property
  def output_size(self) -> int:  # type: ignore[override]
    return self.vocab_size

  def batch(self, key: jax.Array, batch_size: int) -> Batch:
    k_keys, k_values, k_query = jax.random.split(key, 3)
    keys = jax.vmap(lambda k: jax.random.permutation(k, self.num_keys)[
        :self.num_pairs])(jax.random.split(k_keys, batch_size))
    values = jax.random.randint(k_values, (batch_size, self.num_pairs),
                                self.num_keys, self.num_keys + self.num_values)
    which = jax.random.randint(k_query, (batch_size,), 0, self.num_pairs)
    rows = jnp.arange(batch_size)
    pairs = jnp.stack([keys, values], axis=-1).reshape(batch_size, -1)
    marker = jnp.full((batch_size, 1), self.num_keys + self.num_values)
    inputs = jnp.concatenate([pairs, marker, keys[rows, which][:, None]],
                             axis=1).astype(jnp.int32)
    targets = jnp.zeros_like(inputs).at[:, -1].set(values[rows, which])
    return {"inputs": inputs, "targets": targets,
            "weights": _last_step_weights(batch_size, self.seq_len)}

  @property
  def baseline(self) -> dict[str, float]:
    return {"loss": math.log(self.num_values),
            "accuracy": 1.0 / self.num_values}


@dataclasses.dataclass(frozen=True)
class FirstToken(Task):
  """Remember the first token across `distance` noise tokens.

  Sequence: a class token in [0, num_classes), then `distance` tokens drawn
  from [num_classes, num_classes + num_noise) (so `num_noise >= 1`).
  Target at the last step: the first token. Chance accuracy: 1 /
  num_classes. The dependency distance is the experiments' knob.
  """
  distance: int = 50
  num_classes: int = 4
  num_noise: int = 8

  name = "first_token"
  input_features = None

  def __post_init__(self):
    _check_params(self, distance=1, num_classes=1, num_noise=1)

  @property
  def seq_len(self) -> int:  # type: ignore[override]
    return self.distance + 1

  @property
  def vocab_size(self) -> int:  # type: ignore[override]
    return self.num_classes + self.num_noise

  @property
  def output_size(self) -> int:  # type: ignore[override]
    return self.num_classes

  def batch(self, key: jax.Array, batch_size: int) -> Batch:
    k_class, k_noise = jax.random.split(key)
    label = jax.random.randint(k_class, (batch_size, 1), 0, self.num_classes)
    noise = jax.random.randint(k_noise, (batch_size, self.distance),
                               self.num_classes, self.vocab_size)
    inputs = jnp.concatenate([label, noise], axis=1).astype(jnp.int32)
    targets = jnp.zeros_like(inputs).at[:, -1].set(label[:, 0])
    return {"inputs": inputs, "targets": targets,
            "weights": _last_step_weights(batch_size, self.seq_len)}

  @property
  def baseline(self) -> dict[str, float]:
    return {"loss": math.log(self.num_classes),
            "accuracy": 1.0 / self.num_classes}


def read_text(path: str) -> str:
  """The UTF-8 text of `path`, or of several files joined by `os.pathsep`
  (`README.md:BUILD_NOTES.md`), concatenated in order.

  Raises ValueError naming `path` when a file is missing, unreadable or the
  text is empty.
  """
  if not isinstance(path, str) or not path:
    raise ValueError(f"path: expected a text file's path, got {path!r}")
  parts = []
  for name in path.split(os.pathsep):
    file = pathlib.Path(name)
    if not file.is_file():
      raise ValueError(f"path: no file at {str(file)!r}; point it at a text "
                       f"file (UTF-8)")
    try:
      parts.append(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f"path: cannot read {str(file)!r} as UTF-8 text: "
                       f"{e}") from e
  text = "".join(parts)
  if not text:
    raise ValueError(f"path: {path!r} is empty; a character model needs text")
  return text


class CharLM(Task):
  """Character-level language modelling on a text file.

  `path` is one file or several joined by `os.pathsep` (see `read_text`).
  The text's distinct characters are the vocabulary; the first
  `1 - validation_fraction` of the text trains, the rest validates. A batch is
  random windows of `seq_len + 1` characters: inputs the first `seq_len`,
  targets the next character at every step. Metric: bits per character; the
  baseline is the unigram entropy of the training text (a model that ignores
  context).
  """
  name = "char_lm"
  input_features = None

  def __init__(self, path: str, seq_len: int = 128,
               validation_fraction: float = 0.1):
    seq_len = validation.check_int("seq_len", seq_len)
    validation_fraction = validation.check_real("validation_fraction",
                                                validation_fraction)
    text = read_text(path)
    if not 0.0 < validation_fraction < 1.0:
      raise ValueError(f"validation_fraction: expected a value in (0, 1), got "
                       f"{validation_fraction}")
    split = int(len(text) * (1.0 - validation_fraction))
    if min(split, len(text) - split) <= seq_len:
      raise ValueError(
          f"path: {path} has {len(text)} characters, too few for windows of "
          f"seq_len + 1 = {seq_len + 1} in both splits (validation fraction "
          f"{validation_fraction})")
    self.path = path
    self.seq_len = seq_len
    self.chars = sorted(set(text))
    self.vocab_size = self.output_size = len(self.chars)
    lookup = {c: i for i, c in enumerate(self.chars)}
    codes = np.fromiter((lookup[c] for c in text), np.int32, len(text))
    self._train = jnp.asarray(codes[:split])
    self._validation = jnp.asarray(codes[split:])
    counts = np.bincount(codes[:split], minlength=len(self.chars))
    freq = counts[counts > 0] / split
    self._unigram_bits = float(-(freq * np.log2(freq)).sum())

  def _windows(self, data: jax.Array, key: jax.Array,
               batch_size: int) -> Batch:
    starts = jax.random.randint(key, (batch_size,), 0,
                                data.shape[0] - self.seq_len)
    windows = jax.vmap(lambda s: jax.lax.dynamic_slice(
        data, (s,), (self.seq_len + 1,)))(starts)
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
            "weights": jnp.ones((batch_size, self.seq_len), jnp.float32)}

  def batch(self, key: jax.Array, batch_size: int) -> Batch:
    return self._windows(self._train, key, batch_size)

  def eval_batch(self, key: jax.Array, batch_size: int) -> Batch:
    return self._windows(self._validation, key, batch_size)

  @property
  def baseline(self) -> dict[str, float]:
    return {"loss": self._unigram_bits * math.log(2),
            "bits_per_char": self._unigram_bits}

  def extra_metrics(self, nll, correct, batch):
    del correct
    weights = batch["weights"]
    return {"bits_per_char": (nll * weights).sum() / jnp.maximum(
        weights.sum(), 1.0) / math.log(2)}

  def encode(self, text: str) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(self.chars)}
    unknown = sorted(set(text) - set(lookup))
    if unknown:
      raise ValueError(f"characters {unknown} are not in the vocabulary of "
                       f"{self.path}")
    return np.asarray([lookup[c] for c in text], np.int32)

  def decode(self, codes) -> str:
    return "".join(self.chars[int(i)] for i in np.asarray(codes).reshape(-1))


TASKS = {"copy": CopyMemory, "adding": Adding, "adding_1997": Adding1997,
         "recall": AssociativeRecall, "first_token": FirstToken,
         "char_lm": CharLM}


def make_task(name: str, **kwargs) -> Task:
  """The task called `name` with its keyword arguments."""
  if name not in TASKS:
    raise ValueError(f"task name: expected one of {sorted(TASKS)}, got {name!r}")
  parameters = inspect.signature(TASKS[name]).parameters
  for key in kwargs:
    if key not in parameters:
      raise TypeError(f"{key}: unknown parameter of task {name!r}; expected "
                      f"names from {tuple(parameters)}")
  for key, parameter in parameters.items():
    if parameter.default is parameter.empty and key not in kwargs:
      raise TypeError(f"{key}: task {name!r} needs this parameter, got none")
  return TASKS[name](**kwargs)
