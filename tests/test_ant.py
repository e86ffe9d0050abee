"""ANT: the batch fed to the classifier, experience replay, frozen classifier in generator steps,
restarts, one compilation, configs, a digits run, and eps* against adversarial noise."""

import importlib
import os
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrobust import checkpointing, methods, models, parallel, train
from jaxrobust import data as data_lib
from jaxrobust.evaluation import adversarial_noise
from jaxrobust.methods import ant, common
from tests.conftest import method_with_train_state, tiny_config

EPS = 1.5


def _setup(num_devices=1, **overrides):
  cfg = dict(ant_eps=EPS, ant_gen_learning_rate=0.05, learning_rate=0.1, lr_schedule='constant')
  cfg.update(overrides)
  config = tiny_config(method='ant', **cfg)
  return (config,) + method_with_train_state(config, num_devices=num_devices, total_steps=100)


def _batch(seed, size=20):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(size=(size, 8, 8, 3)).astype(np.float32),
          'label': rng.integers(0, 10, size).astype(np.int32)}


def _edge_images():
  """20 images; in each 10-image device shard the noisy slots 5-9 (5-7 current generator, 8-9
  replay) hold images at and near the bounds, where clipping bites, and ordinary ones."""
  rng = np.random.default_rng(3)
  x = rng.uniform(size=(20, 8, 8, 3)).astype(np.float32)
  mixed = rng.choice([0.0, 1.0, 1e-3, 1 - 1e-3], size=(8, 8, 3))
  for i, v in {5: 0.0, 6: 1.0, 8: 1e-3, 9: 1 - 1e-3, 15: 1e-3, 16: 1 - 1e-3, 17: mixed,
               18: 0.0, 19: 1.0}.items():
    x[i] = v
  return x


def _norms(a, b):
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return np.sqrt(np.sum(d.reshape(d.shape[0], -1) ** 2, axis=1))


