"""Auxiliary Training (Zhang et al., "Auxiliary Training: Towards Accurate and Robust Models",
CVPR 2020; ``papers/000_3ae112b258334e64.txt``, Algorithm 1, Eq. 6-7, section 3.3).

Algorithm (per step, on this device's shard x, y of b images):

1. Batch composition: the primary group x_0 = x (or, in the adversarial variant of Table 8, PGD
   examples of x crafted on the primary path), and one corrupted copy x_j = T_j(x) of the *same*
   clean images for each training corruption j = 1..t (``auxtrain_corruptions`` at
   ``auxtrain_severities``, ``jaxrobust.corruptions``, on device). The step therefore runs
   (t + 1) * b images through the backbone: with the default four corruptions it costs about five
   vanilla steps.
2. The backbone f (shared weights) maps every group to its last feature map. The primary
   classifier g_0 is the backbone's own FC (``params['classifier']``) on pooled clean features;
   auxiliary classifier g_j (``jaxrobust.models.aux_heads``: attention mask, bottleneck, pooling,
   FC) reads the features of group j only.
3. Loss (Eq. 2, 6, 7; defaults of section 4.1)::

     L = alpha_0 CE(g_0(f(x_0)), y) + sum_j alpha_j CE(g_j(f(x_j)), y)
         + lambda sum_j [ KL(sg(p_0) || p_j) + gamma_t (||W_0 - W_j||^2 + ||b_0 - b_j||^2) ]

   with p_0 = softmax(g_0(f(x_0))) stop-gradient-ed (input-aware self distillation: the clean
   primary output teaches the auxiliary classifiers, never the reverse), p_j = softmax(g_j(f(x_j))),
   KL summed over classes and averaged over the batch (temperature 1, as in the released code),
   and the squared L2 distance over the FC layers' weights and biases. alpha_0 = 1,
   alpha_j = 0.05, lambda = 0.05, gamma_t = 0 in training period 1 and gamma = 1 from the step
   ``round(auxtrain_merge_fraction * total_steps)`` on, or from epoch ``auxtrain_merge_epoch``
   when that is set (period 2, Algorithm 1 lines 6-10; the fraction, the configs' default, keeps
   the paper's 200 of 300 epochs when a run is shortened; the switch is a traced comparison with
   ``state.step``, so the step compiles once).
4. Both the backbone (incl. the primary FC) and the heads are updated with the run's optimizer
   (``ctx.tx``; the heads and their optimizer state live in ``state.extras``); gradients are
   ``pmean``-ed over devices.

BatchNorm rule (selective BN, section 3.3): the affine parameters are shared by every group;
in training each group (clean, each corruption) is normalised with its *own* batch statistics
(the backbone runs once per group in training mode: t + 1 separate ``train=True`` passes), and
the running statistics of the ``main`` domain are updated from the primary group only (the
group-0 update is kept, the others are discarded). The auxiliary heads' BatchNorms also use
their own group's batch statistics and keep no running averages (heads are never used at
inference). Ablation ``auxtrain_selective_bn=False`` runs all
(t + 1) * b images as one batch: one set of batch statistics, running statistics from all of them
(the paper's "traditional batch normalization").

Inference: only the primary classifier. The heads live in ``state.extras``, never in
``state.params``, so ``export(state)`` is the plain backbone (same tree and parameter count as
a vanilla model) and the loop's evaluation and checkpoints need nothing special.

Adversarial variant (Table 8, ``auxtrain_adversarial=True``): x_0 is a PGD example of x
(``auxtrain_attack``, a cross-entropy preset of ``jaxrobust.attacks.presets``, with optional
``auxtrain_eps``/``auxtrain_step_size``/``auxtrain_num_steps`` overrides as for PGD-AT; Madry
PGD-10, eps 8/255 by default, untargeted, random start), crafted on the current primary path
with batch statistics and running statistics untouched; the auxiliary classifiers keep the
natural corruptions of the clean x, and the running statistics come from the adversarial group.

Ablations (Table 9): ``auxtrain_selective_bn``, ``auxtrain_distillation``,
``auxtrain_attention``, ``auxtrain_weight_merging`` (each True by default).

Config keys (defaults in ``DEFAULTS``; configs/auxtrain_*.py set them explicitly): see
``DEFAULTS`` below.
"""

