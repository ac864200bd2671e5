"""The PyTorch twins (benchmarks/torch_twins.py) against jaxclust: same weights and batch give
the same loss terms and the same gradient for every parameter, within float32 tolerance.

Dropout: each check runs the noisy pathway with dropout on, at the config's rates, and feeds
the twin the very keep masks that Flax's ``nn.Dropout`` drew inside ``m_step_loss`` (caught
with ``flax.linen.intercept_methods``). That compares the real training objective, dropout
and its 1/(1-p) scaling included, rather than a dropout-free variant of it; the twin's own
``nn.Dropout`` draws are what the benchmark uses. Likewise the other draws of the newer
twins' steps (ICS's augmented positives and copies, SpectralNet's orthogonalization rows,
DSCDAN's noise and shuffle): each is made once on the JAX side, from the key the JAX loss
gets, and handed to the twin.
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
from jaxclust import augment, losses, spectral
from jaxclust.algos import dec, depict, dscdan, ics, spectralnet
from jaxclust.configs.depict import DATASET_SETTINGS
from jaxclust.engine import MODEL_STATE

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_twins

torch.set_num_threads(2)

# float32 on both sides; sums over a few thousand products reorder differently in XLA and
# ATen, so values agree to a few ulps of their largest terms.
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-6
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5  # atol relative to the largest |gradient| of the parameter
FLOAT32 = {"loss": (LOSS_RTOL, LOSS_ATOL), "grad": (GRAD_RTOL, GRAD_ATOL)}

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


def _min_abs_preactivation(twin, loss_fn):
  """The smallest |input| of any (leaky) ReLU of the twin in ``loss_fn()`` (a twin's loss).

  Leaky ReLU's (and ReLU's) slope jumps at 0: a pre-activation within rounding error of 0
  can land on either side in XLA and in ATen, and that one element's gradient then differs
  by the factor of the slope. Tests draw batches whose pre-activations all stay clear of 0.
  """
  smallest = []
  hooks = [m.register_forward_hook(lambda m, inputs, out: smallest.append(float(inputs[0].abs().min())))
           for m in twin.modules() if isinstance(m, (torch.nn.LeakyReLU, torch.nn.ReLU))]
  with torch.no_grad():
    loss_fn()
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
  _assert_same_loss_and_grads(jax_loss, jax_terms, jax_grads, torch_result, twin)


def _assert_same_loss_and_grads(jax_loss, jax_terms, jax_grads, torch_result, twin, zero=(), tolerance=FLOAT32):
  """``zero``: parameters whose gradient is 0 in exact arithmetic (the bias of a layer that
  batch norm follows, whose mean it subtracts): both sides must be rounding noise, small
  next to the largest gradient of any parameter."""
  torch_loss, torch_terms, torch_grads = torch_result
  (loss_rtol, loss_atol), (grad_rtol, grad_atol) = tolerance["loss"], tolerance["grad"]
  assert torch_terms.keys() == jax_terms.keys()
  np.testing.assert_allclose(torch_loss, float(jax_loss), rtol=loss_rtol, atol=loss_atol)
  for name in jax_terms:
    np.testing.assert_allclose(torch_terms[name], float(jax_terms[name]), rtol=loss_rtol, atol=loss_atol,
                               err_msg=name)
  expected = twin.torch_layout(jax_grads)
  assert expected.keys() == torch_grads.keys()
  largest = max(float(np.abs(grad).max()) for grad in expected.values())
  for name, grad in expected.items():
    assert torch_grads[name].shape == grad.shape, name
    if name in zero:
      assert max(np.abs(grad).max(), np.abs(torch_grads[name]).max()) < grad_atol * largest, name
      continue
    scale = largest if tolerance.get("grad_atol_of") == "model" else max(float(np.abs(grad).max()), 1e-6)
    np.testing.assert_allclose(torch_grads[name], grad, rtol=grad_rtol, atol=grad_atol * scale, err_msg=name)


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
    if _min_abs_preactivation(twin, lambda: twin.m_step_loss(x_t, w_t, t_t, masks)) > KINK_MARGIN:
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


# ----------------------------------------------------------------------------- the newer twins


def _nchw(a):
  return torch.from_numpy(torch_twins.to_nchw(np.array(a, np.float32)))


def _tensor(a):
  return torch.from_numpy(np.array(a))


def _with_state(params, **state):
  """``params`` with entries of the model state replaced."""
  return {**params, MODEL_STATE: {**params[MODEL_STATE], **state}}


def _parity(twin, params, jax_loss, torch_loss, zero=(), tolerance=FLOAT32):
  """Loads ``params`` into the twin and checks ``torch_loss()`` against ``jax_loss(params)``:
  loss, terms and every gradient. Returns the model state the JAX loss gives back (or None)."""
  (loss, terms), grads = jax.jit(jax.value_and_grad(jax_loss, has_aux=True))(params)
  terms = dict(terms)
  state = terms.pop(MODEL_STATE, None)
  twin.load_flax(params)
  _assert_same_loss_and_grads(loss, terms, grads, _torch_loss_and_grads(twin, torch_loss), twin, zero, tolerance)
  return state


def _search_batch(twin, params, make, loss_fns):
  """``make(seed)``'s first output whose pre-activations stay clear of 0 in every one of
  ``loss_fns(made)`` (see :func:`_min_abs_preactivation`)."""
  for seed in range(20):
    made = make(seed)
    twin.load_flax(params)
    if min(_min_abs_preactivation(twin, fn) for fn in loss_fns(made)) > KINK_MARGIN:
      return made
  raise AssertionError("no batch kept its pre-activations clear of 0")


def _dataset_and_batch(image_shape, k, batch_size, n_rows, seed):
  """A dataset ``[n_rows, H, W, C]``, a batch of it with its last row padding, and targets."""
  rng = np.random.default_rng(seed)
  dataset = rng.uniform(-1, 1, (n_rows, *image_shape)).astype(np.float32)
  index = rng.choice(n_rows, batch_size, replace=False).astype(np.int32)
  weights = np.ones(batch_size, np.float32)
  weights[-1] = 0.0
  q = rng.dirichlet(np.ones(k), batch_size).astype(np.float32)
  batch = {"x": jnp.asarray(dataset[index]), "weights": jnp.asarray(weights), "index": jnp.asarray(index),
           "dataset": jnp.asarray(dataset)}
  return batch, q, rng


ICS_BATCH, ICS_ROWS = 12, 20
# name: (image shape, IcsConfig fields). The digits' network; a non-square three-channel image
# whose pools round up and whose decoder crops, with every option of eq. 5 and 7 changed; and
# the objective without its triplet and reconstruction terms.
ICS_CASES = {
    "digits": ((8, 8, 1), ics.dataset_settings("digits", (8, 8, 1))),
    "odd-image-options": ((7, 10, 3), {
        "n_clusters": 4, "conv_features": (4, 6, 8), "embedding_dim": 5, "alpha": 2.0, "margin": 0.5,
        "reconstruction_weight": 0.7, "clustering_weight": 0.3, "triplet_weight": 1.2, "entropy_weight": 0.2,
        "triplet_normalize": False, "triplet_squared": False, "flip_probability": 0.5}),
    "no-triplet-no-reconstruction": ((8, 8, 1), {"n_clusters": 3, "conv_features": (4, 6), "triplet_weight": 0.0,
                                                 "reconstruction_weight": 0.0}),
}


def _assert_running_averages(twin, old_stats, new_stats, momentum):
  """The twin's batch-norm buffers after a step against Flax's new running averages: the same
  means; the variances differ by PyTorch's unbiased batch variance (``n / (n - 1)`` times the
  biased one Flax averages in), which is undone here. ``n`` is read from the twin's module."""
  old, new = twin.batch_stats_layout(old_stats), twin.batch_stats_layout(new_stats)
  buffers = dict(twin.named_buffers())
  for name, _, _ in twin._norms():
    mean, var = f"{name}.running_mean", f"{name}.running_var"
    np.testing.assert_allclose(buffers[mean].numpy(), new[mean], rtol=1e-5, atol=1e-6, err_msg=mean)
    if np.array_equal(new[mean], old[mean]):  # not run by this loss
      np.testing.assert_array_equal(buffers[var].numpy(), old[var], err_msg=var)
      continue
    biased = (new[var] - momentum * old[var]) / (1.0 - momentum)
    n = twin.batch_counts[name]
    expected = momentum * old[var] + (1.0 - momentum) * biased * n / (n - 1)
    np.testing.assert_allclose(buffers[var].numpy(), expected, rtol=1e-4, atol=1e-5, err_msg=var)


