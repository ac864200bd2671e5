"""Cluster-assignment heads: embeddings in, soft assignments out.

Every head is a pure function of arrays; rows of the result sum to one.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def softmax_logits(z: ArrayLike, theta: ArrayLike, bias: ArrayLike | None = None) -> jax.Array:
  """Logits ``theta_k^T z_i (+ b_k)`` of the multinomial logistic regression head.

  Args:
    z: embeddings, ``[N, D]``.
    theta: softmax weights, ``[D, K]``.
    bias: optional bias, ``[K]``.

  Returns:
    logits, ``[N, K]``.
  """
  logits = jnp.asarray(z) @ jnp.asarray(theta)
  if bias is not None:
    logits = logits + jnp.asarray(bias)[None, :]
  return logits


def softmax_assign(z: ArrayLike, theta: ArrayLike, bias: ArrayLike | None = None) -> jax.Array:
  """Soft cluster assignments of DEPICT's softmax layer.

  ``p_ik = exp(theta_k^T z_i) / sum_k' exp(theta_k'^T z_i)`` (DEPICT, eq. 1).

  Args:
    z: embeddings, ``[N, D]``.
    theta: softmax weights, ``[D, K]``.
    bias: optional bias, ``[K]``.

  Returns:
    p: ``[N, K]``, rows sum to one.

  References:
    Ghasedi Dizaji et al., Deep Clustering via Joint Convolutional Autoencoder Embedding and
    Relative Entropy Minimization, ICCV 2017.
  """
  return jax.nn.softmax(softmax_logits(z, theta, bias), axis=-1)


def student_t_assign(z: ArrayLike, centroids: ArrayLike, alpha: float = 1.0) -> jax.Array:
  """Soft assignments by a Student-t kernel around the centroids.

  ``q_ij = (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha+1)/2)``, normalised over j
  (DEC, Xie et al. 2016, eq. 1).

  Args:
    z: embeddings, ``[N, D]``.
    centroids: cluster centres ``mu``, ``[K, D]``.
    alpha: degrees of freedom of the Student-t distribution.

  Returns:
    q: ``[N, K]``, rows sum to one.
  """
  z = jnp.asarray(z)
  centroids = jnp.asarray(centroids)
  sq_dist = jnp.sum(jnp.square(z[:, None, :] - centroids[None, :, :]), axis=-1)
  log_kernel = -(alpha + 1.0) / 2.0 * jnp.log1p(sq_dist / alpha)
  return jax.nn.softmax(log_kernel, axis=-1)
