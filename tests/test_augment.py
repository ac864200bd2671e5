"""Image augmentations against NumPy / SciPy references.

Direction convention under test: a positive angle turns the picture counter-clockwise as
displayed (row 0 on top), so rotating by +90 degrees is ``np.rot90(image, k=1)`` over the
(row, col) axes. The random wrappers are checked through the deterministic transforms:
on a linear ramp, which bilinear interpolation reproduces exactly, the drawn angle, zoom and
shift of every sample can be read back from the output.
"""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxclust import augment

# Jitted once per shape: much cheaper than eager op-by-op dispatch.
# test_everything_is_jittable compares eager and jitted results.
J = SimpleNamespace(
    affine=jax.jit(augment.affine),
    rotation_matrices=jax.jit(augment.rotation_matrices, static_argnums=(1, 2)),
    scale_matrices=jax.jit(augment.scale_matrices, static_argnums=(1, 2)),
    shift_matrices=jax.jit(augment.shift_matrices),
    compose=jax.jit(augment.compose),
    rotate=jax.jit(augment.rotate),
    scale=jax.jit(augment.scale),
    shift=jax.jit(augment.shift),
    flip=jax.jit(augment.flip),
    random_erasing=jax.jit(augment.random_erasing),
    augment=jax.jit(augment.augment),
)

FILL = -1.0


def images(batch=8, height=10, width=7, channels=2, seed=0):
  """Values in (-0.9, 0.9): never equal to the fill value, so changed pixels are visible."""
  rng = np.random.default_rng(seed)
  return rng.uniform(-0.9, 0.9, (batch, height, width, channels)).astype(np.float32)


def ramp(batch, size):
  """``[B, size, size, 2]``: channel 0 is the row offset from the centre, channel 1 the column's."""
  centre = (size - 1) / 2
  rows, cols = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")
  one = np.stack([rows, cols], axis=-1).astype(np.float32)
  return np.broadcast_to(one, (batch, size, size, 2)).copy()


def slopes(out, size, margin):
  """Least-squares ``[B, 2, 3]`` fit of each channel as ``a*row + b*col + c`` in the interior."""
  centre = (size - 1) / 2
  inner = slice(margin, size - margin)
  rows, cols = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")
  design = np.stack([rows[inner, inner].ravel(), cols[inner, inner].ravel(),
                     np.ones(rows[inner, inner].size)], axis=1)
  fits = []
  for sample in np.asarray(out, np.float64):
    values = sample[inner, inner].reshape(-1, sample.shape[-1])
    coef, *_ = np.linalg.lstsq(design, values, rcond=None)
    fits.append(coef.T)
  return np.array(fits)


# Arguments beyond (key, images) that make every wrapper change something.
RANDOM_ARGS = {
    "rotate": ((15.0,), {}),
    "scale": ((0.8, 1.2), {}),
    "shift": ((2.5,), {}),
    "flip": ((0.5,), {}),
    "random_erasing": ((0.7,), {}),
    "augment": ((), {"erasing_probability": 0.5, "flip_probability": 0.5}),
}


@pytest.mark.parametrize("name", list(RANDOM_ARGS))
def test_shape_and_dtype_preserved(name):
  x = images()
  args, kwargs = RANDOM_ARGS[name]
  out = getattr(J, name)(jax.random.key(0), x, *args, **kwargs)
  assert out.shape == x.shape
  assert out.dtype == jnp.float32


def test_affine_matches_scipy_affine_transform():
  # scipy's matrix maps output to input coordinates, as ours does; 'grid-constant' extends the
  # image by cval and interpolates across the edge, as we do.
  x = images()
  batch = x.shape[0]
  rng = np.random.default_rng(1)
  matrices = np.concatenate(
      [np.eye(2)[None] + rng.normal(0, 0.3, (batch, 2, 2)), rng.normal(0, 2, (batch, 2, 1))],
      axis=2,
  ).astype(np.float32)
  out = np.asarray(J.affine(x, matrices, FILL))
  for b in range(batch):
    for ch in range(2):
      expected = ndimage.affine_transform(
          x[b, :, :, ch].astype(np.float64), matrices[b].astype(np.float64), order=1,
          mode="grid-constant", cval=FILL,
      )
      np.testing.assert_allclose(out[b, :, :, ch], expected, atol=1e-5)


def test_zero_parameter_transforms_are_identity():
  x = images()
  b, h, w, _ = x.shape
  for matrices in (
      J.rotation_matrices(jnp.zeros(b), h, w),
      J.scale_matrices(jnp.ones(b), h, w),
      J.shift_matrices(jnp.zeros((b, 2))),
  ):
    np.testing.assert_allclose(J.affine(x, matrices, FILL), x, atol=1e-5)
  key = jax.random.key(3)
  np.testing.assert_allclose(J.rotate(key, x, 0.0), x, atol=1e-5)
  np.testing.assert_allclose(J.scale(key, x, 1.0, 1.0), x, atol=1e-5)
  np.testing.assert_allclose(J.shift(key, x, 0.0), x, atol=1e-5)
  identity = J.augment(key, x, max_degrees=0.0, scale_range=(1.0, 1.0), max_shift=0.0)
  np.testing.assert_allclose(identity, x, atol=1e-5)


