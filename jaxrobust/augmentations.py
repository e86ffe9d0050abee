"""On-device image augmentations built from AutoAugment's operations: AutoAugment, RandAugment,
AugMix, and Cutout.

Every operation works per image on float images in [0, 1] with PIL's semantics rescaled from
0..255; each image draws its own operation, strength and sign. They run inside the jitted step,
like the corruptions (``jaxrobust.corruptions``), so the host pipeline stays a plain crop + flip.

* :func:`autoaugment` (Cubuk et al. 2019): each image draws one of the 25 two-op sub-policies
  AutoAugment learned on CIFAR-10 or ImageNet (:data:`AUTOAUGMENT_POLICIES`).
* :func:`cutout` (DeVries & Taylor 2017): one grey square per image.
  Both are input augmentations the training loop applies to every method's batch
  (``config.device_augment``, ``config.cutout_size``; :func:`device_augmentation`).
* :func:`rand_augment` (Cubuk et al. 2019): ``N`` ops drawn uniformly from AutoAugment's (without
  invert), at one magnitude (AdvProp's fine-grained ``aux_augment`` domain).
* :func:`augmix` (Hendrycks et al., "AugMix", ICLR 2020): ``width`` chains of 1-3 ops from the
  operations that do not overlap the test corruptions, mixed with Dirichlet weights and then with
  the original image (a Beta weight); :class:`AugMixSettings` reads the ``augmix*`` config keys
  that vanilla training and EWS use, and ``methods.common.augmix_loss`` is its loss with the
  Jensen-Shannon consistency term.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

_GEOMETRIC = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')
_PHOTOMETRIC = ('identity', 'auto_contrast', 'equalize', 'solarize', 'posterize', 'color',
                'contrast', 'brightness', 'sharpness')
AUGMENT_OPS = _PHOTOMETRIC + _GEOMETRIC  # RandAugment's
AUTOAUGMENT_OPS = AUGMENT_OPS + ('invert',)
# AugMix's operations: AutoAugment's without those that overlap ImageNet-C / CIFAR-10-C's
# corruptions (color, contrast, brightness, sharpness) and without identity.
AUGMIX_OPS = ('auto_contrast', 'equalize', 'posterize', 'rotate', 'solarize', 'shear_x',
              'shear_y', 'translate_x', 'translate_y')
AUTOAUGMENT_TRANSLATE = 150.0 / 331.0  # AutoAugment: 150 px of a 331 px image
AUGMIX_TRANSLATE = 1.0 / 3.0           # AugMix: a third of the image size
AUTOAUGMENT_FILL = 0.5  # AutoAugment fills uncovered pixels with grey (128)
AUGMIX_FILL = 0.0       # AugMix's PIL transforms fill them with black
CUTOUT_FILL = 0.5       # Cutout zeroes the normalised image: about its mean, grey


def _per_image(v, x):
  return jnp.reshape(v, (-1,) + (1,) * (x.ndim - 1))


def _grey(x):
  """Luma (ITU-R 601-2, PIL's 'L' conversion) broadcast back to x's channels."""
  if x.shape[-1] == 1:
    return x
  weights = jnp.asarray([0.299, 0.587, 0.114], x.dtype)
  return jnp.broadcast_to(jnp.sum(x * weights, axis=-1, keepdims=True), x.shape)


def _blend(image, degenerate, factor):
  """PIL ``ImageEnhance``: ``degenerate + factor * (image - degenerate)``, clipped."""
  return jnp.clip(degenerate + _per_image(factor, image) * (image - degenerate), 0.0, 1.0)


def _auto_contrast(x):
  lo = jnp.min(x, axis=(1, 2), keepdims=True)
  hi = jnp.max(x, axis=(1, 2), keepdims=True)
  scaled = (x - lo) / jnp.maximum(hi - lo, 1e-6)
  return jnp.where(hi > lo, scaled, x)


def _equalize(x):
  """PIL's ``ImageOps.equalize`` (torchvision's too) per image and channel, on 8-bit values.

  From the histogram ``h`` of the ``n`` values: ``step = (n - h[last occupied level]) // 255``
  and ``lut[i] = min(255, (sum_{j<i} h[j] + step // 2) // step)``; the identity when ``step`` is
  0 (one level, or a nearly constant channel).
  """
  b, h, w, c = x.shape
  q = jnp.round(x * 255.0).astype(jnp.int32)
  q = jnp.moveaxis(q.reshape(b, h * w, c), -1, 1)  # [b, c, n]

  def one(v):
    hist = jnp.zeros(256, jnp.int32).at[v].add(1)
    last = 255 - jnp.argmax(hist[::-1] > 0)
    step = (h * w - hist[last]) // 255
    lut = jnp.minimum((jnp.cumsum(hist) - hist + step // 2) // jnp.maximum(step, 1), 255)
    return jnp.where(step > 0, lut[v], v)

  out = jax.vmap(jax.vmap(one))(q)
  return jnp.moveaxis(out, 1, -1).reshape(b, h, w, c).astype(x.dtype) / 255.0


def _sharpness_degenerate(x):
  """PIL's SMOOTH filter (3x3, centre weight 5, total 13), border pixels unchanged."""
  kernel = jnp.asarray([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]], x.dtype) / 13.0
  c = x.shape[-1]
  k = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c))
  smooth = jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=c)
  return x.at[:, 1:-1, 1:-1, :].set(smooth)


