"""The evaluation runner: restores a run, runs every suite, writes the report files."""

import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrobust import parallel, train
from jaxrobust.evaluation import comparison, runner
from tests.conftest import ROOT, tiny_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(tiny_config(num_epochs=2.0, model='resnet8'), workdir)
  return workdir


def test_all_suites_write_a_report(trained, tmp_path):
  run = runner.load_run(trained)
  assert run.step == 44
  report = runner.run_suites(
      run, ['clean', 'corruptions', 'pgd', 'apgd', 'eps_star', 'frequency'], out_dir=str(tmp_path),
      max_examples=64, attack_examples=32, corruption_names=['gaussian_noise', 'contrast'],
      apgd_steps=5)
  for name in ('report.json', 'summary.md', 'corruptions.csv', 'attacks.csv',
               'corruptions_bar.png', 'corruptions_severity.png', 'accuracy_vs_eps.png',
               'frequency_heat_map.png', 'frequency.csv'):
    assert os.path.getsize(tmp_path / name) > 0, name
  saved = json.load(open(tmp_path / 'report.json'))
  assert saved['clean']['count'] == 64
  errors = report['corruptions']['errors']
  assert set(errors) == {'gaussian_noise', 'contrast'} and set(errors['contrast']) == set(range(1, 6))
  # contrast at severity 5 destroys most of the signal of these digits
  assert errors['contrast'][5] > errors['contrast'][1]
  pgd = report['pgd']
  assert pgd['pgd20'] <= pgd['ifgsm10'] + 1e-9 and pgd['pgd20'] <= pgd['clean']
  assert pgd['madry_pgd10'] <= pgd['clean']
  # one 1/255 step is a far weaker attack than ten 2/255 steps in the 8/255 ball
  assert pgd['madry_pgd10'] <= pgd['advprop_pgd1'] <= pgd['clean'] + 1e-9
  assert pgd['curve']['accuracy'] == sorted(pgd['curve']['accuracy'], reverse=True)
  assert report['apgd']['apgd_ce'] <= pgd['clean']
  assert report['eps_star']['gaussian']['eps_star'] > 0
  assert np.asarray(report['frequency']['map']).shape == (8, 8)
  summary = open(tmp_path / 'summary.md').read()
  assert '## Clean' in summary and 'apgd_ce' in summary and 'epsilon*' in summary
  h, w, c = run.info.image_shape
  assert 'in [0, 1] pixel units' in summary and f'sqrt({h}*{w}*{c}) = ' in summary
  assert 'L2 norm 4.0 per channel and frequency' in summary
  assert '| advprop_pgd1 (eps 1/255) |' in summary and '| madry_pgd10 |' in summary
  # The comparison table (scripts/compare_methods.py) reads the run's files back.
  run_dir = tmp_path / 'as_run'
  (run_dir / 'eval_main').mkdir(parents=True)
  shutil.copy(tmp_path / 'report.json', run_dir / 'eval_main' / 'report.json')
  shutil.copy(os.path.join(trained, 'results.json'), run_dir / 'results.json')
  row = comparison.row(str(run_dir), 'vanilla')
  assert row['clean'] == saved['clean']['top1'] and row['pgd20_eps8'] == pgd['pgd20']
  assert row['gaussian_noise_s3'] == pytest.approx(1 - errors['gaussian_noise'][3])
  assert row['corruptions_s3'] is None  # only 2 of the 15 corruptions were run
  assert row['eps_star_gaussian'] == report['eps_star']['gaussian']['eps_star']
  out = tmp_path / 'compare'  # not made beforehand, as when a notebook only loads runs
  table = comparison.write_table([row], str(out), '# comparison')
  assert table.splitlines()[2].startswith('| vanilla |')
  comparison.write_plots([row], str(out))
  assert os.path.getsize(out / 'corruptions_s3.png') > 0


