"""Paper 003's constraints against NumPy transcriptions written here, in float64.

Eq. 6, the entropy constraint: ``H(mean_i q_i) - mean_i H(q_i)`` (to be maximised).
Eq. 5, the triplet (inter-class separation) loss:
``mean_i max(0, ||a_i - p_i||^2 - ||a_i - n_i||^2 + margin)`` (FaceNet).
"""

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxclust import losses

J = SimpleNamespace(
    entropy_constraint=jax.jit(losses.entropy_constraint),
    triplet_loss=jax.jit(losses.triplet_loss, static_argnames=("squared",)),
)


def softmax_rows(n, k, seed=0, temperature=1.0):
  logits = np.random.default_rng(seed).normal(0, temperature, (n, k))
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def np_entropy_constraint(q, weights=None):
  q = np.asarray(q, np.float64)
  w = np.ones(len(q)) if weights is None else np.asarray(weights, np.float64)
  w = w / w.sum()
  mean_q = np.zeros(q.shape[1])
  mean_entropy = 0.0
  for i in range(len(q)):
    mean_q += w[i] * q[i]
    mean_entropy += w[i] * -sum(p * np.log(p) for p in q[i] if p > 0)
  return -sum(p * np.log(p) for p in mean_q if p > 0) - mean_entropy


def np_triplet(a, p, n, margin, weights=None, squared=True):
  a, p, n = (np.asarray(v, np.float64) for v in (a, p, n))
  w = np.ones(len(a)) if weights is None else np.asarray(weights, np.float64)
  total = 0.0
  for i in range(len(a)):
    d_pos = np.sum((a[i] - p[i]) ** 2)
    d_neg = np.sum((a[i] - n[i]) ** 2)
    if not squared:
      d_pos, d_neg = np.sqrt(d_pos), np.sqrt(d_neg)
    total += w[i] * max(0.0, d_pos - d_neg + margin)
  return total / w.sum()


def triplets(n=12, d=5, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(n, d)).astype(np.float32) for _ in range(3))


# --- entropy constraint (eq. 6) -----------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_entropy_constraint_matches_numpy(temperature):
  q = softmax_rows(16, 6, seed=1, temperature=temperature)
  np.testing.assert_allclose(J.entropy_constraint(q), np_entropy_constraint(q), rtol=1e-5)


def test_entropy_constraint_is_zero_for_identical_rows():
  q = np.tile(softmax_rows(1, 7, seed=2), (9, 1))
  np.testing.assert_allclose(J.entropy_constraint(q), 0.0, atol=1e-6)


def test_entropy_constraint_is_log_k_for_balanced_one_hot_rows():
  k = 5
  q = np.eye(k, dtype=np.float32)[np.arange(20) % k]
  np.testing.assert_allclose(J.entropy_constraint(q), np.log(k), rtol=1e-6)
  # Unbalanced one-hot rows fall short of log K, ambiguous rows too.
  assert J.entropy_constraint(q[:12]) < np.log(k) - 1e-3
  assert J.entropy_constraint(softmax_rows(20, k, seed=3)) < np.log(k) - 1e-3


def test_entropy_constraint_padding_and_weights():
  q = softmax_rows(10, 4, seed=4)
  padding = softmax_rows(6, 4, seed=5, temperature=5.0)
  padded = np.concatenate([q, padding])
  weights = np.concatenate([np.ones(10), np.zeros(6)]).astype(np.float32)
  np.testing.assert_allclose(J.entropy_constraint(padded, weights), J.entropy_constraint(q),
                             rtol=1e-6)
  # Zero padding rows too (what a padded batch usually holds).
  zeros = np.concatenate([q, np.zeros((6, 4), np.float32)])
  np.testing.assert_allclose(J.entropy_constraint(zeros, weights), J.entropy_constraint(q),
                             rtol=1e-6)
  # The padding would change the value if it were counted.
  assert abs(J.entropy_constraint(padded) - J.entropy_constraint(q)) > 1e-3
  general = np.random.default_rng(6).uniform(0.1, 2.0, 10).astype(np.float32)
  np.testing.assert_allclose(J.entropy_constraint(q, general), np_entropy_constraint(q, general),
                             rtol=1e-5)


