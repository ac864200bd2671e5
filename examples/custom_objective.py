"""DEPICT's targets (eq. 7) with a Student-t head (DEC eq. 1) and a triplet term (paper 003
eq. 5), on DEPICT's network, trained by jaxclust's engine. `--tiny`: a short run (the tests)."""
import sys

import jax

import jaxclust
from jaxclust.algos.depict import Depict, DepictConfig, dataset_settings


class StudentTriplet(Depict):  # DEPICT's network, warm-up and E-step (depict_target)
  def init_clusters(self, params, features, rng):  # k-means centroids become parameters
    params = {**params, "centroids": jaxclust.kmeans(rng, features, self.config.n_clusters).centroids}
    return params, self.e_step(jaxclust.student_t_assign(features, params["centroids"]))

  def predict(self, params, x):
    return jaxclust.student_t_assign(self.embed(params, x), params["centroids"])

  def m_step_loss(self, params, batch, targets, rng):
    rng_rec, rng_aug, rng_neg = jax.random.split(rng, 3)
    reconstruction, _ = self.warmup_loss(params, batch, rng_rec)  # eq. 12's layer-wise term
    x, w = batch["x"], batch["weights"]
    z = self.embed(params, x)
    clustering = jaxclust.kl_divergence(targets, jaxclust.student_t_assign(z, params["centroids"]), w)
    positive = self.embed(params, jaxclust.augment.augment(rng_aug, x, max_shift=1.0))
    negative = z[jaxclust.losses.batch_permutation(rng_neg, z.shape[0], w)]  # another sample
    triplet = jaxclust.triplet_loss(z, positive, negative, margin=0.2, weights=w)
    loss = clustering + reconstruction + 0.1 * triplet
    return loss, {"clustering": clustering, "reconstruction": reconstruction, "triplet": triplet}


tiny = "--tiny" in sys.argv
data = jaxclust.load_dataset("digits")
x, y = (data.x[:300], data.y[:300]) if tiny else (data.x, data.y)
settings = dict(dataset_settings("digits", x.shape[1:]), init_epochs=0)
settings |= {"warmup_epochs": 2, "max_rounds": 2, "conv_features": (8, 8), "kmeans_n_init": 2} if tiny else {}
result = jaxclust.Engine(StudentTriplet(DepictConfig(**settings), x.shape[1:]), x, y, verbosity=0 if tiny else 1).fit()
print(f"ACC {jaxclust.acc(y, result.assignments):.3f}  NMI {jaxclust.nmi(y, result.assignments):.3f}")
