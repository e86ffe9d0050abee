"""The side-by-side comparison of trained runs: one table row per run (and BN domain), plots.

A row gathers what the training loop and the evaluation tools wrote into a run's workdir:
``results.json`` (training time, full-test-set accuracy), ``eval_<domain>/report.json``
(``python -m jaxrobust.evaluate`` with the clean, corruptions, pgd, apgd and eps_star suites) and,
if present, ``adversarial_noise.json`` (``python -m jaxrobust.evaluation.adversarial_noise``).
``scripts/compare_methods.py`` trains and evaluates the runs and calls this module; a notebook
can call it on runs it already has.
"""

from __future__ import annotations

import csv
import json
import os

from jaxrobust import corruptions
from jaxrobust.methods.auxtrain import DEFAULT_CORRUPTIONS as AUXTRAIN_CORRUPTIONS

# Auxiliary Training's four training corruptions, evaluated apart (``rotation`` and
# ``contrast_brightness`` are not CIFAR-10-C corruptions) into this folder of a run.
AUXTRAIN_EVAL_DIR = 'eval_{domain}_auxtrain_corruptions'
# The 15 standard corruptions and those four at severity 3 only, on the whole test split: the
# columns the acceptance comparisons read, measured with ten times the images of the subset.
FULL_S3_EVAL_DIR = 'eval_{domain}_s3_full'
FULL_S3_CORRUPTIONS = tuple(corruptions.STANDARD) + tuple(
    c for c in AUXTRAIN_CORRUPTIONS if c not in corruptions.STANDARD)


def _load(path: str):
  with open(path) as f:
    return json.load(f)


def row(workdir: str, method: str, domain: str = 'main') -> dict:
  """One table row: a run's results.json, eval_<domain>/report.json, adversarial_noise.json.

  Missing suites leave their columns empty (None); missing report or results files raise.
  ``auxtrain_corruptions_s3`` (Auxiliary Training's four training corruptions at severity 3) comes
  from ``eval_<domain>_auxtrain_corruptions/report.json`` when that evaluation was run;
  ``corruptions_s3_full`` and ``auxtrain_corruptions_s3_full`` (the same means on the whole test
  split) from ``eval_<domain>_s3_full/report.json``.
  Accuracies are fractions; ``per_corruption_s3`` maps each evaluated corruption to its
  accuracy at severity 3 (for the heat map).
  """
  report = _load(os.path.join(workdir, f'eval_{domain}', 'report.json'))
  trained = _load(os.path.join(workdir, 'results.json'))
  corr = report.get('corruptions', {})
  errors, summary = corr.get('errors', {}), corr.get('summary', {})
  pgd = report.get('pgd', {})
  curve = pgd.get('curve', {'eps': [], 'accuracy': []})
  by_eps = dict(zip([round(e * 255) for e in curve['eps']], curve['accuracy']))
  s3 = lambda name: 1.0 - errors[name]['3'] if '3' in errors.get(name, {}) else None
  r = {
      'method': method if domain == 'main' else f'{method} ({domain} BN)',
      'clean': report.get('clean', {}).get('top1'),
      'corruptions_s3': summary.get('mean_accuracy_severity3'),
      'corruptions_all': summary.get('mean_accuracy'),
      'gaussian_noise_s3': s3('gaussian_noise'),
      'pgd1_eps1': pgd.get('advprop_pgd1'),
      'pgd10_eps1': by_eps.get(1),
      'fgsm_eps8': pgd.get('fgsm'),
      'pgd10_eps8': pgd.get('madry_pgd10'),
      'pgd20_eps8': pgd.get('pgd20'),
      'apgd_ce_eps8': report.get('apgd', {}).get('apgd_ce'),
      'eps_star_gaussian': report.get('eps_star', {}).get('gaussian', {}).get('eps_star'),
      'train_minutes': trained['wall_time_s'] / 60.0,
      # results.json has the end-of-training accuracy of every evaluated domain
      'full_test_top1': trained.get('eval_top1' if domain == 'main' else f'eval_{domain}_top1'),
      'per_corruption_s3': {name: s3(name) for name in errors if s3(name) is not None},
  }
  auxtrain_path = os.path.join(workdir, AUXTRAIN_EVAL_DIR.format(domain=domain), 'report.json')
  if os.path.exists(auxtrain_path):
    r['auxtrain_corruptions_s3'] = _auxtrain_mean_s3(_load(auxtrain_path)['corruptions']['errors'])
  full_path = os.path.join(workdir, FULL_S3_EVAL_DIR.format(domain=domain), 'report.json')
  if os.path.exists(full_path):
    full = _load(full_path)
    r['corruptions_s3_full'] = full['corruptions']['summary'].get('mean_accuracy_severity3')
    r['auxtrain_corruptions_s3_full'] = _auxtrain_mean_s3(full['corruptions']['errors'])
  noise_path = os.path.join(workdir, 'adversarial_noise.json')
  if domain == 'main' and os.path.exists(noise_path):
    r['eps_star_adversarial_noise'] = _load(noise_path)['eps_star']
  return r


def _auxtrain_mean_s3(errors: dict) -> float:
  """Mean accuracy over Auxiliary Training's four training corruptions at severity 3."""
  return sum(1.0 - errors[name]['3'] for name in AUXTRAIN_CORRUPTIONS) / len(AUXTRAIN_CORRUPTIONS)


