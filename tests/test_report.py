"""Plots, report.html, bin/report, and the TensorBoard events of a run."""

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from jaxclust import algos, cli, metrics, report, tensorboard
from jaxclust.checkpoint import Checkpointer
from tests.helpers import TINY, pattern_images

pytest.importorskip("matplotlib")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DPI = report.DPI


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A tiny DEPICT run on pattern images: ``(workdir, labels)``; the data is ``patterns.npz``
  beside the workdir."""
  root = tmp_path_factory.mktemp("run")
  x, y = pattern_images()
  np.savez(root / "patterns.npz", x=x, y=y)
  cli.train_and_evaluate("depict", f"npz:{root / 'patterns.npz'}", root / "workdir", dict(TINY), verbosity=0)
  return root / "workdir", y


def png_size(path) -> tuple[int, int]:
  with Image.open(path) as image:
    assert image.format == "PNG"
    image.load()  # decodes the whole file
    return image.size


def test_a_run_ends_with_valid_plots_and_a_report(finished_run):
  workdir, _ = finished_run
  plots = workdir / "plots"
  # Sizes: width x height in inches times the DPI; the embedding has 3 stages by 2 rows
  # (cluster, class), the confusion matrix 4 classes by 4 clusters.
  assert png_size(plots / "embedding.png") == (round((3.6 * 3 + 1.2) * DPI), round(3.4 * 2 * DPI))
  assert png_size(plots / "learning_curves.png") == (10 * DPI, 7 * DPI)
  assert png_size(plots / "confusion_matrix.png") == (5 * DPI, 4 * DPI)
  page = (workdir / "report.html").read_text()
  sources = re.findall(r"<img src='([^']+)'", page)
  assert sources == ["plots/embedding.png", "plots/learning_curves.png", "plots/confusion_matrix.png"]
  assert all((workdir / s).is_file() for s in sources)
  summary = json.loads((workdir / "summary.json").read_text())
  assert f"{summary['acc']:.4f}" in page and "target_form" in page


def test_matched_confusion_equals_a_numpy_reference():
  rng = np.random.default_rng(3)
  for n_classes, n_clusters in ((4, 4), (3, 5), (5, 3)):
    y = rng.integers(0, n_classes, 300) * 2 + 1  # class ids 1, 3, 5, ...
    p = np.where(rng.random(300) < 0.7, (y // 2) % n_clusters, rng.integers(0, n_clusters, 300)) + 10
    table, classes, clusters = report.matched_confusion(y, p)
    class_ids, cluster_ids = np.unique(y), np.unique(p)
    reference = np.zeros((len(class_ids), len(cluster_ids)), np.int64)
    for yi, pi in zip(y, p):
      reference[np.searchsorted(class_ids, yi), np.searchsorted(cluster_ids, pi)] += 1
    rows, cols = linear_sum_assignment(-reference)
    matched = [cluster_ids[c] for _, c in sorted(zip(rows, cols))]
    order = matched + [k for k in cluster_ids if k not in matched]
    np.testing.assert_array_equal(classes, class_ids)
    np.testing.assert_array_equal(clusters, order)
    np.testing.assert_array_equal(table, reference[:, [np.searchsorted(cluster_ids, k) for k in order]])
    if n_clusters >= n_classes:
      assert np.trace(table) == pytest.approx(metrics.acc(y, p) * len(y))


def test_pca_matches_scikit_learn_up_to_sign():
  from sklearn.decomposition import PCA

  rng = np.random.default_rng(0)
  features = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 2.0
  projection, ratio = report.pca_2d(features)
  expected = PCA(n_components=2).fit(features)
  reference = expected.transform(features)
  signs = np.sign(np.sum(projection * reference, axis=0))
  np.testing.assert_allclose(projection * signs, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ratio, expected.explained_variance_ratio_, rtol=1e-6)
  one_dimensional, ratio = report.pca_2d(features[:, :1])
  assert one_dimensional.shape == (200, 2) and np.all(one_dimensional[:, 1] == 0) and ratio[1] == 0


def test_stages_are_the_seeded_initial_the_last_warmup_and_the_final_network(finished_run):
  from sklearn.decomposition import PCA

  workdir, _ = finished_run
  path = workdir.parent / "patterns.npz"
  saved = np.load(workdir / report.PROJECTIONS_FILE)
  assert list(saved["stages"]) == ["initial", "warmup", "final"]
  record = json.loads((workdir / "config.json").read_text())
  dataset = cli.data.load_dataset(f"npz:{path}")
  module = algos.REGISTRY["depict"]
  fields = {f.name for f in dataclasses.fields(module.Config)}
  config = cli.build_config(module, dataset, {k: v for k, v in record.items() if k in fields})
  algorithm = module.ALGORITHM(config, dataset.image_shape)
  x = dataset.x
  # The engine's initial parameters: key fold_in(fold_in(key(seed), 99), 0), first minibatch.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 99), 0)
  networks = [algorithm.init(key, x[: config.batch_size])]
  warmed, last = TINY["warmup_epochs"], TINY["warmup_epochs"] + 1 + TINY["max_rounds"]
  with Checkpointer(workdir / "checkpoints") as checkpoints:
    networks += [checkpoints.restore_saved(step)["params"] for step in (warmed, last)]
  for projection, params in zip(saved["projections"], networks):
    reference = PCA(n_components=2).fit_transform(np.asarray(jax.jit(algorithm.embed)(params, x), np.float64))
    signs = np.sign(np.sum(projection * reference, axis=0))
    np.testing.assert_allclose(projection * signs, reference, rtol=1e-4, atol=1e-5)


def test_bin_report_redraws_from_the_workdir_alone(finished_run, tmp_path):
  workdir, _ = finished_run
  for png in (workdir / "plots").glob("*.png"):
    png.unlink()
  (workdir / "report.html").unlink()
  saved = (workdir / report.PROJECTIONS_FILE).stat().st_mtime_ns
  out = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "report"), str(workdir)],
                       capture_output=True, text=True, check=True)
  assert "report.html" in out.stderr
  # The saved projections were up to date: reused, not recomputed.
  assert (workdir / report.PROJECTIONS_FILE).stat().st_mtime_ns == saved
  assert {p.name for p in (workdir / "plots").glob("*.png")} == {
      "embedding.png", "learning_curves.png", "confusion_matrix.png"}
  assert png_size(workdir / "plots" / "embedding.png")[0] > 0 and (workdir / "report.html").exists()


def test_bin_report_without_the_dataset_leaves_the_embedding_out(finished_run, tmp_path, capsys):
  workdir, _ = finished_run
  copy = tmp_path / "copy"
  copy.mkdir()
  for name in ("config.json", "metrics.jsonl", "summary.json", "assignments.npy", "assignments.csv"):
    (copy / name).write_bytes((workdir / name).read_bytes())
  record = json.loads((copy / "config.json").read_text())
  (copy / "config.json").write_text(json.dumps({**record, "dataset": f"npz:{tmp_path / 'gone.npz'}"}))
  assert report.main([str(copy)]) == 0
  err = capsys.readouterr().err
  assert "embedding plot left out" in err
  assert {p.name for p in (copy / "plots").glob("*.png")} == {"learning_curves.png", "confusion_matrix.png"}
  assert "plots/embedding.png" not in (copy / "report.html").read_text()


def test_bin_report_on_a_folder_that_is_no_run(tmp_path, capsys):
  assert report.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "config.json" in err[0]


def test_without_matplotlib_one_line_and_the_run_is_not_failed(finished_run, monkeypatch, capsys):
  workdir, _ = finished_run
  for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
    monkeypatch.setitem(sys.modules, name, None)
  assert report.main([str(workdir)]) == 2
  assert capsys.readouterr().err.strip() == "error: plots need matplotlib: pip install 'jaxclust[plot]'"
  report.draw_after_training(workdir, None, verbosity=1)
  assert capsys.readouterr().err.strip() == "plots skipped: plots need matplotlib: pip install 'jaxclust[plot]'"


def test_learning_curves_and_embedding_of_unlabelled_runs(tmp_path):
  history = [{"phase": "init", "round": 0, "seconds": 0.1},
             {"phase": "round", "round": 1, "loss": 1.0, "changed": 0.2},
             {"phase": "round", "round": 2, "loss": -0.5, "changed": 0.0}]
  path = report.plot_learning_curves(history, tmp_path / "curves.png", tol=0.001)
  assert png_size(path) == (10 * DPI, 7 * DPI)
  projections = {"index": np.arange(30), "stages": np.array(["initial", "final"]),
                 "titles": np.array(["a", "b"]), "projections": np.random.default_rng(0).normal(size=(2, 30, 2)),
                 "explained": np.full((2, 2), 0.4)}
  path = report.plot_embedding(projections, tmp_path / "embedding.png", np.arange(30) % 3, None)
  assert png_size(path) == (round((3.6 * 2 + 1.2) * DPI), round(3.4 * DPI))


def test_read_metrics_keeps_the_last_record_of_each_round(tmp_path):
  lines = [{"phase": "round", "round": 1, "loss": 2.0}, {"phase": "round", "round": 2, "loss": 1.0},
           {"phase": "round", "round": 2, "loss": 0.5}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + '\n{"phase": "rou')
  assert [r["loss"] for r in report.read_metrics(tmp_path)] == [2.0, 0.5]


def read_events(logdir) -> list[tuple[int, str, float]]:
  """``(step, tag, value)`` of every scalar in the TFRecord event files under ``logdir``."""
  from tensorboardX.proto import event_pb2

  scalars = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    raw, at = path.read_bytes(), 0
    while at < len(raw):
      (length,) = struct.unpack("<Q", raw[at:at + 8])
      event = event_pb2.Event.FromString(raw[at + 12:at + 12 + length])
      at += 12 + length + 4  # length, its CRC, the record, its CRC
      scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return scalars


def test_tensorboard_events_repeat_metrics_jsonl(finished_run):
  pytest.importorskip("tensorboardX")
  workdir, _ = finished_run
  scalars = {(step, tag): value for step, tag, value in read_events(workdir / tensorboard.EVENTS_DIR)}
  for record in report.read_metrics(workdir):
    step = record.get("round", record.get("epoch"))
    for key in ("loss", "changed", "acc", "nmi"):
      if key in record:
        assert scalars[(step, f"{record['phase']}/{key}")] == pytest.approx(record[key], rel=1e-6)
  assert (TINY["max_rounds"], "round/acc") in scalars


def test_no_plots_flag_and_no_tensorboardx(finished_run, tmp_path, monkeypatch, capsys):
  path = finished_run[0].parent / "patterns.npz"
  monkeypatch.setitem(sys.modules, "tensorboardX", None)
  args = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v!r}")]
  assert cli.main(["--dataset", f"npz:{path}", "--workdir", str(tmp_path), "--no-plots", "--verbose", *args]) == 0
  assert not (tmp_path / "plots").exists() and not (tmp_path / "report.html").exists()
  assert not (tmp_path / tensorboard.EVENTS_DIR).exists()
  err = capsys.readouterr().err
  assert err.count("TensorBoard events not written: pip install 'jaxclust[tensorboard]'") == 1
  assert (tmp_path / "summary.json").exists()
