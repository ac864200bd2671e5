"""The data tools of the benchmark scripts: the imbalanced-subset protocol of paper 003."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from jaxclust import data, metrics
from tests.helpers import write_digits_subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def test_imbalanced_subset_keeps_each_class_at_its_linear_rate():
  imbalanced = load_script("imbalanced")
  np.testing.assert_allclose(imbalanced.retention_probabilities(10, 0.1), np.linspace(0.1, 1.0, 10))
  y = np.repeat(np.arange(10), 20000)
  for rate in (0.1, 0.5):
    kept = imbalanced.imbalanced_subset(y, rate, seed=0)
    assert np.all(np.diff(kept) > 0)
    fractions = np.bincount(y[kept], minlength=10) / 20000
    np.testing.assert_allclose(fractions, np.linspace(rate, 1.0, 10), atol=0.015)
    assert fractions[-1] == 1.0
  np.testing.assert_array_equal(imbalanced.imbalanced_subset(y, 0.3, 1), imbalanced.imbalanced_subset(y, 0.3, 1))


def test_imbalanced_subset_file_loads_back_as_the_original_rows(tmp_path):
  imbalanced = load_script("imbalanced")
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (300, 6, 6, 1), dtype=np.uint8)
  labels = rng.integers(0, 3, 300).astype(np.int32)
  base = data.Dataset(x=data.scale_to_unit_range(pixels), y=labels, name="toy")
  path = imbalanced.write_subset(base, 0.2, 0, tmp_path)
  loaded = data.load_dataset(f"npz:{path}")
  index = imbalanced.imbalanced_subset(labels, 0.2, 0)
  np.testing.assert_array_equal(loaded.x, base.x[index])
  np.testing.assert_array_equal(loaded.y, labels[index])


def test_imbalanced_table_only_reads_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
  """``--table-only``: a finished run's ACC is read from its summary, a missing one is a dash,
  and nothing is trained."""
  imbalanced = load_script("imbalanced")
  monkeypatch.setattr(imbalanced.cli, "train_and_evaluate", lambda *a, **k: pytest.fail("trained"))
  base = data.Dataset(x=np.zeros((4, 6, 6, 1), np.float32), y=np.zeros(4, np.int32), name="toy")
  finished = tmp_path / "ics-toy-r0.1-seed0"
  finished.mkdir()
  (finished / "summary.json").write_text(json.dumps({"acc": 0.4321}))
  assert imbalanced.run("ics", base, tmp_path / "unused.npz", 0, finished, train=False)["acc"] == 0.4321
  assert imbalanced.run("ics", base, tmp_path / "unused.npz", 0, tmp_path / "missing", train=False) is None
  rows = imbalanced.markdown_rows({"ics": {0.1: 0.4321, 0.3: None}}, [0.1, 0.3], {0.1: 50, 0.3: 70})
  assert rows == ["| method | r = 0.1 (N = 50) | r = 0.3 (N = 70) |", "|---|---|---|", "| ics | 0.432 | — |"]


def test_scaling_exponent_recovers_a_power_law_from_5000_up():
  scaling = load_script("scaling")
  ns = [1000, 5000, 10000, 20000, 70000]
  # A fixed cost dominates at N = 1000 only: the fit starts at 5000 and finds the exponent.
  values = [5.0] + [2e-4 * n ** 1.3 for n in ns[1:]]
  assert abs(scaling.exponent(ns, values) - 1.3) < 1e-9
  assert scaling.exponent([1000, 5000], [1.0, 2.0]) is None  # one point from 5000 up: no fit


def test_scaling_worker_measures_every_phase_on_a_small_subset():
  scaling = load_script("scaling")
  record = scaling.measure("dec", "digits", 300, 1, None, {"batch_size": 64, "steps_per_round": 3})
  assert record["n"] == 300 and record["batch_size"] == 64 and record["round_steps"] == 3
  assert record["steps_per_epoch"] == 5  # ceil(300 / 64): the padded last batch is a step
  assert set(record["seconds"]) == set(scaling.PHASES)
  assert all(s > 0 for s in record["seconds"].values())
  assert record["peak_memory_bytes"] > 0
  table = scaling.markdown([record, {"algo": "dec", "n": 600, "error": "exit code 1"}], "cmd")
  assert "| dec | 300 |" in table and "failed: exit code 1" in table


def write_finished_run(workdir, summary, warmup_seconds, round_seconds, init_acc):
  """A workdir as ``cli.train_and_evaluate`` leaves it: ``config.json``, ``metrics.jsonl`` and ``summary.json``."""
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({"algo": summary["algo"], "dataset": summary["dataset"]}))
  records = [{"phase": "warmup", "epoch": i + 1, "loss": 0.5, "reconstruction": 0.5, "seconds": s, "last": False}
             for i, s in enumerate(warmup_seconds)]
  records.append({"phase": "init", "round": 0, "acc": init_acc, "nmi": 0.5, "ari": 0.4, "seconds": 2.0})
  records += [{"phase": "round", "round": i + 1, "clustering": 0.1, "loss": 0.1, "changed": 0.01, "acc": 0.6,
               "seconds": s} for i, s in enumerate(round_seconds)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  (workdir / "summary.json").write_text(json.dumps(summary))


def fake_summary(algo, dataset, n, rng):
  acc, nmi, ari = rng.uniform(0.4, 0.9, 3)
  return {"algo": algo, "dataset": dataset, "n": n, "n_clusters": 10, "rounds": int(rng.integers(5, 40)),
          "converged": True, "seconds": float(rng.uniform(100, 900)), "train_seconds": 90.0,
          "acc": acc, "nmi": nmi, "ari": ari, "nmi_geometric": nmi}


def table_rows(output):
  """The markdown table's rows as ``{(algo, dataset): {column: cell}}``."""
  lines = [line for line in output.splitlines() if line.startswith("| ")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)) for line in lines[1:]]
  return {(r["algo"], r["dataset"]): r for r in rows}