def _reachable(x, delta):
  """Largest applied L2 norm along ``delta``: every moving pixel pushed to the bound it faces."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  d = np.asarray(delta).reshape(len(x), -1)
  room = np.where(d > 0, 1.0 - x, np.where(d < 0, x, 0.0))
  return np.sqrt(np.sum(room ** 2, axis=1))


def _perturbed(extras, seed=0):
  """Generator parameters moved away from the near-identity initialisation (a "trained" one).

  0.2-scale weights keep the N(0,1) residual significant, so every image has room to move by
  eps; an output of one sign everywhere could not move an all-0 or all-1 image at all.
  """
  leaves, treedef = jax.tree.flatten(extras['gen'])
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(treedef, [l + 0.2 * jax.random.normal(k, l.shape)
                                      for l, k in zip(leaves, keys)])


@pytest.fixture(scope='module')
def shared():
  """One ANT method on 2 devices whose step and restart hook compile once for several tests."""
  config, mesh, m, model, state = _setup(
      num_devices=2, ant_replay_every=2, ant_replay_size=2, ant_gen_steps=2,
      ant_restart_every=5, ant_restart_steps=8, ant_restart_chunk=4, ant_gen_learning_rate=0.1)
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  return types.SimpleNamespace(config=config, mesh=mesh, m=m, model=model,
                               host=parallel.to_host(state),
                               step=train.make_train_step(m, config, mesh))


def test_batch_fed_to_the_classifier_has_norm_eps_after_clipping(shared):
  """The exact batches of a real 2-device step: the step's loss is the mean over devices of the
  CE of one BN-training pass over each device's composed batch; its clean part is the input, and
  every noisy image is exactly eps away after clipping (also at and near 0 and 1), or as far as
  its noise direction can move it at all when that is less."""
  m, mesh, host = shared.m, shared.mesh, shared.host
  # A non-trivial current generator and a full buffer of two other generators.
  extras = dict(host.extras)
  for i in range(2):
    replay, count = ant.push_replay(extras['replay'], extras['replay_count'],
                                    _perturbed(extras, seed=10 + i))
    extras.update(replay=replay, replay_count=count)
  extras['gen'] = _perturbed(extras, seed=1)
  host = host.replace(extras=jax.tree.map(np.asarray, extras))
  batch = {'image': _edge_images(), 'label': _batch(0)['label']}
  new_state, metrics = shared.step(parallel.replicate(host, mesh),
                                   parallel.shard_batch(batch, mesh))
  # The generator after the step's generator phase (the classifier phase leaves it alone).
  gen = parallel.to_host(new_state.extras['gen'])
  assert not np.allclose(gen['conv_3']['kernel'], host.extras['gen']['conv_3']['kernel'])

  compose = jax.jit(m.compose_batch)
  noise = jax.jit(lambda g, r, x: ant.generate_noise(g, r, x, EPS, generator=m.generator))
  losses = []
  for d in range(2):  # each device composes its own shard with its own key
    x_d = batch['image'][10 * d:10 * (d + 1)]
    rng = jax.random.fold_in(jax.random.fold_in(host.rng, 0), d)
    _, mix_rng, _ = jax.random.split(rng, 3)
    x, source, index = compose({**host.extras, 'gen': gen}, jnp.asarray(x_d), mix_rng)
    logits, _ = models.apply_model(shared.model, host.params, host.batch_stats, x, train=True)
    losses.append(float(common.cross_entropy(logits, batch['label'][10 * d:10 * (d + 1)])))
    x, source, index = np.asarray(x), np.asarray(source), np.asarray(index)
    np.testing.assert_array_equal(np.bincount(source), [5, 3, 2])   # 50 / 30 / 20 %
    np.testing.assert_array_equal(x[:5], x_d[:5])
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert np.all((index[8:] >= 0) & (index[8:] < 2)) and np.all(index[:8] == -1)
    # The noise directions, rebuilt from the same keys: the current (updated) generator, and
    # for the replayed images the buffer entry that index names.
    cur_rng, rep_rng = jax.random.split(mix_rng)
    d_cur = m.generator.apply({'params': gen}, m.generator.sample_latent(cur_rng, (3, 8, 8, 3)))
    z_rep = m.generator.sample_latent(jax.random.split(rep_rng)[1], (2, 8, 8, 3))
    d_rep = [m.generator.apply({'params': jax.tree.map(lambda r: r[i], host.extras['replay'])},
                               z_rep[k:k + 1])[0] for k, i in enumerate(index[8:])]
    delta = np.concatenate([np.asarray(d_cur), np.stack(d_rep)])
    # Applied (post-clipping) norm = eps exactly, unless even pushing every pixel to the bound
    # its noise points at moves the image less (e.g. an all-0 image and a darkening generator).
    reach = _reachable(x_d[5:], delta)
    np.testing.assert_allclose(_norms(x[5:], x_d[5:]), np.minimum(EPS, reach), atol=1e-4)
    # The replayed images (at / near 0 and 1, generators of mixed sign) reach eps exactly.
    assert np.all(reach[3:] > EPS)
    np.testing.assert_allclose(x[5:8], np.asarray(noise(gen, cur_rng, jnp.asarray(x_d[5:8]))),
                               atol=1e-6)
  np.testing.assert_allclose(float(metrics['loss']), np.mean(losses), rtol=1e-5)


def _pattern_generator(channel, sign, base):
  """Generator parameters whose output is dominated by +-1000 on one channel."""
  params = jax.tree.map(jnp.zeros_like, base)
  bias = np.zeros(3, np.float32)
  bias[channel] = 1000.0 * sign
  params['conv_3']['bias'] = jnp.asarray(bias)
  return params


def _identify(x_noisy, x):
  """(channel, sign) that carries each image's perturbation."""
  d = (np.asarray(x_noisy) - np.asarray(x)).reshape(x.shape[0], -1, 3).sum(axis=1)
  channel = np.argmax(np.abs(d), axis=1)
  return channel, np.sign(d[np.arange(len(d)), channel])


