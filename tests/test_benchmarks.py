"""benchmarks/throughput.py: every method's step is timed next to its theoretical pass count."""

import json
import re

import pytest

from benchmarks import throughput


def test_compare_times_each_method_against_vanilla():
  entries = [throughput.parse_entry(e) for e in
             ('advprop:advprop_attack=advprop_pgd1', 'ews:ews_search_fraction=0.01')]
  seen = []  # each cost is reported as soon as it is measured, relative filled in
  results = throughput.compare(entries, model='resnet_tiny', image_size=8, batch_size=16,
                               steps=1, repeats=1, steps_per_epoch=20,
                               on_result=lambda r: seen.append((r.method, r.relative)))
  assert seen == [(r.method, r.relative) for r in results]
  by_name = {r.method: r for r in results}
  assert [r.method for r in results] == ['vanilla', 'advprop', 'ews']
  assert by_name['vanilla'].relative == 1.0
  for r in results:   # each method's step time over vanilla's, measured in the same run
    assert r.seconds_per_step > 0
    assert r.relative == pytest.approx(r.seconds_per_step / by_name['vanilla'].seconds_per_step)
  # The theory column comes from each method: PGD-1 AdvProp = 1 + 2, EWS = 2.
  assert [r.theoretical_passes for r in results] == [1.0, 3.0, 2.0]
  assert by_name['ews'].search_seconds > 0 and by_name['vanilla'].search_seconds is None
  table = throughput.format_table(results, steps_per_epoch=20)
  assert 'advprop_attack=advprop_pgd1' in table and 'controller search' in table


def test_bad_entries_are_rejected():
  with pytest.raises(ValueError, match='Unknown method'):
    throughput.parse_entry('advprob')
  with pytest.raises(ValueError, match='expected key=value'):
    throughput.parse_entry('advprop:advprop_attack')


@pytest.mark.parametrize('argv, match', [
    (['--methods=mixup:modle=1'], r"Unknown config key\(s\): 'modle'"),
    (['--methods=advprop:advprop_eps=-1.0'], 'advprop_eps=-1.0 is out of range'),
    (['--batch_sizes=128,abc'], r"--batch_sizes='128,abc': expected comma-separated integers"),
    (['--steps=0'], r'--steps=0 must be >= 1'),
    (['--models=resnet_tiny,resnet_tny'], r"Unknown model 'resnet_tny'"),
])
def test_bad_arguments_fail_before_anything_compiles(argv, match, monkeypatch, capsys):
  # They failed inside measure_step, after vanilla and the earlier entries had compiled.
  monkeypatch.setattr(throughput, 'measure_step', lambda *a, **k: pytest.fail('measured'))
  with pytest.raises(SystemExit) as e:
    throughput.main(argv)
  assert e.value.code == 2
  assert re.search(match, capsys.readouterr().err)


def test_every_hook_is_timed_and_each_result_is_saved_at_once(tmp_path, monkeypatch):
  # ANT's generator restart went untimed (its README cost left it out), and the JSON was only
  # written after a whole table, so a stopped run lost its finished rows.
  out = tmp_path / 'costs.json'
  real_measure, calls = throughput.measure_step, []

  def measure_then_stop(*args, **kwargs):
    calls.append(kwargs['steps_per_epoch'])
    if len(calls) == 3:
      raise KeyboardInterrupt  # a lease that ends part-way
    return real_measure(*args, **kwargs)

  monkeypatch.setattr(throughput, 'measure_step', measure_then_stop)
  with pytest.raises(KeyboardInterrupt):
    throughput.main(['--methods=ant:ant_restart_every=4;ant_restart_steps=2;ant_restart_chunk=2,'
                     'mixup', '--models=resnet_tiny', '--image_size=8', '--batch_sizes=16',
                     '--steps=1', '--repeats=1', '--train_examples=320', '--num_devices=2',
                     f'--out={out}'])
  assert calls == [20, 20, 20]  # 320 // 16 steps per epoch
  saved = json.loads(out.read_text())
  assert [r['method'] for r in saved] == ['vanilla', 'ant']
  (hook,) = saved[1]['hooks']
  assert hook['name'] == 'ant_generator_restart' and hook['every_steps'] == 4
  assert hook['seconds'] > 0 and saved[0]['hooks'] == []
  costs = [throughput.StepCost(**{k: v for k, v in r.items() if k != 'backend'}) for r in saved]
  assert 'ant: ant_generator_restart' in throughput.format_table(costs, steps_per_epoch=20)