@pytest.mark.parametrize("size", [8, 9])
def test_rotation_by_90_degrees_is_rot90_counter_clockwise(size):
  x = images(height=size, width=size)
  turn = jnp.full(x.shape[0], 90.0)
  out = np.asarray(J.affine(x, J.rotation_matrices(turn, size, size), FILL))
  # A square turned by a quarter about its centre lands on the pixel grid: every pixel, the
  # border included, comes from the input (to float32 rounding: cos 90 deg is not exactly 0).
  np.testing.assert_allclose(out, np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)
  # Counter-clockwise as displayed: the top-right corner moves to the top-left.
  np.testing.assert_allclose(out[:, 0, 0], x[:, 0, -1], atol=1e-5)
  minus = J.affine(x, J.rotation_matrices(-turn, size, size), FILL)
  np.testing.assert_allclose(minus, np.rot90(x, k=-1, axes=(1, 2)), atol=1e-5)


def test_integer_shift_is_roll_with_filled_border():
  x = images()
  offsets = np.array([[2, 0], [0, -3], [-1, 2], [4, -4], [0, 0], [-9, 0], [1, 1], [-2, -6]])
  out = np.asarray(J.affine(x, J.shift_matrices(offsets), FILL))
  for b, (dy, dx) in enumerate(offsets):
    expected = np.roll(x[b], (dy, dx), axis=(0, 1))
    if dy > 0:
      expected[:dy] = FILL
    elif dy < 0:
      expected[dy:] = FILL
    if dx > 0:
      expected[:, :dx] = FILL
    elif dx < 0:
      expected[:, dx:] = FILL
    np.testing.assert_allclose(out[b], expected, atol=1e-6)


def test_half_pixel_shift_averages_neighbours():
  x = images()
  offsets = np.broadcast_to([[0.0, 0.5]], (x.shape[0], 2))
  out = np.asarray(J.affine(x, J.shift_matrices(offsets), FILL))
  np.testing.assert_allclose(out[:, :, 1:], (x[:, :, 1:] + x[:, :, :-1]) / 2, atol=1e-6)
  np.testing.assert_allclose(out[:, :, 0], (x[:, :, 0] + FILL) / 2, atol=1e-6)


def test_scale_matrices_zoom_about_the_centre():
  # Zoom by 2: the output pixel at offset d from the centre reads the input at d / 2.
  size = 17
  out = np.asarray(J.affine(ramp(1, size), J.scale_matrices(jnp.array([2.0]), size, size)))
  np.testing.assert_allclose(out, ramp(1, size) / 2, atol=1e-5)


def test_compose_applies_inner_first():
  size, margin = 21, 6
  x = ramp(3, size)
  rotation = J.rotation_matrices(jnp.array([20.0, -35.0, 5.0]), size, size)
  shift = J.shift_matrices(jnp.array([[1.5, -2.0], [0.0, 3.0], [-2.5, 0.5]]))
  one_pass = np.asarray(J.affine(x, J.compose(shift, rotation), FILL))
  two_passes = np.asarray(J.affine(J.affine(x, rotation, FILL), shift, FILL))
  inner = slice(margin, size - margin)
  np.testing.assert_allclose(one_pass[:, inner, inner], two_passes[:, inner, inner], atol=1e-4)
  # In homogeneous form the composite is M_inner @ M_outer.
  def homogeneous(m):
    return np.concatenate([np.asarray(m), np.broadcast_to([[[0, 0, 1]]], (3, 1, 3))], axis=1)

  np.testing.assert_allclose(
      J.compose(shift, rotation),
      (homogeneous(rotation) @ homogeneous(shift))[:, :2], atol=1e-5,
  )


def test_rotate_draws_angles_in_range():
  size, batch, max_degrees = 21, 16, 25.0
  x = ramp(batch, size)
  out = J.rotate(jax.random.key(0), x, max_degrees)
  fit = slopes(out, size, margin=5)
  # Channel 0 (row offset) becomes cos(a) * d_row + sin(a) * d_col.
  angles = np.degrees(np.arctan2(fit[:, 0, 1], fit[:, 0, 0]))
  assert np.all(np.abs(angles) <= max_degrees + 1e-3)
  assert np.ptp(angles) > max_degrees  # spread over the range, not one angle
  expected = J.affine(x, J.rotation_matrices(angles, size, size), FILL)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_scale_draws_factors_in_range():
  size, batch = 21, 16
  x = ramp(batch, size)
  out = J.scale(jax.random.key(1), x, 0.8, 1.25)
  fit = slopes(out, size, margin=5)
  factors = 1.0 / fit[:, 0, 0]
  np.testing.assert_allclose(fit[:, 1, 1], fit[:, 0, 0], atol=1e-5)  # same zoom on both axes
  assert np.all((factors >= 0.8 - 1e-4) & (factors <= 1.25 + 1e-4))
  assert np.ptp(factors) > 0.2
  expected = J.affine(x, J.scale_matrices(factors, size, size), FILL)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_shift_draws_offsets_in_range():
  size, batch, max_pixels = 21, 16, 3.0
  x = ramp(batch, size)
  out = J.shift(jax.random.key(2), x, max_pixels)
  fit = slopes(out, size, margin=4)
  offsets = -fit[:, :, 2]  # the content moves by +offset, so the ramp drops by it
  assert np.all(np.abs(offsets) <= max_pixels + 1e-4)
  assert np.ptp(offsets[:, 0]) > max_pixels and np.ptp(offsets[:, 1]) > max_pixels
  assert np.any(np.abs(offsets - np.round(offsets)) > 0.1)  # fractional offsets occur
  expected = J.affine(x, J.shift_matrices(offsets), FILL)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_flip():
  x = images()
  key = jax.random.key(0)
  np.testing.assert_array_equal(J.flip(key, x, 1.0), np.flip(x, axis=2))
  np.testing.assert_array_equal(J.flip(key, x, 0.0), x)
  out = np.asarray(J.flip(key, x, 0.5))
  flipped = np.all(out == np.flip(x, axis=2), axis=(1, 2, 3))
  kept = np.all(out == x, axis=(1, 2, 3))
  assert np.all(flipped | kept)
  assert flipped.any() and kept.any()


