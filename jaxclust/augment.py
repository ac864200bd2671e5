"""Image augmentations: pure, jittable functions of a PRNG key.

The inter-class separation method (paper 003, Das et al. 2019, Sec. 3.3) makes the positive
of each triplet ``(anchor, positive, negative)`` as an augmented copy of the anchor, "by
rotation, scale, erasing, flip". The functions here produce such copies for a whole batch
``images`` ``[B, H, W, C]`` (values in ``[-1, 1]``, background ``-1``), each sample with its
own random parameters, and return the same shape and dtype:

- ``rotate``: a rotation by a uniform angle in ``[-max_degrees, max_degrees]`` about the
  image centre; positive angles turn the picture counter-clockwise as displayed (row 0 on
  top), so a rotation by exactly 90 degrees is ``np.rot90(image, k=1, axes=(0, 1))``.
- ``scale``: a zoom about the centre by a uniform factor in ``[min_scale, max_scale]``
  (above one enlarges the content).
- ``shift``: a translation by a uniform, possibly fractional, number of pixels in
  ``[-max_pixels, max_pixels]`` along each axis.
- ``random_erasing``: one rectangle per sample, with the given probability, set to a
  constant (Zhong et al. 2017).
- ``flip``: a horizontal mirror, with the given probability.
- ``augment``: rotation, scale and shift composed into one resampling, then flip and
  erasing; the defaults (small rotation, scale and shift; no flip, no erasing) suit digits
  and clothing, which are not mirror-invariant.

The geometric ones all resample through ``affine``, which reads every output pixel at a
point of the input given by a per-sample 2x3 matrix (bilinear interpolation; points outside
the image read ``fill``). ``rotation_matrices``, ``scale_matrices`` and ``shift_matrices``
build those matrices from explicit parameters, for deterministic use.
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _between(draws: jax.Array, low: ArrayLike, high: ArrayLike) -> jax.Array:
  """Maps uniform ``draws`` in ``[0, 1)`` to ``[low, high)``."""
  return low + (high - low) * draws


def _centre(height: int, width: int) -> tuple[float, float]:
  """Pixel coordinates ``(row, col)`` of the image centre."""
  return (height - 1) / 2.0, (width - 1) / 2.0


def _matrices(rows: list[list[jax.Array]]) -> jax.Array:
  """Stacks a 2x3 nested list of ``[B]`` entries into ``[B, 2, 3]`` matrices."""
  return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def rotation_matrices(angles: ArrayLike, height: int, width: int) -> jax.Array:
  """Sampling matrices of rotations by ``angles`` (degrees) about the image centre.

  Positive angles turn the content counter-clockwise as displayed (row 0 on top). With
  ``d = (row, col) - centre`` the output pixel reads the input at
  ``centre + (cos a * d_row + sin a * d_col, -sin a * d_row + cos a * d_col)``.

  Args:
    angles: ``[B]`` angles in degrees.
    height: image height ``H``.
    width: image width ``W``.

  Returns:
    ``[B, 2, 3]`` matrices for ``affine``.
  """
  radians = jnp.deg2rad(jnp.asarray(angles, jnp.float32))
  cos, sin = jnp.cos(radians), jnp.sin(radians)
  centre_row, centre_col = _centre(height, width)
  return _matrices([
      [cos, sin, centre_row - cos * centre_row - sin * centre_col],
      [-sin, cos, centre_col + sin * centre_row - cos * centre_col],
  ])


def scale_matrices(scales: ArrayLike, height: int, width: int) -> jax.Array:
  """Sampling matrices of zooms by ``scales`` about the image centre (above 1 enlarges).

  Args:
    scales: ``[B]`` zoom factors, positive.
    height: image height ``H``.
    width: image width ``W``.

  Returns:
    ``[B, 2, 3]`` matrices for ``affine``.
  """
  inverse = 1.0 / jnp.asarray(scales, jnp.float32)
  zeros = jnp.zeros_like(inverse)
  centre_row, centre_col = _centre(height, width)
  return _matrices([
      [inverse, zeros, centre_row * (1.0 - inverse)],
      [zeros, inverse, centre_col * (1.0 - inverse)],
  ])


def shift_matrices(offsets: ArrayLike) -> jax.Array:
  """Sampling matrices of translations: the content moves by ``offsets`` pixels.

  A shift by ``(dy, dx)`` makes output pixel ``(row, col)`` read the input at
  ``(row - dy, col - dx)``, as ``np.roll`` does for integers.

  Args:
    offsets: ``[B, 2]`` shifts ``(rows down, columns right)``, may be fractional.

  Returns:
    ``[B, 2, 3]`` matrices for ``affine``.
  """
  offsets = jnp.asarray(offsets, jnp.float32)
  ones = jnp.ones_like(offsets[:, 0])
  zeros = jnp.zeros_like(ones)
  return _matrices([
      [ones, zeros, -offsets[:, 0]],
      [zeros, ones, -offsets[:, 1]],
  ])


def compose(outer: ArrayLike, inner: ArrayLike) -> jax.Array:
  """Sampling matrix of applying the transform ``inner`` first, then ``outer``.

  A sampling matrix maps output coordinates to input coordinates, so the composite maps
  through ``outer``'s matrix first: ``M = M_inner @ M_outer`` in homogeneous form.

  Args:
    outer: ``[B, 2, 3]`` sampling matrices of the transform applied last.
    inner: ``[B, 2, 3]`` sampling matrices of the transform applied first.

  Returns:
    ``[B, 2, 3]`` sampling matrices of the composite.
  """
  outer = jnp.asarray(outer)
  inner = jnp.asarray(inner)
  # Written out rather than as a matmul, which accelerators may run in reduced precision.
  linear = jnp.sum(inner[:, :, :2, None] * outer[:, None, :, :], axis=2)
  return linear + jnp.pad(inner[:, :, 2:], ((0, 0), (0, 0), (2, 0)))


def _bilinear(image: jax.Array, rows: jax.Array, cols: jax.Array, fill: float) -> jax.Array:
  """Reads ``image`` ``[H, W, C]`` at fractional ``rows``, ``cols`` ``[H', W']``."""
  height, width = image.shape[:2]
  # Points beyond one pixel outside read only `fill`; clipping keeps the int cast defined.
  rows = jnp.clip(rows, -1.0, float(height))
  cols = jnp.clip(cols, -1.0, float(width))
  row0 = jnp.floor(rows)
  col0 = jnp.floor(cols)
  row_frac = (rows - row0)[..., None]
  col_frac = (cols - col0)[..., None]
  row0 = row0.astype(jnp.int32)
  col0 = col0.astype(jnp.int32)

  def tap(r: jax.Array, c: jax.Array) -> jax.Array:
    inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    values = image[jnp.clip(r, 0, height - 1), jnp.clip(c, 0, width - 1)]
    return jnp.where(inside[..., None], values, jnp.asarray(fill, image.dtype))

  top = tap(row0, col0) * (1.0 - col_frac) + tap(row0, col0 + 1) * col_frac
  bottom = tap(row0 + 1, col0) * (1.0 - col_frac) + tap(row0 + 1, col0 + 1) * col_frac
  return (top * (1.0 - row_frac) + bottom * row_frac).astype(image.dtype)


def affine(images: ArrayLike, matrices: ArrayLike, fill: float = -1.0) -> jax.Array:
  """Resamples each image through its affine sampling matrix, bilinearly.

  Output pixel ``(row, col)`` of sample ``b`` is the input read at
  ``matrices[b] @ (row, col, 1)`` (the convention of ``scipy.ndimage.affine_transform``);
  neighbours outside the image count as ``fill``.

  Args:
    images: ``[B, H, W, C]``.
    matrices: ``[B, 2, 3]`` sampling matrices, e.g. from ``rotation_matrices``.
    fill: value of the area outside the image.

  Returns:
    ``[B, H, W, C]``, the dtype of ``images``.
  """
  images = jnp.asarray(images)
  matrices = jnp.asarray(matrices, jnp.float32)
  _, height, width, _ = images.shape
  grid_rows, grid_cols = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )

  def source(m: jax.Array) -> jax.Array:
    """``[B, H, W]`` coordinates from one row ``[B, 3]`` of the matrices (elementwise, exact)."""
    m = m[:, :, None, None]
    return m[:, 0] * grid_rows[None] + m[:, 1] * grid_cols[None] + m[:, 2]

  rows, cols = source(matrices[:, 0]), source(matrices[:, 1])
  return jax.vmap(_bilinear, in_axes=(0, 0, 0, None))(images, rows, cols, fill)


def _batch(images: ArrayLike) -> tuple[jax.Array, int, int, int]:
  """``images`` as an array, with its batch size, height and width."""
  images = jnp.asarray(images)
  batch, height, width, _ = images.shape
  return images, batch, height, width


def rotate(
    key: jax.Array, images: ArrayLike, max_degrees: float = 10.0, fill: float = -1.0
) -> jax.Array:
  """Rotates each image by a uniform angle in ``[-max_degrees, max_degrees]`` about its centre.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]``.
    max_degrees: largest rotation; positive angles are counter-clockwise as displayed.
    fill: value of the area rotated in from outside.

  Returns:
    ``[B, H, W, C]``.
  """
  images, batch, height, width = _batch(images)
  angles = jax.random.uniform(key, (batch,), minval=-max_degrees, maxval=max_degrees)
  return affine(images, rotation_matrices(angles, height, width), fill)


def scale(
    key: jax.Array,
    images: ArrayLike,
    min_scale: float = 0.9,
    max_scale: float = 1.1,
    fill: float = -1.0,
) -> jax.Array:
  """Zooms each image about its centre by a uniform factor in ``[min_scale, max_scale]``.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]``.
    min_scale: smallest factor (below 1 shrinks the content).
    max_scale: largest factor (above 1 enlarges it).
    fill: value of the area shrunk in from outside.

  Returns:
    ``[B, H, W, C]``.
  """
  images, batch, height, width = _batch(images)
  scales = jax.random.uniform(key, (batch,), minval=min_scale, maxval=max_scale)
  return affine(images, scale_matrices(scales, height, width), fill)


def shift(
    key: jax.Array, images: ArrayLike, max_pixels: float = 2.0, fill: float = -1.0
) -> jax.Array:
  """Translates each image by uniform offsets in ``[-max_pixels, max_pixels]`` per axis.

  Fractional offsets interpolate bilinearly.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]``.
    max_pixels: largest shift along each axis.
    fill: value of the vacated border.

  Returns:
    ``[B, H, W, C]``.
  """
  images, batch, _, _ = _batch(images)
  offsets = jax.random.uniform(key, (batch, 2), minval=-max_pixels, maxval=max_pixels)
  return affine(images, shift_matrices(offsets), fill)


def flip(key: jax.Array, images: ArrayLike, probability: float = 0.5) -> jax.Array:
  """Mirrors each image left-right with the given probability.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]``.
    probability: chance that a sample is mirrored.

  Returns:
    ``[B, H, W, C]``.
  """
  images, batch, _, _ = _batch(images)
  flipped = jax.random.bernoulli(key, probability, (batch,))
  return jnp.where(flipped[:, None, None, None], images[:, :, ::-1, :], images)


def erasing_masks(
    key: jax.Array,
    batch: int,
    height: int,
    width: int,
    probability: float = 0.5,
    area_range: tuple[float, float] = (0.02, 0.2),
    aspect_range: tuple[float, float] = (0.3, 3.3),
    attempts: int = 10,
) -> jax.Array:
  """Random-erasing rectangles as masks (Zhong et al. 2017, Algorithm 1).

  With ``probability`` a sample gets one rectangle of area ``s * H * W``, ``s`` uniform in
  ``area_range``, and height/width ratio ``r`` in ``aspect_range`` (log-uniform, as in
  torchvision, so that tall and wide rectangles are equally likely; the paper draws ``r``
  uniformly): height
  ``round(sqrt(s H W r))``, width ``round(sqrt(s H W / r))``, its corner uniform among the
  positions where it fits. The paper redraws until the rectangle fits in the image; here
  ``attempts`` draws are made at once and the first that fits is used (none: no erasing).

  Args:
    key: PRNG key.
    batch: number of samples ``B``.
    height: image height ``H``.
    width: image width ``W``.
    probability: chance that a sample is erased.
    area_range: ``(s_low, s_high)`` fractions of the image area.
    aspect_range: ``(r_low, r_high)`` height/width ratios.
    attempts: draws per sample.

  Returns:
    ``[B, H, W]`` booleans, true inside the rectangle.
  """
  # One draw for everything: each random-number call is compiled on its own, and slowly.
  draws = jax.random.uniform(key, (batch, 2 * attempts + 3))
  area = _between(draws[:, :attempts], area_range[0], area_range[1]) * (height * width)
  aspect = jnp.exp(_between(
      draws[:, attempts:2 * attempts], jnp.log(aspect_range[0]), jnp.log(aspect_range[1])
  ))
  rect_h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  rect_w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (rect_h >= 1) & (rect_h <= height) & (rect_w >= 1) & (rect_w <= width)
  first = jnp.argmax(fits, axis=1)

  def pick(values: jax.Array) -> jax.Array:
    return jnp.take_along_axis(values, first[:, None], axis=1)[:, 0]

  rect_h, rect_w = pick(rect_h), pick(rect_w)
  erase = (draws[:, -3] < probability) & jnp.any(fits, axis=1)
  # Corner uniform over the H - h + 1 (resp. W - w + 1) positions where the rectangle fits.
  top = jnp.floor(draws[:, -2] * (height - rect_h + 1)).astype(jnp.int32)
  left = jnp.floor(draws[:, -1] * (width - rect_w + 1)).astype(jnp.int32)
  top = jnp.minimum(top, height - rect_h)
  left = jnp.minimum(left, width - rect_w)

  def inside(start: jax.Array, size: jax.Array, extent: int) -> jax.Array:
    """``[B, extent]``: whether each index lies in ``[start, start + size)``."""
    index = jnp.arange(extent)[None, :]
    return (index >= start[:, None]) & (index < (start + size)[:, None])

  in_rows = inside(top, rect_h, height)
  in_cols = inside(left, rect_w, width)
  return erase[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]


def random_erasing(
    key: jax.Array,
    images: ArrayLike,
    probability: float = 0.5,
    area_range: tuple[float, float] = (0.02, 0.2),
    aspect_range: tuple[float, float] = (0.3, 3.3),
    value: float = -1.0,
) -> jax.Array:
  """Sets one random rectangle per sample, with the given probability, to ``value``.

  Random Erasing (Zhong et al. 2017); the rectangle is drawn by ``erasing_masks``.

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]``.
    probability: chance that a sample is erased.
    area_range: range of the rectangle's area as a fraction of the image.
    aspect_range: range of its height/width ratio.
    value: what the rectangle is set to (the background by default).

  Returns:
    ``[B, H, W, C]``.

  References:
    Zhong et al., Random Erasing Data Augmentation, arXiv:1708.04896, 2017.
  """
  images, batch, height, width = _batch(images)
  mask = erasing_masks(key, batch, height, width, probability, area_range, aspect_range)
  return jnp.where(mask[..., None], jnp.asarray(value, images.dtype), images)


def augment(
    key: jax.Array,
    images: ArrayLike,
    *,
    max_degrees: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_shift: float = 2.0,
    erasing_probability: float = 0.0,
    flip_probability: float = 0.0,
    fill: float = -1.0,
) -> jax.Array:
  """Random augmented copies: the positives of paper 003's triplets (Sec. 3.3).

  Rotation, then zoom, then shift, resampled once (one interpolation, not three); then a
  horizontal flip and random erasing, each with its probability (off by default: digits
  and clothing are not mirror-invariant, and erasing can remove what tells two digits
  apart).

  Args:
    key: PRNG key.
    images: ``[B, H, W, C]``.
    max_degrees: largest rotation, degrees.
    scale_range: ``(min_scale, max_scale)`` of the zoom.
    max_shift: largest shift per axis, pixels.
    erasing_probability: chance of erasing a rectangle (to ``fill``).
    flip_probability: chance of a horizontal mirror.
    fill: background value for the area moved in from outside and for erasing.

  Returns:
    ``[B, H, W, C]``.
  """
  images, batch, height, width = _batch(images)
  key_geometry, key_flip, key_erase = jax.random.split(key, 3)
  draws = jax.random.uniform(key_geometry, (batch, 4))  # one call: see erasing_masks
  angles = _between(draws[:, 0], -max_degrees, max_degrees)
  scales = _between(draws[:, 1], scale_range[0], scale_range[1])
  offsets = _between(draws[:, 2:], -max_shift, max_shift)
  matrices = compose(
      shift_matrices(offsets),
      compose(scale_matrices(scales, height, width), rotation_matrices(angles, height, width)),
  )
  images = affine(images, matrices, fill)
  images = flip(key_flip, images, flip_probability)
  return random_erasing(key_erase, images, erasing_probability, value=fill)
