"""External clustering metrics: accuracy under the best map, NMI and ARI.

All functions run on the host in NumPy/SciPy. Labels may be any integers (class ids
from a dataset, cluster ids from ``argmax`` of a soft assignment); they are mapped
through :func:`numpy.unique`, so neither labeling needs to be ``0 .. K-1`` and the
number of clusters may differ from the number of classes.

Conventions for degenerate labelings follow scikit-learn: NMI is 1 when both
labelings are constant and 0 when exactly one is; ARI is 1 when both labelings
describe the same trivial partition (both constant, or both all singletons).
"""

import math
from typing import Any

import numpy as np
from scipy import optimize

from jaxclust.errors import ConfigError, DataError

_AVERAGES = ("arithmetic", "geometric", "min", "max")


def _check_labels(labels_true: Any, labels_pred: Any) -> tuple[np.ndarray, np.ndarray]:
  """Validates a pair of labelings and returns them as int64 NumPy arrays.

  Args:
    labels_true: [N] integer ground-truth labels.
    labels_pred: [N] integer predicted cluster labels.

  Returns:
    The two labelings as 1-D int64 arrays.

  Raises:
    DataError: if a labeling is not 1-D, not integer-valued, empty, or the lengths differ.
  """
  out = []
  for name, labels in (("labels_true", labels_true), ("labels_pred", labels_pred)):
    arr = np.asarray(labels)
    if arr.ndim != 1:
      raise DataError(f"{name} must be a 1-D array of labels, got shape {arr.shape}.")
    if arr.size == 0:
      raise DataError(f"{name} is empty; at least one labeled sample is needed.")
    if np.issubdtype(arr.dtype, np.floating):
      if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
        raise DataError(f"{name} must hold integer labels, got non-integer floats.")
    elif not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
      raise DataError(f"{name} must hold integer labels, got dtype {arr.dtype}.")
    out.append(arr.astype(np.int64))
  if out[0].shape[0] != out[1].shape[0]:
    raise DataError(
        f"labels_true and labels_pred must have the same length, got "
        f"{out[0].shape[0]} and {out[1].shape[0]}.")
  return out[0], out[1]


