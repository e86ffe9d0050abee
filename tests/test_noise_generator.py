"""Tests for the ANT noise generator and the clipping-aware L2 rescaling."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.models.noise_generator import (NoiseGenerator, add_l2_noise, generate_noise,
                                              rescale_to_l2)


# Jitted once and shared: every rescaling test uses images of SHAPE and per-image eps [4].
SHAPE = (4, 8, 8, 3)
_add = jax.jit(add_l2_noise)
_rescale = jax.jit(rescale_to_l2)


def _objective(d, x, w, eps, a, b):
  """a * <w, x_noisy> + b * ||x_noisy - x||^2."""
  x_noisy = add_l2_noise(x, d, eps)
  return a * jnp.sum(w * x_noisy) + b * jnp.sum(jnp.square(x_noisy - x))


_obj = jax.jit(_objective)
_grad = jax.jit(jax.grad(_objective))


def _eps(value):
  return jnp.full((SHAPE[0],), value, jnp.float32)


def _norms(x, x_noisy):
  return np.sqrt(np.sum(np.square(np.asarray(x_noisy, np.float64) - np.asarray(x, np.float64)),
                        axis=tuple(range(1, x.ndim))))


def _bisect_scale(x, d, eps, iters=200):
  """Independent float64 reference: bisection on the monotone norm of one image."""
  x, d = np.asarray(x, np.float64).ravel(), np.asarray(d, np.float64).ravel()
  norm = lambda s: np.linalg.norm(np.clip(x + s * d, 0, 1) - x)
  lo, hi = 0.0, 1.0
  while norm(hi) < eps and hi < 1e12:
    hi *= 2
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if norm(mid) < eps else (lo, mid)
  return hi


def _images(kind, key, shape=SHAPE):
  u = jax.random.uniform(key, shape)
  if kind == 'random':
    return u
  if kind == 'near0':
    return 0.02 * u
  if kind == 'near1':
    return 1.0 - 0.02 * u
  if kind == 'binary':  # exactly on the bounds: half the pixels have no room in one direction
    return jnp.round(u)
  raise AssertionError(kind)


@pytest.mark.parametrize('kind', ['random', 'near0', 'near1', 'binary'])
@pytest.mark.parametrize('eps', [0.05, 0.5, 2.0, 4.0])
def test_rescaled_perturbation_has_norm_eps_after_clipping(kind, eps):
  x = _images(kind, jax.random.key(0))
  d = jax.random.normal(jax.random.key(1), x.shape)
  x_noisy = _add(x, d, _eps(eps))
  max_norm = _norms(x, jnp.where(d > 0, 1.0, 0.0) * (d != 0) + jnp.where(d == 0, x, 0.0))
  assert np.all((np.asarray(x_noisy) >= 0) & (np.asarray(x_noisy) <= 1))
  expected = np.minimum(eps, max_norm)
  np.testing.assert_allclose(_norms(x, x_noisy), expected, atol=1e-4)
  # Near the bounds most of the target norm can only be reached through clipping: check the
  # test really exercises it (a non-clipping-aware rescale would miss eps by far).
  if kind in ('near0', 'near1') and eps >= 0.5:
    s = _rescale(x, d, _eps(eps))
    naive = np.linalg.norm(np.asarray(s)[:, None] * np.asarray(d).reshape(4, -1), axis=1)
    assert np.all(naive > 1.2 * eps)


def test_scale_matches_float64_bisection():
  x = _images('random', jax.random.key(2))
  d = jax.random.normal(jax.random.key(3), x.shape) * jnp.array([1.0, 0.01, 50.0, 3.0])[
      :, None, None, None]
  eps = jnp.array([0.3, 1.0, 3.0, 6.0])
  s = np.asarray(_rescale(x, d, eps))
  for i in range(4):
    np.testing.assert_allclose(s[i], _bisect_scale(x[i], d[i], float(eps[i])), rtol=1e-4)


def test_per_image_eps_and_zero_delta_pixels():
  x = _images('random', jax.random.key(4))
  d = jax.random.normal(jax.random.key(5), x.shape)
  d = d.at[:, :2].set(0.0)  # pixels that never move
  eps = jnp.array([0.4, 1.2, 0.05, 2.5])
  x_noisy = _add(x, d, eps)
  np.testing.assert_allclose(_norms(x, x_noisy), np.asarray(eps), atol=1e-4)
  np.testing.assert_array_equal(np.asarray(x_noisy[:, :2]), np.asarray(x[:, :2]))


def test_all_saturated_returns_smallest_saturating_scale():
  x = _images('random', jax.random.key(6))
  d = jax.random.normal(jax.random.key(7), x.shape)
  bound = jnp.where(d > 0, 1.0, 0.0)
  max_norm = _norms(x, bound)
  s = _rescale(x, d, _eps(1e3))
  x_noisy = jnp.clip(x + s[:, None, None, None] * d, 0, 1)
  # Every pixel sits on the bound its delta points at, so the norm is the maximal one...
  np.testing.assert_allclose(np.asarray(x_noisy), np.asarray(bound), atol=1e-6)
  np.testing.assert_allclose(_norms(x, x_noisy), max_norm, rtol=1e-5)
  # ...and s is the smallest such scale: the slowest pixel reaches its bound exactly at s.
  t = np.where(np.asarray(d) > 0, 1 - np.asarray(x), np.asarray(x)) / np.abs(np.asarray(d))
  np.testing.assert_allclose(np.asarray(s), t.reshape(4, -1).max(1), rtol=1e-6)
  # Exactly the maximal norm is reached exactly too.
  x_max = _add(x, d, jnp.asarray(max_norm, jnp.float32))
  np.testing.assert_allclose(_norms(x, x_max), max_norm, atol=1e-4)


def test_all_zero_delta_gives_zero_scale_and_finite_gradient():
  x = _images('random', jax.random.key(8))
  d = jnp.zeros_like(x)
  np.testing.assert_array_equal(np.asarray(_rescale(x, d, _eps(1.0))), 0.0)
  g = _grad(d, x, jnp.ones_like(x), _eps(1.0), 1.0, 0.0)
  assert np.all(np.isfinite(np.asarray(g)))


def test_gradients_are_finite_and_correct():
  x = _images('near1', jax.random.key(9))
  d = jax.random.normal(jax.random.key(10), x.shape)
  w = jax.random.normal(jax.random.key(11), x.shape)
  eps = _eps(1.5)
  g = _grad(d, x, w, eps, 1.0, 0.0)
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0
  # Directional derivative vs central finite differences.
  v = jax.random.normal(jax.random.key(12), x.shape)
  h = 1e-3
  fd = (_obj(d + h * v, x, w, eps, 1.0, 0.0) - _obj(d - h * v, x, w, eps, 1.0, 0.0)) / (2 * h)
  np.testing.assert_allclose(float(jnp.vdot(g, v)), float(fd), rtol=2e-2, atol=2e-3)
  # The norm is constant (= eps) in delta, so its gradient vanishes; the perturbation is
  # invariant to rescaling delta, so the gradient is orthogonal to delta.
  gn = _grad(d, x, w, eps, 0.0, 1.0)
  assert np.abs(np.asarray(gn)).max() < 1e-3
  assert abs(float(jnp.vdot(g, d))) < 1e-3 * float(jnp.linalg.norm(g) * jnp.linalg.norm(d))


def test_rescale_rejects_bad_input():
  x = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match='eps'):
    rescale_to_l2(x, x, 0.0)
  with pytest.raises(ValueError, match='same shape'):
    rescale_to_l2(x, jnp.zeros((1, 2, 2, 3)), 1.0)


@pytest.mark.parametrize('k3', [None, 1])
def test_generator_at_init_outputs_its_gaussian_input(k3):
  gen = NoiseGenerator(kernel_3x3_layer=k3)
  z = gen.sample_latent(jax.random.key(0), (8, 16, 16, 3))
  params = gen.init(jax.random.key(1), z)['params']
  out = gen.apply({'params': params}, z)
  assert out.shape == (8, 16, 16, 3)
  zc = z[:, gen.halo:16 + gen.halo, gen.halo:16 + gen.halo]
  out, zc = np.asarray(out).ravel(), np.asarray(zc).ravel()
  assert abs(out.mean()) < 0.03 and abs(out.std() - 1.0) < 0.03
  assert np.corrcoef(out, zc)[0, 1] > 0.9999
  assert np.abs(out - zc).max() < 1e-3


def test_architecture_and_3x3_variant():
  z = jnp.zeros((1, 10, 10, 3))
  p1 = NoiseGenerator().init(jax.random.key(0), z[:, 1:-1, 1:-1])['params']
  p3 = NoiseGenerator(kernel_3x3_layer=1).init(jax.random.key(0), z)['params']
  shapes1 = {k: v['kernel'].shape for k, v in p1.items()}
  shapes3 = {k: v['kernel'].shape for k, v in p3.items()}
  assert shapes1 == {'conv_0': (1, 1, 3, 20), 'conv_1': (1, 1, 20, 20),
                     'conv_2': (1, 1, 20, 20), 'conv_3': (1, 1, 20, 3)}
  assert [k for k, s in shapes3.items() if s[:2] == (3, 3)] == ['conv_1']
  assert all(s[:2] == (1, 1) for k, s in shapes3.items() if k != 'conv_1')
  # Near-zero initialisation: weights ~ N(0, 0.01^2), zero biases.
  assert float(jnp.std(p1['conv_1']['kernel'])) < 0.02
  assert all(float(jnp.abs(v['bias']).max()) == 0 for v in p1.values())
  with pytest.raises(ValueError, match='kernel_3x3_layer'):
    NoiseGenerator(kernel_3x3_layer=4)


@pytest.mark.parametrize('k3,reach', [(None, 0), (1, 1), (0, 1)])
def test_spatial_dependence_matches_kernel(k3, reach):
  """1x1: output pixel depends on its own input pixel only; 3x3: on its 3x3 neighbourhood."""
  gen = NoiseGenerator(kernel_3x3_layer=k3, init_stddev=0.5)  # large weights: visible effect
  z = gen.sample_latent(jax.random.key(0), (1, 9, 9, 3))
  params = gen.init(jax.random.key(1), z)
  hal = gen.halo
  # Jacobian of all outputs w.r.t. the input pixel at the centre of the output grid.
  jac = jax.jacobian(lambda zz: gen.apply(params, zz))(z)[0, :, :, :, 0, 4 + hal, 4 + hal, :]
  dep = np.abs(np.asarray(jac)).sum(axis=(2, 3)) > 0
  expected = np.zeros((9, 9), bool)
  expected[4 - reach:5 + reach, 4 - reach:5 + reach] = True
  np.testing.assert_array_equal(dep, expected)


def test_generate_noise_norm_and_gradients_reach_every_layer():
  gen = NoiseGenerator(kernel_3x3_layer=1)
  x = _images('random', jax.random.key(2), (4, 8, 8, 3))
  params = gen.init(jax.random.key(3), gen.sample_latent(jax.random.key(0), x.shape))['params']
  eps = 1.0
  x_noisy = jax.jit(lambda p, r, x: generate_noise(p, r, x, eps, generator=gen))(
      params, jax.random.key(4), x)
  np.testing.assert_allclose(_norms(x, x_noisy), eps, atol=1e-4)
  other = generate_noise({'params': params}, jax.random.key(5), x, eps, generator=gen)
  assert not np.allclose(np.asarray(other), np.asarray(x_noisy))
  # The generator is trained through the rescaling: a loss on x_noisy reaches all parameters.
  w = jax.random.normal(jax.random.key(6), x.shape)
  grads = jax.grad(lambda p: jnp.sum(w * generate_noise(p, jax.random.key(4), x, eps,
                                                        generator=gen)))(params)
  for leaf in jax.tree.leaves(grads):
    assert np.all(np.isfinite(np.asarray(leaf))) and np.abs(np.asarray(leaf)).max() > 0
  # Parameters of the 3x3 generator cannot silently run through the default 1x1 module.
  with pytest.raises(flax.errors.ScopeParamShapeError, match='shape'):
    generate_noise(params, jax.random.key(4), x, eps)
