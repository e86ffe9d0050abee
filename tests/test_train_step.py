"""The data-parallel step: 8 devices equal 1 (synchronised BN), compiles once, BN rules."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrobust import methods, models, parallel, train
from jaxrobust.methods import common
from jaxrobust.methods.base import Context
from tests.conftest import tiny_config


def _setup(num_devices, sync=True, method='vanilla', method_cls=None, tx=None):
  config = tiny_config(sync_batch_stats=sync, method=method, weight_decay=5e-4,
                       learning_rate=0.1, lr_schedule='constant')
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  m = (method_cls or methods.get(method))(config)
  model = models.create_model('resnet_tiny', num_classes=10, affine_domains=m.affine_domains(),
                              bn_axis_name=parallel.AXIS if sync else None)
  tx = tx or optax.sgd(0.1, momentum=0.9)
  m.setup(Context(config=config, model=model, tx=tx, info=None, mesh=mesh, steps_per_epoch=10,
                  total_steps=10))

  class Info:
    image_shape = (8, 8, 3)
  state = train.create_train_state(config, m, model, tx, Info, jax.random.PRNGKey(0))
  return config, mesh, m, parallel.replicate(state, mesh)


def _batches(n, size=16):
  rng = np.random.default_rng(0)
  return [{'image': rng.uniform(size=(size, 8, 8, 3)).astype(np.float32),
           'label': rng.integers(0, 10, size).astype(np.int32)} for _ in range(n)]


def test_eight_devices_match_one_device_with_sync_bn():
  assert len(jax.devices()) >= 8, 'conftest should simulate 8 CPU devices'
  results = {}
  for n in (1, 8):
    config, mesh, m, state = _setup(n)
    step = train.make_train_step(m, config, mesh)
    for batch in _batches(3):
      state, metrics = step(state, parallel.shard_batch(batch, mesh))
    results[n] = parallel.to_host((state.params, state.batch_stats, metrics['loss']))
  chex.assert_trees_all_close(results[1], results[8], rtol=2e-5, atol=2e-6)


def test_per_device_bn_statistics_are_averaged_and_differ_from_sync():
  outs = {}
  for sync in (True, False):
    config, mesh, m, state = _setup(8, sync=sync)
    step = train.make_train_step(m, config, mesh)
    state, _ = step(state, parallel.shard_batch(_batches(1)[0], mesh))
    outs[sync] = parallel.to_host(state.batch_stats['main'])
  # same running mean (mean of per-device means = global mean), different variance
  mean_sync = outs[True]['stem_bn']['mean']
  np.testing.assert_allclose(outs[False]['stem_bn']['mean'], mean_sync, rtol=1e-4, atol=1e-6)
  assert not np.allclose(outs[False]['stem_bn']['var'], outs[True]['stem_bn']['var'])


def test_step_compiles_once():
  config, mesh, m, state = _setup(2)
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  for batch in _batches(4):
    state, _ = step(state, parallel.shard_batch(batch, mesh))
  assert int(state.step) == 4


def test_step_updates_only_main_statistics():
  config, mesh, m, state = _setup(2)
  stats = dict(state.batch_stats)
  stats['aux'] = jax.tree.map(jnp.copy, stats['main'])  # never alias donated buffers
  state = state.replace(batch_stats=stats)
  before = parallel.to_host(state.batch_stats)
  step = train.make_train_step(m, config, mesh)
  state, _ = step(state, parallel.shard_batch(_batches(1)[0], mesh))
  after = parallel.to_host(state.batch_stats)
  chex.assert_trees_all_equal(before['aux'], after['aux'])
  assert not np.allclose(before['main']['stem_bn']['mean'], after['main']['stem_bn']['mean'])


def test_batch_size_must_divide_devices():
  mesh = parallel.make_mesh(jax.devices()[:8])
  with pytest.raises(ValueError, match='multiple of the number of devices \\(8\\)'):
    parallel.check_batch_size(100, mesh)
  assert parallel.check_batch_size(128, mesh) == 16


def test_skip_nonfinite_policy_keeps_the_state():
  config, mesh, m, state = _setup(
      2, tx=optax.sgd(optax.cosine_decay_schedule(0.1, 10), momentum=0.9))
  config.nonfinite = 'skip'
  step = train.make_train_step(m, config, mesh)
  batch = _batches(1)[0]
  batch['image'][0, 0, 0, 0] = np.nan
  before = parallel.to_host(state.params)
  def counts(s):
    return [int(x.count) for x in jax.tree.leaves(
        parallel.to_host(s.opt_state), is_leaf=lambda t: isinstance(t, optax.ScaleByScheduleState))
            if isinstance(x, optax.ScaleByScheduleState)]
  counts_before = counts(state)
  stats_before = parallel.to_host(state.batch_stats)

  def traces(s):   # SGD's momentum
    return [x.trace for x in jax.tree.leaves(parallel.to_host(s.opt_state),
                                             is_leaf=lambda t: isinstance(t, optax.TraceState))
            if isinstance(x, optax.TraceState)]
  traces_before = traces(state)
  state, metrics = step(state, parallel.shard_batch(batch, mesh))
  assert float(metrics['finite']) == 0.0 and int(state.step) == 1
  chex.assert_trees_all_equal(before, parallel.to_host(state.params))
  # nor the BN statistics (the NaN image made this step's NaN) or the momentum
  chex.assert_trees_all_equal(stats_before, parallel.to_host(state.batch_stats))
  assert traces_before
  chex.assert_trees_all_equal(traces_before, traces(state))
  assert np.isnan(float(jnp.asarray(metrics['loss'])))
  # the learning-rate schedule's count advanced with the step, the update did not apply
  assert counts_before and counts(state) == [c + 1 for c in counts_before]


def test_skip_keeps_adams_own_count_and_advances_only_the_schedule():
  tx = optax.adam(optax.cosine_decay_schedule(0.1, 10))
  config, mesh, m, state = _setup(2, tx=tx)
  config.nonfinite = 'skip'
  step = train.make_train_step(m, config, mesh)
  batch = _batches(1)[0]
  batch['image'][0, 0, 0, 0] = np.nan
  state, _ = step(state, parallel.shard_batch(batch, mesh))
  adam, schedule = parallel.to_host(state.opt_state)[0], parallel.to_host(state.opt_state)[1]
  assert int(adam.count) == 0      # bias correction as if the step had not happened
  assert int(schedule.count) == 1  # the learning rate moves on with state.step


def test_stream_keys_are_never_step_keys():
  # The methods' named streams (device-independent draws, searches, restarts) against the keys
  # of the first 4096 steps on 4 devices: a stream tag below 2**31 would meet some step's key.
  run_key = jax.random.PRNGKey(0)
  step_keys = jax.vmap(lambda s: jax.vmap(lambda d: train.step_key(run_key, s, d))(
      jnp.arange(4)))(jnp.arange(4096)).reshape(-1, 2)
  names = ('ews/subnet', 'ews/search', 'ews/compare', 'ews/restart', 'mixprop/mixing',
           'ant/restart')
  streams = jnp.stack([common.stream_key(run_key, n, c) for n in names for c in range(4)])
  assert len({tuple(k) for k in np.asarray(streams).tolist()}) == len(streams)
  matches = jnp.all(streams[:, None, :] == step_keys[None, :, :], axis=-1)
  assert not bool(jnp.any(matches))
  # device-independent and host/device agnostic
  host = common.stream_key(np.asarray(run_key), 'ews/subnet', 3)
  np.testing.assert_array_equal(host, streams[3])


class _OverflowingExtras(methods.get('vanilla')):
  """Vanilla plus a value in ``extras`` that overflows at the first step."""

  def init_extras(self, rng, params, batch_stats):
    return {'scale': jnp.ones((), jnp.float32)}

  def train_step(self, state, batch, rng):
    state, metrics = super().train_step(state, batch, rng)
    return state.replace(extras={'scale': state.extras['scale'] * jnp.inf}), metrics


def test_non_finite_extras_make_a_non_finite_update():
  # Methods keep trained things in extras (heads, generators, a controller): an overflow there
  # must be caught (and skipped) like one in the parameters.
  config, mesh, m, state = _setup(2, method_cls=_OverflowingExtras)
  config.nonfinite = 'skip'
  step = train.make_train_step(m, config, mesh)
  state, metrics = step(state, parallel.shard_batch(_batches(1)[0], mesh))
  assert np.isfinite(float(metrics['loss']))
  assert float(metrics['state_finite']) == 0.0 and float(metrics['finite']) == 0.0
  assert float(state.extras['scale']) == 1.0 and int(state.step) == 1


def test_init_from_starts_the_auxiliary_affine_parameters_from_the_shared_ones():
  """Fine-tuning AdvProp/MixProp from a vanilla run: scale_aux/bias_aux take the run's scale/bias
  (the aux BN's statistics take its main ones), not identity scale and zero bias."""
  source = {'block': {'bn1': {'scale': np.full(3, 1.5, np.float32),
                              'bias': np.full(3, 0.5, np.float32)}},
            'classifier': {'kernel': np.ones((3, 2), np.float32)}}
  target = {'block': {'bn1': {'scale': jnp.ones(3), 'bias': jnp.zeros(3),
                              'scale_aux': jnp.ones(3), 'bias_aux': jnp.zeros(3)}},
            'classifier': {'kernel': jnp.zeros((3, 2)), 'bias': jnp.zeros(2)}}
  merged, copied = train._merge(target, source, 'params')  # pylint: disable=protected-access
  bn = merged['block']['bn1']
  np.testing.assert_array_equal(bn['scale_aux'], 1.5)
  np.testing.assert_array_equal(bn['bias_aux'], 0.5)
  np.testing.assert_array_equal(bn['scale'], 1.5)
  np.testing.assert_array_equal(merged['classifier']['bias'], 0.0)  # not in the source: kept
  assert copied == 5
