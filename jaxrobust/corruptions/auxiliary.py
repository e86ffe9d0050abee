"""Training corruptions of the Auxiliary Training paper: rotation, contrast_brightness.

The paper (Zhang et al., "Auxiliary Training: Towards Accurate and Robust
Models", section 4.1) trains with four augmentations: "Gaussian noise,
Gaussian blur, rotation and images' contrast and brightness", without giving
their strengths. Its released code uses ``transforms.RandomRotation(30)`` and
``transforms.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5)``; those
are severity 5 here, and severities 1-4 scale the strength linearly (see
``_params``). Gaussian noise and blur are the registry's ``gaussian_noise`` and
``gaussian_blur`` (the released code used noise std 20/255, close to CIFAR
``gaussian_noise`` severity 3 (0.08), and a Pillow Gaussian blur of radius 1,
which is CIFAR ``gaussian_blur`` severity 5 (sigma 1)).
"""

import jax
import jax.numpy as jnp

from jaxrobust.corruptions import _common
from jaxrobust.corruptions import _ops


def rotate(x, angles_deg):
  """Rotates each image counter-clockwise by its angle about the image centre.

  Bilinear sampling; pixels that come from outside the image are black (0),
  as with torchvision's default fill.

  Args:
    x: [B, H, W, C] images.
    angles_deg: [B] angles in degrees.

  Returns:
    Rotated [B, H, W, C] images.
  """
  _, h, w, _ = x.shape
  a = jnp.deg2rad(angles_deg)[:, None, None]
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  gy, gx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                        jnp.arange(w, dtype=jnp.float32) - cx, indexing='ij')
  # Inverse map: the output pixel at (gx, gy) reads the source rotated by -a
  # (image y axis points down, so this turns the content counter-clockwise).
  src_x = jnp.cos(a) * gx[None] - jnp.sin(a) * gy[None] + cx
  src_y = jnp.sin(a) * gx[None] + jnp.cos(a) * gy[None] + cy
  return _ops.sample_bilinear(x, src_y, src_x, 'constant')


def rotation(images, rng, severity, *, table=None):
  """Random rotation by U(-a, a) degrees per image, a = 6 * severity.

  Severity 5 (a = 30) is the Auxiliary Training code's ``RandomRotation(30)``.
  Difference from it: bilinear instead of nearest-neighbour interpolation.
  The same angles are used for both tables.

  Args:
    images: [B, H, W, C] float in [0, 1].
    rng: PRNG key.
    severity: static int in 1..5.
    table: None (by image size), 'cifar' or 'imagenet'.

  Returns:
    Rotated images, same shape and dtype.
  """
  x, max_angle, _ = _common.setup('rotation', images, severity, table)
  angles = jax.random.uniform(rng, (x.shape[0],), minval=-max_angle, maxval=max_angle)
  return _common.finish(rotate(x, angles), images)


def contrast_brightness(images, rng, severity, *, table=None):
  """Random brightness, contrast and saturation jitter (torchvision ColorJitter).

  With strength r (0.1 * severity; r = 0.5 is the Auxiliary Training code's
  ``ColorJitter(0.5, 0.5, 0.5)``), three factors f ~ U(1 - r, 1 + r) per image
  are applied in turn, each followed by clipping to [0, 1]:

  * brightness: x f;
  * contrast: f x + (1 - f) mean(gray(x)), the mean over the whole image;
  * saturation: f x + (1 - f) gray(x) per pixel (skipped for C = 1).

  Difference from torchvision: the order is fixed (brightness, contrast,
  saturation) rather than a random permutation per call.

  Args and Returns as for ``rotation``.
  """
  x, r, _ = _common.setup('contrast_brightness', images, severity, table)
  f_bright, f_contrast, f_sat = jax.random.uniform(
      rng, (3, x.shape[0], 1, 1, 1), minval=1 - r, maxval=1 + r)
  x = jnp.clip(x * f_bright, 0.0, 1.0)
  mean = _ops.to_gray(x).mean(axis=(1, 2, 3), keepdims=True)
  x = jnp.clip(f_contrast * x + (1 - f_contrast) * mean, 0.0, 1.0)
  if x.shape[-1] == 3:
    x = jnp.clip(f_sat * x + (1 - f_sat) * _ops.to_gray(x), 0.0, 1.0)
  return _common.finish(x, images)
