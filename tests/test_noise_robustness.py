"""Tests for jaxrobust.evaluation.noise_robustness (median minimal L2 eps*)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.evaluation import noise_robustness as NR


def _linear_predict(w, b):
  """Two-class linear model: class 1 iff <w, x> + b > 0."""
  def predict(x):
    f = jnp.sum(x.reshape(x.shape[0], -1) * w.reshape(1, -1), axis=1) + b
    return jnp.stack([jnp.zeros_like(f), f], axis=-1)
  return predict


def _fixed_direction(d):
  return lambda rng, x: jnp.broadcast_to(d, x.shape)


def test_unclipped_eps_equals_distance_to_boundary():
  # x in the middle of [0,1]: no clipping before the boundary is crossed.
  rng = np.random.RandomState(0)
  shape = (4, 2, 2, 1)
  x = jnp.asarray(0.5 + 0.02 * rng.randn(*shape), jnp.float32)
  w = jnp.asarray(rng.randn(2, 2, 1), jnp.float32)
  d = jnp.asarray(rng.randn(2, 2, 1), jnp.float32)
  d_unit = d / jnp.linalg.norm(d)
  wd = float(jnp.sum(w * d_unit))
  # choose b so that every image is class 0 (f < 0) and f grows along d (wd > 0 or flip)
  if wd < 0:
    d_unit, wd = -d_unit, -wd
  wx = np.asarray(jnp.sum((x * w[None]).reshape(4, -1), axis=1))
  b = -float(wx.max()) - 0.05
  y = jnp.zeros((4,), jnp.int32)
  t_star = -(wx + b) / wd  # closed form: f(x + t d) = f(x) + t <w, d>
  assert np.all(t_star < 0.4)  # stays unclipped (each |d_i| t < 0.4 < 0.5 - 0.1)
  eps = NR.minimal_l2_along_noise(
      _linear_predict(w, b), x, y, jax.random.PRNGKey(0), noise=_fixed_direction(d_unit),
      max_eps=2.0, num_coarse=12, num_bisect=24)
  np.testing.assert_allclose(np.asarray(eps), t_star, atol=1e-4)
  # the reported point is on the wrong side of the boundary (upper bracket end)
  assert np.all(np.asarray(eps) >= t_star - 1e-5)


def test_clipping_reduces_applied_norm_closed_form():
  # x0 = 0.9 saturates at t = 0.2 along d = (.5,.5,.5,.5); the model looks only
  # at pixel 1 and flips when x1 + 0.5 t > 0.75, i.e. t* = 0.5, where the applied
  # perturbation is (0.1, .25, .25, .25): eps = sqrt(0.01 + 3 * 0.0625).
  x = jnp.array([[0.9, 0.5, 0.5, 0.5]], jnp.float32).reshape(1, 2, 2, 1)
  w = jnp.array([0.0, 1.0, 0.0, 0.0], jnp.float32)
  d = jnp.full((1, 2, 2, 1), 0.5, jnp.float32)
  predict = _linear_predict(w, -0.75)
  eps = NR.minimal_l2_along_noise(predict, x, jnp.array([0]), jax.random.PRNGKey(0),
                                  noise=_fixed_direction(d), max_eps=4.0, num_bisect=25)
  assert float(eps[0]) == pytest.approx(np.sqrt(0.01 + 3 * 0.0625), abs=1e-4)
  assert float(eps[0]) < 0.5 - 0.05  # strictly less than the unclipped step


def test_never_flipped_is_inf_and_clean_misclassified_is_zero():
  # image 0: the decisive pixel would need to exceed 1 -> clipping prevents the flip
  # image 1: already misclassified -> 0
  # image 2: moving away from the boundary -> inf
  x = jnp.array([[0.9, 0.5, 0.5, 0.5],
                 [0.5, 0.9, 0.5, 0.5],
                 [0.5, 0.5, 0.5, 0.5]], jnp.float32).reshape(3, 2, 2, 1)
  w = jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32)
  predict = _linear_predict(w, -1.05)  # class 1 iff x0 > 1.05: impossible in [0, 1]
  y = jnp.array([0, 1, 0])
  d = jnp.full((1, 2, 2, 1), 0.5, jnp.float32)
  eps = NR.minimal_l2_along_noise(predict, x, y, jax.random.PRNGKey(0),
                                  noise=_fixed_direction(d), max_eps=100.0)
  assert np.isinf(float(eps[0]))
  assert float(eps[1]) == 0.0
  assert np.isinf(float(eps[2]))
  stats = NR.eps_star_statistics(eps)
  assert stats['frac_never_flipped'] == pytest.approx(2 / 3)
  assert stats['frac_misclassified_clean'] == pytest.approx(1 / 3)
  assert np.isinf(stats['eps_star'])  # median over {0, inf, inf} includes the infs


def test_directions_are_unit_norm_and_custom_hook_is_used():
  x = jnp.zeros((3, 4, 4, 3))
  for noise in ('gaussian', 'uniform'):
    d = NR.sample_directions(jax.random.PRNGKey(1), x, noise)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(d).reshape(3, -1), axis=1), 1.0,
                               rtol=1e-5)
  key = jax.random.PRNGKey(1)
  raw = {'uniform': np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), x.shape,
                                                  minval=-1.0, maxval=1.0)),
         'gaussian': np.asarray(jax.random.normal(key, x.shape))}
  for noise, r in raw.items():
    expected = r / np.linalg.norm(r.reshape(3, -1), axis=1)[:, None, None, None]
    np.testing.assert_allclose(np.asarray(NR.sample_directions(key, x, noise)), expected,
                               rtol=1e-5, atol=1e-7)
  # One key, two independent noise types: with a shared key the uniform direction was a
  # monotone function of the Gaussian one (cosine ~0.98 per image).
  big = jnp.zeros((4, 32, 32, 3))
  cosines = np.sum(np.asarray(NR.sample_directions(key, big, 'gaussian')) *
                   np.asarray(NR.sample_directions(key, big, 'uniform')), axis=(1, 2, 3))
  assert np.all(np.abs(cosines) < 0.1), cosines
  calls = []

  def generator(rng, x):
    calls.append(x.shape)
    return 3.0 * jnp.ones_like(x)

  d_c = NR.sample_directions(jax.random.PRNGKey(1), x, generator)
  assert calls == [x.shape]
  np.testing.assert_allclose(np.asarray(d_c), 1 / np.sqrt(48), rtol=1e-6)
  with pytest.raises(ValueError, match="noise 'salt'"):
    NR.sample_directions(jax.random.PRNGKey(1), x, 'salt')
  with pytest.raises(ValueError, match='shape'):
    NR.sample_directions(jax.random.PRNGKey(1), x, lambda r, x: jnp.zeros((1,)))


def _band_predict(w, margin):
  """Class 0 iff |<w, x - 0.5>| < margin: every direction with <w, d> != 0 leaves the band."""
  def predict(x):
    f = jnp.sum((x - 0.5).reshape(x.shape[0], -1) * w.reshape(1, -1), axis=1)
    return jnp.stack([margin - jnp.abs(f), jnp.zeros_like(f)], axis=-1)
  return predict


def test_larger_margin_gives_larger_eps_star_and_jit_matches():
  rng = np.random.RandomState(3)
  n, shape = 16, (8, 8, 1)
  w = jnp.asarray(rng.randn(*shape) / 8.0, jnp.float32)
  x = jnp.asarray(np.clip(0.5 + 0.01 * rng.randn(n, *shape), 0, 1), jnp.float32)
  y = jnp.zeros((n,), jnp.int32)
  batches = [(x[:8], y[:8]), {'image': x[8:], 'label': y[8:]}]
  results = {}
  for margin in (0.05, 0.2):
    results[margin] = NR.median_eps_star(_band_predict(w, margin), batches,
                                         jax.random.PRNGKey(7), noise='gaussian', num_bisect=12)
  small, large = results[0.05], results[0.2]
  assert small['num_images'] == large['num_images'] == n
  assert small['frac_misclassified_clean'] == 0.0
  assert np.all(np.isfinite(small['per_image']))
  # (with the larger margin some directions hit the [0, 1] clipping first: inf)
  # same directions (same rng), larger margin -> every eps larger
  assert np.all(large['per_image'] > small['per_image'])
  assert large['eps_star'] > 2 * small['eps_star']
  # the jitted per-batch search equals the eager one and the dataset-level values
  predict = _band_predict(w, 0.05)
  key = jax.random.fold_in(jax.random.PRNGKey(7), 0)
  eager = NR.minimal_l2_along_noise(predict, x[:8], y[:8], key, num_bisect=12)
  jitted = jax.jit(functools.partial(NR.minimal_l2_along_noise, predict, num_bisect=12))(
      x[:8], y[:8], key)
  np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(eager), small['per_image'][:8], rtol=1e-5)


def test_coarse_grid_and_accuracy_vs_eps():
  g = NR.coarse_grid(10.0, 4, 'geometric', min_eps=0.01)
  np.testing.assert_allclose(g, [0, 0.01, 0.1, 1.0, 10.0], rtol=1e-6)
  np.testing.assert_allclose(NR.coarse_grid(4.0, 4, 'linear'), [0, 1, 2, 3, 4])
  with pytest.raises(ValueError, match='max_eps'):
    NR.coarse_grid(0.0, 4)
  with pytest.raises(ValueError, match="spacing 'log'"):
    NR.coarse_grid(1.0, 4, 'log')
  with pytest.raises(ValueError, match='num_bisect'):
    NR.minimal_l2_along_noise(lambda x: x.reshape(x.shape[0], -1), jnp.zeros((1, 2, 2, 1)),
                              jnp.zeros((1,), jnp.int32), jax.random.PRNGKey(0), num_bisect=-1)
  acc = NR.accuracy_vs_eps([0.0, 1.0, 2.0, np.inf], [0.0, 0.5, 1.0, 5.0])
  np.testing.assert_allclose(acc, [0.75, 0.75, 0.5, 0.25])


def test_padding_mask_drops_padded_examples():
  x = jnp.full((4, 2, 2, 1), 0.5, jnp.float32)
  w = jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32)
  predict = _linear_predict(w, -0.6)  # flips once pixel 0 exceeds 0.6
  y = jnp.array([0, 0, 1, 1])  # the last two are wrong when clean (eps = 0) ...
  batch = {'image': x, 'label': y, 'mask': jnp.array([1, 1, 0, 0])}  # ... but padding
  d = jnp.full((1, 2, 2, 1), 0.5, jnp.float32)
  out = NR.median_eps_star(predict, [batch], jax.random.PRNGKey(0), noise=_fixed_direction(d),
                           max_eps=4.0, num_bisect=20)
  assert out['num_images'] == 2 and out['frac_misclassified_clean'] == 0.0
  assert out['eps_star'] == pytest.approx(0.2, abs=1e-4)  # t* = 0.2 along d, no clipping
