"""Adversarial Noise Training (ANT 1x1 / ANT 3x3; Rusak et al. 2020, paper ``003``, section 3.2).

A noise generator ``g_phi`` (``jaxrobust.models.noise_generator``: four 1x1 convolutions, or one
3x3 layer for ANT 3x3, residual from its N(0, 1) input, initialised near zero so it starts as
Gaussian noise) plays a min-max game with the classifier ``f_theta`` (Eq. 3):

    min_theta max_phi  E_{x,y} E_{z ~ N(0,1)} CE(f_theta(clip(x + delta, 0, 1)), y),
    delta = s(x, g_phi(z)) * g_phi(z)  with  ||clip(x + delta, 0, 1) - x||_2 = eps  per image,

where the scale ``s`` is the exact clipping-aware L2 rescaling (``rescale_to_l2``, the paper's
footnote 3), so the perturbation the classifier actually sees has L2 norm exactly ``eps``.

One training step (per device shard of ``b`` images; ``k = ant_gen_steps``):

1. Generator phase (``lax.scan`` of ``k`` steps): each step draws fresh ``z``, noises the whole
   shard with the current generator (every image, not only the 30% it will perturb for the
   classifier: each gives the generator a gradient), and takes one ``ant_gen_optimizer`` step
   on ``phi`` that *increases* ``CE(f_theta(x + delta), y)`` (gradients ``pmean``-ed over
   devices so the replicated generator stays identical). The classifier is frozen: its
   parameters get no update and its BatchNorm running statistics are not touched (see the BN
   rule below).
2. Classifier phase: the shard is split 50 / 30 / 20 % (``ant_clean_fraction`` /
   ``ant_current_fraction`` / ``ant_replay_fraction``, the paper's composition):
   clean images; images noised by the just-updated generator; images noised by generators
   replayed from the buffer (one stored generator drawn uniformly *per image* from the filled
   entries -- experience replay, "samples chosen randomly from previous distributions"; while
   the buffer is still empty the current generator stands in). The classifier minimises the
   mean cross-entropy over the whole mixed batch with the backbone's optimizer.
3. Experience replay: after every ``ant_replay_every``-th step the current generator's
   parameters are written into a ring buffer of ``ant_replay_size`` entries kept in
   ``state.extras`` (so it is checkpointed and restored with the run).

Generator restarts ("to prevent the noise generator from being stuck in a local minimum, we halt
ANT at regular intervals and train a new noise generator from scratch ... against the current
state of the classifier ... The new noise generator replaces the former"): a host-side
:class:`~jaxrobust.methods.base.Hook` every ``ant_restart_every`` steps initialises a fresh
generator (and optimizer state) and trains it for ``ant_restart_steps`` generator steps on fresh
training batches against the frozen current classifier; it then replaces the current one. Why a
hook and not ``lax.cond`` inside the step: the restart needs hundreds of generator steps on
*different* batches; inside the step it would only see the step's own batch, would make every
step's program carry the long scan, and the step that restarts would take hundreds of times as
long as the others. The hook runs its own jitted ``lax.scan`` over chunks of batches
(``jit(shard_map)``, data-parallel like the step), deterministic given the step, so a resumed
run restarts exactly as an uninterrupted one.

BatchNorm rule: one domain, ``main``. The classifier phase is ONE training forward pass over the
mixed (clean + current + replayed) batch: batch statistics of the mixed batch, and it updates the
``main`` running statistics. Generator steps (in the step and in the restart hook) never change
any running statistic. With ``ant_generator_bn='running'`` (default) the frozen classifier runs in
inference mode on its running statistics: the generator attacks the model as it is deployed and
evaluated (the adversarial-noise eps* of ``jaxrobust.evaluation.adversarial_noise`` trains its
generator the same way). ``'batch'`` normalises with the batch statistics of the all-noised shard
(running statistics untouched, ``update_stats=False``); it is a weaker adversary, because the first
BatchNorm then removes any per-channel shift and scale that the generator applies to the whole
batch -- on an untrained ResNet a 40-step generator raised the cross-entropy 0.63 -> 1.22 in
``'running'`` mode but only 1.18 -> 1.20 in ``'batch'`` mode.

Hyper-parameters: the supplied paper text refers to its appendices A-B for them but does not
contain those appendices, so every generator hyper-parameter is a documented choice (see the
configs ``ant_cifar.py`` / ``ant_imagenet.py`` and :data:`DEFAULTS`). The fixed ``eps`` follows
the paper's own motivation (footnote 4: a fixed radius because GNT with one fixed sigma worked
best): ``eps`` is the L2 norm that clipped Gaussian noise of the best single sigma has.
"""