import jax
import jax.numpy as jnp

from jaxrobust import corruptions
from jaxrobust.attacks import validation
from jaxrobust.methods import adversarial_training as at
from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method
from jaxrobust.models import MAIN, apply_model, aux_heads
from jaxrobust.parallel import AXIS

# The paper's training corruptions (section 4.1: "Gaussian noise, Gaussian blur, rotation and
# images' contrast and brightness") at the strengths of its released code, expressed as
# severities of jaxrobust.corruptions (CIFAR table, i.e. images of <= 64 px):
#   gaussian_noise 3      : std 0.08 ~ the code's GaussianNoise(20) (20/255 = 0.078)
#   gaussian_blur 5       : sigma 1 = the code's PIL GaussianBlur(1.0)
#   rotation 5            : U(-30, 30) degrees = the code's RandomRotation(30)
#   contrast_brightness 5 : ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5)
DEFAULT_CORRUPTIONS = ('gaussian_noise', 'gaussian_blur', 'rotation', 'contrast_brightness')
DEFAULT_SEVERITIES = (3, 5, 5, 5)

DEFAULTS = {
    'auxtrain_corruptions': DEFAULT_CORRUPTIONS,
    'auxtrain_severities': DEFAULT_SEVERITIES,
    'auxtrain_alpha_primary': 1.0,     # alpha_0 (section 4.1)
    'auxtrain_alpha_aux': 0.05,        # alpha_j, j != 0: a float or one value per corruption
    'auxtrain_lambda': 0.05,           # lambda (Eq. 7)
    'auxtrain_gamma': 1.0,             # gamma in period 2 (Eq. 6; 0 in period 1)
    'auxtrain_merge_fraction': 2 / 3,  # period 2 starts after this fraction of the steps,
    'auxtrain_merge_epoch': -1.0,      # or at this epoch when >= 0 (-1: use the fraction)
    'auxtrain_temperature': 1.0,       # distillation temperature (1 in the released code)
    'auxtrain_bottleneck_ratio': 0.5,  # head bottleneck width / feature channels
    # Ablations of Table 9.
    'auxtrain_selective_bn': True,
    'auxtrain_distillation': True,
    'auxtrain_attention': True,
    'auxtrain_weight_merging': True,
    # Table 8: primary classifier on PGD examples.
    'auxtrain_adversarial': False,
    'auxtrain_attack': 'madry_pgd10',
}


def _as_tuple(value):
  if isinstance(value, str):
    return (value,)
  try:
    return tuple(value)
  except TypeError:
    return (value,)


