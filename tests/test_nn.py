"""Networks: conv arithmetic, DEPICT Table 5 shapes, transposed convolution semantics
(checked against a NumPy scatter loop and as the adjoint of the strided convolution),
dropout/clean pathways, output ranges and Xavier initialisation; the adjoint gradients of
the strided and transposed convolutions against autodiff and finite differences; the
Flax drop-ins (SameConv, SameConvTranspose, BatchNorm, max_pool_same) against Flax.
"""

import functools
import itertools

import chex
import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxclust import nn as jnn
from jaxclust.configs.depict import DATASET_SETTINGS
from jaxclust.nn import (
    ConvAutoencoder,
    ConvEncoder,
    ConvSpec,
    StridedConv,
    TransposedConv,
    conv,
    conv_output_size,
    conv_transpose,
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
  for n, k, s, p in itertools.product(range(1, 20), range(1, 6), range(1, 4), range(3)):
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


@functools.cache
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


# ---------------------------------------------------------------------------- adjoint gradients

# Image shapes of DEPICT's datasets (paper 000, Table 5 and Sec. 4.1).
DEPICT_IMAGES = {"mnist": (28, 28, 1), "usps": (16, 16, 1), "frgc": (32, 32, 3), "ytf": (55, 55, 3),
                 "cmu-pie": (32, 32, 1), "digits": (8, 8, 1)}


def _layer_geometries():
  """name: ``(size, reduced, k, s, p)`` of every conv layer of every DEPICT config on its
  dataset's images and of the odd sizes above (``ODD``), and of every ``TCONV_CASES`` case:
  the strided convolution maps ``size`` (its input; the transposed one's output) to ``reduced``
  with kernel ``k``, stride ``s`` and padding ``p``."""
  nets = {name: (image, [ConvSpec(4, *layer) for layer in zip(
      *(DATASET_SETTINGS[name][key] for key in ("kernel_sizes", "strides", "paddings")))])
          for name, image in DEPICT_IMAGES.items()}
  nets.update(ODD)
  geometries = {}
  for name, (image, convs) in nets.items():
    shapes = encoder_shapes(image, convs)
    for layer, spec in enumerate(convs):
      geometries[f"{name}-layer{layer + 1}"] = (shapes[layer][:2], shapes[layer + 1][:2], spec.kernel_size,
                                                spec.stride, spec.padding)
  for k, s, c, hw, extra in TCONV_CASES:
    size = tuple((n - 1) * s + k - 2 * c + e for n, e in zip(hw, extra))
    geometries[f"k{k}-s{s}-crop{c}-{hw[0]}x{hw[1]}-extra{extra[0]}{extra[1]}"] = (size, hw, k, s, c)
  geometries["stride-longer-than-kernel"] = ((8, 9), (3, 3), 2, 3, 0)
  return geometries


GEOMETRIES = _layer_geometries()


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _transposed_setup(name, dtype=jnp.float32, batch=2, seed=0):
  """A transposed convolution's input ``x``, kernel and output gradient ``dy`` for geometry
  ``name``, with 17 input and 20 output channels: more than 16, so that conv_transpose's
  "auto" picks its per-phase or subpixel form and XLA:CPU pads the channels to 32."""
  size, reduced, k, s, p = GEOMETRIES[name]
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, *reduced, 17)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, 17, 20)) / k, dtype)
  dy = jnp.asarray(rng.normal(size=(batch, *size, 20)), dtype)
  return x, kernel, dy, (s, p, size)


