"""PyTorch twins of jaxclust's networks and losses, for JAX-against-PyTorch benchmarks.

A twin is the model and objective of one jaxclust algorithm written as a PyTorch user would
write them: ``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.Linear``, ``nn.LeakyReLU``,
``nn.Dropout``, images channels-first (``[N, C, H, W]``), trained with ``torch.optim.Adam``.
It has the same architecture, padding and activations as the Flax model its algorithm
builds from the same config, and takes that model's parameters: ``twin.load_flax(params)``.

Every twin is a ``torch.nn.Module`` (:class:`Twin`) with

  ``warmup_loss(x, weights, dropout_masks=None) -> (loss, terms)``
  ``m_step_loss(x, weights, targets, dropout_masks=None) -> (loss, terms)``
  ``predict(x) -> soft assignments [N, K]`` (clean pathway) and ``e_step(soft) -> targets``
  ``torch_layout(tree) -> {parameter name: array}``: a pytree shaped like the Flax
  parameters (the parameters, or their gradients) in the twin's layout
  ``load_flax(params)``: copies Flax parameters into the twin

``x`` is ``[N, C, H, W]`` (:func:`to_nchw` turns jaxclust's ``[N, H, W, C]`` into it),
``weights`` ``[N]`` per-sample weights (0 for padding rows), ``targets`` ``[N, K]``; the
terms carry the names jaxclust's losses give them. The noisy pathway draws its dropout from
``nn.Dropout`` unless ``dropout_masks`` (keep masks, one per dropout site, each shaped like
the activation it drops, NCHW) fix it, as the parity tests do with the masks Flax drew.

``TWINS`` maps ``--algo`` names to twin classes, built as ``TWINS[name](config, image_shape)``
from the algorithm's config and its (``[H, W, C]``) image shape, like the algorithms
themselves: ``depict`` (paper 000, eq. 12) and ``dec`` / ``idec`` (the MLP autoencoder and
the Student-t KL objective).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jaxclust.nn import ConvSpec, encoder_shapes


def to_nchw(x: np.ndarray) -> np.ndarray:
  """``[N, H, W, C]`` -> ``[N, C, H, W]`` (a contiguous copy)."""
  return np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2)))


def conv_weight(kernel_hwio: np.ndarray) -> np.ndarray:
  """A Flax ``nn.Conv`` kernel ``[kh, kw, in, out]`` as ``nn.Conv2d``'s ``[out, in, kh, kw]``.

  Both are cross-correlations, so nothing is flipped.
  """
  return np.transpose(np.asarray(kernel_hwio), (3, 2, 0, 1))


def conv_transpose_weight(kernel: np.ndarray) -> np.ndarray:
  """A :class:`jaxclust.nn.TransposedConv` kernel ``[kh, kw, in, out]`` as
  ``nn.ConvTranspose2d``'s ``[in, out, kh, kw]``.

  jaxclust's transposed convolution computes ``y[o] = sum_i x[i] K[o + crop - stride * i]``
  per spatial axis, whichever ``method`` (``"dilated"`` flips the kernel internally to run
  it as a convolution of the dilated input, ``"subpixel"`` splits its taps by output phase);
  ``ConvTranspose2d`` with ``padding=crop`` computes the same sum with its weight in the
  same tap order, so the kernel maps over without a flip, for both methods.
  """
  return np.transpose(np.asarray(kernel), (2, 3, 0, 1))


def dense_weight(kernel: np.ndarray) -> np.ndarray:
  """A Flax ``nn.Dense`` kernel ``[in, out]`` as ``nn.Linear``'s ``[out, in]``."""
  return np.asarray(kernel).T


def hwc_rows_to_chw(kernel: np.ndarray, shape_hwc: Sequence[int]) -> np.ndarray:
  """A Dense kernel ``[H*W*C, out]`` that reads a flattened NHWC map, as ``nn.Linear``'s
  ``[out, C*H*W]`` reading the flattened NCHW map."""
  h, w, c = shape_hwc
  out = kernel.shape[-1]
  return np.asarray(kernel).reshape(h, w, c, out).transpose(3, 2, 0, 1).reshape(out, c * h * w)


def hwc_columns_to_chw(kernel: np.ndarray, shape_hwc: Sequence[int]) -> np.ndarray:
  """A Dense kernel ``[in, H*W*C]`` whose output is reshaped to NHWC, as ``nn.Linear``'s
  ``[C*H*W, in]`` whose output is reshaped to NCHW."""
  h, w, c = shape_hwc
  n_in = kernel.shape[0]
  return np.asarray(kernel).reshape(n_in, h, w, c).transpose(3, 1, 2, 0).reshape(c * h * w, n_in)