def _warp(x, inverse, fill):
  """Bilinear affine warp: output pixel p (centred coords) samples the input at ``inverse @ p``.

  Args:
    x: images [B, H, W, C].
    inverse: [B, 2, 3] maps centred output (row, col, 1) to centred input (row, col).
    fill: the value of output pixels that sample outside the image.
  """
  _, h, w, _ = x.shape
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype),
                            indexing='ij')
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  coords = jnp.stack([rows - cy, cols - cx, jnp.ones_like(rows)], axis=0).reshape(3, -1)

  def one(image, m):
    src = m @ coords
    src_r, src_c = src[0] + cy, src[1] + cx

    def channel(ch):
      return ndimage.map_coordinates(ch, [src_r, src_c], order=1, mode='constant',
                                     cval=fill).reshape(h, w)
    return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)
  return jax.vmap(one)(x, inverse)


def _geometric_inverse(op_index, sign, level, size, ops, translate):
  """Per-image inverse affine matrices [B, 2, 3] for the geometric ops (identity otherwise).

  ``op_index`` indexes ``ops``; ``level`` is a scalar or per-image [B]; ``translate`` is the
  largest shift as a fraction of the image size. Rotations turn about the centre; shears, as
  PIL's (and torchvision's AutoAugment), keep the top-left corner fixed.
  """
  h, w = size
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  theta = sign * level * math.radians(30.0)
  shear = sign * level * 0.3
  shift_x = sign * level * translate * w
  shift_y = sign * level * translate * h
  zero, one = jnp.zeros_like(theta), jnp.ones_like(theta)
  # (row, col) coordinates; each matrix maps output -> input.
  mats = {
      'rotate': jnp.stack([jnp.stack([jnp.cos(theta), -jnp.sin(theta), zero], -1),
                           jnp.stack([jnp.sin(theta), jnp.cos(theta), zero], -1)], -2),
      # PIL's x_in = x + shear y about the corner: in centred coordinates, a shift shear * cy.
      'shear_x': jnp.stack([jnp.stack([one, zero, zero], -1),
                            jnp.stack([shear, one, shear * cy], -1)], -2),
      'shear_y': jnp.stack([jnp.stack([one, shear, shear * cx], -1),
                            jnp.stack([zero, one, zero], -1)], -2),
      'translate_x': jnp.stack([jnp.stack([one, zero, zero], -1),
                                jnp.stack([zero, one, shift_x], -1)], -2),
      'translate_y': jnp.stack([jnp.stack([one, zero, shift_y], -1),
                                jnp.stack([zero, one, zero], -1)], -2),
  }
  identity = jnp.broadcast_to(jnp.asarray([[1., 0., 0.], [0., 1., 0.]]), theta.shape + (2, 3))
  out = identity
  for name in _GEOMETRIC:
    if name in ops:
      out = jnp.where((op_index == ops.index(name))[:, None, None], mats[name], out)
  return out


