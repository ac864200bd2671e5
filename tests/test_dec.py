"""DEC and IDEC on the engine: the network, the losses against NumPy, rounds of a fixed number
of steps, the clustering optimizer, non-trainable model state, resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxclust import data, nn
from jaxclust.algos import dec, idec
from jaxclust.engine import (
  CLUSTERING,
  MODEL_STATE,
  WARMUP,
  Algorithm,
  Engine,
  TrainConfig,
)
from jaxclust.errors import CheckpointError, ConfigError
from tests.helpers import interrupt_fit, pattern_images

SMALL = dict(hidden_dims=(32, 32, 64), embedding_dim=4, n_clusters=4, batch_size=32, eval_batch_size=64,
             warmup_epochs=3, steps_per_round=5, max_rounds=4, kmeans_n_init=2, tol=0.0)


def patterns():
  x, y = pattern_images()
  return data.scale_to_unit_range(x[..., None]), y


def make_engine(module=dec, workdir=None, **overrides):
  x, y = patterns()
  config = module.Config(**{**SMALL, **overrides})
  return Engine(module.ALGORITHM(config, x.shape[1:]), x, y, workdir=workdir, verbosity=0)


@pytest.fixture(scope="module")
def fitted():
  engine = make_engine()
  return engine, engine.fit()


def numpy_student_t(z, mu, alpha):
  d2 = ((z[:, None, :] - mu[None]) ** 2).sum(-1)
  kernel = (1 + d2 / alpha) ** (-(alpha + 1) / 2)
  return kernel / kernel.sum(1, keepdims=True)


def numpy_dec_target(q):
  w = q**2 / q.sum(0)
  return w / w.sum(1, keepdims=True)


def numpy_mlp(layers, x, relu_last=False):
  h = x.reshape(len(x), -1)
  for i, layer in enumerate(layers):
    h = h @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
    if i < len(layers) - 1 or relu_last:
      h = np.maximum(h, 0)
  return h


def test_mlp_autoencoder_matches_numpy_and_dec_init():
  model = nn.MLPAutoencoder((8, 8, 1), (16, 12), 3)
  x = jax.random.normal(jax.random.key(0), (5, 8, 8, 1))
  params = model.init(jax.random.key(1), x)["params"]
  z, x_hat = model.apply({"params": params}, x)
  encoder = [params[f"encoder_layers_{i}"] for i in range(3)]
  decoder = [params[f"decoder_layers_{i}"] for i in range(3)]
  np.testing.assert_allclose(z, numpy_mlp(encoder, np.asarray(x)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(x_hat.reshape(5, -1), numpy_mlp(decoder, np.asarray(z)), rtol=1e-5, atol=1e-5)
  assert x_hat.shape == x.shape
  # DEC-keras's initialisation: uniform in +-sqrt(1/fan_in).
  kernel = np.asarray(params["encoder_layers_0"]["kernel"])
  bound = np.sqrt(1 / 64)
  assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound


@pytest.mark.parametrize("module", [dec, idec])
def test_m_step_loss_matches_numpy(module):
  x, _ = patterns()
  algo = module.ALGORITHM(module.Config(**SMALL), x.shape[1:])
  params = algo.init(jax.random.key(0), x[:8])
  params["centroids"] = jax.random.normal(jax.random.key(1), params["centroids"].shape)
  batch_x = x[:10]
  weights = np.array([1.0] * 8 + [0.0] * 2, np.float32)  # two padding rows
  targets = jax.nn.softmax(jax.random.normal(jax.random.key(2), (10, 4)))
  loss, terms = algo.m_step_loss(params, {"x": batch_x, "weights": weights}, targets, jax.random.key(3))

  z, x_hat = algo.model.apply({"params": params["ae"]}, batch_x)
  q = numpy_student_t(np.asarray(z), np.asarray(params["centroids"]), 1.0)
  t = np.asarray(targets)
  kl = (t * np.log(t / q)).sum(1)[:8].mean()
  rec = ((np.asarray(batch_x) - np.asarray(x_hat)) ** 2).reshape(10, -1).mean(1)[:8].mean()
  cfg = algo.config
  expected = cfg.clustering_weight * kl + cfg.reconstruction_weight * rec
  np.testing.assert_allclose(terms["clustering"], kl, rtol=1e-4)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  assert ("reconstruction" in terms) == (module is idec)
  if module is idec:
    assert cfg.clustering_weight == 0.1 and cfg.reconstruction_weight == 1.0


def test_outputs_and_targets_are_dec_eq3_of_the_predictions(fitted):
  engine, result = fitted
  np.testing.assert_allclose(result.soft_assignments.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(result.targets, numpy_dec_target(result.soft_assignments), rtol=1e-4, atol=1e-6)
  z = np.asarray(engine.embed(result.params))
  np.testing.assert_allclose(result.soft_assignments, numpy_student_t(z, np.asarray(result.params["centroids"]), 1.0),
                             rtol=1e-4, atol=1e-6)


def test_compiles_once_and_learns_the_patterns(fitted):
  engine, result = fitted
  for name in ("warmup_step", "m_step", "predict", "embed"):
    assert engine.trace_counts[name] == 1, engine.trace_counts
  assert [r["round"] for r in result.history if r["phase"] == "round"] == [1, 2, 3, 4]
  assert result.history[-1]["acc"] > 0.9


def test_rounds_walk_through_consecutive_shuffled_epochs(fitted):
  engine, _ = fitted
  steps = engine.config.steps_per_round
  walked = np.concatenate([engine._round_indices(r)[0] for r in range(1, 8)])
  epochs = np.concatenate([engine._epoch_indices(CLUSTERING, 0, e)[0] for e in range(10)])
  np.testing.assert_array_equal(walked, epochs[: 7 * steps])
  # Every sample appears once per epoch (padding rows have weight 0).
  index, weights = engine._epoch_indices(CLUSTERING, 0, 0)
  assert sorted(index.ravel()[weights.ravel() > 0]) == list(range(engine.n))


def test_clustering_phase_uses_sgd_with_momentum_and_warmup_adam():
  engine = make_engine()
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, 0.25])}
  for phase, reference in ((CLUSTERING, optax.sgd(0.01, momentum=0.9)), (WARMUP, optax.adam(1e-3))):
    opt = engine.optimizers[phase]
    state, ref_state = opt.init(params), reference.init(params)
    for _ in range(3):
      u, state = opt.update(grads, state, params)
      r, ref_state = reference.update(grads, ref_state, params)
      np.testing.assert_allclose(u["w"], r["w"], rtol=1e-6)


def test_resume_after_interruption_gives_the_same_assignments(tmp_path, fitted, monkeypatch):
  _, uninterrupted = fitted
  interrupt_fit(monkeypatch, lambda: make_engine(workdir=tmp_path), at_epoch=6)  # dies in round 3
  resumed = make_engine(workdir=tmp_path).fit()
  np.testing.assert_array_equal(resumed.assignments, uninterrupted.assignments)
  np.testing.assert_allclose(resumed.soft_assignments, uninterrupted.soft_assignments, rtol=1e-6)
  assert [r["round"] for r in resumed.history if r["phase"] == "round"] == [3, 4]


def test_pretrained_skips_the_warmup_and_matches_a_run_that_warmed_up_itself(tmp_path):
  make_engine(dec, workdir=tmp_path / "dec").fit()  # IDEC warms up exactly as DEC does
  own = make_engine(idec).fit()
  reused = make_engine(idec, workdir=tmp_path / "idec", pretrained=str(tmp_path / "dec")).fit()
  assert [r["phase"] for r in reused.history][:2] == ["pretrained", "init"]
  np.testing.assert_array_equal(reused.assignments, own.assignments)
  np.testing.assert_allclose(reused.soft_assignments, own.soft_assignments, rtol=1e-5, atol=1e-6)


def test_pretrained_refuses_what_it_cannot_use(tmp_path, monkeypatch):
  with pytest.raises(CheckpointError, match="not a workdir"):
    make_engine(pretrained=str(tmp_path / "missing")).fit()
  make_engine(workdir=tmp_path / "warm", max_rounds=0).fit()
  with pytest.raises(CheckpointError, match="do not fit this network"):
    make_engine(pretrained=str(tmp_path / "warm"), embedding_dim=3).fit()
  # A run killed in its warm-up has nothing to offer yet.
  interrupt_fit(monkeypatch, lambda: make_engine(workdir=tmp_path / "cold"), at_epoch=3)
  with pytest.raises(CheckpointError, match="no finished warm-up"):
    make_engine(pretrained=str(tmp_path / "cold")).fit()


@pytest.mark.parametrize("overrides, match", [
    (dict(optimizer="rmsprop"), "optimizer"),
    (dict(encoder="resnet"), "encoder"),
    (dict(alpha=0.0), "alpha"),
    (dict(steps_per_round=-1), "steps_per_round"),
    (dict(clustering_weight=-1.0), "clustering_weight"),
])
def test_bad_configs(overrides, match):
  with pytest.raises(ConfigError, match=match):
    dec.Config(**{**SMALL, **overrides}).validate(100)


# -- non-trainable model state (batch-norm statistics) under MODEL_STATE


@dataclasses.dataclass(frozen=True)
class CounterConfig(TrainConfig):
  n_clusters: int = 2
  warmup_epochs: int = 2
  max_rounds: int = 0
  batch_size: int = 16
  learning_rate: float = 0.1


class CountingAlgorithm(Algorithm):
  """A loss that depends on a state value, which each step increments (like a running mean)."""

  def __init__(self):
    self.config = CounterConfig()

  def init(self, rng, example_x):
    return {"w": jnp.zeros(()), "centroids": jnp.zeros((2, 1)), MODEL_STATE: {"steps": jnp.zeros(())}}

  def warmup_loss(self, params, batch, rng):
    state = params[MODEL_STATE]["steps"]
    loss = jnp.square(params["w"] - 1.0) + jnp.square(state)  # a nonzero gradient for the state
    return loss, {MODEL_STATE: {"steps": state + 1.0}}

  def embed(self, params, x):
    return x.reshape(x.shape[0], -1)[:, :1] + params["w"]

  def init_clusters(self, params, features, rng):
    return params, jax.nn.one_hot(jnp.asarray(features[:, 0] > 0.5, jnp.int32), 2)

  def predict(self, params, x):
    return jax.nn.one_hot(jnp.zeros(x.shape[0], jnp.int32), 2)

  def e_step(self, soft):
    return soft

  def m_step_loss(self, params, batch, targets, rng):
    return jnp.zeros(()), {}


def test_model_state_is_replaced_by_the_loss_and_never_trained():
  x = np.random.default_rng(0).uniform(size=(40, 2, 2, 1)).astype(np.float32)
  engine = Engine(CountingAlgorithm(), x, verbosity=0)
  result = engine.fit()
  steps = 2 * engine.steps_per_epoch
  assert float(result.params[MODEL_STATE]["steps"]) == steps  # not moved by Adam
  assert float(result.params["w"]) > 0  # the trainable part did move
  assert "model_state" not in [k for r in result.history for k in r]