def _count_batch_norm_rows(twin):
  """Hooks that record, per batch norm of the ICS twin, the number of values per channel its
  last training-mode call averaged (``twin.batch_counts``)."""
  twin.batch_counts = {}
  original = torch_twins.batch_norm

  def counting(norm, h, train, mask=None):
    if train:
      name = next(n for n, module in twin.named_modules() if module is norm)
      rows = h.shape[0] if mask is None else int(mask.sum())
      twin.batch_counts[name] = rows * math.prod(h.shape[2:])
    return original(norm, h, train, mask)

  return counting


@pytest.mark.parametrize("case", sorted(ICS_CASES))
def test_ics_twin_matches_losses_gradients_and_batch_statistics(case, monkeypatch):
  image_shape, fields = ICS_CASES[case]
  config = ics.IcsConfig(**fields)
  algo, twin = ics.Ics(config, image_shape), torch_twins.IcsTwin(config, image_shape)
  k = config.n_clusters
  params = _random_params(algo, image_shape)
  # Batch-norm scales about 1, as trained ones are (at 0.1 whole channels stay on one side of
  # the ReLU's kink), and positive running variances.
  rng_np = np.random.default_rng(5)
  uniform = lambda leaf: jnp.asarray(rng_np.uniform(0.5, 1.5, leaf.shape), jnp.float32)
  ae = {name: {**layer, "scale": uniform(layer["scale"])} if "norm" in name else layer
        for name, layer in params["ae"].items()}
  stats = {name: {**norm, "var": uniform(norm["var"])} for name, norm in params[MODEL_STATE]["batch_stats"].items()}
  params = _with_state({**params, "ae": ae}, batch_stats=stats)
  key = jax.random.key(1)
  draw_positives = jax.jit(algo._augment)  # what Ics.m_step_loss draws from its key

  def make(seed):
    batch, q, rng = _dataset_and_batch(image_shape, k, ICS_BATCH, ICS_ROWS, seed)
    targets = {"q": jnp.asarray(q), "negative": jnp.asarray(rng.integers(0, ICS_ROWS, ICS_BATCH), jnp.int32)}
    positives = draw_positives(key, batch["x"])
    twin.use_dataset(_nchw(batch["dataset"]))
    torch_args = (_nchw(batch["x"]), _tensor(batch["weights"]),
                  {"q": _tensor(q), "negative": torch.from_numpy(np.asarray(targets["negative"], np.int64))},
                  _nchw(positives))
    return batch, targets, torch_args

  def losses(made):
    x_t, w_t, t_t, pos_t = made[2]
    return [lambda: twin.warmup_loss(x_t, w_t), lambda: twin.m_step_loss(x_t, w_t, t_t, pos_t)]

  batch, targets, (x_t, w_t, t_t, pos_t) = _search_batch(twin, params, make, losses)
  monkeypatch.setattr(torch_twins, "batch_norm", _count_batch_norm_rows(twin))
  normalised = ([f"convs.{l}.bias" for l in range(len(twin.convs))] + ["dense.bias"]
                + [f"deconvs.{l}.bias" for l in range(1, len(twin.deconvs))])
  state = _parity(twin, params, lambda p: algo.m_step_loss(p, batch, targets, key),
                  lambda: twin.m_step_loss(x_t, w_t, t_t, pos_t), normalised)
  _assert_running_averages(twin, stats, state["batch_stats"], 0.99)
  # In the warm-up the embedding only reaches the loss through the decoder's dense layer and
  # its batch norm, which subtracts whatever the embedding's bias adds.
  state = _parity(twin, params, lambda p: algo.warmup_loss(p, batch, key), lambda: twin.warmup_loss(x_t, w_t),
                  [*normalised, "embedding.bias"])
  _assert_running_averages(twin, stats, state["batch_stats"], 0.99)
  _assert_ics_e_step(algo, twin, params, batch["x"], x_t)


