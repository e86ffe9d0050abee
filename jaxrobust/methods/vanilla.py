"""Vanilla training: cross-entropy on clean (augmented) images, optionally with AugMix.

BatchNorm: the single training pass normalises with batch statistics and updates ``main``.

AugMix (``config.augmix=True``, keys in ``jaxrobust.augmentations.AugMixSettings``): the pass
runs on ``[x; augmix(x); augmix(x)]`` (3B images, one set of batch statistics, as the AugMix
reference code concatenates them) with the loss ``CE(clean) + 12 JS(clean, view 1, view 2)``
(``methods.common.augmix_loss``); the baseline of EWS's AugMix rows.
"""

import jax

from jaxrobust import augmentations
from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method


@register('vanilla')
class Vanilla(Method):
  """Minimises ``CE(f(x), y)`` (with optional label smoothing), or AugMix's loss."""
  supports_augmix = True

  def validate(self) -> None:
    self.augmix = augmentations.AugMixSettings.from_config(self.config)

  def forward_backward_passes(self) -> float:
    return float(self.augmix.num_views) if self.augmix else 1.0

  def train_step(self, state, batch, rng):
    labels, x = batch['label'], batch['image']
    if self.augmix is not None:
      k_augmix, rng = jax.random.split(rng)
      x = self.augmix.views(x, k_augmix)
    state, loss, logits = common.single_pass_update(
        self.model, self.tx, state, x,
        lambda logits: common.natural_loss(logits, labels, self.augmix, self.label_smoothing)[0],
        rng)
    clean = logits[:labels.shape[0]]  # the clean images lead (the one view without JSD)
    return state, {'loss': loss, 'accuracy': common.accuracy(clean, labels)}
