"""Small pure building blocks of gradient attacks: norms, random starts, steps, projections.

Every function here works on a batch of images ``x`` of shape [B, H, W, C] (any shape with a
leading batch axis works) with pixels in [0, 1], and treats each example independently: norms, step
sizes and projections are per example. Per-example scalars (e.g. APGD's step sizes) are arrays of
shape [B] and are broadcast against the image axes with :func:`per_example`.

The attacks in :mod:`jaxrobust.attacks.pgd_family` and :mod:`jaxrobust.attacks.autopgd` are
compositions of these parts, in the style of DeepMind's jax adversarial-robustness code: ``init``
(random start), ``step`` (ascent direction), ``project`` (back onto the feasible set) and a loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NORMS = ('linf', 'l2')
INIT_MODES = ('uniform', 'normal', 'sphere')

# Guards divisions by a gradient / perturbation norm that can be exactly zero (e.g. a saturated
# softmax gives a zero gradient); AutoAttack uses the same constant.
_TINY = 1e-12


def check_norm(norm: str) -> str:
  """Returns ``norm`` if it is in :data:`NORMS`, else raises ValueError naming the allowed ones."""
  if norm not in NORMS:
    raise ValueError(f'Unknown norm {norm!r}; allowed values: {NORMS}.')
  return norm


def check_images(x) -> None:
  """Refuses images an attack can not keep inside its ball: anything but float32 or wider.

  In bfloat16 or float16 ``x +- eps`` rounds to a grid coarser than eps itself (bfloat16 near 1
  steps by 1/128), so a projected perturbation could be larger than eps; integer images are
  not in [0, 1].
  """
  dtype = jnp.dtype(x.dtype)
  if not jnp.issubdtype(dtype, jnp.floating) or jnp.finfo(dtype).bits < 32:
    raise ValueError(f'Attacks take float32 images in [0, 1]; got {dtype} (in a narrower type '
                     'x +- eps rounds outside the eps-ball). Cast them with '
                     'x.astype(jnp.float32); the model itself may compute in any precision.')


def per_example(v, x: jax.Array) -> jax.Array:
  """Broadcasts a scalar or a per-example vector ``v`` of shape [B] against ``x`` of shape [B, ...].

  Args:
    v: a Python/array scalar, or an array of shape [B].
    x: the batch the value applies to.

  Returns:
    ``v`` unchanged if it is a scalar, else ``v`` reshaped to [B, 1, ..., 1].
  """
  v = jnp.asarray(v, dtype=x.dtype)
  if v.ndim == 0:
    return v
  return v.reshape(v.shape[:1] + (1,) * (x.ndim - 1))


def l2_norm(v: jax.Array) -> jax.Array:
  """Per-example Euclidean norm ``||v_b||_2`` over all non-batch axes; shape [B]."""
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))


def linf_norm(v: jax.Array) -> jax.Array:
  """Per-example max-norm ``||v_b||_inf`` over all non-batch axes; shape [B]."""
  return jnp.max(jnp.abs(v.reshape(v.shape[0], -1)), axis=-1)


def perturbation_norm(x_adv: jax.Array, x: jax.Array, norm: str) -> jax.Array:
  """Per-example size ``||x_adv - x||_p`` of a perturbation, p given by ``norm``; shape [B]."""
  check_norm(norm)
  delta = x_adv - x
  return linf_norm(delta) if norm == 'linf' else l2_norm(delta)


# ----------------------------------------------------------------------------------------------
# init: random starts inside the ball.
# ----------------------------------------------------------------------------------------------


def init_uniform_linf(rng: jax.Array, x: jax.Array, eps) -> jax.Array:
  """Uniform random start in the L-inf ball: ``x + U(-eps, eps)`` per pixel (Madry et al. 2018)."""
  return x + jax.random.uniform(rng, x.shape, x.dtype, minval=-1.0, maxval=1.0) * eps


def init_uniform_l2(rng: jax.Array, x: jax.Array, eps) -> jax.Array:
  """Uniform random start in the L2 ball of radius eps.

  A point uniform in the d-dimensional ball is ``eps * u^(1/d) * z / ||z||`` with ``z ~ N(0, I_d)``
  (uniform direction) and ``u ~ U(0, 1)`` (radius with density proportional to r^(d-1)).
  """
  rng_dir, rng_rad = jax.random.split(rng)
  z = jax.random.normal(rng_dir, x.shape, x.dtype)
  d = int(np.prod(x.shape[1:]))
  u = jax.random.uniform(rng_rad, (x.shape[0],), x.dtype)
  radius = eps * u ** (1.0 / d)
  return x + per_example(radius / jnp.maximum(l2_norm(z), _TINY), x) * z


def init_sphere_l2(rng: jax.Array, x: jax.Array, eps) -> jax.Array:
  """Random start on the L2 sphere of radius eps: ``x + eps * z / ||z||``, ``z ~ N(0, I)``.

  This is AutoAttack's APGD start for the L2 threat model.
  """
  z = jax.random.normal(rng, x.shape, x.dtype)
  return x + per_example(eps / jnp.maximum(l2_norm(z), _TINY), x) * z


def init_normal(rng: jax.Array, x: jax.Array, std) -> jax.Array:
  """Small Gaussian start ``x + std * N(0, I)`` (TRADES uses std = 0.001)."""
  return x + std * jax.random.normal(rng, x.shape, x.dtype)


def init(rng: jax.Array, x: jax.Array, eps, norm: str, mode: str = 'uniform',
         std=1e-3) -> jax.Array:
  """Random start of an attack (not yet projected or clipped).

  Args:
    rng: PRNG key.
    x: clean images [B, ...].
    eps: radius of the ball (scalar).
    norm: 'linf' or 'l2'.
    mode: 'uniform' (uniform in the ball of ``norm``), 'sphere' (on the sphere: for 'l2' the
      AutoAttack start; for 'linf' the uniform start rescaled so that each example's largest
      coordinate is exactly eps, as AutoAttack does) or 'normal' (``x + std * N(0, I)``, TRADES).
    std: standard deviation of the 'normal' start.

  Returns:
    The starting point, same shape and dtype as ``x``; callers project/clip it.
  """
  check_norm(norm)
  if mode not in INIT_MODES:
    raise ValueError(f'Unknown random start {mode!r}; allowed values: {INIT_MODES} '
                     '(or True/False).')
  if mode == 'normal':
    return init_normal(rng, x, std)
  if norm == 'l2':
    return init_sphere_l2(rng, x, eps) if mode == 'sphere' else init_uniform_l2(rng, x, eps)
  if mode == 'sphere':
    t = jax.random.uniform(rng, x.shape, x.dtype, minval=-1.0, maxval=1.0)
    return x + per_example(eps / jnp.maximum(linf_norm(t), _TINY), x) * t
  return init_uniform_linf(rng, x, eps)


# ----------------------------------------------------------------------------------------------
# step: steepest-ascent direction of the norm.
# ----------------------------------------------------------------------------------------------


def ascent_direction(grad: jax.Array, norm: str) -> jax.Array:
  """Steepest-ascent direction of unit ``norm`` for a gradient.

  For L-inf this is ``sign(grad)`` (argmax of <g, d> over ||d||_inf <= 1); for L2 it is
  ``grad / ||grad||_2`` (zero where the gradient is zero).
  """
  check_norm(norm)
  if norm == 'linf':
    return jnp.sign(grad)
  return grad * per_example(1.0 / jnp.maximum(l2_norm(grad), _TINY), grad)


def step(x_adv: jax.Array, grad: jax.Array, step_size, norm: str) -> jax.Array:
  """One ascent step ``x_adv + step_size * ascent_direction(grad)``.

  Args:
    x_adv: current iterate [B, ...].
    grad: gradient of the (summed) per-example loss at ``x_adv``.
    step_size: scalar or per-example [B] step size.
    norm: 'linf' (signed gradient, FGSM/PGD) or 'l2' (normalised gradient).
  """
  return x_adv + per_example(step_size, x_adv) * ascent_direction(grad, norm)


# ----------------------------------------------------------------------------------------------
# project: back onto the eps-ball intersected with [0, 1].
# ----------------------------------------------------------------------------------------------


def clip_to_box(x_adv: jax.Array) -> jax.Array:
  """Clips pixels to the valid image range [0, 1]."""
  return jnp.clip(x_adv, 0.0, 1.0)


def project_linf(x_adv: jax.Array, x: jax.Array, eps) -> jax.Array:
  """Euclidean projection onto ``{z : ||z - x||_inf <= eps} ∩ [0, 1]^d``.

  Both sets are boxes, so the projection is the coordinate-wise clip to their intersection
  ``[max(x - eps, 0), min(x + eps, 1)]`` (non-empty because x is in [0, 1]).
  """
  eps = per_example(eps, x)
  return clip_to_box(jnp.clip(x_adv, x - eps, x + eps))


def project_l2(x_adv: jax.Array, x: jax.Array, eps) -> jax.Array:
  """Feasible point of ``{z : ||z - x||_2 <= eps} ∩ [0, 1]^d`` close to ``x_adv``.

  Radial projection onto the L2 ball, ``x + delta * min(1, eps / ||delta||)``, followed by the clip
  to [0, 1]. Since x is in [0, 1] the clip only shrinks every coordinate of the perturbation towards
  0, so the result stays in the ball. (The exact Euclidean projection onto the intersection has no
  closed form; this two-step version is what Madry et al. and AutoAttack use.)
  """
  delta = x_adv - x
  norm = l2_norm(delta)
  factor = jnp.minimum(1.0, per_example(eps, norm) / jnp.maximum(norm, _TINY))
  return clip_to_box(x + delta * per_example(factor, x))


def project(x_adv: jax.Array, x: jax.Array, eps, norm: str, ball: bool = True) -> jax.Array:
  """Projects onto the eps-ball of ``norm`` around x intersected with [0, 1].

  Args:
    x_adv: point to project [B, ...].
    x: centre of the ball (clean images).
    eps: radius (scalar, may be traced, or per-example [B] when called directly; the attacks
      built from these parts validate a scalar).
    norm: 'linf' or 'l2'.
    ball: if False only clip to [0, 1] (the unprojected "GD" attacker of AdvProp's Table 7).

  Returns:
    The projected point, same shape as ``x_adv``.
  """
  check_norm(norm)
  if not ball:
    return clip_to_box(x_adv)
  if norm == 'linf':
    return project_linf(x_adv, x, eps)
  return project_l2(x_adv, x, eps)
