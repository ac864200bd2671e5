"""Flax (Linen) networks. Encoders and decoders return every layer's activation, because
DEPICT's reconstruction loss compares them layer by layer.

Images are channels-last, ``[N, H, W, C]``.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

xavier = nn.initializers.xavier_uniform()


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """One strided convolution of the encoder; the decoder mirrors it as a transposed one.

  ``padding`` is the encoder's zero padding and the decoder's crop (DEPICT Table 5).
  """

  features: int
  kernel_size: int
  stride: int
  padding: int


def conv_output_size(size: int, spec: ConvSpec) -> int:
  """Spatial size after ``spec``: ``floor((n + 2p - k) / s) + 1``."""
  return (size + 2 * spec.padding - spec.kernel_size) // spec.stride + 1


def encoder_shapes(
    image_shape: Sequence[int], convs: Sequence[ConvSpec]
) -> list[tuple[int, int, int]]:
  """``(H, W, C)`` of the input and of every conv layer's output."""
  h, w, c = image_shape
  shapes = [(h, w, c)]
  for spec in convs:
    h, w = conv_output_size(h, spec), conv_output_size(w, spec)
    if h < 1 or w < 1:
      raise ValueError(f"image of shape {tuple(image_shape)} is too small for conv layers {convs}")
    shapes.append((h, w, spec.features))
  return shapes


class ConvEncoder(nn.Module):
  """Strided convolutions then a fully connected embedding layer (DEPICT eq. 9 and 11).

  Leaky ReLU on the convolutions, tanh on the embedding, Xavier initialisation. With
  ``train=True`` this is the noisy (corrupted) pathway: dropout on the input and on the
  output of each convolution (``dropout_rates[l]`` for layer ``l``); with ``train=False`` it
  is the clean pathway.

  Returns the activations ``[z^0, z^1, ..., z^L]``: the (possibly corrupted) input, each
  conv output ``[N, H_l, W_l, C_l]``, and the embedding ``[N, embedding_dim]``.
  """

  convs: Sequence[ConvSpec]
  embedding_dim: int
  dropout_rates: Sequence[float] = (0.1, 0.1, 0.1)
  negative_slope: float = 0.01
  conv_gradient: str = "adjoint"  # or "autodiff": see conv

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
    x = nn.Dropout(self.dropout_rates[0], deterministic=not train)(x)
    activations = [x]
    h = x
    for layer, spec in enumerate(self.convs):
      h = StridedConv(spec.features, spec.kernel_size, spec.stride, spec.padding, self.conv_gradient,
                      name=f"conv{layer + 1}")(h)
      h = nn.leaky_relu(h, self.negative_slope)
      h = nn.Dropout(self.dropout_rates[layer + 1], deterministic=not train)(h)
      activations.append(h)
    z = nn.Dense(self.embedding_dim, kernel_init=xavier, name="embedding")(h.reshape(h.shape[0], -1))
    activations.append(jnp.tanh(z))
    return activations


class ConvDecoder(nn.Module):
  """Mirror of :class:`ConvEncoder`: fully connected, then strided transposed convolutions
  (DEPICT eq. 10). Leaky ReLU everywhere except tanh on the reconstructed input.

  ``shapes`` are the encoder's layer shapes (:func:`encoder_shapes`); each transposed
  convolution crops by the encoder's padding and adds output padding where the encoder's
  stride dropped pixels, so every decoder layer has its encoder layer's shape.

  Returns ``[z_hat^0, ..., z_hat^{L-1}]``: the reconstructed input first, then each
  reconstructed conv layer, in the encoder's order.
  """

  convs: Sequence[ConvSpec]
  shapes: Sequence[tuple[int, int, int]]
  negative_slope: float = 0.01
  transposed_conv: str = "auto"  # or "dilated", "subpixel": see conv_transpose
  conv_gradient: str = "adjoint"  # or "autodiff": see conv_transpose

  @nn.compact
  def __call__(self, z: jax.Array) -> list[jax.Array]:
    top_h, top_w, top_c = self.shapes[-1]
    h = nn.Dense(top_h * top_w * top_c, kernel_init=xavier, name="dense")(z)
    h = nn.leaky_relu(h, self.negative_slope).reshape(z.shape[0], top_h, top_w, top_c)
    reconstructed = [h]
    for layer in reversed(range(len(self.convs))):
      spec = self.convs[layer]
      out_h, out_w, out_c = self.shapes[layer]
      h = TransposedConv(
          out_c, spec.kernel_size, spec.stride, spec.padding, output_size=(out_h, out_w),
          method=self.transposed_conv, gradient=self.conv_gradient, name=f"deconv{layer + 1}",
      )(h)
      h = jnp.tanh(h) if layer == 0 else nn.leaky_relu(h, self.negative_slope)
      reconstructed.append(h)
    return reconstructed[::-1]


# ----------------------------------------------------------------------------- convolutions
#
# Every convolution layer here is made of three linear maps of one geometry (kernel k,
# stride s, padding p, per spatial axis):
#   S(v; W)     the strided convolution  u[q] = sum_a v[s q + a - p] W[a]
#   T(u; W^T)   its adjoint, the transposed convolution (``conv_transpose`` with crop p)
#   G(v, du)    the kernel gradient of S: dW[a] = sum_q v[s q + a - p] du[q]
# A strided convolution's forward pass is S, its input gradient T and its kernel gradient G;
# a transposed convolution's forward pass is T, its input gradient S and its kernel gradient
# G (with its output gradient as ``v`` and its input as ``du``). Autodiff of T instead
# convolves over T's zero-dilated input for the kernel gradient, which XLA:CPU runs an order
# of magnitude slower, and autodiff of S computes its input gradient that way too.
#
# On XLA:CPU the three are computed in the forms measured fastest there (jax 0.10, whose
# convolutions go to YNNPACK when their layout and sizes allow; one thread of a 2-core
# AVX-512 Xeon; ``benchmarks/step_time.py --layers``): output channels padded to a multiple
# of 32 (``_cpu_features``), and T in the form ``_conv_transpose_auto`` picks by the kernel's
# shape. Other backends get the plain XLA convolutions (``_by_backend``).

