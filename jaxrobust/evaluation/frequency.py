"""Fourier-basis perturbation heat maps (Yin et al. 2019; Auxiliary Training sec. 5.2).

For every 2-D DFT frequency (k, l) of an H x W image there is a real basis
image U_{k,l} of unit L2 norm whose Fourier transform is supported only on
(k, l) and its conjugate (-k, -l). Each test image is perturbed as

    x~ = clip(x + r * v * U_{k,l}, 0, 1),

with v > 0 a fixed L2 norm and r in {-1, +1} a random sign drawn
independently per image and per channel (Yin et al.: "for multi-channel images
we perturb every channel independently"). The error (or accuracy) on x~ for
every (k, l) gives the heat map; it is returned ``fftshift``-ed so the zero
frequency (DC) is at the centre, row ``H // 2``, column ``W // 2``, as in the
papers' figures.

Basis. With theta = 2 pi (k m / H + l n / W) for pixel (m, n),

    U_{k,l}(m, n) = (cos theta - sin theta) / ||cos theta - sin theta||,

which equals ``sqrt(HW) * Re(IDFT(c delta_{k,l} + conj(c) delta_{-k,-l}))``
with c = (1 + i)/2: the construction of the reference implementation
(google-research/frequency_analysis). For self-conjugate frequencies
((2k mod H, 2l mod W) = (0, 0): DC and the Nyquist rows/columns) the sine
part vanishes and U = cos theta / sqrt(HW). (k, l) and (-k, -l) are the same
real frequency: their two basis images (cos - sin and cos + sin of theta) are
its two orthogonal phases. Like the reference, by default only one of each
conjugate pair is evaluated and its value used for both map entries
(``use_symmetry=True``); with ``use_symmetry=False`` each entry is evaluated
with its own phase.

Norm. v is in [0, 1] pixel units, per channel. Yin et al. use v = 4 for
CIFAR-10 (32 x 32) and v = 15.7 for ImageNet (224 x 224), which we read as
[0, 1] units: in 0-255 units a norm of 4 spread over 1024 pixels would be far
below one grey level. For a non-DC basis on 32 x 32, v = 4 is a wave of
amplitude 4 * sqrt(2) / 32 ~= 0.18. ``DEFAULT_NORMS`` records these values.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrobust.evaluation.noise_robustness import as_argument, unpack_batch

PredictFn = Callable[[jax.Array], jax.Array]

#: Perturbation L2 norm v per channel, [0, 1] units (Yin et al. 2019).
DEFAULT_NORMS = {'cifar': 4.0, 'imagenet': 15.7}

METRICS = ('error', 'accuracy')


def fourier_basis(k: Any, l: Any, height: int, width: int) -> jax.Array:
  """Real, unit-L2-norm Fourier basis image for frequency (k, l). Jittable in k, l.

  Args:
    k: row frequency (any integer; taken mod ``height``). May be traced.
    l: column frequency (taken mod ``width``). May be traced.
    height, width: image size.

  Returns:
    [height, width] float32 array with unit L2 norm whose DFT is non-zero only
    at (k, l) and (-k, -l).
  """
  m = jnp.arange(height, dtype=jnp.float32)[:, None]
  n = jnp.arange(width, dtype=jnp.float32)[None, :]
  # Reduce mod H/W first so theta stays small and float32-accurate.
  kk = jnp.mod(jnp.asarray(k, jnp.int32), height).astype(jnp.float32)
  ll = jnp.mod(jnp.asarray(l, jnp.int32), width).astype(jnp.float32)
  theta = 2.0 * jnp.pi * (jnp.mod(kk * m, height) / height + jnp.mod(ll * n, width) / width)
  u = jnp.cos(theta) - jnp.sin(theta)
  return u / jnp.sqrt(jnp.sum(u * u))


def shifted_to_frequency(row: Any, col: Any, height: int, width: int) -> tuple[Any, Any]:
  """Map position (row, col) of the fftshift-ed heat map -> signed frequency (k, l).

  ``np.fft.fftshift`` puts frequency 0 at index ``n // 2``, so position i
  holds frequency ``i - n // 2``.
  """
  return row - height // 2, col - width // 2


def all_frequencies(height: int, width: int, stride: int = 1) -> np.ndarray:
  """Map positions ``(row, col)`` of the shifted heat map, every ``stride``-th.

  The centre (DC) is always included: rows/cols are taken at offsets that are
  multiples of ``stride`` from ``(height // 2, width // 2)``.

  Returns:
    int32 array [F, 2] of (row, col) positions.
  """
  if int(stride) != stride or stride < 1:
    raise ValueError(f'stride={stride} invalid: allowed an integer >= 1')
  rows = np.arange(height // 2 % stride, height, stride)
  cols = np.arange(width // 2 % stride, width, stride)
  rr, cc = np.meshgrid(rows, cols, indexing='ij')
  return np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int32)


def _canonical_positions(positions: np.ndarray, height: int, width: int
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Keeps one position per conjugate pair.

  Returns the unique canonical positions to evaluate [G, 2] and, for every
  requested position, the index into them [F].
  """
  k, l = shifted_to_frequency(positions[:, 0], positions[:, 1], height, width)
  k, l = np.mod(k, height), np.mod(l, width)
  ck, cl = np.mod(-k, height), np.mod(-l, width)
  # canonical representative: the lexicographically smaller of (k,l), (-k,-l)
  use_conj = (ck < k) | ((ck == k) & (cl < l))
  kc, lc = np.where(use_conj, ck, k), np.where(use_conj, cl, l)
  keys = kc * width + lc
  uniq, inverse = np.unique(keys, return_inverse=True)
  uk, ul = uniq // width, uniq % width
  # back to shifted map positions of the canonical frequency
  rows = np.mod(uk + height // 2, height)
  cols = np.mod(ul + width // 2, width)
  return np.stack([rows, cols], axis=1).astype(np.int32), inverse.reshape(-1)


def perturb_with_basis(x: jax.Array, basis: jax.Array, norm: float, rng: jax.Array
                       ) -> jax.Array:
  """``clip(x + r * norm * basis, 0, 1)`` with a random sign r per image and channel.

  Args:
    x: [B, H, W, C] images in [0, 1].
    basis: [H, W] unit-norm basis image.
    norm: v, the L2 norm of each channel's perturbation ([0, 1] units).
    rng: key for the signs.
  """
  b, _, _, c = x.shape
  signs = jax.random.rademacher(rng, (b, 1, 1, c), dtype=jnp.float32)
  return jnp.clip(x + signs * norm * basis[None, :, :, None], 0.0, 1.0)


def fourier_error_counts(predict_fn: PredictFn, x: jax.Array, y: jax.Array, rng: jax.Array,
                         positions: jax.Array, *, norm: float = DEFAULT_NORMS['cifar'],
                         chunk_size: int = 8, mask: jax.Array | None = None,
                         sharding: jax.sharding.Sharding | None = None) -> jax.Array:
  """Number of misclassified images for each requested frequency. Jittable.

  Frequencies are processed in chunks of ``chunk_size`` (one forward pass over the chunk's
  perturbed copies, stacked image-major; a ``lax.scan`` across chunks), so peak memory is about
  ``chunk_size`` perturbed copies of the batch.

  Args:
    predict_fn: pure ``x -> logits``.
    x: [B, H, W, C] images in [0, 1].
    y: [B] labels.
    rng: key; frequency f uses ``fold_in(rng, f)`` for its signs.
    positions: [F, 2] int (row, col) positions in the fftshift-ed map.
    norm: v ([0, 1] units, per channel).
    chunk_size: frequencies evaluated together.
    mask: optional [B] weights; examples with 0 (padding) are not counted.
    sharding: the batch's sharding (e.g. over the devices of a mesh); every perturbed copy is
      kept in it, else XLA gathers the whole batch onto every device and each runs the model on
      all of it.

  Returns:
    [F] int32 error counts.
  """
  b, h, w, _ = x.shape
  valid = jnp.ones((b,), bool) if mask is None else jnp.asarray(mask).reshape(b) > 0
  positions = jnp.asarray(positions, jnp.int32)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(positions.shape[0]))

  def perturbed(pos, key):
    k, l = shifted_to_frequency(pos[0], pos[1], h, w)
    return perturb_with_basis(x, fourier_basis(k, l, h, w), norm, key)

  def chunk(_, args):
    # One forward pass over the chunk's copies, stacked image-major ([B * n]): the batch axis
    # stays the leading one, so a batch sharded over devices stays sharded (frequency-major
    # stacking would make XLA gather the whole batch onto every device).
    pos, key = args
    x_pert = jnp.moveaxis(jax.vmap(perturbed)(pos, key), 0, 1)  # [B, n, H, W, C]
    n = x_pert.shape[1]
    x_pert = x_pert.reshape((b * n,) + x_pert.shape[2:])
    if sharding is not None:
      x_pert = jax.lax.with_sharding_constraint(x_pert, sharding)
    pred = jnp.argmax(predict_fn(x_pert), axis=-1).reshape(b, n)
    wrong = (pred != y[:, None]) & valid[:, None]
    return None, jnp.sum(wrong.astype(jnp.int32), axis=0)

  f = positions.shape[0]
  size = min(int(chunk_size), f)
  pad = -f % size  # the last chunk is filled with repeats of the last frequency, then dropped
  positions = jnp.concatenate([positions, jnp.repeat(positions[-1:], pad, 0)])
  keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, 0)])
  _, counts = jax.lax.scan(chunk, None, (positions.reshape(-1, size, 2),
                                         keys.reshape((-1, size) + keys.shape[1:])))
  return jax.lax.stop_gradient(counts.reshape(-1)[:f])