def _apply_ops(x, op, sign, level, ops, *, translate, posterize_bits, fill):
  """Applies op ``ops[op[i]]`` to image ``i``, with sign ``sign[i]`` and strength ``level[i]``.

  Args:
    x: [B, H, W, C] images in [0, 1].
    op: [B] int indices into ``ops``.
    sign: [B] +-1, the direction of the signed ops (geometric ones and the enhancements).
    level: [B] strengths in [0, 1]; every op's range scales with it.
    ops: the candidate op names (a subset of ``AUTOAUGMENT_OPS``; static).
    translate: the largest shift as a fraction of the image size.
    posterize_bits: bits posterize keeps at level 0; it drops ``floor(4 level)`` more
      (AutoAugment 8, AugMix 4).
    fill: the value of pixels that geometric ops uncover (AutoAugment grey, AugMix black).

  Returns:
    The images after one op each.
  """
  enhance = 1.0 + sign * 0.9 * level  # AutoAugment's enhancement factors in [0.1, 1.9]
  # posterize keeps posterize_bits - floor(4 level) of the 8 bits: quantisation step 2^(8 - kept)
  step = _per_image(2.0 ** ((8 - posterize_bits) + jnp.floor(level * 4.0)), x)
  photometric = {
      'identity': lambda: x,
      'auto_contrast': lambda: _auto_contrast(x),
      'equalize': lambda: _equalize(x),
      'invert': lambda: 1.0 - x,
      'solarize': lambda: jnp.where(x * 255.0 >= 256.0 * (1.0 - _per_image(level, x)),
                                    1.0 - x, x),  # PIL's threshold
      'posterize': lambda: jnp.floor(jnp.round(x * 255.0) / step) * step / 255.0,
      'color': lambda: _blend(x, _grey(x), enhance),
      'contrast': lambda: _blend(x, jnp.mean(_grey(x), axis=(1, 2, 3), keepdims=True), enhance),
      'brightness': lambda: _blend(x, jnp.zeros_like(x), enhance),
      'sharpness': lambda: _blend(x, _sharpness_degenerate(x), enhance),
  }
  out = x
  if any(name in _GEOMETRIC for name in ops):  # identity matrices for the photometric ops
    out = _warp(x, _geometric_inverse(op, sign, level, x.shape[1:3], ops, translate), fill)
  for i, name in enumerate(ops):
    if name in photometric:  # only the ops in use are computed
      out = jnp.where(_per_image(op == i, x), photometric[name](), out)
  return out


def _augment_once(x, rng, level, ops=AUGMENT_OPS, *, translate=AUTOAUGMENT_TRANSLATE,
                  posterize_bits=8, fill=AUTOAUGMENT_FILL):
  """One augmentation layer: every image gets one op drawn uniformly from ``ops``, a random sign.

  ``level`` is a float or one strength per image ([B]); the other arguments are
  :func:`_apply_ops`'s.
  """
  b = x.shape[0]
  level = jnp.broadcast_to(jnp.asarray(level, x.dtype), (b,))
  k_op, k_sign = jax.random.split(rng)
  op = jax.random.randint(k_op, (b,), 0, len(ops))
  sign = _random_sign(k_sign, b, x.dtype)
  return _apply_ops(x, op, sign, level, ops, translate=translate, posterize_bits=posterize_bits,
                    fill=fill)


def _random_sign(rng, b, dtype):
  return jnp.where(jax.random.bernoulli(rng, 0.5, (b,)), 1.0, -1.0).astype(dtype)


def rand_augment(images: jax.Array, rng: jax.Array, num_ops: int = 2,
                 magnitude: float = 9.0) -> jax.Array:
  """RandAugment (Cubuk et al. 2019) on device: ``num_ops`` random AutoAugment ops per image.

  The operations are AutoAugment's (identity, auto-contrast, equalize, solarize, posterize,
  color, contrast, brightness, sharpness, rotate up to 30 degrees, shear up to 0.3, translate up
  to 150/331 of the size), each image drawing its own op and sign per layer; ``magnitude`` M in
  [0, 10] scales every range linearly (M/10 of the maximum), as in RandAugment. Equalize is
  PIL's; uncovered pixels of geometric ops are grey.

  Args:
    images: [B, H, W, C] floats in [0, 1].
    rng: PRNG key.
    num_ops: N, the number of ops applied in sequence (static, >= 0).
    magnitude: M in [0, 10] (static).

  Returns:
    Augmented images, same shape, in [0, 1].
  """
  level = float(magnitude) / 10.0
  out = images
  for i in range(num_ops):
    out = _augment_once(out, jax.random.fold_in(rng, i), level)
  return jnp.clip(out, 0.0, 1.0)