def test_replay_samples_come_from_the_stored_generators():
  gen = ant.make_generator('1x1')
  base = ant.init_generator(gen, jax.random.PRNGKey(0), 3)
  patterns = [(c, s) for s in (1, -1) for c in range(3)]   # six distinguishable generators
  replay = jax.tree.map(lambda p: jnp.zeros((5,) + p.shape, p.dtype), base)
  count = jnp.zeros((), jnp.int32)
  for c, s in patterns[:4]:
    replay, count = ant.push_replay(replay, count, _pattern_generator(c, s, base))
  current = _pattern_generator(*patterns[5], base)
  x = jnp.full((96, 4, 4, 3), 0.5, jnp.float32)
  fn = jax.jit(lambda r, n, k: ant.replay_noise(gen, r, n, current, k, x, 1.0))

  x_noisy, idx = fn(replay, count, jax.random.PRNGKey(1))
  idx = np.asarray(idx)
  assert set(idx) == {0, 1, 2, 3}                 # only the 4 filled of 5 slots, each used
  channel, sign = _identify(x_noisy, x)
  expected = np.array(patterns)[idx]
  np.testing.assert_array_equal(channel, expected[:, 0])   # each image's noise is its entry's
  np.testing.assert_array_equal(sign, expected[:, 1])
  np.testing.assert_allclose(_norms(x_noisy, x), 1.0, atol=1e-4)

  # The ring buffer: two more pushes overwrite slot 0 (the oldest) once all 5 are filled.
  for c, s in patterns[4:6]:
    replay, count = ant.push_replay(replay, count, _pattern_generator(c, s, base))
  x_noisy, idx = fn(replay, count, jax.random.PRNGKey(2))
  channel, sign = _identify(x_noisy, x)
  slots = [patterns[5], patterns[1], patterns[2], patterns[3], patterns[4]]
  np.testing.assert_array_equal(np.stack([channel, sign], 1), np.array(slots)[np.asarray(idx)])
  assert int(count) == 6 and set(np.asarray(idx)) == set(range(5))

  # An empty buffer: the current generator stands in (index -1).
  x_noisy, idx = fn(jax.tree.map(jnp.zeros_like, replay), jnp.zeros((), jnp.int32),
                    jax.random.PRNGKey(3))
  assert np.all(np.asarray(idx) == -1)
  channel, sign = _identify(x_noisy, x)
  assert np.all(channel == 2) and np.all(sign == -1)


def test_replay_buffer_stores_past_generators_and_step_compiles_once(shared):
  state = parallel.replicate(shared.host, shared.mesh)
  gens = []
  for i in range(6):
    state, metrics = shared.step(state, parallel.shard_batch(_batch(i), shared.mesh))
    gens.append(parallel.to_host(state.extras['gen']))
  assert int(state.step) == 6 and int(state.extras['replay_count']) == 3
  assert float(metrics['replay_filled']) == 2.0
  replay = parallel.to_host(state.extras['replay'])
  # Saved after steps 2, 4 and 6 into slots 0, 1, 0 of the 2-slot ring buffer.
  chex.assert_trees_all_equal(jax.tree.map(lambda r: r[0], replay), gens[5])
  chex.assert_trees_all_equal(jax.tree.map(lambda r: r[1], replay), gens[3])
  assert not np.allclose(gens[3]['conv_0']['kernel'], gens[5]['conv_0']['kernel'])
  assert {'clean_accuracy', 'current_accuracy', 'replay_accuracy', 'generator_ce'} <= set(metrics)
  # (chex.assert_max_traces(n=1) wraps the step: this test and the previous one share its one
  # compilation; a second trace would have raised.)


def test_batch_statistics_generator_steps_change_no_classifier_parameter_or_statistic():
  # The default inference-mode generator update is checked by the restart-hook test, which runs
  # the same generator_update; batch statistics (train-mode BN) is where updates could leak.
  _, mesh, m, _, state = _setup(ant_generator_bn='batch', ant_gen_steps=3)
  before = parallel.to_host(state)
  phase = parallel.spmd(m.generator_phase, mesh, in_specs=(P(), P(parallel.AXIS), P()),
                        out_specs=(P(), P()))
  after, ces = phase(state, parallel.shard_batch(_batch(0, size=8), mesh),
                     jax.random.PRNGKey(5))
  after = parallel.to_host(after)
  chex.assert_trees_all_equal((after.params, after.opt_state, after.batch_stats, after.step),
                              (before.params, before.opt_state, before.batch_stats, before.step))
  assert not np.allclose(after.extras['gen']['conv_3']['kernel'],
                         before.extras['gen']['conv_3']['kernel'])
  assert ces.shape == (3,) and np.all(np.isfinite(np.asarray(ces)))