def _assert_ics_e_step(algo, twin, params, x, x_t):
  """``predict`` (soft assignments, embedding, Algorithm 1's radius from the augmented copies)
  and ``e_step`` (DEC's targets, the negatives) against jaxclust's, given the copies and the
  candidates jaxclust draws from its keys (see ``Ics._selection_features`` and ``e_step``)."""
  cfg = algo.config

  @jax.jit
  def reference(params, x):
    predicted = algo.predict(params, x)
    bits = jax.lax.bitcast_convert_type(jnp.sum(x), jnp.uint32)
    key = jax.random.fold_in(algo._draw_key(params[MODEL_STATE]["steps"], 0), bits)
    copies = algo._augment(key, jnp.tile(x, (cfg.negative_augmentations, 1, 1, 1)))
    candidates = jax.random.randint(algo._draw_key(predicted["steps"][0], 1), (x.shape[0], cfg.negative_candidates),
                                    0, x.shape[0], dtype=jnp.int32)
    return predicted, algo.e_step(predicted), copies, candidates

  predicted, targets, copies, candidates = reference(params, x)
  twin.load_flax(params)  # the running averages before the steps above
  with torch.no_grad():
    twin_predicted = twin.predict(x_t, _nchw(copies))
    for name in ("soft", "embedding", "radius"):
      np.testing.assert_allclose(twin_predicted[name].numpy(), np.asarray(predicted[name]), rtol=1e-5, atol=1e-6,
                                 err_msg=name)
    # The E-step of the very same predictions: the same negatives.
    twin_targets = twin.e_step({name: _tensor(predicted[name]) for name in ("soft", "embedding", "radius")},
                               torch.from_numpy(np.asarray(candidates, np.int64)))
  np.testing.assert_allclose(twin_targets["q"].numpy(), np.asarray(targets["q"]), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(twin_targets["negative"].numpy(), np.asarray(targets["negative"]))


@pytest.mark.parametrize("image_shape", [(8, 8, 1), (7, 10, 3)])
def test_ics_twin_augments_as_jaxclust_does(image_shape):
  """The twin's resampling of given rotations, zooms and shifts is jaxclust's."""
  rng = np.random.default_rng(0)
  height, width, _ = image_shape
  x = rng.uniform(-1, 1, (5, *image_shape)).astype(np.float32)
  angles, scales = rng.uniform(-30, 30, 5), rng.uniform(0.7, 1.3, 5)
  offsets = rng.uniform(-2, 2, (5, 2))
  matrices = augment.compose(augment.shift_matrices(offsets), augment.compose(
      augment.scale_matrices(scales, height, width), augment.rotation_matrices(angles, height, width)))
  twin_matrices = torch_twins.augmentation_matrices(*(torch.from_numpy(np.asarray(a, np.float32))
                                                      for a in (angles, scales, offsets)), height, width)
  np.testing.assert_allclose(twin_matrices.numpy(), np.asarray(matrices), rtol=1e-5, atol=1e-5)
  expected = augment.affine(jnp.asarray(x), matrices)
  actual = torch_twins.affine(_nchw(x), twin_matrices)
  np.testing.assert_allclose(actual.numpy(), torch_twins.to_nchw(np.asarray(expected)), rtol=1e-5, atol=1e-5)


SPECTRAL_BATCH, SPECTRAL_ROWS = 12, 24


def _spectral_params(algo, image_shape, code_layer):
  """Random parameters with a spectral head's state: the dataset's size (the orthogonalization
  batches draw from it), outputs clustered.

  The layer that makes the codes, ``params["ae"][code_layer]``, is scaled up tenfold: with
  the random weights the codes hardly vary (about 0.05 around biases of 0.1), so neither do
  the spectral network's outputs ``Y~``; their Gram matrix is then near-singular (condition
  numbers of 1e3 to 1e4) and the orthonormalization loses ``eps * cond`` in either framework,
  more than the tolerances here. Codes spread as trained ones do (about 0.5) give condition
  numbers of 10 to 500."""
  params = _random_params(algo, image_shape)
  ae = {**params["ae"], code_layer: jax.tree.map(lambda v: 10.0 * v, params["ae"][code_layer])}
  return _with_state({**params, "ae": ae}, n_samples=jnp.float32(SPECTRAL_ROWS), clustered=jnp.float32(1.0))


def _assert_orthonorm(twin, state, tolerance=FLOAT32):
  """The orthonorm weights the twin's step stored against those of jaxclust's state."""
  expected = np.asarray(state["orthonorm"])
  rtol, atol = tolerance["grad"]
  np.testing.assert_allclose(twin.orthonorm.numpy(), expected, rtol=rtol, atol=atol * np.abs(expected).max())


def _assert_spectral_predictions(algo, twin, params, batch, x_t):
  """``predict`` before the outputs were clustered (Student-t of the codes) and after."""
  for clustered in (0.0, 1.0):
    state_params = _with_state(params, clustered=jnp.float32(clustered))
    twin.load_flax(state_params)
    with torch.no_grad():
      np.testing.assert_allclose(twin.predict(x_t).numpy(), np.asarray(jax.jit(algo.predict)(state_params, batch["x"])),
                                 rtol=1e-5, atol=1e-6, err_msg=f"clustered={clustered}")


def _cancelling_output_bias(config, logits_read=False):
  """The spectral network's output bias adds the same row to every ``Y~``, which cancels in
  ``y_i - y_j`` where the outputs are linear in it and the orthonorm weights are held fixed
  (and the prior does not read the logits): its gradient is then 0."""
  linear = config.output_activation == "linear" and not config.orthonorm_gradient and not logits_read
  return ["spectral.output.bias"] if linear else []


# name: (image shape, SpectralNetConfig fields). The digits' networks with a separate
# orthogonalization batch (more rows than clusters: the Cholesky path); the step's own batch,
# a fixed scale, linear outputs and fixed orthonorm weights on a two-channel image; more
# clusters than rows (the QR path, with a jitter that keeps its factor well-conditioned) with
# softmax outputs.
SPECTRALNET_CASES = {
    "digits-separate": ((8, 8, 1), {"n_clusters": 4}),
    "same-batch-fixed-scale": ((6, 5, 2), {
        "n_clusters": 3, "orthonorm_batch": "same", "affinity_scale": 2.0, "output_activation": "linear",
        "orthonorm_gradient": False, "hidden_dims": (32, 32, 64), "embedding_dim": 5, "spectral_hidden": (64, 32),
        "n_neighbors": 3, "scale_neighbor": 2}),
    "more-clusters-than-rows": ((8, 8, 1), {
        "n_clusters": 16, "output_activation": "softmax", "hidden_dims": (32, 64), "embedding_dim": 6,
        "spectral_hidden": (64,), "orthonorm_jitter": 1e-2}),
}


# The spectral loss goes through the inverse of the Cholesky factor of Y~^T Y~, which amplifies
# rounding by the condition number; on one CPU (AMD EPYC, AVX2) the two frameworks' losses of
# "same-batch-fixed-scale" differed by 1.7e-5 relative, against under 1e-5 on another.
SPECTRALNET_FLOAT32 = {"loss": (1e-4, LOSS_ATOL), "grad": (GRAD_RTOL, GRAD_ATOL)}


@pytest.mark.parametrize("case", sorted(SPECTRALNET_CASES))
def test_spectralnet_twin_matches_losses_and_gradients(case):
  image_shape, fields = SPECTRALNET_CASES[case]
  config = spectralnet.SpectralNetConfig(**{"batch_size": SPECTRAL_BATCH, **fields})
  algo, twin = spectralnet.SpectralNet(config, image_shape), torch_twins.SpectralNetTwin(config, image_shape)
  params = _spectral_params(algo, image_shape, f"encoder_layers_{len(config.hidden_dims)}")
  key = jax.random.key(1)
  # What SpectralNet.m_step_loss draws from its key.
  index, weights_orth = jax.jit(spectralnet.draw_rows, static_argnums=(1, 2))(key, SPECTRAL_ROWS, SPECTRAL_BATCH,
                                                                             SPECTRAL_ROWS)
  orthogonalization = (torch.from_numpy(np.asarray(index, np.int64)), _tensor(weights_orth))
  targets = jnp.zeros((SPECTRAL_BATCH, config.n_clusters))  # not read

  def make(seed):
    batch, _, _ = _dataset_and_batch(image_shape, config.n_clusters, SPECTRAL_BATCH, SPECTRAL_ROWS, seed)
    twin.use_dataset(_nchw(batch["dataset"]))
    return batch, _nchw(batch["x"]), _tensor(batch["weights"])

  def losses(made):
    _, x_t, w_t = made
    return [lambda: twin.warmup_loss(x_t, w_t), lambda: twin.m_step_loss(x_t, w_t, None, orthogonalization)]

  batch, x_t, w_t = _search_batch(twin, params, make, losses)
  state = _parity(twin, params, lambda p: algo.m_step_loss(p, batch, targets, key),
                  lambda: twin.m_step_loss(x_t, w_t, None, orthogonalization), _cancelling_output_bias(config),
                  SPECTRALNET_FLOAT32)
  _assert_orthonorm(twin, state)
  _parity(twin, params, lambda p: algo.warmup_loss(p, batch, key), lambda: twin.warmup_loss(x_t, w_t))
  _assert_spectral_predictions(algo, twin, params, batch, x_t)


@pytest.mark.parametrize("scale,scale_neighbor", [(None, 1), (None, 3), (1.5, None)])
def test_knn_affinity_matches_jaxclust(scale, scale_neighbor):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 4)).astype(np.float32)
  weights = np.ones(10, np.float32)
  weights[[3, 9]] = 0.0
  expected = spectral.knn_affinity(jnp.asarray(x), 3, scale=scale, scale_neighbor=scale_neighbor,
                                   weights=jnp.asarray(weights))
  actual = torch_twins.knn_affinity(torch.from_numpy(x), 3, scale, scale_neighbor, torch.from_numpy(weights))
  np.testing.assert_allclose(actual.numpy(), np.asarray(expected), rtol=1e-5, atol=1e-7)