import math
from typing import Any, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import PartitionSpec as P

from jaxrobust import corruptions, parallel
from jaxrobust.methods import common, register
from jaxrobust.methods.base import Hook, Method
from jaxrobust.models import MAIN, apply_model
from jaxrobust.models.noise_generator import NoiseGenerator, add_l2_noise, generate_noise

GENERATORS = {'1x1': None, '3x3': 1}   # kind -> index of the 3x3 layer (the reference's 2nd)
GENERATOR_BN = ('batch', 'running')
GEN_OPTIMIZERS = ('adam', 'sgd')
# Applied RMS per pixel value of clipped Gaussian noise on natural images, measured on CIFAR-10
# training images: ||clip(x + sigma z) - x||_2 / sqrt(N) = 0.166 for sigma = 0.18 (the CIFAR
# analogue of the paper's best sigma) and 0.35 for sigma = 0.5 (the paper's best ImageNet sigma);
# see :func:`default_eps`.
EPS_PER_PIXEL = 0.166
EPS_PER_PIXEL_IMAGENET = 0.35

DEFAULTS = {
    'ant_generator': '1x1',
    'ant_gen_features': 20,          # hidden width of the reference generator
    'ant_eps': 0.0,                  # 0 = default_eps(image shape)
    'ant_gen_optimizer': 'adam',
    'ant_gen_learning_rate': 1e-2,
    'ant_gen_steps': 1,              # generator steps per classifier step
    'ant_clean_fraction': 0.5,       # section 3.2: 50% clean,
    'ant_current_fraction': 0.3,     # 30% current generator,
    'ant_replay_fraction': 0.2,      # 20% replayed past generators
    'ant_replay_every': 100,
    'ant_replay_size': 20,
    # Section 3.2: restarting the generator from scratch at intervals "has been crucial"; every
    # 390 steps is configs/ant_cifar.py's (a CIFAR epoch at batch 128). 0 = no restarts.
    'ant_restart_every': 390,
    'ant_restart_steps': 100,
    'ant_restart_chunk': 8,          # generator steps per compiled call of the restart hook
    'ant_generator_bn': 'running',
}


def default_eps(image_shape: Sequence[int]) -> float:
  """The L2 norm of clipped Gaussian noise of the paper's best sigma at that image size.

  The paper fixes the radius because GNT with one sigma worked best (footnote 4): sigma = 0.5 on
  ImageNet. Images whose largest side is at most 64 px use the CIFAR analogue, as the corruption
  library chooses its severity table: 0.18, the ImageNet sigma scaled by 0.36, the ratio of
  CIFAR-10-C's to ImageNet-C's Gaussian-noise severities (0.074 / 0.204 on average). So
  ``eps = EPS_PER_PIXEL * sqrt(H*W*C)`` there (CIFAR-10, N = 3072: 9.2) and
  ``EPS_PER_PIXEL_IMAGENET * sqrt(H*W*C)`` for larger images (224 x 224 x 3: 135.8, the 135
  of ``configs/ant_imagenet.py``).
  """
  h, w = image_shape[0], image_shape[1]
  cifar_sized = corruptions.table_for_size(max(h, w)) == 'cifar'
  per_pixel = EPS_PER_PIXEL if cifar_sized else EPS_PER_PIXEL_IMAGENET
  return float(per_pixel * math.sqrt(float(np.prod(image_shape))))


