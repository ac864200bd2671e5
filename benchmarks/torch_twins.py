"""PyTorch twins of jaxclust's networks and losses, for JAX-against-PyTorch benchmarks.

A twin is the model and objective of one jaxclust algorithm written as a PyTorch user would
write them: ``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.Linear``, ``nn.BatchNorm2d``,
``nn.LeakyReLU``, ``nn.Dropout``, images channels-first (``[N, C, H, W]``), trained with
``torch.optim``. It has the same architecture, padding and activations as the Flax model its
algorithm builds from the same config, and takes that model's parameters:
``twin.load_flax(params)``.

Every twin is a ``torch.nn.Module`` (:class:`Twin`) with

  ``warmup_loss(x, weights, draws=None) -> (loss, terms)``
  ``m_step_loss(x, weights, targets, draws=None) -> (loss, terms)``
  ``predict(x) -> soft assignments [N, K]`` (clean pathway; or a dict with them under
  ``"soft"`` beside what ``e_step`` needs, as jaxclust's ``predict``) and
  ``e_step(predicted) -> targets``
  ``torch_layout(tree) -> {parameter name: array}``: a pytree shaped like the Flax
  parameters (the parameters, or their gradients) in the twin's layout
  ``buffer_layout(params) -> {buffer name: array}``: the twin's buffers (batch-norm running
  averages, a spectral head's state) from the Flax parameters' model state
  ``load_flax(params)``: copies Flax parameters into the twin
  ``use_dataset(x)``: the whole dataset, for losses that read other rows (ICS's negatives,
  SpectralNet's orthogonalization batch)

``x`` is ``[N, C, H, W]`` (:func:`to_nchw` turns jaxclust's ``[N, H, W, C]`` into it),
``weights`` ``[N]`` per-sample weights (0 for padding rows), ``targets`` the rows of what
``e_step`` returns (``[N, K]``, or ICS's dict); the terms carry the names jaxclust's losses
give them. A twin draws its step's randomness itself unless ``draws`` fixes it, as the parity
tests do with what JAX drew: DEPICT's dropout keep masks (one per dropout site, each shaped
like the activation it drops, NCHW), ICS's augmented positives, SpectralNet's
orthogonalization rows, DSCDAN's noise, shuffle and orthogonalization rows.

``TWINS`` maps ``--algo`` names to twin classes, built as ``TWINS[name](config, image_shape)``
from the algorithm's config and its (``[H, W, C]``) image shape, like the algorithms
themselves: ``depict`` (paper 000, eq. 12), ``dec`` / ``idec`` (the MLP autoencoder and the
Student-t KL objective), ``ics`` (paper 003, eq. 7), ``spectralnet`` (SpectralNet's
Algorithm 1) and ``dscdan`` (paper 002, eq. 13 and 20).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from jaxclust.algos import dscdan, ics
from jaxclust.engine import MODEL_STATE
from jaxclust.nn import ConvSpec, encoder_shapes, pooled_sizes


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


def entropy_constraint(q: torch.Tensor, weights: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
  """``H(mean_i q_i) - mean_i H(q_i)``, to maximise (paper 003 eq. 6)."""
  total = weights.sum()
  mean_q = (q * weights[:, None]).sum(dim=0) / torch.where(total > 0, total, 1.0)
  mean_q = torch.where(total > 0, mean_q, 0.0)
  entropy = lambda p: -(p * torch.log(p + eps)).sum(dim=-1)
  return entropy(mean_q) - weighted_mean(entropy(q), weights)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float,
                 weights: torch.Tensor, squared: bool = True) -> torch.Tensor:
  """``mean_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin)`` (paper 003 eq. 5, FaceNet)."""

  def distance(other):
    sq_dist = (anchor - other).square().sum(dim=-1)
    if squared:
      return sq_dist
    positive_part = sq_dist > 0
    return torch.where(positive_part, torch.sqrt(torch.where(positive_part, sq_dist, 1.0)), 0.0)

  return weighted_mean(F.relu(distance(positive) - distance(negative) + margin), weights)


def sum_squared_error(target: torch.Tensor, reconstruction: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
  """``mean_i ||t_i - r_i||_F^2`` (paper 002 eq. 11-12)."""
  return weighted_mean((target - reconstruction).square().flatten(1).sum(dim=1), weights)


def jsd_mutual_information(positive_scores: torch.Tensor, negative_scores: torch.Tensor,
                           weights: torch.Tensor) -> torch.Tensor:
  """``E_P[-softplus(-T)] - E_{PxQ}[softplus(T)]``, per-position scores averaged per sample
  first (paper 002 eq. 8-10)."""
  positive = -F.softplus(-positive_scores).reshape(positive_scores.shape[0], -1).mean(dim=1)
  negative = F.softplus(negative_scores).reshape(negative_scores.shape[0], -1).mean(dim=1)
  return weighted_mean(positive, weights) - weighted_mean(negative, weights)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
  """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` summed over dimensions, averaged over samples."""
  return weighted_mean(0.5 * (torch.exp(logvar) + mu.square() - 1.0 - logvar).sum(dim=-1), weights)


def mixture_kl(mu: torch.Tensor, logvar: torch.Tensor, probabilities: torch.Tensor, means: torch.Tensor,
               weights: torch.Tensor) -> torch.Tensor:
  """Paper 002 eq. 19: ``sum_k p_k KL(N(mu, diag(exp(logvar))) || N(means_k, I)) + KL(p || uniform)``."""
  variance_part = 0.5 * (torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)
  sq_dist = (mu[:, None, :] - means[None, :, :]).square().sum(dim=-1)
  gaussian = (probabilities * (variance_part[:, None] + 0.5 * sq_dist)).sum(dim=-1)
  categorical = (probabilities * torch.log(torch.clamp(probabilities, min=1e-12))).sum(dim=-1)
  return weighted_mean(gaussian + categorical + math.log(probabilities.shape[-1]), weights)


# ----------------------------------------------------------------------------- twins


class Twin(nn.Module):
  """What every twin provides (see the module docstring)."""

  dataset: torch.Tensor | None = None

  def torch_layout(self, tree) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def buffer_layout(self, params) -> dict[str, np.ndarray]:
    """The twin's buffers (batch-norm running averages, a spectral head's state) from the
    non-trainable part of the Flax parameters; none by default."""
    del params
    return {}

  def load_flax(self, params) -> None:
    """Copies Flax parameters (a pytree as the algorithm's ``init`` returns) into the twin."""
    own = self.state_dict()
    values = {**self.torch_layout(params), **self.buffer_layout(params)}
    state = {name: torch.from_numpy(np.array(value)).to(own[name].dtype) for name, value in values.items()}
    self.load_state_dict(state, strict=True)

  def use_dataset(self, x: torch.Tensor) -> None:
    """The whole dataset ``[N, C, H, W]``, for losses that read other samples than the batch's
    (ICS's negatives, SpectralNet's orthogonalization batch), as jaxclust's ``batch["dataset"]``."""
    self.dataset = x

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


class MLPAutoencoderParts:
  """DEC's fully connected autoencoder ``d-500-500-2000-10`` (:class:`jaxclust.nn.MLPAutoencoder`)
  in a twin: ``Linear`` layers, ReLU on the hidden ones, linear embedding and reconstruction;
  images are flattened channels-first. Uniform weights in ``±sqrt(1 / fan_in)``, zero biases."""

  def build_autoencoder(self, image_shape: Sequence[int], hidden: Sequence[int], embedding_dim: int) -> None:
    self.image_shape = tuple(image_shape)
    sizes = [math.prod(self.image_shape), *hidden, embedding_dim]
    self.encoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
    self.decoder_layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes[::-1]))
    self.activation = nn.ReLU()
    for layer in [*self.encoder_layers, *self.decoder_layers]:
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

  def autoencoder_layout(self, ae) -> dict[str, np.ndarray]:
    """The twin's names for the Flax autoencoder's parameters ``ae``."""
    n_enc = len(self.encoder_layers)
    out = {}
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


class DecTwin(MLPAutoencoderParts, Twin):
  """DEC's fully connected autoencoder (:class:`MLPAutoencoderParts`), the Student-t layer's
  centroids and DEC's / IDEC's losses (:class:`jaxclust.algos.dec.Dec`). Only
  ``encoder="mlp"`` has a twin.
  """

  def __init__(self, config, image_shape: Sequence[int]):
    super().__init__()
    if config.encoder != "mlp":
      raise ValueError(f"no PyTorch twin of DEC's encoder={config.encoder!r}; only 'mlp'")
    self.config = config
    self.build_autoencoder(image_shape, config.hidden_dims, config.embedding_dim)
    self.centroids = nn.Parameter(torch.zeros(config.n_clusters, config.embedding_dim))

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
    return {"centroids": np.asarray(tree["centroids"]), **self.autoencoder_layout(tree["ae"])}


# ----------------------------------------------------------------------------- ICS (paper 003)


def padding_mask(weights: torch.Tensor) -> torch.Tensor | None:
  """``weights > 0``, or None when every row is real (the usual batch: no boolean indexing)."""
  real = weights > 0
  return None if bool(real.all()) else real


def batch_norm(norm: nn.Module, h: torch.Tensor, train: bool, mask: torch.Tensor | None = None) -> torch.Tensor:
  """``norm`` (an ``nn.BatchNorm1d`` / ``2d``) as ``jaxclust.nn.BatchNorm`` (Flax's layer) runs.

  ``train``: normalised by the batch's statistics, the running averages updated; with a
  ``mask`` ``[B]`` the statistics are those of its rows (padding rows left out of them, as
  Flax's ``mask`` leaves them, and normalised by them too). Otherwise by the running
  averages, whatever the module's ``train()`` / ``eval()`` mode.
  """
  if not train:
    return F.batch_norm(h, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
  if mask is None:
    return F.batch_norm(h, norm.running_mean, norm.running_var, norm.weight, norm.bias, True, norm.momentum,
                        norm.eps)
  rows = h[mask]
  dims = [0, *range(2, h.ndim)]
  mean, var = rows.mean(dim=dims), rows.var(dim=dims, unbiased=False)
  with torch.no_grad():  # as F.batch_norm updates them: the unbiased variance
    n = rows.numel() // rows.shape[1]
    norm.running_mean.lerp_(mean, norm.momentum)
    norm.running_var.lerp_(var * n / max(n - 1, 1), norm.momentum)
  shape = (1, -1, *[1] * (h.ndim - 2))
  scale = torch.rsqrt(var + norm.eps) * norm.weight
  return (h - mean.view(shape)) * scale.view(shape) + norm.bias.view(shape)


def affine(images: torch.Tensor, matrices: torch.Tensor, fill: float = -1.0) -> torch.Tensor:
  """:func:`jaxclust.augment.affine` with ``F.grid_sample``: output pixel ``(row, col)`` reads
  ``images`` ``[B, C, H, W]`` at ``matrices[b] @ (row, col, 1)`` (``[B, 2, 3]``, pixel
  coordinates), bilinearly; neighbours outside the image count as ``fill``."""
  _, _, height, width = images.shape
  rows, cols = torch.meshgrid(torch.arange(height, dtype=images.dtype, device=images.device),
                              torch.arange(width, dtype=images.dtype, device=images.device), indexing="ij")
  pixels = torch.stack([rows, cols, torch.ones_like(rows)], dim=-1)  # [H, W, 3]
  source = torch.einsum("bij,hwj->bhwi", matrices.to(images.dtype), pixels)  # (row, col) per output pixel
  grid = torch.stack([2.0 * source[..., 1] / max(width - 1, 1) - 1.0,
                      2.0 * source[..., 0] / max(height - 1, 1) - 1.0], dim=-1)
  shifted = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
  return shifted + fill


def augmentation_matrices(angles: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, height: int,
                          width: int) -> torch.Tensor:
  """``[B, 2, 3]`` sampling matrices of a rotation by ``angles`` (degrees), then a zoom by
  ``scales``, then a shift by ``offsets`` ``[B, 2]``, as :func:`jaxclust.augment.augment`
  composes them."""
  b = angles.shape[0]
  centre = torch.tensor([(height - 1) / 2.0, (width - 1) / 2.0], dtype=angles.dtype, device=angles.device)
  radians = torch.deg2rad(angles)
  cos, sin = torch.cos(radians), torch.sin(radians)
  eye = torch.eye(3, dtype=angles.dtype, device=angles.device).repeat(b, 1, 1)
  rotation, zoom, shift = eye.clone(), eye.clone(), eye.clone()
  rotation[:, :2, :2] = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
  rotation[:, :2, 2] = centre - (rotation[:, :2, :2] @ centre)
  inverse = 1.0 / scales
  zoom[:, 0, 0], zoom[:, 1, 1] = inverse, inverse
  zoom[:, :2, 2] = centre * (1.0 - inverse[:, None])
  shift[:, :2, 2] = -offsets
  return (rotation @ zoom @ shift)[:, :2]


class IcsTwin(Twin):
  """ICS's convolutional autoencoder (:class:`jaxclust.nn.IcsAutoencoder`), DEC's Student-t
  layer on its embedding, and eq. 7 (:class:`jaxclust.algos.ics.Ics`).

  Encoder, per level: ``Conv2d`` 3x3 (padding 1), ``BatchNorm2d``, ReLU and
  ``MaxPool2d(2, ceil_mode=True)`` (Flax's "SAME" pool pads an odd map at its end, which is
  what ``ceil_mode`` reads); then ``Linear`` to the embedding. Decoder: ``Linear``,
  ``BatchNorm1d`` over the flattened top map's features and ReLU, then per level a
  ``ConvTranspose2d`` 3x3 of stride 2 cropping 1 (output padding where the pool rounded up),
  ``BatchNorm2d`` and ReLU on all but the last, which is linear.

  Batch norm (:func:`batch_norm`): momentum ``1 - 0.99`` (PyTorch's convention for Flax's
  0.99), eps 1e-5; training steps normalise by the batch's statistics (the three encoder
  inputs of the M-step together), ``predict`` by the running averages. One difference in the
  running averages only: PyTorch's running variance averages the unbiased batch variance,
  Flax's the biased one.

  Randomness: the M-step's positives are augmented copies of the batch (rotation, zoom,
  shift and flip as :func:`jaxclust.augment.augment` draws them, resampled by :func:`affine`;
  erasing has no twin) unless ``positives`` gives them. Targets: ``{"q": [B, K], "negative":
  [B] int64}``, the negatives read from the dataset given to :meth:`Twin.use_dataset`.
  ``predict`` and ``e_step`` are jaxclust's: the soft assignments with the embedding and
  Algorithm 1's radius (from augmented copies), then DEC's targets and new negatives.
  """

  def __init__(self, config, image_shape: Sequence[int]):
    super().__init__()
    self.config = config
    self.image_shape = tuple(image_shape)
    model = ics.conv_autoencoder(self.image_shape, config.conv_variant, features=config.conv_features,
                                 embedding_dim=config.embedding_dim)
    features, embedding_dim = tuple(model.features), model.embedding_dim
    self.margin = ics.VARIANTS[config.conv_variant]["margin"] if config.margin is None else config.margin
    height, width, channels = self.image_shape
    self.sizes = pooled_sizes(height, width, len(features))
    levels = [channels, *features]
    norm = lambda cls, n: cls(n, eps=1e-5, momentum=1.0 - model.momentum)
    self.convs = nn.ModuleList(nn.Conv2d(levels[l], f, 3, padding=1) for l, f in enumerate(features))
    self.conv_norms = nn.ModuleList(norm(nn.BatchNorm2d, f) for f in features)
    self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
    self.activation = nn.ReLU()
    top_h, top_w = self.sizes[-1]
    self.top_shape = (top_h, top_w, features[-1])
    top = math.prod(self.top_shape)
    self.embedding = nn.Linear(top, embedding_dim)
    self.dense = nn.Linear(embedding_dim, top)
    self.dense_norm = norm(nn.BatchNorm1d, top)
    # deconvs[l] maps level l + 1 back to level l; level 0 is the image.
    self.deconvs = nn.ModuleList(
        nn.ConvTranspose2d(features[l], levels[l], 3, 2, 1,
                           output_padding=tuple(n - (2 * m - 1) for n, m in zip(self.sizes[l], self.sizes[l + 1])))
        for l in range(len(features)))
    self.deconv_norms = nn.ModuleList(norm(nn.BatchNorm2d, levels[l]) for l in range(1, len(features)))
    self.centroids = nn.Parameter(torch.zeros(config.n_clusters, embedding_dim))
    for module in self.modules():
      if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)

  def encode(self, x: torch.Tensor, train: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    h = x
    for conv, norm in zip(self.convs, self.conv_norms):
      h = self.pool(self.activation(batch_norm(norm, conv(h), train, mask)))
    return self.embedding(h.flatten(1))

  def decode(self, z: torch.Tensor, train: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    h = self.activation(batch_norm(self.dense_norm, self.dense(z), train, mask))
    top_h, top_w, top_c = self.top_shape
    h = h.view(z.shape[0], top_c, top_h, top_w)
    for level in reversed(range(len(self.deconvs))):
      h = self.deconvs[level](h)
      if level > 0:
        h = self.activation(batch_norm(self.deconv_norms[level - 1], h, train, mask))
    return h

  def augment(self, x: torch.Tensor) -> torch.Tensor:
    """Random positives, drawn as :func:`jaxclust.augment.augment` draws them."""
    cfg = self.config
    if cfg.erasing_probability > 0:
      raise ValueError("the ICS twin draws no random erasing; give the positives instead")
    b, _, height, width = x.shape
    draws = torch.rand(b, 4, device=x.device)
    between = lambda u, low, high: low + (high - low) * u
    matrices = augmentation_matrices(between(draws[:, 0], -cfg.max_degrees, cfg.max_degrees),
                                     between(draws[:, 1], *cfg.scale_range),
                                     between(draws[:, 2:], -cfg.max_shift, cfg.max_shift), height, width)
    out = affine(x, matrices)
    if cfg.flip_probability > 0:
      flipped = torch.rand(b, device=x.device) < cfg.flip_probability
      out = torch.where(flipped[:, None, None, None], out.flip(-1), out)
    return out

  def warmup_loss(self, x, weights, positives=None):
    """Eq. 1: the reconstruction error (batch statistics in batch norm)."""
    mask = padding_mask(weights)
    rec = reconstruction_error(x, self.decode(self.encode(x, True, mask), True, mask), weights)
    return rec, {"reconstruction": rec}

  def m_step_loss(self, x, weights, targets, positives=None):
    """Eq. 7: ``w_r L_rec + w_c KL(P || Q) + w_t L_triplet - w_e L_entropy``; anchors,
    positives and negatives through the encoder as one batch."""
    cfg = self.config
    b = x.shape[0]
    mask = padding_mask(weights)
    use_triplet = cfg.triplet_weight > 0
    inputs, input_mask = x, mask
    if use_triplet:
      positives = self.augment(x) if positives is None else positives
      inputs = torch.cat([x, positives, self.dataset[targets["negative"]]])
      input_mask = None if mask is None else mask.repeat(3)
    z_all = self.encode(inputs, True, input_mask)
    z = z_all[:b]
    q = student_t_assign(z, self.centroids, cfg.alpha)
    terms = {"clustering": kl_divergence(targets["q"], q, weights), "entropy": entropy_constraint(q, weights)}
    if cfg.reconstruction_weight > 0:
      terms["reconstruction"] = reconstruction_error(x, self.decode(z, True, mask), weights)
    if use_triplet:
      embeddings = z_all
      if cfg.triplet_normalize:
        embeddings = embeddings * torch.rsqrt(torch.clamp(embeddings.square().sum(-1, keepdim=True), min=1e-12))
      anchor, positive, negative = embeddings.chunk(3)
      terms["triplet"] = triplet_loss(anchor, positive, negative, self.margin, weights, cfg.triplet_squared)
    signs = {"reconstruction": 1.0, "clustering": 1.0, "triplet": 1.0, "entropy": -1.0}
    loss = sum((signs[name] * getattr(cfg, f"{name}_weight") * value for name, value in terms.items()
                if getattr(cfg, f"{name}_weight") > 0), x.new_zeros(()))
    return loss, terms

  def predict(self, x, copies=None):
    """``{"soft": q (eq. 2), "embedding": z, "radius": r}``, as :meth:`jaxclust.algos.ics.Ics.predict`:
    the clean embedding's Student-t assignments and Algorithm 1's radius, the largest distance
    from ``z`` to the embedding of one of ``negative_augmentations`` augmented copies (drawn
    by the twin unless ``copies`` ``[A * B, C, H, W]`` gives them, copy after copy). Without the
    triplet term no copies are embedded and the radius is 0."""
    cfg = self.config
    if cfg.triplet_weight == 0:
      z = self.encode(x)
      radius = torch.zeros_like(z[:, 0])
    else:
      b, n_copies = x.shape[0], cfg.negative_augmentations
      if copies is None:
        copies = self.augment(x.repeat(n_copies, 1, 1, 1))
      z_all = self.encode(torch.cat([x, copies]))
      z, z_copies = z_all[:b], z_all[b:].view(n_copies, b, -1)
      radius = torch.sqrt((z_copies - z[None]).square().sum(dim=-1).amax(dim=0))
    return {"soft": student_t_assign(z, self.centroids, cfg.alpha), "embedding": z, "radius": radius}

  def e_step(self, predicted, candidates=None):
    """``{"q": DEC's target (eq. 3), "negative": [N]}``, Algorithm 1's negatives as
    :func:`jaxclust.algos.ics.select_negatives` picks them: the first of each anchor's
    ``negative_candidates`` uniformly drawn rows (or ``candidates`` ``[N, C]``) farther than
    ``negative_radius_scale * r`` from it, else the farthest; zeros without the triplet term."""
    cfg = self.config
    z, radius = predicted["embedding"], predicted["radius"]
    n = z.shape[0]
    if cfg.triplet_weight == 0:
      return {"q": dec_target(predicted["soft"]), "negative": torch.zeros(n, dtype=torch.int64, device=z.device)}
    if candidates is None:
      candidates = torch.randint(0, n, (n, cfg.negative_candidates), device=z.device)
    sq_dist = (z[candidates] - z[:, None, :]).square().sum(dim=-1)
    outside = sq_dist > (cfg.negative_radius_scale * radius)[:, None].square()
    pick = torch.where(outside.any(dim=1), outside.to(torch.uint8).argmax(dim=1), sq_dist.argmax(dim=1))
    return {"q": dec_target(predicted["soft"]), "negative": candidates.gather(1, pick[:, None])[:, 0]}

  def _norms(self):
    """``(twin name, Flax name, layout)`` of every batch norm; layout maps a per-feature vector."""
    top = lambda v: hwc_vector_to_chw(v, self.top_shape)
    return ([(f"conv_norms.{l}", f"conv_norms_{l}", np.asarray) for l in range(len(self.conv_norms))]
            + [("dense_norm", "dense_norm", top)]
            + [(f"deconv_norms.{l}", f"deconv_norms_{l}", np.asarray) for l in range(len(self.deconv_norms))])

  def torch_layout(self, tree) -> dict[str, np.ndarray]:
    ae = tree["ae"]
    out = {"centroids": np.asarray(tree["centroids"])}
    for l in range(len(self.convs)):
      out[f"convs.{l}.weight"] = conv_weight(ae[f"convs_{l}"]["kernel"])
      out[f"convs.{l}.bias"] = np.asarray(ae[f"convs_{l}"]["bias"])
      out[f"deconvs.{l}.weight"] = conv_transpose_weight(ae[f"deconvs_{l}"]["kernel"])
      out[f"deconvs.{l}.bias"] = np.asarray(ae[f"deconvs_{l}"]["bias"])
    out["embedding.weight"] = hwc_rows_to_chw(ae["embedding"]["kernel"], self.top_shape)
    out["embedding.bias"] = np.asarray(ae["embedding"]["bias"])
    out["dense.weight"] = hwc_columns_to_chw(ae["dense"]["kernel"], self.top_shape)
    out["dense.bias"] = hwc_vector_to_chw(ae["dense"]["bias"], self.top_shape)
    for name, flax_name, layout in self._norms():
      out[f"{name}.weight"] = layout(ae[flax_name]["scale"])
      out[f"{name}.bias"] = layout(ae[flax_name]["bias"])
    return out

  def buffer_layout(self, params) -> dict[str, np.ndarray]:
    return self.batch_stats_layout(params[MODEL_STATE]["batch_stats"])

  def batch_stats_layout(self, batch_stats) -> dict[str, np.ndarray]:
    """Flax's running averages ``batch_stats`` as the twin's buffers."""
    out = {}
    for name, flax_name, layout in self._norms():
      out[f"{name}.running_mean"] = layout(batch_stats[flax_name]["mean"])
      out[f"{name}.running_var"] = layout(batch_stats[flax_name]["var"])
      out[f"{name}.num_batches_tracked"] = np.zeros(())
    return out


# ----------------------------------------------------------------------------- the spectral head
# SpectralNet's and DSCDAN's (jaxclust.spectral, jaxclust.algos.spectralnet).

OUTPUT_ACTIVATIONS = {"linear": None, "tanh": torch.tanh, "softmax": lambda y: torch.softmax(y, dim=-1)}


def orthonorm_weights(y: torch.Tensor, weights: torch.Tensor | None = None, jitter: float = 1e-6) -> torch.Tensor:
  """:func:`jaxclust.spectral.orthonorm_weights`: ``W = sqrt(m) (L^-1)^T`` with ``L L^T =
  Y^T diag(weights) Y + jitter * s I`` (``s`` the mean of its diagonal), so that
  ``(Y W)^T diag(weights) (Y W) / m = I``; from the QR factor of ``Y`` stacked on
  ``sqrt(jitter * s) I`` where Cholesky is ill-conditioned, the same test deciding."""
  k = y.shape[1]
  weights = torch.ones(y.shape[0], dtype=y.dtype, device=y.device) if weights is None else weights.to(y.dtype)
  info = torch.finfo(y.dtype)
  y_w = y * torch.sqrt(weights)[:, None]
  eye = torch.eye(k, dtype=y.dtype, device=y.device)
  gram = y_w.T @ y_w
  diag_mean = torch.trace(gram) / k
  floor = math.sqrt(info.tiny)
  jitter_abs = max(jitter, info.eps) * torch.clamp(diag_mean, min=floor) + floor
  check, failed = torch.linalg.cholesky_ex(gram.detach() + jitter_abs.detach() * eye)
  threshold = torch.maximum(2.0 * jitter_abs, math.sqrt(info.eps) * diag_mean).detach()
  if int(failed) == 0 and bool(torch.isfinite(check).all()) and bool(torch.diagonal(check).min() ** 2 > threshold):
    inv_lt = torch.linalg.solve_triangular(torch.linalg.cholesky(gram + jitter_abs * eye), eye, upper=False).T
  else:
    r = torch.linalg.qr(torch.cat([y_w, torch.sqrt(jitter_abs) * eye]), mode="reduced").R
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(y.dtype)
    inv_lt = torch.linalg.solve_triangular(r, eye, upper=True) * signs[None, :]
  return torch.sqrt(weights.sum()) * inv_lt


def knn_affinity(x: torch.Tensor, n_neighbors: int, scale: float | None = None, scale_neighbor: int | None = None,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
  """:func:`jaxclust.spectral.knn_affinity`: ``W = (A + A^T) / 2`` with ``A_ij = exp(-||x_i -
  x_j||^2 / (2 sigma^2))`` for the ``n_neighbors`` nearest ``j != i`` (rows of weight 0 are
  nobody's neighbours and have no edges); ``sigma`` is ``scale``, or the median distance to
  the ``scale_neighbor``-th neighbour (NumPy's median, the mean of the middle two)."""
  b, k = x.shape[0], n_neighbors
  s = (k if scale_neighbor is None else scale_neighbor) if scale is None else 0
  valid = torch.ones(b, dtype=torch.bool, device=x.device) if weights is None else weights > 0
  sq_norms = x.square().sum(dim=1)
  sq = torch.clamp(sq_norms[:, None] + sq_norms[None, :] - 2.0 * x @ x.T, min=0.0)
  excluded = torch.eye(b, dtype=torch.bool, device=x.device) | ~valid[None, :]
  nbr_sq, index = torch.topk(sq.masked_fill(excluded, math.inf), max(k, s), dim=1, largest=False)
  if scale is None:
    farthest = nbr_sq[:, s - 1]
    keep = torch.isfinite(farthest) & valid
    sigma = torch.nanquantile(torch.where(keep, torch.sqrt(torch.where(keep, farthest, 0.0)), math.nan), 0.5)
  else:
    sigma = torch.tensor(scale, dtype=x.dtype, device=x.device)
  sigma_sq = torch.clamp(sigma.square(), min=torch.finfo(x.dtype).tiny)
  nbr_sq = nbr_sq[:, :k]
  finite = torch.isfinite(nbr_sq)
  values = torch.where(finite & valid[:, None], torch.exp(-torch.where(finite, nbr_sq, 0.0) / (2.0 * sigma_sq)), 0.0)
  a = torch.zeros(b, b, dtype=x.dtype, device=x.device).scatter(1, index[:, :k], values)
  return (a + a.T) / 2.0


def batch_spectral_loss(y: torch.Tensor, affinity: torch.Tensor, weights: torch.Tensor, batch_size: int) -> torch.Tensor:
  """:func:`jaxclust.algos.spectralnet.batch_spectral_loss`: ``1/B^2 sum_ij w_i w_j W_ij
  ||y_i - y_j||^2`` over the configured batch size ``B`` (eq. 3 / paper 002 eq. 16)."""
  m = weights.sum()
  sq = (y[:, None, :] - y[None, :, :]).square().sum(dim=-1)
  total = (affinity * sq * (weights[:, None] * weights[None, :])).sum()
  loss = torch.where(m > 0, total / torch.where(m > 0, m, 1.0) ** 2, 0.0)
  return loss * (m / batch_size) ** 2


class SpectralNetwork(nn.Module):
  """:class:`jaxclust.nn.SpectralMLP`: ``Linear`` layers with ReLU, then a ``Linear`` layer of
  ``K`` units (linear: the caller applies the output activation). Xavier-uniform weights."""

  def __init__(self, in_features: int, hidden: Sequence[int], n_clusters: int):
    super().__init__()
    sizes = [in_features, *hidden]
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
    self.output = nn.Linear(sizes[-1], n_clusters)
    self.activation = nn.ReLU()
    for layer in [*self.hidden, self.output]:
      nn.init.xavier_uniform_(layer.weight)
      nn.init.zeros_(layer.bias)

  def forward(self, z: torch.Tensor) -> torch.Tensor:
    h = z.flatten(1)
    for layer in self.hidden:
      h = self.activation(layer(h))
    return self.output(h)

  @staticmethod
  def layout(tree, prefix: str) -> dict[str, np.ndarray]:
    """The twin's names (under ``prefix``) for the Flax network's parameters ``tree``."""
    names = {f"hidden.{l}": f"hidden{l + 1}" for l in range(len(tree) - 1)} | {"output": "output"}
    out = {}
    for name, flax_name in names.items():
      out[f"{prefix}.{name}.weight"] = dense_weight(tree[flax_name]["kernel"])
      out[f"{prefix}.{name}.bias"] = np.asarray(tree[flax_name]["bias"])
    return out


class SpectralHead:
  """The spectral head's state as buffers (:func:`jaxclust.algos.spectralnet.spectral_state`:
  the orthonorm weights, the k-means centroids of the outputs and of the codes, whether the
  outputs were clustered) and the steps that use it, for a twin with ``self.spectral`` (a
  :class:`SpectralNetwork`) and ``self.config``."""

  def register_spectral_state(self, n_clusters: int, code_dim: int) -> None:
    self.register_buffer("orthonorm", torch.eye(n_clusters))
    self.register_buffer("output_centroids", torch.zeros(n_clusters, n_clusters))
    self.register_buffer("code_centroids", torch.zeros(n_clusters, code_dim))
    self.register_buffer("clustered", torch.zeros(()))

  def spectral_state_layout(self, state) -> dict[str, np.ndarray]:
    return {"orthonorm": state["orthonorm"], "output_centroids": state["centroids"],
            "code_centroids": state["code_centroids"], "clustered": state["clustered"]}

  def orthogonalization_rows(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, weights)``: ``batch_size`` distinct rows of the dataset, uniformly; where the
    dataset is smaller, all of its rows and padding (weight 0)."""
    n = self.dataset.shape[0]
    index = torch.randperm(n, device=self.dataset.device)[:batch_size]
    weights = torch.ones(batch_size, dtype=self.dataset.dtype, device=self.dataset.device)
    if n < batch_size:
      index = torch.cat([index, index.new_zeros(batch_size - n)])
      weights[n:] = 0.0
    return index, weights

  def spectral_step(self, y_tilde, codes, weights, y_tilde_orth=None, weights_orth=None) -> torch.Tensor:
    """The spectral loss of one step: the orthonorm weights from the orthogonalization batch's
    ``Y~`` (or the step's own), held fixed unless ``orthonorm_gradient``, stored as the
    state; the codes' kNN affinity, a fixed graph."""
    cfg = self.config
    if y_tilde_orth is None:
      y_tilde_orth, weights_orth = y_tilde, weights
    orthonorm = orthonorm_weights(y_tilde_orth, weights_orth, cfg.orthonorm_jitter)
    if not cfg.orthonorm_gradient:
      orthonorm = orthonorm.detach()
    with torch.no_grad():
      self.orthonorm.copy_(orthonorm)
      affinity = knn_affinity(codes, cfg.n_neighbors, cfg.affinity_scale,
                              None if cfg.affinity_scale is not None else cfg.scale_neighbor, weights)
    return batch_spectral_loss(y_tilde @ orthonorm, affinity, weights, cfg.batch_size)

  def spectral_soft_assignments(self, codes, y_tilde=None, outputs=None) -> torch.Tensor:
    """Student-t of ``Y~ W`` around the outputs' centroids (or ``outputs``), or, before the
    outputs were clustered, of the codes around theirs."""
    if outputs is None:
      outputs = student_t_assign(y_tilde @ self.orthonorm, self.output_centroids)
    return torch.where(self.clustered > 0, outputs, student_t_assign(codes, self.code_centroids))


class SpectralNetTwin(MLPAutoencoderParts, SpectralHead, Twin):
  """SpectralNet (:class:`jaxclust.algos.spectralnet.SpectralNet`): DEC's autoencoder
  (:class:`MLPAutoencoderParts`) whose frozen codes a :class:`SpectralNetwork` (tanh on its
  last layer by default) maps to ``Y~``; the orthonorm layer's weights and the k-means
  centroids are buffers (:class:`SpectralHead`).

  Warm-up: the autoencoder's reconstruction error. M-step (Algorithm 1): the orthonorm weights
  from an orthogonalization batch of the dataset (:meth:`Twin.use_dataset`), drawn by the
  twin unless ``orthogonalization`` gives its ``(index, weights)``, or from the step's own
  batch; the spectral loss of the batch's outputs under them, on the codes' kNN affinity.
  Targets are not read. ``predict`` / ``e_step`` as jaxclust's (the outputs' Student-t; the
  identity).
  """

  def __init__(self, config, image_shape: Sequence[int]):
    super().__init__()
    self.config = config
    self.build_autoencoder(image_shape, config.hidden_dims, config.embedding_dim)
    self.spectral = SpectralNetwork(config.embedding_dim, config.spectral_hidden, config.n_clusters)
    self.output_activation = OUTPUT_ACTIVATIONS[config.output_activation]
    self.register_spectral_state(config.n_clusters, config.embedding_dim)

  def _y_tilde(self, codes):
    y = self.spectral(codes)
    return y if self.output_activation is None else self.output_activation(y)

  def warmup_loss(self, x, weights, orthogonalization=None):
    rec = reconstruction_error(x, self.decode(self.encode(x)), weights)
    return rec, {"reconstruction": rec}

  def m_step_loss(self, x, weights, targets, orthogonalization=None):
    codes = self.encode(x).detach()
    y_tilde_orth = weights_orth = None
    if self.config.orthonorm_batch == "separate":
      index, weights_orth = (self.orthogonalization_rows(x.shape[0]) if orthogonalization is None
                             else orthogonalization)
      y_tilde_orth = self._y_tilde(self.encode(self.dataset[index]).detach())
    loss = self.spectral_step(self._y_tilde(codes), codes, weights, y_tilde_orth, weights_orth)
    return loss, {"spectral": loss}

  def predict(self, x):
    codes = self.encode(x)
    return self.spectral_soft_assignments(codes, self._y_tilde(codes))

  def e_step(self, soft_assignments):
    return soft_assignments

  def torch_layout(self, tree) -> dict[str, np.ndarray]:
    return {**self.autoencoder_layout(tree["ae"]), **SpectralNetwork.layout(tree["spectral"], "spectral")}

  def buffer_layout(self, params) -> dict[str, np.ndarray]:
    return self.spectral_state_layout(params[MODEL_STATE])


# ----------------------------------------------------------------------------- DSCDAN (paper 002)


def flax_conv_transpose_weight(kernel: np.ndarray) -> np.ndarray:
  """A Flax ``nn.ConvTranspose`` kernel ``[kh, kw, in, out]`` as ``nn.ConvTranspose2d``'s
  ``[in, out, kh, kw]``: Flax convolves the dilated input with the kernel as it is,
  ``ConvTranspose2d`` with its weight flipped, so the kernel is flipped here."""
  return np.transpose(np.asarray(kernel)[::-1, ::-1], (2, 3, 0, 1))


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
  """``(before, after)`` zero padding of a "SAME" convolution (XLA's and Keras's: the odd
  pixel after)."""
  total = max((-(-size // stride) - 1) * stride + kernel_size - size, 0)
  return total // 2, total - total // 2


class GlobalDiscriminatorTwin(nn.Module):
  """:class:`jaxclust.nn.GlobalDiscriminator`: the flattened features and the code,
  concatenated, through ``Linear`` + ReLU layers and a linear score ``[B]``."""

  def __init__(self, feature_dim: int, code_dim: int, hidden: Sequence[int]):
    super().__init__()
    sizes = [feature_dim + code_dim, *hidden]
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
    self.score = nn.Linear(sizes[-1], 1)
    self.activation = nn.ReLU()

  def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    h = torch.cat([features.flatten(1), z.flatten(1)], dim=-1)
    for layer in self.hidden:
      h = self.activation(layer(h))
    return self.score(h)[:, 0]

  def layout(self, tree, prefix: str, image_shape: Sequence[int] | None) -> dict[str, np.ndarray]:
    """``image_shape``: the features are images, whose rows of the first kernel read them NHWC."""
    out = {}
    for l in range(len(self.hidden)):
      out[f"{prefix}.hidden.{l}.weight"] = dense_weight(tree[f"hidden{l + 1}"]["kernel"])
      out[f"{prefix}.hidden.{l}.bias"] = np.asarray(tree[f"hidden{l + 1}"]["bias"])
    if image_shape is not None:
      kernel = np.asarray(tree["hidden1"]["kernel"])
      n_pixels = math.prod(image_shape)
      out[f"{prefix}.hidden.0.weight"] = np.concatenate(
          [hwc_rows_to_chw(kernel[:n_pixels], image_shape), dense_weight(kernel[n_pixels:])], axis=1)
    out[f"{prefix}.score.weight"] = dense_weight(tree["score"]["kernel"])
    out[f"{prefix}.score.bias"] = np.asarray(tree["score"]["bias"])
    return out


class LocalDiscriminatorTwin(nn.Module):
  """:class:`jaxclust.nn.LocalDiscriminator`: 1x1 ``Conv2d`` layers on the feature map, the
  first one's input joined by the code through a ``Linear`` (no bias) broadcast over the
  positions; ReLU; a linear 1x1 score per position, ``[B, H, W]``."""

  def __init__(self, channels: int, code_dim: int, hidden: Sequence[int]):
    super().__init__()
    self.features = nn.Conv2d(channels, hidden[0], 1)
    self.latent = nn.Linear(code_dim, hidden[0], bias=False)
    self.hidden = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in itertools.pairwise(hidden))
    self.score = nn.Conv2d(hidden[-1], 1, 1)
    self.activation = nn.ReLU()

  def forward(self, feature_map: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    h = self.activation(self.features(feature_map) + self.latent(z)[:, :, None, None])
    for layer in self.hidden:
      h = self.activation(layer(h))
    return self.score(h)[:, 0]

  def layout(self, tree, prefix: str) -> dict[str, np.ndarray]:
    conv = lambda kernel: dense_weight(kernel)[:, :, None, None]
    out = {f"{prefix}.features.weight": conv(tree["hidden1_features"]["kernel"]),
           f"{prefix}.features.bias": np.asarray(tree["hidden1_features"]["bias"]),
           f"{prefix}.latent.weight": dense_weight(tree["hidden1_latent"]["kernel"]),
           f"{prefix}.score.weight": conv(tree["score"]["kernel"]),
           f"{prefix}.score.bias": np.asarray(tree["score"]["bias"])}
    for l in range(len(self.hidden)):
      out[f"{prefix}.hidden.{l}.weight"] = conv(tree[f"hidden{l + 2}"]["kernel"])
      out[f"{prefix}.hidden.{l}.bias"] = np.asarray(tree[f"hidden{l + 2}"]["bias"])
    return out


class DscdanTwin(SpectralHead, Twin):
  """DSCDAN (:class:`jaxclust.algos.dscdan.Dscdan`): the dual autoencoder, its two
  discriminators, the spectral network and the prior's means, and eq. 13 / eq. 20.

  Encoder, per level: a 3x3 ``Conv2d`` of stride 2 after ``ZeroPad2d`` as "SAME" pads (the
  odd pixel after), a 3x3 ``Conv2d`` of stride 1 (padding 1), LeakyReLU after each; the first
  level's output is the local discriminator's feature map; ``Linear`` heads ``mu`` and
  ``logvar``. Decoder: a linear ``Linear`` to the top map, per level a 3x3
  ``ConvTranspose2d`` of stride 1 and one of stride 2 (LeakyReLU after each), cropped to the
  encoder's size at that level, then a 3x3 ``ConvTranspose2d`` to the image and tanh. Flax's
  "SAME" transposed convolutions pad the dilated input by ``(k - 1 - (k - s + 1) // 2, ...)``:
  stride 1 is ``padding=1``; stride 2 is ``padding=0`` with the last row and column of
  PyTorch's ``2n + 1`` dropped (the crop does it).

  Randomness: the noise ``eps`` of ``psi`` ``[B, latent]``, the in-batch permutation of the
  MI negatives ``[B]`` and, with ``orthonorm_batch="separate"``, the orthogonalization rows
  ``(index, weights)``: drawn by the twin (``torch.randn``, ``torch.randperm`` over the real
  rows, :meth:`SpectralHead.orthogonalization_rows`) unless ``draws`` gives them as
  ``{"noise", "permutation", "orthogonalization"}``. Targets are not read.
  """

  def __init__(self, config, image_shape: Sequence[int]):
    super().__init__()
    self.config = config
    self.image_shape = tuple(image_shape)
    height, width, channels = self.image_shape
    features, latent = tuple(config.conv_features), config.latent_dim
    self.sizes = pooled_sizes(height, width, len(features))
    levels = [channels, *features]
    self.pads = [(*same_padding(w, 3, 2), *same_padding(h, 3, 2)) for h, w in self.sizes[:-1]]
    self.downsample = nn.ModuleList(nn.Conv2d(levels[l], f, 3, 2) for l, f in enumerate(features))
    self.refine = nn.ModuleList(nn.Conv2d(f, f, 3, padding=1) for f in features)
    top_h, top_w = self.sizes[-1]
    self.top_shape = (top_h, top_w, features[-1])
    top = math.prod(self.top_shape)
    self.mean = nn.Linear(top, latent)
    self.logvar = nn.Linear(top, latent)
    self.dense = nn.Linear(latent, top)
    # up_refine[l], upsample[l] bring level l + 1 back to level l.
    self.up_refine = nn.ModuleList(nn.ConvTranspose2d(c, f, 3, 1, 1) for c, f in zip([*features[1:], features[-1]], features))
    self.upsample = nn.ModuleList(nn.ConvTranspose2d(f, f, 3, 2, 0) for f in features)
    self.output = nn.ConvTranspose2d(features[0], channels, 3, 1, 1)
    self.activation = nn.LeakyReLU(config.negative_slope)
    hidden = (latent,) * 3  # as Dscdan's discriminators
    pairs_code = config.global_mi_pairs == "code"
    self.global_discriminator = GlobalDiscriminatorTwin(latent if pairs_code else math.prod(self.image_shape),
                                                        latent, hidden)
    self.local_discriminator = LocalDiscriminatorTwin(features[0], latent, hidden)
    self.spectral = SpectralNetwork(latent, config.spectral_hidden, config.n_clusters)
    self.output_activation = OUTPUT_ACTIVATIONS[config.output_activation]
    self.prior_means = nn.Parameter(torch.zeros(config.n_clusters, latent))
    self.register_spectral_state(config.n_clusters, latent)
    for module in self.modules():
      if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
          nn.init.zeros_(module.bias)

  def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(mu, logvar, the first level's feature map)``."""
    h, feature_map = x, None
    for pad, down, refine in zip(self.pads, self.downsample, self.refine):
      h = self.activation(refine(self.activation(down(F.pad(h, pad)))))
      feature_map = h if feature_map is None else feature_map
    h = h.flatten(1)
    return self.mean(h), self.logvar(h), feature_map

  def decode(self, z: torch.Tensor) -> torch.Tensor:
    top_h, top_w, top_c = self.top_shape
    h = self.dense(z).view(z.shape[0], top_c, top_h, top_w)
    for level in reversed(range(len(self.upsample))):
      h = self.activation(self.upsample[level](self.activation(self.up_refine[level](h))))
      height, width = self.sizes[level]
      h = h[:, :, :height, :width]
    return torch.tanh(self.output(h))

  def _y_tilde(self, logits):
    return logits if self.output_activation is None else self.output_activation(logits)

  def _draw(self, draws, name, make):
    return make() if draws is None else draws[name]

  def _permutation(self, weights):
    """A permutation of the batch's real rows among themselves, padding rows in place."""
    real = torch.nonzero(weights > 0)[:, 0]
    permutation = torch.arange(weights.shape[0], device=weights.device)
    permutation[real] = real[torch.randperm(real.shape[0], device=weights.device)]
    return permutation

  def _objective(self, x, weights, draws, clustering: bool):
    """The terms of eq. 13 (``clustering=False``) or eq. 20; terms of weight 0 are left out."""
    cfg = self.config
    b = x.shape[0]
    mu, logvar, feature_map = self.encode(x)
    terms = {}
    if cfg.reconstruction_weight > 0 or cfg.relative_reconstruction_weight > 0:
      eps = self._draw(draws, "noise", lambda: torch.randn_like(mu))
      z_noisy = mu + torch.exp(0.5 * logvar) * eps if cfg.noise == "sample" else mu * (1.0 + cfg.noise_stddev * eps)
      if cfg.relative_reconstruction_weight > 0:
        reconstruction, reconstruction_noisy = self.decode(torch.cat([mu, z_noisy])).split(b)
        terms["relative_reconstruction"] = sum_squared_error(reconstruction, reconstruction_noisy, weights)
      else:
        reconstruction = self.decode(mu)
      if cfg.reconstruction_weight > 0:
        terms["reconstruction"] = sum_squared_error(x, reconstruction, weights)
    else:
      z_noisy = mu
    if cfg.global_mi_weight > 0 or cfg.local_mi_weight > 0:
      permutation = self._draw(draws, "permutation", lambda: self._permutation(weights))
      if cfg.global_mi_weight > 0:
        z_mi = z_noisy if cfg.global_mi_pairs == "code" else mu
        features = z_mi if cfg.global_mi_pairs == "code" else x
        terms["global_mi"] = jsd_mutual_information(self.global_discriminator(features, z_mi),
                                                    self.global_discriminator(features, z_mi[permutation]), weights)
      if cfg.local_mi_weight > 0:
        terms["local_mi"] = jsd_mutual_information(self.local_discriminator(feature_map, mu),
                                                   self.local_discriminator(feature_map, mu[permutation]), weights)
    logits = None
    if cfg.prior_weight > 0:
      if cfg.prior == "mixture" or (cfg.prior == "paper" and clustering):
        logits = self.spectral(mu)
        terms["prior"] = mixture_kl(mu, logvar, self._cluster_posterior(mu, logits, clustering), self.prior_means,
                                    weights)
      else:
        terms["prior"] = gaussian_kl(mu, logvar, weights)
    if clustering and cfg.spectral_weight > 0:
      y_tilde = self._y_tilde(self.spectral(mu) if logits is None else logits)
      y_tilde_orth = weights_orth = None
      if cfg.orthonorm_batch == "separate":
        index, weights_orth = self._draw(draws, "orthogonalization", lambda: self.orthogonalization_rows(b))
        y_tilde_orth = self._y_tilde(self.spectral(self.encode(self.dataset[index])[0]))
      terms["spectral"] = self.spectral_step(y_tilde, mu.detach(), weights, y_tilde_orth, weights_orth)
    signs = {"global_mi": -1.0, "local_mi": -1.0}
    loss = x.new_zeros(())
    for name, value in dscdan.term_weights(cfg, clustering).items():
      if name in terms:
        loss = loss + signs.get(name, 1.0) * value * terms[name]
    return loss, terms

  def warmup_loss(self, x, weights, draws=None):
    """Eq. 13: ``L_r + L_e``."""
    return self._objective(x, weights, draws, clustering=False)

  def m_step_loss(self, x, weights, targets, draws=None):
    """Eq. 20: ``L_r + L_e + L_c``, eq. 19's prior in ``L_e``."""
    return self._objective(x, weights, draws, clustering=True)

  def _soft_assignments(self, mu, logits):
    if self.config.assign == "argmax":
      return self.spectral_soft_assignments(mu, outputs=torch.softmax(logits, dim=-1))
    return self.spectral_soft_assignments(mu, self._y_tilde(logits))

  def _cluster_posterior(self, mu, logits, clustering: bool):
    """Eq. 19's ``p(y|z)``: the softmax of the logits, or in the joint phase with
    ``cluster_posterior="spectral"`` the model's soft assignments, detached."""
    if not clustering or self.config.cluster_posterior == "softmax":
      return torch.softmax(logits, dim=-1)
    return self._soft_assignments(mu, logits).detach()

  def predict(self, x):
    mu = self.encode(x)[0]
    return self._soft_assignments(mu, self.spectral(mu))

  def e_step(self, soft_assignments):
    return soft_assignments

  def torch_layout(self, tree) -> dict[str, np.ndarray]:
    ae = tree["ae"]
    out = {"prior_means": np.asarray(tree["prior_means"])}
    for l in range(len(self.downsample)):
      for name, flax_name, weight in (("downsample", "downsample", conv_weight), ("refine", "refine", conv_weight),
                                      ("up_refine", "up_refine", flax_conv_transpose_weight),
                                      ("upsample", "upsample", flax_conv_transpose_weight)):
        out[f"{name}.{l}.weight"] = weight(ae[f"{flax_name}_{l}"]["kernel"])
        out[f"{name}.{l}.bias"] = np.asarray(ae[f"{flax_name}_{l}"]["bias"])
    out["output.weight"] = flax_conv_transpose_weight(ae["output"]["kernel"])
    out["output.bias"] = np.asarray(ae["output"]["bias"])
    for name in ("mean", "logvar"):
      out[f"{name}.weight"] = hwc_rows_to_chw(ae[name]["kernel"], self.top_shape)
      out[f"{name}.bias"] = np.asarray(ae[name]["bias"])
    out["dense.weight"] = hwc_columns_to_chw(ae["dense"]["kernel"], self.top_shape)
    out["dense.bias"] = hwc_vector_to_chw(ae["dense"]["bias"], self.top_shape)
    image = None if self.config.global_mi_pairs == "code" else self.image_shape
    out.update(self.global_discriminator.layout(tree["global_discriminator"], "global_discriminator", image))
    out.update(self.local_discriminator.layout(tree["local_discriminator"], "local_discriminator"))
    out.update(SpectralNetwork.layout(tree["spectral"], "spectral"))
    return out

  def buffer_layout(self, params) -> dict[str, np.ndarray]:
    return self.spectral_state_layout(params[MODEL_STATE])


TWINS: dict[str, type[Twin]] = {
    "dec": DecTwin,
    "depict": DepictTwin,
    "dscdan": DscdanTwin,
    "ics": IcsTwin,
    "idec": DecTwin,
    "spectralnet": SpectralNetTwin,
}
