"""AdvProp: adversarial examples as extra training data through an auxiliary BatchNorm.

Xie et al. 2020, "Adversarial Examples Improve Image Recognition" (``002_3c885072544f102e.txt``),
Algorithm 1. Per step, for the clean (standard-augmented) batch ``x_c`` with labels ``y``:

1. craft ``x_a = PGD(x_c, y)`` through the auxiliary BN (see "Crafting" below);
2. ``L_c = CE(f_main(x_c), y)``: the clean batch through the main BN;
3. ``L_a = CE(f_aux(x_a), y)``: the adversarial batch through the auxiliary BN;
4. minimise ``L = L_c + L_a`` (``advprop_loss='sum'``, default: Algorithm 1's
   ``argmin L_a + L_c`` and Eq. 3) or ``(L_c + L_a) / 2`` (``'mean'``: the mean over the
   concatenated 2B examples, which halves the effective learning rate of ``'sum'``).

All layers but the BatchNorms are shared. Every BN keeps one set of running statistics *and* one
set of affine parameters per domain (``affine_domains``, as the public reimplementations do).

**Batch composition**: B clean + B adversarial examples per step (2B forward passes in training);
fine-grained: B clean + B augmented + B adversarial.

**BatchNorm rule**:

* clean pass: train mode on ``'main'``, updates ``'main'`` running statistics only;
* adversarial pass: train mode on ``'aux'``, updates ``'aux'`` running statistics only;
* crafting: through ``'aux'`` (its affine parameters), running statistics *never* updated.
  ``advprop_craft_bn='batch'`` (default) normalises each attack iterate with its own batch
  statistics, ``'running'`` with the frozen ``'aux'`` running statistics (eval mode). Batch mode is
  the default because (i) the adversarial training pass normalises ``x_a`` with batch statistics,
  so the attack maximises exactly the loss ``L_a`` that step 3 then minimises (the inner max of
  Eq. 3), and (ii) the auxiliary running statistics trail the weights (momentum 0.9) and start
  at (0, 1): early in training eval-mode logits of the aux BN describe a network that no training
  pass computes, so gradients taken through them aim at the wrong function. The price is that the
  examples of a batch interact through the batch statistics during crafting (as they do in the
  training pass).
* evaluation: ``'main'`` (the auxiliary BNs are dropped at test time); ``advprop_eval_aux=True``
  also reports the auxiliary domains (the paper's Table 3 comparison).

**Attacker** (``advprop_attack``, a preset of :mod:`jaxrobust.attacks.presets`, section 4 and
Table 7): ``'advprop_pgd1'`` (eps 1/255, 1 step), ``'advprop_pgd3'`` (eps 2/255, 3 steps),
``'advprop_pgd4'`` (eps 3/255, 4), ``'advprop_pgd5'`` (eps 4/255, 5; the paper's default for large
networks, used here when the config names none), ``'advprop_pgd7'`` (eps 6/255, 7; section 5),
``'advprop_ifgsm5'`` (I-FGSM: no random start) and ``'advprop_gd5'`` (GD: no projection onto the
eps-ball); the paper's 0-255 units are eps in {1, ..., 4}, step alpha = 1. The PGD presets are
L-inf with a uniform random start in the eps-ball. Smaller networks favour weaker attackers
(Table 2): small-net configs use ``'advprop_pgd1'``. ``advprop_eps``, ``advprop_step_size``,
``advprop_num_steps`` override single preset values.
The paper does not say whether the attack is targeted; it is **untargeted** (maximise
``CE(f_aux(x_a), y)``) by default, and ``advprop_targeted=True`` instead minimises the CE of a
uniformly random wrong class per example.

**Fine-grained AdvProp** (section 5.4, Table 5; ``advprop_fine_grained=True``). The paper trains
with AutoAugment and keeps "one main BN for clean images without AutoAugment, and two auxiliary
BNs for clean images with AutoAugment and adversarial examples". Our input pipeline delivers the
standard augmentation (random crop + flip, the paper's non-AutoAugment pre-processing), so:

* ``'main'`` gets the batch as the pipeline delivers it (standard augmentation only);
* ``'aux_augment'`` gets the same batch after an on-device RandAugment
  (:func:`rand_augment`; Cubuk et al. 2019: the AutoAugment operations sampled uniformly, N ops at
  magnitude M, ``advprop_augment_ops=2``, ``advprop_augment_magnitude=9``) standing in for the
  fixed AutoAugment policy, which is not available as a jittable transform;
* ``'aux_adv'`` gets adversarial examples crafted through ``'aux_adv'`` from the
  RandAugment-ed images (``advprop_adv_source='augmented'``: in standard AdvProp-with-AutoAugment
  the adversarial examples are made from the training images, which are AutoAugment-ed) or from
  the pipeline batch (``'clean'``).

Loss: ``L_main + L_augment + L_adv`` (or their mean). Each domain has its own statistics and
affine parameters; crafting updates none.

Cost in forward+backward passes of the batch: ``n + 2`` for PGD-n (``n + 3`` fine-grained).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from jaxrobust.attacks import presets
from jaxrobust.methods import adversarial_training as at
from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method
from jaxrobust.models import MAIN, apply_model

AUX = 'aux'
AUX_AUGMENT = 'aux_augment'
AUX_ADV = 'aux_adv'
ADVPROP_PRESETS = tuple(n for n in presets.NAMES if n.startswith('advprop_'))
LOSS_REDUCTIONS = ('sum', 'mean')
ADV_SOURCES = ('augmented', 'clean')
DEFAULT_PRESET = 'advprop_pgd5'


# ------------------------------------------------------------------------------- the loss


def advprop_loss(domain_losses: Sequence[jax.Array], reduction: str = 'sum') -> jax.Array:
  """Combines the per-domain mean cross-entropies: their sum (Algorithm 1) or their mean."""
  at.check_choice('advprop_loss', reduction, LOSS_REDUCTIONS)
  total = functools.reduce(jnp.add, domain_losses)
  return total if reduction == 'sum' else total / len(domain_losses)


def domain_forward(model, params, batch_stats: dict, groups, labels, rng, *,
                   label_smoothing: float = 0.0):
  """Train-mode passes of each ``(domain, images)`` group, each updating only its domain.

  Args:
    model, params, batch_stats: network state; ``batch_stats`` keyed by domain.
    groups: sequence of ``(domain, images [B, ...])``.
    labels: labels [B] shared by every group.
    rng: dropout key (folded with the group index).
    label_smoothing: of every cross-entropy.

  Returns:
    ``(losses, logits, new_batch_stats)``: per-group mean CE and logits (lists in group order)
    and the statistics after every group's update.
  """
  losses, outputs = [], []
  stats = batch_stats
  for i, (domain, images) in enumerate(groups):
    logits, stats = apply_model(model, params, stats, images, train=True, domain=domain,
                                rngs={'dropout': jax.random.fold_in(rng, i)})
    losses.append(common.cross_entropy(logits, labels, label_smoothing))
    outputs.append(logits)
  return losses, outputs, stats


# ------------------------------------------------------------------------------- RandAugment
# Per-image random operations on float images in [0, 1] (PIL semantics rescaled from 0..255).
# ``level`` = magnitude / 10 in [0, 1]; ranges are AutoAugment's (Cubuk et al. 2019).

_GEOMETRIC = ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y')
_PHOTOMETRIC = ('identity', 'auto_contrast', 'equalize', 'solarize', 'posterize', 'color',
                'contrast', 'brightness', 'sharpness')
AUGMENT_OPS = _PHOTOMETRIC + _GEOMETRIC
_FILL = 0.5  # AutoAugment fills uncovered pixels with grey (128)


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
  """Histogram equalisation per image and channel, via the empirical CDF of the 8-bit values."""
  b, h, w, c = x.shape
  q = jnp.round(x * 255.0).reshape(b, h * w, c)
  q = jnp.moveaxis(q, -1, 1)  # [b, c, n]
  sorted_q = jnp.sort(q, axis=-1)
  count = jax.vmap(jax.vmap(lambda s, v: jnp.searchsorted(s, v, side='right')))(sorted_q, q)
  n = h * w
  cdf = count.astype(x.dtype) / n
  cdf_min = jax.vmap(jax.vmap(lambda s: jnp.searchsorted(s, s[0], side='right')))(sorted_q)
  cdf_min = (cdf_min.astype(x.dtype) / n)[..., None]
  eq = jnp.where(cdf_min < 1.0, (cdf - cdf_min) / jnp.maximum(1.0 - cdf_min, 1e-6), q / 255.0)
  return jnp.moveaxis(jnp.clip(eq, 0.0, 1.0), 1, -1).reshape(b, h, w, c)


def _sharpness_degenerate(x):
  """PIL's SMOOTH filter (3x3, centre weight 5, total 13), border pixels unchanged."""
  kernel = jnp.asarray([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]], x.dtype) / 13.0
  c = x.shape[-1]
  k = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c))
  smooth = jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        feature_group_count=c)
  return x.at[:, 1:-1, 1:-1, :].set(smooth)