def test_entropy_constraint_gradient():
  logits = np.random.default_rng(7).normal(size=(6, 4)).astype(np.float32)
  weights = np.array([1, 1, 1, 0.5, 2, 0], np.float32)

  @jax.jit
  def objective(x):
    return losses.entropy_constraint(jax.nn.softmax(x, axis=-1), weights)

  check_grads(objective, (logits,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  # Directly in q as well (the gradient a Student-t head receives).
  check_grads(J.entropy_constraint, (softmax_rows(6, 4, seed=8),), order=1, modes=["rev"],
              atol=1e-2, rtol=1e-2)
  # Maximising it moves towards confident, balanced assignments: a gradient-ascent step helps.
  grad = jax.grad(objective)(logits)
  assert objective(logits + 0.1 * grad) > objective(logits)


# --- triplet loss (eq. 5) -----------------------------------------------------------------


@pytest.mark.parametrize("squared", [True, False])
def test_triplet_loss_matches_numpy(squared):
  a, p, n = triplets()
  for margin in (0.3, 2.0):
    np.testing.assert_allclose(J.triplet_loss(a, p, n, margin, squared=squared),
                               np_triplet(a, p, n, margin, squared=squared), rtol=1e-5)


def test_triplet_loss_hinge_is_active_on_some_samples_only():
  # The reference comparison above is meaningful only if the hinge cuts some samples.
  a, p, n = (np.asarray(v, np.float64) for v in triplets())
  margins = np.sum((a - p) ** 2, axis=1) - np.sum((a - n) ** 2, axis=1) + 0.3
  assert np.any(margins > 0) and np.any(margins < 0)


@pytest.mark.parametrize("squared", [True, False])
def test_triplet_loss_limits(squared):
  a, p, _ = triplets()
  far = a + 100.0
  np.testing.assert_allclose(J.triplet_loss(a, p * 0.01 + a, far, 0.24, squared=squared), 0.0)
  np.testing.assert_allclose(J.triplet_loss(a, a, a, 0.24, squared=squared), 0.24, rtol=1e-6)


def test_triplet_loss_weights():
  a, p, n = triplets()
  weights = np.random.default_rng(9).uniform(0.1, 2.0, len(a)).astype(np.float32)
  np.testing.assert_allclose(J.triplet_loss(a, p, n, 1.0, weights),
                             np_triplet(a, p, n, 1.0, weights), rtol=1e-5)
  pad = triplets(n=4, seed=10)
  padded = [np.concatenate([x, y]) for x, y in zip((a, p, n), pad)]
  mask = np.concatenate([np.ones(len(a)), np.zeros(4)]).astype(np.float32)
  np.testing.assert_allclose(J.triplet_loss(*padded, 1.0, mask), J.triplet_loss(a, p, n, 1.0),
                             rtol=1e-6)
  assert abs(J.triplet_loss(*padded, 1.0) - J.triplet_loss(a, p, n, 1.0)) > 1e-3


@pytest.mark.parametrize("squared", [True, False])
def test_triplet_loss_gradient(squared):
  a, p, n = triplets(n=6, d=3, seed=11)
  # A large margin keeps every sample on the active side of the hinge, away from its kink.
  check_grads(jax.jit(lambda a, p, n: losses.triplet_loss(a, p, n, 20.0, squared=squared)),
              (a, p, n), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_triplet_loss_euclidean_gradient_at_zero_distance():
  a, _, n = triplets(n=4, d=3, seed=12)
  positive = a.copy()  # the positive coincides with the anchor, e.g. an identity augmentation
  grads = jax.jit(jax.grad(lambda a, p: losses.triplet_loss(a, p, n, 20.0, squared=False),
                           argnums=(0, 1)))
  grad, grad_positive = grads(a, positive)
  assert np.all(np.isfinite(grad)) and np.all(np.isfinite(grad_positive))
  np.testing.assert_array_equal(grad_positive, 0.0)  # the subgradient 0 at the kink
  # Only the negative's distance has a gradient: d/da -||a - n|| / N.
  diff = np.asarray(a, np.float64) - n
  expected = -diff / np.linalg.norm(diff, axis=1, keepdims=True) / len(a)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  # The squared form has a zero gradient there without any special care; it must still agree.
  grad_sq = jax.jit(jax.grad(lambda a: losses.triplet_loss(a, positive, n, 20.0)))(a)
  np.testing.assert_allclose(grad_sq, -2 * diff / len(a), rtol=1e-5, atol=1e-6)
