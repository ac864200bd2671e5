"""Flax (Linen) networks. Encoders and decoders return every layer's activation, because
DEPICT's reconstruction loss compares them layer by layer.

Images are channels-last, ``[N, H, W, C]``.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
    x = nn.Dropout(self.dropout_rates[0], deterministic=not train)(x)
    activations = [x]
    h = x
    for layer, spec in enumerate(self.convs):
      h = nn.Conv(
          spec.features,
          (spec.kernel_size, spec.kernel_size),
          strides=(spec.stride, spec.stride),
          padding=[(spec.padding, spec.padding)] * 2,
          kernel_init=xavier,
          name=f"conv{layer + 1}",
      )(h)
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
  transposed_conv: str = "dilated"  # or "subpixel": see conv_transpose

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
          out_c, spec.kernel_size, spec.stride, spec.padding,
          output_size=(out_h, out_w), method=self.transposed_conv, name=f"deconv{layer + 1}",
      )(h)
      h = jnp.tanh(h) if layer == 0 else nn.leaky_relu(h, self.negative_slope)
      reconstructed.append(h)
    return reconstructed[::-1]


def conv_transpose(
    x: jax.Array, kernel: jax.Array, stride: int, crop: int, output_size: Sequence[int],
    *, method: str = "dilated",
) -> jax.Array:
  """Transposed convolution with the semantics of ``ConvTranspose2d`` / Lasagne's ``Deconv2DLayer``.

  ``y[o] = sum_i x[i] K[o + crop - stride * i]`` per spatial axis: the adjoint of a strided
  convolution with padding ``crop``. The output has ``output_size``, which may exceed the
  natural ``(n - 1) * stride + k - 2 * crop`` by less than ``stride`` (output padding).

  ``method="subpixel"`` computes it as one stride-1 convolution with ``stride**2`` times the
  output channels followed by depth-to-space: output phase ``r`` uses the kernel taps
  ``K[r + stride * m]``. It skips the multiplications by the zeros that ``"dilated"`` (the
  textbook form: dilate the input, convolve with the flipped kernel) spends most of its time
  on, which XLA:CPU does not skip.

  Args:
    x: ``[N, H, W, C_in]``.
    kernel: ``[k, k, C_in, C_out]``.
    stride: the stride of the convolution this transposes.
    crop: rows/columns cropped on each side (the padding of that convolution).
    output_size: ``(H_out, W_out)``.
    method: ``"subpixel"`` or ``"dilated"``; both give the same result.

  Returns:
    ``[N, H_out, W_out, C_out]``.
  """
  k, s, c = kernel.shape[0], stride, crop
  for axis, target in enumerate(output_size):
    natural = (x.shape[1 + axis] - 1) * s + k - 2 * c
    if not 0 <= target - natural < s:
      raise ValueError(f"cannot reach size {target} from {x.shape[1 + axis]} with {k=}, {s=}, crop={c}")
  dims = ("NHWC", "HWIO", "NHWC")
  if method == "dilated":
    pads = [(k - 1 - c, k - 1 - c + t - ((x.shape[1 + a] - 1) * s + k - 2 * c))
            for a, t in enumerate(output_size)]
    return jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), pads, lhs_dilation=(s, s),
                                        dimension_numbers=dims)
  if method != "subpixel":
    raise ValueError(f"unknown method {method!r}")
  m = -(-k // s)  # taps per phase
  c_in, c_out = kernel.shape[2], kernel.shape[3]
  padded = jnp.pad(kernel, ((0, m * s - k), (0, m * s - k), (0, 0), (0, 0)))
  # [m, s, m, s, C_in, C_out] with tap j = m_idx * s + r; flip the taps for correlation.
  phases = padded.reshape(m, s, m, s, c_in, c_out)[::-1, :, ::-1]
  weights = phases.transpose(0, 2, 4, 1, 3, 5).reshape(m, m, c_in, s * s * c_out)
  y = jax.lax.conv_general_dilated(x, weights, (1, 1), [(m - 1, m - 1)] * 2, dimension_numbers=dims)
  n, qh, qw, _ = y.shape
  y = y.reshape(n, qh, qw, s, s, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(n, qh * s, qw * s, c_out)
  out_h, out_w = output_size
  short_h, short_w = max(0, c + out_h - qh * s), max(0, c + out_w - qw * s)
  if short_h or short_w:  # output padding beyond the full transposed output is zeros
    y = jnp.pad(y, ((0, 0), (0, short_h), (0, short_w), (0, 0)))
  return y[:, c:c + out_h, c:c + out_w, :]


class TransposedConv(nn.Module):
  """A transposed convolution layer (:func:`conv_transpose`) with a bias.

  The kernel is stored as ``[kh, kw, in, out]``: ``y[o] = sum_i x[i] K[o + crop - stride*i]``.
  """

  features: int
  kernel_size: int
  stride: int
  crop: int
  output_size: tuple[int, int]
  method: str = "dilated"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", xavier, (k, k, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = conv_transpose(x, kernel, self.stride, self.crop, self.output_size, method=self.method)
    return y + bias[None, None, None, :]


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
  transposed_conv: str = "dilated"

  def setup(self):
    self.encoder = ConvEncoder(self.convs, self.num_clusters, self.dropout_rates, self.negative_slope)
    self.decoder = ConvDecoder(
        self.convs, tuple(encoder_shapes(self.image_shape, self.convs)), self.negative_slope,
        self.transposed_conv,
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
  transposed_conv: str = "dilated"  # or "subpixel": see conv_transpose
  momentum: float = 0.99  # running averages of batch norm (TensorFlow's default)

  def setup(self):
    height, width, channels = self.image_shape
    n = len(self.features)
    sizes = pooled_sizes(height, width, n)
    norm = lambda: nn.BatchNorm(momentum=self.momentum)
    self.convs = [nn.Conv(f, (3, 3), padding="SAME", kernel_init=xavier) for f in self.features]
    self.conv_norms = [norm() for _ in self.features]
    self.embedding = nn.Dense(self.embedding_dim, kernel_init=xavier)
    top_h, top_w = sizes[-1]
    self.top_shape = (top_h, top_w, self.features[-1])
    self.dense = nn.Dense(top_h * top_w * self.features[-1], kernel_init=xavier)
    self.dense_norm = norm()
    # deconvs[l] maps level l + 1 to level l (l = n-1 ... 0); level 0 is the image.
    out_channels = [channels, *self.features[:-1]]
    self.deconvs = [
        TransposedConv(out_channels[l], 3, 2, 1, output_size=sizes[l], method=self.transposed_conv)
        for l in range(n)
    ]
    self.deconv_norms = [norm() for _ in range(1, n)]  # deconv_norms[l - 1] follows deconvs[l]

  def encode(self, x: jax.Array, *, train: bool = False, mask: jax.Array | None = None) -> jax.Array:
    """``[B, H, W, C]`` images -> ``[B, embedding_dim]`` embeddings."""
    h = x
    for conv, norm in zip(self.convs, self.conv_norms):
      h = norm(conv(h), use_running_average=not train, mask=_row_mask(mask, h))
      h = nn.max_pool(nn.relu(h), (2, 2), strides=(2, 2), padding="SAME")
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
