"""Small configs and the cached-decoding driver shared by the Transformer tests."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np

import kernels
import rnn_transformer as rt

VOCAB = 13


def tiny_config(**changes) -> rt.ModelConfig:
  """Two layers, width 16, four heads of 4: fast on a CPU.

  The attention fields are set for the Transformer only: other backbones
  refuse fields they would ignore.
  """
  fields = dict(vocab_size=VOCAB, num_layers=2, model_dim=16)
  if changes.get("backbone", "transformer") == "transformer":
    fields.update(num_heads=4, mlp_dim=32, max_len=16)
  fields.update(changes)
  return rt.ModelConfig(**fields)


def triton_config(**changes) -> rt.ModelConfig:
  """The smallest model the Triton kernels take (head_dim 32), one layer."""
  fields = dict(vocab_size=VOCAB, num_layers=1, model_dim=64, num_heads=2,
                num_kv_heads=1, mlp_dim=32, max_len=8)
  fields.update(changes)
  return rt.ModelConfig(**fields)


def implementation_context(implementation: str):
  """Triton runs under the interpreter on a CPU; the others need nothing."""
  if implementation == "triton":
    return kernels.triton_interpret(True)
  return contextlib.nullcontext()


def tokens(shape, seed: int = 0) -> jax.Array:
  return jax.random.randint(jax.random.key(seed), shape, 0, VOCAB)


def init_params(model, inputs, seed: int = 0, **kwargs):
  """Random parameters with the shapes of `model.init`, drawn on the host.

  The identities under test hold for any parameters; tracing init and
  filling it with numpy noise avoids compiling the initialisers, which
  dominates a tiny model's test time on a CPU. LayerNorm scales are near 1,
  everything else N(0, 0.3^2), so biases are non-zero too.
  """
  shapes = jax.eval_shape(functools.partial(model.init, **kwargs),
                          jax.random.key(seed), inputs)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(0.0, 0.3, leaf.shape)
    if jax.tree_util.keystr(path).endswith("['scale']"):
      noise = 1.0 + noise / 3
    return jnp.asarray(noise, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def cached_logits(model, params, inputs, prompt_len: int,
                  cache_len: int | None):
  """Logits of a prompt prefill then one decode call per remaining token.

  `cache_len=None` makes the first call without a cache (it creates one);
  otherwise the cache is `rt.init_cache(model, batch, cache_len)`.
  """
  batch, time = inputs.shape
  decode = jax.jit(functools.partial(model.apply, decode=True,
                                     mutable=["cache"]))
  variables = {"params": params}
  if cache_len is not None:
    variables["cache"] = rt.init_cache(model, batch, cache_len)
  pieces = []
  chunks = [(0, prompt_len)] + [(t, t + 1) for t in range(prompt_len, time)]
  for start, end in chunks:
    out, mutated = decode(variables, inputs[:, start:end])
    variables = {"params": params, "cache": mutated["cache"]}
    pieces.append(out.logits)
  return jnp.concatenate(pieces, axis=1)
