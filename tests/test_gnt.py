"""GNT: half the batch clean, per-image sigma from the set, the step's batch, fine-tuning."""

import importlib
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import checkpointing, methods, models, parallel, train
from jaxrobust.methods import common, gnt
from tests.conftest import method_with_train_state, tiny_config

SIGMAS = (0.02, 0.05, 0.1)



def _noise_batch(noise, sigmas=SIGMAS, clean_fraction=0.5):
  return jax.jit(lambda x, r: gnt.noise_batch(x, r, noise=noise, sigmas=sigmas,
                                              clean_fraction=clean_fraction))


@pytest.mark.parametrize('noise', ['gaussian', 'speckle'])
def test_half_clean_and_per_image_sigma_from_the_set(noise):
  x = jnp.full((64, 16, 16, 3), 0.5, jnp.float32)
  mixed, sigma = _noise_batch(noise)(x, jax.random.PRNGKey(1))
  mixed, sigma = np.asarray(mixed), np.asarray(sigma)
  np.testing.assert_array_equal(mixed[:32], 0.5)      # the first half is untouched
  assert np.all(sigma[:32] == 0)
  noisy_sigma = sigma[32:]
  # drawn per image from the set, every value used
  np.testing.assert_allclose(np.unique(noisy_sigma), SIGMAS, rtol=1e-6)
  # Far from the bounds nothing clips: the residual's std is sigma (gaussian) or 0.5 sigma
  # (speckle, x * sigma * z with x = 0.5), image by image.
  scale = 1.0 if noise == 'gaussian' else 0.5
  std = (mixed[32:] - 0.5).reshape(32, -1).std(axis=1)
  np.testing.assert_allclose(std, scale * noisy_sigma, rtol=0.1)
  assert np.all(np.abs((mixed[32:] - 0.5).reshape(32, -1).mean(axis=1)) < 0.2 * noisy_sigma)


def test_single_sigma_clipping_and_odd_batches():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.choice([0.0, 1.0, 0.001, 0.999], size=(7, 8, 8, 3)).astype(np.float32))
  mixed, sigma = _noise_batch('gaussian', sigmas=(0.5,))(x, jax.random.PRNGKey(0))
  mixed = np.asarray(mixed)
  assert mixed.min() >= 0.0 and mixed.max() <= 1.0
  assert gnt.num_clean(7, 0.5) == 4                     # round(3.5) -> 4 (banker's rounding)
  np.testing.assert_array_equal(mixed[:4], np.asarray(x)[:4])
  np.testing.assert_array_equal(np.asarray(sigma), [0, 0, 0, 0, 0.5, 0.5, 0.5])
  assert not np.allclose(mixed[4:], np.asarray(x)[4:])


def _setup(num_devices=1, channels=3, **overrides):
  config = tiny_config(method='gnt', gnt_sigmas=SIGMAS, learning_rate=0.1,
                       lr_schedule='constant', **overrides)
  return (config,) + method_with_train_state(config, num_devices=num_devices,
                                             image_shape=(8, 8, channels))


def _batch(seed, size=16):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(size=(size, 8, 8, 3)).astype(np.float32),
          'label': rng.integers(0, 10, size).astype(np.int32)}


def test_step_trains_on_the_mixed_batch_and_compiles_once():
  config, mesh, m, model, state = _setup()
  host = parallel.to_host(state)
  m.train_step = chex.assert_max_traces(m.train_step, n=1)
  step = train.make_train_step(m, config, mesh)
  batch = _batch(0)
  state, metrics = step(state, parallel.shard_batch(batch, mesh))
  # The loss is the CE of one BN-training pass over exactly noise_batch's output (same rng).
  rng = jax.random.fold_in(jax.random.fold_in(host.rng, 0), 0)
  noise_rng, _ = jax.random.split(rng)
  x, _ = gnt.noise_batch(jnp.asarray(batch['image']), noise_rng, noise='gaussian',
                         sigmas=SIGMAS, clean_fraction=0.5)
  logits, new_stats = models.apply_model(model, host.params, host.batch_stats, x, train=True)
  expected = common.cross_entropy(logits, jnp.asarray(batch['label']))
  np.testing.assert_allclose(float(metrics['loss']), float(expected), rtol=1e-5)
  # ... and the running statistics are that pass's update of `main`.
  chex.assert_trees_all_close(parallel.to_host(state.batch_stats['main']),
                              new_stats['main'], rtol=1e-5, atol=1e-6)
  assert {'clean_accuracy', 'noisy_accuracy'} <= set(metrics)
  for seed in (1, 2):
    state, metrics = step(state, parallel.shard_batch(_batch(seed), mesh))
  assert int(state.step) == 3 and np.isfinite(float(metrics['loss']))


def test_validate_rejects_bad_values():
  for bad, match in (({'gnt_noise': 'uniform'}, "gnt_noise 'uniform'.*gaussian, speckle"),
                     ({'gnt_sigmas': (0.1, -0.2)}, 'gnt_sigmas'),
                     ({'gnt_sigmas': ()}, 'gnt_sigmas'),
                     ({'gnt_clean_fraction': 1.0}, 'gnt_clean_fraction')):
    with pytest.raises(ValueError, match=match):
      methods.get('gnt')(tiny_config(method='gnt', **bad))


