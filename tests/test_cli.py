"""bin/train end to end: outputs, resume, and one clear line for each bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxclust import algos, cli, data, metrics
from tests.helpers import TINY, pattern_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ARGS = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v!r}")]


@pytest.fixture(scope="module")
def npz_dataset(tmp_path_factory):
  x, y = pattern_images()
  path = tmp_path_factory.mktemp("data") / "patterns.npz"
  np.savez(path, x=(x * 255).astype(np.uint8), y=y)
  return path, y


def run_cli(*args):
  """Runs main() in-process; returns (exit code, stderr lines)."""
  return cli.main([*args])


@pytest.fixture(scope="module")
def finished_run(npz_dataset, tmp_path_factory):
  path, y = npz_dataset
  workdir = tmp_path_factory.mktemp("run")
  assert run_cli("--algo", "depict", "--dataset", f"npz:{path}", "--workdir", str(workdir), "--quiet",
                 *TINY_ARGS) == 0
  return workdir, y


def test_outputs(finished_run):
  workdir, y = finished_run
  assignments = np.load(workdir / "assignments.npy")
  assert assignments.shape == y.shape and np.issubdtype(assignments.dtype, np.integer)
  assert set(np.unique(assignments)) <= set(range(4))
  rows = (workdir / "assignments.csv").read_text().splitlines()
  assert rows[0] == "index,cluster,label"
  np.testing.assert_array_equal([int(r.split(",")[1]) for r in rows[1:]], assignments)
  soft = np.load(workdir / "soft_assignments.npy")
  np.testing.assert_array_equal(soft.argmax(axis=1), assignments)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["n"] == len(y) and summary["n_clusters"] == 4 and summary["seconds"] > 0
  assert summary["acc"] == pytest.approx(metrics.acc(y, assignments))
  assert summary["nmi"] == pytest.approx(metrics.nmi(y, assignments))
  assert summary["ari"] == pytest.approx(metrics.ari(y, assignments))
  config = json.loads((workdir / "config.json").read_text())
  assert config["algo"] == "depict" and config["warmup_epochs"] == TINY["warmup_epochs"]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in records if r["phase"] == "round"] == list(range(1, TINY["max_rounds"] + 1))


def test_rerun_resumes_and_keeps_the_assignments(finished_run, npz_dataset):
  workdir, _ = finished_run
  path, _ = npz_dataset
  before = np.load(workdir / "assignments.npy")
  # max_rounds may grow between a run and its resumption; the finished rounds are not redone.
  args = [a if a != f"max_rounds={TINY['max_rounds']!r}" else "max_rounds=4" for a in TINY_ARGS]
  assert run_cli("--dataset", f"npz:{path}", "--workdir", str(workdir), "--quiet", *args) == 0
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["round"] for r in records if r["phase"] == "round"] == [1, 2, 3, 4]
  assert np.load(workdir / "assignments.npy").shape == before.shape


def expect_error(capsys, args, pattern):
  code = run_cli(*args)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert err[-1].startswith("error: ") and pattern in err[-1], err
  return err[-1]


def test_unknown_algorithm(capsys):
  expect_error(capsys, ["--algo", "nope"], "unknown algorithm 'nope'")


def test_unknown_dataset(capsys, tmp_path):
  expect_error(capsys, ["--dataset", "imagenet", "--workdir", str(tmp_path)], "imagenet")


def test_missing_files(capsys, tmp_path):
  expect_error(capsys, ["--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--workdir", str(tmp_path)],
               "train-images-idx3-ubyte")


def test_nan_in_data(capsys, tmp_path):
  x, y = pattern_images()
  x[3, 2, 2] = np.nan
  np.savez(tmp_path / "bad.npz", x=x, y=y)
  expect_error(capsys, ["--dataset", f"npz:{tmp_path / 'bad.npz'}", "--workdir", str(tmp_path / "w")], "NaN")


def test_wrong_shape(capsys, tmp_path):
  np.savez(tmp_path / "flat.npz", x=np.zeros((10, 64), np.float32))
  expect_error(capsys, ["--dataset", f"npz:{tmp_path / 'flat.npz'}", "--workdir", str(tmp_path / "w")], "shape")


@pytest.mark.parametrize("k", ["1", "100000"])
def test_bad_n_clusters(capsys, tmp_path, npz_dataset, k):
  path, _ = npz_dataset
  expect_error(capsys, ["--dataset", f"npz:{path}", "--n-clusters", k, "--workdir", str(tmp_path)],
               "n_clusters must be between 2 and the number of samples (100)")


def test_unknown_config_key(capsys, tmp_path):
  expect_error(capsys, ["--set", "warmup=3", "--workdir", str(tmp_path)], "unknown config key 'warmup'")


def test_bad_config_value(capsys, tmp_path):
  expect_error(capsys, ["--set", "warmup_epochs=many", "--workdir", str(tmp_path)], "warmup_epochs expects")


def test_unwritable_workdir(capsys, tmp_path, npz_dataset):
  path, _ = npz_dataset
  blocker = tmp_path / "a-file"
  blocker.write_text("")
  expect_error(capsys, ["--dataset", f"npz:{path}", "--workdir", str(blocker / "sub")], "is not writable")


def test_workdir_of_another_config(capsys, finished_run, npz_dataset):
  workdir, _ = finished_run
  path, _ = npz_dataset
  config_before = (workdir / "config.json").read_text()
  args = [a if not a.startswith("learning_rate=") else "learning_rate=0.5" for a in TINY_ARGS]
  message = expect_error(capsys, ["--dataset", f"npz:{path}", "--workdir", str(workdir), *args],
                         "holds a checkpoint of another config")
  assert "learning_rate" in message
  assert (workdir / "config.json").read_text() == config_before  # nothing already written is lost


def test_help_lists_config_keys():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "train"), "--algo", "depict", "--help"],
                       capture_output=True, text=True, check=True).stdout
  assert "warmup_epochs = 30" in out and "target_form = 'paper'" in out


@pytest.mark.parametrize("algo", ["dec", "idec"])
def test_student_t_algorithms_end_to_end(algo, npz_dataset, tmp_path):
  path, y = npz_dataset
  small = {"hidden_dims": (32, 32, 64), "embedding_dim": 4, "batch_size": 32, "warmup_epochs": 3,
           "steps_per_round": 5, "max_rounds": 2, "kmeans_n_init": 2}
  args = [arg for k, v in small.items() for arg in ("--set", f"{k}={v!r}")]
  assert run_cli("--algo", algo, "--dataset", f"npz:{path}", "--workdir", str(tmp_path), "--quiet", *args) == 0
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["algo"] == algo and summary["n"] == len(y)
  assert summary["acc"] == pytest.approx(metrics.acc(y, np.load(tmp_path / "assignments.npy")))
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["steps_per_round"] == 5 and config["optimizer"] == ("sgd" if algo == "dec" else "adam")


def test_help_lists_each_algorithms_keys():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "train"), "--algo", "idec", "--help"],
                       capture_output=True, text=True, check=True).stdout
  assert "clustering_weight = 0.1" in out and "hidden_dims = (500, 500, 2000)" in out
  example = out.strip().splitlines()[-1]
  assert example.startswith("example: bin/train --algo idec ")
  key = example.split("--set ")[1].split("=")[0]
  assert f"  {key} = " in out  # the example overrides one of idec's own keys


def test_pretrained_flag_starts_from_an_earlier_runs_warmup(finished_run, npz_dataset, tmp_path, capsys):
  source, _ = finished_run
  path, _ = npz_dataset
  workdir = tmp_path / "again"
  assert run_cli("--dataset", f"npz:{path}", "--workdir", str(workdir), "--quiet", "--pretrained", str(source),
                 *TINY_ARGS) == 0
  phases = [json.loads(line)["phase"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert "warmup" not in phases and phases[:2] == ["pretrained", "init"]
  assert json.loads((workdir / "config.json").read_text())["pretrained"] == str(source)
  expect_error(capsys, ["--dataset", f"npz:{path}", "--workdir", str(tmp_path / "other"),
                        "--pretrained", str(tmp_path / "nowhere"), *TINY_ARGS], "pretrained:")


# The public datasets' sizes (all splits together unless the name says test).
DATASET_SIZES = {"digits": 1797, "mnist": 70000, "mnist-test": 10000, "fashion-mnist": 70000,
                 "fashion-mnist-test": 10000, "usps": 9298, "frgc": 2462, "ytf": 10000, "cmu-pie": 2856}


@pytest.mark.parametrize("algo", sorted(algos.REGISTRY))
def test_every_per_dataset_setting_is_a_valid_config_at_that_datasets_size(algo):
  module = algos.REGISTRY[algo]
  for name in module.DATASET_SETTINGS:
    assert name in DATASET_SIZES, f"{algo}: no size known for {name}"
    config = module.Config(**module.dataset_settings(name, (28, 28, 1)))
    config.validate(DATASET_SIZES[name])


def test_the_depict_settings_of_a_dataset_reach_its_config_and_the_command_line_wins():
  module = algos.REGISTRY["depict"]
  x = np.zeros((12, 28, 28, 1), np.float32)
  small = data.Dataset(x=x, y=None, name="fashion-mnist-test")
  config = cli.build_config(module, small, {})
  assert (config.init_clustering, config.learning_rate, config.warmup_learning_rate) == ("ward", 1e-4, 1e-3)
  assert config.target_form == "paper"
  assert cli.build_config(module, small, {"init_clustering": "kmeans"}).init_clustering == "kmeans"
  full = cli.build_config(module, data.Dataset(x=x, y=None, name="fashion-mnist"), {})
  assert (full.init_clustering, full.learning_rate) == ("kmeans", module.Config().learning_rate)


@pytest.mark.parametrize("algo", ["depict", "dscdan"])
def test_a_runs_config_json_rebuilds_its_config_with_overrides_on_top(tmp_path, algo):
  module = algos.REGISTRY[algo]
  small = data.Dataset(x=np.zeros((12, 8, 8, 1), np.float32), y=None, name="digits")
  config = cli.build_config(module, small, {"seed": 4, "batch_size": 6})
  path = tmp_path / "config.json"
  path.write_text(json.dumps(cli._config_record(algo, "digits", "all", config)))  # tuples become lists
  record = json.loads(path.read_text())
  rebuilt_module, rebuilt = cli.config_from_record(record, small)
  assert rebuilt_module is module and rebuilt == config
  _, changed = cli.config_from_record(record, small, {"seed": 5})
  assert changed == dataclasses.replace(config, seed=5)
