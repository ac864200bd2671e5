"""Plots and a one-page HTML report of a run's workdir (``bin/report WORKDIR``).

:func:`draw_run` writes into ``WORKDIR/plots/``:

- ``embedding.png``: the first two principal components of the embedding (the top encoder
  layer: the columns of the algorithm's ``embed`` that its ``clustering_features`` keeps) at
  the three stages of DEPICT's Figures 4-5: initial (random parameters), after the
  reconstruction-only warm-up, and final; coloured by the final cluster and, when the
  dataset has labels, by class;
- ``learning_curves.png``: the loss terms of the warm-up epochs and of the rounds, the
  fraction of assignments that changed in each round, and ACC/NMI/ARI per round;
- ``confusion_matrix.png`` (datasets with labels): classes against clusters, each cluster
  placed under the class the best one-to-one map (Hungarian) gives it;

and ``WORKDIR/report.html``, one page with the summary, the three plots and the config.

The embeddings are recomputed from the workdir: ``config.json`` rebuilds the algorithm, the
initial parameters are drawn again from the seed exactly as the engine drew them, and the
others come from the kept checkpoints (the last warm-up step and the last round). Their 2-D
projections (of at most :data:`MAX_POINTS` samples) are saved in ``embedding_pca.npz``, so
that a later ``bin/report`` redraws without the dataset. ``bin/train`` calls
:func:`draw_after_training` at the end of every run.

Matplotlib is optional (``pip install 'jaxclust[plot]'``); it is imported only when a plot is
drawn, and only its Agg canvas is used: no window opens and no global backend is changed.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import pathlib
import sys

import numpy as np

from jaxclust import data, metrics
from jaxclust.errors import CheckpointError, DataError, JaxclustError

PLOTS_DIR = "plots"
PROJECTIONS_FILE = "embedding_pca.npz"
REPORT_FILE = "report.html"
MAX_POINTS = 5000  # samples drawn in the embedding plot (a fixed random subset beyond that)
DPI = 100
# Record keys of metrics.jsonl that are not loss terms.
_NOT_LOSS_TERMS = {"phase", "epoch", "round", "seconds", "last", "changed", "agreement", "acc", "nmi",
                   "nmi_geometric", "ari", "source"}
_SCORES = ("acc", "nmi", "ari")


class PlotsUnavailable(JaxclustError):
  """Matplotlib is not installed."""


def _figure_class():
  """matplotlib's ``Figure`` and Agg canvas, or one clear error when matplotlib is absent."""
  try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
  except ImportError:
    raise PlotsUnavailable("plots need matplotlib: pip install 'jaxclust[plot]'") from None

  def new_figure(width: float, height: float):
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure

  return new_figure


# ----------------------------------------------------------------------------- numbers


def pca_2d(features) -> tuple[np.ndarray, np.ndarray]:
  """Projection on the first two principal components.

  Signs follow scikit-learn's PCA: the largest loading of each component is positive.

  Args:
    features: ``[N, D]`` (more trailing axes are flattened).

  Returns:
    ``(projection [N, 2] float32, explained_variance_ratio [2])``; when ``D`` or ``N - 1``
    is below 2 the missing component is zero.
  """
  f = np.asarray(features, np.float64).reshape(len(features), -1)
  centred = f - f.mean(axis=0)
  _, singular_values, vt = np.linalg.svd(centred, full_matrices=False)
  largest = vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)]
  vt = vt * np.where(largest < 0, -1.0, 1.0)[:, None]
  k = min(2, len(vt))
  projection = np.zeros((len(f), 2))
  projection[:, :k] = centred @ vt[:k].T
  variance = np.square(singular_values)
  ratio = np.zeros(2)
  if variance.sum() > 0:
    ratio[:k] = variance[:k] / variance.sum()
  return projection.astype(np.float32), ratio