@pytest.mark.parametrize('name', ['gnt_cifar', 'gnt_imagenet'])
def test_configs_load_and_validate(name):
  c = importlib.import_module(f'configs.{name}').get_config()
  train.validate_config(c)
  m = methods.get(c.method)(c)
  assert c.gnt_clean_fraction == 0.5
  assert m.sigmas == ((0.5,) if name == 'gnt_imagenet' else (0.04, 0.06, 0.08, 0.09, 0.10))


def test_digits_fine_tuning_from_a_vanilla_run(tmp_path):
  """The GNT smoke run, started from a vanilla digits run's params and BN statistics."""
  vanilla_dir, gnt_dir = str(tmp_path / 'vanilla'), str(tmp_path / 'gnt')
  cfg = dict(checkpoint_every_steps=100, max_eval_examples=256)
  train.train_and_evaluate(tiny_config(method='vanilla', num_epochs=0.25, **cfg), vanilla_dir)
  source, _ = checkpointing.load_arrays(vanilla_dir)
  # What init_from does to a fresh GNT state: the vanilla run's params and BN statistics.
  config, mesh, m, model, state = _setup(channels=1)  # digits: 8x8x1
  del config, m, model
  init_from = train._init_from  # pylint: disable=protected-access
  restored = parallel.to_host(init_from(vanilla_dir, state))
  chex.assert_trees_all_equal(restored.params, source['params'])
  chex.assert_trees_all_equal(restored.batch_stats['main'], source['batch_stats']['main'])
  # The whole loop: GNT fine-tuning from the vanilla run.
  _, res = train.train_and_evaluate(
      tiny_config(method='gnt', init_from=vanilla_dir, num_epochs=0.5, gnt_sigmas=(0.1, 0.2),
                  **cfg), gnt_dir)
  assert np.isfinite(res['eval_top1']) and res['eval_top1'] > 0.15 and res['step'] > 0
  lines = [json.loads(l) for l in open(os.path.join(gnt_dir, 'metrics.jsonl'))]
  train_lines = [l for l in lines if l['kind'] == 'train']
  assert train_lines and all('noisy_accuracy' in l and 'clean_accuracy' in l for l in train_lines)


@pytest.mark.parametrize('method', ['gnt', 'ant'])
def test_imagenet_noise_training_without_a_pretrained_run_says_so(method, caplog):
  # The paper fine-tunes a pretrained ResNet-50; on ImageNet-sized images an empty init_from
  # trains from random weights, which the log must say (CIFAR-sized runs train from scratch).
  import dataclasses  # pylint: disable=g-import-not-at-top
  from jaxrobust import data  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods.base import Context  # pylint: disable=g-import-not-at-top
  digits = data.get_info(tiny_config())
  for shape, init_from, warned in (((224, 224, 3), '', True), ((224, 224, 3), '/runs/v', False),
                                   ((32, 32, 3), '', False)):
    config = tiny_config(method=method, init_from=init_from)
    caplog.clear()
    with caplog.at_level('WARNING'):
      methods.get(method)(config).setup(Context(
          config=config, model=None, tx=None, mesh=None, steps_per_epoch=1, total_steps=1,
          info=dataclasses.replace(digits, image_shape=shape)))
    assert ('init_from is empty: this run trains from random weights' in caplog.text) == warned


def test_a_small_share_per_device_that_loses_a_part_of_the_mix_raises(caplog):
  # Every device composes its own share of the batch; rounding a small share loses a part.
  import jax  # pylint: disable=g-import-not-at-top
  from jaxrobust import data, parallel  # pylint: disable=g-import-not-at-top
  from jaxrobust.methods.base import Context  # pylint: disable=g-import-not-at-top
  info = data.get_info(tiny_config())
  mesh = parallel.make_mesh(jax.devices()[:8])

  def setup(method, batch_size):
    config = tiny_config(method=method, batch_size=batch_size)
    methods.get(method)(config).setup(Context(config=config, model=None, tx=None, mesh=mesh,
                                              info=info, steps_per_epoch=1, total_steps=1))

  with pytest.raises(ValueError, match=r'gnt: each device composes its 1 images as clean 0 '
                                       r'\(50% asked\), noisy 1 \(50% asked\), so the clean part'):
    setup('gnt', 8)
  with pytest.raises(ValueError, match='so the current generator part gets none'):
    setup('ant', 24)  # 3 per device: 2 clean, 0 current, 1 replay
  for batch_size, warned in ((64, True), (80, False)):  # 4/2/2 of 8 is 50/25/25, not 50/30/20; 5/3/2 of 10 is exact
    caplog.clear()
    with caplog.at_level('WARNING'):
      setup('ant', batch_size)
    assert ('use more images per device for the configured mix' in caplog.text) == warned
