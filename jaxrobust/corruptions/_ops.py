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

HIGHEST = lax.Precision.HIGHEST
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


def filter_matrix(n, taps, mode):
  """[n, n] matrix of a 1-D correlation with ``taps`` along an axis of length n.

  out[i] = sum_t taps[t] x[i + t - len(taps) // 2], with out-of-range indices
  read through the border ``mode`` (``'constant'``: dropped). Folding the
  border into the matrix makes kernels longer than the axis exact.
  """
  taps = np.asarray(taps, np.float64)
  r = len(taps) // 2
  src = np.arange(n)[:, None] + np.arange(len(taps))[None, :] - r
  rows = np.repeat(np.arange(n), len(taps))
  weights = np.tile(taps, n)
  if mode == 'constant':
    keep = ((src >= 0) & (src < n)).ravel()
    rows, weights, cols = rows[keep], weights[keep], src.ravel()[keep]
  else:
    cols = border_index(src, n, mode, np).ravel()
  m = np.zeros((n, n), np.float64)
  np.add.at(m, (rows, cols), weights)
  return m


def separable_filter(x, k_h, k_w, mode):
  """Correlates every channel of [B, H, W, C] ``x`` with k_h along H and k_w along W.

  Implemented as two constant [H, H] and [W, W] matrix products
  (``filter_matrix``): on CPUs, GPUs and TPUs a dense matmul is much faster
  than a single-channel convolution, and borders are exact for any length.
  """
  _, h, w, _ = x.shape
  return apply_axis_matrices(x, filter_matrix(h, k_h, mode), filter_matrix(w, k_w, mode))


def filter2d(x, kernel, mode):
  """Correlates every channel of ``x`` with a 2-D kernel ('same' output size).

  Matches ``cv2.filter2D`` / ``scipy.ndimage.correlate``: the kernel's centre is
  at index (kh // 2, kw // 2). Kernels up to 5x5 use a direct convolution;
  larger ones (ImageNet's defocus disks) multiply in the Fourier domain after
  padding with the border mode, which is exact and much faster.

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
  b, h, w, c = x.shape
  top, left = kh // 2, kw // 2
  xp = pad(x, (top, kh - 1 - top), (left, kw - 1 - left), mode)
  if kh * kw <= 25:
    out = lax.conv_general_dilated(
        _planes(xp), jnp.asarray(kernel[:, :, None, None]), (1, 1), 'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=HIGHEST)
    return _unplanes(out, b, c)
  return fft_correlate(xp, kernel[:, :, None, None])[:, :h, :w, :, 0]


def fft_correlate(x, kernels):
  """Circular correlation of each channel of ``x`` with each of K kernels.

  out[b, i, j, c, k] = sum_{u, v} kernels[u, v, 0, k] x[b, i + u, j + v, c]
  with indices modulo H and W. Outputs with i <= H - kh and j <= W - kw do not
  wrap around; ``filter2d`` pads so that it keeps only those.

  Args:
    x: [B, H, W, C] array.
    kernels: static NumPy [kh, kw, 1, K] kernels, kh <= H, kw <= W.

  Returns:
    [B, H, W, C, K] array.
  """
  _, h, w, _ = x.shape
  kh, kw, _, k = kernels.shape
  placed = np.zeros((h, w, k), np.float64)
  placed[:kh, :kw] = kernels[:, :, 0, :]
  # Correlation theorem: F(x corr k) = F(x) * conj(F(k)) for real k.
  spectrum = np.conj(np.fft.rfft2(placed, axes=(0, 1)))
  fx = jnp.fft.rfft2(x, axes=(1, 2))
  out = fx[..., None] * jnp.asarray(spectrum, jnp.complex64)[None, :, :, None, :]
  return jnp.fft.irfft2(out, s=(h, w), axes=(1, 2)).astype(x.dtype)


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
                       precision=HIGHEST)[..., None]


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
                 precision=HIGHEST)
  return jnp.einsum('jw,biwc->bijc', jnp.asarray(m_w, jnp.float32), y,
                    precision=HIGHEST)


# ---------------------------------------------------------------------------
# Procedural textures.
# ---------------------------------------------------------------------------

def plasma_fractal(rng, batch, mapsize, wibbledecay):
  """Diamond-square plasma fractal, one periodic [mapsize, mapsize] map per image.

  The same recursion as the reference's ``plasma_fractal``: starting from a
  single corner value 0, each level (grid step s = mapsize, mapsize/2, ..., 2)
  fills square centres with the mean of their four corners, then edge
  midpoints with the mean of their four neighbours at distance s/2 (two
  corners, two centres), wrapping around; every new value gets
  ``wibble * U(-wibble, wibble)`` noise, with ``wibble`` starting at 100 and
  divided by ``wibbledecay`` per level. The map is finally rescaled to [0, 1].

  Every point is created at exactly one level, so one uniform draw per pixel
  supplies all the noise. Levels run in a ``lax.fori_loop`` over the full map
  with masks and rolls by the (traced) half step, so the compiled program does
  not grow with the number of levels.

  Args:
    rng: PRNG key.
    batch: number of maps.
    mapsize: static power of two.
    wibbledecay: roughness, a float or one float per map (static); smaller
      values give more high-frequency detail.

  Returns:
    [batch, mapsize, mapsize] float32 maps in [0, 1].
  """
  noise = jax.random.uniform(rng, (batch, mapsize, mapsize), minval=-1.0, maxval=1.0)
  return plasma_from_noise(noise, wibbledecay)


def plasma_from_noise(noise, wibbledecay):
  """``plasma_fractal`` from given noise: [B, N, N] uniforms in [-1, 1], N = 2^k.

  Lets a caller draw the fractal's noise together with its other random
  numbers in one PRNG call.
  """
  batch, mapsize, _ = noise.shape
  if mapsize & (mapsize - 1) or mapsize < 2 or noise.shape[2] != mapsize:
    raise ValueError(f'noise must be [B, N, N] with N a power of two, got {noise.shape}')
  levels = int(math.log2(mapsize))
  decay = jnp.asarray(np.broadcast_to(np.asarray(wibbledecay, np.float64), (batch,)),
                      jnp.float32)[:, None, None]
  idx = jnp.arange(mapsize)

  def level(k, m):
    step = jnp.right_shift(mapsize, k)
    half = step // 2
    wibble = 100.0 * decay ** (-k.astype(jnp.float32))
    amp = wibble * wibble
    on_row = (idx % step == 0)[:, None]
    on_col = (idx % step == 0)[None, :]
    mid_row = (idx % step == half)[:, None]
    mid_col = (idx % step == half)[None, :]

    def shifted(a, dy, dx):  # a[i + dy, j + dx] with wrap-around
      return jnp.roll(a, (-dy, -dx), axis=(1, 2))

    # Square step: centres from the four diagonal corners.
    square = (shifted(m, -half, -half) + shifted(m, -half, half)
              + shifted(m, half, -half) + shifted(m, half, half)) / 4
    m = jnp.where(mid_row & mid_col, square + amp * noise, m)
    # Diamond step: edge midpoints from their four axial neighbours.
    diamond = (shifted(m, -half, 0) + shifted(m, half, 0)
               + shifted(m, 0, -half) + shifted(m, 0, half)) / 4
    edges = (on_row & mid_col) | (mid_row & on_col)
    return jnp.where(edges, diamond + amp * noise, m)

  m = lax.fori_loop(0, levels, level, jnp.zeros((batch, mapsize, mapsize), jnp.float32))
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
