"""SpectralNet: spectral clustering using deep neural networks (Shaham, Stanton, Li, Nadler,
Basri and Kluger, ICLR 2018), on an autoencoder's code space.

A network ``F`` maps each sample to ``y = F(x) in R^K`` so that ``y`` approximates the
bottom eigenvectors of the graph Laplacian of a k-nearest-neighbour affinity; k-means on the
outputs gives the clusters. In the order of the paper's Algorithm 1 and Sec. 3-4:

1. Code space (Sec. 4, "we use the code space of an autoencoder"): pretrain DEC's
   ``d-500-500-2000-10`` autoencoder on the reconstruction error (the engine's warm-up); the
   spectral phase reads its codes ``z``, frozen.
2. Rounds of ``steps_per_round`` iterations. Each iteration, as Algorithm 1 alternates them:

   - orthogonalization step: a random minibatch goes through the network up to the
     orthonorm layer, ``Y~``; its weights are set to ``sqrt(m) (L^-1)^T`` with
     ``L L^T = Y~^T Y~`` (Sec. 3.1; :func:`jaxclust.spectral.orthonorm_weights`);
   - gradient step: another minibatch, its affinity ``W`` (symmetrised Gaussian kNN on the
     codes, :func:`jaxclust.spectral.knn_affinity`), outputs ``y = Y~ (orthonorm weights)``
     and a step on ``1/m^2 sum_ij W_ij ||y_i - y_j||^2`` (eq. 3;
     :func:`jaxclust.spectral.spectral_loss`) for every weight but the orthonorm layer's,
     which are set, never stepped. By default the gradient flows through the orthonorm
     weights into the orthogonalization batch's forward pass, as in SpectralNet's code (see
     below for why).

   The orthonorm weights are non-trainable model state (``MODEL_STATE``): each step stores
   the ones it used, as SpectralNet's layer keeps them for prediction.
3. After each round (the engine's ``update_clusters``): one orthogonalization step on the
   whole dataset's ``Y~`` (a ``K x K`` Gram matrix, no ``N x N`` one), so that the outputs
   of ``predict`` are orthonormal over the dataset, ``Y^T Y / N = I``; then k-means on
   ``Y``: ``kmeans_n_init`` k-means++ restarts the first time, then Lloyd iterations from
   the previous round's centroids (cheap, and the cluster indices stay put from round to
   round). ``predict`` gives the Student-t soft assignments (DEC's kernel, ``alpha = 1``)
   of ``y`` around those centroids, whose argmax is the nearest centroid.
4. Stop when fewer than ``tol`` of the assignments changed in a round, or after
   ``max_rounds``.

Before the first round the assignments are k-means on the codes (the "round 0" line of the
log, the autoencoder + k-means baseline); ``max_rounds=0`` returns exactly that.

Sources for what the paper leaves open, from the authors' code (KlugerLab/SpectralNet,
``src/applications/run.py`` for MNIST, ``src/core``):

- Spectral network: 1024-1024-512 ReLU, then a ``K``-unit tanh layer and the orthonorm
  layer (``arch``; ``output_activation="linear"`` drops the tanh). Glorot-uniform weights.
- RMSprop at lr 1e-3 (``spec_lr``), batch 1024, 100 minibatches per "epoch", at most 400 of
  them (``spec_ne``): our round is their epoch. Their learning rate drops tenfold when the
  validation loss has not improved for 20 epochs; the engine's optimizer sees no loss value,
  so the rate stays constant and the run ends when the assignments settle instead.
- kNN affinity with ``n_nbrs=3`` and ``scale_nbr=2``: SpectralNet counts the point itself
  among its neighbours, so these are ``n_neighbors=2`` and ``scale_neighbor=1`` here (see
  :func:`jaxclust.spectral.knn_affinity`). The scale ``sigma`` is the median distance to the
  ``scale_neighbor``-th neighbour; SpectralNet computes it once from one random batch of
  ``batch_size`` codes (``get_scale``), we compute it on each batch, which with frozen codes
  is a fresh draw of the same statistic. ``affinity_scale`` fixes it instead.
- The orthogonalization batch is drawn uniformly without replacement from the dataset, as
  large as the training batch (SpectralNet's ``batch_size_orthonorm``, which defaults to
  its ``batch_size``).
- Whether the gradient step differentiates through the orthonorm weights: Algorithm 1 only
  says the step tunes "all F's weights, except those of the output layer"; the code
  (``layer.Orthonorm``) runs both steps in one ``session.run``, and its gradient flows
  through the weights computed from the orthogonalization batch. We follow the code
  (``orthonorm_gradient=True``). Held fixed (``False``), the weights make the loss depend
  on the scale of ``Y~``: every gradient step shrinks ``Y~`` (RMSprop and Adam by about the
  learning rate per step, whatever the gradient's size), until ``Y~`` loses rank, its
  orthonormalized outputs vanish and the samples fall into one cluster; on the 8x8 digits
  ACC fell from 0.79 (k-means on the codes) to 0.50 after one round and 0.20 after six,
  with the loss near 0. ``orthonorm_batch="same"`` computes the weights from the gradient
  step's own batch.
- Stopping: the assignments are k-means on a slowly moving embedding, and at a constant
  learning rate about 1% of them (points on cluster borders) move every round, so the
  tolerance is 1% (``tol=0.01``) rather than DEC's 0.1%, which would run to ``max_rounds``.
- Padding: the last minibatch of an epoch is padded; its loss counts in proportion to its
  pairs (:func:`batch_spectral_loss`), since a graph of a few real rows is meaningless and
  its gradient, divided by their ``m^2``, would be about ``B / m`` times a full batch's.
- Final clustering: scikit-learn's KMeans with ``n_init=10`` on the outputs; ours is the
  first clustering's ``kmeans_n_init=10``, then the warm-started rounds.
- The loss is divided by ``2 m`` in the code and by ``m^2`` in the paper (eq. 3); for a fixed
  batch size this only rescales it, and RMSprop divides the scale out.
- Autoencoder: SpectralNet loads DEC's pretrained ``784-500-500-2000-10`` network; we pretrain
  it as :mod:`jaxclust.algos.dec` does (Adam, lr 1e-3, inputs in [-1, 1]), in batches of
  ``batch_size`` (the engine has one batch size for both phases) for 200 epochs, 500 for
  the smaller datasets (``DATASET_SETTINGS``). The 1797 digits use batches of 256 (DEC's):
  a batch of 1024 would be more than half the dataset.
- The paper's MNIST figures use a Siamese network's distances for the affinity; this is its
  plain kNN variant (``affinity: 'knn'``), on the code space.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxclust import cluster, losses, nn, spectral
from jaxclust.engine import CLUSTERING, MODEL_STATE, Algorithm, TrainConfig
from jaxclust.errors import ConfigError
from jaxclust.heads import student_t_assign

OUTPUT_ACTIVATIONS = {"linear": None, "tanh": jnp.tanh, "softmax": jax.nn.softmax}
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- shared pieces
# The spectral head of both SpectralNet and DSCDAN (:mod:`jaxclust.algos.dscdan`).


def spectral_state(n_clusters: int, code_dim: int) -> dict:
  """The non-trainable values of the spectral head (``params[MODEL_STATE]``):

  - ``orthonorm`` ``[K, K]``: the orthonorm layer's weights;
  - ``centroids`` ``[K, K]``: k-means centroids of the outputs ``y``;
  - ``code_centroids`` ``[K, D]``: k-means centroids of the codes (the initial clustering);
  - ``clustered``: 1 once the outputs have been clustered, 0 while the assignments are the
    initial clustering's;
  - ``n_samples``: the dataset's size, from which orthogonalization batches are drawn.
  """
  return {
      "orthonorm": jnp.eye(n_clusters, dtype=jnp.float32),
      "centroids": jnp.zeros((n_clusters, n_clusters), jnp.float32),
      "code_centroids": jnp.zeros((n_clusters, code_dim), jnp.float32),
      "clustered": jnp.zeros((), jnp.float32),
      "n_samples": jnp.zeros((), jnp.float32),
  }


def draw_rows(key: jax.Array, n_rows: int, batch_size: int, n_samples: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``batch_size`` distinct rows drawn uniformly from the first ``n_samples`` of ``n_rows``
  (the padded dataset); returns ``(index [B] int32, weights [B])``, weight 0 where the draw
  had to take a padding row (``n_samples < batch_size``)."""
  real = jnp.arange(n_rows) < n_samples
  scores = jnp.where(real, jax.random.uniform(key, (n_rows,)), -1.0)
  top, index = jax.lax.top_k(scores, batch_size)
  return index.astype(jnp.int32), (top >= 0).astype(jnp.float32)


