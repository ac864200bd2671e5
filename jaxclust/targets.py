"""Target distributions: the auxiliary variable Q that soft assignments are trained towards."""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

_EPS = 1e-12


def _normalise_prior(prior: ArrayLike | None, num_clusters: int, dtype) -> jax.Array:
  if prior is None:
    return jnp.full((num_clusters,), 1.0 / num_clusters, dtype)
  prior = jnp.asarray(prior, dtype)
  return prior / jnp.sum(prior)


def depict_target(
    p: ArrayLike,
    prior: ArrayLike | None = None,
    *,
    form: str = "paper",
    weights: ArrayLike | None = None,
) -> jax.Array:
  """DEPICT's target distribution Q, regularised towards a prior on cluster frequencies.

  ``form="paper"`` (DEPICT eq. 7): ``q_ik ∝ p_ik (u_k / sum_i' p_i'k)^(1/2)``.
  With a uniform prior ``u`` this is eq. 7 exactly. For any other prior it is the same
  derivation: setting the gradient of eq. 5 (eq. 6 without its O(1/N) term) to zero gives
  ``q_ik ∝ p_ik u_k / f_k``; at the fixed point ``f_k ∝ (u_k sum_i p_ik)^(1/2)``, which
  gives the square root above.

  ``form="squared"``: the authors' code, ``q_ik ∝ p_ik^2 u_k / sum_i' p_i'k`` (their
  ``u`` is uniform; the prior enters the same way as in the paper's form).

  Args:
    p: soft assignments of the clean pathway, ``[N, K]``.
    prior: cluster-frequency prior ``u``, ``[K]``, any positive vector (normalised here);
      ``None`` means uniform.
    form: ``"paper"`` or ``"squared"``.
    weights: optional ``[N]`` row weights for the cluster frequencies (0 for padding rows).

  Returns:
    q: ``[N, K]``, rows sum to one.
  """
  p = jnp.asarray(p)
  num_clusters = p.shape[-1]
  u = _normalise_prior(prior, num_clusters, p.dtype)
  wp = p if weights is None else p * jnp.asarray(weights, p.dtype)[:, None]
  frequency = jnp.sum(wp, axis=0)
  if form == "paper":
    unnormalised = p * jnp.sqrt(u / (frequency + _EPS))[None, :]
  elif form == "squared":
    unnormalised = jnp.square(p) * (u / (frequency + _EPS))[None, :]
  else:
    raise ValueError(f"unknown depict_target form {form!r}; use 'paper' or 'squared'")
  return unnormalised / jnp.sum(unnormalised, axis=-1, keepdims=True)


def dec_target(q: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
  """DEC's auxiliary target distribution: ``p_ij ∝ q_ij^2 / f_j`` with ``f_j = sum_i q_ij``.

  (DEC, Xie et al. 2016, eq. 3; paper 003, eq. 3.)

  Args:
    q: soft assignments, ``[N, K]``.
    weights: optional ``[N]`` row weights for the cluster frequencies.

  Returns:
    p: ``[N, K]``, rows sum to one.
  """
  q = jnp.asarray(q)
  wq = q if weights is None else q * jnp.asarray(weights, q.dtype)[:, None]
  frequency = jnp.sum(wq, axis=0)
  unnormalised = jnp.square(q) / (frequency[None, :] + _EPS)
  return unnormalised / jnp.sum(unnormalised, axis=-1, keepdims=True)
