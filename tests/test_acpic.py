"""Tests of jaxclust.acpic against dense NumPy references written here."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from jaxclust import acpic
from jaxclust.errors import ConfigError


def _dense_transition(x, k, a):
  d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  order = np.argsort(d2, axis=1)[:, 1:k + 1]
  near = np.take_along_axis(d2, order, axis=1)
  scale = near.mean() * a
  while np.any(np.exp(-near[:, 0] / scale) < 1e-5):
    scale *= 2
  w = np.eye(len(x))
  for i in range(len(x)):
    w[i, order[i]] = np.exp(-near[i] / scale)
  return w / w.sum(1, keepdims=True), order[:, 0]


def _dense_integral(p, nodes, n_start, z):
  sub = p[np.ix_(nodes, nodes)]
  ones = np.zeros(len(nodes))
  ones[:n_start] = 1
  return ones @ np.linalg.solve(np.eye(len(nodes)) - z * sub, ones) / n_start ** 2


def _reference_acpic(x, n_clusters, k=20, a=1.0, z=0.01):
  """AC-PIC as the paper states it, recomputing every affinity after every merge."""
  p, nearest = _dense_transition(x, k, a)
  n = len(x)
  labels = np.arange(n)
  for i in range(n):  # join each sample with its nearest neighbour
    labels[labels == labels[nearest[i]]] = labels[i]
  edges = (p > 0) | (p.T > 0)
  while len(np.unique(labels)) > n_clusters:
    best, pair = -np.inf, None
    clusters = np.unique(labels)
    for i, ca in enumerate(clusters):
      for cb in clusters[i + 1:]:
        ma, mb = np.flatnonzero(labels == ca), np.flatnonzero(labels == cb)
        if not edges[np.ix_(ma, mb)].any():
          continue
        union = np.concatenate([ma, mb])
        aff = (_dense_integral(p, union, len(ma), z) - _dense_integral(p, ma, len(ma), z)
               + _dense_integral(p, union[::-1], len(mb), z) - _dense_integral(p, mb, len(mb), z))
        if aff > best:
          best, pair = aff, (ca, cb)
    labels[labels == pair[1]] = pair[0]
  return labels


def test_transition_matches_the_dense_construction():
  x = np.random.default_rng(0).normal(size=(80, 3))
  p, nearest = acpic.knn_transition(x, n_neighbors=6, a=0.5)
  expected, expected_nearest = _dense_transition(x, 6, 0.5)
  np.testing.assert_allclose(p.toarray(), expected, rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(nearest, expected_nearest)
  np.testing.assert_allclose(np.asarray(p.sum(1)).ravel(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("n_start", [7, 19])
def test_path_integral_matches_the_inverse(n_start):
  x = np.random.default_rng(1).normal(size=(60, 4))
  p, _ = acpic.knn_transition(x, n_neighbors=8)
  nodes = np.random.default_rng(2).permutation(60)[:19]
  for z in (0.01, 0.3):
    np.testing.assert_allclose(acpic.path_integral(p, nodes, n_start, z),
                               _dense_integral(p.toarray(), nodes, n_start, z), rtol=1e-10)


def test_conditional_integrals_are_both_clusters_integrals_over_their_union():
  x = np.random.default_rng(3).normal(size=(60, 4))
  p, _ = acpic.knn_transition(x, n_neighbors=8)
  order = np.random.default_rng(4).permutation(60)
  a, b = order[:9], order[9:23]
  union = np.concatenate([a, b])
  for z in (0.01, 0.3):
    s_a, s_b = acpic.conditional_integrals(p, a, b, z)
    np.testing.assert_allclose(s_a, _dense_integral(p.toarray(), union, len(a), z), rtol=1e-10)
    np.testing.assert_allclose(s_b, _dense_integral(p.toarray(), union[::-1], len(b), z), rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_acpic_matches_the_reference(seed):
  x = np.random.default_rng(seed).normal(size=(70, 3))
  labels = acpic.acpic(x, 4, n_neighbors=5)
  expected = _reference_acpic(x, 4, k=5)
  assert labels.dtype == np.int32 and sorted(np.unique(labels)) == [0, 1, 2, 3]
  assert adjusted_rand_score(expected, labels) == 1.0


def test_acpic_recovers_separated_blobs():
  x, y = make_blobs(n_samples=600, centers=5, cluster_std=0.5, random_state=0)
  assert adjusted_rand_score(y, acpic.acpic(x, 5)) == 1.0


@pytest.mark.parametrize("kwargs", [{"n_clusters": 1}, {"n_clusters": 31}, {"n_clusters": 3, "z": 1.0}])
def test_bad_arguments(kwargs):
  with pytest.raises(ConfigError):
    acpic.acpic(np.random.default_rng(0).normal(size=(30, 2)), **kwargs)


def test_disconnected_graph_merges_the_nearest_components():
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [100.0, 0.0], [130.0, 0.0]])
  x = np.concatenate([c + rng.normal(scale=0.1, size=(10, 2)) for c in centres])
  labels = acpic.acpic(x, 2, n_neighbors=3)
  assert len(np.unique(labels[:10])) == 1 and len(np.unique(labels[10:])) == 1
  assert labels[0] != labels[10]