def orthonormal_outputs(y_tilde: jax.Array, orthonorm_weights: jax.Array) -> jax.Array:
  """``Y = Y~ W``: the orthonorm layer applied with given weights ``[K, K]``."""
  return jnp.matmul(y_tilde, orthonorm_weights, precision=_HIGHEST)


def initial_clusters(state: dict, codes: jax.Array, rng: jax.Array, *, n_clusters: int, n_init: int) -> tuple[dict, jax.Array]:
  """k-means on the codes ``[N, D]``: the clustering before the first round. Returns the new
  state and the soft assignments ``[N, K]`` (Student-t around the centroids)."""
  result = cluster.kmeans(rng, codes, n_clusters, n_init=n_init)
  state = {**state, "code_centroids": result.centroids.astype(jnp.float32),
           "clustered": jnp.zeros((), jnp.float32), "n_samples": jnp.asarray(codes.shape[0], jnp.float32)}
  return state, student_t_assign(codes, state["code_centroids"])


def recluster(state: dict, y_tilde: jax.Array, rng: jax.Array, *, n_clusters: int, n_init: int,
              jitter: float, kmeans: bool = True, codes: np.ndarray | jax.Array | None = None) -> dict:
  """The per-round clustering of the outputs (the engine's ``update_clusters``).

  An orthogonalization step on the whole dataset's ``Y~`` ``[N, K]`` sets the orthonorm
  weights, so that ``Y = Y~ W`` satisfies ``Y^T Y / N = I``; then (unless ``kmeans`` is
  False) k-means on ``Y``: k-means++ with ``n_init`` restarts the first time, Lloyd
  iterations from the previous centroids afterwards.

  Given the dataset's ``codes`` ``[N, D]`` (read only then), the first clustering of the
  outputs numbers its clusters after those of k-means on the codes it replaces
  (:func:`jaxclust.cluster.matching_order`), so that a cluster keeps its index through the change: the fraction of changed assignments
  then counts points that moved, not a renaming, and what a model ties to a cluster's index
  (DSCDAN's prior means) stays with that cluster.
  """
  weights = spectral.orthonorm_weights(y_tilde, jitter=jitter)
  centroids = state["centroids"]
  if kmeans:
    y = orthonormal_outputs(y_tilde, weights)
    if float(state["clustered"]) == 0.0:
      result = cluster.kmeans(rng, y, n_clusters, n_init=n_init)
      centroids = result.centroids
      if codes is not None:
        before = cluster.assign(codes, state["code_centroids"])
        centroids = centroids[cluster.matching_order(before, result.labels, n_clusters)]
    else:
      centroids = cluster.lloyd(y, centroids)[0]
  return {**state, "orthonorm": weights, "centroids": centroids.astype(jnp.float32),
          "clustered": jnp.ones((), jnp.float32)}


