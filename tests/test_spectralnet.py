"""SpectralNet on the engine: the loss as the algorithm composes it against NumPy (padding
rows, the orthogonalization batch, frozen codes, which weights the gradient reaches),
orthonormal outputs at prediction time, the per-round k-means, compile-once, learning,
resume, bad configs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxclust
from jaxclust import cli, cluster, data, metrics, report
from jaxclust.algos import spectralnet
from jaxclust.engine import MODEL_STATE, Engine
from jaxclust.errors import ConfigError
from tests.helpers import interrupt_fit, pattern_images

SMALL = {"n_clusters": 4, "hidden_dims": (32, 32, 64), "embedding_dim": 4, "spectral_hidden": (32, 32),
         "batch_size": 32, "eval_batch_size": 64, "warmup_epochs": 10, "steps_per_round": 10, "max_rounds": 4,
         "kmeans_n_init": 2, "tol": 0.0}


def patterns():
  x, y = pattern_images()
  return data.scale_to_unit_range(x[..., None]), y


def make_engine(workdir=None, **overrides):
  x, y = patterns()
  config = spectralnet.Config(**{**SMALL, **overrides})
  return Engine(spectralnet.ALGORITHM(config, x.shape[1:]), x, y, workdir=workdir, verbosity=0)


@pytest.fixture(scope="module")
def fitted():
  engine = make_engine()
  return engine, engine.fit()


# ----------------------------------------------------------------------------- NumPy references


def numpy_mlp(layers, h, last=None):
  h = np.asarray(h, np.float64).reshape(len(h), -1)
  for i, layer in enumerate(layers):
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < len(layers) - 1:
      h = np.maximum(h, 0)
  return h if last is None else last(h)


def numpy_codes(params, x):
  return numpy_mlp([params["ae"][f"encoder_layers_{i}"] for i in range(4)], x)


def numpy_outputs(params, codes, last=np.tanh):
  spectral_params = params["spectral"]
  names = sorted(k for k in spectral_params if k.startswith("hidden")) + ["output"]
  return numpy_mlp([spectral_params[n] for n in names], codes, last)


def numpy_orthonorm(y, weights):
  """sqrt(m) (L^-1)^T with L L^T = Y^T diag(w) Y (eq. 17-18), float64, no jitter."""
  gram = (y * weights[:, None]).T @ y
  return np.sqrt(weights.sum()) * np.linalg.inv(np.linalg.cholesky(gram)).T


def numpy_affinity(x, weights, k, s):
  """Symmetrised Gaussian kNN affinity among the rows of positive weight, with SpectralNet's
  median scale (the s-th neighbour, the point itself excluded)."""
  valid = weights > 0
  d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  d2[np.eye(len(x), dtype=bool) | ~valid[None, :]] = np.inf
  order = np.argsort(d2, axis=1)
  sigma = np.median(np.sqrt(np.take_along_axis(d2, order[:, s - 1:s], 1)[valid, 0]))
  a = np.zeros_like(d2)
  for i in np.flatnonzero(valid):
    for j in order[i, :k]:
      a[i, j] = np.exp(-d2[i, j] / (2 * sigma**2))
  return (a + a.T) / 2


def numpy_spectral_loss(y, affinity, weights):
  """Eq. 16 over the fixed batch size: sum_ij w_i w_j W_ij ||y_i - y_j||^2 / B^2."""
  d2 = ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)
  return (affinity * d2 * weights[:, None] * weights[None, :]).sum() / len(y) ** 2


def one_batch(n_real=28):
  """A training batch of 32 rows of which the last 32 - n_real are padding."""
  x, _ = patterns()
  dataset = np.concatenate([x, np.zeros((28, *x.shape[1:]), np.float32)])  # padded like the engine's
  index = np.arange(32) + 3
  weights = (np.arange(32) < n_real).astype(np.float32)
  return {"x": jnp.asarray(dataset[index]), "weights": jnp.asarray(weights), "index": jnp.asarray(index),
          "dataset": jnp.asarray(dataset)}, len(x)


def initialised(orthonorm_gradient=True, orthonorm_batch="separate", **overrides):
  x, _ = patterns()
  algo = spectralnet.ALGORITHM(spectralnet.Config(**{**SMALL, "orthonorm_gradient": orthonorm_gradient,
                                                     "orthonorm_batch": orthonorm_batch, **overrides}), x.shape[1:])
  params = algo.init(jax.random.key(0), jnp.asarray(x[:8]))
  params[MODEL_STATE]["n_samples"] = jnp.float32(len(x))
  return algo, params


# ----------------------------------------------------------------------------- the loss


def test_orthogonalization_draw_does_not_depend_on_the_batch_padding():
  """The engine pads a batch to a multiple of the device count with weight-0 rows; the
  separate orthogonalization batch is ``batch_size`` rows whatever the padding, so the loss
  of 30 real rows is the same padded to 32 (4 devices) as unpadded (1 device)."""
  algo, params = initialised(batch_size=30)
  padded, _ = one_batch(n_real=30)
  unpadded = {**padded, "x": padded["x"][:30], "weights": padded["weights"][:30], "index": padded["index"][:30]}
  key = jax.random.key(7)
  loss_padded, terms_padded = algo.m_step_loss(params, padded, None, key)
  loss_unpadded, terms_unpadded = algo.m_step_loss(params, unpadded, None, key)
  np.testing.assert_allclose(loss_padded, loss_unpadded, rtol=1e-5)
  np.testing.assert_allclose(terms_padded[MODEL_STATE]["orthonorm"], terms_unpadded[MODEL_STATE]["orthonorm"],
                             rtol=1e-4)



@pytest.mark.parametrize("orthonorm_batch", ["separate", "same"])
def test_m_step_loss_matches_numpy(orthonorm_batch):
  algo, params = initialised(orthonorm_batch=orthonorm_batch)
  batch, n = one_batch()
  key = jax.random.key(5)
  loss, terms = algo.m_step_loss(params, batch, None, key)

  w = np.asarray(batch["weights"], np.float64)
  codes = numpy_codes(params, batch["x"])
  y_tilde = numpy_outputs(params, codes)
  if orthonorm_batch == "separate":
    index, weights_orth = spectralnet.draw_rows(key, batch["dataset"].shape[0], 32, jnp.float32(n))
    y_orth = numpy_outputs(params, numpy_codes(params, np.asarray(batch["dataset"])[np.asarray(index)]))
    orthonorm = numpy_orthonorm(y_orth, np.asarray(weights_orth, np.float64))
  else:
    orthonorm = numpy_orthonorm(y_tilde, w)
  y = y_tilde @ orthonorm
  expected = numpy_spectral_loss(y, numpy_affinity(codes, w, 2, 1), w)
  np.testing.assert_allclose(loss, expected, rtol=2e-3)
  np.testing.assert_allclose(terms["spectral"], expected, rtol=2e-3)
  # The step stores the orthonorm weights it used (the layer's weights for prediction). The
  # fresh network's outputs are nearly collinear, so the weights are large and ill-conditioned.
  np.testing.assert_allclose(terms[MODEL_STATE]["orthonorm"], orthonorm, rtol=1e-2,
                             atol=1e-2 * np.abs(orthonorm).max())
  if orthonorm_batch == "same":  # then the batch's own outputs are orthonormal
    np.testing.assert_allclose((y * w[:, None]).T @ y / w.sum(), np.eye(4), atol=1e-9)


def test_padding_rows_change_nothing_and_a_full_batch_is_eq16():
  algo, params = initialised(orthonorm_batch="same")
  batch, _ = one_batch(n_real=28)
  garbage = batch["x"].at[28:].set(5.0)
  loss = algo.m_step_loss(params, batch, None, jax.random.key(1))[0]
  np.testing.assert_allclose(algo.m_step_loss(params, {**batch, "x": garbage}, None, jax.random.key(1))[0], loss,
                             rtol=1e-5)
  # A full batch: exactly jaxclust.spectral.spectral_loss (1/m^2).
  full, _ = one_batch(n_real=32)
  codes = numpy_codes(params, full["x"])
  y_tilde = numpy_outputs(params, codes)
  y = y_tilde @ numpy_orthonorm(y_tilde, np.ones(32))
  d2 = ((y[:, None] - y[None]) ** 2).sum(-1)
  expected = (numpy_affinity(codes, np.ones(32), 2, 1) * d2).sum() / 32**2
  np.testing.assert_allclose(algo.m_step_loss(params, full, None, jax.random.key(1))[0], expected, rtol=2e-3)


@pytest.mark.parametrize("orthonorm_gradient", [True, False])
def test_gradient_reaches_the_spectral_network_only_and_through_the_orthonorm_weights_if_asked(orthonorm_gradient):
  algo, params = initialised(orthonorm_gradient=orthonorm_gradient)
  batch, _ = one_batch()
  key = jax.random.key(2)
  grads = jax.grad(lambda p: algo.m_step_loss(p, batch, None, key)[0])(params)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["ae"]))  # frozen codes
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["spectral"]))

  # The same loss with the step's orthonorm weights as a constant.
  orthonorm = algo.m_step_loss(params, batch, None, key)[1][MODEL_STATE]["orthonorm"]

  def with_constant_weights(spectral_params):
    p = {**params, "spectral": spectral_params}
    codes = algo._codes(p, batch["x"])
    y = spectralnet.orthonormal_outputs(algo._outputs(p, codes), orthonorm)
    affinity = spectralnet.batch_affinity(algo.config, codes, batch["weights"])
    return spectralnet.batch_spectral_loss(y, affinity, batch["weights"], 32)

  fixed = jax.grad(with_constant_weights)(params["spectral"])
  differences = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(grads["spectral"]),
                                                                jax.tree.leaves(fixed))]
  if orthonorm_gradient:
    assert max(differences) > 1e-4
  else:
    assert max(differences) < 1e-6


def test_orthogonalization_batches_are_distinct_real_rows():
  index, weights = spectralnet.draw_rows(jax.random.key(0), 128, 32, jnp.float32(100))
  index = np.asarray(index)
  assert len(set(index)) == 32 and index.max() < 100 and np.all(np.asarray(weights) == 1)
  index, weights = spectralnet.draw_rows(jax.random.key(0), 128, 32, jnp.float32(20))  # fewer rows than B
  real = np.asarray(weights) > 0
  assert sorted(np.asarray(index)[real]) == list(range(20))


# ----------------------------------------------------------------------------- the engine


def test_outputs_are_orthonormal_and_assignments_are_kmeans_on_them(fitted):
  engine, result = fitted
  params = result.params
  state = params[MODEL_STATE]
  features = np.asarray(engine.embed(params), np.float64)
  codes, y_tilde = features[:, :4], features[:, 4:]
  y = y_tilde @ np.asarray(state["orthonorm"], np.float64)
  np.testing.assert_allclose(y.T @ y / len(y), np.eye(4), atol=1e-4)  # Y^T Y / N = I
  centroids = np.asarray(state["centroids"], np.float64)
  nearest = ((y[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
  np.testing.assert_array_equal(result.assignments, nearest)
  # The centroids are a k-means fixed point: each is the mean of its points.
  for k in range(4):
    np.testing.assert_allclose(centroids[k], y[nearest == k].mean(0), atol=1e-4)
  np.testing.assert_allclose(result.soft_assignments.sum(1), 1.0, rtol=1e-5)
  assert float(state["clustered"]) == 1.0 and codes.shape == (100, 4)


def test_compiles_once_and_learns_the_patterns(fitted):
  engine, result = fitted
  for name in ("warmup_step", "m_step", "predict", "embed"):
    assert engine.trace_counts[name] == 1, engine.trace_counts
  assert [r["round"] for r in result.history if r["phase"] == "round"] == [1, 2, 3, 4]
  assert metrics.acc(engine.labels, result.assignments) > 0.9


def test_reclustering_is_warm_started_from_the_previous_centroids():
  algo, params = initialised()
  y_tilde = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
  features = np.concatenate([np.zeros((60, 4), np.float32), y_tilde], axis=1)
  first = algo.update_clusters(params, features, jax.random.key(0))[MODEL_STATE]
  # Lloyd from the previous centroids on unchanged outputs stays where it is, whatever the key.
  second = algo.update_clusters({**params, MODEL_STATE: first}, features, jax.random.key(1))[MODEL_STATE]
  np.testing.assert_allclose(second["centroids"], first["centroids"], atol=1e-6)


def test_first_clustering_of_the_outputs_is_numbered_after_kmeans_on_the_codes():
  """The first ``update_clusters`` replaces k-means on the codes by k-means on the outputs;
  where both find the same groups, every point keeps its cluster's index."""
  algo, params = initialised()
  rng = np.random.default_rng(0)
  groups = np.repeat(np.arange(4), 15)
  codes = (5.0 * np.eye(4)[groups] + 0.1 * rng.normal(size=(60, 4))).astype(np.float32)
  # Outputs with the same four groups, in another order of directions.
  y_tilde = (5.0 * np.eye(4)[[2, 0, 3, 1]][groups] + 0.1 * rng.normal(size=(60, 4))).astype(np.float32)
  features = np.concatenate([codes, y_tilde], axis=1)
  for key in range(3):
    params, _ = algo.init_clusters(params, features, jax.random.key(key))
    before = np.asarray(cluster.assign(codes, params[MODEL_STATE]["code_centroids"]))
    assert len(set(before)) == 4
    state = algo.update_clusters(params, features, jax.random.key(10 + key))[MODEL_STATE]
    y = y_tilde @ np.asarray(state["orthonorm"])
    np.testing.assert_array_equal(np.asarray(cluster.assign(y, state["centroids"])), before)


