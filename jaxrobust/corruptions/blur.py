"""Blur corruptions: defocus_blur, glass_blur, motion_blur, zoom_blur, gaussian_blur.

Fixed separable kernels (Gaussian) and fixed resampling (zoom) are pairs of
constant per-axis matrices, fixed 2-D kernels (defocus disks) are convolutions
or, when large, Fourier-domain products (``_ops.filter2d``); per-image random
geometry (motion direction, glass shuffling) is a gather.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.corruptions import _common
from jaxrobust.corruptions import _ops


def _gaussian_blur_kernel_image(img, ksize, sigma):
  """``cv2.GaussianBlur(img, (ksize, ksize), sigma)`` on a small NumPy array.

  OpenCV's separable kernel has taps exp(-t^2 / (2 sigma^2)) for
  t = -(ksize-1)/2 .. (ksize-1)/2, normalised, and mirrors the array without
  repeating the border (BORDER_REFLECT_101).
  """
  t = np.arange(ksize) - (ksize - 1) / 2
  k = np.exp(-t ** 2 / (2.0 * sigma ** 2))
  k /= k.sum()
  r = ksize // 2
  p = np.pad(img, r, mode='reflect')
  rows = sum(k[i] * p[i:i + img.shape[0], :] for i in range(ksize))
  return sum(k[j] * rows[:, j:j + img.shape[1]] for j in range(ksize))


def disk_kernel(radius, alias_blur):
  """The reference's anti-aliased disk kernel for defocus blur.

  A binary disk x^2 + y^2 <= radius^2 on the integer grid
  [-max(8, radius), max(8, radius)]^2, normalised to sum 1, then smoothed by a
  3x3 (radius <= 8) or 5x5 Gaussian with sigma ``alias_blur``. All-zero border
  rows and columns are cropped, which leaves the convolution unchanged.

  Returns:
    2-D float64 NumPy kernel (odd size, centred).
  """
  if radius <= 8:
    grid = np.arange(-8, 8 + 1)
    ksize = 3
  else:
    grid = np.arange(-radius, radius + 1)
    ksize = 5
  xx, yy = np.meshgrid(grid, grid)
  aliased = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
  aliased /= aliased.sum()
  k = _gaussian_blur_kernel_image(aliased, ksize, alias_blur)
  k = k.astype(np.float32).astype(np.float64)  # cv2 works in float32
  nz = np.nonzero(np.abs(k) > 0)
  r = max(np.abs(nz[0] - k.shape[0] // 2).max(), np.abs(nz[1] - k.shape[1] // 2).max())
  c = k.shape[0] // 2
  return k[c - r:c + r + 1, c - r:c + r + 1]


def defocus_blur(images, rng, severity, *, table=None):
  """Defocus (lens) blur: correlation with an anti-aliased disk.

  Severity sets (disk radius, anti-alias sigma); the kernel is ``disk_kernel``
  and borders are mirrored as in ``cv2.filter2D`` (BORDER_REFLECT_101).
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
  x, (radius, alias_blur), _ = _common.setup('defocus_blur', images, severity, table)
  return _common.finish(_ops.filter2d(x, disk_kernel(radius, alias_blur), 'reflect'),
                        images)


def gaussian_blur(images, rng, severity, *, table=None):
  """Gaussian blur with sigma c per channel, ``skimage.filters.gaussian`` style.

  Truncated at 4 sigma; borders repeat the edge pixel (skimage's 'nearest').
  Deterministic: ``rng`` is unused.

  Args and Returns as for ``defocus_blur``.
  """
  del rng
  x, sigma, _ = _common.setup('gaussian_blur', images, severity, table)
  return _common.finish(_ops.gaussian_filter(x, sigma, mode='edge'), images)


def glass_shuffle(image, offsets, d):
  """One pass of the reference's local pixel shuffle on one image, vectorised.

  The reference scans the interior pixels p = (r, c), d < r <= H - d and
  d < c <= W - d, from the bottom-right, and runs
  ``x[r, c], x[r', c'] = x[r', c'], x[r, c]`` with q = (r', c') = p + (dy, dx).
  On NumPy views that statement is a one-way copy, ``x[p] <- x[q]``, made in
  place: where q is an interior pixel already visited in this pass (a later
  row, or the same row and a later column) p receives q's *new* value, so
  displacements chain. With offsets in [-d, d - 1] that happens only for
  d >= 2 (ImageNet's severities 2-5; CIFAR's d is 1).

  Here every pixel's chain is followed to its end r, a pixel whose own source
  had not been visited yet, by pointer doubling (``ceil(log2(H W))`` gathers of
  an index array): ``new[p] = old[src(r)]``, the reference's result exactly.

  Args:
    image: (H, W, C) array.
    offsets: (2, H, W) int32 (dy, dx) per pixel, each in [-d, d - 1]; unused
      outside the interior.
    d: the severity's maximum displacement (a Python int).

  Returns:
    The shuffled (H, W, C) image.
  """
  h, w, _ = image.shape
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]

  def inside(r, c):
    return (r > d) & (r <= h - d) & (c > d) & (c <= w - d)

  interior = inside(rows, cols)
  src_r = jnp.where(interior, rows + offsets[0], rows)
  src_c = jnp.where(interior, cols + offsets[1], cols)
  src = (src_r * w + src_c).reshape(-1)
  flat = image.reshape(h * w, -1)
  if d >= 2:
    visited_before = (interior & inside(src_r, src_c)
                      & ((src_r > rows) | ((src_r == rows) & (src_c > cols))))
    jump = jnp.where(visited_before.reshape(-1), src, jnp.arange(h * w))
    # Chains only step to earlier-visited pixels, so none is longer than H W: ceil(log2(H W))
    # doublings resolve every chain. A fixed count, not "until nothing moves": on a sharded
    # batch that test would be an all-reduce across the devices at every shuffle.
    doublings = max(1, int(np.ceil(np.log2(h * w))))
    jump = jax.lax.fori_loop(0, doublings, lambda _, j: j[j], jump)
    src = src[jump]
  return flat[src].reshape(image.shape)


