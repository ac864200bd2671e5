"""Building blocks of deep spectral clustering: SpectralNet (Shaham et al., ICLR 2018) and the
clustering network of DSCDAN (paper 002, Sec. 3.2).

- :func:`orthonorm_weights` / :func:`cholesky_orthonormalize`: the orthonormalization layer
  (paper 002 eq. 17-18), which keeps the network's outputs ``Y`` orthonormal,
  ``Y^T Y / m = I``, so that the spectral loss cannot be minimised by collapsing them.
- :func:`knn_affinity`: the Gaussian k-nearest-neighbour affinity ``W`` of a minibatch
  (eq. 14).
- :func:`knn_graph`, :func:`median_neighbor_distance`, :func:`knn_affinity_edges`: the same
  graph over a whole dataset, computed in row blocks, never as an ``N x N`` matrix.
- :func:`spectral_loss`: ``1/m^2 sum_ij w_ij ||y_i - y_j||^2`` (eq. 16).

Every function is pure and jittable; integer hyperparameters (``n_neighbors``,
``scale_neighbor``, ``block_size``) fix shapes, so they must be static under ``jax.jit``.
Per-sample ``weights`` ``[B]`` are 0 on the padding rows of the engine's last minibatch:
those rows take no part in any statistic and get no edges.

References:
  Shaham et al., SpectralNet: Spectral Clustering using Deep Neural Networks, ICLR 2018
  (code: github.com/KlugerLab/SpectralNet, ``src/core/layer.py`` and ``costs.py``).
  Yang et al., Deep Spectral Clustering using Dual Autoencoder Network, CVPR 2019 (paper 002;
  code: github.com/xdxuyang/Deep-Spectral-Clustering-using-Dual-Autoencoder-Network).
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxclust.errors import ConfigError

# ----------------------------------------------------------------------------- checks


def _count(value, name: str, low: int, high: int) -> int:
  """``value`` as a Python int in ``[low, high]``, or a ConfigError naming ``name``."""
  try:
    count = operator.index(value)
  except TypeError:
    raise ConfigError(f"{name} must be a Python integer, got {value!r}.") from None
  if not low <= count <= high:
    raise ConfigError(f"{name} must be between {low} and {high}, got {count}.")
  return count


def _positive(value, name: str) -> None:
  """A ConfigError unless ``value`` is positive; traced values are not checked."""
  if isinstance(value, (int, float)) and not value > 0:
    raise ConfigError(f"{name} must be positive, got {value!r}.")


def _rows(x: ArrayLike, name: str) -> jax.Array:
  """``x`` ``[N, ...]`` flattened to ``[N, D]``."""
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ConfigError(f"{name} must have shape [N, D] (or [N, ...]), got shape {x.shape}.")
  return x.reshape(x.shape[0], -1)


def _row_weights(weights: ArrayLike | None, n: int, dtype) -> jax.Array:
  """Per-row weights ``[n]`` (ones if None)."""
  if weights is None:
    return jnp.ones((n,), dtype)
  weights = jnp.asarray(weights, dtype)
  if weights.shape != (n,):
    raise ConfigError(f"weights must have shape ({n},), got {weights.shape}.")
  return weights


# ----------------------------------------------------------------------------- orthonormalization

# Full float32 precision for the small products of the orthonormalization: TF32 (the GPU
# default) would leave errors of about 1e-3 in Y^T Y / m = I.
_HIGHEST = jax.lax.Precision.HIGHEST


def _gram(y: jax.Array) -> jax.Array:
  return jnp.matmul(y.T, y, precision=_HIGHEST)


def orthonorm_weights(
    y: ArrayLike, *, weights: ArrayLike | None = None, jitter: float = 1e-6
) -> jax.Array:
  """The matrix that orthonormalizes ``Y`` by right multiplication (paper 002 eq. 17-18).

  With ``L`` the Cholesky factor of ``Y^T Y`` (eq. 18, ``Y^T Y = L L^T``), returns
  ``W = sqrt(m) (L^{-1})^T``, so that ``(Y W)^T (Y W) / m = I`` (eq. 17). This is the
  orthonorm layer of SpectralNet (``orthonorm_op`` in KlugerLab's ``layer.py``, used as is
  by DSCDAN's code): ``Y W`` equals ``sqrt(m) Q`` of the QR decomposition ``Y = QR``.

  Numerics (our choices, where the paper and SpectralNet leave them open):

  - The jitter is relative: ``Y^T Y + jitter * s I`` with ``s`` the mean of the diagonal of
    ``Y^T Y`` (floored so an all-zero batch still gets a positive jitter). SpectralNet adds an
    absolute ``1e-7``, which is below float32 rounding as soon as ``Y^T Y`` has entries above
    one, and then the Cholesky factorization fails with NaN.
  - Rank-deficient or ill-conditioned batches take a QR path instead: where the Cholesky
    factor is not finite, or its smallest squared pivot is below ``2 * jitter * s`` or
    ``sqrt(eps) * s`` (``Y^T Y`` has a condition number above about ``1 / sqrt(eps)``, 3e3
    in float32, where the Cholesky path, which loses ``eps * cond(Y^T Y)``, becomes less
    accurate than QR, which loses ``eps * cond(Y)``). The QR path decomposes ``Y`` stacked on
    ``sqrt(jitter * s) I``, whose ``R`` satisfies ``R^T R = Y^T Y + jitter * s I``. It gives
    the same ``W`` as the Cholesky path in exact arithmetic, but is computed without forming
    ``Y^T Y``, and ``R`` is invertible whatever the rank of ``Y``. ``Y W`` is then ``sqrt(m)``
    times the top block of an orthonormal matrix: it is always finite and bounded, its
    columns along the directions that ``Y`` spans are orthonormal, those along directions it
    lacks are (near) zero, and its gradient is finite. The branch is a ``lax.cond``, so only
    one path runs (and is differentiated) per call.

  Args:
    y: ``[B, K]`` network outputs (the inputs ``Y~`` of the orthonorm layer).
    weights: optional ``[B]`` non-negative row weights, 0 for padding rows: the Gram matrix
      is ``Y^T diag(weights) Y`` and ``m = sum(weights)``, so rows of weight 0 change
      nothing. Without weights, ``m = B``.
    jitter: relative jitter added to the diagonal of ``Y^T Y`` (see above); values below
      the dtype's ``eps`` act as ``eps``.

  Returns:
    ``[K, K]`` matrix ``W``; upper triangular.

  References:
    Shaham et al., SpectralNet, ICLR 2018, Sec. 3.1 (orthogonality constraint).
  """
  y = jnp.asarray(y)
  if y.ndim != 2:
    raise ConfigError(f"y must have shape [B, K], got shape {y.shape}.")
  if isinstance(jitter, (int, float)) and not jitter >= 0:
    raise ConfigError(f"jitter must be non-negative, got {jitter!r}.")
  k = y.shape[1]
  weights = _row_weights(weights, y.shape[0], y.dtype)
  m = jnp.sum(weights)
  y_w = y * jnp.sqrt(weights)[:, None]
  eye = jnp.eye(k, dtype=y.dtype)
  gram = _gram(y_w)
  diag_mean = jnp.trace(gram) / k
  # The relative jitter is at least eps: below it, R of the QR path is so ill-conditioned
  # that Y R^-1 is no longer close to orthonormal. The floor gives an all-zero batch a
  # positive jitter, and keeps 1 / sqrt(jitter * s) far from overflow.
  floor = jnp.sqrt(jnp.finfo(y.dtype).tiny)
  relative = jnp.maximum(jitter, jnp.finfo(y.dtype).eps)
  jitter_abs = relative * jnp.maximum(diag_mean, floor) + floor

  # The branch is decided without gradients; each branch is differentiated on its own.
  check = jnp.linalg.cholesky(jax.lax.stop_gradient(gram) + jitter_abs * eye)
  # Cholesky loses about eps * cond(Y^T Y) of accuracy, QR about eps * cond(Y): the QR path
  # takes over before the first is worse than sqrt(eps), or where the jitter dominates.
  threshold = jnp.maximum(2.0 * jitter_abs, jnp.sqrt(jnp.finfo(y.dtype).eps) * diag_mean)
  pivots = jnp.diagonal(check)
  well_conditioned = jnp.all(jnp.isfinite(check)) & (jnp.min(pivots) ** 2 > threshold)

  def by_cholesky(y_w: jax.Array) -> jax.Array:
    del y_w  # the Gram matrix above is differentiable
    # Under vmap both branches run: keep this one finite where it is not selected.
    chol = jnp.linalg.cholesky(jnp.where(well_conditioned, gram, diag_mean * eye) + jitter_abs * eye)
    inv = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)  # L^{-1}
    return inv.T

  def by_qr(y_w: jax.Array) -> jax.Array:
    stacked = jnp.concatenate([y_w, jnp.sqrt(jitter_abs) * eye], axis=0)
    r = jnp.linalg.qr(stacked, mode="r")
    # R = D L^T with D = sign(diag R): R^{-1} D = L^{-T}, the Cholesky path's result.
    signs = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(y.dtype)
    inv_r = jax.scipy.linalg.solve_triangular(r, eye, lower=False)
    return inv_r * signs[None, :]

  inv_lt = jax.lax.cond(well_conditioned, by_cholesky, by_qr, y_w)
  return jnp.sqrt(m) * inv_lt


def cholesky_orthonormalize(
    y: ArrayLike, *, weights: ArrayLike | None = None, jitter: float = 1e-6
) -> jax.Array:
  """``Y W`` with ``W = orthonorm_weights(Y)``: outputs with ``(Y W)^T (Y W) / m = I``.

  Paper 002 eq. 17-18; SpectralNet's orthonorm layer in its training phase, where the
  weights are computed from the same batch and the gradient flows through them. To hold the
  weights fixed (SpectralNet's alternating orthogonalization and gradient steps), compute
  :func:`orthonorm_weights` on an orthogonalization batch, pass it through
  ``jax.lax.stop_gradient`` and multiply.

  Args:
    y: ``[B, K]`` network outputs.
    weights: optional ``[B]`` row weights (0 for padding); see :func:`orthonorm_weights`.
    jitter: relative jitter; see :func:`orthonorm_weights`.

  Returns:
    ``[B, K]`` orthonormalized outputs (padding rows are multiplied too, but did not enter
    ``W``).
  """
  y = jnp.asarray(y)
  return jnp.matmul(y, orthonorm_weights(y, weights=weights, jitter=jitter), precision=_HIGHEST)


# ----------------------------------------------------------------------------- affinities


def pairwise_sq_distances(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """``||a_i - b_j||^2`` as ``||a_i||^2 + ||b_j||^2 - 2 a_i . b_j``, clamped at 0.

  The matrix product runs at ``Precision.HIGHEST``: TF32 on GPUs would perturb near
  distances enough to reorder neighbours.

  Args:
    a: ``[M, D]``.
    b: ``[N, D]``.

  Returns:
    ``[M, N]`` squared Euclidean distances.
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  cross = jnp.matmul(a, b.T, precision=_HIGHEST)
  sq = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * cross
  return jnp.maximum(sq, 0.0)


def median_neighbor_distance(
    sq_distances: ArrayLike, scale_neighbor: int, *, weights: ArrayLike | None = None
) -> jax.Array:
  """SpectralNet's scale: the median over points of the distance to their
  ``scale_neighbor``-th nearest neighbour.

  ``get_scale`` in KlugerLab's ``util.py``: ``np.median`` (the mean of the two middle values
  for an even count) of Euclidean, not squared, distances; it then serves as ``sigma`` in
  ``exp(-||x_i - x_j||^2 / (2 sigma^2))``. SpectralNet's neighbour lists include the point
  itself, so its ``scale_nbr = s`` is our ``scale_neighbor = s - 1`` (its MNIST setting
  ``scale_nbr=2`` is the distance to the nearest other point, ``scale_neighbor=1`` here).

  Args:
    sq_distances: ``[N, k]`` squared distances to each point's neighbours, nearest first,
      the point itself excluded (as :func:`knn_graph` returns them); ``inf`` marks a missing
      neighbour.
    scale_neighbor: which neighbour, counted from 1.
    weights: optional ``[N]`` row weights: rows of weight 0 are left out of the median.

  Returns:
    scalar ``sigma`` (NaN if no row has that neighbour).
  """
  sq_distances = jnp.asarray(sq_distances)
  if sq_distances.ndim != 2:
    raise ConfigError(f"sq_distances must have shape [N, k], got shape {sq_distances.shape}.")
  s = _count(scale_neighbor, "scale_neighbor", 1, sq_distances.shape[1])
  sq = sq_distances[:, s - 1]
  keep = jnp.isfinite(sq)
  if weights is not None:
    keep = keep & (_row_weights(weights, sq.shape[0], sq.dtype) > 0)
  # sqrt only of positive values: its derivative at 0 is infinite.
  positive = keep & (sq > 0)
  distance = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return jnp.nanmedian(jnp.where(keep, distance, jnp.nan))


def _gaussian(sq_distances: jax.Array, sigma_sq: jax.Array) -> jax.Array:
  """``exp(-d / (2 sigma^2))`` (eq. 14); 0 where ``d`` is inf, with a finite gradient."""
  finite = jnp.isfinite(sq_distances)
  safe = jnp.where(finite, sq_distances, 0.0)
  return jnp.where(finite, jnp.exp(-safe / (2.0 * sigma_sq)), 0.0)


def _sigma_sq(scale, sigma_from_data: jax.Array | None, dtype) -> jax.Array:
  """``sigma^2`` from a fixed scale or the data's median; floored so it never divides by 0."""
  sigma = jnp.asarray(scale, dtype) if sigma_from_data is None else sigma_from_data
  return jnp.maximum(jnp.square(sigma), jnp.finfo(dtype).tiny)


def knn_affinity(
    x: ArrayLike,
    n_neighbors: int,
    *,
    scale: float | ArrayLike | None = None,
    scale_neighbor: int | None = None,
    weights: ArrayLike | None = None,
) -> jax.Array:
  """Symmetrised Gaussian k-nearest-neighbour affinity of a minibatch (paper 002 eq. 14).

  ``A_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` if ``j`` is one of the ``n_neighbors``
  nearest neighbours of ``i`` (the point itself excluded), else 0; returns
  ``W = (A + A^T) / 2``, the symmetrisation of SpectralNet's ``costs.knn_affinity``. An edge
  found from both ends gets ``A_ij``; one found from one end gets ``A_ij / 2``.

  The diagonal is zero. SpectralNet's neighbour lists include the point itself, with weight
  ``exp(0) = 1`` on the diagonal (harmless in the loss, where ``||y_i - y_i|| = 0``); DSCDAN's
  code subtracts that identity (``W - I``). So SpectralNet's ``n_nbrs = k`` is our
  ``n_neighbors = k - 1``: DSCDAN's "number of neighbors is set to 3" (Sec. 4.3, run with
  SpectralNet's ``n_nbrs=3``) gives 2 neighbours besides the point itself.

  The scale ``sigma`` is either ``scale`` (fixed; DSCDAN's code uses 2.62, SpectralNet
  computes one from a sample of the data, see :func:`median_neighbor_distance`) or, when
  ``scale`` is None, the median over the batch of the distance to the ``scale_neighbor``-th
  nearest neighbour (default ``n_neighbors``, the farthest neighbour kept, as SpectralNet
  does when ``scale_nbr`` is None). The gradient flows through the distances and the median;
  pass ``jax.lax.stop_gradient(x)`` for a fixed graph.

  Args:
    x: ``[B, D]`` (or ``[B, ...]``, flattened) points, e.g. latent codes ``z``.
    n_neighbors: neighbours per point, ``1 <= n_neighbors < B``.
    scale: fixed ``sigma > 0``; exclusive with ``scale_neighbor``.
    scale_neighbor: neighbour, counted from 1 (the point itself excluded), whose median
      distance is ``sigma`` when ``scale`` is None.
    weights: optional ``[B]`` row weights: rows of weight 0 (padding) are nobody's
      neighbours, have no edges and do not enter the median.

  Returns:
    ``[B, B]`` symmetric affinity matrix with a zero diagonal.

  References:
    Shaham et al., SpectralNet, ICLR 2018, Sec. 4 (and ``costs.knn_affinity``).
  """
  x = _rows(x, "x")
  b = x.shape[0]
  k = _count(n_neighbors, "n_neighbors", 1, b - 1)
  if scale is not None and scale_neighbor is not None:
    raise ConfigError("give either a fixed scale or a scale_neighbor, not both.")
  if scale is None:
    s = k if scale_neighbor is None else _count(scale_neighbor, "scale_neighbor", 1, b - 1)
  else:
    _positive(scale, "scale")
    s = 0
  valid = _row_weights(weights, b, x.dtype) > 0

  sq = pairwise_sq_distances(x, x)
  excluded = jnp.eye(b, dtype=bool) | ~valid[None, :]
  sq = jnp.where(excluded, jnp.inf, sq)
  neg_sq, idx = jax.lax.top_k(-sq, max(k, s))
  nbr_sq = -neg_sq

  sigma = None if scale is not None else median_neighbor_distance(nbr_sq, s, weights=valid)
  values = _gaussian(nbr_sq[:, :k], _sigma_sq(scale, sigma, x.dtype))
  values = jnp.where(valid[:, None], values, 0.0)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, k))
  a = jnp.zeros((b, b), x.dtype).at[rows, idx[:, :k]].set(values)
  return (a + a.T) / 2.0


