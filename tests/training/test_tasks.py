"""The built-in tasks: every batch's tokens lie in the task's vocabulary and
its targets among its outputs; every parameter is checked at construction,
with an error naming it (never a jax error from inside `batch`)."""

import jax
import numpy as np
import pytest

from rnn_transformer.training import tasks, train_config

# Small parameters for each task in tasks.TASKS (char_lm adds its path).
SMALL = {
    "copy": [dict(delay=3, copy_len=2), dict(delay=2, num_symbols=20,
                                             copy_len=3),
             dict(delay=1, num_symbols=1, copy_len=1)],
    "adding": [dict(seq_len=4), dict(seq_len=2)],
    "adding_1997": [dict(min_len=24)],
    "recall": [dict(num_pairs=2, num_keys=3, num_values=2),
               dict(num_pairs=1, num_keys=1, num_values=1)],
    "first_token": [dict(distance=3), dict(distance=1, num_classes=1,
                                           num_noise=1)],
    "char_lm": [dict(seq_len=4)],
}


@pytest.fixture(scope="module")
def text_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("text") / "text.txt"
  path.write_text("the quick brown fox jumps over the lazy dog. " * 4,
                  encoding="utf-8")
  return str(path)


def _make(name, params, text_path):
  if name == "char_lm":
    params = dict(params, path=text_path)
  return tasks.make_task(name, **params)


def test_every_task_has_small_parameters():
  assert set(SMALL) == set(tasks.TASKS)


@pytest.mark.parametrize("name,params", [
    (name, params) for name, rows in SMALL.items() for params in rows])
def test_batches_stay_in_the_vocabulary_and_the_outputs(name, params,
                                                        text_path):
  task = _make(name, params, text_path)
  for key in range(3):
    batch = jax.tree.map(np.asarray, task.batch(jax.random.key(key), 16))
    inputs, targets = batch["inputs"], batch["targets"]
    assert inputs.shape[:2] == targets.shape == batch["weights"].shape == (
        16, task.seq_len)
    if task.vocab_size is None:
      assert inputs.shape[2] == task.input_features
    else:
      assert inputs.dtype == np.int32
      assert 0 <= inputs.min() and inputs.max() < task.vocab_size, (
          inputs.min(), inputs.max(), task.vocab_size)
    if not task.regression:
      assert 0 <= targets.min() and targets.max() < task.output_size, (
          targets.min(), targets.max(), task.output_size)


def test_copy_derives_its_vocabulary_from_the_symbols():
  assert tasks.CopyMemory().vocab_size == 10  # the paper's 8 symbols
  task = tasks.make_task(**_task_of(train_config.task_config(
      "copy", "lstm", num_symbols=20, delay=2, copy_len=3)))
  assert task.vocab_size == task.output_size == 22


def _task_of(config):
  return dict(name=config.task.name, **config.task.params.to_dict())


@pytest.mark.parametrize("name,params,error,match", [
    ("copy", dict(copy_len=0), ValueError, "copy_len: expected a positive"),
    ("copy", dict(copy_len=-2), ValueError, "copy_len: expected a positive"),
    ("copy", dict(num_symbols=0), ValueError, "num_symbols: expected a "
     "positive"),
    ("copy", dict(delay=0), ValueError, "delay: expected a positive"),
    ("copy", dict(delay=2.5), TypeError, "delay: expected an int, got float"),
    ("copy", dict(copy_len="3"), TypeError, "copy_len: expected an int"),
    ("copy", dict(num_symbols=True), TypeError, "num_symbols: expected an "
     "int"),
    ("adding", dict(seq_len=2.5), TypeError, "seq_len: expected an int"),
    ("adding", dict(seq_len=1), ValueError, "seq_len: expected an int >= 2"),
    ("adding_1997", dict(min_len=30.5), TypeError, "min_len: expected an "
     "int"),
    ("adding_1997", dict(min_len=23), ValueError, "min_len: expected at "
     "least 24"),
    ("recall", dict(num_values=0), ValueError, "num_values: expected a "
     "positive"),
    ("recall", dict(num_pairs=0), ValueError, "num_pairs: expected a "
     "positive"),
    ("recall", dict(num_pairs=-1), ValueError, "num_pairs: expected a "
     "positive"),
    ("recall", dict(num_pairs=2.5), TypeError, "num_pairs: expected an int"),
    ("recall", dict(num_keys=0, num_pairs=1), ValueError, "num_keys: "
     "expected a positive"),
    ("recall", dict(num_pairs=5, num_keys=4), ValueError, "num_pairs: "
     "expected at most num_keys"),
    ("first_token", dict(num_noise=0), ValueError, "num_noise: expected a "
     "positive"),
    ("first_token", dict(num_classes=0), ValueError, "num_classes: expected "
     "a positive"),
    ("first_token", dict(distance=1.5), TypeError, "distance: expected an "
     "int"),
    ("first_token", dict(distance=0), ValueError, "distance: expected a "
     "positive"),
    ("char_lm", dict(seq_len=2.5), TypeError, "seq_len: expected an int"),
    ("char_lm", dict(seq_len=0), ValueError, "seq_len: expected a positive"),
    ("char_lm", dict(validation_fraction="0.1"), TypeError,
     "validation_fraction: expected a number"),
    ("char_lm", dict(validation_fraction=1.0), ValueError,
     r"validation_fraction: expected a value in \(0, 1\)"),
    ("copy", dict(colour=1), TypeError, "colour: unknown parameter of task "
     "'copy'; expected names from"),
])
def test_bad_parameters_raise_named_errors(name, params, error, match,
                                           text_path):
  with pytest.raises(error, match=match):
    _make(name, params, text_path)


def test_char_lm_without_a_path_names_it():
  with pytest.raises(TypeError, match="path: task 'char_lm' needs"):
    tasks.make_task("char_lm")


def test_numpy_ints_are_stored_as_python_ints():
  task = tasks.CopyMemory(delay=np.int64(3), copy_len=np.int32(2))
  assert type(task.delay) is int and type(task.copy_len) is int
  assert task.seq_len == 7
