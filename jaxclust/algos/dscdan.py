"""DSCDAN: deep spectral clustering using a dual autoencoder network (Yang, Deng, Zheng, Yan and
Liu, CVPR 2019; paper 002).

A convolutional autoencoder whose codes are made robust and informative by two extra terms,
then clustered by a SpectralNet-style network trained jointly with it (Sec. 3, Fig. 2):

1. Warm-up, eq. 13: ``L_r + L_e``.

   - ``L_r`` (eq. 12) ``= ||x~_{z^} - x~_z||_F^2 + delta ||x - x~_z||_F^2``: the decoder's
     output from the noisy code ``z^ = psi(z)`` against its output from the clean code
     ``z`` (eq. 11, the "relative" reconstruction), plus the ordinary reconstruction.
   - ``L_e`` (eq. 10) ``= -beta (I_global + I_local) + gamma E_x[KL(p(z|x) || q(z))]``:
     Jensen-Shannon estimates of the mutual information between the input and its code
     (a global discriminator ``T_1(x, z)`` and a local one ``T_2(C_ij, z)`` on the encoder's
     middle feature map, negatives by shuffling the codes within the batch), maximised by
     encoder and discriminators; and the KL divergence of the encoder's Gaussian
     ``p(z|x) = N(mu, diag(exp(logvar)))`` from the prior ``q(z) = N(0, I)``.

2. Initial clusters: k-means on the codes ``z = mu`` (the autoencoder + k-means line of
   the log, round 0; ``max_rounds=0`` ends there). The means of the clustering prior
   (step 3) start at its centroids.
3. Rounds of ``steps_per_round`` steps on eq. 20, ``L_r + L_e + L_c``, for the autoencoder,
   the discriminators and the spectral network together:

   - ``L_c`` (eq. 16) ``= 1/m^2 sum_ij W_ij ||y_i - y_j||^2``, with ``W`` the minibatch's
     Gaussian kNN affinity on the codes (eq. 14) and ``y`` the spectral network's
     orthonormalized outputs (eq. 17-18), as in SpectralNet
     (:mod:`jaxclust.algos.spectralnet`): four fully connected ReLU layers, then the
     orthonorm layer;
   - in ``L_e`` the prior term becomes eq. 19, ``E_x[KL(p(y, z|x) || q(y, z))]`` with
     ``p(y, z|x) = p(y|z) p(z|x)``, ``q(z|y) = N(mu_y, I)`` and ``q(y)`` uniform
     (:func:`mixture_kl`).

   After each round the outputs of the whole dataset are orthonormalized and clustered by
   k-means, warm-started from the previous round (:func:`jaxclust.algos.spectralnet.recluster`;
   the first clustering of the outputs numbers its clusters after those of k-means on the
   codes, so that each of the prior's means stays with its cluster); the final assignments
   come from the spectral outputs. Stop when fewer than ``tol`` of the
   assignments changed, or after ``max_rounds``.

Settings: ``beta = 0.01``, ``gamma = 1``, ``delta = 0.5`` (Sec. 4.3), latent dimension 120
(Sec. 4.3), a kNN graph with 3 neighbours counting the point itself, as SpectralNet counts
(``n_neighbors=2``; see :func:`jaxclust.spectral.knn_affinity`). Every term has its own
weight: ``reconstruction_weight`` (delta), ``relative_reconstruction_weight``,
``global_mi_weight`` and ``local_mi_weight`` (beta), ``prior_weight`` (gamma),
``spectral_weight``; 0 drops a term.

The ablation of Table 4 as settings (``--set KEY=VALUE``):

- ConvAE: ``relative_reconstruction_weight=0 global_mi_weight=0 local_mi_weight=0
  prior_weight=0 max_rounds=0`` (reconstruction alone, then k-means on the codes);
- ConvAE+MI: ``relative_reconstruction_weight=0 max_rounds=0`` (adds ``L_e``: the mutual
  information terms and the prior term that eq. 10 puts with them);
- ConvAE+RS: ``global_mi_weight=0 local_mi_weight=0 prior_weight=0 max_rounds=0`` (the
  dual reconstruction of eq. 12);
- ConvAE+MI+RS: ``max_rounds=0`` (eq. 13, then k-means on the codes);
- ConvAE+MI+RS+SN: the defaults (eq. 13, then eq. 20).

Where the paper is silent or garbled, the authors' code
(xdxuyang/Deep-Spectral-Clustering-using-Dual-Autoencoder-Network, ``src/core/ConvAE.py``
for the pretraining, ``src/core/Conv.py`` and ``src/applications/run.py`` for the joint
phase) decides:

- Network (Table 2 is garbled in our copy): per entry of ``conv_features`` (32, 64) a 3x3
  convolution of stride 2 and one of stride 1, "same" padding, LeakyReLU 0.2; a dense
  Gaussian head (``mu``, ``logvar``) of size 120. Decoder: a linear dense layer back to the
  last feature map, then per level a 3x3 transposed convolution of stride 1 and one of
  stride 2 (LeakyReLU 0.2; cropped to the encoder's size where it rounded up), and a 3x3
  transposed convolution to the image's channels. The code's output is a sigmoid for
  pixels in [0, 1]; ours is tanh, for jaxclust's [-1, 1]. Glorot-uniform weights (Keras).
  The layers are :class:`jaxclust.nn.SameConv` and :class:`jaxclust.nn.SameConvTranspose`:
  Flax's ``Conv`` and ``ConvTranspose`` with ``padding="SAME"`` (same parameters, same
  function), computed in the forms XLA:CPU runs fastest (the warm-up step on the Fashion-MNIST
  test split went from 63 to 321 samples/s at its batch of 1024 on 2 cores, BENCHMARKS.md).
  The local discriminator reads the output of the first level, the "middle" feature map
  (the feature map marked in ``ConvAE.py``).
- Spectral network 1024-1024-512 then ``K`` units (``Conv.py``, SpectralNet's MNIST
  network); discriminators :class:`jaxclust.nn.GlobalDiscriminator` and
  :class:`jaxclust.nn.LocalDiscriminator` with three ReLU layers as wide as the latent code
  (the code's global one; its local one is commented out).
- Adam at lr 1e-3 (Keras's default, both phases); batch 1024 for the joint phase (``run.py``);
  the engine has one batch size, so the warm-up uses it too (the code pretrains in batches of
  100). Rounds of 100 steps, at most 50: the code's at most 500 x 10 = 5000 steps. It stops
  when its loss changes by less than 1e-4; we stop when fewer than 1% of the assignments
  change (``tol=0.01``, as :mod:`jaxclust.algos.spectralnet` does and for the same reason).
- Warm-up length (neither gives one that fits; ``ConvAE.py`` calls ``fit`` without an epoch
  count): 50 epochs of MNIST-sized data, 200 for the 10k-sample sets and the digits
  (batches of 256 there: 1024 would be more than half the dataset).

Where the paper and the code differ, the paper's form is the default and the code's an
option:

- Noise ``psi``: the paper's multiplicative Gaussian noise, ``z (1 + s eps)`` with
  ``noise_stddev`` ``s`` (the paper gives no value; 0.5, Gaussian dropout at rate 0.2, is
  ours); ``noise="sample"``: the code's reparameterised sample ``mu + exp(logvar/2) eps``.
- Global MI pairs: the paper's ``T_1(x, z)`` (the image, flattened, with the clean code;
  ``global_mi_pairs="image"``); ``"code"``: the code's ``T_1(z^, z^)`` against
  ``T_1(z^, shuffled z^)`` on the noisy codes.
- Local MI: the paper's eq. 10 term; the code has none (``local_mi_weight=0``).
- Prior: ``prior="paper"`` is ``N(0, I)`` in the warm-up (eq. 10) and the mixture of eq. 19 in
  the joint phase; ``"mixture"`` is the code's, the mixture in both phases (its pretraining
  already trains a classifier and the means from zero); ``"standard"`` keeps ``N(0, I)``.
  The paper does not say how its orthonormal ``y`` gives eq. 19's ``p(y|z)``; the code takes
  the softmax of the spectral network's last layer, its classifier output
  (``cluster_posterior="softmax"``). With the paper's linear output that softmax is nearly
  uniform from the first round on (the logits of the small codes are small; on the digits its
  mean entropy is log K to 5 digits), and eq. 19's ``KL(p || uniform)`` part is least at a
  constant row of logits. In the digits run that collapsed after 48 rounds (BENCHMARKS.md) the
  outputs ``Y~`` had lost rank: centred, five of their ten singular values fell from 0.43-0.98
  of the largest to below 0.01, towards the orthonorm layer's jitter, under which the outputs
  vanish. The default, ``cluster_posterior="spectral"`` (ours), takes ``p(y|z)`` from the
  model's current soft assignments instead (those :meth:`Dscdan.predict` returns: Student-t of
  the orthonormal outputs around the last round's k-means centroids, of the codes around
  theirs before the first round), held fixed: eq. 19 then pulls each code towards the means of
  the clusters it is assigned to and leaves the spectral network to ``L_c``. With it the three
  digits seeds ran healthy to convergence (BENCHMARKS.md).
- Spectral output: the paper's orthonorm layer "acts as a linear layer with K outputs"
  (``output_activation="linear"``); the code orthonormalizes a softmax (``"softmax"``).
- Orthonorm weights: the paper computes them from the minibatch's own ``Y~`` ("the inputs to
  this layer for Z", Sec. 3.2) and the code does too, letting the gradient flow through them
  (``orthonorm_batch="same" orthonorm_gradient=True``, the defaults; not a difference).
  ``orthonorm_batch="separate"`` draws SpectralNet's separate orthogonalization batch;
  held fixed (``orthonorm_gradient=False``) the weights let the outputs collapse (see
  :mod:`jaxclust.algos.spectralnet`).
- Final assignments: k-means on the spectral outputs (Sec. 3.2, "all the samples will be
  subsequently clustered in this space"); ``assign="argmax"``: the code's argmax of the
  softmax.
- Weights: the code's pretraining weighs ``5 * (0.5 ||x - x~_z||^2 + ||x~_z - x~_{z^}||^2) +
  KL + 0.01 I_global`` (the paper's delta, times 5); its joint phase ``5 ||x - x~_{z^}||^2 +
  2.5 ||x~_z - x~_{z^}||^2 + 1.5 KL + 0.1 I_global`` and divides ``sum W_ij ||y_i - y_j||^2``
  by 1024 (its batch size) instead of ``m^2``: ``spectral_weight`` = ``batch_size`` gives that
  scale. The defaults are the paper's.
- Neighbours: 3 in the paper (Sec. 4.3); ``run.py`` uses 5 with a fixed scale 2.62
  (``n_neighbors=4 affinity_scale=2.62``). The paper gives no scale; by default it is
  SpectralNet's median rule on each batch (``scale_neighbor``).

Our choices where neither says: the affinity is a fixed graph of the codes within a step (no
gradient through ``W``; the code lets one flow, which pushes neighbours' codes apart); the
global and local negatives share one in-batch permutation; the prior's means start at the
k-means centroids of the codes (the code starts them at 0 in its pretraining).

``joint_autoencoder_weight`` (ours; 1, eq. 20, by default) multiplies the autoencoder's terms
``L_r + L_e`` in the joint phase only; at 0 they are dropped, and the encoder then moves by
``L_c``'s gradient alone. On the digits the rounds with the autoencoder's terms stay near
exact spectral clustering of the warm-up codes (ACC about 0.75) and without them end at 0.825
(BENCHMARKS.md, "What holds DSCDAN's rounds there").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as flax_nn
import jax
import jax.numpy as jnp

from jaxclust import losses, nn
from jaxclust.algos import spectralnet
from jaxclust.engine import MODEL_STATE, Algorithm, TrainConfig
from jaxclust.errors import ConfigError

NOISES = ("multiplicative", "sample")
PRIORS = ("paper", "mixture", "standard")


# ----------------------------------------------------------------------------- the network


class DualAutoencoder(flax_nn.Module):
  """The convolutional autoencoder of DSCDAN with a Gaussian head (see the module docstring).

  ``encode(x [B, H, W, C])`` returns ``(mu [B, latent_dim], logvar [B, latent_dim],
  feature_map [B, H', W', features[0]])``, the last being the first level's output (the
  local discriminator's input); ``decode(z [B, latent_dim])`` returns ``[B, H, W, C]`` in
  ``(-1, 1)``.
  """

  image_shape: tuple[int, int, int]
  features: Sequence[int] = (32, 64)
  latent_dim: int = 120
  negative_slope: float = 0.2

  def setup(self):
    height, width, channels = self.image_shape
    conv = lambda f, stride: nn.SameConv(f, 3, stride)
    deconv = lambda f, stride: nn.SameConvTranspose(f, 3, stride)
    self.sizes = nn.pooled_sizes(height, width, len(self.features))
    self.downsample = [conv(f, 2) for f in self.features]
    self.refine = [conv(f, 1) for f in self.features]
    self.mean = flax_nn.Dense(self.latent_dim, kernel_init=nn.xavier)
    self.logvar = flax_nn.Dense(self.latent_dim, kernel_init=nn.xavier)
    top_h, top_w = self.sizes[-1]
    self.top_shape = (top_h, top_w, self.features[-1])
    self.dense = flax_nn.Dense(math.prod(self.top_shape), kernel_init=nn.xavier)
    # up_refine[l], upsample[l] bring level l + 1 back to level l (l = n-1 ... 0).
    self.up_refine = [deconv(f, 1) for f in self.features]
    self.upsample = [deconv(f, 2) for f in self.features]
    self.output = deconv(channels, 1)

  def _act(self, h):
    return flax_nn.leaky_relu(h, self.negative_slope)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    h = x
    feature_map = None
    for down, refine in zip(self.downsample, self.refine):
      h = self._act(refine(self._act(down(h))))
      feature_map = h if feature_map is None else feature_map
    h = h.reshape(h.shape[0], -1)
    return self.mean(h), self.logvar(h), feature_map

  def decode(self, z: jax.Array) -> jax.Array:
    h = self.dense(z).reshape(z.shape[0], *self.top_shape)
    for level in reversed(range(len(self.features))):
      h = self._act(self.upsample[level](self._act(self.up_refine[level](h))))
      height, width = self.sizes[level]
      h = h[:, :height, :width, :]
    return jnp.tanh(self.output(h))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    mu, _, _ = self.encode(x)
    return mu, self.decode(mu)


# ----------------------------------------------------------------------------- eq. 19


def mixture_kl(mu: jax.Array, logvar: jax.Array, cluster_probabilities: jax.Array, means: jax.Array,
               weights: jax.Array | None = None) -> jax.Array:
  """``E_x[KL(p(y, z|x) || q(y, z))]`` (paper 002 eq. 19).

  With ``p(y, z|x) = p(y|z) p(z|x)``, ``p(z|x) = N(mu, diag(exp(logvar)))``,
  ``q(z|y) = N(means_y, I)`` and a uniform ``q(y)``, per sample
  ``sum_k p_k KL(N(mu, diag(exp(logvar))) || N(means_k, I)) + KL(p || uniform)``, averaged
  over samples. The first part is DSCDAN's code's ``kl_loss`` (``K.batch_dot(y, kl)``), the
  second its ``cat_loss`` ``sum_k p_k log p_k`` plus the constant ``log K``.

  Args:
    mu: ``[B, D]`` means of ``p(z|x)``.
    logvar: ``[B, D]`` log-variances.
    cluster_probabilities: ``[B, K]`` ``p(y|z)``, rows summing to 1.
    means: ``[K, D]`` means ``mu_y`` of the prior's components.
    weights: optional ``[B]`` per-sample weights (0 for padding).

  Returns:
    scalar divergence.
  """
  variance_part = 0.5 * jnp.sum(jnp.exp(logvar) - 1.0 - logvar, axis=-1)  # [B]
  sq_dist = jnp.sum(jnp.square(mu[:, None, :] - means[None, :, :]), axis=-1)  # [B, K]
  gaussian = jnp.sum(cluster_probabilities * (variance_part[:, None] + 0.5 * sq_dist), axis=-1)
  n_clusters = cluster_probabilities.shape[-1]
  categorical = jnp.sum(cluster_probabilities * jnp.log(jnp.maximum(cluster_probabilities, 1e-12)), axis=-1)
  return losses.weighted_mean(gaussian + categorical + math.log(n_clusters), weights)


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class DscdanConfig(TrainConfig):
  """DSCDAN's settings (Sec. 4.3 of the paper; the authors' code where it is silent). The
  module docstring gives the source of each and the code's values of the options."""

  batch_size: int = 1024
  learning_rate: float = 1e-3  # Adam, both phases
  warmup_epochs: int = 50
  steps_per_round: int = 100
  max_rounds: int = 50
  tol: float = 0.01  # as SpectralNet's: k-means on moving outputs

  # the dual autoencoder
  conv_features: tuple[int, ...] = (32, 64)
  latent_dim: int = 120
  negative_slope: float = 0.2
  noise: str = "multiplicative"  # psi: "multiplicative" (paper) or "sample" (code)
  noise_stddev: float = 0.5  # multiplicative noise's standard deviation
  global_mi_pairs: str = "image"  # T_1(x, z) (paper) or "code": T_1(z^, z^) (code)
  prior: str = "paper"  # "paper", "mixture" (code) or "standard"
  cluster_posterior: str = "spectral"  # p(y|z) in eq. 19: the model's assignments, or "softmax" (code)

  # the weight of each term of eq. 13 / eq. 20; 0 drops it
  reconstruction_weight: float = 0.5  # delta
  relative_reconstruction_weight: float = 1.0
  global_mi_weight: float = 0.01  # beta
  local_mi_weight: float = 0.01  # beta (the code: 0)
  prior_weight: float = 1.0  # gamma
  spectral_weight: float = 1.0
  joint_autoencoder_weight: float = 1.0  # factor on L_r + L_e in eq. 20 (ours; 0: L_c alone)

  # the spectral network and its affinity
  spectral_hidden: tuple[int, ...] = (1024, 1024, 512)
  output_activation: str = "linear"  # "linear" (paper) or "softmax" (code)
  orthonorm_batch: str = "same"  # the batch's own Y~ (paper, code), or "separate" (SpectralNet)
  orthonorm_gradient: bool = True  # through the orthonorm weights (code); False: held fixed
  orthonorm_jitter: float = 1e-6
  n_neighbors: int = 2  # "3 neighbours" counting the point itself
  scale_neighbor: int = 1
  affinity_scale: float | None = None  # None: the batch's median scale_neighbor distance
  assign: str = "kmeans"  # "kmeans" on the spectral outputs (paper) or "argmax" of p(y|z) (code)
  kmeans_n_init: int = 10

  def validate(self, n_samples: int) -> None:
    super().validate(n_samples)
    if not self.conv_features or min(self.conv_features) < 1:
      raise ConfigError(f"conv_features must be positive channel counts; got {self.conv_features}")
    if self.latent_dim < 1:
      raise ConfigError(f"latent_dim must be at least 1; got {self.latent_dim}")
    if self.noise not in NOISES:
      raise ConfigError(f"noise must be one of {list(NOISES)}; got {self.noise!r}")
    if self.global_mi_pairs not in ("image", "code"):
      raise ConfigError(f"global_mi_pairs must be 'image' or 'code'; got {self.global_mi_pairs!r}")
    if self.prior not in PRIORS:
      raise ConfigError(f"prior must be one of {list(PRIORS)}; got {self.prior!r}")
    if self.cluster_posterior not in ("softmax", "spectral"):
      raise ConfigError(f"cluster_posterior must be 'softmax' or 'spectral'; got {self.cluster_posterior!r}")
    if self.assign not in ("kmeans", "argmax"):
      raise ConfigError(f"assign must be 'kmeans' or 'argmax'; got {self.assign!r}")
    for name in ("noise_stddev", "negative_slope", "joint_autoencoder_weight", *WEIGHTS):
      if getattr(self, name) < 0:
        raise ConfigError(f"{name} must not be negative; got {getattr(self, name)}")
    spectralnet.validate_spectral(self)


