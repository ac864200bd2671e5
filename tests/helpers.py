"""Small structured datasets and configs shared by the engine, CLI and estimator tests."""

import numpy as np

from jaxclust import data, metrics

# Small enough to train in seconds on two CPU cores.
TINY = dict(
    warmup_epochs=2,
    init_epochs=2,
    max_rounds=3,
    batch_size=32,
    eval_batch_size=64,
    conv_features=(8, 8),
    kernel_sizes=(4, 3),
    strides=(2, 1),
    paddings=(1, 1),
    learning_rate=1e-3,
    kmeans_n_init=2,
    tol=0.0,
)


def pattern_images(n_per_class: int = 25, n_classes: int = 4, size: int = 8, seed: int = 0):
  """Images of ``n_classes`` fixed random patterns plus noise, scaled to [0, 1].

  Returns ``(x [N, size, size], y [N])``; N is not a multiple of TINY's batch size, so the
  last minibatch is padded.
  """
  rng = np.random.default_rng(seed)
  patterns = rng.uniform(0, 1, (n_classes, size, size))
  y = np.repeat(np.arange(n_classes), n_per_class)
  x = patterns[y] + 0.1 * rng.normal(size=(len(y), size, size))
  return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int32)


def write_digits_subset(path, n: int) -> np.ndarray:
  """Writes the first ``n`` of the 8x8 digits to the npz file ``path`` (uint8 pixels, as a
  user's images would be, and their labels) and returns those labels."""
  digits = data.load_dataset("digits")
  np.savez(path, x=np.round((digits.x[:n, ..., 0] + 1) * 127.5).astype(np.uint8), y=digits.y[:n])
  return digits.y[:n]


def interrupt_fit(monkeypatch, make_engine, at_epoch: int) -> None:
  """Runs ``make_engine().fit()`` and interrupts it (KeyboardInterrupt) at its ``at_epoch``-th
  epoch (warm-up epochs, initial-fit epochs and rounds all count)."""
  import pytest

  from jaxclust.engine import Engine

  original = Engine.run_epoch
  calls = {"n": 0}

  def interrupted(self, *args, **kwargs):
    calls["n"] += 1
    if calls["n"] == at_epoch:
      raise KeyboardInterrupt
    return original(self, *args, **kwargs)

  monkeypatch.setattr(Engine, "run_epoch", interrupted)
  with pytest.raises(KeyboardInterrupt):
    make_engine().fit()
  monkeypatch.setattr(Engine, "run_epoch", original)


def assert_same_clustering(y, one, two, soft_one, soft_two) -> None:
  """Two runs that differ only in how float sums are ordered (device counts, processes) end
  alike: ACC against ``y`` within 0.01 and NMI within 0.02, the two labelings agreeing on more
  than 99% of the samples after best-map matching, soft assignments within 2e-2. (On
  test_parallel's 160 samples, one borderline sample changing cluster, which rounding alone
  can cause, moves ACC by 0.006 and NMI by about 0.012.)"""
  assert abs(metrics.acc(y, one) - metrics.acc(y, two)) <= 0.01
  assert abs(metrics.nmi(y, one) - metrics.nmi(y, two)) <= 0.02
  assert metrics.acc(one, two) > 0.99
  np.testing.assert_allclose(soft_one, soft_two, atol=2e-2)
