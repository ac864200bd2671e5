"""Each script in examples/ runs end to end on its tiny settings (``--tiny``)."""

import csv
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from tests.helpers import pattern_images

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str, cwd: pathlib.Path) -> str:
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
         "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args, "--tiny"], cwd=cwd, env=env, check=False,
                        capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_custom_objective_is_short_and_trains(tmp_path):
  assert len((ROOT / "examples" / "custom_objective.py").read_text().splitlines()) < 40
  out = run_example("custom_objective.py", cwd=tmp_path)
  acc, nmi = (float(v) for v in out.split()[1::2])
  assert 0 < acc <= 1 and 0 <= nmi <= 1


def test_sklearn_pipeline(tmp_path):
  out = run_example("sklearn_pipeline.py", cwd=tmp_path)
  assert out.splitlines()[0].startswith("DEPICT") and "ACC" in out and "PCA + k-means" in out
  assert "a clone with {'depict__seed': 1}" in out


def test_image_folder(tmp_path):
  x, _ = pattern_images(n_per_class=12, n_classes=3, size=12)
  folder = tmp_path / "photos"
  for i, image in enumerate((x * 255).astype(np.uint8)):
    # Any layout and sizes: nested folders, some images larger and in colour.
    where = folder / f"batch{i % 2}" / ("deeper" if i % 3 == 0 else "")
    where.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image)
    if i % 4 == 0:
      picture = picture.resize((20, 16)).convert("RGB")
    picture.save(where / f"img{i}.png")
  run_example("image_folder.py", str(folder), "--n-clusters", "3", "--size", "12", "--out", "result", cwd=tmp_path)
  with open(tmp_path / "result" / "clusters.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(x) and {int(r["cluster"]) for r in rows} <= {0, 1, 2}
  assert all(pathlib.Path(r["path"]).is_file() for r in rows)
  for k in {int(r["cluster"]) for r in rows}:
    with Image.open(tmp_path / "result" / f"cluster_{k}.png") as sheet:
      sheet.load()
      assert sheet.width == 8 * 12 and sheet.height % 12 == 0