# name: (image shape, DscdanConfig fields). The digits' networks with the paper's options;
# a non-square two-channel image with the authors' code's options (sampled noise, code pairs,
# the mixture prior in both phases, softmax outputs, argmax assignments), a separate
# orthogonalization batch, a fixed scale and every weight changed; and the objective without
# the relative reconstruction and the local term, with the standard prior and fixed
# orthonorm weights.
DSCDAN_CASES = {
    "digits-paper": ((8, 8, 1), {"n_clusters": 4}),
    "odd-image-code-options": ((7, 10, 2), {
        "n_clusters": 3, "conv_features": (4, 6), "latent_dim": 8, "negative_slope": 0.1, "noise": "sample",
        "global_mi_pairs": "code", "prior": "mixture", "cluster_posterior": "softmax", "output_activation": "softmax",
        "assign": "argmax", "orthonorm_batch": "separate", "affinity_scale": 1.5, "n_neighbors": 3,
        "spectral_hidden": (32, 16),
        "reconstruction_weight": 0.3, "relative_reconstruction_weight": 0.8, "global_mi_weight": 0.2,
        "local_mi_weight": 0.1, "prior_weight": 0.7, "spectral_weight": 2.0, "joint_autoencoder_weight": 0.4}),
    "terms-dropped": ((8, 8, 1), {
        "n_clusters": 3, "conv_features": (4, 6), "latent_dim": 6, "relative_reconstruction_weight": 0.0,
        "local_mi_weight": 0.0, "prior": "standard", "orthonorm_gradient": False, "noise_stddev": 0.3,
        "spectral_hidden": (16,)}),
}