def matched_confusion(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Confusion matrix with the clusters ordered by the class the best map gives them.

  The map is :func:`jaxclust.metrics.cluster_mapping` (Hungarian). When there are at least
  as many clusters as classes, cluster ``clusters[i]`` is the one matched to class
  ``classes[i]``, so the trace is ``ACC * N``; clusters matched to no class come last.

  Args:
    labels_true: ``[N]`` class labels.
    labels_pred: ``[N]`` cluster labels.

  Returns:
    ``(table [C, K] int64, classes [C], clusters [K])``: ``table[i, j]`` counts the samples
    of class ``classes[i]`` in cluster ``clusters[j]``.
  """
  table = metrics.confusion_matrix(labels_true, labels_pred)
  classes, clusters = np.unique(labels_true), np.unique(labels_pred)
  class_of = metrics.cluster_mapping(labels_true, labels_pred)
  position = {int(c): i for i, c in enumerate(classes)}
  matched = sorted(class_of, key=lambda k: position[class_of[k]])
  order = matched + [int(k) for k in clusters if int(k) not in class_of]
  column = {int(k): j for j, k in enumerate(clusters)}
  return table[:, [column[k] for k in order]], classes, np.asarray(order)


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The records of ``metrics.jsonl``, one per (phase, epoch or round); a record written
  again by a resumed run replaces the earlier one. Unreadable lines are skipped."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  records: dict[tuple, dict] = {}
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:
        continue  # a line cut short by a killed process
      if isinstance(record, dict) and "phase" in record:
        records[(record["phase"], record.get("epoch"), record.get("round"))] = record
  return list(records.values())


# ----------------------------------------------------------------------------- the workdir


def _read_config(workdir: pathlib.Path) -> dict:
  path = workdir / "config.json"
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise CheckpointError(f"{workdir} holds no config.json; pass the workdir of a bin/train run") from None
  except (OSError, ValueError):
    raise CheckpointError(f"{path} is unreadable") from None


def _checkpoint_steps(directory: pathlib.Path) -> list[int]:
  """Complete checkpoint steps (orbax renames a step's folder to its number when done)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _read_assignments(workdir: pathlib.Path) -> tuple[np.ndarray | None, np.ndarray | None]:
  """Final assignments and, when the dataset had them, the labels, from the run's outputs."""
  assignments = labels = None
  if (workdir / "assignments.npy").exists():
    assignments = np.load(workdir / "assignments.npy")
  csv = workdir / "assignments.csv"
  if csv.exists():
    with open(csv) as f:
      if f.readline().strip().split(",")[-1] == "label":
        labels = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)[:, 2]
  return assignments, labels


def _restored_params(directory: pathlib.Path, step: int):
  from jaxclust.checkpoint import Checkpointer

  with Checkpointer(directory) as checkpoints:
    return checkpoints.restore_saved(step)["params"]


def _stage_parameters(workdir: pathlib.Path, config, initial) -> list[tuple[str, str, object]]:
  """``(stage, title, params)`` of the initial, warmed-up and final networks found."""
  stages = [("initial", "initial (random parameters)", initial)]
  directory = workdir / "checkpoints"
  steps = _checkpoint_steps(directory)
  warmed = config.warmup_epochs
  if warmed in steps and warmed > 0:
    stages.append(("warmup", f"after the warm-up ({warmed} epochs)", _restored_params(directory, warmed)))
  elif config.pretrained and (source_step := _pretrained_step(pathlib.Path(config.pretrained))) is not None:
    stages.append(("warmup", "after the warm-up (pretrained run)",
                   _restored_params(pathlib.Path(config.pretrained) / "checkpoints", source_step)))
  elif warmed + 1 in steps:
    stages.append(("warmup", "after the initial clustering", _restored_params(directory, warmed + 1)))
  if steps and steps[-1] > warmed + 1:
    stages.append(("final", f"final (round {steps[-1] - warmed - 1})", _restored_params(directory, steps[-1])))
  return stages


def _pretrained_step(source: pathlib.Path) -> int | None:
  """The last warm-up step kept in the workdir a run started from (``pretrained``)."""
  try:
    step = int(json.loads((source / "config.json").read_text())["warmup_epochs"])
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return step if step in _checkpoint_steps(source / "checkpoints") else None


def compute_projections(workdir: str | pathlib.Path, dataset: data.Dataset) -> dict:
  """The embedding of ``dataset`` at each stage of the run in ``workdir``, projected by
  :func:`pca_2d`, for a fixed subset of at most :data:`MAX_POINTS` samples. The embedding is
  what the initial clustering reads (``Algorithm.clustering_features`` of ``embed``'s
  output): SpectralNet's and DSCDAN's codes without the spectral outputs, the inter-class
  separation method's without Algorithm 1's radius.

  Returns:
    a dict with ``index`` ``[M]`` (rows of the dataset), ``stages`` and ``titles`` ``[S]``,
    ``projections`` ``[S, M, 2]``, ``explained`` ``[S, 2]`` and ``final_step`` (the last
    checkpoint step, -1 if none); also saved as ``embedding_pca.npz`` in the workdir.
  """
  import jax

  from jaxclust import algos, cli
  from jaxclust.engine import Engine

  workdir = pathlib.Path(workdir)
  record = _read_config(workdir)
  if record.get("algo") not in algos.REGISTRY:
    raise CheckpointError(f"{workdir / 'config.json'} names an unknown algorithm {record.get('algo')!r}")
  module, config = cli.config_from_record(record, dataset)
  engine = Engine(module.ALGORITHM(config, dataset.image_shape), dataset.x, workdir=None, verbosity=0)
  # The engine draws the initial parameters with this key and example batch (Engine._fit);
  # jit compiles the initialisers once instead of op by op (the values agree to rounding).
  initial = jax.jit(engine.algo.init)(engine._key(99, 0), engine.x[: engine.batch_size])
  n = dataset.n
  index = np.arange(n) if n <= MAX_POINTS else np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))
  stages, titles, projections, explained = [], [], [], []
  for stage, title, params in _stage_parameters(workdir, config, initial):
    projection, ratio = pca_2d(np.asarray(engine.algo.clustering_features(engine.embed(params))))
    stages.append(stage)
    titles.append(title)
    projections.append(projection[index])
    explained.append(ratio)
  steps = _checkpoint_steps(workdir / "checkpoints")
  result = {"index": index, "stages": np.asarray(stages), "titles": np.asarray(titles),
            "projections": np.stack(projections), "explained": np.stack(explained),
            "final_step": np.int64(steps[-1] if steps else -1)}
  np.savez(workdir / PROJECTIONS_FILE, **result)
  return result


