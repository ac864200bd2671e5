"""The one training loop every algorithm runs on.

An algorithm is configuration plus pure functions (see :class:`Algorithm`); this module owns
batching, jit, the warm-up phase, the EM rounds, the stopping rule, checkpoints, logging and
progress. Algorithm 1 of DEPICT is the shape of the loop:

  warm-up (reconstruction only)          ``warmup_loss`` for ``warmup_epochs`` epochs
  initialise clusters                    ``embed`` over the dataset, ``init_clusters``
  repeat for round r = 1, 2, ...:
    M-step                               ``m_step_loss`` for ``epochs_per_round`` epochs
    (re-cluster, optional)               ``embed`` over the dataset, ``update_clusters``
    E-step                               ``predict`` over the dataset, ``e_step``
  until the fraction of changed assignments < ``tol`` or r = ``max_rounds``

Performance: the dataset lives on the device; every minibatch has the same shape (the last
one is padded and its padding rows get weight 0), so each step function compiles once; the
train state is donated; whole-dataset passes run in fixed-size jitted chunks.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxclust import metrics as metrics_lib
from jaxclust import parallel
from jaxclust.checkpoint import Checkpointer
from jaxclust.errors import CheckpointError, ConfigError, TrainingError
from jaxclust.tensorboard import event_writer

PyTree = Any
WARMUP, CLUSTERING = 0, 1
# Key of the non-trainable part of an algorithm's parameters (batch-norm statistics): a loss
# that returns ``{MODEL_STATE: new_value}`` among its terms replaces it after the step.
MODEL_STATE = "model_state"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Settings of the engine shared by every algorithm (algorithm configs extend it)."""

  n_clusters: int = 10
  seed: int = 0
  batch_size: int = 100
  eval_batch_size: int = 1000
  learning_rate: float = 1e-4
  warmup_learning_rate: float | None = None  # None: same as learning_rate
  warmup_epochs: int = 50
  max_rounds: int = 100
  epochs_per_round: int = 1
  # DEC's "update interval": when > 0, a round is this many minibatch steps instead of
  # epochs_per_round epochs; the steps walk through one shuffled epoch after another.
  steps_per_round: int = 0
  # Before the first E-step, fit the model to the initial clustering's targets for up to
  # init_epochs epochs, stopping once its agreement (NMI) with the initial assignments has not
  # improved for init_patience epochs; the best epoch's parameters are kept (DEPICT authors' code).
  init_epochs: int = 0
  init_patience: int = 5
  tol: float = 0.001  # stop when fewer than this fraction of assignments change in a round
  n_labeled: int = 0  # semi-supervised: this many labelled samples keep fixed targets
  epoch_mode: str = "auto"  # "loop" (one jitted step per minibatch), "scan", or "auto"
  # A workdir of an earlier run of the same network whose warm-up finished: its warmed-up
  # parameters are loaded and this run's warm-up is skipped (DEC-keras's ``ae_weights``).
  pretrained: str | None = None

  def validate(self, n_samples: int) -> None:
    if not 2 <= self.n_clusters <= n_samples:
      raise ConfigError(
          f"n_clusters must be between 2 and the number of samples ({n_samples}); got {self.n_clusters}"
      )
    for name in ("batch_size", "eval_batch_size", "epochs_per_round"):
      if getattr(self, name) < 1:
        raise ConfigError(f"{name} must be at least 1; got {getattr(self, name)}")
    for name in ("warmup_epochs", "max_rounds", "n_labeled", "init_epochs", "init_patience", "steps_per_round"):
      if getattr(self, name) < 0:
        raise ConfigError(f"{name} must not be negative; got {getattr(self, name)}")
    if self.learning_rate <= 0:
      raise ConfigError(f"learning_rate must be positive; got {self.learning_rate}")
    if not 0 <= self.tol < 1:
      raise ConfigError(f"tol must be in [0, 1); got {self.tol}")
    if self.epoch_mode not in ("auto", "loop", "scan"):
      raise ConfigError(f"epoch_mode must be 'auto', 'loop' or 'scan'; got {self.epoch_mode!r}")
    if self.n_labeled > n_samples:
      raise ConfigError(f"n_labeled ({self.n_labeled}) exceeds the number of samples ({n_samples})")