def hwc_vector_to_chw(bias: np.ndarray, shape_hwc: Sequence[int]) -> np.ndarray:
  """A bias ``[H*W*C]`` laid out NHWC, as ``[C*H*W]`` laid out NCHW."""
  h, w, c = shape_hwc
  return np.asarray(bias).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


# ----------------------------------------------------------------------------- loss terms


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
  """Mean of per-sample ``values`` ``[N]`` under ``weights`` ``[N]``; 0 if all weights are 0."""
  total = weights.sum()
  return torch.where(total > 0, (values * weights).sum() / torch.where(total > 0, total, 1.0), 0.0)


def reconstruction_error(target: torch.Tensor, reconstruction: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
  """Squared error normalised by the layer size, averaged over samples."""
  per_sample = (target - reconstruction).square().flatten(1).mean(dim=1)
  return weighted_mean(per_sample, weights)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
  """``-1/N sum_i sum_k q_ik log softmax(logits)_ik`` (DEPICT eq. 8)."""
  per_sample = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)
  return weighted_mean(per_sample, weights)


def kl_divergence(q: torch.Tensor, p: torch.Tensor, weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
  """``KL(Q || P)`` per sample, averaged; terms with ``q = 0`` contribute zero (DEC eq. 2)."""
  terms = torch.where(q > 0, q * (torch.log(q + eps) - torch.log(p + eps)), 0.0)
  return weighted_mean(terms.sum(dim=-1), weights)


def student_t_assign(z: torch.Tensor, centroids: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
  """``q_ij ∝ (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha+1)/2)`` (DEC eq. 1)."""
  sq_dist = (z[:, None, :] - centroids[None, :, :]).square().sum(dim=-1)
  return torch.softmax(-(alpha + 1.0) / 2.0 * torch.log1p(sq_dist / alpha), dim=-1)


def depict_target(p: torch.Tensor, prior: Sequence[float] | None = None, form: str = "paper",
                  eps: float = 1e-12) -> torch.Tensor:
  """DEPICT's target Q (eq. 7, or the authors' squared form) with a cluster-size prior."""
  k = p.shape[-1]
  u = torch.full((k,), 1.0 / k, dtype=p.dtype, device=p.device) if prior is None else (
      torch.as_tensor(prior, dtype=p.dtype, device=p.device) / sum(prior))
  frequency = p.sum(dim=0)
  if form == "paper":
    unnormalised = p * torch.sqrt(u / (frequency + eps))
  else:
    unnormalised = p.square() * (u / (frequency + eps))
  return unnormalised / unnormalised.sum(dim=-1, keepdim=True)


def dec_target(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
  """DEC's target ``p_ij ∝ q_ij^2 / sum_i q_ij`` (DEC eq. 3)."""
  unnormalised = q.square() / (q.sum(dim=0) + eps)
  return unnormalised / unnormalised.sum(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- twins


class Twin(nn.Module):
  """What every twin provides (see the module docstring)."""

  def torch_layout(self, tree) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def load_flax(self, params) -> None:
    """Copies Flax parameters (a pytree as the algorithm's ``init`` returns) into the twin."""
    state = {name: torch.from_numpy(np.array(value, np.float32)) for name, value in self.torch_layout(params).items()}
    self.load_state_dict(state, strict=True)

  def warmup_loss(self, x, weights, dropout_masks=None):
    raise NotImplementedError

  def m_step_loss(self, x, weights, targets, dropout_masks=None):
    raise NotImplementedError

  def predict(self, x):
    raise NotImplementedError

  def e_step(self, soft_assignments):
    raise NotImplementedError


class DepictTwin(Twin):
  """DEPICT's convolutional autoencoder and softmax layer (:class:`jaxclust.nn.ConvAutoencoder`)
  and its losses (:class:`jaxclust.algos.depict.Depict`).

  Encoder: per conv layer ``Conv2d`` (zero padding ``p``), leaky ReLU, dropout on the noisy
  pathway (and dropout on the input); then ``Linear`` to the ``K``-dimensional embedding
  and tanh. Decoder: ``Linear`` and leaky ReLU shaped as the top conv map, then per layer a
  ``ConvTranspose2d`` cropping ``p`` (with output padding where the encoder's stride dropped
  pixels), leaky ReLU except tanh on the reconstructed input. Softmax layer ``Linear(K, K)``
  on the embedding. Xavier-uniform weights and zero biases, as the Flax model initialises.
  """

  def __init__(self, config, image_shape: Sequence[int]):
    super().__init__()
    self.config = config
    convs = [ConvSpec(*spec) for spec in zip(config.conv_features, config.kernel_sizes, config.strides,
                                             config.paddings)]
    self.shapes = encoder_shapes(tuple(image_shape), convs)  # (H, W, C) of input and each conv
    self.convs = nn.ModuleList(
        nn.Conv2d(self.shapes[l][2], spec.features, spec.kernel_size, spec.stride, spec.padding)
        for l, spec in enumerate(convs))
    self.dropouts = nn.ModuleList(nn.Dropout(rate) for rate in config.dropout_rates)
    top_h, top_w, top_c = self.shapes[-1]
    k = config.n_clusters
    self.embedding = nn.Linear(top_h * top_w * top_c, k)
    self.dense = nn.Linear(k, top_h * top_w * top_c)
    # deconvs[l] mirrors convs[l]: from layer l + 1's shape back to layer l's.
    deconvs = []
    for l, spec in enumerate(convs):
      (out_h, out_w, out_c), (in_h, in_w, in_c) = self.shapes[l], self.shapes[l + 1]
      natural = [(n - 1) * spec.stride + spec.kernel_size - 2 * spec.padding for n in (in_h, in_w)]
      deconvs.append(nn.ConvTranspose2d(in_c, out_c, spec.kernel_size, spec.stride, spec.padding,
                                        output_padding=(out_h - natural[0], out_w - natural[1])))
    self.deconvs = nn.ModuleList(deconvs)
    self.head = nn.Linear(k, k)
    self.activation = nn.LeakyReLU(config.negative_slope)
    hidden = config.hidden_reconstruction_weight
    self.layer_weights = [1.0] + [hidden] * len(convs)
    for module in self.modules():
      if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)

  def _drop(self, site: int, h: torch.Tensor, noisy: bool, dropout_masks) -> torch.Tensor:
    if not noisy:
      return h
    if dropout_masks is None:
      return self.dropouts[site](h)
    return h * dropout_masks[site] / (1.0 - self.dropouts[site].p)

  def encode(self, x: torch.Tensor, noisy: bool = False, dropout_masks=None) -> list[torch.Tensor]:
    """``[z^0, ..., z^L]``: the (corrupted) input, each conv map, the embedding ``[N, K]``."""
    h = self._drop(0, x, noisy, dropout_masks)
    activations = [h]
    for l, conv in enumerate(self.convs):
      h = self._drop(l + 1, self.activation(conv(h)), noisy, dropout_masks)
      activations.append(h)
    activations.append(torch.tanh(self.embedding(h.flatten(1))))
    return activations

  def decode(self, z: torch.Tensor) -> list[torch.Tensor]:
    """``[z_hat^0, ..., z_hat^{L-1}]``: the reconstructed input first, then each conv map."""
    top_h, top_w, top_c = self.shapes[-1]
    h = self.activation(self.dense(z)).view(z.shape[0], top_c, top_h, top_w)
    reconstructed = [h]
    for l in reversed(range(len(self.deconvs))):
      h = self.deconvs[l](h)
      h = torch.tanh(h) if l == 0 else self.activation(h)
      reconstructed.append(h)
    return reconstructed[::-1]

  def _reconstruction(self, x, weights, dropout_masks):
    noisy = self.encode(x, noisy=True, dropout_masks=dropout_masks)
    reconstructed = self.decode(noisy[-1])
    clean = self.encode(x)
    per_layer = [reconstruction_error(z, z_hat, weights) for z, z_hat in zip(clean[:-1], reconstructed)]
    total = sum(w * term for w, term in zip(self.layer_weights, per_layer))
    return noisy[-1], total, per_layer

  def warmup_loss(self, x, weights, dropout_masks=None):
    _, total, per_layer = self._reconstruction(x, weights, dropout_masks)
    return total, {f"rec{l}": v for l, v in enumerate(per_layer)}

  def m_step_loss(self, x, weights, targets, dropout_masks=None):
    """Eq. 12: the noisy pathway's softmax against Q plus the layer-wise reconstruction."""
    noisy_embedding, reconstruction, per_layer = self._reconstruction(x, weights, dropout_masks)
    clustering = soft_cross_entropy(self.head(noisy_embedding), targets, weights)
    cfg = self.config
    loss = cfg.clustering_weight * clustering + cfg.reconstruction_weight * reconstruction
    return loss, {"clustering": clustering, **{f"rec{l}": v for l, v in enumerate(per_layer)}}

  def predict(self, x):
    return torch.softmax(self.head(self.encode(x)[-1]), dim=-1)

  def e_step(self, soft_assignments):
    return depict_target(soft_assignments, self.config.prior, self.config.target_form)

  def torch_layout(self, tree) -> dict[str, np.ndarray]:
    encoder, decoder = tree["encoder"], tree["decoder"]
    out = {}
    for l in range(len(self.convs)):
      out[f"convs.{l}.weight"] = conv_weight(encoder[f"conv{l + 1}"]["kernel"])
      out[f"convs.{l}.bias"] = np.asarray(encoder[f"conv{l + 1}"]["bias"])
      out[f"deconvs.{l}.weight"] = conv_transpose_weight(decoder[f"deconv{l + 1}"]["kernel"])
      out[f"deconvs.{l}.bias"] = np.asarray(decoder[f"deconv{l + 1}"]["bias"])
    top = self.shapes[-1]
    out["embedding.weight"] = hwc_rows_to_chw(encoder["embedding"]["kernel"], top)
    out["embedding.bias"] = np.asarray(encoder["embedding"]["bias"])
    out["dense.weight"] = hwc_columns_to_chw(decoder["dense"]["kernel"], top)
    out["dense.bias"] = hwc_vector_to_chw(decoder["dense"]["bias"], top)
    out["head.weight"] = dense_weight(tree["head"]["kernel"])
    out["head.bias"] = np.asarray(tree["head"]["bias"])
    return out


class DecTwin(Twin):
  """DEC's fully connected autoencoder ``d-500-500-2000-10`` (:class:`jaxclust.nn.MLPAutoencoder`),
  the Student-t layer's centroids and DEC's / IDEC's losses (:class:`jaxclust.algos.dec.Dec`).

  ReLU on the hidden layers, linear embedding and reconstruction; images are flattened
  channels-first. Only ``encoder="mlp"`` has a twin.
  """

  def __init__(self, config, image_shape: Sequence[int]):
    super().__init__()
    if config.encoder != "mlp":
      raise ValueError(f"no PyTorch twin of DEC's encoder={config.encoder!r}; only 'mlp'")
    self.config = config
    self.image_shape = tuple(image_shape)
    sizes = [math.prod(self.image_shape), *config.hidden_dims, config.embedding_dim]
    self.encoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
    self.decoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes[::-1]))
    self.centroids = nn.Parameter(torch.zeros(config.n_clusters, config.embedding_dim))
    self.activation = nn.ReLU()
    for layer in [*self.encoder_layers, *self.decoder_layers]:  # uniform in ±sqrt(1 / fan_in)
      bound = math.sqrt(1.0 / layer.in_features)
      nn.init.uniform_(layer.weight, -bound, bound)
      nn.init.zeros_(layer.bias)

  def encode(self, x: torch.Tensor) -> torch.Tensor:
    h = x.flatten(1)
    for layer in self.encoder_layers[:-1]:
      h = self.activation(layer(h))
    return self.encoder_layers[-1](h)

  def decode(self, z: torch.Tensor) -> torch.Tensor:
    h = z
    for layer in self.decoder_layers[:-1]:
      h = self.activation(layer(h))
    height, width, channels = self.image_shape
    return self.decoder_layers[-1](h).view(z.shape[0], channels, height, width)

  def warmup_loss(self, x, weights, dropout_masks=None):
    rec = reconstruction_error(x, self.decode(self.encode(x)), weights)
    return rec, {"reconstruction": rec}

  def m_step_loss(self, x, weights, targets, dropout_masks=None):
    """``gamma * KL(P || Q)`` (DEC eq. 2), plus the reconstruction error for IDEC."""
    cfg = self.config
    z = self.encode(x)
    kl = kl_divergence(targets, student_t_assign(z, self.centroids, cfg.alpha), weights)
    if cfg.reconstruction_weight <= 0:
      return cfg.clustering_weight * kl, {"clustering": kl}
    rec = reconstruction_error(x, self.decode(z), weights)
    return cfg.clustering_weight * kl + cfg.reconstruction_weight * rec, {"clustering": kl, "reconstruction": rec}

  def predict(self, x):
    return student_t_assign(self.encode(x), self.centroids, self.config.alpha)

  def e_step(self, soft_assignments):
    return dec_target(soft_assignments)

  def torch_layout(self, tree) -> dict[str, np.ndarray]:
    ae = tree["ae"]
    n_enc = len(self.encoder_layers)
    out = {"centroids": np.asarray(tree["centroids"])}
    for name, layers in (("encoder_layers", self.encoder_layers), ("decoder_layers", self.decoder_layers)):
      for l in range(len(layers)):
        params = ae[f"{name}_{l}"]
        out[f"{name}.{l}.weight"] = dense_weight(params["kernel"])
        out[f"{name}.{l}.bias"] = np.asarray(params["bias"])
    # The first layer reads, and the last one writes, the image flattened NCHW instead of NHWC.
    out["encoder_layers.0.weight"] = hwc_rows_to_chw(ae["encoder_layers_0"]["kernel"], self.image_shape)
    last = f"decoder_layers_{n_enc - 1}"
    out[f"decoder_layers.{n_enc - 1}.weight"] = hwc_columns_to_chw(ae[last]["kernel"], self.image_shape)
    out[f"decoder_layers.{n_enc - 1}.bias"] = hwc_vector_to_chw(ae[last]["bias"], self.image_shape)
    return out


TWINS: dict[str, type[Twin]] = {
    "dec": DecTwin,
    "depict": DepictTwin,
    "idec": DecTwin,
}