_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(v, kernel, stride=1, padding=((0, 0), (0, 0)), lhs_dilation=(1, 1)):
  return jax.lax.conv_general_dilated(v, kernel, (stride, stride), padding, lhs_dilation=lhs_dilation,
                                      dimension_numbers=_DIMS)


def _by_backend(cpu: Callable, default: Callable, *args):
  """``cpu(*args)`` where the computation is lowered for the CPU, ``default(*args)`` elsewhere
  (``jax.lax.platform_dependent``: the choice is made at lowering, so the compiled program
  holds only one of them)."""
  return jax.lax.platform_dependent(*args, cpu=cpu, default=default)


def _cpu_features(n: int, contraction: int) -> int:
  """Output channels XLA:CPU computes to get ``n``: ``n`` rounded up to a multiple of 32 when
  ``n > 16`` and each output sums at least 64 products. XLA:CPU's (YNNPACK's) convolutions of
  a channel count that is not a multiple of 32 run at about half the speed per channel:
  DEPICT's 5x5 convolution of 50 to 50 channels at batch 100 takes 13 ms, and 9 ms computing
  64 channels and dropping 14 (40 -> 64 and 100 -> 128 gain likewise, 20 -> 32 a little; a
  contraction of 16, the 4x4 kernel on one channel, loses)."""
  if n <= 16 or contraction < 64:
    return n
  return -(-n // 32) * 32


def _pad_out_features(kernel: jax.Array, contraction: int) -> jax.Array:
  n = _cpu_features(kernel.shape[-1], contraction)
  return jnp.pad(kernel, ((0, 0),) * (kernel.ndim - 1) + ((0, n - kernel.shape[-1]),))


def _strided(v, kernel, stride, padding):
  """S: ``[N, H, W, C_in]`` -> ``[N, H', W', C_out]``, ``kernel`` ``[k, k, C_in, C_out]``."""
  pads = ((padding, padding),) * 2
  c_out = kernel.shape[3]

  def cpu(v, kernel):
    padded = _pad_out_features(kernel, math.prod(kernel.shape[:3]))
    return _conv(v, padded, stride, pads)[..., :c_out]

  return _by_backend(cpu, lambda v, kernel: _conv(v, kernel, stride, pads), v, kernel)


def _kernel_grad(v, du, kernel_size, stride, padding):
  """G: ``dW[a, b, i, o] = sum_{n, q} v[n, s q + a - p, i] du[n, q, o]``, ``[k, k, C_v, C_u]``."""
  pads = ((padding, padding),) * 2
  c_u = du.shape[3]

  def grad(v, du):
    shape = jax.ShapeDtypeStruct((kernel_size, kernel_size, v.shape[3], du.shape[3]), du.dtype)
    (dw,) = jax.linear_transpose(lambda w: _conv(v, w, stride, pads), shape)(du)
    return dw

  def cpu(v, du):
    return grad(v, _pad_out_features(du, math.prod(du.shape[:3])))[..., :c_u]

  return _by_backend(cpu, grad, v, du)


def _check_transposed_size(x_shape, k: int, s: int, c: int, output_size: Sequence[int]) -> None:
  for axis, target in enumerate(output_size):
    natural = (x_shape[1 + axis] - 1) * s + k - 2 * c
    if not 0 <= target - natural < s:
      raise ValueError(f"cannot reach size {target} from {x_shape[1 + axis]} with {k=}, {s=}, crop={c}")


def _conv_transpose_dilated(x, kernel, s, c, output_size):
  k = kernel.shape[0]
  pads = [(k - 1 - c, k - 1 - c + t - ((x.shape[1 + a] - 1) * s + k - 2 * c))
          for a, t in enumerate(output_size)]
  return _conv(x, kernel[::-1, ::-1], 1, pads, lhs_dilation=(s, s))


def _conv_transpose_subpixel(x, kernel, s, c, output_size):
  k = kernel.shape[0]
  m = -(-k // s)  # taps per phase
  c_in, c_out = kernel.shape[2], kernel.shape[3]
  padded = jnp.pad(kernel, ((0, m * s - k), (0, m * s - k), (0, 0), (0, 0)))
  # [m, s, m, s, C_in, C_out] with tap j = m_idx * s + r; flip the taps for correlation.
  phases = padded.reshape(m, s, m, s, c_in, c_out)[::-1, :, ::-1]
  weights = phases.transpose(0, 2, 4, 1, 3, 5).reshape(m, m, c_in, s * s * c_out)
  y = _conv(x, weights, 1, [(m - 1, m - 1)] * 2)
  n, qh, qw, _ = y.shape
  y = y.reshape(n, qh, qw, s, s, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(n, qh * s, qw * s, c_out)
  out_h, out_w = output_size
  short_h, short_w = max(0, c + out_h - qh * s), max(0, c + out_w - qw * s)
  if short_h or short_w:  # output padding beyond the full transposed output is zeros
    y = jnp.pad(y, ((0, 0), (0, short_h), (0, short_w), (0, 0)))
  return y[:, c:c + out_h, c:c + out_w, :]


def _conv_transpose_phases(x, kernel, s, c, output_size):
  """One stride-1 convolution per output phase ``(r_h, r_w)``, each with only its own taps.

  ``y_full[s q + r] = sum_m x[q - m] K[r + s m]``: phase ``r`` is a correlation of ``x`` with
  the taps ``K[r::s]`` reversed. Only the rows ``q`` that survive the crop are computed, so
  each convolution's output is no larger than its input (which YNNPACK requires), and the
  output channels are padded as :func:`_cpu_features` says.
  """
  n, h, w, _ = x.shape
  c_out = kernel.shape[3]
  q_lo = c // s
  q_hi = [(c + t - 1) // s for t in output_size]
  rows = [q_hi[0] - q_lo + 1, q_hi[1] - q_lo + 1]
  phases = []
  for r_h in range(s):
    for r_w in range(s):
      taps = kernel[r_h::s, r_w::s]
      if taps.shape[0] == 0 or taps.shape[1] == 0:  # a stride longer than the kernel
        phases.append(jnp.zeros((n, *rows, c_out), x.dtype))
        continue
      m_h, m_w = taps.shape[:2]
      padded = _pad_out_features(taps[::-1, ::-1], m_h * m_w * taps.shape[2])
      xp = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (m_h - 1 - q_lo, q_hi[0] - (h - 1), 0),
                                                   (m_w - 1 - q_lo, q_hi[1] - (w - 1), 0), (0, 0, 0)))
      phases.append(_conv(xp, padded)[..., :c_out])
  y = jnp.stack(phases, axis=3).reshape(n, *rows, s, s, c_out)
  y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows[0] * s, rows[1] * s, c_out)
  off = c - s * q_lo
  return y[:, off:off + output_size[0], off:off + output_size[1], :]


def _conv_transpose_auto(x, kernel, s, c, output_size):
  """XLA:CPU: by the kernel's shape (measured forward passes at batch 100, one thread, on the
  layers of every DEPICT config):

  - at most 16 output channels: dilated (MNIST ``deconv1``, 13x13x50 -> 28x28x1: 1.2 ms
    dilated, 2.4 ms subpixel, 5 ms in phases);
  - a kernel size divisible by the stride: subpixel, which has no zero taps then (YTF
    ``deconv2``, 13x13x50 -> 28x28x50, 4x4: 17 ms, 20 ms in phases, 49 ms dilated);
  - otherwise per-phase convolutions (MNIST ``deconv2``, 7x7x50 -> 13x13x50, 5x5: 7.5 ms,
    12 ms subpixel, 17 ms dilated; FRGC's and CMU-PIE's likewise).

  Other backends: the dilated form.
  """
  def cpu(x, kernel):
    k, c_out = kernel.shape[0], kernel.shape[3]
    if c_out <= 16:
      form = _conv_transpose_dilated
    elif k % s == 0:
      form = _conv_transpose_subpixel
    else:
      form = _conv_transpose_phases
    return form(x, kernel, s, c, output_size)

  return _by_backend(cpu, lambda x, kernel: _conv_transpose_dilated(x, kernel, s, c, output_size), x, kernel)


_TRANSPOSED_FORMS = {
    "auto": _conv_transpose_auto,
    "dilated": _conv_transpose_dilated,
    "subpixel": _conv_transpose_subpixel,
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_transpose_adjoint(x, kernel, stride, crop, output_size, method):
  return _TRANSPOSED_FORMS[method](x, kernel, stride, crop, output_size)


def _conv_transpose_adjoint_fwd(x, kernel, stride, crop, output_size, method):
  return _conv_transpose_adjoint(x, kernel, stride, crop, output_size, method), (x, kernel)


def _conv_transpose_adjoint_bwd(stride, crop, output_size, method, residuals, dy):
  """``y = T(x; K)`` is the adjoint of ``S(.; W)`` with ``W = K.transpose(0, 1, 3, 2)``, so
  ``<dy, y> = <S(dy; W), x>``: ``dx = S(dy; W)`` and ``dW = G(dy, x)``."""
  del output_size, method
  x, kernel = residuals
  dx = _strided(dy, kernel.transpose(0, 1, 3, 2), stride, crop)
  dw = _kernel_grad(dy, x, kernel.shape[0], stride, crop)
  return dx, dw.transpose(0, 1, 3, 2)


_conv_transpose_adjoint.defvjp(_conv_transpose_adjoint_fwd, _conv_transpose_adjoint_bwd)


def conv_transpose(
    x: jax.Array, kernel: jax.Array, stride: int, crop: int, output_size: Sequence[int],
    *, method: str = "auto", gradient: str = "adjoint",
) -> jax.Array:
  """Transposed convolution with the semantics of ``ConvTranspose2d`` / Lasagne's ``Deconv2DLayer``.

  ``y[o] = sum_i x[i] K[o + crop - stride * i]`` per spatial axis: the adjoint of a strided
  convolution with padding ``crop`` (:func:`conv`). The output has ``output_size``, which may
  exceed the natural ``(n - 1) * stride + k - 2 * crop`` by less than ``stride`` (output
  padding).

  ``method`` picks how the forward pass is computed; all give the same result up to float32
  rounding:

  - ``"dilated"``: the textbook form, dilate the input by ``stride`` and convolve with the
    flipped kernel.
  - ``"subpixel"``: one stride-1 convolution with ``stride**2`` times the output channels,
    each output phase ``r`` using the taps ``K[r + stride * m]`` (zero taps where the kernel
    does not divide into the stride), then depth-to-space.
  - ``"auto"``: the form measured fastest for the backend. On XLA:CPU, by the kernel's shape
    (:func:`_conv_transpose_auto`): one stride-1 convolution per output phase with only that
    phase's taps and the output channels padded to a multiple of 32 (DEPICT's MNIST
    ``deconv2``, 7x7x50 -> 13x13x50 at batch 100: 7.5 ms against 17 ms dilated and 12 ms
    subpixel), subpixel where the kernel size is a multiple of the stride, dilated for at most
    16 output channels; dilated on other backends.

  ``gradient`` picks the backward pass. ``"autodiff"`` differentiates the forward form.
  ``"adjoint"`` (a ``jax.custom_vjp``, same forward) uses that ``y`` is the adjoint of the
  strided convolution ``S(.; W)`` with ``W = K.transpose(0, 1, 3, 2)``: the input gradient
  is ``S(dy; W)`` and the kernel gradient is ``S``'s kernel gradient with ``dy`` as its input
  and ``x`` as its output gradient; neither convolves over a zero-dilated input, as autodiff
  of either form does for the kernel gradient. Measured on XLA:CPU (jax 0.10, one thread of a
  2-core AVX-512 Xeon, batch 100, ``benchmarks/step_time.py --layers``): ``deconv2``'s kernel
  gradient takes 12 ms against 111 ms by autodiff of the dilated form and 246 ms of the
  subpixel one, its forward and backward pass 33 ms (auto) against 149 ms, and DEPICT's whole
  train step half the time.

  Args:
    x: ``[N, H, W, C_in]``.
    kernel: ``[k, k, C_in, C_out]``.
    stride: the stride of the convolution this transposes.
    crop: rows/columns cropped on each side (the padding of that convolution).
    output_size: ``(H_out, W_out)``.
    method: ``"auto"``, ``"dilated"`` or ``"subpixel"``.
    gradient: ``"adjoint"`` or ``"autodiff"``; both give the same gradients.

  Returns:
    ``[N, H_out, W_out, C_out]``.
  """
  output_size = tuple(int(t) for t in output_size)
  _check_transposed_size(x.shape, kernel.shape[0], stride, crop, output_size)
  if method not in _TRANSPOSED_FORMS:
    raise ValueError(f"unknown method {method!r}")
  if gradient == "autodiff":
    return _TRANSPOSED_FORMS[method](x, kernel, stride, crop, output_size)
  if gradient != "adjoint":
    raise ValueError(f"unknown gradient {gradient!r}")
  return _conv_transpose_adjoint(x, kernel, stride, crop, output_size, method)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_adjoint(x, kernel, stride, padding):
  return _strided(x, kernel, stride, padding)


def _conv_adjoint_fwd(x, kernel, stride, padding):
  return _conv_adjoint(x, kernel, stride, padding), (x, kernel)


def _conv_adjoint_bwd(stride, padding, residuals, du):
  """``dx = T(du; K)`` with ``K = W.transpose(0, 1, 3, 2)``, cropped by ``padding`` to ``x``'s
  size, and ``dW = G(x, du)``."""
  x, kernel = residuals
  dx = _conv_transpose_auto(du, kernel.transpose(0, 1, 3, 2), stride, padding, x.shape[1:3])
  return dx, _kernel_grad(x, du, kernel.shape[0], stride, padding)


_conv_adjoint.defvjp(_conv_adjoint_fwd, _conv_adjoint_bwd)


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int, *, gradient: str = "adjoint") -> jax.Array:
  """Strided convolution ``u[q] = sum_a x[stride * q + a - padding] W[a]`` per spatial axis,
  zero padding: ``nn.Conv(strides=stride, padding=[(padding, padding)] * 2)`` without bias.

  ``gradient="adjoint"`` (a ``jax.custom_vjp``) computes the input gradient as the transposed
  convolution (:func:`conv_transpose`, ``method="auto"``) and the kernel gradient as the
  plain kernel gradient, both in XLA:CPU's fast forms (see the comment above
  :func:`_strided`); the forward pass may differ from ``"autodiff"``'s (the plain
  ``lax.conv``) by float32 rounding where XLA:CPU computes padded channels. DEPICT's MNIST
  ``conv2`` (13x13x50 -> 7x7x50, 5x5, batch 100) forward and backward take 32 ms against
  52 ms with ``"autodiff"``, whose input gradient convolves over the zero-dilated output
  gradient (measured as in :func:`conv_transpose`).

  Args:
    x: ``[N, H, W, C_in]``.
    kernel: ``[k, k, C_in, C_out]``.
    stride, padding: per spatial axis, the same for both.
    gradient: ``"adjoint"`` or ``"autodiff"``; both give the same gradients.

  Returns:
    ``[N, (H + 2 padding - k) // stride + 1, (W + ...) // stride + 1, C_out]``.
  """
  if gradient == "autodiff":
    return _conv(x, kernel, stride, ((padding, padding),) * 2)
  if gradient != "adjoint":
    raise ValueError(f"unknown gradient {gradient!r}")
  return _conv_adjoint(x, kernel, stride, padding)


def _per_channel(v: jax.Array, ndim: int) -> jax.Array:
  """``[C]`` shaped ``[1, ..., 1, C]`` to broadcast against an array of ``ndim`` axes."""
  return v.reshape((1,) * (ndim - 1) + v.shape)


def _channel_sum(x: jax.Array, weights: jax.Array | None) -> jax.Array:
  def plain(x, weights):
    if weights is not None:
      x = x * weights[..., None]
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)))

  def cpu(x, weights):
    flat = x.reshape(-1, x.shape[-1])
    rows = jnp.ones(flat.shape[:1], x.dtype) if weights is None else weights.reshape(-1).astype(x.dtype)
    return jnp.dot(rows, flat, precision=jax.lax.Precision.HIGHEST)

  return _by_backend(cpu, plain, x, weights)


