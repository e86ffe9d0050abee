"""Weather corruptions: snow, frost, fog, and the extra corruption spatter.

All random layers (snow flakes, frost texture, fog fractal, liquid blobs) are
generated on device from the rng key, one independent layer per image.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import special

from jaxrobust.corruptions import _common
from jaxrobust.corruptions import _ops
from jaxrobust.corruptions import _params


def snow(images, rng, severity, *, table=None):
  """Snow: motion-blurred flakes over a brightened, greyed image.

  Severity sets (mean, std, zoom, threshold, blur radius, blur sigma, image
  weight w). As in the reference: a flake layer N(mean, std^2) per pixel is
  enlarged with ``clipped_zoom``, values below the threshold are zeroed, the
  layer is quantised to 8 bits and motion-blurred (ImageMagick radius/sigma,
  angle ~ U(-135, -45) degrees); the image becomes
  w x + (1 - w) max(x, 1.5 gray(x) + 0.5), and the flakes are added twice
  (the layer and its 180-degree rotation).

  Difference from the reference: the motion blur is ``_ops.motion_blur``
  (ImageMagick's line kernel reimplemented) instead of Wand/ImageMagick, and
  the blurred layer is not re-quantised to 8 bits.

  Args:
    images: [B, H, W, C] float in [0, 1].
    rng: PRNG key.
    severity: static int in 1..5.
    table: None (by image size), 'cifar' or 'imagenet'.

  Returns:
    Corrupted images, same shape and dtype.
  """
  x, (mean, std, zoom, threshold, radius, sigma, weight), _ = _common.setup(
      'snow', images, severity, table)
  b, h, w, _ = x.shape
  # One PRNG call for flakes and angle: uniforms, the flakes made normal by
  # the inverse normal CDF.
  u = jax.random.uniform(rng, (b, h * w + 1), minval=jnp.finfo(jnp.float32).tiny)
  layer = mean + std * special.ndtri(u[:, :-1]).reshape(b, h, w, 1)
  layer = _ops.apply_axis_matrices(layer, _ops.clipped_zoom_matrix(h, zoom),
                                   _ops.clipped_zoom_matrix(w, zoom))
  layer = jnp.where(layer < threshold, 0.0, layer)
  layer = jnp.floor(jnp.clip(layer, 0.0, 1.0) * 255.0) / 255.0
  angles = -135.0 + 90.0 * u[:, -1]
  layer = _ops.motion_blur(layer, angles, radius, sigma)
  x = weight * x + (1 - weight) * jnp.maximum(x, _ops.to_gray(x) * 1.5 + 0.5)
  return _common.finish(x + layer + layer[:, ::-1, ::-1], images)


def fog(images, rng, severity, *, table=None):
  """Fog: a plasma fractal added to the image, then rescaled.

  Severity sets (strength s, wibble decay). out = (x + s P) m / (m + s), with
  P a diamond-square plasma fractal in [0, 1] (``_ops.plasma_fractal``, the
  reference's algorithm on the smallest power-of-two square covering the
  image, cropped) and m the image's maximum value, as in the reference.

  Args and Returns as for ``snow``.
  """
  x, (strength, decay), _ = _common.setup('fog', images, severity, table)
  b, h, w, _ = x.shape
  plasma = _ops.plasma_fractal(rng, b, _ops.next_pow2(max(h, w)), decay)[:, :h, :w, None]
  max_val = x.max(axis=(1, 2, 3), keepdims=True)
  return _common.finish((x + strength * plasma) * max_val / (max_val + strength), images)


# Frost colour: bright ice is pale blue-white, as in the reference's photos.
_ICE_RGB = (222, 238, 255)
_NEEDLE_DIRECTIONS = 4


@functools.lru_cache(maxsize=None)
def _line_kernels(length, directions):
  """[length, length, 1, directions] anti-aliased line kernels, unit L2 norm.

  Kernel k is a centred line segment at angle pi k / directions, drawn by
  bilinear splatting of densely spaced points, so that correlating white
  noise with it gives unit-variance streaks along that direction.
  """
  c = length // 2
  kernels = np.zeros((length, length, 1, directions), np.float64)
  for k in range(directions):
    theta = np.pi * k / directions
    for t in np.linspace(-c, c, 8 * length):
      x, y = c + t * np.cos(theta), c + t * np.sin(theta)
      x0, y0 = int(np.floor(x)), int(np.floor(y))
      fx, fy = x - x0, y - y0
      for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
          if 0 <= y0 + dy < length and 0 <= x0 + dx < length:
            kernels[y0 + dy, x0 + dx, 0, k] += wy * wx
    kernels[..., k] /= np.sqrt((kernels[..., k] ** 2).sum())
  return kernels.astype(np.float32)


def frost_texture(rng, batch, height, width, channels, supersample=1):
  """A procedural frost texture in [0, 1], one per image.

  Replaces the reference's six photographs of frost on glass (random crops;
  for CIFAR shrunk 5x first, so a 32 px crop shows many small crystals).
  Ice needles: white noise correlated with short line kernels in four
  directions, blended per pixel by a smoothly varying orientation (a plasma
  fractal), rectified and thresholded, gives bright streaks that flow in
  patches like ice ferns. A second fractal makes the ice thick in some
  regions and thin in others, a third adds frosted haze, and the result is
  tinted pale blue-white.

  Args:
    rng: PRNG key.
    batch, height, width: static output size.
    channels: 1 or 3.
    supersample: static int; render at this multiple of the size and
      box-downsample (the CIFAR table uses 2, standing in for the reference's
      5x shrunk photographs: finer, softer crystals).

  Returns:
    [batch, height, width, channels] float32 texture in [0, 1] (mean about
    0.45, comparable to the photographs).
  """
  factor = int(supersample)
  gh, gw = height * factor, width * factor
  length = int(np.clip(round(max(gh, gw) / 7), 5, 17)) | 1
  size = _ops.next_pow2(max(gh, gw))
  # One PRNG call: the first map per image becomes Gaussian needle noise, the
  # other three feed fractals for orientation, ice cover and haze.
  u = jax.random.uniform(rng, (4, batch, size, size), minval=-1.0, maxval=1.0)
  noise = special.ndtri(jnp.clip(0.5 * (u[0, :, :gh, :gw] + 1.0), 1e-7, 1 - 1e-7))[..., None]
  # Periodic correlation (the noise has no border), all directions at once.
  streaks = _ops.fft_correlate(noise, _line_kernels(length, _NEEDLE_DIRECTIONS))[..., 0, :]
  decays = np.tile(np.array([2.5, 2.0, 1.7]), batch)  # chosen by eye
  # image-major ([batch * 3]): the batch axis stays leading, so a sharded batch stays sharded
  maps = _ops.plasma_from_noise(jnp.moveaxis(u[1:], 0, 1).reshape(batch * 3, size, size), decays)
  orientation, cover, haze = jnp.moveaxis(maps.reshape(batch, 3, size, size), 1, 0)[:, :, :gh, :gw]
  directions = jnp.arange(_NEEDLE_DIRECTIONS) * (np.pi / _NEEDLE_DIRECTIONS)
  weight = jnp.maximum(jnp.cos(2 * (2 * np.pi * orientation[..., None] - directions)), 0) ** 4
  weight = weight / weight.sum(axis=-1, keepdims=True)
  needles = (jnp.abs(streaks) * weight).sum(axis=-1)
  needles = jnp.clip(0.8 * (needles / needles.mean(axis=(1, 2), keepdims=True) - 0.7), 0, 1)
  cover = jnp.clip((cover - 0.25) / 0.5, 0.0, 1.0)  # clear glass to thick ice
  tex = jnp.clip(0.2 + 0.4 * haze * cover + needles * (0.1 + 0.9 * cover), 0.0, 1.0)
  if factor > 1:
    tex = tex.reshape(batch, height, factor, width, factor).mean(axis=(2, 4))
  return tex[..., None] * _ops.color_constant(_ICE_RGB, channels)


def frost(images, rng, severity, *, table=None):
  """Frost: out = a x + b F with F a frost texture.

  Severity sets (image weight a, frost weight b), as in the reference.
  Difference from the reference: F is ``frost_texture`` (procedural, generated
  on device) instead of a random crop of one of six frost photographs shipped
  with the reference; its statistics (mean, ridges, tint) are chosen to look
  alike but are not identical.

  Args and Returns as for ``snow``.
  """
  x, (a, b), table = _common.setup('frost', images, severity, table)
  bsz, h, w, c = x.shape
  texture = frost_texture(rng, bsz, h, w, c, supersample=2 if table == _params.CIFAR else 1)
  return _common.finish(a * x + b * texture, images)


# ---------------------------------------------------------------------------
# Spatter.
# ---------------------------------------------------------------------------

# Water is pale turquoise, mud is brown (RGB, 0-255), as in the reference.
_WATER_RGB = (175, 238, 238)
_MUD_RGB = (63, 42, 20)
# OpenCV's 5x5 chamfer weights for DIST_L2: axial, diagonal, knight moves.
_CHAMFER = (1.0, 1.4, 2.1969)
_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], np.float64)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)


def _shift(x, dy, dx, fill):
  """out[:, i, j] = x[:, i + dy, j + dx], ``fill`` outside the image."""
  _, h, w, _ = x.shape
  p = max(abs(dy), abs(dx))
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill)
  return xp[:, p + dy:p + dy + h, p + dx:p + dx + w]


def canny(img, low, high):
  """A vectorised Canny edge detector like ``cv2.Canny(img, low, high)``.

  3x3 Sobel gradients (edge-replicated borders), L1 magnitude |gx| + |gy|,
  non-maximum suppression across the gradient direction quantised to 0, 45, 90
  or 135 degrees, and hysteresis: pixels above ``high`` are edges, pixels above
  ``low`` that are 8-connected to an edge become edges (iterated dilation until
  nothing changes).

  Args:
    img: [B, H, W, 1] in 0..255 units.
    low, high: hysteresis thresholds.

  Returns:
    [B, H, W, 1] boolean edge map.
  """
  gx = _ops.filter2d(img, _SOBEL_X, 'edge')
  gy = _ops.filter2d(img, _SOBEL_X.T, 'edge')
  mag = jnp.abs(gx) + jnp.abs(gy)
  ax, ay = jnp.abs(gx), jnp.abs(gy)
  tan22 = np.tan(np.deg2rad(22.5))
  horizontal = ay < ax * tan22
  vertical = ay > ax / tan22
  same_sign = (gx * gy) >= 0

  def nb(dy, dx):
    return _shift(mag, dy, dx, 0.0)

  keep_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
  keep_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
  keep_d = jnp.where(same_sign, (mag > nb(-1, -1)) & (mag > nb(1, 1)),
                     (mag > nb(-1, 1)) & (mag > nb(1, -1)))
  peak = jnp.where(horizontal, keep_h, jnp.where(vertical, keep_v, keep_d))
  candidate = peak & (mag > low)
  strong = candidate & (mag > high)

  def grow(state):
    edges, _ = state
    grown = lax.reduce_window(edges.astype(jnp.float32), -jnp.inf, lax.max,
                              (1, 3, 3, 1), (1, 1, 1, 1), 'SAME') > 0
    new = edges | (grown & candidate)
    return new, jnp.any(new != edges)

  edges, _ = lax.while_loop(lambda s: s[1], grow, (strong, jnp.array(True)))
  return edges


def chamfer_distance(sources, cap):
  """min(distance to the nearest source pixel, cap) with OpenCV's 5x5 chamfer.

  ``cv2.distanceTransform(mask, DIST_L2, 5)`` approximates Euclidean distance
  by shortest paths over axial (1), diagonal (1.4) and knight (2.1969) moves.
  Starting from 0 at sources and ``cap`` elsewhere, ``ceil(cap)`` rounds of
  min-plus relaxation over the 5x5 neighbourhood give the capped distance
  exactly (every path shorter than ``cap`` has fewer than ``cap`` moves).

  Args:
    sources: [B, H, W, 1] boolean.
    cap: static positive float.

  Returns:
    [B, H, W, 1] float32 distances in [0, cap].
  """
  a, d, k = _CHAMFER
  moves = []
  for dy in range(-2, 3):
    for dx in range(-2, 3):
      n = max(abs(dy), abs(dx))
      m = min(abs(dy), abs(dx))
      if n == 1:
        moves.append((dy, dx, a if m == 0 else d))
      elif n == 2 and m == 1:
        moves.append((dy, dx, k))
  dist = jnp.where(sources, 0.0, float(cap))

  def relax(_, dist):
    best = dist
    for dy, dx, cost in moves:
      best = jnp.minimum(best, _shift(dist, dy, dx, float(cap)) + cost)
    return best

  return lax.fori_loop(0, int(np.ceil(cap)), relax, dist)


def equalize_hist(img, levels):
  """``cv2.equalizeHist`` for integer images with values in [0, levels).

  lut[v] = round(255 (cdf(v) - n_min) / (N - n_min)) where n_min is the count
  of the smallest value present; a constant image is returned unchanged.

  Args:
    img: [B, H, W, 1] float holding integers in [0, levels).
    levels: static number of possible values.

  Returns:
    Equalised image, same shape, values in 0..255.
  """
  b = img.shape[0]
  flat = img.reshape(b, -1).astype(jnp.int32)
  total = flat.shape[1]
  hist = jax.vmap(lambda v: jnp.bincount(v, length=levels))(flat)
  cdf = jnp.cumsum(hist, axis=1)
  first = jnp.argmax(hist > 0, axis=1)
  n_min = jnp.take_along_axis(hist, first[:, None], axis=1)
  denom = total - n_min
  lut = jnp.round(255.0 * (cdf - n_min) / jnp.maximum(denom, 1))
  lut = jnp.where(denom > 0, lut, jnp.arange(levels)[None].astype(jnp.float32))
  out = jnp.take_along_axis(lut, flat, axis=1)
  return out.reshape(img.shape)


def spatter(images, rng, severity, *, table=None):
  """Spatter: water drops (severities 1-3) or mud splashes (severities 4-5).

  Severity sets (mean, std, sigma, threshold, intensity or mud sigma, mode).
  A liquid layer N(mean, std^2) per pixel is Gaussian-blurred with sigma and
  zeroed below the threshold, as in the reference. Then:

  * water (mode 0): the reference's drop shading, step by step: Canny edges
    of the 8-bit layer (thresholds 50, 150), distance to the nearest edge
    (5x5 chamfer, capped at 20), 3x3 box blur, histogram equalisation, an
    emboss filter saturated to 8 bits, another 3x3 box blur; the shading
    times the layer, normalised to maximum ``intensity``, adds pale
    turquoise to the image.
  * mud (mode 1): the mask layer > threshold is Gaussian-blurred with the
    mud sigma, values below 0.8 are dropped, and the image is blended with
    mud brown by that mask.

  Differences from the reference: OpenCV's Canny, distance transform and
  histogram equalisation are reimplemented in JAX (``canny``,
  ``chamfer_distance``, ``equalize_hist``); the 8-bit conversion of the layer
  clips instead of wrapping values above 1. For C = 1 the colours are
  replaced by their luma.

  Args and Returns as for ``snow``.
  """
  x, (mean, std, sigma, threshold, amount, mode), _ = _common.setup(
      'spatter', images, severity, table)
  b, h, w, c = x.shape
  liquid = mean + std * jax.random.normal(rng, (b, h, w, 1))
  liquid = _ops.gaussian_filter(liquid, sigma, mode='edge')
  liquid = jnp.where(liquid < threshold, 0.0, liquid)
  if mode == 0:
    liquid8 = jnp.floor(jnp.clip(liquid * 255.0, 0.0, 255.0))
    edges = canny(liquid8, 50.0, 150.0)
    dist = chamfer_distance(edges, 20.0)
    dist = jnp.floor(_ops.box_filter(dist, 3, 'reflect'))
    dist = equalize_hist(dist, 21)
    dist = jnp.clip(jnp.round(_ops.filter2d(dist, _EMBOSS, 'reflect')), 0.0, 255.0)
    dist = _ops.box_filter(dist, 3, 'reflect')
    m = liquid8 * dist
    m = m / jnp.maximum(m.max(axis=(1, 2, 3), keepdims=True), 1e-12) * amount
    y = x + m * _ops.color_constant(_WATER_RGB, c)
  else:
    m = (liquid > threshold).astype(jnp.float32)
    m = _ops.gaussian_filter(m, amount, mode='edge')
    m = jnp.where(m < 0.8, 0.0, m)
    y = x * (1 - m) + _ops.color_constant(_MUD_RGB, c) * m
  return _common.finish(y, images)
