"""DEC: deep embedded clustering (Xie, Girshick and Farhadi, ICML 2016).

An autoencoder's encoder with a Student-t clustering layer on the embedding:

1. Pretrain the autoencoder on the reconstruction error (the engine's warm-up).
2. Initialise the centroids ``mu`` by k-means on the embedding.
3. Rounds: E-step over the whole dataset, ``q`` by the Student-t kernel (DEC eq. 1) and the
   target ``p_ij ∝ q_ij^2 / f_j`` (eq. 3); then ``steps_per_round`` minibatch steps (DEC's
   "update interval") on ``KL(P || Q)`` (eq. 2), moving the encoder and the centroids.
   Stop when fewer than ``tol`` (0.1%) of the assignments changed since the last E-step.

IDEC (Guo et al., IJCAI 2017; :mod:`jaxclust.algos.idec`) is the same model with the
decoder kept: its loss is ``reconstruction + gamma * KL(P || Q)``, ``gamma = 0.1``.

Sources for what the paper leaves open:
- Network: d-500-500-2000-10, ReLU, linear embedding and output (DEC section 4.3).
- Pretraining: the paper pretrains greedily layer by layer with dropout, then fine-tunes
  (50k + 100k SGD iterations); we pretrain end to end with Adam (lr 1e-3, batch 256) as the
  IDEC paper and the authors' Keras code (XifengGuo/DEC-keras, IDEC) do, for
  ``warmup_epochs`` epochs (200 as in IDEC; DEC-keras uses 300 with SGD).
- Initial weights uniform in ``±sqrt(1/fan_in)`` (DEC-keras for MNIST).
- Clustering: SGD, lr 0.01, momentum 0.9, batch 256, update interval 140 for MNIST-sized
  data and 30 for small data, tol 0.001, k-means with 20 restarts, ``alpha = 1`` (DEC-keras).
  The paper fixes the same batch size, tol and alpha.
- Inputs are scaled to [-1, 1] like every jaxclust dataset (DEC-keras divides by 255); the
  reconstruction is the per-pixel mean squared error.

``encoder="conv"`` swaps the fully connected autoencoder for the convolutional one of the
inter-class separation method (:mod:`jaxclust.algos.ics`; ``conv_variant`` "shallow" or
"deep", with DEC's ``embedding_dim``; ``conv_features`` overrides its channels), without
its triplet and entropy terms, so that the effect of those constraints can be measured.
Its batch-norm running averages are the non-trainable model state: training steps
normalise by the batch's statistics and update them, ``embed`` and ``predict`` use them.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from jaxclust import cluster, losses, nn
from jaxclust.algos import ics
from jaxclust.engine import CLUSTERING, MODEL_STATE, Algorithm, TrainConfig
from jaxclust.errors import ConfigError
from jaxclust.heads import student_t_assign
from jaxclust.targets import dec_target


@dataclasses.dataclass(frozen=True)
class DecConfig(TrainConfig):
  """DEC's settings (section 4.3 of the paper; DEC-keras for what it leaves open)."""

  batch_size: int = 256
  learning_rate: float = 0.01  # clustering phase
  optimizer: str = "sgd"  # clustering phase: "sgd" (with momentum) or "adam"
  momentum: float = 0.9
  warmup_learning_rate: float | None = 1e-3  # pretraining, Adam
  warmup_epochs: int = 200
  steps_per_round: int = 140  # DEC's update interval
  max_rounds: int = 143  # DEC-keras: 2e4 iterations / 140
  tol: float = 0.001

  encoder: str = "mlp"  # "mlp" (d-500-500-2000-10) or "conv" (the ics autoencoder)
  conv_variant: str = "shallow"  # encoder="conv": the ics network, "shallow" or "deep"
  conv_features: tuple[int, ...] | None = None  # encoder="conv": channels; None: the variant's
  hidden_dims: tuple[int, ...] = (500, 500, 2000)
  embedding_dim: int = 10
  alpha: float = 1.0  # Student-t degrees of freedom
  clustering_weight: float = 1.0  # IDEC's gamma
  reconstruction_weight: float = 0.0  # 0: DEC drops the decoder; IDEC keeps it (1)
  kmeans_n_init: int = 20

  def validate(self, n_samples: int) -> None:
    super().validate(n_samples)
    if self.optimizer not in ("sgd", "adam"):
      raise ConfigError(f"optimizer must be 'sgd' or 'adam'; got {self.optimizer!r}")
    if self.encoder not in ("mlp", "conv"):
      raise ConfigError(f"encoder must be 'mlp' or 'conv'; got {self.encoder!r}")
    if self.conv_variant not in ics.VARIANTS:
      raise ConfigError(f"conv_variant must be one of {sorted(ics.VARIANTS)}; got {self.conv_variant!r}")
    if self.conv_features is not None and (not self.conv_features or min(self.conv_features) < 1):
      raise ConfigError(f"conv_features must be positive channel counts; got {self.conv_features}")
    if self.alpha <= 0:
      raise ConfigError(f"alpha must be positive; got {self.alpha}")
    if self.embedding_dim < 1 or any(h < 1 for h in self.hidden_dims):
      raise ConfigError(f"layer sizes must be positive; got {self.hidden_dims} and {self.embedding_dim}")
    if self.clustering_weight < 0 or self.reconstruction_weight < 0:
      raise ConfigError("clustering_weight and reconstruction_weight must not be negative")


