"""jaxclust: deep image clustering as pure JAX functions.

Pieces (pure, jittable, differentiable): heads, targets, losses, k-means, metrics.
Algorithms run on one engine (:mod:`jaxclust.engine`); estimators wrap them with
scikit-learn's ``fit``/``predict``.
"""

from jaxclust.cluster import kmeans
from jaxclust.data import Dataset, load_dataset
from jaxclust.engine import Algorithm, Engine, FitResult, TrainConfig
from jaxclust.errors import CheckpointError, ConfigError, DataError, JaxclustError, TrainingError
from jaxclust import augment
from jaxclust.estimator import DEC, DEPICT, ICS, IDEC
from jaxclust.heads import softmax_assign, softmax_logits, student_t_assign
from jaxclust.losses import (
    entropy_constraint,
    kl_divergence,
    layerwise_reconstruction,
    reconstruction_error,
    soft_cross_entropy,
    triplet_loss,
    weighted_mean,
)
from jaxclust.metrics import acc, ari, best_map, clustering_scores, confusion_matrix, nmi
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
    "ICS",
    "IDEC",
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
]