def test_clustering_features_are_the_codes_without_the_outputs():
  algo, params = initialised()
  x = jnp.asarray(patterns()[0][:16])
  features = np.asarray(algo.embed(params, x))
  assert features.shape == (16, SMALL["embedding_dim"] + SMALL["n_clusters"])
  np.testing.assert_array_equal(algo.clustering_features(features), np.asarray(algo._codes(params, x)))


def test_no_rounds_gives_kmeans_on_the_codes():
  engine = make_engine(max_rounds=0)
  result = engine.fit()
  init = next(r for r in result.history if r["phase"] == "init")
  assert metrics.acc(engine.labels, result.assignments) == pytest.approx(init["acc"])
  codes = np.asarray(engine.embed(result.params))[:, :4]
  centroids = np.asarray(result.params[MODEL_STATE]["code_centroids"])
  np.testing.assert_array_equal(result.assignments, ((codes[:, None] - centroids[None]) ** 2).sum(-1).argmin(1))


def test_resume_after_interruption_gives_the_same_assignments(tmp_path, fitted, monkeypatch):
  _, uninterrupted = fitted
  interrupt_fit(monkeypatch, lambda: make_engine(workdir=tmp_path), at_epoch=12)  # warm-up 10, round 1, dies in 2
  resumed = make_engine(workdir=tmp_path).fit()
  np.testing.assert_array_equal(resumed.assignments, uninterrupted.assignments)
  np.testing.assert_allclose(resumed.soft_assignments, uninterrupted.soft_assignments, rtol=1e-6)
  assert [r["round"] for r in resumed.history if r["phase"] == "round"] == [2, 3, 4]