def _saved_projections(workdir: pathlib.Path) -> dict | None:
  """The saved projections, unless the run has gone on since they were computed."""
  path = workdir / PROJECTIONS_FILE
  if not path.exists():
    return None
  try:
    with np.load(path) as saved:
      result = {k: saved[k] for k in saved.files}
  except (OSError, ValueError):
    return None
  steps = _checkpoint_steps(workdir / "checkpoints")
  return result if int(result.get("final_step", -2)) == (steps[-1] if steps else -1) else None


# ----------------------------------------------------------------------------- plots


def _palette(n: int):
  from matplotlib import colormaps

  if n <= 10:
    return colormaps["tab10"](np.arange(n))
  if n <= 20:
    return colormaps["tab20"](np.arange(n))
  return colormaps["turbo"](np.linspace(0, 1, n))


def _scatter(ax, points: np.ndarray, groups: np.ndarray | None, keys: np.ndarray, colours, legend: bool) -> None:
  """Points coloured by group; ``keys[i]`` has ``colours[i]``, any other group is grey."""
  if groups is None:
    ax.scatter(points[:, 0], points[:, 1], s=4, color="0.3", alpha=0.6, linewidths=0, rasterized=True)
    return
  for key in np.unique(groups):
    at = groups == key
    where = np.flatnonzero(keys == key)
    colour = colours[where[0]] if where.size else (0.6, 0.6, 0.6, 1.0)
    ax.scatter(points[at, 0], points[at, 1], s=4, color=colour, alpha=0.7, linewidths=0, rasterized=True,
               label=str(key) if key >= 0 else "unmatched")
  if legend:
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small", markerscale=3, frameon=False)


