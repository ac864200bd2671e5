"""The scikit-learn style estimator."""

import numpy as np
import pytest
from sklearn.base import clone

import jaxclust
from jaxclust.errors import DataError
from tests.helpers import TINY, pattern_images


def test_fit_predict_and_predict_agree():
  x, y = pattern_images()
  model = jaxclust.DEPICT(n_clusters=4, config=TINY)
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
