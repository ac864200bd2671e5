"""The engine running DEPICT end to end on tiny data: invariants, compile-once, resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclust import data, metrics
from jaxclust.algos import depict
from jaxclust.engine import MODEL_STATE, Algorithm, Engine, TrainConfig
from jaxclust.errors import ConfigError, TrainingError
from jaxclust.targets import depict_target
from tests.helpers import TINY, interrupt_fit, pattern_images


def make_engine(workdir=None, labels=True, **overrides):
  x, y = pattern_images()
  x = data.scale_to_unit_range(x[..., None])
  config = depict.DepictConfig(**{**TINY, "n_clusters": 4, **overrides})
  return Engine(depict.Depict(config, x.shape[1:]), x, y if labels else None, workdir=workdir, verbosity=0)


@pytest.fixture(scope="module")
def fitted():
  engine = make_engine()
  return engine, engine.fit()


def test_outputs_are_distributions_and_assignments(fitted):
  engine, result = fitted
  n = engine.n
  assert result.assignments.shape == (n,) and result.assignments.dtype == np.int32
  assert result.soft_assignments.shape == (n, 4)
  np.testing.assert_allclose(result.soft_assignments.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(result.assignments, result.soft_assignments.argmax(axis=1))
  np.testing.assert_allclose(result.targets.sum(axis=1), 1.0, rtol=1e-5)
  assert np.all(result.targets >= 0)


def test_targets_are_eq7_of_the_clean_predictions(fitted):
  engine, result = fitted
  # The last E-step ran on the same parameters the final predictions come from.
  expected = np.asarray(depict_target(result.soft_assignments))
  np.testing.assert_allclose(result.targets, expected, rtol=1e-4, atol=1e-6)


def test_each_step_function_compiles_once(fitted):
  engine, result = fitted
  assert result.rounds == TINY["max_rounds"]
  for name in ("warmup_step", "m_step", "predict", "embed"):
    assert engine.trace_counts[name] == 1, engine.trace_counts


def test_history_has_one_record_per_round_with_scores(fitted):
  engine, result = fitted
  rounds = [r for r in result.history if r["phase"] == "round"]
  assert [r["round"] for r in rounds] == list(range(1, TINY["max_rounds"] + 1))
  for r in rounds:
    assert {"loss", "clustering", "rec0", "changed", "acc", "nmi", "ari", "seconds"} <= set(r)
    assert 0.0 <= r["changed"] <= 1.0
  warmups = [r for r in result.history if r["phase"] == "warmup"]
  assert len(warmups) == TINY["warmup_epochs"]


def test_learns_the_patterns():
  engine = make_engine(max_rounds=5)
  result = engine.fit()
  assert metrics.acc(engine.labels, result.assignments) > 0.9


def test_same_seed_same_assignments_and_other_seed_runs(fitted):
  _, result = fitted
  again = make_engine().fit()
  np.testing.assert_array_equal(again.assignments, result.assignments)
  np.testing.assert_array_equal(again.soft_assignments, result.soft_assignments)


def test_scan_epochs_match_loop_epochs():
  loop = make_engine(epoch_mode="loop", max_rounds=1).fit()
  scan = make_engine(epoch_mode="scan", max_rounds=1).fit()
  np.testing.assert_allclose(scan.soft_assignments, loop.soft_assignments, atol=2e-4)


def test_stops_when_assignments_settle():
  engine = make_engine(max_rounds=30, tol=0.05)
  result = engine.fit()
  changes = [r["changed"] for r in result.history if r["phase"] == "round"]
  assert result.converged and changes[-1] < 0.05
  assert all(c >= 0.05 for c in changes[:-1])


def interrupt_run(monkeypatch, workdir, at_epoch):
  """Runs a fit that is interrupted (KeyboardInterrupt) at its ``at_epoch``-th epoch."""
  interrupt_fit(monkeypatch, lambda: make_engine(workdir=workdir), at_epoch)


def test_resume_after_interruption_gives_the_same_assignments(tmp_path, fitted, monkeypatch):
  _, uninterrupted = fitted
  interrupt_run(monkeypatch, tmp_path, at_epoch=6)  # warm-up 2 + initial fit 2 + round 1, die in round 2
  resumed = make_engine(workdir=tmp_path).fit()
  np.testing.assert_array_equal(resumed.assignments, uninterrupted.assignments)
  np.testing.assert_array_equal(resumed.soft_assignments, uninterrupted.soft_assignments)
  # The resumed process ran only what was missing: round 2 and 3.
  phases = [(r["phase"], r.get("round")) for r in resumed.history]
  assert phases == [("round", 2), ("round", 3)]


def test_resume_in_the_warmup(tmp_path, fitted, monkeypatch):
  _, uninterrupted = fitted
  interrupt_run(monkeypatch, tmp_path, at_epoch=2)
  resumed = make_engine(workdir=tmp_path).fit()
  np.testing.assert_array_equal(resumed.assignments, uninterrupted.assignments)
  assert [r["epoch"] for r in resumed.history if r["phase"] == "warmup"] == [2]


def test_metrics_jsonl_written_and_warmed_up_and_initial_clustering_checkpoints_kept(tmp_path):
  make_engine(workdir=tmp_path, max_rounds=4).fit()
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  initial = TINY["warmup_epochs"] + 1
  # The latest two, the last warm-up epoch and the initial clustering.
  assert steps == [initial - 1, initial, initial + 3, initial + 4]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in records if r["phase"] == "round"] == [1, 2, 3, 4]


def test_nan_loss_stops_with_the_round_and_term_and_keeps_the_checkpoint(tmp_path, monkeypatch):
  original = depict.Depict.m_step_loss

  def poisoned(self, params, batch, targets, rng):
    loss, terms = original(self, params, batch, targets, rng)
    return loss * jnp.nan, {**terms, "clustering": terms["clustering"] * jnp.nan}

  monkeypatch.setattr(depict.Depict, "m_step_loss", poisoned)
  engine = make_engine(workdir=tmp_path, init_epochs=0)
  with pytest.raises(TrainingError, match=r"loss became nan in round 1.*checkpoint"):
    engine.fit()
  kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  # The warm-up epochs and the initial clustering (step warmup_epochs + 1) are kept.
  assert str(TINY["warmup_epochs"] + 1) in kept


def test_semi_supervised_targets_are_fixed_to_the_best_map_cluster():
  engine = make_engine(n_labeled=20, max_rounds=2)
  result = engine.fit()
  rows = np.asarray(engine._fixed_rows)
  assert len(rows) == 20
  fixed = result.targets[rows]
  np.testing.assert_array_equal(fixed.max(axis=1), 1.0)  # one-hot
  # Same class -> same cluster, different classes -> different clusters.
  classes = engine.labels[rows]
  clusters = fixed.argmax(axis=1)
  for c in np.unique(classes):
    assert len(set(clusters[classes == c])) == 1
  assert len(set(clusters)) == len(np.unique(classes))


def test_ward_clusters_match_scipys_ward_linkage_and_their_means():
  from scipy.cluster.hierarchy import fcluster, linkage

  rng = np.random.default_rng(3)
  features = np.concatenate([rng.normal(c, 0.3, size=(40, 3)) for c in ((0, 0, 0), (3, 0, 0), (0, 3, 1))])
  labels, centroids = depict.ward_clusters(features, 3)
  expected = fcluster(linkage(features, method="ward"), t=3, criterion="maxclust")
  assert metrics.acc(expected, np.asarray(labels)) == 1.0  # the same partition
  for c in range(3):
    np.testing.assert_allclose(centroids[c], features[np.asarray(labels) == c].mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize("method", ["ward", "acpic"])
def test_agglomerative_initial_clustering_sets_the_targets_and_the_softmax_weights(method):
  engine = make_engine(init_clustering=method)
  params = engine.algo.init(jax.random.key(0), engine.x[:8])
  features = np.asarray(engine.embed(params))
  params, targets = engine.algo.init_clusters(params, features, jax.random.key(1))
  labels, centroids = getattr(depict, f"{method}_clusters")(features, 4)
  assert len(np.unique(np.asarray(labels))) == 4
  np.testing.assert_array_equal(np.asarray(targets).argmax(axis=1), np.asarray(labels))
  unit = np.asarray(centroids) / np.linalg.norm(np.asarray(centroids), axis=1, keepdims=True)
  np.testing.assert_allclose(params["head"]["kernel"], unit.T, rtol=1e-5)
  assert engine.fit().rounds >= 1


def test_spectral_clusters_follow_the_neighbour_graph_where_kmeans_cuts_across_it():
  # Two concentric rings: k-means splits them by a line, the kNN graph keeps each ring whole.
  from sklearn.cluster import KMeans

  rng = np.random.default_rng(5)
  angles = rng.uniform(0, 2 * np.pi, size=200)
  radius = np.where(np.arange(200) < 100, 1.0, 3.0) + rng.normal(0, 0.05, size=200)
  features = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
  rings = (np.arange(200) >= 100).astype(int)
  labels, centroids = depict.spectral_clusters(features, 2, n_neighbors=10, seed=0)
  assert metrics.acc(rings, np.asarray(labels)) == 1.0
  assert metrics.acc(rings, KMeans(2, n_init=10, random_state=0).fit_predict(features)) < 0.8
  for c in range(2):
    np.testing.assert_allclose(centroids[c], features[np.asarray(labels) == c].mean(axis=0), rtol=1e-5)


def test_spectral_initial_clustering_sets_the_targets_and_the_softmax_weights():
  engine = make_engine(init_clustering="spectral", spectral_neighbors=5)
  params = engine.algo.init(jax.random.key(0), engine.x[:8])
  features = np.asarray(engine.embed(params))
  params, targets = engine.algo.init_clusters(params, features, jax.random.key(1))
  labels = np.asarray(targets).argmax(axis=1)
  assert np.asarray(targets).max(axis=1).min() == 1.0  # one-hot
  centroids = np.stack([features[labels == c].mean(axis=0) for c in range(4)])
  unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
  np.testing.assert_allclose(params["head"]["kernel"], unit.T, rtol=1e-5, atol=1e-6)
  assert engine.fit().rounds >= 1


def test_ward_refuses_a_dataset_too_large_for_its_distance_matrix():
  config = depict.DepictConfig(**{**TINY, "init_clustering": "ward"})
  with pytest.raises(ConfigError, match="at most 30000"):
    config.validate(depict.WARD_MAX_SAMPLES + 1)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"n_clusters": 1}, "n_clusters must be between 2"),
        ({"n_clusters": 1000}, "n_clusters must be between 2"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"prior": (1.0, 2.0)}, "prior must have n_clusters"),
        ({"target_form": "cubed"}, "target_form"),
        ({"init_clustering": "dbscan"}, "init_clustering"),
        ({"init_clustering": "spectral", "spectral_neighbors": 1}, "spectral_neighbors"),
        ({"n_labeled": 5}, "needs a dataset with labels"),
    ],
)
def test_bad_configs(overrides, match):
  with pytest.raises(ConfigError, match=match):
    make_engine(labels="n_labeled" not in overrides, **overrides)


# -- the optional per-round re-clustering hook, Algorithm.update_clusters


class ThresholdAlgorithm(Algorithm):
  """Two clusters split by a threshold on the first pixel, which ``update_clusters`` sets
  after every round from the whole dataset's embeddings and its rng; training moves the
  embeddings (``x + w``), so each round's threshold differs."""

  def __init__(self):
    self.config = TrainConfig(n_clusters=2, warmup_epochs=1, max_rounds=3, batch_size=16, tol=0.0)
    self.calls = []  # (embeddings, key data) of each update_clusters call

  def init(self, rng, example_x):
    return {"w": jnp.zeros(()), MODEL_STATE: {"threshold": jnp.zeros(())}}

  def warmup_loss(self, params, batch, rng):
    return jnp.square(params["w"]), {}

  def embed(self, params, x):
    return x.reshape(x.shape[0], -1)[:, :1] + params["w"]

  def init_clusters(self, params, features, rng):
    return params, jax.nn.one_hot(jnp.asarray(features[:, 0] > 0.5, jnp.int32), 2)

  def update_clusters(self, params, features, rng):
    self.calls.append((features.copy(), np.asarray(jax.random.key_data(rng))))
    threshold = np.quantile(features[:, 0], 0.3 + 0.4 * float(jax.random.uniform(rng)))
    return {**params, MODEL_STATE: {"threshold": jnp.asarray(threshold, jnp.float32)}}

  def predict(self, params, x):
    above = self.embed(params, x)[:, 0] > params[MODEL_STATE]["threshold"]
    return jax.nn.one_hot(above.astype(jnp.int32), 2)

  def e_step(self, soft):
    return soft

  def m_step_loss(self, params, batch, targets, rng):
    return jnp.square(params["w"] - 0.5), {}


