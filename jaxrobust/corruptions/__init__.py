"""Common corruptions of CIFAR-10-C / ImageNet-C as jittable JAX functions.

Every corruption has the signature ``fn(images, rng, severity, *, table=None)``:

* ``images``: float array [B, H, W, C] in [0, 1], C = 1 or 3;
* ``rng``: a PRNG key; the output is a deterministic function of
  (images, rng, severity); corruptions without randomness ignore it;
* ``severity``: static Python int in 1..5 (it picks constants and shapes);
* ``table``: which severity parameters to use: ``'cifar'`` (Hendrycks'
  ``make_cifar_c.py``), ``'imagenet'`` (``make_imagenet_c.py``), or None to
  choose by size (largest side <= 64 px -> CIFAR, else ImageNet);

and returns an array of the same shape and dtype, clipped to [0, 1]. All are
batched (independent randomness per image) and work under ``jax.jit`` with the
severity bound statically, e.g.
``jax.jit(functools.partial(corrupt, name='fog', severity=3))(images, rng=key)``.

The registry names are valid Python identifiers and double as BatchNorm domain
names. ``STANDARD`` are the 15 corruptions of the benchmarks' mCE, ``EXTRA`` the
4 held-out ones, ``ALL`` the 19 together; ``rotation`` and
``contrast_brightness`` are the extra training corruptions of the Auxiliary
Training paper. Where the reference generators rely on external assets or
codecs the effect is reimplemented in JAX; each function's docstring says how
it differs from the reference.

Example::

  from jaxrobust import corruptions
  x_c = corruptions.corrupt(x, 'gaussian_noise', 3, jax.random.key(0))
"""

import jax
import jax.numpy as jnp

from jaxrobust.corruptions import _common
from jaxrobust.corruptions import _params
from jaxrobust.corruptions import auxiliary
from jaxrobust.corruptions import blur
from jaxrobust.corruptions import digital
from jaxrobust.corruptions import noise
from jaxrobust.corruptions import weather

SEVERITIES = _common.SEVERITIES
TABLES = _params.TABLES
table_for_size = _common.table_for_size

STANDARD = ('gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur',
            'motion_blur', 'zoom_blur', 'snow', 'frost', 'fog', 'brightness', 'contrast',
            'elastic_transform', 'pixelate', 'jpeg_compression')
EXTRA = ('speckle_noise', 'gaussian_blur', 'spatter', 'saturate')
ALL = STANDARD + EXTRA
AUXILIARY_TRAINING = ('rotation', 'contrast_brightness')

# Corruptions whose output does not depend on the rng key.
DETERMINISTIC = ('defocus_blur', 'zoom_blur', 'brightness', 'contrast', 'pixelate',
                 'jpeg_compression', 'gaussian_blur', 'saturate')

_REGISTRY = {
    'gaussian_noise': noise.gaussian_noise,
    'shot_noise': noise.shot_noise,
    'impulse_noise': noise.impulse_noise,
    'defocus_blur': blur.defocus_blur,
    'glass_blur': blur.glass_blur,
    'motion_blur': blur.motion_blur,
    'zoom_blur': blur.zoom_blur,
    'snow': weather.snow,
    'frost': weather.frost,
    'fog': weather.fog,
    'brightness': digital.brightness,
    'contrast': digital.contrast,
    'elastic_transform': digital.elastic_transform,
    'pixelate': digital.pixelate,
    'jpeg_compression': digital.jpeg_compression,
    'speckle_noise': noise.speckle_noise,
    'gaussian_blur': blur.gaussian_blur,
    'spatter': weather.spatter,
    'saturate': digital.saturate,
    'rotation': auxiliary.rotation,
    'contrast_brightness': auxiliary.contrast_brightness,
}
assert tuple(_REGISTRY) == ALL + AUXILIARY_TRAINING
assert all(name.isidentifier() for name in _REGISTRY)


def names():
  """Every registered corruption name, in registry order (``ALL`` first)."""
  return tuple(_REGISTRY)


def get(name):
  """The corruption function ``fn(images, rng, severity, *, table=None)`` for ``name``.

  Raises:
    ValueError: if ``name`` is not registered (the message lists valid names).
  """
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(f'unknown corruption {name!r}; valid names: {names()}') from None


def corrupt(images, name, severity, rng, *, table=None):
  """Applies corruption ``name`` at ``severity`` to a batch of images.

  Args:
    images: [B, H, W, C] float in [0, 1], C in (1, 3).
    name: a registered name (see ``names()``).
    severity: static Python int in 1..5.
    rng: PRNG key.
    table: None (choose by image size), 'cifar' or 'imagenet'.

  Returns:
    Corrupted images, same shape and dtype, in [0, 1].

  Raises:
    ValueError: unknown name, severity outside 1..5, bad table or bad images.
  """
  fn = get(name)
  return fn(images, rng, _common.check_severity(severity), table=table)


def corrupt_random_severity(images, name, rng, severities=SEVERITIES, *, table=None):
  """Applies ``name`` with a severity drawn uniformly from ``severities`` per image.

  Jittable: every listed severity is computed for the whole batch (each is a
  different static program) and each image keeps the one it drew, so the cost
  is ``len(severities)`` corruptions. Useful for training on mixed severities.

  Args:
    images: [B, H, W, C] float in [0, 1].
    name: a registered name.
    rng: PRNG key (split into the severity draw and the corruption's key).
    severities: non-empty sequence of distinct static ints in 1..5.
    table: None (choose by image size), 'cifar' or 'imagenet'.

  Returns:
    Corrupted images, same shape and dtype.
  """
  fn = get(name)
  try:
    severities = tuple(severities)
  except TypeError:
    raise ValueError(f'severities must be a sequence of ints in {SEVERITIES}, '
                     f'got {severities!r}') from None
  if not severities:
    raise ValueError(f'severities must be a non-empty subset of {SEVERITIES}, got ().')
  severities = tuple(_common.check_severity(s) for s in severities)
  if len(set(severities)) != len(severities):
    raise ValueError(f'severities must be distinct, got {severities}.')
  _common.check_images(images)
  k_pick, k_corrupt = jax.random.split(rng)
  pick = jax.random.randint(k_pick, (images.shape[0],), 0, len(severities))
  out = images
  for i, s in enumerate(severities):
    y = fn(images, k_corrupt, s, table=table)
    out = jnp.where((pick == i)[:, None, None, None], y, out)
  return out
