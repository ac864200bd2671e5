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
