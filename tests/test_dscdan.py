"""DSCDAN on the engine: the dual autoencoder's shapes, eq. 13 and eq. 20 as the algorithm
composes them against NumPy (padding rows, each term, zero weights dropping terms, the
authors' code's options), eq. 19, orthonormal outputs at prediction time, compile-once,
learning, resume, bad configs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxclust
from jaxclust import losses, metrics
from jaxclust.algos import dscdan
from jaxclust.engine import MODEL_STATE, Engine
from jaxclust.errors import ConfigError
from tests.helpers import interrupt_fit
from tests.test_spectralnet import check_cli, check_estimator, patterns
from tests.test_spectralnet import numpy_affinity as affinity
from tests.test_spectralnet import numpy_orthonorm as orthonorm

SMALL = {"n_clusters": 4, "conv_features": (4, 8), "latent_dim": 8, "spectral_hidden": (16, 16), "batch_size": 32,
         "eval_batch_size": 64, "warmup_epochs": 8, "steps_per_round": 5, "max_rounds": 3, "kmeans_n_init": 2,
         "tol": 0.0}


def make_engine(workdir=None, **overrides):
  x, y = patterns()
  config = dscdan.Config(**{**SMALL, **overrides})
  return Engine(dscdan.ALGORITHM(config, x.shape[1:]), x, y, workdir=workdir, verbosity=0)


@pytest.fixture(scope="module")
def fitted():
  engine = make_engine()
  return engine, engine.fit()


def initialised(**overrides):
  x, _ = patterns()
  algo = dscdan.ALGORITHM(dscdan.Config(**{**SMALL, **overrides}), x.shape[1:])
  params = algo.init(jax.random.key(0), jnp.asarray(x[:8]))
  params["prior_means"] = jax.random.normal(jax.random.key(9), params["prior_means"].shape)
  params[MODEL_STATE]["n_samples"] = jnp.float32(len(x))
  return algo, params


def one_batch(n_real=28):
  """A batch of 32 rows of which the last 32 - n_real are padding."""
  x, _ = patterns()
  dataset = np.concatenate([x, np.zeros((28, *x.shape[1:]), np.float32)])
  index = np.arange(32) * 3
  weights = (np.arange(32) < n_real).astype(np.float32)
  return {"x": jnp.asarray(dataset[index]), "weights": jnp.asarray(weights), "index": jnp.asarray(index),
          "dataset": jnp.asarray(dataset)}


# ----------------------------------------------------------------------------- NumPy references


def f64(a):
  return np.asarray(a, np.float64)


def weighted_mean(values, w):
  return (values * w).sum() / w.sum()


def sum_squares(a, b, w):
  """||a_i - b_i||_F^2 per sample, averaged under w (eq. 11-12)."""
  return weighted_mean(((f64(a) - f64(b)) ** 2).reshape(len(w), -1).sum(1), w)


def softplus(t):
  return np.logaddexp(0.0, t)


def jsd(positive, negative, w):
  """Eq. 9: E_P[log sigma(T)] + E_{PxQ}[log(1 - sigma(T))], per-sample means over positions."""
  positive, negative = f64(positive).reshape(len(w), -1).mean(1), f64(negative).reshape(len(w), -1).mean(1)
  return weighted_mean(-softplus(-positive), w) - weighted_mean(softplus(negative), w)


def gaussian_kl(mu, logvar, w):
  mu, logvar = f64(mu), f64(logvar)
  return weighted_mean(0.5 * (np.exp(logvar) + mu**2 - 1 - logvar).sum(1), w)


def mixture_kl(mu, logvar, p, means, w):
  """Eq. 19: sum_k p_k KL(N(mu, s^2) || N(m_k, I)) + KL(p || uniform)."""
  mu, logvar, p, means = f64(mu), f64(logvar), f64(p), f64(means)
  per_component = np.stack([0.5 * (np.exp(logvar) + (mu - m) ** 2 - 1 - logvar).sum(1) for m in means], 1)
  return weighted_mean((p * per_component).sum(1) + (p * np.log(p)).sum(1) + np.log(p.shape[1]), w)


def softmax(a):
  a = f64(a)
  e = np.exp(a - a.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def student_t(z, centroids):
  """DEC eq. 1 with alpha = 1."""
  q = 1.0 / (1.0 + ((f64(z)[:, None] - f64(centroids)[None]) ** 2).sum(-1))
  return q / q.sum(1, keepdims=True)


def spectral_posterior(state, mu, y_tilde):
  """The model's soft assignments: the outputs ``Y~ W`` around their centroids once
  clustered, the codes around theirs before."""
  if float(state["clustered"]) > 0:
    return student_t(f64(y_tilde) @ f64(state["orthonorm"]), state["centroids"])
  return student_t(mu, state["code_centroids"])


def pieces(algo, params, batch, rng):
  """The network outputs the loss is made of, with the loss's own random draws."""
  cfg = algo.config
  key_noise, key_shuffle, _ = jax.random.split(rng, 3)
  x, w = batch["x"], batch["weights"]
  mu, logvar, feature_map = algo._encode(params, x)
  if cfg.noise == "sample":
    z_noisy = losses.sample_gaussian(key_noise, mu, logvar)
  else:
    z_noisy = losses.multiplicative_gaussian_noise(key_noise, mu, stddev=cfg.noise_stddev)
  permutation = losses.batch_permutation(key_shuffle, x.shape[0], w)
  global_d = lambda f, z: algo.global_discriminator.apply({"params": params["global_discriminator"]}, f, z)
  local_d = lambda c, z: algo.local_discriminator.apply({"params": params["local_discriminator"]}, c, z)
  z_mi = z_noisy if cfg.global_mi_pairs == "code" else mu
  features = z_mi if cfg.global_mi_pairs == "code" else x
  return {
      "mu": mu, "logvar": logvar, "w": w,
      "reconstruction": algo._decode(params, mu), "reconstruction_noisy": algo._decode(params, z_noisy),
      "global": (global_d(features, z_mi), global_d(features, z_mi[permutation])),
      "local": (local_d(feature_map, mu), local_d(feature_map, mu[permutation])),
      "logits": algo._logits(params, mu),
  }


