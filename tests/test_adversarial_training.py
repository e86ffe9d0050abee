"""PGD-AT and TRADES: losses by hand, crafting in the ball without touching BN statistics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import methods, models, parallel, train
from jaxrobust.methods import adversarial_training as at
from tests.conftest import method_on_tiny_model, random_batch, tiny_config

MOMENTUM = 0.9


def _setup(method, **overrides):
  return method_on_tiny_model(method, **overrides)


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(logits, labels):
  return -_np_log_softmax(logits)[np.arange(len(labels)), labels]


def _twice_updated(model, params, stats, x):
  """Logits and running statistics after two train-mode passes of x through 'main'."""
  logits, s1 = models.apply_model(model, params, stats, x, train=True)
  _, s2 = models.apply_model(model, params, s1, x, train=True)
  return logits, s2['main']


def test_losses_by_hand():
  rng = np.random.default_rng(0)
  clean, adv = rng.normal(size=(2, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  lp, lq = _np_log_softmax(clean), _np_log_softmax(adv)
  kl = np.mean(np.sum(np.exp(lp) * (lp - lq), -1))
  trades = _np_ce(clean, labels).mean() + 6.0 * kl
  np.testing.assert_allclose(float(at.trades_kl(clean, adv)), kl, rtol=1e-5)
  np.testing.assert_allclose(float(at.trades_loss(clean, adv, labels, beta=6.0)), trades,
                             rtol=1e-5)
  np.testing.assert_allclose(float(at.pgd_at_loss(adv, labels)), _np_ce(adv, labels).mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(float(at.pgd_at_loss(adv, labels, clean, gamma=0.25)),
                             _np_ce(adv, labels).mean() + 0.25 * _np_ce(clean, labels).mean(),
                             rtol=1e-5)
  with pytest.raises(ValueError, match='needs clean_logits'):
    at.pgd_at_loss(adv, labels, None, gamma=0.5)
  # TRADES differentiates through the clean side of the KL too (no stop_gradient).
  g = jax.grad(lambda c: at.trades_kl(c, jnp.asarray(adv)))(jnp.asarray(clean))
  assert float(jnp.abs(g).max()) > 0


def test_pgd_at_step_with_gamma_eps0():
  """eps = 0: x' = x, so loss = (1 + gamma) CE(x); main sees two updates, crafting none."""
  config, mesh, m, model, state = _setup('pgd_at', pgd_at_gamma=0.5, pgd_at_eps=0.0)
  assert m.forward_backward_passes() == 10 + 1 + 1
  host = parallel.to_host(state)
  batch = random_batch()
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  new_state, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  logits, expected_stats = _twice_updated(model, host.params, host.batch_stats, batch['image'])
  np.testing.assert_allclose(float(metrics['loss']), 1.5 * _np_ce(logits, batch['label']).mean(),
                             rtol=1e-5)
  chex.assert_trees_all_close(parallel.to_host(new_state.batch_stats['main']),
                              parallel.to_host(expected_stats), rtol=1e-5, atol=1e-6)
  for seed in (1, 2):
    new_state, _ = step(new_state, parallel.shard_batch(random_batch(seed), mesh))
  assert int(new_state.step) == 3


def test_trades_step_eps0():
  """eps = 0: KL = 0, loss = CE(x); statistics: clean and adversarial passes only."""
  config, mesh, m, model, state = _setup('trades', trades_eps=0.0)
  assert m.beta == 6.0 and m.craft_bn == 'running' and m.attack_kwargs['loss'] == 'kl'
  host = parallel.to_host(state)
  batch = random_batch()
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  new_state, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  logits, expected_stats = _twice_updated(model, host.params, host.batch_stats, batch['image'])
  np.testing.assert_allclose(float(metrics['loss']), _np_ce(logits, batch['label']).mean(),
                             rtol=1e-5)
  assert abs(float(metrics['trades_kl'])) < 1e-6
  chex.assert_trees_all_close(parallel.to_host(new_state.batch_stats['main']),
                              parallel.to_host(expected_stats), rtol=1e-5, atol=1e-6)
  new_state, _ = step(new_state, parallel.shard_batch(random_batch(1), mesh))