def spectral_soft_assignments(state: dict, codes: jax.Array, y_tilde: jax.Array | None = None,
                              outputs: jax.Array | None = None) -> jax.Array:
  """Soft assignments ``[B, K]``: Student-t of the outputs ``Y = Y~ W`` around their k-means
  centroids (or the given ``outputs``, already soft assignments), or, before the outputs
  were first clustered, Student-t of the codes around theirs."""
  if outputs is None:
    outputs = student_t_assign(orthonormal_outputs(y_tilde, state["orthonorm"]), state["centroids"])
  on_codes = student_t_assign(codes, state["code_centroids"])
  return jnp.where(state["clustered"] > 0, outputs, on_codes)


def orthonorm_for_step(y_tilde: jax.Array, weights: jax.Array, y_tilde_orth: jax.Array | None,
                       weights_orth: jax.Array | None, *, gradient: bool, jitter: float) -> jax.Array:
  """The orthonorm weights of one gradient step: from the orthogonalization batch's ``Y~``
  (or, when ``y_tilde_orth`` is None, from the step's own batch), held fixed unless
  ``gradient``."""
  if y_tilde_orth is None:
    y_tilde_orth, weights_orth = y_tilde, weights
  orthonorm = spectral.orthonorm_weights(y_tilde_orth, weights=weights_orth, jitter=jitter)
  return orthonorm if gradient else jax.lax.stop_gradient(orthonorm)