def plot_embedding(projections: dict, path: pathlib.Path, assignments: np.ndarray | None = None,
                   labels: np.ndarray | None = None) -> pathlib.Path:
  """DEPICT's Figures 4-5 for this run: one column per stage, one row coloured by the final
  cluster (relabelled with its matched class when there are labels, so that the rows share
  colours) and one by class."""
  new_figure = _figure_class()
  index = projections["index"]
  clusters = None if assignments is None else np.asarray(assignments)[index]
  classes = None if labels is None else np.asarray(labels)[index]
  if assignments is not None and labels is not None:
    clusters = metrics.best_map(labels, assignments)[index]
  rows = [(name, groups) for name, groups in
          (("final cluster" + (" (matched to classes)" if classes is not None else ""), clusters),
           ("class", classes)) if groups is not None] or [("", None)]
  keys = np.unique(np.concatenate([g for _, g in rows if g is not None])) if rows[0][1] is not None else np.zeros(0)
  keys = keys[keys >= 0]
  colours = _palette(max(len(keys), 1))
  n_stages = len(projections["stages"])
  figure = new_figure(3.6 * n_stages + 1.2, 3.4 * len(rows))
  axes = figure.subplots(len(rows), n_stages, squeeze=False)
  for r, (row_name, groups) in enumerate(rows):
    for s in range(n_stages):
      ax = axes[r, s]
      _scatter(ax, projections["projections"][s], groups, keys, colours,
               legend=s == n_stages - 1 and len(keys) <= 20)
      explained = projections["explained"][s]
      ax.set_title(str(projections["titles"][s]) + (f"\ncoloured by {row_name}" if row_name else ""), fontsize=9)
      ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of variance)", fontsize=8)
      ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}%)", fontsize=8)
      ax.tick_params(labelsize=7)
  shown = len(index)
  figure.suptitle(f"Embedding at three stages, first two principal components ({shown} samples)", fontsize=10)
  figure.savefig(path)
  return path


def _series(history: list[dict], phases: tuple[str, ...], x_key: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """``(x [T], {key: values [T]})`` of the entries that are numbers in every record of ``phases``."""
  records = sorted((r for r in history if r.get("phase") in phases and x_key in r), key=lambda r: r[x_key])
  x = np.asarray([r[x_key] for r in records], np.float64)
  keys = [k for k in dict.fromkeys(k for r in records for k in r)
          if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in records)]
  return x, {k: np.asarray([r[k] for r in records], np.float64) for k in keys if k != x_key}


def _curves(ax, x, values: dict[str, np.ndarray], keys, title: str, xlabel: str, empty: str,
            log: bool = True) -> None:
  """One line per key (log scale when ``log`` and every value is positive), or ``empty``."""
  from matplotlib.ticker import MaxNLocator

  ax.set_title(title, fontsize=9)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(xlabel, fontsize=8)
  ax.tick_params(labelsize=7)
  keys = [k for k in keys if k in values]
  if not len(x) or not keys:
    ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.4")
    return
  for key in keys:
    ax.plot(x, values[key], marker="." if len(x) < 40 else None, label=key)
  if log and all(np.all(values[k] > 0) for k in keys):
    ax.set_yscale("log")
  ax.legend(fontsize="x-small", frameon=False)


def plot_learning_curves(history: list[dict], path: pathlib.Path, tol: float | None = None) -> pathlib.Path:
  """Loss terms per warm-up epoch and per round, the fraction of changed assignments per
  round against the stopping tolerance, and ACC/NMI/ARI per round (round 0: the initial
  clustering)."""
  new_figure = _figure_class()
  figure = new_figure(10, 7)
  (warm_ax, round_ax), (change_ax, score_ax) = figure.subplots(2, 2)
  x, values = _series(history, ("warmup",), "epoch")
  _curves(warm_ax, x, values, [k for k in values if k not in _NOT_LOSS_TERMS], "warm-up loss terms",
          "epoch", "no warm-up in this run")
  x, values = _series(history, ("round",), "round")
  _curves(round_ax, x, values, [k for k in values if k not in _NOT_LOSS_TERMS], "clustering loss terms",
          "round", "no round yet")
  _curves(change_ax, x, values, ["changed"], "fraction of assignments changed", "round", "no round yet")
  if "changed" in values and len(x):
    threshold = tol if tol else 1e-3
    change_ax.set_yscale("symlog", linthresh=threshold)
    if tol:
      change_ax.axhline(tol, color="0.5", linestyle="--", linewidth=1, label=f"tol {tol:g}")
      change_ax.legend(fontsize="x-small", frameon=False)
  x, values = _series(history, ("init", "round"), "round")
  _curves(score_ax, x, values, list(_SCORES), "scores against the labels (round 0: initial clustering)",
          "round", "no labels, or no round yet", log=False)
  figure.savefig(path)
  return path


