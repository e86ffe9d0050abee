"""Command-line entry point.

    python -m jaxrobust.main --config=configs/quickstart.py --workdir=/tmp/jaxrobust_quickstart
    python -m jaxrobust.main --config=configs/vanilla_cifar.py --workdir=... --config.num_epochs=1
"""

import importlib.util
import os
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


def _fail(error: Exception, status: int) -> None:
  """Reports an error the user can act on (no traceback) and exits with ``status``.

  Status 2: bad input (config, data, checkpoint of another model/method); 3: non-finite loss.
  The traceback goes to the debug log (``--verbosity=1``), for errors that are not the user's.
  """
  logging.debug('Traceback of the error below:', exc_info=error)
  logging.error('%s', error)
  print(f'error: {error}', file=sys.stderr)
  sys.exit(status)


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    # before anything touches a JAX backend (a method's validate() might)
    parallel.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                          FLAGS.process_id)
  except ValueError as e:
    _fail(e, 2)
  from jaxrobust import train  # pylint: disable=g-import-not-at-top
  config = FLAGS.config
  try:
    train.validate_config(config)  # names and values: fail before touching data or compiling
  except ValueError as e:
    _fail(e, 2)
  logging.info('JAX %s, %d processes, devices: %s', jax.__version__, jax.process_count(),
               jax.devices())
  try:
    _, results = train.train_and_evaluate(config, FLAGS.workdir)
  except ValueError as e:  # bad input found with the data, or a mismatching checkpoint
    _fail(e, 2)
  except train.NonFiniteError as e:
    _fail(e, 3)
  if results.get('stopped_by'):
    msg = (f'Stopped by {results["stopped_by"]} at step {results["step"]}; the checkpoint is in '
           f'{FLAGS.workdir}/checkpoints. Run the same command again to resume.')
    logging.warning('%s', msg)
    print(msg, file=sys.stderr)
    return  # exit status 0: a requested stop is not a failure
  logging.info('Done: %s', results)


def _config_file(argv) -> str | None:
  """The ``--config`` file of the command line (the last one given, as absl takes it)."""
  path = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith('--config='):
      path = arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
  if path and not os.path.isfile(path) and os.path.isfile(path.partition(':')[0]):
    path = path.partition(':')[0]  # ml_collections' "file.py:argument" form (first colon)
  return path


def _make_config_package_importable(package: str) -> None:
  """Config files import their package (``from configs import default``); when the command runs
  outside the repository root, puts the package's parent on ``sys.path``, only if an import of
  that name would not already find this package."""
  if not os.path.isfile(os.path.join(package, '__init__.py')):
    return
  spec = importlib.util.find_spec(os.path.basename(package))
  found = [os.path.abspath(p) for p in (spec.submodule_search_locations or [])] if spec else []
  if package not in found:
    sys.path.insert(0, os.path.dirname(package))


def _parse_flags(argv):
  """absl's flag parsing, plus clean messages for a missing ``--config`` file and for a
  ``--config.<key>`` that does not exist."""
  path = _config_file(argv)
  if path is not None and not any(a.startswith('--flagfile') for a in argv):
    if not os.path.isfile(path):
      print(f'error: config file {path!r} not found (a relative path starts at the current '
            'directory); the configs are in the repository\'s configs/.', file=sys.stderr)
      sys.exit(2)
    _make_config_package_importable(os.path.dirname(os.path.abspath(path)))
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # ml_collections: override of an unknown config key
    inner = e
    while isinstance(inner, BaseException) and inner.args:  # AttributeError(KeyError('...'))
      inner = inner.args[0]
    key, _, hint = ' '.join(str(inner).split()).partition(' ')
    from jaxrobust import config_keys  # pylint: disable=g-import-not-at-top
    if key.strip('\'"') in config_keys.known():  # a real key that this config file lacks
      print(f'error: config key {key} is not in the --config file, and the command line only '
            f'overrides keys the file defines. {hint + " " if hint else ""}Use the config of '
            'the method that reads it (configs/<method>_*.py) or add the key to your config '
            'file.', file=sys.stderr)
    else:
      print(f'error: unknown config key {key}. {hint + " " if hint else ""}The valid keys are '
            'those of the --config file (see configs/default.py and the method\'s config).',
            file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main, flags_parser=_parse_flags)