def validate_spectral(cfg) -> None:
  """Checks of the spectral head's settings shared by SpectralNet and DSCDAN."""
  if cfg.output_activation not in OUTPUT_ACTIVATIONS:
    raise ConfigError(f"output_activation must be one of {sorted(OUTPUT_ACTIVATIONS)}; got {cfg.output_activation!r}")
  if cfg.orthonorm_batch not in ("separate", "same"):
    raise ConfigError(f"orthonorm_batch must be 'separate' or 'same'; got {cfg.orthonorm_batch!r}")
  if not cfg.spectral_hidden or min(cfg.spectral_hidden) < 1:
    raise ConfigError(f"spectral_hidden must be positive layer sizes; got {cfg.spectral_hidden}")
  if cfg.n_neighbors < 1 or cfg.n_neighbors >= cfg.batch_size:
    raise ConfigError(f"n_neighbors must be between 1 and batch_size - 1; got {cfg.n_neighbors}")
  if cfg.affinity_scale is not None and cfg.affinity_scale <= 0:
    raise ConfigError(f"affinity_scale must be positive; got {cfg.affinity_scale}")
  if cfg.affinity_scale is None and not 1 <= cfg.scale_neighbor < cfg.batch_size:
    raise ConfigError(f"scale_neighbor must be between 1 and batch_size - 1; got {cfg.scale_neighbor}")
  if cfg.orthonorm_jitter < 0:
    raise ConfigError(f"orthonorm_jitter must not be negative; got {cfg.orthonorm_jitter}")
  if cfg.kmeans_n_init < 1:
    raise ConfigError(f"kmeans_n_init must be at least 1; got {cfg.kmeans_n_init}")


def batch_spectral_loss(y: jax.Array, affinity: jax.Array, weights: jax.Array, batch_size: int) -> jax.Array:
  """Eq. 16 of a minibatch over the configured batch size ``B``,
  ``1/B^2 sum_ij w_i w_j W_ij ||y_i - y_j||^2``: for a full batch this is
  :func:`jaxclust.spectral.spectral_loss`; the padded last batch of an epoch counts in
  proportion to its pairs. (Divided by its own ``m^2``, a batch of a few real rows would give
  a gradient about ``B / m`` times larger than a full one, from a meaningless graph, and a
  rescaling optimizer such as RMSprop would take a full-sized step along it.) Rows the
  engine adds to fill every device (weight 0) change nothing."""
  fraction = jnp.sum(weights) / batch_size
  return spectral.spectral_loss(y, affinity, weights=weights) * jnp.square(fraction)


def batch_affinity(cfg, codes: jax.Array, weights: jax.Array) -> jax.Array:
  """The minibatch's kNN affinity ``[B, B]`` on the codes (paper 002 eq. 14), a fixed graph:
  no gradient flows through it."""
  codes = jax.lax.stop_gradient(codes)
  if cfg.affinity_scale is not None:
    return spectral.knn_affinity(codes, cfg.n_neighbors, scale=cfg.affinity_scale, weights=weights)
  return spectral.knn_affinity(codes, cfg.n_neighbors, scale_neighbor=cfg.scale_neighbor, weights=weights)


# ----------------------------------------------------------------------------- SpectralNet


