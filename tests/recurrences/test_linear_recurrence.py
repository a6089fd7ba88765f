"""linear_scan / log_linear_scan against a float64 loop of the RNN semantics,
and every method against the sequential one (outputs and gradients)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolerances
from rnn_transformer.recurrences import linear_recurrence as lr

BATCH, TIME, FEATURES = 3, 11, 4
LENGTHS = np.array([TIME, 6, 0])
# Row 0 restarts at 0 (a no-op), 3 and 7; row 1 at 4 and in its padding (8).
RESETS = {0: [0, 3, 7], 1: [4, 8]}
MASKS = ["none", "lengths", "reset", "lengths+reset"]
# The default run covers no mask and all masks at once; each mask alone is
# slow-marked (compilation dominates on a 2-core CPU).
FAST_MASKS = [m if m in ("none", "lengths+reset") else
              pytest.param(m, marks=pytest.mark.slow) for m in MASKS]


# Jitted: one compilation per configuration instead of one per primitive in
# eager mode. Errors are tested unjitted (TestBadInput).
_STATIC = ("reverse", "method", "chunk_size")
scan = jax.jit(lr.linear_scan, static_argnames=_STATIC)
log_scan = jax.jit(lr.log_linear_scan, static_argnames=_STATIC)


def _reset():
  reset = np.zeros((BATCH, TIME), bool)
  for row, steps in RESETS.items():
    reset[row, steps] = True
  return reset


def _masks(mask):
  lengths = LENGTHS if "lengths" in mask else None
  reset = _reset() if "reset" in mask else None
  return lengths, reset


def _coefficients(dtype, key=0):
  """Decays |a| < 1 and inputs b of `dtype` (real, or complex)."""
  keys = jax.random.split(jax.random.key(key), 5)
  shape = (BATCH, TIME, FEATURES)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    radius = jax.random.uniform(keys[0], shape, minval=0.5, maxval=0.99)
    phase = jax.random.uniform(keys[1], shape, maxval=2 * np.pi)
    a = (radius * jnp.exp(1j * phase)).astype(dtype)
    b = (jax.random.normal(keys[2], shape) +
         1j * jax.random.normal(keys[3], shape)).astype(dtype)
    h0 = (jax.random.normal(keys[4], shape[::2]) * (1 + 1j)).astype(dtype)
  else:
    a = jax.random.uniform(keys[0], shape, minval=0.3, maxval=0.99).astype(
        dtype)
    b = jax.random.normal(keys[2], shape).astype(dtype)
    h0 = jax.random.normal(keys[4], shape[::2]).astype(dtype)
  return a, b, h0


def numpy_oracle(a, b, h0, lengths, reset, reverse):
  """`recurrent.RNN`'s semantics, one example and one step at a time."""
  a, b = np.asarray(a, np.complex128), np.asarray(b, np.complex128)
  batch, time, features = a.shape
  h0 = np.zeros((batch, features)) if h0 is None else np.asarray(h0)
  lengths = np.full(batch, time) if lengths is None else lengths
  reset = np.zeros((batch, time), bool) if reset is None else reset
  outputs = np.zeros_like(a)
  final = np.zeros((batch, features), np.complex128)
  for row in range(batch):
    length, h = lengths[row], h0[row].astype(np.complex128)
    for t in (reversed(range(length)) if reverse else range(length)):
      # Reversed, a segment restarts at the step before its reset.
      if (t + 1 < length and reset[row, t + 1]) if reverse else reset[row, t]:
        h = np.zeros_like(h)
      h = a[row, t] * h + b[row, t]
      outputs[row, t] = h
    final[row] = h
  return final, outputs