def _vjps(functions, *args):
  """``{name: (f(*args[:-1]), its VJP at the cotangent args[-1])}`` (traceable)."""
  out = {}
  for name, f in functions.items():
    y, pullback = jax.vjp(f, *args[:-1])
    out[name] = (y, pullback(args[-1]))
  return out


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_adjoint_gradients_equal_autodiff(name):
  """conv_transpose, every method: the adjoint VJP has the forward pass of the plain form, bit
  for bit, and its gradients equal jax's gradient of the plain form and of the dilated form.
  conv: the forward pass of lax.conv up to rounding (XLA:CPU computes padded channels), and
  the adjoint gradients equal jax's gradient of lax.conv."""
  x, kernel, dy, (s, p, size) = _transposed_setup(name)
  methods = ["auto", "dilated", "subpixel"]
  transposed = {(method, gradient): functools.partial(
      conv_transpose, stride=s, crop=p, output_size=size, method=method, gradient=gradient)
      for method in methods for gradient in ("adjoint", "autodiff")}
  strided = {gradient: functools.partial(conv, stride=s, padding=p, gradient=gradient)
             for gradient in ("adjoint", "autodiff")}
  w = kernel.transpose(0, 1, 3, 2)  # the strided convolution: dy's size to x's, 20 -> 17 channels
  results, strided_results = jax.jit(lambda *a: (_vjps(transposed, *a[:3]), _vjps(strided, *a[3:])))(
      x, kernel, dy, dy, w, x)

  reference_y, reference_grads = results["dilated", "autodiff"]
  assert reference_y.shape == dy.shape
  for method in methods:
    y, grads = results[method, "adjoint"]
    plain_y, plain_grads = results[method, "autodiff"]
    np.testing.assert_array_equal(y, plain_y)
    assert _rel_err(y, reference_y) < 1e-5, method
    for g, plain, reference in zip(grads, plain_grads, reference_grads):
      assert g.shape == plain.shape
      assert _rel_err(g, plain) < 1e-5, method
      assert _rel_err(g, reference) < 1e-5, method

  (u, grads), (plain_u, plain_grads) = strided_results["adjoint"], strided_results["autodiff"]
  assert u.shape == x.shape
  assert _rel_err(u, plain_u) < 1e-5
  for g, plain in zip(grads, plain_grads):
    assert g.shape == plain.shape
    assert _rel_err(g, plain) < 1e-5


def _distinct_geometries():
  """One geometry name per distinct (kernel, stride, padding, output padding per axis)."""
  seen = {}
  for name in sorted(GEOMETRIES):
    size, reduced, k, s, p = GEOMETRIES[name]
    extra = tuple(n - ((r - 1) * s + k - 2 * p) for n, r in zip(size, reduced))
    seen.setdefault((k, s, p, extra), name)
  return sorted(seen.values())


@pytest.mark.parametrize("name", _distinct_geometries())
def test_adjoint_gradients_match_finite_differences_in_float64(name):
  """Both VJPs against finite differences, once per distinct kernel, stride, padding and output
  padding (the transposed convolution's backward pass does not depend on its forward form)."""
  with jax.enable_x64(True):
    x, kernel, dy, (s, p, size) = _transposed_setup(name, jnp.float64, batch=1)
    check_grads(jax.jit(functools.partial(conv_transpose, stride=s, crop=p, output_size=size)), (x, kernel),
                order=1, modes=["rev"])
    check_grads(jax.jit(functools.partial(conv, stride=s, padding=p)), (dy, kernel.transpose(0, 1, 3, 2)),
                order=1, modes=["rev"])


@pytest.mark.parametrize("name", ["mnist-layer1", "mnist-layer2", "ytf-layer1", "ytf-layer2", "digits-layer2",
                                  "k3-s2-crop3-5x4-extra11", "stride-longer-than-kernel"])
def test_other_backends_forms_equal_autodiff(name, monkeypatch):
  """The forms lowered for backends other than the CPU (plain XLA convolutions), run here on
  the CPU by forcing their branch."""
  monkeypatch.setattr(jnn, "_by_backend", lambda cpu, default, *args: default(*args))
  x, kernel, dy, (s, p, size) = _transposed_setup(name)
  transposed = jax.jit(functools.partial(_vjps, {g: functools.partial(
      conv_transpose, stride=s, crop=p, output_size=size, gradient=g) for g in ("adjoint", "autodiff")}))(x, kernel, dy)
  strided = jax.jit(functools.partial(_vjps, {g: functools.partial(conv, stride=s, padding=p, gradient=g)
                                              for g in ("adjoint", "autodiff")}))(dy, kernel.transpose(0, 1, 3, 2), x)
  for results in (transposed, strided):
    (y, grads), (plain_y, plain_grads) = results["adjoint"], results["autodiff"]
    np.testing.assert_array_equal(y, plain_y)
    for g, plain in zip(grads, plain_grads):
      assert _rel_err(g, plain) < 1e-5


