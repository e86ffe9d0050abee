"""Image-processing primitives used by the corruptions (all jittable).

Conventions: images are float32 [B, H, W, C]; single-channel fields are
[B, H, W, 1]. Constant kernels and resampling matrices are built with NumPy at
trace time from static parameters, so they become compile-time constants.

Border modes follow NumPy's ``np.pad`` names, which map onto the libraries the
reference generators call:

* ``'edge'``      - repeat the border pixel (scipy/skimage ``'nearest'``,
  ImageMagick's default virtual pixels).
* ``'reflect'``   - mirror without repeating the border, ``d c b | a b c d``
  (OpenCV's default ``BORDER_REFLECT_101``).
* ``'symmetric'`` - mirror repeating the border, ``b a | a b c d`` (scipy and
  skimage ``'reflect'``).
* ``'constant'``  - zeros outside the image.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_HIGHEST = lax.Precision.HIGHEST
# ITU-R BT.601 luma weights, as in OpenCV's RGB2GRAY and JPEG's Y channel.
_LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------
# Index arithmetic for borders.
# ---------------------------------------------------------------------------

def border_index(i, n, mode, xp=jnp):
  """Maps (possibly out-of-range) integer indices into [0, n) for a border mode.

  Args:
    i: integer array of indices.
    n: static length of the axis.
    mode: 'edge', 'reflect', 'symmetric' or 'wrap'.
    xp: ``jnp`` for traced indices, ``np`` for static ones.

  Returns:
    Indices in [0, n) of the pixels whose values the border mode repeats.
  """
  if mode == 'edge':
    return xp.clip(i, 0, n - 1)
  if mode == 'wrap':
    return xp.mod(i, n)
  if mode == 'reflect':
    if n == 1:
      return xp.zeros_like(i)
    period = 2 * n - 2
    i = xp.mod(i, period)
    return xp.where(i >= n, period - i, i)
  if mode == 'symmetric':
    period = 2 * n
    i = xp.mod(i, period)
    return xp.where(i >= n, period - 1 - i, i)
  raise ValueError(f'unknown border mode {mode!r}')


def pad(x, pad_h, pad_w, mode):
  """Pads the H and W axes of [B, H, W, C] ``x``.

  Args:
    x: [B, H, W, C] array.
    pad_h: (top, bottom) pixels.
    pad_w: (left, right) pixels.
    mode: a border mode (see module docstring); pads may exceed the image size.

  Returns:
    The padded array.
  """
  if mode == 'constant':
    return jnp.pad(x, ((0, 0), tuple(pad_h), tuple(pad_w), (0, 0)))
  _, h, w, _ = x.shape
  # Static gathers handle pads larger than the image (repeated mirroring) for
  # every mode, unlike a single mirror copy.
  rows = border_index(np.arange(-pad_h[0], h + pad_h[1]), h, mode, np)
  cols = border_index(np.arange(-pad_w[0], w + pad_w[1]), w, mode, np)
  return x[:, rows][:, :, cols]


# ---------------------------------------------------------------------------
# Linear filters.
# ---------------------------------------------------------------------------

def _planes(x):
  """[B, H, W, C] -> [B*C, H, W, 1] so one single-channel kernel serves all."""
  b, h, w, c = x.shape
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(b * c, h, w, 1)


def _unplanes(p, b, c):
  _, h, w, _ = p.shape
  return jnp.transpose(p.reshape(b, c, h, w), (0, 2, 3, 1))


def filter2d(x, kernel, mode):
  """Correlates every channel of ``x`` with a 2-D kernel ('same' output size).

  Matches ``cv2.filter2D`` / ``scipy.ndimage.correlate``: the kernel's centre is
  at index (kh // 2, kw // 2).

  Args:
    x: [B, H, W, C] array.
    kernel: static 2-D NumPy kernel [kh, kw].
    mode: border mode.

  Returns:
    The filtered [B, H, W, C] array.
  """
  kernel = np.asarray(kernel, np.float32)
  kh, kw = kernel.shape
  if kh == 1 and kw == 1:
    return x * kernel[0, 0]
  b, _, _, c = x.shape
  xp = pad(x, (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), mode)
  out = lax.conv_general_dilated(
      _planes(xp), jnp.asarray(kernel[:, :, None, None]), (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=_HIGHEST)
  return _unplanes(out, b, c)


def separable_filter(x, k_h, k_w, mode):
  """Applies 1-D kernels along H then W (same centring as ``filter2d``)."""
  x = filter2d(x, np.asarray(k_h)[:, None], mode)
  return filter2d(x, np.asarray(k_w)[None, :], mode)


def gaussian_kernel1d(sigma, truncate=4.0):
  """Normalised 1-D Gaussian taps exp(-t^2 / (2 sigma^2)), |t| <= radius.

  The radius is ``int(truncate * sigma + 0.5)`` as in
  ``scipy.ndimage.gaussian_filter`` (which skimage's ``gaussian`` calls).
  sigma <= 0 gives the identity kernel [1].
  """
  if sigma <= 0:
    return np.ones((1,), np.float64)
  radius = int(truncate * sigma + 0.5)
  t = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-0.5 * (t / sigma) ** 2)
  return k / k.sum()


def gaussian_filter(x, sigma, mode='edge', truncate=4.0):
  """Gaussian blur of each channel of [B, H, W, C] ``x`` (not across channels).

  Equivalent to ``skimage.filters.gaussian(x, sigma, mode=..., truncate=...)``
  with the channel axis excluded, i.e. ``scipy.ndimage.gaussian_filter`` with
  sigma 0 on the channel axis. skimage's default mode ``'nearest'`` is 'edge'.
  """
  k = gaussian_kernel1d(sigma, truncate)
  return separable_filter(x, k, k, mode)


def box_filter(x, size, mode='reflect'):
  """``cv2.blur(x, (size, size))``: mean over a size x size window."""
  k = np.full((size,), 1.0 / size)
  return separable_filter(x, k, k, mode)


# ---------------------------------------------------------------------------
# Colour.
# ---------------------------------------------------------------------------

def to_gray(x):
  """Luma 0.299 R + 0.587 G + 0.114 B as [B, H, W, 1]; identity for C = 1."""
  if x.shape[-1] == 1:
    return x
  return jnp.tensordot(x, jnp.asarray(_LUMA, x.dtype), axes=([-1], [0]),
                       precision=_HIGHEST)[..., None]


def color_constant(rgb, channels):
  """An RGB colour (0-255 ints) as a [C] array in [0, 1]; its luma for C = 1."""
  rgb = np.asarray(rgb, np.float64) / 255.0
  if channels == 1:
    return jnp.asarray([float(np.dot(rgb, _LUMA))], jnp.float32)
  return jnp.asarray(rgb, jnp.float32)


# ---------------------------------------------------------------------------
# Resampling.
# ---------------------------------------------------------------------------

def sample_bilinear(images, ys, xs, mode):
  """Bilinear interpolation of images at per-image real-valued coordinates.

  Each output pixel is the bilinear blend of the four integer neighbours of
  (y, x); neighbours outside the image are read through the border ``mode``
  (``'constant'`` reads zeros). This is ``scipy.ndimage.map_coordinates(order=1)``
  and ``cv2.remap``/``cv2.warpAffine`` with ``INTER_LINEAR``.

  Args:
    images: [B, H, W, C].
    ys, xs: [B, H', W'] row and column coordinates in pixels.
    mode: border mode.

  Returns:
    [B, H', W', C] samples.
  """
  _, h, w, _ = images.shape

  def one(img, yy, xx):
    y0 = jnp.floor(yy)
    x0 = jnp.floor(xx)
    wy = (yy - y0)[..., None]
    wx = (xx - x0)[..., None]
    y0 = y0.astype(jnp.int32)
    x0 = x0.astype(jnp.int32)

    def fetch(yi, xi):
      if mode == 'constant':
        inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        v = img[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
        return v * inside[..., None].astype(img.dtype)
      return img[border_index(yi, h, mode), border_index(xi, w, mode)]

    top = fetch(y0, x0) * (1 - wx) + fetch(y0, x0 + 1) * wx
    bottom = fetch(y0 + 1, x0) * (1 - wx) + fetch(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy

  return jax.vmap(one)(images, ys, xs)


def clipped_zoom_matrix(n, zoom):
  """[n, n] matrix of the reference's ``clipped_zoom`` along one axis.

  The reference crops the central ``ceil(n / zoom)`` pixels, enlarges them with
  ``scipy.ndimage.zoom(order=1)`` (whose output pixel i samples input coordinate
  i * (in - 1) / (out - 1)) to ``round(ch * zoom)`` pixels, and trims the
  centre n pixels. The composition is linear, so it is one matrix.
  """
  ch = int(math.ceil(n / zoom))
  top = (n - ch) // 2
  out = int(round(ch * zoom))
  trim = (out - n) // 2
  m = np.zeros((n, n), np.float64)
  for i in range(n):
    j = i + trim
    u = j * (ch - 1) / (out - 1) if out > 1 else 0.0
    i0 = min(int(math.floor(u)), ch - 1)
    f = u - i0
    m[i, top + i0] += 1.0 - f
    if f > 0:
      m[i, top + min(i0 + 1, ch - 1)] += f
  return m


def pil_box_matrix(in_size, out_size):
  """[out, in] matrix of Pillow's ``Image.resize(..., Image.BOX)`` on one axis.

  Pillow's BOX filter gives weight 1 to every input pixel whose centre lies in
  (-1/2, 1/2] of the output pixel's footprint (scaled by the downscale factor)
  and normalises; upscaling picks the nearest input pixel.
  """
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = 0.5 * filterscale
  m = np.zeros((out_size, in_size), np.float64)
  for o in range(out_size):
    center = (o + 0.5) * scale
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), in_size)
    for i in range(lo, hi):
      t = (i - center + 0.5) / filterscale
      if -0.5 < t <= 0.5:
        m[o, i] = 1.0
    m[o] /= m[o].sum()
  return m


def apply_axis_matrices(x, m_h, m_w):
  """y[b, i, j, c] = sum_{h, w} m_h[i, h] m_w[j, w] x[b, h, w, c]."""
  y = jnp.einsum('ih,bhwc->biwc', jnp.asarray(m_h, jnp.float32), x,
                 precision=_HIGHEST)
  return jnp.einsum('jw,biwc->bijc', jnp.asarray(m_w, jnp.float32), y,
                    precision=_HIGHEST)


# ---------------------------------------------------------------------------
# Procedural textures.
# ---------------------------------------------------------------------------

def plasma_fractal(rng, batch, mapsize, wibbledecay):
  """Diamond-square plasma fractal, one periodic [mapsize, mapsize] map per image.

  The same recursion as the reference's ``plasma_fractal``: starting from a
  single corner value 0, each level fills square centres with the mean of
  their four corners and then diamond centres with the mean of their four
  neighbours (wrapping around), each plus ``wibble * U(-wibble, wibble)``
  noise; ``wibble`` starts at 100 and is divided by ``wibbledecay`` per level.
  The map is finally rescaled to [0, 1]. Levels are a static Python loop of
  log2(mapsize) strided updates, all batched.

  Args:
    rng: PRNG key.
    batch: number of maps.
    mapsize: static power of two.
    wibbledecay: roughness; smaller values give more high-frequency detail.

  Returns:
    [batch, mapsize, mapsize] float32 maps in [0, 1].
  """
  if mapsize & (mapsize - 1):
    raise ValueError(f'mapsize must be a power of two, got {mapsize}')
  m = jnp.zeros((batch, mapsize, mapsize), jnp.float32)
  step = mapsize
  wibble = 100.0
  keys = jax.random.split(rng, 2 * max(int(math.log2(mapsize)), 1))
  level = 0
  while step >= 2:
    half = step // 2

    def wibbled_mean(total, key, wibble=wibble):
      return total / 4 + wibble * jax.random.uniform(
          key, total.shape, minval=-wibble, maxval=wibble)

    # Squares: centre = mean of the four corners of each step x step cell.
    corners = m[:, 0::step, 0::step]
    total = corners + jnp.roll(corners, -1, axis=1)
    total = total + jnp.roll(total, -1, axis=2)
    m = m.at[:, half::step, half::step].set(wibbled_mean(total, keys[2 * level]))
    # Diamonds: edge midpoints = mean of the two adjacent corners and centres.
    centres = m[:, half::step, half::step]
    corners = m[:, 0::step, 0::step]
    k1, k2 = jax.random.split(keys[2 * level + 1])
    total = (centres + jnp.roll(centres, 1, axis=1)
             + corners + jnp.roll(corners, -1, axis=2))
    m = m.at[:, 0::step, half::step].set(wibbled_mean(total, k1))
    total = (centres + jnp.roll(centres, 1, axis=2)
             + corners + jnp.roll(corners, -1, axis=1))
    m = m.at[:, half::step, 0::step].set(wibbled_mean(total, k2))
    step = half
    wibble /= wibbledecay
    level += 1
  lo = m.min(axis=(1, 2), keepdims=True)
  hi = m.max(axis=(1, 2), keepdims=True)
  return (m - lo) / jnp.maximum(hi - lo, 1e-12)


def next_pow2(n):
  return 1 << max(int(math.ceil(math.log2(max(n, 2)))), 1)


# ---------------------------------------------------------------------------
# Motion blur (ImageMagick MotionBlurImage).
# ---------------------------------------------------------------------------

def motion_blur(x, angles_deg, radius, sigma):
  """ImageMagick-style motion blur along a per-image direction.

  ImageMagick's ``MotionBlurImage(radius, sigma, angle)`` averages, for every
  pixel, the ``width = 2 * ceil(radius) + 1`` pixels at integer offsets
  ``(ceil(i cos a - 1/2), ceil(i sin a - 1/2))``, i = 0..width-1, along a
  one-sided line, weighted by exp(-i^2 / (2 sigma^2)) normalised to sum 1,
  reading edge pixels beyond the border. This is that line kernel, applied with
  one gather per tap (the direction differs per image, so it can not be a
  shared convolution kernel).

  Args:
    x: [B, H, W, C] images.
    angles_deg: [B] angles in degrees (0 = towards +x, positive towards +y).
    radius: static ImageMagick radius.
    sigma: static ImageMagick sigma.

  Returns:
    Blurred [B, H, W, C].
  """
  width = int(2 * math.ceil(radius) + 1) if radius > 0 else 3
  taps = np.exp(-np.arange(width) ** 2 / (2.0 * sigma ** 2))
  taps = jnp.asarray(taps / taps.sum(), jnp.float32)
  _, h, w, _ = x.shape
  a = jnp.deg2rad(angles_deg.astype(jnp.float32))
  i = jnp.arange(width, dtype=jnp.float32)
  off_x = jnp.ceil(i[None] * jnp.cos(a)[:, None] - 0.5).astype(jnp.int32)
  off_y = jnp.ceil(i[None] * jnp.sin(a)[:, None] - 0.5).astype(jnp.int32)
  rows = jnp.arange(h, dtype=jnp.int32)
  cols = jnp.arange(w, dtype=jnp.int32)

  def one(img, ox, oy):
    def body(t, acc):
      r = jnp.clip(rows + oy[t], 0, h - 1)
      c = jnp.clip(cols + ox[t], 0, w - 1)
      return acc + taps[t] * img[r][:, c]
    return lax.fori_loop(0, width, body, jnp.zeros_like(img))

  return jax.vmap(one)(x, off_x, off_y)
