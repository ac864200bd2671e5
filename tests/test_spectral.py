"""Spectral building blocks against independent references.

Orthonormalization (paper 002 eq. 17-18, SpectralNet's orthonorm layer) against NumPy's
Cholesky and QR in float64; the minibatch kNN affinity (eq. 14) against scikit-learn's
``kneighbors_graph`` and SpectralNet's median scale rule; the blockwise whole-dataset graph
against brute-force NumPy neighbours; the spectral loss (eq. 16) against the double sum and
the graph-Laplacian trace form.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from sklearn.neighbors import NearestNeighbors, kneighbors_graph

from jaxclust import spectral
from jaxclust.errors import ConfigError

orthonorm_weights = jax.jit(spectral.orthonorm_weights)
orthonormalize = jax.jit(spectral.cholesky_orthonormalize)
knn_affinity = jax.jit(spectral.knn_affinity, static_argnames=("n_neighbors", "scale_neighbor"))
knn_graph = jax.jit(spectral.knn_graph, static_argnames=("n_neighbors", "block_size"))
spectral_loss = jax.jit(spectral.spectral_loss)
# Gradient of a probe of the orthonormalized outputs: one compilation per shape.
orthonormalize_probe_grad = jax.jit(jax.grad(
    lambda y, probe, jitter=1e-6: jnp.sum(
        jnp.sin(spectral.cholesky_orthonormalize(y, jitter=jitter)) * probe)))


def rng(seed):
  return np.random.default_rng(seed)


def normal(seed, shape):
  return rng(seed).normal(size=shape).astype(np.float32)


def gram_over_m(out, weights=None):
  out = np.asarray(out, np.float64)
  w = np.ones(out.shape[0]) if weights is None else np.asarray(weights, np.float64)
  return (out * w[:, None]).T @ out / w.sum()


# ---------------------------------------------------------------------------- references


def ref_orthonorm_weights(y):
  """sqrt(m) (L^-1)^T with Y^T Y = L L^T (eq. 18), in float64 without jitter."""
  y = np.asarray(y, np.float64)
  chol = np.linalg.cholesky(y.T @ y)
  return np.sqrt(y.shape[0]) * np.linalg.inv(chol).T


def ref_sqrt_m_q(y):
  """sqrt(m) Q of the QR decomposition Y = QR with a positive diagonal of R."""
  q, r = np.linalg.qr(np.asarray(y, np.float64))
  return np.sqrt(y.shape[0]) * q * np.sign(np.diag(r))[None, :]


def ref_affinity(x, k, sigma):
  """(A + A^T) / 2 with A_ij = exp(-d_ij^2 / (2 sigma^2)) on sklearn's kNN graph."""
  dist = kneighbors_graph(np.asarray(x, np.float64), k, mode="distance", include_self=False).toarray()
  a = np.where(dist > 0, np.exp(-dist**2 / (2 * sigma**2)), 0.0)
  return (a + a.T) / 2


def ref_median_scale(x, s):
  """SpectralNet's get_scale: median distance to the s-th neighbour (sklearn counts self)."""
  x = np.asarray(x, np.float64)
  dist, _ = NearestNeighbors(n_neighbors=s + 1).fit(x).kneighbors(x)
  return float(np.median(dist[:, s]))


