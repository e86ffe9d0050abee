"""Median minimal L2 perturbation epsilon* along noise directions.

Implements the noise-robustness measure of Rusak et al. 2020 ("A simple way to
make neural networks robust against diverse image corruptions", section 3.3,
Eq. 4):

    eps* = median_{(x, y) in test set} ||delta_min||_2,

where delta_min is found by a line search from the clean image x along a
random noise direction d until the classifier's decision changes, and the
image stays in [0, 1]. Samples that are never misclassified contribute +inf
to the median (the paper's footnote 5).

Procedure, per image (all batched and jittable; ``lax.scan`` loops):

1. Draw a direction d (Gaussian, uniform, or any ``direction_fn(rng, x)``,
   e.g. a trained adversarial noise generator) and normalise it to unit L2
   norm per image.
2. Coarse search: evaluate the classifier at ``clip(x + t d, 0, 1)`` for every
   t on a grid ``0 = t_0 < t_1 < ... < t_K = max_eps`` (geometric or linear).
   The first grid point that is misclassified brackets the boundary between it
   and the previous grid point.
3. Bisection: ``num_bisect`` halvings of the bracket, keeping the invariant
   "lower end correct, upper end wrong".
4. Report the L2 norm of the perturbation *actually applied* at the upper
   (misclassified) end: ``||clip(x + t_hi d, 0, 1) - x||_2``. Because of
   clipping this is <= t_hi; it is the quantity in Eq. 4
   (``x + delta_min in [0,1]^N``) and the one the public reference
   implementation (bethgelab/game-of-noise, ``zero_accuracy_perturbation``)
   reports.

Conventions:

* Images misclassified when clean get eps = 0: the line search starts at the
  clean image, which is already wrong, so ||delta_min|| = 0 (the paper takes
  the median over the whole test set, and the reference implementation
  returns 0 for these images as well).
* Images never misclassified for t <= max_eps get eps = +inf (footnote 5).
  ``max_eps`` bounds the *unclipped* step t. The default, sqrt(N) for N pixel
  values, moves each pixel by about one standard deviation of a unit normal
  along a Gaussian direction, so most pixels are clipped to 0 or 1 and the
  applied norm is about half of t: an image still classified correctly there
  is counted as never flipped, although a longer step could still change it
  (the clipped image keeps changing until every pixel is at 0 or 1). Pass a
  larger ``max_eps`` to search further.
* The grid is over t. Along a ray the applied norm is non-decreasing in t, so
  the reported eps is the applied norm at a misclassified point whose step is
  within the bisection tolerance of the first boundary crossing found.
* Units: eps is in [0, 1] pixel units over all H*W*C values (the paper's
  ImageNet numbers, e.g. eps*_GN = 39.0 for a vanilla ResNet-50, are on this
  scale).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

PredictFn = Callable[[jax.Array], jax.Array]
DirectionFn = Callable[[jax.Array, jax.Array], jax.Array]
Noise = Union[str, DirectionFn]

NOISE_TYPES = ('gaussian', 'uniform')
GRID_TYPES = ('geometric', 'linear')


# ----------------------------------------------------------------------------
# Directions
# ----------------------------------------------------------------------------


def _per_image_l2(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def _expand(v: jax.Array, like: jax.Array) -> jax.Array:
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def normalize_directions(d: jax.Array) -> jax.Array:
  """Scales every image of ``d`` to unit L2 norm.

  An all-zero direction stays zero (its image then never moves and is reported
  as never misclassified, eps = +inf, unless it is wrong when clean).
  """
  norm = _per_image_l2(d)
  return d / _expand(jnp.maximum(norm, 1e-30), d)


def sample_directions(rng: jax.Array, x: jax.Array, noise: Noise = 'gaussian') -> jax.Array:
  """Draws one unit-L2-norm noise direction per image.

  Args:
    rng: PRNG key.
    x: [B, ...] images (only the shape and dtype are used by the built-in
      samplers; a custom sampler may use the images).
    noise: ``'gaussian'`` (i.i.d. N(0, 1) per pixel value), ``'uniform'``
      (i.i.d. U(-1, 1)), or a callable ``direction_fn(rng, x) -> d`` with ``d``
      of ``x``'s shape (e.g. a closure over a trained noise generator
      ``lambda rng, x: generator.apply(gparams, jax.random.normal(rng, x.shape))``).

  Returns:
    [B, ...] directions of unit L2 norm per image.
  """
  if callable(noise):
    d = noise(rng, x)
    if d.shape != x.shape:
      raise ValueError(f'direction_fn returned shape {d.shape}, expected the image shape {x.shape}')
  elif noise == 'gaussian':
    d = jax.random.normal(rng, x.shape, dtype=jnp.float32)
  elif noise == 'uniform':
    # A key of its own: JAX's normal draws are a monotone map of the uniform draws of the same
    # key, so one key gave Gaussian and uniform directions with cosine ~0.98 per image, and the
    # two epsilon* measured nearly the same thing.
    d = jax.random.uniform(jax.random.fold_in(rng, 1), x.shape, dtype=jnp.float32,
                           minval=-1.0, maxval=1.0)
  else:
    raise ValueError(f'noise {noise!r} invalid: allowed {NOISE_TYPES} or a callable(rng, x)')
  return normalize_directions(d.astype(jnp.float32))


# ----------------------------------------------------------------------------
# Line search
# ----------------------------------------------------------------------------


def coarse_grid(max_eps: float, num_coarse: int, spacing: str = 'geometric',
                min_eps: float | None = None) -> np.ndarray:
  """Step sizes ``[0, t_1, ..., t_K = max_eps]`` for the coarse search.

  Args:
    max_eps: largest step (unclipped L2 length along the unit direction).
    num_coarse: K, the number of non-zero grid points (>= 1).
    spacing: ``'geometric'`` (t_k = min_eps * r^(k-1), r chosen so t_K =
      max_eps) or ``'linear'`` (t_k = k * max_eps / K).
    min_eps: first non-zero step for the geometric grid; default
      ``max_eps * 1e-3``.

  Returns:
    float32 array of shape [K + 1], starting with 0 (the clean image).
  """
  if not np.isfinite(max_eps) or max_eps <= 0:
    raise ValueError(f'max_eps={max_eps} invalid: allowed a finite value > 0')
  if int(num_coarse) != num_coarse or num_coarse < 1:
    raise ValueError(f'num_coarse={num_coarse} invalid: allowed an integer >= 1')
  num_coarse = int(num_coarse)
  if spacing == 'linear':
    pts = np.linspace(0.0, max_eps, num_coarse + 1)
  elif spacing == 'geometric':
    min_eps = max_eps * 1e-3 if min_eps is None else min_eps
    if not 0 < min_eps <= max_eps:
      raise ValueError(f'min_eps={min_eps} invalid: allowed 0 < min_eps <= max_eps={max_eps}')
    if num_coarse == 1:
      pts = np.array([0.0, max_eps])
    else:
      pts = np.concatenate([[0.0], np.geomspace(min_eps, max_eps, num_coarse)])
  else:
    raise ValueError(f'spacing {spacing!r} invalid: allowed {GRID_TYPES}')
  return pts.astype(np.float32)


def applied_l2(x: jax.Array, d: jax.Array, t: jax.Array) -> jax.Array:
  """``||clip(x + t d, 0, 1) - x||_2`` per image, for per-image steps t [B]."""
  x_pert = jnp.clip(x + _expand(t, x) * d, 0.0, 1.0)
  return _per_image_l2(x_pert - x)


def minimal_l2_along_directions(predict_fn: PredictFn, x: jax.Array, y: jax.Array,
                                d: jax.Array, grid: jax.Array, num_bisect: int) -> jax.Array:
  """Line search (coarse grid, then bisection) along given unit directions.

  Args:
    predict_fn: pure ``x -> logits`` (the caller closes over params and uses
      the evaluation BN statistics).
    x: [B, H, W, C] images in [0, 1].
    y: [B] labels.
    d: [B, H, W, C] unit-L2 directions.
    grid: [K + 1] increasing steps starting at 0 (see :func:`coarse_grid`).
    num_bisect: number of bisection steps (>= 0).

  Returns:
    [B] float32 eps: applied L2 norm at the first misclassified step found;
    0 where misclassified when clean; +inf where never misclassified.
  """
  grid = jnp.asarray(grid, jnp.float32)
  x = x.astype(jnp.float32)

  def is_wrong(t):  # t: [B] per-image steps
    logits = predict_fn(jnp.clip(x + _expand(t, x) * d, 0.0, 1.0))
    return jnp.argmax(logits, axis=-1) != y

  batch = x.shape[0]

  def coarse_step(carry, t):
    return carry, is_wrong(jnp.full((batch,), t, jnp.float32))

  _, wrong = jax.lax.scan(coarse_step, None, grid)  # [K + 1, B]
  ever_wrong = jnp.any(wrong, axis=0)
  first = jnp.argmax(wrong, axis=0)  # first misclassified grid index
  hi = grid[first]
  lo = grid[jnp.maximum(first - 1, 0)]

  def bisect_step(carry, _):
    lo, hi = carry
    mid = 0.5 * (lo + hi)
    w = is_wrong(mid)
    return (jnp.where(w, lo, mid), jnp.where(w, mid, hi)), None

  (lo, hi), _ = jax.lax.scan(bisect_step, (lo, hi), None, length=num_bisect)
  eps = applied_l2(x, d, hi)
  # first == 0 means wrong at t = 0 (clean); the bracket was (0, 0) so eps is
  # already 0, but make the convention explicit.
  eps = jnp.where(ever_wrong & (first == 0), 0.0, eps)
  eps = jnp.where(ever_wrong, eps, jnp.inf)
  return jax.lax.stop_gradient(eps)


def minimal_l2_along_noise(predict_fn: PredictFn, x: jax.Array, y: jax.Array, rng: jax.Array,
                           *, noise: Noise = 'gaussian', max_eps: float | None = None,
                           num_coarse: int = 16, num_bisect: int = 10,
                           spacing: str = 'geometric',
                           min_eps: float | None = None) -> jax.Array:
  """Per-image minimal L2 perturbation along a random noise direction (Rusak et al. Eq. 4).

  Jittable with ``predict_fn``/``noise`` closed over, e.g.
  ``jax.jit(functools.partial(minimal_l2_along_noise, predict_fn, noise='uniform'))``.

  Args:
    predict_fn: pure ``x -> logits``.
    x: [B, H, W, C] images in [0, 1].
    y: [B] integer labels.
    rng: PRNG key for the directions.
    noise: ``'gaussian'``, ``'uniform'`` or ``direction_fn(rng, x) -> d``.
    max_eps: largest (unclipped) step; default sqrt(H*W*C).
    num_coarse: number of non-zero coarse grid points.
    num_bisect: bisection steps; the final bracket is
      ``(t_k - t_{k-1}) / 2**num_bisect`` wide.
    spacing: ``'geometric'`` or ``'linear'`` grid.
    min_eps: first non-zero geometric grid point (default ``max_eps / 1000``).

  Returns:
    [B] float32 eps (0 for clean-misclassified, +inf for never misclassified).
  """
  if x.ndim < 2:
    raise ValueError(f'x must be a batch of images [B, ...], got shape {x.shape}')
  if y.shape != x.shape[:1]:
    raise ValueError(f'y must have shape {x.shape[:1]}, got {y.shape}')
  if int(num_bisect) != num_bisect or num_bisect < 0:
    raise ValueError(f'num_bisect={num_bisect} invalid: allowed an integer >= 0')
  if max_eps is None:
    max_eps = float(np.sqrt(np.prod(x.shape[1:])))
  grid = coarse_grid(max_eps, num_coarse, spacing, min_eps)
  d = sample_directions(rng, x, noise)
  return minimal_l2_along_directions(predict_fn, x, y, d, grid, int(num_bisect))


# ----------------------------------------------------------------------------
# Dataset-level
# ----------------------------------------------------------------------------


def as_argument(predict_fn: PredictFn) -> jax.tree_util.Partial:
  """``predict_fn`` as a pytree a jitted function can take as an argument.

  A ``jax.tree_util.Partial`` (e.g. ``Partial(apply, params, batch_stats)``) keeps its bound
  arrays as leaves, so they enter the compiled program as inputs; a function that closed over
  them would bake them in as constants (slow compiles, large programs for big models). A plain
  function becomes a ``Partial`` without leaves.
  """
  if isinstance(predict_fn, jax.tree_util.Partial):
    return predict_fn
  return jax.tree_util.Partial(predict_fn)


def unpack_batch(batch: Any) -> tuple[Any, Any, Any]:
  """``(x, y, mask)`` from an ``(x, y)`` tuple or an ``{'image', 'label'[, 'mask']}`` dict.

  ``mask`` (None when absent) marks real examples (> 0) versus the padding the
  data pipeline adds to fill the last batch; padded examples are ignored.
  """
  if isinstance(batch, Mapping):
    for xk, yk in (('image', 'label'), ('x', 'y')):
      if xk in batch and yk in batch:
        return batch[xk], batch[yk], batch.get('mask')
    raise ValueError(f'batch dict keys {sorted(batch)} invalid: allowed image/label[/mask] or x/y')
  if isinstance(batch, (tuple, list)) and len(batch) == 2:
    return batch[0], batch[1], None
  raise ValueError(f'batch of type {type(batch).__name__} invalid: allowed (x, y) or a dict')


def eps_star_statistics(eps: Any) -> dict[str, float]:
  """Summary of per-image eps values (+inf and 0 included as the paper does).

  Returns:
    ``eps_star`` (the median over all images, +inf included),
    ``eps_star_correct_only`` (median over images correct when clean),
    ``frac_never_flipped`` (+inf), ``frac_misclassified_clean`` (eps == 0),
    ``num_images``.
  """
  eps = np.asarray(eps, np.float64).reshape(-1)
  if eps.size == 0:
    raise ValueError('no eps values: the dataset iterator yielded no images')
  correct = eps > 0
  return {
      'eps_star': float(np.median(eps)),
      'eps_star_correct_only': float(np.median(eps[correct])) if correct.any() else float('nan'),
      'frac_never_flipped': float(np.mean(np.isinf(eps))),
      'frac_misclassified_clean': float(np.mean(eps == 0)),
      'num_images': int(eps.size),
  }


@functools.lru_cache(maxsize=None)
def _compiled_search(noise_name: Optional[str], max_eps, num_coarse, num_bisect, spacing,
                     min_eps):
  """One compiled line search per setting. The model and a callable noise (``noise_name``
  None) are arguments, so new weights or a new generator's parameters reuse the program."""
  @jax.jit
  def search(predict_fn, noise_fn, x, y, rng):
    return minimal_l2_along_noise(
        predict_fn, x, y, rng, noise=noise_fn if noise_name is None else noise_name,
        max_eps=max_eps, num_coarse=num_coarse, num_bisect=num_bisect, spacing=spacing,
        min_eps=min_eps)
  return search