def test_quality_table_only_assembles_finished_runs_and_marks_the_missing(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JAXCLUST_XLA_CPU", "0")
  quality = load_script("quality")
  rng = np.random.default_rng(0)
  made = {}
  for dataset, n, seeds in (("digits", 1797, (0, 1, 2)), ("fashion-mnist-test", 10000, (0, 2))):
    for seed in seeds:
      summary = fake_summary("dec", dataset, n, rng)
      times = (rng.uniform(0.5, 2.0, 4), rng.uniform(1.0, 5.0, 6), float(rng.uniform(0.3, 0.8)))
      write_finished_run(tmp_path / f"dec-{dataset}-seed{seed}", summary, *times)
      made.setdefault(dataset, []).append((summary, *times))
  (tmp_path / "idec-digits-seed0").mkdir()  # started, not finished: no summary.json
  (tmp_path / "idec-digits-seed0" / "config.json").write_text("{}")

  assert quality.main(["--algos", "dec", "idec", "--root", str(tmp_path), "--datasets", "digits",
                       "fashion-mnist-test", "--table-only", "--json", str(tmp_path / "rows.json")]) == 0
  out = capsys.readouterr().out
  rows = table_rows(out)
  assert list(rows) == [("dec", "digits"), ("idec", "digits"), ("dec", "fashion-mnist-test"),
                        ("idec", "fashion-mnist-test")]
  for dataset, runs in made.items():
    row = rows["dec", dataset]
    for key in ("acc", "nmi", "ari"):
      values = np.array([summary[key] for summary, *_ in runs])
      assert row[key.upper()] == f"{values.mean():.3f} ± {values.std():.3f}"
    assert row["N"] == str(runs[0][0]["n"])
    assert row["total s / run"] == f"{np.mean([summary['seconds'] for summary, *_ in runs]):.0f}"
    assert row["s / warm-up epoch"] == f"{np.mean([np.median(w) for _, w, _, _ in runs]):.2f}"
    assert row["s / round"] == f"{np.mean([np.median(r) for _, _, r, _ in runs]):.2f}"
    init = np.array([i for *_, i in runs])
    assert row["k-means on the warmed-up embedding ACC"] == f"{init.mean():.3f} ± {init.std():.3f}"
  assert rows["dec", "digits"]["seeds"] == "3 of 3"
  assert rows["dec", "fashion-mnist-test"]["seeds"] == "2 of 3 (no seed 1)"
  assert rows["idec", "digits"]["seeds"] == "0 of 3 (seed 0 unfinished; no seed 1, 2)"
  assert rows["idec", "fashion-mnist-test"]["seeds"] == "not run"
  assert rows["idec", "digits"]["ACC"] == rows["idec", "digits"]["N"] == "—"
  # The papers report DEC and IDEC on all 70,000 Fashion-MNIST images, nothing on digits.
  assert rows["dec", "fashion-mnist-test"]["paper ACC / NMI"] == "0.518 / 0.546 (70k) [DSCDAN T3]"
  assert rows["idec", "fashion-mnist-test"]["paper ACC / NMI"] == "0.529 / 0.557 (70k) [DSCDAN T3]"
  assert rows["dec", "digits"]["paper ACC / NMI"] == rows["idec", "digits"]["paper ACC / NMI"] == "—"
  assert "[DSCDAN T3] Yang et al." in out and "[DEPICT T2]" not in out

  saved = json.loads((tmp_path / "rows.json").read_text())
  assert [(r["algo"], r["dataset"], r["seeds_finished"]) for r in saved] == [
      ("dec", "digits", [0, 1, 2]), ("idec", "digits", []), ("dec", "fashion-mnist-test", [0, 2]),
      ("idec", "fashion-mnist-test", [])]
  np.testing.assert_allclose(saved[2]["acc"], [summary["acc"] for summary, *_ in made["fashion-mnist-test"]])


def test_quality_papers_column_matches_the_dataset_and_marks_a_whole_dataset_number():
  quality = load_script("quality")
  assert quality.paper_cell(quality.paper_result("dscdan", "fashion-mnist"), 70000) == "0.662 / 0.645 [DSCDAN T3]"
  assert quality.paper_cell(quality.paper_result("depict", "mnist-test"), 10000) == "0.963 / 0.915 [DEPICT T2]"
  # ICS reports MNIST only on all 70,000 images, and ACC alone.
  assert quality.paper_cell(quality.paper_result("ics", "mnist-test"), 10000) == "0.9893 / — (70k) [ICS T1]"
  assert quality.paper_cell(quality.paper_result("spectralnet", "fashion-mnist-test"), 10000) == "—"
  assert quality.paper_result("dec", "digits") is None
  for algo, results in quality.PAPER_RESULTS.items():
    assert algo in quality.ALGO_ORDER
    for result in results.values():
      assert result["cite"] in quality.SOURCES and 0 < result["acc"] < 1


def test_quality_skips_a_dataset_whose_files_are_missing(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JAXCLUST_XLA_CPU", "0")
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "no-data"))
  quality = load_script("quality")
  root = tmp_path / "runs"
  # Nothing to train: the only dataset asked for is not installed.
  assert quality.main(["--algo", "dec", "--root", str(root), "--datasets", "mnist-test"]) == 0
  captured = capsys.readouterr()
  notes = [line for line in captured.err.splitlines() if "mnist-test" in line]
  assert len(notes) == 1 and notes[0].startswith("note: skipping mnist-test") and "not bundled" in notes[0]
  assert "| mnist-test |" not in captured.out and not root.exists()

  assert quality.main(["--algos", "dec", "--root", str(root), "--datasets", "digits", "mnist-test",
                       "--table-only"]) == 0
  captured = capsys.readouterr()
  assert list(table_rows(captured.out)) == [("dec", "digits")]
  assert "skipping mnist-test" in captured.err

  # Runs made elsewhere are read back even where the files are missing.
  write_finished_run(root / "dec-mnist-test-seed0", fake_summary("dec", "mnist-test", 10000, np.random.default_rng(1)),
                     [1.0], [2.0], 0.5)
  assert quality.main(["--algos", "dec", "--root", str(root), "--datasets", "mnist-test", "--table-only"]) == 0
  row = table_rows(capsys.readouterr().out)["dec", "mnist-test"]
  assert row["seeds"] == "1 of 3 (no seed 1, 2)" and row["paper ACC / NMI"] == "0.856 / 0.830 [DSCDAN T3]"


