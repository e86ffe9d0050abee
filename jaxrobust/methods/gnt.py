"""Gaussian / Speckle noise training (GNT; Rusak et al. 2020, paper ``003``, section 3.1).

Algorithm (one step, per device shard of ``b`` images):

1. The first ``n_clean = round(b * gnt_clean_fraction)`` images stay clean (the paper: "we only
   perturb 50% of the training data with Gaussian noise within each batch"); the data pipeline
   shuffles, so which images are clean is random.
2. Every other image gets its own standard deviation ``sigma_i``, drawn uniformly from the set
   ``gnt_sigmas`` (a one-element set is the paper's fixed-sigma GNT, e.g. ``GNT sigma_0.5``;
   ``(0.08, 0.12, 0.18, 0.26, 0.38)`` is its ``GNT_mult``, the ImageNet-C Gaussian-noise
   severities), and fresh noise ``z_i ~ N(0, 1)`` drawn on device:

     Gaussian (Eq. 1):  ``x_i' = clip(x_i + sigma_i * z_i, 0, 1)``
     Speckle:           ``x_i' = clip(x_i + x_i * sigma_i * z_i, 0, 1)``
     (multiplicative, as ImageNet-C's held-out ``speckle_noise``; the paper's "Speckle" model)

3. Loss: the mean cross-entropy over the whole mixed batch (clean and noisy images weighted
   equally), ``L = 1/b sum_i CE(f(x_i or x_i'), y_i)``, minimised by the backbone's optimizer.

BatchNorm rule: the paper fine-tunes one ordinary network on the mixed batch and has no notion of
a second BatchNorm, so there is a single domain, ``main``. The clean and noisy images go through
ONE training forward pass together: BN normalises with the statistics of the mixed batch, and
that pass updates the ``main`` running statistics, which evaluation then uses.

Config keys (defaults in :data:`DEFAULTS`):
  gnt_noise: 'gaussian' or 'speckle'.
  gnt_sigmas: tuple of standard deviations (in [0, 1] pixel units); one value = fixed sigma.
  gnt_clean_fraction: fraction of every batch left clean (0.5 in the paper).
"""

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxrobust.methods import common, register
from jaxrobust.methods.base import Method

NOISES = ('gaussian', 'speckle')
DEFAULTS = {'gnt_noise': 'gaussian', 'gnt_sigmas': (0.5,), 'gnt_clean_fraction': 0.5}


def num_clean(batch_size: int, clean_fraction: float) -> int:
  """Images of a shard of ``batch_size`` that stay clean: ``round(b * clean_fraction)``."""
  return int(round(batch_size * clean_fraction))


def add_noise(x: jax.Array, sigma: jax.Array, z: jax.Array, noise: str) -> jax.Array:
  """``clip(x + sigma z)`` (gaussian) or ``clip(x + x sigma z)`` (speckle); sigma per image [B]."""
  s = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
  if noise == 'gaussian':
    return jnp.clip(x + s * z, 0.0, 1.0)
  if noise == 'speckle':
    return jnp.clip(x + x * s * z, 0.0, 1.0)
  raise ValueError(f'Unknown gnt_noise {noise!r}; valid: {", ".join(NOISES)}.')


def noise_batch(x: jax.Array, rng: jax.Array, *, noise: str, sigmas: Sequence[float],
                clean_fraction: float):
  """The GNT training batch: the first ``num_clean`` images clean, the rest noised.

  Args:
    x: images in [0, 1], [b, H, W, C].
    rng: key for the per-image sigmas and the noise.
    noise: 'gaussian' or 'speckle'.
    sigmas: the set each noisy image draws its sigma from (uniformly).
    clean_fraction: fraction of the batch left clean.

  Returns:
    ``(x_mixed, sigma)``: the mixed batch (same shape, in [0, 1]) and every image's sigma
    ([b]; 0 for the clean ones).
  """
  b = x.shape[0]
  n_clean = num_clean(b, clean_fraction)
  sigma_rng, z_rng = jax.random.split(rng)
  choices = jnp.asarray(tuple(sigmas), jnp.float32)
  sigma = jax.random.choice(sigma_rng, choices, (b - n_clean,))
  noisy = add_noise(x[n_clean:], sigma, jax.random.normal(z_rng, x[n_clean:].shape, x.dtype),
                    noise)
  return (jnp.concatenate([x[:n_clean], noisy]),
          jnp.concatenate([jnp.zeros((n_clean,), jnp.float32), sigma]))


@register('gnt')
class GNT(Method):
  """Minimises the cross-entropy on batches that are half clean, half Gaussian/Speckle-noised."""

  fine_tunes_on_imagenet = True
  defaults = DEFAULTS

  def validate(self) -> None:
    noise = self.option('gnt_noise')
    if noise not in NOISES:
      raise ValueError(f'Unknown gnt_noise {noise!r}; valid: {", ".join(NOISES)}.')
    sigmas = self.option('gnt_sigmas')
    if isinstance(sigmas, (int, float)):
      sigmas = (sigmas,)
    if not len(sigmas) or any(not float(s) > 0 for s in sigmas):
      raise ValueError(f'gnt_sigmas={tuple(sigmas)!r}: allowed a non-empty tuple of values > 0.')
    frac = float(self.option('gnt_clean_fraction'))
    if not 0.0 <= frac < 1.0:
      raise ValueError(f'gnt_clean_fraction={frac!r}: allowed a value in [0, 1).')

  def setup(self, ctx) -> None:
    super().setup(ctx)
    b, frac = common.local_batch_size(ctx), float(self.option('gnt_clean_fraction'))
    n_clean = num_clean(b, frac)
    common.check_batch_parts('gnt', b, (('clean', frac, n_clean), ('noisy', 1 - frac, b - n_clean)))

  @property
  def sigmas(self) -> tuple:
    sigmas = self.option('gnt_sigmas')
    return tuple(float(s) for s in ((sigmas,) if isinstance(sigmas, (int, float)) else sigmas))

  def train_step(self, state, batch, rng):
    noise_rng, dropout_rng = jax.random.split(rng)
    labels = batch['label']
    clean_fraction = float(self.option('gnt_clean_fraction'))
    x, _ = noise_batch(batch['image'], noise_rng, noise=self.option('gnt_noise'),
                       sigmas=self.sigmas, clean_fraction=clean_fraction)
    smoothing = self.label_smoothing
    # One pass over the mixed batch: BN batch statistics of clean+noisy, updates `main`.
    state, loss, logits = common.single_pass_update(
        self.model, self.tx, state, x,
        lambda logits: common.cross_entropy(logits, labels, smoothing), dropout_rng)
    n_clean = num_clean(labels.shape[0], clean_fraction)
    return state, {'loss': loss, **common.part_accuracies(
        logits, labels, (('clean', n_clean), ('noisy', labels.shape[0] - n_clean)))}