def plot_confusion(labels: np.ndarray, assignments: np.ndarray, path: pathlib.Path) -> pathlib.Path:
  """The :func:`matched_confusion` table as a heat map, with counts where it is small."""
  new_figure = _figure_class()
  table, classes, clusters = matched_confusion(labels, assignments)
  n_classes, n_clusters = table.shape
  size = min(max(4.0, 0.45 * max(n_classes, n_clusters) + 2), 14)
  figure = new_figure(size + 1, size)
  ax = figure.subplots()
  image = ax.imshow(table, cmap="Blues", aspect="auto")
  figure.colorbar(image, ax=ax, shrink=0.8, label="samples")
  if n_classes * n_clusters <= 400:
    top = table.max() if table.size else 0
    for i in range(n_classes):
      for j in range(n_clusters):
        ax.text(j, i, str(table[i, j]), ha="center", va="center", fontsize=7,
                color="white" if table[i, j] > 0.5 * top else "black")
  if n_clusters <= 40:
    ax.set_xticks(range(n_clusters), [str(k) for k in clusters], fontsize=7)
  if n_classes <= 40:
    ax.set_yticks(range(n_classes), [str(c) for c in classes], fontsize=7)
  ax.set_xlabel("cluster (ordered by its matched class)", fontsize=8)
  ax.set_ylabel("class", fontsize=8)
  ax.set_title(f"Confusion matrix after best-map matching: ACC {metrics.acc(labels, assignments):.4f}", fontsize=10)
  figure.savefig(path)
  return path


# ----------------------------------------------------------------------------- HTML