def test_compare_methods_script_plans_every_step(tmp_path):
  # --dry_run prints the commands it would run: training with the shared budget, evaluation
  # (both BNs for MixProp), the EWS search interval that fits a 5-epoch budget.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.conftest import ROOT  # pylint: disable=g-import-not-at-top
  # A stopped (preempted) vanilla run is trained on (resumed); a finished mixprop run is not.
  for method, stopped_by in (('vanilla', 'SIGTERM'), ('mixprop', None)):
    (tmp_path / 'runs' / method).mkdir(parents=True)
    (tmp_path / 'runs' / method / 'results.json').write_text(
        json.dumps({'step': 10, 'stopped_by': stopped_by, 'wall_time_s': 1.0}))
  proc = subprocess.run(
      [sys.executable, 'scripts/compare_methods.py', '--dry_run', '--methods=vanilla,mixprop,ews',
       f'--out={tmp_path}', '--adversarial_noise'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  train = [l for l in lines if 'jaxrobust.main' in l]
  assert len(train) == 2 and all('--config.model=resnet8_wide' in l for l in train)
  assert 'runs/vanilla' in train[0] and '--config.ews_search_every_epochs=1.0' in train[1]
  evals = [l for l in lines if 'jaxrobust.evaluate' in l]
  suites = [l for l in evals if 'auxtrain_corruptions' not in l and 's3_full' not in l]
  assert sum('--domain=aux' in l for l in suites) == 1 and len(suites) == 4
  # every run and domain at severity 3 on the whole test set: 15 + Auxiliary Training's 3 extra
  full = [l for l in evals if 's3_full' in l]
  assert len(full) == 4 and sum('--domain=aux' in l for l in full) == 1
  assert all('--severities=3' in l and '--max_examples=0' in l and
             ',jpeg_compression,gaussian_blur,rotation,contrast_brightness ' in l for l in full)
  # every run and domain also on Auxiliary Training's four training corruptions
  auxtrain = [l for l in evals if 'auxtrain_corruptions' in l]
  assert len(auxtrain) == 4 and all(
      '--corruptions=gaussian_noise,gaussian_blur,rotation,contrast_brightness' in l
      for l in auxtrain)
  assert sum('adversarial_noise' in l for l in lines) == 3
  bad = subprocess.run([sys.executable, 'scripts/compare_methods.py', '--methods=vanila',
                        f'--out={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode != 0 and "Unknown method(s) ['vanila']" in bad.stderr
  # A misspelt override is refused before settings.json records it (the corrected command was
  # then refused as "other flags"), and so is an empty method list (it crashed at the plots).
  for flags_, message in ((['--methods=vanilla', '--config_overrides=modle=resnet8'],
                           "--config_overrides item 'modle=resnet8': the config of ['vanilla'] "
                           "has no key 'modle'"),
                          (['--methods=vanilla,pgd_at', '--config_overrides=augmix=True'],
                           "the config of ['pgd_at'] has no key 'augmix'"),
                          (['--methods='], '--methods is empty')):
    refused = subprocess.run([sys.executable, 'scripts/compare_methods.py', *flags_,
                              f'--out={tmp_path / "refused"}'], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode != 0 and message in refused.stderr, refused.stderr
  assert not (tmp_path / 'refused' / 'runs' / 'settings.json').exists()
  # a paper's own vanilla baseline, on that paper's recipe
  paper = subprocess.run(
      [sys.executable, 'scripts/compare_methods.py', '--dry_run', '--budget=config',
       '--methods=vanilla_ews,ews', f'--out={tmp_path / "full"}'], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert paper.returncode == 0, paper.stderr
  train = [l for l in paper.stdout.splitlines() if 'jaxrobust.main' in l]
  assert len(train) == 2 and '--config=configs/vanilla_ews_cifar.py' in train[0]
  assert 'runs/vanilla_ews' in train[0] and not any('resnet8_wide' in l for l in train)


def test_input_pipeline_counts_the_images_it_delivers(capsys, monkeypatch):
  import itertools  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  info, source = input_pipeline.synthetic(64, 8, 'cifar')
  assert source.images.shape == (64, 8, 8, 3) and info.image_shape == (8, 8, 3)
  assert input_pipeline.synthetic(4, 14, 'imagenet')[1].images.shape == (4, 16, 16, 3)
  with monkeypatch.context() as patch:   # a clock that advances 1 s per reading
    ticks = itertools.count()
    patch.setattr(input_pipeline, 'time', types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    # 3 batches of 16 images in one (fake) second: images, not batches, are counted
    assert input_pipeline.measure(info, source, batch_size=16, batches=3, warmup=1,
                                  repeats=1) == 48
  with pytest.raises(ValueError, match="Unknown augment 'bogus'"):
    input_pipeline.synthetic(4, 8, 'bogus')
  # a dataset named as in a config goes through the loop's own get_info / make_source
  rate = input_pipeline.main(['--dataset=digits',
                              '--batch_size=32', '--batches=2', '--repeats=1'])
  assert rate > 0 and 'digits: (8, 8, 1) images, augment=none, batch 32' in capsys.readouterr().out
  for argv, message in ((['--augment=bogus'], "invalid choice: 'bogus'"),
                        (['--batches=0'], '--batches=0 must be >= 1')):
    with pytest.raises(SystemExit):   # a usage error, not a traceback from inside the pipeline
      input_pipeline.main(argv)
    assert message in capsys.readouterr().err


def test_compare_methods_keeps_cpu_settings_to_the_cpu_budget_and_refuses_uris(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.conftest import ROOT  # pylint: disable=g-import-not-at-top

  def plan(*flags):
    return subprocess.run([sys.executable, 'scripts/compare_methods.py', '--dry_run',
                           '--methods=ews', '--full_s3=false', *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  config_budget = plan('--budget=config', f'--out={tmp_path}')
  train = [l for l in config_budget.stdout.splitlines() if 'jaxrobust.main' in l]
  assert len(train) == 1 and 'ews_search_every_epochs' not in train[0]  # the config's own K
  # A folder of finished work made with other flags is refused: its runs would be skipped.
  recorded = {'budget': 'cpu', 'dataset': 'folder:../shared/data/cifar10', 'config_overrides': [],
              'max_examples': 1000, 'attack_examples': 200, 'apgd_steps': 25,
              'adversarial_noise_eps': 9.2, 'adversarial_noise_steps': 150,
              'adversarial_noise_generators': 2}
  (tmp_path / 'runs' / 'settings.json').write_text(json.dumps(recorded))
  other = plan('--budget=config', f'--out={tmp_path}')
  assert other.returncode != 0 and "--budget: 'cpu' there, 'config' now" in other.stderr
  uri = plan('--out=gs://bucket/cmp')
  assert uri.returncode != 0 and "--out='gs://bucket/cmp': this script works in a local" in uri.stderr
