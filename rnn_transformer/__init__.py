"""rnn-transformer: from RNNs to Transformers in JAX.

Recurrent cells (`SimpleRNNCell`, `LSTMCell`, `GRUCell`) run over time by
`RNN` (lax.scan through Flax's lifted scan), stacked by `StackedRNN` and
`Bidirectional`; gradient-flow probes in `gradient_flow`; recurrent
initialisers in `initializers`.

Transformers: `MultiHeadAttention` on the kernels of `kernels.attention`
(grouped-query, masks, KV-cache decoding), positional encodings
(sinusoidal, learned, rotary), `TransformerBlock`, `TransformerEncoder` and
`TransformerLM`. `build_backbone(ModelConfig(backbone=...))` builds any of
"rnn", "lstm", "gru", "mingru", "minlstm", "lru" or "transformer" behind one
interface, and `generate`
samples from any causal one through its decode cache.

Recurrences linear in the hidden state (`MinGRU`, `MinLSTM`, `LRU`) are cells
too, and `RNN` runs them over time in parallel with
`linear_recurrence.linear_scan` (associative, chunked or sequential).
Nonlinear cells run in parallel over time too, by Newton iterations
(DEER / quasi-DEER): `newton_scan` / `newton_rnn` in `newton_recurrence`.
"""

from rnn_transformer import gradient_flow
from rnn_transformer import initializers
from rnn_transformer import linear_recurrence
from rnn_transformer import newton_recurrence
from rnn_transformer.attention import MultiHeadAttention
from rnn_transformer.backbones import build_backbone
from rnn_transformer.backbones import RecurrentBackbone
from rnn_transformer.cells import FusedGateCell
from rnn_transformer.cells import GRUCell
from rnn_transformer.cells import LSTMCell
from rnn_transformer.cells import SimpleRNNCell
from rnn_transformer.generation import generate
from rnn_transformer.generation import init_cache
from rnn_transformer.linear_recurrence import linear_scan
from rnn_transformer.linear_recurrence import log_linear_scan
from rnn_transformer.linear_rnn import LinearRecurrentCell
from rnn_transformer.linear_rnn import LRU
from rnn_transformer.linear_rnn import MinGRU
from rnn_transformer.linear_rnn import MinLSTM
from rnn_transformer.model_config import BackboneOutput
from rnn_transformer.model_config import ModelConfig
from rnn_transformer.newton_recurrence import newton_rnn
from rnn_transformer.newton_recurrence import newton_scan
from rnn_transformer.newton_recurrence import NewtonInfo
from rnn_transformer.positional import LearnedPositionEmbedding
from rnn_transformer.positional import rotary_position_embedding
from rnn_transformer.positional import sinusoidal_position_encoding
from rnn_transformer.recurrent import Bidirectional
from rnn_transformer.recurrent import flip_sequences
from rnn_transformer.recurrent import RNN
from rnn_transformer.recurrent import StackedRNN
from rnn_transformer.spectral import spectral_radius
from rnn_transformer.transformer import stack_block_params
from rnn_transformer.transformer import TransformerBlock
from rnn_transformer.transformer import TransformerEncoder
from rnn_transformer.transformer import TransformerLM
from rnn_transformer.transformer import unstack_block_params
from rnn_transformer.validation import DTypeError

__all__ = [
    "BackboneOutput",
    "Bidirectional",
    "DTypeError",
    "FusedGateCell",
    "GRUCell",
    "LSTMCell",
    "LRU",
    "LearnedPositionEmbedding",
    "LinearRecurrentCell",
    "MinGRU",
    "MinLSTM",
    "ModelConfig",
    "MultiHeadAttention",
    "NewtonInfo",
    "RNN",
    "RecurrentBackbone",
    "SimpleRNNCell",
    "StackedRNN",
    "TransformerBlock",
    "TransformerEncoder",
    "TransformerLM",
    "build_backbone",
    "flip_sequences",
    "generate",
    "gradient_flow",
    "init_cache",
    "initializers",
    "linear_recurrence",
    "linear_scan",
    "log_linear_scan",
    "newton_recurrence",
    "newton_rnn",
    "newton_scan",
    "rotary_position_embedding",
    "sinusoidal_position_encoding",
    "spectral_radius",
    "stack_block_params",
    "unstack_block_params",
]

__version__ = "0.1.0"
