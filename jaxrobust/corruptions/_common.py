"""Input validation and severity-table lookup shared by every corruption."""

import functools
import numbers

from absl import logging

import jax.numpy as jnp

from jaxrobust.corruptions import _params

SEVERITIES = (1, 2, 3, 4, 5)


def check_severity(severity):
  """Returns ``severity`` as a Python int, or raises ValueError.

  Args:
    severity: a static Python (or NumPy) integer in 1..5. It selects constants
      and array shapes at trace time, so it can not be a traced value.

  Returns:
    The severity as an ``int``.
  """
  if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
    raise ValueError(
        f'severity must be a static Python int in {SEVERITIES}, got {severity!r} '
        f'of type {type(severity).__name__}.')
  if int(severity) not in SEVERITIES:
    raise ValueError(f'severity must be one of {SEVERITIES}, got {severity!r}.')
  return int(severity)


def check_images(images):
  """Validates a batch of images and returns it as float32.

  Args:
    images: array [B, H, W, C] with C in (1, 3), values in [0, 1].

  Returns:
    ``images`` converted to float32 (the caller casts the result back).
  """
  shape = getattr(images, 'shape', None)
  if shape is None or len(shape) != 4:
    raise ValueError(f'images must be a [B, H, W, C] array, got shape {shape}.')
  if shape[-1] not in (1, 3):
    raise ValueError(f'images must have C in (1, 3) channels, got shape {shape}.')
  if shape[1] < 2 or shape[2] < 2:
    raise ValueError(f'images must be at least 2x2 pixels, got shape {shape}.')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f'images must be floating point in [0, 1], got dtype {images.dtype}.')
  return jnp.asarray(images, jnp.float32)


@functools.lru_cache(maxsize=None)
def _warn_imagenet_table_size(size: int) -> None:
  """Once per size: ImageNet-C's spatial parameters are pixel sizes meant for 224 px images."""
  logging.warning('Corrupting %d px images with the ImageNet-C table: its blur radii, glass '
                  'displacements and elastic sizes are pixels at 224 px, so relative to these '
                  'images they act %.2fx as strongly as in ImageNet-C. Pass table= to choose.',
                  size, 224 / size)


def table_for_size(size: int) -> str:
  """The severity table for images whose largest side is ``size`` px: 'cifar' up to 64 px,
  else 'imagenet'."""
  return _params.CIFAR if size <= _params.CIFAR_MAX_SIZE else _params.IMAGENET


def resolve_table(images, table=None):
  """Chooses the severity table for ``images``.

  Args:
    images: array [B, H, W, C].
    table: None to choose by size (largest side <= 64 px -> 'cifar', else
      'imagenet'), or one of ``_params.TABLES`` to override.

  Returns:
    The table name.
  """
  if table is None:
    size = max(images.shape[1], images.shape[2])
    chosen = table_for_size(size)
    if chosen == _params.IMAGENET and size != 224:
      _warn_imagenet_table_size(int(size))
    return chosen
  if table not in _params.TABLES:
    raise ValueError(f'table must be None or one of {_params.TABLES}, got {table!r}.')
  return table


def setup(name, images, severity, table):
  """Validates the common arguments of a corruption and looks up its parameter.

  Args:
    name: registry name of the corruption (key into the tables).
    images: [B, H, W, C] floating array in [0, 1].
    severity: static int in 1..5.
    table: None, 'cifar' or 'imagenet'.

  Returns:
    (images as float32, the parameter entry for this severity, the table name).
  """
  severity = check_severity(severity)
  x = check_images(images)
  table = resolve_table(x, table)
  return x, _params.PARAMS[table][name][severity - 1], table


def finish(y, images):
  """Clips to [0, 1] and casts back to the input dtype."""
  return jnp.clip(y, 0.0, 1.0).astype(images.dtype)
