"""Clustering by inter-class separation (Das, Ghosh and Bhowmick, "Deep Representation Learning
Characterized by Inter-class Separation for Image Clustering", WACV 2019; paper 003).

A convolutional autoencoder with DEC's Student-t clustering layer on its embedding, trained
on four terms (eq. 7):

1. Warm-up: the autoencoder on the reconstruction error alone (eq. 1), three epochs
   (Sec. 3.3), so that the latent space can choose negatives.
2. Initial clusters: k-means on the embedding gives the centroids; each sample's first
   target is DEC's ``p`` (eq. 3) and its first negative comes from Algorithm 1.
3. Rounds of ``steps_per_round`` minibatch steps on
   ``L = w_r L_rec + w_c KL(P || Q) + w_t L_triplet - w_e L_entropy`` (eq. 7), where
   ``L_triplet`` (eq. 5) pulls the embedding of each anchor ``x`` towards that of an
   augmented copy (rotation, scale, shift; erasing and flip optional) and pushes it from
   that of its selected negative, and ``L_entropy`` (eq. 6) is the entropy of the batch's
   mean assignment minus the mean entropy of the assignments, maximised. Then an E-step
   over the dataset: the new ``q`` (eq. 2), targets ``p`` (eq. 3) and negatives
   (Algorithm 1). Stop when fewer than ``tol`` of the assignments changed.

Negative selection (Algorithm 1, as far as the text tells it: "selects ... as a negative
image from the dataset [an image] whose latent representation does not fall within the
distribution of the augmented images of the anchor image"): the predict pass embeds each
sample and ``negative_augmentations`` augmented copies of it; the distribution of the copies
is summarised by the radius ``r_i``, the largest distance from the anchor's embedding to a
copy's. Each anchor draws ``negative_candidates`` samples uniformly from the dataset and
takes the first whose embedding lies farther than ``negative_radius_scale * r_i`` from its
own: a random image from outside the ball, as drawing images until one falls outside would
give. If none of the candidates does, it takes the farthest one. Memory: ``N x C`` candidate
indices, distances computed in blocks of ``NEGATIVE_BLOCK`` anchors (``NEGATIVE_BLOCK x C x D``
floats); never an ``N x N`` matrix. Deviations: the paper's exact test of "within the
distribution" is lost in our copy; ours is the ball above.

Randomness without an rng argument: ``predict`` and ``e_step`` get no key, so their draws
(the augmented copies, the candidates) are keyed by the config's seed and the number of
training steps taken so far, which the losses count in the model state. ``predict`` also
folds in the bit pattern of the sum of its chunk, so that chunks get different transforms.
The same seed gives the same draws, and each round draws anew.

Where each formula and value comes from (our copy of the paper lost its equations and most
numbers):

- Eq. 1 reconstruction: per-pixel squared error (:func:`jaxclust.losses.reconstruction_error`).
- Eq. 2-4 Student-t ``q``, target ``p = q^2 / f`` and ``KL(P || Q)``: the paper says it follows
  DEC [34]; DEC's equations 1-3 with ``alpha = 1`` (DEC).
- Eq. 5 triplet: FaceNet's hinge on squared distances (the text: anchor, positive, negative
  and a margin "so the network doesn't optimize towards" zero distances). The margins 0.24
  (shallow) and 0.3 (deep) survive in the text (Sec. 4.4). FaceNet keeps embeddings on the
  unit sphere, where margins of that size are meaningful, so the triplet term sees
  L2-normalised embeddings by default (``triplet_normalize``; our choice).
- Eq. 6 entropy constraint: "the difference between the entropy of the average of the
  [assignments] and the entropy of the [assignments]" over the batch, after Bridle et al.
  [5] (:func:`jaxclust.losses.entropy_constraint`, RIM / IMSAT's mutual information).
- Eq. 7 weights: the text gives four hyperparameters but their values were lost. Ours:
  reconstruction 1, clustering 0.1 (IDEC's gamma for the same pair of terms), triplet 1,
  entropy 0.1. Each is a config key; 0 drops the term (the paper's ablation, Sec. 4.4).
- Network (Sec. 4.3): three conv layers, each with a max-pool, batch norm and ReLU, then a
  fully connected embedding; the decoder a fully connected layer and three deconvolutions;
  the deep variant two more of each; zero padding; Xavier initialisation. Kernel sizes,
  strides, channel counts and the feature dimensions were lost: 3x3 convolutions of stride
  1 and 2x2 pools of stride 2 (our choice), 32-64-128 channels (DCEC's, Guo et al. 2017)
  and 32-64-128-256-512 for the deep variant, embedding 10 (DEC's) for the shallow and 32
  for the deep variant (our choices). See :class:`jaxclust.nn.IcsAutoencoder`.
- Optimiser: Adam (Sec. 4.3); the rate was lost, 1e-3 (Adam's default). Batch size 256,
  update interval 140 steps (30 for data of USPS's size or smaller, the 10000-image test
  splits included), ``tol`` 0.001 and k-means with 20
  restarts: DEC's (the paper does not give them). At most 50 rounds (our choice, sized
  for a CPU).
- Batch norm (Sec. 4.3, "to each layer"): running averages with momentum 0.99
  (TensorFlow's default, the paper's framework); padding rows stay out of the batch
  statistics. The embedding and the output layer have none.
- Inputs: the paper standardises them; jaxclust scales images to [-1, 1] (background -1,
  which the augmentations fill in with).
- Augmentations: the paper lists rotation, scale, erasing and flip without amounts; ours:
  up to 10 degrees, scale 0.9-1.1, shift up to 2 pixels (1 on images under 16 pixels), no
  erasing and no flip (digits and clothing are not mirror-invariant). Four copies per
  sample estimate the radius (our choice), 16 candidates per anchor (our choice).
- Warm-up: three epochs of reconstruction (Sec. 3.3), for MNIST's 70000 images; smaller
  datasets get as many steps (``DATASET_SETTINGS``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxclust import augment, cluster, losses, nn
from jaxclust.engine import MODEL_STATE, Algorithm, TrainConfig
from jaxclust.errors import ConfigError
from jaxclust.heads import student_t_assign
from jaxclust.targets import dec_target

# Conv channels, embedding size and triplet margin of the two networks of Sec. 4.3-4.4.
VARIANTS: dict[str, dict] = {
    "shallow": {"features": (32, 64, 128), "embedding_dim": 10, "margin": 0.24},
    "deep": {"features": (32, 64, 128, 256, 512), "embedding_dim": 32, "margin": 0.3},
}
NEGATIVE_BLOCK = 4096  # anchors whose candidate distances are computed at once


def conv_autoencoder(image_shape: tuple[int, int, int], variant: str = "shallow", *,
                     features: tuple[int, ...] | None = None, embedding_dim: int | None = None,
                     transposed_conv: str = "dilated") -> nn.IcsAutoencoder:
  """The paper's shallow or deep convolutional autoencoder for ``image_shape`` ``(H, W, C)``;
  ``features`` and ``embedding_dim`` override the variant's."""
  if variant not in VARIANTS:
    raise ConfigError(f"conv_variant must be one of {sorted(VARIANTS)}; got {variant!r}")
  preset = VARIANTS[variant]
  return nn.IcsAutoencoder(
      tuple(image_shape),
      tuple(features or preset["features"]),
      embedding_dim or preset["embedding_dim"],
      transposed_conv,
  )