def _contingency(
    labels_true: np.ndarray, labels_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Contingency table of two validated labelings.

  Args:
    labels_true: [N] int64 labels.
    labels_pred: [N] int64 labels.

  Returns:
    A tuple ``(table, classes, clusters)``: ``table`` is ``[C, K]`` int64 with
    ``table[i, j]`` the number of samples of class ``classes[i]`` put in cluster
    ``clusters[j]``; ``classes`` is ``[C]`` and ``clusters`` is ``[K]``, both sorted.
  """
  classes, class_idx = np.unique(labels_true, return_inverse=True)
  clusters, cluster_idx = np.unique(labels_pred, return_inverse=True)
  n_classes, n_clusters = classes.shape[0], clusters.shape[0]
  flat = class_idx.reshape(-1) * n_clusters + cluster_idx.reshape(-1)
  table = np.bincount(flat, minlength=n_classes * n_clusters)
  return table.reshape(n_classes, n_clusters).astype(np.int64), classes, clusters


def confusion_matrix(labels_true: Any, labels_pred: Any) -> np.ndarray:
  """Counts how many samples of each class fall in each cluster.

  Rows follow the sorted unique values of ``labels_true`` and columns the sorted
  unique values of ``labels_pred``; the table is not reordered by any matching.

  Args:
    labels_true: [N] integer ground-truth labels.
    labels_pred: [N] integer predicted cluster labels.

  Returns:
    [n_classes, n_clusters] int64 table of counts that sums to ``N``.
  """
  labels_true, labels_pred = _check_labels(labels_true, labels_pred)
  return _contingency(labels_true, labels_pred)[0]


def _hungarian(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Row and column indices of the one-to-one map with the largest total count."""
  rows, cols = optimize.linear_sum_assignment(-table)
  return rows, cols


def cluster_mapping(labels_true: Any, labels_pred: Any) -> dict[int, int]:
  """Best one-to-one map from clusters to classes.

  Solves the linear assignment problem on the contingency table (Hungarian
  algorithm, Kuhn 1955), maximising the number of samples whose cluster maps to
  their class. When there are more clusters than classes, the clusters left
  without a class are absent from the returned dict; when there are more classes
  than clusters, some classes receive no cluster.

  Args:
    labels_true: [N] integer ground-truth labels.
    labels_pred: [N] integer predicted cluster labels.

  Returns:
    A dict ``{cluster: class}`` with ``min(n_classes, n_clusters)`` entries, keys
    and values being labels as they appear in ``labels_pred`` and ``labels_true``.
  """
  labels_true, labels_pred = _check_labels(labels_true, labels_pred)
  table, classes, clusters = _contingency(labels_true, labels_pred)
  rows, cols = _hungarian(table)
  return {int(clusters[j]): int(classes[i]) for i, j in zip(rows, cols)}


def best_map(labels_true: Any, labels_pred: Any) -> np.ndarray:
  """Relabels predicted clusters with the class they match best.

  Uses the one-to-one map of :func:`cluster_mapping`. Samples in a cluster that
  is matched to no class (more clusters than classes) get a label that does not
  occur in ``labels_true``: ``-1``, or ``min(labels_true) - 1`` when ``-1`` is a
  class. ``np.mean(best_map(y, p) == y)`` is then the clustering accuracy.

  Args:
    labels_true: [N] integer ground-truth labels.
    labels_pred: [N] integer predicted cluster labels.

  Returns:
    [N] int64 array of predictions expressed as classes.
  """
  labels_true, labels_pred = _check_labels(labels_true, labels_pred)
  table, classes, clusters = _contingency(labels_true, labels_pred)
  rows, cols = _hungarian(table)
  unmatched = -1 if not np.any(classes == -1) else int(classes[0]) - 1
  lookup = np.full(clusters.shape[0], unmatched, dtype=np.int64)
  lookup[cols] = classes[rows]
  return lookup[np.searchsorted(clusters, labels_pred)]


def acc(labels_true: Any, labels_pred: Any) -> float:
  """Unsupervised clustering accuracy.

  The fraction of samples whose cluster maps to their class under the best
  one-to-one map between clusters and classes, as used by DEC (Xie et al., 2016)
  and DEPICT (Ghasedi Dizaji et al., 2017).

  Args:
    labels_true: [N] integer ground-truth labels.
    labels_pred: [N] integer predicted cluster labels.

  Returns:
    Accuracy in ``[0, 1]``.
  """
  labels_true, labels_pred = _check_labels(labels_true, labels_pred)
  table = _contingency(labels_true, labels_pred)[0]
  rows, cols = _hungarian(table)
  return float(table[rows, cols].sum() / labels_true.shape[0])


def _entropy(counts: np.ndarray) -> float:
  """Shannon entropy (nats) of the distribution given by positive counts."""
  counts = counts[counts > 0].astype(np.float64)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)))


def _mutual_info(table: np.ndarray) -> float:
  """Mutual information (nats) of the joint distribution given by a contingency table."""
  n = float(table.sum())
  rows = table.sum(axis=1).astype(np.float64)
  cols = table.sum(axis=0).astype(np.float64)
  i, j = np.nonzero(table)
  n_ij = table[i, j].astype(np.float64)
  # sum_ij p_ij log(p_ij / (p_i p_j)) with p = counts / n.
  terms = (n_ij / n) * (np.log(n_ij) + math.log(n) - np.log(rows[i]) - np.log(cols[j]))
  return max(float(np.sum(terms)), 0.0)


