"""Tests of jaxclust.cluster against scikit-learn and NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from jaxclust import cluster
from jaxclust.errors import ConfigError, DataError

# One shape for (nearly) every call, so that each jitted function compiles once.
N, D, K = 1500, 5, 4


def _random_points(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(N, D)).astype(np.float32)


def _sq_dists64(x, c) -> np.ndarray:
  """[N, K] squared distances in float64, by direct differences."""
  diff = np.asarray(x, np.float64)[:, None, :] - np.asarray(c, np.float64)[None, :, :]
  return np.sum(diff * diff, axis=-1)


def _blobs(centers=K, cluster_std=0.6, seed=0):
  x, y = make_blobs(
      n_samples=N, n_features=D, centers=centers, cluster_std=cluster_std,
      random_state=seed)
  return x.astype(np.float32), y


@pytest.fixture(scope="module")
def random_fit():
  x = _random_points(0)
  return x, cluster.kmeans(jax.random.key(0), x, K)


def test_kmeans_recovers_blobs():
  x, y = _blobs()
  result = cluster.kmeans(jax.random.key(1), x, K)
  assert adjusted_rand_score(y, np.asarray(result.labels)) == pytest.approx(1.0)
  # Each centroid is the mean of its blob.
  for j in range(K):
    members = x[np.asarray(result.labels) == j]
    np.testing.assert_allclose(result.centroids[j], members.mean(axis=0), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_inertia_close_to_sklearn(seed):
  x = _random_points(seed)
  ours = cluster.kmeans(jax.random.key(seed), x, K)
  # One OpenMP thread: scikit-learn's threads fight with the XLA CPU thread pool.
  with threadpool_limits(1):
    reference = KMeans(n_clusters=K, n_init=10, random_state=seed).fit(x.astype(np.float64))
  assert float(ours.inertia) <= 1.01 * reference.inertia_


def test_kmeans_result_is_consistent(random_fit):
  x, result = random_fit
  assert result.centroids.shape == (K, D) and result.centroids.dtype == jnp.float32
  assert result.labels.shape == (N,) and result.labels.dtype == jnp.int32
  assert result.inertia.shape == () and result.inertia.dtype == jnp.float32
  labels, centroids = np.asarray(result.labels), np.asarray(result.centroids, np.float64)
  assert labels.min() >= 0 and labels.max() < K
  # The returned inertia is the one of the returned labels and centroids.
  inertia = np.sum((x.astype(np.float64) - centroids[labels]) ** 2)
  assert float(result.inertia) == pytest.approx(inertia, rel=1e-5)
  # The labels are the nearest centroids.
  np.testing.assert_array_equal(labels, np.asarray(cluster.assign(x, result.centroids)))


def test_kmeans_same_key_same_result(random_fit):
  x, first = random_fit
  second = cluster.kmeans(jax.random.key(0), x, K)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_assign_is_nearest_centroid():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(N, D)).astype(np.float32)
  c = rng.normal(size=(K, D)).astype(np.float32)
  # Small chunks, so that padding of the last chunk is exercised.
  labels = np.asarray(cluster.assign(x, c, chunk_size=64))
  d = _sq_dists64(x, c)
  best = d.min(axis=1)
  # Equal to the float64 argmin up to float32 rounding at near-ties.
  np.testing.assert_allclose(d[np.arange(N), labels], best, rtol=1e-5, atol=1e-5)
  assert np.mean(labels == d.argmin(axis=1)) > 0.999


def test_lloyd_matches_sklearn_from_same_init():
  x, _ = _blobs(cluster_std=2.5, seed=3)
  init = x[:K]
  centroids, labels, inertia, n_iter = cluster.lloyd(x, init, max_iter=300, tol=0.0)
  with threadpool_limits(1):
    reference = KMeans(
        n_clusters=K, init=init.astype(np.float64), n_init=1, max_iter=300, tol=0.0,
        algorithm="lloyd").fit(x.astype(np.float64))
  np.testing.assert_allclose(centroids, reference.cluster_centers_, atol=1e-4)
  np.testing.assert_array_equal(labels, reference.labels_)
  assert float(inertia) == pytest.approx(reference.inertia_, rel=1e-5)
  assert 1 <= int(n_iter) <= 300


def test_lloyd_single_step_is_mean_of_assigned_points():
  x = _random_points(4)
  init = x[:K]
  centroids, _, _, n_iter = cluster.lloyd(x, init, max_iter=1)
  assert int(n_iter) == 1
  nearest = _sq_dists64(x, init).argmin(axis=1)
  expected = np.stack([x[nearest == j].mean(axis=0) for j in range(K)])
  np.testing.assert_allclose(centroids, expected, atol=1e-5)


def test_lloyd_loose_tolerance_stops_after_one_step():
  x = _random_points(4)
  _, _, _, n_iter = cluster.lloyd(x, x[:K], tol=1e9)
  assert int(n_iter) == 1


def test_lloyd_empty_cluster_keeps_its_centroid():
  x, _ = _blobs(centers=K - 1, seed=5)
  far = np.full((1, D), 1e3, np.float32)
  init = np.concatenate([x[:K - 1], far])
  centroids, labels, _, _ = cluster.lloyd(x, init)
  np.testing.assert_array_equal(np.asarray(centroids)[K - 1], far[0])
  assert not np.any(np.asarray(labels) == K - 1)


def test_kmeans_plus_plus_seeds_are_distinct_points_of_x():
  x = _random_points(5)
  seeds = np.asarray(cluster.kmeans_plus_plus_init(jax.random.key(3), x, K))
  assert seeds.shape == (K, D) and seeds.dtype == np.float32
  matches = np.all(seeds[:, None, :] == x[None, :, :], axis=-1)  # [K, N]
  assert np.all(matches.any(axis=1))
  assert len(set(matches.argmax(axis=1).tolist())) == K


def test_kmeans_plus_plus_covers_separated_blobs():
  x, y = _blobs(cluster_std=0.3, seed=6)
  for seed in range(5):
    seeds = np.asarray(cluster.kmeans_plus_plus_init(jax.random.key(seed), x, K))
    rows = np.all(seeds[:, None, :] == x[None, :, :], axis=-1).argmax(axis=1)
    assert sorted(y[rows].tolist()) == list(range(K))


def test_kmeans_plus_plus_is_jittable():
  x = _random_points(0)[:50]
  init = jax.jit(cluster.kmeans_plus_plus_init, static_argnums=2)
  seeds = np.asarray(init(jax.random.key(0), x, 3))
  assert np.all(np.all(seeds[:, None, :] == x[None, :, :], axis=-1).any(axis=1))


@pytest.mark.parametrize("n_clusters", [0, 1, N + 1])
def test_kmeans_bad_n_clusters_raises_config_error(n_clusters):
  with pytest.raises(ConfigError):
    cluster.kmeans(jax.random.key(0), _random_points(0), n_clusters)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_kmeans_non_finite_raises_data_error(bad):
  x = _random_points(0)
  x[10, 2] = bad
  with pytest.raises(DataError):
    cluster.kmeans(jax.random.key(0), x, K)


def test_kmeans_wrong_rank_raises_data_error():
  with pytest.raises(DataError):
    cluster.kmeans(jax.random.key(0), np.zeros(10, np.float32), 2)


def _agreement(reference, labels, order):
  """Points whose cluster in ``labels``, renumbered by ``order``, equals their ``reference``."""
  renumber = np.empty_like(order)
  renumber[order] = np.arange(len(order))
  return int(np.sum(renumber[labels] == reference))


@pytest.mark.parametrize("seed", range(4))
def test_matching_order_is_the_best_renumbering_by_brute_force(seed):
  import itertools
  rng = np.random.default_rng(seed)
  n_clusters = 5
  reference = rng.integers(0, n_clusters, 200)
  # Another labeling: mostly a renumbering of the reference, with noise; cluster 4 may be empty.
  labels = np.where(rng.random(200) < 0.6, rng.permutation(n_clusters)[reference], rng.integers(0, 4, 200))
  order = cluster.matching_order(reference, labels, n_clusters)
  assert sorted(order.tolist()) == list(range(n_clusters))
  best = max(_agreement(reference, labels, np.asarray(p)) for p in itertools.permutations(range(n_clusters)))
  assert _agreement(reference, labels, order) == best


def test_matching_order_renumbers_centroids_after_the_reference():
  x, y = _blobs()
  result = cluster.kmeans(jax.random.key(3), x, K)
  order = cluster.matching_order(y, result.labels, K)
  renumbered = np.asarray(cluster.assign(x, result.centroids[order]))
  np.testing.assert_array_equal(renumbered, y)  # well-separated blobs: every point agrees


@pytest.mark.parametrize("reference, labels, n_clusters", [
    ([0, 1, 2], [0, 1], 3),
    ([0, 1, 3], [0, 1, 2], 3),
    ([0, 1, 2], [0, -1, 2], 3),
])
def test_matching_order_bad_labels_raise_data_error(reference, labels, n_clusters):
  with pytest.raises(DataError, match="matching_order"):
    cluster.matching_order(reference, labels, n_clusters)
