r"""Trains every method on the same data and budget, evaluates each, writes one comparison table.

Every step is a separate ``python -m`` process and is skipped when its output exists, so the
script resumes where it stopped (a preempted training run resumes from its checkpoint):

1. train ``<runs>/<method>`` with the method's config plus the shared budget flags
   (``python -m jaxrobust.main``);
2. evaluate it (``python -m jaxrobust.evaluate``: clean, corruptions, PGD/FGSM, APGD, eps* on a
   test subset; every corruption at severity 3 on the whole test set), and with the auxiliary
   BatchNorm too for AdvProp and MixProp;
3. optionally: eps* against a freshly trained adversarial noise generator
   (``--adversarial_noise``) and the EWS subnet-confidence box plot (``--subnets``);
4. write ``<out>/table.md``, ``<out>/table.csv``, ``<out>/results.json`` and PNG plots.

The CPU-sized default is the shared budget of the README (ResNet-8-wide, 5 epochs, one-cycle
0.2) on the local CIFAR-10 copy; the full-size flags are the configs' own recipes:

    python scripts/compare_methods.py --methods=vanilla,gnt,ant --adversarial_noise
    python scripts/compare_methods.py --budget=config --dataset=cifar10 --out=results/full
    python scripts/compare_methods.py --budget=config --dataset=cifar10 --out=results/full \
      --methods=vanilla_ews,ews   # EWS against vanilla on EWS's own recipe

``--runs`` (default ``<out>/runs``) may point at existing run directories named by method.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
import time

from absl import app, flags, logging

if __package__ in (None, ''):  # run as a script: make the repository importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxrobust import files  # noqa: E402
from jaxrobust.evaluation import comparison  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each method's config; the CIFAR-100 configs (MixProp's paper setting) train on --dataset.
METHODS = {
    'vanilla': 'configs/vanilla_cifar.py',
    'advprop': 'configs/advprop_cifar.py',
    'mixprop': 'configs/mixprop_cifar100.py',
    'mixup': 'configs/mixup_cifar.py',
    'pgd_at': 'configs/pgd_at_cifar.py',
    'trades': 'configs/trades_cifar.py',
    'gnt': 'configs/gnt_cifar.py',
    'ant': 'configs/ant_cifar.py',
    'auxtrain': 'configs/auxtrain_cifar10.py',
    'ews': 'configs/ews_cifar.py',
}
# Vanilla training on a paper's own recipe, the baseline of that paper's rows under
# --budget=config (vanilla_cifar.py is ResNet-18 for 200 epochs). Under the CPU budget they would
# repeat 'vanilla', so they run only when named in --methods.
PAPER_BASELINES = {
    'vanilla_ews': 'configs/vanilla_ews_cifar.py',       # EWS's Table 1 (ResNet-50, 400 epochs)
    'vanilla_mixprop': 'configs/vanilla_cifar100.py',    # MixProp's Table 1 (PreAct-18, 320)
}
AUX_DOMAIN_METHODS = ('advprop', 'mixprop')   # also evaluated with their auxiliary BN
CPU_BUDGET = {'model': 'resnet8_wide', 'num_epochs': 5.0, 'lr_schedule': 'onecycle',
              'learning_rate': 0.2, 'nesterov': False}
# Under the CPU budget only, the adversarial baselines craft with ONE attack step instead of ten
# (configs/pgd_at_cifar.py, configs/trades_cifar.py): PGD-AT from a uniform random start with step
# 1.25 eps (FGSM-RS); TRADES from its 0.001 N(0, I) start with one KL sign step of size eps.
# EWS searches every epoch: its K = 10 epochs between searches would never search in 5.
CPU_BUDGET_METHOD = {'pgd_at': {'pgd_at_num_steps': 1, 'pgd_at_step_size': 10 / 255},
                     'trades': {'trades_num_steps': 1, 'trades_step_size': 8 / 255},
                     'ews': {'ews_search_every_epochs': 1.0}}

flags.DEFINE_list('methods', list(METHODS), f'Methods to compare; any of {list(METHODS)}, or '
                  f'the paper baselines {list(PAPER_BASELINES)}.')
flags.DEFINE_string('out', None, 'Output directory (default results/<date>).')
flags.DEFINE_string('runs', None, 'Directory of the training runs (default <out>/runs).')
flags.DEFINE_string('dataset', 'folder:../shared/data/cifar10', 'Dataset of every run.')
flags.DEFINE_enum('budget', 'cpu', ['cpu', 'config'],
                  'cpu: the README\'s shared CPU budget; config: each config\'s own recipe.')
flags.DEFINE_list('config_overrides', [], 'Extra key=value config overrides for every run.')
flags.DEFINE_integer('max_examples', 1000, 'Test images for clean and corruption accuracy.')
flags.DEFINE_integer('attack_examples', 200, 'Test images for attacks and eps*.')
flags.DEFINE_integer('apgd_steps', 25, 'APGD iterations.')
flags.DEFINE_bool('full_s3', True, 'Also every corruption at severity 3 on the whole test set.')
flags.DEFINE_bool('adversarial_noise', False, 'Also eps* against a trained noise generator.')
flags.DEFINE_float('adversarial_noise_eps', 9.2, 'L2 radius of that generator (one for all).')
flags.DEFINE_integer('adversarial_noise_steps', 150, 'Generator training steps.')
flags.DEFINE_integer('adversarial_noise_generators', 2, 'Generators (seeds) averaged.')
flags.DEFINE_bool('subnets', False, 'Also the subnet-confidence analysis (needs vanilla, ews).')
flags.DEFINE_bool('dry_run', False, 'Print the commands instead of running them.')
flags.DEFINE_string('readme', None, 'Also embed the table in this Markdown file, between '
                    '"<!-- <name>_table:start/end -->" markers, <name> = the --out folder name.')
FLAGS = flags.FLAGS


def _run(cmd: list[str], log_path: str) -> float:
  """Runs ``cmd`` in the repository root, output to ``log_path``; returns its wall time."""
  logging.info('$ %s', ' '.join(cmd))
  if FLAGS.dry_run:
    print(' '.join(cmd))
    return 0.0
  start = time.time()
  with open(log_path, 'a') as log:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
  if proc.returncode:
    raise RuntimeError(f'{cmd[2]} failed (exit {proc.returncode}); see {log_path}.')
  return time.time() - start


def _trained(workdir: str) -> bool:
  """Whether the run in ``workdir`` finished (a stopped run's results.json has ``stopped_by``)."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return False
  with open(path) as f:
    return not json.load(f).get('stopped_by')


# The flags that change a run or a report (--full_s3 and --adversarial_noise only add work).
SETTINGS = ('budget', 'dataset', 'config_overrides', 'max_examples', 'attack_examples',
            'apgd_steps', 'adversarial_noise_eps', 'adversarial_noise_steps',
            'adversarial_noise_generators')


def _check_settings(runs: str) -> None:
  """Refuses a runs folder whose recorded flags differ from these, else records them.

  The runs and their reports (``<runs>/<method>/eval_*``) are skipped once they exist, not redone,
  so other flags on the same folder would table old results under the new flags' header.
  """
  path = os.path.join(runs, 'settings.json')
  settings = {name: FLAGS[name].value for name in SETTINGS}
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
    changed = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if changed:
      raise app.UsageError(
          f'{runs} holds runs and reports made with other flags ' +
          ', '.join(f'--{k}: {old!r} there, {new!r} now' for k, (old, new) in changed.items()) +
          '; use another folder, or the same flags to resume.')
  elif not FLAGS.dry_run:
    with open(path, 'w') as f:
      json.dump(settings, f, indent=1)


def train_command(method: str, workdir: str) -> list[str]:
  config = {**METHODS, **PAPER_BASELINES}[method]
  cpu = FLAGS.budget == 'cpu'
  overrides = {'dataset': FLAGS.dataset, **(CPU_BUDGET if cpu else {}),
               **(CPU_BUDGET_METHOD.get(method, {}) if cpu else {})}
  for item in FLAGS.config_overrides:
    key, value = item.split('=', 1)
    overrides[key] = value
  return ([sys.executable, '-m', 'jaxrobust.main', f'--config={config}', f'--workdir={workdir}']
          + [f'--config.{k}={v}' for k, v in overrides.items()])


def evaluate_command(workdir: str, domain: str) -> list[str]:
  return [sys.executable, '-m', 'jaxrobust.evaluate', f'--workdir={workdir}', f'--domain={domain}',
          '--suite=clean,corruptions,pgd,apgd,eps_star', f'--max_examples={FLAGS.max_examples}',
          f'--attack_examples={FLAGS.attack_examples}', f'--apgd_steps={FLAGS.apgd_steps}',
          '--apgd_targets=1']


def auxtrain_corruptions_command(workdir: str, domain: str, out_dir: str) -> list[str]:
  # Every run, so that Auxiliary Training's gain on its own training corruptions has a baseline.
  return [sys.executable, '-m', 'jaxrobust.evaluate', f'--workdir={workdir}', f'--domain={domain}',
          '--suite=corruptions', f'--corruptions={",".join(comparison.AUXTRAIN_CORRUPTIONS)}',
          f'--max_examples={FLAGS.max_examples}', f'--out_dir={out_dir}']


def full_s3_command(workdir: str, domain: str, out_dir: str) -> list[str]:
  # Severity 3 on the whole test split: the corruption means the acceptance comparisons read,
  # with ten times the images of the subset (1,000 images leave about 1 point of noise).
  return [sys.executable, '-m', 'jaxrobust.evaluate', f'--workdir={workdir}', f'--domain={domain}',
          '--suite=corruptions', f'--corruptions={",".join(comparison.FULL_S3_CORRUPTIONS)}',
          '--severities=3', '--max_examples=0', f'--out_dir={out_dir}']


def adversarial_noise_command(workdir: str) -> list[str]:
  return [sys.executable, '-m', 'jaxrobust.evaluation.adversarial_noise', f'--workdir={workdir}',
          f'--eps={FLAGS.adversarial_noise_eps}', f'--steps={FLAGS.adversarial_noise_steps}',
          f'--num_generators={FLAGS.adversarial_noise_generators}', '--learning_rate=0.01',
          f'--num_eval={FLAGS.attack_examples * 5}']


def _check_overrides() -> None:
  """Refuses a malformed ``--config_overrides`` item, or one a selected method's config file
  lacks (the command line refuses those), before anything is recorded or run: such a key failed
  the first training run after settings.json had recorded it."""
  configs = {m: importlib.import_module(
      'configs.' + os.path.splitext(os.path.basename({**METHODS, **PAPER_BASELINES}[m]))[0]
  ).get_config() for m in FLAGS.methods}
  for item in FLAGS.config_overrides:
    key, sep, _ = item.partition('=')
    if not sep:
      raise app.UsageError(f'--config_overrides item {item!r}: expected key=value.')
    lacking = [m for m, config in configs.items() if key not in config]
    if lacking:
      raise app.UsageError(f'--config_overrides item {item!r}: the config of {lacking} has no '
                           f'key {key!r}, so its training command would be refused.')


def main(argv):
  del argv
  if not FLAGS.methods:
    raise app.UsageError('--methods is empty; name at least one of '
                         f'{list(METHODS) + list(PAPER_BASELINES)}.')
  unknown = [m for m in FLAGS.methods if m not in METHODS and m not in PAPER_BASELINES]
  if unknown:
    raise app.UsageError(f'Unknown method(s) {unknown}; allowed: '
                         f'{list(METHODS) + list(PAPER_BASELINES)}.')
  _check_overrides()
  for name in ('out', 'runs'):
    if '://' in (FLAGS[name].value or ''):
      # Its logs, skip checks and table are local files; os.path.abspath would turn the URI
      # into a local folder named 'gs:' without a word.
      raise app.UsageError(f'--{name}={FLAGS[name].value!r}: this script works in a local '
                           'directory; copy the runs there (gsutil -m cp -r) first.')
  # Absolute, since every command runs in the repository root.
  out = os.path.abspath(FLAGS.out or os.path.join('results', datetime.date.today().isoformat()))
  runs = os.path.abspath(FLAGS.runs or os.path.join(out, 'runs'))
  os.makedirs(runs, exist_ok=True)
  logs = os.path.join(out, 'logs')
  os.makedirs(logs, exist_ok=True)
  _check_settings(runs)
  commands = []
  for method in FLAGS.methods:
    workdir = os.path.join(runs, method)
    log = os.path.join(logs, f'{method}.log')
    if not _trained(workdir):
      commands.append(train_command(method, workdir))
      _run(commands[-1], log)
      if not FLAGS.dry_run and not _trained(workdir):
        # A stop request (SIGTERM, preemption) saved a checkpoint: evaluating now would report
        # a half-trained run. The same command resumes it.
        logging.warning('%s stopped before the end of training; run the same command to '
                        'resume it.', method)
        sys.exit(3)
    for domain in ('main', 'aux') if method in AUX_DOMAIN_METHODS else ('main',):
      if not os.path.exists(os.path.join(workdir, f'eval_{domain}', 'report.json')):
        commands.append(evaluate_command(workdir, domain))
        _run(commands[-1], log)
      auxtrain_dir = os.path.join(workdir, comparison.AUXTRAIN_EVAL_DIR.format(domain=domain))
      if not os.path.exists(os.path.join(auxtrain_dir, 'report.json')):
        commands.append(auxtrain_corruptions_command(workdir, domain, auxtrain_dir))
        _run(commands[-1], log)
      full_dir = os.path.join(workdir, comparison.FULL_S3_EVAL_DIR.format(domain=domain))
      if FLAGS.full_s3 and not os.path.exists(os.path.join(full_dir, 'report.json')):
        commands.append(full_s3_command(workdir, domain, full_dir))
        _run(commands[-1], log)
    if FLAGS.adversarial_noise and not os.path.exists(
        os.path.join(workdir, 'adversarial_noise.json')):
      commands.append(adversarial_noise_command(workdir))
      _run(commands[-1], log)
  if FLAGS.subnets and not {'vanilla', 'ews'} <= set(FLAGS.methods):
    logging.warning('--subnets compares vanilla with ews; both must be in --methods: skipped.')
  elif FLAGS.subnets:
    subnets_out = os.path.join(out, 'subnets')
    if not os.path.exists(os.path.join(subnets_out, 'subnet_analysis.json')):
      commands.append([
          sys.executable, '-m', 'jaxrobust.evaluation.subnet_analysis',
          f'--workdirs={os.path.join(runs, "vanilla")},{os.path.join(runs, "ews")}',
          '--labels=vanilla,ews', f'--out={subnets_out}', '--num_subnets=100', '--rho=0.5',
          '--corruption=gaussian_noise:3', '--attack=pgd20',
          f'--max_examples={FLAGS.max_examples}'])
      _run(commands[-1], os.path.join(logs, 'subnets.log'))
  if FLAGS.dry_run:
    return
  rows = []
  for method in FLAGS.methods:
    for domain in ('main', 'aux') if method in AUX_DOMAIN_METHODS else ('main',):
      rows.append(comparison.row(os.path.join(runs, method), method, domain))
  budget = ('CPU budget: ' + ', '.join(f'{k}={v}' for k, v in CPU_BUDGET.items()) +
            ''.join(f'; {m}: ' + ', '.join(f'{k}={v:.4g}' for k, v in o.items())
                    for m, o in CPU_BUDGET_METHOD.items() if m in FLAGS.methods)
            if FLAGS.budget == 'cpu' else 'each config\'s own recipe')
  noise_images = (f' (eps* against adversarial noise on {5 * FLAGS.attack_examples})'
                  if FLAGS.adversarial_noise else '')
  header = (f'# Method comparison ({datetime.date.today().isoformat()})\n\n'
            f'Dataset `{FLAGS.dataset}`; {budget}. Clean / corruption accuracy on '
            f'{FLAGS.max_examples or "all the"} test images, attacks and eps* on '
            f'{FLAGS.attack_examples}{noise_images} '
            f'(clean (10k): the whole test set at the end of training; "(10k)" corruption columns: '
            f'severity 3 on the whole test set). '
            f'Host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs.\n\n'
            f'    python scripts/compare_methods.py {" ".join(sys.argv[1:])}')
  table = comparison.write_table(rows, out, header)
  comparison.write_plots(rows, out)
  if FLAGS.readme:
    comparison.embed_table(FLAGS.readme, table, name=os.path.basename(out))
  # Earlier invocations' commands too: a resumed comparison ran only the missing ones.
  path = os.path.join(out, 'results.json')
  try:
    with open(path) as f:
      earlier = json.load(f).get('commands', [])
  except (OSError, ValueError):  # none yet, or cut short by a kill
    earlier = []
  ran = earlier + [c for c in (' '.join(c) for c in commands) if c not in earlier]
  files.write_text_atomic(path, json.dumps({'rows': rows, 'commands': ran}, indent=1))
  print(open(os.path.join(out, 'table.md')).read())


if __name__ == '__main__':
  app.run(main)