def threshold_engine(workdir=None):
  x = np.random.default_rng(0).uniform(size=(40, 2, 2, 1)).astype(np.float32)
  return Engine(ThresholdAlgorithm(), x, workdir=workdir, verbosity=0)


def test_update_clusters_runs_before_each_e_step_on_the_whole_datasets_embeddings():
  engine = threshold_engine()
  result = engine.fit()
  calls = engine.algo.calls
  assert len(calls) == 3  # once per round
  params = result.params
  # The last call saw the final parameters' embeddings, and the E-step used its threshold.
  np.testing.assert_allclose(calls[-1][0], np.asarray(engine.embed(params)), rtol=1e-6)
  threshold = float(params[MODEL_STATE]["threshold"])
  np.testing.assert_array_equal(result.assignments, (calls[-1][0][:, 0] > threshold).astype(np.int32))
  # Its randomness is a function of (seed, round).
  for rnd, (_, key_data) in enumerate(calls, start=1):
    np.testing.assert_array_equal(key_data, jax.random.key_data(engine._key(99, 2, rnd)))
  assert engine.trace_counts["embed"] == 1


def test_update_clusters_is_skipped_where_the_algorithm_does_not_define_it(monkeypatch):
  engine = make_engine(max_rounds=1)

  def no_embed(params):
    raise AssertionError("embed pass without update_clusters")

  state = {"params": {"w": jnp.ones(())}, "opt_state": ()}
  monkeypatch.setattr(engine, "embed", no_embed)
  assert engine._update_clusters(state, 1) is state


def test_update_clusters_resumes_exactly(tmp_path, monkeypatch):
  uninterrupted = threshold_engine().fit()
  interrupt_fit(monkeypatch, lambda: threshold_engine(workdir=tmp_path), at_epoch=3)  # dies in round 2
  resumed_engine = threshold_engine(workdir=tmp_path)
  resumed = resumed_engine.fit()
  np.testing.assert_array_equal(resumed.assignments, uninterrupted.assignments)
  assert float(resumed.params[MODEL_STATE]["threshold"]) == float(uninterrupted.params[MODEL_STATE]["threshold"])
  assert len(resumed_engine.algo.calls) == 2  # rounds 2 and 3