@dataclasses.dataclass(frozen=True)
class SpectralNetConfig(TrainConfig):
  """SpectralNet's settings (KlugerLab/SpectralNet's MNIST settings; the module docstring
  gives the source of each)."""

  batch_size: int = 1024
  learning_rate: float = 1e-3  # spectral phase
  optimizer: str = "rmsprop"  # spectral phase: "rmsprop" (SpectralNet) or "adam"
  warmup_learning_rate: float | None = 1e-3  # autoencoder pretraining, Adam (DEC-keras)
  warmup_epochs: int = 200
  steps_per_round: int = 100  # SpectralNet's "epoch" of 100 minibatches
  max_rounds: int = 400  # spec_ne
  tol: float = 0.01  # see the module docstring

  # the autoencoder whose code space the spectral network reads (DEC's)
  hidden_dims: tuple[int, ...] = (500, 500, 2000)
  embedding_dim: int = 10

  # the spectral network
  spectral_hidden: tuple[int, ...] = (1024, 1024, 512)
  output_activation: str = "tanh"  # of the K-unit layer before the orthonorm layer: tanh, linear, softmax
  orthonorm_batch: str = "separate"  # "separate" (Algorithm 1) or "same" (the gradient step's batch)
  orthonorm_gradient: bool = True  # differentiate through the orthonorm weights (the code); False: Algorithm 1
  orthonorm_jitter: float = 1e-6  # relative; see spectral.orthonorm_weights

  # the affinity
  n_neighbors: int = 2  # SpectralNet's n_nbrs=3 counts the point itself
  scale_neighbor: int = 1  # SpectralNet's scale_nbr=2
  affinity_scale: float | None = None  # None: the batch's median scale_neighbor distance

  kmeans_n_init: int = 10

  def validate(self, n_samples: int) -> None:
    super().validate(n_samples)
    if self.optimizer not in ("rmsprop", "adam"):
      raise ConfigError(f"optimizer must be 'rmsprop' or 'adam'; got {self.optimizer!r}")
    if self.embedding_dim < 1 or any(h < 1 for h in self.hidden_dims):
      raise ConfigError(f"layer sizes must be positive; got {self.hidden_dims} and {self.embedding_dim}")
    validate_spectral(self)


# Per dataset: SpectralNet's batch of 1024 for MNIST-sized data, a smaller one for the 1797
# digits; pretraining lengths that give the autoencoder a comparable number of steps.
DATASET_SETTINGS: dict[str, dict] = {
    "mnist": {"n_clusters": 10},
    "fashion-mnist": {"n_clusters": 10},
    "mnist-test": {"n_clusters": 10, "warmup_epochs": 500},
    "fashion-mnist-test": {"n_clusters": 10, "warmup_epochs": 500},
    "usps": {"n_clusters": 10, "warmup_epochs": 500},
    "digits": {"n_clusters": 10, "batch_size": 256, "warmup_epochs": 500},
}


def settings_from(table: dict[str, dict], dataset: str, image_shape: tuple[int, ...]) -> dict:
  """``table[dataset]``; unknown datasets get the defaults, images under 16 pixels the digits'
  settings but their number of clusters."""
  if dataset in table:
    return dict(table[dataset])
  if min(image_shape[:2]) < 16:
    return {k: v for k, v in table["digits"].items() if k != "n_clusters"}
  return {}


def dataset_settings(dataset: str, image_shape: tuple[int, ...]) -> dict:
  """Settings for ``dataset`` (see :func:`settings_from`)."""
  return settings_from(DATASET_SETTINGS, dataset, image_shape)