def init_autoencoder(model: nn.IcsAutoencoder, rng: jax.Array, example_x: jax.Array) -> tuple[dict, dict]:
  """``(weights, batch_stats)`` of a freshly initialised conv autoencoder."""
  variables = model.init(rng, example_x)
  return variables["params"], variables["batch_stats"]


def apply_autoencoder(model: nn.IcsAutoencoder, params: dict, x: jax.Array, method=None,
                      weights: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Runs ``method`` (default: ``__call__``) of the conv autoencoder.

  ``params`` holds the weights under ``"ae"`` and the batch-norm running averages under
  ``params[MODEL_STATE]["batch_stats"]``. Without ``weights`` (inference) batch norm uses
  the running averages and the second output is ``{}``; with ``weights`` ``[B]`` (a training
  step) it normalises by the statistics of the rows of positive weight and returns
  ``{MODEL_STATE: new_model_state}``, the terms entry the engine stores after the step.
  """
  state = params[MODEL_STATE]
  variables = {"params": params["ae"], "batch_stats": state["batch_stats"]}
  if weights is None:
    return model.apply(variables, x, method=method), {}
  output, updated = model.apply(variables, x, train=True, mask=weights > 0, method=method,
                                mutable=["batch_stats"])
  return output, {MODEL_STATE: {**state, "batch_stats": updated["batch_stats"]}}


def select_negatives(key: jax.Array, embeddings: jax.Array, radii: jax.Array, *, n_candidates: int,
                     radius_scale: float = 1.0, block_size: int = NEGATIVE_BLOCK) -> jax.Array:
  """Algorithm 1 of paper 003: a negative for every anchor, from outside the distribution of
  the anchor's augmented copies in latent space.

  Each anchor ``i`` draws ``n_candidates`` indices uniformly (with replacement) and takes
  the first candidate ``j`` with ``||z_j - z_i|| > radius_scale * r_i``; if there is none,
  the candidate farthest from ``z_i``. Distances are computed for ``block_size`` anchors at
  a time: memory ``O(N * n_candidates + block_size * n_candidates * D)``.

  Args:
    key: PRNG key of the candidate draw.
    embeddings: ``[N, D]`` embeddings ``z`` of the dataset.
    radii: ``[N]`` radius ``r_i`` of each anchor's augmented copies around ``z_i``.
    n_candidates: candidates drawn per anchor.
    radius_scale: multiplies the radii.
    block_size: anchors per block.

  Returns:
    ``[N]`` int32 index of each anchor's negative.
  """
  embeddings = jnp.asarray(embeddings)
  n = embeddings.shape[0]
  candidates = jax.random.randint(key, (n, n_candidates), 0, n, dtype=jnp.int32)

  def choose(anchor):
    z_d, radius, candidates_c = anchor
    sq_dist_c = jnp.sum(jnp.square(jnp.take(embeddings, candidates_c, axis=0) - z_d[None, :]), axis=-1)
    outside_c = sq_dist_c > jnp.square(radius_scale * radius)
    pick = jnp.where(jnp.any(outside_c), jnp.argmax(outside_c), jnp.argmax(sq_dist_c))
    return candidates_c[pick]

  return jax.lax.map(choose, (embeddings, jnp.asarray(radii), candidates), batch_size=min(block_size, n))


@dataclasses.dataclass(frozen=True)
class IcsConfig(TrainConfig):
  """The settings of paper 003 (Sec. 4.3-4.4) and our choices where its numbers were lost;
  the module docstring gives the source of each."""

  batch_size: int = 256
  learning_rate: float = 1e-3  # Adam, both phases
  warmup_epochs: int = 3  # Sec. 3.3: reconstruction pretraining before negatives are chosen
  steps_per_round: int = 140  # DEC's update interval
  max_rounds: int = 50
  tol: float = 0.001

  # network (Sec. 4.3); None takes the variant's value from VARIANTS
  conv_variant: str = "shallow"  # "shallow" (MNIST, USPS) or "deep" (CIFAR, FRGC, ImageNet)
  conv_features: tuple[int, ...] | None = None
  embedding_dim: int | None = None
  transposed_conv: str = "dilated"  # or "subpixel": same function, see nn.conv_transpose
  alpha: float = 1.0  # Student-t degrees of freedom (eq. 2)
  kmeans_n_init: int = 20

  # eq. 7: the weight of each term; 0 drops it
  reconstruction_weight: float = 1.0
  clustering_weight: float = 0.1
  triplet_weight: float = 1.0
  entropy_weight: float = 0.1
  # eq. 5
  margin: float | None = None  # None: the variant's (0.24 shallow, 0.3 deep)
  triplet_normalize: bool = True  # L2-normalise the embeddings in the triplet term (FaceNet)
  triplet_squared: bool = True  # squared Euclidean distances (FaceNet)

  # the positive: an augmented copy of the anchor
  max_degrees: float = 10.0
  scale_range: tuple[float, float] = (0.9, 1.1)
  max_shift: float = 2.0
  erasing_probability: float = 0.0
  flip_probability: float = 0.0

  # Algorithm 1: the negative
  negative_augmentations: int = 4  # copies per sample whose spread gives the radius
  negative_candidates: int = 16  # samples drawn per anchor
  negative_radius_scale: float = 1.0

  def validate(self, n_samples: int) -> None:
    super().validate(n_samples)
    if self.conv_variant not in VARIANTS:
      raise ConfigError(f"conv_variant must be one of {sorted(VARIANTS)}; got {self.conv_variant!r}")
    if self.conv_features is not None and (not self.conv_features or min(self.conv_features) < 1):
      raise ConfigError(f"conv_features must be positive channel counts; got {self.conv_features}")
    if self.embedding_dim is not None and self.embedding_dim < 1:
      raise ConfigError(f"embedding_dim must be at least 1; got {self.embedding_dim}")
    if self.transposed_conv not in ("dilated", "subpixel"):
      raise ConfigError(f"transposed_conv must be 'dilated' or 'subpixel'; got {self.transposed_conv!r}")
    if self.alpha <= 0:
      raise ConfigError(f"alpha must be positive; got {self.alpha}")
    for name in ("reconstruction_weight", "clustering_weight", "triplet_weight", "entropy_weight",
                 "max_degrees", "max_shift", "negative_radius_scale"):
      if getattr(self, name) < 0:
        raise ConfigError(f"{name} must not be negative; got {getattr(self, name)}")
    if self.margin is not None and self.margin < 0:
      raise ConfigError(f"margin must not be negative; got {self.margin}")
    if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
      raise ConfigError(f"scale_range must be (low, high) with 0 < low <= high; got {self.scale_range}")
    for name in ("erasing_probability", "flip_probability"):
      if not 0 <= getattr(self, name) <= 1:
        raise ConfigError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
    for name in ("negative_augmentations", "negative_candidates", "kmeans_n_init"):
      if getattr(self, name) < 1:
        raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")


# Three epochs of MNIST's 70000 images in batches of 256 are 822 warm-up steps; smaller
# datasets get about as many. The 10000-image test splits update the targets every 30 steps,
# DEC-keras's interval for USPS (9298 images), as small data does. Images under 16 pixels
# shift by at most one pixel.
DATASET_SETTINGS: dict[str, dict] = {
    "mnist": {"n_clusters": 10},
    "fashion-mnist": {"n_clusters": 10},
    "mnist-test": {"n_clusters": 10, "warmup_epochs": 21, "steps_per_round": 30},
    "fashion-mnist-test": {"n_clusters": 10, "warmup_epochs": 21, "steps_per_round": 30},
    "usps": {"n_clusters": 10, "warmup_epochs": 23, "steps_per_round": 30},
    "digits": {"n_clusters": 10, "warmup_epochs": 100, "steps_per_round": 30, "max_shift": 1.0},
}


def dataset_settings(dataset: str, image_shape: tuple[int, ...]) -> dict:
  """Settings for ``dataset``; unknown datasets get the defaults (small images: the digits')."""
  if dataset in DATASET_SETTINGS:
    return dict(DATASET_SETTINGS[dataset])
  if min(image_shape[:2]) < 16:
    return {"steps_per_round": 30, "max_shift": 1.0}
  return {}


class Ics(Algorithm):
  """Clustering by inter-class separation (paper 003) under the engine's contract.

  Parameters: ``{"ae": autoencoder weights, "centroids": [K, D], MODEL_STATE: {"batch_stats":
  running averages, "steps": training steps taken}}``. Targets: ``{"q": [N, K] DEC targets,
  "negative": [N] int32}``.
  """

  Config = IcsConfig

  def __init__(self, config: IcsConfig, image_shape: tuple[int, int, int]):
    self.config = config
    self.image_shape = tuple(image_shape)
    self.model = conv_autoencoder(self.image_shape, config.conv_variant, features=config.conv_features,
                                  embedding_dim=config.embedding_dim, transposed_conv=config.transposed_conv)
    self.margin = VARIANTS[config.conv_variant]["margin"] if config.margin is None else config.margin

  def init(self, rng, example_x):
    weights, batch_stats = init_autoencoder(self.model, rng, example_x)
    centroids = jnp.zeros((self.config.n_clusters, self.model.embedding_dim), jnp.float32)
    return {"ae": weights, "centroids": centroids,
            MODEL_STATE: {"batch_stats": batch_stats, "steps": jnp.zeros((), jnp.float32)}}

  # -- pieces

  def _augment(self, key, x):
    cfg = self.config
    return augment.augment(key, x, max_degrees=cfg.max_degrees, scale_range=tuple(cfg.scale_range),
                           max_shift=cfg.max_shift, erasing_probability=cfg.erasing_probability,
                           flip_probability=cfg.flip_probability)

  def _draw_key(self, steps: jax.Array, purpose: int) -> jax.Array:
    """A key for the draws of ``predict`` (purpose 0) or ``e_step`` (1): a function of the
    seed and of the number of training steps so far."""
    key = jax.random.fold_in(jax.random.key(self.config.seed), purpose)
    return jax.random.fold_in(key, steps.astype(jnp.int32))

  def _step_terms(self, params, new_state: dict) -> dict:
    """The model-state entry of a step's terms: new batch statistics, one more step."""
    return {MODEL_STATE: {**new_state[MODEL_STATE], "steps": params[MODEL_STATE]["steps"] + 1.0}}

  def _selection_features(self, params, x):
    """``(z [B, D], r [B])``: the clean embedding and the radius of Algorithm 1, the largest
    distance from ``z`` to the embedding of one of ``negative_augmentations`` copies. Without
    the triplet term (``triplet_weight=0``) no negatives are chosen: the copies are not
    embedded and ``r`` is 0."""
    if not self._uses_triplet:
      z, _ = apply_autoencoder(self.model, params, x, nn.IcsAutoencoder.encode)
      return z, jnp.zeros(z.shape[:1], z.dtype)
    copies = self.config.negative_augmentations
    chunk_bits = jax.lax.bitcast_convert_type(jnp.sum(x), jnp.uint32)
    key = jax.random.fold_in(self._draw_key(params[MODEL_STATE]["steps"], 0), chunk_bits)
    augmented = self._augment(key, jnp.tile(x, (copies, 1, 1, 1)))
    z_all, _ = apply_autoencoder(self.model, params, jnp.concatenate([x, augmented]),
                                 nn.IcsAutoencoder.encode)
    b = x.shape[0]
    z, z_copies = z_all[:b], z_all[b:].reshape(copies, b, -1)
    radius = jnp.sqrt(jnp.max(jnp.sum(jnp.square(z_copies - z[None]), axis=-1), axis=0))
    return z, radius

  @property
  def _uses_triplet(self) -> bool:
    return self.config.triplet_weight > 0

  def _negatives(self, key, z, radius):
    """Algorithm 1's negative of each row; zeros (unused) without the triplet term."""
    if not self._uses_triplet:
      return jnp.zeros(z.shape[:1], jnp.int32)
    cfg = self.config
    return select_negatives(key, z, radius, n_candidates=cfg.negative_candidates,
                            radius_scale=cfg.negative_radius_scale)

  # -- the contract

  def warmup_loss(self, params, batch, rng):
    """Eq. 1 alone: the reconstruction error."""
    del rng
    (_, reconstruction), state = apply_autoencoder(self.model, params, batch["x"], weights=batch["weights"])
    rec = losses.reconstruction_error(batch["x"], reconstruction, batch["weights"])
    return rec, {"reconstruction": rec, **self._step_terms(params, state)}

  def embed(self, params, x):
    """``[B, D + 1]``: the embedding, and in the last column the radius of Algorithm 1, which
    ``init_clusters`` needs for the first negatives."""
    z, radius = self._selection_features(params, x)
    return jnp.concatenate([z, radius[:, None]], axis=1)

  def clustering_features(self, features):
    """The embedding; Algorithm 1's radius follows it in ``embed``'s features."""
    return features[:, :-1]

  def init_clusters(self, params, features, rng):
    """k-means (``kmeans_n_init`` restarts) on the embedding gives the centroids; the first
    targets are DEC's ``p`` (eq. 3) of the resulting ``q``, the first negatives Algorithm 1's."""
    features = jnp.asarray(features)
    z, radius = self.clustering_features(features), features[:, -1]
    key_kmeans, key_negatives = jax.random.split(rng)
    result = cluster.kmeans(key_kmeans, z, self.config.n_clusters, n_init=self.config.kmeans_n_init)
    params = {**params, "centroids": result.centroids.astype(jnp.float32)}
    q = student_t_assign(z, params["centroids"], self.config.alpha)
    return params, {"q": dec_target(q), "negative": self._negatives(key_negatives, z, radius)}

  def predict(self, params, x):
    """``{"soft": q (eq. 2), "embedding": z, "radius": r, "steps": [B]}``, the last three for
    the E-step's negative selection."""
    z, radius = self._selection_features(params, x)
    steps = jnp.broadcast_to(params[MODEL_STATE]["steps"], (x.shape[0],))
    return {"soft": student_t_assign(z, params["centroids"], self.config.alpha), "embedding": z,
            "radius": radius, "steps": steps}

  def e_step(self, predicted):
    """DEC's targets (eq. 3) and new negatives (Algorithm 1)."""
    key = self._draw_key(predicted["steps"][0], 1)
    return {"q": dec_target(predicted["soft"]),
            "negative": self._negatives(key, predicted["embedding"], predicted["radius"])}

  def m_step_loss(self, params, batch, targets, rng):
    """Eq. 7: ``w_r L_rec + w_c KL(P || Q) + w_t L_triplet - w_e L_entropy``.

    Anchors are the batch's images, positives ``augment(rng, x)``, negatives the dataset rows
    at ``targets["negative"]``; the three go through the encoder as one batch. Terms of
    weight 0 leave the loss; the reconstruction and triplet terms are then not computed
    (nor reported), the cheap clustering and entropy terms still are.
    """
    cfg = self.config
    x, w = batch["x"], batch["weights"]
    b = x.shape[0]
    inputs, input_weights = x, w
    if self._uses_triplet:
      positives = self._augment(rng, x)
      negatives = jnp.take(batch["dataset"], targets["negative"], axis=0)
      inputs, input_weights = jnp.concatenate([x, positives, negatives]), jnp.tile(w, 3)
    z_all, state = apply_autoencoder(self.model, params, inputs, nn.IcsAutoencoder.encode, input_weights)
    z = z_all[:b]
    q = student_t_assign(z, params["centroids"], cfg.alpha)
    terms = {"clustering": losses.kl_divergence(targets["q"], q, w),
             "entropy": losses.entropy_constraint(q, w)}
    if cfg.reconstruction_weight > 0:
      reconstruction, state = apply_autoencoder(self.model, {**params, **state}, z, nn.IcsAutoencoder.decode, w)
      terms["reconstruction"] = losses.reconstruction_error(x, reconstruction, w)
    if self._uses_triplet:
      embeddings = z_all
      if cfg.triplet_normalize:
        sq_norms = jnp.sum(jnp.square(embeddings), axis=-1, keepdims=True)
        embeddings = embeddings * jax.lax.rsqrt(jnp.maximum(sq_norms, 1e-12))
      anchor, positive, negative = jnp.split(embeddings, 3)
      terms["triplet"] = losses.triplet_loss(anchor, positive, negative, self.margin, w,
                                             squared=cfg.triplet_squared)
    signs = {"reconstruction": 1.0, "clustering": 1.0, "triplet": 1.0, "entropy": -1.0}
    loss = jnp.zeros(())
    for name, value in terms.items():
      weight = getattr(cfg, f"{name}_weight")
      if weight > 0:
        loss = loss + signs[name] * weight * value
    return loss, {**terms, **self._step_terms(params, state)}


Config = IcsConfig
ALGORITHM = Ics