# ------------------------------------------------------------------------------- AutoAugment
# The policies AutoAugment (Cubuk et al. 2019) learned on reduced CIFAR-10 and ImageNet, as
# torchvision ships them: 25 sub-policies of two steps (op, probability, magnitude bin 0..9, None
# for ops without a magnitude). Bin m is the fraction m/9 of the op's range (rotate 30 degrees,
# shear 0.3, translate 150/331 of the size, enhancement factor 1 +- 0.9, solarize threshold 256
# down to 0; posterize keeps 8 - round(4m/9) bits); rotate, shear, translate and the
# enhancements take a random sign.
AUTOAUGMENT_POLICIES = {
    'cifar10': (
        (('invert', 0.1, None), ('contrast', 0.2, 6)),
        (('rotate', 0.7, 2), ('translate_x', 0.3, 9)),
        (('sharpness', 0.8, 1), ('sharpness', 0.9, 3)),
        (('shear_y', 0.5, 8), ('translate_y', 0.7, 9)),
        (('auto_contrast', 0.5, None), ('equalize', 0.9, None)),
        (('shear_y', 0.2, 7), ('posterize', 0.3, 7)),
        (('color', 0.4, 3), ('brightness', 0.6, 7)),
        (('sharpness', 0.3, 9), ('brightness', 0.7, 9)),
        (('equalize', 0.6, None), ('equalize', 0.5, None)),
        (('contrast', 0.6, 7), ('sharpness', 0.6, 5)),
        (('color', 0.7, 7), ('translate_x', 0.5, 8)),
        (('equalize', 0.3, None), ('auto_contrast', 0.4, None)),
        (('translate_y', 0.4, 3), ('sharpness', 0.2, 6)),
        (('brightness', 0.9, 6), ('color', 0.2, 8)),
        (('solarize', 0.5, 2), ('invert', 0.0, None)),
        (('equalize', 0.2, None), ('auto_contrast', 0.6, None)),
        (('equalize', 0.2, None), ('equalize', 0.6, None)),
        (('color', 0.9, 9), ('equalize', 0.6, None)),
        (('auto_contrast', 0.8, None), ('solarize', 0.2, 8)),
        (('brightness', 0.1, 3), ('color', 0.7, 0)),
        (('solarize', 0.4, 5), ('auto_contrast', 0.9, None)),
        (('translate_y', 0.9, 9), ('translate_y', 0.7, 9)),
        (('auto_contrast', 0.9, None), ('solarize', 0.8, 3)),
        (('equalize', 0.8, None), ('invert', 0.1, None)),
        (('translate_y', 0.7, 9), ('auto_contrast', 0.9, None)),
    ),
    'imagenet': (
        (('posterize', 0.4, 8), ('rotate', 0.6, 9)),
        (('solarize', 0.6, 5), ('auto_contrast', 0.6, None)),
        (('equalize', 0.8, None), ('equalize', 0.6, None)),
        (('posterize', 0.6, 7), ('posterize', 0.6, 6)),
        (('equalize', 0.4, None), ('solarize', 0.2, 4)),
        (('equalize', 0.4, None), ('rotate', 0.8, 8)),
        (('solarize', 0.6, 3), ('equalize', 0.6, None)),
        (('posterize', 0.8, 5), ('equalize', 1.0, None)),
        (('rotate', 0.2, 3), ('solarize', 0.6, 8)),
        (('equalize', 0.6, None), ('posterize', 0.4, 6)),
        (('rotate', 0.8, 8), ('color', 0.4, 0)),
        (('rotate', 0.4, 9), ('equalize', 0.6, None)),
        (('equalize', 0.0, None), ('equalize', 0.8, None)),
        (('invert', 0.6, None), ('equalize', 1.0, None)),
        (('color', 0.6, 4), ('contrast', 1.0, 8)),
        (('rotate', 0.8, 8), ('color', 1.0, 2)),
        (('color', 0.8, 8), ('solarize', 0.8, 7)),
        (('sharpness', 0.4, 7), ('invert', 0.6, None)),
        (('shear_x', 0.6, 5), ('equalize', 1.0, None)),
        (('color', 0.4, 0), ('equalize', 0.6, None)),
        (('equalize', 0.4, None), ('solarize', 0.2, 4)),
        (('solarize', 0.6, 5), ('auto_contrast', 0.6, None)),
        (('invert', 0.6, None), ('equalize', 1.0, None)),
        (('color', 0.6, 4), ('contrast', 1.0, 8)),
        (('equalize', 0.8, None), ('equalize', 0.6, None)),
    ),
}