@pytest.mark.parametrize('method', ['pgd_at', 'trades'])
def test_crafting_in_ball_and_box_and_stronger(method):
  config, mesh, m, model, state = _setup(method)
  host = parallel.to_host(state)
  batch = random_batch(size=16)
  x = jnp.asarray(batch['image'])
  x_adv = jax.jit(m.craft)(host.params, host.batch_stats, x, batch['label'], jax.random.key(0))
  delta = np.abs(np.asarray(x_adv) - batch['image'])
  assert delta.max() <= 8 / 255 + 1e-6 and delta.max() > 4 / 255
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  # The attack raises its objective well beyond what random points of the ball reach (a random
  # start alone would pass a comparison with the clean point).
  fn = at.make_logits_fn(model, host.params, host.batch_stats, bn_mode=m.craft_bn)
  if method == 'pgd_at':
    objective = lambda z: float(_np_ce(fn(z), batch['label']).mean())
  else:
    objective = lambda z: float(at.trades_kl(fn(x), fn(z)))
  randoms = [jnp.clip(x + jax.random.uniform(jax.random.key(s), x.shape, minval=-8 / 255,
                                             maxval=8 / 255), 0.0, 1.0) for s in range(5)]
  best_random = max(objective(r) for r in randoms)
  if method == 'pgd_at':
    assert objective(x_adv) > max(best_random, objective(x)) + 0.1
  else:
    assert objective(x_adv) > 10 * best_random and objective(x_adv) > 1e-3


def test_trades_step_adds_beta_times_the_kl():
  """eps = 8/255: loss = CE(f(x), y) + 6 KL(p(x) || p(x')), with a KL that is not 0."""
  config, mesh, m, model, state = _setup('trades')
  host = parallel.to_host(state)
  batch = random_batch()
  step = train.make_train_step(m, config, mesh)
  _, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  logits, _ = models.apply_model(model, host.params, host.batch_stats, batch['image'], train=True)
  ce, kl = _np_ce(logits, batch['label']).mean(), float(metrics['trades_kl'])
  assert kl > 1e-3
  np.testing.assert_allclose(float(metrics['loss']), ce + 6.0 * kl, rtol=1e-4)


@pytest.mark.parametrize('method,overrides,match', [
    ('pgd_at', dict(pgd_at_attack='trades'), 'Unknown pgd_at_attack'),
    ('pgd_at', dict(pgd_at_attack='pgd30'), "allowed presets: \\("),
    ('pgd_at', dict(pgd_at_eps=-1.0), 'pgd_at_eps=-1.0 is out of range'),
    ('pgd_at', dict(pgd_at_eps=8), r'pgd_at_eps=8: .* \[0, 1\] pixel units.*8/255 = 0\.0314'),
    ('pgd_at', dict(pgd_at_gamma=-0.1), 'pgd_at_gamma=-0.1 is out of range'),
    ('pgd_at', dict(pgd_at_craft_bn='train'), "allowed values: \\('batch', 'running'\\)"),
    ('pgd_at', dict(pgd_at_attack='fgsm', pgd_at_num_steps=3), "has no num_steps"),
    ('trades', dict(trades_attack='madry_pgd10'), "allowed presets: \\('trades',\\)"),
    ('trades', dict(trades_beta=-6.0), 'trades_beta=-6.0 is out of range'),
    ('trades', dict(trades_step_size=-0.1), 'trades_step_size=-0.1 is out of range'),
])
def test_bad_config_values(method, overrides, match):
  with pytest.raises(ValueError, match=match):
    methods.get(method)(tiny_config(method=method, **overrides))


def test_configs_load_and_validate():
  from configs import pgd_at_cifar, trades_cifar  # pylint: disable=g-import-not-at-top
  for mod in (pgd_at_cifar, trades_cifar):
    c = mod.get_config()
    train.validate_config(c)
    methods.get(c.method)(c)
  m = methods.get('pgd_at')(pgd_at_cifar.get_config())
  assert m.attack_kwargs == dict(eps=8 / 255, step_size=2 / 255, num_steps=10, norm='linf',
                                 random_start=True, loss='ce')
  assert m.gamma == 0.0 and m.forward_backward_passes() == 11
  t = methods.get('trades')(trades_cifar.get_config())
  assert t.beta == 6.0 and t.forward_backward_passes() == pytest.approx(12 + 1 / 3)


@pytest.mark.parametrize('method', ['pgd_at', 'trades'])
def test_end_to_end_digits(tmp_path, method):
  config = tiny_config(method=method, num_epochs=0.25, checkpoint_every_steps=0)
  state, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == int(state.step) > 0
  assert 0.0 <= results['eval_top1'] <= 1.0