def test_one_severity_on_the_whole_split_is_what_the_comparison_reads(trained, tmp_path):
  run = runner.load_run(trained)
  names = list(comparison.FULL_S3_CORRUPTIONS)
  report = runner.run_suites(run, ['corruptions'], out_dir=str(tmp_path / 'eval_main_s3_full'),
                             max_examples=32, corruption_names=names, corruption_severities=[3])
  errors = report['corruptions']['errors']
  assert set(errors) == set(names) and all(set(e) == {3} for e in errors.values())
  acc = report['corruptions']['summary']['mean_accuracy_severity3']
  assert acc == pytest.approx(np.mean([1 - errors[c][3] for c in runner.corruptions.STANDARD]))
  (tmp_path / 'eval_main').mkdir()
  with open(tmp_path / 'eval_main' / 'report.json', 'w') as f:
    json.dump({'clean': {'top1': 0.5}}, f)
  shutil.copy(os.path.join(trained, 'results.json'), tmp_path / 'results.json')
  row = comparison.row(str(tmp_path), 'vanilla')
  assert row['corruptions_s3_full'] == pytest.approx(acc)
  assert row['auxtrain_corruptions_s3_full'] == pytest.approx(np.mean(
      [1 - errors[c][3] for c in comparison.AUXTRAIN_CORRUPTIONS]))


@pytest.mark.parametrize('severities', [[], [0], [3, 6], ['x'], [2.5]])
def test_bad_severities_name_the_allowed_ones(trained, tmp_path, severities):
  with pytest.raises(ValueError, match=r'non-empty subset of \[1, 2, 3, 4, 5\]'):
    runner.run_suites(runner.load_run(trained), ['corruptions'], out_dir=str(tmp_path),
                      corruption_severities=severities)


