"""Whole backbones built from one `ModelConfig`, and decoding from them.

* `model_config`: `ModelConfig` (every backbone's hyper-parameters) and
  `BackboneOutput` (what every backbone returns).
* `embedding`: token embedding and the (optionally tied) output layer.
* `transformer`: `TransformerBlock`, `TransformerEncoder`, `TransformerLM`.
* `backbones`: `build_backbone(config)` for every backbone name;
  `RecurrentBackbone`.
* `generation`: `generate` and `init_cache`, sampling through the decode
  cache of any causal backbone.

The Transformer blocks live here rather than in `layers` because they take a
`ModelConfig`; `layers` holds modules configured by their own fields.
"""

from rnn_transformer.models.backbones import build_backbone
from rnn_transformer.models.backbones import RecurrentBackbone
from rnn_transformer.models.generation import generate
from rnn_transformer.models.generation import init_cache
from rnn_transformer.models.model_config import BackboneOutput
from rnn_transformer.models.model_config import ModelConfig
from rnn_transformer.models.transformer import stack_block_params
from rnn_transformer.models.transformer import TransformerBlock
from rnn_transformer.models.transformer import TransformerEncoder
from rnn_transformer.models.transformer import TransformerLM
from rnn_transformer.models.transformer import unstack_block_params

__all__ = [
    "BackboneOutput",
    "ModelConfig",
    "RecurrentBackbone",
    "TransformerBlock",
    "TransformerEncoder",
    "TransformerLM",
    "build_backbone",
    "generate",
    "init_cache",
    "stack_block_params",
    "unstack_block_params",
]
