"""AdvProp: BN rules (clean -> main, adversarial -> aux, crafting -> none), eps=0 loss, attackers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust import augmentations, methods, models, parallel, train
from jaxrobust.evaluation import runner
from jaxrobust.methods import adversarial_training as at
from jaxrobust.methods import advprop as advprop_lib
from tests.conftest import method_on_tiny_model, random_batch, tiny_config

MOMENTUM = 0.9


def _setup(method='advprop', num_devices=1, **overrides):
  """A resnet_tiny state with per-domain initial statistics made distinct (aux = main + 3)."""
  return method_on_tiny_model(method, num_devices=num_devices, distinct_stats=True, **overrides)


def _updated(model, params, stats, x, domain):
  """Running statistics of ``domain`` after one train-mode pass of x (and its logits)."""
  logits, new = models.apply_model(model, params, stats, jnp.asarray(x), train=True,
                                   domain=domain)
  return logits, new[domain]


def _ce(logits, labels):
  return float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())


def test_eps0_loss_is_two_bn_loss_and_each_pass_updates_only_its_domain():
  config, mesh, m, model, state = _setup(advprop_attack='advprop_pgd1', advprop_eps=0.0)
  host = parallel.to_host(state)
  # aux affine parameters unlike main's, so that the two loss terms (and a step that routed
  # both through one BN) differ; at initialisation they are equal
  def offset(path, p):
    name = path[-1].key
    return p * 1.5 if name == 'scale_aux' else p + 0.2 if name == 'bias_aux' else p
  host = host.replace(params=jax.tree_util.tree_map_with_path(offset, host.params))
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  batch = random_batch()
  new_state, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  after = parallel.to_host(new_state.batch_stats)

  # eps = 0: the adversarial batch is the clean batch, so the loss is the two-BN loss on two
  # copies of it: CE(f_main(x)) + CE(f_aux(x)) (sum, Algorithm 1).
  main_logits, main_expected = _updated(model, host.params, host.batch_stats, batch['image'],
                                        'main')
  aux_logits, aux_expected = _updated(model, host.params, host.batch_stats, batch['image'], 'aux')
  assert abs(_ce(main_logits, batch['label']) - _ce(aux_logits, batch['label'])) > 1e-2
  expected_loss = _ce(main_logits, batch['label']) + _ce(aux_logits, batch['label'])
  np.testing.assert_allclose(float(metrics['loss']), expected_loss, rtol=1e-5)
  # the aux affine parameters are trained (by the adversarial pass)
  before_bn, after_bn = host.params['stem_bn'], parallel.to_host(new_state.params)['stem_bn']
  assert not np.allclose(after_bn['scale_aux'], before_bn['scale_aux'])
  # Each domain saw exactly one update with its own pass: one more update (e.g. from crafting, or
  # the other pass writing here) would multiply the distinct initial statistics by 0.9 again.
  chex.assert_trees_all_close(after['main'], parallel.to_host(main_expected), rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(after['aux'], parallel.to_host(aux_expected), rtol=1e-5, atol=1e-6)
  assert not np.allclose(after['aux']['stem_bn']['mean'], host.batch_stats['aux']['stem_bn']['mean'])

  # The step compiles once.
  for seed in (1, 2):
    new_state, _ = step(new_state, parallel.shard_batch(random_batch(seed), mesh))
  assert int(new_state.step) == 3


def test_passes_and_their_bn_domains(monkeypatch):
  """Crafting calls never update statistics and go through aux; training: main then aux."""
  calls = []
  real = advprop_lib.apply_model

  def spy(model, params, batch_stats, x, *, train, domain='main', update_stats=None, **kw):
    calls.append((domain, train, train if update_stats is None else update_stats, 'loss'))
    return real(model, params, batch_stats, x, train=train, domain=domain,
                update_stats=update_stats, **kw)

  def craft_spy(model, params, batch_stats, x, *, train, domain='main', update_stats=None, **kw):
    calls.append((domain, train, train if update_stats is None else update_stats, 'craft'))
    return real(model, params, batch_stats, x, train=train, domain=domain,
                update_stats=update_stats, **kw)

  monkeypatch.setattr(advprop_lib, 'apply_model', spy)
  monkeypatch.setattr(at, 'apply_model', craft_spy)
  config, mesh, m, model, state = _setup(advprop_attack='advprop_pgd3')
  host = parallel.to_host(state)
  batch = random_batch()
  key = jax.random.PRNGKey(3)
  domains = []

  def images(*args):
    groups = m.domain_batches(*args)
    domains.extend(d for d, _ in groups)
    return [x for _, x in groups]
  x0, x_adv = jax.jit(images)(host.params, host.batch_stats, batch['image'], batch['label'], key)
  assert domains == ['main', 'aux']
  groups = list(zip(domains, (x0, x_adv)))
  crafting = [c for c in calls if c[3] == 'craft']
  assert crafting and all(c[:3] == ('aux', True, False) for c in crafting)
  # The adversarial examples lie in the eps-ball (2/255) and in [0, 1], and moved.
  delta = np.abs(np.asarray(x_adv) - batch['image'])
  assert delta.max() <= 2 / 255 + 1e-6 and delta.max() > 1 / 255
  assert np.asarray(x_adv).min() >= 0.0 and np.asarray(x_adv).max() <= 1.0
  np.testing.assert_array_equal(np.asarray(x0), batch['image'])

  calls.clear()
  losses, _, stats = advprop_lib.domain_forward(model, host.params, host.batch_stats, groups,
                                                batch['label'], key)
  assert [c[:3] for c in calls] == [('main', True, True), ('aux', True, True)]
  assert len(losses) == 2
  _, main_expected = _updated(model, host.params, host.batch_stats, batch['image'], 'main')
  chex.assert_trees_all_close(stats['main'], main_expected, rtol=1e-6)


def test_running_mode_crafting_uses_aux_running_statistics(monkeypatch):
  calls = []
  real = at.apply_model

  def craft_spy(model, params, batch_stats, x, *, train, domain='main', **kw):
    calls.append((domain, train))
    return real(model, params, batch_stats, x, train=train, domain=domain, **kw)

  monkeypatch.setattr(at, 'apply_model', craft_spy)
  config, mesh, m, model, state = _setup(advprop_attack='advprop_pgd1', advprop_craft_bn='running')
  host = parallel.to_host(state)
  batch = random_batch()
  x = jnp.asarray(batch['image'])
  fn_running = at.make_logits_fn(model, host.params, host.batch_stats, domain='aux',
                                 bn_mode='running')
  fn_batch = at.make_logits_fn(model, host.params, host.batch_stats, domain='aux', bn_mode='batch')
  expected, _ = models.apply_model(model, host.params, host.batch_stats, x, train=False,
                                   domain='aux')
  np.testing.assert_allclose(fn_running(x), expected, rtol=1e-6)
  assert not np.allclose(fn_batch(x), expected)
  calls.clear()
  x_adv = jax.jit(lambda key: m.domain_batches(host.params, host.batch_stats, x, batch['label'],
                                               key)[1][1])(jax.random.key(0))
  assert np.abs(np.asarray(x_adv) - batch['image']).max() <= 1 / 255 + 1e-6
  # The step's crafting reaches the aux BN in inference mode (its running statistics).
  assert calls and all(c == ('aux', False) for c in calls), calls


@pytest.mark.parametrize('preset', ['advprop_pgd5', 'advprop_ifgsm5', 'advprop_gd5'])
def test_table7_attackers(preset):
  config, mesh, m, model, state = _setup(advprop_attack=preset)
  host = parallel.to_host(state)
  batch = random_batch()
  craft = jax.jit(lambda key: at.craft(
      model, host.params, host.batch_stats, batch['image'], batch['label'], key, attack=m.attack,
      attack_kwargs=m.attack_kwargs, domain='aux', bn_mode='batch'))
  x_a, x_b = craft(jax.random.key(0)), craft(jax.random.key(1))
  delta = np.abs(np.asarray(x_a) - batch['image']).max()
  assert 0.0 <= np.asarray(x_a).min() and np.asarray(x_a).max() <= 1.0
  if preset == 'advprop_gd5':  # no projection: may leave the ball, by at most eps + n * step
    assert 4 / 255 < delta <= 4 / 255 + 5 / 255 + 1e-6
  else:
    assert delta <= 4 / 255 + 1e-6
  if preset == 'advprop_ifgsm5':  # no random start: deterministic
    np.testing.assert_array_equal(np.asarray(x_a), np.asarray(x_b))
  else:
    assert not np.array_equal(np.asarray(x_a), np.asarray(x_b))


@pytest.mark.parametrize('augment', [None, 'autoaugment_cifar10'])
def test_fine_grained_domains_and_statistics(augment):
  extra = {} if augment is None else {'advprop_augment': augment}  # None: a saved run's default
  config, mesh, m, model, state = _setup(advprop_fine_grained=True, advprop_attack='advprop_pgd1',
                                         advprop_eps=0.0, advprop_eval_aux=True, **extra)
  assert m.bn_domains() == ('main', 'aux_augment', 'aux_adv')
  assert m.affine_domains() == ('aux_augment', 'aux_adv')
  assert m.eval_domains() == ('main', 'aux_augment', 'aux_adv')
  assert m.forward_backward_passes() == 1 + 3
  assert 'scale_aux_adv' in state.params['stem_bn'] and 'scale_aux_augment' in state.params['stem_bn']
  host = parallel.to_host(state)
  step = train.make_train_step(m, config, mesh)
  batch = random_batch()
  new_state, metrics = step(parallel.replicate(host, mesh), parallel.shard_batch(batch, mesh))
  after = parallel.to_host(new_state.batch_stats)
  # Reproduce the step's augmentation: rng -> (crafting key, dropout key) -> (aug, attack, drop).
  rng = jax.random.fold_in(jax.random.fold_in(host.rng, 0), 0)
  k_aug = jax.random.split(m.split_rng(rng)[0], 3)[0]
  if augment is None:  # RandAugment, N = 2 at M = 9
    x_aug = jax.jit(augmentations.rand_augment, static_argnums=(2, 3))(
        jnp.asarray(batch['image']), k_aug, 2, 9.0)
  else:  # the paper's AutoAugment, CIFAR-10 policy
    x_aug = jax.jit(augmentations.autoaugment, static_argnums=2)(
        jnp.asarray(batch['image']), k_aug, 'cifar10')
  assert not np.allclose(x_aug, batch['image'])
  logits = {}
  for domain, images in (('main', batch['image']), ('aux_augment', x_aug), ('aux_adv', x_aug)):
    logits[domain], expected = _updated(model, host.params, host.batch_stats, images, domain)
    chex.assert_trees_all_close(after[domain], parallel.to_host(expected), rtol=1e-4, atol=1e-5)
  expected_loss = sum(_ce(v, batch['label']) for v in logits.values())
  np.testing.assert_allclose(float(metrics['loss']), expected_loss, rtol=1e-4)


def test_random_targets_differ_from_labels():
  labels = jnp.arange(1000) % 10
  t = at.random_targets(jax.random.key(0), labels, 10)
  assert not np.any(np.asarray(t) == np.asarray(labels))
  assert set(np.unique(np.asarray(t)).tolist()) == set(range(10))


def test_targeted_crafting_moves_toward_targets():
  config, mesh, m, model, state = _setup(advprop_attack='advprop_ifgsm5', advprop_targeted=True,
                                         advprop_eps=0.5, advprop_step_size=0.1)
  host = parallel.to_host(state)
  batch = random_batch(size=16)
  x_adv = jax.jit(lambda key: at.craft(
      model, host.params, host.batch_stats, batch['image'], batch['label'], key, attack=m.attack,
      attack_kwargs=m.attack_kwargs, domain='aux', bn_mode='batch', targeted=True))(
          jax.random.key(0))
  targets = at.random_targets(jax.random.split(jax.random.key(0))[1], jnp.asarray(batch['label']),
                              10)
  fn = at.make_logits_fn(model, host.params, host.batch_stats, domain='aux', bn_mode='batch')
  ce_t = lambda z: optax.softmax_cross_entropy_with_integer_labels(fn(z), targets).mean()
  assert float(ce_t(x_adv)) < float(ce_t(jnp.asarray(batch['image'])))


@pytest.mark.parametrize('overrides,match', [
    (dict(advprop_attack='pgd20'), "allowed presets: \\('advprop_pgd1'"),
    (dict(advprop_attack='advprop_pgd9'), 'Unknown advprop_attack'),
    (dict(advprop_eps=-0.1), 'advprop_eps=-0.1 is out of range'),
    (dict(advprop_num_steps=0), 'advprop_num_steps=0 is out of range'),
    (dict(advprop_craft_bn='eval'), "allowed values: \\('batch', 'running'\\)"),
    (dict(advprop_loss='max'), "allowed values: \\('sum', 'mean'\\)"),
    (dict(advprop_targeted='yes'), 'advprop_targeted must be True or False'),
    (dict(advprop_augment='autoaugment'),
     r"allowed values: \('randaugment', 'autoaugment_cifar10', 'autoaugment_imagenet'\)"),
    (dict(advprop_adv_source='mixed'), "allowed values: \\('augmented', 'clean'\\)"),
    (dict(advprop_augment_magnitude=11), 'allowed: \\[0, 10\\]'),
    (dict(advprop_augment_ops=-1), 'integers >= 0'),
    # the loop's augmentation would reach 'main' and augment 'aux_augment' twice
    (dict(advprop_fine_grained=True, device_augment='autoaugment_cifar10'),
     r"advprop_fine_grained=True with device_augment='autoaugment_cifar10', cutout_size=0: .*"
     r"set device_augment='none' and cutout_size=0"),
    (dict(advprop_fine_grained=True, cutout_size=16),
     r"advprop_fine_grained=True with device_augment='none', cutout_size=16"),
])
def test_bad_config_values(overrides, match):
  with pytest.raises(ValueError, match=match):
    methods.get('advprop')(tiny_config(method='advprop', **overrides))


def test_defaults_and_loss_reduction():
  m = methods.get('advprop')(tiny_config(method='advprop'))
  assert m.attack == 'pgd' and m.attack_kwargs['eps'] == pytest.approx(4 / 255)
  assert m.attack_kwargs['num_steps'] == 5 and m.forward_backward_passes() == 7
  assert m.bn_domains() == ('main', 'aux') and m.affine_domains() == ('aux',)
  assert m.eval_domains() == ('main',)
  a, b = jnp.asarray(1.0), jnp.asarray(3.0)
  assert float(advprop_lib.advprop_loss([a, b], 'sum')) == 4.0
  assert float(advprop_lib.advprop_loss([a, b], 'mean')) == 2.0


def test_configs_load_and_validate():
  from configs import advprop_cifar, advprop_imagenet  # pylint: disable=g-import-not-at-top
  for mod in (advprop_cifar, advprop_imagenet):
    c = mod.get_config()
    train.validate_config(c)
    methods.get(c.method)(c)
  c = advprop_cifar.get_config()
  m = methods.get('advprop')(c)
  assert m.attack_kwargs['eps'] == pytest.approx(1 / 255) and m.attack_kwargs['num_steps'] == 1
  assert methods.get('advprop')(advprop_imagenet.get_config()).attack_kwargs['num_steps'] == 5


def test_end_to_end_digits(tmp_path):
  config = tiny_config(method='advprop', advprop_attack='advprop_pgd1', advprop_eval_aux=True,
                       num_epochs=0.25, checkpoint_every_steps=0)
  state, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == int(state.step) > 0
  assert set(state.batch_stats) == {'main', 'aux'}
  # The aux-BN evaluation (Table 3) is the saved run evaluated through its aux BN, and it is
  # another network than the main-BN one.
  for domain, prefix in (('main', 'eval_'), ('aux', 'eval_aux_')):
    clean = runner.clean_suite(runner.load_run(str(tmp_path), domain=domain))
    assert clean['top1'] == pytest.approx(results[f'{prefix}top1'])
    assert clean['loss'] == pytest.approx(results[f'{prefix}loss'], rel=1e-5)
  assert results['eval_aux_loss'] != results['eval_loss']
