"""DSCDAN's dual autoencoder terms (paper 002 Sec. 3.1) against NumPy formulas.

Eq. 8-9 JSD mutual-information estimator (from discriminator scores), the negative samples
of eq. 10 (rows shuffled within the batch), the Gaussian KL prior term, the noisy codes,
eq. 11 relative and eq. 12 dual reconstruction; the discriminators of eq. 10 / Fig. 3 and
the spectral network. References are written with plain NumPy in float64.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxclust import losses
from jaxclust.errors import ConfigError
from jaxclust.nn import GlobalDiscriminator, LocalDiscriminator, SpectralMLP

# The "rbg" PRNG compiles far faster than threefry on CPU.
key = functools.partial(jax.random.key, impl="rbg")

jsd = jax.jit(losses.jsd_mutual_information)
gaussian_kl = jax.jit(losses.gaussian_kl)
relative_reconstruction = jax.jit(losses.relative_reconstruction_loss)
dual_reconstruction = jax.jit(losses.dual_reconstruction_loss)


def normal(seed, shape, scale=1.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


# ---------------------------------------------------------------------------- references


def ref_log_sigmoid(t):
  t = np.asarray(t, np.float64)
  return np.log(1.0 / (1.0 + np.exp(-t)))


def ref_jsd(pos, neg, w_pos=None, w_neg=None):
  """Eq. 9: E_P[log sigma(T)] + E_{PxQ}[log(1 - sigma(T))], positions averaged first."""
  pos = ref_log_sigmoid(pos).reshape(len(pos), -1).mean(axis=1)
  neg = np.log(1.0 - 1.0 / (1.0 + np.exp(-np.asarray(neg, np.float64))))
  neg = neg.reshape(len(neg), -1).mean(axis=1)
  w_pos = np.ones(len(pos)) if w_pos is None else np.asarray(w_pos, np.float64)
  w_neg = w_pos if w_neg is None else np.asarray(w_neg, np.float64)
  return np.sum(w_pos * pos) / w_pos.sum() + np.sum(w_neg * neg) / w_neg.sum()


def ref_gaussian_kl(mu, logvar, prior_mean=None, weights=None):
  """KL(N(mu, S1) || N(m, I)) from the general multivariate formula, per sample."""
  mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
  n, d = mu.shape
  m = np.zeros_like(mu) if prior_mean is None else np.broadcast_to(prior_mean, mu.shape)
  per = []
  for i in range(n):
    s1 = np.diag(np.exp(logvar[i]))
    diff = m[i] - mu[i]
    per.append(0.5 * (np.trace(s1) + diff @ diff - d - np.log(np.linalg.det(s1))))
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  return np.sum(w * np.array(per)) / w.sum()


def ref_frobenius(a, b, weights=None):
  """1/N sum_i ||a_i - b_i||_F^2 (eq. 11-12, per sample, averaged over the batch)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  per = np.array([np.sum((a[i] - b[i]) ** 2) for i in range(len(a))])
  w = np.ones(len(a)) if weights is None else np.asarray(weights, np.float64)
  return np.sum(w * per) / w.sum()


def ref_mlp(params, h, names):
  """Dense ReLU layers then a linear one, from Flax params, in float64."""
  h = np.asarray(h, np.float64)
  for i, name in enumerate(names):
    layer = params[name]
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < len(names) - 1:
      h = np.maximum(h, 0.0)
  return h


# ---------------------------------------------------------------------------- JSD estimator


@pytest.mark.parametrize("shape", [(8,), (6, 3, 3)])
def test_jsd_matches_eq9(shape):
  pos = normal(1, shape, 3.0)
  neg = normal(2, shape, 3.0)
  np.testing.assert_allclose(jsd(pos, neg), ref_jsd(pos, neg), rtol=1e-5, atol=1e-6)
  weights = (np.arange(shape[0]) % 3 != 0).astype(np.float32)
  np.testing.assert_allclose(jsd(pos, neg, weights), ref_jsd(pos, neg, weights), rtol=1e-5, atol=1e-6)
  keep = weights > 0
  np.testing.assert_allclose(jsd(pos, neg, weights), jsd(pos[keep], neg[keep]), rtol=1e-5)


