"""Networks: conv arithmetic, DEPICT Table 5 shapes, transposed convolution semantics
(checked against a NumPy scatter loop and as the adjoint of the strided convolution),
dropout/clean pathways, output ranges and Xavier initialisation.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclust.nn import (
    ConvAutoencoder,
    ConvEncoder,
    ConvSpec,
    TransposedConv,
    conv_output_size,
    encoder_shapes,
)

# The "rbg" PRNG compiles far faster than threefry on CPU; the initialisers and dropout
# are the modules' own, only the bit generator differs.
key = functools.partial(jax.random.key, impl="rbg")


def normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


# ---------------------------------------------------------------------------- references


def ref_conv_output_size(n, k, s, p):
  """Number of window positions i*s (i >= 0) with the window inside the padded input."""
  count = 0
  while count * s + k <= n + 2 * p:
    count += 1
  return count


def ref_transposed_conv(x, kernel, bias, stride, crop, output_size):
  """Transposed convolution by scattering: every input pixel times the kernel is added into
  the output at ``stride * position``, the result is cropped by ``crop`` on each side, and
  extra rows/columns asked for by ``output_size`` are taken from what was scattered there
  (zeros beyond the full scatter).

  ``kernel`` is ``[kh, kw, in, out]``; ``x`` is ``[N, H, W, in]``.
  """
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.float64)
  n, h, w, _ = x.shape
  k = kernel.shape[0]
  out_h, out_w = output_size
  full_h = max((h - 1) * stride + k, crop + out_h)
  full_w = max((w - 1) * stride + k, crop + out_w)
  full = np.zeros((n, full_h, full_w, kernel.shape[3]))
  for b in range(n):
    for i in range(h):
      for j in range(w):
        for a in range(k):
          for c in range(k):
            full[b, i * stride + a, j * stride + c, :] += x[b, i, j, :] @ kernel[a, c]
  return full[:, crop:crop + out_h, crop:crop + out_w, :] + np.asarray(bias, np.float64)


def mnist_convs(features=(50, 50)):
  return [ConvSpec(features[0], 4, 2, 0), ConvSpec(features[1], 5, 2, 2)]


# DEPICT Table 5 (and a stride-1 case): image shape, convs, expected encoder shapes
# (computed by hand from floor((n + 2p - k) / s) + 1).
TABLE5 = {
    "mnist_28": ((28, 28, 1), mnist_convs(), [(28, 28, 1), (13, 13, 50), (7, 7, 50)]),
    "usps_16": ((16, 16, 1), mnist_convs(), [(16, 16, 1), (7, 7, 50), (4, 4, 50)]),
    "frgc_32": (
        (32, 32, 3), [ConvSpec(50, 4, 2, 2), ConvSpec(50, 5, 2, 2)], [(32, 32, 3), (17, 17, 50), (9, 9, 50)]
    ),
    "ytf_55": (
        (55, 55, 3), [ConvSpec(50, 5, 2, 2), ConvSpec(50, 4, 2, 0)], [(55, 55, 3), (28, 28, 50), (13, 13, 50)]
    ),
    "stride1_8": (
        (8, 8, 2), [ConvSpec(6, 4, 2, 1), ConvSpec(5, 3, 1, 1)], [(8, 8, 2), (4, 4, 6), (4, 4, 5)]
    ),
}


# ---------------------------------------------------------------------------- sizes


def test_conv_output_size_matches_window_count():
  for n, k, s, p in itertools.product(range(1, 20), range(1, 6), range(1, 4), range(0, 3)):
    if n + 2 * p < k:
      continue
    expect = ref_conv_output_size(n, k, s, p)
    assert conv_output_size(n, ConvSpec(3, k, s, p)) == expect, (n, k, s, p)
    assert expect == (n + 2 * p - k) // s + 1


@pytest.mark.parametrize("name", sorted(TABLE5))
def test_encoder_shapes_depict_table5(name):
  image_shape, convs, expected = TABLE5[name]
  assert encoder_shapes(image_shape, convs) == expected
  # and the same as running the conv arithmetic layer by layer.
  h, w, _ = image_shape
  for spec, shape in zip(convs, expected[1:]):
    h = ref_conv_output_size(h, spec.kernel_size, spec.stride, spec.padding)
    w = ref_conv_output_size(w, spec.kernel_size, spec.stride, spec.padding)
    assert shape == (h, w, spec.features)


def test_encoder_shapes_non_square():
  assert encoder_shapes((28, 20, 1), mnist_convs((4, 6))) == [(28, 20, 1), (13, 9, 4), (7, 5, 6)]


def test_encoder_shapes_too_small_raises():
  with pytest.raises(ValueError):
    encoder_shapes((3, 3, 1), mnist_convs())


def _model_shapes(image_shape, convs, num_clusters=4, batch=2):
  """Shapes of every output of ConvAutoencoder, without compiling (eval_shape)."""
  model = ConvAutoencoder(tuple(image_shape), tuple(convs), num_clusters, dropout_rates=(0.1,) * (len(convs) + 1))
  x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)

  def run(x):
    variables = model.init(key(0), x)
    return model.apply(variables, x, train=True, rngs={"dropout": key(1)})

  return jax.eval_shape(run, x)


ODD = {
    "mnist_30": ((30, 30, 1), mnist_convs((3, 4))),
    "mnist_17": ((17, 17, 1), mnist_convs((3, 4))),
    "frgc_31": ((31, 31, 3), [ConvSpec(3, 4, 2, 2), ConvSpec(4, 5, 2, 2)]),
    "ytf_54x57": ((54, 57, 3), [ConvSpec(3, 5, 2, 2), ConvSpec(4, 4, 2, 0)]),
    "stride3_20": ((20, 20, 1), [ConvSpec(3, 3, 3, 1), ConvSpec(2, 2, 1, 0)]),
}


@pytest.mark.parametrize("name", sorted(TABLE5) + sorted(ODD))
def test_every_decoder_layer_has_its_encoder_layers_shape(name):
  if name in TABLE5:
    image_shape, convs, _ = TABLE5[name]
  else:
    image_shape, convs = ODD[name]
  batch = 2
  encoded, decoded, logits = _model_shapes(image_shape, convs, num_clusters=4, batch=batch)
  expected = [(batch, *s) for s in encoder_shapes(image_shape, convs)]
  assert len(encoded) == len(convs) + 2
  assert [tuple(e.shape) for e in encoded[:-1]] == expected
  assert tuple(encoded[-1].shape) == (batch, 4)
  assert len(decoded) == len(convs) + 1
  assert [tuple(d.shape) for d in decoded] == expected
  assert tuple(logits.shape) == (batch, 4)


# ---------------------------------------------------------------------------- TransposedConv


# (kernel, stride, crop, input (H, W), extra (rows, cols))
TCONV_CASES = [
    (3, 1, 0, (3, 4), (0, 0)),
    (2, 2, 0, (3, 2), (0, 1)),
    (4, 2, 0, (3, 4), (1, 0)),
    (5, 2, 2, (4, 3), (1, 1)),
    (4, 2, 1, (3, 3), (0, 1)),
    (3, 3, 1, (2, 3), (2, 1)),
    (3, 2, 2, (4, 4), (1, 0)),  # crop == kernel - 1
    (3, 2, 3, (5, 4), (1, 1)),  # crop > kernel - 1 (extra rows past the full scatter)
]


@functools.lru_cache(maxsize=None)
def _tconv(k, s, c, hw, extra, cin=2, cout=3, batch=2, seed=0):
  natural = [(n - 1) * s + k - 2 * c for n in hw]
  out_size = (natural[0] + extra[0], natural[1] + extra[1])
  module = TransposedConv(cout, k, s, c, output_size=out_size)
  x = normal(seed, (batch, *hw, cin))
  params = module.init(key(seed + 1), x)["params"]
  assert params["kernel"].shape == (k, k, cin, cout)
  assert params["bias"].shape == (cout,)
  return module, x, params, out_size


@pytest.mark.parametrize("k,s,c,hw,extra", TCONV_CASES)
def test_transposed_conv_matches_scatter_loop_and_is_adjoint_of_strided_conv(k, s, c, hw, extra):
  """1. Against the NumPy scatter loop, with the module's own kernel and a non-zero bias.

  2. <conv(v; W), x> == <v, convT(x; K)> for the strided conv with padding ``crop`` (bias 0).
  TransposedConv's kernel K is ``[kh, kw, in, out]`` with ``in`` the channels of its own
  input x and ``out`` those of its output. The convolution it is the transpose of maps
  ``out`` -> ``in`` channels, so in HWIO layout its kernel is ``W = K.transpose(0, 1, 3, 2)``
  (same spatial orientation, no flip: W[a, b, o, i] = K[a, b, i, o]). This is the relation
  between PyTorch's ``Conv2d`` and ``ConvTranspose2d`` sharing one weight: in PyTorch layout
  the ConvTranspose2d weight ``[in, out, kh, kw]`` is ``K.transpose(2, 3, 0, 1)``.
  """
  module, x, params, out_size = _tconv(k, s, c, hw, extra)
  kernel = params["kernel"]
  bias = jnp.asarray([0.5, -1.0, 2.0])
  apply = jax.jit(module.apply)
  y_bias = apply({"params": {"kernel": kernel, "bias": bias}}, x)
  assert y_bias.shape == (x.shape[0], *out_size, 3)
  expect = ref_transposed_conv(x, kernel, bias, s, c, out_size)
  np.testing.assert_allclose(y_bias, expect, rtol=1e-5, atol=1e-5)
  # the module's own initialised params (bias initialised to zero) as well.
  np.testing.assert_array_equal(params["bias"], 0.0)
  np.testing.assert_allclose(
      apply({"params": params}, x), ref_transposed_conv(x, kernel, params["bias"], s, c, out_size),
      rtol=1e-5, atol=1e-5,
  )

  y = apply({"params": {"kernel": kernel, "bias": jnp.zeros(3)}}, x)
  v = normal(7, y.shape)

  def conv(v, w_hwio):
    return jax.lax.conv_general_dilated(
        v, w_hwio, window_strides=(s, s), padding=[(c, c), (c, c)],
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )

  w = jnp.transpose(kernel, (0, 1, 3, 2))
  conv_v = conv(v, w)
  assert conv_v.shape == x.shape  # the extra rows/cols are what the strided conv drops
  lhs = float(np.vdot(np.asarray(conv_v, np.float64), np.asarray(x, np.float64)))
  rhs = float(np.vdot(np.asarray(v, np.float64), np.asarray(y, np.float64)))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-4)
  # the identity pins the orientation: a spatially flipped kernel breaks it.
  if k > 1:
    flipped = float(np.vdot(np.asarray(conv(v, w[::-1, ::-1]), np.float64), np.asarray(x, np.float64)))
    assert not np.isclose(flipped, rhs, rtol=1e-3, atol=1e-3)


def test_transposed_conv_rejects_unreachable_size():
  x = jnp.zeros((1, 4, 4, 1))
  # natural size (4 - 1) * 2 + 4 = 10; 12 needs extra 2 >= stride.
  with pytest.raises(ValueError):
    TransposedConv(1, 4, 2, 0, output_size=(12, 10)).init(key(0), x)
  with pytest.raises(ValueError):
    TransposedConv(1, 4, 2, 0, output_size=(9, 10)).init(key(0), x)


# ---------------------------------------------------------------------------- encoder


SMALL_CONVS = (ConvSpec(4, 4, 2, 0), ConvSpec(6, 5, 2, 2))


def _encoder(rates):
  return ConvEncoder(SMALL_CONVS, 5, dropout_rates=rates)


@pytest.fixture(scope="module")
def encoder_setup():
  x = normal(0, (4, 16, 16, 1)) + 3.0  # no exact zeros
  rates = (0.5, 0.3, 0.3)
  enc = _encoder(rates)
  variables = jax.jit(enc.init)(key(1), x)
  apply = jax.jit(enc.apply, static_argnames=("train",))
  return enc, rates, x, variables, apply


def test_encoder_clean_pathway_is_deterministic(encoder_setup):
  _, _, x, variables, apply = encoder_setup
  a = apply(variables, x, train=False)
  b = apply(variables, x, train=False)
  assert len(a) == len(SMALL_CONVS) + 2
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  np.testing.assert_array_equal(a[0], x)  # no corruption of the input
  # a different dropout key changes nothing on the clean pathway.
  c = apply(variables, x, train=False, rngs={"dropout": key(9)})
  for u, v in zip(a, c):
    np.testing.assert_array_equal(u, v)


def test_encoder_noisy_pathway_dropout(encoder_setup):
  _, rates, x, variables, apply = encoder_setup
  a = apply(variables, x, train=True, rngs={"dropout": key(2)})
  b = apply(variables, x, train=True, rngs={"dropout": key(3)})
  same_key = apply(variables, x, train=True, rngs={"dropout": key(2)})
  for u, v in zip(a, same_key):
    np.testing.assert_array_equal(u, v)
  for u, v in zip(a, b):
    assert not np.allclose(u, v)
  clean = apply(variables, x, train=False)
  # input corruption: fraction zeroed ~ rate, survivors scaled by 1 / (1 - rate).
  x_np, z0 = np.asarray(x), np.asarray(a[0])
  dropped = z0 == 0
  assert abs(dropped.mean() - rates[0]) < 0.06, dropped.mean()
  np.testing.assert_allclose(z0[~dropped], x_np[~dropped] / (1 - rates[0]), rtol=1e-6)
  # conv layers: fraction of zeroed activations ~ rate (leaky ReLU outputs are non-zero).
  for layer in (1, 2):
    act = np.asarray(a[layer])
    frac = (act == 0).mean()
    tol = 4 * np.sqrt(rates[layer] * (1 - rates[layer]) / act.size) + 0.02
    assert abs(frac - rates[layer]) < tol, (layer, frac)
    assert (np.asarray(clean[layer]) == 0).mean() < 0.01
  assert not np.allclose(a[-1], clean[-1])


def test_encoder_zero_dropout_train_equals_clean():
  x = normal(0, (2, 16, 16, 1))
  enc = _encoder((0.0, 0.0, 0.0))
  variables = jax.jit(enc.init)(key(1), x)
  apply = jax.jit(enc.apply, static_argnames=("train",))
  a = apply(variables, x, train=True, rngs={"dropout": key(2)})
  b = apply(variables, x, train=False)
  for u, v in zip(a, b):
    np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


def test_embedding_and_reconstruction_lie_in_minus_one_one():
  image_shape = (16, 16, 1)
  model = ConvAutoencoder(image_shape, SMALL_CONVS, 5, dropout_rates=(0.2, 0.2, 0.2))
  x = 50.0 * normal(0, (4, *image_shape))  # saturate tanh
  variables = jax.jit(model.init)(key(1), x)
  # large weights too, so the pre-activations are far outside [-1, 1].
  big = jax.jit(lambda v: jax.tree_util.tree_map(lambda p: 20.0 * p + 0.5, v))(variables)

  @jax.jit
  def run(variables, x):
    return model.apply(variables, x, train=True, rngs={"dropout": key(2)})

  for v in (variables, big):
    encoded, decoded, logits = run(v, x)
    z, x_hat = np.asarray(encoded[-1]), np.asarray(decoded[0])
    assert z.shape == (4, 5) and x_hat.shape == x.shape and logits.shape == (4, 5)
    assert np.all(np.abs(z) <= 1.0) and np.all(np.isfinite(z))
    assert np.all(np.abs(x_hat) <= 1.0) and np.all(np.isfinite(x_hat))
  # with the big weights both saturate: values reach the bounds, so the check is not vacuous.
  assert np.max(np.abs(z)) > 0.99 and np.max(np.abs(x_hat)) > 0.99
  # the intermediate decoder layers are leaky ReLU, not squashed.
  assert np.min(np.asarray(decoded[1])) < 0 and np.max(np.abs(np.asarray(decoded[1]))) > 1.0


def _check_xavier(kernel, fan_in, fan_out):
  kernel = np.asarray(kernel, np.float64)
  var = 2.0 / (fan_in + fan_out)
  limit = np.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform: U(-limit, limit)
  np.testing.assert_allclose(kernel.var(), var, rtol=0.05)
  assert abs(kernel.mean()) < 0.05 * np.sqrt(var)
  assert np.max(np.abs(kernel)) <= limit * (1 + 1e-6)
  assert np.max(np.abs(kernel)) > 0.95 * limit


def test_xavier_initialisation():
  cin, cout, k = 32, 64, 5
  enc = ConvEncoder((ConvSpec(cout, k, 2, 2),), 200, dropout_rates=(0.0, 0.0))
  x = jnp.zeros((1, 8, 8, cin))
  params = jax.jit(enc.init)(key(0), x)["params"]
  conv_kernel = params["conv1"]["kernel"]
  assert conv_kernel.shape == (k, k, cin, cout)
  _check_xavier(conv_kernel, k * k * cin, k * k * cout)
  dense = params["embedding"]["kernel"]
  assert dense.shape == (4 * 4 * cout, 200)
  _check_xavier(dense, 4 * 4 * cout, 200)
  np.testing.assert_array_equal(params["conv1"]["bias"], 0.0)

  tconv = TransposedConv(cin, k, 2, 2, output_size=(8, 8))
  tkernel = jax.jit(tconv.init)(key(1), jnp.zeros((1, 4, 4, cout)))["params"]["kernel"]
  assert tkernel.shape == (k, k, cout, cin)
  _check_xavier(tkernel, k * k * cout, k * k * cin)
