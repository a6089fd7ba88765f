r"""Benchmarks the Transformer LM: training step per attention implementation,
generation with and without the KV cache, and one layer's attention of a
prefill chunk and of a decoded token through the cache (query offset against
all cache rows).

    python scripts/bench_transformer.py
    python scripts/bench_transformer.py --config.seq_lens='(512, 1024)' \
        --config.model.num_layers=4 --output_dir=/tmp/bench

Prints Markdown tables (training tokens/s; generation tokens/s and the cache's
speed-up); with --output_dir also writes bench_transformer.{md,json}.
"""

import json
import os
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from rnn_transformer.benchmarks import outputs
from rnn_transformer.benchmarks import transformer_benchmark

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    str(pathlib.Path(__file__).resolve().parents[1] / "configs" /
        "bench_transformer.py"),
    "Benchmark sizes (an ml_collections config file).", lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where to write bench_transformer.md and .json.")


def main(argv):
  del argv
  config = _CONFIG.value
  training, generation, cache, skipped = transformer_benchmark.run(config)
  model = config.model
  title = (f"{outputs.device_description()}; {model.num_layers} layers, "
           f"width {model.model_dim}, {model.num_heads} heads, mlp "
           f"{model.mlp_dim}, vocab {model.vocab_size}, {model.positional}, "
           f"{model.dtype}; training batch {config.batch}; generation batch "
           f"{config.gen_batch}, prompt {config.prompt_len}, greedy")
  report = "\n\n".join(
      [title, transformer_benchmark.format_training(training),
       transformer_benchmark.format_generation(generation),
       f"Attention through a {config.cache_len}-token cache filled to its "
       f"middle (one layer, batch {config.gen_batch}):",
       transformer_benchmark.format_cache_attention(cache)] +
      ["skipped: " + "; ".join(skipped)] * bool(skipped))
  print(report)
  if _OUTPUT_DIR.value:
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    with open(os.path.join(_OUTPUT_DIR.value, "bench_transformer.md"),
              "w") as f:
      f.write(report + "\n")
    with open(os.path.join(_OUTPUT_DIR.value, "bench_transformer.json"),
              "w") as f:
      json.dump(dict(title=title, training=training, generation=generation,
                     cache_attention=cache, skipped=skipped), f, indent=1)


if __name__ == "__main__":
  app.run(main)
