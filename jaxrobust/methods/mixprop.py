"""MixProp (mixup samples through an auxiliary BatchNorm) and the plain Mixup baseline.

**MixProp** (``'mixprop'``; Zhang et al., "MixProp: Towards High-Performance Image Recognition via
Dual Batch Normalisation", ``004_e0581a0ceb74a177.txt``, section 3.2). Per step, for the clean
(standard-augmented) batch ``x`` with labels ``y``:

1. ``lambda ~ Beta(alpha, alpha)`` once per batch (``mixprop_alpha = 1``, section 4.1) and a random
   permutation ``pi`` of the batch;
2. ``x_m = lambda * x + (1 - lambda) * x[pi]`` ("takes a copy of the original batch ... and
   randomly mixes two arbitrary samples");
3. Eq. 1: ``L = CE(f_main(x), y) + lambda * CE(f_aux(x_m), y) + (1 - lambda) * CE(f_aux(x_m), y[pi])``
   (each CE a mean over the batch), i.e. ``y_a = y`` and ``y_b = y[pi]``.

Batch composition: B clean + B mixed examples (2B forward passes). All layers but the BNs are
shared; every BN has per-domain running statistics and affine parameters (``'aux'`` in
``affine_domains``).

BatchNorm rule: the clean pass runs in train mode on ``'main'`` and updates only ``'main'``
statistics; the mixed pass runs in train mode on ``'aux'`` and updates only ``'aux'``. Evaluation
reports both (the paper's Table 3: main BN for clean accuracy, aux BN for robustness):
``eval_domains() = ('main', 'aux')``; the exported model is the main path.

Data parallelism: lambda is shared by every device (drawn from a key that depends on the step but
not on the device, so it is "one lambda per batch" as in the paper); the mixing partners ``pi``
are drawn within each device's shard (a global permutation would need an all-to-all).

**Mixup** (``'mixup'``; Zhang et al. 2018, as the MixProp paper's baseline, section 4.2: "we
apply mixup to half of the clean samples in each batch under a single set of BN layers"). Of each
(per-device) batch of b examples the last ``m = max(1, round(mixup_fraction * b))``
(``mixup_fraction = 0.5``) are replaced by ``lambda * x_i + (1 - lambda) * x_pi(i)`` with ``pi``
a permutation of the whole batch and ``lambda ~ Beta(mixup_alpha, mixup_alpha)`` per batch; one
train-mode pass of the b examples through ``'main'`` (which updates ``'main'``), loss
``(1/b) [sum_clean CE(f(x_i), y_i) + sum_mixed (lambda CE(f(x'_i), y_i) + (1 - lambda)
CE(f(x'_i), y_pi(i)))]``. ``mixup_fraction = 1`` is standard mixup.

Cost in forward+backward passes of the batch (MixProp paper, Table 4): MixProp 2, Mixup 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrobust.attacks import validation
from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method
from jaxrobust.models import AUX, MAIN, apply_model


# ------------------------------------------------------------------------------- pure pieces


def shared_key(state) -> jax.Array:
  """A key that depends on the run key and the step but not on the device."""
  return common.stream_key(state.rng, 'mixprop/mixing', state.step)


def sample_lambda(rng: jax.Array, alpha: float) -> jax.Array:
  """``lambda ~ Beta(alpha, alpha)`` (a float32 scalar)."""
  return jax.random.beta(rng, alpha, alpha, dtype=jnp.float32)


def step_mixing(state, rng: jax.Array, batch_size: int, alpha: float):
  """The random choices of a mixup step.

  Args:
    state: the train state (its rng and step give the device-independent lambda key).
    rng: this device's step key.
    batch_size: per-device batch size.
    alpha: Beta parameter.

  Returns:
    ``(lambda, perm, dropout_key)``: lambda shared by every device, a permutation of this
    device's batch, and the key for the training pass's dropout.
  """
  k_perm, k_drop = jax.random.split(rng)
  return (sample_lambda(shared_key(state), alpha), jax.random.permutation(k_perm, batch_size),
          k_drop)


def mix(x: jax.Array, perm: jax.Array, lam) -> jax.Array:
  """``lambda * x + (1 - lambda) * x[perm]`` (stays in [0, 1] for x in [0, 1])."""
  return lam * x + (1.0 - lam) * x[perm]


def mixup_cross_entropy(logits, labels_a, labels_b, lam, label_smoothing: float = 0.0):
  """``lambda * CE(logits, y_a) + (1 - lambda) * CE(logits, y_b)``, each a batch mean."""
  return (lam * common.cross_entropy(logits, labels_a, label_smoothing)
          + (1.0 - lam) * common.cross_entropy(logits, labels_b, label_smoothing))


def mixprop_loss(clean_logits, mixed_logits, labels, perm, lam, label_smoothing: float = 0.0):
  """MixProp's Eq. 1: ``CE(f_main(x), y) + lam CE(f_aux(x_m), y) + (1 - lam) CE(f_aux(x_m), y[perm])``.

  Args:
    clean_logits: main-BN logits of the clean batch [B, K].
    mixed_logits: aux-BN logits of the mixed batch [B, K].
    labels: labels [B] of the clean batch (``y_a``).
    perm: the mixing permutation [B] (``y_b = labels[perm]``).
    lam: the mixing coefficient.
    label_smoothing: of every cross-entropy.
  """
  return (common.cross_entropy(clean_logits, labels, label_smoothing)
          + mixup_cross_entropy(mixed_logits, labels, labels[perm], lam, label_smoothing))


def partial_mix(x, perm, lam, num_mixed: int):
  """Replaces the last ``num_mixed`` images by their mixup with partners ``x[perm]``.

  Returns:
    ``(images, is_mixed [B] bool)``.
  """
  b = x.shape[0]
  is_mixed = jnp.arange(b) >= b - num_mixed
  mixed = mix(x, perm, lam)
  return jnp.where(is_mixed.reshape((b,) + (1,) * (x.ndim - 1)), mixed, x), is_mixed


def partial_mixup_loss(logits, labels, perm, lam, is_mixed, label_smoothing: float = 0.0):
  """Mean over the batch of CE (clean rows) and ``lam CE(y) + (1 - lam) CE(y[perm])`` (mixed)."""
  ce_a = common.per_example_ce(logits, labels, label_smoothing)
  ce_b = common.per_example_ce(logits, labels[perm], label_smoothing)
  return jnp.mean(jnp.where(is_mixed, lam * ce_a + (1.0 - lam) * ce_b, ce_a))


def _check_alpha(key, value) -> float:
  validation.check_range(key, value, low=0.0, low_inclusive=False)
  return float(value)


# ------------------------------------------------------------------------------- methods


@register('mixprop')
class MixProp(Method):
  """MixProp; the module docstring states the algorithm, Eq. 1 and the BN rule.

  Config keys: ``mixprop_alpha`` (Beta parameter, default 1).
  """
  defaults = {'mixprop_alpha': 1.0}

  def validate(self) -> None:
    self.alpha = _check_alpha('mixprop_alpha', self.option('mixprop_alpha'))

  def bn_domains(self):
    return (MAIN, AUX)

  def affine_domains(self):
    return (AUX,)

  def eval_domains(self):
    return (MAIN, AUX)

  def forward_backward_passes(self) -> float:
    return 2.0

  def train_step(self, state, batch, rng):
    x, y = batch['image'], batch['label']
    lam, perm, k_drop = step_mixing(state, rng, x.shape[0], self.alpha)
    x_mix = mix(x, perm, lam)

    def loss_fn(params):
      clean_logits, stats = apply_model(self.model, params, state.batch_stats, x, train=True,
                                        domain=MAIN, rngs={'dropout': jax.random.fold_in(k_drop, 0)})
      mixed_logits, stats = apply_model(self.model, params, stats, x_mix, train=True, domain=AUX,
                                        rngs={'dropout': jax.random.fold_in(k_drop, 1)})
      loss = mixprop_loss(clean_logits, mixed_logits, y, perm, lam, self.label_smoothing)
      return loss, (stats, (clean_logits, mixed_logits))

    state, loss, (clean_logits, mixed_logits) = common.gradient_step(state, self.tx, loss_fn)
    return state, {'loss': loss, 'accuracy': common.accuracy(clean_logits, y),
                   'mix_loss': mixup_cross_entropy(mixed_logits, y, y[perm], lam),
                   'lambda': lam}


@register('mixup')
class Mixup(Method):
  """Mixup on a fraction of each batch with a single BN; see the module docstring.

  Config keys: ``mixup_alpha`` (default 1), ``mixup_fraction`` (in (0, 1], default 0.5).
  """
  defaults = {'mixup_alpha': 1.0, 'mixup_fraction': 0.5}

  def validate(self) -> None:
    self.alpha = _check_alpha('mixup_alpha', self.option('mixup_alpha'))
    fraction = self.option('mixup_fraction')
    validation.check_range('mixup_fraction', fraction, low=0.0, high=1.0, low_inclusive=False)
    self.fraction = float(fraction)

  def forward_backward_passes(self) -> float:
    return 1.0

  def num_mixed(self, batch_size: int) -> int:
    """Mixed examples of a per-device batch (at least one)."""
    return max(1, int(round(self.fraction * batch_size)))

  def train_step(self, state, batch, rng):
    x, y = batch['image'], batch['label']
    lam, perm, k_drop = step_mixing(state, rng, x.shape[0], self.alpha)
    images, is_mixed = partial_mix(x, perm, lam, self.num_mixed(x.shape[0]))
    state, loss, logits = common.single_pass_update(
        self.model, self.tx, state, images,
        lambda logits: partial_mixup_loss(logits, y, perm, lam, is_mixed, self.label_smoothing),
        k_drop)
    clean = (~is_mixed).astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return state, {'loss': loss, 'lambda': lam,
                   'accuracy': jnp.sum(correct * clean) / jnp.maximum(jnp.sum(clean), 1.0)}
