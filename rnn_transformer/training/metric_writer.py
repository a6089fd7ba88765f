"""Where training metrics go: a JSONL file, TensorBoard events, the terminal.

The terminal shows the run's own lines. On a terminal a tqdm progress bar
(rate, ETA, the latest loss) replaces the per-record train lines; elsewhere
(CI, a redirected log) every record is one plain line. Library INFO logs
(orbax, jax) go to `<workdir>/train.log` (`log_to_file`) instead of the
console.

Only process 0 writes (as clu's writers do), so a multi-host run leaves one
record. Every record carries its step; the JSONL file is line-buffered, so a
killed run keeps every line it logged.

A run resumed from the checkpoint at step `s` repeats the steps after `s`
that the killed run had logged. So that each step is recorded once, with the
resumed run's value, the writer drops the JSONL records after `s` (rewriting
the file atomically) and writes a TensorBoard `SessionLog.START` event at
step `s + 1`, TensorBoard's restart marker: readers discard the earlier
events from that step on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping

import jax
import tqdm
from absl import logging as absl_logging

METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
# Shown in the progress bar, in this order, when a record has them.
_BAR_METRICS = ("loss", "accuracy", "bits_per_char", "mse")


def console(message: str) -> None:
  """A line of the run's own (process 0) on stdout, and in the log file."""
  absl_logging.info(message)
  if jax.process_index() == 0:
    tqdm.tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def log_to_file(workdir: str) -> logging.Handler:
  """Sends every log record at INFO and above to `<workdir>/train.log`
  (`train.process<i>.log` for process i > 0 of a multi-host run).

  Returns the handler, for `logging.getLogger().removeHandler` at the end.
  """
  name = LOG_FILE
  if jax.process_index():  # one file per process of a multi-host run
    name = name.replace(".log", f".process{jax.process_index()}.log")
  handler = logging.FileHandler(os.path.join(workdir, name),
                                encoding="utf-8")
  handler.setLevel(logging.INFO)
  handler.setFormatter(absl_logging.PythonFormatter())
  logging.getLogger().addHandler(handler)
  return handler


def quiet_library_logs() -> None:
  """Console: warnings and errors only; INFO still reaches `log_to_file`."""
  absl_logging.get_absl_handler().setLevel(logging.WARNING)


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files.

  Args:
    workdir: the run's directory.
    total_steps: for the progress bar.
    progress_bar: draw a progress bar when stdout is a terminal; otherwise
      each training record is printed as one line.
    start_step: the step the run starts from (a resumed run's checkpoint
      step); records of later steps left by an earlier run are dropped.
  """

  def __init__(self, workdir: str, total_steps: int,
               progress_bar: bool = True, start_step: int = 0):
    self._active = jax.process_index() == 0
    self._total = total_steps
    self._bar = None
    self._jsonl = None
    self._events = None
    if not self._active:
      return
    if progress_bar and sys.stdout.isatty():
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step,
                            unit="step", dynamic_ncols=True, file=sys.stdout)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    resumed = os.path.exists(path)
    if resumed:
      _drop_records_after(path, start_step)
    self._jsonl = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: PLC0415
    self._events = EventFileWriter(os.path.join(workdir, "tensorboard"))
    if resumed:
      self._restart_events(start_step + 1)

  def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
    """Records `scalars` of `split` ("train" or "eval") at `step`."""
    if not self._active:
      return
    values = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": step, "split": split,
                                  "time": time.time(), **values}) + "\n")
    self._write_events(step, split, values)
    if self._bar is not None and split == "train":
      self._bar.set_postfix_str(", ".join(
          f"{k}={_fmt(values[k])}" for k in _BAR_METRICS if k in values))
      return
    self._print(f"{split} step {step}/{self._total}: " + ", ".join(
        f"{k}={_fmt(v)}" for k, v in values.items()))

  def progress(self, step: int) -> None:
    """Moves the progress bar (if any) to `step`."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def _print(self, line: str) -> None:
    if self._bar is not None:
      self._bar.write(line, file=sys.stdout)
    else:
      print(line, flush=True)

  def text(self, step: int, tag: str, value: str) -> None:
    """Records a text sample (e.g. generated characters)."""
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": step, "split": "sample", tag: value})
                      + "\n")
    self._print(f"{tag} at step {step}: {value!r}")

  def _write_events(self, step: int, split: str,
                    values: Mapping[str, float]) -> None:
    from tensorboard.compat.proto import event_pb2  # noqa: PLC0415
    from tensorboard.compat.proto import summary_pb2  # noqa: PLC0415
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=v)
        for k, v in values.items() if math.isfinite(v)])
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                           summary=summary))

  def _restart_events(self, step: int) -> None:
    from tensorboard.compat.proto import event_pb2  # noqa: PLC0415
    self._events.add_event(event_pb2.Event(
        wall_time=time.time(), step=step,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._events.close()
      self._jsonl = self._events = None


def _drop_records_after(path: str, step: int) -> None:
  """Rewrites the JSONL file at `path` without records after `step`.

  A line cut short by a kill is dropped too. Written to a temporary file and
  renamed, so a kill during the rewrite leaves the old file or the new one.
  """
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if record.get("step", 0) <= step:
        kept.append(line if line.endswith("\n") else line + "\n")
  temporary = path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    f.writelines(kept)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def _fmt(value: float) -> str:
  return f"{value:.4g}"
