"""The data tools of the benchmark scripts: the imbalanced-subset protocol of paper 003."""

import importlib.util
import os

import numpy as np

from jaxclust import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
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
