"""Measuring models and programs, not building them.

* `gradient_flow`: ||dL/dh_t|| at every step of any recurrent layer, and
  rho(W_hh) of a cell's recurrent kernel.
* `spectral`: `spectral_radius` of any square matrix, under `jit`.
* `program_depth`: the critical-path length and sequential loop steps of a
  traced program.

Analysis imports nothing else of the package, so layers (the spectral-radius
initialisers) and benchmarks can use it.
"""

from rnn_transformer.analysis import gradient_flow
from rnn_transformer.analysis import program_depth
from rnn_transformer.analysis.spectral import spectral_radius

__all__ = ["gradient_flow", "program_depth", "spectral_radius"]