@pytest.mark.parametrize('generator_bn', ant.GENERATOR_BN)
def test_the_generator_attacks_the_classifier_in_its_configured_bn_mode(generator_bn):
  """The cross-entropy the generator ascends is the classifier's with running statistics
  (default, the deployed model) or with the noisy batch's own statistics ('batch')."""
  _, mesh, m, model, state = _setup(ant_generator_bn=generator_bn)
  host, batch, rng = parallel.to_host(state), _batch(0, size=8), jax.random.PRNGKey(5)
  ce_of_update = parallel.spmd(
      lambda s, b, r: m.generator_update(s.extras['gen'], s.extras['gen_opt'], s.params,
                                         s.batch_stats, b['image'], b['label'], r)[2],
      mesh, in_specs=(P(), P(parallel.AXIS), P()), out_specs=P())
  ce = float(ce_of_update(state, parallel.shard_batch(batch, mesh), rng))
  x_noisy = ant.generate_noise(host.extras['gen'], jax.random.split(rng)[0],
                               jnp.asarray(batch['image']), EPS, generator=m.generator)
  expected = {bn: float(common.cross_entropy(models.apply_model(
      model, host.params, host.batch_stats, x_noisy, train=bn == 'batch', update_stats=False)[0],
      jnp.asarray(batch['label']))) for bn in ant.GENERATOR_BN}
  assert abs(expected['running'] - expected['batch']) > 1e-3   # the two modes differ here
  assert ce == pytest.approx(expected[generator_bn], rel=1e-5)


def test_restart_hook_trains_a_fresh_generator_against_the_frozen_classifier(shared):
  m, mesh, host, model = shared.m, shared.mesh, shared.host, shared.model
  logits_fn = lambda x: models.apply_model(model, host.params, host.batch_stats, x,
                                           train=False)[0]
  # Labels the classifier gets right (its own predictions), so there is something to destroy.
  data = [_batch(100 + i, size=16) for i in range(4)]
  for d in data:
    d['label'] = np.asarray(jnp.argmax(logits_fn(jnp.asarray(d['image'])), -1), np.int32)

  seeds = []

  def batches(num, seed):
    seeds.append(seed)
    for i in range(num):
      yield parallel.shard_batch(data[i % len(data)], mesh)

  m.ctx.train_batches = batches
  # The largest config seed: the restart's data seed once overflowed the pipeline's int64 seeds.
  saved_seed, m.config.seed = m.config.seed, 2**32 - 1
  assert [h.every_steps for h in m.hooks()] == [5]
  extras = dict(host.extras)
  extras['gen'] = _perturbed(extras)          # the "old" generator that gets replaced
  state = parallel.replicate(host.replace(extras=jax.tree.map(np.asarray, extras)), mesh)
  before = parallel.to_host(state)
  after = parallel.to_host(m.hooks()[0].fn(state))
  frozen = lambda s: (s.params, s.opt_state, s.batch_stats, s.step, s.extras['replay'])
  chex.assert_trees_all_equal(frozen(after), frozen(before))
  new = after.extras['gen']
  assert not np.allclose(new['conv_0']['kernel'], before.extras['gen']['conv_0']['kernel'])
  assert int(after.extras['gen_opt'][0].count) == 8          # a fresh Adam state, 8 steps
  # Trained adversarially: a higher CE than a generator fresh from initialisation.
  x = jnp.asarray(np.concatenate([d['image'] for d in data]))
  y = jnp.asarray(np.concatenate([d['label'] for d in data]))
  ce = jax.jit(lambda g, k: common.cross_entropy(
      logits_fn(ant.generate_noise(g, k, x, EPS, generator=m.generator)), y))
  keys = jax.random.split(jax.random.PRNGKey(9), 4)
  fresh = ant.init_generator(m.generator, jax.random.PRNGKey(9), 3)
  ce_new, ce_fresh = (np.mean([float(ce(g, k)) for k in keys]) for g in (new, fresh))
  assert ce_new > ce_fresh + 0.05, (ce_new, ce_fresh)
  # The same state restarts the same way (resumed runs stay bit-identical).
  chex.assert_trees_all_equal(parallel.to_host(m.hooks()[0].fn(state)).extras['gen'], new)
  m.config.seed = saved_seed
  assert len(seeds) == 2 and seeds[0] == seeds[1] and 0 <= seeds[0] < data_lib.MAX_SEED, seeds