# The weight keys of the loss terms, by term name.
WEIGHTS = {
    "reconstruction_weight": "reconstruction",
    "relative_reconstruction_weight": "relative_reconstruction",
    "global_mi_weight": "global_mi",
    "local_mi_weight": "local_mi",
    "prior_weight": "prior",
    "spectral_weight": "spectral",
}


def term_weights(config: DscdanConfig, clustering: bool) -> dict[str, float]:
  """Each term's weight by term name: eq. 13's (``clustering=False``) or eq. 20's, where the
  autoencoder's terms (``L_r`` and ``L_e``) are multiplied by ``joint_autoencoder_weight``."""
  factor = config.joint_autoencoder_weight if clustering else 1.0
  return {name: getattr(config, key) * (1.0 if name == "spectral" else factor) for key, name in WEIGHTS.items()}

# Per dataset: the code's batch of 1024 for MNIST-sized data, 256 for the 1797 digits; warm-up
# lengths that give the smaller datasets about as many steps as MNIST's 50 epochs.
DATASET_SETTINGS: dict[str, dict] = {
    "mnist": {"n_clusters": 10},
    "fashion-mnist": {"n_clusters": 10},
    "mnist-test": {"n_clusters": 10, "warmup_epochs": 200},
    "fashion-mnist-test": {"n_clusters": 10, "warmup_epochs": 200},
    "usps": {"n_clusters": 10, "warmup_epochs": 200},
    "digits": {"n_clusters": 10, "batch_size": 256, "warmup_epochs": 200},
}