def test_random_erasing_erases_one_rectangle_in_range():
  batch, height, width = 32, 40, 40
  area_range = (0.05, 0.25)
  x = images(batch=batch, height=height, width=width)
  out = np.asarray(J.random_erasing(jax.random.key(0), x, 1.0, area_range, (0.3, 3.3), FILL))
  changed = np.any(out != x, axis=-1)
  # Rounding height and width each by at most half a pixel moves the area by at most
  # (h + w) / 2 + 1/4 pixels, with h <= height and w <= width.
  tolerance = ((height + width) / 2 + 0.25) / (height * width)
  shapes = set()
  for b in range(batch):
    rows, cols = np.nonzero(changed[b])
    assert rows.size > 0
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    assert changed[b][box].all()  # a full rectangle, nothing outside it
    assert rows.size == changed[b].sum()
    np.testing.assert_array_equal(out[b][box], FILL)
    np.testing.assert_array_equal(out[b][~changed[b]], x[b][~changed[b]])
    fraction = rows.size / (height * width)
    assert area_range[0] - tolerance <= fraction <= area_range[1] + tolerance
    shapes.add((box[0].stop - box[0].start, box[1].stop - box[1].start))
  assert len(shapes) > batch // 2  # the rectangles differ between samples


def test_random_erasing_probability():
  x = images()
  key = jax.random.key(1)
  np.testing.assert_array_equal(J.random_erasing(key, x, 0.0), x)
  erased = np.any(np.asarray(J.random_erasing(key, x, 0.5)) != x, axis=(1, 2, 3))
  assert 0 < erased.sum() < x.shape[0]


def test_random_erasing_value():
  x = images()
  out = np.asarray(J.random_erasing(jax.random.key(2), x, 1.0, value=0.25))
  assert np.all((out == x) | (out == 0.25))
  assert np.all(np.any(out == 0.25, axis=(1, 2, 3)))


@pytest.mark.parametrize("name", list(RANDOM_ARGS))
def test_same_key_same_output_different_key_different_output(name):
  x = images()
  args, kwargs = RANDOM_ARGS[name]
  fn = getattr(J, name)
  first = np.asarray(fn(jax.random.key(5), x, *args, **kwargs))
  again = np.asarray(fn(jax.random.key(5), x, *args, **kwargs))
  other = np.asarray(fn(jax.random.key(6), x, *args, **kwargs))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


def test_everything_is_jittable():
  # Every other test runs the jitted functions; here the jitted resampling equals the eager one.
  x = images()
  matrices = J.rotation_matrices(jnp.linspace(-40.0, 40.0, x.shape[0]), *x.shape[1:3])
  np.testing.assert_allclose(J.affine(x, matrices, FILL), augment.affine(x, matrices), atol=1e-5)


def test_augment_stays_in_range_and_changes_the_images():
  rng = np.random.default_rng(4)
  x = rng.uniform(-1.0, 1.0, images().shape).astype(np.float32)
  x[:, :, 0] = -1.0  # background
  x[:, :, -1] = 1.0
  strong = {"max_degrees": 30.0, "scale_range": (0.7, 1.3), "max_shift": 3.0,
            "erasing_probability": 0.5, "flip_probability": 0.5, "fill": FILL}
  out = np.asarray(J.augment(jax.random.key(0), x, **strong))
  # Bilinear interpolation is a convex combination; allow float32 rounding only.
  assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
  assert np.all(np.abs(out - x).max(axis=(1, 2, 3)) > 0.1)
  # Zooming out by half: the rows moved in from outside the image hold the fill value.
  zoom_out = dict(strong, max_degrees=0.0, scale_range=(0.5, 0.5), max_shift=0.0,
                  erasing_probability=0.0, flip_probability=0.0)
  out = np.asarray(J.augment(jax.random.key(0), x, **zoom_out))
  np.testing.assert_array_equal(out[:, :2], FILL)
  np.testing.assert_array_equal(out[:, :, :1], FILL)