def knn_graph(
    x: ArrayLike, n_neighbors: int, *, block_size: int = 1024
) -> tuple[jax.Array, jax.Array]:
  """Each point's ``n_neighbors`` nearest neighbours in the whole dataset, in row blocks.

  The rows are processed ``block_size`` at a time (``lax.map``): one ``[block_size, N]``
  block of squared distances, reduced to its ``n_neighbors`` smallest entries per row with
  ``jax.lax.top_k``. Memory is ``O(N * n_neighbors + block_size * N)`` (plus the data),
  never ``N x N``: for N = 70,000 and the default block, one block of float32 distances is
  about 290 MB. A point is never its own neighbour (it is excluded by index, so duplicates
  of it are still found).

  Args:
    x: ``[N, D]`` (or ``[N, ...]``, flattened) points.
    n_neighbors: neighbours per point, ``1 <= n_neighbors < N``.
    block_size: rows per block (a block larger than ``N`` is cut to ``N``); the last block
      is padded and its padding discarded.

  Returns:
    ``(neighbors, sq_distances)``: ``[N, n_neighbors]`` int32 indices, nearest first, and
    their squared Euclidean distances.
  """
  x = _rows(x, "x")
  n, d = x.shape
  k = _count(n_neighbors, "n_neighbors", 1, n - 1)
  block = min(_count(block_size, "block_size", 1, 2**31 - 1), n)
  n_blocks = -(-n // block)
  padded = jnp.pad(x, ((0, n_blocks * block - n), (0, 0)))
  columns = jnp.arange(n)

  def one_block(start: jax.Array) -> tuple[jax.Array, jax.Array]:
    queries = jax.lax.dynamic_slice(padded, (start, 0), (block, d))
    sq = pairwise_sq_distances(queries, x)
    own = (start + jnp.arange(block))[:, None] == columns[None, :]
    neg_sq, idx = jax.lax.top_k(jnp.where(own, -jnp.inf, -sq), k)
    return idx.astype(jnp.int32), -neg_sq

  neighbors, sq_distances = jax.lax.map(one_block, jnp.arange(n_blocks) * block)
  return neighbors.reshape(-1, k)[:n], sq_distances.reshape(-1, k)[:n]


def knn_affinity_edges(
    neighbors: ArrayLike, sq_distances: ArrayLike, scale: float | ArrayLike
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The symmetrised Gaussian kNN affinity of a :func:`knn_graph`, as sparse (COO) edges.

  Each directed edge ``i -> j`` with ``A_ij = exp(-||x_i - x_j||^2 / (2 scale^2))`` (paper
  002 eq. 14) gives two entries, ``(i, j, A_ij / 2)`` and ``(j, i, A_ij / 2)``; duplicate
  entries add up, so the densification of the edges is ``W = (A + A^T) / 2``, what
  :func:`knn_affinity` returns for a batch. Memory ``O(N * k)``. To densify a small graph:
  ``jnp.zeros((N, N)).at[rows, cols].add(values)``; as a sparse matrix:
  ``jax.experimental.sparse.BCOO((values, jnp.stack([rows, cols], 1)), shape=(N, N))``.

  Args:
    neighbors: ``[N, k]`` neighbour indices.
    sq_distances: ``[N, k]`` their squared distances.
    scale: ``sigma`` (e.g. :func:`median_neighbor_distance` of the graph).

  Returns:
    ``(rows, cols, values)``, each ``[2 N k]``: int32 row and column indices and float
    affinities.
  """
  neighbors = jnp.asarray(neighbors)
  sq_distances = jnp.asarray(sq_distances)
  if neighbors.ndim != 2 or sq_distances.shape != neighbors.shape:
    raise ConfigError(
        f"neighbors and sq_distances must both have shape [N, k], got {neighbors.shape} and "
        f"{sq_distances.shape}."
    )
  _positive(scale, "scale")
  n, k = neighbors.shape
  half = _gaussian(sq_distances, _sigma_sq(scale, None, sq_distances.dtype)).reshape(-1) / 2.0
  sources = jnp.repeat(jnp.arange(n, dtype=jnp.int32), k)
  targets = neighbors.reshape(-1).astype(jnp.int32)
  rows = jnp.concatenate([sources, targets])
  cols = jnp.concatenate([targets, sources])
  return rows, cols, jnp.concatenate([half, half])


# ----------------------------------------------------------------------------- loss


def spectral_loss(y: ArrayLike, w: ArrayLike, *, weights: ArrayLike | None = None) -> jax.Array:
  """The minibatch spectral clustering loss (paper 002 eq. 16).

  ``L_c = 1/m^2 sum_{i,j} w_ij ||y_i - y_j||^2``, the normalisation of eq. 16 and of
  SpectralNet's paper (eq. 3). The authors' codes divide the same sum by other constants:
  ``2 m`` (SpectralNet, ``costs``/``networks.py``) and 1024 (DSCDAN's ``Conv.py``, its
  batch size); for a fixed batch size this only rescales the loss. For a symmetric ``w``
  the sum equals ``2 tr(Y^T (D - w) Y)`` with ``D = diag(sum_j w_ij)``, the graph
  Laplacian form whose minimiser under ``Y^T Y / m = I`` is spanned by the Laplacian's
  bottom eigenvectors.

  Args:
    y: ``[B, K]`` (orthonormalized) network outputs.
    w: ``[B, B]`` affinities, e.g. :func:`knn_affinity`.
    weights: optional ``[B]`` row weights (0 for padding): pair ``(i, j)`` counts
      ``weights_i * weights_j`` times and ``m = sum(weights)``. Without weights, ``m = B``.

  Returns:
    scalar loss (0 for a batch of padding only).
  """
  y = jnp.asarray(y)
  w = jnp.asarray(w)
  if y.ndim != 2 or w.shape != (y.shape[0], y.shape[0]):
    raise ConfigError(f"y must be [B, K] and w [B, B], got shapes {y.shape} and {w.shape}.")
  weights = _row_weights(weights, y.shape[0], y.dtype)
  m = jnp.sum(weights)
  # Direct differences rather than the norm expansion: no cancellation for close outputs.
  sq = jnp.sum(jnp.square(y[:, None, :] - y[None, :, :]), axis=-1)
  total = jnp.sum(w * sq * (weights[:, None] * weights[None, :]))
  return jnp.where(m > 0, total / jnp.where(m > 0, m, 1.0) ** 2, 0.0)