def nmi(labels_true: Any, labels_pred: Any, average: str = "arithmetic") -> float:
  """Normalised mutual information.

  ``NMI = I(U; V) / mean(H(U), H(V))`` with natural logarithms, where the mean is
  the one named by ``average`` (Vinh, Epps & Bailey, 2010). ``"arithmetic"``
  matches scikit-learn's default; ``"geometric"`` is the normalisation of Strehl &
  Ghosh (2002) used by many deep clustering papers. NMI is 1 when both labelings
  are constant and 0 when exactly one of them is.

  Args:
    labels_true: [N] integer ground-truth labels.
    labels_pred: [N] integer predicted cluster labels.
    average: one of ``"arithmetic"``, ``"geometric"``, ``"min"``, ``"max"``.

  Returns:
    NMI in ``[0, 1]``.

  Raises:
    ConfigError: if ``average`` is not one of the four names.
  """
  if average not in _AVERAGES:
    raise ConfigError(f"average must be one of {', '.join(_AVERAGES)}, got {average!r}.")
  labels_true, labels_pred = _check_labels(labels_true, labels_pred)
  table = _contingency(labels_true, labels_pred)[0]
  n_classes, n_clusters = table.shape
  if n_classes == 1 and n_clusters == 1:
    return 1.0
  if n_classes == 1 or n_clusters == 1:
    return 0.0
  mi = _mutual_info(table)
  if mi == 0.0:
    return 0.0
  h_true = _entropy(table.sum(axis=1))
  h_pred = _entropy(table.sum(axis=0))
  if average == "arithmetic":
    norm = 0.5 * (h_true + h_pred)
  elif average == "geometric":
    norm = math.sqrt(h_true * h_pred)
  elif average == "min":
    norm = min(h_true, h_pred)
  else:
    norm = max(h_true, h_pred)
  return float(mi / norm)


def _pairs(counts: np.ndarray) -> int:
  """Sum of ``comb(c, 2)`` over counts, as a Python integer.

  Each term and the sum are at most ``comb(N, 2)``, which fits in int64.
  """
  counts = counts.astype(np.int64)
  return int(np.sum(counts * (counts - 1) // 2))


def ari(labels_true: Any, labels_pred: Any) -> float:
  """Adjusted Rand index.

  The Rand index corrected for chance (Hubert & Arabie, 1985), computed from the
  contingency table with pair counts ``comb(n, 2)``:
  ``(index - expected) / (max - expected)`` where ``index = sum_ij comb(n_ij, 2)``,
  ``expected = sum_i comb(a_i, 2) * sum_j comb(b_j, 2) / comb(N, 2)`` and
  ``max = (sum_i comb(a_i, 2) + sum_j comb(b_j, 2)) / 2``. Integer arithmetic is
  exact, so large ``N`` cannot overflow. When the denominator vanishes the two
  labelings are the same trivial partition and the result is 1.

  Args:
    labels_true: [N] integer ground-truth labels.
    labels_pred: [N] integer predicted cluster labels.

  Returns:
    ARI, at most 1, about 0 for random labelings, possibly negative.
  """
  labels_true, labels_pred = _check_labels(labels_true, labels_pred)
  table = _contingency(labels_true, labels_pred)[0]
  n = labels_true.shape[0]
  total = n * (n - 1) // 2
  index = _pairs(table)
  sum_a = _pairs(table.sum(axis=1))
  sum_b = _pairs(table.sum(axis=0))
  # Both sides multiplied by 2 * comb(N, 2) to stay in integers.
  numerator = 2 * (index * total - sum_a * sum_b)
  denominator = (sum_a + sum_b) * total - 2 * sum_a * sum_b
  if denominator == 0:
    return 1.0
  return float(numerator / denominator)


def clustering_scores(labels_true: Any, labels_pred: Any) -> dict[str, float]:
  """The standard external scores of a clustering in one call.

  Args:
    labels_true: [N] integer ground-truth labels.
    labels_pred: [N] integer predicted cluster labels.

  Returns:
    A dict with Python floats under ``"acc"`` (:func:`acc`), ``"nmi"``
    (arithmetic :func:`nmi`), ``"nmi_geometric"`` (geometric :func:`nmi`) and
    ``"ari"`` (:func:`ari`).
  """
  labels_true, labels_pred = _check_labels(labels_true, labels_pred)
  return {
      "acc": acc(labels_true, labels_pred),
      "nmi": nmi(labels_true, labels_pred, average="arithmetic"),
      "nmi_geometric": nmi(labels_true, labels_pred, average="geometric"),
      "ari": ari(labels_true, labels_pred),
  }
