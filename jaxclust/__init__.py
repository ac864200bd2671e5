"""jaxclust: deep image clustering as pure JAX functions.

Pieces (pure, jittable, differentiable): heads, targets, losses, k-means, metrics, and the
spectral ones (orthonormalization, kNN affinities, the spectral loss, mutual-information
estimators).
Algorithms run on one engine (:mod:`jaxclust.engine`); estimators wrap them with
scikit-learn's ``fit``/``predict``.
"""

from jaxclust.cluster import kmeans
from jaxclust.data import Dataset, load_dataset
from jaxclust.engine import Algorithm, Engine, FitResult, TrainConfig
from jaxclust.errors import CheckpointError, ConfigError, DataError, JaxclustError, TrainingError
from jaxclust import augment
from jaxclust.algos.dscdan import mixture_kl
from jaxclust.estimator import DEC, DEPICT, DSCDAN, ICS, IDEC, SpectralNet
from jaxclust.heads import softmax_assign, softmax_logits, student_t_assign
from jaxclust.losses import (
    batch_permutation,
    dual_reconstruction_loss,
    entropy_constraint,
    gaussian_kl,
    jsd_mutual_information,
    kl_divergence,
    layerwise_reconstruction,
    multiplicative_gaussian_noise,
    reconstruction_error,
    relative_reconstruction_loss,
    sample_gaussian,
    shuffle_within_batch,
    soft_cross_entropy,
    sum_squared_error,
    triplet_loss,
    weighted_mean,
)
from jaxclust.metrics import acc, ari, best_map, clustering_scores, confusion_matrix, nmi
from jaxclust.spectral import (
    cholesky_orthonormalize,
    knn_affinity,
    knn_affinity_edges,
    knn_graph,
    median_neighbor_distance,
    orthonorm_weights,
    pairwise_sq_distances,
    spectral_loss,
)
from jaxclust.targets import dec_target, depict_target

__version__ = "0.1.0"

__all__ = [
    "kmeans",
    "Dataset",
    "load_dataset",
    "Algorithm",
    "Engine",
    "FitResult",
    "TrainConfig",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "JaxclustError",
    "TrainingError",
    "DEC",
    "DEPICT",
    "DSCDAN",
    "ICS",
    "IDEC",
    "SpectralNet",
    "augment",
    "entropy_constraint",
    "triplet_loss",
    "softmax_assign",
    "softmax_logits",
    "student_t_assign",
    "kl_divergence",
    "layerwise_reconstruction",
    "reconstruction_error",
    "soft_cross_entropy",
    "weighted_mean",
    "acc",
    "ari",
    "best_map",
    "clustering_scores",
    "confusion_matrix",
    "nmi",
    "dec_target",
    "depict_target",
    "cholesky_orthonormalize",
    "orthonorm_weights",
    "knn_affinity",
    "knn_affinity_edges",
    "knn_graph",
    "median_neighbor_distance",
    "pairwise_sq_distances",
    "spectral_loss",
    "jsd_mutual_information",
    "batch_permutation",
    "shuffle_within_batch",
    "gaussian_kl",
    "mixture_kl",
    "sample_gaussian",
    "multiplicative_gaussian_noise",
    "sum_squared_error",
    "relative_reconstruction_loss",
    "dual_reconstruction_loss",
]