def median_eps_star(predict_fn: PredictFn, batches: Iterable[Any], rng: jax.Array, *,
                    noise: Noise = 'gaussian', max_eps: float | None = None,
                    num_coarse: int = 16, num_bisect: int = 10, spacing: str = 'geometric',
                    min_eps: float | None = None, max_batches: int | None = None
                    ) -> dict[str, Any]:
  """epsilon* = median minimal L2 along noise over a dataset (Rusak et al. Eq. 4).

  Args:
    predict_fn: pure ``x -> logits``; compiled once (per batch shape) here. Pass weights as a
      ``jax.tree_util.Partial`` to keep them out of the program (:func:`as_argument`); a
      callable ``noise`` likewise (e.g. :func:`adversarial_noise.generator_directions`).
    batches: iterable of ``(x, y)`` or ``{'image', 'label'[, 'mask']}``
      batches; examples with ``mask == 0`` (padding) are dropped.
    rng: PRNG key; batch i uses ``fold_in(rng, i)``.
    noise, max_eps, num_coarse, num_bisect, spacing, min_eps: as for
      :func:`minimal_l2_along_noise`.
    max_batches: stop after this many batches (None: all).

  Returns:
    :func:`eps_star_statistics` plus ``per_image`` (np.ndarray of every eps).
  """
  noise_fn, noise_name = (as_argument(noise), None) if callable(noise) else (None, noise)
  search = _compiled_search(noise_name, max_eps, num_coarse, num_bisect, spacing, min_eps)
  predict_fn = as_argument(predict_fn)
  all_eps = []
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    x, y, mask = unpack_batch(batch)
    eps = np.asarray(search(predict_fn, noise_fn, jnp.asarray(x), jnp.asarray(y),
                            jax.random.fold_in(rng, i)))
    if mask is not None:
      eps = eps[np.asarray(mask).reshape(-1) > 0]
    all_eps.append(eps)
  if not all_eps:
    raise ValueError('batches yielded no data')
  eps = np.concatenate(all_eps)
  stats: dict[str, Any] = eps_star_statistics(eps)
  stats['per_image'] = eps
  return stats


def accuracy_vs_eps(eps: Any, budgets: Any) -> np.ndarray:
  """Accuracy under noise of L2 size <= budget, from per-image eps.

  An image counts as correct at budget b when its minimal flipping
  perturbation exceeds b (eps > b; +inf always, 0 never). This is the curve
  whose median crossing is eps*.

  Args:
    eps: per-image eps values.
    budgets: L2 budgets (same units).

  Returns:
    float array, one accuracy per budget.
  """
  eps = np.asarray(eps, np.float64).reshape(-1)
  budgets = np.asarray(budgets, np.float64).reshape(-1)
  if eps.size == 0:
    raise ValueError('eps is empty')
  if np.any(budgets < 0):
    raise ValueError(f'budgets {budgets[budgets < 0]} invalid: allowed values >= 0')
  return (eps[None, :] > budgets[:, None]).mean(axis=1)