_CAPTIONS = {
    "embedding": "The embedding (top encoder layer) at the three stages of DEPICT's Figures 4-5, "
                 "projected on its first two principal components.",
    "learning_curves": "Loss terms per warm-up epoch and per round, the fraction of assignments that "
                       "changed in each round (the run stops below tol), and the scores per round.",
    "confusion_matrix": "Samples of each class (rows) in each cluster (columns); each cluster stands "
                        "under the class the best one-to-one map gives it.",
}
_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:0.9em}.note{color:#a60}"""


def write_html(workdir: pathlib.Path, images: dict[str, pathlib.Path], notes: list[str]) -> pathlib.Path:
  """``report.html``: the run's summary, its plots (by relative path) and its config."""
  record = _read_config(workdir)
  summary_path = workdir / "summary.json"
  summary = json.loads(summary_path.read_text()) if summary_path.exists() else None

  def rows(mapping: dict) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_shown(v))}</td></tr>"
                   for k, v in mapping.items())

  title = f"{record.get('algo', '?')} on {record.get('dataset', '?')}"
  parts = [f"<!doctype html>\n<html><head><meta charset='utf-8'><title>jaxclust: {html.escape(title)}</title>",
           f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
           (f"<p>workdir <code>{html.escape(str(workdir))}</code>, report written "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}</p>")]
  if summary is None:
    parts.append("<p class='note'>The run has not finished: no summary.json yet.</p>")
  else:
    parts.append("<h2>Summary</h2><table>" + rows(summary) + "</table>")
  for note in notes:
    parts.append(f"<p class='note'>{html.escape(note)}</p>")
  for name, image in images.items():
    relative = image.relative_to(workdir).as_posix()
    heading = name.replace("_", " ").capitalize()
    parts.append(f"<h2>{heading}</h2><figure><img src='{html.escape(relative)}' alt='{heading}'>"
                 f"<figcaption>{html.escape(_CAPTIONS.get(name, ''))}</figcaption></figure>")
  parts.append("<h2>Configuration</h2><details><summary>config.json</summary><table>" + rows(record)
               + "</table></details>")
  outputs = [n for n in ("summary.json", "metrics.jsonl", "config.json", "assignments.csv") if (workdir / n).exists()]
  parts.append("<p>Files: " + ", ".join(f"<a href='{n}'>{n}</a>" for n in outputs) + "</p></body></html>\n")
  path = workdir / REPORT_FILE
  path.write_text("\n".join(parts))
  return path


def _shown(value) -> str:
  return f"{value:.4f}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- entry points


def draw_run(workdir: str | pathlib.Path, *, dataset: data.Dataset | None = None, data_dir: str | None = None,
             recompute: bool = False) -> tuple[dict[str, pathlib.Path], list[str]]:
  """Draws the plots of the run in ``workdir`` and writes ``report.html``.

  Args:
    workdir: a ``bin/train`` workdir (``config.json``, ``metrics.jsonl``, ``checkpoints/``...).
    dataset: the run's dataset; ``None`` loads it from ``config.json`` (with ``data_dir``)
      when the embeddings have to be computed.
    data_dir: where the dataset's files are, as ``bin/train --data-dir``.
    recompute: compute the embeddings even if ``embedding_pca.npz`` is up to date.

  Returns:
    ``(files, notes)``: the written files by name (``embedding``, ``learning_curves``,
    ``confusion_matrix``, ``report``) and one line for each plot left out and why.

  Raises:
    PlotsUnavailable: without matplotlib. CheckpointError: ``workdir`` is not a run's.
  """
  _figure_class()  # fail before any work without matplotlib
  workdir = pathlib.Path(workdir)
  record = _read_config(workdir)
  notes: list[str] = []
  assignments, labels = _read_assignments(workdir)
  projections = None if recompute else _saved_projections(workdir)
  if projections is None:
    if dataset is None:
      try:
        dataset = data.load_dataset(record["dataset"], data_dir=data_dir, split=record.get("split", "all"))
      except DataError as e:
        notes.append(f"embedding plot left out: the dataset cannot be loaded ({e})")
    if dataset is not None:
      projections = compute_projections(workdir, dataset)
  if labels is None and dataset is not None:
    labels = dataset.y
  if assignments is None:
    notes.append("no assignments.npy (the run has not finished): the confusion matrix is left out")
  elif labels is None:
    notes.append("the dataset has no labels: the confusion matrix is left out")

  plots = workdir / PLOTS_DIR
  plots.mkdir(exist_ok=True)
  files: dict[str, pathlib.Path] = {}
  if projections is not None:
    files["embedding"] = plot_embedding(projections, plots / "embedding.png", assignments, labels)
  files["learning_curves"] = plot_learning_curves(read_metrics(workdir), plots / "learning_curves.png",
                                                  tol=record.get("tol"))
  if assignments is not None and labels is not None:
    files["confusion_matrix"] = plot_confusion(labels, assignments, plots / "confusion_matrix.png")
  files["report"] = write_html(workdir, dict(files), notes)
  return files, notes


def draw_after_training(workdir: str | pathlib.Path, dataset: data.Dataset, verbosity: int = 1) -> None:
  """``bin/train``'s last step: the plots and ``report.html`` of the run just finished.

  Never raises (a run whose results are written does not fail for its pictures): without
  matplotlib, or on any error, it prints one line instead (nothing at ``verbosity`` 0).
  """
  try:
    files, _ = draw_run(workdir, dataset=dataset, recompute=True)
  except PlotsUnavailable as e:
    message = f"plots skipped: {e}"
  except Exception as e:  # noqa: BLE001 - the run's results are complete; only the plots are missing
    message = f"plots not drawn ({type(e).__name__}: {e}); redraw them with bin/report {workdir}"
  else:
    message = f"plots and report: {files['report']}"
  if verbosity:
    print(message, file=sys.stderr)


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="bin/report",
      description="Redraw the plots of a bin/train workdir (embedding at three stages, learning curves, "
                  "confusion matrix) into WORKDIR/plots/ and write WORKDIR/report.html.",
      epilog="example: bin/report runs/depict-digits-seed0 && xdg-open runs/depict-digits-seed0/report.html",
  )
  parser.add_argument("workdir", help="the workdir of a bin/train run")
  parser.add_argument("--data-dir", default=None,
                      help="where the run's dataset files are (needed only to recompute the embeddings)")
  parser.add_argument("--recompute", action="store_true",
                      help="recompute the embeddings from the checkpoints even if embedding_pca.npz is up to date")
  parser.add_argument("--quiet", action="store_true", help="print errors only")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
  try:
    files, notes = draw_run(args.workdir, data_dir=args.data_dir, recompute=args.recompute)
  except JaxclustError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not args.quiet:
    for note in notes:
      print(f"note: {note}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in files.values())}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
