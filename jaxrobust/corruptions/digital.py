"""Digital corruptions: brightness, contrast, elastic_transform, pixelate,
jpeg_compression, and the extra corruption saturate.

The HSV-based ones (brightness, saturate) use closed forms that equal the
reference's ``skimage.color.rgb2hsv`` -> edit -> ``hsv2rgb`` round trip without
computing hue: with hue and saturation fixed every RGB channel is proportional
to the value V = max(R, G, B), and with hue and value fixed every channel is
V - S V w for a per-channel weight w = (V - channel) / (V - min(R, G, B)).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.corruptions import _common
from jaxrobust.corruptions import _ops


def brightness(images, rng, severity, *, table=None):
  """Brightness: add c to the HSV value channel (clipped to 1).

  With V = max over channels, V' = min(V + c, 1), every channel is scaled by
  V' / V; black pixels (V = 0, zero saturation) become grey V'. This is
  exactly the reference's HSV round trip. For C = 1, out = min(x + c, 1).
  Deterministic: ``rng`` is unused.

  Args:
    images: [B, H, W, C] float in [0, 1].
    rng: PRNG key (unused).
    severity: static int in 1..5.
    table: None (by image size), 'cifar' or 'imagenet'.

  Returns:
    Corrupted images, same shape and dtype.
  """
  del rng
  x, c, _ = _common.setup('brightness', images, severity, table)
  v = x.max(axis=-1, keepdims=True)
  v_new = jnp.minimum(v + c, 1.0)
  y = jnp.where(v > 0, x * (v_new / jnp.where(v > 0, v, 1.0)), v_new)
  return _common.finish(y, images)


def contrast(images, rng, severity, *, table=None):
  """Contrast: out = (x - mean) c + mean, mean per image and channel.

  Deterministic: ``rng`` is unused. Args and Returns as for ``brightness``.
  """
  del rng
  x, c, _ = _common.setup('contrast', images, severity, table)
  mean = x.mean(axis=(1, 2), keepdims=True)
  return _common.finish((x - mean) * c + mean, images)


def saturate(images, rng, severity, *, table=None):
  """Saturation change: HSV saturation S' = clip(S a + b, 0, 1).

  Severity sets (a, b); severities 1-2 desaturate, 3-5 oversaturate. For a
  pixel with V > min channel, each channel becomes V - (S' V / (V - min)) (V -
  channel). Grey pixels have hue 0 (red) in skimage's convention, so with
  b > 0 they turn reddish, (V, V (1 - S'), V (1 - S')), exactly as in the
  reference. For C = 1 there is no saturation and the image is returned
  unchanged. Deterministic: ``rng`` is unused.

  Args and Returns as for ``brightness``.
  """
  del rng
  x, (a, b), _ = _common.setup('saturate', images, severity, table)
  if x.shape[-1] == 1:
    return _common.finish(x, images)
  v = x.max(axis=-1, keepdims=True)
  delta = v - x.min(axis=-1, keepdims=True)
  s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
  s_new = jnp.clip(s * a + b, 0.0, 1.0)
  chromatic = v - s_new * v * (v - x) / jnp.where(delta > 0, delta, 1.0)
  grey = v * jnp.concatenate([jnp.ones_like(s_new), 1 - s_new, 1 - s_new], axis=-1)
  return _common.finish(jnp.where(delta > 0, chromatic, grey), images)


def pixelate(images, rng, severity, *, table=None):
  """Pixelation: box-filter downscale by factor c, then box-filter upscale.

  ``Image.resize((int(H c), int(W c)), BOX)`` followed by a resize back,
  reproduced with the exact Pillow BOX weights as one constant matrix per axis
  (``_ops.pil_box_matrix``), in float without Pillow's 8-bit rounding between
  the two resizes. Deterministic: ``rng`` is unused.

  Args and Returns as for ``brightness``.
  """
  del rng
  x, c, _ = _common.setup('pixelate', images, severity, table)
  _, h, w, _ = x.shape

  def axis_matrix(n):
    small = max(int(n * c), 1)
    return _ops.pil_box_matrix(small, n) @ _ops.pil_box_matrix(n, small)

  return _common.finish(_ops.apply_axis_matrices(x, axis_matrix(h), axis_matrix(w)), images)


# ---------------------------------------------------------------------------
# JPEG.
# ---------------------------------------------------------------------------

# The example quantisation tables of the JPEG standard (ITU T.81, Annex K),
# which libjpeg (and therefore Pillow) scales by quality.
_LUMA_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99]], np.int64)
_CHROMA_TABLE = np.full((8, 8), 99, np.int64)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99],
                         [47, 66, 99, 99]]


def quantization_table(base, quality):
  """libjpeg's ``jpeg_quality_scaling``: scale a base table by quality 1..100.

  scale = 5000 // q for q < 50, else 200 - 2 q; entries
  (base * scale + 50) // 100 clipped to [1, 255] (baseline JPEG).
  """
  q = min(max(int(quality), 1), 100)
  scale = 5000 // q if q < 50 else 200 - 2 * q
  return np.clip((base * scale + 50) // 100, 1, 255).astype(np.float64)


def _dct_matrix():
  """Orthonormal 8-point DCT-II, which is JPEG's forward DCT per axis."""
  n = np.arange(8)
  d = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16) * np.sqrt(2 / 8)
  d[0] /= np.sqrt(2)
  return d


