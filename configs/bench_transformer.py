"""Sizes for scripts/bench_transformer.py.

    python scripts/bench_transformer.py --config=configs/bench_transformer.py \
        --config.seq_lens='(256, 1024)' --config.model.num_layers=4
    python scripts/bench_transformer.py --config=configs/bench_transformer.py:tiny
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(  # rnn_transformer.ModelConfig
      backbone="transformer",
      vocab_size=256,  # byte-level vocabulary
      num_layers=2,  # Transformer blocks
      model_dim=128,  # residual width
      num_heads=4,  # query heads (head_dim 32, the smallest Triton takes)
      num_kv_heads=None,  # None: multi-head; fewer: grouped-query
      mlp_dim=512,  # feed-forward width
      max_len=512,  # >= every seq_len and prompt_len + new_tokens
      positional="rope",  # none | sinusoidal | learned | rope
      dtype="float32",  # compute dtype
  ))
  config.batch = 8  # sequences per training step
  config.seq_lens = (128, 256, 512)  # training sequence lengths to time
  # Attention implementations to time; those that cannot run here (triton
  # off-GPU without the interpreter, cudnn off-GPU) are listed as skipped.
  config.implementations = ("xla", "reference", "blockwise", "triton", "cudnn")
  config.prompt_len = 16  # prompt tokens before generation
  config.new_tokens = 256  # generated tokens per sequence
  config.gen_batch = 1  # sequences generated at once
  config.cache_len = 8192  # KV cache of the cache-attention rows
  config.chunk_len = 64  # prefill chunk of the cache-attention rows
  config.warmup = 1  # untimed calls after compilation
  config.iters = 5  # timed calls; the median is reported
  if arg == "tiny":  # seconds on a CPU; used by the test suite
    config.model.update(dict(num_layers=1, model_dim=32, num_heads=1,
                             mlp_dim=32, max_len=16, vocab_size=17))
    config.batch, config.seq_lens = 2, (8, 16)
    config.implementations = ("xla", "blockwise")
    config.prompt_len, config.new_tokens = 4, 8
    config.cache_len, config.chunk_len = 32, 4
    config.warmup, config.iters = 1, 2
  elif arg is not None:
    raise ValueError(f"config argument: expected 'tiny' or nothing, got {arg!r}")
  return config
