"""Vanilla training: cross-entropy on clean (augmented) images.

BatchNorm: the single training pass normalises with batch statistics and updates ``main``.
"""

from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method


@register('vanilla')
class Vanilla(Method):
  """Minimises ``CE(f(x), y)`` (with optional label smoothing)."""

  def train_step(self, state, batch, rng):
    labels = batch['label']
    smoothing = self.config.get('label_smoothing', 0.0)
    state, loss, logits = common.single_pass_update(
        self.model, self.tx, state, batch['image'],
        lambda logits: common.cross_entropy(logits, labels, smoothing), rng)
    return state, {'loss': loss, 'accuracy': common.accuracy(logits, labels)}
