"""Tests of the dataset registry and loaders in jaxclust.data."""

import gzip
import os
import struct
import sys

import h5py
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from jaxclust import data
from jaxclust.errors import DataError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
  monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)


def _idx_bytes(array: np.ndarray) -> bytes:
  """Encodes a uint8 array as IDX: 0, 0, type 0x08, ndim, big-endian dims, payload."""
  array = np.ascontiguousarray(array, dtype=np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.tobytes()


def _write_idx(path, array: np.ndarray, gz: bool) -> str:
  payload = _idx_bytes(array)
  path = os.fspath(path) + (".gz" if gz else "")
  with open(path, "wb") as f:
    f.write(gzip.compress(payload) if gz else payload)
  return path


def _write_idx_split(directory, prefix: str, images: np.ndarray, labels: np.ndarray,
                     gz: bool) -> None:
  _write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz)
  _write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz)


def _unit(raw: np.ndarray) -> np.ndarray:
  """The expected [-1, 1] scaling of 0..255 pixel values, computed in float64."""
  return raw.astype(np.float64) / 127.5 - 1.0


# ----------------------------------------------------------------------------------------
# IDX files.


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
  images[0, 0, 0], images[0, 0, 1] = 0, 255  # Hit both ends of the range.
  labels = rng.integers(0, 10, size=5, dtype=np.uint8)
  img_path = _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz)
  lbl_path = _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz)

  np.testing.assert_array_equal(data.read_idx(img_path), images)
  np.testing.assert_array_equal(data.read_idx(lbl_path), labels)

  ds = data.load_dataset("mnist-test", data_dir=str(tmp_path))
  assert ds.x.dtype == np.float32 and ds.x.shape == (5, 4, 3, 1)
  np.testing.assert_allclose(ds.x[..., 0], _unit(images), atol=1e-6)
  assert ds.x.min() == -1.0 and ds.x.max() == 1.0
  assert ds.y.dtype == np.int32
  np.testing.assert_array_equal(ds.y, labels.astype(np.int64))


def test_idx_truncated_payload(tmp_path):
  payload = _idx_bytes(np.zeros((3, 4, 4), np.uint8))[:-5]
  path = tmp_path / "x-idx3-ubyte"
  path.write_bytes(payload)
  with pytest.raises(DataError, match="truncated"):
    data.read_idx(path)