def ref_neighbors(x, k):
  """Brute force: squared distances with the diagonal excluded, k smallest per row."""
  x = np.asarray(x, np.float64)
  sq = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
  np.fill_diagonal(sq, np.inf)
  order = np.argsort(sq, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(sq, order, axis=1), sq


def ref_spectral_loss(y, w, weights=None):
  """Eq. 16: 1/m^2 sum_ij w_ij ||y_i - y_j||^2, as a double loop."""
  y, w = np.asarray(y, np.float64), np.asarray(w, np.float64)
  n = y.shape[0]
  v = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  total = 0.0
  for i in range(n):
    for j in range(n):
      total += v[i] * v[j] * w[i, j] * np.sum((y[i] - y[j]) ** 2)
  return total / v.sum() ** 2


def symmetric_affinity(seed, n):
  a = rng(seed).uniform(0, 1, (n, n)) * (rng(seed + 1).uniform(size=(n, n)) < 0.4)
  a = (a + a.T) / 2
  np.fill_diagonal(a, 0)
  return a.astype(np.float32)


# ---------------------------------------------------------------------------- orthonormalization


@pytest.mark.parametrize("b,k", [(16, 3), (64, 10), (24, 8)])
def test_orthonormalized_outputs_are_orthonormal(b, k):
  y = normal(b + k, (b, k)) + 0.5  # a common offset: correlated columns
  w = np.asarray(orthonorm_weights(y))
  out = np.asarray(orthonormalize(y))
  np.testing.assert_allclose(gram_over_m(out), np.eye(k), atol=2e-4)
  np.testing.assert_allclose(out, y.astype(np.float64) @ w, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(w, ref_orthonorm_weights(y), rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(out, ref_sqrt_m_q(y), atol=2e-3)
  np.testing.assert_array_equal(np.tril(w, -1), 0.0)  # (L^-1)^T is upper triangular


# Gradients are checked in float64, where finite differences are accurate.


def test_orthonorm_gradient_matches_finite_differences():
  y = normal(1, (12, 4)).astype(np.float64)
  probe = normal(2, (12, 4)).astype(np.float64)
  with jax.enable_x64(True):
    f = jax.jit(lambda a: jnp.sum(jnp.sin(spectral.cholesky_orthonormalize(a)) * probe))
    check_grads(f, (y,), order=1, modes=["rev", "fwd"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "case,jitter",
    [("duplicate_columns", 1e-6), ("duplicate_columns", 0.0), ("zero_rows", 1e-6),
     ("fewer_rows_than_columns", 1e-6), ("all_zero", 0.0)],
)
def test_rank_deficient_batches_stay_finite(case, jitter):
  b, k = 12, 4
  y = normal(3, (b, k))
  expected_rank = {"duplicate_columns": 3, "zero_rows": 2, "fewer_rows_than_columns": 3,
                   "all_zero": 0}[case]
  if case == "duplicate_columns":
    y[:, 3] = y[:, 1]
  elif case == "zero_rows":
    y[2:] = 0.0
  elif case == "fewer_rows_than_columns":
    y = y[:3]
  else:
    y[:] = 0.0
  w = np.asarray(orthonorm_weights(y, jitter=jitter))
  out = np.asarray(orthonormalize(y, jitter=jitter))
  assert np.all(np.isfinite(w)) and np.all(np.isfinite(out))
  # As orthonormal as the rank allows: the Gram matrix has `rank` eigenvalues 1, the rest 0.
  eig = np.sort(np.linalg.eigvalsh(gram_over_m(out)))
  np.testing.assert_allclose(eig, [0.0] * (k - expected_rank) + [1.0] * expected_rank, atol=2e-2)
  grad = orthonormalize_probe_grad(y, normal(4, y.shape), jitter)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_rank_deficient_gradient_matches_finite_differences():
  # The QR path; a larger jitter keeps the curvature within reach of finite differences.
  y = normal(5, (10, 4)).astype(np.float64)
  y[:, 2] = y[:, 0]
  probe = normal(6, (10, 4)).astype(np.float64)
  with jax.enable_x64(True):
    f = jax.jit(lambda a: jnp.sum(jnp.sin(spectral.cholesky_orthonormalize(a, jitter=1e-2)) * probe))
    check_grads(f, (y,), order=1, modes=["rev", "fwd"], atol=1e-5, rtol=1e-5)


def test_nearly_rank_deficient_paths_agree():
  # Just above and just below the switch between the Cholesky and the QR path, the outputs
  # are those of the same formula: Y W with W = sqrt(m) chol(Y^T Y + lambda I)^-T.
  y = normal(7, (20, 3)).astype(np.float64)
  for gap in [1e-1, 1e-3, 1e-5]:
    z = y.copy()
    z[:, 2] = z[:, 0] + gap * normal(8, 20)
    z32 = z.astype(np.float32)
    gram = z32.astype(np.float64).T @ z32
    lam = 1e-6 * np.trace(gram) / 3
    ref = z32 @ (np.sqrt(20) * np.linalg.inv(np.linalg.cholesky(gram + lam * np.eye(3))).T)
    np.testing.assert_allclose(orthonormalize(z32), ref, atol=5e-3)


def test_vmapped_orthonormalization_mixes_both_paths_finitely():
  # Under vmap the branch becomes a select and both paths run for every member.
  good = normal(12, (8, 3))
  bad = good.copy()
  bad[:, 2] = bad[:, 0]
  stack = np.stack([good, bad])
  probes = normal(13, stack.shape)
  np.testing.assert_allclose(jax.jit(jax.vmap(spectral.cholesky_orthonormalize))(stack),
                             [orthonormalize(good), orthonormalize(bad)], rtol=1e-5, atol=1e-5)
  grads = jax.jit(jax.vmap(orthonormalize_probe_grad))(stack, probes)
  assert np.all(np.isfinite(np.asarray(grads)))
  np.testing.assert_allclose(grads[1], orthonormalize_probe_grad(bad, probes[1]), rtol=1e-4, atol=1e-4)


def test_padding_rows_do_not_change_real_rows():
  real = normal(9, (10, 4))
  junk = 100.0 * normal(10, (6, 4))
  y = np.concatenate([real[:4], junk[:3], real[4:], junk[3:]])
  weights = np.array([1] * 4 + [0] * 3 + [1] * 6 + [0] * 3, np.float32)
  keep = weights > 0
  np.testing.assert_allclose(
      orthonorm_weights(y, weights=weights), orthonorm_weights(real), rtol=1e-5, atol=1e-5)
  out = np.asarray(orthonormalize(y, weights=weights))
  np.testing.assert_allclose(out[keep], orthonormalize(real), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gram_over_m(out, weights), np.eye(4), atol=2e-4)


def test_fractional_weights_orthonormalize_the_weighted_gram():
  y = normal(11, (15, 3))
  weights = rng(12).uniform(0.2, 2.0, 15).astype(np.float32)
  out = orthonormalize(y, weights=weights)
  np.testing.assert_allclose(gram_over_m(out, weights), np.eye(3), atol=2e-4)
  # Rows repeated r times weigh as much as weight r.
  counts = np.array([1, 2, 3] * 5)
  repeated = np.repeat(y, counts, axis=0)
  np.testing.assert_allclose(
      orthonorm_weights(y, weights=counts.astype(np.float32)), orthonorm_weights(repeated),
      rtol=1e-4, atol=1e-4)


def test_orthonormalize_compiles_once():
  f = jax.jit(chex.assert_max_traces(spectral.cholesky_orthonormalize, n=1))
  weights = np.ones(8, np.float32)
  for seed in range(3):
    weights[seed] = 0.0
    y = normal(seed, (8, 3))
    y[:, 2] = y[:, 0] if seed == 1 else y[:, 2]  # the QR path, in the same trace
    f(y, weights=weights)


def test_orthonorm_rejects_bad_arguments():
  with pytest.raises(ConfigError):
    spectral.orthonorm_weights(np.ones(5, np.float32))
  with pytest.raises(ConfigError):
    spectral.orthonorm_weights(np.ones((5, 2), np.float32), jitter=-1.0)
  with pytest.raises(ConfigError):
    spectral.orthonorm_weights(np.ones((5, 2), np.float32), weights=np.ones(4, np.float32))


# ---------------------------------------------------------------------------- minibatch affinity


@pytest.mark.parametrize("n,d,k", [(12, 3, 1), (30, 5, 3), (40, 2, 7)])
def test_knn_affinity_matches_sklearn_with_fixed_scale(n, d, k):
  x = normal(n * d + k, (n, d))
  sigma = 1.3
  w = np.asarray(knn_affinity(x, k, scale=sigma))
  np.testing.assert_allclose(w, ref_affinity(x, k, sigma), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(w, w.T)
  np.testing.assert_array_equal(np.diag(w), 0.0)
  assert np.all(w >= 0) and np.all(np.count_nonzero(w, axis=1) >= k)


@pytest.mark.parametrize("k,s", [(3, None), (3, 1), (2, 5)])
def test_knn_affinity_median_scale_rule(k, s):
  x = normal(20 + k, (25, 4))
  sigma = ref_median_scale(x, k if s is None else s)
  w = knn_affinity(x, k, scale_neighbor=s)
  np.testing.assert_allclose(w, ref_affinity(x, k, sigma), rtol=1e-4, atol=1e-6)
  _, sq = knn_graph(x, max(k, s or 0))
  np.testing.assert_allclose(
      spectral.median_neighbor_distance(sq, k if s is None else s), sigma, rtol=1e-5)


def test_knn_affinity_padding_rows_have_no_edges():
  real = normal(30, (18, 3))
  junk = normal(31, (6, 3)) * 0.01  # close to everything near the origin
  x = np.concatenate([junk[:2], real, junk[2:]])
  weights = np.array([0] * 2 + [1] * 18 + [0] * 4, np.float32)
  keep = weights > 0
  for kwargs in [{"scale": 0.8}, {"scale_neighbor": 2}]:
    w = np.asarray(knn_affinity(x, 3, weights=weights, **kwargs))
    np.testing.assert_array_equal(w[~keep], 0.0)
    np.testing.assert_array_equal(w[:, ~keep], 0.0)
    np.testing.assert_allclose(w[np.ix_(keep, keep)], knn_affinity(real, 3, **kwargs),
                               rtol=1e-5, atol=1e-7)


def test_knn_affinity_gradient_is_finite_and_correct():
  x = normal(40, (14, 3))
  x[5] = x[4]  # a duplicate point: distance 0 to its nearest neighbour
  weights = np.array([1] * 12 + [0] * 2, np.float32)
  probe = normal(41, (14, 14))
  for kwargs in [{"scale": 1.0}, {"scale_neighbor": 1}]:
    f = lambda a, kwargs=kwargs: jnp.sum(spectral.knn_affinity(a, 3, weights=weights, **kwargs) * probe)
    grad = jax.jit(jax.grad(f))(x)
    assert np.all(np.isfinite(np.asarray(grad)))
  # Away from ties, finite differences agree (neighbour sets do not change under eps).
  x = normal(42, (10, 2))
  f = jax.jit(lambda a: jnp.sum(spectral.knn_affinity(a, 2, scale_neighbor=2) * probe[:10, :10]))
  check_grads(f, (x,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-3)


def test_knn_affinity_compiles_once():
  f = jax.jit(chex.assert_max_traces(spectral.knn_affinity, n=1), static_argnames=("n_neighbors",))
  for seed in range(3):
    weights = (rng(seed).uniform(size=10) > 0.3).astype(np.float32)
    f(normal(seed, (10, 2)), n_neighbors=2, weights=weights)


def test_knn_affinity_rejects_bad_arguments():
  x = normal(0, (6, 2))
  for k in [0, 6, 2.5]:
    with pytest.raises(ConfigError):
      spectral.knn_affinity(x, k)
  with pytest.raises(ConfigError):
    spectral.knn_affinity(x, 2, scale=1.0, scale_neighbor=1)
  with pytest.raises(ConfigError):
    spectral.knn_affinity(x, 2, scale=0.0)
  with pytest.raises(ConfigError):
    spectral.knn_affinity(x, 2, scale_neighbor=6)


# ---------------------------------------------------------------------------- whole-dataset graph


@pytest.mark.parametrize("block_size", [1, 7, 16, 50, 1024])
def test_knn_graph_in_blocks_matches_brute_force(block_size):
  n, k = 50, 4
  x = normal(50, (n, 5))
  neighbors, sq = knn_graph(x, k, block_size=block_size)
  assert neighbors.shape == (n, k) and neighbors.dtype == jnp.int32 and sq.shape == (n, k)
  ref_idx, ref_sq, all_sq = ref_neighbors(x, k)
  np.testing.assert_allclose(sq, ref_sq, rtol=1e-4, atol=1e-5)
  # The returned distances are those of the returned indices (robust to near ties) ...
  np.testing.assert_allclose(np.take_along_axis(all_sq, np.asarray(neighbors), 1), sq,
                             rtol=1e-4, atol=1e-5)
  # ... and on these data, with no near ties, the indices are the brute-force ones.
  np.testing.assert_array_equal(neighbors, ref_idx)


def test_knn_graph_excludes_self_by_index_not_by_distance():
  x = normal(51, (9, 2))
  x[7] = x[2]
  neighbors, sq = knn_graph(x, 2, block_size=4)
  assert neighbors[2, 0] == 7 and neighbors[7, 0] == 2
  np.testing.assert_allclose(sq[[2, 7], 0], 0.0, atol=1e-6)
  assert not np.any(np.asarray(neighbors) == np.arange(9)[:, None])


def _all_shapes(jaxpr):
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield tuple(getattr(var.aval, "shape", ()))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _all_shapes(sub)


def test_knn_graph_never_builds_an_n_by_n_array():
  n, block = 60, 8
  jaxpr = jax.make_jaxpr(lambda a: spectral.knn_graph(a, 3, block_size=block))(normal(0, (n, 4)))
  largest = max(int(np.prod(shape)) for shape in _all_shapes(jaxpr.jaxpr))
  assert largest <= block * n, largest


def test_knn_affinity_edges_densify_to_symmetrised_matrix():
  n, k = 30, 3
  x = normal(60 + k, (n, 3))
  neighbors, sq = knn_graph(x, k, block_size=8)
  sigma = ref_median_scale(x, k)
  rows, cols, values = spectral.knn_affinity_edges(neighbors, sq, sigma)
  assert rows.shape == cols.shape == values.shape == (2 * n * k,)
  assert rows.dtype == cols.dtype == jnp.int32
  dense = np.zeros((n, n))
  np.add.at(dense, (np.asarray(rows), np.asarray(cols)), np.asarray(values, np.float64))
  np.testing.assert_allclose(dense, ref_affinity(x, k, sigma), rtol=1e-5, atol=1e-7)
  # The whole-dataset graph of a batch-sized dataset is the minibatch affinity.
  np.testing.assert_allclose(dense, knn_affinity(x, k, scale=sigma), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      jnp.zeros((n, n)).at[rows, cols].add(values), dense, rtol=1e-5, atol=1e-7)


def test_knn_graph_rejects_bad_arguments():
  x = normal(0, (6, 2))
  with pytest.raises(ConfigError):
    spectral.knn_graph(x, 6)
  with pytest.raises(ConfigError):
    spectral.knn_graph(x, 2, block_size=0)
  with pytest.raises(ConfigError):
    spectral.knn_affinity_edges(np.zeros((6, 2), np.int32), np.zeros((6, 3), np.float32), 1.0)
  with pytest.raises(ConfigError):
    spectral.median_neighbor_distance(np.zeros((6, 2), np.float32), 3)


# ---------------------------------------------------------------------------- spectral loss


@pytest.mark.parametrize("n,k", [(5, 2), (16, 4)])
def test_spectral_loss_matches_double_sum_and_trace_form(n, k):
  y = normal(70 + n, (n, k))
  w = symmetric_affinity(71 + n, n)
  loss = float(spectral_loss(y, w))
  np.testing.assert_allclose(loss, ref_spectral_loss(y, w), rtol=1e-5)
  # Symmetric w: sum_ij w_ij ||y_i - y_j||^2 = 2 tr(Y^T (D - W) Y).
  y64, w64 = y.astype(np.float64), w.astype(np.float64)
  laplacian = np.diag(w64.sum(axis=1)) - w64
  np.testing.assert_allclose(loss * n**2, 2 * np.trace(y64.T @ laplacian @ y64), rtol=1e-5)


def test_spectral_loss_asymmetric_w_and_gradient():
  y = normal(80, (7, 3))
  w = rng(81).uniform(0, 1, (7, 7)).astype(np.float32)
  np.testing.assert_allclose(spectral_loss(y, w), ref_spectral_loss(y, w), rtol=1e-5)
  check_grads(jax.jit(lambda a: spectral.spectral_loss(a, w)), (y,), order=2, modes=["rev"],
              atol=1e-2, rtol=1e-2)


def test_spectral_loss_padding_equals_dropping_rows():
  n = 12
  y = normal(90, (n, 3))
  w = symmetric_affinity(91, n)
  weights = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0], np.float32)
  keep = weights > 0
  np.testing.assert_allclose(
      spectral_loss(y, w, weights=weights), spectral_loss(y[keep], w[np.ix_(keep, keep)]),
      rtol=1e-5)
  np.testing.assert_allclose(spectral_loss(y, w, weights=weights),
                             ref_spectral_loss(y, w, weights), rtol=1e-5)
  assert float(spectral_loss(y, w, weights=np.zeros(n, np.float32))) == 0.0


def test_spectral_loss_with_orthonormalized_outputs_on_two_clusters():
  # Two well-separated blobs: the orthonormalized indicator-like outputs have a much lower
  # loss than outputs that mix the blobs.
  x = np.concatenate([normal(100, (10, 2)) * 0.1, normal(101, (10, 2)) * 0.1 + 5.0])
  w = knn_affinity(x, 3, scale=1.0)
  good = np.concatenate([np.tile([1.0, 0.1], (10, 1)), np.tile([0.1, 1.0], (10, 1))])
  bad = np.tile(good[:10], (2, 1))
  bad[::2] = good[10:12].mean(axis=0)
  bad = bad + 0.01 * normal(102, bad.shape)
  good = good + 0.01 * normal(103, good.shape)
  loss_good = spectral_loss(orthonormalize(good.astype(np.float32)), w)
  loss_bad = spectral_loss(orthonormalize(bad.astype(np.float32)), w)
  assert float(loss_good) < 0.1 * float(loss_bad)


def test_spectral_loss_rejects_bad_shapes():
  with pytest.raises(ConfigError):
    spectral.spectral_loss(np.ones((4, 2), np.float32), np.ones((3, 3), np.float32))