def _warp(x, inverse):
  """Bilinear affine warp: output pixel p (centred coords) samples the input at ``inverse @ p``.

  Args:
    x: images [B, H, W, C].
    inverse: [B, 2, 3] maps centred output (row, col, 1) to centred input (row, col).
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
                                     cval=_FILL).reshape(h, w)
    return jax.vmap(channel, in_axes=-1, out_axes=-1)(image)
  return jax.vmap(one)(x, inverse)


def _geometric_inverse(op_index, sign, level, size):
  """Per-image inverse affine matrices [B, 2, 3] for the geometric ops (identity otherwise)."""
  h, w = size
  theta = sign * level * math.radians(30.0)
  shear = sign * level * 0.3
  shift_x = sign * level * (150.0 / 331.0) * w   # AutoAugment: 150 px of 331
  shift_y = sign * level * (150.0 / 331.0) * h
  zero, one = jnp.zeros_like(theta), jnp.ones_like(theta)
  # (row, col) coordinates; each matrix maps output -> input.
  mats = {
      'rotate': jnp.stack([jnp.stack([jnp.cos(theta), -jnp.sin(theta), zero], -1),
                           jnp.stack([jnp.sin(theta), jnp.cos(theta), zero], -1)], -2),
      'shear_x': jnp.stack([jnp.stack([one, zero, zero], -1),
                            jnp.stack([shear, one, zero], -1)], -2),
      'shear_y': jnp.stack([jnp.stack([one, shear, zero], -1),
                            jnp.stack([zero, one, zero], -1)], -2),
      'translate_x': jnp.stack([jnp.stack([one, zero, zero], -1),
                                jnp.stack([zero, one, shift_x], -1)], -2),
      'translate_y': jnp.stack([jnp.stack([one, zero, shift_y], -1),
                                jnp.stack([zero, one, zero], -1)], -2),
  }
  identity = jnp.broadcast_to(jnp.asarray([[1., 0., 0.], [0., 1., 0.]]), theta.shape + (2, 3))
  out = identity
  for name in _GEOMETRIC:
    out = jnp.where((op_index == AUGMENT_OPS.index(name))[:, None, None], mats[name], out)
  return out


def _augment_once(x, rng, level):
  """One RandAugment layer: every image gets one uniformly chosen op with a random sign."""
  b = x.shape[0]
  k_op, k_sign = jax.random.split(rng)
  op = jax.random.randint(k_op, (b,), 0, len(AUGMENT_OPS))
  sign = jnp.where(jax.random.bernoulli(k_sign, 0.5, (b,)), 1.0, -1.0).astype(x.dtype)
  enhance = 1.0 + sign * 0.9 * level  # AutoAugment's enhancement factors in [0.1, 1.9]
  shift = int(level * 4)  # posterize: keep 8 - shift bits (AutoAugment: 4..8 bits)
  step = 2.0 ** shift
  candidates = {
      'identity': x,
      'auto_contrast': _auto_contrast(x),
      'equalize': _equalize(x),
      'solarize': jnp.where(x * 255.0 >= 256.0 * (1.0 - level), 1.0 - x, x),  # PIL threshold
      'posterize': jnp.floor(jnp.round(x * 255.0) / step) * step / 255.0,
      'color': _blend(x, _grey(x), enhance),
      'contrast': _blend(x, jnp.mean(_grey(x), axis=(1, 2, 3), keepdims=True), enhance),
      'brightness': _blend(x, jnp.zeros_like(x), enhance),
      'sharpness': _blend(x, _sharpness_degenerate(x), enhance),
  }
  warped = _warp(x, _geometric_inverse(op, sign, level, x.shape[1:3]))
  out = warped  # geometric ops (and identity matrices elsewhere, overwritten below)
  for name, value in candidates.items():
    out = jnp.where(_per_image(op == AUGMENT_OPS.index(name), x), value, out)
  return out


def rand_augment(images: jax.Array, rng: jax.Array, num_ops: int = 2,
                 magnitude: float = 9.0) -> jax.Array:
  """RandAugment (Cubuk et al. 2019) on device: ``num_ops`` random AutoAugment ops per image.

  The operations are AutoAugment's (identity, auto-contrast, equalize, solarize, posterize,
  color, contrast, brightness, sharpness, rotate up to 30 degrees, shear up to 0.3, translate up
  to 150/331 of the size), each image drawing its own op and sign per layer; ``magnitude`` M in
  [0, 10] scales every range linearly (M/10 of the maximum), as in RandAugment. Equalize uses the
  empirical CDF of the 8-bit values (PIL's lookup table up to rounding); uncovered pixels of
  geometric ops are grey.

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


# ------------------------------------------------------------------------------- the method


def _check_bool(key, value):
  if not isinstance(value, bool):
    raise ValueError(f'{key} must be True or False, got {value!r}.')
  return value


@register('advprop')
class AdvProp(Method):
  """AdvProp (and fine-grained AdvProp); the module docstring states algorithm, loss and BN rule.

  Config keys (defaults in brackets): ``advprop_attack`` ['advprop_pgd5'], ``advprop_eps``,
  ``advprop_step_size``, ``advprop_num_steps`` [None: the preset's], ``advprop_targeted`` [False],
  ``advprop_craft_bn`` ['batch' | 'running'], ``advprop_loss`` ['sum' | 'mean'],
  ``advprop_fine_grained`` [False], ``advprop_augment_ops`` [2], ``advprop_augment_magnitude``
  [9], ``advprop_adv_source`` ['augmented' | 'clean'], ``advprop_eval_aux`` [False].
  """

  def validate(self) -> None:
    c = self.config
    self.attack, self.attack_kwargs = at.attack_settings(c, 'advprop', DEFAULT_PRESET,
                                                         ADVPROP_PRESETS)
    self.craft_bn = c.get('advprop_craft_bn', 'batch')
    at.check_choice('advprop_craft_bn', self.craft_bn, at.BN_MODES)
    self.reduction = c.get('advprop_loss', 'sum')
    at.check_choice('advprop_loss', self.reduction, LOSS_REDUCTIONS)
    self.targeted = _check_bool('advprop_targeted', c.get('advprop_targeted', False))
    self.fine_grained = _check_bool('advprop_fine_grained', c.get('advprop_fine_grained', False))
    self.eval_aux = _check_bool('advprop_eval_aux', c.get('advprop_eval_aux', False))
    self.adv_source = c.get('advprop_adv_source', 'augmented')
    at.check_choice('advprop_adv_source', self.adv_source, ADV_SOURCES)
    ops = c.get('advprop_augment_ops', 2)
    if isinstance(ops, bool) or not isinstance(ops, int) or ops < 0:
      raise ValueError(f'advprop_augment_ops={ops!r} is out of range; allowed: integers >= 0.')
    self.augment_ops = ops
    magnitude = c.get('advprop_augment_magnitude', 9.0)
    if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)) or not (
        0 <= magnitude <= 10):
      raise ValueError(f'advprop_augment_magnitude={magnitude!r} is out of range; allowed: '
                       '[0, 10].')
    self.augment_magnitude = float(magnitude)
    self.label_smoothing = c.get('label_smoothing', 0.0)

  # -- state shape ----------------------------------------------------------------------
  @property
  def adv_domain(self) -> str:
    return AUX_ADV if self.fine_grained else AUX

  def bn_domains(self):
    return (MAIN, AUX_AUGMENT, AUX_ADV) if self.fine_grained else (MAIN, AUX)

  def affine_domains(self):
    return self.bn_domains()[1:]

  def eval_domains(self):
    return self.bn_domains() if self.eval_aux else (MAIN,)

  def forward_backward_passes(self) -> float:
    """Theoretical step cost: n attack steps + one training pass per domain."""
    return at.attack_steps(self.attack_kwargs) + len(self.bn_domains())

  # -- the step -------------------------------------------------------------------------
  def domain_batches(self, params, batch_stats, x, y, rng):
    """The ``(domain, images)`` groups of a step: clean, [augmented,] adversarial.

    Crafting reads ``params``/``batch_stats`` and changes no statistics.
    """
    k_aug, k_attack, k_drop = jax.random.split(rng, 3)
    groups = [(MAIN, x)]
    source = x
    if self.fine_grained:
      x_aug = rand_augment(x, k_aug, self.augment_ops, self.augment_magnitude)
      groups.append((AUX_AUGMENT, x_aug))
      if self.adv_source == 'augmented':
        source = x_aug
    x_adv = at.craft(self.model, params, batch_stats, source, y, k_attack, attack=self.attack,
                     attack_kwargs=self.attack_kwargs, domain=self.adv_domain,
                     bn_mode=self.craft_bn, targeted=self.targeted, dropout_rng=k_drop)
    groups.append((self.adv_domain, x_adv))
    return groups

  @staticmethod
  def split_rng(rng):
    """``(crafting_key, training_dropout_key)`` of a step."""
    return tuple(jax.random.split(rng, 2))

  def train_step(self, state, batch, rng):
    y = batch['label']
    k_craft, k_drop = self.split_rng(rng)
    groups = self.domain_batches(state.params, state.batch_stats, batch['image'], y, k_craft)

    def loss_fn(params):
      losses, logits, stats = domain_forward(self.model, params, state.batch_stats, groups, y,
                                             k_drop, label_smoothing=self.label_smoothing)
      return advprop_loss(losses, self.reduction), (stats, (losses, logits))

    state, loss, (losses, logits) = common.gradient_step(state, self.tx, loss_fn)
    metrics = {'loss': loss}
    names = {MAIN: '', AUX_AUGMENT: 'augment_', AUX: 'adv_', AUX_ADV: 'adv_'}
    for (domain, _), dl, lg in zip(groups, losses, logits):
      metrics[f'{names[domain]}ce'] = dl
      metrics[f'{names[domain]}accuracy'] = common.accuracy(lg, y)
    return state, metrics