def make_generator(kind: str = '1x1', features: int = 20) -> NoiseGenerator:
  """The ANT 1x1 or ANT 3x3 noise generator; ValueError for another kind."""
  if kind not in GENERATORS:
    raise ValueError(f'Unknown ant_generator {kind!r}; valid: {", ".join(GENERATORS)}.')
  return NoiseGenerator(features=int(features), kernel_3x3_layer=GENERATORS[kind])


def init_generator(generator: NoiseGenerator, rng: jax.Array, channels: int):
  """Fresh generator parameters for images with ``channels`` channels (any spatial size)."""
  z = jnp.zeros(generator.latent_shape((1, 1, 1, channels)), jnp.float32)
  return generator.init(rng, z)['params']


def split_sizes(batch_size: int, clean_fraction: float,
                current_fraction: float) -> Tuple[int, int, int]:
  """``(n_clean, n_current, n_replay)`` of a shard: cumulative fractions rounded, summing to b."""
  n_clean = int(round(batch_size * clean_fraction))
  n_current = int(round(batch_size * (clean_fraction + current_fraction))) - n_clean
  return n_clean, n_current, batch_size - n_clean - n_current


def push_replay(replay: Any, count: jax.Array, gen_params: Any) -> Tuple[Any, jax.Array]:
  """Writes ``gen_params`` into ring-buffer slot ``count % size``; returns ``(replay, count+1)``."""
  size = jax.tree.leaves(replay)[0].shape[0]
  slot = count % size
  replay = jax.tree.map(lambda buf, p: jnp.asarray(buf).at[slot].set(p), replay, gen_params)
  return replay, count + 1


def replay_noise(generator: NoiseGenerator, replay: Any, count: jax.Array, current: Any,
                 rng: jax.Array, x: jax.Array, eps: float) -> Tuple[jax.Array, jax.Array]:
  """Noises each image with a past generator drawn uniformly from the filled buffer entries.

  Args:
    generator: the generator module.
    replay: buffer of generator parameters, every leaf with a leading axis of ``size``.
    count: number of generators ever pushed (entries ``< min(count, size)`` are filled).
    current: the current generator's parameters (used while the buffer is empty).
    rng: key for the entry choice and the latent noise.
    x: clean images [n, H, W, C].
    eps: L2 norm of every applied (post-clipping) perturbation.

  Returns:
    ``(x_noisy, index)``: noisy images, and per image the buffer entry that produced its noise
    (-1 where the buffer was empty and the current generator was used).
  """
  size = jax.tree.leaves(replay)[0].shape[0]
  filled = jnp.minimum(count, size)
  idx_rng, z_rng = jax.random.split(rng)
  idx = jax.random.randint(idx_rng, (x.shape[0],), 0, jnp.maximum(filled, 1))
  per_image = jax.tree.map(
      lambda buf, cur: jnp.where(filled > 0, buf[idx], jnp.broadcast_to(cur, (x.shape[0],) +
                                                                        cur.shape)),
      replay, current)
  z = generator.sample_latent(z_rng, x.shape)
  delta = jax.vmap(lambda p, zi: generator.apply({'params': p}, zi[None])[0])(per_image, z)
  return add_l2_noise(x, delta, eps), jnp.where(filled > 0, idx, -1)


def _chunk_size(total: int, max_chunk: int) -> int:
  """Largest divisor of ``total`` that is at most ``max_chunk`` (so one compiled call fits)."""
  return max(d for d in range(1, max(1, min(total, max_chunk)) + 1) if total % d == 0)


