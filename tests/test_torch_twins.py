"""The PyTorch twins (benchmarks/torch_twins.py) against jaxclust: same weights and batch give
the same loss terms and the same gradient for every parameter, within float32 tolerance.

Dropout: each check runs the noisy pathway with dropout on, at the config's rates, and feeds
the twin the very keep masks that Flax's ``nn.Dropout`` drew inside ``m_step_loss`` (caught
with ``flax.linen.intercept_methods``). That compares the real training objective, dropout
and its 1/(1-p) scaling included, rather than a dropout-free variant of it; the twin's own
``nn.Dropout`` draws are what the benchmark uses.
"""

import math
import pathlib
import sys

import pytest

torch = pytest.importorskip("torch")

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
from torch.nn import functional as F

from jaxclust import algos
from jaxclust import nn as jnn
from jaxclust.algos import dec, depict
from jaxclust.configs.depict import DATASET_SETTINGS

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_twins

torch.set_num_threads(2)

# float32 on both sides; sums over a few thousand products reorder differently in XLA and
# ATen, so values agree to a few ulps of their largest terms.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5  # atol relative to the largest |gradient| of the parameter

BATCH = 6
KINK_MARGIN = 1e-7  # see _min_abs_preactivation


def _layers(dataset, **overrides):
  settings = {k: v for k, v in DATASET_SETTINGS[dataset].items()
              if k in ("kernel_sizes", "strides", "paddings", "n_clusters")}
  return {**settings, **overrides}


# name: (image shape, DepictConfig fields). The Table 5 networks of 28x28 and 8x8 images in both
# transposed-convolution forms, and YTF's (kernels 5 then 4) on a small, non-square, three-channel
# image whose decoder needs output padding, with dropout off in one layer and every loss
# weight away from its default.
DEPICT_CASES = {
    "mnist-dilated": ((28, 28, 1), _layers("fashion-mnist", transposed_conv="dilated")),
    "mnist-subpixel": ((28, 28, 1), _layers("fashion-mnist", transposed_conv="subpixel")),
    "digits-dilated": ((8, 8, 1), _layers("digits", transposed_conv="dilated")),
    "digits-subpixel": ((8, 8, 1), _layers("digits", transposed_conv="subpixel")),
    "ytf-layers-output-padding": ((24, 23, 3), _layers(
        "ytf", conv_features=(8, 6), transposed_conv="subpixel", dropout_rates=(0.2, 0.0, 0.3),
        hidden_reconstruction_weight=0.1, clustering_weight=0.7, reconstruction_weight=1.3)),
}


def _random_params(algo, image_shape, seed=0):
  """Parameters shaped as ``algo.init`` makes them, drawn at random, biases included (the
  Flax initialisers leave those at zero, which would hide a bias put in the wrong order)."""
  shapes = jax.eval_shape(algo.init, jax.random.key(0), jax.ShapeDtypeStruct((BATCH, *image_shape), jnp.float32))
  rng = np.random.default_rng(seed)

  def draw(leaf):
    if len(leaf.shape) < 2:
      return jnp.asarray(rng.uniform(-0.1, 0.1, leaf.shape), jnp.float32)
    receptive = math.prod(leaf.shape[:-2])
    limit = math.sqrt(6.0 / (receptive * (leaf.shape[-2] + leaf.shape[-1])))  # Xavier-uniform
    return jnp.asarray(rng.uniform(-limit, limit, leaf.shape), jnp.float32)

  return jax.tree.map(draw, shapes)


def _batch(image_shape, k, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (BATCH, *image_shape)).astype(np.float32)
  weights = np.ones(BATCH, np.float32)
  weights[-1] = 0.0  # a padding row, as the engine's last minibatch has
  targets = rng.dirichlet(np.ones(k), BATCH).astype(np.float32)
  return x, weights, targets