def test_validate_rejects_bad_values():
  for bad, match in (({'ant_generator': '5x5'}, "ant_generator '5x5'.*1x1, 3x3"),
                     ({'ant_eps': -1.0}, 'ant_eps'),
                     ({'ant_gen_optimizer': 'rmsprop'}, 'ant_gen_optimizer'),
                     ({'ant_replay_fraction': 0.3}, 'sum to 1'),
                     ({'ant_replay_size': 0}, 'ant_replay_size'),
                     ({'ant_generator_bn': 'eval'}, 'ant_generator_bn'),
                     ({'ant_gen_learning_rate': 0.0}, 'ant_gen_learning_rate')):
    with pytest.raises(ValueError, match=match):
      methods.get('ant')(tiny_config(method='ant', **bad))
  # The radius is checked against the image size once it is known: the digits are 8x8x1.
  from jaxrobust import data  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods.base import Context  # pylint: disable=g-import-not-at-top
  for eps, ok in ((7.9, True), (8.0, False)):
    config = tiny_config(method='ant', ant_eps=eps)
    setup = lambda: methods.get('ant')(config).setup(Context(  # pylint: disable=cell-var-from-loop
        config=config, model=None, tx=None, mesh=None, info=data.get_info(config),
        steps_per_epoch=1, total_steps=1))
    if ok:
      setup()
    else:
      with pytest.raises(ValueError, match=r'ant_eps=8 cannot be reached on \(8, 8, 1\) images'):
        setup()


@pytest.mark.parametrize('name,kind', [('ant_cifar', '1x1'), ('ant3x3_cifar', '3x3'),
                                       ('ant_imagenet', '1x1')])
def test_configs_load_and_validate(name, kind):
  c = importlib.import_module(f'configs.{name}').get_config()
  train.validate_config(c)
  m = methods.get(c.method)(c)
  assert c.ant_generator == kind
  assert m.generator.kernel_3x3_layer == (1 if kind == '3x3' else None)
  assert (c.ant_clean_fraction, c.ant_current_fraction, c.ant_replay_fraction) == (0.5, 0.3, 0.2)
  # Each config's radius is the default rule at its image size (sigma 0.18 / 0.5 equivalents).
  shape = (224, 224, 3) if name == 'ant_imagenet' else (32, 32, 3)
  assert c.ant_eps == pytest.approx(ant.default_eps(shape), rel=0.01)


def test_default_eps_follows_the_corruption_tables_size_rule():
  """CIFAR-sized images (largest side <= 64) get the sigma 0.18 radius, larger ones sigma 0.5's."""
  assert ant.default_eps((32, 32, 3)) == pytest.approx(0.166 * np.sqrt(3072))
  assert ant.default_eps((64, 48, 3)) == pytest.approx(0.166 * np.sqrt(64 * 48 * 3))
  assert ant.default_eps((65, 65, 3)) == pytest.approx(0.35 * np.sqrt(65 * 65 * 3))
  assert ant.default_eps((224, 224, 3)) == pytest.approx(135.8, abs=0.05)


def test_digits_end_to_end_from_a_vanilla_checkpoint_then_adversarial_eps_star(tmp_path,
                                                                              monkeypatch):
  """ANT fine-tuned from a vanilla checkpoint on digits (replay, restarts, checkpointed buffer),
  then the adversarial-noise eps* of the finished run from its workdir (two generators, each on
  its own training-batch order, as the paper's generators with different seeds)."""
  vanilla_dir, ant_dir = str(tmp_path / 'vanilla'), str(tmp_path / 'ant')
  config = tiny_config(method='vanilla')
  info, method, model, tx, mesh, _ = train.build(config)
  vanilla = train.create_train_state(config, method, model, tx, info, jax.random.PRNGKey(7))
  ckpt = checkpointing.Checkpointer(vanilla_dir)
  ckpt.save(1, parallel.replicate(vanilla, mesh))
  ckpt.close()

  state, res = train.train_and_evaluate(
      tiny_config(method='ant', init_from=vanilla_dir, num_epochs=0.5, ant_replay_every=3,
                  ant_replay_size=4, ant_restart_every=5, ant_restart_steps=2,
                  ant_restart_chunk=2, checkpoint_every_steps=100, max_eval_examples=256),
      ant_dir)
  steps = res['step']
  assert steps >= 6 and np.isfinite(res['eval_top1'])
  saved, _ = checkpointing.load_arrays(ant_dir)
  assert int(saved['extras']['replay_count']) == steps // 3      # the buffer is checkpointed
  chex.assert_trees_all_equal(saved['extras']['replay'], parallel.to_host(state.extras['replay']))

  orders = []
  train_iterator = data_lib.train_iterator
  monkeypatch.setattr(data_lib, 'train_iterator',
                      lambda *a, **kw: orders.append(kw['seed']) or train_iterator(*a, **kw))
  result = adversarial_noise.evaluate_run(ant_dir, eps=1.0, steps=2, batch_size=64, num_eval=64,
                                          num_coarse=4, num_bisect=3, gaussian=False, seed=5,
                                          num_generators=2)
  assert orders == [6, 7]
  assert os.path.exists(os.path.join(ant_dir, 'adversarial_noise.json'))
  assert result['method'] == 'ant' and len(result['per_generator']) == 2
  assert result['per_generator'][0]['num_images'] == 64
  assert result['eps_star'] >= 0 and 'gaussian' not in result