def numpy_terms(algo, params, batch, rng, clustering):
  cfg = algo.config
  p = jax.jit(lambda params, batch, rng: pieces(algo, params, batch, rng))(params, batch, rng)
  w = f64(p["w"])
  terms = {
      "reconstruction": sum_squares(batch["x"], p["reconstruction"], w),
      "relative_reconstruction": sum_squares(p["reconstruction_noisy"], p["reconstruction"], w),
      "global_mi": jsd(*p["global"], w),
      "local_mi": jsd(*p["local"], w),
  }
  if cfg.prior == "mixture" or (cfg.prior == "paper" and clustering):
    posterior = softmax(p["logits"])
    if clustering and cfg.cluster_posterior == "spectral":
      posterior = spectral_posterior(params[MODEL_STATE], p["mu"], p["logits"])
    terms["prior"] = mixture_kl(p["mu"], p["logvar"], posterior, params["prior_means"], w)
  else:
    terms["prior"] = gaussian_kl(p["mu"], p["logvar"], w)
  if clustering:
    y_tilde = f64(p["logits"]) if cfg.output_activation == "linear" else softmax(p["logits"])
    y = y_tilde @ orthonorm(y_tilde, w)
    d2 = ((y[:, None] - y[None]) ** 2).sum(-1)
    terms["spectral"] = (affinity(f64(p["mu"]), w, 2, 1) * d2 * w[:, None] * w[None, :]).sum() / len(w) ** 2
  return terms


def weighted_total(cfg, terms):
  signs = {"global_mi": -1.0, "local_mi": -1.0}
  return sum(signs.get(name, 1.0) * getattr(cfg, key) * terms[name]
             for key, name in dscdan.WEIGHTS.items() if name in terms)


# ----------------------------------------------------------------------------- the network