def autoaugment(images: jax.Array, rng: jax.Array, policy: str = 'cifar10') -> jax.Array:
  """AutoAugment (Cubuk et al. 2019) with one of its learned policies, on device.

  Every image draws one of the policy's 25 sub-policies uniformly; each of its two steps is
  applied with the step's probability, at the strength of its magnitude bin (``bin / 9`` of the
  op's range, :data:`AUTOAUGMENT_POLICIES`) and, for the signed ops, a random sign. The ops are
  :func:`rand_augment`'s plus invert; warps are bilinear with grey fill.

  Args:
    images: [B, H, W, C] floats in [0, 1].
    rng: PRNG key.
    policy: 'cifar10' or 'imagenet' (static).

  Returns:
    Augmented images, same shape, in [0, 1].
  """
  table = AUTOAUGMENT_POLICIES[policy]
  b = images.shape[0]
  k_sub, k_steps = jax.random.split(rng)
  sub = jax.random.randint(k_sub, (b,), 0, len(table))
  out = images
  for t in range(2):
    op_of = jnp.asarray([AUTOAUGMENT_OPS.index(sp[t][0]) for sp in table])
    prob_of = jnp.asarray([sp[t][1] for sp in table], images.dtype)
    level_of = jnp.asarray([_autoaugment_level(*sp[t][::2]) for sp in table], images.dtype)
    k_apply, k_sign = jax.random.split(jax.random.fold_in(k_steps, t))
    applied = jax.random.uniform(k_apply, (b,), images.dtype) < prob_of[sub]
    op = jnp.where(applied, op_of[sub], AUTOAUGMENT_OPS.index('identity'))
    out = _apply_ops(out, op, _random_sign(k_sign, b, images.dtype), level_of[sub],
                     AUTOAUGMENT_OPS, translate=AUTOAUGMENT_TRANSLATE, posterize_bits=8,
                     fill=AUTOAUGMENT_FILL)
  return jnp.clip(out, 0.0, 1.0)


def _autoaugment_level(op: str, magnitude: Optional[int]) -> float:
  """The strength of magnitude bin ``m``: ``m / 9``; posterize drops ``round(4 m / 9)`` bits
  (torchvision's table), which ``floor(4 level)`` in :func:`_apply_ops` gives at this level."""
  m = magnitude or 0
  return round(4 * m / 9) / 4 if op == 'posterize' else m / 9


def cutout(images: jax.Array, rng: jax.Array, size: int) -> jax.Array:
  """Cutout (DeVries & Taylor 2017): a ``size`` x ``size`` grey square per image.

  The square's centre is uniform over the image and the square is clipped at the border, as in
  the reference code (which zeroes normalised pixels, i.e. the mean colour: grey here).

  Args:
    images: [B, H, W, C] floats in [0, 1].
    rng: PRNG key.
    size: the square's side in pixels (static, >= 0; 0 is the identity).

  Returns:
    The images with one square each set to 0.5.
  """
  if size == 0:
    return images
  b, h, w, _ = images.shape
  k_y, k_x = jax.random.split(rng)
  cy = jax.random.randint(k_y, (b, 1, 1, 1), 0, h)
  cx = jax.random.randint(k_x, (b, 1, 1, 1), 0, w)
  rows = jnp.arange(h)[None, :, None, None]
  cols = jnp.arange(w)[None, None, :, None]
  lo = size // 2
  inside = ((rows >= cy - lo) & (rows < cy - lo + size) &
            (cols >= cx - lo) & (cols < cx - lo + size))
  return jnp.where(inside, jnp.asarray(CUTOUT_FILL, images.dtype), images)


