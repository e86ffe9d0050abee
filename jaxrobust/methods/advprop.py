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
networks, used here when the config names none), ``'advprop_pgd7'`` (eps 6/255, 7; section 5.3),
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
* ``'aux_augment'`` gets the same batch after an on-device AutoAugment with the learned policy
  of ``advprop_augment`` (``'autoaugment_cifar10'`` or ``'autoaugment_imagenet'``,
  :func:`jaxrobust.augmentations.autoaugment`; the configs pick the dataset's: the AutoAugment
  paper's policies with torchvision's magnitudes, not EfficientNet's ``v0`` policy of the TPU
  code AdvProp trained with, which has other sub-policies), or after
  RandAugment (``'randaugment'``, :func:`jaxrobust.augmentations.rand_augment`: the AutoAugment
  operations sampled uniformly, ``advprop_augment_ops`` N = 2 at ``advprop_augment_magnitude``
  M = 9; also what a saved run without the key trained with);
* ``'aux_adv'`` gets adversarial examples crafted through ``'aux_adv'`` from the
  augmented images (``advprop_adv_source='augmented'``: in standard AdvProp-with-AutoAugment
  the adversarial examples are made from the training images, which are AutoAugment-ed) or from
  the pipeline batch (``'clean'``).

Loss: ``L_main + L_augment + L_adv`` (or their mean). Each domain has its own statistics and
affine parameters; crafting updates none.

Cost in forward+backward passes of the batch: ``n + 2`` for PGD-n (``n + 3`` fine-grained).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxrobust.attacks import presets, validation
from jaxrobust import augmentations
from jaxrobust.methods import adversarial_training as at
from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method
from jaxrobust.models import AUX, MAIN, apply_model

AUX_AUGMENT = 'aux_augment'
AUX_ADV = 'aux_adv'
ADVPROP_PRESETS = tuple(n for n in presets.NAMES if n.startswith('advprop_'))
LOSS_REDUCTIONS = ('sum', 'mean')
# The aux_augment domain's augmentation (fine-grained AdvProp): AutoAugment's learned policies,
# or RandAugment.
AUGMENTS = ('randaugment',) + tuple(f'autoaugment_{p}' for p in augmentations.AUTOAUGMENT_POLICIES)
ADV_SOURCES = ('augmented', 'clean')
DEFAULT_PRESET = 'advprop_pgd5'


# ------------------------------------------------------------------------------- the loss


def advprop_loss(domain_losses: Sequence[jax.Array], reduction: str = 'sum') -> jax.Array:
  """Combines the per-domain mean cross-entropies: their sum (Algorithm 1) or their mean."""
  validation.check_choice('advprop_loss', reduction, LOSS_REDUCTIONS)
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


# ------------------------------------------------------------------------------- the method


@register('advprop')
class AdvProp(Method):
  """AdvProp (and fine-grained AdvProp); the module docstring states algorithm, loss and BN rule.

  Config keys (defaults in brackets): ``advprop_attack`` ['advprop_pgd5'], ``advprop_eps``,
  ``advprop_step_size``, ``advprop_num_steps`` [None: the preset's], ``advprop_targeted`` [False],
  ``advprop_craft_bn`` ['batch' | 'running'], ``advprop_loss`` ['sum' | 'mean'],
  ``advprop_fine_grained`` [False], ``advprop_augment`` ['randaugment' |
  'autoaugment_cifar10' | 'autoaugment_imagenet'], ``advprop_augment_ops`` [2],
  ``advprop_augment_magnitude`` [9] (RandAugment's), ``advprop_adv_source`` ['augmented' |
  'clean'], ``advprop_eval_aux`` [False].
  """

  def validate(self) -> None:
    c = self.config
    self.attack, self.attack_kwargs = at.attack_settings(c, 'advprop', DEFAULT_PRESET,
                                                         ADVPROP_PRESETS)
    self.craft_bn = c.get('advprop_craft_bn', 'batch')
    validation.check_choice('advprop_craft_bn', self.craft_bn, at.BN_MODES)
    self.reduction = c.get('advprop_loss', 'sum')
    validation.check_choice('advprop_loss', self.reduction, LOSS_REDUCTIONS)
    self.targeted = validation.check_bool('advprop_targeted', c.get('advprop_targeted', False))
    self.fine_grained = validation.check_bool('advprop_fine_grained',
                                              c.get('advprop_fine_grained', False))
    self.eval_aux = validation.check_bool('advprop_eval_aux', c.get('advprop_eval_aux', False))
    device_augment, cutout = c.get('device_augment', 'none'), c.get('cutout_size', 0)
    if self.fine_grained and (device_augment != 'none' or cutout):
      # The loop augments every batch before the step: 'main' would no longer see the clean
      # images the paper keeps it for, and 'aux_augment' would be augmented twice.
      raise ValueError(
          f'advprop_fine_grained=True with device_augment={device_augment!r}, cutout_size='
          f'{cutout!r}: fine-grained AdvProp augments its own aux_augment batch '
          "(advprop_augment) and keeps the main BN on clean images; set device_augment='none' "
          'and cutout_size=0.')
    self.adv_source = c.get('advprop_adv_source', 'augmented')
    validation.check_choice('advprop_adv_source', self.adv_source, ADV_SOURCES)
    self.augment = c.get('advprop_augment', 'randaugment')
    validation.check_choice('advprop_augment', self.augment, AUGMENTS)
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
  def augment_images(self, x, rng):
    """The ``'aux_augment'`` domain's images: ``advprop_augment`` applied to ``x``."""
    if self.augment == 'randaugment':
      return augmentations.rand_augment(x, rng, self.augment_ops, self.augment_magnitude)
    return augmentations.autoaugment(x, rng, self.augment[len('autoaugment_'):])

  def domain_batches(self, params, batch_stats, x, y, rng):
    """The ``(domain, images)`` groups of a step: clean, [augmented,] adversarial.

    Crafting reads ``params``/``batch_stats`` and changes no statistics.
    """
    k_aug, k_attack, k_drop = jax.random.split(rng, 3)
    groups = [(MAIN, x)]
    source = x
    if self.fine_grained:
      x_aug = self.augment_images(x, k_aug)
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