def test_jsd_separate_negative_weights_and_counts():
  pos = normal(3, (5,), 2.0)
  neg = normal(4, (9,), 2.0)  # more negatives than positives
  w_pos = np.array([1, 1, 0, 1, 1], np.float32)
  w_neg = np.array([1, 0, 1, 1, 1, 1, 0, 1, 1], np.float32)
  np.testing.assert_allclose(
      jsd(pos, neg, w_pos, w_neg), ref_jsd(pos, neg, w_pos, w_neg), rtol=1e-5, atol=1e-6)


def test_jsd_bounds_and_stability():
  zeros = np.zeros(4, np.float32)
  np.testing.assert_allclose(jsd(zeros, zeros), -2 * np.log(2), rtol=1e-6)  # sigma(0) = 1/2
  big = np.full(4, 100.0, np.float32)
  # A perfect discriminator reaches the bound 0; a wrong one is very negative but finite.
  np.testing.assert_allclose(jsd(big, -big), 0.0, atol=1e-6)
  assert np.isfinite(float(jsd(-big, big))) and float(jsd(-big, big)) < -199
  scores = normal(5, (2, 20), 4.0)
  assert np.all(np.asarray(jax.vmap(jsd)(scores, scores[::-1])) <= 0.0)


def test_jsd_gradient():
  pos, neg = normal(6, (5, 2, 2)), normal(7, (5, 2, 2))
  weights = np.array([1, 0, 1, 1, 1], np.float32)
  check_grads(jax.jit(lambda p, n: losses.jsd_mutual_information(p, n, weights)), (pos, neg),
              order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------- negatives


@pytest.mark.parametrize("weighted", [False, True])
def test_shuffle_is_a_permutation_of_real_rows(weighted):
  b = 9
  weights = np.array([1, 1, 0, 1, 1, 0, 1, 0, 1], np.float32) if weighted else None
  real = np.ones(b, bool) if weights is None else weights > 0
  z = np.arange(b * 2, dtype=np.float32).reshape(b, 2)
  shuffle = jax.jit(losses.shuffle_within_batch)
  perms = set()
  for seed in range(8):
    perm = np.asarray(losses.batch_permutation(key(seed), b, weights))
    assert sorted(perm) == list(range(b))
    np.testing.assert_array_equal(perm[~real], np.flatnonzero(~real))  # padding stays
    assert set(perm[real]) == set(np.flatnonzero(real))  # real rows draw real rows
    np.testing.assert_array_equal(shuffle(key(seed), z, weights), z[perm])
    perms.add(tuple(perm))
  assert len(perms) > 4  # different keys, different permutations


def test_shuffle_is_uniform_over_real_rows():
  b, draws = 6, 600
  weights = np.array([1, 0, 1, 1, 0, 1], np.float32)
  perms = jax.jit(jax.vmap(lambda k: losses.batch_permutation(k, b, weights)))(
      jax.random.split(key(0), draws))
  real = np.flatnonzero(weights > 0)
  counts = np.zeros((b, b))
  np.add.at(counts, (np.repeat(np.arange(b)[None], draws, 0), np.asarray(perms)), 1)
  # Every real row draws every real row (itself included) about 1/4 of the time.
  np.testing.assert_allclose(counts[np.ix_(real, real)] / draws, 0.25, atol=0.07)


def test_shuffle_compiles_once():
  f = jax.jit(chex.assert_max_traces(losses.shuffle_within_batch, n=1))
  z = normal(8, (7, 3, 2, 2))  # any [B, ...] array, e.g. feature maps
  for seed in range(3):
    weights = (np.arange(7) != seed).astype(np.float32)
    out = f(key(seed), z, weights)
  assert out.shape == z.shape


# ---------------------------------------------------------------------------- KL prior term


@pytest.mark.parametrize("with_prior_mean", [False, True])
def test_gaussian_kl_matches_multivariate_formula(with_prior_mean):
  mu, logvar = normal(9, (6, 4)), normal(10, (6, 4), 0.5)
  prior_mean = normal(11, (6, 4)) if with_prior_mean else None
  weights = np.array([1, 1, 0, 1, 0, 1], np.float32)
  np.testing.assert_allclose(
      gaussian_kl(mu, logvar, prior_mean=prior_mean),
      ref_gaussian_kl(mu, logvar, prior_mean), rtol=1e-5)
  np.testing.assert_allclose(
      gaussian_kl(mu, logvar, weights, prior_mean=prior_mean),
      ref_gaussian_kl(mu, logvar, prior_mean, weights), rtol=1e-5)


def test_gaussian_kl_is_zero_at_the_prior_and_broadcasts_its_mean():
  zeros = np.zeros((3, 5), np.float32)
  assert float(gaussian_kl(zeros, zeros)) == 0.0
  centre = normal(12, (5,))
  mu = np.tile(centre, (3, 1))
  assert abs(float(gaussian_kl(mu, zeros, prior_mean=centre))) < 1e-6
  check_grads(jax.jit(losses.gaussian_kl), (normal(13, (3, 2)), normal(14, (3, 2))), order=1,
              modes=["rev"], atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------- noisy codes


def test_sample_gaussian_moments():
  mu = np.array([1.0, -2.0], np.float32)
  logvar = np.log(np.array([0.25, 4.0], np.float32))
  n = 20000
  z = np.asarray(jax.jit(losses.sample_gaussian)(
      key(1), np.tile(mu, (n, 1)), np.tile(logvar, (n, 1))), np.float64)
  np.testing.assert_allclose(z.mean(0), mu, atol=0.05)
  np.testing.assert_allclose(z.std(0), [0.5, 2.0], rtol=0.03)


def test_multiplicative_gaussian_noise():
  z = np.array([[2.0, 0.0, -1.0]] * 20000, np.float32)
  noisy = np.asarray(jax.jit(functools.partial(losses.multiplicative_gaussian_noise, stddev=0.3))(
      key(2), z), np.float64)
  np.testing.assert_allclose(noisy.mean(0), [2.0, 0.0, -1.0], atol=0.02)
  np.testing.assert_allclose(noisy.std(0), [0.6, 0.0, 0.3], atol=0.01)  # |z| * stddev
  np.testing.assert_array_equal(losses.multiplicative_gaussian_noise(key(3), z[:4], stddev=0.0), z[:4])
  with pytest.raises(ConfigError):
    losses.multiplicative_gaussian_noise(key(3), z, stddev=-1.0)


# ---------------------------------------------------------------------------- reconstruction


@pytest.mark.parametrize("shape", [(5, 7), (4, 6, 6, 1)])
def test_relative_and_dual_reconstruction_match_eq11_eq12(shape):
  x, clean, noisy = normal(20, shape), normal(21, shape), normal(22, shape)
  weights = np.array([1, 0, 1, 1, 1][: shape[0]], np.float32)
  np.testing.assert_allclose(relative_reconstruction(noisy, clean), ref_frobenius(noisy, clean), rtol=1e-5)
  expected = ref_frobenius(noisy, clean) + 0.5 * ref_frobenius(x, clean)
  np.testing.assert_allclose(dual_reconstruction(x, clean, noisy), expected, rtol=1e-5)
  expected = ref_frobenius(noisy, clean, weights) + 2.0 * ref_frobenius(x, clean, weights)
  np.testing.assert_allclose(dual_reconstruction(x, clean, noisy, weights, delta=2.0), expected, rtol=1e-5)
  # Identical reconstructions leave only delta times the ordinary term.
  np.testing.assert_allclose(dual_reconstruction(x, clean, clean), 0.5 * ref_frobenius(x, clean), rtol=1e-5)


def test_dual_reconstruction_gradient_reaches_both_reconstructions():
  x, clean, noisy = normal(23, (3, 4)), normal(24, (3, 4)), normal(25, (3, 4))
  grads = jax.grad(losses.dual_reconstruction_loss, argnums=(1, 2))(x, clean, noisy)
  # d/d clean = 2 (clean - noisy) / N + delta * 2 (clean - x) / N; d/d noisy = 2 (noisy - clean) / N.
  np.testing.assert_allclose(grads[0], (2 * (clean - noisy) + 0.5 * 2 * (clean - x)) / 3, rtol=1e-5)
  np.testing.assert_allclose(grads[1], 2 * (noisy - clean) / 3, rtol=1e-5)


# ---------------------------------------------------------------------------- networks


def init_and_score(model, seed, *inputs):
  """``(params, score)`` of a freshly initialised model; ``score(*inputs)`` applies it."""
  params = model.init(key(seed), *inputs)["params"]
  apply = jax.jit(model.apply)
  return params, lambda *args: np.asarray(apply({"params": params}, *args))


def test_global_discriminator_scores_pairs():
  features, z = normal(30, (5, 3, 3, 2)), normal(31, (5, 4))
  params, score = init_and_score(GlobalDiscriminator(hidden=(16, 8)), 0, features, z)
  scores = score(features, z)
  assert scores.shape == (5,)
  pair = np.concatenate([features.reshape(5, -1), z], axis=1)
  np.testing.assert_allclose(
      scores, ref_mlp(params, pair, ["hidden1", "hidden2", "score"])[:, 0], rtol=1e-4, atol=1e-5)
  # The score of a pair depends on both of its members.
  assert not np.allclose(score(features, z[::-1]), scores)
  assert not np.allclose(score(features[::-1], z), scores)


def test_local_discriminator_is_concat_and_1x1_convolve():
  feature_map, z = normal(32, (3, 4, 5, 6)), normal(33, (3, 7))
  params, score = init_and_score(LocalDiscriminator(hidden=(16, 8)), 1, feature_map, z)
  scores = score(feature_map, z)
  assert scores.shape == (3, 4, 5)
  # Reference: z replicated over the positions, concatenated with C, then 1x1 convolutions
  # (dense layers per position) with the first kernel being [W_c; W_z].
  replicated = np.broadcast_to(z[:, None, None, :], (3, 4, 5, 7))
  stacked = np.concatenate([feature_map, replicated], axis=-1)
  first = {"kernel": np.concatenate([params["hidden1_features"]["kernel"],
                                     params["hidden1_latent"]["kernel"]], axis=0),
           "bias": params["hidden1_features"]["bias"]}
  ref = ref_mlp({"first": first, **params}, stacked, ["first", "hidden2", "score"])[..., 0]
  np.testing.assert_allclose(scores, ref, rtol=1e-4, atol=1e-5)
  # Every position's score depends on z and on the feature vector at that position only.
  assert not np.allclose(score(feature_map, z[::-1]), scores)
  moved = feature_map.copy()
  moved[:, 1, 2] += 1.0
  changed = score(moved, z) != scores
  assert changed[:, 1, 2].all() and changed.sum() == 3


def test_mi_loss_step_compiles_once():
  # One minibatch of eq. 10: global and local terms with negatives from the shuffle.
  global_d, local_d = GlobalDiscriminator(hidden=(8,)), LocalDiscriminator(hidden=(8,))
  feature_map, z = normal(34, (6, 3, 3, 2)), normal(35, (6, 4))
  params = (global_d.init(key(0), z, z), local_d.init(key(1), feature_map, z))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def info_loss(params, rng, feature_map, z, weights):
    z_neg = losses.shuffle_within_batch(rng, z, weights)
    glob = losses.jsd_mutual_information(
        global_d.apply(params[0], z, z), global_d.apply(params[0], z, z_neg), weights)
    local = losses.jsd_mutual_information(
        local_d.apply(params[1], feature_map, z), local_d.apply(params[1], feature_map, z_neg), weights)
    return -(glob + local)

  for seed in range(3):
    weights = (np.arange(6) < 6 - seed).astype(np.float32)
    loss, grads = jax.value_and_grad(info_loss)(params, key(seed), feature_map, z, weights)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_spectral_mlp_shapes_and_output_activation():
  x = normal(36, (5, 4, 4, 1))
  params, score = init_and_score(SpectralMLP(num_clusters=3, hidden=(16, 8)), 2, x)
  y = score(x)
  assert y.shape == (5, 3)
  np.testing.assert_allclose(
      y, ref_mlp(params, x.reshape(5, -1), ["hidden1", "hidden2", "output"]), rtol=1e-4, atol=1e-5)
  bounded = SpectralMLP(num_clusters=3, hidden=(16, 8), output_activation=jnp.tanh)
  np.testing.assert_allclose(bounded.apply({"params": params}, x), np.tanh(y), rtol=1e-4, atol=1e-5)
