"""Training runs: the trainer, its config, the built-in tasks, metric logs.

* `train`: `Trainer` and `train_and_evaluate(config, workdir)`, resumable from orbax
  checkpoints, data-parallel over the local devices.
* `train_config`: the ml_collections config every `configs/*.py` builds,
  and which of its fields a resume may change.
* `tasks`: synthetic tasks (copy, adding, recall, first token) and the
  character-level language model on a text file.
* `metric_writer`: `metrics.jsonl`, TensorBoard events and console lines.

Imported by `scripts/train.py`, `scripts/evaluate.py`, `scripts/sample.py`
and the experiments; nothing below it imports training.
"""