def test_adversarial_noise_eps_star_on_a_tiny_model():
  """A model that predicts class 0 when channel 0 is bright: Gaussian directions barely move the
  channel mean, a learned 1x1 generator shifts it, so eps*_AN << eps*_GN (as in Table 2)."""
  def logits_fn(x):
    score = 40.0 * (jnp.mean(x[..., 0], axis=(1, 2)) - 0.5)
    return jnp.stack([score, -score], axis=-1)

  rng = np.random.default_rng(0)

  def make(n):
    x = rng.uniform(0.2, 0.8, size=(n, 4, 4, 3)).astype(np.float32)
    x[..., 0] = 0.5 + rng.uniform(0.05, 0.15, size=(n, 1, 1))
    return {'image': x, 'label': np.zeros(n, np.int32)}

  train_batches = [make(32) for _ in range(40)]
  eval_batches = [make(64) for _ in range(2)]
  result = adversarial_noise.adversarial_eps_star(
      logits_fn, train_batches, eval_batches, jax.random.PRNGKey(0), eps=0.5, steps=40,
      learning_rate=0.05, num_coarse=8, num_bisect=8)
  stats = result['per_generator'][0]
  assert stats['generator_ce_end'] > stats['generator_ce_start'] + 0.5
  assert stats['frac_misclassified_clean'] == 0.0 and stats['num_images'] == 128
  # The best direction (all of channel 0 down) needs ||delta|| = 4 * margin in [0.2, 0.6].
  assert 0.2 <= result['eps_star'] <= 1.0
  assert result['eps_star'] < 0.5 * result['gaussian']['eps_star']
  with pytest.raises(ValueError, match='ran out'):
    adversarial_noise.train_noise_generator(logits_fn, train_batches[:2], jax.random.PRNGKey(0),
                                            eps=0.5, steps=4, chunk=4)


def test_every_generator_and_model_of_an_evaluation_reuses_one_compiled_program():
  # The frozen model (a Partial holding its weights) and each generator's parameters are
  # inputs of the compiled programs, not constants baked into new ones.
  traces = []

  def logits(weight, x):
    traces.append(1)  # runs only while JAX traces
    score = weight * (jnp.mean(x[..., 0], axis=(1, 2)) - 0.5)
    return jnp.stack([score, -score], axis=-1)

  rng = np.random.default_rng(1)
  batches = [{'image': rng.uniform(size=(8, 4, 4, 3)).astype(np.float32),
              'label': np.zeros(8, np.int32)} for _ in range(2)]
  gen = ant.make_generator('1x1')
  for i, weight in enumerate((40.0, 20.0)):
    model = jax.tree_util.Partial(logits, jnp.float32(weight))
    params, _ = adversarial_noise.train_noise_generator(
        model, batches, jax.random.PRNGKey(i), eps=0.5, steps=2, chunk=2, generator=gen)
    from jaxrobust.evaluation import noise_robustness  # pylint: disable=g-import-not-at-top
    noise_robustness.median_eps_star(model, batches, jax.random.PRNGKey(i), num_coarse=4,
                                     num_bisect=2,
                                     noise=adversarial_noise.generator_directions(gen, params))
    if i == 0:
      first = len(traces)
  assert first > 0 and len(traces) == first