# Training-batch augmentations the loop applies on device before any method's step
# (``config.device_augment``; ``config.cutout_size`` adds Cutout after it).
DEVICE_AUGMENTATIONS = ('none', 'autoaugment_cifar10', 'autoaugment_imagenet')


def device_augmentation(config):
  """``f(images, rng) -> images`` for ``config.device_augment`` and ``config.cutout_size``,
  or None when both are off.

  Raises:
    ValueError: for an unknown ``device_augment`` or a negative / non-integer ``cutout_size``.
  """
  name = config.get('device_augment', 'none')
  if name not in DEVICE_AUGMENTATIONS:
    raise ValueError(f'Unknown device_augment {name!r}; valid: {", ".join(DEVICE_AUGMENTATIONS)}.')
  size = config.get('cutout_size', 0)
  _check_int('cutout_size', size, range(0, 1 << 16), '>= 0 (pixels; 0 = no Cutout)')
  if name == 'none' and size == 0:
    return None
  policy = name.split('_', 1)[1] if name != 'none' else None

  def augment(images, rng):
    k_policy, k_cutout = jax.random.split(rng)
    if policy is not None:
      images = autoaugment(images, k_policy, policy)
    return cutout(images, k_cutout, size)
  return augment


# ------------------------------------------------------------------------------------ AugMix