@pytest.mark.parametrize("image_shape", [(8, 8, 1), (28, 28, 1), (7, 9, 3)])
def test_dual_autoencoder_shapes(image_shape):
  model = dscdan.DualAutoencoder(image_shape, (4, 8), latent_dim=6)
  x = jax.random.normal(jax.random.key(0), (3, *image_shape))
  variables = model.init(jax.random.key(1), x)
  mu, logvar, feature_map = model.apply(variables, x, method=dscdan.DualAutoencoder.encode)
  h, w = -(-image_shape[0] // 2), -(-image_shape[1] // 2)  # stride 2, "same" padding
  assert mu.shape == logvar.shape == (3, 6) and feature_map.shape == (3, h, w, 4)
  out = model.apply(variables, mu, method=dscdan.DualAutoencoder.decode)
  assert out.shape == x.shape and float(jnp.abs(out).max()) < 1.0  # tanh output
  params = variables["params"]
  assert params["downsample_0"]["kernel"].shape == (3, 3, image_shape[2], 4)
  assert params["refine_1"]["kernel"].shape == (3, 3, 8, 8)
  assert params["output"]["kernel"].shape[:2] == (3, 3)


def test_defaults_are_the_papers():
  cfg = dscdan.Config()
  assert (cfg.latent_dim, cfg.global_mi_weight, cfg.local_mi_weight, cfg.prior_weight,
          cfg.reconstruction_weight) == (120, 0.01, 0.01, 1.0, 0.5)
  assert cfg.conv_features == (32, 64) and cfg.negative_slope == 0.2 and cfg.n_neighbors == 2
  assert (cfg.noise, cfg.global_mi_pairs, cfg.prior, cfg.output_activation, cfg.assign) == (
      "multiplicative", "image", "paper", "linear", "kmeans")


# ----------------------------------------------------------------------------- eq. 13, 19, 20


def test_mixture_kl_is_eq19_and_reduces_to_the_gaussian_kl():
  rng = np.random.default_rng(0)
  mu, logvar = rng.normal(size=(6, 3)), 0.3 * rng.normal(size=(6, 3))
  means = rng.normal(size=(4, 3))
  p = softmax(rng.normal(size=(6, 4)))
  w = np.array([1, 1, 1, 1, 0, 0.5])
  got = dscdan.mixture_kl(jnp.asarray(mu, jnp.float32), jnp.asarray(logvar, jnp.float32), jnp.asarray(p, jnp.float32),
                          jnp.asarray(means, jnp.float32), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(got, mixture_kl(mu, logvar, p, means, w), rtol=1e-5)
  # One-hot p(y|z): the KL to that component's N(mean, I), plus KL(one-hot || uniform) = log K.
  one_hot = jax.nn.one_hot(jnp.full((6,), 2), 4)
  expected = losses.gaussian_kl(mu, logvar, prior_mean=means[2]) + np.log(4)
  np.testing.assert_allclose(dscdan.mixture_kl(mu, logvar, one_hot, means), expected, rtol=1e-5)


@pytest.mark.parametrize("clustering", [False, True])
def test_eq13_and_eq20_match_numpy_with_padding(clustering):
  algo, params = initialised()
  batch = one_batch()
  rng = jax.random.key(4)
  objective = jax.jit(algo.m_step_loss if clustering else (lambda p, b, t, r: algo.warmup_loss(p, b, r)))
  loss, terms = objective(params, batch, None, rng)
  expected = numpy_terms(algo, params, batch, rng, clustering)
  assert set(expected) == set(terms) - {MODEL_STATE}
  for name, value in expected.items():
    np.testing.assert_allclose(terms[name], value, rtol=2e-3, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(loss, weighted_total(algo.config, expected), rtol=2e-3)
  # The padding rows' contents change nothing.
  garbage = {**batch, "x": batch["x"].at[28:].set(3.0)}
  np.testing.assert_allclose(objective(params, garbage, None, rng)[0], loss, rtol=1e-5)


@pytest.mark.parametrize("key", list(dscdan.WEIGHTS))
def test_a_zero_weight_drops_its_term(key):
  algo, params = initialised()
  batch, rng = one_batch(), jax.random.key(4)
  _, full_terms = algo.m_step_loss(params, batch, None, rng)
  zero, _ = initialised(**{key: 0.0})
  loss, terms = zero.m_step_loss(params, batch, None, rng)
  name = dscdan.WEIGHTS[key]
  assert name not in terms
  kept = {k: v for k, v in full_terms.items() if k not in (name, MODEL_STATE)}
  assert set(kept) == set(terms) - {MODEL_STATE}
  np.testing.assert_allclose(loss, weighted_total(zero.config, kept), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("factor", [0.3, 0.0])
def test_joint_autoencoder_weight_scales_the_autoencoder_terms_of_eq20_only(factor):
  algo, params = initialised()
  batch, rng = one_batch(), jax.random.key(4)
  _, terms = algo.m_step_loss(params, batch, None, rng)
  scaled, _ = initialised(joint_autoencoder_weight=factor)
  loss, scaled_terms = scaled.m_step_loss(params, batch, None, rng)
  autoencoder = {k: v for k, v in terms.items() if k not in ("spectral", MODEL_STATE)}
  expected = factor * weighted_total(algo.config, autoencoder) + algo.config.spectral_weight * terms["spectral"]
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-7)
  if factor == 0.0:  # dropped, as a zero weight drops its term
    assert set(scaled_terms) == {"spectral", MODEL_STATE}
  # The warm-up (eq. 13) is unchanged.
  np.testing.assert_allclose(scaled.warmup_loss(params, batch, rng)[0], algo.warmup_loss(params, batch, rng)[0],
                             rtol=1e-6)


def test_the_authors_code_options_match_numpy():
  overrides = {"noise": "sample", "global_mi_pairs": "code", "prior": "mixture", "output_activation": "softmax",
               "local_mi_weight": 0.0}
  algo, params = initialised(**overrides)
  # Sharper softmax outputs: those of a fresh network are nearly constant, and the Gram matrix
  # of their orthonormalization too ill-conditioned to compare with NumPy's jitter-free one.
  output = params["spectral"]["output"]
  params["spectral"] = {**params["spectral"], "output": {**output, "kernel": 30.0 * output["kernel"]}}
  batch, rng = one_batch(), jax.random.key(6)
  for clustering, objective in ((False, lambda: algo.warmup_loss(params, batch, rng)),
                                (True, lambda: algo.m_step_loss(params, batch, None, rng))):
    loss, terms = objective()
    expected = numpy_terms(algo, params, batch, rng, clustering)
    del expected["local_mi"]
    for name, value in expected.items():
      np.testing.assert_allclose(terms[name], value, rtol=2e-3, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(loss, weighted_total(algo.config, expected), rtol=2e-3)


@pytest.mark.parametrize("clustered", [0.0, 1.0])
def test_the_spectral_cluster_posterior_is_the_models_assignments_held_fixed(clustered):
  algo, params = initialised(cluster_posterior="spectral")
  keys = jax.random.split(jax.random.key(11), 3)
  k, d = algo.config.n_clusters, algo.config.latent_dim
  params[MODEL_STATE] = {**params[MODEL_STATE], "clustered": jnp.float32(clustered),
                         "orthonorm": jax.random.normal(keys[0], (k, k)),
                         "centroids": jax.random.normal(keys[1], (k, k)),
                         "code_centroids": 0.1 * jax.random.normal(keys[2], (k, d))}
  batch, rng = one_batch(), jax.random.key(4)
  loss, terms = jax.jit(algo.m_step_loss)(params, batch, None, rng)
  expected = numpy_terms(algo, params, batch, rng, clustering=True)
  np.testing.assert_allclose(terms["prior"], expected["prior"], rtol=2e-3, err_msg="prior")
  np.testing.assert_allclose(loss, weighted_total(algo.config, expected), rtol=2e-3)
  # Held fixed: the prior term alone sends no gradient to the spectral network, but reaches
  # the encoder and the prior's means.
  prior_only, _ = initialised(cluster_posterior="spectral", **{key: 0.0 for key in dscdan.WEIGHTS if key != "prior_weight"})
  grads = jax.grad(lambda p: prior_only.m_step_loss(p, batch, None, rng)[0])(params)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["spectral"]))
  for part in ("ae", "prior_means"):
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[part])), part
  # The softmax posterior does send one.
  softmax_prior, _ = initialised(cluster_posterior="softmax",
                                 **{key: 0.0 for key in dscdan.WEIGHTS if key != "prior_weight"})
  grads = jax.grad(lambda p: softmax_prior.m_step_loss(p, batch, None, rng)[0])(params)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["spectral"]))


