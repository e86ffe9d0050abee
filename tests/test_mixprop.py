"""MixProp (Eq. 1, clean -> main BN, mixed -> aux BN) and the Mixup baseline."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import methods, models, parallel, train
from jaxrobust.methods import mixprop as mixprop_lib
from tests.conftest import method_on_tiny_model, random_batch, tiny_config



def _setup(method, **overrides):
  """One-device state; each domain's initial statistics are distinct (domain i: + 3 i)."""
  return method_on_tiny_model(method, distinct_stats=True, **overrides)


def _np_ce(logits, labels):
  """Per-example softmax cross-entropy in numpy (float64)."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(labels)), labels]


def _step_mixing(state, batch, alpha):
  """The (lambda, perm) the loop's step draws on device 0 at step 0."""
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0)
  lam, perm, _ = mixprop_lib.step_mixing(state, rng, len(batch['label']), alpha)
  return float(lam), np.asarray(perm)


def test_eq1_by_hand():
  rng = np.random.default_rng(0)
  clean, mixed = rng.normal(size=(2, 6, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 6)
  perm = np.array([3, 0, 5, 1, 2, 4])
  lam = 0.3
  expected = (_np_ce(clean, labels).mean() + lam * _np_ce(mixed, labels).mean()
              + (1 - lam) * _np_ce(mixed, labels[perm]).mean())
  got = mixprop_lib.mixprop_loss(jnp.asarray(clean), jnp.asarray(mixed), jnp.asarray(labels),
                                 jnp.asarray(perm), lam)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  x = rng.uniform(size=(6, 2, 2, 1)).astype(np.float32)
  np.testing.assert_allclose(mixprop_lib.mix(jnp.asarray(x), jnp.asarray(perm), lam),
                             lam * x + (1 - lam) * x[perm], rtol=1e-6)


def test_mixprop_step_is_eq1_and_updates_main_with_clean_aux_with_mixed():
  config, mesh, m, model, state = _setup('mixprop')
  assert m.bn_domains() == ('main', 'aux') and m.affine_domains() == ('aux',)
  assert m.eval_domains() == ('main', 'aux') and m.forward_backward_passes() == 2
  host = parallel.to_host(state)
  batch = random_batch()
  lam, perm = _step_mixing(state, batch, 1.0)
  assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(8))

  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  new_state, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  after = parallel.to_host(new_state.batch_stats)
  np.testing.assert_allclose(float(metrics['lambda']), lam, rtol=1e-6)

  x, y = batch['image'], batch['label']
  x_mix = lam * x + (1 - lam) * x[perm]
  clean_logits, main_stats = models.apply_model(model, host.params, host.batch_stats, x,
                                                train=True, domain='main')
  mixed_logits, aux_stats = models.apply_model(model, host.params, host.batch_stats, x_mix,
                                               train=True, domain='aux')
  eq1 = (_np_ce(clean_logits, y).mean() + lam * _np_ce(mixed_logits, y).mean()
         + (1 - lam) * _np_ce(mixed_logits, y[perm]).mean())
  np.testing.assert_allclose(float(metrics['loss']), eq1, rtol=1e-5)
  # One update each, from its own pass (an extra or crossed update would decay the distinct
  # initial statistics once more).
  chex.assert_trees_all_close(after['main'], parallel.to_host(main_stats['main']), rtol=1e-5,
                              atol=1e-6)
  chex.assert_trees_all_close(after['aux'], parallel.to_host(aux_stats['aux']), rtol=1e-5,
                              atol=1e-6)
  # Affine parameters: the aux BN's own scale moved, and differently from the shared one.
  p = parallel.to_host(new_state.params)['stem_bn']
  assert not np.allclose(p['scale_aux'], host.params['stem_bn']['scale_aux'])
  assert not np.allclose(p['scale_aux'], p['scale'])

  for seed in (1, 2):  # compiles once; lambda changes per step
    new_state, metrics2 = step(new_state, parallel.shard_batch(random_batch(seed), mesh))
  assert float(metrics2['lambda']) != pytest.approx(lam)


def test_mixup_step_mixes_half_through_one_bn():
  config, mesh, m, model, state = _setup('mixup')
  assert m.bn_domains() == ('main',) and m.affine_domains() == () and m.num_mixed(8) == 4
  host = parallel.to_host(state)
  batch = random_batch()
  lam, perm = _step_mixing(state, batch, 1.0)
  step = train.make_train_step(m, config, mesh)
  new_state, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  x, y = batch['image'], batch['label']
  images = x.copy()
  images[4:] = lam * x[4:] + (1 - lam) * x[perm[4:]]
  logits, stats = models.apply_model(model, host.params, host.batch_stats, images, train=True,
                                     domain='main')
  ce_a, ce_b = _np_ce(logits, y), _np_ce(logits, y[perm])
  expected = np.concatenate([ce_a[:4], lam * ce_a[4:] + (1 - lam) * ce_b[4:]]).mean()
  np.testing.assert_allclose(float(metrics['loss']), expected, rtol=1e-5)
  chex.assert_trees_all_close(parallel.to_host(new_state.batch_stats['main']),
                              parallel.to_host(stats['main']), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('method,overrides,match', [
    ('mixprop', dict(mixprop_alpha=0.0), 'mixprop_alpha=0.0 is out of range'),
    ('mixprop', dict(mixprop_alpha=-1.0), 'mixprop_alpha=-1.0 is out of range'),
    ('mixup', dict(mixup_alpha=0.0), 'mixup_alpha=0.0 is out of range'),
    ('mixup', dict(mixup_fraction=0.0), 'mixup_fraction=0.0 is out of range'),
    ('mixup', dict(mixup_fraction=1.5), 'allowed: \\(0.0, 1.0\\]'),
])
def test_bad_config_values(method, overrides, match):
  with pytest.raises(ValueError, match=match):
    methods.get(method)(tiny_config(method=method, **overrides))


def test_configs_load_and_validate():
  from configs import mixprop_cifar100, mixup_cifar  # pylint: disable=g-import-not-at-top
  for mod in (mixprop_cifar100, mixup_cifar):
    c = mod.get_config()
    train.validate_config(c)
    methods.get(c.method)(c)
  c = mixprop_cifar100.get_config()
  assert c.model == 'preact_resnet18' and tuple(c.lr_boundaries) == (100, 180, 260)


@pytest.mark.parametrize('method', ['mixprop', 'mixup'])
def test_end_to_end_digits(tmp_path, method):
  config = tiny_config(method=method, num_epochs=0.25, checkpoint_every_steps=0)
  state, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == int(state.step) > 0
  assert 0.0 <= results['eval_top1'] <= 1.0
  if method == 'mixprop':  # both BNs are evaluated (the paper's Table 3)
    assert 0.0 <= results['eval_aux_top1'] <= 1.0
