"""Loss terms, each a pure function returning a scalar mean over (weighted) samples.

Every loss takes optional per-sample ``weights`` ``[N]``: the engine pads the last
minibatch to a fixed shape and gives padding rows weight 0, so a padded batch gives the
same value as the unpadded one.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def weighted_mean(values: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
  """Mean of per-sample ``values`` ``[N]`` under ``weights`` ``[N]`` (plain mean if None)."""
  values = jnp.asarray(values)
  if weights is None:
    return jnp.mean(values)
  weights = jnp.asarray(weights, values.dtype)
  total = jnp.sum(weights)
  # All-zero weights (a batch of padding only) give 0 instead of 0/0.
  return jnp.where(total > 0, jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0), 0.0)


def soft_cross_entropy(
    logits: ArrayLike, targets: ArrayLike, weights: ArrayLike | None = None
) -> jax.Array:
  """Cross-entropy of soft predictions against soft targets.

  ``-1/N sum_i sum_k q_ik log p_ik`` with ``p = softmax(logits)`` (DEPICT eq. 8, and the
  clustering term of eq. 12 when ``logits`` come from the noisy pathway).

  Args:
    logits: ``[N, K]`` unnormalised log-probabilities.
    targets: ``[N, K]`` target distributions ``q`` (rows sum to one).
    weights: optional ``[N]`` per-sample weights.

  Returns:
    scalar loss.
  """
  log_p = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
  per_sample = -jnp.sum(jnp.asarray(targets) * log_p, axis=-1)
  return weighted_mean(per_sample, weights)


def kl_divergence(
    q: ArrayLike, p: ArrayLike, weights: ArrayLike | None = None, eps: float = 1e-12
) -> jax.Array:
  """``KL(Q || P) = 1/N sum_i sum_k q_ik log(q_ik / p_ik)`` (DEPICT eq. 2; DEC eq. 2).

  Terms with ``q_ik = 0`` contribute zero.

  Args:
    q: ``[N, K]`` target distributions.
    p: ``[N, K]`` model distributions.
    weights: optional ``[N]`` per-sample weights.

  Returns:
    scalar divergence.
  """
  q = jnp.asarray(q)
  p = jnp.asarray(p)
  per_sample = jnp.sum(jnp.where(q > 0, q * (jnp.log(q + eps) - jnp.log(p + eps)), 0.0), axis=-1)
  return weighted_mean(per_sample, weights)


def reconstruction_error(
    target: ArrayLike, reconstruction: ArrayLike, weights: ArrayLike | None = None
) -> jax.Array:
  """``1/N sum_i 1/|z_i| ||z_i - z_hat_i||^2``: squared error normalised by the layer size.

  Args:
    target: ``[N, ...]`` layer activations (or inputs).
    reconstruction: same shape as ``target``.
    weights: optional ``[N]`` per-sample weights.

  Returns:
    scalar loss.
  """
  diff = jnp.asarray(target) - jnp.asarray(reconstruction)
  per_sample = jnp.mean(jnp.square(diff).reshape(diff.shape[0], -1), axis=-1)
  return weighted_mean(per_sample, weights)


def layerwise_reconstruction(
    clean: Sequence[ArrayLike],
    reconstructed: Sequence[ArrayLike],
    weights: ArrayLike | None = None,
    layer_weights: Sequence[float] | None = None,
) -> tuple[jax.Array, list[jax.Array]]:
  """DEPICT's multi-layer (MdA) reconstruction term.

  ``1/N sum_i sum_{l=0}^{L-1} 1/|z^l_i| ||z^l_i - z_hat^l_i||^2`` between the clean encoder
  layers ``z^l`` (``z^0`` is the input) and the decoder layers ``z_hat^l`` (DEPICT eq. 12,
  second term).

  Args:
    clean: the clean encoder's layers ``[z^0, ..., z^{L-1}]``, each ``[N, ...]``.
    reconstructed: the decoder's layers in the same order and shapes.
    weights: optional ``[N]`` per-sample weights.
    layer_weights: optional factor per layer (the paper uses 1 for every layer).

  Returns:
    ``(total, per_layer)``: the weighted sum and the unweighted term of each layer.
  """
  if len(clean) != len(reconstructed):
    raise ValueError(f"{len(clean)} clean layers but {len(reconstructed)} reconstructed ones")
  if layer_weights is None:
    layer_weights = [1.0] * len(clean)
  per_layer = [reconstruction_error(z, z_hat, weights) for z, z_hat in zip(clean, reconstructed)]
  total = sum(w * term for w, term in zip(layer_weights, per_layer))
  return total, per_layer


def _entropy(p: jax.Array, eps: float) -> jax.Array:
  """``H(p) = -sum_k p_k log p_k`` over the last axis (``eps`` keeps log and gradient finite)."""
  return -jnp.sum(p * jnp.log(p + eps), axis=-1)


def entropy_constraint(
    q: ArrayLike, weights: ArrayLike | None = None, eps: float = 1e-12
) -> jax.Array:
  """Entropy of the mean assignment minus the mean entropy of the assignments.

  ``H(1/N sum_i q_i) - 1/N sum_i H(q_i)`` with ``H(p) = -sum_k p_k log p_k`` (paper 003,
  eq. 6: "the difference between the entropy of the average of the assignments and the
  entropy of the assignments", after Bridle et al. 1992; the mutual information between
  samples and clusters of RIM and IMSAT). The first term is large when the batch is spread
  over all clusters, the second small when each sample is assigned unambiguously.

  It is to be MAXIMISED: an objective to minimise subtracts it (``loss - lambda * term``).
  It lies in ``[0, log K]``: 0 when every row is the same distribution, ``log K`` when the
  rows are one-hot and spread evenly over the ``K`` clusters.

  Args:
    q: ``[N, K]`` soft assignments (rows sum to one), e.g. the Student-t ``q`` of eq. 2.
    weights: optional ``[N]`` per-sample weights; they weight both the batch-mean
      distribution and the mean entropy, so rows of weight 0 change neither.
    eps: added inside the logarithms.

  Returns:
    scalar, the term to maximise.

  References:
    Das et al., Clustering by Inter-Class Separation, WACV 2019 (paper 003);
    Krause et al., Discriminative Clustering by Regularized Information Maximization, 2010;
    Hu et al., Learning Discrete Representations via Information Maximizing Self-Augmented
    Training, ICML 2017.
  """
  q = jnp.asarray(q)
  mean_q = jax.vmap(weighted_mean, in_axes=(1, None))(q, weights)
  return _entropy(mean_q, eps) - weighted_mean(_entropy(q, eps), weights)


def triplet_loss(
    anchor: ArrayLike,
    positive: ArrayLike,
    negative: ArrayLike,
    margin: float,
    weights: ArrayLike | None = None,
    *,
    squared: bool = True,
) -> jax.Array:
  """Triplet hinge loss on embeddings.

  ``1/N sum_i max(0, ||a_i - p_i||^2 - ||a_i - n_i||^2 + margin)`` (paper 003, eq. 5, the
  inter-class separation term; FaceNet, Schroff et al. 2015, eq. 1): pulls the anchor
  towards its positive (an augmented copy) and pushes it from its negative by at least
  ``margin``.

  Args:
    anchor: ``[N, D]`` embeddings of the anchors.
    positive: ``[N, D]`` embeddings of the positives.
    negative: ``[N, D]`` embeddings of the negatives.
    margin: the margin ``alpha`` (paper 003 uses 0.24 and 0.3).
    weights: optional ``[N]`` per-sample weights.
    squared: squared Euclidean distances (FaceNet); if False, plain Euclidean distances,
      whose gradient at zero distance is taken as zero.

  Returns:
    scalar loss.

  References:
    Schroff et al., FaceNet: A Unified Embedding for Face Recognition and Clustering, CVPR 2015.
  """
  anchor = jnp.asarray(anchor)

  def distance(other: ArrayLike) -> jax.Array:
    sq_dist = jnp.sum(jnp.square(anchor - jnp.asarray(other)), axis=-1)
    if squared:
      return sq_dist
    # sqrt has an infinite derivative at 0: take it only of positive values.
    positive_part = sq_dist > 0
    return jnp.where(positive_part, jnp.sqrt(jnp.where(positive_part, sq_dist, 1.0)), 0.0)

  per_sample = jax.nn.relu(distance(positive) - distance(negative) + margin)
  return weighted_mean(per_sample, weights)
