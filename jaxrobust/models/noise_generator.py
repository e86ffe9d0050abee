"""Adversarial noise generator and clipping-aware L2 rescaling (ANT, Rusak et al. 2020).

The generator ``g_phi`` maps Gaussian noise ``z ~ N(0, 1)`` to noise ``delta = g_phi(z)`` of the
image's shape (paper ``003``, section 3.2 "Learning adversarial noise"). Only 1x1 convolutions
are used, so every output pixel depends on the input noise at that pixel alone and the learned
distribution factorises over pixels, ``p_phi(delta) = prod_n p_phi(delta_n)``; the ``ANT 3x3``
variant replaces one layer's kernel by 3x3, allowing correlations over 3x3 pixel patches.

The generator's output is then projected onto the L2 sphere of radius ``eps`` *after* clipping:
a scalar ``s >= 0`` per image is chosen so that ``||clip(x + s * delta, 0, 1) - x||_2 = eps``
exactly (the paper's footnote 3, after Rauber & Bethge, "Fast differentiable clipping-aware
normalization and rescaling", 2020). :func:`rescale_to_l2` solves this in closed form.

Architecture (as in the authors' public code, ``bethgelab/game-of-noise``,
``Networks/generators.py``): four convolutions ``C -> 20 -> 20 -> 20 -> C`` with ReLU between
them, a residual connection from the input noise to the output, weights drawn from
``N(0, 0.01^2)`` and zero biases so the generator starts as (almost) the identity on Gaussian
noise. Their 3x3 variant puts the 3x3 kernel in the second layer (index 1) and uses no padding:
the input noise is sampled 1 pixel larger on every side and the residual is its centre crop, so
every output pixel sees a full 3x3 patch of genuine Gaussian noise (zero padding would make the
border pixels' noise distribution different from the interior's). We do the same; see
:meth:`NoiseGenerator.latent_shape`.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrobust.models.layers import Conv

# Hidden width of the public reference generator.
DEFAULT_FEATURES = 20
# Standard deviation of the near-zero weight initialisation of the public reference.
DEFAULT_INIT_STDDEV = 0.01


class NoiseGenerator(nn.Module):
  """Residual stack of convolutions mapping N(0,1) noise to noise (ANT's ``g_phi``).

  ``delta = z_c + conv_L(relu(... relu(conv_1(z))))`` where ``z_c`` is ``z`` cropped by the
  halo (see :attr:`halo`). With the near-zero initialisation the residual dominates, so at
  initialisation ``delta ~= z_c``, i.e. i.i.d. standard Gaussian noise.

  Attributes:
    features: hidden width (20 in the reference).
    num_layers: number of convolutions (4 in the paper).
    kernel_3x3_layer: index (0-based) of the layer whose kernel is 3x3 (the ``ANT 3x3``
      generator; the reference uses 1, the second layer), or None for ``ANT 1x1`` (all 1x1).
    init_stddev: standard deviation of the Gaussian weight initialisation.
  """
  features: int = DEFAULT_FEATURES
  num_layers: int = 4
  kernel_3x3_layer: Optional[int] = None
  init_stddev: float = DEFAULT_INIT_STDDEV

  def __post_init__(self):
    if self.num_layers < 2:
      raise ValueError(f'num_layers={self.num_layers!r} must be >= 2 (input and output conv).')
    if self.kernel_3x3_layer is not None and not (
        isinstance(self.kernel_3x3_layer, int) and 0 <= self.kernel_3x3_layer < self.num_layers):
      raise ValueError(f'kernel_3x3_layer={self.kernel_3x3_layer!r}; allowed: None or an int in '
                       f'[0, {self.num_layers - 1}].')
    if self.features < 1:
      raise ValueError(f'features={self.features!r} must be >= 1.')
    super().__post_init__()

  @property
  def halo(self) -> int:
    """Pixels lost on each side by the un-padded 3x3 convolution (1, or 0 when all are 1x1)."""
    return 0 if self.kernel_3x3_layer is None else 1

  def latent_shape(self, image_shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape of the input noise ``z`` that yields noise of ``image_shape`` ([..., H, W, C])."""
    *lead, h, w, c = image_shape
    return (*lead, h + 2 * self.halo, w + 2 * self.halo, c)

  def sample_latent(self, rng, image_shape: Sequence[int]) -> jax.Array:
    """Draws ``z ~ N(0, 1)`` of :meth:`latent_shape` ``(image_shape)``."""
    return jax.random.normal(rng, self.latent_shape(image_shape), jnp.float32)

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    """Maps latent noise to image noise.

    Args:
      z: standard normal noise, [B, H + 2*halo, W + 2*halo, C].

    Returns:
      Noise ``delta`` of shape [B, H, W, C] (un-normalised; see :func:`rescale_to_l2`).
    """
    channels = z.shape[-1]
    init = nn.initializers.normal(stddev=self.init_stddev)
    h = z
    for i in range(self.num_layers):
      k = 3 if i == self.kernel_3x3_layer else 1
      out = channels if i == self.num_layers - 1 else self.features
      h = Conv(out, (k, k), padding='VALID', kernel_init=init,
                  bias_init=nn.initializers.zeros, name=f'conv_{i}')(h)
      if i < self.num_layers - 1:
        h = nn.relu(h)
    hal = self.halo
    residual = z[..., hal:z.shape[-3] - hal, hal:z.shape[-2] - hal, :] if hal else z
    return h + residual


def _scale_one(x: jax.Array, delta: jax.Array, eps: jax.Array) -> jax.Array:
  """Clipping-aware L2 scale for one image (flattened ``x``, ``delta``; scalar ``eps``).

  With ``room_i`` the distance from ``x_i`` to the bound that ``delta_i`` points at, the applied
  perturbation's squared norm is

    ``f(s) = sum_i min(s |delta_i|, room_i)^2
           = sum_{i: t_i <= s} room_i^2 + s^2 sum_{i: t_i > s} delta_i^2``
  with breakpoints ``t_i = room_i / |delta_i|``,

  which is linear in ``s^2`` between consecutive sorted breakpoints ``t_(k)`` and non-decreasing.
  With cumulative sums over the sorted breakpoints we evaluate ``f`` at every breakpoint, find
  the last breakpoint ``k`` with ``f(t_(k)) <= eps^2`` and solve
  ``eps^2 = S_k + s^2 D_k`` (``S_k`` saturated mass, ``D_k`` free mass) for ``s``.
  """
  x = jnp.clip(x, 0.0, 1.0)
  d2 = jnp.square(delta)
  # Pixels whose delta is 0 (or whose square underflows) never move: they contribute nothing to
  # either sum, and their breakpoint is +inf.
  moving = d2 > 0
  room = jnp.where(delta > 0, 1.0 - x, x)
  room = jnp.where(moving, room, 0.0)
  abs_d = jnp.where(moving, jnp.abs(delta), 1.0)  # safe divisor: no inf/nan in any gradient
  t = jnp.where(moving, room / abs_d, jnp.inf)
  d2 = jnp.where(moving, d2, 0.0)

  order = jnp.argsort(t)
  t_s, d2_s, r2_s = t[order], d2[order], jnp.square(room)[order]
  finite = jnp.isfinite(t_s)
  saturated_mass = jnp.cumsum(r2_s)                                  # sum_{j <= k} room_j^2
  # sum_{j > k} delta_j^2 as a reversed cumulative sum (exactly 0 past the last moving pixel;
  # total - cumsum would cancel catastrophically when few pixels remain free).
  free_mass = jnp.concatenate([jnp.cumsum(d2_s[::-1])[::-1][1:], jnp.zeros((1,), d2_s.dtype)])
  t_fin = jnp.where(finite, t_s, 0.0)
  f_at_breaks = jnp.where(finite, saturated_mass + jnp.square(t_fin) * free_mass, jnp.inf)

  eps2 = jnp.square(eps)
  n_sat = jnp.sum(f_at_breaks <= eps2)       # pixels saturated at the solution
  n_moving = jnp.sum(moving)
  # eps^2 >= the largest reachable squared norm: every moving pixel is clipped at its bound.
  all_saturated = n_sat >= n_moving

  k = jnp.maximum(n_sat - 1, 0)
  sat = jnp.where(n_sat > 0, saturated_mass[k], 0.0)
  free = jnp.where(n_sat > 0, free_mass[k], jnp.sum(d2))
  # Double-where: the unselected branch must not produce inf/nan gradients.
  free_safe = jnp.where(all_saturated | (free <= 0), 1.0, free)
  rest = jnp.where(all_saturated, 1.0, jnp.maximum(eps2 - sat, 1e-30))
  s_free = jnp.sqrt(rest / free_safe)
  s_saturating = jnp.max(t_fin, initial=0.0)
  return jnp.where(all_saturated, s_saturating, s_free)


def _check_eps(eps) -> None:
  if isinstance(eps, (int, float)) and not eps > 0:
    raise ValueError(f'eps={eps!r} must be > 0 (an L2 norm in [0, 1] pixel units).')


def rescale_to_l2(x: jax.Array, delta: jax.Array, eps) -> jax.Array:
  """Per-image scale ``s >= 0`` with ``||clip(x + s * delta, 0, 1) - x||_2 = eps`` exactly.

  Exact closed-form inversion of the piecewise-linear function ``s^2 -> ||clip(x + s delta) -
  x||^2`` (see ``_scale_one``): one sort and two cumulative sums per image, no iteration.
  Jittable, vectorised over the batch and differentiable w.r.t. ``delta`` (and ``x``) wherever
  the set of clipped pixels is locally constant, which is almost everywhere.

  If ``eps`` exceeds the largest achievable norm (every pixel with ``delta_i != 0`` pushed to
  its bound), the returned scale is the smallest one that saturates every such pixel, so the
  applied perturbation has the maximal reachable norm, which is then *smaller* than ``eps``. For an
  all-zero ``delta`` the scale is 0.

  Args:
    x: images in [0, 1], [B, ...].
    delta: perturbation directions, same shape as ``x``.
    eps: target L2 norm in [0, 1] pixel units; a scalar or one value per image ([B]).

  Returns:
    Scales ``s`` of shape [B].
  """
  _check_eps(eps)
  if x.shape != delta.shape:
    raise ValueError(f'x and delta must have the same shape, got {x.shape} and {delta.shape}.')
  b = x.shape[0]
  eps = jnp.broadcast_to(jnp.asarray(eps, jnp.float32), (b,))
  return jax.vmap(_scale_one)(x.reshape(b, -1).astype(jnp.float32),
                              delta.reshape(b, -1).astype(jnp.float32), eps)


def add_l2_noise(x: jax.Array, delta: jax.Array, eps) -> jax.Array:
  """``clip(x + s * delta, 0, 1)`` with ``s`` from :func:`rescale_to_l2`: noise of L2 norm eps."""
  s = rescale_to_l2(x, delta, eps)
  s = s.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.clip(x + s * delta, 0.0, 1.0)


def generate_noise(gen_params: Any, rng: jax.Array, x: jax.Array, eps, *,
                   generator: Optional[NoiseGenerator] = None) -> jax.Array:
  """Noisy images from the generator: ``clip(x + s * g_phi(z), 0, 1)``, ``z ~ N(0, 1)``.

  Args:
    gen_params: the generator's parameters (its ``'params'`` collection, or a variables dict
      ``{'params': ...}``).
    rng: key for the latent noise ``z``.
    x: clean images in [0, 1], [B, H, W, C].
    eps: L2 norm of the applied (post-clipping) perturbation, scalar or [B].
    generator: the generator module; defaults to ``NoiseGenerator()`` (ANT 1x1). Parameters of a
      different architecture (e.g. 3x3) fail with a shape error rather than silently mis-run.

  Returns:
    Noisy images in [0, 1], shape of ``x``; per image ``||x_noisy - x||_2 = eps`` (or the largest
    reachable norm if smaller, see :func:`rescale_to_l2`).
  """
  generator = NoiseGenerator() if generator is None else generator
  variables = gen_params if set(gen_params) == {'params'} else {'params': gen_params}
  z = generator.sample_latent(rng, x.shape)
  delta = generator.apply(variables, z)
  return add_l2_noise(x, delta, eps)