@pytest.mark.parametrize("overrides, match", [
    ({"optimizer": "sgd"}, "optimizer"),
    ({"output_activation": "relu"}, "output_activation"),
    ({"orthonorm_batch": "other"}, "orthonorm_batch"),
    ({"n_neighbors": 0}, "n_neighbors"),
    ({"n_neighbors": 32}, "n_neighbors"),
    ({"affinity_scale": -1.0}, "affinity_scale"),
    ({"scale_neighbor": 0}, "scale_neighbor"),
    ({"spectral_hidden": ()}, "spectral_hidden"),
    ({"kmeans_n_init": 0}, "kmeans_n_init"),
    ({"embedding_dim": 0}, "layer sizes"),
])
def test_bad_configs(overrides, match):
  with pytest.raises(ConfigError, match=match):
    spectralnet.Config(**{**SMALL, **overrides}).validate(100)


def check_estimator(estimator, config):
  """``estimator`` fits the patterns; ``predict`` and ``predict_proba`` agree with the fit."""
  x, y = pattern_images()
  model = estimator(n_clusters=4, config=config)
  labels = model.fit_predict(x)
  np.testing.assert_array_equal(model.predict(x), labels)
  np.testing.assert_allclose(model.predict_proba(x[:5]).sum(1), 1.0, rtol=1e-5)
  assert jaxclust.acc(y, labels) > 0.9