def test_official_corruption_sets_through_the_same_path(trained, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  run = runner.load_run(trained)
  with tfds.testing.mock_data(num_examples=20):
    res = runner.tfds_corruption_suite(run, names=['fog'], severities=(1, 2),
                                       dataset='cifar10_corrupted')
    # TFDS spells two CIFAR-10-C configs its own way (frosted_glass_blur_1, elastic_1)
    renamed = runner.tfds_corruption_suite(run, names=['glass_blur', 'elastic_transform'],
                                           severities=(1,), max_examples=8,
                                           dataset='cifar10_corrupted')
  assert set(res['errors']['fog']) == {1, 2}
  assert all(0.0 <= e <= 1.0 for e in res['errors']['fog'].values())
  assert set(renamed['errors']) == {'glass_blur', 'elastic_transform'}


def test_the_official_set_is_the_runs_datasets_own_or_named(trained, tmp_path):
  assert runner.corrupted_dataset('cifar10') == 'cifar10_corrupted'
  assert runner.corrupted_dataset('imagenet2012:5.1.0') == 'imagenet2012_corrupted'
  assert (runner.corrupted_dataset('folder:/data/cifar10', 'cifar10_corrupted') ==
          'cifar10_corrupted')
  for dataset, given, match in (('cifar100', None, 'official sets for cifar10, imagenet2012 only'),
                                ('folder:/data/cifar10', None, '--corrupted_dataset'),
                                ('cifar10', 'cifar100_corrupted', 'allowed cifar10_corrupted')):
    with pytest.raises(ValueError, match=match):
      runner.corrupted_dataset(dataset, given)
  with pytest.raises(ValueError, match='has 1000 classes; this run classifies 100'):
    runner.corrupted_dataset('folder:/data/c100', 'imagenet2012_corrupted', num_classes=100)
  with pytest.raises(ValueError, match='read only by the tfds_corruptions suite'):
    runner.run_suites(runner.load_run(trained), ['clean'], out_dir=str(tmp_path / 'eval'),
                      corrupted='cifar10_corrupted')
  # A digits run: refused before any suite runs (no clean report is written first).
  with pytest.raises(ValueError, match="this run trained on 'digits'"):
    runner.run_suites(runner.load_run(trained), ['clean', 'tfds_corruptions'],
                      out_dir=str(tmp_path / 'eval'))
  assert not (tmp_path / 'eval').exists()


def test_every_suite_reads_only_this_process_slice(trained, monkeypatch):
  # With several processes each must feed its own part of the split, not the whole split.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  real, calls = runner.data.eval_iterator, []

  def recording(info, **kwargs):
    calls.append({**kwargs, 'augment': info.augment})
    return real(info, **kwargs)

  monkeypatch.setattr(runner.data, 'eval_iterator', recording)
  run = runner.load_run(trained)
  runner.clean_suite(run, max_examples=16)
  list(run.batches(max_examples=16))
  with tfds.testing.mock_data(num_examples=20):
    runner.tfds_corruption_suite(run, names=['fog'], severities=(1,), max_examples=16,
                                 dataset='cifar10_corrupted')
  assert len(calls) == 3
  assert calls[-1]['augment'] == 'none'  # the corrupted sets are read as stored (no second crop)
  for kwargs in calls:
    assert kwargs['process_index'] == jax.process_index()
    assert kwargs['process_count'] == jax.process_count()
    assert 'data_dir' in kwargs


def test_the_eps_curve_is_one_compiled_program(trained, monkeypatch):
  # eps and the step size are traced inputs, so a sweep does not recompile the attack per eps.
  real, traces = runner.attacks.get, []

  def counting(name):
    attack = real(name)
    def traced_attack(*args, **kwargs):
      traces.append(kwargs['eps'])
      return attack(*args, **kwargs)
    return traced_attack

  monkeypatch.setattr(runner.attacks, 'get', counting)
  run = runner.load_run(trained)
  out = runner.attack_suite(run, names=(), max_examples=8, eps_curve=(1 / 255, 2 / 255, 4 / 255))
  assert len(out['curve']['accuracy']) == 3 and len(traces) == 1
  with pytest.raises(ValueError, match='eps=-0.1 is out of range'):
    runner.attack_suite(run, names=(), max_examples=8, eps_curve=(-0.1,))


def test_a_run_saved_on_eight_devices_loads_on_two(trained):
  # The checkpoint is read as numpy, so evaluation does not need the training topology.
  full = runner.load_run(trained)
  two = runner.load_run(trained, mesh=parallel.make_mesh(jax.devices()[:2]))
  assert two.mesh.devices.size == 2 and two.step == full.step
  x = next(iter(full.batches(max_examples=16)))['image']
  np.testing.assert_allclose(np.asarray(jax.jit(two.logits_fn)(np.asarray(x))),
                             np.asarray(jax.jit(full.logits_fn)(x)), rtol=1e-5, atol=1e-5)


def test_bad_suite_and_workdir(trained, tmp_path):
  run = runner.load_run(trained)
  with pytest.raises(ValueError, match='Unknown suite.*valid: clean'):
    runner.run_suites(run, ['robustness'], out_dir=str(tmp_path))
  # attack_examples=0 read no data, and the attack suites reported 0.00% robust accuracy
  with pytest.raises(ValueError, match=r'attack_examples=0 is out of range; allowed: integers >= 1'):
    runner.run_suites(run, ['pgd'], out_dir=str(tmp_path), attack_examples=0)
  # eps* and the Fourier map gather per-image values on one host: refused with several
  with mock.patch.object(jax, 'process_count', return_value=2):
    with pytest.raises(ValueError, match=r"Suite\(s\) \['eps_star'\] take medians.*single process"):
      runner.run_suites(run, ['clean', 'eps_star'], out_dir=str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before anything ran or was written
  with pytest.raises(ValueError, match='not a training workdir'):
    runner.load_run(str(tmp_path))
  with mock.patch.object(runner.checkpointing, 'load_arrays',
                         side_effect=AssertionError('read the checkpoint first')):
    with pytest.raises(ValueError, match="Domain 'aux' not in this run; its method 'vanilla' "
                                         r"keeps \['main'\]"):
      runner.load_run(trained, domain='aux')
  proc = subprocess.run([sys.executable, '-m', 'jaxrobust.evaluate', f'--workdir={trained}',
                         '--suite=clean,nope'], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2 and "Unknown suite(s) ['nope']" in proc.stderr


def test_comparison_row_of_an_auxiliary_domain_reads_that_domain(tmp_path):
  """A MixProp / AdvProp '(aux BN)' row: its report and its end-of-training accuracy."""
  for domain, top1 in (('main', 0.61), ('aux', 0.52)):
    (tmp_path / f'eval_{domain}').mkdir()
    with open(tmp_path / f'eval_{domain}' / 'report.json', 'w') as f:
      json.dump({'clean': {'top1': top1}}, f)
  with open(tmp_path / 'results.json', 'w') as f:
    json.dump({'wall_time_s': 60.0, 'eval_top1': 0.8, 'eval_aux_top1': 0.7}, f)
  # Auxiliary Training's four training corruptions, evaluated for the main BN only here
  (tmp_path / 'eval_main_auxtrain_corruptions').mkdir()
  errors = {'gaussian_noise': {'3': 0.4}, 'gaussian_blur': {'3': 0.2, '5': 0.9},
            'rotation': {'3': 0.3}, 'contrast_brightness': {'3': 0.1}}
  with open(tmp_path / 'eval_main_auxtrain_corruptions' / 'report.json', 'w') as f:
    json.dump({'corruptions': {'errors': errors}}, f)
  main, aux = (comparison.row(str(tmp_path), 'mixprop', d) for d in ('main', 'aux'))
  assert (main['method'], main['clean'], main['full_test_top1']) == ('mixprop', 0.61, 0.8)
  assert (aux['method'], aux['clean'], aux['full_test_top1']) == ('mixprop (aux BN)', 0.52, 0.7)
  assert main['auxtrain_corruptions_s3'] == pytest.approx(1 - (0.4 + 0.2 + 0.3 + 0.1) / 4)
  assert 'auxtrain_corruptions_s3' not in aux


def test_embed_table_replaces_only_the_marked_block(tmp_path):
  readme = tmp_path / 'README.md'
  readme.write_text('intro\n<!-- t_table:start -->\n| old |\n<!-- t_table:end -->\noutro\n')
  comparison.embed_table(str(readme), '| a |\n|---|\n| 1 |\n', name='t')
  assert readme.read_text() == ('intro\n<!-- t_table:start -->\n| a |\n|---|\n| 1 |\n'
                                '<!-- t_table:end -->\noutro\n')
  comparison.embed_table(str(readme), '| b |', name='t')   # idempotent markers
  assert '| b |' in readme.read_text() and '| a |' not in readme.read_text()
  readme.write_text('no markers here\n')
  with pytest.raises(ValueError, match='t_table:start'):
    comparison.embed_table(str(readme), '| b |', name='t')


def test_corruption_suite_streams_the_split_once_and_scores_every_corruption(trained,
                                                                            monkeypatch):
  # One pass over the eval split, each batch scored under every corruption x severity before the
  # next is read (so one batch is on device at a time), with the images of batch i corrupted with
  # batch i's key, as a direct per-corruption computation gives.
  real_iterator, real_counts_fn, calls, scored, scored_before_batch = (
      runner.data.eval_iterator, runner._counts_fn, [], [], [])

  def recording(info, **kwargs):
    calls.append(kwargs)
    for b in real_iterator(info, **kwargs):
      scored_before_batch.append(len(scored))
      yield b

  def counting_counts_fn():
    fn = real_counts_fn()
    def counted(*args):
      scored.append(1)
      return fn(*args)
    return counted

  monkeypatch.setattr(runner.data, 'eval_iterator', recording)
  monkeypatch.setattr(runner, '_counts_fn', counting_counts_fn)
  run = runner.load_run(trained)
  run.config.eval_batch_size = 16  # three batches of 40 examples, the last one padded
  names, severities = ('gaussian_noise', 'contrast'), (1, 5)
  errors = runner.corruption_suite(run, names=names, severities=severities, max_examples=40,
                                   seed=3)['errors']
  assert len(calls) == 1 and scored_before_batch == [0, 4, 8]
  batches = list(run.batches(max_examples=40))
  assert len(batches) == 3
  for name in names:
    for s in severities:
      correct = total = 0
      for i, b in enumerate(batches):
        x = runner.corruptions.corrupt(b['image'], name=name, severity=s,
                                       rng=jax.random.fold_in(jax.random.PRNGKey(3), i))
        hit = np.argmax(run.logits_fn(x), -1) == np.asarray(b['label'])
        correct += int(np.sum(hit * np.asarray(b['mask'])))
        total += int(np.sum(b['mask']))
      assert total == 40
      assert errors[name][s] == pytest.approx(1.0 - correct / 40), (name, s)
  assert errors['contrast'][5] > errors['contrast'][1]


def test_an_attack_that_moves_a_wrong_image_onto_its_label_does_not_count_it_robust():
  from jaxrobust.evaluation import runner  # pylint: disable=g-import-not-at-top

  def predict(x):  # class 1 when the image is bright, else class 0
    bright = jnp.mean(x, axis=(1, 2, 3)) > 0.5
    return jnp.stack([1.0 - bright, bright * 1.0], axis=-1)

  def brighten(predict_fn, x, y, rng, **unused):  # an "attack" that lands every image on class 1
    del predict_fn, y, rng
    return jnp.ones_like(x)

  x = jnp.concatenate([jnp.full((1, 4, 4, 3), 0.2), jnp.full((2, 4, 4, 3), 0.8)])
  y = jnp.array([1, 1, 0])  # wrong clean, right clean and attacked, flipped by the attack
  correct, count = runner._attack_counts(brighten, {})(
      jax.tree_util.Partial(predict), x, y, jnp.ones(3), jax.random.key(0))
  assert (int(correct), int(count)) == (1, 3)


def test_imagenet_sized_on_the_fly_corruptions_say_what_their_normalised_mce_compares_with(
    tmp_path, caplog):
  from jaxrobust import corruptions  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  errors = {'gaussian_noise': {'3': 0.5}}
  for baseline, said in (('alexnet', True), (None, False)):
    report = {'workdir': 'w', 'method': 'vanilla', 'model': 'resnet50', 'dataset': 'imagenet2012',
              'step': 1, 'domain': 'main', 'devices': 1, 'timings_s': {},
              'corruptions': {'errors': errors, 'baseline': baseline,
                              'summary': {'mce': 0.5, 'mce_normalized': 0.6}}}
    runner.write_report(report, str(tmp_path / str(baseline)))
    text = (tmp_path / str(baseline) / 'summary.md').read_text()
    assert ('through the `tfds_corruptions` suite, which reads the official one' in text) == said
  # ImageNet-C's pixel-sized parameters on images of another size than 224 px: a warning (once
  # per size and process, so forget earlier ones).
  from jaxrobust.corruptions import _common  # pylint: disable=g-import-not-at-top
  _common._warn_imagenet_table_size.cache_clear()
  with caplog.at_level('WARNING'):
    for size in (224, 96):
      corruptions.get("defocus_blur")(jnp.zeros((1, size, size, 3)), jax.random.key(0), 1)
  assert 'Corrupting 96 px images with the ImageNet-C table' in caplog.text
  assert 'Corrupting 224 px' not in caplog.text


def test_report_plots_get_fractions(tmp_path, monkeypatch):
  # The plots label their axes in percent themselves: the report hands them fractions.
  from jaxrobust.evaluation import plots, runner  # pylint: disable=g-import-not-at-top
  seen = {}
  for name in ('plot_corruption_errors', 'plot_error_vs_severity', 'plot_accuracy_vs_eps'):
    monkeypatch.setattr(plots, name, lambda data, path, name=name, **kw: seen.update({name: data}))
  report = {'workdir': 'w', 'method': 'vanilla', 'model': 'm', 'dataset': 'd', 'step': 1,
            'domain': 'main', 'devices': 1, 'timings_s': {},
            'corruptions': {'errors': {'fog': {'1': 0.25, '3': 0.5}}, 'summary': {}},
            'pgd': {'clean': 0.9, 'pgd20': 0.1,
                    'curve': {'attack': 'pgd', 'eps': [1 / 255, 8 / 255], 'accuracy': [0.6, 0.1]}}}
  runner.write_report(report, str(tmp_path))
  assert seen['plot_corruption_errors'] == {'fog': pytest.approx(0.375)}
  assert seen['plot_error_vs_severity'] == {'fog': {1: 0.25, 3: 0.5}}
  assert seen['plot_accuracy_vs_eps']['pgd'][1] == [0.6, 0.1]
  # report.json comes last: a report whose plotting failed is not taken for a finished one.
  def broken(*unused, **unused_kw):
    raise RuntimeError('no display')
  monkeypatch.setattr(plots, 'plot_corruption_errors', broken)
  with pytest.raises(RuntimeError, match='no display'):
    runner.write_report(report, str(tmp_path / 'broken'))
  assert not (tmp_path / 'broken' / 'report.json').exists()
  assert (tmp_path / 'report.json').exists()


def test_an_eval_batch_that_does_not_divide_the_devices_is_rounded_up(trained):
  """500 (the configs' default) on 8 devices must evaluate, not raise: padding is masked."""
  run = runner.load_run(trained)
  run.config.eval_batch_size = 12  # 8 devices: runs as 16
  batches = list(run.batches(max_examples=40))
  assert [b['image'].shape[0] for b in batches] == [16, 16, 16]
  assert sum(int(np.sum(b['mask'])) for b in batches) == 40
  assert runner.clean_suite(run, max_examples=40)['count'] == 40
  mesh = parallel.make_mesh(jax.devices()[:8])
  assert [parallel.eval_batch_size(n, mesh) for n in (500, 12, 16, 1)] == [504, 16, 16, 8]
  with pytest.raises(ValueError, match='eval_batch_size=0'):
    parallel.eval_batch_size(0, mesh)
