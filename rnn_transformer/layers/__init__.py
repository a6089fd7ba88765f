"""Flax linen layers configured by their own fields (no `ModelConfig`).

* `cells`: `SimpleRNNCell` (Elman), `LSTMCell`, `GRUCell` on one fused-gate
  base, `FusedGateCell`.
* `recurrent`: `RNN` runs any cell over `(batch, time, features)` by
  `lax.scan` (or Newton iterations, or a parallel scan for linear cells);
  `Bidirectional`, `StackedRNN`.
* `linear_rnn`: cells linear in the hidden state, `MinGRU`, `MinLSTM`, `LRU`.
* `attention`: `MultiHeadAttention` on `kernels.attention`.
* `positional`: sinusoidal, learned and rotary position encodings.
* `initializers`: per-gate and spectral-radius initialisers.

Layers import `recurrences`, `analysis`, `validation` and `kernels`, never
`models`, `training`, `benchmarks` or `experiments`.
"""

from rnn_transformer.layers.attention import MultiHeadAttention
from rnn_transformer.layers.cells import FusedGateCell
from rnn_transformer.layers.cells import GRUCell
from rnn_transformer.layers.cells import LSTMCell
from rnn_transformer.layers.cells import SimpleRNNCell
from rnn_transformer.layers.cells import params_from_flax
from rnn_transformer.layers.linear_rnn import LinearRecurrentCell
from rnn_transformer.layers.linear_rnn import LRU
from rnn_transformer.layers.linear_rnn import MinGRU
from rnn_transformer.layers.linear_rnn import MinLSTM
from rnn_transformer.layers.positional import LearnedPositionEmbedding
from rnn_transformer.layers.positional import rotary_position_embedding
from rnn_transformer.layers.positional import sinusoidal_position_encoding
from rnn_transformer.layers.recurrent import Bidirectional
from rnn_transformer.layers.recurrent import RNN
from rnn_transformer.layers.recurrent import StackedRNN

__all__ = [
    "Bidirectional",
    "FusedGateCell",
    "GRUCell",
    "LSTMCell",
    "LRU",
    "LearnedPositionEmbedding",
    "LinearRecurrentCell",
    "MinGRU",
    "MinLSTM",
    "MultiHeadAttention",
    "RNN",
    "SimpleRNNCell",
    "StackedRNN",
    "params_from_flax",
    "rotary_position_embedding",
    "sinusoidal_position_encoding",
]