def fourier_heat_map(predict_fn: PredictFn, batches: Iterable[Any], rng: jax.Array, *,
                     norm: float = DEFAULT_NORMS['cifar'],
                     positions: Sequence[Sequence[int]] | np.ndarray | None = None,
                     stride: int = 1, use_symmetry: bool = True, chunk_size: int = 8,
                     metric: str = 'error', max_batches: int | None = None
                     ) -> dict[str, Any]:
  """Fourier heat map of a classifier over a dataset.

  Cost: one forward pass of every batch per evaluated frequency, i.e. about
  H*W/2 passes with ``use_symmetry`` (~530 for 32 x 32). On a CPU use a few
  hundred images, or ``stride`` / ``positions`` to evaluate a subset.

  Args:
    predict_fn: pure ``x -> logits`` (compiled once per batch shape here; weights bound in a
      ``jax.tree_util.Partial`` stay inputs of the program, see ``noise_robustness.as_argument``).
    batches: iterable of ``(x, y)`` or ``{'image', 'label'[, 'mask']}``
      (``mask == 0`` marks padding, not counted); or a single ``(x, y)`` tuple.
    rng: key; batch i uses ``fold_in(rng, i)``.
    norm: v, per-channel L2 norm in [0, 1] units (4.0 for CIFAR, 15.7 for
      ImageNet-size images as Yin et al.).
    positions: (row, col) positions of the shifted map to evaluate (default:
      :func:`all_frequencies` with ``stride``). Entries not evaluated are NaN.
    stride: subsample the grid when ``positions`` is None.
    use_symmetry: evaluate each conjugate pair once and fill both entries
      (as the reference); False evaluates (k, l) and (-k, -l) separately, each
      with its own phase (cos - sin vs cos + sin), at twice the cost.
    chunk_size: frequencies per vectorised chunk.
    metric: ``'error'`` or ``'accuracy'`` in the returned map.
    max_batches: stop after this many batches.

  Returns:
    ``{'map': [H, W] float64 (fftshift-ed, DC at (H//2, W//2), NaN where not
    evaluated), 'metric': metric, 'clean_error': float, 'norm': v,
    'num_images': int}``.
  """
  if metric not in METRICS:
    raise ValueError(f'metric {metric!r} invalid: allowed {METRICS}')
  if not norm > 0:
    raise ValueError(f'norm={norm} invalid: allowed a value > 0')
  if int(chunk_size) != chunk_size or chunk_size < 1:
    raise ValueError(f'chunk_size={chunk_size} invalid: allowed an integer >= 1')
  if isinstance(batches, tuple) and len(batches) == 2 and hasattr(batches[0], 'shape'):
    batches = [batches]

  # predict_fn is an argument of both programs, so weights bound in a Partial stay inputs
  fn = as_argument(predict_fn)
  count_fn = None
  clean_fn = functools.partial(jax.jit(
      lambda f, x, y, valid: jnp.sum((jnp.argmax(f(x), -1) != y) & valid)), fn)

  counts = None
  clean_wrong = 0
  total = 0
  h = w = None
  req = eval_pos = inverse = None
  for i, batch in enumerate(batches):
    if max_batches is not None and i >= max_batches:
      break
    x, y, mask = unpack_batch(batch)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    if x.ndim != 4:
      raise ValueError(f'images must be [B, H, W, C], got shape {x.shape}')
    valid = (np.ones((x.shape[0],), bool) if mask is None
             else np.asarray(mask).reshape(x.shape[0]) > 0)
    if h is None:
      h, w = x.shape[1], x.shape[2]
      req = all_frequencies(h, w, stride) if positions is None else np.asarray(positions, np.int32)
      if req.ndim != 2 or req.shape[1] != 2 or req.shape[0] == 0:
        raise ValueError(f'positions must be a non-empty [F, 2] array of (row, col), got {req.shape}')
      bad = (req[:, 0] < 0) | (req[:, 0] >= h) | (req[:, 1] < 0) | (req[:, 1] >= w)
      if bad.any():
        raise ValueError(f'positions {req[bad].tolist()} invalid: rows in 0..{h - 1}, cols in 0..{w - 1}')
      if use_symmetry:
        eval_pos, inverse = _canonical_positions(req, h, w)
      else:
        eval_pos, inverse = req, np.arange(req.shape[0])
    elif x.shape[1:3] != (h, w):
      raise ValueError(f'all batches must share one image size: got {x.shape[1:3]} after {(h, w)}')
    if count_fn is None:  # perturbed copies keep the batch's sharding (one device: none)
      sharding = x.sharding if len(x.sharding.device_set) > 1 else None
      count_fn = functools.partial(jax.jit(
          lambda f, x, y, key, pos, valid: fourier_error_counts(
              f, x, y, key, pos, norm=norm, chunk_size=int(chunk_size), mask=valid,
              sharding=sharding)), fn)
    c = np.asarray(count_fn(x, y, jax.random.fold_in(rng, i), jnp.asarray(eval_pos),
                            jnp.asarray(valid)))
    counts = c if counts is None else counts + c
    clean_wrong += int(clean_fn(x, y, jnp.asarray(valid)))
    total += int(valid.sum())
  if total == 0:
    raise ValueError('batches yielded no images')
  err = counts[inverse].astype(np.float64) / total
  values = err if metric == 'error' else 1.0 - err
  heat = np.full((h, w), np.nan)
  heat[req[:, 0], req[:, 1]] = values
  return {'map': heat, 'metric': metric, 'clean_error': clean_wrong / total,
          'norm': float(norm), 'num_images': total}
