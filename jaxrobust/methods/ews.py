"""EWS: identify and enhance weak subnets (Guo, Stutz & Schiele 2022), with PGD-AT, TRADES, AWP.

Paper ``001_f126abb63f157b30.txt``, sections 3-5, Algorithm 1, supplementary A-E.

**Subnets** (:mod:`jaxrobust.models.subnets`): a subnet of width ``rho`` (0.5) keeps, in every
residual block, ``round(2 rho)`` of its two paths (residual branch, shortcut) and, in every
convolution of the block, ``round(rho C)`` of its ``C`` output channels (at most ``C - 1``, so
that a subnet always drops a channel; :func:`jaxrobust.models.subnets.num_kept`). It is a pytree
of 0/1 arrays passed to the backbone (``subnet=masks``), so one compiled step serves every
subnet.

**Algorithm** (Algorithm 1). Alternate

1. *Search* (every ``ews_search_every_epochs = K`` epochs, 10 in the paper; a :class:`Hook` with
   its own jitted body, run after epochs K, 2K, ... but not after the last step, where nothing
   would train on its subnets; Algorithm 1's "if i mod K = 0" at the top of epoch i searches one
   epoch earlier, after epochs K-1, 2K-1, ...): on a fixed subset ``D_s`` holding
   ``ews_search_fraction`` (10%) of the training set, one controller step per batch, starting
   from a freshly initialised controller (``ews_controller_restart``; **a change from the
   paper**, whose controller carries on from search to search; why in
   :meth:`EWS.restart_controller`): sample ``C = ews_search_num_subnets`` (8) subnets
   ``alpha_i ~ pi_theta`` from the LSTM controller (:mod:`jaxrobust.models.controller`),
   reward ``R_i = -accuracy(alpha_i, batch)``, and minimise the REINFORCE loss
   ``-1/C sum_i (R_i - b) log pi(alpha_i) - w_H * mean_i H_i`` with a moving-average baseline
   ``b <- d b + (1 - d) mean_i R_i`` (restarted from the mean reward of every search's first
   batch) and an entropy bonus (Eq. 1: the controller learns to produce *weak*
   subnets). The adversarial variant (section 3.4.1, default for the adversarial bases) evaluates
   the subnets on PGD examples of the batch crafted on the full network with the base method's
   attack.
   After each search, the mean accuracy of C controller subnets and of C uniformly random
   subnets on ``ews_compare_batches`` batches of a second shuffle of the training set (which
   may overlap ``D_s``) is recorded (``search_controller_accuracy`` /
   ``search_random_accuracy`` in the training metrics): the controller's subnets should be the
   weaker ones. Search baselines (Table 5, ``ews_search``): ``'random'`` (a uniformly random
   subnet every step, no search) and ``'l1'`` (the subnet of lowest-L1-norm paths/channels,
   recomputed at every search).
2. *Training*: every step samples one subnet ``alpha ~ pi_theta`` (the same on every device)
   and minimises the base loss plus ``lambda * KL(M(x) || alpha(x))`` (``ews_lambda``: 1 on
   CIFAR, 0.7 on ImageNet) with the full network's output ``stop_gradient``-ed (Eq. 2;
   ``methods.common.distillation_kl``). The subnet shares every weight with the full
   network, so the KL trains the shared weights through the subnet only.
   **Reduction** (``ews_kl_reduction``): the paper does not say; the authors' code uses
   PyTorch's default ``nn.KLDivLoss()``, the mean over the B*K elements, i.e. the per-example
   KL divided by the number of classes K. The paper's lambda values (1, 0.7) are in those units,
   so ``'mean'`` is the default; ``'batchmean'`` (the per-example KL, K times stronger at the same
   lambda) is the alternative. On the CPU budget, ``'batchmean'`` with lambda = 1 (10x the
   authors' strength on CIFAR-10) cost ResNet-8-wide 6.4 points of clean accuracy. One public
   adversarial EWS training script (not confirmed to be the authors') uses a per-example KL with
   lambda 0.1 instead: on CIFAR-10 (K = 10) the same term as ``'mean'`` with lambda = 1.

**Losses per base** (Eq. 2-4; ``x'`` = PGD examples of the full network):

* ``'ews'`` (natural): ``CE(M(x), y) + lambda KL(M(x) || alpha(x))``.
* ``'ews_pgd_at'``: ``phi = CE``, ``gamma = pgd_at_gamma`` (0):
  ``CE(M(x'), y) + lambda KL(M(x') || alpha(x'))``
  ``+ gamma [CE(M(x), y) + lambda KL(M(x) || alpha(x))]``.
* ``'ews_trades'``: ``phi = KL(M(x) || M(x'))`` (through both sides, as TRADES), ``gamma = 1/6``.
  Eq. 3-4 multiplied by ``beta = 1/gamma = trades_beta`` (6) so that ``lambda = 0`` is exactly
  the published TRADES loss and its learning rate:
  ``CE(M(x), y) + beta KL(M(x) || M(x'))``
  ``+ lambda [beta KL(M(x') || alpha(x')) + KL(M(x) || alpha(x))]``.
* ``'awp'``: PGD-AT or TRADES (``awp_base``) with adversarial weight perturbation and no EWS.

The adversarial bases reuse :mod:`jaxrobust.methods.adversarial_training` and its config keys
(``pgd_at_attack``, ``pgd_at_gamma``, ``pgd_at_craft_bn``, ``trades_attack``, ``trades_beta``,
``trades_craft_bn``, ...), so ``lambda = 0`` reproduces ``'pgd_at'`` / ``'trades'`` exactly.

**AWP** (Wu, Xia & Wang 2020; ``awp_gamma > 0``, after ``awp_warmup_epochs`` epochs without it):
per step, one ascent step on the weights, layer-wise relative to the weight norm: with ``g_l`` the
(device-averaged) gradient of the *base* loss (on the already crafted ``x'``, train-mode BN,
no statistics update) w.r.t. the kernel ``w_l`` of every convolution / dense layer,
``v_l = awp_gamma * ||w_l|| * g_l / ||g_l||`` (biases and BN parameters are not perturbed); the
training gradient is taken at ``w + v`` and applied to ``w``. Published defaults: ``awp_gamma =
5e-3`` (the AWP paper; the official AT-AWP script uses 1e-2, TRADES-AWP 5e-3 from its 10th
epoch, i.e. ``awp_warmup_epochs = 9``). With EWS, the KL terms are evaluated at the perturbed
weights too. Weight decay (part of the optimiser) acts on ``w``; the official code steps its
optimiser on the perturbed model, so it decays ``w + v``: a difference of ``wd * v``, 2.5e-6
``||w_l||`` per layer at the defaults (wd 5e-4, gamma 5e-3).

**Batch composition** per step: natural: B clean through the full network + B through the
subnet. PGD-AT: B adversarial (+ B clean if gamma > 0) through the full network, and the same
batches through the subnet. TRADES: B clean + B adversarial through the full network and through
the subnet.

**BatchNorm rule** (one domain, ``'main'``):

* full-network training passes: train mode, update ``'main'`` (as the base method does);
* subnet passes (training, search, comparisons): train mode with the subnet's own *batch*
  statistics, running statistics untouched (``update_stats=False``);
* crafting (training and search): the base method's rule (PGD-AT: batch statistics; TRADES:
  running statistics), never updating statistics; the AWP ascent pass: batch statistics, no
  update;
* evaluation: the full network with ``'main'`` running statistics.

**AugMix** (``augmix=True``, natural training; ``jaxrobust.augmentations.AugMixSettings``; the
paper's CIFAR setting is ``augmix_severity=5`` with the JSD loss, ``configs/ews_augmix_cifar.py``):
the full network trains on ``[x; augmix(x); augmix(x)]`` with AugMix's loss
``CE(M(x), y) + 12 JS(M(x), M(view 1), M(view 2))`` (``methods.common.augmix_loss``), and the
subnet distils from the full network on all 3B images. **AutoAugment** (the CIFAR-10 policy,
then Cutout; ``configs/ews_autoaugment_cifar.py``) is an input augmentation the training loop
applies before this step (``config.device_augment``), so the full network and the subnet see
the same augmented batch (the search's subset ``D_s`` keeps the host's crop and flip only). Not
implemented: DeepAugment (it needs pretrained image-to-image
networks).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from jaxrobust import augmentations, parallel
from jaxrobust.attacks import validation
from jaxrobust.methods import adversarial_training as at
from jaxrobust.methods import common, register
from jaxrobust.methods.base import Hook, Method
from jaxrobust.models import MAIN, apply_model
from jaxrobust.models import controller as controller_lib
from jaxrobust.models import subnets

SEARCHES = ('controller', 'random', 'l1')
SEARCH_ON = ('auto', 'clean', 'adversarial')
AWP_BASES = ('pgd_at', 'trades')
_AWP_EPS = 1e-20


# ------------------------------------------------------------------------------- pure pieces


def subnet_distillation(model, params, batch_stats: dict, x, full_logits, masks, *,
                        rngs: Optional[dict] = None, reduction: str = 'mean'):
  """EWS's distillation term ``KL(M(x) || alpha(x))`` (Eq. 2), teacher ``stop_gradient``-ed.

  The subnet pass normalises with its own batch statistics and leaves the running statistics
  untouched.

  Args:
    model, params, batch_stats: the backbone and its state (statistics keyed by domain).
    x: images in [0, 1].
    full_logits: the full network's logits on ``x`` (the teacher; detached here).
    masks: the subnet (see :mod:`jaxrobust.models.subnets`).
    rngs: dropout rngs.
    reduction: ``'mean'`` (over the B*K elements, the authors' ``nn.KLDivLoss()``) or
      ``'batchmean'`` (per example); see :func:`jaxrobust.methods.common.distillation_kl`.

  Returns:
    ``(kl, subnet_logits)``.
  """
  sub_logits, _ = apply_model(model, params, batch_stats, x, train=True, domain=MAIN,
                              update_stats=False, rngs=rngs, subnet=masks)
  return common.distillation_kl(full_logits, sub_logits, reduction=reduction), sub_logits


def subnet_accuracies(model, params, batch_stats: dict, x, y, masks) -> jax.Array:
  """Accuracy of each of a batch of subnets (masks with a leading [N] axis) on ``(x, y)``.

  Subnets run one after another (``lax.map``: memory of one forward pass), with batch
  statistics, no statistics update and no dropout (a measurement, not a training pass).
  Per-device values (pmean them across devices).

  Returns:
    [N] accuracies.
  """
  def one(m):
    logits, _ = apply_model(model, params, batch_stats, x, train=True, domain=MAIN,
                            update_stats=False, subnet=m, dropout=False)
    return common.accuracy(logits, y)
  return jax.lax.map(one, masks)


def is_perturbed_weight(path, leaf) -> bool:
  """AWP perturbs the kernels of convolutions and dense layers (weights with >= 2 dims)."""
  last = path[-1]
  name = getattr(last, 'key', getattr(last, 'name', str(last)))
  return name == 'kernel' and leaf.ndim >= 2


def awp_perturbation(params, grads, gamma):
  """AWP's layer-wise weight perturbation ``v_l = gamma ||w_l|| g_l / ||g_l||``.

  One normalised ascent step per weight tensor (Wu et al. 2020: the proxy's SGD step rescaled
  to ``||w_l||``); zero for biases and BatchNorm parameters.

  Args:
    params: the weights ``w``.
    grads: the gradient of the loss to *increase* w.r.t. ``params``.
    gamma: the relative size of the perturbation.

  Returns:
    A pytree like ``params``.
  """
  def v(path, w, g):
    if not is_perturbed_weight(path, w):
      return jnp.zeros_like(w)
    return gamma * jnp.linalg.norm(w) / (jnp.linalg.norm(g) + _AWP_EPS) * g
  return jax.tree_util.tree_map_with_path(v, params, grads)


# ------------------------------------------------------------------------------- the method


@register('ews')
class EWS(Method):
  """EWS on natural training; see the module docstring.

  Config keys (flat, with the paper's defaults): ``ews_lambda`` (1.0), ``ews_kl_reduction``
  ('mean' | 'batchmean'), ``ews_rho`` (0.5),
  ``ews_search`` ('controller' | 'random' | 'l1'), ``ews_search_every_epochs`` (K = 10),
  ``ews_search_fraction`` (0.1), ``ews_search_num_subnets`` (C = 8), ``ews_search_on``
  ('auto' | 'clean' | 'adversarial'; auto = adversarial for the adversarial bases),
  ``ews_search_attack`` (a preset for the adversarial search of the natural base; default
  'madry_pgd10') with optional ``ews_search_eps`` / ``ews_search_step_size`` /
  ``ews_search_num_steps`` overrides and ``ews_search_craft_bn`` ('batch' | 'running'),
  ``ews_controller_lr`` (Adam, 1e-2), ``ews_controller_hidden`` (100, the LSTM's; the
  embeddings are 100-d),
  ``ews_entropy_weight`` (1e-4), ``ews_baseline_decay`` (0.95), ``ews_compare_batches`` (4),
  ``ews_controller_restart`` (True: every search starts from a freshly initialised controller),
  ``awp_gamma`` (0 = off), ``awp_warmup_epochs`` (0).
  """
  base_name = 'natural'
  uses_ews = True
  default_awp_gamma = 0.0
  supports_augmix = True  # natural training only; the adversarial subclasses set False

  # -- configuration ----------------------------------------------------------------------
  def _resolve_base_name(self) -> str:
    return self.base_name

  def validate(self) -> None:
    c = self.config
    self.base_kind = self._resolve_base_name()
    self.base = {'natural': None, 'pgd_at': at.PGDAdversarialTraining,
                 'trades': at.TRADES}[self.base_kind]
    if self.base is not None:
      self.base = self.base(c)  # validates the base's own keys (pgd_at_* / trades_*)
    self.augmix = augmentations.AugMixSettings.from_config(c)
    self.lam = (at.check_nonnegative('ews_lambda', c.get('ews_lambda', 1.0))
                if self.uses_ews else 0.0)
    self.kl_reduction = c.get('ews_kl_reduction', 'mean')
    validation.check_choice('ews_kl_reduction', self.kl_reduction, common.KL_REDUCTIONS)
    self.rho = subnets.check_rho(c.get('ews_rho', 0.5))
    if self.rho >= 1.0:
      raise ValueError(f'ews_rho={self.rho}: a subnet needs rho in (0, 1) (rho = 1 is the full '
                       'network and makes the distillation loss 0).')
    self.search = c.get('ews_search', 'controller')
    validation.check_choice('ews_search', self.search, SEARCHES)
    self.search_every_epochs = float(c.get('ews_search_every_epochs', 10.0))
    if not self.search_every_epochs > 0:
      raise ValueError(f'ews_search_every_epochs must be > 0, got {self.search_every_epochs}.')
    self.search_fraction = float(c.get('ews_search_fraction', 0.1))
    if not 0.0 < self.search_fraction <= 1.0:
      raise ValueError(f'ews_search_fraction must be in (0, 1], got {self.search_fraction}.')
    self.num_subnets = validation.check_int('ews_search_num_subnets',
                                            c.get('ews_search_num_subnets', 8), low=1)
    search_on = c.get('ews_search_on', 'auto')
    validation.check_choice('ews_search_on', search_on, SEARCH_ON)
    self.search_adversarial = (search_on == 'adversarial' or
                               (search_on == 'auto' and self.base is not None))
    self.search_attack = None
    if self.search_adversarial and self.base is None:
      self.search_attack = at.attack_settings(c, 'ews_search', 'madry_pgd10',
                                              at.PGD_AT_PRESETS + at.TRADES_PRESETS)
      self.search_craft_bn = c.get('ews_search_craft_bn', 'batch')
      validation.check_choice('ews_search_craft_bn', self.search_craft_bn, at.BN_MODES)
    else:  # an attack setting that would do nothing is an error, not silently ignored
      unused = at.overrides_set(c, 'ews_search')
      unused += [k for k, default in (('ews_search_attack', 'madry_pgd10'),
                                      ('ews_search_craft_bn', 'batch'))
                 if c.get(k, default) != default]
      if unused:
        uses = (f"its base's own attack (the {self.base_kind}_* keys)"
                if self.search_adversarial else 'clean images')
        raise ValueError(f'{", ".join(unused)} only apply to the adversarial search of natural '
                         f'EWS (ews_search_on=adversarial); this run searches on {uses}.')
    self.controller_lr = float(c.get('ews_controller_lr', 1e-2))
    if not self.controller_lr > 0:
      raise ValueError(f'ews_controller_lr must be > 0, got {self.controller_lr}.')
    self.controller_hidden = validation.check_int('ews_controller_hidden',
                                                  c.get('ews_controller_hidden', 100), low=1)
    self.entropy_weight = at.check_nonnegative('ews_entropy_weight',
                                               c.get('ews_entropy_weight', 1e-4))
    self.baseline_decay = float(c.get('ews_baseline_decay', 0.95))
    if not 0.0 <= self.baseline_decay <= 1.0:
      raise ValueError(f'ews_baseline_decay must be in [0, 1], got {self.baseline_decay}.')
    self.controller_restart = validation.check_bool('ews_controller_restart',
                                                    c.get('ews_controller_restart', True))
    self.compare_batches = validation.check_int('ews_compare_batches',
                                                c.get('ews_compare_batches', 4), low=0)
    self.awp_gamma = at.check_nonnegative('awp_gamma', c.get('awp_gamma', self.default_awp_gamma))
    self.awp_warmup_epochs = at.check_nonnegative('awp_warmup_epochs',
                                                  c.get('awp_warmup_epochs', 0.0))
    if self.awp_gamma > 0 and self.base is None:
      raise ValueError(f'awp_gamma={self.awp_gamma}: adversarial weight perturbation belongs to '
                       "adversarial training (methods 'ews_pgd_at', 'ews_trades', 'awp'); "
                       f"method {c.method!r} trains on clean images. Set awp_gamma=0.")

  @property
  def has_subnets(self) -> bool:
    return self.uses_ews and self.lam > 0

  @property
  def has_controller(self) -> bool:
    return self.has_subnets and self.search == 'controller'

  def setup(self, ctx) -> None:
    super().setup(ctx)
    if self.base is not None:
      self.base.setup(ctx)
    image_shape = tuple(ctx.info.image_shape) if ctx.info is not None else (32, 32, 3)
    self.space = subnets.subnet_space(ctx.model, self.rho, image_shape=image_shape)
    # The embeddings stay 100-d (supplementary A) whatever the LSTM's size (the paper leaves
    # that open).
    self.controller = controller_lib.SubnetController(slots=self.space.slots,
                                                      hidden_size=self.controller_hidden)
    self.controller_tx = optax.adam(self.controller_lr)
    self.awp_warmup_steps = int(round(self.awp_warmup_epochs * ctx.steps_per_epoch))
    self._search_fns = None

  def forward_backward_passes(self) -> float:
    """Theoretical step cost in forward+backward passes of the batch (cf. adversarial_training).

    The base method's cost, plus one pass per subnet distillation term, plus (AWP) one pass per
    full-network training pass for the ascent step.
    """
    if self.base is None:  # AugMix with JSD: one pass of 3B images, i.e. 3 passes of B
      full_passes = self.augmix.num_views if self.augmix else 1
      base_cost = float(full_passes)
    else:
      base_cost = float(self.base.forward_backward_passes())
      full_passes = 2 if self.base_kind == 'trades' or self.base.gamma else 1
    subnet_passes = full_passes if self.has_subnets else 0
    awp_passes = full_passes if self.awp_gamma > 0 else 0
    return base_cost + subnet_passes + awp_passes

  # -- state ------------------------------------------------------------------------------
  def init_extras(self, rng, params, batch_stats):
    del batch_stats
    if not self.has_subnets:
      return {}
    if self.search == 'controller':
      def init(key):  # one compilation rather than one per initialiser
        cparams = controller_lib.init_controller(self.controller, key)
        return {'controller': {'params': cparams, 'opt_state': self.controller_tx.init(cparams),
                               'baseline': jnp.zeros((), jnp.float32),
                               'steps': jnp.zeros((), jnp.int32)},
                'search': {'count': jnp.zeros((), jnp.int32),
                           'controller_accuracy': jnp.zeros((), jnp.float32),
                           'random_accuracy': jnp.zeros((), jnp.float32)}}
      return jax.jit(init)(rng)
    if self.search == 'l1':
      return {'l1_masks': jax.jit(self.space.lowest_l1)(params)}
    return {}

  def step_subnet(self, state):
    """The subnet of the step ``state.step``: the same on every device."""
    key = common.stream_key(state.rng, 'ews/subnet', state.step)
    if self.search == 'controller':
      sample = self.controller.apply({'params': state.extras['controller']['params']}, key,
                                     method=controller_lib.SubnetController.sample)
      return self.space.from_slot_masks(sample.masks)
    if self.search == 'random':
      return self.space.random(key)
    return state.extras['l1_masks']

  # -- the step ---------------------------------------------------------------------------
  def loss_fn(self, params, batch_stats, x, y, x_adv, masks, rng, *, with_ews: bool = True):
    """The training loss of one step at weights ``params`` (module docstring, Eq. 2-4).

    Args:
      params: weights (possibly AWP-perturbed).
      batch_stats: running statistics (keyed by domain).
      x, y: the clean batch; ``x_adv``: its adversarial examples (None for natural training).
      masks: the step's subnet (None = no EWS term).
      rng: dropout key.
      with_ews: add the EWS distillation terms (False: the base loss alone, for AWP's ascent).

    Returns:
      ``(loss, (new_batch_stats, metrics))``.
    """
    use_sub = with_ews and masks is not None and self.lam > 0
    stats = batch_stats
    drop = lambda i: {'dropout': jax.random.fold_in(rng, i)}  # noqa: E731
    metrics = {}
    kl_terms = []  # (weight, teacher logits, images)
    if self.base is None:
      # x: the clean batch, or its AugMix views [x; view 1; view 2] (the subnet distils on all)
      logits, stats = apply_model(self.model, params, stats, x, train=True, domain=MAIN,
                                  rngs=drop(0))
      base_loss, clean_logits = common.natural_loss(logits, y, self.augmix, self.label_smoothing)
      metrics['accuracy'] = common.accuracy(clean_logits, y)
      kl_terms.append((1.0, logits, x))
    elif self.base_kind == 'pgd_at':
      gamma = self.base.gamma
      clean_logits, adv_logits, stats = at.clean_and_adversarial_passes(
          self.model, params, stats, x, x_adv, rng, with_clean=bool(gamma))
      if gamma:
        metrics['accuracy'] = common.accuracy(clean_logits, y)
      base_loss = at.pgd_at_loss(adv_logits, y, clean_logits, gamma, self.label_smoothing)
      metrics['adv_accuracy'] = common.accuracy(adv_logits, y)
      kl_terms.append((1.0, adv_logits, x_adv))
      if gamma:
        kl_terms.append((gamma, clean_logits, x))
    else:  # trades: Eq. 3-4 times beta = 1 / gamma
      beta = self.base.beta
      clean_logits, adv_logits, stats = at.clean_and_adversarial_passes(
          self.model, params, stats, x, x_adv, rng)
      base_loss = at.trades_loss(clean_logits, adv_logits, y, beta, self.label_smoothing)
      metrics.update(accuracy=common.accuracy(clean_logits, y),
                     adv_accuracy=common.accuracy(adv_logits, y),
                     trades_kl=at.trades_kl(clean_logits, adv_logits))
      kl_terms.extend([(beta, adv_logits, x_adv), (1.0, clean_logits, x)])
    metrics['base_loss'] = base_loss
    loss = base_loss
    if use_sub:
      kl_total = 0.0
      for i, (weight, teacher, images) in enumerate(kl_terms):
        kl, sub_logits = subnet_distillation(self.model, params, batch_stats, images, teacher,
                                             masks, rngs=drop(10 + i),
                                             reduction=self.kl_reduction)
        kl_total = kl_total + weight * kl
        if i == 0:  # the subnet on x' for the adversarial bases, on x for natural training
          metrics['subnet_kl'] = kl
          metrics['subnet_accuracy'] = common.accuracy(sub_logits[:y.shape[0]], y)
      loss = loss + self.lam * kl_total
    return loss, (stats, metrics)

  def _awp_params(self, state, x, y, x_adv, rng):
    """``w + v`` with AWP's perturbation ``v`` (zero before the warm-up ends)."""
    def perturb(_):
      def base_loss(p):
        loss, _ = self.loss_fn(p, state.batch_stats, x, y, x_adv, None, rng, with_ews=False)
        return loss
      grads = jax.lax.pmean(jax.grad(base_loss)(state.params), parallel.AXIS)
      return awp_perturbation(state.params, grads, self.awp_gamma)

    v = jax.lax.cond(state.step >= self.awp_warmup_steps, perturb,
                     lambda _: jax.tree.map(jnp.zeros_like, state.params), None)
    return jax.tree.map(jnp.add, state.params, v)

  def train_step(self, state, batch, rng):
    if self.base is not None:  # PGD-AT / TRADES: their examples, at the step's starting weights
      x, y, x_adv, k_drop = self.base.craft_batch(state, batch, rng)
    else:
      x, y, x_adv, k_drop = batch['image'], batch['label'], None, rng
      if self.augmix is not None:
        k_augmix, k_drop = jax.random.split(rng)
        x = self.augmix.views(x, k_augmix)
    masks = self.step_subnet(state) if self.has_subnets else None
    params = state.params
    if self.awp_gamma > 0:
      params = self._awp_params(state, x, y, x_adv, jax.random.fold_in(k_drop, 99))

    def loss_at(p):
      return self.loss_fn(p, state.batch_stats, x, y, x_adv, masks, k_drop)

    state, loss, metrics = common.gradient_step(state, self.tx, loss_at, at_params=params)
    metrics['loss'] = loss
    if self.has_controller:
      s = state.extras['search']
      metrics.update(search_count=s['count'].astype(jnp.float32),
                     search_controller_accuracy=s['controller_accuracy'],
                     search_random_accuracy=s['random_accuracy'])
    return state, metrics

  # -- the search -------------------------------------------------------------------------
  def _search_images(self, state, x, y, rng):
    """The images subnets are judged on: clean, or PGD examples of the full network."""
    if not self.search_adversarial:
      return x
    k_attack, k_drop = jax.random.split(rng)
    if self.base is not None:
      return self.base.craft(state.params, state.batch_stats, x, y, k_attack, k_drop)
    attack, kwargs = self.search_attack
    return at.craft(self.model, state.params, state.batch_stats, x, y, k_attack, attack=attack,
                    attack_kwargs=kwargs, domain=MAIN, bn_mode=self.search_craft_bn,
                    dropout_rng=k_drop)

  def subnet_rewards(self, params, batch_stats, x, y, masks):
    """EWS's reward of each subnet: minus its accuracy on ``(x, y)`` over all devices.

    Args:
      masks: subnets with a leading [C] axis.

    Returns:
      [C] rewards ``-R(alpha_i, batch)`` (identical on every device).
    """
    accs = subnet_accuracies(self.model, params, batch_stats, x, y, masks)
    return -jax.lax.pmean(accs, parallel.AXIS)

  def search_step(self, state, batch, first):
    """One controller update on one batch of ``D_s`` (per-device body; Algorithm 1 lines 5-7).

    ``first`` (a bool array) marks a search's first batch: the moving-average baseline restarts
    there from the batch's mean reward, because the network trained since the last search and
    the old baseline no longer describes its subnets' accuracy (a stale baseline biases every
    advantage of the new search's first updates the same way).
    """
    ctrl = state.extras['controller']
    key = common.stream_key(state.rng, 'ews/search', ctrl['steps'])
    k_sample, k_local = jax.random.split(key)
    k_images = jax.random.fold_in(k_local, jax.lax.axis_index(parallel.AXIS))
    x, y = batch['image'], batch['label']
    x = self._search_images(state, x, y, k_images)
    sample = controller_lib.sample_subnets(self.controller, ctrl['params'], k_sample,
                                           self.num_subnets)
    rewards = self.subnet_rewards(state.params, state.batch_stats, x, y,
                                  self.space.from_slot_masks(sample.masks))
    rewards = jax.lax.stop_gradient(rewards)
    baseline = jnp.where(first, jnp.mean(rewards), ctrl['baseline'])

    def pg_loss(cparams):
      lps, ents = jax.vmap(lambda ix: controller_lib.log_prob(self.controller, cparams, ix))(
          sample.indices)
      return controller_lib.reinforce_loss(lps, rewards, baseline, ents,
                                           self.entropy_weight), ents

    (loss, ents), grads = jax.value_and_grad(pg_loss, has_aux=True)(ctrl['params'])
    cparams, opt_state = common.synced_update(self.controller_tx, grads, ctrl['opt_state'],
                                              ctrl['params'])
    ctrl = {'params': cparams, 'opt_state': opt_state,
            'baseline': controller_lib.update_baseline(baseline, rewards, self.baseline_decay),
            'steps': ctrl['steps'] + 1}
    metrics = {'reward': jnp.mean(rewards), 'baseline': baseline, 'pg_loss': loss,
               'entropy': jnp.mean(ents)}
    return state.replace(extras={**state.extras, 'controller': ctrl}), metrics

  def compare_step(self, state, batch, index):
    """Mean accuracy of C controller subnets and of C uniformly random subnets on a batch.

    ``index`` (the batch's number) gives every batch its own subnets.
    """
    ctrl = state.extras['controller']
    key = common.stream_key(state.rng, 'ews/compare', ctrl['steps'])
    key = jax.random.fold_in(key, index)
    k_ctrl, k_rand, k_local = jax.random.split(key, 3)
    k_images = jax.random.fold_in(k_local, jax.lax.axis_index(parallel.AXIS))
    x, y = batch['image'], batch['label']
    x = self._search_images(state, x, y, k_images)
    ctrl_masks = self.space.from_slot_masks(controller_lib.sample_subnets(
        self.controller, ctrl['params'], k_ctrl, self.num_subnets).masks)
    rand_masks = self.space.random_batch(k_rand, self.num_subnets)
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ctrl_masks, rand_masks)
    accs = jax.lax.pmean(subnet_accuracies(self.model, state.params, state.batch_stats, x, y,
                                           both), parallel.AXIS)
    return {'controller_accuracy': jnp.mean(accs[:self.num_subnets]),
            'random_accuracy': jnp.mean(accs[self.num_subnets:])}

  def restart_controller(self, state):
    """A freshly initialised controller (parameters and Adam state) for the next search.

    Why: between searches the network trains on the controller's own subnets, which makes them
    strong; a controller that carries on from its last policy has concentrated on exactly those
    and, within one search, cannot move away from them (measured on the CIFAR-10 budget run: after
    4 carried-on searches its subnets scored 42% against 18% for random ones; a fresh controller
    searched on the same network found subnets at 13%).
    """
    ctrl = state.extras['controller']
    key = common.stream_key(state.rng, 'ews/restart', ctrl['steps'])
    cparams = controller_lib.init_controller(self.controller, key)
    ctrl = {**ctrl, 'params': cparams, 'opt_state': self.controller_tx.init(cparams)}
    return state.replace(extras={**state.extras, 'controller': ctrl})

  def _l1_body(self, state):
    return state.replace(extras={**state.extras,
                                 'l1_masks': self.space.lowest_l1(state.params)})

  def search_batches(self) -> int:
    """Batches in ``D_s``: ``ews_search_fraction`` of the training set (at least one)."""
    n_train = self.ctx.steps_per_epoch * self.config.batch_size
    return max(1, int(round(self.search_fraction * n_train / self.config.batch_size)))

  def _compiled_search(self):
    if self._search_fns is None:
      mesh = self.ctx.mesh
      batch_specs = (P(), P(parallel.AXIS))
      self._search_fns = {
          'search': parallel.spmd(self.search_step, mesh, in_specs=batch_specs + (P(),),
                                  out_specs=(P(), P()), donate_argnums=(0,)),
          'compare': parallel.spmd(self.compare_step, mesh, in_specs=batch_specs + (P(),),
                                   out_specs=P()),
          'l1': parallel.spmd(self._l1_body, mesh, in_specs=(P(),), out_specs=P(),
                              donate_argnums=(0,)),
          'restart': parallel.spmd(self.restart_controller, mesh, in_specs=(P(),),
                                   out_specs=P(), donate_argnums=(0,)),
      }
    return self._search_fns

  def run_search(self, state):
    """The search phase (the hook): controller updates over ``D_s``, then the comparison."""
    fns = self._compiled_search()
    if self.search == 'l1':
      return fns['l1'](state)
    if self.ctx.train_batches is None:
      raise ValueError('The EWS search needs training batches: build the Context with '
                       'train_batches (train.train_and_evaluate does).')
    seed = int(self.config.seed) + 7919  # a fixed seed: the same subset D_s at every search
    count = int(jax.device_get(state.extras['search']['count']))
    if self.controller_restart and count > 0:  # the first search starts from the initial one
      state = fns['restart'](state)
    history = []
    for i, batch in enumerate(self.ctx.train_batches(self.search_batches(), seed)):
      state, m = fns['search'](state, batch, np.bool_(i == 0))
      history.append(m)
    history = parallel.to_host(history)
    summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
    summary.update(first_reward=float(history[0]['reward']),
                   last_reward=float(history[-1]['reward']))
    comps = [parallel.to_host(fns['compare'](state, batch, np.int32(i))) for i, batch in
             enumerate(self.ctx.train_batches(self.compare_batches, seed + 1))]
    count += 1
    record = {'count': np.int32(count),
              'controller_accuracy': np.float32(np.mean([c['controller_accuracy'] for c in comps])
                                                if comps else 0.0),
              'random_accuracy': np.float32(np.mean([c['random_accuracy'] for c in comps])
                                            if comps else 0.0)}
    state = state.replace(extras={**state.extras,
                                  'search': parallel.replicate(record, self.ctx.mesh)})
    logging.info('EWS search %d at step %d: %d controller steps, reward %.4f -> %.4f, '
                 'entropy %.2f; subnet accuracy: controller %.4f vs random %.4f.', count,
                 int(jax.device_get(state.step)), len(history), summary['first_reward'],
                 summary['last_reward'], summary['entropy'], record['controller_accuracy'],
                 record['random_accuracy'])
    self.last_search = summary | {k: float(v) for k, v in record.items()}
    return state

  def hooks(self) -> list[Hook]:
    if not self.has_subnets or self.search == 'random':
      return []
    every = max(1, int(round(self.search_every_epochs * self.ctx.steps_per_epoch)))
    if every >= self.ctx.total_steps:
      logging.warning('ews_search_every_epochs=%g: the %s search never runs within the %d '
                      'training steps, so EWS trains throughout on the subnets chosen at '
                      'initialisation (an untrained controller samples nearly uniformly).',
                      self.search_every_epochs, self.search, self.ctx.total_steps)
    return [Hook(every_steps=every, fn=self.run_search, name='ews_search')]


@register('ews_pgd_at')
class EWSPGDAT(EWS):
  """EWS on Madry PGD adversarial training (phi = CE, gamma = ``pgd_at_gamma``, default 0)."""
  base_name = 'pgd_at'
  supports_augmix = False


@register('ews_trades')
class EWSTRADES(EWS):
  """EWS on TRADES (phi = KL, gamma = 1 / ``trades_beta`` = 1/6)."""
  base_name = 'trades'
  supports_augmix = False


@register('awp')
class AWP(EWS):
  """Adversarial weight perturbation on PGD-AT or TRADES (``awp_base``), without EWS.

  Config keys: ``awp_base`` ('pgd_at' | 'trades'), ``awp_gamma`` (5e-3), ``awp_warmup_epochs``
  (0), and the base's own keys. With EWS: ``ews_pgd_at`` / ``ews_trades`` with ``awp_gamma > 0``.
  """
  uses_ews = False
  default_awp_gamma = 5e-3
  supports_augmix = False

  def _resolve_base_name(self) -> str:
    base = self.config.get('awp_base', 'pgd_at')
    validation.check_choice('awp_base', base, AWP_BASES)
    return base

  def validate(self) -> None:
    super().validate()
    if not self.awp_gamma > 0:
      raise ValueError(f'awp_gamma must be > 0 for method awp, got {self.awp_gamma}.')
