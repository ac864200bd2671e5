"""jaxclust's estimators inside a scikit-learn pipeline.

  python examples/sklearn_pipeline.py          # scikit-learn's 8x8 digits, a few minutes on a CPU
  python examples/sklearn_pipeline.py --tiny   # a few hundred images and epochs: a short run

The digits' 64 pixel features run from 0 to 16; a ``MinMaxScaler`` brings them to [0, 1]
and ``jaxclust.DEPICT`` reads each row as an 8x8 image. The pipeline is an ordinary
scikit-learn estimator: ``fit_predict``, ``predict`` on new rows (scaled by the fitted
scaler first), ``get_params``/``set_params`` with the ``depict__`` prefix and ``clone``. A
k-means pipeline over PCA stands in the same place for comparison.
"""

import sys

from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import MinMaxScaler

import jaxclust

TINY = {"warmup_epochs": 2, "init_epochs": 1, "max_rounds": 2, "conv_features": (8, 8), "kmeans_n_init": 2}


def main(tiny: bool) -> None:
  x, y = load_digits(return_X_y=True)
  if tiny:
    x, y = x[:300], y[:300]
  config = TINY if tiny else {"warmup_epochs": 100, "init_epochs": 30, "max_rounds": 50, "batch_size": 50}
  pipeline = Pipeline([
      ("scale", MinMaxScaler(clip=True)),
      ("depict", jaxclust.DEPICT(n_clusters=10, seed=0, config=config)),
  ])
  clusters = pipeline.fit_predict(x)
  baseline = make_pipeline(MinMaxScaler(), PCA(n_components=10, random_state=0),
                           KMeans(n_clusters=10, n_init=10, random_state=0)).fit_predict(x)
  for name, labels in (("DEPICT", clusters), ("PCA + k-means", baseline)):
    print(f"{name:14s} ACC {jaxclust.acc(y, labels):.3f}  NMI {jaxclust.nmi(y, labels):.3f}  "
          f"ARI {adjusted_rand_score(y, labels):.3f}")
  print("clusters of the first five rows, predicted again:", pipeline.predict(x[:5]), "fitted:", clusters[:5])
  other_seed = clone(pipeline).set_params(depict__seed=1)
  print("a clone with", {k: v for k, v in other_seed.get_params().items() if k.endswith("seed")})


if __name__ == "__main__":
  main(tiny="--tiny" in sys.argv[1:])