@register('ant')
class ANT(Method):
  """Alternating generator (max) / classifier (min) updates with experience replay and restarts."""

  fine_tunes_on_imagenet = True
  defaults = DEFAULTS

  # -- configuration -------------------------------------------------------------------------
  def validate(self) -> None:
    make_generator(self.option('ant_generator'), self.option('ant_gen_features'))
    if float(self.option('ant_eps')) < 0:
      raise ValueError(f'ant_eps={self.option("ant_eps")!r}: allowed a value > 0 (an L2 norm in '
                       '[0, 1] pixel units), or 0 for the default sqrt(pixels) rule.')
    if self.option('ant_gen_optimizer') not in GEN_OPTIMIZERS:
      raise ValueError(f'Unknown ant_gen_optimizer {self.option("ant_gen_optimizer")!r}; valid: '
                       f'{", ".join(GEN_OPTIMIZERS)}.')
    if not float(self.option('ant_gen_learning_rate')) > 0:
      raise ValueError(f'ant_gen_learning_rate={self.option("ant_gen_learning_rate")!r}: allowed '
                       'a value > 0.')
    if self.option('ant_generator_bn') not in GENERATOR_BN:
      raise ValueError(f'Unknown ant_generator_bn {self.option("ant_generator_bn")!r}; valid: '
                       f'{", ".join(GENERATOR_BN)}.')
    fractions = [float(self.option(f'ant_{k}_fraction')) for k in ('clean', 'current', 'replay')]
    if any(not 0.0 <= f <= 1.0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
      raise ValueError(f'ant_clean/current/replay_fraction={tuple(fractions)}: allowed values in '
                       '[0, 1] that sum to 1 (the paper: 0.5, 0.3, 0.2).')
    for key, low in (('ant_gen_steps', 1), ('ant_replay_every', 1), ('ant_replay_size', 1),
                     ('ant_restart_every', 0), ('ant_restart_steps', 1),
                     ('ant_restart_chunk', 1)):
      value = self.option(key)
      if int(value) != value or value < low:
        raise ValueError(f'{key}={value!r}: allowed an integer >= {low}.')

  @property
  def generator(self) -> NoiseGenerator:
    return make_generator(self.option('ant_generator'), self.option('ant_gen_features'))

  @property
  def gen_tx(self) -> optax.GradientTransformation:
    lr = float(self.option('ant_gen_learning_rate'))
    return optax.adam(lr) if self.option('ant_gen_optimizer') == 'adam' else optax.sgd(lr)

  def eps(self, image_shape: Sequence[int]) -> float:
    """``ant_eps``, or :func:`default_eps` of ``image_shape`` (H, W, C) when it is 0."""
    return float(self.option('ant_eps')) or default_eps(image_shape)

  def setup(self, ctx) -> None:
    super().setup(ctx)
    if ctx.info is not None:
      shape = tuple(ctx.info.image_shape)
      reach = math.sqrt(float(np.prod(shape)))  # every pixel moved by 1: no clipped noise goes further
      eps = self.eps(shape)
      if eps >= reach:
        raise ValueError(f'ant_eps={eps:g} cannot be reached on {shape} images: the '
                         f'L2 norm of noise clipped to [0, 1] stays below sqrt(H*W*C) = '
                         f'{reach:.1f}. (0 picks '
                         f'{default_eps(shape):.1f} for these images.)')
    b = common.local_batch_size(ctx)
    fractions = [float(self.option(f'ant_{k}_fraction')) for k in ('clean', 'current', 'replay')]
    common.check_batch_parts('ant', b, tuple(zip(('clean', 'current generator', 'replay'),
                                                 fractions, self.sizes(b))))

  def sizes(self, batch_size: int) -> Tuple[int, int, int]:
    return split_sizes(batch_size, float(self.option('ant_clean_fraction')),
                       float(self.option('ant_current_fraction')))

  # -- state ---------------------------------------------------------------------------------
  def forward_backward_passes(self) -> float:
    """One pass per generator step (a gradient through the frozen classifier) and the
    classifier's own. Restarts run in a hook, outside the step, and are not counted: they add
    ``ant_restart_steps / ant_restart_every`` generator passes per step on average."""
    return 1.0 + float(self.option('ant_gen_steps'))

  def init_extras(self, rng, params, batch_stats):
    del params, batch_stats
    info = self.ctx.info if self.ctx is not None else None
    if info is None:
      raise ValueError('ANT needs the dataset info (image channels) in its Context to build the '
                       'noise generator.')
    gen = init_generator(self.generator, rng, info.image_shape[-1])
    size = int(self.option('ant_replay_size'))
    return {'gen': gen, 'gen_opt': self.gen_tx.init(gen),
            # Entries >= min(replay_count, size) are unused placeholders.
            'replay': jax.tree.map(lambda p: jnp.repeat(p[None], size, axis=0), gen),
            'replay_count': jnp.zeros((), jnp.int32)}

  # -- the pieces of a step ------------------------------------------------------------------
  def _frozen_logits(self, params, batch_stats, x, rng):
    """The classifier as the generator sees it: no parameter update, running stats untouched
    (inference mode, or batch statistics with ``ant_generator_bn='batch'``)."""
    if self.option('ant_generator_bn') == 'batch':
      logits, _ = apply_model(self.model, params, batch_stats, x, train=True, domain=MAIN,
                              update_stats=False, rngs={'dropout': rng})
    else:
      logits, _ = apply_model(self.model, params, batch_stats, x, train=False, domain=MAIN)
    return logits

  def generator_update(self, gen, gen_opt, params, batch_stats, x, y, rng):
    """One ascent step of the generator on ``CE(f(x + delta), y)``; per-device, pmean-ed grads.

    Returns:
      ``(gen, gen_opt, ce)`` with ``ce`` the cross-entropy before the update (this shard).
    """
    noise_rng, dropout_rng = jax.random.split(rng)
    eps = self.eps(x.shape[1:])
    params, batch_stats = jax.lax.stop_gradient((params, batch_stats))

    def neg_ce(g):
      x_noisy = generate_noise(g, noise_rng, x, eps, generator=self.generator)
      return -common.cross_entropy(self._frozen_logits(params, batch_stats, x_noisy,
                                                       dropout_rng), y)

    loss, grads = jax.value_and_grad(neg_ce)(gen)
    gen, gen_opt = common.synced_update(self.gen_tx, grads, gen_opt, gen)
    return gen, gen_opt, -loss

  def generator_phase(self, state, batch, rng):
    """``ant_gen_steps`` generator updates (a ``lax.scan``) against the frozen classifier.

    Only ``extras['gen']`` and ``extras['gen_opt']`` change.

    Returns:
      ``(state, ces)``: the state and the cross-entropy before each generator step.
    """
    def body(carry, r):
      gen, opt = carry
      gen, opt, ce = self.generator_update(gen, opt, state.params, state.batch_stats,
                                           batch['image'], batch['label'], r)
      return (gen, opt), ce

    keys = jax.random.split(rng, int(self.option('ant_gen_steps')))
    (gen, opt), ces = jax.lax.scan(body, (state.extras['gen'], state.extras['gen_opt']), keys)
    return state.replace(extras={**state.extras, 'gen': gen, 'gen_opt': opt}), ces

  def compose_batch(self, extras, x, rng):
    """The classifier's batch: clean | current generator | replayed generators.

    Returns:
      ``(x_mixed, source, replay_index)``: images [b, ...]; per image 0 (clean), 1 (current
      generator) or 2 (replay); and the buffer entry of replayed images (-1 elsewhere).
    """
    n_clean, n_cur, n_rep = self.sizes(x.shape[0])
    eps = self.eps(x.shape[1:])
    cur_rng, rep_rng = jax.random.split(rng)
    parts = [x[:n_clean]]
    index = [jnp.full((n_clean + n_cur,), -1, jnp.int32)]
    if n_cur:
      parts.append(generate_noise(extras['gen'], cur_rng, x[n_clean:n_clean + n_cur], eps,
                                  generator=self.generator))
    if n_rep:
      x_rep, idx = replay_noise(self.generator, extras['replay'], extras['replay_count'],
                                extras['gen'], rep_rng, x[n_clean + n_cur:], eps)
      parts.append(x_rep)
      index.append(idx.astype(jnp.int32))
    source = jnp.concatenate([jnp.zeros((n_clean,), jnp.int32), jnp.ones((n_cur,), jnp.int32),
                              jnp.full((n_rep,), 2, jnp.int32)])
    return jax.lax.stop_gradient(jnp.concatenate(parts)), source, jnp.concatenate(index)

  def train_step(self, state, batch, rng):
    gen_rng, mix_rng, dropout_rng = jax.random.split(rng, 3)
    step = state.step
    state, ces = self.generator_phase(state, batch, gen_rng)
    x, _, _ = self.compose_batch(state.extras, batch['image'], mix_rng)
    labels = batch['label']
    smoothing = self.label_smoothing
    # One pass over the mixed batch: BN batch statistics of the mixture, updates `main`.
    state, loss, logits = common.single_pass_update(
        self.model, self.tx, state, x,
        lambda logits: common.cross_entropy(logits, labels, smoothing), dropout_rng)

    extras = state.extras
    save = (step + 1) % int(self.option('ant_replay_every')) == 0
    replay, count = jax.lax.cond(save, push_replay, lambda r, c, g: (r, c),
                                 extras['replay'], extras['replay_count'], extras['gen'])
    state = state.replace(extras={**extras, 'replay': replay, 'replay_count': count})

    n_clean, n_cur, n_rep = self.sizes(labels.shape[0])
    metrics = {'loss': loss, 'generator_ce': ces[-1],
               'replay_filled': jnp.minimum(count, int(self.option('ant_replay_size'))
                                            ).astype(jnp.float32),
               **common.part_accuracies(logits, labels, (('clean', n_clean), ('current', n_cur),
                                                         ('replay', n_rep)))}
    return state, metrics

  # -- generator restarts ----------------------------------------------------------------------
  def hooks(self):
    every = int(self.option('ant_restart_every'))
    return [Hook(every, self.restart_generator, 'ant_generator_restart')] if every > 0 else []

  def _restart_fn(self):
    """``jit(shard_map)``: a ``lax.scan`` of generator steps over a chunk of batches."""
    if getattr(self, '_restart_compiled', None) is None:
      def body(params, batch_stats, gen, opt, batches, rng):
        rng = jax.random.fold_in(rng, jax.lax.axis_index(parallel.AXIS))
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)

        def step(carry, inputs):
          batch, r = inputs
          gen, opt, ce = self.generator_update(*carry, params, batch_stats, batch['image'],
                                               batch['label'], r)
          return (gen, opt), ce

        keys = jax.random.split(rng, len(batches))
        (gen, opt), ces = jax.lax.scan(step, (gen, opt), (stacked, keys))
        return gen, opt, jax.lax.pmean(ces, parallel.AXIS)

      self._restart_compiled = parallel.spmd(
          body, self.ctx.mesh, in_specs=(P(), P(), P(), P(), P(parallel.AXIS), P()),
          out_specs=(P(), P(), P()))
    return self._restart_compiled

  def restart_generator(self, state):
    """Hook: trains a fresh generator against the current (frozen) classifier; it replaces the
    current generator and its optimizer state. Parameters and BN statistics are untouched."""
    step = int(jax.device_get(state.step))
    rng = common.stream_key(np.asarray(jax.device_get(state.rng)), 'ant/restart', step)
    init_rng, train_rng = jax.random.split(rng)
    channels = jax.tree.leaves(state.extras['gen'])[-1].shape[-1]
    gen = init_generator(self.generator, init_rng, channels)
    gen, opt = parallel.replicate((gen, self.gen_tx.init(gen)), self.ctx.mesh)
    total = int(self.option('ant_restart_steps'))
    chunk = _chunk_size(total, int(self.option('ant_restart_chunk')))
    # Its own data stream per restart, a 32-bit hash of (seed, step): the data pipeline
    # multiplies its seed by ~1e6, so a product here overflowed int64 for seeds >= ~9e6.
    seed = int(np.random.SeedSequence([int(self.config.get('seed', 0)), step])
               .generate_state(1)[0])
    batches = self.ctx.train_batches(total, seed)
    fn = self._restart_fn()
    first = last = None
    for i in range(total // chunk):
      chunk_batches = tuple(next(batches) for _ in range(chunk))
      gen, opt, ces = fn(state.params, state.batch_stats, gen, opt, chunk_batches,
                         jax.random.fold_in(train_rng, i))
      if first is None:
        first = float(np.asarray(ces)[0])
      last = ces
    logging.info('ANT generator restart at step %d: %d steps, generator CE %.4f -> %.4f.', step,
                 total, first, float(np.asarray(last)[-1]))
    return state.replace(extras={**state.extras, 'gen': gen, 'gen_opt': opt})