def test_gradients_reach_every_network_in_the_joint_phase():
  algo, params = initialised()
  batch = one_batch()
  grads = jax.jit(jax.grad(lambda p: algo.m_step_loss(p, batch, None, jax.random.key(1))[0]))(params)
  for part in ("ae", "spectral", "global_discriminator", "local_discriminator", "prior_means"):
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[part])), part


# ----------------------------------------------------------------------------- the engine


def test_outputs_are_orthonormal_and_the_assignments_are_kmeans_on_them(fitted):
  engine, result = fitted
  state = result.params[MODEL_STATE]
  y_tilde = np.asarray(engine.embed(result.params), np.float64)[:, 8:]
  y = y_tilde @ f64(state["orthonorm"])
  np.testing.assert_allclose(y.T @ y / len(y), np.eye(4), atol=1e-3)  # up to the relative jitter
  nearest = ((y[:, None] - f64(state["centroids"])[None]) ** 2).sum(-1).argmin(1)
  np.testing.assert_array_equal(result.assignments, nearest)


def test_compiles_once_and_learns_the_patterns(fitted):
  engine, result = fitted
  for name in ("warmup_step", "m_step", "predict", "embed"):
    assert engine.trace_counts[name] == 1, engine.trace_counts
  assert [r["round"] for r in result.history if r["phase"] == "round"] == [1, 2, 3]
  assert metrics.acc(engine.labels, result.assignments) > 0.9


