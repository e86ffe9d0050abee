"""Vanilla training: cross-entropy on clean (augmented) images.

BatchNorm: the single training pass normalises with batch statistics and updates ``main``.
"""

import jax

from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method
from jaxrobust.models import MAIN, apply_model


@register('vanilla')
class Vanilla(Method):
  """Minimises ``CE(f(x), y)`` (with optional label smoothing)."""

  def train_step(self, state, batch, rng):
    def loss_fn(params):
      logits, stats = apply_model(self.model, params, state.batch_stats, batch['image'],
                                  train=True, domain=MAIN, rngs={'dropout': rng})
      loss = common.cross_entropy(logits, batch['label'], self.config.get('label_smoothing', 0.0))
      return loss, (stats, logits)

    (loss, (stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = common.apply_gradients(state, grads, self.tx).replace(batch_stats=stats)
    return state, {'loss': loss, 'accuracy': common.accuracy(logits, batch['label'])}