def _capture_dropout_masks(masks):
  """An interceptor that appends the keep mask of every Flax ``nn.Dropout`` that drops."""

  def capture(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if isinstance(module, fnn.Dropout) and context.method_name == "__call__" and not module.deterministic:
      # A zero input gives zero whether dropped or kept; the batches here have none.
      masks.append(jax.lax.stop_gradient((out != 0) | (args[0] == 0)))
    return out

  return capture


def _jax_reference(algo):
  """A compiled ``(params, x, weights, targets) -> (m_step, warmup, soft, e_step)``; each of the
  first two is ``((loss, (terms, dropout keep masks)), grads)``. One compilation serves all
  the batches a test tries."""
  rng = jax.random.key(1)  # the warm-up and the M-step draw the same masks from it

  def loss_and_grads(loss_fn, params):
    def with_masks(p):
      masks = []
      with fnn.intercept_methods(_capture_dropout_masks(masks)):
        loss, terms = loss_fn(p)
      return loss, (terms, masks)

    return jax.value_and_grad(with_masks, has_aux=True)(params)

  @jax.jit
  def run(params, x, weights, targets):
    batch = {"x": x, "weights": weights}
    soft = algo.predict(params, x)
    return (loss_and_grads(lambda p: algo.m_step_loss(p, batch, targets, rng), params),
            loss_and_grads(lambda p: algo.warmup_loss(p, batch, rng), params),
            soft, algo.e_step(soft))

  return run


def _min_abs_preactivation(twin, *m_step_args):
  """The smallest |input| of any (leaky) ReLU of the twin in ``twin.m_step_loss(*m_step_args)``.

  Leaky ReLU's (and ReLU's) slope jumps at 0: a pre-activation within rounding error of 0
  can land on either side in XLA and in ATen, and that one element's gradient then differs
  by the factor of the slope. Tests draw batches whose pre-activations all stay clear of 0.
  """
  smallest = []
  hooks = [m.register_forward_hook(lambda m, inputs, out: smallest.append(float(inputs[0].abs().min())))
           for m in twin.modules() if isinstance(m, (torch.nn.LeakyReLU, torch.nn.ReLU))]
  with torch.no_grad():
    twin.m_step_loss(*m_step_args)
  for hook in hooks:
    hook.remove()
  assert smallest, "the twin has no (leaky) ReLU module to watch"
  return min(smallest)


def _torch_loss_and_grads(twin, loss_fn):
  twin.zero_grad(set_to_none=True)
  loss, terms = loss_fn()
  loss.backward()
  # A parameter the loss does not use (the centroids in a warm-up) has no gradient: zero in JAX.
  grads = {name: np.zeros(tuple(p.shape), np.float32) if p.grad is None else p.grad.numpy()
           for name, p in twin.named_parameters()}
  return loss.item(), {k: v.item() for k, v in terms.items()}, grads


def _assert_same(jax_result, torch_result, twin):
  ((jax_loss, (jax_terms, _)), jax_grads) = jax_result
  torch_loss, torch_terms, torch_grads = torch_result
  assert torch_terms.keys() == jax_terms.keys()
  np.testing.assert_allclose(torch_loss, float(jax_loss), rtol=LOSS_RTOL, atol=LOSS_ATOL)
  for name in jax_terms:
    np.testing.assert_allclose(torch_terms[name], float(jax_terms[name]), rtol=LOSS_RTOL, atol=LOSS_ATOL,
                               err_msg=name)
  expected = twin.torch_layout(jax_grads)
  assert expected.keys() == torch_grads.keys()
  for name, grad in expected.items():
    assert torch_grads[name].shape == grad.shape, name
    scale = max(float(np.abs(grad).max()), 1e-6)
    np.testing.assert_allclose(torch_grads[name], grad, rtol=GRAD_RTOL, atol=GRAD_ATOL * scale, err_msg=name)


def _check_twin(algo, twin, image_shape):
  """Same parameters, batch and dropout masks: same losses, gradients, predictions, E-step."""
  k = algo.config.n_clusters
  params = _random_params(algo, image_shape)
  twin.load_flax(params)
  twin.train()
  reference = _jax_reference(algo)
  for seed in range(20):
    x, weights, targets = _batch(image_shape, k, seed)
    m_step, warmup, soft, e_step = reference(params, jnp.asarray(x), jnp.asarray(weights), jnp.asarray(targets))
    masks = [torch.from_numpy(torch_twins.to_nchw(np.asarray(m, np.float32))) for m in m_step[0][1][1]]
    x_t, w_t, t_t = (torch.from_numpy(a) for a in (torch_twins.to_nchw(x), weights, targets))
    if _min_abs_preactivation(twin, x_t, w_t, t_t, masks) > KINK_MARGIN:
      break
  else:
    raise AssertionError("no batch kept its pre-activations clear of 0")
  _assert_same(m_step, _torch_loss_and_grads(twin, lambda: twin.m_step_loss(x_t, w_t, t_t, masks)), twin)
  _assert_same(warmup, _torch_loss_and_grads(twin, lambda: twin.warmup_loss(x_t, w_t, masks)), twin)
  with torch.no_grad():
    np.testing.assert_allclose(twin.predict(x_t).numpy(), np.asarray(soft), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(twin.e_step(torch.from_numpy(np.array(soft))).numpy(), np.asarray(e_step),
                               rtol=1e-5, atol=1e-6)
  return [np.asarray(m) for m in m_step[0][1][1]]


@pytest.mark.parametrize("case", sorted(DEPICT_CASES))
def test_depict_twin_matches_losses_and_gradients(case):
  image_shape, fields = DEPICT_CASES[case]
  config = depict.DepictConfig(**fields)
  masks = _check_twin(depict.Depict(config, image_shape), torch_twins.DepictTwin(config, image_shape), image_shape)
  assert len(masks) == len(config.conv_features) + 1
  for mask, rate in zip(masks, config.dropout_rates):  # dropout did drop, where its rate says so
    assert mask.all() == (rate == 0)


@pytest.mark.parametrize("kernel_size,stride,crop,extra", [(4, 2, 0, 0), (5, 2, 2, 1), (3, 1, 1, 0), (4, 3, 1, 2)])
@pytest.mark.parametrize("method", ["dilated", "subpixel"])
def test_transposed_conv_kernel_maps_onto_conv_transpose2d(kernel_size, stride, crop, extra, method):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  kernel = rng.normal(size=(kernel_size, kernel_size, 3, 4)).astype(np.float32)
  size = [(n - 1) * stride + kernel_size - 2 * crop + extra for n in x.shape[1:3]]
  expected = jnn.conv_transpose(jnp.asarray(x), jnp.asarray(kernel), stride, crop, size, method=method)
  actual = F.conv_transpose2d(torch.from_numpy(torch_twins.to_nchw(x)),
                              torch.from_numpy(np.ascontiguousarray(torch_twins.conv_transpose_weight(kernel))),
                              stride=stride, padding=crop, output_padding=extra)
  np.testing.assert_allclose(actual.numpy(), torch_twins.to_nchw(np.asarray(expected)), rtol=1e-5, atol=1e-5)


# name: (image shape, DecConfig fields); two channels check the NHWC -> NCHW flattening.
DEC_CASES = {
    "dec-digits": ((8, 8, 1), {}),
    "idec-two-channels": ((6, 5, 2), {"reconstruction_weight": 1.0, "clustering_weight": 0.1,
                                      "hidden_dims": (32, 32, 64), "alpha": 2.0}),
}


@pytest.mark.parametrize("case", sorted(DEC_CASES))
def test_dec_twin_matches_losses_and_gradients(case):
  image_shape, fields = DEC_CASES[case]
  config = dec.DecConfig(**fields)
  assert _check_twin(dec.Dec(config, image_shape), torch_twins.DecTwin(config, image_shape), image_shape) == []


def test_every_twin_builds_from_its_algorithms_digits_config():
  for name, twin_cls in torch_twins.TWINS.items():
    module = algos.REGISTRY[name]
    twin = twin_cls(module.Config(**module.dataset_settings("digits", (8, 8, 1))), (8, 8, 1))
    assert twin.predict(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
