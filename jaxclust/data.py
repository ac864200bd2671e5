"""Dataset registry and loaders.

Every loader returns a :class:`Dataset` whose images are float32 arrays of shape
``[N, H, W, C]`` scaled to ``[-1, 1]`` and whose labels (when known) are int32 arrays of
shape ``[N]``. Datasets are named either by a registry name (``digits``, ``mnist``,
``fashion-mnist``, ``usps``, ...) or by a prefix form that points at a file or folder:

* ``npz:PATH``: a NumPy ``.npz`` archive with ``x`` (``[N, H, W]`` or ``[N, H, W, C]``) and
  optionally ``y`` (``[N]``).
* ``h5:PATH``: a DEPICT/JULE style ``data.h5`` with ``data`` (``[N, C, H, W]``, values
  0..255) and optionally ``labels`` (``[N]`` or ``[N, 1]``).
* ``folder:PATH``: one subfolder per class holding image files of one common size.
* ``tfds:NAME``: a prepared TensorFlow Datasets dataset (needs the ``tfds`` extra).

Anything that makes a dataset unusable (a missing file, a corrupt file, NaN pixels, labels
that do not match the images) raises :class:`jaxclust.errors.DataError` with one sentence
that names the problem.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxclust.errors import DataError

DEFAULT_DATASET = "digits"
"""The dataset loaded when none is named."""

SPLITS = ("all", "train", "test")
"""The split names the registry datasets understand."""

PREFIXES = ("npz", "h5", "folder", "tfds")
"""The prefix forms of a dataset spec, as in ``npz:PATH``."""

DATA_DIR_ENV = "JAXCLUST_DATA_DIR"
"""Environment variable naming a folder with one subfolder per downloaded dataset."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff")
"""File extensions (lower case) that ``folder:PATH`` reads as images."""

_IDX_TYPE_UINT8 = 0x08
_IDX_LABELS_MAGIC = 0x00000801
_IDX_IMAGES_MAGIC = 0x00000803
_GZIP_MAGIC = b"\x1f\x8b"

