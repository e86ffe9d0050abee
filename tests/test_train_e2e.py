"""End-to-end runs of the loop on the bundled digits and on mocked TFDS CIFAR-10."""

import json
import os

import chex
import numpy as np

from jaxrobust import checkpointing, parallel, train
from tests.conftest import tiny_config


def test_quickstart_style_run_leaves_checkpoint_metrics_and_results(tmp_path):
  config = tiny_config(num_epochs=2.0, eval_every_epochs=1.0)
  state, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 2 * (1437 // 64) == int(state.step)
  assert os.path.isdir(tmp_path / 'checkpoints' / str(results['step']))
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  kinds = {l['kind'] for l in lines}
  assert kinds == {'train', 'eval'}
  train_lines = [l for l in lines if l['kind'] == 'train']
  assert all(l['images_per_sec'] > 0 for l in train_lines)
  assert train_lines[-1]['loss'] < train_lines[0]['loss']
  saved = json.load(open(tmp_path / 'results.json'))
  # learnt (chance is 0.1; two epochs of the tiny model reach about 0.6), and the same figures
  # as the final evaluation logged in metrics.jsonl
  assert 0.3 < saved['eval_top1'] <= saved['eval_top5'] <= 1.0
  last_eval = [l for l in lines if l['kind'] == 'eval'][-1]
  assert (last_eval['top1'], last_eval['top5']) == (saved['eval_top1'], saved['eval_top5'])
  assert json.load(open(tmp_path / 'config.json'))['model'] == 'resnet_tiny'


def test_the_same_command_on_a_finished_run_changes_nothing(tmp_path, monkeypatch):
  config = tiny_config(num_epochs=1.0)
  _, first = train.train_and_evaluate(config, str(tmp_path))
  log = (tmp_path / 'metrics.jsonl').read_text()

  def no_data(*args, **kwargs):
    raise AssertionError('a finished run decoded its data again')
  monkeypatch.setattr(train.data, 'make_source', no_data)
  state, again = train.train_and_evaluate(config, str(tmp_path))
  assert again == first == json.load(open(tmp_path / 'results.json'))  # its time kept
  assert (tmp_path / 'metrics.jsonl').read_text() == log  # no second evaluation logged
  assert int(state.step) == first['step']
  # saved by an older version that lacked a key: still the same run, and its config.json stays
  saved = json.load(open(tmp_path / 'config.json'))
  del saved['cutout_size']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  _, older = train.train_and_evaluate(config, str(tmp_path))
  assert older == first and json.load(open(tmp_path / 'config.json')) == saved
  assert (tmp_path / 'metrics.jsonl').read_text() == log
  # a changed config is not the same run: it resumes (here: evaluates again) as before
  monkeypatch.undo()
  _, changed = train.train_and_evaluate(tiny_config(num_epochs=1.0, max_eval_examples=100),
                                        str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in rows if r['kind'] == 'eval'][-2:] == [first['step']] * 2
  assert changed['step'] == first['step']


def test_stopped_and_resumed_run_is_bit_identical(tmp_path, monkeypatch):
  config = tiny_config(num_epochs=2.0, checkpoint_every_steps=100)
  full_state, _ = train.train_and_evaluate(config, str(tmp_path / 'full'))
  # The same run, told to stop (as by SIGTERM) at step 17 mid-epoch, then resumed.
  calls = {'n': 0}

  def stop_at_17(self):
    calls['n'] += 1
    return calls['n'] == 17
  monkeypatch.setattr(checkpointing.PreemptionHandler, 'should_stop', stop_at_17)
  _, stopped = train.train_and_evaluate(config, str(tmp_path / 'split'))
  assert stopped['step'] == 17 and stopped['stopped_by'] == 'stop request'
  monkeypatch.undo()
  resumed_state, results = train.train_and_evaluate(config, str(tmp_path / 'split'))
  assert results['step'] == int(full_state.step)
  chex.assert_trees_all_equal(parallel.to_host(full_state.params),
                              parallel.to_host(resumed_state.params))
  chex.assert_trees_all_equal(parallel.to_host(full_state.batch_stats),
                              parallel.to_host(resumed_state.batch_stats))


def test_cifar10_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = tiny_config(dataset='cifar10', batch_size=16, eval_batch_size=16)
  with tfds.testing.mock_data(num_examples=48):
    state, results = train.train_and_evaluate(config, str(tmp_path))
  assert results['step'] == 3
  # a model for CIFAR's 3-channel images (3x3 CIFAR stem) and its 10 classes
  assert state.params['stem_conv']['kernel'].shape[:3] == (3, 3, 3)
  assert state.params['classifier']['kernel'].shape[-1] == 10
  assert np.isfinite(results['eval_loss'])