@pytest.mark.parametrize("spec", [ConvSpec(50, 4, 2, 0), ConvSpec(50, 5, 2, 2), ConvSpec(20, 5, 2, 2),
                                  ConvSpec(6, 3, 1, 1)])
def test_strided_conv_is_flax_conv(spec):
  """StridedConv has nn.Conv's parameters, initial values, output and gradients (the encoder
  swapped one for the other)."""
  ours = StridedConv(spec.features, spec.kernel_size, spec.stride, spec.padding)
  theirs = flax_nn.Conv(spec.features, (spec.kernel_size,) * 2, strides=(spec.stride,) * 2,
                        padding=[(spec.padding, spec.padding)] * 2, kernel_init=jnn.xavier)
  x = normal(0, (3, 13, 13, 7))
  params = jax.jit(ours.init)(key(0), x)
  chex.assert_trees_all_equal(params, jax.jit(theirs.init)(key(0), x))
  params = jax.tree.map(lambda p: p + normal(1, p.shape), params)  # a non-zero bias too
  cotangent = normal(2, jax.eval_shape(ours.apply, params, x).shape)

  def grads(module):
    return jax.jit(lambda p, x: jax.grad(lambda p, x: jnp.vdot(module.apply(p, x), cotangent), (0, 1))(p, x))(params, x)

  assert _rel_err(jax.jit(ours.apply)(params, x), jax.jit(theirs.apply)(params, x)) < 1e-6
  for g, plain in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(theirs))):
    assert _rel_err(g, plain) < 1e-5


@pytest.mark.parametrize("size, kernel_size, stride", [
    ((28, 28), 3, 2), ((7, 7), 3, 2), ((14, 14), 3, 1),  # DSCDAN's layers
    ((13, 14), 3, 1), ((8, 7), 4, 2), ((13, 14), 5, 2), ((5, 6), 2, 3),
])
def test_same_padding_layers_are_flax_layers(size, kernel_size, stride):
  """SameConv and SameConvTranspose have the parameters, initial values, output and
  gradients of Flax's Conv and ConvTranspose with ``padding="SAME"``, on even and odd sizes
  (where SAME pads unevenly) and strides longer than the kernel allows to overlap."""
  x = normal(0, (3, *size, 5))
  pairs = [
      (jnn.SameConv(40, kernel_size, stride),
       flax_nn.Conv(40, (kernel_size,) * 2, strides=stride, padding="SAME", kernel_init=jnn.xavier)),
      (jnn.SameConvTranspose(40, kernel_size, stride),
       flax_nn.ConvTranspose(40, (kernel_size,) * 2, strides=(stride,) * 2, padding="SAME",
                             kernel_init=jnn.xavier)),
  ]
  for ours, theirs in pairs:
    params = jax.jit(ours.init)(key(0), x)
    chex.assert_trees_all_equal(params, jax.jit(theirs.init)(key(0), x))
    params = jax.tree.map(lambda p: p + normal(1, p.shape), params)  # a non-zero bias too
    expected = jax.jit(theirs.apply)(params, x)
    chex.assert_shape(jax.eval_shape(ours.apply, params, x), expected.shape)
    assert _rel_err(jax.jit(ours.apply)(params, x), expected) < 1e-6
    cotangent = normal(2, expected.shape)

    def grads(module):
      loss = lambda p, x: jnp.vdot(module.apply(p, x), cotangent)
      return jax.jit(jax.grad(loss, (0, 1)))(params, x)

    for g, plain in zip(jax.tree.leaves(grads(ours)), jax.tree.leaves(grads(theirs))):
      assert _rel_err(g, plain) < 1e-5


