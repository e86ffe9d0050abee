"""Command-line entry point.

    python -m jaxrobust.main --config=configs/quickstart.py --workdir=/tmp/jaxrobust_quickstart
    python -m jaxrobust.main --config=configs/vanilla_cifar.py --workdir=... --config.num_epochs=1
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxrobust import parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process runs).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process runs).')
flags.DEFINE_integer('process_id', None, 'This process\'s index (multi-process runs).')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries:
  """Drops INFO lines from orbax's internals so progress stays readable."""

  def filter(self, record):
    return record.levelno >= 30 or 'orbax' not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  parallel.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
  from jaxrobust import train  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  try:
    train.validate_config(config)  # names and values: fail before touching data or compiling
  except ValueError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  logging.info('JAX %s, %d processes, devices: %s', jax.__version__, jax.process_count(),
               jax.devices())
  try:
    _, results = train.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, train.NonFiniteError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2 if isinstance(e, ValueError) else 3)
  logging.info('Done: %s', results)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main)
