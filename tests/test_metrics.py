"""Tests of jaxclust.metrics against scikit-learn and brute-force references."""

import itertools

import numpy as np
import pytest
from sklearn import metrics as skm

from jaxclust import metrics
from jaxclust.errors import ConfigError, DataError

AVERAGES = ("arithmetic", "geometric", "min", "max")

# (n_classes, n_clusters), including more and fewer clusters than classes.
SHAPES = ((2, 2), (3, 3), (4, 7), (10, 4), (7, 7))


def _random_labelings(seed: int, n_classes: int, n_clusters: int, n: int = 300):
  """A ground truth and a prediction that agrees with it more often than chance."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, n_classes, size=n)
  p = rng.integers(0, n_clusters, size=n)
  agree = rng.random(n) < 0.5
  p[agree] = y[agree] % n_clusters
  # Arbitrary label values: neither labeling is 0..K-1.
  class_values = rng.choice(np.arange(-50, 50), size=n_classes, replace=False)
  cluster_values = rng.choice(np.arange(100, 200), size=n_clusters, replace=False)
  return class_values[y], cluster_values[p]


def _brute_force_acc(y: np.ndarray, p: np.ndarray) -> float:
  """Best accuracy over all one-to-one cluster-to-class maps, by enumeration."""
  classes = list(np.unique(y))
  clusters = list(np.unique(p))
  m = max(len(classes), len(clusters))
  # Pad with placeholder classes that match no sample.
  targets = classes + [None] * (m - len(classes))
  best = 0
  for perm in itertools.permutations(range(m), len(clusters)):
    correct = sum(
        int(np.sum((p == c) & (y == targets[t])))
        for c, t in zip(clusters, perm) if targets[t] is not None)
    best = max(best, correct)
  return best / y.shape[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_nmi_matches_sklearn(seed, shape):
  y, p = _random_labelings(seed, *shape)
  for average in AVERAGES:
    expected = skm.normalized_mutual_info_score(y, p, average_method=average)
    assert metrics.nmi(y, p, average=average) == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_ari_matches_sklearn(seed, shape):
  y, p = _random_labelings(seed, *shape)
  assert metrics.ari(y, p) == pytest.approx(
      skm.adjusted_rand_score(y, p), rel=1e-10, abs=1e-12)


def test_ari_large_n_does_not_overflow():
  rng = np.random.default_rng(3)
  n = 200_000  # comb(n, 2)^2 exceeds the int64 range.
  y = rng.integers(0, 3, size=n)
  p = np.where(rng.random(n) < 0.7, y, rng.integers(0, 3, size=n))
  assert metrics.ari(y, p) == pytest.approx(skm.adjusted_rand_score(y, p), rel=1e-9)


def test_independent_labelings_score_near_zero():
  rng = np.random.default_rng(4)
  y = rng.integers(0, 5, size=5000)
  p = rng.integers(0, 5, size=5000)
  assert abs(metrics.ari(y, p)) < 0.01
  assert metrics.nmi(y, p) < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", ((2, 2), (3, 3), (3, 5), (5, 2), (4, 4)))
def test_acc_matches_brute_force(seed, shape):
  y, p = _random_labelings(seed, *shape, n=60)
  assert metrics.acc(y, p) == pytest.approx(_brute_force_acc(y, p), abs=1e-12)


def test_perfect_labeling_under_permutation():
  rng = np.random.default_rng(5)
  y = rng.integers(0, 6, size=500)
  p = rng.permutation(6)[y] + 10
  assert metrics.acc(y, p) == 1.0
  for average in AVERAGES:
    assert metrics.nmi(y, p, average=average) == pytest.approx(1.0, abs=1e-12)
  assert metrics.ari(y, p) == 1.0
  np.testing.assert_array_equal(metrics.best_map(y, p), y)
  assert metrics.cluster_mapping(y, p) == {int(c): int(k) for c, k in zip(p, y)}


@pytest.mark.parametrize(
    "y, p",
    [
        ([3, 3, 3, 3], [7, 7, 7, 7]),  # both constant
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # only the truth constant
        ([0, 1, 2, 3], [5, 5, 5, 5]),  # only the prediction constant
        ([0, 1, 2, 3], [3, 2, 1, 0]),  # both all singletons
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # anti-correlated, negative ARI
        ([4], [9]),  # a single sample
    ],
)
def test_degenerate_labelings_follow_sklearn(y, p):
  for average in AVERAGES:
    assert metrics.nmi(y, p, average=average) == pytest.approx(
        skm.normalized_mutual_info_score(y, p, average_method=average), abs=1e-12)
  assert metrics.ari(y, p) == pytest.approx(skm.adjusted_rand_score(y, p), abs=1e-12)
  assert metrics.acc(y, p) == pytest.approx(_brute_force_acc(np.array(y), np.array(p)))


def test_constant_labelings_nmi_convention():
  assert metrics.nmi([1, 1, 1], [2, 2, 2]) == 1.0
  assert metrics.nmi([1, 1, 1], [0, 1, 2]) == 0.0
  assert metrics.nmi([0, 1, 2], [2, 2, 2]) == 0.0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", ((3, 3), (4, 7), (10, 4)))
def test_confusion_matrix_matches_loop_count(seed, shape):
  y, p = _random_labelings(seed, *shape)
  table = metrics.confusion_matrix(y, p)
  classes, clusters = sorted(set(y.tolist())), sorted(set(p.tolist()))
  expected = np.zeros((len(classes), len(clusters)), dtype=np.int64)
  for yi, pi in zip(y.tolist(), p.tolist()):
    expected[classes.index(yi), clusters.index(pi)] += 1
  assert table.dtype == np.int64
  np.testing.assert_array_equal(table, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_best_map_invariants(seed, shape):
  y, p = _random_labelings(seed, *shape)
  mapped = metrics.best_map(y, p)
  mapping = metrics.cluster_mapping(y, p)
  n_classes, n_clusters = shape
  assert mapped.shape == y.shape
  # Accuracy is the agreement of the mapped predictions.
  assert np.mean(mapped == y) == pytest.approx(metrics.acc(y, p), abs=1e-12)
  # One-to-one: min(C, K) clusters are matched, each to a different class.
  assert len(mapping) == min(n_classes, n_clusters)
  assert len(set(mapping.values())) == len(mapping)
  assert set(mapping) <= set(p.tolist()) and set(mapping.values()) <= set(y.tolist())
  assert all(type(k) is int and type(v) is int for k, v in mapping.items())
  # The relabeling is a function of the cluster, consistent with the mapping.
  for c in np.unique(p):
    values = np.unique(mapped[p == c])
    assert values.shape == (1,)
    if int(c) in mapping:
      assert values[0] == mapping[int(c)]
    else:
      assert values[0] not in y


def test_best_map_unmatched_label_avoids_classes():
  y = np.array([-1, -1, 0, 0, 1, 1])
  p = np.array([0, 0, 1, 1, 2, 3])
  mapped = metrics.best_map(y, p)
  unmatched = mapped[~np.isin(p, list(metrics.cluster_mapping(y, p)))]
  assert unmatched.size == 1 and unmatched[0] not in y


def test_clustering_scores():
  y, p = _random_labelings(0, 4, 6)
  scores = metrics.clustering_scores(y, p)
  assert set(scores) == {"acc", "nmi", "nmi_geometric", "ari"}
  assert all(type(v) is float for v in scores.values())
  assert scores["acc"] == metrics.acc(y, p)
  assert scores["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y, p))
  assert scores["nmi_geometric"] == pytest.approx(
      skm.normalized_mutual_info_score(y, p, average_method="geometric"))
  assert scores["ari"] == pytest.approx(skm.adjusted_rand_score(y, p))


def test_accepts_integral_floats_and_bools():
  assert metrics.acc(np.array([0.0, 1.0, 1.0]), np.array([True, False, False])) == 1.0


@pytest.mark.parametrize(
    "y, p",
    [
        (np.zeros((3, 2), int), np.zeros((3, 2), int)),  # not 1-D
        ([0, 1, 2], [0, 1]),  # lengths differ
        ([], []),  # empty
        ([0.5, 1.0], [0, 1]),  # non-integer labels
        ([0, np.nan], [0, 1]),
        (["a", "b"], [0, 1]),
    ],
)
def test_bad_inputs_raise_data_error(y, p):
  for fn in (metrics.acc, metrics.nmi, metrics.ari, metrics.best_map,
             metrics.cluster_mapping, metrics.confusion_matrix, metrics.clustering_scores):
    with pytest.raises(DataError):
      fn(y, p)
    with pytest.raises(ValueError):
      fn(y, p)


def test_unknown_average_raises_config_error():
  with pytest.raises(ConfigError):
    metrics.nmi([0, 1], [0, 1], average="harmonic")
