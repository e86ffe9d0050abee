r"""Evaluates a trained run with the robustness suites.

    python -m jaxrobust.evaluate --workdir=/tmp/vanilla_small \
        --suite=clean,corruptions,pgd,apgd,eps_star,frequency

Writes report.json, CSVs, summary.md and PNG plots to ``<workdir>/eval_<domain>`` (or
``--out_dir``). Suites: clean, corruptions (on-the-fly JAX corruptions), tfds_corruptions (the
official TFDS ``cifar10_corrupted``/``imagenet2012_corrupted`` sets), pgd (FGSM, I-FGSM,
PGD-20 and accuracy vs eps), apgd (APGD-CE, APGD-T), eps_star (median minimal L2 along
Gaussian/uniform noise), frequency (Fourier heat map).
"""

import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Training workdir to evaluate.')
flags.DEFINE_list('suite', ['clean', 'corruptions', 'pgd'], 'Suites to run.')
flags.DEFINE_string('out_dir', None, 'Output directory (default <workdir>/eval_<domain>).')
flags.DEFINE_string('domain', 'main', 'BatchNorm domain to evaluate with (e.g. aux).')
flags.DEFINE_string('dataset', None, 'Override the dataset of the run (e.g. folder:/data/cifar10).')
flags.DEFINE_integer('max_examples', 0, 'Eval examples for clean/corruptions (0 = all).')
flags.DEFINE_integer('attack_examples', 500,
                     'Examples for attacks and eps* (the frequency map uses at most 200).')
flags.DEFINE_list('corruptions', None, 'Corruptions to evaluate (default: all 19).')
flags.DEFINE_list('severities', ['1', '2', '3', '4', '5'], 'Corruption severities to evaluate.')
flags.DEFINE_string('baseline_errors', None, 'JSON of a baseline run\'s corruption errors (mCE).')
flags.DEFINE_integer('apgd_steps', 100, 'APGD iterations.')
flags.DEFINE_integer('apgd_targets', 3, 'APGD-T target classes (AutoAttack uses 9).')
flags.DEFINE_string('corrupted_dataset', None,
                    'TFDS set of the tfds_corruptions suite: cifar10_corrupted or '
                    "imagenet2012_corrupted (default: the run's dataset's own; needed for a run "
                    'trained on a folder copy).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  from jaxrobust import corruptions  # pylint: disable=g-import-not-at-top
  from jaxrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  try:
    unknown = [s for s in FLAGS.suite if s not in runner.SUITES]
    if unknown:
      raise ValueError(f'Unknown suite(s) {unknown}; valid: {", ".join(runner.SUITES)}.')
    names = FLAGS.corruptions or list(corruptions.ALL)
    for name in names:
      corruptions.get(name)
    severities = runner.check_severities(FLAGS.severities)
    run = runner.load_run(FLAGS.workdir, domain=FLAGS.domain,
                          overrides={'dataset': FLAGS.dataset} if FLAGS.dataset else None)
    report = runner.run_suites(run, FLAGS.suite, out_dir=FLAGS.out_dir,
                               max_examples=FLAGS.max_examples or None,
                               attack_examples=FLAGS.attack_examples, corruption_names=names,
                               corruption_severities=severities,
                               baseline_errors=FLAGS.baseline_errors, apgd_steps=FLAGS.apgd_steps,
                               apgd_targets=FLAGS.apgd_targets,
                               corrupted=FLAGS.corrupted_dataset)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  logging.info('Report written; timings %s', report['timings_s'])


if __name__ == '__main__':
  app.run(main)
