"""Noise corruptions: gaussian_noise, shot_noise, impulse_noise, speckle_noise.

Each is a single fused elementwise pass over the batch (shot noise adds a
fixed-length loop of elementwise updates), so they are cheap inside training
steps. Noise is drawn independently per pixel and channel, as in the reference.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy import special

from jaxrobust.corruptions import _common


def gaussian_noise(images, rng, severity, *, table=None):
  """Additive Gaussian noise: clip(x + N(0, c^2)), c from the severity table.

  Args:
    images: [B, H, W, C] float in [0, 1].
    rng: PRNG key.
    severity: static int in 1..5.
    table: None (by image size), 'cifar' or 'imagenet'.

  Returns:
    Corrupted images, same shape and dtype.
  """
  x, c, _ = _common.setup('gaussian_noise', images, severity, table)
  return _common.finish(x + c * jax.random.normal(rng, x.shape), images)


def speckle_noise(images, rng, severity, *, table=None):
  """Multiplicative Gaussian noise: clip(x + x * N(0, c^2)).

  Args and Returns as for ``gaussian_noise``.
  """
  x, c, _ = _common.setup('speckle_noise', images, severity, table)
  return _common.finish(x + x * c * jax.random.normal(rng, x.shape), images)


def impulse_noise(images, rng, severity, *, table=None):
  """Salt-and-pepper noise: each value becomes 0 or 1 with probability c.

  As ``skimage.util.random_noise(mode='s&p', amount=c)`` (salt vs pepper 1:1),
  every value (each channel separately) is replaced with probability c, by 1
  or 0 with equal odds. One uniform draw decides both events: u < c/2 ->
  pepper, c/2 <= u < c -> salt.

  Args and Returns as for ``gaussian_noise``.
  """
  x, c, _ = _common.setup('impulse_noise', images, severity, table)
  u = jax.random.uniform(rng, x.shape)
  y = jnp.where(u < c / 2, 0.0, jnp.where(u < c, 1.0, x))
  return _common.finish(y, images)


_EXACT_BELOW = 10.0


def poisson(rng, lam, lam_max):
  """Samples Poisson(lam) elementwise with a fixed, small amount of work.

  For lam < 10 the sample is exact: X = min{k : F(k) >= u}, u ~ U(0, 1), found
  by walking the CDF from k = 0 for a static number of steps (the mass beyond
  the last step is below 1e-10). For lam >= 10 it is the Cornish-Fisher
  quantile with continuity correction,
  X = floor(lam + sqrt(lam) z + (z^2 - 1) / 6 + 1/2), z = Phi^-1(u), whose
  distribution is within 0.003 total variation of Poisson(lam) for every
  lam >= 10 (measured numerically). ``jax.random.poisson`` is exact but a
  data-dependent while loop that is several times slower on CPU.

  Args:
    rng: PRNG key.
    lam: float array of rates in [0, lam_max].
    lam_max: static upper bound of ``lam``.

  Returns:
    float32 array of non-negative integer-valued samples, shape of ``lam``.
  """
  u = jax.random.uniform(rng, lam.shape, dtype=jnp.float32,
                         minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
  small = min(float(lam_max), _EXACT_BELOW)
  steps = int(math.ceil(small + 7 * math.sqrt(small))) + 8
  lam_small = jnp.minimum(lam, _EXACT_BELOW)
  p0 = jnp.exp(-lam_small)

  def body(k, carry):
    count, p, cdf = carry
    count = count + (cdf < u).astype(jnp.float32)
    p = p * lam_small / (k + 1)
    return count, p, cdf + p

  # Fully unrolled so that XLA fuses the walk into one elementwise kernel.
  exact, _, _ = lax.fori_loop(0, steps, body, (jnp.zeros_like(lam), p0, p0), unroll=True)
  z = special.ndtri(u)
  approx = jnp.floor(lam + jnp.sqrt(lam) * z + (z * z - 1) / 6 + 0.5)
  return jnp.where(lam < _EXACT_BELOW, exact, jnp.maximum(approx, 0.0))


def shot_noise(images, rng, severity, *, table=None):
  """Poisson (photon shot) noise: clip(Poisson(c x) / c).

  A smaller photon count c is a stronger corruption. Sampled with ``poisson``
  (exact below rate 10, a Cornish-Fisher quantile above; the reference uses
  ``np.random.poisson``).

  Args and Returns as for ``gaussian_noise``.
  """
  x, c, _ = _common.setup('shot_noise', images, severity, table)
  lam = jnp.clip(x, 0.0, 1.0) * c
  return _common.finish(poisson(rng, lam, float(c)) / c, images)
