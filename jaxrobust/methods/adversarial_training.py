"""Adversarial-training baselines: Madry PGD-AT (``'pgd_at'``) and TRADES (``'trades'``).

Both minimise an adversarial objective of the form of EWS's Eq. 3 (``001_f126abb63f157b30.txt``),
``L_a(x', y) + gamma * L_c(x, y)`` with ``x'`` found by an inner maximisation; EWS (issue 7)
reuses the pure pieces of this module (:func:`craft`, :func:`pgd_at_loss`, :func:`trades_loss`,
:func:`trades_kl`, :func:`attack_settings`).

**PGD-AT** (Madry et al. 2018, "Towards deep learning models resistant to adversarial attacks")::

    x' = PGD_n(x, y)   (L-inf, eps = 8/255, step 2/255, n = 10, uniform random start, CE)
    loss = CE(f(x'), y) + gamma * CE(f(x), y)                  gamma = 0 by default

Batch composition: the B adversarial examples (plus the B clean images when gamma > 0).
Preset ``'madry_pgd10'``; any PGD-family preset without the KL loss may replace it
(``pgd_at_attack``), and ``pgd_at_eps`` / ``pgd_at_step_size`` / ``pgd_at_num_steps`` override
single values.

**TRADES** (Zhang et al. 2019, "Theoretically principled trade-off between robustness and
accuracy")::

    x' = argmax_{||x' - x||_inf <= eps} KL(f(x) || f(x'))   (PGD-10 on the KL, eps 8/255,
                                                             step 2/255, start x + 0.001 N(0, I))
    loss = CE(f(x), y) + beta * (1/B) sum_i KL(p(x_i) || p(x'_i))          beta = 6

(step 2/255 as in the TRADES-AWP code that EWS's TRADES experiments follow; TRADES' own code
uses 0.007) with gradients flowing through *both* ``f(x)`` and ``f(x')`` in the KL (the reference's
``KLDivLoss(log_softmax(model(x_adv)), softmax(model(x_natural)))`` with ``size_average=False``
divided by the batch size, i.e. PyTorch's ``'batchmean'``). In EWS's notation this is Eq. 3 with
``phi = KL`` and ``gamma = 1 / beta``, multiplied by ``beta``.

**BatchNorm rule** (one domain, ``'main'``; crafting never changes running statistics):

* PGD-AT crafting (``pgd_at_craft_bn='batch'``, default): train-mode BN with *batch* statistics
  and running statistics untouched (``update_stats=False``). The attack then maximises exactly
  the function the training pass computes on the adversarial batch (Madry's reference builds the
  attack on its training graph). ``'running'`` crafts with eval-mode BN instead.
* TRADES crafting (``trades_craft_bn='running'``, default): eval-mode BN with the running
  statistics, as the reference does (``model.eval()`` around the attack); the KL target
  ``f(x)`` of the inner loop is computed in the same mode.
* Training passes: train mode (batch statistics) on ``'main'``, each updating the running
  statistics: PGD-AT updates them once with ``x'`` (first with ``x`` and then with ``x'`` when
  gamma > 0); TRADES updates them with ``x`` and then with ``x'``. The TRADES reference runs the
  clean batch twice (once for the CE, once for the KL target); both passes give the same logits
  in train mode, so it is computed once here and the running statistics see ``x`` once.

Cost in forward+backward passes over the batch (a forward alone counted as 1/3): PGD-AT
``n + 1`` (``n + 2`` with gamma > 0), e.g. 11 for PGD-10; TRADES ``n + 1/3 + 2`` = 12.3 for
PGD-10 (n attack steps, the eval-mode forward for the KL target, the clean and adversarial
training passes).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from jaxrobust import attacks
from jaxrobust.attacks import presets, validation
from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method
from jaxrobust.models import MAIN, apply_model

BN_MODES = ('batch', 'running')
OVERRIDABLE = ('eps', 'step_size', 'num_steps')
# Attacks whose keyword arguments the crafting helpers understand.
PGD_FAMILY = ('pgd', 'ifgsm', 'gd', 'fgsm')
# Presets usable as the inner maximisation of PGD-AT (CE-type PGD-family presets).
PGD_AT_PRESETS = tuple(n for n in presets.NAMES
                       if presets.get(n)['attack'] in PGD_FAMILY
                       and presets.get(n).get('loss', 'ce') != 'kl')
# Presets usable as TRADES' inner maximisation (those with the KL loss).
TRADES_PRESETS = tuple(n for n in presets.NAMES if presets.get(n).get('loss') == 'kl')


# ------------------------------------------------------------------------------- attack settings


def attack_settings(config, prefix: str, default_preset: str,
                    allowed: tuple[str, ...]) -> tuple[str, dict]:
  """Resolves a method's attacker from the config: a preset name plus single-value overrides.

  Reads ``<prefix>_attack`` (a preset name from ``allowed``, default ``default_preset``) and the
  optional overrides ``<prefix>_eps``, ``<prefix>_step_size``, ``<prefix>_num_steps`` (None or
  absent = the preset's value).

  Args:
    config: the run's ConfigDict.
    prefix: the method's config prefix, e.g. ``'advprop'``.
    default_preset: preset used when the config has no ``<prefix>_attack``.
    allowed: preset names this method accepts.

  Returns:
    ``(attack_name, kwargs)``: the name for :func:`jaxrobust.attacks.get` and its keyword
    arguments.

  Raises:
    ValueError: unknown preset (naming the allowed ones), an override the preset's attack does
      not take, ``eps < 0``, ``step_size < 0`` or ``num_steps < 1``.
  """
  name = config.get(f'{prefix}_attack', default_preset)
  if name not in allowed:
    raise ValueError(f'Unknown {prefix}_attack {name!r}; allowed presets: {allowed}.')
  kwargs = presets.get(name)
  attack = kwargs.pop('attack')
  for key in OVERRIDABLE:
    value = config.get(f'{prefix}_{key}', None)
    if value is None:
      continue
    if key not in kwargs:
      raise ValueError(f'{prefix}_{key}={value!r}: preset {name!r} ({attack}) has no {key}; '
                       f'it takes {sorted(kwargs)}.')
    kwargs[key] = value
  eps = kwargs['eps']
  validation.check_range(f'{prefix}_eps', eps, low=0.0)
  if kwargs.get('norm', 'linf') == 'linf' and float(eps) > 1:  # the papers' 0-255 units
    raise ValueError(f'{prefix}_eps={eps!r}: an L-inf radius is in [0, 1] pixel units (images '
                     f'are in [0, 1]); allowed: [0, 1]. Did you mean {eps}/255 = {eps / 255:.4f}?')
  if 'step_size' in kwargs:
    validation.check_range(f'{prefix}_step_size', kwargs['step_size'], low=0.0)
  if 'num_steps' in kwargs:
    kwargs['num_steps'] = validation.check_int(f'{prefix}_num_steps', kwargs['num_steps'], low=1)
  return attack, kwargs


def overrides_set(config, prefix: str) -> list[str]:
  """The ``<prefix>_eps`` / ``_step_size`` / ``_num_steps`` overrides that ``config`` sets (not
  None): a method that will not attack refuses them rather than ignore them."""
  return [f'{prefix}_{k}' for k in OVERRIDABLE if config.get(f'{prefix}_{k}') is not None]


def attack_steps(kwargs: dict) -> int:
  """Gradient steps of a PGD-family attack (FGSM: 1)."""
  return int(kwargs.get('num_steps', 1))


def check_nonnegative(key: str, value) -> float:
  """Returns ``float(value)`` if it is a finite number >= 0, else ValueError."""
  validation.check_range(key, value, low=0.0)
  return float(value)


# ------------------------------------------------------------------------------- crafting


def make_logits_fn(model, params, batch_stats: dict, *, domain: str = MAIN,
                   bn_mode: str = 'batch', rngs: Optional[dict] = None):
  """A pure ``x -> logits`` for attacks that changes no running statistics.

  Args:
    model, params, batch_stats: the network and its state (``batch_stats`` keyed by domain).
    domain: the BatchNorm domain (statistics and affine parameters) the attack goes through.
    bn_mode: ``'batch'``: train-mode BN normalising with the batch statistics of the current
      iterate (running statistics untouched); ``'running'``: eval-mode BN with ``domain``'s
      running statistics.
    rngs: dropout rngs for train-mode passes.
  """
  validation.check_choice('bn_mode', bn_mode, BN_MODES)
  train = bn_mode == 'batch'

  def logits_fn(x):
    logits, _ = apply_model(model, params, batch_stats, x, train=train, domain=domain,
                            update_stats=False, rngs=rngs if train else None)
    return logits
  return logits_fn


def random_targets(rng: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """A uniformly random class different from each label: ``(y + U{1..K-1}) mod K``."""
  shift = jax.random.randint(rng, labels.shape, 1, num_classes)
  return (labels + shift) % num_classes


def craft(model, params, batch_stats: dict, x: jax.Array, y: jax.Array, rng: jax.Array, *,
          attack: str, attack_kwargs: dict, domain: str = MAIN, bn_mode: str = 'batch',
          targeted: bool = False, dropout_rng: Optional[jax.Array] = None) -> jax.Array:
  """Adversarial examples for a batch; never changes BatchNorm statistics.

  Args:
    model, params, batch_stats: network state (only read).
    x: clean images [B, H, W, C] in [0, 1].
    y: labels [B].
    rng: key for the random start (and the targets of a targeted attack).
    attack: an attack name (see :func:`jaxrobust.attacks.get`).
    attack_kwargs: its keyword arguments (e.g. from :func:`attack_settings`).
    domain: BatchNorm domain the attack goes through.
    bn_mode: ``'batch'`` or ``'running'`` (see :func:`make_logits_fn`).
    targeted: attack a uniformly random wrong class (minimising its CE) instead of maximising
      the loss of the true class.
    dropout_rng: dropout key for train-mode passes.

  Returns:
    ``stop_gradient``-ed adversarial images, same shape as x, in [0, 1] (and in the eps-ball
    unless the attack is 'gd').
  """
  rng_start, rng_target = jax.random.split(rng)
  rngs = None if dropout_rng is None else {'dropout': dropout_rng}
  logits_fn = make_logits_fn(model, params, batch_stats, domain=domain, bn_mode=bn_mode,
                             rngs=rngs)
  kwargs = dict(attack_kwargs)
  if targeted:
    kwargs.update(targeted=True, target=random_targets(rng_target, y, model.num_classes))
  return attacks.get(attack)(logits_fn, x, y, rng_start, **kwargs)


# ------------------------------------------------------------------------------- losses


def pgd_at_loss(adv_logits: jax.Array, labels: jax.Array, clean_logits: Optional[jax.Array] = None,
                gamma: float = 0.0, label_smoothing: float = 0.0) -> jax.Array:
  """Madry adversarial training loss with an optional clean term (EWS Eq. 3 with phi = CE).

  ``loss = mean_i CE(f(x'_i), y_i) + gamma * mean_i CE(f(x_i), y_i)``

  Args:
    adv_logits: logits of the adversarial examples [B, K].
    labels: labels [B].
    clean_logits: logits of the clean images [B, K]; required when gamma != 0.
    gamma: weight of the clean loss (0 = Madry et al.).
    label_smoothing: label smoothing of both cross-entropies.

  Returns:
    The scalar loss.
  """
  loss = common.cross_entropy(adv_logits, labels, label_smoothing)
  if clean_logits is None:
    if gamma:
      raise ValueError(f'pgd_at_loss: gamma={gamma} needs clean_logits.')
    return loss
  return loss + gamma * common.cross_entropy(clean_logits, labels, label_smoothing)


def trades_kl(clean_logits: jax.Array, adv_logits: jax.Array) -> jax.Array:
  """TRADES' robust term ``(1/B) sum_i KL(p(x_i) || p(x'_i))`` (batchmean), no stop_gradient.

  Unlike :func:`jaxrobust.methods.common.distillation_kl` the clean side is *not* detached:
  TRADES differentiates through ``softmax(f(x))`` as well.
  """
  log_p = jax.nn.log_softmax(clean_logits)
  log_q = jax.nn.log_softmax(adv_logits)
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1))


def trades_loss(clean_logits: jax.Array, adv_logits: jax.Array, labels: jax.Array,
                beta: float = 6.0, label_smoothing: float = 0.0) -> jax.Array:
  """TRADES objective ``CE(f(x), y) + beta * (1/B) sum_i KL(p(x_i) || p(x'_i))``.

  Args:
    clean_logits: logits of the clean images [B, K].
    adv_logits: logits of the adversarial examples [B, K].
    labels: labels [B].
    beta: weight of the robust KL term (6 in the TRADES paper's CIFAR-10 setting).
    label_smoothing: label smoothing of the cross-entropy.

  Returns:
    The scalar loss.
  """
  return (common.cross_entropy(clean_logits, labels, label_smoothing)
          + beta * trades_kl(clean_logits, adv_logits))


# ------------------------------------------------------------------------------- methods


def clean_and_adversarial_passes(model, params, batch_stats, x, x_adv, dropout_rng, *,
                                 with_clean: bool = True):
  """The training passes of PGD-AT / TRADES (and of EWS on them): clean, then adversarial.

  Both go through ``'main'`` normalising with their own batch statistics (BN rule in the module
  docstring), with dropout keys ``fold_in(dropout_rng, 0)`` and ``fold_in(dropout_rng, 1)``; the
  running statistics take both updates, clean first.

  Returns:
    ``(clean_logits, adv_logits, new_batch_stats)``; ``clean_logits`` is None without the clean
    pass.
  """
  clean_logits, stats = None, batch_stats
  if with_clean:
    clean_logits, stats = apply_model(model, params, stats, x, train=True, domain=MAIN,
                                      rngs={'dropout': jax.random.fold_in(dropout_rng, 0)})
  adv_logits, stats = apply_model(model, params, stats, x_adv, train=True, domain=MAIN,
                                  rngs={'dropout': jax.random.fold_in(dropout_rng, 1)})
  return clean_logits, adv_logits, stats


@register('pgd_at')
class PGDAdversarialTraining(Method):
  """Madry PGD adversarial training; see the module docstring for the loss and BN rule.

  Config keys: ``pgd_at_attack`` (preset, default ``'madry_pgd10'``), ``pgd_at_eps``,
  ``pgd_at_step_size``, ``pgd_at_num_steps`` (overrides, None = preset), ``pgd_at_gamma``
  (clean-loss weight, default 0), ``pgd_at_craft_bn`` (``'batch'`` | ``'running'``).
  """
  prefix = 'pgd_at'
  default_preset = 'madry_pgd10'
  allowed_presets = PGD_AT_PRESETS
  default_craft_bn = 'batch'

  def validate(self) -> None:
    c = self.config
    self.attack, self.attack_kwargs = attack_settings(c, self.prefix, self.default_preset,
                                                      self.allowed_presets)
    self.craft_bn = c.get(f'{self.prefix}_craft_bn', self.default_craft_bn)
    validation.check_choice(f'{self.prefix}_craft_bn', self.craft_bn, BN_MODES)
    self._validate_weights()

  def _validate_weights(self) -> None:
    self.gamma = check_nonnegative('pgd_at_gamma', self.config.get('pgd_at_gamma', 0.0))

  def forward_backward_passes(self) -> float:
    """Theoretical step cost in forward+backward passes of the batch (see module docstring)."""
    return attack_steps(self.attack_kwargs) + 1 + (1 if self.gamma else 0)

  def craft(self, params, batch_stats, x, y, rng, dropout_rng=None):
    """Adversarial examples through ``'main'`` with the configured BN mode (no stat updates)."""
    return craft(self.model, params, batch_stats, x, y, rng, attack=self.attack,
                 attack_kwargs=self.attack_kwargs, domain=MAIN, bn_mode=self.craft_bn,
                 dropout_rng=dropout_rng)

  @staticmethod
  def split_rng(rng):
    """``(attack_key, crafting_dropout_key, training_dropout_key)`` of a step."""
    return jax.random.split(rng, 3)

  def craft_batch(self, state, batch, rng):
    """``(x, y, x_adv, training_dropout_key)`` of a step: its adversarial examples, crafted at
    the step's starting weights."""
    x, y = batch['image'], batch['label']
    k_attack, k_craft_drop, k_drop = self.split_rng(rng)
    return x, y, self.craft(state.params, state.batch_stats, x, y, k_attack, k_craft_drop), k_drop

  def update(self, state, x, x_adv, k_drop, loss_of, *, with_clean=True):
    """One optimizer step on ``loss_of(clean_logits, adv_logits)``.

    The passes are :func:`clean_and_adversarial_passes` (the clean one skipped when
    ``with_clean`` is False; its logits are then None).

    Returns:
      ``(state, loss, clean_logits, adv_logits)``, the state after the step.
    """
    def loss_fn(params):
      clean_logits, adv_logits, stats = clean_and_adversarial_passes(
          self.model, params, state.batch_stats, x, x_adv, k_drop, with_clean=with_clean)
      return loss_of(clean_logits, adv_logits), (stats, (clean_logits, adv_logits))

    state, loss, (clean_logits, adv_logits) = common.gradient_step(state, self.tx, loss_fn)
    return state, loss, clean_logits, adv_logits

  def train_step(self, state, batch, rng):
    x, y, x_adv, k_drop = self.craft_batch(state, batch, rng)
    state, loss, clean_logits, adv_logits = self.update(
        state, x, x_adv, k_drop,
        lambda clean, adv: pgd_at_loss(adv, y, clean, self.gamma, self.label_smoothing),
        with_clean=bool(self.gamma))
    metrics = {'loss': loss, 'adv_accuracy': common.accuracy(adv_logits, y),
               'adv_loss': common.cross_entropy(adv_logits, y)}
    if clean_logits is not None:
      metrics['accuracy'] = common.accuracy(clean_logits, y)
    return state, metrics


@register('trades')
class TRADES(PGDAdversarialTraining):
  """TRADES; see the module docstring for the loss and BN rule.

  Config keys: ``trades_attack`` (preset with the KL loss, default ``'trades'``),
  ``trades_eps``, ``trades_step_size``, ``trades_num_steps`` (overrides), ``trades_beta``
  (default 6), ``trades_craft_bn`` (``'running'`` | ``'batch'``, default ``'running'``).
  """
  prefix = 'trades'
  default_preset = 'trades'
  allowed_presets = TRADES_PRESETS
  default_craft_bn = 'running'

  def _validate_weights(self) -> None:
    self.gamma = 0.0
    self.beta = check_nonnegative('trades_beta', self.config.get('trades_beta', 6.0))

  def forward_backward_passes(self) -> float:
    # n attack steps + the forward for the KL target (1/3) + clean and adversarial passes.
    return attack_steps(self.attack_kwargs) + 1 / 3 + 2

  def train_step(self, state, batch, rng):
    x, y, x_adv, k_drop = self.craft_batch(state, batch, rng)
    state, loss, clean_logits, adv_logits = self.update(
        state, x, x_adv, k_drop,
        lambda clean, adv: trades_loss(clean, adv, y, self.beta, self.label_smoothing))
    return state, {'loss': loss, 'accuracy': common.accuracy(clean_logits, y),
                   'adv_accuracy': common.accuracy(adv_logits, y),
                   'trades_kl': trades_kl(clean_logits, adv_logits)}
