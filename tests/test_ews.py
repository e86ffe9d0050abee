"""EWS method: distillation gradient, BN rule, one compilation, controller search, AT/AWP, e2e."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxrobust import methods, models, parallel, train
from jaxrobust.evaluation import subnet_analysis
from jaxrobust.methods import common, ews
from jaxrobust.methods.base import Context
from jaxrobust.models import controller as controller_lib
from jaxrobust.models import subnets
from jaxrobust.train_state import TrainState
from tests.conftest import method_on_tiny_model, tiny_config
from tests.test_subnets import random_variables

STEPS_PER_EPOCH = 4
SMALL_CONTROLLER = dict(ews_controller_hidden=16, ews_compare_batches=1)


def _batch(seed, size=16):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(size=(size, 8, 8, 3)).astype(np.float32),
          'label': rng.integers(0, 10, size).astype(np.int32)}


def _setup(method='ews', num_devices=2, sync=False, **overrides):
  """A method on resnet_tiny (8x8x3 inputs, random weights) and its replicated train state."""
  config = tiny_config(method=method, lr_schedule='constant', learning_rate=0.1,
                       sync_batch_stats=sync, **{**SMALL_CONTROLLER, **overrides})
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  m = methods.get(method)(config)
  model = models.create_model('resnet_tiny', num_classes=10,
                              bn_axis_name=parallel.AXIS if sync else None)
  tx = optax.sgd(0.1, momentum=0.9)

  def train_batches(num_batches, seed):
    for i in range(num_batches):
      yield parallel.shard_batch(_batch(1000 * seed + i), mesh)

  m.setup(Context(config=config, model=model, tx=tx, info=None, mesh=mesh,
                  steps_per_epoch=STEPS_PER_EPOCH, total_steps=2 * STEPS_PER_EPOCH,
                  train_batches=train_batches))
  variables = random_variables(model)  # no initialiser to compile
  params, stats = variables['params'], {'main': variables['batch_stats']}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     batch_stats=stats, rng=jax.random.PRNGKey(0),
                     extras=m.init_extras(jax.random.PRNGKey(1), params, stats))
  return config, mesh, m, parallel.replicate(state, mesh)


def test_kl_gradient_flows_through_the_subnet_only():
  _, _, m, state = _setup()
  params, stats = parallel.to_host((state.params, state.batch_stats))
  b = _batch(0)
  x, y = jnp.asarray(b['image']), jnp.asarray(b['label'])
  masks = jax.jit(m.space.random)(jax.random.key(3))
  rng = jax.random.key(4)

  def full(p):
    return models.apply_model(m.model, p, stats, x, train=True)[0]

  def sub(p):
    return models.apply_model(m.model, p, stats, x, train=True, update_stats=False,
                              subnet=masks)[0]

  def kl_no_stop(p):  # what a teacher that is *not* detached would give
    log_p, log_q = jax.nn.log_softmax(full(p)), jax.nn.log_softmax(sub(p))
    return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1))

  @jax.jit
  def grads(p):
    teacher = jax.lax.stop_gradient(full(p))
    return (jax.grad(lambda q: m.loss_fn(q, stats, x, y, None, masks, rng)[0])(p),
            jax.grad(lambda q: common.cross_entropy(full(q), y))(p),
            jax.grad(lambda q: common.distillation_kl(teacher, sub(q), reduction='mean'))(p),
            jax.grad(kl_no_stop)(p))

  g_method, g_ce, g_student, g_both = grads(params)
  assert m.lam == 1.0 and m.kl_reduction == 'mean'  # the authors' nn.KLDivLoss() scale
  chex.assert_trees_all_close(g_method, jax.tree.map(jnp.add, g_ce, g_student),
                              rtol=1e-4, atol=1e-6)
  diff = max(float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(g_student), jax.tree.leaves(g_both)))
  assert diff > 1e-4  # the check above would notice a teacher gradient


def test_kl_reductions_are_per_example_and_per_element():
  teacher = jnp.asarray([[2.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]])
  student = jnp.asarray([[0.0, 0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.0]])
  p, log_q = jax.nn.softmax(teacher), jax.nn.log_softmax(student)
  per_example = jnp.sum(p * (jnp.log(p) - log_q), axis=-1)
  np.testing.assert_allclose(common.distillation_kl(teacher, student), jnp.mean(per_example),
                             rtol=1e-6)
  # PyTorch's nn.KLDivLoss() default: the mean over the B*K elements
  np.testing.assert_allclose(common.distillation_kl(teacher, student, reduction='mean'),
                             jnp.sum(per_example) / teacher.size, rtol=1e-6)
  with pytest.raises(ValueError, match="valid: \\('batchmean', 'mean'\\)"):
    common.distillation_kl(teacher, student, reduction='sum')


def test_step_compiles_once_and_subnet_passes_leave_statistics_alone():
  config, mesh, m, state = _setup(sync=True)
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  subnet_of = jax.jit(m.step_subnet)
  masks = []
  b0 = _batch(0)
  host0 = parallel.to_host((state.params, state.batch_stats))
  for i in range(3):
    masks.append(parallel.to_host(subnet_of(state)))
    state, metrics = step(state, parallel.shard_batch(_batch(i), mesh))
    if i == 0:
      stats_after_first = parallel.to_host(state.batch_stats)
    assert np.isfinite(float(metrics['subnet_kl'])) and float(metrics['subnet_kl']) > 0
  assert int(state.step) == 3
  flat = [np.concatenate([np.ravel(a) for a in jax.tree.leaves(mk)]) for mk in masks]
  assert not np.array_equal(flat[0], flat[1]) and not np.array_equal(flat[1], flat[2])
  # Synchronised BN over 2 devices = one pass over the whole batch: the full network's pass
  # alone explains the new running statistics (the subnet pass changed none).
  plain = models.create_model('resnet_tiny', num_classes=10)
  _, expected = jax.jit(lambda p, s, x: models.apply_model(plain, p, s, x, train=True))(
      host0[0], host0[1], jnp.asarray(b0['image']))
  chex.assert_trees_all_close(stats_after_first, expected, rtol=1e-5, atol=1e-6)


def _toy_reward(params, stats, x, y, masks):
  """1 when the first block keeps its residual branch (slot 0, candidate 0), else 0."""
  del params, stats, x, y
  return masks['stage1_block1']['path'][:, 0]


def _p_residual(m, state):
  """The controller's probability of keeping the first block's residual branch."""
  s = jax.jit(controller_lib.sample_subnets, static_argnums=(0, 3))(
      m.controller, parallel.to_host(state.extras['controller']['params']), jax.random.key(7),
      4000)
  return float(np.mean(np.asarray(s.masks[0])[:, 0]))


def test_search_reward_is_minus_the_subnets_accuracy_over_all_devices():
  """The policy gradient minimises subnet accuracy (Eq. 1): the reward is its negative, averaged
  over devices, each device's subnets normalising with that device's batch statistics."""
  _, mesh, m, state = _setup(num_devices=2)
  params, stats = parallel.to_host((state.params, state.batch_stats))
  batch = _batch(5)
  masks = jax.jit(jax.vmap(m.space.random))(jax.random.split(jax.random.key(2), 6))
  rewards = parallel.spmd(lambda p, s, x, y, k: m.subnet_rewards(p, s, x, y, k), mesh,
                          in_specs=(P(), P(), P(parallel.AXIS), P(parallel.AXIS), P()),
                          out_specs=P())(state.params, state.batch_stats,
                                         *parallel.shard_batch(batch, mesh).values(), masks)
  halves = [slice(0, 8), slice(8, 16)]   # the two devices' shards of the 16 images
  per_device = [ews.subnet_accuracies(m.model, params, stats, jnp.asarray(batch['image'][h]),
                                      jnp.asarray(batch['label'][h]), masks) for h in halves]
  np.testing.assert_allclose(np.asarray(rewards), -(per_device[0] + per_device[1]) / 2,
                             atol=1e-6)
  assert len(set(np.asarray(rewards).round(4))) > 1   # the subnets do differ in accuracy


@pytest.mark.parametrize('method,overrides', [
    ('ews_pgd_at', dict(pgd_at_num_steps=2)),
    ('ews_trades', dict(trades_num_steps=2)),
    ('ews', dict(ews_search_on='adversarial', ews_search_num_steps=2))])
def test_adversarial_search_judges_subnets_on_pgd_examples(method, overrides):
  """Section 3.4.1: with an adversarial base (or ews_search_on='adversarial') the subnets are
  judged on PGD examples of the full network, inside the eps-ball around the clean images."""
  _, mesh, m, state = _setup(method, num_devices=1, **overrides)
  assert m.search_adversarial
  host, batch = parallel.to_host(state), _batch(6)
  x, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  search_images = m._search_images  # pylint: disable=protected-access
  x_search = jax.jit(search_images)(host, x, y, jax.random.key(3))
  distance = float(jnp.max(jnp.abs(x_search - x)))
  assert 1e-3 < distance <= 8 / 255 + 1e-6
  assert float(x_search.min()) >= 0.0 and float(x_search.max()) <= 1.0


def test_search_hook_raises_probability_of_rewarded_subnets():
  _, _, m, state = _setup(ews_search_fraction=1.0, ews_controller_lr=0.05,
                          ews_entropy_weight=0.0, ews_search_every_epochs=2.0,
                          ews_controller_restart=False)
  (hook,) = m.hooks()
  assert hook.every_steps == 2 * STEPS_PER_EPOCH and m.search_batches() == STEPS_PER_EPOCH
  m.subnet_rewards = _toy_reward
  before = _p_residual(m, state)
  for _ in range(3):
    state = hook.fn(state)
  after = _p_residual(m, state)
  assert 0.4 < before < 0.6 and after > before + 0.2, (before, after)
  ctrl, search = parallel.to_host((state.extras['controller'], state.extras['search']))
  assert int(ctrl['steps']) == 3 * STEPS_PER_EPOCH and int(search['count']) == 3
  assert 0.5 < float(ctrl['baseline']) <= 1.0  # tracks the (rising) toy reward
  for key in ('controller_accuracy', 'random_accuracy'):
    assert 0.0 <= float(search[key]) <= 1.0
  assert m.last_search['last_reward'] >= m.last_search['first_reward']


def test_controller_restart_makes_every_search_start_afresh():
  progress = {}
  for restart in (False, True):
    _, _, m, state = _setup(ews_search_fraction=1.0, ews_controller_lr=0.05,
                            ews_entropy_weight=0.0, ews_controller_restart=restart)
    m.subnet_rewards = _toy_reward
    (hook,) = m.hooks()
    initial = _p_residual(m, state)
    state = hook.fn(state)
    first = _p_residual(m, state)
    # where the second search starts: the first one's end, or a fresh controller
    start = m._compiled_search()['restart'](jax.tree.map(jnp.copy, state)) if restart else state
    progress[restart] = (initial, first, _p_residual(m, start), _p_residual(m, hook.fn(state)))
  (initial, first, start, carried), (_, first_again, fresh, restarted) = (progress[False],
                                                                        progress[True])
  assert first == pytest.approx(first_again)  # the first search starts from the initial one
  assert first > initial + 0.03, progress     # and learns
  assert carried > first + 0.05, progress     # carried on: the second search goes further
  assert abs(fresh - initial) < 0.03, progress  # restarted: from a fresh controller...
  assert restarted > fresh + 0.03, progress     # ...that learns again


def test_search_restarts_the_baseline_at_every_search():
  """A baseline left over from an earlier search (another network) must not bias the next one."""
  _, mesh, m, state = _setup(ews_search_fraction=1.0, ews_search_every_epochs=1.0)
  m.subnet_rewards = _toy_reward
  ctrl = parallel.to_host(state.extras['controller'])
  ctrl.update(baseline=np.float32(50.0), steps=np.int32(5))  # stale: rewards now lie in [0, 1]
  state = state.replace(extras={**state.extras, 'controller': parallel.replicate(ctrl, mesh)})
  (hook,) = m.hooks()
  state = hook.fn(state)
  # Restarted from the first batch's mean reward, then averaged with rewards in [0, 1]; without
  # the restart it would still be 50 * 0.95^4 = 40.7.
  assert 0.0 <= float(parallel.to_host(state.extras['controller'])['baseline']) <= 1.0


def test_search_baselines_random_and_l1():
  _, _, m, state = _setup(ews_search='random')
  assert m.hooks() == [] and 'controller' not in state.extras
  a, b = (parallel.to_host(jax.jit(m.step_subnet)(state.replace(step=jnp.int32(i))))
          for i in (0, 1))
  assert not all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  _, _, m, state = _setup(ews_search='l1')
  (hook,) = m.hooks()
  params = parallel.to_host(state.params)
  chex.assert_trees_all_equal(parallel.to_host(state.extras['l1_masks']),
                              jax.jit(m.space.lowest_l1)(params))
  # Recomputed from the current weights at every search (reversed output channels here).
  before = parallel.to_host(state.extras['l1_masks'])
  state = state.replace(params=jax.tree.map(lambda p: p[..., ::-1] if p.ndim == 4 else p,
                                            state.params))
  state = hook.fn(state)
  after = parallel.to_host(state.extras['l1_masks'])
  np.testing.assert_array_equal(after['stage2_block1']['conv1'],
                                before['stage2_block1']['conv1'][::-1])


def test_adversarial_bases_lambda_zero_and_awp():
  """ews_pgd_at with lambda = 0 is pgd_at; AWP changes nothing before its warm-up ends."""
  common_keys = dict(pgd_at_num_steps=2)
  runs = {}
  for name, method, kw in [('pgd_at', 'pgd_at', {}),
                           ('ews0', 'ews_pgd_at', dict(ews_lambda=0.0)),
                           ('awp', 'awp', dict(awp_gamma=5e-3, awp_warmup_epochs=0.25))]:
    config, mesh, m, state = _setup(method, num_devices=1, **common_keys, **kw)
    step = train.make_train_step(m, config, mesh)
    params = []
    for i in range(2):
      state, metrics = step(state, parallel.shard_batch(_batch(i), mesh))
      params.append(parallel.to_host(state.params))
      assert np.isfinite(float(metrics['loss']))
    runs[name] = params
  chex.assert_trees_all_close(runs['ews0'], runs['pgd_at'], rtol=1e-6, atol=1e-7)
  # AWP starts after 0.25 epochs = 1 step: step 1 is plain PGD-AT, step 2 is not.
  chex.assert_trees_all_close(runs['awp'][0], runs['pgd_at'][0], rtol=1e-6, atol=1e-7)
  diff = max(float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(runs['awp'][1]), jax.tree.leaves(runs['pgd_at'][1])))
  assert diff > 1e-6


def test_awp_step_ascends_then_applies_the_perturbed_gradient_to_the_unperturbed_weights():
  """One AWP step: the loss at w + v exceeds the loss at w (ascent, not descent), and the update
  is w - lr grad L(w + v) (the perturbation is removed again, not kept)."""
  gamma, lr = 5e-2, 0.1  # conftest's SGD(0.1), no momentum or weight decay
  config, mesh, m, model, state = method_on_tiny_model('awp', awp_gamma=gamma, pgd_at_eps=0.0,
                                                       pgd_at_num_steps=1)
  batch = _batch(3)
  new_state, _ = train.make_train_step(m, config, mesh)(parallel.replicate(state, mesh),
                                                        parallel.shard_batch(batch, mesh))
  x, y = jnp.asarray(batch['image']), jnp.asarray(batch['label'])

  def loss(p):  # with eps = 0 the PGD-AT base trains on x itself
    logits, _ = models.apply_model(model, p, state.batch_stats, x, train=True)
    return common.cross_entropy(logits, y)

  v = ews.awp_perturbation(state.params, jax.grad(loss)(state.params), gamma)
  perturbed = jax.tree.map(jnp.add, state.params, v)
  assert float(loss(perturbed)) > float(loss(state.params)) + 1e-3
  expected = jax.tree.map(lambda w, g: w - lr * g, state.params, jax.grad(loss)(perturbed))
  chex.assert_trees_all_close(parallel.to_host(new_state.params), expected, atol=1e-6)


def test_awp_perturbation_is_layerwise_relative_to_the_weight_norm():
  params = {'conv': {'kernel': jnp.arange(1.0, 19.0).reshape(1, 1, 2, 9)},
            'bn': {'scale': jnp.ones(9), 'bias': jnp.ones(9)},
            'dense': {'kernel': -jnp.ones((4, 3)), 'bias': jnp.ones(3)}}
  grads = jax.tree.map(lambda p: 3.0 * jnp.ones_like(p), params)
  v = ews.awp_perturbation(params, grads, 5e-3)
  for layer in ('conv', 'dense'):
    w, d = params[layer]['kernel'], v[layer]['kernel']
    np.testing.assert_allclose(float(jnp.linalg.norm(d)), 5e-3 * float(jnp.linalg.norm(w)),
                               rtol=1e-5)
    np.testing.assert_allclose(d / jnp.linalg.norm(d), grads[layer]['kernel'] /
                               jnp.linalg.norm(grads[layer]['kernel']), rtol=1e-5)
  for leaf in (v['bn']['scale'], v['bn']['bias'], v['dense']['bias']):
    assert float(jnp.abs(leaf).max()) == 0.0


def test_subnet_analysis_full_masks_reproduce_the_full_network():
  _, mesh, m, state = _setup()
  batches = [dict(_batch(i), mask=np.ones(16, np.float32)) for i in range(2)]
  full = jax.tree.map(lambda a: jnp.stack([a, a]), m.space.full())
  res = subnet_analysis.evaluate_subnets(m.model, state.params, state.batch_stats, batches, mesh,
                                         full, bn='running', chunk_size=2)
  np.testing.assert_allclose(res['accuracy'], res['full_accuracy'], atol=1e-6)
  np.testing.assert_allclose(res['confidence'], res['full_confidence'], rtol=1e-5)
  assert res['count'] == 32 and 0.0 < res['full_confidence'] < 1.0
  vul = subnet_analysis.block_vulnerability(m.model, state.params, state.batch_stats,
                                            lambda: iter(batches), mesh, space=m.space,
                                            bn='running', chunk_size=2)
  assert vul['blocks'] == ['stage1_block1', 'stage2_block1']
  assert all(0.0 <= a <= 1.0 for a in vul['accuracy'])
  summary = subnet_analysis.summarize(res)
  assert summary['subnet_accuracy_mean'] == pytest.approx(res['full_accuracy'])
  assert 'full_batch_accuracy' not in res
  # Under batch statistics the all-ones subnets are the full network under batch statistics,
  # reported beside it (its running-statistics figure stays the deployed network's).
  res = subnet_analysis.evaluate_subnets(m.model, state.params, state.batch_stats, batches, mesh,
                                         full, bn='batch', chunk_size=2)
  np.testing.assert_allclose(res['accuracy'], res['full_batch_accuracy'], atol=1e-6)
  np.testing.assert_allclose(res['confidence'], res['full_batch_confidence'], rtol=1e-5)
  assert subnet_analysis.summarize(res)['full_batch_accuracy'] == res['full_batch_accuracy']
  with pytest.raises(ValueError, match='mode'):
    subnet_analysis.block_vulnerability(m.model, state.params, state.batch_stats, list, mesh,
                                        space=m.space, mode='all')


def test_subnets_under_batch_statistics_do_not_depend_on_the_device_count():
  # Each device normalised with its own share of the batch: on 8 devices a "batch of 500" was
  # statistics over ~62 examples, and the figures changed with the hardware.
  _, _, m, state = _setup()
  host = parallel.to_host(state)
  batches = [dict(_batch(i), mask=np.ones(16, np.float32)) for i in range(2)]
  masks = m.space.random_batch(jax.random.key(3), 2)
  results = []
  for n in (1, 4):
    mesh = parallel.make_mesh(jax.devices()[:n])
    params, stats = parallel.replicate((host.params, host.batch_stats), mesh)
    results.append(subnet_analysis.evaluate_subnets(m.model, params, stats, batches, mesh, masks,
                                                    bn='batch', chunk_size=2))
  np.testing.assert_allclose(results[0]['accuracy'], results[1]['accuracy'])
  np.testing.assert_allclose(results[0]['confidence'], results[1]['confidence'], rtol=1e-4)
  assert results[0]['full_batch_accuracy'] == results[1]['full_batch_accuracy']
  # and the batch size divides the examples asked for: none is skipped as padding
  # (limit, examples, devices) -> size: 1,000 in batches of 512 had evaluated only 512
  for args, size in [((512, 1000, 8), 496), ((512, 1000, 1), 500), ((512, 500, 1), 500),
                     ((64, 1000, 1), 50), ((512, 1016, 8), 504), ((512, 4, 8), 8)]:
    assert subnet_analysis.unpadded_batch_size(*args) == size, (args, size)


def test_subnet_measurements_run_without_dropout():
  # A WideResNet-style backbone with dropout: subnet analysis and EWS's search rewards use batch
  # statistics but are measurements, so dropout is off (they used to fail for want of its rng)
  # and they equal the same network without dropout.
  mesh = parallel.make_mesh(jax.devices()[:2])
  with_dropout, without = (models.create_model('resnet_tiny', num_classes=10, block='preact_basic',
                                               dropout_rate=rate) for rate in (0.5, 0.0))
  variables = random_variables(without)
  params, stats = variables['params'], {'main': variables['batch_stats']}
  space = subnets.subnet_space(without, 0.5, params=params)
  masks = space.random_batch(jax.random.key(0), 3)
  batch = _batch(0)
  results = [subnet_analysis.evaluate_subnets(
      model, params, stats, [dict(batch, mask=np.ones(16, np.float32))], mesh, masks, bn='batch',
      chunk_size=3) for model in (with_dropout, without)]
  np.testing.assert_allclose(results[0]['accuracy'], results[1]['accuracy'])
  np.testing.assert_allclose(results[0]['confidence'], results[1]['confidence'], rtol=1e-6)
  accs = [ews.subnet_accuracies(model, params, stats, batch['image'], batch['label'], masks)
          for model in (with_dropout, without)]
  np.testing.assert_allclose(accs[0], accs[1])
  # bn='batch' skips padded batches; when that leaves nothing, it says so instead of reporting 0.
  padded = dict(batch, mask=np.r_[np.ones(12), np.zeros(4)].astype(np.float32))
  with pytest.raises(ValueError, match="every batch was padded \\(12 examples\\)"):
    subnet_analysis.evaluate_subnets(without, params, stats, [padded], mesh, masks, bn='batch')


@pytest.mark.parametrize('name', ['ews_cifar', 'ews_imagenet', 'ews_pgd_at_cifar',
                                  'ews_trades_cifar', 'ews_trades_awp_cifar', 'awp_cifar'])
def test_configs_load_and_validate(name):
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{name}').get_config()
  train.validate_config(c)
  m = methods.get(c.method)(c)
  assert m.lam == (0.0 if c.method == 'awp' else c.ews_lambda)
  assert (m.awp_gamma > 0) == (name in ('ews_trades_awp_cifar', 'awp_cifar'))
  assert m.search_adversarial == (name != 'ews_cifar' and name != 'ews_imagenet')
  # The CPU-sized recipe's overrides are valid keys of the right types.
  c.dataset, c.model, c.num_epochs = 'folder:../shared/data/cifar10', 'resnet8_wide', 5.0
  c.lr_schedule, c.learning_rate, c.ews_search_every_epochs = 'onecycle', 0.2, 1.0
  c.warmup_epochs = 0.0  # the one-cycle rise is its own warm-up (ImageNet's 5 epochs = the run)
  train.validate_config(c)


@pytest.mark.parametrize('method,key,value,match', [
    ('ews', 'ews_search', 'best', 'ews_search'),
    ('ews', 'ews_rho', 1.0, 'ews_rho'),
    ('ews', 'ews_rho', 0.0, 'rho'),
    ('ews', 'ews_lambda', -1.0, 'ews_lambda'),
    ('ews', 'ews_kl_reduction', 'sum', "ews_kl_reduction.*'batchmean', 'mean'"),
    ('ews', 'ews_search_on', 'train', 'ews_search_on'),
    ('ews', 'ews_search_every_epochs', 0.0, 'ews_search_every_epochs'),
    ('awp', 'awp_gamma', 0.0, 'awp_gamma'),
    ('awp', 'awp_base', 'mart', 'awp_base'),
    ('ews_pgd_at', 'pgd_at_attack', 'nope', 'pgd_at_attack'),
    # a search-attack setting that would do nothing
    ('ews_pgd_at', 'ews_search_eps', 4 / 255,
     r"ews_search_eps only apply to the adversarial search of natural EWS .*on its base's own "
     r'attack \(the pgd_at_\* keys\)'),
    ('ews', 'ews_search_num_steps', 3, r'ews_search_num_steps .*this run searches on clean'),
    ('ews_trades', 'ews_search_step_size', 1 / 255, r"on its base's own attack \(the trades_"),
    ('ews_pgd_at', 'ews_search_craft_bn', 'running', r"ews_search_craft_bn only apply"),
    ('ews', 'ews_search_attack', 'madry_pgd20', r'ews_search_attack only apply.*on clean images'),
    ('ews', 'awp_gamma', 5e-3, r"adversarial training \(methods 'ews_pgd_at', 'ews_trades', "
     r"'awp'\); method 'ews' trains on clean images"),
])
def test_bad_config_values_raise(method, key, value, match):
  with pytest.raises(ValueError, match=match):
    methods.get(method)(tiny_config(method=method, **{key: value}))


def test_digits_end_to_end_with_a_search(tmp_path):
  config = tiny_config(method='ews', ews_search_every_epochs=0.25, **SMALL_CONTROLLER)
  _, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 22 and np.isfinite(results['eval_loss'])
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  last = [r for r in rows if r['kind'] == 'train'][-1]
  assert last['search_count'] >= 3  # searches after steps 6, 12, 18
  assert 0.0 <= last['search_controller_accuracy'] <= 1.0 and last['subnet_kl'] > 0
  # the command line's analysis of the run: random and controller subnets
  res = subnet_analysis.analyse_run(str(tmp_path), num_subnets=3, rho=0.25, max_examples=64)
  assert set(res['subnets']) == {'random', 'controller'}
  assert res['rho'] == 0.25 and res['controller_rho'] == 0.5
  assert len(res['subnets']['controller']['clean']['accuracy']) == 3
  # batch statistics skip padded batches, so 64 examples come in batches that fit them
  assert res['subnets']['random']['clean']['count'] == 64


def test_the_headline_ews_cifar_config_trains_on_tfds_cifar10(tmp_path):
  # `python -m jaxrobust.main --config=configs/ews_cifar.py`: dataset 'cifar10' through TFDS
  # (mocked: no download here), a controller search, the EWS step; only sizes shrunk.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from configs import ews_cifar  # pylint: disable=g-import-not-at-top
  config = ews_cifar.get_config()
  assert config.dataset == 'cifar10'
  config.update(dict(model='resnet_tiny', batch_size=16, eval_batch_size=16, num_epochs=2.0,
                     ews_search_every_epochs=1.0, checkpoint_every_steps=0, **SMALL_CONTROLLER))
  with tfds.testing.mock_data(num_examples=48):
    state, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 6 and np.isfinite(results['eval_loss'])
  # the search after epoch 1 ran; none after the last step, whose subnets nothing would train
  assert int(jax.device_get(state.extras['search']['count'])) == 1