# DSCDAN in float32. Its gradients are sums of many terms that nearly cancel: the mutual-
# information terms compare a discriminator's scores of positive and of shuffled pairs, which a
# random discriminator hardly tells apart (the score's bias gets 0.5 - 0.5), and the
# orthonormalization amplifies rounding by its condition number (1e2 to 1e3 here). Elements
# far below their parameter's largest come out with relative errors of 1e-3, in either
# framework, while every error stays below 1e-5 of the model's largest gradient. The float32
# check therefore takes its absolute tolerance from the model's largest gradient (1e-4 of
# it), and the float64 checks, where the two agree to 1e-12, hold every parameter to its own
# scale.
DSCDAN_FLOAT32 = {"loss": (LOSS_RTOL, LOSS_ATOL), "grad": (GRAD_RTOL, 1e-4), "grad_atol_of": "model"}
FLOAT64 = {"loss": (1e-11, 1e-12), "grad": (1e-9, 1e-10)}


def _check_dscdan(case, dtype, tolerance):
  image_shape, fields = DSCDAN_CASES[case]
  config = dscdan.DscdanConfig(**{"batch_size": SPECTRAL_BATCH, **fields})
  algo, twin = dscdan.Dscdan(config, image_shape), torch_twins.DscdanTwin(config, image_shape)
  twin.to(torch.float64 if dtype == jnp.float64 else torch.float32)
  params = jax.tree.map(lambda v: v.astype(dtype), _spectral_params(algo, image_shape, "mean"))
  key = jax.random.key(1)
  as_torch = lambda a: torch.from_numpy(np.array(a))

  @jax.jit
  def jax_draws(weights):  # what Dscdan._objective draws from its key
    key_noise, key_shuffle, key_orth = jax.random.split(key, 3)
    return (jax.random.normal(key_noise, (SPECTRAL_BATCH, config.latent_dim), dtype),
            losses.batch_permutation(key_shuffle, SPECTRAL_BATCH, weights),
            spectralnet.draw_rows(key_orth, SPECTRAL_ROWS, SPECTRAL_BATCH, params[MODEL_STATE]["n_samples"]))

  def make(seed):
    batch, _, _ = _dataset_and_batch(image_shape, config.n_clusters, SPECTRAL_BATCH, SPECTRAL_ROWS, seed)
    batch = {k: v.astype(dtype) if v.dtype == jnp.float32 else v for k, v in batch.items()}
    noise, permutation, (index, weights_orth) = jax_draws(batch["weights"])
    draws = {"noise": as_torch(noise), "permutation": as_torch(np.asarray(permutation, np.int64)),
             "orthogonalization": (as_torch(np.asarray(index, np.int64)), as_torch(weights_orth))}
    twin.use_dataset(as_torch(torch_twins.to_nchw(batch["dataset"])))
    return batch, as_torch(torch_twins.to_nchw(batch["x"])), as_torch(batch["weights"]), draws

  def twin_losses(made):
    _, x_t, w_t, draws = made
    return [lambda: twin.warmup_loss(x_t, w_t, draws), lambda: twin.m_step_loss(x_t, w_t, None, draws)]

  batch, x_t, w_t, draws = _search_batch(twin, params, make, twin_losses)
  targets = jnp.zeros((SPECTRAL_BATCH, config.n_clusters), dtype)  # not read
  mixture = config.prior_weight > 0 and config.prior != "standard"
  state = _parity(twin, params, lambda p: algo.m_step_loss(p, batch, targets, key),
                  lambda: twin.m_step_loss(x_t, w_t, None, draws), _cancelling_output_bias(config, mixture), tolerance)
  _assert_orthonorm(twin, state, tolerance)
  _parity(twin, params, lambda p: algo.warmup_loss(p, batch, key), lambda: twin.warmup_loss(x_t, w_t, draws),
          tolerance=tolerance)
  return algo, twin, params, batch, x_t


