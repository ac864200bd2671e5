"""Inter-class separation (paper 003): the conv autoencoder, its batch-norm state, Algorithm 1's
negatives against NumPy, the terms and weights of eq. 7, the engine end to end, and DEC's
conv variant."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxclust import augment, cluster, data, nn
from jaxclust.algos import dec, ics, idec
from jaxclust.engine import MODEL_STATE, Engine
from jaxclust.errors import ConfigError
from tests.helpers import pattern_images
from tests.test_dec import numpy_dec_target, numpy_student_t

SMALL = {"n_clusters": 4, "batch_size": 32, "eval_batch_size": 64, "warmup_epochs": 2,
         "steps_per_round": 4, "max_rounds": 2, "kmeans_n_init": 2, "tol": 0.0, "conv_features": (8,),
         "embedding_dim": 4, "negative_augmentations": 2, "negative_candidates": 8}
# Weights other than 1 so that the composition of eq. 7 is seen.
WEIGHTS = {"reconstruction_weight": 0.7, "clustering_weight": 0.3, "triplet_weight": 1.3, "entropy_weight": 0.2}
SIGNS = {"reconstruction": 1.0, "clustering": 1.0, "triplet": 1.0, "entropy": -1.0}


def patterns():
  x, y = pattern_images()
  return data.scale_to_unit_range(x[..., None]), y


def make_algo(**overrides):
  x, _ = patterns()
  return ics.Ics(ics.IcsConfig(**{**SMALL, **overrides}), x.shape[1:])


def make_engine(module=ics, **overrides):
  x, y = patterns()
  config = module.Config(**overrides)
  return Engine(module.ALGORITHM(config, x.shape[1:]), x, y, verbosity=0)


@pytest.fixture(scope="module")
def fitted():
  engine = make_engine(**SMALL)
  return engine, engine.fit()


# -- numpy references


def numpy_entropy(p):
  return -(p * np.log(p)).sum(-1)


def numpy_negatives(z, radii, candidates, scale):
  """Algorithm 1 as a loop: the first candidate outside the anchor's ball, else the farthest."""
  chosen = []
  for i, row in enumerate(candidates):
    distances = np.linalg.norm(z[row] - z[i], axis=1)
    outside = [j for j, d in zip(row, distances) if d > scale * radii[i]]
    chosen.append(outside[0] if outside else row[np.argmax(distances)])
  return np.array(chosen)


# -- the network


