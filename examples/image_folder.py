"""Cluster your own folder of images.

  python examples/image_folder.py PHOTOS_DIR [--n-clusters 10] [--size 28] [--rgb] [--out OUT]

Reads every image under PHOTOS_DIR (any layout of subfolders, any sizes and formats Pillow
reads), crops each to a centred square and resizes it to SIZE x SIZE (grayscale unless
--rgb), clusters them with DEPICT (``jaxclust.DEPICT``, the network of the paper's Table 5
for the image size), and writes:

- ``OUT/clusters.csv``: one row per image, its path and its cluster;
- ``OUT/cluster_K.png``: a contact sheet of up to 64 images of cluster K, to see what each
  cluster holds.

``--tiny`` trains for a few epochs only (what the tests run). For labelled data in
one subfolder per class, ``bin/train --dataset folder:PATH`` also gives ACC/NMI and plots.
"""

import argparse
import csv
import pathlib

import numpy as np
from PIL import Image, ImageOps

import jaxclust
from jaxclust.data import IMAGE_EXTENSIONS

TINY = {"warmup_epochs": 2, "init_epochs": 1, "max_rounds": 2, "conv_features": (8, 8), "kmeans_n_init": 2,
        "batch_size": 16}


def load_images(folder: pathlib.Path, size: int, rgb: bool) -> tuple[list[pathlib.Path], np.ndarray]:
  """Paths and uint8 images ``[N, size, size]`` (or ``[N, size, size, 3]`` with ``rgb``)."""
  paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
  if not paths:
    raise SystemExit(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
  images = []
  for path in paths:
    with Image.open(path) as image:
      images.append(np.asarray(ImageOps.fit(image.convert("RGB" if rgb else "L"), (size, size))))
  return paths, np.stack(images)


def contact_sheet(images: np.ndarray, columns: int = 8) -> Image.Image:
  """Up to ``columns**2`` images side by side, as one image."""
  images = images[: columns * columns]
  rows = -(-len(images) // columns)
  size = images.shape[1]
  sheet = np.full((rows * size, columns * size, *images.shape[3:]), 255, np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = image
  return Image.fromarray(sheet)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("folder", type=pathlib.Path)
  parser.add_argument("--n-clusters", type=int, default=10)
  parser.add_argument("--size", type=int, default=28, help="side of the square the images are resized to")
  parser.add_argument("--rgb", action="store_true", help="keep colour (default: grayscale)")
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("clusters"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--tiny", action="store_true", help="a few epochs only (a short run)")
  args = parser.parse_args()

  paths, images = load_images(args.folder, args.size, args.rgb)
  print(f"{len(paths)} images of {args.size}x{args.size} from {args.folder}")
  model = jaxclust.DEPICT(n_clusters=args.n_clusters, seed=args.seed, config=TINY if args.tiny else None,
                          verbose=0 if args.tiny else 1)
  try:
    clusters = model.fit_predict(images)
  except jaxclust.JaxclustError as e:  # too few images for the clusters, and the like
    raise SystemExit(f"error: {e}") from None

  args.out.mkdir(parents=True, exist_ok=True)
  with open(args.out / "clusters.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "cluster"])
    writer.writerows((str(p), int(k)) for p, k in zip(paths, clusters))
  for k in np.unique(clusters):
    contact_sheet(images[clusters == k]).save(args.out / f"cluster_{k}.png")
  sizes = np.bincount(clusters, minlength=args.n_clusters)
  print(f"cluster sizes {sizes.tolist()}; clusters.csv and one contact sheet per cluster in {args.out}")


if __name__ == "__main__":
  main()
