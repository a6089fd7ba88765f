r"""||dL/dh_t|| against t per recurrent cell; clipping an exploding run.

    python scripts/experiment.py --config=configs/experiments/gradient_flow.py:tiny \
        --output_dir=/tmp/experiments
"""

from rnn_transformer.experiments import gradient_flow


def get_config(scale="default"):
  return gradient_flow.get_config(scale)