@pytest.mark.parametrize("size, window", [((8, 8), 2), ((7, 6), 2), ((7, 8), 3)])
def test_max_pool_same_is_flax_max_pool_with_ties(size, window):
  """max_pool_same has flax's max_pool output and gradient, ties included: on images with
  flat regions (values rounded to integers) a window's whole gradient goes to its first
  maximum, as select-and-scatter gives it, not split among the tied ones."""
  x = jnp.round(normal(0, (3, *size, 4)))
  reference = lambda x: flax_nn.max_pool(x, (window, window), strides=(window, window), padding="SAME")
  ours = lambda x: jnn.max_pool_same(x, window)
  expected = reference(x)
  np.testing.assert_array_equal(ours(x), expected)
  cotangent = normal(1, expected.shape)
  grad = lambda pool, f=lambda x: x: jax.jit(jax.grad(lambda x: jnp.vdot(pool(f(x)), cotangent)))(x)
  ours_grad = grad(ours)
  assert int(jnp.sum(ours_grad != 0)) == expected.size  # one pixel per window
  np.testing.assert_array_equal(ours_grad, grad(reference))
  np.testing.assert_array_equal(grad(ours, jax.nn.relu), grad(reference, jax.nn.relu))  # ties at 0


@pytest.mark.parametrize("backend", ["cpu form", "other backends' form"])
def test_channel_sum_is_weighted_numpy_sum(backend, monkeypatch):
  """channel_sum is NumPy's sum over every axis but the last (each position weighted where
  weights are given), in both the CPU form (a matrix product) and the plain reduction; its
  gradient is the weights broadcast over the channels (finite differences agree)."""
  if backend != "cpu form":
    monkeypatch.setattr(jnn, "_by_backend", lambda cpu, default, *args: default(*args))
  x = normal(0, (4, 5, 3, 6))
  weights = jnp.asarray(np.random.default_rng(1).integers(0, 2, (4, 5, 3)).astype(np.float32))
  x64, w64 = np.asarray(x, np.float64), np.asarray(weights, np.float64)
  np.testing.assert_allclose(jax.jit(jnn.channel_sum)(x), x64.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(jnn.channel_sum)(x, weights), (x64 * w64[..., None]).sum(axis=(0, 1, 2)),
                             rtol=1e-5, atol=1e-5)
  cotangent = normal(2, (6,))
  grad = jax.jit(jax.grad(lambda x: jnp.vdot(jnn.channel_sum(x, weights), cotangent)))(x)
  np.testing.assert_allclose(grad, w64[..., None] * np.asarray(cotangent)[None, None, None, :], rtol=1e-6)
  check_grads(lambda x: jnn.channel_sum(x, weights), (x,), order=1, modes=["rev"])


@pytest.mark.parametrize("masked", [False, True])
def test_batch_norm_is_flax_batch_norm(masked):
  """jaxclust.nn.BatchNorm has flax.linen.BatchNorm's parameters, running averages and
  their initial values; in training its output, gradients (input, scale, bias) and updated
  running averages match Flax's, with padding rows masked out of the statistics or not; in
  inference it normalises by the running averages as Flax's does."""
  x = normal(0, (6, 5, 4, 7)) * 3 + 2
  mask = jnp.asarray([True, True, False, True, True, False])[:, None, None, None] if masked else None
  ours, theirs = jnn.BatchNorm(momentum=0.9), flax_nn.BatchNorm(momentum=0.9)
  variables = jax.jit(lambda x: ours.init(key(0), x, use_running_average=False))(x)
  chex.assert_trees_all_equal(variables, theirs.init(key(0), x, use_running_average=False))
  variables = jax.tree.map(lambda v: v + 0.3 * normal(1, v.shape), variables)
  cotangent = normal(2, x.shape)

  def train(module):
    def loss(params, x):
      y, updated = module.apply({**variables, "params": params}, x, use_running_average=False, mask=mask,
                                mutable=["batch_stats"])
      return jnp.vdot(y, cotangent), (y, updated["batch_stats"])

    return jax.jit(jax.grad(loss, (0, 1), has_aux=True))(variables["params"], x)

  (grads, (y, stats)), (expected_grads, (expected_y, expected_stats)) = train(ours), train(theirs)
  assert _rel_err(y, expected_y) < 1e-6
  chex.assert_trees_all_close(stats, expected_stats, rtol=1e-6, atol=1e-6)
  for g, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    assert _rel_err(g, expected) < 1e-5
  inference = lambda module: jax.jit(lambda v, x: module.apply(v, x, use_running_average=True))(variables, x)
  assert _rel_err(inference(ours), inference(theirs)) < 1e-6


