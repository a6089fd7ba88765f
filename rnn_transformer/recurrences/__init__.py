"""Evaluating recurrences over time, independent of any layer.

* `linear_recurrence`: `linear_scan` / `log_linear_scan` for
  `h_t = a_t * h_{t-1} + b_t` (associative, chunked or sequential).
* `newton_recurrence`: `newton_scan` / `newton_rnn`, any nonlinear cell in
  parallel over time by Newton iterations (DEER / quasi-DEER).
* `fused_recurrence`: the deferred-weight-gradient backward of a fused-gate
  recurrence.
* `sequence_order`: `flip_sequences`, time reversal within padded sequences.

Recurrences import only `validation`: they take cells as functions, so they
never import `layers`.
"""

from rnn_transformer.recurrences.linear_recurrence import linear_scan
from rnn_transformer.recurrences.linear_recurrence import log_linear_scan
from rnn_transformer.recurrences.newton_recurrence import newton_rnn
from rnn_transformer.recurrences.newton_recurrence import newton_scan
from rnn_transformer.recurrences.newton_recurrence import NewtonInfo
from rnn_transformer.recurrences.sequence_order import flip_sequences

__all__ = [
    "NewtonInfo",
    "flip_sequences",
    "linear_scan",
    "log_linear_scan",
    "newton_rnn",
    "newton_scan",
]
