"""Loss terms, each a pure function returning a scalar mean over (weighted) samples.

Every loss takes optional per-sample ``weights`` ``[N]``: the engine pads the last
minibatch to a fixed shape and gives padding rows weight 0, so a padded batch gives the
same value as the unpadded one.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxclust.errors import ConfigError


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


# ----------------------------------------------------------------------------- paper 002
# The dual autoencoder of DSCDAN (Yang et al., CVPR 2019, Sec. 3.1): mutual information
# between inputs and latent codes (eq. 8-10), a KL prior term, and the reconstruction from
# clean and noisy codes (eq. 11-12).


def _per_sample_mean(values: jax.Array) -> jax.Array:
  """Mean over every axis but the first: ``[N, ...]`` -> ``[N]``."""
  return jnp.mean(values.reshape(values.shape[0], -1), axis=-1)


def jsd_mutual_information(
    positive_scores: ArrayLike,
    negative_scores: ArrayLike,
    weights: ArrayLike | None = None,
    negative_weights: ArrayLike | None = None,
) -> jax.Array:
  """Jensen-Shannon lower bound on the mutual information, from discriminator scores.

  ``E_P[-softplus(-T)] - E_{P x Q}[softplus(T)]`` (paper 002 eq. 8-9; Deep InfoMax, Hjelm et
  al. 2019, eq. 4): ``T`` are the discriminator's unnormalised scores (logits) on positive
  pairs ``(x, z)`` drawn together and on negative pairs ``(x, z')`` with ``z'`` from another
  sample. Since ``log sigmoid(T) = -softplus(-T)`` and ``log(1 - sigmoid(T)) =
  -softplus(T)``, this is eq. 9's ``E_P[log sigma(T)] + E_{PxQ}[log(1 - sigma(T))]``, which
  DSCDAN's code computes from sigmoid outputs as ``mean(log(s_pos + 1e-6) + log(1 - s_neg +
  1e-6))``; the softplus form needs no clamp. It is ``2 JS - log 4`` and at most 0.

  It is to be MAXIMISED by both the encoder and the discriminator: the loss of eq. 10 is
  ``-beta * (global term + local term)``. Scores of the local discriminator ``[N, H, W]``
  are averaged over positions first: eq. 10's ``1/(hw) sum_ij`` of the per-position terms.

  Args:
    positive_scores: ``[N]`` or ``[N, ...]`` scores of the positive pairs.
    negative_scores: ``[M]`` or ``[M, ...]`` scores of the negative pairs.
    weights: optional ``[N]`` weights of the positive pairs (0 for padding).
    negative_weights: optional ``[M]`` weights of the negative pairs; None takes
      ``weights`` (negatives built row by row from the same batch, as
      :func:`shuffle_within_batch` does).

  Returns:
    scalar estimate, to maximise.

  References:
    Hjelm et al., Learning Deep Representations by Mutual Information Estimation and
    Maximization, ICLR 2019; Nowozin et al., f-GAN, NeurIPS 2016.
  """
  positive = -jax.nn.softplus(-jnp.asarray(positive_scores))
  negative = jax.nn.softplus(jnp.asarray(negative_scores))
  if positive.ndim > 1:
    positive = _per_sample_mean(positive)
  if negative.ndim > 1:
    negative = _per_sample_mean(negative)
  if negative_weights is None:
    negative_weights = weights
  return weighted_mean(positive, weights) - weighted_mean(negative, negative_weights)


def batch_permutation(key: jax.Array, batch_size: int, weights: ArrayLike | None = None) -> jax.Array:
  """A random permutation of the rows of a batch that keeps padding rows in place.

  Rows with ``weights > 0`` are permuted uniformly among themselves; rows of weight 0 map to
  themselves, so a real row never draws a padding row. Like DSCDAN's ``shuffling``
  (``tf.random_shuffle``), a row may map to itself (probability ``1/m`` with ``m`` real
  rows), which makes that negative pair a positive one.

  Args:
    key: PRNG key.
    batch_size: ``B``.
    weights: optional ``[B]`` row weights.

  Returns:
    ``[B]`` int32 indices ``perm``: row ``i`` of the shuffled batch is row ``perm[i]``.
  """
  if weights is None:
    return jax.random.permutation(key, batch_size).astype(jnp.int32)
  real = jnp.asarray(weights) > 0
  positions = jnp.arange(batch_size)
  # Real rows in a random order, then padding rows in place order ...
  sources = jnp.argsort(jnp.where(real, jax.random.uniform(key, (batch_size,)), 2.0 + positions))
  # ... are written to the real rows in order, then to the padding rows in order.
  targets = jnp.argsort(jnp.where(real, positions, batch_size + positions))
  return jnp.zeros(batch_size, jnp.int32).at[targets].set(sources.astype(jnp.int32))


def shuffle_within_batch(key: jax.Array, z: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
  """Rows of ``z`` permuted within the batch: the negative samples of paper 002 eq. 10.

  "We randomly select z_t from the disturbed batch to construct a negative sample pair
  according to x" (Sec. 3.1): pairing ``x_i`` with row ``i`` of the result samples the
  product of the marginals ``p(z) p(x)``. DSCDAN's code shuffles the (noisy) codes ``z`` for
  the global term and, in its local term, the feature maps; any ``[B, ...]`` array works.
  See :func:`batch_permutation`.

  Args:
    key: PRNG key.
    z: ``[B, ...]`` array.
    weights: optional ``[B]`` row weights; padding rows stay in place and are never drawn.

  Returns:
    ``[B, ...]`` shuffled array.
  """
  z = jnp.asarray(z)
  return z[batch_permutation(key, z.shape[0], weights)]


def gaussian_kl(
    mu: ArrayLike,
    logvar: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    prior_mean: ArrayLike | None = None,
) -> jax.Array:
  """``KL(N(mu, diag(exp(logvar))) || N(prior_mean, I))``, summed over dimensions.

  Per sample ``1/2 sum_d [exp(logvar_d) + (mu_d - prior_mean_d)^2 - 1 - logvar_d]``: the
  prior term ``E_x[KL(p(z|x) || q(z))]`` of paper 002 eq. 6-10, with ``q(z) = N(0, I)``
  (``prior_mean`` None), or eq. 19's ``q(z|y) = N(mu_y, I)`` with ``prior_mean = mu_y``.
  Summed over the latent dimensions and averaged over samples, as DSCDAN's code does
  (``K.sum(K.mean(kl_loss, 0))``).

  Args:
    mu: ``[N, D]`` means of ``p(z|x)``.
    logvar: ``[N, D]`` log-variances.
    weights: optional ``[N]`` per-sample weights.
    prior_mean: optional mean of the unit-variance prior, broadcastable to ``[N, D]``.

  Returns:
    scalar divergence.

  References:
    Kingma and Welling, Auto-Encoding Variational Bayes, ICLR 2014, Appendix B.
  """
  mu = jnp.asarray(mu)
  logvar = jnp.asarray(logvar)
  if prior_mean is not None:
    mu = mu - jnp.broadcast_to(jnp.asarray(prior_mean), mu.shape)
  per_dim = 0.5 * (jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar)
  per_sample = jnp.sum(per_dim.reshape(per_dim.shape[0], -1), axis=-1)
  return weighted_mean(per_sample, weights)


def sample_gaussian(key: jax.Array, mu: ArrayLike, logvar: ArrayLike) -> jax.Array:
  """``mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``: the reparameterised sample.

  DSCDAN's code builds its noisy codes ``z^`` this way (``sampling`` in ``Conv.py``), from the
  encoder's Gaussian head, where the paper speaks of multiplicative Gaussian noise (see
  :func:`multiplicative_gaussian_noise`).

  Args:
    key: PRNG key.
    mu: ``[N, D]`` means.
    logvar: ``[N, D]`` log-variances.

  Returns:
    ``[N, D]`` samples.
  """
  mu = jnp.asarray(mu)
  eps = jax.random.normal(key, mu.shape, mu.dtype)
  return mu + jnp.exp(0.5 * jnp.asarray(logvar)) * eps


def multiplicative_gaussian_noise(key: jax.Array, z: ArrayLike, *, stddev: float) -> jax.Array:
  """The noisy transformer ``psi`` of paper 002 Sec. 3.1: ``z * (1 + stddev * eps)``,
  ``eps ~ N(0, I)``.

  The paper "consider[s] psi as multiplicative Gaussian noise" without a strength; this is
  Gaussian dropout's form (Srivastava et al. 2014, Sec. 10: multiplicative noise of mean 1).
  The authors' code uses the reparameterised sample instead (:func:`sample_gaussian`).

  Args:
    key: PRNG key.
    z: ``[N, ...]`` latent codes.
    stddev: standard deviation of the multiplicative factor (no default: the paper gives
      none).

  Returns:
    noisy codes ``z^``, same shape as ``z``.
  """
  if isinstance(stddev, (int, float)) and stddev < 0:
    raise ConfigError(f"stddev must be non-negative, got {stddev!r}.")
  z = jnp.asarray(z)
  return z * (1.0 + stddev * jax.random.normal(key, z.shape, z.dtype))


def sum_squared_error(
    target: ArrayLike, reconstruction: ArrayLike, weights: ArrayLike | None = None
) -> jax.Array:
  """``1/N sum_i ||t_i - r_i||_F^2``: squared error summed over each sample's entries.

  Unlike :func:`reconstruction_error` (DEPICT's mean over entries), this is the squared
  Frobenius norm of paper 002 eq. 11-12, averaged over samples as DSCDAN's code does
  (``K.sum(K.mean((a - b) ** 2, 0))``).

  Args:
    target: ``[N, ...]``.
    reconstruction: same shape as ``target``.
    weights: optional ``[N]`` per-sample weights.

  Returns:
    scalar loss.
  """
  target = jnp.asarray(target)
  entries_per_sample = math.prod(target.shape[1:])
  return entries_per_sample * reconstruction_error(target, reconstruction, weights)


def relative_reconstruction_loss(
    reconstruction_noisy: ArrayLike,
    reconstruction_clean: ArrayLike,
    weights: ArrayLike | None = None,
) -> jax.Array:
  """``||x~_{z^} - x~_z||_F^2`` (paper 002 eq. 11): the decoder's outputs from the noisy
  codes against those from the clean codes, per sample, averaged over samples.

  Gradients reach both reconstructions, as in DSCDAN's code.

  Args:
    reconstruction_noisy: ``[N, ...]`` decoder output ``g(z^)``.
    reconstruction_clean: ``[N, ...]`` decoder output ``g(z)``.
    weights: optional ``[N]`` per-sample weights.

  Returns:
    scalar loss.
  """
  return sum_squared_error(reconstruction_clean, reconstruction_noisy, weights)


def dual_reconstruction_loss(
    x: ArrayLike,
    reconstruction_clean: ArrayLike,
    reconstruction_noisy: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    delta: float = 0.5,
) -> jax.Array:
  """``L_r = ||x~_{z^} - x~_z||_F^2 + delta ||x - x~_z||_F^2`` (paper 002 eq. 12).

  The relative reconstruction loss (eq. 11) plus ``delta`` times the ordinary one of the
  clean codes; ``delta = 0.5`` (Sec. 4.3). Each squared Frobenius norm is per sample,
  averaged over samples (:func:`sum_squared_error`). The paper's form is followed: the
  pre-training script of DSCDAN's code (``ConvAE.py``) weights the terms the same way, while
  its joint-training ``Conv.py`` swaps them (``1 * ||x - g(z^)||^2 + 0.5 *
  ||g(z) - g(z^)||^2``) and multiplies both by 5.

  Args:
    x: ``[N, ...]`` inputs.
    reconstruction_clean: ``[N, ...]`` ``x~_z = g(z)``.
    reconstruction_noisy: ``[N, ...]`` ``x~_{z^} = g(psi(z))``.
    weights: optional ``[N]`` per-sample weights.
    delta: weight of the ordinary reconstruction term.

  Returns:
    scalar loss.
  """
  return relative_reconstruction_loss(
      reconstruction_noisy, reconstruction_clean, weights
  ) + delta * sum_squared_error(x, reconstruction_clean, weights)
