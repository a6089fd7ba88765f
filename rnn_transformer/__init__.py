"""rnn-transformer: from RNNs to Transformers in JAX.

Recurrent cells (`SimpleRNNCell`, `LSTMCell`, `GRUCell`) run over time by
`RNN` (lax.scan through Flax's lifted scan), stacked by `StackedRNN` and
`Bidirectional`; gradient-flow probes in `gradient_flow`; recurrent
initialisers in `initializers`.
"""

from rnn_transformer import gradient_flow
from rnn_transformer import initializers
from rnn_transformer.cells import FusedGateCell
from rnn_transformer.cells import GRUCell
from rnn_transformer.cells import LSTMCell
from rnn_transformer.cells import SimpleRNNCell
from rnn_transformer.recurrent import Bidirectional
from rnn_transformer.recurrent import flip_sequences
from rnn_transformer.recurrent import RNN
from rnn_transformer.recurrent import StackedRNN
from rnn_transformer.spectral import spectral_radius
from rnn_transformer.validation import DTypeError

__all__ = [
    "Bidirectional",
    "DTypeError",
    "FusedGateCell",
    "GRUCell",
    "LSTMCell",
    "RNN",
    "SimpleRNNCell",
    "StackedRNN",
    "flip_sequences",
    "gradient_flow",
    "initializers",
    "spectral_radius",
]

__version__ = "0.1.0"