# Per dataset: DEC-keras's update interval (140 for MNIST-sized data, 30 for USPS) and a
# pretraining length that gives small datasets a comparable number of steps.
DATASET_SETTINGS: dict[str, dict] = {
    "mnist": dict(n_clusters=10),
    "fashion-mnist": dict(n_clusters=10),
    "mnist-test": dict(n_clusters=10),
    "fashion-mnist-test": dict(n_clusters=10),
    "usps": dict(n_clusters=10, steps_per_round=30),
    "digits": dict(n_clusters=10, steps_per_round=30, warmup_epochs=500),
}


def dataset_settings(dataset: str, image_shape: tuple[int, ...]) -> dict:
  """Settings for ``dataset``; unknown datasets get the defaults (small images: the digits')."""
  if dataset in DATASET_SETTINGS:
    return dict(DATASET_SETTINGS[dataset])
  return {"steps_per_round": 30} if min(image_shape[:2]) < 16 else {}


class Dec(Algorithm):
  """DEC (and, with ``reconstruction_weight > 0``, IDEC) under the engine's contract."""

  Config = DecConfig

  def __init__(self, config: DecConfig, image_shape: tuple[int, ...]):
    self.config = config
    self.image_shape = tuple(image_shape)
    if config.encoder == "mlp":
      self.model = nn.MLPAutoencoder(self.image_shape, tuple(config.hidden_dims), config.embedding_dim)
    else:  # the conv autoencoder lives with the method that defines it
      self.model = ics.conv_autoencoder(self.image_shape, config.conv_variant, features=config.conv_features,
                                        embedding_dim=config.embedding_dim)

  def make_optimizer(self, phase):
    """Adam (the engine's default) except for SGD with momentum in DEC's clustering phase."""
    cfg = self.config
    if phase == CLUSTERING and cfg.optimizer == "sgd":
      return optax.sgd(cfg.learning_rate, momentum=cfg.momentum)
    return super().make_optimizer(phase)

  def init(self, rng, example_x):
    centroids = jnp.zeros((self.config.n_clusters, self.config.embedding_dim), jnp.float32)
    if self.config.encoder == "mlp":
      return {"ae": self.model.init(rng, example_x)["params"], "centroids": centroids}
    weights, batch_stats = ics.init_autoencoder(self.model, rng, example_x)
    return {"ae": weights, "centroids": centroids, MODEL_STATE: {"batch_stats": batch_stats}}

  def _apply(self, params, x, method=None, weights=None):
    """``(output, terms)`` of the autoencoder's ``method`` (default: encode and decode). The
    conv autoencoder normalises a training batch (``weights`` given) by its own statistics
    and returns the updated running averages as ``{MODEL_STATE: ...}``; otherwise ``{}``."""
    if self.config.encoder == "conv":
      return ics.apply_autoencoder(self.model, params, x, method, weights)
    return self.model.apply({"params": params["ae"]}, x, method=method), {}

  def _encode(self, params, x, weights=None):
    return self._apply(params, x, type(self.model).encode, weights)

  def _reconstruct(self, params, x, weights=None):
    return self._apply(params, x, None, weights)

  def warmup_loss(self, params, batch, rng):
    del rng
    (_, reconstruction), state = self._reconstruct(params, batch["x"], batch["weights"])
    rec = losses.reconstruction_error(batch["x"], reconstruction, batch["weights"])
    return rec, {"reconstruction": rec, **state}

  def embed(self, params, x):
    return self._encode(params, x)[0]

  def init_clusters(self, params, features, rng):
    """k-means (``kmeans_n_init`` restarts) on the embedding gives the centroids; the first
    targets are eq. 3 of the resulting soft assignments, as at DEC's iteration 0."""
    features = jnp.asarray(features)
    result = cluster.kmeans(rng, features, self.config.n_clusters, n_init=self.config.kmeans_n_init)
    params = {**params, "centroids": result.centroids.astype(jnp.float32)}
    return params, self.e_step(student_t_assign(features, params["centroids"], self.config.alpha))

  def predict(self, params, x):
    return student_t_assign(self.embed(params, x), params["centroids"], self.config.alpha)

  def e_step(self, soft_assignments):
    return dec_target(soft_assignments)

  def m_step_loss(self, params, batch, targets, rng):
    """``gamma * KL(P || Q)`` (DEC eq. 2), plus the reconstruction error for IDEC."""
    del rng
    cfg = self.config
    w = batch["weights"]
    if cfg.reconstruction_weight > 0:
      (z, reconstruction), state = self._reconstruct(params, batch["x"], w)
      rec = losses.reconstruction_error(batch["x"], reconstruction, w)
    else:
      (z, state), rec = self._encode(params, batch["x"], w), jnp.zeros(())
    q = student_t_assign(z, params["centroids"], cfg.alpha)
    kl = losses.kl_divergence(targets, q, w)
    loss = cfg.clustering_weight * kl + cfg.reconstruction_weight * rec
    terms = {"clustering": kl}
    if cfg.reconstruction_weight > 0:
      terms["reconstruction"] = rec
    return loss, {**terms, **state}


Config = DecConfig
ALGORITHM = Dec