# Pillow modes whose pixels carry a single intensity (possibly with alpha).
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Images scaled to ``[-1, 1]`` with optional class labels.

  Attributes:
    x: float32 images of shape ``[N, H, W, C]`` with values in ``[-1, 1]``.
    y: int32 class labels of shape ``[N]``, or ``None`` when the data is unlabelled.
    name: a short human-readable name of the data (registry name or spec).
  """

  x: np.ndarray
  y: np.ndarray | None
  name: str

  def __post_init__(self):
    if not isinstance(self.x, np.ndarray) or self.x.ndim != 4 or self.x.dtype != np.float32:
      raise DataError(
          f"Dataset {self.name!r} needs float32 images of shape [N, H, W, C], got "
          f"{_describe_array(self.x)}.")
    if self.y is not None:
      if (not isinstance(self.y, np.ndarray) or self.y.dtype != np.int32
          or self.y.shape != (self.x.shape[0],)):
        raise DataError(
            f"Dataset {self.name!r} needs int32 labels of shape [{self.x.shape[0]}], got "
            f"{_describe_array(self.y)}.")

  @property
  def n(self) -> int:
    """Number of images ``N``."""
    return int(self.x.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """Shape ``(H, W, C)`` of one image."""
    h, w, c = self.x.shape[1:]
    return int(h), int(w), int(c)

  @property
  def n_classes(self) -> int | None:
    """Number of distinct labels, or ``None`` when the data is unlabelled."""
    if self.y is None:
      return None
    return int(np.unique(self.y).size)


def _describe_array(a: Any) -> str:
  if isinstance(a, np.ndarray):
    return f"an array of shape {a.shape} and dtype {a.dtype}"
  return f"an object of type {type(a).__name__}"


# ----------------------------------------------------------------------------------------
# Validation and scaling.


def validate_images(x: np.ndarray, y: np.ndarray | None = None, *, source: str) -> None:
  """Checks that an image array (and its labels) can be used for clustering.

  Args:
    x: images of shape ``[N, H, W]`` or ``[N, H, W, C]`` with ``C`` in 1..4; any integer,
      boolean or floating dtype.
    y: optional labels of shape ``[N]`` holding integer values (an integer dtype, or a
      float dtype whose values are all whole numbers).
    source: where the data came from, e.g. ``"npz file 'a.npz'"``; starts each message.

  Raises:
    DataError: with one sentence naming the problem: a wrong number of dimensions, no
      samples, an empty image side, a channel count outside 1..4, a non-numeric dtype, NaN
      or inf values, labels of a different length than the images, or labels that are
      not integer-valued.
  """
  x = np.asarray(x)
  if x.ndim not in (3, 4):
    raise DataError(
        f"{source}: images have shape {x.shape}, expected [N, H, W] or [N, H, W, C] "
        "with C in 1..4.")
  if x.shape[0] == 0:
    raise DataError(f"{source}: holds no images (shape {x.shape}).")
  if x.shape[1] == 0 or x.shape[2] == 0:
    raise DataError(f"{source}: images have an empty side (shape {x.shape}).")
  if x.ndim == 4 and not 1 <= x.shape[3] <= 4:
    raise DataError(
        f"{source}: images have {x.shape[3]} channels (shape {x.shape}), expected 1 to 4 "
        "channels last as in [N, H, W, C].")
  if x.dtype.kind not in "biuf":
    raise DataError(
        f"{source}: images have dtype {x.dtype}, expected integers or floats.")
  if x.dtype.kind == "f":
    n_nan = int(np.count_nonzero(np.isnan(x)))
    n_inf = int(np.count_nonzero(np.isinf(x)))
    if n_nan or n_inf:
      raise DataError(
          f"{source}: images contain {n_nan + n_inf} non-finite values "
          f"({n_nan} NaN, {n_inf} inf).")
  if y is None:
    return
  y = np.asarray(y)
  if y.ndim != 1:
    raise DataError(f"{source}: labels have shape {y.shape}, expected [N].")
  if y.shape[0] != x.shape[0]:
    raise DataError(
        f"{source}: has {y.shape[0]} labels for {x.shape[0]} images; expected one label "
        "per image.")
  if y.dtype.kind not in "biuf":
    raise DataError(
        f"{source}: labels have dtype {y.dtype}, expected integer class labels.")
  if y.dtype.kind == "f":
    bad = ~np.isfinite(y) | (y != np.round(y))
    if np.any(bad):
      first = y[np.argmax(bad)]
      raise DataError(
          f"{source}: labels are not integer-valued ({int(bad.sum())} of {y.size} are not "
          f"whole numbers, e.g. {first!r}).")
  if y.size:
    lo, hi = y.min(), y.max()
    info = np.iinfo(np.int32)
    if lo < info.min or hi > info.max:
      raise DataError(
          f"{source}: labels range over [{lo}, {hi}], which does not fit in int32.")


def scale_to_unit_range(x: np.ndarray) -> np.ndarray:
  """Scales pixel values to ``[-1, 1]``, inferring the input range from dtype and values.

  The rules are, in order:

  * integer (or boolean) data in ``[0, 255]``: ``x / 127.5 - 1``;
  * float data within ``[0, 1]``: ``2 x - 1``;
  * float data within ``[-1, 1]`` holding negative values: unchanged;
  * float data within ``[0, 255]``: ``x / 127.5 - 1``.

  Args:
    x: an array of any shape with an integer, boolean or floating dtype.

  Returns:
    A new float32 array of the shape of ``x`` with values in ``[-1, 1]``.

  Raises:
    DataError: when the values fit none of the rules (the message gives the range found)
      or are not finite.
  """
  x = np.asarray(x)
  if x.dtype.kind == "b":
    x = x.astype(np.float32)
  if x.dtype.kind not in "iuf":
    raise DataError(f"Cannot scale pixel values of dtype {x.dtype}; expected numbers.")
  if x.size == 0:
    return x.astype(np.float32)
  if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
    raise DataError("Cannot scale pixel values that contain NaN or inf.")
  lo, hi = x.min(), x.max()
  if x.dtype.kind in "iu":
    if lo < 0 or hi > 255:
      raise DataError(
          f"Integer pixel values range over [{lo}, {hi}], expected [0, 255].")
    out = x.astype(np.float32)
    out /= np.float32(127.5)
    out -= np.float32(1.0)
    return out
  if lo >= 0 and hi <= 1:
    out = x.astype(np.float32)
    out *= np.float32(2.0)
    out -= np.float32(1.0)
    return out
  if lo >= -1 and hi <= 1:
    return np.array(x, dtype=np.float32)
  if lo >= 0 and hi <= 255:
    out = x.astype(np.float32)
    out /= np.float32(127.5)
    out -= np.float32(1.0)
    return out
  raise DataError(
      f"Float pixel values range over [{float(lo):g}, {float(hi):g}], expected [0, 1], "
      "[-1, 1] or [0, 255].")


def _as_labels(y: Any) -> np.ndarray:
  """Turns ``[N]`` or ``[N, 1]`` labels into a 1-D array (values unchanged)."""
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  return y


def _make_dataset(x: np.ndarray, y: np.ndarray | None, *, name: str,
                  source: str) -> Dataset:
  """Validates raw images and labels and packs them, scaled, into a :class:`Dataset`."""
  x = np.asarray(x)
  if y is not None:
    y = _as_labels(y)
  validate_images(x, y, source=source)
  if x.ndim == 3:
    x = x[..., None]
  try:
    scaled = scale_to_unit_range(x)
  except DataError as e:
    raise DataError(f"{source}: {e}") from None
  labels = None if y is None else np.asarray(y).astype(np.int32)
  return Dataset(x=scaled, y=labels, name=name)


# ----------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST).


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file of unsigned bytes, gzipped or not.

  The IDX header is two zero bytes, a type code (``0x08``: unsigned byte), the number of
  dimensions ``D``, then ``D`` big-endian uint32 sizes; the payload is the array in C
  order. Label files have magic number ``0x00000801`` and image files ``0x00000803``.

  Args:
    path: the file; it is decompressed when it starts with the gzip magic bytes.

  Returns:
    A uint8 array whose shape is given by the header, e.g. ``[N]`` or ``[N, H, W]``.

  Raises:
    DataError: when the file is unreadable, truncated, longer than its header says, or
      its header is not that of an unsigned-byte IDX file.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
      raw = gzip.decompress(raw)
  except FileNotFoundError:
    raise DataError(f"IDX file {path!r} does not exist.") from None
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"IDX file {path!r} is corrupt or truncated: {e}.") from None
  if len(raw) < 4:
    raise DataError(f"IDX file {path!r} is truncated: it holds {len(raw)} bytes, "
                    "fewer than the 4-byte magic number.")
  zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
  magic = struct.unpack(">I", raw[:4])[0]
  if zero0 != 0 or zero1 != 0 or type_code != _IDX_TYPE_UINT8 or not 1 <= ndim <= 4:
    raise DataError(
        f"IDX file {path!r} has magic number 0x{magic:08x}, expected an unsigned-byte IDX "
        f"file (0x{_IDX_LABELS_MAGIC:08x} for labels, 0x{_IDX_IMAGES_MAGIC:08x} for "
        "images).")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"IDX file {path!r} is truncated inside its header.")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  expected = int(np.prod(dims, dtype=np.int64))
  found = len(raw) - header
  if found != expected:
    what = "truncated" if found < expected else "corrupt"
    raise DataError(
        f"IDX file {path!r} is {what}: its header gives shape {tuple(dims)} "
        f"({expected} bytes of data) but it holds {found}.")
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@dataclasses.dataclass(frozen=True)
class _IdxSource:
  """Where an MNIST-style dataset lives and how to tell users to get it."""
  title: str
  subdir: str
  url: str
  default_dir: str | None = None


_MNIST = _IdxSource("MNIST", "mnist", "http://yann.lecun.com/exdb/mnist/")
_FASHION_MNIST = _IdxSource(
    "Fashion-MNIST", "fashion-mnist",
    "https://github.com/zalandoresearch/fashion-mnist or the Debian package "
    "dataset-fashion-mnist",
    default_dir="/usr/share/datasets/fashion-mnist")

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _candidate_dirs(subdir: str, data_dir: str | None, default_dir: str | None) -> list[str]:
  """Folders to search for a dataset, most specific first."""
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
    return [data_dir, os.path.join(data_dir, subdir)]
  dirs = []
  env = os.environ.get(DATA_DIR_ENV)
  if env:
    dirs.append(os.path.join(os.path.expanduser(env), subdir))
  if default_dir is not None:
    dirs.append(default_dir)
  return dirs


def _where(dirs: list[str], data_dir: str | None, subdir: str) -> str:
  """Tells where the files of a registry dataset were looked for, for error messages."""
  if data_dir is not None:
    return f"in {dirs[0]!r} (or its subfolder {subdir!r})"
  if dirs:
    return f"in {' or '.join(repr(d) for d in dirs)} or pass --data-dir"
  return (f"in a folder and pass --data-dir, or in ${DATA_DIR_ENV}/{subdir} "
          f"(${DATA_DIR_ENV} is not set)")


def _find_file(directory: str, base: str) -> str | None:
  for name in (base, base + ".gz"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def _load_idx_dataset(src: _IdxSource, name: str, data_dir: str | None, split: str,
                      fixed_split: str | None = None) -> Dataset:
  split = _resolve_split(name, split, fixed_split)
  parts = ["train", "test"] if split == "all" else [split]
  bases = [b for part in parts for b in _IDX_FILES[part]]
  dirs = _candidate_dirs(src.subdir, data_dir, src.default_dir)
  for directory in dirs:
    paths = [_find_file(directory, b) for b in bases]
    if all(p is not None for p in paths):
      break
  else:
    files = ", ".join(b + ".gz" for b in bases)
    raise DataError(
        f"{src.title} is not bundled: put {files} (gzipped or not; from {src.url}) "
        f"{_where(dirs, data_dir, src.subdir)}.")
  xs, ys = [], []
  for i in range(0, len(paths), 2):
    images, labels = read_idx(paths[i]), read_idx(paths[i + 1])
    if images.ndim != 3:
      raise DataError(
          f"IDX file {paths[i]!r} has shape {images.shape}, expected images [N, H, W].")
    if labels.ndim != 1:
      raise DataError(
          f"IDX file {paths[i + 1]!r} has shape {labels.shape}, expected labels [N].")
    if labels.shape[0] != images.shape[0]:
      raise DataError(
          f"IDX files {paths[i]!r} and {paths[i + 1]!r} hold {images.shape[0]} images "
          f"but {labels.shape[0]} labels.")
    xs.append(images)
    ys.append(labels)
  if len({a.shape[1:] for a in xs}) > 1:
    raise DataError(
        f"{src.title} train and test images differ in size: "
        f"{xs[0].shape[1:]} and {xs[1].shape[1:]}.")
  x = xs[0] if len(xs) == 1 else np.concatenate(xs, axis=0)
  y = ys[0] if len(ys) == 1 else np.concatenate(ys, axis=0)
  return _make_dataset(x, y, name=_split_name(name, split),
                       source=f"{src.title} ({os.path.dirname(paths[0])})")


# ----------------------------------------------------------------------------------------
# Registry datasets.


def _resolve_split(name: str, split: str, fixed_split: str | None = None) -> str:
  """Checks ``split`` against ``SPLITS`` (and an alias's own split) and returns it."""
  if split not in SPLITS:
    raise DataError(
        f"Unknown split {split!r} for dataset {name!r}; expected one of "
        f"{', '.join(SPLITS)}.")
  if fixed_split is None:
    return split
  if split not in ("all", fixed_split):
    raise DataError(
        f"Dataset {name!r} is the {fixed_split} split only; split {split!r} is not "
        f"available (use split 'all' or {fixed_split!r}).")
  return fixed_split


def _split_name(name: str, split: str) -> str:
  if split == "all" or name.endswith("-" + split):
    return name
  return f"{name}-{split}"


def _no_split(name: str, split: str) -> None:
  _resolve_split(name, split)
  if split != "all":
    raise DataError(
        f"Dataset {name!r} has no train/test split; split {split!r} is not available "
        "(use split 'all').")


def _load_digits(name: str, data_dir: str | None, split: str) -> Dataset:
  """scikit-learn's 8x8 digits: 1797 images with values 0..16."""
  del data_dir  # Bundled with scikit-learn.
  _no_split(name, split)
  from sklearn.datasets import load_digits
  digits = load_digits()
  x = np.asarray(digits.images, dtype=np.float64) / 16.0
  return _make_dataset(x, digits.target, name=name, source="scikit-learn digits")


_USPS_URL = "https://www.kaggle.com/datasets/bistaumanga/usps-dataset"


def _load_usps(name: str, data_dir: str | None, split: str) -> Dataset:
  """USPS 16x16 digits from the common ``usps.h5`` layout."""
  split = _resolve_split(name, split)
  import h5py
  dirs = _candidate_dirs("usps", data_dir, None)
  path = None
  if data_dir is not None and os.path.isfile(os.path.expanduser(os.fspath(data_dir))):
    path = os.path.expanduser(os.fspath(data_dir))
  for directory in dirs:
    if path is not None:
      break
    candidate = os.path.join(directory, "usps.h5")
    if os.path.isfile(candidate):
      path = candidate
  if path is None:
    raise DataError(
        f"USPS is not bundled: put usps.h5 (from {_USPS_URL}) "
        f"{_where(dirs, data_dir, 'usps')}.")
  parts = ["train", "test"] if split == "all" else [split]
  xs, ys = [], []
  try:
    with h5py.File(path, "r") as f:
      for part in parts:
        if part not in f or "data" not in f[part] or "target" not in f[part]:
          raise DataError(
              f"USPS file {path!r} lacks {part}/data or {part}/target; expected groups "
              "train and test each holding data [n, 256] and target [n].")
        data = np.asarray(f[part]["data"][()])
        target = np.asarray(f[part]["target"][()])
        if data.ndim != 2 or data.shape[1] != 256:
          raise DataError(
              f"USPS file {path!r} has {part}/data of shape {data.shape}, expected "
              "[n, 256] (16x16 images).")
        xs.append(data.reshape(-1, 16, 16))
        ys.append(_as_labels(target))
  except OSError as e:
    raise DataError(f"USPS file {path!r} cannot be read as HDF5: {e}.") from None
  x = np.concatenate(xs, axis=0)
  y = np.concatenate(ys, axis=0)
  return _make_dataset(x, y, name=_split_name(name, split), source=f"USPS file {path!r}")


_Loader = Callable[[str, str | None, str], Dataset]

_REGISTRY: dict[str, _Loader] = {
    "digits": _load_digits,
    "mnist": functools.partial(_load_idx_dataset, _MNIST),
    "mnist-test": functools.partial(_load_idx_dataset, _MNIST, fixed_split="test"),
    "fashion-mnist": functools.partial(_load_idx_dataset, _FASHION_MNIST),
    "fashion-mnist-test": functools.partial(
        _load_idx_dataset, _FASHION_MNIST, fixed_split="test"),
    "usps": _load_usps,
}


def available_datasets() -> list[str]:
  """Names of the registry datasets, default first, e.g. for command-line help texts.

  Returns:
    The registry names; the prefix forms (``npz:PATH`` and so on) are in ``PREFIXES``.
  """
  return list(_REGISTRY)


# ----------------------------------------------------------------------------------------
# Prefix forms: npz:PATH, h5:PATH, folder:PATH, tfds:NAME.


def _resolve_path(path: str, data_dir: str | None, kind: str) -> str:
  """Expands ``~``; a relative path missing here is also looked up under ``data_dir``."""
  if not path:
    raise DataError(f"Dataset spec {kind}: needs a path after the colon, as in {kind}:PATH.")
  expanded = os.path.expanduser(path)
  if os.path.exists(expanded):
    return expanded
  if data_dir is not None and not os.path.isabs(expanded):
    joined = os.path.join(os.path.expanduser(os.fspath(data_dir)), expanded)
    if os.path.exists(joined):
      return joined
  raise DataError(f"Path {path!r} (from {kind}:{path}) does not exist.")


def _load_npz(path: str, data_dir: str | None, split: str) -> Dataset:
  spec = f"npz:{path}"
  _no_split(spec, split)
  path = _resolve_path(path, data_dir, "npz")
  source = f"npz file {path!r}"
  try:
    with np.load(path, allow_pickle=False) as f:
      keys = list(f.keys())
      if "x" not in keys:
        raise DataError(
            f"{source} has no array 'x' (it holds {', '.join(keys) or 'nothing'}); "
            "expected x [N, H, W] or [N, H, W, C] and optionally y [N].")
      x = f["x"]
      y = f["y"] if "y" in keys else None
  except DataError:
    raise
  except (OSError, ValueError, EOFError, zlib.error) as e:
    raise DataError(f"{source} cannot be read as an npz archive: {e}.") from None
  return _make_dataset(x, y, name=spec, source=source)


def _load_h5(path: str, data_dir: str | None, split: str) -> Dataset:
  spec = f"h5:{path}"
  _no_split(spec, split)
  path = _resolve_path(path, data_dir, "h5")
  source = f"HDF5 file {path!r}"
  import h5py
  try:
    with h5py.File(path, "r") as f:
      if "data" not in f:
        raise DataError(
            f"{source} has no dataset 'data' (it holds {', '.join(f.keys()) or 'nothing'}); "
            "expected data [N, C, H, W] and optionally labels [N].")
      x = np.asarray(f["data"][()])
      y = np.asarray(f["labels"][()]) if "labels" in f else None
  except DataError:
    raise
  except OSError as e:
    raise DataError(f"{source} cannot be read as HDF5: {e}.") from None
  if x.ndim == 4:
    x = np.transpose(x, (0, 2, 3, 1))  # [N, C, H, W] -> [N, H, W, C].
  elif x.ndim != 3:
    raise DataError(
        f"{source}: data has shape {x.shape}, expected [N, C, H, W] (channels first) "
        "or [N, H, W].")
  return _make_dataset(x, y, name=spec, source=source)


def _load_folder(path: str, data_dir: str | None, split: str) -> Dataset:
  spec = f"folder:{path}"
  _no_split(spec, split)
  root = _resolve_path(path, data_dir, "folder")
  if not os.path.isdir(root):
    raise DataError(f"{root!r} is not a folder; folder:PATH needs one subfolder per class.")
  from PIL import Image, UnidentifiedImageError
  classes = sorted(
      e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
  if not classes:
    raise DataError(f"Folder {root!r} has no subfolders; expected one subfolder per class.")
  files: list[tuple[str, int]] = []
  for label, cls in enumerate(classes):
    cls_dir = os.path.join(root, cls)
    names = sorted(
        e.name for e in os.scandir(cls_dir)
        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    if not names:
      raise DataError(
          f"Class folder {cls_dir!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    files.extend((os.path.join(cls_dir, n), label) for n in names)

  arrays: list[np.ndarray] = []
  first_path, first_size = None, None
  for file_path, _ in files:
    try:
      with Image.open(file_path) as im:
        if first_size is None:
          first_path, first_size = file_path, im.size
        elif im.size != first_size:
          raise DataError(
              f"Image {file_path!r} is {im.size[0]}x{im.size[1]} pixels (width x height) "
              f"but the first image {first_path!r} is {first_size[0]}x{first_size[1]}; "
              "all images must share one size.")
        mode = "L" if im.mode in _GRAY_MODES else "RGB"
        arrays.append(np.asarray(im.convert(mode), dtype=np.uint8))
    except DataError:
      raise
    except (OSError, UnidentifiedImageError, ValueError) as e:
      raise DataError(f"Image {file_path!r} cannot be read: {e}.") from None
  if any(a.ndim == 3 for a in arrays):
    # Mixed grayscale and colour: replicate gray into three channels, as Pillow's
    # "L" -> "RGB" conversion does.
    arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]
  else:
    arrays = [a[..., None] for a in arrays]
  x = np.stack(arrays, axis=0)
  y = np.asarray([label for _, label in files], dtype=np.int32)
  return _make_dataset(x, y, name=spec, source=f"image folder {root!r}")


def _load_tfds(name: str, data_dir: str | None, split: str) -> Dataset:
  spec = f"tfds:{name}"
  if not name:
    raise DataError("Dataset spec tfds: needs a dataset name, as in tfds:mnist.")
  if not split:
    raise DataError(f"Unknown split {split!r} for dataset {spec!r}.")
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError(
        f"Dataset {spec!r} needs TensorFlow Datasets; install the extra: "
        "pip install 'jaxclust[tfds]'.") from None
  try:
    if split == "all":
      by_split = tfds.data_source(name, split=None, data_dir=data_dir, download=False)
      order = [s for s in ("train", "test") if s in by_split]
      order += [s for s in by_split if s not in order]
      sources = [by_split[s] for s in order]
    else:
      sources = [tfds.data_source(name, split=split, data_dir=data_dir, download=False)]
  except Exception as e:  # tfds raises many types (not prepared, unknown split, ...).
    raise DataError(
        f"TFDS dataset {name!r} (split {split!r}) cannot be opened without downloading; "
        f"prepare it first (e.g. tfds build {name}): {type(e).__name__}: {e}") from None
  images, labels = [], []
  for source in sources:
    for i in range(len(source)):
      record = source[i]
      if "image" not in record:
        raise DataError(
            f"TFDS dataset {name!r} has no 'image' feature (it has "
            f"{', '.join(record)}).")
      images.append(np.asarray(record["image"]))
      if "label" in record:
        labels.append(record["label"])
  if not images:
    raise DataError(f"TFDS dataset {name!r} (split {split!r}) holds no records.")
  shapes = {a.shape for a in images}
  if len(shapes) > 1:
    examples = ", ".join(str(sh) for sh in sorted(shapes)[:3])
    raise DataError(
        f"TFDS dataset {name!r} has images of several shapes ({examples}, ...); all "
        "images must share one size.")
  x = np.stack(images, axis=0)
  y = np.asarray(labels) if len(labels) == len(images) else None
  display = spec if split == "all" else f"{spec}[{split}]"
  return _make_dataset(x, y, name=display, source=f"TFDS dataset {name!r}")


_PREFIX_LOADERS: dict[str, _Loader] = {
    "npz": _load_npz,
    "h5": _load_h5,
    "folder": _load_folder,
    "tfds": _load_tfds,
}


def load_dataset(spec: str, *, data_dir: str | None = None, split: str = "all") -> Dataset:
  """Loads a dataset by registry name or prefix form.

  Args:
    spec: a registry name (see :func:`available_datasets`; case-insensitive) or one of
      ``npz:PATH``, ``h5:PATH``, ``folder:PATH``, ``tfds:NAME``.
    data_dir: folder holding the files of a registry dataset (``mnist``,
      ``fashion-mnist``, ``usps``), either directly or in a subfolder named after it;
      defaults to ``$JAXCLUST_DATA_DIR/<name>`` (and, for Fashion-MNIST,
      ``/usr/share/datasets/fashion-mnist``). Relative paths of the prefix forms are
      also looked up under it; for ``tfds:`` it is the TFDS data folder.
    split: ``"all"`` (train then test), ``"train"`` or ``"test"``; datasets without a
      split accept only ``"all"``. ``tfds:`` passes any other TFDS split string on.

  Returns:
    A :class:`Dataset` with float32 images ``[N, H, W, C]`` in ``[-1, 1]`` and int32
    labels ``[N]`` (or ``None``).

  Raises:
    DataError: for an unknown name or split, a missing or corrupt file, or data that
      fails :func:`validate_images`.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise DataError(f"Empty dataset name; {_known_forms()}.")
  spec = spec.strip()
  prefix, sep, rest = spec.partition(":")
  if sep and prefix.lower() in _PREFIX_LOADERS:
    return _PREFIX_LOADERS[prefix.lower()](rest, data_dir, split)
  name = spec.lower()
  if name not in _REGISTRY:
    raise DataError(f"Unknown dataset {spec!r}; {_known_forms()}.")
  return _REGISTRY[name](name, data_dir, split)


def _known_forms() -> str:
  return (f"available datasets are {', '.join(available_datasets())}, or one of "
          f"{', '.join(p + ':PATH' if p != 'tfds' else 'tfds:NAME' for p in PREFIXES)}")