def _quantize_plane(plane, table):
  """Blockwise DCT, quantisation with ``table``, dequantisation and inverse DCT.

  Args:
    plane: [B, H, W] level-shifted samples, H and W multiples of 8.
    table: [8, 8] quantisation table.

  Returns:
    The reconstructed plane.
  """
  b, h, w = plane.shape
  d = jnp.asarray(_dct_matrix(), jnp.float32)
  q = jnp.asarray(table, jnp.float32)
  blocks = plane.reshape(b, h // 8, 8, w // 8, 8)
  coef = jnp.einsum('uy,bnymx,vx->bnumv', d, blocks, d, precision=_ops.HIGHEST)
  coef = jnp.round(coef / q[:, None, :]) * q[:, None, :]
  blocks = jnp.einsum('uy,bnumv,vx->bnymx', d, coef, d, precision=_ops.HIGHEST)
  return blocks.reshape(b, h, w)


def _fancy_upsample(plane):
  """2x upsampling with libjpeg's 'fancy' triangular filter, per axis.

  Output sample 2i is 3/4 c[i] + 1/4 c[i-1] and 2i+1 is 3/4 c[i] + 1/4 c[i+1],
  with the edge sample repeated beyond the border.
  """
  def up(p, axis):
    n = p.shape[axis]
    prev = jnp.take(p, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)
    nxt = jnp.take(p, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
    even = 0.75 * p + 0.25 * prev
    odd = 0.75 * p + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(p.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)
  return up(up(plane, 1), 2)


def jpeg(x, quality):
  """Baseline JPEG encode + decode of [B, H, W, C] images in [0, 1].

  Follows libjpeg's defaults as used by Pillow's ``save(format='JPEG',
  quality=q)``: 8-bit samples; for C = 3, JFIF YCbCr with 4:2:0 chroma
  subsampling (2x2 mean); the image padded to whole MCUs by repeating the last
  row/column; level shift by 128; 8x8 orthonormal DCT; quantisation with the
  standard tables scaled by quality (round to nearest); decoding by inverse
  DCT, 'fancy' chroma upsampling, YCbCr -> RGB and rounding to 8 bits.

  Differences from libjpeg: floating-point DCT instead of its integer DCT,
  and no entropy coding (it is lossless, so it does not change pixels).
  """
  b, h, w, c = x.shape
  mcu = 16 if c == 3 else 8
  hp, wp = -(-h // mcu) * mcu, -(-w // mcu) * mcu
  x8 = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0)
  x8 = _ops.pad(x8, (0, hp - h), (0, wp - w), 'edge')
  luma_q = quantization_table(_LUMA_TABLE, quality)
  if c == 1:
    y = _quantize_plane(x8[..., 0] - 128.0, luma_q) + 128.0
    out = y[..., None]
  else:
    r, g, bl = x8[..., 0], x8[..., 1], x8[..., 2]
    y = jnp.round(0.299 * r + 0.587 * g + 0.114 * bl)
    cb = jnp.round(-0.168736 * r - 0.331264 * g + 0.5 * bl + 128.0)
    cr = jnp.round(0.5 * r - 0.418688 * g - 0.081312 * bl + 128.0)

    def down(p):
      return p.reshape(b, hp // 2, 2, wp // 2, 2).mean(axis=(2, 4))

    chroma_q = quantization_table(_CHROMA_TABLE, quality)
    y = _quantize_plane(y - 128.0, luma_q) + 128.0
    cb = _fancy_upsample(_quantize_plane(down(cb) - 128.0, chroma_q)) + 128.0
    cr = _fancy_upsample(_quantize_plane(down(cr) - 128.0, chroma_q)) + 128.0
    y, cb, cr = (jnp.round(jnp.clip(p, 0.0, 255.0)) - o
                 for p, o in ((y, 0.0), (cb, 128.0), (cr, 128.0)))
    out = jnp.stack([y + 1.402 * cr,
                     y - 0.344136 * cb - 0.714136 * cr,
                     y + 1.772 * cb], axis=-1)
  out = jnp.clip(jnp.round(out), 0.0, 255.0) / 255.0
  return out[:, :h, :w]


def jpeg_compression(images, rng, severity, *, table=None):
  """JPEG compression at the severity's quality (``jpeg``).

  Difference from the reference: the reference saves and reloads through
  Pillow/libjpeg; ``jpeg`` reimplements that codec's lossy steps in JAX.
  Deterministic: ``rng`` is unused.

  Args and Returns as for ``brightness``.
  """
  del rng
  x, quality, _ = _common.setup('jpeg_compression', images, severity, table)
  return _common.finish(jpeg(x, quality), images)


# ---------------------------------------------------------------------------
# Elastic transform.
# ---------------------------------------------------------------------------

def elastic_transform(images, rng, severity, *, table=None):
  """Elastic deformation: a random affine warp, then a smooth random displacement.

  Severity sets (alpha, sigma, affine jitter); in the CIFAR table these are
  fractions of the image size (the reference's IMSIZE = 32 becomes
  min(H, W)), in the ImageNet table pixels. As in the reference:

  1. Affine: three points around the centre (centre +- size // 3) move by
     U(-jitter, jitter) each; the affine map between the two triangles warps
     the image (bilinear, mirrored borders, like ``cv2.warpAffine`` with
     BORDER_REFLECT_101).
  2. Displacement: dx, dy = alpha * gaussian(U(-1, 1), sigma) (truncate 3,
     symmetric borders), and the image is resampled at (y + dy, x + dx)
     (bilinear, symmetric borders, like ``map_coordinates(order=1,
     mode='reflect')``).

  Args and Returns as for ``brightness`` (``rng`` draws the jitter and fields).
  """
  x, (alpha, sigma, jitter), table = _common.setup('elastic_transform', images, severity,
                                                   table)
  b, h, w, _ = x.shape
  if table == 'cifar':
    size = min(h, w)
    alpha, sigma, jitter = alpha * size, sigma * size, jitter * size
  # One PRNG call for the affine jitter and both displacement fields.
  u = jax.random.uniform(rng, (b, 2 * h * w + 6), minval=-1.0, maxval=1.0)

  # Affine map from three source points (x, y) to jittered targets.
  cx, cy, sq = w // 2, h // 2, min(h, w) // 3
  src = np.array([[cx + sq, cy + sq], [cx + sq, cy - sq], [cx - sq, cy - sq]], np.float64)
  dst = jnp.asarray(src, jnp.float32) + jitter * u[:, -6:].reshape(b, 3, 2)
  solve = jnp.asarray(np.linalg.inv(np.concatenate([src, np.ones((3, 1))], axis=1)),
                      jnp.float32)
  m_t = jnp.einsum('ij,bjk->bik', solve, dst, precision=_ops.HIGHEST)  # [B, 3, 2]
  lin = jnp.transpose(m_t[:, :2, :], (0, 2, 1))  # [B, 2, 2]: dst = lin @ src + t
  t = m_t[:, 2, :]  # [B, 2]
  det = lin[:, 0, 0] * lin[:, 1, 1] - lin[:, 0, 1] * lin[:, 1, 0]
  inv = jnp.stack([jnp.stack([lin[:, 1, 1], -lin[:, 0, 1]], -1),
                   jnp.stack([-lin[:, 1, 0], lin[:, 0, 0]], -1)], 1) / det[:, None, None]
  gy, gx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  px = gx[None] - t[:, 0, None, None]
  py = gy[None] - t[:, 1, None, None]
  src_x = inv[:, 0, 0, None, None] * px + inv[:, 0, 1, None, None] * py
  src_y = inv[:, 1, 0, None, None] * px + inv[:, 1, 1, None, None] * py
  x = _ops.sample_bilinear(x, src_y, src_x, 'reflect')

  # Smooth random displacement fields. The Gaussian filter is a pair of
  # constant matrices, exact even where the kernel is wider than the image
  # (ImageNet severity 1 has sigma 171 px on 224 px images).
  taps = _ops.gaussian_kernel1d(sigma, truncate=3.0)
  g_h = _ops.filter_matrix(h, taps, 'symmetric')
  g_w = _ops.filter_matrix(w, taps, 'symmetric')
  fields = u[:, :-6].reshape(b * 2, h, w, 1)  # per image: dx then dy
  fields = alpha * _ops.apply_axis_matrices(fields, g_h, g_w).reshape(b, 2, h, w)
  dx, dy = fields[:, 0], fields[:, 1]
  y = _ops.sample_bilinear(x, gy[None] + dy, gx[None] + dx, 'symmetric')
  return _common.finish(y, images)