def test_quality_rejects_an_unknown_algorithm_or_dataset(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JAXCLUST_XLA_CPU", "0")
  quality = load_script("quality")
  assert quality.main(["--algos", "dec", "kmeans", "--root", str(tmp_path), "--table-only"]) == 2
  err = capsys.readouterr().err.strip()
  assert err == "error: unknown algorithm 'kmeans'; known: depict, dec, idec, ics, spectralnet, dscdan"
  assert quality.main(["--algo", "dec", "--root", str(tmp_path), "--datasets", "digitz", "--table-only"]) == 2
  assert "unknown dataset 'digitz'" in capsys.readouterr().err
  assert quality.ordered_algos(None, None) == ["depict", "dec", "idec", "ics", "spectralnet", "dscdan"]
  assert quality.ordered_algos(["idec", "dec"], "dec") == ["dec", "idec"]


def test_warmup_embedding_clusterings_recover_separated_blobs_and_skip_ward_when_too_large():
  warmup_embedding = load_script("warmup_embedding")
  rng = np.random.default_rng(0)
  centres = np.array([[0, 0], [5, 0], [0, 5]], float)
  z = np.concatenate([rng.normal(c, 0.3, size=(30, 2)) for c in centres])
  truth = np.repeat(np.arange(3), 30)
  found = warmup_embedding.clusterings(z, 3, seed=0, ward_max=1000, spectral_neighbors=(5, 10))
  assert list(found) == ["kmeans", "gmm", "gmm-means", "ward-knn10", "acpic", "ward", "spectral-knn5",
                         "spectral-knn10"]
  for name, (labels, seconds) in found.items():
    assert metrics.acc(truth, labels) == 1.0, name
    assert seconds >= 0
  assert "ward" not in warmup_embedding.clusterings(z, 3, seed=0, ward_max=50)
  assert list(warmup_embedding.clusterings(z, 3, seed=0, ward_max=1000, methods=["spectral", "kmeans"])) == [
      "kmeans", "spectral-knn10"]


def test_warmup_embedding_spectral_method_is_the_eigenvectors_of_the_knn_graph():
  """Two rings around one centre: k-means splits them by side, the kNN graph's spectral
  clustering follows the rings; and its labels are k-means on the normalised Laplacian's
  eigenvectors, computed here with NumPy."""
  from scipy.sparse.csgraph import laplacian
  from sklearn.cluster import KMeans
  from sklearn.neighbors import kneighbors_graph

  warmup_embedding = load_script("warmup_embedding")
  angle = np.linspace(0, 2 * np.pi, 120, endpoint=False)
  z = np.concatenate([np.stack([r * np.cos(angle), r * np.sin(angle)], 1) for r in (1.0, 4.0)])
  truth = np.repeat([0, 1], 120)
  found = warmup_embedding.clusterings(z, 2, seed=0, ward_max=1000, methods=["kmeans", "spectral"],
                                       spectral_neighbors=(5,))
  assert metrics.acc(truth, found["spectral-knn5"][0]) == 1.0
  assert metrics.acc(truth, found["kmeans"][0]) < 0.8
  graph = kneighbors_graph(z, 5, include_self=True).toarray()
  graph = 0.5 * (graph + graph.T)
  values, vectors = np.linalg.eigh(laplacian(graph, normed=True))
  assert values[1] < 1e-8 < values[2]  # two components: two zero eigenvalues
  embedding = vectors[:, :2] / np.sqrt(graph.sum(1))[:, None]
  reference = KMeans(2, n_init=10, random_state=0).fit_predict(embedding)
  assert metrics.acc(reference, found["spectral-knn5"][0]) == 1.0


@pytest.fixture(scope="module")
def digits_subset(tmp_path_factory):
  """``npz:PATH`` of the first 400 of the 8x8 digits, with their labels: the clusterings the
  script runs (AC-PIC's above all) take a tenth of their time on all 1,797."""
  path = tmp_path_factory.mktemp("data") / "digits400.npz"
  write_digits_subset(path, 400)
  return f"npz:{path}"


def test_warmup_embedding_writes_one_record_per_epoch_and_method(tmp_path, capsys, digits_subset):
  warmup_embedding = load_script("warmup_embedding")
  out = tmp_path / "records.json"
  assert warmup_embedding.main(["--dataset", digits_subset, "--epochs", "1", "2", "--set", "batch_size=200",
                                "--set", "conv_features=[4,4]", "--json", str(out)]) == 0
  records = json.loads(out.read_text())
  assert [(r["epoch"], r["method"]) for r in records] == [
      (e, m) for e in (1, 2) for m in ("kmeans", "gmm", "gmm-means", "ward-knn10", "acpic", "ward", "spectral-knn10")]
  assert all(0 <= r["acc"] <= 1 and 0 <= r["nmi"] <= 1 and r["smallest"] >= 1 for r in records)
  assert records[0]["loss"] > records[-1]["loss"]  # the warm-up goes on between the checks
  assert len(capsys.readouterr().out.strip().splitlines()) == len(records)


def test_warmup_embedding_clusters_a_finished_runs_warmed_up_embedding(tmp_path, digits_subset):
  from jaxclust import cli

  warmup_embedding = load_script("warmup_embedding")
  tiny = ["--set", "batch_size=200", "--set", "conv_features=[4,4]", "--set", "warmup_epochs=2",
          "--set", "init_epochs=0", "--set", "max_rounds=1", "--no-plots"]
  assert cli.main(["--algo", "depict", "--dataset", digits_subset, "--workdir", str(tmp_path / "run"), "--seed", "3",
                   *tiny]) == 0
  out = tmp_path / "records.json"
  assert warmup_embedding.main(["--dataset", digits_subset, "--pretrained", str(tmp_path / "run"), "--json",
                                str(out)]) == 0
  records = json.loads(out.read_text())
  assert [r["method"] for r in records] == ["kmeans", "gmm", "gmm-means", "ward-knn10", "acpic", "ward",
                                           "spectral-knn10"]
  assert all(r["seed"] == 3 and r["epoch"] == 2 and r["pretrained"] == str(tmp_path / "run") for r in records)
  # the run's own initial clustering (k-means on the same embedding) scores as the script's
  init = next(json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("phase") == "init")
  assert abs(init["nmi"] - records[0]["nmi"]) < 0.05
  with pytest.raises(SystemExit):
    warmup_embedding.main(["--dataset", "fashion-mnist-test", "--pretrained", str(tmp_path / "run")])
  with pytest.raises(SystemExit):
    warmup_embedding.main(["--dataset", digits_subset, "--pretrained", str(tmp_path / "missing")])


def test_warmup_embedding_clusters_the_codes_of_a_dscdan_run(tmp_path, digits_subset):
  """DSCDAN's features are its codes and then the spectral network's outputs: the script
  clusters only the codes, as DSCDAN's initial k-means does."""
  from jaxclust import cli

  warmup_embedding = load_script("warmup_embedding")
  small = {"conv_features": "[4,8]", "latent_dim": "6", "spectral_hidden": "[16,16]", "batch_size": "200",
           "warmup_epochs": "2", "max_rounds": "0", "kmeans_n_init": "3"}
  run = tmp_path / "run"
  assert cli.main(["--algo", "dscdan", "--dataset", digits_subset, "--workdir", str(run), "--seed", "2", "--no-plots",
                   *[a for k, v in small.items() for a in ("--set", f"{k}={v}")]]) == 0
  out = tmp_path / "records.json"
  assert warmup_embedding.main(["--dataset", digits_subset, "--pretrained", str(run), "--methods", "spectral", "kmeans",
                                "--spectral-neighbors", "5", "--json", str(out)]) == 0
  records = json.loads(out.read_text())
  assert [r["method"] for r in records] == ["kmeans", "spectral-knn5"]
  assert all(r["algo"] == "dscdan" and r["dims"] == 6 and r["seed"] == 2 for r in records)
  # with max_rounds=0 the run's assignments are k-means on the same codes
  summary = json.loads((run / "summary.json").read_text())
  assert abs(summary["nmi"] - records[0]["nmi"]) < 0.05


@pytest.mark.parametrize("algo", ["ics", "dscdan"])
def test_ablation_variants_are_valid_configs_that_drop_their_terms(algo):
  from jaxclust import algos, cli

  ablation = load_script("ablation")
  module = algos.REGISTRY[algo]
  digits = data.load_dataset("digits")
  defaults = cli.build_config(module, digits, {})
  variants = ablation.VARIANTS[algo]
  assert sum(not overrides for overrides in variants.values()) == 1  # one variant is the default config
  for name, overrides in variants.items():
    config = cli.build_config(module, digits, overrides)
    config.validate(digits.n)
    for key, value in overrides.items():
      assert getattr(config, key) == value != getattr(defaults, key), (name, key)
  assert len({ablation.variant_dir(name) for name in variants}) == len(variants)


def test_ablation_table_reads_each_variant_and_the_default_runs_from_elsewhere(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JAXCLUST_XLA_CPU", "0")
  ablation = load_script("ablation")
  rng = np.random.default_rng(1)
  made = {}
  for name, overrides in ablation.VARIANTS["ics"].items():
    root = tmp_path / "quality" if not overrides else tmp_path / "abl" / ablation.variant_dir(name)
    for seed in (0, 1):
      if name == "no entropy" and seed == 1:
        continue
      summary = fake_summary("ics", "digits", 1797, rng)
      write_finished_run(root / f"ics-digits-seed{seed}", summary, [1.0], [2.0], 0.5)
      made.setdefault(name, []).append(summary)
  assert ablation.main(["--algo", "ics", "--datasets", "digits", "--seeds", "0", "1", "--root", str(tmp_path / "abl"),
                        "--full-from", str(tmp_path / "quality"), "--table-only"]) == 0
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  rows = {r["variant"]: r for r in (dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
                                    for line in lines[1:])}
  assert list(rows) == list(ablation.VARIANTS["ics"])
  for name, summaries in made.items():
    acc = np.array([s["acc"] for s in summaries])
    assert rows[name]["ACC"] == f"{acc.mean():.3f} ± {acc.std():.3f}"
  assert rows["no entropy"]["seeds"] == "1 of 2 (no seed 1)"
  assert rows["full"]["overrides"] == "(default config)"
  assert rows["no triplet, no entropy"]["overrides"] == "triplet_weight=0 entropy_weight=0"


def test_ablation_variants_option_selects_rows_and_rejects_unknown_names(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("JAXCLUST_XLA_CPU", "0")
  ablation = load_script("ablation")
  rng = np.random.default_rng(2)
  for name in ablation.VARIANTS["ics"]:
    write_finished_run(tmp_path / ablation.variant_dir(name) / "ics-digits-seed0",
                       fake_summary("ics", "digits", 1797, rng), [1.0], [2.0], 0.5)
  chosen = ["no triplet, no entropy", "no triplet"]
  assert ablation.main(["--algo", "ics", "--datasets", "digits", "--seeds", "0", "--root", str(tmp_path),
                        "--table-only", "--variants", *chosen]) == 0
  lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
  assert [line.strip("|").split("|")[0].strip() for line in lines] == ["no triplet", "no triplet, no entropy"]
  with pytest.raises(SystemExit) as error:
    ablation.main(["--algo", "ics", "--root", str(tmp_path), "--table-only", "--variants", "ConvAE"])
  assert error.value.code == 2 and "unknown variant 'ConvAE' of ics" in capsys.readouterr().err


def test_ablation_table_gives_the_papers_figures_of_each_variant(tmp_path, monkeypatch, capsys):
  """DSCDAN's rows carry Table 4's figure for their variant, the whole dataset's for a split
  (marked by its size), and the table's last variant is DSCDAN itself: Table 3's figure."""
  monkeypatch.setenv("JAXCLUST_XLA_CPU", "0")
  ablation = load_script("ablation")
  quality = load_script("quality")
  for dataset, table4 in ablation.PAPER_ABLATION["dscdan"].items():
    assert list(table4) == list(ablation.VARIANTS["dscdan"])
    full = quality.PAPER_RESULTS["dscdan"][dataset]
    assert (table4["ConvAE+MI+RS+SN"]["acc"], table4["ConvAE+MI+RS+SN"]["nmi"], table4["ConvAE+MI+RS+SN"]["n"]) == (
        full["acc"], full["nmi"], full["n"]), dataset
  rng = np.random.default_rng(3)
  for dataset, n in (("fashion-mnist-test", 10000), ("digits", 1797)):
    write_finished_run(tmp_path / "convae" / f"dscdan-{dataset}-seed0", fake_summary("dscdan", dataset, n, rng),
                       [1.0], [], 0.5)
  assert ablation.main(["--algo", "dscdan", "--datasets", "fashion-mnist-test", "digits", "--seeds", "0",
                        "--root", str(tmp_path), "--table-only", "--variants", "ConvAE", "ConvAE+MI+RS+SN"]) == 0
  out = capsys.readouterr().out
  lines = [line for line in out.splitlines() if line.startswith("| ")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  rows = {(r["variant"], r["dataset"]): r for r in (
      dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[1:])}
  table4 = ablation.PAPER_ABLATION["dscdan"]["fashion-mnist"]
  for variant in ("ConvAE", "ConvAE+MI+RS+SN"):
    paper = table4[variant]
    assert rows[variant, "fashion-mnist-test"]["paper ACC / NMI"] == (
        f"{paper['acc']:.3f} / {paper['nmi']:.3f} (70k) [DSCDAN T4]")
    assert rows[variant, "digits"]["paper ACC / NMI"] == "—"
  assert rows["ConvAE+MI+RS+SN", "fashion-mnist-test"]["seeds"] == "not run"
  assert "[DSCDAN T4] " + ablation.ABLATION_SOURCES["DSCDAN T4"] in out


def test_throughput_error_summary_keeps_the_line_an_introduction_announces():
  """A failing mode's record names the error: the second line where the first only
  introduces it (torch.compile's ``backend='inductor' raised:``), else the first."""
  summary = load_script("throughput").error_summary
  assert summary(RuntimeError("backend='inductor' raised:\nCppCompileError: no compiler\n\ntrace")) == (
      "RuntimeError: backend='inductor' raised: CppCompileError: no compiler")
  assert summary(ValueError("bad shape\nmore detail")) == "ValueError: bad shape"
  assert summary(KeyError()) == "KeyError: "