def glass_blur(images, rng, severity, *, table=None):
  """Frosted-glass blur: Gaussian blur, local pixel shuffling, Gaussian blur.

  Severity sets (sigma, max displacement d, iterations). As in the reference,
  the image is blurred with sigma, quantised to 8 bits (floor, like
  ``np.uint8``), locally shuffled ``iterations`` times, and blurred again.
  Each shuffle (``glass_shuffle``) gives the reference's sequential loop's
  result for the same offsets, each drawn uniformly from [-d, d - 1]; only the
  random stream differs.

  Args and Returns as for ``defocus_blur`` (``rng`` draws the offsets).
  """
  x, (sigma, d, iterations), _ = _common.setup('glass_blur', images, severity, table)
  b, h, w, _ = x.shape
  x = _ops.gaussian_filter(x, sigma, mode='edge')
  x = jnp.floor(jnp.clip(x, 0.0, 1.0) * 255.0) / 255.0
  # Integer offsets uniform in [-d, d - 1] (from uniforms: ``randint``
  # compiles to a much larger program).
  u = jax.random.uniform(rng, (iterations, 2, b, h, w))
  all_offsets = jnp.minimum(jnp.floor(u * (2 * d)), 2 * d - 1).astype(jnp.int32) - d
  for offsets in all_offsets:
    # a gather per image: indexing the batch axis too made XLA all-reduce the whole batch
    x = jax.vmap(lambda im, off: glass_shuffle(im, off, d), in_axes=(0, 1))(x, offsets)
  return _common.finish(_ops.gaussian_filter(x, sigma, mode='edge'), images)


def motion_blur(images, rng, severity, *, table=None):
  """Motion blur along a random direction, angle ~ U(-45, 45) degrees per image.

  Severity sets ImageMagick's (radius, sigma). Difference from the reference:
  the reference calls ImageMagick's ``MotionBlurImage`` through Wand on an
  8-bit PNG; here ``_ops.motion_blur`` reimplements the same one-sided
  Gaussian-weighted line kernel (width 2 ceil(radius) + 1, integer tap
  offsets, edge pixels beyond the border) in float arithmetic.

  Args and Returns as for ``defocus_blur`` (``rng`` draws the angles).
  """
  x, (radius, sigma), _ = _common.setup('motion_blur', images, severity, table)
  angles = jax.random.uniform(rng, (x.shape[0],), minval=-45.0, maxval=45.0)
  return _common.finish(_ops.motion_blur(x, angles, radius, sigma), images)


def zoom_factors(spec):
  """The reference's zoom factors ``np.arange(start, stop, step)`` (its float
  rounding decides whether ``stop`` is included, so it is reproduced as is)."""
  return tuple(float(z) for z in np.arange(*spec))


def zoom_blur(images, rng, severity, *, table=None):
  """Zoom blur: the mean of the image and centre-zoomed copies of it.

  out = (x + sum_z clipped_zoom(x, z)) / (1 + #z) over the severity's zoom
  factors z >= 1. Each ``clipped_zoom`` (crop the centre, enlarge bilinearly
  with ``scipy.ndimage.zoom`` conventions, trim) is linear, so it is applied as
  a constant matrix per axis (``_ops.clipped_zoom_matrix``); all zooms run as
  two batched matrix products. The reference assumes square images; here the
  H and W axes are zoomed independently. Deterministic: ``rng`` is unused.

  Args and Returns as for ``defocus_blur``.
  """
  del rng
  x, spec, _ = _common.setup('zoom_blur', images, severity, table)
  _, h, w, _ = x.shape
  zooms = zoom_factors(spec)
  m_h = jnp.asarray(np.stack([_ops.clipped_zoom_matrix(h, z) for z in zooms]), jnp.float32)
  m_w = jnp.asarray(np.stack([_ops.clipped_zoom_matrix(w, z) for z in zooms]), jnp.float32)
  y = jnp.einsum('zih,bhwc->bziwc', m_h, x, precision=_ops.HIGHEST)
  y = jnp.einsum('zjw,bziwc->bijc', m_w, y, precision=_ops.HIGHEST)
  return _common.finish((x + y) / (len(zooms) + 1), images)
