"""Tests for jaxrobust.evaluation.frequency (Fourier heat maps)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust.evaluation import frequency as F


@pytest.mark.parametrize('h,w', [(8, 8), (6, 5)])
def test_basis_is_real_unit_norm_and_supported_on_one_conjugate_pair(h, w):
  ks, ls = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  bases = np.asarray(jax.jit(jax.vmap(lambda k, l: F.fourier_basis(k, l, h, w)))(
      ks.ravel(), ls.ravel()), np.float64).reshape(h, w, h, w)
  for k in range(h):
    for l in range(w):
      u = bases[k, l]
      assert u.shape == (h, w) and np.isrealobj(u)
      assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-5)
      spec = np.abs(np.fft.fft2(u))
      support = {tuple(p) for p in np.argwhere(spec > 1e-4)}
      assert support <= {(k, l), ((-k) % h, (-l) % w)}, (k, l, support)
      assert (k, l) in support


def test_basis_matches_reference_construction():
  # sqrt(HW) * Re(IDFT(c d_{k,l} + conj(c) d_{-k,-l})), c = (1 + 1j) / 2
  h, w, k, l = 8, 8, 1, 3
  freq = np.zeros((h, w), complex)
  freq[k, l] = 0.5 + 0.5j
  freq[(-k) % h, (-l) % w] = 0.5 - 0.5j
  ref = np.sqrt(h * w) * np.real(np.fft.ifft2(freq))
  np.testing.assert_allclose(np.asarray(F.fourier_basis(k, l, h, w)), ref, atol=1e-6)


def test_basis_jittable_with_traced_frequency():
  f = jax.jit(lambda k, l: F.fourier_basis(k, l, 8, 8))
  np.testing.assert_allclose(f(2, 5), F.fourier_basis(2, 5, 8, 8), atol=1e-6)


def test_frequency_positions():
  # shifted map position (h//2, w//2) is DC
  assert F.shifted_to_frequency(4, 4, 8, 8) == (0, 0)
  assert F.shifted_to_frequency(0, 7, 8, 8) == (-4, 3)
  pos = F.all_frequencies(8, 8, stride=2)
  assert [4, 4] in pos.tolist() and len(pos) == 16
  assert len(F.all_frequencies(5, 7)) == 35
  with pytest.raises(ValueError, match='stride'):
    F.all_frequencies(8, 8, stride=0)


def _mean_classifier(x):
  """Class 1 iff the image mean exceeds 0.5: blind to every non-DC frequency."""
  m = jnp.mean(x, axis=(1, 2, 3))
  return jnp.stack([0.5 - m, m - 0.5], axis=-1)


def _mean_images(n, h, w, c, seed=0):
  rng = np.random.RandomState(seed)
  # per-image mean 0.5 +- (0.03 .. 0.08), texture small enough that v = 1 never clips
  offsets = rng.uniform(0.03, 0.08, n) * rng.choice([-1, 1], n)
  x = 0.5 + offsets[:, None, None, None] + 0.02 * rng.randn(n, h, w, c)
  x = x - x.mean(axis=(1, 2, 3), keepdims=True) + 0.5 + offsets[:, None, None, None]
  y = (offsets > 0).astype(np.int32)
  return x.astype(np.float32), y


def test_mean_classifier_map_is_perfect_except_dc():
  h, w, c, n = 8, 8, 1, 16
  x, y = _mean_images(n, h, w, c)
  out = F.fourier_heat_map(_mean_classifier, [(x[:8], y[:8]), (x[8:], y[8:])],
                           jax.random.PRNGKey(0), norm=1.0, chunk_size=16)
  heat = out['map']
  assert heat.shape == (h, w)
  assert out['clean_error'] == 0.0 and out['num_images'] == n
  dc = (h // 2, w // 2)
  # a DC perturbation of norm 1 shifts the mean by +-1/8 (random sign), more
  # than every offset: the images whose sign points across 0.5 (about half) flip
  assert 0.2 < heat[dc] < 0.8
  others = np.delete(heat.ravel(), dc[0] * w + dc[1])
  np.testing.assert_array_equal(others, 0.0)
  acc = F.fourier_heat_map(_mean_classifier, [(x[:8], y[:8]), (x[8:], y[8:])],
                           jax.random.PRNGKey(0), norm=1.0, metric='accuracy')['map']
  np.testing.assert_allclose(acc, 1.0 - heat)  # same keys -> same signs


def test_single_frequency_detector_lights_up_its_conjugate_pair_only():
  # A model that reads only the projection on one basis image: the heat map must
  # peak exactly at that frequency (and its mirror) in the fftshift-ed layout.
  h, w, c = 8, 8, 1
  k0, l0 = 1, 2
  u = F.fourier_basis(k0, l0, h, w)

  def detector(x):
    p = jnp.sum((x[..., 0] - 0.5) * u[None], axis=(1, 2))
    return jnp.stack([0.1 - p, p - 0.1], axis=-1)  # class 1 iff projection > 0.1

  n = 8
  x = np.full((n, h, w, c), 0.5, np.float32)
  y = np.zeros((n,), np.int32)
  heat = F.fourier_heat_map(detector, (x, y), jax.random.PRNGKey(1), norm=1.0)['map']
  hot = {tuple(p) for p in np.argwhere(heat > 0)}
  row, col = k0 + h // 2, l0 + w // 2
  assert hot == {(row, col), (h - row, w - col)}  # (k0, l0) and (-k0, -l0) shifted
  # sign +1 flips to class 1, sign -1 stays: about half the images are wrong
  assert 0.0 < heat[row, col] < 1.0
  # without symmetry the mirror entry (-k0, -l0) is evaluated on its own basis,
  # the orthogonal phase (cos + sin) of the same frequency: the detector is blind to it
  heat_ns = F.fourier_heat_map(detector, (x, y), jax.random.PRNGKey(1), norm=1.0,
                               use_symmetry=False)['map']
  assert {tuple(p) for p in np.argwhere(heat_ns > 0)} == {(row, col)}
  np.testing.assert_allclose(
      np.sum(np.asarray(u) * np.asarray(F.fourier_basis(-k0, -l0, h, w))), 0.0, atol=1e-6)


def test_subset_of_frequencies_leaves_nan_elsewhere_and_validates():
  x, y = _mean_images(4, 8, 8, 3)
  out = F.fourier_heat_map(_mean_classifier, (x, y), jax.random.PRNGKey(0), norm=1.0,
                           positions=[(4, 4), (0, 0), (2, 3)])
  heat = out['map']
  assert {tuple(p) for p in np.argwhere(np.isfinite(heat))} == {(4, 4), (0, 0), (2, 3)}
  assert heat[0, 0] == 0.0 and heat[2, 3] == 0.0   # non-DC: invisible to the mean classifier
  strided = F.fourier_heat_map(_mean_classifier, (x, y), jax.random.PRNGKey(0), norm=1.0,
                               stride=2)['map']
  assert np.isfinite(strided).sum() == 16
  with pytest.raises(ValueError, match='metric'):
    F.fourier_heat_map(_mean_classifier, (x, y), jax.random.PRNGKey(0), metric='loss')
  with pytest.raises(ValueError, match='positions'):
    F.fourier_heat_map(_mean_classifier, (x, y), jax.random.PRNGKey(0), positions=[(9, 0)])


def test_perturbation_has_norm_v_per_channel_when_unclipped():
  x = jnp.full((2, 8, 8, 3), 0.5)
  u = F.fourier_basis(3, 1, 8, 8)
  xp = F.perturb_with_basis(x, u, 1.5, jax.random.PRNGKey(0))
  norms = np.linalg.norm(np.asarray(xp - x).reshape(2, 64, 3), axis=1)
  np.testing.assert_allclose(norms, 1.5, rtol=1e-5)
  # each channel's perturbation is +-v*u
  delta = np.asarray(xp - x)
  for b in range(2):
    for ch in range(3):
      s = np.sign(np.sum(delta[b, :, :, ch] * np.asarray(u)))
      np.testing.assert_allclose(delta[b, :, :, ch], s * 1.5 * np.asarray(u), atol=1e-6)


def test_padding_mask_excludes_padded_examples():
  x, y = _mean_images(4, 8, 8, 1)
  y_bad = y.copy()
  y_bad[2:] = 1 - y_bad[2:]  # padded rows carry wrong labels: must not count
  batch = {'image': x, 'label': y_bad, 'mask': np.array([1, 1, 0, 0])}
  out = F.fourier_heat_map(_mean_classifier, [batch], jax.random.PRNGKey(0), norm=1.0, stride=4)
  assert out['num_images'] == 2 and out['clean_error'] == 0.0
  heat = out['map']
  dc = (4, 4)
  others = heat[np.isfinite(heat)].tolist()
  others.remove(heat[dc])
  assert max(others) == 0.0


def test_a_batch_sharded_over_devices_stays_sharded_and_counts_the_same():
  """Each device runs the model on its own images only (no gathered batch), with the counts of
  the same batch on one device."""
  from jaxrobust import models, parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(jax.devices()[:4])
  model = models.create_model('resnet_tiny', num_classes=10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
  predict = jax.tree_util.Partial(lambda v, x: model.apply(v, x, train=False), variables)
  rng = np.random.default_rng(0)
  x_host = rng.uniform(size=(16, 8, 8, 3)).astype(np.float32)
  y_host = rng.integers(0, 10, 16).astype(np.int32)
  x, y = parallel.shard_batch(x_host, mesh), parallel.shard_batch(y_host, mesh)
  positions = jnp.asarray(F.all_frequencies(8, 8, 1)[:6])
  sharding = x.sharding
  counts = jax.jit(lambda x, y: F.fourier_error_counts(predict, x, y, jax.random.key(1),
                                                       positions, chunk_size=4,
                                                       sharding=sharding))
  hlo = counts.lower(x, y).compile().as_text()
  assert 'all-gather' not in hlo
  np.testing.assert_array_equal(
      counts(x, y), F.fourier_error_counts(predict, jnp.asarray(x_host), jnp.asarray(y_host),
                                           jax.random.key(1), positions, chunk_size=4))