def _cast(x, dtype):
  return x if jnp.issubdtype(dtype, jnp.complexfloating) else x.real


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("with_carry", [
    pytest.param(False, marks=pytest.mark.slow), True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask", FAST_MASKS)
def test_sequential_equals_the_step_by_step_oracle(mask, reverse, with_carry,
                                                   dtype):
  a, b, h0 = _coefficients(dtype)
  lengths, reset = _masks(mask)
  h0 = h0 if with_carry else None
  final, h = scan(
      a, b, initial_carry=h0, reverse=reverse, method="sequential",
      seq_lengths=None if lengths is None else jnp.asarray(lengths),
      reset=None if reset is None else jnp.asarray(reset))
  expected = numpy_oracle(a, b, h0, lengths, reset, reverse)
  chex.assert_trees_all_close(
      (final, h), tuple(_cast(e, dtype).astype(dtype) for e in expected),
      atol=1e-5, rtol=1e-5)


def _loss(scan_fn, a, b, h0, weights, lengths, reset, reverse, **kwargs):
  final, h = scan_fn(a, b, initial_carry=h0, seq_lengths=lengths, reset=reset,
                     reverse=reverse, **kwargs)
  # Real-valued of complex outputs too: the gradient is then well defined.
  return (jnp.sum(jnp.real(h * weights)) + jnp.sum(jnp.cos(jnp.real(final)))
          + jnp.sum(jnp.sin(jnp.imag(final))))


METHOD_CASES = [("associative", None), ("chunked", 4),
                pytest.param("chunked", 5, marks=pytest.mark.slow),
                pytest.param("chunked", 64, marks=pytest.mark.slow)]
# 4 and 5 do not divide TIME = 11; 64 > TIME is one chunk.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask", FAST_MASKS)
@pytest.mark.parametrize("method,chunk_size", METHOD_CASES)
def test_parallel_methods_equal_sequential_outputs_and_gradients(
    method, chunk_size, mask, reverse, dtype):
  a, b, h0 = _coefficients(dtype, key=1)
  lengths, reset = _masks(mask)
  lengths = None if lengths is None else jnp.asarray(lengths)
  reset = None if reset is None else jnp.asarray(reset)
  weights = _coefficients(dtype, key=2)[1]
  kwargs = {} if chunk_size is None else dict(chunk_size=chunk_size)

  def run(method, **kw):
    return scan(a, b, initial_carry=h0, seq_lengths=lengths, reset=reset,
                reverse=reverse, method=method, **kw)

  chex.assert_trees_all_close(run(method, **kwargs), run("sequential"),
                              **tolerances.output_tol(jnp.float32))

  def grads(method, **kw):
    return jax.jit(lambda a, b, h0: jax.grad(_loss, argnums=(1, 2, 3))(
        lr.linear_scan, a, b, h0, weights, lengths, reset, reverse,
        method=method, **kw))(a, b, h0)

  expected = grads("sequential")
  chex.assert_trees_all_close(grads(method, **kwargs), expected,
                              **tolerances.gradient_tol(jnp.float32))
  if lengths is not None:  # padded steps do not feed the result
    for g in expected[:2]:
      chex.assert_trees_all_equal(g[2], jnp.zeros_like(g[2]))


@pytest.mark.parametrize("method", ["associative", "chunked"])
def test_bfloat16_methods_agree_with_float32(method):
  a, b, h0 = _coefficients(jnp.float32, key=3)
  ref = scan(a, b, initial_carry=h0, method="sequential")
  low = scan(*(x.astype(jnp.bfloat16) for x in (a, b)),
             initial_carry=h0.astype(jnp.bfloat16), method=method,
             chunk_size=4)
  chex.assert_trees_all_equal_dtypes(low, jax.tree.map(
      lambda x: x.astype(jnp.bfloat16), ref))
  chex.assert_trees_all_close(jax.tree.map(lambda x: x.astype(jnp.float32),
                                           low), ref, atol=5e-2, rtol=5e-2)


def test_reset_equals_running_packed_segments_separately():
  a, b, _ = _coefficients(jnp.float32, key=4)
  reset = np.zeros((1, TIME), bool)
  reset[0, [0, 4, 9]] = True
  for method in lr.METHODS:
    _, packed = scan(a[:1], b[:1], reset=jnp.asarray(reset), method=method,
                     chunk_size=3)
    for start, stop in ((0, 4), (4, 9), (9, TIME)):
      _, alone = scan(a[:1, start:stop], b[:1, start:stop], method=method,
                      chunk_size=3)
      chex.assert_trees_all_close(packed[:, start:stop], alone, atol=1e-6)


def test_carry_flows_across_chunks_of_time():
  a, b, h0 = _coefficients(jnp.complex64, key=5)
  full_final, full = scan(a, b, initial_carry=h0)
  carry, first = scan(a[:, :5], b[:, :5], initial_carry=h0)
  final, second = scan(a[:, 5:], b[:, 5:], initial_carry=carry,
                       method="chunked", chunk_size=2)
  chex.assert_trees_all_close((final, jnp.concatenate([first, second], 1)),
                              (full_final, full), atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("mask", FAST_MASKS)
@pytest.mark.parametrize("method,chunk_size", METHOD_CASES)
def test_log_scan_is_the_log_of_the_linear_scan(method, chunk_size, mask,
                                                reverse):
  a, b, h0 = _coefficients(jnp.float32, key=6)
  b, h0 = jnp.abs(b) + 0.1, jnp.abs(h0) + 0.1
  lengths, reset = _masks(mask)
  lengths = None if lengths is None else jnp.asarray(lengths)
  reset = None if reset is None else jnp.asarray(reset)
  kwargs = dict(seq_lengths=lengths, reset=reset, reverse=reverse,
                chunk_size=chunk_size or lr.DEFAULT_CHUNK_SIZE)
  log_final, log_h = log_scan(
      jnp.log(a), jnp.log(b), log_initial_carry=jnp.log(h0), method=method,
      **kwargs)
  final, h = scan(a, b, initial_carry=h0, method="sequential", **kwargs)
  chex.assert_trees_all_close((jnp.exp(log_final), jnp.exp(log_h)), (final, h),
                              **tolerances.output_tol(jnp.float32))

  def loss(method, log_a, log_b, log_h0):
    log_final, log_h = log_scan(
        log_a, log_b, log_initial_carry=log_h0, method=method, **kwargs)
    return jnp.sum(jnp.exp(log_h) * b) + jnp.sum(jnp.exp(log_final))

  args = (jnp.log(a), jnp.log(b), jnp.log(h0))
  grad = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)
  grads = grad(method, *args)
  chex.assert_tree_all_finite(grads)
  chex.assert_trees_all_close(grads, grad("sequential", *args),
                              **tolerances.gradient_tol(jnp.float32))


def test_log_scan_from_the_zero_carry_has_finite_gradients():
  a, b, _ = _coefficients(jnp.float32, key=7)
  log_a, log_b = jnp.log(a), jnp.log(jnp.abs(b))

  def loss(log_a, log_b, method):
    _, log_h = log_scan(log_a, log_b, method=method,
                        seq_lengths=jnp.asarray(LENGTHS),
                        reset=jnp.asarray(_reset()))
    return jnp.sum(jnp.exp(log_h))

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  for method in lr.METHODS:
    chex.assert_tree_all_finite(grad(log_a, log_b, method))


def test_log_scan_keeps_precision_over_long_decays():
  # a = 0.5 over 3000 steps: cumsum(log a) reaches -2079, where the closed
  # form a* + logcumsumexp(log b - a*) cancels numbers ~2000 in float32.
  time = 3000
  log_a = jnp.full((1, time, 1), np.log(0.5), jnp.float32)
  log_b = jnp.zeros((1, time, 1), jnp.float32)  # b = 1: h -> 2
  _, log_h = log_scan(log_a, log_b)
  expected = np.log(2.0 - 0.5 ** np.arange(time))  # float64 closed form
  np.testing.assert_allclose(np.asarray(log_h[0, :, 0]), expected, atol=2e-6)
  a_star = jnp.cumsum(log_a, axis=1)
  heinsen = a_star + jax.lax.cumlogsumexp(log_b - a_star, axis=1)
  assert np.abs(np.asarray(heinsen[0, :, 0]) - expected).max() > 1e-5


def test_jit_with_traced_lengths_compiles_once_per_method():
  a, b, h0 = _coefficients(jnp.float32, key=8)
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(lengths):
    return scan(a, b, initial_carry=h0, seq_lengths=lengths,
                method="chunked", chunk_size=4)

  for lengths in ([11, 6, 0], [3, 2, 1]):
    expected = scan(a, b, initial_carry=h0, method="sequential",
                    seq_lengths=jnp.array(lengths))
    chex.assert_trees_all_close(run(jnp.array(lengths)), expected, atol=1e-5)


def test_default_method_table_names_methods_and_provenance():
  for backend, choice in lr.DEFAULT_METHOD_BY_BACKEND.items():
    assert choice.method in lr.METHODS, backend
    assert choice.provenance.startswith(("measured", "not measured")), backend
  assert lr.default_method("cpu") == lr.DEFAULT_METHOD_BY_BACKEND["cpu"].method
  with pytest.raises(ValueError, match=r"backend: expected one of .*'cpu'.*"
                     r"got 'fpga'"):
    lr.default_method("fpga")


class TestBadInput:
  a, b, h0 = _coefficients(jnp.float32)

  def test_rank_shape_and_time(self):
    with pytest.raises(ValueError, match=r"a: expected rank 3 \(batch, time, "
                       r"features\), got shape \(3, 11\)"):
      lr.linear_scan(self.a[..., 0], self.b[..., 0])
    with pytest.raises(ValueError, match=r"b: expected the shape of a "
                       r"\(3, 11, 4\).*got \(3, 11, 2\)"):
      lr.linear_scan(self.a, self.b[..., :2])
    with pytest.raises(ValueError, match="a: expected at least one time step"):
      lr.linear_scan(self.a[:, :0], self.b[:, :0])

  def test_dtypes(self):
    with pytest.raises(ValueError, match="a: expected a floating or complex "
                       "dtype, got int32"):
      lr.linear_scan(self.a.astype(jnp.int32), self.b)
    with pytest.raises(TypeError, match=r"b: expected the dtype of a "
                       r"\(float32\), got complex64"):
      lr.linear_scan(self.a, self.b.astype(jnp.complex64))
    with pytest.raises(TypeError, match="log_a: expected a floating dtype, "
                       "got complex64"):
      lr.log_linear_scan(self.a.astype(jnp.complex64),
                         self.b.astype(jnp.complex64))

  def test_initial_carry(self):
    with pytest.raises(ValueError, match=r"initial_carry: expected shape "
                       r"\(batch, features\) = \(3, 4\), got \(3, 5\)"):
      lr.linear_scan(self.a, self.b, initial_carry=jnp.zeros((3, 5)))
    with pytest.raises(TypeError, match=r"initial_carry: expected the dtype of "
                       r"a \(float32\), got bfloat16"):
      lr.linear_scan(self.a, self.b,
                     initial_carry=self.h0.astype(jnp.bfloat16))
    with pytest.raises(ValueError, match="log_initial_carry: expected shape"):
      lr.log_linear_scan(self.a, self.b, log_initial_carry=jnp.zeros((3,)))

  def test_masks(self):
    with pytest.raises(ValueError, match=r"seq_lengths: expected values in "
                       r"\[0, 11\]"):
      lr.linear_scan(self.a, self.b, seq_lengths=jnp.array([1, 2, 12]))
    with pytest.raises(TypeError, match="seq_lengths: expected an integer"):
      lr.linear_scan(self.a, self.b, seq_lengths=jnp.ones((3,)))
    with pytest.raises(ValueError, match=r"reset: expected shape \(batch, "
                       r"time\) = \(3, 11\), got \(3, 10\)"):
      lr.linear_scan(self.a, self.b, reset=jnp.zeros((3, 10), bool))
    with pytest.raises(TypeError, match="reset: expected dtype bool"):
      lr.linear_scan(self.a, self.b, reset=jnp.zeros((3, 11), jnp.int32))

  def test_method_and_chunk_size(self):
    with pytest.raises(ValueError, match=r"method: expected one of "
                       r"\('associative', 'chunked', 'sequential'\), got "
                       r"'parallel'"):
      lr.linear_scan(self.a, self.b, method="parallel")
    for bad in (0, 2.5, True):
      with pytest.raises(ValueError, match="chunk_size: expected a positive "
                         "int"):
        lr.linear_scan(self.a, self.b, method="chunked", chunk_size=bad)