def test_same_padding_is_lax_same_padding():
  """same_padding equals the padding JAX's own ``lax.padtype_to_pads`` gives ``"SAME"``."""
  for n, k, s in itertools.product(range(1, 12), range(1, 6), range(1, 4)):
    (expected,) = jax.lax.padtype_to_pads((n,), (k,), (s,), "SAME")
    assert jnn.same_padding(n, k, s) == tuple(expected), (n, k, s)


@pytest.mark.parametrize("dataset", ["mnist", "ytf"])
def test_autoencoder_adjoint_gradients_equal_autodiff(dataset):
  """DEPICT's whole network (both pathways and the decoder, 20 and 17 feature maps): the loss
  and every parameter's gradient with the adjoint gradients equal those with autodiff of the
  plain forms, for each transposed-convolution form."""
  settings = DATASET_SETTINGS[dataset]
  convs = tuple(ConvSpec(f, *layer) for f, layer in zip((20, 17), zip(
      *(settings[key] for key in ("kernel_sizes", "strides", "paddings")))))
  image = (24, 23, 3) if dataset == "ytf" else DEPICT_IMAGES[dataset]  # YTF's layers, output padding
  x = normal(0, (3, *image))

  def loss_and_grads(params):
    out = {}
    for form, gradient in itertools.product(("auto", "dilated", "subpixel"), ("adjoint", "autodiff")):
      model = ConvAutoencoder(image, convs, 4, transposed_conv=form, conv_gradient=gradient)

      def loss(params, model=model):
        _, decoded, logits = model.apply(params, x, train=True, rngs={"dropout": key(2)})
        clean = model.apply(params, x, method=ConvAutoencoder.encode)
        return sum(jnp.mean(jnp.square(c - d)) for c, d in zip(clean[:-1], decoded)) + jnp.mean(logits ** 2)

      out[form, gradient] = jax.value_and_grad(loss)(params)
    return out

  params = ConvAutoencoder(image, convs, 4).init(key(1), x)
  results = jax.jit(loss_and_grads)(params)
  reference_loss, reference_grads = results["dilated", "autodiff"]
  for (form, gradient), (loss, grads) in results.items():
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-5, err_msg=f"{form} {gradient}")
    chex.assert_trees_all_equal_structs(grads, reference_grads)
    for g, reference in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads)):
      assert _rel_err(g, reference) < 1e-4, (form, gradient)


def test_train_step_with_adjoint_gradients_compiles_once():
  image_shape = (28, 28, 1)
  model = ConvAutoencoder(image_shape, tuple(mnist_convs((8, 8))), 4)
  params = jax.jit(model.init)(key(0), jnp.zeros((4, *image_shape)))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, x, rng):
    def loss(params):
      _, decoded, logits = model.apply(params, x, train=True, rngs={"dropout": rng})
      return jnp.mean(jnp.square(decoded[0] - x)) + jnp.mean(logits ** 2)

    grads = jax.grad(loss)(params)
    return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)

  for seed in range(3):
    params = step(params, normal(seed, (4, *image_shape)), key(seed))
  assert step._cache_size() == 1
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