def test_idx_truncated_gzip(tmp_path):
  compressed = gzip.compress(_idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10)))
  path = tmp_path / "x-idx3-ubyte.gz"
  path.write_bytes(compressed[: len(compressed) // 2])
  with pytest.raises(DataError, match="corrupt or truncated"):
    data.read_idx(path)


def test_idx_bad_magic(tmp_path):
  path = tmp_path / "x-idx3-ubyte"
  path.write_bytes(struct.pack(">I", 0x00000D03) + struct.pack(">3I", 1, 2, 2) + b"\0" * 16)
  with pytest.raises(DataError, match="magic number 0x00000d03"):
    data.read_idx(path)


def test_idx_trailing_bytes(tmp_path):
  path = tmp_path / "x-idx1-ubyte"
  path.write_bytes(_idx_bytes(np.arange(4, dtype=np.uint8)) + b"\0\0")
  with pytest.raises(DataError, match="corrupt"):
    data.read_idx(path)


def test_idx_image_label_count_mismatch(tmp_path):
  _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8), True)
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8), True)
  with pytest.raises(DataError, match="3 images but 2 labels"):
    data.load_dataset("mnist-test", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------
# Fashion-MNIST and MNIST.


@pytest.fixture
def small_fashion(tmp_path):
  rng = np.random.default_rng(1)
  train_x = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
  train_y = np.array([0, 1, 2, 3, 4, 5], np.uint8)
  test_x = rng.integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
  test_y = np.array([9, 8, 7, 6], np.uint8)
  _write_idx_split(tmp_path, "train", train_x, train_y, gz=True)
  _write_idx_split(tmp_path, "t10k", test_x, test_y, gz=False)
  return tmp_path, (train_x, train_y), (test_x, test_y)


def test_fashion_mnist_splits(small_fashion):
  directory, (train_x, train_y), (test_x, test_y) = small_fashion
  all_ = data.load_dataset("fashion-mnist", data_dir=str(directory))
  train = data.load_dataset("fashion-mnist", data_dir=str(directory), split="train")
  test = data.load_dataset("fashion-mnist", data_dir=str(directory), split="test")
  alias = data.load_dataset("fashion-mnist-test", data_dir=str(directory))

  assert all_.x.shape == (10, 5, 4, 1) and all_.image_shape == (5, 4, 1)
  assert train.n == 6 and test.n == 4 and alias.n == 4
  # "all" is train followed by test.
  np.testing.assert_allclose(
      all_.x[..., 0], _unit(np.concatenate([train_x, test_x])), atol=1e-6)
  np.testing.assert_array_equal(all_.y, np.concatenate([train_y, test_y]))
  np.testing.assert_allclose(train.x[..., 0], _unit(train_x), atol=1e-6)
  np.testing.assert_array_equal(test.y, test_y)
  np.testing.assert_array_equal(alias.x, test.x)
  assert all_.n_classes == 10


def test_fashion_mnist_env_dir(small_fashion, monkeypatch):
  directory, _, (test_x, _) = small_fashion
  parent = directory.parent / "env"
  parent.mkdir()
  os.symlink(directory, parent / "fashion-mnist")
  monkeypatch.setenv(data.DATA_DIR_ENV, str(parent))
  ds = data.load_dataset("fashion-mnist", split="test")
  np.testing.assert_allclose(ds.x[..., 0], _unit(test_x), atol=1e-6)


def test_alias_rejects_other_split(small_fashion):
  directory = small_fashion[0]
  with pytest.raises(DataError, match="test split only"):
    data.load_dataset("fashion-mnist-test", data_dir=str(directory), split="train")


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_test_split():
  ds = data.load_dataset("fashion-mnist-test")
  assert ds.x.shape == (10000, 28, 28, 1) and ds.x.dtype == np.float32
  assert ds.y.shape == (10000,) and ds.y.dtype == np.int32
  # The Fashion-MNIST test set has 1000 images of each of its 10 classes.
  np.testing.assert_array_equal(np.bincount(ds.y), np.full(10, 1000))
  # Independent decoding of the first image: 16-byte header, then 28x28 bytes each.
  with gzip.open(os.path.join(DEBIAN_FASHION_MNIST, "t10k-images-idx3-ubyte.gz")) as f:
    head = f.read(16 + 2 * 28 * 28)
  first = np.frombuffer(head, np.uint8, offset=16).reshape(2, 28, 28)
  np.testing.assert_allclose(ds.x[:2, ..., 0], _unit(first), atol=1e-6)


def test_missing_mnist_dir(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(DataError, match=r"MNIST is not bundled: put train-images-idx3-ubyte"):
    data.load_dataset("mnist", data_dir=str(missing))
  with pytest.raises(DataError, match="nowhere"):
    data.load_dataset("mnist", data_dir=str(missing))
  with pytest.raises(DataError, match="--data-dir"):
    data.load_dataset("mnist")


def test_mnist_test_needs_only_test_files(tmp_path):
  _write_idx_split(tmp_path, "t10k", np.full((2, 3, 3), 255, np.uint8),
                   np.array([1, 2], np.uint8), gz=True)
  assert data.load_dataset("mnist", data_dir=str(tmp_path), split="test").n == 2
  with pytest.raises(DataError, match="train-images-idx3-ubyte"):
    data.load_dataset("mnist", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------
# Digits, USPS, h5, npz, folder.


def test_digits_matches_sklearn():
  ref = load_digits()
  ds = data.load_dataset("digits")
  assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.float32
  np.testing.assert_allclose(ds.x[..., 0], ref.images / 16.0 * 2.0 - 1.0, atol=1e-6)
  np.testing.assert_array_equal(ds.y, ref.target)
  assert ds.y.dtype == np.int32 and ds.n_classes == 10
  assert data.available_datasets()[0] == "digits" == data.DEFAULT_DATASET


def test_digits_has_no_split():
  with pytest.raises(DataError, match="no train/test split"):
    data.load_dataset("digits", split="train")


def _write_usps(path, train, test):
  with h5py.File(path, "w") as f:
    for group, (x, y) in (("train", train), ("test", test)):
      g = f.create_group(group)
      g.create_dataset("data", data=x)
      g.create_dataset("target", data=y)


def test_usps(tmp_path, monkeypatch):
  rng = np.random.default_rng(2)
  train = (rng.uniform(0, 1, size=(3, 256)), np.array([0, 1, 2]))
  test = (rng.uniform(0, 1, size=(2, 256)), np.array([3, 4]))
  (tmp_path / "usps").mkdir()
  _write_usps(tmp_path / "usps" / "usps.h5", train, test)

  ds = data.load_dataset("usps", data_dir=str(tmp_path / "usps"))
  expected = np.concatenate([train[0], test[0]]).reshape(5, 16, 16) * 2.0 - 1.0
  assert ds.x.shape == (5, 16, 16, 1) and ds.x.dtype == np.float32
  np.testing.assert_allclose(ds.x[..., 0], expected, atol=1e-6)
  np.testing.assert_array_equal(ds.y, [0, 1, 2, 3, 4])

  # data_dir may also be the parent folder, and $JAXCLUST_DATA_DIR works the same way.
  assert data.load_dataset("usps", data_dir=str(tmp_path), split="train").n == 3
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  test_ds = data.load_dataset("usps", split="test")
  np.testing.assert_allclose(
      test_ds.x[..., 0], test[0].reshape(2, 16, 16) * 2.0 - 1.0, atol=1e-6)


def test_usps_missing(tmp_path):
  with pytest.raises(DataError, match="USPS is not bundled: put usps.h5"):
    data.load_dataset("usps", data_dir=str(tmp_path))


def test_h5_channels_first(tmp_path):
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, size=(4, 3, 5, 6)).astype(np.float32)
  labels = np.array([[1], [0], [1], [2]])
  path = tmp_path / "data.h5"
  with h5py.File(path, "w") as f:
    f.create_dataset("data", data=x)
    f.create_dataset("labels", data=labels)
  ds = data.load_dataset(f"h5:{path}")
  assert ds.x.shape == (4, 5, 6, 3)
  np.testing.assert_allclose(ds.x, _unit(np.transpose(x, (0, 2, 3, 1))), atol=1e-6)
  np.testing.assert_array_equal(ds.y, labels[:, 0])


def test_h5_without_data(tmp_path):
  path = tmp_path / "data.h5"
  with h5py.File(path, "w") as f:
    f.create_dataset("images", data=np.zeros((2, 1, 3, 3)))
  with pytest.raises(DataError, match="no dataset 'data'"):
    data.load_dataset(f"h5:{path}")


def test_npz_gray_and_colour(tmp_path):
  rng = np.random.default_rng(4)
  gray = rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
  y = np.array([2, 0, 2])
  np.savez(tmp_path / "gray.npz", x=gray, y=y)
  colour = rng.uniform(0, 1, size=(2, 4, 5, 3))
  np.savez(tmp_path / "colour.npz", x=colour)

  ds = data.load_dataset(f"npz:{tmp_path / 'gray.npz'}")
  assert ds.x.shape == (3, 4, 5, 1)
  np.testing.assert_allclose(ds.x[..., 0], _unit(gray), atol=1e-6)
  np.testing.assert_array_equal(ds.y, y)  # Labels are kept as they are, not remapped.
  assert ds.n_classes == 2

  ds = data.load_dataset("npz:colour.npz", data_dir=str(tmp_path))  # Relative to data_dir.
  assert ds.x.shape == (2, 4, 5, 3) and ds.x.dtype == np.float32
  np.testing.assert_allclose(ds.x, colour * 2.0 - 1.0, atol=1e-6)
  assert ds.y is None and ds.n_classes is None


def test_npz_without_x(tmp_path):
  np.savez(tmp_path / "a.npz", images=np.zeros((2, 3, 3)))
  with pytest.raises(DataError, match="no array 'x'.*images"):
    data.load_dataset(f"npz:{tmp_path / 'a.npz'}")


def _save_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def test_folder_two_classes(tmp_path):
  rng = np.random.default_rng(5)
  imgs = {
      ("cat", "a.png"): rng.integers(0, 256, size=(6, 7), dtype=np.uint8),
      ("cat", "b.png"): rng.integers(0, 256, size=(6, 7), dtype=np.uint8),
      ("ant", "z.png"): rng.integers(0, 256, size=(6, 7), dtype=np.uint8),
  }
  for (cls, name), arr in imgs.items():
    _save_png(tmp_path / cls / name, arr)
  (tmp_path / "cat" / "notes.txt").write_text("not an image")

  ds = data.load_dataset(f"folder:{tmp_path}")
  # Classes in sorted order (ant=0, cat=1), files sorted within each class.
  order = [("ant", "z.png"), ("cat", "a.png"), ("cat", "b.png")]
  assert ds.x.shape == (3, 6, 7, 1)
  np.testing.assert_allclose(
      ds.x[..., 0], _unit(np.stack([imgs[k] for k in order])), atol=1e-6)
  np.testing.assert_array_equal(ds.y, [0, 1, 1])


def test_folder_mixed_gray_and_colour(tmp_path):
  gray = np.full((4, 4), 200, np.uint8)
  colour = np.zeros((4, 4, 3), np.uint8)
  colour[..., 0] = 255
  _save_png(tmp_path / "a" / "g.png", gray)
  _save_png(tmp_path / "b" / "c.png", colour)
  ds = data.load_dataset(f"folder:{tmp_path}")
  assert ds.x.shape == (2, 4, 4, 3)
  expected_gray = np.asarray(Image.fromarray(gray).convert("RGB"))
  np.testing.assert_allclose(ds.x[0], _unit(expected_gray), atol=1e-6)
  np.testing.assert_allclose(ds.x[1], _unit(colour), atol=1e-6)


def test_folder_mixed_sizes(tmp_path):
  _save_png(tmp_path / "a" / "1.png", np.zeros((4, 4), np.uint8))
  _save_png(tmp_path / "b" / "2.png", np.zeros((5, 4), np.uint8))
  with pytest.raises(DataError, match=r"2\.png.*4x5.*1\.png.*4x4"):
    data.load_dataset(f"folder:{tmp_path}")


# ----------------------------------------------------------------------------------------
# Scaling, validation and user errors.


@pytest.mark.parametrize("raw, expected", [
    (np.array([0, 51, 255], np.uint8), np.array([-1.0, 51 / 127.5 - 1, 1.0])),
    (np.array([0, 100, 255], np.int64), np.array([-1.0, 100 / 127.5 - 1, 1.0])),
    (np.array([0.0, 0.25, 1.0]), np.array([-1.0, -0.5, 1.0])),
    (np.array([-0.5, 0.0, 0.75]), np.array([-0.5, 0.0, 0.75])),
    (np.array([0.0, 2.0, 255.0], np.float32), np.array([-1.0, 2 / 127.5 - 1, 1.0])),
])
def test_scale_to_unit_range(raw, expected):
  out = data.scale_to_unit_range(raw)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("raw, match", [
    (np.array([-3.0, 0.5]), r"range over \[-3, 0.5\]"),
    (np.array([0.0, 300.0]), r"range over \[0, 300\]"),
    (np.array([0, 1000], np.int32), r"range over \[0, 1000\]"),
])
def test_scale_out_of_range(raw, match):
  with pytest.raises(DataError, match=match):
    data.scale_to_unit_range(raw)


def test_validate_nan_and_inf():
  x = np.zeros((2, 3, 3, 1), np.float32)
  x[0, 0, 0, 0] = np.nan
  x[1, 1, 1, 0] = np.nan
  x[1, 2, 2, 0] = np.inf
  with pytest.raises(DataError, match=r"3 non-finite values \(2 NaN, 1 inf\)"):
    data.validate_images(x, source="test data")


@pytest.mark.parametrize("x, y, match", [
    (np.zeros((2, 3)), None, r"shape \(2, 3\), expected \[N, H, W\] or \[N, H, W, C\]"),
    (np.zeros((1, 2, 3, 4, 5)), None, r"shape \(1, 2, 3, 4, 5\)"),
    (np.zeros((0, 3, 3, 1)), None, "no images"),
    (np.zeros((2, 3, 3, 5)), None, "5 channels"),
    (np.zeros((2, 3, 3), np.float32), np.array([1, 2, 3]), "3 labels for 2 images"),
    (np.zeros((2, 3, 3), np.float32), np.array([1.0, 2.5]), "not integer-valued"),
    (np.zeros((2, 3, 3), np.float32), np.array(["a", "b"]), "labels have dtype"),
])
def test_validate_rejects(x, y, match):
  with pytest.raises(DataError, match=match):
    data.validate_images(x, y, source="test data")


def test_validate_accepts_whole_float_labels():
  data.validate_images(np.zeros((2, 3, 3, 1)), np.array([1.0, 4.0]), source="test data")


def test_loader_reports_bad_values(tmp_path):
  x = np.zeros((3, 4, 4), np.float32)
  x[1, 2, 3] = np.inf
  np.savez(tmp_path / "bad.npz", x=x)
  with pytest.raises(DataError, match=r"bad\.npz.*1 non-finite values \(0 NaN, 1 inf\)"):
    data.load_dataset(f"npz:{tmp_path / 'bad.npz'}")
  np.savez(tmp_path / "short.npz", x=np.zeros((3, 4, 4)), y=np.array([0, 1]))
  with pytest.raises(DataError, match="2 labels for 3 images"):
    data.load_dataset(f"npz:{tmp_path / 'short.npz'}")


def test_unknown_dataset_lists_names():
  with pytest.raises(DataError, match=r"Unknown dataset 'cifar'.*digits.*fashion-mnist.*"
                     r"npz:PATH.*h5:PATH.*folder:PATH.*tfds:NAME"):
    data.load_dataset("cifar")


def test_unknown_split(small_fashion):
  with pytest.raises(DataError, match="Unknown split 'valid'.*all, train, test"):
    data.load_dataset("fashion-mnist", data_dir=str(small_fashion[0]), split="valid")


def test_missing_path(tmp_path):
  missing = tmp_path / "missing.npz"
  with pytest.raises(DataError, match=r"missing\.npz.*does not exist"):
    data.load_dataset(f"npz:{missing}")
  with pytest.raises(DataError, match="does not exist"):
    data.load_dataset(f"folder:{tmp_path / 'no_folder'}")


def test_missing_tfds_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # Makes the import fail.
  with pytest.raises(DataError, match=r"pip install 'jaxclust\[tfds\]'"):
    data.load_dataset("tfds:mnist")


def test_dataset_checks_its_arrays():
  with pytest.raises(DataError, match="float32 images"):
    data.Dataset(x=np.zeros((2, 3, 3, 1)), y=None, name="x")
  with pytest.raises(DataError, match="int32 labels"):
    data.Dataset(x=np.zeros((2, 3, 3, 1), np.float32), y=np.zeros(3, np.int32), name="x")
