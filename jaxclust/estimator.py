"""scikit-learn style estimators: ``DEPICT(n_clusters=10).fit_predict(X)``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

from jaxclust import algos, data
from jaxclust.engine import Engine, soft_assignments_of
from jaxclust.errors import DataError


def as_images(x) -> np.ndarray:
  """``[N, H, W]``, ``[N, H, W, C]`` or square ``[N, H*W]`` -> float32 ``[N, H, W, C]`` in [-1, 1]."""
  x = np.asarray(x)
  if x.ndim == 2:
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
      raise DataError(
          f"X of shape {x.shape} has {x.shape[1]} features, not a square image; pass [N, H, W] or [N, H, W, C]"
      )
    x = x.reshape(x.shape[0], side, side)
  data.validate_images(x, source="X")
  if x.ndim == 3:
    x = x[..., None]
  return data.scale_to_unit_range(x)


class _ClusterEstimator(BaseEstimator, ClusterMixin):
  """Common code: the algorithm is ``algos.REGISTRY[self._algo]``."""

  _algo: str

  def __init__(self, n_clusters: int = 10, *, seed: int = 0, config: dict | None = None,
               workdir: str | None = None, verbose: int = 0):
    self.n_clusters = n_clusters
    self.seed = seed
    self.config = config
    self.workdir = workdir
    self.verbose = verbose

  def fit(self, X, y=None):
    """Clusters ``X``; ``y`` is ignored (scikit-learn convention)."""
    del y
    x = as_images(X)
    module = algos.REGISTRY[self._algo]
    values = module.dataset_settings("", x.shape[1:])
    values.update(self.config or {})
    values.update(n_clusters=self.n_clusters, seed=self.seed)
    config = module.Config(**values)
    self.algorithm_ = module.ALGORITHM(config, x.shape[1:])
    result = Engine(self.algorithm_, x, workdir=self.workdir, verbosity=self.verbose).fit()
    self.params_ = result.params
    self.labels_ = result.assignments
    self.soft_assignments_ = result.soft_assignments
    self.n_rounds_ = result.rounds
    self.history_ = result.history
    return self

  def predict_proba(self, X) -> np.ndarray:
    """Soft assignments ``[N, K]`` of new samples under the fitted model."""
    x = as_images(X)
    predict = jax.jit(self.algorithm_.predict)
    chunk = self.algorithm_.config.eval_batch_size
    return np.concatenate([np.asarray(soft_assignments_of(predict(self.params_, jnp.asarray(x[i:i + chunk]))))
                           for i in range(0, len(x), chunk)])

  def predict(self, X) -> np.ndarray:
    """Cluster index ``[N]`` of new samples."""
    return np.argmax(self.predict_proba(X), axis=-1).astype(np.int32)


class DEPICT(_ClusterEstimator):
  """DEPICT (Ghasedi Dizaji et al., ICCV 2017) with scikit-learn's ``fit``/``predict``.

  Args:
    n_clusters: number of clusters K (also the embedding dimension).
    seed: random seed; the same seed gives the same assignments.
    config: overrides of :class:`jaxclust.algos.depict.DepictConfig` fields.
    workdir: optional directory for checkpoints and ``metrics.jsonl``.
    verbose: 0 silent, 1 a line per round and progress bars.

  Example::

    labels = jaxclust.DEPICT(n_clusters=10).fit_predict(images)  # images: [N, H, W]
  """

  _algo = "depict"


class DEC(_ClusterEstimator):
  """DEC (Xie et al., ICML 2016) with scikit-learn's ``fit``/``predict``.

  Args: as :class:`DEPICT`; ``config`` overrides :class:`jaxclust.algos.dec.DecConfig` fields.

  Example::

    labels = jaxclust.DEC(n_clusters=10, config={"warmup_epochs": 100}).fit_predict(images)
  """

  _algo = "dec"


class IDEC(_ClusterEstimator):
  """IDEC (Guo et al., IJCAI 2017): DEC with the reconstruction loss kept during clustering.

  Args: as :class:`DEPICT`; ``config`` overrides :class:`jaxclust.algos.idec.IdecConfig` fields.
  """

  _algo = "idec"


class ICS(_ClusterEstimator):
  """The inter-class separation method (Das et al., WACV 2019): conv autoencoder, Student-t
  layer, triplet and entropy constraints.

  Args: as :class:`DEPICT`; ``config`` overrides :class:`jaxclust.algos.ics.IcsConfig` fields.
  """

  _algo = "ics"


class SpectralNet(_ClusterEstimator):
  """SpectralNet (Shaham et al., ICLR 2018) on an autoencoder's code space: a network whose
  orthonormalized outputs approximate the kNN graph Laplacian's eigenvectors, then k-means.

  Args: as :class:`DEPICT`; ``config`` overrides
  :class:`jaxclust.algos.spectralnet.SpectralNetConfig` fields.
  """

  _algo = "spectralnet"


class DSCDAN(_ClusterEstimator):
  """DSCDAN (Yang et al., CVPR 2019): a dual autoencoder with mutual-information and prior
  terms, trained jointly with a SpectralNet-style clustering network.

  Args: as :class:`DEPICT`; ``config`` overrides :class:`jaxclust.algos.dscdan.DscdanConfig`
  fields.
  """

  _algo = "dscdan"