@jax.custom_vjp
def channel_sum(x: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """``[..., C]`` -> ``[C]``: the sum over every axis but the last, each position weighted by
  ``weights`` (the shape of ``x`` without its last axis) where given.

  On XLA:CPU a product with the vector of weights (or ones): XLA:CPU reduces over the major
  axes of an array on one thread, where a matrix product runs on every core
  (``[100, 28, 28, 32]``: 6.0 ms as a reduction, 0.7 ms as a product; 2-core Xeon, jax 0.10).
  Other backends: ``jnp.sum``. The gradient (with respect to ``x``; ``weights`` are
  constants) is the broadcast of the output's."""
  return _channel_sum(x, weights)


def _channel_sum_fwd(x, weights):
  return _channel_sum(x, weights), (x.shape, weights)


def _channel_sum_bwd(residuals, g):
  shape, weights = residuals
  dx = jnp.broadcast_to(_per_channel(g, len(shape)), shape)
  if weights is not None:
    dx = dx * weights[..., None].astype(g.dtype)
  return dx, None if weights is None else jnp.zeros_like(weights)


channel_sum.defvjp(_channel_sum_fwd, _channel_sum_bwd)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
  """``y + bias`` for ``y`` ``[..., C]`` and ``bias`` ``[C]``, the bias gradient summed by
  :func:`channel_sum`: autodiff's is the reduction over the major axes that XLA:CPU runs on
  one thread (``ics``' first convolution's, ``[100, 28, 28, 32]``: 3.1 ms a step)."""
  return y + _per_channel(bias, y.ndim)


def _add_bias_fwd(y, bias):
  return add_bias(y, bias), None


def _add_bias_bwd(_, dy):
  return dy, channel_sum(dy)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def _kernel_and_bias(module: nn.Module, in_features: int) -> tuple[jax.Array, jax.Array]:
  """``module``'s Xavier-initialised kernel ``[k, k, in, features]`` and zero bias ``[features]``."""
  k, features = module.kernel_size, module.features
  kernel = module.param("kernel", xavier, (k, k, in_features, features))
  bias = module.param("bias", nn.initializers.zeros, (features,))
  return kernel, bias


class StridedConv(nn.Module):
  """A strided convolution layer (:func:`conv`) with a bias: ``nn.Conv`` with square kernel,
  stride and zero padding, Xavier-initialised, with the same parameters (``kernel``
  ``[k, k, in, out]`` and ``bias``) and the adjoint gradient by default."""

  features: int
  kernel_size: int
  stride: int
  padding: int
  gradient: str = "adjoint"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = _kernel_and_bias(self, x.shape[-1])
    y = conv(x, kernel, self.stride, self.padding, gradient=self.gradient)
    # Autodiff's bias gradient, not add_bias's: in DEPICT's step XLA fuses that reduction with
    # the leaky ReLU's gradient, and add_bias made the step 6% slower (BENCHMARKS.md).
    return y + _per_channel(bias, y.ndim)


class TransposedConv(nn.Module):
  """A transposed convolution layer (:func:`conv_transpose`) with a bias.

  The kernel is stored as ``[kh, kw, in, out]``: ``y[o] = sum_i x[i] K[o + crop - stride*i]``.
  """

  features: int
  kernel_size: int
  stride: int
  crop: int
  output_size: tuple[int, int]
  method: str = "auto"
  gradient: str = "adjoint"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel, bias = _kernel_and_bias(self, x.shape[-1])
    y = conv_transpose(x, kernel, self.stride, self.crop, self.output_size, method=self.method,
                       gradient=self.gradient)
    return y + _per_channel(bias, y.ndim)


def same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
  """The ``(low, high)`` zero padding of ``padding="SAME"`` (TensorFlow's, Flax's): the output
  has ``ceil(size / stride)`` positions and the odd row of padding, if any, goes at the end."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel_size - size, 0)
  return total // 2, total - total // 2


def _windows(x: jax.Array, size: int) -> jax.Array:
  """``[N, H, W, C]`` (``H``, ``W`` multiples of ``size``) as ``[N, H/size, W/size, C, size**2]``,
  each window's pixels in row-major order."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // size, size, w // size, size, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(n, h // size, w // size, c, size * size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, size: int) -> jax.Array:
  return jnp.max(_windows(x, size), axis=-1)


def _max_and_first_argmax(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
  """``(jnp.max(x, axis), jnp.argmax(x, axis))`` in one reduction over ``x`` (``jnp.argmax``'s
  reduction finds the maximum too but drops it, so computing both reads ``x`` twice)."""
  axis = axis % x.ndim
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, axis)

  def first_max(a, b):
    (a_value, a_index), (b_value, b_index) = a, b
    pick_a = (a_value > b_value) | ((a_value == b_value) & (a_index < b_index)) | jnp.isnan(a_value)
    return jnp.where(pick_a, a_value, b_value), jnp.where(pick_a, a_index, b_index)

  init = (jnp.array(-jnp.inf, x.dtype), jnp.array(jnp.iinfo(jnp.int32).max, jnp.int32))
  return jax.lax.reduce((x, index), init, first_max, (axis,))


def _window_max_fwd(x, size):
  value, first_max = _max_and_first_argmax(_windows(x, size), -1)
  return value, first_max.astype(jnp.int8 if size * size < 128 else jnp.int32)


def _window_max_bwd(size, first_max, dy):
  """The whole gradient of a window to its first maximum in row-major order, as
  select-and-scatter and PyTorch's ``MaxPool2d`` give it. Its position is taken in the
  forward pass: compared with the maximum here, a recomputed input could differ from the
  forward one by rounding (XLA fuses the producers anew) and miss it."""
  n, h_out, w_out, c = dy.shape
  positions = jnp.arange(size * size, dtype=first_max.dtype)[None, None, None, None, :]
  dx = jnp.where(positions == first_max[..., None], dy[..., None], jnp.zeros((), dy.dtype))
  dx = dx.reshape(n, h_out, w_out, c, size, size).transpose(0, 1, 4, 2, 5, 3)
  return (dx.reshape(n, h_out * size, w_out * size, c),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def max_pool_same(x: jax.Array, size: int = 2) -> jax.Array:
  """``flax.linen.max_pool(x, (size, size), strides=(size, size), padding="SAME")`` of
  ``[N, H, W, C]``: the same output and gradient (a window's whole gradient to its first
  maximum, which matters where backgrounds are flat and windows hold equal values), computed
  as a max over the reshaped windows and, backwards, a one-hot of each window's first
  maximum found in the forward pass. XLA:CPU runs that about 15x faster than
  ``max_pool``'s select-and-scatter gradient: ``ics``' first pooling (batch 256,
  28x28x32 after a ReLU) forward and backward in 5 ms against 77 ms (2-core Xeon, jax 0.10).
  """
  pads = [same_padding(n, size, size) for n in x.shape[1:3]]
  if any(p != (0, 0) for p in pads):
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  return _window_max(x, size)


@jax.custom_vjp
def _normalize(x, mean, multiplier, bias):
  mean, multiplier, bias = (_per_channel(v, x.ndim) for v in (mean, multiplier, bias))
  return (x - mean) * multiplier + bias


def _normalize_fwd(x, mean, multiplier, bias):
  return _normalize(x, mean, multiplier, bias), (x, mean, multiplier)


def _normalize_bwd(residuals, dy):
  """The per-channel gradients as :func:`channel_sum`'s instead of autodiff's reductions."""
  x, mean, multiplier = residuals
  d_bias = channel_sum(dy)
  d_multiplier = channel_sum(dy * (x - _per_channel(mean, x.ndim)))
  return dy * _per_channel(multiplier, x.ndim), -d_bias * multiplier, d_multiplier, d_bias


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
  """``flax.linen.BatchNorm`` over every axis but the last, its statistics and gradients
  summed by :func:`channel_sum`: on XLA:CPU, forward and backward at ``[100, 28, 28, 32]`` in
  3.4 ms against Flax's 14.8 ms (PyTorch's ``BatchNorm2d``: 3.3 ms; 2-core Xeon, jax 0.10).

  The same function, parameters (``scale``, ``bias``) and running averages
  (``batch_stats``: ``mean``, ``var``), initial values and update rule as Flax's layer with
  its defaults (``use_fast_variance``: ``var = E[x^2] - E[x]^2``, clipped at 0), up to
  float32 rounding. ``mask`` (broadcastable to ``x`` with a last axis of 1, e.g. ``[B, 1, 1,
  1]``) leaves the positions where it is False out of the statistics; the running averages
  are not updated while initialising.
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    features = x.shape[-1]
    x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      if mask is None:
        weights, count = None, math.prod(x.shape[:-1])
      else:
        rows = jnp.asarray(mask, x.dtype)[..., 0]
        weights = jnp.broadcast_to(rows, x.shape[:-1])
        count = jnp.sum(rows) * (math.prod(x.shape[:-1]) // rows.size)  # each row repeated alike
      mean = channel_sum(x, weights) / count
      var = jnp.maximum(0.0, channel_sum(x * x, weights) / count - mean * mean)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return _normalize(x, mean, jax.lax.rsqrt(var + self.epsilon) * scale, bias)


class SameConv(nn.Module):
  """``flax.linen.Conv(features, (k, k), strides=stride, padding="SAME")`` with the gradients
  of :func:`conv` (XLA:CPU's fast forms): the same parameters (``kernel`` ``[k, k, in, out]``,
  ``bias``), initial values (Xavier) and output up to float32 rounding. Where ``SAME`` pads
  unevenly (a stride-2 layer on an even size pads only the end), the odd row is padded
  explicitly before the convolution."""

  features: int
  kernel_size: int
  stride: int = 1
  gradient: str = "adjoint"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x, kernel, bias = promote_dtype(x, *_kernel_and_bias(self, x.shape[-1]))
    pads = [same_padding(size, self.kernel_size, self.stride) for size in x.shape[1:3]]
    common = min(min(p) for p in pads)
    if any(p != (common, common) for p in pads):
      x = jnp.pad(x, ((0, 0), *((lo - common, hi - common) for lo, hi in pads), (0, 0)))
    return add_bias(conv(x, kernel, self.stride, common, gradient=self.gradient), bias)


class SameConvTranspose(nn.Module):
  """``flax.linen.ConvTranspose(features, (k, k), strides=stride, padding="SAME")`` (its
  default ``transpose_kernel=False``) computed by :func:`conv_transpose`: the same parameters
  and output up to float32 rounding, ``size * stride`` positions per axis.

  Flax's layer correlates the zero-dilated input, padded ``(a, b)`` with ``a`` as
  ``lax.conv_transpose`` picks it, with the kernel as stored: ``y[o] = sum_i x[i] K[s i + a - o]``.
  That is :func:`conv_transpose` (``y[o] = sum_i x[i] K'[o + c - s i]``) with the kernel
  flipped, ``K' = K[::-1, ::-1]``, and the crop ``c = k - 1 - a``, cut at ``size * stride``
  where the transposed convolution's natural size is larger."""

  features: int
  kernel_size: int
  stride: int = 1
  method: str = "auto"
  gradient: str = "adjoint"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.kernel_size, self.stride
    x, kernel, bias = promote_dtype(x, *_kernel_and_bias(self, x.shape[-1]))
    pad_low = k - 1 if s > k - 1 else -(-(k + s - 2) // 2)  # lax.conv_transpose's "SAME"
    crop = k - 1 - pad_low
    target = [size * s for size in x.shape[1:3]]
    natural = [(size - 1) * s + k - 2 * crop for size in x.shape[1:3]]
    size = [max(t, n) for t, n in zip(target, natural)]
    y = conv_transpose(x, kernel[::-1, ::-1], s, crop, size, method=self.method, gradient=self.gradient)
    return add_bias(y[:, :target[0], :target[1], :], bias)


class ConvAutoencoder(nn.Module):
  """DEPICT's convolutional autoencoder with the softmax clustering layer on top (Fig. 2).

  ``__call__(x, train)`` runs one pathway: with ``train=True`` the noisy encoder and the
  decoder (whose layers are reconstruction targets), with ``train=False`` the clean encoder.
  """

  image_shape: tuple[int, int, int]
  convs: Sequence[ConvSpec]
  num_clusters: int
  dropout_rates: Sequence[float] = (0.1, 0.1, 0.1)
  negative_slope: float = 0.01
  transposed_conv: str = "auto"  # or "dilated", "subpixel": see conv_transpose
  conv_gradient: str = "adjoint"  # or "autodiff", for every conv layer: see conv, conv_transpose

  def setup(self):
    self.encoder = ConvEncoder(self.convs, self.num_clusters, self.dropout_rates, self.negative_slope,
                               self.conv_gradient)
    self.decoder = ConvDecoder(
        self.convs, tuple(encoder_shapes(self.image_shape, self.convs)), self.negative_slope,
        self.transposed_conv, self.conv_gradient,
    )
    # Softmax layer (eq. 1); initialised from k-means centroids once clusters exist.
    self.head = nn.Dense(self.num_clusters, kernel_init=xavier, name="head")

  def encode(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
    return self.encoder(x, train=train)

  def decode(self, z: jax.Array) -> list[jax.Array]:
    return self.decoder(z)

  def logits(self, z: jax.Array) -> jax.Array:
    return self.head(z)

  def __call__(self, x: jax.Array, *, train: bool = False):
    encoded = self.encode(x, train=train)
    return encoded, self.decode(encoded[-1]), self.logits(encoded[-1])


# DEC's initialisation (DEC-keras for MNIST): uniform in [-sqrt(1/fan_in), sqrt(1/fan_in)].
dec_uniform = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class MLPAutoencoder(nn.Module):
  """DEC's fully connected autoencoder ``d-500-500-2000-10`` (Xie et al. 2016, section 4.3).

  ReLU on every hidden layer; the embedding and the reconstruction are linear. Images are
  flattened on the way in and reshaped to ``image_shape`` on the way out.
  """

  image_shape: tuple[int, ...]
  hidden: Sequence[int] = (500, 500, 2000)
  embedding_dim: int = 10

  def setup(self):
    self.encoder_layers = [nn.Dense(h, kernel_init=dec_uniform) for h in self.hidden] + [
        nn.Dense(self.embedding_dim, kernel_init=dec_uniform)]
    self.decoder_layers = [nn.Dense(h, kernel_init=dec_uniform) for h in reversed(self.hidden)] + [
        nn.Dense(math.prod(self.image_shape), kernel_init=dec_uniform)]

  def encode(self, x: jax.Array) -> jax.Array:
    h = x.reshape(x.shape[0], -1)
    for layer in self.encoder_layers[:-1]:
      h = jax.nn.relu(layer(h))
    return self.encoder_layers[-1](h)

  def decode(self, z: jax.Array) -> jax.Array:
    h = z
    for layer in self.decoder_layers[:-1]:
      h = jax.nn.relu(layer(h))
    return self.decoder_layers[-1](h).reshape(z.shape[0], *self.image_shape)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    z = self.encode(x)
    return z, self.decode(z)


# ----------------------------------------------------------------------------- paper 003


def pooled_sizes(height: int, width: int, n_pools: int) -> list[tuple[int, int]]:
  """``(H, W)`` of the input and after each of ``n_pools`` 2x2 max-pools of stride 2 with
  zero padding ("SAME"): each pool maps ``n`` to ``ceil(n / 2)``."""
  sizes = [(height, width)]
  for _ in range(n_pools):
    height, width = -(-height // 2), -(-width // 2)
    sizes.append((height, width))
  return sizes


def _row_mask(mask: jax.Array | None, h: jax.Array) -> jax.Array | None:
  """A per-sample mask ``[B]`` shaped ``[B, 1, ...]`` to broadcast against ``h``."""
  return None if mask is None else mask.reshape(mask.shape[0], *([1] * (h.ndim - 1)))


class IcsAutoencoder(nn.Module):
  """The deep convolutional autoencoder (DCA) of paper 003 (Das, Ghosh and Bhowmick, WACV
  2019, Sec. 3.1 and 4.3, Fig. 2).

  Encoder, per entry of ``features``: a 3x3 convolution of stride 1 with zero padding, batch
  normalisation, ReLU and a 2x2 max-pool of stride 2 with zero padding; then a fully
  connected layer to the embedding ``z`` (linear, no batch norm: the Student-t layer works
  on it, as in DEC). Decoder: a fully connected layer (batch norm, ReLU) shaped as the last
  pooled map, then per encoder layer a 3x3 transposed convolution of stride 2 that brings
  the map back to the encoder's size at that level (:class:`TransposedConv`, cropping where
  the encoder's padding added a row or column), batch norm and ReLU on all but the last,
  whose output is linear: the images are in ``[-1, 1]`` and the paper feeds standardised
  (unbounded) ones.

  Images of any size work: 8x8 digits pool to 4, 2, 1 and decode 1 -> 2 -> 4 -> 8; 28x28
  pool to 14, 7, 4 and decode 4 -> 7 -> 14 -> 28. Max-pooling pads with -inf rather than 0,
  which is the same after a ReLU. Xavier initialisation everywhere (paper Sec. 4.3).

  Batch-norm statistics live in the ``batch_stats`` collection. ``train=True`` normalises
  by the batch's statistics (apply with ``mutable=["batch_stats"]``); ``mask`` ``[B]``
  leaves the rows where it is False (padding) out of them. ``train=False`` uses the
  running averages.
  """

  image_shape: tuple[int, int, int]
  features: Sequence[int] = (32, 64, 128)
  embedding_dim: int = 10
  # "dilated" (on XLA:CPU at least as fast as "auto" on these small 3x3 layers), "auto" or
  # "subpixel": see conv_transpose.
  transposed_conv: str = "dilated"
  momentum: float = 0.99  # running averages of batch norm (TensorFlow's default)
  conv_gradient: str = "adjoint"  # or "autodiff": see conv_transpose

  def setup(self):
    height, width, channels = self.image_shape
    n = len(self.features)
    sizes = pooled_sizes(height, width, n)
    norm = lambda: BatchNorm(momentum=self.momentum)
    self.convs = [SameConv(f, 3, gradient=self.conv_gradient) for f in self.features]
    self.conv_norms = [norm() for _ in self.features]
    self.embedding = nn.Dense(self.embedding_dim, kernel_init=xavier)
    top_h, top_w = sizes[-1]
    self.top_shape = (top_h, top_w, self.features[-1])
    self.dense = nn.Dense(top_h * top_w * self.features[-1], kernel_init=xavier)
    self.dense_norm = norm()
    # deconvs[l] maps level l + 1 to level l (l = n-1 ... 0); level 0 is the image.
    out_channels = [channels, *self.features[:-1]]
    self.deconvs = [
        TransposedConv(out_channels[l], 3, 2, 1, output_size=sizes[l], method=self.transposed_conv,
                       gradient=self.conv_gradient)
        for l in range(n)
    ]
    self.deconv_norms = [norm() for _ in range(1, n)]  # deconv_norms[l - 1] follows deconvs[l]

  def encode(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
    """``[B, H, W, C]`` images -> ``[B, embedding_dim]`` embeddings."""
    h = x
    for conv, norm in zip(self.convs, self.conv_norms):
      h = norm(conv(h), use_running_average=not train, mask=_row_mask(mask, h))
      h = max_pool_same(nn.relu(h), 2)
    return self.embedding(h.reshape(h.shape[0], -1))

  def decode(self, z: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
    """``[B, embedding_dim]`` -> ``[B, H, W, C]`` reconstructed images (linear output)."""
    h = self.dense(z)
    h = nn.relu(self.dense_norm(h, use_running_average=not train, mask=_row_mask(mask, h)))
    h = h.reshape(z.shape[0], *self.top_shape)
    for level in reversed(range(len(self.deconvs))):
      h = self.deconvs[level](h)
      if level > 0:
        h = self.deconv_norms[level - 1](h, use_running_average=not train, mask=_row_mask(mask, h))
        h = nn.relu(h)
    return h

  def __call__(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None):
    z = self.encode(x, train=train, mask=mask)
    return z, self.decode(z, train=train, mask=mask)


# ----------------------------------------------------------------------------- paper 002


class SpectralMLP(nn.Module):
  """SpectralNet's network without its orthonorm layer: fully connected ReLU layers, then a
  layer of width ``num_clusters`` (Shaham et al. 2018; paper 002 Sec. 3.2 and 4.3, "four
  fully connected layers" with ReLU).

  The orthonormalization (:func:`jaxclust.spectral.cholesky_orthonormalize`, paper 002
  eq. 17-18) is left to the caller, who decides when its weights are recomputed and whether
  gradients flow through them. ``hidden`` defaults to the MNIST architecture of
  SpectralNet's code (1024-1024-512), which DSCDAN's code reuses for its clustering network.
  The last layer is linear by default (paper 002: the orthonorm layer "acts as a linear
  layer with K outputs"); SpectralNet's code puts a tanh there (``output_activation=jnp.tanh``)
  and DSCDAN's code a softmax. Xavier (Glorot uniform) initialisation and zero biases, the
  Keras defaults both codes ran with. Inputs ``[B, ...]`` are flattened.

  Returns ``[B, num_clusters]``, the inputs ``Y~`` of the orthonorm layer.
  """

  num_clusters: int
  hidden: Sequence[int] = (1024, 1024, 512)
  output_activation: Callable[[jax.Array], jax.Array] | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x.reshape(x.shape[0], -1)
    for layer, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, kernel_init=xavier, name=f"hidden{layer + 1}")(h))
    y = nn.Dense(self.num_clusters, kernel_init=xavier, name="output")(h)
    return y if self.output_activation is None else self.output_activation(y)


class GlobalDiscriminator(nn.Module):
  """The global mutual-information discriminator ``T_1(x, z)`` of paper 002 eq. 10.

  Concatenates the flattened features of ``x`` with the code ``z`` and scores the pair with
  fully connected ReLU layers and a linear output: a logit, to feed
  :func:`jaxclust.losses.jsd_mutual_information` (which applies the sigmoid of eq. 9 through
  softplus). ``hidden`` defaults to DSCDAN's code, three layers as wide as the latent code
  (120); there the "features" of ``x`` are the code itself (pairs ``[z, z]`` against
  ``[z, shuffled z]``). Deep InfoMax scores (encoder feature map, code) pairs with 512-512.

  ``__call__(features [B, ...], z [B, D])`` returns ``[B]`` scores.
  """

  hidden: Sequence[int] = (120, 120, 120)

  @nn.compact
  def __call__(self, features: jax.Array, z: jax.Array) -> jax.Array:
    h = jnp.concatenate([features.reshape(features.shape[0], -1), z.reshape(z.shape[0], -1)], axis=-1)
    for layer, width in enumerate(self.hidden):
      h = nn.relu(nn.Dense(width, kernel_init=xavier, name=f"hidden{layer + 1}")(h))
    return nn.Dense(1, kernel_init=xavier, name="score")(h)[:, 0]


class LocalDiscriminator(nn.Module):
  """The local mutual-information discriminator ``T_2(C_ij, z)`` of paper 002 eq. 10, Fig. 3.

  The code ``z`` is replicated over the ``H x W`` positions of the encoder's middle feature
  map ``C`` and concatenated with it; 1x1 convolutions (ReLU, then a linear one to a single
  channel) score every position: Deep InfoMax's concat-and-convolve architecture. A 1x1
  convolution is a dense layer on the channels, applied at every position; the first one is
  computed as ``C W_c + z W_z`` (its kernel split between the rows that meet ``C`` and those
  that meet ``z``), which equals the convolution of the concatenation without building
  ``z`` replicated over ``H x W``. ``hidden`` defaults to DSCDAN's code (its local
  discriminator, left commented out there: three layers of 120 units per position); a single
  1x1 convolution would be linear, ``a . C_ij + b . z``, and could not tell positive pairs
  from negative ones, whose marginals are the same.

  ``__call__(feature_map [B, H, W, C], z [B, D])`` returns ``[B, H, W]`` scores.
  """

  hidden: Sequence[int] = (120, 120, 120)

  @nn.compact
  def __call__(self, feature_map: jax.Array, z: jax.Array) -> jax.Array:
    if not self.hidden:
      raise ValueError("LocalDiscriminator needs at least one hidden layer")
    width = self.hidden[0]
    h = nn.Dense(width, kernel_init=xavier, name="hidden1_features")(feature_map)
    h_z = nn.Dense(width, use_bias=False, kernel_init=xavier, name="hidden1_latent")(z)
    h = nn.relu(h + h_z[:, None, None, :])
    for layer, width in enumerate(self.hidden[1:], start=2):
      h = nn.relu(nn.Dense(width, kernel_init=xavier, name=f"hidden{layer}")(h))
    return nn.Dense(1, kernel_init=xavier, name="score")(h)[..., 0]