def test_estimator():
  check_estimator(jaxclust.SpectralNet, {**SMALL, "max_rounds": 1})


def check_cli(algo, config, tmp_path):
  """``bin/train --algo ALGO`` on an npz of the patterns writes its summary and assignments."""
  x, y = pattern_images()
  path = tmp_path / "patterns.npz"
  np.savez(path, x=(x * 255).astype(np.uint8), y=y)
  overrides = [arg for k, v in config.items() for arg in ("--set", f"{k}={v!r}")]
  workdir = tmp_path / "run"
  assert cli.main(["--algo", algo, "--dataset", f"npz:{path}", "--workdir", str(workdir), "--quiet",
                   *overrides]) == 0
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["algo"] == algo and summary["rounds"] == config["max_rounds"]
  assert summary["acc"] == pytest.approx(metrics.acc(y, np.load(workdir / "assignments.npy")))


def test_cli(tmp_path):
  check_cli("spectralnet", {**SMALL, "max_rounds": 1}, tmp_path)
  # The report's embedding plot projects the codes alone, not the spectral outputs beside them.
  pytest.importorskip("matplotlib")
  from sklearn.decomposition import PCA

  from jaxclust.checkpoint import Checkpointer

  workdir = tmp_path / "run"
  saved = np.load(workdir / report.PROJECTIONS_FILE)
  x = data.load_dataset(f"npz:{tmp_path / 'patterns.npz'}").x
  with Checkpointer(workdir / "checkpoints") as checkpoints:
    params = checkpoints.restore_saved(int(saved["final_step"]))["params"]
  reference = PCA(n_components=2).fit_transform(numpy_codes(params, x))
  projection = saved["projections"][-1]
  signs = np.sign(np.sum(projection * reference, axis=0))
  np.testing.assert_allclose(projection * signs, reference, rtol=1e-4, atol=1e-4)
