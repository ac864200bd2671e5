"""The scikit-learn style estimator."""

import numpy as np
import pytest
from sklearn.base import clone

import jaxclust
from jaxclust.errors import DataError
from tests.helpers import TINY, pattern_images


DEC_SMALL = {"hidden_dims": (32, 32, 64), "embedding_dim": 4, "batch_size": 32, "warmup_epochs": 20,
             "steps_per_round": 5, "max_rounds": 3, "kmeans_n_init": 2}


@pytest.mark.parametrize("estimator, config", [
    (jaxclust.DEPICT, TINY), (jaxclust.DEC, DEC_SMALL), (jaxclust.IDEC, DEC_SMALL),
])
def test_fit_predict_and_predict_agree(estimator, config):
  x, y = pattern_images()
  model = estimator(n_clusters=4, config=config)
  labels = model.fit_predict(x)
  assert labels.shape == (len(x),)
  np.testing.assert_array_equal(model.labels_, labels)
  # predict on the training images gives the fitted assignments; flat square rows work too.
  np.testing.assert_array_equal(model.predict(x.reshape(len(x), -1)), labels)
  proba = model.predict_proba(x[:7])
  np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
  assert jaxclust.acc(y, labels) > 0.9


def test_clone_keeps_parameters():
  model = jaxclust.DEPICT(n_clusters=3, seed=5, config={"warmup_epochs": 1})
  copy = clone(model)
  assert copy.get_params() == model.get_params()


def test_rejects_non_square_rows():
  with pytest.raises(DataError, match="not a square image"):
    jaxclust.DEPICT(n_clusters=2).fit(np.zeros((10, 60)))