def test_dscdan_twin_matches_losses_gradients_and_predictions_in_float32():
  algo, twin, params, batch, x_t = _check_dscdan("digits-paper", jnp.float32, DSCDAN_FLOAT32)
  _assert_spectral_predictions(algo, twin, params, batch, x_t)


@pytest.mark.parametrize("case", sorted(DSCDAN_CASES))
def test_dscdan_twin_matches_losses_and_gradients_in_float64(case):
  with jax.enable_x64(True):
    _check_dscdan(case, jnp.float64, FLOAT64)


@pytest.mark.parametrize("size", [(4, 5), (7, 8)])
@pytest.mark.parametrize("stride", [1, 2])
def test_flax_conv_transpose_maps_onto_conv_transpose2d(size, stride):
  """Flax's "SAME" ``nn.ConvTranspose`` (DSCDAN's decoder) as the twin runs it."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *size, 3)).astype(np.float32)
  layer = fnn.ConvTranspose(4, (3, 3), strides=(stride, stride), padding="SAME")
  variables = layer.init(jax.random.key(0), x)
  expected = np.asarray(layer.apply(variables, x))
  weight = np.ascontiguousarray(torch_twins.flax_conv_transpose_weight(variables["params"]["kernel"]))
  actual = F.conv_transpose2d(_nchw(x), torch.from_numpy(weight), torch.from_numpy(np.array(variables["params"]["bias"])),
                              stride=stride, padding=1 if stride == 1 else 0)
  actual = actual[:, :, :expected.shape[1], :expected.shape[2]]
  np.testing.assert_allclose(actual.numpy(), torch_twins.to_nchw(expected), rtol=1e-5, atol=1e-5)


def test_every_twin_builds_from_its_algorithms_digits_config():
  for name, twin_cls in torch_twins.TWINS.items():
    module = algos.REGISTRY[name]
    twin = twin_cls(module.Config(**module.dataset_settings("digits", (8, 8, 1))), (8, 8, 1))
    predicted = twin.predict(torch.zeros(2, 1, 8, 8))
    assert (predicted["soft"] if isinstance(predicted, dict) else predicted).shape == (2, 10)
