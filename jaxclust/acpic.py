"""Agglomerative clustering via maximum incremental path integral (AC-PIC; Zhang, Zhao and
Wang, Pattern Recognition 2013), the clustering DEPICT's paper names beside k-means for its
initial assignments and the authors' code runs on MNIST-test and USPS.

On the host, in NumPy and SciPy: a directed K-nearest-neighbour graph, the initial clusters
of each sample joined with its nearest neighbour, then the pair of clusters with the largest
incremental path integral merged until ``n_clusters`` remain.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from jaxclust.errors import ConfigError, DataError


def knn_transition(features: np.ndarray, n_neighbors: int = 20, a: float = 1.0) -> tuple[sp.csr_matrix, np.ndarray]:
  """The random walk on the directed K-NN graph: ``(P [N, N] CSR, nearest neighbour [N])``.

  ``w_ij = exp(-d_ij^2 / s^2)`` for ``j`` among the ``n_neighbors`` nearest neighbours of
  ``i``, ``w_ii = 1``, ``s^2 = a * mean_i,j d_ij^2`` over those neighbours (doubled until
  every sample's nearest neighbour weighs at least 1e-5), and ``P`` the row-normalised ``W``.
  """
  from sklearn.neighbors import NearestNeighbors

  n = len(features)
  dist, index = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(features).kneighbors(features)
  d2, index = dist[:, 1:] ** 2, index[:, 1:]
  scale = d2.mean() * a
  if scale <= 0:
    raise DataError("AC-PIC: every sample coincides with its neighbours; nothing to cluster by")
  while np.any(np.exp(-d2[:, 0] / scale) < 1e-5):
    scale *= 2
  rows = np.repeat(np.arange(n), n_neighbors)
  w = sp.csr_matrix((np.exp(-d2 / scale).ravel(), (rows, index.ravel())), shape=(n, n))
  w = (w + sp.identity(n, format="csr")).tocsr()
  return sp.diags(1.0 / np.asarray(w.sum(axis=1)).ravel()) @ w, index[:, 0]


def _restrict(p: sp.csr_matrix, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``P`` restricted to ``nodes``, as COO arrays ``(rows, cols, values)`` numbered by position
  in ``nodes``. Gathered from the CSR arrays directly: scipy's fancy indexing costs about
  0.2 ms a call, which over the tens of thousands of small clusters' pairs was most of the
  clustering's time."""
  m = len(nodes)
  local = np.full(p.shape[0], -1, np.int64)
  local[nodes] = np.arange(m)
  starts = p.indptr[nodes]
  counts = p.indptr[nodes + 1] - starts
  offsets = np.cumsum(counts) - counts
  positions = np.repeat(starts - offsets, counts) + np.arange(counts.sum())
  rows = np.repeat(np.arange(m), counts)
  cols = local[p.indices[positions]]
  keep = cols >= 0
  return rows[keep], cols[keep], p.data[positions[keep]]


def _series(p: sp.csr_matrix, nodes: np.ndarray, starts: list[slice], z: float, tol: float) -> list[float]:
  """``1_a^T (sum_k z^k P_C^k) 1_a`` over ``C = nodes`` for each ``a = nodes[start]`` of
  ``starts``, the series summed to ``z^k < tol``."""
  rows, cols, values = _restrict(p, nodes)
  m = len(nodes)
  totals = []
  for start in starts:
    term = np.zeros(m)
    term[start] = 1.0
    total = 0.0
    for k in range(int(math.ceil(math.log(tol) / math.log(z))) + 1):
      total += z ** k * term[start].sum()
      term = np.bincount(rows, weights=values * term[cols], minlength=m)
    totals.append(total)
  return totals


def path_integral(p: sp.csr_matrix, nodes: np.ndarray, n_start: int, z: float, tol: float = 1e-12) -> float:
  """``1_a^T (I - z P_C)^-1 1_a / |a|^2`` with ``P_C`` ``P`` restricted to ``C = nodes`` and
  ``a = nodes[:n_start]``: the path integral of ``a`` conditioned on ``C`` (of ``C`` itself
  when ``n_start == len(nodes)``), summed as the series ``sum_k z^k P_C^k`` to ``z^k < tol``."""
  (total,) = _series(p, nodes, [slice(0, n_start)], z, tol)
  return total / n_start ** 2


def conditional_integrals(p: sp.csr_matrix, a: np.ndarray, b: np.ndarray, z: float,
                          tol: float = 1e-12) -> tuple[float, float]:
  """``(S_{a|a+b}, S_{b|a+b})``, the path integrals of clusters ``a`` and ``b`` (arrays of
  sample indices) conditioned on their union, from one restriction of ``P`` to it: what
  :func:`path_integral` gives for ``a + b`` and ``b + a``."""
  union = np.concatenate([a, b])
  s_a, s_b = _series(p, union, [slice(0, len(a)), slice(len(a), len(union))], z, tol)
  return s_a / len(a) ** 2, s_b / len(b) ** 2


def acpic(features: np.ndarray, n_clusters: int, *, n_neighbors: int = 20, a: float = 1.0,
          z: float = 0.01) -> np.ndarray:
  """AC-PIC's labels ``[N]`` (int, ``0 .. n_clusters - 1``) for ``features`` ``[N, D]``.

  The affinity of clusters ``a`` and ``b`` is the incremental path integral
  ``(S_{a|a+b} - S_a) + (S_{b|a+b} - S_b)`` (:func:`path_integral`); only clusters joined by
  an edge of the graph have one. Where no two clusters are joined (a graph of more than
  ``n_clusters`` components), the two with the nearest means are merged. Defaults as in the
  authors' DEPICT code (K = 20, a = 1, z = 0.01).

  The cost is one sparse series per pair of neighbouring clusters and per merge, in NumPy on
  one core: about 32 s for DEPICT's 10-dimensional embedding of the 10,000 Fashion-MNIST test
  images, a few thousand initial clusters (CPU-2b, BENCHMARKS.md).
  """
  features = np.asarray(features, np.float64)
  n = len(features)
  if not 2 <= n_clusters <= n:
    raise ConfigError(f"AC-PIC: n_clusters must be in [2, {n}]; got {n_clusters}")
  if not 0 < z < 1:
    raise ConfigError(f"AC-PIC: z must be in (0, 1); got {z}")
  n_neighbors = min(n_neighbors, n - 1)
  p, nearest = knn_transition(features, n_neighbors, a)
  _, labels = connected_components(sp.csr_matrix((np.ones(n), (np.arange(n), nearest)), shape=(n, n)),
                                   directed=True, connection="weak")
  members = {c: np.flatnonzero(labels == c) for c in range(labels.max() + 1)}
  linked = (p + p.T).tocsr()
  self_integral = {c: path_integral(p, m, len(m), z) for c, m in members.items()}

  def affinity(ca, cb):
    s_a, s_b = conditional_integrals(p, members[ca], members[cb], z)
    return s_a - self_integral[ca] + s_b - self_integral[cb]

  def neighbours(c):
    return set(np.unique(labels[linked[members[c]].indices]).tolist()) - {c}

  table, partners = {}, {c: set() for c in members}  # partners[c]: the clusters paired with c in table

  def pair(ca, cb):
    table[(min(ca, cb), max(ca, cb))] = affinity(ca, cb)
    partners[ca].add(cb)
    partners[cb].add(ca)

  for c in members:
    for d in neighbours(c):
      if d > c:
        pair(c, d)
  while len(members) > n_clusters:
    ca, cb = max(table, key=table.get) if table else _nearest_pair(features, members)
    members[ca] = np.concatenate([members[ca], members.pop(cb)])
    labels[members[ca]] = ca
    self_integral[ca] = path_integral(p, members[ca], len(members[ca]), z)
    del self_integral[cb]
    for c in (ca, cb):
      for d in partners.pop(c):
        del table[(min(c, d), max(c, d))]
        partners[d].discard(c)
    partners[ca] = set()
    for d in neighbours(ca):
      pair(ca, d)
  _, labels = np.unique(labels, return_inverse=True)
  return labels.astype(np.int32)


def _nearest_pair(features: np.ndarray, members: dict) -> tuple[int, int]:
  ids = sorted(members)
  means = np.stack([features[members[c]].mean(axis=0) for c in ids])
  d2 = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(d2, np.inf)
  i, j = np.unravel_index(np.argmin(d2), d2.shape)
  return ids[min(i, j)], ids[max(i, j)]