class Algorithm(abc.ABC):
  """The contract an algorithm fulfils; all methods but ``init_clusters`` and
  ``update_clusters`` are traced by jit.

  ``batch`` arguments are dicts with ``x`` (``[B, ...]`` inputs), ``weights`` (``[B]``, 0 for
  padding rows), ``index`` (``[B]`` positions in the dataset) and ``dataset`` (the whole
  dataset on the device, ``[N', ...]`` with padding rows at the end, for losses that look up
  other samples, such as a triplet's negative).

  Targets are ``[N, K]`` distributions, or a dict of per-sample arrays ``[N, ...]`` holding
  the distributions under ``"q"`` (and, say, the index of each sample's negative); the engine
  hands ``m_step_loss`` the rows of the minibatch. Likewise ``predict`` returns ``[B, K]`` soft
  assignments, or a dict holding them under ``"soft"`` beside whatever else ``e_step`` needs.

  Parameters are any pytree. A dict of parameters may hold non-trainable values (batch-norm
  running statistics) under the key ``MODEL_STATE``: the optimizer leaves them alone, and a
  loss that returns ``{MODEL_STATE: new_value, ...}`` as its terms has them replaced after
  the step.
  """

  config: TrainConfig

  @abc.abstractmethod
  def init(self, rng: jax.Array, example_x: jax.Array) -> PyTree:
    """Initial parameters."""

  def make_optimizer(self, phase: int) -> optax.GradientTransformation:
    """The optimizer of ``phase`` (``WARMUP`` or ``CLUSTERING``); Adam at the config's rates."""
    cfg = self.config
    if phase == WARMUP:
      return optax.adam(cfg.warmup_learning_rate or cfg.learning_rate)
    return optax.adam(cfg.learning_rate)

  def warmup_loss(self, params: PyTree, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Loss of the phase before clusters exist; ``(loss, {term: value})``."""
    raise NotImplementedError

  @abc.abstractmethod
  def embed(self, params: PyTree, x: jax.Array) -> jax.Array:
    """Clean features ``[B, D]`` that the initial clustering runs on."""

  def clustering_features(self, features: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    """The columns of ``embed``'s features ``[N, D]`` that ``init_clusters`` clusters; all of
    them unless ``embed`` also carries what only later rounds read (SpectralNet's outputs
    beside its codes)."""
    return features

  @abc.abstractmethod
  def init_clusters(
      self, params: PyTree, features: np.ndarray, rng: jax.Array
  ) -> tuple[PyTree, jax.Array]:
    """Initial clustering of the whole dataset's features ``[N, D]``.

    Returns ``(params, targets)``: parameters with the clustering layer set, and the targets
    ``[N, K]`` of the first M-step.
    """

  def update_clusters(self, params: PyTree, features: np.ndarray, rng: jax.Array) -> PyTree:
    """Optional: re-clusters the whole dataset's features ``[N, D]`` (``embed`` output) after
    each round's M-step, before its E-step; returns the parameters with the clustering set.

    For algorithms whose assignments come from clustering the network's outputs rather than
    from a head trained with them (SpectralNet: k-means on the spectral embedding). Runs
    outside jit, like ``init_clusters``; ``rng`` is a function of the seed and the round, so
    a resumed run draws what an uninterrupted one does. The parameters returned must keep
    the structure, shapes and dtypes of ``params`` (the step functions compile once). The
    engine runs the extra ``embed`` pass only for algorithms that override this method; the
    default returns ``params``.
    """
    del features, rng
    return params

  @abc.abstractmethod
  def predict(self, params: PyTree, x: jax.Array) -> jax.Array | dict:
    """Soft assignments ``[B, K]`` of the clean model (or a dict with them under ``"soft"``)."""

  @abc.abstractmethod
  def e_step(self, soft_assignments: jax.Array | dict) -> jax.Array | dict:
    """Targets from the whole dataset's ``predict`` output (``[N, K]`` or a dict)."""

  @abc.abstractmethod
  def m_step_loss(
      self, params: PyTree, batch: dict, targets: jax.Array | dict, rng: jax.Array
  ) -> tuple[jax.Array, dict]:
    """Loss of one minibatch given its targets' rows; ``(loss, {term: value})``."""


@dataclasses.dataclass
class FitResult:
  """What a finished run returns."""

  assignments: np.ndarray  # [N] int32
  soft_assignments: np.ndarray  # [N, K] float32
  targets: np.ndarray | dict  # the last E-step's targets: [N, K] float32, or a dict of arrays
  params: PyTree
  rounds: int
  converged: bool
  history: list[dict]
  seconds: float


# ----------------------------------------------------------------------------- logging


class RunLogger:
  """Writes one JSON line per epoch/round to ``metrics.jsonl`` (and as TensorBoard scalars,
  :mod:`jaxclust.tensorboard`) and a summary line to stderr."""

  def __init__(self, workdir: pathlib.Path | None, *, verbosity: int = 1):
    self.path = None if workdir is None else workdir / "metrics.jsonl"
    self.verbosity = verbosity
    self.history: list[dict] = []
    self.events = event_writer(workdir, verbosity=verbosity)  # TensorBoard, when installed

  def log(self, record: dict) -> None:
    record = {k: _to_python(v) for k, v in record.items()}
    self.history.append(record)
    if self.path is not None:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
    self.events.write(record)
    if self.verbosity >= 1 and (record["phase"] != "warmup" or self.verbosity >= 2 or record.get("last")):
      shown = {k: v for k, v in record.items() if k not in ("phase", "last")}
      text = "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
      print(f"[{record['phase']}] {text}", file=sys.stderr, flush=True)

  def progress(self, total: int, desc: str):
    return tqdm(total=total, desc=desc, leave=False, disable=self.verbosity < 1, file=sys.stderr,
                dynamic_ncols=True)


def _to_python(value):
  if isinstance(value, (np.generic, jax.Array)):
    return np.asarray(value).item()
  return value


def _fmt(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def soft_assignments_of(predicted):
  """The soft assignments in a ``predict`` output (an array, or a dict with ``"soft"``)."""
  return predicted["soft"] if isinstance(predicted, dict) else predicted


def _distributions(targets):
  """The target distributions in an ``e_step`` output."""
  return targets["q"] if isinstance(targets, dict) else targets


# ----------------------------------------------------------------------------- the engine


class Engine:
  """Runs an :class:`Algorithm` on one dataset.

  Args:
    algorithm: the algorithm (its ``config`` is a :class:`TrainConfig`).
    x: the dataset, ``[N, ...]`` float32.
    labels: optional ``[N]`` class labels; used only for metrics, and for the targets of the
      ``config.n_labeled`` labelled samples in semi-supervised mode.
    workdir: where checkpoints and ``metrics.jsonl`` go; ``None`` keeps nothing on disk. With
      several processes (:func:`jaxclust.parallel.initialize`) every process passes the same
      workdir (a shared filesystem): all of them write the checkpoints, process 0 alone the
      logs; every process returns the same, global, result.
    verbosity: 0 silent, 1 one line per round and progress bars, 2 also per warm-up epoch
      (process 0 only).
  """

  def __init__(self, algorithm: Algorithm, x: np.ndarray, labels: np.ndarray | None = None, *,
               workdir: str | pathlib.Path | None = None, verbosity: int = 1):
    self.algo = algorithm
    self.config: TrainConfig = algorithm.config
    self.n = int(x.shape[0])
    self.config.validate(self.n)
    self.labels = None if labels is None else np.asarray(labels)
    if self.config.n_labeled and self.labels is None:
      raise ConfigError("n_labeled > 0 needs a dataset with labels")
    self.workdir = None if workdir is None else pathlib.Path(workdir)
    self.main_process = parallel.is_main_process()
    self.logger = RunLogger(self.workdir if self.main_process else None,
                            verbosity=verbosity if self.main_process else 0)
    self.trace_counts: dict[str, int] = {}

    cfg = self.config
    # Data parallel over every device of every process: minibatches and evaluation chunks are
    # split over the mesh's "data" axis, padded with weight-0 rows to a multiple of the device count.
    self.mesh = parallel.make_mesh()
    self.batch_size = min(cfg.batch_size, self.n)
    self.device_batch = parallel.round_up(self.batch_size, self.mesh.size)
    self.steps_per_epoch = math.ceil(self.n / self.batch_size)
    self.eval_chunk = parallel.round_up(min(cfg.eval_batch_size, self.n), self.mesh.size)
    self.n_chunks = math.ceil(self.n / self.eval_chunk)
    # Padded once so every evaluation chunk has the same shape.
    pad = self.n_chunks * self.eval_chunk - self.n
    x = np.asarray(x, np.float32)
    self.x = jax.device_put(np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)]),
                            parallel.replicated(self.mesh))
    self.epoch_mode = cfg.epoch_mode
    if self.epoch_mode == "auto":
      # Measured (BENCHMARKS.md): XLA:CPU runs convolutions inside scan bodies several times
      # slower than the same step dispatched from Python; on GPU the scan avoids launch overhead.
      self.epoch_mode = "loop" if jax.default_backend() == "cpu" else "scan"

    self.base_key = jax.random.key(cfg.seed)
    self._build_functions()

  # -- keys and permutations: every random choice is a function of (seed, phase, counter),
  #    so a resumed run draws exactly what an uninterrupted one does.

  def _key(self, *path: int) -> jax.Array:
    key = self.base_key
    for p in path:
      key = jax.random.fold_in(key, p)
    return key

  def _epoch_indices(self, phase: int, counter: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([self.config.seed, phase, counter, epoch])
    order = rng.permutation(self.n)
    total = self.steps_per_epoch * self.batch_size
    index = np.zeros(total, np.int32)
    index[: self.n] = order
    weights = np.zeros(total, np.float32)
    weights[: self.n] = 1.0
    shape = (self.steps_per_epoch, self.batch_size)
    pad = ((0, 0), (0, self.device_batch - self.batch_size))  # weight-0 rows for the device count
    return np.pad(index.reshape(shape), pad), np.pad(weights.reshape(shape), pad)

  # -- compiled functions

  def _count_trace(self, name: str) -> None:
    self.trace_counts[name] = self.trace_counts.get(name, 0) + 1

  def _build_functions(self) -> None:
    algo = self.algo

    def make_step(loss_fn, optimizer, name):
      def step(state, x_all, targets_all, index, weights, key):
        self._count_trace(name)
        index, weights = parallel.constrain_batch((index, weights), self.mesh)
        batch = {"x": parallel.constrain_batch(jnp.take(x_all, index, axis=0), self.mesh), "weights": weights,
                 "index": index, "dataset": x_all}
        targets = jax.tree.map(lambda t: jnp.take(t, index, axis=0), targets_all)

        def objective(params):
          loss, terms = loss_fn(params, batch, targets, key)
          return loss, terms

        (loss, terms), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        terms = dict(terms)
        new_model_state = terms.pop(MODEL_STATE, None)
        if MODEL_STATE in grads:  # non-trainable: Adam sees zero gradients, so it never moves them
          grads = {**grads, MODEL_STATE: jax.tree.map(jnp.zeros_like, grads[MODEL_STATE])}
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        if new_model_state is not None:
          params = {**params, MODEL_STATE: new_model_state}
        return {"params": params, "opt_state": opt_state}, {"loss": loss, **terms}

      return step

    def warmup_loss(params, batch, targets, key):
      del targets
      return algo.warmup_loss(params, batch, key)

    self.optimizers = {phase: algo.make_optimizer(phase) for phase in (WARMUP, CLUSTERING)}
    steps = {
        WARMUP: make_step(warmup_loss, self.optimizers[WARMUP], "warmup_step"),
        CLUSTERING: make_step(algo.m_step_loss, self.optimizers[CLUSTERING], "m_step"),
    }
    self._steps = {p: jax.jit(s, donate_argnums=(0,)) for p, s in steps.items()}

    def make_epoch(step, name):
      def epoch(state, x_all, targets_all, index, weights, key):
        self._count_trace(name)

        def body(state, inputs):
          s, idx, w = inputs
          return step(state, x_all, targets_all, idx, w, jax.random.fold_in(key, s))

        steps_range = jnp.arange(index.shape[0])
        return jax.lax.scan(body, state, (steps_range, index, weights))

      return epoch

    self._epochs = {
        p: jax.jit(make_epoch(s, f"{n}_epoch"), donate_argnums=(0,))
        for (p, s), n in zip(steps.items(), ("warmup", "m_step"))
    }

    chunk = self.eval_chunk

    def chunk_fn(fn, name):
      def apply(params, x_all, start):
        self._count_trace(name)
        x = jax.lax.dynamic_slice_in_dim(x_all, start, chunk, axis=0)
        return fn(params, parallel.constrain_batch(x, self.mesh))

      return jax.jit(apply)

    self._embed_chunk = chunk_fn(algo.embed, "embed")
    self._predict_chunk = chunk_fn(algo.predict, "predict")
    self._e_step = jax.jit(algo.e_step)

  def map_dataset(self, fn: Callable, params: PyTree) -> PyTree:
    """Applies a compiled chunk function over the whole dataset; each output leaf is
    ``[N, ...]`` on the device."""
    outputs = [fn(params, self.x, np.int32(c * self.eval_chunk)) for c in range(self.n_chunks)]
    return jax.tree.map(lambda *o: jnp.concatenate(o, axis=0)[: self.n], *outputs)

  def predict(self, params: PyTree) -> jax.Array | dict:
    """The algorithm's ``predict`` over the whole dataset (soft assignments ``[N, K]``, or a
    dict holding them under ``"soft"``)."""
    return self.map_dataset(self._predict_chunk, params)

  def embed(self, params: PyTree) -> jax.Array:
    return self.map_dataset(self._embed_chunk, params)

  def _round_indices(self, rnd: int) -> tuple[np.ndarray, np.ndarray]:
    """Minibatches of round ``rnd`` when rounds are ``steps_per_round`` steps long: global
    steps ``(rnd - 1) * S ... rnd * S - 1`` of a sequence of shuffled epochs."""
    steps = self.config.steps_per_round
    first = (rnd - 1) * steps
    epochs = range(first // self.steps_per_epoch, (first + steps - 1) // self.steps_per_epoch + 1)
    index, weights = zip(*(self._epoch_indices(CLUSTERING, 0, e) for e in epochs))
    offset = first - epochs[0] * self.steps_per_epoch
    return (np.concatenate(index)[offset: offset + steps], np.concatenate(weights)[offset: offset + steps])

  def run_epoch(self, phase: int, state: dict, targets: jax.Array, counter: int, epoch: int,
                desc: str, indices: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[dict, dict]:
    """One pass over the dataset (or over the minibatches ``indices``, ``[S, B]`` positions and
    weights); returns the new state and the mean of each loss term."""
    index, weights = self._epoch_indices(phase, counter, epoch) if indices is None else indices
    key = self._key(phase, counter, epoch)
    index, weights = parallel.shard_rows(index, self.mesh, axis=1), parallel.shard_rows(weights, self.mesh, axis=1)
    if self.epoch_mode == "scan":
      state, terms = self._epochs[phase](state, self.x, targets, index, weights, key)
    else:
      step = self._steps[phase]
      collected = []
      with self.logger.progress(index.shape[0], desc) as bar:
        for s in range(index.shape[0]):
          # Dispatch step s before looking at anything of step s-1: the device never waits.
          state, step_terms = step(state, self.x, targets, index[s], weights[s], jax.random.fold_in(key, s))
          collected.append(step_terms)
          bar.update(1)
      terms = jax.tree.map(lambda *v: jnp.stack(v), *collected)
    # Steps weigh equally except the padded last one, which counts for its real rows.
    step_weights = weights.sum(axis=1) / weights.sum()
    means = {k: float(jnp.sum(v * step_weights)) for k, v in terms.items()}
    return state, means

  # -- checkpoint state

  def _state_template(self, params: PyTree, phase: int) -> dict:
    k = self.config.n_clusters
    return {
        "params": params,
        "opt_state": self.optimizers[phase].init(params),
        "targets": self._targets_template(params) if phase == CLUSTERING else jnp.zeros((self.n, k), jnp.float32),
        "assignments": jnp.full((self.n,), -1, jnp.int32),
        "phase": jnp.int32(phase),
        "counter": jnp.int32(0),
        "rng": jax.random.key_data(self.base_key),
    }

  def _targets_template(self, params: PyTree) -> PyTree:
    """Zeros shaped like the targets ``e_step`` makes, for restoring a checkpoint."""
    def targets_of(params):
      return self.algo.e_step(self.predict(params))

    shapes = jax.eval_shape(targets_of, params)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def _replicate(self, tree: PyTree) -> PyTree:
    return parallel.replicate(tree, self.mesh)

  def _checkpoint_step(self, phase: int, counter: int) -> int:
    return counter if phase == WARMUP else self.config.warmup_epochs + 1 + counter

  def _check_finite(self, terms: dict, where: str, checkpointer: Checkpointer | None) -> None:
    for name, value in terms.items():
      if not math.isfinite(value):
        kept = ""
        if checkpointer is not None and checkpointer.latest_step() is not None:
          kept = f"; the last good checkpoint ({checkpointer.directory / str(checkpointer.latest_step())}) is kept"
        raise TrainingError(f"the {name} loss became {value} in {where}{kept}")

  def _scores(self, assignments: np.ndarray) -> dict:
    if self.labels is None:
      return {}
    s = metrics_lib.clustering_scores(self.labels, assignments)
    return {"acc": s["acc"], "nmi": s["nmi"], "ari": s["ari"]}

  # -- the run

  def fit(self) -> FitResult:
    start = time.time()
    checkpointer = None
    if self.workdir is not None:
      # The state right after the initial clustering is kept for good: later rounds can be
      # rerun from it with other settings without redoing the warm-up.
      # So is the last warm-up step, which other runs can start from (``pretrained``).
      checkpointer = Checkpointer(self.workdir / "checkpoints",
                                  keep_steps=(self._checkpoint_step(WARMUP, self.config.warmup_epochs),
                                              self._checkpoint_step(CLUSTERING, 0)))
    try:
      return self._fit(checkpointer, start)
    finally:
      if checkpointer is not None:
        checkpointer.close()

  def _fit(self, checkpointer: Checkpointer | None, start: float) -> FitResult:
    cfg = self.config
    # One compiled program instead of one small compilation per layer initialiser.
    params = jax.jit(self.algo.init)(self._key(99, 0), self.x[: self.batch_size])
    state = self._replicate(self._state_template(params, WARMUP))
    resumed_step = None if checkpointer is None else checkpointer.latest_step()
    if resumed_step is not None:
      phase = WARMUP if resumed_step <= cfg.warmup_epochs else CLUSTERING
      state = checkpointer.restore(resumed_step, self._replicate(self._state_template(params, phase)))
      if self.main_process:
        print(f"resuming from checkpoint step {resumed_step} in {checkpointer.directory}", file=sys.stderr)
    elif cfg.pretrained:
      params = self._replicate(self._load_pretrained(params))
      state = {**state, "params": params, "counter": jnp.int32(cfg.warmup_epochs)}
      self.logger.log({"phase": "pretrained", "source": str(cfg.pretrained), "seconds": time.time() - start})

    def save(phase, counter, state):
      if checkpointer is not None:
        state = {**state, **self._replicate({"phase": jnp.int32(phase), "counter": jnp.int32(counter)})}
        checkpointer.save(self._checkpoint_step(phase, counter), state)

    train_state = {"params": state["params"], "opt_state": state["opt_state"]}
    phase, counter = int(state["phase"]), int(state["counter"])

    # Warm-up: reconstruction only.
    if phase == WARMUP:
      for epoch in range(counter + 1, cfg.warmup_epochs + 1):
        t0 = time.time()
        train_state, terms = self.run_epoch(WARMUP, train_state, state["targets"], epoch, 0,
                                            f"warm-up {epoch}/{cfg.warmup_epochs}")
        self._check_finite(terms, f"warm-up epoch {epoch}", checkpointer)
        save(WARMUP, epoch, {**state, **train_state})
        self.logger.log({"phase": "warmup", "epoch": epoch, **terms, "seconds": time.time() - t0,
                         "last": epoch == cfg.warmup_epochs})

      # Initial clusters (Algorithm 1, line 1).
      t0 = time.time()
      features = parallel.to_host(self.embed(train_state["params"]))
      params, targets = self.algo.init_clusters(train_state["params"], features, self._key(99, 1))
      targets = self._replicate(self._fix_labeled(targets, None))
      assignments = jnp.argmax(_distributions(targets), axis=-1).astype(jnp.int32)
      train_state = self._replicate({"params": params, "opt_state": self.optimizers[CLUSTERING].init(params)})
      self.logger.log({"phase": "init", "round": 0, **self._scores(parallel.to_host(assignments)),
                       "seconds": time.time() - t0})
      if cfg.init_epochs:
        train_state = self._fit_initial_targets(train_state, targets, assignments, checkpointer)
      state = {**state, "targets": targets, "assignments": assignments}
      save(CLUSTERING, 0, {**state, **train_state})
      counter = 0

    targets, assignments = state["targets"], state["assignments"]
    if cfg.n_labeled and not hasattr(self, "_fixed_rows"):  # resumed after the initial clustering
      subset = self._labeled_subset()
      self._fixed_rows = jnp.asarray(subset)
      self._fixed_targets = jnp.take(_distributions(targets), self._fixed_rows, axis=0)
    converged = False
    rounds_done = counter
    soft = None  # the last E-step's soft assignments, which are also the final predictions
    for rnd in range(counter + 1, cfg.max_rounds + 1):
      t0 = time.time()
      totals: dict[str, float] = {}
      if cfg.steps_per_round:
        train_state, totals = self.run_epoch(CLUSTERING, train_state, targets, rnd, 0, f"round {rnd}",
                                             indices=self._round_indices(rnd))
        self._check_finite(totals, f"round {rnd}", checkpointer)
      for epoch in range(0 if cfg.steps_per_round else cfg.epochs_per_round):
        train_state, terms = self.run_epoch(CLUSTERING, train_state, targets, rnd, epoch,
                                            f"round {rnd} epoch {epoch + 1}/{cfg.epochs_per_round}")
        self._check_finite(terms, f"round {rnd}", checkpointer)
        for k, v in terms.items():
          totals[k] = totals.get(k, 0.0) + v / cfg.epochs_per_round
      train_state = self._update_clusters(train_state, rnd)
      # E-step (Algorithm 1, lines 4-5) on the clean pathway.
      predicted = self.predict(train_state["params"])
      soft = soft_assignments_of(predicted)
      new_assignments = jnp.argmax(soft, axis=-1).astype(jnp.int32)
      changed = float(jnp.mean(new_assignments != assignments))
      targets = self._fix_labeled(self._e_step(predicted), soft)
      assignments = new_assignments
      state = {**state, "targets": targets, "assignments": assignments}
      save(CLUSTERING, rnd, {**state, **train_state})
      rounds_done = rnd
      self.logger.log({"phase": "round", "round": rnd, **totals, "changed": changed,
                       **self._scores(parallel.to_host(assignments)), "seconds": time.time() - t0})
      if changed < cfg.tol:
        converged = True
        break

    if soft is None:  # no round ran in this process (resumed after the last one, or max_rounds=0)
      soft = soft_assignments_of(self.predict(train_state["params"]))
    return FitResult(
        assignments=parallel.to_host(jnp.argmax(soft, axis=-1)).astype(np.int32),
        soft_assignments=parallel.to_host(soft).astype(np.float32),
        targets=parallel.to_host(targets),
        params=train_state["params"],
        rounds=rounds_done,
        converged=converged,
        history=self.logger.history,
        seconds=time.time() - start,
    )

  def _update_clusters(self, train_state: dict, rnd: int) -> dict:
    """``Algorithm.update_clusters`` on the whole dataset's embeddings, where the algorithm
    defines it; the optimizer state is kept, the new parameters are replicated like the old."""
    if type(self.algo).update_clusters is Algorithm.update_clusters:
      return train_state
    features = parallel.to_host(self.embed(train_state["params"]))
    params = self.algo.update_clusters(train_state["params"], features, self._key(99, 2, rnd))
    return {**train_state, "params": self._replicate(params)}

  def _load_pretrained(self, like: PyTree) -> PyTree:
    """The warmed-up parameters of the run in ``config.pretrained``, checked against ``like``.

    That run's last warm-up step is used. A run that kept only the state after its initial
    clustering (written before that step was kept) serves too when its ``config.json`` says it
    did not fit the initial targets (``init_epochs == 0``): ``init_clusters`` recomputes all
    that step added.
    """
    source = pathlib.Path(self.config.pretrained)
    directory = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    if not directory.is_dir():
      raise CheckpointError(f"pretrained: {source} is not a workdir with checkpoints")
    with Checkpointer(directory) as source_checkpoints:
      saved = {}
      for step in sorted(source_checkpoints.all_steps()):
        saved[step] = source_checkpoints.restore_saved(step)
        if int(saved[step]["phase"]) == CLUSTERING:
          break
      else:
        raise CheckpointError(f"pretrained: {directory} holds no finished warm-up; let that run finish it")
      if step - 1 in saved:
        params = saved[step - 1]["params"]
      elif self._init_epochs_of(source) == 0:
        params = saved[step]["params"]
      else:
        raise CheckpointError(f"pretrained: {directory} kept no warmed-up parameters, only those fitted to "
                              "its initial clusters")
    expected = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), like)
    found = jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), params)
    if jax.tree.structure(expected) != jax.tree.structure(found) or jax.tree.leaves(expected) != jax.tree.leaves(found):
      raise CheckpointError(f"pretrained: the parameters in {directory} do not fit this network "
                            "(another architecture, image shape or number of clusters)")
    if self.main_process:
      print(f"starting from the warmed-up parameters in {directory}", file=sys.stderr)
    return jax.tree.map(jnp.asarray, params)

  @staticmethod
  def _init_epochs_of(workdir: pathlib.Path) -> int | None:
    try:
      return int(json.loads((workdir / "config.json").read_text()).get("init_epochs", 0))
    except (OSError, ValueError, TypeError):
      return None

  def _fit_initial_targets(self, train_state, targets, assignments, checkpointer):
    """M-step epochs on the initial targets until the predictions stop agreeing better with
    the initial assignments (``init_epochs``, ``init_patience``)."""
    cfg = self.config
    initial = parallel.to_host(assignments)
    best, best_params, since_best = -1.0, None, 0
    for epoch in range(cfg.init_epochs):
      t0 = time.time()
      train_state, terms = self.run_epoch(CLUSTERING, train_state, targets, 0, epoch,
                                          f"fit initial clusters {epoch + 1}/{cfg.init_epochs}")
      self._check_finite(terms, f"the fit to the initial clusters (epoch {epoch + 1})", checkpointer)
      predicted = parallel.to_host(jnp.argmax(soft_assignments_of(self.predict(train_state["params"])), axis=-1))
      agreement = metrics_lib.nmi(initial, predicted)
      self.logger.log({"phase": "init-fit", "epoch": epoch + 1, **terms, "agreement": agreement,
                       **self._scores(predicted), "seconds": time.time() - t0})
      if agreement > best:
        best, since_best = agreement, 0
        best_params = jax.tree.map(jnp.copy, train_state["params"])
      else:
        since_best += 1
        if since_best >= cfg.init_patience:
          break
    return self._replicate({"params": best_params, "opt_state": self.optimizers[CLUSTERING].init(best_params)})

  # -- semi-supervised mode (DEPICT section 4.4)

  def _labeled_subset(self) -> np.ndarray:
    rng = np.random.default_rng([self.config.seed, 7])
    return np.sort(rng.choice(self.n, self.config.n_labeled, replace=False))

  def _fix_labeled(self, targets: jax.Array, soft: jax.Array | None) -> jax.Array:
    """Overwrites the targets of the labelled subset with the one-hot best-map cluster of
    their class, decided once from the initial clustering."""
    if not self.config.n_labeled:
      return targets
    if isinstance(targets, dict):
      return {**targets, "q": self._fix_labeled(targets["q"], soft)}
    if soft is None:  # the initial clustering: decide the class -> cluster map now
      subset = self._labeled_subset()
      initial = parallel.to_host(jnp.argmax(targets, axis=-1))
      cluster_of_class = {c: k for k, c in metrics_lib.cluster_mapping(self.labels[subset], initial[subset]).items()}
      clusters = np.array([cluster_of_class.get(c, -1) for c in self.labels[subset]])
      known = clusters >= 0
      self._fixed_rows = jnp.asarray(subset[known])
      self._fixed_targets = jax.nn.one_hot(clusters[known], self.config.n_clusters, dtype=jnp.float32)
    return targets.at[self._fixed_rows].set(self._fixed_targets)