COLUMNS = [  # (key, header, format)
    ('method', 'method', '{}'),
    ('full_test_top1', 'clean (10k)', '{:.1%}'),
    ('clean', 'clean (subset)', '{:.1%}'),
    ('corruptions_s3', '15 corruptions s3', '{:.1%}'),
    ('corruptions_all', '15 corruptions s1-5', '{:.1%}'),
    ('gaussian_noise_s3', 'gaussian_noise s3', '{:.1%}'),
    ('auxtrain_corruptions_s3', '4 Aux-Training corruptions s3', '{:.1%}'),
    ('corruptions_s3_full', '15 corruptions s3 (10k)', '{:.2%}'),
    ('auxtrain_corruptions_s3_full', '4 Aux-Training corruptions s3 (10k)', '{:.2%}'),
    ('pgd1_eps1', 'PGD-1 1/255', '{:.1%}'),
    ('pgd10_eps1', 'PGD-10 1/255', '{:.1%}'),
    ('fgsm_eps8', 'FGSM 8/255', '{:.1%}'),
    ('pgd10_eps8', 'PGD-10 8/255', '{:.1%}'),
    ('pgd20_eps8', 'PGD-20 8/255', '{:.1%}'),
    ('apgd_ce_eps8', 'APGD-CE 8/255', '{:.1%}'),
    ('eps_star_gaussian', 'eps* Gaussian', '{:.2f}'),
    ('eps_star_adversarial_noise', 'eps* adv. noise', '{:.2f}'),
    ('train_minutes', 'train min', '{:.0f}'),
]


def write_table(rows: list[dict], out: str, header: str) -> str:
  cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
  fmt = lambda r, c: '' if r.get(c[0]) is None else c[2].format(r[c[0]])
  lines = ['| ' + ' | '.join(c[1] for c in cols) + ' |', '|' + '---|' * len(cols)]
  lines += ['| ' + ' | '.join(fmt(r, c) for c in cols) + ' |' for r in rows]
  table = '\n'.join(lines)
  os.makedirs(out, exist_ok=True)  # e.g. a notebook that only loads runs trained elsewhere
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(header + '\n\n' + table + '\n')
  with open(os.path.join(out, 'table.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow([c[0] for c in cols])
    w.writerows([[r.get(c[0], '') for c in cols] for r in rows])
  return table


def embed_table(markdown_path: str, table: str, name: str = 'comparison') -> None:
  """Replaces what lies between ``<!-- {name}_table:start -->`` and ``..:end -->`` by ``table``.

  Keeps a README's table in step with the latest ``table.md`` without hand copying.

  Args:
    markdown_path: the Markdown file, e.g. ``README.md``; it must hold both markers, in order.
    table: the table's lines (``write_table``'s return value).
    name: the markers' name.

  Raises:
    ValueError: the file lacks a marker, holds one twice or in the wrong order.
  """
  start, end = f'<!-- {name}_table:start -->', f'<!-- {name}_table:end -->'
  with open(markdown_path) as f:
    text = f.read()
  counts = (text.count(start), text.count(end))
  if counts != (1, 1) or text.index(start) > text.index(end):
    raise ValueError(f'{markdown_path} must hold "{start}" once, followed by "{end}" once; '
                     f'found them {counts[0]} and {counts[1]} times.')
  head, rest = text.split(start)
  tail = rest.split(end)[1]
  with open(markdown_path, 'w') as f:
    f.write(f'{head}{start}\n{table.strip()}\n{end}{tail}')


def write_plots(rows: list[dict], out: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  names = [r['method'] for r in rows]
  metrics = [('clean', 'clean'), ('corruptions_s3', '15 corruptions, s3'),
             ('gaussian_noise_s3', 'gaussian noise, s3'), ('pgd10_eps1', 'PGD-10, 1/255')]
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
  width = 0.8 / len(metrics)
  for i, (key, label) in enumerate(metrics):
    # a run without this number gets no bar (a 0% bar would read as a result)
    ax.bar(np.arange(len(rows)) + i * width,
           [np.nan if r.get(key) is None else 100 * r[key] for r in rows], width, label=label)
  ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, names, rotation=30, ha='right')
  ax.set_ylabel('top-1 accuracy (%)')
  # Above the axes, in one row: inside them it hides the last method's bars.
  ax.legend(fontsize=8, ncol=len(metrics), loc='lower center', bbox_to_anchor=(0.5, 1.0),
            frameon=False)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'accuracy.png'), dpi=120)
  plt.close(fig)
  corruptions = list(rows[0]['per_corruption_s3'])
  grid = np.array([[100 * r['per_corruption_s3'].get(c, np.nan) for c in corruptions]
                   for r in rows])
  fig, ax = plt.subplots(figsize=(0.5 * len(corruptions) + 3, 0.45 * len(rows) + 2))
  im = ax.imshow(grid, cmap='viridis', vmin=0, vmax=100)
  ax.set_xticks(range(len(corruptions)), corruptions, rotation=60, ha='right', fontsize=8)
  ax.set_yticks(range(len(rows)), names, fontsize=8)
  for (i, j), v in np.ndenumerate(grid):
    if np.isnan(v):
      continue
    ax.text(j, i, f'{v:.0f}', ha='center', va='center', fontsize=6,
            color='white' if v < 50 else 'black')
  fig.colorbar(im, ax=ax, label='accuracy at severity 3 (%)')
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'corruptions_s3.png'), dpi=120)
  plt.close(fig)
