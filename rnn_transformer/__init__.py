"""rnn-transformer: from RNNs to Transformers in JAX.

The package is layered; each subpackage imports only those below it
(`tests/test_layering.py` enforces it):

    experiments    the seed's claims as experiments (figures, verdicts)
    benchmarks     timed comparisons behind scripts/bench_*.py
    training       trainer, train config, tasks, metric writer
    models         ModelConfig, backbones, Transformer LM, generation
    layers         cells, RNN, linear cells, attention, positional encodings
    recurrences    linear_scan, newton_scan, fused backward, sequence order
    analysis       gradient flow, spectral radius, program depth
    validation     argument checks shared by all of the above

and `kernels` (a separate top-level package: attention implementations,
the Triton kernels and their compile gate) sits beside `recurrences`, below
`layers`.

The names below are the public API: recurrent cells (`SimpleRNNCell`,
`LSTMCell`, `GRUCell`) run over time by `RNN` (lax.scan through Flax's lifted
scan), stacked by `StackedRNN` and `Bidirectional`; linear cells (`MinGRU`,
`MinLSTM`, `LRU`) that `RNN` runs in parallel over time with `linear_scan`;
nonlinear cells in parallel by Newton iterations (`newton_scan`,
`newton_rnn`); `params_from_flax` maps flax's per-gate cell parameters
onto the fused layout; `MultiHeadAttention` on `kernels.attention`; positional
encodings; `TransformerBlock`, `TransformerEncoder`, `TransformerLM`;
`build_backbone(ModelConfig(backbone=...))` for any of "rnn", "lstm", "gru",
"mingru", "minlstm", "lru" or "transformer", and `generate` to sample from
any causal one.
"""

from rnn_transformer.analysis import gradient_flow
from rnn_transformer.analysis import spectral_radius
from rnn_transformer.layers import Bidirectional
from rnn_transformer.layers import FusedGateCell
from rnn_transformer.layers import GRUCell
from rnn_transformer.layers import initializers
from rnn_transformer.layers import LearnedPositionEmbedding
from rnn_transformer.layers import LinearRecurrentCell
from rnn_transformer.layers import LRU
from rnn_transformer.layers import LSTMCell
from rnn_transformer.layers import MinGRU
from rnn_transformer.layers import MinLSTM
from rnn_transformer.layers import MultiHeadAttention
from rnn_transformer.layers import RNN
from rnn_transformer.layers import rotary_position_embedding
from rnn_transformer.layers import SimpleRNNCell
from rnn_transformer.layers import params_from_flax
from rnn_transformer.layers import sinusoidal_position_encoding
from rnn_transformer.layers import StackedRNN
from rnn_transformer.models import BackboneOutput
from rnn_transformer.models import build_backbone
from rnn_transformer.models import generate
from rnn_transformer.models import init_cache
from rnn_transformer.models import ModelConfig
from rnn_transformer.models import RecurrentBackbone
from rnn_transformer.models import stack_block_params
from rnn_transformer.models import TransformerBlock
from rnn_transformer.models import TransformerEncoder
from rnn_transformer.models import TransformerLM
from rnn_transformer.models import unstack_block_params
from rnn_transformer.recurrences import flip_sequences
from rnn_transformer.recurrences import linear_recurrence
from rnn_transformer.recurrences import linear_scan
from rnn_transformer.recurrences import log_linear_scan
from rnn_transformer.recurrences import newton_recurrence
from rnn_transformer.recurrences import newton_rnn
from rnn_transformer.recurrences import newton_scan
from rnn_transformer.recurrences import NewtonInfo
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
    "params_from_flax",
    "rotary_position_embedding",
    "sinusoidal_position_encoding",
    "spectral_radius",
    "stack_block_params",
    "unstack_block_params",
]

__version__ = "0.1.0"