class SpectralNet(Algorithm):
  """SpectralNet on an autoencoder's code space, under the engine's contract.

  Parameters: ``{"ae": autoencoder weights, "spectral": spectral network weights,
  MODEL_STATE: spectral_state(...)}``. Targets: the soft assignments of the last E-step
  (the loss does not read them).
  """

  Config = SpectralNetConfig

  def __init__(self, config: SpectralNetConfig, image_shape: tuple[int, ...]):
    self.config = config
    self.image_shape = tuple(image_shape)
    self.autoencoder = nn.MLPAutoencoder(self.image_shape, tuple(config.hidden_dims), config.embedding_dim)
    self.network = nn.SpectralMLP(config.n_clusters, tuple(config.spectral_hidden),
                                  OUTPUT_ACTIVATIONS[config.output_activation])

  def make_optimizer(self, phase):
    """Adam in the warm-up (the engine's default); RMSprop in the spectral phase."""
    cfg = self.config
    if phase == CLUSTERING and cfg.optimizer == "rmsprop":
      return optax.rmsprop(cfg.learning_rate)
    return super().make_optimizer(phase)

  def init(self, rng, example_x):
    key_ae, key_spectral = jax.random.split(rng)
    cfg = self.config
    codes = jnp.zeros((example_x.shape[0], cfg.embedding_dim), jnp.float32)
    return {"ae": self.autoencoder.init(key_ae, example_x)["params"],
            "spectral": self.network.init(key_spectral, codes)["params"],
            MODEL_STATE: spectral_state(cfg.n_clusters, cfg.embedding_dim)}

  # -- pieces

  def _codes(self, params, x):
    """The frozen autoencoder's codes ``[B, D]``."""
    z = self.autoencoder.apply({"params": params["ae"]}, x, method=nn.MLPAutoencoder.encode)
    return jax.lax.stop_gradient(z)

  def _outputs(self, params, codes):
    """``Y~``, the spectral network's output before the orthonorm layer, ``[B, K]``."""
    return self.network.apply({"params": params["spectral"]}, codes)

  # -- the contract

  def warmup_loss(self, params, batch, rng):
    """The autoencoder's reconstruction error (DEC's pretraining)."""
    del rng
    _, reconstruction = self.autoencoder.apply({"params": params["ae"]}, batch["x"])
    rec = losses.reconstruction_error(batch["x"], reconstruction, batch["weights"])
    return rec, {"reconstruction": rec}

  def embed(self, params, x):
    """``[B, D + K]``: the codes and, after them, the spectral network's ``Y~``."""
    codes = self._codes(params, x)
    return jnp.concatenate([codes, self._outputs(params, codes)], axis=1)

  def clustering_features(self, features):
    """The codes; the spectral outputs follow them in ``embed``'s features."""
    return features[:, :self.config.embedding_dim]

  def init_clusters(self, params, features, rng):
    """k-means (``kmeans_n_init`` restarts) on the codes: the assignments before the first
    round; also records the dataset's size for the orthogonalization batches."""
    cfg = self.config
    codes = jnp.asarray(self.clustering_features(features))
    state, soft = initial_clusters(params[MODEL_STATE], codes, rng, n_clusters=cfg.n_clusters,
                                   n_init=cfg.kmeans_n_init)
    return {**params, MODEL_STATE: state}, soft

  def update_clusters(self, params, features, rng):
    """Orthogonalization on the whole dataset, then k-means on the outputs (see
    :func:`recluster`)."""
    cfg = self.config
    y_tilde = jnp.asarray(features[:, cfg.embedding_dim:])
    state = recluster(params[MODEL_STATE], y_tilde, rng, n_clusters=cfg.n_clusters, n_init=cfg.kmeans_n_init,
                      jitter=cfg.orthonorm_jitter, codes=features[:, :cfg.embedding_dim])
    return {**params, MODEL_STATE: state}

  def predict(self, params, x):
    codes = self._codes(params, x)
    return spectral_soft_assignments(params[MODEL_STATE], codes, self._outputs(params, codes))

  def e_step(self, soft_assignments):
    return soft_assignments

  def m_step_loss(self, params, batch, targets, rng):
    """One orthogonalization step and one gradient step (Algorithm 1): the spectral loss
    (eq. 3) of the batch's outputs under the orthogonalization batch's orthonorm weights."""
    del targets
    cfg = self.config
    x, w = batch["x"], batch["weights"]
    state = params[MODEL_STATE]
    codes = self._codes(params, x)
    y_tilde = self._outputs(params, codes)
    y_tilde_orth = weights_orth = None
    if cfg.orthonorm_batch == "separate":
      # batch_size rows, not the batch's padded length: the draw must not depend on the devices.
      index, weights_orth = draw_rows(rng, batch["dataset"].shape[0], cfg.batch_size, state["n_samples"])
      y_tilde_orth = self._outputs(params, self._codes(params, jnp.take(batch["dataset"], index, axis=0)))
    orthonorm = orthonorm_for_step(y_tilde, w, y_tilde_orth, weights_orth, gradient=cfg.orthonorm_gradient,
                                   jitter=cfg.orthonorm_jitter)
    y = orthonormal_outputs(y_tilde, orthonorm)
    loss = batch_spectral_loss(y, batch_affinity(cfg, codes, w), w, cfg.batch_size)
    return loss, {"spectral": loss, MODEL_STATE: {**state, "orthonorm": jax.lax.stop_gradient(orthonorm)}}


Config = SpectralNetConfig
ALGORITHM = SpectralNet