@pytest.mark.parametrize("image_shape", [(8, 8, 1), (28, 28, 1)])
@pytest.mark.parametrize("variant, n_layers", [("shallow", 3), ("deep", 5)])
def test_network_shapes(image_shape, variant, n_layers):
  model = ics.conv_autoencoder(image_shape, variant)
  x = jax.ShapeDtypeStruct((3, *image_shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  z, x_hat = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  features = ics.VARIANTS[variant]["features"]
  assert len(features) == n_layers
  assert z.shape == (3, ics.VARIANTS[variant]["embedding_dim"])
  assert x_hat.shape == (3, *image_shape)
  params = variables["params"]
  for layer in range(n_layers):
    assert params[f"convs_{layer}"]["kernel"].shape[:2] == (3, 3)
  assert f"convs_{n_layers}" not in params and f"deconvs_{n_layers - 1}" in params
  # Every pool halves with zero padding: the decoder starts from ceil(H / 2^L).
  top = -(-image_shape[0] // 2**n_layers)
  assert params["dense"]["kernel"].shape == (z.shape[1], top * top * features[-1])
  stats = variables["batch_stats"]
  assert {f"conv_norms_{n_layers - 1}", "dense_norm", f"deconv_norms_{n_layers - 2}"} <= set(stats)
  assert f"deconv_norms_{n_layers - 1}" not in stats  # the output layer is linear


def test_pooled_sizes():
  assert nn.pooled_sizes(28, 28, 3) == [(28, 28), (14, 14), (7, 7), (4, 4)]
  assert nn.pooled_sizes(8, 5, 4) == [(8, 5), (4, 3), (2, 2), (1, 1), (1, 1)]


def test_batch_norm_statistics_are_updated_by_training_and_used_by_predict():
  x, _ = patterns()
  algo = make_algo()
  params = algo.init(jax.random.key(0), x[:8])
  weights = np.array([1.0] * 8 + [0.0] * 2, np.float32)  # two padding rows
  _, terms = jax.jit(algo.warmup_loss)(params, {"x": x[:10], "weights": weights}, jax.random.key(1))
  state = terms[MODEL_STATE]
  assert float(state["steps"]) == 1.0

  # The first layer's running mean moves by (1 - momentum) times the mean of the conv output
  # over the real rows: the padding rows count for nothing.
  conv = params["ae"]["convs_0"]
  h = jax.lax.conv_general_dilated(x[:8], conv["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  expected = 0.01 * (np.asarray(h).mean(axis=(0, 1, 2)) + np.asarray(conv["bias"]))  # from 0
  np.testing.assert_allclose(state["batch_stats"]["conv_norms_0"]["mean"], expected, rtol=1e-4, atol=1e-6)

  # predict normalises by the running averages: a row's embedding does not depend on the
  # other rows, and it changes when the averages do.
  trained = {**params, MODEL_STATE: state}
  predict = jax.jit(algo.predict)
  first, other = predict(trained, x[:8]), predict(trained, np.concatenate([x[:4], x[50:54]]))
  np.testing.assert_allclose(first["embedding"][:4], other["embedding"][:4], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(first["soft"].sum(1), 1.0, rtol=1e-5)
  before = predict(params, x[:8])
  assert not np.allclose(before["embedding"], first["embedding"], atol=1e-4)


# -- Algorithm 1


def separated_clusters(n_clusters=4, per_cluster=10, seed=0):
  rng = np.random.default_rng(seed)
  centres = 10.0 * rng.normal(size=(n_clusters, 3))
  labels = np.repeat(np.arange(n_clusters), per_cluster)
  z = centres[labels] + 0.1 * rng.normal(size=(len(labels), 3))
  return z.astype(np.float32), labels


@pytest.mark.parametrize("scale", [1.0, 0.0])
def test_negatives_match_numpy_and_leave_the_anchor_cluster(scale):
  z, labels = separated_clusters()
  radii = np.full(len(z), 1.0, np.float32)  # holds each cluster, none of the others
  radii[3] = 1e3  # no candidate lies outside: the farthest one is taken
  key = jax.random.key(5)
  # block_size 7 does not divide 40: the last block is partial.
  negatives = ics.select_negatives(key, z, radii, n_candidates=16, radius_scale=scale, block_size=7)
  candidates = np.asarray(jax.random.randint(key, (len(z), 16), 0, len(z), dtype=jnp.int32))
  expected = numpy_negatives(z, radii, candidates, scale)
  np.testing.assert_array_equal(negatives, expected)
  assert negatives.dtype == jnp.int32
  if scale == 1.0:
    others = np.arange(len(z)) != 3
    assert np.all(labels[negatives[others]] != labels[others])
    distances = np.linalg.norm(z[candidates[3]] - z[3], axis=1)
    assert negatives[3] == candidates[3][np.argmax(distances)]
  else:  # a zero radius: any candidate but the anchor itself
    assert np.all(negatives == candidates[np.arange(len(z)), np.argmax(candidates != np.arange(len(z))[:, None], 1)])


def test_e_step_gives_dec_targets_and_negatives_drawn_anew_each_step_count():
  algo = make_algo(negative_candidates=4)
  z, _ = separated_clusters()
  rng = np.random.default_rng(1)
  soft = rng.dirichlet(np.ones(4), size=len(z)).astype(np.float32)
  predicted = {"soft": soft, "embedding": z, "radius": np.ones(len(z), np.float32),
               "steps": np.full(len(z), 7.0, np.float32)}
  targets = algo.e_step(predicted)
  np.testing.assert_allclose(targets["q"], numpy_dec_target(soft), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(targets["negative"], algo.e_step(predicted)["negative"])
  later = algo.e_step({**predicted, "steps": np.full(len(z), 8.0, np.float32)})
  assert not np.array_equal(targets["negative"], later["negative"])


def image_rows(fn, *args):
  """The most rows of any image-shaped (rank 4) array that ``fn`` computes, sub-jaxprs included."""
  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      yield from (v.aval.shape[0] for v in eqn.outvars if getattr(v.aval, "ndim", 0) == 4)
      for param in eqn.params.values():
        for sub in (param if isinstance(param, (tuple, list)) else (param,)):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            yield from walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            yield from walk(sub)
  return max(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def test_without_the_triplet_term_predict_embeds_no_copies_and_chooses_no_negatives():
  full, ablated = make_algo(), make_algo(triplet_weight=0.0)
  x, _ = patterns()
  params = full.init(jax.random.key(0), x[:8])
  params["centroids"] = jax.random.normal(jax.random.key(1), params["centroids"].shape)
  with_copies, without = full.predict(params, x[:16]), ablated.predict(params, x[:16])
  # The same clean embedding and assignments: only the copies and the radius are skipped.
  np.testing.assert_allclose(without["embedding"], with_copies["embedding"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(without["soft"], with_copies["soft"], rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(with_copies["radius"]) > 0)
  np.testing.assert_array_equal(without["radius"], np.zeros(16, np.float32))
  assert image_rows(ablated.predict, params, x[:16]) == 16
  assert image_rows(full.predict, params, x[:16]) == 16 * (1 + full.config.negative_augmentations)
  targets = ablated.e_step({k: np.asarray(v) for k, v in without.items()})
  np.testing.assert_array_equal(targets["negative"], np.zeros(16, np.int32))
  np.testing.assert_allclose(targets["q"], numpy_dec_target(np.asarray(without["soft"])), rtol=1e-5, atol=1e-7)


# -- eq. 7


def reference_terms(algo, params, batch, targets, rng):
  """The terms of eq. 7 from the network applied to the real rows only, in NumPy."""
  cfg = algo.config
  x, real = batch["x"], np.asarray(batch["weights"]) > 0
  blocks = [x]
  if cfg.triplet_weight > 0:
    blocks += [augment.augment(rng, x, max_degrees=cfg.max_degrees, scale_range=cfg.scale_range,
                               max_shift=cfg.max_shift), np.asarray(batch["dataset"])[np.asarray(targets["negative"])]]
  inputs = np.concatenate([np.asarray(b)[real] for b in blocks])
  variables = {"params": params["ae"], "batch_stats": params[MODEL_STATE]["batch_stats"]}
  z_all, updated = algo.model.apply(variables, inputs, train=True, method=nn.IcsAutoencoder.encode,
                                    mutable=["batch_stats"])
  z_all = np.asarray(z_all)
  n = int(real.sum())
  z = z_all[:n]
  q = numpy_student_t(z, np.asarray(params["centroids"]), cfg.alpha)
  p = np.asarray(targets["q"])[real]
  terms = {"clustering": (p * np.log(p / q)).sum(1).mean(),
           "entropy": numpy_entropy(q.mean(0)) - numpy_entropy(q).mean()}
  if cfg.reconstruction_weight > 0:
    x_hat, updated = algo.model.apply({**variables, **updated}, z, train=True,
                                      method=nn.IcsAutoencoder.decode, mutable=["batch_stats"])
    terms["reconstruction"] = ((np.asarray(x)[real] - np.asarray(x_hat)) ** 2).mean()
  if cfg.triplet_weight > 0:
    e = z_all / np.linalg.norm(z_all, axis=1, keepdims=True)
    a, pos, neg = e[:n], e[n:2 * n], e[2 * n:]
    hinge = ((a - pos) ** 2).sum(1) - ((a - neg) ** 2).sum(1) + algo.margin
    terms["triplet"] = np.maximum(hinge, 0).mean()
  return terms, updated["batch_stats"]


def loss_inputs(algo):
  x, _ = patterns()
  params = algo.init(jax.random.key(0), x[:8])
  params["centroids"] = jax.random.normal(jax.random.key(1), params["centroids"].shape)
  weights = np.array([1.0] * 8 + [0.0] * 2, np.float32)
  rng = np.random.default_rng(2)
  targets = {"q": rng.dirichlet(np.ones(4), size=10).astype(np.float32),
             "negative": rng.integers(0, len(x), size=10).astype(np.int32)}
  batch = {"x": x[:10], "weights": weights, "index": np.arange(10, dtype=np.int32), "dataset": x}
  return params, batch, targets


@pytest.mark.parametrize("zeroed", [None, "reconstruction", "clustering", "triplet", "entropy"])
def test_loss_is_eq7_of_terms_matching_numpy_and_a_zero_weight_drops_its_term(zeroed):
  overrides = dict(WEIGHTS)
  if zeroed:
    overrides[f"{zeroed}_weight"] = 0.0
  algo = make_algo(**overrides)
  params, batch, targets = loss_inputs(algo)
  key = jax.random.key(3)
  loss, terms = algo.m_step_loss(params, batch, targets, key)
  expected, batch_stats = reference_terms(algo, params, batch, targets, key)

  state = terms.pop(MODEL_STATE)
  assert set(terms) == set(expected)
  assert ("triplet" in terms) == (zeroed != "triplet")
  assert ("reconstruction" in terms) == (zeroed != "reconstruction")
  for name, value in expected.items():
    np.testing.assert_allclose(terms[name], value, rtol=2e-4, atol=1e-6, err_msg=name)
  weighted = sum(SIGNS[name] * overrides[f"{name}_weight"] * value for name, value in expected.items())
  np.testing.assert_allclose(loss, weighted, rtol=2e-4, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), state["batch_stats"], batch_stats)
  assert float(state["steps"]) == 1.0


def test_margin_and_network_follow_the_variant():
  assert make_algo(conv_features=None, embedding_dim=None).margin == 0.24
  deep = make_algo(conv_variant="deep", conv_features=None, embedding_dim=None)
  assert deep.margin == 0.3 and deep.model.features == ics.VARIANTS["deep"]["features"]
  assert make_algo(margin=0.5).margin == 0.5


@pytest.mark.parametrize("overrides, match", [
    ({"conv_variant": "huge"}, "conv_variant"),
    ({"triplet_weight": -1.0}, "triplet_weight"),
    ({"negative_candidates": 0}, "negative_candidates"),
    ({"scale_range": (1.2, 1.1)}, "scale_range"),
    ({"margin": -0.1}, "margin"),
    ({"flip_probability": 2.0}, "flip_probability"),
])
def test_bad_configs(overrides, match):
  with pytest.raises(ConfigError, match=match):
    ics.IcsConfig(**{**SMALL, **overrides}).validate(100)


# -- the engine end to end


def test_outputs_are_distributions_with_dec_targets(fitted):
  engine, result = fitted
  n = engine.n
  np.testing.assert_allclose(result.soft_assignments.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(result.assignments, result.soft_assignments.argmax(1))
  np.testing.assert_allclose(result.targets["q"], numpy_dec_target(result.soft_assignments), rtol=1e-4, atol=1e-6)
  negative = result.targets["negative"]
  assert negative.shape == (n,) and negative.dtype == np.int32 and 0 <= negative.min() and negative.max() < n
  # The last E-step is a function of the final parameters (its draws are keyed by the step count).
  again = engine.algo.e_step(engine.predict(result.params))
  np.testing.assert_array_equal(again["negative"], negative)


def test_compiles_once_and_counts_steps_in_the_model_state(fitted):
  engine, result = fitted
  for name in ("warmup_step", "m_step", "predict", "embed"):
    assert engine.trace_counts[name] == 1, engine.trace_counts
  rounds = [r for r in result.history if r["phase"] == "round"]
  assert [r["round"] for r in rounds] == [1, 2]
  assert {"loss", "reconstruction", "clustering", "triplet", "entropy"} <= set(rounds[0])
  steps = SMALL["warmup_epochs"] * engine.steps_per_epoch + SMALL["max_rounds"] * SMALL["steps_per_round"]
  assert float(result.params[MODEL_STATE]["steps"]) == steps


def test_initial_centroids_are_kmeans_on_the_clustering_features_without_the_radius(fitted):
  engine, result = fitted
  features = np.asarray(engine.embed(result.params))
  z = engine.algo.clustering_features(features)
  assert z.shape == (engine.n, SMALL["embedding_dim"])
  np.testing.assert_array_equal(z, features[:, :-1])
  # init_clusters clusters exactly these columns: k-means with the same key finds its centroids.
  params, _ = engine.algo.init_clusters(result.params, features, jax.random.key(3))
  expected = cluster.kmeans(jax.random.split(jax.random.key(3))[0], jnp.asarray(z), SMALL["n_clusters"],
                            n_init=SMALL["kmeans_n_init"]).centroids
  np.testing.assert_allclose(params["centroids"], expected, rtol=1e-6)


def test_same_seed_same_assignments(fitted):
  _, result = fitted
  again = make_engine(**SMALL).fit()
  np.testing.assert_array_equal(again.assignments, result.assignments)
  np.testing.assert_array_equal(again.targets["negative"], result.targets["negative"])


# -- DEC and IDEC on the same conv autoencoder


def test_dec_conv_variant_runs_end_to_end():
  settings = {"n_clusters": 4, "batch_size": 32, "eval_batch_size": 64, "warmup_epochs": 2,
              "steps_per_round": 4, "max_rounds": 2, "kmeans_n_init": 2, "tol": 0.0, "embedding_dim": 4,
              "conv_features": (8,)}
  engine = make_engine(dec, encoder="conv", **settings)
  initial = engine.algo.init(jax.random.key(0), engine.x[:32])
  result = engine.fit()
  for name in ("warmup_step", "m_step", "predict", "embed"):
    assert engine.trace_counts[name] == 1, engine.trace_counts
  np.testing.assert_allclose(result.targets, numpy_dec_target(result.soft_assignments), rtol=1e-4, atol=1e-6)
  z = np.asarray(engine.embed(result.params))
  np.testing.assert_allclose(result.soft_assignments, numpy_student_t(z, np.asarray(result.params["centroids"]), 1.0),
                             rtol=1e-4, atol=1e-6)
  before = initial[MODEL_STATE]["batch_stats"]["conv_norms_0"]["mean"]
  after = result.params[MODEL_STATE]["batch_stats"]["conv_norms_0"]["mean"]
  assert not np.allclose(before, after)
  mlp = dec.Dec(dec.DecConfig(**settings), engine.x.shape[1:])
  assert MODEL_STATE not in mlp.init(jax.random.key(0), engine.x[:32])


def test_idec_conv_loss_is_reconstruction_plus_gamma_kl():
  x, _ = patterns()
  algo = idec.Idec(idec.IdecConfig(n_clusters=4, encoder="conv", embedding_dim=4, conv_features=(8,)), x.shape[1:])
  params = algo.init(jax.random.key(0), x[:8])
  params["centroids"] = jax.random.normal(jax.random.key(1), params["centroids"].shape)
  targets = jax.nn.softmax(jax.random.normal(jax.random.key(2), (8, 4)))
  loss, terms = algo.m_step_loss(params, {"x": x[:8], "weights": np.ones(8, np.float32)}, targets, None)
  variables = {"params": params["ae"], "batch_stats": params[MODEL_STATE]["batch_stats"]}
  (z, x_hat), updated = algo.model.apply(variables, x[:8], train=True, mutable=["batch_stats"])
  q = numpy_student_t(np.asarray(z), np.asarray(params["centroids"]), 1.0)
  t = np.asarray(targets)
  kl = (t * np.log(t / q)).sum(1).mean()
  rec = ((np.asarray(x[:8]) - np.asarray(x_hat)) ** 2).mean()
  np.testing.assert_allclose(loss, 0.1 * kl + rec, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), terms[MODEL_STATE]["batch_stats"],
               updated["batch_stats"])


def test_dec_conv_variant_rejects_unknown_network():
  with pytest.raises(ConfigError, match="conv_variant"):
    dataclasses.replace(dec.DecConfig(), encoder="conv", conv_variant="huge").validate(100)