def dataset_settings(dataset: str, image_shape: tuple[int, ...]) -> dict:
  """Settings for ``dataset`` (see :func:`jaxclust.algos.spectralnet.settings_from`)."""
  return spectralnet.settings_from(DATASET_SETTINGS, dataset, image_shape)


# ----------------------------------------------------------------------------- the algorithm


class Dscdan(Algorithm):
  """DSCDAN under the engine's contract.

  Parameters: ``{"ae", "spectral", "global_discriminator", "local_discriminator": weights,
  "prior_means": [K, latent_dim], MODEL_STATE: spectralnet.spectral_state(...)}``. Targets:
  the soft assignments of the last E-step (the loss does not read them).
  """

  Config = DscdanConfig

  def __init__(self, config: DscdanConfig, image_shape: tuple[int, int, int]):
    self.config = config
    self.image_shape = tuple(image_shape)
    self.autoencoder = DualAutoencoder(self.image_shape, tuple(config.conv_features), config.latent_dim,
                                       config.negative_slope)
    self.network = nn.SpectralMLP(config.n_clusters, tuple(config.spectral_hidden))  # logits
    # The code's discriminators: three ReLU layers as wide as the latent code.
    self.global_discriminator = nn.GlobalDiscriminator((config.latent_dim,) * 3)
    self.local_discriminator = nn.LocalDiscriminator((config.latent_dim,) * 3)

  def init(self, rng, example_x):
    cfg = self.config
    keys = jax.random.split(rng, 4)
    ae = self.autoencoder.init(keys[0], example_x)["params"]
    mu, _, feature_map = self.autoencoder.apply({"params": ae}, example_x, method=DualAutoencoder.encode)
    return {
        "ae": ae,
        "spectral": self.network.init(keys[1], mu)["params"],
        "global_discriminator": self.global_discriminator.init(keys[2], self._global_features(example_x, mu),
                                                               mu)["params"],
        "local_discriminator": self.local_discriminator.init(keys[3], feature_map, mu)["params"],
        "prior_means": jnp.zeros((cfg.n_clusters, cfg.latent_dim), jnp.float32),
        MODEL_STATE: spectralnet.spectral_state(cfg.n_clusters, cfg.latent_dim),
    }

  # -- pieces

  def _encode(self, params, x):
    return self.autoencoder.apply({"params": params["ae"]}, x, method=DualAutoencoder.encode)

  def _decode(self, params, z):
    return self.autoencoder.apply({"params": params["ae"]}, z, method=DualAutoencoder.decode)

  def _global_features(self, x, z):
    """The first argument of ``T_1``: the image (paper) or the code (the authors' code)."""
    return z if self.config.global_mi_pairs == "code" else x

  def _logits(self, params, z):
    return self.network.apply({"params": params["spectral"]}, z)

  def _y_tilde(self, logits):
    """The orthonorm layer's input ``Y~`` from the spectral network's last layer."""
    return logits if self.config.output_activation == "linear" else spectralnet.OUTPUT_ACTIVATIONS[
        self.config.output_activation](logits)

  def _noisy(self, key, mu, logvar):
    """``z^ = psi(z)`` (Sec. 3.1)."""
    if self.config.noise == "sample":
      return losses.sample_gaussian(key, mu, logvar)
    return losses.multiplicative_gaussian_noise(key, mu, stddev=self.config.noise_stddev)

  def _orthonormal_outputs(self, params, batch, y_tilde, w, key):
    """``(Y, W)``: the orthonorm layer's outputs for the step's batch and its weights (eq. 17-18)."""
    cfg = self.config
    y_tilde_orth = weights_orth = None
    if cfg.orthonorm_batch == "separate":
      index, weights_orth = spectralnet.draw_rows(key, batch["dataset"].shape[0], cfg.batch_size,
                                                  params[MODEL_STATE]["n_samples"])  # not the padded length: see SpectralNet
      mu_orth = self._encode(params, jnp.take(batch["dataset"], index, axis=0))[0]
      y_tilde_orth = self._y_tilde(self._logits(params, mu_orth))
    orthonorm = spectralnet.orthonorm_for_step(y_tilde, w, y_tilde_orth, weights_orth,
                                               gradient=cfg.orthonorm_gradient, jitter=cfg.orthonorm_jitter)
    return spectralnet.orthonormal_outputs(y_tilde, orthonorm), orthonorm

  def _cluster_posterior(self, state, mu, logits, clustering):
    """``p(y|z)`` of eq. 19: the softmax of the spectral network's last layer, or (with
    ``cluster_posterior="spectral"``, in the joint phase) the model's current soft assignments
    (:meth:`predict`'s), held fixed."""
    if not clustering or self.config.cluster_posterior == "softmax":
      return jax.nn.softmax(logits)
    return jax.lax.stop_gradient(self._soft_assignments(state, mu, logits))

  def _soft_assignments(self, state, mu, logits):
    """The model's soft assignments of codes ``mu`` with spectral-network outputs ``logits``."""
    if self.config.assign == "argmax":
      return spectralnet.spectral_soft_assignments(state, mu, outputs=jax.nn.softmax(logits))
    return spectralnet.spectral_soft_assignments(state, mu, self._y_tilde(logits))

  def _uses_mixture(self, clustering: bool) -> bool:
    prior = self.config.prior
    return prior == "mixture" or (prior == "paper" and clustering)

  def _objective(self, params, batch, rng, clustering: bool):
    """The terms of eq. 13 (``clustering=False``) or eq. 20, ``(loss, terms)``. Terms of
    weight 0 are neither computed nor reported."""
    cfg = self.config
    weight = term_weights(cfg, clustering)
    x, w = batch["x"], batch["weights"]
    b = x.shape[0]
    key_noise, key_shuffle, key_orth = jax.random.split(rng, 3)
    mu, logvar, feature_map = self._encode(params, x)
    terms: dict[str, jax.Array] = {}

    # L_r, eq. 11-12.
    if weight["reconstruction"] > 0 or weight["relative_reconstruction"] > 0:
      z_noisy = self._noisy(key_noise, mu, logvar)
      if weight["relative_reconstruction"] > 0:
        decoded = self._decode(params, jnp.concatenate([mu, z_noisy]))
        reconstruction, reconstruction_noisy = decoded[:b], decoded[b:]
        terms["relative_reconstruction"] = losses.relative_reconstruction_loss(reconstruction_noisy,
                                                                              reconstruction, w)
      else:
        reconstruction = self._decode(params, mu)
      if weight["reconstruction"] > 0:
        terms["reconstruction"] = losses.sum_squared_error(x, reconstruction, w)
    else:
      z_noisy = mu

    # L_e, eq. 10: mutual information (to maximise) and the prior term.
    if weight["global_mi"] > 0 or weight["local_mi"] > 0:
      permutation = losses.batch_permutation(key_shuffle, b, w)
      if weight["global_mi"] > 0:
        z_mi = z_noisy if cfg.global_mi_pairs == "code" else mu
        features = self._global_features(x, z_mi)
        discriminator = lambda f, z: self.global_discriminator.apply({"params": params["global_discriminator"]}, f, z)
        terms["global_mi"] = losses.jsd_mutual_information(discriminator(features, z_mi),
                                                           discriminator(features, z_mi[permutation]), w)
      if weight["local_mi"] > 0:
        discriminator = lambda c, z: self.local_discriminator.apply({"params": params["local_discriminator"]}, c, z)
        terms["local_mi"] = losses.jsd_mutual_information(discriminator(feature_map, mu),
                                                          discriminator(feature_map, mu[permutation]), w)

    logits = None
    if weight["prior"] > 0:
      if self._uses_mixture(clustering):
        logits = self._logits(params, mu)
        posterior = self._cluster_posterior(params[MODEL_STATE], mu, logits, clustering)
        terms["prior"] = mixture_kl(mu, logvar, posterior, params["prior_means"], w)
      else:
        terms["prior"] = losses.gaussian_kl(mu, logvar, w)

    # L_c, eq. 14-18 (the joint phase only).
    new_state = {}
    if clustering and weight["spectral"] > 0:
      y_tilde = self._y_tilde(self._logits(params, mu) if logits is None else logits)
      y, orthonorm = self._orthonormal_outputs(params, batch, y_tilde, w, key_orth)
      terms["spectral"] = spectralnet.batch_spectral_loss(y, spectralnet.batch_affinity(cfg, mu, w), w,
                                                          cfg.batch_size)
      new_state = {MODEL_STATE: {**params[MODEL_STATE], "orthonorm": jax.lax.stop_gradient(orthonorm)}}

    signs = {"global_mi": -1.0, "local_mi": -1.0}
    loss = jnp.zeros(())
    for name, value in weight.items():
      if name in terms:
        loss = loss + signs.get(name, 1.0) * value * terms[name]
    return loss, {**terms, **new_state}

  # -- the contract

  def warmup_loss(self, params, batch, rng):
    """Eq. 13: ``L_r + L_e``."""
    return self._objective(params, batch, rng, clustering=False)

  def embed(self, params, x):
    """``[B, latent_dim + K]``: the codes ``z = mu`` and, after them, ``Y~``."""
    mu = self._encode(params, x)[0]
    return jnp.concatenate([mu, self._y_tilde(self._logits(params, mu))], axis=1)

  def clustering_features(self, features):
    """The codes (the means ``mu``); the spectral outputs follow them in ``embed``'s features."""
    return features[:, :self.config.latent_dim]

  def init_clusters(self, params, features, rng):
    """k-means on the codes; the prior's means start at its centroids unless the warm-up
    already trained them (``prior="mixture"``)."""
    cfg = self.config
    codes = jnp.asarray(self.clustering_features(features))
    state, soft = spectralnet.initial_clusters(params[MODEL_STATE], codes, rng, n_clusters=cfg.n_clusters,
                                               n_init=cfg.kmeans_n_init)
    params = {**params, MODEL_STATE: state}
    if cfg.prior == "paper":
      params["prior_means"] = jnp.copy(state["code_centroids"])  # its own buffer: the state is donated
    return params, soft

  def update_clusters(self, params, features, rng):
    """Orthogonalization on the whole dataset and k-means on the spectral outputs
    (:func:`jaxclust.algos.spectralnet.recluster`); with ``assign="argmax"`` only the first."""
    cfg = self.config
    y_tilde = jnp.asarray(features[:, cfg.latent_dim:])
    state = spectralnet.recluster(params[MODEL_STATE], y_tilde, rng, n_clusters=cfg.n_clusters,
                                  n_init=cfg.kmeans_n_init, jitter=cfg.orthonorm_jitter,
                                  kmeans=cfg.assign == "kmeans", codes=features[:, :cfg.latent_dim])
    return {**params, MODEL_STATE: state}

  def predict(self, params, x):
    """Student-t soft assignments of the spectral outputs around their k-means centroids, or
    ``p(y|z)`` with ``assign="argmax"``; before the first round, those of k-means on the codes."""
    mu = self._encode(params, x)[0]
    return self._soft_assignments(params[MODEL_STATE], mu, self._logits(params, mu))

  def e_step(self, soft_assignments):
    return soft_assignments

  def m_step_loss(self, params, batch, targets, rng):
    """Eq. 20: ``L_r + L_e + L_c``, with eq. 19's prior in ``L_e``."""
    del targets
    return self._objective(params, batch, rng, clustering=True)


Config = DscdanConfig
ALGORITHM = Dscdan