def test_clustering_features_are_the_codes_without_the_outputs():
  algo, params = initialised()
  x = jnp.asarray(patterns()[0][:16])
  features = np.asarray(algo.embed(params, x))
  assert features.shape == (16, SMALL["latent_dim"] + SMALL["n_clusters"])
  np.testing.assert_array_equal(algo.clustering_features(features), np.asarray(algo._encode(params, x)[0]))


def test_argmax_assignments_and_the_initial_clustering(fitted):
  engine, result = fitted
  x = engine.x[: engine.n]
  params = result.params
  mu = engine.algo._encode(params, x)[0]
  # assign="argmax" (the authors' code): the argmax of p(y|z), the spectral network's softmax.
  argmax_algo = dscdan.ALGORITHM(dataclasses.replace(engine.config, assign="argmax"), engine.algo.image_shape)
  np.testing.assert_array_equal(np.argmax(argmax_algo.predict(params, x), axis=1),
                                np.argmax(engine.algo._logits(params, mu), axis=1))
  # Before the outputs are clustered (max_rounds=0, the rows of Table 4 without SN): the
  # nearest k-means centroid of the codes.
  state = {**params[MODEL_STATE], "clustered": jnp.zeros(())}
  before = np.argmax(engine.algo.predict({**params, MODEL_STATE: state}, x), axis=1)
  centroids = f64(state["code_centroids"])
  np.testing.assert_array_equal(before, ((f64(mu)[:, None] - centroids[None]) ** 2).sum(-1).argmin(1))


def test_resume_after_interruption_gives_the_same_assignments(tmp_path, fitted, monkeypatch):
  _, uninterrupted = fitted
  interrupt_fit(monkeypatch, lambda: make_engine(workdir=tmp_path), at_epoch=10)  # warm-up 8, round 1, dies in 2
  resumed = make_engine(workdir=tmp_path).fit()
  np.testing.assert_array_equal(resumed.assignments, uninterrupted.assignments)
  np.testing.assert_allclose(resumed.soft_assignments, uninterrupted.soft_assignments, rtol=1e-6)
  assert [r["round"] for r in resumed.history if r["phase"] == "round"] == [2, 3]


@pytest.mark.parametrize("overrides, match", [
    ({"noise": "additive"}, "noise"),
    ({"global_mi_pairs": "pixels"}, "global_mi_pairs"),
    ({"prior": "uniform"}, "prior"),
    ({"cluster_posterior": "argmax"}, "cluster_posterior"),
    ({"assign": "spectral"}, "assign"),
    ({"conv_features": ()}, "conv_features"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"noise_stddev": -0.1}, "noise_stddev"),
    ({"global_mi_weight": -1.0}, "global_mi_weight"),
    ({"spectral_weight": -1.0}, "spectral_weight"),
    ({"joint_autoencoder_weight": -0.5}, "joint_autoencoder_weight"),
    ({"output_activation": "sigmoid"}, "output_activation"),
    ({"n_neighbors": 40}, "n_neighbors"),
])
def test_bad_configs(overrides, match):
  with pytest.raises(ConfigError, match=match):
    dataclasses.replace(dscdan.Config(**SMALL), **overrides).validate(100)


def test_estimator():
  check_estimator(jaxclust.DSCDAN, SMALL)


def test_cli(tmp_path):
  check_cli("dscdan", {**SMALL, "max_rounds": 1}, tmp_path)