@register('auxtrain')
class AuxTrain(Method):
  """Auxiliary Training: per-corruption auxiliary classifiers, selective BN, self-distillation,
  L2 weight merging (see the module docstring for the algorithm)."""

  defaults = DEFAULTS

  # -- configuration ---------------------------------------------------------------------
  @property
  def corruption_names(self) -> tuple:
    return tuple(str(n) for n in _as_tuple(self.option('auxtrain_corruptions')))

  @property
  def severities(self) -> tuple:
    return _as_tuple(self.option('auxtrain_severities'))

  @property
  def num_heads(self) -> int:
    return len(self.corruption_names)

  def forward_backward_passes(self) -> float:
    """The clean batch and one corrupted copy per head through the backbone; the adversarial
    variant adds the attack's passes. The heads come on top: not counted, though with attention
    each costs about 0.3 vanilla steps of ResNet-8-wide (README, Benchmarks)."""
    passes = 1.0 + self.num_heads
    if self.adversarial:
      passes += at.attack_steps(self.attack_kwargs)
    return passes

  def alphas(self) -> tuple:
    """alpha_j of every corruption (a float in the config applies to all)."""
    alpha = _as_tuple(self.option('auxtrain_alpha_aux'))
    return alpha * self.num_heads if len(alpha) == 1 else alpha

  def validate(self) -> None:
    names = self.corruption_names
    if not names:
      raise ValueError('auxtrain_corruptions must name at least one corruption; valid names: '
                       f'{corruptions.names()}.')
    for name in names:
      corruptions.get(name)  # ValueError listing the valid names
    if len(set(names)) != len(names):
      raise ValueError(f'auxtrain_corruptions has duplicates: {names}; each corruption gets one '
                       'auxiliary classifier.')
    sev = self.severities
    if len(sev) != len(names):
      raise ValueError(f'auxtrain_severities needs one severity per corruption ({len(names)} for '
                       f'{names}), got {sev}.')
    for s in sev:
      if isinstance(s, bool) or not isinstance(s, int) or s not in corruptions.SEVERITIES:
        raise ValueError(f'auxtrain_severities: {s!r} is not a severity; valid: '
                         f'{corruptions.SEVERITIES}.')
    alphas = self.alphas()
    if len(alphas) != len(names):
      raise ValueError(f'auxtrain_alpha_aux must be one float or one per corruption '
                       f'({len(names)}), got {alphas}.')
    for key, values in (('auxtrain_alpha_aux', alphas),
                        ('auxtrain_alpha_primary', (self.option('auxtrain_alpha_primary'),)),
                        ('auxtrain_lambda', (self.option('auxtrain_lambda'),)),
                        ('auxtrain_gamma', (self.option('auxtrain_gamma'),))):
      for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
          raise ValueError(f'{key} must be >= 0, got {v!r}.')
    def number(key):  # a bool would pass as 0 or 1
      v = self.option(key)
      return v if isinstance(v, (int, float)) and not isinstance(v, bool) else float('nan')

    if not 0.0 <= number('auxtrain_merge_fraction') <= 1.0:
      raise ValueError(f'auxtrain_merge_fraction must be in [0, 1] (fraction of the run after '
                       f'which weight merging starts; 1 = never), got '
                       f'{self.option("auxtrain_merge_fraction")!r}.')
    merge_epoch = number('auxtrain_merge_epoch')
    if merge_epoch != -1 and not 0.0 <= merge_epoch <= float(self.config.num_epochs):
      raise ValueError(f'auxtrain_merge_epoch must be -1 (use auxtrain_merge_fraction) or an epoch '
                       f'in [0, num_epochs={self.config.num_epochs}], got '
                       f'{self.option("auxtrain_merge_epoch")!r}.')
    if not number('auxtrain_temperature') > 0:
      raise ValueError(f'auxtrain_temperature must be > 0, got '
                       f'{self.option("auxtrain_temperature")!r}.')
    if not 0.0 < number('auxtrain_bottleneck_ratio') <= 4.0:
      raise ValueError(f'auxtrain_bottleneck_ratio must be in (0, 4], got '
                       f'{self.option("auxtrain_bottleneck_ratio")!r}.')
    self.adversarial = validation.check_bool('auxtrain_adversarial',
                                             self.option('auxtrain_adversarial'))
    if self.adversarial:  # ValueError naming the allowed presets, or a bad override
      self.attack, self.attack_kwargs = at.attack_settings(
          self.config, 'auxtrain', DEFAULTS['auxtrain_attack'], at.PGD_AT_PRESETS)
    else:  # an attack setting that would do nothing is an error, not silently ignored
      unused = at.overrides_set(self.config, 'auxtrain')
      if unused:
        raise ValueError(f'{", ".join(unused)} only apply to the adversarial variant '
                         '(auxtrain_adversarial=True); this run trains on clean images.')

  # -- state -----------------------------------------------------------------------------
  def head(self, num_classes: int) -> aux_heads.AuxClassifier:
    """The auxiliary classifier module (all heads share it; their parameters are stacked)."""
    sync = self.config.get('sync_batch_stats', False)
    return aux_heads.AuxClassifier(num_classes=num_classes,
                                   attention=bool(self.option('auxtrain_attention')),
                                   bottleneck_ratio=float(self.option('auxtrain_bottleneck_ratio')),
                                   axis_name=AXIS if sync else None)

  def init_extras(self, rng, params, batch_stats):
    """``{'heads': stacked head params, 'opt_state': their optimizer state}``."""
    del batch_stats
    channels, num_classes = params['classifier']['kernel'].shape
    heads = aux_heads.init_heads(self.head(num_classes), rng, self.num_heads, channels)
    return {'heads': heads, 'opt_state': self.tx.init(heads)}

  @property
  def merge_step(self) -> int:
    """First step of training period 2 (gamma switched on)."""
    epoch = float(self.option('auxtrain_merge_epoch'))
    if epoch >= 0:
      return int(round(epoch * self.ctx.steps_per_epoch))
    return int(round(float(self.option('auxtrain_merge_fraction')) * self.ctx.total_steps))

  def gamma_at(self, step):
    """gamma_t: 0 before ``merge_step`` (period 1), ``auxtrain_gamma`` from it on (period 2)."""
    if not self.option('auxtrain_weight_merging'):
      return jnp.zeros((), jnp.float32)
    return jnp.where(step >= self.merge_step, float(self.option('auxtrain_gamma')),
                     0.0).astype(jnp.float32)

  # -- pieces of the step ----------------------------------------------------------------
  def corrupt(self, x, rng):
    """The t corrupted copies of ``x``: [t, b, H, W, C], each in [0, 1]."""
    keys = jax.random.split(rng, self.num_heads)
    return jnp.stack([corruptions.corrupt(x, n, s, k)
                      for n, s, k in zip(self.corruption_names, self.severities, keys)])

  def primary_inputs(self, params, batch_stats, x, y, rng):
    """Images of the primary group: ``x``, or its PGD examples in the adversarial variant.

    The attack runs on the primary path with batch statistics (dropout on, with a key of its
    own) and changes no running statistics.
    """
    if not self.adversarial:
      return x
    k_start, k_dropout = jax.random.split(rng)
    return at.craft(self.model, params, batch_stats, x, y, k_start, attack=self.attack,
                    attack_kwargs=self.attack_kwargs, domain=MAIN, bn_mode='batch',
                    dropout_rng=k_dropout)

  def forward_groups(self, params, batch_stats, xs, rng):
    """Backbone on every group with selective BN.

    Args:
      params, batch_stats: backbone parameters and running statistics (keyed by domain).
      xs: [G, b, H, W, C]; group 0 is the primary group.
      rng: dropout key.

    Returns:
      ``(outputs, new_batch_stats)``: ``outputs`` is the model's ``return_features`` dict with a
      leading group axis (``'features'`` [G, b, h, w, C], ``'logits'`` [G, b, K], ...); the
      ``main`` running statistics are updated from group 0 only (selective BN) or from all
      groups together (``auxtrain_selective_bn=False``).
    """
    g, b = xs.shape[:2]
    main_only = {MAIN: batch_stats[MAIN]}
    if self.option('auxtrain_selective_bn'):
      # One pass per group, unrolled (G is static and small): on XLA:CPU a vmap over the group
      # axis runs as one G*b batch, about 1.5x slower than G passes of b images.
      outs = []
      for j, key in enumerate(jax.random.split(rng, g)):
        out, stats = apply_model(self.model, params, main_only, xs[j], train=True, domain=MAIN,
                                 update_stats=j == 0, rngs={'dropout': key},
                                 return_features=True)
        outs.append(out)
        if j == 0:
          new_main = stats[MAIN]  # the primary group's update only
      outs = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    else:
      flat = xs.reshape((g * b,) + xs.shape[2:])
      out, stats = apply_model(self.model, params, main_only, flat, train=True, domain=MAIN,
                               update_stats=True, rngs={'dropout': rng}, return_features=True)
      outs = jax.tree.map(lambda a: a.reshape((g, b) + a.shape[1:]), out)
      new_main = stats[MAIN]
    return outs, {**batch_stats, MAIN: new_main}

  def loss_terms(self, params, heads, batch_stats, xs, labels, gamma, rng):
    """Eq. 7 on a grouped batch.

    Args:
      params: backbone parameters (incl. the primary classifier).
      heads: stacked auxiliary-classifier parameters.
      batch_stats: running statistics keyed by domain.
      xs: [1 + t, b, H, W, C] images; group 0 feeds the primary classifier, group j head j.
      labels: [b] int labels (shared by every group).
      gamma: gamma_t (traced scalar).
      rng: dropout key.

    Returns:
      ``(loss, aux)`` with ``aux = {'batch_stats', 'primary_logits', 'aux_logits', 'ce_primary',
      'ce_aux' [t], 'kl' [t], 'distance' [t]}``.
    """
    ls = self.label_smoothing
    outs, new_stats = self.forward_groups(params, batch_stats, xs, rng)
    primary = outs['logits'][0]
    num_classes = primary.shape[-1]
    aux = aux_heads.apply_heads(self.head(num_classes), heads, outs['features'][1:])
    ce_primary = common.cross_entropy(primary, labels, ls)
    ce_aux = jax.vmap(lambda z: common.cross_entropy(z, labels, ls))(aux)
    temperature = float(self.option('auxtrain_temperature'))
    # distillation_kl stop-gradients the teacher: the primary output is a fixed target.
    kl = jax.vmap(lambda z: common.distillation_kl(primary, z, temperature))(aux)
    distance = aux_heads.classifier_distance(params['classifier'], heads)
    use_kl = 1.0 if self.option('auxtrain_distillation') else 0.0
    alphas = jnp.asarray(self.alphas(), jnp.float32)
    loss = (float(self.option('auxtrain_alpha_primary')) * ce_primary + jnp.sum(alphas * ce_aux)
            + float(self.option('auxtrain_lambda')) * jnp.sum(use_kl * kl + gamma * distance))
    return loss, {'batch_stats': new_stats, 'primary_logits': primary, 'aux_logits': aux,
                  'ce_primary': ce_primary, 'ce_aux': ce_aux, 'kl': kl, 'distance': distance}

  # -- the step --------------------------------------------------------------------------
  def train_step(self, state, batch, rng):
    k_corrupt, k_attack, k_dropout = jax.random.split(rng, 3)
    x, y = batch['image'], batch['label']
    x0 = self.primary_inputs(state.params, state.batch_stats, x, y, k_attack)
    xs = jnp.concatenate([x0[None], self.corrupt(x, k_corrupt)], axis=0)
    gamma = self.gamma_at(state.step)
    heads = state.extras['heads']

    def loss_fn(params, heads):
      return self.loss_terms(params, heads, state.batch_stats, xs, y, gamma, k_dropout)

    (loss, aux), (g_params, g_heads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, heads)
    new_state = common.apply_gradients(state, g_params, self.tx)
    heads, head_opt = common.synced_update(self.tx, g_heads, state.extras['opt_state'], heads)
    new_state = new_state.replace(batch_stats=aux['batch_stats'],
                                  extras={'heads': heads, 'opt_state': head_opt})

    # Group 0 is the PGD batch in the adversarial variant: named as the adversarial methods do.
    primary_accuracy = 'adv_accuracy' if self.adversarial else 'accuracy'
    metrics = {'loss': loss, primary_accuracy: common.accuracy(aux['primary_logits'], y),
               'ce_primary': aux['ce_primary'], 'ce_aux': jnp.mean(aux['ce_aux']),
               'kl': jnp.mean(aux['kl']), 'fc_distance': jnp.sum(aux['distance']),
               'gamma': gamma}
    for j, name in enumerate(self.corruption_names):
      metrics[f'aux_accuracy_{name}'] = common.accuracy(aux['aux_logits'][j], y)
    return new_state, metrics