def augmix(images: jax.Array, rng: jax.Array, severity: int = 3, width: int = 3,
           depth: int = -1, alpha: float = 1.0) -> jax.Array:
  r"""AugMix (Hendrycks et al. 2020, Algorithm 1) of every image, on device.

  .. math::
     x_{aug} = (1 - m)\, x + m \sum_{i=1}^{k} w_i\, \mathrm{chain}_i(x),\quad
     w \sim \mathrm{Dirichlet}(\alpha, \dots, \alpha),\ m \sim \mathrm{Beta}(\alpha, \alpha)

  with ``k = width`` chains, each of ``depth`` ops (``-1``: 1 to 3, uniformly per image and
  chain) drawn from ``AUGMIX_OPS``; every op draws its own strength ``U(0.1, severity) / 10``
  (AugMix's ``sample_level``), so severity 3 reaches 30% of AutoAugment's ranges (rotate 30
  degrees, shear 0.3, translate a third of the size, solarize, posterize down from 4 bits).
  As the reference: bilinear warps, black where they uncover the image, shears about the
  top-left corner, PIL's equalize. It differs in continuous angles and shifts where the
  reference rounds to whole degrees and pixels.

  Args:
    images: [B, H, W, C] floats in [0, 1].
    rng: PRNG key.
    severity: 1..10 (may be traced; the AugMix default is 3, EWS's CIFAR runs use 5).
    width: chains mixed per image (static, >= 1).
    depth: ops per chain (static, >= 1), or -1 for a random depth in 1..3.
    alpha: the Dirichlet and Beta concentration (> 0).

  Returns:
    The augmented-and-mixed images, same shape, in [0, 1].
  """
  b = images.shape[0]
  k_weights, k_mix, k_chains = jax.random.split(rng, 3)
  weights = jax.random.dirichlet(k_weights, jnp.full((width,), alpha, images.dtype), (b,))
  m = jax.random.beta(k_mix, alpha, alpha, (b,), images.dtype)
  max_depth = depth if depth > 0 else 3
  mix = jnp.zeros_like(images)
  for i in range(width):
    k_depth, k_ops = jax.random.split(jax.random.fold_in(k_chains, i))
    chain_depth = (jnp.full((b,), depth) if depth > 0 else
                   jax.random.randint(k_depth, (b,), 1, 4))
    x = images
    for j in range(max_depth):
      k_level, k_op = jax.random.split(jax.random.fold_in(k_ops, j))
      level = jax.random.uniform(k_level, (b,), images.dtype, 0.1, severity) / 10.0
      y = _augment_once(x, k_op, level, AUGMIX_OPS, translate=AUGMIX_TRANSLATE,
                        posterize_bits=4, fill=AUGMIX_FILL)
      x = jnp.where(_per_image(j < chain_depth, x), y, x)  # chains shorter than j stop here
    mix = mix + _per_image(weights[:, i], x) * x
  m = _per_image(m, images)
  return jnp.clip((1.0 - m) * images + m * mix, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class AugMixSettings:
  """The ``augmix*`` config keys of the methods that train on AugMix views (vanilla, EWS).

  Attributes:
    severity, width, depth, alpha: :func:`augmix`'s arguments (``augmix_severity`` 3,
      ``augmix_width`` 3, ``augmix_depth`` -1, ``augmix_alpha`` 1).
    jsd_weight: the Jensen-Shannon consistency weight (``augmix_jsd_weight``, 12 as in AugMix);
      0 trains on one AugMix view per image instead of the clean image and two views.
  """
  severity: int = 3
  width: int = 3
  depth: int = -1
  alpha: float = 1.0
  jsd_weight: float = 12.0

  @classmethod
  def from_config(cls, config) -> Optional['AugMixSettings']:
    """The settings if ``config.augmix`` is True, else None; ValueError for a bad value."""
    enabled = config.get('augmix', False)
    if not isinstance(enabled, bool):
      raise ValueError(f'augmix must be True or False, got {enabled!r}.')
    if not enabled:
      return None
    if config.get('device_augment', 'none') != 'none':
      # AutoAugment's colour, contrast, brightness and sharpness are the ops AugMix leaves out
      # because they overlap the corruptions; its views would start from them.
      raise ValueError(f"augmix=True with device_augment={config.get('device_augment')!r}: AugMix "
                       "replaces AutoAugment (whose colour/contrast ops it leaves out on purpose); "
                       "set device_augment='none'.")
    if config.get('cutout_size', 0):
      # Cutout runs before the step: the clean image and both AugMix views would share its
      # square, which the Jensen-Shannon term would then teach the model to agree on.
      raise ValueError(f"augmix=True with cutout_size={config.get('cutout_size')!r}: AugMix's "
                       'views and its clean image would share one Cutout square; set '
                       'cutout_size=0.')
    d = cls()
    s = cls(severity=config.get('augmix_severity', d.severity),
            width=config.get('augmix_width', d.width),
            depth=config.get('augmix_depth', d.depth),
            alpha=config.get('augmix_alpha', d.alpha),
            jsd_weight=config.get('augmix_jsd_weight', d.jsd_weight))
    _check_int('augmix_severity', s.severity, range(1, 11), '1..10')
    _check_int('augmix_width', s.width, range(1, 100), '>= 1')
    if s.depth != -1:
      _check_int('augmix_depth', s.depth, range(1, 100), '-1 (random 1..3) or >= 1')
    if not (_is_number(s.alpha) and s.alpha > 0):
      raise ValueError(f'augmix_alpha must be positive, got {s.alpha!r}.')
    if not (_is_number(s.jsd_weight) and s.jsd_weight >= 0):
      raise ValueError(f'augmix_jsd_weight must be >= 0, got {s.jsd_weight!r}.')
    return s

  @property
  def num_views(self) -> int:
    """Images per training image: the clean one and two AugMix views with the JSD term, else 1."""
    return 3 if self.jsd_weight > 0 else 1

  def views(self, images: jax.Array, rng: jax.Array) -> jax.Array:
    """``[x; augmix(x); augmix(x)]`` ([3B, ...], independent views) with the JSD term, else
    ``augmix(x)`` ([B, ...])."""
    mix = lambda k: augmix(images, k, self.severity, self.width, self.depth, self.alpha)  # noqa: E731
    if self.num_views == 1:
      return mix(rng)
    k1, k2 = jax.random.split(rng)
    return jnp.concatenate([images, mix(k1), mix(k2)], axis=0)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(key, value, allowed, described):
  if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
    raise ValueError(f'{key} must be an integer {described}, got {value!r}.')
